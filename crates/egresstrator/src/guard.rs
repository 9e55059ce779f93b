//! Whether this kernel keeps raw frames in: a self-test of the raw-socket guard, run once
//! when the agent starts.
//!
//! Why it exists: the guard (`egresstrator_core::render::guard`) needs the nftables `netdev`
//! family's `egress` hook (Linux 5.16, `CONFIG_NETFILTER_EGRESS`), route realms
//! (`CONFIG_IP_ROUTE_CLASSID`) for `meta rtclassid`, and, for frames sent with
//! `PACKET_QDISC_BYPASS`, a kernel whose bypass path runs that hook (newer than the hook). A kernel
//! version says little about a distribution kernel's configuration, so instead of guessing,
//! the agent tries it: in a throwaway network namespace of its own, it loads the guard on
//! `lo` and sends frames through `AF_PACKET` sockets (raw and cooked, with and without the
//! qdisc bypass). Controls make sure the test can fail: before the guard, such a frame must
//! arrive, and with the guard an ordinary datagram must still arrive.
//!
//! What it must never do: touch any namespace but the one it creates. The test runs on a
//! dedicated thread that `unshare`s into a new namespace and exits afterwards, which frees it.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::nft::Nft;

/// `PACKET_QDISC_BYPASS` from `<linux/if_packet.h>`.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// How long a datagram may take to arrive over `lo` before it counts as not delivered.
const WAIT: Duration = Duration::from_millis(200);

/// What the self-test found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// Raw frames are dropped and ordinary traffic passes: the guard holds on this kernel.
    Verified,
    /// The guard cannot hold here; every container is bypassable for this reason.
    Missing(String),
}

impl Support {
    /// Why every container is bypassable on this kernel, if it is.
    pub fn missing(&self) -> Option<&str> {
        match self {
            Support::Verified => None,
            Support::Missing(why) => Some(why),
        }
    }
}

/// The self-test's result for this process: run on first use, then remembered. Blocks for
/// the test's tens of milliseconds the first time (call it once at start, off the async
/// workers).
pub fn support() -> &'static Support {
    static SUPPORT: std::sync::OnceLock<Support> = std::sync::OnceLock::new();
    SUPPORT.get_or_init(self_test)
}

/// Runs the self-test on a dedicated thread and waits for it (tens of milliseconds).
pub fn self_test() -> Support {
    let handle = std::thread::Builder::new()
        .name("egt-guard-test".into())
        .spawn(run);
    match handle.map(std::thread::JoinHandle::join) {
        Ok(Ok(support)) => support,
        Ok(Err(_)) => Support::Missing("the guard's self-test panicked".into()),
        Err(e) => Support::Missing(format!("cannot start the guard's self-test: {e}")),
    }
}

/// The variants of `AF_PACKET` sending that the guard must stop.
const ATTACKS: [(Kind, bool); 4] = [
    (Kind::Raw, false),
    (Kind::Cooked, false),
    (Kind::Raw, true),
    (Kind::Cooked, true),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `SOCK_RAW`: the sender writes the link header.
    Raw,
    /// `SOCK_DGRAM`: the kernel writes it.
    Cooked,
}

fn run() -> Support {
    // SAFETY: unshare on this thread only (network namespaces are per task); the thread exits
    // when this function returns, and the namespace with it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Support::Missing(format!(
            "cannot create a network namespace for the guard's self-test: {}",
            io::Error::last_os_error()
        ));
    }
    match test_in_fresh_namespace() {
        Ok(()) => Support::Verified,
        Err(why) => Support::Missing(why),
    }
}

