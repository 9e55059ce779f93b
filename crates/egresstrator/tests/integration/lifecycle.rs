//! Container and daemon lifecycles: the agent keeps every enabled container
//! enforced across its own restarts, dockerd restarts and restart policies; refuses the host's
//! namespace; gives a shared namespace the union of its members' ACLs; honours lasting
//! `set`/`clear` overrides; reads labels before the environment; and forgets dead containers.
//!
//! Every test uses its own kv-path, its own /24 out of 10.231.40.0–10.231.59.0 and its own
//! containers; traffic goes only to the test's own listener containers.
//!
//! Every agent on the host enforces every enabled container, each with its own kv-path, so
//! these tests wait for other egresstrator processes to finish first and, when one ran during
//! a failed test, say so. The two dockerd tests stop dockerd, and with it every container on
//! the host, for about 15 s; a guard starts dockerd again (and the containers of others that
//! ran before) even when the test fails.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const ENABLE_WEB: [&str; 4] = ["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"];

/// True when the table's allow set has a TCP element for exactly `port` (`… . tcp . 80,`
/// counts for 80, `… . tcp . 8080` does not).
fn allows(t: Option<&str>, port: u16) -> bool {
    let needle = format!(". tcp . {port}");
    t.is_some_and(|t| {
        t.match_indices(&needle)
            .any(|(i, m)| !t[i + m.len()..].starts_with(|c: char| c.is_ascii_digit() || c == '-'))
    })
}

