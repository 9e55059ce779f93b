//! Installing like a daemon: the man pages, shell completions, default file and systemd unit
//! that `make install` puts in place, and `make install-files` / `make uninstall` themselves.
//!
//! The oracle is always the built binaries (`egresstrator … --help`, the shim's own error for
//! an unknown option), never the generator: a page or completion that drifts from the CLI
//! fails here. No Docker, Consul or root needed.
//!
//! `make install` = `install-build` (a release build, minutes) + `install-files` (copies).
//! The test runs `install-files` for real, into a temporary DESTDIR, from the binaries cargo
//! built for this test and pages generated here (BUILT=, GEN=), and `uninstall` after it. What
//! it does not run is the release build itself: that is `cargo build --release` plus the
//! Makefile's existing STATIC_SHIM line, exercised by `make build` and `make bench`.

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EGRESSTRATOR: &str = env!("CARGO_BIN_EXE_egresstrator");
const SHIM: &str = env!("CARGO_BIN_EXE_egresstrator-runc");
const GEN: &str = env!("CARGO_BIN_EXE_egresstrator-gen");

/// The Makefile's variables: one set in the test's environment must not change what an
/// install under test does (`?=` would take it).
const MAKE_VARS: [&str; 16] = [
    "PREFIX",
    "DESTDIR",
    "BINDIR",
    "DATADIR",
    "MANDIR",
    "UNITDIR",
    "SYSCONFDIR",
    "BASHCOMPDIR",
    "ZSHCOMPDIR",
    "FISHCOMPDIR",
    "BUILT",
    "GEN",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEOVERRIDES",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A directory of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "egt-install-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tests of this file run in parallel in one process: the pid alone is not unique.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs egresstrator-gen into `dir`.
fn generate(dir: &Path) {
    run(Command::new(GEN).arg(dir));
}

/// `egresstrator ARGS --help`, the long help.
fn help(args: &[String]) -> String {
    let out = run(Command::new(EGRESSTRATOR).args(args).arg("--help"));
    String::from_utf8(out.stdout).unwrap()
}

/// The lines of a help section (`Options:`, `Commands:`) up to the next unindented line.
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// Long options of a help text: the `--name` of every option header (indented by at most 6;
/// descriptions are indented by 10).
fn help_long_options(help: &str) -> BTreeSet<String> {
    section(help, "Options:")
        .into_iter()
        .filter(|l| {
            let indent = l.len() - l.trim_start().len();
            indent <= 6 && l.trim_start().starts_with('-')
        })
        .filter_map(|l| {
            l.split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(str::to_owned)
        })
        .collect()
}

/// Subcommands listed by a help text, without clap's `help`.
fn help_subcommands(help: &str) -> Vec<String> {
    section(help, "Commands:")
        .into_iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command path: [], ["set"], …, ["helper-image", "build"], from the binary's help.
fn command_paths() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        for sub in help_subcommands(&help(&path)) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        out.push(path);
    }
    out
}

/// Roff source as plain text: `\-` is `-`, font changes dropped.
fn unroff(roff: &str) -> String {
    roff.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
}

/// Long options of a clap_mangen page: the `--name` in each `.TP` header line.
fn page_long_options(page: &str) -> BTreeSet<String> {
    let text = unroff(page);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| {
            w[1].split([' ', ','])
                .find(|t| t.starts_with("--"))
                .map(str::to_owned)
        })
        .collect()
}

/// Whole words (letters, digits, `-`, `_`) of a text.
fn words(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn man_pages_match_the_help_of_every_command() {
    let dir = TempDir::new("pages");
    generate(&dir.0);
    let paths = command_paths();
    assert!(
        paths.len() >= 10,
        "expected the agent's subcommands, got {paths:?}"
    );
    for path in &paths {
        let name = std::iter::once("egresstrator".to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join("-");
        let page_path = dir.0.join(format!("{name}.1"));
        let page = std::fs::read_to_string(&page_path)
            .unwrap_or_else(|e| panic!("no page for `{}`: {e}", path.join(" ")));
        let shown = help_long_options(&help(path));
        assert!(
            shown.len() >= 3,
            "{name}: parsed too few options: {shown:?}"
        );
        let documented = page_long_options(&page);
        let missing: Vec<_> = shown.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&shown).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}.1 drifted from `egresstrator {} --help`: missing {missing:?}, not in --help {extra:?}",
            path.join(" ")
        );
    }
    // No page for a command that does not exist (a stale page would be installed).
    let pages: BTreeSet<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".1"))
        .collect();
    assert_eq!(pages.len(), paths.len(), "pages: {pages:?}");
    // The top page names what the CLI cannot: where the agent keeps things.
    let top = unroff(&std::fs::read_to_string(dir.0.join("egresstrator.1")).unwrap());
    for must in [
        ".SH FILES",
        "/etc/default/egresstrator",
        "/var/lib/egresstrator",
        "/run/egresstrator/hook.sock",
        "egresstrator-runc(8)",
    ] {
        assert!(top.contains(must), "egresstrator.1 lacks {must}");
    }
}

