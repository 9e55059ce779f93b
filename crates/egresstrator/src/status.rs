//! What the agent has done, for operators and benchmarks: `GET /status` (JSON, one entry per
//! enforced container with the moment its ruleset was committed), `GET /metrics`
//! (Prometheus text), `GET /healthz`, and `GET /monitor`: refused and audited flows as they
//! happen, one JSON line each, for `egresstrator monitor`.
//!
//! The endpoint is read-only and binds to loopback by default. It never shows tokens or ACL
//! contents, only names, hashes and outcomes. A minimal HTTP/1.0 responder is enough here;
//! a failure to bind is logged and never stops the agent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::flows::{FlowRecord, FlowVerdict};
use crate::policy_watch::{unix_now, Source};

/// One enforced container.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub acls: Vec<String>,
    pub posture: String,
    pub hash: String,
    pub fail_closed: bool,
    pub error: Option<String>,
    /// Docker's `start` event time for this container, when it was seen as an event.
    pub start_event_unix_nano: Option<i64>,
    /// Wall clock right after the ruleset was committed in the namespace.
    pub applied_at_unix_nano: i64,
    pub apply_count: u64,
    pub last_apply_ms: f64,
    /// Why the workload could get around its firewall, when it can: it holds NET_ADMIN or
    /// SYS_ADMIN, or the raw-socket guard is missing. Absent when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bypassable: Option<String>,
    /// Connections refused and reported by the kernel's log (rate-limited in the ruleset).
    #[serde(default)]
    pub denied_flows: u64,
    /// Connections an audit-mode ruleset let through where it would have refused.
    #[serde(default)]
    pub audited_flows: u64,
    /// Refused and audited connections in the last 60 seconds (filled in by `/status`).
    #[serde(default)]
    pub flows_last_minute: u64,
    /// Name destinations, when its ruleset has name lines: the addresses learned from its
    /// DNS answers, each with when it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<FqdnStatus>,
}

/// What the fqdn learner of a container's namespace knows.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct FqdnStatus {
    /// The name lines of its ruleset, as written (`api.example.com:tcp/443`).
    pub names: Vec<String>,
    /// Addresses allowed now, from its DNS answers.
    pub learned: Vec<LearnedAddress>,
    /// DNS answers the learner read.
    pub answers: u64,
    /// Why nothing is learned, when the learner could not start or stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One learned address.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LearnedAddress {
    /// The names asked for whose answers gave it.
    pub names: Vec<String>,
    pub address: std::net::IpAddr,
    pub proto: String,
    pub ports: String,
    pub expires_unix: u64,
}

/// Flows per second over the last minute, for one container: at most 60 (second, count)
/// pairs.
#[derive(Debug, Default)]
struct Recent(std::collections::VecDeque<(u64, u64)>);

impl Recent {
    fn add(&mut self, now: u64) {
        match self.0.back_mut() {
            Some((sec, n)) if *sec == now => *n += 1,
            _ => self.0.push_back((now, 1)),
        }
        self.expire(now);
    }

    fn expire(&mut self, now: u64) {
        while self
            .0
            .front()
            .is_some_and(|(sec, _)| now.saturating_sub(*sec) >= 60)
        {
            self.0.pop_front();
        }
    }

    fn last_minute(&mut self, now: u64) -> u64 {
        self.expire(now);
        self.0.iter().map(|(_, n)| n).sum()
    }
}

/// Where policy comes from.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    pub source: Source,
    pub kv_index: u64,
    pub error: Option<String>,
    /// When the policy in force was last known to be Consul's current one (Unix seconds; 0:
    /// never).
    #[serde(default)]
    pub fresh_at_unix: u64,
}

#[derive(Debug, Default)]
struct Counters {
    applies: u64,
    apply_failures: u64,
    fail_closed: u64,
    apply_seconds_sum: f64,
    docker_events: u64,
    docker_reconnects: u64,
    drift_repairs: u64,
    hooks: HookCounters,
    /// Log records that named no enforced container, or were dropped on the way.
    flows_unattributed: u64,
    flows_dropped: u64,
}

