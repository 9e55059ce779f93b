//! Receiving the kernel's NFLOG records of refused connections, from inside a container's
//! network namespace.
//!
//! Why it exists: the rulesets log what they refuse (nft `log prefix "egresstrator deny"
//! group G`, iptables `-j NFLOG --nflog-group G --nflog-prefix "egresstrator deny"`, and
//! `"egresstrator audit"` in audit mode). The kernel hands those records to whichever
//! `nfnetlink_log` socket has bound group G *in the same network namespace*: a socket only
//! ever sees the logs of the namespace it was created in. So [`open_in`] creates the socket
//! on a dedicated thread inside the container's namespace (through [`netns::run_in_netns`],
//! which refuses the host's and the agent's own namespace), configures it there and hands the
//! descriptor back; the socket keeps its namespace wherever it is used afterwards. The
//! [`Listener`] then reads it from tokio, and [`parse`] turns one datagram into [`Record`]s.
//!
//! Configuration, one message each, every one acknowledged (`NLM_F_ACK`) and checked:
//! `NFULNL_CFG_CMD_BIND` for the group, copy mode `NFULNL_COPY_PACKET` with the first
//! [`COPY_RANGE`] bytes (IPv4/IPv6 header plus ports), a flush timeout of [`FLUSH_TIMEOUT`]
//! and a queue threshold of [`QUEUE_THRESHOLD`] (the kernel's defaults, 1 s and 100 records,
//! would hold a lone record back for a second), and `NFULNL_CFG_F_SEQ`, whose per-group
//! sequence numbers let the listener count the records it never received. No
//! `NFULNL_CFG_CMD_PF_UNBIND`/`PF_BIND` is sent: on current kernels they only choose the
//! namespace's *default* logger (for `log` statements without a group), which a rule with a
//! group does not use; unbinding it would change how the container's other `log` rules
//! behave. A group is held by one socket at a time: a second socket binding it gets `EPERM`
//! from the kernel (`EBUSY` only when the same socket binds twice); both are
//! [`NflogError::GroupTaken`]. The group is released when the socket closes.
//!
//! Why hand-written: `netlink-packet-netfilter` 0.4.0 (rust-netlink, with
//! `netlink-packet-core` 0.9 and `netlink-sys` 0.9) was checked. It builds and has the nflog
//! config commands and packet attributes, but its `PacketHdr` and `TimeStamp` keep their
//! fields private with no accessors (so `hw_protocol` and the timestamp cannot be read), it
//! rejects a whole message when one attribute does not parse, leaves splitting a datagram into
//! messages and the IP header to the caller, and would add nine crates to the build (two of
//! them proc-macros, `derive_more` 0.99 and `zerocopy-derive`). The netlink needed here is a
//! few fixed messages and a bounded attribute walk, written below with `libc`.
//!
//! Security notes:
//! - Needs `CAP_NET_ADMIN` over the namespace (the kernel checks it for every config message).
//! - The socket is created inside the container's namespace, never in the host's: the
//!   namespace entry is [`netns::run_in_netns`]'s, with its checks.
//! - The kernel is trusted, but what it sends is still treated as input: every length is
//!   checked before use, nothing is indexed unchecked, a malformed message is skipped and
//!   counted ([`Stats::skipped`]), and parsing never panics. The payload is packet data a
//!   container chose; only its IP and transport headers are read, within the copied bytes.
//! - Memory is bounded: the socket's receive buffer is [`RECEIVE_BUFFER`]; when it overflows
//!   the kernel drops records and reports `ENOBUFS`, which is counted and survived.
//!
//! For callers: a [`Listener`] holds a reference to its namespace, so the namespace (and its
//! devices and rules) lives on while the listener is open, even after the container is gone
//! and its namespace file removed; `recv` then simply waits. Drop the listener when the
//! container goes away, and open a new one when its namespace is re-created (a listener never
//! follows a path to a new namespace; [`Listener::netns_cookie`] tells which one it is in).

use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::netlink::{
    align4, attributes, be32, messages, recv_raw, send_all, set_option, NFGENMSG_LEN, NLA_HDRLEN,
    NLMSG_HDRLEN,
};
use crate::netns::{self, NetnsError};

/// Bytes of each logged packet the kernel copies: enough for an IPv6 header with a few
/// extension headers and the ports (an IPv4 header with options is at most 60 bytes).
pub const COPY_RANGE: u32 = 128;
/// The longest a record waits in the kernel before it is sent (the kernel's unit is 1/100 s;
/// its default is 1 s).
pub const FLUSH_TIMEOUT: Duration = Duration::from_millis(10);
/// Records the kernel batches into one datagram before sending it at once (default 100).
/// 1: every record is sent as it is logged. Measured with `egresstrator-bench --only deny`:
/// at 32, a lone record waited for the flush timer (refused SYN → monitor p50 10.7 ms); at 1
/// it does not. The ruleset's rate limit bounds the records, so batching saves little.
pub const QUEUE_THRESHOLD: u32 = 1;
/// The socket's receive buffer. Past it the kernel drops records and reports `ENOBUFS`.
pub const RECEIVE_BUFFER: usize = 256 * 1024;
/// How long the kernel may take to answer one config message.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The largest datagram read whole; a longer one is truncated and its cut message skipped.
const DATAGRAM_MAX: usize = 64 * 1024;
/// The longest prefix kept (the kernel's `NF_LOG_PREFIXLEN` is 128 with the NUL).
const PREFIX_MAX: usize = 127;
/// `CAP_NET_ADMIN`'s bit in the capability sets (`<linux/capability.h>`).
const CAP_NET_ADMIN: u32 = 12;

const MSG_PACKET: u16 = ((libc::NFNL_SUBSYS_ULOG as u16) << 8) | libc::NFULNL_MSG_PACKET as u16;
const MSG_CONFIG: u16 = ((libc::NFNL_SUBSYS_ULOG as u16) << 8) | libc::NFULNL_MSG_CONFIG as u16;
const NFULA_PACKET_HDR: u16 = libc::NFULA_PACKET_HDR as u16;
const NFULA_TIMESTAMP: u16 = libc::NFULA_TIMESTAMP as u16;
const NFULA_PAYLOAD: u16 = libc::NFULA_PAYLOAD as u16;
const NFULA_PREFIX: u16 = libc::NFULA_PREFIX as u16;
const NFULA_UID: u16 = libc::NFULA_UID as u16;
const NFULA_SEQ: u16 = libc::NFULA_SEQ as u16;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The IP version of a logged packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One logged packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The rule's log prefix (`egresstrator deny`, `egresstrator audit`, …); empty when the
    /// rule has none. At most 127 bytes; invalid UTF-8 is replaced.
    pub prefix: String,
    pub family: Family,
    /// The transport protocol: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, … For IPv6, the header after
    /// the extension headers; when those run past the copied bytes, the first one not read.
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports of TCP, UDP, UDP-Lite and SCTP; `None` for other protocols and for fragments
    /// after the first.
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// The file system uid of the sending socket's owner (`NFULA_UID`), as seen from the
    /// listener's user namespace; absent for packets without a local socket.
    pub uid: Option<u32>,
    /// The per-group sequence number (`NFULA_SEQ`), present since the listener asks for it.
    pub seq: Option<u32>,
    /// The packet's kernel timestamp (`NFULA_TIMESTAMP`, sent for prerouting, input and
    /// forward) or else when the datagram was received.
    pub at: SystemTime,
}

