//! Golden tests: one folder per case under `tests/golden/<case>/`, every case run through
//! compile, `decide()` and every backend, compared byte for byte with the stored files.
//!
//! Bless (rewrite the expected files from the current code, then review the diff):
//! `EGRESSTRATOR_BLESS=1 cargo test -p egresstrator-core --test golden`
//!
//! # `input.txt`
//!
//! A header of `key: value` lines, then the ACL values. In the header, `#` starts a comment
//! and blank lines are ignored. Keys (all optional, `mode` defaults to allowlist):
//!
//! ```text
//! mode: allowlist | protect
//! audit: true | false            # Ruleset::audit, set after compile (default false)
//! workload: web, db              # the workload's ACL names, as in EGRESSTRATOR_ACL
//! resolvers: 172.17.0.53, fd00::53   # the workload's resolvers (its resolv.conf)
//! dns-allow: 10.0.0.0/8, 192.0.2.53 # protect mode's DNS list; absent = RFC 1918 default
//! service: production.postgresql@dc2 = 10.3.0.7:5432, [fd00::7]:5432
//! service: empty =               # a service with zero instances
//! probe: tcp 10.0.0.5 80         # extra probes for expected-decisions.txt
//! generate: big 10000            # append 10000 deterministic lines to ACL `big`
//! ```
//!
//! `service:` may repeat (one per resolved service reference: `[TAG.]NAME[@DC] = ADDR:PORT,…`),
//! and so may `probe:` and `generate:`. Each ACL key's value follows its own line
//! `=== acl NAME`; everything up to the next `=== acl` line or the end of the file is the
//! value, verbatim (comments, blank lines and trailing spaces included), so the grammar sees
//! exactly what Consul would hold.
//!
//! # Expected files
//!
//! - `expected.nft`: `render::nft::render`.
//! - `expected-iptables-v4.txt`, `expected-iptables-v6.txt`: `render::iptables::render` with
//!   `Jump::Missing` (so the `-I OUTPUT 1` line is pinned too).
//! - `expected-decisions.txt`: `decide()` for [`STANDARD_PROBES`] then the case's own probes,
//!   one `PROTO ADDR:PORT -> VERDICT (REASON)` per line.
//! - `expected-warnings.txt`: compile warnings, only when there are some.
//! - `expected-error.txt`: the compile error, only when compile fails. The case then renders
//!   `Ruleset::deny_all()` (fail closed), exactly as the agent would, with `audit` set as
//!   asked (deny-all ignores it: fail closed is never audited).
//!
//! A decision the ruleset audits (denied, but logged and let through) ends in `[audited]`.
//!
//! All of them are stored in full, the 10,000-line case included (each of its files is below
//! 1 MB; its input is generated, not stored).

// Test code: a panic is how a test fails (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use egresstrator_core::acl::{parse_acl_list, parse_service_ref};
use egresstrator_core::policy::{
    compile, decide, default_dns_allow, Mode, PolicyInput, ServiceTable, Verdict, WorkloadPolicy,
};
use egresstrator_core::render::{iptables, nft};
use egresstrator_core::{AclTable, Proto, Ruleset};
use ipnet::IpNet;

/// Probes every case answers, before its own.
const STANDARD_PROBES: &[(&str, &str, u16)] = &[
    ("tcp", "127.0.0.1", 80),
    ("udp", "::1", 53),
    ("udp", "192.0.2.53", 53),
    ("tcp", "192.0.2.53", 53),
    ("udp", "192.0.2.123", 123),
    ("tcp", "192.0.2.1", 443),
    ("udp", "192.0.2.1", 443),
    ("tcp", "2001:db8:ffff::1", 443),
];

