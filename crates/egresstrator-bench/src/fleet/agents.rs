//! A fleet of simulated hosts in one process: per host, the agent's own policy watcher
//! (`egresstrator::policy_watch::spawn`), built as the agent builds it, with its own
//! `Consul` client (its own reqwest connection pool), its own state dir, and the services
//! its "running containers" need fed to it the way the agent's reconciler does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use egresstrator::consul::{Consul, ConsulConfig, TlsConfig};
use egresstrator::policy_watch::{self, Completeness, PolicyView, PolicyWatch, Source};
use egresstrator_core::acl::ServiceRef;
use egresstrator_core::AclName;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The key under the kv-path whose value the measure changes.
pub const CHANGING: &str = "changing";

/// ACL names a simulated container `j` names in `EGRESSTRATOR_ACL`: its own ACL (which
/// references one of the five services) and the shared one the measure changes.
pub fn container_acls(j: usize) -> Result<Vec<AclName>> {
    Ok(vec![
        AclName::parse(&format!("ctr-{j:03}")).context("acl name")?,
        AclName::parse(CHANGING).context("acl name")?,
    ])
}

/// One simulated host.
pub struct Host {
    watch: PolicyWatch,
    feeder: JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

pub struct Fleet {
    pub hosts: Vec<Host>,
    dir: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.hosts.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fleet {
    /// Starts `agents` watchers against `consul_addr` (the counting proxy), each needing
    /// what `containers` running containers need. Their state dirs live under `root/name`.
    pub fn start(
        agents: usize,
        containers: usize,
        consul_addr: &str,
        kv_path: &str,
        root: &Path,
        name: &str,
    ) -> Result<Fleet> {
        let dir = root.join(name);
        let mut fleet = Fleet {
            hosts: Vec::with_capacity(agents),
            dir: dir.clone(),
        };
        // What the running containers name, as the reconciler collects it from its members
        // (`Reconciler::update_needed_services`: every member's ACL list, flattened).
        let mut names = Vec::new();
        for j in 0..containers {
            names.extend(container_acls(j)?);
        }
        let names = Arc::new(names);
        for i in 0..agents {
            let state_dir = dir.join(format!("host-{i:03}"));
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
            // As `Agent` builds it: one client per agent, from the same config type.
            let consul = Consul::new(&ConsulConfig {
                addr: consul_addr.to_owned(),
                token: None,
                kv_path: kv_path.to_owned(),
                passing_only: false,
                tls: TlsConfig::default(),
            })
            .with_context(|| format!("consul client for host {i}"))?;
            let watch = policy_watch::spawn(consul, state_dir, false, Completeness::Trusted);
            let feeder = tokio::spawn(feed_needed(
                watch.view.clone(),
                watch.needed.clone(),
                names.clone(),
            ));
            fleet.hosts.push(Host { watch, feeder });
        }
        Ok(fleet)
    }

    pub fn views(&self) -> Vec<watch::Receiver<Arc<PolicyView>>> {
        self.hosts.iter().map(|h| h.watch.view.clone()).collect()
    }

    /// Waits until every watcher holds Consul's policy with `value` under [`CHANGING`] and
    /// the instances of every service in `services`.
    pub async fn wait_ready(&self, value: &str, services: usize, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let waits = self
            .views()
            .into_iter()
            .map(|mut rx| async move { rx.wait_for(|v| ready(v, value, services)).await.is_ok() });
        let all = futures_util::future::join_all(waits);
        match tokio::time::timeout(limit, all).await {
            Ok(r) if r.iter().all(|ok| *ok) => Ok(()),
            _ => {
                let n = self
                    .views()
                    .iter()
                    .filter(|rx| ready(&rx.borrow(), value, services))
                    .count();
                bail!(
                    "only {n} of {} watchers hold the policy after {:?}",
                    self.hosts.len(),
                    start.elapsed()
                )
            }
        }
    }
}

/// Whether a view is Consul's, answers without error, holds `value` under [`CHANGING`] and
/// has instances for `services` services.
pub fn ready(v: &PolicyView, value: &str, services: usize) -> bool {
    let Some(s) = &v.snapshot else { return false };
    v.source == Source::Consul
        && v.error.is_none()
        && s.values.get(CHANGING).map(String::as_str) == Some(value)
        && s.services.values().filter(|i| !i.is_empty()).count() >= services
}

/// Whether a view holds `value` under [`CHANGING`].
pub fn holds(v: &PolicyView, value: &str) -> bool {
    v.snapshot
        .as_ref()
        .is_some_and(|s| s.values.get(CHANGING).map(String::as_str) == Some(value))
}

/// The reconciler's part the watcher depends on: on every policy change, the services the
/// running containers' ACLs reference (`enforce::service_refs`, as
/// `Reconciler::update_needed_services` computes them), sent only when they differ.
async fn feed_needed(
    mut view: watch::Receiver<Arc<PolicyView>>,
    needed: watch::Sender<BTreeSet<ServiceRef>>,
    names: Arc<Vec<AclName>>,
) {
    loop {
        let v = view.borrow_and_update().clone();
        if let Some(snapshot) = &v.snapshot {
            let refs = egresstrator::enforce::service_refs(&snapshot.acls, Some(&names));
            needed.send_if_modified(|cur| {
                if *cur != refs {
                    *cur = refs;
                    true
                } else {
                    false
                }
            });
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}
