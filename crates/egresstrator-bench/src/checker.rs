//! The soak's invariant checker. It reads every running container's network namespace from
//! outside, with `nsenter -t PID -n nft list ruleset`, never through the agent, and compares
//! what the kernel holds with what the soak itself wrote to Consul ([`Model`]):
//!
//! - an enabled container holds exactly its expected ruleset (posture `allowlist`, its ACL
//!   names, the union of its ACLs' networks in `allow4`, and the raw-socket guard table)
//!   within [`GRACE`] of its start (`State.StartedAt`) or of a change to one of its ACLs;
//! - a container that is not enabled never holds one;
//! - a container under the runtime shim is never observed running without its table.
//!
//! Expected rulesets come from the soak's own model of the keys it wrote, not from
//! `egresstrator-core`: the soak only writes lines whose rendering is unambiguous
//! (`10.N.M.0/24:tcp/PORT` with distinct, non-adjacent networks and ports that are
//! multiples of 10, and one service reference whose instances it registers itself).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use futures_util::stream::{self, StreamExt};

use crate::docker::Docker;

/// How long after a start or a policy change a container may still hold something else.
pub const GRACE: Duration = Duration::from_secs(1);

/// The label that says what a soak container is.
pub const KIND_LABEL: &str = "egt-soak.kind";
/// The label that lists a soak container's ACL names (comma-separated).
pub const ACLS_LABEL: &str = "egt-soak.acls";

/// Concurrent `nsenter` probes in one sweep.
const PROBES: usize = 4;

/// What a soak container is, from its labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `EGRESSTRATOR_ENABLE=1` with ACLs, plain runc.
    Enabled,
    /// Enabled, started under `egresstrator-runc`.
    Shim,
    /// Not enabled.
    Plain,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Enabled => "enabled",
            Kind::Shim => "shim",
            Kind::Plain => "plain",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "enabled" => Some(Kind::Enabled),
            "shim" => Some(Kind::Shim),
            "plain" => Some(Kind::Plain),
            _ => None,
        }
    }
}

/// One ACL key as the soak last wrote it.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    /// The `allow4` elements it must give, as `nft list` prints them.
    pub elements: BTreeSet<String>,
    /// When it was last written.
    pub changed: Option<SystemTime>,
}

/// What the soak wrote to Consul, shared with the checker.
#[derive(Debug, Default)]
pub struct Model {
    pub acls: BTreeMap<String, Acl>,
    /// Until when every mismatch is excused: a Consul restart loses the dev agent's keys,
    /// and the policy is whatever the agent last had until the soak writes them again.
    pub excused_until: Option<SystemTime>,
}

pub type SharedModel = Arc<Mutex<Model>>;

impl Model {
    /// The expected `allow4` elements of a container with these ACLs, and the last time any
    /// of them changed.
    fn expected(&self, acls: &[String]) -> (BTreeSet<String>, Option<SystemTime>) {
        let mut all = BTreeSet::new();
        let mut last = None;
        for name in acls {
            if let Some(acl) = self.acls.get(name) {
                all.extend(acl.elements.iter().cloned());
                last = last.max(acl.changed);
            }
        }
        (all, last)
    }
}

/// What `nft list ruleset` showed in a namespace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `table inet egresstrator`: its posture and ACL names (from the table comment) and its
    /// `allow4` elements.
    pub table: Option<Table>,
    /// `table netdev egresstrator`, the raw-socket guard.
    pub guard: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub posture: String,
    pub acls: BTreeSet<String>,
    pub allow4: BTreeSet<String>,
}

