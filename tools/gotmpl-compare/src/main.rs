//! Renders every golden case of `egresstrator-template` with the `gotmpl` crate (a Rust
//! port of Go's `text/template`) and with our engine, compares both with the stored
//! expected files, and times the renders.
//!
//! Run from this directory: `CARGO_TARGET_DIR=/tmp/gotmpl-target cargo run --release`
//! (optional argument: iterations per timing loop, default 10000).
//!
//! gotmpl gets the consul-template functions the golden cases use, registered as closures
//! over the case's data and written after `crates/egresstrator-template/src/funcs.rs`
//! (argument order, sorting, `ls`/`tree` filtering, `byKey`/`byTag` grouping), so that a
//! difference in output comes from the engine and not from the functions. The service
//! query grammar is our crate's public `ServiceQuery::parse`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use egresstrator_template as ours;
use gotmpl::{FuncMap, TemplateError, Value};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------
// The golden cases' data (same shape as crates/egresstrator-template/tests/golden.rs).

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Data {
    env: BTreeMap<String, String>,
    kv: BTreeMap<String, String>,
    services: BTreeMap<String, Vec<Instance>>,
    catalog: Vec<Catalog>,
    now: i64,
    fail: bool,
    /// gotmpl side: compiled regexes, cleared before every render (our engine caches them
    /// per render too), so both engines do the same regex work.
    #[serde(skip)]
    regexes: Mutex<HashMap<String, Arc<regex::Regex>>>,
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

impl Data {
    fn kv_error(&self, path: &str) -> Option<String> {
        self.fail
            .then(|| format!("Get \"/v1/kv/{path}\": connection refused"))
    }

    /// Instances of a service as the golden fake returns them (tag filter applied, empty
    /// status read as passing).
    fn instances(&self, name: &str, tag: Option<&str>) -> Vec<Instance> {
        self.services
            .get(name)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x == t)))
            .map(|mut i| {
                if i.status.is_empty() {
                    i.status = "passing".to_owned();
                }
                i
            })
            .collect()
    }
}

/// Our engine's view of the same data (copy of the golden test's fake).
impl ours::DataSource for Data {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn key(&self, key: &ours::KvRef) -> Result<Option<String>, String> {
        match self.kv_error(&key.path) {
            Some(e) => Err(e),
            None => Ok(self.kv.get(&key.path).cloned()),
        }
    }

    fn list(&self, prefix: &ours::KvRef) -> Result<Vec<ours::KvEntry>, String> {
        if let Some(e) = self.kv_error(&prefix.path) {
            return Err(e);
        }
        Ok(self
            .kv
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix.path))
            .map(|(k, v)| ours::KvEntry {
                path: k.clone(),
                value: v.clone(),
                ..ours::KvEntry::default()
            })
            .collect())
    }

    fn service(&self, q: &ours::ServiceQuery) -> Result<Vec<ours::ServiceInstance>, String> {
        Ok(self
            .instances(&q.name, q.tag.as_deref())
            .into_iter()
            .map(|i| ours::ServiceInstance {
                node: i.node,
                node_address: i.node_address,
                address: i.address,
                id: i.id,
                name: q.name.clone(),
                tags: i.tags,
                status: i.status,
                port: i.port,
                service_meta: i.service_meta,
                ..ours::ServiceInstance::default()
            })
            .collect())
    }

    fn services(&self, _: &ours::CatalogQuery) -> Result<Vec<ours::CatalogService>, String> {
        Ok(self
            .catalog
            .iter()
            .map(|c| ours::CatalogService {
                name: c.name.clone(),
                tags: c.tags.clone(),
            })
            .collect())
    }

    fn now_unix(&self) -> i64 {
        self.now
    }
}

// ---------------------------------------------------------------------------------------
// consul-template's functions for gotmpl.

type GResult = gotmpl::Result<Value>;

