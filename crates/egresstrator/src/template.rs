//! `--template`: consul-template files, as egresstrator 0.2 users wrote them.
//!
//! The file is parsed once at start (errors name the file, line and column) and rendered for
//! each container with `EGRESSTRATOR_ACL`, `CONSUL_PATH` and the container's id and name in
//! its environment, as 0.2's helper container had them. Data comes from the agent's policy
//! snapshot, so a template sees exactly what the watches see, and every KV key and service it
//! reads is watched. Reads outside the kv-path are refused: egresstrator never reads Consul
//! outside it, whatever a template asks for.
//!
//! What this module must never do:
//! - hand a template catalog data that could change the syntax of the script it renders.
//!   Anyone who may register a service in Consul chooses its address, tags and meta, and the
//!   engine pastes strings as they are. So an instance is left out of `service` when its
//!   address (the service's, or the node's when the service has none) or its node address
//!   (when it has one) is not an IP address, or when any other text of it breaks the rule
//!   below (`text_problem`); a catalog entry is left out of `services` likewise. Each one is
//!   logged as a warning that names the service, the instance and why. Leaving out is the
//!   fail-closed choice: the template sees fewer instances, never altered ones;
//! - return output that reads files or that its loader would split differently from its
//!   lines: an nft output with an `include`, any output with a NUL byte, and an
//!   `iptables-restore` input with a line longer than [`MAX_IPTABLES_LINE`] fail the render
//!   (the container then fails closed), see `check_output`;
//! - read Consul outside the kv-path.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use egresstrator_core::acl::ServiceRef;
use egresstrator_template::{
    CatalogQuery, CatalogService, DataSource, Dependencies, KvEntry, KvRef, ServiceInstance,
    ServiceQuery, Template,
};

use crate::snapshot::PolicySnapshot;

/// What a rendered template is: `iptables-restore` input (0.2's default) or an nft script.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TemplateFormat {
    #[default]
    Iptables,
    Nft,
}

impl TemplateFormat {
    /// How output in this format is loaded.
    pub fn backend(self) -> crate::rendered::Backend {
        match self {
            TemplateFormat::Nft => crate::rendered::Backend::Nft,
            TemplateFormat::Iptables => crate::rendered::Backend::IptablesRestore,
        }
    }
}

/// A parsed template file.
#[derive(Clone, Debug)]
pub struct TemplateConfig {
    pub path: PathBuf,
    pub template: Template,
    pub format: TemplateFormat,
}

impl TemplateConfig {
    /// Reads and parses the file; syntax errors and unknown functions are reported here.
    pub fn load(path: &Path, format: TemplateFormat) -> Result<Self, TemplateLoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateLoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path.display().to_string();
        let template = egresstrator_template::parse(&name, &text)?;
        Ok(TemplateConfig {
            path: path.to_path_buf(),
            template,
            format,
        })
    }
}

/// Why `--template` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateLoadError {
    #[error("cannot read template {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] egresstrator_template::TemplateError),
}

/// Who the template is rendered for.
#[derive(Clone, Debug)]
pub struct TemplateEnv {
    pub acls: Vec<String>,
    pub kv_path: String,
    pub container_id: String,
    pub container_name: String,
}

/// A rendered template and what it read.
#[derive(Clone, Debug)]
pub struct Output {
    pub text: String,
    pub deps: Dependencies,
}

/// Why a render gave no usable output. `services` are the services it asked for (to watch).
#[derive(Clone, Debug)]
pub struct RenderFailure {
    pub message: String,
    pub services: Vec<ServiceRef>,
    /// True when the failure is only a service not answered yet.
    pub pending: bool,
}

/// The service reference a template query maps to.
pub fn service_ref(q: &ServiceQuery) -> ServiceRef {
    ServiceRef {
        tag: q.tag.clone(),
        service: q.name.clone(),
        datacenter: q.datacenter.clone(),
    }
}

/// Renders the template for one workload from a policy snapshot.
///
/// Catalog data the template may not see is left out (see the module docs); each reason is
/// logged once per render as a warning that names the template, the container, the service
/// and the instance. (The callers' plans have no channel for template warnings, so they are
/// logged here, where the container is known.)
pub fn render(
    cfg: &TemplateConfig,
    snapshot: &PolicySnapshot,
    env: &TemplateEnv,
) -> Result<Output, RenderFailure> {
    let vars = BTreeMap::from([
        ("EGRESSTRATOR_ACL".to_owned(), env.acls.join(",")),
        ("CONSUL_PATH".to_owned(), env.kv_path.clone()),
        (
            "EGRESSTRATOR_CONTAINER_ID".to_owned(),
            env.container_id.clone(),
        ),
        (
            "EGRESSTRATOR_CONTAINER_NAME".to_owned(),
            env.container_name.clone(),
        ),
    ]);
    let source = Source {
        vars: &vars,
        snapshot,
        kv_path: &env.kv_path,
        warnings: RefCell::new(Vec::new()),
    };
    let result = cfg.template.render(&source);
    for w in source.warnings.into_inner() {
        tracing::warn!(
            template = %cfg.path.display(),
            container = crate::docker::short_id(&env.container_id),
            name = %env.container_name,
            "{w}"
        );
    }
    match result {
        Ok(r) => {
            let services = r.deps.services.iter().map(service_ref).collect();
            if let Some(k) = r.deps.missing.iter().next() {
                return Err(RenderFailure {
                    message: format!(
                        "template {} reads key {k}, which does not exist",
                        cfg.path.display()
                    ),
                    services,
                    pending: false,
                });
            }
            if let Err(why) = check_output(cfg.format, &r.output) {
                return Err(RenderFailure {
                    message: format!("template {}: {why}", cfg.path.display()),
                    services,
                    pending: false,
                });
            }
            Ok(Output {
                text: r.output,
                deps: r.deps,
            })
        }
        Err(e) => {
            let services: Vec<ServiceRef> =
                e.dependencies().services.iter().map(service_ref).collect();
            let pending = e.to_string().contains(NOT_YET);
            Err(RenderFailure {
                message: e.to_string(),
                services,
                pending,
            })
        }
    }
}

