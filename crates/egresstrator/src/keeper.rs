//! A namespace of the agent's own that keeps the kernel's netfilter hook switches on.
//!
//! Netfilter's hooks sit behind static keys that are global to the kernel. The first hook of
//! a kind registered anywhere on the host turns its key on, and the last one unregistered
//! turns it off. Turning a key either way patches kernel text, with an interrupt to every
//! CPU. The host's own namespace usually holds IPv4 hooks (Docker's NAT), but not always the
//! others that a load registers: the guard's `netdev` egress hook, and IPv6's output and
//! conntrack hooks. So on a host where no other enforced container runs, such as a CI runner
//! with one job container at a time, every start paid for turning them on.
//! - perf over 200 sequential starts: `static_key_slow_inc` was 8.9 % of the load threads'
//!   CPU.
//! - With a namespace holding these hooks, the start path's p50 was ~0.4 ms shorter
//!   (BENCHMARKS.md, "Closer to the floor, part 4").
//!
//! The agent creates that namespace at start on a dedicated thread (`unshare(CLONE_NEWNET)`),
//! loads into it an output chain with a conntrack match (both families) and an egress chain on
//! its `lo`, all accepting, and keeps a descriptor of it open for its lifetime. The namespace
//! holds no process and no interface but its own `lo`, which stays down. It is new, never the
//! host's or any container's, and the kernel frees it with its hooks when the agent exits.
//! It is made on a thread of its own, which the agent's first reconcile does not wait for.
//! Failing to create it costs only the time above, and the agent then says so once.

use std::fs::File;
use std::sync::OnceLock;

use crate::nft::Nft;

/// The keeper namespace's ruleset: the hook kinds a load registers, all accepting.
pub const SCRIPT: &str = "table inet egresstrator-keeper {
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tct state established accept
\t}
}
table netdev egresstrator-keeper {
\tchain egress {
\t\ttype filter hook egress devices = { lo } priority filter; policy accept;
\t}
}
";

/// The keeper namespace, held open; dropping it lets the kernel free the namespace.
#[derive(Debug)]
pub struct Keeper {
    ns: File,
}

impl Keeper {
    /// The namespace file (`/proc/thread-self/ns/net` of the thread that made it).
    pub fn namespace(&self) -> &File {
        &self.ns
    }
}

/// The keeper namespace of this process, once [`hold_in_background`] has made it.
static HELD: OnceLock<Keeper> = OnceLock::new();

/// Makes the keeper namespace on a thread of its own and holds it for the rest of the
/// process. The agent does not wait for it: making it takes ~50 ms (most of it the kernel
/// freeing the commit's context), which its first reconcile need not pay. Failing is a
/// warning: loads only take longer.
pub fn hold_in_background() {
    let spawned = std::thread::Builder::new()
        .name("egt-keeper".into())
        .spawn(|| match make() {
            Ok(ns) => {
                let _ = HELD.set(Keeper { ns });
                tracing::debug!(
                    "netfilter's hook switches kept on by a namespace of the agent's own"
                );
            }
            Err(e) => warn(&e),
        });
    if let Err(e) = spawned {
        warn(&format!("cannot start its thread: {e}"));
    }
}

fn warn(why: &str) {
    tracing::warn!(
        "cannot keep netfilter's hook switches on ({why}); a load into a fresh namespace takes ~0.3 ms longer while no other enforced container runs"
    );
}

/// Creates the keeper namespace and loads [`SCRIPT`] into it, and waits for that.
pub fn hold() -> Result<Keeper, String> {
    let thread = std::thread::Builder::new()
        .name("egt-keeper".into())
        .spawn(make)
        .map_err(|e| format!("cannot start its thread: {e}"))?;
    let ns = thread
        .join()
        .map_err(|_| "its thread panicked".to_owned())??;
    Ok(Keeper { ns })
}

/// Moves the calling thread into a new namespace, loads [`SCRIPT`] and opens the namespace.
/// The thread must end afterwards (it is no longer in the agent's namespace).
fn make() -> Result<File, String> {
    // SAFETY: unshare on this thread only (network namespaces are per task); every caller
    // runs this on a thread that ends right after, and the descriptor opened below keeps
    // the namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot create its namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The context is created after unshare: its netlink socket belongs here.
    let mut nft = Nft::new().map_err(|e| e.to_string())?;
    nft.run(SCRIPT)
        .map_err(|e| format!("cannot load its hooks: {e}"))?;
    File::open("/proc/thread-self/ns/net").map_err(|e| format!("cannot hold it: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// The kept namespace is a new one, not the agent's, and holds both hooks after the
    /// thread that made it is gone.
    #[test]
    fn the_keeper_namespace_is_new_and_holds_the_hooks() {
        let keeper = hold().expect("keeper namespace");
        let own = std::fs::metadata("/proc/self/ns/net").expect("own namespace");
        let kept = keeper.namespace().metadata().expect("kept namespace");
        assert_ne!(
            kept.ino(),
            own.ino(),
            "the keeper must not be the agent's namespace"
        );
        let fd = keeper.namespace().as_raw_fd();
        let listed = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this scoped thread only; it ends right after.
                assert_eq!(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }, 0);
                let mut nft = Nft::new().expect("context");
                nft.list("list ruleset").expect("listing")
            })
            .join()
            .expect("listing thread")
        });
        assert!(
            listed.contains("hook output") && listed.contains("ct state established"),
            "{listed}"
        );
        assert!(listed.contains("hook egress device \"lo\""), "{listed}");
    }
}
