//! What the fuzz targets share: the golden cases' input format (so the golden inputs are the
//! seed corpus as they are), probe generation, and small interpreters of the rendered nft and
//! iptables scripts, checked against `decide()`.
//!
//! The interpreters understand exactly the statements the renderers write and nothing else:
//! an unknown statement is an error, so a renderer change that the interpreters (and thus
//! this oracle) do not model is reported instead of passing silently.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use egresstrator_core::policy::Mode;
use egresstrator_core::{Dest, Proto, Ruleset};
use ipnet::IpNet;

/// A scratch directory of this process for targets that work on files:
/// `$EGRESSTRATOR_FUZZ_SCRATCH` (fuzz/run.sh sets it, and removes it afterwards), else
/// tmpfs (`/dev/shm`) or the temporary directory; the process id keeps parallel jobs apart.
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    let base = match std::env::var_os("EGRESSTRATOR_FUZZ_SCRATCH") {
        Some(d) => std::path::PathBuf::from(d),
        None if std::path::Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        None => std::env::temp_dir(),
    };
    base.join(format!("egresstrator-fuzz-{what}-{}", std::process::id()))
}

/// A golden case's `input.txt` (crates/egresstrator-core/tests/golden.rs documents the
/// format), read leniently: a header line that does not parse is skipped, never a panic.
#[derive(Debug, Default)]
pub struct Case {
    pub mode: Mode,
    pub audit: bool,
    pub workload: String,
    pub resolvers: Vec<IpAddr>,
    pub dns_allow: Option<Vec<IpNet>>,
    pub services: Vec<(String, Vec<SocketAddr>)>,
    pub probes: Vec<(Proto, IpAddr, u16)>,
    pub acls: Vec<(String, String)>,
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn proto(s: &str) -> Option<Proto> {
    match s {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

fn net(s: &str) -> Option<IpNet> {
    s.parse()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Parses a case. `generate:` lines are ignored (they would make one input cost seconds).
pub fn parse_case(text: &str) -> Case {
    let mut case = Case::default();
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.peek() {
        if line.starts_with("=== acl ") {
            break;
        }
        let line = lines.next().unwrap_or_default();
        let content = line.split('#').next().unwrap_or_default().trim();
        let Some((key, value)) = content.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "mode" => {
                case.mode = match value {
                    "protect" => Mode::Protect,
                    _ => Mode::Allowlist,
                }
            }
            "audit" => case.audit = value == "true",
            "workload" => case.workload = value.to_owned(),
            "resolvers" => {
                case.resolvers = list(value).filter_map(|a| a.parse().ok()).collect();
            }
            "dns-allow" => case.dns_allow = Some(list(value).filter_map(net).collect()),
            "service" => {
                if let Some((name, addrs)) = value.split_once('=') {
                    let addrs = list(addrs).filter_map(|a| a.parse().ok()).collect();
                    case.services.push((name.trim().to_owned(), addrs));
                }
            }
            "probe" => {
                let f: Vec<&str> = value.split_whitespace().collect();
                if let [p, a, port] = f.as_slice() {
                    if let (Some(p), Ok(a), Ok(port)) = (proto(p), a.parse(), port.parse()) {
                        case.probes.push((p, a, port));
                    }
                }
            }
            _ => {}
        }
    }
    let mut current: Option<(String, String)> = None;
    for line in lines {
        if let Some(name) = line.strip_prefix("=== acl ") {
            if let Some(done) = current.take() {
                case.acls.push(done);
            }
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, value)) = current.as_mut() {
            value.push_str(line);
        }
    }
    if let Some(done) = current {
        case.acls.push(done);
    }
    case
}

/// The last address of a network.
fn last(net: &IpNet) -> IpAddr {
    net.broadcast()
}

fn step(addr: IpAddr, up: bool) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => {
            let n = u32::from(a);
            let n = if up {
                n.checked_add(1)?
            } else {
                n.checked_sub(1)?
            };
            Some(IpAddr::V4(Ipv4Addr::from(n)))
        }
        IpAddr::V6(a) => {
            let n = u128::from(a);
            let n = if up {
                n.checked_add(1)?
            } else {
                n.checked_sub(1)?
            };
            Some(IpAddr::V6(Ipv6Addr::from(n)))
        }
    }
}

