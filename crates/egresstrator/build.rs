//! Stamps `egresstrator --version` with the git commit and the build date.
//!
//! The date is `$SOURCE_DATE_EPOCH`'s when set (reproducible builds), else today's (UTC);
//! the commit is `git rev-parse` of the checkout, or `unknown` outside one (a crate tarball).

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => Command::new("date")
            .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d"])
            .output()
            .ok(),
        Err(_) => Command::new("date").args(["-u", "+%Y-%m-%d"]).output().ok(),
    }
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| "unknown".into());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=EGRESSTRATOR_LONG_VERSION={version} (commit {commit}, built {date})");
    // Re-stamped when the checkout moves to another commit.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
