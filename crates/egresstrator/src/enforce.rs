//! Enforcing one container: who it is, what it asks for, what policy says, and applying the
//! result inside its network namespace. Shared by the agent and the `set`/`clear` commands.
//!
//! The invariant: an enabled container always ends up with either its real ruleset or the
//! deny-all ruleset. Any failure on the way to the real ruleset (bad ACL name, Consul down,
//! unknown key, bad line, unresolvable service, nft refusing the script) falls back to
//! deny-all, and the error is reported. The host's own namespace is never written: the
//! namespace layer refuses it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use egresstrator_core::acl::{parse_acl_list, AclName, Entry, ServiceRef};
use egresstrator_core::policy::{self, ServiceTable};
use egresstrator_core::{compile, AclTable, Mode, PolicyInput, Posture, Ruleset, WorkloadPolicy};
use ipnet::IpNet;
use thiserror::Error;

use crate::backend::{self, Applier, ApplyError, Backend, Rendered, Target};
use crate::consul::Consul;
use crate::docker::{ContainerInfo, DockerClient};
pub use crate::rendered::Plan;

/// The environment variable a container opts in with.
pub const ENV_ENABLE: &str = "EGRESSTRATOR_ENABLE";
/// The environment variable naming a container's ACLs.
pub const ENV_ACL: &str = "EGRESSTRATOR_ACL";
/// The label a container opts in with (`true` or `1`).
pub const LABEL_ENABLE: &str = "egresstrator.enable";
/// The label naming a container's ACLs.
pub const LABEL_ACL: &str = "egresstrator.acl";
/// The environment variable a container asks for audit mode with (`1`).
pub const ENV_AUDIT: &str = "EGRESSTRATOR_AUDIT";
/// The label a container asks for audit mode with (`true` or `1`).
pub const LABEL_AUDIT: &str = "egresstrator.audit";

/// The environment variable a container's creator turns the DNS filter on with (`1`).
pub const ENV_DNS_FILTER: &str = "EGRESSTRATOR_DNS_FILTER";
/// The label a container's creator turns the DNS filter on with (`true` or `1`).
pub const LABEL_DNS_FILTER: &str = "egresstrator.dns-filter";

/// Whether a container's creator asks for the DNS filter (see `Ruleset::dns_filter`), by the
/// same rule as audit mode: labels alone when the container has `egresstrator.enable`, else
/// the environment. It only ever narrows what the container may do.
pub fn dns_filter_requested(info: &ContainerInfo) -> bool {
    let yes = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1");
    if info.labels.contains_key(LABEL_ENABLE) {
        info.labels.get(LABEL_DNS_FILTER).is_some_and(|v| yes(v))
    } else {
        info.env_var(ENV_DNS_FILTER).is_some_and(yes)
    }
}

/// Whether a container asks for audit mode: its real ruleset, logging and accepting where it
/// would refuse. The same rule as for enabling: when the container has the label
/// `egresstrator.enable`, labels alone decide (`egresstrator.audit`), else the environment
/// (`EGRESSTRATOR_AUDIT=1`). This gives whoever creates the container no new power: they
/// already choose its ACLs.
pub fn audit_requested(info: &ContainerInfo) -> bool {
    let yes = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1");
    if info.labels.contains_key(LABEL_ENABLE) {
        info.labels.get(LABEL_AUDIT).is_some_and(|v| yes(v))
    } else {
        info.env_var(ENV_AUDIT).map(str::trim) == Some("1")
    }
}

/// Which ACLs a container gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// What the container itself asks for (`EGRESSTRATOR_ENABLE`, `EGRESSTRATOR_ACL`).
    Own,
    /// ACLs given by an operator (`set --rules`); the container needs no opt-in.
    Override(String),
}

/// What a container asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Not opted in: leave it alone.
    NotEnabled,
    /// Enforce with these ACL names, or fail closed with this error (a bad name).
    Enforce(Result<Vec<AclName>, String>),
}

