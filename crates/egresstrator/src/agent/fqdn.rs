//! Name destinations (`api.example.com:tcp/443`): the learner that allows a container the
//! addresses its own resolvers answer, before the answer reaches it.
//!
//! For a namespace whose ruleset has name lines, the agent adds one rule in the namespace
//! (iptables' `filter` table, chain `EGRESSTRATOR-DNS`, jumped to from `INPUT` for packets
//! not on `lo`): DNS replies (source port 53, conntrack direction reply, UDP and TCP) go to
//! NFQUEUE [`QUEUE_NUM`] with `--queue-bypass`. A thread of the agent, inside the namespace,
//! holds that queue. For each answer it:
//!
//! 1. checks the answer came from one of the container's resolvers (the ruleset's DNS set)
//!    and not over loopback (a workload can write packets to itself there);
//! 2. follows the CNAME chain from the question name, and for every name line that matches a
//!    name on the chain, adds the answered addresses to the `fqdn4`/`fqdn6` set of
//!    egresstrator's table, on that line's protocol and ports, each with the answer's TTL
//!    kept between `--fqdn-min-ttl` and `--fqdn-max-ttl`, in one nft transaction;
//! 3. only then lets the answer through. A `connect()` right after `getaddrinfo()` finds the
//!    address allowed.
//!
//! Failing closed and keeping DNS up: an answer that cannot be read, or whose addresses
//! cannot be added, is let through all the same, with nothing learned. With no agent
//! listening (stopped, restarting) the kernel lets answers through unqueued
//! (`--queue-bypass`), and a full queue does the same (`NFQA_CFG_F_FAIL_OPEN`): DNS keeps
//! working and nothing new is allowed. Answers the queue held when the agent died are
//! dropped by the kernel; resolvers ask again.
//!
//! Nothing the workload sends or any one answer says reaches beyond its own namespace: the
//! set is per namespace, and each learner serves one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use egresstrator_core::dns_answer;
use egresstrator_core::render::nft::{LEARNED4, LEARNED6, TABLE};
use egresstrator_core::{NameRule, PortRange, Proto, Ruleset};
use ipnet::IpNet;

use crate::netns::{self, NetnsError};
use crate::nfqueue;
use crate::nft::Nft;
use crate::status::{FqdnStatus, LearnedAddress};

/// The NFQUEUE number in each namespace (numbers are per namespace).
pub const QUEUE_NUM: u16 = 5353;
/// Answers the kernel holds at most; past that it lets them through (fail-open for DNS,
/// nothing learned).
const QUEUE_MAX: u32 = 1024;
/// How long the learner waits for a packet before it looks at its stop flag and expiries.
const WAIT: Duration = Duration::from_millis(200);
/// Most learned elements per namespace; answers beyond it are not learned (logged).
pub const MAX_LEARNED: usize = 4096;
/// The iptables chain that queues DNS replies.
pub const CHAIN: &str = "EGRESSTRATOR-DNS";
/// The iptables chain that queues DNS queries (with the DNS filter only).
pub const QUERY_CHAIN: &str = "EGRESSTRATOR-DNSQ";
/// The NFQUEUE number of queries.
pub const QUERY_QUEUE: u16 = 5354;

