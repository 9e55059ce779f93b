//! Docker for the benchmark: create, start and remove `egt-bench-*` containers (all labelled
//! with the run id, so cleanup finds every one of them, also after an error), and record the
//! `start` events Docker sends, as an independent check of the agent's event times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StartContainerOptions,
};
use futures_util::stream::{self, StreamExt};

use crate::stats::now_unix_nano;

/// The label every container of a run carries: `egt-bench-run=<run id>`.
pub const RUN_LABEL: &str = "egt-bench-run";

/// Concurrent create/remove requests when many containers are made or removed at once
/// (outside the timed windows).
const SETUP_CONCURRENCY: usize = 8;

/// A `start` event as this process received it.
#[derive(Clone, Copy, Debug)]
pub struct SeenStart {
    /// Docker's `timeNano`.
    pub time_nano: i64,
    /// Wall clock when this process got it.
    pub received_nano: i64,
}

pub type StartEvents = Arc<Mutex<HashMap<String, SeenStart>>>;

#[derive(Clone)]
pub struct Docker {
    inner: bollard::Docker,
    run: String,
    image: String,
}

/// Whether a benchmark container asks the agent to enforce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enable {
    /// `EGRESSTRATOR_ENABLE=1` and `EGRESSTRATOR_ACL=<acl>`.
    Acl,
    /// No opt-in: the agent leaves it alone (the helper baseline's target).
    No,
}

impl Docker {
    pub async fn connect(run: &str, image: &str) -> Result<Docker> {
        let inner = bollard::Docker::connect_with_defaults()
            .context("cannot connect to docker")?
            .negotiate_version()
            .await
            .context("cannot negotiate the docker api version (is dockerd running?)")?;
        Ok(Docker {
            inner,
            run: run.to_string(),
            image: image.to_string(),
        })
    }

    /// `Server.Version` of the daemon.
    pub async fn version(&self) -> Result<String> {
        let v = self
            .inner
            .version()
            .await
            .context("docker version failed")?;
        Ok(v.version.unwrap_or_else(|| "unknown".to_string()))
    }

    /// Fails with a clear message when the benchmark image is missing.
    pub async fn check_image(&self) -> Result<()> {
        self.inner
            .inspect_image(&self.image)
            .await
            .map(|_| ())
            .with_context(|| {
                format!(
                    "image {} is missing (build it with `make image` or scripts/test-image.sh)",
                    self.image
                )
            })
    }

    /// Creates (does not start) `egt-bench-<run>-<suffix>` running `sleep`.
    pub async fn create(&self, suffix: &str, enable: Enable, acl: &str) -> Result<String> {
        let mut env = Vec::new();
        if enable == Enable::Acl {
            env.push("EGRESSTRATOR_ENABLE=1".to_string());
            env.push(format!("EGRESSTRATOR_ACL={acl}"));
        }
        self.create_with(suffix, env, HashMap::new(), None).await
    }

    /// Creates (does not start) `egt-bench-<run>-<suffix>` running `sleep`, with this
    /// environment, these labels besides the run's, and this runtime (dockerd's default when
    /// `None`).
    pub async fn create_with(
        &self,
        suffix: &str,
        env: Vec<String>,
        mut labels: HashMap<String, String>,
        runtime: Option<&str>,
    ) -> Result<String> {
        let name = format!("egt-bench-{}-{suffix}", self.run);
        labels.insert(RUN_LABEL.to_string(), self.run.clone());
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                runtime: runtime.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_named(&name, body).await
    }

    /// Creates (does not start) `egt-bench-<run>-<suffix>` running `cmd`, with this
    /// environment and these resolvers (`--dns`).
    pub async fn create_custom(
        &self,
        suffix: &str,
        env: Vec<String>,
        dns: Vec<String>,
        cmd: Vec<String>,
    ) -> Result<String> {
        let name = format!("egt-bench-{}-{suffix}", self.run);
        let labels = HashMap::from([(RUN_LABEL.to_string(), self.run.clone())]);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                dns: Some(dns),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_named(&name, body).await
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.inner
            .start_container(id, None::<StartContainerOptions>)
            .await
            .with_context(|| format!("cannot start container {}", short(id)))
    }

