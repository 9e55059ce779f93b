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
    // IPv6 extension headers are not walked: such an answer is not learned.
    let (src, _, proto, l4) = ip_parts(packet)?;
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

/// A DNS query a container sends, as the DNS filter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The name asked, lower case, no trailing dot; `None` when the name is not plain
    /// letters, digits, `-`, `_` and dots (no line can allow such a name).
    pub qname: Option<String>,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
}

/// What a packet to a resolver carries, for the DNS filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A TCP segment without payload (handshake, acknowledgement, close).
    Empty,
    /// A whole query.
    Query(Query),
    /// Anything else: a segment holding part of a message, more than one question, a
    /// response, garbage. The filter cannot tell what it asks, so it does not let it out.
    Unreadable,
}

/// Reads a packet going to a resolver (any destination port: Docker's embedded server is
/// reached through a DNAT to another port).
pub fn outgoing(packet: &[u8]) -> Outgoing {
    let Some((src, dst, proto, l4)) = ip_parts(packet) else {
        return Outgoing::Unreadable;
    };
    let (sport, message) = match proto {
        17 if l4.len() >= 8 => (u16::from_be_bytes([l4[0], l4[1]]), &l4[8..]),
        6 if l4.len() >= 20 => {
            let offset = usize::from(l4[12] >> 4) * 4;
            let Some(data) = l4.get(offset..) else {
                return Outgoing::Unreadable;
            };
            if data.is_empty() {
                return Outgoing::Empty;
            }
            let len = match data {
                [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
                _ => return Outgoing::Unreadable,
            };
            if data.len() != len + 2 {
                return Outgoing::Unreadable;
            }
            (u16::from_be_bytes([l4[0], l4[1]]), &data[2..])
        }
        _ => return Outgoing::Unreadable,
    };
    let Ok(m) = Message::from_vec(message) else {
        return Outgoing::Unreadable;
    };
    if m.message_type() != MessageType::Query || m.queries().len() != 1 {
        return Outgoing::Unreadable;
    }
    Outgoing::Query(Query {
        qname: name_of(m.queries()[0].name()),
        proto,
        src,
        dst,
        sport,
    })
}

/// The `REFUSED` answer to a UDP query packet, as a whole IP packet from the resolver (its
/// address, port 53) back to the asking socket; `None` for anything but a readable UDP
/// query. The question is copied as it was asked.
pub fn refused_reply(packet: &[u8]) -> Option<Vec<u8>> {
    let (src, dst, proto, l4) = ip_parts(packet)?;
    if proto != 17 || l4.len() < 8 + 12 {
        return None;
    }
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let query = &l4[8..];
    let m = Message::from_vec(query).ok()?;
    if m.message_type() != MessageType::Query || m.queries().len() != 1 {
        return None;
    }
    // Header: same id, QR set, opcode and RD kept, RA set, rcode 5 (REFUSED); one question,
    // no records. The question section is the query's, up to where its records would start.
    let question_end = 12 + question_len(&query[12..])?;
    let mut dns = Vec::with_capacity(question_end);
    dns.extend(&query[0..2]);
    dns.push(0x80 | (query[2] & 0x79));
    dns.push(0x80 | 5);
    dns.extend([0, 1, 0, 0, 0, 0, 0, 0]);
    dns.extend(&query[12..question_end]);
    let mut udp = Vec::with_capacity(8 + dns.len());
    udp.extend(53u16.to_be_bytes());
    udp.extend(sport.to_be_bytes());
    udp.extend(((8 + dns.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(&dns);
    // Back from where the query went to where it came from.
    let (from, to) = (dst, src);
    let sum = udp_checksum(from, to, &udp);
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(40 + udp.len());
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            let total = (20 + udp.len()) as u16;
            let mut h = vec![0x45, 0];
            h.extend(total.to_be_bytes());
            h.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
            h.extend(f.octets());
            h.extend(t.octets());
            let c = checksum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend(h);
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            out.extend([0x60, 0, 0, 0]);
            out.extend((udp.len() as u16).to_be_bytes());
            out.extend([17, 64]);
            out.extend(f.octets());
            out.extend(t.octets());
        }
        _ => return None,
    }
    out.extend(udp);
    Some(out)
}

/// Source, destination, protocol and layer-4 bytes of an IPv4 or IPv6 packet (IPv6 without
/// extension headers).
fn ip_parts(packet: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            Some((src.into(), dst.into(), packet[9], packet.get(ihl..total)?))
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&packet[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&packet[24..40]);
            let len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let end = (40 + len).min(packet.len());
            Some((
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                packet[6],
                &packet[40..end],
            ))
        }
        _ => None,
    }
}

