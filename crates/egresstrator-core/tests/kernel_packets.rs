//! Verdicts checked by real packets: the kernel is the oracle, [`decide`] is on trial.
//!
//! `kernel_props.rs` asks the kernel about set membership and computes verdicts in test code.
//! Here nothing is computed: a ruleset is loaded into a namespace and real TCP connections and
//! UDP datagrams leave it, to listeners the test owns.
//!
//! Every run builds two fresh namespaces, `egt-pkt-<pid>-<n>-w` (the workload, W) and
//! `egt-pkt-<pid>-<n>-s` (the server, S), joined by one veth pair. W's only routes are the
//! defaults over the veth; S has nothing but `lo` and its end of the pair, so no packet can
//! leave the two. Before a destination is probed its exact address is assigned to S (IPv4
//! `/32`, IPv6 `/128 nodad`), and S listens on it: a TCP listener (connections complete in the
//! backlog, no accept needed) and a UDP socket that echoes. Loopback destinations get their
//! listener in W itself. Every probed address is thus one of the test's own hosts, whatever
//! the ACLs name.
//!
//! A run, for one ruleset and a list of probes:
//!
//! 1. Control, with no ruleset in W: every probe must reach its listener (TCP connects, UDP
//!    echoes). So a closed port can never pass for a refusal below. The control's sockets
//!    stay open until the end, so no later probe reuses their source ports (and conntrack
//!    entries). W is new for every run, so no conntrack entry or rule survives from an
//!    earlier one. Before the control, the test waits until both links are up and every
//!    IPv6 address answers neighbour solicitations (see `Pair::wait_ready`).
//! 2. The ruleset is loaded into W (`nft -f -`, or `iptables-restore -w 5 --noflush` and
//!    `ip6tables-restore -w 5 --noflush` with the jump into `OUTPUT`, as the applier runs
//!    them), and every probe is sent again, in parallel, with a 300 ms timeout. The kernel's
//!    outcome is *pass* (connected, or echoed), *refused* (an error: TCP must see
//!    `ECONNREFUSED`, the ruleset's reset; UDP any error, in practice `EPERM` from `send`),
//!    or *silent* (a timeout, which the rulesets never cause: they reject, not drop, so
//!    silence is always a failure).
//! 3. Each outcome is compared with the expectation: pass exactly when the decision
//!    [`passes`](egresstrator_core::policy::Decision::passes), i.e. when it allows, or denies
//!    under an auditing ruleset (logged and let through).
//!
//! The tests:
//!
//! - `{nft,iptables}_{allowlist,protect}_verdicts_match_decide`: random rulesets (IPv4/IPv6
//!   CIDRs with host bits, TCP/UDP ports and ranges, /0 lines, IPv4-mapped IPv6 networks,
//!   named and unnamed ACLs, random resolvers and DNS allow lists, audit on or off), each with
//!   about 30 probes: two thirds inside the ruleset's own networks (at, next to or away from
//!   its ports, DNS to its resolvers or DNS allow list included), the rest anywhere, some sent
//!   as `::ffff:a.b.c.d` from an IPv6 socket, plus loopback and UDP to ports 123 and 53. The
//!   expectation is `decide()`. 8 cases per test by default (16 per backend and 16 per mode);
//!   set `EGRESSTRATOR_PROP_CASES` for more. Each test also checks that both outcomes are
//!   common (at least one probe in 20 passes, and one in 20 is refused).
//! - `golden_decisions_hold_for_real_packets`: the oracle for `tests/golden/`. Each case's
//!   stored `expected.nft`, then its stored `expected-iptables-v4.txt` and `-v6.txt`, are
//!   loaded, and every line of its stored `expected-decisions.txt` is sent as a packet; the
//!   kernel must agree with the stored verdict. `decide()` is not used at all, so a bless that
//!   changes a decision the renderers do not also change (or the reverse) fails here.
//! - Controls that show the comparison can fail: a flipped expectation (deny, allow, and an
//!   audited deny read as a plain deny) is reported, and a missing listener fails the control.
//!
//! Needs root, `ip`, `nft`, `iptables-restore` and `ip6tables-restore`; without them every test
//! fails and says so (`make test` installs everything), it never passes unrun.
//!
//! Sockets are created inside a namespace by a thread that first `setns`es into it; a socket
//! stays in the namespace it was created in. The test process's own namespace is never
//! touched.

// Test code: a panic is how a test fails (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{ErrorKind, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use egresstrator_core::acl::parse_acl_list;
use egresstrator_core::merge::Family;
use egresstrator_core::policy::{
    compile, decide, default_dns_allow, Mode, PolicyInput, ServiceTable, WorkloadPolicy,
};
use egresstrator_core::render::{iptables, nft};
use egresstrator_core::{AclTable, Proto, Ruleset};
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const TOOLS: &[&str] = &["ip", "nft", "iptables-restore", "ip6tables-restore"];

/// W's own addresses. Never probed (a probe to one would be local to W).
const W_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const W_V6: Ipv6Addr = Ipv6Addr::new(0xfd65, 0x6774, 0x706b, 0, 0, 0, 0, 1);

/// How long a probe waits for a connection or an echo.
const TIMEOUT: Duration = Duration::from_millis(300);
/// Probing threads per phase.
const WORKERS: usize = 8;

