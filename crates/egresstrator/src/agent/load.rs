//! Planning and loading a namespace: the built-in policy's plan ([`super::plan::decide`]) or
//! the template's, one load at a time per namespace, off the loop and bounded by
//! [`super::APPLY_SLOTS`]; the outcome is logged, shown in `/status` and answers waiting
//! runtime hooks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use egresstrator_core::acl::AclName;

use super::fqdn;
use super::plan::{self, SERVICE_WAIT};
use super::{Applied, Input, Member, NsKey, Reconciler};
use crate::backend;
use crate::enforce;
use crate::policy_watch::{self, PolicyView};
use crate::status::{unix_nanos, ContainerStatus};

impl Reconciler {
    /// The built-in policy's plan for a namespace ([`plan::decide`]): None when there is
    /// nothing to load now (waiting for Consul or a service, or up to date; waiting hooks are
    /// answered then).
    pub(super) fn plan_builtin(
        &mut self,
        ns: &NsKey,
        members: &[Member],
        view: &PolicyView,
    ) -> Option<plan::Plan> {
        let inputs = member_plans(members);
        let state = self.namespaces.get_mut(ns)?;
        let decision = plan::decide(&plan::PlanInput {
            members: &inputs,
            view,
            settings: &self.settings,
            stale: self.stale.as_deref(),
            applied_hash: state.applied_hash.as_deref(),
            waiting_since: state.waiting_since,
            now: Instant::now(),
        });
        match decision {
            plan::Decision::Empty => None,
            plan::Decision::Wait { since } => {
                state.waiting_since = Some(since);
                None
            }
            plan::Decision::UpToDate { hash } => {
                state.up_to_date(&hash, &self.board);
                None
            }
            plan::Decision::Load(p) => {
                state.waiting_since = None;
                Some(*p)
            }
        }
    }

    /// The template path's plan for a namespace: None when there is nothing to load now
    /// (waiting for Consul or a service the template reads, or already up to date; waiting
    /// hooks are answered then).
    pub(super) fn plan_with_template(
        &mut self,
        t: &crate::template::TemplateConfig,
        ns: &NsKey,
        members: &[Member],
        view: &PolicyView,
    ) -> Option<plan::Plan> {
        let inputs = member_plans(members);
        let (acls, _) = plan::union(&inputs);
        if view.source == policy_watch::Source::None && view.error.is_none() {
            let state = self.namespaces.get_mut(ns)?;
            let since = *state.waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SERVICE_WAIT {
                return None;
            }
        }
        let snapshot = match &self.stale {
            Some(why) => Err(why.clone()),
            None => view.for_planning(),
        };
        let mut plan =
            self.plan_template(t, ns, &acls, members, &snapshot, view.error.is_none())?;
        if let Ok(s) = &snapshot {
            plan.warnings.extend(s.warnings.iter().cloned());
        }
        let state = self.namespaces.get_mut(ns)?;
        state.waiting_since = None;
        if state.applied_hash.as_deref() == Some(plan.rendered.hash.as_str()) {
            state.up_to_date(&plan.rendered.hash, &self.board);
            return None;
        }
        Some(plan)
    }

    /// Renders the template for a namespace. None means: wait, a service it reads has not
    /// answered yet.
    pub(super) fn plan_template(
        &mut self,
        t: &crate::template::TemplateConfig,
        ns: &NsKey,
        acls: &Result<Vec<AclName>, String>,
        members: &[Member],
        snapshot: &Result<Arc<enforce::PolicySnapshot>, String>,
        consul_up: bool,
    ) -> Option<plan::Plan> {
        let backend = self.settings.applier.backend();
        let deny = |e: String| Some(plan::Plan::deny_all(backend, e));
        let names = match acls {
            Ok(n) => n,
            Err(e) => return deny(e.clone()),
        };
        let snap = match snapshot {
            Ok(s) => s,
            Err(e) => return deny(format!("policy unavailable: {e}")),
        };
        let first = &members[0].info;
        let env = crate::template::TemplateEnv {
            acls: names.iter().map(ToString::to_string).collect(),
            kv_path: self.settings.kv_path.clone(),
            container_id: first.id.clone(),
            container_name: first.name.clone(),
        };
        let (result, refs) = match crate::template::render(t, snap, &env) {
            Ok(out) => {
                let refs = out
                    .deps
                    .services
                    .iter()
                    .map(crate::template::service_ref)
                    .collect();
                (Ok(out.text), refs)
            }
            Err(f) => {
                let refs = f.services.iter().cloned().collect();
                (Err(f), refs)
            }
        };
        let changed = self
            .namespaces
            .get_mut(ns)
            .map(|s| std::mem::replace(&mut s.template_refs, refs))
            .is_some_and(|old| {
                self.namespaces
                    .get(ns)
                    .is_some_and(|s| s.template_refs != old)
            });
        if changed {
            self.update_needed_services();
        }
        match result {
            Ok(text) => Some(plan::Plan::template(t.format.backend(), text)),
            Err(f) => {
                if f.pending && consul_up {
                    let state = self.namespaces.get_mut(ns)?;
                    let since = *state.waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < SERVICE_WAIT {
                        return None;
                    }
                }
                deny(f.message)
            }
        }
    }

