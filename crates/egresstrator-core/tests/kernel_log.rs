//! The deny log and audit mode against the real kernel: rendered rulesets loaded in throwaway
//! namespaces, real TCP connects and UDP datagrams, and an NFLOG listener bound to
//! [`NFLOG_GROUP`] in the workload's namespace, as the agent will.
//!
//! Topology, built fresh for every test: namespace A (the workload) and namespace B (its
//! peer), joined by a veth pair on documentation ranges only (192.0.2.0/24, 2001:db8::/64).
//! B answers on port 8080 (TCP and UDP) at `.2` / `::2` (a destination the ACLs deny) and at
//! `.3` / `::3` (one they allow). No packet can leave the two namespaces.
//!
//! The listener is a minimal nfnetlink_log client written here with raw netlink (socket, bind
//! to the group, copy-packet mode, queue threshold 1), so the tests need no NFLOG tool. Each
//! record's payload is parsed back to (address, protocol, port), so a test asserts exactly
//! which packets were logged, with which prefix.

// Test code: a panic is how a test fails (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use common::Netns;
use egresstrator_core::merge::Family;
use egresstrator_core::render::iptables::{self, restore_command, Jump};
use egresstrator_core::render::{
    nft, LOG_BURST, LOG_PREFIX_AUDIT, LOG_PREFIX_DENY, LOG_RATE_PER_SEC, NFLOG_GROUP,
};
use egresstrator_core::{AclTable, Mode, PolicyInput, Proto, Ruleset, WorkloadPolicy};

const TOOLS: &[&str] = &[
    "ip",
    "nft",
    "iptables",
    "iptables-restore",
    "ip6tables-restore",
];

// ---------------------------------------------------------------------------------------
// Raw netlink (std links libc; these are its prototypes on Linux)

mod sys {
    pub const AF_NETLINK: i32 = 16;
    pub const SOCK_RAW: i32 = 3;
    pub const SOCK_CLOEXEC: i32 = 0o2_000_000;
    pub const NETLINK_NETFILTER: i32 = 12;
    pub const SOL_SOCKET: i32 = 1;
    pub const SO_RCVTIMEO: i32 = 20;
    pub const SO_RCVBUFFORCE: i32 = 33;
    pub const CLONE_NEWNET: i32 = 0x4000_0000;

    #[repr(C)]
    pub struct SockaddrNl {
        pub nl_family: u16,
        pub nl_pad: u16,
        pub nl_pid: u32,
        pub nl_groups: u32,
    }

    #[repr(C)]
    pub struct Timeval {
        pub tv_sec: std::ffi::c_long,
        pub tv_usec: std::ffi::c_long,
    }

    extern "C" {
        pub fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
        pub fn bind(fd: i32, addr: *const SockaddrNl, len: u32) -> i32;
        pub fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            value: *const std::ffi::c_void,
            len: u32,
        ) -> i32;
        pub fn send(fd: i32, buf: *const std::ffi::c_void, len: usize, flags: i32) -> isize;
        pub fn recv(fd: i32, buf: *mut std::ffi::c_void, len: usize, flags: i32) -> isize;
        pub fn setns(fd: i32, nstype: i32) -> i32;
    }
}

fn check(rc: i64, what: &str) {
    assert!(rc >= 0, "{what}: {}", io::Error::last_os_error());
}

fn setsockopt<T>(fd: RawFd, name: i32, value: &T, what: &str) {
    // SAFETY: `value` points to a live `T` of the given size for the duration of the call.
    let rc = unsafe {
        sys::setsockopt(
            fd,
            sys::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    check(rc.into(), what);
}

/// Runs `f` on a new thread that has entered the named namespace, and returns its result.
/// Sockets made there stay in that namespace wherever they are used afterwards; only the
/// helper thread ever changes namespace, and it ends with `f`.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on an open namespace file; it changes only this thread's namespace.
        let rc = unsafe { sys::setns(file.as_raw_fd(), sys::CLONE_NEWNET) };
        check(rc.into(), &format!("setns {path}"));
        f()
    })
    .join()
    .expect("netns thread panicked")
}

