//! The benchmark run: set up, every measure in turn, and cleanup that always runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures_util::future::join_all;

use crate::agent::{self, Agent, AgentConfig, ContainerStatus, Status};
use crate::apply::{self, Netns};
use crate::consul::Consul;
use crate::docker::{self, Docker, Enable, StartEvents};
use crate::helper::{self, HelperTool};
use crate::report::{self, ApplyMs, BySize, Counts, Helper, Machine, Profile, Report, Rss};
use crate::stats::{self, now_unix_nano, ns_to_ms, round3, Distribution, DistributionN, MedianMax};
use crate::{Args, Measure};

/// Lines of the ACL every benchmark container names.
pub const SMALL_ACL_LINES: usize = 10;
/// Sizes of the generated ACLs for apply_ms.
const APPLY_SIZES: [usize; 3] = [10, 1000, 10_000];
/// Unmeasured sequential starts before the measured ones (connection setup, caches).
const WARMUP: usize = 1;
/// How long one container may take to show up as applied before the run fails.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything the run created, so that [`Context::cleanup`] can remove it.
pub struct Context {
    pub args_quick: bool,
    pub run: String,
    pub work_dir: PathBuf,
    /// Where the agent answers egresstrator-runc's hook; see [`crate::hook::socket`].
    pub hook_socket: crate::hook::HookSocket,
    pub kv_prefix: String,
    pub agent_path: PathBuf,
    pub docker: Docker,
    pub consul: Consul,
    pub agent: Option<Agent>,
    pub counts: Counts,
    pub measures: Vec<Measure>,
    pub poll: Duration,
    pub args: ArgsCopy,
    /// What the dfw measure left running or on the host so far; see [`crate::dfw`].
    pub dfw_leftovers: std::sync::Mutex<crate::dfw::Leftovers>,
    cleaned: bool,
}

/// The parts of [`Args`] the run needs after parsing.
pub struct ArgsCopy {
    pub consul: String,
    pub backend: Option<String>,
    pub agent_log_level: String,
    pub profile: bool,
    pub allow_foreign: bool,
    pub dfw: Option<PathBuf>,
    /// Running containers for each kv_by_containers point (ascending).
    pub kv_by_containers: Vec<usize>,
}

impl Context {
    pub async fn new(args: &Args, agent_path: PathBuf) -> Result<Context> {
        let q = args.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let counts = Counts {
            event_to_enforced: pick(args.starts, 200, 30),
            event_to_enforced_warmup: WARMUP,
            burst: pick(args.burst, 100, 20),
            apply_reps: pick(args.apply_reps, 11, 5),
            kv_containers: pick(args.kv_containers, 100, 20),
            kv_repeats: pick(args.kv_repeats, 5, 2),
            rss_containers: pick(args.rss_containers, 200, 40),
            helper_runs: pick(args.helper_runs, 20, 5),
            hook_runs: pick(args.hook_runs, 60, 30),
            deny_samples: pick(args.deny_samples, 200, 40),
            fqdn_connects: 0,
            dfw_starts: pick(args.dfw_starts, 50, 10),
        };
        let counts_kv = counts.kv_containers;
        let run = run_id();
        let work_dir = std::env::temp_dir().join(format!("egt-bench-{run}"));
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        let docker = Docker::connect(&run, &args.image).await?;
        let consul = Consul::new(&args.consul)?;
        let measures = [
            Measure::Apply,
            Measure::Sequential,
            Measure::Burst,
            Measure::Kv,
            Measure::Rss,
            Measure::Hook,
            Measure::Deny,
            Measure::Fqdn,
            Measure::Dfw,
            Measure::Helper,
        ]
        .into_iter()
        .filter(|m| args.wants(*m))
        .collect();
        Ok(Context {
            args_quick: q,
            hook_socket: crate::hook::socket(&work_dir),
            kv_prefix: format!("egt-bench/{run}/"),
            run,
            work_dir,
            agent_path,
            docker,
            consul,
            agent: None,
            counts,
            measures,
            poll: Duration::from_millis(args.poll_ms.max(1)),
            args: ArgsCopy {
                consul: args.consul.clone(),
                backend: args.backend.clone(),
                agent_log_level: args.agent_log_level.clone().unwrap_or_else(|| {
                    if args.profile {
                        crate::logsplit::PROFILE_LOG_FILTER.to_string()
                    } else {
                        "info".to_string()
                    }
                }),
                profile: args.profile,
                allow_foreign: args.allow_foreign,
                dfw: args.dfw.clone(),
                kv_by_containers: kv_sizes(&args.kv_by_containers, q, counts_kv),
            },
            dfw_leftovers: std::sync::Mutex::default(),
            cleaned: false,
        })
    }

    fn wants(&self, m: Measure) -> bool {
        self.measures.contains(&m)
    }

    fn acl_name(&self) -> String {
        apply::ACL.to_owned()
    }

    fn acl_key(&self) -> String {
        format!("{}{}", self.kv_prefix, apply::ACL)
    }

    fn agent(&self) -> Result<&Agent> {
        self.agent.as_ref().context("the agent is not running")
    }

