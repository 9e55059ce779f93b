//! Entering a container's network namespace to apply its firewall.
//!
//! Why it exists: a container's egress rules live in the container's own network namespace,
//! and the fastest way to change them is to enter that namespace from a thread of the agent
//! (`setns(CLONE_NEWNET)`) and talk netlink from there. Namespace membership is per thread, so
//! that thread must be one that nothing else will ever run on: every entry here spawns a
//! fresh, dedicated `std::thread` that enters the namespace, does its work and exits, which
//! drops the namespace with it.
//!
//! What it must never do:
//! - call `setns` on a thread it does not own: never on a tokio worker or a `spawn_blocking`
//!   thread (both are reused, so the namespace would leak into unrelated work such as Consul
//!   or Docker requests), never on the caller's thread;
//! - enter the host's network namespace or the agent's own: rules meant for a container would
//!   then filter the host. [`run_in_netns`] refuses both (see [`host_netns_ids`]) and checks
//!   the identity of the file it actually opened, not of a path that could change under it.
//!
//! Child processes spawned from the dedicated thread (see [`run_program`]) inherit its
//! namespace; that is how `iptables-restore` or `conntrack` run inside a container.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::nft::{self, Nft, NftError};

/// Name given to the dedicated threads, so they are recognizable in `ps -T` and debuggers.
const THREAD_NAME: &str = "egt-netns";

/// How long after a commit its fingerprint is taken (see [`load`]).
const FINGERPRINT_DELAY: Duration = Duration::from_millis(100);

/// How long a program run in a namespace (iptables-restore, conntrack, …) may take before
/// it is killed: an apply must never wait forever on a tool that hangs.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(15);

/// Inode number of the initial network namespace on kernels that give the initial namespaces
/// fixed numbers (`PROC_NET_INIT_INO`, 0xEFFFFFF9). Older kernels number every namespace
/// dynamically from 0xF0000000 upwards, so no other namespace can ever carry this number.
const INIT_NET_INO: u64 = 0xEFFF_FFF9;

/// `NSFS_MAGIC`: the filesystem type of namespace files (`/proc/<pid>/ns/*` and bind mounts
/// of them such as Docker's `/var/run/docker/netns/<id>`).
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Identity of a network namespace: (st_dev, st_ino) of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

/// An error while entering or working in a network namespace.
///
/// Every message is complete on its own (it names the namespace file and includes the
/// underlying error), so these errors expose no `source()` chain that would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file does not exist: the process or container has exited. Expected
    /// during container churn; callers log it at debug level.
    #[error("netns {} is gone (its process or container has exited)", path.display())]
    Gone { path: PathBuf },
    /// The file exists but is not a namespace file. For a Docker SandboxKey this is the usual
    /// sign of a removed container: Docker unmounts the namespace at once but deletes the
    /// file only later (up to a minute). See [`NetnsError::is_gone`].
    #[error("{} is not a network namespace file (not, or no longer, mounted)", path.display())]
    NotNetns { path: PathBuf },
    #[error("failed to open netns {}: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error("failed to stat netns {}: {error}", path.display())]
    Stat { path: PathBuf, error: io::Error },
    /// The agent's own namespace could not be identified, so no target can be checked
    /// against it.
    #[error("cannot identify the host's network namespace from {}: {error}", path.display())]
    HostIdentity { path: PathBuf, error: io::Error },
    /// The target is the host's or the agent's own network namespace; nothing was done.
    #[error(
        "refusing to enter netns {}: it is the host's or the agent's own network namespace ({id})",
        path.display()
    )]
    HostNamespace { path: PathBuf, id: NetnsId },
    #[error("failed to enter netns {}: {error}", path.display())]
    Enter { path: PathBuf, error: io::Error },
    /// After `setns` the thread is not in the namespace it opened (should never happen).
    #[error("entered netns {} ({expected}) but the thread is in {actual}", path.display())]
    Verify {
        path: PathBuf,
        expected: NetnsId,
        actual: NetnsId,
    },
    #[error("failed to start a thread for netns {}: {error}", path.display())]
    Thread { path: PathBuf, error: io::Error },
    #[error("the thread working in netns {} panicked", path.display())]
    Panicked { path: PathBuf },
    #[error("failed to apply nft script in netns {}: {error}", path.display())]
    Nft { path: PathBuf, error: NftError },
    /// The fqdn learner could not start or keep running (see `agent::fqdn`).
    #[error("netns {}: {what}", path.display())]
    Learner { path: PathBuf, what: String },
    /// The file now leads to another namespace than the one the plan was made for (its
    /// process exited and the pid was reused, or the container ran again).
    #[error("netns {} is no longer the namespace it was planned for (cookie {expected}, found {actual})", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// The namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14+) could not be read.
    #[error("cannot read the cookie of netns {}: {error}", path.display())]
    Cookie { path: PathBuf, error: io::Error },
    /// The namespace's interfaces could not be listed.
    #[error("cannot list the interfaces of netns {}: {error}", path.display())]
    Devices { path: PathBuf, error: io::Error },
    /// The connection tracking sweep failed.
    #[error("cannot sweep the connection tracking of netns {}: {error}", path.display())]
    Conntrack { path: PathBuf, error: io::Error },
    #[error("failed to run {program} in netns {}: {error}", path.display())]
    Program {
        path: PathBuf,
        program: String,
        error: io::Error,
    },
    /// A program ran in the namespace longer than its bound and was killed.
    #[error("{program} in netns {} ran longer than {secs} s and was killed", path.display())]
    Timeout {
        path: PathBuf,
        program: String,
        secs: u64,
    },
    /// A program ran in the namespace and reported failure.
    #[error("{program} failed in netns {} ({status}): {stderr}", path.display())]
    ProgramFailed {
        path: PathBuf,
        program: String,
        status: String,
        stderr: String,
    },
}

