//! `egresstrator runtime install|uninstall`, run as an operator would, on real files in a
//! temporary directory (not the host's daemon.json: dockerd serves the other tests).

use std::path::Path;

use crate::common::*;

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    let json = dir.join("daemon.json");
    let conf = dir.join("runc.conf");
    let mut all = vec![
        "runtime",
        "--daemon-json",
        json.to_str().expect("utf-8"),
        "--runc-conf",
        conf.to_str().expect("utf-8"),
    ];
    all.extend_from_slice(args);
    cli(&all)
}

#[test]
fn runtime_install_merges_is_idempotent_and_uninstall_restores() {
    let dir = std::env::temp_dir().join(format!("egt-runtime-cmd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let shim = dir.join("egresstrator-runc");
    std::fs::write(&shim, b"#!/bin/sh\n").expect("shim");
    let json = dir.join("daemon.json");
    std::fs::write(
        &json,
        "{\"log-level\": \"warn\", \"runtimes\": {\"crun\": {\"path\": \"/usr/bin/crun\"}}}\n",
    )
    .expect("daemon.json");

    let out = run(
        &dir,
        &[
            "install",
            "--default",
            "--shim",
            shim.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("SIGHUP"), "{said}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("read")).expect("json");
    assert_eq!(doc["log-level"], "warn");
    assert_eq!(doc["runtimes"]["crun"]["path"], "/usr/bin/crun");
    assert_eq!(
        doc["runtimes"]["egresstrator"]["path"],
        shim.to_str().expect("utf-8")
    );
    assert_eq!(doc["default-runtime"], "egresstrator");
    let conf = std::fs::read_to_string(dir.join("runc.conf")).expect("runc.conf");
    assert!(
        conf.contains("socket = /run/egresstrator/hook.sock"),
        "{conf}"
    );

    let bytes = std::fs::read(&json).expect("bytes");
    let out = run(
        &dir,
        &[
            "install",
            "--default",
            "--shim",
            shim.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing changed"));
    assert_eq!(
        std::fs::read(&json).expect("bytes"),
        bytes,
        "twice changes nothing"
    );

    let out = run(&dir, &["uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("read")).expect("json");
    assert_eq!(
        doc,
        serde_json::json!({"log-level": "warn", "runtimes": {"crun": {"path": "/usr/bin/crun"}}})
    );
    assert!(!dir.join("runc.conf").exists());

    // A daemon.json with a comment is refused, and left as it was.
    let commented = "{\n  // dockerd refuses this too\n  \"debug\": true\n}\n";
    std::fs::write(&json, commented).expect("write");
    let out = run(&dir, &["install", "--shim", shim.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not plain JSON"));
    assert_eq!(std::fs::read_to_string(&json).expect("read"), commented);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `egresstrator doctor` on this machine: the kernel, tools, Docker and Consul checks pass
/// (they are tried for real); a daemon.json without the shim fails the run with a fix, and
/// `--json` says the same.
#[test]
fn doctor_checks_for_real_and_fails_with_a_fix() {
    let dir = std::env::temp_dir().join(format!("egt-doctor-cmd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let json = dir.join("daemon.json");
    std::fs::write(&json, "{}").expect("daemon.json");
    let state = dir.join("state");
    let args = [
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--hook-socket",
        "off",
        "doctor",
        "--daemon-json",
        json.to_str().expect("utf-8"),
    ];
    let out = cli(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    for ok in [
        "ok    kernel nf_tables",
        "ok    kernel netdev egress hook",
        "ok    kernel NFLOG",
        "ok    nft: nftables v",
        "ok    docker: dockerd ",
        "ok    consul: ",
        "ok    state dir: ",
        "ok    clock: ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(ok)),
            "no {ok:?} in:\n{text}"
        );
    }
    assert!(
        text.contains("FAIL  runtime shim: no runtime \"egresstrator\"")
            && text.contains("fix: egresstrator runtime install"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1), "a failed check fails the run");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = cli(&json_args);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let shim = checks
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "runtime shim"))
        .expect("the shim check");
    assert_eq!(shim["ok"], false);
    assert!(shim["fix"].as_str().is_some_and(|f| !f.is_empty()));
    let _ = std::fs::remove_dir_all(&dir);
}