    /// Plans a namespace and applies its ruleset if it changed.
    pub(super) fn schedule(&mut self, ns: NsKey) {
        // A `set` or `clear` since the last look re-plans what it touches (this namespace
        // included, if so), before anything is planned from the overrides it replaced.
        self.refresh_overrides();
        let mut members: Vec<Member> = self
            .members
            .values()
            .filter(|m| m.ns == ns)
            .cloned()
            .collect();
        // A stable order keeps the union (and so the hash) stable.
        members.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let view = self.policy.borrow().clone();
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        if members.is_empty() {
            return;
        }
        if state.in_flight {
            state.dirty = true;
            return;
        }
        if std::mem::take(&mut state.overwritten) {
            state.applied_hash = None;
        }
        let planned = match &self.settings.template {
            None => self.plan_builtin(&ns, &members, &view),
            Some(t) => {
                let t = t.clone();
                self.plan_with_template(&t, &ns, &members, &view)
            }
        };
        // None: waiting, or up to date.
        let Some(planned) = planned else {
            return;
        };
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        state.in_flight = true;
        state.in_flight_since = Some(Instant::now());
        let priority = std::mem::take(&mut state.priority);
        let tidy = match (
            state.applied_hash.is_none(),
            std::mem::take(&mut state.fresh),
        ) {
            (true, true) => enforce::Tidy::Fresh,
            (true, false) => enforce::Tidy::First,
            (false, _) => enforce::Tidy::Again,
        };
        // The first load of a namespace that ran before this agent started: the previous
        // agent's record of it, if it was for this plan, may spare the load (`kept.rs`).
        let kept = match (&ns, tidy) {
            (NsKey::Netns(cookie), enforce::Tidy::First) => {
                self.kept.take(*cookie, &planned.rendered.hash)
            }
            _ => None,
        };
        self.spawn_load(ns, members, planned, priority, tidy, kept);
    }

