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
    let apex = lookup_and_fetch(&app, "wild.test");
    assert!(
        apex.contains("refused"),
        "the wildcard's apex is not matched: {apex}"
    );
    let other = lookup_and_fetch(&app, "other.fqdn.test");
    assert!(other.contains("refused"), "a name no line allows: {other}");
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