/// `--fqdn-min-ttl` and `--fqdn-max-ttl`.
#[derive(Clone, Copy, Debug)]
pub struct FqdnSettings {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for FqdnSettings {
    fn default() -> Self {
        FqdnSettings {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// One learned element: an address allowed on a protocol and ports until it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Element {
    addr: IpAddr,
    proto: Proto,
    ports: PortRange,
}

impl Element {
    fn set(&self) -> &'static str {
        if self.addr.is_ipv4() {
            LEARNED4
        } else {
            LEARNED6
        }
    }

    fn nft(&self) -> String {
        format!("{} . {} . {}", self.addr, self.proto, self.ports)
    }
}

#[derive(Clone, Debug)]
struct LearnedEntry {
    /// The names asked for that gave this address (for status).
    names: Vec<String>,
    expires: Instant,
    expires_unix: SystemTime,
}

/// What a learner shares with the reconciler.
#[derive(Debug, Default)]
struct Shared {
    /// The name lines and resolvers of the ruleset in force.
    policy: Mutex<Policy>,
    learned: Mutex<BTreeMap<Element, LearnedEntry>>,
    stop: AtomicBool,
    /// On stopping, take the queue rules out too (the namespace lives on without names).
    remove_rules: AtomicBool,
    /// Bumped when the reconciler committed a load (which recreated the sets).
    reloads: AtomicU64,
    /// Answers read, for status.
    answers: AtomicU64,
    /// Bumped whenever the learned addresses change (for the state dir's record).
    version: AtomicU64,
    /// Why the learner is not running, once it stopped on an error.
    error: Mutex<Option<String>>,
    /// Names recent answers gave for each address, allowed or not (for `monitor`), bounded.
    recent: Mutex<std::collections::HashMap<IpAddr, (String, Instant)>>,
}

/// Most addresses remembered from recent answers for `monitor`.
const RECENT_MAX: usize = 1024;
/// How long such an address is remembered.
const RECENT_FOR: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
struct Policy {
    names: Vec<NameRule>,
    resolvers: Vec<IpNet>,
    ruleset: Arc<Ruleset>,
    /// The container records of the DNS filter are attributed to.
    owner: Option<super::dns_filter::Owner>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            names: Vec::new(),
            resolvers: Vec::new(),
            ruleset: Arc::new(Ruleset::deny_all()),
            owner: None,
        }
    }
}

/// A namespace's learner. Dropping it stops the thread; [`Learner::retire`] also takes its
/// queue rules out of a namespace that lives on.
#[derive(Debug)]
pub(super) struct Learner {
    shared: Arc<Shared>,
}

impl Drop for Learner {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Learner {
    /// Starts learning in the namespace at `path` (cookie `expect`) for `ruleset`.
    pub(super) fn start(
        path: &Path,
        expect: Option<u64>,
        ruleset: &Ruleset,
        owner: Option<super::dns_filter::Owner>,
        settings: FqdnSettings,
        board: Arc<crate::status::StatusBoard>,
        seed: Vec<LearnedAddress>,
    ) -> Result<Learner, NetnsError> {
        let shared = Arc::new(Shared::default());
        let learner = Learner { shared };
        learner.update(ruleset, owner);
        if let Ok(mut learned) = learner.shared.learned.lock() {
            for (e, entry) in from_record(&seed) {
                learned.insert(e, entry);
            }
        }
        let shared = learner.shared.clone();
        let thread_path = path.to_path_buf();
        netns::spawn_in_netns(path, expect, "egt-fqdn", move |entered| {
            let result = entered.and_then(|()| run(&thread_path, &shared, settings, &board));
            if let Err(e) = result {
                tracing::error!(
                    netns = %thread_path.display(),
                    "name destinations are not learned in this namespace (its name lines allow nothing): {e}"
                );
                if let Ok(mut error) = shared.error.lock() {
                    *error = Some(e.to_string());
                }
            }
        })?;
        Ok(learner)
    }

    /// The ruleset in force changed (or was loaded again): learn for its name lines.
    pub(super) fn update(&self, ruleset: &Ruleset, owner: Option<super::dns_filter::Owner>) {
        if let Ok(mut p) = self.shared.policy.lock() {
            *p = Policy {
                names: ruleset.names.clone(),
                resolvers: ruleset.learn_from.clone(),
                ruleset: Arc::new(ruleset.clone()),
                owner,
            };
        }
        self.shared.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops the thread and has it take its queue rules out (the namespace's policy no
    /// longer has name lines or the filter).
    pub(super) fn retire(self) {
        self.shared.remove_rules.store(true, Ordering::Relaxed);
    }

    /// Changes whenever the learned addresses do.
    pub(super) fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Relaxed)
    }

