//! egresstrator-fleet: what a fleet of agents costs Consul (issue 19).
//!
//! Runs N simulated hosts in this process, each with the agent's own policy watcher
//! (`egresstrator::policy_watch::spawn`, its own `Consul` client and connection pool, its
//! own state dir), against a Consul dev agent this program starts on ports of its own (never
//! the shared one on 8500) behind a counting TCP proxy. It changes one key under the kv-path
//! and measures how long until every watcher holds the new value, how many HTTP requests and
//! how much of Consul's CPU each change costs (with 10 and with 100 containers per host),
//! the same while a service flaps, what a Consul restart looks like from the fleet, and
//! convergence against the number of hosts. Timings are reported, never asserted.

#[path = "../fleet/agents.rs"]
mod agents;
#[path = "../fleet/proxy.rs"]
mod proxy;
#[path = "../fleet/server.rs"]
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use agents::{Fleet, CHANGING};
use proxy::{Counts, Proxy};
use server::{Admin, OwnConsul, Ports};

/// Our own kv-path on our own Consul.
const KV_PATH: &str = "egt-fleet/acl/";
/// Services every host needs (the containers' ACLs reference them).
const SERVICES: usize = 5;
/// ACL keys `ctr-000`… under the kv-path: one per container of the largest case, so the
/// KV content is the same whether hosts run 10 or 100 containers.
const MAX_CONTAINERS: usize = 100;
/// The flapping service: an extra instance registered and deregistered 5 times a second.
const FLAP_HZ: u32 = 5;

#[derive(Parser, Debug)]
#[command(
    name = "egresstrator-fleet",
    about = "What a fleet of egresstrator agents costs Consul: convergence, requests and CPU per policy change, a flapping service, a Consul restart"
)]
struct Args {
    /// One JSON object on stdout; the human table goes to stderr
    #[arg(long)]
    json: bool,
    /// Small counts for CI (20 agents, 3 changes, short flap and a restart; < 60 s)
    #[arg(long)]
    quick: bool,
    /// Number of simulated hosts (agents) for the main measure
    #[arg(long)]
    agents: Option<usize>,
    /// The consul binary for our own dev agent
    #[arg(long, default_value = "consul")]
    consul_bin: PathBuf,
    /// Added to our consul's ports (HTTP 18500, server 18300, serf 18301/18302)
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
}

struct Plan {
    agents: usize,
    by_agents: Vec<usize>,
    changes: usize,
    by_changes: usize,
    spacing: Duration,
    idle: Duration,
    flap_changes: usize,
    /// How long our consul stays down in the restart measure.
    restart_down: Duration,
}

impl Plan {
    fn new(args: &Args) -> Result<Plan> {
        let agents = args.agents.unwrap_or(if args.quick { 20 } else { 200 });
        if agents == 0 {
            bail!("--agents must be at least 1");
        }
        let base: &[usize] = if args.quick {
            &[5, 10, 20]
        } else {
            &[10, 50, 100, 200]
        };
        let mut by_agents: Vec<usize> = base.iter().copied().filter(|&n| n < agents).collect();
        by_agents.push(agents);
        Ok(if args.quick {
            Plan {
                agents,
                by_agents,
                changes: 3,
                by_changes: 3,
                spacing: Duration::from_millis(700),
                idle: Duration::from_secs(1),
                flap_changes: 3,
                restart_down: Duration::from_secs(2),
            }
        } else {
            Plan {
                agents,
                by_agents,
                changes: 10,
                by_changes: 5,
                spacing: Duration::from_secs(1),
                idle: Duration::from_secs(3),
                flap_changes: 10,
                restart_down: Duration::from_secs(5),
            }
        })
    }
}

/// Removes the run's temp dir (state dirs, consul log) however the run ends.
struct TempRoot(PathBuf);

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Bench {
    consul: OwnConsul,
    proxy: Proxy,
    admin: Admin,
    root: PathBuf,
    counter: AtomicU64,
    value: std::sync::Mutex<String>,
}