fn config() -> Config {
    let cases = std::env::var("EGRESSTRATOR_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    Config {
        cases,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces

/// Moves the calling thread into the network namespace `ns`.
fn enter(ns: &File) {
    // SAFETY: setns(2) only reads the descriptor, which `ns` keeps open for the call, and
    // changes the network namespace of the calling thread alone.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs a program with `stdin` as its input; its stdout, or what went wrong.
fn run(argv: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .env("PATH", common::PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {argv:?}: {e}"))?;
    let mut pipe = child.stdin.take().expect("stdin");
    let input = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait {argv:?}: {e}"))?;
    let _ = writer.join();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip netns add`, deleted on drop.
struct NsName(String);

impl Drop for NsName {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "delete", &self.0], "");
    }
}

/// A named namespace and a descriptor of it for `setns`.
struct Ns {
    fd: File,
    name: NsName,
}

impl Ns {
    fn add(name: String) -> Ns {
        run(&["ip", "netns", "add", &name], "").unwrap_or_else(|e| panic!("{e}"));
        let name = NsName(name);
        let fd = File::open(format!("/run/netns/{}", name.0))
            .unwrap_or_else(|e| panic!("open /run/netns/{}: {e}", name.0));
        Ns { fd, name }
    }

    fn name(&self) -> &str {
        &self.name.0
    }

    /// `ip -n NAME -batch -`, one command a line.
    fn ip(&self, batch: &str) {
        run(&["ip", "-n", self.name(), "-batch", "-"], batch)
            .unwrap_or_else(|e| panic!("{e}\nbatch:\n{batch}"));
    }

    fn exec(&self, argv: &[&str], stdin: &str) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", self.name()];
        full.extend_from_slice(argv);
        run(&full, stdin)
    }
}

static PAIRS: AtomicUsize = AtomicUsize::new(0);

/// W and S, joined by a veth pair; S owns `addrs`.
struct Pair {
    w: Ns,
    s: Ns,
}

impl Pair {
    fn new(addrs: &BTreeSet<IpAddr>) -> Pair {
        let base = format!(
            "egt-pkt-{}-{}",
            std::process::id(),
            PAIRS.fetch_add(1, Ordering::Relaxed)
        );
        let w = Ns::add(format!("{base}-w"));
        let s = Ns::add(format!("{base}-s"));
        // Created inside the namespaces: no name ever appears in the host's namespace.
        w.ip(&format!(
            "link add w0 type veth peer name s0 netns {}\n",
            s.name()
        ));
        s.ip("link set lo up\nlink set s0 up\n");
        w.ip(&format!(
            "link set lo up\nlink set w0 up\n\
             addr add {W_V4}/32 dev w0\n\
             addr add {W_V6}/128 dev w0 nodad\n\
             route add default dev w0 src {W_V4}\n\
             route add ::/0 dev w0 src {W_V6}\n"
        ));
        let mut batch = String::new();
        for a in addrs {
            match a {
                IpAddr::V4(a) => batch.push_str(&format!("addr add {a}/32 dev s0\n")),
                IpAddr::V6(a) => batch.push_str(&format!("addr add {a}/128 dev s0 nodad\n")),
            }
        }
        batch.push_str("route add default dev s0\nroute add ::/0 dev s0\n");
        s.ip(&batch);
        let pair = Pair { w, s };
        pair.wait_ready(addrs);
        pair
    }

    /// Links, addresses and neighbours of both, for a failure message.
    fn describe(&self) -> String {
        let mut s = String::new();
        for ns in [&self.w, &self.s] {
            for what in ["-s link", "addr", "neigh", "-6 neigh", "-6 route"] {
                let mut argv = vec!["ip", "-n", ns.name()];
                argv.extend(what.split(' '));
                argv.push("show");
                let out = run(&argv, "").unwrap_or_else(|e| e);
                s.push_str(&format!("{} ip {what}:\n{out}", ns.name()));
            }
            let out = ns.exec(&["nstat", "-as"], "").unwrap_or_else(|e| e);
            s.push_str(&format!("{} nstat:\n{out}", ns.name()));
        }
        s
    }

    /// Waits until both ends of the pair can send and answer. Two things lag behind the `ip`
    /// commands, more so when many namespaces come and go at once:
    ///
    /// - The end brought up first, without a carrier, drops what it sends (no qdisc attached)
    ///   until the kernel's link watcher handles the carrier event, which it may delay by up
    ///   to a second; the watcher also sets the operational state to UP then.
    /// - An IPv6 address joins its solicited-node multicast group in a work item that runs
    ///   after `ip addr add` returns (even with `nodad`). Until then, neighbour solicitations
    ///   for it are dropped, and the next is only sent a second later.
    fn wait_ready(&self, addrs: &BTreeSet<IpAddr>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let solicited = |a: &Ipv6Addr| {
            Ipv6Addr::from(0xff02_0000_0000_0000_0000_0001_ff00_0000 | (u128::from(*a) & 0xff_ffff))
        };
        let s_groups: BTreeSet<Ipv6Addr> = addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(solicited(a)),
                IpAddr::V4(_) => None,
            })
            .collect();
        let w_groups = BTreeSet::from([solicited(&W_V6)]);
        for (ns, dev, groups) in [(&self.w, "w0", w_groups), (&self.s, "s0", s_groups)] {
            loop {
                let argv = ["ip", "-n", ns.name(), "-o", "link", "show", "dev", dev];
                let link = run(&argv, "").unwrap_or_else(|e| panic!("{e}"));
                let argv = ["ip", "-n", ns.name(), "-6", "maddr", "show", "dev", dev];
                let maddr = run(&argv, "").unwrap_or_else(|e| panic!("{e}"));
                let joined: BTreeSet<Ipv6Addr> = maddr
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                if link.contains(" state UP ")
                    && !link.contains(" qdisc noop ")
                    && joined.is_superset(&groups)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{dev} in {} not ready after 5 s: {link}\n{maddr}",
                    ns.name()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Probes, listeners, outcomes

/// One packet to send: `addr` as the client connects to it (possibly `::ffff:a.b.c.d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    proto: Proto,
    addr: IpAddr,
    port: u16,
}

impl Probe {
    /// The address the packet really goes to (an IPv4-mapped address leaves as IPv4).
    fn target(&self) -> IpAddr {
        self.addr.to_canonical()
    }

    fn key(&self) -> (Proto, IpAddr, u16) {
        (self.proto, self.target(), self.port)
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.proto,
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// Whether a packet to `a` can be tested here: a unicast address S can own (or loopback,
/// which W owns), other than W's own.
fn probeable(a: IpAddr) -> bool {
    match a.to_canonical() {
        IpAddr::V4(v) => {
            let first = v.octets()[0];
            first != 0 && first < 224 && v != W_V4
        }
        IpAddr::V6(v) => {
            let seg = v.segments();
            v.is_loopback()
                || !(v.is_unspecified()
                    || v == W_V6
                    || seg[0] & 0xff00 == 0xff00 // multicast
                    || seg[0] & 0xffc0 == 0xfe80 // link-local
                    || u128::from(v) >> 32 == 0) // ::/96, IPv4-compatible
        }
    }
}

/// What the kernel did with a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Connected, or echoed.
    Pass,
    /// Failed with an error (kind, and the error's text).
    Refused(ErrorKind, String),
    /// No answer within the timeout.
    Silent,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("passed"),
            Outcome::Refused(_, e) => write!(f, "refused ({e})"),
            Outcome::Silent => write!(f, "silent (no answer in {TIMEOUT:?})"),
        }
    }
}

fn refused(e: std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Silent,
        k => Outcome::Refused(k, e.to_string()),
    }
}

/// A socket a probe leaves open (the control's, to hold its source port).
#[allow(dead_code)] // Held, never read.
enum Held {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

static TOKENS: AtomicUsize = AtomicUsize::new(0);

/// Sends one probe from the calling thread's namespace.
fn probe(p: &Probe) -> (Outcome, Option<Held>) {
    let dest = SocketAddr::new(p.addr, p.port);
    match p.proto {
        Proto::Tcp => match TcpStream::connect_timeout(&dest, TIMEOUT) {
            Ok(s) => (Outcome::Pass, Some(Held::Tcp(s))),
            Err(e) => (refused(e), None),
        },
        Proto::Udp => {
            let local: SocketAddr = match p.addr {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let sock = UdpSocket::bind(local).expect("bind udp client");
            if let Err(e) = sock.connect(dest) {
                return (refused(e), None);
            }
            sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            let token = format!("egt-pkt {}", TOKENS.fetch_add(1, Ordering::Relaxed));
            let mut buf = [0u8; 64];
            // A second datagram if the first echo does not come: only a failure can need it.
            for _ in 0..2 {
                if let Err(e) = sock.send(token.as_bytes()) {
                    return (refused(e), None);
                }
                match sock.recv(&mut buf) {
                    Ok(n) if &buf[..n] == token.as_bytes() => {
                        return (Outcome::Pass, Some(Held::Udp(sock)))
                    }
                    Ok(_) => {}
                    Err(e) => match refused(e) {
                        Outcome::Silent => {}
                        other => return (other, None),
                    },
                }
            }
            (Outcome::Silent, None)
        }
    }
}

/// Sends every probe from namespace `ns`, `WORKERS` at a time; the outcomes in order, and
/// the sockets of those that passed.
fn probe_all(ns: &Ns, probes: &[Probe]) -> (Vec<Outcome>, Vec<Held>) {
    let mut outcomes = vec![Outcome::Silent; probes.len()];
    let mut held = Vec::new();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|k| {
                let fd = &ns.fd;
                scope.spawn(move || {
                    enter(fd);
                    probes
                        .iter()
                        .enumerate()
                        .skip(k)
                        .step_by(WORKERS)
                        .map(|(i, p)| (i, probe(p)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            for (i, (outcome, h)) in w.join().expect("probe thread") {
                outcomes[i] = outcome;
                held.extend(h);
            }
        }
    });
    (outcomes, held)
}

/// The listeners of one run: TCP listeners (never accepting: the kernel completes
/// connections into the backlog) and UDP echo threads, stopped and joined on drop.
struct Listeners {
    _tcp: Vec<TcpListener>,
    stop: Arc<AtomicBool>,
    echo: Vec<JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.echo.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens a listener for every target, in S, or in W for loopback targets.
fn listen(pair: &Pair, targets: &BTreeSet<(Proto, IpAddr, u16)>) -> Listeners {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    std::thread::scope(|scope| {
        let threads: Vec<_> = [(&pair.s, false), (&pair.w, true)]
            .into_iter()
            .map(|(ns, loopback)| {
                scope.spawn(move || {
                    enter(&ns.fd);
                    let mut tcp = Vec::new();
                    let mut udp = Vec::new();
                    for &(proto, addr, port) in targets {
                        if addr.is_loopback() != loopback {
                            continue;
                        }
                        let at = SocketAddr::new(addr, port);
                        match proto {
                            Proto::Tcp => tcp.push(
                                TcpListener::bind(at)
                                    .unwrap_or_else(|e| panic!("listen tcp {at}: {e}")),
                            ),
                            Proto::Udp => udp.push(
                                UdpSocket::bind(at)
                                    .unwrap_or_else(|e| panic!("bind udp {at}: {e}")),
                            ),
                        }
                    }
                    (tcp, udp)
                })
            })
            .collect();
        for t in threads {
            let (t, u) = t.join().expect("listener thread");
            tcp.extend(t);
            udp.extend(u);
        }
    });
    let echo = udp
        .into_iter()
        .map(|sock| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // The timeout only bounds how long a stop takes to be seen.
                sock.set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("timeout");
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            })
        })
        .collect();
    Listeners {
        _tcp: tcp,
        stop,
        echo,
    }
}

/// A ruleset as one backend loads it.
enum Load {
    Nft(String),
    Iptables { v4: String, v6: String },
}

impl Load {
    fn backend(&self) -> &'static str {
        match self {
            Load::Nft(_) => "nft",
            Load::Iptables { .. } => "iptables",
        }
    }

    fn load_into(&self, w: &Ns) -> Result<(), String> {
        match self {
            Load::Nft(script) => w.exec(&["nft", "-f", "-"], script).map(drop),
            Load::Iptables { v4, v6 } => {
                for (family, script) in [(Family::V4, v4), (Family::V6, v6)] {
                    let argv = iptables::restore_command(family);
                    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                    w.exec(&argv, script)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Load::Nft(s) => f.write_str(s),
            Load::Iptables { v4, v6 } => write!(f, "{v4}{v6}"),
        }
    }
}

/// One run (see the module docs): control without a ruleset, then the ruleset, then the
/// kernel's outcome for every probe. Listeners are opened for `listen_for` only (all probes
/// but in the control test). Err when the setup or the control fails.
fn run_packets_with(
    load: &Load,
    probes: &[Probe],
    listen_for: &[Probe],
) -> Result<Vec<Outcome>, String> {
    let targets: BTreeSet<_> = listen_for.iter().map(Probe::key).collect();
    let addrs = targets
        .iter()
        .map(|t| t.1)
        .filter(|a| !a.is_loopback())
        .collect();
    let pair = Pair::new(&addrs);
    let listeners = listen(&pair, &targets);
    let (control, held) = probe_all(&pair.w, probes);
    let dead: Vec<String> = probes
        .iter()
        .zip(&control)
        .filter(|(_, o)| **o != Outcome::Pass)
        .map(|(p, o)| format!("  {p}: {o}"))
        .collect();
    if !dead.is_empty() {
        return Err(format!(
            "control: without a ruleset, {} of {} probes did not reach their listener:\n{}\n{}",
            dead.len(),
            probes.len(),
            dead.join("\n"),
            pair.describe()
        ));
    }
    load.load_into(&pair.w)
        .map_err(|e| format!("loading the {} ruleset: {e}", load.backend()))?;
    let (outcomes, _) = probe_all(&pair.w, probes);
    drop(held);
    drop(listeners);
    Ok(outcomes)
}

fn run_packets(load: &Load, probes: &[Probe]) -> Result<Vec<Outcome>, String> {
    run_packets_with(load, probes, probes)
}

/// What a probe should do: pass or be refused, and why (for messages).
struct Expect {
    passes: bool,
    why: String,
}

/// The probes whose outcome contradicts the expectation, one message each.
fn mismatches(probes: &[Probe], outcomes: &[Outcome], expected: &[Expect]) -> Vec<String> {
    assert_eq!(probes.len(), outcomes.len());
    assert_eq!(probes.len(), expected.len());
    let mut bad = Vec::new();
    for ((p, o), e) in probes.iter().zip(outcomes).zip(expected) {
        let ok = match (o, e.passes) {
            (Outcome::Pass, true) => true,
            // The ruleset refuses TCP with a reset: the client sees ECONNREFUSED. Any other
            // error would be another mechanism (or none of ours).
            (Outcome::Refused(kind, _), false) => {
                p.proto == Proto::Udp || *kind == ErrorKind::ConnectionRefused
            }
            _ => false,
        };
        if !ok {
            let want = if e.passes { "pass" } else { "be refused" };
            bad.push(format!("{p}: kernel {o}, expected to {want}: {}", e.why));
        }
    }
    bad
}

fn expect_decide(r: &Ruleset, p: &Probe) -> Expect {
    let d = decide(r, p.addr, p.proto, p.port);
    Expect {
        passes: d.passes(),
        why: format!(
            "decide() {:?} ({}){}",
            d.verdict,
            d.reason,
            if d.audited { " [audited]" } else { "" }
        ),
    }
}

fn nft_load(r: &Ruleset) -> Load {
    Load::Nft(nft::render(r))
}

fn iptables_load(r: &Ruleset) -> Load {
    let s = iptables::render(r, iptables::Jump::Missing);
    Load::Iptables { v4: s.v4, v6: s.v6 }
}

// ---------------------------------------------------------------------------------------
// Random rulesets (a smaller cousin of kernel_props.rs's generator: no service references,
// which reach the kernel as the same kind of set elements)

const ACL_NAMES: &[&str] = &["a0", "a1", "a2", "a3"];

#[derive(Clone, Debug)]
struct Scenario {
    mode: Mode,
    audit: bool,
    acls: Vec<(String, String)>,
    workload: Vec<String>,
    resolvers: Vec<IpAddr>,
    dns_allow: Option<Vec<IpNet>>,
    seeds: Vec<Seed>,
}

/// A probe before it is placed: `inside` picks an address in one of the ruleset's networks.
#[derive(Clone, Debug)]
struct Seed {
    inside: bool,
    pick: usize,
    offset: u128,
    tcp: bool,
    port_mode: u8,
    port: u16,
    random_addr: IpAddr,
    mapped: bool,
}

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => any::<u16>().prop_map(|l| Ipv4Addr::from(0x0a00_0000 | u32::from(l))),
        2 => (prop::sample::select(vec![[192u8, 0, 2], [198, 51, 100], [203, 0, 113]]), any::<u8>())
            .prop_map(|([a, b, c], d)| Ipv4Addr::new(a, b, c, d)),
        1 => any::<u32>()
            .prop_filter("not loopback", |a| a >> 24 != 127)
            .prop_map(Ipv4Addr::from),
    ]
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        4 => (any::<u16>(), any::<u16>())
            .prop_map(|(a, b)| Ipv6Addr::new(0x2001, 0xdb8, 0, a & 0xf, 0, 0, 0, b)),
        2 => any::<u128>().prop_map(|x| Ipv6Addr::from((0xfd00u128 << 112) | (x >> 16))),
        1 => any::<u128>()
            .prop_filter("not loopback", |x| *x != 1)
            .prop_map(Ipv6Addr::from),
        1 => any::<u16>().prop_map(|l| Ipv4Addr::from(0x0a00_0000 | u32::from(l)).to_ipv6_mapped()),
    ]
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![3 => v4().prop_map(IpAddr::V4), 2 => v6().prop_map(IpAddr::V6)]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![53u16, 80, 123, 443, 5432, 8080, 65535]),
        2 => 1u16..1100,
        1 => 1u16..=65535,
    ]
}

