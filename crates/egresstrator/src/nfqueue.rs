//! An NFQUEUE socket (`nfnetlink_queue`): packets a rule queues are held by the kernel until
//! this socket gives each its verdict. The fqdn learner holds DNS answers with it until the
//! addresses they name are in the container's set.
//!
//! Hand-written over the crate's [`crate::netlink`] helpers rather than with the `nfq` crate:
//! that crate does not expose its descriptor, so a thread blocked in its `recv` can neither
//! time out nor be told to stop, and it panics (`assert!`) on some kernel answers. This is a
//! bind, three settings, one receive loop and one verdict message.
//!
//! The socket belongs to the network namespace of the thread that opens it, and queue numbers
//! are per namespace. Closing it (or the agent dying) makes the kernel drop the packets it
//! still holds and, with the rule's `--queue-bypass`, let later ones through unqueued.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use crate::netlink::{
    align4, attributes, be32, messages, recv_raw, send_all, set_option, NFGENMSG_LEN, NLA_HDRLEN,
    NLMSG_HDRLEN,
};

/// `NFNL_SUBSYS_QUEUE << 8`.
const SUBSYS_QUEUE: u16 = 3 << 8;
const MSG_PACKET: u16 = SUBSYS_QUEUE; // NFQNL_MSG_PACKET = 0
const MSG_VERDICT: u16 = SUBSYS_QUEUE | 1;
const MSG_CONFIG: u16 = SUBSYS_QUEUE | 2;

const CFG_CMD: u16 = 1;
const CFG_PARAMS: u16 = 2;
const CFG_QUEUE_MAXLEN: u16 = 3;
const CFG_MASK: u16 = 4;
const CFG_FLAGS: u16 = 5;
const CFG_CMD_BIND: u8 = 1;
const COPY_PACKET: u8 = 2;
/// `NFQA_CFG_F_FAIL_OPEN`: a full queue accepts packets instead of dropping them.
const CFG_F_FAIL_OPEN: u32 = 1;

const ATTR_PACKET_HDR: u16 = 1;
const ATTR_VERDICT_HDR: u16 = 2;
const ATTR_PAYLOAD: u16 = 10;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Largest datagram read: a 64 KiB packet and its attributes.
const DATAGRAM_MAX: usize = 65536 + 4096;

/// A queued packet: the queue it came from, its id (for the verdict) and its IP packet.
#[derive(Debug)]
pub struct Packet {
    pub queue: u16,
    pub id: u32,
    pub payload: Vec<u8>,
}

/// A socket bound to one or more queues.
pub struct Queue {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Queue {
    /// Opens a socket in the calling thread's namespace and binds queues `nums`: whole
    /// packets copied, at most `max_len` held per queue (past that the kernel accepts them:
    /// fail-open), each [`Queue::recv`] waiting at most `wait`.
    pub fn bind(nums: &[u16], max_len: u32, wait: Duration) -> io::Result<Queue> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_usec: wait.subsec_micros() as libc::suseconds_t,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        let mut queue = Queue {
            fd,
            seq: 0,
            buf: vec![0u8; DATAGRAM_MAX],
        };
        let mut params = 0xffffu32.to_be_bytes().to_vec();
        params.push(COPY_PACKET);
        let cmd = [CFG_CMD_BIND, 0, 0, 0];
        for &num in nums {
            queue.configure(num, &[(CFG_CMD, &cmd)])?;
            queue.configure(
                num,
                &[
                    (CFG_PARAMS, &params),
                    (CFG_QUEUE_MAXLEN, &max_len.to_be_bytes()),
                    (CFG_MASK, &CFG_F_FAIL_OPEN.to_be_bytes()),
                    (CFG_FLAGS, &CFG_F_FAIL_OPEN.to_be_bytes()),
                ],
            )?;
        }
        Ok(queue)
    }