/// What a series of changes measured.
#[derive(Default)]
struct Changes {
    /// Per change: ms from the PUT until the last watcher held the value.
    all_ms: Vec<f64>,
    /// Per change and watcher: ms until that watcher held it.
    each_ms: Vec<f64>,
    not_converged: usize,
    /// Requests (counted by the proxy) per change window (PUT to next PUT).
    requests: Vec<Counts>,
    cpu_ms: Vec<f64>,
}

impl Bench {
    fn proxy_addr(&self) -> String {
        self.proxy.addr.to_string()
    }

    fn current(&self) -> String {
        match self.value.lock() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn next_value(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let v = format!("10.200.{}.{}/32:tcp/443", (n / 256) % 256, n % 256);
        match self.value.lock() {
            Ok(mut cur) => *cur = v.clone(),
            Err(p) => *p.into_inner() = v.clone(),
        }
        v
    }

    /// Writes the policy (every container's ACL, the changing key) and the 5 services.
    async fn seed(&self) -> Result<()> {
        for j in 0..MAX_CONTAINERS {
            let acl = format!(
                "# container {j}'s own ACL\n10.{}.{}.0/24:tcp/443\nfleet-svc-{}\n",
                1 + j / 256,
                j % 256,
                j % SERVICES
            );
            self.admin
                .put(&format!("{KV_PATH}ctr-{j:03}"), &acl)
                .await?;
        }
        self.admin
            .put(&format!("{KV_PATH}{CHANGING}"), &self.current())
            .await?;
        for k in 0..SERVICES {
            self.admin
                .register(
                    &format!("fleet-svc-{k}-a"),
                    &format!("fleet-svc-{k}"),
                    &format!("10.9.0.{}", k + 1),
                    8000 + k as u16,
                )
                .await?;
        }
        Ok(())
    }

    async fn start_fleet(&self, agents: usize, containers: usize) -> Result<Fleet> {
        let fleet = Fleet::start(
            agents,
            containers,
            &self.proxy_addr(),
            KV_PATH,
            &self.root,
            &format!("fleet-{agents}-{containers}"),
        )?;
        fleet
            .wait_ready(&self.current(), SERVICES, Duration::from_secs(60))
            .await
            .with_context(|| format!("starting {agents} watchers with {containers} containers"))?;
        // Let every watch's second query (the first blocking one, which the watcher's rate
        // limit starts up to 1.5 × MIN_QUERY_INTERVAL after the first) settle in.
        tokio::time::sleep(egresstrator::policy_watch::MIN_QUERY_INTERVAL * 2).await;
        Ok(fleet)
    }

    /// `n` changes of the changing key, `spacing` apart.
    async fn changes(&self, fleet: &Fleet, n: usize, spacing: Duration) -> Result<Changes> {
        let mut out = Changes::default();
        for _ in 0..n {
            let views = fleet.views();
            let c0 = self.proxy.stats.counts();
            let cpu0 = self.consul.cpu_ms()?;
            let value = self.next_value();
            let t0 = Instant::now();
            self.admin
                .put(&format!("{KV_PATH}{CHANGING}"), &value)
                .await?;
            let waits = views.into_iter().map(|mut rx| {
                let value = value.clone();
                async move {
                    let seen = tokio::time::timeout(
                        Duration::from_secs(10),
                        rx.wait_for(|v| agents::holds(v, &value)),
                    )
                    .await;
                    matches!(seen, Ok(Ok(_))).then(|| t0.elapsed().as_secs_f64() * 1000.0)
                }
            });
            let seen = futures_util::future::join_all(waits).await;
            let mut last = 0f64;
            for s in seen {
                match s {
                    Some(ms) => {
                        out.each_ms.push(ms);
                        last = last.max(ms);
                    }
                    None => out.not_converged += 1,
                }
            }
            out.all_ms.push(last);
            let rest = spacing.saturating_sub(t0.elapsed());
            tokio::time::sleep(rest).await;
            out.requests.push(self.proxy.stats.counts().since(&c0));
            out.cpu_ms.push(self.consul.cpu_ms()? - cpu0);
        }
        Ok(out)
    }

    /// Requests per second and Consul CPU (ms per s) while nothing changes.
    async fn idle(&self, d: Duration) -> Result<(f64, f64)> {
        let c0 = self.proxy.stats.counts();
        let cpu0 = self.consul.cpu_ms()?;
        let t0 = Instant::now();
        tokio::time::sleep(d).await;
        let s = t0.elapsed().as_secs_f64();
        let req = self.proxy.stats.counts().since(&c0).total() as f64 / s;
        Ok((req, (self.consul.cpu_ms()? - cpu0) / s))
    }

    /// Changes while an extra instance of fleet-svc-4 is registered and deregistered
    /// `FLAP_HZ` times a second (two catalog changes per cycle).
    async fn flapping(&self, fleet: &Fleet, n: usize, spacing: Duration) -> Result<Value> {
        let admin = self.admin.clone();
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (ops2, errors2) = (ops.clone(), errors.clone());
        let flapper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500 / u64::from(FLAP_HZ)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut up = false;
            loop {
                tick.tick().await;
                let r = if up {
                    admin.deregister("fleet-svc-4-flap").await
                } else {
                    admin
                        .register("fleet-svc-4-flap", "fleet-svc-4", "10.9.0.99", 8099)
                        .await
                };
                up = !up;
                match r {
                    Ok(()) => ops2.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors2.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        let measured = async {
            tokio::time::sleep(Duration::from_secs(1)).await; // warm up
            let c0 = self.proxy.stats.counts();
            let cpu0 = self.consul.cpu_ms()?;
            let ops0 = ops.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let ch = self.changes(fleet, n, spacing).await?;
            let secs = t0.elapsed().as_secs_f64();
            let req = self.proxy.stats.counts().since(&c0);
            let cpu = self.consul.cpu_ms()? - cpu0;
            let catalog = (ops.load(Ordering::Relaxed) - ops0) as f64 / secs;
            Ok::<_, anyhow::Error>((ch, secs, req, cpu, catalog))
        }
        .await;
        flapper.abort();
        let _ = flapper.await;
        self.admin.deregister("fleet-svc-4-flap").await?;
        let (ch, secs, req, cpu, catalog) = measured?;
        let (p50, max) = p50_max(&ch.all_ms);
        Ok(json!({
            "fleet_kv_converged_ms": { "p50": p50, "max": max, "n": ch.all_ms.len(),
                "not_converged": ch.not_converged },
            "consul_cpu_percent": cpu / (secs * 1000.0) * 100.0,
            "requests_per_second": req.total() as f64 / secs,
            "health_requests_per_second": req.health as f64 / secs,
            "kv_requests_per_second": req.kv as f64 / secs,
            "requests_per_change": mean(ch.requests.iter().map(|c| c.total() as f64)),
            "catalog_changes_per_second": catalog,
            "flap_errors": errors.load(Ordering::Relaxed),
            "duration_s": secs,
        }))
    }
}

fn policy_source_consul() -> egresstrator::policy_watch::Source {
    egresstrator::policy_watch::Source::Consul
}

/// The largest number of arrivals in any interval of length `window` (sliding, so no
/// alignment hides a burst).
fn peak_per_window(times: &[Duration], window: Duration) -> usize {
    let mut t: Vec<Duration> = times.to_vec();
    t.sort();
    let mut peak = 0;
    let mut lo = 0;
    for (hi, &end) in t.iter().enumerate() {
        while t.get(lo).is_some_and(|&start| end - start >= window) {
            lo += 1;
        }
        peak = peak.max(hi + 1 - lo);
    }
    peak
}

fn p50_max(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let p50 = s.get((s.len() - 1) / 2).copied().unwrap_or(0.0);
    (p50, s.last().copied().unwrap_or(0.0))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn machine(consul_version: &str) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_default();
    let mem_mb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": os,
        "mem_total_mb": mem_mb,
        "consul": consul_version,
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egresstrator-fleet: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let res = rt.block_on(async {
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Dropping the runtime here, after `run`'s guards, kills our consul and removes the
    // temp dir on every path.
    drop(rt);
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresstrator-fleet: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(args)?;
    let root = std::env::temp_dir().join(format!("egt-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create temp dir {}", root.display()))?;
    let _root_guard = TempRoot(root.clone());
    let ports = Ports::with_offset(args.port_offset);
    let log = root.join("consul.log");
    let consul = OwnConsul::start(&args.consul_bin, ports, log.clone())
        .await
        .map_err(|e| match log_tail(&log) {
            Some(tail) => anyhow::anyhow!("{e:#}\n{tail}"),
            None => e,
        })?;
    let upstream: SocketAddr = consul.http_addr().parse().context("our consul's address")?;
    let proxy = Proxy::start(upstream).await?;
    let admin = Admin::new(&consul.http_addr())?;
    let mut bench = Bench {
        consul,
        proxy,
        admin,
        root: root.clone(),
        counter: AtomicU64::new(0),
        value: std::sync::Mutex::new(String::new()),
    };
    bench.next_value();
    bench.seed().await?;
    progress(
        args,
        &format!(
            "our consul on {} (pid {:?}), counting proxy on {}",
            bench.consul.http_addr(),
            bench.consul.pid(),
            bench.proxy.addr
        ),
    );

    // Convergence against the number of hosts (the main size comes from the main run).
    let mut by_agents = Vec::new();
    for &n in plan.by_agents.iter().filter(|&&n| n != plan.agents) {
        let fleet = bench.start_fleet(n, 10).await?;
        let ch = bench.changes(&fleet, plan.by_changes, plan.spacing).await?;
        drop(fleet);
        let (p50, max) = p50_max(&ch.all_ms);
        progress(
            args,
            &format!("{n} agents: converged p50 {p50:.1} ms, max {max:.1} ms"),
        );
        by_agents.push(json!({ "agents": n, "p50_ms": p50, "max_ms": max,
            "changes": ch.all_ms.len(), "not_converged": ch.not_converged }));
    }

    // The main fleet, 10 containers per host.
    let fleet = bench.start_fleet(plan.agents, 10).await?;
    let (idle_rps, idle_cpu) = bench.idle(plan.idle).await?;
    let main = bench.changes(&fleet, plan.changes, plan.spacing).await?;
    let (p50, max) = p50_max(&main.all_ms);
    progress(
        args,
        &format!(
            "{} agents × 10 containers: converged p50 {p50:.1} ms, max {max:.1} ms",
            plan.agents
        ),
    );
    by_agents.push(json!({ "agents": plan.agents, "p50_ms": p50, "max_ms": max,
        "changes": main.all_ms.len(), "not_converged": main.not_converged }));
    let flapping = bench
        .flapping(&fleet, plan.flap_changes, plan.spacing)
        .await?;
    progress(args, &format!("flapping: {flapping}"));

    drop(fleet);

    // The same hosts with 100 containers each; then the restart, on this fleet (last, so
    // that every other measure ran against the same consul process).
    let fleet100 = bench.start_fleet(plan.agents, 100).await?;
    let c100 = bench.changes(&fleet100, plan.changes, plan.spacing).await?;
    let (p50_100, max_100) = p50_max(&c100.all_ms);
    progress(
        args,
        &format!(
            "{} agents × 100 containers: converged p50 {p50_100:.1} ms, max {max_100:.1} ms",
            plan.agents
        ),
    );
    let restart = restart(&mut bench, &fleet100, plan.restart_down).await?;
    progress(args, &format!("restart: {restart}"));
    drop(fleet100);
    by_agents.sort_by_key(|v| v.get("agents").and_then(Value::as_u64).unwrap_or(0));

    let req = |c: &Changes| mean(c.requests.iter().map(|r| r.total() as f64));
    let kind = |c: &Changes, f: fn(&Counts) -> u64| mean(c.requests.iter().map(|r| f(r) as f64));
    let window_s = plan.spacing.as_secs_f64();
    let (each_p50, each_max) = p50_max(&main.each_ms);
    let report = json!({
        "machine": machine(&bench.consul.version),
        "counts": {
            "agents": plan.agents,
            "containers_per_agent": [10, 100],
            "services_needed_per_agent": SERVICES,
            "kv_keys": MAX_CONTAINERS + 1,
            "blocking_queries_per_agent": 1 + SERVICES,
            "changes": plan.changes,
            "change_spacing_ms": plan.spacing.as_millis() as u64,
            "by_agents": plan.by_agents,
            "by_agents_changes": plan.by_changes,
            "flap_hz": FLAP_HZ,
            "quick": args.quick,
        },
        "notes": notes(),
        "fleet_kv_converged_ms": {
            "p50": p50, "max": max, "n": main.all_ms.len(),
            "not_converged": main.not_converged,
            "per_agent_p50": each_p50, "per_agent_max": each_max,
            "containers_100": { "p50": p50_100, "max": max_100, "n": c100.all_ms.len(),
                "not_converged": c100.not_converged },
        },
        "fleet_consul_requests_per_change": {
            "containers_10": req(&main),
            "containers_100": req(&c100),
            "per_agent_containers_10": req(&main) / plan.agents as f64,
            "per_agent_containers_100": req(&c100) / plan.agents as f64,
            "kv_containers_10": kind(&main, |c| c.kv),
            "health_containers_10": kind(&main, |c| c.health),
            "kv_containers_100": kind(&c100, |c| c.kv),
            "health_containers_100": kind(&c100, |c| c.health),
            "idle_requests_in_same_window": idle_rps * window_s,
            "window_ms": plan.spacing.as_millis() as u64,
            "counted_by": "a counting TCP proxy in front of our own consul: HTTP request header blocks on the wire, PUT to the next PUT",
        },
        "fleet_consul_cpu_ms_per_change": {
            "containers_10": mean(main.cpu_ms.iter().copied()),
            "containers_100": mean(c100.cpu_ms.iter().copied()),
            "idle_in_same_window": idle_cpu * window_s,
            "measured_by": "/proc/<consul pid>/stat utime+stime, PUT to the next PUT (clock-tick resolution, 10 ms)",
        },
        "flapping": flapping,
        "restart": restart,
        "by_agents": by_agents,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let table = table(&report);
    if args.json {
        eprint!("{table}");
        println!("{report}");
    } else {
        print!("{table}");
    }
    Ok(())
}

/// Kills our Consul (SIGKILL) and starts it again; the proxy's gate stays closed until the
/// new Consul holds the same policy, so the fleet sees one outage and then the same data (as
/// after a restart with its data dir), never an empty KV.
async fn restart(bench: &mut Bench, fleet: &Fleet, down: Duration) -> Result<Value> {
    let value = bench.current();
    let t_kill = Instant::now();
    let waits: Vec<_> = fleet
        .views()
        .into_iter()
        .map(|mut rx| {
            let value = value.clone();
            tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(90), async {
                    rx.wait_for(|v| v.error.is_some()).await.ok()?;
                    let seen = Instant::now();
                    rx.wait_for(|v| {
                        v.error.is_none()
                            && v.source == policy_source_consul()
                            && agents::holds(v, &value)
                    })
                    .await
                    .ok()?;
                    Some((seen, Instant::now()))
                })
                .await;
                r.ok().flatten()
            })
        })
        .collect();
    bench.proxy.stats.set_open(false);
    bench.consul.kill().await?;
    // A dev agent is back within ~0.2 s; a real server (data dir, leader election) takes
    // seconds. Stay down at least `down` so the fleet's backoff is exercised.
    tokio::time::sleep(down).await;
    let down_at = Instant::now();
    bench.consul.spawn().await?;
    bench.seed().await?;
    let t_up = Instant::now();
    bench.proxy.stats.set_open(true);
    summarize_restart(bench, fleet, waits, t_kill, down_at, t_up).await
}

async fn summarize_restart(
    bench: &Bench,
    fleet: &Fleet,
    waits: Vec<tokio::task::JoinHandle<Option<(Instant, Instant)>>>,
    t_kill: Instant,
    down_at: Instant,
    t_up: Instant,
) -> Result<Value> {
    let mut recovered_ms = Vec::new();
    let mut seen_ms = Vec::new();
    let mut missing = 0usize;
    for w in waits {
        match w.await {
            Ok(Some((seen, t))) => {
                seen_ms.push(seen.saturating_duration_since(t_kill).as_secs_f64() * 1000.0);
                recovered_ms.push(t.saturating_duration_since(t_up).as_secs_f64() * 1000.0)
            }
            _ => missing += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t_end = Instant::now();
    let stats = &bench.proxy.stats;
    let start = stats.start();
    let times = stats.times_between(t_kill, t_end);
    let since = |t: Instant| t.saturating_duration_since(start);
    let window = Duration::from_millis(100);
    let peak_all = peak_per_window(&times, window);
    let after_up: Vec<Duration> = times
        .iter()
        .copied()
        .filter(|&t| t >= since(t_up))
        .collect();
    let peak_up = peak_per_window(&after_up, window);
    let while_down = times.len() - after_up.len();
    // When Consul's end of each open connection went away, as the proxy saw it: tells a
    // slow death of Consul from a slow reaction of the watchers.
    let closed_ms: Vec<f64> = stats
        .upstream_closed_since(t_kill)
        .iter()
        .filter(|&&t| t < since(t_up))
        .map(|t| t.saturating_sub(since(t_kill)).as_secs_f64() * 1000.0)
        .collect();
    // Requests per 250 ms from the kill on: the shape of the retries and the reconnect.
    let mut timeline = Vec::new();
    for t in &times {
        let b = (t.saturating_sub(since(t_kill)).as_millis() / 250) as usize;
        if timeline.len() <= b {
            timeline.resize(b + 1, 0usize);
        }
        if let Some(x) = timeline.get_mut(b) {
            *x += 1;
        }
    }
    let min = recovered_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let min = if min.is_finite() { min } else { 0.0 };
    let (p50, max) = p50_max(&recovered_ms);
    let watches = fleet.hosts.len() * (1 + SERVICES);
    Ok(json!({
        "reconnect_spread_ms": max - min,
        "peak_requests_per_100ms": peak_all,
        "peak_requests_per_100ms_after_consul_up": peak_up,
        "recovered_after_consul_up_ms": { "min": min, "p50": p50, "max": max },
        "outage_seen_after_kill_ms": { "p50": p50_max(&seen_ms).0, "max": p50_max(&seen_ms).1 },
        "upstream_closed_after_kill_ms": { "p50": p50_max(&closed_ms).0,
            "max": p50_max(&closed_ms).1, "n": closed_ms.len() },
        "agents_recovered": recovered_ms.len(),
        "agents_not_recovered": missing,
        "consul_down_ms": t_up.saturating_duration_since(t_kill).as_secs_f64() * 1000.0,
        "consul_start_ms": t_up.saturating_duration_since(down_at).as_secs_f64() * 1000.0,
        "requests_while_down": while_down,
        "requests_while_down_per_watch": while_down as f64 / watches.max(1) as f64,
        "requests_after_up_until_recovered_plus_1s": after_up.len(),
        "blocking_watches": watches,
        "requests_per_250ms_from_kill": timeline,
    }))
}

fn notes() -> Vec<&'static str> {
    vec![
        "every agent is the real watcher (egresstrator::policy_watch::spawn) with its own egresstrator::consul::Consul client (own reqwest pool and connections) and its own state dir, in one process; the services it watches are fed the way the agent's reconciler does (enforce::service_refs over every running container's ACL list, on every policy change)",
        "containers are simulated: container j names ACLs ctr-j (a CIDR line and service fleet-svc-(j mod 5)) and 'changing'; 10 or 100 of them need the same 5 services",
        "our own consul dev agent (started and killed by this program, HTTP on 18500+offset) so the shared one on 8500 is never touched and its CPU is ours alone",
        "requests are counted by a TCP proxy between the watchers and consul, from the HTTP header blocks on the wire (not by our code); the writer's PUTs and the flapper go to consul directly and are not counted",
        "convergence: from just before the PUT of a new value until the watcher's PolicyView (version moved) holds it, as seen by a task waiting on its watch channel; all agents share 2 cores with consul and the proxy, so scheduling delay of this machine is included",
        "requests and CPU per change are counted from one PUT to the next (the change spacing); idle_* give the background in a window of the same length",
        "flapping: an extra instance of fleet-svc-4 is registered and deregistered 5 times a second (10 catalog changes per second) while the kv changes are measured",
        "restart (on the 100-container fleet, last): consul is SIGKILLed, stays down 5 s (2 s with --quick) and is started again; the proxy refuses (counts, then closes) every request until the new consul holds the same policy again, as a consul restarting with its data would; reconnect spread is the spread of the moments each agent's view is error-free again, from the moment consul is back",
    ]
}

fn table(r: &Value) -> String {
    let g = |p: &str| -> String {
        match r.pointer(p) {
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if n.is_f64() => format!("{f:.1}"),
                _ => n.to_string(),
            },
            Some(v) => v.to_string(),
            None => "-".into(),
        }
    };
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("{k:<58} {v}\n"));
    row("agents (simulated hosts)", g("/counts/agents"));
    row(
        "kv converged, all agents: p50 / max (ms)",
        format!(
            "{} / {}",
            g("/fleet_kv_converged_ms/p50"),
            g("/fleet_kv_converged_ms/max")
        ),
    );
    row(
        "kv converged, 100 containers: p50 / max (ms)",
        format!(
            "{} / {}",
            g("/fleet_kv_converged_ms/containers_100/p50"),
            g("/fleet_kv_converged_ms/containers_100/max")
        ),
    );
    row(
        "consul requests per change, 10 / 100 containers",
        format!(
            "{} / {}",
            g("/fleet_consul_requests_per_change/containers_10"),
            g("/fleet_consul_requests_per_change/containers_100")
        ),
    );
    row(
        "  of which idle background in the same window",
        g("/fleet_consul_requests_per_change/idle_requests_in_same_window"),
    );
    row(
        "consul CPU ms per change, 10 / 100 containers",
        format!(
            "{} / {}",
            g("/fleet_consul_cpu_ms_per_change/containers_10"),
            g("/fleet_consul_cpu_ms_per_change/containers_100")
        ),
    );
    row(
        "flapping: kv converged p50 / max (ms)",
        format!(
            "{} / {}",
            g("/flapping/fleet_kv_converged_ms/p50"),
            g("/flapping/fleet_kv_converged_ms/max")
        ),
    );
    row(
        "flapping: consul requests/s, consul CPU % of one core",
        format!(
            "{} / {}",
            g("/flapping/requests_per_second"),
            g("/flapping/consul_cpu_percent")
        ),
    );
    row("restart: consul down (ms)", g("/restart/consul_down_ms"));
    row(
        "restart: reconnect spread (ms)",
        g("/restart/reconnect_spread_ms"),
    );
    row(
        "restart: peak requests per 100 ms (all / after up)",
        format!(
            "{} / {}",
            g("/restart/peak_requests_per_100ms"),
            g("/restart/peak_requests_per_100ms_after_consul_up")
        ),
    );
    if let Some(Value::Array(rows)) = r.get("by_agents") {
        for b in rows {
            let f = |k: &str| b.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            row(
                &format!("by agents: {:>4} agents p50 / max (ms)", f("agents")),
                format!("{:.1} / {:.1}", f("p50_ms"), f("max_ms")),
            );
        }
    }
    row("elapsed (s)", g("/elapsed_s"));
    s
}

fn progress(args: &Args, msg: &str) {
    let _ = args;
    eprintln!("fleet: {msg}");
}

fn log_tail(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines
        .get(lines.len().saturating_sub(15)..)
        .unwrap_or_default();
    (!tail.is_empty()).then(|| format!("our consul's log ends:\n{}", tail.join("\n")))
}
