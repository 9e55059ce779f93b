//! Makes a new ruleset apply to connections that are already open.
//!
//! `ct state established` lets packets of connections opened under an earlier ruleset (or
//! before the first one landed) through. After each apply, the namespace's connection
//! tracking is listed, and every connection the container itself opened whose destination
//! the new ruleset denies is deleted. Its next packet is then a new flow, which the ruleset
//! refuses. Connections the container accepted (inbound) and allowed ones are left alone.
//!
//! In-process, on one thread inside the namespace, over netlink: the namespace's addresses
//! (an `RTM_GETADDR` dump), its connection tracking table (a ctnetlink dump, read as it comes,
//! so a busy table is never held whole), and one ctnetlink delete per denied flow, named by
//! its original-direction tuple and zone. Until 0.3 this spawned `ip` and twice `conntrack`
//! per namespace: on two cores those spawns made a KV change that re-enforces 100 containers
//! take ~1 s instead of ~0.3 s (BENCHMARKS.md, "Closer to the floor"). Failures are logged
//! and never undo the apply: the ruleset is in force either way.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egresstrator_core::policy::{decide, Verdict};
use egresstrator_core::{Proto, Ruleset};

use crate::netlink::{self, NFGENMSG_LEN, NLMSG_HDRLEN};
use crate::netns;

/// One tracked flow in its original direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The conntrack zone (0 unless a ruleset sets one).
    pub zone: u16,
}

/// The most connections one sweep deletes; the rest wait for the next change (the ruleset
/// refuses their next new flow either way). Bounds the sweep's memory and time.
pub const CUT_MAX: usize = 65_536;

/// The longest one sweep runs (dump and deletes); past it the sweep stops where it is.
pub const SWEEP_MAX: Duration = Duration::from_secs(10);

/// How long one receive may wait for the kernel.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

// Netlink and ctnetlink constants (linux/netlink.h, linux/rtnetlink.h,
// linux/netfilter/nfnetlink.h, linux/netfilter/nfnetlink_conntrack.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// `NFNL_SUBSYS_CTNETLINK << 8` with `IPCTNL_MSG_CT_NEW`, `_GET`, `_DELETE`.
const CT_NEW: u16 = 1 << 8;
const CT_GET: u16 = (1 << 8) | 1;
const CT_DELETE: u16 = (1 << 8) | 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;

/// The flows to delete: opened by the namespace itself (source is local, destination is
/// not) and denied by `ruleset`.
pub fn denied_flows(flows: &[Flow], local: &[IpAddr], ruleset: &Ruleset) -> Vec<Flow> {
    flows
        .iter()
        .filter(|f| is_denied(f, local, ruleset))
        .cloned()
        .collect()
}

fn is_denied(f: &Flow, local: &[IpAddr], ruleset: &Ruleset) -> bool {
    local.contains(&f.src)
        && !local.contains(&f.dst)
        && !f.dst.is_loopback()
        && decide(ruleset, f.dst, f.proto, f.dport).verdict == Verdict::Deny
}

/// Deletes the tracked connections that `ruleset` denies in the namespace at `path`; returns
/// how many.
pub async fn cut_denied(path: PathBuf, ruleset: &Ruleset) -> usize {
    let ruleset = ruleset.clone();
    let thread_path = path.clone();
    let result = netns::run_in_netns_async(path.clone(), move || {
        sweep_here(&ruleset).map_err(|error| netns::NetnsError::Conntrack {
            path: thread_path,
            error,
        })
    })
    .await;
    match result {
        Ok(cut) => {
            if cut > 0 {
                tracing::info!(
                    netns = %path.display(),
                    connections = cut,
                    "cut open connections that the new ruleset denies"
                );
            }
            cut
        }
        // The container went away meanwhile: nothing left to cut.
        Err(e) if e.is_gone() => {
            tracing::debug!("no connections to cut: {e}");
            0
        }
        Err(e) => {
            tracing::warn!("cannot cut denied connections: {e}");
            0
        }
    }
}

/// How many connections the namespace at `path` tracks now (None: it cannot be read, e.g.
/// connection tracking is not loaded).
pub async fn tracked(path: PathBuf) -> Result<Option<u64>, netns::NetnsError> {
    netns::run_in_netns_async(path, || Ok(tracked_here())).await
}

