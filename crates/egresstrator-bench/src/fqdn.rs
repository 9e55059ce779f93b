//! Name destinations, timed: what holding a DNS answer until its addresses are in the set
//! costs each answer (`dns_answer_added_latency_ms`), and whether a connection right after a
//! lookup always finds its address allowed (`fqdn_first_connect_success`).
//!
//! Everything stays on this host: the benchmark's own DNS server (the integration tests'
//! `dns_server.rs`, hand-written wire format) listens on docker0's address, port 53; the
//! containers name it with `--dns`; the answered addresses are the benchmark's listeners or
//! addresses nothing is ever sent to (198.18.0.0/15, the benchmarking range).
//!
//! Latency: an enabled container (its ACL has name lines, so its answers are held) and a
//! container that is not enabled, both on the default bridge, ask the same server the same
//! rotating name from a UDP socket opened in their namespace by this process. Queries
//! alternate between the two in rounds, so drift of the machine hits both; each answer
//! names a new address, so each held answer costs the learner a real commit. The added
//! latency is the difference of the two distributions' percentiles.
//!
//! First connect: the enabled container asks for a name whose 1 s answers alternate
//! between two listeners and connects to the answered address at once, 1.1 s apart, so
//! that the previous address has always expired (the agent runs with `--fqdn-min-ttl 0s`):
//! every connection needs the address learned from its own answer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::agent::{Agent, AgentConfig};
use crate::report::{FqdnLatency, Report};
use crate::run::{progress, Context};
use crate::stats::{percentile, round3, Distribution};

#[allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
#[path = "../../egresstrator/tests/integration/dns_server.rs"]
mod dns_server;

use dns_server::DnsServer;

const LATENCY_NAME: &str = "lat.fqdn.bench";
const CONNECT_NAME: &str = "api.fqdn.bench";
/// Queries per round and container, before switching to the other.
const ROUND: usize = 10;

/// Both measures, into `r`. Runs its own agent (`--fqdn-min-ttl 0s`): call it with no other
/// agent running.
pub async fn measure(ctx: &mut Context, r: &mut Report) -> Result<()> {
    let samples = if ctx.args_quick { 60 } else { 400 };
    let connects = if ctx.args_quick { 5 } else { 20 };
    // The gateway of the default bridge, from a first container.
    let listener_cmd = |_: ()| {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            "mkdir -p /w && echo ok > /w/index.html && httpd -p 80 -h /w && exec sleep 3600"
                .to_string(),
        ]
    };
    let mut ids = Vec::new();
    let result = async {
        let l1 = ctx
            .docker
            .create_custom("fqdn-l1", Vec::new(), Vec::new(), listener_cmd(()))
            .await?;
        ids.push(l1.clone());
        let l2 = ctx
            .docker
            .create_custom("fqdn-l2", Vec::new(), Vec::new(), listener_cmd(()))
            .await?;
        ids.push(l2.clone());
        ctx.docker.start(&l1).await?;
        ctx.docker.start(&l2).await?;
        let n1 = ctx.docker.net_info(&l1).await?;
        let n2 = ctx.docker.net_info(&l2).await?;
        let gateway = match n1.gateway {
            IpAddr::V4(g) => g,
            IpAddr::V6(_) => bail!("the default bridge has no IPv4 gateway"),
        };
        let ip = |n: &crate::docker::NetInfo| match n.ip {
            Some(IpAddr::V4(a)) => Ok(a),
            _ => bail!("a listener has no IPv4 address"),
        };
        let (a1, a2) = (ip(&n1)?, ip(&n2)?);
        let dns = DnsServer::start(SocketAddr::from((gateway, 53))).with_context(|| {
            format!("cannot bind the benchmark's DNS server on {gateway}:53 (is port 53 taken?)")
        })?;
        // 4,096 addresses in 198.18.0.0/15, never sent to.
        let many: Vec<Ipv4Addr> = (0..4096u32)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i))
            .collect();
        dns.rotate(LATENCY_NAME, 60, many);
        dns.rotate(CONNECT_NAME, 1, vec![a1, a2]);
        let acl = format!("{}fqdn", ctx.kv_prefix);
        ctx.consul
            .put(&acl, &format!("{LATENCY_NAME}:tcp/443\n{CONNECT_NAME}:tcp/80\n"))
            .await?;

        let agent = Agent::start(AgentConfig {
            binary: &ctx.agent_path,
            kv_path: &ctx.kv_prefix,
            consul: &ctx.args.consul,
            log_level: &ctx.args.agent_log_level,
            log_path: ctx.work_dir.join("agent-fqdn.log"),
            state_dir: ctx.work_dir.join("agent-fqdn-state"),
            backend: ctx.args.backend.as_deref(),
            hook_socket: ctx.hook_socket.path.clone(),
            extra: vec!["--fqdn-min-ttl".into(), "0s".into()],
        })
        .await?;
        let measured = async {
            let dns_arg = vec![gateway.to_string()];
            let sleep = vec!["sleep".to_string(), "3600".to_string()];
            let enabled = ctx
                .docker
                .create_custom(
                    "fqdn-enabled",
                    vec![
                        "EGRESSTRATOR_ENABLE=1".into(),
                        "EGRESSTRATOR_ACL=fqdn".into(),
                    ],
                    dns_arg.clone(),
                    sleep.clone(),
                )
                .await?;
            ids.push(enabled.clone());
            let plain = ctx
                .docker
                .create_custom("fqdn-plain", Vec::new(), dns_arg, sleep)
                .await?;
            ids.push(plain.clone());
            ctx.docker.start(&enabled).await?;
            ctx.docker.start(&plain).await?;
            wait_learner(&agent, &enabled).await?;
            let ns = |pid: u32| PathBuf::from(format!("/proc/{pid}/ns/net"));
            let ns_enabled = ns(ctx.docker.net_info(&enabled).await?.pid);
            let ns_plain = ns(ctx.docker.net_info(&plain).await?.pid);
            let server = SocketAddr::from((gateway, 53));

            progress(&format!(
                "fqdn: {samples} DNS answers each, held (enabled) and not (plain)"
            ));
            let mut held = Vec::new();
            let mut free = Vec::new();
            let mut round = 0u16;
            while held.len() < samples {
                round = round.wrapping_add(1);
                held.extend(queries(&ns_enabled, server, LATENCY_NAME, ROUND, round).await?);
                free.extend(queries(&ns_plain, server, LATENCY_NAME, ROUND, round).await?);
            }
            // `/status` shows what the learner holds within a tick (250 ms) or so.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let status = agent.status_json().await?;
                let learned = status["containers"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["id"] == enabled.as_str()))
                    .and_then(|c| c["fqdn"]["learned"].as_array().map(Vec::len))
                    .unwrap_or(0);
                if learned >= samples {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the enabled container shows {learned} learned addresses after {samples} answers, each naming a new one: its answers were not all held"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }

            progress(&format!(
                "fqdn: {connects} connections right after a lookup, 1.1 s apart"
            ));
            let mut ok = 0usize;
            let mut failed = Vec::new();
            for i in 0..connects {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                }
                match lookup_and_connect(&ns_enabled, server, CONNECT_NAME).await {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            Ok::<_, anyhow::Error>((held, free, ok, failed))
        }
        .await;
        agent.stop().await?;
        let (held, free, ok, failed) = measured?;
        let pct = |v: &[f64], p: f64| percentile(v, p).map(round3);
        let diff = |p: f64| match (pct(&held, p), pct(&free, p)) {
            (Some(h), Some(f)) => Some(round3(h - f)),
            _ => None,
        };
        r.dns_answer_added_latency_ms = Some(FqdnLatency {
            p50: diff(50.0),
            p99: diff(99.0),
            held: Distribution::of(&held),
            not_held: Distribution::of(&free),
            samples: held.len(),
        });
        r.fqdn_first_connect_success = Some(ok as f64 / connects as f64);
        r.counts.fqdn_connects = connects;
        if !failed.is_empty() {
            r.notes.push(format!(
                "fqdn_first_connect_success: {} of {connects} failed: {}",
                failed.len(),
                failed.join("; ")
            ));
        }
        drop(dns);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ctx.docker.remove_many(&ids).await?;
    result
}