/// A consul-template function over one case's data.
type DataFunc = Box<dyn Fn(&Data, &[Value]) -> GResult + Send + Sync>;

fn err(msg: String) -> TemplateError {
    TemplateError::Exec(msg)
}

fn gstr(s: impl AsRef<str>) -> Value {
    Value::String(s.as_ref().into())
}

fn glist(items: Vec<Value>) -> Value {
    Value::List(items.into())
}

fn gmap(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(Arc::new(
        entries.into_iter().map(|(k, v)| (k.into(), v)).collect(),
    ))
}

fn arity(name: &str, args: &[Value], want: usize) -> gotmpl::Result<()> {
    if args.len() == want {
        Ok(())
    } else {
        Err(err(format!(
            "wrong number of args for {name}: want {want} got {}",
            args.len()
        )))
    }
}

fn arg_str<'a>(name: &str, v: &'a Value) -> gotmpl::Result<&'a str> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(err(format!(
            "{name}: wrong type for value; expected string; got {}",
            other.type_name()
        ))),
    }
}

fn arg_int(name: &str, v: &Value) -> gotmpl::Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(err(format!(
            "{name}: unknown type for {other} ({})",
            other.type_name()
        ))),
    }
}

/// `path[@dc]`, a leading `/` dropped (consul-template's KV query syntax).
fn kv_path(s: &str) -> &str {
    let s = s.strip_prefix('/').unwrap_or(s);
    s.split_once('@').map_or(s, |(p, _)| p)
}

/// consul-template's `in(l, v)`: element of a list, or substring of a string.
fn contained(haystack: &Value, needle: &Value) -> bool {
    match (haystack, needle) {
        (Value::List(items), n) => items.iter().any(|i| match (i, n) {
            (Value::Int(x), Value::Int(y)) => x == y,
            (Value::Float(x), Value::Float(y)) => x == y,
            (Value::String(x), Value::String(y)) => x == y,
            _ => false,
        }),
        (Value::String(h), Value::String(n)) => h.contains(&**n),
        _ => false,
    }
}

fn kv_list(data: &Data, name: &str, args: &[Value], recursive: bool) -> GResult {
    arity(name, args, 1)?;
    let prefix = kv_path(arg_str(name, &args[0])?);
    if prefix.is_empty() {
        return Ok(glist(vec![]));
    }
    if let Some(e) = data.kv_error(prefix) {
        return Err(err(format!("error calling {name}: {e}")));
    }
    let mut out = Vec::new();
    for (path, value) in data.kv.range(prefix.to_owned()..) {
        if !path.starts_with(prefix) {
            break;
        }
        let key = path[prefix.len()..].trim_start_matches('/');
        let keep = if recursive {
            !key.is_empty() && !key.ends_with('/')
        } else {
            !key.is_empty() && !key.contains('/')
        };
        if keep {
            out.push(key_pair(path, key, value));
        }
    }
    Ok(glist(out))
}

fn key_pair(path: &str, key: &str, value: &str) -> Value {
    gmap(vec![
        ("Path", gstr(path)),
        ("Key", gstr(key)),
        ("Value", gstr(value)),
        ("CreateIndex", Value::Int(0)),
        ("ModifyIndex", Value::Int(0)),
        ("LockIndex", Value::Int(0)),
        ("Flags", Value::Int(0)),
        ("Session", gstr("")),
    ])
}

