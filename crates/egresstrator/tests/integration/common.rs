//! Shared helpers for integration tests against a real dockerd, a real Consul agent and real
//! network namespaces. Nothing here fakes a component.
//!
//! Prerequisites are checked by [`prerequisites`]: a missing one fails the test with a message
//! that says how to get it (`make test`), whether or not `CI` is set.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The locally built test image (scripts/test-image.sh).
pub const IMAGE: &str = "egresstrator-test:latest";
pub const CONSUL: &str = "127.0.0.1:8500";

/// Tests that run an agent watch every container on the host, so they take turns.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A missing prerequisite fails the test: `make test` never reports green for a test that
/// did not run.
fn missing(what: &str) -> bool {
    panic!(
        "prerequisite missing: {what}. The integration tests need root and real components; \
         run `make test`, which installs and starts everything they need"
    );
}

/// True when running as root; otherwise fails the test with how to run it.
pub fn root_or_fail(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing(&format!("root (for {test})"));
    }
    true
}

/// True when root, dockerd, Consul, nft, nsenter and the test image are all available.
pub fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing("root");
    }
    for tool in ["nft", "nsenter", "docker", "consul"] {
        if !sh(&format!("command -v {tool}")).status.success() {
            return missing(tool);
        }
    }
    if !docker(&["info"]).status.success() {
        return missing("a running dockerd (`docker info` fails)");
    }
    if !docker(&["image", "inspect", IMAGE]).status.success() {
        return missing("the test image egresstrator-test:latest (scripts/test-image.sh)");
    }
    let leader = Command::new("consul")
        .args(["info"])
        .env("CONSUL_HTTP_ADDR", CONSUL)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(leader, Ok(s) if s.success()) {
        return missing("a Consul agent on 127.0.0.1:8500");
    }
    true
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("spawn sh")
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("spawn docker")
}

/// Runs docker and panics with its stderr unless it succeeds; returns trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn consul_kv(args: &[&str]) {
    let out = Command::new("consul")
        .arg("kv")
        .args(args)
        .env("CONSUL_HTTP_ADDR", CONSUL)
        .output()
        .expect("spawn consul");
    assert!(
        out.status.success(),
        "consul kv {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn kv_put(key: &str, value: &str) {
    consul_kv(&["put", key, value]);
}