#[test]
fn generated_files_never_hold_environment_values() {
    // A token in the environment of whoever runs `make install` must not land in a page.
    let dir = TempDir::new("secret");
    run(Command::new(GEN)
        .arg(&dir.0)
        .env("CONSUL_HTTP_TOKEN", "egt-secret-token-value")
        .env("CONSUL_HTTP_ADDR", "egt-secret-addr:1"));
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("egt-secret"),
            "{} holds a value from the environment",
            path.display()
        );
    }
}

#[test]
fn an_option_is_never_taken_for_the_output_directory() {
    let dir = TempDir::new("options");
    for (arg, code) in [("--help", 0), ("-h", 0), ("--out", 2)] {
        let out = Command::new(GEN)
            .arg(arg)
            .current_dir(&dir.0)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "egresstrator-gen {arg}");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("usage: egresstrator-gen OUTDIR"),
            "{arg}: {said}"
        );
    }
    // Control: the same directory takes a page when it is given as one.
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        0,
        "nothing written"
    );
    generate(&dir.0.join("out"));
    assert!(dir.0.join("out/egresstrator.1").is_file());
}

#[test]
fn man_pages_render_without_warnings() {
    let dir = TempDir::new("render");
    generate(&dir.0);
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.push(repo_root().join("packaging/egresstrator-runc.8"));
    pages.sort();
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let renderer: fn(&Path) -> Command = if have("man") {
        |page| {
            let mut c = Command::new("man");
            c.args(["--warnings", "-l"]).arg(page);
            c
        }
    } else if have("groff") {
        |page| {
            let mut c = Command::new("groff");
            c.args(["-man", "-Tutf8", "-ww"]).arg(page);
            c
        }
    } else {
        panic!("prerequisite missing: man (man-db) to render the pages; run `make test` (scripts/prereqs.sh installs man-db)");
    };
    for page in &pages {
        let mut cmd = renderer(page);
        cmd.env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("MANOPT")
            .env_remove("MANROFFOPT");
        let out = run(&mut cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            warnings.trim().is_empty(),
            "{} renders with warnings:\n{warnings}",
            page.display()
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS") && text.contains("OPTIONS"),
            "{} rendered to:\n{text}",
            page.display()
        );
    }
}

#[test]
fn completions_name_every_subcommand() {
    let dir = TempDir::new("completions");
    generate(&dir.0);
    let bash = std::fs::read_to_string(dir.0.join("egresstrator.bash")).unwrap();
    let zsh = std::fs::read_to_string(dir.0.join("_egresstrator")).unwrap();
    let fish = std::fs::read_to_string(dir.0.join("egresstrator.fish")).unwrap();
    assert!(
        bash.contains("complete -F _egresstrator") && bash.trim_end().ends_with("fi"),
        "bash completion does not register itself"
    );
    assert!(zsh.starts_with("#compdef egresstrator"), "zsh: {zsh:.80}");
    assert!(fish.contains("complete -c egresstrator"), "fish completion");
    let paths = command_paths();
    for path in paths.iter().filter(|p| !p.is_empty()) {
        let sub = path.last().unwrap().as_str();
        for (shell, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
            assert!(
                words(text).contains(sub),
                "{shell} completion never names `{}`",
                path.join(" ")
            );
        }
    }
    // Options too, e.g. the top level's: bash offers them after `egresstrator`.
    for opt in help_long_options(&help(&[])) {
        assert!(
            words(&bash).contains(opt.as_str()),
            "bash completion lacks {opt}"
        );
    }
}