    /// Stops the agent and removes every container, namespace and key of this run.
    pub async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        progress("cleaning up");
        if let Some(agent) = self.agent.take() {
            if let Err(e) = agent.stop().await {
                eprintln!("warning: {e:#}");
            }
        }
        for pid in agent::leftover_pids(&self.kv_prefix) {
            eprintln!("warning: stopping leftover agent process {pid} of this run");
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if let Ok(mut l) = self.dfw_leftovers.lock() {
            crate::dfw::cleanup_sync(&mut l);
        }
        match self.docker.remove_run().await {
            Ok(n) if n > 0 => progress(&format!("removed {n} containers")),
            Ok(_) => {}
            Err(e) => eprintln!("warning: {e:#}"),
        }
        match self.docker.list_run_networks().await {
            Ok(names) => {
                for name in names {
                    if let Err(e) = self.docker.remove_network(&name).await {
                        eprintln!("warning: {e:#}");
                    }
                }
            }
            Err(e) => eprintln!("warning: {e:#}"),
        }
        apply::delete_netns_with_prefix(&format!("egt-bench-{}-", self.run));
        if let Err(e) = self.consul.delete_prefix(&self.kv_prefix).await {
            eprintln!("warning: {e:#}");
        }
        // The agent's log stays (its path is in the report); the rest goes.
        for dir in ["helper-rootfs", "agent-state"] {
            let _ = std::fs::remove_dir_all(self.work_dir.join(dir));
        }
        self.cleaned = true;
    }
}

impl Drop for Context {
    /// Last resort when [`Context::cleanup`] did not run (a panic): synchronous, with the
    /// docker and ip tools.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        for pid in agent::leftover_pids(&self.kv_prefix) {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let label = format!("label={}={}", docker::RUN_LABEL, self.run);
        if let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .arg("rm")
                    .arg("-f")
                    .args(&ids)
                    .output();
            }
        }
        if let Ok(mut l) = self.dfw_leftovers.lock() {
            crate::dfw::cleanup_sync(&mut l);
        }
        let label = format!("label={}={}", docker::RUN_LABEL, self.run);
        if let Ok(out) = std::process::Command::new("docker")
            .args(["network", "ls", "-q", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["network", "rm", id])
                    .output();
            }
        }
        apply::delete_netns_with_prefix(&format!("egt-bench-{}-", self.run));
    }
}

/// The kv_by_containers points: as given, or 10, 50 and the KV count (quick: 5, 10 and the KV
/// count), smaller ones only below the KV count; ascending, without duplicates.
fn kv_sizes(given: &[usize], quick: bool, kv_containers: usize) -> Vec<usize> {
    let mut v: Vec<usize> = if given.is_empty() {
        let small: &[usize] = if quick { &[5, 10] } else { &[10, 50] };
        small
            .iter()
            .copied()
            .filter(|n| *n < kv_containers)
            .chain([kv_containers])
            .collect()
    } else {
        given.to_vec()
    };
    v.retain(|n| *n > 0);
    v.sort_unstable();
    v.dedup();
    v
}

fn run_id() -> String {
    let nanos = now_unix_nano() as u64;
    format!(
        "{:06x}",
        ((nanos / 1000) ^ u64::from(std::process::id())) & 0xff_ffff
    )
}

pub fn progress(msg: &str) {
    eprintln!("[egresstrator-bench] {msg}");
}