/// Every expected file a case may have.
const FILES: &[&str] = &[
    "expected.nft",
    "expected-iptables-v4.txt",
    "expected-iptables-v6.txt",
    "expected-decisions.txt",
    "expected-warnings.txt",
    "expected-error.txt",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("read tests/golden")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[derive(Default)]
struct Input {
    mode: Mode,
    audit: bool,
    workload: String,
    resolvers: Vec<IpAddr>,
    dns_allow: Option<Vec<IpNet>>,
    services: Vec<(String, Vec<SocketAddr>)>,
    probes: Vec<(Proto, IpAddr, u16)>,
    acls: Vec<(String, String)>,
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn proto(s: &str) -> Proto {
    match s {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => panic!("protocol {s:?}: expected tcp or udp"),
    }
}

fn parse_input(case: &str, text: &str) -> Input {
    let mut input = Input::default();
    let mut generate = Vec::new();
    let mut lines = text.split_inclusive('\n').peekable();
    // Header.
    while let Some(line) = lines.peek() {
        if line.starts_with("=== acl ") {
            break;
        }
        let line = lines.next().unwrap_or_default();
        let content = line.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        let (key, value) = content
            .split_once(':')
            .unwrap_or_else(|| panic!("{case}: header line {content:?}: expected KEY: VALUE"));
        let value = value.trim();
        match key.trim() {
            "mode" => {
                input.mode = match value {
                    "allowlist" => Mode::Allowlist,
                    "protect" => Mode::Protect,
                    m => panic!("{case}: mode {m:?}"),
                }
            }
            "audit" => {
                input.audit = match value {
                    "true" => true,
                    "false" => false,
                    a => panic!("{case}: audit {a:?}: expected true or false"),
                }
            }
            "workload" => input.workload = value.to_owned(),
            "resolvers" => {
                input.resolvers = list(value)
                    .map(|a| a.parse().unwrap_or_else(|_| panic!("{case}: resolver {a}")))
                    .collect()
            }
            "dns-allow" => {
                input.dns_allow = Some(
                    list(value)
                        .map(|n| {
                            n.parse()
                                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                                .unwrap_or_else(|_| panic!("{case}: network {n}"))
                        })
                        .collect(),
                )
            }
            "service" => {
                let (name, addrs) = value
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{case}: service {value:?}: expected REF = ADDRS"));
                let addrs = list(addrs)
                    .map(|a| a.parse().unwrap_or_else(|_| panic!("{case}: address {a}")))
                    .collect();
                input.services.push((name.trim().to_owned(), addrs));
            }
            "probe" => {
                let f: Vec<&str> = value.split_whitespace().collect();
                assert_eq!(
                    f.len(),
                    3,
                    "{case}: probe {value:?}: expected PROTO ADDR PORT"
                );
                input.probes.push((
                    proto(f[0]),
                    f[1].parse()
                        .unwrap_or_else(|_| panic!("{case}: probe {value}")),
                    f[2].parse()
                        .unwrap_or_else(|_| panic!("{case}: probe {value}")),
                ));
            }
            "generate" => {
                let (name, n) = value
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{case}: generate {value:?}: expected NAME COUNT"));
                let n: usize = n
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{case}: {value}"));
                generate.push((name.to_owned(), n));
            }
            k => panic!("{case}: unknown header key {k:?}"),
        }
    }
    // ACL values, verbatim.
    let mut current: Option<(String, String)> = None;
    for line in lines {
        if let Some(name) = line.strip_prefix("=== acl ") {
            if let Some(done) = current.take() {
                input.acls.push(done);
            }
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, value)) = current.as_mut() {
            value.push_str(line);
        }
    }
    input.acls.extend(current);
    for (name, n) in generate {
        let lines = generated_lines(n);
        match input.acls.iter_mut().find(|(a, _)| *a == name) {
            Some((_, value)) => value.push_str(&lines),
            None => input.acls.push((name, lines)),
        }
    }
    input
}

/// `n` deterministic ACL lines (xorshift64, fixed seed): mostly scattered IPv4 /32s and /24s
/// on tcp/443, with some IPv6 /64s, UDP ports, port ranges and neighbours that merge.
fn generated_lines(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut s = String::with_capacity(n * 24);
    for i in 0..n {
        let r = next();
        let a = (r >> 32) as u32;
        let line = match i % 20 {
            0 => format!("[2001:db8:{:x}:{:x}::/64]:tcp/443", a >> 16, a & 0xffff),
            1 => format!("10.{}.{}.0/24:tcp/443", (a >> 8) & 0xff, a & 0xff),
            2 => format!(
                "172.16.{}.{}:udp/{}",
                (a >> 8) & 0xf,
                a & 0xff,
                5000 + (r % 16)
            ),
            3 if i % 100 == 3 => format!(
                "192.168.{}.0/28:tcp/{}-{}",
                a & 0xff,
                8000 + (r % 8),
                8010 + (r % 8)
            ),
            _ => format!(
                "{}.{}.{}.{}:tcp/443",
                11 + (a >> 24) % 100,
                (a >> 16) & 0xff,
                (a >> 8) & 0xff,
                a & 0xff
            ),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

struct Outcome {
    ruleset: Ruleset,
    files: BTreeMap<&'static str, String>,
}

fn run_case(case: &str, text: &str) -> Outcome {
    let input = parse_input(case, text);
    let acls = AclTable::parse(input.acls.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut services = ServiceTable::new();
    for (name, addrs) in &input.services {
        let r = parse_service_ref(name).unwrap_or_else(|e| panic!("{case}: {e}"));
        services.insert(r, addrs.clone());
    }
    let dns_allow = input.dns_allow.clone().unwrap_or_else(default_dns_allow);
    let policy = PolicyInput {
        mode: input.mode,
        acls: &acls,
        services: &services,
        dns_allow: &dns_allow,
    };
    let workload = WorkloadPolicy {
        acls: parse_acl_list(&input.workload).unwrap_or_else(|e| panic!("{case}: {e}")),
        resolvers: input.resolvers.clone(),
    };
    let mut files = BTreeMap::new();
    let mut ruleset = match compile(&workload, &policy) {
        Ok(c) => {
            if !c.warnings.is_empty() {
                files.insert("expected-warnings.txt", lines(&c.warnings));
            }
            c.ruleset
        }
        Err(e) => {
            files.insert("expected-error.txt", format!("{e}\n"));
            Ruleset::deny_all()
        }
    };
    ruleset.audit = input.audit;
    files.insert("expected.nft", nft::render(&ruleset));
    let ipt = iptables::render(&ruleset, iptables::Jump::Missing);
    files.insert("expected-iptables-v4.txt", ipt.v4);
    files.insert("expected-iptables-v6.txt", ipt.v6);
    let mut decisions = String::new();
    let standard = STANDARD_PROBES.iter().map(|(p, a, port)| {
        (
            proto(p),
            a.parse::<IpAddr>().expect("standard probe address"),
            *port,
        )
    });
    for (p, addr, port) in standard.chain(input.probes.iter().copied()) {
        let d = decide(&ruleset, addr, p, port);
        let verdict = match d.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        };
        let _ = writeln!(
            decisions,
            "{p} {} -> {verdict} ({}){}",
            SocketAddr::new(addr, port),
            d.reason,
            if d.audited { " [audited]" } else { "" }
        );
    }
    files.insert("expected-decisions.txt", decisions);
    Outcome { ruleset, files }
}

fn lines(v: &[String]) -> String {
    v.iter().map(|l| format!("{l}\n")).collect()
}

fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            return format!(
                "first difference at line {}:\n  expected: {}\n  actual:   {}",
                i + 1,
                x.map_or("<end of file>".to_owned(), |s| format!("{s:?}")),
                y.map_or("<end of file>".to_owned(), |s| format!("{s:?}")),
            );
        }
    }
    "files differ only in their final newline".to_owned()
}

#[test]
fn golden() {
    let bless = std::env::var_os("EGRESSTRATOR_BLESS").is_some_and(|v| v != "0");
    let mut failures = Vec::new();
    let all = cases();
    for dir in &all {
        let case = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(dir.join("input.txt"))
            .unwrap_or_else(|e| panic!("{case}: read input.txt: {e}"));
        let out = run_case(&case, &text);
        for name in FILES {
            let path = dir.join(name);
            let stored = fs::read_to_string(&path).ok();
            let actual = out.files.get(name);
            if bless {
                match actual {
                    Some(a) if stored.as_deref() != Some(a.as_str()) => {
                        fs::write(&path, a).expect("write expected file")
                    }
                    None if stored.is_some() => fs::remove_file(&path).expect("remove stale"),
                    _ => {}
                }
                continue;
            }
            match (stored, actual) {
                (Some(s), Some(a)) if s == *a => {}
                (Some(s), Some(a)) => {
                    failures.push(format!("{case}/{name}: {}", first_difference(&s, a)))
                }
                (None, Some(_)) => failures.push(format!("{case}/{name}: missing")),
                (Some(_), None) => {
                    failures.push(format!("{case}/{name}: stored, but the case produces none"))
                }
                (None, None) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatch(es); if the change is intended, run\n  \
         EGRESSTRATOR_BLESS=1 cargo test -p egresstrator-core --test golden\n\
         and review the diff.\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        all.len() >= 14,
        "expected at least 14 golden cases, found {}",
        all.len()
    );
}

/// The cases that pin specific behaviour must stay; renaming one means updating this list.
#[test]
fn required_cases_exist() {
    let names: Vec<String> = cases()
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for required in [
        "allowlist-basic",
        "port-ranges",
        "ipv6-forms",
        "merge-cidrs",
        "overlapping-port-ranges",
        "no-acls",
        "many-acls",
        "service-refs",
        "resolvers-v4-v6",
        "host-bits-warning",
        "protect-basic",
        "protect-named-overlaps-unnamed",
        "protect-custom-dns-allow",
        "deny-all-missing-acl",
        "big-10k-cidrs",
        "allowlist-audit",
        "protect-audit",
        "deny-all-audit",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "missing case {required}"
        );
    }
}

/// The generated case really has 10,000 lines and keeps most of them as separate elements.
#[test]
fn big_case_is_big() {
    let text = fs::read_to_string(golden_dir().join("big-10k-cidrs/input.txt")).expect("read");
    let input = parse_input("big-10k-cidrs", &text);
    let total: usize = input
        .acls
        .iter()
        .map(|(_, v)| v.lines().filter(|l| !l.trim().is_empty()).count())
        .sum();
    assert!(total >= 10_000, "{total} lines");
    let out = run_case("big-10k-cidrs", &text);
    assert!(out.ruleset.allow.len() >= 10_000);
    let elements = out.files["expected.nft"].matches(" . tcp . ").count();
    assert!(elements > 9_000, "{elements} tcp elements");
}

/// Every stored backend file is accepted by the kernel, in a throwaway namespace: `nft -c`
/// and `*tables-restore --test --noflush` as asked, then a real load of each, because
/// `iptables-restore --test` with the nft backend does not resolve jump targets.
#[test]
fn golden_outputs_load_in_kernel() {
    if !common::kernel_ready(
        "golden_outputs_load_in_kernel",
        &["nft", "iptables-restore", "ip6tables-restore", "iptables"],
    ) {
        return;
    }
    let script = r#"
        nft -c -f "$1" || { echo "nft -c rejected $1" >&2; exit 1; }
        nft -f "$1" || { echo "nft -f rejected $1" >&2; exit 1; }
        iptables-restore --test --noflush < "$2" || { echo "iptables-restore --test rejected $2" >&2; exit 1; }
        ip6tables-restore --test --noflush < "$3" || { echo "ip6tables-restore --test rejected $3" >&2; exit 1; }
        iptables-restore --noflush < "$2" || { echo "iptables-restore rejected $2" >&2; exit 1; }
        ip6tables-restore --noflush < "$3" || { echo "ip6tables-restore rejected $3" >&2; exit 1; }
        iptables -C OUTPUT -j EGRESSTRATOR-OUTPUT || exit 1
        ip6tables -C OUTPUT -j EGRESSTRATOR-OUTPUT || exit 1
    "#;
    // While blessing, the stored files are being rewritten by `golden`: load fresh renders.
    let bless = std::env::var_os("EGRESSTRATOR_BLESS").is_some_and(|v| v != "0");
    let scratch = common::TempDir::new("egt-core-golden");
    for dir in cases() {
        let start = Instant::now();
        let case = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let names = [
            "expected.nft",
            "expected-iptables-v4.txt",
            "expected-iptables-v6.txt",
        ];
        let files: Vec<PathBuf> = if bless {
            let text = fs::read_to_string(dir.join("input.txt")).expect("read input.txt");
            let out = run_case(&case, &text);
            names
                .iter()
                .map(|n| scratch.write(&format!("{case}-{n}"), &out.files[n]))
                .collect()
        } else {
            names.iter().map(|f| dir.join(f)).collect()
        };
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let out = common::unshare_sh(script, &refs);
        common::assert_ok(&format!("loading {}", dir.display()), &out);
        eprintln!("{case}: loaded in {:?}", start.elapsed());
    }
}