impl NetnsError {
    /// True when the namespace no longer exists at its path ([`NetnsError::Gone`], or
    /// [`NetnsError::NotNetns`] as left behind by a removed Docker sandbox): the container
    /// has gone away, which callers log at debug level rather than as a failure.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            NetnsError::Gone { .. } | NetnsError::NotNetns { .. } | NetnsError::Changed { .. }
        )
    }
}

/// Returns the identity of the network namespace file at `path` (following the
/// `/proc/<pid>/ns/net` magic link). A missing file is [`NetnsError::Gone`].
pub fn netns_id(path: &Path) -> Result<NetnsId, NetnsError> {
    stat_id(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => NetnsError::Gone {
            path: path.to_path_buf(),
        },
        _ => NetnsError::Stat {
            path: path.to_path_buf(),
            error,
        },
    })
}

/// The network namespaces the agent must never enter: the host's and its own.
///
/// - The host's is taken to be that of `/proc/1/ns/net`, pid 1 of the agent's pid namespace.
///   That is the host's init when the agent runs on the host or with `--pid=host`; when the
///   agent runs in a container with its own pid namespace it is that container's init, which
///   shares the agent's namespace.
/// - The agent's own is that of `/proc/self/ns/net` (the process, i.e. its main thread).
/// - The initial network namespace, recognized by its fixed inode number on current kernels,
///   is added too: it covers the case where pid 1 cannot be inspected.
///
/// When `/proc/1/ns/net` cannot be read for lack of permission (hardened or sandboxed hosts),
/// that one identity is skipped with a warning (once per process) rather than failing every
/// apply; the other two still hold.
pub fn host_netns_ids() -> Result<Vec<NetnsId>, NetnsError> {
    let own_path = Path::new("/proc/self/ns/net");
    let own = stat_id(own_path).map_err(|error| NetnsError::HostIdentity {
        path: own_path.to_path_buf(),
        error,
    })?;
    let mut ids = vec![own];

    let init_path = Path::new("/proc/1/ns/net");
    match stat_id(init_path) {
        Ok(id) => ids.push(id),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            static WARN: Once = Once::new();
            WARN.call_once(|| {
                tracing::warn!(
                    "cannot read {}: {error}; the host's network namespace is recognized only \
                     as the agent's own or the initial one",
                    init_path.display()
                );
            });
        }
        Err(error) => {
            return Err(NetnsError::HostIdentity {
                path: init_path.to_path_buf(),
                error,
            })
        }
    }

    // All namespace files live on the one nsfs superblock, so the initial namespace has the
    // same st_dev as the agent's own.
    ids.push(NetnsId {
        dev: own.dev,
        ino: INIT_NET_INO,
    });
    ids.sort_unstable_by_key(|id| (id.dev, id.ino));
    ids.dedup();
    Ok(ids)
}

