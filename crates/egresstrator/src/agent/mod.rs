//! The agent: a reconciler that keeps every running enabled container enforced.
//!
//! Desired state is every running enabled container × current policy. Inputs are Docker's
//! container events, the policy watcher (Consul KV and services, or the snapshot on disk) and
//! the overrides file of `set`/`clear`. Any change re-plans the affected namespaces; a
//! ruleset is applied only when its rendered hash differs from what is in force.
//!
//! The unit of enforcement is the network namespace, not the container: containers joined
//! with `--network container:X` share one namespace and get one ruleset, built from the
//! union of the ACLs of the enabled containers in it (fail closed if any of them cannot be
//! built). A container in the host's namespace is refused and the host is never touched.
//!
//! Files: this one holds the loop and its inputs (events, hooks, policy, ticks);
//! `members.rs` maps containers to namespaces; `plan.rs` decides what a namespace gets
//! (pure); `load.rs` plans, loads and reports; `drift.rs` checks that what was loaded is
//! still there; `deny_log.rs` reads and attributes what the rulesets refuse.
//!
//! One container's failure is logged and retried with backoff; it never stops the loop.
//! When Docker's event stream breaks, the agent reconnects with backoff and reconciles from a
//! full list, so events missed meanwhile are recovered.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresstrator_core::acl::{AclName, ServiceRef};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::backend;
use crate::backend::Applier;
use crate::backoff::Backoff;
use crate::docker::{ContainerEvent, ContainerInfo, DockerClient, DockerError, EventScope};
use crate::enforce::{self, PolicySettings};
use crate::hook::{self, HookReply};
use crate::netns::NetnsError;
use crate::overrides::{self, OverridesCache};
use crate::policy_watch::{self, PolicyView};
use crate::status::{HookOutcome, PolicyStatus, StatusBoard};

mod deny_log;
mod dns_filter;
mod drift;
mod fqdn;
mod kept;
mod load;
mod members;
mod plan;
mod systemd;

pub use fqdn::FqdnSettings;
use members::found;
use plan::SERVICE_WAIT;
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(250);
/// The longest wait between tries to reach dockerd again (before jitter): the soak's dockerd
/// restart (RELIABILITY.md) found the 10 s of before left containers started right after
/// dockerd came back unenforced for up to 11.9 s.
const DOCKER_RETRY_MAX: Duration = Duration::from_millis(500);

/// Settings of a running agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub settings: PolicySettings,
    pub state_dir: PathBuf,
    /// How often every enforced namespace is checked for drift (its rules changed or gone).
    pub verify_interval: Duration,
    /// `--max-policy-age`: once the last good policy is older than this, every container
    /// fails closed until a fresh one arrives.
    pub max_policy_age: Option<Duration>,
    /// `--fqdn-min-ttl` and `--fqdn-max-ttl`.
    pub fqdn: fqdn::FqdnSettings,
}

/// What identifies a network namespace: its cookie (`SO_NETNS_COOKIE`, never reused, unlike
/// the inode numbers of namespace files) when the agent enters namespaces itself, or the id
/// of the container that owns it in helper-image mode (the daemon may be remote, so its
/// namespaces cannot be looked at).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum NsKey {
    Netns(u64),
    Owner(String),
}

/// A container found running (or being created, for a runtime hook), with what the agent
/// learned about it off the reconciler's loop.
#[derive(Debug)]
struct Found {
    info: ContainerInfo,
    /// Its namespace, for local applies: the file to enter and the namespace's cookie.
    netns: Option<Result<(PathBuf, u64), NetnsError>>,
    /// The resolvers its creator or the daemon chose ([`crate::resolvers`]).
    resolvers: Vec<IpAddr>,
    /// Helper-image mode: its network mode puts it in the host's namespace
    /// ([`enforce::host_network`]).
    joins_host: bool,
}

/// An enabled container, as the agent tracks it.
#[derive(Clone, Debug)]
struct Member {
    info: ContainerInfo,
    ns: NsKey,
    path: Option<PathBuf>,
    /// The container whose namespace this is (itself, or X for `--network container:X`).
    owner: String,
    acls: Result<Vec<AclName>, String>,
    resolvers: Vec<IpAddr>,
    /// Why the workload can change its own firewall (`NET_ADMIN`, `SYS_ADMIN`, privileged).
    bypass: Option<String>,
    start_event: Option<i64>,
    /// It asks for audit mode ([`enforce::audit_requested`]).
    audit: bool,
    /// Its run was tracked from Docker's record, ahead of its start event.
    from_record: bool,
}

