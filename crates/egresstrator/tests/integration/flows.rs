//! The deny log, `monitor` and audit mode, end to end: real connections refused (or, in
//! audit mode, let through) inside enabled containers, reported by the kernel's log to the
//! agent, streamed by `egresstrator monitor` and counted in `/metrics`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

/// A running `egresstrator monitor`, its stdout lines collected on a thread.
pub(crate) struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    pub(crate) fn start(port: u16, args: &[&str]) -> Monitor {
        let mut child = Command::new(bin())
            .args(["--listen", &format!("127.0.0.1:{port}"), "monitor"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn monitor");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Monitor { child, lines }
    }

    /// Every line that arrives within `wait`.
    pub(crate) fn collect(&self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scene whose listener serves 80 and 8080, ACL `web` allowing 80, and an agent with its
/// status endpoint on a free port.
fn scene_with_agent(tag: &str, octet: u8) -> (Scene, u16, AgentProc) {
    let s = Scene::new(tag, octet, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    (s, port, agent)
}

fn records(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// The listener serves 80 and 8080; ACL `web` allows 80.
/// - `deny` (enforced) is refused on 8080: `monitor --json` shows one `deny` record with the
///   container, its ACLs and `check`'s reason; port 80 (allowed) shows nothing.
/// - `audit` (EGRESSTRATOR_AUDIT=1) reaches 8080 — the same ACL refuses it for `deny`, the
///   control — and the flow shows as `audit`; `/status` says posture `audit`.
/// - `/metrics` counts both per container; the agent's log has the line; `monitor NAME`
///   shows only that container.
/// - `set --audit-mode on` switches the enforced container to audit live, and a plain `set`
///   back; Ctrl-C ends `monitor` with success.
#[test]
fn refused_and_audited_flows_are_reported_live() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let (mut s, port, agent) = scene_with_agent("flows", 124);
    let deny = s.client(
        "deny",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let audit = s.client(
        "audit",
        &[
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
            "-e",
            "EGRESSTRATOR_AUDIT=1",
        ],
    );
    let (deny_id, audit_id) = (container_id(&deny), container_id(&audit));
    wait_for("both containers enforced", Duration::from_secs(20), || {
        let d = status_of(port, &deny_id)?;
        let a = status_of(port, &audit_id)?;
        (d["posture"] == "allowlist" && a["posture"] == "audit").then_some(())
    });
    let json = Monitor::start(port, &["--json"]);
    let only_audit = Monitor::start(port, &[&audit]);
    // Both monitors are subscribed once the agent has answered one of them; give the
    // connections a moment, then check the agent is still serving.
    std::thread::sleep(Duration::from_millis(300));
    assert!(http_get(port, "/healthz").is_some() || http_get(port, "/status").is_some());

    // Allowed: reaches, and is never reported.
    s.expect(&deny, &[80], &[8080]);
    assert_eq!(fetch(&audit, &s.srv_ip, 80), Fetch::Body("port80".into()));
    // Audit: the flow the same ACL refuses for `deny` goes through.
    assert_eq!(
        fetch(&audit, &s.srv_ip, 8080),
        Fetch::Body("port8080".into()),
        "audit mode lets it through; table: {:?}",
        table(&audit)
    );

    let lines = json.collect(Duration::from_secs(3));
    let recs = records(&lines);
    let of = |id: &str, verdict: &str| {
        recs.iter()
            .filter(|r| r["id"] == id && r["verdict"] == verdict)
            .cloned()
            .collect::<Vec<_>>()
    };
    let denied = of(&deny_id, "deny");
    assert_eq!(
        denied.len(),
        1,
        "one record for one refused connect: {lines:#?}"
    );
    let d = &denied[0];
    assert_eq!(d["name"], deny.as_str());
    assert_eq!(d["acls"], serde_json::json!(["web"]));
    assert_eq!(d["posture"], "allowlist");
    assert_eq!(d["proto"], "tcp");
    assert_eq!(d["dst"], s.srv_ip.as_str());
    assert_eq!(d["dport"], 8080);
    assert_eq!(d["reason"], "no acl allows it (default deny)");
    let audited = of(&audit_id, "audit");
    assert_eq!(
        audited.len(),
        1,
        "one record for one audited flow: {lines:#?}"
    );
    assert_eq!(audited[0]["dport"], 8080);
    assert_eq!(audited[0]["posture"], "audit");
    assert!(
        recs.iter().all(|r| r["dport"] != 80),
        "allowed flows are not reported: {lines:#?}"
    );

    // `monitor NAME`, text: only that container's flows.
    let text = only_audit.collect(Duration::from_millis(500));
    assert_eq!(text.len(), 1, "{text:#?}");
    assert!(
        text[0].contains(" audit ") && text[0].contains(&audit) && text[0].contains(":8080"),
        "{text:#?}"
    );

    // Counted per container in /metrics, and logged.
    let metrics = http_get(port, "/metrics").expect("metrics");
    let short = |id: &str| id[..12].to_owned();
    for line in [
        format!(
            "egresstrator_denied_flows_total{{id=\"{}\",name=\"{deny}\"}} 1",
            short(&deny_id)
        ),
        format!(
            "egresstrator_audited_flows_total{{id=\"{}\",name=\"{audit}\"}} 1",
            short(&audit_id)
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }
    // The real agent's exposition parses, and its histograms counted both first commits.
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .expect("the agent's /metrics parses");
    for name in [
        "egresstrator_event_to_enforced_seconds",
        "egresstrator_apply_duration_seconds",
        "egresstrator_docker_event_delay_seconds",
    ] {
        let h = scrape
            .samples
            .iter()
            .find(|x| x.metric == name)
            .unwrap_or_else(|| panic!("no {name}"));
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!("{name} is not a histogram");
        };
        let total = buckets.last().map_or(0.0, |b| b.count);
        assert!(total >= 2.0, "{name} counted {total}");
    }
    agent.wait_log(&format!(
        "deny  {} ({deny}) tcp/{}:8080",
        short(&deny_id),
        s.srv_ip
    ));

    // `egresstrator status`: a row per container, with its flows of the last minute.
    let listen = format!("127.0.0.1:{port}");
    let out = cli(&["--listen", &listen, "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row(&deny)[..4],
        [
            short(&deny_id),
            deny.clone(),
            "allowlist".into(),
            "web".into()
        ]
    );
    assert_eq!(row(&deny)[6], "1", "{text}");
    assert_eq!(row(&audit)[2], "audit");
    assert_eq!(row(&audit)[6], "1", "{text}");
    let out = cli(&["--listen", &listen, "status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert!(doc["containers"].as_array().is_some_and(|c| c.len() >= 2));

    // Live switch: `set --audit-mode on` audits the enforced container without a restart;
    // a plain `set` hands it back to its own choice (enforce), and 8080 is refused again.
    let state = s.state_dir();
    let state = state.to_str().expect("utf-8 path");
    let set = |extra: &[&str]| {
        let mut args = vec!["-k", &s.kv_path, "--state-dir", state, "set", &deny];
        args.extend_from_slice(extra);
        let out = cli(&args);
        assert!(
            out.status.success(),
            "set {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    set(&["--audit-mode", "on"]);
    wait_for(
        "the agent to show posture audit",
        Duration::from_secs(10),
        || (status_of(port, &deny_id)?["posture"] == "audit").then_some(()),
    );
    assert_eq!(
        fetch(&deny, &s.srv_ip, 8080),
        Fetch::Body("port8080".into())
    );
    let live = records(&json.collect(Duration::from_secs(2)));
    assert!(
        live.iter()
            .any(|r| r["id"] == deny_id.as_str() && r["verdict"] == "audit" && r["dport"] == 8080),
        "{live:#?}"
    );
    set(&[]);
    wait_for(
        "the agent to show posture allowlist",
        Duration::from_secs(10),
        || (status_of(port, &deny_id)?["posture"] == "allowlist").then_some(()),
    );
    assert_eq!(fetch(&deny, &s.srv_ip, 8080), Fetch::Refused);

    // Ctrl-C ends monitor cleanly.
    let mut json = json;
    // SAFETY: signalling a child process we spawned and still own.
    unsafe { libc::kill(json.child.id() as i32, libc::SIGINT) };
    let status = json.child.wait().expect("monitor exits");
    assert!(status.success(), "monitor after Ctrl-C: {status:?}");
    drop(agent);
}

/// Sends `n` UDP datagrams from inside the network namespace of `pid`, each from a new socket
/// (a new source port: a new flow), to `dst`. Returns how many the kernel refused (`EPERM`).
fn flood_from(pid: &str, dst: std::net::SocketAddr, n: usize) -> usize {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a thread of our own that only sends and then exits; the fd is
        // open for the call.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let mut refused = 0;
        for _ in 0..n {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
            if s.send_to(b"flood", dst).is_err() {
                refused += 1;
            }
        }
        refused
    })
    .join()
    .expect("flood thread")
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// 10,000 refused flows (new UDP sockets) from one enabled container: every one is refused,
/// the kernel's limit bounds what reaches the agent (at most the burst plus the rate over
/// the flood's time, a little slack for the tick), the agent keeps answering `/status`, its
/// memory stays within a bound, and a refused TCP connect right after still shows.
#[test]
fn a_flood_of_refused_flows_is_rate_limited() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let (mut s, port, agent) = scene_with_agent("flood", 126);
    let c = s.client(
        "c",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let id = container_id(&c);
    wait_for("the container enforced", Duration::from_secs(20), || {
        (status_of(port, &id)?["posture"] == "allowlist").then_some(())
    });
    let monitor = Monitor::start(port, &["--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = vm_rss_kib(agent.pid());

    let dst = format!("{}:9999", s.srv_ip).parse().expect("addr");
    let started = Instant::now();
    let refused = flood_from(&container_pid(&c), dst, 10_000);
    let flood_secs = started.elapsed().as_secs_f64();
    assert_eq!(refused, 10_000, "every datagram is refused");
    assert!(
        status(port).is_some(),
        "the agent answers /status right after the flood"
    );

    let recs = records(&monitor.collect(Duration::from_secs(2)));
    let flood: Vec<_> = recs.iter().filter(|r| r["dport"] == 9999).collect();
    // The kernel's bucket: 40 at once, then 20 a second (LOG_BURST, LOG_RATE_PER_SEC).
    let bound = 40.0 + 20.0 * (flood_secs + 0.1) + 2.0;
    assert!(
        !flood.is_empty() && (flood.len() as f64) <= bound,
        "{} records for a {flood_secs:.3}s flood, bound {bound:.0}",
        flood.len()
    );
    // After the flood, a new refused connection is reported (the bucket refills).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fetch(&c, &s.srv_ip, 8080), Fetch::Refused);
    let after = records(&monitor.collect(Duration::from_secs(2)));
    assert!(
        after
            .iter()
            .any(|r| r["dport"] == 8080 && r["proto"] == "tcp"),
        "{after:#?}"
    );
    let rss_after = vm_rss_kib(agent.pid());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let metrics = http_get(port, "/metrics").expect("metrics");
    assert!(
        metrics.contains("egresstrator_flows_dropped_total 0"),
        "{metrics}"
    );
    drop(agent);
}