/// Probes at every edge of the ruleset's destinations (first and last address, and the
/// addresses just outside; lowest and highest port, and the ports just outside), for both
/// protocols, plus the case's own probes. At most `cap` allowed and `cap` denied destinations
/// are used.
pub fn edge_probes(
    ruleset: &Ruleset,
    own: &[(Proto, IpAddr, u16)],
    cap: usize,
) -> Vec<(Proto, IpAddr, u16)> {
    let mut out: Vec<(Proto, IpAddr, u16)> = own.iter().take(64).copied().collect();
    let dests: Vec<&Dest> = ruleset
        .allow
        .iter()
        .take(cap)
        .chain(ruleset.deny.iter().take(cap))
        .map(|r| &r.dest)
        .collect();
    for d in dests {
        let mut addrs = vec![d.net.network(), last(&d.net)];
        addrs.extend(step(d.net.network(), false));
        addrs.extend(step(last(&d.net), true));
        let mut ports = vec![d.ports.low, d.ports.high, 53, 123];
        ports.extend(d.ports.low.checked_sub(1));
        ports.extend(d.ports.high.checked_add(1));
        for a in &addrs {
            for &p in &ports {
                out.push((d.proto, *a, p));
            }
            out.push((other(d.proto), *a, d.ports.low));
        }
    }
    for n in ruleset.dns.iter().take(cap) {
        for a in [
            Some(n.network()),
            Some(last(n)),
            step(n.network(), false),
            step(last(n), true),
        ]
        .into_iter()
        .flatten()
        {
            out.push((Proto::Udp, a, 53));
            out.push((Proto::Tcp, a, 53));
        }
    }
    for (p, a, port) in [
        (Proto::Tcp, "127.0.0.1", 80),
        (Proto::Udp, "::1", 53),
        (Proto::Udp, "192.0.2.53", 53),
        (Proto::Udp, "192.0.2.123", 123),
        (Proto::Tcp, "192.0.2.1", 443),
        (Proto::Tcp, "2001:db8:ffff::1", 443),
        (Proto::Tcp, "::ffff:10.0.0.1", 80),
    ] {
        if let Ok(a) = a.parse() {
            out.push((p, a, port));
        }
    }
    out
}

fn other(p: Proto) -> Proto {
    match p {
        Proto::Tcp => Proto::Udp,
        Proto::Udp => Proto::Tcp,
    }
}

/// A new connection's first packet (a TCP SYN, or a first UDP datagram) leaving the
/// namespace: canonical address (an IPv4-mapped address leaves as IPv4), loopback over `lo`.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
}

impl Packet {
    pub fn new(proto: Proto, addr: IpAddr, port: u16) -> Self {
        Packet {
            proto,
            addr: addr.to_canonical(),
            port,
        }
    }

    fn loopback(&self) -> bool {
        self.addr.is_loopback()
    }
}

// ---------------------------------------------------------------------------------------
// iptables-restore --noflush input

struct IptRule {
    matches: Vec<String>,
    target: Vec<String>,
}

/// A parsed `iptables-restore --noflush` script.
pub struct IptScript {
    chains: BTreeMap<String, Vec<IptRule>>,
}

/// Whether the packet passes egresstrator's chains in an `iptables-restore --noflush` script
/// (OUTPUT is taken to jump to the output chain first, and to accept what comes back).
pub fn iptables_passes(script: &str, pkt: &Packet) -> Result<bool, String> {
    IptScript::parse(script)?.passes(pkt)
}