fn ports() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => port().prop_map(|p| p.to_string()),
        2 => (port(), 0u16..2000)
            .prop_map(|(lo, span)| format!("{lo}-{}", lo.saturating_add(span))),
    ]
}

fn net_line() -> impl Strategy<Value = String> {
    let proto = || prop::sample::select(vec!["tcp", "udp"]);
    let v4_line = (
        v4(),
        prop_oneof![1 => Just(0u8), 2 => 8u8..=16, 6 => 16u8..=32],
        proto(),
        ports(),
    )
        .prop_map(|(a, len, p, ports)| format!("{a}/{len}:{p}/{ports}"));
    let v6_line = (
        v6(),
        prop_oneof![1 => Just(0u8), 2 => 16u8..=64, 6 => 48u8..=128],
        proto(),
        ports(),
    )
        .prop_map(|(a, len, p, ports)| format!("[{a}/{len}]:{p}/{ports}"));
    prop_oneof![3 => v4_line, 2 => v6_line]
}

fn dns_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (v4(), 8u8..=32).prop_map(|(a, l)| IpNet::new(IpAddr::V4(a), l).expect("len").trunc()),
        (v6(), 16u8..=128).prop_map(|(a, l)| IpNet::new(IpAddr::V6(a), l).expect("len").trunc()),
    ]
}

