//! Policy compilation: a workload's ACL names + the ACL table + resolved services + mode →
//! a [`Ruleset`]. Also the pure decision (`decide`) that `check` and the kernel tests use.
//!
//! Compilation fails instead of guessing: an unknown ACL, a bad line or an unresolved service
//! is an error, and the caller must then apply [`Ruleset::deny_all`] (fail closed). Nothing
//! here may read the network or the clock.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use thiserror::Error;

use crate::acl::{AclErrors, AclName, AclTable, Entry, ServiceRef};
use crate::ruleset::{
    Dest, NameRule, Origin, PortRange, Posture, Proto, ResolveRule, Rule, Ruleset,
};

/// How ACLs are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny by default; named ACLs are what the workload may reach.
    #[default]
    Allowlist,
    /// Allow by default; every ACL is a protected resource, and naming it grants access.
    Protect,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Allowlist => "allowlist",
            Mode::Protect => "protect",
        })
    }
}

/// The resolvers protect mode allows DNS to by default: the RFC 1918 ranges.
pub fn default_dns_allow() -> Vec<IpNet> {
    [
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
    ]
    .into_iter()
    .filter_map(|(a, l)| Ipv4Net::new(a, l).ok().map(IpNet::V4))
    .collect()
}

/// Instances of each referenced service, as resolved from Consul's catalog.
pub type ServiceTable = BTreeMap<ServiceRef, Vec<SocketAddr>>;

/// Everything shared by all workloads on a host.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    pub mode: Mode,
    pub acls: &'a AclTable,
    pub services: &'a ServiceTable,
    /// Resolvers that DNS may reach in protect mode.
    pub dns_allow: &'a [IpNet],
}

/// What one workload asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadPolicy {
    pub acls: Vec<AclName>,
    /// The workload's own resolvers (from its resolv.conf): DNS to them is allowed in
    /// allowlist mode.
    pub resolvers: Vec<IpAddr>,
}

/// A compiled ruleset and what was worth telling the operator on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub ruleset: Ruleset,
    pub warnings: Vec<String>,
}

/// Why a workload's policy cannot be built. The workload must be failed closed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CompileError {
    #[error("acl '{0}' does not exist under the kv-path (or the token may not read it)")]
    UnknownAcl(String),
    #[error("{0}")]
    InvalidAcl(AclErrors),
    #[error("acl '{acl}' line {line}: service {service} has not been resolved from Consul")]
    UnresolvedService {
        acl: String,
        line: usize,
        service: String,
    },
}

/// Compiles one workload's ruleset.
pub fn compile(
    workload: &WorkloadPolicy,
    input: &PolicyInput<'_>,
) -> Result<Compiled, CompileError> {
    let mut warnings = Vec::new();
    let mut allow = Vec::new();
    let mut names = Vec::new();
    let mut resolvable = Vec::new();
    for name in &workload.acls {
        let acl = match input.acls.get(name.as_str()) {
            None => return Err(CompileError::UnknownAcl(name.to_string())),
            Some(Err(e)) => return Err(CompileError::InvalidAcl(e.clone())),
            Some(Ok(acl)) => acl,
        };
        expand(
            name.as_str(),
            acl,
            input.services,
            &mut allow,
            &mut names,
            &mut resolvable,
            &mut warnings,
        )?;
    }
    let acls = workload.acls.iter().map(ToString::to_string).collect();
    let own_resolvers: Vec<IpNet> = workload
        .resolvers
        .iter()
        .map(|a| IpNet::from(a.to_canonical()))
        .collect();
    let learn_from = if names.is_empty() {
        Vec::new()
    } else {
        own_resolvers.clone()
    };
    let ruleset = match input.mode {
        Mode::Allowlist => Ruleset {
            posture: Posture::Allowlist,
            acls,
            allow,
            deny: Vec::new(),
            dns: own_resolvers,
            names,
            learn_from,
            resolvable,
            dns_filter: false,
            audit: false,
        },
        Mode::Protect => {
            // Every key the workload does not name is a protected resource. A bad key makes
            // the protected set unknown, so it fails the workload closed like a named one.
            let mut deny = Vec::new();
            for (name, acl) in input.acls.iter() {
                if workload.acls.iter().any(|n| n.as_str() == name) {
                    continue;
                }
                let acl = acl
                    .as_ref()
                    .map_err(|e| CompileError::InvalidAcl(e.clone()))?;
                let mut protected_names = Vec::new();
                expand(
                    name,
                    acl,
                    input.services,
                    &mut deny,
                    &mut protected_names,
                    &mut Vec::new(),
                    &mut warnings,
                )?;
                // A name's addresses are only known to containers that resolve it, so a name
                // cannot be protected from the ones that do not name it. Said, not hidden.
                warnings.extend(protected_names.iter().map(|n: &NameRule| {
                    format!(
                        "{}: name {} protects nothing in protect mode (only naming it grants it)",
                        n.origin, n.dest.pattern
                    )
                }));
            }
            Ruleset {
                posture: Posture::Protect,
                acls,
                allow,
                deny,
                dns: input
                    .dns_allow
                    .iter()
                    .map(|n| crate::acl::canonical_net(n.trunc()))
                    .collect(),
                names,
                learn_from,
                resolvable,
                dns_filter: false,
                audit: false,
            }
        }
    };
    Ok(Compiled { ruleset, warnings })
}

