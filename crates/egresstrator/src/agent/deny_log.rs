//! The deny log: each namespace's kernel log records (refused flows, and audit mode's
//! would-be-refused ones) are read by a task per namespace ([`crate::nflog`], a socket
//! created inside the namespace), attributed here to a container, explained as `check` would
//! explain them, logged at `info` (rate-limited) and published to `/monitor` and `/metrics`.
//!
//! A flow is reported once: packets with the same protocol, addresses and ports within
//! [`SAME_FLOW`] are one record.
//!
//! Bounds: the kernel logs at most `LOG_RATE_PER_SEC` records a second per namespace (burst
//! `LOG_BURST`, in the ruleset); records travel to the loop over a queue of [`FLOW_QUEUE`]
//! batches, and a full queue drops (and counts) rather than waits; the agent's own log takes
//! at most [`LOG_LINES_PER_SEC`] flow lines a second and says how many it left out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresstrator_core::policy::decide;
use egresstrator_core::render::{LOG_PREFIX_AUDIT, LOG_PREFIX_DENY, NFLOG_GROUP};
use egresstrator_core::{Posture, Proto, Ruleset};
use tokio::sync::mpsc;

use super::{Member, NsKey, Reconciler};
use crate::flows::{proto_name, FlowRecord, FlowVerdict};
use crate::nflog::{self, Record};
use crate::status::StatusBoard;

/// Batches of records (one per datagram the kernel sent) the loop may be behind by.
pub(super) const FLOW_QUEUE: usize = 256;
/// Flow lines the agent's own log takes per second (the rest are counted, and said).
const LOG_LINES_PER_SEC: u32 = 10;
/// Packets of one flow (same namespace, protocol, addresses and ports) within this time are
/// one record: a refused UDP datagram is logged each time it is sent, and a retry loop on one
/// socket is one flow.
const SAME_FLOW: Duration = Duration::from_secs(2);
/// Flows remembered for [`SAME_FLOW`] at most; beyond, the oldest are forgotten first.
const FLOWS_REMEMBERED: usize = 8192;

/// Records read in one namespace, on their way to the loop.
pub(super) type Flows = (NsKey, Vec<Record>);

/// The task reading one namespace's log. Dropping it (the namespace is forgotten) ends the
/// task and closes its socket, which otherwise keeps the namespace alive.
#[derive(Debug)]
pub(super) struct LogTask(tokio::task::AbortHandle);

impl Drop for LogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which flows were reported in the last [`SAME_FLOW`].
#[derive(Debug, Default)]
pub(super) struct SeenFlows(HashMap<FlowKey, Instant>);

/// Namespace, protocol, source address and port, destination address and port.
type FlowKey = (NsKey, u8, IpAddr, Option<u16>, IpAddr, Option<u16>);

impl SeenFlows {
    /// True when the record starts a flow (not seen within [`SAME_FLOW`]).
    fn first(&mut self, ns: &NsKey, r: &Record, now: Instant) -> bool {
        let key = (ns.clone(), r.proto, r.src, r.sport, r.dst, r.dport);
        if let Some(at) = self.0.get(&key) {
            if now.duration_since(*at) < SAME_FLOW {
                return false;
            }
        }
        if self.0.len() >= FLOWS_REMEMBERED {
            self.0.retain(|_, at| now.duration_since(*at) < SAME_FLOW);
            if self.0.len() >= FLOWS_REMEMBERED {
                // A flood of distinct flows: forget them all rather than grow (a record too
                // many is better than memory without bound).
                self.0.clear();
            }
        }
        self.0.insert(key, now);
        true
    }
}

/// At most [`LOG_LINES_PER_SEC`] lines a second; counts what it holds back.
#[derive(Debug)]
pub(super) struct LineLimiter {
    second: Instant,
    used: u32,
    held_back: u64,
}

impl Default for LineLimiter {
    fn default() -> Self {
        LineLimiter {
            second: Instant::now(),
            used: 0,
            held_back: 0,
        }
    }
}

impl LineLimiter {
    /// Whether a line may be logged now; when a new second starts, the count of lines held
    /// back in the last one is returned with it.
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut said = 0;
        if now.duration_since(self.second).as_secs() >= 1 {
            self.second = now;
            self.used = 0;
            said = std::mem::take(&mut self.held_back);
        }
        if self.used < LOG_LINES_PER_SEC {
            self.used += 1;
            (true, said)
        } else {
            self.held_back += 1;
            (false, said)
        }
    }
}

/// Reads the log of the namespace at `path` until the task is aborted or the socket fails.
fn spawn_reader(
    ns: NsKey,
    path: PathBuf,
    tx: mpsc::Sender<Flows>,
    board: Arc<StatusBoard>,
) -> LogTask {
    let task = tokio::spawn(async move {
        let mut listener = match nflog::open_in_async(path.clone(), NFLOG_GROUP).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(netns = %path.display(), "no deny log for this namespace: {e}");
                return;
            }
        };
        let mut lost = 0;
        loop {
            match listener.recv().await {
                Ok(records) if records.is_empty() => {}
                Ok(records) => {
                    let n = records.len() as u64;
                    if tx.try_send((ns.clone(), records)).is_err() {
                        board.flows_dropped(n);
                    }
                }
                Err(e) => {
                    tracing::debug!(netns = %path.display(), "deny log ended: {e}");
                    return;
                }
            }
            let stats = listener.stats();
            let now_lost = stats.lost;
            if now_lost > lost {
                board.flows_dropped(now_lost - lost);
                lost = now_lost;
            }
        }
    });
    LogTask(task.abort_handle())
}

