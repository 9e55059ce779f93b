//! `hook_added_start_latency_ms`: registering `egresstrator-runc` as a dockerd runtime for the
//! measure, and timing `docker run` with and without it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The runtime name registered for the measure.
pub const RUNTIME: &str = "egt-bench-shim";
const DAEMON_JSON: &str = "/etc/docker/daemon.json";
const IMAGE: &str = "egresstrator-test:latest";

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
    pub fn install(shim: &Path, socket: &Path) -> Result<Self> {
        let previous = std::fs::read(DAEMON_JSON).ok();
        let mut config: serde_json::Value = previous
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        config["runtimes"][RUNTIME] = serde_json::json!({
            "path": shim,
            "runtimeArgs": [format!("--egresstrator-socket={}", socket.display())],
        });
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