impl Member {
    /// Its ACL names as text (none when its list could not be read).
    fn acl_names(&self) -> Vec<String> {
        self.acls
            .as_ref()
            .map(|a| a.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }
}

/// Enforcement state of one namespace.
#[derive(Debug, Default)]
struct NsState {
    applied_hash: Option<String>,
    in_flight: bool,
    dirty: bool,
    retry_at: Option<Instant>,
    /// While loads keep failing (or failing closed): when to try again.
    backoff: Option<Backoff>,
    waiting_since: Option<Instant>,
    /// Services the template read for this namespace (template mode only).
    template_refs: BTreeSet<ServiceRef>,
    /// Runtime hooks waiting for this namespace's ruleset to be committed.
    waiters: Vec<tokio::sync::oneshot::Sender<HookReply>>,
    /// A runtime hook said runc created this namespace for a container that has not run
    /// yet: its first load has little to tidy ([`enforce::Tidy::Fresh`]).
    fresh: bool,
    /// A runtime hook that gave up waiting loaded its own deny-all here: whatever was
    /// committed may be gone, so the next plan loads again as if for the first time.
    overwritten: bool,
    /// The namespace's fingerprint right after the last load: a drift check that finds
    /// another one loads again.
    fingerprint: Option<String>,
    /// Which load (see `Reconciler::loads`) the rules in force came from: only its own
    /// fingerprint may become the baseline (an earlier load's, arriving late, would see the
    /// later load's commit as someone else's).
    applied_load: u64,
    /// A drift check is running.
    verifying: bool,
    /// Interfaces the raw-socket guard could not take at the last load.
    unguarded: Vec<String>,
    /// The backend of what is loaded (a template's format decides its own).
    loaded_backend: Option<backend::Backend>,
    /// A runtime hook waits for this namespace: its next load skips the queue.
    priority: bool,
    /// When the load in flight started.
    in_flight_since: Option<Instant>,
    /// The ruleset in force (None for a template's output): what flows are explained by.
    in_force: Option<Arc<egresstrator_core::Ruleset>>,
    /// The task reading this namespace's deny log; dropped with the state.
    log: Option<deny_log::LogTask>,
    /// The thread learning name destinations' addresses from its DNS answers (only while
    /// its ruleset has name lines); stopped when dropped with the state.
    learner: Option<fqdn::Learner>,
    /// What a previous agent's learner held here (state dir), for this agent's learner.
    seed: Vec<crate::status::LearnedAddress>,
    /// The learner's version last recorded in the state dir.
    learned_recorded: u64,
}

/// A container to inspect again.
#[derive(Debug)]
struct PendingRetry {
    start_event: Option<i64>,
    backoff: Backoff,
    retry_at: Instant,
}

impl NsState {
    /// A load finished. Something committed (the ruleset, or deny-all in its place): the
    /// waiting containers are protected and may start. Nothing committed: each hook fails
    /// its container closed itself.
    /// Tells the board how the answers went.
    fn answer_waiters(&mut self, committed: bool, board: &StatusBoard) {
        let applied = self.applied_hash.clone();
        for w in self.waiters.drain(..) {
            let sent = w.send(HookReply {
                ok: committed,
                hash: applied.clone(),
                error: (!committed).then(|| "the ruleset could not be applied".to_owned()),
                ..Default::default()
            });
            board.hook(match (sent.is_ok(), committed) {
                (true, true) => HookOutcome::Answered,
                _ => HookOutcome::TimedOut,
            });
        }
    }

    /// A load failed, or loaded deny-all in place of the real ruleset: plan again after the
    /// next backoff step.
    fn retry_later(&mut self) {
        let b = self
            .backoff
            .get_or_insert_with(|| Backoff::new(RETRY_MIN, RETRY_MAX));
        self.retry_at = Some(Instant::now() + b.next_jittered());
    }

    /// The plan is what is in force already: the wait (if any) is over, and a runtime hook
    /// that waited for Consul or a service is answered now, not left to time out and load
    /// deny-all over a good ruleset.
    fn up_to_date(&mut self, hash: &str, board: &StatusBoard) {
        self.waiting_since = None;
        for w in self.waiters.drain(..) {
            let sent = w.send(HookReply {
                ok: true,
                hash: Some(hash.to_owned()),
                ..Default::default()
            });
            board.hook(match sent {
                Ok(()) => HookOutcome::Answered,
                Err(_) => HookOutcome::TimedOut,
            });
        }
    }
}

/// How a container came to be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Docker's event or the agent's own reconcile.
    Event,
    /// Docker's record of a start, ahead of its event (`crate::docker::watch`).
    Record,
    /// A runtime hook, while runc holds the container before its first instruction. `fresh`:
    /// runc created its namespace (see [`NsState::fresh`]).
    Hook { fresh: bool },
}