/// Waits until the agent shows the container's learner (its `fqdn` entry in `/status`).
async fn wait_learner(agent: &Agent, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = agent.status_json().await?;
        let running = status["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == id))
            .is_some_and(|c| c["fqdn"].is_object());
        if running {
            // The learner binds its queue right after its rules; give it that moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the agent never started learning for {}",
                crate::docker::short(id)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A query for `name`, type A, with id `id`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// The last A record of an answer from the benchmark's server (one A record, at the end).
fn last_a(answer: &[u8]) -> Option<Ipv4Addr> {
    let rcode = answer.get(3)? & 0x0f;
    let count = u16::from_be_bytes([*answer.get(6)?, *answer.get(7)?]);
    if rcode != 0 || count == 0 || answer.len() < 4 {
        return None;
    }
    let a = &answer[answer.len() - 4..];
    Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// `n` queries from inside the namespace at `ns`, each timed from send to answer, in ms.
async fn queries(
    ns: &std::path::Path,
    server: SocketAddr,
    name: &'static str,
    n: usize,
    round: u16,
) -> Result<Vec<f64>> {
    let samples = egresstrator::netns::run_in_netns_async(ns.to_path_buf(), move || {
        Ok((|| -> Result<Vec<f64>> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(server)?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 512];
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let id = round.wrapping_mul(64).wrapping_add(i as u16);
                let q = query(name, id);
                let t = Instant::now();
                socket.send(&q)?;
                loop {
                    let len = socket.recv(&mut buf).context("no DNS answer within 2 s")?;
                    if len >= 2 && buf[..2] == id.to_be_bytes() {
                        break;
                    }
                }
                out.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(out)
        })())
    })
    .await??;
    Ok(samples)
}

/// One lookup of `name` and, at once, a TCP connection to the answered address, port 80,
/// from inside the namespace at `ns`.
async fn lookup_and_connect(
    ns: &std::path::Path,
    server: SocketAddr,
    name: &'static str,
) -> Result<()> {
    egresstrator::netns::run_in_netns_async(ns.to_path_buf(), move || {
        Ok((|| -> Result<()> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(server)?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.send(&query(name, 0x5151))?;
            let mut buf = [0u8; 512];
            let len = socket.recv(&mut buf).context("no DNS answer within 2 s")?;
            let addr = last_a(&buf[..len]).context("no A record in the answer")?;
            TcpStream::connect_timeout(&SocketAddr::from((addr, 80)), Duration::from_secs(1))
                .with_context(|| format!("connect to {addr}:80 right after its answer"))?;
            Ok(())
        })())
    })
    .await?
}
