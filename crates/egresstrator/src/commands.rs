//! One-shot operator commands: `set`, `clear`, `validate`, `explain` and `check`.
//!
//! Each returns the process exit code. They share the agent's planning code and read the
//! overrides of `set`/`clear` as the agent does, so what `explain` prints and `check` answers
//! is exactly what `set` and the agent apply.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use egresstrator_core::acl::{parse_acl, AclName};
use egresstrator_core::policy::{decide, Verdict};
use egresstrator_core::Proto;

use crate::backend::{self, Applier, Backend};
use crate::cli::{
    CheckArgs, ClearArgs, ExplainArgs, ExplainFormat, OnOff, ProtoArg, SetArgs, ValidateArgs,
};
use crate::consul::Consul;
use crate::docker::{ContainerInfo, DockerClient};
use crate::enforce::{self, Plan, PolicySettings, Request, Selection};
use crate::overrides::{self, Override};

fn exit(failed: usize) -> ExitCode {
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn selection(rules: Option<String>) -> Selection {
    match rules {
        Some(r) => Selection::Override(r),
        None => Selection::Own,
    }
}

/// Inspects a running container and reads what it asks for under `selection`.
async fn requested(
    docker: &DockerClient,
    container: &str,
    selection: &Selection,
) -> Result<(ContainerInfo, Result<Vec<AclName>, String>)> {
    let info = running(docker, container).await?;
    let acls = enabled_acls(&info, container, selection)?;
    Ok((info, acls))
}

/// Inspects a container; an error unless it runs.
async fn running(docker: &DockerClient, container: &str) -> Result<ContainerInfo> {
    let info = docker.inspect(container).await?;
    if !info.running {
        bail!("container {container} is not running");
    }
    Ok(info)
}

/// A running container as the running agent sees it, for `explain` and `check`.
enum Seen {
    /// Its ACLs (`--rules` given to the command, else what `set --rules` keeps, else its own)
    /// and the audit mode `set --audit-mode` chose, if it chose one.
    Enforced {
        info: ContainerInfo,
        acls: Result<Vec<AclName>, String>,
        audit: Option<bool>,
    },
    /// `clear` took it out of enforcement.
    Cleared(ContainerInfo),
}

/// What `clear` does to a container, as `explain` and `check` say it.
const CLEARED: &str = "not enforced: `clear` took it out until `set` is run again";

/// Inspects a running container and reads what it asks for after the overrides of
/// `set`/`clear` in `state_dir`, which the running agent honours. `rules` (the command's own
/// `--rules`) wins over them. An overrides file that cannot be read is a warning.
async fn seen(
    docker: &DockerClient,
    state_dir: &Path,
    container: &str,
    rules: Option<String>,
) -> Result<Seen> {
    let info = running(docker, container).await?;
    let chosen = match overrides::load(state_dir) {
        Ok(mut all) => all.remove(&info.id),
        Err(e) => {
            eprintln!(
                "warning: cannot read what `set`/`clear` chose ({e}); the container is shown without it"
            );
            None
        }
    };
    let selection = match (rules, &chosen) {
        (Some(r), _) => Selection::Override(r),
        (None, Some(Override::Cleared)) => return Ok(Seen::Cleared(info)),
        (None, Some(Override::Rules { rules, .. })) => {
            eprintln!("note: `set --rules {rules}` holds for {container}");
            Selection::Override(rules.clone())
        }
        (None, Some(Override::Audit { .. }) | None) => Selection::Own,
    };
    let audit = chosen.as_ref().and_then(Override::audit);
    if let Some(a) = audit {
        let on = if a { "on" } else { "off" };
        eprintln!("note: `set --audit-mode {on}` holds for {container}");
    }
    let acls = enabled_acls(&info, container, &selection)?;
    Ok(Seen::Enforced { info, acls, audit })
}

/// What a container asks for under `selection`; an error when it is not enabled.
fn enabled_acls(
    info: &ContainerInfo,
    container: &str,
    selection: &Selection,
) -> Result<Result<Vec<AclName>, String>> {
    match enforce::request(info, selection) {
        Request::Enforce(acls) => Ok(acls),
        Request::NotEnabled => bail!(
            "container {container} is not enabled: it has no {}=1; name its ACLs with --rules to use it anyway",
            enforce::ENV_ENABLE
        ),
    }
}

/// What a container would get now: the template's output with `--template`, else its
/// ACLs compiled. The same plan `set` loads and `explain` prints.
async fn plan_for(
    docker: &DockerClient,
    consul: &Consul,
    settings: &PolicySettings,
    info: &ContainerInfo,
    acls: &Result<Vec<AclName>, String>,
    audit: Option<bool>,
) -> Plan {
    if let Some(t) = &settings.template {
        return enforce::plan_template(consul, settings, t, info, acls).await;
    }
    let snapshot = enforce::fetch_snapshot(consul, acls, settings)
        .await
        .map(std::sync::Arc::new);
    let resolvers = enforce::resolvers(docker, info).await;
    let audit = settings.audit || audit.unwrap_or_else(|| enforce::audit_requested(info));
    let dns_filter = settings.dns_filter || enforce::dns_filter_requested(info);
    enforce::plan(acls, resolvers, &snapshot, settings, audit, dns_filter)
}

/// `set`: enforce one container (its own ACLs, or `--rules`), or every running enabled one.
pub async fn set(
    docker: &DockerClient,
    consul: &Consul,
    settings: &PolicySettings,
    state_dir: &Path,
    args: SetArgs,
) -> Result<ExitCode> {
    let rules = args.rules.clone();
    let audit = args.audit_mode.map(|a| a == OnOff::On);
    let selection = selection(args.rules);
    let mut targets = Vec::new();
    match &args.container {
        Some(c) => targets.push(requested(docker, c, &selection).await?),
        None => {
            for id in docker.list_running().await? {
                match enforce::inspect_running(docker, &id).await {
                    // --all means the enabled containers; --rules only replaces their ACLs.
                    Ok(Some(info))
                        if enforce::request(&info, &Selection::Own) != Request::NotEnabled =>
                    {
                        if let Request::Enforce(acls) = enforce::request(&info, &selection) {
                            targets.push((info, acls));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
    }
    // Recorded before applying, so that a running agent never undoes it: `--rules` holds
    // for the container's lifetime, and a plain `set` returns it to its own ACLs.
    let ids: Vec<String> = targets.iter().map(|(i, _)| i.id.clone()).collect();
    record(state_dir, &ids, move |o, id| match (&rules, audit) {
        (Some(r), audit) => {
            let rules = r.clone();
            o.insert(id.to_owned(), Override::Rules { rules, audit });
        }
        (None, Some(audit)) => {
            o.insert(id.to_owned(), Override::Audit { audit });
        }
        (None, None) => {
            o.remove(id);
        }
    })
    .await?;
    let mut failed = 0;
    for (info, acls) in targets {
        let plan = plan_for(docker, consul, settings, &info, &acls, audit).await;
        match enforce::apply(&info, &acls, plan, &settings.applier).await {
            Ok(o) => {
                enforce::log_outcome(&o);
                failed += usize::from(o.error.is_some());
            }
            Err(e) => {
                tracing::error!("{e}");
                failed += 1;
            }
        }
    }
    Ok(exit(failed))
}

/// `clear`: remove egresstrator's table from one container, or from every running one.
pub async fn clear(
    docker: &DockerClient,
    applier: &Applier,
    state_dir: &Path,
    args: ClearArgs,
) -> Result<ExitCode> {
    let names = match &args.container {
        Some(c) => vec![c.clone()],
        None => docker.list_running().await?,
    };
    let mut failed = 0;
    let mut infos = Vec::new();
    for name in names {
        match docker.inspect(&name).await {
            Ok(i) => infos.push(i),
            Err(e) => {
                tracing::error!("{e}");
                failed += 1;
            }
        }
    }
    // Recorded first, so that a running agent does not put the rules back.
    let ids: Vec<String> = infos.iter().map(|i| i.id.clone()).collect();
    record(state_dir, &ids, |o, id| {
        o.insert(id.to_owned(), Override::Cleared);
    })
    .await?;
    for info in infos {
        match enforce::clear(&info, applier).await {
            Ok(took) => tracing::info!(
                container = enforce::short_id(&info.id),
                name = %info.name,
                outcome = "cleared",
                took_ms = format_args!("{:.2}", took.as_secs_f64() * 1000.0),
                "egress rules cleared"
            ),
            // With --all, containers that share the host's namespace are not ours to clear.
            Err(e) if args.all && e.is_gone() => tracing::debug!("skipped: {e}"),
            Err(e) if args.all => tracing::warn!("skipped: {e}"),
            Err(e) => {
                tracing::error!("{e}");
                failed += 1;
            }
        }
    }
    Ok(exit(failed))
}

/// Updates the overrides of the given containers under the state dir.
async fn record(
    state_dir: &Path,
    ids: &[String],
    f: impl Fn(&mut overrides::Overrides, &str) + Send + 'static,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let dir = state_dir.to_path_buf();
    let ids = ids.to_vec();
    tokio::task::spawn_blocking(move || {
        overrides::update(&dir, |o| {
            for id in &ids {
                f(o, id);
            }
        })
    })
    .await?
    .map_err(|e| anyhow::anyhow!("cannot record the override: {e}"))
}

/// `validate`: parse every ACL under the kv-path (or the named ones) and print each error as
/// `key:line: message`.
pub async fn validate(consul: &Consul, args: ValidateArgs) -> Result<ExitCode> {
    let mut names = Vec::new();
    let mut problems = 0;
    for a in &args.acls {
        match AclName::parse(a) {
            Ok(n) => names.push(n),
            Err(e) => {
                println!("{e}");
                problems += 1;
            }
        }
    }
    let kv = consul.kv_snapshot().await?;
    let prefix = consul.kv_path();
    let selected: Vec<(String, Option<&String>)> = if args.acls.is_empty() {
        kv.values
            .iter()
            .map(|(k, v)| (k.clone(), Some(v)))
            .collect()
    } else {
        names
            .iter()
            .map(|n| (n.to_string(), kv.values.get(n.as_str())))
            .collect()
    };
    let mut checked = 0;
    for (name, value) in selected {
        let Some(value) = value else {
            println!("{prefix}{name}: acl '{name}' does not exist under the kv-path (or the token may not read it)");
            problems += 1;
            continue;
        };
        checked += 1;
        match parse_acl(&name, value) {
            Ok(acl) => {
                for w in &acl.warnings {
                    println!("{prefix}{name}:{}: warning: {}", w.line, w.message);
                }
            }
            Err(errs) => {
                for e in &errs.errors {
                    println!(
                        "{prefix}{name}:{}: expected {}, got {:?} ({})",
                        e.line, e.expected, e.text, e.reason
                    );
                    problems += 1;
                }
            }
        }
    }
    eprintln!("checked {checked} acl(s) under {prefix}: {problems} error(s)");
    Ok(exit(problems))
}

/// `explain`: the exact ruleset a container would get, without applying it.
pub async fn explain(
    docker: &DockerClient,
    consul: &Consul,
    settings: &PolicySettings,
    state_dir: &Path,
    args: ExplainArgs,
) -> Result<ExitCode> {
    let (info, acls, audit) = match seen(docker, state_dir, &args.container, args.rules).await? {
        Seen::Enforced { info, acls, audit } => (info, acls, audit),
        Seen::Cleared(info) => {
            eprintln!("{}: {CLEARED}", args.container);
            if args.format == ExplainFormat::Json {
                let doc = serde_json::json!({
                    "container": info.id,
                    "name": info.name,
                    "cleared": true,
                    "ruleset": null,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let plan = plan_for(docker, consul, settings, &info, &acls, audit).await;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(e) = &plan.error {
        eprintln!("fail closed: {e}");
    }
    // A ruleset is shown in the format asked for; a template's output is shown as it is.
    let text = |b: Backend| match &plan.rendered.ruleset {
        Some(r) => backend::render(b, r).text,
        None => plan.rendered.text.clone(),
    };
    match args.format {
        ExplainFormat::Nft => print!("{}", text(Backend::Nft)),
        ExplainFormat::Iptables => print!("{}", text(Backend::Iptables)),
        ExplainFormat::Json => {
            let mut doc = serde_json::json!({
                "container": info.id,
                "name": info.name,
                "error": plan.error,
                "warnings": plan.warnings,
                "backend": format!("{:?}", plan.rendered.backend).to_lowercase(),
                "hash": plan.rendered.hash,
                "ruleset": plan.rendered.ruleset,
            });
            if plan.rendered.ruleset.is_none() {
                doc["template_output"] = plan.rendered.text.clone().into();
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `check`: allow or deny for one destination, and what decided. Exit 0 allow, 1 deny.
pub async fn check(
    docker: &DockerClient,
    consul: &Consul,
    settings: &PolicySettings,
    state_dir: &Path,
    listen: &str,
    args: CheckArgs,
) -> Result<ExitCode> {
    if settings.template.is_some() {
        bail!("check answers from the built-in policy; with --template, read `explain` instead");
    }
    let (info, acls, audit) = match seen(docker, state_dir, &args.container, args.rules).await? {
        Seen::Enforced { info, acls, audit } => (info, acls, audit),
        Seen::Cleared(_) => {
            println!(
                "allow: {} {}/{}: {CLEARED}",
                args.address,
                args.proto.as_proto(),
                args.port
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let plan = plan_for(docker, consul, settings, &info, &acls, audit).await;
    if let Some(e) = &plan.error {
        eprintln!("fail closed: {e}");
    }
    let Some(ruleset) = &plan.rendered.ruleset else {
        bail!("the plan holds no ruleset to check"); // only templates' plans lack one
    };
    let proto = args.proto.as_proto();
    let d = match args.address.parse::<std::net::IpAddr>() {
        Ok(addr) => {
            let d = decide(ruleset, addr, proto, args.port);
            if !d.passes() && !ruleset.names.is_empty() {
                // An address the running agent learned for a name line decides too.
                if let Some(line) = learned_for(listen, &info.id, addr, proto, args.port).await {
                    println!("allow: {} {}/{}: {line}", args.address, proto, args.port);
                    return Ok(ExitCode::SUCCESS);
                }
            }
            d
        }
        Err(_) => {
            let name = egresstrator_core::name::normalize(&args.address).map_err(|e| {
                anyhow::anyhow!(
                    "{:?} is neither an address nor a DNS name: {e}",
                    args.address
                )
            })?;
            match egresstrator_core::policy::decide_name(ruleset, &name, proto, args.port) {
                Some(d) => d,
                None => {
                    println!(
                        "no name line matches {name} {proto}/{}: in protect mode the address it resolves to decides (check that address)",
                        args.port
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    let verdict = match d.verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
    };
    println!(
        "{verdict}: {} {}/{}: {}",
        args.address, proto, args.port, d.reason
    );
    Ok(match d.verdict {
        Verdict::Allow => ExitCode::SUCCESS,
        Verdict::Deny => ExitCode::FAILURE,
    })
}

/// Whether the running agent (its `/status` at `listen`) holds `addr` as learned for the
/// container `id` on `proto`/`port`: the names whose answers gave it and when it expires.
/// `None` when it does not, or when no agent answers there.
async fn learned_for(
    listen: &str,
    id: &str,
    addr: std::net::IpAddr,
    proto: Proto,
    port: u16,
) -> Option<String> {
    if listen == "off" {
        return None;
    }
    let doc = crate::client::status_doc(listen).await.ok()?;
    let container = doc["containers"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)?;
    let learned: Vec<crate::status::LearnedAddress> =
        serde_json::from_value(container["fqdn"]["learned"].clone()).ok()?;
    let hit = learned.into_iter().find(|l| {
        l.address == addr.to_canonical()
            && l.proto == proto.as_str()
            && match l.ports.split_once('-') {
                Some((lo, hi)) => {
                    lo.parse().is_ok_and(|lo: u16| lo <= port)
                        && hi.parse().is_ok_and(|hi: u16| port <= hi)
                }
                None => l.ports.parse() == Ok(port),
            }
    })?;
    let left = hit.expires_unix.saturating_sub(
        crate::status::unix_nanos(std::time::SystemTime::now()) as u64 / 1_000_000_000,
    );
    Some(format!(
        "learned from the DNS answer for {} (expires in {left}s)",
        hit.names.join(", ")
    ))
}

impl ProtoArg {
    fn as_proto(self) -> Proto {
        match self {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}