fn service(data: &Data, args: &[Value]) -> GResult {
    let parts = args
        .iter()
        .map(|a| arg_str("service", a))
        .collect::<gotmpl::Result<Vec<&str>>>()?;
    if parts.first().is_none_or(|p| p.is_empty()) {
        return Ok(glist(vec![]));
    }
    let q = ours::ServiceQuery::parse(&parts.join("|")).map_err(err)?;
    let mut list: Vec<Instance> = data
        .instances(&q.name, q.tag.as_deref())
        .into_iter()
        .filter(|i| q.accepts(&i.status))
        .collect();
    list.sort_by(|x, y| x.node.cmp(&y.node).then_with(|| x.id.cmp(&y.id)));
    Ok(glist(
        list.into_iter()
            .map(|mut i| {
                i.tags.sort();
                let address = if i.address.is_empty() {
                    i.node_address.clone()
                } else {
                    i.address
                };
                let meta: BTreeMap<String, Value> = i
                    .service_meta
                    .into_iter()
                    .map(|(k, v)| (k, gstr(v)))
                    .collect();
                gmap(vec![
                    ("Node", gstr(&i.node)),
                    ("NodeID", gstr("")),
                    ("NodeAddress", gstr(&i.node_address)),
                    ("Address", gstr(address)),
                    ("ID", gstr(&i.id)),
                    ("Name", gstr(&q.name)),
                    ("Tags", glist(i.tags.iter().map(gstr).collect())),
                    ("Status", gstr(&i.status)),
                    ("Port", Value::Int(i64::from(i.port))),
                    ("ServiceMeta", Value::from(meta)),
                    ("NodeMeta", gmap(vec![])),
                ])
            })
            .collect(),
    ))
}

fn by_key(args: &[Value]) -> GResult {
    arity("byKey", args, 1)?;
    let Value::List(items) = &args[0] else {
        return Err(err("byKey: wrong type".into()));
    };
    let mut groups: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for item in items.iter() {
        let field = |f: &str| item.field(f).and_then(Value::as_str).unwrap_or("");
        let (top, rest) = field("Key").split_once('/').unwrap_or((field("Key"), ""));
        if rest.is_empty() {
            continue;
        }
        groups.entry(top.to_owned()).or_default().insert(
            rest.to_owned(),
            key_pair(field("Path"), rest, field("Value")),
        );
    }
    Ok(Value::from(
        groups
            .into_iter()
            .map(|(k, m)| (k, Value::from(m)))
            .collect::<BTreeMap<String, Value>>(),
    ))
}

fn by_tag(args: &[Value]) -> GResult {
    arity("byTag", args, 1)?;
    let Value::List(items) = &args[0] else {
        return Err(err("byTag: wrong argument type".into()));
    };
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in items.iter() {
        if let Some(Value::List(tags)) = item.field("Tags") {
            for t in tags.iter().filter_map(Value::as_str) {
                groups.entry(t.to_owned()).or_default().push(item.clone());
            }
        }
    }
    Ok(Value::from(
        groups
            .into_iter()
            .map(|(k, l)| (k, glist(l)))
            .collect::<BTreeMap<String, Value>>(),
    ))
}

