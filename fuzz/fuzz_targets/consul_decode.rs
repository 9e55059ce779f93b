//! What egresstrator makes of Consul's answers, as far as it is reachable without a Consul:
//! the KV listing turned into the ACL table (`AclTable::parse`) with protect mode's manifest
//! check (`manifest::parse`, `manifest::check`), and the service query strings templates send
//! to Consul's health endpoint (`ServiceQuery::parse`).
//!
//! The JSON decoding of Consul's KV, health and catalog answers is not reachable: its types
//! are private to `crates/egresstrator/src/consul.rs` and decoded inside async methods on a
//! `reqwest::Response` (see FUZZING.md, "Not fuzzed").
//!
//! Input: KV pairs, one per NUL-separated record, `NAME=VALUE` (an empty name is the
//! kv-path's own key, the manifest). Checked: no panic; the table holds one entry per
//! distinct name; the manifest check passes exactly when every name the manifest lists was
//! read; a manifest's names print in a form that parses back to the same set; a service
//! query prints in consul-template's spelling, which parses back to the same query (an
//! empty filter list, `web|,`, has no such spelling: it must accept no instance).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use egresstrator_core::acl::AclTable;
use egresstrator_core::manifest;
use egresstrator_template::ServiceQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    let mut manifest_text = None;
    for record in text.split('\0') {
        let (name, value) = record.split_once('=').unwrap_or((record, ""));
        if name.is_empty() {
            manifest_text = Some(value);
        } else {
            kv.insert(name, value);
        }
    }
    let table = AclTable::parse(kv.iter().map(|(k, v)| (*k, *v)));
    assert_eq!(table.len(), kv.len());

    let result = manifest::check(manifest_text, kv.keys().copied());
    match manifest_text.map(manifest::parse) {
        None => assert_eq!(result, Err(manifest::ManifestError::Missing)),
        Some(Err(e)) => assert_eq!(result, Err(e)),
        Some(Ok(names)) => {
            let all_read = names.iter().all(|n| kv.contains_key(n.as_str()));
            assert_eq!(result.is_ok(), all_read, "{result:?}");
            let printed: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            let again =
                manifest::parse(&printed.join("\n")).expect("a manifest's names parse back");
            assert_eq!(again, names);
            let set: BTreeSet<&str> = printed.into_iter().collect();
            assert_eq!(set.len(), names.len());
        }
    }

    for name in kv.keys().take(16) {
        if let Ok(q) = ServiceQuery::parse(name) {
            if q.filters.is_empty() {
                // `web|,`: an empty filter list, which (as in consul-template) accepts no
                // instance; no spelling of it parses back.
                for status in ["passing", "warning", "critical", "maintenance", ""] {
                    assert!(!q.accepts(status), "{name:?} accepts {status:?}");
                }
                continue;
            }
            let printed = q.to_string();
            assert_eq!(
                ServiceQuery::parse(&printed).as_ref(),
                Ok(&q),
                "{name:?} -> {printed:?}"
            );
        }
    }
});
