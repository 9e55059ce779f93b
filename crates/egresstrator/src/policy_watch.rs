//! Keeps the agent's view of policy current: one blocking query on the kv-path prefix, one per
//! service that a running enabled container needs, and the last good snapshot on disk.
//!
//! Consul is the single source of truth, but it may be away: at start the snapshot from disk
//! is used until Consul answers, and while Consul is unreachable the last good data stays in
//! force. The watcher never exits because Consul is down; it retries with jittered backoff.
//! It follows Consul's rules for blocking queries: carry the index, reset it when it goes
//! backwards, never use an index below 1, bound the wait, and rate-limit: a service or catalog
//! watch starts at most one query per [`MIN_QUERY_INTERVAL`] (jittered), however fast its
//! data changes; the kv watch, whose changes may close egress, one per
//! [`KV_MIN_QUERY_INTERVAL`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use egresstrator_core::acl::{parse_service_ref, ServiceRef};
use egresstrator_core::policy::ServiceTable;
use egresstrator_core::AclTable;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::consul::{Block, Consul, ConsulError, KvSnapshot, ServiceSnapshot};
use crate::snapshot::PolicySnapshot;
use crate::state_dir::{self, StateDirError};

/// How long one blocking query may wait for a change.
const WAIT: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// The least time between the starts of two queries of one service or catalog watch,
/// jittered ([0.5, 1.5) of it). Consul answers a blocking query at once when its data
/// changed, so a service that flaps many times a second would make every agent of the fleet
/// ask as often, each reading the whole answer again. With the limit, the first change after
/// a quiet spell is still seen at once (the query was already waiting), and the last state
/// of a burst at most 1.5 × this later.
pub const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(500);
/// The same for the kv watch: much shorter, because a KV change may take egress away, and
/// an operator's second change within half a second must not wait for the limit (the KV
/// benchmark writes every 0.5 s). It still keeps a script that writes ACL keys in a tight
/// loop from making every agent spin.
pub const KV_MIN_QUERY_INTERVAL: Duration = Duration::from_millis(50);
/// File name of the snapshot under the state dir.
pub const SNAPSHOT_FILE: &str = "policy-snapshot.json";

/// Where the current policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Nothing known yet: Consul has not answered and there is no snapshot on disk.
    None,
    /// The snapshot on disk, while Consul has not answered.
    Snapshot,
    /// Consul itself.
    Consul,
}

/// Seconds since the Unix epoch, now (0 on a clock set before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The agent's current view of policy.
#[derive(Clone, Debug)]
pub struct PolicyView {
    /// Increases with every change; the agent re-plans when it moves.
    pub version: u64,
    pub snapshot: Option<Arc<PolicySnapshot>>,
    pub source: Source,
    pub kv_index: u64,
    /// The last Consul error, while Consul is failing.
    pub error: Option<String>,
}

impl PolicyView {
    /// The snapshot for planning (shared, not copied: every namespace plans from it), or
    /// why there is none (containers then fail closed).
    pub fn for_planning(&self) -> Result<Arc<PolicySnapshot>, String> {
        match &self.snapshot {
            Some(s) => Ok(s.clone()),
            None => Err(match &self.error {
                Some(e) => format!("consul has not answered and there is no policy snapshot: {e}"),
                None => "no policy has been read from consul yet".to_string(),
            }),
        }
    }
}

/// Handles to a running watcher.
pub struct PolicyWatch {
    pub view: watch::Receiver<Arc<PolicyView>>,
    /// When the policy in force was last known to be Consul's current one (Unix seconds): the
    /// last complete KV answer, changed or not, or the snapshot's save time; 0 for never.
    pub fresh_at: Arc<std::sync::atomic::AtomicU64>,
    /// The services the agent needs watched; the watcher starts and stops queries to match.
    pub needed: watch::Sender<BTreeSet<ServiceRef>>,
    task: JoinHandle<()>,
}

impl Drop for PolicyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the snapshot file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// The Consul address and kv-path this snapshot was read from; another agent
    /// configuration must not use it.
    #[serde(default)]
    origin: String,
    kv_index: u64,
    values: BTreeMap<String, String>,
    /// Service reference as written (`tag.name@dc`) → instances.
    services: BTreeMap<String, Vec<SocketAddr>>,
    saved_at_unix: u64,
    /// The kv-path's own key: protect mode's manifest.
    #[serde(default)]
    manifest: Option<String>,
}

