//! Zero window: `egresstrator-runc` as a dockerd runtime puts the ruleset in force before a
//! container's first instruction (an OCI createRuntime hook asks the agent over its socket).
//!
//! The runtimes are registered in /etc/docker/daemon.json and loaded with SIGHUP (dockerd
//! reloads `runtimes` without a restart); the file is restored afterwards.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;

const DAEMON_JSON: &str = "/etc/docker/daemon.json";
const SHIM_CONFIG: &str = "/etc/egresstrator/runc.conf";

pub(crate) struct Runtimes {
    previous: Option<Vec<u8>>,
}

fn reload_dockerd() {
    let out = sh("kill -HUP $(pgrep -x dockerd)");
    assert!(out.status.success(), "cannot signal dockerd");
    // The reload is asynchronous: wait until `docker info` lists what the file says.
    std::thread::sleep(Duration::from_millis(500));
}

impl Runtimes {
    /// Registers `egresstrator-runc` under each name with those runtimeArgs (none: the
    /// shim reads its config file).
    pub(crate) fn install(runtimes: &[(&str, Vec<String>)]) -> Self {
        let previous = std::fs::read(DAEMON_JSON).ok();
        let mut config: serde_json::Value = previous
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        let shim = env!("CARGO_BIN_EXE_egresstrator-runc");
        for (name, args) in runtimes {
            config["runtimes"][*name] = if args.is_empty() {
                serde_json::json!({ "path": shim })
            } else {
                serde_json::json!({ "path": shim, "runtimeArgs": args })
            };
        }
        std::fs::create_dir_all("/etc/docker").expect("/etc/docker");
        std::fs::write(
            DAEMON_JSON,
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("write daemon.json");
        let guard = Runtimes { previous };
        reload_dockerd();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listed = docker_ok(&["info", "--format", "{{json .Runtimes}}"]);
        let mut listed = listed;
        while runtimes
            .iter()
            .any(|(name, _)| !listed.contains(&format!("\"{name}\"")))
        {
            assert!(
                Instant::now() < deadline,
                "dockerd did not load the runtimes: {listed}"
            );
            std::thread::sleep(Duration::from_millis(100));
            listed = docker_ok(&["info", "--format", "{{json .Runtimes}}"]);
        }
        guard
    }

    /// `egt-shim` (fail closed to deny-all) and `egt-shim-block` (block the start), both
    /// talking to the agent on `socket`, configured through runtimeArgs.
    fn with_args(socket: &str) -> Self {
        let args = |block: bool| {
            let mut a = vec![
                format!("--egresstrator-socket={socket}"),
                "--egresstrator-timeout-ms=1500".to_owned(),
            ];
            if block {
                a.push("--egresstrator-block".to_owned());
            }
            a
        };
        Self::install(&[("egt-shim", args(false)), ("egt-shim-block", args(true))])
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        restore(DAEMON_JSON, self.previous.take());
        reload_dockerd();
    }
}

fn restore(path: &str, previous: Option<Vec<u8>>) {
    match previous {
        Some(b) => {
            let _ = std::fs::write(path, b);
        }
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The shim's config file, written for a test and restored (or removed) afterwards.
pub(crate) struct ShimConfig {
    previous: Option<Vec<u8>>,
}

impl ShimConfig {
    pub(crate) fn write(text: &str) -> Self {
        let previous = std::fs::read(SHIM_CONFIG).ok();
        std::fs::create_dir_all("/etc/egresstrator").expect("/etc/egresstrator");
        std::fs::write(SHIM_CONFIG, text).expect("write the shim's config");
        ShimConfig { previous }
    }

    pub(crate) fn replace(&self, text: &str) {
        std::fs::write(SHIM_CONFIG, text).expect("write the shim's config");
    }
}

impl Drop for ShimConfig {
    fn drop(&mut self) {
        restore(SHIM_CONFIG, self.previous.take());
    }
}

/// `docker run --rm` whose first instruction fetches ip:port; returns the fetch result.
fn first_instruction(
    runtime: &str,
    net: &str,
    enabled: bool,
    ip: &str,
    port: u16,
) -> (Output, Fetch) {
    let mut args = vec!["run", "--rm", "--runtime", runtime, "--network", net];
    if enabled {
        args.extend(["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"]);
    }
    let cmd = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}");
    args.extend([IMAGE, "sh", "-c", &cmd]);
    let out = docker(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = if stdout.starts_with("HTTP/1.") {
        Fetch::Body(
            stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned(),
        )
    } else if stderr.contains("Connection refused") || stdout.contains("Connection refused") {
        Fetch::Refused
    } else {
        Fetch::Other(format!("{stdout} {stderr}"))
    };
    (out, f)
}

#[test]
fn runtime_shim_closes_the_window() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("shim", 94, &[80, 8080], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));
    let socket: PathBuf = std::env::temp_dir().join(format!("{tag}.sock"));
    let socket_s = socket.display().to_string();
    let _runtimes = Runtimes::with_args(&socket_s);

    // Agent down: the hook fails closed and lets the container start with deny-all…
    let early = format!("{tag}-early");
    client(
        &mut s.cleanup,
        &early,
        &net,
        &[
            "--runtime",
            "egt-shim",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    let t = table(&early).unwrap_or_default();
    assert!(
        t.contains("egresstrator deny-all"),
        "deny-all expected before the agent runs: {t}"
    );
    assert_eq!(fetch(&early, srv_ip, 80), Fetch::Refused);
    // …and with --egresstrator-block the start fails instead.
    let blocked = docker(&[
        "run",
        "--rm",
        "--runtime",
        "egt-shim-block",
        "--network",
        &net,
        "-e",
        "EGRESSTRATOR_ENABLE=1",
        "-e",
        "EGRESSTRATOR_ACL=web",
        IMAGE,
        "true",
    ]);
    assert!(
        !blocked.status.success(),
        "a blocking runtime must refuse the start without the agent"
    );

    // The agent comes up and replaces deny-all with the real ruleset.
    let agent = AgentProc::start(&["-k", &kv_path, "--hook-socket", &socket_s]);
    wait_table(&early, "the real ruleset", |t| {
        t.is_some_and(|t| t.contains("egresstrator allowlist"))
    });
    assert_eq!(fetch(&early, srv_ip, 80), Fetch::Body("port80".into()));
    assert_eq!(fetch(&early, srv_ip, 8080), Fetch::Refused);

    // The first instruction of an enabled container is already filtered.
    for _ in 0..3 {
        let (out, f) = first_instruction("egt-shim", &net, true, srv_ip, 8080);
        assert_eq!(
            f,
            Fetch::Refused,
            "first instruction to a denied port: {out:?}"
        );
        let (out, f) = first_instruction("egt-shim", &net, true, srv_ip, 80);
        assert_eq!(
            f,
            Fetch::Body("port80".into()),
            "first instruction to an allowed port: {out:?}"
        );
    }
    // Containers that are not enabled are untouched by the shim.
    let (out, f) = first_instruction("egt-shim", &net, false, srv_ip, 8080);
    assert_eq!(f, Fetch::Body("port8080".into()), "{out:?}");

    // Under the plain runtime the event path alone leaves a window; measure, don't assert.
    let mut through = 0;
    let runs = 5;
    for _ in 0..runs {
        if first_instruction("runc", &net, true, srv_ip, 8080).1 == Fetch::Body("port8080".into()) {
            through += 1;
        }
    }
    eprintln!("window under the plain runtime: {through} of {runs} first instructions to a denied port got through");

    // docker exec, pause/unpause, restart, stop and rm all work through the shim.
    let c = format!("{tag}-life");
    client(
        &mut s.cleanup,
        &c,
        &net,
        &[
            "--runtime",
            "egt-shim",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    assert_eq!(docker_ok(&["exec", &c, "echo", "exec-ok"]), "exec-ok");
    docker_ok(&["pause", &c]);
    docker_ok(&["unpause", &c]);
    docker_ok(&["restart", "-t", "1", &c]);
    wait_table(&c, "rules after restart", |t| {
        t.is_some_and(|t| t.contains("egresstrator allowlist"))
    });
    assert_eq!(fetch(&c, srv_ip, 8080), Fetch::Refused);
    docker_ok(&["stop", "-t", "1", &c]);
    docker_ok(&["rm", &c]);
    drop(agent);
}

/// Registered without runtimeArgs, as the README recommends (with them dockerd runs the shim
/// through a generated shell script for every runc verb), the shim takes its options from
/// /etc/egresstrator/runc.conf; a broken file fails new starts with a message naming the
/// line, and never stops a running container from being stopped or removed.
#[test]
fn runtime_shim_reads_its_config_file() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("shimconf", 95, &[80, 8080], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));
    let socket = std::env::temp_dir().join(format!("{tag}.sock"));
    let socket_s = socket.display().to_string();
    let config = ShimConfig::write(&format!(
        "# written by the shim test\nsocket = {socket_s}\ntimeout-ms = 1500\nblock = true\n"
    ));
    let _runtimes = Runtimes::install(&[("egt-shim-conf", Vec::new())]);
    let run = |enabled: bool, cmd: &[&str]| {
        let mut args = vec![
            "run",
            "--rm",
            "--runtime",
            "egt-shim-conf",
            "--network",
            &net,
        ];
        if enabled {
            args.extend(["-e", "EGRESSTRATOR_ENABLE=1", "-e", "EGRESSTRATOR_ACL=web"]);
        }
        args.push(IMAGE);
        args.extend(cmd);
        docker(&args)
    };

    // Nothing answers on the file's socket and the file says block: the start fails.
    let blocked = run(true, &["true"]);
    assert!(
        !blocked.status.success(),
        "block = true in the config file must refuse the start without the agent: {blocked:?}"
    );
    // A container that is not enabled starts as usual.
    let plain = run(false, &["echo", "plain-ok"]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "plain-ok");

    // The agent on the file's socket: the first instruction is filtered.
    let agent = AgentProc::start(&["-k", &kv_path, "--hook-socket", &socket_s]);
    let (out, f) = first_instruction("egt-shim-conf", &net, true, srv_ip, 8080);
    assert_eq!(
        f,
        Fetch::Refused,
        "first instruction to a denied port: {out:?}"
    );
    let (out, f) = first_instruction("egt-shim-conf", &net, true, srv_ip, 80);
    assert_eq!(f, Fetch::Body("port80".into()), "{out:?}");

    // A broken file: new starts fail and say where; a running container still stops and goes.
    let c = format!("{tag}-running");
    client(&mut s.cleanup, &c, &net, &["--runtime", "egt-shim-conf"]);
    config.replace("timeout-ms = soon\n");
    let bad = run(false, &["true"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "a broken config must fail the start");
    assert!(
        err.contains("/etc/egresstrator/runc.conf line 1: timeout-ms must be a positive number"),
        "docker run's error names the file and line: {err}"
    );
    docker_ok(&["stop", "-t", "1", &c]);
    docker_ok(&["rm", &c]);
    drop(agent);
}

/// An agent that answers after the hook gave up (timeout-ms = 1 is shorter than any plan and
/// commit): the hook has loaded its nft deny-all, and an agent on the iptables backend must
/// remove it with its first load, or the container stays cut off behind correct iptables
/// rules. Whichever way the race goes, the container must end up with its real policy.
#[test]
fn late_agent_on_iptables_replaces_the_hooks_deny_all() {
    let _serial = serial();
    if !prerequisites() {
        return;
    }
    let mut s = Scene::new("shimlate", 96, &[80, 8080], &[]);
    let (tag, net, kv_path) = (s.tag.clone(), s.net.clone(), s.kv_path.clone());
    let srv_ip = s.srv_ip.clone();
    let srv_ip = srv_ip.as_str();
    kv_put(&format!("{kv_path}web"), &format!("{srv_ip}:tcp/80"));
    let socket = std::env::temp_dir().join(format!("{tag}.sock"));
    let socket_s = socket.display().to_string();
    let _runtimes = Runtimes::install(&[(
        "egt-shim-late",
        vec![
            format!("--egresstrator-socket={socket_s}"),
            "--egresstrator-timeout-ms=1".to_owned(),
        ],
    )]);
    let _agent = AgentProc::start(&[
        "-k",
        &kv_path,
        "--hook-socket",
        &socket_s,
        "--backend",
        "iptables",
    ]);
    let c = format!("{tag}-c");
    client(
        &mut s.cleanup,
        &c,
        &net,
        &[
            "--runtime",
            "egt-shim-late",
            "-e",
            "EGRESSTRATOR_ENABLE=1",
            "-e",
            "EGRESSTRATOR_ACL=web",
        ],
    );
    wait_for("the allowed port through", Duration::from_secs(20), || {
        (fetch(&c, srv_ip, 80) == Fetch::Body("port80".into())).then_some(())
    });
    assert_eq!(fetch(&c, srv_ip, 8080), Fetch::Refused);
    assert_eq!(
        table(&c),
        None,
        "no nft table may stay next to the iptables backend's rules"
    );
}