/// The calling thread's namespace's `nf_conntrack_count` (`/proc/sys/net` shows the network
/// namespace of the thread that opens it).
fn tracked_here() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The sweep, on a thread inside the namespace.
fn sweep_here(ruleset: &Ruleset) -> io::Result<usize> {
    // The kernel walks its whole connection tracking table, every namespace's, bucket by
    // bucket, for each dump (262,144 buckets on the benchmark machine). perf over a KV change
    // that re-enforced 100 idle containers: 52 % of the agent's CPU was in
    // `ctnetlink_dump_table`, competing with the loads on two cores. A namespace that tracks
    // nothing has nothing to cut: no dump.
    if tracked_here() == Some(0) {
        return Ok(0);
    }
    let deadline = Instant::now() + SWEEP_MAX;
    let local = {
        let route = socket(libc::NETLINK_ROUTE)?;
        local_addresses(&route, deadline)?
    };
    let ct = socket(libc::NETLINK_NETFILTER)?;
    let mut denied = Vec::new();
    dump_flows(&ct, deadline, |flow| {
        if denied.len() < CUT_MAX && is_denied(&flow, &local, ruleset) {
            denied.push(flow);
        }
    })?;
    let mut cut = 0;
    // Sequence numbers of deletes start above the dumps' (1).
    for (seq, flow) in (2u32..).zip(&denied) {
        if Instant::now() > deadline {
            tracing::warn!(
                left = denied.len() - cut,
                "the conntrack sweep ran out of time; the rest is cut at the next change"
            );
            break;
        }
        match delete_flow(&ct, flow, seq) {
            Ok(()) => cut += 1,
            // Gone meanwhile (closed, or timed out): nothing to cut.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => tracing::debug!("deleting the conntrack entry of {flow:?}: {e}"),
        }
    }
    // Closed at once, although the load's clean-up may still be pending (`crate::quiet`): a
    // load of this namespace within those few milliseconds would wait for it, but waiting
    // here would hold a tidy slot ~50 ms per namespace, and a KV change tidies them all.
    drop(ct);
    Ok(cut)
}

fn socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    let socket = netlink::open(protocol, false)?;
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    netlink::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    Ok(socket)
}

/// A netlink request: header, then `body`.
fn request(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(body);
    m
}

const DUMP: u16 = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;

/// Runs a dump request and hands each answer message (type, body) to `each`, until the
/// kernel says done. An error answer is returned as the error it carries.
fn dump(
    socket: &OwnedFd,
    message: &[u8],
    seq: u32,
    deadline: Instant,
    mut each: impl FnMut(u16, &[u8]),
) -> io::Result<()> {
    netlink::send_all(socket, message)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "netlink dump past its time bound",
            ));
        }
        let got = netlink::recv_raw(socket, &mut buf, 0)?;
        if got > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "netlink datagram larger than the buffer",
            ));
        }
        for message in netlink::messages(&buf[..got]) {
            let (kind, message_seq, body) = message.ok_or_else(malformed)?;
            if message_seq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => match error_code(body)? {
                    0 => {}
                    code => return Err(io::Error::from_raw_os_error(-code)),
                },
                _ => each(kind, body),
            }
        }
    }
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message")
}

fn error_code(body: &[u8]) -> io::Result<i32> {
    body.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(malformed)
}

/// The calling thread's namespace's own addresses, as `ip addr` shows them.
fn local_addresses(route: &OwnedFd, deadline: Instant) -> io::Result<Vec<IpAddr>> {
    let mut body = [0u8; IFADDRMSG_LEN];
    body[0] = libc::AF_UNSPEC as u8;
    let message = request(RTM_GETADDR, DUMP, 1, &body);
    let mut out = Vec::new();
    dump(route, &message, 1, deadline, |kind, body| {
        if kind == RTM_NEWADDR {
            out.extend(parse_address(body));
        }
    })?;
    Ok(out)
}

