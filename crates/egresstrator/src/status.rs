//! What the agent has done, for operators and benchmarks: `GET /status` (JSON, one entry per
//! enforced container with the moment its ruleset was committed) and `GET /metrics`
//! (Prometheus text).
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

use crate::policy_watch::Source;

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
}

/// Shared between the agent (writer) and the endpoint (reader).
#[derive(Debug)]
pub struct StatusBoard {
    mode: String,
    inner: Mutex<Board>,
}

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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (unix > 0).then(|| now.saturating_sub(unix))
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
        let count = b.containers.get(&status.id).map_or(0, |c| c.apply_count);
        let mut status = status;
        status.apply_count = count + 1;
        b.containers.insert(status.id.clone(), status);
    }

    pub fn apply_failed(&self) {
        self.lock().counters.apply_failures += 1;
    }

    pub fn forget(&self, id: &str) {
        self.lock().containers.remove(id);
    }

    /// Keeps only the given containers.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().containers.retain(|id, _| keep(id));
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

    /// Why the agent is unhealthy: every reason, or none.
    pub fn unhealthy(&self) -> Vec<String> {
        let b = self.lock();
        let mut why = Vec::new();
        if !b.docker_connected {
            why.push("the docker event stream is not connected".to_owned());
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
        let b = self.lock();
        let doc = StatusDoc {
            version: env!("CARGO_PKG_VERSION"),
            mode: &self.mode,
            policy: &b.policy,
            policy_age_seconds: age(b.policy.fresh_at_unix),
            raw_socket_guard: b.guard.as_deref().unwrap_or("verified"),
            stuck_applies: &b.stuck,
            containers: b.containers.values().collect(),
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
        s
    }
}

/// Serves `/status` and `/metrics` on `addr` until the task is dropped.
pub async fn serve(listener: TcpListener, board: Arc<StatusBoard>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let board = board.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), respond(stream, &board)).await;
        });
    }
}

async fn respond(mut stream: TcpStream, board: &StatusBoard) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/status") => ("200 OK", "application/json", board.status_json()),
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", board.metrics()),
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
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
