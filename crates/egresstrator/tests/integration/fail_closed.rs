//! No fail-open corner: each way the policy can be unknown, stale, too big or half loaded
//! ends in deny, visibly. Faults are produced with the real components wherever they can
//! produce them on demand; where they cannot, the test says what it injects and why.

use std::time::Duration;

use crate::common::*;

/// The iptables backend is all or nothing across families. egresstrator's IPv6 refuse chain,
/// replaced with nft by a base chain of the same name, makes every ip6tables-restore in that
/// namespace fail while iptables-restore (IPv4) still works. A policy change then
/// loads IPv4 and fails on IPv6: both families must end up denied (one nft deny-all), not
/// IPv4 with its new rules and IPv6 as it was. Control: the allowed port was reachable just
/// before. Once the fault is gone, the real ruleset comes back and the stand-in goes.
#[test]
fn iptables_failing_for_one_family_denies_both() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("ipt-half", 120, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path, "--backend", "iptables"],
    );
    let c = s.client(
        "c",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    wait_for("enforcement", Duration::from_secs(20), || {
        (fetch(&c, &s.srv_ip, 8080) == Fetch::Refused).then_some(())
    });
    s.expect(&c, &[80], &[8080]);
    let pid = container_pid(&c);
    let ns = format!("nsenter --net=/proc/{pid}/ns/net");
    // The fault: egresstrator's IPv6 refuse chain replaced by a base chain of the same name,
    // which ip6tables-restore can neither create nor jump to.
    let out = sh(&format!(
        "{ns} nft flush chain ip6 filter EGRESSTRATOR-OUTPUT && \
         {ns} nft delete chain ip6 filter EGRESSTRATOR-REFUSE && \
         {ns} nft add chain ip6 filter EGRESSTRATOR-REFUSE '{{ type filter hook forward priority 5; }}'"
    ));
    assert!(out.status.success(), "the fault: {out:?}");
    // A policy change makes the agent load both families again.
    s.acl("web", &[80, 8081]);
    let id = container_id(&c);
    let entry = wait_for("fail closed", Duration::from_secs(20), || {
        status_of(port, &id).filter(|e| e["fail_closed"] == true)
    });
    assert!(
        entry["error"].as_str().unwrap_or("").contains("ip6tables"),
        "the error names what failed: {entry}"
    );
    assert_eq!(
        fetch(&c, &s.srv_ip, 80),
        Fetch::Refused,
        "IPv4 must not stay open with the new rules while IPv6 failed"
    );
    let t = table(&c).unwrap_or_default();
    assert!(
        t.contains("egresstrator deny-all"),
        "one nft deny-all for both families: {t}"
    );
    // The fault goes: the real ruleset comes back and the stand-in goes with it.
    let out = sh(&format!(
        "{ns} nft delete chain ip6 filter EGRESSTRATOR-REFUSE"
    ));
    assert!(out.status.success(), "{out:?}");
    wait_for("the real ruleset again", Duration::from_secs(30), || {
        (fetch(&c, &s.srv_ip, 80) == Fetch::Body("port80".into())).then_some(())
    });
    s.expect(&c, &[80], &[8080]);
    assert_eq!(table(&c), None, "the nft stand-in is gone");
    drop(agent);
}

