//! `--soak`: churn with an invariant checker, then fault schedules (RELIABILITY.md).
//!
//! The churn starts and stops containers (≥ 50 at once): most enabled with a random set of
//! the soak's ACLs, some under `egresstrator-runc`, some not enabled. Meanwhile it rewrites
//! ACL keys, registers and deregisters the instances of a service that one ACL names, and
//! restarts Consul once. [`crate::checker`] reads every namespace from outside throughout.
//!
//! Then each fault, with the checker measuring the time until every running container holds
//! exactly its expected ruleset again: SIGKILL of the agent in the middle of a burst, a
//! dockerd restart during a burst, Consul killed right after a KV change (its blocking
//! queries cut), the state dir's disk full, and a corrupt and then read-only state dir.
//!
//! Unlike the timing measures, the soak's exit code judges: it fails on any violation, on a
//! fault the agent did not recover from within [`RECOVERY_TIMEOUT`], and on leaked fds.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _, Result};
use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::agent::{self, Agent, AgentConfig};
use crate::checker::{self, Acl, Kind, SharedModel, ACLS_LABEL, KIND_LABEL};
use crate::run::{progress, Context};

/// ACL keys with network lines (`acl0`…); one more, `svc`, names the soak's service.
const NET_ACLS: usize = 5;
/// Starts in flight at once during the churn.
const START_BATCH: usize = 8;
/// How long a fault may take to heal before it counts as not recovered.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the dockerd-restart fault keeps dockerd down.
const DOCKERD_DOWN: Duration = Duration::from_secs(8);
/// How scripts/services.sh starts them, which the soak does again after killing them.
const CONSUL_ARGV: &[&str] = &[
    "consul",
    "agent",
    "-dev",
    "-client",
    "127.0.0.1",
    "-bind",
    "127.0.0.1",
];
const DOCKERD_ARGV: &[&str] = &["dockerd"];
/// fds the agent may hold at the end of the churn beyond what it held at the start.
const FD_SLACK: usize = 16;

/// The soak's sizes.
pub struct SoakArgs {
    pub containers: usize,
    pub concurrent: usize,
    pub burst: usize,
    pub faults: bool,
    pub seed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct SoakReport {
    pub command: Vec<String>,
    pub machine: String,
    pub seed: u64,
    pub churn_seconds: f64,
    pub containers_started: usize,
    pub started_by_kind: HashMap<String, usize>,
    pub max_running: usize,
    pub kv_changes: usize,
    pub service_changes: usize,
    pub consul_restarts: usize,
    pub sweeps: usize,
    pub observations: usize,
    pub sweep_ms_p50: f64,
    /// Mismatches inside a container's grace (just started, or its policy just changed).
    pub excused: usize,
    pub violation_count: usize,
    /// The first violations, described.
    pub violations: Vec<String>,
    pub agent: AgentUse,
    pub faults: Vec<Fault>,
    pub notes: Vec<String>,
    pub agent_log: String,
}

#[derive(Debug, Default, Serialize)]
pub struct AgentUse {
    pub rss_mib_start: f64,
    pub rss_mib_peak: f64,
    pub rss_mib_end: f64,
    pub fds_start: usize,
    pub fds_peak: usize,
    pub fds_end: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Fault {
    pub name: String,
    /// From the moment named in `from` until the end of the first sweep in which every
    /// running container held exactly its expected ruleset.
    pub recovery_ms: Option<f64>,
    /// From the same moment until the last of those containers was first read holding its
    /// expected ruleset, and held it on every read after: each namespace's own moment, late
    /// by at most the time between two reads of it, where `recovery_ms` waits for a whole
    /// clean sweep.
    pub seen_ms: Option<f64>,
    pub from: String,
    /// How long one sweep took then: the measurement's resolution.
    pub sweep_ms: f64,
    pub containers: usize,
    pub note: String,
}

impl SoakReport {
    pub fn failed(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.violation_count > 0 {
            why.push(format!("{} invariant violations", self.violation_count));
        }
        for f in &self.faults {
            if f.recovery_ms.is_none() {
                why.push(format!("fault {} did not recover", f.name));
            }
        }
        if self.agent.fds_end > self.agent.fds_start + FD_SLACK {
            why.push(format!(
                "the agent's fds grew from {} to {}",
                self.agent.fds_start, self.agent.fds_end
            ));
        }
        why
    }

