//! What a template may read, and the record of what it read.
//!
//! The engine never fetches anything itself: the caller implements [`DataSource`] (over a
//! Consul client, a cache, or a fake in tests) and the engine turns consul-template's
//! function arguments into typed queries before asking it. Every query a render makes is
//! written into [`Dependencies`], so the caller can watch exactly those keys, prefixes and
//! services, as consul-template watches a template's dependencies.
//!
//! Query strings are parsed here with consul-template's own grammar (`tag.name@dc~near|filter`
//! for services, `path@dc` for keys), so a template that worked under consul-template asks
//! the same questions here.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

/// The caller's view of Consul, the environment and the clock.
///
/// Errors are plain strings: the engine wraps them with the template position and the
/// function that asked (`web.tmpl:12:7: error calling tree: connection refused`).
///
/// The engine pastes every string it is given into the output exactly as it is: it neither
/// escapes nor checks text. A source whose data comes from parties the output must not
/// trust (Consul's catalog: anyone who may register a service chooses its address, tags and
/// meta) has to leave such data out before it returns it; egresstrator's source does (its
/// `template` module).
pub trait DataSource {
    /// An environment variable, as `env` reads it (`None` renders as the empty string).
    fn env(&self, name: &str) -> Option<String>;

    /// The value of one KV key, `None` when the key does not exist.
    fn key(&self, key: &KvRef) -> Result<Option<String>, String>;

    /// Every KV pair under a prefix, recursively, as Consul's `GET /v1/kv/PREFIX?recurse`
    /// returns it: full key paths (folder keys ending in `/` included). The engine derives
    /// the relative keys and applies `ls`'s and `tree`'s filters itself, exactly as
    /// consul-template does over the same single list query.
    fn list(&self, prefix: &KvRef) -> Result<Vec<KvEntry>, String>;

    /// The instances of a service, from Consul's health endpoint. A source may return
    /// instances of any status: the engine keeps those the query's filter accepts
    /// (`passing` only by default) and sorts them by node then ID. When
    /// [`ServiceQuery::passing_only`] is true the source may ask Consul for passing
    /// instances only.
    fn service(&self, query: &ServiceQuery) -> Result<Vec<ServiceInstance>, String>;

    /// The catalog's services (`services`), in any order: the engine sorts them by name.
    fn services(&self, query: &CatalogQuery) -> Result<Vec<CatalogService>, String>;

    /// The current time as Unix seconds, for `timestamp` (always rendered in UTC).
    fn now_unix(&self) -> i64;
}

/// A KV key or prefix with its optional datacenter: `path@dc` in a template.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KvRef {
    /// The key or prefix, without a leading `/`.
    pub path: String,
    /// The datacenter after `@`, if any.
    pub datacenter: Option<String>,
}

impl fmt::Display for KvRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(dc) = &self.datacenter {
            write!(f, "@{dc}")?;
        }
        Ok(())
    }
}

/// One KV pair as Consul returns it from a list query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvEntry {
    /// The full key path (`egresstrator/acl/web`).
    pub path: String,
    /// The value, as text.
    pub value: String,
    /// Consul's `CreateIndex`.
    pub create_index: u64,
    /// Consul's `ModifyIndex`.
    pub modify_index: u64,
    /// Consul's `LockIndex`.
    pub lock_index: u64,
    /// Consul's `Flags`.
    pub flags: u64,
    /// Consul's `Session`.
    pub session: String,
}

/// A KV pair as a template sees it from `ls` and `tree`: `.Key` (relative to the prefix),
/// `.Value`, `.Path` (the full key) and Consul's indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPair {
    /// The full key path.
    pub path: String,
    /// The key relative to the queried prefix.
    pub key: String,
    /// The value.
    pub value: String,
    /// Consul's `CreateIndex`.
    pub create_index: u64,
    /// Consul's `ModifyIndex`.
    pub modify_index: u64,
    /// Consul's `LockIndex`.
    pub lock_index: u64,
    /// Consul's `Flags`.
    pub flags: u64,
    /// Consul's `Session`.
    pub session: String,
}

