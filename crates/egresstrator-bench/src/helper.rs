//! The baseline: egresstrator 0.2's mechanism without its sleeps. A helper container joins
//! the target's network namespace (`--network container:<id>`) with `NET_ADMIN` and applies
//! the ruleset; the time is that of the `docker run` process, spawn to exit, as 0.2 paid it.
//!
//! No registry is reachable, so the helper image is made here: a rootfs holding the host's
//! `nft` and `xtables-nft-multi` (as `iptables-restore`) with the libraries `ldd` names,
//! loaded with `docker import`. It is rebuilt only when those binaries change (image label).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;

pub const IMAGE: &str = "egresstrator-helper-bench:latest";
const LABEL: &str = "egresstrator.helper.sha256";
/// Bump when the rootfs layout changes.
const RECIPE_VERSION: u32 = 1;
const NFT: &str = "/usr/sbin/nft";
const XTABLES: &str = "/usr/sbin/xtables-nft-multi";
const XTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// Plain files some tools read for protocol and service names.
const ETC_FILES: [&str; 2] = ["/etc/protocols", "/etc/services"];

/// Which tool the helper runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperTool {
    /// `nft -f -`: the same script the agent loads.
    Nft,
    /// `iptables-restore -w --noflush`: what 0.2 ran (IPv4 only, as 0.2 did).
    IptablesRestore,
}

/// Builds the helper image unless an up-to-date one exists. Returns whether it was built.
pub fn ensure_image(work_dir: &Path) -> Result<bool> {
    let recipe = recipe_hash()?;
    let current = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            &format!("{{{{ index .Config.Labels \"{LABEL}\" }}}}"),
            IMAGE,
        ])
        .output()
        .context("cannot run `docker image inspect`")?;
    if current.status.success() && String::from_utf8_lossy(&current.stdout).trim() == recipe {
        return Ok(false);
    }
    let root = work_dir.join("helper-rootfs");
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove old {}", root.display()))?;
    }
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    files.insert(NFT.into());
    files.insert(XTABLES.into());
    let extensions = std::fs::read_dir(XTABLES_EXTENSIONS)
        .with_context(|| format!("cannot list {XTABLES_EXTENSIONS}"))?;
    for entry in extensions {
        let entry = entry.with_context(|| format!("cannot list {XTABLES_EXTENSIONS}"))?;
        files.insert(entry.path());
    }
    let mut libs = BTreeSet::new();
    for file in &files {
        libs.extend(ldd(file)?);
    }
    files.extend(libs);
    files.extend(ETC_FILES.iter().map(PathBuf::from));
    for file in &files {
        let rel = file.strip_prefix("/").unwrap_or(file);
        let dest = root.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // Copies the content behind symlinks: the rootfs needs the real files at the paths
        // the dynamic linker asks for.
        std::fs::copy(file, &dest)
            .with_context(|| format!("cannot copy {} into the helper rootfs", file.display()))?;
    }
    for dir in ["run", "tmp", "var/run"] {
        std::fs::create_dir_all(root.join(dir))
            .with_context(|| format!("cannot create {dir} in the helper rootfs"))?;
    }
    for name in ["iptables-restore", "ip6tables-restore"] {
        let link = root.join("usr/sbin").join(name);
        std::os::unix::fs::symlink("xtables-nft-multi", &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar for the helper rootfs")?;
    let tar_out = tar.stdout.take().context("tar has no stdout")?;
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("LABEL {LABEL}={recipe}"),
            "-",
            IMAGE,
        ])
        .stdin(Stdio::from(tar_out))
        .output()
        .context("cannot run `docker import`")?;
    let tar_status = tar.wait().context("cannot wait for tar")?;
    if !tar_status.success() {
        bail!(
            "tar of the helper rootfs {} failed: {tar_status}",
            root.display()
        );
    }
    if !import.status.success() {
        bail!(
            "docker import of {IMAGE} failed: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(true)
}

/// What the image is built from: the recipe version and the two binaries' digests.
fn recipe_hash() -> Result<String> {
    let mut text = format!("v{RECIPE_VERSION}\n");
    for bin in [NFT, XTABLES] {
        let bytes = std::fs::read(bin).with_context(|| {
            format!("cannot read {bin} (install nftables and iptables: scripts/prereqs.sh)")
        })?;
        text.push_str(&format!("{bin} {}\n", bytes.len()));
        text.push_str(&egresstrator_core::render::hash(&String::from_utf8_lossy(
            &bytes,
        )));
    }
    Ok(egresstrator_core::render::hash(&text)[..16].to_string())
}

/// The shared libraries (and the dynamic linker) that `ldd` lists for `file`.
fn ldd(file: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(file)
        .output()
        .with_context(|| format!("cannot run ldd {}", file.display()))?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Runs the helper once against container `target`, feeding `script` on stdin; returns the
/// wall time from spawning `docker run` until it exited.
pub async fn run_once(target: &str, tool: HelperTool, script: &str) -> Result<f64> {
    let network = format!("container:{target}");
    let mut args = vec![
        "run",
        "--rm",
        "-i",
        "--network",
        &network,
        "--cap-add",
        "NET_ADMIN",
        IMAGE,
    ];
    match tool {
        HelperTool::Nft => args.extend(["/usr/sbin/nft", "-f", "-"]),
        HelperTool::IptablesRestore => {
            args.extend(["/usr/sbin/iptables-restore", "-w", "--noflush"])
        }
    }
    let t = Instant::now();
    let mut child = tokio::process::Command::new("docker")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run `docker run` for the helper")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .context("cannot write the ruleset to the helper's stdin")?;
    }
    let out = child
        .wait_with_output()
        .await
        .context("cannot wait for the helper")?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "helper `docker {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f63)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libnftables.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
