//! Applying nft rulesets inside network namespaces, against the real kernel.
//!
//! Every test works in throwaway namespaces made with `ip netns add egt-t-…` (removed by a
//! guard, also on failure) and checks that the test process's own namespace never gains a
//! rule. Needs root, `ip` and `nft`: without them the tests fail and say so.

use egresstrator::netns;
use egresstrator::nft;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netns::{
    apply_nft, host_netns_ids, netns_id, run_in_netns, run_in_netns_async, run_program, NetnsError,
};
use nft::NftError;

// ---------------------------------------------------------------------------------------------
// Harness

/// True when the tests can run; fails the test with what is missing when they cannot.
fn can_run(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            missing.push(format!("the `{tool}` command"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: needs {}", missing.join(", "));
    panic!("{why}; run `make test` as root, which installs everything the tests need");
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// A throwaway named network namespace with `lo` up; deleted on drop.
struct TestNs {
    name: String,
    path: PathBuf,
}

impl TestNs {
    fn new() -> TestNs {
        let name = format!("egt-t-{}", unique_suffix());
        run_ok("ip", &["netns", "add", &name]);
        // From here on the guard exists, so the namespace is removed even if setup fails.
        let ns = TestNs {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS…` (configures the namespace without entering it from this process).
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// `ip netns exec NAME nft ARGS…`, with its exit status.
    #[allow(clippy::unwrap_used)] // test helper: panics on failure
    fn nft(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["netns", "exec", self.name.as_str(), "nft"];
        all.extend_from_slice(args);
        let out = Command::new("ip").args(&all).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn table(&self) -> String {
        let (ok, text) = self.nft(&["list", "table", "inet", "egresstrator"]);
        assert!(
            ok,
            "table inet egresstrator missing in {}: {text}",
            self.name
        );
        text
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[allow(clippy::unwrap_used)] // test helper: panics on failure
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test process's own ruleset must never contain our table.
fn assert_host_untouched() {
    let tables = run_ok("nft", &["list", "tables"]);
    assert!(
        !tables
            .lines()
            .any(|l| l.trim() == "table inet egresstrator"),
        "the test process's own (host) namespace gained table inet egresstrator:\n{tables}"
    );
}

/// The atomic-replace pattern the renderers use: create-if-missing, delete, create with the
/// new content.
fn replace_script(body: &str) -> String {
    format!(
        "add table inet egresstrator\n\
         delete table inet egresstrator\n\
         table inet egresstrator {{\n{body}\n}}\n"
    )
}

fn output_chain(rules: &str) -> String {
    replace_script(&format!(
        "  chain output {{\n    type filter hook output priority 0; policy accept;\n{rules}\n  }}"
    ))
}

#[allow(clippy::unwrap_used)] // test helper: panics on failure
fn thread_netns() -> netns::NetnsId {
    netns_id(Path::new("/proc/thread-self/ns/net")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn apply_creates_the_table_only_in_the_target_namespace() {
    if !can_run("apply_creates_the_table_only_in_the_target_namespace") {
        return;
    }
    assert_host_untouched();
    let ns = TestNs::new();
    let before = thread_netns();

    let spent = apply_nft(
        ns.path.clone(),
        output_chain("    tcp dport 9 counter drop"),
    )
    .await
    .unwrap();

    let table = ns.table();
    assert!(table.contains("tcp dport 9 counter"), "{table}");
    assert!(spent < Duration::from_secs(5), "{spent:?}");
    assert_eq!(thread_netns(), before, "the test thread changed namespace");
    assert_host_untouched();
}

#[tokio::test]
async fn replace_is_atomic_and_a_failed_script_keeps_the_previous_table() {
    if !can_run("replace_is_atomic_and_a_failed_script_keeps_the_previous_table") {
        return;
    }
    let ns = TestNs::new();

    apply_nft(ns.path.clone(), output_chain("    tcp dport 1111 drop"))
        .await
        .unwrap();
    apply_nft(ns.path.clone(), output_chain("    tcp dport 2222 drop"))
        .await
        .unwrap();
    let table = ns.table();
    assert!(table.contains("tcp dport 2222 drop"), "{table}");
    assert!(!table.contains("1111"), "old content survived: {table}");
    let (_, tables) = ns.nft(&["list", "tables"]);
    assert_eq!(
        tables.matches("table inet egresstrator").count(),
        1,
        "{tables}"
    );

    // A syntax error: rejected by the parser, nothing applied.
    let error = apply_nft(ns.path.clone(), output_chain("    tcp dport 3333 dorp"))
        .await
        .unwrap_err();
    let message = match &error {
        NetnsError::Nft {
            error: NftError::Command { message },
            path,
        } => {
            assert_eq!(path, &ns.path);
            message.clone()
        }
        other => panic!("expected an nft command error, got {other:?}"),
    };
    assert!(
        message.starts_with("line 6:"),
        "nft names the line: {message}"
    );
    assert!(message.contains("syntax error"), "{message}");
    assert!(
        message.contains("    tcp dport 3333 dorp\n"),
        "nft quotes the bad line: {message}"
    );
    assert!(
        error.to_string().contains(&*ns.path.to_string_lossy()),
        "the message names the namespace: {error}"
    );
    eprintln!("syntax error as reported: {error}");
    let table = ns.table();
    assert!(table.contains("tcp dport 2222 drop"), "{table}");

    // An error found after the delete command (unknown chain): the whole batch is refused,
    // so the delete does not happen either.
    let script = format!(
        "{}add rule inet egresstrator nosuchchain tcp dport 4444 drop\n",
        output_chain("    tcp dport 4444 drop")
    );
    let error = apply_nft(ns.path.clone(), script).await.unwrap_err();
    assert!(
        matches!(
            error,
            NetnsError::Nft {
                error: NftError::Command { .. },
                ..
            }
        ),
        "{error:?}"
    );
    eprintln!("evaluation error as reported: {error}");
    assert!(error.to_string().contains("line 9:"), "{error}");
    let table = ns.table();
    assert!(table.contains("tcp dport 2222 drop"), "{table}");
    assert!(!table.contains("4444"), "{table}");

    // A NUL byte never reaches C.
    let error = apply_nft(ns.path.clone(), "table inet x {}\0".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            NetnsError::Nft {
                error: NftError::NulInScript { offset: 15 },
                ..
            }
        ),
        "{error:?}"
    );
    assert_host_untouched();
}

#[test]
fn refuses_the_host_and_own_namespaces() {
    if !can_run("refuses_the_host_and_own_namespaces") {
        return;
    }
    let ran = Arc::new(AtomicBool::new(false));
    for path in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
        let flag = ran.clone();
        let result = run_in_netns(Path::new(path), move || {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        match result {
            Err(NetnsError::HostNamespace { path: p, id }) => {
                assert_eq!(p, Path::new(path));
                eprintln!("refused: {}", NetnsError::HostNamespace { path: p, id });
            }
            other => panic!("{path}: expected HostNamespace, got {other:?}"),
        }
    }

    // pid 1's namespace: refused as the host's; or, where pid 1 cannot even be inspected
    // (sandboxed machines), not openable at all, which is just as safe.
    let flag = ran.clone();
    match run_in_netns(Path::new("/proc/1/ns/net"), move || {
        flag.store(true, Ordering::SeqCst);
        Ok(())
    }) {
        Err(NetnsError::HostNamespace { .. }) => {}
        Err(NetnsError::Open { error, .. }) if error.kind() == ErrorKind::PermissionDenied => {
            eprintln!("note: /proc/1/ns/net is not accessible here ({error}); refused by open")
        }
        other => panic!("/proc/1/ns/net: expected HostNamespace, got {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst), "a refused closure ran");

    let own = netns_id(Path::new("/proc/self/ns/net")).unwrap();
    let ids = host_netns_ids().unwrap();
    assert!(ids.contains(&own), "{ids:?}");
    let ns = TestNs::new();
    assert!(!ids.contains(&netns_id(&ns.path).unwrap()));
}

#[test]
fn missing_or_wrong_files_are_distinct_errors() {
    if !can_run("missing_or_wrong_files_are_distinct_errors") {
        return;
    }
    let gone = PathBuf::from(format!("/run/netns/egt-t-missing-{}", unique_suffix()));
    match run_in_netns(&gone, || Ok(())) {
        Err(NetnsError::Gone { path }) => {
            assert_eq!(path, gone);
            eprintln!("{}", NetnsError::Gone { path });
        }
        other => panic!("expected Gone, got {other:?}"),
    }
    assert!(matches!(netns_id(&gone), Err(NetnsError::Gone { .. })));

    // A pid that does not exist (above the kernel's pid_max limit of 2^22).
    let no_pid = Path::new("/proc/4194305/ns/net");
    assert!(matches!(
        run_in_netns(no_pid, || Ok(())),
        Err(NetnsError::Gone { .. })
    ));

    // A regular file (e.g. a mount point left behind) is not a namespace.
    let file = std::env::temp_dir().join(format!("egt-t-notns-{}", unique_suffix()));
    std::fs::write(&file, b"").unwrap();
    let result = run_in_netns(&file, || Ok(()));
    let _ = std::fs::remove_file(&file);
    assert!(
        matches!(&result, Err(error @ NetnsError::NotNetns { .. }) if error.is_gone()),
        "{result:?}"
    );
}

/// The cookie read inside a namespace, by a thread that enters it.
fn cookie_inside(path: &Path) -> u64 {
    run_in_netns(path, || {
        egresstrator::cookie::of_thread().map_err(|error| NetnsError::Cookie {
            path: PathBuf::new(),
            error,
        })
    })
    .unwrap()
}

/// `netns::cookie` reads a namespace's id from its file instead of entering it, once the
/// kernel has shown that id to be the cookie. Each answer is checked against the cookie read
/// inside, including for a namespace made after another was freed, whose file may carry the
/// freed one's inode number: its cookie must differ all the same.
#[tokio::test]
async fn a_namespace_is_known_by_its_cookie_with_or_without_entering_it() {
    if !can_run("a_namespace_is_known_by_its_cookie_with_or_without_entering_it") {
        return;
    }
    let first = TestNs::new();
    let (first_ino, first_cookie) = (netns_id(&first.path).unwrap(), cookie_inside(&first.path));
    let has_ids = match netns::cookie_by_id(&first.path) {
        Ok(id) => {
            assert_eq!(id, first_cookie, "NS_GET_ID is the cookie on this kernel");
            true
        }
        Err(NetnsError::Cookie { error, .. }) if error.raw_os_error() == Some(libc::ENOTTY) => {
            // Before Linux 6.18: `cookie` keeps entering namespaces.
            eprintln!("note: no NS_GET_ID on this kernel ({error}): cookies are read inside");
            false
        }
        other => panic!("NS_GET_ID of {}: {other:?}", first.path.display()),
    };
    // The first call compares both reads; later ones take the id where it is the cookie.
    for _ in 0..3 {
        assert_eq!(
            netns::cookie(first.path.clone()).await.unwrap(),
            first_cookie
        );
    }
    assert_eq!(netns::ids_are_cookies(), Some(has_ids));
    drop(first);

    let mut reused = false;
    for _ in 0..4 {
        let next = TestNs::new();
        let cookie = netns::cookie(next.path.clone()).await.unwrap();
        assert_eq!(cookie, cookie_inside(&next.path));
        assert_ne!(cookie, first_cookie, "a freed namespace's cookie came back");
        reused |= netns_id(&next.path).unwrap() == first_ino;
    }
    eprintln!("inode number of the freed namespace handed out again: {reused}");
}

/// Reading the id from the file refuses what entering refuses, and a namespace file of
/// another kind.
#[test]
fn the_id_is_read_only_from_a_network_namespace_that_is_not_the_hosts() {
    if !can_run("the_id_is_read_only_from_a_network_namespace_that_is_not_the_hosts") {
        return;
    }
    for path in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
        let result = netns::cookie_by_id(Path::new(path));
        assert!(
            matches!(result, Err(NetnsError::HostNamespace { .. })),
            "{path}: {result:?}"
        );
    }
    // An nsfs file of another kind: the type check is what refuses it.
    let uts = netns::cookie_by_id(Path::new("/proc/self/ns/uts"));
    assert!(matches!(uts, Err(NetnsError::NotNetns { .. })), "{uts:?}");
    let file = std::env::temp_dir().join(format!("egt-t-notns-id-{}", unique_suffix()));
    std::fs::write(&file, b"").unwrap();
    let plain = netns::cookie_by_id(&file);
    let _ = std::fs::remove_file(&file);
    assert!(
        matches!(plain, Err(NetnsError::NotNetns { .. })),
        "{plain:?}"
    );
    let gone = PathBuf::from(format!("/run/netns/egt-t-missing-id-{}", unique_suffix()));
    assert!(matches!(
        netns::cookie_by_id(&gone),
        Err(NetnsError::Gone { .. })
    ));
    // Control: a namespace of our own passes the same checks.
    let ns = TestNs::new();
    let id = netns::cookie_by_id(&ns.path);
    assert!(
        matches!(id, Ok(_) | Err(NetnsError::Cookie { .. })),
        "{id:?}"
    );
}

#[tokio::test]
async fn work_runs_on_a_dedicated_thread_inside_the_namespace() {
    if !can_run("work_runs_on_a_dedicated_thread_inside_the_namespace") {
        return;
    }
    let ns = TestNs::new();
    let target = netns_id(&ns.path).unwrap();
    let caller = std::thread::current().id();
    let (inside, name, same_thread) = run_in_netns_async(ns.path.clone(), move || {
        Ok((
            thread_netns(),
            std::thread::current().name().map(str::to_string),
            std::thread::current().id() == caller,
        ))
    })
    .await
    .unwrap();
    assert_eq!(inside, target);
    assert_eq!(name.as_deref(), Some("egt-netns"));
    assert!(!same_thread);

    // The synchronous form too, and errors from the closure come back unchanged.
    let result: Result<(), _> = run_in_netns(&ns.path, || {
        Err(NetnsError::Gone {
            path: PathBuf::from("/from/the/closure"),
        })
    });
    assert!(
        matches!(result, Err(NetnsError::Gone { ref path }) if path == Path::new("/from/the/closure"))
    );

    // A panicking closure is an error, not a crash of the caller.
    let result: Result<(), _> = run_in_netns_async(ns.path.clone(), || panic!("boom")).await;
    assert!(
        matches!(result, Err(NetnsError::Panicked { .. })),
        "{result:?}"
    );
}

/// The guard names every interface of the namespace, so the list must be the namespace's own,
/// read from the thread that entered it. Oracle: `ip -o link` in that namespace. Control:
/// `/proc/self/net/dev`, read on the same thread, is the process's (the host's) view and
/// lacks the namespace's interfaces, so a reader that used it would fail this test.
#[tokio::test]
async fn interfaces_are_listed_from_the_namespace_the_thread_entered() {
    if !can_run("interfaces_are_listed_from_the_namespace_the_thread_entered") {
        return;
    }
    let ns = TestNs::new();
    let tag = format!("{:x}", std::process::id() % 0xfff);
    let made: Vec<String> = ["d", "x.y_z+w-v"]
        .iter()
        .enumerate()
        .map(|(i, stem)| format!("e{tag}{i}{stem}"))
        .collect();
    // A veth pair with both ends in the namespace (`dummy` is not built into every kernel).
    ns.ip(&[
        "link", "add", &made[0], "type", "veth", "peer", "name", &made[1],
    ]);
    let (listed, process_view) = run_in_netns_async(ns.path.clone(), || {
        let listed = egresstrator::ifnames::interface_names().map_err(|e| NetnsError::Gone {
            path: PathBuf::from(format!("interface_names: {e}")),
        })?;
        let process_view = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
        Ok((listed, process_view))
    })
    .await
    .unwrap();

    let mut oracle: Vec<String> = ns
        .ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect();
    oracle.sort();
    assert_eq!(listed, oracle);
    for name in &made {
        assert!(listed.contains(name), "{name} missing from {listed:?}");
        assert!(
            !process_view.contains(&format!("{name}:")),
            "control: the process's own view lists {name}; the test cannot tell the views apart"
        );
    }
}

#[tokio::test]
async fn programs_run_inside_the_namespace_and_get_stdin() {
    if !can_run("programs_run_inside_the_namespace_and_get_stdin") {
        return;
    }
    let ns = TestNs::new();
    ns.ip(&[
        "link", "add", "egtv0", "type", "veth", "peer", "name", "egtv1",
    ]);

    let out = run_program(
        ns.path.clone(),
        "ip",
        vec!["-o".into(), "link".into()],
        vec![],
    )
    .await
    .unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(links.contains("egtv0"), "{links}");
    assert_eq!(
        links.lines().count(),
        3,
        "only lo, egtv0 and egtv1: {links}"
    );

    let script = "table inet egt_stdin {\n  chain c {\n    tcp dport 7 drop\n  }\n}\n";
    let out = run_program(
        ns.path.clone(),
        "nft",
        vec!["-f".into(), "-".into()],
        script.as_bytes().to_vec(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, listed) = ns.nft(&["list", "table", "inet", "egt_stdin"]);
    assert!(ok && listed.contains("tcp dport 7 drop"), "{listed}");

    // A failing program is an Output with its status, a missing one an error that names it.
    let out = run_program(
        ns.path.clone(),
        "nft",
        vec!["-f".into(), "-".into()],
        b"this is not nft\n".to_vec(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("syntax error"));
    let error = run_program(ns.path.clone(), "egt-no-such-program", vec![], vec![])
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("failed to run egt-no-such-program in netns /run/netns/"),
        "{error}"
    );

    // A large stdin that the program does not read must not hang.
    let out = run_program(ns.path.clone(), "true", vec![], vec![b'x'; 4 * 1024 * 1024])
        .await
        .unwrap();
    assert!(out.status.success());
    assert_host_untouched();
}

/// Two namespaces joined by a veth pair `va-TAG`/`vb-TAG` made inside the first, with its
/// peer straight in the second (the host never holds it): the first is 10.231.NET.1, the
/// second 10.231.NET.2.
fn joined_pair(tag: &str, net: u8) -> (TestNs, TestNs) {
    let a = TestNs::new();
    let b = TestNs::new();
    let (va, vb) = (format!("va-{tag}"), format!("vb-{tag}"));
    a.ip(&[
        "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", &format!("10.231.{net}.1/30"), "dev", &va]);
    a.ip(&["link", "set", &va, "up"]);
    b.ip(&["addr", "add", &format!("10.231.{net}.2/30"), "dev", &vb]);
    b.ip(&["link", "set", &vb, "up"]);
    (a, b)
}

/// Listens on `addr` from inside `ns`: the socket stays in that namespace after the
/// dedicated thread exits, so the test thread can keep and drop it.
#[allow(clippy::unwrap_used)] // test helper: panics on failure
fn listen_in(ns: &TestNs, addr: SocketAddr) -> TcpListener {
    run_in_netns(&ns.path, move || {
        TcpListener::bind(addr).map_err(|error| NetnsError::Program {
            path: PathBuf::from("listener"),
            program: addr.to_string(),
            error,
        })
    })
    .unwrap()
}

/// Connects to `addr` from inside `ns`; returns the outcome and how long it took.
#[allow(clippy::unwrap_used)] // test helper: panics on failure
fn connect_from(ns: &TestNs, addr: SocketAddr) -> (std::io::Result<()>, Duration) {
    run_in_netns(&ns.path, move || {
        let start = Instant::now();
        let result = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(drop);
        Ok((result, start.elapsed()))
    })
    .unwrap()
}

#[tokio::test]
async fn rejecting_rules_apply_to_real_traffic() {
    if !can_run("rejecting_rules_apply_to_real_traffic") {
        return;
    }
    let (a, b) = joined_pair("r", 77);

    let web: SocketAddr = "10.231.77.2:80".parse().unwrap();
    let alt: SocketAddr = "10.231.77.2:8080".parse().unwrap();
    let web_listener = listen_in(&b, web);
    let _alt_listener = listen_in(&b, alt);

    let (result, took) = connect_from(&a, web);
    assert!(result.is_ok(), "A -> B:80 before rules: {result:?}");
    eprintln!("A -> B:80 before rules: connected in {took:?}");
    // The connection reached B's listener in B's namespace.
    web_listener.set_nonblocking(true).unwrap();
    let accepted = web_listener.accept();
    assert!(accepted.is_ok(), "{accepted:?}");
    if let Ok((mut stream, peer)) = accepted {
        assert_eq!(peer.ip().to_string(), "10.231.77.1");
        let mut buf = Vec::new();
        let _ = stream.set_nonblocking(false);
        let _ = stream.read_to_end(&mut buf);
    }

    apply_nft(
        a.path.clone(),
        output_chain("    tcp dport 80 reject with tcp reset"),
    )
    .await
    .unwrap();

    let (result, took) = connect_from(&a, web);
    match &result {
        Err(error) if error.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("A -> B:80 after the reject rule: expected refused, got {other:?}"),
    }
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    eprintln!("A -> B:80 after rules: refused in {took:?}");

    let (result, _) = connect_from(&a, alt);
    assert!(result.is_ok(), "A -> B:8080 must still work: {result:?}");

    // B's namespace itself is unaffected (the rule is A's egress only).
    let (ok, b_tables) = b.nft(&["list", "tables"]);
    assert!(ok && b_tables.trim().is_empty(), "{b_tables}");
    assert_host_untouched();
}

/// What a workload with `CAP_NET_ADMIN` may plant before the agent's first load: tables of
/// egresstrator's names whose set and chain would let everything out if they were merged
/// into the policy instead of replaced by it.
const PLANTED: &str = "table inet egresstrator {
  set allow4 {
    type ipv4_addr . inet_proto . inet_service
    flags interval
    elements = { 10.231.78.0/30 . tcp . 80 }
  }
  chain output {
    type filter hook output priority filter; policy accept;
    ip daddr 10.231.78.2 accept comment \"planted\"
  }
}
table netdev egresstrator {
  chain egress {
    type filter hook egress device \"lo\" priority filter; policy accept;
  }
}
";

/// The agent's own script for a policy that lets out tcp/8080 to 10.231.78.2 and nothing
/// else, with the guard over the namespace's interfaces.
#[allow(clippy::unwrap_used)] // test helper: panics on failure
fn rendered_policy(devices: &[&str]) -> String {
    use egresstrator_core::policy::ServiceTable;
    use egresstrator_core::{compile, AclName, AclTable, Mode, PolicyInput, WorkloadPolicy};
    let table = AclTable::parse([("web", "10.231.78.2/32:tcp/8080\n")]);
    let workload = WorkloadPolicy {
        acls: vec![AclName::parse("web").unwrap()],
        resolvers: Vec::new(),
    };
    let services = ServiceTable::new();
    let input = PolicyInput {
        mode: Mode::Allowlist,
        acls: &table,
        services: &services,
        dns_allow: &[],
    };
    let compiled = compile(&workload, &input).unwrap();
    let mut script = egresstrator_core::render::nft::render(&compiled.ruleset);
    let devices: Vec<String> = devices.iter().map(|d| (*d).to_owned()).collect();
    script.push_str(&egresstrator_core::render::guard::render(&devices).0);
    script
}

/// The first line of both tables is `add table`, not an empty table block (a load's cost,
/// BENCHMARKS.md part 5): the `delete table` after it still removes whatever the namespace
/// held under those names, so nothing a workload planted survives into the policy. Shown
/// with real traffic; the control loads the same script without its deletes into the same
/// plant, and the plant lets the refused connection through.
#[tokio::test]
async fn a_table_the_workload_planted_first_is_replaced_whole() {
    if !can_run("a_table_the_workload_planted_first_is_replaced_whole") {
        return;
    }
    let to_80: SocketAddr = "10.231.78.2:80".parse().unwrap();
    let to_8080: SocketAddr = "10.231.78.2:8080".parse().unwrap();
    let script = rendered_policy(&["lo", "va-p"]);
    assert!(
        script.contains("add table inet egresstrator\ndelete table inet egresstrator\n")
            && script.contains("add table netdev egresstrator\ndelete table netdev egresstrator\n"),
        "{script}"
    );

    let (a, b) = joined_pair("p", 78);
    let _l80 = listen_in(&b, to_80);
    let _l8080 = listen_in(&b, to_8080);
    plant(&a);
    let (result, _) = connect_from(&a, to_80);
    assert!(
        result.is_ok(),
        "the plant lets tcp/80 out before the load: {result:?}"
    );

    apply_nft(a.path.clone(), script.clone()).await.unwrap();
    let table = a.table();
    assert!(
        !table.contains("planted") && !table.contains("10.231.78.0/30"),
        "{table}"
    );
    let (_, guard) = a.nft(&["list", "table", "netdev", "egresstrator"]);
    assert!(guard.contains("policy drop"), "{guard}");
    let (result, _) = connect_from(&a, to_80);
    match &result {
        Err(error) if error.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("tcp/80 after the load: expected refused, got {other:?}"),
    }
    let (result, _) = connect_from(&a, to_8080);
    assert!(result.is_ok(), "tcp/8080 is in the policy: {result:?}");

    // Control: without the deletes, the same script merges into the plant, and tcp/80 is
    // let out by the planted rule.
    let (c, d) = joined_pair("c", 78);
    let _c80 = listen_in(&d, to_80);
    plant(&c);
    let merged = rendered_policy(&["lo", "va-c"])
        .replace("delete table inet egresstrator\n", "")
        .replace("delete table netdev egresstrator\n", "");
    apply_nft(c.path.clone(), merged).await.unwrap();
    let (result, _) = connect_from(&c, to_80);
    assert!(
        result.is_ok(),
        "control: a merged plant must let tcp/80 out, or this test cannot see a merge: {result:?}"
    );
    assert_host_untouched();
}

#[allow(clippy::unwrap_used)] // test helper: panics on failure
fn plant(ns: &TestNs) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PLANTED.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "planting failed in {}",
        ns.name
    );
}

/// The conntrack sweep skips its dump (a walk of every namespace's connections) where the
/// count it reads says the namespace tracks nothing: that count must be the namespace's own.
#[tokio::test]
async fn the_tracked_connection_count_is_the_namespaces_own() {
    if !can_run("the_tracked_connection_count_is_the_namespaces_own") {
        return;
    }
    let ns = TestNs::new();
    // Connection tracking runs in a namespace once a rule needs it, as the agent's do.
    apply_nft(
        ns.path.clone(),
        output_chain("    ct state established,related accept"),
    )
    .await
    .unwrap();
    let before = egresstrator::conntrack::tracked(ns.path.clone())
        .await
        .unwrap();
    assert_eq!(before, Some(0), "a new namespace tracks nothing");
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let _listener = listen_in(&ns, addr);
    let (result, _) = connect_from(&ns, addr);
    assert!(result.is_ok(), "{result:?}");
    let after = egresstrator::conntrack::tracked(ns.path.clone())
        .await
        .unwrap();
    assert!(
        after.is_some_and(|n| n >= 1),
        "a connection inside the namespace is tracked there: {after:?}"
    );
    assert_host_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_applies_to_different_namespaces_do_not_interfere() {
    if !can_run("concurrent_applies_to_different_namespaces_do_not_interfere") {
        return;
    }
    let namespaces: Vec<TestNs> = (0..6).map(|_| TestNs::new()).collect();
    let mut tasks = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let path = ns.path.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                let port = 10_000 + i * 100 + round;
                apply_nft(
                    path.clone(),
                    output_chain(&format!("    oif \"lo\" tcp dport {port} drop")),
                )
                .await?;
            }
            Ok::<_, NetnsError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for (i, ns) in namespaces.iter().enumerate() {
        let table = ns.table();
        let port = 10_000 + i * 100 + 9;
        assert!(table.contains(&format!("tcp dport {port} drop")), "{table}");
        assert_eq!(table.matches("tcp dport").count(), 1, "{table}");
    }
    assert_host_untouched();
}

#[tokio::test]
async fn measure_apply_time_of_a_small_table() {
    if !can_run("measure_apply_time_of_a_small_table") {
        return;
    }
    let ns = TestNs::new();
    let script = replace_script(
        "  set allowed4 {\n    type ipv4_addr . inet_proto . inet_service\n    flags interval\n    \
         elements = { 10.50.128.0/24 . tcp . 80, 0.0.0.0/0 . tcp . 8080, \
         10.1.2.3 . udp . 53 }\n  }\n  \
         chain output {\n    type filter hook output priority 0; policy drop;\n    \
         oif \"lo\" accept\n    ct state established,related accept\n    \
         ip daddr . meta l4proto . th dport @allowed4 accept\n    \
         meta l4proto tcp reject with tcp reset\n    reject with icmpx admin-prohibited\n  }",
    );
    let others: Vec<TestNs> = (0..4).map(|_| TestNs::new()).collect();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    // Three patterns, 50 applies each:
    // - back to back into one namespace: each commit waits for the kernel's cleanup of the
    //   previous one (the previous thread's socket close holds that namespace's commit lock);
    // - into one namespace with a pause between applies: the cost of one apply on its own;
    // - round robin over five namespaces: what the agent does when many containers change.
    let all: Vec<&TestNs> = std::iter::once(&ns).chain(others.iter()).collect();
    for (label, pause, targets) in [
        ("back to back, one namespace", Duration::ZERO, vec![&ns]),
        (
            "paused 50 ms, one namespace",
            Duration::from_millis(50),
            vec![&ns],
        ),
        ("round robin, five namespaces", Duration::ZERO, all.clone()),
    ] {
        let mut inside = Vec::new();
        let mut end_to_end = Vec::new();
        for i in 0..50 {
            tokio::time::sleep(pause).await;
            let start = Instant::now();
            let path = targets[i % targets.len()].path.clone();
            inside.push(apply_nft(path, script.clone()).await.unwrap());
            end_to_end.push(start.elapsed());
        }
        println!(
            "apply_nft of a small table, {label}: median {:?} inside the namespace, \
             median {:?} end to end (max {:?})",
            median(inside),
            median(end_to_end.clone()),
            end_to_end.iter().max().copied().unwrap_or_default()
        );
    }
    for target in all {
        let table = target.table();
        assert!(table.contains("@allowed4"), "{table}");
    }
    assert_host_untouched();
}

// ---------------------------------------------------------------------------------------------
// The nftables generation and unconfirmed load fingerprints

/// Reads the generation of the namespace at `path` with a reader opened there.
fn generation_of(path: &Path) -> u32 {
    run_in_netns(path, || {
        let mut reader = nft::Generation::open().expect("open a generation reader");
        Ok(reader.read().expect("read the generation"))
    })
    .expect("enter the namespace")
}

#[test]
fn the_generation_counts_every_commit_in_its_own_namespace_only() {
    if !can_run("the_generation_counts_every_commit_in_its_own_namespace_only") {
        return;
    }
    let ns = TestNs::new();
    let other = TestNs::new();
    let before = generation_of(&ns.path);
    assert_eq!(generation_of(&ns.path), before, "reading commits nothing");
    let (ok, text) = ns.nft(&["add", "table", "inet", "egt_gen"]);
    assert!(ok, "{text}");
    let after = generation_of(&ns.path);
    assert_eq!(after, before.wrapping_add(1), "one commit, one generation");
    let (ok, text) = other.nft(&["add", "table", "inet", "egt_gen"]);
    assert!(ok, "{text}");
    assert_eq!(
        generation_of(&ns.path),
        after,
        "a commit in another namespace"
    );
}

/// What a load leaves is the baseline of every drift check; a change that lands between the
/// commit and the (delayed) listing must not become that baseline.
#[tokio::test]
async fn a_load_changed_before_its_listing_gives_an_unconfirmed_fingerprint() {
    if !can_run("a_load_changed_before_its_listing_gives_an_unconfirmed_fingerprint") {
        return;
    }
    let ns = TestNs::new();
    let request = || netns::LoadRequest {
        expect: None,
        script: output_chain("    tcp dport 9 drop"),
        guard: false,
        listing: vec!["list table inet egresstrator".to_owned()],
    };
    // Control: left alone, the load's fingerprint is the namespace's listing.
    let loaded = netns::load(ns.path.clone(), request()).await.unwrap();
    let fingerprint = loaded.fingerprint.await.unwrap().unwrap();
    let now = netns::fingerprint(ns.path.clone(), None, request().listing)
        .await
        .unwrap();
    assert_eq!(fingerprint, now, "an untouched load is confirmed");

    // The attack: the table deleted at once after the commit, in-process (well within the
    // listing's delay).
    let loaded = netns::load(ns.path.clone(), request()).await.unwrap();
    run_in_netns(&ns.path, || {
        let mut nft = nft::Nft::new().expect("nft context");
        nft.run("delete table inet egresstrator")
            .expect("delete the table");
        Ok(())
    })
    .unwrap();
    let fingerprint = loaded.fingerprint.await.unwrap().unwrap();
    assert!(
        fingerprint.starts_with(netns::UNCONFIRMED),
        "the table was deleted before the listing, yet the fingerprint was taken as the baseline: {fingerprint}"
    );
    let (exists, _) = ns.nft(&["list", "table", "inet", "egresstrator"]);
    assert!(!exists, "the premise: the table is gone");
}