/// Go's `time.Format` for the numeric reference fields (2006 01 02 15 04 05), UTC.
fn go_time_format(unix: i64, layout: &str) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fields = [
        ("2006", format!("{year:04}")),
        ("01", format!("{month:02}")),
        ("02", format!("{day:02}")),
        ("15", format!("{:02}", secs / 3600)),
        ("04", format!("{:02}", secs / 60 % 60)),
        ("05", format!("{:02}", secs % 60)),
    ];
    let mut out = String::new();
    let mut rest = layout;
    'scan: while let Some(c) = rest.chars().next() {
        for (token, value) in &fields {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn regex(data: &Data, name: &str, pattern: &str) -> gotmpl::Result<Arc<regex::Regex>> {
    let mut cache = data.regexes.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(re) = cache.get(pattern) {
        return Ok(Arc::clone(re));
    }
    let re = Arc::new(regex::Regex::new(pattern).map_err(|e| err(format!("{name}: {e}")))?);
    cache.insert(pattern.to_owned(), Arc::clone(&re));
    Ok(re)
}

/// The consul-template functions the golden cases call, over one case's data.
fn consul_funcs(data: &Arc<Data>) -> FuncMap {
    let mut m = FuncMap::new();
    let mut add = |name: &str, f: DataFunc| {
        let d = Arc::clone(data);
        m.insert(name.to_owned(), Arc::new(move |args: &[Value]| f(&d, args)));
    };
    add(
        "env",
        Box::new(|d, a| {
            arity("env", a, 1)?;
            let v = d.env.get(arg_str("env", &a[0])?).cloned();
            Ok(gstr(v.unwrap_or_default()))
        }),
    );
    add(
        "key",
        Box::new(|d, a| {
            arity("key", a, 1)?;
            let p = kv_path(arg_str("key", &a[0])?);
            if let Some(e) = d.kv_error(p) {
                return Err(err(format!("error calling key: {e}")));
            }
            Ok(gstr(d.kv.get(p).map_or("", String::as_str)))
        }),
    );
    add(
        "keyExists",
        Box::new(|d, a| {
            arity("keyExists", a, 1)?;
            let p = kv_path(arg_str("keyExists", &a[0])?);
            Ok(Value::Bool(d.kv.contains_key(p)))
        }),
    );
    add(
        "keyOrDefault",
        Box::new(|d, a| {
            arity("keyOrDefault", a, 2)?;
            let p = kv_path(arg_str("keyOrDefault", &a[0])?);
            let def = arg_str("keyOrDefault", &a[1])?;
            Ok(gstr(match d.kv.get(p) {
                Some(v) if !v.is_empty() => v,
                _ => def,
            }))
        }),
    );
    add("ls", Box::new(|d, a| kv_list(d, "ls", a, false)));
    add("tree", Box::new(|d, a| kv_list(d, "tree", a, true)));
    add("service", Box::new(service));
    add(
        "services",
        Box::new(|d, _| {
            let mut list = d.catalog.clone();
            list.sort_by(|x, y| x.name.cmp(&y.name));
            Ok(glist(
                list.into_iter()
                    .map(|mut c| {
                        c.tags.sort();
                        gmap(vec![
                            ("Name", gstr(&c.name)),
                            ("Tags", glist(c.tags.iter().map(gstr).collect())),
                        ])
                    })
                    .collect(),
            ))
        }),
    );
    add(
        "timestamp",
        Box::new(|d, a| match a.first() {
            Some(v) if arg_str("timestamp", v)? == "unix" => Ok(gstr(d.now.to_string())),
            Some(v) => Ok(gstr(go_time_format(d.now, arg_str("timestamp", v)?))),
            None => Ok(gstr(go_time_format(d.now, "2006-01-02T15:04:05Z"))),
        }),
    );
    add("byKey", Box::new(|_, a| by_key(a)));
    add("byTag", Box::new(|_, a| by_tag(a)));
    add(
        "in",
        Box::new(|_, a| {
            arity("in", a, 2)?;
            Ok(Value::Bool(contained(&a[0], &a[1])))
        }),
    );
    add(
        "contains",
        Box::new(|_, a| {
            arity("contains", a, 2)?;
            Ok(Value::Bool(contained(&a[1], &a[0])))
        }),
    );
    add(
        "split",
        Box::new(|_, a| {
            arity("split", a, 2)?;
            let sep = arg_str("split", &a[0])?;
            let text = arg_str("split", &a[1])?.trim();
            if text.is_empty() {
                return Ok(glist(vec![]));
            }
            Ok(glist(text.split(sep).map(gstr).collect()))
        }),
    );
    add(
        "join",
        Box::new(|_, a| {
            arity("join", a, 2)?;
            let sep = arg_str("join", &a[0])?;
            let Value::List(items) = &a[1] else {
                return Err(err("join: wrong type for value; expected []string".into()));
            };
            let parts = items
                .iter()
                .map(|i| arg_str("join", i))
                .collect::<gotmpl::Result<Vec<&str>>>()?;
            Ok(gstr(parts.join(sep)))
        }),
    );
    add(
        "regexMatch",
        Box::new(|d, a| {
            arity("regexMatch", a, 2)?;
            let re = regex(d, "regexMatch", arg_str("regexMatch", &a[0])?)?;
            Ok(Value::Bool(re.is_match(arg_str("regexMatch", &a[1])?)))
        }),
    );
    add(
        "regexReplaceAll",
        Box::new(|d, a| {
            arity("regexReplaceAll", a, 3)?;
            let re = regex(d, "regexReplaceAll", arg_str("regexReplaceAll", &a[0])?)?;
            let repl = arg_str("regexReplaceAll", &a[1])?;
            let text = arg_str("regexReplaceAll", &a[2])?;
            Ok(gstr(re.replace_all(text, repl)))
        }),
    );
    add(
        "replaceAll",
        Box::new(|_, a| {
            arity("replaceAll", a, 3)?;
            let (from, to) = (arg_str("replaceAll", &a[0])?, arg_str("replaceAll", &a[1])?);
            Ok(gstr(arg_str("replaceAll", &a[2])?.replace(from, to)))
        }),
    );
    add(
        "toLower",
        Box::new(|_, a| {
            arity("toLower", a, 1)?;
            Ok(gstr(arg_str("toLower", &a[0])?.to_lowercase()))
        }),
    );
    add(
        "toUpper",
        Box::new(|_, a| {
            arity("toUpper", a, 1)?;
            Ok(gstr(arg_str("toUpper", &a[0])?.to_uppercase()))
        }),
    );
    add(
        "trimSpace",
        Box::new(|_, a| {
            arity("trimSpace", a, 1)?;
            Ok(gstr(arg_str("trimSpace", &a[0])?.trim()))
        }),
    );
    add(
        "parseInt",
        Box::new(|_, a| {
            arity("parseInt", a, 1)?;
            let t = arg_str("parseInt", &a[0])?;
            t.parse::<i64>().map(Value::Int).map_err(|_| {
                err(format!(
                    "parseInt: strconv.ParseInt: parsing {t:?}: invalid syntax"
                ))
            })
        }),
    );
    // consul-template's math takes (b, a): `a | add b`.
    add(
        "add",
        Box::new(|_, a| {
            arity("add", a, 2)?;
            Ok(Value::Int(arg_int("add", &a[1])? + arg_int("add", &a[0])?))
        }),
    );
    add(
        "subtract",
        Box::new(|_, a| {
            arity("subtract", a, 2)?;
            Ok(Value::Int(
                arg_int("subtract", &a[1])? - arg_int("subtract", &a[0])?,
            ))
        }),
    );
    m
}

// ---------------------------------------------------------------------------------------
// The comparison.

struct Case {
    name: String,
    text: String,
    data: Arc<Data>,
    /// What the golden files say, as an outcome (`RenderErr` stands for any error: the
    /// files do not tell the stage; our engine's error kind does, see `expected_stage`).
    expected: Outcome,
}

/// What one engine did with one case.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Output(String),
    ParseErr(String),
    RenderErr(String),
    Panic(String),
}

