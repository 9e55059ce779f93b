//! Golden tests: one folder per case under `tests/golden/<case>/`, each template rendered
//! against a fake data source and compared byte for byte with the stored files.
//!
//! Bless (rewrite the expected files from the current code, then review the diff):
//! `EGRESSTRATOR_BLESS=1 cargo test -p egresstrator-template --test golden`
//!
//! # Files of a case
//!
//! - `template.tmpl`: the template, parsed with the name `template.tmpl`.
//! - `data.json`: what the fake [`DataSource`] returns (every field optional):
//!
//!   ```json
//!   {
//!     "env": {"EGRESSTRATOR_ACL": "web,db"},
//!     "kv": {"egresstrator/acl/web": "10.0.0.0/8:tcp/443"},
//!     "services": {"web": [{"node": "n1", "address": "10.0.0.5", "port": 80,
//!                           "id": "web-1", "tags": ["prod"], "status": "passing"}]},
//!     "catalog": [{"name": "web", "tags": ["prod"]}],
//!     "now": 1700000000,
//!     "fail": false
//!   }
//!   ```
//!
//!   `kv` holds full key paths; `list` returns every key starting with the prefix, as
//!   Consul's recursive list does. `services` is keyed by service name; an instance is
//!   returned when the query's tag (if any) is among its tags. `fail` makes every KV call
//!   return an error.
//! - `expected.txt`: the output, when the render succeeds.
//! - `expected-deps.txt`: the dependencies the render recorded, one per line, and
//!   `incomplete` when [`Rendered::is_complete`] is false.
//! - `expected-error.txt`: the error (`template.tmpl:LINE:COL: message`), when parsing or
//!   rendering fails; then there is no `expected.txt`.

// Test code: a panic is how a test fails (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use egresstrator_template::{
    parse, CatalogQuery, CatalogService, DataSource, KvEntry, KvRef, Rendered, ServiceInstance,
    ServiceQuery,
};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Data {
    env: BTreeMap<String, String>,
    kv: BTreeMap<String, String>,
    services: BTreeMap<String, Vec<Instance>>,
    catalog: Vec<Catalog>,
    now: i64,
    fail: bool,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, default)]
struct Instance {
    node: String,
    node_address: String,
    address: String,
    id: String,
    tags: Vec<String>,
    status: String,
    port: u16,
    service_meta: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, default)]
struct Catalog {
    name: String,
    tags: Vec<String>,
}

impl DataSource for Data {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn key(&self, key: &KvRef) -> Result<Option<String>, String> {
        if self.fail {
            return Err(format!("Get \"/v1/kv/{}\": connection refused", key.path));
        }
        Ok(self.kv.get(&key.path).cloned())
    }

    fn list(&self, prefix: &KvRef) -> Result<Vec<KvEntry>, String> {
        if self.fail {
            return Err(format!(
                "Get \"/v1/kv/{}\": connection refused",
                prefix.path
            ));
        }
        Ok(self
            .kv
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix.path))
            .map(|(k, v)| KvEntry {
                path: k.clone(),
                value: v.clone(),
                ..KvEntry::default()
            })
            .collect())
    }

    fn service(&self, query: &ServiceQuery) -> Result<Vec<ServiceInstance>, String> {
        Ok(self
            .services
            .get(&query.name)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| query.tag.as_ref().is_none_or(|t| i.tags.contains(t)))
            .map(|i| ServiceInstance {
                node: i.node,
                node_address: i.node_address,
                address: i.address,
                id: i.id,
                name: query.name.clone(),
                tags: i.tags,
                status: if i.status.is_empty() {
                    "passing".to_owned()
                } else {
                    i.status
                },
                port: i.port,
                service_meta: i.service_meta,
                ..ServiceInstance::default()
            })
            .collect())
    }

    fn services(&self, _: &CatalogQuery) -> Result<Vec<CatalogService>, String> {
        Ok(self
            .catalog
            .iter()
            .map(|c| CatalogService {
                name: c.name.clone(),
                tags: c.tags.clone(),
            })
            .collect())
    }

    fn now_unix(&self) -> i64 {
        self.now
    }
}

