//! The network namespace cookie: `SO_NETNS_COOKIE` (the asm-generic value, used by x86_64 and
//! aarch64; Linux 5.14+), a 64-bit identity the kernel gives each network namespace and never
//! hands out again while the system runs. Inode numbers of namespace files are reused, lowest
//! first, as soon as a namespace is freed, so they cannot tell a namespace from its successor.
//! A leaf: it uses no other module of the crate.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SO_NETNS_COOKIE: libc::c_int = 71;

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