/// The whole run; returns the report (with targets judged).
pub async fn run(ctx: &mut Context) -> Result<Report> {
    let mut r = Report {
        quick: ctx.args_quick,
        command: std::env::args().collect(),
        counts: ctx.counts.clone(),
        ..Default::default()
    };
    r.agent.path = ctx.agent_path.display().to_string();
    r.agent.backend = ctx.args.backend.clone();
    r.agent.malloc_arena_max = std::env::var("MALLOC_ARENA_MAX").ok();
    r.machine = machine(&ctx.docker).await;
    ctx.docker.check_image().await?;
    ctx.consul.check().await?;
    let others = agent::other_agents(None);
    if !others.is_empty() {
        let list: Vec<String> = others.iter().map(|(p, c)| format!("{p}: {c}")).collect();
        r.notes.push(format!(
            "{} other egresstrator agent(s) ran on this host during the benchmark; they also \
             enforce its containers and compete for the CPU: {}",
            others.len(),
            list.join("; ")
        ));
        r.agent.other_agents = list;
    }
    if r.quick {
        r.notes.push(
            "quick mode: smaller counts than the full run (see counts); targets are for \
             orientation only"
                .into(),
        );
    }
    let small_acl = apply::generated_acl(SMALL_ACL_LINES);
    ctx.consul.put(&ctx.acl_key(), &small_acl).await?;

    if ctx.wants(Measure::Apply) {
        measure_apply(ctx, &mut r).await?;
    }

    let needs_agent = [
        Measure::Sequential,
        Measure::Burst,
        Measure::Kv,
        Measure::Rss,
        Measure::Hook,
        Measure::Deny,
    ]
    .iter()
    .any(|m| ctx.wants(*m));
    let mut seq = SequentialSamples::default();
    if needs_agent {
        wait_no_foreign(ctx, &mut r).await?;
        start_agent(ctx, &mut r).await?;
        let events = ctx.docker.record_starts().await?;
        if ctx.wants(Measure::Sequential) {
            seq = measure_sequential(ctx, &events, &mut r).await?;
        }
        let mut running: Vec<String> = Vec::new();
        if ctx.wants(Measure::Burst) {
            running = measure_burst(ctx, &events, &mut r).await?;
        }
        if ctx.wants(Measure::Kv) {
            // KV convergence vs number of containers: the same measure at each size,
            // ascending; the KV count's point is also kv_change_to_reenforced_ms.
            let n = ctx.counts.kv_containers;
            let mut sizes = ctx.args.kv_by_containers.clone();
            if !sizes.contains(&n) {
                sizes.push(n);
                sizes.sort_unstable();
            }
            let mut writes = 0usize;
            for size in sizes {
                shrink_to(ctx, &mut running, size).await?;
                fill_to(ctx, &mut running, size).await?;
                let samples = measure_kv(ctx, &running[..size], &small_acl, &mut writes).await?;
                let mm = MedianMax::of(&samples);
                if size == n {
                    r.kv_change_to_reenforced_ms = Some(mm.clone());
                }
                if ctx.args.kv_by_containers.contains(&size) {
                    r.kv_by_containers.push(report::KvByContainers {
                        containers: size,
                        p50_ms: mm.p50,
                        max_ms: mm.max,
                        writes: samples.len(),
                    });
                }
            }
        }
        if ctx.wants(Measure::Rss) {
            let n = ctx.counts.rss_containers;
            fill_to(ctx, &mut running, n).await?;
            let rss = r.agent_rss_mib.get_or_insert_with(Rss::default);
            // Let allocator and tasks settle after the last applies.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let agent = ctx.agent()?;
            let (now, peak, anon, file) = agent.rss_parts_mib()?;
            rss.containers_200 = Some(round3(now));
            rss.containers_200_anon = Some(round3(anon));
            rss.containers_200_file = Some(round3(file));
            rss.peak = Some(round3(peak));
            progress(&format!(
                "agent rss with {n} enforced: {now:.1} MiB (anon {anon:.1}, file {file:.1})"
            ));
        }
        if ctx.wants(Measure::Sequential) {
            let probe = match running.first() {
                Some(id) => id.clone(),
                None => {
                    fill_to(ctx, &mut running, 1).await?;
                    running[0].clone()
                }
            };
            let base = r.profile.take().unwrap_or_default();
            r.profile = Some(profile(ctx, base, &seq, &probe, &small_acl).await?);
        }
        if ctx.wants(Measure::Hook) {
            measure_hook(ctx, &mut r).await?;
        }
        // Last of the agent's measures: its flood leaves the container's log limit drained
        // and the agent's heap touched, which must not show in the other measures.
        if ctx.wants(Measure::Deny) {
            fill_to(ctx, &mut running, 1).await?;
            let id = running
                .first()
                .cloned()
                .context("no enforced container for the deny measure")?;
            let status = wait_applied(ctx.agent()?, &id, ctx.poll).await?;
            crate::deny::measure(ctx, &status, &mut r).await?;
        }
        check_fail_closed(ctx, &mut r).await;
        if let Some(agent) = ctx.agent.take() {
            agent.stop().await?;
        }
        progress(&format!("removing {} containers", running.len()));
        ctx.docker.remove_many(&running).await?;
    }

    if ctx.wants(Measure::Dfw) {
        // After the agent's measures (the agent is stopped): dfw alone acts on its containers.
        // It cannot run (not installed, say): a note with the reason, not the end of the run.
        let dfw_path = ctx.args.dfw.clone();
        if let Err(e) = crate::dfw::measure(ctx, dfw_path.as_deref(), &mut r).await {
            progress(&format!("dfw not measured: {e:#}"));
            r.notes.push(format!("dfw not measured: {e:#}"));
        }
    }

    if ctx.wants(Measure::Fqdn) {
        // Its own agent (`--fqdn-min-ttl 0s`), with the main one stopped. A failure here
        // (port 53 taken, say) is a note, not the end of the run.
        if let Err(e) = crate::fqdn::measure(ctx, &mut r).await {
            r.notes.push(format!("fqdn measures not taken: {e:#}"));
        }
    }

    if ctx.wants(Measure::Helper) {
        measure_helper(ctx, &small_acl, &mut r).await?;
    }

    if let (Some(h), Some(e)) = (
        r.helper_container_ms.as_ref().and_then(|h| h.p50),
        r.event_to_enforced_ms.as_ref().and_then(|e| e.p50),
    ) {
        if e > 0.0 {
            r.ratio_helper_over_agent_p50 = Some((h / e * 10.0).round() / 10.0);
        }
    }
    r.machine.load_after = load_average();
    report::judge(&mut r);
    Ok(r)
}

