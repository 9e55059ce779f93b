//! The ACL language: names and values of the Consul keys under the kv-path.
//!
//! One entry per line; blank lines and `#` comments are ignored, surrounding whitespace is
//! trimmed. An entry is a network destination (`CIDR:PROTO/PORT`,
//! `CIDR:PROTO/LOW-HIGH`, IPv4 or IPv6, brackets optional), a DNS name destination
//! (`NAME:PROTO/PORT`, `*.NAME:PROTO/LOW-HIGH`; see [`crate::name`]) or a service reference
//! (`[TAG.]SERVICE[@DC]`). Anything else is an error naming the key, the line and what was
//! expected: a bad line is never skipped, because a skipped allow line silently changes what
//! a workload may reach.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use thiserror::Error;

use crate::name::NamePattern;
use crate::ruleset::{Dest, NameDest, PortRange, Proto};

/// Longest ACL name accepted; Consul keys are limited far beyond any sane name.
const MAX_NAME_LEN: usize = 128;

/// A validated ACL name: letters, digits, `-`, `_` and `.`; never `/` and never `..`.
///
/// Names come from container environments and labels, which the workload controls. Checking
/// them before any Consul read is what keeps egresstrator from reading keys outside the
/// kv-path (`../secret` or `a/b` never become a key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AclName(String);

/// Why a string is not a valid ACL name.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AclNameError {
    #[error("invalid acl name \"\": a name may not be empty")]
    Empty,
    #[error("invalid acl name \"{name}\": longer than {MAX_NAME_LEN} characters")]
    TooLong { name: String },
    #[error(
        "invalid acl name \"{name}\": character {ch:?} is not allowed (letters, digits, '-', '_' and '.' only)"
    )]
    BadChar { name: String, ch: char },
    #[error("invalid acl name \"{name}\": '..' is not allowed")]
    DotDot { name: String },
    #[error("invalid acl name \"{name}\": '.' alone is not a name")]
    Dot { name: String },
    #[error("acl list of {bytes} bytes is longer than the limit of {LIST_MAX_BYTES} bytes")]
    ListTooLong { bytes: usize },
    #[error("acl list names more than {LIST_MAX_NAMES} acls")]
    ListTooMany,
}

/// The bound on an ACL list's length in bytes (it comes from a container's environment or
/// labels, which whoever starts it writes, or from `--rules`).
pub const LIST_MAX_BYTES: usize = 16 * 1024;
/// The bound on the number of distinct names in one ACL list.
pub const LIST_MAX_NAMES: usize = 256;

impl AclName {
    pub fn parse(name: &str) -> Result<Self, AclNameError> {
        if name.is_empty() {
            return Err(AclNameError::Empty);
        }
        // Checked first so that the message for a pasted path names the real problem.
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(AclNameError::BadChar {
                name: shorten(name),
                ch,
            });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(AclNameError::TooLong {
                name: shorten(name),
            });
        }
        if name.contains("..") {
            return Err(AclNameError::DotDot { name: name.into() });
        }
        if name == "." {
            return Err(AclNameError::Dot { name: name.into() });
        }
        Ok(AclName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AclName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a comma-separated list of ACL names (`EGRESSTRATOR_ACL`, `--rules`).
///
/// Whitespace around names is trimmed, empty items are ignored and duplicates are kept once,
/// in first-seen order. Any invalid name fails the whole list.
///
/// Bounded and linear: a list over [`LIST_MAX_BYTES`] is refused before it is split, and
/// duplicates are found through a set, so a label holding a million names costs one
/// comparison, not a million squared.
pub fn parse_acl_list(list: &str) -> Result<Vec<AclName>, AclNameError> {
    if list.len() > LIST_MAX_BYTES {
        return Err(AclNameError::ListTooLong { bytes: list.len() });
    }
    let mut out: Vec<AclName> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let name = AclName::parse(item)?;
        if seen.insert(name.clone()) {
            if out.len() == LIST_MAX_NAMES {
                return Err(AclNameError::ListTooMany);
            }
            out.push(name);
        }
    }
    Ok(out)
}

/// A reference to every instance of a service in Consul's catalog.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceRef {
    pub tag: Option<String>,
    pub service: String,
    pub datacenter: Option<String>,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = &self.tag {
            write!(f, "{t}.")?;
        }
        f.write_str(&self.service)?;
        if let Some(dc) = &self.datacenter {
            write!(f, "@{dc}")?;
        }
        Ok(())
    }
}

