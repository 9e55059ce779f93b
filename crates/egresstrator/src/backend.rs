//! Firewall backends: how a ruleset is rendered, loaded into a namespace and removed again.
//!
//! `nft` (the default) loads one `inet egresstrator` table in-process through libnftables,
//! in one transaction, for IPv4 and IPv6. `iptables` loads `iptables-restore --noflush` and
//! `ip6tables-restore --noflush` input into egresstrator's own chains, each atomically, so
//! other tools' rules survive. Both only ever touch egresstrator's own table or chains.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egresstrator_core::merge::Family;
use egresstrator_core::render::{self, iptables, nft};

use crate::docker::DockerClient;
use crate::helper::{self, HelperError};
use crate::netns::{self, NetnsError};

/// How rulesets reach a namespace: entered directly from the agent (default), or through
/// a helper container (`--image`).
#[derive(Clone, Debug)]
pub enum Applier {
    Local(Backend),
    Helper {
        docker: DockerClient,
        image: String,
        backend: Backend,
    },
}

impl Applier {
    pub fn backend(&self) -> Backend {
        match self {
            Applier::Local(b) | Applier::Helper { backend: b, .. } => *b,
        }
    }
}

/// Where to apply: the container whose namespace it is, and its namespace file (needed for
/// local applies only).
#[derive(Clone, Debug)]
pub struct Target {
    pub container: String,
    pub path: Option<PathBuf>,
    /// The cookie of the namespace the plan was made for: a local apply that finds another
    /// namespace behind `path` loads nothing and reports it gone.
    pub expect: Option<u64>,
    /// What an earlier load of this same plan left in the namespace (recorded by an agent
    /// before it restarted): a local apply that finds the namespace exactly so commits
    /// nothing. Only for a plan whose hash is `kept.hash`.
    pub kept: Option<Kept>,
}

/// A namespace as a load left it: the plan's hash, the namespace's fingerprint right after
/// the load (see [`netns::fingerprint`]), and the interfaces the guard could not take.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub hash: String,
    pub fingerprint: String,
    pub unguarded: Vec<String>,
}

/// What an apply did, besides taking time.
#[derive(Debug, Default)]
pub struct Applied {
    pub took: Duration,
    /// Interfaces whose names the guard could not take: raw frames can leave through them.
    pub unguarded: Vec<String>,
    /// The namespace's fingerprint right after the apply, for drift checks (local applies).
    pub fingerprint: Option<tokio::sync::oneshot::Receiver<Result<String, NetnsError>>>,
    /// Nothing was loaded: the namespace already held exactly what [`Target::kept`] says.
    pub kept: bool,
}

/// Why nothing could be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Helper(#[from] HelperError),
    #[error("container {0} has no network namespace file")]
    NoPath(String),
}

impl ApplyError {
    /// The namespace or container went away meanwhile.
    pub fn is_gone(&self) -> bool {
        match self {
            ApplyError::Netns(e) => e.is_gone(),
            ApplyError::Helper(e) => e.is_gone(),
            ApplyError::NoPath(_) => true,
        }
    }

    /// A refusal that retrying cannot change (the host's own namespace).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ApplyError::Netns(NetnsError::HostNamespace { .. }))
    }
}

fn local_path(target: &Target) -> Result<PathBuf, ApplyError> {
    target
        .path
        .clone()
        .ok_or_else(|| ApplyError::NoPath(target.container.clone()))
}

/// Loads a rendered ruleset into the target's namespace with the applier.
pub async fn apply_with(
    applier: &Applier,
    target: &Target,
    rendered: &Rendered,
) -> Result<Applied, ApplyError> {
    match applier {
        Applier::Local(_) => {
            let path = local_path(target)?;
            if let Some(kept) = &target.kept {
                if let Some(applied) = unchanged(&path, target.expect, rendered, kept).await? {
                    return Ok(applied);
                }
            }
            Ok(apply(path, target.expect, rendered).await?)
        }
        Applier::Helper { docker, image, .. } => Ok(Applied {
            took: helper::apply(docker, image, &target.container, rendered).await?,
            ..Applied::default()
        }),
    }
}