/// What a [`Listener`] has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records returned.
    pub records: u64,
    /// Messages that were malformed or not packet records; skipped.
    pub skipped: u64,
    /// Times the receive buffer overflowed (`ENOBUFS`): records were lost.
    pub overflows: u64,
    /// Records the kernel numbered but the listener never received (gaps in `NFULA_SEQ`).
    pub lost: u64,
}

/// A configuration step, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Bind,
    CopyMode,
    FlushTimeout,
    QueueThreshold,
    Flags,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Bind => "bind (NFULNL_CFG_CMD_BIND)",
            Step::CopyMode => "copy mode (NFULA_CFG_MODE)",
            Step::FlushTimeout => "flush timeout (NFULA_CFG_TIMEOUT)",
            Step::QueueThreshold => "queue threshold (NFULA_CFG_QTHRESH)",
            Step::Flags => "flags (NFULA_CFG_FLAGS)",
        })
    }
}

/// An error while opening or reading an NFLOG listener.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    /// The namespace could not be entered (gone, the host's, …).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot set up the NFLOG socket in netns {}: {error}", path.display())]
    Socket { path: PathBuf, error: io::Error },
    /// Another socket holds the group in this namespace (another listener, ulogd, …).
    #[error(
        "NFLOG group {group} in netns {} is already bound by another socket",
        path.display()
    )]
    GroupTaken { path: PathBuf, group: u16 },
    /// The kernel refused for lack of `CAP_NET_ADMIN` over the namespace.
    #[error(
        "not permitted to bind NFLOG group {group} in netns {}: CAP_NET_ADMIN is needed",
        path.display()
    )]
    Permission { path: PathBuf, group: u16 },
    #[error("the kernel refused NFLOG {step} for group {group} in netns {}: {error}", path.display())]
    Config {
        path: PathBuf,
        group: u16,
        step: Step,
        error: io::Error,
    },
    #[error(
        "the kernel did not answer NFLOG {step} for group {group} in netns {} within {} s",
        path.display(),
        ANSWER_WAIT.as_secs()
    )]
    NoAnswer {
        path: PathBuf,
        group: u16,
        step: Step,
    },
    /// No tokio runtime to register the socket with (call from within one).
    #[error("cannot register the NFLOG socket of netns {} with tokio: {error}", path.display())]
    Register { path: PathBuf, error: io::Error },
    #[error("receiving NFLOG records of netns {} failed: {error}", path.display())]
    Recv { path: PathBuf, error: io::Error },
}

/// A bound NFLOG socket of one namespace, read from tokio. Dropping it releases the group.
#[derive(Debug)]
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    group: u16,
    /// Records that arrived while the socket was being configured.
    pending: Vec<Record>,
    next_seq: Option<u32>,
    stats: Stats,
}

/// What the namespace thread hands back.
struct Opened {
    fd: OwnedFd,
    pending: Vec<Record>,
    skipped: usize,
}

/// Opens a listener for NFLOG `group` in the network namespace at `netns`. Blocks while a
/// dedicated thread enters the namespace and configures the socket (milliseconds); must be
/// called within a tokio runtime with I/O enabled. In async code use [`open_in_async`].
pub fn open_in(netns: &Path, group: u16) -> Result<Listener, NflogError> {
    let path = netns.to_path_buf();
    let opened = netns::run_in_netns(netns, move || Ok(open_socket(&path, group)))??;
    Listener::new(netns.to_path_buf(), group, opened)
}

/// Async form of [`open_in`]: the namespace work runs on its own thread, never on a worker.
pub async fn open_in_async(netns: PathBuf, group: u16) -> Result<Listener, NflogError> {
    let path = netns.clone();
    let opened =
        netns::run_in_netns_async(netns.clone(), move || Ok(open_socket(&path, group))).await??;
    Listener::new(netns, group, opened)
}

impl Listener {
    fn new(path: PathBuf, group: u16, opened: Opened) -> Result<Listener, NflogError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| NflogError::Register {
            path: path.clone(),
            error: io::Error::other(e),
        })?;
        let _entered = handle.enter();
        // SAFETY: the `OwnedFd` owns an open descriptor; it stays open and the same until the
        // `AsyncFd` drops it, and nothing here replaces it (no `get_mut`).
        let fd = unsafe { AsyncFd::register_with_interest(opened.fd, Interest::READABLE) }
            .map_err(|e| NflogError::Register {
                path: path.clone(),
                error: io::Error::from(e),
            })?;
        let mut listener = Listener {
            fd,
            path,
            group,
            pending: Vec::new(),
            next_seq: None,
            stats: Stats::default(),
        };
        listener.account(&opened.pending, opened.skipped);
        listener.pending = opened.pending;
        Ok(listener)
    }

    /// Waits for the next datagram that holds records and returns them (never empty).
    /// Malformed messages are skipped and an overflow of the receive buffer is counted (see
    /// [`Listener::stats`]); neither ends the wait. Cancel-safe: a datagram is either returned
    /// whole or not read.
    pub async fn recv(&mut self) -> Result<Vec<Record>, NflogError> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        loop {
            let datagram = self.recv_datagram().await?;
            let (records, skipped) = parse_at(&datagram, SystemTime::now());
            self.account(&records, skipped);
            if !records.is_empty() {
                return Ok(records);
            }
        }
    }

    /// Reads one datagram (a longer one than [`DATAGRAM_MAX`] is cut). The buffer is made
    /// once the socket is readable and freed with the datagram: a listener that waits holds
    /// none (one per listener was ~53 KiB resident each, 10.7 MiB for 200 namespaces).
    async fn recv_datagram(&mut self) -> Result<Vec<u8>, NflogError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(|error| NflogError::Recv {
                path: self.path.clone(),
                error,
            })?;
            let mut buf = vec![0u8; DATAGRAM_MAX];
            match guard.try_io(|fd| recv_raw(fd.get_ref(), &mut buf, libc::MSG_DONTWAIT)) {
                Err(_would_block) => continue,
                Ok(Ok(len)) => {
                    buf.truncate(len);
                    return Ok(buf);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.overflows += 1;
                    tracing::debug!(
                        netns = %self.path.display(),
                        group = self.group,
                        "NFLOG receive buffer overflowed; records were lost"
                    );
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(error)) => {
                    return Err(NflogError::Recv {
                        path: self.path.clone(),
                        error,
                    })
                }
            }
        }
    }

    fn account(&mut self, records: &[Record], skipped: usize) {
        self.stats.records += records.len() as u64;
        self.stats.skipped += skipped as u64;
        for seq in records.iter().filter_map(|r| r.seq) {
            self.stats.lost += missed(self.next_seq, seq);
            self.next_seq = Some(seq.wrapping_add(1));
        }
    }

    /// What this listener has seen so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The group it is bound to.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// The namespace path it was opened for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cookie of the namespace the socket lives in (compare with `netns::cookie` to tell
    /// whether the path still leads there).
    pub fn netns_cookie(&self) -> io::Result<u64> {
        crate::cookie::of_socket(self.fd.get_ref())
    }
}

