//! The agent and the CLI against Podman's Docker-compatible API socket, end to end: Podman
//! 4.3 from Debian (`scripts/prereqs.sh` installs it), a `podman system service` of the test's
//! own on its own socket, containers made with the `podman` CLI on a Podman network, and real
//! traffic between them.
//!
//! Everything here is Podman's: containers, network, namespaces. dockerd is only the source of
//! the test image (`docker save | podman load`, once per image id). An agent watching dockerd
//! (another test run, a benchmark) can neither see nor touch these containers, so this test
//! does not wait for or watch other egresstrator processes ([`ForeignWatch`] is not used).
//!
//! Sandbox workaround: `podman run` as root asks runc for higher `nofile`/`nproc` limits than
//! the hard limits of a sandbox without `CAP_SYS_RESOURCE`, and runc fails ("error setting
//! rlimits for ready process: error setting rlimit type 7: operation not permitted"). Every
//! container is therefore started with [`ULIMITS`] (`--ulimit nofile=1024:1024 --ulimit
//! nproc=1024:1024`), which is harmless elsewhere.
//!
//! Names are fixed (`egt-podman-…`) so that a run killed before its cleanup is cleaned up by
//! the next one; the network is 10.231.129.0/24 and the kv-path `egt-podman/acl/`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The directory of the test's Podman API socket; removed at the end.
const SOCK_DIR: &str = "/run/egt-podman-test";
/// The socket's path, and the address given to `podman system service` and `--docker-host`.
const SOCK_PATH: &str = "/run/egt-podman-test/podman.sock";
const SOCK_URL: &str = "unix:///run/egt-podman-test/podman.sock";
/// The test image as `podman load` names it (from Docker's `egresstrator-test:latest`).
const PIMAGE: &str = "localhost/egresstrator-test:latest";
/// See the module's documentation.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];
/// Every container and the network of this test are named with this prefix.
const PREFIX: &str = "egt-podman-";
const NET: &str = "egt-podman-net";
const SUBNET: &str = "10.231.129";
const KV_ROOT: &str = "egt-podman/";
const KV_PATH: &str = "egt-podman/acl/";
const ENABLE_WEB: [&str; 4] = ["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"];

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("spawn podman")
}

/// Runs podman and panics with its stderr unless it succeeds; returns trimmed stdout.
fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What this test needs beyond [`prerequisites`]: podman. A missing one fails the test.
fn podman_prerequisites() {
    if !sh("command -v podman").status.success() {
        panic!(
            "prerequisite missing: podman (Debian 12: `apt-get install -y podman`). The \
             integration tests need root and real components; run `make test`, which installs \
             and starts everything they need (scripts/prereqs.sh installs podman)"
        );
    }
    let v = podman(&["version", "--format", "{{.Client.Version}}"]);
    assert!(
        v.status.success(),
        "`podman version` fails: {}",
        String::from_utf8_lossy(&v.stderr)
    );
}

