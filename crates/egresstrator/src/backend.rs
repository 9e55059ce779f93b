//! Firewall backends: how a ruleset is rendered, loaded into a namespace and removed again.
//!
//! `nft` (the default) loads one `inet egresstrator` table in-process through libnftables,
//! in one transaction, for IPv4 and IPv6. `iptables` loads `iptables-restore --noflush` and
//! `ip6tables-restore --noflush` input into egresstrator's own chains, each atomically, so
//! other tools' rules survive. Both only ever touch egresstrator's own table or chains.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egresstrator_core::merge::Family;
use egresstrator_core::render::{self, iptables, nft};
use egresstrator_core::Ruleset;

use crate::netns::{self, NetnsError};

/// Which firewall a ruleset is loaded into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Nft,
    Iptables,
}

/// A ruleset rendered for a backend, with the hash that says whether it changed.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub backend: Backend,
    pub hash: String,
    /// The text an operator would read: the nft script, or both iptables-restore inputs.
    pub text: String,
    ruleset: Ruleset,
}

pub fn render(backend: Backend, ruleset: &Ruleset) -> Rendered {
    let text = match backend {
        Backend::Nft => nft::render(ruleset),
        Backend::Iptables => {
            let s = iptables::render(ruleset, iptables::Jump::Missing);
            format!("{}{}", s.v4, s.v6)
        }
    };
    Rendered {
        backend,
        hash: render::hash(&text),
        text,
        ruleset: ruleset.clone(),
    }
}

/// Loads a rendered ruleset into the namespace at `path`; returns the time it took.
pub async fn apply(path: PathBuf, rendered: &Rendered) -> Result<Duration, NetnsError> {
    match rendered.backend {
        Backend::Nft => netns::apply_nft(path, rendered.text.clone()).await,
        Backend::Iptables => {
            let started = Instant::now();
            for family in [Family::V4, Family::V6] {
                let jump = jump_state(&path, family).await?;
                let script = iptables::render_family(&rendered.ruleset, family, jump);
                run_ok(
                    &path,
                    iptables::restore_command(family),
                    script.into_bytes(),
                )
                .await?;
            }
            Ok(started.elapsed())
        }
    }
}

/// Removes egresstrator's table or chains from the namespace, and nothing else.
pub async fn clear(backend: Backend, path: PathBuf) -> Result<Duration, NetnsError> {
    match backend {
        Backend::Nft => netns::apply_nft(path, nft::render_clear()).await,
        Backend::Iptables => {
            let started = Instant::now();
            for family in [Family::V4, Family::V6] {
                let jump = jump_state(&path, family).await?;
                let script = iptables::render_clear(family, jump);
                if run_ok(
                    &path,
                    iptables::restore_command(family),
                    script.into_bytes(),
                )
                .await
                .is_err()
                {
                    // A duplicated jump makes the atomic script refuse; remove step by step.
                    let steps = iptables::clear_commands(family);
                    for _ in 0..64 {
                        if run_ok(&path, steps.delete_jump.clone(), Vec::new())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    for argv in steps.remove_chains {
                        let _ = run_ok(&path, argv, Vec::new()).await;
                    }
                }
            }
            Ok(started.elapsed())
        }
    }
}

async fn jump_state(path: &std::path::Path, family: Family) -> Result<iptables::Jump, NetnsError> {
    let argv = iptables::check_jump_command(family);
    let (program, args) = split(argv);
    let out = netns::run_program(path.to_path_buf(), &program, args, Vec::new()).await?;
    Ok(if out.status.success() {
        iptables::Jump::Present
    } else {
        iptables::Jump::Missing
    })
}

async fn run_ok(
    path: &std::path::Path,
    argv: Vec<String>,
    stdin: Vec<u8>,
) -> Result<(), NetnsError> {
    let (program, args) = split(argv);
    let out = netns::run_program(path.to_path_buf(), &program, args, stdin).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::ProgramFailed {
            path: path.to_path_buf(),
            program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn split(mut argv: Vec<String>) -> (String, Vec<String>) {
    if argv.is_empty() {
        return (String::new(), argv);
    }
    let program = argv.remove(0);
    (program, argv)
}
