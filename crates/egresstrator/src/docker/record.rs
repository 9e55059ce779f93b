//! Docker's own record of a container, read from the files dockerd keeps under its root
//! directory (`containers/<id>/config.v2.json` and `hostconfig.json`): the facts
//! `GET /containers/<id>/json` reports, since dockerd builds that answer from the same
//! container object it writes there.
//!
//! Why: dockerd answers an inspect only when the container's lock is free. During a start it
//! is not: the runtime hook runs inside the start (an inspect then waits for the start, which
//! waits for the hook), and during a burst of starts an inspect waited 86–96 ms of a worst
//! window of ~100 ms (BENCHMARKS.md, "Burst of 100"). The files are written atomically
//! (written aside, then renamed), when the container is created and again when it has
//! started, before dockerd sends the `start` event. They belong to root on the host, outside
//! the container's filesystem, so the workload cannot change them.

use std::path::{Path, PathBuf};

use super::{ContainerInfo, DockerError};

/// The bound on a record file: Docker's are a few KiB; a larger one is not read.
const RECORD_MAX: u64 = 1 << 20;

/// Docker's record of a container as it was created: its configuration. `running`, `pid`,
/// `started_at`, `sandbox_key` and `resolv_conf_path` are left empty; the caller knows them
/// (the runtime hook reads it during the start, before dockerd has written them).
pub fn read_record(root: &Path, id: &str) -> Result<ContainerInfo, DockerError> {
    read(root, id).map(|(info, _)| info)
}

/// Docker's record of a container that has started, for the `start` event path: everything an
/// inspect tells, state included. `Ok(None)` when the record does not show a running process
/// (the container stopped again, or dockerd wrote no state yet): the caller then asks the
/// API, which is never worse than the record.
pub fn read_started_record(root: &Path, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
    let (mut info, config) = read(root, id)?;
    let state = config.get("State");
    let running = state
        .and_then(|s| s.get("Running"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let pid = state
        .and_then(|s| s.get("Pid"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|&pid| pid != 0);
    let started_at = text(state.and_then(|s| s.get("StartedAt")));
    let (true, Some(pid)) = (running, pid) else {
        return Ok(None);
    };
    if started_at.is_empty() {
        return Ok(None);
    }
    info.running = true;
    info.pid = Some(pid);
    info.started_at = Some(started_at);
    info.sandbox_key = non_empty_path(text(config.pointer("/NetworkSettings/SandboxKey")));
    info.resolv_conf_path = non_empty_path(text(config.get("ResolvConfPath")));
    Ok(Some(info))
}

fn text(v: Option<&serde_json::Value>) -> String {
    v.and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn non_empty_path(s: String) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Both files, parsed: the configuration as [`read_record`] returns it, and
/// `config.v2.json` for the state.
fn read(root: &Path, id: &str) -> Result<(ContainerInfo, serde_json::Value), DockerError> {
    let dir = root.join("containers").join(id);
    let fail = |error: String| DockerError::Record {
        container: id.to_owned(),
        dir: dir.clone(),
        error,
    };
    // The id names a directory: only Docker's 64 hex digits may.
    if !super::is_container_id(id) {
        return Err(fail("not a docker container id".into()));
    }
    let read = |name: &str| -> Result<serde_json::Value, DockerError> {
        let path = dir.join(name);
        let file = std::fs::File::open(&path).map_err(|e| fail(format!("{name}: {e}")))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, RECORD_MAX), &mut text)
            .map_err(|e| fail(format!("{name}: {e}")))?;
        serde_json::from_str(&text).map_err(|e| fail(format!("{name}: {e}")))
    };
    let config = read("config.v2.json")?;
    let host = read("hostconfig.json")?;
    let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
        v.and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let labels = config
        .pointer("/Config/Labels")
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let info = ContainerInfo {
        id: id.to_owned(),
        started_at: None,
        name: text(config.get("Name")).trim_start_matches('/').to_owned(),
        running: false,
        pid: None,
        sandbox_key: None,
        network_mode: text(host.get("NetworkMode")),
        env: strings(config.pointer("/Config/Env"))
            .into_iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
        labels,
        resolv_conf_path: None,
        dns: strings(host.get("Dns")),
        cap_add: strings(host.get("CapAdd")),
        cap_drop: strings(host.get("CapDrop")),
        bounding: None,
        privileged: host
            .get("Privileged")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    };
    Ok((info, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8386a617b5ad00e4b59a0355eccff995cc82c5d6612144a7ec37d59f2880257d";

    /// Writes a record shaped like dockerd 20.10's (keys copied from a real
    /// `config.v2.json`, trimmed) with `state` as its `State`.
    fn record(state: serde_json::Value) -> Root {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root =
            Root(std::env::temp_dir().join(format!("egt-record-{}-{n}", std::process::id())));
        let dir = root.path().join("containers").join(ID);
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "State": state,
            "ID": ID,
            "Config": {"Env": ["EGRESSTRATOR_ENABLE=1", "PATH=/bin"], "Labels": {"a": "b"}},
            "NetworkSettings": {"SandboxKey": "/var/run/docker/netns/317a33e78cca"},
            "Name": "/egt-x",
            "ResolvConfPath": format!("/var/lib/docker/containers/{ID}/resolv.conf"),
        });
        std::fs::write(dir.join("config.v2.json"), config.to_string()).unwrap();
        std::fs::write(
            dir.join("hostconfig.json"),
            r#"{"NetworkMode":"default","Dns":[],"CapAdd":null,"CapDrop":null,"Privileged":false}"#,
        )
        .unwrap();
        root
    }

    /// A scratch root directory, removed on drop.
    struct Root(PathBuf);

    impl Root {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_started_record_tells_the_state() {
        let root = record(serde_json::json!({
            "Running": true, "Paused": false, "Pid": 4967,
            "StartedAt": "2026-12-02T17:39:02.174003927Z", "FinishedAt": "0001-01-01T00:00:00Z"
        }));
        let info = read_started_record(root.path(), ID).unwrap().unwrap();
        assert!(info.running);
        assert_eq!(info.pid, Some(4967));
        assert_eq!(
            info.started_at.as_deref(),
            Some("2026-12-02T17:39:02.174003927Z")
        );
        assert_eq!(
            info.sandbox_key,
            Some(PathBuf::from("/var/run/docker/netns/317a33e78cca"))
        );
        assert!(info.resolv_conf_path.is_some());
        assert_eq!(info.name, "egt-x");
        assert_eq!(info.env_var("EGRESSTRATOR_ENABLE"), Some("1"));
        // The creation-time reader leaves the state to its caller.
        let created = read_record(root.path(), ID).unwrap();
        assert!(!created.running && created.pid.is_none() && created.sandbox_key.is_none());
    }

    #[test]
    fn a_record_without_a_running_process_is_not_used() {
        for state in [
            serde_json::json!({"Running": false, "Pid": 0, "StartedAt": "2026-12-02T17:39:02Z"}),
            serde_json::json!({"Running": true, "Pid": 0, "StartedAt": "2026-12-02T17:39:02Z"}),
            serde_json::json!({"Running": true, "Pid": 12, "StartedAt": ""}),
            serde_json::json!(null),
        ] {
            let root = record(state.clone());
            assert_eq!(
                read_started_record(root.path(), ID).unwrap(),
                None,
                "{state}"
            );
        }
    }

    #[test]
    fn only_docker_ids_name_a_record() {
        let root = record(serde_json::json!({"Running": true, "Pid": 1}));
        for id in ["../../etc", "", &ID[..12]] {
            assert!(read_started_record(root.path(), id).is_err(), "{id:?}");
        }
    }
}