impl IptScript {
    pub fn parse(script: &str) -> Result<IptScript, String> {
        use egresstrator_core::render::iptables::{OUTPUT_CHAIN, REFUSE_CHAIN};
        let mut chains: BTreeMap<String, Vec<IptRule>> = BTreeMap::new();
        let mut committed = false;
        for line in script.lines() {
            if line.starts_with('#') || line == "*filter" {
                continue;
            }
            if line == "COMMIT" {
                committed = true;
                continue;
            }
            if committed {
                return Err(format!("line after COMMIT: {line:?}"));
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name != OUTPUT_CHAIN && name != REFUSE_CHAIN {
                    return Err(format!("declares a chain that is not ours: {line:?}"));
                }
                chains.entry(name.to_owned()).or_default();
                continue;
            }
            if line == format!("-I OUTPUT 1 -j {OUTPUT_CHAIN}") {
                continue;
            }
            let words = split_words(line)?;
            let [a, chain, rest @ ..] = words.as_slice() else {
                return Err(format!("short rule: {line:?}"));
            };
            if a != "-A" {
                return Err(format!("unknown statement: {line:?}"));
            }
            let Some(t) = rest.iter().position(|w| w == "-j" || w == "-g") else {
                return Err(format!("rule without a target: {line:?}"));
            };
            chains
                .get_mut(chain.as_str())
                .ok_or_else(|| format!("rule in an undeclared chain: {line:?}"))?
                .push(IptRule {
                    matches: rest[..t].to_vec(),
                    target: rest[t..].to_vec(),
                });
        }
        if !committed {
            return Err("no COMMIT".into());
        }
        Ok(IptScript { chains })
    }

    /// Whether the packet passes.
    pub fn passes(&self, pkt: &Packet) -> Result<bool, String> {
        let chains = &self.chains;
        let mut chain = egresstrator_core::render::iptables::OUTPUT_CHAIN.to_owned();
        // Each goto moves on; a ruleset without loops visits each chain once.
        for _ in 0..4 {
            let rules = chains
                .get(&chain)
                .ok_or_else(|| format!("goto to an unknown chain {chain}"))?;
            let mut next = None;
            for r in rules {
                if !ipt_matches(&r.matches, pkt)? {
                    continue;
                }
                match r
                    .target
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    ["-j", "RETURN"] => return Ok(true),
                    ["-j", "ACCEPT"] => return Ok(true),
                    ["-j", "DROP"] => return Ok(false),
                    ["-j", "REJECT", "--reject-with", _] => return Ok(false),
                    ["-j", "NFLOG", "--nflog-prefix", _, "--nflog-group", _] => continue,
                    ["-g", c] => {
                        next = Some((*c).to_owned());
                        break;
                    }
                    t => return Err(format!("unknown target {t:?}")),
                }
            }
            match next {
                Some(c) => chain = c,
                // Off the end of a user chain: back to OUTPUT, which accepts.
                None => return Ok(true),
            }
        }
        Err("goto loop".into())
    }
}

/// Splits a rule into words, keeping a double-quoted word whole (with its quotes).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err(format!("unclosed quote: {line:?}"));
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

