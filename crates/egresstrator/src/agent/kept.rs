//! What the loads left in each namespace, kept in the state dir (`loaded.json`), so that an
//! agent started again (after a crash, SIGKILL, an upgrade) need not load every running
//! container's namespace again: a namespace that still holds exactly what the record says,
//! for the very plan the new agent makes, counts as loaded (see `backend::Target::kept`).
//!
//! A record is a hint, never trusted on its own: it is only used when its plan hash equals
//! the new plan's, and then checked against the namespace's own listing (every interface,
//! egresstrator's table or chains, the guard). A missing, corrupt or unwritable file, a
//! record from before a reboot (network namespace cookies are unique only within one boot),
//! or a namespace that changed while no agent ran: each just means loading as usual.
//!
//! The addresses each namespace's fqdn learner holds are kept here too (`learned`), with
//! their expiry, so that a restarted agent that must load a namespace again (its plan
//! changed meanwhile) puts back what was learned and still holds, in that load's own
//! transaction. They only ever allow what the container's own answers allowed before.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::Kept;
use crate::state_dir;
use crate::status::LearnedAddress;

const FILE: &str = "loaded.json";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// The boot the cookies below belong to.
    boot_id: String,
    /// Network namespace cookie → what the last load left there.
    namespaces: BTreeMap<u64, Kept>,
    /// Network namespace cookie → the addresses its learner held.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    learned: BTreeMap<u64, Vec<LearnedAddress>>,
}

pub(super) struct KeptLoads {
    dir: PathBuf,
    /// None when the boot id cannot be read: nothing is read or written then.
    boot_id: Option<String>,
    /// The previous agent's records not taken yet.
    previous: HashMap<u64, Kept>,
    /// The previous agent's learned addresses not taken yet.
    previous_learned: HashMap<u64, Vec<LearnedAddress>>,
    /// Something to write.
    dirty: bool,
    /// A write is running (one at a time, off the loop).
    writing: Arc<AtomicBool>,
    /// The last write failed (warned once until one succeeds).
    failed: Arc<AtomicBool>,
}