/// Loads that run at once, beyond which loads queue (a KV change touching every namespace
/// would otherwise start one thread per namespace). Loads a runtime hook waits for skip the
/// queue.
const APPLY_SLOTS: usize = 8;
/// A load running longer than this is shown in `/status` and makes `/healthz` unhealthy.
const APPLY_STUCK: Duration = Duration::from_secs(30);

enum Input {
    Inspected {
        id: String,
        start_event: Option<i64>,
        via: Via,
        result: Box<Result<Option<Found>, DockerError>>,
    },
    /// What a runtime hook's container turned out to be.
    Hooked {
        pending: hook::Pending,
        found: Box<Result<Found, String>>,
    },
    Applied(Box<Applied>),
    /// The fingerprint a load left, taken after its commit was reported.
    Fingerprinted {
        ns: NsKey,
        load: u64,
        hash: String,
        fingerprint: String,
    },
    /// A drift check's result.
    Verified {
        ns: NsKey,
        result: Result<String, NetnsError>,
    },
}

struct Applied {
    ns: NsKey,
    /// Which load this was (see `Reconciler::loads`).
    load: u64,
    /// Hash of the planned ruleset (what the namespace should have).
    hash: String,
    result: Result<enforce::Loaded, backend::ApplyError>,
    members: Vec<Member>,
    plan_error: Option<String>,
    warnings: Vec<String>,
}

pub struct Agent {
    docker: DockerClient,
    consul: crate::consul::Consul,
    config: AgentConfig,
    board: Arc<StatusBoard>,
    hooks: Option<mpsc::UnboundedReceiver<hook::Pending>>,
}

impl Agent {
    pub fn new(
        docker: DockerClient,
        consul: crate::consul::Consul,
        config: AgentConfig,
        board: Arc<StatusBoard>,
    ) -> Self {
        Agent {
            docker,
            consul,
            config,
            board,
            hooks: None,
        }
    }