/// Reads a container's request from an override, its labels or its environment.
///
/// Labels win over the environment: when the container has the label `egresstrator.enable`,
/// the labels alone decide (`egresstrator.enable=true` and `egresstrator.acl=a,b`), and the
/// `EGRESSTRATOR_*` variables are ignored. Labels are set by whoever starts the container and
/// cannot be changed from inside it.
pub fn request(info: &ContainerInfo, selection: &Selection) -> Request {
    let list = match selection {
        Selection::Override(list) => list.as_str(),
        Selection::Own => match info.labels.get(LABEL_ENABLE) {
            Some(v) => {
                if !matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1") {
                    return Request::NotEnabled;
                }
                info.labels.get(LABEL_ACL).map_or("", String::as_str)
            }
            None => {
                if info.env_var(ENV_ENABLE).map(str::trim) != Some("1") {
                    return Request::NotEnabled;
                }
                info.env_var(ENV_ACL).unwrap_or("")
            }
        },
    };
    Request::Enforce(parse_acl_list(list).map_err(|e| e.to_string()))
}

pub use crate::snapshot::PolicySnapshot;

/// Settings that shape every ruleset.
#[derive(Clone, Debug)]
pub struct PolicySettings {
    pub mode: Mode,
    pub dns_allow: Vec<IpNet>,
    pub applier: Applier,
    /// `--template`: render this file instead of compiling ACLs.
    pub template: Option<std::sync::Arc<crate::template::TemplateConfig>>,
    /// The normalized kv-path (templates see it as `CONSUL_PATH`).
    pub kv_path: String,
    /// Protect mode without `--protect-without-manifest`: the KV answer counts only when it
    /// holds every key the manifest lists (`egresstrator_core::manifest`).
    pub require_manifest: bool,
    /// `--audit`: every container's ruleset logs and accepts where it would refuse.
    pub audit: bool,
    /// `--dns-filter`: every container's queries for names no line allows are refused.
    pub dns_filter: bool,
}

/// The result of enforcing one container.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub id: String,
    pub name: String,
    pub acls: Vec<String>,
    pub posture: String,
    pub rules: usize,
    pub hash: String,
    pub took: Duration,
    pub applied_at: SystemTime,
    /// Why the real ruleset could not be applied (the container is then failed closed).
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

impl Outcome {
    /// The outcome of `loaded` for one container; `error` says why it is failed closed.
    pub fn new(
        info: &ContainerInfo,
        acls: &Result<Vec<AclName>, String>,
        loaded: &Loaded,
        error: Option<String>,
        warnings: Vec<String>,
    ) -> Outcome {
        Outcome {
            id: info.id.clone(),
            name: info.name.clone(),
            acls: match acls {
                Ok(n) => n.iter().map(ToString::to_string).collect(),
                Err(_) => Vec::new(),
            },
            posture: loaded.posture.clone(),
            rules: loaded.rules,
            hash: loaded.rendered.hash.clone(),
            took: loaded.took,
            applied_at: loaded.at,
            error,
            warnings,
        }
    }
}

/// Why nothing at all could be applied.
#[derive(Debug, Error)]
pub enum EnforceError {
    #[error("container {id} ({name}) has no network namespace (is it running?)")]
    NoNamespace { id: String, name: String },
    #[error("container {id} ({name}): {source}")]
    Netns {
        id: String,
        name: String,
        #[source]
        source: Box<ApplyError>,
    },
    #[error("container {id} ({name}) uses the host's network (--network host); egresstrator never changes the host's firewall")]
    HostNetwork { id: String, name: String },
}

impl EnforceError {
    /// The container went away while we worked on it: not an error worth reporting.
    pub fn is_gone(&self) -> bool {
        match self {
            EnforceError::NoNamespace { .. } => true,
            EnforceError::Netns { source, .. } => source.is_gone(),
            EnforceError::HostNetwork { .. } => false,
        }
    }
}

pub use crate::docker::short_id;

