//! `hook_added_start_latency_ms`: registering `egresstrator-runc` as a dockerd runtime for the
//! measure, and timing `docker run` with and without it.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The runtime name registered for the measure.
pub const RUNTIME: &str = "egt-bench-shim";
const DAEMON_JSON: &str = "/etc/docker/daemon.json";
const IMAGE: &str = "egresstrator-test:latest";

/// The agent's and the shim's default hook socket.
pub use egresstrator::hook::DEFAULT_SOCKET;
/// The shim's config file, which could name another socket.
pub const SHIM_CONFIG: &str = "/etc/egresstrator/runc.conf";

/// Where the bench's agent answers the hook.
#[derive(Clone, Debug)]
pub struct HookSocket {
    pub path: PathBuf,
    /// True when it is the default path, so the shim needs no `runtimeArgs`.
    pub default: bool,
}

/// The default socket when nothing answers there (no other agent) and no shim config file
/// could redirect the shim, else one in `work_dir`.
/// Operators register the shim without `runtimeArgs`; with them dockerd runs it through a
/// generated `/bin/sh` script, a shell per runc verb, which the measure should not include
/// unless it must.
pub fn socket(work_dir: &Path) -> HookSocket {
    if UnixStream::connect(DEFAULT_SOCKET).is_err() && !Path::new(SHIM_CONFIG).exists() {
        HookSocket {
            path: PathBuf::from(DEFAULT_SOCKET),
            default: true,
        }
    } else {
        HookSocket {
            path: work_dir.join("hook.sock"),
            default: false,
        }
    }
}

/// The runtime, registered until dropped; the previous daemon.json is restored then.
pub struct Runtime {
    previous: Option<Vec<u8>>,
}

fn reload() -> Result<()> {
    let ok = Command::new("sh")
        .args(["-c", "kill -HUP $(pgrep -x dockerd)"])
        .status()
        .context("cannot signal dockerd")?
        .success();
    if !ok {
        bail!("cannot signal dockerd to reload its runtimes");
    }
    Ok(())
}

fn runtimes() -> String {
    Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Runtime {
    pub fn install(shim: &Path, socket: &HookSocket) -> Result<Self> {
        let previous = std::fs::read(DAEMON_JSON).ok();
        let mut config: serde_json::Value = previous
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        config["runtimes"][RUNTIME] = if socket.default {
            serde_json::json!({ "path": shim })
        } else {
            serde_json::json!({
                "path": shim,
                "runtimeArgs": [format!("--egresstrator-socket={}", socket.path.display())],
            })
        };
        std::fs::create_dir_all("/etc/docker").context("cannot create /etc/docker")?;
        std::fs::write(DAEMON_JSON, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("cannot write {DAEMON_JSON}"))?;
        let guard = Runtime { previous };
        reload()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !runtimes().contains(RUNTIME) {
            if Instant::now() > deadline {
                bail!("dockerd did not load the runtime {RUNTIME}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(guard)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = match &self.previous {
            Some(b) => std::fs::write(DAEMON_JSON, b),
            None => std::fs::remove_file(DAEMON_JSON),
        };
        let _ = reload();
    }
}

/// Wall time of `docker run --rm` of an enabled container that exits at once, in ms.
pub fn timed_run(runtime: &str, acl: &str) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new("docker")
        .args(["run", "--rm", "--runtime", runtime, "--network", "none"])
        .args([
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            &format!("EGRESSTRATOR_ACL={acl}"),
        ])
        .args([IMAGE, "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run docker")?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        bail!("docker run --runtime {runtime} failed ({status})");
    }
    Ok(ms)
}

pub use egresstrator::runtime::statically_linked;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        // The bench itself links libc dynamically; /bin/sh is a dynamic executable too.
        let me = std::env::current_exe().expect("current exe");
        assert_eq!(statically_linked(&me), Some(false));
        assert_eq!(statically_linked(Path::new("/etc/hostname")), None);
    }
}
