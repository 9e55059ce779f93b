//! One agent per state dir and per Docker daemon.
//!
//! Two agents enforcing on one Docker daemon take each other's rulesets for drift: at every
//! drift check (`--verify-interval`) each loads its own again, for ever, so every container's
//! ruleset flips between the two agents' policies (measured: with two kv-paths, one container
//! changed policy every 3 and 7 s, 10 s apart). The second agent's hook socket also replaces
//! the first one's. Two agents sharing a state dir overwrite each other's policy snapshot and
//! kept loads. So `run` takes two locks before it starts, and a second
//! agent refuses to start, naming the first one's pid:
//!
//! - `<state dir>/agent.lock`;
//! - `<run dir>/docker-<endpoint>.lock`, where the endpoint is the Docker address the agent
//!   uses (`--docker-host`, else `$DOCKER_HOST`, else Docker's default socket), a socket's
//!   path resolved through symlinks (`/var/run` is `/run` on Debian).
//!
//! The locks are `flock`s: the kernel drops them when the agent exits, however it exits, so
//! a crashed agent never leaves one behind. Both directories are root-only, so no other
//! local user can take a lock first and keep the agent from starting. Two addresses of one
//! daemon (a socket and a TCP port) are not recognized as one; nor is an agent in a container
//! that does not share the host's `/run/egresstrator`, unless it shares the state dir (the
//! README's `docker run` of the agent image mounts the default one).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the Docker-daemon locks live (the default hook socket's directory).
pub const RUN_DIR: &str = "/run/egresstrator";
/// The state-dir lock's file name.
pub const STATE_LOCK: &str = "agent.lock";
/// Docker's default address, as the client library uses it.
const DOCKER_DEFAULT: &str = "unix:///var/run/docker.sock";
/// A lock file's name is bounded (a file name is at most 255 bytes).
const MAX_NAME: usize = 200;

/// Why the agent cannot start: another agent holds a lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another egresstrator agent{} already {what} (lock {}); stop it first, or give this one its own --state-dir and --docker-host",
    holder_text(*holder),
    path.display()
)]
pub struct Held {
    pub what: String,
    pub path: PathBuf,
    pub holder: Option<u32>,
}

fn holder_text(holder: Option<u32>) -> String {
    holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// The locks held by this agent; dropped when it exits.
#[derive(Debug)]
pub struct InstanceLock {
    _files: Vec<File>,
    /// Locks that could not be taken for another reason than a holder (a read-only or full
    /// state dir, say). The agent starts anyway, since the locks only guard against a second
    /// agent and not against the workloads, and says so in its log.
    pub warnings: Vec<String>,
}

/// Takes the state-dir lock, then the Docker-daemon lock (in `run_dir`). Fails only when
/// another process holds one of them.
pub fn acquire(
    state_dir: &Path,
    run_dir: &Path,
    docker_host: Option<&str>,
) -> Result<InstanceLock, Held> {
    let endpoint = docker_endpoint(docker_host);
    let wanted = [
        (
            state_dir,
            STATE_LOCK.to_owned(),
            format!("uses the state dir {}", state_dir.display()),
        ),
        (
            run_dir,
            lock_name(&endpoint),
            format!("enforces on the Docker daemon at {endpoint}"),
        ),
    ];
    let mut lock = InstanceLock {
        _files: Vec::new(),
        warnings: Vec::new(),
    };
    for (dir, name, what) in wanted {
        match try_lock(dir, &name, &what)? {
            Ok(file) => lock._files.push(file),
            Err(e) => lock.warnings.push(format!(
                "cannot take the lock {}, so a second agent that {what} would not be refused: {e}",
                dir.join(&name).display()
            )),
        }
    }
    Ok(lock)
}

/// The Docker address the agent uses, a unix socket's path resolved through symlinks.
pub fn docker_endpoint(docker_host: Option<&str>) -> String {
    let host = docker_host
        .map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DOCKER_DEFAULT.to_owned());
    let path = host.strip_prefix("unix://").unwrap_or(&host);
    if path.starts_with('/') {
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        return format!("unix://{}", resolved.display());
    }
    host
}

/// `docker-<endpoint>.lock`, every byte outside `[A-Za-z0-9.-]` written as `_`.
pub fn lock_name(endpoint: &str) -> String {
    let safe: String = endpoint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    format!("docker-{safe}.lock")
}

