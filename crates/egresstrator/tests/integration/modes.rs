//! Both policy modes on both backends, end to end: the agent enforces opted-in containers on
//! user-defined Docker networks (one of them with IPv6), and real TCP and UDP traffic between
//! the test's own containers shows what passes and what is refused.
//!
//! Traffic only ever goes to the test's own containers. TCP is served by busybox `httpd` and
//! fetched with busybox `nc` ([`fetch`]). busybox in the test image has no UDP server (its `nc`
//! has no `-u`), so UDP is served by [`UdpResponder`] sockets that this process opens inside
//! the listener container's namespace, and sent by busybox `nslookup` from inside the client
//! container ([`resolve`]): a refused datagram fails at once with EPERM, an allowed one gets
//! an answer.
//!
//! Protect mode's "no new TCP without SYN" rule is shown with bare segments sent through a raw
//! socket opened in the client's namespace ([`raw_tcp`]).
//!
//! The last three tests pin agent bugs found while writing these (they fail until fixed):
//! DNS through Docker's embedded resolver in allowlist mode, and rules left behind by the
//! other backend after `clear` or an agent restart with another `--backend`.
//!
//! Each test has its own kv-path and its own /24: 10.231.20 to 10.231.29. Every agent
//! enforces every enabled container on the host, so an agent of another test run (another
//! kv-path) breaks these tests: those with enabled containers first wait for a quiet host,
//! and traffic failures list the egresstrator processes running at that moment.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// The firewall backend an agent or command is run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Nft,
    Iptables,
}

impl Backend {
    fn flag(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Iptables => "iptables",
        }
    }
}

/// The jump egresstrator's iptables backend puts in `OUTPUT`, as `iptables-save` prints it.
const IPT_JUMP: &str = "-A OUTPUT -j EGRESSTRATOR-OUTPUT";

/// True when egresstrator's table (nft) or chains (iptables, either family) are in the
/// container's namespace.
fn enforced(backend: Backend, c: &str) -> bool {
    match backend {
        Backend::Nft => table(c).is_some(),
        Backend::Iptables => iptables_filter(c).contains("EGRESSTRATOR"),
    }
}

/// Waits until the agent has enforced `c` with `backend` (for nft: the table whose comment
/// says `egresstrator <posture_acls>`, e.g. `allowlist acls=web`; for iptables: the jump in
/// both IP families), and checks that the other backend left no trace.
fn wait_enforced(backend: Backend, c: &str, posture_acls: &str) {
    match backend {
        Backend::Nft => {
            let comment = format!("comment \"egresstrator {posture_acls}\"");
            wait_table(c, &comment, |t| t.is_some_and(|t| t.contains(&comment)));
            assert!(
                !iptables_filter(c).contains("EGRESSTRATOR"),
                "{c}: nft backend wrote iptables chains:\n{}",
                iptables_filter(c)
            );
        }
        Backend::Iptables => {
            wait_iptables(c, "EGRESSTRATOR chains in both families", |t| {
                t.matches(IPT_JUMP).count() == 2
            });
            assert_eq!(table(c), None, "{c}: iptables backend made an nft table");
        }
    }
}

/// Waits until `f` returns true, up to 20 s (policy changes take a Consul watch round trip).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn body(port: u16) -> Fetch {
    Fetch::Body(format!("port{port}"))
}

/// Asserts every TCP port and UDP port outcome for one client.
fn assert_traffic(c: &str, dst: &str, tcp: &[(u16, bool)], udp: &[(u16, bool)]) {
    for &(port, ok) in tcp {
        let want = if ok { body(port) } else { Fetch::Refused };
        let got = fetch(c, dst, port);
        assert_eq!(got, want, "{c} to {dst} tcp/{port}{}", state_note(c));
    }
    for &(port, ok) in udp {
        let want = if ok {
            Resolve::Answered
        } else {
            Resolve::Refused
        };
        let got = resolve(c, dst, port);
        assert_eq!(got, want, "{c} to {dst} udp/{port}{}", state_note(c));
    }
}

