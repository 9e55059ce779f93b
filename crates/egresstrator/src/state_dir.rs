//! The agent's state dir (`--state-dir`): the policy snapshot and the operators' overrides
//! live there. Every write is atomic (a temporary file, fsync, rename), files are private to
//! root, and a file that is missing reads as "none" while one that is corrupt is an error.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a state-dir file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {name}: {source}")]
    Encode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the state dir (0700) if it is missing.
pub fn create(dir: &Path) -> Result<(), StateDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Reads `dir/name` as JSON; None when the file does not exist.
pub fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, StateDirError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateDirError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Serializes `value` to `dir/name` atomically (private to root: it holds policy).
pub fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), StateDirError> {
    create(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateDirError::Encode {
        name: name.to_owned(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dst).map_err(io(&dst))
}

/// Takes an exclusive lock on `dir/name` (created if missing); it is released when the
/// returned file is closed.
pub fn lock(dir: &Path, name: &str) -> Result<File, StateDirError> {
    create(dir)?;
    let path = dir.join(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock on a file descriptor we own; released when `file` is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(&path)(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = std::env::temp_dir().join(format!("egt-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(read_json::<Vec<u32>>(&dir, "x.json")
            .expect("missing")
            .is_none());
        write_atomic(&dir, "x.json", &vec![1u32, 2]).expect("write");
        assert_eq!(
            read_json::<Vec<u32>>(&dir, "x.json").expect("read"),
            Some(vec![1, 2])
        );
        std::fs::write(dir.join("x.json"), b"{not json").expect("corrupt it");
        let e = read_json::<Vec<u32>>(&dir, "x.json").expect_err("corrupt");
        assert!(matches!(e, StateDirError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("x.json is corrupt"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