/// Runs the egresstrator CLI with a state dir (the agent's) and kv-path: (exit code, stdout,
/// stderr).
fn cli_with(
    state: &std::path::Path,
    kv_path: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut all = vec![
        "-k",
        kv_path,
        "--state-dir",
        state.to_str().expect("utf-8 path"),
    ];
    all.extend_from_slice(args);
    let out = Command::new(bin())
        .args(&all)
        .env("CONSUL_HTTP_ADDR", CONSUL)
        .env("EGRESSTRATOR_LOG", "info")
        .output()
        .expect("spawn egresstrator");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli_with`]; panics unless it succeeds.
fn cli_ok(state: &std::path::Path, kv_path: &str, args: &[&str]) {
    let (code, _, stderr) = cli_with(state, kv_path, args);
    assert_eq!(code, Some(0), "egresstrator {args:?} failed: {stderr}");
}

/// Rules already in a namespace stay in force while the agent is down (SIGKILL),
/// and enabled containers started meanwhile are enforced when it starts again with the same
/// state dir. A namespace that still holds exactly what the first agent loaded is not loaded
/// again (its record in `loaded.json`); one whose table was deleted while no agent ran is.
#[test]
fn agent_restart_keeps_rules_and_enforces_containers_started_while_down() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-agent", 40, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let before = s.client("before", &ENABLE_WEB);
    let tampered = s.client("tampered", &ENABLE_WEB);

    let mut agent = AgentProc::start(&["-k", &s.kv_path]);
    for c in [&before, &tampered] {
        wait_table(c, "the first agent's startup pass", |t| allows(t, 80));
        s.expect(c, &[80], &[8080]);
    }
    // The first agent records what its loads left (written within a tick of the fingerprint).
    let record = agent.state_dir().join("loaded.json");
    wait_for(
        "both namespaces in loaded.json",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&record).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            (json["namespaces"].as_object()?.len() == 2).then_some(())
        },
    );

    agent.kill9();
    assert!(!agent.is_running());
    // Nothing was torn down: the table and its effect are still there.
    assert!(allows(table(&before).as_deref(), 80));
    s.expect(&before, &[80], &[8080]);
    // While no agent runs, the table of one is deleted from outside: its record no longer
    // matches the namespace, which the next agent must notice.
    let pid = container_pid(&tampered);
    let out = sh(&format!(
        "nsenter --net=/proc/{pid}/ns/net nft delete table inet egresstrator"
    ));
    assert!(out.status.success(), "nft delete table: {out:?}");
    assert_eq!(table(&tampered), None);
    s.expect(&tampered, &[80, 8080], &[]);

    // Started while no agent runs: not enforced yet (the listener really serves 8080).
    let during = s.client("during", &ENABLE_WEB);
    let labelled = s.client(
        "during-label",
        &[
            "--label",
            "egresstrator.enable=true",
            "--label",
            "egresstrator.acl=web",
        ],
    );
    assert_eq!(table(&during), None);
    s.expect(&during, &[80, 8080], &[]);

    let state = agent.state_dir();
    let again = AgentProc::start_with(&state, "off", &["-k", &s.kv_path]);
    for c in [&during, &labelled] {
        wait_table(c, "the second agent's startup pass", |t| allows(t, 80));
        s.expect(c, &[80], &[8080]);
    }
    s.expect(&before, &[80], &[8080]);
    wait_table(
        &tampered,
        "the second agent to load the deleted table again",
        |t| allows(t, 80),
    );
    s.expect(&tampered, &[80], &[8080]);
    let log = again.log_text();
    assert!(
        log.contains("reconciling running containers"),
        "no startup pass in:\n{log}"
    );
    let kept: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("already enforced"))
        .collect();
    assert!(
        kept.iter().any(|l| l.contains(&before)),
        "{before} still held what the first agent loaded, so it was not to be loaded again:\n{log}"
    );
    for c in [&tampered, &during, &labelled] {
        assert!(
            !kept.iter().any(|l| l.contains(c.as_str())),
            "{c} did not hold the first agent's rules, yet it was taken as enforced:\n{log}"
        );
    }
    drop(again);
    drop(agent);
}

/// Keeps dockerd running: when dropped, starts it (detached, exactly as scripts/services.sh
/// does) unless it already answers, waits for `docker info`, and starts again the containers
/// of others that ran before the restart and did not come back by their own policy.
struct DockerdGuard {
    others_running: Vec<String>,
}

fn docker_answers() -> bool {
    sh("timeout 10 docker info >/dev/null 2>&1")
        .status
        .success()
}

fn dockerd_pids() -> Vec<u32> {
    let out = sh("pgrep -x dockerd");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn start_dockerd() {
    // As scripts/services.sh: own session, no terminal, output to the log, not our child's
    // pipes (so neither cargo nor this test waits on it).
    let status = Command::new("sh")
        .args([
            "-c",
            "setsid nohup dockerd </dev/null >/var/log/dockerd.log 2>&1 &",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn sh");
    assert!(status.success(), "starting dockerd failed: {status}");
}

fn ensure_dockerd() {
    if docker_answers() {
        return;
    }
    if dockerd_pids().is_empty() {
        eprintln!("starting dockerd again");
        start_dockerd();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !docker_answers() {
        if Instant::now() > deadline {
            eprintln!("dockerd does not answer after 120 s; see /var/log/dockerd.log");
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for DockerdGuard {
    fn drop(&mut self) {
        ensure_dockerd();
        for c in &self.others_running {
            if !container_running(c) {
                eprintln!("starting {c} again (it ran before dockerd was restarted)");
                let _ = docker(&["start", c]);
            }
        }
    }
}

/// Dockerd restarts (SIGTERM, as an init system stops it) while the agent runs.
/// A container with `--restart always` comes back in a new namespace; the agent reconnects
/// with backoff, stays up, and enforces it again (real traffic checked in the new namespace).
///
/// This stops every container on the host for a while. The guard starts dockerd again even
/// when the test fails, and restarts other containers that ran before.
#[test]
fn dockerd_restart_agent_reconnects_and_enforces_containers_that_come_back() {
    dockerd_restart_case("lc-dockerd", 41, libc::SIGTERM);
}

/// Dockerd crashes (SIGKILL) while the agent runs. The new dockerd stops
/// and restarts the containers before it answers, so the agent misses their `die` and
/// `start` events and must recover from the full list: a container that runs again is in a
/// new namespace, even when the kernel gives that namespace the inode number of the old one.
#[test]
fn dockerd_crash_agent_recovers_missed_events_and_enforces_new_namespaces() {
    dockerd_restart_case("lc-dockerd-kill", 49, libc::SIGKILL);
}

fn dockerd_restart_case(tag: &str, octet: u8, signal: i32) {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    // Only the enforced container has a restart policy, and it is made first: when dockerd
    // brings it back, nothing else of this test takes namespaces meanwhile, so the kernel
    // tends to hand its new namespace the inode number of its old one (as after `docker
    // restart`). The listener and the free client are started again by hand afterwards.
    let mut s = Scene::bare(tag, octet);
    s.acl("web", &[80]);
    let quick = ["--stop-timeout", "1"];
    let mut enabled_args = vec!["--restart", "always"];
    enabled_args.extend_from_slice(&quick);
    enabled_args.extend_from_slice(&ENABLE_WEB);
    let enforced = s.client("enforced", &enabled_args);
    s.serve(&[80, 8080], &quick);
    let free = s.client("free", &quick);

    let port = free_port();
    let mut agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    wait_table(&enforced, "the startup pass", |t| allows(t, 80));
    s.expect(&enforced, &[80], &[8080]);
    let before = container_run(&enforced);
    let netns_before = netns_inode(&enforced);
    let id = container_id(&enforced);
    let applied_before = wait_for("the container in /status", Duration::from_secs(20), || {
        status_of(port, &id)?["applied_at_unix_nano"].as_i64()
    });

    let ours = [&s.srv, &enforced, &free];
    let others_running: Vec<String> = docker_ok(&["ps", "--format", "{{.Names}}"])
        .lines()
        .filter(|n| !n.is_empty() && !ours.iter().any(|o| o.as_str() == *n))
        .map(str::to_owned)
        .collect();
    let _guard = DockerdGuard { others_running };

    // Stop dockerd and wait until it is gone.
    let pids = dockerd_pids();
    assert!(!pids.is_empty(), "no dockerd process");
    for pid in &pids {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(*pid as i32, signal) };
    }
    wait_for("dockerd to exit", Duration::from_secs(90), || {
        pids.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    agent.wait_log("reconnecting");
    // Let the agent fail to reach Docker at least once while it is down.
    agent.wait_log("cannot reach docker");
    assert!(agent.is_running(), "the agent exited when dockerd stopped");
    start_dockerd();
    wait_for("dockerd to answer again", Duration::from_secs(120), || {
        docker_answers().then_some(())
    });

    // Back in a new namespace, enforced again.
    wait_for(
        "the enforced container to run again",
        Duration::from_secs(60),
        || (container_running(&enforced) && container_run(&enforced) != before).then_some(()),
    );
    let netns_after = netns_inode(&enforced);
    eprintln!("netns inode before {netns_before}, after {netns_after}");
    for c in [&s.srv, &free] {
        if !container_running(c) {
            docker_ok(&["start", c]);
        }
    }
    wait_serving(&s.srv, &[80, 8080]);
    wait_table_for(
        &enforced,
        &format!(
            "enforcement after dockerd's restart (namespace inode before {netns_before}, \
             after {netns_after})"
        ),
        Duration::from_secs(60),
        |t| allows(t, 80),
    );
    s.expect(&enforced, &[80], &[8080]);
    assert_eq!(table(&free), None);
    s.expect(&free, &[80, 8080], &[]);

    assert!(
        agent.is_running(),
        "the agent exited:\n{}",
        agent.log_text()
    );
    let applied_after = wait_for("a new apply in /status", Duration::from_secs(20), || {
        let a = status_of(port, &id)?["applied_at_unix_nano"].as_i64()?;
        (a > applied_before).then_some(a)
    });
    assert!(applied_after > applied_before);
    let metrics = http_get(port, "/metrics").expect("/metrics");
    let reconnects = metrics
        .lines()
        .find_map(|l| l.strip_prefix("egresstrator_docker_reconnects_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(reconnects >= 1.0, "no reconnect counted:\n{metrics}");
    let log = agent.log_text();
    assert!(
        log.matches("reconciling running containers").count() >= 2,
        "no reconciliation after the reconnect:\n{log}"
    );
}

/// The inode of a container's network namespace (`net:[N]`).
fn netns_inode(name: &str) -> String {
    let pid = container_pid(name);
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A container restarted by its restart policy, or by `docker restart`, runs in a
/// new namespace and is enforced again there.
#[test]
fn restarted_container_is_enforced_in_its_new_namespace() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-policy", 42, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let agent = AgentProc::start(&["-k", &s.kv_path]);
    agent.wait_log("reconciling running containers");

    // Exits with 3 after a few seconds on its first run; runs for good on its second.
    let flaky = s.name("flaky");
    let mut args = vec!["--network", s.net.as_str(), "--restart", "on-failure:3"];
    args.extend_from_slice(&ENABLE_WEB);
    args.extend_from_slice(&[
        IMAGE,
        "sh",
        "-c",
        "if [ -e /ran-once ]; then exec sleep 3600; fi; touch /ran-once; sleep 4; exit 3",
    ]);
    run_container(&mut s.cleanup, &flaky, &args);
    let first = container_run(&flaky);
    wait_table(&flaky, "enforcement of the first run", |t| allows(t, 80));
    wait_for(
        "the restart policy to run the container again",
        Duration::from_secs(30),
        || (container_running(&flaky) && container_run(&flaky) != first).then_some(()),
    );
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.RestartCount}}", &flaky]),
        "1"
    );
    wait_table_for(
        &flaky,
        "enforcement after the policy restart",
        Duration::from_secs(30),
        |t| allows(t, 80),
    );
    s.expect(&flaky, &[80], &[8080]);

    // `docker restart`.
    let manual = s.client("manual", &ENABLE_WEB);
    wait_table(&manual, "enforcement", |t| allows(t, 80));
    let first = container_run(&manual);
    docker_ok(&["restart", "-t", "1", &manual]);
    assert_ne!(container_run(&manual), first, "not a new run");
    wait_table_for(
        &manual,
        "enforcement after docker restart",
        Duration::from_secs(30),
        |t| allows(t, 80),
    );
    s.expect(&manual, &[80], &[8080]);
    drop(agent);
}