// ---------------------------------------------------------------------------------------
// A minimal NFLOG listener

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

/// One NFLOG record: its prefix and the logged packet's destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Record {
    prefix: String,
    dst: IpAddr,
    proto: u8,
    dport: u16,
}

struct Nflog {
    fd: OwnedFd,
}

fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

impl Nflog {
    /// Binds a listener to `group` in the calling thread's namespace: copy-packet mode (the
    /// first 128 bytes, enough for the IP and transport headers) and a queue threshold of 1,
    /// so each record is sent at once instead of batched for up to a second.
    fn bind(group: u16) -> Nflog {
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let raw = unsafe {
            sys::socket(
                sys::AF_NETLINK,
                sys::SOCK_RAW | sys::SOCK_CLOEXEC,
                sys::NETLINK_NETFILTER,
            )
        };
        check(raw.into(), "socket(AF_NETLINK, NETLINK_NETFILTER)");
        // SAFETY: `raw` is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sys::SockaddrNl {
            nl_family: sys::AF_NETLINK as u16,
            nl_pad: 0,
            nl_pid: 0,
            nl_groups: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            sys::bind(
                fd.as_raw_fd(),
                &addr,
                std::mem::size_of::<sys::SockaddrNl>() as u32,
            )
        };
        check(rc.into(), "bind netlink socket");
        // Room for every record of the rate-limit tests and more.
        setsockopt(
            fd.as_raw_fd(),
            sys::SO_RCVBUFFORCE,
            &(4 << 20),
            "SO_RCVBUFFORCE",
        );
        let log = Nflog { fd };
        log.config(group, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        let mut mode = 128u32.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        log.config(group, NFULA_CFG_MODE, &mode);
        log.config(group, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
        log
    }

    /// Sends one config attribute for `group` and checks the kernel's acknowledgement.
    fn config(&self, group: u16, ty: u16, payload: &[u8]) {
        let mut body = vec![0u8, 0]; // nfgenmsg: AF_UNSPEC, NFNETLINK_V0
        body.extend_from_slice(&group.to_be_bytes());
        attr(&mut body, ty, payload);
        let mut msg = Vec::new();
        msg.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&u32::from(ty).to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        // SAFETY: sends `msg.len()` initialized bytes from `msg`.
        let n = unsafe { sys::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        check(n as i64, "send NFULNL_MSG_CONFIG");
        let mut buf = vec![0u8; 4096];
        let n = self
            .recv(&mut buf, Duration::from_secs(5))
            .expect("config ack");
        let ty_ack = u16::from_ne_bytes([buf[4], buf[5]]);
        assert_eq!(
            ty_ack, NLMSG_ERROR,
            "expected an ack, got message type {ty_ack}"
        );
        assert!(n >= 20);
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        assert_eq!(
            errno,
            0,
            "nfnetlink_log config {ty} for group {group}: {}",
            io::Error::from_raw_os_error(-errno)
        );
    }

    /// One datagram, or None after `timeout` without one.
    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Option<usize> {
        let tv = sys::Timeval {
            tv_sec: timeout.as_secs() as std::ffi::c_long,
            tv_usec: std::ffi::c_long::from(timeout.subsec_micros() as i32),
        };
        setsockopt(self.fd.as_raw_fd(), sys::SO_RCVTIMEO, &tv, "SO_RCVTIMEO");
        // SAFETY: receives at most `buf.len()` bytes into `buf`.
        let n = unsafe { sys::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                return None;
            }
            // ENOBUFS would mean records were lost: fail rather than under-count.
            panic!("recv from nfnetlink_log: {e}");
        }
        Some(n as usize)
    }

    /// Every record until none has come for `quiet`.
    fn drain(&self, quiet: Duration) -> Vec<Record> {
        let mut records = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while let Some(n) = self.recv(&mut buf, quiet) {
            parse_messages(&buf[..n], &mut records);
        }
        records
    }
}

fn parse_messages(mut data: &[u8], out: &mut Vec<Record>) {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        assert!(len >= 16 && len <= data.len(), "bad netlink length {len}");
        if ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
            out.push(parse_packet(&data[20..len]));
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
}

fn parse_packet(mut attrs: &[u8]) -> Record {
    let (mut prefix, mut payload) = (None, None);
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        assert!(len >= 4 && len <= attrs.len(), "bad attribute length {len}");
        let value = &attrs[4..len];
        match ty {
            NFULA_PREFIX => {
                let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                prefix = Some(String::from_utf8_lossy(&value[..end]).into_owned());
            }
            NFULA_PAYLOAD => payload = Some(value.to_vec()),
            _ => {}
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    let p = payload.expect("record without payload");
    let (dst, proto, l4) = match p[0] >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let dst: [u8; 4] = p[16..20].try_into().unwrap();
            (IpAddr::from(dst), p[9], &p[ihl..])
        }
        6 => {
            let dst: [u8; 16] = p[24..40].try_into().unwrap();
            (IpAddr::from(dst), p[6], &p[40..])
        }
        v => panic!("payload of IP version {v}"),
    };
    Record {
        prefix: prefix.unwrap_or_default(),
        dst,
        proto,
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    }
}