fn ipt_matches(m: &[String], pkt: &Packet) -> Result<bool, String> {
    let mut i = 0;
    let mut all = true;
    let arg = |i: usize| {
        m.get(i + 1)
            .map(String::as_str)
            .ok_or_else(|| format!("{:?} needs a value", m[i]))
    };
    while i < m.len() {
        let ok = match m[i].as_str() {
            "-o" => {
                let v = arg(i)?;
                i += 1;
                // Only loopback leaves over `lo`.
                (v == "lo") == pkt.loopback()
            }
            "-d" => {
                let v = arg(i)?;
                i += 1;
                let n: IpNet = v
                    .parse()
                    .map_err(|_| format!("-d {v:?} is not a network"))?;
                n.contains(&pkt.addr)
            }
            "-p" => {
                let v = arg(i)?;
                i += 1;
                match v {
                    "tcp" => pkt.proto == Proto::Tcp,
                    "udp" => pkt.proto == Proto::Udp,
                    "ipv6-icmp" => false,
                    _ => return Err(format!("unknown protocol {v:?}")),
                }
            }
            "-m" => {
                let v = arg(i)?;
                i += 1;
                match v {
                    "tcp" | "udp" | "conntrack" | "limit" | "icmp6" => true,
                    _ => return Err(format!("unknown match module {v:?}")),
                }
            }
            "--dport" => {
                let v = arg(i)?;
                i += 1;
                let (lo, hi) = v.split_once(':').unwrap_or((v, v));
                let lo: u16 = lo.parse().map_err(|_| format!("--dport {v:?}"))?;
                let hi: u16 = hi.parse().map_err(|_| format!("--dport {v:?}"))?;
                if lo > hi {
                    return Err(format!("reversed --dport {v:?}"));
                }
                lo <= pkt.port && pkt.port <= hi
            }
            "--ctstate" => {
                let v = arg(i)?;
                i += 1;
                // The packet opens a new connection.
                v.split(',').any(|s| s == "NEW")
            }
            "!" => {
                if m.get(i + 1).map(String::as_str) != Some("--syn") {
                    return Err(format!("unknown negation in {m:?}"));
                }
                i += 1;
                // A TCP SYN (the first packet of a new connection) is `--syn`.
                false
            }
            "--icmpv6-type" => {
                arg(i)?;
                i += 1;
                false
            }
            "--limit" | "--limit-burst" => {
                arg(i)?;
                i += 1;
                true
            }
            w => return Err(format!("unknown match {w:?}")),
        };
        all &= ok;
        i += 1;
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------------
// nft script

/// One element of a concatenated set: address . protocol . port range.
type Elem = (IpNet, Proto, u16, u16);

/// A parsed nft script.
#[derive(Default)]
pub struct NftTable {
    sets: BTreeMap<String, (bool, Vec<Elem>, Vec<IpNet>)>,
    chains: BTreeMap<String, Vec<String>>,
}

/// Whether the packet passes the `inet egresstrator` table of a rendered nft script.
pub fn nft_passes(script: &str, pkt: &Packet) -> Result<bool, String> {
    parse_nft(script)?.passes(pkt)
}

impl NftTable {
    /// Parses a rendered nft script.
    pub fn parse(script: &str) -> Result<NftTable, String> {
        parse_nft(script)
    }

    /// Whether the packet passes the table.
    pub fn passes(&self, pkt: &Packet) -> Result<bool, String> {
        let t = self;
        let mut chain = "output".to_owned();
        let output = t.chains.get("output").ok_or("no output chain")?;
        if output.first().map(String::as_str)
            != Some("type filter hook output priority filter; policy accept;")
        {
            return Err(format!("unexpected output chain head {:?}", output.first()));
        }
        for _ in 0..4 {
            let rules = t
                .chains
                .get(&chain)
                .ok_or_else(|| format!("no chain {chain}"))?;
            let mut next = None;
            for r in rules {
                if r.starts_with("type filter hook") {
                    continue;
                }
                match nft_rule(&t, r, pkt)? {
                    Verdict::Continue => {}
                    Verdict::Accept => return Ok(true),
                    Verdict::Refuse => return Ok(false),
                    Verdict::Goto(c) => {
                        next = Some(c);
                        break;
                    }
                }
            }
            match next {
                Some(c) => chain = c,
                // The chain's policy (accept); a goto'ed chain ends like its caller's policy.
                None => return Ok(true),
            }
        }
        Err("goto loop".into())
    }
}

fn parse_nft(script: &str) -> Result<NftTable, String> {
    let mut t = NftTable::default();
    let mut lines = script.lines().peekable();
    let head = [
        "add table inet egresstrator",
        "delete table inet egresstrator",
        "table inet egresstrator {",
    ];
    let first = lines.next().ok_or("empty script")?;
    if !first.starts_with("# egresstrator: posture ") || first.contains(['\r', '"']) {
        return Err(format!("bad first line {first:?}"));
    }
    // Name lines, `NAME:dns` lines and the DNS filter are named in comment lines.
    while let Some(l) = lines.peek() {
        if !l.starts_with("# ") {
            break;
        }
        if l.contains(['\r', '"']) {
            return Err(format!("bad comment line {l:?}"));
        }
        lines.next();
    }
    for h in head {
        if lines.next() != Some(h) {
            return Err(format!("expected {h:?}"));
        }
    }
    let comment = lines.next().ok_or("no comment")?;
    let inner = comment
        .strip_prefix("\tcomment \"")
        .and_then(|c| c.strip_suffix('"'))
        .ok_or_else(|| format!("bad comment line {comment:?}"))?;
    if inner.contains('"') || inner.len() > egresstrator_core::render::nft::COMMENT_MAX {
        return Err(format!("bad comment {inner:?}"));
    }
    while let Some(line) = lines.next() {
        if line == "}" {
            if lines.next().is_some() {
                return Err("text after the table".into());
            }
            return Ok(t);
        }
        if let Some(name) = line
            .strip_prefix("\tset ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            let ty = lines.next().ok_or("set without type")?;
            let concat = match ty {
                "\t\ttype ipv4_addr . inet_proto . inet_service"
                | "\t\ttype ipv6_addr . inet_proto . inet_service" => true,
                "\t\ttype ipv4_addr" | "\t\ttype ipv6_addr" => false,
                _ => return Err(format!("bad set type {ty:?}")),
            };
            let v6 = ty.contains("ipv6");
            let learned = [
                egresstrator_core::render::nft::LEARNED4,
                egresstrator_core::render::nft::LEARNED6,
            ]
            .contains(&name);
            match lines.next() {
                Some("\t\tflags interval") if !learned => {}
                // The learned sets: filled only by the agent, so empty in any script; here
                // (as in `decide`) they allow nothing.
                Some("\t\tflags interval,timeout") if learned && concat => {
                    if lines.next() != Some("\t}") {
                        return Err(format!("learned set {name} not empty in the script"));
                    }
                    t.sets
                        .insert(name.to_owned(), (concat, Vec::new(), Vec::new()));
                    continue;
                }
                other => return Err(format!("bad flags {other:?} for set {name}")),
            }
            let mut elems = Vec::new();
            let mut nets = Vec::new();
            loop {
                let l = lines.next().ok_or("unterminated set")?;
                if l == "\t}" {
                    break;
                }
                if l == "\t\telements = {" {
                    loop {
                        let e = lines.next().ok_or("unterminated elements")?;
                        if e == "\t\t}" {
                            break;
                        }
                        let e = e
                            .strip_prefix("\t\t\t")
                            .and_then(|e| e.strip_suffix(','))
                            .ok_or_else(|| format!("bad element line {e:?}"))?;
                        let parts: Vec<&str> = e.split(" . ").collect();
                        let [a, p, ports] = parts.as_slice() else {
                            return Err(format!("bad element {e:?}"));
                        };
                        let n = set_net(a).ok_or_else(|| format!("bad element net {a:?}"))?;
                        let p = proto(p).ok_or_else(|| format!("bad element proto {p:?}"))?;
                        let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
                        let lo: u16 = lo.parse().map_err(|_| format!("bad port {ports:?}"))?;
                        let hi: u16 = hi.parse().map_err(|_| format!("bad port {ports:?}"))?;
                        if lo > hi
                            || lo == 0
                            || !concat
                            || n.trunc() != n
                            || matches!(n, IpNet::V6(_)) != v6
                        {
                            return Err(format!("bad element {e:?} in a set of {ty:?}"));
                        }
                        elems.push((n, p, lo, hi));
                    }
                } else if let Some(list) = l
                    .strip_prefix("\t\telements = { ")
                    .and_then(|l| l.strip_suffix(" }"))
                {
                    for a in list.split(", ") {
                        let n = set_net(a).ok_or_else(|| format!("bad set net {a:?}"))?;
                        if concat || n.trunc() != n || matches!(n, IpNet::V6(_)) != v6 {
                            return Err(format!("bad element {a:?} in a set of {ty:?}"));
                        }
                        nets.push(n);
                    }
                } else {
                    return Err(format!("unknown set line {l:?}"));
                }
            }
            t.sets.insert(name.to_owned(), (concat, elems, nets));
            continue;
        }
        if let Some(name) = line
            .strip_prefix("\tchain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            let mut rules = Vec::new();
            loop {
                let l = lines.next().ok_or("unterminated chain")?;
                if l == "\t}" {
                    break;
                }
                let r = l
                    .strip_prefix("\t\t")
                    .ok_or_else(|| format!("bad rule line {l:?}"))?;
                rules.push(r.to_owned());
            }
            t.chains.insert(name.to_owned(), rules);
            continue;
        }
        return Err(format!("unknown table line {line:?}"));
    }
    Err("unterminated table".into())
}

/// A set element's address part as nft reads it: a network, or one address (the renderer
/// writes a host without its prefix length).
fn set_net(a: &str) -> Option<IpNet> {
    a.parse::<IpNet>()
        .ok()
        .or_else(|| a.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

enum Verdict {
    Continue,
    Accept,
    Refuse,
    Goto(String),
}

fn set_contains(t: &NftTable, name: &str, pkt: &Packet, concat: bool) -> Result<bool, String> {
    let (is_concat, elems, nets) = t.sets.get(name).ok_or_else(|| format!("no set {name}"))?;
    if *is_concat != concat {
        return Err(format!("set {name} used with the wrong type"));
    }
    Ok(if concat {
        elems.iter().any(|(n, p, lo, hi)| {
            n.contains(&pkt.addr) && *p == pkt.proto && *lo <= pkt.port && pkt.port <= *hi
        })
    } else {
        nets.iter().any(|n| n.contains(&pkt.addr))
    })
}

/// One rule of the chains the renderer writes.
fn nft_rule(t: &NftTable, rule: &str, pkt: &Packet) -> Result<Verdict, String> {
    let v4 = pkt.addr.is_ipv4();
    let mut w: Vec<&str> = rule.split(' ').collect();
    // The verdict is at the end.
    let verdict = match w.as_slice() {
        [.., "accept"] => {
            w.pop();
            Verdict::Accept
        }
        [.., "goto", c] => {
            let c = (*c).to_owned();
            w.truncate(w.len() - 2);
            Verdict::Goto(c)
        }
        [.., "reject", "with", "tcp", "reset"] => {
            w.truncate(w.len() - 4);
            Verdict::Refuse
        }
        [.., "reject", "with", "icmpx", "admin-prohibited"] => {
            w.truncate(w.len() - 4);
            Verdict::Refuse
        }
        [.., "group", _] => Verdict::Continue,
        _ => return Err(format!("rule without a known verdict: {rule:?}")),
    };
    let mut i = 0;
    let mut all = true;
    while i < w.len() {
        let rest = &w[i..];
        let (ok, used) = match rest {
            ["oifname", "\"lo\"", ..] => (pkt.loopback(), 2),
            ["ct", "state", "established,related", ..] => (false, 3),
            ["ct", "state", "new", ..] => (true, 3),
            ["icmpv6", "type", ..] => {
                let end = rest
                    .iter()
                    .position(|x| *x == "}")
                    .ok_or("icmpv6 set not closed")?;
                (false, end + 1)
            }
            ["meta", "l4proto", "{", "tcp,", "udp", "}", ..] => (true, 6),
            ["meta", "l4proto", "tcp", ..] => (pkt.proto == Proto::Tcp, 3),
            ["th", "dport", p, ..] => (
                p.parse::<u16>().map_err(|_| format!("port {p:?}"))? == pkt.port,
                3,
            ),
            ["udp", "dport", p, ..] => (
                pkt.proto == Proto::Udp
                    && p.parse::<u16>().map_err(|_| format!("port {p:?}"))? == pkt.port,
                3,
            ),
            ["tcp", "flags", "&", "(fin|syn|rst|ack)", "!=", "syn", ..] => (false, 6),
            ["ip", "daddr", ".", "meta", "l4proto", ".", "th", "dport", set, ..] => {
                let name = set.strip_prefix('@').ok_or("set reference without @")?;
                (v4 && set_contains(t, name, pkt, true)?, 9)
            }
            ["ip6", "daddr", ".", "meta", "l4proto", ".", "th", "dport", set, ..] => {
                let name = set.strip_prefix('@').ok_or("set reference without @")?;
                (!v4 && set_contains(t, name, pkt, true)?, 9)
            }
            ["ip", "daddr", set, ..] => {
                let name = set.strip_prefix('@').ok_or("set reference without @")?;
                (v4 && set_contains(t, name, pkt, false)?, 3)
            }
            ["ip6", "daddr", set, ..] => {
                let name = set.strip_prefix('@').ok_or("set reference without @")?;
                (!v4 && set_contains(t, name, pkt, false)?, 3)
            }
            // Rate limit and log: never change the verdict.
            ["limit", "rate", _, "burst", _, "packets", "log", "prefix", ..] => (true, rest.len()),
            _ => return Err(format!("unknown expression at {:?} in {rule:?}", rest)),
        };
        all &= ok;
        i += used;
    }
    Ok(if all { verdict } else { Verdict::Continue })
}

/// Whether two destinations overlap (share an address, protocol and port).
pub fn overlap(a: &Dest, b: &Dest) -> bool {
    a.proto == b.proto
        && a.ports.low <= b.ports.high
        && b.ports.low <= a.ports.high
        && (a.net.contains(&b.net.network()) || b.net.contains(&a.net.network()))
}
