//! The runtime shim's OCI bundle handling (`egresstrator-runc create`): reading the bundle's
//! `config.json` and dockerd's record of the container, deciding whether it is enabled,
//! refusing bypass capabilities, dropping `CAP_NET_RAW` and adding the hook.
//!
//! The shim is a binary crate, so its `bundle.rs` and `options.rs` are compiled into this
//! target with `#[path]`, unchanged. `prepare_create` works on files: each input is written
//! as a bundle and a docker root on tmpfs, and the rewritten `config.json` is read back.
//!
//! Input: `config.json`, then NUL and dockerd's `config.v2.json` (optional), then NUL and
//! option words (`allow-bypassable`, `keep-net-raw`, `block`). Checked: no panic; a bundle
//! that is not enabled is left byte for byte as it was; an enabled one holding
//! `CAP_NET_ADMIN`/`CAP_SYS_ADMIN` is refused (naming the capability) unless allowed; an
//! enabled one that starts ends with our hook last in `createRuntime`, every other hook
//! kept, and no `CAP_NET_RAW` left in any set unless kept; the rewritten file is JSON.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/egresstrator/src/bin/egresstrator-runc/bundle.rs"]
mod bundle;
#[allow(dead_code)]
#[path = "../../crates/egresstrator/src/bin/egresstrator-runc/options.rs"]
mod options;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = egresstrator_fuzz::scratch_dir("bundle");
        std::fs::create_dir_all(dir.join("bundle")).expect("bundle dir");
        std::fs::create_dir_all(dir.join("root/containers").join(ID)).expect("docker root");
        dir
    })
}

/// dockerd's labels, as the shim reads them (`/Config/Labels`, string values only).
fn labels(record: &Value) -> BTreeMap<String, String> {
    record
        .pointer("/Config/Labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn hooks(config: &Value) -> Vec<Value> {
    config
        .pointer("/hooks/createRuntime")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let config_bytes = parts.next().unwrap_or_default();
    let record_bytes = parts.next();
    let words = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let opts = options::Options {
        allow_bypassable: words.contains("allow-bypassable"),
        keep_net_raw: words.contains("keep-net-raw"),
        block: words.contains("block"),
        docker_root: scratch().join("root"),
        ..options::Options::default()
    };

    // The pure helpers, on anything that is JSON.
    let config: Option<Value> = serde_json::from_slice(config_bytes).ok();
    let record: Option<Option<Value>> = match record_bytes {
        Some(b) => serde_json::from_slice(b).ok().map(Some),
        None => Some(None),
    };
    if let Some(c) = &config {
        let _ = bundle::env_of(c);
        let _ = bundle::fresh_netns(c);
        let _ = bundle::bypass_capability(c);
        let _ = bundle::enabled(c, None);
    }

    // prepare_create on files.
    let dir = scratch();
    let config_path = dir.join("bundle/config.json");
    let record_path = dir.join("root/containers").join(ID).join("config.v2.json");
    std::fs::write(&config_path, config_bytes).expect("write config.json");
    match record_bytes {
        Some(b) => std::fs::write(&record_path, b).expect("write config.v2.json"),
        None => {
            let _ = std::fs::remove_file(&record_path);
        }
    }
    let args: Vec<OsString> = ["--bundle", dir.join("bundle").to_str().unwrap_or("."), ID]
        .iter()
        .map(OsString::from)
        .collect();
    let result = bundle::prepare_create(&args, &opts);
    let after = std::fs::read(&config_path).expect("read config.json back");

    let (Some(config), Some(record)) = (config, record) else {
        assert!(result.is_err(), "bad JSON accepted");
        assert_eq!(after, config_bytes, "a refused bundle was changed");
        return;
    };
    let labels = record.as_ref().map(labels);
    let enabled = bundle::enabled(&config, labels.as_ref());
    if !enabled {
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            after, config_bytes,
            "a bundle that is not enabled was changed"
        );
        return;
    }
    let cap = bundle::bypass_capability(&config);
    match result {
        Err(e) => {
            assert_eq!(after, config_bytes, "a refused bundle was changed");
            match cap {
                Some(cap) if !opts.allow_bypassable => assert!(e.contains(cap), "{e}"),
                // Only a config.json that cannot hold the hook is refused otherwise.
                _ => assert!(e.starts_with("config.json"), "{e}"),
            }
        }
        Ok(()) => {
            assert!(cap.is_none() || opts.allow_bypassable, "{cap:?} started");
            let new: Value = serde_json::from_slice(&after).expect("rewritten config.json is JSON");
            let before = hooks(&config);
            let now = hooks(&new);
            assert_eq!(now.len(), before.len() + 1);
            assert_eq!(now[..before.len()], before[..], "other hooks changed");
            let ours = &now[before.len()];
            let args: Vec<&str> = ours["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(args.first(), Some(&"egresstrator-runc"));
            assert_eq!(args.last(), Some(&"hook"));
            assert_eq!(args.contains(&"--egresstrator-block"), opts.block);
            if !opts.keep_net_raw {
                if let Some(sets) = new
                    .pointer("/process/capabilities")
                    .and_then(Value::as_object)
                {
                    for (name, set) in sets {
                        if let Some(list) = set.as_array() {
                            assert!(
                                !list.iter().any(|c| c.as_str() == Some("CAP_NET_RAW")),
                                "CAP_NET_RAW left in {name}"
                            );
                        }
                    }
                }
            }
            // Nothing else changed: the environment, what enables it, what it runs.
            assert_eq!(bundle::env_of(&new), bundle::env_of(&config));
            assert_eq!(bundle::fresh_netns(&new), bundle::fresh_netns(&config));
            assert!(bundle::enabled(&new, labels.as_ref()));
        }
    }
});