/// What became of runtime hooks' requests.
#[derive(Debug, Default)]
struct HookCounters {
    /// Answered with a committed ruleset.
    answered: u64,
    /// Answered too late (the hook had given up) or with nothing committed.
    timed_out: u64,
    /// The hook gave up waiting and loaded its own deny-all.
    fell_back: u64,
}

/// What a hook request came to ([`StatusBoard::hook`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    Answered,
    TimedOut,
    FellBack,
}

/// Upper bounds of the latency histograms, in seconds: from the sub-millisecond commits of
/// an idle host to the seconds of a stuck one.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A Prometheus histogram with fixed [`BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        for (c, le) in self.counts.iter_mut().zip(BUCKETS) {
            if seconds <= le {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn write(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, le) in self.counts.iter().zip(BUCKETS) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {c}");
        }
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(s, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// A label value in the exposition format: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// This process's resident memory (bytes) and open file descriptors, from /proc.
fn process_usage() -> (Option<u64>, Option<usize>) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        });
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
    (rss, fds)
}

#[derive(Debug)]
struct Board {
    containers: BTreeMap<String, ContainerStatus>,
    policy: PolicyStatus,
    counters: Counters,
    /// Why the raw-socket guard cannot hold on this kernel, if it cannot.
    guard: Option<String>,
    /// Loads running past their bound.
    stuck: Vec<String>,
    /// Whether Docker's event stream is connected.
    docker_connected: bool,
    /// Why the policy in force is too old to use (`--max-policy-age`), while it is.
    policy_stale: Option<String>,
    /// Per container, its flows of the last minute.
    recent: BTreeMap<String, Recent>,
    /// Time to commit a ruleset.
    apply_seconds: Histogram,
    /// From Docker's start event to the first commit in the container's namespace.
    event_to_enforced_seconds: Histogram,
    /// From Docker's timestamp on a start event to the agent reading it off the stream.
    docker_event_delay_seconds: Histogram,
}

impl Board {
    /// Counts a container's first commit in the event→enforced histogram: 0 when the commit
    /// came before the event (the start was seen in Docker's record).
    fn event_to_enforced(&mut self, start: i64, applied: i64) {
        let nanos = applied.saturating_sub(start).max(0);
        self.event_to_enforced_seconds.observe(nanos as f64 / 1e9);
    }
}

/// Shared between the agent (writer) and the endpoint (reader).
#[derive(Debug)]
pub struct StatusBoard {
    mode: String,
    started: SystemTime,
    inner: Mutex<Board>,
    /// Flows for `/monitor`. A subscriber that falls more than [`MONITOR_QUEUE`] records
    /// behind skips ahead (and is told how many it missed); the agent never waits for one.
    flows: tokio::sync::broadcast::Sender<Arc<FlowRecord>>,
}

/// Records a `/monitor` subscriber may fall behind by.
pub const MONITOR_QUEUE: usize = 1024;

#[derive(Serialize)]
struct StatusDoc<'a> {
    version: &'static str,
    mode: &'a str,
    policy: &'a PolicyStatus,
    /// Seconds since the policy in force was last known current; absent when never.
    policy_age_seconds: Option<u64>,
    /// `verified`, or why the raw-socket guard cannot hold here.
    raw_socket_guard: &'a str,
    /// Loads running past their bound.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stuck_applies: &'a [String],
    containers: Vec<&'a ContainerStatus>,
}

/// Seconds since `unix` (None when it is 0: never).
fn age(unix: u64) -> Option<u64> {
    (unix > 0).then(|| unix_now().saturating_sub(unix))
}

pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl StatusBoard {
    pub fn new(mode: impl Into<String>) -> Arc<Self> {
        Arc::new(StatusBoard {
            mode: mode.into(),
            started: SystemTime::now(),
            flows: tokio::sync::broadcast::channel(MONITOR_QUEUE).0,
            inner: Mutex::new(Board {
                containers: BTreeMap::new(),
                policy: PolicyStatus {
                    source: Source::None,
                    kv_index: 0,
                    error: None,
                    fresh_at_unix: 0,
                },
                counters: Counters::default(),
                guard: None,
                stuck: Vec::new(),
                docker_connected: false,
                policy_stale: None,
                recent: BTreeMap::new(),
                apply_seconds: Histogram::default(),
                event_to_enforced_seconds: Histogram::default(),
                docker_event_delay_seconds: Histogram::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        // A panic while holding the lock cannot leave the board inconsistent in a way that
        // matters more than losing the status page; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an apply: the container's new status, and the time spent.
    pub fn applied(&self, status: ContainerStatus, took: Duration) {
        let mut b = self.lock();
        b.counters.applies += 1;
        b.counters.apply_seconds_sum += took.as_secs_f64();
        if status.fail_closed {
            b.counters.fail_closed += 1;
        }
        b.apply_seconds.observe(took.as_secs_f64());
        let before = b.containers.get(&status.id);
        let count = before.map_or(0, |c| c.apply_count);
        let flows = before.map_or((0, 0), |c| (c.denied_flows, c.audited_flows));
        let fqdn = before.and_then(|c| c.fqdn.clone());
        let mut status = status;
        if let (0, Some(start)) = (count, status.start_event_unix_nano) {
            b.event_to_enforced(start, status.applied_at_unix_nano);
        }
        status.apply_count = count + 1;
        (status.denied_flows, status.audited_flows) = flows;
        if status.fqdn.is_none() {
            status.fqdn = fqdn;
        }
        b.containers.insert(status.id.clone(), status);
    }

    /// Docker's start event for container `id`, which may arrive after its first commit (the
    /// start was seen in Docker's record first): shown in its status, and counted in the
    /// event→enforced histogram, as 0 when the commit came first.
    pub fn start_event(&self, id: &str, start: i64) {
        let mut b = self.lock();
        let Some(c) = b.containers.get_mut(id) else {
            return;
        };
        if c.start_event_unix_nano.is_some() {
            return;
        }
        c.start_event_unix_nano = Some(start);
        if c.apply_count == 1 {
            let applied = c.applied_at_unix_nano;
            b.event_to_enforced(start, applied);
        }
    }

    /// What the fqdn learner of container `id`'s namespace knows now.
    pub fn fqdn(&self, id: &str, status: Option<FqdnStatus>) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.fqdn = status;
        }
    }

    /// A flow attributed to an enforced container: counted, and sent to `/monitor`.
    pub fn publish(&self, record: FlowRecord) {
        if self.flow(&record.id, record.verdict == FlowVerdict::Audit) {
            // No subscriber is not an error.
            let _ = self.flows.send(Arc::new(record));
        }
    }

    /// Flows as they are published, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<FlowRecord>> {
        self.flows.subscribe()
    }

    /// A connection the kernel reported for container `id`: refused, or let through by an
    /// audit-mode ruleset. False when `id` is not an enforced container.
    pub fn flow(&self, id: &str, audit: bool) -> bool {
        let mut b = self.lock();
        match b.containers.get_mut(id) {
            Some(c) if audit => c.audited_flows += 1,
            Some(c) => c.denied_flows += 1,
            None => {
                b.counters.flows_unattributed += 1;
                return false;
            }
        }
        let now = unix_now();
        b.recent.entry(id.to_owned()).or_default().add(now);
        true
    }

    /// Log records lost before they were attributed (a full queue or socket buffer).
    pub fn flows_dropped(&self, n: u64) {
        self.lock().counters.flows_dropped += n;
    }

    /// A runtime hook request's outcome.
    pub fn hook(&self, outcome: HookOutcome) {
        let mut b = self.lock();
        let h = &mut b.counters.hooks;
        match outcome {
            HookOutcome::Answered => h.answered += 1,
            HookOutcome::TimedOut => h.timed_out += 1,
            HookOutcome::FellBack => h.fell_back += 1,
        }
    }

    pub fn apply_failed(&self) {
        self.lock().counters.apply_failures += 1;
    }

    pub fn forget(&self, id: &str) {
        let mut b = self.lock();
        b.containers.remove(id);
        b.recent.remove(id);
    }

    /// Keeps only the given containers.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut b = self.lock();
        b.containers.retain(|id, _| keep(id));
        b.recent.retain(|id, _| keep(id));
    }

    pub fn policy(&self, policy: PolicyStatus) {
        let mut b = self.lock();
        b.policy = policy;
    }

    /// When the policy in force was last known current.
    pub fn policy_fresh_at(&self, unix: u64) {
        self.lock().policy.fresh_at_unix = unix;
    }

    pub fn docker_event(&self) {
        self.lock().counters.docker_events += 1;
    }

    /// A start event read off Docker's stream `delay` after the time Docker stamped on it.
    /// The part of the exposure window that is Docker's: while dockerd starts many containers
    /// at once it hands events to its subscribers late (measured: up to 245 ms with 60
    /// `docker run`s at once on 2 cores, with no agent running; BENCHMARKS.md, part 7).
    pub fn docker_start_event(&self, delay: Duration) {
        self.lock()
            .docker_event_delay_seconds
            .observe(delay.as_secs_f64());
    }

    pub fn docker_reconnect(&self) {
        self.lock().counters.docker_reconnects += 1;
    }

    /// A container that could not be looked at yet and is retried: shown with posture
    /// `pending` and the reason, until it is enforced or gone.
    pub fn pending(&self, id: &str, error: &str) {
        let mut b = self.lock();
        let name = b.containers.get(id).map(|c| c.name.clone());
        let enforced = b.containers.get(id).is_some_and(|c| c.posture != "pending");
        if enforced {
            return; // its rules stay in force; the retry refreshes it
        }
        b.containers.insert(
            id.to_owned(),
            ContainerStatus {
                id: id.to_owned(),
                name: name.unwrap_or_default(),
                acls: Vec::new(),
                posture: "pending".to_owned(),
                hash: String::new(),
                fail_closed: false,
                error: Some(error.to_owned()),
                start_event_unix_nano: None,
                applied_at_unix_nano: 0,
                apply_count: 0,
                last_apply_ms: 0.0,
                bypassable: None,
                denied_flows: 0,
                audited_flows: 0,
                flows_last_minute: 0,
                fqdn: None,
            },
        );
    }

    /// Loads that run past their bound (empty when none).
    pub fn stuck(&self, stuck: Vec<String>) {
        self.lock().stuck = stuck;
    }

    /// Whether Docker's event stream is connected.
    pub fn docker_connected(&self, connected: bool) {
        self.lock().docker_connected = connected;
    }

    /// Why the policy in force is too old to use, or None when it is fresh enough.
    pub fn policy_stale(&self, why: Option<String>) {
        self.lock().policy_stale = why;
    }

    /// Why the agent is unhealthy: every reason, or none. Healthy means: Docker's event
    /// stream is connected, a policy is in force (Consul's, or a snapshot within
    /// `--max-policy-age`), and no load is stuck.
    pub fn unhealthy(&self) -> Vec<String> {
        let b = self.lock();
        let mut why = Vec::new();
        if !b.docker_connected {
            why.push("the docker event stream is not connected".to_owned());
        }
        if b.policy.source == Source::None {
            why.push(match &b.policy.error {
                Some(e) => format!("no policy has been read yet: {e}"),
                None => "no policy has been read yet".to_owned(),
            });
        }
        if let Some(stale) = &b.policy_stale {
            why.push(stale.clone());
        }
        why.extend(b.stuck.iter().cloned());
        why
    }

    /// A namespace whose rules had drifted was loaded again.
    pub fn drift_repaired(&self) {
        self.lock().counters.drift_repairs += 1;
    }

    /// Records the raw-socket guard's self-test: None when it holds.
    pub fn guard(&self, missing: Option<String>) {
        self.lock().guard = missing;
    }

    /// The `/status` document.
    pub fn status_json(&self) -> String {
        let mut b = self.lock();
        let now = unix_now();
        let mut containers: Vec<ContainerStatus> = b.containers.values().cloned().collect();
        for c in &mut containers {
            c.flows_last_minute = b.recent.get_mut(&c.id).map_or(0, |r| r.last_minute(now));
        }
        let doc = StatusDoc {
            version: env!("CARGO_PKG_VERSION"),
            mode: &self.mode,
            policy: &b.policy,
            policy_age_seconds: age(b.policy.fresh_at_unix),
            raw_socket_guard: b.guard.as_deref().unwrap_or("verified"),
            stuck_applies: &b.stuck,
            containers: containers.iter().collect(),
        };
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The `/metrics` document, in Prometheus text format.
    pub fn metrics(&self) -> String {
        let b = self.lock();
        let mut s = String::new();
        let pending = b
            .containers
            .values()
            .filter(|c| c.posture == "pending")
            .count();
        let closed = b.containers.values().filter(|c| c.fail_closed).count();
        let enforced = b.containers.len() - closed - pending;
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "egresstrator_containers_enforced",
            "Containers whose real ruleset is in force.",
            enforced as f64,
        );
        gauge(
            "egresstrator_containers_fail_closed",
            "Containers denied all egress because their policy could not be built or applied.",
            closed as f64,
        );
        gauge(
            "egresstrator_containers_pending",
            "Containers the agent could not look at yet (a transient Docker or namespace error); retried with backoff.",
            pending as f64,
        );
        gauge(
            "egresstrator_containers_bypassable",
            "Enforced containers whose workload could get around its firewall (NET_ADMIN, SYS_ADMIN, privileged, or no raw-socket guard).",
            b.containers.values().filter(|c| c.bypassable.is_some()).count() as f64,
        );
        gauge(
            "egresstrator_fqdn_learned_addresses",
            "Addresses allowed now because a container's own DNS answers named them for one of its name lines.",
            b.containers
                .values()
                .filter_map(|c| c.fqdn.as_ref())
                .map(|f| f.learned.len())
                .sum::<usize>() as f64,
        );
        gauge(
            "egresstrator_fqdn_learners_failed",
            "Containers with name lines whose learner could not start or stopped (their names allow nothing).",
            b.containers
                .values()
                .filter(|c| c.fqdn.as_ref().is_some_and(|f| f.error.is_some()))
                .count() as f64,
        );
        gauge(
            "egresstrator_raw_socket_guard",
            "1 when the kernel passed the raw-socket guard's self-test.",
            if b.guard.is_none() { 1.0 } else { 0.0 },
        );
        gauge(
            "egresstrator_consul_up",
            "1 when the last Consul request succeeded.",
            if b.policy.error.is_none() { 1.0 } else { 0.0 },
        );
        gauge(
            "egresstrator_policy_kv_index",
            "Consul index of the policy in use.",
            b.policy.kv_index as f64,
        );
        gauge(
            "egresstrator_policy_age_seconds",
            "Seconds since the policy in force was last known to be Consul's current one (-1: never).",
            age(b.policy.fresh_at_unix).map_or(-1.0, |a| a as f64),
        );
        let c = &b.counters;
        let mut counter = |name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "egresstrator_applies_total",
            "Rulesets committed.",
            c.applies as f64,
        );
        counter(
            "egresstrator_apply_failures_total",
            "Applies that committed nothing (namespace gone or refused).",
            c.apply_failures as f64,
        );
        counter(
            "egresstrator_fail_closed_total",
            "Deny-all rulesets committed.",
            c.fail_closed as f64,
        );
        counter(
            "egresstrator_apply_seconds_total",
            "Time spent applying rulesets.",
            c.apply_seconds_sum,
        );
        counter(
            "egresstrator_docker_events_total",
            "Container events received from Docker.",
            c.docker_events as f64,
        );
        counter(
            "egresstrator_docker_reconnects_total",
            "Reconnections to Docker's event stream.",
            c.docker_reconnects as f64,
        );
        counter(
            "egresstrator_drift_repairs_total",
            "Namespaces loaded again because their rules were changed or removed, or their interfaces changed.",
            c.drift_repairs as f64,
        );
        counter(
            "egresstrator_flows_unattributed_total",
            "Kernel log records of a namespace without an enforced container (it was leaving).",
            c.flows_unattributed as f64,
        );
        counter(
            "egresstrator_flows_dropped_total",
            "Kernel log records lost before they were attributed (a full queue or socket buffer).",
            c.flows_dropped as f64,
        );
        self.labelled(&b, &mut s);
        b.apply_seconds.write(
            &mut s,
            "egresstrator_apply_duration_seconds",
            "Time to commit a ruleset in a namespace.",
        );
        b.event_to_enforced_seconds.write(
            &mut s,
            "egresstrator_event_to_enforced_seconds",
            "From Docker's start event to the first ruleset committed in the container's namespace.",
        );
        b.docker_event_delay_seconds.write(
            &mut s,
            "egresstrator_docker_event_delay_seconds",
            "From the time Docker stamped on a container start event to the agent reading it off the stream.",
        );
        s
    }

    /// The metrics with labels, and the process's own.
    fn labelled(&self, b: &Board, s: &mut String) {
        let h = &b.counters.hooks;
        let _ = writeln!(
            s,
            "# HELP egresstrator_hook_requests_total Runtime hook requests by outcome.\n\
             # TYPE egresstrator_hook_requests_total counter"
        );
        for (outcome, v) in [
            ("answered", h.answered),
            ("timed_out", h.timed_out),
            ("fell_back", h.fell_back),
        ] {
            let _ = writeln!(
                s,
                "egresstrator_hook_requests_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
        for (name, help, audit) in [
            (
                "egresstrator_denied_flows_total",
                "Connections refused, as the kernel's rate-limited log reported them, per enforced container.",
                false,
            ),
            (
                "egresstrator_audited_flows_total",
                "Connections an audit-mode ruleset let through where it would have refused, per enforced container.",
                true,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for c in b.containers.values().filter(|c| c.posture != "pending") {
                let v = if audit { c.audited_flows } else { c.denied_flows };
                let _ = writeln!(
                    s,
                    "{name}{{id=\"{}\",name=\"{}\"}} {v}",
                    label(crate::docker::short_id(&c.id)),
                    label(&c.name)
                );
            }
        }
        let source = serde_json::to_value(b.policy.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "# HELP egresstrator_policy_source Where the policy in force comes from (consul, snapshot or none).\n\
             # TYPE egresstrator_policy_source gauge\n\
             egresstrator_policy_source{{source=\"{}\"}} 1",
            label(&source)
        );
        let _ = writeln!(
            s,
            "# HELP egresstrator_build_info The running egresstrator's version.\n\
             # TYPE egresstrator_build_info gauge\n\
             egresstrator_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let (rss, fds) = process_usage();
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        if let Some(rss) = rss {
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss as f64,
            );
        }
        if let Some(fds) = fds {
            gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                fds as f64,
            );
        }
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            started,
        );
    }
}

/// Serves `/status`, `/metrics`, `/healthz` and `/monitor` until the task is dropped.
pub async fn serve(listener: TcpListener, board: Arc<StatusBoard>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let board = board.clone();
        tokio::spawn(async move {
            let _ = respond(stream, &board).await;
        });
    }
}

