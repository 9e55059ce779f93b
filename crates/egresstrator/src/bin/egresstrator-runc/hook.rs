//! The createRuntime hook: asks the agent for the ruleset, or fails closed itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use egresstrator_core::hook_proto::{HookReply, HookRequest};
use egresstrator_core::render::{guard, nft};
use egresstrator_core::Ruleset;
use serde_json::Value;

use crate::bundle::{env_of, fresh_netns};
use crate::options::Options;

/// The createRuntime hook: the OCI state is on stdin.
pub fn run(opts: &Options) -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("egresstrator-runc hook: cannot read the container state: {e}");
        return ExitCode::from(1);
    }
    let state: Value = match serde_json::from_str(&input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("egresstrator-runc hook: bad container state: {e}");
            return ExitCode::from(1);
        }
    };
    let id = state
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(pid) = state
        .get("pid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
    else {
        eprintln!("egresstrator-runc hook: container {id}: no pid in the state");
        return ExitCode::from(1);
    };
    let bundle = state
        .get("bundle")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    let config = bundle
        .as_ref()
        .and_then(|b| std::fs::read_to_string(b.join("config.json")).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or(Value::Null);
    // The agent's hook protocol: one JSON line each way.
    let request = HookRequest {
        id: id.clone(),
        pid,
        env: env_of(&config),
        fresh_netns: fresh_netns(&config),
        fell_back: false,
        bounding: config
            .pointer("/process/capabilities/bounding")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            }),
    };
    let timeout = Duration::from_millis(opts.timeout_ms);
    let why = match ask(&opts.socket, &request, timeout) {
        Ok(reply) if reply.ok => return ExitCode::SUCCESS,
        Ok(reply) => reply
            .error
            .unwrap_or_else(|| "the agent could not enforce it".to_owned()),
        Err(e) => e,
    };
    // Fail closed: nothing leaves the container until the agent puts the real ruleset in.
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    match deny_all(&netns) {
        Ok(()) => {
            eprintln!(
                "egresstrator-runc hook: container {id}: {why}; all egress denied until the agent enforces it"
            );
            // An agent that was only late may have committed its ruleset before our deny-all
            // landed on top of it: tell it to load the namespace again.
            let notice = HookRequest {
                fell_back: true,
                ..request
            };
            tell(&opts.socket, &notice, timeout);
        }
        Err(e) => {
            eprintln!("egresstrator-runc hook: container {id}: {why}; and deny-all failed: {e}");
            return ExitCode::from(1);
        }
    }
    if opts.block {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// One request to the agent and its answer, within `timeout`.
fn ask(socket: &Path, request: &HookRequest, timeout: Duration) -> Result<HookReply, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("agent socket {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("agent socket {}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the agent within {timeout:?}: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer from the agent: {e}"))
}

/// One line to the agent, no answer awaited; an agent that is not there learns of the
/// container from Docker once it runs.
fn tell(socket: &Path, notice: &HookRequest, timeout: Duration) {
    let Ok(line) = serde_json::to_string(notice) else {
        return;
    };
    if let Ok(mut stream) = UnixStream::connect(socket) {
        let _ = stream.set_write_timeout(Some(timeout));
        let _ = stream.write_all(format!("{line}\n").as_bytes());
    }
}

/// Loads deny-all into the container's namespace with `nft -f -`. This hook process is
/// short-lived and single-threaded, so it enters the namespace itself; it never returns to
/// anything that could run in the wrong namespace. The host's own namespace is refused.
fn deny_all(netns: &Path) -> Result<(), String> {
    let target = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    let own = std::fs::metadata("/proc/self/ns/net").map_err(|e| e.to_string())?;
    let theirs = target.metadata().map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::MetadataExt;
        if own.dev() == theirs.dev() && own.ino() == theirs.ino() {
            return Err(format!(
                "{} is the host's own namespace; refusing",
                netns.display()
            ));
        }
    }
    // SAFETY: setns on a file descriptor we own, in a process that exits right after.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot enter {}: {}",
            netns.display(),
            std::io::Error::last_os_error()
        ));
    }
    // The guard too: deny-all in the inet table stops nothing a raw socket sends.
    let mut script = nft::render(&Ruleset::deny_all());
    let interfaces = crate::ifnames::interface_names().unwrap_or_else(|_| vec!["lo".to_owned()]);
    script.push_str(&guard::render(&interfaces).0);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