// ---------------------------------------------------------------------------------------
// Topology and rulesets

const PORT: u16 = 8080;
/// Allowed by the `web` ACL.
const ALLOWED: [&str; 2] = ["192.0.2.3", "2001:db8::3"];
/// Not allowed (allowlist), protected by the `db` ACL (protect).
const DENIED: [&str; 2] = ["192.0.2.2", "2001:db8::2"];
/// An address that only another tool's rule drops (UDP).
const OTHER_TOOL_PORT: u16 = 9999;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Nft,
    Iptables,
}

struct Pair {
    a: Netns,
    // Kept alive with the pair: dropping it deletes the peer namespace.
    _b: Netns,
    tcp: TcpListener,
    udp: UdpSocket,
}

/// A (workload) and B (peer) joined by a veth pair; B listening on 8080, TCP and UDP.
fn pair() -> Pair {
    let a = Netns::new();
    let b = Netns::new();
    for ns in [&a, &b] {
        ns.ok(&["ip", "link", "set", "lo", "up"], "");
    }
    a.ok(
        &[
            "ip", "link", "add", "eg0", "type", "veth", "peer", "name", "eg1", "netns", &b.name,
        ],
        "",
    );
    a.ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eg0"], "");
    a.ok(
        &["ip", "addr", "add", "2001:db8::1/64", "dev", "eg0", "nodad"],
        "",
    );
    a.ok(&["ip", "link", "set", "eg0", "up"], "");
    for addr in ["192.0.2.2/24", "192.0.2.3/24"] {
        b.ok(&["ip", "addr", "add", addr, "dev", "eg1"], "");
    }
    for addr in ["2001:db8::2/64", "2001:db8::3/64"] {
        b.ok(&["ip", "addr", "add", addr, "dev", "eg1", "nodad"], "");
    }
    b.ok(&["ip", "link", "set", "eg1", "up"], "");
    // Dual-stack sockets ([::] also takes IPv4) in B.
    let (tcp, udp) = in_netns(&b, || {
        let tcp = TcpListener::bind(sa("::", PORT)).expect("listen in B");
        let udp = UdpSocket::bind(sa("::", PORT)).expect("udp in B");
        // Room for every datagram of the rate-limit tests.
        setsockopt(
            udp.as_raw_fd(),
            sys::SO_RCVBUFFORCE,
            &(8 << 20),
            "SO_RCVBUFFORCE",
        );
        (tcp, udp)
    });
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    Pair { a, _b: b, tcp, udp }
}

