//! Policy compile plus both renderers, checked against `decide()`.
//!
//! Input: a golden case's `input.txt` (header, then `=== acl NAME` sections), so the golden
//! inputs seed it as they are. A compile error fails the workload closed, as the agent does.
//!
//! Checked for every ruleset:
//! - rendering is deterministic (same text, same hash);
//! - `merge::disjoint` keeps exactly the same (address, protocol, port) triples and its
//!   elements never overlap (nft refuses overlapping interval elements);
//! - for probes at every edge of every destination, the rendered nft script and both
//!   iptables scripts (read by the interpreters in src/lib.rs) let through exactly what
//!   `decide()` says passes;
//! - deny-all denies every non-loopback probe, audited or not;
//! - in allowlist mode every destination of a named ACL is allowed; in protect mode every
//!   destination of an ACL the workload does not name is denied unless a named one allows it.
#![no_main]

use egresstrator_core::acl::{parse_acl_list, parse_service_ref, Entry};
use egresstrator_core::merge::{disjoint, Family};
use egresstrator_core::policy::{
    compile, decide, default_dns_allow, Mode, PolicyInput, Reason, ServiceTable, Verdict,
    WorkloadPolicy,
};
use egresstrator_core::render::{self, guard, iptables, nft};
use egresstrator_core::{AclTable, Dest, Posture, Ruleset};
use egresstrator_fuzz::{edge_probes, overlap, parse_case, IptScript, NftTable, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let case = parse_case(text);
    let table = AclTable::parse(case.acls.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut services = ServiceTable::new();
    for (r, addrs) in &case.services {
        if let Ok(sref) = parse_service_ref(r) {
            services.insert(sref, addrs.clone());
        }
    }
    let dns_allow = case.dns_allow.clone().unwrap_or_else(default_dns_allow);
    let input = PolicyInput {
        mode: case.mode,
        acls: &table,
        services: &services,
        dns_allow: &dns_allow,
    };
    let compiled = parse_acl_list(&case.workload).ok().and_then(|acls| {
        let workload = WorkloadPolicy {
            acls,
            resolvers: case.resolvers.clone(),
        };
        compile(&workload, &input).ok().map(|c| (workload, c))
    });
    let mut ruleset = match &compiled {
        Some((_, c)) => c.ruleset.clone(),
        None => Ruleset::deny_all(),
    };
    ruleset.audit = case.audit;
    check(&ruleset, &case.probes);

    // The ACLs' own meaning, independent of the ruleset's shape.
    if let Some((workload, _)) = &compiled {
        let named = |n: &str| workload.acls.iter().any(|a| a.as_str() == n);
        for (name, acl) in table.iter() {
            let Ok(acl) = acl else { continue };
            for line in acl.lines.iter().take(32) {
                let Entry::Net(d) = &line.entry else { continue };
                for addr in [d.net.network(), d.net.broadcast()] {
                    for port in [d.ports.low, d.ports.high] {
                        let v = decide(&ruleset, addr, d.proto, port);
                        if matches!(
                            v.reason,
                            Reason::Loopback | Reason::Dns | Reason::DnsNotAllowed | Reason::Ntp
                        ) {
                            continue;
                        }
                        match case.mode {
                            Mode::Allowlist if named(name) => {
                                assert_eq!(
                                    v.verdict,
                                    Verdict::Allow,
                                    "{name} {d} {addr} {port}: {v:?}"
                                )
                            }
                            Mode::Protect if !named(name) => {
                                let granted = ruleset
                                    .allow
                                    .iter()
                                    .any(|r| r.dest.matches(addr.to_canonical(), d.proto, port));
                                if !granted {
                                    assert_eq!(
                                        v.verdict,
                                        Verdict::Deny,
                                        "{name} {d} {addr} {port}: {v:?}"
                                    )
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    // The fail-closed ruleset, audited or not, refuses everything but loopback.
    for audit in [false, true] {
        let closed = Ruleset {
            audit,
            ..Ruleset::deny_all()
        };
        for &(p, a, port) in case.probes.iter().take(16) {
            let d = decide(&closed, a, p, port);
            if a.to_canonical().is_loopback() {
                assert_eq!(d.reason, Reason::Loopback);
            } else {
                assert_eq!(d.reason, Reason::FailClosed);
                assert!(!d.passes());
            }
        }
    }

    // The raw-socket guard: names it writes are quoted and safe, the others reported.
    let devices: Vec<String> = case.acls.iter().map(|(n, _)| n.clone()).collect();
    let (script, errors) = guard::render(&devices);
    for d in &devices {
        assert_eq!(
            guard::device_name_ok(d),
            !errors.iter().any(|e| &e.name == d),
            "{d:?}"
        );
    }
    assert!(!script.contains("\"\""));
});

fn check(ruleset: &Ruleset, own: &[(egresstrator_core::Proto, std::net::IpAddr, u16)]) {
    let nft_script = nft::render(ruleset);
    assert_eq!(
        nft_script,
        nft::render(ruleset),
        "nft render is not deterministic"
    );
    assert_eq!(
        render::hash(&nft_script),
        render::hash(&nft::render(ruleset))
    );
    let ipt = iptables::render(ruleset, iptables::Jump::Present);
    let ipt_missing = iptables::render(ruleset, iptables::Jump::Missing);
    assert_eq!(ipt, iptables::render(ruleset, iptables::Jump::Present));
    let jump = format!("-I OUTPUT 1 -j {}\n", iptables::OUTPUT_CHAIN);
    assert!(!ipt.v4.contains(&jump) && ipt_missing.v4.contains(&jump));
    assert!(!ipt.v6.contains(&jump) && ipt_missing.v6.contains(&jump));

    // Disjoint sets: same triples, no overlap.
    let all: Vec<Dest> = ruleset
        .allow
        .iter()
        .chain(&ruleset.deny)
        .map(|r| r.dest)
        .collect();
    let small = all.len() <= 64;
    let mut merged = Vec::new();
    for family in [Family::V4, Family::V6] {
        for rules in [&ruleset.allow, &ruleset.deny] {
            let dests: Vec<Dest> = rules.iter().map(|r| r.dest).collect();
            let out = disjoint(&dests, family);
            if small {
                for (i, a) in out.iter().enumerate() {
                    assert_eq!(Family::of(&a.net), family);
                    assert!(a.ports.low >= 1 && a.ports.low <= a.ports.high, "{a}");
                    for b in &out[i + 1..] {
                        assert!(!overlap(a, b), "disjoint() overlaps: {a} and {b}");
                    }
                }
            }
            merged.push((family, dests, out));
        }
    }

    let nft_table =
        NftTable::parse(&nft_script).unwrap_or_else(|e| panic!("nft script: {e}\n{nft_script}"));
    let ipt4 =
        IptScript::parse(&ipt.v4).unwrap_or_else(|e| panic!("iptables script: {e}\n{}", ipt.v4));
    let ipt6 =
        IptScript::parse(&ipt.v6).unwrap_or_else(|e| panic!("ip6tables script: {e}\n{}", ipt.v6));
    IptScript::parse(&ipt_missing.v4)
        .unwrap_or_else(|e| panic!("iptables script: {e}\n{}", ipt_missing.v4));
    IptScript::parse(&ipt_missing.v6)
        .unwrap_or_else(|e| panic!("ip6tables script: {e}\n{}", ipt_missing.v6));
    let probes = edge_probes(ruleset, own, if small { 16 } else { 4 });
    for (proto, addr, port) in probes {
        let pkt = Packet::new(proto, addr, port);
        let pkt_family = Family::of(&ipnet::IpNet::from(pkt.addr));
        for (family, dests, out) in &merged {
            if *family != pkt_family {
                continue;
            }
            let a = dests.iter().any(|d| d.matches(pkt.addr, proto, port));
            let b = out.iter().any(|d| d.matches(pkt.addr, proto, port));
            assert_eq!(a, b, "disjoint() changed {proto} {addr} {port}");
        }
        let d = decide(ruleset, addr, proto, port);
        if ruleset.posture == Posture::DenyAll && !pkt.addr.is_loopback() {
            assert_eq!(d.verdict, Verdict::Deny);
            assert!(!d.passes());
        }
        if let Reason::Rule { origin } = &d.reason {
            assert!(ruleset
                .allow
                .iter()
                .any(|r| &r.origin == origin && r.dest.matches(pkt.addr, proto, port)));
        }
        let want = d.passes();
        let by_nft = nft_table
            .passes(&pkt)
            .unwrap_or_else(|e| panic!("nft script: {e}\n{nft_script}"));
        assert_eq!(
            by_nft, want,
            "nft vs decide() for {proto} {addr} {port}: {d:?}\n{nft_script}"
        );
        let (script, parsed) = if pkt.addr.is_ipv4() {
            (&ipt.v4, &ipt4)
        } else {
            (&ipt.v6, &ipt6)
        };
        let by_ipt = parsed
            .passes(&pkt)
            .unwrap_or_else(|e| panic!("iptables script: {e}\n{script}"));
        assert_eq!(
            by_ipt, want,
            "iptables vs decide() for {proto} {addr} {port}: {d:?}\n{script}"
        );
    }
}
