//! egresstrator-runc: closes the window between a container's start and its rules.
//!
//! Registered with dockerd as a runtime, it passes every runc verb and flag through
//! unchanged. On `create` of an enabled container (`EGRESSTRATOR_ENABLE=1` in the bundle's
//! environment, or the annotation `egresstrator.enable=true`), it first adds an OCI
//! `createRuntime` hook to the bundle's config.json: runc runs the hook while the container's
//! init is paused, so the ruleset is in force before the workload's first instruction.
//!
//! The hook (`egresstrator-runc hook`) asks the running agent over its root-only unix socket
//! to enforce the namespace, within a bounded time. If the agent does not answer, or cannot
//! build the policy, the hook loads deny-all itself (fail closed) and lets the container start
//! — or, with `--egresstrator-block`, makes the start fail. The agent replaces deny-all with
//! the real ruleset as soon as it can.
//!
//! dockerd runs this program for every runc verb of every container, so it is kept lean: it
//! uses neither the agent's library nor libnftables (its deny-all fallback runs `nft`).
//!
//! Options come first (dockerd's `runtimeArgs`) and are removed before runc sees the rest:
//! `--egresstrator-socket=PATH`, `--egresstrator-timeout-ms=N` (default 2000),
//! `--egresstrator-block`, `--egresstrator-runc=PATH` (default: runc on PATH).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use egresstrator_core::render::nft;
use egresstrator_core::Ruleset;
use serde_json::{json, Value};

/// The agent's default hook socket (`egresstrator --hook-socket`).
const DEFAULT_SOCKET: &str = "/run/egresstrator/hook.sock";

/// runc's global options that take a value in the next argument.
const RUNC_VALUE_FLAGS: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

struct Options {
    socket: PathBuf,
    timeout_ms: u64,
    block: bool,
    runc: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let opts = take_options(&mut args);
    if args.first().and_then(|a| a.to_str()) == Some("hook") {
        return run_hook(&opts);
    }
    if let Err(e) = prepare_create(&args, &opts) {
        // Never start an enabled container without its hook: fail the create.
        eprintln!("egresstrator-runc: {e}");
        return ExitCode::from(1);
    }
    let runc = opts.runc.clone().unwrap_or_else(find_runc);
    let err = Command::new(&runc).args(&args).exec();
    eprintln!("egresstrator-runc: cannot run {}: {err}", runc.display());
    ExitCode::from(127)
}

/// Removes egresstrator's own options from the front of the arguments.
fn take_options(args: &mut Vec<OsString>) -> Options {
    let mut opts = Options {
        socket: PathBuf::from(DEFAULT_SOCKET),
        timeout_ms: 2000,
        block: false,
        runc: None,
    };
    args.retain(|a| {
        let Some(s) = a.to_str() else { return true };
        if let Some(v) = s.strip_prefix("--egresstrator-socket=") {
            opts.socket = PathBuf::from(v);
        } else if let Some(v) = s.strip_prefix("--egresstrator-timeout-ms=") {
            opts.timeout_ms = v.parse().unwrap_or(2000);
        } else if s == "--egresstrator-block" {
            opts.block = true;
        } else if let Some(v) = s.strip_prefix("--egresstrator-runc=") {
            opts.runc = Some(PathBuf::from(v));
        } else {
            return true;
        }
        false
    });
    opts
}

/// The real runc: the first `runc` on PATH that is not this program.
fn find_runc() -> PathBuf {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("runc"))
        .find(|p| p.is_file() && p.canonicalize().ok() != me)
        .unwrap_or_else(|| PathBuf::from("runc"))
}