    /// Serves runtime hooks (`egresstrator-runc`) from this receiver.
    pub fn with_hooks(mut self, hooks: mpsc::UnboundedReceiver<hook::Pending>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Runs until `shutdown` completes. Rules stay in force in every namespace afterwards.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let watch = policy_watch::spawn(
            self.consul.clone(),
            self.config.state_dir.clone(),
            self.config.settings.template.is_some(),
            if self.config.settings.require_manifest {
                policy_watch::Completeness::Manifest
            } else {
                policy_watch::Completeness::Trusted
            },
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let (flows_tx, flows_rx) = mpsc::channel(deny_log::FLOW_QUEUE);
        let mut r = Reconciler {
            docker: self.docker,
            settings: self.config.settings,
            board: self.board,
            overrides: OverridesCache::new(self.config.state_dir.clone()),
            kept: kept::KeptLoads::read(self.config.state_dir.clone()),
            state_dir: self.config.state_dir,
            policy: watch.view.clone(),
            needed: watch.needed.clone(),
            tx,
            members: HashMap::new(),
            namespaces: HashMap::new(),
            pending: HashMap::new(),
            docker_root: None,
            guard_missing: None,
            verify_interval: self.config.verify_interval,
            apply_slots: Arc::new(tokio::sync::Semaphore::new(APPLY_SLOTS)),
            tidy_slots: Arc::new(tokio::sync::Semaphore::new(APPLY_SLOTS)),
            loads: 0,
            fresh_at: watch.fresh_at.clone(),
            max_policy_age: self.config.max_policy_age,
            fqdn: self.config.fqdn,
            stale: None,
            trimmer: crate::trim::Trimmer::spawn(crate::trim::QUIET),
            flows_tx,
            flow_lines: deny_log::LineLimiter::default(),
            seen_flows: deny_log::SeenFlows::default(),
            inspecting: Default::default(),
            notifier: systemd::Notifier::new(),
        };
        let hooks = self.hooks.unwrap_or_else(|| mpsc::unbounded_channel().1);
        r.run(rx, hooks, flows_rx, shutdown).await;
        drop(watch);
    }
}

struct Reconciler {
    docker: DockerClient,
    settings: PolicySettings,
    board: Arc<StatusBoard>,
    overrides: OverridesCache,
    /// What the loads left in each namespace, for an agent started again.
    kept: kept::KeptLoads,
    state_dir: PathBuf,
    policy: tokio::sync::watch::Receiver<Arc<PolicyView>>,
    needed: tokio::sync::watch::Sender<BTreeSet<ServiceRef>>,
    tx: mpsc::UnboundedSender<Input>,
    members: HashMap<String, Member>,
    namespaces: HashMap<NsKey, NsState>,
    /// Containers to look at again, after a transient failure.
    pending: HashMap<String, PendingRetry>,
    /// Docker's root directory, where the runtime hook's containers are looked up.
    docker_root: Option<PathBuf>,
    /// Why the raw-socket guard cannot hold on this kernel (every container is then
    /// bypassable); None when its self-test passed, or in helper-image mode.
    guard_missing: Option<String>,
    verify_interval: Duration,
    /// Bounds the loads that run at once ([`APPLY_SLOTS`]).
    apply_slots: Arc<tokio::sync::Semaphore>,
    /// The same for what follows a commit (fingerprint, conntrack sweep).
    tidy_slots: Arc<tokio::sync::Semaphore>,
    /// Loads spawned so far: each load's number.
    loads: u64,
    /// When the policy in force was last known current (see `PolicyWatch::fresh_at`).
    fresh_at: Arc<std::sync::atomic::AtomicU64>,
    max_policy_age: Option<Duration>,
    fqdn: fqdn::FqdnSettings,
    /// Why the policy is too old to use (`--max-policy-age`), while it is.
    stale: Option<String>,
    /// Returns the heap a burst of applies freed once they are over.
    trimmer: crate::trim::Trimmer,
    /// Where the namespaces' deny-log readers send their records ([`deny_log`]).
    flows_tx: mpsc::Sender<deny_log::Flows>,
    /// Bounds the flow lines in the agent's log.
    flow_lines: deny_log::LineLimiter,
    /// Flows reported lately (one record per flow).
    seen_flows: deny_log::SeenFlows,
    /// Inspects started and not yet answered (readiness waits for them).
    inspecting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// systemd readiness and watchdog.
    notifier: systemd::Notifier,
}

impl Reconciler {
    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Input>,
        mut hooks: mpsc::UnboundedReceiver<hook::Pending>,
        mut flows: mpsc::Receiver<deny_log::Flows>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        if let Applier::Local(_) = self.settings.applier {
            self.check_guard().await;
            crate::keeper::hold_in_background();
        }
        // What the watcher knows already (a snapshot from disk): shown at once.
        self.on_policy_change();
        self.prune_overrides().await;
        // dockerd is local and cheap to ask, and containers with a restart policy start the
        // moment it is back: retrying it slowly would leave them unenforced meanwhile.
        let mut backoff = Backoff::new(Duration::from_millis(100), DOCKER_RETRY_MAX);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut verify = tokio::time::interval(self.verify_interval);
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        // Docker's records, watched once the agent knows where they are.
        let mut records: Option<mpsc::Receiver<String>> = None;
        let mut watch_tried = false;
        'connect: loop {
            // Subscribe first, then list: a container starting in between is seen at least
            // once, and applying twice is harmless.
            let mut events = self.docker.events(None);
            match self.docker.root_dir().await {
                Ok(root) => self.docker_root = Some(root),
                Err(e) => tracing::debug!("{e}"),
            }
            if !watch_tried && self.docker_root.is_some() {
                watch_tried = true;
                records = self.watch_records();
            }
            match self.reconcile_running().await {
                Ok(()) => {
                    backoff.reset();
                    if !first {
                        self.board.docker_reconnect();
                    }
                    first = false;
                    self.board.docker_connected(true);
                    self.notifier.reconciled();
                }
                Err(e) => {
                    let wait = backoff.next_jittered();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot reach docker");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut shutdown => break 'connect,
                    }
                    continue;
                }
            }
            loop {
                tokio::select! {
                    _ = &mut shutdown => break 'connect,
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => self.on_event(ev),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "docker event stream failed; reconnecting");
                            self.board.docker_connected(false);
                            break;
                        }
                        None => {
                            tracing::warn!("docker event stream ended; reconnecting");
                            self.board.docker_connected(false);
                            break;
                        }
                    },
                    record = next_record(&mut records) => match record {
                        Some(id) => self.on_record(id),
                        None => records = None,
                    },
                    Some(input) = rx.recv() => self.on_input(input),
                    Some(p) = hooks.recv() => self.on_hook(p),
                    Some(f) = flows.recv() => self.on_flows(f),
                    changed = self.policy.changed() => {
                        if changed.is_ok() {
                            self.on_policy_change();
                        }
                    }
                    _ = tick.tick() => self.on_tick(),
                    _ = verify.tick() => self.verify_all(),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_jittered()) => {}
                _ = &mut shutdown => break 'connect,
            }
        }
        tracing::info!("shutting down; rules stay in force in every namespace");
    }

    /// Lists the running containers: forgets members that no longer run, and looks at every
    /// running one (events missed while Docker was away are recovered this way).
    async fn reconcile_running(&mut self) -> Result<(), DockerError> {
        let ids = self.docker.list_running().await?;
        tracing::info!(running = ids.len(), "reconciling running containers");
        let running: BTreeSet<&String> = ids.iter().collect();
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|id| !running.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        for id in ids {
            self.inspect(id, None);
        }
        Ok(())
    }

    /// Runs the raw-socket guard's self-test once, and says loudly when it fails: every
    /// container is then bypassable through raw sockets, and shown as such.
    async fn check_guard(&mut self) {
        let support = tokio::task::spawn_blocking(crate::guard::support)
            .await
            .cloned()
            .unwrap_or_else(|_| crate::guard::Support::Missing("the self-test panicked".into()));
        match support.missing() {
            None => tracing::info!(
                "raw-socket guard verified on this kernel: frames from AF_PACKET sockets cannot leave an enforced namespace"
            ),
            Some(why) => {
                tracing::error!(
                    "raw-socket guard unavailable: {why}. Every enforced container can send raw frames past its rules (AF_PACKET with CAP_NET_RAW) and is shown as bypassable; run on a kernel with the nftables netdev egress hook (CONFIG_NETFILTER_EGRESS) and CONFIG_IP_ROUTE_CLASSID, or drop CAP_NET_RAW from enabled containers"
                );
                self.guard_missing = Some(format!("raw-socket guard unavailable: {why}"));
            }
        }
        self.board.guard(self.guard_missing.clone());
    }

    fn on_event(&mut self, ev: ContainerEvent) {
        self.board.docker_event();
        match (ev.scope, ev.action.as_str()) {
            (EventScope::Container, "start" | "restart") => {
                if let Some(delay) = since_unix_nano(ev.time_nano) {
                    self.board.docker_start_event(delay);
                }
                // The run Docker's record showed already (a new run comes after a `die`,
                // which forgets the member): the event adds only its time.
                if let Some(m) = self
                    .members
                    .get_mut(&ev.id)
                    .filter(|m| m.from_record && m.start_event.is_none())
                {
                    m.start_event = Some(ev.time_nano);
                    self.board.start_event(&ev.id, ev.time_nano);
                    return;
                }
                self.inspect(ev.id, Some(ev.time_nano))
            }
            (EventScope::Container, "die") => {
                self.drop_pending(&ev.id);
                self.remove_member(&ev.id);
            }
            (EventScope::Container, "destroy") => {
                self.drop_pending(&ev.id);
                self.remove_member(&ev.id);
                let id = ev.id.clone();
                let dir = self.state_dir.clone();
                if self.overrides.get().contains_key(&id) {
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = overrides::update(&dir, |o| {
                            o.remove(&id);
                        }) {
                            tracing::warn!("cannot drop the override of a removed container: {e}");
                        }
                    });
                }
            }
            // Its interfaces changed: the guard must cover the new set.
            (EventScope::Network, _) => {
                if let Some(ns) = self.members.get(&ev.id).map(|m| m.ns.clone()) {
                    if let Some(state) = self.namespaces.get_mut(&ns) {
                        state.applied_hash = None;
                    }
                    self.schedule(ns);
                }
            }
            // Anything else a tracked container does (exec, pause, …): look at its rules.
            (EventScope::Container, _) => {
                if let Some(ns) = self.members.get(&ev.id).map(|m| m.ns.clone()) {
                    self.verify(ns);
                }
            }
        }
    }

    /// Watches Docker's records for starts (`crate::docker::watch`), with local applies only:
    /// the records are on this host, and the record of a start is what a local apply reads.
    fn watch_records(&self) -> Option<mpsc::Receiver<String>> {
        if !matches!(self.settings.applier, Applier::Local(_)) {
            return None;
        }
        let root = self.docker_root.as_ref()?;
        match crate::docker::watch::spawn(root) {
            Ok(records) => Some(records),
            // No Docker records there (Podman keeps none): the events are the only source,
            // as the record reads at a start event find nothing either.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!("no Docker records in {}: {e}", root.display());
                None
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch Docker's records in {}: {e}; starts are seen from Docker's events only",
                    root.display()
                );
                None
            }
        }
    }

    /// Docker rewrote a container's record. When it shows a run the agent does not track
    /// yet, the container is looked at from it now, ahead of its start event; the event
    /// still comes, and finds the container tracked.
    fn on_record(&mut self, id: String) {
        let Some(root) = self.docker_root.clone() else {
            return;
        };
        let tracked_run = self
            .members
            .get(&id)
            .and_then(|m| m.info.started_at.clone());
        let docker = self.docker.clone();
        let tx = self.tx.clone();
        let inspecting = self.inspecting.clone();
        inspecting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let new_run = crate::docker::read_started_record(&root, &id)
                .ok()
                .flatten()
                .filter(|info| info.started_at != tracked_run);
            let Some(info) = new_run else {
                inspecting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                return;
            };
            tracing::debug!(
                container = enforce::short_id(&id),
                "started: seen in docker's record"
            );
            let result = Ok(Some(found(&docker, info, true).await));
            let _ = tx.send(Input::Inspected {
                id,
                start_event: None,
                via: Via::Record,
                result: Box::new(result),
            });
        });
    }

    /// Inspects a container in the background; the answer comes back as an input.
    ///
    /// At a start event, with local applies, Docker's record on disk is read first: dockerd
    /// wrote it, state included, before it sent the event, and reading it does not wait for
    /// the daemon, which answers an inspect late while it starts other containers (see
    /// `crate::docker::read_started_record`). The API is asked when the record cannot be read
    /// or shows no running process.
    fn inspect(&self, id: String, start_event: Option<i64>) {
        let docker = self.docker.clone();
        let tx = self.tx.clone();
        let local = matches!(self.settings.applier, Applier::Local(_));
        let root = self
            .docker_root
            .clone()
            .filter(|_| local && start_event.is_some());
        // Counted down when the loop takes the answer (`on_input`), so readiness never sees
        // an answer that is on its way but not tracked yet.
        self.inspecting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let recorded = root.and_then(|root| {
                crate::docker::read_started_record(&root, &id)
                    .inspect_err(|e| tracing::debug!("{e}; asking dockerd instead"))
                    .ok()
                    .flatten()
            });
            let inspected = match recorded {
                Some(info) => {
                    tracing::debug!(
                        container = enforce::short_id(&id),
                        "started: read from docker's record"
                    );
                    Ok(Some(info))
                }
                None => enforce::inspect_running(&docker, &id).await,
            };
            let result = match inspected {
                Ok(Some(info)) => Ok(Some(found(&docker, info, local).await)),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let _ = tx.send(Input::Inspected {
                id,
                start_event,
                via: Via::Event,
                result: Box::new(result),
            });
        });
    }

    fn on_input(&mut self, input: Input) {
        if let Input::Inspected { .. } = input {
            self.inspecting
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        match input {
            Input::Inspected {
                id,
                start_event,
                via,
                result,
            } => match *result {
                Ok(Some(found)) => self.track(found, start_event, via),
                Ok(None) | Err(DockerError::NotFound { .. }) => {
                    tracing::debug!(
                        container = enforce::short_id(&id),
                        "gone before it could be enforced"
                    );
                    self.drop_pending(&id);
                    self.remove_member(&id);
                }
                Err(e) => self.retry_later(id, start_event, e.to_string()),
            },
            Input::Hooked { pending, found } => self.on_hooked(pending, *found),
            Input::Applied(a) => self.on_applied(*a),
            Input::Fingerprinted {
                ns,
                load,
                hash,
                fingerprint,
            } => self.on_fingerprinted(ns, load, hash, fingerprint),
            Input::Verified { ns, result } => self.on_verified(ns, result),
        }
    }

    fn on_policy_change(&mut self) {
        let view = self.policy.borrow_and_update().clone();
        self.board.policy(PolicyStatus {
            source: view.source,
            kv_index: view.kv_index,
            error: view.error.clone(),
            fresh_at_unix: self.fresh_at.load(std::sync::atomic::Ordering::Relaxed),
        });
        self.update_needed_services();
        let all: Vec<NsKey> = self.namespaces.keys().cloned().collect();
        for ns in all {
            self.schedule(ns);
        }
    }

    /// `--max-policy-age`: whether the policy in force is too old, and re-planning everything
    /// when that changes.
    fn check_policy_age(&mut self) {
        let fresh_at = self.fresh_at.load(std::sync::atomic::Ordering::Relaxed);
        self.board.policy_fresh_at(fresh_at);
        let Some(max) = self.max_policy_age else {
            return;
        };
        let now = crate::policy_watch::unix_now();
        let stale = (fresh_at > 0 && now.saturating_sub(fresh_at) > max.as_secs()).then(|| {
            format!(
                "the last good policy is {}s old, older than --max-policy-age {}s",
                now.saturating_sub(fresh_at),
                max.as_secs()
            )
        });
        if stale.is_some() != self.stale.is_some() {
            match &stale {
                Some(why) => {
                    tracing::error!("{why}: every container fails closed until consul answers")
                }
                None => tracing::info!("the policy is fresh again"),
            }
            self.board.policy_stale(stale.clone());
            self.stale = stale;
            let all: Vec<NsKey> = self.namespaces.keys().cloned().collect();
            for ns in all {
                self.schedule(ns);
            }
        }
    }

    /// Loads that have run past [`APPLY_STUCK`]: shown in `/status`, and `/healthz` says so.
    fn check_stuck(&mut self) {
        let now = Instant::now();
        let stuck: Vec<String> = self
            .namespaces
            .iter()
            .filter_map(|(ns, s)| {
                let since = s.in_flight_since?;
                let took = now.duration_since(since);
                (took > APPLY_STUCK).then(|| {
                    let names: Vec<&str> = self
                        .members
                        .values()
                        .filter(|m| &m.ns == ns)
                        .map(|m| m.info.name.as_str())
                        .collect();
                    format!(
                        "a load into the namespace of {} has run for {} s",
                        names.join(", "),
                        took.as_secs()
                    )
                })
            })
            .collect();
        self.board.stuck(stuck);
    }

    fn on_tick(&mut self) {
        self.check_policy_age();
        self.flush_kept();
        self.show_learners();
        self.check_stuck();
        let settled = self.inspecting.load(std::sync::atomic::Ordering::Relaxed) == 0
            && self.namespaces.values().all(|s| !s.in_flight);
        let healthy = self.board.unhealthy().is_empty();
        self.notifier.tick(settled, healthy, Instant::now());
        let now = Instant::now();
        let due: Vec<(String, Option<i64>)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at <= now)
            .map(|(id, p)| (id.clone(), p.start_event))
            .collect();
        for (id, start_event) in due {
            if let Some(p) = self.pending.get_mut(&id) {
                // Not again until this inspect answers (it re-arms the retry if it fails).
                p.retry_at = now + RETRY_MAX;
            }
            self.inspect(id, start_event);
        }
        self.refresh_overrides();
        let now = Instant::now();
        let due: Vec<NsKey> = self
            .namespaces
            .iter()
            .filter(|(_, s)| {
                s.retry_at.is_some_and(|t| t <= now)
                    || s.waiting_since.is_some_and(|t| now - t >= SERVICE_WAIT)
            })
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in due {
            if let Some(s) = self.namespaces.get_mut(&ns) {
                s.retry_at = None;
            }
            self.schedule(ns);
        }
    }

    /// Shows what each namespace's fqdn learner knows on its members' `/status` entries, and
    /// marks the state dir's record out of date when it changed.
    fn show_learners(&mut self) {
        for m in self.members.values() {
            if let Some(learner) = self.namespaces.get(&m.ns).and_then(|s| s.learner.as_ref()) {
                self.board.fqdn(&m.info.id, Some(learner.status()));
            }
        }
        let mut changed = false;
        for state in self.namespaces.values_mut() {
            if let Some(learner) = &state.learner {
                let v = learner.version();
                if v != state.learned_recorded {
                    state.learned_recorded = v;
                    changed = true;
                }
            }
        }
        if changed {
            self.kept.changed();
        }
    }

    /// Records what each namespace holds after its load, for an agent started again (see
    /// `kept.rs`).
    fn flush_kept(&mut self) {
        if !self.kept.due() {
            return;
        }
        let mut current = std::collections::BTreeMap::new();
        let mut learned = std::collections::BTreeMap::new();
        let mut known = Vec::new();
        for (ns, state) in &self.namespaces {
            let NsKey::Netns(cookie) = ns else { continue };
            known.push(*cookie);
            if let Some(learner) = &state.learner {
                learned.insert(*cookie, learner.status().learned);
            }
            if let (Some(hash), Some(fingerprint)) = (&state.applied_hash, &state.fingerprint) {
                current.insert(
                    *cookie,
                    backend::Kept {
                        hash: hash.clone(),
                        fingerprint: fingerprint.clone(),
                        unguarded: state.unguarded.clone(),
                    },
                );
            }
        }
        self.kept.flush(current, learned, &known);
    }

    /// Reads the overrides file of `set`/`clear` again; when it changed, re-reads what every
    /// known container asks for. Returns whether it changed.
    ///
    /// Called on every tick and before every plan: `set` records its override and then loads
    /// the namespace itself, so a plan (a drift repair seeing that load, say) made from the
    /// previous overrides would undo it.
    pub(super) fn refresh_overrides(&mut self) -> bool {
        let before = self.overrides.get().clone();
        if !self.overrides.refresh() {
            return false;
        }
        self.reread_overrides(&before);
        true
    }

    /// Overrides changed: re-read what every known container asks for, and look at
    /// containers that an override names but the agent does not track yet.
    fn reread_overrides(&mut self, before: &overrides::Overrides) {
        let current = self.overrides.get().clone();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let Some(m) = self.members.get(&id).cloned() else {
                continue;
            };
            match self.requested(&m.info) {
                None => {
                    let ns = m.ns.clone();
                    let path = m.path.clone();
                    self.remove_member(&id);
                    // `clear` removed the rules; make sure an apply of ours that raced with
                    // it did not put them back.
                    if !self.members.values().any(|o| o.ns == ns) {
                        let applier = self.settings.applier.clone();
                        let target = backend::Target {
                            container: m.owner.clone(),
                            path,
                            expect: match &ns {
                                NsKey::Netns(cookie) => Some(*cookie),
                                NsKey::Owner(_) => None,
                            },
                            kept: None,
                        };
                        tokio::spawn(async move {
                            let _ = backend::clear_with(&applier, &target).await;
                        });
                    }
                }
                Some(acls) if acls != m.acls || self.audit_of(&m.info) != m.audit => {
                    let audit = self.audit_of(&m.info);
                    if let Some(mm) = self.members.get_mut(&id) {
                        mm.acls = acls;
                        mm.audit = audit;
                    }
                    self.update_needed_services();
                    self.schedule(m.ns.clone());
                }
                Some(_) => {}
            }
        }
        // Containers the agent does not track whose override changed: a new `set --rules`,
        // or a plain `set` after `clear` that hands them back to their own ACLs.
        let changed: BTreeSet<String> = before
            .keys()
            .chain(current.keys())
            .filter(|id| before.get(*id) != current.get(*id))
            .cloned()
            .collect();
        for id in changed {
            if !self.members.contains_key(&id) {
                self.inspect(id, None);
            }
        }
    }

    async fn prune_overrides(&mut self) {
        let ids: Vec<String> = self.overrides.get().keys().cloned().collect();
        let mut gone = Vec::new();
        for id in ids {
            if let Err(DockerError::NotFound { .. }) = self.docker.inspect(&id).await {
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            let dir = self.state_dir.clone();
            let res = tokio::task::spawn_blocking(move || {
                overrides::update(&dir, |o| {
                    for id in &gone {
                        o.remove(id);
                    }
                })
            })
            .await;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("cannot prune overrides: {e}"),
                Err(e) => tracing::warn!("cannot prune overrides: {e}"),
            }
        }
    }

    /// Tells the policy watcher which services the running enabled containers need.
    fn update_needed_services(&mut self) {
        let view = self.policy.borrow().clone();
        let Some(snapshot) = &view.snapshot else {
            return;
        };
        let mut needed = BTreeSet::new();
        if !self.members.is_empty() {
            match self.settings.mode {
                egresstrator_core::Mode::Protect => {
                    needed = enforce::service_refs(&snapshot.acls, None);
                }
                egresstrator_core::Mode::Allowlist => {
                    let names: Vec<AclName> = self
                        .members
                        .values()
                        .filter_map(|m| m.acls.as_ref().ok())
                        .flatten()
                        .cloned()
                        .collect();
                    needed = enforce::service_refs(&snapshot.acls, Some(&names));
                }
            }
        }
        for s in self.namespaces.values() {
            needed.extend(s.template_refs.iter().cloned());
        }
        self.needed.send_if_modified(|cur| {
            if *cur != needed {
                *cur = needed;
                true
            } else {
                false
            }
        });
    }
}