/// One meaningful line of an ACL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    Net(Dest),
    Service(ServiceRef),
    /// A name whose answered addresses the container may reach (learned from its own DNS
    /// answers by the agent).
    Name(NameDest),
    /// `NAME:dns`: a name the container may ask its resolvers for under the DNS filter,
    /// granting no connection.
    Resolve(NamePattern),
}

/// An entry with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    pub line: usize,
    pub entry: Entry,
}

/// A parsed ACL value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Acl {
    pub name: String,
    pub lines: Vec<Line>,
    pub warnings: Vec<AclWarning>,
}

/// Something accepted but worth telling the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AclWarning {
    pub acl: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for AclWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acl '{}' line {}: {}", self.acl, self.line, self.message)
    }
}

/// A line that is not valid ACL syntax.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("acl '{acl}' line {line}: expected {expected}, got {text:?} ({reason})")]
pub struct LineError {
    pub acl: String,
    pub line: usize,
    pub text: String,
    pub expected: &'static str,
    pub reason: String,
}

/// Every bad line of one ACL value.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct AclErrors {
    pub acl: String,
    pub errors: Vec<LineError>,
}

impl fmt::Display for AclErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.errors {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

const EXPECT_NET: &str = "CIDR:PROTO/PORT or CIDR:PROTO/LOW-HIGH";
const EXPECT_ANY: &str =
    "CIDR:PROTO/PORT, CIDR:PROTO/LOW-HIGH, NAME:PROTO/PORT or [TAG.]SERVICE[@DC]";
const EXPECT_NAME: &str =
    "NAME:PROTO/PORT, NAME:PROTO/LOW-HIGH or NAME:dns (NAME may start with '*.')";
const EXPECT_SERVICE: &str = "[TAG.]SERVICE[@DC]";

/// Parses one ACL value. All bad lines are reported, not just the first.
pub fn parse_acl(acl: &str, text: &str) -> Result<Acl, AclErrors> {
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = match raw.find('#') {
            Some(i) => &raw[..i],
            None => raw,
        }
        .trim();
        if content.is_empty() {
            continue;
        }
        match parse_entry(content) {
            Ok((entry, warning)) => {
                if let Some(message) = warning {
                    warnings.push(AclWarning {
                        acl: acl.to_owned(),
                        line,
                        message,
                    });
                }
                lines.push(Line { line, entry });
            }
            Err((expected, reason)) => errors.push(LineError {
                acl: acl.to_owned(),
                line,
                text: content.to_owned(),
                expected,
                reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(Acl {
            name: acl.to_owned(),
            lines,
            warnings,
        })
    } else {
        Err(AclErrors {
            acl: acl.to_owned(),
            errors,
        })
    }
}

type EntryResult = Result<(Entry, Option<String>), (&'static str, String)>;

fn parse_entry(s: &str) -> EntryResult {
    if looks_like_name(s) {
        parse_name(s).map(|e| (e, None))
    } else if looks_like_net(s) {
        parse_net(s).map(|(d, w)| (Entry::Net(d), w))
    } else {
        parse_service(s)
            .map(|r| (Entry::Service(r), None))
            .map_err(|reason| (EXPECT_ANY, reason))
    }
}

/// A line is a network entry attempt when it could not be a service name at all: it has a
/// `/`, `:` or `[`, or it is a bare address (`10.0.0.1` is not a service called `1`).
fn looks_like_net(s: &str) -> bool {
    s.contains(['/', ':', '[']) || s.parse::<IpAddr>().is_ok()
}

/// A line is a name entry attempt when it has exactly one `:` (a bare IPv6 address has
/// more), and what comes before it is made of name characters, holds a letter or a `*`, and
/// is not an address.
fn looks_like_name(s: &str) -> bool {
    let Some((head, _)) = s.split_once(':') else {
        return false;
    };
    s.matches(':').count() == 1
        && !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '_'))
        && head.chars().any(|c| c.is_ascii_alphabetic() || c == '*')
        && head.parse::<IpAddr>().is_err()
}

fn parse_name(s: &str) -> Result<Entry, (&'static str, String)> {
    let err = |reason: String| (EXPECT_NAME, reason);
    let (name, rest) = s
        .split_once(':')
        .ok_or_else(|| err("missing ':PROTO/PORT' after name".into()))?;
    if rest.eq_ignore_ascii_case("dns") {
        return NamePattern::parse_resolvable(name)
            .map(Entry::Resolve)
            .map_err(err);
    }
    let (proto, ports) = parse_proto_ports(rest).map_err(err)?;
    let pattern = NamePattern::parse(name).map_err(err)?;
    Ok(Entry::Name(NameDest {
        pattern,
        proto,
        ports,
    }))
}

fn parse_proto_ports(rest: &str) -> Result<(Proto, PortRange), String> {
    let (proto_s, ports_s) = rest
        .split_once('/')
        .ok_or_else(|| format!("missing '/PORT' after protocol {rest:?}"))?;
    let proto = match proto_s.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "" => return Err("missing protocol".into()),
        other => return Err(format!("unknown protocol {other:?}; expected tcp or udp")),
    };
    Ok((proto, parse_ports(ports_s)?))
}

fn parse_net(s: &str) -> Result<(Dest, Option<String>), (&'static str, String)> {
    let err = |reason: String| (EXPECT_NET, reason);
    let (addr_part, rest) = split_addr(s).map_err(err)?;
    let (proto, ports) = parse_proto_ports(rest).map_err(err)?;
    let (net, warning) = parse_cidr(&addr_part).map_err(err)?;
    Ok((Dest { net, proto, ports }, warning))
}

/// Splits `ADDR:PROTO/PORT` at the colon that ends the address. Handles bracketed IPv6
/// (`[2001:db8::/32]:tcp/443`, `[2001:db8::]/32:tcp/443`) and bare IPv6, whose own colons come
/// before the last one.
fn split_addr(s: &str) -> Result<(String, &str), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let close = inner
            .find(']')
            .ok_or_else(|| "unclosed '[' in address".to_string())?;
        let addr = &inner[..close];
        let after = &inner[close + 1..];
        // Prefix length may follow the bracket: `[2001:db8::]/32:tcp/443`.
        let (len, after) = match after.strip_prefix('/') {
            Some(rest) => {
                let colon = rest
                    .find(':')
                    .ok_or_else(|| "missing ':PROTO/PORT' after address".to_string())?;
                (Some(&rest[..colon]), &rest[colon..])
            }
            None => (None, after),
        };
        let rest = after
            .strip_prefix(':')
            .ok_or_else(|| "missing ':PROTO/PORT' after address".to_string())?;
        let addr = match len {
            Some(l) => format!("{addr}/{l}"),
            None => addr.to_string(),
        };
        return Ok((addr, rest));
    }
    // A whole line that is already an address or network lacks the protocol and port.
    if s.parse::<IpAddr>().is_ok() || s.parse::<IpNet>().is_ok() {
        return Err("missing ':PROTO/PORT' after address".into());
    }
    let (addr, rest) = s
        .rsplit_once(':')
        .ok_or_else(|| "missing ':PROTO/PORT' after address".to_string())?;
    Ok((addr.to_string(), rest))
}

