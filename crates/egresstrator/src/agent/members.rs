//! Containers ↔ namespaces: which enabled containers run, in which namespace, with which
//! ACLs and resolvers; runtime hooks that announce a container before it runs; retries of
//! containers that could not be looked at yet.

use std::path::PathBuf;
use std::time::Instant;

use egresstrator_core::acl::AclName;

use super::{Found, Input, Member, NsKey, PendingRetry, Reconciler, Via, RETRY_MAX, RETRY_MIN};
use crate::backend::Applier;
use crate::backoff::Backoff;
use crate::docker::{ContainerInfo, DockerClient};
use crate::enforce::{self, Request, Selection};
use crate::hook::{self, HookReply};
use crate::netns::{self, NetnsError};
use crate::overrides::Override;

impl Reconciler {
    /// A runtime hook asks for a container that is being created: find out what it is (off
    /// the loop), then enforce it and answer once its ruleset is committed.
    pub(super) fn on_hook(&mut self, p: hook::Pending) {
        let req = p.request.clone();
        if req.fell_back {
            self.board.hook(crate::status::HookOutcome::FellBack);
            // The hook's deny-all may have replaced (nft) or joined (iptables) a ruleset we
            // committed just before: load the namespace again, with a first load's tidying.
            if let Some(ns) = self.members.get(&req.id).map(|m| m.ns.clone()) {
                if let Some(state) = self.namespaces.get_mut(&ns) {
                    state.overwritten = true;
                }
                self.schedule(ns);
            }
            let _ = p.reply.send(HookReply {
                ok: true,
                ..Default::default()
            });
            return;
        }
        let docker = self.docker.clone();
        let root = self.docker_root.clone();
        let local = matches!(self.settings.applier, Applier::Local(_));
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let found = hooked_container(&docker, root.as_deref(), &req, local).await;
            let _ = tx.send(Input::Hooked {
                pending: p,
                found: Box::new(found),
            });
        });
    }

    /// The hook's container, found: answer at once when it is not to be enforced, else track
    /// it and answer when its ruleset is committed.
    pub(super) fn on_hooked(&mut self, p: hook::Pending, found: Result<Found, String>) {
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                let _ = p.reply.send(HookReply {
                    error: Some(e),
                    ..Default::default()
                });
                return;
            }
        };
        let id = found.info.id.clone();
        if self.requested(&found.info).is_none() {
            let _ = p.reply.send(HookReply {
                ok: true,
                ..Default::default()
            });
            return;
        }
        self.track(
            found,
            None,
            Via::Hook {
                fresh: p.request.fresh_netns,
            },
        );
        let Some(ns) = self.members.get(&id).map(|m| m.ns.clone()) else {
            let _ = p.reply.send(HookReply {
                error: Some("the container could not be enforced (see the agent's log)".into()),
                ..Default::default()
            });
            return;
        };
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        if !state.in_flight && state.waiting_since.is_none() && state.applied_hash.is_some() {
            // Already in force (an identical ruleset was committed before).
            let _ = p.reply.send(HookReply {
                ok: true,
                hash: state.applied_hash.clone(),
                ..Default::default()
            });
        } else {
            state.waiters.push(p.reply);
        }
    }

    /// The ACLs a container gets, after overrides; None when it is not to be enforced.
    /// Whether a container is audited: as `set --audit` chose, else as it asks itself.
    pub(super) fn audit_of(&self, info: &ContainerInfo) -> bool {
        let chosen = self.overrides.get().get(&info.id).and_then(Override::audit);
        chosen.unwrap_or_else(|| enforce::audit_requested(info))
    }

    pub(super) fn requested(
        &mut self,
        info: &ContainerInfo,
    ) -> Option<Result<Vec<AclName>, String>> {
        let selection = match self.overrides.get().get(&info.id) {
            Some(Override::Cleared) => return None,
            Some(Override::Rules { rules, .. }) => Selection::Override(rules.clone()),
            Some(Override::Audit { .. }) | None => Selection::Own,
        };
        match enforce::request(info, &selection) {
            Request::NotEnabled => None,
            Request::Enforce(acls) => Some(acls),
        }
    }

    /// Tracks an enabled container (forgets one that is not) and plans its namespace.
    pub(super) fn track(&mut self, found: Found, start_event: Option<i64>, via: Via) {
        let Found {
            info,
            netns,
            resolvers,
            joins_host,
        } = found;
        let id = info.id.clone();
        if let Some(start) = start_event {
            self.board.start_event(&id, start);
        }
        if !matches!(&netns, Some(Err(e)) if !e.is_gone() && !matches!(e, NetnsError::HostNamespace { .. }))
        {
            self.drop_pending(&id);
        }
        let Some(acls) = self.requested(&info) else {
            tracing::debug!(container = enforce::short_id(&id), name = %info.name, "not enabled");
            self.remove_member(&id);
            return;
        };
        let owner = info
            .network_mode
            .strip_prefix("container:")
            .map_or_else(|| id.clone(), str::to_owned);
        let Some((ns, path)) = self.namespace_of(&info, netns, joins_host, &owner, start_event)
        else {
            return;
        };
        // A restarted container has a new namespace: the old one's state goes with it.
        if let Some(old) = self.members.get(&id) {
            // Another run of the container (events missed while Docker was away, e.g. after
            // dockerd was killed).
            let rerun = matches!(
                (&old.info.started_at, &info.started_at),
                (Some(a), Some(b)) if a != b
            );
            if old.ns != ns || rerun {
                self.remove_member(&id);
            }
        }
        // After a start the namespace is new even when its key is not (helper-image mode):
        // whatever was applied before is gone with it. (Locally a new namespace has a new
        // cookie, and a ruleset a runtime hook applied already must not be applied twice.)
        if start_event.is_some() && matches!(ns, NsKey::Owner(_)) {
            if let Some(state) = self.namespaces.get_mut(&ns) {
                state.applied_hash = None;
            }
        }
        let bypass = info.bypass_capability();
        if let Some(why) = &bypass {
            if self.members.get(&id).and_then(|m| m.bypass.as_ref()) != Some(why) {
                tracing::warn!(
                    container = enforce::short_id(&id),
                    name = %info.name,
                    "bypassable: {why}; egresstrator enforces its rules but cannot confine it"
                );
            }
        }
        let start_event = start_event.or_else(|| self.members.get(&id).and_then(|m| m.start_event));
        // Whether this run was first tracked from Docker's record; kept while it runs.
        let from_record =
            via == Via::Record || self.members.get(&id).is_some_and(|m| m.from_record);
        let audit = self.audit_of(&info);
        self.members.insert(
            id,
            Member {
                info,
                ns: ns.clone(),
                path,
                owner,
                acls,
                resolvers,
                bypass,
                start_event,
                audit,
                from_record,
            },
        );
        let state = self.namespaces.entry(ns.clone()).or_default();
        if let Via::Hook { fresh } = via {
            // A container is waiting to start: its load goes before queued ones.
            state.priority = true;
            if fresh && state.applied_hash.is_none() {
                state.fresh = true;
            }
        }
        self.update_needed_services();
        self.schedule(ns);
    }

    /// Stops retrying a pending container (it was looked at, or it is gone), and takes its
    /// `pending` entry out of `/status`.
    pub(super) fn drop_pending(&mut self, id: &str) {
        if self.pending.remove(id).is_some() {
            self.board.forget(id);
        }
    }

    /// A container could not be looked at (Docker answered with an error other than "no
    /// such container", or its namespace could not be opened): it is inspected again with
    /// backoff, and `/status` shows it as pending with the reason. If it is already enforced,
    /// its rules stay as they are meanwhile.
    pub(super) fn retry_later(&mut self, id: String, start_event: Option<i64>, error: String) {
        let entry = self.pending.entry(id.clone()).or_insert(PendingRetry {
            start_event,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            retry_at: Instant::now(),
        });
        entry.retry_at = Instant::now() + entry.backoff.next_jittered();
        tracing::warn!(
            container = enforce::short_id(&id),
            retry_in_ms = (entry.retry_at - Instant::now()).as_millis() as u64,
            "cannot look at the container yet: {error}"
        );
        self.board.pending(&id, &error);
    }

    /// The key and file of an enabled container's namespace, or None (logged, and the
    /// container forgotten or retried) when it has none the agent may enforce: gone, the
    /// host's, or not openable for now.
    pub(super) fn namespace_of(
        &mut self,
        info: &ContainerInfo,
        netns: Option<Result<(PathBuf, u64), NetnsError>>,
        joins_host: bool,
        owner: &str,
        start_event: Option<i64>,
    ) -> Option<(NsKey, Option<PathBuf>)> {
        let id = info.id.clone();
        match netns {
            Some(Ok((path, cookie))) => Some((NsKey::Netns(cookie), Some(path))),
            Some(Err(e)) => {
                if e.is_gone() {
                    tracing::debug!(
                        container = enforce::short_id(&id),
                        "exited before it could be enforced"
                    );
                } else if let NetnsError::HostNamespace { .. } = e {
                    tracing::error!(
                        container = enforce::short_id(&id),
                        name = %info.name,
                        network_mode = %info.network_mode,
                        "refusing to enforce: the container shares the host's network namespace, and egresstrator never changes the host's firewall"
                    );
                } else {
                    // Neither gone nor the host's: a transient failure (fds, permissions). The
                    // container is looked at again with backoff, and shown as pending.
                    let start_event =
                        start_event.or_else(|| self.members.get(&id).and_then(|m| m.start_event));
                    self.retry_later(id, start_event, e.to_string());
                    return None;
                }
                self.remove_member(&id);
                None
            }
            None => {
                if joins_host {
                    tracing::error!(
                        container = enforce::short_id(&id),
                        name = %info.name,
                        network_mode = %info.network_mode,
                        "refusing to enforce: the container uses the host's network (--network host, or joins a container that does), and egresstrator never changes the host's firewall"
                    );
                    self.remove_member(&id);
                    return None;
                }
                Some((NsKey::Owner(owner.to_owned()), info.netns_path()))
            }
        }
    }

    /// Forgets a namespace that is gone (or whose file now leads elsewhere) and every member
    /// recorded in it, and looks at each of those members again: one that still runs (in
    /// this namespace, entered through another member's file, or in a new one) is tracked
    /// anew from what Docker says now.
    pub(super) fn forget_namespace(&mut self, ns: &NsKey) {
        let ids: Vec<(String, Option<i64>)> = self
            .members
            .iter()
            .filter(|(_, m)| &m.ns == ns)
            .map(|(id, m)| (id.clone(), m.start_event))
            .collect();
        for (id, start_event) in &ids {
            self.members.remove(id);
            self.board.forget(id);
            self.inspect(id.clone(), *start_event);
        }
        if let Some(state) = self.namespaces.remove(ns) {
            for w in state.waiters {
                let _ = w.send(HookReply {
                    error: Some("the container's network namespace went away".into()),
                    ..Default::default()
                });
            }
        }
        self.update_needed_services();
    }

    pub(super) fn remove_member(&mut self, id: &str) {
        let Some(m) = self.members.remove(id) else {
            return;
        };
        self.board.forget(id);
        if self.members.values().any(|o| o.ns == m.ns) {
            // Others still live in that namespace: their union changed.
            self.schedule(m.ns.clone());
        } else {
            self.namespaces.remove(&m.ns);
        }
        self.update_needed_services();
    }
}

