//! `egresstrator runtime install|uninstall`: registers the runtime shim (`egresstrator-runc`)
//! with dockerd in its `daemon.json`, and writes the shim's `runc.conf`.
//!
//! `daemon.json` belongs to the operator, so the change is as small as it can be: one entry
//! under `runtimes` (and, when asked, `default-runtime`), every other key kept as it was. A
//! file that is not plain JSON (dockerd takes no comments) is refused and nothing is written.
//! Before the first change a copy is kept (`daemon.json.egresstrator-backup`), the result is
//! parsed back before it replaces the file (atomically, same mode), and running the same
//! command twice changes nothing. dockerd reads the file on `SIGHUP`; the command says so and
//! does not signal it itself.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The runtime's name in `daemon.json` (`docker run --runtime egresstrator`).
pub const RUNTIME_NAME: &str = "egresstrator";
/// The shim's config file, as the shim reads it by default.
pub const RUNC_CONF: &str = "/etc/egresstrator/runc.conf";
/// Where the previous `daemon.json` is kept.
const BACKUP_SUFFIX: &str = ".egresstrator-backup";
/// A `daemon.json` larger than this is not read.
const MAX_DAEMON_JSON: u64 = 1024 * 1024;

/// Why `daemon.json` cannot be changed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not plain JSON ({source}); dockerd takes no comments either. Nothing was written", path.display())]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a JSON object at the top; nothing was written", path.display())]
    NotObject { path: PathBuf },
    #[error("{} has \"runtimes\" that is not an object; nothing was written", path.display())]
    BadRuntimes { path: PathBuf },
    #[error("{} is larger than {MAX_DAEMON_JSON} bytes; nothing was written", path.display())]
    TooLarge { path: PathBuf },
    #[error("the shim {} does not exist; build it with `make build` and install it, or pass --shim", path.display())]
    NoShim { path: PathBuf },
}

