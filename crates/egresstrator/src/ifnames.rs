//! The names of the calling thread's network namespace's interfaces.
//!
//! Read from `/proc/thread-self/net/dev`, which procfs generates for the namespace of the
//! thread that reads it. `/sys/class/net` would not do: it shows the namespace that mounted
//! `/sys`, the host's.
//!
//! Why not netlink (`if_nameindex`, an `RTM_GETLINK` dump): that dump waits for the kernel's
//! routing lock (RTNL), and every container start on the host takes that lock to create and
//! move its veth pair. Measured here (kernel 6.18, 2 cores; a Python loop in one namespace,
//! both reads alternated, while 60 `docker run -d` started at once; ~7,400 reads each, two
//! runs):
//!
//! | | p50 | p99 | max | reads over 20 ms |
//! |---|---:|---:|---:|---:|
//! | `if_nameindex` | 0.014–0.016 ms | 5.2–6.5 ms | 150–165 ms | 27–31 |
//! | `/proc/self/net/dev` | 0.034–0.038 ms | 0.31–0.33 ms | 36–49 ms | 1–2 |
//!
//! The procfs file is walked under RCU and takes no lock a container start holds. In a
//! burst of 100 starts (`egresstrator-bench --only burst`), listing the interfaces had been
//! the largest part of the slowest loads, 20–42 ms of them; with procfs, loads over 20 ms
//! fell from 17–24 to 1–3 per burst (BENCHMARKS.md, part 7). Netlink stays the fallback for
//! a process without `/proc`.
//!
//! One definition for the agent and for `egresstrator-runc`, which includes this file by path
//! (it does not link the agent's library: dockerd runs it for every runc verb).

use std::io::{self, Read};

/// The per-thread view of the interface table (see the module docs).
const PROC_NET_DEV: &str = "/proc/thread-self/net/dev";

/// The most of [`PROC_NET_DEV`] that is read: about 8,000 interfaces (each line is ~130
/// bytes). A namespace with more is an error, never a partial list.
const MAX_BYTES: u64 = 1 << 20;

/// The interface names, sorted.
pub fn interface_names() -> io::Result<Vec<String>> {
    let file = match std::fs::File::open(PROC_NET_DEV) {
        Ok(file) => file,
        // No procfs (or no thread-self, before Linux 3.17): ask the kernel over netlink.
        Err(_) => return netlink_names(),
    };
    let mut text = String::new();
    file.take(MAX_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{PROC_NET_DEV} is larger than {MAX_BYTES} bytes"),
        ));
    }
    parse_net_dev(&text)
}

/// The names in the text of `/proc/net/dev`: two header lines, then one line per interface,
/// `<name>: <counters>`, the name right-aligned. The kernel refuses interface names that
/// contain `:`, `/` or whitespace (`dev_valid_name`), so the first `:` ends the name.
fn parse_net_dev(text: &str) -> io::Result<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if !header.starts_with("Inter-") || lines.next().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{PROC_NET_DEV} does not start with its header"),
        ));
    }
    let mut names = Vec::new();
    for line in lines {
        let name = line
            .split_once(':')
            .map(|(name, _)| name.trim())
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{PROC_NET_DEV}: a line without an interface name: {line:?}"),
                )
            })?;
        names.push(name.to_owned());
    }
    names.sort();
    Ok(names)
}

/// The interface names from an `RTM_GETLINK` dump (`if_nameindex`), sorted.
fn netlink_names() -> io::Result<Vec<String>> {
    // SAFETY: plain libc call; a NULL result is an error with errno set.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut entry = list;
    // SAFETY: the array ends with an entry whose index is 0 and name NULL; each name is a
    // NUL-terminated string owned by the array until it is freed below.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            names.push(
                std::ffi::CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout printed by `dev_seq_show` (net/core/net-procfs.c), copied from this
    /// machine's `/proc/net/dev` with one name added that uses every character the guard
    /// allows.
    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      12    0    0    0     0          0         0     1234      12    0    0    0     0       0          0
  eth0:  987654    4321    0    0    0     0          0         0   123456    1234    0    0    0     0       0          0
a.b_c+d@e-f: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
";

    #[test]
    fn names_are_read_from_each_line_and_sorted() {
        let names = parse_net_dev(SAMPLE).expect("parses");
        assert_eq!(names, ["a.b_c+d@e-f", "eth0", "lo"]);
    }

    #[test]
    fn a_namespace_with_no_interfaces_has_an_empty_list() {
        let header: String = SAMPLE.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            parse_net_dev(&header).expect("parses"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn text_of_another_shape_is_an_error_not_a_shorter_list() {
        for bad in [
            "",
            "lo: 0 0\n",
            "Inter-|\n",
            &format!("{SAMPLE}garbage without a colon\n"),
            &format!("{SAMPLE}   : 0 0\n"),
        ] {
            assert!(parse_net_dev(bad).is_err(), "accepted {bad:?}");
        }
    }
}
