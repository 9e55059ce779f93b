//! Tamper-proof enforcement: the workload inside an enabled container is the adversary. Each
//! attack is done for real (a raw frame actually sent, a file actually rewritten, a table
//! actually deleted), with a control that shows the same attack works where egresstrator
//! does not enforce, so the test could fail.

use std::time::{Duration, Instant};

use egresstrator::guard;

use crate::common::*;
use crate::shim::{Runtimes, ShimConfig};

/// The agent's start-up self-test: in a namespace of its own, raw frames sent through
/// AF_PACKET on `lo` (raw and cooked, with and without PACKET_QDISC_BYPASS) are dropped by the
/// guard while ordinary datagrams arrive; before the guard, a raw frame arrives (the control
/// inside the self-test).
#[test]
fn guard_self_test_holds_on_this_kernel() {
    if !root_or_fail("guard_self_test_holds_on_this_kernel") {
        return;
    }
    assert_eq!(guard::self_test(), guard::Support::Verified);
}

/// The guard table in a container's namespace, or None.
fn guard_table(name: &str) -> Option<String> {
    let pid = container_pid(name);
    let out = sh(&format!(
        "nsenter --net=/proc/{pid}/ns/net nft list table netdev egresstrator"
    ));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A UDP sink container (`udpsink`) at `ip` on `net`, printing every datagram it gets.
fn sink(cleanup: &mut Cleanup, name: &str, net: &str, ip_flag: &str, ip: &str, six: bool) {
    let _ = docker(&["rm", "-f", name]);
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        ip_flag,
        ip,
        IMAGE,
    ];
    if six {
        args.extend(["udpsink", "-6", "9999", "3600"]);
    } else {
        args.extend(["udpsink", "9999", "3600"]);
    }
    docker_ok(&args);
    cleanup.containers.push(name.to_owned());
}

/// What a sink has printed so far.
fn received(sink: &str) -> String {
    String::from_utf8_lossy(&docker(&["logs", sink]).stdout).into_owned()
}

/// Sends one datagram to the sink through an AF_PACKET socket from inside `from`, in each of
/// the four ways (SOCK_RAW or SOCK_DGRAM, with or without PACKET_QDISC_BYPASS), each with its
/// own payload; returns the payloads.
fn raw_attack(from: &str, iface: &str, dst: &str, six: bool, tag: &str) -> Vec<String> {
    let mut sent = Vec::new();
    for flags in [&[][..], &["-d"][..], &["-b"][..], &["-d", "-b"][..]] {
        let payload = format!("{tag}{}", flags.concat());
        let mut args = vec!["exec", from, "rawsend", "-n", "3"];
        if six {
            args.push("-6");
        }
        args.extend_from_slice(flags);
        args.extend([iface, dst, "9999", &payload]);
        // Exit status 1 with "No buffer space available" is the guard dropping the frame;
        // the sink is the judge either way.
        let _ = docker(&args);
        sent.push(payload);
    }
    sent
}

