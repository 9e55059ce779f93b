//! Makes a new ruleset apply to connections that are already open.
//!
//! `ct state established` lets packets of connections opened under an earlier ruleset (or
//! before the first one landed) through. After each apply, the namespace's connection
//! tracking is listed, and every connection the container itself opened whose destination
//! the new ruleset denies is deleted. Its next packet is then a new flow, which the ruleset
//! refuses. Connections the container accepted (inbound) and allowed ones are left alone.
//!
//! Uses the `conntrack` tool inside the namespace (conntrack-tools). Failures are logged and
//! never undo the apply: the ruleset is in force either way.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use egresstrator_core::policy::{decide, Verdict};
use egresstrator_core::{Proto, Ruleset};

use crate::netns;

/// One tracked flow in its original direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// The most connections one sweep deletes; the rest wait for the next change (the ruleset
/// refuses their next new flow either way). Bounds the sweep's memory and time.
pub const CUT_MAX: usize = 65_536;

/// Parses `conntrack -L` output (TCP and UDP flows; others are skipped).
pub fn parse_flows(text: &str) -> Vec<Flow> {
    text.lines().filter_map(parse_flow).collect()
}

/// Parses one line of `conntrack -L` output.
pub fn parse_flow(line: &str) -> Option<Flow> {
    {
        let mut words = line.split_whitespace();
        // `tcp 6 431999 ESTABLISHED src=…` or, with a family column, `ipv4 2 tcp 6 …`.
        let proto = words.find_map(|w| match w {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        });
        let proto = proto?;
        let first = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        let (Some(src), Some(dst), Some(sport), Some(dport)) = (
            first("src="),
            first("dst="),
            first("sport="),
            first("dport="),
        ) else {
            return None;
        };
        let (Ok(src), Ok(dst), Ok(sport), Ok(dport)) =
            (src.parse(), dst.parse(), sport.parse(), dport.parse())
        else {
            return None;
        };
        Some(Flow {
            proto,
            src,
            dst,
            sport,
            dport,
        })
    }
}

/// Parses `ip -o addr show` output into the namespace's own addresses.
pub fn parse_local_addrs(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                if let Some(a) = words.next().and_then(|a| a.split('/').next()) {
                    if let Ok(ip) = a.parse() {
                        out.push(ip);
                    }
                }
            }
        }
    }
    out
}

/// The flows to delete: opened by the namespace itself (source is local, destination is
/// not) and denied by `ruleset`.
pub fn denied_flows(flows: &[Flow], local: &[IpAddr], ruleset: &Ruleset) -> Vec<Flow> {
    flows
        .iter()
        .filter(|f| local.contains(&f.src) && !local.contains(&f.dst) && !f.dst.is_loopback())
        .filter(|f| decide(ruleset, f.dst, f.proto, f.dport).verdict == Verdict::Deny)
        .cloned()
        .collect()
}

async fn run(path: &Path, program: &str, args: &[&str]) -> Option<String> {
    let args = args.iter().map(|s| (*s).to_owned()).collect();
    match netns::run_program(path.to_path_buf(), program, args, Vec::new()).await {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            tracing::debug!(
                "{program} in {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            tracing::warn!("cannot cut denied connections: {e}");
            None
        }
    }
}

