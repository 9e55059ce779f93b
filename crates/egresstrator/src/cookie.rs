//! The network namespace cookie: `SO_NETNS_COOKIE` (the asm-generic value, used by x86_64 and
//! aarch64; Linux 5.14+), a 64-bit identity the kernel gives each network namespace and never
//! hands out again while the system runs. Inode numbers of namespace files are reused, lowest
//! first, as soon as a namespace is freed, so they cannot tell a namespace from its successor.
//!
//! Reading it from a socket needs a thread inside the namespace. Linux 6.18 also gives every
//! namespace a never-reused 64-bit id, read from the namespace's file with `NS_GET_ID`, and
//! on 6.18 a network namespace's id is its cookie. Whether that holds on the running kernel
//! is checked at run time by the namespace code that reads cookies, never assumed.
//!
//! A leaf: it uses no other module of the crate.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SO_NETNS_COOKIE: libc::c_int = 71;
/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`, Linux 4.11+): the `CLONE_NEW*` kind of a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// `NS_GET_ID` (`_IOR(0xb7, 13, __u64)`, Linux 6.18+): the id of a namespace file's namespace.
const NS_GET_ID: libc::c_ulong = 0x8008_b70d;

/// The cookie of the namespace a socket lives in.
pub fn of_socket(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the descriptor is open; `cookie` and `len` are valid out-parameters of the
    // sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::addr_of_mut!(cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the calling thread's network namespace, read from a socket made there.
pub fn of_thread() -> io::Result<u64> {
    // SAFETY: plain syscall wrapper; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    of_socket(&socket)
}

/// The `CLONE_NEW*` kind of the namespace an nsfs file stands for.
pub fn namespace_type(file: &impl AsRawFd) -> io::Result<libc::c_int> {
    // SAFETY: the descriptor is open; NS_GET_NSTYPE takes no argument and returns the type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(kind)
}

/// The id (`NS_GET_ID`) of the namespace an nsfs file stands for. `ENOTTY` before Linux 6.18.
pub fn namespace_id(file: &impl AsRawFd) -> io::Result<u64> {
    let mut id: u64 = 0;
    // SAFETY: the descriptor is open and `id` is the u64 out-parameter NS_GET_ID writes.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_ID as _, std::ptr::addr_of_mut!(id)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}
