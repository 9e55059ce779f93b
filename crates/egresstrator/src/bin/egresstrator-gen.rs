//! egresstrator-gen: writes egresstrator's man pages and shell completions from the CLI
//! definition itself (`egresstrator::cli::Cli`), so they cannot drift from `--help`.
//!
//! `egresstrator-gen OUTDIR` writes into OUTDIR:
//! - `egresstrator.1`, and one page per subcommand (`egresstrator-set.1`, …,
//!   `egresstrator-helper-image-build.1`), with clap_mangen;
//! - `egresstrator.bash`, `_egresstrator` (zsh) and `egresstrator.fish`, with clap_complete.
//!
//! The output depends only on the CLI definition and the build's version line: a man page
//! names an option's environment variable but never shows its current value, so a token in
//! the environment of whoever runs this cannot end up in a page. `make install` runs it into
//! `target/gen`; the hand-written page of the shim (`egresstrator-runc.8`) lives in
//! `packaging/`. It is a build tool: it is never installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use egresstrator::cli::Cli;

/// The name every page and completion uses for the program.
const BIN: &str = "egresstrator";

/// Extra sections of `egresstrator.1`, in roff: what the CLI definition cannot say.
const FILES_AND_SEE_ALSO: &str = r#".SH FILES
.TP
\fI/etc/default/egresstrator\fR
Environment of the systemd unit: \fBEGRESSTRATOR_ARGS\fR (extra arguments of \fBegresstrator run\fR) and any of the environment variables above.
.TP
\fI/var/lib/egresstrator\fR
The state directory (\fB\-\-state\-dir\fR): the last good policy snapshot and the overrides of \fBset\fR and \fBclear\fR.
.TP
\fI/run/egresstrator/hook.sock\fR
The agent's root\-only hook socket (\fB\-\-hook\-socket\fR), where \fBegresstrator\-runc\fR(8) asks for a container's ruleset before its first instruction.
.TP
\fI/etc/egresstrator/runc.conf\fR
Options of \fBegresstrator\-runc\fR(8).
.SH EXIT STATUS
0 on success, 1 on failure, 2 on a usage error.
.SH SEE ALSO
\fBegresstrator\-runc\fR(8), \fBsystemd.service\fR(5), \fBnft\fR(8), \fBconsul\fR(1)
"#;

fn main() -> ExitCode {
    const USAGE: &str = "usage: egresstrator-gen OUTDIR   (writes man pages and shell completions)";
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // An option is not a directory: `egresstrator-gen --help` once made `./--help/`.
    if out.to_string_lossy().starts_with('-') {
        return match out.to_str() {
            Some("-h" | "--help") => {
                println!("{USAGE}");
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    match generate(Path::new(&out)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egresstrator-gen: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes every page and completion into `out` (created if missing); returns their paths.
fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();

    // `help` is a subcommand clap adds; `egresstrator help X` is `egresstrator-X.1`'s business.
    let mut cmd = Cli::command().bin_name(BIN).disable_help_subcommand(true);
    cmd.build();
    // Subcommands carry no version of their own: their pages' footers name the program's.
    let source = match cmd.get_version() {
        Some(v) => format!("{BIN} {v}"),
        None => BIN.to_owned(),
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub.clone(), &source, out, &mut written)?;
    }
    written.push(top_page(cmd.clone(), out)?);

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, BIN, out).with_context(|| {
            format!("cannot write the {shell} completion into {}", out.display())
        })?;
        written.push(path);
    }
    Ok(written)
}

/// `egresstrator-SUB.1` for `cmd` and, recursively, for its own subcommands.
fn subcommand_pages(
    cmd: clap::Command,
    source: &str,
    out: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub.clone(), source, out, written)?;
    }
    let man = clap_mangen::Man::new(cmd).source(source);
    let path = out.join(man.get_filename());
    man.generate_to(out)
        .with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    Ok(())
}

/// `egresstrator.1`: clap_mangen's sections (its EXTRA, the after-help text, titled NOTES
/// here), then FILES, EXIT STATUS and SEE ALSO.
fn top_page(cmd: clap::Command, out: &Path) -> anyhow::Result<PathBuf> {
    let man = clap_mangen::Man::new(cmd);
    let path = out.join(man.get_filename());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let mut extra = Vec::new();
    man.render_extra_section(&mut extra)?;
    let extra = String::from_utf8_lossy(&extra).replacen(".SH EXTRA\n", ".SH NOTES\n", 1);
    page.write_all(extra.as_bytes())?;
    page.write_all(FILES_AND_SEE_ALSO.as_bytes())?;
    man.render_version_section(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
