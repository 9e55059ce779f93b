//! `runc create`: adds the hook to an enabled container's bundle (config.json).

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::options::Options;

/// `args` are create's own arguments (after the verb).
pub fn prepare_create(args: &[OsString], opts: &Options) -> Result<(), String> {
    let config_path = bundle_of(args).join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    if !enabled(&config) {
        return Ok(());
    }
    add_hook(&mut config, opts)?;
    let out = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    std::fs::write(&config_path, out).map_err(|e| format!("{}: {e}", config_path.display()))
}

/// `--bundle DIR`, `-b DIR`, `--bundle=DIR` or `-b=DIR`; runc's default is the working
/// directory.
fn bundle_of(args: &[OsString]) -> PathBuf {
    let mut bundle = PathBuf::from(".");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--bundle" || a == "-b" {
            if let Some(b) = it.next() {
                bundle = PathBuf::from(b);
            }
        } else if let Some(b) = a.to_str().and_then(|a| {
            a.strip_prefix("--bundle=")
                .or_else(|| a.strip_prefix("-b="))
        }) {
            bundle = PathBuf::from(b);
        }
    }
    bundle
}

/// Appends our createRuntime hook; its arguments carry the options, so the hook needs no
/// configuration of its own.
fn add_hook(config: &mut Value, opts: &Options) -> Result<(), String> {
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
    Ok(())
}

/// Enabled as the agent decides it from what a bundle shows: the environment, or an
/// `egresstrator.enable` annotation (labels themselves are not in the bundle).
pub fn enabled(config: &Value) -> bool {
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

pub fn env_of(config: &Value) -> Vec<String> {
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

pub fn resolv_conf_of(config: &Value) -> Option<PathBuf> {
    config
        .get("mounts")?
        .as_array()?
        .iter()
        .find(|m| m.get("destination").and_then(Value::as_str) == Some("/etc/resolv.conf"))
        .and_then(|m| m.get("source")?.as_str().map(PathBuf::from))
}

/// Whether runc creates a new network namespace for this container (the bundle lists one
/// without a path) rather than joining an existing one (`--network container:X`).
pub fn fresh_netns(config: &Value) -> bool {
    config
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))
        })
        .is_some_and(|ns| {
            ns.get("path")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn bundle_spellings() {
        assert_eq!(
            bundle_of(&args(&["--bundle", "/b", "id"])),
            PathBuf::from("/b")
        );
        assert_eq!(bundle_of(&args(&["-b", "/b", "id"])), PathBuf::from("/b"));
        assert_eq!(
            bundle_of(&args(&["--bundle=/b", "id"])),
            PathBuf::from("/b")
        );
        assert_eq!(
            bundle_of(&args(&["--pid-file", "/p", "id"])),
            PathBuf::from(".")
        );
    }

    #[test]
    fn enabled_by_env_or_annotation() {
        let env = |e: &[&str]| json!({"process": {"env": e}});
        assert!(enabled(&env(&["PATH=/bin", "EGRESSTRATOR_ENABLE=1"])));
        assert!(!enabled(&env(&[
            "EGRESSTRATOR_ENABLE=1",
            "EGRESSTRATOR_ENABLE=0"
        ])));
        assert!(!enabled(&env(&["PATH=/bin"])));
        let ann = json!({"annotations": {"egresstrator.enable": "true"}, "process": {"env": []}});
        assert!(enabled(&ann));
        let off = json!({"annotations": {"egresstrator.enable": "false"},
                          "process": {"env": ["EGRESSTRATOR_ENABLE=1"]}});
        assert!(!enabled(&off));
    }

    #[test]
    fn fresh_only_when_runc_creates_the_namespace() {
        let ns = |n: Value| json!({"linux": {"namespaces": n}});
        assert!(fresh_netns(&ns(
            json!([{"type": "pid"}, {"type": "network"}])
        )));
        assert!(fresh_netns(&ns(json!([{"type": "network", "path": ""}]))));
        assert!(!fresh_netns(&ns(
            json!([{"type": "network", "path": "/proc/42/ns/net"}])
        )));
        // No network namespace of its own: the host's (the agent refuses it anyway).
        assert!(!fresh_netns(&ns(json!([{"type": "pid"}]))));
        assert!(!fresh_netns(&json!({})));
    }

    #[test]
    fn hook_carries_the_options() {
        let mut config = json!({"hooks": {"createRuntime": [{"path": "/other"}]}});
        let opts = Options {
            socket: PathBuf::from("/s.sock"),
            timeout_ms: 1500,
            block: true,
            runc: None,
        };
        add_hook(&mut config, &opts).expect("hook");
        let list = config["hooks"]["createRuntime"].as_array().expect("list");
        assert_eq!(list.len(), 2, "other hooks are kept");
        assert_eq!(
            list[1]["args"],
            json!([
                "egresstrator-runc",
                "--egresstrator-socket=/s.sock",
                "--egresstrator-timeout-ms=1500",
                "--egresstrator-block",
                "hook"
            ])
        );
        assert_eq!(list[1]["timeout"], json!(4));
    }
}