// ---------------------------------------------------------------------------------------------
// The socket, on the namespace thread

/// Creates, binds and configures the socket; runs on the thread inside the namespace.
fn open_socket(path: &Path, group: u16) -> Result<Opened, NflogError> {
    let socket_error = |error| NflogError::Socket {
        path: path.to_path_buf(),
        error,
    };
    // SAFETY: plain syscall; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(socket_error(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // The forced form passes `rmem_max` (we hold CAP_NET_ADMIN); the plain one is capped.
    let size = RECEIVE_BUFFER as libc::c_int;
    if set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size).is_err() {
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size).map_err(socket_error)?;
    }
    let wait = libc::timeval {
        tv_sec: ANSWER_WAIT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &wait).map_err(socket_error)?;

    // SAFETY: an all-zero sockaddr_nl is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `addr` is a sockaddr_nl of the size given; the descriptor is open.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(socket_error(io::Error::last_os_error()));
    }

    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend([libc::NFULNL_COPY_PACKET as u8, 0]);
    let timeout = (FLUSH_TIMEOUT.as_millis() / 10).max(1) as u32;
    let steps: [(Step, u16, Vec<u8>); 5] = [
        (
            Step::Bind,
            libc::NFULA_CFG_CMD as u16,
            vec![libc::NFULNL_CFG_CMD_BIND as u8],
        ),
        (Step::CopyMode, libc::NFULA_CFG_MODE as u16, mode),
        (
            Step::FlushTimeout,
            libc::NFULA_CFG_TIMEOUT as u16,
            timeout.to_be_bytes().to_vec(),
        ),
        (
            Step::QueueThreshold,
            libc::NFULA_CFG_QTHRESH as u16,
            QUEUE_THRESHOLD.to_be_bytes().to_vec(),
        ),
        (
            Step::Flags,
            libc::NFULA_CFG_FLAGS as u16,
            (libc::NFULNL_CFG_F_SEQ as u16).to_be_bytes().to_vec(),
        ),
    ];
    let mut opened = Opened {
        fd,
        pending: Vec::new(),
        skipped: 0,
    };
    for (seq, (step, attr, value)) in (1u32..).zip(steps) {
        let config_error = |error: io::Error| match (step, error.raw_os_error()) {
            // EPERM: either no CAP_NET_ADMIN, or the group's instance belongs to another
            // socket (the kernel checks the owner before the command). EBUSY: bound twice.
            (Step::Bind, Some(libc::EPERM)) if has_cap_net_admin() => NflogError::GroupTaken {
                path: path.to_path_buf(),
                group,
            },
            (_, Some(libc::EPERM)) => NflogError::Permission {
                path: path.to_path_buf(),
                group,
            },
            (Step::Bind, Some(libc::EBUSY)) => NflogError::GroupTaken {
                path: path.to_path_buf(),
                group,
            },
            _ => NflogError::Config {
                path: path.to_path_buf(),
                group,
                step,
                error,
            },
        };
        let message = config_message(seq, group, attr, &value);
        send_all(&opened.fd, &message).map_err(config_error)?;
        match await_answer(&mut opened, seq).map_err(config_error)? {
            Some(0) => {}
            Some(errno) => return Err(config_error(io::Error::from_raw_os_error(errno))),
            None => {
                return Err(NflogError::NoAnswer {
                    path: path.to_path_buf(),
                    group,
                    step,
                })
            }
        }
    }

    // From here on the socket is read by tokio.
    let fd = opened.fd.as_raw_fd();
    // SAFETY: plain fcntl calls on an open descriptor we own.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(socket_error(io::Error::last_os_error()));
    }
    Ok(opened)
}

/// Waits for the kernel's answer to message `seq`: `Some(0)` for an ACK, `Some(errno)` for an
/// error, `None` when none came in time. Records that arrive meanwhile are kept.
fn await_answer(opened: &mut Opened, seq: u32) -> io::Result<Option<i32>> {
    let deadline = Instant::now() + ANSWER_WAIT;
    let mut buf = vec![0u8; DATAGRAM_MAX];
    while Instant::now() < deadline {
        let len = match recv_raw(&opened.fd, &mut buf, 0) {
            Ok(len) => len.min(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Records were lost before the configuration finished; the answer may follow.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
            Err(e) => return Err(e),
        };
        let datagram = &buf[..len];
        let mut answer = None;
        for (kind, msg_seq, body) in messages(datagram).flatten() {
            if kind == libc::NLMSG_ERROR as u16 && msg_seq == seq {
                let code = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes);
                // A truncated error message still means the request failed.
                answer = Some(code.map_or(libc::EPROTO, |c| -c));
            }
        }
        if answer.is_some() {
            return Ok(answer);
        }
        let (records, skipped) = parse_at(datagram, SystemTime::now());
        opened.pending.extend(records);
        opened.skipped += skipped;
    }
    Ok(None)
}

/// One `NFULNL_MSG_CONFIG` request with one attribute, asking for an ACK.
fn config_message(seq: u32, group: u16, attr: u16, value: &[u8]) -> Vec<u8> {
    let attr_len = NLA_HDRLEN + value.len();
    let total = NLMSG_HDRLEN + NFGENMSG_LEN + align4(attr_len);
    let mut m = Vec::with_capacity(total);
    m.extend((total as u32).to_ne_bytes());
    m.extend(MSG_CONFIG.to_ne_bytes());
    m.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // nfgenmsg: family (unused by these commands), version, group in network order.
    m.extend([libc::AF_UNSPEC as u8, libc::NFNETLINK_V0 as u8]);
    m.extend(group.to_be_bytes());
    m.extend((attr_len as u16).to_ne_bytes());
    m.extend(attr.to_ne_bytes());
    m.extend(value);
    m.resize(total, 0);
    m
}

/// Whether this thread's effective capabilities include CAP_NET_ADMIN (to tell the two
/// meanings of the kernel's EPERM apart).
fn has_cap_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/thread-self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Parses one datagram from an NFLOG socket into its records and the number of messages
/// skipped (malformed, or not packet records). Records without a kernel timestamp are stamped
/// with the current time; [`parse_at`] takes that time as an argument instead.
pub fn parse(datagram: &[u8]) -> (Vec<Record>, usize) {
    parse_at(datagram, SystemTime::now())
}

/// [`parse`] with the time the datagram was received, for records the kernel did not stamp.
/// Pure: never panics, reads nothing outside `datagram`.
pub fn parse_at(datagram: &[u8], received: SystemTime) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut skipped = 0;
    for message in messages(datagram) {
        let Some((kind, _seq, body)) = message else {
            skipped += 1;
            continue;
        };
        match kind {
            MSG_PACKET => match parse_packet(body, received) {
                Some(record) => records.push(record),
                None => skipped += 1,
            },
            k if k == libc::NLMSG_NOOP as u16 || k == libc::NLMSG_DONE as u16 => {}
            _ => skipped += 1,
        }
    }
    (records, skipped)
}

