//! Thin client for the Docker Engine API (over bollard): which containers run, what they ask
//! for, and when that changes.
//!
//! Why it exists: the agent needs a few facts per container (id, name, state, network
//! namespace, environment, labels, DNS setup) and a stream of lifecycle events. This module
//! turns Docker's loosely typed answers into [`ContainerInfo`] and [`ContainerEvent`] so the
//! rest of the agent never handles bollard types.
//!
//! What it must never do: change anything in Docker (it only reads), or decide policy: it
//! reports what a container says (`EGRESSTRATOR_*` variables, network mode) and leaves the
//! decisions to the caller.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptionsBuilder, InspectContainerOptions};
use bollard::Docker;
use futures_util::stream::{BoxStream, StreamExt};

mod record;
pub mod watch;

/// Docker's container ids: 64 hex digits. Only such a name may be joined to a path under
/// Docker's data root.
fn is_container_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}
pub use record::{read_record, read_started_record};

/// Seconds bollard waits for a response (for the event stream: for its headers only).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The default daemon address, as bollard uses it when `$DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Network actions that change a container's interfaces.
const NETWORK_ACTIONS: [&str; 2] = ["connect", "disconnect"];

/// An error talking to Docker.
///
/// Every message is complete on its own (it includes bollard's error), so these errors expose
/// no `source()` chain that would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "unsupported docker host {host:?}: expected unix:///path, /path, tcp://host:port or \
         http://host:port"
    )]
    UnsupportedHost { host: String },
    #[error("docker TLS: {missing} is missing in the certificate directory {}", dir.display())]
    TlsFiles { dir: PathBuf, missing: &'static str },
    #[error("failed to connect to docker at {host}: {error}")]
    Connect { host: String, error: BollardError },
    /// Docker answered 404: no such container (or it was removed meanwhile).
    #[error("container {container} not found")]
    NotFound { container: String },
    #[error("failed to inspect container {container}: {error}")]
    Inspect {
        container: String,
        error: BollardError,
    },
    /// The inspect answer lacked a field that every container has.
    #[error("docker returned no {field} for container {container}")]
    Incomplete {
        container: String,
        field: &'static str,
    },
    #[error("failed to list running containers: {error}")]
    List { error: BollardError },
    #[error("docker event stream failed: {error}")]
    Events { error: BollardError },
    #[error("failed to ask docker for its root directory: {error}")]
    Info { error: BollardError },
    /// Docker's on-disk record of a container could not be read (see [`read_record`]).
    #[error("cannot read docker's record of container {container} in {}: {error}", dir.display())]
    Record {
        container: String,
        dir: PathBuf,
        error: String,
    },
}

/// A connection to one Docker daemon, with the API version negotiated.
#[derive(Clone, Debug)]
pub struct DockerClient {
    inner: Docker,
}

/// What the agent needs to know about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// `State.StartedAt`: tells one run of a container from the next, even when the kernel
    /// hands the new run's namespace the inode number of the old one.
    pub started_at: Option<String>,
    /// Without Docker's leading '/'.
    pub name: String,
    pub running: bool,
    /// The container's init process as seen from the daemon's pid namespace; `None` when
    /// Docker reports 0 (not running).
    pub pid: Option<u32>,
    /// `NetworkSettings.SandboxKey`, e.g. `/var/run/docker/netns/1a2b3c4d5e6f`; `None` if empty.
    pub sandbox_key: Option<PathBuf>,
    /// `HostConfig.NetworkMode`: `default`, `bridge`, `host`, `none`, `container:<id>`, or a
    /// network name.
    pub network_mode: String,
    /// `Config.Env` split at the first '=', in order; entries without '=' are left out.
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub resolv_conf_path: Option<PathBuf>,
    /// `HostConfig.Dns`: resolvers set with `--dns`.
    pub dns: Vec<String>,
    /// `HostConfig.CapAdd`, as Docker reports it (`NET_ADMIN` or `CAP_NET_ADMIN`, `ALL`).
    pub cap_add: Vec<String>,
    /// `HostConfig.CapDrop`.
    pub cap_drop: Vec<String>,
    /// `HostConfig.Privileged`.
    pub privileged: bool,
    /// The capability bounding set the container's processes actually run with (`CapBnd` of
    /// its init, or the OCI bundle's), when known: it beats what `HostConfig` says, since a
    /// runtime may change it (egresstrator-runc drops `CAP_NET_RAW`).
    pub bounding: Option<u64>,
}

