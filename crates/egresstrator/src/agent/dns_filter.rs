//! The DNS filter (`--dns-filter`, label `egresstrator.dns-filter=true`): DNS is also an
//! exit, since a workload can ask its allowed resolver for `<data>.attacker.example`. With
//! the filter on, the fqdn learner's thread also holds the namespace's DNS queries
//! (`fqdn::QUERY_QUEUE`) and lets one out only when a line of the container allows its name
//! (a name line, or `NAME:dns`). A refused UDP query is answered `REFUSED` at once, written
//! back into the namespace from the resolver's address through a raw socket, and never
//! forwarded; a refused TCP query is dropped. Each refusal is a `monitor` record. In audit
//! mode the query goes on and the record says `audit`.
//!
//! A query the filter cannot read (a TCP segment holding part of one, two questions, not
//! DNS at all) does not leave either: the filter cannot tell what it asks.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use egresstrator_core::dns_answer::{self, Outgoing};
use egresstrator_core::Ruleset;

use crate::flows::{FlowRecord, FlowVerdict};
use crate::status::StatusBoard;

/// The container a namespace's DNS records are attributed to.
#[derive(Clone, Debug)]
pub(super) struct Owner {
    pub id: String,
    pub name: String,
    pub acls: Vec<String>,
}

/// Raw sockets inside the namespace, for writing `REFUSED` answers back to the asker.
pub(super) struct Injector {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

impl Injector {
    /// Opens the sockets in the calling thread's namespace (IPv6 may be off there).
    pub(super) fn open() -> io::Result<Injector> {
        Ok(Injector {
            v4: raw_socket(libc::AF_INET)?,
            v6: raw_socket(libc::AF_INET6).ok(),
        })
    }

    fn send(&self, packet: &[u8], to: IpAddr) -> io::Result<()> {
        let (fd, addr, len) = match to {
            IpAddr::V4(a) => {
                // SAFETY: an all-zero sockaddr_in is valid; the fields that matter are set.
                let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                let mut storage: libc::sockaddr_storage =
                    // SAFETY: an all-zero sockaddr_storage is valid.
                    unsafe { std::mem::zeroed() };
                // SAFETY: sockaddr_in fits in sockaddr_storage.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                (&self.v4, storage, std::mem::size_of::<libc::sockaddr_in>())
            }
            IpAddr::V6(a) => {
                let Some(fd) = &self.v6 else {
                    return Err(io::Error::other("no IPv6 raw socket in this namespace"));
                };
                // SAFETY: an all-zero sockaddr_in6 is valid; the fields that matter are set.
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr.s6_addr = a.octets();
                let mut storage: libc::sockaddr_storage =
                    // SAFETY: an all-zero sockaddr_storage is valid.
                    unsafe { std::mem::zeroed() };
                // SAFETY: sockaddr_in6 fits in sockaddr_storage.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                (fd, storage, std::mem::size_of::<libc::sockaddr_in6>())
            }
        };
        // SAFETY: `packet` is valid for its length, `addr` holds a socket address of `len`
        // bytes, and the descriptor is open.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_storage).cast(),
                len as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An `IPPROTO_RAW` socket: the packets written to it carry their own IP header.
fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Decides one queued query packet: true lets it out. Refusals are answered (UDP), recorded
/// for `monitor` and counted.
pub(super) fn decide(
    packet: &[u8],
    ruleset: &Ruleset,
    owner: Option<&Owner>,
    injector: &mut Injector,
    board: &StatusBoard,
) -> bool {
    let audits = ruleset.audits();
    let query = match dns_answer::outgoing(packet) {
        Outgoing::Empty => return true,
        Outgoing::Unreadable => {
            tracing::debug!("a DNS packet the filter cannot read does not leave");
            return audits;
        }
        Outgoing::Query(q) => q,
    };
    let allowed = query
        .qname
        .as_deref()
        .and_then(|n| ruleset.may_resolve(n))
        .is_some();
    if allowed {
        return true;
    }
    let qname = query
        .qname
        .clone()
        .unwrap_or_else(|| "(unreadable name)".into());
    if let Some(owner) = owner {
        let record = FlowRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            verdict: if audits {
                FlowVerdict::Audit
            } else {
                FlowVerdict::Deny
            },
            id: owner.id.clone(),
            name: owner.name.clone(),
            acls: owner.acls.clone(),
            posture: ruleset.posture_label(),
            proto: crate::flows::proto_name(query.proto),
            src: query.src,
            dst: query.dst,
            dport: Some(53),
            reason: format!("DNS query for {qname}: no acl line names it (DNS filter)"),
            qname: Some(qname.clone()),
        };
        tracing::info!(target: "egresstrator::flows", "{}", record.line());
        board.publish(record);
    }
    if audits {
        return true;
    }
    if query.proto == 17 {
        match dns_answer::refused_reply(packet) {
            Some(reply) => {
                if let Err(e) = injector.send(&reply, query.src) {
                    tracing::debug!("cannot answer REFUSED for {qname}: {e}");
                }
            }
            None => tracing::debug!("no REFUSED answer for {qname}"),
        }
    }
    false
}
