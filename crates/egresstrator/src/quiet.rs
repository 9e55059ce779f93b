//! When a netfilter netlink socket may be closed without stalling its namespace.
//!
//! Measured on kernel 6.18 (`/tmp`-scratch programs, recorded in BENCHMARKS.md, "Closer to
//! the floor"): closing a `NETLINK_NETFILTER` socket that has talked to the kernel, while
//! nf_tables still has clean-up pending in that namespace (the deferred destroy work of a
//! commit that replaced something: an RCU grace period, 8–24 ms here), makes the close wait
//! for that clean-up, and the namespace's next commit waits behind the close. Back to back,
//! a re-apply into a live namespace took 15 ms instead of 1.3 ms; a close in another
//! namespace does not delay it. The clean-up finishes on its own within a grace period, and a
//! socket closed after that closes at once.
//!
//! So the agent notes each of its commits with the namespace's cookie ([`note_commit`]), and
//! the threads that close such sockets (libnftables contexts, the conntrack sweep's socket)
//! first wait until [`QUIET`] has passed since the last commit noted there ([`wait`]). They
//! have already reported their result: only the thread lingers, never a caller.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after a commit its clean-up is taken to be done: twice the longest grace period
/// measured here.
pub const QUIET: Duration = Duration::from_millis(50);

/// The longest one close waits, however busy the namespace: past it the close happens and
/// costs at most one grace period of that namespace's next commit.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Namespaces with a commit within the last [`QUIET`] (older entries are dropped on the next
/// note, so the map holds only namespaces committed to in the last 50 ms).
static LAST_COMMIT: Mutex<BTreeMap<u64, Instant>> = Mutex::new(BTreeMap::new());

fn last_commits() -> std::sync::MutexGuard<'static, BTreeMap<u64, Instant>> {
    // Plain timestamps: a panic while holding the lock cannot leave them inconsistent.
    LAST_COMMIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records that a transaction was just committed in the namespace with this cookie.
pub fn note_commit(cookie: u64) {
    let now = Instant::now();
    let mut map = last_commits();
    map.retain(|_, at| now.duration_since(*at) < QUIET);
    map.insert(cookie, now);
}

/// How long a close in the namespace with this cookie should still wait, now.
pub fn remaining(cookie: u64) -> Duration {
    last_commits()
        .get(&cookie)
        .map(|at| QUIET.saturating_sub(at.elapsed()))
        .unwrap_or_default()
}

/// Blocks the calling thread until [`QUIET`] has passed since the last commit noted in the
/// namespace with this cookie (a commit noted meanwhile extends the wait), for at most
/// [`MAX_WAIT`] in all.
pub fn wait(cookie: u64) {
    let started = Instant::now();
    loop {
        let left = remaining(cookie).min(MAX_WAIT.saturating_sub(started.elapsed()));
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_waits_out_the_quiet_period_after_a_commit_and_only_in_its_namespace() {
        // Cookies no real namespace has (they count up from 1 while the system runs).
        let (busy, other) = (u64::MAX - 1, u64::MAX - 2);
        assert_eq!(remaining(busy), Duration::ZERO, "nothing noted yet");
        note_commit(busy);
        let left = remaining(busy);
        assert!(left > Duration::ZERO && left <= QUIET, "{left:?}");
        assert_eq!(remaining(other), Duration::ZERO);
        let started = Instant::now();
        wait(busy);
        assert!(started.elapsed() + Duration::from_millis(1) >= left);
        assert_eq!(remaining(busy), Duration::ZERO);
        // An old entry goes with the next note.
        note_commit(other);
        assert!(!last_commits().contains_key(&busy));
    }
}