fn seed() -> impl Strategy<Value = Seed> {
    (
        (prop::bool::weighted(0.65), any::<usize>(), any::<u128>()),
        (
            any::<bool>(),
            prop_oneof![2 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
            port(),
        ),
        addr(),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |((inside, pick, offset), (tcp, port_mode, port), random_addr, mapped)| Seed {
                inside,
                pick,
                offset,
                tcp,
                port_mode,
                port,
                random_addr,
                mapped,
            },
        )
}

fn scenario(mode: Mode) -> impl Strategy<Value = Scenario> {
    let acls = (1usize..=ACL_NAMES.len())
        .prop_flat_map(|n| prop::collection::vec(prop::collection::vec(net_line(), 0..6), n));
    (
        acls,
        // Unnamed ACLs are what protect mode denies: name fewer there.
        prop::collection::vec(
            prop::bool::weighted(if mode == Mode::Protect { 0.35 } else { 0.6 }),
            ACL_NAMES.len(),
        ),
        prop::collection::vec(addr(), 0..3),
        prop::option::of(prop::collection::vec(dns_net(), 0..3)),
        prop::collection::vec(seed(), 32),
        prop::bool::weighted(0.25),
    )
        .prop_map(move |(values, named, resolvers, dns_allow, seeds, audit)| {
            let acls: Vec<(String, String)> = values
                .into_iter()
                .enumerate()
                .map(|(i, lines)| (ACL_NAMES[i].to_owned(), lines.join("\n")))
                .collect();
            let workload = acls
                .iter()
                .zip(&named)
                .filter(|(_, n)| **n)
                .map(|((name, _), _)| name.clone())
                .collect();
            Scenario {
                mode,
                audit,
                acls,
                workload,
                resolvers,
                dns_allow,
                seeds,
            }
        })
}

fn compile_scenario(s: &Scenario) -> Result<Ruleset, TestCaseError> {
    let table = AclTable::parse(s.acls.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let services = ServiceTable::new();
    let dns_allow = s.dns_allow.clone().unwrap_or_else(default_dns_allow);
    let input = PolicyInput {
        mode: s.mode,
        acls: &table,
        services: &services,
        dns_allow: &dns_allow,
    };
    let workload = WorkloadPolicy {
        acls: parse_acl_list(&s.workload.join(",")).expect("names"),
        resolvers: s.resolvers.clone(),
    };
    compile(&workload, &input)
        .map(|c| Ruleset {
            audit: s.audit,
            ..c.ruleset
        })
        .map_err(|e| TestCaseError::fail(format!("valid scenario did not compile: {e}")))
}

fn addr_in(net: IpNet, offset: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let mask = u32::MAX.checked_shr(u32::from(n.prefix_len())).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(
                u32::from(n.network()) | (offset as u32 & mask),
            ))
        }
        IpNet::V6(n) => {
            let mask = u128::MAX
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (offset & mask)))
        }
    }
}