fn nft_out(cmd: &str) -> String {
    let out = sh(&format!("nft {cmd}"));
    assert!(
        out.status.success(),
        "nft {cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `counter packets N bytes M` → `counter`: traffic moves counters, not rules.
fn without_counters(text: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut kept = Vec::new();
        let mut i = 0;
        while i < words.len() {
            kept.push(words[i]);
            if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
                i += 5;
            } else {
                i += 1;
            }
        }
        out.push(kept.join(" "));
    }
    out.join("\n")
}

/// The host namespace's firewall as far as egresstrator could ever touch it, stable against
/// other tests creating Docker networks: every table in full, except the iptables-nft tables
/// that Docker rewrites per network (ip/ip6 filter, nat, …), of which the chain names and the
/// OUTPUT chain (where an iptables backend would hook in) are kept.
fn host_firewall() -> String {
    let mut view = String::new();
    for line in nft_out("list tables").lines() {
        let mut w = line.split_whitespace().skip(1);
        let (Some(family), Some(name)) = (w.next(), w.next()) else {
            continue;
        };
        let listing = nft_out(&format!("list table {family} {name}"));
        let docker_managed =
            matches!(family, "ip" | "ip6") && matches!(name, "filter" | "nat" | "mangle" | "raw");
        if !docker_managed {
            view.push_str(&without_counters(&listing));
            view.push('\n');
            continue;
        }
        let chains: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.trim().strip_prefix("chain "))
            .map(|c| c.trim_end_matches(" {"))
            .collect();
        view.push_str(&format!("table {family} {name}: chains {chains:?}\n"));
        if chains.contains(&"OUTPUT") {
            let output = nft_out(&format!("list chain {family} {name} OUTPUT"));
            view.push_str(&without_counters(&output));
            view.push('\n');
        }
    }
    view
}