/// The result of loading into a namespace.
#[derive(Debug)]
pub struct Loaded {
    /// What is in force now: the planned ruleset, or deny-all when it did not load.
    pub rendered: Rendered,
    /// `allowlist`, `protect`, `deny-all` or `template`.
    pub posture: String,
    /// Destinations in the ruleset (0 for a template).
    pub rules: usize,
    pub took: Duration,
    pub at: SystemTime,
    /// Why the planned ruleset did not load (deny-all is then in force).
    pub fallback: Option<String>,
    /// The interfaces the raw-socket guard could not take, and the fingerprint that drift
    /// checks compare against (see [`backend::Applied`]).
    pub applied: backend::Applied,
}

/// Loads a plan into the target's namespace. When it does not load, deny-all is loaded
/// instead (fail closed) and `fallback` says why. Afterwards, open connections that the
/// ruleset in force denies are cut (local applies of rulesets only).
pub async fn load(
    applier: &Applier,
    target: &Target,
    rendered: Rendered,
) -> Result<Loaded, ApplyError> {
    let started = Instant::now();
    let is_deny_all = rendered
        .ruleset
        .as_ref()
        .is_some_and(|r| r.posture == Posture::DenyAll);
    let (rendered, fallback, applied) = match backend::apply_with(applier, target, &rendered).await
    {
        Ok(a) => (rendered, None, a),
        Err(e) if e.is_gone() || e.is_refusal() => return Err(e),
        Err(e) if is_deny_all => return Err(e),
        Err(e) => {
            // Deny-all goes in as one nft transaction, whatever the backend: it covers both
            // families at once, so an iptables load that failed half way (IPv4 in, IPv6
            // refused) never leaves one family closed and the other open, and it does not
            // depend on the tool that just failed. An iptables load that succeeds later
            // removes it (see `backend::apply`).
            let r = backend::render(Backend::Nft, &Ruleset::deny_all());
            let target = Target {
                kept: None,
                ..target.clone()
            };
            let a = backend::apply_with(applier, &target, &r).await?;
            (r, Some(format!("applying the ruleset failed: {e}")), a)
        }
    };
    let at = SystemTime::now();
    let took = started.elapsed();
    let (posture, rules) = match &rendered.ruleset {
        Some(r) => (r.posture_label(), r.allow.len() + r.deny.len()),
        None => ("template".to_owned(), 0),
    };
    Ok(Loaded {
        rendered,
        posture,
        rules,
        took,
        at,
        fallback,
        applied,
    })
}

/// What a load leaves to tidy up in its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tidy {
    /// The first load into a namespace that may have lived before: remove what the other
    /// backend left, and cut open connections the ruleset denies.
    First,
    /// A later load: cut open connections the new ruleset denies.
    Again,
    /// The first load into a namespace runc has just created (a runtime hook said so):
    /// nothing has run in it, so there is nothing to cut. The only rules it can hold are the
    /// nft deny-all the hook loads itself when the agent is late, which the nft backend
    /// replaces and the iptables backends must remove.
    Fresh,
}

/// Housekeeping after a load, off the critical path (callers report the commit first).
/// Local applies of rulesets only.
pub async fn after_load(
    applier: &Applier,
    target: &Target,
    backend: Backend,
    ruleset: Option<&Ruleset>,
    tidy: Tidy,
) {
    if let (Applier::Local(_), Some(path)) = (applier, &target.path) {
        let remove_other = match tidy {
            Tidy::First => true,
            Tidy::Again => false,
            Tidy::Fresh => backend != Backend::Nft,
        };
        if remove_other {
            backend::remove_other(backend, path.clone()).await;
        }
        // An audit-mode ruleset refuses nothing, so it cuts nothing either.
        let ruleset = ruleset.filter(|r| !r.audits());
        if let (Some(ruleset), false) = (ruleset, tidy == Tidy::Fresh) {
            crate::conntrack::cut_denied(path.clone(), ruleset).await;
        }
    }
}

/// The apply target of a container.
pub fn target(info: &ContainerInfo) -> Target {
    Target {
        container: info.id.clone(),
        path: info.netns_path(),
        expect: None,
        kept: None,
    }
}

