//! The backend-neutral description of one namespace's egress firewall.
//!
//! A [`Ruleset`] is what policy compilation produces and what every renderer consumes. It
//! keeps each destination together with the ACL key and line it came from, so that `check`
//! and error messages can say which line decided.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::name::NamePattern;

/// Transport protocol of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive port range; a single port has `low == high`. Never contains port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            low: port,
            high: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.low <= port && port <= self.high
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// One destination: addresses, protocol and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Dest {
    pub net: IpNet,
    pub proto: Proto,
    pub ports: PortRange,
}

impl Dest {
    pub fn matches(&self, addr: IpAddr, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.ports.contains(port) && self.net.contains(&addr)
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            IpNet::V4(n) => write!(f, "{}:{}/{}", n, self.proto, self.ports),
            IpNet::V6(n) => write!(f, "[{}]:{}/{}", n, self.proto, self.ports),
        }
    }
}

/// A destination named by DNS: the addresses the container's own resolvers answer for a
/// matching name, on one protocol and port range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NameDest {
    pub pattern: NamePattern,
    pub proto: Proto,
    pub ports: PortRange,
}

impl NameDest {
    pub fn matches(&self, name: &str, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.ports.contains(port) && self.pattern.matches(name)
    }
}

impl fmt::Display for NameDest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.pattern, self.proto, self.ports)
    }
}

/// A name destination with its origin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NameRule {
    pub dest: NameDest,
    pub origin: Origin,
}

/// A name the container may resolve under the DNS filter (`NAME:dns`), with its origin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResolveRule {
    pub pattern: NamePattern,
    pub origin: Origin,
}

/// Where a destination came from: the ACL key and the 1-based line in its value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Origin {
    pub acl: String,
    pub line: usize,
    /// For a service reference, the reference as written (`production.postgresql`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acl '{}' line {}", self.acl, self.line)?;
        if let Some(s) = &self.service {
            write!(f, " (service {s})")?;
        }
        Ok(())
    }
}

/// A destination with its origin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Rule {
    pub dest: Dest,
    pub origin: Origin,
}

/// The overall stance of a ruleset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Posture {
    /// Deny egress except loopback, replies, DNS to `dns` and the `allow` destinations.
    Allowlist,
    /// Allow egress except the `deny` destinations (unless also in `allow`), DNS outside
    /// `dns`, NTP and non-SYN new TCP. egresstrator 0.2's semantics.
    Protect,
    /// Fail closed: deny all egress except loopback and replies.
    DenyAll,
}

impl fmt::Display for Posture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Posture::Allowlist => "allowlist",
            Posture::Protect => "protect",
            Posture::DenyAll => "deny-all",
        })
    }
}

/// The complete egress firewall of one network namespace, before rendering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    pub posture: Posture,
    /// ACL names the ruleset was built from, in the order the workload named them.
    pub acls: Vec<String>,
    /// Allowed destinations (allowlist), or exceptions to `deny` (protect).
    pub allow: Vec<Rule>,
    /// Rejected destinations (protect only).
    pub deny: Vec<Rule>,
    /// Resolvers that DNS (port 53) may reach.
    pub dns: Vec<IpNet>,
    /// Name destinations the container names (allowlist and protect): addresses its
    /// resolvers answer for them are allowed, each for its answer's TTL. Empty for
    /// [`Posture::DenyAll`]. Left out of the serialized form when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameRule>,
    /// The container's own resolvers, the only sources whose answers teach name
    /// destinations' addresses. In allowlist mode the same as `dns`; in protect mode `dns`
    /// is the broad `--dns-allow`, which must not decide what a name may reach.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learn_from: Vec<IpNet>,
    /// `NAME:dns` lines: names it may resolve under the DNS filter, granting no connection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolvable: Vec<ResolveRule>,
    /// The DNS filter: queries for names that no line of the container allows (a name line
    /// or a `NAME:dns` line) are answered `REFUSED` by the agent and never reach a resolver
    /// (in audit mode: reported and let through). Left out of the serialized form when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dns_filter: bool,
    /// Audit mode, for rolling out a posture safely: the ruleset is rendered in full, but
    /// where it would refuse a packet it logs it (NFLOG, prefix
    /// [`LOG_PREFIX_AUDIT`](crate::render::LOG_PREFIX_AUDIT)) and accepts it. Ignored for
    /// [`Posture::DenyAll`], which always refuses: a container failed closed stays closed
    /// whatever was asked (see [`Ruleset::audits`]). [`crate::policy::decide`] still answers
    /// what the ruleset decides, and flags the denials that audit lets through.
    ///
    /// Left out of the serialized form when false, so that form is unchanged for rulesets
    /// that enforce.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

impl Ruleset {
    /// The fail-closed ruleset: nothing leaves the namespace but loopback and replies.
    pub fn deny_all() -> Self {
        Ruleset {
            posture: Posture::DenyAll,
            acls: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            dns: Vec::new(),
            names: Vec::new(),
            learn_from: Vec::new(),
            resolvable: Vec::new(),
            dns_filter: false,
            audit: false,
        }
    }

    /// Whether the agent watches this namespace's DNS: it learns addresses from answers (name
    /// lines) or filters queries ([`Ruleset::dns_filter`]).
    pub fn learns_names(&self) -> bool {
        (!self.names.is_empty() || self.dns_filter) && self.posture != Posture::DenyAll
    }

    /// The line that lets the container resolve `qname` under the DNS filter: the first name
    /// line that matches it, else the first `NAME:dns` line; `None` when none does.
    pub fn may_resolve(&self, qname: &str) -> Option<&Origin> {
        self.names
            .iter()
            .find(|r| r.dest.pattern.matches(qname))
            .map(|r| &r.origin)
            .or_else(|| {
                self.resolvable
                    .iter()
                    .find(|r| r.pattern.matches(qname))
                    .map(|r| &r.origin)
            })
    }

    /// Whether the rendered ruleset logs and accepts where it would refuse: [`Ruleset::audit`]
    /// is set and the posture is not [`Posture::DenyAll`] (fail closed is never audited).
    pub fn audits(&self) -> bool {
        self.audit && self.posture != Posture::DenyAll
    }

    /// One word for status displays: `audit` when [`Ruleset::audits`], otherwise the posture
    /// (`allowlist`, `protect`, `deny-all`). The rendered scripts' header and the nft table
    /// comment say both, e.g. `allowlist (audit)`.
    pub fn posture_label(&self) -> String {
        if self.audits() {
            "audit".to_owned()
        } else {
            self.posture.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_is_never_audited() {
        let mut r = Ruleset::deny_all();
        assert!(!r.audit);
        r.audit = true;
        assert!(!r.audits());
        assert_eq!(r.posture_label(), "deny-all");
        for posture in [Posture::Allowlist, Posture::Protect] {
            r.posture = posture;
            assert!(r.audits());
            assert_eq!(r.posture_label(), "audit");
            r.audit = false;
            assert_eq!(r.posture_label(), posture.to_string());
            r.audit = true;
        }
    }
}
