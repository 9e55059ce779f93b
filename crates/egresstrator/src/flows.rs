//! Connections the kernel reported as refused (or, in audit mode, let through where the
//! ruleset would refuse), as the agent tells them: one [`FlowRecord`] per logged packet,
//! attributed to a container and explained the way `check` would explain it.
//!
//! The kernel side is a rate-limited log rule in each namespace's ruleset
//! (`egresstrator_core::render`), read by the `nflog` module; the agent attributes records,
//! and the `status` module's `/monitor` streams them to `egresstrator monitor`.
//! A TCP connection is refused with a reset at its first SYN, so it is logged once; a UDP
//! datagram to a refused destination is logged each time it is sent, within the rule's limit.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What the ruleset did with the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    /// Refused.
    Deny,
    /// An audit-mode ruleset let it through where it would have refused it.
    Audit,
}

/// One refused (or audited) flow, as `monitor` and the log show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When the kernel logged it (RFC 3339, UTC).
    pub time: String,
    pub verdict: FlowVerdict,
    /// The container's full id.
    pub id: String,
    pub name: String,
    pub acls: Vec<String>,
    /// The posture of the ruleset in force (`allowlist`, `protect`, `deny-all`, `audit`).
    pub posture: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
    pub proto: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// What `check` says of this destination: the ACL line that decides, or why none allows.
    pub reason: String,
    /// The DNS name the workload asked for: the refused query's (DNS filter), or the name a
    /// recent answer gave for the refused address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qname: Option<String>,
}

/// A protocol number as `monitor` shows it.
pub fn proto_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

impl FlowRecord {
    /// One human-readable line: time, verdict, container, destination, why.
    pub fn line(&self) -> String {
        let dst = match (self.dst, self.dport) {
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        let verdict = match self.verdict {
            FlowVerdict::Deny => "deny ",
            FlowVerdict::Audit => "audit",
        };
        format!(
            "{} {verdict} {} ({}) {}/{dst} acls={} posture={}: {}",
            self.time,
            crate::docker::short_id(&self.id),
            self.name,
            self.proto,
            if self.acls.is_empty() {
                "-".to_owned()
            } else {
                self.acls.join(",")
            },
            self.posture,
            match &self.qname {
                Some(n) if !self.reason.contains(n.as_str()) =>
                    format!("{} (name {n})", self.reason),
                _ => self.reason.clone(),
            }
        )
    }

    /// Whether `monitor`'s selection names this container: a name, or a prefix of the id.
    pub fn matches(&self, selection: &[String]) -> bool {
        selection.is_empty()
            || selection.iter().any(|s| {
                let s = s.trim_start_matches('/');
                s == self.name || (!s.is_empty() && self.id.starts_with(s))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_selection() {
        let r = FlowRecord {
            time: "2026-12-01T00:00:00.000Z".into(),
            verdict: FlowVerdict::Deny,
            id: "0123456789abcdef".repeat(4),
            name: "web".into(),
            acls: vec!["db".into()],
            posture: "allowlist".into(),
            proto: proto_name(6),
            src: "10.0.0.2".parse().expect("ip"),
            dst: "fd00::1".parse().expect("ip"),
            dport: Some(443),
            reason: "no acl allows it (default deny)".into(),
            qname: None,
        };
        assert_eq!(
            r.line(),
            "2026-12-01T00:00:00.000Z deny  0123456789ab (web) tcp/[fd00::1]:443 acls=db posture=allowlist: no acl allows it (default deny)"
        );
        assert!(r.matches(&[]));
        assert!(r.matches(&["web".into()]));
        assert!(r.matches(&["/web".into()]));
        assert!(r.matches(&["01234".into()]));
        assert!(!r.matches(&["db".into(), "4321".into()]));
        assert!(!r.matches(&["".into()]));
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains("qname"), "{json}");
        assert_eq!(serde_json::from_str::<FlowRecord>(&json).expect("back"), r);
        let named = FlowRecord {
            qname: Some("api.example.com".into()),
            ..r
        };
        assert!(named
            .line()
            .ends_with("(default deny) (name api.example.com)"));
        let json = serde_json::to_string(&named).expect("json");
        assert_eq!(
            serde_json::from_str::<FlowRecord>(&json).expect("back"),
            named
        );
    }
}