    fn configure(&mut self, num: u16, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let message = message(
            MSG_CONFIG,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            seq,
            num,
            attrs,
        );
        send_all(&self.fd, &message)?;
        loop {
            let len = recv_raw(&self.fd, &mut self.buf, 0)?.min(self.buf.len());
            for m in messages(&self.buf[..len]) {
                let Some((kind, mseq, body)) = m else { break };
                if kind == libc::NLMSG_ERROR as u16 && mseq == seq && body.len() >= 4 {
                    let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    return match errno {
                        0 => Ok(()),
                        e => Err(io::Error::from_raw_os_error(-e)),
                    };
                }
            }
        }
    }

    /// The next queued packet, or `None` when none came within the wait given to
    /// [`Queue::bind`].
    pub fn recv(&mut self) -> io::Result<Option<Packet>> {
        loop {
            let len = match recv_raw(&self.fd, &mut self.buf, 0) {
                Ok(len) => len.min(self.buf.len()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for m in messages(&self.buf[..len]) {
                let Some((kind, _, body)) = m else { break };
                if kind != MSG_PACKET || body.len() < NFGENMSG_LEN {
                    continue;
                }
                let queue = u16::from_be_bytes([body[2], body[3]]);
                if let Some(mut packet) = parse_packet(&body[NFGENMSG_LEN..]) {
                    packet.queue = queue;
                    // The kernel sends one packet per datagram unless batching is asked for.
                    return Ok(Some(packet));
                }
            }
        }
    }

    /// Lets the packet go on.
    pub fn accept(&mut self, packet: &Packet) -> io::Result<()> {
        self.verdict(packet, NF_ACCEPT)
    }

    /// Drops the packet.
    pub fn drop_packet(&mut self, packet: &Packet) -> io::Result<()> {
        self.verdict(packet, NF_DROP)
    }

    fn verdict(&mut self, packet: &Packet, verdict: u32) -> io::Result<()> {
        let mut hdr = verdict.to_be_bytes().to_vec();
        hdr.extend(packet.id.to_be_bytes());
        self.seq += 1;
        let message = message(
            MSG_VERDICT,
            libc::NLM_F_REQUEST as u16,
            self.seq,
            packet.queue,
            &[(ATTR_VERDICT_HDR, &hdr)],
        );
        send_all(&self.fd, &message)
    }
}

fn parse_packet(attrs: &[u8]) -> Option<Packet> {
    let mut id = None;
    let mut payload = None;
    for (kind, value) in attributes(attrs)? {
        match kind {
            ATTR_PACKET_HDR => id = be32(value),
            ATTR_PAYLOAD => payload = Some(value.to_vec()),
            _ => {}
        }
    }
    Some(Packet {
        queue: 0,
        id: id?,
        payload: payload.unwrap_or_default(),
    })
}

/// One nfnetlink message for queue `num` with the given attributes.
fn message(kind: u16, flags: u16, seq: u32, num: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let body: usize = attrs
        .iter()
        .map(|(_, v)| align4(NLA_HDRLEN + v.len()))
        .sum();
    let total = NLMSG_HDRLEN + NFGENMSG_LEN + body;
    let mut m = Vec::with_capacity(total);
    m.extend((total as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend([libc::AF_UNSPEC as u8, libc::NFNETLINK_V0 as u8]);
    m.extend(num.to_be_bytes());
    for (kind, value) in attrs {
        let len = NLA_HDRLEN + value.len();
        m.extend((len as u16).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(*value);
        m.resize(m.len() + align4(len) - len, 0);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_message_is_read_and_a_truncated_one_is_not() {
        let mut hdr = 7u32.to_be_bytes().to_vec();
        hdr.extend([0x08, 0x00, 1]);
        let m = message(
            MSG_PACKET,
            0,
            0,
            5,
            &[(ATTR_PACKET_HDR, &hdr), (ATTR_PAYLOAD, b"\x45abc")],
        );
        let body = &m[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let p = parse_packet(body).unwrap();
        assert_eq!(p.id, 7);
        assert_eq!(p.payload, b"\x45abc");
        for cut in 0..body.len() {
            // Never panics; a cut header gives no packet.
            let _ = parse_packet(&body[..cut]);
        }
        assert!(parse_packet(&body[..4]).is_none());
    }
}
