//! `runc create`: adds the hook to an enabled container's bundle (config.json), and refuses
//! enabled containers that could change their own firewall.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::options::Options;

/// The bound on a file read here: Docker's records and OCI bundles are a few KiB.
const FILE_MAX: u64 = 4 << 20;

/// `args` are create's own arguments (after the verb).
pub fn prepare_create(args: &[OsString], opts: &Options) -> Result<(), String> {
    let config_path = bundle_of(args).join("config.json");
    let mut config: Value = read_json(&config_path)?;
    let id = args.last().and_then(|a| a.to_str()).unwrap_or_default();
    let labels = docker_labels(&opts.docker_root, id)?;
    if !enabled(&config, labels.as_ref()) {
        return Ok(());
    }
    if let Some(cap) = bypass_capability(&config) {
        if !opts.allow_bypassable {
            return Err(format!(
                "container {id} is enabled for egresstrator but holds {cap}, with which its workload could change or remove its own firewall; refusing to start it (drop the capability, or set allow-bypassable = true in runc.conf to start it anyway)"
            ));
        }
    }
    if !opts.keep_net_raw {
        drop_capability(&mut config, "CAP_NET_RAW");
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

/// Removes a capability from every set of the bundle's process. `CAP_NET_RAW` lets a workload
/// send frames through `AF_XDP` sockets, which the kernel transmits past every netfilter hook,
/// the raw-socket guard's included; without it neither `AF_XDP` nor `AF_PACKET` sockets can be
/// opened. (Docker sets `net.ipv4.ping_group_range` in containers, so `ping` keeps working
/// through ICMP sockets.)
fn drop_capability(config: &mut Value, cap: &str) {
    if let Some(sets) = config
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    {
        for set in sets.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.retain(|c| c.as_str() != Some(cap));
            }
        }
    }
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

/// Reads a JSON file of bounded size.
fn read_json(path: &Path) -> Result<Value, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(FILE_MAX)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The container's labels from dockerd's record of it (`<docker-root>/containers/<id>/
/// config.v2.json`, written when the container was created; labels are not in the bundle).
/// `None` for a container dockerd does not know (started by another containerd client: it
/// has no labels). A docker root without a `containers` directory is a misconfiguration and
/// an error, so a wrong `docker-root` cannot silently leave label-enabled containers unhooked.
fn docker_labels(root: &Path, id: &str) -> Result<Option<BTreeMap<String, String>>, String> {
    let containers = root.join("containers");
    if !containers.is_dir() {
        return Err(format!(
            "{} does not exist: set docker-root in runc.conf to dockerd's data-root",
            containers.display()
        ));
    }
    // Docker's ids are 64 hex digits; anything else is not one of its containers (and must
    // not name a path).
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let record = containers.join(id).join("config.v2.json");
    if !record.exists() {
        return Ok(None);
    }
    let config = read_json(&record)?;
    Ok(Some(
        config
            .pointer("/Config/Labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
    ))
}

/// Enabled exactly as the agent decides it (`enforce::request`): when the container has the
/// label `egresstrator.enable`, its labels alone decide; otherwise `EGRESSTRATOR_ENABLE=1` in
/// its environment.
pub fn enabled(config: &Value, labels: Option<&BTreeMap<String, String>>) -> bool {
    if let Some(v) = labels.and_then(|l| l.get("egresstrator.enable")) {
        return matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1");
    }
    env_of(config)
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("EGRESSTRATOR_ENABLE="))
        .is_some_and(|v| v.trim() == "1")
}

/// The first capability in the bundle's process that lets a workload change its own
/// firewall: `CAP_NET_ADMIN` or `CAP_SYS_ADMIN`, in any of its sets (a capability in the
/// bounding set can be regained by root through exec). `--privileged` grants both.
pub fn bypass_capability(config: &Value) -> Option<&'static str> {
    let sets = config.pointer("/process/capabilities")?.as_object()?;
    ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"].into_iter().find(|cap| {
        sets.values().any(|set| {
            set.as_array()
                .is_some_and(|list| list.iter().any(|c| c.as_str() == Some(cap)))
        })
    })
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
    fn enabled_by_env_or_labels_and_labels_win() {
        let env = |e: &[&str]| json!({"process": {"env": e}});
        assert!(enabled(&env(&["PATH=/bin", "EGRESSTRATOR_ENABLE=1"]), None));
        assert!(!enabled(
            &env(&["EGRESSTRATOR_ENABLE=1", "EGRESSTRATOR_ENABLE=0"]),
            None
        ));
        assert!(!enabled(&env(&["PATH=/bin"]), None));
        let labels = |v: &str| BTreeMap::from([("egresstrator.enable".to_owned(), v.to_owned())]);
        assert!(enabled(&env(&[]), Some(&labels("TRUE"))));
        assert!(enabled(&env(&[]), Some(&labels("1"))));
        assert!(!enabled(
            &env(&["EGRESSTRATOR_ENABLE=1"]),
            Some(&labels("false"))
        ));
        assert!(enabled(
            &env(&["EGRESSTRATOR_ENABLE=1"]),
            Some(&BTreeMap::new())
        ));
        // Annotations are not a way to enable (the event path cannot see them).
        let ann = json!({"annotations": {"egresstrator.enable": "true"}, "process": {"env": []}});
        assert!(!enabled(&ann, None));
    }

    #[test]
    fn capabilities_that_bypass_are_found_in_any_set() {
        let caps = |set: &str, list: &[&str]| json!({"process": {"capabilities": {set: list}}});
        assert_eq!(
            bypass_capability(&caps("bounding", &["CAP_CHOWN", "CAP_NET_ADMIN"])),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(
            bypass_capability(&caps("effective", &["CAP_SYS_ADMIN"])),
            Some("CAP_SYS_ADMIN")
        );
        assert_eq!(
            bypass_capability(&caps("bounding", &["CAP_NET_RAW", "CAP_CHOWN"])),
            None
        );
        assert_eq!(bypass_capability(&json!({})), None);
    }

    #[test]
    fn net_raw_is_dropped_from_every_set() {
        let mut config = json!({"process": {"capabilities": {
            "bounding": ["CAP_CHOWN", "CAP_NET_RAW"],
            "effective": ["CAP_NET_RAW"],
            "permitted": ["CAP_NET_RAW", "CAP_KILL"]
        }}});
        drop_capability(&mut config, "CAP_NET_RAW");
        assert_eq!(
            config["process"]["capabilities"],
            json!({"bounding": ["CAP_CHOWN"], "effective": [], "permitted": ["CAP_KILL"]})
        );
        let mut none = json!({});
        drop_capability(&mut none, "CAP_NET_RAW");
        assert_eq!(none, json!({}));
    }

    #[test]
    fn labels_come_from_dockers_record() {
        let root = std::env::temp_dir().join(format!("egt-shim-root-{}", std::process::id()));
        let id = "a".repeat(64);
        std::fs::create_dir_all(root.join("containers").join(&id)).expect("dir");
        std::fs::write(
            root.join("containers").join(&id).join("config.v2.json"),
            r#"{"Config": {"Labels": {"egresstrator.enable": "true", "n": 1}}}"#,
        )
        .expect("write");
        let labels = docker_labels(&root, &id).expect("read").expect("known");
        assert_eq!(
            labels.get("egresstrator.enable").map(String::as_str),
            Some("true")
        );
        assert_eq!(labels.len(), 1, "non-string values are skipped");
        assert_eq!(docker_labels(&root, &"b".repeat(64)).expect("read"), None);
        assert_eq!(docker_labels(&root, "../../etc").expect("read"), None);
        let err = docker_labels(&root.join("nope"), &id).expect_err("misconfigured root");
        assert!(err.contains("set docker-root in runc.conf"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
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
            ..Options::default()
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