    /// Force-removes one container (it is killed first).
    pub async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.inner.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => {
                Err(anyhow!(e)).with_context(|| format!("cannot remove container {}", short(id)))
            }
        }
    }

    /// Creates `n` containers named `<prefix>-<i>` with a few requests in flight.
    pub async fn create_many(
        &self,
        prefix: &str,
        range: std::ops::Range<usize>,
        acl: &str,
    ) -> Result<Vec<String>> {
        let results: Vec<Result<String>> = stream::iter(range)
            .map(|i| {
                let suffix = format!("{prefix}-{i}");
                async move { self.create(&suffix, Enable::Acl, acl).await }
            })
            .buffered(SETUP_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Removes these containers with a few requests in flight.
    pub async fn remove_many(&self, ids: &[String]) -> Result<()> {
        let results: Vec<Result<()>> = stream::iter(ids)
            .map(|id| self.remove(id))
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Names of running containers that are not this run's but opt in to egresstrator
    /// (`EGRESSTRATOR_ENABLE=1`): the benchmark's agent would enforce them too, with the
    /// benchmark's kv-path, i.e. fail them closed, and its rules stay after it stops.
    pub async fn foreign_enabled(&self) -> Result<Vec<String>> {
        let list = self
            .inner
            .list_containers(None::<ListContainersOptions>)
            .await
            .context("cannot list running containers")?;
        let mut found = Vec::new();
        for c in list {
            let ours = c
                .labels
                .as_ref()
                .is_some_and(|l| l.get(RUN_LABEL) == Some(&self.run));
            let Some(id) = c.id.filter(|_| !ours) else {
                continue;
            };
            let Ok(info) = self
                .inner
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            else {
                continue; // gone meanwhile
            };
            let enabled = info
                .config
                .and_then(|c| c.env)
                .unwrap_or_default()
                .iter()
                .any(|e| e.trim() == "EGRESSTRATOR_ENABLE=1");
            if enabled {
                let name = info.name.unwrap_or_default();
                found.push(name.trim_start_matches('/').to_string());
            }
        }
        Ok(found)
    }

    /// The running containers of this run, with their labels.
    pub async fn running_run(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        let options = ListContainersOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{RUN_LABEL}={}", self.run)],
            )])),
            ..Default::default()
        };
        let list = self
            .inner
            .list_containers(Some(options))
            .await
            .context("cannot list the run's running containers")?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect())
    }

    /// A running container's process id and `State.StartedAt`; `None` when it does not run
    /// (any more).
    pub async fn pid_started(&self, id: &str) -> Result<Option<(i64, String)>> {
        let info = match self
            .inner
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(anyhow!(e)).context("cannot inspect a container"),
        };
        let state = info.state.unwrap_or_default();
        match (state.running, state.pid, state.started_at) {
            (Some(true), Some(pid), Some(at)) if pid > 0 => Ok(Some((pid, at))),
            _ => Ok(None),
        }
    }

    /// `State.StartedAt` of a container (started at least once), in nanoseconds since the
    /// Unix epoch: when dockerd saw the workload's process start. Docker's own start event
    /// comes after it.
    pub async fn started_at_unix_nano(&self, id: &str) -> Result<i64> {
        let info = self
            .inner
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .with_context(|| format!("cannot inspect container {}", short(id)))?;
        let at = info
            .state
            .and_then(|s| s.started_at)
            .with_context(|| format!("container {} has no State.StartedAt", short(id)))?;
        crate::stats::parse_rfc3339_nano(&at)
            .with_context(|| format!("container {}: unparsable State.StartedAt {at:?}", short(id)))
    }

    /// Creates the bridge network `name` (labelled with the run), `internal`: no route out of
    /// the host. Returns its id.
    pub async fn create_network(&self, name: &str, internal: bool) -> Result<String> {
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(internal),
            labels: Some(HashMap::from([(RUN_LABEL.to_string(), self.run.clone())])),
            ..Default::default()
        };
        let created = self
            .inner
            .create_network(request)
            .await
            .with_context(|| format!("cannot create docker network {name}"))?;
        Ok(created.id)
    }

    /// Removes a network; one that is gone already is fine.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        // Right after its containers were force-removed, dockerd 20.10 refused to remove
        // dfw's network ("has active endpoints") although it listed no container there.
        // Retried for up to 5 s in case the endpoint is released late; in the one case seen
        // (2026-12-02) it stayed until dockerd restarted, and the caller reports it.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.inner.remove_network(name).await {
                Ok(()) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 403,
                    message,
                }) if message.contains("active endpoints") && tries < 25 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| format!("cannot remove network {name}"))
                }
            }
        }
    }

    /// Names of this run's networks (label `egt-bench-run=<run>`).
    pub async fn list_run_networks(&self) -> Result<Vec<String>> {
        let options = bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{RUN_LABEL}={}", self.run)],
            )])),
        };
        let list = self
            .inner
            .list_networks(Some(options))
            .await
            .context("cannot list the benchmark's networks")?;
        Ok(list.into_iter().filter_map(|n| n.name).collect())
    }

    /// Creates (does not start) `egt-bench-<run>-<suffix>` running `sleep` on `network` only,
    /// not enabled for egresstrator.
    pub async fn create_on_network(&self, suffix: &str, network: &str) -> Result<String> {
        let name = format!("egt-bench-{}-{suffix}", self.run);
        let labels = HashMap::from([(RUN_LABEL.to_string(), self.run.clone())]);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            env: Some(Vec::new()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(network.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_named(&name, body).await
    }

    /// Creates a container named `name` from `body`; its id.
    async fn create_named(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let created = self
            .inner
            .create_container(Some(options), body)
            .await
            .with_context(|| format!("cannot create container {name}"))?;
        Ok(created.id)
    }

    /// A running container's IPv4 address on `network` and its `State.StartedAt` (unix ns).
    pub async fn ip_and_started(&self, id: &str, network: &str) -> Result<(String, i64)> {
        let info = self
            .inner
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .with_context(|| format!("cannot inspect container {}", short(id)))?;
        let at = info
            .state
            .and_then(|s| s.started_at)
            .with_context(|| format!("container {} has no State.StartedAt", short(id)))?;
        let started = crate::stats::parse_rfc3339_nano(&at).with_context(|| {
            format!("container {}: unparsable State.StartedAt {at:?}", short(id))
        })?;
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .with_context(|| format!("container {} has no address on {network}", short(id)))?;
        Ok((ip, started))
    }

    /// Every container of this run, running or not.
    pub async fn list_run(&self) -> Result<Vec<String>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{RUN_LABEL}={}", self.run)],
            )])),
            ..Default::default()
        };
        let list = self
            .inner
            .list_containers(Some(options))
            .await
            .context("cannot list the benchmark's containers")?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Removes every container of this run.
    pub async fn remove_run(&self) -> Result<usize> {
        let ids = self.list_run().await?;
        self.remove_many(&ids).await?;
        Ok(ids.len())
    }

    /// Times `reps` inspects of a running container (what the agent does per start event).
    pub async fn time_inspect(&self, id: &str, reps: usize) -> Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            self.inner
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .with_context(|| format!("cannot inspect container {}", short(id)))?;
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(samples)
    }

    /// The init pid of a running container and the gateway of its network (the host side of
    /// its bridge), for the deny measure: the pid names its network namespace
    /// (`/proc/<pid>/ns/net`), the gateway is a destination on its own network.
    pub async fn net_info(&self, id: &str) -> Result<NetInfo> {
        let info = self
            .inner
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .with_context(|| format!("cannot inspect container {}", short(id)))?;
        let pid = info
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("container {} has no running init process", short(id)))?;
        let networks = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        let parse = |s: Option<&String>| s.and_then(|s| s.parse::<std::net::IpAddr>().ok());
        // `bridge` (the benchmark's network mode) first, then any other network.
        let mut endpoints: Vec<(&String, &bollard::models::EndpointSettings)> =
            networks.iter().collect();
        endpoints.sort_by_key(|(name, _)| (name.as_str() != "bridge", name.to_string()));
        let endpoint = endpoints
            .into_iter()
            .map(|(_, e)| e)
            .find(|e| parse(e.gateway.as_ref()).is_some())
            .with_context(|| format!("container {} has no network with a gateway", short(id)))?;
        let gateway = parse(endpoint.gateway.as_ref())
            .with_context(|| format!("container {}: unparsable gateway", short(id)))?;
        Ok(NetInfo {
            pid,
            gateway,
            ip: parse(endpoint.ip_address.as_ref()),
        })
    }

    /// Subscribes to this run's container `start` events and records each one. Returns once
    /// the subscription is confirmed: a probe container is started and its event awaited.
    pub async fn record_starts(&self) -> Result<StartEvents> {
        let seen: StartEvents = Arc::default();
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["start".to_string()]),
            (
                "label".to_string(),
                vec![format!("{RUN_LABEL}={}", self.run)],
            ),
        ]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let mut events = self.inner.events(Some(options));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(item) = events.next().await {
                let received_nano = now_unix_nano();
                let Ok(message) = item else {
                    eprintln!("warning: docker event stream of the benchmark failed");
                    return;
                };
                let Some(id) = message.actor.and_then(|a| a.id) else {
                    continue;
                };
                let time_nano = message
                    .time_nano
                    .or_else(|| message.time.map(|s| s.saturating_mul(1_000_000_000)))
                    .unwrap_or(0);
                if let Ok(mut map) = sink.lock() {
                    map.insert(
                        id,
                        SeenStart {
                            time_nano,
                            received_nano,
                        },
                    );
                }
            }
        });
        // Probe: a container that is not enabled, started and removed at once.
        let probe = self.create("probe", Enable::No, "").await?;
        let result = async {
            self.start(&probe).await?;
            wait_seen(&seen, &probe, Duration::from_secs(10))
                .await
                .context("the benchmark's docker event subscription saw no start event")
        }
        .await;
        self.remove(&probe).await?;
        result?;
        Ok(seen)
    }
}

/// See [`Docker::net_info`].
#[derive(Clone, Copy, Debug)]
pub struct NetInfo {
    pub pid: u32,
    pub gateway: std::net::IpAddr,
    pub ip: Option<std::net::IpAddr>,
}

/// Waits until `id`'s start event has been recorded.
pub async fn wait_seen(seen: &StartEvents, id: &str, timeout: Duration) -> Result<SeenStart> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = seen.lock().ok().and_then(|m| m.get(id).copied()) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "no start event for container {} within {:.1} s",
                short(id),
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