/// Removes a table of ours from the host namespace if a failing run left one there.
struct HostRepair;

impl Drop for HostRepair {
    fn drop(&mut self) {
        if sh("nft list table inet egresstrator").status.success() {
            eprintln!("REPAIR: removing table inet egresstrator from the host namespace");
            let _ = sh("nft delete table inet egresstrator");
        }
        let _ = sh("iptables -D OUTPUT -j EGRESSTRATOR-OUTPUT 2>/dev/null; \
             ip6tables -D OUTPUT -j EGRESSTRATOR-OUTPUT 2>/dev/null; true");
    }
}

/// An enabled container in the host's namespace is refused with a clear error,
/// whether it got there with `--network host` or by joining such a container, and the host's
/// ruleset is left exactly as it was; `set` on it fails the same way.
#[test]
fn host_network_container_is_refused_and_host_ruleset_untouched() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-host", 43, &[80], &[]);
    s.acl("web", &[80]);
    let before = host_firewall();
    assert!(
        !before.contains("egresstrator") && !before.contains("EGRESSTRATOR"),
        "the host already has an egresstrator table:\n{before}"
    );
    let _repair = HostRepair;
    let mut agent = AgentProc::start(&["-k", &s.kv_path]);
    agent.wait_log("reconciling running containers");

    let host = s.name("host");
    let mut args = vec!["--network", "host"];
    args.extend_from_slice(&ENABLE_WEB);
    args.extend_from_slice(&[IMAGE, "sleep", "3600"]);
    run_container(&mut s.cleanup, &host, &args);
    // Joined to the host-network container: the mode says `container:…`, the namespace is
    // still the host's.
    let joined = s.name("joined");
    let mode = format!("container:{host}");
    let mut args = vec!["--network", mode.as_str()];
    args.extend_from_slice(&[
        "--label",
        "egresstrator.enable=true",
        "--label",
        "egresstrator.acl=web",
    ]);
    args.extend_from_slice(&[IMAGE, "sleep", "3600"]);
    run_container(&mut s.cleanup, &joined, &args);

    for c in [&host, &joined] {
        wait_for(
            &format!("the agent to refuse {c}"),
            Duration::from_secs(20),
            || {
                agent
                    .log_text()
                    .lines()
                    .any(|l| {
                        l.contains("ERROR")
                            && l.contains(c.as_str())
                            && l.contains("shares the host's network namespace")
                    })
                    .then_some(())
            },
        );
    }
    // `set` refuses it too, with either backend.
    for backend in ["nft", "iptables"] {
        let state = agent.state_dir();
        let out = Command::new(bin())
            .args(["-k", &s.kv_path, "--backend", backend, "--state-dir"])
            .arg(&state)
            .args(["set", &host])
            .env("CONSUL_HTTP_ADDR", CONSUL)
            .output()
            .expect("spawn egresstrator");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "set on a host container succeeded: {err}"
        );
        assert!(err.contains("host"), "unclear error: {err}");
    }
    // Give any stray apply time to land before comparing.
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.is_running());
    let after = host_firewall();
    assert!(
        !after.contains("egresstrator") && !after.contains("EGRESSTRATOR"),
        "egresstrator wrote to the host namespace:\n{after}"
    );
    assert_eq!(before, after, "the host's firewall changed");
    drop(agent);
}