/// Takes `dir/name` without waiting and writes this process's pid into it. The outer error
/// is a holder; the inner one is any other failure.
///
/// The lock is held on a descriptor opened read-only: a filesystem with a file open for
/// writing cannot be remounted read-only (`EBUSY`), and an operator (or the soak's fault
/// schedule) may do that to the state dir under a running agent. The pid is written through a
/// second descriptor, closed at once, once the lock is ours.
fn try_lock(dir: &Path, name: &str, what: &str) -> Result<std::io::Result<File>, Held> {
    let path = dir.join(name);
    let opened = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| {
            // std's `create` wants write access; O_CREAT itself does not.
            File::options()
                .read(true)
                .custom_flags(libc::O_CREAT)
                .mode(0o600)
                .open(&path)
        });
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    // SAFETY: flock on a file descriptor we own; the lock goes with the open file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Ok(Err(e));
        }
        let mut text = String::new();
        let holder = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| text.trim().parse().ok());
        return Err(Held {
            what: what.to_owned(),
            path,
            holder,
        });
    }
    // The pid only names the holder in a refusal; the lock holds without it (a full disk).
    let _ = File::options()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut w| writeln!(w, "{}", std::process::id()));
    Ok(Ok(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("egt-instance-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_agent_is_refused_while_the_first_holds_either_lock() {
        let base = scratch("held");
        let (state_a, state_b, run) = (base.join("a"), base.join("b"), base.join("run"));
        let host = Some("unix:///nonexistent/docker.sock");
        let first = acquire(&state_a, &run, host).expect("the first agent starts");
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(state_a.join(STATE_LOCK)).expect("pid written"),
            format!("{pid}\n")
        );

        // Same daemon, its own state dir: refused by the daemon lock, naming the holder.
        let e = acquire(&state_b, &run, host).expect_err("same daemon");
        let text = e.to_string();
        assert!(
            text.contains(&format!("(pid {pid})"))
                && text.contains("Docker daemon at unix:///nonexistent/docker.sock"),
            "{text}"
        );
        // Same state dir, another daemon: refused by the state-dir lock.
        let e = acquire(&state_a, &run, Some("tcp://127.0.0.1:2375")).expect_err("same state");
        assert!(e.to_string().contains("uses the state dir"), "{e}");
        // Control: its own state dir and another daemon start.
        let other = acquire(&state_b, &run, Some("tcp://127.0.0.1:2375")).expect("independent");
        drop(other);

        // Once the first is gone, its locks are free. (Another test's fork may hold a copy of
        // the descriptor until it execs, which closes it: hence a few tries.)
        drop(first);
        let again = (0..100)
            .find_map(|_| {
                acquire(&state_b, &run, host)
                    .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(20)))
                    .ok()
            })
            .expect("after the first agent ended");
        drop(again);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A state dir may be remounted read-only under a running agent, which the kernel
    /// refuses (`EBUSY`) while any file on it is open for writing.
    #[test]
    fn the_locks_keep_no_file_open_for_writing() {
        let base = scratch("ro");
        let lock = acquire(
            &base.join("a"),
            &base.join("run"),
            Some("tcp://127.0.0.1:2375"),
        )
        .expect("acquire");
        let mut seen = 0;
        for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
            let entry = entry.expect("fd entry");
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if !target.starts_with(&base) {
                continue;
            }
            seen += 1;
            let fd = entry.file_name();
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.to_string_lossy()))
                    .expect("fdinfo");
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
                .expect("flags in fdinfo");
            assert_eq!(
                flags & libc::O_ACCMODE,
                libc::O_RDONLY,
                "{} is open for writing",
                target.display()
            );
        }
        assert_eq!(seen, 2, "both locks are held on open descriptors");
        // The pid went in all the same.
        assert_eq!(
            std::fs::read_to_string(base.join("a").join(STATE_LOCK)).expect("pid"),
            format!("{}\n", std::process::id())
        );
        drop(lock);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_refused_agent_leaves_the_holders_pid_in_place() {
        let base = scratch("pid");
        let run = base.join("run");
        let host = Some("unix:///nonexistent/docker.sock");
        let first = acquire(&base.join("a"), &run, host).expect("first");
        let _ = acquire(&base.join("b"), &run, host).expect_err("second");
        let name = lock_name(&docker_endpoint(host));
        assert_eq!(
            std::fs::read_to_string(run.join(name)).expect("daemon lock"),
            format!("{}\n", std::process::id())
        );
        drop(first);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_lock_that_cannot_be_created_is_a_warning_not_a_refusal() {
        let base = scratch("warn");
        std::fs::create_dir_all(&base).expect("dir");
        // A regular file where the state dir should be: the lock cannot be created there.
        let not_a_dir = base.join("state");
        std::fs::write(&not_a_dir, b"").expect("file");
        let lock = acquire(&not_a_dir, &base.join("run"), Some("tcp://127.0.0.1:2375"))
            .expect("starts anyway");
        assert_eq!(lock.warnings.len(), 1, "{:?}", lock.warnings);
        assert!(
            lock.warnings[0].contains("would not be refused"),
            "{:?}",
            lock.warnings
        );
        // The daemon lock was still taken.
        let e = acquire(
            &base.join("b"),
            &base.join("run"),
            Some("tcp://127.0.0.1:2375"),
        )
        .expect_err("daemon lock held");
        assert!(e.to_string().contains("Docker daemon"), "{e}");
        drop(lock);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_endpoint_resolves_a_sockets_symlinks() {
        let base = scratch("link");
        std::fs::create_dir_all(&base).expect("dir");
        let real = base.join("docker.sock");
        std::fs::write(&real, b"").expect("stand-in for the socket");
        let link = base.join("link.sock");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let canon = std::fs::canonicalize(&real).expect("canonical");
        let want = format!("unix://{}", canon.display());
        assert_eq!(
            docker_endpoint(Some(&format!("unix://{}", link.display()))),
            want
        );
        assert_eq!(docker_endpoint(Some(&link.display().to_string())), want);
        assert_eq!(lock_name(&want), lock_name(&docker_endpoint(Some(&want))));
        assert_eq!(
            docker_endpoint(Some("tcp://127.0.0.1:2376")),
            "tcp://127.0.0.1:2376"
        );
        assert_eq!(
            lock_name("unix:///run/docker.sock"),
            "docker-unix____run_docker.sock.lock"
        );
        assert!(lock_name(&"x".repeat(1000)).len() <= MAX_NAME + "docker-.lock".len());
        let _ = std::fs::remove_dir_all(&base);
    }
}