/// When a KV answer counts as complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    /// Any answer Consul does not mark as filtered (allowlist mode: a key the token cannot
    /// read is an unknown ACL, which fails its containers closed anyway).
    Trusted,
    /// Every key the manifest lists must have been read (protect mode, where an unread key
    /// would protect nothing). An incomplete answer is treated like an error: the last good
    /// policy stays in force and is not overwritten, or containers fail closed when there is
    /// none.
    Manifest,
}

enum Msg {
    Kv(Result<KvSnapshot, ConsulError>),
    /// A KV answer that changed nothing: the policy in force is still Consul's current one.
    KvUnchanged,
    Catalog(Vec<egresstrator_template::CatalogService>),
    Service(ServiceRef, Result<ServiceSnapshot, ConsulError>),
}

/// Starts watching Consul. The first view is the snapshot on disk, if any.
pub fn spawn(
    consul: Consul,
    state_dir: PathBuf,
    watch_catalog: bool,
    completeness: Completeness,
) -> PolicyWatch {
    let (view_tx, view_rx) = watch::channel(Arc::new(PolicyView {
        version: 0,
        snapshot: None,
        source: Source::None,
        kv_index: 0,
        error: None,
    }));
    let (needed_tx, needed_rx) = watch::channel(BTreeSet::new());
    let fresh_at = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let task = tokio::spawn(run(
        consul,
        state_dir,
        view_tx,
        needed_rx,
        watch_catalog,
        completeness,
        fresh_at.clone(),
    ));
    PolicyWatch {
        view: view_rx,
        fresh_at,
        needed: needed_tx,
        task,
    }
}

struct State {
    consul: Consul,
    state_dir: PathBuf,
    version: u64,
    kv: Option<BTreeMap<String, String>>,
    manifest: Option<String>,
    completeness: Completeness,
    fresh_at: Arc<std::sync::atomic::AtomicU64>,
    kv_index: u64,
    services: BTreeMap<ServiceRef, Vec<SocketAddr>>,
    details: BTreeMap<ServiceRef, Vec<egresstrator_template::ServiceInstance>>,
    service_warnings: BTreeMap<ServiceRef, Vec<String>>,
    needed: BTreeSet<ServiceRef>,
    tasks: HashMap<ServiceRef, JoinHandle<()>>,
    catalog: Option<Vec<egresstrator_template::CatalogService>>,
    source: Source,
    error: Option<String>,
}

