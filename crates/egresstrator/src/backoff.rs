//! Exponential backoff with jitter: the one way the agent waits before trying again (a
//! namespace whose load failed, a container it could not look at, Docker, Consul).
//!
//! Jitter spreads retries: a fleet of agents that lost Consul at the same moment does not come
//! back at the same moment.

use std::time::Duration;

/// Doubles from `min` up to `max` with each failure; `reset` after a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next try (without jitter), doubling the one after it.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// [`Backoff::step`] with jitter: somewhere between half and one and a half of it.
    pub fn next_jittered(&mut self) -> Duration {
        jitter(self.step())
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let seen: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(seen, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j < Duration::from_secs(3),
                "{j:?}"
            );
        }
    }
}