/// Asserts that none (or, for the control, all) of `payloads` reached the sink.
fn expect_sink(sink: &str, payloads: &[String], arrive: bool, what: &str) {
    // Datagrams take microseconds; give the sink's output a moment to reach its log.
    let deadline = Instant::now() + Duration::from_secs(if arrive { 5 } else { 1 });
    loop {
        let got = received(sink);
        let lines: Vec<&str> = got.lines().collect();
        let arrived: Vec<&String> = payloads
            .iter()
            .filter(|p| lines.contains(&p.as_str()))
            .collect();
        if arrive && arrived.len() == payloads.len() {
            return;
        }
        if Instant::now() > deadline {
            if arrive {
                panic!("{what}: the control's raw frames did not all arrive ({arrived:?} of {payloads:?}); the test cannot tell a drop from a broken sender. Sink printed:\n{got}");
            }
            assert!(
                arrived.is_empty(),
                "{what}: raw frames got past the firewall: {arrived:?}. Sink printed:\n{got}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Raw sockets: an enabled container (with Docker's default CAP_NET_RAW) sends UDP through
/// AF_PACKET to a port its ACLs deny, over IPv4 and IPv6, in all four ways, and later through
/// a second interface added with `docker network connect`. The sink must print nothing from
/// it. The same frames from a container that is not enabled must arrive: the control.
/// Both backends (the guard is nft even when the policy is iptables).
#[test]
fn raw_frames_never_leave_an_enabled_container() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    for (backend, octet) in [("nft", 100u8), ("iptables", 101u8)] {
        raw_frames_scenario(backend, octet);
    }
}

fn raw_frames_scenario(backend: &str, octet: u8) {
    let mut cleanup = Cleanup::new();
    let tag = unique(&format!("raw-{backend}"));
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    // A dual-stack network and a second, IPv4 one to connect later.
    let net = format!("{tag}-net");
    let net2 = format!("{tag}-net2");
    for n in [&net, &net2] {
        let _ = docker(&["network", "rm", n]);
    }
    docker_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        &format!("10.231.{octet}.0/24"),
        "--subnet",
        &format!("fd00:231:{octet}::/64"),
        &net,
    ]);
    cleanup.networks.push(net.clone());
    network(&mut cleanup, &net2, &format!("10.231.{}", octet + 10));
    let sink4 = format!("{tag}-sink");
    let sink4_ip = format!("10.231.{octet}.11");
    sink(&mut cleanup, &sink4, &net, "--ip", &sink4_ip, false);
    let sink6 = format!("{tag}-sink6");
    let sink6_ip = format!("fd00:231:{octet}::12");
    sink(&mut cleanup, &sink6, &net, "--ip6", &sink6_ip, true);
    let sink2 = format!("{tag}-sink2");
    let sink2_ip = format!("10.231.{}.11", octet + 10);
    sink(&mut cleanup, &sink2, &net2, "--ip", &sink2_ip, false);
    // The ACL allows TCP to the sink only, never UDP 9999.
    kv_put(&format!("{kv_path}web"), &format!("{sink4_ip}:tcp/80"));

    let agent = AgentProc::start(&["-k", &kv_path, "--backend", backend]);
    agent.wait_log("raw-socket guard verified");
    let plain = format!("{tag}-plain");
    client(&mut cleanup, &plain, &net, &[]);
    let enabled = format!("{tag}-enabled");
    client(
        &mut cleanup,
        &enabled,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    wait_for("the guard on eth0", Duration::from_secs(20), || {
        guard_table(&enabled)
            .is_some_and(|t| t.contains("devices = { eth0, lo }"))
            .then_some(())
    });
    assert_eq!(guard_table(&plain), None, "no guard without enforcement");

    // Control: the attack works where egresstrator does not enforce.
    let sent = raw_attack(&plain, "eth0", &sink4_ip, false, "plain4");
    expect_sink(&sink4, &sent, true, "IPv4 control");
    let sent = raw_attack(&plain, "eth0", &sink6_ip, true, "plain6");
    expect_sink(&sink6, &sent, true, "IPv6 control");
    // The attack from the enabled container.
    let sent = raw_attack(&enabled, "eth0", &sink4_ip, false, "enabled4");
    expect_sink(
        &sink4,
        &sent,
        false,
        &format!("{backend}: IPv4 through eth0"),
    );
    let sent = raw_attack(&enabled, "eth0", &sink6_ip, true, "enabled6");
    expect_sink(
        &sink6,
        &sent,
        false,
        &format!("{backend}: IPv6 through eth0"),
    );
    // Through lo: received by the namespace itself and forwarded out of eth0 (ip_forward is
    // on in containers), past the output hook.
    let sent = raw_attack(&enabled, "lo", &sink4_ip, false, "enabledlo");
    expect_sink(&sink4, &sent, false, &format!("{backend}: IPv4 through lo"));

    // A second interface, added while the container runs.
    docker_ok(&["network", "connect", &net2, &plain]);
    docker_ok(&["network", "connect", &net2, &enabled]);
    wait_for("the guard on eth1", Duration::from_secs(20), || {
        guard_table(&enabled)
            .is_some_and(|t| t.contains("devices = { eth0, eth1, lo }"))
            .then_some(())
    });
    let sent = raw_attack(&plain, "eth1", &sink2_ip, false, "plain-eth1-");
    expect_sink(&sink2, &sent, true, "control through eth1");
    let sent = raw_attack(&enabled, "eth1", &sink2_ip, false, "enabled-eth1-");
    expect_sink(&sink2, &sent, false, &format!("{backend}: through eth1"));
    drop(agent);
}

/// DNS is allowed only to resolvers the container's creator or the daemon chose: root in the
/// container rewrites its resolv.conf (bind-mounted read-write) to name a listener of its
/// choosing, and the agent is restarted so it looks again. TCP port 53 to that listener stays
/// refused. Control: a container that is not enabled reaches it.
#[test]
fn resolv_conf_written_by_the_workload_opens_nothing() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("resolv", 102, &[80], &[]);
    let tunnel_ip = "10.231.102.53";
    let tunnel = s.name("tunnel");
    let _ = docker(&["rm", "-f", &tunnel]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &tunnel,
        "--network",
        &s.net,
        "--ip",
        tunnel_ip,
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /w && echo tunnel > /w/index.html && exec httpd -f -p 53 -h /w",
    ]);
    s.cleanup.containers.push(tunnel.clone());
    wait_serving(&tunnel, &[53]);
    s.acl("web", &[80]);
    let state = s.state_dir();
    let state = state.to_str().expect("utf-8 path");
    let agent = AgentProc::start_with(std::path::Path::new(state), "off", &["-k", &s.kv_path]);
    let c = s.client(
        "c",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    wait_table(&c, "enforcement", |t| {
        t.is_some_and(|t| t.contains("allowlist"))
    });
    docker_ok(&[
        "exec",
        &c,
        "sh",
        "-c",
        &format!("echo nameserver {tunnel_ip} > /etc/resolv.conf"),
    ]);
    assert!(docker_ok(&["exec", &c, "cat", "/etc/resolv.conf"]).contains(tunnel_ip));
    drop(agent);
    let agent = AgentProc::start_with(std::path::Path::new(state), "off", &["-k", &s.kv_path]);
    agent.wait_log("container enforced");
    let t = table(&c).unwrap_or_default();
    assert!(
        !t.contains(tunnel_ip),
        "the rewritten resolver is in the table:\n{t}"
    );
    assert_eq!(fetch(&c, tunnel_ip, 53), Fetch::Refused, "table:\n{t}");
    // Control: the listener answers a container that is not enforced.
    let plain = s.client("plain", &[]);
    assert_eq!(fetch(&plain, tunnel_ip, 53), Fetch::Body("tunnel".into()));
    // The embedded resolver, which the daemon chose, still works.
    s.expect(&c, &[80], &[]);
    drop(agent);
}

/// Containers that can change their own firewall are never silently "enforced": under the
/// runtime shim an enabled container with `--cap-add NET_ADMIN` is refused with a message
/// that says why (and starts when runc.conf allows it); under the event path it is enforced
/// and shown as bypassable in /status and /metrics. Control: without the capability the same
/// start succeeds and nothing is bypassable.
#[test]
fn containers_that_can_change_their_firewall_are_refused_or_shown() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("capadmin", 103, &[80], &[]);
    s.acl("web", &[80]);
    let socket = std::env::temp_dir().join(format!("{}.sock", s.tag));
    let socket_s = socket.display().to_string();
    let config = ShimConfig::write(&format!("socket = {socket_s}\ntimeout-ms = 2000\n"));
    let _runtimes = Runtimes::install(&[("egt-shim-cap", Vec::new())]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &listen,
        &["-k", &s.kv_path, "--hook-socket", &socket_s],
    );
    agent.wait_log("reconciling running containers");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--rm",
            "--runtime",
            "egt-shim-cap",
            "--network",
            &s.net,
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ];
        args.extend_from_slice(extra);
        args.extend([IMAGE, "echo", "started"]);
        docker(&args)
    };
    let ok = run(&[]);
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "started",
        "{ok:?}"
    );
    for extra in [&["--cap-add", "NET_ADMIN"][..], &["--privileged"][..]] {
        let refused = run(extra);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "{extra:?} must be refused: {refused:?}"
        );
        assert!(
            err.contains("could change or remove its own firewall")
                && (err.contains("CAP_NET_ADMIN") || err.contains("CAP_SYS_ADMIN")),
            "docker run's error says why: {err}"
        );
    }
    config.replace(&format!(
        "socket = {socket_s}\ntimeout-ms = 2000\nallow-bypassable = true\n"
    ));
    let allowed = run(&["--cap-add", "NET_ADMIN"]);
    assert_eq!(
        String::from_utf8_lossy(&allowed.stdout).trim(),
        "started",
        "allow-bypassable lets it start: {allowed:?}"
    );

    // The event path: enforced, and shown as bypassable.
    let admin = s.client(
        "admin",
        &[
            "--cap-add",
            "NET_ADMIN",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    let plain = s.client(
        "plain",
        &[
            "--cap-drop",
            "NET_RAW",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    let admin_id = container_id(&admin);
    let plain_id = container_id(&plain);
    let entry = wait_for(
        "the bypassable container in /status",
        Duration::from_secs(20),
        || status_of(port, &admin_id).filter(|e| e.get("bypassable").is_some()),
    );
    assert!(
        entry["bypassable"]
            .as_str()
            .unwrap_or("")
            .contains("NET_ADMIN"),
        "{entry}"
    );
    let p = wait_for(
        "the plain container in /status",
        Duration::from_secs(20),
        || status_of(port, &plain_id),
    );
    assert!(p.get("bypassable").is_none(), "{p}");
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("egresstrator_containers_bypassable 1\n"),
        "{metrics}"
    );
    assert!(agent
        .log_text()
        .contains("bypassable: it holds CAP_NET_ADMIN"));
    s.expect(&admin, &[80], &[]);
    drop(agent);
}

/// AF_XDP: a socket in copy mode transmits through the kernel's direct transmit path, which
/// runs no netfilter hook, so the raw-socket guard cannot see its frames (measured on 6.18).
/// It needs CAP_NET_RAW. So: under the runtime shim an enabled container loses NET_RAW and
/// cannot open the socket, and the sink gets nothing (control: a container that is not
/// enabled, under the same runtime, keeps NET_RAW and its frame arrives); on the event path
/// an enabled container that holds NET_RAW is reported bypassable, and the report is true
/// (its frame arrives); one started with `--cap-drop NET_RAW` is not.
#[test]
fn af_xdp_is_closed_by_dropping_net_raw_and_reported_where_it_is_held() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("xdp", 108, &[80], &[]);
    s.acl("web", &[80]);
    let sink_name = s.name("sink");
    let sink_ip = "10.231.108.11";
    let net = s.net.clone();
    sink(&mut s.cleanup, &sink_name, &net, "--ip", sink_ip, false);
    let socket = std::env::temp_dir().join(format!("{}.sock", s.tag));
    let socket_s = socket.display().to_string();
    let _config = ShimConfig::write(&format!("socket = {socket_s}\ntimeout-ms = 2000\n"));
    let _runtimes = Runtimes::install(&[("egt-shim-xdp", Vec::new())]);
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path, "--hook-socket", &socket_s],
    );
    agent.wait_log("reconciling running containers");
    let enable = ["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"];
    let xdp = |from: &str, payload: &str| {
        let ip = docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            from,
        ]);
        docker(&[
            "exec", from, "xdpsend", "eth0", &ip, sink_ip, "9999", payload,
        ])
    };
    let net_raw = |name: &str| {
        let bnd = docker_ok(&["exec", name, "grep", "CapBnd", "/proc/1/status"]);
        let mask = u64::from_str_radix(bnd.trim_start_matches("CapBnd:").trim(), 16).unwrap();
        mask & (1 << 13) != 0
    };

    // Under the shim. The attack runs as the workload itself (its init's descendants): a
    // `docker exec` process gets the capabilities dockerd gives execs, NET_RAW included.
    let plain = s.client("plain", &["--runtime", "egt-shim-xdp"]);
    let shimmed = s.name("shimmed");
    let shimmed_ip = "10.231.108.20";
    let attack = format!(
        "xdpsend eth0 {shimmed_ip} {sink_ip} 9999 xdp-shimmed; echo xdp-rc=$?; \
         rawsend eth0 {sink_ip} 9999 raw-shimmed; echo raw-rc=$?; exec sleep 3600"
    );
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &shimmed,
        "--network",
        &net,
        "--ip",
        shimmed_ip,
        "--runtime",
        "egt-shim-xdp",
    ];
    args.extend(enable);
    args.extend([IMAGE, "sh", "-c", &attack]);
    docker_ok(&args);
    s.cleanup.containers.push(shimmed.clone());
    assert!(
        net_raw(&plain),
        "control: a container that is not enabled keeps NET_RAW"
    );
    assert!(
        !net_raw(&shimmed),
        "the shim drops NET_RAW from an enabled container"
    );
    let out = xdp(&plain, "xdp-plain");
    assert!(out.status.success(), "control: {out:?}");
    expect_sink(
        &sink_name,
        &["xdp-plain".to_owned()],
        true,
        "AF_XDP control",
    );
    let log = wait_for("the workload's attack", Duration::from_secs(10), || {
        let out = docker(&["logs", &shimmed]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.contains("raw-rc=").then_some(text)
    });
    assert!(
        log.contains("FAIL socket(AF_XDP)") && log.contains("xdp-rc=1"),
        "without NET_RAW the workload cannot open an AF_XDP socket: {log}"
    );
    assert!(log.contains("raw-rc=1"), "nor an AF_PACKET one: {log}");
    expect_sink(
        &sink_name,
        &["xdp-shimmed".to_owned(), "raw-shimmed".to_owned()],
        false,
        "the enabled workload under the shim",
    );
    let shimmed_id = container_id(&shimmed);
    let entry = wait_for(
        "the shimmed container in /status",
        Duration::from_secs(20),
        || status_of(port, &shimmed_id),
    );
    assert!(entry.get("bypassable").is_none(), "{entry}");
    s.expect(&shimmed, &[80], &[]);

    // The event path.
    let held = s.client("held", &enable);
    let dropped = s.client(
        "dropped",
        &[&["--cap-drop", "NET_RAW"][..], &enable[..]].concat(),
    );
    let held_id = container_id(&held);
    let dropped_id = container_id(&dropped);
    let entry = wait_for(
        "the NET_RAW container in /status",
        Duration::from_secs(20),
        || status_of(port, &held_id).filter(|e| e.get("bypassable").is_some()),
    );
    assert!(
        entry["bypassable"]
            .as_str()
            .unwrap_or("")
            .contains("AF_XDP"),
        "{entry}"
    );
    let out = xdp(&held, "xdp-held");
    assert!(out.status.success(), "{out:?}");
    expect_sink(
        &sink_name,
        &["xdp-held".to_owned()],
        true,
        "the bypass the report names is real",
    );
    let entry = wait_for(
        "the NET_RAW-less container in /status",
        Duration::from_secs(20),
        || status_of(port, &dropped_id),
    );
    assert!(entry.get("bypassable").is_none(), "{entry}");
    drop(agent);
}

