//! Container starts seen in Docker's records, ahead of dockerd's events.
//!
//! dockerd writes a container's record (`containers/<id>/config.v2.json`, see `record`) when
//! the container has started, and only then logs the `start` event, which it hands to each
//! subscriber in its own time. Measured here (BENCHMARKS.md, part 7): the record showed the
//! container running 0.47 ms (p50) before the event's timestamp; in a burst of 100 starts,
//! dockerd handed the agent one start event 106 ms late while the agent sat idle. Watching
//! the records with inotify takes that delivery off the start path: sequential starts were
//! enforced 1.0 ms sooner.
//!
//! What it reports is only a hint: the id of a container whose record was rewritten. The
//! caller reads the record, which says whether the container runs, and the event stream stays
//! the source that misses nothing (reconnects, reconciles). When the watch cannot be set up
//! (no local Docker root, no inotify instance or watch left), or the kernel's queue
//! overflows, starts are seen from the events alone, as before.
//!
//! Bounds: one inotify watch per container directory, at most [`MAX_WATCHES`]; at most
//! [`QUEUE`] ids waiting for the agent (more are dropped: the event follows).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::sync::mpsc;

use super::is_container_id;

/// The record file whose rename (dockerd writes it aside, then renames it) is reported.
const RECORD: &str = "config.v2.json";

/// Container directories watched at most. Each watch costs the kernel about 1 KiB.
pub const MAX_WATCHES: usize = 16_384;

/// Ids that may wait for the agent's loop.
pub const QUEUE: usize = 1024;

/// Starts the watch of `<root>/containers` on a thread of its own. Returns the ids of
/// containers whose record was rewritten, or an error when the watch cannot be set up.
pub fn spawn(root: &Path) -> io::Result<mpsc::Receiver<String>> {
    let dir = root.join("containers");
    let inotify = Inotify::init()?;
    let top = inotify
        .watches()
        .add(&dir, WatchMask::CREATE | WatchMask::ONLYDIR)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut watch = Watch {
        inotify,
        dir,
        top,
        ids: HashMap::new(),
        full: false,
    };
    // After the directory's own watch: a container created meanwhile is seen by one or both.
    let existing = std::fs::read_dir(&watch.dir)?;
    for entry in existing.flatten() {
        watch.add(&entry.file_name());
    }
    std::thread::Builder::new()
        .name("egt-records".into())
        .spawn(move || match watch.run(&tx) {
            Ok(()) => tracing::debug!("docker record watch ended: the agent stopped listening"),
            Err(e) => tracing::warn!(
                "docker record watch failed: {e}; starts are seen from Docker's events only"
            ),
        })?;
    Ok(rx)
}

struct Watch {
    inotify: Inotify,
    dir: PathBuf,
    top: WatchDescriptor,
    /// Each container directory's watch, and the container's id.
    ids: HashMap<WatchDescriptor, String>,
    /// [`MAX_WATCHES`] was reached (said once).
    full: bool,
}

impl Watch {
    /// Watches the directory `name` of `<root>/containers` if it names a container.
    fn add(&mut self, name: &OsStr) {
        let Some(id) = name.to_str().filter(|n| is_container_id(n)) else {
            return;
        };
        if self.ids.len() >= MAX_WATCHES {
            if !self.full {
                self.full = true;
                tracing::warn!(
                    "docker record watch: {MAX_WATCHES} containers watched; the starts of others are seen from Docker's events"
                );
            }
            return;
        }
        match self
            .inotify
            .watches()
            .add(self.dir.join(id), WatchMask::MOVED_TO | WatchMask::ONLYDIR)
        {
            Ok(wd) => {
                self.ids.insert(wd, id.to_owned());
            }
            // Removed meanwhile, or the user's watch limit: its events still come.
            Err(e) => tracing::debug!(container = &id[..12], "cannot watch its record: {e}"),
        }
    }

    /// Reports rewritten records until the receiver is gone.
    fn run(&mut self, tx: &mpsc::Sender<String>) -> io::Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let mut created = Vec::new();
            for event in self.inotify.read_events_blocking(&mut buffer)? {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::debug!("docker record watch: the kernel's queue overflowed");
                } else if event.mask.contains(EventMask::IGNORED) {
                    self.ids.remove(&event.wd);
                } else if event.wd == self.top {
                    if let Some(name) = event.name {
                        created.push(name.to_owned());
                    }
                } else if event.name == Some(OsStr::new(RECORD)) {
                    if let Some(id) = self.ids.get(&event.wd) {
                        match tx.try_send(id.clone()) {
                            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                        }
                    }
                }
            }
            for name in created {
                self.add(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_docker_ids_name_watched_directories() {
        assert!(is_container_id(&"a1".repeat(32)));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65), "../../etc"] {
            assert!(!is_container_id(bad), "{bad:?}");
        }
    }
}
