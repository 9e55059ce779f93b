//! The agent under test: started as a child process with its own kv-path and status
//! listener, read through `GET /status`, and stopped (by its pid, never by name) when the
//! benchmark ends, also on error.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::report::DockerEventDelay;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// `GET /status` of the agent, as far as the benchmark reads it. Every field is optional so
/// that an agent that adds or lacks a field still parses; the benchmark then says what is
/// missing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: Option<String>,
    pub mode: Option<String>,
    pub policy: Option<PolicyStatus>,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PolicyStatus {
    pub source: Option<String>,
    pub kv_index: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ContainerStatus {
    pub id: String,
    pub name: Option<String>,
    pub posture: Option<String>,
    pub hash: Option<String>,
    pub fail_closed: Option<bool>,
    pub error: Option<String>,
    pub start_event_unix_nano: Option<i64>,
    pub applied_at_unix_nano: Option<i64>,
    pub apply_count: Option<u64>,
    pub last_apply_ms: Option<f64>,
}

impl Status {
    /// Containers by full id.
    pub fn by_id(&self) -> HashMap<&str, &ContainerStatus> {
        self.containers.iter().map(|c| (c.id.as_str(), c)).collect()
    }
}

/// A running agent started by the benchmark. Dropping it kills the process (tokio's
/// `kill_on_drop`); [`Agent::stop`] asks it to terminate first.
pub struct Agent {
    child: tokio::process::Child,
    pid: u32,
    pub listen: String,
    pub log_path: PathBuf,
    http: reqwest::Client,
}

/// How to start the agent.
pub struct AgentConfig<'a> {
    pub binary: &'a Path,
    pub kv_path: &'a str,
    pub consul: &'a str,
    pub log_level: &'a str,
    pub log_path: PathBuf,
    /// The agent's own snapshot/override directory, so it shares nothing with other agents.
    pub state_dir: PathBuf,
    pub backend: Option<&'a str>,
    /// Where the agent answers egresstrator-runc's hook (the default path only when no other
    /// agent answers there).
    pub hook_socket: PathBuf,
    /// More arguments for the agent (global options).
    pub extra: Vec<String>,
}

impl Agent {
    /// Starts the agent and waits until its status endpoint answers.
    pub async fn start(config: AgentConfig<'_>) -> Result<Agent> {
        if !config.binary.is_file() {
            bail!(
                "agent binary {} not found (build it with `cargo build --release -p egresstrator` \
                 or pass --agent)",
                config.binary.display()
            );
        }
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        // Appended to: one log over the restarts of an agent (the soak's faults).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_path)
            .with_context(|| format!("cannot create agent log {}", config.log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot reopen agent log {}", config.log_path.display()))?;
        let mut command = tokio::process::Command::new(config.binary);
        command
            .arg("--kv-path")
            .arg(config.kv_path)
            .arg("--consul")
            .arg(config.consul)
            .arg("--listen")
            .arg(&listen)
            .arg("--state-dir")
            .arg(&config.state_dir)
            .arg("--log-level")
            .arg(config.log_level)
            .arg("--hook-socket")
            .arg(&config.hook_socket);
        if let Some(backend) = config.backend {
            command.arg("--backend").arg(backend);
        }
        command.args(&config.extra);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start agent {}", config.binary.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("agent {} exited at once", config.binary.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build http client")?;
        let mut agent = Agent {
            child,
            pid,
            listen,
            log_path: config.log_path,
            http,
        };
        agent.wait_ready(Duration::from_secs(20)).await?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("cannot poll agent process")? {
                bail!(
                    "agent exited with {status} before its status endpoint answered; last lines \
                     of {}:\n{}",
                    self.log_path.display(),
                    tail(&self.log_path, 15)
                );
            }
            match self.status().await {
                Ok(_) => return Ok(()),
                Err(e) => last_error = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "agent did not answer GET http://{}/status within {} s ({last_error}); does it \
             support --listen and /status? last lines of {}:\n{}",
            self.listen,
            timeout.as_secs(),
            self.log_path.display(),
            tail(&self.log_path, 15)
        )
    }

    /// The body of a successful `GET path` on the agent's endpoint.
    async fn get(&self, path: &str) -> Result<String> {
        let url = format!("http://{}{path}", self.listen);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let code = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("GET {url}: cannot read body"))?;
        if !code.is_success() {
            bail!("GET {url} answered {code}: {}", truncate(body.trim(), 300));
        }
        Ok(body)
    }

    /// One `GET /status`.
    /// `/status` as JSON, untyped (for fields the benchmark's own types leave out).
    pub async fn status_json(&self) -> Result<serde_json::Value> {
        let url = format!("http://{}/status", self.listen);
        let r = self.http.get(&url).send().await.context("GET /status")?;
        r.json().await.context("/status is not JSON")
    }

