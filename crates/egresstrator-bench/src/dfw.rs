//! dfw (pitkley/dfw, the Docker firewall framework) as a peer, measured in the same run on
//! the same dockerd: how long a started container runs before dfw's rules for it are in force.
//!
//! dfw watches Docker's container events, waits `--burst-timeout` ms after the last one, then
//! rebuilds its whole ruleset in the host's nftables (`table inet dfw`, `ip dfw`, `ip6 dfw`)
//! with one `nft -f`. Its per-container rules name the container's address
//! (`ip saddr <ip>`), so "in force" for a container means: the `nft -f` transaction that adds a
//! rule of `table inet dfw` naming its address has been committed. `nft monitor new rules` (on
//! the host, read only) reports each added rule right after the commit; the wall clock when its
//! line arrives here is the counterpart of the agent's `applied_at_unix_nano` (wall clock right
//! after its commit).
//!
//! The config is the benchmark's ACL (`bench`: 10 lines `10.x.y.z/32:tcp/443`) as dfw
//! container-to-wider-world rules: for each benchmark container an accept of those
//! destinations from its address, then a drop of everything else from the benchmark's own
//! network (and a drop towards the host). Only that network is affected: no
//! `external_network_interfaces` (so no masquerading and no per-interface defaults for other
//! networks), container-to-container and the other defaults stay `accept`. The network is
//! created `--internal` (no route off the host) and the containers only sleep: no packet
//! leaves the machine. They are not enabled for egresstrator, and the benchmark's agent is
//! stopped before this measure, so only dfw acts on them.
//!
//! What dfw leaves behind (its tables; it removes nothing when stopped) is deleted after each
//! phase and, after an error or Ctrl-C, by [`cleanup_sync`] through the run's cleanup.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::docker::{self, StartEvents};
use crate::report::{ByBurstTimeout, DfwCpu, DfwInfo, DfwLatency, Report, Rss2};
use crate::run::{progress, Context};
use crate::stats::{now_unix_nano, ns_to_ms, round3, rounded, DistributionN};

/// Where `cargo install dfw` puts it when `~/.cargo/bin` is not on PATH.
const CARGO_BIN: &str = "/root/.cargo/bin/dfw";
/// dfw's tables (what it creates; see its `nftables/process.rs`).
const TABLES: [&str; 3] = ["inet dfw", "ip dfw", "ip6 dfw"];
/// The burst timeouts the measure runs dfw with: its default, and none.
pub const BURST_TIMEOUTS: [u64; 2] = [500, 0];
/// How long one start may take to show dfw's rule.
const RULE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the measure leaves on the host while it runs, for [`cleanup_sync`].
#[derive(Debug, Default)]
pub struct Leftovers {
    /// dfw processes started and not yet seen to exit.
    pub pids: Vec<u32>,
    /// dfw may have created its tables.
    pub tables: bool,
}

/// The dfw binary: `--dfw PATH`, else `dfw` on PATH, else `/root/.cargo/bin/dfw`. `Err` says
/// why there is none.
pub fn find(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    find_in(
        explicit,
        std::env::var_os("PATH").as_deref(),
        Path::new(CARGO_BIN),
    )
}