async fn run(
    consul: Consul,
    state_dir: PathBuf,
    view_tx: watch::Sender<Arc<PolicyView>>,
    mut needed_rx: watch::Receiver<BTreeSet<ServiceRef>>,
    watch_catalog: bool,
    completeness: Completeness,
    fresh_at: Arc<std::sync::atomic::AtomicU64>,
) {
    let (msg_tx, mut msg_rx) = mpsc::channel(256);
    let mut st = State {
        consul: consul.clone(),
        state_dir,
        version: 0,
        kv: None,
        manifest: None,
        completeness,
        fresh_at,
        kv_index: 0,
        services: BTreeMap::new(),
        details: BTreeMap::new(),
        service_warnings: BTreeMap::new(),
        needed: BTreeSet::new(),
        tasks: HashMap::new(),
        catalog: None,
        source: Source::None,
        error: None,
    };
    let origin = consul.origin();
    match load(&st.state_dir).await {
        Ok(Some(p)) if p.origin != origin => {
            tracing::warn!(
                snapshot = %p.origin,
                current = %origin,
                "ignoring the policy snapshot: it was read from another consul or kv-path"
            );
        }
        Ok(Some(p)) => {
            tracing::info!(
                kv_index = p.kv_index,
                acls = p.values.len(),
                "loaded the last good policy snapshot; it is used until consul answers"
            );
            st.kv = Some(p.values);
            st.manifest = p.manifest;
            st.fresh_at
                .store(p.saved_at_unix, std::sync::atomic::Ordering::Relaxed);
            st.kv_index = p.kv_index;
            for (r, inst) in p.services {
                if let Ok(r) = parse_service_ref(&r) {
                    // The snapshot keeps addresses only; templates see them as passing.
                    let details = inst
                        .iter()
                        .map(|a| egresstrator_template::ServiceInstance {
                            address: a.ip().to_string(),
                            port: a.port(),
                            name: r.service.clone(),
                            status: "passing".into(),
                            ..Default::default()
                        })
                        .collect();
                    st.details.insert(r.clone(), details);
                    st.services.insert(r, inst);
                }
            }
            st.source = Source::Snapshot;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("ignoring the policy snapshot: {e}"),
    }
    publish(&mut st, &view_tx);
    // Templates may list the catalog (`services`); nothing else needs it.
    let catalog_task =
        watch_catalog.then(|| tokio::spawn(catalog_loop(consul.clone(), msg_tx.clone())));
    let kv_task = tokio::spawn(kv_loop(consul, msg_tx.clone()));
    loop {
        tokio::select! {
            msg = msg_rx.recv() => {
                let Some(msg) = msg else { break };
                if handle(&mut st, msg) {
                    publish(&mut st, &view_tx);
                    if st.source == Source::Consul {
                        persist(&st).await;
                    }
                }
            }
            changed = needed_rx.changed() => {
                if changed.is_err() {
                    break; // the agent is gone
                }
                let needed = needed_rx.borrow_and_update().clone();
                if needed != st.needed {
                    update_service_watches(&mut st, needed, &msg_tx);
                    publish(&mut st, &view_tx);
                }
            }
        }
    }
    kv_task.abort();
    if let Some(t) = catalog_task {
        t.abort();
    }
    for (_, t) in st.tasks.drain() {
        t.abort();
    }
}

/// Applies one message; true when the view changed.
fn handle(st: &mut State, msg: Msg) -> bool {
    match msg {
        Msg::Kv(Ok(snap)) => {
            if st.completeness == Completeness::Manifest {
                if let Err(e) = snap.complete() {
                    return incomplete(st, e.to_string());
                }
            }
            let recovered = st.error.take().is_some();
            if recovered {
                tracing::info!("consul answers again");
            }
            let changed = recovered
                || st.source != Source::Consul
                || st.kv.as_ref() != Some(&snap.values)
                || st.manifest != snap.manifest;
            st.kv = Some(snap.values);
            st.manifest = snap.manifest;
            st.kv_index = snap.index;
            st.source = Source::Consul;
            st.fresh_at
                .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
            changed
        }
        Msg::KvUnchanged => {
            if st.source == Source::Consul && st.error.is_none() {
                st.fresh_at
                    .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
            }
            false
        }
        Msg::Kv(Err(e)) => incomplete(st, e.to_string()),
        Msg::Service(r, Ok(s)) => {
            if !st.needed.contains(&r) {
                return false; // a late answer for a watch that was just stopped
            }
            let changed =
                st.services.get(&r) != Some(&s.instances) || st.details.get(&r) != Some(&s.details);
            if s.details.is_empty() {
                tracing::warn!("service {r} has no instances");
            }
            st.services.insert(r.clone(), s.instances);
            st.details.insert(r.clone(), s.details);
            st.service_warnings.insert(r, s.warnings);
            changed
        }
        Msg::Catalog(c) => {
            let changed = st.catalog.as_ref() != Some(&c);
            st.catalog = Some(c);
            changed
        }
        Msg::Service(r, Err(e)) => {
            tracing::warn!("watching service {r}: {e}");
            false
        }
    }
}

/// Consul failed, or answered with less than the whole policy: the last good policy stays
/// in force (and on disk); with none, containers fail closed. True the first time.
fn incomplete(st: &mut State, msg: String) -> bool {
    let first = st.error.as_ref() != Some(&msg);
    if first {
        tracing::warn!("keeping the last good policy ({:?}): {msg}", st.source);
    }
    st.error = Some(msg);
    first
}

fn update_service_watches(
    st: &mut State,
    needed: BTreeSet<ServiceRef>,
    msg_tx: &mpsc::Sender<Msg>,
) {
    st.tasks.retain(|r, t| {
        let keep = needed.contains(r);
        if !keep {
            tracing::debug!("stopping the watch of service {r}: no container needs it");
            t.abort();
        }
        keep
    });
    // Data of services nobody needs is dropped too; it would only go stale.
    let keep_all = st.source != Source::Consul;
    st.services.retain(|r, _| keep_all || needed.contains(r));
    st.details.retain(|r, _| keep_all || needed.contains(r));
    st.service_warnings.retain(|r, _| needed.contains(r));
    for r in &needed {
        if !st.tasks.contains_key(r) {
            tracing::debug!("watching service {r}");
            let task = tokio::spawn(service_loop(st.consul.clone(), r.clone(), msg_tx.clone()));
            st.tasks.insert(r.clone(), task);
        }
    }
    st.needed = needed;
}

fn publish(st: &mut State, tx: &watch::Sender<Arc<PolicyView>>) {
    st.version += 1;
    let snapshot = st.kv.as_ref().map(|kv| {
        let acls = AclTable::parse(kv.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let services: ServiceTable = st.services.clone();
        let warnings = st.service_warnings.values().flatten().cloned().collect();
        Arc::new(PolicySnapshot {
            acls,
            services,
            warnings,
            values: kv.clone(),
            details: st.details.clone(),
            catalog: st.catalog.clone(),
        })
    });
    let view = PolicyView {
        version: st.version,
        snapshot,
        source: st.source,
        kv_index: st.kv_index,
        error: st.error.clone(),
    };
    tx.send_replace(Arc::new(view));
}

/// One blocking-query watch, by Consul's rules: carry the index, send only fresh answers,
/// back off with jitter on errors and start over from index 0 afterwards (Consul may come
/// back restored or rebuilt, with a lower index; asking for the old one would block for a
/// whole wait). `query` runs the request for an index and returns the answer's index with
/// it; `wrap` turns an answer or error into a message (None: nothing to send). Ends when the
/// receiver is gone.
async fn blocking_loop<T, Fut>(
    tx: mpsc::Sender<Msg>,
    min_interval: Duration,
    mut query: impl FnMut(Block) -> Fut,
    wrap: impl Fn(Result<T, ConsulError>) -> Option<Msg>,
    unchanged: impl Fn() -> Option<Msg>,
) where
    Fut: std::future::Future<Output = Result<(u64, T), ConsulError>>,
{
    let mut index = 0u64;
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        if let Some(t) = last_start {
            // Jittered, so that agents woken by the same change do not come back in step.
            let gap = crate::backoff::jitter(min_interval);
            tokio::time::sleep_until(t + gap).await;
        }
        last_start = Some(tokio::time::Instant::now());
        match query(Block { index, wait: WAIT }).await {
            Ok((new, answer)) => {
                backoff.reset();
                let fresh = index == 0 || new != index;
                index = next_index(index, new);
                let msg = if fresh { wrap(Ok(answer)) } else { unchanged() };
                if let Some(msg) = msg {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                if let Some(msg) = wrap(Err(e)) {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                index = 0;
                tokio::time::sleep(backoff.next_jittered()).await;
            }
        }
    }
}

async fn kv_loop(consul: Consul, tx: mpsc::Sender<Msg>) {
    let query = |b| {
        let consul = consul.clone();
        async move {
            let snap = consul.kv_snapshot_blocking(Some(b)).await?;
            Ok((snap.index, snap))
        }
    };
    blocking_loop(
        tx,
        KV_MIN_QUERY_INTERVAL,
        query,
        |r| Some(Msg::Kv(r)),
        || Some(Msg::KvUnchanged),
    )
    .await;
}

async fn catalog_loop(consul: Consul, tx: mpsc::Sender<Msg>) {
    let query = |b| {
        let consul = consul.clone();
        async move { consul.catalog_services_blocking(Some(b)).await }
    };
    blocking_loop(
        tx,
        MIN_QUERY_INTERVAL,
        query,
        |r| match r {
            Ok(list) => Some(Msg::Catalog(list)),
            Err(e) => {
                tracing::warn!("watching the service catalog: {e}");
                None
            }
        },
        || None,
    )
    .await;
}

async fn service_loop(consul: Consul, r: ServiceRef, tx: mpsc::Sender<Msg>) {
    let query = |b| {
        let (consul, r) = (consul.clone(), r.clone());
        async move {
            let snap = consul.service_instances_blocking(&r, Some(b)).await?;
            Ok((snap.index, snap))
        }
    };
    blocking_loop(
        tx,
        MIN_QUERY_INTERVAL,
        query,
        |res| Some(Msg::Service(r.clone(), res)),
        || None,
    )
    .await;
}

/// The index for the next blocking query, by Consul's rules: reset to 0 when it went
/// backwards (the next query then returns at once), and never below 1 otherwise (0 would not
/// block and would spin).
pub fn next_index(old: u64, new: u64) -> u64 {
    if new < old {
        0
    } else {
        new.max(1)
    }
}

async fn load(dir: &Path) -> Result<Option<Persisted>, StateDirError> {
    let path = dir.join(SNAPSHOT_FILE);
    let dir = dir.to_owned();
    match tokio::task::spawn_blocking(move || state_dir::read_json(&dir, SNAPSHOT_FILE)).await {
        Ok(r) => r,
        Err(e) => Err(StateDirError::Io {
            path,
            source: std::io::Error::other(e),
        }),
    }
}

/// Writes the snapshot atomically: a temporary file, fsync, then rename over the old one.
async fn persist(st: &State) {
    let Some(values) = st.kv.clone() else { return };
    let p = Persisted {
        origin: st.consul.origin(),
        kv_index: st.kv_index,
        values,
        services: st
            .services
            .iter()
            .map(|(r, i)| (r.to_string(), i.clone()))
            .collect(),
        saved_at_unix: unix_now(),
        manifest: st.manifest.clone(),
    };
    let dir = st.state_dir.clone();
    let res =
        tokio::task::spawn_blocking(move || state_dir::write_atomic(&dir, SNAPSHOT_FILE, &p)).await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot save the policy snapshot: {e}"),
        Err(e) => tracing::warn!("cannot save the policy snapshot: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19 (fleet scale): a service flapping 10 times a second made every agent query
    /// Consul 10 times a second. A watch now starts at most one query per
    /// `MIN_QUERY_INTERVAL` (jittered), and never delays the first change after a quiet
    /// spell.
    #[tokio::test(start_paused = true)]
    async fn a_flapping_source_is_queried_at_a_bounded_rate() {
        use std::sync::Mutex;
        let starts: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
        let t0 = tokio::time::Instant::now();
        let (tx, mut rx) = mpsc::channel(1024);
        let seen = starts.clone();
        let task = tokio::spawn(blocking_loop(
            tx,
            MIN_QUERY_INTERVAL,
            move |b: Block| {
                let seen = seen.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().map_err(|_| ConsulError::Decode {
                            what: "test".into(),
                            reason: "poisoned".into(),
                        })?;
                        s.push(tokio::time::Instant::now());
                        s.len() as u64
                    };
                    if n == 3 {
                        // A quiet spell: the query blocks until the next change.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    // Otherwise the data changed already: Consul answers at once.
                    Ok((b.index + 1, ()))
                }
            },
            |_r: Result<(), ConsulError>| Some(Msg::KvUnchanged),
            || None,
        ));
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        tokio::time::sleep(Duration::from_secs(60)).await;
        task.abort();
        let starts = starts.lock().map(|s| s.clone()).unwrap_or_default();
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            starts.first().copied(),
            Some(t0),
            "the first query starts at once"
        );
        assert!(
            gaps.iter().all(|g| *g >= MIN_QUERY_INTERVAL / 2),
            "queries closer than the limit: {gaps:?}"
        );
        // Query 3 blocked 30 s: query 4 (the change after the quiet spell) starts at once.
        assert_eq!(
            gaps.get(2).copied(),
            Some(Duration::from_secs(30)),
            "{gaps:?}"
        );
        // 30 s of answers-at-once at most one per 0.25 s, not thousands.
        assert!(starts.len() <= 3 + 30 * 4 + 1, "{} queries", starts.len());
        assert!(starts.len() >= 3 + 30 / 2, "{} queries", starts.len());
    }

    #[test]
    fn blocking_index_rules() {
        assert_eq!(next_index(0, 0), 1, "never below 1");
        assert_eq!(next_index(5, 9), 9);
        assert_eq!(next_index(9, 9), 9);
        assert_eq!(next_index(9, 3), 0, "went backwards: reset");
    }
}