fn ruleset(mode: Mode, audit: bool) -> Ruleset {
    let acls = AclTable::parse([
        (
            "web",
            "192.0.2.3:tcp/8080\n192.0.2.3:udp/8080\n[2001:db8::3]:tcp/8080\n[2001:db8::3]:udp/8080",
        ),
        (
            "db",
            "192.0.2.2:tcp/8080\n192.0.2.2:udp/8080\n[2001:db8::2]:tcp/8080\n[2001:db8::2]:udp/8080\n\
             192.0.2.2:udp/9999",
        ),
    ]);
    let services = Default::default();
    let input = PolicyInput {
        mode,
        acls: &acls,
        services: &services,
        dns_allow: &[],
    };
    let workload = WorkloadPolicy {
        acls: egresstrator_core::acl::parse_acl_list("web").unwrap(),
        resolvers: vec![],
    };
    let r = egresstrator_core::compile(&workload, &input)
        .unwrap()
        .ruleset;
    Ruleset { audit, ..r }
}

/// Loads the ruleset in A as the applier would, after another tool's rule that drops UDP to
/// 192.0.2.2:9999 (which must keep working in every mode).
fn load(pair: &Pair, backend: Backend, r: &Ruleset) {
    match backend {
        Backend::Nft => {
            pair.a.ok(
                &["nft", "-f", "-"],
                "table inet other {\n chain c {\n  type filter hook output priority 10;\n  \
                 ip daddr 192.0.2.2 udp dport 9999 drop\n }\n}\n",
            );
            pair.a.ok(&["nft", "-f", "-"], &nft::render(r));
        }
        Backend::Iptables => {
            pair.a.ok(
                &[
                    "iptables",
                    "-A",
                    "OUTPUT",
                    "-d",
                    "192.0.2.2",
                    "-p",
                    "udp",
                    "--dport",
                    "9999",
                    "-j",
                    "DROP",
                ],
                "",
            );
            let scripts = iptables::render(r, Jump::Missing);
            for (family, script) in [(Family::V4, &scripts.v4), (Family::V6, &scripts.v6)] {
                let argv = restore_command(family);
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                pair.a.ok(&argv, script);
            }
        }
    }
}

fn connect(pair: &Pair, to: SocketAddr) -> io::Result<()> {
    in_netns(&pair.a, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).map(drop)
    })
}

fn udp_socket(pair: &Pair) -> UdpSocket {
    in_netns(&pair.a, || UdpSocket::bind(sa("::", 0)).expect("udp in A"))
}

/// The payload of every datagram waiting at B (waits half a second for stragglers).
fn received(pair: &Pair) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n) = pair.udp.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

fn accepted_count(pair: &Pair) -> usize {
    pair.tcp.set_nonblocking(true).unwrap();
    std::iter::from_fn(|| pair.tcp.accept().ok()).count()
}

fn record(prefix: &str, dst: &str, proto: Proto, dport: u16) -> Record {
    Record {
        prefix: prefix.to_owned(),
        dst: ip(dst),
        proto: match proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        },
        dport,
    }
}

