//! The agent's own image (`egresstrator image build`), run as the README documents it,
//! enforces another container: real traffic allowed and refused.

use std::time::Duration;

use crate::common::*;

const TAG: &str = "egresstrator-test-agent:latest";

#[test]
fn the_agent_image_enforces_another_container() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let out = cli(&["image", "build", "--tag", TAG]);
    assert!(
        out.status.success(),
        "image build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = Scene::new("agentimg", 128, &[80, 8080], &[]);
    s.acl("web", &[80]);
    let port = free_port();
    let agent = s.name("agent");
    let state = s.state_dir();
    std::fs::create_dir_all(&state).expect("state dir");
    // The README's `docker run`: host PID namespace (to enter containers' namespaces through
    // /proc), host network (Consul and the status endpoint on loopback; the agent never
    // changes the host's firewall), Docker's socket, the state dir, CAP_SYS_ADMIN (setns) and
    // CAP_NET_ADMIN (rules), and a writable /proc/sys for the guard's self-test namespace.
    let listen = format!("127.0.0.1:{port}");
    let volume = format!("{}:/var/lib/egresstrator", state.display());
    run_container(
        &mut s.cleanup,
        &agent,
        &[
            "--pid",
            "host",
            "--network",
            "host",
            "--cap-add",
            "SYS_ADMIN",
            "--cap-add",
            "NET_ADMIN",
            "--security-opt",
            "systempaths=unconfined",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &volume,
            "-e",
            &format!("CONSUL_HTTP_ADDR={CONSUL}"),
            TAG,
            "--listen",
            &listen,
            "--hook-socket",
            "off",
            "-k",
            &s.kv_path,
            "run",
        ],
    );
    wait_for(
        "the agent in its image to answer",
        Duration::from_secs(20),
        || status(port),
    );
    let c = s.client(
        "c",
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let id = container_id(&c);
    wait_for("the container enforced", Duration::from_secs(20), || {
        (status_of(port, &id)?["posture"] == "allowlist").then_some(())
    });
    s.expect(&c, &[80], &[8080]);
    let st = status(port).expect("status");
    assert_eq!(
        st["raw_socket_guard"], "verified",
        "the guard's self-test runs in the image too"
    );
}