/// Runs `f` on a fresh OS thread after `setns(CLONE_NEWNET)` into the namespace at `path`.
///
/// `path` may be `/proc/<pid>/ns/net` or a bind-mounted namespace file such as Docker's
/// SandboxKey (`/var/run/docker/netns/<id>`). Refuses ([`NetnsError::HostNamespace`]) when
/// the target is the host's namespace or the agent's own. The thread exits when `f` returns.
///
/// Blocking: in async code use [`run_in_netns_async`], which does not block a worker.
pub fn run_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let thread_path = path.to_path_buf();
    let handle = spawn_dedicated(path, move || enter(&thread_path).and_then(|()| f()))?;
    handle.join().map_err(|_| NetnsError::Panicked {
        path: path.to_path_buf(),
    })?
}

/// Async form of [`run_in_netns`]: the work runs on its own `std::thread` (never on a tokio
/// thread) and the result comes back over a oneshot channel.
pub async fn run_in_netns_async<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    spawn_dedicated(&path, move || {
        // The receiver may be gone (caller timed out or was cancelled): nothing to do then.
        let _ = tx.send(enter(&thread_path).and_then(|()| f()));
    })?;
    // A dropped sender means the thread died before sending: `f` panicked.
    rx.await.map_err(|_| NetnsError::Panicked { path })?
}

/// Starts a long-lived thread inside the namespace at `path` (which must still be the one with
/// cookie `expect`) and runs `f` there until it returns. Entering (and the cookie check) is
/// done before `f` runs; its failure is `f`'s argument, so the thread reports it its own way.
pub fn spawn_in_netns(
    path: &Path,
    expect: Option<u64>,
    name: &str,
    f: impl FnOnce(Result<(), NetnsError>) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, NetnsError> {
    let thread_path = path.to_path_buf();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let entered =
                enter(&thread_path).and_then(|()| expect_cookie(&thread_path, expect).map(drop));
            f(entered)
        })
        .map_err(|error| NetnsError::Thread {
            path: path.to_path_buf(),
            error,
        })
}

/// Applies one nft script atomically in the namespace at `path` and returns the time spent
/// inside it (context creation plus the transaction), for logs and metrics.
///
/// Returns as soon as the transaction is committed; the dedicated thread then frees the
/// libnftables context on its own (that waits for the kernel's cleanup of the commit).
pub async fn apply_nft(path: PathBuf, script: String) -> Result<Duration, NetnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    spawn_dedicated(&path, move || {
        let nft_error = |error| NetnsError::Nft {
            path: thread_path.clone(),
            error,
        };
        let mut context: Option<Nft> = None;
        let result = enter(&thread_path).and_then(|()| {
            let start = Instant::now();
            // Created here, after setns: the context's netlink socket belongs to this namespace.
            let nft = context.insert(Nft::new().map_err(nft_error)?);
            nft.run(&script).map_err(nft_error)?;
            Ok(start.elapsed())
        });
        let _ = tx.send(result);
        drop(context);
    })?;
    rx.await.map_err(|_| NetnsError::Panicked { path })?
}