async fn machine(docker: &Docker) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu,
        mem_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        docker_version: docker
            .version()
            .await
            .unwrap_or_else(|e| format!("unknown ({e:#})")),
        load_before: load_average(),
        load_after: None,
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The benchmark's agent enforces every enabled container on the host. Other enabled
/// containers (someone's tests) would be failed closed by it, and its rules stay in their
/// namespaces after it stops; so wait until there are none, unless told otherwise.
async fn wait_no_foreign(ctx: &Context, r: &mut Report) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut said = false;
    loop {
        let foreign = ctx.docker.foreign_enabled().await?;
        if foreign.is_empty() {
            return Ok(());
        }
        if ctx.args.allow_foreign {
            r.notes.push(format!(
                "started with --allow-foreign while {} other enabled container(s) ran; the \
                 benchmark's agent failed them closed: {}",
                foreign.len(),
                foreign.join(", ")
            ));
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} running container(s) not made by the benchmark opt in to egresstrator ({}); \
                 the benchmark's agent would fail them closed. Stop them, or pass \
                 --allow-foreign",
                foreign.len(),
                foreign.join(", ")
            );
        }
        if !said {
            progress(&format!(
                "waiting (up to 2 min) for other enabled containers to go away: {}",
                foreign.join(", ")
            ));
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn start_agent(ctx: &mut Context, r: &mut Report) -> Result<()> {
    progress(&format!(
        "starting agent {} with kv-path {}",
        ctx.agent_path.display(),
        ctx.kv_prefix
    ));
    let log_path = ctx.work_dir.join("agent.log");
    let agent = Agent::start(AgentConfig {
        binary: &ctx.agent_path,
        kv_path: &ctx.kv_prefix,
        consul: &ctx.args.consul,
        log_level: &ctx.args.agent_log_level,
        log_path: log_path.clone(),
        state_dir: ctx.work_dir.join("agent-state"),
        backend: ctx.args.backend.as_deref(),
        hook_socket: ctx.hook_socket.path.clone(),
        extra: Vec::new(),
    })
    .await?;
    r.agent.log = Some(log_path.display().to_string());
    let status = agent.status().await?;
    r.agent.version = status.version.clone();
    r.agent.mode = status.mode.clone();
    let pid = agent.pid();
    ctx.agent = Some(agent);
    // Idle: policy loaded, no benchmark container yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let agent = ctx.agent()?;
    let status = agent.status().await?;
    if let Some(p) = &status.policy {
        if p.source.as_deref() != Some("consul") {
            r.notes.push(format!(
                "agent policy source is {:?} (error {:?}), not consul",
                p.source, p.error
            ));
        }
    }
    if !status.containers.is_empty() {
        let names: Vec<&str> = status
            .containers
            .iter()
            .map(|c| c.name.as_deref().unwrap_or(c.id.as_str()))
            .collect();
        r.notes.push(format!(
            "the benchmark's agent also enforced {} enabled container(s) it did not make; with \
             the benchmark's kv-path it failed them closed, and that deny-all stays in their \
             namespaces until their own agent re-applies: {}",
            names.len(),
            names.join(", ")
        ));
    }
    let (idle, _) = agent.rss_mib()?;
    r.agent_rss_mib = Some(Rss {
        idle: Some(round3(idle)),
        ..Default::default()
    });
    progress(&format!("agent pid {pid} ready, idle rss {idle:.1} MiB"));
    Ok(())
}

/// Median of the per-size samples, for both backends.
async fn measure_apply(ctx: &Context, r: &mut Report) -> Result<()> {
    let reps = ctx.counts.apply_reps;
    let mut fresh = ApplyMs::default();
    let mut same = ApplyMs::default();
    let mut ipt = BySize::default();
    let mut ipt_error: Option<String> = None;
    let mut k = 0usize;
    let mut next_ns = || {
        k += 1;
        Netns::add(format!("egt-bench-{}-apply-{k}", ctx.run))
    };
    for n in APPLY_SIZES {
        let ruleset = apply::ruleset(&apply::generated_acl(n))?;
        let (nft, ipt_scripts) = apply::render_all(&ruleset);
        // Fresh namespace per apply: what a new container costs.
        let mut samples = Vec::with_capacity(reps);
        let mut wall = Vec::with_capacity(reps);
        for _ in 0..reps {
            let ns = next_ns()?;
            let t = apply::apply_nft(&ns, &nft).await?;
            samples.push(t.inside_ms);
            wall.push(t.wall_ms);
        }
        let med = stats::median(&samples).map(round3);
        fresh.nft.set(n, med);
        fresh.nft_wall.set(n, stats::median(&wall).map(round3));
        // The same namespace again and again: what a re-enforce costs.
        let ns = next_ns()?;
        apply::apply_nft(&ns, &nft).await?;
        let mut again = Vec::with_capacity(reps);
        let mut again_wall = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = apply::apply_nft(&ns, &nft).await?;
            again.push(t.inside_ms);
            again_wall.push(t.wall_ms);
        }
        drop(ns);
        same.nft.set(n, stats::median(&again).map(round3));
        same.nft_wall.set(n, stats::median(&again_wall).map(round3));
        progress(&format!(
            "apply nft {n} CIDRs: {} ms fresh netns, {} ms same netns",
            fmt(med),
            fmt(stats::median(&again))
        ));
        if ipt_error.is_none() {
            let mut samples = Vec::with_capacity(reps);
            for _ in 0..reps {
                let ns = next_ns()?;
                match apply::apply_iptables(&ns, &ipt_scripts).await {
                    Ok(ms) => samples.push(ms),
                    Err(e) => {
                        ipt_error = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            let med = stats::median(&samples).map(round3);
            ipt.set(n, med);
            progress(&format!("apply iptables {n} CIDRs: {} ms", fmt(med)));
        }
    }
    match ipt_error {
        None => {
            fresh.iptables = Some(ipt);
            r.notes.push(
                "apply_ms.iptables: iptables-restore then ip6tables-restore (-w --noflush) \
                 spawned in a fresh namespace, wall time of both processes; apply_ms.nft: time \
                 inside the namespace as the agent reports it (libnftables in-process)"
                    .into(),
            );
        }
        Some(e) => r.notes.push(format!("apply_ms.iptables not measured: {e}")),
    }
    r.apply_ms = Some(fresh);
    r.apply_same_netns_ms = Some(same);
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// Waits until the agent shows container `id` applied; returns its status entry.
async fn wait_applied(agent: &Agent, id: &str, poll: Duration) -> Result<ContainerStatus> {
    agent
        .wait_for(
            &format!("container {} to be enforced", docker::short(id)),
            poll,
            APPLY_TIMEOUT,
            |s| {
                s.containers
                    .iter()
                    .find(|c| c.id == id && c.applied_at_unix_nano.is_some())
                    .cloned()
            },
        )
        .await
}

/// Waits until every id is applied; returns the status that showed it.
async fn wait_all_applied(
    agent: &Agent,
    ids: &[String],
    poll: Duration,
    timeout: Duration,
) -> Result<Status> {
    agent
        .wait_for(
            &format!("{} containers to be enforced", ids.len()),
            poll,
            timeout,
            |s| {
                let by_id = s.by_id();
                ids.iter()
                    .all(|id| {
                        by_id
                            .get(id.as_str())
                            .is_some_and(|c| c.applied_at_unix_nano.is_some())
                    })
                    .then(|| s.clone())
            },
        )
        .await
}

#[derive(Default)]
struct SequentialSamples {
    delivery_ms: Vec<f64>,
    apply_ms: Vec<f64>,
    /// (event→enforced, delivery, apply in netns) per sample, for the tail's profile.
    per_sample: Vec<(f64, Option<f64>, Option<f64>)>,
    for_split: Vec<crate::logsplit::Sample>,
    names: Vec<String>,
}

async fn measure_sequential(
    ctx: &Context,
    events: &StartEvents,
    r: &mut Report,
) -> Result<SequentialSamples> {
    let n = ctx.counts.event_to_enforced;
    progress(&format!(
        "event→enforced: {n} sequential starts (+{WARMUP} warmup)"
    ));
    let agent = ctx.agent()?;
    let mut e2e = Vec::with_capacity(n);
    let mut exposure = Vec::with_capacity(n);
    let mut out = SequentialSamples::default();
    let mut mismatch: Vec<f64> = Vec::new();
    let mut profile = Profile::default();
    for i in 0..(WARMUP + n) {
        let id = ctx
            .docker
            .create(&format!("seq-{i}"), Enable::Acl, apply::ACL)
            .await?;
        let result = async {
            ctx.docker.start(&id).await?;
            let c = wait_applied(agent, &id, ctx.poll).await?;
            let seen = docker::wait_seen(events, &id, Duration::from_secs(5))
                .await
                .ok();
            // After the apply: the inspect is not on the timed path.
            let started = ctx.docker.started_at_unix_nano(&id).await?;
            Ok::<_, anyhow::Error>((c, seen, started))
        }
        .await;
        ctx.docker.remove(&id).await?;
        let (c, seen, started) = result?;
        if i < WARMUP {
            continue;
        }
        let Some(applied) = c.applied_at_unix_nano else {
            continue;
        };
        if c.fail_closed == Some(true) {
            profile.fail_closed += 1;
        }
        if c.apply_count.unwrap_or(1) > 1 {
            profile.reapplied += 1;
        }
        if c.start_event_unix_nano.is_none() {
            profile.without_start_event += 1;
        }
        if let (Some(a), Some(s)) = (c.start_event_unix_nano, seen) {
            mismatch.push(ns_to_ms((a - s.time_nano).abs()));
        }
        let Some(start) = c.start_event_unix_nano.or(seen.map(|s| s.time_nano)) else {
            bail!(
                "no start event time for container {} (neither from the agent nor from docker)",
                docker::short(&id)
            );
        };
        e2e.push(ns_to_ms(applied - start));
        exposure.push(ns_to_ms(applied - started));
        let delivery = seen.map(|s| ns_to_ms(s.received_nano - s.time_nano));
        out.per_sample
            .push((ns_to_ms(applied - start), delivery, c.last_apply_ms));
        if let Some(d) = delivery {
            out.delivery_ms.push(d);
        }
        out.for_split.push(crate::logsplit::Sample {
            id: id.clone(),
            start_nano: start,
            applied_nano: applied,
            apply_ms: c.last_apply_ms,
        });
        if let Some(ms) = c.last_apply_ms {
            out.apply_ms.push(ms);
        }
        if let Some(name) = c.name {
            out.names.push(name);
        }
        if (i + 1 - WARMUP).is_multiple_of(50) {
            progress(&format!(
                "  {} done, p50 so far {} ms",
                i + 1 - WARMUP,
                fmt(stats::median(&e2e))
            ));
        }
    }
    let d = Distribution::of(&e2e);
    progress(&format!(
        "event→enforced: p50 {} p95 {} p99 {} max {} ms",
        fmt(d.p50),
        fmt(d.p95),
        fmt(d.p99),
        fmt(d.max)
    ));
    r.event_to_enforced_ms = Some(d);
    let x = DistributionN::of(&exposure);
    progress(&format!(
        "exposure window (StartedAt→enforced): p50 {} p95 {} p99 {} max {} ms",
        fmt(x.p50),
        fmt(x.p95),
        fmt(x.p99),
        fmt(x.max)
    ));
    r.exposure_window_ms = Some(x);
    r.event_to_enforced_samples_ms = stats::rounded(&e2e);
    r.exposure_window_samples_ms = stats::rounded(&exposure);
    profile.start_event_mismatch_max_ms = stats::max(&mismatch).map(round3);
    r.profile = Some(profile);
    Ok(out)
}

async fn measure_burst(ctx: &Context, events: &StartEvents, r: &mut Report) -> Result<Vec<String>> {
    let n = ctx.counts.burst;
    progress(&format!("burst: creating {n} containers"));
    let ids = ctx.docker.create_many("burst", 0..n, apply::ACL).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delay_before = ctx.agent()?.docker_event_delay().await?;
    progress(&format!("burst: starting {n} containers concurrently"));
    let starts = join_all(ids.iter().map(|id| ctx.docker.start(id))).await;
    for s in starts {
        s?;
    }
    let agent = ctx.agent()?;
    let status = wait_all_applied(
        agent,
        &ids,
        Duration::from_millis(10),
        Duration::from_secs(120),
    )
    .await?;
    let by_id = status.by_id();
    let mut first_start = i64::MAX;
    let mut last_start = i64::MIN;
    let mut last_applied = i64::MIN;
    let mut worst = f64::MIN;
    let mut worst_exposure = f64::MIN;
    for id in &ids {
        let c = by_id
            .get(id.as_str())
            .with_context(|| format!("container {} missing from status", docker::short(id)))?;
        let seen = docker::wait_seen(events, id, Duration::from_secs(5))
            .await
            .ok();
        let start = c
            .start_event_unix_nano
            .or(seen.map(|s| s.time_nano))
            .with_context(|| format!("no start event time for {}", docker::short(id)))?;
        let applied = c.applied_at_unix_nano.unwrap_or(start);
        first_start = first_start.min(start);
        last_start = last_start.max(start);
        last_applied = last_applied.max(applied);
        worst = worst.max(ns_to_ms(applied - start));
        let started = ctx.docker.started_at_unix_nano(id).await?;
        worst_exposure = worst_exposure.max(ns_to_ms(applied - started));
    }
    let all = ns_to_ms(last_applied - first_start);
    progress(&format!(
        "burst of {n}: all enforced {all:.1} ms after the first start event, worst window \
         {worst:.1} ms, worst exposure (StartedAt→enforced) {worst_exposure:.1} ms"
    ));
    r.burst_all_enforced_ms = Some(round3(all));
    r.burst_worst_window_ms = Some(round3(worst));
    r.burst_worst_exposure_ms = Some(round3(worst_exposure));
    r.burst_start_events_spread_ms = Some(round3(ns_to_ms(last_start - first_start)));
    let delay_after = ctx.agent()?.docker_event_delay().await?;
    if let (Some(after), Some(before)) = (delay_after, delay_before) {
        let late = after.since(before);
        progress(&format!(
            "burst of {n}: the agent read {} of {} start events more than 25 ms after Docker's \
             timestamp, {} more than 100 ms",
            late.over_25_ms, late.events, late.over_100_ms
        ));
        r.burst_docker_event_delay = Some(late);
    }
    Ok(ids)
}

/// Starts more enabled containers until `running` has `n`, and waits until all are applied.
async fn fill_to(ctx: &Context, running: &mut Vec<String>, n: usize) -> Result<()> {
    if running.len() >= n {
        return Ok(());
    }
    let from = running.len();
    progress(&format!(
        "starting {} more containers ({n} running)",
        n - from
    ));
    let ids = ctx.docker.create_many("fill", from..n, apply::ACL).await?;
    for chunk in ids.chunks(10) {
        let starts = join_all(chunk.iter().map(|id| ctx.docker.start(id))).await;
        for s in starts {
            s?;
        }
    }
    running.extend(ids);
    wait_all_applied(
        ctx.agent()?,
        running,
        Duration::from_millis(20),
        Duration::from_secs(180),
    )
    .await?;
    Ok(())
}

/// Removes running containers from the end until `running` has at most `n`, and lets the
/// agent forget them.
async fn shrink_to(ctx: &Context, running: &mut Vec<String>, n: usize) -> Result<()> {
    if running.len() <= n {
        return Ok(());
    }
    progress(&format!(
        "removing {} containers ({n} running)",
        running.len() - n
    ));
    ctx.docker.remove_many(&running[n..]).await?;
    running.truncate(n);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// `kv_repeats` KV writes, each until every one of `ids` is re-enforced; returns the times
/// (ms). `writes` counts the writes of the run, so that every write changes the value.
async fn measure_kv(
    ctx: &Context,
    ids: &[String],
    small_acl: &str,
    writes: &mut usize,
) -> Result<Vec<f64>> {
    let agent = ctx.agent()?;
    let reps = ctx.counts.kv_repeats;
    progress(&format!(
        "kv change: {reps} writes, each re-enforcing {} containers",
        ids.len()
    ));
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..reps {
        let w = *writes;
        *writes += 1;
        let before = agent.status().await?;
        let old: HashMap<String, (Option<String>, i64)> = before
            .containers
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    (c.hash.clone(), c.applied_at_unix_nano.unwrap_or(0)),
                )
            })
            .collect();
        // A different last line each time, so every ruleset changes.
        let value = format!(
            "{small_acl}10.254.{}.{}/32:tcp/8443\n",
            w / 250 % 250,
            w % 250 + 1
        );
        let t0 = now_unix_nano();
        ctx.consul.put(&ctx.acl_key(), &value).await?;
        let status = agent
            .wait_for(
                &format!(
                    "{} containers to be re-enforced after a kv write",
                    ids.len()
                ),
                Duration::from_millis(5),
                Duration::from_secs(60),
                |s| {
                    let by_id = s.by_id();
                    ids.iter()
                        .all(|id| {
                            by_id.get(id.as_str()).is_some_and(|c| {
                                let (old_hash, old_at) = old.get(id).cloned().unwrap_or((None, 0));
                                c.hash.is_some()
                                    && c.hash != old_hash
                                    && c.applied_at_unix_nano.unwrap_or(0) > old_at
                            })
                        })
                        .then(|| s.clone())
                },
            )
            .await?;
        let by_id = status.by_id();
        let last = ids
            .iter()
            .filter_map(|id| by_id.get(id.as_str()).and_then(|c| c.applied_at_unix_nano))
            .max()
            .unwrap_or(t0);
        let ms = ns_to_ms(last - t0);
        progress(&format!(
            "  write {}: all re-enforced after {ms:.1} ms",
            rep + 1
        ));
        samples.push(ms);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(samples)
}

async fn profile(
    ctx: &Context,
    mut p: Profile,
    seq: &SequentialSamples,
    probe: &str,
    small_acl: &str,
) -> Result<Profile> {
    p.docker_event_delivery_ms = stats::median(&seq.delivery_ms).map(round3);
    p.agent_apply_in_netns_ms = stats::median(&seq.apply_ms).map(round3);
    p.docker_inspect_idle_ms =
        stats::median(&ctx.docker.time_inspect(probe, 30).await?).map(round3);
    let all: Vec<f64> = seq.per_sample.iter().map(|s| s.0).collect();
    if let Some(p95) = stats::percentile(&all, 95.0) {
        let tail: Vec<_> = seq.per_sample.iter().filter(|s| s.0 >= p95).collect();
        let med = |v: Vec<f64>| stats::median(&v).map(round3);
        p.slow_tail = Some(crate::report::Tail {
            samples: tail.len(),
            event_to_enforced_ms: med(tail.iter().map(|s| s.0).collect()),
            docker_event_delivery_ms: med(tail.iter().filter_map(|s| s.1).collect()),
            agent_apply_in_netns_ms: med(tail.iter().filter_map(|s| s.2).collect()),
        });
    }
    p.consul_kv_read_ms =
        stats::median(&ctx.consul.time_reads(&ctx.kv_prefix, 30).await?).map(round3);
    let mut render = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let rs = apply::ruleset(small_acl)?;
        let script = egresstrator_core::render::nft::render(&rs);
        let _ = egresstrator_core::render::hash(&script);
        render.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    p.compile_render_ms = stats::median(&render).map(|v| (v * 1e4).round() / 1e4);
    if let Some(agent) = &ctx.agent {
        p.agent_took_ms = stats::median(&took_ms_from_log(&agent.log_path, &seq.names)).map(round3);
        if ctx.args.profile {
            let log = std::fs::read_to_string(&agent.log_path)
                .with_context(|| format!("cannot read agent log {}", agent.log_path.display()))?;
            let split = crate::logsplit::split(&log, &seq.for_split);
            if split.samples == 0 {
                progress(&format!(
                    "--profile: none of the {} starts matched the agent's log lines (did their text change? see logsplit.rs); the split is empty",
                    seq.for_split.len()
                ));
            }
            p.agent_log_split = Some(split);
        }
    }
    Ok(p)
}

/// `took_ms=` of the agent's log lines that name one of `names`.
fn took_ms_from_log(path: &std::path::Path, names: &[String]) -> Vec<f64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let names: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w.strip_prefix("name=").is_some_and(|n| names.contains(n)))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("took_ms="))
                .and_then(|v| v.trim_matches('"').parse().ok())
        })
        .collect()
}

