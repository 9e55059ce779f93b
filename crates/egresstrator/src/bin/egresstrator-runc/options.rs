//! The shim's options: built-in defaults, then the config file, then `runtimeArgs`.
//!
//! dockerd runs a runtime that has `runtimeArgs` through a generated `/bin/sh` script, which
//! costs a shell for every runc verb of every container. The config file
//! (`/etc/egresstrator/runc.conf`, or the file named by `$EGRESSTRATOR_RUNC_CONFIG`) gives the
//! same options without it:
//!
//! ```text
//! # egresstrator-runc
//! socket = /run/egresstrator/hook.sock
//! timeout-ms = 2000
//! block = false
//! runc = /usr/sbin/runc
//! docker-root = /var/lib/docker
//! allow-bypassable = false
//! keep-net-raw = false
//! ```
//!
//! `runtimeArgs` (`--egresstrator-socket=PATH`, `--egresstrator-timeout-ms=N`,
//! `--egresstrator-block`, `--egresstrator-runc=PATH`) come first in the arguments and win
//! over the file; they are removed before runc sees the rest.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The agent's default hook socket (`egresstrator --hook-socket`).
pub const DEFAULT_SOCKET: &str = "/run/egresstrator/hook.sock";
/// The config file read when `$EGRESSTRATOR_RUNC_CONFIG` does not name another.
pub const DEFAULT_CONFIG: &str = "/etc/egresstrator/runc.conf";
/// How long the hook waits for the agent, unless told otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// dockerd's default data root, where it keeps its record of every container.
pub const DEFAULT_DOCKER_ROOT: &str = "/var/lib/docker";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub socket: PathBuf,
    pub timeout_ms: u64,
    pub block: bool,
    /// The real runc; `None` = the first `runc` on PATH that is not this program.
    pub runc: Option<PathBuf>,
    /// dockerd's data root (`data-root`), where the shim reads a container's labels.
    pub docker_root: PathBuf,
    /// Let enabled containers that hold NET_ADMIN or SYS_ADMIN start (they can change their
    /// own firewall; the agent reports them as bypassable).
    pub allow_bypassable: bool,
    /// Leave `CAP_NET_RAW` to enabled containers (it lets them send AF_XDP frames past every
    /// netfilter hook; the agent reports them as bypassable).
    pub keep_net_raw: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: PathBuf::from(DEFAULT_SOCKET),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            block: false,
            runc: None,
            docker_root: PathBuf::from(DEFAULT_DOCKER_ROOT),
            allow_bypassable: false,
            keep_net_raw: false,
        }
    }
}

/// The options and every problem found in them (each names where it is). Problems never stop
/// a verb that keeps containers manageable (`state`, `kill`, `delete`, …); `create` refuses
/// to run with them, so a broken configuration shows at the next start.
pub fn load(args: &mut Vec<OsString>) -> (Options, Vec<String>) {
    let mut opts = Options::default();
    let mut problems = Vec::new();
    let path = std::env::var_os("EGRESSTRATOR_RUNC_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    match std::fs::read_to_string(&path) {
        Ok(text) => apply_file(&mut opts, &path, &text, &mut problems),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("{}: {e}", path.display())),
    }
    take_args(&mut opts, args, &mut problems);
    (opts, problems)
}

/// Applies `key = value` lines; `#` starts a comment.
fn apply_file(opts: &mut Options, path: &Path, text: &str, problems: &mut Vec<String>) {
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{} line {}", path.display(), n + 1);
        let Some((key, value)) = line.split_once('=') else {
            problems.push(format!("{at}: expected KEY = VALUE, got {line:?}"));
            continue;
        };
        if let Err(e) = set(opts, key.trim(), value.trim()) {
            problems.push(format!("{at}: {e}"));
        }
    }
}

/// Removes `--egresstrator-*` options from the arguments and applies them.
fn take_args(opts: &mut Options, args: &mut Vec<OsString>, problems: &mut Vec<String>) {
    args.retain(|a| {
        let Some(rest) = a.to_str().and_then(|s| s.strip_prefix("--egresstrator-")) else {
            return true;
        };
        let result = match rest.split_once('=') {
            Some((key, value)) => set(opts, key, value),
            None if rest == "block" => set(opts, "block", "true"),
            None => Err(format!("expected a value: --egresstrator-{rest}=VALUE")),
        };
        if let Err(e) = result {
            problems.push(format!("runtime argument --egresstrator-{rest}: {e}"));
        }
        false
    });
}