    pub async fn status(&self) -> Result<Status> {
        let body = self.get("/status").await?;
        serde_json::from_str(&body).with_context(|| {
            format!(
                "GET /status: body is not the expected status json: {}",
                truncate(&body, 300)
            )
        })
    }

    /// One unlabelled sample of `GET /metrics` (Prometheus text); `None` when the agent does
    /// not export it.
    pub async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let body = self.get("/metrics").await?;
        Ok(metric_value(&body, name))
    }

    /// The counts of the agent's `egresstrator_docker_event_delay_seconds` histogram: all
    /// start events, and those over 25 ms and over 100 ms. `None` when the agent does not
    /// export it (an older agent).
    pub async fn docker_event_delay(&self) -> Result<Option<DockerEventDelay>> {
        let body = self.get("/metrics").await?;
        Ok(docker_event_delay(&body))
    }

    /// Polls `/status` every `interval` until `done` returns `Some`, or fails after `timeout`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        interval: Duration,
        timeout: Duration,
        mut done: impl FnMut(&Status) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            if let Some(value) = done(&status) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {:.1} s waiting for {what} (agent log: {})",
                    timeout.as_secs_f64(),
                    self.log_path.display()
                );
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// VmRSS (and VmHWM, the peak) of the agent process, in MiB.
    pub fn rss_mib(&self) -> Result<(f64, f64)> {
        let f = status_mib(self.pid, &["VmRSS:", "VmHWM:"])?;
        Ok((f[0], f[1]))
    }

    /// [`Agent::rss_mib`] and, from the same reading, what VmRSS is made of, in MiB: RssAnon
    /// (the agent's own heap, stacks and relocated data) and RssFile (pages of its program
    /// and libraries mapped from the page cache). `(rss, peak, anon, file)`.
    pub fn rss_parts_mib(&self) -> Result<(f64, f64, f64, f64)> {
        let f = status_mib(self.pid, &["VmRSS:", "VmHWM:", "RssAnon:", "RssFile:"])?;
        Ok((f[0], f[1], f[2], f[3]))
    }

    /// SIGKILL, no goodbye: what a crash or the OOM killer does.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await.context("cannot kill agent")
    }

    /// Open file descriptors of the agent process.
    pub fn fds(&self) -> Result<usize> {
        let dir = format!("/proc/{}/fd", self.pid);
        Ok(std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {dir}"))?
            .count())
    }

    /// Asks the agent to terminate (SIGTERM via `kill`), waits up to 5 s, then kills it.
    pub async fn stop(mut self) -> Result<()> {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(result) => {
                result.context("cannot wait for agent")?;
            }
            Err(_) => {
                self.child.kill().await.context("cannot kill agent")?;
            }
        }
        Ok(())
    }
}

/// Asks the kernel for a free loopback port. Another process could take it before the agent
/// binds it; the agent then fails to start and the benchmark says so.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0 to find a port")?;
    Ok(listener
        .local_addr()
        .context("cannot read local address")?
        .port())
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The value of the unlabelled sample `name` in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

const DELAY: &str = "egresstrator_docker_event_delay_seconds_bucket";

fn docker_event_delay(text: &str) -> Option<DockerEventDelay> {
    let bucket = |le: &str| metric_value(text, &format!("{DELAY}{{le=\"{le}\"}}"));
    let (all, within_25, within_100) = (bucket("+Inf")?, bucket("0.025")?, bucket("0.1")?);
    Some(DockerEventDelay {
        events: all as u64,
        over_25_ms: (all - within_25) as u64,
        over_100_ms: (all - within_100) as u64,
    })
}

impl DockerEventDelay {
    /// What was counted between `before` and `self`.
    pub fn since(self, before: DockerEventDelay) -> DockerEventDelay {
        DockerEventDelay {
            events: self.events.saturating_sub(before.events),
            over_25_ms: self.over_25_ms.saturating_sub(before.over_25_ms),
            over_100_ms: self.over_100_ms.saturating_sub(before.over_100_ms),
        }
    }
}

pub fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Pids of processes started for this run that are still alive: an agent whose command line
/// names this run's kv-path (unique per run). Normally none; a wrapper passed as `--agent`
/// (e.g. strace) can leave the real agent behind when the wrapper is stopped.
pub fn leftover_pids(kv_path: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let names_ours = args
            .windows(2)
            .any(|w| w[0] == b"--kv-path" && w[1] == kv_path.as_bytes());
        if names_ours && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}