/// What the agent needs to know about a running container besides its inspect answer: its
/// namespace's identity (local applies) and its resolvers.
pub(super) async fn found(docker: &DockerClient, mut info: ContainerInfo, local: bool) -> Found {
    let netns = if local {
        // What the container's processes can do at most, as the kernel sees it.
        info.bounding = info.pid.and_then(crate::docker::bounding_set);
        Some(match namespace_path(&info) {
            Some(path) => match netns::cookie(path.clone()).await {
                Ok(c) => Ok((path, c)),
                // The sandbox key is there but holds no namespace, while Docker says the
                // container runs: dockerd's mount of it did not reach the agent's mount
                // namespace. Taking that for "exited" left a running container unenforced.
                Err(NetnsError::NotNetns { .. }) if info.running && info.pid.is_some() => {
                    unpropagated(&path);
                    let proc = info.netns_path().unwrap_or_default();
                    netns::cookie(proc.clone()).await.map(|c| (proc, c))
                }
                Err(e) => Err(e),
            },
            None => Err(NetnsError::Gone {
                path: PathBuf::from(format!("(container {} has no namespace)", info.id)),
            }),
        })
    } else {
        None
    };
    with_facts(docker, info, netns).await
}

/// A container with its namespace and the facts looked up for it: its resolvers and, in
/// helper-image mode (no namespace identity), whether its network mode puts it in the
/// host's namespace.
pub(super) async fn with_facts(
    docker: &DockerClient,
    info: ContainerInfo,
    netns: Option<Result<(PathBuf, u64), NetnsError>>,
) -> Found {
    let resolvers = enforce::resolvers(docker, &info).await;
    let joins_host = netns.is_none() && enforce::host_network(docker, &info).await;
    Found {
        info,
        netns,
        resolvers,
        joins_host,
    }
}

