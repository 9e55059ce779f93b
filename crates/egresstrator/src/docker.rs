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

/// Seconds bollard waits for a response (for the event stream: for its headers only).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The default daemon address, as bollard uses it when `$DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Container actions that can change what must be enforced.
const LIFECYCLE_ACTIONS: [&str; 4] = ["start", "die", "destroy", "restart"];

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

    /// The value of environment variable `key`; the last occurrence wins, as in a process.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One container lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Full container id.
    pub id: String,
    /// `start`, `die`, `destroy` or `restart`.
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

    /// Container lifecycle events (`start`, `die`, `destroy`, `restart`), from `since` (Unix
    /// seconds) if given, else from now. The stream ends or yields an error when the
    /// connection to Docker breaks; the caller reconnects (with `since`) and reconciles.
    pub fn events(
        &self,
        since: Option<i64>,
    ) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let filters = std::collections::HashMap::from([
            ("type", vec!["container"]),
            ("event", LIFECYCLE_ACTIONS.to_vec()),
        ]);
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

/// Converts an event message; `None` for messages that are not a container action with an id.
fn container_event(message: EventMessage) -> Option<ContainerEvent> {
    let id = message.actor.and_then(|actor| actor.id)?;
    let action = message.action?;
    if id.is_empty() || action.is_empty() {
        return None;
    }
    let time_nano = message
        .time_nano
        .or_else(|| message.time.map(|secs| secs.saturating_mul(1_000_000_000)))
        .unwrap_or(0);
    Some(ContainerEvent {
        id,
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
    })
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
                action: "start".to_string(),
                time_nano: 1_700_000_000_123_456_789,
            })
        );
        let without_actor: EventMessage =
            serde_json::from_str(r#"{"Type":"container","Action":"start"}"#).unwrap();
        assert_eq!(container_event(without_actor), None);
    }
}