/// Containers sharing one namespace (`--network container:A`) get one ruleset,
/// the union of the enabled members' ACLs, reachable from either; when a member stops, the
/// ruleset shrinks to the remaining members'.
#[test]
fn shared_namespace_gets_union_and_shrinks_when_member_stops() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-shared", 44, &[80, 8080, 9090], &[]);
    s.acl("web", &[80]);
    s.acl("alt", &[8080]);
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    agent.wait_log("reconciling running containers");

    let a = s.client("a", &ENABLE_WEB);
    wait_table(&a, "A's ruleset", |t| allows(t, 80));
    let b = s.name("b");
    let mode = format!("container:{a}");
    run_container(
        &mut s.cleanup,
        &b,
        &[
            "--network",
            &mode,
            "--stop-timeout",
            "1",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=alt",
            IMAGE,
            "sleep",
            "3600",
        ],
    );
    wait_table(&a, "the union of web and alt", |t| {
        allows(t, 80) && allows(t, 8080)
    });
    assert_eq!(table(&a), table(&b), "one namespace, one table");
    for c in [&a, &b] {
        s.expect(c, &[80, 8080], &[9090]);
    }
    let b_id = container_id(&b);
    wait_for("B in /status", Duration::from_secs(20), || {
        status_of(port, &b_id)
    });

    docker_ok(&["stop", "-t", "1", &b]);
    wait_table(&a, "A's ruleset alone", |t| {
        allows(t, 80) && !allows(t, 8080)
    });
    s.expect(&a, &[80], &[8080, 9090]);
    wait_for("B to leave /status", Duration::from_secs(20), || {
        status_of(port, &b_id).is_none().then_some(())
    });
    drop(agent);
}

/// Changes ACL `web` and waits until the agent has re-planned every namespace for it: the
/// witness names `web` and has no override, so its table follows the change.
fn change_web(s: &Scene, witness: &str, ports: &[u16]) {
    s.acl("web", ports);
    wait_table(witness, "the witness to follow web", |t| {
        [80, 8080, 9090]
            .iter()
            .all(|p| allows(t, *p) == ports.contains(p))
    });
    // The namespaces are applied concurrently; give the others a moment.
    std::thread::sleep(Duration::from_millis(1500));
}