/// Places the seeds: about two thirds inside a random rule's (or resolver's) network, mostly
/// with its protocol and at its ports, else next to or away from them; the rest anywhere.
/// Some IPv4 probes are sent to their IPv4-mapped IPv6 form. Two loopback probes, and UDP to
/// ports 123 and 53 of random addresses, are added. Probes S cannot own are left out.
fn place(r: &Ruleset, seeds: &[Seed]) -> Vec<Probe> {
    // Deny rules twice: protect mode's denials are rarer than its allows.
    let mut targets: Vec<(IpNet, Proto, u16, u16)> = r
        .allow
        .iter()
        .chain(&r.deny)
        .chain(&r.deny)
        .map(|rule| {
            let d = rule.dest;
            (d.net, d.proto, d.ports.low, d.ports.high)
        })
        .collect();
    targets.extend(r.dns.iter().map(|n| (*n, Proto::Udp, 53, 53)));
    let mut out = vec![
        Probe {
            proto: Proto::Tcp,
            addr: Ipv4Addr::LOCALHOST.into(),
            port: 8080,
        },
        Probe {
            proto: Proto::Udp,
            addr: Ipv6Addr::LOCALHOST.into(),
            port: 53,
        },
    ];
    // NTP and DNS to random addresses: protect mode's fixed rules, in every case.
    for (s, port) in seeds.iter().zip([123, 53]) {
        out.push(Probe {
            proto: Proto::Udp,
            addr: s.random_addr.to_canonical(),
            port,
        });
    }
    for s in seeds {
        let proto = if s.tcp { Proto::Tcp } else { Proto::Udp };
        let p = if s.inside && !targets.is_empty() {
            let (net, p, low, high) = targets[s.pick % targets.len()];
            let port = match s.port_mode {
                0 => low + (s.port % (high - low).saturating_add(1).max(1)),
                1 if s.tcp => low.saturating_sub(1).max(1),
                1 => high.saturating_add(1),
                _ => s.port,
            };
            Probe {
                proto: if s.pick % 4 != 0 { p } else { proto },
                addr: addr_in(net, s.offset),
                port,
            }
        } else {
            Probe {
                proto,
                addr: s.random_addr,
                port: s.port,
            }
        };
        let addr = match p.addr.to_canonical() {
            IpAddr::V4(a) if s.mapped && !a.is_loopback() => IpAddr::V6(a.to_ipv6_mapped()),
            a => a,
        };
        out.push(Probe { addr, ..p });
    }
    out.retain(|p| probeable(p.addr));
    out.sort_by_key(Probe::key);
    out.dedup_by_key(|p| p.key());
    out
}