/// One `NFULNL_MSG_PACKET` body (after the netlink header) into a record.
fn parse_packet(body: &[u8], received: SystemTime) -> Option<Record> {
    let nfgen_family = *body.first()?;
    let attrs = attributes(body.get(NFGENMSG_LEN..)?)?;
    let mut family = match i32::from(nfgen_family) {
        libc::AF_INET => Some(Family::Ipv4),
        libc::AF_INET6 => Some(Family::Ipv6),
        _ => None,
    };
    let (mut prefix, mut payload, mut uid, mut seq, mut at) = (None, None, None, None, None);
    for (kind, value) in attrs {
        match kind {
            NFULA_PACKET_HDR => {
                // struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
                let hw = u16::from_be_bytes(value.get(..2)?.try_into().ok()?);
                family = match hw {
                    ETH_P_IP => Some(Family::Ipv4),
                    ETH_P_IPV6 => Some(Family::Ipv6),
                    _ => family,
                };
            }
            NFULA_PREFIX => {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                let text = text.get(..PREFIX_MAX).unwrap_or(text);
                prefix = Some(String::from_utf8_lossy(text).into_owned());
            }
            NFULA_PAYLOAD => payload = Some(value),
            NFULA_UID => uid = Some(be32(value)?),
            NFULA_SEQ => seq = Some(be32(value)?),
            NFULA_TIMESTAMP => {
                // struct nfulnl_msg_packet_timestamp { __aligned_be64 sec; __aligned_be64 usec; }
                let sec = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
                let usec = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
                if usec < 1_000_000 {
                    at = Duration::from_secs(sec)
                        .checked_add(Duration::from_micros(usec))
                        .and_then(|since| SystemTime::UNIX_EPOCH.checked_add(since));
                }
            }
            _ => {}
        }
    }
    let ip = parse_ip(family, payload?)?;
    Some(Record {
        prefix: prefix.unwrap_or_default(),
        family: ip.family,
        proto: ip.proto,
        src: ip.src,
        dst: ip.dst,
        sport: ip.ports.map(|p| p.0),
        dport: ip.ports.map(|p| p.1),
        uid,
        seq,
        at: at.unwrap_or(received),
    })
}

struct Ip {
    family: Family,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    ports: Option<(u16, u16)>,
}

/// The IP header (and the ports after it) of a logged packet. `family` is what the kernel
/// said; the header's version must agree with it.
fn parse_ip(family: Option<Family>, p: &[u8]) -> Option<Ip> {
    let version = match p.first()? >> 4 {
        4 => Family::Ipv4,
        6 => Family::Ipv6,
        _ => return None,
    };
    if family.is_some_and(|f| f != version) {
        return None;
    }
    match version {
        Family::Ipv4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            if ihl < 20 || ihl > p.len() {
                return None;
            }
            let fragment_offset = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x1fff;
            let proto = *p.get(9)?;
            let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            let ports = if fragment_offset == 0 {
                ports(proto, p.get(ihl..))
            } else {
                None
            };
            Some(Ip {
                family: version,
                proto,
                src: IpAddr::V4(Ipv4Addr::from(src)),
                dst: IpAddr::V4(Ipv4Addr::from(dst)),
                ports,
            })
        }
        Family::Ipv6 => {
            let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            let mut next = *p.get(6)?;
            let mut offset = 40;
            let mut first_fragment = true;
            // Extension headers, a bounded number of them, as far as the copied bytes go.
            for _ in 0..8 {
                let (Some(&following), Some(&len)) = (p.get(offset), p.get(offset + 1)) else {
                    break;
                };
                let skip = match next {
                    // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
                    0 | 43 | 60 => (usize::from(len) + 1) * 8,
                    // Fragment: 8 bytes; the offset is the top 13 bits of bytes 2..4.
                    44 => {
                        let frag =
                            u16::from_be_bytes([*p.get(offset + 2)?, *p.get(offset + 3)?]) >> 3;
                        first_fragment &= frag == 0;
                        8
                    }
                    // Authentication header: (len + 2) * 4 bytes.
                    51 => (usize::from(len) + 2) * 4,
                    _ => break,
                };
                next = following;
                offset += skip;
            }
            let ports = if first_fragment {
                ports(next, p.get(offset..))
            } else {
                None
            };
            Some(Ip {
                family: version,
                proto: next,
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                ports,
            })
        }
    }
}

/// Source and destination port of a transport header that starts with them.
fn ports(proto: u8, header: Option<&[u8]>) -> Option<(u16, u16)> {
    // TCP, UDP, SCTP, UDP-Lite.
    if !matches!(proto, 6 | 17 | 132 | 136) {
        return None;
    }
    let h = header?.get(..4)?;
    Some((
        u16::from_be_bytes([h[0], h[1]]),
        u16::from_be_bytes([h[2], h[3]]),
    ))
}