    /// Loads a plan into a namespace off the loop (queued behind [`APPLY_SLOTS`] unless a
    /// runtime hook waits), reports the commit, then its fingerprint, then tidies up.
    pub(super) fn spawn_load(
        &mut self,
        ns: NsKey,
        members: Vec<Member>,
        plan: plan::Plan,
        priority: bool,
        tidy: enforce::Tidy,
        kept: Option<backend::Kept>,
    ) {
        // Entered through the owner's file when the owner is a member: a member that joined
        // its namespace may be on its way out.
        let via = members
            .iter()
            .find(|m| m.info.id == m.owner)
            .unwrap_or(&members[0]);
        let target = backend::Target {
            container: via.owner.clone(),
            path: via.path.clone(),
            expect: match ns {
                NsKey::Netns(cookie) => Some(cookie),
                NsKey::Owner(_) => None,
            },
            kept,
        };
        let mut plan = plan;
        if let Some(ruleset) = plan
            .rendered
            .ruleset
            .as_ref()
            .filter(|r| plan.rendered.backend == backend::Backend::Nft && r.learns_names())
        {
            // What was learned and still holds goes back in with the new table, in the same
            // transaction. Not part of the plan's hash: the plan is the same. Before this
            // agent's learner runs there, what the previous agent's held (state dir).
            let learner = self.namespaces.get(&ns).and_then(|s| s.learner.as_ref());
            let restore = match (learner, &ns) {
                (Some(learner), _) => learner.restore_script(ruleset),
                (None, NsKey::Netns(cookie)) => {
                    let seed = self.kept.take_learned(*cookie);
                    let restore = fqdn::restore_from_record(&seed, ruleset);
                    if let Some(state) = self.namespaces.get_mut(&ns) {
                        state.seed.extend(seed);
                    }
                    restore
                }
                (None, NsKey::Owner(_)) => String::new(),
            };
            plan.rendered.text.push_str(&restore);
        }
        self.loads += 1;
        let load = self.loads;
        let tx = self.tx.clone();
        let applier = self.settings.applier.clone();
        let slots = self.apply_slots.clone();
        let tidy_slots = self.tidy_slots.clone();
        tokio::spawn(async move {
            // The semaphore is never closed; a failed acquire just runs unqueued.
            let slot = match priority {
                true => None,
                false => slots.acquire_owned().await.ok(),
            };
            let hash = plan.rendered.hash.clone();
            let mut result = enforce::load(&applier, &target, plan.rendered).await;
            // Report the commit first (a runtime hook may be waiting for it), then tidy up.
            let fingerprint = result
                .as_mut()
                .ok()
                .and_then(|l| l.applied.fingerprint.take());
            let tidy_up = result.as_ref().ok().map(|l| {
                (
                    l.rendered.backend,
                    l.rendered.ruleset.clone(),
                    l.rendered.hash.clone(),
                )
            });
            let _ = tx.send(Input::Applied(Box::new(Applied {
                ns: ns.clone(),
                load,
                hash,
                result,
                members,
                plan_error: plan.error,
                warnings: plan.warnings,
            })));
            // The rules are in force: the next load may start. The tidy-up (the drift
            // fingerprint, the conntrack sweep with its `ip` and `conntrack` processes) queues
            // on its own slots, so that a burst's commits do not wait for earlier sweeps.
            drop(slot);
            let Some((backend, ruleset, loaded_hash)) = tidy_up else {
                return;
            };
            let _tidy_slot = tidy_slots.acquire_owned().await.ok();
            if let Some(rx) = fingerprint {
                if let Ok(Ok(fingerprint)) = rx.await {
                    let _ = tx.send(Input::Fingerprinted {
                        ns,
                        load,
                        hash: loaded_hash,
                        fingerprint,
                    });
                }
            }
            enforce::after_load(&applier, &target, backend, ruleset.as_ref(), tidy).await;
        });
    }

    pub(super) fn on_applied(&mut self, a: Applied) {
        self.trimmer.poke();
        let committed = a.result.is_ok();
        let Some(state) = self.namespaces.get_mut(&a.ns) else {
            return; // every member went away meanwhile
        };
        state.in_flight = false;
        state.in_flight_since = None;
        match a.result {
            Ok(ok) => {
                state.applied_load = a.load;
                let error = ok.fallback.clone().or(a.plan_error.clone());
                state.applied_hash = Some(a.hash.clone());
                state.in_force = ok.rendered.ruleset.clone().map(Arc::new);
                state.loaded_backend = Some(ok.rendered.backend);
                // The fingerprint of this load follows; the previous one is stale now.
                state.fingerprint = None;
                if ok.applied.unguarded != state.unguarded {
                    if !ok.applied.unguarded.is_empty() {
                        tracing::error!(
                            interfaces = ?ok.applied.unguarded,
                            "interfaces the raw-socket guard cannot take (their names have characters outside [A-Za-z0-9._+@-]); raw frames can leave through them"
                        );
                    }
                    state.unguarded = ok.applied.unguarded.clone();
                }
                let ns_bypass = self.guard_missing.clone().or_else(|| {
                    (!state.unguarded.is_empty()).then(|| {
                        format!(
                            "interfaces without the raw-socket guard: {}",
                            state.unguarded.join(", ")
                        )
                    })
                });
                if error.is_some() {
                    state.retry_later();
                } else {
                    state.backoff = None;
                    state.retry_at = None;
                }
                if ok.fallback.is_some() {
                    // The hash is deny-all's; keep retrying the real one.
                    state.applied_hash = None;
                }
                if ok.applied.kept {
                    let names: Vec<&str> = a.members.iter().map(|m| m.info.name.as_str()).collect();
                    tracing::info!(
                        containers = ?names,
                        "already enforced: the namespace holds exactly what the previous agent loaded for this plan; nothing loaded"
                    );
                }
                self.report(&a.members, &ok, error.as_ref(), &a.warnings, ns_bypass);
                let via = a.members.iter().find(|m| m.info.id == m.owner);
                let path = via.or(a.members.first()).and_then(|m| m.path.clone());
                self.learn_names(&a.ns, path.clone());
                self.listen_flows(&a.ns, path);
            }
            Err(e) if e.is_gone() => {
                tracing::debug!("namespace went away while being enforced: {e}");
                // Its members no longer run in it; whoever still runs is found again.
                self.forget_namespace(&a.ns);
                return;
            }
            Err(e) => {
                self.board.apply_failed();
                let names: Vec<&str> = a.members.iter().map(|m| m.info.name.as_str()).collect();
                tracing::error!(containers = ?names, "cannot apply egress rules: {e}");
                state.retry_later();
            }
        }
        if let Some(state) = self.namespaces.get_mut(&a.ns) {
            state.answer_waiters(committed, &self.board);
            if std::mem::take(&mut state.dirty) {
                self.schedule(a.ns.clone());
            }
        }
    }