fn load(dir: &Path) -> Case {
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
    let data: Data = read("data.json")
        .map(|j| serde_json::from_str(&j).unwrap_or_else(|e| panic!("{dir:?}: {e}")))
        .unwrap_or_default();
    let expected = match read("expected.txt") {
        Some(out) => Outcome::Output(out),
        None => Outcome::RenderErr(
            read("expected-error.txt")
                .unwrap_or_else(|| panic!("{dir:?}: no expected file"))
                .trim_end()
                .to_owned(),
        ),
    };
    Case {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        text: read("template.tmpl").unwrap_or_else(|| panic!("{dir:?}: no template")),
        data: Arc::new(data),
        expected,
    }
}

fn run_ours(case: &Case) -> (Option<ours::Template>, Outcome) {
    match ours::parse("template.tmpl", &case.text) {
        Err(e) => (None, Outcome::ParseErr(e.to_string())),
        Ok(t) => {
            let out = match t.render(&*case.data) {
                Ok(r) => Outcome::Output(r.output),
                Err(e) => Outcome::RenderErr(e.to_string()),
            };
            (Some(t), out)
        }
    }
}

fn gotmpl_render(case: &Case, t: &gotmpl::Template) -> gotmpl::Result<String> {
    case.data
        .regexes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    t.execute_to_string(&Value::Nil)
}