/// A policy snapshot saved an hour ago, and a Consul that does not answer: without
/// `--max-policy-age` the container is enforced from the snapshot (Consul outages keep the
/// last good policy), and `/status` and `/metrics` show the policy's age; with
/// `--max-policy-age 30m` the same container fails closed, saying why. (The snapshot is
/// written by the test with an old save time: waiting an hour for one to age is not a test.)
#[test]
fn policy_older_than_max_policy_age_fails_closed() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("maxage", 121, &[80, 8080], &[]);
    let c = s.client(
        "c",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    // Nothing listens there: Consul is away.
    let dead = format!("127.0.0.1:{}", free_port());
    let saved = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let snapshot = serde_json::json!({
        "origin": format!("http://{dead}/v1/kv/{}", s.kv_path),
        "kv_index": 7,
        "values": { "web": format!("{}:tcp/80", s.srv_ip) },
        "services": {},
        "saved_at_unix": saved,
    });
    let state = s.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("policy-snapshot.json"),
        serde_json::to_vec(&snapshot).unwrap(),
    )
    .unwrap();
    let id = container_id(&c);

    let port = free_port();
    let agent = AgentProc::start_with(
        &state,
        &format!("127.0.0.1:{port}"),
        &["-c", &dead, "-k", &s.kv_path],
    );
    wait_for(
        "enforced from the snapshot",
        Duration::from_secs(20),
        || status_of(port, &id).filter(|e| e["fail_closed"] == false),
    );
    s.expect(&c, &[80], &[8080]);
    let st = status(port).unwrap();
    let age = st["policy_age_seconds"].as_u64().unwrap_or(0);
    assert!((3590..3700).contains(&age), "policy age shown: {st}");
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("egresstrator_policy_age_seconds 36"),
        "{metrics}"
    );
    drop(agent);

    let port = free_port();
    let agent = AgentProc::start_with(
        &state,
        &format!("127.0.0.1:{port}"),
        &["-c", &dead, "-k", &s.kv_path, "--max-policy-age", "30m"],
    );
    let e = wait_for("fail closed", Duration::from_secs(20), || {
        status_of(port, &id).filter(|e| e["fail_closed"] == true)
    });
    assert!(
        e["error"]
            .as_str()
            .unwrap_or("")
            .contains("older than --max-policy-age 1800s"),
        "{e}"
    );
    s.expect(&c, &[], &[80, 8080]);
    drop(agent);
}

/// `--consul-token` on the command line is readable by every local user in
/// /proc/<pid>/cmdline: the agent warns (and never prints the token); the same token from
/// $CONSUL_HTTP_TOKEN draws no warning.
#[test]
fn token_on_the_command_line_is_warned_about() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let secret = "4d7e6c1e-0000-4000-8000-command-line";
    let agent = AgentProc::start(&["-t", secret, "-k", "egt-token-warn/acl/"]);
    agent.wait_log("readable by every local user");
    assert!(
        !agent.log_text().contains(secret),
        "the token is in the log"
    );
    drop(agent);
    let out = std::process::Command::new(bin())
        .args(["-k", "egt-token-warn/acl/", "validate"])
        .env("CONSUL_HTTP_TOKEN", secret)
        .env("CONSUL_HTTP_ADDR", CONSUL)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("readable by every local user"), "{text}");
    assert!(!text.contains(secret), "{text}");
}

