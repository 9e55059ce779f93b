//! systemd's notify protocol, for `Type=notify` units: `READY=1` once the first reconcile has
//! enforced the containers that were running (no inspect and no load outstanding), and
//! `WATCHDOG=1` only while `/healthz` would answer 200, so a stuck or blind agent is
//! restarted by systemd. Without `$NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

#[derive(Debug)]
pub(super) struct Notifier {
    /// The first reconcile listed the running containers.
    reconciled: bool,
    ready_sent: bool,
    /// `WatchdogSec`, when the unit sets one.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    pub(super) fn new() -> Notifier {
        Notifier {
            reconciled: false,
            ready_sent: false,
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: None,
        }
    }

    /// The first full listing of running containers is done.
    pub(super) fn reconciled(&mut self) {
        self.reconciled = true;
    }

    /// Called on every tick: `settled` when no inspect or load is outstanding, `healthy`
    /// when `/healthz` would answer 200.
    pub(super) fn tick(&mut self, settled: bool, healthy: bool, now: Instant) {
        if !self.ready_sent && self.reconciled && settled {
            self.ready_sent = true;
            if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
                tracing::warn!("cannot tell systemd the agent is ready: {e}");
            }
        }
        let Some(period) = self.watchdog else {
            return;
        };
        // Pinged at half the period, as systemd.service(5) advises; never while unhealthy.
        let due = self
            .last_ping
            .is_none_or(|t| now.duration_since(t) >= period / 2);
        if self.ready_sent && healthy && due {
            self.last_ping = Some(now);
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    }
}
