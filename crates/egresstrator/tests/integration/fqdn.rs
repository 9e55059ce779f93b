//! Name destinations (`api.fqdn.test:tcp/80`), end to end: the test's own DNS server
//! (`dns_server.rs`, on the test network's gateway; no outside DNS) answers, the container
//! resolves through Docker's embedded server (which forwards from inside the container's
//! namespace), and real connections to the answered addresses are allowed or refused.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::common::*;
use crate::dns_server::{Answer, DnsServer};

/// Resolves `name` inside `container` with busybox's nslookup (through the container's
/// resolv.conf) and connects to the first IPv4 address right away, in the same shell.
/// Returns what `nc` printed last (the body) or the error.
fn lookup_and_fetch(container: &str, name: &str) -> String {
    let script = format!(
        "ip=$(nslookup -type=a {name} 2>/dev/null | awk '/^Address: / {{ a=$2 }} END {{ print a }}'); \
         [ -n \"$ip\" ] || {{ echo NOANSWER; exit 0; }}; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 80 2>&1 | tail -n 1"
    );
    let out = docker(&["exec", container, "sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `count` lookups of `name`, each followed at once by a connection to the address it
/// answered, in one shell inside `container`, sleeping `pause` between them. Returns how
/// many connections reached the listener and the lines of those that did not.
fn lookups_then_connects(
    container: &str,
    name: &str,
    count: u32,
    pause: &str,
) -> (u32, Vec<String>) {
    let script = format!(
        "i=0; while [ $i -lt {count} ]; do i=$((i+1)); \
           ip=$(nslookup -type=a {name} 2>/dev/null | awk '/^Address: / {{ a=$2 }} END {{ print a }}'); \
           r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 80 2>&1 | tail -n 1); \
           echo \"$ip $r\"; sleep {pause}; \
         done"
    );
    let out = docker(&["exec", container, "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut ok = 0;
    let mut bad = Vec::new();
    for line in text.lines() {
        if line.ends_with("port80") {
            ok += 1;
        } else {
            bad.push(line.to_owned());
        }
    }
    (ok, bad)
}

/// One scene for the whole story (each step builds on what the container resolved before):
/// - before any lookup, the name's addresses are refused (nothing learned);
/// - a CNAME chain (`alias.fqdn.test → edge.cdn.test → A`) and a wildcard two labels deep
///   (`x.y.wild.test` under `*.wild.test`) are allowed once resolved;
/// - the wildcard's apex (`wild.test`) and a name no line allows are refused, though
///   resolved;
/// - another enabled container with the same ACL that did not resolve is refused the
///   addresses the first one learned;
/// - 200 lookups of a name with a 1 s TTL rotating between two listeners, each followed at
///   once by a connection: 200 reach it. Then 8 more, 1.2 s apart, so that the previous
///   address has expired before each lookup: 8 reach it;
/// - after the TTL (the floor is 0 here), the address is refused again;
/// - with the agent stopped, DNS still answers and the address it gives is refused.
#[test]
fn names_are_allowed_race_free_and_only_where_they_were_resolved() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::bare("fqdn", 141);
    let gateway: Ipv4Addr = "10.231.141.1".parse().unwrap();
    let (a, b, c) = ("10.231.141.10", "10.231.141.11", "10.231.141.12");
    for (what, ip) in [("a", a), ("b", b), ("c", c)] {
        let name = s.name(what);
        listener(&mut s.cleanup, &name, &s.net.clone(), ip, &[80]);
    }
    let dns = DnsServer::start(SocketAddr::from((gateway, 53)))
        .expect("bind the test's DNS server on the test network's gateway, port 53");
    let ip = |x: &str| -> Ipv4Addr { x.parse().unwrap() };
    dns.rotate("api.fqdn.test", 1, vec![ip(a), ip(b)]);
    dns.set(
        "alias.fqdn.test",
        60,
        vec![Answer::Cname("edge.cdn.test".into())],
    );
    dns.set("edge.cdn.test", 60, vec![Answer::A(ip(b))]);
    dns.set("x.y.wild.test", 60, vec![Answer::A(ip(a))]);
    dns.set("wild.test", 60, vec![Answer::A(ip(c))]);
    dns.set("other.fqdn.test", 60, vec![Answer::A(ip(c))]);
    kv_put(
        &format!("{}web", s.kv_path),
        "api.fqdn.test:tcp/80\nalias.fqdn.test:tcp/80\n*.wild.test:tcp/80\n",
    );
    let port = free_port();
    let agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path, "--fqdn-min-ttl", "0s"],
    );
    let enabled = ["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"];
    let dns_arg = ["--dns", "10.231.141.1"];
    let app = s.client("app", &[&enabled[..], &dns_arg[..]].concat());
    let peer = s.client("peer", &[&enabled[..], &dns_arg[..]].concat());
    let plain = s.client("plain", &dns_arg);
    for c in [&app, &peer] {
        let id = container_id(c);
        wait_for(&format!("{c} enforced"), Duration::from_secs(20), || {
            (status_of(port, &id)?["posture"] == "allowlist").then_some(())
        });
    }
    agent.wait_log("DNS replies queued to the learner");

    // Controls: the listeners serve, and nothing is allowed before a lookup.
    for x in [a, b, c] {
        assert_eq!(
            fetch(&plain, x, 80),
            Fetch::Body("port80".into()),
            "plain -> {x}"
        );
        assert_eq!(
            fetch(&app, x, 80),
            Fetch::Refused,
            "app -> {x} before any lookup"
        );
    }

    assert_eq!(
        lookup_and_fetch(&app, "alias.fqdn.test"),
        "port80",
        "CNAME chain"
    );
    assert_eq!(
        lookup_and_fetch(&app, "x.y.wild.test"),
        "port80",
        "wildcard"
    );
    // `/status` lists the container's names and what it learned, with the expiry.
    let app_id = container_id(&app);
    let learned = wait_for(
        "learned addresses in /status",
        Duration::from_secs(5),
        || {
            let st = status_of(port, &app_id)?;
            let list = st["fqdn"]["learned"].as_array()?.clone();
            (list.len() >= 2).then_some((st, list))
        },
    );
    let (st, list) = learned;
    assert_eq!(
        st["fqdn"]["names"],
        serde_json::json!([
            "api.fqdn.test:tcp/80",
            "alias.fqdn.test:tcp/80",
            "*.wild.test:tcp/80"
        ])
    );
    let entry = |addr: &str| list.iter().find(|l| l["address"] == addr).cloned();
    let alias = entry(b).expect("b learned");
    assert_eq!(alias["names"], serde_json::json!(["alias.fqdn.test"]));
    assert_eq!(
        entry(a).expect("a learned")["names"],
        serde_json::json!(["x.y.wild.test"])
    );
    assert!(alias["expires_unix"].as_u64().unwrap() > 0);
    // `check` decides names by the line that matches.
    let kv = s.kv_path.clone();
    let check = |name: &str| cli(&["-k", &kv, "check", &app, name, "tcp", "80"]);
    let yes = check("Deep.X.Wild.test");
    assert!(yes.status.success(), "{yes:?}");
    assert!(
        String::from_utf8_lossy(&yes.stdout).contains("allowed by acl 'web' line 3"),
        "{yes:?}"
    );
    let no = check("wild.test");
    assert!(!no.status.success(), "{no:?}");
    assert!(
        String::from_utf8_lossy(&no.stdout).contains("deny"),
        "{no:?}"
    );
    // An address the running agent learned for the container decides too, with the name.
    let listen = format!("127.0.0.1:{port}");
    let learned = cli(&[
        "--listen", &listen, "-k", &kv, "check", &app, b, "tcp", "80",
    ]);
    let text = String::from_utf8_lossy(&learned.stdout);
    assert!(learned.status.success(), "{learned:?}");
    assert!(
        text.contains("learned from the DNS answer for alias.fqdn.test"),
        "{text}"
    );
    let other_port = cli(&[
        "--listen", &listen, "-k", &kv, "check", &app, b, "tcp", "81",
    ]);
    assert!(!other_port.status.success(), "{other_port:?}");

    // A policy change loads a new table; what was learned and still holds goes with it.
    let before = st["hash"].clone();
    kv_put(
        &format!("{}web", s.kv_path),
        "api.fqdn.test:tcp/80\nalias.fqdn.test:tcp/80\n*.wild.test:tcp/80\n10.231.141.99:tcp/81\n",
    );
    wait_for("the new policy in force", Duration::from_secs(10), || {
        (status_of(port, &app_id)?["hash"] != before).then_some(())
    });
    assert_eq!(
        fetch(&app, b, 80),
        Fetch::Body("port80".into()),
        "learned b kept across the reload"
    );
    assert_eq!(
        fetch(&app, a, 80),
        Fetch::Body("port80".into()),
        "learned a kept across the reload"
    );
    // A policy change that drops a name line drops what it allowed: b came only from the
    // alias's answer. Past the learner's next wake-up (200 ms), b is still refused; a, from
    // the wildcard line that stays, is still allowed.
    let before = status_of(port, &app_id).unwrap()["hash"].clone();
    kv_put(
        &format!("{}web", s.kv_path),
        "api.fqdn.test:tcp/80\n*.wild.test:tcp/80\n10.231.141.99:tcp/81\n",
    );
    wait_for(
        "the policy without the alias line",
        Duration::from_secs(10),
        || (status_of(port, &app_id)?["hash"] != before).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(fetch(&app, b, 80), Fetch::Refused, "b, from a dropped line");
    assert_eq!(
        fetch(&app, a, 80),
        Fetch::Body("port80".into()),
        "a, from a line that stays"
    );
    let apex = lookup_and_fetch(&app, "wild.test");
    assert!(
        apex.contains("refused"),
        "the wildcard's apex is not matched: {apex}"
    );
    let monitor = crate::flows::Monitor::start(port, &["--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let other = lookup_and_fetch(&app, "other.fqdn.test");
    assert!(other.contains("refused"), "a name no line allows: {other}");
    // `monitor` names the name the workload asked for behind the refused address.
    let records: Vec<serde_json::Value> = monitor
        .collect(Duration::from_secs(2))
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["dst"] == c && r["verdict"] == "deny" && r["qname"] == "other.fqdn.test"),
        "a deny record for {c} naming other.fqdn.test: {records:?}"
    );
    drop(monitor);
    assert!(
        dns.queries().iter().any(|(n, _)| n == "other.fqdn.test"),
        "the refused name was resolved (so the refusal is the firewall's)"
    );
    // `app` learned a and b; `peer`, with the same ACL, did not resolve them.
    assert_eq!(fetch(&app, a, 80), Fetch::Body("port80".into()));
    assert_eq!(fetch(&peer, a, 80), Fetch::Refused, "peer did not resolve");
    assert_eq!(fetch(&peer, b, 80), Fetch::Refused, "peer did not resolve");

    let (ok, bad) = lookups_then_connects(&app, "api.fqdn.test", 200, "0");
    assert_eq!(
        ok, 200,
        "connections right after a lookup that failed: {bad:?}"
    );
    let (ok, bad) = lookups_then_connects(&app, "api.fqdn.test", 8, "1.2");
    assert_eq!(ok, 8, "lookups after the previous address expired: {bad:?}");

    // The TTL was 1 s and the floor 0: both addresses are refused again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(fetch(&app, a, 80), Fetch::Refused, "a after its TTL");
    assert_eq!(fetch(&app, b, 80), Fetch::Refused, "b after its TTL");

    // With no agent, the kernel lets answers through unqueued: DNS works, nothing is learned.
    drop(agent);
    let answered = docker(&["exec", &app, "nslookup", "-type=a", "api.fqdn.test"]);
    let text = String::from_utf8_lossy(&answered.stdout);
    assert!(
        text.contains(a) || text.contains(b),
        "DNS answers with the agent stopped: {text}"
    );
    let after = lookup_and_fetch(&app, "api.fqdn.test");
    assert!(
        after.contains("refused"),
        "nothing is learned without the agent: {after}"
    );
}

/// A DNS query for `name` (type A) in TCP DNS framing, written as a busybox `printf` format
/// (octal escapes), so a container can send it with `nc`.
fn tcp_query_printf(name: &str) -> String {
    let mut q: Vec<u8> = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    framed.iter().map(|b| format!("\\{b:03o}")).collect()
}

fn ip_of(container: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        container,
    ])
    .trim()
    .to_owned()
}

/// Docker's default bridge, where a container's resolvers are the host's (here its `--dns`,
/// the test's DNS server on docker0's address): no embedded server in between, answers
/// come straight from the resolver.
/// - before a lookup the listener is refused; 50 lookups of a rotating 1 s-TTL name, each
///   followed at once by a connection, all reach a listener;
/// - a lookup over TCP DNS teaches the address too (seen in `/status`, then reached);
/// - a container that is not enabled reaches both listeners (the control).
#[test]
fn names_work_on_the_default_bridge_and_over_tcp_dns() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let tag = unique("fqdn-bridge");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    let gateway = docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        "bridge",
    ])
    .trim()
    .to_owned();
    let gw: Ipv4Addr = gateway.parse().expect("the default bridge's gateway");
    let mut ips = Vec::new();
    for what in ["a", "b"] {
        let name = format!("{tag}-{what}");
        run_container(
            &mut cleanup,
            &name,
            &[
                IMAGE,
                "sh",
                "-c",
                "mkdir -p /w && echo port80 > /w/index.html && httpd -p 80 -h /w && exec sleep 3600",
            ],
        );
        wait_serving(&name, &[80]);
        ips.push(ip_of(&name));
    }
    let dns = DnsServer::start(SocketAddr::from((gw, 53)))
        .expect("bind the test's DNS server on docker0's address, port 53");
    dns.rotate(
        "api.bridge.test",
        1,
        ips.iter().map(|i| i.parse().unwrap()).collect(),
    );
    dns.set(
        "tcp.bridge.test",
        60,
        vec![Answer::A(ips[1].parse().unwrap())],
    );
    kv_put(
        &format!("{kv_path}web"),
        "api.bridge.test:tcp/80\ntcp.bridge.test:tcp/80\n",
    );
    let port = free_port();
    let state = std::env::temp_dir().join(format!("{tag}-state"));
    let _agent = AgentProc::start_with(
        &state,
        &format!("127.0.0.1:{port}"),
        &["-k", &kv_path, "--fqdn-min-ttl", "0s"],
    );
    let app = format!("{tag}-app");
    run_container(
        &mut cleanup,
        &app,
        &[
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
            "--dns",
            &gateway,
            IMAGE,
            "sleep",
            "3600",
        ],
    );
    let plain = format!("{tag}-plain");
    run_container(
        &mut cleanup,
        &plain,
        &["--dns", &gateway, IMAGE, "sleep", "3600"],
    );
    let app_id = container_id(&app);
    wait_for("app enforced", Duration::from_secs(20), || {
        (status_of(port, &app_id)?["posture"] == "allowlist").then_some(())
    });
    wait_for("the learner running", Duration::from_secs(10), || {
        status_of(port, &app_id)?["fqdn"].is_object().then_some(())
    });
    for ip in &ips {
        assert_eq!(
            fetch(&plain, ip, 80),
            Fetch::Body("port80".into()),
            "control"
        );
        assert_eq!(fetch(&app, ip, 80), Fetch::Refused, "before any lookup");
    }
    let (ok, bad) = lookups_then_connects(&app, "api.bridge.test", 50, "0");
    assert_eq!(
        ok, 50,
        "connections right after a lookup that failed: {bad:?}"
    );

    // TCP DNS: wait until the rotating name's addresses expired, then ask over TCP.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(fetch(&app, &ips[1], 80), Fetch::Refused, "b expired");
    let query = tcp_query_printf("tcp.bridge.test");
    let out = docker(&[
        "exec",
        &app,
        "sh",
        "-c",
        &format!("printf '{query}' | nc -w 2 {gateway} 53 | wc -c"),
    ]);
    let bytes: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(bytes > 20, "a TCP DNS answer came back: {out:?}");
    assert!(dns.queries().iter().any(|(n, _)| n == "tcp.bridge.test"));
    let learned = wait_for(
        "the TCP answer's address in /status",
        Duration::from_secs(5),
        || {
            let st = status_of(port, &app_id)?;
            let list = st["fqdn"]["learned"].as_array()?.clone();
            list.iter()
                .find(|l| {
                    l["address"] == ips[1].as_str()
                        && l["names"] == serde_json::json!(["tcp.bridge.test"])
                })
                .cloned()
        },
    );
    assert_eq!(learned["proto"], "tcp");
    assert_eq!(
        fetch(&app, &ips[1], 80),
        Fetch::Body("port80".into()),
        "learned over TCP DNS"
    );
    let _ = std::fs::remove_dir_all(state);
}