#[test]
fn runc_page_documents_every_shim_option() {
    // The shim's own list of the keys it accepts, from its error for an unknown one; `create`
    // refuses to run with a configuration problem, so no runc and no bundle are involved.
    let dir = TempDir::new("runc");
    let conf = dir.0.join("runc.conf");
    std::fs::write(&conf, "egt-no-such-option = 1\n").unwrap();
    let out = Command::new(SHIM)
        .env("EGRESSTRATOR_RUNC_CONFIG", &conf)
        .args(["create", "--bundle", "/nonexistent-egt-bundle", "egt-test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let list = err
        .split_once("(expected ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("no list of options in: {err}"));
    let keys: Vec<&str> = list
        .split(", ")
        .flat_map(|k| k.split(" or "))
        .map(str::trim)
        .collect();
    assert!(keys.len() >= 7, "{keys:?}");
    let page = unroff(
        &std::fs::read_to_string(repo_root().join("packaging/egresstrator-runc.8")).unwrap(),
    );
    for key in keys {
        assert!(
            page.contains(&format!("\n{key} = ")),
            "egresstrator-runc.8 lacks the runc.conf line `{key} = …`"
        );
        assert!(
            page.contains(&format!("--egresstrator-{key}")),
            "egresstrator-runc.8 lacks the runtime argument --egresstrator-{key}"
        );
    }
    assert!(page.contains("EGRESSTRATOR_RUNC_CONFIG"));
}

#[test]
fn default_file_lists_exactly_the_agents_environment() {
    // The variables the binary reads, from its help (`[env: NAME=…]`, wrapped anywhere).
    let shown = help(&[]).split_whitespace().collect::<Vec<_>>().join(" ");
    let from_help: BTreeSet<String> = shown
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(from_help.len() >= 20, "{from_help:?}");
    let text = std::fs::read_to_string(repo_root().join("packaging/egresstrator.default")).unwrap();
    let assignment = |line: &str| -> Option<(bool, String)> {
        let (commented, body) = match line.strip_prefix('#') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (name, _) = body.split_once('=')?;
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        ok.then(|| (commented, name.to_owned()))
    };
    let mut listed = BTreeSet::new();
    let mut active = Vec::new();
    for line in text.lines() {
        if let Some((commented, name)) = assignment(line) {
            if !commented {
                active.push(line.to_owned());
            }
            if name != "EGRESSTRATOR_ARGS" {
                listed.insert(name);
            }
        }
    }
    // Only the argument list is set, and empty: never a token or anything else by default.
    assert_eq!(active, vec!["EGRESSTRATOR_ARGS=".to_owned()]);
    let missing: Vec<_> = from_help.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&from_help).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "packaging/egresstrator.default drifted from `egresstrator --help`: missing {missing:?}, unknown {unknown:?}"
    );
    // Each variable has its comment line right above it.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if assignment(line).is_some() {
            assert!(
                i > 0 && lines[i - 1].starts_with("# "),
                "no comment above {line}"
            );
        }
    }
}

/// Every file under `root`, relative, with its mode bits.
fn tree(root: &Path) -> BTreeSet<(String, u32)> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string();
                out.insert((rel, meta.permissions().mode() & 0o7777));
            }
        }
    }
    out
}

/// `make TARGET VARS…` in the repository, with no Makefile variable from the environment.
fn make(target: &str, vars: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("make");
    cmd.arg("-C").arg(repo_root()).arg("--no-print-directory");
    cmd.arg(target);
    for (k, v) in vars {
        cmd.arg(format!("{k}={}", v.display()));
    }
    for v in MAKE_VARS {
        cmd.env_remove(v);
    }
    run(&mut cmd)
}

/// The artifacts `install-build` would leave: the binaries cargo built for this test, and
/// the pages and completions generated from them.
fn built_and_generated(dir: &Path) -> (PathBuf, PathBuf) {
    let built = dir.join("built");
    let gen = dir.join("gen");
    std::fs::create_dir_all(&built).unwrap();
    for bin in [EGRESSTRATOR, SHIM] {
        let name = Path::new(bin).file_name().unwrap();
        std::fs::copy(bin, built.join(name)).unwrap();
    }
    generate(&gen);
    (built, gen)
}

