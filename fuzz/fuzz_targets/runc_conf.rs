//! The runtime shim's options (`egresstrator-runc`): `runc.conf` and `--egresstrator-*`
//! runtime arguments, through the shim's own `options::load`.
//!
//! The shim is a binary crate, so its `options.rs` is compiled into this target with
//! `#[path]`, unchanged (the way the shim itself shares `ifnames.rs`). `load` reads the file
//! named by `$EGRESSTRATOR_RUNC_CONFIG`: each input is written to a file on tmpfs first.
//!
//! Input: the file's text, then NUL-separated arguments. Checked: no panic; exactly the
//! `--egresstrator-*` arguments are removed and the others keep their order; the timeout
//! is positive and paths are never empty; every problem names its line or argument; and
//! options written back as a `runc.conf` load to the same options without a problem.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/egresstrator/src/bin/egresstrator-runc/options.rs"]
mod options;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = egresstrator_fuzz::scratch_dir("runc");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("runc.conf");
        std::env::set_var("EGRESSTRATOR_RUNC_CONFIG", &path);
        path
    })
}

fn load(conf: &str, args: &[String]) -> (options::Options, Vec<String>, Vec<OsString>) {
    std::fs::write(config_path(), conf).expect("write runc.conf");
    let mut argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    let (opts, problems) = options::load(&mut argv);
    (opts, problems, argv)
}

/// A value the file can carry as it is: `#` starts a comment, lines are split at `\n` and
/// values are trimmed.
fn writable(v: &str) -> bool {
    !v.is_empty() && !v.contains(['#', '\n']) && v.trim() == v
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let conf = parts.next().unwrap_or_default();
    let args: Vec<String> = parts.take(32).map(str::to_owned).collect();
    let (opts, problems, rest) = load(conf, &args);

    let kept: Vec<OsString> = args
        .iter()
        .filter(|a| !a.starts_with("--egresstrator-"))
        .map(OsString::from)
        .collect();
    assert_eq!(rest, kept);
    assert!(opts.timeout_ms > 0);
    assert!(!opts.socket.as_os_str().is_empty());
    assert!(!opts.docker_root.as_os_str().is_empty());
    assert!(opts.runc.as_ref().is_none_or(|r| !r.as_os_str().is_empty()));
    let lines = conf.lines().count();
    for p in &problems {
        let ok = p.starts_with("runtime argument --egresstrator-")
            || p.split_once(" line ").is_some_and(|(_, rest)| {
                rest.split(':')
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n >= 1 && n <= lines)
            });
        assert!(ok, "problem without a place: {p:?}");
    }

    // Written back as a file, the options load unchanged.
    let socket = opts.socket.to_string_lossy().into_owned();
    let root = opts.docker_root.to_string_lossy().into_owned();
    let runc = opts.runc.as_ref().map(|r| r.to_string_lossy().into_owned());
    if writable(&socket) && writable(&root) && runc.as_deref().is_none_or(writable) {
        let mut file = format!(
            "socket = {socket}\ntimeout-ms = {}\nblock = {}\ndocker-root = {root}\nallow-bypassable = {}\nkeep-net-raw = {}\n",
            opts.timeout_ms, opts.block, opts.allow_bypassable, opts.keep_net_raw
        );
        if let Some(r) = &runc {
            file.push_str(&format!("runc = {r}\n"));
        }
        let (again, problems, _) = load(&file, &[]);
        assert!(problems.is_empty(), "{file:?}: {problems:?}");
        assert_eq!(again, opts, "{file:?}");
    }
});