    /// Starts, updates or stops the namespace's fqdn learner for the ruleset now in force.
    fn learn_names(&mut self, ns: &NsKey, path: Option<PathBuf>) {
        let fqdn = self.fqdn;
        let Some(state) = self.namespaces.get_mut(ns) else {
            return;
        };
        let ruleset = state
            .in_force
            .clone()
            .filter(|r| r.learns_names() && state.loaded_backend == Some(backend::Backend::Nft));
        let (Some(ruleset), Some(path)) = (ruleset, path) else {
            if let Some(learner) = state.learner.take() {
                learner.retire();
                for m in self.members.values().filter(|m| &m.ns == ns) {
                    self.board.fqdn(&m.info.id, None);
                }
            }
            return;
        };
        // Records of the DNS filter go to the owner member (or the first), as the deny log's.
        let owner =
            super::deny_log::record_owner(&self.members, ns).map(|m| super::dns_filter::Owner {
                id: m.info.id.clone(),
                name: m.info.name.clone(),
                acls: m.acl_names(),
            });
        let Some(state) = self.namespaces.get_mut(ns) else {
            return;
        };
        // A learner that stopped on an error is started again with the next load.
        if state.learner.as_ref().is_some_and(fqdn::Learner::failed) {
            state.learner = None;
        }
        if let Some(learner) = &state.learner {
            learner.update(&ruleset, owner);
            return;
        }
        let expect = match ns {
            NsKey::Netns(cookie) => Some(*cookie),
            NsKey::Owner(_) => None,
        };
        let seed = std::mem::take(&mut state.seed);
        match fqdn::Learner::start(
            &path,
            expect,
            &ruleset,
            owner,
            fqdn,
            self.board.clone(),
            seed,
        ) {
            Ok(learner) => state.learner = Some(learner),
            Err(e) => tracing::error!("cannot start the fqdn learner: {e}"),
        }
    }

    /// Logs and shows the outcome of a load for every member still in the namespace.
    pub(super) fn report(
        &self,
        members: &[Member],
        ok: &enforce::Loaded,
        error: Option<&String>,
        warnings: &[String],
        ns_bypass: Option<String>,
    ) {
        for m in members {
            // Members that left meanwhile are not reported.
            let Some(cur) = self.members.get(&m.info.id) else {
                continue;
            };
            let outcome =
                enforce::Outcome::new(&m.info, &m.acls, ok, error.cloned(), warnings.to_vec());
            enforce::log_outcome(&outcome);
            self.board.applied(
                ContainerStatus {
                    id: outcome.id,
                    name: outcome.name,
                    acls: outcome.acls,
                    posture: outcome.posture,
                    hash: outcome.hash,
                    fail_closed: error.is_some(),
                    error: error.cloned(),
                    start_event_unix_nano: cur.start_event,
                    applied_at_unix_nano: unix_nanos(ok.at),
                    apply_count: 0,
                    last_apply_ms: ok.took.as_secs_f64() * 1000.0,
                    bypassable: cur.bypass.clone().or_else(|| ns_bypass.clone()),
                    denied_flows: 0,
                    audited_flows: 0,
                    flows_last_minute: 0,
                    fqdn: None,
                },
                ok.took,
            );
        }
    }
}

/// What the planner sees of each member.
pub(super) fn member_plans(members: &[Member]) -> Vec<plan::MemberPlan<'_>> {
    members
        .iter()
        .map(|m| plan::MemberPlan {
            name: &m.info.name,
            acls: &m.acls,
            resolvers: &m.resolvers,
            audit: m.audit,
            dns_filter: enforce::dns_filter_requested(&m.info),
        })
        .collect()
}
