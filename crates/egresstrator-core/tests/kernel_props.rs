//! Property tests against the real kernel, each case in a throwaway namespace (`unshare -n`).
//!
//! 1. Random valid ACL sets (IPv4/IPv6 CIDRs in every spelling, TCP/UDP, single ports and
//!    ranges, service references, both modes, audit on or off, random resolvers and DNS allow
//!    lists) compile,
//!    and what they render is accepted by `nft -c -f`, `iptables-restore --test --noflush`
//!    and `ip6tables-restore --test --noflush`, and then really loads.
//! 2. The pure [`decide`] agrees with the kernel. The rendered nft ruleset is loaded, and for
//!    random (address, protocol, port) probes the kernel is asked for set membership
//!    (`get element inet egresstrator allow4 { ADDR . tcp . PORT }`, and deny/dns sets where
//!    the chain consults them). The kernel's verdict is then computed from membership in the
//!    order of the chain's rules, and compared with `decide()`. The test also checks that the
//!    loaded chain's set-consulting rules are exactly the ones this model assumes.
//!
//! Probes are batched through one `nft -i` per namespace. `nft -f` with many `get element`
//! commands stops at the first miss, and one `get element` of several elements fails as a
//! whole on any miss; interactive mode instead runs each line as its own command and carries
//! on after an error. A hit prints the matching element on stdout; a miss prints
//! `Error: Could not process rule: No such file or directory` followed by the command line
//! itself on stderr. Commands are unique, so the misses are exactly the commands echoed on
//! stderr, and the hit count is cross-checked against stdout. One `nft -i` answers hundreds of
//! lookups in tens of milliseconds on small sets (each command re-reads the cache, so it slows
//! down with very large sets; the random sets here are small), where one `nft` process per
//! lookup costs a few milliseconds each.
//!
//! 32 cases per property by default; set `EGRESSTRATOR_PROP_CASES` for more.

// Test code: a panic is how a test fails (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use egresstrator_core::acl::{parse_acl_list, parse_service_ref};
use egresstrator_core::policy::{
    compile, decide, default_dns_allow, Mode, PolicyInput, ServiceTable, Verdict, WorkloadPolicy,
};
use egresstrator_core::render::{iptables, nft};
use egresstrator_core::{AclTable, Posture, Proto, Ruleset};
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const TOOLS: &[&str] = &["nft", "iptables-restore", "ip6tables-restore"];
const ACL_NAMES: &[&str] = &["a0", "a1", "a2", "a3", "a4"];

fn config() -> Config {
    let cases = std::env::var("EGRESSTRATOR_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Debug)]
struct Scenario {
    mode: Mode,
    audit: bool,
    acls: Vec<(String, String)>,
    services: Vec<(String, Vec<SocketAddr>)>,
    workload: Vec<String>,
    resolvers: Vec<IpAddr>,
    dns_allow: Option<Vec<IpNet>>,
    probes: Vec<ProbeSeed>,
}

/// A probe before it is placed: `inside` picks an address in one of the ruleset's networks.
#[derive(Clone, Debug)]
struct ProbeSeed {
    inside: bool,
    pick: usize,
    offset: u128,
    tcp: bool,
    port_mode: u8,
    port: u16,
    random_addr: IpAddr,
}

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => any::<u16>().prop_map(|l| Ipv4Addr::from(0x0a00_0000 | u32::from(l))),
        2 => any::<u8>().prop_map(|l| Ipv4Addr::new(192, 0, 2, l)),
        1 => any::<u32>()
            .prop_filter("not loopback", |a| a >> 24 != 127)
            .prop_map(Ipv4Addr::from),
    ]
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        4 => (any::<u16>(), any::<u16>())
            .prop_map(|(a, b)| Ipv6Addr::new(0x2001, 0xdb8, 0, a & 0xf, 0, 0, 0, b)),
        2 => any::<u128>().prop_map(|x| Ipv6Addr::from((0xfd00u128 << 112) | (x >> 16))),
        1 => any::<u128>()
            .prop_filter("not loopback", |x| *x != 1)
            .prop_map(Ipv6Addr::from),
        1 => any::<u16>().prop_map(|l| Ipv4Addr::from(0x0a00_0000 | u32::from(l)).to_ipv6_mapped()),
    ]
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![3 => v4().prop_map(IpAddr::V4), 2 => v6().prop_map(IpAddr::V6)]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![53u16, 80, 123, 443, 5432, 8080, 65535]),
        2 => 1u16..1100,
        1 => 1u16..=65535,
    ]
}