fn parse_ports(s: &str) -> Result<PortRange, String> {
    let one = |p: &str| -> Result<u16, String> {
        let p = p.trim();
        if p.is_empty() {
            return Err("missing port".into());
        }
        if !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("port {p:?} is not a number"));
        }
        match p.parse::<u32>() {
            Ok(0) => Err("port 0 is not a valid destination port".into()),
            Ok(n) if n <= 65535 => Ok(n as u16),
            _ => Err(format!("port {p} > 65535")),
        }
    };
    match s.split_once('-') {
        Some((lo, hi)) => {
            let low = one(lo)?;
            let high = one(hi)?;
            if low > high {
                return Err(format!("reversed port range {low}-{high}"));
            }
            Ok(PortRange { low, high })
        }
        None => one(s).map(PortRange::single),
    }
}

/// Parses an address or CIDR. Host bits set are accepted with a warning naming the network
/// actually used, never changed silently.
fn parse_cidr(s: &str) -> Result<(IpNet, Option<String>), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("missing address".into());
    }
    let (addr_s, len_s) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr_s
        .parse()
        .map_err(|_| format!("{addr_s:?} is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => {
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("prefix length {l:?} is not a number"));
            }
            match l.parse::<u32>() {
                Ok(n) if n <= u32::from(max) => n as u8,
                _ => return Err(format!("prefix length {l} > {max}")),
            }
        }
    };
    let net = IpNet::new(addr, len).map_err(|e| format!("invalid prefix: {e}"))?;
    let trunc = net.trunc();
    if let Some(v4) = ipv4_mapped(&trunc) {
        // The kernel sends IPv4 packets for `::ffff:a.b.c.d`, so an IPv6 rule for it could
        // never match: in protect mode the resource would silently stay open.
        return Ok((
            v4,
            Some(format!(
                "{net} is IPv4-mapped (reached over IPv4); using {v4}"
            )),
        ));
    }
    let warning = (trunc != net).then(|| format!("host bits set in {net}; using {trunc}"));
    Ok((trunc, warning))
}

