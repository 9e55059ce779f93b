//! The fleet measure's own Consul dev agent, on ports of its own, started and killed by the
//! measure itself, and a small admin client that writes its KV and catalog.
//!
//! It must never touch the shared Consul on 8500: other engineers use it, and its CPU and
//! request counts would mix their load with ours. Everything here talks to 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// The ports of our own dev agent (DNS and gRPC are off).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub server: u16,
    pub serf_lan: u16,
    pub serf_wan: u16,
}

impl Ports {
    /// 18500 (HTTP), 18300 (server RPC), 18301/18302 (serf LAN/WAN), shifted by `offset`.
    pub fn with_offset(offset: u16) -> Ports {
        Ports {
            http: 18500 + offset,
            server: 18300 + offset,
            serf_lan: 18301 + offset,
            serf_wan: 18302 + offset,
        }
    }

    fn check_free(&self) -> Result<()> {
        for p in [self.http, self.server, self.serf_lan, self.serf_wan] {
            std::net::TcpListener::bind(("127.0.0.1", p)).with_context(|| {
                format!("port 127.0.0.1:{p} for our own consul is taken (try --port-offset)")
            })?;
        }
        for p in [self.serf_lan, self.serf_wan] {
            std::net::UdpSocket::bind(("127.0.0.1", p)).with_context(|| {
                format!("udp port 127.0.0.1:{p} for our own consul is taken (try --port-offset)")
            })?;
        }
        Ok(())
    }
}

/// A Consul dev agent this program started. Dropping it kills it (`kill_on_drop`), so an
/// error anywhere in the measure never leaves it running.
pub struct OwnConsul {
    bin: PathBuf,
    ports: Ports,
    log: PathBuf,
    child: Option<Child>,
    pub version: String,
}

impl OwnConsul {
    pub async fn start(bin: &Path, ports: Ports, log: PathBuf) -> Result<OwnConsul> {
        let out = Command::new(bin)
            .arg("version")
            .output()
            .await
            .with_context(|| format!("cannot run {} version", bin.display()))?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        ports.check_free()?;
        let mut c = OwnConsul {
            bin: bin.to_owned(),
            ports,
            log,
            child: None,
            version,
        };
        c.spawn().await?;
        Ok(c)
    }

    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.http)
    }

    /// Starts the dev agent and waits until it has a leader and its KV answers.
    pub async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open consul log {}", self.log.display()))?;
        let log2 = log
            .try_clone()
            .with_context(|| format!("cannot open consul log {}", self.log.display()))?;
        let p = self.ports;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["agent", "-dev", "-node", "egt-fleet", "-log-level", "warn"])
            .args(["-bind", "127.0.0.1", "-client", "127.0.0.1"])
            .args(["-dns-port", "-1", "-grpc-port", "-1"])
            .args(["-http-port", &p.http.to_string()])
            .args(["-server-port", &p.server.to_string()])
            .args(["-serf-lan-port", &p.serf_lan.to_string()])
            .args(["-serf-wan-port", &p.serf_wan.to_string()])
            // All 200 simulated hosts connect from 127.0.0.1; Consul 1.8 allows 200 HTTP
            // connections per client IP by default (a real fleet has one IP per host).
            .args(["-hcl", "limits { http_max_conns_per_client = 8000 }"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} agent -dev", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let admin = Admin::new(&self.http_addr())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for consul")? {
                    bail!(
                        "our consul exited at start ({status}); its log: {}",
                        self.log.display()
                    );
                }
            }
            if admin.ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "our consul on {} has no leader after 30 s; its log: {}",
                    self.http_addr(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash or an OOM kill would; waits until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("cannot kill our consul")?;
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// CPU time (user + system, all threads) Consul has used so far, in ms, from
    /// `/proc/<pid>/stat`.
    pub fn cpu_ms(&self) -> Result<f64> {
        let pid = self.pid().context("our consul is not running")?;
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .with_context(|| format!("unexpected {path}: {stat:?}"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> Result<u64> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("unexpected {path}: {stat:?}"))
        };
        // utime and stime are fields 14 and 15 of the file; `rest` starts at field 3.
        let ticks = field(11)? + field(12)?;
        Ok(ticks as f64 * 1000.0 / clock_ticks_per_second() as f64)
    }
}

fn clock_ticks_per_second() -> i64 {
    // SAFETY: sysconf only reads a constant of the running system; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t
    } else {
        100
    }
}

/// Writes to our own Consul directly (not through the counting proxy): the writer's own
/// requests are not the fleet's.
#[derive(Clone)]
pub struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(addr: &str) -> Result<Admin> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the admin http client")?;
        Ok(Admin {
            base: format!("http://{addr}"),
            http,
        })
    }

    async fn ready(&self) -> bool {
        let leader = async {
            let r = self
                .http
                .get(format!("{}/v1/status/leader", self.base))
                .send()
                .await
                .ok()?;
            let text = r.text().await.ok()?;
            Some(text.trim().trim_matches('"').is_empty())
        };
        if leader.await != Some(false) {
            return false;
        }
        // A leader is not enough: KV must answer too.
        matches!(
            self.http.get(format!("{}/v1/kv/egt-fleet-ready-probe", self.base)).send().await,
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND || r.status().is_success()
        )
    }

    pub async fn put(&self, key: &str, value: &str) -> Result<()> {
        let r = self
            .http
            .put(format!("{}/v1/kv/{key}", self.base))
            .body(value.to_owned())
            .send()
            .await
            .with_context(|| format!("consul kv put {key}"))?;
        if !r.status().is_success() {
            bail!("consul kv put {key} answered {}", r.status());
        }
        Ok(())
    }

    pub async fn register(&self, id: &str, name: &str, addr: &str, port: u16) -> Result<()> {
        let body = serde_json::json!({ "ID": id, "Name": name, "Address": addr, "Port": port });
        let r = self
            .http
            .put(format!("{}/v1/agent/service/register", self.base))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("registering service {id}"))?;
        if !r.status().is_success() {
            bail!("registering service {id} answered {}", r.status());
        }
        Ok(())
    }

    pub async fn deregister(&self, id: &str) -> Result<()> {
        let r = self
            .http
            .put(format!("{}/v1/agent/service/deregister/{id}", self.base))
            .send()
            .await
            .with_context(|| format!("deregistering service {id}"))?;
        if !r.status().is_success() {
            bail!("deregistering service {id} answered {}", r.status());
        }
        Ok(())
    }
}