fn ports() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => port().prop_map(|p| p.to_string()),
        2 => (port(), 0u16..2000).prop_map(|(lo, span)| {
            format!("{lo}-{}", lo.saturating_add(span))
        }),
    ]
}

fn proto_text() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["tcp", "tcp", "udp", "udp", "TCP"])
}

/// One network line in any accepted spelling, host bits sometimes set.
fn net_line() -> impl Strategy<Value = String> {
    let v4_line = (
        v4(),
        prop_oneof![1 => Just(0u8), 2 => 8u8..=16, 6 => 16u8..=32],
        any::<bool>(),
        proto_text(),
        ports(),
    )
        .prop_map(|(a, len, bare, p, ports)| {
            if len == 32 && bare {
                format!("{a}:{p}/{ports}")
            } else {
                format!("{a}/{len}:{p}/{ports}")
            }
        });
    let v6_line = (
        v6(),
        prop_oneof![1 => Just(0u8), 2 => 16u8..=64, 6 => 48u8..=128],
        0u8..4,
        proto_text(),
        ports(),
    )
        .prop_map(|(a, len, form, p, ports)| match form {
            0 => format!("[{a}/{len}]:{p}/{ports}"),
            1 => format!("[{a}]/{len}:{p}/{ports}"),
            2 if len == 128 => format!("[{a}]:{p}/{ports}"),
            _ => format!("{a}/{len}:{p}/{ports}"),
        });
    prop_oneof![3 => v4_line, 2 => v6_line]
}

/// An ACL value: network lines, sometimes a service reference, comments and blank lines.
fn acl_value(index: usize) -> impl Strategy<Value = (String, Option<(String, Vec<SocketAddr>)>)> {
    (
        prop::collection::vec(net_line(), 0..8),
        prop::option::weighted(0.3, prop::collection::vec((addr(), 1u16..=65535), 0..3)),
        any::<bool>(),
    )
        .prop_map(move |(lines, service, comment)| {
            let mut text = String::new();
            if comment {
                text.push_str("# generated\n\n");
            }
            for l in lines {
                text.push_str(&l);
                text.push('\n');
            }
            let service = service.map(|instances| {
                let name = format!("prod.svc{index}@dc1");
                text.push_str(&name);
                text.push_str("  # a service\n");
                let addrs = instances
                    .into_iter()
                    .map(|(a, p)| SocketAddr::new(a, p))
                    .collect();
                (name, addrs)
            });
            (text, service)
        })
}

fn dns_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (v4(), 8u8..=32).prop_map(|(a, l)| IpNet::new(IpAddr::V4(a), l).expect("len").trunc()),
        (v6(), 16u8..=128).prop_map(|(a, l)| IpNet::new(IpAddr::V6(a), l).expect("len").trunc()),
    ]
}

