//! Reading a DNS answer out of a queued IP packet: who answered, the name asked, the CNAME
//! chain from it, and the A and AAAA addresses at the end of that chain with their TTLs.
//!
//! Pure and bounded. Everything here comes from the network and, through the resolver, from
//! whoever controls a zone: a packet that is not a complete, well-formed answer gives `None`,
//! and only records on the chain that starts at the question name count (an answer for
//! `evil.example` cannot carry addresses for `api.example.com` unless `evil.example` is a
//! CNAME of it, which only the resolver following it puts there). DNS wire parsing is
//! `hickory-proto`'s.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;

/// Most addresses taken from one answer; the rest are not learned.
pub const MAX_ADDRS: usize = 64;
/// Longest CNAME chain followed.
pub const MAX_CHAIN: usize = 16;

/// What one DNS answer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The source address of the packet: the resolver that answered.
    pub resolver: IpAddr,
    /// The name asked, lower case, no trailing dot.
    pub qname: String,
    /// The question name and every CNAME target reached from it, in order.
    pub chain: Vec<String>,
    /// Addresses of names on the chain, with their TTL in seconds.
    pub addrs: Vec<(IpAddr, u32)>,
}

/// The DNS message a UDP or TCP packet from port 53 carries, with the packet's source.
/// A TCP segment counts only when it holds a whole length-prefixed message.
pub fn dns_payload(packet: &[u8]) -> Option<(IpAddr, &[u8])> {
    let version = packet.first()? >> 4;
    let (src, proto, l4) = match version {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            (IpAddr::V4(src), packet[9], packet.get(ihl..total)?)
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&packet[8..24]);
            // Extension headers are not walked: such an answer is not learned.
            (IpAddr::V6(Ipv6Addr::from(src)), packet[6], &packet[40..])
        }
        _ => return None,
    };
    match proto {
        17 => {
            if l4.len() < 8 || u16::from_be_bytes([l4[0], l4[1]]) != 53 {
                return None;
            }
            Some((src, &l4[8..]))
        }
        6 => {
            if l4.len() < 20 || u16::from_be_bytes([l4[0], l4[1]]) != 53 {
                return None;
            }
            let offset = usize::from(l4[12] >> 4) * 4;
            let data = l4.get(offset..)?;
            let len = usize::from(u16::from_be_bytes([*data.first()?, *data.get(1)?]));
            Some((src, data.get(2..2 + len)?))
        }
        _ => None,
    }
}