/// The address of an `RTM_NEWADDR` message: `IFA_LOCAL` where present (the local end of a
/// point-to-point link), else `IFA_ADDRESS`.
fn parse_address(body: &[u8]) -> Option<IpAddr> {
    let family = *body.first()?;
    let attributes = netlink::attributes(body.get(IFADDRMSG_LEN..)?)?;
    ip(
        family,
        find(&attributes, IFA_LOCAL).or_else(|| find(&attributes, IFA_ADDRESS))?,
    )
}

fn ip(family: u8, value: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), value.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
        (libc::AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(value).ok()?,
        ))),
        _ => None,
    }
}

/// Dumps the namespace's connection tracking table (every family) and hands each TCP and
/// UDP flow to `each`.
fn dump_flows(ct: &OwnedFd, deadline: Instant, mut each: impl FnMut(Flow)) -> io::Result<()> {
    let body = [libc::AF_UNSPEC as u8, 0, 0, 0]; // family, NFNETLINK_V0, res_id
    let message = request(CT_GET, DUMP, 1, &body);
    dump(ct, &message, 1, deadline, |kind, body| {
        if kind == CT_NEW {
            if let Some(flow) = parse_flow(body) {
                each(flow);
            }
        }
    })
}

/// The value of the first attribute of type `t`.
fn find<'a>(list: &[(u16, &'a [u8])], t: u16) -> Option<&'a [u8]> {
    list.iter().find(|(k, _)| *k == t).map(|(_, v)| *v)
}

fn be16(value: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(value.get(..2)?.try_into().ok()?))
}

/// A ctnetlink `IPCTNL_MSG_CT_NEW` message body (nfgenmsg, then attributes) as a [`Flow`];
/// None for other protocols and anything malformed.
pub fn parse_flow(body: &[u8]) -> Option<Flow> {
    let family = *body.first()?;
    let top = netlink::attributes(body.get(NFGENMSG_LEN..)?)?;
    let tuple = netlink::attributes(find(&top, CTA_TUPLE_ORIG)?)?;
    let addresses = netlink::attributes(find(&tuple, CTA_TUPLE_IP)?)?;
    let ports = netlink::attributes(find(&tuple, CTA_TUPLE_PROTO)?)?;
    let (src, dst) = match i32::from(family) {
        libc::AF_INET => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
        libc::AF_INET6 => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
        _ => return None,
    };
    let proto = match *find(&ports, CTA_PROTO_NUM)?.first()? {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        _ => return None,
    };
    let zone = match find(&top, CTA_ZONE) {
        Some(v) => be16(v)?,
        None => 0,
    };
    Some(Flow {
        proto,
        src: ip(family, find(&addresses, src)?)?,
        dst: ip(family, find(&addresses, dst)?)?,
        sport: be16(find(&ports, CTA_PROTO_SRC_PORT)?)?,
        dport: be16(find(&ports, CTA_PROTO_DST_PORT)?)?,
        zone,
    })
}

/// Appends one attribute (padded to 4 bytes).
fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = netlink::NLA_HDRLEN + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (netlink::align4(len) - len), 0);
}

