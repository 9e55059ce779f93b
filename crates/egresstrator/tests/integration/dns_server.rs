//! A tiny authoritative DNS server for the integration tests, so that they never depend on an
//! outside resolver: UDP and TCP on one address, answering A, AAAA and CNAME questions from an
//! in-memory zone that the test sets, and logging every question it receives.
//!
//! It is an independent oracle: the RFC 1035 wire format is encoded and decoded by hand here
//! and shares no code with the DNS parser the product uses, so a bug there cannot hide itself.

use std::collections::HashMap;
use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const NXDOMAIN: u8 = 3;
/// How often blocked socket reads wake up to check for shutdown.
const POLL: Duration = Duration::from_millis(100);
/// CNAME records followed for one answer.
const MAX_HOPS: usize = 8;
/// Largest reply over UDP without EDNS (RFC 1035 4.2.1); larger ones are sent truncated (TC).
const UDP_MAX: usize = 512;

/// One record of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

impl Answer {
    fn rtype(&self) -> u16 {
        match self {
            Answer::A(_) => TYPE_A,
            Answer::Aaaa(_) => TYPE_AAAA,
            Answer::Cname(_) => TYPE_CNAME,
        }
    }
}

enum RecordSet {
    Fixed(Vec<Answer>),
    /// Each A question gets `addrs[next]`, then `next` moves on.
    Rotating {
        addrs: Vec<Ipv4Addr>,
        next: usize,
    },
}

/// The served names: lowercase, without a trailing dot, each with its TTL and record set.
#[derive(Default)]
pub struct Zone {
    names: HashMap<String, (u32, RecordSet)>,
}

impl Zone {
    /// The answer records (owner, TTL, record) for a question, following CNAMEs within the
    /// zone; `None` when the name is not in the zone (NXDOMAIN).
    fn resolve(&mut self, qname: &str, qtype: u16) -> Option<Vec<(String, u32, Answer)>> {
        let mut out = Vec::new();
        let mut name = qname.to_owned();
        for hop in 0..=MAX_HOPS {
            let Some((ttl, records)) = self.names.get_mut(&name) else {
                return (hop > 0).then_some(out);
            };
            let ttl = *ttl;
            let answers = match records {
                RecordSet::Rotating { addrs, next } => {
                    if qtype == TYPE_A && !addrs.is_empty() {
                        let addr = addrs[*next % addrs.len()];
                        *next = (*next + 1) % addrs.len();
                        out.push((name, ttl, Answer::A(addr)));
                    }
                    return Some(out);
                }
                RecordSet::Fixed(answers) => answers,
            };
            let cname = answers.iter().find(|a| a.rtype() == TYPE_CNAME);
            let Some(Answer::Cname(target)) = cname.cloned() else {
                let wanted = answers.iter().filter(|a| a.rtype() == qtype);
                out.extend(wanted.map(|a| (name.clone(), ttl, a.clone())));
                return Some(out);
            };
            out.push((name, ttl, Answer::Cname(target.clone())));
            if qtype == TYPE_CNAME {
                break;
            }
            name = target;
        }
        Some(out)
    }
}

struct Shared {
    zone: Mutex<Zone>,
    queries: Mutex<Vec<(String, u16)>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The reply to one DNS message, or `None` (no reply) when it is not a well-formed query.
    fn respond(&self, query: &[u8], max_len: usize) -> Option<Vec<u8>> {
        let (qname, qtype, qend) = parse_question(query)?;
        lock(&self.queries).push((qname.clone(), qtype));
        let answers = lock(&self.zone).resolve(&qname, qtype);
        let rcode = if answers.is_none() { NXDOMAIN } else { 0 };
        let answers = answers.unwrap_or_default();
        let question = &query[12..qend];
        let mut out = header(query, rcode, u16::try_from(answers.len()).ok()?, false);
        out.extend_from_slice(question);
        for (owner, ttl, answer) in &answers {
            // The question name sits at offset 12: point at it rather than repeat it.
            let owner = (*owner != qname).then_some(owner.as_str());
            write_record(&mut out, owner, *ttl, answer);
        }
        if out.len() > max_len {
            out = header(query, rcode, 0, true);
            out.extend_from_slice(question);
        }
        Some(out)
    }
}