/// Removes the containers, networks and KV prefix a test made, even when it panics.
pub struct Cleanup {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub kv_prefixes: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Self {
        Cleanup {
            containers: Vec::new(),
            networks: Vec::new(),
            kv_prefixes: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        for p in &self.kv_prefixes {
            let _ = Command::new("consul")
                .args(["kv", "delete", "-recurse", p])
                .env("CONSUL_HTTP_ADDR", CONSUL)
                .output();
        }
    }
}

/// A unique name for this test process: `egt-<tag>-<pid>`.
pub fn unique(tag: &str) -> String {
    format!("egt-{tag}-{}", std::process::id())
}

/// A user-defined network with the given /24 subnet, e.g. `10.231.10`.
pub fn network(cleanup: &mut Cleanup, name: &str, subnet24: &str) {
    let _ = docker(&["network", "rm", name]);
    docker_ok(&[
        "network",
        "create",
        "--subnet",
        &format!("{subnet24}.0/24"),
        name,
    ]);
    cleanup.networks.push(name.to_owned());
}

/// Starts a listener container serving `port<N>` as the body of `/` on each given port.
pub fn listener(cleanup: &mut Cleanup, name: &str, network: &str, ip: &str, ports: &[u16]) {
    let mut script = String::new();
    for p in ports {
        script.push_str(&format!(
            "mkdir -p /www{p} && echo port{p} > /www{p}/index.html && httpd -p {p} -h /www{p} && "
        ));
    }
    script.push_str("exec sleep 3600");
    let _ = docker(&["rm", "-f", name]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--ip",
        ip,
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    cleanup.containers.push(name.to_owned());
    // Wait until every port answers from inside the listener itself.
    for p in ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(fetch(name, "127.0.0.1", *p), Fetch::Body(_)) {
            assert!(
                Instant::now() < deadline,
                "listener {name} never served port {p}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A test's own network, listener and ACL keys, all removed when it is dropped.
pub struct Scene {
    pub cleanup: Cleanup,
    pub tag: String,
    pub net: String,
    pub kv_path: String,
    pub srv: String,
    pub srv_ip: String,
}

impl Scene {
    /// Network `10.231.<octet>.0/24`, a listener at `.10` serving `ports` (with `extra`
    /// `docker run` arguments), and a fresh kv-path.
    pub fn new(tag: &str, octet: u8, ports: &[u16], extra: &[&str]) -> Self {
        let mut s = Scene::bare(tag, octet);
        s.serve(ports, extra);
        s
    }

    /// The network and kv-path only; the listener comes with [`Scene::serve`].
    pub fn bare(tag: &str, octet: u8) -> Self {
        let mut cleanup = Cleanup::new();
        let tag = unique(tag);
        let net = format!("{tag}-net");
        let kv_path = format!("{tag}/acl/");
        cleanup.kv_prefixes.push(format!("{tag}/"));
        let _ = Command::new("consul")
            .args(["kv", "delete", "-recurse", &format!("{tag}/")])
            .env("CONSUL_HTTP_ADDR", CONSUL)
            .output();
        let subnet = format!("10.231.{octet}");
        network(&mut cleanup, &net, &subnet);
        let srv = format!("{tag}-srv");
        let srv_ip = format!("{subnet}.10");
        Scene {
            cleanup,
            tag,
            net,
            kv_path,
            srv,
            srv_ip,
        }
    }

    /// Starts the listener at `.10`.
    pub fn serve(&mut self, ports: &[u16], extra: &[&str]) {
        listener_with(
            &mut self.cleanup,
            &self.srv,
            &self.net,
            &self.srv_ip,
            ports,
            extra,
        );
    }

    /// A state dir for the test's agents, removed with the scene.
    pub fn state_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-state", self.tag))
    }

    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }

    /// Sets ACL `name` to allow TCP to the listener on `ports`.
    pub fn acl(&self, name: &str, ports: &[u16]) {
        let body: String = ports
            .iter()
            .map(|p| format!("{}:tcp/{p}\n", self.srv_ip))
            .collect();
        kv_put(&format!("{}{name}", self.kv_path), &body);
    }

    /// A client on the test network with extra `docker run` arguments.
    pub fn client(&mut self, what: &str, extra: &[&str]) -> String {
        let name = self.name(what);
        client(&mut self.cleanup, &name, &self.net, extra);
        name
    }

    /// Asserts which of the listener's ports `from` reaches (body) and which it is refused.
    pub fn expect(&self, from: &str, reach: &[u16], refused: &[u16]) {
        for p in reach {
            assert_eq!(
                fetch(from, &self.srv_ip, *p),
                Fetch::Body(format!("port{p}")),
                "{from} should reach port {p}; table: {:?}",
                table(from)
            );
        }
        for p in refused {
            assert_eq!(
                fetch(from, &self.srv_ip, *p),
                Fetch::Refused,
                "{from} should be refused on port {p}; table: {:?}",
                table(from)
            );
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.state_dir());
    }
}

/// Starts a long-running client container with extra `docker run` arguments.
pub fn client(cleanup: &mut Cleanup, name: &str, network: &str, extra: &[&str]) {
    let _ = docker(&["rm", "-f", name]);
    let mut args = vec!["run", "-d", "--name", name, "--network", network];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, "sleep", "3600"]);
    docker_ok(&args);
    cleanup.containers.push(name.to_owned());
}

/// What an HTTP fetch from inside a container gave: the body, or wget's error text.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    Body(String),
    Refused,
    Other(String),
}

/// Fetches `http://ip:port/` from inside `container` with busybox nc (3 s timeout).
/// (busybox-static's wget crashes in these images; nc does not.)
pub fn fetch(container: &str, ip: &str, port: u16) -> Fetch {
    let out = docker(&[
        "exec",
        container,
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() && stdout.starts_with("HTTP/1.") {
        let body = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Fetch::Body(body.trim().to_owned())
    } else if stderr.contains("Connection refused") {
        // The SYN was answered with a reset: refused at once, not dropped.
        Fetch::Refused
    } else {
        Fetch::Other(format!(
            "rc={:?} stdout={stdout:?} stderr={stderr:?}",
            out.status.code()
        ))
    }
}

pub fn container_pid(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.Pid}}", name])
}