/// The next id from the record watch; never ready without one.
async fn next_record(records: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match records {
        Some(records) => records.recv().await,
        None => std::future::pending().await,
    }
}

/// How long ago the Unix time `nanos` was, by the wall clock; None for a time not in the past
/// (a missing timestamp reads as 0 and gives None too: it is not 56 years of delay).
fn since_unix_nano(nanos: i64) -> Option<Duration> {
    let then = u64::try_from(nanos).ok().filter(|n| *n > 0)?;
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .checked_sub(Duration::from_nanos(then))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_is_measured_only_from_a_timestamp_in_the_past() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        let then = i64::try_from((now - Duration::from_millis(250)).as_nanos()).expect("fits");
        let delay = since_unix_nano(then).expect("in the past");
        assert!(delay >= Duration::from_millis(250) && delay < Duration::from_secs(60));
        assert_eq!(since_unix_nano(0), None);
        assert_eq!(since_unix_nano(-5), None);
        let ahead = i64::try_from((now + Duration::from_secs(60)).as_nanos()).expect("fits");
        assert_eq!(since_unix_nano(ahead), None);
    }

    /// Regression: a hook that waited for a plan which turned out equal to what is in force
    /// was never answered; it timed out and loaded deny-all over the good ruleset.
    #[test]
    fn hooks_waiting_on_an_up_to_date_namespace_are_answered() {
        let mut state = NsState {
            applied_hash: Some("h1".into()),
            waiting_since: Some(Instant::now()),
            ..NsState::default()
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        state.waiters.push(tx);
        state.up_to_date("h1", &StatusBoard::new("test"));
        let reply = rx.try_recv().expect("answered at once");
        assert!(reply.ok);
        assert_eq!(reply.hash.as_deref(), Some("h1"));
        assert!(state.waiters.is_empty() && state.waiting_since.is_none());
    }
}
