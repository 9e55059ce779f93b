//! The runtime hook's line to the agent: a unix socket that only root may use.
//!
//! `egresstrator-runc` injects an OCI `createRuntime` hook into enabled containers. The hook
//! runs while the container's init is paused, before the workload's first instruction, and
//! asks the agent (one JSON line each way) to enforce the container's namespace. The agent
//! answers once the ruleset is committed. If the agent does not answer in time, the hook
//! applies deny-all itself (fail closed). The hook's side is `egresstrator-runc hook`
//! (src/bin/egresstrator-runc/hook.rs), which does not link this library.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/egresstrator/hook.sock";

pub use egresstrator_core::hook_proto::{HookReply, HookRequest};

/// A request waiting for the agent's answer.
pub struct Pending {
    pub request: HookRequest,
    pub reply: oneshot::Sender<HookReply>,
}

/// Binds the socket: its directory is created 0700 and the socket is made 0600, so only root
/// can ask the agent to act.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let at = |path: &Path| {
        let path = path.to_owned();
        move |source| BindError { path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(at(dir))?;
    }
    // A socket left by an earlier agent (e.g. after SIGKILL) would make bind fail; one that
    // still answers is another agent's (of another Docker daemon: one on this daemon has
    // been refused by `instance`), and is left to it.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(at(path)(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process answers on it; give this agent its own --hook-socket",
            )));
        }
        std::fs::remove_file(path).map_err(at(path))?;
    }
    let listener = UnixListener::bind(path).map_err(at(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(at(path))?;
    Ok(listener)
}

/// Why the hook socket cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("hook socket {}: {source}", path.display())]
pub struct BindError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_another_process_answers_on_is_not_taken_over() {
        let dir = std::env::temp_dir().join(format!("egt-hook-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("hook.sock");
        let first = bind(&path).expect("first bind");
        let e = bind(&path).expect_err("a second bind while the first answers");
        assert_eq!(e.source.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("another process answers"), "{e}");
        // The first one still answers on it.
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        // Control: once nobody answers, the file left behind is stale and replaced. (Another
        // test's fork may hold a copy of the listener until it execs: hence a few tries.)
        drop(first);
        assert!(
            path.exists(),
            "the socket file stays after its listener is gone"
        );
        let again = (0..100)
            .find_map(|_| {
                bind(&path)
                    .inspect_err(|_| std::thread::sleep(Duration::from_millis(20)))
                    .ok()
            })
            .expect("a stale socket is replaced");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