/// The cookie of the namespace at `path`. Refuses the host's and the agent's own namespace,
/// like every entry here.
///
/// The cookie comes from a socket made inside the namespace, by a thread that enters it,
/// until one such read has been found equal to the namespace file's `NS_GET_ID`
/// ([`cookie_by_id`]); from then on the id is read from the file, without a thread. The
/// thread's round trip was 0.25 ms of every start here, and event→enforced p50 fell by
/// 0.14 ms (BENCHMARKS.md, "Closer to the floor, part 6"). A kernel without `NS_GET_ID`, or
/// whose ids are not cookies, keeps the thread. Every load still reads the cookie inside the
/// namespace and checks it.
pub async fn cookie(path: PathBuf) -> Result<u64, NetnsError> {
    if ID_IS_COOKIE.load(Ordering::Relaxed) == ID_AGREES {
        // An open, two ioctls and a few stats of in-memory files: on the calling task. An
        // ioctl that fails here (it never has) leaves the answer to the thread below.
        match cookie_by_id(&path) {
            Err(NetnsError::Cookie { error, .. }) => {
                tracing::debug!("NS_GET_ID of {}: {error}", path.display())
            }
            done => return done,
        }
    }
    let thread_path = path.clone();
    let cookie = run_in_netns_async(path.clone(), move || current_cookie(&thread_path)).await?;
    if ID_IS_COOKIE.load(Ordering::Relaxed) == ID_UNKNOWN {
        match cookie_by_id(&path) {
            Ok(id) if id == cookie => {
                // Unless another read found otherwise meanwhile.
                let _ = ID_IS_COOKIE.compare_exchange(
                    ID_UNKNOWN,
                    ID_AGREES,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                tracing::debug!("namespace ids are cookies on this kernel: read without a thread");
            }
            Ok(id) => ids_are_not_cookies(&format!(
                "{} has id {id} and cookie {cookie}",
                path.display()
            )),
            Err(NetnsError::Cookie { error, .. }) => {
                ids_are_not_cookies(&format!("no namespace ids ({error})"))
            }
            // The namespace went away meanwhile, say: the next one decides.
            Err(_) => {}
        }
    }
    Ok(cookie)
}

/// Whether a namespace file's `NS_GET_ID` is its namespace's cookie on this kernel: unknown
/// until the first [`cookie`] compares them.
static ID_IS_COOKIE: AtomicU8 = AtomicU8::new(ID_UNKNOWN);
const ID_UNKNOWN: u8 = 0;
const ID_AGREES: u8 = 1;
const ID_DIFFERS: u8 = 2;

/// Whether [`cookie`] has found namespace ids to be cookies on this kernel (and so reads them
/// without entering), found they are not, or not compared them yet.
pub fn ids_are_cookies() -> Option<bool> {
    match ID_IS_COOKIE.load(Ordering::Relaxed) {
        ID_AGREES => Some(true),
        ID_DIFFERS => Some(false),
        _ => None,
    }
}

/// Cookies are read by entering namespaces from now on, and why.
fn ids_are_not_cookies(why: &str) {
    if ID_IS_COOKIE.swap(ID_DIFFERS, Ordering::Relaxed) != ID_DIFFERS {
        tracing::debug!("namespace cookies are read from inside each namespace: {why}");
    }
}

/// The id (`NS_GET_ID`, Linux 6.18+) of the network namespace at `path`, read from its file
/// without entering it, after the same checks as entering: an nsfs file, of a network
/// namespace, neither the host's nor the agent's own. It is the namespace's cookie only where
/// [`cookie`] has found it so; use that.
pub fn cookie_by_id(path: &Path) -> Result<u64, NetnsError> {
    let (file, _) = open_target(path)?;
    let cookie_error = |error| NetnsError::Cookie {
        path: path.to_path_buf(),
        error,
    };
    if crate::cookie::namespace_type(&file).map_err(cookie_error)? != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    crate::cookie::namespace_id(&file).map_err(cookie_error)
}

/// What a [`load`] puts into a namespace besides the policy.
#[derive(Clone, Debug, Default)]
pub struct LoadRequest {
    /// The namespace the plan was made for: after entering, its cookie must be this one, or
    /// nothing is loaded and [`NetnsError::Changed`] is returned.
    pub expect: Option<u64>,
    /// The nft policy script; empty when the policy was loaded another way (iptables).
    pub script: String,
    /// Also load the raw-socket guard over every interface of the namespace, in the same
    /// transaction (see `egresstrator_core::render::guard`).
    pub guard: bool,
    /// nft `list` commands whose output, with the interface names, is the namespace's
    /// fingerprint (see [`fingerprint`]).
    pub listing: Vec<String>,
}

/// What a [`load`] did.
#[derive(Debug)]
pub struct Loaded {
    /// Time spent inside the namespace: context creation plus the transaction.
    pub took: Duration,
    /// Interfaces whose names could not be written into the guard: raw frames can leave
    /// through them.
    pub unguarded: Vec<String>,
    /// The fingerprint of what the load left, taken after the commit was reported (listing a
    /// large set takes a while and must not delay the commit's report). When another
    /// transaction was committed in the namespace between the load and the listing, the
    /// listing may not be what the load left: the fingerprint is then [`UNCONFIRMED`]
    /// followed by the two generations, which no listing ever equals.
    pub fingerprint: tokio::sync::oneshot::Receiver<Result<String, NetnsError>>,
}

/// How an unconfirmed load fingerprint begins (see [`Loaded::fingerprint`]).
pub const UNCONFIRMED: &str = "unconfirmed: nftables generation ";

/// Loads a policy script and the guard into the namespace at `path` as one nft transaction,
/// in-process, after checking that the namespace is the one expected. Returns as soon as the
/// transaction is committed; the fingerprint follows on [`Loaded::fingerprint`].
pub async fn load(path: PathBuf, request: LoadRequest) -> Result<Loaded, NetnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    let LoadRequest {
        expect,
        script,
        guard,
        listing,
    } = request;
    spawn_dedicated(&path, move || {
        let path = thread_path;
        let nft_error = |error| NetnsError::Nft {
            path: path.clone(),
            error,
        };
        let mut context: Option<Nft> = None;
        let result = enter(&path).and_then(|()| {
            let start = Instant::now();
            let cookie = expect_cookie(&path, expect)?;
            let mut script = script;
            let mut unguarded = Vec::new();
            if guard {
                let (guard, bad) = egresstrator_core::render::guard::render(&devices(&path)?);
                script.push_str(&guard);
                unguarded = bad.into_iter().map(|e| e.name).collect();
            }
            // Created here, after setns: the context's netlink socket belongs to this namespace.
            let nft = context.insert(Nft::in_namespace(cookie).map_err(nft_error)?);
            nft.run(&script).map_err(nft_error)?;
            // One request, a few microseconds: what counts is that nothing else commits
            // between this and the fingerprint's listing (a workload that deletes the guard
            // the moment it appears would otherwise become the baseline of every drift
            // check). The socket stays in this namespace wherever it is read later.
            let generation = nft::Generation::open()
                .and_then(|mut g| g.read().map(|n| (g, n)))
                .map_err(|e| tracing::debug!("cannot read the nftables generation: {e}"))
                .ok();
            Ok(Committed {
                took: start.elapsed(),
                at: Instant::now(),
                unguarded,
                cookie,
                generation,
            })
        });
        let _ = tx.send(result);
        // The close waits out the commit's clean-up (`crate::quiet`); then the thread ends.
        // The fingerprint is listed later by another (see `fingerprint_after`): a thread per
        // load kept alive until then meant ~100 threads at once in a KV storm.
        drop(context);
    })?;
    let mut committed = rx
        .await
        .map_err(|_| NetnsError::Panicked { path: path.clone() })??;
    let (fp_tx, fp_rx) = tokio::sync::oneshot::channel();
    let (took, unguarded) = (committed.took, std::mem::take(&mut committed.unguarded));
    tokio::spawn(async move {
        let _ = fp_tx.send(fingerprint_after(path, committed, listing).await);
    });
    Ok(Loaded {
        took,
        unguarded,
        fingerprint: fp_rx,
    })
}