/// The single question of a query: lowercased name without a trailing dot, qtype, and the
/// offset where the question section ends. `None` for anything but a well-formed query.
fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let qdcount = u16::from_be_bytes([*msg.get(4)?, *msg.get(5)?]);
    // A response (QR), an opcode other than QUERY, or not exactly one question.
    if msg.len() < 12 || msg[2] & 0xF8 != 0 || qdcount != 1 {
        return None;
    }
    let (mut pos, mut labels, mut total) = (12, Vec::new(), 0);
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // Also rejects compression pointers, which have no place in a query's question.
        if len > 63 {
            return None;
        }
        total += len + 1;
        let label = std::str::from_utf8(msg.get(pos..pos + len)?).ok()?;
        if total > 255 || label.contains('.') {
            return None;
        }
        labels.push(label.to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    msg.get(pos + 2..pos + 4)?; // qclass
    Some((labels.join("."), qtype, pos + 4))
}

/// Header with QR and AA set, the query's ID and RD, QDCOUNT 1 and the given ANCOUNT.
fn header(query: &[u8], rcode: u8, ancount: u16, truncated: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(UDP_MAX);
    out.extend_from_slice(&query[..2]);
    out.push(0x80 | 0x04 | if truncated { 0x02 } else { 0 } | (query[2] & 0x01));
    out.push(rcode);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&ancount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// An uncompressed name; `normalize` checked its label lengths.
fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// A record of class IN; `owner` `None` is the question name (pointer 0xC00C).
fn write_record(out: &mut Vec<u8>, owner: Option<&str>, ttl: u32, answer: &Answer) {
    match owner {
        None => out.extend_from_slice(&[0xC0, 0x0C]),
        Some(name) => write_name(out, name),
    }
    let rdata = match answer {
        Answer::A(addr) => addr.octets().to_vec(),
        Answer::Aaaa(addr) => addr.octets().to_vec(),
        Answer::Cname(target) => {
            let mut rdata = Vec::new();
            write_name(&mut rdata, target);
            rdata
        }
    };
    out.extend_from_slice(&answer.rtype().to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
}

/// Lowercase, no trailing dot; panics on a name that cannot be encoded (a broken test).
fn normalize(name: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ok = name.len() <= 253 && name.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    assert!(ok, "dns_server: invalid name {name:?}");
    name
}

/// A DNS server on one address (UDP and TCP), serving its zone until dropped.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (e.g. 172.17.0.1:53 or [fd00::1]:53) and serves until
    /// dropped. With port 0, TCP binds the port UDP got.
    pub fn start(addr: SocketAddr) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(addr)?;
        udp.set_read_timeout(Some(POLL))?;
        tcp.set_nonblocking(true)?;
        let mut server = DnsServer {
            addr: udp.local_addr()?,
            shared: Arc::new(Shared {
                zone: Mutex::new(Zone::default()),
                queries: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
            }),
            threads: Vec::new(),
        };
        // On an error here, dropping `server` stops the threads already started.
        let (for_udp, for_tcp) = (Arc::clone(&server.shared), Arc::clone(&server.shared));
        let thread = |name: &str| thread::Builder::new().name(name.into());
        let udp_thread = thread("dns-udp").spawn(move || serve_udp(&udp, &for_udp))?;
        server.threads.push(udp_thread);
        let tcp_thread = thread("dns-tcp").spawn(move || serve_tcp(&tcp, &for_tcp))?;
        server.threads.push(tcp_thread);
        Ok(server)
    }

    /// Sets the records for a name (replacing earlier ones), with TTL seconds. A name holds
    /// a CNAME (answers then carry the chain, followed within the zone for up to 8 hops) or
    /// A/AAAA records.
    pub fn set(&self, name: &str, ttl: u32, answers: Vec<Answer>) {
        let answers = answers
            .into_iter()
            .map(|a| match a {
                Answer::Cname(target) => Answer::Cname(normalize(&target)),
                other => other,
            })
            .collect();
        self.put(name, ttl, RecordSet::Fixed(answers));
    }

    /// A rotating A record set: each A question for `name` gets the next address of `addrs`
    /// in turn (one A record per answer).
    pub fn rotate(&self, name: &str, ttl: u32, addrs: Vec<Ipv4Addr>) {
        self.put(name, ttl, RecordSet::Rotating { addrs, next: 0 });
    }

    fn put(&self, name: &str, ttl: u32, records: RecordSet) {
        let mut zone = lock(&self.shared.zone);
        zone.names.insert(normalize(name), (ttl, records));
    }

    /// Every question received so far (name lowercased, no trailing dot; qtype), in order.
    pub fn queries(&self) -> Vec<(String, u16)> {
        lock(&self.shared.queries).clone()
    }

    /// The address served, with the port actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// UDP then TCP on the same port; with port 0, retries on new ports if TCP's is taken.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let tries = if addr.port() == 0 { 8 } else { 1 };
    let mut last = io::Error::other("dns_server: no bind attempt");
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A read that timed out or was interrupted: check for shutdown and read again.
fn idle(e: &io::Error) -> bool {
    matches!(e.kind(), WouldBlock | TimedOut | Interrupted)
}

fn serve_udp(sock: &UdpSocket, shared: &Shared) {
    let mut buf = [0u8; 4096];
    while !shared.stopped() {
        match sock.recv_from(&mut buf) {
            Ok((len, peer)) => {
                if let Some(reply) = shared.respond(&buf[..len], UDP_MAX) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                conns.retain(|c| !c.is_finished());
                let shared = Arc::clone(shared);
                let conn = thread::Builder::new().name("dns-tcp-conn".into());
                if let Ok(conn) = conn.spawn(move || serve_conn(stream, &shared)) {
                    conns.push(conn);
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    for conn in conns {
        let _ = conn.join();
    }
}

/// Length-prefixed queries (RFC 1035 4.2.2), as many as the client sends, until it closes.
fn serve_conn(mut stream: TcpStream, shared: &Shared) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))));
    if setup.is_err() {
        return;
    }
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    while !shared.stopped() {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if idle(&e) => continue,
            Err(_) => return,
        }
        while buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if buf.len() < 2 + len {
                break;
            }
            let msg: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
            let Some(reply) = shared.respond(&msg, usize::from(u16::MAX)) else {
                continue;
            };
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer record: (owner, type, TTL, address or CNAME target).
    type Rr = (String, u16, u32, String);

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, QDCOUNT 1
        write_name(&mut q, name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    fn udp(server: &DnsServer, msg: &[u8]) -> Option<Vec<u8>> {
        let ip = server.addr().ip();
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(POLL * 3)).unwrap();
        sock.send_to(msg, server.addr()).unwrap();
        let mut buf = [0u8; 4096];
        let len = sock.recv(&mut buf).ok()?;
        Some(buf[..len].to_vec())
    }

    /// Sends all `msgs` on one connection, then reads `replies` replies.
    fn tcp(server: &DnsServer, msgs: &[Vec<u8>], replies: usize) -> Vec<Vec<u8>> {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(POLL * 20)).unwrap();
        for msg in msgs {
            stream.write_all(&(msg.len() as u16).to_be_bytes()).unwrap();
            stream.write_all(msg).unwrap();
        }
        let mut read = |len: usize| {
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).unwrap();
            buf
        };
        let mut read_reply = || {
            let len = read(2);
            read(usize::from(u16::from_be_bytes([len[0], len[1]])))
        };
        (0..replies).map(|_| read_reply()).collect()
    }

    /// The name at `pos`, following compression pointers, and the offset after it.
    fn read_name(msg: &[u8], mut pos: usize) -> (String, usize) {
        let (mut labels, mut end) = (Vec::new(), None);
        loop {
            let len = usize::from(msg[pos]);
            if len >= 0xC0 {
                end.get_or_insert(pos + 2);
                pos = (len & 0x3F) << 8 | usize::from(msg[pos + 1]);
            } else if len == 0 {
                return (labels.join("."), end.unwrap_or(pos + 1));
            } else {
                labels.push(String::from_utf8(msg[pos + 1..pos + 1 + len].to_vec()).unwrap());
                pos += 1 + len;
            }
        }
    }

    /// (ID, flags, answers), checking the layout.
    fn decode(msg: &[u8]) -> (u16, u16, Vec<Rr>) {
        let be16 = |p: usize| u16::from_be_bytes([msg[p], msg[p + 1]]);
        let counts = (be16(4), be16(8), be16(10));
        assert_eq!(counts, (1, 0, 0), "QDCOUNT, NSCOUNT, ARCOUNT");
        let mut pos = read_name(msg, 12).1 + 4;
        let mut answers = Vec::new();
        for _ in 0..be16(6) {
            let (owner, p) = read_name(msg, pos);
            assert_eq!(be16(p + 2), 1, "class IN");
            let ttl = u32::from_be_bytes([msg[p + 4], msg[p + 5], msg[p + 6], msg[p + 7]]);
            pos = p + 10 + usize::from(be16(p + 8));
            let rdata = &msg[p + 10..pos];
            let rdata = match be16(p) {
                TYPE_A => Ipv4Addr::from(<[u8; 4]>::try_from(rdata).unwrap()).to_string(),
                TYPE_AAAA => Ipv6Addr::from(<[u8; 16]>::try_from(rdata).unwrap()).to_string(),
                _ => read_name(msg, p + 10).0,
            };
            answers.push((owner, be16(p), ttl, rdata));
        }
        assert_eq!(pos, msg.len(), "no trailing bytes");
        (be16(0), be16(2), answers)
    }

    fn start() -> DnsServer {
        DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// (rcode, answers) for a question over UDP.
    fn ask(server: &DnsServer, name: &str, qtype: u16) -> (u16, Vec<Rr>) {
        let (_, flags, answers) = decode(&udp(server, &query(1, name, qtype)).unwrap());
        (flags & 0x0F, answers)
    }

    /// The answers for a question over TCP.
    fn ask_tcp(server: &DnsServer, name: &str, qtype: u16) -> Vec<Rr> {
        decode(&tcp(server, &[query(1, name, qtype)], 1)[0]).2
    }

    fn rr(owner: &str, rtype: u16, ttl: u32, rdata: &str) -> Rr {
        (owner.to_owned(), rtype, ttl, rdata.to_owned())
    }

    fn a(addr: &str) -> Answer {
        Answer::A(addr.parse().unwrap())
    }

    #[test]
    fn a_record_over_udp_and_tcp() {
        let server = start();
        assert_ne!(server.addr().port(), 0);
        server.set("WWW.example.com.", 60, vec![a("192.0.2.1")]);
        let q = query(0xBEEF, "www.Example.COM", TYPE_A);
        let second = query(7, "www.example.com.", TYPE_A);
        let mut replies = tcp(&server, &[q.clone(), second], 2);
        assert_eq!(decode(&replies.pop().unwrap()).0, 7, "second query");
        replies.push(udp(&server, &q).unwrap());
        for raw in replies {
            let (id, flags, answers) = decode(&raw);
            assert_eq!(id, 0xBEEF);
            assert_eq!(flags, 0x8000 | 0x0400 | 0x0100, "QR, AA, RD, NOERROR");
            assert_eq!(raw[12..q.len()], q[12..], "question echoed as asked");
            assert_eq!(raw[q.len()..q.len() + 2], [0xC0, 0x0C], "owner pointer");
            assert_eq!(answers, [rr("www.Example.COM", TYPE_A, 60, "192.0.2.1")]);
        }
    }

    #[test]
    fn cname_chain_in_order() {
        let server = start();
        let cname = |target: &str| vec![Answer::Cname(target.into())];
        server.set("api.example.com", 30, cname("Edge.CDN.test."));
        server.set("edge.cdn.test", 20, vec![a("10.1.2.3")]);
        let want = vec![
            rr("api.example.com", TYPE_CNAME, 30, "edge.cdn.test"),
            rr("edge.cdn.test", TYPE_A, 20, "10.1.2.3"),
        ];
        assert_eq!(ask(&server, "api.example.com", TYPE_A), (0, want.clone()));
        assert_eq!(ask_tcp(&server, "api.example.com", TYPE_A), want);
        assert_eq!(ask(&server, "api.example.com", TYPE_CNAME).1, want[..1]);
        // A loop stops after 8 hops; a target outside the zone ends the chain.
        server.set("loop.test", 5, cname("loop.test"));
        assert_eq!(ask(&server, "loop.test", TYPE_A).1.len(), MAX_HOPS + 1);
        server.set("out.test", 5, cname("elsewhere.invalid"));
        assert_eq!(ask(&server, "out.test", TYPE_A).1.len(), 1);
    }

    #[test]
    fn rotation_alternates() {
        let server = start();
        let addrs = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        server.rotate("rr.test", 1, addrs);
        let mut got: Vec<Rr> = (0..3)
            .flat_map(|_| ask(&server, "rr.test", TYPE_A).1)
            .collect();
        got.extend(ask_tcp(&server, "rr.test", TYPE_A));
        // AAAA on a rotating A set: NODATA, and the rotation does not move.
        assert_eq!(ask(&server, "rr.test", TYPE_AAAA), (0, vec![]));
        got.extend(ask(&server, "rr.test", TYPE_A).1);
        let (a, b) = ("10.0.0.1", "10.0.0.2");
        assert_eq!(
            got.iter().map(|r| &r.3).collect::<Vec<_>>(),
            [a, b, a, b, a]
        );
    }

    #[test]
    fn nxdomain_nodata_and_aaaa() {
        let server = start();
        let aaaa = |i| Answer::Aaaa(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i));
        server.set("v4.test", 10, vec![a("192.0.2.9")]);
        server.set("v6.test", 10, vec![aaaa(1), aaaa(0xff)]);
        let nxdomain = (u16::from(NXDOMAIN), vec![]);
        assert_eq!(ask(&server, "missing.test", TYPE_A), nxdomain);
        assert_eq!(ask(&server, "v4.test", TYPE_AAAA), (0, vec![]), "NODATA");
        let want = [
            rr("v6.test", TYPE_AAAA, 10, "2001:db8::1"),
            rr("v6.test", TYPE_AAAA, 10, "2001:db8::ff"),
        ];
        assert_eq!(ask_tcp(&server, "v6.test", TYPE_AAAA), want);
        server.set("v4.test", 10, vec![a("192.0.2.10")]);
        let want = [rr("v4.test", TYPE_A, 10, "192.0.2.10")];
        assert_eq!(ask(&server, "v4.test", TYPE_A).1, want, "replaced");
        // Over 512 bytes: truncated (TC, no answers) over UDP, whole over TCP.
        server.set("many.test", 10, (0..40).map(aaaa).collect());
        let (_, flags, answers) = decode(&udp(&server, &query(5, "many.test", 28)).unwrap());
        assert_eq!((flags & 0x0200, answers.len()), (0x0200, 0));
        assert_eq!(ask_tcp(&server, "many.test", TYPE_AAAA).len(), 40);
    }

    #[test]
    fn queries_are_logged() {
        let server = start();
        udp(&server, &query(1, "One.Test.", TYPE_A)).unwrap();
        ask_tcp(&server, "two.test", TYPE_AAAA);
        let want = [("one.test".into(), TYPE_A), ("two.test".into(), TYPE_AAAA)];
        assert_eq!(server.queries(), want);
    }

    #[test]
    fn malformed_input_gets_no_reply() {
        let server = start();
        server.set("ok.test", 1, vec![a("127.0.0.1")]);
        let good = query(1, "ok.test", TYPE_A);
        let mut response = good.clone();
        response[2] |= 0x80;
        let mut pointer = good[..12].to_vec();
        pointer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        let short = good[..good.len() - 1].to_vec();
        for bad in [vec![], vec![0; 11], short, response, pointer] {
            assert_eq!(udp(&server, &bad), None, "{bad:?}");
        }
        // Any single-byte corruption: no panic.
        for (i, byte) in (0..good.len()).flat_map(|i| [0, 0x3F, 0xC0, 0xFF].map(|b| (i, b))) {
            let mut msg = good.clone();
            msg[i] = byte;
            let _ = server.shared.respond(&msg, UDP_MAX);
        }
        let replies = tcp(&server, &[vec![1, 2, 3], good], 1);
        assert_eq!(decode(&replies[0]).2.len(), 1, "malformed one skipped");
        assert_eq!(ask(&server, "ok.test", TYPE_A).1.len(), 1);
    }

    #[test]
    fn ipv6_and_prompt_shutdown() {
        let server = DnsServer::start("[::1]:0".parse().unwrap())
            .expect("binding [::1]:0 (this test needs IPv6 on loopback: sysctl net.ipv6.conf.lo.disable_ipv6=0)");
        server.set("six.test", 1, vec![a("198.51.100.1")]);
        assert_eq!(ask(&server, "six.test", TYPE_A).1.len(), 1);
        let _idle = TcpStream::connect(server.addr()).unwrap();
        thread::sleep(POLL);
        let started = std::time::Instant::now();
        drop(server);
        assert!(started.elapsed() < POLL * 5, "threads stop on drop");
    }
}