/// `set --rules` and `clear` on a running container hold against the running
/// agent, even when a KV change makes it re-plan everything; `set` without `--rules` returns
/// the container to its own ACLs, which the agent then keeps up to date; `set --rules` on a
/// container that is not enabled is honoured and kept up to date too.
#[test]
fn overrides_last_across_kv_changes() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-override", 45, &[80, 8080, 9090], &[]);
    s.acl("web", &[80]);
    s.acl("other", &[9090]);
    // Drift checks every 100 ms (the shortest allowed): one of them is bound to look between `set` loading its rules
    // and the agent's next read of the overrides; `set`'s rules must survive it.
    let agent = AgentProc::start(&["-k", &s.kv_path, "--verify-interval", "100ms"]);
    agent.wait_log("reconciling running containers");

    let witness = s.client("witness", &ENABLE_WEB);
    let c = s.client("c", &ENABLE_WEB);
    for x in [&witness, &c] {
        wait_table(x, "the own ACL", |t| allows(t, 80));
    }
    // set --rules holds across a KV change of the container's own ACL.
    cli_ok(
        &agent.state_dir(),
        &s.kv_path,
        &["set", &c, "--rules", "other"],
    );
    s.expect(&c, &[9090], &[80, 8080]);
    // `check` and `explain` tell what the agent enforces, the override included.
    let check = |state: &std::path::Path, port: u16| {
        cli_with(
            state,
            &s.kv_path,
            &["check", &c, &s.srv_ip, "tcp", &port.to_string()],
        )
    };
    let (code, out, err) = check(&agent.state_dir(), 9090);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("allowed by acl 'other'"), "{out}");
    assert!(err.contains("`set --rules other` holds"), "{err}");
    assert_eq!(check(&agent.state_dir(), 80).0, Some(1));
    let (_, nft, _) = cli_with(&agent.state_dir(), &s.kv_path, &["explain", &c]);
    assert!(nft.contains("acls other"), "{nft}");
    // Control: without the agent's state dir, the container's own ACL answers.
    let elsewhere = agent.state_dir().with_extension("no-overrides");
    assert_eq!(check(&elsewhere, 9090).0, Some(1));
    assert_eq!(check(&elsewhere, 80).0, Some(0));
    change_web(&s, &witness, &[80, 8080]);
    s.expect(&c, &[9090], &[80, 8080]);

    // clear holds too: no table comes back.
    cli_ok(&agent.state_dir(), &s.kv_path, &["clear", &c]);
    assert_eq!(table(&c), None);
    change_web(&s, &witness, &[80]);
    assert_eq!(table(&c), None, "the agent put the rules back after clear");
    s.expect(&c, &[80, 8080, 9090], &[]);
    let (code, out, _) = check(&agent.state_dir(), 8080);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("not enforced: `clear` took it out"), "{out}");
    let (code, nft, err) = cli_with(&agent.state_dir(), &s.kv_path, &["explain", &c]);
    assert_eq!((code, nft.as_str()), (Some(0), ""), "{err}");
    assert!(err.contains("not enforced"), "{err}");

    // set without --rules: back to its own ACLs, and the agent keeps them up to date.
    cli_ok(&agent.state_dir(), &s.kv_path, &["set", &c]);
    s.expect(&c, &[80], &[8080, 9090]);
    let (code, out, _) = check(&agent.state_dir(), 80);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("allowed by acl 'web'"), "{out}");
    change_web(&s, &witness, &[80, 8080]);
    wait_table(&c, "the container to follow its own ACL again", |t| {
        allows(t, 80) && allows(t, 8080)
    });
    s.expect(&c, &[80, 8080], &[9090]);

    // set --rules on a container that is not enabled: enforced, held across a KV change of
    // another ACL, and kept up to date with its override's ACL.
    let plain = s.client("plain", &[]);
    s.expect(&plain, &[80, 9090], &[]);
    cli_ok(
        &agent.state_dir(),
        &s.kv_path,
        &["set", &plain, "--rules", "other"],
    );
    s.expect(&plain, &[9090], &[80, 8080]);
    change_web(&s, &witness, &[80]);
    s.expect(&plain, &[9090], &[80, 8080]);
    s.acl("other", &[9090, 8080]);
    wait_table(&plain, "the override's ACL to be followed", |t| {
        allows(t, 8080) && allows(t, 9090)
    });
    s.expect(&plain, &[8080, 9090], &[80]);
    // What `set` and `clear` changed was theirs, not drift: nothing was "repaired" back.
    // (The drift warning's text; the drift module also logs other things.)
    assert!(
        !agent.log_text().contains("drift: egresstrator's rules"),
        "the agent took set/clear for drift:\n{}",
        agent.log_text()
    );
    drop(agent);
}

