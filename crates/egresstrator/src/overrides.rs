//! Manual overrides from `set --rules` and `clear`, kept under the state dir so that they hold
//! for the container's lifetime and the running agent honours them.
//!
//! `set <c> --rules a,b` replaces the container's ACLs; `clear <c>` takes it out of
//! enforcement; `set <c>` (no `--rules`) returns it to its own ACLs. Entries are keyed by full
//! container id and dropped when the container is removed. Writers take an exclusive lock on
//! a lock file and replace the file atomically, so concurrent commands never lose an entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state_dir::{self, StateDirError};

pub const OVERRIDES_FILE: &str = "overrides.json";
const LOCK_FILE: &str = ".overrides.lock";

/// What an operator decided for one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Override {
    /// `set --rules`: these ACLs instead of the container's own; no opt-in needed. With
    /// `--audit on|off`, audit mode as chosen instead of the container's own.
    Rules {
        rules: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit: Option<bool>,
    },
    /// `set --audit on|off` alone: the container's own ACLs, audit mode as chosen.
    Audit { audit: bool },
    /// `clear`: not enforced until `set` is run again.
    Cleared,
}

impl Override {
    /// The audit mode an operator chose, if they chose one.
    pub fn audit(&self) -> Option<bool> {
        match self {
            Override::Rules { audit, .. } => *audit,
            Override::Audit { audit } => Some(*audit),
            Override::Cleared => None,
        }
    }
}

/// Container id → override.
pub type Overrides = BTreeMap<String, Override>;

/// Reads the overrides; a missing file means none. A corrupt file is an error (the caller
/// decides; the agent keeps its previous view and reports it).
pub fn load(dir: &Path) -> Result<Overrides, StateDirError> {
    Ok(state_dir::read_json(dir, OVERRIDES_FILE)?.unwrap_or_default())
}

/// Changes the overrides under an exclusive lock.
pub fn update(dir: &Path, f: impl FnOnce(&mut Overrides)) -> Result<(), StateDirError> {
    let _lock = state_dir::lock(dir, LOCK_FILE)?;
    let mut o = load(dir)?;
    f(&mut o);
    state_dir::write_atomic(dir, OVERRIDES_FILE, &o)
}

/// A cached view of the overrides file. Changes are detected by content, not modification
/// time: two `set`/`clear` commands within one clock tick leave the same mtime.
#[derive(Debug)]
pub struct OverridesCache {
    dir: PathBuf,
    raw: Option<Vec<u8>>,
    current: Overrides,
}

impl OverridesCache {
    pub fn new(dir: PathBuf) -> Self {
        let mut c = OverridesCache {
            dir,
            raw: None,
            current: Overrides::new(),
        };
        c.refresh();
        c
    }

    /// The overrides as last read.
    pub fn get(&self) -> &Overrides {
        &self.current
    }

    /// Re-reads the file; true when its content changed.
    pub fn refresh(&mut self) -> bool {
        let path = self.dir.join(OVERRIDES_FILE);
        let raw = match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::error!("keeping the previous overrides: {}: {e}", path.display());
                return false;
            }
        };
        if raw == self.raw {
            return false;
        }
        let parsed = match &raw {
            Some(b) => match serde_json::from_slice(b) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!("keeping the previous overrides: {}: {e}", path.display());
                    return false;
                }
            },
            None => Overrides::new(),
        };
        self.raw = raw;
        self.current = parsed;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("egt-overrides-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir).expect("missing is empty").is_empty());
        update(&dir, |o| {
            o.insert(
                "a".into(),
                Override::Rules {
                    rules: "web".into(),
                    audit: None,
                },
            );
            o.insert("b".into(), Override::Cleared);
        })
        .expect("update");
        update(&dir, |o| {
            o.remove("b");
        })
        .expect("update");
        let o = load(&dir).expect("load");
        assert_eq!(o.len(), 1);
        assert_eq!(
            o["a"],
            Override::Rules {
                rules: "web".into(),
                audit: None,
            }
        );
        let mut cache = OverridesCache::new(dir.clone());
        assert_eq!(cache.get().len(), 1);
        // Two writes in a row are both seen, whatever the clock says.
        update(&dir, |o| {
            o.insert("c".into(), Override::Cleared);
        })
        .expect("update");
        assert!(cache.refresh());
        assert_eq!(cache.get().len(), 2);
        assert!(!cache.refresh());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Files written before `audit` existed read the same; the new kinds round-trip.
    #[test]
    fn audit_choices_read_and_old_files_still_do() {
        let old: Overrides =
            serde_json::from_str(r#"{"a":{"kind":"rules","rules":"web"},"b":{"kind":"cleared"}}"#)
                .expect("0.3 file");
        assert_eq!(old["a"].audit(), None);
        assert_eq!(old["b"].audit(), None);
        let new = Overrides::from([
            ("c".to_owned(), Override::Audit { audit: true }),
            (
                "d".to_owned(),
                Override::Rules {
                    rules: "db".into(),
                    audit: Some(false),
                },
            ),
        ]);
        let back: Overrides =
            serde_json::from_str(&serde_json::to_string(&new).expect("json")).expect("back");
        assert_eq!(back, new);
        assert_eq!(back["c"].audit(), Some(true));
        assert_eq!(back["d"].audit(), Some(false));
    }
}