/// Parses `nft list ruleset` text.
pub fn parse_ruleset(text: &str) -> Observed {
    let guard = text.contains("table netdev egresstrator {");
    let Some(start) = text.find("table inet egresstrator {") else {
        return Observed { table: None, guard };
    };
    let body = &text[start..];
    let body = match body[1..].find("\ntable ") {
        Some(end) => &body[..end + 1],
        None => body,
    };
    let mut table = Table::default();
    if let Some(c) = body.find("comment \"egresstrator ") {
        let rest = &body[c + "comment \"egresstrator ".len()..];
        let comment = rest.split('"').next().unwrap_or_default();
        let mut words = comment.splitn(2, ' ');
        table.posture = words.next().unwrap_or_default().to_owned();
        if let Some(acls) = words.next().and_then(|w| w.strip_prefix("acls=")) {
            table.acls = acls
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
        }
    }
    if let Some(s) = body.find("set allow4 {") {
        let set = &body[s..];
        let set = &set[..set.find("\n\t}").unwrap_or(set.len())];
        if let Some(e) = set.find("elements = {") {
            let elements = &set[e + "elements = {".len()..];
            let elements = &elements[..elements.find('}').unwrap_or(elements.len())];
            table.allow4 = elements
                .split(',')
                .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|e| !e.is_empty())
                .collect();
        }
    }
    Observed {
        table: Some(table),
        guard,
    }
}

/// The result of one sweep over every running container of the run.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Containers whose namespace was read.
    pub checked: usize,
    /// Containers that held something other than expected, excused or not.
    pub mismatches: usize,
    /// Mismatches past every grace: invariant violations, described.
    pub violations: Vec<String>,
    /// Per container read: whether it held what it must, and when its listing came back.
    pub read: Vec<(String, bool, Instant)>,
}

/// Reads every running container of the run once.
pub async fn sweep(docker: &Docker, model: &SharedModel) -> Result<Sweep> {
    let running = docker.running_run().await?;
    let results: Vec<Option<(String, Verdict, Instant)>> = stream::iter(running)
        .map(|(id, labels)| async move {
            let v = check_one(docker, model, &id, &labels).await;
            v.map(|v| (id, v, Instant::now()))
        })
        .buffer_unordered(PROBES)
        .collect()
        .await;
    let mut out = Sweep::default();
    for (id, v, at) in results.into_iter().flatten() {
        out.checked += 1;
        out.read.push((id, matches!(v, Verdict::Holds), at));
        match v {
            Verdict::Holds => {}
            Verdict::Excused => out.mismatches += 1,
            Verdict::Violation(what) => {
                out.mismatches += 1;
                out.violations.push(what);
            }
        }
    }
    Ok(out)
}

enum Verdict {
    Holds,
    /// Wrong, but within its grace.
    Excused,
    Violation(String),
}

async fn check_one(
    docker: &Docker,
    model: &SharedModel,
    id: &str,
    labels: &HashMap<String, String>,
) -> Option<Verdict> {
    let kind = labels.get(KIND_LABEL).and_then(|k| Kind::parse(k))?;
    let acls: Vec<String> = labels
        .get(ACLS_LABEL)
        .map(|a| {
            a.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let (pid, started) = docker.pid_started(id).await.ok()??;
    let listed_at = SystemTime::now();
    let (expected, changed, excused_until) = {
        let m = model.lock().unwrap_or_else(|e| e.into_inner());
        let (e, c) = m.expected(&acls);
        (e, c, m.excused_until)
    };
    let out = tokio::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "nft", "list", "ruleset"])
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None; // gone meanwhile
    }
    let seen = parse_ruleset(&String::from_utf8_lossy(&out.stdout));
    let Some(problem) = judge(kind, &acls, &expected, &seen) else {
        return Some(Verdict::Holds);
    };
    // Still the same process? (A pid can be reused once the container is gone.)
    if docker.pid_started(id).await.ok()?.map(|(p, _)| p) != Some(pid) {
        return None;
    }
    let short = &id[..id.len().min(12)];
    let what = format!("{short} ({}): {problem}", kind.label());
    if kind == Kind::Shim && seen.table.is_none() {
        return Some(Verdict::Violation(what));
    }
    // The model again: a change written while the namespace was being read may already be
    // in force there, so it is judged by the later of the two change times.
    let (changed_after, excused_after) = {
        let m = model.lock().unwrap_or_else(|e| e.into_inner());
        let (_, c) = m.expected(&acls);
        (c, m.excused_until)
    };
    let changed = changed.max(changed_after);
    let excused_until = excused_until.max(excused_after);
    let started = humantime::parse_rfc3339(&started).ok();
    let since = [started, changed].into_iter().flatten().max();
    let what = format!(
        "{what}; read at {}, {} ms after its start or last policy change",
        humantime::format_rfc3339_millis(listed_at),
        since
            .and_then(|t| listed_at.duration_since(t).ok())
            .map_or("?".into(), |d| d.as_millis().to_string())
    );
    let in_grace = since.is_some_and(|t| listed_at < t + GRACE)
        || excused_until.is_some_and(|t| listed_at < t);
    Some(if kind == Kind::Plain || !in_grace {
        Verdict::Violation(what)
    } else {
        Verdict::Excused
    })
}

