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
use crate::enforce::{self, PolicySettings, Request, Selection};
use crate::hook::{self, HookReply};
use crate::netns::{self, NetnsError};
use crate::overrides::{self, Override, OverridesCache};
use crate::policy_watch::{self, PolicyView};
use crate::status::{unix_nanos, ContainerStatus, PolicyStatus, StatusBoard};

mod plan;

use plan::SERVICE_WAIT;
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(250);

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
    fn answer_waiters(&mut self, committed: bool) {
        let applied = self.applied_hash.clone();
        for w in self.waiters.drain(..) {
            let _ = w.send(HookReply {
                ok: committed,
                hash: applied.clone(),
                error: (!committed).then(|| "the ruleset could not be applied".to_owned()),
                ..Default::default()
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
    fn up_to_date(&mut self, hash: &str) {
        self.waiting_since = None;
        for w in self.waiters.drain(..) {
            let _ = w.send(HookReply {
                ok: true,
                hash: Some(hash.to_owned()),
                ..Default::default()
            });
        }
    }
}

/// How a container came to be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Docker's event or the agent's own reconcile.
    Event,
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
        let mut r = Reconciler {
            docker: self.docker,
            settings: self.config.settings,
            board: self.board,
            overrides: OverridesCache::new(self.config.state_dir.clone()),
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
            fresh_at: watch.fresh_at.clone(),
            max_policy_age: self.config.max_policy_age,
            stale: None,
            trimmer: crate::trim::Trimmer::spawn(crate::trim::QUIET),
        };
        let hooks = self.hooks.unwrap_or_else(|| mpsc::unbounded_channel().1);
        r.run(rx, hooks, shutdown).await;
        drop(watch);
    }
}

struct Reconciler {
    docker: DockerClient,
    settings: PolicySettings,
    board: Arc<StatusBoard>,
    overrides: OverridesCache,
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
    /// When the policy in force was last known current (see `PolicyWatch::fresh_at`).
    fresh_at: Arc<std::sync::atomic::AtomicU64>,
    max_policy_age: Option<Duration>,
    /// Why the policy is too old to use (`--max-policy-age`), while it is.
    stale: Option<String>,
    /// Returns the heap a burst of applies freed once they are over.
    trimmer: crate::trim::Trimmer,
}

impl Reconciler {
    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Input>,
        mut hooks: mpsc::UnboundedReceiver<hook::Pending>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        if let Applier::Local(_) = self.settings.applier {
            self.check_guard().await;
        }
        // What the watcher knows already (a snapshot from disk): shown at once.
        self.on_policy_change();
        self.prune_overrides().await;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut verify = tokio::time::interval(self.verify_interval);
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        'connect: loop {
            // Subscribe first, then list: a container starting in between is seen at least
            // once, and applying twice is harmless.
            let mut events = self.docker.events(None);
            match self.docker.root_dir().await {
                Ok(root) => self.docker_root = Some(root),
                Err(e) => tracing::debug!("{e}"),
            }
            match self.reconcile_running().await {
                Ok(()) => {
                    backoff.reset();
                    if !first {
                        self.board.docker_reconnect();
                    }
                    first = false;
                    self.board.docker_connected(true);
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
                    Some(input) = rx.recv() => self.on_input(input),
                    Some(p) = hooks.recv() => self.on_hook(p),
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
            (EventScope::Container, "start" | "restart") => self.inspect(ev.id, Some(ev.time_nano)),
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

    /// A runtime hook asks for a container that is being created: find out what it is (off
    /// the loop), then enforce it and answer once its ruleset is committed.
    fn on_hook(&mut self, p: hook::Pending) {
        let req = p.request.clone();
        if req.fell_back {
            // The hook's deny-all may have replaced (nft) or joined (iptables) a ruleset we
            // committed just before: load the namespace again, with a first load's tidying.
            if let Some(ns) = self.members.get(&req.id).map(|m| m.ns.clone()) {
                if let Some(state) = self.namespaces.get_mut(&ns) {
                    state.overwritten = true;
                }
                self.schedule(ns);
            }
            let _ = p.reply.send(HookReply {
                ok: true,
                ..Default::default()
            });
            return;
        }
        let docker = self.docker.clone();
        let root = self.docker_root.clone();
        let local = matches!(self.settings.applier, Applier::Local(_));
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let found = hooked_container(&docker, root.as_deref(), &req, local).await;
            let _ = tx.send(Input::Hooked {
                pending: p,
                found: Box::new(found),
            });
        });
    }

    /// The hook's container, found: answer at once when it is not to be enforced, else track
    /// it and answer when its ruleset is committed.
    fn on_hooked(&mut self, p: hook::Pending, found: Result<Found, String>) {
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                let _ = p.reply.send(HookReply {
                    error: Some(e),
                    ..Default::default()
                });
                return;
            }
        };
        let id = found.info.id.clone();
        if self.requested(&found.info).is_none() {
            let _ = p.reply.send(HookReply {
                ok: true,
                ..Default::default()
            });
            return;
        }
        self.track(
            found,
            None,
            Via::Hook {
                fresh: p.request.fresh_netns,
            },
        );
        let Some(ns) = self.members.get(&id).map(|m| m.ns.clone()) else {
            let _ = p.reply.send(HookReply {
                error: Some("the container could not be enforced (see the agent's log)".into()),
                ..Default::default()
            });
            return;
        };
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        if !state.in_flight && state.waiting_since.is_none() && state.applied_hash.is_some() {
            // Already in force (an identical ruleset was committed before).
            let _ = p.reply.send(HookReply {
                ok: true,
                hash: state.applied_hash.clone(),
                ..Default::default()
            });
        } else {
            state.waiters.push(p.reply);
        }
    }

    /// Inspects a container in the background; the answer comes back as an input.
    fn inspect(&self, id: String, start_event: Option<i64>) {
        let docker = self.docker.clone();
        let tx = self.tx.clone();
        let local = matches!(self.settings.applier, Applier::Local(_));
        tokio::spawn(async move {
            let result = match enforce::inspect_running(&docker, &id).await {
                Ok(Some(info)) => Ok(Some(found(&docker, info, local).await)),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let _ = tx.send(Input::Inspected {
                id,
                start_event,
                result: Box::new(result),
            });
        });
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Inspected {
                id,
                start_event,
                result,
            } => match *result {
                Ok(Some(found)) => self.track(found, start_event, Via::Event),
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
                hash,
                fingerprint,
            } => {
                if let Some(state) = self.namespaces.get_mut(&ns) {
                    // Only for what is still in force: a later load brings its own.
                    if state.applied_hash.as_deref() == Some(hash.as_str()) && !state.in_flight {
                        state.fingerprint = Some(fingerprint);
                    }
                }
            }
            Input::Verified { ns, result } => self.on_verified(ns, result),
        }
    }

    /// The ACLs a container gets, after overrides; None when it is not to be enforced.
    fn requested(&mut self, info: &ContainerInfo) -> Option<Result<Vec<AclName>, String>> {
        let selection = match self.overrides.get().get(&info.id) {
            Some(Override::Cleared) => return None,
            Some(Override::Rules { rules }) => Selection::Override(rules.clone()),
            None => Selection::Own,
        };
        match enforce::request(info, &selection) {
            Request::NotEnabled => None,
            Request::Enforce(acls) => Some(acls),
        }
    }

    /// Tracks an enabled container (forgets one that is not) and plans its namespace.
    fn track(&mut self, found: Found, start_event: Option<i64>, via: Via) {
        let Found {
            info,
            netns,
            resolvers,
            joins_host,
        } = found;
        let id = info.id.clone();
        if !matches!(&netns, Some(Err(e)) if !e.is_gone() && !matches!(e, NetnsError::HostNamespace { .. }))
        {
            self.drop_pending(&id);
        }
        let Some(acls) = self.requested(&info) else {
            tracing::debug!(container = enforce::short_id(&id), name = %info.name, "not enabled");
            self.remove_member(&id);
            return;
        };
        let owner = info
            .network_mode
            .strip_prefix("container:")
            .map_or_else(|| id.clone(), str::to_owned);
        let Some((ns, path)) = self.namespace_of(&info, netns, joins_host, &owner, start_event)
        else {
            return;
        };
        // A restarted container has a new namespace: the old one's state goes with it.
        if let Some(old) = self.members.get(&id) {
            // Another run of the container (events missed while Docker was away, e.g. after
            // dockerd was killed).
            let rerun = matches!(
                (&old.info.started_at, &info.started_at),
                (Some(a), Some(b)) if a != b
            );
            if old.ns != ns || rerun {
                self.remove_member(&id);
            }
        }
        // After a start the namespace is new even when its key is not (helper-image mode):
        // whatever was applied before is gone with it. (Locally a new namespace has a new
        // cookie, and a ruleset a runtime hook applied already must not be applied twice.)
        if start_event.is_some() && matches!(ns, NsKey::Owner(_)) {
            if let Some(state) = self.namespaces.get_mut(&ns) {
                state.applied_hash = None;
            }
        }
        let bypass = info.bypass_capability();
        if let Some(why) = &bypass {
            if self.members.get(&id).and_then(|m| m.bypass.as_ref()) != Some(why) {
                tracing::warn!(
                    container = enforce::short_id(&id),
                    name = %info.name,
                    "bypassable: {why}; egresstrator enforces its rules but cannot confine it"
                );
            }
        }
        let start_event = start_event.or_else(|| self.members.get(&id).and_then(|m| m.start_event));
        self.members.insert(
            id,
            Member {
                info,
                ns: ns.clone(),
                path,
                owner,
                acls,
                resolvers,
                bypass,
                start_event,
            },
        );
        let state = self.namespaces.entry(ns.clone()).or_default();
        if let Via::Hook { fresh } = via {
            // A container is waiting to start: its load goes before queued ones.
            state.priority = true;
            if fresh && state.applied_hash.is_none() {
                state.fresh = true;
            }
        }
        self.update_needed_services();
        self.schedule(ns);
    }

    /// Stops retrying a pending container (it was looked at, or it is gone), and takes its
    /// `pending` entry out of `/status`.
    fn drop_pending(&mut self, id: &str) {
        if self.pending.remove(id).is_some() {
            self.board.forget(id);
        }
    }

    /// A container could not be looked at (Docker answered with an error other than "no
    /// such container", or its namespace could not be opened): it is inspected again with
    /// backoff, and `/status` shows it as pending with the reason. If it is already enforced,
    /// its rules stay as they are meanwhile.
    fn retry_later(&mut self, id: String, start_event: Option<i64>, error: String) {
        let entry = self.pending.entry(id.clone()).or_insert(PendingRetry {
            start_event,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            retry_at: Instant::now(),
        });
        entry.retry_at = Instant::now() + entry.backoff.next_jittered();
        tracing::warn!(
            container = enforce::short_id(&id),
            retry_in_ms = (entry.retry_at - Instant::now()).as_millis() as u64,
            "cannot look at the container yet: {error}"
        );
        self.board.pending(&id, &error);
    }

    /// The key and file of an enabled container's namespace, or None (logged, and the
    /// container forgotten or retried) when it has none the agent may enforce: gone, the
    /// host's, or not openable for now.
    fn namespace_of(
        &mut self,
        info: &ContainerInfo,
        netns: Option<Result<(PathBuf, u64), NetnsError>>,
        joins_host: bool,
        owner: &str,
        start_event: Option<i64>,
    ) -> Option<(NsKey, Option<PathBuf>)> {
        let id = info.id.clone();
        match netns {
            Some(Ok((path, cookie))) => Some((NsKey::Netns(cookie), Some(path))),
            Some(Err(e)) => {
                if e.is_gone() {
                    tracing::debug!(
                        container = enforce::short_id(&id),
                        "exited before it could be enforced"
                    );
                } else if let NetnsError::HostNamespace { .. } = e {
                    tracing::error!(
                        container = enforce::short_id(&id),
                        name = %info.name,
                        network_mode = %info.network_mode,
                        "refusing to enforce: the container shares the host's network namespace, and egresstrator never changes the host's firewall"
                    );
                } else {
                    // Neither gone nor the host's: a transient failure (fds, permissions). The
                    // container is looked at again with backoff, and shown as pending.
                    let start_event =
                        start_event.or_else(|| self.members.get(&id).and_then(|m| m.start_event));
                    self.retry_later(id, start_event, e.to_string());
                    return None;
                }
                self.remove_member(&id);
                None
            }
            None => {
                if joins_host {
                    tracing::error!(
                        container = enforce::short_id(&id),
                        name = %info.name,
                        network_mode = %info.network_mode,
                        "refusing to enforce: the container uses the host's network (--network host, or joins a container that does), and egresstrator never changes the host's firewall"
                    );
                    self.remove_member(&id);
                    return None;
                }
                Some((NsKey::Owner(owner.to_owned()), info.netns_path()))
            }
        }
    }

    /// Forgets a namespace that is gone (or whose file now leads elsewhere) and every member
    /// recorded in it, and looks at each of those members again: one that still runs (in
    /// this namespace, entered through another member's file, or in a new one) is tracked
    /// anew from what Docker says now.
    fn forget_namespace(&mut self, ns: &NsKey) {
        let ids: Vec<(String, Option<i64>)> = self
            .members
            .iter()
            .filter(|(_, m)| &m.ns == ns)
            .map(|(id, m)| (id.clone(), m.start_event))
            .collect();
        for (id, start_event) in &ids {
            self.members.remove(id);
            self.board.forget(id);
            self.inspect(id.clone(), *start_event);
        }
        if let Some(state) = self.namespaces.remove(ns) {
            for w in state.waiters {
                let _ = w.send(HookReply {
                    error: Some("the container's network namespace went away".into()),
                    ..Default::default()
                });
            }
        }
        self.update_needed_services();
    }

    /// Checks every enforced namespace for drift.
    fn verify_all(&mut self) {
        let all: Vec<NsKey> = self.namespaces.keys().cloned().collect();
        for ns in all {
            self.verify(ns);
        }
    }

    /// Compares a namespace's rules with what the last load left, off the loop; a namespace
    /// with nothing to compare yet (a load in flight, helper-image mode) is skipped.
    fn verify(&mut self, ns: NsKey) {
        let NsKey::Netns(cookie) = ns else {
            return;
        };
        // The namespace's owner's file first: a member that joined it (`--network
        // container:X`) may be on its way out while X still runs.
        let mut inside: Vec<&Member> = self.members.values().filter(|m| m.ns == ns).collect();
        inside.sort_by_key(|m| m.info.id != m.owner);
        let Some(path) = inside.first().and_then(|m| m.path.clone()) else {
            return;
        };
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let Some(loaded) = state.loaded_backend else {
            return;
        };
        if state.in_flight || state.verifying || state.fingerprint.is_none() {
            return;
        }
        state.verifying = true;
        let listing = backend::listing(loaded, self.guard_missing.is_none());
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = netns::fingerprint(path, Some(cookie), listing).await;
            let _ = tx.send(Input::Verified { ns, result });
        });
    }

    fn on_verified(&mut self, ns: NsKey, result: Result<String, NetnsError>) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        state.verifying = false;
        match result {
            Ok(fp) if state.fingerprint.as_ref() == Some(&fp) => {}
            // A load ran meanwhile: its own fingerprint is on the way.
            Ok(_) if state.in_flight || state.fingerprint.is_none() => {}
            Ok(_) => {
                let names: Vec<&str> = self
                    .members
                    .values()
                    .filter(|m| m.ns == ns)
                    .map(|m| m.info.name.as_str())
                    .collect();
                tracing::warn!(
                    containers = ?names,
                    "drift: egresstrator's rules in the namespace were changed or removed, or its interfaces changed; loading them again"
                );
                self.board.drift_repaired();
                state.fingerprint = None;
                state.applied_hash = None;
                state.overwritten = true;
                self.schedule(ns);
            }
            Err(e) if e.is_gone() => {
                tracing::debug!("namespace gone: {e}");
                self.forget_namespace(&ns);
            }
            Err(e) => tracing::warn!("cannot check a namespace for drift: {e}"),
        }
    }

    fn remove_member(&mut self, id: &str) {
        let Some(m) = self.members.remove(id) else {
            return;
        };
        self.board.forget(id);
        if self.members.values().any(|o| o.ns == m.ns) {
            // Others still live in that namespace: their union changed.
            self.schedule(m.ns.clone());
        } else {
            self.namespaces.remove(&m.ns);
        }
        self.update_needed_services();
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
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
        self.check_stuck();
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
        let before = self.overrides.get().clone();
        if self.overrides.refresh() {
            self.reread_overrides(&before);
        }
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
                        };
                        tokio::spawn(async move {
                            let _ = backend::clear_with(&applier, &target).await;
                        });
                    }
                }
                Some(acls) if Some(&acls) != Some(&m.acls) => {
                    if let Some(mm) = self.members.get_mut(&id) {
                        mm.acls = acls;
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

    /// The built-in policy's plan for a namespace ([`plan::decide`]): None when there is
    /// nothing to load now (waiting for Consul or a service, or up to date; waiting hooks are
    /// answered then).
    fn plan_builtin(
        &mut self,
        ns: &NsKey,
        members: &[Member],
        view: &PolicyView,
    ) -> Option<plan::Plan> {
        let inputs = member_plans(members);
        let state = self.namespaces.get_mut(ns)?;
        let decision = plan::decide(&plan::PlanInput {
            members: &inputs,
            view,
            settings: &self.settings,
            stale: self.stale.as_deref(),
            applied_hash: state.applied_hash.as_deref(),
            waiting_since: state.waiting_since,
            now: Instant::now(),
        });
        match decision {
            plan::Decision::Empty => None,
            plan::Decision::Wait { since } => {
                state.waiting_since = Some(since);
                None
            }
            plan::Decision::UpToDate { hash } => {
                state.up_to_date(&hash);
                None
            }
            plan::Decision::Load(p) => {
                state.waiting_since = None;
                Some(*p)
            }
        }
    }

    /// The template path's plan for a namespace: None when there is nothing to load now
    /// (waiting for Consul or a service the template reads, or already up to date; waiting
    /// hooks are answered then).
    fn plan_with_template(
        &mut self,
        t: &crate::template::TemplateConfig,
        ns: &NsKey,
        members: &[Member],
        view: &PolicyView,
    ) -> Option<plan::Plan> {
        let inputs = member_plans(members);
        let (acls, _) = plan::union(&inputs);
        if view.source == policy_watch::Source::None && view.error.is_none() {
            let state = self.namespaces.get_mut(ns)?;
            let since = *state.waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SERVICE_WAIT {
                return None;
            }
        }
        let snapshot = match &self.stale {
            Some(why) => Err(why.clone()),
            None => view.for_planning(),
        };
        let mut plan =
            self.plan_template(t, ns, &acls, members, &snapshot, view.error.is_none())?;
        if let Ok(s) = &snapshot {
            plan.warnings.extend(s.warnings.iter().cloned());
        }
        let state = self.namespaces.get_mut(ns)?;
        state.waiting_since = None;
        if state.applied_hash.as_deref() == Some(plan.rendered.hash.as_str()) {
            state.up_to_date(&plan.rendered.hash);
            return None;
        }
        Some(plan)
    }

    /// Renders the template for a namespace. None means: wait, a service it reads has not
    /// answered yet.
    fn plan_template(
        &mut self,
        t: &crate::template::TemplateConfig,
        ns: &NsKey,
        acls: &Result<Vec<AclName>, String>,
        members: &[Member],
        snapshot: &Result<Arc<enforce::PolicySnapshot>, String>,
        consul_up: bool,
    ) -> Option<plan::Plan> {
        let backend = self.settings.applier.backend();
        let deny = |e: String| Some(plan::Plan::deny_all(backend, e));
        let names = match acls {
            Ok(n) => n,
            Err(e) => return deny(e.clone()),
        };
        let snap = match snapshot {
            Ok(s) => s,
            Err(e) => return deny(format!("policy unavailable: {e}")),
        };
        let first = &members[0].info;
        let env = crate::template::TemplateEnv {
            acls: names.iter().map(ToString::to_string).collect(),
            kv_path: self.settings.kv_path.clone(),
            container_id: first.id.clone(),
            container_name: first.name.clone(),
        };
        let (result, refs) = match crate::template::render(t, snap, &env) {
            Ok(out) => {
                let refs = out
                    .deps
                    .services
                    .iter()
                    .map(crate::template::service_ref)
                    .collect();
                (Ok(out.text), refs)
            }
            Err(f) => {
                let refs = f.services.iter().cloned().collect();
                (Err(f), refs)
            }
        };
        let changed = self
            .namespaces
            .get_mut(ns)
            .map(|s| std::mem::replace(&mut s.template_refs, refs))
            .is_some_and(|old| {
                self.namespaces
                    .get(ns)
                    .is_some_and(|s| s.template_refs != old)
            });
        if changed {
            self.update_needed_services();
        }
        match result {
            Ok(text) => Some(plan::Plan::template(t.format.backend(), text)),
            Err(f) => {
                if f.pending && consul_up {
                    let state = self.namespaces.get_mut(ns)?;
                    let since = *state.waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < SERVICE_WAIT {
                        return None;
                    }
                }
                deny(f.message)
            }
        }
    }

    /// Plans a namespace and applies its ruleset if it changed.
    fn schedule(&mut self, ns: NsKey) {
        let mut members: Vec<Member> = self
            .members
            .values()
            .filter(|m| m.ns == ns)
            .cloned()
            .collect();
        // A stable order keeps the union (and so the hash) stable.
        members.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let view = self.policy.borrow().clone();
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        if members.is_empty() {
            return;
        }
        if state.in_flight {
            state.dirty = true;
            return;
        }
        if std::mem::take(&mut state.overwritten) {
            state.applied_hash = None;
        }
        let planned = match &self.settings.template {
            None => self.plan_builtin(&ns, &members, &view),
            Some(t) => {
                let t = t.clone();
                self.plan_with_template(&t, &ns, &members, &view)
            }
        };
        // None: waiting, or up to date.
        let Some(planned) = planned else {
            return;
        };
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        state.in_flight = true;
        state.in_flight_since = Some(Instant::now());
        let priority = std::mem::take(&mut state.priority);
        let tidy = match (
            state.applied_hash.is_none(),
            std::mem::take(&mut state.fresh),
        ) {
            (true, true) => enforce::Tidy::Fresh,
            (true, false) => enforce::Tidy::First,
            (false, _) => enforce::Tidy::Again,
        };
        self.spawn_load(ns, members, planned, priority, tidy);
    }

    /// Loads a plan into a namespace off the loop (queued behind [`APPLY_SLOTS`] unless a
    /// runtime hook waits), reports the commit, then its fingerprint, then tidies up.
    fn spawn_load(
        &self,
        ns: NsKey,
        members: Vec<Member>,
        plan: plan::Plan,
        priority: bool,
        tidy: enforce::Tidy,
    ) {
        // Entered through the owner's file when the owner is a member: a member that joined
        // its namespace may be on its way out.
        let via = members
            .iter()
            .find(|m| m.info.id == m.owner)
            .unwrap_or(&members[0]);
        let target = backend::Target {
            container: via.owner.clone(),
            path: via.path.clone(),
            expect: match ns {
                NsKey::Netns(cookie) => Some(cookie),
                NsKey::Owner(_) => None,
            },
        };
        let tx = self.tx.clone();
        let applier = self.settings.applier.clone();
        let slots = self.apply_slots.clone();
        tokio::spawn(async move {
            // The semaphore is never closed; a failed acquire just runs unqueued.
            let _slot = match priority {
                true => None,
                false => slots.acquire_owned().await.ok(),
            };
            let hash = plan.rendered.hash.clone();
            let mut result = enforce::load(&applier, &target, plan.rendered).await;
            // Report the commit first (a runtime hook may be waiting for it), then tidy up.
            let fingerprint = result
                .as_mut()
                .ok()
                .and_then(|l| l.applied.fingerprint.take());
            let tidy_up = result.as_ref().ok().map(|l| {
                (
                    l.rendered.backend,
                    l.rendered.ruleset.clone(),
                    l.rendered.hash.clone(),
                )
            });
            let _ = tx.send(Input::Applied(Box::new(Applied {
                ns: ns.clone(),
                hash,
                result,
                members,
                plan_error: plan.error,
                warnings: plan.warnings,
            })));
            let Some((backend, ruleset, loaded_hash)) = tidy_up else {
                return;
            };
            if let Some(rx) = fingerprint {
                if let Ok(Ok(fingerprint)) = rx.await {
                    let _ = tx.send(Input::Fingerprinted {
                        ns,
                        hash: loaded_hash,
                        fingerprint,
                    });
                }
            }
            enforce::after_load(&applier, &target, backend, ruleset.as_ref(), tidy).await;
        });
    }

    fn on_applied(&mut self, a: Applied) {
        self.trimmer.poke();
        let committed = a.result.is_ok();
        let Some(state) = self.namespaces.get_mut(&a.ns) else {
            return; // every member went away meanwhile
        };
        state.in_flight = false;
        state.in_flight_since = None;
        match a.result {
            Ok(ok) => {
                let error = ok.fallback.clone().or(a.plan_error.clone());
                state.applied_hash = Some(a.hash.clone());
                state.loaded_backend = Some(ok.rendered.backend);
                // The fingerprint of this load follows; the previous one is stale now.
                state.fingerprint = None;
                if ok.applied.unguarded != state.unguarded {
                    if !ok.applied.unguarded.is_empty() {
                        tracing::error!(
                            interfaces = ?ok.applied.unguarded,
                            "interfaces the raw-socket guard cannot take (their names have characters outside [A-Za-z0-9._+@-]); raw frames can leave through them"
                        );
                    }
                    state.unguarded = ok.applied.unguarded.clone();
                }
                let ns_bypass = self.guard_missing.clone().or_else(|| {
                    (!state.unguarded.is_empty()).then(|| {
                        format!(
                            "interfaces without the raw-socket guard: {}",
                            state.unguarded.join(", ")
                        )
                    })
                });
                if error.is_some() {
                    state.retry_later();
                } else {
                    state.backoff = None;
                    state.retry_at = None;
                }
                if ok.fallback.is_some() {
                    // The hash is deny-all's; keep retrying the real one.
                    state.applied_hash = None;
                }
                self.report(&a.members, &ok, error.as_ref(), &a.warnings, ns_bypass);
            }
            Err(e) if e.is_gone() => {
                tracing::debug!("namespace went away while being enforced: {e}");
                // Its members no longer run in it; whoever still runs is found again.
                self.forget_namespace(&a.ns);
                return;
            }
            Err(e) => {
                self.board.apply_failed();
                let names: Vec<&str> = a.members.iter().map(|m| m.info.name.as_str()).collect();
                tracing::error!(containers = ?names, "cannot apply egress rules: {e}");
                state.retry_later();
            }
        }
        if let Some(state) = self.namespaces.get_mut(&a.ns) {
            state.answer_waiters(committed);
            if std::mem::take(&mut state.dirty) {
                self.schedule(a.ns.clone());
            }
        }
    }

    /// Logs and shows the outcome of a load for every member still in the namespace.
    fn report(
        &self,
        members: &[Member],
        ok: &enforce::Loaded,
        error: Option<&String>,
        warnings: &[String],
        ns_bypass: Option<String>,
    ) {
        for m in members {
            // Members that left meanwhile are not reported.
            let Some(cur) = self.members.get(&m.info.id) else {
                continue;
            };
            let outcome =
                enforce::Outcome::new(&m.info, &m.acls, ok, error.cloned(), warnings.to_vec());
            enforce::log_outcome(&outcome);
            self.board.applied(
                ContainerStatus {
                    id: outcome.id,
                    name: outcome.name,
                    acls: outcome.acls,
                    posture: outcome.posture,
                    hash: outcome.hash,
                    fail_closed: error.is_some(),
                    error: error.cloned(),
                    start_event_unix_nano: cur.start_event,
                    applied_at_unix_nano: unix_nanos(ok.at),
                    apply_count: 0,
                    last_apply_ms: ok.took.as_secs_f64() * 1000.0,
                    bypassable: cur.bypass.clone().or_else(|| ns_bypass.clone()),
                },
                ok.took,
            );
        }
    }
}

/// What the planner sees of each member.
fn member_plans(members: &[Member]) -> Vec<plan::MemberPlan<'_>> {
    members
        .iter()
        .map(|m| plan::MemberPlan {
            name: &m.info.name,
            acls: &m.acls,
            resolvers: &m.resolvers,
        })
        .collect()
}