    pub fn table(&self) -> String {
        let mut t = format!(
            "soak ({}; seed {}):\n  churn: {} containers started in {:.0} s ({:?}), up to {} at once\n  \
             meanwhile: {} KV changes, {} service changes, {} Consul restarts\n  \
             checker: {} sweeps, {} namespace reads (sweep p50 {:.0} ms), {} excused in grace, \
             {} violations\n  agent: RSS {:.1} → peak {:.1} → {:.1} MiB, fds {} → peak {} → {}\n",
            self.machine,
            self.seed,
            self.containers_started,
            self.churn_seconds,
            self.started_by_kind,
            self.max_running,
            self.kv_changes,
            self.service_changes,
            self.consul_restarts,
            self.sweeps,
            self.observations,
            self.sweep_ms_p50,
            self.excused,
            self.violation_count,
            self.agent.rss_mib_start,
            self.agent.rss_mib_peak,
            self.agent.rss_mib_end,
            self.agent.fds_start,
            self.agent.fds_peak,
            self.agent.fds_end,
        );
        for v in &self.violations {
            t.push_str(&format!("  VIOLATION {v}\n"));
        }
        for f in &self.faults {
            let r = f
                .recovery_ms
                .map_or("NOT RECOVERED".to_string(), |ms| format!("{ms:.0} ms"));
            let seen = f.seen_ms.map_or(String::new(), |ms| {
                format!(", each namespace first read right by {ms:.0} ms")
            });
            t.push_str(&format!(
                "  fault {}: recovered in {r} from {} ({} containers{seen}, sweep {:.0} ms){}\n",
                f.name,
                f.from,
                f.containers,
                f.sweep_ms,
                if f.note.is_empty() {
                    String::new()
                } else {
                    format!("; {}", f.note)
                }
            ));
        }
        for n in &self.notes {
            t.push_str(&format!("  note: {n}\n"));
        }
        t
    }
}

/// One container to start.
struct Spec {
    kind: Kind,
    env: Vec<String>,
    labels: HashMap<String, String>,
    runtime: Option<String>,
}

/// The soak's world: what it wrote, what runs, and the agent.
struct Soak<'a> {
    ctx: &'a mut Context,
    args: SoakArgs,
    model: SharedModel,
    rng: fastrand::Rng,
    service: String,
    /// Registered instances of the service: (id, address, port).
    instances: Vec<(String, String, u16)>,
    shim: Option<String>,
    state_dir: PathBuf,
    report: SoakReport,
}

pub async fn run(ctx: &mut Context, args: SoakArgs) -> Result<SoakReport> {
    ctx.docker.check_image().await?;
    ctx.consul.check().await?;
    for tool in ["nsenter", "nft", "pgrep", "mount"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            bail!("{tool} is missing (run scripts/prereqs.sh, or `make soak`)");
        }
    }
    let seed = args.seed;
    let service = format!("egt-soak-{}", ctx.run);
    let state_dir = ctx.work_dir.join("agent-state");
    let mut soak = Soak {
        model: Arc::new(Mutex::new(checker::Model::default())),
        rng: fastrand::Rng::with_seed(seed),
        service,
        instances: Vec::new(),
        shim: None,
        state_dir,
        report: SoakReport {
            command: std::env::args().collect(),
            machine: machine(),
            seed,
            ..Default::default()
        },
        args,
        ctx,
    };
    let runtime = soak.register_shim();
    let result = soak.run_all().await;
    // A fault that failed half-way may have left Consul or dockerd down: start them again.
    for (name, argv, log) in [
        ("consul", CONSUL_ARGV, "/var/log/consul-dev.log"),
        ("dockerd", DOCKERD_ARGV, "/var/log/dockerd.log"),
    ] {
        if !running(name) {
            progress(&format!("soak: {name} is not running; starting it again"));
            if let Err(e) = spawn_detached(log, argv) {
                progress(&format!("soak: {e:#}"));
            }
        }
    }
    drop(runtime);
    soak.unmount_full();
    for (id, _, _) in &soak.instances {
        let _ = soak.ctx.consul.deregister_service(id).await;
    }
    result?;
    Ok(soak.report)
}