/// Reads the ACL table under the kv-path and resolves the services the given ACLs reference
/// (every ACL in protect mode). Service lookups that fail are left out of the table, so a
/// workload that needs them fails closed with a message naming the service.
pub async fn snapshot(
    consul: &Consul,
    needed: Option<&[AclName]>,
    require_manifest: bool,
) -> Result<PolicySnapshot, String> {
    let kv = consul.kv_snapshot().await.map_err(|e| e.to_string())?;
    if require_manifest {
        kv.complete().map_err(|e| e.to_string())?;
    }
    let acls = AclTable::parse(kv.values.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let refs = service_refs(&acls, needed);
    let mut services = ServiceTable::new();
    let mut warnings = Vec::new();
    let mut details = BTreeMap::new();
    for r in refs {
        match consul.service_instances_blocking(&r, None).await {
            Ok(snap) => {
                warnings.extend(snap.warnings);
                services.insert(r.clone(), snap.instances);
                details.insert(r, snap.details);
            }
            Err(e) => warnings.push(e.to_string()),
        }
    }
    Ok(PolicySnapshot {
        acls,
        services,
        warnings,
        values: kv.values,
        details,
        catalog: None,
    })
}

/// The service references in the named ACLs (all ACLs when `names` is None).
pub fn service_refs(acls: &AclTable, names: Option<&[AclName]>) -> BTreeSet<ServiceRef> {
    let mut refs = BTreeSet::new();
    for (name, acl) in acls.iter() {
        let wanted = names.is_none_or(|n| n.iter().any(|a| a.as_str() == name));
        if let (true, Ok(acl)) = (wanted, acl) {
            for line in &acl.lines {
                if let Entry::Service(r) = &line.entry {
                    refs.insert(r.clone());
                }
            }
        }
    }
    refs
}

/// Compiles the ruleset for a request, or explains why it fails closed.
pub fn compile_for<S: std::ops::Deref<Target = PolicySnapshot>>(
    acls: &Result<Vec<AclName>, String>,
    resolvers: Vec<IpAddr>,
    snapshot: &Result<S, String>,
    settings: &PolicySettings,
    audit: bool,
    dns_filter: bool,
) -> (Ruleset, Option<String>, Vec<String>) {
    let names = match acls {
        Ok(n) => n,
        Err(e) => return (Ruleset::deny_all(), Some(e.clone()), Vec::new()),
    };
    let snap = match snapshot {
        Ok(s) => s,
        Err(e) => {
            return (
                Ruleset::deny_all(),
                Some(format!("policy unavailable: {e}")),
                Vec::new(),
            )
        }
    };
    let input = PolicyInput {
        mode: settings.mode,
        acls: &snap.acls,
        services: &snap.services,
        dns_allow: &settings.dns_allow,
    };
    let workload = WorkloadPolicy {
        acls: names.clone(),
        resolvers,
    };
    match compile(&workload, &input) {
        Ok(c)
            if (c.ruleset.learns_names() || dns_filter)
                && !matches!(settings.applier, Applier::Local(backend::Backend::Nft)) =>
        {
            let what = match c.ruleset.names.first() {
                Some(n) => format!("{} (a name destination)", n.origin),
                None => "the DNS filter".to_owned(),
            };
            (
                Ruleset::deny_all(),
                Some(format!(
                    "{what} needs the nft backend and the agent's own applies (not --backend iptables or --image)"
                )),
                c.warnings,
            )
        }
        Ok(c) => {
            // Deny-all never audits (`Ruleset::audits`): failing closed stays closed.
            let mut ruleset = c.ruleset;
            ruleset.audit = audit;
            ruleset.dns_filter = dns_filter;
            (ruleset, None, c.warnings)
        }
        Err(e) => (Ruleset::deny_all(), Some(e.to_string()), Vec::new()),
    }
}

/// The resolvers DNS may reach from a container: those its creator or the daemon chose
/// ([`crate::resolvers`]), never what a file inside the container says. For `--network
/// container:X` they are X's, so X is inspected.
pub async fn resolvers(docker: &DockerClient, info: &ContainerInfo) -> Vec<IpAddr> {
    let daemon = crate::resolvers::DaemonDns::read();
    if let Some(owner) = info.network_mode.strip_prefix("container:") {
        return match docker.inspect(owner).await {
            Ok(o) => crate::resolvers::trusted(&o, &daemon),
            Err(e) => {
                tracing::warn!(
                    container = short_id(&info.id),
                    "cannot inspect {owner}, whose network it joins: {e}; DNS is not allowed"
                );
                Vec::new()
            }
        };
    }
    crate::resolvers::trusted(info, &daemon)
}

/// With a helper image the namespace cannot be compared with the host's (the daemon may be
/// remote), so the network mode decides, following `--network container:X` to X: a
/// container that joins a host-networked one is in the host's namespace too. Local applies
/// compare namespace identities instead.
async fn refuse_host(info: &ContainerInfo, applier: &Applier) -> Result<(), EnforceError> {
    if let Applier::Helper { docker, .. } = applier {
        if host_network(docker, info).await {
            return Err(EnforceError::HostNetwork {
                id: short_id(&info.id).to_owned(),
                name: info.name.clone(),
            });
        }
    }
    Ok(())
}

/// True when the container is in the host's network namespace by its network mode: `host`,
/// or `container:X` where X is (following such joins a few levels). A join that cannot be
/// followed counts as the host's: refusing is the safe side.
pub async fn host_network(docker: &DockerClient, info: &ContainerInfo) -> bool {
    let mut mode = info.network_mode.clone();
    for _ in 0..4 {
        if mode == "host" {
            return true;
        }
        let Some(owner) = mode.strip_prefix("container:") else {
            return false;
        };
        match docker.inspect(owner).await {
            Ok(o) => mode = o.network_mode,
            Err(_) => return true,
        }
    }
    true
}

/// The namespace file of a running container.
pub fn netns_path(info: &ContainerInfo) -> Result<PathBuf, EnforceError> {
    info.netns_path().ok_or_else(|| EnforceError::NoNamespace {
        id: short_id(&info.id).to_owned(),
        name: info.name.clone(),
    })
}

/// Reads the policy a request needs from Consul: in allowlist mode only the services of the
/// named ACLs are resolved, in protect mode those of every ACL.
pub async fn fetch_snapshot(
    consul: &Consul,
    acls: &Result<Vec<AclName>, String>,
    settings: &PolicySettings,
) -> Result<PolicySnapshot, String> {
    let needed = match (acls, settings.mode) {
        (Ok(n), Mode::Allowlist) => Some(n.as_slice()),
        _ => None,
    };
    snapshot(consul, needed, settings.require_manifest).await
}

/// Renders the template for one container outside the agent (for `set` and `explain`):
/// services the template reads are fetched as it asks for them.
pub async fn plan_template(
    consul: &Consul,
    settings: &PolicySettings,
    t: &crate::template::TemplateConfig,
    info: &ContainerInfo,
    acls: &Result<Vec<AclName>, String>,
) -> Plan {
    let deny = |e: String| Plan::deny_all(settings.applier.backend(), e);
    let names = match acls {
        Ok(n) => n,
        Err(e) => return deny(e.clone()),
    };
    let mut snap = match fetch_snapshot(consul, acls, settings).await {
        Ok(s) => s,
        Err(e) => return deny(format!("policy unavailable: {e}")),
    };
    match consul.catalog_services_blocking(None).await {
        Ok((_, list)) => snap.catalog = Some(list),
        Err(e) => return deny(format!("policy unavailable: {e}")),
    }
    let env = crate::template::TemplateEnv {
        acls: names.iter().map(ToString::to_string).collect(),
        kv_path: settings.kv_path.clone(),
        container_id: info.id.clone(),
        container_name: info.name.clone(),
    };
    // Each round resolves the services the template reached so far; a template cannot read
    // more services than it names, so this ends.
    for _ in 0..64 {
        match crate::template::render(t, &snap, &env) {
            Ok(out) => return Plan::template(t.format.backend(), out.text),
            Err(f) if f.pending => {
                let mut progressed = false;
                for r in f.services {
                    if snap.details.contains_key(&r) {
                        continue;
                    }
                    match consul.service_instances_blocking(&r, None).await {
                        Ok(s) => {
                            snap.services.insert(r.clone(), s.instances);
                            snap.details.insert(r, s.details);
                            progressed = true;
                        }
                        Err(e) => return deny(e.to_string()),
                    }
                }
                if !progressed {
                    return deny(f.message);
                }
            }
            Err(f) => return deny(f.message),
        }
    }
    deny("the template reads too many services".into())
}

/// Compiles a container's plan from a policy snapshot, rendered for the applier's backend.
pub fn plan(
    acls: &Result<Vec<AclName>, String>,
    resolvers: Vec<IpAddr>,
    snapshot: &Result<std::sync::Arc<PolicySnapshot>, String>,
    settings: &PolicySettings,
    audit: bool,
    dns_filter: bool,
) -> Plan {
    let (ruleset, error, mut warnings) =
        compile_for(acls, resolvers, snapshot, settings, audit, dns_filter);
    if let Ok(s) = snapshot {
        warnings.extend(s.warnings.iter().cloned());
    }
    Plan {
        rendered: backend::render(settings.applier.backend(), &ruleset),
        error,
        warnings,
    }
}

/// Loads a plan (the built-in policy's or a template's) into the container's namespace, as
/// `set` does. When it does not load, deny-all is applied instead (fail closed) and the
/// error is reported in the outcome.
pub async fn apply(
    info: &ContainerInfo,
    acls: &Result<Vec<AclName>, String>,
    plan: Plan,
    applier: &Applier,
) -> Result<Outcome, EnforceError> {
    refuse_host(info, applier).await?;
    let Plan {
        rendered,
        error,
        warnings,
    } = plan;
    let target = target(info);
    let loaded = load(applier, &target, rendered)
        .await
        .map_err(|source| EnforceError::Netns {
            id: short_id(&info.id).to_owned(),
            name: info.name.clone(),
            source: Box::new(source),
        })?;
    after_load(
        applier,
        &target,
        loaded.rendered.backend,
        loaded.rendered.ruleset.as_ref(),
        Tidy::First,
    )
    .await;
    let error = loaded.fallback.clone().or(error);
    Ok(Outcome::new(info, acls, &loaded, error, warnings))
}

/// Removes egresstrator's table from a container's namespace, and nothing else.
pub async fn clear(info: &ContainerInfo, applier: &Applier) -> Result<Duration, EnforceError> {
    refuse_host(info, applier).await?;
    backend::clear_with(applier, &target(info))
        .await
        .map_err(|source| EnforceError::Netns {
            id: short_id(&info.id).to_owned(),
            name: info.name.clone(),
            source: Box::new(source),
        })
}

/// Logs one line for an outcome: id, name, ACLs, outcome, time taken.
pub fn log_outcome(o: &Outcome) {
    let id = short_id(&o.id);
    let acls = o.acls.join(",");
    let took_ms = o.took.as_secs_f64() * 1000.0;
    for w in &o.warnings {
        tracing::warn!(container = id, name = %o.name, "{w}");
    }
    match &o.error {
        None => tracing::info!(
            container = id,
            name = %o.name,
            acls = %acls,
            outcome = "enforced",
            posture = %o.posture,
            rules = o.rules,
            took_ms = format_args!("{took_ms:.2}"),
            "container enforced"
        ),
        Some(e) => tracing::error!(
            container = id,
            name = %o.name,
            acls = %acls,
            outcome = "fail-closed",
            took_ms = format_args!("{took_ms:.2}"),
            error = %e,
            "container failed closed: all egress denied"
        ),
    }
}

/// Looks up a container and reads its request; `Ok(None)` when it is not running.
pub async fn inspect_running(
    docker: &DockerClient,
    id: &str,
) -> Result<Option<ContainerInfo>, crate::docker::DockerError> {
    let info = docker.inspect(id).await?;
    Ok(info.running.then_some(info))
}

/// Default DNS allowances for protect mode when none are configured.
pub fn dns_allow_or_default(configured: Vec<IpNet>) -> Vec<IpNet> {
    if configured.is_empty() {
        policy::default_dns_allow()
    } else {
        configured
    }
}