/// Removes egresstrator's rules from the target's namespace with the applier.
pub async fn clear_with(applier: &Applier, target: &Target) -> Result<Duration, ApplyError> {
    match applier {
        Applier::Local(b) => Ok(clear(*b, local_path(target)?).await?),
        Applier::Helper {
            docker,
            image,
            backend,
        } => Ok(helper::clear(docker, image, &target.container, *backend).await?),
    }
}

pub use crate::rendered::{render, Backend, Rendered};

/// When the namespace at `path` holds exactly what `kept` recorded (its fingerprint: every
/// interface name and the listing of egresstrator's table or chains and the guard), what
/// loading the same plan again would give, without loading it: after an agent restart, this
/// takes a listing (no commit, so no wait for the kernel's grace period, and no process) per
/// namespace instead of a load. Anything else there, a table deleted or a rule changed
/// while no agent ran, an interface added, and the plan is loaded as usual.
async fn unchanged(
    path: &std::path::Path,
    expect: Option<u64>,
    rendered: &Rendered,
    kept: &Kept,
) -> Result<Option<Applied>, NetnsError> {
    let started = Instant::now();
    let guard = crate::guard::support().missing().is_none();
    let listing = listing(rendered.backend, guard);
    let now = netns::fingerprint(path.to_path_buf(), expect, listing).await?;
    if now != kept.fingerprint {
        return Ok(None);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(Ok(now));
    Ok(Some(Applied {
        took: started.elapsed(),
        unguarded: kept.unguarded.clone(),
        fingerprint: Some(rx),
        kept: true,
    }))
}

/// Loads a rendered ruleset into the namespace at `path` (which must still be the namespace
/// with cookie `expect`), with the raw-socket guard where the kernel passed its self-test.
pub async fn apply(
    path: PathBuf,
    expect: Option<u64>,
    rendered: &Rendered,
) -> Result<Applied, NetnsError> {
    let guard = crate::guard::support().missing().is_none();
    let started = Instant::now();
    let script = match rendered.backend {
        // Policy and guard in one transaction.
        Backend::Nft => rendered.text.clone(),
        // After the iptables rules loaded, in the guard's transaction: remove the nft table,
        // whose deny-all stands in when iptables fails (see `enforce::load`) or was loaded by
        // a runtime hook that gave up waiting.
        Backend::IptablesRestore => {
            let argv = vec![
                "iptables-restore".to_owned(),
                "-w".to_owned(),
                iptables::LOCK_WAIT_SECS.to_owned(),
            ];
            run_ok_in(&path, expect, argv, rendered.text.clone().into_bytes()).await?;
            nft::render_clear()
        }
        Backend::Iptables => {
            if let Some(ruleset) = &rendered.ruleset {
                for family in [Family::V4, Family::V6] {
                    let jump = jump_state(&path, family).await?;
                    let script = iptables::render_family(ruleset, family, jump);
                    run_ok_in(
                        &path,
                        expect,
                        iptables::restore_command(family),
                        script.into_bytes(),
                    )
                    .await?;
                }
            }
            nft::render_clear()
        }
    };
    let loaded = netns::load(
        path,
        netns::LoadRequest {
            expect,
            script,
            guard,
            listing: listing(rendered.backend, guard),
        },
    )
    .await?;
    Ok(Applied {
        took: match rendered.backend {
            Backend::Nft => loaded.took,
            _ => started.elapsed(),
        },
        unguarded: loaded.unguarded,
        fingerprint: Some(loaded.fingerprint),
        kept: false,
    })
}

/// The nft `list` commands whose output, for this backend, is what drift checks compare:
/// egresstrator's own table or chains (iptables-nft keeps iptables chains as nft tables), the
/// jump into them, and the guard.
pub fn listing(backend: Backend, guard: bool) -> Vec<String> {
    let mut list: Vec<String> = match backend {
        Backend::Nft => vec![format!("list table {}", nft::TABLE)],
        Backend::Iptables => ["ip", "ip6"]
            .iter()
            .flat_map(|f| {
                [
                    format!("list chain {f} filter {}", iptables::OUTPUT_CHAIN),
                    format!("list chain {f} filter {}", iptables::REFUSE_CHAIN),
                    format!("list chain {f} filter OUTPUT"),
                ]
            })
            .collect(),
        // A template owns the namespace's filter table.
        Backend::IptablesRestore => vec![
            "list table ip filter".to_owned(),
            "list table ip6 filter".to_owned(),
        ],
    };
    if guard {
        list.push(format!("list table {}", render::guard::TABLE));
    }
    list
}

/// Removes egresstrator's rules from the namespace, whichever backend put them there (the
/// table and the chains are both egresstrator's own), and nothing else. Only a failure of the
/// given backend's removal is an error.
pub async fn clear(backend: Backend, path: PathBuf) -> Result<Duration, NetnsError> {
    let started = Instant::now();
    clear_one(backend, path.clone()).await?;
    let other = match backend {
        Backend::Nft => Backend::Iptables,
        Backend::Iptables | Backend::IptablesRestore => Backend::Nft,
    };
    if let Err(e) = clear_one(other, path.clone()).await {
        tracing::debug!("removing {other:?} rules: {e}");
    }
    // The guard goes with the rules: a cleared container is not enforced at all.
    netns::apply_nft(path, render::guard::render_clear()).await?;
    Ok(started.elapsed())
}

/// After the first load into a namespace, removes what the other backend may have left there
/// (an agent that ran with the other `--backend` before): stale rules would keep refusing
/// what the new ruleset allows. nft's side is checked in-process, so the common case costs
/// no process spawn.
pub async fn remove_other(backend: Backend, path: PathBuf) {
    let result = match backend {
        Backend::Iptables | Backend::IptablesRestore => clear_one(Backend::Nft, path).await,
        Backend::Nft => {
            let probe = netns::run_in_netns_async(path.clone(), || {
                let mut nft = crate::nft::Nft::for_listing().map_err(|error| NetnsError::Nft {
                    path: PathBuf::new(),
                    error,
                })?;
                let mut has = |family: &str| {
                    nft.list(&format!(
                        "list chain {family} filter {}",
                        iptables::OUTPUT_CHAIN
                    ))
                    .is_ok()
                };
                Ok(has("ip") || has("ip6"))
            })
            .await;
            match probe {
                Ok(true) => clear_one(Backend::Iptables, path).await,
                Ok(false) => Ok(Duration::ZERO),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!("removing the other backend's rules: {e}");
    }
}

async fn clear_one(backend: Backend, path: PathBuf) -> Result<Duration, NetnsError> {
    match backend {
        Backend::Nft => netns::apply_nft(path, nft::render_clear()).await,
        Backend::Iptables | Backend::IptablesRestore => {
            let started = Instant::now();
            for family in [Family::V4, Family::V6] {
                let jump = jump_state(&path, family).await?;
                let script = iptables::render_clear(family, jump);
                if run_ok(
                    &path,
                    iptables::restore_command(family),
                    script.into_bytes(),
                )
                .await
                .is_err()
                {
                    // A duplicated jump makes the atomic script refuse; remove step by step.
                    let steps = iptables::clear_commands(family);
                    for _ in 0..64 {
                        if run_ok(&path, steps.delete_jump.clone(), Vec::new())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    for argv in steps.remove_chains {
                        let _ = run_ok(&path, argv, Vec::new()).await;
                    }
                }
            }
            Ok(started.elapsed())
        }
    }
}

async fn jump_state(path: &std::path::Path, family: Family) -> Result<iptables::Jump, NetnsError> {
    let argv = iptables::check_jump_command(family);
    let (program, args) = split(argv);
    let out = netns::run_program(path.to_path_buf(), &program, args, Vec::new()).await?;
    Ok(if out.status.success() {
        iptables::Jump::Present
    } else {
        iptables::Jump::Missing
    })
}

async fn run_ok(
    path: &std::path::Path,
    argv: Vec<String>,
    stdin: Vec<u8>,
) -> Result<(), NetnsError> {
    run_ok_in(path, None, argv, stdin).await
}

/// [`run_ok`] in the namespace with cookie `expect` only.
async fn run_ok_in(
    path: &std::path::Path,
    expect: Option<u64>,
    argv: Vec<String>,
    stdin: Vec<u8>,
) -> Result<(), NetnsError> {
    let (program, args) = split(argv);
    let out = netns::run_program_in(path.to_path_buf(), expect, &program, args, stdin).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::ProgramFailed {
            path: path.to_path_buf(),
            program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn split(mut argv: Vec<String>) -> (String, Vec<String>) {
    if argv.is_empty() {
        return (String::new(), argv);
    }
    let program = argv.remove(0);
    (program, argv)
}