    /// Whether its thread stopped on an error.
    pub(super) fn failed(&self) -> bool {
        self.shared.error.lock().map_or(true, |e| e.is_some())
    }

    /// The name a recent answer in this namespace gave for `addr`, if one did.
    pub(super) fn name_for(&self, addr: IpAddr) -> Option<String> {
        let recent = self.shared.recent.lock().ok()?;
        recent
            .get(&addr.to_canonical())
            .filter(|(_, at)| at.elapsed() < RECENT_FOR)
            .map(|(n, _)| n.clone())
    }

    /// nft statements that put back what was learned and still holds under `ruleset`, with
    /// the time each has left; appended to a load's script, so a policy change keeps them
    /// in the same transaction.
    pub(super) fn restore_script(&self, ruleset: &Ruleset) -> String {
        let Ok(learned) = self.shared.learned.lock() else {
            return String::new();
        };
        restore_lines(learned.iter().map(|(e, v)| (*e, v)), ruleset)
    }

    /// What `/status` shows of this learner.
    pub(super) fn status(&self) -> FqdnStatus {
        let now = Instant::now();
        let learned = self
            .shared
            .learned
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, v)| v.expires > now)
                    .map(|(e, v)| LearnedAddress {
                        names: v.names.clone(),
                        address: e.addr,
                        proto: e.proto.to_string(),
                        ports: e.ports.to_string(),
                        expires_unix: v
                            .expires_unix
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let names = self
            .shared
            .policy
            .lock()
            .map(|p| p.names.iter().map(|n| n.dest.to_string()).collect())
            .unwrap_or_default();
        FqdnStatus {
            names,
            learned,
            answers: self.shared.answers.load(Ordering::Relaxed),
            error: self.shared.error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// nft statements adding the entries that are still unexpired and still allowed by a name
/// line of `ruleset` (the same protocol and ports, a matching name).
fn restore_lines<'a>(
    entries: impl Iterator<Item = (Element, &'a LearnedEntry)>,
    ruleset: &Ruleset,
) -> String {
    let now = Instant::now();
    let mut s = String::new();
    for (e, entry) in entries {
        let left = entry.expires.saturating_duration_since(now).as_secs();
        if left >= 1 && still_allowed(ruleset, &e, entry) {
            s.push_str(&format!(
                "add element {TABLE} {} {{ {} timeout {left}s }}\n",
                e.set(),
                e.nft()
            ));
        }
    }
    s
}

/// Whether a name line of `ruleset` still allows the entry: the same protocol and ports, and
/// a name whose answer gave it.
fn still_allowed(ruleset: &Ruleset, e: &Element, entry: &LearnedEntry) -> bool {
    ruleset.names.iter().any(|r| {
        r.dest.proto == e.proto
            && r.dest.ports == e.ports
            && entry.names.iter().any(|n| r.dest.pattern.matches(n))
    })
}

/// Learned entries from the state dir's record (a previous agent's), with the time each has
/// left on this agent's clock; expired and unreadable ones are left out.
fn from_record(record: &[LearnedAddress]) -> Vec<(Element, LearnedEntry)> {
    let now_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    record
        .iter()
        .filter_map(|l| {
            let left = l.expires_unix.checked_sub(now_unix).filter(|s| *s >= 1)?;
            let proto = match l.proto.as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => return None,
            };
            let ports = match l.ports.split_once('-') {
                Some((lo, hi)) => PortRange {
                    low: lo.parse().ok()?,
                    high: hi.parse().ok()?,
                },
                None => PortRange::single(l.ports.parse().ok()?),
            };
            if ports.low == 0 || ports.low > ports.high {
                return None;
            }
            Some((
                Element {
                    addr: l.address.to_canonical(),
                    proto,
                    ports,
                },
                LearnedEntry {
                    names: l.names.iter().take(8).cloned().collect(),
                    expires: Instant::now() + Duration::from_secs(left),
                    expires_unix: SystemTime::now() + Duration::from_secs(left),
                },
            ))
        })
        .collect()
}

/// What a previous agent learned in a namespace, as nft statements for the first load of
/// this agent (see [`restore_lines`]).
pub(super) fn restore_from_record(record: &[LearnedAddress], ruleset: &Ruleset) -> String {
    let entries = from_record(record);
    restore_lines(entries.iter().map(|(e, v)| (*e, v)), ruleset)
}

/// The iptables-restore input that makes the namespace queue DNS replies to the learner
/// and, with the DNS filter, queries to it (whatever their destination port after Docker's
/// DNAT to its embedded server: the original port is what counts). Each chain is flushed and
/// filled again, so this is also how the filter is turned on and off.
fn queue_rules(filter: bool) -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n:{QUERY_CHAIN} - [0:0]\n");
    for proto in ["udp", "tcp"] {
        s.push_str(&format!(
            "-A {CHAIN} -p {proto} --sport 53 -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j NFQUEUE --queue-num {QUEUE_NUM} --queue-bypass\n"
        ));
        if filter {
            s.push_str(&format!(
                "-A {QUERY_CHAIN} -p {proto} -m conntrack --ctdir ORIGINAL --ctorigdstport 53 -j NFQUEUE --queue-num {QUERY_QUEUE} --queue-bypass\n"
            ));
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// Installs the queue rules (the jumps only once: checked first), on the learner's thread.
fn install_queue_rule(path: &Path, filter: bool) -> Result<(), String> {
    for (restore, tables) in [
        ("iptables-restore", "iptables"),
        ("ip6tables-restore", "ip6tables"),
    ] {
        let rules = queue_rules(filter);
        run(restore, &["-w", "5", "--noflush"], rules.as_bytes())?;
        for (hook, lo) in [("INPUT", true), ("OUTPUT", false)] {
            let chain = if lo { CHAIN } else { QUERY_CHAIN };
            let mut rule = vec![hook];
            if lo {
                rule.extend(["!", "-i", "lo"]);
            }
            rule.extend(["-j", chain]);
            let check: Vec<&str> = ["-w", "5", "-C"]
                .iter()
                .copied()
                .chain(rule.iter().copied())
                .collect();
            if run(tables, &check, b"").is_err() {
                let add: Vec<&str> = ["-w", "5", "-I"]
                    .iter()
                    .copied()
                    .chain(rule.iter().copied())
                    .collect();
                run(tables, &add, b"")?;
            }
        }
    }
    tracing::debug!(netns = %path.display(), "DNS replies queued to the learner");
    return Ok(());

    fn run(program: &str, args: &[&str], stdin: &[u8]) -> Result<(), String> {
        use std::io::Write;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// The learner's thread, inside the namespace.
fn run(
    path: &Path,
    shared: &Shared,
    settings: FqdnSettings,
    board: &crate::status::StatusBoard,
) -> Result<(), NetnsError> {
    let fail = |what: String| NetnsError::Learner {
        path: path.to_path_buf(),
        what,
    };
    let filter_of = |shared: &Shared| {
        shared
            .policy
            .lock()
            .map(|p| p.ruleset.dns_filter)
            .unwrap_or(true)
    };
    let mut filtering = filter_of(shared);
    install_queue_rule(path, filtering).map_err(fail)?;
    let mut queue =
        nfqueue::Queue::bind(&[QUEUE_NUM, QUERY_QUEUE], QUEUE_MAX, WAIT).map_err(|e| {
            fail(format!(
                "cannot bind NFQUEUE {QUEUE_NUM} and {QUERY_QUEUE}: {e}"
            ))
        })?;
    let mut injector = super::dns_filter::Injector::open()
        .map_err(|e| fail(format!("cannot open raw sockets for REFUSED answers: {e}")))?;
    let mut nft = Nft::new().map_err(|error| NetnsError::Nft {
        path: path.to_path_buf(),
        error,
    })?;
    let mut seen_reloads = shared.reloads.load(Ordering::Relaxed);
    while !shared.stop.load(Ordering::Relaxed) {
        let packet = match queue.recv() {
            Ok(p) => p,
            Err(e) => return Err(fail(format!("reading NFQUEUE {QUEUE_NUM}: {e}"))),
        };
        let reloads = shared.reloads.load(Ordering::Relaxed);
        if reloads != seen_reloads {
            // A load recreated the sets; what it did not carry over goes back in.
            seen_reloads = reloads;
            readd(shared, &mut nft);
            let now = filter_of(shared);
            if now != filtering {
                install_queue_rule(path, now).map_err(fail)?;
                filtering = now;
            }
        }
        let Some(packet) = packet else {
            prune(shared);
            continue;
        };
        let verdict = if packet.queue == QUERY_QUEUE {
            let policy = shared.policy.lock().map(|p| p.clone()).unwrap_or_default();
            let pass = super::dns_filter::decide(
                &packet.payload,
                &policy.ruleset,
                policy.owner.as_ref(),
                &mut injector,
                board,
            );
            if pass {
                queue.accept(&packet)
            } else {
                queue.drop_packet(&packet)
            }
        } else {
            shared.answers.fetch_add(1, Ordering::Relaxed);
            learn(path, shared, &mut nft, &packet.payload, settings);
            // Only now does the answer go on: whatever it allowed is in the set.
            queue.accept(&packet)
        };
        if let Err(e) = verdict {
            return Err(fail(format!("verdict on NFQUEUE {}: {e}", packet.queue)));
        }
    }
    if shared.remove_rules.load(Ordering::Relaxed) {
        remove_queue_rule();
    }
    Ok(())
}

fn learn(path: &Path, shared: &Shared, nft: &mut Nft, packet: &[u8], settings: FqdnSettings) {
    let Some(answer) = dns_answer::parse(packet) else {
        return;
    };
    let Ok(policy) = shared.policy.lock().map(|p| p.clone()) else {
        return;
    };
    // Only the container's own resolvers, never over loopback (where the workload can write
    // any packet to itself). Docker's embedded server forwards from inside the namespace, so
    // its upstreams' answers arrive here from outside.
    if answer.resolver.is_loopback()
        || !policy
            .resolvers
            .iter()
            .any(|n| n.contains(&answer.resolver.to_canonical()))
    {
        tracing::debug!(resolver = %answer.resolver, "DNS answer not from the container's resolvers; nothing learned");
        return;
    }
    if let Ok(mut recent) = shared.recent.lock() {
        if recent.len() + answer.addrs.len() > RECENT_MAX {
            recent.retain(|_, (_, at)| at.elapsed() < RECENT_FOR);
            if recent.len() + answer.addrs.len() > RECENT_MAX {
                recent.clear();
            }
        }
        for (addr, _) in &answer.addrs {
            recent.insert(addr.to_canonical(), (answer.qname.clone(), Instant::now()));
        }
    }
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut adds: Vec<(Element, u64)> = Vec::new();
    for rule in &policy.names {
        if !answer.chain.iter().any(|n| rule.dest.pattern.matches(n)) {
            continue;
        }
        for (addr, ttl) in &answer.addrs {
            let secs = Duration::from_secs(u64::from(*ttl))
                .clamp(settings.min_ttl, settings.max_ttl)
                .as_secs()
                .max(1);
            let e = Element {
                addr: addr.to_canonical(),
                proto: rule.dest.proto,
                ports: rule.dest.ports,
            };
            if !adds.iter().any(|(a, _)| *a == e) {
                adds.push((e, secs));
            }
        }
    }
    if adds.is_empty() {
        return;
    }
    let Ok(mut learned) = shared.learned.lock() else {
        return;
    };
    let mut script = String::new();
    let mut refresh = String::new();
    for (e, secs) in &adds {
        let known = learned.get(e).is_some_and(|l| l.expires > now);
        if !known && learned.len() >= MAX_LEARNED {
            // A namespace busy enough never lets the idle prune run: drop the expired first.
            learned.retain(|_, v| v.expires > now);
            shared.version.fetch_add(1, Ordering::Relaxed);
        }
        if !known && learned.len() >= MAX_LEARNED {
            tracing::warn!(
                netns = %path.display(),
                "{MAX_LEARNED} addresses learned already; {} not learned",
                e.addr
            );
            continue;
        }
        if known {
            // An element's timeout cannot be changed in place: delete and add it in the
            // same transaction (never absent in between).
            refresh.push_str(&format!(
                "delete element {TABLE} {} {{ {} }}\n",
                e.set(),
                e.nft()
            ));
        }
        script.push_str(&format!(
            "add element {TABLE} {} {{ {} timeout {secs}s }}\n",
            e.set(),
            e.nft()
        ));
    }
    let committed = nft
        .run(&format!("{refresh}{script}"))
        // The element may have just expired (or gone with a reload): add only.
        .or_else(|_| nft.run(&script));
    match committed {
        Ok(_) => {
            for (e, secs) in adds {
                let entry = learned.entry(e).or_insert_with(|| LearnedEntry {
                    names: Vec::new(),
                    expires: now,
                    expires_unix: wall,
                });
                if !entry.names.contains(&answer.qname) && entry.names.len() < 8 {
                    entry.names.push(answer.qname.clone());
                }
                entry.expires = now + Duration::from_secs(secs);
                entry.expires_unix = wall + Duration::from_secs(secs);
            }
            shared.version.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(name = %answer.qname, addrs = answer.addrs.len(), "learned from a DNS answer");
        }
        Err(e) => tracing::warn!(
            netns = %path.display(),
            name = %answer.qname,
            "cannot add learned addresses (the answer goes on, they stay refused): {e}"
        ),
    }
}

/// After a load recreated the sets: forgets what the ruleset now in force no longer allows
/// (its name line went), and adds the rest again.
fn readd(shared: &Shared, nft: &mut Nft) {
    let Ok(ruleset) = shared.policy.lock().map(|p| p.ruleset.clone()) else {
        return;
    };
    let Ok(mut learned) = shared.learned.lock() else {
        return;
    };
    let before = learned.len();
    learned.retain(|e, entry| still_allowed(&ruleset, e, entry));
    if learned.len() != before {
        shared.version.fetch_add(1, Ordering::Relaxed);
    }
    let script = restore_lines(learned.iter().map(|(e, v)| (*e, v)), &ruleset);
    if !script.is_empty() {
        if let Err(e) = nft.run(&script) {
            tracing::debug!("cannot put learned addresses back after a load: {e}");
        }
    }
}

fn prune(shared: &Shared) {
    let now = Instant::now();
    if let Ok(mut learned) = shared.learned.lock() {
        let before = learned.len();
        learned.retain(|_, v| v.expires > now);
        if learned.len() != before {
            shared.version.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Takes the queue rule out again when the learner stops while its namespace lives on (the
/// policy no longer names anything). Best effort: with no learner the rule only lets
/// answers through (`--queue-bypass`).
fn remove_queue_rule() {
    let quiet = |tables: &str, args: &[&str]| {
        let _ = std::process::Command::new(tables)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    for tables in ["iptables", "ip6tables"] {
        quiet(
            tables,
            &["-w", "5", "-D", "INPUT", "!", "-i", "lo", "-j", CHAIN],
        );
        quiet(tables, &["-w", "5", "-D", "OUTPUT", "-j", QUERY_CHAIN]);
        for chain in [CHAIN, QUERY_CHAIN] {
            quiet(tables, &["-w", "5", "-F", chain]);
            quiet(tables, &["-w", "5", "-X", chain]);
        }
    }
}
