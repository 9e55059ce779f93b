//! The planner: what one namespace should get now, decided from plain data.
//!
//! Pure: no tokio, no Docker, no Consul, no clock of its own (the caller passes `now`). The
//! reconciler feeds it a namespace's members and the current policy view and acts on the
//! [`Decision`]; unit tests feed it the same and check the decision.
//!
//! It decides the built-in policy's plans. Templates read Consul through the template engine
//! and keep their own path in the reconciler.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use egresstrator_core::acl::AclName;
use egresstrator_core::Mode;

use crate::enforce::{self, PolicySettings};
use crate::policy_watch::{PolicyView, Source};
use crate::snapshot::PolicySnapshot;

pub use crate::rendered::Plan;

/// How long a namespace waits for Consul's first answer, or for a newly needed service's,
/// before it is planned anyway (and fails closed if what it waits for is still unknown).
pub const SERVICE_WAIT: Duration = Duration::from_secs(2);

/// What the planner needs of one member of the namespace.
#[derive(Clone, Debug)]
pub struct MemberPlan<'a> {
    pub name: &'a str,
    pub acls: &'a Result<Vec<AclName>, String>,
    pub resolvers: &'a [IpAddr],
    /// It asks for audit mode ([`enforce::audit_requested`]).
    pub audit: bool,
    /// Its creator asks for the DNS filter ([`enforce::dns_filter_requested`]).
    pub dns_filter: bool,
}

/// Everything one decision depends on.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// The namespace's members, in a stable order (the union's order, and so the hash, follow
    /// it).
    pub members: &'a [MemberPlan<'a>],
    pub view: &'a PolicyView,
    pub settings: &'a PolicySettings,
    /// Why the policy is too old to use (`--max-policy-age`), if it is.
    pub stale: Option<&'a str>,
    /// The hash of what is in force, if anything is.
    pub applied_hash: Option<&'a str>,
    /// Since when the namespace waits for Consul or a service, if it does.
    pub waiting_since: Option<Instant>,
    pub now: Instant,
}

/// What to do with the namespace.
#[derive(Debug)]
pub enum Decision {
    /// Nobody is in it: nothing to do.
    Empty,
    /// Consul's first answer, or a service just asked for, has not come yet; plan again
    /// later. `since` is when the wait began.
    Wait { since: Instant },
    /// What is in force already is the plan.
    UpToDate { hash: String },
    /// Load this.
    Load(Box<Plan>),
}