fn expand(
    name: &str,
    acl: &crate::acl::Acl,
    services: &ServiceTable,
    out: &mut Vec<Rule>,
    names: &mut Vec<NameRule>,
    resolvable: &mut Vec<ResolveRule>,
    warnings: &mut Vec<String>,
) -> Result<(), CompileError> {
    warnings.extend(acl.warnings.iter().map(ToString::to_string));
    for line in &acl.lines {
        match &line.entry {
            Entry::Net(dest) => out.push(Rule {
                dest: *dest,
                origin: Origin {
                    acl: name.to_owned(),
                    line: line.line,
                    service: None,
                },
            }),
            Entry::Name(dest) => names.push(NameRule {
                dest: dest.clone(),
                origin: Origin {
                    acl: name.to_owned(),
                    line: line.line,
                    service: None,
                },
            }),
            Entry::Resolve(pattern) => resolvable.push(ResolveRule {
                pattern: pattern.clone(),
                origin: Origin {
                    acl: name.to_owned(),
                    line: line.line,
                    service: None,
                },
            }),
            Entry::Service(sref) => {
                let instances =
                    services
                        .get(sref)
                        .ok_or_else(|| CompileError::UnresolvedService {
                            acl: name.to_owned(),
                            line: line.line,
                            service: sref.to_string(),
                        })?;
                if instances.is_empty() {
                    warnings.push(format!(
                        "acl '{name}' line {}: service {sref} has no instances",
                        line.line
                    ));
                }
                out.extend(instances.iter().map(|sa| Rule {
                    dest: Dest {
                        // An IPv4-mapped instance address is reached over IPv4.
                        net: IpNet::from(sa.ip().to_canonical()),
                        proto: Proto::Tcp,
                        ports: PortRange::single(sa.port()),
                    },
                    origin: Origin {
                        acl: name.to_owned(),
                        line: line.line,
                        service: Some(sref.to_string()),
                    },
                }));
            }
        }
    }
    Ok(())
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// What decided a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Reason {
    Loopback,
    Dns,
    DnsNotAllowed,
    Ntp,
    Rule { origin: Origin },
    Protected { origin: Origin },
    DefaultDeny,
    DefaultAllow,
    FailClosed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Loopback => f.write_str("loopback is always allowed"),
            Reason::Dns => f.write_str("DNS to a configured resolver"),
            Reason::DnsNotAllowed => f.write_str("DNS to a resolver that is not allowed"),
            Reason::Ntp => f.write_str("NTP is rejected in protect mode"),
            Reason::Rule { origin } => write!(f, "allowed by {origin}"),
            Reason::Protected { origin } => write!(f, "protected by {origin}"),
            Reason::DefaultDeny => f.write_str("no acl allows it (default deny)"),
            Reason::DefaultAllow => f.write_str("no acl protects it (default allow)"),
            Reason::FailClosed => f.write_str("the container is failed closed"),
        }
    }
}