/// What a [`load`]'s thread reports of its commit.
struct Committed {
    took: Duration,
    at: Instant,
    unguarded: Vec<String>,
    cookie: u64,
    /// The namespace's nftables generation right after the commit, and a reader for it.
    generation: Option<(nft::Generation, u32)>,
}

/// Fingerprints at once, a load's ([`fingerprint_after`]) or a drift check's
/// ([`fingerprint`]): listings are serialized by libnftables' lock anyway (`crate::nft`), so
/// more would only be threads waiting. The semaphore is never closed; a failed acquire just
/// runs unqueued.
static FINGERPRINTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The fingerprint of what a load left ([`Loaded::fingerprint`]), listed
/// [`FINGERPRINT_DELAY`] after its commit.
async fn fingerprint_after(
    path: PathBuf,
    committed: Committed,
    listing: Vec<String>,
) -> Result<String, NetnsError> {
    // Listing the ruleset right away competes for the CPU with the commit's own follow-up
    // (the agent recording it, the workload starting): measured on two cores, it added
    // ~0.4 ms to the median start and ~2 ms to p99. A short pause moves it out of the way;
    // the fingerprint is for drift checks, seconds apart.
    tokio::time::sleep_until((committed.at + FINGERPRINT_DELAY).into()).await;
    let _slot = FINGERPRINTS.acquire().await.ok();
    let thread_path = path.clone();
    let Committed {
        cookie,
        mut generation,
        ..
    } = committed;
    run_in_netns_async(path, move || {
        let path = thread_path;
        expect_cookie(&path, Some(cookie))?;
        let mut nft = Nft::for_listing().map_err(|error| NetnsError::Nft {
            path: path.clone(),
            error,
        })?;
        let listed = fingerprint_here(&path, &mut nft, &listing)?;
        Ok(match generation.as_mut() {
            Some((reader, loaded)) => match reader.read() {
                Ok(now) if now == *loaded => listed,
                Ok(now) => format!("{UNCONFIRMED}{loaded} -> {now}"),
                Err(e) => {
                    tracing::debug!("cannot read the nftables generation again: {e}");
                    listed
                }
            },
            None => listed,
        })
    })
    .await
}

