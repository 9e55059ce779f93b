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

    pub(super) fn on_verified(&mut self, ns: NsKey, result: Result<String, NetnsError>) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        state.verifying = false;
        match result {
            Ok(fp) if state.fingerprint.as_ref() == Some(&fp) => {}
            // A load ran meanwhile: its own fingerprint is on the way.
            Ok(_) if state.in_flight || state.fingerprint.is_none() => {}
            Ok(_) => {
                // `set` and `clear` record their override first and then change the rules
                // themselves: once the overrides are read again, that is a re-plan, not drift.
                if self.refresh_overrides() && self.namespaces.get(&ns).is_none_or(|s| s.in_flight)
                {
                    return;
                }
                let Some(state) = self.namespaces.get_mut(&ns) else {
                    return;
                };
                let names: Vec<&str> = self
                    .members
                    .values()
                    .filter(|m| m.ns == ns)
                    .map(|m| m.info.name.as_str())
                    .collect();
                tracing::warn!(
                    containers = ?names,
                    "drift: egresstrator's rules in the namespace were changed or removed, or its interfaces changed; loading them again"
                );
                self.board.drift_repaired();
                state.fingerprint = None;
                state.applied_hash = None;
                state.overwritten = true;
                self.schedule(ns);
            }
            Err(e) if e.is_gone() => {
                tracing::debug!("namespace gone: {e}");
                self.forget_namespace(&ns);
            }
            Err(e) => tracing::warn!("cannot check a namespace for drift: {e}"),
        }
    }
}