/// A verdict and what decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What the ruleset decides, audit mode or not.
    pub verdict: Verdict,
    pub reason: Reason,
    /// True when the verdict is [`Verdict::Deny`] but the ruleset [`audits`]: the kernel logs
    /// the packet with [`LOG_PREFIX_AUDIT`] and lets it through. Left out of the serialized
    /// form when false.
    ///
    /// [`audits`]: Ruleset::audits
    /// [`LOG_PREFIX_AUDIT`]: crate::render::LOG_PREFIX_AUDIT
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub audited: bool,
}

impl Decision {
    /// Whether the kernel lets the packet through: allowed, or denied but audited.
    pub fn passes(&self) -> bool {
        self.verdict == Verdict::Allow || self.audited
    }
}

/// What the rendered ruleset does with a NEW connection (a TCP SYN, or a first UDP datagram)
/// from the namespace to `addr`, over a non-loopback interface unless `addr` is loopback.
/// This is the specification the renderers are tested against.
///
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is decided as the IPv4 address it maps to:
/// that is what the kernel sends.
///
/// Audit mode does not change the verdict: a denial under an auditing ruleset is still
/// [`Verdict::Deny`], with [`Decision::audited`] set.
pub fn decide(ruleset: &Ruleset, addr: IpAddr, proto: Proto, port: u16) -> Decision {
    let addr = addr.to_canonical();
    let d = |verdict, reason| Decision {
        verdict,
        reason,
        audited: verdict == Verdict::Deny && ruleset.audits(),
    };
    if addr.is_loopback() {
        return d(Verdict::Allow, Reason::Loopback);
    }
    let first = |rules: &[Rule]| {
        rules
            .iter()
            .find(|r| r.dest.matches(addr, proto, port))
            .map(|r| r.origin.clone())
    };
    let in_dns = ruleset.dns.iter().any(|n| n.contains(&addr));
    match ruleset.posture {
        Posture::DenyAll => d(Verdict::Deny, Reason::FailClosed),
        Posture::Allowlist => {
            if port == 53 && in_dns {
                return d(Verdict::Allow, Reason::Dns);
            }
            match first(&ruleset.allow) {
                Some(origin) => d(Verdict::Allow, Reason::Rule { origin }),
                None => d(Verdict::Deny, Reason::DefaultDeny),
            }
        }
        Posture::Protect => {
            if proto == Proto::Udp && port == 53 {
                return if in_dns {
                    d(Verdict::Allow, Reason::Dns)
                } else {
                    d(Verdict::Deny, Reason::DnsNotAllowed)
                };
            }
            if proto == Proto::Udp && port == 123 {
                return d(Verdict::Deny, Reason::Ntp);
            }
            if let Some(origin) = first(&ruleset.allow) {
                return d(Verdict::Allow, Reason::Rule { origin });
            }
            match first(&ruleset.deny) {
                Some(origin) => d(Verdict::Deny, Reason::Protected { origin }),
                None => d(Verdict::Allow, Reason::DefaultAllow),
            }
        }
    }
}

