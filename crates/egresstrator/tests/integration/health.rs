//! `/healthz` means something: 200 only while Docker's event stream is connected and a policy
//! is in force, 503 with the reason otherwise.
//!
//! The agent reaches dockerd and Consul through `socat` relays the test starts and stops: to
//! the agent, a relay that stops is exactly a daemon that stopped (its socket refuses), while
//! the real dockerd and Consul keep serving the other tests' containers.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// A `socat` relay from `listen` to `to`, killed on drop with the children it forked for
/// open connections (its own process group), so those connections end too.
struct Relay(Child);

impl Relay {
    fn start(listen: &str, to: &str) -> Relay {
        use std::os::unix::process::CommandExt;
        let child = Command::new("socat")
            .args([listen, to])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (run `make test`: scripts/prereqs.sh installs it)");
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of a child we spawned and still own.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A relay at `sock` to dockerd's socket, serving once it returns.
fn docker_relay(sock: &std::path::Path) -> Relay {
    let r = Relay::start(
        &format!("UNIX-LISTEN:{},fork,unlink-early", sock.display()),
        "UNIX-CONNECT:/var/run/docker.sock",
    );
    wait_for("the docker relay", Duration::from_secs(5), || {
        sock.exists().then_some(())
    });
    r
}

/// `GET /healthz`: the status code and the body.
fn healthz(port: u16) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

fn wait_health(port: u16, what: &str, code: u16, needle: &str) {
    wait_for(what, Duration::from_secs(20), || {
        healthz(port).filter(|(c, b)| *c == code && b.contains(needle))
    });
}

/// Consul away at start (no snapshot): 503 "no policy"; Consul back: 200. Docker away: 503
/// "docker event stream"; Docker back: 200.
#[test]
fn healthz_follows_docker_and_the_policy() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let s = Scene::bare("health", 125);
    let sock = std::env::temp_dir().join(format!("{}-docker.sock", s.tag));
    let _ = std::fs::remove_file(&sock);
    let consul_port = free_port();
    let mut relay = Some(docker_relay(&sock));
    let port = free_port();
    let consul_addr = format!("127.0.0.1:{consul_port}");
    let docker_host = format!("unix://{}", sock.display());
    let _agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &[
            "-k",
            &s.kv_path,
            "-c",
            &consul_addr,
            "--docker-host",
            &docker_host,
        ],
    );
    wait_health(
        port,
        "503 while no policy was ever read",
        503,
        "no policy has been read yet",
    );
    let consul = Relay::start(
        &format!("TCP-LISTEN:{consul_port},bind=127.0.0.1,reuseaddr,fork"),
        &format!("TCP:{CONSUL}"),
    );
    wait_health(port, "200 once consul answers", 200, "ok");

    drop(relay.take());
    let _ = std::fs::remove_file(&sock);
    wait_health(
        port,
        "503 while docker is away",
        503,
        "the docker event stream is not connected",
    );
    relay = Some(docker_relay(&sock));
    wait_health(port, "200 once docker is back", 200, "ok");
    drop(relay);
    drop(consul);
    let _ = std::fs::remove_file(&sock);
}

/// `--log-format json`: every log line is one JSON object with level, target and message; a
/// bad `--log-format` is refused.
#[test]
fn log_format_json_gives_one_object_per_line() {
    let out = Command::new(bin())
        .args([
            "--log-format",
            "json",
            "-c",
            "127.0.0.1:1",
            "--consul-token",
            "not-a-real-token",
            "validate",
        ])
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .expect("egresstrator runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let warn = logs
        .iter()
        .find(|l| l["level"] == "WARN")
        .unwrap_or_else(|| panic!("no WARN object in:\n{stderr}"));
    assert!(warn["message"]
        .as_str()
        .is_some_and(|m| m.contains("--consul-token on the command line")));
    assert_eq!(warn["target"], "egresstrator");
    assert!(!stderr.contains("not-a-real-token"), "{stderr}");
    let bad = Command::new(bin())
        .args(["--log-format", "xml", "validate"])
        .output()
        .expect("egresstrator runs");
    assert!(!bad.status.success());
}

/// systemd's notify protocol, read from the socket systemd would hold (`$NOTIFY_SOCKET`; the
/// test is the receiving end, as systemd is PID 1 only outside this sandbox): `READY=1` comes
/// only after a container that was running at start is enforced, and `WATCHDOG=1` comes only
/// while the agent is healthy (it stops while Docker is away and resumes after).
#[test]
fn systemd_readiness_and_watchdog_follow_health() {
    use std::os::unix::net::UnixDatagram;
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::bare("notify", 127);
    let notify_path = std::env::temp_dir().join(format!("{}-notify.sock", s.tag));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let next = |within: Duration| -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        let mut buf = [0u8; 512];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = notify.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    };
    let sock = std::env::temp_dir().join(format!("{}-docker.sock", s.tag));
    let _ = std::fs::remove_file(&sock);
    let mut relay = Some(docker_relay(&sock));
    s.acl("web", &[80]);
    let c = s.client(
        "early",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    assert_eq!(table(&c), None);
    let docker_host = format!("unix://{}", sock.display());
    let mut child = Command::new(bin())
        .args(["--listen", "off", "--hook-socket", "off", "--state-dir"])
        .arg(s.state_dir())
        .args(["-k", &s.kv_path, "--docker-host", &docker_host])
        .env("CONSUL_HTTP_ADDR", CONSUL)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let ready = next(Duration::from_secs(20)).expect("a notification");
    assert_eq!(ready.trim(), "READY=1");
    assert!(
        table(&c).is_some(),
        "READY=1 came before the running container was enforced"
    );
    assert_eq!(
        next(Duration::from_secs(2)).as_deref().map(str::trim),
        Some("WATCHDOG=1")
    );
    // Docker away: unhealthy, so no watchdog pings (systemd would restart the agent).
    drop(relay.take());
    let _ = std::fs::remove_file(&sock);
    std::thread::sleep(Duration::from_millis(700)); // pings sent before it noticed
    while next(Duration::from_millis(50)).is_some() {}
    assert_eq!(
        next(Duration::from_secs(2)),
        None,
        "watchdog pinged while unhealthy"
    );
    relay = Some(docker_relay(&sock));
    assert_eq!(
        next(Duration::from_secs(10)).as_deref().map(str::trim),
        Some("WATCHDOG=1")
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(relay);
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&notify_path);
}