/// The DNS filter, through Docker's embedded server (user-defined network):
/// - a container with the label `egresstrator.dns-filter=true` asking for a name no line
///   allows gets `REFUSED`, and the test's DNS server never sees the query; `monitor --json`
///   shows a `deny` record naming the name;
/// - a name line's name resolves and connects; a `NAME:dns` name resolves and connects to
///   nothing;
/// - the control: an enabled container without the filter resolves such a name, and the
///   server sees it;
/// - in audit mode the query goes on (the server sees it) and the record says `audit`.
#[test]
fn the_dns_filter_refuses_names_no_line_allows_and_never_forwards_them() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::bare("dnsfilter", 142);
    let a = "10.231.142.10";
    let srv = s.name("a");
    listener(&mut s.cleanup, &srv, &s.net.clone(), a, &[80]);
    let dns = DnsServer::start(SocketAddr::from(([10, 231, 142, 1], 53)))
        .expect("bind the test's DNS server on the test network's gateway, port 53");
    let ip: Ipv4Addr = a.parse().unwrap();
    for name in [
        "api.filter.test",
        "internal.filter.test",
        "exfil1.attacker.test",
        "exfil2.attacker.test",
        "exfil3.attacker.test",
    ] {
        dns.set(name, 60, vec![Answer::A(ip)]);
    }
    kv_put(
        &format!("{}web", s.kv_path),
        "api.filter.test:tcp/80\ninternal.filter.test:dns\n",
    );
    let port = free_port();
    let _agent = AgentProc::start_with(
        &s.state_dir(),
        &format!("127.0.0.1:{port}"),
        &["-k", &s.kv_path],
    );
    let dns_arg = ["--dns", "10.231.142.1"];
    let filtered = s.client(
        "filtered",
        &[
            &dns_arg[..],
            &[
                "--label",
                "egresstrator.enable=true",
                "--label",
                "egresstrator.acl=web",
                "--label",
                "egresstrator.dns-filter=true",
            ],
        ]
        .concat(),
    );
    let open = s.client(
        "open",
        &[
            &dns_arg[..],
            &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
        ]
        .concat(),
    );
    let audit = s.client(
        "audit",
        &[
            &dns_arg[..],
            &[
                "-e",
                "EGRESSTRATOR_ENABLE=1",
                "-e",
                "EGRESSTRATOR_ACL=web",
                "-e",
                "EGRESSTRATOR_AUDIT=1",
                "-e",
                "EGRESSTRATOR_DNS_FILTER=1",
            ],
        ]
        .concat(),
    );
    for c in [&filtered, &open, &audit] {
        let id = container_id(c);
        wait_for(
            &format!("{c}'s learner running"),
            Duration::from_secs(20),
            || status_of(port, &id)?["fqdn"].is_object().then_some(()),
        );
    }
    let monitor = crate::flows::Monitor::start(port, &["--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let nslookup = |c: &str, name: &str| {
        let out = docker(&["exec", c, "nslookup", "-type=a", name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let asked = |name: &str| dns.queries().iter().any(|(n, _)| n == name);

    let refused = nslookup(&filtered, "exfil1.attacker.test");
    assert!(
        refused.contains("REFUSED"),
        "the filtered container gets REFUSED: {refused}"
    );
    assert!(!refused.contains(a), "{refused}");
    assert!(
        !asked("exfil1.attacker.test"),
        "the query never reached the server"
    );
    assert_eq!(lookup_and_fetch(&filtered, "api.filter.test"), "port80");
    let internal = nslookup(&filtered, "internal.filter.test");
    assert!(internal.contains(a), "a NAME:dns name resolves: {internal}");
    assert_eq!(
        fetch(&filtered, a, 80),
        Fetch::Body("port80".into()),
        "a via api.filter.test"
    );

    // The control: without the filter the same kind of name is answered and forwarded.
    let answered = nslookup(&open, "exfil2.attacker.test");
    assert!(answered.contains(a), "without the filter: {answered}");
    assert!(asked("exfil2.attacker.test"));

    // Audit: forwarded, answered, recorded as audit.
    let audited = nslookup(&audit, "exfil3.attacker.test");
    assert!(audited.contains(a), "audit lets it through: {audited}");
    assert!(asked("exfil3.attacker.test"));

    let records: Vec<serde_json::Value> = monitor
        .collect(Duration::from_secs(2))
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |name: &str| {
        records
            .iter()
            .find(|r| r["qname"] == name)
            .unwrap_or_else(|| panic!("no monitor record for {name}: {records:?}"))
            .clone()
    };
    let deny = of("exfil1.attacker.test");
    assert_eq!(deny["verdict"], "deny");
    assert_eq!(deny["name"], filtered.as_str());
    assert_eq!(deny["dport"], 53);
    assert_eq!(of("exfil3.attacker.test")["verdict"], "audit");
    assert!(
        records.iter().all(|r| r["qname"] != "exfil2.attacker.test"
            && r["qname"] != "api.filter.test"
            && r["qname"] != "internal.filter.test"),
        "only refused (or audited) names are recorded: {records:?}"
    );
}

/// AAAA on an IPv6 network: the container resolves through Docker's embedded server, which
/// forwards over IPv6 to the test's DNS server on the network's IPv6 gateway; the answered
/// IPv6 address is refused before the lookup and reached after it (the control: a container
/// that is not enabled reaches it all along).
#[test]
fn aaaa_answers_allow_ipv6_addresses() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut cleanup = Cleanup::new();
    let tag = unique("fqdn-v6");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    let net = format!("{tag}-net");
    let _ = docker(&["network", "rm", &net]);
    docker_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:e9e:143::/64",
        "--subnet",
        "10.231.143.0/24",
        &net,
    ]);
    cleanup.networks.push(net.clone());
    let listener_name = format!("{tag}-srv");
    run_container(
        &mut cleanup,
        &listener_name,
        &[
            "--network",
            &net,
            "--ip6",
            "fd00:e9e:143::10",
            IMAGE,
            "sh",
            "-c",
            "mkdir -p /w && echo port80 > /w/index.html && httpd -p 80 -h /w && exec sleep 3600",
        ],
    );
    wait_serving(&listener_name, &[80]);
    // The bridge's IPv6 address is usable once duplicate address detection is over.
    let gateway: std::net::Ipv6Addr = "fd00:e9e:143::1".parse().unwrap();
    let dns = wait_for(
        "the IPv6 gateway to take a socket",
        Duration::from_secs(10),
        || DnsServer::start(SocketAddr::from((gateway, 53))).ok(),
    );
    dns.set(
        "v6.fqdn.test",
        60,
        vec![Answer::Aaaa("fd00:e9e:143::10".parse().unwrap())],
    );
    kv_put(&format!("{kv_path}web"), "v6.fqdn.test:tcp/80\n");
    let port = free_port();
    let state = std::env::temp_dir().join(format!("{tag}-state"));
    let _agent = AgentProc::start_with(&state, &format!("127.0.0.1:{port}"), &["-k", &kv_path]);
    let app = format!("{tag}-app");
    let plain = format!("{tag}-plain");
    for (name, enabled) in [(&app, true), (&plain, false)] {
        let mut args = vec!["--network", net.as_str(), "--dns", "fd00:e9e:143::1"];
        if enabled {
            args.extend(["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"]);
        }
        args.extend([IMAGE, "sleep", "3600"]);
        run_container(&mut cleanup, name, &args);
    }
    let app_id = container_id(&app);
    wait_for("the learner running", Duration::from_secs(20), || {
        status_of(port, &app_id)?["fqdn"].is_object().then_some(())
    });
    let get6 = |c: &str| {
        let out = docker(&[
            "exec",
            c,
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 fd00:e9e:143::10 80 2>&1 | tail -n 1",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        get6(&plain),
        "port80",
        "the control reaches the listener over IPv6"
    );
    let before = get6(&app);
    assert!(before.contains("refused"), "before the lookup: {before}");
    let out = docker(&["exec", &app, "nslookup", "-type=aaaa", "v6.fqdn.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fd00:e9e:143::10"), "the AAAA answer: {text}");
    assert!(dns
        .queries()
        .iter()
        .any(|(n, t)| n == "v6.fqdn.test" && *t == 28));
    assert_eq!(get6(&app), "port80", "after the AAAA answer");
    wait_for(
        "the IPv6 address in /status",
        Duration::from_secs(5),
        || {
            let st = status_of(port, &app_id)?;
            st["fqdn"]["learned"]
                .as_array()?
                .iter()
                .any(|l| l["address"] == "fd00:e9e:143::10")
                .then_some(())
        },
    );
    let _ = std::fs::remove_dir_all(state);
}

/// Learned addresses survive an agent restart that must load the namespace again (its plan
/// changed while no agent ran): the state dir's record puts them back in that first load.
/// The control: an agent started with an empty state dir, after the same kind of change,
/// refuses the address until the name is looked up again.
#[test]
fn learned_addresses_survive_a_restart_that_loads_again() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::bare("fqdn-restart", 144);
    let a = "10.231.144.10";
    let srv = s.name("a");
    listener(&mut s.cleanup, &srv, &s.net.clone(), a, &[80]);
    let dns = DnsServer::start(SocketAddr::from(([10, 231, 144, 1], 53)))
        .expect("bind the test's DNS server on the test network's gateway, port 53");
    dns.set("keep.fqdn.test", 300, vec![Answer::A(a.parse().unwrap())]);
    let key = format!("{}web", s.kv_path);
    kv_put(&key, "keep.fqdn.test:tcp/80\n");
    let state = s.state_dir();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = AgentProc::start_with(&state, &listen, &["-k", &s.kv_path]);
    let app = s.client(
        "app",
        &[
            "--dns",
            "10.231.144.1",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    let app_id = container_id(&app);
    wait_for("the learner running", Duration::from_secs(20), || {
        status_of(port, &app_id)?["fqdn"].is_object().then_some(())
    });
    assert_eq!(fetch(&app, a, 80), Fetch::Refused, "before the lookup");
    assert_eq!(lookup_and_fetch(&app, "keep.fqdn.test"), "port80");
    wait_for(
        "the learned address in the state dir",
        Duration::from_secs(5),
        || {
            let text = std::fs::read_to_string(state.join("loaded.json")).ok()?;
            text.contains(a).then_some(())
        },
    );
    agent.kill9();

    // The control: another agent, no record, a changed plan: the address is refused.
    kv_put(&key, "keep.fqdn.test:tcp/80\n10.231.144.99:tcp/81\n");
    let empty = std::env::temp_dir().join(format!("{}-empty-state", s.tag));
    let port2 = free_port();
    let mut control =
        AgentProc::start_with(&empty, &format!("127.0.0.1:{port2}"), &["-k", &s.kv_path]);
    wait_for("the changed plan in force", Duration::from_secs(20), || {
        let st = status_of(port2, &app_id)?;
        (st["posture"] == "allowlist" && st["fqdn"].is_object()).then_some(())
    });
    assert_eq!(
        fetch(&app, a, 80),
        Fetch::Refused,
        "an agent without the record loads the table without the learned address"
    );
    control.kill9();
    let _ = std::fs::remove_dir_all(&empty);

    // The agent with the record, after another change: the address is allowed at once.
    kv_put(&key, "keep.fqdn.test:tcp/80\n10.231.144.98:tcp/82\n");
    let _agent = AgentProc::start_with(&state, &listen, &["-k", &s.kv_path]);
    let hash = wait_for(
        "the plan of the restarted agent",
        Duration::from_secs(20),
        || {
            let st = status_of(port, &app_id)?;
            (st["posture"] == "allowlist").then(|| st["hash"].clone())
        },
    );
    assert_eq!(
        fetch(&app, a, 80),
        Fetch::Body("port80".into()),
        "restored from the state dir in the first load (hash {hash})"
    );
    assert_eq!(
        dns.queries()
            .iter()
            .filter(|(n, t)| n == "keep.fqdn.test" && *t == 1)
            .count(),
        1,
        "no second lookup"
    );

    // The policy drops its name lines: the learner stops and takes its queue rules out.
    let pid = container_pid(&app);
    let rules = || {
        let out = std::process::Command::new("nsenter")
            .args(["-t", pid.trim(), "-n", "iptables", "-S"])
            .output()
            .expect("nsenter iptables -S");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(rules().contains("EGRESSTRATOR-DNS"), "{}", rules());
    kv_put(&key, "10.231.144.99:tcp/81\n");
    wait_for(
        "the learner gone from /status",
        Duration::from_secs(20),
        || status_of(port, &app_id)?["fqdn"].is_null().then_some(()),
    );
    wait_for("the queue rules gone", Duration::from_secs(10), || {
        (!rules().contains("EGRESSTRATOR-DNS")).then_some(())
    });
}