const NOT_YET: &str = "has not been resolved from consul yet";

// ---------------------------------------------------------------------------------------------
// Catalog data: what a template may see of it.
//
// A template pastes catalog strings into a firewall script, usually without quotes
// (`-A OUTPUT -d {{ .Address }} … --comment {{ .Node }}`) and sometimes inside double quotes
// (nft's `comment "{{ .Name }}"`). Both loaders read their input as a sequence of lines and
// whitespace-separated tokens: `iptables-restore` splits a line into arguments at spaces and
// tabs, honours `"…"` with `\` escaping inside it, and takes a `#` at the start of a line as
// a comment; nft (1.0.6's scanner) also ends a statement at `;`, opens and closes blocks and
// sets with `{` `}`, starts a comment with `#` anywhere outside quotes, expands `$name`,
// joins lines at `\` + newline, and reads `"…"` (which may span lines) as one string.
//
// The rule, for every catalog string but addresses: none of those characters, so a value
// stays inside the one token, or the one quoted string, where the template put it, and
// cannot end a line or statement, start a comment, open a quote or block, or add arguments
// to the rule it is in. Concretely, a value is refused when it holds
// - a control character (NUL, newline, CR, tab, escape, DEL, C1 controls, …): ends a line
//   or a C string, or confuses a reader of the output;
// - whitespace of any kind (also no-break and other Unicode spaces): ends a token, so a tag
//   `x -p udp` pasted into a REJECT rule would narrow it to UDP and open everything else;
// - `"` or `\`: ends or escapes a quoted string;
// - `#`, `;`, `{`, `}`, `$`: nft comment, statement end, block, variable;
// - more than MAX_TEXT bytes (1 KiB; iptables refuses longer arguments anyway, and Consul
//   caps meta values at 512 characters).
// Everything else is accepted, so ordinary values keep working: `v1.2`, `primary`,
// `env=prod`, `zone:eu-west-1a`, `team@example.com`, `a,b`, Traefik's
// `traefik.http.routers.web.rule=Host(`example.com`)`, non-ASCII letters. `'` and a
// backtick are no syntax in either format, and the output never passes through a shell
// (libnftables reads it from a memory file, iptables-restore from its standard input, the
// helper image from a copied file).
//
// Meta values with spaces (`description=Payments API`) are refused too, and so is their
// whole instance: a space is exactly what lets a value add arguments to the rule around it,
// and the engine cannot know whether a template quotes a field. Dropping only the offending
// tag or meta entry was considered and rejected: a template may decide on a tag's or meta
// value's presence (`{{ if not (.Tags | contains "deny") }}`, `{{ if .ServiceMeta.block }}`),
// and a silently missing value could turn such a test around. Leaving out the whole instance
// only ever removes an instance, which the party that registered it could do anyway.
//
// What the rule cannot give: a value that is one clean token is still whatever its author
// chose. A template that pastes a tag or meta value where an address, port or option goes
// (`--dport {{ .ServiceMeta.port }}`) trusts whoever registered the service, and a leading
// `-` is allowed (getopt takes the token after `--comment` as its argument whatever it
// looks like). Addresses are held to more: they must parse as an IP address.
//
// Catalog service names (from `services`) must also be names that a `service` query can
// ask for (ASCII letters, digits, `_` and `-`, consul-template's grammar): they exist in
// templates to be passed on to `service`, and a name the query grammar refuses would fail
// every render that passes it on, so anyone who may register a service could fail closed
// every container whose template walks the catalog.

/// The longest catalog string a template may see, in bytes.
const MAX_TEXT: usize = 1024;

/// Why one catalog string may not reach a template, or None. `what` names the field in the
/// message (`tag`, `node name`, …).
fn text_problem(what: &str, value: &str) -> Option<String> {
    if value.len() > MAX_TEXT {
        return Some(format!(
            "{what} {} is {} bytes long, more than {MAX_TEXT}",
            shown(value),
            value.len()
        ));
    }
    let (c, kind) = value.chars().find_map(|c| Some((c, char_problem(c)?)))?;
    Some(format!(
        "{what} {} contains {kind} (U+{:04X}), which could end a token, quoted string, \
         statement or line of the rendered script",
        shown(value),
        u32::from(c)
    ))
}