/// v4 mapped into the dual-stack socket's address space: what `send_to` needs from a `[::]`
/// socket.
fn target(addr: &str, port: u16) -> SocketAddr {
    match ip(addr) {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port),
        v6 => SocketAddr::new(v6, port),
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// Allowed traffic first (no record), then the denied destinations, over TCP and UDP, IPv4
/// and IPv6: each denied packet is either refused (enforcing) or delivered (audit), and logged
/// exactly once with the matching prefix.
fn deny_or_audit(backend: Backend, mode: Mode, audit: bool) {
    let what = format!("{backend:?} {mode} audit={audit}");
    let pair = pair();
    let r = ruleset(mode, audit);
    load(&pair, backend, &r);
    let log = in_netns(&pair.a, || Nflog::bind(NFLOG_GROUP));
    let udp = udp_socket(&pair);

    // Control: allowed destinations pass and are not logged.
    for addr in ALLOWED {
        connect(&pair, sa(addr, PORT)).unwrap_or_else(|e| panic!("{what}: connect {addr}: {e}"));
        udp.send_to(b"allowed", target(addr, PORT))
            .unwrap_or_else(|e| panic!("{what}: send to {addr}: {e}"));
    }
    assert_eq!(accepted_count(&pair), 2, "{what}");
    assert_eq!(received(&pair), vec![b"allowed".to_vec(); 2], "{what}");

    for addr in DENIED {
        let tcp = connect(&pair, sa(addr, PORT));
        let sent = udp.send_to(b"denied", target(addr, PORT));
        if audit {
            tcp.unwrap_or_else(|e| {
                panic!("{what}: audit must let the connect to {addr} through: {e}")
            });
            sent.unwrap_or_else(|e| panic!("{what}: audit must let UDP to {addr} through: {e}"));
        } else {
            let e = tcp.expect_err("denied connect succeeded");
            assert_eq!(
                e.kind(),
                ErrorKind::ConnectionRefused,
                "{what}: {addr}: {e}"
            );
            // The reject happens in the sender's own output path: sendto fails with EPERM.
            let e = sent.expect_err("denied datagram was sent");
            assert_eq!(e.raw_os_error(), Some(1), "{what}: {addr}: {e}");
        }
    }
    let delivered = if audit { 2 } else { 0 };
    assert_eq!(accepted_count(&pair), delivered, "{what}");
    assert_eq!(
        received(&pair),
        vec![b"denied".to_vec(); delivered],
        "{what}"
    );

    // Refused by us (enforcing), or logged by us and then dropped by another tool's rule that
    // comes after ours (audit): audit's accept must not skip other tools' rules.
    let e = udp
        .send_to(b"other", target("192.0.2.2", OTHER_TOOL_PORT))
        .expect_err("the other tool's drop was skipped");
    assert_eq!(e.raw_os_error(), Some(1), "{what}: {e}");

    let prefix = if audit {
        LOG_PREFIX_AUDIT
    } else {
        LOG_PREFIX_DENY
    };
    let mut expected = vec![record(prefix, "192.0.2.2", Proto::Udp, OTHER_TOOL_PORT)];
    for addr in DENIED {
        expected.push(record(prefix, addr, Proto::Tcp, PORT));
        expected.push(record(prefix, addr, Proto::Udp, PORT));
    }
    expected.sort();
    let mut got = log.drain(Duration::from_millis(500));
    got.sort();
    assert_eq!(got, expected, "{what}: NFLOG records");
}

#[test]
fn nft_denied_connections_are_logged_and_allowed_ones_are_not() {
    if !common::kernel_ready("nft_denied_connections_are_logged", TOOLS) {
        return;
    }
    deny_or_audit(Backend::Nft, Mode::Allowlist, false);
    deny_or_audit(Backend::Nft, Mode::Protect, false);
}

#[test]
fn iptables_denied_connections_are_logged_and_allowed_ones_are_not() {
    if !common::kernel_ready("iptables_denied_connections_are_logged", TOOLS) {
        return;
    }
    deny_or_audit(Backend::Iptables, Mode::Allowlist, false);
    deny_or_audit(Backend::Iptables, Mode::Protect, false);
}

#[test]
fn nft_audit_logs_and_lets_through() {
    if !common::kernel_ready("nft_audit_logs_and_lets_through", TOOLS) {
        return;
    }
    deny_or_audit(Backend::Nft, Mode::Allowlist, true);
    deny_or_audit(Backend::Nft, Mode::Protect, true);
}

#[test]
fn iptables_audit_logs_and_lets_through() {
    if !common::kernel_ready("iptables_audit_logs_and_lets_through", TOOLS) {
        return;
    }
    deny_or_audit(Backend::Iptables, Mode::Allowlist, true);
    deny_or_audit(Backend::Iptables, Mode::Protect, true);
}

/// Fail closed stays closed: deny-all with `audit` set refuses everything, even what the
/// workload's ACLs would allow, and logs it as a denial.
#[test]
fn deny_all_is_never_audited() {
    if !common::kernel_ready("deny_all_is_never_audited", TOOLS) {
        return;
    }
    for backend in [Backend::Nft, Backend::Iptables] {
        let pair = pair();
        let r = Ruleset {
            audit: true,
            ..Ruleset::deny_all()
        };
        load(&pair, backend, &r);
        let log = in_netns(&pair.a, || Nflog::bind(NFLOG_GROUP));
        let e = connect(&pair, sa(ALLOWED[0], PORT)).expect_err("deny-all let a connect out");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{backend:?}: {e}");
        assert_eq!(accepted_count(&pair), 0);
        let got = log.drain(Duration::from_millis(500));
        assert_eq!(
            got,
            [record(LOG_PREFIX_DENY, ALLOWED[0], Proto::Tcp, PORT)],
            "{backend:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The rate limit

/// A flood of refused (or audited) datagrams, 250 back to back and then 250 paced over about a
/// second, yields `LOG_BURST + LOG_RATE_PER_SEC × elapsed` records, give or take one for
/// rounding: the bucket starts full, and a datagram every 4 ms takes each token within 4 ms of
/// its refill. Both bounds come from the measured elapsed time, so a slow or busy machine
/// changes the numbers, not the outcome (a pause under 2 s only lets tokens pile up, and they
/// are all taken after it). In audit mode every datagram is still let through: only the log is
/// limited.
fn flood(backend: Backend, audit: bool) {
    const BACK_TO_BACK: usize = 250;
    const PACED: usize = 250;
    let what = format!("{backend:?} audit={audit}");
    let pair = pair();
    load(&pair, backend, &ruleset(Mode::Allowlist, audit));
    let log = in_netns(&pair.a, || Nflog::bind(NFLOG_GROUP));
    let udp = udp_socket(&pair);
    let to = target(DENIED[0], PORT);
    let mut refused = 0;
    let mut send = |i: usize| match udp.send_to(&(i as u32).to_be_bytes(), to) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(1) => refused += 1,
        Err(e) => panic!("{what}: send: {e}"),
    };
    let start = Instant::now();
    for i in 0..BACK_TO_BACK {
        send(i);
    }
    let burst_took = start.elapsed();
    for i in 0..PACED {
        std::thread::sleep(Duration::from_millis(4));
        send(BACK_TO_BACK + i);
    }
    let elapsed = start.elapsed();
    let records = log.drain(Duration::from_millis(500));
    let arrived = received(&pair).len();
    let expected = f64::from(LOG_BURST) + f64::from(LOG_RATE_PER_SEC) * elapsed.as_secs_f64();
    eprintln!(
        "{what}: {BACK_TO_BACK} datagrams in {burst_took:?}, then {PACED} more, {elapsed:?} in \
         all: {refused} refused, {arrived} arrived, {} records (expected about {expected:.1})",
        records.len()
    );
    let prefix = if audit {
        LOG_PREFIX_AUDIT
    } else {
        LOG_PREFIX_DENY
    };
    let record = record(prefix, DENIED[0], Proto::Udp, PORT);
    assert!(records.iter().all(|r| *r == record), "{what}: {records:?}");
    let n = records.len() as f64;
    assert!(
        n <= expected + 1.0 && n >= expected - 2.0,
        "{what}: {n} records, expected {expected:.1}"
    );
    let total = BACK_TO_BACK + PACED;
    if audit {
        assert_eq!(
            refused, 0,
            "{what}: audit refused datagrams over the log limit"
        );
        assert_eq!(arrived, total, "{what}");
    } else {
        assert_eq!(refused, total, "{what}");
        assert_eq!(arrived, 0, "{what}");
    }
}

#[test]
fn nft_log_rate_is_bounded() {
    if !common::kernel_ready("nft_log_rate_is_bounded", TOOLS) {
        return;
    }
    flood(Backend::Nft, false);
    flood(Backend::Nft, true);
}

#[test]
fn iptables_log_rate_is_bounded() {
    if !common::kernel_ready("iptables_log_rate_is_bounded", TOOLS) {
        return;
    }
    flood(Backend::Iptables, false);
    flood(Backend::Iptables, true);
}