/// The fingerprint of the namespace at `path` as it is now: a hash of its interface names and
/// of the output of the `listing` commands (a command that fails, such as listing a table
/// that was deleted, contributes its failure). Equal to the fingerprint a [`load`] reported
/// exactly when nothing it covers has changed since. No process is spawned.
pub async fn fingerprint(
    path: PathBuf,
    expect: Option<u64>,
    listing: Vec<String>,
) -> Result<String, NetnsError> {
    // A drift check of every namespace asks for all of them at once: no more threads than
    // the listings can use.
    let _slot = FINGERPRINTS.acquire().await.ok();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    spawn_dedicated(&path, move || {
        let path = thread_path;
        let mut context: Option<Nft> = None;
        let result = enter(&path)
            .and_then(|()| expect_cookie(&path, expect))
            .and_then(|_| {
                let nft = context.insert(Nft::for_listing().map_err(|error| NetnsError::Nft {
                    path: path.clone(),
                    error,
                })?);
                fingerprint_here(&path, nft, &listing)
            });
        let _ = tx.send(result);
        // After the answer: the close may wait for a recent commit's clean-up (`crate::quiet`).
        drop(context);
    })?;
    rx.await.map_err(|_| NetnsError::Panicked { path })?
}

/// The fingerprint, computed on a thread that is inside the namespace.
fn fingerprint_here(path: &Path, nft: &mut Nft, listing: &[String]) -> Result<String, NetnsError> {
    // Counters (iptables-nft keeps one per rule) change with traffic, not with the rules.
    nft.stateless();
    let mut text = format!("devices {}\n", devices(path)?.join(","));
    for command in listing {
        text.push_str("## ");
        text.push_str(command);
        text.push('\n');
        match nft.list(command) {
            Ok(out) => text.push_str(&egresstrator_core::render::nft::without_learned(&out)),
            Err(e) => {
                text.push_str("missing: ");
                text.push_str(&e.to_string());
            }
        }
        text.push('\n');
    }
    Ok(egresstrator_core::render::hash(&text))
}

/// The cookie of the calling thread's namespace; with `expect`, an error unless it is that
/// one.
fn expect_cookie(path: &Path, expect: Option<u64>) -> Result<u64, NetnsError> {
    let actual = current_cookie(path)?;
    match expect {
        Some(expected) if expected != actual => {
            // The expected cookie may have come from the namespace's id ([`cookie`]): should
            // ids ever stop being cookies, namespaces are found again by entering them, rather
            // than every load failing this check.
            let own = File::open("/proc/thread-self/ns/net")
                .and_then(|f| crate::cookie::namespace_id(&f));
            if own.is_ok_and(|id| id != actual) {
                tracing::warn!(
                    "netns {}: its id is not its cookie {actual}; cookies are read from inside \
                     each namespace from now on",
                    path.display()
                );
                ids_are_not_cookies("an id differed from its cookie at a load");
            }
            Err(NetnsError::Changed {
                path: path.to_path_buf(),
                expected,
                actual,
            })
        }
        _ => Ok(actual),
    }
}