/// Records skipped before `seq` when `next` was expected (the kernel's sequence wraps).
fn missed(next: Option<u32>, seq: u32) -> u64 {
    let Some(next) = next else { return 0 };
    let gap = seq.wrapping_sub(next);
    // A "gap" of more than half the range is a reordering or a restart, not loss.
    if gap < u32::MAX / 2 {
        u64::from(gap)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{SocketAddr, TcpStream, UdpSocket};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    // -----------------------------------------------------------------------------------------
    // Against the kernel, in throwaway namespaces

    const GROUP: u16 = 4242;
    const DENY: &str = "egresstrator deny";
    const AUDIT: &str = "egresstrator audit";
    /// How long a record may take to arrive (the flush timeout is 10 ms).
    const ARRIVE: Duration = Duration::from_secs(2);
    /// How long to wait before deciding that no record comes.
    const QUIET: Duration = Duration::from_millis(300);

    /// Fails the test, saying what is missing, when it cannot run here.
    fn require_root_and_tools() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the NFLOG kernel tests need root"
        );
        for tool in ["ip", "nft"] {
            let found = Command::new(tool)
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "the NFLOG kernel tests need the `{tool}` command");
        }
    }

    fn run(program: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("write stdin");
        drop(input);
        child.wait_with_output().expect("wait")
    }

    fn ok(program: &str, args: &[&str], stdin: Option<&str>) {
        let out = run(program, args, stdin);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A namespace made with `ip netns add`, with `lo` and a veth pair `d0`/`d1` (this kernel
    /// has no dummy driver; `d0` holds 192.0.2.1/24 and fd00::1/64) up, and the logging rules
    /// loaded. Deleted when dropped.
    struct TestNetns {
        name: String,
        path: PathBuf,
    }

    const RULES: &str = r#"
table inet t {
    chain o {
        type filter hook output priority 0; policy accept;
        ip daddr 192.0.2.99 udp dport 9999 log prefix "egresstrator deny" group 4242 drop
        ip daddr 192.0.2.99 tcp dport 443 log prefix "egresstrator deny" group 4242 drop
        ip daddr 192.0.2.97 udp dport 53 log prefix "egresstrator audit" group 4242 accept
        ip6 daddr fd00::99 udp dport 9999 log prefix "egresstrator deny" group 4242 drop
    }
}
"#;

    impl TestNetns {
        fn new() -> TestNetns {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            require_root_and_tools();
            let name = format!(
                "egt-nflog-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            );
            ok("ip", &["netns", "add", &name], None);
            // From here on the guard removes it, also when a step below fails.
            let ns = TestNetns {
                path: PathBuf::from("/run/netns").join(&name),
                name,
            };
            let n = ns.name.as_str();
            for args in [
                &["-n", n, "link", "set", "lo", "up"][..],
                &[
                    "-n", n, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
                ],
                &["-n", n, "link", "set", "d1", "up"],
                &["-n", n, "addr", "add", "192.0.2.1/24", "dev", "d0"],
                &["-n", n, "addr", "add", "fd00::1/64", "dev", "d0", "nodad"],
                &["-n", n, "link", "set", "d0", "up"],
            ] {
                ok("ip", args, None);
            }
            ok("ip", &["netns", "exec", n, "nft", "-f", "-"], Some(RULES));
            ns
        }

        /// Sends one UDP datagram from inside the namespace (dropped ones fail with EPERM,
        /// which is expected and ignored).
        fn udp(&self, to: &str) {
            let to: SocketAddr = to.parse().expect("address");
            netns::run_in_netns(&self.path, move || {
                let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let socket = UdpSocket::bind(bind).expect("bind");
                let _ = socket.send_to(b"x", to);
                Ok(())
            })
            .expect("send in netns");
        }

        /// Opens a TCP connection from inside the namespace (its SYN is logged and dropped).
        fn tcp(&self, to: &str) {
            let to: SocketAddr = to.parse().expect("address");
            netns::run_in_netns(&self.path, move || {
                let _ = TcpStream::connect_timeout(&to, Duration::from_millis(500));
                Ok(())
            })
            .expect("connect in netns");
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = run("ip", &["netns", "del", &self.name], None);
        }
    }

    async fn next(listener: &mut Listener) -> Option<Vec<Record>> {
        match tokio::time::timeout(ARRIVE, listener.recv()).await {
            Ok(records) => Some(records.expect("recv")),
            Err(_elapsed) => None,
        }
    }

    async fn quiet(listener: &mut Listener) -> bool {
        tokio::time::timeout(QUIET, listener.recv()).await.is_err()
    }

    /// A denied UDP datagram arrives as a record with its prefix, addresses and ports; one
    /// the rules do not log produces none; an audited one carries the audit prefix.
    #[tokio::test]
    async fn kernel_udp_record_arrives_and_unlogged_traffic_does_not() {
        let ns = TestNetns::new();
        let mut listener = open_in_async(ns.path.clone(), GROUP).await.expect("open");
        assert_eq!(listener.group(), GROUP);

        // Control first: not logged, so nothing arrives.
        ns.udp("192.0.2.98:9999");
        assert!(
            quiet(&mut listener).await,
            "an unlogged datagram made a record"
        );

        let sent = SystemTime::now();
        ns.udp("192.0.2.99:9999");
        let records = next(&mut listener).await.expect("a record within 2 s");
        let received = SystemTime::now();
        assert_eq!(records.len(), 1, "{records:?}");
        let r = &records[0];
        assert_eq!(r.prefix, DENY);
        assert_eq!(r.family, Family::Ipv4);
        assert_eq!(r.proto, 17);
        assert_eq!(r.src, "192.0.2.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.dst, "192.0.2.99".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.dport, Some(9999));
        assert!(r.sport.is_some_and(|p| p != 0), "{r:?}");
        assert_eq!(r.uid, Some(0), "sent by root");
        assert_eq!(r.seq, Some(0), "the group's first record");
        assert!(r.at >= sent && r.at <= received, "{r:?}");

        ns.udp("192.0.2.97:53");
        let records = next(&mut listener).await.expect("an audit record");
        assert_eq!(records[0].prefix, AUDIT);
        assert_eq!(records[0].dport, Some(53));
        assert_eq!(records[0].seq, Some(1));

        let stats = listener.stats();
        assert_eq!(stats.records, 2, "{stats:?}");
        assert_eq!((stats.skipped, stats.overflows, stats.lost), (0, 0, 0));
    }

    /// A refused TCP connection's SYN is logged with its ports, and so is an IPv6 datagram.
    #[tokio::test]
    async fn kernel_tcp_syn_and_ipv6_records() {
        let ns = TestNetns::new();
        let mut listener = open_in_async(ns.path.clone(), GROUP).await.expect("open");

        ns.tcp("192.0.2.99:443");
        let records = next(&mut listener).await.expect("a TCP record");
        let r = &records[0];
        assert_eq!((r.proto, r.dport, r.prefix.as_str()), (6, Some(443), DENY));
        assert_eq!(r.dst, "192.0.2.99".parse::<IpAddr>().expect("ip"));
        // Drain retransmitted SYNs, if any.
        while !quiet(&mut listener).await {}

        ns.udp("[fd00::99]:9999");
        let records = next(&mut listener).await.expect("an IPv6 record");
        let r = &records[0];
        assert_eq!(r.family, Family::Ipv6);
        assert_eq!(
            (r.proto, r.dport, r.prefix.as_str()),
            (17, Some(9999), DENY)
        );
        assert_eq!(r.src, "fd00::1".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.dst, "fd00::99".parse::<IpAddr>().expect("ip"));
    }

    /// A listener sees only its own namespace's records.
    #[tokio::test]
    async fn kernel_listeners_are_isolated_per_namespace() {
        let (a, b) = (TestNetns::new(), TestNetns::new());
        let mut in_a = open_in_async(a.path.clone(), GROUP).await.expect("open a");
        let mut in_b = open_in_async(b.path.clone(), GROUP).await.expect("open b");
        assert_ne!(
            in_a.netns_cookie().expect("cookie a"),
            in_b.netns_cookie().expect("cookie b")
        );
        assert_eq!(
            in_a.netns_cookie().expect("cookie a"),
            netns::cookie(a.path.clone()).await.expect("cookie of a")
        );

        b.udp("192.0.2.99:9999");
        assert!(next(&mut in_b).await.is_some(), "b sees its own record");
        assert!(quiet(&mut in_a).await, "a saw b's record");

        a.udp("192.0.2.99:9999");
        assert!(next(&mut in_a).await.is_some(), "a sees its own record");
        assert!(quiet(&mut in_b).await, "b saw a's record");
    }

    /// A group is held by one socket per namespace: a second bind is refused with a typed
    /// error, and the group is free again once the first listener is dropped.
    #[tokio::test]
    async fn kernel_second_bind_of_a_group_is_group_taken() {
        let ns = TestNetns::new();
        let first = open_in_async(ns.path.clone(), GROUP).await.expect("open");
        let second = open_in_async(ns.path.clone(), GROUP).await;
        match second {
            Err(NflogError::GroupTaken { group, .. }) => assert_eq!(group, GROUP),
            other => panic!("expected GroupTaken, got {other:?}"),
        }
        // Another group in the same namespace is fine.
        let other = open_in_async(ns.path.clone(), GROUP + 1).await;
        assert!(other.is_ok(), "{other:?}");

        drop(first);
        let mut again = open_in_async(ns.path.clone(), GROUP)
            .await
            .expect("the group is free after the first listener is dropped");
        ns.udp("192.0.2.99:9999");
        assert!(next(&mut again).await.is_some());
    }

    /// The sync form works from within a runtime, and refuses the host's namespace.
    #[tokio::test]
    async fn kernel_open_in_refuses_the_host_namespace() {
        let host = open_in(Path::new("/proc/self/ns/net"), GROUP);
        assert!(
            matches!(
                host,
                Err(NflogError::Netns(NetnsError::HostNamespace { .. }))
            ),
            "{host:?}"
        );
        let ns = TestNetns::new();
        let listener = open_in(&ns.path, GROUP);
        assert!(listener.is_ok(), "{listener:?}");
    }

    /// What a listener does when its namespace is deleted (`ip netns del`): the socket holds
    /// the namespace, so it lives on; `recv` neither fails nor ends, it waits.
    #[tokio::test]
    async fn kernel_namespace_deleted_under_a_listener() {
        let ns = TestNetns::new();
        let mut listener = open_in_async(ns.path.clone(), GROUP).await.expect("open");
        let cookie = listener.netns_cookie().expect("cookie");
        ok("ip", &["netns", "del", &ns.name], None);
        assert!(!ns.path.exists());
        assert!(
            quiet(&mut listener).await,
            "recv returned after the netns was deleted"
        );
        assert_eq!(listener.netns_cookie().expect("cookie"), cookie);
        // The path is gone: a new listener cannot be opened there.
        let gone = open_in_async(ns.path.clone(), GROUP).await;
        assert!(
            matches!(&gone, Err(NflogError::Netns(e)) if e.is_gone()),
            "{gone:?}"
        );
    }

    /// A flood overflows the receive buffer: the listener counts the overflow and the lost
    /// records (from the sequence gaps) and keeps receiving.
    #[tokio::test]
    async fn kernel_overflow_is_counted_and_survived() {
        const FLOOD: u32 = 20_000;
        let ns = TestNetns::new();
        let mut listener = open_in_async(ns.path.clone(), GROUP).await.expect("open");
        // Nothing reads the listener while this thread sends.
        netns::run_in_netns(&ns.path, || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for _ in 0..FLOOD {
                let _ = socket.send_to(b"x", "192.0.2.99:9999");
            }
            Ok(())
        })
        .expect("flood");
        let mut received = 0;
        while let Ok(records) = tokio::time::timeout(QUIET, listener.recv()).await {
            received += records.expect("recv keeps going after ENOBUFS").len() as u64;
        }
        // One more record after the flood shows a gap at its end too.
        ns.udp("192.0.2.99:9999");
        let last = next(&mut listener).await.expect("a record after the flood");
        received += last.len() as u64;
        let stats = listener.stats();
        eprintln!("flood of {FLOOD}: {stats:?}");
        assert!(stats.overflows >= 1, "{stats:?}");
        assert!(stats.lost > 0, "{stats:?}");
        assert_eq!(stats.records, received);
        assert_eq!(
            stats.records + stats.lost,
            u64::from(FLOOD) + 1,
            "{stats:?}"
        );
    }

    /// Prints one raw datagram from the kernel (run with `--nocapture` to refresh
    /// [`KERNEL_UDP`]) and checks that the fixture parses as this kernel's datagram does.
    #[tokio::test]
    async fn kernel_datagram_matches_the_fixture() {
        let ns = TestNetns::new();
        let mut listener = open_in_async(ns.path.clone(), GROUP).await.expect("open");
        ns.udp("192.0.2.99:9999");
        let datagram = tokio::time::timeout(ARRIVE, listener.recv_datagram())
            .await
            .expect("a datagram within 2 s")
            .expect("recv");
        let datagram = &datagram[..];
        let hex: String = datagram.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("kernel NFLOG datagram: {hex}");
        let (live, skipped) = parse_at(datagram, SystemTime::UNIX_EPOCH);
        let (fixture, _) = parse_at(&unhex(KERNEL_UDP), SystemTime::UNIX_EPOCH);
        assert_eq!(skipped, 0);
        assert_eq!(live.len(), 1);
        // Ports and addresses are the same setup; the source port is the kernel's choice.
        let strip = |r: &Record| Record {
            sport: None,
            ..r.clone()
        };
        assert_eq!(strip(&live[0]), strip(&fixture[0]));
    }

    // -----------------------------------------------------------------------------------------
    // Parsing fixtures

    /// One datagram captured from this kernel (6.18) by `kernel_datagram_matches_the_fixture`:
    /// the record of a UDP datagram 192.0.2.1:<sport> -> 192.0.2.99:9999 logged in the output
    /// hook with prefix "egresstrator deny", group 4242, uid 0, seq 0.
    /// Native byte order (x86_64, little-endian) in the netlink headers, as the kernel sends.
    const KERNEL_UDP: &str = "7800000000040000000000000000000002001092080001000800030016000a00\
        656772657373747261746f722064656e79000000080005000000000308000b00\
        0000000008000e000000000008000c0000000000210009004500001de64a4000\
        4011d020c0000201c000026381e5270f0009847f78000000";

    fn unhex(hex: &str) -> Vec<u8> {
        let hex: String = hex.split_whitespace().collect();
        (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// A received time far from any real timestamp, to tell the two apart.
    fn received() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = ((NLA_HDRLEN + value.len()) as u16).to_ne_bytes().to_vec();
        a.extend(kind.to_ne_bytes());
        a.extend(value);
        a.resize(align4(a.len()), 0);
        a
    }

    /// One packet message as the kernel builds it: nfgenmsg, then the attributes.
    fn packet_message(family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![family, 0];
        body.extend(GROUP.to_be_bytes());
        for a in attrs {
            body.extend(a);
        }
        let mut m = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(MSG_PACKET.to_ne_bytes());
        m.extend([0; 10]);
        m.extend(body);
        m
    }

    fn hdr(hw_protocol: u16) -> Vec<u8> {
        let mut v = hw_protocol.to_be_bytes().to_vec();
        v.extend([3, 0]);
        attr(NFULA_PACKET_HDR, &v)
    }

    fn ipv4(options: usize, proto: u8, fragment: u16, transport: &[u8]) -> Vec<u8> {
        let ihl = 20 + options;
        let mut p = vec![0x40 | (ihl / 4) as u8, 0, 0, 0, 0, 0];
        p.extend(fragment.to_be_bytes());
        p.extend([64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        p.extend(vec![1; options]);
        p.extend(transport);
        p
    }

    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p.extend(ip6("fd00::1"));
        p.extend(ip6("fd00::99"));
        p.extend(rest);
        p
    }

    fn ip6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().expect("ipv6").octets()
    }

    /// The record of one synthetic packet message, or the skip count when there is none.
    fn one(message: &[u8]) -> Result<Record, usize> {
        let (records, skipped) = parse_at(message, received());
        match <[Record; 1]>::try_from(records) {
            Ok([record]) => Ok(record),
            Err(_) => Err(skipped),
        }
    }

    /// The datagram the kernel sent parses into the record it stands for.
    #[cfg(target_endian = "little")]
    #[test]
    fn parses_the_kernels_datagram() {
        let (records, skipped) = parse_at(&unhex(KERNEL_UDP), received());
        assert_eq!(skipped, 0);
        assert_eq!(
            records,
            [Record {
                prefix: DENY.to_owned(),
                family: Family::Ipv4,
                proto: 17,
                src: ip("192.0.2.1"),
                dst: ip("192.0.2.99"),
                sport: Some(33253),
                dport: Some(9999),
                uid: Some(0),
                seq: Some(0),
                // Output-hook records carry no kernel timestamp.
                at: received(),
            }]
        );
    }

    /// A datagram may hold several messages; each becomes a record.
    #[cfg(target_endian = "little")]
    #[test]
    fn parses_every_message_of_a_datagram() {
        let one = unhex(KERNEL_UDP);
        let three = [one.clone(), one.clone(), one].concat();
        let (records, skipped) = parse_at(&three, received());
        assert_eq!((records.len(), skipped), (3, 0));
    }

    /// Whatever is cut off or overwritten, parsing never panics, and a message that does
    /// not parse is counted.
    #[cfg(target_endian = "little")]
    #[test]
    fn malformed_datagrams_are_skipped_and_never_panic() {
        let good = unhex(KERNEL_UDP);
        assert_eq!(parse_at(&[], received()), (vec![], 0), "empty");
        for len in 1..good.len() {
            let (records, skipped) = parse_at(&good[..len], received());
            assert_eq!((records.len(), skipped), (0, 1), "cut at {len}");
        }
        for at in 0..good.len() {
            for value in [0x00, 0x01, 0x03, 0x04, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let (records, skipped) = parse_at(&bad, received());
                assert!(records.len() + skipped >= 1, "byte {at} = {value:#x}");
                // The same bytes twice, the first damaged: the second may survive only
                // when the first message's length was left intact.
                let (records, _) = parse_at(&[bad.clone(), good.clone()].concat(), received());
                assert!(records.len() <= 2);
            }
        }

        let set_u16 = |bytes: &mut Vec<u8>, at: usize, v: u16| {
            bytes[at..at + 2].copy_from_slice(&v.to_ne_bytes());
        };
        let set_u32 = |bytes: &mut Vec<u8>, at: usize, v: u32| {
            bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated netlink header", good[..10].to_vec()),
            ("nlmsg_len past the end", {
                let mut b = good.clone();
                set_u32(&mut b, 0, 0xffff_ffff);
                b
            }),
            ("nlmsg_len below the header", {
                let mut b = good.clone();
                set_u32(&mut b, 0, 8);
                b
            }),
            ("zero nlmsg_len", {
                let mut b = good.clone();
                set_u32(&mut b, 0, 0);
                b
            }),
            ("huge nla_len", {
                let mut b = good.clone();
                set_u16(&mut b, 20, 0xffff);
                b
            }),
            ("zero nla_len", {
                let mut b = good.clone();
                set_u16(&mut b, 20, 0);
                b
            }),
            ("nla_len of the last attribute past the end", {
                let mut b = good.clone();
                let payload = 0x54; // offset of the NFULA_PAYLOAD attribute
                set_u16(&mut b, payload, 0x25); // 0x54 + 37 > nlmsg_len 0x78
                b
            }),
            ("no payload", packet_message(2, &[hdr(ETH_P_IP)])),
            (
                "payload too short for an IPv4 header",
                packet_message(2, &[hdr(ETH_P_IP), attr(NFULA_PAYLOAD, &[0x45; 19])]),
            ),
            (
                "IHL below 5",
                packet_message(
                    2,
                    &[
                        hdr(ETH_P_IP),
                        attr(NFULA_PAYLOAD, &{
                            let mut p = ipv4(0, 17, 0, &[0; 8]);
                            p[0] = 0x44;
                            p
                        }),
                    ],
                ),
            ),
            (
                "IHL past the copied bytes",
                packet_message(
                    2,
                    &[
                        hdr(ETH_P_IP),
                        attr(NFULA_PAYLOAD, &{
                            let mut p = ipv4(0, 17, 0, &[]);
                            p[0] = 0x4f;
                            p
                        }),
                    ],
                ),
            ),
            (
                "IPv4 header under an IPv6 hw_protocol",
                packet_message(
                    10,
                    &[
                        hdr(ETH_P_IPV6),
                        attr(NFULA_PAYLOAD, &ipv4(0, 17, 0, &[0; 8])),
                    ],
                ),
            ),
            (
                "IPv6 header cut short",
                packet_message(
                    10,
                    &[hdr(ETH_P_IPV6), attr(NFULA_PAYLOAD, &ipv6(17, &[])[..39])],
                ),
            ),
            (
                "short NFULA_UID",
                packet_message(
                    2,
                    &[
                        attr(NFULA_UID, &[0; 3]),
                        attr(NFULA_PAYLOAD, &ipv4(0, 17, 0, &[0; 8])),
                    ],
                ),
            ),
            (
                "short NFULA_PACKET_HDR",
                packet_message(
                    2,
                    &[
                        attr(NFULA_PACKET_HDR, &[8]),
                        attr(NFULA_PAYLOAD, &ipv4(0, 17, 0, &[0; 8])),
                    ],
                ),
            ),
            (
                "short NFULA_TIMESTAMP",
                packet_message(
                    2,
                    &[
                        attr(NFULA_TIMESTAMP, &[0; 12]),
                        attr(NFULA_PAYLOAD, &ipv4(0, 17, 0, &[0; 8])),
                    ],
                ),
            ),
            ("not a packet message (an NLMSG_ERROR)", {
                let mut b = good.clone();
                set_u16(&mut b, 4, libc::NLMSG_ERROR as u16);
                b
            }),
        ];
        for (what, bytes) in cases {
            assert_eq!(one(&bytes), Err(1), "{what}");
        }
        // A NOOP is neither a record nor a fault.
        let mut noop = good.clone();
        set_u16(&mut noop, 4, libc::NLMSG_NOOP as u16);
        assert_eq!(parse_at(&noop, received()), (vec![], 0));
    }

    /// IPv4: options are skipped to reach the ports; later fragments have none; ICMP has
    /// none; a missing hw header falls back to the nfgenmsg family.
    #[test]
    fn parses_ipv4_headers() {
        let ports = [0x30, 0x39, 0x01, 0xbb];
        let m = packet_message(2, &[attr(NFULA_PAYLOAD, &ipv4(8, 6, 0, &ports))]);
        let r = one(&m).expect("record");
        assert_eq!((r.family, r.proto), (Family::Ipv4, 6));
        assert_eq!((r.src, r.dst), (ip("10.0.0.1"), ip("10.0.0.2")));
        assert_eq!((r.sport, r.dport), (Some(12345), Some(443)));
        assert_eq!(
            (r.prefix.as_str(), r.uid, r.seq, r.at),
            ("", None, None, received())
        );

        let later = packet_message(
            2,
            &[
                hdr(ETH_P_IP),
                attr(NFULA_PAYLOAD, &ipv4(0, 17, 0x00b9, &ports)),
            ],
        );
        assert_eq!(
            one(&later).expect("record").dport,
            None,
            "fragment offset 185"
        );
        let first = packet_message(
            2,
            &[
                hdr(ETH_P_IP),
                attr(NFULA_PAYLOAD, &ipv4(0, 17, 0x2000, &ports)),
            ],
        );
        assert_eq!(
            one(&first).expect("record").dport,
            Some(443),
            "more fragments, offset 0"
        );
        let icmp = packet_message(2, &[attr(NFULA_PAYLOAD, &ipv4(0, 1, 0, &[8, 0, 0, 0]))]);
        let r = one(&icmp).expect("record");
        assert_eq!((r.proto, r.sport, r.dport), (1, None, None));
        let cut = packet_message(2, &[attr(NFULA_PAYLOAD, &ipv4(0, 17, 0, &ports[..3]))]);
        assert_eq!(one(&cut).expect("record").dport, None, "ports cut off");
    }

    /// IPv6: extension headers are walked to the transport header, within the copied bytes.
    #[test]
    fn parses_ipv6_headers() {
        let udp = [0x30, 0x39, 0x27, 0x0f, 0, 9, 0, 0];
        let plain = packet_message(10, &[hdr(ETH_P_IPV6), attr(NFULA_PAYLOAD, &ipv6(17, &udp))]);
        let r = one(&plain).expect("record");
        assert_eq!((r.family, r.proto, r.dport), (Family::Ipv6, 17, Some(9999)));
        assert_eq!((r.src, r.dst), (ip("fd00::1"), ip("fd00::99")));

        // Hop-by-hop (8 bytes), destination options (16 bytes), then TCP.
        let mut chain = vec![60, 0, 1, 4, 0, 0, 0, 0];
        chain.extend([6, 1]);
        chain.extend([0; 14]);
        chain.extend([0x30, 0x39, 0x01, 0xbb]);
        let r = one(&packet_message(
            10,
            &[attr(NFULA_PAYLOAD, &ipv6(0, &chain))],
        ))
        .expect("record");
        assert_eq!((r.proto, r.sport, r.dport), (6, Some(12345), Some(443)));

        // A first fragment has the ports; a later one has none.
        let mut frag = vec![17, 0, 0x00, 0x01, 0, 0, 0, 1];
        frag.extend(udp);
        let r = one(&packet_message(
            10,
            &[attr(NFULA_PAYLOAD, &ipv6(44, &frag))],
        ))
        .expect("record");
        assert_eq!((r.proto, r.dport), (17, Some(9999)));
        frag[2..4].copy_from_slice(&(100u16 << 3).to_be_bytes());
        let r = one(&packet_message(
            10,
            &[attr(NFULA_PAYLOAD, &ipv6(44, &frag))],
        ))
        .expect("record");
        assert_eq!((r.proto, r.dport), (17, None));

        // Extension headers that run past the copied bytes: the first one not read.
        let long = [17, 200, 0, 0, 0, 0, 0, 0];
        let r = one(&packet_message(10, &[attr(NFULA_PAYLOAD, &ipv6(0, &long))])).expect("record");
        assert_eq!((r.proto, r.dport), (17, None));
        let r = one(&packet_message(10, &[attr(NFULA_PAYLOAD, &ipv6(0, &[17]))])).expect("record");
        assert_eq!((r.proto, r.dport), (0, None));
    }

    /// Prefix, uid, sequence and timestamp attributes, and their bounds.
    #[test]
    fn parses_metadata_attributes() {
        let payload = attr(NFULA_PAYLOAD, &ipv4(0, 17, 0, &[0, 1, 0, 2]));
        let mut stamp = 1_700_000_000u64.to_be_bytes().to_vec();
        stamp.extend(250_000u64.to_be_bytes());
        let m = packet_message(
            2,
            &[
                attr(NFULA_PREFIX, b"egresstrator audit\0"),
                attr(NFULA_UID, &1000u32.to_be_bytes()),
                attr(NFULA_SEQ, &7u32.to_be_bytes()),
                attr(NFULA_TIMESTAMP, &stamp),
                // Unknown and flagged attribute types are ignored.
                attr(0x8000 | 99, &[1, 2, 3]),
                payload.clone(),
            ],
        );
        let r = one(&m).expect("record");
        assert_eq!(r.prefix, AUDIT);
        assert_eq!((r.uid, r.seq), (Some(1000), Some(7)));
        assert_eq!(
            r.at,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)
        );

        // A prefix without its NUL, too long and not UTF-8: bounded and replaced.
        let mut long = vec![b'a'; 300];
        long[0] = 0xff;
        let r = one(&packet_message(
            2,
            &[attr(NFULA_PREFIX, &long), payload.clone()],
        ))
        .expect("record");
        assert_eq!(r.prefix.chars().count(), PREFIX_MAX);
        assert!(r.prefix.starts_with('\u{fffd}'));

        // Timestamps that cannot be a time fall back to the time received; extreme ones that
        // can are kept. None panics.
        for (sec, usec, fallback) in [
            (u64::MAX, 0u64, true),
            (0, 1_000_000, true),
            (u64::MAX / 2, 999_999, false),
        ] {
            let mut stamp = sec.to_be_bytes().to_vec();
            stamp.extend(usec.to_be_bytes());
            let m = packet_message(2, &[attr(NFULA_TIMESTAMP, &stamp), payload.clone()]);
            let r = one(&m).expect("record");
            assert_eq!(r.at == received(), fallback, "{sec} {usec}");
        }
    }

    /// Gaps in the kernel's sequence numbers are lost records; wrapping is not a gap.
    #[test]
    fn counts_sequence_gaps() {
        assert_eq!(missed(None, 5), 0);
        assert_eq!(missed(Some(5), 5), 0);
        assert_eq!(missed(Some(5), 9), 4);
        assert_eq!(missed(Some(u32::MAX), 1), 2);
        assert_eq!(missed(Some(9), 5), 0, "going back is not loss");
    }

    /// The config request the kernel gets: header, nfgenmsg with the group in network
    /// order, one padded attribute.
    #[cfg(target_endian = "little")]
    #[test]
    fn encodes_config_requests() {
        let m = config_message(1, GROUP, libc::NFULA_CFG_CMD as u16, &[1]);
        assert_eq!(
            m,
            [
                28, 0, 0, 0, 0x01, 0x04, 0x05, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
                0, 0, 0x10, 0x92, // nfgenmsg: AF_UNSPEC, v0, group 4242
                5, 0, 1, 0, 1, 0, 0, 0, // NFULA_CFG_CMD = BIND, padded
            ]
        );
        let mode = config_message(2, GROUP, libc::NFULA_CFG_MODE as u16, &[0, 0, 0, 128, 2, 0]);
        assert_eq!(mode.len(), 32);
        assert_eq!(&mode[20..30], &[10, 0, 2, 0, 0, 0, 0, 128, 2, 0]);
    }
}
