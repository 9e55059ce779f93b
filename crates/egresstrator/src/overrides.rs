//! Manual overrides from `set --rules` and `clear`, kept under the state dir so that they hold
//! for the container's lifetime and the running agent honours them.
//!
//! `set <c> --rules a,b` replaces the container's ACLs; `clear <c>` takes it out of
//! enforcement; `set <c>` (no `--rules`) returns it to its own ACLs. Entries are keyed by full
//! container id and dropped when the container is removed. Writers take an exclusive lock on
//! a lock file and replace the file atomically, so concurrent commands never lose an entry.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::policy_watch::write_atomic;

pub const OVERRIDES_FILE: &str = "overrides.json";
const LOCK_FILE: &str = ".overrides.lock";

/// What an operator decided for one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Override {
    /// `set --rules`: these ACLs instead of the container's own; no opt-in needed.
    Rules { rules: String },
    /// `clear`: not enforced until `set` is run again.
    Cleared,
}

/// Container id → override.
pub type Overrides = BTreeMap<String, Override>;

/// Reads the overrides; a missing file means none. A corrupt file is an error (the caller
/// decides; the agent keeps its previous view and reports it).
pub fn load(dir: &Path) -> Result<Overrides, String> {
    let path = dir.join(OVERRIDES_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Changes the overrides under an exclusive lock.
pub fn update(dir: &Path, f: impl FnOnce(&mut Overrides)) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "{}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mut o = load(dir)?;
    f(&mut o);
    write_atomic(dir, OVERRIDES_FILE, &o)
}

/// A cached view of the overrides file that is re-read only when it changes.
#[derive(Debug)]
pub struct OverridesCache {
    dir: PathBuf,
    stamp: Option<SystemTime>,
    current: Overrides,
}

impl OverridesCache {
    pub fn new(dir: PathBuf) -> Self {
        OverridesCache {
            dir,
            stamp: None,
            current: Overrides::new(),
        }
    }

    /// The current overrides, re-read when the file's modification time moved.
    pub fn get(&mut self) -> &Overrides {
        let stamp = std::fs::metadata(self.dir.join(OVERRIDES_FILE))
            .and_then(|m| m.modified())
            .ok();
        if stamp != self.stamp || stamp.is_none() && !self.current.is_empty() {
            match load(&self.dir) {
                Ok(o) => {
                    self.current = o;
                    self.stamp = stamp;
                }
                Err(e) => tracing::error!("keeping the previous overrides: {e}"),
            }
        }
        &self.current
    }

    /// True when the file changed since the last `get`.
    pub fn changed(&self) -> bool {
        let stamp = std::fs::metadata(self.dir.join(OVERRIDES_FILE))
            .and_then(|m| m.modified())
            .ok();
        stamp != self.stamp
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
                rules: "web".into()
            }
        );
        let mut cache = OverridesCache::new(dir.clone());
        assert_eq!(cache.get().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