/// Labels enable a container and name its ACLs, and win over the environment:
/// `egresstrator.enable=false` beats `EGRESSTRATOR_ENABLE=1`, and `egresstrator.acl` beats
/// `EGRESSTRATOR_ACL`.
#[test]
fn labels_enable_and_win_over_env() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-labels", 46, &[80, 8080], &[]);
    s.acl("web", &[80]);
    s.acl("alt", &[8080]);
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    agent.wait_log("reconciling running containers");

    let labelled = s.client(
        "labelled",
        &[
            "--label",
            "egresstrator.enable=true",
            "--label",
            "egresstrator.acl=web",
        ],
    );
    wait_table(&labelled, "enforcement by labels", |t| allows(t, 80));
    s.expect(&labelled, &[80], &[8080]);

    let off = s.client(
        "label-off",
        &[
            "--label",
            "egresstrator.enable=false",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    // Wait until the agent has looked at it and decided.
    wait_for(
        "the agent to decide about the label-off container",
        Duration::from_secs(20),
        || {
            agent
                .log_text()
                .lines()
                .any(|l| l.contains("not enabled") && l.contains(off.as_str()))
                .then_some(())
        },
    );
    assert_eq!(table(&off), None);
    s.expect(&off, &[80, 8080], &[]);

    let both = s.client(
        "label-acl",
        &[
            "--label",
            "egresstrator.enable=true",
            "--label",
            "egresstrator.acl=web",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=alt",
        ],
    );
    wait_table(&both, "enforcement by labels", |t| allows(t, 80));
    assert!(!allows(table(&both).as_deref(), 8080));
    s.expect(&both, &[80], &[8080]);
    let id = container_id(&both);
    let st = wait_for("the container in /status", Duration::from_secs(20), || {
        status_of(port, &id)
    });
    assert_eq!(st["acls"], serde_json::json!(["web"]), "{st}");
    drop(agent);
}

/// State for containers that died or were removed is dropped: `/status` forgets
/// them, and so does the overrides file under the state dir.
#[test]
fn status_and_overrides_forget_removed_containers() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-forget", 47, &[80], &[]);
    s.acl("web", &[80]);
    let removed = s.client("removed", &ENABLE_WEB);
    let stopped = s.client("stopped", &ENABLE_WEB);
    let overridden = s.client("overridden", &[]);
    let ids: Vec<String> = [&removed, &stopped, &overridden]
        .iter()
        .map(|c| container_id(c))
        .collect();
    // Recorded before the agent starts, so that its startup pass picks it up.
    cli_ok(
        &s.state_dir(),
        &s.kv_path,
        &["set", &overridden, "--rules", "web"],
    );
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    for id in &ids {
        let st = wait_for("the container in /status", Duration::from_secs(20), || {
            status_of(port, id)
        });
        assert_eq!(st["fail_closed"], false, "{st}");
        assert!(st["error"].is_null(), "{st}");
        assert!(st["hash"].as_str().is_some_and(|h| !h.is_empty()), "{st}");
        assert!(
            st["applied_at_unix_nano"].as_i64().is_some_and(|t| t > 0),
            "{st}"
        );
    }
    let overrides = agent.state_dir().join("overrides.json");
    let text = std::fs::read_to_string(&overrides).expect("overrides.json");
    assert!(text.contains(&ids[2]), "{text}");

    docker_ok(&["rm", "-f", &removed]);
    docker_ok(&["stop", "-t", "1", &stopped]);
    docker_ok(&["rm", "-f", &overridden]);
    for id in &ids {
        wait_for(
            &format!("{} to leave /status", &id[..12]),
            Duration::from_secs(20),
            || status_of(port, id).is_none().then_some(()),
        );
    }
    wait_for(
        "the removed container's override to be dropped",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&overrides).unwrap_or_default();
            (!text.contains(&ids[2])).then_some(())
        },
    );
    assert!(status(port).is_some(), "the agent stopped answering");
    drop(agent);
}

/// Creates and removes throwaway containers (not enabled) on `net` from two threads until
/// dropped: a busy host, where Docker events arrive all the time.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