/// Deletes the tracked connections that `ruleset` denies; returns how many.
pub async fn cut_denied(path: PathBuf, ruleset: &Ruleset) -> usize {
    let Some(addrs) = run(&path, "ip", &["-o", "addr", "show"]).await else {
        return 0;
    };
    let local = parse_local_addrs(&addrs);
    // The listing is read line by line and only denied flows are kept (at most CUT_MAX): a
    // busy namespace's conntrack table is never held whole in memory.
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for family in ["ipv4", "ipv6"] {
        let (local, ruleset, kept) = (local.clone(), ruleset.clone(), kept.clone());
        let keep = move |line: &str| {
            let Some(f) = parse_flow(line) else { return };
            if denied_flows(std::slice::from_ref(&f), &local, &ruleset).is_empty() {
                return;
            }
            let mut kept = kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.len() < CUT_MAX {
                kept.push(f);
            }
        };
        let args = vec!["-L".to_owned(), "-f".to_owned(), family.to_owned()];
        if let Err(e) = netns::stream_program(path.clone(), "conntrack", args, keep).await {
            tracing::warn!("cannot cut denied connections: {e}");
        }
    }
    let denied = std::mem::take(
        &mut *kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut cut = 0;
    for f in &denied {
        let family = if f.src.is_ipv4() { "ipv4" } else { "ipv6" };
        let (src, dst, sport, dport) = (
            f.src.to_string(),
            f.dst.to_string(),
            f.sport.to_string(),
            f.dport.to_string(),
        );
        let args = [
            "-D",
            "-f",
            family,
            "-p",
            f.proto.as_str(),
            "-s",
            &src,
            "-d",
            &dst,
            "--sport",
            &sport,
            "--dport",
            &dport,
        ];
        if run(&path, "conntrack", &args).await.is_some() {
            cut += 1;
        }
    }
    if cut > 0 {
        tracing::info!(
            netns = %path.display(),
            connections = cut,
            "cut open connections that the new ruleset denies"
        );
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresstrator_core::ruleset::{Dest, Origin, PortRange, Posture, Rule};

    const LISTING: &str = "\
tcp      6 431999 ESTABLISHED src=10.231.12.2 dst=10.231.12.10 sport=40000 dport=80 src=10.231.12.10 dst=10.231.12.2 sport=80 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.231.12.2 dst=10.231.12.10 sport=40002 dport=8080 src=10.231.12.10 dst=10.231.12.2 sport=8080 dport=40002 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.231.12.10 dst=10.231.12.2 sport=5000 dport=9000 src=10.231.12.2 dst=10.231.12.10 sport=9000 dport=5000 [ASSURED] mark=0 use=1
udp      17 29 src=10.231.12.2 dst=10.231.12.10 sport=5353 dport=53 [UNREPLIED] src=10.231.12.10 dst=10.231.12.2 sport=53 dport=5353 mark=0 use=1
icmp     1 29 src=10.231.12.2 dst=10.231.12.10 type=8 code=0 id=1 src=10.231.12.10 dst=10.231.12.2 type=0 code=0 id=1 mark=0 use=1
";

    #[test]
    fn parses_tcp_and_udp_in_original_direction() {
        let f = parse_flows(LISTING);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].dport, 80);
        assert_eq!(f[3].proto, Proto::Udp);
    }

    #[test]
    fn only_outbound_denied_flows_are_cut() {
        let ruleset = Ruleset {
            posture: Posture::Allowlist,
            acls: vec!["web".into()],
            allow: vec![Rule {
                dest: Dest {
                    net: "10.231.12.10/32".parse().expect("net"),
                    proto: Proto::Tcp,
                    ports: PortRange::single(80),
                },
                origin: Origin {
                    acl: "web".into(),
                    line: 1,
                    service: None,
                },
            }],
            deny: vec![],
            dns: vec![],
            names: vec![],
            resolvable: vec![],
            learn_from: vec![],
            dns_filter: false,
            audit: false,
        };
        let local = parse_local_addrs(
            "1: lo    inet 127.0.0.1/8 scope host lo\n9: eth0    inet 10.231.12.2/24 brd 10.231.12.255 scope global eth0\n",
        );
        assert_eq!(local.len(), 2);
        let cut = denied_flows(&parse_flows(LISTING), &local, &ruleset);
        // Port 80 stays (allowed); the inbound flow to :9000 stays (accepted by us);
        // 8080 and DNS to a non-resolver are cut.
        let ports: Vec<u16> = cut.iter().map(|f| f.dport).collect();
        assert_eq!(ports, vec![8080, 53]);
    }
}