/// Adds the profile's remainder and a note when the agent failed anything closed.
async fn check_fail_closed(ctx: &Context, r: &mut Report) {
    let e2e = r.event_to_enforced_ms.as_ref().and_then(|d| d.p50);
    if let Some(p) = r.profile.as_mut() {
        if let Some(e) = e2e {
            let parts = [
                p.docker_event_delivery_ms,
                p.docker_inspect_idle_ms,
                p.compile_render_ms,
                p.agent_apply_in_netns_ms,
            ];
            let sum: f64 = parts.iter().flatten().sum();
            p.unattributed_ms = Some(round3(e - sum));
        }
        if p.fail_closed > 0 {
            r.notes.push(format!(
                "{} sequential container(s) were failed closed by the agent (see its log)",
                p.fail_closed
            ));
        }
    }
    if let Some(agent) = &ctx.agent {
        if let Ok(status) = agent.status().await {
            let failed: Vec<&str> = status
                .containers
                .iter()
                .filter(|c| c.fail_closed == Some(true))
                .map(|c| c.name.as_deref().unwrap_or(c.id.as_str()))
                .collect();
            if !failed.is_empty() {
                r.notes.push(format!(
                    "the agent reported {} container(s) failed closed at the end: {}",
                    failed.len(),
                    failed.join(", ")
                ));
            }
        }
    }
}