/// Command lines of every egresstrator process on the host.
fn egresstrator_processes() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let exe = std::fs::read_link(e.path().join("exe")).ok();
        if exe.as_ref().and_then(|p| p.file_name()) == Some("egresstrator".as_ref()) {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

/// For failure messages: the agents running now. Every agent enforces every enabled
/// container on the host, so an agent of another test run (another kv-path) also writes
/// this test's containers, and the test cannot pass while it runs.
fn agents_note() -> String {
    format!(
        "\negresstrator processes now (any with another kv-path interferes):\n{}",
        egresstrator_processes().join("\n")
    )
}

/// For failure messages: what egresstrator has in force in `c`, and [`agents_note`].
fn state_note(c: &str) -> String {
    let comment = table(c).and_then(|t| {
        t.lines()
            .find(|l| l.trim_start().starts_with("comment"))
            .map(|l| l.trim().to_owned())
    });
    let chains = iptables_filter(c)
        .lines()
        .filter(|l| l.contains("EGRESSTRATOR"))
        .count();
    format!(
        "\nin {c} now: nft table {comment:?}, {chains} EGRESSTRATOR iptables lines{}",
        agents_note()
    )
}

/// Waits up to 5 minutes until no egresstrator process runs on the host (another test run's
/// agent would enforce this test's containers with its own policy); then goes ahead anyway.
fn wait_for_quiet_host() {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !egresstrator_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs the CLI and returns (exit code, stdout, stderr).
fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = cli(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rules "another tool" keeps in the container's namespace: they reject tcp/9009 to `srv`,
/// a port inside the ACL's range that egresstrator itself allows. nft: its own table with an
/// output chain; iptables: a custom chain jumped to from `OUTPUT`, a rule directly in
/// `OUTPUT` and one in ip6tables.
fn install_other_tool(backend: Backend, c: &str, srv: &str) {
    match backend {
        Backend::Nft => {
            ns_sh_ok(
                c,
                &format!(
                    "nft add table inet othertool && \
                     nft add chain inet othertool out '{{ type filter hook output priority 10; policy accept; }}' && \
                     nft add rule inet othertool out ip daddr {srv} tcp dport 9009 reject with tcp reset"
                ),
            );
        }
        Backend::Iptables => {
            ns_sh_ok(
                c,
                &format!(
                    "iptables -w -N OTHER-TOOL && \
                     iptables -w -A OTHER-TOOL -d {srv}/32 -p tcp -m tcp --dport 9009 -j REJECT --reject-with tcp-reset && \
                     iptables -w -A OUTPUT -j OTHER-TOOL && \
                     iptables -w -A OUTPUT -d {srv}/32 -p tcp -m tcp --dport 9999 -j REJECT --reject-with tcp-reset && \
                     ip6tables -w -A OUTPUT -d fd00:dead::1/128 -p tcp -m tcp --dport 9999 -j REJECT --reject-with tcp-reset"
                ),
            );
        }
    }
}

/// The other tool's rules as they stand: its nft table, or every iptables line that is not
/// egresstrator's (chain declarations and rules of both families, in order).
fn other_tool_rules(backend: Backend, c: &str) -> String {
    match backend {
        Backend::Nft => ns_sh_ok(c, "nft list table inet othertool"),
        Backend::Iptables => iptables_filter(c)
            .lines()
            .filter(|l| !l.contains("EGRESSTRATOR"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// allowlist × `backend`, on `subnet24`.
///
/// A listener serves tcp/80, 8080, 9005, 9009, 9011 and udp/5353, 5354. ACL `web` allows
/// tcp/80, the tcp range 9000-9010 and udp/5353. Before the agent starts, "another tool" puts
/// rules in the enabled container's namespace that reject tcp/9009.
/// - the enabled container reaches tcp/80, tcp/9005 (in the range) and udp/5353, and is
///   refused on tcp/8080, tcp/9011 (outside the range) and udp/5354; tcp/9009, which
///   egresstrator allows, is still refused by the other tool's rule;
/// - a container that is not enabled reaches every port, 9009 included;
/// - adding a line to `web` in Consul opens tcp/8080 on the running container, and the
///   re-apply leaves one jump per family (iptables) and the other tool's rules as they were;
/// - `clear` (recorded in the agent's state dir) removes egresstrator's table or chains, and
///   only those: no EGRESSTRATOR chain is left, the other tool's rules are unchanged and still
///   reject tcp/9009, everything else is reachable again, and the agent does not put the
///   rules back.
fn allowlist_scenario(backend: Backend, subnet24: &str) {
    let mut cleanup = Cleanup::new();
    let tag = unique(&format!("allow-{}", backend.flag()));
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network(&mut cleanup, &net, subnet24);
    let srv_ip = format!("{subnet24}.10");
    let srv = format!("{tag}-srv");
    listener(
        &mut cleanup,
        &srv,
        &net,
        &srv_ip,
        &[80, 8080, 9005, 9009, 9011],
    );
    let _udp = UdpResponder::start(&srv, &[5353, 5354]);
    let web = format!(
        "# allowlist: tcp/80, a tcp range and one udp port\n{srv_ip}:tcp/80\n\n{srv_ip}/32:tcp/9000-9010\n{srv_ip}:udp/5353\n"
    );
    kv_put(&format!("{kv_path}web"), &web);

    let free = format!("{tag}-free");
    client(&mut cleanup, &free, &net, &[]);
    let everything_tcp = [
        (80, true),
        (8080, true),
        (9005, true),
        (9009, true),
        (9011, true),
    ];
    let everything_udp = [(5353, true), (5354, true)];
    // The listener really serves every port, to a container nobody filters.
    assert_traffic(&free, &srv_ip, &everything_tcp, &everything_udp);

    let c = format!("{tag}-c");
    client(
        &mut cleanup,
        &c,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    install_other_tool(backend, &c, &srv_ip);
    let others = other_tool_rules(backend, &c);
    // The other tool alone: only tcp/9009 is refused.
    assert_traffic(
        &c,
        &srv_ip,
        &[(80, true), (8080, true), (9009, false)],
        &[(5354, true)],
    );

    let agent = AgentProc::start(&["-k", &kv_path, "--backend", backend.flag()]);
    wait_enforced(backend, &c, "allowlist acls=web");
    assert_traffic(
        &c,
        &srv_ip,
        &[
            (80, true),
            (9005, true),
            (9009, false),
            (8080, false),
            (9011, false),
        ],
        &[(5353, true), (5354, false)],
    );
    assert!(!enforced(backend, &free), "{free} is not enabled");
    assert_traffic(&free, &srv_ip, &everything_tcp, &everything_udp);
    assert_eq!(
        other_tool_rules(backend, &c),
        others,
        "the apply changed the other tool's rules"
    );

    // A policy change re-applies on the running container.
    kv_put(
        &format!("{kv_path}web"),
        &format!("{web}{srv_ip}:tcp/8080\n"),
    );
    eventually(
        &format!("{c} to reach tcp/8080 after the ACL change"),
        || fetch(&c, &srv_ip, 8080) == body(8080),
    );
    assert_traffic(
        &c,
        &srv_ip,
        &[(80, true), (9005, true), (9009, false), (9011, false)],
        &[(5353, true), (5354, false)],
    );
    assert_eq!(
        other_tool_rules(backend, &c),
        others,
        "the re-apply changed the other tool's rules"
    );
    if backend == Backend::Iptables {
        let t = iptables_filter(&c);
        assert_eq!(
            t.matches(IPT_JUMP).count(),
            2,
            "one jump per family after a re-apply:\n{t}"
        );
    }

    // `clear`, recorded where the running agent reads its overrides.
    let state = agent.state_dir();
    let (code, _, stderr) = run_cli(&[
        "-k",
        &kv_path,
        "--backend",
        backend.flag(),
        "--state-dir",
        state.to_str().expect("utf-8 state dir"),
        "clear",
        &c,
    ]);
    assert_eq!(code, Some(0), "clear failed: {stderr}");
    let after_clear = || {
        assert!(
            !enforced(backend, &c),
            "{c}: egresstrator's rules are still there after clear:\n{}\n{:?}",
            iptables_filter(&c),
            table(&c)
        );
        if backend == Backend::Iptables {
            let t = iptables_filter(&c);
            assert!(!t.contains("EGRESSTRATOR"), "chains left after clear:\n{t}");
        }
        assert_eq!(
            other_tool_rules(backend, &c),
            others,
            "clear changed the other tool's rules"
        );
        assert_traffic(
            &c,
            &srv_ip,
            &[(80, true), (8080, true), (9011, true), (9009, false)],
            &[(5354, true)],
        );
    };
    after_clear();
    // The agent (ticking every 250 ms) honours the clear rather than re-enforcing.
    std::thread::sleep(Duration::from_secs(1));
    after_clear();
    drop(agent);
}

/// allowlist × nft: see [`allowlist_scenario`].
#[test]
fn allowlist_nft_real_traffic() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    allowlist_scenario(Backend::Nft, "10.231.20");
}

/// allowlist × iptables: see [`allowlist_scenario`]. Also shows that egresstrator's
/// iptables rules coexist with another tool's custom chain and `OUTPUT` rules, and that
/// `clear` leaves no EGRESSTRATOR chain in either family.
#[test]
fn allowlist_iptables_real_traffic() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    allowlist_scenario(Backend::Iptables, "10.231.21");
}

/// protect × `backend` (egresstrator 0.2 semantics), on `subnet24`.
///
/// A listener serves tcp/80, 8080, 8081 and answers udp/53 and udp/123; a second host `dns2`
/// answers udp/53. Keys: `db` = listener:tcp/8080, `web` = listener:tcp/80. The agent runs
/// with `--mode protect --dns-allow <listener>/32`.
/// - a container naming `web` reaches tcp/80 and the unprotected tcp/8081, and is refused on
///   tcp/8080 (protected by `db`, which it does not name);
/// - a container naming `db,web` reaches all three;
/// - an enabled container naming nothing is refused on 80 and 8080 and reaches 8081;
/// - DNS (udp/53) passes to the allowed resolver and is refused to `dns2`; NTP (udp/123) is
///   refused; `check` gives the same answers and names the deciding key and line;
/// - a container that is not enabled reaches everything, `dns2` and udp/123 included;
/// - a bare ACK that would open a connection (sent from a raw socket) is refused even to the
///   unprotected port, a bare SYN is not, and the bare ACK leaves a container that is not
///   enabled;
/// - a new key `admin` = listener:tcp/8081 protects 8081 at once from containers not
///   naming it.
fn protect_scenario(backend: Backend, subnet24: &str) {
    let mut cleanup = Cleanup::new();
    let tag = unique(&format!("protect-{}", backend.flag()));
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network(&mut cleanup, &net, subnet24);
    let srv_ip = format!("{subnet24}.10");
    let dns2_ip = format!("{subnet24}.11");
    let srv = format!("{tag}-srv");
    listener(&mut cleanup, &srv, &net, &srv_ip, &[80, 8080, 8081]);
    let _srv_udp = UdpResponder::start(&srv, &[53, 123]);
    let dns2 = format!("{tag}-dns2");
    client(&mut cleanup, &dns2, &net, &["--ip", &dns2_ip]);
    let _dns2_udp = UdpResponder::start(&dns2, &[53]);
    kv_put(&format!("{kv_path}db"), &format!("{srv_ip}:tcp/8080"));
    kv_put(
        &format!("{kv_path}web"),
        &format!("# the web tier\n{srv_ip}:tcp/80\n"),
    );
    // Protect mode's manifest: every key the protected set is made of.
    kv_put(&kv_path, "db web");

    let free = format!("{tag}-free");
    client(&mut cleanup, &free, &net, &[]);
    let everything_tcp = [(80, true), (8080, true), (8081, true)];
    assert_traffic(&free, &srv_ip, &everything_tcp, &[(53, true), (123, true)]);
    assert_traffic(&free, &dns2_ip, &[], &[(53, true)]);

    let dns_allow = format!("{srv_ip}/32");
    let agent = AgentProc::start(&[
        "-k",
        &kv_path,
        "--mode",
        "protect",
        "--backend",
        backend.flag(),
        "--dns-allow",
        &dns_allow,
    ]);
    agent.wait_log("reconciling running containers");
    let mut clients = Vec::new();
    for (suffix, acls) in [("web", "web"), ("both", "db,web"), ("none", "")] {
        let name = format!("{tag}-{suffix}");
        let acl_env = format!("EGRESSTRATOR_ACL={acls}");
        client(
            &mut cleanup,
            &name,
            &net,
            &["-e", "EGRESSTRATOR_ENABLE=1", "-e", &acl_env],
        );
        clients.push(name);
    }
    let (c_web, c_both, c_none) = (&clients[0], &clients[1], &clients[2]);
    for (c, acls) in [(c_web, "web"), (c_both, "db,web"), (c_none, "-")] {
        wait_enforced(backend, c, &format!("protect acls={acls}"));
    }

    assert_traffic(
        c_web,
        &srv_ip,
        &[(80, true), (8081, true), (8080, false)],
        &[(53, true), (123, false)],
    );
    assert_traffic(c_web, &dns2_ip, &[], &[(53, false)]);
    assert_traffic(c_both, &srv_ip, &everything_tcp, &[(53, true)]);
    assert_traffic(
        c_none,
        &srv_ip,
        &[(80, false), (8080, false), (8081, true)],
        &[],
    );
    assert!(!enforced(backend, &free), "{free} is not enabled");
    assert_traffic(&free, &srv_ip, &everything_tcp, &[(53, true), (123, true)]);
    assert_traffic(&free, &dns2_ip, &[], &[(53, true)]);

    // A new TCP connection that does not start with a bare SYN is refused, even to an
    // unprotected port; the same segment leaves a container that is not enabled.
    let srv_v4: std::net::Ipv4Addr = srv_ip.parse().expect("ipv4");
    assert_eq!(
        raw_tcp(c_web, srv_v4, 8081, TCP_ACK),
        Err(libc::EPERM),
        "{c_web}: a bare ACK opening a connection must be refused"
    );
    assert_eq!(
        raw_tcp(c_web, srv_v4, 8081, TCP_SYN),
        Ok(()),
        "{c_web}: bare SYN"
    );
    assert_eq!(
        raw_tcp(&free, srv_v4, 8081, TCP_ACK),
        Ok(()),
        "{free}: bare ACK"
    );

    // `check` answers as the kernel did, and names what decided.
    let check = |c: &str, addr: &str, proto: &str, port: &str| {
        run_cli(&[
            "-k",
            &kv_path,
            "--mode",
            "protect",
            "--dns-allow",
            &dns_allow,
            "check",
            c,
            addr,
            proto,
            port,
        ])
    };
    for (c, addr, proto, port, code, says) in [
        (
            c_web,
            &dns2_ip,
            "udp",
            "53",
            1,
            "DNS to a resolver that is not allowed",
        ),
        (
            c_web,
            &srv_ip,
            "udp",
            "53",
            0,
            "DNS to a configured resolver",
        ),
        (c_web, &srv_ip, "udp", "123", 1, "NTP is rejected"),
        (
            c_web,
            &srv_ip,
            "tcp",
            "8080",
            1,
            "protected by acl 'db' line 1",
        ),
        (
            c_web,
            &srv_ip,
            "tcp",
            "80",
            0,
            "allowed by acl 'web' line 2",
        ),
        (c_web, &srv_ip, "tcp", "8081", 0, "no acl protects it"),
        (
            c_both,
            &srv_ip,
            "tcp",
            "8080",
            0,
            "allowed by acl 'db' line 1",
        ),
        (
            c_none,
            &srv_ip,
            "tcp",
            "80",
            1,
            "protected by acl 'web' line 2",
        ),
    ] {
        let (got, stdout, stderr) = check(c, addr, proto, port);
        assert_eq!(
            got,
            Some(code),
            "check {c} {addr} {proto}/{port}: {stdout}{stderr}"
        );
        assert!(
            stdout.contains(says),
            "check {c} {addr} {proto}/{port} should say {says:?}: {stdout}{stderr}"
        );
    }

    // A new key protects what it names from every container that does not name it.
    kv_put(&format!("{kv_path}admin"), &format!("{srv_ip}:tcp/8081"));
    eventually(&format!("{c_web} to be refused on tcp/8081"), || {
        fetch(c_web, &srv_ip, 8081) == Fetch::Refused
    });
    assert_traffic(c_web, &srv_ip, &[(80, true), (8080, false)], &[]);
    eventually(&format!("{c_both} to be refused on tcp/8081"), || {
        fetch(c_both, &srv_ip, 8081) == Fetch::Refused
    });
    assert_traffic(c_both, &srv_ip, &[(80, true), (8080, true)], &[]);
    assert_traffic(&free, &srv_ip, &everything_tcp, &[]);
    drop(agent);
}

/// protect × nft: see [`protect_scenario`].
#[test]
fn protect_nft_real_traffic() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    protect_scenario(Backend::Nft, "10.231.22");
}

/// protect × iptables: see [`protect_scenario`].
#[test]
fn protect_iptables_real_traffic() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    protect_scenario(Backend::Iptables, "10.231.23");
}

/// IPv6 × `backend`, allowlist, on a Docker network with IPv6 enabled (`docker network
/// create --ipv6`; dockerd 20.10 accepts it without `"ipv6": true` in daemon.json for a
/// user-defined network with an explicit /64, so no veth namespaces are needed).
///
/// The listener has `<subnet24>.10` and `<subnet64>10`; it serves tcp/80, 8080, 9005, 9011
/// and udp/5353, 5354 on both families. ACL `web` names the IPv6 address for tcp/80 (in
/// brackets) and udp/5353 (bare), the IPv6 /64 for the tcp range 9000-9010, and the IPv4
/// address for tcp/8080 only.
/// - over IPv6 the enabled container reaches tcp/80, tcp/9005 and udp/5353, and is refused on
///   tcp/8080, tcp/9011 and udp/5354;
/// - over IPv4 it reaches tcp/8080 and is refused on tcp/80 and udp/5353: each family only
///   gets what was written for it;
/// - a container that is not enabled reaches every port over IPv6;
/// - the rules are in the kernel as IPv6 set elements (nft) or ip6tables rules (iptables).
fn ipv6_scenario(backend: Backend, subnet24: &str, subnet64: &str) {
    let mut cleanup = Cleanup::new();
    let tag = unique(&format!("v6-{}", backend.flag()));
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network_v6(&mut cleanup, &net, subnet24, subnet64);
    let srv4 = format!("{subnet24}.10");
    let srv6 = format!("{subnet64}10");
    let srv = format!("{tag}-srv");
    listener_v6(
        &mut cleanup,
        &srv,
        &net,
        &srv4,
        &srv6,
        &[80, 8080, 9005, 9011],
    );
    let _udp = UdpResponder::start(&srv, &[5353, 5354]);
    kv_put(
        &format!("{kv_path}web"),
        &format!(
            "[{srv6}]:tcp/80\n{subnet64}/64:tcp/9000-9010\n{srv6}:udp/5353\n{srv4}:tcp/8080\n"
        ),
    );

    let free = format!("{tag}-free");
    client(&mut cleanup, &free, &net, &[]);
    let everything_tcp = [(80, true), (8080, true), (9005, true), (9011, true)];
    let everything_udp = [(5353, true), (5354, true)];
    assert_traffic(&free, &srv6, &everything_tcp, &everything_udp);

    let agent = AgentProc::start(&["-k", &kv_path, "--backend", backend.flag()]);
    agent.wait_log("reconciling running containers");
    let c = format!("{tag}-c");
    client(
        &mut cleanup,
        &c,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    wait_enforced(backend, &c, "allowlist acls=web");
    match backend {
        Backend::Nft => {
            let t = table(&c).expect("table");
            assert!(t.contains(&format!("{srv6} . tcp . 80")), "{t}");
            assert!(
                t.contains(&format!("{subnet64}/64 . tcp . 9000-9010")),
                "{t}"
            );
        }
        Backend::Iptables => {
            let t = iptables_filter(&c);
            for rule in [
                format!("-A EGRESSTRATOR-OUTPUT -d {srv6}/128 -p tcp -m tcp --dport 80 -j RETURN"),
                format!("-A EGRESSTRATOR-OUTPUT -d {subnet64}/64 -p tcp -m tcp --dport 9000:9010 -j RETURN"),
                format!("-A EGRESSTRATOR-OUTPUT -d {srv6}/128 -p udp -m udp --dport 5353 -j RETURN"),
            ] {
                assert!(t.contains(&rule), "missing {rule:?} in:\n{t}");
            }
        }
    }

    assert_traffic(
        &c,
        &srv6,
        &[(80, true), (9005, true), (8080, false), (9011, false)],
        &[(5353, true), (5354, false)],
    );
    assert_traffic(
        &c,
        &srv4,
        &[(8080, true), (80, false), (9005, false)],
        &[(5353, false)],
    );
    assert!(!enforced(backend, &free), "{free} is not enabled");
    assert_traffic(&free, &srv6, &everything_tcp, &everything_udp);

    // `check` decides IPv6 destinations the way the kernel did.
    let (code, stdout, _) = run_cli(&["-k", &kv_path, "check", &c, &srv6, "tcp", "80"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("allowed by acl 'web' line 1"), "{stdout}");
    let (code, stdout, _) = run_cli(&["-k", &kv_path, "check", &c, &srv6, "tcp", "8080"]);
    assert_eq!(code, Some(1), "{stdout}");
    drop(agent);
}

/// IPv6 × nft: see [`ipv6_scenario`].
#[test]
fn ipv6_nft_real_traffic() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    ipv6_scenario(Backend::Nft, "10.231.24", "fd00:231:24::");
}

/// IPv6 × iptables (ip6tables-restore): see [`ipv6_scenario`].
#[test]
fn ipv6_iptables_real_traffic() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    ipv6_scenario(Backend::Iptables, "10.231.25", "fd00:231:25::");
}

/// `check` and `explain` against a running, enforced container (allowlist, nft).
/// - `check` exits 0 for allow and 1 for deny, names the ACL and line that allowed, and
///   agrees with real traffic for every probe;
/// - `explain --format nft|iptables|json` prints the container's destinations in each
///   format; the JSON names the container and each destination's ACL and line;
/// - `explain --rules` on a container that is not enabled prints its would-be ruleset and
///   applies nothing.
#[test]
fn check_and_explain_match_real_traffic() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    let mut cleanup = Cleanup::new();
    let tag = unique("explain");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network(&mut cleanup, &net, "10.231.26");
    let srv_ip = "10.231.26.10";
    let srv = format!("{tag}-srv");
    listener(&mut cleanup, &srv, &net, srv_ip, &[80, 8080, 9005]);
    let _udp = UdpResponder::start(&srv, &[5353, 5354]);
    kv_put(
        &format!("{kv_path}web"),
        &format!("# line 1 is a comment\n{srv_ip}:tcp/80\n{srv_ip}/32:tcp/9000-9010\n"),
    );
    kv_put(
        &format!("{kv_path}udp"),
        &format!("# one udp port\n\n{srv_ip}:udp/5353\n"),
    );

    let agent = AgentProc::start(&["-k", &kv_path]);
    agent.wait_log("reconciling running containers");
    let c = format!("{tag}-c");
    client(
        &mut cleanup,
        &c,
        &net,
        &[
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web,udp",
        ],
    );
    wait_enforced(Backend::Nft, &c, "allowlist acls=web,udp");

    for (proto, port, code, says) in [
        ("tcp", 80, 0, "allowed by acl 'web' line 2"),
        ("tcp", 9005, 0, "allowed by acl 'web' line 3"),
        ("tcp", 8080, 1, "no acl allows it (default deny)"),
        ("udp", 5353, 0, "allowed by acl 'udp' line 3"),
        ("udp", 5354, 1, "no acl allows it (default deny)"),
    ] {
        let (got, stdout, stderr) = run_cli(&[
            "-k",
            &kv_path,
            "check",
            &c,
            srv_ip,
            proto,
            &port.to_string(),
        ]);
        let verdict = if code == 0 { "allow" } else { "deny" };
        assert_eq!(got, Some(code), "check {proto}/{port}: {stdout}{stderr}");
        assert_eq!(
            stdout.trim(),
            format!("{verdict}: {srv_ip} {proto}/{port}: {says}"),
            "check {proto}/{port}"
        );
        // The kernel agrees.
        match proto {
            "tcp" => assert_traffic(&c, srv_ip, &[(port, code == 0)], &[]),
            _ => assert_traffic(&c, srv_ip, &[], &[(port, code == 0)]),
        }
    }

    let explain = |format: &str, target: &str, rules: Option<&str>| {
        let mut args = vec![
            "-k",
            kv_path.as_str(),
            "explain",
            target,
            "--format",
            format,
        ];
        if let Some(r) = rules {
            args.extend_from_slice(&["--rules", r]);
        }
        let (code, stdout, stderr) = run_cli(&args);
        assert_eq!(code, Some(0), "explain --format {format}: {stderr}");
        stdout
    };
    let nft = explain("nft", &c, None);
    for needle in [
        format!("{srv_ip} . tcp . 80"),
        format!("{srv_ip} . tcp . 9000-9010"),
        format!("{srv_ip} . udp . 5353"),
        "posture allowlist acls web,udp".to_owned(),
    ] {
        assert!(
            nft.contains(&needle),
            "explain nft lacks {needle:?}:\n{nft}"
        );
    }
    let ipt = explain("iptables", &c, None);
    for needle in [
        format!("-A EGRESSTRATOR-OUTPUT -d {srv_ip}/32 -p tcp -m tcp --dport 80 -j RETURN"),
        format!("-A EGRESSTRATOR-OUTPUT -d {srv_ip}/32 -p tcp -m tcp --dport 9000:9010 -j RETURN"),
        format!("-A EGRESSTRATOR-OUTPUT -d {srv_ip}/32 -p udp -m udp --dport 5353 -j RETURN"),
    ] {
        assert!(
            ipt.contains(&needle),
            "explain iptables lacks {needle:?}:\n{ipt}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&explain("json", &c, None)).expect("explain json parses");
    assert_eq!(json["name"], c.as_str(), "{json:#}");
    assert_eq!(json["ruleset"]["posture"], "allowlist", "{json:#}");
    let allow: Vec<(String, String, u64)> = json["ruleset"]["allow"]
        .as_array()
        .expect("allow array")
        .iter()
        .map(|r| {
            (
                r["dest"]["net"].as_str().unwrap_or("").to_owned(),
                r["origin"]["acl"].as_str().unwrap_or("").to_owned(),
                r["origin"]["line"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let dest = format!("{srv_ip}/32");
    for (acl, line) in [("web", 2), ("web", 3), ("udp", 3)] {
        assert!(
            allow.contains(&(dest.clone(), acl.to_owned(), line)),
            "explain json lacks {dest} from acl {acl} line {line}: {json:#}"
        );
    }

    // explain applies nothing: a container that is not enabled stays untouched.
    let free = format!("{tag}-free");
    client(&mut cleanup, &free, &net, &[]);
    let nft = explain("nft", &free, Some("web"));
    assert!(nft.contains(&format!("{srv_ip} . tcp . 80")), "{nft}");
    assert_eq!(table(&free), None, "explain applied a table to {free}");
    assert_eq!(fetch(&free, srv_ip, 8080), body(8080));
    drop(agent);
}

/// allowlist: a container on a user-defined network resolves names through Docker's
/// embedded DNS server (127.0.0.11, the only resolver in its resolv.conf), which forwards
/// names it does not know to the container's upstream resolvers (`--dns`, else the host's)
/// **from inside the container's network namespace**, with the container's own address as
/// the source. DESIGN.md allows "DNS to its own resolvers"; those upstreams are the
/// container's resolvers in every sense that matters, so the forwarded query must pass.
///
/// Here the upstream is the test's own DNS responder (`--dns 10.231.27.10`, so no query
/// leaves the test's hosts). Without enforcement the container gets the answer; enforced,
/// it must still get it (container names, answered by the embedded server itself, resolve
/// either way).
///
/// Regression (both backends): the agent allowed only 127.0.0.11 (loopback anyway), so the
/// forwarded query to the upstream was rejected in the container's OUTPUT chain and every
/// name outside Docker failed to resolve ("connection timed out") on every user-defined
/// network in allowlist mode.
#[test]
fn allowlist_dns_through_dockers_embedded_resolver() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    let mut cleanup = Cleanup::new();
    let tag = unique("embedded-dns");
    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network(&mut cleanup, &net, "10.231.27");
    let upstream_ip = "10.231.27.10";
    let upstream = format!("{tag}-upstream");
    client(&mut cleanup, &upstream, &net, &["--ip", upstream_ip]);
    let _dns = UdpResponder::start(&upstream, &[53]);
    kv_put(&format!("{kv_path}web"), &format!("{upstream_ip}:tcp/80"));

    let free = format!("{tag}-free");
    client(&mut cleanup, &free, &net, &["--dns", upstream_ip]);
    // Through the embedded server, the upstream answers.
    assert_eq!(nslookup(&free, &["egresstrator.test"]), Resolve::Answered);

    let agent = AgentProc::start(&["-k", &kv_path]);
    agent.wait_log("reconciling running containers");
    let c = format!("{tag}-c");
    client(
        &mut cleanup,
        &c,
        &net,
        &[
            "--dns",
            upstream_ip,
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    wait_enforced(Backend::Nft, &c, "allowlist acls=web");
    // The embedded server itself is reachable: it answers a container name.
    let out = docker(&["exec", &c, "nslookup", "-type=a", &upstream]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(upstream_ip),
        "{c}: container name lookup: {out:?}"
    );
    // A name outside Docker: through 127.0.0.11 and its upstream.
    assert_eq!(
        nslookup(&c, &["egresstrator.test"]),
        Resolve::Answered,
        "{c}: a name outside Docker, through 127.0.0.11 and its upstream {upstream_ip}{}",
        agents_note()
    );
    drop(agent);
}

/// `clear` removes egresstrator's rules whichever backend put them there. README: "`clear`
/// removes only egresstrator's own table or chains"; both the `inet egresstrator` table and
/// the `EGRESSTRATOR-*` chains are egresstrator's own, so removing both harms no other tool.
///
/// Two containers that are not enabled (so no agent is involved) are restricted with
/// `set --rules web`, one with nft and one with iptables, and then cleared with the other
/// backend's flag (`clear --backend iptables` and a plain `clear`). Both `clear`s exit 0 and
/// log "egress rules cleared"; afterwards both containers must be unrestricted.
///
/// Regression: `clear` removed only the objects of the backend it was given, so each
/// container kept the other backend's rules and stayed restricted although `clear` reported
/// success.
#[test]
fn clear_removes_rules_of_either_backend() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("clear-any", 28, &[80, 8080], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));

    let mut failures = Vec::new();
    for (applied, cleared) in [
        (Backend::Nft, Backend::Iptables),
        (Backend::Iptables, Backend::Nft),
    ] {
        let c = format!("{tag}-{}", applied.flag());
        client(&mut s.cleanup, &c, &net, &[]);
        let (code, _, stderr) = run_cli(&[
            "-k",
            &kv_path,
            "--backend",
            applied.flag(),
            "set",
            &c,
            "--rules",
            "web",
        ]);
        assert_eq!(code, Some(0), "set --backend {}: {stderr}", applied.flag());
        assert!(enforced(applied, &c));
        assert_traffic(&c, srv_ip, &[(80, true), (8080, false)], &[]);

        let (code, _, stderr) =
            run_cli(&["-k", &kv_path, "--backend", cleared.flag(), "clear", &c]);
        assert_eq!(
            code,
            Some(0),
            "clear --backend {}: {stderr}",
            cleared.flag()
        );
        // Both directions are tried before failing, so the message covers both.
        let got = fetch(&c, srv_ip, 8080);
        if got != body(8080) || enforced(Backend::Nft, &c) || enforced(Backend::Iptables, &c) {
            failures.push(format!(
                "{c}: restricted with --backend {}, cleared with --backend {}: tcp/8080 gives \
                 {got:?}, expected {:?}{}",
                applied.flag(),
                cleared.flag(),
                body(8080),
                state_note(&c)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The agent, restarted with the other `--backend`, replaces what the previous backend put in
/// the containers' namespaces: the current policy is what is in force afterwards.
///
/// An agent with nft enforces a container (ACL `web` = listener:tcp/80, so tcp/8080 is
/// refused) and stops; `web` gains tcp/8080; an agent with `--backend iptables` starts and
/// enforces the container with chains that allow tcp/8080. The container must now reach
/// tcp/8080.
///
/// Regression: the iptables backend never removed the `inet egresstrator` table the nft
/// backend left, so the stale table kept refusing tcp/8080 (and would have kept enforcing
/// every later policy's predecessor) while the agent logged "container enforced". The same
/// held the other way round (iptables chains left under an nft agent).
#[test]
fn agent_restarted_with_other_backend_replaces_old_rules() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    wait_for_quiet_host();
    let mut s = Scene::new("switch", 29, &[80, 8080], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));
    let c = format!("{tag}-c");
    client(
        &mut s.cleanup,
        &c,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );

    let nft_agent = AgentProc::start(&["-k", &kv_path]);
    wait_enforced(Backend::Nft, &c, "allowlist acls=web");
    assert_traffic(&c, srv_ip, &[(80, true), (8080, false)], &[]);
    drop(nft_agent);

    kv_put(
        &format!("{kv_path}web"),
        &format!("{srv_ip}:tcp/80\n{srv_ip}:tcp/8080"),
    );
    let ipt_agent = AgentProc::start(&["-k", &kv_path, "--backend", "iptables"]);
    wait_iptables(&c, "the iptables agent's chains", |t| {
        t.contains(&format!(
            "-A EGRESSTRATOR-OUTPUT -d {srv_ip}/32 -p tcp -m tcp --dport 8080 -j RETURN"
        ))
    });
    assert_eq!(
        fetch(&c, srv_ip, 8080),
        body(8080),
        "{c}: the current policy allows tcp/8080{}",
        state_note(&c)
    );
    assert_eq!(
        table(&c),
        None,
        "{c}: the nft backend's table is still there"
    );
    drop(ipt_agent);
}

// ---------------------------------------------------------------------------------------------
// Helpers: IPv6 networks, UDP traffic, commands inside a container's namespace, iptables
// state. (Candidates for common.rs.)

/// A user-defined network with IPv6 enabled: the /24 `subnet24` (e.g. `10.231.24`) and the
/// /64 `subnet64` (e.g. `fd00:231:24::`).
fn network_v6(cleanup: &mut Cleanup, name: &str, subnet24: &str, subnet64: &str) {
    let _ = docker(&["network", "rm", name]);
    docker_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        &format!("{subnet24}.0/24"),
        "--subnet",
        &format!("{subnet64}/64"),
        name,
    ]);
    cleanup.networks.push(name.to_owned());
}

/// Like [`listener`], with both an IPv4 and an IPv6 address (on a [`network_v6`] network);
/// waits until every port answers on both loopbacks.
fn listener_v6(
    cleanup: &mut Cleanup,
    name: &str,
    network: &str,
    ip: &str,
    ip6: &str,
    ports: &[u16],
) {
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
        "--ip6",
        ip6,
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    cleanup.containers.push(name.to_owned());
    for p in ports {
        for addr in ["127.0.0.1", "::1"] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(fetch(name, addr, *p), Fetch::Body(_)) {
                assert!(
                    Instant::now() < deadline,
                    "listener {name} never served port {p} on {addr}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Runs `sh -c cmd` with the host's tools inside a container's network namespace only
/// (`nsenter --net`), as another firewall tool on the host would; panics with its stderr
/// unless it succeeds; returns stdout.
fn ns_sh_ok(container: &str, cmd: &str) -> String {
    let pid = container_pid(container);
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["sh", "-c", cmd])
        .output()
        .expect("spawn nsenter");
    assert!(
        out.status.success(),
        "in the netns of {container}: `{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `filter` table of a container's namespace as `iptables-save` then `ip6tables-save`
/// print it, without comment lines and packet counters, so two dumps compare equal.
fn iptables_filter(container: &str) -> String {
    let text = ns_sh_ok(
        container,
        "iptables-save -t filter 2>/dev/null; ip6tables-save -t filter 2>/dev/null",
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            // `:CHAIN POLICY [pkts:bytes]`: keep the chain and policy, not the counters.
            Some(chain) => format!(":{}", chain.split(" [").next().unwrap_or(chain)),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `pred` holds for [`iptables_filter`] of the container, up to 20 s.
fn wait_iptables(name: &str, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = iptables_filter(name);
        if pred(&t) {
            return;
        }
        if Instant::now() > deadline {
            panic!("container {name}: timed out waiting for {what}; iptables now:\n{t}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The IPv4 address every [`UdpResponder`] answer carries.
const UDP_ANSWER: &str = "192.0.2.53";

/// UDP servers inside a container's network namespace, one per port, IPv4 and IPv6: each
/// datagram is answered with a DNS response whose A record is [`UDP_ANSWER`]. Stopped when
/// dropped.
///
/// busybox in the test image has no UDP server (its `nc` lacks `-u`), so the sockets are made
/// by this process on a dedicated thread that entered the container's namespace
/// (`egresstrator::netns::run_in_netns`); a socket stays in the namespace it was made in. The
/// client side is busybox `nslookup` inside the client container (see [`resolve`]).
struct UdpResponder {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpResponder {
    fn start(container: &str, ports: &[u16]) -> Self {
        let path = PathBuf::from(format!("/proc/{}/ns/net", container_pid(container)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let socket = egresstrator::netns::run_in_netns(&path, move || {
                // Dual-stack where the namespace has IPv6, IPv4 only otherwise.
                Ok(UdpSocket::bind(("::", port)).or_else(|_| UdpSocket::bind(("0.0.0.0", port))))
            })
            .unwrap_or_else(|e| panic!("entering the netns of {container}: {e}"))
            .unwrap_or_else(|e| panic!("binding udp/{port} in the netns of {container}: {e}"));
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("read timeout");
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&dns_answer(&buf[..n]), from);
                    }
                }
            }));
        }
        UdpResponder { stop, threads }
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A DNS response to `query`: the question echoed, and for an A question one A record,
/// [`UDP_ANSWER`]. Anything too short to be a query is echoed back as it is.
fn dns_answer(query: &[u8]) -> Vec<u8> {
    if query.len() < 12 {
        return query.to_vec();
    }
    let mut end = 12;
    while end < query.len() && query[end] != 0 {
        end += 1 + usize::from(query[end]);
    }
    // The name's final zero, then QTYPE and QCLASS.
    let end = (end + 5).min(query.len());
    let is_a = end >= 16 && query[end - 4..end - 2] == [0, 1];
    let mut r = query[..2].to_vec();
    // QR, RD, RA; one question; one answer for A.
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    r.extend_from_slice(&query[12..end]);
    if is_a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 53]);
    }
    r
}

/// What a UDP exchange from inside a container gave.
#[derive(Debug, PartialEq, Eq)]
enum Resolve {
    /// The [`UdpResponder`] answered.
    Answered,
    /// The datagram was rejected on the way out (`sendto` failed with EPERM).
    Refused,
    Other(String),
}

/// Sends a DNS query for an A record with busybox `nslookup` from inside `container` to
/// `server` (IPv4 or IPv6) on UDP `port`.
fn resolve(container: &str, server: &str, port: u16) -> Resolve {
    let server = if server.contains(':') {
        format!("[{server}]:{port}")
    } else {
        format!("{server}:{port}")
    };
    nslookup(container, &["egresstrator.test", &server])
}

/// Runs busybox `nslookup -type=a ARGS…` inside `container`.
fn nslookup(container: &str, args: &[&str]) -> Resolve {
    let mut all = vec!["exec", container, "nslookup", "-type=a"];
    all.extend_from_slice(args);
    let out = docker(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() && stdout.contains(UDP_ANSWER) {
        Resolve::Answered
    } else if stderr.contains("Operation not permitted") {
        Resolve::Refused
    } else {
        Resolve::Other(format!(
            "rc={:?} stdout={stdout:?} stderr={stderr:?}",
            out.status.code()
        ))
    }
}

/// TCP flag bits for [`raw_tcp`].
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Sends one bare TCP segment with `flags` (no payload, zero checksum) to `dst:port` through a
/// raw socket opened inside `container`'s network namespace; returns the errno `sendto` gave.
/// A segment the namespace's firewall rejects fails with EPERM; the test only needs that
/// verdict, so the listener (which drops the bad checksum) never answers.
///
/// busybox cannot send a connection-opening segment without SYN, so this is the only way to
/// show protect mode's non-SYN rule on real packets.
fn raw_tcp(container: &str, dst: std::net::Ipv4Addr, port: u16, flags: u8) -> Result<(), i32> {
    let path = PathBuf::from(format!("/proc/{}/ns/net", container_pid(container)));
    egresstrator::netns::run_in_netns(&path, move || Ok(raw_tcp_here(dst, port, flags)))
        .unwrap_or_else(|e| panic!("entering the netns of {container}: {e}"))
}

fn raw_tcp_here(dst: std::net::Ipv4Addr, port: u16, flags: u8) -> Result<(), i32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    // SAFETY: socket(2) has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut segment = [0u8; 20];
    // A fresh source port per probe: a segment on the tuple of an earlier probe would be
    // judged against that flow's conntrack state instead of opening a new one.
    static SOURCE_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(40_000);
    let sport = SOURCE_PORT.fetch_add(1, Ordering::Relaxed);
    segment[0..2].copy_from_slice(&sport.to_be_bytes());
    segment[2..4].copy_from_slice(&port.to_be_bytes());
    segment[4..8].copy_from_slice(&1u32.to_be_bytes());
    if flags & TCP_ACK != 0 {
        segment[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    segment[12] = 5 << 4; // header length: five 32-bit words
    segment[13] = flags;
    segment[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            segment.as_ptr().cast(),
            segment.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}
