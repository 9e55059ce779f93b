//! The results: the JSON object BENCHMARKS.md describes (plus counts, profile and notes), and the
//! human table with each target next to its measure.

use std::fmt::Write;

use serde::Serialize;

use crate::stats::{Distribution, DistributionN, MedianMax};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub quick: bool,
    pub command: Vec<String>,
    pub machine: Machine,
    pub agent: AgentInfo,
    /// The actual number of samples behind every measure.
    pub counts: Counts,
    pub event_to_enforced_ms: Option<Distribution>,
    /// The same sequential starts, from the workload's start (Docker's `State.StartedAt`) to
    /// `applied_at_unix_nano`: how long the workload ran without its policy.
    pub exposure_window_ms: Option<DistributionN>,
    /// Every sequential sample of `event_to_enforced_ms` (ms, in start order; for a CDF).
    pub event_to_enforced_samples_ms: Vec<f64>,
    /// Every sequential sample of `exposure_window_ms` (ms, in start order).
    pub exposure_window_samples_ms: Vec<f64>,
    pub burst_all_enforced_ms: Option<f64>,
    pub burst_worst_window_ms: Option<f64>,
    /// In the burst, the largest `State.StartedAt` → `applied_at` of a single container.
    pub burst_worst_exposure_ms: Option<f64>,
    /// First to last start event of the burst: how fast Docker itself started them.
    pub burst_start_events_spread_ms: Option<f64>,
    /// How late the agent read the burst's start events off Docker's stream (from the
    /// agent's `egresstrator_docker_event_delay_seconds`).
    pub burst_docker_event_delay: Option<DockerEventDelay>,
    pub apply_ms: Option<ApplyMs>,
    /// Back-to-back applies into one namespace: each waits for the kernel's cleanup of the
    /// previous commit (an RCU grace period), which fresh namespaces do not.
    pub apply_same_netns_ms: Option<ApplyMs>,
    pub kv_change_to_reenforced_ms: Option<MedianMax>,
    /// The same KV measure with 10, 50 and 100 running containers (quick: 5, 10, 20).
    pub kv_by_containers: Vec<KvByContainers>,
    pub agent_rss_mib: Option<Rss>,
    pub helper_container_ms: Option<Helper>,
    /// Every helper run of `helper_container_ms` (the `nft -f -` one), ms.
    pub helper_container_samples_ms: Vec<f64>,
    pub hook_added_start_latency_ms: Option<HookLatency>,
    /// A refused SYN (taken in the container's namespace) until its record arrived on the
    /// agent's `/monitor` stream, both on this process's monotonic clock.
    pub deny_to_monitor_ms: Option<DenyLatency>,
    /// The agent under a flood of refused UDP flows, each datagram from a new socket.
    pub deny_flood: Option<DenyFlood>,
    /// The delay holding DNS answers adds (name destinations): percentiles of answers held
    /// in an enabled container minus those of the same lookups in one that is not enabled.
    pub dns_answer_added_latency_ms: Option<FqdnLatency>,
    /// Connections right after a lookup that reached the answered address (must be 1.0).
    pub fqdn_first_connect_success: Option<f64>,
    pub ratio_helper_over_agent_p50: Option<f64>,
    /// dfw (pitkley/dfw) as a peer on the same dockerd: `State.StartedAt` → its rule naming
    /// the container's address committed in the host's `table inet dfw` (see `dfw.rs`).
    pub dfw_ms: Option<ByBurstTimeout<DfwLatency>>,
    /// dfw's CPU over each timed phase.
    pub dfw_cpu: Option<ByBurstTimeout<DfwCpu>>,
    /// dfw's `VmRSS` / `VmHWM` at the end of each phase.
    pub dfw_rss_mib: Option<ByBurstTimeout<Rss2>>,
    /// `dfw_ms.burst_timeout_0.p50 / exposure_window_ms.p50`.
    pub ratio_dfw_over_agent_p50: Option<f64>,
    /// Which dfw, how it was run, and what "in force" means for it.
    pub dfw: Option<DfwInfo>,
    /// Where the event→enforced time goes (medians, ms).
    pub profile: Option<Profile>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