/// The union of the members' ACLs (the first member that cannot be built fails the whole
/// namespace) and of their resolvers.
pub fn union(members: &[MemberPlan<'_>]) -> (Result<Vec<AclName>, String>, Vec<IpAddr>) {
    let mut acls: Result<Vec<AclName>, String> = Ok(Vec::new());
    let mut resolvers: Vec<IpAddr> = Vec::new();
    for m in members {
        match (&mut acls, m.acls) {
            (Ok(all), Ok(mine)) => {
                for a in mine {
                    if !all.contains(a) {
                        all.push(a.clone());
                    }
                }
            }
            (Ok(_), Err(e)) => acls = Err(format!("container {}: {e}", m.name)),
            (Err(_), _) => {}
        }
        for r in m.resolvers {
            if !resolvers.contains(r) {
                resolvers.push(*r);
            }
        }
    }
    (acls, resolvers)
}

/// Decides what the namespace gets now.
pub fn decide(input: &PlanInput<'_>) -> Decision {
    if input.members.is_empty() {
        return Decision::Empty;
    }
    let (acls, resolvers) = union(input.members);
    let view = input.view;
    let waited = |since: Option<Instant>| {
        let since = since.unwrap_or(input.now);
        (input.now.duration_since(since) < SERVICE_WAIT).then_some(since)
    };
    // Right after start, wait briefly for Consul's first answer rather than failing closed
    // for the milliseconds it takes (a snapshot on disk is used at once).
    if view.source == Source::None && view.error.is_none() {
        if let Some(since) = waited(input.waiting_since) {
            return Decision::Wait { since };
        }
    }
    // Likewise for services that were just asked for. The watcher may not even have been
    // told about them yet, so the snapshot is asked rather than the watcher's list.
    if let (Ok(names), Some(snapshot), None) = (&acls, &view.snapshot, &view.error) {
        if waits_for_services(snapshot, names, input.settings.mode) {
            if let Some(since) = waited(input.waiting_since) {
                return Decision::Wait { since };
            }
        }
    }
    let snapshot = match input.stale {
        Some(why) => Err(why.to_owned()),
        None => view.for_planning(),
    };
    // A shared namespace audits only when every member asks for it (or `--audit`): one
    // member's wish never lifts another's firewall.
    let audit = input.settings.audit || input.members.iter().all(|m| m.audit);
    // The DNS filter only narrows: one member asking is enough.
    let dns_filter = input.settings.dns_filter || input.members.iter().any(|m| m.dns_filter);
    let (ruleset, error, mut warnings) = enforce::compile_for(
        &acls,
        resolvers,
        &snapshot,
        input.settings,
        audit,
        dns_filter,
    );
    if let Ok(s) = &snapshot {
        warnings.extend(s.warnings.iter().cloned());
    }
    let rendered = crate::backend::render(input.settings.applier.backend(), &ruleset);
    if input.applied_hash == Some(rendered.hash.as_str()) {
        return Decision::UpToDate {
            hash: rendered.hash,
        };
    }
    Decision::Load(Box::new(Plan {
        rendered,
        error,
        warnings,
    }))
}

/// True when a service the named ACLs reference (every ACL's, in protect mode) has not been
/// answered yet.
fn waits_for_services(snapshot: &PolicySnapshot, names: &[AclName], mode: Mode) -> bool {
    let refs = match mode {
        Mode::Protect => enforce::service_refs(&snapshot.acls, None),
        Mode::Allowlist => enforce::service_refs(&snapshot.acls, Some(names)),
    };
    refs.iter().any(|r| !snapshot.services.contains_key(r))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use egresstrator_core::acl::{parse_acl_list, parse_service_ref};
    use egresstrator_core::policy::ServiceTable;
    use egresstrator_core::{AclTable, Posture};

    use super::*;
    use crate::backend::{Applier, Backend};

    fn settings(mode: Mode) -> PolicySettings {
        PolicySettings {
            mode,
            dns_allow: egresstrator_core::policy::default_dns_allow(),
            applier: Applier::Local(Backend::Nft),
            template: None,
            kv_path: "egress/acl/".into(),
            require_manifest: false,
            audit: false,
            dns_filter: false,
        }
    }

    fn view(kv: &[(&str, &str)], services: ServiceTable) -> PolicyView {
        PolicyView {
            version: 1,
            snapshot: Some(Arc::new(PolicySnapshot {
                acls: AclTable::parse(kv.iter().copied()),
                services,
                ..PolicySnapshot::default()
            })),
            source: Source::Consul,
            kv_index: 1,
            error: None,
        }
    }

    fn acls(list: &str) -> Result<Vec<AclName>, String> {
        parse_acl_list(list).map_err(|e| e.to_string())
    }

    struct Case {
        acls: Vec<Result<Vec<AclName>, String>>,
        resolvers: Vec<IpAddr>,
    }

    impl Case {
        fn new(lists: &[&str]) -> Self {
            Case {
                acls: lists.iter().map(|l| acls(l)).collect(),
                resolvers: vec!["10.0.0.53".parse().expect("ip")],
            }
        }

        fn members(&self) -> Vec<MemberPlan<'_>> {
            self.acls
                .iter()
                .enumerate()
                .map(|(i, a)| MemberPlan {
                    name: ["c0", "c1", "c2"][i],
                    acls: a,
                    resolvers: &self.resolvers,
                    audit: false,
                    dns_filter: false,
                })
                .collect()
        }
    }

    fn decide_with(
        members: &[MemberPlan<'_>],
        view: &PolicyView,
        settings: &PolicySettings,
        applied: Option<&str>,
        waiting_since: Option<Instant>,
        now: Instant,
    ) -> Decision {
        decide(&PlanInput {
            members,
            view,
            settings,
            stale: None,
            applied_hash: applied,
            waiting_since,
            now,
        })
    }

    fn load(d: Decision) -> Plan {
        match d {
            Decision::Load(p) => *p,
            other => panic!("expected a load, got {other:?}"),
        }
    }

    fn ruleset(p: &Plan) -> &egresstrator_core::Ruleset {
        p.rendered.ruleset.as_ref().expect("a ruleset's plan")
    }

    #[test]
    fn load_then_up_to_date() {
        let v = view(&[("web", "10.1.0.0/24:tcp/80")], ServiceTable::new());
        let s = settings(Mode::Allowlist);
        let case = Case::new(&["web"]);
        let now = Instant::now();
        let plan = load(decide_with(&case.members(), &v, &s, None, None, now));
        assert_eq!(ruleset(&plan).posture, Posture::Allowlist);
        assert!(plan.error.is_none());
        let hash = plan.rendered.hash.clone();
        match decide_with(&case.members(), &v, &s, Some(&hash), None, now) {
            Decision::UpToDate { hash: h } => assert_eq!(h, hash),
            other => panic!("{other:?}"),
        }
        // Another hash in force: load again.
        load(decide_with(
            &case.members(),
            &v,
            &s,
            Some("other"),
            None,
            now,
        ));
        let none: Vec<MemberPlan<'_>> = Vec::new();
        assert!(matches!(
            decide_with(&none, &v, &s, None, None, now),
            Decision::Empty
        ));
    }

    #[test]
    fn waits_for_consul_then_fails_closed() {
        let v = PolicyView {
            version: 0,
            snapshot: None,
            source: Source::None,
            kv_index: 0,
            error: None,
        };
        let s = settings(Mode::Allowlist);
        let case = Case::new(&["web"]);
        let t0 = Instant::now();
        let since = match decide_with(&case.members(), &v, &s, None, None, t0) {
            Decision::Wait { since } => since,
            other => panic!("{other:?}"),
        };
        assert_eq!(since, t0);
        assert!(matches!(
            decide_with(
                &case.members(),
                &v,
                &s,
                None,
                Some(t0),
                t0 + Duration::from_secs(1)
            ),
            Decision::Wait { .. }
        ));
        let plan = load(decide_with(
            &case.members(),
            &v,
            &s,
            None,
            Some(t0),
            t0 + SERVICE_WAIT,
        ));
        assert_eq!(ruleset(&plan).posture, Posture::DenyAll);
        assert!(plan.error.expect("why").contains("no policy has been read"));
        // An error from Consul: no waiting, fail closed at once.
        let v = PolicyView {
            error: Some("connection refused".into()),
            ..v
        };
        let plan = load(decide_with(&case.members(), &v, &s, None, None, t0));
        assert_eq!(ruleset(&plan).posture, Posture::DenyAll);
    }

    #[test]
    fn waits_for_a_new_service_and_then_is_up_to_date() {
        // The regression behind the hook fix: a namespace that waited can come out with the
        // plan already in force. The reconciler must then answer waiting hooks
        // (`Decision::UpToDate`), not leave them to time out.
        let svc = parse_service_ref("db").expect("ref");
        let kv = [("web", "10.1.0.0/24:tcp/80\ndb")];
        let waiting = view(&kv, ServiceTable::new());
        let answered = view(&kv, ServiceTable::from([(svc, vec![])]));
        let s = settings(Mode::Allowlist);
        let case = Case::new(&["web"]);
        let t0 = Instant::now();
        let hash = load(decide_with(&case.members(), &answered, &s, None, None, t0))
            .rendered
            .hash;
        assert!(matches!(
            decide_with(&case.members(), &waiting, &s, Some(&hash), None, t0),
            Decision::Wait { .. }
        ));
        assert!(matches!(
            decide_with(&case.members(), &answered, &s, Some(&hash), Some(t0), t0),
            Decision::UpToDate { .. }
        ));
        // Still unanswered after the wait: the plan fails closed, naming the service.
        let plan = load(decide_with(
            &case.members(),
            &waiting,
            &s,
            Some(&hash),
            Some(t0),
            t0 + SERVICE_WAIT,
        ));
        assert!(plan.error.expect("why").contains("service db"));
    }

    #[test]
    fn shared_namespace_gets_the_union_and_fails_closed_with_one_bad_member() {
        let v = view(
            &[
                ("web", "10.1.0.0/24:tcp/80"),
                ("db", "10.2.0.0/24:tcp/5432"),
            ],
            ServiceTable::new(),
        );
        let s = settings(Mode::Allowlist);
        let case = Case::new(&["web", "db,web"]);
        let plan = load(decide_with(
            &case.members(),
            &v,
            &s,
            None,
            None,
            Instant::now(),
        ));
        assert_eq!(ruleset(&plan).acls, ["web", "db"]);
        let case = Case::new(&["web", "../bad"]);
        let plan = load(decide_with(
            &case.members(),
            &v,
            &s,
            None,
            None,
            Instant::now(),
        ));
        assert_eq!(ruleset(&plan).posture, Posture::DenyAll);
        assert!(plan.error.expect("why").starts_with("container c1: "));
    }

    #[test]
    fn stale_policy_fails_closed() {
        let v = view(&[("web", "10.1.0.0/24:tcp/80")], ServiceTable::new());
        let s = settings(Mode::Allowlist);
        let case = Case::new(&["web"]);
        let plan = load(decide(&PlanInput {
            members: &case.members(),
            view: &v,
            settings: &s,
            stale: Some("the last good policy is 7200s old"),
            applied_hash: None,
            waiting_since: None,
            now: Instant::now(),
        }));
        assert_eq!(ruleset(&plan).posture, Posture::DenyAll);
        assert_eq!(
            plan.error.as_deref(),
            Some("policy unavailable: the last good policy is 7200s old")
        );
    }
}