// ---------------------------------------------------------------------------------------
// Properties

#[derive(Clone, Copy)]
enum Backend {
    Nft,
    Iptables,
}

fn verdicts_match_decide(test: &str, backend: Backend, mode: Mode) {
    if !common::kernel_ready(test, TOOLS) {
        return;
    }
    let start = Instant::now();
    let probes_sent = Cell::new(0usize);
    // decide()'s verdicts: allow, deny (refused), deny audited (passes).
    let counts: RefCell<BTreeMap<&'static str, usize>> = Default::default();
    // The kernel's refusals, by protocol and error.
    let errors: RefCell<BTreeMap<String, usize>> = Default::default();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&scenario(mode), |s| {
        let r = compile_scenario(&s)?;
        let probes = place(&r, &s.seeds);
        let load = match backend {
            Backend::Nft => nft_load(&r),
            Backend::Iptables => iptables_load(&r),
        };
        let outcomes = run_packets(&load, &probes).map_err(TestCaseError::fail)?;
        let expected: Vec<Expect> = probes.iter().map(|p| expect_decide(&r, p)).collect();
        let bad = mismatches(&probes, &outcomes, &expected);
        prop_assert!(
            bad.is_empty(),
            "{} of {} probes disagree with decide() ({} backend):\n{}\nruleset:\n{}",
            bad.len(),
            probes.len(),
            load.backend(),
            bad.join("\n"),
            load
        );
        probes_sent.set(probes_sent.get() + probes.len());
        let mut e = errors.borrow_mut();
        for (p, o) in probes.iter().zip(&outcomes) {
            if let Outcome::Refused(kind, _) = o {
                *e.entry(format!("{} {kind:?}", p.proto)).or_default() += 1;
            }
        }
        let mut c = counts.borrow_mut();
        for p in &probes {
            let d = decide(&r, p.addr, p.proto, p.port);
            let k = match (d.passes(), d.audited) {
                (true, false) => "allow",
                (true, true) => "deny-audited",
                (false, _) => "deny",
            };
            *c.entry(k).or_default() += 1;
        }
        Ok(())
    });
    let counts = counts.into_inner();
    eprintln!(
        "{test}: {} cases, {} probes, decide() {counts:?}, kernel refusals {:?}, in {:?}",
        runner.config().cases,
        probes_sent.get(),
        errors.borrow(),
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // Both outcomes must be common (at least one probe in 20 each), or the property says
    // little.
    let total = probes_sent.get();
    let allow = counts.get("allow").copied().unwrap_or(0);
    let deny = counts.get("deny").copied().unwrap_or(0);
    assert!(
        allow * 20 >= total && deny * 20 >= total,
        "verdicts too one-sided: {counts:?}"
    );
}