/// Start events counted by the agent's delay histogram during one phase, and how many of
/// them it read more than 25 ms and more than 100 ms after Docker's timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct DockerEventDelay {
    pub events: u64,
    pub over_25_ms: u64,
    pub over_100_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub docker_version: String,
    /// 1-minute load average when the run started and when it ended: other work on the
    /// machine (compiles, tests) shows up here and in the tails.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentInfo {
    pub path: String,
    pub version: Option<String>,
    pub mode: Option<String>,
    pub backend: Option<String>,
    pub log: Option<String>,
    /// Other egresstrator agents on this host during the run (they also enforce our
    /// containers and compete for the CPU).
    pub other_agents: Vec<String>,
    /// `MALLOC_ARENA_MAX` as the agent inherited it (it changes the agent's RSS).
    pub malloc_arena_max: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub event_to_enforced: usize,
    pub event_to_enforced_warmup: usize,
    pub burst: usize,
    pub apply_reps: usize,
    pub kv_containers: usize,
    pub kv_repeats: usize,
    /// The N behind `agent_rss_mib.containers_200` (200 in a full run).
    pub rss_containers: usize,
    pub helper_runs: usize,
    /// Starts per runtime for hook_added_start_latency_ms.
    pub hook_runs: usize,
    /// Refused SYNs timed for deny_to_monitor_ms (lost ones included).
    pub deny_samples: usize,
    /// Lookups followed by a connection for fqdn_first_connect_success.
    pub fqdn_connects: usize,
    /// Sequential starts per dfw burst timeout.
    pub dfw_starts: usize,
}

/// One point of "KV convergence vs number of containers".
#[derive(Clone, Debug, Default, Serialize)]
pub struct KvByContainers {
    pub containers: usize,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// KV writes behind p50/max.
    pub writes: usize,
}

/// A dfw figure for each `--burst-timeout` it was run with.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ByBurstTimeout<T> {
    /// dfw's default, `--burst-timeout 500`.
    pub burst_timeout_500: Option<T>,
    /// `--burst-timeout 0`.
    pub burst_timeout_0: Option<T>,
}

impl<T> ByBurstTimeout<T> {
    pub fn get_mut(&mut self, burst_timeout_ms: u64) -> &mut Option<T> {
        if burst_timeout_ms == 0 {
            &mut self.burst_timeout_0
        } else {
            &mut self.burst_timeout_500
        }
    }
}

/// Start → dfw's rule in force, per sequential start.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DfwLatency {
    /// From `State.StartedAt` (the exposure window, as `exposure_window_ms`).
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub n: usize,
    /// From Docker's `start` event `timeNano` (as `event_to_enforced_ms`).
    pub from_start_event: DistributionN,
    /// Every sample from `State.StartedAt`, ms, in start order.
    pub samples_ms: Vec<f64>,
    /// How many times dfw committed its whole ruleset during the phase (one `nft -f` each).
    pub rebuilds: usize,
}

/// dfw's CPU over one timed phase (from its first start until the last rule was in force).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DfwCpu {
    /// utime + stime of the dfw process, ms.
    pub dfw_ms: f64,
    /// cutime + cstime: the `nft -f` processes it spawned and waited for, ms.
    pub nft_children_ms: f64,
    /// Wall time of the phase, ms.
    pub wall_ms: f64,
    /// (dfw + children) / wall, in % of one core.
    pub percent_of_one_core: f64,
    /// (dfw + children) per container start, ms.
    pub per_start_ms: f64,
}

/// `VmRSS` and `VmHWM` of a process, MiB.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rss2 {
    pub rss: f64,
    pub peak: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DfwInfo {
    pub path: String,
    pub version: String,
    /// The docker network its containers ran on (internal: no route off the host).
    pub network: String,
    /// Containers started per phase (all kept running until the phase ends).
    pub starts: usize,
    /// What "in force" means for dfw.
    pub in_force: String,
    /// Where its config and logs were written.
    pub work_dir: String,
}

/// What holding DNS answers costs (see `fqdn.rs`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FqdnLatency {
    /// `held.p50 - not_held.p50`.
    pub p50: Option<f64>,
    /// `held.p99 - not_held.p99`.
    pub p99: Option<f64>,
    /// Round trips of answers the learner held (each naming a new address).
    pub held: Distribution,
    /// The same lookups from a container that is not enabled.
    pub not_held: Distribution,
    /// Answers per side.
    pub samples: usize,
}