#[test]
fn install_files_and_uninstall_round_trip() {
    let dir = TempDir::new("make");
    let (built, gen) = built_and_generated(&dir.0);
    let man1: Vec<String> = std::fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".1"))
        .collect();

    // (PREFIX, where zsh looks for it there, where the unit goes)
    let layouts = [
        (
            Some("/usr"),
            "usr/share/zsh/vendor-completions",
            "usr/lib/systemd/system",
        ),
        // The default PREFIX, /usr/local: Debian's zsh reads site-functions there.
        (
            None,
            "usr/local/share/zsh/site-functions",
            "usr/local/lib/systemd/system",
        ),
    ];
    for (i, (prefix, zsh_dir, unit_dir)) in layouts.into_iter().enumerate() {
        let dest = dir.0.join(format!("dest{i}"));
        let p = prefix.unwrap_or("/usr/local").trim_start_matches('/');
        let mut vars = vec![
            ("DESTDIR", dest.as_path()),
            ("BUILT", built.as_path()),
            ("GEN", gen.as_path()),
        ];
        if let Some(prefix) = prefix {
            vars.push(("PREFIX", Path::new(prefix)));
        }
        make("install-files", &vars);

        let mut expected: BTreeSet<(String, u32)> = [
            (format!("{p}/bin/egresstrator"), 0o755),
            (format!("{p}/bin/egresstrator-runc"), 0o755),
            (format!("{unit_dir}/egresstrator.service"), 0o644),
            ("etc/default/egresstrator".to_owned(), 0o644),
            (format!("{p}/share/man/man8/egresstrator-runc.8"), 0o644),
            (
                format!("{p}/share/bash-completion/completions/egresstrator"),
                0o644,
            ),
            (format!("{zsh_dir}/_egresstrator"), 0o644),
            (
                format!("{p}/share/fish/vendor_completions.d/egresstrator.fish"),
                0o644,
            ),
        ]
        .into_iter()
        .collect();
        for page in &man1 {
            expected.insert((format!("{p}/share/man/man1/{page}"), 0o644));
        }
        assert_eq!(
            tree(&dest),
            expected,
            "install-files with PREFIX={prefix:?}"
        );

        // The installed binary is the one built, and the unit starts it from there.
        let version = run(Command::new(dest.join(p).join("bin/egresstrator")).arg("--version"));
        assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
        let unit =
            std::fs::read_to_string(dest.join(unit_dir).join("egresstrator.service")).unwrap();
        let exec: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(
            exec,
            vec![format!(
                "ExecStart=/{p}/bin/egresstrator run $EGRESSTRATOR_ARGS"
            )]
        );
        let default_file = dest.join("etc/default/egresstrator");
        assert_eq!(
            std::fs::read(&default_file).unwrap(),
            std::fs::read(repo_root().join("packaging/egresstrator.default")).unwrap()
        );

        // An operator's /etc/default/egresstrator survives a second install...
        std::fs::write(&default_file, "EGRESSTRATOR_ARGS=--mode protect\n").unwrap();
        make("install-files", &vars);
        assert_eq!(
            std::fs::read_to_string(&default_file).unwrap(),
            "EGRESSTRATOR_ARGS=--mode protect\n"
        );

        // ...and uninstall, which removes everything else install put there.
        let vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| *k != "BUILT" && *k != "GEN")
            .collect();
        let out = make("uninstall", &vars);
        assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
        assert_eq!(
            tree(&dest),
            [("etc/default/egresstrator".to_owned(), 0o644)]
                .into_iter()
                .collect(),
            "uninstall with PREFIX={prefix:?}"
        );
    }
}

#[test]
fn installed_unit_verifies_and_stays_hardened() {
    let unit_src =
        std::fs::read_to_string(repo_root().join("packaging/egresstrator.service")).unwrap();
    // What the agent needs, and what it must not be given: checked on the text, always.
    for must in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=always",
        "EnvironmentFile=-/etc/default/egresstrator",
        "ExecStart=/usr/bin/egresstrator run $EGRESSTRATOR_ARGS",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=egresstrator",
        "RuntimeDirectory=egresstrator",
        "RestrictNamespaces=net",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "MemoryMax=256M",
    ] {
        assert!(
            unit_src.lines().any(|l| l == must),
            "egresstrator.service lacks `{must}`"
        );
    }
    let caps = unit_src
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap();
    let caps: BTreeSet<&str> = caps.split_whitespace().collect();
    let wanted: BTreeSet<&str> = [
        "CAP_SYS_ADMIN",
        "CAP_NET_ADMIN",
        // The guard's self-test opens AF_PACKET sockets.
        "CAP_NET_RAW",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
    ]
    .into_iter()
    .collect();
    assert_eq!(caps, wanted);
    for never in [
        // The guard's self-test writes /proc/sys/net in its own namespace.
        "ProtectKernelTunables=",
        "PrivateNetwork=",
        "PrivateUsers=",
        "ProcSubset=",
        "ProtectProc=",
    ] {
        assert!(
            !unit_src.lines().any(|l| l.starts_with(never)),
            "egresstrator.service must not set {never}"
        );
    }

    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "prerequisite missing: systemd-analyze to verify the unit; run `make test` (scripts/prereqs.sh installs systemd)"
    );
    // verify checks that ExecStart's binary and the Documentation= man pages exist: install
    // for real (no DESTDIR) into a PREFIX of our own and verify that unit.
    let dir = TempDir::new("unit");
    let (built, gen) = built_and_generated(&dir.0);
    let prefix = dir.0.join("prefix");
    let etc = dir.0.join("etc");
    make(
        "install-files",
        &[
            ("PREFIX", prefix.as_path()),
            ("SYSCONFDIR", etc.as_path()),
            ("BUILT", built.as_path()),
            ("GEN", gen.as_path()),
        ],
    );
    let unit = prefix.join("lib/systemd/system/egresstrator.service");
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", prefix.join("share/man")));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    // The exposure score (systemd 252: 3.2, "OK") must not grow: 32 is 3.2 on its 0..100
    // threshold scale.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=32"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the unit's exposure grew past 3.2:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