fn run_gotmpl(case: &Case) -> (Option<gotmpl::Template>, Outcome) {
    let run = catch_unwind(AssertUnwindSafe(|| {
        match gotmpl::Template::new("template.tmpl")
            .funcs(consul_funcs(&case.data))
            .parse(&case.text)
        {
            Err(e) => (None, Outcome::ParseErr(e.to_string())),
            Ok(t) => {
                let out = match gotmpl_render(case, &t) {
                    Ok(s) => Outcome::Output(s),
                    Err(e) => Outcome::RenderErr(e.to_string()),
                };
                (Some(t), out)
            }
        }
    }));
    run.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        (None, Outcome::Panic(msg))
    })
}

/// Go prefixes every error with `template: `; the golden files do not.
fn normalize_error(e: &str) -> &str {
    e.strip_prefix("template: ").unwrap_or(e)
}

/// `(position, message)` of `NAME:LINE:COL: message`.
fn split_position(e: &str) -> (Option<String>, &str) {
    let parts: Vec<&str> = e.splitn(4, ':').collect();
    match parts[..] {
        [_, line, col, msg]
            if line.bytes().all(|b| b.is_ascii_digit())
                && col.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (Some(format!("{line}:{col}")), msg.trim_start())
        }
        _ => (None, e),
    }
}

/// Every differing line of two outputs, for the report.
fn diff_lines(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let diffs: Vec<String> = (0..w.len().max(g.len()))
        .filter(|&i| w.get(i) != g.get(i))
        .map(|i| {
            format!(
                "line {}: want {:?} got {:?}",
                i + 1,
                w.get(i).copied().unwrap_or("<none>"),
                g.get(i).copied().unwrap_or("<none>")
            )
        })
        .collect();
    if diffs.is_empty() {
        "trailing newline differs".to_owned()
    } else {
        diffs.join("; ")
    }
}

/// Verdict on one engine's outcome: (pass, one-line reason). `stage` is the stage at
/// which the expected error is found (our engine's, which follows Go's).
fn judge(expected: &Outcome, stage: &str, got: &Outcome) -> (bool, String) {
    let want_err = match expected {
        Outcome::Output(w) => {
            return match got {
                Outcome::Output(g) if g == w => (true, "identical output".into()),
                Outcome::Output(g) => (false, format!("different output: {}", diff_lines(w, g))),
                Outcome::ParseErr(e) => (false, format!("parse error: {e}")),
                Outcome::RenderErr(e) => (false, format!("render error: {e}")),
                Outcome::Panic(e) => (false, format!("panic: {e}")),
            }
        }
        Outcome::ParseErr(w) | Outcome::RenderErr(w) | Outcome::Panic(w) => w,
    };
    let (want_pos, want_msg) = split_position(want_err);
    let want_pos = want_pos.unwrap_or_default();
    match got {
        Outcome::Output(g) => (
            false,
            format!("renders {g:?} instead of failing ({stage} error expected)"),
        ),
        Outcome::Panic(e) => (false, format!("panic: {e}")),
        Outcome::ParseErr(g) | Outcome::RenderErr(g) => {
            let got_stage = if matches!(got, Outcome::ParseErr(_)) {
                "parse"
            } else {
                "render"
            };
            let g = normalize_error(g);
            if g == want_err {
                return (true, "identical error".into());
            }
            let (got_pos, got_msg) = split_position(g);
            let why = match got_pos {
                None if got_stage != stage => {
                    format!("{stage} error found only at {got_stage}, without position: {g}")
                }
                None if g.contains(want_msg) => {
                    format!("same message but without position: {g}")
                }
                None => format!("different message, without position: {g}"),
                Some(p) if p == want_pos => {
                    format!("same position, different message: {got_msg:?} (want {want_msg:?})")
                }
                Some(p) if got_msg == want_msg => {
                    format!("same message, position {p} (want {want_pos})")
                }
                Some(p) => format!("position {p} (want {want_pos}), message {got_msg:?}"),
            };
            (false, why)
        }
    }
}

