//! Helper-image mode (`--image`): rules applied by short-lived helper containers, against a
//! dockerd reached over TCP on loopback (`DOCKER_HOST=tcp://127.0.0.1:PORT`), as for a
//! daemon whose namespaces the agent cannot enter.
//!
//! dockerd itself is not reconfigured: the test forwards a loopback TCP port to its unix
//! socket (a byte-for-byte relay, not a fake: every request is answered by the real dockerd).

use std::io::copy;
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::thread;

use std::time::Duration;

use crate::common::*;

/// Forwards 127.0.0.1:<port> to /var/run/docker.sock until the process exits.
fn docker_tcp_relay() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let Ok(unix) = UnixStream::connect("/var/run/docker.sock") else {
                continue;
            };
            let (mut t1, mut u1) = (
                tcp.try_clone().expect("clone"),
                unix.try_clone().expect("clone"),
            );
            let (mut t2, mut u2) = (tcp, unix);
            thread::spawn(move || {
                let _ = copy(&mut t1, &mut u1);
                let _ = u1.shutdown(Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = copy(&mut u2, &mut t2);
                let _ = t2.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

fn helpers_of(target_id: &str) -> Vec<String> {
    let out = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=egresstrator.helper={target_id}"),
        "--format",
        "{{.Names}}",
    ]);
    out.lines().map(str::to_owned).collect()
}

#[test]
fn helper_image_mode_over_docker_tcp() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("helper", 90, &[80, 8080], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));

    let port = docker_tcp_relay();
    let host = format!("tcp://127.0.0.1:{port}");
    let image = format!("egt-helper-test-{}:latest", std::process::id());
    let out = cli(&[
        "--docker-host",
        &host,
        "helper-image",
        "build",
        "--tag",
        &image,
    ]);
    assert!(
        out.status.success(),
        "helper-image build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _image_guard = ImageGuard(image.clone());

    for backend in ["nft", "iptables"] {
        let agent = AgentProc::start(&[
            "--docker-host",
            &host,
            "--image",
            &image,
            "--backend",
            backend,
            "-k",
            &kv_path,
        ]);
        agent.wait_log("reconciling running containers");
        let c = format!("{tag}-{backend}");
        client(
            &mut s.cleanup,
            &c,
            &net,
            &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
        );
        let id = container_id(&c);
        agent.wait_log(&format!("name={c} acls=web outcome=\"enforced\""));
        assert_eq!(
            fetch(&c, srv_ip, 80),
            Fetch::Body("port80".into()),
            "{backend}"
        );
        assert_eq!(fetch(&c, srv_ip, 8080), Fetch::Refused, "{backend}");
        // The rules came from a helper container, which is gone again.
        assert!(
            helpers_of(&id).is_empty(),
            "helpers left behind: {:?}",
            helpers_of(&id)
        );
        let nft_table = table(&c);
        match backend {
            "nft" => assert!(nft_table.is_some(), "no nft table in {c}"),
            _ => {
                assert!(nft_table.is_none(), "unexpected nft table in {c}");
                let pid = container_pid(&c);
                let rules = sh(&format!("nsenter --net=/proc/{pid}/ns/net iptables -S"));
                assert!(
                    String::from_utf8_lossy(&rules.stdout)
                        .contains("-A OUTPUT -j EGRESSTRATOR-OUTPUT"),
                    "no jump to egresstrator's chain"
                );
            }
        }
        // `clear` goes through a helper too and frees the container.
        let out = cli(&[
            "--docker-host",
            &host,
            "--image",
            &image,
            "--backend",
            backend,
            "-k",
            &kv_path,
            "clear",
            &c,
        ]);
        assert!(
            out.status.success(),
            "clear: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fetch(&c, srv_ip, 8080),
            Fetch::Body("port8080".into()),
            "{backend}"
        );
        drop(agent);
    }

    // A host-network container is refused by its network mode: no helper ever joins the
    // host's namespace.
    let agent = AgentProc::start(&["--docker-host", &host, "--image", &image, "-k", &kv_path]);
    agent.wait_log("reconciling running containers");
    let hostc = format!("{tag}-host");
    let _ = docker(&["rm", "-f", &hostc]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &hostc,
        "--network",
        "host",
        "-e",
        "EGRESSTRATOR_ENABLE=1",
        "-e",
        "EGRESSTRATOR_ACL=web",
        IMAGE,
        "sleep",
        "3600",
    ]);
    s.cleanup.containers.push(hostc.clone());
    agent.wait_log("uses the host's network");
    assert!(helpers_of(&container_id(&hostc)).is_empty());

    // One that joins it (`--network container:<host-networked>`) is in the host's namespace
    // too: refused as well, and no helper joins it. (By its own network mode it looks like
    // any joined container.)
    let joined = format!("{tag}-joins-host");
    let _ = docker(&["rm", "-f", &joined]);
    // Stateless (`-s`): the rules, not their counters, which any traffic on the host moves
    // (Podman's netavark counts every packet to a local address).
    let before = sh("nft -s list ruleset");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &joined,
        "--network",
        &format!("container:{hostc}"),
        "-e",
        "EGRESSTRATOR_ENABLE=1",
        "-e",
        "EGRESSTRATOR_ACL=web",
        IMAGE,
        "sleep",
        "3600",
    ]);
    s.cleanup.containers.push(joined.clone());
    wait_for(
        "the refusal of the joined container",
        Duration::from_secs(20),
        || {
            agent
                .log_text()
                .lines()
                .any(|l| {
                    l.contains("refusing to enforce")
                        && l.contains(&format!("container:{}", container_id(&hostc)))
                })
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(helpers_of(&container_id(&joined)).is_empty());
    assert!(helpers_of(&container_id(&hostc)).is_empty());
    let after = sh("nft -s list ruleset");
    assert!(
        after.stdout == before.stdout,
        "the host's ruleset changed:\n--- before\n{}\n--- after\n{}",
        String::from_utf8_lossy(&before.stdout),
        String::from_utf8_lossy(&after.stdout)
    );
}

struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}