/// What is wrong with a namespace, or `None` when it holds what it must.
fn judge(
    kind: Kind,
    acls: &[String],
    expected: &BTreeSet<String>,
    seen: &Observed,
) -> Option<String> {
    if kind == Kind::Plain {
        return seen
            .table
            .as_ref()
            .map(|t| format!("not enabled, yet holds a {} table", t.posture));
    }
    let Some(table) = &seen.table else {
        return Some("enabled, but holds no egresstrator table".into());
    };
    let names: BTreeSet<String> = acls.iter().cloned().collect();
    if table.posture != "allowlist" || table.acls != names {
        return Some(format!(
            "holds posture {} for acls {:?}, expected allowlist for {:?}",
            table.posture, table.acls, names
        ));
    }
    if &table.allow4 != expected {
        let missing: Vec<&String> = expected.difference(&table.allow4).collect();
        let extra: Vec<&String> = table.allow4.difference(expected).collect();
        return Some(format!("allow4 lacks {missing:?}, has extra {extra:?}"));
    }
    if !seen.guard {
        return Some("no raw-socket guard (table netdev egresstrator)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "table inet egresstrator {\n\tcomment \"egresstrator allowlist acls=a,b\"\n\tset allow4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval\n\t\telements = { 10.201.2.0/24 . tcp . 80,\n\t\t\t     10.209.0.7 . tcp . 5430 }\n\t}\n\n\tset allow6 {\n\t\ttype ipv6_addr . inet_proto . inet_service\n\t\tflags interval\n\t}\n}\ntable netdev egresstrator {\n\tchain egress {\n\t}\n}\n";

    #[test]
    fn parses_posture_acls_elements_and_guard() {
        let o = parse_ruleset(LISTING);
        let t = o.table.as_ref().expect("table");
        assert_eq!(t.posture, "allowlist");
        assert_eq!(t.acls, BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(
            t.allow4,
            BTreeSet::from([
                "10.201.2.0/24 . tcp . 80".to_string(),
                "10.209.0.7 . tcp . 5430".to_string()
            ])
        );
        assert!(o.guard);
        assert_eq!(parse_ruleset("table ip nat {\n}\n"), Observed::default());
    }

    #[test]
    fn judges_every_way_a_namespace_can_be_wrong() {
        let o = parse_ruleset(LISTING);
        let acls = ["a".to_string(), "b".to_string()];
        let exp: BTreeSet<String> = o.table.as_ref().expect("table").allow4.clone();
        assert_eq!(judge(Kind::Enabled, &acls, &exp, &o), None);
        assert!(judge(Kind::Plain, &[], &exp, &o).is_some());
        assert!(judge(Kind::Enabled, &acls[..1], &exp, &o).is_some());
        let mut fewer = exp.clone();
        fewer.pop_first();
        assert!(judge(Kind::Enabled, &acls, &fewer, &o).is_some());
        let no_guard = parse_ruleset(&LISTING.replace("table netdev", "table ip"));
        assert!(judge(Kind::Shim, &acls, &exp, &no_guard).is_some());
        assert!(judge(Kind::Shim, &acls, &exp, &Observed::default()).is_some());
        assert_eq!(judge(Kind::Plain, &[], &exp, &Observed::default()), None);
    }
}