/// Reads a request's head (bounded in size and time).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Streams flows to a `/monitor` client, one JSON line each, until it goes away.
async fn monitor(mut stream: TcpStream, board: &StatusBoard) -> std::io::Result<()> {
    let mut rx = board.subscribe();
    stream
        .write_all(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut probe = [0u8; 64];
    loop {
        let line = tokio::select! {
            r = rx.recv() => match r {
                Ok(record) => serde_json::to_string(&*record).unwrap_or_default(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    format!("{{\"missed\":{n}}}")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // The client closed its side (or sent more than a request): end.
            r = stream.read(&mut probe) => match r {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        stream.write_all(line.as_bytes()).await?;
        stream.write_all(b"\n").await?;
    }
}

async fn respond(mut stream: TcpStream, board: &StatusBoard) -> std::io::Result<()> {
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let buf = head;
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/status") => ("200 OK", "application/json", board.status_json()),
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", board.metrics()),
        ("GET", "/monitor") => return monitor(stream, board).await,
        ("GET", "/healthz") => {
            let why = board.unhealthy();
            if why.is_empty() {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("{}\n", why.join("\n")),
                )
            }
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.0 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, name: &str) -> ContainerStatus {
        ContainerStatus {
            id: id.into(),
            name: name.into(),
            acls: vec!["web".into()],
            posture: "allowlist".into(),
            hash: "h".into(),
            fail_closed: false,
            error: None,
            start_event_unix_nano: Some(1_000_000_000),
            applied_at_unix_nano: 1_004_000_000,
            apply_count: 0,
            last_apply_ms: 1.0,
            bypassable: None,
            denied_flows: 0,
            audited_flows: 0,
            flows_last_minute: 0,
            fqdn: None,
        }
    }

    /// A start seen in Docker's record is enforced before its event: the event, when it
    /// comes, is shown in the status and counted once, as 0 s; a later one changes nothing.
    #[test]
    fn a_start_event_after_the_commit_is_recorded_once() {
        let board = StatusBoard::new("local");
        let id = "c".repeat(64);
        let mut early = container(&id, "web");
        early.start_event_unix_nano = None;
        board.applied(early, Duration::from_millis(2));
        let count = |board: &StatusBoard| {
            board
                .metrics()
                .lines()
                .find_map(|l| l.strip_prefix("egresstrator_event_to_enforced_seconds_count "))
                .map(str::to_owned)
        };
        assert_eq!(count(&board).as_deref(), Some("0"));
        board.start_event(&id, 1_005_000_000);
        board.start_event(&id, 1_009_000_000);
        board.start_event("unknown", 1);
        let b = board.lock();
        assert_eq!(b.containers[&id].start_event_unix_nano, Some(1_005_000_000));
        assert_eq!(b.event_to_enforced_seconds.count, 1);
        assert_eq!(b.event_to_enforced_seconds.sum, 0.0);
        assert!(!b.containers.contains_key("unknown"));
    }

    /// The exposition parses with an independent Prometheus text parser, every sample
    /// belongs to a declared family, and the histograms are consistent.
    #[test]
    fn metrics_are_valid_prometheus_exposition() {
        let board = StatusBoard::new("local");
        board.applied(
            container("a".repeat(64).as_str(), "web"),
            Duration::from_millis(2),
        );
        board.applied(
            container(&"b".repeat(64), "odd\"name\\x"),
            Duration::from_millis(30),
        );
        assert!(board.flow(&"a".repeat(64), false));
        assert!(board.flow(&"a".repeat(64), false));
        assert!(board.flow(&"b".repeat(64), true));
        assert!(!board.flow("gone", false));
        board.hook(HookOutcome::Answered);
        board.hook(HookOutcome::FellBack);
        board.docker_start_event(Duration::from_millis(30));
        let text = board.metrics();

        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .unwrap_or_else(|| panic!("no sample {name} {label:?}\n{text}"))
        };
        let short_a = "a".repeat(12);
        assert_eq!(
            value(
                "egresstrator_denied_flows_total",
                Some(("id", short_a.as_str()))
            ),
            2.0
        );
        let short_b = "b".repeat(12);
        assert_eq!(
            value(
                "egresstrator_audited_flows_total",
                Some(("id", short_b.as_str()))
            ),
            1.0
        );
        assert_eq!(value("egresstrator_flows_unattributed_total", None), 1.0);
        assert_eq!(
            value(
                "egresstrator_hook_requests_total",
                Some(("outcome", "fell_back"))
            ),
            1.0
        );
        assert_eq!(
            value(
                "egresstrator_build_info",
                Some(("version", env!("CARGO_PKG_VERSION")))
            ),
            1.0
        );
        assert!(value("process_open_fds", None) > 0.0);
        assert!(value("process_resident_memory_bytes", None) > 0.0);

        // Histograms: cumulative buckets, +Inf equals the count, 4 ms lands at le=0.005.
        let hist = scrape
            .samples
            .iter()
            .find(|s| s.metric == "egresstrator_event_to_enforced_seconds")
            .expect("histogram");
        let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
            panic!("not a histogram: {:?}", hist.value);
        };
        assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!(at(0.0025), Some(0.0));
        assert_eq!(at(0.005), Some(2.0), "{text}");
        assert_eq!(at(f64::INFINITY), Some(2.0));

        // A start event read 30 ms after its timestamp: above 25 ms, within 50 ms.
        let delay = scrape
            .samples
            .iter()
            .find(|s| s.metric == "egresstrator_docker_event_delay_seconds")
            .expect("delay histogram");
        let prometheus_parse::Value::Histogram(buckets) = &delay.value else {
            panic!("not a histogram: {:?}", delay.value);
        };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!((at(0.025), at(0.05)), (Some(0.0), Some(1.0)), "{text}");

        // Every sample's family is declared with HELP and TYPE before it.
        let mut declared = std::collections::BTreeSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(declared.insert(name.to_owned()), "{name} declared twice");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().expect("name");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} before its TYPE");
            }
        }
    }
}