/// Parses a packet that carries a DNS response into an [`Answer`]; `None` for anything else
/// (a query, an error response, a malformed message, more than one question).
pub fn parse(packet: &[u8]) -> Option<Answer> {
    let (resolver, payload) = dns_payload(packet)?;
    let message = Message::from_vec(payload).ok()?;
    if message.message_type() != MessageType::Response
        || message.response_code() != ResponseCode::NoError
        || message.queries().len() != 1
    {
        return None;
    }
    let qname = name_of(message.queries()[0].name())?;
    let mut chain = vec![qname.clone()];
    let mut on_chain: BTreeSet<String> = chain.iter().cloned().collect();
    // Follow CNAMEs in any order the answer lists them, one hop per pass.
    for _ in 0..MAX_CHAIN {
        let mut grew = false;
        for record in message.answers() {
            if let RData::CNAME(target) = record.data() {
                let (Some(owner), Some(target)) = (name_of(record.name()), name_of(&target.0))
                else {
                    continue;
                };
                if on_chain.contains(&owner) && !on_chain.contains(&target) {
                    on_chain.insert(target.clone());
                    chain.push(target);
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    let mut addrs = Vec::new();
    for record in message.answers() {
        if addrs.len() == MAX_ADDRS {
            break;
        }
        let addr = match record.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if name_of(record.name()).is_some_and(|n| on_chain.contains(&n)) {
            addrs.push((addr, record.ttl()));
        }
    }
    Some(Answer {
        resolver,
        qname,
        chain,
        addrs,
    })
}

/// A name in lower case without its trailing dot, or `None` when it holds anything but
/// letters, digits, `-`, `_` and the dots between labels (hickory prints other bytes escaped,
/// `\.` for a dot inside a label): no name line can match such a name, and an escaped form
/// must never be mistaken for a plain one.
fn name_of(name: &hickory_proto::rr::Name) -> Option<String> {
    let s = name.to_ascii().to_ascii_lowercase();
    let s = s.strip_suffix('.').unwrap_or(&s);
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (plain && !s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS response built by hand (an oracle independent of the parser): header, one
    /// question, then answers of (owner, type, ttl, rdata).
    fn response(qname: &str, rcode: u8, answers: &[(&str, u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80 | rcode, 0, 1];
        m.extend((answers.len() as u16).to_be_bytes());
        m.extend([0, 0, 0, 0]);
        m.extend(wire(qname));
        m.extend([0, 1, 0, 1]);
        for (owner, kind, ttl, rdata) in answers {
            m.extend(wire(owner));
            m.extend(kind.to_be_bytes());
            m.extend([0, 1]);
            m.extend(ttl.to_be_bytes());
            m.extend((rdata.len() as u16).to_be_bytes());
            m.extend(rdata);
        }
        m
    }

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn udp4(src: [u8; 4], sport: u16, dns: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + dns.len();
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.extend(src);
        p.extend([172, 17, 0, 2]);
        p.extend(sport.to_be_bytes());
        p.extend(40000u16.to_be_bytes());
        p.extend(((8 + dns.len()) as u16).to_be_bytes());
        p.extend([0, 0]);
        p.extend(dns);
        p
    }

    #[test]
    fn a_cname_chain_gives_the_addresses_at_its_end() {
        let dns = response(
            "API.example.com",
            0,
            &[
                ("api.example.com", 5, 300, wire("edge.cdn.test")),
                ("edge.cdn.test", 1, 20, vec![10, 1, 2, 3]),
                ("edge.cdn.test", 1, 30, vec![10, 1, 2, 4]),
                // Not on the chain: an attacker's extra record is ignored.
                ("other.example.com", 1, 30, vec![6, 6, 6, 6]),
            ],
        );
        let a = parse(&udp4([172, 17, 0, 1], 53, &dns)).unwrap();
        assert_eq!(a.resolver, IpAddr::from([172, 17, 0, 1]));
        assert_eq!(a.qname, "api.example.com");
        assert_eq!(a.chain, ["api.example.com", "edge.cdn.test"]);
        assert_eq!(
            a.addrs,
            [
                (IpAddr::from([10, 1, 2, 3]), 20),
                (IpAddr::from([10, 1, 2, 4]), 30)
            ]
        );
    }

    #[test]
    fn aaaa_over_tcp_is_read() {
        let addr: Ipv6Addr = "fd00::10".parse().unwrap();
        let dns = response(
            "v6.example.com",
            0,
            &[("v6.example.com", 28, 60, addr.octets().to_vec())],
        );
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&53u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp.extend((dns.len() as u16).to_be_bytes());
        tcp.extend(&dns);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend((tcp.len() as u16).to_be_bytes());
        p.extend([6, 64]);
        p.extend("fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend("fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend(&tcp);
        let a = parse(&p).unwrap();
        assert_eq!(a.addrs, [(IpAddr::V6(addr), 60)]);
        // A segment holding part of the message only is not read.
        assert!(parse(&p[..p.len() - 1]).is_none());
    }

    #[test]
    fn queries_errors_other_ports_and_garbage_give_nothing() {
        let ok = response(
            "a.example.com",
            0,
            &[("a.example.com", 1, 5, vec![1, 2, 3, 4])],
        );
        assert!(parse(&udp4([1, 1, 1, 1], 53, &ok)).is_some());
        assert!(parse(&udp4([1, 1, 1, 1], 5353, &ok)).is_none());
        let nx = response("a.example.com", 3, &[]);
        assert!(parse(&udp4([1, 1, 1, 1], 53, &nx)).is_none());
        let mut query = ok.clone();
        query[2] &= 0x7f;
        assert!(parse(&udp4([1, 1, 1, 1], 53, &query)).is_none());
        let packet = udp4([1, 1, 1, 1], 53, &ok);
        for cut in 0..packet.len() {
            let _ = parse(&packet[..cut]);
        }
        assert!(parse(&[]).is_none());
        assert!(parse(&[0x45; 10]).is_none());
    }

    #[test]
    fn a_label_holding_a_dot_is_never_read_as_two_labels() {
        // One label "api.example" then "com": printed escaped by hickory, so it cannot pass
        // for api.example.com. Found by the dns_answer fuzz target (its seed keeps it).
        let with_question = |q: &[u8]| {
            let mut dns = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
            dns.extend(q);
            dns.extend([
                0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 6, 6, 6, 6,
            ]);
            parse(&udp4([1, 1, 1, 1], 53, &dns))
        };
        assert!(with_question(b"\x0bapi.example\x03com\x00").is_none());
        // The control: the same answer with three plain labels is read.
        let plain = with_question(&wire("api.example.com")).unwrap();
        assert_eq!(plain.qname, "api.example.com");
        assert_eq!(plain.addrs, [(IpAddr::from([6, 6, 6, 6]), 60)]);
    }

    #[test]
    fn at_most_max_addrs_are_taken() {
        let many: Vec<(&str, u16, u32, Vec<u8>)> = (0..200u8)
            .map(|i| ("m.example.com", 1u16, 5u32, vec![10, 0, 0, i]))
            .collect();
        let dns = response("m.example.com", 0, &many);
        let a = parse(&udp4([1, 1, 1, 1], 53, &dns)).unwrap();
        assert_eq!(a.addrs.len(), MAX_ADDRS);
    }
}
