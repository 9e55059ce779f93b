//! Consul done right, against real Consul agents with real traffic: live KV
//! changes (also cutting open connections), service references, an ACL-enabled Consul with
//! tokens, a TLS-only Consul with a throwaway CA, and Consul outages.
//!
//! Tests that need a Consul with special settings (ACLs, TLS, outages) run their own
//! `consul agent -dev` on moved ports ([`ConsulProc`]); the shared agent on 127.0.0.1:8500 is
//! only read and written, never stopped or reconfigured. Every test uses its own kv-path and
//! its own /24 in 10.231.60.0–10.231.79.0, and traffic only goes to its own containers.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

// ---------------------------------------------------------------------------------------------
// Support: private Consul agents, the Consul HTTP API, agents with a chosen environment.
// (Kept in this file so that it does not depend on helpers other tests are still changing.)

/// Polls `f` every 100 ms until it returns `Some`, up to `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u32::from_ne_bytes(b)
}

/// Other egresstrator processes enforce every enabled container on the host with their own
/// kv-path; wait (up to 3 minutes) until none runs, then go on with a warning.
fn wait_quiet_host() {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = sh("pgrep -x egresstrator");
        let pids = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("WARNING: other egresstrator agents run ({pids}); they may interfere");
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Watches for egresstrator processes this test did not start while it runs: such an agent
/// enforces this test's containers with its own kv-path and makes the results meaningless.
/// When the test fails, the guard says whether that happened.
struct ForeignAgents {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignAgents {
    /// Waits until the host is quiet, then starts watching.
    fn watch() -> Self {
        wait_quiet_host();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let me = std::process::id().to_string();
        let thread = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                // Our own agents are children of this process.
                let out = sh(
                    "for p in $(pgrep -x egresstrator); do echo \"$p $(ps -o ppid= -p $p)\"; done",
                );
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let mut w = line.split_whitespace();
                    let (Some(pid), ppid) = (w.next(), w.next()) else {
                        continue;
                    };
                    if ppid != Some(me.as_str()) {
                        let mut seen = seen2.lock().unwrap_or_else(|e| e.into_inner());
                        if !seen.iter().any(|p| p == pid) {
                            seen.push(pid.to_owned());
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        ForeignAgents {
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for ForeignAgents {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if std::thread::panicking() && !seen.is_empty() {
            eprintln!(
                "NOTE: egresstrator agents of other test runs (pids {seen:?}) ran during this \
                 test and enforce its containers too; retry when the host is quiet"
            );
        }
    }
}

/// A directory under the system temp dir, removed when dropped (kept when the test panics,
/// for the post-mortem).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "egt-{tag}-{}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The six ports of a private Consul dev agent, consecutive, in 18500–18999. `api` is the
/// HTTP port, or the HTTPS port when the agent serves TLS only.
#[derive(Clone, Copy, Debug)]
struct ConsulPorts {
    api: u16,
    dns: u16,
    grpc: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

impl ConsulPorts {
    /// Ports for `slot` (0–3) of this test process, derived from the pid so that concurrent
    /// test processes do not clash; blocks in use are skipped.
    fn pick(slot: u16) -> Self {
        const BLOCKS: u16 = 83; // 83 × 6 ports fit in 18500–18997
        let start = (std::process::id() % 20) as u16 * 4 + slot % 4;
        for i in 0..BLOCKS {
            let base = 18500 + ((start + i) % BLOCKS) * 6;
            let free = (base..base + 6).all(|p| {
                std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
            });
            if free {
                return ConsulPorts {
                    api: base,
                    dns: base + 1,
                    grpc: base + 2,
                    serf_lan: base + 3,
                    serf_wan: base + 4,
                    server: base + 5,
                };
            }
        }
        panic!("no free block of 6 ports in 18500-18999 for a private consul agent");
    }
}

/// How the test's own requests reach a TLS-only Consul.
#[derive(Clone, Debug)]
struct ConsulClientTls {
    ca: PathBuf,
    /// Client certificate and key, for `verify_incoming`.
    client: Option<(PathBuf, PathBuf)>,
}

/// A private `consul agent -dev` with every port moved, extra config (ACLs, TLS) and a data
/// dir under a temp dir; killed when dropped. A dev agent keeps its data in memory: a restart
/// starts empty. The shared agent on 127.0.0.1:8500 is never touched.
struct ConsulProc {
    child: Option<Child>,
    dir: TempDir,
    ports: ConsulPorts,
    /// Extra HCL after the ports block; read again at each (re)start.
    extra_hcl: String,
    /// Set when the agent serves HTTPS only: how the test's own requests trust it.
    tls: Option<ConsulClientTls>,
    /// Token for the test's own requests (the ACL master token).
    token: Option<String>,
    runs: u32,
    slot: u16,
}

impl ConsulProc {
    /// Starts the agent and waits until it has a leader (and, with a token, until the token
    /// works).
    fn start(
        slot: u16,
        extra_hcl: &str,
        tls: Option<ConsulClientTls>,
        token: Option<&str>,
    ) -> Self {
        let mut c = ConsulProc {
            child: None,
            dir: TempDir::new(&format!("consul{slot}")),
            ports: ConsulPorts::pick(slot),
            extra_hcl: extra_hcl.to_owned(),
            tls,
            token: token.map(str::to_owned),
            runs: 0,
            slot,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let p = self.ports;
        let api = if self.tls.is_some() {
            format!("http = -1\n  https = {}", p.api)
        } else {
            format!("http = {}\n  https = -1", p.api)
        };
        let hcl = format!(
            "ports {{\n  {api}\n  dns = {}\n  grpc = {}\n  serf_lan = {}\n  serf_wan = {}\n  server = {}\n}}\n{}\n",
            p.dns, p.grpc, p.serf_lan, p.serf_wan, p.server, self.extra_hcl
        );
        let config = self.dir.join("consul.hcl");
        std::fs::write(&config, hcl).expect("write consul config");
        self.runs += 1;
        let file =
            File::create(self.dir.join(&format!("consul-{}.log", self.runs))).expect("consul log");
        let child = Command::new("consul")
            .args([
                "agent",
                "-dev",
                "-client",
                "127.0.0.1",
                "-bind",
                "127.0.0.1",
            ])
            .arg("-node")
            .arg(format!("egt-consul-{}-{}", std::process::id(), self.slot))
            .arg("-config-file")
            .arg(&config)
            .arg("-data-dir")
            .arg(self.dir.join("data"))
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("spawn consul");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = self.api("GET", "/v1/status/leader", None);
            let leader = code == 200 && !body.trim().trim_matches('"').is_empty();
            let token_ok =
                self.token.is_none() || self.api("GET", "/v1/acl/token/self", None).0 == 200;
            if leader && token_ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "consul exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "consul on port {} never got ready (last answer {code} {body:?}):\n{}",
                p.api,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT` of the HTTP (or HTTPS) API.
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.api)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    /// One request to the HTTP API as the test (with its token and TLS files):
    /// `(status, body)`, status 0 when there was no answer.
    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut extra: Vec<String> = Vec::new();
        if let Some(t) = &self.tls {
            extra.extend(["--cacert".into(), t.ca.display().to_string()]);
            if let Some((cert, key)) = &t.client {
                extra.extend(["--cert".into(), cert.display().to_string()]);
                extra.extend(["--key".into(), key.display().to_string()]);
            }
        }
        if let Some(tok) = &self.token {
            extra.extend(["-H".into(), format!("X-Consul-Token: {tok}")]);
        }
        curl(&format!("{}{path}", self.url()), method, body, &extra)
    }

    /// Like [`ConsulProc::api`], and panics unless the answer is 200; returns the body.
    fn api_ok(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let (code, text) = self.api(method, path, body);
        assert_eq!(code, 200, "consul {method} {path} answered {code}: {text}");
        text
    }

    /// Writes a key, retrying for a few seconds (a fresh agent may still be setting up ACLs).
    fn kv_put(&self, key: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, text) = self.api("PUT", &format!("/v1/kv/{key}"), Some(value));
            if code == 200 && text.trim() == "true" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consul kv put {key} answered {code}: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent with SIGKILL: an outage, not a graceful leave.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same ports, with the current `extra_hcl` and `tls`. It
    /// starts empty (dev mode).
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The logs of every run, oldest first.
    fn log_text(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(&format!("consul-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---- restart ----\n")
    }
}

impl Drop for ConsulProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP request with curl: `(status, body)`; status 0 (and curl's error) when there was
/// no answer.
fn curl(url: &str, method: &str, body: Option<&str>, extra: &[String]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    cmd.args(extra);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    {
        let mut stdin = child.stdin.take().expect("curl stdin");
        if let Some(b) = body {
            stdin.write_all(b.as_bytes()).expect("write curl stdin");
        }
    }
    let out = child.wait_with_output().expect("curl output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code = code.trim().parse().unwrap_or(0);
    let body = if code == 0 {
        format!("{body}{}", String::from_utf8_lossy(&out.stderr))
    } else {
        body.to_owned()
    };
    (code, body)
}

/// One request to the shared Consul on 127.0.0.1:8500: `(status, body)`.
fn shared_consul_api(method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    curl(&format!("http://{CONSUL}{path}"), method, body, &[])
}

/// A free TCP port on loopback (bound, then released for the agent to take).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// The agent's `GET /status` document, if it answers.
fn status(port: u16) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /status HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// The `/status` entry of one container (by full id).
fn status_of(port: u16, id: &str) -> Option<serde_json::Value> {
    status(port)?["containers"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
}

/// An egresstrator agent with a chosen state dir, status endpoint and environment; killed
/// when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
    /// The state dir this agent made for itself (removed with it).
    own_state: Option<PathBuf>,
}

impl Agent {
    /// An agent with a fresh state dir and no status endpoint.
    fn start(args: &[&str]) -> Self {
        Agent::start_env(None, "off", args, &[], &[])
    }

    /// `state_dir` None: a fresh one. `listen`: `off` or `127.0.0.1:PORT`. `unset` names
    /// variables removed from the inherited environment.
    fn start_env(
        state_dir: Option<&Path>,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> Self {
        let log = std::env::temp_dir().join(format!(
            "egresstrator-agent-{}-{:08x}.log",
            std::process::id(),
            rand_u32()
        ));
        let file = File::create(&log).expect("log file");
        let state = state_dir.map_or_else(|| log.with_extension("state"), PathBuf::from);
        let mut cmd = Command::new(bin());
        cmd.args(["--listen", listen, "--state-dir"])
            .arg(&state)
            .args(args)
            .env("EGRESSTRATOR_LOG", "debug")
            .env("CONSUL_HTTP_ADDR", CONSUL);
        for v in unset {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn agent");
        Agent {
            child,
            log,
            own_state: state_dir.is_none().then_some(state),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, up to 20 s.
    fn wait_log(&self, needle: &str) {
        wait_for(
            &format!("{needle:?} in the agent log"),
            Duration::from_secs(20),
            || self.log_text().contains(needle).then_some(()),
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The agent's own lines, without the Docker client's debug chatter.
            let text = self.log_text();
            let own: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" egresstrator"))
                .map(|l| l.get(..600).unwrap_or(l))
                .collect();
            eprintln!("agent log {}:\n{}", self.log.display(), own.join("\n"));
        } else {
            let _ = std::fs::remove_file(&self.log);
            if let Some(d) = &self.own_state {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic and state checks.

/// Polls `fetch` until it gives `want`, up to `timeout`; returns how long it took.
fn wait_fetch(container: &str, ip: &str, port: u16, want: &Fetch, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = fetch(container, ip, port);
        if &got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{container} -> {ip}:{port}: wanted {want:?} within {timeout:?}, still {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn body(port: u16) -> Fetch {
    Fetch::Body(format!("port{port}"))
}

/// An enabled client container naming `acls`.
fn enabled_client(cleanup: &mut Cleanup, name: &str, net: &str, acls: &str) {
    client(
        cleanup,
        name,
        net,
        &[
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            &format!("EGRESSTRATOR_ACL={acls}"),
        ],
    );
}

fn is_deny_all(t: Option<&str>) -> bool {
    t.is_some_and(|t| t.contains("egresstrator deny-all"))
}

fn is_real(t: Option<&str>) -> bool {
    t.is_some_and(|t| !t.contains("egresstrator deny-all"))
}

/// The agent's `/status` entry for a container, once the agent reports it and `pred` holds.
fn wait_status(
    port: u16,
    container: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_status_for(port, container, what, Duration::from_secs(20), pred)
}

/// [`wait_status`] with a chosen timeout.
fn wait_status_for(
    port: u16,
    container: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let id = docker_ok(&["inspect", "-f", "{{.Id}}", container]);
    let deadline = Instant::now() + timeout;
    loop {
        let s = status_of(port, &id);
        if let Some(s) = s.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{container}: /status never showed {what}; now {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Number of lines in a file inside a container (0 when it does not exist).
fn lines_in(container: &str, path: &str) -> usize {
    let out = docker(&[
        "exec",
        container,
        "sh",
        "-c",
        &format!("cat {path} 2>/dev/null"),
    ]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The TCP connections to `port` in the container's conntrack table (`ESTABLISHED`, original
/// direction), as their source ports.
fn tracked(container: &str, port: u16) -> Vec<String> {
    let pid = container_pid(container);
    let out = sh(&format!(
        "nsenter --net=/proc/{pid}/ns/net conntrack -L -p tcp --dport {port} 2>/dev/null"
    ));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ESTABLISHED"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("sport="))
                .map(str::to_owned)
        })
        .collect()
}

/// A listener container serving HTTP on `http` ports and a TCP echo (`nc -ll -e cat`) on
/// `echo` ports.
fn echo_listener(
    cleanup: &mut Cleanup,
    name: &str,
    net: &str,
    ip: &str,
    http: &[u16],
    echo: &[u16],
) {
    let mut script = String::new();
    for p in http {
        script.push_str(&format!(
            "mkdir -p /www{p} && echo port{p} > /www{p}/index.html && httpd -p {p} -h /www{p} && "
        ));
    }
    for p in echo {
        script.push_str(&format!("(nc -ll -p {p} -e cat &) && "));
    }
    script.push_str("exec sleep 3600");
    let _ = docker(&["rm", "-f", name]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "--ip",
        ip,
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    cleanup.containers.push(name.to_owned());
    for p in http {
        wait_for(
            &format!("{name} to serve port {p}"),
            Duration::from_secs(10),
            || matches!(fetch(name, "127.0.0.1", *p), Fetch::Body(_)).then_some(()),
        );
    }
    for p in echo {
        wait_for(
            &format!("echo server {name}:{p}"),
            Duration::from_secs(10),
            || {
                let out = docker(&["exec", name, "netstat", "-ltn"]);
                String::from_utf8_lossy(&out.stdout)
                    .contains(&format!(":{p} "))
                    .then_some(())
            },
        );
    }
}

/// Opens a long-lived connection from `container` to `ip:port` (an echo server): a line goes
/// out every 0.5 s and every echo is appended to `/tmp/echo<port>`.
fn long_lived(container: &str, ip: &str, port: u16) {
    docker_ok(&[
        "exec",
        "-d",
        container,
        "sh",
        "-c",
        &format!("while true; do echo ping; sleep 0.5; done | nc {ip} {port} > /tmp/echo{port} 2>/tmp/echo{port}.err"),
    ]);
}

/// True when the echo file of `port` in `container` still grows over 2 s.
fn still_echoing(container: &str, port: u16) -> bool {
    let before = lines_in(container, &format!("/tmp/echo{port}"));
    std::thread::sleep(Duration::from_secs(2));
    lines_in(container, &format!("/tmp/echo{port}")) > before
}

// ---------------------------------------------------------------------------------------------
// 1. Live KV changes, and open connections.

/// A running enabled container follows its ACL key as it changes, without restarting
/// anything:
/// - port 8080 is refused while the key lacks it, reachable once a write adds it, refused
///   again once a write removes it;
/// - two long-lived connections (to echo servers on 7000 and 7001) are open when a write
///   removes 7001: that connection's conntrack entry is deleted and it stops echoing (its
///   next write is refused), while the one to 7000 keeps its entry and keeps echoing.
#[test]
fn consul_kv_change_applies_to_running_container_and_open_connections() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _foreign = ForeignAgents::watch();
    let mut cleanup = Cleanup::new();
    let tag = unique("ckv");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network(&mut cleanup, &net, "10.231.60");
    let ip = "10.231.60.10";
    echo_listener(
        &mut cleanup,
        &format!("{tag}-srv"),
        &net,
        ip,
        &[80, 8080],
        &[7000, 7001],
    );
    let key = format!("{kv_path}web");
    let base = format!("{ip}:tcp/80\n{ip}:tcp/7000\n{ip}:tcp/7001\n");
    kv_put(&key, &base);

    let c = format!("{tag}-c");
    enabled_client(&mut cleanup, &c, &net, "web");
    let agent = Agent::start(&["-k", &kv_path]);
    wait_table(&c, "the real ruleset", is_real);
    assert_eq!(fetch(&c, ip, 80), body(80));
    assert_eq!(
        fetch(&c, ip, 8080),
        Fetch::Refused,
        "8080 is not in the ACL yet"
    );

    // Allow 8080 by writing the key: the running container follows.
    kv_put(&key, &format!("{base}{ip}:tcp/8080\n"));
    let took = wait_fetch(&c, ip, 8080, &body(8080), Duration::from_secs(10));
    eprintln!("8080 allowed {took:?} after the KV write");
    assert_eq!(fetch(&c, ip, 80), body(80));
    // …and block it again.
    kv_put(&key, &base);
    let took = wait_fetch(&c, ip, 8080, &Fetch::Refused, Duration::from_secs(10));
    eprintln!("8080 refused {took:?} after the KV write");
    assert_eq!(fetch(&c, ip, 80), body(80));

    // Two long-lived connections, both allowed now.
    long_lived(&c, ip, 7000);
    long_lived(&c, ip, 7001);
    wait_for("both connections to echo", Duration::from_secs(10), || {
        (lines_in(&c, "/tmp/echo7000") >= 2 && lines_in(&c, "/tmp/echo7001") >= 2).then_some(())
    });
    let kept = tracked(&c, 7000);
    let cut = tracked(&c, 7001);
    assert_eq!(kept.len(), 1, "one tracked connection to 7000: {kept:?}");
    assert_eq!(cut.len(), 1, "one tracked connection to 7001: {cut:?}");

    // Deny 7001: its open connection is cut, the one to 7000 survives.
    kv_put(&key, &format!("{ip}:tcp/80\n{ip}:tcp/7000\n"));
    wait_for(
        "the conntrack entry of the connection to 7001 to go",
        Duration::from_secs(10),
        || tracked(&c, 7001).is_empty().then_some(()),
    );
    assert!(
        !still_echoing(&c, 7001),
        "the cut connection to 7001 still echoes; client stderr: {}",
        docker(&["exec", &c, "cat", "/tmp/echo7001.err"])
            .stdout
            .iter()
            .map(|b| *b as char)
            .collect::<String>()
    );
    assert!(still_echoing(&c, 7000), "the connection to 7000 died");
    assert_eq!(
        tracked(&c, 7000),
        kept,
        "the connection to 7000 is the same one, still tracked"
    );
    // A new connection to 7001 is refused too.
    let out = docker(&[
        "exec",
        &c,
        "sh",
        "-c",
        &format!("echo x | nc -w 3 {ip} 7001"),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "new connection to 7001: {out:?}"
    );
    agent.wait_log("cut open connections that the new ruleset denies");
    drop(agent);
}

// ---------------------------------------------------------------------------------------------
// 2. Service references.

/// Deregisters test services from the shared Consul, even when the test panics.
struct Registered {
    agent_services: Vec<String>,
    catalog_nodes: Vec<String>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        for id in &self.agent_services {
            let _ = shared_consul_api("PUT", &format!("/v1/agent/service/deregister/{id}"), None);
        }
        for node in &self.catalog_nodes {
            let _ = shared_consul_api(
                "PUT",
                "/v1/catalog/deregister",
                Some(&format!(r#"{{"Node":"{node}"}}"#)),
            );
        }
    }
}

fn shared_api_ok(method: &str, path: &str, body: &str) {
    let (code, text) = shared_consul_api(method, path, Some(body));
    assert_eq!(code, 200, "consul {method} {path}: {code} {text}");
}

/// An ACL line `prod.<service>` opens exactly the instances of that service tagged `prod`,
/// and follows the catalog while the container runs:
/// - with only an untagged (`canary`) instance, nothing opens (and the agent warns that the
///   service has no instances);
/// - registering a `prod` instance (agent API, service address) opens its address:port;
///   deregistering it closes it again;
/// - an instance registered through the catalog API without a service address opens its
///   node's address.
#[test]
fn consul_service_instances_follow_registration() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _foreign = ForeignAgents::watch();
    let mut cleanup = Cleanup::new();
    let tag = unique("csvc");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network(&mut cleanup, &net, "10.231.61");
    let ip = "10.231.61.10";
    listener(&mut cleanup, &format!("{tag}-srv"), &net, ip, &[80, 8080]);
    let service = format!("egtsvc{}", std::process::id());
    let node = format!("egt-node-{}", std::process::id());
    // Leftovers of an earlier run with this pid would change the picture: remove them first.
    let fresh = || Registered {
        agent_services: vec![format!("{service}-canary"), format!("{service}-prod")],
        catalog_nodes: vec![node.clone()],
    };
    drop(fresh());
    let reg = fresh();

    // An instance WITHOUT the tag, on 8080.
    shared_api_ok(
        "PUT",
        "/v1/agent/service/register",
        &format!(
            r#"{{"ID":"{service}-canary","Name":"{service}","Tags":["canary"],"Address":"{ip}","Port":8080}}"#
        ),
    );
    kv_put(
        &format!("{kv_path}web"),
        &format!("# the prod instances\nprod.{service}\n"),
    );

    let c = format!("{tag}-c");
    enabled_client(&mut cleanup, &c, &net, "web");
    let agent = Agent::start(&["-k", &kv_path]);
    wait_table(&c, "the real ruleset", is_real);
    assert_eq!(fetch(&c, ip, 80), Fetch::Refused, "no prod instance yet");
    assert_eq!(
        fetch(&c, ip, 8080),
        Fetch::Refused,
        "an instance without the tag opens nothing"
    );
    agent.wait_log(&format!("service prod.{service} has no instances"));

    // Register a prod instance on port 80: it opens.
    shared_api_ok(
        "PUT",
        "/v1/agent/service/register",
        &format!(
            r#"{{"ID":"{service}-prod","Name":"{service}","Tags":["prod"],"Address":"{ip}","Port":80}}"#
        ),
    );
    let took = wait_fetch(&c, ip, 80, &body(80), Duration::from_secs(10));
    eprintln!("registered instance reachable after {took:?}");
    assert_eq!(fetch(&c, ip, 8080), Fetch::Refused, "still not the canary");

    // Deregister it: closed again.
    shared_api_ok(
        "PUT",
        &format!("/v1/agent/service/deregister/{service}-prod"),
        "",
    );
    let took = wait_fetch(&c, ip, 80, &Fetch::Refused, Duration::from_secs(10));
    eprintln!("deregistered instance refused after {took:?}");

    // A catalog registration without a service address: the node's address counts.
    shared_api_ok(
        "PUT",
        "/v1/catalog/register",
        &format!(
            r#"{{"Node":"{node}","Address":"{ip}","Service":{{"ID":"{service}-node","Service":"{service}","Tags":["prod"],"Port":8080}}}}"#
        ),
    );
    wait_fetch(&c, ip, 8080, &body(8080), Duration::from_secs(10));
    assert_eq!(fetch(&c, ip, 80), Fetch::Refused);
    shared_api_ok(
        "PUT",
        "/v1/catalog/deregister",
        &format!(r#"{{"Node":"{node}"}}"#),
    );
    wait_fetch(&c, ip, 8080, &Fetch::Refused, Duration::from_secs(10));
    drop(agent);
    drop(reg);
}

// ---------------------------------------------------------------------------------------------
// 3. An ACL-enabled Consul.

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("uuid")
        .trim()
        .to_owned()
}

/// Creates a policy with `rules` and a token for it; returns the token's secret.
fn acl_token(consul: &ConsulProc, name: &str, rules: &str) -> String {
    let policy = serde_json::json!({ "Name": name, "Rules": rules }).to_string();
    consul.api_ok("PUT", "/v1/acl/policy", Some(&policy));
    let token = serde_json::json!({ "Description": name, "Policies": [{ "Name": name }] });
    let answer = consul.api_ok("PUT", "/v1/acl/token", Some(&token.to_string()));
    let v: serde_json::Value = serde_json::from_str(&answer).expect("token json");
    v["SecretID"].as_str().expect("SecretID").to_owned()
}

/// On a Consul with ACLs on (default deny), with a token that may read the kv-path, the
/// services and the nodes:
/// (a) the read-only token (`$CONSUL_HTTP_TOKEN`) works: containers are enforced, traffic as
///     the ACLs say;
/// (b) without a token, the ACLs are invisible: every enabled container fails closed and the
///     log and `/status` say why;
/// (c) with a token (`--consul-token-file`) that may not read one of two keys, a container
///     naming that key fails closed while one naming only the readable key is enforced;
/// (d) a token Consul does not know fails closed too.
/// No token ever shows in the agent's log, nor in `--help` with the variable set.
#[test]
fn consul_acl_tokens() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _foreign = ForeignAgents::watch();
    let master = uuid();
    let consul = ConsulProc::start(
        0,
        &format!(
            "acl {{\n  enabled = true\n  default_policy = \"deny\"\n  down_policy = \"deny\"\n  tokens {{\n    master = \"{master}\"\n  }}\n}}"
        ),
        None,
        Some(&master),
    );
    let mut cleanup = Cleanup::new();
    let tag = unique("cacl");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    network(&mut cleanup, &net, "10.231.62");
    let ip = "10.231.62.10";
    listener(&mut cleanup, &format!("{tag}-srv"), &net, ip, &[80, 8080]);
    consul.kv_put(&format!("{kv_path}web"), &format!("{ip}:tcp/80"));
    consul.kv_put(&format!("{kv_path}secret"), &format!("{ip}:tcp/8080"));
    // Outside the kv-path: no token of the agent may read it, and it never needs to.
    consul.kv_put(&format!("{tag}/other"), "x");
    let read_all = acl_token(
        &consul,
        &format!("{tag}-read"),
        &format!(
            "key_prefix \"{kv_path}\" {{ policy = \"read\" }}\nservice_prefix \"\" {{ policy = \"read\" }}\nnode_prefix \"\" {{ policy = \"read\" }}\n"
        ),
    );
    let read_some = acl_token(
        &consul,
        &format!("{tag}-read-some"),
        &format!(
            "key_prefix \"{kv_path}\" {{ policy = \"read\" }}\nkey \"{kv_path}secret\" {{ policy = \"deny\" }}\nservice_prefix \"\" {{ policy = \"read\" }}\nnode_prefix \"\" {{ policy = \"read\" }}\n"
        ),
    );
    // The tokens really are what the test claims.
    let (code, _) = curl(
        &format!("{}/v1/kv/{kv_path}secret", consul.url()),
        "GET",
        None,
        &["-H".into(), format!("X-Consul-Token: {read_some}")],
    );
    assert_eq!(code, 403, "read_some may not read the secret key");
    let (code, _) = curl(
        &format!("{}/v1/kv/{kv_path}secret", consul.url()),
        "GET",
        None,
        &["-H".into(), format!("X-Consul-Token: {read_all}")],
    );
    assert_eq!(code, 200, "read_all reads the secret key");

    let both = format!("{tag}-both");
    let web = format!("{tag}-web");
    enabled_client(&mut cleanup, &both, &net, "web,secret");
    enabled_client(&mut cleanup, &web, &net, "web");
    let secrets = [master.as_str(), read_all.as_str(), read_some.as_str()];
    let no_secret_in = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "a token shows in {what}:\n{text}");
        }
    };
    let consul_arg = consul.addr();
    let base = ["-c", consul_arg.as_str(), "-k", kv_path.as_str()];

    // (a) the read-only token, from $CONSUL_HTTP_TOKEN.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start_env(
        None,
        &listen,
        &base,
        &[("CONSUL_HTTP_TOKEN", read_all.as_str())],
        &[],
    );
    wait_status(port, &both, "enforced", |s| s["fail_closed"] == false);
    wait_status(port, &web, "enforced", |s| s["fail_closed"] == false);
    assert_eq!(fetch(&both, ip, 80), body(80));
    assert_eq!(fetch(&both, ip, 8080), body(8080));
    assert_eq!(fetch(&web, ip, 80), body(80));
    assert_eq!(fetch(&web, ip, 8080), Fetch::Refused);
    // Live updates work through the token too.
    consul.kv_put(
        &format!("{kv_path}web"),
        &format!("{ip}:tcp/80\n{ip}:tcp/8080"),
    );
    wait_fetch(&web, ip, 8080, &body(8080), Duration::from_secs(10));
    consul.kv_put(&format!("{kv_path}web"), &format!("{ip}:tcp/80"));
    wait_fetch(&web, ip, 8080, &Fetch::Refused, Duration::from_secs(10));
    let status = status(port).expect("status").to_string();
    no_secret_in("/status", &status);
    let log_a = agent.log_text();
    drop(agent);

    // (b) no token at all: the ACLs are invisible, so both containers fail closed.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start_env(
        None,
        &listen,
        &base,
        &[],
        &["CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"],
    );
    for c in [&both, &web] {
        let s = wait_status(port, c, "fail-closed", |s| s["fail_closed"] == true);
        let err = s["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("acl 'web'"),
            "{c}: the error names the key: {err}"
        );
        wait_table(c, "deny-all", is_deny_all);
        assert_eq!(fetch(c, ip, 80), Fetch::Refused, "{c} without a token");
    }
    agent.wait_log("container failed closed");
    drop(agent);

    // (c) a token that may not read `secret`, from --consul-token-file.
    let dir = TempDir::new("cacl-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{read_some}\n")).expect("token file");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let token_arg = token_file.display().to_string();
    let mut args = base.to_vec();
    args.extend_from_slice(&["--consul-token-file", &token_arg]);
    let agent = Agent::start_env(None, &listen, &args, &[], &["CONSUL_HTTP_TOKEN"]);
    let s = wait_status(port, &web, "enforced", |s| s["fail_closed"] == false);
    assert_eq!(s["acls"], serde_json::json!(["web"]));
    let s = wait_status(port, &both, "fail-closed", |s| s["fail_closed"] == true);
    let err = s["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("acl 'secret'"),
        "the error names the unreadable key: {err}"
    );
    wait_table(&web, "the real ruleset", is_real);
    wait_table(&both, "deny-all", is_deny_all);
    assert_eq!(fetch(&web, ip, 80), body(80));
    assert_eq!(fetch(&web, ip, 8080), Fetch::Refused);
    assert_eq!(
        fetch(&both, ip, 80),
        Fetch::Refused,
        "fail closed: not even web's port"
    );
    assert_eq!(fetch(&both, ip, 8080), Fetch::Refused);
    let log_c = agent.log_text();
    drop(agent);

    // (d) a token Consul does not know: 403 on every read, fail closed.
    let unknown = uuid();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = base.to_vec();
    args.extend_from_slice(&["-t", &unknown]);
    let agent = Agent::start_env(None, &listen, &args, &[], &["CONSUL_HTTP_TOKEN"]);
    let s = wait_status(port, &web, "fail-closed", |s| s["fail_closed"] == true);
    let err = s["error"].as_str().unwrap_or_default();
    assert!(err.contains("403"), "the error says consul refused: {err}");
    assert!(
        !err.contains(&unknown),
        "the token shows in the error: {err}"
    );
    wait_table(&web, "deny-all", is_deny_all);
    assert_eq!(fetch(&web, ip, 80), Fetch::Refused);
    let log_d = agent.log_text();
    assert!(
        !log_d.contains(&unknown),
        "the unknown token shows in the log:\n{log_d}"
    );
    drop(agent);

    // No token in any log, nor in --help with the variables set.
    no_secret_in("the agent log ($CONSUL_HTTP_TOKEN)", &log_a);
    no_secret_in("the agent log (token file)", &log_c);
    no_secret_in("the agent log (unknown token)", &log_d);
    for flag in ["--help", "-h"] {
        let out = Command::new(bin())
            .arg(flag)
            .env("CONSUL_HTTP_TOKEN", &read_all)
            .output()
            .expect("egresstrator --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("CONSUL_HTTP_TOKEN"), "{flag}:\n{text}");
        no_secret_in(flag, &text);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A TLS-only Consul.

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_certs(dir: &TempDir) -> Certs {
    let script = r#"set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj "/CN=egresstrator test CA"
key server.key
openssl req -new -key server.key -out server.csr -subj "/CN=server.dc1.consul"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:server.dc1.consul\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
key client.key
openssl req -new -key client.key -out client.csr -subj "/CN=egresstrator"
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
"#;
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir.path())
        .output()
        .expect("spawn openssl");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

fn tls_hcl(c: &Certs, verify_incoming: bool) -> String {
    format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\nverify_incoming = {verify_incoming}\n",
        c.server_cert.display(),
        c.server_key.display(),
        c.ca.display()
    )
}

/// Consul serves HTTPS only, with a certificate from a throwaway CA:
/// - `--ssl --ssl-ca-cert ca.pem -c 127.0.0.1:N` works (enforced, and live changes arrive);
/// - `-c https://127.0.0.1:N --ssl-ca-cert ca.pem` works;
/// - `$CONSUL_HTTP_SSL=true` with `$CONSUL_CACERT` works;
/// - without the CA, the certificate is not trusted: the container fails closed and the log
///   names the certificate problem;
/// - with `verify_incoming`, a client certificate (`--ssl-client-cert/--ssl-client-key`)
///   works, and without one the container fails closed.
///
/// Each phase first changes the key, so a phase can only pass by reading Consul itself (the
/// previous agent's rules stay in force after it stops).
#[test]
fn consul_tls_only() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _foreign = ForeignAgents::watch();
    let dir = TempDir::new("ctls-certs");
    let certs = make_certs(&dir);
    let mut consul = ConsulProc::start(
        1,
        &tls_hcl(&certs, false),
        Some(ConsulClientTls {
            ca: certs.ca.clone(),
            client: None,
        }),
        None,
    );
    // The port really is HTTPS only.
    let (code, text) = curl(
        &format!("http://{}/v1/status/leader", consul.addr()),
        "GET",
        None,
        &[],
    );
    assert_ne!(code, 200, "plain HTTP must not work: {code} {text}");

    let mut cleanup = Cleanup::new();
    let tag = unique("ctls");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    let key = format!("{kv_path}web");
    network(&mut cleanup, &net, "10.231.63");
    let ip = "10.231.63.10";
    listener(&mut cleanup, &format!("{tag}-srv"), &net, ip, &[80, 8080]);
    let c = format!("{tag}-c");
    enabled_client(&mut cleanup, &c, &net, "web");
    let only80 = format!("{ip}:tcp/80");
    let both = format!("{ip}:tcp/80\n{ip}:tcp/8080");
    let ca = certs.ca.display().to_string();
    let addr = consul.addr();
    let https_url = format!("https://{addr}");

    // --ssl --ssl-ca-cert, host:port.
    consul.kv_put(&key, &only80);
    let agent = Agent::start(&["--ssl", "--ssl-ca-cert", &ca, "-c", &addr, "-k", &kv_path]);
    wait_table(&c, "the real ruleset", is_real);
    wait_fetch(&c, ip, 80, &body(80), Duration::from_secs(10));
    assert_eq!(fetch(&c, ip, 8080), Fetch::Refused);
    consul.kv_put(&key, &both);
    wait_fetch(&c, ip, 8080, &body(8080), Duration::from_secs(10));
    drop(agent);

    // https:// address, without --ssl.
    consul.kv_put(&key, &only80);
    let agent = Agent::start(&["-c", &https_url, "--ssl-ca-cert", &ca, "-k", &kv_path]);
    wait_fetch(&c, ip, 8080, &Fetch::Refused, Duration::from_secs(20));
    assert_eq!(fetch(&c, ip, 80), body(80));
    drop(agent);

    // The environment variables, as Consul's own CLI reads them.
    consul.kv_put(&key, &both);
    let agent = Agent::start_env(
        None,
        "off",
        &["-c", &addr, "-k", &kv_path],
        &[("CONSUL_HTTP_SSL", "true"), ("CONSUL_CACERT", &ca)],
        &[],
    );
    wait_fetch(&c, ip, 8080, &body(8080), Duration::from_secs(20));
    drop(agent);

    // Without the CA: the server's certificate is not trusted, nothing is read.
    let agent = Agent::start(&["--ssl", "-c", &addr, "-k", &kv_path]);
    wait_table(&c, "deny-all", is_deny_all);
    assert_eq!(fetch(&c, ip, 80), Fetch::Refused);
    agent.wait_log("container failed closed");
    let log = agent.log_text();
    drop(agent);
    let error = fail_closed_error(&log);
    eprintln!("without the CA, the container failed closed with: {error}");
    // Judged at the end, so that the phases below run either way.
    let no_ca_error = error;

    // verify_incoming: Consul wants a client certificate.
    consul.extra_hcl = tls_hcl(&certs, true);
    consul.tls = Some(ConsulClientTls {
        ca: certs.ca.clone(),
        client: Some((certs.client_cert.clone(), certs.client_key.clone())),
    });
    consul.restart();
    consul.kv_put(&key, &only80);
    let cert = certs.client_cert.display().to_string();
    let ckey = certs.client_key.display().to_string();
    let agent = Agent::start(&[
        "--ssl",
        "--ssl-ca-cert",
        &ca,
        "--ssl-client-cert",
        &cert,
        "--ssl-client-key",
        &ckey,
        "-c",
        &addr,
        "-k",
        &kv_path,
    ]);
    wait_table(&c, "the real ruleset", is_real);
    wait_fetch(&c, ip, 80, &body(80), Duration::from_secs(10));
    assert_eq!(fetch(&c, ip, 8080), Fetch::Refused);
    drop(agent);
    let agent = Agent::start(&["--ssl", "--ssl-ca-cert", &ca, "-c", &addr, "-k", &kv_path]);
    wait_table(&c, "deny-all", is_deny_all);
    assert_eq!(fetch(&c, ip, 80), Fetch::Refused);
    agent.wait_log("container failed closed");
    let no_cert_error = fail_closed_error(&agent.log_text());
    eprintln!("without a client certificate: {no_cert_error}");
    drop(agent);

    // Both errors must say what failed: the cause is in the error's source chain
    // ("invalid peer certificate: UnknownIssuer", "received fatal alert: BadCertificate").
    for (case, error) in [
        ("without the CA", &no_ca_error),
        ("without a client certificate", &no_cert_error),
    ] {
        assert!(
            error.to_ascii_lowercase().contains("certificate"),
            "{case}: the fail-closed error should name the certificate failure, got: {error}"
        );
    }
}

/// The error of the first "container failed closed" line of an agent log.
fn fail_closed_error(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("container failed closed"))
        .and_then(|l| l.split_once(" error=").map(|(_, e)| e.to_owned()))
        .unwrap_or_default()
}

/// Consul's CLI reads `CONSUL_HTTP_SSL` with Go's `strconv.ParseBool`, so `1` means on, and
/// packaged environment files use it. The agent must accept it too rather than refuse to
/// start.
#[test]
fn consul_http_ssl_env_accepts_1() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    // No container is involved: other agents on the host do not matter here.
    let dir = TempDir::new("ctls1-certs");
    let certs = make_certs(&dir);
    let consul = ConsulProc::start(
        2,
        &tls_hcl(&certs, false),
        Some(ConsulClientTls {
            ca: certs.ca.clone(),
            client: None,
        }),
        None,
    );
    let kv_path = format!("{}/acl/", unique("ctls1"));
    consul.kv_put(&format!("{kv_path}web"), "10.231.64.10:tcp/80");
    let mut refused = Vec::new();
    for v in ["1", "true", "TRUE", "t"] {
        let out = Command::new(bin())
            .args(["-c", &consul.addr(), "-k", &kv_path, "validate"])
            .env("CONSUL_HTTP_SSL", v)
            .env("CONSUL_CACERT", &certs.ca)
            .env("EGRESSTRATOR_STATE_DIR", dir.join("state"))
            .output()
            .expect("egresstrator validate");
        if !out.status.success() {
            refused.push(format!(
                "CONSUL_HTTP_SSL={v}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. Consul outages.

/// With its own Consul:
/// - the agent enforces from Consul and keeps a snapshot on disk (0600);
/// - Consul is killed; a NEW enabled container is enforced from the last good policy, with
///   real traffic as the ACL says;
/// - Consul comes back empty (dev mode), the key is written again with a change, and the
///   change reaches both containers within seconds;
/// - an agent started while Consul is down, with only the snapshot on disk, enforces a new
///   container from it.
#[test]
fn consul_outage_enforces_from_snapshot_and_converges() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _foreign = ForeignAgents::watch();
    let mut consul = ConsulProc::start(3, "", None, None);
    let mut cleanup = Cleanup::new();
    let tag = unique("cout");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    let key = format!("{kv_path}web");
    network(&mut cleanup, &net, "10.231.65");
    let ip = "10.231.65.10";
    listener(&mut cleanup, &format!("{tag}-srv"), &net, ip, &[80, 8080]);
    // Several writes: Consul's index for the prefix moves well past what a freshly started
    // Consul reaches, so after the restart below the index goes backwards (as after a
    // restore from an older snapshot).
    // (Consul skips writes that change nothing, so each one differs.)
    for i in 0..20 {
        consul.kv_put(&key, &format!("# write {i}\n{ip}:tcp/80"));
    }

    let state = TempDir::new("cout-state");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr = consul.addr();
    let args = ["-c", addr.as_str(), "-k", kv_path.as_str()];
    let agent = Agent::start_env(Some(state.path()), &listen, &args, &[], &[]);
    let a = format!("{tag}-a");
    enabled_client(&mut cleanup, &a, &net, "web");
    wait_table(&a, "the real ruleset", is_real);
    assert_eq!(fetch(&a, ip, 80), body(80));
    assert_eq!(fetch(&a, ip, 8080), Fetch::Refused);
    let snap = state.join("policy-snapshot.json");
    wait_for("the snapshot on disk", Duration::from_secs(10), || {
        std::fs::read_to_string(&snap)
            .ok()
            .filter(|s| s.contains(&format!("{ip}:tcp/80")))
    });
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&snap).expect("snapshot").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the snapshot is private to root");

    // Outage.
    consul.kill();
    wait_for(
        "the agent to notice the outage",
        Duration::from_secs(90),
        || status(port).filter(|s| !s["policy"]["error"].is_null()),
    );
    let b = format!("{tag}-b");
    enabled_client(&mut cleanup, &b, &net, "web");
    wait_table(&b, "the real ruleset from the last good policy", is_real);
    assert_eq!(fetch(&b, ip, 80), body(80));
    assert_eq!(fetch(&b, ip, 8080), Fetch::Refused);
    let s = wait_status(port, &b, "enforced", |s| s["fail_closed"] == false);
    assert!(s["error"].is_null(), "{s}");

    // Consul returns, empty; the key comes back with 8080 added.
    std::thread::sleep(Duration::from_secs(5)); // a real outage, not a blip
    consul.restart();
    consul.kv_put(&key, &format!("{ip}:tcp/80\n{ip}:tcp/8080"));
    let put = Instant::now();
    // When this agent has the change, it saves it: the snapshot on disk is this agent's own
    // view (unlike traffic, which another agent on the host could change too). Wait long
    // enough to measure a slow convergence, and judge it at the end.
    wait_for(
        "the change in the snapshot on disk",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&snap)
                .ok()
                .filter(|s| s.contains("tcp/8080"))
        },
    );
    let took = put.elapsed();
    eprintln!("after Consul's return, the agent had the KV change in {took:?}");
    for c in [&a, &b] {
        wait_fetch(c, ip, 8080, &body(8080), Duration::from_secs(10));
    }
    drop(agent);

    // An agent that starts during an outage enforces from the snapshot on disk.
    consul.kill();
    let agent = Agent::start_env(Some(state.path()), "off", &args, &[], &[]);
    let c = format!("{tag}-c");
    enabled_client(&mut cleanup, &c, &net, "web");
    wait_table(&c, "the real ruleset from the snapshot on disk", is_real);
    assert_eq!(fetch(&c, ip, 80), body(80));
    assert_eq!(
        fetch(&c, ip, 8080),
        body(8080),
        "the latest snapshot, not an older one"
    );
    agent.wait_log("loaded the last good policy snapshot");
    drop(agent);

    // Judged last, so that the phases above run either way. Retries back off up to 15 s
    // (×1.5 jitter): that bounds "within seconds".
    assert!(
        took < Duration::from_secs(25),
        "the KV change written after Consul's return took {took:?} to apply"
    );
}

/// An agent that starts while Consul is down and has no snapshot fails enabled containers
/// closed, says why, and gives them their real ruleset within seconds of Consul coming up
/// with the key.
#[test]
fn consul_down_at_start_without_snapshot_fails_closed_then_converges() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _foreign = ForeignAgents::watch();
    let mut consul = ConsulProc::start(3, "", None, None);
    consul.kill();
    let mut cleanup = Cleanup::new();
    let tag = unique("cdown");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    network(&mut cleanup, &net, "10.231.66");
    let ip = "10.231.66.10";
    listener(&mut cleanup, &format!("{tag}-srv"), &net, ip, &[80, 8080]);
    let d = format!("{tag}-d");
    enabled_client(&mut cleanup, &d, &net, "web");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr = consul.addr();
    let agent = Agent::start_env(None, &listen, &["-c", &addr, "-k", &kv_path], &[], &[]);
    wait_table(&d, "deny-all", is_deny_all);
    assert_eq!(fetch(&d, ip, 80), Fetch::Refused);
    let s = wait_status(port, &d, "fail-closed", |s| s["fail_closed"] == true);
    let err = s["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("no policy snapshot"),
        "the error says why: {err}"
    );
    agent.wait_log("container failed closed");

    // Stay down long enough for the retries to back off, then come up with the key.
    std::thread::sleep(Duration::from_secs(8));
    consul.restart();
    consul.kv_put(&format!("{kv_path}web"), &format!("{ip}:tcp/80"));
    let up = Instant::now();
    // Timed on this agent's own view (another agent on the host could change traffic).
    wait_status_for(
        port,
        &d,
        "the real ruleset",
        Duration::from_secs(120),
        |s| s["fail_closed"] == false,
    );
    let took = up.elapsed();
    eprintln!("real ruleset {took:?} after Consul came up with the key");
    wait_table(&d, "the real ruleset", is_real);
    assert_eq!(fetch(&d, ip, 80), body(80));
    assert_eq!(fetch(&d, ip, 8080), Fetch::Refused);
    assert!(
        took < Duration::from_secs(25),
        "converging took {took:?} after Consul's return"
    );
    drop(agent);
}

// ---------------------------------------------------------------------------------------------
// Protect mode and a token that cannot read everything.

/// In protect mode a key that is not read protects nothing. On a Consul with ACLs, a token
/// with `key_prefix` read on the kv-path but `deny` on `db` gets `200` for the recursive read
/// with `db` simply left out (Consul 1.8.7 adds no marker). With the manifest (the kv-path's
/// own key listing `db web`) the agent sees the answer is incomplete:
/// (a) with a readable token, `db`'s port is protected and the rest allowed (the baseline);
/// (b) the same state dir, the token that cannot read `db`: the incomplete answer never
///     replaces the good snapshot, and the container keeps the last good policy: `db`'s port
///     stays refused; the error says which key is missing;
/// (c) a fresh agent with that token and no snapshot: fail closed, the protected port refused;
/// (d) no manifest at all: fail closed, the error says protect mode needs one;
/// (e) the control: with `--protect-without-manifest` the same token opens `db`'s port, the
///     hole the manifest closes.
#[test]
fn consul_protect_mode_never_opens_a_key_the_token_cannot_read() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _foreign = ForeignAgents::watch();
    let master = uuid();
    let consul = ConsulProc::start(
        4,
        &format!(
            "acl {{\n  enabled = true\n  default_policy = \"deny\"\n  down_policy = \"deny\"\n  tokens {{\n    master = \"{master}\"\n  }}\n}}"
        ),
        None,
        Some(&master),
    );
    let mut cleanup = Cleanup::new();
    let tag = unique("pmanifest");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    network(&mut cleanup, &net, "10.231.67");
    let ip = "10.231.67.10";
    listener(&mut cleanup, &format!("{tag}-srv"), &net, ip, &[80, 8080]);
    consul.kv_put(&format!("{kv_path}db"), &format!("{ip}:tcp/8080"));
    consul.kv_put(&format!("{kv_path}web"), &format!("{ip}:tcp/80"));
    consul.kv_put(&kv_path, "db web");
    let rules = |deny_db: bool| {
        let mut r = format!("key_prefix \"{kv_path}\" {{ policy = \"read\" }}\n");
        if deny_db {
            r.push_str(&format!("key \"{kv_path}db\" {{ policy = \"deny\" }}\n"));
        }
        r.push_str(
            "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }\n",
        );
        r
    };
    let read_all = acl_token(&consul, &format!("{tag}-all"), &rules(false));
    let read_some = acl_token(&consul, &format!("{tag}-some"), &rules(true));
    // The fact the test rests on: the recursive read answers 200 without `db`, unmarked.
    let (code, text) = curl(
        &format!("{}/v1/kv/{kv_path}?recurse=true", consul.url()),
        "GET",
        None,
        &["-H".into(), format!("X-Consul-Token: {read_some}")],
    );
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains(&format!("{kv_path}web")) && !text.contains(&format!("{kv_path}db")),
        "the recursive read leaves db out: {text}"
    );

    let web = format!("{tag}-web");
    enabled_client(&mut cleanup, &web, &net, "web");
    let consul_arg = consul.addr();
    let base = [
        "-c",
        consul_arg.as_str(),
        "-k",
        kv_path.as_str(),
        "--mode",
        "protect",
    ];
    let state = TempDir::new("pmanifest-state");
    let token = |t: &str| vec![("CONSUL_HTTP_TOKEN", t.to_owned())];
    let start = |state: Option<&Path>, tok: &str, extra: &[&str]| {
        let port = free_port();
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let env = token(tok);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let agent = Agent::start_env(state, &format!("127.0.0.1:{port}"), &args, &env, &[]);
        (agent, port)
    };

    // (a) baseline.
    let (agent, port) = start(Some(&state.0), &read_all, &[]);
    wait_status(port, &web, "enforced", |s| s["fail_closed"] == false);
    assert_eq!(fetch(&web, ip, 80), body(80));
    assert_eq!(fetch(&web, ip, 8080), Fetch::Refused, "db protects 8080");
    let snapshot = wait_for("the policy snapshot", Duration::from_secs(10), || {
        std::fs::read_to_string(state.join("policy-snapshot.json"))
            .ok()
            .filter(|s| s.contains(&format!("{ip}:tcp/8080")))
    });
    drop(agent);

    // (b) the token that cannot read db, same state dir.
    let (agent, port) = start(Some(&state.0), &read_some, &[]);
    agent.wait_log("consul's answer is incomplete");
    let s = wait_for(
        "the policy error in /status",
        Duration::from_secs(10),
        || status(port).filter(|s| s["policy"]["error"].is_string()),
    );
    let err = s["policy"]["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        err.contains("acl 'db'"),
        "the error names the unread key: {s}"
    );
    assert_eq!(s["policy"]["source"], "snapshot", "{s}");
    assert_eq!(
        fetch(&web, ip, 8080),
        Fetch::Refused,
        "db's port stays protected"
    );
    assert_eq!(
        fetch(&web, ip, 80),
        body(80),
        "the last good policy stays in force"
    );
    drop(agent);
    assert_eq!(
        std::fs::read_to_string(state.join("policy-snapshot.json")).expect("snapshot"),
        snapshot,
        "the incomplete answer did not replace the good snapshot"
    );

    // (c) no snapshot, same token: fail closed.
    let (agent, port) = start(None, &read_some, &[]);
    let s = wait_status(port, &web, "fail-closed", |s| s["fail_closed"] == true);
    assert!(
        s["error"].as_str().unwrap_or_default().contains("acl 'db'"),
        "{s}"
    );
    wait_table(&web, "deny-all", is_deny_all);
    assert_eq!(fetch(&web, ip, 8080), Fetch::Refused);
    drop(agent);

    // (d) no manifest: fail closed, and the error says what protect mode needs.
    consul.api_ok("DELETE", &format!("/v1/kv/{kv_path}"), None);
    let (agent, port) = start(None, &read_all, &[]);
    let s = wait_status(port, &web, "fail-closed", |s| s["fail_closed"] == true);
    assert!(
        s["error"]
            .as_str()
            .unwrap_or_default()
            .contains("protect mode needs the manifest"),
        "{s}"
    );
    assert_eq!(fetch(&web, ip, 8080), Fetch::Refused);
    drop(agent);

    // (e) the control: trusting the read opens db's port.
    let (agent, port) = start(None, &read_some, &["--protect-without-manifest"]);
    wait_status(port, &web, "enforced", |s| s["fail_closed"] == false);
    wait_fetch(&web, ip, 8080, &body(8080), Duration::from_secs(10));
    drop(agent);
}