/// What `check` says of a logged flow under the ruleset in force.
fn explain(ruleset: Option<&Ruleset>, r: &Record) -> String {
    let Some(ruleset) = ruleset else {
        return "refused by the template's ruleset".into();
    };
    if ruleset.posture == Posture::DenyAll {
        return "the container is failed closed (deny-all)".into();
    }
    let proto = match r.proto {
        6 => Some(Proto::Tcp),
        17 => Some(Proto::Udp),
        _ => None,
    };
    match (proto, r.dport) {
        (Some(p), Some(port)) => decide(ruleset, r.dst, p, port).reason.to_string(),
        _ => format!(
            "{} is neither TCP nor UDP: no acl allows it",
            proto_name(r.proto)
        ),
    }
}

impl Reconciler {
    /// Starts reading a namespace's log once something is loaded in it (local applies only:
    /// a helper container's namespaces are not the agent's to enter).
    pub(super) fn listen_flows(&mut self, ns: &NsKey, path: Option<PathBuf>) {
        let (NsKey::Netns(_), Some(path)) = (ns, path) else {
            return;
        };
        if !matches!(self.settings.applier, crate::backend::Applier::Local(_)) {
            return;
        }
        let Some(state) = self.namespaces.get_mut(ns) else {
            return;
        };
        if state.log.is_none() {
            state.log = Some(spawn_reader(
                ns.clone(),
                path,
                self.flows_tx.clone(),
                self.board.clone(),
            ));
        }
    }

    /// Attributes a namespace's records to its owner (or first) member, explains, logs and
    /// publishes them.
    pub(super) fn on_flows(&mut self, (ns, records): Flows) {
        let member = record_owner(&self.members, &ns);
        let (Some(m), Some(state)) = (member, self.namespaces.get(&ns)) else {
            for _ in &records {
                self.board.flow("", false); // counted as unattributed
            }
            return;
        };
        let ruleset = state.in_force.as_deref();
        let posture = ruleset.map_or_else(|| "template".to_owned(), Ruleset::posture_label);
        for r in records {
            let verdict = if r.prefix.starts_with(LOG_PREFIX_AUDIT) {
                FlowVerdict::Audit
            } else if r.prefix.starts_with(LOG_PREFIX_DENY) {
                FlowVerdict::Deny
            } else {
                continue; // not ours: another `log group` rule in the namespace
            };
            if !self.seen_flows.first(&ns, &r, Instant::now()) {
                continue;
            }
            let record = FlowRecord {
                time: humantime::format_rfc3339_millis(r.at).to_string(),
                verdict,
                id: m.info.id.clone(),
                name: m.info.name.clone(),
                acls: m.acl_names(),
                posture: posture.clone(),
                proto: proto_name(r.proto),
                src: r.src,
                dst: r.dst,
                dport: r.dport,
                reason: explain(ruleset, &r),
                qname: state.learner.as_ref().and_then(|l| l.name_for(r.dst)),
            };
            let (admit, held_back) = self.flow_lines.admit(Instant::now());
            if held_back > 0 {
                tracing::info!(
                    held_back,
                    "flow lines left out of the log in the last second (see monitor)"
                );
            }
            if admit {
                tracing::info!(target: "egresstrator::flows", "{}", record.line());
            }
            self.board.publish(record);
        }
    }
}

/// The member a namespace's flow records are attributed to: its owner, else the first by id.
/// The deny log and the DNS filter both use it.
pub(super) fn record_owner<'a>(
    members: &'a std::collections::HashMap<String, Member>,
    ns: &NsKey,
) -> Option<&'a Member> {
    members
        .values()
        .filter(|m| &m.ns == ns)
        .min_by_key(|m| (m.info.id != m.owner, m.info.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_limiter_admits_ten_a_second_and_says_what_it_held_back() {
        let start = Instant::now();
        let mut l = LineLimiter {
            second: start,
            used: 0,
            held_back: 0,
        };
        let admitted = (0..25).filter(|_| l.admit(start).0).count();
        assert_eq!(admitted, LOG_LINES_PER_SEC as usize);
        let (ok, said) = l.admit(start + std::time::Duration::from_millis(1001));
        assert!(ok);
        assert_eq!(said, 15);
    }

    fn record(sport: u16) -> Record {
        Record {
            prefix: LOG_PREFIX_DENY.into(),
            family: nflog::Family::Ipv4,
            proto: 17,
            src: "10.0.0.2".parse().expect("ip"),
            dst: "10.0.0.9".parse().expect("ip"),
            sport: Some(sport),
            dport: Some(53),
            uid: None,
            seq: None,
            at: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn one_record_per_flow_and_bounded() {
        let mut seen = SeenFlows::default();
        let (ns, other) = (NsKey::Netns(1), NsKey::Netns(2));
        let t = Instant::now();
        assert!(seen.first(&ns, &record(1000), t));
        assert!(!seen.first(&ns, &record(1000), t + Duration::from_millis(500)));
        assert!(
            seen.first(&ns, &record(1001), t),
            "another source port is another flow"
        );
        assert!(
            seen.first(&other, &record(1000), t),
            "another namespace too"
        );
        assert!(
            seen.first(&ns, &record(1000), t + SAME_FLOW),
            "after the window, again"
        );
        for p in 0..(FLOWS_REMEMBERED as u16 + 10) {
            seen.first(&ns, &record(p.wrapping_add(2000)), t);
        }
        assert!(seen.0.len() <= FLOWS_REMEMBERED);
    }
}
