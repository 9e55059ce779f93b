//! Drift checks: every `--verify-interval`, and on Docker events, each namespace's ruleset
//! listing is compared with the fingerprint its last load left; anything else there (a
//! workload or another tool changed it) is loaded again.

use super::{Input, Member, NsKey, Reconciler};
use crate::backend;
use crate::netns::{self, NetnsError};

impl Reconciler {
    /// Checks every enforced namespace for drift.
    pub(super) fn verify_all(&mut self) {
        let all: Vec<NsKey> = self.namespaces.keys().cloned().collect();
        for ns in all {
            self.verify(ns);
        }
    }

    /// Compares a namespace's rules with what the last load left, off the loop; a namespace
    /// with nothing to compare yet (a load in flight, helper-image mode) is skipped.
    pub(super) fn verify(&mut self, ns: NsKey) {
        let NsKey::Netns(cookie) = ns else {
            return;
        };
        // The namespace's owner's file first: a member that joined it (`--network
        // container:X`) may be on its way out while X still runs.
        let mut inside: Vec<&Member> = self.members.values().filter(|m| m.ns == ns).collect();
        inside.sort_by_key(|m| m.info.id != m.owner);
        let Some(path) = inside.first().and_then(|m| m.path.clone()) else {
            return;
        };
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let Some(loaded) = state.loaded_backend else {
            return;
        };
        if state.in_flight || state.verifying || state.fingerprint.is_none() {
            return;
        }
        state.verifying = true;
        let listing = backend::listing(loaded, self.guard_missing.is_none());
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = netns::fingerprint(path, Some(cookie), listing).await;
            let _ = tx.send(Input::Verified { ns, result });
        });
    }

    /// A load's fingerprint arrived. An unconfirmed one (another transaction was committed in
    /// the namespace between the load and its listing) cannot serve as the baseline: what the
    /// load left may already have been changed, so it is loaded again at once.
    pub(super) fn on_fingerprinted(
        &mut self,
        ns: NsKey,
        load: u64,
        hash: String,
        fingerprint: String,
    ) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        // Only for what is still in force: a later load brings its own.
        if state.applied_load != load
            || state.applied_hash.as_deref() != Some(hash.as_str())
            || state.in_flight
        {
            return;
        }
        if let Some(generations) = fingerprint.strip_prefix(netns::UNCONFIRMED) {
            // Often legitimate (`set`/`clear` loading their own rules, a runtime hook, dockerd
            // setting up the namespace), so not counted as drift; but it may be the workload,
            // and the load it followed is repeated either way. `set` and `clear` record their
            // override first: read it, so the repeat loads what they asked for.
            if self.replanned_by_overrides(&ns) {
                return;
            }
            let names = self.names_in(&ns);
            tracing::info!(
                containers = ?names,
                "another nftables transaction was committed in the namespace right after egresstrator's load (generation {generations}); loading again, so that what drift checks compare with is egresstrator's own"
            );
            self.reload(ns);
            return;
        }
        state.fingerprint = Some(fingerprint);
        self.kept.changed();
    }

    /// `set` and `clear` record their override first and then change the rules themselves:
    /// reads the overrides again, and says whether that re-planned the namespace (a load is
    /// on its way, or the namespace is gone), so that the change is not loaded over.
    fn replanned_by_overrides(&mut self, ns: &NsKey) -> bool {
        self.refresh_overrides() && self.namespaces.get(ns).is_none_or(|s| s.in_flight)
    }

    /// The names of the containers in a namespace, for log lines.
    fn names_in(&self, ns: &NsKey) -> Vec<String> {
        self.members
            .values()
            .filter(|m| &m.ns == ns)
            .map(|m| m.info.name.clone())
            .collect()
    }

    /// Drift: logs and counts it, and loads the namespace's rules again.
    fn repair(&mut self, ns: NsKey, why: &str) {
        let names = self.names_in(&ns);
        tracing::warn!(containers = ?names, "drift: {why}; loading them again");
        self.board.drift_repaired();
        self.reload(ns);
    }

    /// Loads a namespace's rules again, as if for the first time.
    fn reload(&mut self, ns: NsKey) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        state.fingerprint = None;
        state.applied_hash = None;
        state.overwritten = true;
        self.schedule(ns);
    }

    pub(super) fn on_verified(&mut self, ns: NsKey, result: Result<String, NetnsError>) {
        // A round of checks (every namespace, each listing with a libnftables context of its
        // own) leaves ~2.7 MiB freed but kept by malloc with 200 namespaces: hand it back
        // after the round, as after a burst of loads.
        self.trimmer.poke();
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        state.verifying = false;
        match result {
            Ok(fp) if state.fingerprint.as_ref() == Some(&fp) => {}
            // A load ran meanwhile: its own fingerprint is on the way.
            Ok(_) if state.in_flight || state.fingerprint.is_none() => {}
            Ok(_) => {
                // A change of `set` or `clear` is a re-plan, not drift.
                if self.replanned_by_overrides(&ns) {
                    return;
                }
                self.repair(
                    ns,
                    "egresstrator's rules in the namespace were changed or removed, or its interfaces changed",
                );
            }
            Err(e) if e.is_gone() => {
                tracing::debug!("namespace gone: {e}");
                self.forget_namespace(&ns);
            }
            Err(e) => tracing::warn!("cannot check a namespace for drift: {e}"),
        }
    }
}
