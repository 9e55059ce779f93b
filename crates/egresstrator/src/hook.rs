//! The runtime hook's line to the agent: a unix socket that only root may use.
//!
//! `egresstrator-runc` injects an OCI `createRuntime` hook into enabled containers. The hook
//! runs while the container's init is paused, before the workload's first instruction, and
//! asks the agent (one JSON line each way) to enforce the container's namespace. The agent
//! answers once the ruleset is committed. If the agent does not answer in time, the hook
//! applies deny-all itself (fail closed). The hook's side is `egresstrator-runc hook`
//! (src/bin/egresstrator-runc/hook.rs), which does not link this library.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/egresstrator/hook.sock";

/// What the hook sends: the container as its OCI bundle describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRequest {
    pub id: String,
    /// The paused init's pid (its namespace is the container's).
    pub pid: u32,
    /// `process.env` of the bundle's config.json (`KEY=VALUE`).
    pub env: Vec<String>,
    /// The host file mounted at /etc/resolv.conf, if any.
    pub resolv_conf: Option<PathBuf>,
    /// The bundle asks runc for a new network namespace (not one joined by path): it was
    /// created for this container, nothing has run in it yet, so there are no connections
    /// to cut and no other backend's rules to remove after the first load.
    #[serde(default)]
    pub fresh_netns: bool,
    /// Not a request but a notice: the hook gave up waiting and loaded its own deny-all,
    /// which may have landed on top of the agent's ruleset.
    #[serde(default)]
    pub fell_back: bool,
}

/// What the agent answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookReply {
    /// True when the container's ruleset (or, for a container that is not enabled, nothing)
    /// is in force.
    pub ok: bool,
    pub posture: Option<String>,
    pub hash: Option<String>,
    pub error: Option<String>,
}

/// A request waiting for the agent's answer.
pub struct Pending {
    pub request: HookRequest,
    pub reply: oneshot::Sender<HookReply>,
}

/// Binds the socket: its directory is created 0700 and the socket is made 0600, so only root
/// can ask the agent to act.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // A socket left by an earlier agent (e.g. after SIGKILL) would make bind fail.
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts hook connections and hands each request to the agent.
pub async fn serve(listener: UnixListener, tx: mpsc::UnboundedSender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let reply = match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
            {
                Ok(Ok(Some(line))) => match serde_json::from_str::<HookRequest>(&line) {
                    Ok(request) => {
                        let (reply, rx) = oneshot::channel();
                        if tx.send(Pending { request, reply }).is_err() {
                            return;
                        }
                        match rx.await {
                            Ok(r) => r,
                            Err(_) => return,
                        }
                    }
                    Err(e) => HookReply {
                        error: Some(format!("bad hook request: {e}")),
                        ..Default::default()
                    },
                },
                _ => return,
            };
            if let Ok(mut text) = serde_json::to_string(&reply) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        });
    }
}