/// Refused SYN → `/monitor` record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DenyLatency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    /// Records that arrived (the percentiles are of these).
    pub samples: usize,
    /// Refused SYNs whose record did not arrive within 2 s.
    pub lost: usize,
    /// How long the refused `connect()` itself took (SYN, reject, reset), p50.
    pub connect_refused_p50_ms: Option<f64>,
    /// `{"missed":N}` lines on the stream: records the agent dropped for this reader.
    pub monitor_missed: u64,
    /// The agent's `egresstrator_flows_dropped_total` grew by this much during the samples
    /// (kernel records lost before attribution: a full queue or socket buffer).
    pub agent_flows_dropped: Option<f64>,
    /// Destination of the refused SYNs (`<gateway>:<first port>+i`).
    pub destination: String,
}

/// The agent while one container sends refused UDP datagrams, each from a new socket.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DenyFlood {
    /// How long the flood ran.
    pub seconds: f64,
    /// `sendto` calls, each on a new socket (a new flow).
    pub sent: u64,
    /// Of these, refused by the ruleset (`EPERM`), as expected.
    pub refused: u64,
    /// Other failures (socket or send); the first one is in the notes.
    pub other_errors: u64,
    /// `sent / seconds`.
    pub sent_per_sec: f64,
    /// The agent's user+system CPU over the flood and 200 ms after it, in % of one core.
    pub agent_cpu_percent: Option<f64>,
    /// The same over 1 s just before the flood.
    pub agent_cpu_percent_idle: Option<f64>,
    pub agent_rss_mib_before: Option<f64>,
    pub agent_rss_mib_after: Option<f64>,
    /// The flood's records on `/monitor` (until 1 s after it ended).
    pub records_received: u64,
    /// What the kernel's log limit lets through in that time: burst + rate × seconds.
    pub records_kernel_limit: f64,
    /// `egresstrator_flows_dropped_total` growth over the flood (and 1 s after).
    pub agent_flows_dropped: Option<f64>,
    pub destination: String,
}

/// What the runtime shim adds to `docker run` of an enabled container.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HookLatency {
    /// Percentiles of the paired differences: each start under the shim minus the plain
    /// start that follows it.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// `docker run` p50 under the shim and under plain runc, for context.
    pub shim_p50: Option<f64>,
    pub plain_p50: Option<f64>,
    /// How many pairs.
    pub pairs: usize,
    /// Whether egresstrator-runc was statically linked (`make build`), as it should be.
    pub shim_static: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BySize {
    pub rules_10: Option<f64>,
    pub rules_1000: Option<f64>,
    pub rules_10000: Option<f64>,
}