fn find_in(
    explicit: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
    cargo_bin: &Path,
) -> std::result::Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--dfw {}: no such file", p.display()))
        };
    }
    let on_path = path_var
        .map(|paths| {
            std::env::split_paths(paths)
                .map(|d| d.join("dfw"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    if let Some(p) = on_path {
        return Ok(p);
    }
    if cargo_bin.is_file() {
        return Ok(cargo_bin.to_path_buf());
    }
    Err(format!(
        "no `dfw` on PATH nor at {CARGO_BIN}, and no --dfw PATH (install it with `cargo install \
         dfw`; dfw 1.3.0's lock file pins the `time` crate at 0.3.31, which newer compilers \
         reject: build it with `cargo update -p time` in its source)"
    ))
}

/// `dfw --version`, or why it cannot run.
fn version(path: &Path) -> Result<String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} --version", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version exited with {}: {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The host's nftables tables among dfw's.
fn dfw_tables_present() -> Result<Vec<String>> {
    let out = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .context("cannot run `nft list tables`")?;
    if !out.status.success() {
        bail!(
            "`nft list tables` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(TABLES
        .iter()
        .filter(|t| text.lines().any(|l| l.trim() == format!("table {t}")))
        .map(|t| t.to_string())
        .collect())
}

/// Deletes dfw's tables from the host (those that exist).
fn delete_tables() -> Result<()> {
    for t in dfw_tables_present()? {
        let out = std::process::Command::new("nft")
            .arg("delete")
            .arg("table")
            .args(t.split_whitespace())
            .output()
            .with_context(|| format!("cannot run `nft delete table {t}`"))?;
        if !out.status.success() {
            bail!(
                "`nft delete table {t}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Processes named `dfw` on this host (another dfw would act on our containers and tables).
fn running_dfw() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "dfw")
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie has no `VmRSS`: it is gone for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("VmRSS:")))
}

/// Stops the dfw processes we started and deletes dfw's tables. Synchronous: it runs from the
/// run's cleanup and from `Drop`.
pub fn cleanup_sync(leftovers: &mut Leftovers) {
    for pid in leftovers.pids.drain(..) {
        let Ok(p) = i32::try_from(pid) else { continue };
        // Only while that pid is still a dfw (ours: a second dfw is refused before starting).
        let is_dfw =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "dfw");
        if !is_dfw {
            continue;
        }
        // SAFETY: kill(2) with a pid this run started; no memory is involved.
        unsafe {
            libc::kill(p, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
    if leftovers.tables {
        match delete_tables() {
            Ok(()) => leftovers.tables = false,
            Err(e) => eprintln!("warning: dfw's tables: {e:#}"),
        }
    }
}

/// The dfw config: the benchmark's ACL for each of `containers` on `network`, default deny for
/// that network only.
pub fn config(network: &str, containers: &[String], acl_text: &str) -> Result<String> {
    // Group the ACL's destinations by protocol and port: one dfw rule per group.
    let mut groups: Vec<((String, String), Vec<String>)> = Vec::new();
    for line in acl_text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (cidr, rest) = line
            .split_once(':')
            .with_context(|| format!("ACL line {line:?} has no ':'"))?;
        let (proto, port) = rest
            .split_once('/')
            .with_context(|| format!("ACL line {line:?} has no protocol/port"))?;
        if !matches!(proto, "tcp" | "udp") || port.parse::<u16>().is_err() {
            bail!("ACL line {line:?}: only tcp/udp with one port is translated for dfw");
        }
        cidr.parse::<std::net::Ipv4Addr>()
            .ok()
            .or_else(|| {
                cidr.split_once('/')
                    .and_then(|(a, _)| a.parse::<std::net::Ipv4Addr>().ok())
            })
            .with_context(|| format!("ACL line {line:?}: not an IPv4 destination"))?;
        let key = (proto.to_string(), port.to_string());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(cidr.to_string()),
            None => groups.push((key, vec![cidr.to_string()])),
        }
    }
    let mut s = String::new();
    s.push_str(
        "# Written by egresstrator-bench: the ACL `bench` for each benchmark container, default\n\
         # deny for the benchmark's network only. No external_network_interfaces: dfw then adds\n\
         # no masquerading and no per-interface default rules for other networks.\n\
         [global_defaults]\n\n\
         [container_to_container]\n\
         default_policy = \"accept\"\n\n\
         [container_to_host]\n\
         default_policy = \"accept\"\n\n\
         [[container_to_host.rules]]\n",
    );
    s.push_str(&format!(
        "network = \"{network}\"\nverdict = \"drop\"\n\n[container_to_wider_world]\n\
         default_policy = \"accept\"\n"
    ));
    for name in containers {
        for ((proto, port), cidrs) in &groups {
            s.push_str(&format!(
                "\n[[container_to_wider_world.rules]]\nnetwork = \"{network}\"\n\
                 src_container = \"{name}\"\nmatches = \"ip daddr {{ {} }} {proto} dport {port}\"\n\
                 verdict = \"accept\"\n",
                cidrs.join(", ")
            ));
        }
    }
    s.push_str(&format!(
        "\n[[container_to_wider_world.rules]]\nnetwork = \"{network}\"\nverdict = \"drop\"\n"
    ));
    Ok(s)
}

/// Whether `line` (an `nft monitor` line) names `ip` as its source address.
pub fn names_source(line: &str, ip: &str) -> bool {
    let needle = format!("saddr {ip}");
    line.match_indices(&needle).any(|(i, _)| {
        line[i + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_digit() || c == '.'))
    })
}

/// Lines of `nft monitor new rules` about dfw's tables, with the wall clock when each arrived.
struct Monitor {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<(i64, String)>>>,
}

impl Monitor {
    async fn start() -> Result<Monitor> {
        let mut child = tokio::process::Command::new("nft")
            .args(["monitor", "new", "rules"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run `nft monitor new rules`")?;
        let stdout = child.stdout.take().context("nft monitor has no stdout")?;
        let lines: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let at = now_unix_nano();
                if line.contains(" dfw ") {
                    if let Ok(mut v) = sink.lock() {
                        v.push((at, line));
                    }
                }
            }
        });
        // Let it subscribe before anything happens.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(Some(status)) = child.try_wait() {
            bail!("`nft monitor new rules` exited at once: {status}");
        }
        Ok(Monitor { child, lines })
    }

    /// The first line at or after `since` (unix ns) for which `f` holds.
    fn find(&self, since: i64, f: impl Fn(&str) -> bool) -> Option<i64> {
        let v = self.lines.lock().ok()?;
        v.iter()
            .find(|(at, l)| *at >= since && f(l))
            .map(|(at, _)| *at)
    }

    fn last_at(&self) -> Option<i64> {
        self.lines.lock().ok()?.last().map(|(at, _)| *at)
    }

    /// Whole-ruleset rebuilds seen since `since`: each starts with dfw's first input rule.
    fn rebuilds(&self, since: i64) -> usize {
        self.lines.lock().map_or(0, |v| {
            v.iter()
                .filter(|(at, l)| {
                    *at >= since
                        && l.contains("inet dfw input")
                        && l.contains("ct state invalid drop")
                })
                .count()
        })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// utime+stime and cutime+cstime of `pid`, in ms.
fn cpu_ms(pid: u32) -> Result<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name in parentheses (which may hold spaces).
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unparsable /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let get = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .context("unparsable /proc/<pid>/stat")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let own = (get(11)? + get(12)?) * 1000.0 / hz;
    let children = (get(13)? + get(14)?) * 1000.0 / hz;
    Ok((own, children))
}

/// `VmRSS` and `VmHWM` of `pid`, MiB.
fn rss_mib(pid: u32) -> Result<Rss2> {
    let f = crate::agent::status_mib(pid, &["VmRSS:", "VmHWM:"])?;
    Ok(Rss2 {
        rss: round3(f[0]),
        peak: round3(f[1]),
    })
}

fn tail(path: &Path) -> String {
    crate::agent::tail(path, 15)
}

struct Phase {
    latency: DfwLatency,
    cpu: DfwCpu,
    rss: Rss2,
}

/// The dfw measure: both burst timeouts. Anything that keeps it from running is returned as
/// an error, which the caller turns into a note.
pub async fn measure(ctx: &Context, dfw_path: Option<&Path>, r: &mut Report) -> Result<()> {
    let path = find(dfw_path).map_err(|why| anyhow::anyhow!(why))?;
    let version = version(&path)?;
    let present = dfw_tables_present()?;
    if !present.is_empty() {
        bail!(
            "dfw's table(s) {} already exist on this host (another dfw?): not touching them",
            present.join(", ")
        );
    }
    let others = running_dfw();
    if !others.is_empty() {
        bail!("another dfw runs on this host (pid {others:?}): it would act on our containers");
    }
    let n = ctx.counts.dfw_starts;
    let network = format!("egt-bench-{}-dfw", ctx.run);
    progress(&format!(
        "dfw ({version}, {}): {n} sequential starts per burst timeout on network {network}",
        path.display()
    ));
    ctx.docker.create_network(&network, true).await?;
    let events = ctx.docker.record_starts().await?;
    let acl = crate::apply::generated_acl(crate::run::SMALL_ACL_LINES);
    let mut latency = ByBurstTimeout::default();
    let mut cpu = ByBurstTimeout::default();
    let mut rss = ByBurstTimeout::default();
    let mut result = Ok(());
    for bt in BURST_TIMEOUTS {
        match phase(ctx, &path, &network, &events, &acl, bt, n).await {
            Ok(p) => {
                *latency.get_mut(bt) = Some(p.latency);
                *cpu.get_mut(bt) = Some(p.cpu);
                *rss.get_mut(bt) = Some(p.rss);
            }
            Err(e) => {
                result = Err(e.context(format!("dfw --burst-timeout {bt}")));
                break;
            }
        }
    }
    // Whatever happened: no dfw, no tables, no network left.
    let cleanup = async {
        if let Ok(mut l) = ctx.dfw_leftovers.lock() {
            cleanup_sync(&mut l);
        }
        ctx.docker.remove_network(&network).await
    }
    .await;
    let left = dfw_tables_present().unwrap_or_default();
    if !left.is_empty() {
        r.notes.push(format!(
            "dfw's tables still on the host: {}",
            left.join(", ")
        ));
    }
    let any = latency.burst_timeout_500.is_some() || latency.burst_timeout_0.is_some();
    if any {
        let agent = r.exposure_window_ms.as_ref().and_then(|x| x.p50);
        let peer = latency.burst_timeout_0.as_ref().and_then(|d| d.p50);
        if let (Some(a), Some(p)) = (agent, peer) {
            if a > 0.0 {
                r.ratio_dfw_over_agent_p50 = Some((p / a * 10.0).round() / 10.0);
            }
        }
        r.dfw_ms = Some(latency);
        r.dfw_cpu = Some(cpu);
        r.dfw_rss_mib = Some(rss);
        r.dfw = Some(DfwInfo {
            path: path.display().to_string(),
            version,
            network: network.clone(),
            starts: n,
            in_force: "the nft transaction of dfw's rebuild that adds a rule of `table inet dfw` \
                       naming the container's address (`ip saddr <ip>`) is committed: the wall \
                       clock when `nft monitor new rules` on the host delivered that line"
                .into(),
            work_dir: ctx.work_dir.display().to_string(),
        });
        r.notes.push(format!(
            "dfw: {n} containers started one after the other per phase on the internal network \
             {network}, each kept running until the phase ended (so every one has its own \
             address); dfw rebuilds its whole ruleset on every container event of the host \
             (other engineers' containers included) and inspects the network once per running \
             container named in its config, so later starts of a phase take longer (see \
             dfw_ms.*.samples_ms)"
        ));
    }
    result?;
    // What was measured stands; the run's final clean-up removes the run's networks again.
    if let Err(e) = cleanup {
        r.notes.push(format!("dfw: {e:#}"));
    }
    Ok(())
}

async fn phase(
    ctx: &Context,
    path: &Path,
    network: &str,
    events: &StartEvents,
    acl: &str,
    bt: u64,
    n: usize,
) -> Result<Phase> {
    let suffix = |i: usize| format!("dfw{bt}-{i}");
    let mut ids = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let result = async {
        for i in 0..n {
            ids.push(ctx.docker.create_on_network(&suffix(i), network).await?);
            names.push(format!("egt-bench-{}-{}", ctx.run, suffix(i)));
        }
        let cfg = ctx.work_dir.join(format!("dfw-{bt}.toml"));
        std::fs::write(&cfg, config(network, &names, acl)?)
            .with_context(|| format!("cannot write {}", cfg.display()))?;
        let check = tokio::process::Command::new(path)
            .arg("--check-config")
            .arg("--config-file")
            .arg(&cfg)
            .output()
            .await
            .context("cannot run dfw --check-config")?;
        if !check.status.success() {
            bail!(
                "dfw --check-config rejected {}: {}{}",
                cfg.display(),
                String::from_utf8_lossy(&check.stdout).trim(),
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
        let monitor = Monitor::start().await?;
        let out = run_dfw(ctx, path, &cfg, &monitor, events, &ids, network, bt).await;
        monitor.stop().await;
        out
    }
    .await;
    if let Ok(mut l) = ctx.dfw_leftovers.lock() {
        cleanup_sync(&mut l);
    }
    ctx.docker.remove_many(&ids).await?;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_dfw(
    ctx: &Context,
    path: &Path,
    cfg: &Path,
    monitor: &Monitor,
    events: &StartEvents,
    ids: &[String],
    network: &str,
    bt: u64,
) -> Result<Phase> {
    let log_path = ctx.work_dir.join(format!("dfw-{bt}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let t_launch = now_unix_nano();
    let mut child = tokio::process::Command::new(path)
        .arg("--config-file")
        .arg(cfg)
        .arg("--burst-timeout")
        .arg(bt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", path.display()))?;
    let pid = child.id().context("dfw exited at once")?;
    if let Ok(mut l) = ctx.dfw_leftovers.lock() {
        l.pids.push(pid);
        l.tables = true;
    }
    let exited = |child: &mut tokio::process::Child| -> Result<()> {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "dfw exited with {status}; its log {}:\n{}",
                log_path.display(),
                tail(&log_path)
            );
        }
        Ok(())
    };
    // Its first rebuild (at start), then quiet.
    let deadline = Instant::now() + RULE_TIMEOUT;
    while monitor.find(t_launch, |l| l.contains("inet dfw")).is_none() {
        exited(&mut child)?;
        if Instant::now() >= deadline {
            bail!(
                "dfw put no rule into table inet dfw within {} s; its log {}:\n{}",
                RULE_TIMEOUT.as_secs(),
                log_path.display(),
                tail(&log_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settle(monitor, bt).await;
    exited(&mut child)?;
    let (cpu0, children0) = cpu_ms(pid)?;
    let t_first = now_unix_nano();
    let mut from_started = Vec::with_capacity(ids.len());
    let mut from_event = Vec::with_capacity(ids.len());
    let mut last_at = t_first;
    for (i, id) in ids.iter().enumerate() {
        let t0 = now_unix_nano();
        ctx.docker.start(id).await?;
        let (ip, started) = ctx.docker.ip_and_started(id, network).await?;
        let deadline = Instant::now() + RULE_TIMEOUT;
        let at = loop {
            if let Some(at) = monitor.find(t0, |l| {
                l.contains("add rule inet dfw") && names_source(l, &ip)
            }) {
                break at;
            }
            exited(&mut child)?;
            if Instant::now() >= deadline {
                bail!(
                    "no dfw rule naming {ip} (container {}) within {} s",
                    docker::short(id),
                    RULE_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        last_at = at;
        from_started.push(ns_to_ms(at - started));
        if let Ok(seen) = docker::wait_seen(events, id, Duration::from_secs(5)).await {
            from_event.push(ns_to_ms(at - seen.time_nano));
        }
        if (i + 1) % 10 == 0 {
            progress(&format!(
                "  dfw --burst-timeout {bt}: {} started, last {:.1} ms",
                i + 1,
                ns_to_ms(at - started)
            ));
        }
        // dfw is idle again before the next start.
        settle(monitor, bt).await;
    }
    let (cpu1, children1) = cpu_ms(pid)?;
    let rss = rss_mib(pid)?;
    // For review: dfw's ruleset with every container running (read only).
    if let Ok(out) = std::process::Command::new("nft")
        .args(["list", "table", "inet", "dfw"])
        .output()
    {
        let _ = std::fs::write(ctx.work_dir.join(format!("dfw-{bt}.ruleset")), &out.stdout);
    }
    let rebuilds = monitor.rebuilds(t_first);
    // SAFETY: kill(2) with the pid of the child just started.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Ok(mut l) = ctx.dfw_leftovers.lock() {
        l.pids.retain(|p| *p != pid);
    }
    let d = DistributionN::of(&from_started);
    let wall_ms = ns_to_ms(last_at - t_first).max(f64::MIN_POSITIVE);
    let (own, kids) = (cpu1 - cpu0, children1 - children0);
    progress(&format!(
        "dfw --burst-timeout {bt}: StartedAt→rule p50 {:.1} p99 {:.1} max {:.1} ms (n={}), \
         cpu {:.0}+{:.0} ms (nft), rss {:.1} MiB",
        d.p50.unwrap_or(f64::NAN),
        d.p99.unwrap_or(f64::NAN),
        d.max.unwrap_or(f64::NAN),
        d.n,
        own,
        kids,
        rss.rss
    ));
    Ok(Phase {
        latency: DfwLatency {
            p50: d.p50,
            p95: d.p95,
            p99: d.p99,
            max: d.max,
            n: d.n,
            from_start_event: DistributionN::of(&from_event),
            samples_ms: rounded(&from_started),
            rebuilds,
        },
        cpu: DfwCpu {
            dfw_ms: round3(own),
            nft_children_ms: round3(kids),
            wall_ms: round3(wall_ms),
            percent_of_one_core: round3((own + kids) / wall_ms * 100.0),
            per_start_ms: round3((own + kids) / ids.len().max(1) as f64),
        },
        rss,
    })
}

/// Waits until dfw has added no rule for a while: longer than its burst timeout. Gives up
/// after 2 s more than that: other containers' events on the host can keep it busy.
async fn settle(monitor: &Monitor, bt: u64) {
    let quiet = Duration::from_millis(bt + 150);
    let deadline = Instant::now() + Duration::from_millis(bt + 2000);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let since = monitor
            .last_at()
            .map(|at| ns_to_ms(now_unix_nano() - at))
            .unwrap_or(f64::MAX);
        if since >= quiet.as_secs_f64() * 1000.0 || Instant::now() >= deadline {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dfw_is_found_on_path_then_in_cargo_bin_else_not() {
        let dir = std::env::temp_dir().join(format!("egt-bench-dfw-find-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let none = dir.join("nothing-here");
        let path_var = std::ffi::OsString::from(format!("{}:{}", none.display(), bin.display()));
        let why = find_in(None, Some(&path_var), &none.join("dfw")).unwrap_err();
        assert!(why.contains("no `dfw` on PATH"), "{why}");
        let cargo = dir.join("cargo-dfw");
        std::fs::write(&cargo, "").unwrap();
        assert_eq!(find_in(None, Some(&path_var), &cargo).unwrap(), cargo);
        std::fs::write(bin.join("dfw"), "").unwrap();
        assert_eq!(
            find_in(None, Some(&path_var), &cargo).unwrap(),
            bin.join("dfw")
        );
        assert!(find_in(Some(&none), Some(&path_var), &cargo)
            .unwrap_err()
            .contains("no such file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn source_address_is_matched_whole() {
        let l = "add rule inet dfw forward iifname \"br-1\" ip saddr 172.20.0.3 ip daddr { 10.0.0.1 } tcp dport 443 accept";
        assert!(names_source(l, "172.20.0.3"));
        assert!(!names_source(l, "172.20.0.30"));
        assert!(!names_source(l, "172.20.0."));
        assert!(names_source("ip saddr 1.2.3.4", "1.2.3.4"));
    }

    #[test]
    fn config_names_every_container_and_denies_the_rest() {
        let cfg = config(
            "net",
            &["a".to_string(), "b".to_string()],
            "10.0.0.1/32:tcp/443\n10.0.3.254/32:tcp/443\n",
        )
        .unwrap();
        assert_eq!(cfg.matches("src_container").count(), 2);
        assert!(cfg.contains("matches = \"ip daddr { 10.0.0.1/32, 10.0.3.254/32 } tcp dport 443\""));
        assert!(cfg
            .trim_end()
            .ends_with("network = \"net\"\nverdict = \"drop\""));
        assert!(!cfg.contains("external_network_interfaces ="));
        assert!(config("net", &[], "10.0.0.1/32:icmp\n").is_err());
    }
}
