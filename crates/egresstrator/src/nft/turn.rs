//! The process-wide lock around libnftables (see `crate::nft` for why every call is
//! serialized), with commits ahead of listings.
//!
//! Why the order: when a policy changes, every namespace is loaded again, and each load is
//! followed 100 ms later by the listings of its fingerprint (`netns::load`). Measured with
//! `egresstrator-bench --only kv --kv-by-containers 100` (2026-12-02, 100 namespaces): per
//! re-load, the commit held the lock 1.57 ms and two listings 0.31 ms each, and the listings
//! of the first loads queued among the commits of the later ones. A listing is for drift
//! checks, seconds apart; a commit may be taking egress away. So a listing waits while a
//! commit is waiting, for at most [`LISTING_MAX_WAIT`], and a commit never waits for a
//! listing that has not started.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The longest a listing gives way to waiting commits; then it queues like one.
pub const LISTING_MAX_WAIT: Duration = Duration::from_secs(1);

/// What a caller is about to do inside the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// A transaction, or a short call (a context's creation, its release, its flags).
    Commit,
    /// A read-only command (`list …`).
    Listing,
}

struct State {
    held: bool,
    commits_waiting: usize,
}

/// A lock that gives commits the turn before listings.
pub struct Library {
    state: Mutex<State>,
    freed: Condvar,
}

/// The one around libnftables.
pub static LIBNFTABLES: Library = Library::new();

/// The library, held until dropped.
#[must_use = "the library is released when this is dropped"]
pub struct Held<'a>(&'a Library);

impl Library {
    pub const fn new() -> Library {
        Library {
            state: Mutex::new(State {
                held: false,
                commits_waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Two plain fields, each set in one statement: a panic cannot leave them half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the library and holds it.
    pub fn take(&self, turn: Turn) -> Held<'_> {
        let mut s = self.state();
        match turn {
            Turn::Commit => {
                s.commits_waiting += 1;
                while s.held {
                    s = self.freed.wait(s).unwrap_or_else(PoisonError::into_inner);
                }
                s.commits_waiting -= 1;
            }
            Turn::Listing => {
                let started = Instant::now();
                loop {
                    let yielding = s.commits_waiting > 0 && started.elapsed() < LISTING_MAX_WAIT;
                    if !s.held && !yielding {
                        break;
                    }
                    s = match yielding {
                        true => {
                            let left = LISTING_MAX_WAIT.saturating_sub(started.elapsed());
                            self.freed
                                .wait_timeout(s, left)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                        false => self.freed.wait(s).unwrap_or_else(PoisonError::into_inner),
                    };
                }
            }
        }
        s.held = true;
        Held(self)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.state().held = false;
        self.0.freed.notify_all();
    }
}

/// Listing contexts that may exist at once ([`LISTING_CONTEXTS`]).
pub const LISTING_CONTEXTS_AT_ONCE: usize = 2;

/// Bounds the listing contexts alive at once. Why: a context keeps the cache of what it
/// listed until it is freed, and a fingerprint lists twice. Measured with heaptrack over
/// `egresstrator-bench --only kv --kv-by-containers 100` (2026-12-02): a drift check of
/// every namespace (each on its own thread, all at once) left most threads holding their
/// first listing's cache while they waited for the library for the second: 27.9 of the
/// 38.6 MiB of heap at the peak. Listings are serialized by the library anyway, so two
/// contexts at once cost no time.
pub static LISTING_CONTEXTS: Permits = Permits::new(LISTING_CONTEXTS_AT_ONCE);

/// A counting semaphore for plain threads.
pub struct Permits {
    free: Mutex<usize>,
    returned: Condvar,
}

/// One of a [`Permits`]' permits, given back when dropped.
#[must_use = "the permit is given back when this is dropped"]
pub struct Permit<'a>(&'a Permits);

impl Permits {
    pub const fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n),
            returned: Condvar::new(),
        }
    }

    fn free(&self) -> MutexGuard<'_, usize> {
        // A plain count, set in one statement: a panic cannot leave it half-written.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a permit.
    pub fn take(&self) -> Permit<'_> {
        let mut free = self.free();
        while *free == 0 {
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free() += 1;
        self.0.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiting_commit_goes_before_a_listing_that_waited_longer() {
        static LIB: Library = Library::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = LIB.take(Turn::Commit);
        let spawn = |turn: Turn| {
            let order = order.clone();
            std::thread::spawn(move || {
                let _held = LIB.take(turn);
                order.lock().unwrap().push(turn);
            })
        };
        let listing = spawn(Turn::Listing);
        // The listing is queued first: give it time to reach its wait.
        std::thread::sleep(Duration::from_millis(50));
        let commit = spawn(Turn::Commit);
        let deadline = Instant::now() + Duration::from_secs(5);
        while LIB.state().commits_waiting == 0 {
            assert!(Instant::now() < deadline, "the commit never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(first);
        commit.join().unwrap();
        listing.join().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![Turn::Commit, Turn::Listing]);
        assert!(!LIB.state().held, "released");
    }

    #[test]
    fn no_more_permits_are_out_than_there_are() {
        static PERMITS: Permits = Permits::new(2);
        let out = Arc::new(Mutex::new((0usize, 0usize))); // (now, most)
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let out = out.clone();
                std::thread::spawn(move || {
                    let _permit = PERMITS.take();
                    {
                        let mut o = out.lock().unwrap();
                        o.0 += 1;
                        o.1 = o.1.max(o.0);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    out.lock().unwrap().0 -= 1;
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(out.lock().unwrap().1, 2, "two at once, never more");
        assert_eq!(*PERMITS.free(), 2, "all given back");
    }

    #[test]
    fn a_listing_alone_does_not_wait() {
        static LIB: Library = Library::new();
        let started = Instant::now();
        drop(LIB.take(Turn::Listing));
        assert!(started.elapsed() < LISTING_MAX_WAIT);
    }
}