#[test]
fn nft_allowlist_verdicts_match_decide() {
    verdicts_match_decide(
        "nft_allowlist_verdicts_match_decide",
        Backend::Nft,
        Mode::Allowlist,
    );
}

#[test]
fn nft_protect_verdicts_match_decide() {
    verdicts_match_decide(
        "nft_protect_verdicts_match_decide",
        Backend::Nft,
        Mode::Protect,
    );
}

#[test]
fn iptables_allowlist_verdicts_match_decide() {
    verdicts_match_decide(
        "iptables_allowlist_verdicts_match_decide",
        Backend::Iptables,
        Mode::Allowlist,
    );
}

#[test]
fn iptables_protect_verdicts_match_decide() {
    verdicts_match_decide(
        "iptables_protect_verdicts_match_decide",
        Backend::Iptables,
        Mode::Protect,
    );
}

// ---------------------------------------------------------------------------------------
// The goldens' oracle

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The packet-testable lines of an `expected-decisions.txt`
/// (`PROTO ADDR:PORT -> VERDICT (REASON)[ [audited]]`), and how many lines were not.
fn parse_decisions(case: &str, text: &str) -> (Vec<(Probe, Expect)>, Vec<String>) {
    let mut probes = Vec::new();
    let mut skipped = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (probe, decision) = line
            .split_once(" -> ")
            .unwrap_or_else(|| panic!("{case}: decision line {line:?}: no ' -> '"));
        let (proto, dest) = probe
            .split_once(' ')
            .unwrap_or_else(|| panic!("{case}: decision line {line:?}: no PROTO ADDR:PORT"));
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => {
                skipped.push(format!("{line} (protocol)"));
                continue;
            }
        };
        let dest: SocketAddr = dest
            .parse()
            .unwrap_or_else(|_| panic!("{case}: decision line {line:?}: address {dest:?}"));
        let verdict = decision.split_whitespace().next().unwrap_or_default();
        let allow = match verdict {
            "allow" => true,
            "deny" => false,
            v => panic!("{case}: decision line {line:?}: verdict {v:?}"),
        };
        if !probeable(dest.ip()) || dest.port() == 0 {
            skipped.push(format!("{line} (address)"));
            continue;
        }
        let audited = decision.ends_with(" [audited]");
        probes.push((
            Probe {
                proto,
                addr: dest.ip(),
                port: dest.port(),
            },
            Expect {
                passes: allow || audited,
                why: format!("stored in {case}/expected-decisions.txt: {decision}"),
            },
        ));
    }
    (probes, skipped)
}