/// What a character is when it is not allowed in catalog text (see the rule above).
fn char_problem(c: char) -> Option<&'static str> {
    if c.is_control() {
        return Some("a control character");
    }
    if c.is_whitespace() {
        return Some("whitespace");
    }
    Some(match c {
        '"' => "a double quote",
        '\\' => "a backslash",
        '#' => "'#'",
        ';' => "';'",
        '{' | '}' => "a brace",
        '$' => "'$'",
        _ => return None,
    })
}

/// A value quoted for a log line: Rust's escaping (so no control character reaches the
/// log), and at most 64 characters of it.
fn shown(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}…", &value[..end]),
    }
}

/// Why an instance may not reach a template, or None.
fn instance_problem(i: &ServiceInstance) -> Option<String> {
    let addr = i.effective_address();
    if addr.parse::<IpAddr>().is_err() {
        let whose = if i.address.is_empty() {
            " (the node's; the service has none)"
        } else {
            ""
        };
        return Some(format!(
            "address {}{whose} is not an IP address",
            shown(addr)
        ));
    }
    if !i.node_address.is_empty() && i.node_address.parse::<IpAddr>().is_err() {
        return Some(format!(
            "node address {} is not an IP address",
            shown(&i.node_address)
        ));
    }
    let fields = [
        ("instance ID", &i.id),
        ("service name", &i.name),
        ("node name", &i.node),
        ("node ID", &i.node_id),
        ("status", &i.status),
    ];
    if let Some(p) = fields.iter().find_map(|(what, v)| text_problem(what, v)) {
        return Some(p);
    }
    if let Some(p) = i.tags.iter().find_map(|t| text_problem("tag", t)) {
        return Some(p);
    }
    for (kind, meta) in [
        ("service meta", &i.service_meta),
        ("node meta", &i.node_meta),
    ] {
        for (k, v) in meta {
            if let Some(p) = text_problem(&format!("{kind} key"), k) {
                return Some(p);
            }
            if let Some(p) = text_problem(&format!("{kind} {k}"), v) {
                return Some(p);
            }
        }
    }
    None
}

/// Why a catalog entry may not reach a template, or None.
fn catalog_problem(c: &CatalogService) -> Option<String> {
    let queryable = !c.name.is_empty()
        && c.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
    if !queryable {
        return Some(format!(
            "name {} is not a name a `service` query can ask for (ASCII letters, digits, '_' \
             and '-')",
            shown(&c.name)
        ));
    }
    c.tags.iter().find_map(|t| text_problem("tag", t))
}

// ---------------------------------------------------------------------------------------------
// The rendered output: what is checked before it is loaded.

/// The longest line accepted in `iptables-restore` input, in bytes (without the newline).
///
/// iptables-restore (1.8.9, legacy and nf_tables) reads its input with `fgets` into a
/// 10,240-byte buffer and runs the rest of a longer line as a line of its own. So a long
/// enough line ending in `…-IOUTPUT -j ACCEPT` adds a rule nobody wrote (measured: it loads
/// `-A OUTPUT -j ACCEPT` at the top of the chain). No legitimate rule comes near 4 KiB;
/// the margin covers builds with a smaller buffer.
pub const MAX_IPTABLES_LINE: usize = 4096;