/// `net`, or the IPv4 network it stands for when it is IPv4-mapped (`::ffff:0:0/96` or
/// longer): the form the kernel's packets have.
pub fn canonical_net(net: IpNet) -> IpNet {
    ipv4_mapped(&net).unwrap_or(net)
}

/// The IPv4 network an IPv4-mapped IPv6 network (`::ffff:0:0/96` or longer) stands for.
fn ipv4_mapped(net: &IpNet) -> Option<IpNet> {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => {
            let v4 = n.network().to_ipv4_mapped()?;
            ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                .ok()
                .map(IpNet::V4)
        }
        _ => None,
    }
}

/// `[TAG.]SERVICE[@DC]`, with consul-template's reading: the tag is everything before the
/// last dot, the service name has no dots.
fn parse_service(s: &str) -> Result<ServiceRef, String> {
    let (left, dc) = match s.split_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (s, None),
    };
    let (tag, service) = match left.rsplit_once('.') {
        Some((t, n)) => (Some(t), n),
        None => (None, left),
    };
    let word = |what: &str, v: &str, dots: bool| -> Result<(), String> {
        if v.is_empty() {
            return Err(format!("empty {what}"));
        }
        match v
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || (dots && *c == '.')))
        {
            Some(c) => Err(format!("character {c:?} is not allowed in a {what}")),
            None => Ok(()),
        }
    };
    word("service name", service, false)?;
    if let Some(t) = tag {
        word("tag", t, true)?;
    }
    if let Some(d) = dc {
        word("datacenter", d, true)?;
    }
    Ok(ServiceRef {
        tag: tag.map(str::to_owned),
        service: service.to_owned(),
        datacenter: dc.map(str::to_owned),
    })
}

/// Parses a service reference on its own (used by `check` and tests).
pub fn parse_service_ref(s: &str) -> Result<ServiceRef, String> {
    parse_service(s.trim()).map_err(|r| format!("expected {EXPECT_SERVICE}, got {s:?} ({r})"))
}

/// Every ACL value under the kv-path, parsed. Bad values are kept with their errors: an error
/// only matters to the workloads that name (or, in protect mode, depend on) that key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclTable {
    entries: BTreeMap<String, Result<Acl, AclErrors>>,
}

