//! A thin Consul HTTP client: the KV prefix under the kv-path, and service instances.
//!
//! It must never read KV outside the kv-path: the only KV request it can make is a recursive
//! read of that prefix, and callers cannot pass another key. The token travels only in the
//! `X-Consul-Token` header and never appears in errors or logs.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use egresstrator_core::acl::ServiceRef;
use egresstrator_template::{CatalogService, ServiceInstance};
use serde::Deserialize;
use thiserror::Error;

/// Why a Consul request failed. Messages name the request, never the token.
#[derive(Debug, Error)]
pub enum ConsulError {
    #[error("invalid consul address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("consul TLS setup: {reason}")]
    Tls { reason: String },
    #[error("invalid kv-path {path:?}: {reason}")]
    BadKvPath { path: String, reason: String },
    #[error("consul request {what} failed: {}", chain(source))]
    Http {
        what: String,
        source: reqwest::Error,
    },
    #[error("consul request {what} answered {status}: {body}")]
    Status {
        what: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("consul request {what} returned an unreadable answer: {reason}")]
    Decode { what: String, reason: String },
    /// Consul left results out that the token may not read
    /// (`X-Consul-Results-Filtered-By-ACLs: true`): the answer is incomplete, and an
    /// incomplete answer is never taken for the whole.
    #[error("consul request {what} left out results the token may not read (X-Consul-Results-Filtered-By-ACLs); an incomplete answer is refused")]
    Filtered { what: String },
    /// Protect mode: the answer lacks a key the manifest lists (or the manifest itself).
    #[error("consul's answer is incomplete: {0}")]
    Incomplete(#[from] egresstrator_core::manifest::ManifestError),
}

/// An error with its causes (reqwest's own message leaves out why, e.g. which TLS check
/// failed).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A secret that never prints: not in logs, errors, `--help` or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ConsulConfig {
    /// `host:port`, `http://host:port` or `https://host:port` (TLS: see [`TlsConfig`]).
    pub addr: String,
    pub token: Option<Secret>,
    /// KV prefix holding the ACLs, e.g. `egress/acl/`.
    pub kv_path: String,
    /// Count only service instances whose checks pass (`--service-health passing`).
    pub passing_only: bool,
    pub tls: TlsConfig,
}

/// TLS towards Consul. Verification is always on.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// `--ssl` / `$CONSUL_HTTP_SSL`; an `https://` address turns it on too.
    pub enabled: bool,
    /// `--ssl-ca-cert` / `$CONSUL_CACERT`: the only CA trusted when given.
    pub ca_cert: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

/// The values under the kv-path, by name relative to it, with Consul's index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvSnapshot {
    pub index: u64,
    pub values: BTreeMap<String, String>,
    /// The value of the kv-path's own key (`egress/acl/` itself): protect mode's manifest of
    /// every ACL key (see `egresstrator_core::manifest`). None when that key does not exist.
    pub manifest: Option<String>,
}

impl KvSnapshot {
    /// Whether this answer holds every key the manifest lists (protect mode; see
    /// `egresstrator_core::manifest`), or why it is incomplete.
    pub fn complete(&self) -> Result<(), ConsulError> {
        egresstrator_core::manifest::check(
            self.manifest.as_deref(),
            self.values.keys().map(String::as_str),
        )?;
        Ok(())
    }
}

/// A blocking query: answer when the data changes past `index`, or after `wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    pub wait: Duration,
}

/// The instances of one service, with Consul's index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pub index: u64,
    /// Addresses an ACL's service reference reaches (passing ones only with
    /// `--service-health passing`).
    pub instances: Vec<SocketAddr>,
    pub warnings: Vec<String>,
    /// Every instance, in any health state, as templates see them.
    pub details: Vec<ServiceInstance>,
}

#[derive(Clone, Debug)]
pub struct Consul {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    prefix: String,
    passing_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvEntry {
    key: String,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    address: String,
    #[serde(default)]
    node: String,
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    address: String,
    port: u16,
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default, rename = "Service")]
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default, rename = "CheckID")]
    check_id: String,
    #[serde(default)]
    status: String,
}

/// Consul's aggregated health of an instance: maintenance, else the worst check.
fn aggregate_status(checks: &[HealthCheck]) -> &'static str {
    if checks.iter().any(|c| {
        c.check_id == "_node_maintenance" || c.check_id.starts_with("_service_maintenance:")
    }) {
        return "maintenance";
    }
    let rank = |s: &str| match s {
        "critical" => 3,
        "warning" => 2,
        _ => 1,
    };
    match checks.iter().map(|c| rank(&c.status)).max().unwrap_or(1) {
        3 => "critical",
        2 => "warning",
        _ => "passing",
    }
}