/// Capability numbers (`<linux/capability.h>`).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;
pub const CAP_SYS_ADMIN: u32 = 21;

/// The number of a capability name (`CAP_NET_RAW` or `NET_RAW`), for the few that matter here.
pub fn capability_number(name: &str) -> Option<u32> {
    let name = name.trim().to_ascii_uppercase();
    match name.strip_prefix("CAP_").unwrap_or(&name) {
        "NET_ADMIN" => Some(CAP_NET_ADMIN),
        "NET_RAW" => Some(CAP_NET_RAW),
        "SYS_ADMIN" => Some(CAP_SYS_ADMIN),
        _ => None,
    }
}

/// The `CapBnd` mask of a process, from `/proc/<pid>/status`.
pub fn bounding_set(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

impl ContainerInfo {
    /// The file to enter the container's network namespace with: `/proc/<pid>/ns/net` when
    /// the pid is known, else the sandbox key.
    pub fn netns_path(&self) -> Option<PathBuf> {
        match self.pid {
            Some(pid) => Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
            None => self.sandbox_key.clone(),
        }
    }

    /// Why a workload in this container could get around its firewall, if it can:
    /// - it holds `CAP_NET_ADMIN` or `CAP_SYS_ADMIN`, with which it can change or remove the
    ///   rules in its own namespace;
    /// - it holds `CAP_NET_RAW`: an `AF_XDP` socket (copy mode) transmits through the kernel's
    ///   direct transmit path, which runs no netfilter hook at all, so even the raw-socket
    ///   guard cannot see those frames (measured on Linux 6.18). Docker grants `NET_RAW` by
    ///   default; egresstrator-runc drops it from enabled containers.
    ///
    /// Decided from the bounding set the container really runs with when it is known, else
    /// from `HostConfig` (Docker's defaults include `NET_RAW`, not the other two).
    pub fn bypass_capability(&self) -> Option<String> {
        let holds = |cap: u32| match self.bounding {
            Some(mask) => mask & (1 << cap) != 0,
            None => {
                let named = |list: &[String]| {
                    list.iter().any(|c| {
                        c.trim().eq_ignore_ascii_case("ALL") || capability_number(c) == Some(cap)
                    })
                };
                self.privileged
                    || named(&self.cap_add)
                    || (cap == CAP_NET_RAW && !named(&self.cap_drop))
            }
        };
        if let Some(cap) = [CAP_NET_ADMIN, CAP_SYS_ADMIN]
            .into_iter()
            .find(|c| holds(*c))
        {
            let name = if cap == CAP_NET_ADMIN {
                "NET_ADMIN"
            } else {
                "SYS_ADMIN"
            };
            let how = if self.privileged {
                " (--privileged)"
            } else {
                ""
            };
            return Some(format!(
                "it holds CAP_{name}{how}, with which its workload can change or remove its own firewall"
            ));
        }
        holds(CAP_NET_RAW).then(|| {
            "it holds CAP_NET_RAW, with which its workload can send frames through an AF_XDP socket, which the kernel transmits past every netfilter hook (drop NET_RAW, or start it under egresstrator-runc, which does)".to_owned()
        })
    }

    /// The value of environment variable `key`; the last occurrence wins, as in a process.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a Docker event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventScope {
    /// The container itself (`start`, `die`, `destroy`, `exec_start`, …).
    Container,
    /// One of its networks (`connect`, `disconnect`): its interfaces changed.
    Network,
}

/// One event about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Full container id.
    pub id: String,
    pub scope: EventScope,
    /// Docker's action, e.g. `start`, `die`, `destroy`, `restart`, `connect`. Exec actions
    /// carry their command after a colon (`exec_start: sh`).
    pub action: String,
    /// Nanoseconds since the Unix epoch (0 if Docker sent no timestamp).
    pub time_nano: i64,
}

impl DockerClient {
    /// Connects to `host` (`unix:///path`, `/path`, `tcp://host:port`, `http://host:port`), or
    /// when `None` to `$DOCKER_HOST` or the default socket, and negotiates the API version
    /// (dockerd 20.10 speaks 1.41, older than bollard's default).
    pub async fn connect(host: Option<&str>) -> Result<Self, DockerError> {
        Self::connect_with(host, None).await
    }

