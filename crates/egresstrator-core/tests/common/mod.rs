//! Helpers shared by the kernel tests: prerequisites, throwaway network namespaces, scratch
//! directories.
//!
//! Every kernel command runs inside a namespace that the test creates and that disappears
//! with it (`unshare -n` for one-shot scripts, `ip netns add egt-core-…` with a guard that
//! deletes it). Nothing here ever touches the test process's own namespace's firewall.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A PATH that finds the firewall tools even when the test runner's PATH lacks the sbin dirs.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether the kernel tests can run here; when they cannot, fails the test with what is
/// missing (a test that did not run never passes).
pub fn kernel_ready(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (effective uid 0)".to_owned());
    }
    for tool in tools.iter().chain(&["unshare", "sh"]) {
        if which(tool).is_none() {
            missing.push(format!("`{tool}` on {PATH}"));
        }
    }
    if missing.is_empty() {
        // Creating a namespace needs CAP_SYS_ADMIN, which a container may not grant.
        match Command::new("unshare")
            .args(["-n", "true"])
            .env("PATH", PATH)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => missing.push(format!(
                "a network namespace (`unshare -n true`: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => missing.push(format!("a network namespace (`unshare -n true`: {e})")),
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: kernel test needs {}", missing.join(", "));
    panic!("{msg}; run `make test` as root, which installs everything the tests need");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn which(tool: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Runs `sh -c script` with `args` as `$1…` inside a fresh network namespace that is gone
/// when the script ends.
pub fn unshare_sh(script: &str, args: &[&Path]) -> Output {
    Command::new("unshare")
        .args(["-n", "sh", "-c", script, "sh"])
        .args(args)
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .output()
        .expect("spawn unshare")
}

/// A named namespace (`ip netns add egt-core-<pid>-<n>-<nanos>`), deleted on drop.
pub struct Netns {
    pub name: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!("egt-core-{}", unique());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .env("PATH", PATH)
            .output()
            .expect("spawn ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    /// Runs a program inside the namespace, with `stdin` as its standard input.
    pub fn run(&self, argv: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .env("PATH", PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        let mut pipe = child.stdin.take().expect("stdin");
        let input = stdin.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait ip netns exec");
        let _ = writer.join();
        out
    }

    /// Like [`Netns::run`], but panics with the program's stderr unless it succeeds; returns
    /// stdout.
    pub fn ok(&self, argv: &[&str], stdin: &str) -> String {
        let out = self.run(argv, stdin);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed ({}): {}\ninput:\n{stdin}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .env("PATH", PATH)
            .output();
    }
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", unique()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Panics with the script's output unless it succeeded.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