/// Normalizes a kv-path to `a/b/` form and refuses what could escape it.
pub fn normalize_kv_path(path: &str) -> Result<String, ConsulError> {
    let bad = |reason: &str| ConsulError::BadKvPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = path.trim().trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(bad(
            "it may not be empty: it would expose the whole KV store",
        ));
    }
    if trimmed.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(bad("'.' and '..' segments are not allowed"));
    }
    if trimmed.contains(['?', '#', '%']) {
        return Err(bad("'?', '#' and '%' are not allowed"));
    }
    Ok(if trimmed.ends_with('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/")
    })
}

impl Consul {
    pub fn new(config: &ConsulConfig) -> Result<Self, ConsulError> {
        let addr = config.addr.trim();
        let (https, rest) = if let Some(rest) = addr.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = addr.strip_prefix("http://") {
            (config.tls.enabled, rest)
        } else {
            (config.tls.enabled, addr)
        };
        let base = rest.trim_end_matches('/');
        if base.is_empty() || base.contains(['/', '?', '#', '@']) {
            return Err(ConsulError::BadAddress {
                addr: addr.to_owned(),
                reason: "expected host:port".into(),
            });
        }
        if let Err(e) = reqwest::Url::parse(&format!("http://{base}/")) {
            return Err(ConsulError::BadAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            });
        }
        let setup = |reason: String| ConsulError::Tls { reason };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            // Bounds ordinary requests; blocking queries set their own.
            .timeout(Duration::from_secs(10));
        if https {
            // Certificates and host names are always verified; there is no switch to turn
            // that off.
            builder = builder.https_only(true);
            if let Some(ca) = &config.tls.ca_cert {
                let pem = std::fs::read(ca).map_err(|e| {
                    setup(format!("cannot read CA certificate {}: {e}", ca.display()))
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    setup(format!("CA certificate {} is not PEM: {e}", ca.display()))
                })?;
                if certs.is_empty() {
                    return Err(setup(format!(
                        "CA certificate {} holds no certificate",
                        ca.display()
                    )));
                }
                // Only the configured CA is trusted, as with Consul's own CONSUL_CACERT.
                builder = builder.tls_built_in_root_certs(false);
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            match (&config.tls.client_cert, &config.tls.client_key) {
                (Some(cert), Some(key)) => {
                    let mut pem = std::fs::read(cert).map_err(|e| {
                        setup(format!(
                            "cannot read client certificate {}: {e}",
                            cert.display()
                        ))
                    })?;
                    pem.push(b'\n');
                    pem.extend(std::fs::read(key).map_err(|e| {
                        setup(format!("cannot read client key {}: {e}", key.display()))
                    })?);
                    let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                        setup(format!(
                            "client certificate {} and key {} are not usable: {e}",
                            cert.display(),
                            key.display()
                        ))
                    })?;
                    builder = builder.identity(id);
                }
                (None, None) => {}
                _ => {
                    return Err(setup(
                        "a client certificate needs both --ssl-client-cert and --ssl-client-key"
                            .into(),
                    ))
                }
            }
        } else if config.tls.ca_cert.is_some() || config.tls.client_cert.is_some() {
            return Err(setup(
                "TLS files were given but TLS is off: add --ssl or use an https:// address".into(),
            ));
        }
        let http = builder.build().map_err(|source| ConsulError::Http {
            what: "client setup".into(),
            source,
        })?;
        let scheme = if https { "https" } else { "http" };
        Ok(Consul {
            http,
            base: format!("{scheme}://{base}"),
            token: config.token.clone(),
            prefix: normalize_kv_path(&config.kv_path)?,
            passing_only: config.passing_only,
        })
    }

    /// Which KV data this client reads: `<address>/v1/kv/<kv-path>`.
    pub fn origin(&self) -> String {
        format!("{}/v1/kv/{}", self.base, self.prefix)
    }

    /// The normalized kv-path.
    pub fn kv_path(&self) -> &str {
        &self.prefix
    }

    /// `<address>/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| e.to_string())?;
        url.path_segments_mut()
            .map_err(|()| format!("{} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// GET `<address>/<segments…>?<query>`. Each segment is percent-encoded by the URL
    /// builder, so a name can never add a path segment or a query parameter.
    async fn get(
        &self,
        what: &str,
        segments: &[&str],
        query: &[(&str, &str)],
        block: Option<Block>,
    ) -> Result<reqwest::Response, ConsulError> {
        let url = self.url(segments).map_err(|reason| ConsulError::Decode {
            what: what.to_owned(),
            reason,
        })?;
        let mut req = self.http.get(url).query(query);
        if let Some(b) = block.filter(|b| b.index > 0) {
            req = req
                .query(&[
                    ("index", b.index.to_string()),
                    ("wait", format!("{}s", b.wait.as_secs().max(1))),
                ])
                // Consul adds up to wait/16 of jitter; leave room for it and the network.
                .timeout(b.wait + b.wait / 16 + Duration::from_secs(5));
        }
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t.expose());
        }
        req.send().await.map_err(|source| ConsulError::Http {
            what: what.to_owned(),
            // reqwest errors carry the URL, which holds no secret: the token is a header.
            source,
        })
    }

    /// Reads every key under the kv-path. An empty or invisible prefix (404) is an empty
    /// snapshot; whether a named ACL is missing is for the policy to decide.
    pub async fn kv_snapshot(&self) -> Result<KvSnapshot, ConsulError> {
        self.kv_snapshot_blocking(None).await
    }

    /// [`Consul::kv_snapshot`] as a blocking query: with `block`, Consul answers when the
    /// prefix changes past `block.index` or when the wait ends.
    pub async fn kv_snapshot_blocking(
        &self,
        block: Option<Block>,
    ) -> Result<KvSnapshot, ConsulError> {
        let what = format!("GET /v1/kv/{}?recurse", self.prefix);
        // The prefix is normalized ("a/b/"); its last, empty segment keeps the trailing slash.
        let mut segments = vec!["v1", "kv"];
        segments.extend(self.prefix.split('/'));
        let resp = self
            .get(&what, &segments, &[("recurse", "true")], block)
            .await?;
        let index = consul_index(&resp);
        refuse_filtered(&resp, &what)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(KvSnapshot {
                index,
                ..KvSnapshot::default()
            });
        }
        let entries: Vec<KvEntry> = json_answer(resp, &what).await?;
        let mut values = BTreeMap::new();
        let mut manifest = None;
        for e in entries {
            // Consul only returns keys under the prefix; check anyway, it is cheap.
            let Some(name) = e.key.strip_prefix(&self.prefix) else {
                continue;
            };
            if name.ends_with('/') {
                continue; // a sub-folder marker
            }
            let encoded = e.value.as_ref().map_or(0, String::len);
            if encoded > crate::limits::KV_VALUE_BYTES.div_ceil(3) * 4 {
                // A value beyond the bound is not decoded. It stands in as one line that
                // no grammar accepts, so the ACL is an error that says why: every container
                // naming it fails closed, and in protect mode every container does.
                values.insert(
                    name.to_owned(),
                    format!(
                        "value of about {} bytes refused: larger than the {}-byte limit",
                        encoded / 4 * 3,
                        crate::limits::KV_VALUE_BYTES
                    ),
                );
                continue;
            }
            let raw = match e.value {
                Some(v) => base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map_err(|err| ConsulError::Decode {
                        what: what.clone(),
                        reason: format!("key {}: {err}", e.key),
                    })?,
                None => Vec::new(),
            };
            let text = String::from_utf8_lossy(&raw).into_owned();
            if name.is_empty() {
                manifest = Some(text); // the kv-path's own key
            } else {
                values.insert(name.to_owned(), text);
            }
        }
        Ok(KvSnapshot {
            index,
            values,
            manifest,
        })
    }

    /// Every instance of a service, in any health state: its service address, or its node's
    /// when the service has none. Instances whose address is not an IP are skipped and
    /// reported.
    pub async fn service_instances(
        &self,
        sref: &ServiceRef,
    ) -> Result<(Vec<SocketAddr>, Vec<String>), ConsulError> {
        self.service_instances_blocking(sref, None)
            .await
            .map(|s| (s.instances, s.warnings))
    }

    /// [`Consul::service_instances`] as a blocking query, with Consul's index.
    pub async fn service_instances_blocking(
        &self,
        sref: &ServiceRef,
        block: Option<Block>,
    ) -> Result<ServiceSnapshot, ConsulError> {
        // Consul takes `stale` by presence; an empty value is how reqwest writes that.
        let mut query = vec![("stale", "")];
        if let Some(tag) = &sref.tag {
            query.push(("tag", tag));
        }
        if let Some(dc) = &sref.datacenter {
            query.push(("dc", dc));
        }
        // All instances are fetched; `instances` keeps the passing ones when asked to, and
        // `details` keeps every one, for templates that choose their own health filter.
        let what = format!("GET /v1/health/service/{sref}");
        let segments = ["v1", "health", "service", sref.service.as_str()];
        let resp = self.get(&what, &segments, &query, block).await?;
        let index = consul_index(&resp);
        refuse_filtered(&resp, &what)?;
        let entries: Vec<HealthEntry> = json_answer(resp, &what).await?;
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        let mut details = Vec::new();
        for e in entries {
            let status = aggregate_status(&e.checks);
            let addr = if e.service.address.is_empty() {
                &e.node.address
            } else {
                &e.service.address
            };
            if !self.passing_only || status == "passing" {
                match addr.parse::<IpAddr>() {
                    Ok(ip) => out.push(SocketAddr::new(ip, e.service.port)),
                    Err(_) => warnings.push(format!(
                        "service {sref}: instance address {addr:?} is not an IP address; skipped"
                    )),
                }
            }
            details.push(ServiceInstance {
                node: e.node.node,
                node_id: e.node.id,
                node_address: e.node.address,
                address: e.service.address,
                id: e.service.id,
                name: e.service.name,
                tags: e.service.tags.unwrap_or_default(),
                status: status.to_owned(),
                port: e.service.port,
                service_meta: e.service.meta.unwrap_or_default(),
                node_meta: e.node.meta.unwrap_or_default(),
            });
        }
        out.sort();
        out.dedup();
        Ok(ServiceSnapshot {
            index,
            instances: out,
            warnings,
            details,
        })
    }
}