impl BySize {
    pub fn set(&mut self, n: usize, v: Option<f64>) {
        match n {
            10 => self.rules_10 = v,
            1000 => self.rules_1000 = v,
            10000 => self.rules_10000 = v,
            _ => {}
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyMs {
    /// Time inside the namespace (libnftables context + transaction), as the agent reports it.
    pub nft: BySize,
    /// The same applies timed around the call: dedicated thread start and `setns` included.
    pub nft_wall: BySize,
    /// `null` when the iptables backend could not be measured (see notes).
    pub iptables: Option<BySize>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rss {
    pub idle: Option<f64>,
    pub containers_200: Option<f64>,
    /// Of `containers_200`: RssAnon, the agent's own heap, stacks and relocated data.
    pub containers_200_anon: Option<f64>,
    /// Of `containers_200`: RssFile, program and library pages mapped from the page cache
    /// (shared, and reclaimable under memory pressure).
    pub containers_200_file: Option<f64>,
    /// VmHWM: the peak RSS of the agent over the whole run.
    pub peak: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Helper {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
    /// What the helper ran: `nft -f -`, the same script the agent loads.
    pub tool: String,
    /// The same with `iptables-restore --noflush`, the tool 0.2 ran.
    pub iptables_restore_p50: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Profile {
    /// Docker's start event (`timeNano`) until this benchmark's own event subscriber got it.
    pub docker_event_delivery_ms: Option<f64>,
    /// One `GET /containers/<id>/json` from this process while dockerd is idle (the agent's
    /// own inspect, right after a start, is slower: dockerd is still busy with that start).
    pub docker_inspect_idle_ms: Option<f64>,
    /// One recursive read of the kv-path from this process. Not on the start path: the
    /// agent keeps the policy from its Consul watch; it is what a KV change costs first.
    pub consul_kv_read_ms: Option<f64>,
    /// Compile and render of the benchmark's ACL in-process.
    pub compile_render_ms: Option<f64>,
    /// The agent's `last_apply_ms`: time inside the namespace.
    pub agent_apply_in_netns_ms: Option<f64>,
    /// `took_ms` from the agent's log lines for the sequential containers.
    pub agent_took_ms: Option<f64>,
    /// event→enforced p50 minus delivery, idle inspect, compile+render and apply: the
    /// inspect's extra time under a start, task hand-offs, thread start, CPU contention
    /// with dockerd/containerd/runc on 2 cores.
    pub unattributed_ms: Option<f64>,
    /// The samples at or above p95: where the tail's time goes.
    pub slow_tail: Option<Tail>,
    /// With --profile: each step's median, from the agent's debug log.
    pub agent_log_split: Option<crate::logsplit::Split>,
    /// Sequential containers whose status showed more than one apply.
    pub reapplied: usize,
    /// Largest difference between the agent's `start_event_unix_nano` and this process's
    /// own `timeNano` for the same container (should be 0).
    pub start_event_mismatch_max_ms: Option<f64>,
    /// Containers the agent reported without a start event time (found by listing).
    pub without_start_event: usize,
    /// Containers the agent failed closed during the timed phases.
    pub fail_closed: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Tail {
    pub samples: usize,
    pub event_to_enforced_ms: Option<f64>,
    pub docker_event_delivery_ms: Option<f64>,
    pub agent_apply_in_netns_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub measure: String,
    pub target: String,
    pub value: Option<f64>,
    /// `null` when not measured.
    pub met: Option<bool>,
}

/// Fills `report.targets` from the measures (BENCHMARKS.md's targets).
pub fn judge(report: &mut Report) {
    let e2e = report.event_to_enforced_ms.as_ref();
    let le = |v: Option<f64>, limit: f64| v.map(|v| v <= limit);
    let ge = |v: Option<f64>, limit: f64| v.map(|v| v >= limit);
    let p50 = e2e.and_then(|d| d.p50);
    let p99 = e2e.and_then(|d| d.p99);
    let nft10k = report.apply_ms.as_ref().and_then(|a| a.nft.rules_10000);
    let kv_max = report
        .kv_change_to_reenforced_ms
        .as_ref()
        .and_then(|k| k.max);
    let rss = report.agent_rss_mib.as_ref().and_then(|r| r.containers_200);
    let deny_p50 = report.deny_to_monitor_ms.as_ref().and_then(|d| d.p50);
    let dns_p50 = report
        .dns_answer_added_latency_ms
        .as_ref()
        .and_then(|d| d.p50);
    let c = &report.counts;
    let t = |measure: String, target: &str, value: Option<f64>, met: Option<bool>| Target {
        measure,
        target: target.to_string(),
        value,
        met,
    };
    report.targets = vec![
        t("event→enforced p50 (ms)".into(), "≤ 5", p50, le(p50, 5.0)),
        t("event→enforced p99 (ms)".into(), "≤ 25", p99, le(p99, 25.0)),
        t(
            "helper p50 / agent p50".into(),
            "≥ 20×",
            report.ratio_helper_over_agent_p50,
            ge(report.ratio_helper_over_agent_p50, 20.0),
        ),
        t(
            "10,000-CIDR apply, nft (ms)".into(),
            "≤ 100",
            nft10k,
            le(nft10k, 100.0),
        ),
        t(
            format!("KV change → {} re-enforced, max (ms)", c.kv_containers),
            "≤ 1000",
            kv_max,
            le(kv_max, 1000.0),
        ),
        t(
            format!("agent RSS, {} enforced (MiB)", c.rss_containers),
            "≤ 30",
            rss,
            le(rss, 30.0),
        ),
        t(
            "refused SYN → monitor record p50 (ms)".into(),
            "≤ 5",
            deny_p50,
            le(deny_p50, 5.0),
        ),
        t(
            "DNS answer added latency p50 (ms)".into(),
            "≤ 1",
            dns_p50,
            le(dns_p50, 1.0),
        ),
        t(
            format!("connect right after lookup ({} tries)", c.fqdn_connects),
            "= 1.0",
            report.fqdn_first_connect_success,
            ge(report.fqdn_first_connect_success, 1.0),
        ),
    ];
}

fn f(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".to_string(),
    }
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let c = &r.counts;
    let m = &r.machine;
    let _ = writeln!(
        s,
        "egresstrator-bench{} — {} cores ({}), {:.1} GiB, kernel {}, docker {}",
        if r.quick {
            " --quick (smaller counts)"
        } else {
            ""
        },
        m.cores,
        m.cpu,
        m.mem_gib,
        m.kernel,
        m.docker_version
    );
    let _ = writeln!(
        s,
        "load average (1 min): {} at start, {} at end",
        f(m.load_before),
        f(m.load_after)
    );
    let _ = writeln!(
        s,
        "agent {} {}",
        r.agent.path,
        r.agent.version.as_deref().unwrap_or("")
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<44} {:>10}  target", "measure", "value");
    let _ = writeln!(s, "{}", "-".repeat(74));
    let mut row = |name: String, v: Option<f64>, target: &str, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "",
        };
        let _ = writeln!(s, "{name:<44} {:>10}  {target:<8} {verdict}", f(v));
    };
    let target = |i: usize| r.targets.get(i).map(|t| (t.target.as_str(), t.met));
    let (t0, m0) = target(0).unwrap_or(("", None));
    let (t1, m1) = target(1).unwrap_or(("", None));
    let (t2, m2) = target(2).unwrap_or(("", None));
    let (t3, m3) = target(3).unwrap_or(("", None));
    let (t4, m4) = target(4).unwrap_or(("", None));
    let (t5, m5) = target(5).unwrap_or(("", None));
    let (t6, m6) = target(6).unwrap_or(("", None));
    let e = r.event_to_enforced_ms.clone().unwrap_or_default();
    let n = c.event_to_enforced;
    row(format!("event→enforced p50 ms (n={n})"), e.p50, t0, m0);
    row("event→enforced p95 ms".into(), e.p95, "", None);
    row("event→enforced p99 ms".into(), e.p99, t1, m1);
    row("event→enforced max ms".into(), e.max, "", None);
    let x = r.exposure_window_ms.clone().unwrap_or_default();
    row(
        format!("exposure StartedAt→enforced p50 ms (n={})", x.n),
        x.p50,
        "",
        None,
    );
    row("exposure StartedAt→enforced p95 ms".into(), x.p95, "", None);
    row("exposure StartedAt→enforced p99 ms".into(), x.p99, "", None);
    row("exposure StartedAt→enforced max ms".into(), x.max, "", None);
    row(
        format!("burst of {}: all enforced ms", c.burst),
        r.burst_all_enforced_ms,
        "",
        None,
    );
    row(
        format!("burst of {}: worst window ms", c.burst),
        r.burst_worst_window_ms,
        "",
        None,
    );
    row(
        format!("burst of {}: worst exposure ms", c.burst),
        r.burst_worst_exposure_ms,
        "",
        None,
    );
    row(
        format!("burst of {}: docker's start events spread ms", c.burst),
        r.burst_start_events_spread_ms,
        "",
        None,
    );
    let late = r.burst_docker_event_delay;
    row(
        format!("burst of {}: start events read > 25 ms late", c.burst),
        late.map(|l| l.over_25_ms as f64),
        "",
        None,
    );
    row(
        format!("burst of {}: start events read > 100 ms late", c.burst),
        late.map(|l| l.over_100_ms as f64),
        "",
        None,
    );
    let a = r.apply_ms.clone().unwrap_or_default();
    let same = r.apply_same_netns_ms.clone().unwrap_or_default();
    row("apply nft, 10 CIDRs ms".into(), a.nft.rules_10, "", None);
    row(
        "apply nft, 1,000 CIDRs ms".into(),
        a.nft.rules_1000,
        "",
        None,
    );
    row(
        "apply nft, 10,000 CIDRs ms".into(),
        a.nft.rules_10000,
        t3,
        m3,
    );
    row(
        "apply nft, 10 CIDRs, same netns ms".into(),
        same.nft.rules_10,
        "",
        None,
    );
    let ipt = a.iptables.unwrap_or_default();
    row("apply iptables, 10 CIDRs ms".into(), ipt.rules_10, "", None);
    row(
        "apply iptables, 1,000 CIDRs ms".into(),
        ipt.rules_1000,
        "",
        None,
    );
    row(
        "apply iptables, 10,000 CIDRs ms".into(),
        ipt.rules_10000,
        "",
        None,
    );
    let kv = r.kv_change_to_reenforced_ms.clone().unwrap_or_default();
    row(
        format!("KV change → {} re-enforced p50 ms", c.kv_containers),
        kv.p50,
        "",
        None,
    );
    row(
        format!("KV change → {} re-enforced max ms", c.kv_containers),
        kv.max,
        t4,
        m4,
    );
    for k in &r.kv_by_containers {
        row(
            format!("KV by containers: {} running, p50 ms", k.containers),
            k.p50_ms,
            "",
            None,
        );
        row(
            format!("KV by containers: {} running, max ms", k.containers),
            k.max_ms,
            "",
            None,
        );
    }
    let rss = r.agent_rss_mib.clone().unwrap_or_default();
    row("agent RSS idle MiB".into(), rss.idle, "", None);
    row(
        format!("agent RSS, {} enforced MiB", c.rss_containers),
        rss.containers_200,
        t5,
        m5,
    );
    row(
        "  of which RssAnon (heap, stacks) MiB".into(),
        rss.containers_200_anon,
        "",
        None,
    );
    row(
        "  of which RssFile (mapped program, libraries) MiB".into(),
        rss.containers_200_file,
        "",
        None,
    );
    let h = r.helper_container_ms.clone().unwrap_or_default();
    row(
        format!("helper container (nft) p50 ms (n={})", c.helper_runs),
        h.p50,
        "",
        None,
    );
    row(
        "helper container (iptables-restore) p50 ms".into(),
        h.iptables_restore_p50,
        "",
        None,
    );
    row(
        "helper p50 / agent p50".into(),
        r.ratio_helper_over_agent_p50,
        t2,
        m2,
    );
    let dfw = r.dfw_ms.clone().unwrap_or_default();
    let cpu = r.dfw_cpu.clone().unwrap_or_default();
    let dfw_rss = r.dfw_rss_mib.clone().unwrap_or_default();
    for (bt, d, c, m) in [
        (
            500,
            dfw.burst_timeout_500,
            cpu.burst_timeout_500,
            dfw_rss.burst_timeout_500,
        ),
        (
            0,
            dfw.burst_timeout_0,
            cpu.burst_timeout_0,
            dfw_rss.burst_timeout_0,
        ),
    ] {
        let d = d.unwrap_or_default();
        row(
            format!("dfw bt={bt}: StartedAt→rule p50 ms (n={})", d.n),
            d.p50,
            "",
            None,
        );
        row(
            format!("dfw bt={bt}: StartedAt→rule p99 ms"),
            d.p99,
            "",
            None,
        );
        row(
            format!("dfw bt={bt}: StartedAt→rule max ms"),
            d.max,
            "",
            None,
        );
        row(
            format!("dfw bt={bt}: start event→rule p50 ms"),
            d.from_start_event.p50,
            "",
            None,
        );
        row(
            format!("dfw bt={bt}: CPU per start ms (+nft)"),
            c.as_ref().map(|c| c.per_start_ms),
            "",
            None,
        );
        row(
            format!("dfw bt={bt}: RSS MiB"),
            m.as_ref().map(|m| m.rss),
            "",
            None,
        );
    }
    row(
        "dfw bt=0 p50 / agent exposure p50".into(),
        r.ratio_dfw_over_agent_p50,
        "",
        None,
    );
    let hk = r.hook_added_start_latency_ms.clone().unwrap_or_default();
    row(
        format!(
            "runtime hook adds to docker run, p50 ms ({} pairs)",
            c.hook_runs
        ),
        hk.p50,
        "≤ 10",
        hk.p50.map(|v| v <= 10.0),
    );
    row("runtime hook adds, p99 ms".into(), hk.p99, "", None);
    let d = r.deny_to_monitor_ms.clone().unwrap_or_default();
    row(
        format!(
            "refused SYN → monitor p50 ms (n={}, lost {})",
            d.samples, d.lost
        ),
        d.p50,
        t6,
        m6,
    );
    row("refused SYN → monitor p99 ms".into(), d.p99, "", None);
    row("refused SYN → monitor max ms".into(), d.max, "", None);
    let dn = r.dns_answer_added_latency_ms.clone().unwrap_or_default();
    row(
        format!("DNS answer added latency p50 ms (n={})", dn.samples),
        dn.p50,
        "≤ 1",
        dn.p50.map(|v| v <= 1.0),
    );
    row("DNS answer added latency p99 ms".into(), dn.p99, "", None);
    row("DNS answer held, p50 ms".into(), dn.held.p50, "", None);
    row(
        "DNS answer not held, p50 ms".into(),
        dn.not_held.p50,
        "",
        None,
    );
    row(
        format!("connect right after lookup ({} tries)", c.fqdn_connects),
        r.fqdn_first_connect_success,
        "= 1.0",
        r.fqdn_first_connect_success.map(|v| v >= 1.0),
    );
    let fl = r.deny_flood.clone().unwrap_or_default();
    let flooded = r.deny_flood.is_some();
    let some = |v: f64| flooded.then_some(v);
    row(
        "deny flood: new flows sent per s".into(),
        some(fl.sent_per_sec),
        "",
        None,
    );
    row(
        "deny flood: agent CPU, % of one core".into(),
        fl.agent_cpu_percent,
        "",
        None,
    );
    row(
        "deny flood: agent CPU idle before, %".into(),
        fl.agent_cpu_percent_idle,
        "",
        None,
    );
    row(
        format!(
            "deny flood: records (kernel limit {:.0})",
            fl.records_kernel_limit
        ),
        some(fl.records_received as f64),
        "",
        None,
    );
    row(
        "deny flood: agent RSS before MiB".into(),
        fl.agent_rss_mib_before,
        "",
        None,
    );
    row(
        "deny flood: agent RSS after MiB".into(),
        fl.agent_rss_mib_after,
        "",
        None,
    );
    if let Some(p) = &r.profile {
        let _ = writeln!(s);
        let _ = writeln!(s, "where event→enforced goes (medians, ms):");
        let mut rows: Vec<(String, Option<f64>)> = vec![
            ("docker event delivery".into(), p.docker_event_delivery_ms),
            (
                "docker inspect (idle daemon)".into(),
                p.docker_inspect_idle_ms,
            ),
            ("compile + render".into(), p.compile_render_ms),
            (
                "apply inside the netns (agent)".into(),
                p.agent_apply_in_netns_ms,
            ),
            ("unattributed".into(), p.unattributed_ms),
            ("agent took_ms (log)".into(), p.agent_took_ms),
            (
                "consul kv read (not on the start path)".into(),
                p.consul_kv_read_ms,
            ),
        ];
        if let Some(t) = &p.slow_tail {
            rows.push((
                format!("slowest {} (≥ p95): event→enforced", t.samples),
                t.event_to_enforced_ms,
            ));
            rows.push((
                "  of which docker event delivery".into(),
                t.docker_event_delivery_ms,
            ));
            rows.push((
                "  of which apply inside the netns".into(),
                t.agent_apply_in_netns_ms,
            ));
        }
        if let Some(x) = &p.agent_log_split {
            rows.push((
                format!("--profile, {} samples (debug log on):", x.samples),
                None,
            ));
            rows.push(("  event → agent read it".into(), x.event_to_agent_ms));
            rows.push((
                format!("  → docker's record read ({} of them)", x.from_record),
                x.record_read_ms,
            ));
            rows.push(("  or → inspect sent".into(), x.agent_to_inspect_ms));
            rows.push(("  inspect".into(), x.inspect_ms));
            rows.push((
                "  record read or inspected → committed".into(),
                x.inspect_to_committed_ms,
            ));
            rows.push((
                "    of which apply inside the netns".into(),
                x.apply_in_netns_ms,
            ));
            rows.push(("  event → committed".into(), x.event_to_enforced_ms));
        }
        for (name, v) in rows {
            if name.ends_with(':') {
                let _ = writeln!(s, "  {name}");
            } else {
                let _ = writeln!(s, "  {name:<42} {:>10}", f(v));
            }
        }
    }
    let _ = writeln!(s);
    for note in &r.notes {
        let _ = writeln!(s, "note: {note}");
    }
    s
}