/// On `runc create`, adds the hook to an enabled container's bundle.
fn prepare_create(args: &[OsString], opts: &Options) -> Result<(), String> {
    let strs: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let mut i = 0;
    while i < strs.len() {
        let a = strs[i];
        if RUNC_VALUE_FLAGS.contains(&a) {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        break;
    }
    if strs.get(i) != Some(&"create") {
        return Ok(());
    }
    let mut bundle = PathBuf::from(".");
    let rest = &strs[i + 1..];
    let mut j = 0;
    while j < rest.len() {
        match rest[j] {
            "--bundle" | "-b" => {
                if let Some(b) = rest.get(j + 1) {
                    bundle = PathBuf::from(b);
                }
                j += 2;
                continue;
            }
            a => {
                if let Some(b) = a
                    .strip_prefix("--bundle=")
                    .or_else(|| a.strip_prefix("-b="))
                {
                    bundle = PathBuf::from(b);
                }
            }
        }
        j += 1;
    }
    let config_path = bundle.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    if !enabled(&config) {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let mut hook_args = vec![
        "egresstrator-runc".to_owned(),
        format!("--egresstrator-socket={}", opts.socket.display()),
        format!("--egresstrator-timeout-ms={}", opts.timeout_ms),
    ];
    if opts.block {
        hook_args.push("--egresstrator-block".to_owned());
    }
    hook_args.push("hook".to_owned());
    let entry = json!({
        "path": exe,
        "args": hook_args,
        // runc's own bound: a little above ours, so our fallback always gets to run.
        "timeout": opts.timeout_ms / 1000 + 3,
    });
    let hooks = config
        .as_object_mut()
        .ok_or("config.json is not an object")?
        .entry("hooks")
        .or_insert_with(|| json!({}));
    let list = hooks
        .as_object_mut()
        .ok_or("config.json hooks is not an object")?
        .entry("createRuntime")
        .or_insert_with(|| json!([]));
    list.as_array_mut()
        .ok_or("config.json hooks.createRuntime is not a list")?
        .push(entry);
    let out = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    std::fs::write(&config_path, out).map_err(|e| format!("{}: {e}", config_path.display()))
}

/// Enabled as the agent decides it from what a bundle shows: the environment, or an
/// `egresstrator.enable` annotation (labels themselves are not in the bundle).
fn enabled(config: &Value) -> bool {
    if let Some(v) = config
        .pointer("/annotations/egresstrator.enable")
        .and_then(Value::as_str)
    {
        return matches!(v.trim(), "true" | "1");
    }
    env_of(config)
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("EGRESSTRATOR_ENABLE="))
        .is_some_and(|v| v.trim() == "1")
}

fn env_of(config: &Value) -> Vec<String> {
    config
        .pointer("/process/env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn resolv_conf_of(config: &Value) -> Option<PathBuf> {
    config
        .get("mounts")?
        .as_array()?
        .iter()
        .find(|m| m.get("destination").and_then(Value::as_str) == Some("/etc/resolv.conf"))
        .and_then(|m| m.get("source")?.as_str().map(PathBuf::from))
}

/// The createRuntime hook: the OCI state is on stdin.
fn run_hook(opts: &Options) -> ExitCode {
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
    // The agent's hook protocol (`egresstrator::hook`): one JSON line each way.
    let request = json!({
        "id": id,
        "pid": pid,
        "env": env_of(&config),
        "resolv_conf": resolv_conf_of(&config),
    });
    let timeout = Duration::from_millis(opts.timeout_ms);
    let why = match ask(&opts.socket, &request, timeout) {
        Ok(reply) if reply.get("ok").and_then(Value::as_bool) == Some(true) => {
            return ExitCode::SUCCESS
        }
        Ok(reply) => reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the agent could not enforce it")
            .to_owned(),
        Err(e) => e,
    };
    // Fail closed: nothing leaves the container until the agent puts the real ruleset in.
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    match deny_all(&netns) {
        Ok(()) => eprintln!(
            "egresstrator-runc hook: container {id}: {why}; all egress denied until the agent enforces it"
        ),
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
fn ask(socket: &Path, request: &Value, timeout: Duration) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("agent socket {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut line = request.to_string();
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
    let script = nft::render(&Ruleset::deny_all());
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
