//! `--template`: a consul-template file in egresstrator 0.2's style (per-key rules from
//! `tree`, `in` on the ACL list, `regexMatch` per line, `service` expansions, a DNS chain),
//! rendered against a real Consul, applied with iptables-restore in the container's
//! namespace, checked with real traffic, and re-applied when the data it read changes.

use std::path::Path;

use crate::common::*;

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/templates/allowlist.ctmpl")
        .display()
        .to_string()
}

fn register(id: &str, name: &str, addr: &str, port: u16) {
    let body = format!(r#"{{"ID":"{id}","Name":"{name}","Address":"{addr}","Port":{port}}}"#);
    let out = sh(&format!(
        "curl -sf -X PUT --data '{body}' http://{CONSUL}/v1/agent/service/register"
    ));
    assert!(
        out.status.success(),
        "register {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn deregister(id: &str) {
    let _ = sh(&format!(
        "curl -sf -X PUT http://{CONSUL}/v1/agent/service/deregister/{id}"
    ));
}

struct Service(String);

impl Drop for Service {
    fn drop(&mut self) {
        deregister(&self.0);
    }
}

#[test]
fn template_renders_applies_and_follows_changes() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("tmpl", 92, &[80, 8080, 9000], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    let svc_name = format!("egtsvc{}", std::process::id());
    // `web` allows port 80 and the service; `other` (not named) would allow 8080.
    kv_put(
        &format!("{kv_path}web"),
        &format!("{srv_ip}:tcp/80\n{svc_name}\n"),
    );
    kv_put(&format!("{kv_path}other"), &format!("{srv_ip}:tcp/8080"));
    register(&format!("{svc_name}-1"), &svc_name, srv_ip, 9000);
    let _svc = Service(format!("{svc_name}-1"));

    let template = example();
    let agent = AgentProc::start(&["-k", &kv_path, "-f", &template]);
    agent.wait_log("reconciling running containers");
    let c = format!("{tag}-c");
    client(
        &mut s.cleanup,
        &c,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    agent.wait_log(&format!(
        "name={c} acls=web outcome=\"enforced\" posture=template"
    ));
    let pid = container_pid(&c);
    let rules = String::from_utf8_lossy(
        &sh(&format!(
            "nsenter --net=/proc/{pid}/ns/net iptables -S OUTPUT"
        ))
        .stdout,
    )
    .into_owned();
    assert!(
        rules.contains(&format!(
            "-A OUTPUT -d {srv_ip}/32 -p tcp -m tcp --dport 9000 -j ACCEPT"
        )),
        "{rules}"
    );
    assert_eq!(fetch(&c, srv_ip, 80), Fetch::Body("port80".into()));
    assert_eq!(
        fetch(&c, srv_ip, 9000),
        Fetch::Body("port9000".into()),
        "service instance"
    );
    assert_eq!(
        fetch(&c, srv_ip, 8080),
        Fetch::Refused,
        "not named, not allowed"
    );

    // A KV change the template read is rendered and applied again.
    kv_put(
        &format!("{kv_path}web"),
        &format!("{srv_ip}:tcp/80\n{srv_ip}:tcp/8080\n{svc_name}\n"),
    );
    wait_for(
        "8080 allowed after the KV change",
        std::time::Duration::from_secs(20),
        || (fetch(&c, srv_ip, 8080) == Fetch::Body("port8080".into())).then_some(()),
    );
    // So is a change of the service's instances.
    deregister(&format!("{svc_name}-1"));
    wait_for(
        "9000 refused after deregistering",
        std::time::Duration::from_secs(20),
        || (fetch(&c, srv_ip, 9000) == Fetch::Refused).then_some(()),
    );

    // explain prints the rendered output.
    let out = cli(&["-k", &kv_path, "-f", &template, "explain", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("*filter") && text.contains("--dport 8080 -j ACCEPT"),
        "{text}"
    );
    drop(agent);
}

/// A template that reads outside the kv-path, or does not parse, never leaves a container
/// open: the first fails it closed, the second stops the command with file, line and column.
#[test]
fn template_errors_fail_closed_or_name_the_place() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("tmplerr", 93, &[80], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).expect("dir");
    let outside = dir.join("outside.ctmpl");
    std::fs::write(&outside, "*filter\n{{ key \"other/secret\" }}\nCOMMIT\n").expect("write");
    let broken = dir.join("broken.ctmpl");
    std::fs::write(
        &broken,
        "*filter\n{{ range tree \"x\" }}\n{{ frobnicate . }}\n{{ end }}\n",
    )
    .expect("write");

    let c = format!("{tag}-c");
    client(
        &mut s.cleanup,
        &c,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let out = cli(&[
        "-k",
        &kv_path,
        "-f",
        &outside.display().to_string(),
        "set",
        &c,
    ]);
    assert_eq!(out.status.code(), Some(1), "fail closed is a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outside the kv-path"), "{err}");
    assert_eq!(fetch(&c, srv_ip, 80), Fetch::Refused, "failed closed");

    let out = cli(&[
        "-k",
        &kv_path,
        "-f",
        &broken.display().to_string(),
        "explain",
        &c,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:3:4: function \"frobnicate\" not defined",
            broken.display()
        )),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