impl AclTable {
    /// Builds the table from `(name, value)` pairs, names relative to the kv-path.
    pub fn parse<'a>(values: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let entries = values
            .into_iter()
            .map(|(name, text)| (name.to_owned(), parse_acl(name, text)))
            .collect();
        AclTable { entries }
    }

    pub fn get(&self, name: &str) -> Option<&Result<Acl, AclErrors>> {
        self.entries.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Result<Acl, AclErrors>)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 64 {
        let mut t: String = s.chars().take(64).collect();
        t.push('…');
        t
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lines_parse_and_bad_names_say_why() {
        let acl = parse_acl(
            "web",
            "API.example.com:tcp/443\n*.cdn.example.com:TCP/8000-8100 # c\n10.0.0.1:tcp/80\n",
        )
        .unwrap();
        match &acl.lines[0].entry {
            Entry::Name(d) => assert_eq!(d.to_string(), "api.example.com:tcp/443"),
            other => panic!("{other:?}"),
        }
        match &acl.lines[1].entry {
            Entry::Name(d) => {
                assert_eq!(d.to_string(), "*.cdn.example.com:tcp/8000-8100");
                assert!(d.pattern.is_wildcard());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(acl.lines[2].entry, Entry::Net(_)));
        let dns = parse_acl("d", "db:dns\n*.svc.cluster.local:DNS\n").unwrap();
        assert!(matches!(&dns.lines[0].entry, Entry::Resolve(p) if p.to_string() == "db"));
        assert!(matches!(&dns.lines[1].entry, Entry::Resolve(p) if p.is_wildcard()));
        // Bare IPv6 with letters is still an address, not a name.
        let v6 = parse_acl("v6", "fe80::1:tcp/80\n").unwrap();
        assert!(matches!(v6.lines[0].entry, Entry::Net(_)));
        for (bad, why) in [
            ("localhost:tcp/80", "single label"),
            ("a_b.example.com:tcp/80", "not allowed"),
            ("api.example.com:icmp/1", "unknown protocol"),
            ("api.example.com:tcp/0", "port 0"),
            ("api.example.com:tcp", "missing '/PORT'"),
            ("a.*.example.com:tcp/80", "not allowed"),
        ] {
            let e = parse_acl("x", bad).unwrap_err().to_string();
            assert!(
                e.contains("NAME:PROTO/PORT") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    fn net(s: &str) -> Dest {
        match parse_entry(s) {
            Ok((Entry::Net(d), _)) => d,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn err(s: &str) -> String {
        let e = parse_acl("web", s).expect_err(s);
        e.errors[0].to_string()
    }

    #[test]
    fn ipv4_port_and_range() {
        let d = net("10.50.128.0/24:tcp/20000-32000");
        assert_eq!(d.to_string(), "10.50.128.0/24:tcp/20000-32000");
        assert_eq!(net("0.0.0.0/0:tcp/8080").to_string(), "0.0.0.0/0:tcp/8080");
        assert_eq!(net("10.1.2.3:udp/53").to_string(), "10.1.2.3/32:udp/53");
        assert_eq!(net("10.1.2.3:TCP/1").proto, Proto::Tcp);
        assert_eq!(net("10.1.2.3:tcp/65535").ports, PortRange::single(65535));
    }

    #[test]
    fn ipv6_forms() {
        for s in [
            "2001:db8::/32:tcp/443",
            "[2001:db8::/32]:tcp/443",
            "[2001:db8::]/32:tcp/443",
        ] {
            assert_eq!(net(s).to_string(), "[2001:db8::/32]:tcp/443", "{s}");
        }
        assert_eq!(net("[::1]:udp/53").to_string(), "[::1/128]:udp/53");
        assert_eq!(
            net("2001:db8::1:tcp/80").to_string(),
            "[2001:db8::1/128]:tcp/80"
        );
    }

    /// Regression: `[::ffff:10.0.0.1]:tcp/80` became an IPv6 rule, which never matches
    /// because the kernel reaches IPv4-mapped destinations over IPv4. In protect mode such a
    /// protected resource stayed reachable.
    #[test]
    fn ipv4_mapped_ipv6_is_used_as_ipv4() {
        let acl = parse_acl(
            "db",
            "[::ffff:10.0.0.1]:tcp/80\n::ffff:10.0.0.1/120:udp/53\n",
        )
        .expect("valid");
        let nets: Vec<String> = acl
            .lines
            .iter()
            .map(|l| match &l.entry {
                Entry::Net(d) => d.to_string(),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(nets, ["10.0.0.1/32:tcp/80", "10.0.0.0/24:udp/53"]);
        assert_eq!(
            acl.warnings[0].to_string(),
            "acl 'db' line 1: ::ffff:10.0.0.1/128 is IPv4-mapped (reached over IPv4); using 10.0.0.1/32"
        );
        assert_eq!(
            acl.warnings[1].to_string(),
            "acl 'db' line 2: ::ffff:10.0.0.1/120 is IPv4-mapped (reached over IPv4); using 10.0.0.0/24"
        );
        // Shorter prefixes reach beyond the mapped range and stay IPv6.
        assert_eq!(
            net("::ffff:0:0/95:tcp/1").to_string(),
            "[::fffe:0:0/95]:tcp/1"
        );
    }

    #[test]
    fn comments_blank_lines_and_trailing_space() {
        // egresstrator 0.2's README example has a trailing space after the first line.
        let acl = parse_acl(
            "web",
            "10.50.128.0/24:tcp/80 \n\n# a comment\n  0.0.0.0/0:tcp/8080  # inline\r\n",
        )
        .expect("valid");
        assert_eq!(acl.lines.len(), 2);
        assert_eq!(acl.lines[0].line, 1);
        assert_eq!(acl.lines[1].line, 4);
    }

    #[test]
    fn host_bits_warn_not_silently_change() {
        let acl = parse_acl("web", "10.1.2.3/24:tcp/80").expect("valid");
        assert_eq!(acl.warnings.len(), 1);
        assert_eq!(
            acl.warnings[0].to_string(),
            "acl 'web' line 1: host bits set in 10.1.2.3/24; using 10.1.2.0/24"
        );
        match &acl.lines[0].entry {
            Entry::Net(d) => assert_eq!(d.net.to_string(), "10.1.2.0/24"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn service_refs() {
        let s = |t: &str| match parse_entry(t) {
            Ok((Entry::Service(r), _)) => r,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(
            s("production.postgresql"),
            ServiceRef {
                tag: Some("production".into()),
                service: "postgresql".into(),
                datacenter: None
            }
        );
        let r = s("v1.2.api@dc-2");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.service, "api");
        assert_eq!(r.datacenter.as_deref(), Some("dc-2"));
        assert_eq!(s("redis").to_string(), "redis");
    }

    #[test]
    fn errors_name_key_line_text_and_reason() {
        assert_eq!(
            err("10.0.0.0/33:tcp/80"),
            "acl 'web' line 1: expected CIDR:PROTO/PORT or CIDR:PROTO/LOW-HIGH, got \"10.0.0.0/33:tcp/80\" (prefix length 33 > 32)"
        );
        assert!(err("::/129:tcp/80").contains("prefix length 129 > 128"));
        assert!(err("10.0.0.1:tcp/0").contains("port 0"));
        assert!(err("10.0.0.1:tcp/65536").contains("port 65536 > 65535"));
        assert!(err("10.0.0.1:tcp/90-80").contains("reversed port range 90-80"));
        assert!(err("10.0.0.1:icmp/1").contains("unknown protocol \"icmp\""));
        assert!(err("10.0.0.1:tcp/").contains("missing port"));
        assert!(err("10.0.0.1:tcp/http").contains("not a number"));
        assert!(err("10.0.0.1:tcp").contains("missing '/PORT'"));
        assert!(err("10.0.0.1").contains("missing ':PROTO/PORT'"));
        assert!(err("10.0.0.0/24").contains("missing ':PROTO/PORT'"));
        assert!(err("2001:db8::1").contains("missing ':PROTO/PORT'"));
        assert!(err("10.0.0.300:tcp/80").contains("is not an IPv4 or IPv6 address"));
        assert!(err("[2001:db8::1:tcp/80").contains("unclosed '['"));
        assert!(err("10.0.0.0/x:tcp/80").contains("prefix length \"x\" is not a number"));
        assert!(err("foo bar").contains("character ' ' is not allowed"));
        assert!(err("web@").contains("empty datacenter"));
        assert!(err(".web").contains("empty tag"));
    }

    #[test]
    fn every_bad_line_is_reported() {
        let e = parse_acl("db", "10.0.0.1:tcp/80\nbad line\n10.0.0.1:tcp/0\n").expect_err("bad");
        let lines: Vec<usize> = e.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3]);
    }

    #[test]
    fn acl_names() {
        for ok in ["web", "pay-ments_2", "prod.db", "A"] {
            assert!(AclName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "..", "a..b", ".", "../etc", "a b", "é", "a\0"] {
            assert!(AclName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            AclName::parse("../secret").expect_err("bad").to_string(),
            "invalid acl name \"../secret\": character '/' is not allowed (letters, digits, '-', '_' and '.' only)"
        );
        assert!(AclName::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn acl_lists() {
        let l = parse_acl_list(" web, payments ,,web").expect("valid");
        let names: Vec<&str> = l.iter().map(AclName::as_str).collect();
        assert_eq!(names, vec!["web", "payments"]);
        assert!(parse_acl_list("").expect("valid").is_empty());
        assert!(parse_acl_list("web,../x").is_err());
        // Bounded: too long, or too many distinct names, is an error naming the limit.
        let huge = "a,".repeat(1_000_000);
        assert_eq!(
            parse_acl_list(&huge).expect_err("too long").to_string(),
            "acl list of 2000000 bytes is longer than the limit of 16384 bytes"
        );
        let many: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
        assert_eq!(
            parse_acl_list(&many.join(",")).expect_err("too many"),
            AclNameError::ListTooMany
        );
        // Duplicates do not count against the bound.
        let dup = vec!["web"; 2000].join(",");
        assert_eq!(parse_acl_list(&dup).expect("duplicates").len(), 1);
    }
}