    /// [`DockerClient::connect`], over TLS when `tls` is given (`$DOCKER_TLS_VERIFY`): the
    /// daemon's certificate is verified against `ca.pem` and the client presents
    /// `cert.pem`/`key.pem` from the certificate directory, as Docker's own CLI does.
    pub async fn connect_with(host: Option<&str>, tls: Option<&Path>) -> Result<Self, DockerError> {
        if let Some(dir) = tls {
            let host = host
                .map(str::to_owned)
                .or_else(|| std::env::var("DOCKER_HOST").ok())
                .unwrap_or_else(|| "tcp://localhost:2376".to_owned());
            if !(host.starts_with("tcp://") || host.starts_with("https://")) {
                return Err(DockerError::UnsupportedHost { host });
            }
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                if !dir.join(f).is_file() {
                    return Err(DockerError::TlsFiles {
                        dir: dir.to_path_buf(),
                        missing: f,
                    });
                }
            }
            let connect_error = |error| DockerError::Connect {
                host: host.clone(),
                error,
            };
            let inner = Docker::connect_with_ssl(
                &host,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(connect_error)?
            .negotiate_version()
            .await
            .map_err(connect_error)?;
            return Ok(DockerClient { inner });
        }
        let (described, docker) = match host {
            None => {
                let described =
                    std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_string());
                (described, Docker::connect_with_defaults())
            }
            Some(host) => {
                let docker = if host.starts_with("unix://") || host.starts_with('/') {
                    Docker::connect_with_unix(
                        host,
                        REQUEST_TIMEOUT_SECS,
                        bollard::API_DEFAULT_VERSION,
                    )
                } else if host.starts_with("tcp://") || host.starts_with("http://") {
                    Docker::connect_with_http(
                        host,
                        REQUEST_TIMEOUT_SECS,
                        bollard::API_DEFAULT_VERSION,
                    )
                } else {
                    return Err(DockerError::UnsupportedHost {
                        host: host.to_string(),
                    });
                };
                (host.to_string(), docker)
            }
        };
        let connect_error = |error| DockerError::Connect {
            host: described.clone(),
            error,
        };
        // Building the client does no I/O; negotiating is the first request to the daemon.
        let inner = docker
            .map_err(connect_error)?
            .negotiate_version()
            .await
            .map_err(connect_error)?;
        Ok(DockerClient { inner })
    }

    /// The underlying bollard client, for calls this module does not wrap.
    pub fn bollard(&self) -> &Docker {
        &self.inner
    }

    /// Inspects one container; [`DockerError::NotFound`] when Docker does not know it.
    pub async fn inspect(&self, id_or_name: &str) -> Result<ContainerInfo, DockerError> {
        let response = self
            .inner
            .inspect_container(id_or_name, None::<InspectContainerOptions>)
            .await
            .map_err(|error| match error {
                BollardError::DockerResponseServerError {
                    status_code: 404, ..
                } => DockerError::NotFound {
                    container: id_or_name.to_string(),
                },
                error => DockerError::Inspect {
                    container: id_or_name.to_string(),
                    error,
                },
            })?;
        container_info(id_or_name, response)
    }

    /// Docker's root directory (`DockerRootDir` of `GET /info`), where it keeps its record of
    /// every container.
    pub async fn root_dir(&self) -> Result<PathBuf, DockerError> {
        let info = self
            .inner
            .info()
            .await
            .map_err(|error| DockerError::Info { error })?;
        Ok(PathBuf::from(
            info.docker_root_dir
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/var/lib/docker".to_owned()),
        ))
    }

    /// One container from Docker's container list (which answers while the container is
    /// being started, unlike inspect): id, name, labels and network mode only.
    pub async fn list_one(&self, id: &str) -> Result<ContainerInfo, DockerError> {
        let filters = std::collections::HashMap::from([("id".to_owned(), vec![id.to_owned()])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .inner
            .list_containers(Some(options))
            .await
            .map_err(|error| DockerError::List { error })?;
        let c = list
            .into_iter()
            .find(|c| c.id.as_deref() == Some(id))
            .ok_or_else(|| DockerError::NotFound {
                container: id.to_owned(),
            })?;
        Ok(ContainerInfo {
            id: id.to_owned(),
            started_at: None,
            name: c
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default(),
            running: false,
            pid: None,
            sandbox_key: None,
            network_mode: c
                .host_config
                .and_then(|h| h.network_mode)
                .unwrap_or_default(),
            env: Vec::new(),
            labels: c.labels.unwrap_or_default().into_iter().collect(),
            resolv_conf_path: None,
            dns: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            privileged: false,
            bounding: None,
        })
    }

    /// Ids of the containers Docker lists as running (paused ones included: they keep their
    /// network namespace).
    pub async fn list_running(&self) -> Result<Vec<String>, DockerError> {
        let containers = self
            .inner
            .list_containers(None::<bollard::query_parameters::ListContainersOptions>)
            .await
            .map_err(|error| DockerError::List { error })?;
        Ok(containers.into_iter().filter_map(|c| c.id).collect())
    }

    /// Every container event, and network `connect`/`disconnect` events, from `since` (Unix
    /// seconds) if given, else from now. The stream ends or yields an error when the
    /// connection to Docker breaks; the caller reconnects (with `since`) and reconciles.
    pub fn events(
        &self,
        since: Option<i64>,
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        // Filters of different keys are ANDed by Docker and values of one key ORed, so one
        // stream cannot ask for "container events, or network connects"; the network actions
        // are filtered here instead.
        let filters = std::collections::HashMap::from([("type", vec!["container", "network"])]);
        let mut options = EventsOptionsBuilder::new().filters(&filters);
        if let Some(since) = since {
            options = options.since(&since.to_string());
        }
        self.inner
            .events(Some(options.build()))
            .filter_map(|item| async move {
                match item {
                    Ok(message) => container_event(message).map(Ok),
                    Err(error) => Some(Err(DockerError::Events { error })),
                }
            })
            .boxed()
    }
}

/// Converts an event message; `None` for messages that are not about a container.
fn container_event(message: EventMessage) -> Option<ContainerEvent> {
    let action = message.action.filter(|a| !a.is_empty())?;
    let actor = message.actor?;
    let (id, scope) = match message.typ {
        Some(bollard::models::EventMessageTypeEnum::NETWORK) => {
            if !NETWORK_ACTIONS.contains(&action.as_str()) {
                return None;
            }
            let container = actor.attributes.and_then(|mut a| a.remove("container"))?;
            (container, EventScope::Network)
        }
        Some(bollard::models::EventMessageTypeEnum::CONTAINER) | None => {
            (actor.id?, EventScope::Container)
        }
        Some(_) => return None,
    };
    if id.is_empty() {
        return None;
    }
    let time_nano = message
        .time_nano
        .or_else(|| message.time.map(|secs| secs.saturating_mul(1_000_000_000)))
        .unwrap_or(0);
    Some(ContainerEvent {
        id,
        scope,
        action,
        time_nano,
    })
}

/// Converts an inspect answer for the container the caller asked for as `requested`.
fn container_info(
    requested: &str,
    response: ContainerInspectResponse,
) -> Result<ContainerInfo, DockerError> {
    let id = response
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| DockerError::Incomplete {
            container: requested.to_string(),
            field: "Id",
        })?;
    let name = response
        .name
        .map(|name| name.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let state = response.state.unwrap_or_default();
    let config = response.config.unwrap_or_default();
    let host_config = response.host_config.unwrap_or_default();
    let network_settings = response.network_settings.unwrap_or_default();
    let non_empty_path = |s: Option<String>| s.filter(|s| !s.is_empty()).map(PathBuf::from);

    Ok(ContainerInfo {
        id,
        name,
        started_at: state.started_at.clone().filter(|s| !s.is_empty()),
        running: state.running.unwrap_or(false),
        pid: state
            .pid
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid != 0),
        sandbox_key: non_empty_path(network_settings.sandbox_key),
        network_mode: host_config.network_mode.unwrap_or_default(),
        env: config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|entry| {
                entry
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        resolv_conf_path: non_empty_path(response.resolv_conf_path),
        dns: host_config.dns.unwrap_or_default(),
        cap_add: host_config.cap_add.unwrap_or_default(),
        cap_drop: host_config.cap_drop.unwrap_or_default(),
        privileged: host_config.privileged.unwrap_or(false),
        bounding: None,
    })
}

/// A container id shortened as Docker shows it (12 characters).
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The `nameserver` addresses of a resolv.conf, in order. IPv6 zone suffixes (`%eth0`) are
/// dropped; lines that do not parse are skipped (the libc resolver ignores them too).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let address = words.next()?;
            let address = address
                .split_once('%')
                .map_or(address, |(addr, _zone)| addr);
            address.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# Generated by Docker\n\
                    search example.com\n\
                    nameserver 10.0.0.2\n\
                    options ndots:0\n\
                    nameserver   fe80::1%eth0  \n\
                    \tnameserver 2001:db8::53\n\
                    ;nameserver 10.9.9.9\n\
                    #nameserver 10.8.8.8\n\
                    nameserver not-an-address\n\
                    nameserver\n\
                    nameservers 10.7.7.7\n\
                    nameserver 127.0.0.11\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap()),
                IpAddr::V6("2001:db8::53".parse::<Ipv6Addr>().unwrap()),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)),
            ]
        );
    }

    #[test]
    fn resolv_conf_empty_and_crlf() {
        assert!(parse_resolv_conf("").is_empty());
        assert_eq!(
            parse_resolv_conf("nameserver 1.1.1.1\r\nnameserver 8.8.8.8\r\n"),
            vec![
                IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
                IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))
            ]
        );
    }

    /// Trimmed `docker inspect` answer of dockerd 20.10 (API 1.41).
    const INSPECT_20_10: &str = r#"{
        "Id": "3f2a9c0d5e6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f",
        "Created": "2024-05-01T10:00:00.000000000Z",
        "Path": "sleep",
        "Args": ["600"],
        "State": {"Status": "running", "Running": true, "Paused": false, "Restarting": false,
                  "OOMKilled": false, "Dead": false, "Pid": 4121, "ExitCode": 0, "Error": "",
                  "StartedAt": "2024-05-01T10:00:01.000000000Z",
                  "FinishedAt": "0001-01-01T00:00:00Z"},
        "ResolvConfPath": "/var/lib/docker/containers/3f2a/resolv.conf",
        "Name": "/web-1",
        "RestartCount": 0,
        "HostConfig": {"NetworkMode": "default", "Dns": ["10.0.0.2", "10.0.0.3"],
                       "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}},
        "Config": {"Hostname": "3f2a9c0d5e6b",
                   "Env": ["PATH=/usr/bin:/bin", "EGRESSTRATOR_ACL=web,db", "EMPTY=",
                           "NOEQUALS", "X=a=b", "EGRESSTRATOR_ACL=web"],
                   "Labels": {"b": "2", "a": "1"}},
        "NetworkSettings": {"Bridge": "", "SandboxID": "1a2b", "HairpinMode": false,
                            "SandboxKey": "/var/run/docker/netns/1a2b3c4d5e6f",
                            "Networks": {}}
    }"#;

    #[test]
    fn inspect_answer_is_parsed() {
        let response: ContainerInspectResponse = serde_json::from_str(INSPECT_20_10).unwrap();
        let info = container_info("web-1", response).unwrap();
        assert_eq!(info.id.len(), 64);
        assert_eq!(info.name, "web-1");
        assert!(info.running);
        assert_eq!(info.pid, Some(4121));
        assert_eq!(
            info.sandbox_key,
            Some(PathBuf::from("/var/run/docker/netns/1a2b3c4d5e6f"))
        );
        assert_eq!(info.network_mode, "default");
        assert_eq!(info.dns, vec!["10.0.0.2", "10.0.0.3"]);
        assert_eq!(
            info.resolv_conf_path,
            Some(PathBuf::from("/var/lib/docker/containers/3f2a/resolv.conf"))
        );
        assert_eq!(info.env.len(), 5, "NOEQUALS is left out: {:?}", info.env);
        assert_eq!(info.env_var("EGRESSTRATOR_ACL"), Some("web"));
        assert_eq!(info.env_var("EMPTY"), Some(""));
        assert_eq!(info.env_var("X"), Some("a=b"));
        assert_eq!(info.env_var("NOEQUALS"), None);
        assert_eq!(info.env_var("MISSING"), None);
        assert_eq!(
            info.labels.iter().collect::<Vec<_>>(),
            vec![
                (&"a".to_string(), &"1".to_string()),
                (&"b".to_string(), &"2".to_string())
            ]
        );
        assert_eq!(info.netns_path(), Some(PathBuf::from("/proc/4121/ns/net")));
    }

    #[test]
    fn stopped_container_has_no_pid_and_falls_back_to_sandbox_key() {
        let mut response: ContainerInspectResponse = serde_json::from_str(INSPECT_20_10).unwrap();
        if let Some(state) = response.state.as_mut() {
            state.running = Some(false);
            state.pid = Some(0);
        }
        let info = container_info("web-1", response.clone()).unwrap();
        assert!(!info.running);
        assert_eq!(info.pid, None);
        assert_eq!(
            info.netns_path(),
            Some(PathBuf::from("/var/run/docker/netns/1a2b3c4d5e6f"))
        );

        if let Some(settings) = response.network_settings.as_mut() {
            settings.sandbox_key = Some(String::new());
        }
        let info = container_info("web-1", response).unwrap();
        assert_eq!(info.sandbox_key, None);
        assert_eq!(info.netns_path(), None);
    }

    #[test]
    fn inspect_answer_without_id_is_an_error() {
        let response = ContainerInspectResponse::default();
        let error = container_info("ghost", response).unwrap_err();
        assert_eq!(
            error.to_string(),
            "docker returned no Id for container ghost"
        );
    }

    #[test]
    fn bypass_is_decided_from_the_real_bounding_set_first() {
        let response: ContainerInspectResponse = serde_json::from_str(INSPECT_20_10).unwrap();
        let mut info = container_info("web-1", response).unwrap();
        // Docker's defaults: NET_RAW.
        assert!(info.bypass_capability().unwrap().contains("CAP_NET_RAW"));
        info.cap_drop = vec!["NET_RAW".into()];
        assert_eq!(info.bypass_capability(), None);
        info.cap_add = vec!["CAP_NET_ADMIN".into()];
        assert!(info
            .bypass_capability()
            .unwrap()
            .starts_with("it holds CAP_NET_ADMIN,"));
        info.cap_add.clear();
        info.privileged = true;
        assert!(info.bypass_capability().unwrap().contains("(--privileged)"));
        // The bounding set the container runs with wins over HostConfig.
        info.bounding = Some(0xa80425fb & !(1 << CAP_NET_RAW));
        assert_eq!(info.bypass_capability(), None);
        info.bounding = Some(0xa80425fb);
        assert!(info.bypass_capability().unwrap().contains("AF_XDP"));
        info.bounding = Some(1 << CAP_SYS_ADMIN);
        assert!(info.bypass_capability().unwrap().contains("CAP_SYS_ADMIN"));
        assert_eq!(capability_number("cap_net_raw"), Some(CAP_NET_RAW));
        assert_eq!(capability_number("CHOWN"), None);
    }

    #[test]
    fn events_are_converted() {
        let message: EventMessage = serde_json::from_str(
            r#"{"status":"start","id":"abc","from":"busybox","Type":"container",
                "Action":"start","Actor":{"ID":"abc","Attributes":{"name":"egt-x"}},
                "scope":"local","time":1700000000,"timeNano":1700000000123456789}"#,
        )
        .unwrap();
        assert_eq!(
            container_event(message),
            Some(ContainerEvent {
                id: "abc".to_string(),
                scope: EventScope::Container,
                action: "start".to_string(),
                time_nano: 1_700_000_000_123_456_789,
            })
        );
        let without_actor: EventMessage =
            serde_json::from_str(r#"{"Type":"container","Action":"start"}"#).unwrap();
        assert_eq!(container_event(without_actor), None);
        // A network connect is about the container named in its attributes.
        let connect: EventMessage = serde_json::from_str(
            r#"{"Type":"network","Action":"connect","Actor":{"ID":"net1",
                "Attributes":{"container":"abc","name":"n","type":"bridge"}},"timeNano":5}"#,
        )
        .unwrap();
        assert_eq!(
            container_event(connect),
            Some(ContainerEvent {
                id: "abc".to_string(),
                scope: EventScope::Network,
                action: "connect".to_string(),
                time_nano: 5,
            })
        );
        let create: EventMessage = serde_json::from_str(
            r#"{"Type":"network","Action":"create","Actor":{"ID":"net1","Attributes":{}}}"#,
        )
        .unwrap();
        assert_eq!(container_event(create), None);
    }
}