/// The `IPCTNL_MSG_CT_DELETE` request that deletes exactly this flow.
pub fn delete_request(flow: &Flow, seq: u32) -> Vec<u8> {
    let (family, src_type, dst_type, src, dst) = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            libc::AF_INET as u8,
            CTA_IP_V4_SRC,
            CTA_IP_V4_DST,
            s.octets().to_vec(),
            d.octets().to_vec(),
        ),
        (s, d) => (
            libc::AF_INET6 as u8,
            CTA_IP_V6_SRC,
            CTA_IP_V6_DST,
            v6_octets(s).to_vec(),
            v6_octets(d).to_vec(),
        ),
    };
    let mut addresses = Vec::new();
    attribute(&mut addresses, src_type, &src);
    attribute(&mut addresses, dst_type, &dst);
    let mut ports = Vec::new();
    let number = match flow.proto {
        Proto::Tcp => 6u8,
        Proto::Udp => 17u8,
    };
    attribute(&mut ports, CTA_PROTO_NUM, &[number]);
    attribute(&mut ports, CTA_PROTO_SRC_PORT, &flow.sport.to_be_bytes());
    attribute(&mut ports, CTA_PROTO_DST_PORT, &flow.dport.to_be_bytes());
    let mut tuple = Vec::new();
    attribute(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &addresses);
    attribute(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &ports);
    let mut body = vec![family, 0, 0, 0];
    attribute(&mut body, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    if flow.zone != 0 {
        attribute(&mut body, CTA_ZONE, &flow.zone.to_be_bytes());
    }
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    request(CT_DELETE, flags, seq, &body)
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// Deletes one flow and waits for the kernel's answer.
fn delete_flow(ct: &OwnedFd, flow: &Flow, seq: u32) -> io::Result<()> {
    netlink::send_all(ct, &delete_request(flow, seq))?;
    let mut buf = [0u8; 1024];
    loop {
        let got = netlink::recv_raw(ct, &mut buf, 0)?.min(buf.len());
        for message in netlink::messages(&buf[..got]) {
            let (kind, message_seq, body) = message.ok_or_else(malformed)?;
            if message_seq != seq || kind != NLMSG_ERROR {
                continue;
            }
            return match error_code(body)? {
                0 => Ok(()),
                code => Err(io::Error::from_raw_os_error(-code)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresstrator_core::ruleset::{Dest, Origin, PortRange, Posture, Rule};

    /// A ctnetlink dump answer's body for TCP 10.0.0.2:40000 → 10.0.0.9:443, written out byte
    /// by byte from the kernel's layout (nfgenmsg; CTA_TUPLE_ORIG { CTA_TUPLE_IP { V4_SRC,
    /// V4_DST }, CTA_TUPLE_PROTO { NUM, SRC_PORT, DST_PORT } }; CTA_TUPLE_REPLY the other
    /// way round; CTA_ZONE 7), native-endian lengths and types as on x86_64 and aarch64.
    #[rustfmt::skip]
    const TCP_V4: &[u8] = &[
        2, 0, 0, 0, // nfgenmsg: AF_INET, v0, res_id
        52, 0, 0x01, 0x80, // CTA_TUPLE_ORIG | NLA_F_NESTED, 52 bytes
          20, 0, 0x01, 0x80, // CTA_TUPLE_IP
            8, 0, 1, 0, 10, 0, 0, 2, // CTA_IP_V4_SRC
            8, 0, 2, 0, 10, 0, 0, 9, // CTA_IP_V4_DST
          28, 0, 0x02, 0x80, // CTA_TUPLE_PROTO
            5, 0, 1, 0, 6, 0, 0, 0, // CTA_PROTO_NUM tcp (+ padding)
            6, 0, 2, 0, 0x9c, 0x40, 0, 0, // CTA_PROTO_SRC_PORT 40000
            6, 0, 3, 0, 0x01, 0xbb, 0, 0, // CTA_PROTO_DST_PORT 443
        52, 0, 0x02, 0x80, // CTA_TUPLE_REPLY
          20, 0, 0x01, 0x80,
            8, 0, 1, 0, 10, 0, 0, 9,
            8, 0, 2, 0, 10, 0, 0, 2,
          28, 0, 0x02, 0x80,
            5, 0, 1, 0, 6, 0, 0, 0,
            6, 0, 2, 0, 0x01, 0xbb, 0, 0,
            6, 0, 3, 0, 0x9c, 0x40, 0, 0,
        6, 0, 18, 0, 0, 7, 0, 0, // CTA_ZONE 7
    ];

    fn flow(dst: &str, dport: u16, proto: Proto) -> Flow {
        Flow {
            proto,
            src: "10.231.12.2".parse().expect("src"),
            dst: dst.parse().expect("dst"),
            sport: 40000,
            dport,
            zone: 0,
        }
    }

    #[test]
    fn parses_the_original_direction_of_a_kernel_answer() {
        let f = parse_flow(TCP_V4).expect("a tcp flow");
        assert_eq!(
            f,
            Flow {
                proto: Proto::Tcp,
                src: "10.0.0.2".parse().expect("ip"),
                dst: "10.0.0.9".parse().expect("ip"),
                sport: 40000,
                dport: 443,
                zone: 7,
            }
        );
        // Not TCP or UDP (icmp: protocol 1): skipped, not misread.
        let mut icmp = TCP_V4.to_vec();
        icmp[36] = 1;
        assert_eq!(parse_flow(&icmp), None);
        // Truncated anywhere: None, never a panic.
        for cut in 0..TCP_V4.len() {
            let _ = parse_flow(&TCP_V4[..cut]);
        }
    }

    #[test]
    fn a_delete_request_names_the_flow_it_was_made_for() {
        let f = Flow {
            zone: 7,
            ..flow("2001:db8::9", 53, Proto::Udp)
        };
        let f = Flow {
            src: "2001:db8::2".parse().expect("ip"),
            ..f
        };
        let m = delete_request(&f, 42);
        let (kind, seq, body) = netlink::messages(&m).next().flatten().expect("one message");
        assert_eq!((kind, seq), (CT_DELETE, 42));
        assert_eq!(
            u16::from_ne_bytes([m[6], m[7]]),
            5,
            "NLM_F_REQUEST | NLM_F_ACK"
        );
        assert_eq!(body[0], libc::AF_INET6 as u8);
        assert_eq!(parse_flow(body), Some(f));
        // The v4 request's tuple is byte for byte the kernel's original tuple above.
        let v4 = Flow {
            proto: Proto::Tcp,
            src: "10.0.0.2".parse().expect("ip"),
            dst: "10.0.0.9".parse().expect("ip"),
            sport: 40000,
            dport: 443,
            zone: 7,
        };
        let m = delete_request(&v4, 1);
        let body = &m[NLMSG_HDRLEN..];
        assert_eq!(&body[..4 + 52], &TCP_V4[..4 + 52]);
        assert_eq!(&body[4 + 52..], &TCP_V4[4 + 52 + 52..]);
    }

    #[test]
    fn only_outbound_denied_flows_are_cut() {
        let ruleset = Ruleset {
            posture: Posture::Allowlist,
            acls: vec!["web".into()],
            allow: vec![Rule {
                dest: Dest {
                    net: "10.231.12.10/32".parse().expect("net"),
                    proto: Proto::Tcp,
                    ports: PortRange::single(80),
                },
                origin: Origin {
                    acl: "web".into(),
                    line: 1,
                    service: None,
                },
            }],
            deny: vec![],
            dns: vec![],
            names: vec![],
            resolvable: vec![],
            learn_from: vec![],
            dns_filter: false,
            audit: false,
        };
        let local: Vec<IpAddr> = vec![
            "127.0.0.1".parse().expect("ip"),
            "10.231.12.2".parse().expect("ip"),
        ];
        let inbound = Flow {
            src: "10.231.12.10".parse().expect("ip"),
            dst: "10.231.12.2".parse().expect("ip"),
            sport: 5000,
            dport: 9000,
            ..flow("10.231.12.2", 9000, Proto::Tcp)
        };
        let flows = vec![
            flow("10.231.12.10", 80, Proto::Tcp),
            flow("10.231.12.10", 8080, Proto::Tcp),
            inbound,
            flow("10.231.12.10", 53, Proto::Udp),
        ];
        let cut = denied_flows(&flows, &local, &ruleset);
        // Port 80 stays (allowed); the inbound flow to :9000 stays (accepted by us);
        // 8080 and DNS to a non-resolver are cut.
        let ports: Vec<u16> = cut.iter().map(|f| f.dport).collect();
        assert_eq!(ports, vec![8080, 53]);
    }

    #[test]
    fn reads_an_address_message_as_ip_shows_it() {
        #[rustfmt::skip]
        let body: &[u8] = &[
            2, 24, 0, 0, 9, 0, 0, 0, // ifaddrmsg: AF_INET, /24, flags, scope, index 9
            8, 0, 1, 0, 10, 231, 12, 1, // IFA_ADDRESS (the peer on point-to-point)
            8, 0, 2, 0, 10, 231, 12, 2, // IFA_LOCAL
        ];
        assert_eq!(parse_address(body), "10.231.12.2".parse().ok());
        assert_eq!(parse_address(&body[..16]), "10.231.12.1".parse().ok());
        assert_eq!(parse_address(&body[..3]), None);
    }
}