/// What the agent needs to know about a running container besides its inspect answer: its
/// namespace's identity (local applies) and its resolvers.
async fn found(docker: &DockerClient, mut info: ContainerInfo, local: bool) -> Found {
    let netns = if local {
        // What the container's processes can do at most, as the kernel sees it.
        info.bounding = info.pid.and_then(crate::docker::bounding_set);
        Some(match namespace_path(&info) {
            Some(path) => netns::cookie(path.clone()).await.map(|c| (path, c)),
            None => Err(NetnsError::Gone {
                path: PathBuf::from(format!("(container {} has no namespace)", info.id)),
            }),
        })
    } else {
        None
    };
    with_facts(docker, info, netns).await
}

/// A container with its namespace and the facts looked up for it: its resolvers and, in
/// helper-image mode (no namespace identity), whether its network mode puts it in the
/// host's namespace.
async fn with_facts(
    docker: &DockerClient,
    info: ContainerInfo,
    netns: Option<Result<(PathBuf, u64), NetnsError>>,
) -> Found {
    let resolvers = enforce::resolvers(docker, &info).await;
    let joins_host = netns.is_none() && enforce::host_network(docker, &info).await;
    Found {
        info,
        netns,
        resolvers,
        joins_host,
    }
}

/// The file to enter a running container's namespace with. Docker's sandbox key names one
/// sandbox and is never reused, so it is preferred over `/proc/<pid>/ns/net`, whose pid can
/// be reused once the container exits; containers that join another's namespace have no
/// sandbox key of their own.
fn namespace_path(info: &ContainerInfo) -> Option<PathBuf> {
    match &info.sandbox_key {
        Some(key) if key.exists() => Some(key.clone()),
        _ => info.netns_path(),
    }
}

