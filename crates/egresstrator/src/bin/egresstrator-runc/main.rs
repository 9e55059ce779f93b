//! egresstrator-runc: closes the window between a container's start and its rules.
//!
//! Registered with dockerd as a runtime, it passes every runc verb and flag through
//! unchanged. On `create` of an enabled container (as dockerd recorded it: the label
//! `egresstrator.enable=true`, or `EGRESSTRATOR_ENABLE=1` in its environment), it first adds an OCI
//! `createRuntime` hook to the bundle's config.json: runc runs the hook while the container's
//! init is paused, so the ruleset is in force before the workload's first instruction.
//!
//! The hook (`egresstrator-runc hook`) asks the running agent over its root-only unix socket
//! to enforce the namespace, within a bounded time. If the agent does not answer, or cannot
//! build the policy, the hook loads deny-all itself (fail closed) and lets the container start
//! — or, with `block`, makes the start fail. The agent replaces deny-all with the real
//! ruleset as soon as it can.
//!
//! dockerd runs this program for every runc verb of every container, so it is kept lean: it
//! uses neither the agent's library nor libnftables (its deny-all fallback runs `nft`), and
//! a verb other than `create` costs a config-file lookup and one `exec`. Options: see
//! [`options`].

mod bundle;
mod hook;
#[path = "../../ifnames.rs"]
mod ifnames;
mod options;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// runc's global options that take a value in the next argument.
const RUNC_VALUE_FLAGS: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (opts, problems) = options::load(&mut args);
    if args.first().and_then(|a| a.to_str()) == Some("hook") {
        // The hook's options come from the arguments `create` wrote, which had no problems.
        return hook::run(&opts);
    }
    let verb = verb_index(&args);
    let global = &args[..verb.unwrap_or(args.len())];
    if let Some(i) = verb.filter(|&i| args[i] == "create") {
        // Never start a container on a configuration we could not read: say what is wrong.
        if !problems.is_empty() {
            return fail(global, &problems.join("; "), 1);
        }
        if let Err(e) = bundle::prepare_create(&args[i + 1..], &opts) {
            // Never start an enabled container without its hook: fail the create.
            return fail(global, &e, 1);
        }
    }
    let runc = opts.runc.clone().unwrap_or_else(find_runc);
    let err = Command::new(&runc).args(&args).exec();
    fail(
        global,
        &format!("cannot run {}: {err}", runc.display()),
        127,
    )
}

/// Fails the verb with `message`, where the caller will read it: containerd reads a failed
/// runtime's error from the `--log` file (JSON lines with `--log-format json`, as runc writes
/// them), and shows it in `docker run`'s error; stderr gets it too.
fn fail(global: &[OsString], message: &str, code: u8) -> ExitCode {
    let message = format!("egresstrator-runc: {message}");
    eprintln!("{message}");
    if let Some((path, json)) = runc_log(global) {
        let line = if json {
            serde_json::json!({ "level": "error", "msg": message }).to_string()
        } else {
            format!("level=error msg={message:?}")
        };
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    }
    ExitCode::from(code)
}

/// runc's `--log FILE` and whether `--log-format` is json, from the global options.
fn runc_log(global: &[OsString]) -> Option<(PathBuf, bool)> {
    let mut log = None;
    let mut json = false;
    let mut it = global.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (a, None),
        };
        match flag {
            "--log" => log = inline.or_else(|| it.next()).map(PathBuf::from),
            "--log-format" => json = inline.or_else(|| it.next()) == Some("json"),
            _ => {}
        }
    }
    log.map(|l| (l, json))
}

/// Where runc's verb is: the first argument after the global options.
fn verb_index(args: &[OsString]) -> Option<usize> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        // Not UTF-8 where an option or the verb stands: some other verb, passed through.
        let Some(a) = a.to_str() else {
            return Some(i);
        };
        if RUNC_VALUE_FLAGS.contains(&a) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// The real runc: the first `runc` on PATH that is not this program.
fn find_runc() -> PathBuf {
    let me = std::fs::metadata("/proc/self/exe")
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("runc"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && Some((m.dev(), m.ino())) != me))
        .unwrap_or_else(|| PathBuf::from("runc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_runc_log() {
        let a = args(&["--root", "/r", "--log", "/l.json", "--log-format", "json"]);
        assert_eq!(runc_log(&a), Some((PathBuf::from("/l.json"), true)));
        assert_eq!(
            runc_log(&args(&["--log=/l.txt"])),
            Some((PathBuf::from("/l.txt"), false))
        );
        assert_eq!(runc_log(&args(&["--root", "/r"])), None);
    }

    #[test]
    fn failure_is_written_where_containerd_reads_it() {
        let dir = std::env::temp_dir().join(format!("egt-runc-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log.json");
        let global = vec![
            OsString::from("--log"),
            log.clone().into_os_string(),
            OsString::from("--log-format"),
            OsString::from("json"),
        ];
        assert_eq!(fail(&global, "x.conf line 1: bad", 1), ExitCode::from(1));
        let text = std::fs::read_to_string(&log).expect("log written");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["level"], "error");
        assert_eq!(line["msg"], "egresstrator-runc: x.conf line 1: bad");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn verb_after_global_options() {
        let a = args(&[
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "x",
        ]);
        assert_eq!(verb_index(&a), Some(7));
        assert_eq!(verb_index(&args(&["delete", "x"])), Some(0));
        assert_eq!(verb_index(&args(&["--version"])), None);
        // A value that is not UTF-8 is skipped with its option.
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"/r\xff".to_vec());
        let a = vec![OsString::from("--root"), odd, OsString::from("create")];
        assert_eq!(verb_index(&a), Some(2));
    }
}