impl Soak<'_> {
    async fn run_all(&mut self) -> Result<()> {
        for i in 0..NET_ACLS {
            self.write_acl(i).await?;
        }
        for _ in 0..2 {
            self.add_instance().await?;
        }
        self.write_service_acl().await?;
        self.start_agent(self.state_dir.clone()).await?;
        self.report.agent_log = self.ctx.work_dir.join("agent.log").display().to_string();
        self.churn().await?;
        if self.args.faults {
            self.fault_agent_kill().await?;
            self.fault_dockerd_restart().await?;
            self.fault_consul_kill().await?;
            self.fault_disk_full_and_corrupt().await?;
        }
        Ok(())
    }

    /// Registers `egresstrator-runc` (next to the agent) as a dockerd runtime, if it is there.
    fn register_shim(&mut self) -> Option<crate::hook::Runtime> {
        let shim = self.ctx.agent_path.with_file_name("egresstrator-runc");
        if !shim.is_file() {
            self.report.notes.push(format!(
                "no shim containers: {} is missing (build it with `make build`)",
                shim.display()
            ));
            return None;
        }
        match crate::hook::Runtime::install(&shim, &self.ctx.hook_socket) {
            Ok(r) => {
                self.shim = Some(crate::hook::RUNTIME.to_owned());
                Some(r)
            }
            Err(e) => {
                self.report
                    .notes
                    .push(format!("no shim containers: cannot register it: {e:#}"));
                None
            }
        }
    }

    async fn start_agent(&mut self, state_dir: PathBuf) -> Result<()> {
        let log_path = self.ctx.work_dir.join("agent.log");
        // Appends: one log over the agent's restarts.
        let agent = Agent::start(AgentConfig {
            binary: &self.ctx.agent_path,
            kv_path: &self.ctx.kv_prefix,
            consul: &self.ctx.args.consul,
            log_level: &self.ctx.args.agent_log_level,
            log_path,
            state_dir,
            backend: self.ctx.args.backend.as_deref(),
            hook_socket: self.ctx.hook_socket.path.clone(),
            extra: Vec::new(),
        })
        .await?;
        self.ctx.agent = Some(agent);
        Ok(())
    }

    fn agent(&self) -> Result<&Agent> {
        self.ctx.agent.as_ref().context("the agent is not running")
    }

    // --- Consul ------------------------------------------------------------------------------

    /// Writes `acl<i>` with 1–3 random networks of its own `10.(200+i).0.0/16`.
    async fn write_acl(&mut self, i: usize) -> Result<()> {
        let n = self.rng.usize(1..=3);
        let mut nets = BTreeSet::new();
        while nets.len() < n {
            // Even third octets: two networks are never adjacent, so never merged.
            nets.insert(self.rng.u16(0..128) * 2);
        }
        let mut text = String::new();
        let mut elements = BTreeSet::new();
        for m in nets {
            let port = self.rng.u16(100..6000) * 10;
            text.push_str(&format!("10.{}.{m}.0/24:tcp/{port}\n", 200 + i));
            elements.insert(format!("10.{}.{m}.0/24 . tcp . {port}", 200 + i));
        }
        let name = format!("acl{i}");
        self.put_acl(&name, &text, elements).await
    }

    /// Writes `svc`: one line naming the soak's service.
    async fn write_service_acl(&mut self) -> Result<()> {
        let elements = self.service_elements();
        let text = format!("{}\n", self.service);
        self.put_acl("svc", &text, elements).await
    }

    fn service_elements(&self) -> BTreeSet<String> {
        self.instances
            .iter()
            .map(|(_, a, p)| format!("{a} . tcp . {p}"))
            .collect()
    }

    async fn put_acl(&mut self, name: &str, text: &str, elements: BTreeSet<String>) -> Result<()> {
        {
            let mut m = self.model.lock().unwrap_or_else(|e| e.into_inner());
            m.acls.insert(
                name.to_owned(),
                Acl {
                    elements,
                    changed: Some(SystemTime::now()),
                },
            );
        }
        self.ctx
            .consul
            .put(&format!("{}{name}", self.ctx.kv_prefix), text)
            .await
    }

    /// Marks `svc` as changed now, with its current instances.
    fn service_changed(&mut self) {
        let elements = self.service_elements();
        let mut m = self.model.lock().unwrap_or_else(|e| e.into_inner());
        m.acls.insert(
            "svc".into(),
            Acl {
                elements,
                changed: Some(SystemTime::now()),
            },
        );
    }

    async fn add_instance(&mut self) -> Result<()> {
        let n = self.rng.u16(1..250);
        let id = format!("{}-{n}", self.service);
        if self.instances.iter().any(|(i, _, _)| *i == id) {
            return Ok(());
        }
        let addr = format!("10.209.0.{n}");
        let port = self.rng.u16(100..6000) * 10;
        // The model first: the change is in flight from here on.
        self.instances.push((id.clone(), addr.clone(), port));
        self.service_changed();
        self.ctx
            .consul
            .register_service(&id, &self.service, &addr, port)
            .await
    }

    async fn remove_instance(&mut self) -> Result<()> {
        if self.instances.len() <= 1 {
            return self.add_instance().await;
        }
        let (id, _, _) = self
            .instances
            .remove(self.rng.usize(..self.instances.len()));
        self.service_changed();
        self.ctx.consul.deregister_service(&id).await
    }

    /// SIGKILLs the Consul dev agent (its blocking queries are cut), starts a new one, and
    /// writes the soak's keys and services again (a dev agent keeps them in memory only).
    /// Every mismatch is excused from the kill until [`checker::GRACE`] after the rewrite.
    async fn restart_consul(&mut self) -> Result<Instant> {
        self.excuse_until(None);
        kill_process("consul", "KILL")?;
        wait_gone("consul", Duration::from_secs(20)).await?;
        spawn_detached("/var/log/consul-dev.log", CONSUL_ARGV)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ctx.consul.check().await.is_err() || !consul_has_leader().await {
            if Instant::now() > deadline {
                bail!("consul did not come back within 60 s (log: /var/log/consul-dev.log)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let instances = self.instances.clone();
        for (id, addr, port) in &instances {
            self.ctx
                .consul
                .register_service(id, &self.service, addr, *port)
                .await?;
        }
        let acls: Vec<(String, Acl)> = {
            let m = self.model.lock().unwrap_or_else(|e| e.into_inner());
            m.acls.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (name, acl) in acls {
            let text = if name == "svc" {
                format!("{}\n", self.service)
            } else {
                acl.elements
                    .iter()
                    .map(|e| {
                        let parts: Vec<&str> = e.split(" . ").collect();
                        format!("{}:{}/{}\n", parts[0], parts[1], parts[2])
                    })
                    .collect()
            };
            self.put_acl(&name, &text, acl.elements).await?;
        }
        let restored = Instant::now();
        self.excuse_until(Some(SystemTime::now() + checker::GRACE));
        self.report.consul_restarts += 1;
        Ok(restored)
    }

    fn excuse_until(&self, until: Option<SystemTime>) {
        let mut m = self.model.lock().unwrap_or_else(|e| e.into_inner());
        // None: until further notice.
        m.excused_until =
            Some(until.unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600)));
    }

    // --- Containers --------------------------------------------------------------------------

    /// Draws a container: its kind (random unless given) and 1–3 of the soak's ACLs.
    fn draw(&mut self, kind: Option<Kind>) -> Spec {
        let kind = kind.unwrap_or_else(|| match self.rng.u8(0..100) {
            0..15 if self.shim.is_some() => Kind::Shim,
            15..30 => Kind::Plain,
            _ => Kind::Enabled,
        });
        let mut names: Vec<String> = (0..NET_ACLS).map(|i| format!("acl{i}")).collect();
        names.push("svc".into());
        self.rng.shuffle(&mut names);
        names.truncate(self.rng.usize(1..=3));
        names.sort();
        let mut labels = HashMap::from([(KIND_LABEL.to_string(), kind.label().to_string())]);
        let mut env = Vec::new();
        if kind != Kind::Plain {
            env.push("EGRESSTRATOR_ENABLE=1".to_string());
            env.push(format!("EGRESSTRATOR_ACL={}", names.join(",")));
            labels.insert(ACLS_LABEL.to_string(), names.join(","));
        }
        let runtime = (kind == Kind::Shim).then(|| self.shim.clone()).flatten();
        Spec {
            kind,
            env,
            labels,
            runtime,
        }
    }

    /// Creates and starts `n` containers named `s<first>`… (`in_flight` at once); returns
    /// the ids of those Docker started.
    async fn start_many(
        &mut self,
        first: usize,
        n: usize,
        kind: Option<Kind>,
        in_flight: usize,
    ) -> Vec<(Kind, String)> {
        let specs: Vec<(usize, Spec)> = (0..n).map(|i| (first + i, self.draw(kind))).collect();
        let docker = &self.ctx.docker;
        let started: Vec<Option<(Kind, String)>> = stream::iter(specs)
            .map(|(i, spec)| async move {
                let id = docker
                    .create_with(
                        &format!("s{i}"),
                        spec.env,
                        spec.labels,
                        spec.runtime.as_deref(),
                    )
                    .await
                    .ok()?;
                docker.start(&id).await.ok()?;
                Some((spec.kind, id))
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        started.into_iter().flatten().collect()
    }

    async fn remove_all(&mut self) -> Result<()> {
        self.ctx.docker.remove_run().await.map(|_| ())
    }

    // --- The churn ---------------------------------------------------------------------------

    async fn churn(&mut self) -> Result<()> {
        progress(&format!(
            "soak: churn of {} containers, {} at once, seed {}",
            self.args.containers, self.args.concurrent, self.args.seed
        ));
        let agent = self.agent()?;
        let (rss_start, _) = agent.rss_mib()?;
        let fds_start = agent.fds()?;
        let pid = agent.pid();
        self.report.agent.rss_mib_start = rss_start;
        self.report.agent.fds_start = fds_start;
        let checker = Checker::spawn(self.ctx.docker.clone(), self.model.clone(), pid);
        let started_at = Instant::now();
        let mut running: VecDeque<String> = VecDeque::new();
        let mut started = 0;
        let mut next_chaos = Instant::now() + Duration::from_millis(1500);
        let consul_restart_at = self.args.containers / 2;
        let mut consul_restarted = false;
        while started < self.args.containers {
            let batch = START_BATCH.min(self.args.containers - started);
            let mut ids = Vec::new();
            for (kind, id) in self.start_many(started, batch, None, START_BATCH).await {
                *self
                    .report
                    .started_by_kind
                    .entry(kind.label().into())
                    .or_default() += 1;
                ids.push(id);
            }
            started += batch;
            running.extend(ids);
            self.report.max_running = self.report.max_running.max(running.len());
            let extra = running.len().saturating_sub(self.args.concurrent);
            let gone: Vec<String> = (0..extra)
                .filter_map(|_| {
                    let i = self.rng.usize(..running.len());
                    running.remove(i)
                })
                .collect();
            let docker = &self.ctx.docker;
            join_all(gone.iter().map(|id| docker.remove(id))).await;
            if Instant::now() >= next_chaos {
                next_chaos = Instant::now() + Duration::from_millis(1500);
                match self.rng.u8(0..4) {
                    0 => {
                        self.add_instance().await?;
                        self.report.service_changes += 1;
                    }
                    1 => {
                        self.remove_instance().await?;
                        self.report.service_changes += 1;
                    }
                    _ => {
                        let i = self.rng.usize(..NET_ACLS);
                        self.write_acl(i).await?;
                        self.report.kv_changes += 1;
                    }
                }
            }
            if !consul_restarted && started >= consul_restart_at {
                consul_restarted = true;
                progress("soak: restarting consul in the middle of the churn");
                self.restart_consul().await?;
            }
            if started % 100 < START_BATCH {
                progress(&format!(
                    "soak: {started} started, {} running, {} violations so far",
                    running.len(),
                    checker.violations()
                ));
            }
        }
        // Let the last changes settle, then one more full sweep.
        tokio::time::sleep(checker::GRACE + Duration::from_millis(500)).await;
        self.report.churn_seconds = started_at.elapsed().as_secs_f64();
        self.report.containers_started = started;
        let stats = checker.stop().await;
        // The end is measured like the start: with no container of the run left, so what
        // the agent holds per enforced namespace (its deny-log socket) does not count.
        self.remove_all().await?;
        let agent = self.agent()?;
        agent
            .wait_for(
                "the agent to forget the churn's containers",
                Duration::from_millis(50),
                Duration::from_secs(30),
                |s| s.containers.is_empty().then_some(()),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss_end, _) = agent.rss_mib()?;
        let fds_end = agent.fds()?;
        self.report.agent.rss_mib_end = rss_end;
        self.report.agent.fds_end = fds_end;
        self.report.agent.rss_mib_peak = stats.rss_peak.max(rss_end);
        self.report.agent.fds_peak = stats.fds_peak.max(self.report.agent.fds_end);
        self.report.sweeps = stats.sweeps;
        self.report.observations = stats.observations;
        self.report.excused = stats.excused;
        self.report.violation_count = stats.violations.len();
        self.report.violations = stats.violations.into_iter().take(20).collect();
        self.report.sweep_ms_p50 = crate::stats::Distribution::of(&stats.sweep_ms)
            .p50
            .unwrap_or_default();
        Ok(())
    }

    // --- Faults ------------------------------------------------------------------------------

    /// Sweeps until every running container holds exactly what it must (no grace).
    async fn recover(&self, name: &str, from: Instant, what: &str, note: String) -> Fault {
        let mut sweep_ms = 0.0;
        let mut containers = 0;
        let mut recovery_ms = None;
        let mut seen_ms = None;
        // Per container: the first read that found it right, since when it stayed right.
        let mut right_since: HashMap<String, Instant> = HashMap::new();
        while from.elapsed() < RECOVERY_TIMEOUT {
            let t = Instant::now();
            match checker::sweep(&self.ctx.docker, &self.model).await {
                Ok(s) => {
                    sweep_ms = t.elapsed().as_secs_f64() * 1000.0;
                    containers = s.checked;
                    for (id, holds, at) in &s.read {
                        if *holds {
                            right_since.entry(id.clone()).or_insert(*at);
                        } else {
                            right_since.remove(id);
                        }
                    }
                    if s.checked > 0 && s.mismatches == 0 {
                        recovery_ms = Some(from.elapsed().as_secs_f64() * 1000.0);
                        seen_ms = s
                            .read
                            .iter()
                            .filter_map(|(id, _, _)| right_since.get(id))
                            .max()
                            .map(|at| at.saturating_duration_since(from).as_secs_f64() * 1000.0);
                        break;
                    }
                }
                Err(e) => tracing_note(&format!("sweep failed: {e:#}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        progress(&format!(
            "soak: fault {name}: {}",
            recovery_ms.map_or("NOT RECOVERED".into(), |ms| format!(
                "recovered in {ms:.0} ms"
            ))
        ));
        Fault {
            name: name.into(),
            recovery_ms,
            seen_ms,
            from: what.into(),
            sweep_ms,
            containers,
            note,
        }
    }

    /// SIGKILL the agent in the middle of a burst, then start it again.
    async fn fault_agent_kill(&mut self) -> Result<()> {
        progress(&format!(
            "soak: fault agent-kill (burst of {})",
            self.args.burst
        ));
        let burst = self.args.burst;
        let half = burst / 2;
        let first = self.start_many(10_000, half, Some(Kind::Enabled), 16).await;
        if let Some(agent) = self.ctx.agent.take() {
            agent.kill().await?;
        }
        let second = self
            .start_many(10_000 + half, burst - half, Some(Kind::Enabled), 16)
            .await;
        let from = Instant::now();
        self.start_agent(self.state_dir.clone()).await?;
        let up = from.elapsed().as_secs_f64() * 1000.0;
        let note = format!(
            "{} started before the kill, {} while the agent was down; the agent answered \
             /status {up:.0} ms after its restart",
            first.len(),
            second.len()
        );
        let f = self
            .recover("agent-kill", from, "the agent's restart", note)
            .await;
        self.report.faults.push(f);
        self.remove_all().await
    }

    /// Restart dockerd in the middle of a burst (its containers stop with it), then start
    /// new ones.
    async fn fault_dockerd_restart(&mut self) -> Result<()> {
        progress("soak: fault dockerd-restart");
        let half = self.args.burst / 2;
        let before = self.start_many(20_000, half, Some(Kind::Enabled), 16).await;
        kill_process("dockerd", "TERM")?;
        wait_gone("dockerd", Duration::from_secs(60)).await?;
        // Down for a while, as when a restart stops many containers: the agent's retries
        // back off meanwhile, and containers start as soon as dockerd is back.
        tokio::time::sleep(DOCKERD_DOWN).await;
        spawn_detached("/var/log/dockerd.log", DOCKERD_ARGV)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ctx.docker.version().await.is_err() {
            if Instant::now() > deadline {
                bail!("dockerd did not come back within 60 s (log: /var/log/dockerd.log)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let up = Instant::now();
        let after = self.start_many(21_000, half, Some(Kind::Enabled), 16).await;
        let from = Instant::now();
        let note = format!(
            "{} started before the restart (dockerd stopped them), dockerd down for {} s, {} \
             started after it, which took {:.0} ms from dockerd answering again",
            before.len(),
            DOCKERD_DOWN.as_secs(),
            after.len(),
            (from - up).as_secs_f64() * 1000.0
        );
        let f = self
            .recover(
                "dockerd-restart",
                from,
                "the last start after dockerd came back",
                note,
            )
            .await;
        self.report.faults.push(f);
        self.remove_all().await
    }

    /// Kill Consul right after a KV change, while the agent's blocking queries wait on it.
    async fn fault_consul_kill(&mut self) -> Result<()> {
        progress("soak: fault consul-kill");
        let ids = self.start_many(30_000, 20, None, 8).await;
        self.write_acl(0).await?;
        let restored = self.restart_consul().await?;
        let f = self
            .recover(
                "consul-kill",
                restored,
                "the keys written again to the new Consul",
                format!(
                    "{} containers; a dev agent loses its keys, so they are written again",
                    ids.len()
                ),
            )
            .await;
        self.report.faults.push(f);
        self.remove_all().await
    }

    /// A state dir whose disk is full, then corrupt, then read-only.
    async fn fault_disk_full_and_corrupt(&mut self) -> Result<()> {
        progress("soak: faults disk-full, corrupt-state, read-only-state");
        let dir = self.full_dir();
        std::fs::create_dir_all(&dir)?;
        run_ok(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=256k",
            "egt-soak",
            &dir.display().to_string(),
        ])?;
        if let Some(agent) = self.ctx.agent.take() {
            agent.stop().await?;
        }
        self.start_agent(dir.clone()).await?;
        let ids = self.start_many(40_000, 10, None, 8).await;
        let settled = self
            .recover("settle", Instant::now(), "", String::new())
            .await;
        if settled.recovery_ms.is_none() {
            bail!("the agent on a tmpfs state dir did not enforce its containers");
        }
        // Fill the disk, then change the policy: the snapshot cannot be written.
        fill(&dir.join("filler"));
        let log = self.ctx.work_dir.join("agent.log");
        let before = log_len(&log);
        self.write_acl(1).await?;
        let from = Instant::now();
        let mut f = self
            .recover("disk-full", from, "the KV change", String::new())
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.note = said_since(&log, before, "cannot save the policy snapshot");
        self.report.faults.push(f);
        let _ = std::fs::remove_file(dir.join("filler"));

        // Garbage in overrides.json and the snapshot, then an agent restart.
        if let Some(agent) = self.ctx.agent.take() {
            agent.stop().await?;
        }
        std::fs::write(dir.join("overrides.json"), b"{\"not\": [json")?;
        std::fs::write(
            dir.join(egresstrator::policy_watch::SNAPSHOT_FILE),
            b"\x00\x01garbage",
        )?;
        let before = log_len(&log);
        let from = Instant::now();
        self.start_agent(dir.clone()).await?;
        let mut f = self
            .recover("corrupt-state", from, "the agent's restart", String::new())
            .await;
        f.note = said_since(&log, before, "overrides");
        self.report.faults.push(f);

        // A read-only state dir under a running agent, then a KV change.
        run_ok(&["mount", "-o", "remount,ro", &dir.display().to_string()])?;
        let before = log_len(&log);
        self.write_acl(2).await?;
        let from = Instant::now();
        let mut f = self
            .recover("read-only-state", from, "the KV change", String::new())
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.note = said_since(&log, before, "cannot save the policy snapshot");
        self.report.faults.push(f);
        let _ = ids;
        if let Some(agent) = self.ctx.agent.take() {
            agent.stop().await?;
        }
        self.unmount_full();
        self.remove_all().await
    }

    fn full_dir(&self) -> PathBuf {
        self.ctx.work_dir.join("full-state")
    }

    fn unmount_full(&self) {
        let dir = self.full_dir();
        if dir.exists() {
            let _ = Command::new("umount")
                .arg(&dir)
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The background checker of the churn: sweeps until stopped, and samples the agent.
struct Checker {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Stats {
    sweeps: usize,
    observations: usize,
    excused: usize,
    violations: Vec<String>,
    sweep_ms: Vec<f64>,
    rss_peak: f64,
    fds_peak: usize,
}

impl Checker {
    fn spawn(docker: crate::docker::Docker, model: SharedModel, agent_pid: u32) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (s, st) = (stop.clone(), stats.clone());
        let task = tokio::spawn(async move {
            // One more sweep after the stop flag: the final state is checked too.
            loop {
                let last = s.load(Ordering::Relaxed);
                let t = Instant::now();
                let sweep = checker::sweep(&docker, &model).await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let (rss, fds) = sample(agent_pid);
                {
                    let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
                    if let Ok(sweep) = sweep {
                        g.sweeps += 1;
                        g.sweep_ms.push(ms);
                        g.observations += sweep.checked;
                        g.excused += sweep.mismatches - sweep.violations.len();
                        g.violations.extend(sweep.violations);
                    }
                    g.rss_peak = g.rss_peak.max(rss);
                    g.fds_peak = g.fds_peak.max(fds);
                }
                if last {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Checker { stop, stats, task }
    }

    fn violations(&self) -> usize {
        self.stats
            .lock()
            .map(|s| s.violations.len())
            .unwrap_or_default()
    }

    async fn stop(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let mut g = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *g)
    }
}

/// VmRSS in MiB and the open fds of a process (zeros when it is gone).
fn sample(pid: u32) -> (f64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, kernel {}", kernel.trim())
}

fn tracing_note(msg: &str) {
    progress(&format!("soak: {msg}"));
}

async fn consul_has_leader() -> bool {
    let out = tokio::process::Command::new("curl")
        .args([
            "-fsS",
            "--max-time",
            "2",
            "http://127.0.0.1:8500/v1/status/leader",
        ])
        .output()
        .await;
    out.is_ok_and(|o| o.status.success() && o.stdout.len() > 4)
}

fn kill_process(name: &str, signal: &str) -> Result<()> {
    let ok = Command::new("pkill")
        .args([&format!("-{signal}"), "-x", name])
        .status()
        .with_context(|| format!("cannot run pkill for {name}"))?
        .success();
    if !ok {
        bail!("no {name} process to signal");
    }
    Ok(())
}

/// Whether a process of that name runs.
fn running(name: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn wait_gone(name: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while running(name) {
        if Instant::now() > deadline {
            bail!("{name} did not exit within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Starts a daemon in its own session, its output appended to `log`; it outlives the soak.
/// `setsid --fork` makes it nobody's child here: a daemon killed later is not left as a
/// zombie of this process (which `pgrep` would still find).
fn spawn_detached(log: &str, argv: &[&str]) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {log}"))?;
    let err = file.try_clone()?;
    let ok = Command::new("setsid")
        .arg("--fork")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .with_context(|| format!("cannot start {}", argv.join(" ")))?
        .success();
    if !ok {
        bail!("cannot start {}", argv.join(" "));
    }
    Ok(())
}

fn run_ok(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("cannot run {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes zeros into `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::File::create(path) {
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
}

fn log_len(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.len())
}

/// Whether the agent's log says `needle` after byte `from`, as a note.
fn said_since(path: &Path, from: usize, needle: &str) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let new = String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned();
    match new.lines().find(|l| l.contains(needle)) {
        Some(line) => format!("the agent said: {}", agent::truncate(line.trim(), 240)),
        None => format!("the agent's log did NOT say {needle:?}"),
    }
}
