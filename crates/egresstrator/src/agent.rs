//! The agent: follows Docker and keeps every running enabled container enforced.
//!
//! It subscribes to container events first, then enforces every running container, so a
//! container that starts in between is seen at least once (applying twice is harmless). When
//! the event stream breaks it reconnects with backoff and reconciles again from a full list.
//! One container's failure is logged and never stops the loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::consul::Consul;
use crate::docker::{DockerClient, DockerError};
use crate::enforce::{self, Outcome, PolicySettings, Request, Selection};

/// What the agent knows about an enforced container.
#[derive(Clone, Debug)]
pub struct Enforced {
    pub name: String,
    pub hash: String,
    pub applied_at: SystemTime,
    pub fail_closed: bool,
}

/// Shared state: container id → last outcome.
pub type State = Arc<Mutex<HashMap<String, Enforced>>>;

pub struct Agent {
    docker: DockerClient,
    consul: Consul,
    settings: PolicySettings,
    state: State,
}

impl Agent {
    pub fn new(docker: DockerClient, consul: Consul, settings: PolicySettings) -> Self {
        Agent {
            docker,
            consul,
            settings,
            state: State::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        let mut since: Option<i64> = None;
        loop {
            let events = this.docker.events(since);
            tokio::pin!(events);
            // Reconcile after subscribing, so nothing starts unseen in between.
            let mut tasks = JoinSet::new();
            match this.docker.list_running().await {
                Ok(ids) => {
                    tracing::info!(running = ids.len(), "reconciling running containers");
                    for id in ids {
                        let a = this.clone();
                        tasks.spawn(async move { a.handle_start(&id).await });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot list containers");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut shutdown => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            loop {
                tokio::select! {
                    _ = &mut shutdown => {
                        tracing::info!("shutting down; rules stay in force in every namespace");
                        return;
                    }
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            backoff = Duration::from_millis(200);
                            since = Some(ev.time_nano / 1_000_000_000);
                            match ev.action.as_str() {
                                "start" | "restart" => {
                                    let a = this.clone();
                                    tasks.spawn(async move { a.handle_start(&ev.id).await });
                                }
                                "die" | "destroy" => {
                                    this.state.lock().await.remove(&ev.id);
                                }
                                _ => {}
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "docker event stream failed; reconnecting");
                            break;
                        }
                        None => {
                            tracing::warn!("docker event stream ended; reconnecting");
                            break;
                        }
                    }
                }
            }
            if since.is_none() {
                since = Some(now_unix() - 1);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut shutdown => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Enforces one container if it is running and enabled.
    async fn handle_start(&self, id: &str) {
        let info = match enforce::inspect_running(&self.docker, id).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                tracing::debug!(container = enforce::short_id(id), "not running any more");
                return;
            }
            Err(DockerError::NotFound { .. }) => {
                tracing::debug!(container = enforce::short_id(id), "gone before inspect");
                return;
            }
            Err(e) => {
                tracing::error!(container = enforce::short_id(id), error = %e, "cannot inspect container");
                return;
            }
        };
        let acls = match enforce::request(&info, &Selection::Own) {
            Request::NotEnabled => {
                tracing::debug!(container = enforce::short_id(id), name = %info.name, "not enabled");
                return;
            }
            Request::Enforce(acls) => acls,
        };
        let snapshot = enforce::fetch_snapshot(&self.consul, &acls, self.settings.mode).await;
        let plan = enforce::plan(&info, acls, &snapshot, &self.settings).await;
        match enforce::apply(&info, plan).await {
            Ok(outcome) => {
                enforce::log_outcome(&outcome);
                self.record(&outcome).await;
            }
            Err(e) if e.is_gone() => {
                tracing::debug!(
                    container = enforce::short_id(id),
                    "exited while being enforced: {e}"
                );
            }
            Err(e) => tracing::error!(container = enforce::short_id(id), "{e}"),
        }
    }

    async fn record(&self, o: &Outcome) {
        self.state.lock().await.insert(
            o.id.clone(),
            Enforced {
                name: o.name.clone(),
                hash: o.hash.clone(),
                applied_at: o.applied_at,
                fail_closed: o.error.is_some(),
            },
        );
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