/// A proxy in front of dockerd's socket that answers the first `fail` inspects of one
/// container with `500 Internal Server Error` and relays everything else. With
/// `refuse_info`, it also answers `GET /info` with 500: the agent then does not learn Docker's
/// data root, cannot read its record of a container, and inspects at the start event. These
/// are faults injected on purpose: dockerd has no way to make an inspect fail transiently on
/// demand. One request per connection (the proxy asks dockerd to close after each answer), so
/// every inspect passes through it. With `hold_events` ([`FaultyDocker::holding_events`]), the
/// event stream is held open and never answered: dockerd cannot be made to withhold its
/// events on demand either.
struct FaultyDocker {
    path: std::path::PathBuf,
    injected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultyDocker {
    fn start(target_name: String, fail: usize, refuse_info: bool) -> Self {
        Self::start_with("inspect", target_name, fail, refuse_info, false)
    }

    /// A proxy that withholds every event (and with `refuse_info`, Docker's data root too).
    fn holding_events(tag: &str, refuse_info: bool) -> Self {
        Self::start_with(tag, String::new(), 0, refuse_info, true)
    }

    fn start_with(
        tag: &str,
        target_name: String,
        fail: usize,
        refuse_info: bool,
        hold_events: bool,
    ) -> Self {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixListener, UnixStream};
        let path = std::env::temp_dir().join(format!(
            "egt-faulty-docker-{}-{tag}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let injected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = injected.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let count = count.clone();
                let target = target_name.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match client.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let line = text.lines().next().unwrap_or("").to_owned();
                    let is_inspect = line.starts_with("GET ")
                        && line.contains("/containers/")
                        && line.contains("/json")
                        && {
                            let out = docker(&["inspect", "-f", "{{.Id}}", &target]);
                            let target_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                            out.status.success()
                                && line.contains(&format!("/containers/{target_id}/json"))
                        };
                    let is_info = line.starts_with("GET ")
                        && line
                            .split_whitespace()
                            .nth(1)
                            .is_some_and(|path| path == "/info" || path.ends_with("/info"));
                    let is_events = line.starts_with("GET ")
                        && line
                            .split_whitespace()
                            .nth(1)
                            .is_some_and(|path| path.contains("/events"));
                    if is_events && hold_events {
                        // Open, and silent until the agent hangs up.
                        let _ = std::io::copy(&mut client, &mut std::io::sink());
                        return;
                    }
                    if (is_inspect && count.load(std::sync::atomic::Ordering::SeqCst) < fail)
                        || (is_info && refuse_info)
                    {
                        if is_inspect {
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        let body = r#"{"message":"injected by the test proxy"}"#;
                        let _ = client.write_all(format!(
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ).as_bytes());
                        return;
                    }
                    let Ok(mut upstream) = UnixStream::connect("/var/run/docker.sock") else {
                        return;
                    };
                    let rewritten: String = text
                        .split("\r\n")
                        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                        .collect::<Vec<_>>()
                        .join("\r\n");
                    let rewritten = rewritten.trim_end_matches("\r\n").to_owned()
                        + "\r\nConnection: close\r\n\r\n";
                    if upstream.write_all(rewritten.as_bytes()).is_err() {
                        return;
                    }
                    let (mut c2, mut u2) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut u2);
                        let _ = u2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut upstream, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                });
            }
        });
        FaultyDocker { path, injected }
    }
}

impl FaultyDocker {
    /// An agent of the scene's kv-path that talks to Docker through this proxy, started and
    /// past its first reconcile; and its status port.
    fn agent(&self, s: &Scene) -> (u16, AgentProc) {
        let port = free_port();
        let agent = AgentProc::start_with(
            &s.state_dir(),
            &format!("127.0.0.1:{port}"),
            &[
                "-k",
                &s.kv_path,
                "--docker-host",
                &format!("unix://{}", self.path.display()),
            ],
        );
        agent.wait_log("reconciling running containers");
        (port, agent)
    }
}