/// The container a runtime hook asks about, from Docker's own record of it (inspect would
/// wait for the very start the hook is part of: see [`crate::docker::read_record`]), with
/// the hook's pid. When that record cannot be read (the agent runs where Docker's root
/// directory is not visible), labels and network mode come from Docker's container list,
/// which answers during a start, and the environment from the OCI bundle.
async fn hooked_container(
    docker: &DockerClient,
    root: Option<&std::path::Path>,
    req: &hook::HookRequest,
    local: bool,
) -> Result<Found, String> {
    let record = match root {
        Some(root) => crate::docker::read_record(root, &req.id).map_err(|e| e.to_string()),
        None => Err("docker's root directory is not known".to_owned()),
    };
    let mut info = match record {
        Ok(info) => info,
        Err(why) => {
            tracing::debug!("{why}; using docker's container list and the bundle instead");
            let mut info = docker
                .list_one(&req.id)
                .await
                .map_err(|e| format!("cannot look up container {}: {e}", req.id))?;
            info.env = req
                .env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.clone(), String::new()),
                })
                .collect();
            info
        }
    };
    if info.name.is_empty() {
        info.name = enforce::short_id(&req.id).to_owned();
    }
    info.running = true;
    info.pid = Some(req.pid);
    // The init's own set is not final yet (runc drops capabilities just before the workload
    // starts); the bundle's is what the workload will get.
    info.bounding = req.bounding.as_ref().map(|names| {
        names
            .iter()
            .filter_map(|n| crate::docker::capability_number(n))
            .fold(0u64, |mask, cap| mask | (1 << cap))
    });
    // The init is paused until the hook returns, so its pid cannot be reused meanwhile.
    let path = PathBuf::from(format!("/proc/{}/ns/net", req.pid));
    let netns = if local {
        Some(netns::cookie(path.clone()).await.map(|c| (path, c)))
    } else {
        None
    };
    Ok(with_facts(docker, info, netns).await)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        state.up_to_date("h1");
        let reply = rx.try_recv().expect("answered at once");
        assert!(reply.ok);
        assert_eq!(reply.hash.as_deref(), Some("h1"));
        assert!(state.waiters.is_empty() && state.waiting_since.is_none());
    }
}
