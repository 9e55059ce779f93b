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
    fn a_listing_alone_does_not_wait() {
        static LIB: Library = Library::new();
        let started = Instant::now();
        drop(LIB.take(Turn::Listing));
        assert!(started.elapsed() < LISTING_MAX_WAIT);
    }
}