fn test_in_fresh_namespace() -> Result<(), String> {
    loopback_up().map_err(|e| format!("cannot bring lo up in the self-test namespace: {e}"))?;
    // A frame written to lo is received without a route: the kernel drops it as martian
    // (127/8 destination, local source) unless route_localnet and accept_local are on. These
    // are this throwaway namespace's own settings (/proc/sys/net follows the thread's
    // namespace).
    for knob in ["route_localnet", "accept_local"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/lo/{knob}"), "1")
            .map_err(|e| format!("cannot set {knob} in the self-test namespace: {e}"))?;
    }
    let sink = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sink.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let port = sink.local_addr().map_err(|e| e.to_string())?.port();
    let ordinary = |tag: &str| -> Result<bool, String> {
        let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        s.send_to(tag.as_bytes(), ("127.0.0.1", port))
            .map_err(|e| e.to_string())?;
        Ok(received(&sink, tag))
    };
    if !ordinary("control-before")? {
        return Err("the self-test's ordinary datagram over lo did not arrive".into());
    }
    // The test can fail: without the guard, a raw frame arrives.
    if !send_raw(Kind::Cooked, false, port, "raw-before")
        .is_ok_and(|()| received(&sink, "raw-before"))
    {
        return Err("inconclusive: a raw frame on lo did not arrive even without the guard".into());
    }
    let (script, _) = egresstrator_core::render::guard::render(&["lo".to_owned()]);
    let mut nft = Nft::new().map_err(|e| e.to_string())?;
    nft.run(&script).map_err(|e| {
        format!("the kernel refused the guard (needs the netdev egress hook, Linux 5.16+, and CONFIG_IP_ROUTE_CLASSID): {e}")
    })?;
    for (kind, bypass) in ATTACKS {
        let tag = format!("raw-{kind:?}-{bypass}");
        // A dropped frame makes sendto fail (ENOBUFS) or simply never arrive.
        if send_raw(kind, bypass, port, &tag).is_ok() && received(&sink, &tag) {
            let how = match (kind, bypass) {
                (Kind::Raw, false) => "SOCK_RAW",
                (Kind::Cooked, false) => "SOCK_DGRAM",
                (Kind::Raw, true) => "SOCK_RAW with PACKET_QDISC_BYPASS",
                (Kind::Cooked, true) => "SOCK_DGRAM with PACKET_QDISC_BYPASS",
            };
            return Err(format!(
                "a frame from an AF_PACKET socket ({how}) left despite the guard"
            ));
        }
    }
    if !ordinary("control-after")? {
        return Err("with the guard loaded, ordinary traffic over lo did not arrive".into());
    }
    Ok(())
}

/// True when `tag` arrives at `sink` within [`WAIT`] (other datagrams are skipped).
fn received(sink: &UdpSocket, tag: &str) -> bool {
    let mut buf = [0u8; 64];
    while let Ok(n) = sink.recv(&mut buf) {
        if &buf[..n] == tag.as_bytes() {
            return true;
        }
    }
    false
}

/// Sets `IFF_UP` on `lo` in the calling thread's namespace.
fn loopback_up() -> io::Result<()> {
    let socket = owned(
        // SAFETY: plain syscall wrapper; checked by `owned`.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
    )?;
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming an interface; the ioctls read and write only it.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends one IPv4 UDP datagram 127.0.0.1 → 127.0.0.1:`port` through an `AF_PACKET` socket on
/// `lo`, past the IP stack.
fn send_raw(kind: Kind, bypass: bool, port: u16, payload: &str) -> io::Result<()> {
    let proto = (libc::ETH_P_IP as u16).to_be();
    let sock_type = match kind {
        Kind::Raw => libc::SOCK_RAW,
        Kind::Cooked => libc::SOCK_DGRAM,
    };
    let socket = owned(
        // SAFETY: plain syscall wrapper; checked by `owned`.
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                sock_type | libc::SOCK_CLOEXEC,
                proto.into(),
            )
        },
    )?;
    if bypass {
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid int option value of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_QDISC_BYPASS,
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the name is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut frame = Vec::new();
    if kind == Kind::Raw {
        // lo's link header: zero MAC addresses and the EtherType.
        frame.extend_from_slice(&[0u8; 12]);
        frame.extend_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
    }
    frame.extend_from_slice(&ipv4_udp(port, payload.as_bytes()));
    // SAFETY: all-zero is a valid sockaddr_ll; the fields set below are plain integers.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as libc::c_ushort;
    to.sll_protocol = proto;
    to.sll_ifindex = ifindex as libc::c_int;
    to.sll_halen = 6;
    // SAFETY: `frame` and `to` are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An IPv4 header and UDP datagram from and to 127.0.0.1, with correct checksums.
fn ipv4_udp(port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let lo = [127u8, 0, 0, 1];
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend_from_slice(&lo);
    p.extend_from_slice(&lo);
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&lo);
    pseudo.extend_from_slice(&lo);
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let udp_sum = checksum(&pseudo, 0);
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071) of `data`, big-endian.
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's worked example: the one's complement sum of these words is 0xddf2.
    #[test]
    fn checksum_matches_rfc1071() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data, 0), !0xddf2);
        // A header with its checksum filled in sums to zero.
        let p = ipv4_udp(9, b"x");
        assert_eq!(checksum(&p[..20], 0), 0);
    }
}