/// `hook_added_start_latency_ms`: what `egresstrator-runc` adds to `docker run` of an
/// enabled container, against the plain runtime in the same run (alternating, so load drifts
/// hit both alike). The runtime is registered in /etc/docker/daemon.json for the measure and
/// the file restored afterwards (dockerd reloads runtimes on SIGHUP). It is registered as
/// operators do, without `runtimeArgs`, when the bench's agent could take the default socket.
async fn measure_hook(ctx: &Context, r: &mut Report) -> Result<()> {
    let shim = ctx
        .agent_path
        .parent()
        .map(|d| d.join("egresstrator-runc"))
        .filter(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok());
    let Some(shim) = shim else {
        r.notes
            .push("hook latency not measured: egresstrator-runc is not next to the agent".into());
        return Ok(());
    };
    let shim_static = crate::hook::statically_linked(&shim);
    if shim_static != Some(true) {
        r.notes.push(format!(
            "{} is not statically linked (build it with `make build`, not only `cargo build`): \
             every runc verb pays the dynamic loader",
            shim.display()
        ));
    }
    let guard = crate::hook::Runtime::install(&shim, &ctx.hook_socket)?;
    if !ctx.hook_socket.default {
        r.notes.push(format!(
            "another agent answers on {} or {} exists: the shim was registered with runtimeArgs naming {}, \
             so dockerd ran it through its /bin/sh wrapper for every runc verb, which the \
             latency includes",
            crate::hook::DEFAULT_SOCKET,
            crate::hook::SHIM_CONFIG,
            ctx.hook_socket.path.display()
        ));
    }
    let runs = ctx.counts.hook_runs;
    progress(&format!(
        "runtime hook: {runs} pairs of starts, under the shim then plain runc"
    ));
    let acl = ctx.acl_name();
    let mut with = Vec::with_capacity(runs);
    let mut without = Vec::with_capacity(runs);
    // One warm-up each, not counted.
    crate::hook::timed_run(crate::hook::RUNTIME, &acl)?;
    crate::hook::timed_run("runc", &acl)?;
    for _ in 0..runs {
        with.push(crate::hook::timed_run(crate::hook::RUNTIME, &acl)?);
        without.push(crate::hook::timed_run("runc", &acl)?);
    }
    drop(guard);
    let (w, o) = (Distribution::of(&with), Distribution::of(&without));
    // Each start under the shim is paired with the plain start right after it: the pair's
    // difference is what the shim added under the same load, and load drifts cancel out.
    let added: Vec<f64> = with.iter().zip(&without).map(|(a, b)| a - b).collect();
    let d = Distribution::of(&added);
    r.hook_added_start_latency_ms = Some(crate::report::HookLatency {
        p50: d.p50,
        p99: d.p99,
        shim_p50: w.p50,
        plain_p50: o.p50,
        pairs: added.len(),
        shim_static,
    });
    progress(&format!(
        "runtime hook adds p50 {} ms over {} pairs (shim {} ms, runc {} ms)",
        fmt(d.p50),
        added.len(),
        fmt(w.p50),
        fmt(o.p50)
    ));
    Ok(())
}