fn deps_text(r: &Rendered) -> String {
    let d = &r.deps;
    let mut s = String::new();
    for k in &d.keys {
        writeln!(s, "key {k}").unwrap();
    }
    for p in &d.prefixes {
        writeln!(s, "prefix {p}").unwrap();
    }
    for q in &d.services {
        writeln!(s, "service {q}").unwrap();
    }
    for c in &d.catalog {
        match &c.datacenter {
            Some(dc) => writeln!(s, "catalog @{dc}").unwrap(),
            None => writeln!(s, "catalog").unwrap(),
        }
    }
    for e in &d.env {
        writeln!(s, "env {e}").unwrap();
    }
    for m in &d.missing {
        writeln!(s, "missing {m}").unwrap();
    }
    if !r.is_complete() {
        writeln!(s, "incomplete").unwrap();
    }
    s
}

fn bless() -> bool {
    std::env::var_os("EGRESSTRATOR_BLESS").is_some_and(|v| v == "1")
}

/// Compares (or, when blessing, writes) one expected file; `None` means the file must not
/// exist.
fn check(dir: &Path, file: &str, actual: Option<&str>, failures: &mut Vec<String>) {
    let path = dir.join(file);
    if bless() {
        match actual {
            Some(a) => fs::write(&path, a).unwrap(),
            None => {
                let _ = fs::remove_file(&path);
            }
        }
        return;
    }
    let expected = fs::read_to_string(&path).ok();
    if expected.as_deref() != actual {
        failures.push(format!(
            "{}: expected {:?}, got {:?}",
            path.display(),
            expected,
            actual
        ));
    }
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn golden() {
    let mut failures = Vec::new();
    let dirs = cases();
    for dir in &dirs {
        let text = fs::read_to_string(dir.join("template.tmpl")).unwrap();
        let data: Data = match fs::read_to_string(dir.join("data.json")) {
            Ok(json) => serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("{}: bad data.json: {e}", dir.display())),
            Err(_) => Data::default(),
        };
        let result = parse("template.tmpl", &text).and_then(|t| {
            let first = t.render(&data)?;
            // Rendering is deterministic: a second render is identical.
            let second = t.render(&data)?;
            assert_eq!(first, second, "{}: nondeterministic render", dir.display());
            Ok(first)
        });
        match result {
            Ok(r) => {
                check(dir, "expected.txt", Some(&r.output), &mut failures);
                check(
                    dir,
                    "expected-deps.txt",
                    Some(&deps_text(&r)),
                    &mut failures,
                );
                check(dir, "expected-error.txt", None, &mut failures);
            }
            Err(e) => {
                check(dir, "expected.txt", None, &mut failures);
                check(dir, "expected-deps.txt", None, &mut failures);
                check(
                    dir,
                    "expected-error.txt",
                    Some(&format!("{e}\n")),
                    &mut failures,
                );
            }
        }
    }
    assert!(dirs.len() >= 10, "golden cases missing: {dirs:?}");
    assert!(
        failures.is_empty(),
        "golden mismatches (bless with EGRESSTRATOR_BLESS=1 after review):\n{}",
        failures.join("\n")
    );
}

/// The acceptance case pinned line by line, so a bless cannot silently change it.
#[test]
fn egresstrator_02_default_template_renders_expected_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/egresstrator-0.2-default");
    let text = fs::read_to_string(dir.join("template.tmpl")).unwrap();
    let data: Data =
        serde_json::from_str(&fs::read_to_string(dir.join("data.json")).unwrap()).unwrap();
    let out = parse("template.tmpl", &text)
        .unwrap()
        .render(&data)
        .unwrap();
    let rules: Vec<&str> = out
        .output
        .lines()
        .filter(|l| l.starts_with("-A OUTPUT -d"))
        .collect();
    assert_eq!(
        rules,
        [
            "-A OUTPUT -d 10.1.2.0/24 -p tcp -m tcp --dport 5432 -m conntrack --ctstate NEW -j REJECT",
            "-A OUTPUT -d 10.4.0.11 -p tcp -m tcp --dport 9200 -m conntrack --ctstate NEW -j REJECT",
            "-A OUTPUT -d 10.4.0.12 -p tcp -m tcp --dport 9201 -m conntrack --ctstate NEW -j REJECT",
        ]
    );
    assert!(out.output.contains("# Allowed web\n"));
    assert!(out.output.starts_with("#\n# iptables for egresstrator\n"));
    assert!(out.output.ends_with("COMMIT\n"));
    assert!(out.is_complete());
}