/// One instance of a service, with the fields consul-template exposes: `.Node`, `.NodeID`,
/// `.NodeAddress`, `.Address`, `.ID`, `.Name`, `.Tags`, `.Status`, `.Port`, `.ServiceMeta`,
/// `.NodeMeta`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInstance {
    /// The node's name.
    pub node: String,
    /// The node's ID.
    pub node_id: String,
    /// The node's address.
    pub node_address: String,
    /// The service's address; when empty the engine uses the node's address, as
    /// consul-template does.
    pub address: String,
    /// The service instance's ID.
    pub id: String,
    /// The service's name.
    pub name: String,
    /// The instance's tags (the engine sorts them).
    pub tags: Vec<String>,
    /// The aggregated health: `passing`, `warning`, `critical` or `maintenance`.
    pub status: String,
    /// The service's port.
    pub port: u16,
    /// The service's metadata.
    pub service_meta: BTreeMap<String, String>,
    /// The node's metadata.
    pub node_meta: BTreeMap<String, String>,
}

impl ServiceInstance {
    /// The address a template reads as `.Address`: the service's own, or the node's when the
    /// service has none (consul-template's rule, applied by `service`).
    pub fn effective_address(&self) -> &str {
        if self.address.is_empty() {
            &self.node_address
        } else {
            &self.address
        }
    }
}

/// A service in the catalog, as `services` yields it: `.Name` and `.Tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogService {
    /// The service's name.
    pub name: String,
    /// The union of its instances' tags (the engine sorts them).
    pub tags: Vec<String>,
}

/// A health filter of a `service` query (`service "web|passing,warning"`, `service "web" "any"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthFilter {
    /// Every instance, whatever its checks say.
    Any,
    /// Instances whose checks all pass (consul-template's default).
    Passing,
    /// Instances with a warning check.
    Warning,
    /// Instances with a critical check.
    Critical,
    /// Instances in maintenance.
    Maintenance,
}

impl HealthFilter {
    /// The status name as Consul spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthFilter::Any => "any",
            HealthFilter::Passing => "passing",
            HealthFilter::Warning => "warning",
            HealthFilter::Critical => "critical",
            HealthFilter::Maintenance => "maintenance",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "any" => HealthFilter::Any,
            "passing" => HealthFilter::Passing,
            "warning" => HealthFilter::Warning,
            "critical" => HealthFilter::Critical,
            "maintenance" => HealthFilter::Maintenance,
            _ => return None,
        })
    }
}

/// A parsed `service` query: `[tag.]name[@dc][~near][|filter,…]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceQuery {
    /// The service's name.
    pub name: String,
    /// Only instances with this tag.
    pub tag: Option<String>,
    /// The datacenter.
    pub datacenter: Option<String>,
    /// Sort by round-trip time from this node instead of by node name (`~near`).
    pub near: Option<String>,
    /// The health filters, sorted; `[Passing]` when the template gave none.
    pub filters: Vec<HealthFilter>,
}