impl Drop for FaultyDocker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A transient error never leaves a container unmanaged: dockerd's inspect of a newly
/// started enabled container fails three times (through [`FaultyDocker`]). The container is
/// shown as `pending` with the reason, retried with backoff, and then enforced: its denied
/// port is refused. Before, the error was only logged and the container ran unenforced.
#[test]
fn failed_inspect_is_retried_until_the_container_is_enforced() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("inspect-fault", 122, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let c = s.name("c");
    // Without Docker's data root the start event is inspected (the record cannot be read).
    let proxy = FaultyDocker::start(c.clone(), 3, true);
    let (port, agent) = proxy.agent(&s);
    s.client(
        "c",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let id = container_id(&c);
    let pending = wait_for("pending in /status", Duration::from_secs(20), || {
        status_of(port, &id).filter(|e| e["posture"] == "pending")
    });
    assert!(
        pending["error"]
            .as_str()
            .unwrap_or("")
            .contains("injected by the test proxy"),
        "{pending}"
    );
    wait_for(
        "enforced after the retries",
        Duration::from_secs(30),
        || status_of(port, &id).filter(|e| e["posture"] == "allowlist"),
    );
    assert_eq!(
        proxy.injected.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "every injected failure was asked for"
    );
    s.expect(&c, &[80], &[8080]);
    drop(agent);
}

/// The start event needs no answer from dockerd: every inspect of the container fails, and
/// the agent still enforces it, from Docker's record on disk (its data root learned from
/// `/info`). The test above is the control: the same faults with `/info` refused leave the
/// container pending until an inspect succeeds.
#[test]
fn a_start_is_enforced_from_dockers_record_while_inspects_fail() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("record-start", 130, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let c = s.name("c");
    let proxy = FaultyDocker::start(c.clone(), usize::MAX, false);
    let (port, agent) = proxy.agent(&s);
    s.client(
        "c",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let id = container_id(&c);
    wait_for("enforced from the record", Duration::from_secs(20), || {
        status_of(port, &id).filter(|e| e["posture"] == "allowlist")
    });
    s.expect(&c, &[80], &[8080]);
    drop(agent);
}

/// Docker's records are watched: a start is enforced from its record even when its event
/// never comes (the proxy holds the agent's event stream silent). Control: the same, with
/// `/info` refused as well, so that the agent does not know where the records are: the
/// container is then not enforced at all, which shows that the events were withheld.
#[test]
fn a_start_is_enforced_from_dockers_record_without_its_event() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("record-watch", 131, &[80, 8080], &[]);
    s.acl("web", &[80]);
    for (tag, refuse_info) in [("control", true), ("watched", false)] {
        let proxy = FaultyDocker::holding_events(tag, refuse_info);
        let (port, agent) = proxy.agent(&s);
        s.client(
            tag,
            &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
        );
        let c = s.name(tag);
        let id = container_id(&c);
        if refuse_info {
            std::thread::sleep(Duration::from_secs(3));
            assert_eq!(
                status_of(port, &id),
                None,
                "control: enforced without its event and without Docker's records"
            );
        } else {
            wait_for("enforced from its record", Duration::from_secs(20), || {
                status_of(port, &id).filter(|e| e["posture"] == "allowlist")
            });
            s.expect(&c, &[80], &[8080]);
        }
        drop(agent);
    }
}

/// Bounded inputs: a container whose `egresstrator.acl` label names a million ACLs (about
/// 7 MB, given through the Engine API) fails closed with an error that names the limit; a
/// container started right after it is enforced as usual: the agent did not stall.
#[test]
fn a_million_acl_names_fail_one_container_closed_and_stall_nothing() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("bounded", 123, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    agent.wait_log("reconciling running containers");
    // Through the Engine API: the CLI's --label-file reads lines of at most 64 KiB.
    let names: Vec<String> = (0..1_000_000).map(|i| format!("n{i}")).collect();
    let big = s.name("big");
    let _ = docker(&["rm", "-f", &big]);
    let body = serde_json::json!({
        "Image": IMAGE,
        "Cmd": ["sleep", "3600"],
        "Labels": {
            "egresstrator.enable": "true",
            "egresstrator.acl": names.join(","),
        },
        "HostConfig": { "NetworkMode": s.net },
    });
    let file = s.state_dir().with_extension("create.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let out = sh(&format!(
        "curl -sf --unix-socket /var/run/docker.sock -H 'Content-Type: application/json' \
         -X POST --data-binary @{} 'http://docker/containers/create?name={big}' && \
         curl -sf --unix-socket /var/run/docker.sock -X POST 'http://docker/containers/{big}/start'",
        file.display()
    ));
    let _ = std::fs::remove_file(&file);
    s.cleanup.containers.push(big.clone());
    assert!(
        out.status.success(),
        "create and start through the API: {out:?}"
    );
    let normal = s.client(
        "normal",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let started = std::time::Instant::now();
    wait_for(
        "the normal container enforced",
        Duration::from_secs(20),
        || (fetch(&normal, &s.srv_ip, 8080) == Fetch::Refused).then_some(()),
    );
    eprintln!(
        "normal container enforced {:?} after its start",
        started.elapsed()
    );
    s.expect(&normal, &[80], &[8080]);
    let id = container_id(&big);
    let e = wait_for("the big one fails closed", Duration::from_secs(20), || {
        status_of(port, &id).filter(|e| e["fail_closed"] == true)
    });
    assert!(
        e["error"]
            .as_str()
            .unwrap_or("")
            .contains("longer than the limit of 16384 bytes"),
        "{e}"
    );
    s.expect(&big, &[], &[80, 8080]);
    drop(agent);
}