/// What the ruleset decides for a new connection to a DNS name (on its resolvers' answered
/// addresses): the first name line that matches allows it. `None` when no line matches in
/// protect mode, where the answered address then decides as in [`decide`].
pub fn decide_name(ruleset: &Ruleset, name: &str, proto: Proto, port: u16) -> Option<Decision> {
    let d = |verdict, reason| Decision {
        verdict,
        reason,
        audited: verdict == Verdict::Deny && ruleset.audits(),
    };
    if ruleset.posture == Posture::DenyAll {
        return Some(d(Verdict::Deny, Reason::FailClosed));
    }
    match ruleset
        .names
        .iter()
        .find(|r| r.dest.matches(name, proto, port))
    {
        Some(r) => Some(d(
            Verdict::Allow,
            Reason::Rule {
                origin: r.origin.clone(),
            },
        )),
        None if ruleset.posture == Posture::Allowlist => {
            Some(d(Verdict::Deny, Reason::DefaultDeny))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::parse_acl_list;

    fn table(kv: &[(&str, &str)]) -> AclTable {
        AclTable::parse(kv.iter().copied())
    }

    fn wl(acls: &str) -> WorkloadPolicy {
        WorkloadPolicy {
            acls: parse_acl_list(acls).expect("names"),
            resolvers: vec!["172.17.0.53".parse().expect("ip")],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn names_are_learned_from_the_containers_own_resolvers_only_and_decided_by_line() {
        let t = table(&[
            (
                "web",
                "api.example.com:tcp/443\n*.cdn.example.com:tcp/80\ndb:dns\n",
            ),
            ("other", "secret.example.com:tcp/443\n"),
        ]);
        let services = ServiceTable::new();
        let dns_allow: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        for mode in [Mode::Allowlist, Mode::Protect] {
            let input = PolicyInput {
                mode,
                acls: &t,
                services: &services,
                dns_allow: &dns_allow,
            };
            let c = compile(&wl("web"), &input).expect("compiles");
            let r = &c.ruleset;
            // Protect mode's `dns` is the broad --dns-allow; answers count only from the
            // container's own resolver.
            assert_eq!(
                r.learn_from,
                vec!["172.17.0.53/32".parse::<IpNet>().expect("net")]
            );
            assert_eq!(r.names.len(), 2, "{mode:?}: only the named acl's names");
            let yes = decide_name(r, "API.example.com", Proto::Tcp, 443).expect("decided");
            assert!(yes.passes());
            assert!(yes.reason.to_string().contains("acl 'web' line 1"));
            assert!(decide_name(r, "a.b.cdn.example.com", Proto::Tcp, 80)
                .expect("d")
                .passes());
            assert_eq!(r.may_resolve("db").map(|o| o.line), Some(3));
            assert_eq!(
                r.may_resolve("cdn.example.com"),
                None,
                "the apex is not matched"
            );
            match mode {
                Mode::Allowlist => {
                    let no = decide_name(r, "api.example.com", Proto::Tcp, 80).expect("decided");
                    assert_eq!(no.reason, Reason::DefaultDeny);
                    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
                }
                Mode::Protect => {
                    assert!(decide_name(r, "secret.example.com", Proto::Tcp, 443).is_none());
                    assert!(
                        c.warnings
                            .iter()
                            .any(|w| w.contains("secret.example.com")
                                && w.contains("protects nothing")),
                        "{:?}",
                        c.warnings
                    );
                }
            }
        }
    }

    #[test]
    fn allowlist_allows_named_destinations_only() {
        let t = table(&[("web", "10.0.0.0/24:tcp/80"), ("db", "10.9.0.1:tcp/5432")]);
        let services = ServiceTable::new();
        let input = PolicyInput {
            mode: Mode::Allowlist,
            acls: &t,
            services: &services,
            dns_allow: &[],
        };
        let c = compile(&wl("web"), &input).expect("compiles");
        let r = &c.ruleset;
        let allow = decide(r, ip("10.0.0.9"), Proto::Tcp, 80);
        assert_eq!(allow.verdict, Verdict::Allow);
        assert_eq!(allow.reason.to_string(), "allowed by acl 'web' line 1");
        assert_eq!(
            decide(r, ip("10.0.0.9"), Proto::Tcp, 81).verdict,
            Verdict::Deny
        );
        assert_eq!(
            decide(r, ip("10.0.0.9"), Proto::Udp, 80).verdict,
            Verdict::Deny
        );
        assert_eq!(
            decide(r, ip("10.9.0.1"), Proto::Tcp, 5432).verdict,
            Verdict::Deny
        );
        assert_eq!(
            decide(r, ip("172.17.0.53"), Proto::Udp, 53).reason,
            Reason::Dns
        );
        assert_eq!(
            decide(r, ip("172.17.0.54"), Proto::Udp, 53).verdict,
            Verdict::Deny
        );
        assert_eq!(
            decide(r, ip("127.0.0.1"), Proto::Tcp, 9).reason,
            Reason::Loopback
        );
    }

    #[test]
    fn unknown_or_bad_acl_is_an_error() {
        let t = table(&[("bad", "10.0.0.0/33:tcp/80")]);
        let services = ServiceTable::new();
        let input = PolicyInput {
            mode: Mode::Allowlist,
            acls: &t,
            services: &services,
            dns_allow: &[],
        };
        assert_eq!(
            compile(&wl("nope"), &input)
                .expect_err("unknown")
                .to_string(),
            "acl 'nope' does not exist under the kv-path (or the token may not read it)"
        );
        assert!(compile(&wl("bad"), &input)
            .expect_err("bad")
            .to_string()
            .contains("acl 'bad' line 1: expected CIDR:PROTO/PORT"));
    }

    #[test]
    fn protect_mode_semantics() {
        let t = table(&[
            ("web", "10.0.0.0/24:tcp/80"),
            ("db", "10.9.0.0/24:tcp/5432\n10.0.0.0/16:tcp/80"),
        ]);
        let services = ServiceTable::new();
        let dns = default_dns_allow();
        let input = PolicyInput {
            mode: Mode::Protect,
            acls: &t,
            services: &services,
            dns_allow: &dns,
        };
        let r = compile(&wl("web"), &input).expect("compiles").ruleset;
        // db is not named: protected.
        let d = decide(&r, ip("10.9.0.5"), Proto::Tcp, 5432);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.reason.to_string(), "protected by acl 'db' line 1");
        // Named web grants access even where db overlaps it.
        assert_eq!(
            decide(&r, ip("10.0.0.5"), Proto::Tcp, 80).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&r, ip("10.0.1.5"), Proto::Tcp, 80).verdict,
            Verdict::Deny
        );
        // Everything else is open, but DNS only to private resolvers and NTP never.
        assert_eq!(
            decide(&r, ip("192.0.2.1"), Proto::Tcp, 443).reason,
            Reason::DefaultAllow
        );
        assert_eq!(
            decide(&r, ip("10.1.1.1"), Proto::Udp, 53).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&r, ip("192.0.2.1"), Proto::Udp, 53).reason,
            Reason::DnsNotAllowed
        );
        assert_eq!(
            decide(&r, ip("10.1.1.1"), Proto::Udp, 123).reason,
            Reason::Ntp
        );
    }

    #[test]
    fn protect_mode_fails_on_any_bad_key() {
        let t = table(&[("web", "10.0.0.0/24:tcp/80"), ("other", "nonsense here")]);
        let services = ServiceTable::new();
        let input = PolicyInput {
            mode: Mode::Protect,
            acls: &t,
            services: &services,
            dns_allow: &[],
        };
        assert!(compile(&wl("web"), &input).is_err());
    }

    #[test]
    fn services_expand_to_tcp_instances() {
        let t = table(&[("db", "production.postgresql\nempty")]);
        let mut services = ServiceTable::new();
        let pg = crate::acl::parse_service_ref("production.postgresql").expect("ref");
        services.insert(pg, vec!["10.3.0.7:5432".parse().expect("sa")]);
        let input = PolicyInput {
            mode: Mode::Allowlist,
            acls: &t,
            services: &services,
            dns_allow: &[],
        };
        let err = compile(&wl("db"), &input).expect_err("unresolved");
        assert_eq!(
            err.to_string(),
            "acl 'db' line 2: service empty has not been resolved from Consul"
        );
        services.insert(crate::acl::parse_service_ref("empty").expect("ref"), vec![]);
        let input = PolicyInput {
            mode: Mode::Allowlist,
            acls: &t,
            services: &services,
            dns_allow: &[],
        };
        let c = compile(&wl("db"), &input).expect("compiles");
        assert_eq!(
            c.warnings,
            ["acl 'db' line 2: service empty has no instances"]
        );
        let d = decide(&c.ruleset, ip("10.3.0.7"), Proto::Tcp, 5432);
        assert_eq!(
            d.reason.to_string(),
            "allowed by acl 'db' line 1 (service production.postgresql)"
        );
    }

    /// Regression: a probe for `::ffff:10.0.0.1` was decided as IPv6, but a connection to it
    /// leaves as IPv4 to 10.0.0.1 (and `::ffff:127.0.0.1` is loopback).
    #[test]
    fn ipv4_mapped_probe_is_decided_as_ipv4() {
        let mut services = ServiceTable::new();
        services.insert(
            crate::acl::parse_service_ref("api").expect("ref"),
            vec!["[::ffff:10.0.0.2]:443".parse().expect("sa")],
        );
        let t = table(&[("web", "10.0.0.1:tcp/80\napi")]);
        let input = PolicyInput {
            mode: Mode::Allowlist,
            acls: &t,
            services: &services,
            dns_allow: &[],
        };
        let mut w = wl("web");
        w.resolvers = vec![ip("::ffff:10.0.0.53")];
        let r = compile(&w, &input).expect("compiles").ruleset;
        assert_eq!(r.dns, vec!["10.0.0.53/32".parse::<IpNet>().expect("net")]);
        assert_eq!(r.allow[1].dest.to_string(), "10.0.0.2/32:tcp/443");
        assert_eq!(
            decide(&r, ip("::ffff:10.0.0.1"), Proto::Tcp, 80).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&r, ip("::ffff:10.0.0.53"), Proto::Udp, 53).reason,
            Reason::Dns
        );
        assert_eq!(
            decide(&Ruleset::deny_all(), ip("::ffff:127.0.0.1"), Proto::Tcp, 80).reason,
            Reason::Loopback
        );
        let dns_allow = ["::ffff:10.0.0.0/104".parse::<IpNet>().expect("net")];
        let input = PolicyInput {
            mode: Mode::Protect,
            dns_allow: &dns_allow,
            ..input
        };
        let r = compile(&w, &input).expect("compiles").ruleset;
        assert_eq!(r.dns, vec!["10.0.0.0/8".parse::<IpNet>().expect("net")]);
    }

    #[test]
    fn audit_keeps_the_verdict_and_flags_it() {
        let t = table(&[("web", "10.0.0.0/24:tcp/80")]);
        let services = ServiceTable::new();
        let input = PolicyInput {
            mode: Mode::Allowlist,
            acls: &t,
            services: &services,
            dns_allow: &[],
        };
        let mut r = compile(&wl("web"), &input).expect("compiles").ruleset;
        assert!(!r.audit);
        r.audit = true;
        let denied = decide(&r, ip("10.0.1.1"), Proto::Tcp, 80);
        assert_eq!(denied.verdict, Verdict::Deny);
        assert_eq!(denied.reason, Reason::DefaultDeny);
        assert!(denied.audited && denied.passes());
        let allowed = decide(&r, ip("10.0.0.1"), Proto::Tcp, 80);
        assert!(!allowed.audited && allowed.passes());
        // Fail closed is never audited.
        let closed = Ruleset {
            audit: true,
            ..Ruleset::deny_all()
        };
        let d = decide(&closed, ip("10.0.0.1"), Proto::Tcp, 80);
        assert!(!d.audited && !d.passes());
    }

    #[test]
    fn deny_all_denies_everything_but_loopback() {
        let r = Ruleset::deny_all();
        assert_eq!(
            decide(&r, ip("10.0.0.1"), Proto::Udp, 53).reason,
            Reason::FailClosed
        );
        assert_eq!(decide(&r, ip("::1"), Proto::Tcp, 1).verdict, Verdict::Allow);
    }
}
