//! Docker over TLS, as Docker's own CLI does it: `DOCKER_HOST=tcp://…`, `DOCKER_TLS_VERIFY=1`
//! and `DOCKER_CERT_PATH` holding `ca.pem`, `cert.pem` and `key.pem`.
//!
//! The real dockerd is put behind stunnel's TLS listener (mutual TLS, verifying our client
//! certificate) on loopback; every request is still answered by the real dockerd. (socat
//! cannot serve this: its OpenSSL server refuses resumed TLS sessions when it verifies
//! client certificates.)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

struct Stunnel(Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("cert dir");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=egt-test-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=egt-{name}"),
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[test]
fn docker_over_mutual_tls() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    if !sh("command -v socat && command -v openssl")
        .status
        .success()
    {
        panic!("prerequisite missing: socat and openssl (run `make test`: scripts/prereqs.sh installs them)");
    }
    let mut cleanup = Cleanup::new();
    let tag = unique("dtls");
    let dir = std::env::temp_dir().join(&tag);
    let _ = std::fs::remove_dir_all(&dir);
    make_certs(&dir);
    // What the client reads from DOCKER_CERT_PATH.
    let certs = dir.join("client");
    std::fs::create_dir_all(&certs).expect("dir");
    std::fs::copy(dir.join("ca.pem"), certs.join("ca.pem")).expect("copy");
    std::fs::copy(dir.join("client.pem"), certs.join("cert.pem")).expect("copy");
    std::fs::copy(dir.join("client-key.pem"), certs.join("key.pem")).expect("copy");

    let port = free_port();
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[docker]\naccept = 127.0.0.1:{port}\nconnect = /var/run/docker.sock\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
            dir.join("server.pem").display(),
            dir.join("server-key.pem").display(),
            dir.join("ca.pem").display()
        ),
    )
    .expect("stunnel config");
    let _stunnel = Stunnel(
        Command::new("stunnel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "stunnel never listened");
        std::thread::sleep(Duration::from_millis(50));
    }

    let net = format!("{tag}-net");
    let kv_path = format!("{tag}/acl/");
    cleanup.kv_prefixes.push(format!("{tag}/"));
    network(&mut cleanup, &net, "10.231.91");
    let srv_ip = "10.231.91.10";
    listener(
        &mut cleanup,
        &format!("{tag}-srv"),
        &net,
        srv_ip,
        &[80, 8080],
    );
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));
    let c = format!("{tag}-c");
    client(&mut cleanup, &c, &net, &[]);

    let run = |cert_path: &std::path::Path| {
        Command::new(bin())
            .args(["-k", &kv_path, "set", &c, "--rules", "web"])
            .env("CONSUL_HTTP_ADDR", CONSUL)
            .env("EGRESSTRATOR_STATE_DIR", dir.join("state"))
            .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", cert_path)
            .output()
            .expect("egresstrator runs")
    };
    let out = run(&certs);
    assert!(
        out.status.success(),
        "set over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fetch(&c, srv_ip, 80), Fetch::Body("port80".into()));
    assert_eq!(fetch(&c, srv_ip, 8080), Fetch::Refused);

    // A client that does not trust the daemon's CA is refused, and says why.
    make_certs(&dir.join("other"));
    let wrong = dir.join("wrong");
    std::fs::create_dir_all(&wrong).expect("dir");
    std::fs::copy(dir.join("other/ca.pem"), wrong.join("ca.pem")).expect("copy");
    std::fs::copy(dir.join("client.pem"), wrong.join("cert.pem")).expect("copy");
    std::fs::copy(dir.join("client-key.pem"), wrong.join("key.pem")).expect("copy");
    let out = run(&wrong);
    assert_eq!(
        out.status.code(),
        Some(2),
        "must not run with an untrusted daemon"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach docker"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