fn probe_seed() -> impl Strategy<Value = ProbeSeed> {
    (
        any::<bool>(),
        any::<usize>(),
        any::<u128>(),
        any::<bool>(),
        0u8..3,
        port(),
        addr(),
    )
        .prop_map(
            |(inside, pick, offset, tcp, port_mode, port, random_addr)| ProbeSeed {
                inside,
                pick,
                offset,
                tcp,
                port_mode,
                port,
                random_addr,
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let acls =
        (1usize..=ACL_NAMES.len()).prop_flat_map(|n| (0..n).map(acl_value).collect::<Vec<_>>());
    (
        prop_oneof![Just(Mode::Allowlist), Just(Mode::Protect)],
        acls,
        prop::collection::vec(any::<bool>(), ACL_NAMES.len()),
        prop::collection::vec(addr(), 0..3),
        prop::option::of(prop::collection::vec(dns_net(), 0..3)),
        prop::collection::vec(probe_seed(), 64),
        any::<bool>(),
    )
        .prop_map(
            |(mode, values, named, resolvers, dns_allow, probes, audit)| {
                let mut acls = Vec::new();
                let mut services = Vec::new();
                for (i, (text, service)) in values.into_iter().enumerate() {
                    acls.push((ACL_NAMES[i].to_owned(), text));
                    services.extend(service);
                }
                let workload = acls
                    .iter()
                    .zip(&named)
                    .filter(|(_, n)| **n)
                    .map(|((name, _), _)| name.clone())
                    .collect();
                Scenario {
                    mode,
                    audit,
                    acls,
                    services,
                    workload,
                    resolvers,
                    dns_allow,
                    probes,
                }
            },
        )
}

fn compile_scenario(s: &Scenario) -> Result<Ruleset, TestCaseError> {
    let table = AclTable::parse(s.acls.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut services = ServiceTable::new();
    for (name, addrs) in &s.services {
        services.insert(parse_service_ref(name).expect("service ref"), addrs.clone());
    }
    let dns_allow = s.dns_allow.clone().unwrap_or_else(default_dns_allow);
    let input = PolicyInput {
        mode: s.mode,
        acls: &table,
        services: &services,
        dns_allow: &dns_allow,
    };
    let workload = WorkloadPolicy {
        acls: parse_acl_list(&s.workload.join(",")).expect("names"),
        resolvers: s.resolvers.clone(),
    };
    compile(&workload, &input)
        .map(|c| Ruleset {
            audit: s.audit,
            ..c.ruleset
        })
        .map_err(|e| TestCaseError::fail(format!("valid scenario did not compile: {e}")))
}

// ---------------------------------------------------------------------------------------
// Probes

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    addr: IpAddr,
    proto: Proto,
    port: u16,
}

/// Places the seeds: half inside a random rule's (or resolver's) network, at, next to or
/// away from its ports; the rest anywhere. Loopback is left out (the chain's `oifname "lo"`
/// rule is not a set lookup).
fn place(r: &Ruleset, seeds: &[ProbeSeed]) -> Vec<Probe> {
    let mut targets: Vec<(IpNet, Proto, u16, u16)> = r
        .allow
        .iter()
        .chain(&r.deny)
        .map(|rule| {
            let d = rule.dest;
            (d.net, d.proto, d.ports.low, d.ports.high)
        })
        .collect();
    targets.extend(r.dns.iter().map(|n| (*n, Proto::Udp, 53, 53)));
    let mut out = Vec::new();
    for s in seeds {
        let proto = if s.tcp { Proto::Tcp } else { Proto::Udp };
        let probe = if s.inside && !targets.is_empty() {
            let (net, p, low, high) = targets[s.pick % targets.len()];
            let port = match s.port_mode {
                0 => low + (s.port % (high - low).saturating_add(1).max(1)),
                1 if s.tcp => low.saturating_sub(1).max(1),
                1 => high.saturating_add(1),
                _ => s.port,
            };
            Probe {
                addr: addr_in(net, s.offset),
                proto: if s.pick % 2 == 0 { p } else { proto },
                port,
            }
        } else {
            Probe {
                addr: s.random_addr,
                proto,
                port: s.port,
            }
        };
        // A connection to `::ffff:a.b.c.d` leaves as IPv4: that is the packet the kernel
        // filters (decide() canonicalizes the same way).
        let probe = Probe {
            addr: probe.addr.to_canonical(),
            ..probe
        };
        if !probe.addr.is_loopback() {
            out.push(probe);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn addr_in(net: IpNet, offset: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host_bits = 32 - u32::from(n.prefix_len());
            let mask = if host_bits == 32 {
                u32::MAX
            } else {
                (1u32 << host_bits) - 1
            };
            IpAddr::V4(Ipv4Addr::from(
                u32::from(n.network()) | (offset as u32 & mask),
            ))
        }
        IpNet::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix_len());
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (offset & mask)))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The kernel's view

fn family_suffix(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "4",
        IpAddr::V6(_) => "6",
    }
}

fn set_query(set: &str, p: &Probe) -> String {
    format!(
        "get element inet egresstrator {set}{} {{ {} . {} . {} }}",
        family_suffix(p.addr),
        p.addr,
        p.proto,
        p.port
    )
}

fn dns_query(p: &Probe) -> String {
    format!(
        "get element inet egresstrator dns{} {{ {} }}",
        family_suffix(p.addr),
        p.addr
    )
}

/// The commands the chain's set lookups need for one probe.
fn queries(posture: Posture, p: &Probe) -> Vec<String> {
    let mut q = vec![set_query("allow", p)];
    if posture == Posture::Protect {
        q.push(set_query("deny", p));
    }
    if p.port == 53 {
        q.push(dns_query(p));
    }
    q
}

/// The chain's verdict for a new connection, from set membership, rule by rule (see the
/// rule lists in `expected_set_rules`).
fn kernel_verdict(posture: Posture, p: &Probe, member: &dyn Fn(&str) -> bool) -> Verdict {
    let allow = || member(&set_query("allow", p));
    match posture {
        Posture::DenyAll => Verdict::Deny,
        Posture::Allowlist => {
            if (p.port == 53 && member(&dns_query(p))) || allow() {
                Verdict::Allow
            } else {
                Verdict::Deny
            }
        }
        Posture::Protect => {
            if p.proto == Proto::Udp && p.port == 53 {
                return if member(&dns_query(p)) {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
            }
            if p.proto == Proto::Udp && p.port == 123 {
                return Verdict::Deny;
            }
            if allow() {
                Verdict::Allow
            } else if member(&set_query("deny", p)) {
                Verdict::Deny
            } else {
                Verdict::Allow
            }
        }
    }
}

/// The rules of the loaded `output` chain that decide a new TCP SYN or first UDP datagram to
/// a non-loopback address, as `nft list` prints them: the order `kernel_verdict` follows.
fn expected_set_rules(posture: Posture) -> Vec<&'static str> {
    match posture {
        Posture::DenyAll => vec!["goto refuse"],
        Posture::Allowlist => vec![
            "meta l4proto { tcp, udp } th dport 53 ip daddr @dns4 accept",
            "meta l4proto { tcp, udp } th dport 53 ip6 daddr @dns6 accept",
            "ip daddr . meta l4proto . th dport @allow4 accept",
            "ip6 daddr . meta l4proto . th dport @allow6 accept",
            "goto refuse",
        ],
        Posture::Protect => vec![
            "udp dport 53 ip daddr @dns4 accept",
            "udp dport 53 ip6 daddr @dns6 accept",
            "udp dport 53 goto refuse",
            "udp dport 123 goto refuse",
            "ip daddr . meta l4proto . th dport @allow4 accept",
            "ip6 daddr . meta l4proto . th dport @allow6 accept",
            "ip daddr . meta l4proto . th dport @deny4 goto refuse",
            "ip6 daddr . meta l4proto . th dport @deny6 goto refuse",
        ],
    }
}

const MARKER: &str = "@@@ probes @@@";

// ---------------------------------------------------------------------------------------
// Properties

#[test]
fn random_acl_sets_render_to_scripts_the_kernel_accepts() {
    if !common::kernel_ready(
        "random_acl_sets_render_to_scripts_the_kernel_accepts",
        TOOLS,
    ) {
        return;
    }
    let dir = common::TempDir::new("egt-core-props");
    let script = r#"
        nft -c -f "$1" || { echo "nft -c rejected it" >&2; exit 1; }
        iptables-restore --test --noflush < "$2" || { echo "iptables-restore --test rejected it" >&2; exit 1; }
        ip6tables-restore --test --noflush < "$3" || { echo "ip6tables-restore --test rejected it" >&2; exit 1; }
        nft -f "$1" || exit 1
        iptables-restore --noflush < "$2" || { echo "iptables-restore rejected it" >&2; exit 1; }
        ip6tables-restore --noflush < "$3" || { echo "ip6tables-restore rejected it" >&2; exit 1; }
    "#;
    let start = std::time::Instant::now();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&scenario(), |s| {
        let r = compile_scenario(&s)?;
        let ipt = iptables::render(&r, iptables::Jump::Missing);
        let rendered = nft::render(&r);
        let files = [
            dir.write("rules.nft", &rendered),
            dir.write("v4.txt", &ipt.v4),
            dir.write("v6.txt", &ipt.v6),
        ];
        let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
        let out = common::unshare_sh(script, &refs);
        prop_assert!(
            out.status.success(),
            "kernel rejected a rendering:\n{}\nnft:\n{rendered}\niptables v4:\n{}\niptables v6:\n{}",
            String::from_utf8_lossy(&out.stderr),
            ipt.v4,
            ipt.v6
        );
        Ok(())
    });
    eprintln!("{} cases in {:?}", runner.config().cases, start.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn decide_agrees_with_kernel_set_membership() {
    if !common::kernel_ready("decide_agrees_with_kernel_set_membership", &["nft"]) {
        return;
    }
    let dir = common::TempDir::new("egt-core-props");
    let script = format!(
        r#"
        nft -f "$1" || {{ echo "nft -f rejected the ruleset" >&2; exit 3; }}
        nft list chain inet egresstrator output || exit 4
        echo '{MARKER}'
        exec nft -i < "$2"
    "#
    );
    let start = std::time::Instant::now();
    // The runner takes a `Fn`: counters live in cells.
    let lookups = std::cell::Cell::new(0usize);
    let verdicts: std::cell::RefCell<BTreeMap<&'static str, usize>> = Default::default();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&scenario(), |s| {
        let r = compile_scenario(&s)?;
        let probes = place(&r, &s.probes);
        let commands: BTreeSet<String> =
            probes.iter().flat_map(|p| queries(r.posture, p)).collect();
        let batch: String = commands.iter().map(|c| format!("{c}\n")).collect();
        let rendered = nft::render(&r);
        let files = [
            dir.write("rules.nft", &rendered),
            dir.write("probes.txt", &batch),
        ];
        let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
        let out = common::unshare_sh(&script, &refs);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(
            out.status.success(),
            "namespace script failed: {stderr}\n{rendered}"
        );
        let (chain, answers) = stdout
            .split_once(MARKER)
            .ok_or_else(|| TestCaseError::fail(format!("no marker in output: {stdout}")))?;

        // The loaded chain consults the sets in exactly the order kernel_verdict assumes.
        let set_rules: Vec<&str> = chain
            .lines()
            .map(str::trim)
            .filter(|l| l.contains('@') || l.contains("dport") || *l == "goto refuse")
            .collect();
        prop_assert_eq!(set_rules, expected_set_rules(r.posture));

        // Misses: every stderr error must be a lookup miss, followed by its command.
        let mut missed = BTreeSet::new();
        let mut lines = stderr.lines();
        while let Some(line) = lines.next() {
            if line.starts_with("Error:") {
                prop_assert_eq!(
                    line,
                    "Error: Could not process rule: No such file or directory",
                    "unexpected nft error: {}",
                    stderr
                );
                let cmd = lines.next().unwrap_or_default();
                prop_assert!(
                    commands.contains(cmd),
                    "error for unknown command {:?}",
                    cmd
                );
                missed.insert(cmd.to_owned());
            } else {
                prop_assert!(
                    line.is_empty() || line.chars().all(|c| c == '^' || c == ' '),
                    "unexpected stderr line {:?}",
                    line
                );
            }
        }
        let hits = answers
            .lines()
            .filter(|l| l.starts_with("table inet egresstrator"))
            .count();
        prop_assert_eq!(hits, commands.len() - missed.len(), "stdout: {}", answers);
        lookups.set(lookups.get() + commands.len());

        let member = |cmd: &str| commands.contains(cmd) && !missed.contains(cmd);
        for p in &probes {
            let kernel = kernel_verdict(r.posture, p, &member);
            let spec = decide(&r, p.addr, p.proto, p.port);
            *verdicts
                .borrow_mut()
                .entry(match spec.verdict {
                    Verdict::Allow => "allow",
                    Verdict::Deny => "deny",
                })
                .or_default() += 1;
            prop_assert_eq!(
                kernel,
                spec.verdict,
                "{} {}:{}: kernel {:?}, decide() {:?} ({})\nruleset:\n{}",
                p.proto,
                p.addr,
                p.port,
                kernel,
                spec.verdict,
                spec.reason,
                rendered
            );
        }
        Ok(())
    });
    let verdicts = verdicts.into_inner();
    eprintln!(
        "{} cases, {} kernel lookups, decide() verdicts {verdicts:?}, in {:?}",
        runner.config().cases,
        lookups.get(),
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // The bias must make both verdicts common, or the property says little.
    let (allow, deny) = (
        verdicts.get("allow").copied(),
        verdicts.get("deny").copied(),
    );
    let (allow, deny) = (allow.unwrap_or(0), deny.unwrap_or(0));
    assert!(
        allow * 5 > allow + deny && deny * 5 > allow + deny,
        "verdicts too one-sided: {verdicts:?}"
    );
}