/// The egresstrator table in a container's namespace, or None.
pub fn table(name: &str) -> Option<String> {
    let pid = container_pid(name);
    let out = sh(&format!(
        "nsenter --net=/proc/{pid}/ns/net nft list table inet egresstrator"
    ));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `pred` holds for the container's table, up to 20 s.
pub fn wait_table(name: &str, what: &str, pred: impl Fn(Option<&str>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = table(name);
        if pred(t.as_deref()) {
            return;
        }
        if Instant::now() > deadline {
            panic!("container {name}: timed out waiting for {what}; table now: {t:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running egresstrator agent; killed when dropped.
pub struct AgentProc {
    child: Child,
    pub log: PathBuf,
    /// The `--state-dir` it was started with.
    state: PathBuf,
}

impl AgentProc {
    /// The agent's state dir (a fresh one per agent unless `--state-dir` is passed again).
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }
}

impl AgentProc {
    pub fn start(args: &[&str]) -> Self {
        Self::start_under(&[], args)
    }

    /// Starts the agent through `wrapper` (a program that execs its arguments, such as
    /// `unshare --mount`), so that the agent process is the wrapper's pid.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "egresstrator-agent-{}-{}.log",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_u32() as u128
        ));
        let file = File::create(&log).expect("log file");
        let state = log.with_extension("state");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["--listen", "off", "--hook-socket", "off", "--state-dir"])
            .arg(&state)
            .args(args)
            .env("EGRESSTRATOR_LOG", "debug")
            .env("CONSUL_HTTP_ADDR", CONSUL)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn agent");
        AgentProc { child, log, state }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log contains `needle`, up to 20 s.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains(needle) {
            if Instant::now() > deadline {
                panic!("agent log never showed {needle:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = (&f).read_exact(&mut b);
    }
    u32::from_ne_bytes(b)
}

/// The egresstrator binary built by cargo for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_egresstrator")
}

/// Runs the egresstrator CLI to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env(
            "EGRESSTRATOR_STATE_DIR",
            std::env::temp_dir().join("egresstrator-test-cli-state"),
        )
        .env("CONSUL_HTTP_ADDR", CONSUL)
        .env("EGRESSTRATOR_LOG", "info")
        .output()
        .expect("spawn egresstrator")
}

// ---------------------------------------------------------------------------------------------
// Lifecycle helpers: agents with a chosen state dir and status endpoint, restarts, /status.

/// Polls `f` every 100 ms until it returns `Some`, up to `timeout`; panics naming `what`
/// otherwise.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Like [`wait_table`], with a chosen timeout (restarts take longer than a start event).
pub fn wait_table_for(
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(Option<&str>) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        // The container may be between two runs (restarting): no pid, no table.
        let t = if container_running(name) {
            table(name)
        } else {
            None
        };
        if pred(t.as_deref()) {
            return;
        }
        if Instant::now() > deadline {
            panic!("container {name}: timed out after {timeout:?} waiting for {what}; table now: {t:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when Docker reports the container as running.
pub fn container_running(name: &str) -> bool {
    let out = docker(&["inspect", "-f", "{{.State.Running}}", name]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
}

/// `(pid, StartedAt)` of a container: both change when it runs again.
pub fn container_run(name: &str) -> (String, String) {
    let s = docker_ok(&["inspect", "-f", "{{.State.Pid}} {{.State.StartedAt}}", name]);
    let (pid, started) = s.split_once(' ').unwrap_or((s.as_str(), ""));
    (pid.to_owned(), started.to_owned())
}

/// The full id of a container.
pub fn container_id(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.Id}}", name])
}

/// `docker run -d --name <name> <args…>`, removed by `cleanup`.
pub fn run_container(cleanup: &mut Cleanup, name: &str, args: &[&str]) {
    let _ = docker(&["rm", "-f", name]);
    let mut all = vec!["run", "-d", "--name", name];
    all.extend_from_slice(args);
    docker_ok(&all);
    cleanup.containers.push(name.to_owned());
}

/// Like [`listener`], with extra `docker run` arguments (e.g. a restart policy).
pub fn listener_with(
    cleanup: &mut Cleanup,
    name: &str,
    network: &str,
    ip: &str,
    ports: &[u16],
    extra: &[&str],
) {
    let mut script = String::new();
    for p in ports {
        script.push_str(&format!(
            "mkdir -p /www{p} && echo port{p} > /www{p}/index.html && httpd -p {p} -h /www{p} && "
        ));
    }
    script.push_str("exec sleep 3600");
    let mut args = vec!["--network", network, "--ip", ip];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, "sh", "-c", &script]);
    run_container(cleanup, name, &args);
    wait_serving(name, ports);
}