impl ServiceQuery {
    /// Parses consul-template's service query string (the arguments of `service` joined with
    /// `|`, so `service "web" "any"` is `web|any`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let m = service_re()
            .and_then(|re| re.captures(s))
            .ok_or_else(|| format!("health.service: invalid format: {}", crate::fmt::quote(s)))?;
        let get = |n: &str| m.name(n).map(|x| x.as_str().to_owned());
        let mut filters = Vec::new();
        match m.name("filter") {
            Some(f) => {
                for part in f.as_str().split(',') {
                    let part = part.trim();
                    if part.is_empty() {
                        continue;
                    }
                    let filter = HealthFilter::parse(part).ok_or_else(|| {
                        format!(
                            "health.service: invalid filter: {} in {}",
                            crate::fmt::quote(part),
                            crate::fmt::quote(s)
                        )
                    })?;
                    filters.push(filter);
                }
                filters.sort();
            }
            None => filters.push(HealthFilter::Passing),
        }
        Ok(ServiceQuery {
            name: get("name").unwrap_or_default(),
            tag: get("tag"),
            datacenter: get("dc"),
            near: get("near"),
            filters,
        })
    }

    /// Whether only passing instances are wanted (the default), so a source may let Consul
    /// filter.
    pub fn passing_only(&self) -> bool {
        self.filters == [HealthFilter::Passing]
    }

    /// Whether the query's filters accept an instance with this aggregated status.
    pub fn accepts(&self, status: &str) -> bool {
        self.filters
            .iter()
            .any(|f| *f == HealthFilter::Any || f.as_str() == status)
    }
}

impl fmt::Display for ServiceQuery {
    /// consul-template's spelling of the dependency: `tag.name@dc~near|filters`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(tag) = &self.tag {
            write!(f, "{tag}.")?;
        }
        f.write_str(&self.name)?;
        if let Some(dc) = &self.datacenter {
            write!(f, "@{dc}")?;
        }
        if let Some(near) = &self.near {
            write!(f, "~{near}")?;
        }
        let filters: Vec<&str> = self.filters.iter().map(|x| x.as_str()).collect();
        write!(f, "|{}", filters.join(","))
    }
}

/// A parsed `services` query: the optional `@dc`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CatalogQuery {
    /// The datacenter.
    pub datacenter: Option<String>,
}

/// Everything a render read from the data source, for the caller to watch.
///
/// Sets, so the record is deterministic and each dependency appears once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// Keys read with `key`, `keyOrDefault` or `keyExists`.
    pub keys: BTreeSet<KvRef>,
    /// Prefixes listed with `ls`, `tree`, `safeLs` or `safeTree`.
    pub prefixes: BTreeSet<KvRef>,
    /// Service queries made with `service`.
    pub services: BTreeSet<ServiceQuery>,
    /// Catalog queries made with `services`.
    pub catalog: BTreeSet<CatalogQuery>,
    /// Environment variables read with `env` (fixed for a container; recorded for `explain`).
    pub env: BTreeSet<String>,
    /// Data the template must wait for: keys read with `key` that do not exist, and
    /// prefixes read with `safeLs`/`safeTree` that are empty. consul-template does not
    /// render such a template at all; see [`crate::Rendered::is_complete`].
    pub missing: BTreeSet<KvRef>,
}

impl Dependencies {
    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.prefixes.is_empty()
            && self.services.is_empty()
            && self.catalog.is_empty()
            && self.env.is_empty()
    }
}

/// Parses `path[@dc]` as consul-template's KV queries do (a leading `/` is dropped).
pub(crate) fn parse_kv_ref(kind: &str, s: &str) -> Result<KvRef, String> {
    let m = kv_re()
        .and_then(|re| re.captures(s))
        .ok_or_else(|| format!("{kind}: invalid format: {}", crate::fmt::quote(s)))?;
    Ok(KvRef {
        path: m
            .name("path")
            .map(|x| x.as_str().to_owned())
            .unwrap_or_default(),
        datacenter: m.name("dc").map(|x| x.as_str().to_owned()),
    })
}

/// Parses the optional `@dc` argument of `services`.
pub(crate) fn parse_catalog_query(s: &str) -> Result<CatalogQuery, String> {
    if s.is_empty() {
        return Ok(CatalogQuery::default());
    }
    let m = catalog_re()
        .and_then(|re| re.captures(s))
        .ok_or_else(|| format!("catalog.services: invalid format: {}", crate::fmt::quote(s)))?;
    Ok(CatalogQuery {
        datacenter: m.name("dc").map(|x| x.as_str().to_owned()),
    })
}