/// Pids of processes an earlier run of this test left when it was killed before its
/// cleanup: its `podman system service` and its agents, found by the test's own socket
/// address among their arguments (`podman` or `egresstrator` executables only).
fn leftover_processes() -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe")).ok();
        let ours = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "podman" || n == "egresstrator");
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ours && cmdline.split(|b| *b == 0).any(|a| a == SOCK_URL.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// True while `pid` runs (a zombie, ended but not yet reaped by its parent, does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// Sends SIGTERM to `pid`, waits up to 5 s for it to end, then SIGKILL.
fn terminate(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions; pid names one process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// `podman system service --time=0` on the test's own socket; stopped (SIGTERM, then
/// SIGKILL) and its socket directory removed when dropped.
struct PodmanService {
    child: Child,
    log: PathBuf,
}

impl PodmanService {
    fn start() -> Self {
        for pid in leftover_processes() {
            eprintln!(
                "stopping a process left by an earlier run: pid {pid} ({})",
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                    .unwrap_or_default()
            );
            terminate(pid);
        }
        let _ = std::fs::remove_dir_all(SOCK_DIR);
        std::fs::create_dir_all(SOCK_DIR).expect("create the socket directory");
        let log =
            std::env::temp_dir().join(format!("egt-podman-service-{}.log", std::process::id()));
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", SOCK_URL])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("service log file"))
            .spawn()
            .expect("spawn podman system service");
        let mut svc = PodmanService { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ping().as_deref() == Some("OK") {
                return svc;
            }
            if let Ok(Some(st)) = svc.child.try_wait() {
                panic!(
                    "podman system service exited ({st}) before answering on {SOCK_PATH}:\n{}",
                    svc.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "podman system service never answered GET /_ping on {SOCK_PATH}:\n{}",
                svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(self.child.id() as i32);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(SOCK_DIR);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The body of `GET /_ping` on the test's socket, if it answers.
fn ping() -> Option<String> {
    let mut s = UnixStream::connect(SOCK_PATH).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.trim().to_owned())
}

/// Podman's store gets the test image from dockerd, unless it already holds the same image
/// (same id: `podman load` keeps Docker's image id).
fn ensure_image() {
    let want = docker_ok(&["image", "inspect", "-f", "{{.Id}}", IMAGE]);
    let want = want.trim_start_matches("sha256:");
    let have = podman(&["image", "inspect", "-f", "{{.Id}}", PIMAGE]);
    let have = String::from_utf8_lossy(&have.stdout).trim().to_owned();
    if have == want {
        return;
    }
    if !have.is_empty() {
        // An older build of the test image; its containers were removed by the caller.
        let _ = podman(&["rmi", "-f", &have]);
    }
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("set -o pipefail; docker save {IMAGE} | podman load"),
        ])
        .output()
        .expect("spawn bash");
    assert!(
        out.status.success(),
        "`docker save {IMAGE} | podman load` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let have = podman_ok(&["image", "inspect", "-f", "{{.Id}}", PIMAGE]);
    assert_eq!(have, want, "podman load gave another image id");
}

/// Removes every container and the network this test makes, and its KV keys: at the start
/// (leftovers of an earlier run) and when dropped (also when the test fails).
struct PodmanCleanup {
    state_dir: PathBuf,
}

impl PodmanCleanup {
    fn new() -> Self {
        let c = PodmanCleanup {
            state_dir: std::env::temp_dir().join("egt-podman-state"),
        };
        c.sweep();
        c
    }

    fn sweep(&self) {
        let ids = podman(&["ps", "-a", "-q", "--filter", &format!("name=^{PREFIX}")]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = podman(&["rm", "-f", "-t", "0", id]);
        }
        let _ = podman(&["network", "rm", "-f", NET]);
        let _ = Command::new("consul")
            .args(["kv", "delete", "-recurse", KV_ROOT])
            .env("CONSUL_HTTP_ADDR", CONSUL)
            .output();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        self.sweep();
    }
}

fn name(what: &str) -> String {
    format!("{PREFIX}{what}")
}

/// `podman run -d` with [`ULIMITS`] on the test network.
fn run(what: &str, extra: &[&str], cmd: &[&str]) -> String {
    let n = name(what);
    let mut args = vec!["run", "-d", "--name", &n, "--network", NET];
    args.extend_from_slice(&ULIMITS);
    args.extend_from_slice(extra);
    args.push(PIMAGE);
    args.extend_from_slice(cmd);
    podman_ok(&args);
    n
}

/// A long-running client container.
fn client(what: &str, extra: &[&str]) -> String {
    run(what, extra, &["sleep", "3600"])
}

/// Like [`fetch`], through `podman exec`.
fn pfetch(container: &str, ip: &str, port: u16) -> Fetch {
    let out = podman(&[
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
        Fetch::Refused
    } else {
        Fetch::Other(format!(
            "rc={:?} stdout={stdout:?} stderr={stderr:?}",
            out.status.code()
        ))
    }
}

fn pid_of(container: &str) -> String {
    podman_ok(&["inspect", "-f", "{{.State.Pid}}", container])
}

fn id_of(container: &str) -> String {
    podman_ok(&["inspect", "-f", "{{.Id}}", container])
}

/// `nsenter -t <pid> -n <cmd>` in a Podman container's network namespace.
fn in_netns(container: &str, cmd: &str) -> Output {
    sh(&format!("nsenter -t {} -n {cmd}", pid_of(container)))
}

/// The `inet egresstrator` table in a Podman container's namespace, or None.
fn ptable(container: &str) -> Option<String> {
    let out = in_netns(container, "nft list table inet egresstrator");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `pred` holds for the container's table, up to 20 s.
fn wait_ptable(container: &str, what: &str, pred: impl Fn(Option<&str>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = ptable(container);
        if pred(t.as_deref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{container}: timed out waiting for {what}; table now: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when the table allows TCP to the server on exactly `port`.
fn allows(t: Option<&str>, port: u16) -> bool {
    let needle = format!("{SUBNET}.10 . tcp . {port}");
    t.is_some_and(|t| {
        t.match_indices(&needle)
            .any(|(i, m)| !t[i + m.len()..].starts_with(|c: char| c.is_ascii_digit() || c == '-'))
    })
}

/// The web ACL in force: the `allowlist acls=web` table allowing port 80 only.
fn web_table(t: Option<&str>) -> bool {
    t.is_some_and(|t| t.contains("comment \"egresstrator allowlist acls=web\""))
        && allows(t, 80)
        && !allows(t, 8080)
}

/// Asserts which of the server's ports `from` reaches and which it is refused on.
fn expect(from: &str, reach: &[u16], refused: &[u16]) {
    let srv = format!("{SUBNET}.10");
    for &p in reach {
        assert_eq!(
            pfetch(from, &srv, p),
            Fetch::Body(format!("port{p}")),
            "{from} should reach port {p}; table: {:?}",
            ptable(from)
        );
    }
    for &p in refused {
        assert_eq!(
            pfetch(from, &srv, p),
            Fetch::Refused,
            "{from} should be refused on port {p}; table: {:?}",
            ptable(from)
        );
    }
}

/// Runs the egresstrator CLI against the Podman socket with the agent's state dir.
fn pcli(state: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(["--docker-host", SOCK_URL, "-k", KV_PATH, "--state-dir"])
        .arg(state)
        .args(args)
        .env("CONSUL_HTTP_ADDR", CONSUL)
        .env("EGRESSTRATOR_LOG", "info")
        .output()
        .expect("spawn egresstrator")
}

fn pcli_ok(state: &Path, args: &[&str]) -> String {
    let out = pcli(state, args);
    assert!(
        out.status.success(),
        "egresstrator --docker-host {SOCK_URL} {args:?} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An agent on the Podman socket, with the state dir of the test and a status endpoint.
fn agent(state: &Path, port: u16) -> AgentProc {
    AgentProc::start_with(
        state,
        &format!("127.0.0.1:{port}"),
        &["--docker-host", SOCK_URL, "-k", KV_PATH],
    )
}

/// A Podman network 10.231.129.0/24 with a server at .10 serving ports 80 and 8080, an ACL
/// `web` allowing only 80, and clients made with the `podman` CLI:
/// - control: before any agent runs, the enabled client reaches both ports, and a client
///   that is not enabled reaches both throughout;
/// - the agent (`--docker-host` = the test's Podman socket) enforces the enabled client
///   that ran before it started and one started while it runs (Podman's events): 80
///   reached, 8080 refused, `inet egresstrator` in their namespaces, shown in `/status`;
/// - `check`, `set --rules`, `clear` and `set` through the CLI on the Podman socket, and the
///   running agent honours them;
/// - an agent killed with SIGKILL leaves the rules in force; one started again re-enforces a
///   container whose table was removed while no agent ran, and enforces one started then.
#[test]
fn agent_and_cli_enforce_podman_containers_over_its_docker_api_socket() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    podman_prerequisites();
    // No ForeignWatch: an agent watching dockerd cannot see or touch Podman's containers.
    let t0 = Instant::now();

    // Drop order (reverse of declaration): agents, then containers/network/KV, then the
    // service.
    let _service = PodmanService::start();
    let cleanup = PodmanCleanup::new();
    let state = cleanup.state_dir.clone();
    ensure_image();

    podman_ok(&[
        "network",
        "create",
        "--subnet",
        &format!("{SUBNET}.0/24"),
        NET,
    ]);
    let srv_ip = format!("{SUBNET}.10");
    let mut script = String::new();
    for p in [80, 8080] {
        script.push_str(&format!(
            "mkdir -p /www{p} && echo port{p} > /www{p}/index.html && httpd -p {p} -h /www{p} && "
        ));
    }
    script.push_str("exec sleep 3600");
    let srv = run("srv", &["--ip", &srv_ip], &["sh", "-c", &script]);
    for p in [80, 8080] {
        wait_for(
            &format!("{srv} to serve port {p}"),
            Duration::from_secs(20),
            || matches!(pfetch(&srv, "127.0.0.1", p), Fetch::Body(_)).then_some(()),
        );
    }
    kv_put(&format!("{KV_PATH}web"), &format!("{srv_ip}:tcp/80\n"));

    // Control: with no agent, an enabled container reaches both ports (the server really
    // serves 8080, and nothing else refuses it).
    let early = client("early", &ENABLE_WEB);
    let free = client("free", &[]);
    assert_eq!(ptable(&early), None);
    expect(&early, &[80, 8080], &[]);
    expect(&free, &[80, 8080], &[]);

    let port = free_port();
    let mut first = agent(&state, port);
    wait_ptable(&early, "the agent's startup pass", web_table);
    expect(&early, &[80], &[8080]);

    let late = client("late", &ENABLE_WEB);
    wait_ptable(&late, "enforcement after Podman's start event", web_table);
    expect(&late, &[80], &[8080]);

    // The container that is not enabled is untouched.
    assert_eq!(ptable(&free), None);
    expect(&free, &[80, 8080], &[]);

    // The agent's view: both enforced, not failed closed, from Podman's ids.
    for c in [&early, &late] {
        let id = id_of(c);
        let st = wait_for(&format!("{c} in /status"), Duration::from_secs(20), || {
            status_of(port, &id).filter(|s| s["applied_at_unix_nano"].as_i64() > Some(0))
        });
        assert_eq!(st["fail_closed"], false, "{st}");
        assert!(st["error"].is_null(), "{st}");
        assert_eq!(st["name"], c.as_str(), "{st}");
    }
    let log = first.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("container enforced") && l.contains(&late))
        .unwrap_or_else(|| panic!("no log line for {late}:\n{log}"));
    assert!(line.contains("outcome=\"enforced\""), "{line}");

    // The CLI on the Podman socket. `check` answers from the container's own ACLs.
    let out = pcli(&state, &["check", &early, &srv_ip, "tcp", "80"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check tcp/80: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pcli(&state, &["check", &early, &srv_ip, "tcp", "8080"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check tcp/8080: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `set --rules` restricts a container that is not enabled…
    pcli_ok(&state, &["set", &free, "--rules", "web"]);
    assert!(web_table(ptable(&free).as_deref()), "{:?}", ptable(&free));
    expect(&free, &[80], &[8080]);
    // …and `clear` frees it again.
    pcli_ok(&state, &["clear", &free]);
    assert_eq!(ptable(&free), None);
    expect(&free, &[80, 8080], &[]);
    // `clear` on an enabled container holds while the agent runs…
    pcli_ok(&state, &["clear", &late]);
    assert_eq!(ptable(&late), None);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ptable(&late),
        None,
        "the agent put the rules back after clear"
    );
    expect(&late, &[80, 8080], &[]);
    // …and `set` returns it to its own ACLs.
    pcli_ok(&state, &["set", &late]);
    wait_ptable(&late, "its own ACLs after set", web_table);
    expect(&late, &[80], &[8080]);

    // Agent restart. SIGKILL tears nothing down: the rules stay in force.
    first.kill9();
    assert!(!first.is_running());
    assert!(web_table(ptable(&early).as_deref()));
    expect(&early, &[80], &[8080]);
    // While no agent runs, the early client loses its table (it is free again), and another
    // enabled container starts (not enforced yet).
    let out = in_netns(&early, "nft delete table inet egresstrator");
    assert!(
        out.status.success(),
        "deleting the table: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect(&early, &[80, 8080], &[]);
    let during = client("during", &ENABLE_WEB);
    assert_eq!(ptable(&during), None);
    expect(&during, &[80, 8080], &[]);

    let again = agent(&state, free_port());
    for c in [&early, &during, &late] {
        wait_ptable(c, "enforcement by the restarted agent", web_table);
        expect(c, &[80], &[8080]);
    }
    assert_eq!(ptable(&free), None);
    expect(&free, &[80, 8080], &[]);
    let log = again.log_text();
    assert!(
        log.contains("reconciling running containers"),
        "no startup pass in:\n{log}"
    );
    drop(again);
    drop(first);
    eprintln!("podman scenario took {:.1?}", t0.elapsed());
}