/// Says once that dockerd's namespace mounts do not reach the agent, and what that means.
fn unpropagated(path: &std::path::Path) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "{} holds no network namespace here, though its container runs: dockerd's mounts \
             under /var/run/docker/netns do not reach the agent's mount namespace (a bind \
             mount without rslave propagation, or a unit with private mounts on a host whose / \
             is not shared); containers are entered through /proc/<pid>/ns/net instead",
            path.display()
        );
    }
}

/// The file to enter a running container's namespace with. Docker's sandbox key names one
/// sandbox and is never reused, so it is preferred over `/proc/<pid>/ns/net`, whose pid can
/// be reused once the container exits; containers that join another's namespace have no
/// sandbox key of their own.
pub(super) fn namespace_path(info: &ContainerInfo) -> Option<PathBuf> {
    match &info.sandbox_key {
        Some(key) if key.exists() => Some(key.clone()),
        _ => info.netns_path(),
    }
}

/// The container a runtime hook asks about, from Docker's own record of it (inspect would
/// wait for the very start the hook is part of: see [`crate::docker::read_record`]), with
/// the hook's pid. When that record cannot be read (the agent runs where Docker's root
/// directory is not visible), labels and network mode come from Docker's container list,
/// which answers during a start, and the environment from the OCI bundle.
pub(super) async fn hooked_container(
    docker: &DockerClient,
    root: Option<&std::path::Path>,
    req: &hook::HookRequest,
    local: bool,
) -> Result<Found, String> {
    let record = match root {
        Some(root) => crate::docker::read_record(root, &req.id).map_err(|e| e.to_string()),
        None => Err("docker's root directory is not known".to_owned()),
    };
    let mut info = match record {
        Ok(info) => info,
        Err(why) => {
            tracing::debug!("{why}; using docker's container list and the bundle instead");
            let mut info = docker
                .list_one(&req.id)
                .await
                .map_err(|e| format!("cannot look up container {}: {e}", req.id))?;
            info.env = req
                .env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.clone(), String::new()),
                })
                .collect();
            info
        }
    };
    if info.name.is_empty() {
        info.name = enforce::short_id(&req.id).to_owned();
    }
    info.running = true;
    info.pid = Some(req.pid);
    // The init's own set is not final yet (runc drops capabilities just before the workload
    // starts); the bundle's is what the workload will get.
    info.bounding = req.bounding.as_ref().map(|names| {
        names
            .iter()
            .filter_map(|n| crate::docker::capability_number(n))
            .fold(0u64, |mask, cap| mask | (1 << cap))
    });
    // The init is paused until the hook returns, so its pid cannot be reused meanwhile.
    let path = PathBuf::from(format!("/proc/{}/ns/net", req.pid));
    let netns = if local {
        Some(netns::cookie(path.clone()).await.map(|c| (path, c)))
    } else {
        None
    };
    Ok(with_facts(docker, info, netns).await)
}