impl KeptLoads {
    /// Reads the previous agent's records, if they are from this boot.
    pub(super) fn read(dir: PathBuf) -> Self {
        let boot_id = std::fs::read_to_string(BOOT_ID)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        let (previous, previous_learned) = match (
            &boot_id,
            state_dir::read_json::<Record>(&dir, FILE),
        ) {
            (Some(boot), Ok(Some(record))) if &record.boot_id == boot => (
                record.namespaces.into_iter().collect(),
                record.learned.into_iter().collect(),
            ),
            (_, Err(e)) => {
                tracing::warn!(
                        "{e}; every running container's namespace is loaded again (the file is rewritten)"
                    );
                (HashMap::new(), HashMap::new())
            }
            _ => (HashMap::new(), HashMap::new()),
        };
        if !previous.is_empty() {
            tracing::debug!(
                namespaces = previous.len(),
                "records of the previous agent's loads read"
            );
        }
        Self {
            dir,
            boot_id,
            previous,
            previous_learned,
            dirty: false,
            writing: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// The previous agent's record of the namespace `cookie`, if it was for the plan `hash`.
    /// Taken once: later loads into that namespace are this agent's own.
    pub(super) fn take(&mut self, cookie: u64, hash: &str) -> Option<Kept> {
        self.previous.remove(&cookie).filter(|k| k.hash == hash)
    }

    /// What the previous agent's learner held in the namespace `cookie`. Taken once.
    pub(super) fn take_learned(&mut self, cookie: u64) -> Vec<LearnedAddress> {
        self.previous_learned.remove(&cookie).unwrap_or_default()
    }

    /// A load's fingerprint arrived: the file is out of date.
    pub(super) fn changed(&mut self) {
        self.dirty = true;
    }

    /// Whether [`flush`](Self::flush) would write now: something changed, no write runs, and
    /// the boot is known. Lets the caller skip gathering the records on every tick.
    pub(super) fn due(&self) -> bool {
        self.dirty && self.boot_id.is_some() && !self.writing.load(Ordering::Acquire)
    }

    /// Writes the records, off the loop, when they changed and no write runs. `current` is
    /// this agent's records; the previous agent's are kept for the namespaces in `known`
    /// that have none of this agent's yet (their load is still to come).
    pub(super) fn flush(
        &mut self,
        current: BTreeMap<u64, Kept>,
        learned: BTreeMap<u64, Vec<LearnedAddress>>,
        known: &[u64],
    ) {
        let Some(boot_id) = self.boot_id.clone() else {
            return;
        };
        if !self.dirty || self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.dirty = false;
        let mut namespaces = current;
        let mut learned = learned;
        for cookie in known {
            if let Some(k) = self.previous.get(cookie) {
                namespaces.entry(*cookie).or_insert_with(|| k.clone());
            }
            if let Some(l) = self.previous_learned.get(cookie) {
                learned.entry(*cookie).or_insert_with(|| l.clone());
            }
        }
        learned.retain(|_, l| !l.is_empty());
        let record = Record {
            boot_id,
            namespaces,
            learned,
        };
        let dir = self.dir.clone();
        let writing = self.writing.clone();
        let failed = self.failed.clone();
        tokio::task::spawn_blocking(move || {
            match state_dir::write_atomic(&dir, FILE, &record) {
                Ok(()) => {
                    if failed.swap(false, Ordering::AcqRel) {
                        tracing::info!("{FILE} written again");
                    }
                }
                Err(e) => {
                    if !failed.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            "cannot record what was loaded: {e}; enforcement goes on, but an agent started again loads every namespace anew"
                        );
                    }
                }
            }
            writing.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(addr: &str) -> LearnedAddress {
        LearnedAddress {
            names: vec!["api.example.com".into()],
            address: addr.parse().expect("addr"),
            proto: "tcp".into(),
            ports: "443".into(),
            expires_unix: 4_000_000_000,
        }
    }

    fn kept(hash: &str) -> Kept {
        Kept {
            hash: hash.into(),
            fingerprint: format!("fp-{hash}"),
            unguarded: vec![],
        }
    }

    fn with(dir: &std::path::Path, record: &Record) {
        state_dir::write_atomic(dir, FILE, record).expect("write");
    }

    /// A fresh directory of this test's own (removed first if an earlier run left it).
    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("egt-kept-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_record_of_this_boot_is_taken_once_and_only_for_its_plan() {
        let dir = dir("once");
        let boot = std::fs::read_to_string(BOOT_ID).expect("boot id");
        let record = Record {
            boot_id: boot.trim().to_owned(),
            namespaces: BTreeMap::from([(7, kept("a")), (8, kept("b"))]),
            learned: BTreeMap::new(),
        };
        with(&dir, &record);
        let mut loads = KeptLoads::read(dir.clone());
        assert_eq!(loads.take(7, "other plan"), None, "another plan's record");
        assert_eq!(loads.take(7, "a"), None, "taken (and refused) once already");
        assert_eq!(loads.take(8, "b"), Some(kept("b")));
        assert_eq!(loads.take(8, "b"), None);
        assert_eq!(loads.take(9, "a"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_of_another_boot_or_a_corrupt_file_is_ignored() {
        let dir = dir("boot");
        with(
            &dir,
            &Record {
                boot_id: "00000000-0000-0000-0000-000000000000".into(),
                namespaces: BTreeMap::from([(7, kept("a"))]),
                learned: BTreeMap::new(),
            },
        );
        assert_eq!(KeptLoads::read(dir.clone()).take(7, "a"), None);
        std::fs::write(dir.join(FILE), b"{not json").expect("write");
        assert_eq!(KeptLoads::read(dir.clone()).take(7, "a"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn flush_keeps_the_previous_records_of_known_namespaces_only() {
        let dir = dir("flush");
        let boot = std::fs::read_to_string(BOOT_ID).expect("boot id");
        with(
            &dir,
            &Record {
                boot_id: boot.trim().to_owned(),
                namespaces: BTreeMap::from([(7, kept("a")), (8, kept("b"))]),
                learned: BTreeMap::from([
                    (7, vec![learned("10.0.0.7")]),
                    (8, vec![learned("10.0.0.8")]),
                ]),
            },
        );
        let mut loads = KeptLoads::read(dir.clone());
        loads.flush(BTreeMap::from([(9, kept("c"))]), BTreeMap::new(), &[8, 9]);
        assert!(
            !loads.writing.load(Ordering::Acquire),
            "nothing changed, nothing written"
        );
        loads.changed();
        loads.flush(
            BTreeMap::from([(9, kept("c"))]),
            BTreeMap::from([(9, vec![learned("10.0.0.9")])]),
            &[8, 9],
        );
        while loads.writing.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let written: Record = state_dir::read_json(&dir, FILE)
            .expect("read")
            .expect("file");
        assert_eq!(
            written.namespaces.keys().copied().collect::<Vec<_>>(),
            vec![8, 9],
            "7 is gone (not running any more), 8 waits for its load, 9 is this agent's"
        );
        assert_eq!(
            written.learned.keys().copied().collect::<Vec<_>>(),
            vec![8, 9],
            "the same for learned addresses"
        );
        let mut again = KeptLoads::read(dir.clone());
        assert_eq!(again.take_learned(9)[0].address.to_string(), "10.0.0.9");
        assert!(again.take_learned(9).is_empty(), "taken once");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