/// Reads the cookie (see `crate::cookie`) of the calling thread's namespace.
fn current_cookie(path: &Path) -> Result<u64, NetnsError> {
    crate::cookie::of_thread().map_err(|error| NetnsError::Cookie {
        path: path.to_path_buf(),
        error,
    })
}

/// The names of the calling thread's namespace's interfaces (`crate::ifnames`: procfs's
/// per-thread view; /sys would show the agent's own), sorted.
fn devices(path: &Path) -> Result<Vec<String>, NetnsError> {
    crate::ifnames::interface_names().map_err(|error| NetnsError::Devices {
        path: path.to_path_buf(),
        error,
    })
}

/// Runs `program` with `args` inside the namespace at `path` (the child inherits it from the
/// dedicated thread), writes `stdin` to it and returns its exit status, stdout and stderr.
/// A non-zero exit is not an error here: the caller reads `Output::status`.
pub async fn run_program(
    path: PathBuf,
    program: &str,
    args: Vec<String>,
    stdin: Vec<u8>,
) -> Result<Output, NetnsError> {
    run_program_in(path, None, program, args, stdin).await
}

/// [`run_program`], in the namespace with cookie `expect` only: when `path` now leads to
/// another namespace, nothing runs and [`NetnsError::Changed`] is returned.
pub async fn run_program_in(
    path: PathBuf,
    expect: Option<u64>,
    program: &str,
    args: Vec<String>,
    stdin: Vec<u8>,
) -> Result<Output, NetnsError> {
    let program = program.to_string();
    let thread_path = path.clone();
    run_in_netns_async(path, move || {
        expect_cookie(&thread_path, expect)?;
        let program_error = |error| program_failed(&thread_path, &program, error);
        let mut child = spawn(
            &thread_path,
            &program,
            &args,
            Stdio::piped(),
            Stdio::piped(),
        )?;
        // Feed stdin from a helper thread while this one collects the output: writing all of
        // it first could deadlock against a child that fills its stdout pipe before it has
        // read all its input. The helper only writes to a pipe; it never opens a socket.
        let writer = match child.stdin.take() {
            Some(mut pipe) => Some(
                std::thread::Builder::new()
                    .name(THREAD_NAME.to_string())
                    .spawn(move || pipe.write_all(&stdin))
                    .map_err(program_error)?,
            ),
            None => None,
        };
        let watchdog = Watchdog::arm(&child, PROGRAM_TIMEOUT);
        let output = child.wait_with_output().map_err(program_error)?;
        if watchdog.fired() {
            return Err(NetnsError::Timeout {
                path: thread_path.clone(),
                program: program.clone(),
                secs: PROGRAM_TIMEOUT.as_secs(),
            });
        }
        if let Some(writer) = writer {
            match writer.join() {
                Ok(Ok(())) => {}
                // The program exited without reading all its input; its status says why.
                Ok(Err(error)) if error.kind() == io::ErrorKind::BrokenPipe => {}
                Ok(Err(error)) => return Err(program_error(error)),
                Err(_) => {
                    return Err(NetnsError::Panicked {
                        path: thread_path.clone(),
                    })
                }
            }
        }
        Ok(output)
    })
    .await
}

/// Starts `program` on the calling (namespace) thread, stdout piped.
fn spawn(
    path: &Path,
    program: &str,
    args: &[String],
    stdin: Stdio,
    stderr: Stdio,
) -> Result<std::process::Child, NetnsError> {
    Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|error| program_failed(path, program, error))
}

fn program_failed(path: &Path, program: &str, error: io::Error) -> NetnsError {
    NetnsError::Program {
        path: path.to_path_buf(),
        program: program.to_owned(),
        error,
    }
}