/// Timing rounds per case and engine; the table shows the fastest.
const ROUNDS: usize = 5;

fn time_ns(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.div_ceil(10) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn main() {
    let iters: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("iterations: a positive integer"))
        .unwrap_or(10_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/egresstrator-template/tests/golden");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{root:?}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();

    // Silence the default hook: a gotmpl panic is a result, reported in the table.
    std::panic::set_hook(Box::new(|_| {}));

    println!("| case | ours | gotmpl 0.6 | gotmpl: reason | ours ns/render | gotmpl ns/render |");
    println!("|---|---|---|---|---:|---:|");
    let (mut ours_pass, mut g_pass) = (0, 0);
    let (mut ours_total, mut g_total) = (0.0, 0.0);
    let mut details = Vec::new();
    for dir in &dirs {
        let case = load(dir);

        let (o_tmpl, o_out) = run_ours(&case);
        let stage = match &o_out {
            Outcome::ParseErr(_) => "parse",
            _ => "render",
        };
        let (o_ok, o_why) = judge(&case.expected, stage, &o_out);
        let (g_tmpl, g_out) = run_gotmpl(&case);
        let (g_ok, g_why) = judge(&case.expected, stage, &g_out);

        // Time the renders of the cases that render for both engines.
        let (mut o_ns, mut g_ns) = (None, None);
        if let (Some(o), Outcome::Output(_), Some(g), Outcome::Output(_)) =
            (&o_tmpl, &o_out, &g_tmpl, &g_out)
        {
            // Best of ROUNDS, the engines alternating, so that load from other processes
            // hits both alike.
            let (mut best_o, mut best_g) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..ROUNDS {
                best_o = best_o.min(time_ns(iters, || {
                    black_box(o.render(&*case.data).ok());
                }));
                best_g = best_g.min(time_ns(iters, || {
                    black_box(gotmpl_render(&case, g).ok());
                }));
            }
            let (o, g) = (best_o, best_g);
            ours_total += o;
            g_total += g;
            (o_ns, g_ns) = (Some(o), Some(g));
        }
        let ns = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.0}"));
        let verdict = |ok: bool| if ok { "pass" } else { "FAIL" };
        ours_pass += usize::from(o_ok);
        g_pass += usize::from(g_ok);
        let mut short: String = g_why.chars().take(100).collect();
        if short.len() < g_why.len() {
            short.push('…');
        }
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            case.name,
            verdict(o_ok),
            verdict(g_ok),
            short.replace('|', "\\|").replace('\n', "\\n"),
            ns(o_ns),
            ns(g_ns)
        );
        if !o_ok {
            details.push(format!("{} (ours): {o_why}", case.name));
        }
        if !g_ok {
            details.push(format!("{} (gotmpl): {g_why}", case.name));
        }
    }
    println!(
        "| **total** | {ours_pass}/{n} | {g_pass}/{n} | | {ours_total:.0} | {g_total:.0} |",
        n = dirs.len()
    );
    println!();
    println!(
        "ns/render: best of {ROUNDS} rounds of {iters} renders (each after {} warm-up \
         renders), per case and engine; only for cases both engines render.",
        iters.div_ceil(10)
    );
    println!();
    for d in details {
        println!("- {d}");
    }
}
