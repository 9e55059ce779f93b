//! `--template`: a consul-template file in egresstrator 0.2's style (per-key rules from
//! `tree`, `in` on the ACL list, `regexMatch` per line, `service` expansions, a DNS chain),
//! rendered against a real Consul, applied with iptables-restore in the container's
//! namespace, checked with real traffic, and re-applied when the data it read changes. Also:
//! hostile catalog data (an address or tag carrying a line of its own) never reaches the
//! rules, and an nft output that `include`s a file fails the container closed.

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

/// Registers a service with the local Consul agent from a JSON body (passed as an argument,
/// never through a shell: the body may hold quotes and escaped newlines).
fn register_json(id: &str, body: &str) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f", "-X", "PUT", "--data-binary", body])
        .arg(format!("http://{CONSUL}/v1/agent/service/register"))
        .output()
        .expect("spawn curl");
    assert!(
        out.status.success(),
        "register {id}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a hostile registration tries to add: a rule at the top of OUTPUT that accepts
/// everything.
const INJECTED: &str = "-I OUTPUT 1 -j ACCEPT";

/// Catalog data is untrusted text: whoever may register a service chooses its address and
/// tags. A template that pastes both into its rules (as 0.2 templates do) is rendered against
/// one well-formed instance and two hostile ones whose address or tag carries a line of its
/// own (`-I OUTPUT 1 -j ACCEPT`, then `#` to comment out the rest of the template's line).
/// Pasted, either would open every port. The agent leaves both instances out and says so;
/// the well-formed instance's port is reachable (the control: the template does use the
/// service), a port nobody allowed stays refused, and so does the hostile instance's own.
#[test]
fn template_never_pastes_hostile_catalog_data() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    // Another run's agent would enforce this test's containers with its own policy.
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("tmplhostile", 110, &[8080, 9000, 9001], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    let svc = format!("egthostile{}", std::process::id());
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));

    let good = format!("{svc}-good");
    register_json(
        &good,
        &format!(
            r#"{{"ID":"{good}","Name":"{svc}","Address":"{srv_ip}","Port":9000,
                "Tags":["primary","env=prod","zone:eu-west-1a","v1.2"],
                "Meta":{{"version":"1.2.3"}}}}"#
        ),
    );
    let _good = Service(good.clone());
    let bad_tag = format!("{svc}-badtag");
    register_json(
        &bad_tag,
        &format!(
            r#"{{"ID":"{bad_tag}","Name":"{svc}","Address":"{srv_ip}","Port":9001,
                "Tags":["ok\n{INJECTED}\n#"]}}"#
        ),
    );
    let _bad_tag = Service(bad_tag.clone());
    let bad_addr = format!("{svc}-badaddr");
    register_json(
        &bad_addr,
        &format!(
            r#"{{"ID":"{bad_addr}","Name":"{svc}","Address":"{srv_ip} -j ACCEPT\n{INJECTED}\n#",
                "Port":9002,"Tags":["x"]}}"#
        ),
    );
    let _bad_addr = Service(bad_addr.clone());

    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).expect("dir");
    let template = dir.join("hostile.ctmpl");
    std::fs::write(
        &template,
        format!(
            r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
{{{{- range service "{svc}" "any" }}}}
-A OUTPUT -d {{{{ .Address }}}} -p tcp -m tcp --dport {{{{ .Port }}}} -m comment --comment {{{{ join "," .Tags }}}} -j ACCEPT
{{{{- end }}}}
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited
COMMIT
"#
        ),
    )
    .expect("write template");
    let template = template.display().to_string();

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
    // The warnings name the service, the instance and why (values escaped, on one line).
    agent.wait_log(&format!(
        r#"service {svc}: instance "{bad_tag}": tag "ok\n{INJECTED}\n#" contains a control character (U+000A)"#
    ));
    agent.wait_log(&format!(
        r#"service {svc}: instance "{bad_addr}": address "{srv_ip} -j ACCEPT\n{INJECTED}\n#" is not an IP address; skipped"#
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
        rules.contains("--dport 9000") && rules.contains("env=prod,primary,v1.2,zone:eu-west-1a"),
        "the well-formed instance is in the rules: {rules}"
    );
    assert!(
        !rules.lines().any(|l| l.trim() == "-A OUTPUT -j ACCEPT"),
        "no injected accept-all: {rules}"
    );
    assert!(
        !rules.contains("9001") && !rules.contains("9002"),
        "{rules}"
    );

    assert_eq!(
        fetch(&c, srv_ip, 9000),
        Fetch::Body("port9000".into()),
        "control: the well-formed instance is allowed; rules: {rules}\nagent log:\n{}",
        agent.log_text()
    );
    assert_eq!(
        fetch(&c, srv_ip, 8080),
        Fetch::Refused,
        "nobody allowed 8080"
    );
    assert_eq!(
        fetch(&c, srv_ip, 9001),
        Fetch::Refused,
        "the hostile-tag instance was left out"
    );

    // explain shows the same output, and says what it left out.
    let out = cli(&["-k", &kv_path, "-f", &template, "explain", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--dport 9000") && !text.contains(INJECTED) && !text.contains("9001"),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(r#"instance "{bad_tag}""#)) && err.contains("; skipped"),
        "{err}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An nft template's output may not `include` a file (libnftables has no include path, but
/// an absolute path would still be opened): the render fails and the container fails closed.
/// The control: the same template without the include is applied and lets traffic through.
#[test]
fn nft_template_output_may_not_include_files() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    // Another run's agent would enforce this test's containers with its own policy.
    let _watch = ForeignWatch::start();
    let mut s = Scene::new("tmplinc", 111, &[80], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = "table inet tmpl {\n  chain output {\n    type filter hook output priority 0; \
                 policy accept;\n  }\n}\n";
    let plain = dir.join("plain.ctmpl");
    std::fs::write(&plain, rules).expect("write");
    // A file nft would read without complaint: without the check, this output would load.
    let extra = dir.join("extra.nft");
    std::fs::write(&extra, "add table inet extra\n").expect("write");
    let including = dir.join("including.ctmpl");
    std::fs::write(
        &including,
        format!(
            "{rules}add table inet other; include \"{}\"\n",
            extra.display()
        ),
    )
    .expect("write");

    let c = format!("{tag}-c");
    client(
        &mut s.cleanup,
        &c,
        &net,
        &["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"],
    );
    let plain = plain.display().to_string();
    let agent = AgentProc::start(&["-k", &kv_path, "-f", &plain, "--template-format", "nft"]);
    agent.wait_log(&format!(
        "name={c} acls=web outcome=\"enforced\" posture=template"
    ));
    assert_eq!(
        fetch(&c, srv_ip, 80),
        Fetch::Body("port80".into()),
        "control: the template without the include is applied"
    );
    drop(agent);

    let including = including.display().to_string();
    let agent = AgentProc::start(&["-k", &kv_path, "-f", &including, "--template-format", "nft"]);
    agent.wait_log(&format!("name={c} acls=web outcome=\"fail-closed\""));
    agent.wait_log("the nft output has an `include` on line 6");
    assert_eq!(fetch(&c, srv_ip, 80), Fetch::Refused, "failed closed");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