// consul-template's building blocks (dependency/dependency.go), with Go's `[[:word:]]`.
const DC_RE: &str = r"(@(?P<dc>[[:word:]\.\-_]+))?";
const FILTER_RE: &str = r"(\|(?P<filter>[[:word:],]+))?";
const SERVICE_NAME_RE: &str = r"(?P<name>[[:word:]\-_]+)";
const NEAR_RE: &str = r"(~(?P<near>[[:word:]\.\-_]+))?";
const TAG_RE: &str = r"((?P<tag>[[:word:]=:\.\-_]+)\.)?";

fn service_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(&format!(
            r"\A{TAG_RE}{SERVICE_NAME_RE}{DC_RE}{NEAR_RE}{FILTER_RE}\z"
        ))
        .ok()
    })
    .as_ref()
}

fn kv_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| Regex::new(&format!(r"\A/?(?P<path>[^@]+){DC_RE}\z")).ok())
        .as_ref()
}

fn catalog_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| Regex::new(&format!(r"\A{DC_RE}\z")).ok())
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_query_full_form() {
        let q = ServiceQuery::parse("prod.web@dc2~node1|warning,passing").unwrap();
        assert_eq!(q.name, "web");
        assert_eq!(q.tag.as_deref(), Some("prod"));
        assert_eq!(q.datacenter.as_deref(), Some("dc2"));
        assert_eq!(q.near.as_deref(), Some("node1"));
        assert_eq!(
            q.filters,
            vec![HealthFilter::Passing, HealthFilter::Warning]
        );
        assert_eq!(q.to_string(), "prod.web@dc2~node1|passing,warning");
    }

    #[test]
    fn service_query_defaults_to_passing() {
        let q = ServiceQuery::parse("web").unwrap();
        assert!(q.passing_only());
        assert!(q.accepts("passing"));
        assert!(!q.accepts("critical"));
        let any = ServiceQuery::parse("web|any").unwrap();
        assert!(any.accepts("critical"));
    }

    #[test]
    fn service_query_tag_is_greedy_like_go() {
        let q = ServiceQuery::parse("a.b.web").unwrap();
        assert_eq!(q.tag.as_deref(), Some("a.b"));
        assert_eq!(q.name, "web");
    }

    #[test]
    fn service_query_rejects_bad_input() {
        let e = ServiceQuery::parse("web server").unwrap_err();
        assert_eq!(e, r#"health.service: invalid format: "web server""#);
        let e = ServiceQuery::parse("web|healthy").unwrap_err();
        assert_eq!(
            e,
            r#"health.service: invalid filter: "healthy" in "web|healthy""#
        );
    }

    #[test]
    fn kv_ref_parses_dc_and_strips_slash() {
        let k = parse_kv_ref("kv.get", "/a/b@dc1").unwrap();
        assert_eq!(k.path, "a/b");
        assert_eq!(k.datacenter.as_deref(), Some("dc1"));
        assert_eq!(k.to_string(), "a/b@dc1");
        assert!(parse_kv_ref("kv.get", "@dc").is_err());
    }

    #[test]
    fn catalog_query_parses_dc() {
        assert_eq!(parse_catalog_query("").unwrap(), CatalogQuery::default());
        assert_eq!(
            parse_catalog_query("@dc2").unwrap().datacenter.as_deref(),
            Some("dc2")
        );
        assert!(parse_catalog_query("dc2").is_err());
    }

    #[test]
    fn effective_address_falls_back_to_the_node() {
        let mut i = ServiceInstance {
            node_address: "10.0.0.1".into(),
            ..ServiceInstance::default()
        };
        assert_eq!(i.effective_address(), "10.0.0.1");
        i.address = "10.0.0.2".into();
        assert_eq!(i.effective_address(), "10.0.0.2");
    }

    #[test]
    fn fixed_patterns_compile() {
        assert!(service_re().is_some());
        assert!(kv_re().is_some());
        assert!(catalog_re().is_some());
    }
}