impl Consul {
    /// Every service in the local datacenter's catalog with its tags (for templates'
    /// `services`), as a blocking query.
    pub async fn catalog_services_blocking(
        &self,
        block: Option<Block>,
    ) -> Result<(u64, Vec<CatalogService>), ConsulError> {
        let what = "GET /v1/catalog/services".to_owned();
        let resp = self
            .get(
                &what,
                &["v1", "catalog", "services"],
                &[("stale", "")],
                block,
            )
            .await?;
        let index = consul_index(&resp);
        refuse_filtered(&resp, &what)?;
        let map: BTreeMap<String, Vec<String>> = json_answer(resp, &what).await?;
        Ok((
            index,
            map.into_iter()
                .map(|(name, tags)| CatalogService { name, tags })
                .collect(),
        ))
    }
}

/// The JSON body of a successful answer; any other status is an error naming the request
/// and quoting the start of Consul's answer.
async fn json_answer<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
) -> Result<T, ConsulError> {
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(ConsulError::Status {
            what: what.to_owned(),
            status,
            body: body.trim().chars().take(200).collect(),
        });
    }
    resp.json().await.map_err(|e| ConsulError::Decode {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// Consul 1.9+ marks an answer from which results the token may not read were left out; such
/// an answer is incomplete, and taking it for the whole would shrink a policy silently.
fn refuse_filtered(resp: &reqwest::Response, what: &str) -> Result<(), ConsulError> {
    let filtered = resp
        .headers()
        .get("X-Consul-Results-Filtered-By-ACLs")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if filtered {
        return Err(ConsulError::Filtered {
            what: what.to_owned(),
        });
    }
    Ok(())
}

fn consul_index(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_paths() {
        assert_eq!(normalize_kv_path("egress/acl/").expect("ok"), "egress/acl/");
        assert_eq!(normalize_kv_path("/egress/acl").expect("ok"), "egress/acl/");
        for bad in ["", "/", "a/../b", "a/./b", "a?b"] {
            assert!(normalize_kv_path(bad).is_err(), "{bad}");
        }
    }

    fn cfg(a: &str) -> ConsulConfig {
        ConsulConfig {
            addr: a.into(),
            token: None,
            kv_path: "egress/acl/".into(),
            passing_only: false,
            tls: TlsConfig::default(),
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Consul::new(&cfg("127.0.0.1:8500")).expect("ok").base,
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            Consul::new(&cfg("http://h:1/")).expect("ok").base,
            "http://h:1"
        );
        assert_eq!(
            Consul::new(&cfg("https://h:1")).expect("ok").base,
            "https://h:1"
        );
        assert!(Consul::new(&cfg("h:1/x")).is_err());
    }

    #[test]
    fn a_name_stays_one_path_segment() {
        let c = Consul::new(&cfg("127.0.0.1:8500")).expect("ok");
        let url = c
            .url(&["v1", "health", "service", "a b/c?x#y"])
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/health/service/a%20b%2Fc%3Fx%23y"
        );
        let mut kv = vec!["v1", "kv"];
        kv.extend("egress/acl/".split('/'));
        assert_eq!(
            c.url(&kv).expect("url").as_str(),
            "http://127.0.0.1:8500/v1/kv/egress/acl/"
        );
    }
}