impl Churn {
    fn start(net: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = stop.clone();
                let net = net.to_owned();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Cheap: no namespace, just a `destroy` event for every agent.
                        let out = docker(&["create", "--network", &net, IMAGE, "true"]);
                        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                        if !id.is_empty() {
                            let _ = docker(&["rm", "-f", &id]);
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        Churn { stop, threads }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Issue 5.5 on a busy host: while other containers start and stop, every `set --rules` on a
/// container that is not enabled is picked up by the running agent (it lists the container
/// in /status), and every `clear` holds across a later KV change.
#[test]
fn overrides_are_not_lost_while_other_containers_come_and_go() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-churn", 48, &[80, 9090], &[]);
    s.acl("web", &[80]);
    s.acl("other", &[9090]);
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    agent.wait_log("reconciling running containers");
    let witness = s.client("witness", &ENABLE_WEB);
    const ROUNDS: usize = 8;
    let plain: Vec<String> = (0..ROUNDS)
        .map(|i| s.client(&format!("plain{i}"), &[]))
        .collect();
    let enabled: Vec<String> = (0..ROUNDS)
        .map(|i| s.client(&format!("enabled{i}"), &ENABLE_WEB))
        .collect();
    for c in enabled.iter().chain([&witness]) {
        wait_table(c, "the own ACL", |t| allows(t, 80));
    }

    let churn = Churn::start(&s.net);
    let mut untracked = Vec::new();
    for (p, e) in plain.iter().zip(&enabled) {
        cli_ok(
            &agent.state_dir(),
            &s.kv_path,
            &["set", p, "--rules", "other"],
        );
        cli_ok(&agent.state_dir(), &s.kv_path, &["clear", e]);
        let id = container_id(p);
        let deadline = Instant::now() + Duration::from_secs(3);
        while status_of(port, &id).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if status_of(port, &id).is_none() {
            untracked.push(p.clone());
        }
    }
    drop(churn);
    change_web(&s, &witness, &[80, 9090]);
    let put_back: Vec<&String> = enabled.iter().filter(|e| table(e).is_some()).collect();
    assert!(
        untracked.is_empty() && put_back.is_empty(),
        "overrides lost while other containers came and went: the agent never picked up \
         `set --rules` for {untracked:?}, and put rules back after `clear` on {put_back:?}"
    );
    drop(agent);
}

/// An agent whose mount namespace does not receive dockerd's namespace mounts (a bind mount
/// of /var/run/docker without rslave propagation, a unit with private mounts on a host whose
/// / is not shared) still enforces containers started after it. Their sandbox key is an empty
/// file there, which the agent took for "exited" and so left the container unenforced; it now
/// enters them through /proc/<pid>/ns/net and says why once. Found by booting the Debian
/// package under systemd in a container (scripts/systemd-test.sh).
#[test]
fn agent_that_does_not_see_dockerds_netns_mounts_still_enforces() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("lc-mountns", 49, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let agent = AgentProc::start_under(
        &["unshare", "--mount", "--propagation", "private"],
        &["-k", &s.kv_path],
    );
    agent.wait_log("reconciling running containers");

    let late = s.client("late", &ENABLE_WEB);
    // The premise: the sandbox key is a namespace here, and not in the agent's mount
    // namespace (else this test would not test anything).
    let key = docker_ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", &late]);
    let fs_type = |prefix: &str| {
        let out = sh(&format!("{prefix} stat -f -c %T {key}"));
        assert!(out.status.success(), "stat {key}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(fs_type(""), "nsfs", "{key} on the host");
    let there = fs_type(&format!("nsenter -t {} -m", agent.pid()));
    assert_ne!(there, "nsfs", "{key} in the agent's mount namespace");

    wait_table(&late, "enforcement through /proc/<pid>/ns/net", |t| {
        allows(t, 80)
    });
    s.expect(&late, &[80], &[8080]);
    agent.wait_log("holds no network namespace here, though its container runs");
}

/// Two agents on one Docker daemon would each take the other's ruleset for drift and load
/// their own again at every drift check, each container's rules flipping between their
/// policies. A second agent, with its own state dir and kv-path, refuses to start while the
/// first runs, and says which pid holds the lock; the first keeps its policy in force. The
/// control: once the first is gone, the same command starts and loads its own policy into
/// the container, so the refusal is what kept it out.
#[test]
fn a_second_agent_on_the_same_docker_daemon_refuses_to_start() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("lc-second", 50, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let other_kv = format!("{}/other/acl/", s.tag);
    kv_put(
        &format!("{other_kv}web"),
        &format!("{}:tcp/8080\n", s.srv_ip),
    );
    let c = s.client("c", &ENABLE_WEB);

    let mut first = AgentProc::start(&["-k", &s.kv_path]);
    wait_table(&c, "the first agent's policy", |t| allows(t, 80));
    s.expect(&c, &[80], &[8080]);

    let mut second = AgentProc::start(&["-k", &other_kv]);
    let status = wait_for("the second agent to exit", Duration::from_secs(20), || {
        second.exited()
    });
    assert!(!status.success(), "second agent: {status:?}");
    let log = second.log_text();
    assert!(
        log.contains(&format!("another egresstrator agent (pid {})", first.pid()))
            && log.contains("enforces on the Docker daemon at unix://"),
        "the second agent's log should name the first one's pid:\n{log}"
    );
    assert!(
        !log.contains("container enforced"),
        "the second agent loaded a ruleset before it exited:\n{log}"
    );
    assert!(first.is_running(), "the first agent must be unaffected");
    // Still the first agent's policy: the second one loaded nothing before it exited.
    s.expect(&c, &[80], &[8080]);
    assert!(
        !first.log_text().contains("drift:") && !first.log_text().contains("unconfirmed"),
        "the first agent saw its table changed:\n{}",
        first.log_text()
    );

    // Control: with the first one gone, the same command starts and enforces its policy.
    first.kill9();
    let mut second = AgentProc::start(&["-k", &other_kv]);
    wait_table(&c, "the second agent's policy", |t| allows(t, 8080));
    s.expect(&c, &[8080], &[80]);
    assert!(second.is_running(), "{}", second.log_text());
}