/// Refuses output that its loader would not read as the lines the template wrote, or that
/// would make it read a file.
///
/// Checked, both formats: no NUL byte (the loaders read C strings: everything after it
/// would be silently dropped, e.g. the `-j REJECT` of a line).
/// - nft: no `include` statement (see [`nft_include`]): libnftables has no include search
///   path, but an absolute (`/…`) or relative (`./…`) path would still be opened, and read
///   while parsing, even if the script then fails; nft quotes lines of a file it cannot
///   parse in its error, which egresstrator logs and reports.
/// - iptables: no line longer than [`MAX_IPTABLES_LINE`].
///
/// Not checked: the grammar. iptables-restore refuses a line it cannot parse (a line that is
/// not a table, chain, `COMMIT`, comment or rule is an error), nft refuses a script that does
/// not parse, and either then loads nothing, so the container fails closed. Nor what the
/// rules mean: the template is the operator's, and may open whatever it likes.
fn check_output(format: TemplateFormat, text: &str) -> Result<(), String> {
    if let Some(at) = text.find('\0') {
        return Err(format!(
            "the output has a NUL byte on line {}; loaders would drop the rest of that line",
            line_of(text, at)
        ));
    }
    match format {
        TemplateFormat::Nft => match nft_include(text) {
            Some(at) => Err(format!(
                "the nft output has an `include` on line {} ({}); a rendered ruleset must be \
                 self-contained, so includes are refused",
                line_of(text, at),
                shown(text[at..].lines().next().unwrap_or_default().trim())
            )),
            None => Ok(()),
        },
        TemplateFormat::Iptables => {
            match text
                .split('\n')
                .enumerate()
                .find(|(_, l)| l.len() > MAX_IPTABLES_LINE)
            {
                Some((n, l)) => Err(format!(
                    "line {} of the iptables-restore output is {} bytes long, more than \
                     {MAX_IPTABLES_LINE}; iptables-restore would run the rest of it as a line \
                     of its own",
                    n + 1,
                    l.len()
                )),
                None => Ok(()),
            }
        }
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The byte offset of an `include` keyword in an nft script, or None.
///
/// Follows nft 1.0.6's scanner where it matters: `"…"` is one string, even across lines (a
/// `"` without a closing one is a junk character and scanning goes on after it); `#` starts
/// a comment to the end of the line anywhere outside a string. Everything else is searched
/// for the letters `include` (in any case, although nft's keywords are lowercase), wherever
/// they start, unless a letter, digit, `_`, `.`, `/` or `-` follows: then the scanner reads
/// a longer word (`included_hosts`), never the keyword. Nothing else is spared: leading
/// whitespace, `;include"/x"`, an `include` inside a table block, a line continuation
/// (`include\` + newline + `"/x"`) — all measured to make nft 1.0.6 open the file, even
/// after an earlier syntax error — and also `1include`, `xinclude "…"` or `INCLUDE`, which
/// it would refuse without opening anything.
fn nft_include(text: &str) -> Option<usize> {
    const WORD: &[u8] = b"include";
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => match b[i + 1..].iter().position(|&c| c == b'"') {
                Some(len) => i += len + 2,
                None => i += 1,
            },
            _ => {
                let word = b
                    .get(i..i + WORD.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(WORD));
                let longer = b.get(i + WORD.len()).is_some_and(|&c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-')
                });
                if word && !longer {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The data source.

struct Source<'a> {
    vars: &'a BTreeMap<String, String>,
    snapshot: &'a PolicySnapshot,
    kv_path: &'a str,
    /// Catalog data left out during this render, once each (a template may ask twice).
    warnings: RefCell<Vec<String>>,
}

impl Source<'_> {
    /// The key relative to the kv-path, or an error for anything outside it.
    fn inside(&self, r: &KvRef, what: &str) -> Result<String, String> {
        if r.datacenter.is_some() {
            return Err(format!(
                "{what} {r}: reads from another datacenter are not supported"
            ));
        }
        let path = r.path.trim_start_matches('/');
        let root = self.kv_path.trim_end_matches('/');
        if path == root {
            return Ok(String::new());
        }
        match path.strip_prefix(self.kv_path) {
            Some(rel) => Ok(rel.to_owned()),
            None => Err(format!(
                "{what} {path} is outside the kv-path {}: egresstrator never reads consul outside it",
                self.kv_path
            )),
        }
    }

    fn warn(&self, message: String) {
        let mut w = self.warnings.borrow_mut();
        if !w.contains(&message) {
            w.push(message);
        }
    }
}

impl DataSource for Source<'_> {
    fn env(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn key(&self, key: &KvRef) -> Result<Option<String>, String> {
        let rel = self.inside(key, "key")?;
        Ok(self.snapshot.values.get(&rel).cloned())
    }

    fn list(&self, prefix: &KvRef) -> Result<Vec<KvEntry>, String> {
        let rel = self.inside(prefix, "prefix")?;
        Ok(self
            .snapshot
            .values
            .iter()
            .filter(|(k, _)| k.starts_with(&rel))
            .map(|(k, v)| KvEntry {
                path: format!("{}{k}", self.kv_path),
                value: v.clone(),
                ..Default::default()
            })
            .collect())
    }

    /// The instances the query's health filter accepts and that may reach a template; the
    /// others are left out, with a warning (see the module docs).
    fn service(&self, query: &ServiceQuery) -> Result<Vec<ServiceInstance>, String> {
        let r = service_ref(query);
        let all = self
            .snapshot
            .details
            .get(&r)
            .ok_or_else(|| format!("service {r} {NOT_YET}"))?;
        let mut out = Vec::with_capacity(all.len());
        // Instances the engine would filter out by health are never looked at (nor warned
        // about): the template cannot see them.
        for i in all.iter().filter(|i| query.accepts(&i.status)) {
            match instance_problem(i) {
                None => out.push(i.clone()),
                Some(why) => self.warn(format!(
                    "service {r}: instance {}: {why}; skipped",
                    shown(&i.id)
                )),
            }
        }
        Ok(out)
    }

    /// The catalog's entries that may reach a template; the others are left out, with a
    /// warning.
    fn services(&self, query: &CatalogQuery) -> Result<Vec<CatalogService>, String> {
        if query.datacenter.is_some() {
            return Err("services: other datacenters' catalogs are not supported".into());
        }
        let all = self
            .snapshot
            .catalog
            .as_ref()
            .ok_or("services: the catalog has not been read from consul yet")?;
        let mut out = Vec::with_capacity(all.len());
        for c in all {
            match catalog_problem(c) {
                None => out.push(c.clone()),
                Some(why) => self.warn(format!(
                    "catalog service {}: {why}; left out of `services`",
                    shown(&c.name)
                )),
            }
        }
        Ok(out)
    }

    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECTED: &str = "-I OUTPUT 1 -j ACCEPT";

    fn svc(name: &str) -> ServiceRef {
        ServiceRef {
            tag: None,
            service: name.into(),
            datacenter: None,
        }
    }

    fn inst(id: &str, addr: &str, port: u16) -> ServiceInstance {
        ServiceInstance {
            node: "node-1".into(),
            node_id: "6f1e4c36-0c2a-4bd0-9c3f-1f0d0b6a2f11".into(),
            node_address: "192.0.2.1".into(),
            address: addr.into(),
            id: id.into(),
            name: "payments".into(),
            tags: vec![
                "primary".into(),
                "v1.2".into(),
                "env=prod".into(),
                "zone:eu-west-1a".into(),
            ],
            status: "passing".into(),
            port,
            service_meta: BTreeMap::from([("version".into(), "1.2.3".into())]),
            node_meta: BTreeMap::from([("rack".into(), "r1".into())]),
        }
    }

    fn snapshot(instances: Vec<ServiceInstance>) -> PolicySnapshot {
        PolicySnapshot {
            values: BTreeMap::from([(
                "web".to_owned(),
                "10.1.0.0/16:tcp/443\npayments\n".to_owned(),
            )]),
            details: BTreeMap::from([(svc("payments"), instances)]),
            catalog: Some(vec![
                CatalogService {
                    name: "payments".into(),
                    tags: vec!["primary".into(), "env=prod".into()],
                },
                CatalogService {
                    name: "consul".into(),
                    tags: vec![],
                },
            ]),
            ..PolicySnapshot::default()
        }
    }

    fn config(text: &str, format: TemplateFormat) -> TemplateConfig {
        TemplateConfig {
            path: PathBuf::from("t.ctmpl"),
            template: egresstrator_template::parse("t.ctmpl", text).expect("parses"),
            format,
        }
    }

    fn env() -> TemplateEnv {
        TemplateEnv {
            acls: vec!["web".into()],
            kv_path: "egress/acl/".into(),
            container_id: "0123456789abcdef".into(),
            container_name: "app".into(),
        }
    }

    /// Renders through a [`Source`] and returns the output and the warnings it collected.
    fn render_collect(text: &str, snap: &PolicySnapshot) -> (String, Vec<String>) {
        let vars = BTreeMap::new();
        let source = Source {
            vars: &vars,
            snapshot: snap,
            kv_path: "egress/acl/",
            warnings: RefCell::new(Vec::new()),
        };
        let out = egresstrator_template::parse("t.ctmpl", text)
            .expect("parses")
            .render(&source)
            .expect("renders")
            .output;
        (out, source.warnings.into_inner())
    }

    const IDS: &str = r#"{{ range service "payments" "any" }}{{ .ID }}@{{ .Address }} {{ end }}"#;

    #[test]
    fn addresses_that_are_not_ip_addresses_never_reach_a_template() {
        let mut node_fallback = inst("fallback", "", 2);
        node_fallback.node_address = "192.0.2.7".into();
        let mut hostile_node = inst("hostile-node", "", 5);
        hostile_node.node_address = format!("192.0.2.8\n{INJECTED}");
        let mut named_node = inst("named-node", "10.0.0.9", 6);
        named_node.node_address = "node.example.com".into();
        let mut snapshot_restored = inst("restored", "10.0.0.10", 7);
        snapshot_restored.node_address.clear();
        let snap = snapshot(vec![
            inst("good", "10.0.0.1", 1),
            node_fallback,
            inst("v6", "2001:db8::1", 3),
            inst("hostile", &format!("10.0.0.1 -j ACCEPT\n{INJECTED}\n#"), 4),
            hostile_node,
            named_node,
            inst("hostname", "db.example.com", 8),
            inst("zone", "fe80::1%eth0", 9),
            inst("padded", " 10.0.0.1", 10),
            snapshot_restored,
        ]);
        let (out, warnings) = render_collect(IDS, &snap);
        assert_eq!(
            out,
            "fallback@192.0.2.7 good@10.0.0.1 restored@10.0.0.10 v6@2001:db8::1 "
        );
        assert!(!out.contains(INJECTED));
        assert_eq!(warnings.len(), 6, "{warnings:#?}");
        assert_eq!(
            warnings[0],
            r#"service payments: instance "hostile": address "10.0.0.1 -j ACCEPT\n-I OUTPUT 1 -j ACCEPT\n#" is not an IP address; skipped"#
        );
        assert_eq!(
            warnings[1],
            r#"service payments: instance "hostile-node": address "192.0.2.8\n-I OUTPUT 1 -j ACCEPT" (the node's; the service has none) is not an IP address; skipped"#
        );
        assert_eq!(
            warnings[2],
            r#"service payments: instance "named-node": node address "node.example.com" is not an IP address; skipped"#
        );
        assert!(warnings[3].contains(r#"instance "hostname": address "db.example.com""#));
        assert!(warnings[4].contains(r#"instance "zone": address "fe80::1%eth0""#));
        assert!(warnings[5].contains(r#"instance "padded": address " 10.0.0.1""#));
    }

    #[test]
    fn ordinary_catalog_text_is_accepted() {
        for ok in [
            "",
            "v1.2",
            "primary",
            "env=prod",
            "zone:eu-west-1a",
            "team@example.com",
            "a,b",
            "-1",
            "O'Brien",
            "traefik.http.routers.web.rule=Host(`example.com`)",
            "Zürich",
            "10.0.0.0/8",
            "6f1e4c36-0c2a-4bd0-9c3f-1f0d0b6a2f11",
            &"x".repeat(MAX_TEXT),
        ] {
            assert_eq!(text_problem("tag", ok), None, "{ok:?}");
        }
    }

    #[test]
    fn catalog_text_that_could_break_the_syntax_is_refused() {
        for (bad, kind) in [
            ("ok\n-I OUTPUT 1 -j ACCEPT", "a control character (U+000A)"),
            ("a\rb", "a control character (U+000D)"),
            ("a\0b", "a control character (U+0000)"),
            ("a\tb", "a control character (U+0009)"),
            ("a\u{1b}b", "a control character (U+001B)"),
            ("a\u{7f}b", "a control character (U+007F)"),
            ("a\u{85}b", "a control character (U+0085)"),
            ("a b", "whitespace (U+0020)"),
            ("x -p udp", "whitespace (U+0020)"),
            ("a\u{a0}b", "whitespace (U+00A0)"),
            ("a\u{2028}b", "whitespace (U+2028)"),
            ("a\u{3000}b", "whitespace (U+3000)"),
            ("x\"; include \"/etc/passwd", "a double quote (U+0022)"),
            ("x\\", "a backslash (U+005C)"),
            ("x#", "'#' (U+0023)"),
            ("x;accept", "';' (U+003B)"),
            ("x}", "a brace (U+007D)"),
            ("{x", "a brace (U+007B)"),
            ("$x", "'$' (U+0024)"),
        ] {
            let p = text_problem("tag", bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(p.starts_with("tag "), "{p}");
            assert!(
                p.contains(&format!("contains {kind}, which could end")),
                "{p}"
            );
            assert!(
                !p.contains('\n') && !p.contains('\r') && !p.contains('\0'),
                "{p}"
            );
        }
        let long = "x".repeat(MAX_TEXT + 1);
        let p = text_problem("tag", &long).expect("too long");
        assert!(p.ends_with("is 1025 bytes long, more than 1024"), "{p}");
        assert!(p.len() < 200, "the value is shortened in the message: {p}");
    }

    #[test]
    fn every_catalog_field_a_template_can_read_is_checked() {
        let bad = format!("x\n{INJECTED}");
        type Mutate = Box<dyn Fn(&mut ServiceInstance, &str)>;
        let fields: Vec<(&str, Mutate)> = vec![
            ("instance ID", Box::new(|i, v| i.id = v.into())),
            ("service name", Box::new(|i, v| i.name = v.into())),
            ("node name", Box::new(|i, v| i.node = v.into())),
            ("node ID", Box::new(|i, v| i.node_id = v.into())),
            ("status", Box::new(|i, v| i.status = v.into())),
            ("tag", Box::new(|i, v| i.tags.push(v.into()))),
            (
                "service meta key",
                Box::new(|i, v| {
                    i.service_meta.insert(v.into(), "1".into());
                }),
            ),
            (
                "service meta owner",
                Box::new(|i, v| {
                    i.service_meta.insert("owner".into(), v.into());
                }),
            ),
            (
                "node meta key",
                Box::new(|i, v| {
                    i.node_meta.insert(v.into(), "1".into());
                }),
            ),
            (
                "node meta owner",
                Box::new(|i, v| {
                    i.node_meta.insert("owner".into(), v.into());
                }),
            ),
        ];
        for (what, mutate) in &fields {
            let mut i = inst("web-1", "10.0.0.1", 80);
            assert_eq!(instance_problem(&i), None);
            mutate(&mut i, &bad);
            let p = instance_problem(&i).unwrap_or_else(|| panic!("{what} not checked"));
            assert!(p.starts_with(&format!("{what} ")), "{what}: {p}");
            // Through a render: the instance is gone, and the warning says which and why.
            let (out, warnings) = render_collect(IDS, &snapshot(vec![i]));
            assert_eq!(out, "", "{what}");
            assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
            assert!(
                warnings[0].starts_with("service payments: instance "),
                "{warnings:?}"
            );
            assert!(warnings[0].ends_with("; skipped"), "{warnings:?}");
        }
    }

    /// The decision on spaces: a meta value with a space costs its instance (a space is what
    /// lets a value add arguments to the rule around it).
    #[test]
    fn a_meta_value_with_spaces_costs_its_instance() {
        let mut described = inst("described", "10.0.0.2", 81);
        described
            .service_meta
            .insert("description".into(), "Payments API".into());
        let (out, warnings) = render_collect(
            IDS,
            &snapshot(vec![inst("plain", "10.0.0.1", 80), described]),
        );
        assert_eq!(out, "plain@10.0.0.1 ");
        assert_eq!(
            warnings,
            [
                r#"service payments: instance "described": service meta description "Payments API" contains whitespace (U+0020), which could end a token, quoted string, statement or line of the rendered script; skipped"#
            ]
        );
    }

    #[test]
    fn instances_the_health_filter_drops_are_not_warned_about() {
        let mut critical = inst("critical", "not an address", 81);
        critical.status = "critical".into();
        let (out, warnings) = render_collect(
            r#"{{ range service "payments" }}{{ .ID }} {{ end }}"#,
            &snapshot(vec![inst("good", "10.0.0.1", 80), critical]),
        );
        assert_eq!(out, "good ");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_template_that_asks_twice_warns_once() {
        let (_, warnings) = render_collect(
            &format!("{IDS}{IDS}"),
            &snapshot(vec![inst("bad", "x y", 80)]),
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn catalog_entries_are_checked_too() {
        let mut snap = snapshot(Vec::new());
        snap.catalog = Some(vec![
            CatalogService {
                name: "web".into(),
                tags: vec!["v1.2".into(), "zone:eu-west-1a".into()],
            },
            CatalogService {
                name: "api_v2-x".into(),
                tags: vec![],
            },
            CatalogService {
                name: format!("evil\n{INJECTED}"),
                tags: vec![],
            },
            CatalogService {
                name: "two words".into(),
                tags: vec![],
            },
            CatalogService {
                name: "web.v2".into(),
                tags: vec![],
            },
            CatalogService {
                name: "tagged".into(),
                tags: vec!["ok".into(), format!("x\n{INJECTED}")],
            },
        ]);
        let (out, warnings) = render_collect(
            r#"{{ range services }}{{ .Name }}[{{ join "," .Tags }}] {{ end }}"#,
            &snap,
        );
        assert_eq!(out, "api_v2-x[] web[v1.2,zone:eu-west-1a] ");
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0].starts_with(
            r#"catalog service "evil\n-I OUTPUT 1 -j ACCEPT": name "evil\n-I OUTPUT 1 -j ACCEPT" is not a name a `service` query can ask for"#
        ));
        assert!(warnings[1].starts_with(r#"catalog service "two words": name"#));
        assert!(warnings[2].starts_with(r#"catalog service "web.v2": name"#));
        assert!(warnings[3].starts_with(
            r#"catalog service "tagged": tag "x\n-I OUTPUT 1 -j ACCEPT" contains a control character"#
        ));
        assert!(warnings
            .iter()
            .all(|w| w.ends_with("; left out of `services`")));
    }

    #[test]
    fn long_values_are_shortened_in_warnings() {
        let s = shown(&"é".repeat(100));
        assert_eq!(s, format!("{:?}…", "é".repeat(64)));
        assert_eq!(shown("a\nb"), r#""a\nb""#);
    }

    /// A whole render of the shipped 0.2-style example against a hostile registration: the
    /// address that carries a line of its own never reaches the output; the well-formed
    /// instance does.
    #[test]
    fn a_hostile_registration_never_reaches_the_rendered_rules() {
        let example = include_str!("../../../examples/templates/allowlist.ctmpl");
        let cfg = config(example, TemplateFormat::Iptables);
        let snap = snapshot(vec![
            inst("payments-1", "10.2.0.1", 5432),
            inst(
                "payments-evil",
                &format!("10.2.0.2 -j ACCEPT\n{INJECTED}\n#"),
                5433,
            ),
        ]);
        let out = render(&cfg, &snap, &env()).expect("renders").text;
        assert!(
            out.contains("-A OUTPUT -d 10.2.0.1 -p tcp -m tcp --dport 5432 -j ACCEPT"),
            "{out}"
        );
        assert!(!out.contains(INJECTED), "{out}");
        assert!(!out.contains("10.2.0.2"), "{out}");
        assert!(!out.contains("5433"), "{out}");
    }

    /// A template that pastes tags and the node name into rules, in both formats: the control
    /// shows the values do reach the output; the hostile ones do not.
    #[test]
    fn hostile_tags_and_names_never_reach_the_rendered_rules() {
        let ipt = config(
            "*filter\n{{ range service \"payments\" }}-A OUTPUT -d {{ .Address }} -p tcp \
             --dport {{ .Port }} -m comment --comment {{ join \",\" .Tags }} -j ACCEPT\n\
             {{ end }}-A OUTPUT -j REJECT\nCOMMIT\n",
            TemplateFormat::Iptables,
        );
        let nft = config(
            "table inet t {\n  chain out {\n    type filter hook output priority 0; policy drop;\n\
             {{- range service \"payments\" }}\n    ip daddr {{ .Address }} tcp dport {{ .Port }} \
             accept comment \"{{ .Node }}\"\n{{- end }}\n  }\n}\n",
            TemplateFormat::Nft,
        );
        let mut tagged = inst("payments-tag", "10.2.0.2", 5433);
        tagged.tags.push(format!("ok\n{INJECTED}\n#"));
        let mut named = inst("payments-node", "10.2.0.3", 5434);
        named.node = "n\"; include \"/etc/passwd\"; #".into();
        let snap = snapshot(vec![inst("payments-1", "10.2.0.1", 5432), tagged, named]);

        let out = render(&ipt, &snap, &env()).expect("renders").text;
        assert_eq!(
            out,
            "*filter\n-A OUTPUT -d 10.2.0.1 -p tcp --dport 5432 -m comment --comment \
             env=prod,primary,v1.2,zone:eu-west-1a -j ACCEPT\n-A OUTPUT -j REJECT\nCOMMIT\n"
        );
        let out = render(&nft, &snap, &env()).expect("renders").text;
        assert!(
            out.contains("ip daddr 10.2.0.1 tcp dport 5432 accept comment \"node-1\""),
            "{out}"
        );
        assert!(!out.contains("include") && !out.contains("5433"), "{out}");
    }

    #[test]
    fn nft_output_may_not_include_files() {
        for bad in [
            "include \"/etc/passwd\"\n",
            "flush ruleset\ninclude \"/etc/passwd\"\n",
            "   \tinclude \"/etc/passwd\"\n",
            "flush ruleset; include \"/etc/passwd\"\n",
            "flush ruleset;include\"/etc/passwd\"\n",
            "table inet t {\n  include \"/etc/passwd\"\n}\n",
            "table inet t { chain c { include \"./rules\" } }\n",
            "include \"../x\"",
            "include\\\n\"/etc/passwd\"\n",
            "1include \"/etc/passwd\"\n",
            "INCLUDE \"/etc/passwd\"\n",
            "Include \"/etc/passwd\"\n",
            "include '/etc/passwd'\n",
            "include /etc/passwd\n",
            "include*\n",
            "# a comment\ninclude \"/x\" # another\n",
            "comment \"a\" include \"/x\"\n",
            // One `"` with no partner is junk to nft, which scans on after it.
            "a \" b\ninclude /x\n",
            "xinclude \"/x\"\n",
        ] {
            let e = check_output(TemplateFormat::Nft, bad).expect_err(&format!("{bad:?} accepted"));
            assert!(e.contains("the nft output has an `include` on line"), "{e}");
        }
        for ok in [
            "# include \"/etc/passwd\"\nflush ruleset\n",
            "table inet t { chain c { accept comment \"include /etc/passwd\" } }\n",
            "table inet t { set included_hosts { type ipv4_addr; } }\n",
            "table inet t { chain include-list { } }\n",
            "table inet t { chain c { jump include_x } }\n",
            // A string spans lines and has no escapes: `"a⏎include \"` is one string.
            "define x = \"a\ninclude \\\"/x\"\n",
            "comment \"a\ninclude \"/x\"\n",
        ] {
            assert_eq!(check_output(TemplateFormat::Nft, ok), Ok(()), "{ok:?}");
        }
        let e = check_output(
            TemplateFormat::Nft,
            "flush ruleset\n\n  include \"/etc/shadow\"\n",
        )
        .expect_err("include");
        assert_eq!(
            e,
            "the nft output has an `include` on line 3 (\"include \\\"/etc/shadow\\\"\"); a \
             rendered ruleset must be self-contained, so includes are refused"
        );
    }

    #[test]
    fn iptables_output_lines_are_bounded() {
        let ok = format!(
            "*filter\n-A OUTPUT -m comment --comment {}\nCOMMIT\n",
            "x".repeat(MAX_IPTABLES_LINE - 31)
        );
        assert_eq!(check_output(TemplateFormat::Iptables, &ok), Ok(()));
        let long = format!(
            "*filter\n-A OUTPUT -m comment --comment {}-IOUTPUT -j ACCEPT\nCOMMIT\n",
            "x".repeat(MAX_IPTABLES_LINE)
        );
        let e = check_output(TemplateFormat::Iptables, &long).expect_err("too long");
        assert!(
            e.starts_with(
                "line 2 of the iptables-restore output is 4145 bytes long, more than 4096"
            ),
            "{e}"
        );
        // The nft loader has no such limit.
        assert_eq!(check_output(TemplateFormat::Nft, &long), Ok(()));
    }

    #[test]
    fn output_with_a_nul_byte_is_refused() {
        for format in [TemplateFormat::Iptables, TemplateFormat::Nft] {
            let e =
                check_output(format, "*filter\n-A OUTPUT -j REJECT\0\nCOMMIT\n").expect_err("nul");
            assert!(e.starts_with("the output has a NUL byte on line 2"), "{e}");
        }
    }

    /// A refused output fails the render like any other error: the container fails closed.
    #[test]
    fn refused_output_fails_the_render() {
        let cfg = config(
            "{{ range service \"payments\" }}{{ end }}include \"/etc/passwd\"\n",
            TemplateFormat::Nft,
        );
        let f = render(&cfg, &snapshot(Vec::new()), &env()).expect_err("refused");
        assert!(!f.pending);
        assert_eq!(f.services, vec![svc("payments")]);
        assert!(
            f.message
                .starts_with("template t.ctmpl: the nft output has an `include` on line 1"),
            "{}",
            f.message
        );
        // The same text as iptables input is not an nft script: not refused here.
        let cfg = config("include \"/etc/passwd\"\n", TemplateFormat::Iptables);
        assert!(render(&cfg, &snapshot(Vec::new()), &env()).is_ok());
    }
}