/// Drift is repaired: with `--verify-interval 1s`, deleting the policy table from outside
/// (as a workload holding NET_ADMIN could) opens the denied port — the control — and within
/// the interval the agent notices, loads it again, logs and counts it. The same for the
/// guard table, and for the iptables backend's chain.
#[test]
fn deleted_rules_are_restored_within_the_verify_interval() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    for (backend, octet) in [("nft", 104u8), ("iptables", 105u8)] {
        let mut s = Scene::new(&format!("drift-{backend}"), octet, &[80, 8080], &[]);
        s.acl("web", &[80]);
        let port = free_port();
        let agent = AgentProc::start_with(
            &s.state_dir(),
            &format!("127.0.0.1:{port}"),
            &[
                "-k",
                &s.kv_path,
                "--verify-interval",
                "1s",
                "--backend",
                backend,
            ],
        );
        let c = s.client(
            "c",
            &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
        );
        wait_for("enforcement", Duration::from_secs(20), || {
            (fetch(&c, &s.srv_ip, 8080) == Fetch::Refused).then_some(())
        });
        let pid = container_pid(&c);
        let attack = match backend {
            "nft" => "nft delete table inet egresstrator",
            _ => "iptables -F EGRESSTRATOR-OUTPUT",
        };
        // Once the agent has its fingerprint (right after the load), the attack, and at once
        // the control from inside the namespace: the deletion opens the denied port. (Not
        // with `docker exec`: its exec event makes the agent check at once and repair first.)
        // A check that happens to fall between the two commands repairs before the control
        // connects; then the attack is tried again.
        std::thread::sleep(Duration::from_millis(1500));
        let mut opened = None;
        for _ in 0..5 {
            let out = sh(&format!(
                "nsenter --net=/proc/{pid}/ns/net bash -c '{attack} && timeout 2 bash -c \"exec 3<>/dev/tcp/{}/8080\" && echo opened'",
                s.srv_ip
            ));
            if String::from_utf8_lossy(&out.stdout).trim() == "opened" {
                opened = Some(Instant::now());
                break;
            }
            eprintln!("{backend}: control did not open ({out:?}); trying again");
            std::thread::sleep(Duration::from_millis(1500));
        }
        let opened = opened.expect("control: deleting the rules opens the denied port");
        wait_for("the rules back", Duration::from_secs(10), || {
            (fetch(&c, &s.srv_ip, 8080) == Fetch::Refused).then_some(())
        });
        eprintln!(
            "{backend}: rules back {:?} after the deletion",
            opened.elapsed()
        );
        s.expect(&c, &[80], &[8080]);
        // The guard.
        let out = sh(&format!(
            "nsenter --net=/proc/{pid}/ns/net nft delete table netdev egresstrator"
        ));
        assert!(out.status.success(), "{out:?}");
        wait_for("the guard back", Duration::from_secs(10), || {
            guard_table(&c).map(|_| ())
        });
        assert!(agent.log_text().contains("drift: egresstrator's rules"));
        let metrics = http_get(port, "/metrics").unwrap_or_default();
        let repairs = metrics
            .lines()
            .find_map(|l| l.strip_prefix("egresstrator_drift_repairs_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(repairs >= 2.0, "two repairs counted: {metrics}");
        drop(agent);
    }
}

/// Under the shim, a container enabled by labels alone is enforced before its first
/// instruction: the shim reads its labels from dockerd's record, the agent from the same
/// record (inspect would wait for the start the hook is part of).
#[test]
fn label_enabled_container_is_enforced_before_its_first_instruction() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let s = Scene::new("shimlabel", 106, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let socket = std::env::temp_dir().join(format!("{}.sock", s.tag));
    let socket_s = socket.display().to_string();
    let _config = ShimConfig::write(&format!(
        "socket = {socket_s}\ntimeout-ms = 2000\nblock = true\n"
    ));
    let _runtimes = Runtimes::install(&[("egt-shim-label", Vec::new())]);
    let agent = AgentProc::start(&["-k", &s.kv_path, "--hook-socket", &socket_s]);
    agent.wait_log("reconciling running containers");
    let first = |port: u16| {
        let cmd = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} {port}",
            s.srv_ip
        );
        docker(&[
            "run",
            "--rm",
            "--runtime",
            "egt-shim-label",
            "--network",
            &s.net,
            "--label",
            "egresstrator.enable=true",
            "--label",
            "egresstrator.acl=web",
            IMAGE,
            "sh",
            "-c",
            &cmd,
        ])
    };
    for _ in 0..3 {
        let out = first(8080);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Connection refused") && !text.contains("port8080"),
            "first instruction to a denied port: {out:?}"
        );
        let out = first(80);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("port80"),
            "first instruction to an allowed port: {out:?}"
        );
    }
    // Labels win over the environment: a label that says false leaves it alone.
    let cmd = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} 8080",
        s.srv_ip
    );
    let off = docker(&[
        "run",
        "--rm",
        "--runtime",
        "egt-shim-label",
        "--network",
        &s.net,
        "--label",
        "egresstrator.enable=false",
        "-e",
        "EGRESSTRATOR_ENABLE=1",
        IMAGE,
        "sh",
        "-c",
        &cmd,
    ]);
    assert!(
        String::from_utf8_lossy(&off.stdout).contains("port8080"),
        "{off:?}"
    );
    drop(agent);
}

