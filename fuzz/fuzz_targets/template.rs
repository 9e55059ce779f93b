//! The template engine: lexer, parser and executor, over a fixed fake data source.
//!
//! Input: the template text. Checked: no panic, no hang (run with `-timeout=`), no memory
//! blow-up (`-rss_limit_mb=`); an output never exceeds the engine's 64 MiB bound; a render
//! is deterministic (same output and dependencies twice); error positions point into the
//! text. The engine's own bounds (exec.rs `MAX_OUTPUT`, `MAX_DEPTH`, `MAX_STEPS`; funcs.rs
//! `MAX_STRING`) are what keeps a runaway template within the timeout.
//!
//! Data: a few env variables, KV pairs, service instances and catalog entries, as in the
//! golden case `egresstrator-0.2-default`; reads under `fail/` return an error, so the data
//! error path is reachable too.
#![no_main]

use std::collections::BTreeMap;

use egresstrator_template::{
    parse, CatalogQuery, CatalogService, DataSource, KvEntry, KvRef, ServiceInstance, ServiceQuery,
};
use libfuzzer_sys::fuzz_target;

/// The engine's output bound (`exec::MAX_OUTPUT`, private to the crate).
const MAX_OUTPUT: usize = 64 << 20;

struct Fake;

const KV: &[(&str, &str)] = &[
    ("egresstrator/acl/web", "10.9.9.9/32:tcp/443"),
    (
        "egresstrator/acl/db",
        "10.1.2.0/24:tcp/5432\n172.16.0.0/12:tcp/8000-9000\n",
    ),
    ("egresstrator/acl/search", "elasticsearch"),
    ("egresstrator/acl/", "web db search"),
    ("other/ignored", "10.7.7.7/32:tcp/22"),
    ("flags/on", "true"),
    ("nums/n", "42"),
];

impl DataSource for Fake {
    fn env(&self, name: &str) -> Option<String> {
        match name {
            "EGRESSTRATOR_ACL" => Some("web,metrics".into()),
            "CONSUL_PATH" => Some("egresstrator/acl".into()),
            "HOME" => Some("/root".into()),
            _ => None,
        }
    }

    fn key(&self, key: &KvRef) -> Result<Option<String>, String> {
        if key.path.starts_with("fail") {
            return Err(format!("Get \"/v1/kv/{}\": connection refused", key.path));
        }
        Ok(KV
            .iter()
            .find(|(k, _)| *k == key.path)
            .map(|(_, v)| (*v).to_owned()))
    }

    fn list(&self, prefix: &KvRef) -> Result<Vec<KvEntry>, String> {
        if prefix.path.starts_with("fail") {
            return Err("connection refused".into());
        }
        Ok(KV
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix.path))
            .map(|(k, v)| KvEntry {
                path: (*k).to_owned(),
                value: (*v).to_owned(),
                create_index: 7,
                modify_index: 9,
                ..KvEntry::default()
            })
            .collect())
    }

    fn service(&self, query: &ServiceQuery) -> Result<Vec<ServiceInstance>, String> {
        if query.name.starts_with("fail") {
            return Err("no cluster leader".into());
        }
        let inst = |node: &str, addr: &str, port: u16, id: &str, status: &str, tags: &[&str]| {
            ServiceInstance {
                node: node.into(),
                node_address: "192.0.2.1".into(),
                address: addr.into(),
                id: id.into(),
                name: query.name.clone(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                status: status.into(),
                port,
                service_meta: BTreeMap::from([("version".to_owned(), "1".to_owned())]),
                ..ServiceInstance::default()
            }
        };
        let all = match query.name.as_str() {
            "elasticsearch" => vec![
                inst("node-b", "10.4.0.12", 9201, "es-2", "critical", &["prod"]),
                inst(
                    "node-a",
                    "10.4.0.11",
                    9200,
                    "es-1",
                    "passing",
                    &["prod", "v2"],
                ),
            ],
            "web" => vec![
                inst("node-a", "", 80, "web-1", "passing", &[]),
                inst("node-c", "fd00::5", 8080, "web-2", "warning", &["canary"]),
            ],
            _ => vec![],
        };
        Ok(all
            .into_iter()
            .filter(|i| query.tag.as_ref().is_none_or(|t| i.tags.contains(t)))
            .collect())
    }

    fn services(&self, _: &CatalogQuery) -> Result<Vec<CatalogService>, String> {
        Ok(vec![
            CatalogService {
                name: "web".into(),
                tags: vec!["canary".into()],
            },
            CatalogService {
                name: "elasticsearch".into(),
                tags: vec!["prod".into(), "v2".into()],
            },
        ])
    }

    fn now_unix(&self) -> i64 {
        1_700_000_000
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.matches('\n').count() + 1;
    let t = match parse("fuzz.tmpl", text) {
        Ok(t) => t,
        Err(e) => {
            assert!(e.line >= 1 && e.line <= lines && e.column >= 1, "{e}");
            return;
        }
    };
    // Every defined template can be named (a name is any Go string: no check on its text).
    assert!(t.defined_templates().count() <= text.len());
    let first = t.render(&Fake);
    match &first {
        Ok(r) => assert!(r.output.len() <= MAX_OUTPUT),
        Err(e) => assert!(e.line >= 1 && e.line <= lines && e.column >= 1, "{e}"),
    }
    // Deterministic (small outputs only: a second 64 MiB render would only slow the fuzzer).
    if let Ok(r) = &first {
        if r.output.len() < 1 << 16 {
            assert_eq!(
                first,
                t.clone().render(&Fake),
                "render is not deterministic"
            );
        }
    }
});