#[test]
fn golden_decisions_hold_for_real_packets() {
    if !common::kernel_ready("golden_decisions_hold_for_real_packets", TOOLS) {
        return;
    }
    let start = Instant::now();
    let mut dirs: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("read tests/golden")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    let (mut cases, mut checked, mut skipped_lines) = (0, 0, 0);
    let mut skipped_cases = Vec::new();
    for dir in &dirs {
        let case = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
        let (Some(nft), Some(decisions)) = (read("expected.nft"), read("expected-decisions.txt"))
        else {
            skipped_cases.push(case);
            continue;
        };
        let (lines, skipped) = parse_decisions(&case, &decisions);
        for s in &skipped {
            eprintln!("{case}: not packet-testable, skipped: {s}");
        }
        skipped_lines += skipped.len();
        assert!(
            !lines.is_empty(),
            "{case}: no decision line is packet-testable, so nothing checks its goldens"
        );
        let (probes, expected): (Vec<Probe>, Vec<Expect>) = lines.into_iter().unzip();
        let mut loads = vec![Load::Nft(nft)];
        match (
            read("expected-iptables-v4.txt"),
            read("expected-iptables-v6.txt"),
        ) {
            (Some(v4), Some(v6)) => loads.push(Load::Iptables { v4, v6 }),
            _ => failures.push(format!("{case}: expected-iptables-v4/v6.txt missing")),
        }
        for load in &loads {
            let t = Instant::now();
            let outcomes = run_packets(load, &probes)
                .unwrap_or_else(|e| panic!("{case} ({} backend): {e}", load.backend()));
            for m in mismatches(&probes, &outcomes, &expected) {
                failures.push(format!("{case}, {} backend: {m}", load.backend()));
            }
            checked += probes.len();
            eprintln!(
                "{case}: {} probes, {} backend, {:?}",
                probes.len(),
                load.backend(),
                t.elapsed()
            );
        }
        cases += 1;
    }
    eprintln!(
        "{cases} golden cases, {checked} packets checked, {skipped_lines} decision lines not \
         packet-testable, cases without expected.nft and expected-decisions.txt: \
         {skipped_cases:?}, in {:?}",
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} stored decision(s) disagree with the kernel; a golden was blessed that the \
         rendered rules do not implement (or the reverse):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        cases >= 14,
        "expected at least 14 golden cases, found {cases}"
    );
}

// ---------------------------------------------------------------------------------------
// Controls: the comparison can fail

fn control_ruleset(audit: bool) -> Ruleset {
    let acls = AclTable::parse([("web", "10.0.0.0/24:tcp/80\n[fd00:1::/64]:udp/5000")]);
    let services = ServiceTable::new();
    let input = PolicyInput {
        mode: Mode::Allowlist,
        acls: &acls,
        services: &services,
        dns_allow: &[],
    };
    let workload = WorkloadPolicy {
        acls: parse_acl_list("web").expect("names"),
        resolvers: vec!["192.0.2.53".parse().expect("ip")],
    };
    let r = compile(&workload, &input).expect("compiles").ruleset;
    Ruleset { audit, ..r }
}

fn control_probes() -> Vec<Probe> {
    let p = |proto, addr: &str, port| Probe {
        proto,
        addr: addr.parse().expect("ip"),
        port,
    };
    vec![
        p(Proto::Tcp, "10.0.0.5", 80),        // allow
        p(Proto::Tcp, "10.0.0.5", 81),        // deny
        p(Proto::Udp, "10.0.0.5", 80),        // deny
        p(Proto::Udp, "fd00:1::5", 5000),     // allow
        p(Proto::Tcp, "fd00:1::5", 5000),     // deny
        p(Proto::Udp, "192.0.2.53", 53),      // allow (DNS)
        p(Proto::Tcp, "::ffff:10.0.0.7", 80), // allow, over IPv4
    ]
}

/// With the true expectations nothing is reported; with one flipped, exactly that probe is,
/// for an allow, a deny and an audited deny (read as a plain deny), on both backends.
#[test]
fn a_flipped_expectation_is_reported() {
    if !common::kernel_ready("a_flipped_expectation_is_reported", TOOLS) {
        return;
    }
    let probes = control_probes();
    for audit in [false, true] {
        let r = control_ruleset(audit);
        for load in [nft_load(&r), iptables_load(&r)] {
            let outcomes = run_packets(&load, &probes).unwrap_or_else(|e| panic!("{e}"));
            let expected: Vec<Expect> = probes.iter().map(|p| expect_decide(&r, p)).collect();
            let bad = mismatches(&probes, &outcomes, &expected);
            assert!(bad.is_empty(), "{}: {bad:#?}", load.backend());
            let passes = outcomes.iter().filter(|o| **o == Outcome::Pass).count();
            assert_eq!(
                passes,
                if audit { probes.len() } else { 4 },
                "{} audit={audit}: {outcomes:?}",
                load.backend()
            );
            for (i, p) in probes.iter().enumerate() {
                let mut flipped: Vec<Expect> =
                    probes.iter().map(|p| expect_decide(&r, p)).collect();
                // The other outcome: for an audited deny, the plain deny's.
                flipped[i].passes = !flipped[i].passes;
                let bad = mismatches(&probes, &outcomes, &flipped);
                assert_eq!(bad.len(), 1, "{}: {p}: {bad:#?}", load.backend());
                assert!(bad[0].starts_with(&format!("{p}: ")), "{bad:?}");
            }
        }
    }
}

/// A probe whose port nobody listens on is refused by S's kernel just as the ruleset would
/// refuse it; the control run catches it before any verdict is read.
#[test]
fn control_catches_a_missing_listener() {
    if !common::kernel_ready("control_catches_a_missing_listener", TOOLS) {
        return;
    }
    let r = control_ruleset(false);
    let probes = control_probes();
    // An allowed and a denied TCP probe, an allowed UDP one.
    for p in [probes[0], probes[1], probes[3]] {
        let listen_for: Vec<Probe> = probes.iter().filter(|q| **q != p).copied().collect();
        let err = run_packets_with(&nft_load(&r), &probes, &listen_for)
            .expect_err("the control must fail without a listener");
        assert!(
            err.starts_with("control:") && err.contains(&format!("  {p}: refused")),
            "{err}"
        );
    }
}