/// Waits until every port answers from inside the listener itself.
pub fn wait_serving(name: &str, ports: &[u16]) {
    for p in ports {
        wait_for(
            &format!("listener {name} to serve port {p}"),
            Duration::from_secs(30),
            || matches!(fetch(name, "127.0.0.1", *p), Fetch::Body(_)).then_some(()),
        );
    }
}

/// A free TCP port on loopback (bound, then released for the agent to take).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `GET path` on 127.0.0.1:port; the body of a 200 answer, or None.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
}

/// The agent's `GET /status` document.
pub fn status(port: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(port, "/status")?).ok()
}

/// The `/status` entry of one container (by full id), if the agent lists it.
pub fn status_of(port: u16, id: &str) -> Option<serde_json::Value> {
    status(port)?["containers"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
}

impl AgentProc {
    /// Starts an agent with the given state dir (e.g. a killed agent's, to restart it) and
    /// status endpoint address (`off` or `127.0.0.1:PORT`).
    pub fn start_with(state_dir: &std::path::Path, listen: &str, args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "egresstrator-agent-{}-{}.log",
            std::process::id(),
            rand_u32()
        ));
        let file = File::create(&log).expect("log file");
        let child = Command::new(bin())
            .args(["--listen", listen, "--hook-socket", "off", "--state-dir"])
            .arg(state_dir)
            .args(args)
            .env("EGRESSTRATOR_LOG", "debug")
            .env("CONSUL_HTTP_ADDR", CONSUL)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn agent");
        AgentProc {
            child,
            log,
            state: state_dir.to_path_buf(),
        }
    }

    /// Kills the agent with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The agent's exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// True while the agent process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Pids of egresstrator processes (any build: the file name of their executable is
/// `egresstrator`) that are neither in `own` nor descendants of this test process. Each such
/// agent enforces every enabled container on the host with its own kv-path, so a test's
/// containers would get its rules too.
pub fn foreign_egresstrator_pids(own: &[u32]) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let exe = std::fs::read_link(e.path().join("exe")).ok();
            let name = exe
                .as_ref()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str());
            if name == Some("egresstrator") && !own.contains(&pid) && !is_ours(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// True when `pid` descends from this test process (an agent, a CLI run, or a program an
/// agent forked).
fn is_ours(mut pid: u32) -> bool {
    let me = std::process::id();
    for _ in 0..16 {
        // /proc/<pid>/stat: "pid (comm) state ppid …"; comm may hold spaces.
        let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
        else {
            return false;
        };
        if ppid == me {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

/// Waits until no other egresstrator process runs on the host: an agent of another test run
/// would enforce this test's containers with its own policy. Waits up to 3 minutes the first
/// time; once it has given up, only 20 s. Afterwards it only warns.
pub fn wait_for_foreign_agents() {
    static GAVE_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let patience = if GAVE_UP.load(std::sync::atomic::Ordering::Relaxed) {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(180)
    };
    let deadline = Instant::now() + patience;
    loop {
        let pids = foreign_egresstrator_pids(&[]);
        if pids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            GAVE_UP.store(true, std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "WARNING: other egresstrator processes run on this host ({pids:?}); they may \
                 enforce this test's containers with their own policy"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Records other egresstrator processes seen while a test runs; when the test fails, says
/// which ran (their rules may have landed in the test's containers).
pub struct ForeignWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::collections::BTreeMap<u32, String>>>,
}

impl ForeignWatch {
    /// Waits for other egresstrator processes to end ([`wait_for_foreign_agents`]), then
    /// watches for new ones until dropped.
    pub fn start() -> Self {
        wait_for_foreign_agents();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for pid in foreign_egresstrator_pids(&[]) {
                    seen.entry(pid).or_insert_with(|| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                            .unwrap_or_default()
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        });
        ForeignWatch {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ForeignWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if let Ok(seen) = t.join() {
                if std::thread::panicking() && !seen.is_empty() {
                    eprintln!(
                        "NOTE: other egresstrator processes ran during this test and may \
                         have enforced its containers with their own policy: {seen:?}"
                    );
                }
            }
        }
    }
}
