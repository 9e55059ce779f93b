//! The walking skeleton end to end: the agent enforces an opted-in container on a
//! user-defined Docker network, with real traffic allowed and refused.

use crate::common::*;

/// A listener serves ports 80 and 8080; the ACL allows only 80.
/// - an enabled container reaches 80 and is refused on 8080;
/// - a container that is not enabled reaches both;
/// - on a running container that is not enabled, `set --rules` restricts it and `clear`
///   frees it again.
#[test]
fn agent_enforces_allowlist_on_user_defined_network() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("e2e", 10, &[80, 8080], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(
        &format!("{kv_path}web"),
        &format!("# only port 80\n{srv_ip}:tcp/80 \n"),
    );

    // Before any agent runs, a client reaches both ports: the listener really serves them.
    let free = format!("{tag}-free");
    client(&mut s.cleanup, &free, &net, &[]);
    assert_eq!(fetch(&free, srv_ip, 80), Fetch::Body("port80".into()));
    assert_eq!(fetch(&free, srv_ip, 8080), Fetch::Body("port8080".into()));

    // An enabled container that is already running when the agent starts.
    let early = format!("{tag}-early");
    client(
        &mut s.cleanup,
        &early,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );

    let agent = AgentProc::start(&["-k", &kv_path]);
    wait_table(&early, "the agent's startup pass", |t| t.is_some());

    // An enabled container started while the agent runs.
    let late = format!("{tag}-late");
    client(
        &mut s.cleanup,
        &late,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    wait_table(&late, "enforcement after the start event", |t| t.is_some());

    for c in [&early, &late] {
        assert_eq!(
            fetch(c, srv_ip, 80),
            Fetch::Body("port80".into()),
            "{c} to port 80"
        );
        assert_eq!(fetch(c, srv_ip, 8080), Fetch::Refused, "{c} to port 8080");
    }
    // The container that is not enabled is untouched.
    assert_eq!(table(&free), None);
    assert_eq!(fetch(&free, srv_ip, 80), Fetch::Body("port80".into()));
    assert_eq!(fetch(&free, srv_ip, 8080), Fetch::Body("port8080".into()));

    // One log line per container: id, name, ACLs, outcome, time taken.
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("container enforced") && l.contains(&late))
        .unwrap_or_else(|| panic!("no log line for {late}:\n{log}"));
    for field in ["container=", "acls=web", "outcome=\"enforced\"", "took_ms="] {
        assert!(line.contains(field), "{field} missing in {line}");
    }

    // `set --rules` on a running container that is not enabled restricts it…
    let out = cli(&["-k", &kv_path, "set", &free, "--rules", "web"]);
    assert!(
        out.status.success(),
        "set failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fetch(&free, srv_ip, 80), Fetch::Body("port80".into()));
    assert_eq!(fetch(&free, srv_ip, 8080), Fetch::Refused);
    // …and `clear` frees it again.
    let out = cli(&["-k", &kv_path, "clear", &free]);
    assert!(
        out.status.success(),
        "clear failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table(&free), None);
    assert_eq!(fetch(&free, srv_ip, 8080), Fetch::Body("port8080".into()));
    drop(agent);
}

/// An enabled container whose ACL does not exist is failed closed: nothing leaves it, and
/// the agent says why.
#[test]
fn unknown_acl_fails_closed() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("closed", 11, &[80], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));

    let agent = AgentProc::start(&["-k", &kv_path]);
    agent.wait_log("reconciling running containers");
    let c = format!("{tag}-c");
    client(
        &mut s.cleanup,
        &c,
        &net,
        &[
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web,missing",
        ],
    );
    wait_table(&c, "the deny-all table", |t| {
        t.is_some_and(|t| t.contains("egresstrator deny-all"))
    });
    assert_eq!(fetch(&c, srv_ip, 80), Fetch::Refused);
    agent.wait_log("acl 'missing' does not exist under the kv-path");
    let log = agent.log_text();
    assert!(log.contains("outcome=\"fail-closed\""), "{log}");

    // A bad name is refused before any Consul read, and also fails closed.
    let bad = format!("{tag}-bad");
    client(
        &mut s.cleanup,
        &bad,
        &net,
        &[
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=../../secret",
        ],
    );
    wait_table(&bad, "the deny-all table", |t| {
        t.is_some_and(|t| t.contains("egresstrator deny-all"))
    });
    assert_eq!(fetch(&bad, srv_ip, 80), Fetch::Refused);
    agent.wait_log("invalid acl name \"../../secret\"");
}