/// What a command changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Written { backup: Option<PathBuf> },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads `daemon.json`; a missing file is an empty object.
fn read(path: &Path) -> Result<Map<String, Value>, RuntimeError> {
    let text = match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_DAEMON_JSON => {
            return Err(RuntimeError::TooLarge {
                path: path.to_owned(),
            })
        }
        Ok(_) => std::fs::read_to_string(path).map_err(io(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(io(path)(e)),
    };
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(RuntimeError::NotObject {
            path: path.to_owned(),
        }),
        Err(source) => Err(RuntimeError::NotJson {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `doc` over `path` if it differs from what is there: a backup of the old file
/// first (once: an existing backup is the operator's original and is kept), then a
/// temporary file, parsed back, renamed over the old one with its mode.
fn write(
    path: &Path,
    before: &Map<String, Value>,
    doc: Map<String, Value>,
) -> Result<Change, RuntimeError> {
    if &doc == before {
        return Ok(Change::Unchanged);
    }
    let text = serde_json::to_string_pretty(&Value::Object(doc.clone())).map_err(|e| {
        RuntimeError::NotJson {
            path: path.to_owned(),
            source: e,
        }
    })? + "\n";
    // The result must read back as what was meant.
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(back)) if back == doc => {}
        _ => {
            return Err(RuntimeError::NotObject {
                path: path.to_owned(),
            })
        }
    }
    let mut backup = None;
    if path.exists() {
        let b = PathBuf::from(format!("{}{BACKUP_SUFFIX}", path.display()));
        if !b.exists() {
            std::fs::copy(path, &b).map_err(io(&b))?;
        }
        backup = Some(b);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap_or(0o644);
    let tmp = PathBuf::from(format!("{}.egresstrator-tmp", path.display()));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(Change::Written { backup })
}

/// Adds the runtime (and, with `default`, makes it dockerd's default runtime).
pub fn install(daemon_json: &Path, shim: &Path, default: bool) -> Result<Change, RuntimeError> {
    if !shim.is_file() {
        return Err(RuntimeError::NoShim {
            path: shim.to_owned(),
        });
    }
    let before = read(daemon_json)?;
    let mut doc = before.clone();
    let runtimes = doc
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(runtimes) = runtimes else {
        return Err(RuntimeError::BadRuntimes {
            path: daemon_json.to_owned(),
        });
    };
    runtimes.insert(
        RUNTIME_NAME.to_owned(),
        serde_json::json!({ "path": shim.display().to_string() }),
    );
    if default {
        doc.insert("default-runtime".into(), RUNTIME_NAME.into());
    }
    write(daemon_json, &before, doc)
}

/// Removes the runtime, and `default-runtime` when it names it; nothing else.
pub fn uninstall(daemon_json: &Path) -> Result<Change, RuntimeError> {
    let before = read(daemon_json)?;
    let mut doc = before.clone();
    if let Some(Value::Object(runtimes)) = doc.get_mut("runtimes") {
        runtimes.remove(RUNTIME_NAME);
        if runtimes.is_empty() {
            doc.remove("runtimes");
        }
    }
    if doc.get("default-runtime").and_then(Value::as_str) == Some(RUNTIME_NAME) {
        doc.remove("default-runtime");
    }
    write(daemon_json, &before, doc)
}

/// The shim registered in `daemon.json` under [`RUNTIME_NAME`], if any.
pub fn registered_shim(daemon_json: &Path) -> Result<Option<PathBuf>, RuntimeError> {
    let doc = read(daemon_json)?;
    Ok(doc
        .get("runtimes")
        .and_then(|r| r.get(RUNTIME_NAME))
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .map(PathBuf::from))
}

/// Whether an x86-64/aarch64 ELF executable (64-bit, little-endian) is statically linked: it
/// has no `PT_INTERP` program header, so no dynamic loader runs when dockerd execs it. None
/// when it is not such a file.
pub fn statically_linked(path: &Path) -> Option<bool> {
    let b = std::fs::read(path).ok()?;
    if b.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(b.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (size, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    const PT_INTERP: u32 = 3;
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(size)?)?;
        if u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?) == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// The shim's config, as `runtime install` writes it when there is none.
pub fn runc_conf(hook_socket: &str) -> String {
    format!(
        "# Written by `egresstrator runtime install`; every line is optional (see the README).\n\
         socket = {hook_socket}\n"
    )
}

/// Writes `runc.conf` unless one exists (it is the operator's then). True when written.
pub fn write_runc_conf(path: &Path, hook_socket: &str) -> Result<bool, RuntimeError> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(path, runc_conf(hook_socket)).map_err(io(path))?;
    Ok(true)
}

/// Removes `runc.conf` only if it is exactly what `install` wrote. True when removed.
pub fn remove_runc_conf(path: &Path, hook_socket: &str) -> Result<bool, RuntimeError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text == runc_conf(hook_socket) => {
            std::fs::remove_file(path).map_err(io(path))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("egt-runtime-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("dir");
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn shim(d: &Dir) -> PathBuf {
        let s = d.0.join("egresstrator-runc");
        std::fs::write(&s, b"#!/bin/sh\n").expect("shim");
        s
    }

    #[test]
    fn install_merges_keeps_every_key_backs_up_and_is_idempotent() {
        let d = Dir::new("merge");
        let json = d.0.join("daemon.json");
        let original = r#"{"log-driver":"json-file","runtimes":{"crun":{"path":"/usr/bin/crun"}},"data-root":"/srv/docker","default-runtime":"runc"}"#;
        std::fs::write(&json, original).expect("write");
        let shim = shim(&d);
        let c = install(&json, &shim, true).expect("install");
        assert_eq!(
            c,
            Change::Written {
                backup: Some(PathBuf::from(format!("{}{BACKUP_SUFFIX}", json.display())))
            }
        );
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
        assert_eq!(doc["log-driver"], "json-file");
        assert_eq!(doc["data-root"], "/srv/docker");
        assert_eq!(doc["runtimes"]["crun"]["path"], "/usr/bin/crun");
        assert_eq!(
            doc["runtimes"]["egresstrator"]["path"],
            shim.display().to_string()
        );
        assert_eq!(doc["default-runtime"], "egresstrator");
        let backup =
            std::fs::read_to_string(format!("{}{BACKUP_SUFFIX}", json.display())).expect("backup");
        assert_eq!(backup, original);
        // Twice: nothing changes, not even the file's bytes.
        let bytes = std::fs::read(&json).expect("bytes");
        assert_eq!(
            install(&json, &shim, true).expect("again"),
            Change::Unchanged
        );
        assert_eq!(std::fs::read(&json).expect("bytes"), bytes);
        // Uninstall takes out exactly what install put in.
        uninstall(&json).expect("uninstall");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
        assert_eq!(doc["runtimes"]["crun"]["path"], "/usr/bin/crun");
        assert!(doc["runtimes"].get("egresstrator").is_none());
        assert!(
            doc.get("default-runtime").is_none(),
            "it named ours: removed"
        );
        assert_eq!(doc["log-driver"], "json-file");
        assert_eq!(uninstall(&json).expect("again"), Change::Unchanged);
    }

    #[test]
    fn comments_and_invalid_json_are_refused_without_writing() {
        let d = Dir::new("bad");
        let shim = shim(&d);
        for (name, text) in [
            ("comments", "{\n  // a comment\n  \"debug\": true\n}\n"),
            ("broken", "{\"debug\": tru"),
            ("array", "[1, 2]"),
            ("runtimes", "{\"runtimes\": \"runc\"}"),
        ] {
            let json = d.0.join(format!("{name}.json"));
            std::fs::write(&json, text).expect("write");
            assert!(install(&json, &shim, false).is_err(), "{name}");
            assert!(uninstall(&json).is_err() || name == "runtimes", "{name}");
            assert_eq!(
                std::fs::read_to_string(&json).expect("read"),
                text,
                "{name} untouched"
            );
            assert!(!PathBuf::from(format!("{}{BACKUP_SUFFIX}", json.display())).exists());
        }
    }

    #[test]
    fn a_missing_file_is_created_and_a_missing_shim_refused() {
        let d = Dir::new("new");
        let json = d.0.join("docker").join("daemon.json");
        assert!(matches!(
            install(&json, &d.0.join("nope"), false),
            Err(RuntimeError::NoShim { .. })
        ));
        assert!(!json.exists());
        let shim = shim(&d);
        assert_eq!(
            install(&json, &shim, false).expect("install"),
            Change::Written { backup: None }
        );
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
        assert!(doc.get("default-runtime").is_none());
        let conf = d.0.join("runc.conf");
        assert!(write_runc_conf(&conf, "/run/egresstrator/hook.sock").expect("conf"));
        assert!(
            !write_runc_conf(&conf, "/other").expect("kept"),
            "an existing file is kept"
        );
        assert!(!remove_runc_conf(&conf, "/other").expect("not ours"));
        assert!(remove_runc_conf(&conf, "/run/egresstrator/hook.sock").expect("ours"));
        assert!(!conf.exists());
    }
}