async fn measure_helper(ctx: &Context, small_acl: &str, r: &mut Report) -> Result<()> {
    let runs = ctx.counts.helper_runs;
    if helper::ensure_image(&ctx.work_dir)? {
        progress(&format!("built {}", helper::IMAGE));
    }
    let target = ctx.docker.create("helper-target", Enable::No, "").await?;
    let result = async {
        ctx.docker.start(&target).await?;
        let ruleset = apply::ruleset(small_acl)?;
        let (nft, ipt) = apply::render_all(&ruleset);
        progress(&format!(
            "helper container: {runs} runs (+1 warmup) per tool"
        ));
        helper::run_once(&target, HelperTool::Nft, &nft).await?;
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            samples.push(helper::run_once(&target, HelperTool::Nft, &nft).await?);
        }
        let d = Distribution::of(&samples);
        let raw = stats::rounded(&samples);
        let mut h = Helper {
            p50: d.p50,
            p95: d.p95,
            max: d.max,
            tool: "nft -f - (the agent's script)".into(),
            iptables_restore_p50: None,
        };
        progress(&format!("helper container (nft): p50 {} ms", fmt(d.p50)));
        // 0.2 ran iptables-restore; measured too, when it works.
        let mut ipt_samples = Vec::with_capacity(runs);
        let mut ipt_error = None;
        for _ in 0..=runs {
            match helper::run_once(&target, HelperTool::IptablesRestore, &ipt.v4).await {
                Ok(ms) => ipt_samples.push(ms),
                Err(e) => {
                    ipt_error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        if ipt_error.is_none() && !ipt_samples.is_empty() {
            ipt_samples.remove(0);
        }
        h.iptables_restore_p50 = stats::median(&ipt_samples).map(round3);
        progress(&format!(
            "helper container (iptables-restore): p50 {} ms",
            fmt(h.iptables_restore_p50)
        ));
        Ok::<_, anyhow::Error>((h, ipt_error, raw))
    }
    .await;
    ctx.docker.remove(&target).await?;
    let (h, ipt_error, raw) = result?;
    r.helper_container_samples_ms = raw;
    if let Some(e) = ipt_error {
        r.notes
            .push(format!("helper with iptables-restore not measured: {e}"));
    }
    r.helper_container_ms = Some(h);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn took_ms_is_read_from_log_lines_naming_a_container() {
        let dir = std::env::temp_dir().join(format!("egt-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("agent.log");
        std::fs::write(
            &log,
            "2024 INFO container enforced container=abc name=egt-bench-x-seq-1 acls=bench took_ms=1.25\n\
             2024 INFO container enforced container=def name=other took_ms=9.00\n\
             2024 INFO reconciling running containers running=3\n",
        )
        .unwrap();
        let v = took_ms_from_log(&log, &["egt-bench-x-seq-1".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(v, vec![1.25]);
    }
}