/// Kills a child that runs past its bound, from a thread of its own. Disarmed when dropped.
struct Watchdog {
    done: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    fn arm(child: &std::process::Child, bound: Duration) -> Watchdog {
        let done = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A pidfd names this very process, even after it has been reaped and its pid handed
        // to another (Linux 5.3+); without one the child gets no bound rather than risking a
        // kill of whoever gets its pid.
        // SAFETY: plain syscall; the child has not been reaped yet, so its pid is its own.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        if raw < 0 {
            return Watchdog { done, fired };
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw as libc::c_int) };
        let (d, f) = (done.clone(), fired.clone());
        let _ = std::thread::Builder::new()
            .name("egt-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*d;
                let guard = lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (guard, timeout) = cv
                    .wait_timeout_while(guard, bound, |finished| !*finished)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if timeout.timed_out() && !*guard {
                    f.store(true, std::sync::atomic::Ordering::SeqCst);
                    // SAFETY: plain syscall on a pidfd we own; it signals exactly the child.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            pidfd.as_raw_fd(),
                            libc::SIGKILL,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        )
                    };
                }
            });
        Watchdog { done, fired }
    }

    fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        cv.notify_all();
    }
}

/// Starts the dedicated thread that will enter the namespace at `path` and run `work`.
fn spawn_dedicated<R: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<std::thread::JoinHandle<R>, NetnsError> {
    std::thread::Builder::new()
        .name(THREAD_NAME.to_string())
        .spawn(work)
        .map_err(|error| NetnsError::Thread {
            path: path.to_path_buf(),
            error,
        })
}

/// Moves the calling (dedicated) thread into the network namespace at `path`.
fn enter(path: &Path) -> Result<(), NetnsError> {
    let (file, target) = open_target(path)?;

    // SAFETY: `file` is an open descriptor for the duration of the call; CLONE_NEWNET makes
    // the kernel reject (EINVAL) any descriptor that is not a network namespace. Only this
    // dedicated thread changes namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter {
            path: path.to_path_buf(),
            error: io::Error::last_os_error(),
        });
    }

    // Defense in depth: check that this thread really is where we meant it to be before
    // anything touches its netfilter state.
    let actual =
        stat_id(Path::new("/proc/thread-self/ns/net")).map_err(|error| NetnsError::Stat {
            path: PathBuf::from("/proc/thread-self/ns/net"),
            error,
        })?;
    if actual != target {
        return Err(NetnsError::Verify {
            path: path.to_path_buf(),
            expected: target,
            actual,
        });
    }
    Ok(())
}

/// Opens the namespace file at `path` and identifies it, refusing anything but an nsfs file
/// and the host's or the agent's own namespace.
fn open_target(path: &Path) -> Result<(File, NetnsId), NetnsError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => NetnsError::Gone {
                path: path.to_path_buf(),
            },
            _ => NetnsError::Open {
                path: path.to_path_buf(),
                error,
            },
        })?;
    if !is_nsfs(&file).map_err(|error| NetnsError::Stat {
        path: path.to_path_buf(),
        error,
    })? {
        return Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    // Identify the file we hold, not the path: the path could be replaced between checks.
    let target = file
        .metadata()
        .map(|m| NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        })
        .map_err(|error| NetnsError::Stat {
            path: path.to_path_buf(),
            error,
        })?;
    if host_netns_ids()?.contains(&target) {
        return Err(NetnsError::HostNamespace {
            path: path.to_path_buf(),
            id: target,
        });
    }
    Ok((file, target))
}

fn stat_id(path: &Path) -> io::Result<NetnsId> {
    let meta = std::fs::metadata(path)?;
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

fn is_nsfs(file: &File) -> io::Result<bool> {
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `stat` is a properly sized out-buffer and the descriptor is open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so it filled the whole struct.
    let stat = unsafe { stat.assume_init() };
    // `f_type`'s C type differs between architectures; the magic fits every one of them.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as u64 == NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program that runs past its bound is killed, and the run says so; one that ends in
    /// time is left alone.
    #[test]
    fn watchdog_kills_a_program_past_its_bound() {
        let mut slow = Command::new("sleep").arg("10").spawn().expect("sleep");
        let started = Instant::now();
        let dog = Watchdog::arm(&slow, Duration::from_millis(200));
        let status = slow.wait().expect("wait");
        assert!(dog.fired(), "the watchdog fired");
        assert!(!status.success(), "killed: {status:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(dog);

        let mut quick = Command::new("true").spawn().expect("true");
        let dog = Watchdog::arm(&quick, Duration::from_secs(5));
        assert!(quick.wait().expect("wait").success());
        assert!(!dog.fired());
    }
}