fn set(opts: &mut Options, key: &str, value: &str) -> Result<(), String> {
    match key {
        "socket" if !value.is_empty() => opts.socket = PathBuf::from(value),
        "timeout-ms" => {
            opts.timeout_ms =
                value.parse().ok().filter(|&ms| ms > 0).ok_or_else(|| {
                    format!("timeout-ms must be a positive number, got {value:?}")
                })?;
        }
        "block" => opts.block = boolean(key, value)?,
        "allow-bypassable" => opts.allow_bypassable = boolean(key, value)?,
        "keep-net-raw" => opts.keep_net_raw = boolean(key, value)?,
        "runc" if !value.is_empty() => opts.runc = Some(PathBuf::from(value)),
        "docker-root" if !value.is_empty() => opts.docker_root = PathBuf::from(value),
        "socket" | "runc" | "docker-root" => return Err(format!("{key} needs a path")),
        _ => {
            return Err(format!(
                "unknown option {key:?} (expected socket, timeout-ms, block, runc, docker-root, allow-bypassable or keep-net-raw)"
            ))
        }
    }
    Ok(())
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{key} must be true or false, got {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (Options, Vec<String>) {
        let mut opts = Options::default();
        let mut problems = Vec::new();
        apply_file(&mut opts, Path::new("/x/runc.conf"), text, &mut problems);
        (opts, problems)
    }

    #[test]
    fn file_sets_every_option() {
        let (opts, problems) = file(
            "# comment\n\nsocket = /run/x.sock\ntimeout-ms=500 # inline\nblock = true\nrunc = /opt/runc\ndocker-root = /srv/docker\nallow-bypassable = yes\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            opts,
            Options {
                socket: PathBuf::from("/run/x.sock"),
                timeout_ms: 500,
                block: true,
                runc: Some(PathBuf::from("/opt/runc")),
                docker_root: PathBuf::from("/srv/docker"),
                allow_bypassable: true,
                keep_net_raw: false,
            }
        );
    }

    #[test]
    fn file_problems_name_the_line_and_keep_the_rest() {
        let (opts, problems) =
            file("timeout-ms = soon\nblock = maybe\nfoo = 1\njunk\nsocket = /s\n");
        assert_eq!(
            problems,
            vec![
                "/x/runc.conf line 1: timeout-ms must be a positive number, got \"soon\"",
                "/x/runc.conf line 2: block must be true or false, got \"maybe\"",
                "/x/runc.conf line 3: unknown option \"foo\" (expected socket, timeout-ms, block, runc, docker-root, allow-bypassable or keep-net-raw)",
                "/x/runc.conf line 4: expected KEY = VALUE, got \"junk\"",
            ]
        );
        assert_eq!(opts.socket, PathBuf::from("/s"));
        assert_eq!(opts.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(!opts.block);
    }

    #[test]
    fn runtime_args_win_and_are_removed() {
        let (mut opts, _) = file("socket = /from/file\nblock = true\n");
        let mut args: Vec<OsString> = [
            "--egresstrator-socket=/from/args",
            "--egresstrator-block=false",
            "--egresstrator-timeout-ms=0",
            "--egresstrator-bogus",
            "--root",
            "/run/runc",
            "create",
            "--bundle",
            "/b",
            "id",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let mut problems = Vec::new();
        take_args(&mut opts, &mut args, &mut problems);
        assert_eq!(opts.socket, PathBuf::from("/from/args"));
        assert!(!opts.block);
        assert_eq!(
            problems,
            vec![
                "runtime argument --egresstrator-timeout-ms=0: timeout-ms must be a positive number, got \"0\"",
                "runtime argument --egresstrator-bogus: expected a value: --egresstrator-bogus=VALUE",
            ]
        );
        assert_eq!(
            args,
            ["--root", "/run/runc", "create", "--bundle", "/b", "id"]
        );
    }

    #[test]
    fn bare_block_flag() {
        let mut opts = Options::default();
        let mut args = vec![
            OsString::from("--egresstrator-block"),
            OsString::from("state"),
        ];
        let mut problems = Vec::new();
        take_args(&mut opts, &mut args, &mut problems);
        assert!(opts.block && problems.is_empty());
        assert_eq!(args, ["state"]);
    }
}
