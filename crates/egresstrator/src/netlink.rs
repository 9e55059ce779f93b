//! The few netlink pieces that `nflog` (NFLOG records), `nft` (the nftables generation) and
//! `conntrack` (the sweep) need, over raw netlink sockets with `libc`: opening a socket,
//! sending a request, receiving a datagram, and walking its messages and attributes with
//! every length checked, so that nothing the kernel sends can make them index out of bounds
//! or panic. A leaf: it uses no
//! other module of the crate. (Why hand-written rather than a netlink crate: see `nflog.rs`.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct nlmsghdr`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`, which opens every nfnetlink message body.
pub(crate) const NFGENMSG_LEN: usize = 4;
/// `struct nlattr`.
pub(crate) const NLA_HDRLEN: usize = 4;
/// `nlattr.nla_type` without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;

/// Opens a netlink socket of `protocol` (`NETLINK_NETFILTER`, `NETLINK_ROUTE`) in the calling
/// thread's namespace, bound to a port id the kernel picks if asked.
pub(crate) fn open(protocol: libc::c_int, bind: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if bind {
        // SAFETY: all-zero is a valid `sockaddr_nl` (port id 0: the kernel assigns one).
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `address` is a valid sockaddr_nl of the length passed.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

/// Sends one netlink message to the kernel; a short send is an error.
pub(crate) fn send_all(fd: &OwnedFd, message: &[u8]) -> io::Result<()> {
    // SAFETY: `message` is valid for its length; the descriptor is open. Unconnected netlink
    // sockets send to the kernel.
    let sent = unsafe { libc::send(fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short send to the kernel",
        ));
    }
    Ok(())
}

/// `recv` with `MSG_TRUNC`: returns the datagram's full length, which may exceed `buf`.
pub(crate) fn recv_raw(fd: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; the descriptor is open.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The netlink messages of a datagram as (type, seq, body). A header that does not fit ends
/// the walk with one `None`.
pub(crate) fn messages(datagram: &[u8]) -> impl Iterator<Item = Option<(u16, u32, &[u8])>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let header = rest.get(..NLMSG_HDRLEN);
        let len = header
            .and_then(|h| h.get(0..4))
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .map(|l| l as usize);
        let (Some(header), Some(len)) = (header, len) else {
            rest = &[];
            return Some(None);
        };
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(None);
        }
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        let body = rest.get(NLMSG_HDRLEN..len).unwrap_or_default();
        rest = rest.get(align4(len)..).unwrap_or_default();
        Some(Some((kind, seq, body)))
    })
}

/// The attributes of a message body as (type, value); `None` when one does not fit.
pub(crate) fn attributes(mut rest: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let header = rest.get(..NLA_HDRLEN)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN {
            return None;
        }
        out.push((kind, rest.get(NLA_HDRLEN..len)?));
        // The last attribute may lack its padding.
        rest = rest.get(align4(len)..).unwrap_or_default();
    }
    Some(out)
}

/// A big-endian `u32` attribute value.
pub(crate) fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// Netlink's 4-byte alignment.
pub(crate) fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// `setsockopt` with a plain value.
pub(crate) fn set_option<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size given; the descriptor is open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