/// Namespace identity cannot be confused: under the shim, an enabled container whose
/// command does not exist fails after the hook ran and the agent committed, and stays
/// "Created" with no start or die event. Its namespace's inode number is then handed to the
/// next namespaces; keyed by inode, the agent believed those enforced and loaded nothing
/// (seen: 20 of 20 unpoliced). Keyed by the never-reused cookie, each of 20 enabled starts
/// that follow holds its table and refuses a denied port.
#[test]
fn failed_create_does_not_leave_later_containers_unenforced() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("shimfail", 107, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let socket = std::env::temp_dir().join(format!("{}.sock", s.tag));
    let socket_s = socket.display().to_string();
    let _config = ShimConfig::write(&format!("socket = {socket_s}\ntimeout-ms = 2000\n"));
    let _runtimes = Runtimes::install(&[("egt-shim-fail", Vec::new())]);
    let agent = AgentProc::start(&["-k", &s.kv_path, "--hook-socket", &socket_s]);
    agent.wait_log("reconciling running containers");
    let enabled = ["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"];
    let failed = s.name("failed");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &failed,
        "--runtime",
        "egt-shim-fail",
        "--network",
        &s.net,
    ];
    args.extend(enabled);
    args.extend([IMAGE, "/no/such/command"]);
    let out = docker(&args);
    s.cleanup.containers.push(failed.clone());
    assert!(
        !out.status.success(),
        "a missing command fails the start: {out:?}"
    );
    let state = docker_ok(&["inspect", "-f", "{{.State.Status}}", &failed]);
    assert_eq!(state, "created", "the failed container stays created");
    for i in 0..20 {
        let name = s.name(&format!("n{i}"));
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            "egt-shim-fail",
            "--network",
            &s.net,
        ];
        args.extend(enabled);
        args.extend([IMAGE, "sleep", "600"]);
        docker_ok(&args);
        s.cleanup.containers.push(name.clone());
        let t = table(&name);
        assert!(
            t.as_deref()
                .is_some_and(|t| t.contains("egresstrator allowlist")),
            "start {i}: no table right after the start: {t:?}"
        );
        assert_eq!(fetch(&name, &s.srv_ip, 8080), Fetch::Refused, "start {i}");
        let _ = docker(&["rm", "-f", &name]);
    }
    drop(agent);
}