/// Length of one question (name, type, class) at the start of `s`; compression pointers are
/// not followed (a question's name never needs one).
fn question_len(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let len = usize::from(*s.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    (s.len() >= i + 4).then_some(i + 4)
}

fn checksum(data: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend([0, 17]);
            pseudo.extend((udp.len() as u16).to_be_bytes());
        }
        (s, d) => {
            let oct = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            pseudo.extend(oct(s));
            pseudo.extend(oct(d));
            pseudo.extend((udp.len() as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, 17]);
        }
    }
    let mut sum: u32 = 0;
    for pair in pseudo.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    match checksum(udp, sum) {
        // A computed zero is sent as all ones (zero means "no checksum" for UDP over IPv4).
        0 => 0xffff,
        c => c,
    }
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

    fn query(name: &str) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(wire(name));
        q.extend([0, 1, 0, 1]);
        q
    }

    /// The one's-complement sum of 16-bit words (the oracle: RFC 1071, written again here).
    fn ones_sum(data: &[u8]) -> u32 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }

    #[test]
    fn an_outgoing_query_is_read_and_answered_refused() {
        let mut p = udp4([172, 17, 0, 2], 40000, &query("Exfil.Attacker.example"));
        // udp4 builds packets from the resolver; turn it into one to the resolver.
        p[12..16].copy_from_slice(&[172, 17, 0, 2]);
        p[16..20].copy_from_slice(&[172, 17, 0, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&53u16.to_be_bytes());
        let Outgoing::Query(q) = outgoing(&p) else {
            panic!("not read")
        };
        assert_eq!(q.qname.as_deref(), Some("exfil.attacker.example"));
        assert_eq!((q.proto, q.sport), (17, 40000));
        let r = refused_reply(&p).unwrap();
        assert_eq!(&r[12..16], &[172, 17, 0, 1], "from the resolver");
        assert_eq!(&r[16..20], &[172, 17, 0, 2], "to the asker");
        assert_eq!(ones_sum(&r[..20]), 0xffff, "IPv4 header checksum");
        let udp = &r[20..];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 53);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 40000);
        let mut pseudo = r[12..20].to_vec();
        pseudo.extend([0, 17]);
        pseudo.extend((udp.len() as u16).to_be_bytes());
        pseudo.extend(udp);
        assert_eq!(ones_sum(&pseudo), 0xffff, "UDP checksum");
        let dns = &udp[8..];
        assert_eq!(&dns[0..2], &[0xab, 0xcd], "same id");
        assert_eq!(dns[2] & 0x80, 0x80, "a response");
        assert_eq!(dns[3] & 0x0f, 5, "REFUSED");
        assert_eq!(
            &dns[12..],
            &query("Exfil.Attacker.example")[12..],
            "the question as asked"
        );
        // A response, and a TCP segment holding half a query, are not queries.
        assert_eq!(
            outgoing(&udp4([1, 1, 1, 1], 53, &response("a.b", 0, &[]))),
            Outgoing::Unreadable
        );
        assert!(refused_reply(&r).is_none());
        for cut in 0..p.len() {
            let _ = outgoing(&p[..cut]);
            let _ = refused_reply(&p[..cut]);
        }
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
