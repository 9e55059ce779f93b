//! The names of the calling thread's network namespace's interfaces, over netlink (from a
//! socket made in that namespace: `/sys` would show the mount namespace's view).
//!
//! One definition for the agent and for `egresstrator-runc`, which includes this file by path
//! (it does not link the agent's library: dockerd runs it for every runc verb).

use std::io;

/// The interface names, sorted.
pub fn interface_names() -> io::Result<Vec<String>> {
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