/// Pids of other `egresstrator` agent processes on the host (not started by us): they may
/// enforce our containers too and compete for the CPU, which the report mentions.
pub fn other_agents(own: Option<u32>) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || Some(pid) == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(first) = args.first() else { continue };
        let exe = Path::new(first)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        // Only an agent (no subcommand, or `run`) enforces containers.
        let sub = args.get(1).map(String::as_str).unwrap_or("");
        let is_command = matches!(sub, "set" | "clear" | "validate" | "explain" | "check");
        if exe == "egresstrator" && !is_command {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

/// The named `kB` fields of `/proc/<pid>/status`, in MiB, in order, from one reading.
pub fn status_mib(pid: u32, names: &[&str]) -> Result<Vec<f64>> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    kib_fields_mib(&text, names).with_context(|| format!("in {path}"))
}

/// The named `kB` fields of a `/proc/<pid>/status` text, in MiB, in order.
fn kib_fields_mib(text: &str, names: &[&str]) -> Result<Vec<f64>> {
    names
        .iter()
        .map(|name| {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} line"))?;
            let kib: f64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("cannot parse {line:?}"))?;
            Ok(kib / 1024.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_name_in_mib() {
        // Lines as the kernel writes them (fs/proc/task_mmu.c: name, tab, padded number, kB).
        let text = "Name:\tegresstrator\nVmHWM:\t   17932 kB\nVmRSS:\t   15296 kB\n\
                    RssAnon:\t    3584 kB\nRssFile:\t   11712 kB\nRssShmem:\t       0 kB\n";
        let f = kib_fields_mib(text, &["RssAnon:", "RssFile:", "VmRSS:"]).unwrap();
        assert_eq!(f, vec![3.5, 11.4375, 14.9375]);
        let missing = kib_fields_mib(text, &["VmSwap:"]).unwrap_err();
        assert!(
            format!("{missing:#}").contains("no VmSwap: line"),
            "{missing:#}"
        );
    }

    #[test]
    fn status_parses_contract_example() {
        let body = r#"{"version":"0.3.0","mode":"allowlist",
            "policy":{"source":"consul","kv_index":42,"error":null},
            "containers":[{"id":"abc","name":"x","acls":["web"],"posture":"allowlist",
              "hash":"h","fail_closed":false,"error":null,"start_event_unix_nano":1700000000123456789,
              "applied_at_unix_nano":1700000000125456789,"apply_count":1,"last_apply_ms":0.8}]}"#;
        let status: Status = serde_json::from_str(body).unwrap();
        let c = &status.containers[0];
        assert_eq!(c.start_event_unix_nano, Some(1_700_000_000_123_456_789));
        assert_eq!(c.applied_at_unix_nano, Some(1_700_000_000_125_456_789));
        assert_eq!(status.policy.as_ref().unwrap().kv_index, Some(42));
        assert!(status.by_id().contains_key("abc"));
    }

    #[test]
    fn metric_values_are_found_by_name() {
        let text = "# HELP egresstrator_flows_dropped_total x\n\
                    # TYPE egresstrator_flows_dropped_total counter\n\
                    egresstrator_flows_dropped_total 3\n\
                    egresstrator_flows_dropped_total_x 9\n\
                    egresstrator_apply_duration_seconds_bucket{le=\"0.01\"} 5\n";
        assert_eq!(
            metric_value(text, "egresstrator_flows_dropped_total"),
            Some(3.0)
        );
        assert_eq!(metric_value(text, "egresstrator_nothing"), None);
    }

    /// Oracle: the bucket counts written by hand, cumulative as Prometheus defines them.
    #[test]
    fn late_start_events_are_read_from_the_delay_histogram() {
        let text = "egresstrator_docker_event_delay_seconds_bucket{le=\"0.01\"} 6\n\
                    egresstrator_docker_event_delay_seconds_bucket{le=\"0.025\"} 7\n\
                    egresstrator_docker_event_delay_seconds_bucket{le=\"0.05\"} 8\n\
                    egresstrator_docker_event_delay_seconds_bucket{le=\"0.1\"} 9\n\
                    egresstrator_docker_event_delay_seconds_bucket{le=\"+Inf\"} 10\n";
        let now = docker_event_delay(text).unwrap();
        assert_eq!(
            now,
            DockerEventDelay {
                events: 10,
                over_25_ms: 3,
                over_100_ms: 1
            }
        );
        let before = DockerEventDelay {
            events: 4,
            over_25_ms: 1,
            over_100_ms: 0,
        };
        assert_eq!(
            now.since(before),
            DockerEventDelay {
                events: 6,
                over_25_ms: 2,
                over_100_ms: 1
            }
        );
        assert_eq!(docker_event_delay("egresstrator_up 1\n"), None);
    }

    #[test]
    fn status_tolerates_missing_fields() {
        let status: Status = serde_json::from_str(r#"{"containers":[{"id":"x"}]}"#).unwrap();
        assert_eq!(status.containers[0].applied_at_unix_nano, None);
    }
}
