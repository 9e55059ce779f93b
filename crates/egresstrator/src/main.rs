//! egresstrator: per-container egress firewalls for Docker, from policy kept in Consul.
//!
//! This binary only orchestrates: it parses arguments, builds the Docker and Consul clients,
//! and runs the agent or a one-shot command. The policy logic lives in `egresstrator-core`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use egresstrator_core::Mode;

use egresstrator::backend::Applier;
use egresstrator::cli::{self, Command, GlobalArgs};
use egresstrator::commands;
use egresstrator::consul::{Consul, ConsulConfig};
use egresstrator::docker::DockerClient;
use egresstrator::enforce::{self, PolicySettings};
use egresstrator::template::{TemplateConfig, TemplateFormat};
use egresstrator::{agent, status};

fn main() -> ExitCode {
    // Every apply runs on its own short-lived thread (namespaces are per thread); without a
    // cap glibc gives many of them their own malloc arena, and RSS grows with the count. One
    // arena: a KV storm's peak RSS was 32.5/33.1 MiB with two and 29.3/29.2 with one, run
    // back to back (`egresstrator-bench --only kv --only rss --kv-by-containers 100`,
    // 2026-12-02), the storm's time the same.
    // SAFETY: mallopt only tunes the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = cli::parse();
    if let Err(e) = init_logging(&cli.global.log_level, cli.global.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 1 means a negative answer (deny, fail closed, invalid ACL); 2 means the command
            // could not do its work.
            ExitCode::from(2)
        }
    }
}

/// Sets up logging from `--log-level`/`$EGRESSTRATOR_LOG`. A plain level applies to
/// egresstrator's own modules; the libraries below stay at `info` (at `debug`, the Docker
/// client logs whole answers, labels and all). Anything else is a tracing filter, taken as
/// written; one that does not parse is an error, not a silent `info`.
fn init_logging(filter: &str, format: cli::LogFormat) -> Result<()> {
    let spec = match filter.trim().to_ascii_lowercase().as_str() {
        level @ ("error" | "warn" | "info") => level.to_owned(),
        level @ ("debug" | "trace") => format!(
            "info,egresstrator={level},egresstrator_core={level},egresstrator_template={level}"
        ),
        // A lone word is a level: tracing would take a typo ("inf0") for a module name and
        // log nothing at all.
        word if !word.contains(['=', ',', '[', ':']) => {
            bail!("invalid --log-level/$EGRESSTRATOR_LOG {filter:?}: expected error, warn, info, debug, trace, or a tracing filter such as info,egresstrator::agent=debug")
        }
        _ => filter.to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&spec)
        .with_context(|| format!("invalid --log-level/$EGRESSTRATOR_LOG {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line: time, level, target, and the event's fields at the top.
        cli::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn settings(g: &GlobalArgs, docker: &DockerClient, consul: &Consul) -> Result<PolicySettings> {
    let backend = g.backend.into();
    let template = match &g.template {
        Some(path) => {
            let format = match g.template_format {
                cli::TemplateFormatArg::Iptables => TemplateFormat::Iptables,
                cli::TemplateFormatArg::Nft => TemplateFormat::Nft,
            };
            Some(std::sync::Arc::new(TemplateConfig::load(path, format)?))
        }
        None => None,
    };
    Ok(PolicySettings {
        template,
        kv_path: consul.kv_path().to_owned(),
        mode: Mode::from(g.mode),
        require_manifest: Mode::from(g.mode) == Mode::Protect && !g.protect_without_manifest,
        audit: g.audit,
        dns_filter: g.dns_filter,
        dns_allow: enforce::dns_allow_or_default(g.dns_allow.clone()),
        applier: match &g.image {
            Some(image) => Applier::Helper {
                docker: docker.clone(),
                image: image.clone(),
                backend,
            },
            None => Applier::Local(backend),
        },
    })
}

fn consul(g: &GlobalArgs) -> Result<Consul> {
    let token = match (&g.consul_token, &g.consul_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the consul token file {}", path.display()))?;
            let t = text.trim();
            if t.is_empty() {
                bail!("the consul token file {} is empty", path.display());
            }
            Some(t.parse::<cli::Secret>()?)
        }
        (None, None) => None,
    };
    Ok(Consul::new(&ConsulConfig {
        addr: g.consul.clone(),
        token,
        tls: egresstrator::consul::TlsConfig {
            enabled: g.ssl,
            ca_cert: g.ssl_ca_cert.clone(),
            client_cert: g.ssl_client_cert.clone(),
            client_key: g.ssl_client_key.clone(),
        },
        kv_path: g.kv_path.clone(),
        passing_only: g.service_health == cli::ServiceHealth::Passing,
    })?)
}

async fn dispatch(cli: cli::Cli) -> Result<ExitCode> {
    let g = &cli.global;
    if let Some(t) = &g.consul_token {
        // Given on the command line (not through the variable clap also reads): every local
        // user can read it in /proc/<pid>/cmdline.
        if std::env::var("CONSUL_HTTP_TOKEN").ok().as_deref() != Some(t.expose()) {
            tracing::warn!(
                "--consul-token on the command line is readable by every local user (/proc/{}/cmdline); pass it in $CONSUL_HTTP_TOKEN or --consul-token-file instead",
                std::process::id()
            );
        }
    }
    if let Some(Command::Monitor(args)) = &cli.command {
        return egresstrator::client::monitor(&g.listen, &args.containers, args.json, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    }
    if let Some(Command::Runtime(args)) = &cli.command {
        return runtime_command(args, &g.hook_socket);
    }
    if let Some(Command::Status(args)) = &cli.command {
        return egresstrator::client::status(&g.listen, args.json).await;
    }
    if let Some(Command::Doctor(args)) = &cli.command {
        let mut tls_files: Vec<std::path::PathBuf> =
            [&g.ssl_ca_cert, &g.ssl_client_cert, &g.ssl_client_key]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
        if let Some(dir) = docker_tls() {
            tls_files.extend(["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f)));
        }
        let checks = egresstrator::doctor::run(egresstrator::doctor::Setup {
            consul: consul(g).map_err(|e| format!("{e:#}")),
            docker_host: g.docker_host.as_deref(),
            docker_tls: docker_tls(),
            tls_files,
            state_dir: &g.state_dir,
            hook_socket: &g.hook_socket,
            daemon_json: &args.daemon_json,
        })
        .await;
        return Ok(if egresstrator::doctor::report(&checks, args.json) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let consul = consul(g)?;
    if let Some(Command::Validate(args)) = cli.command {
        return commands::validate(&consul, args).await;
    }
    let docker = DockerClient::connect_with(g.docker_host.as_deref(), docker_tls().as_deref())
        .await
        .context("cannot reach docker")?;
    if let Some(Command::HelperImage(cli::HelperImageArgs {
        action: cli::HelperImageAction::Build { tag },
    })) = &cli.command
    {
        let built = egresstrator::helper::build_image(&docker, tag).await?;
        println!("{built}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Command::Image(cli::ImageArgs {
        action: cli::ImageAction::Build { tag },
    })) = &cli.command
    {
        let built = egresstrator::helper::build_agent_image(&docker, tag).await?;
        println!("{built}");
        return Ok(ExitCode::SUCCESS);
    }
    let settings = settings(g, &docker, &consul)?;
    match cli.command {
        None | Some(Command::Run) => {
            tracing::info!(
                consul = %g.consul,
                kv_path = %consul.kv_path(),
                mode = %Mode::from(g.mode),
                "egresstrator agent starting"
            );
            // Held until the agent exits: a second agent on this daemon or state dir refuses
            // to start instead of fighting this one over every namespace.
            let instance = egresstrator::instance::acquire(
                &g.state_dir,
                std::path::Path::new(egresstrator::instance::RUN_DIR),
                g.docker_host.as_deref(),
            )?;
            for w in &instance.warnings {
                tracing::warn!("{w}");
            }
            let board = status::StatusBoard::new(Mode::from(g.mode).to_string());
            if g.listen != "off" {
                match tokio::net::TcpListener::bind(&g.listen).await {
                    Ok(l) => {
                        let addr = l.local_addr().map_or(g.listen.clone(), |a| a.to_string());
                        tracing::info!("status on http://{addr}/status and /metrics");
                        tokio::spawn(status::serve(l, board.clone()));
                    }
                    Err(e) => tracing::warn!(
                        "status endpoint disabled: cannot listen on {}: {e}",
                        g.listen
                    ),
                }
            }
            let config = agent::AgentConfig {
                settings,
                state_dir: g.state_dir.clone(),
                verify_interval: g.verify_interval,
                max_policy_age: g.max_policy_age,
                fqdn: agent::FqdnSettings {
                    min_ttl: g.fqdn_min_ttl,
                    max_ttl: g.fqdn_max_ttl.max(g.fqdn_min_ttl),
                },
            };
            let mut agent = agent::Agent::new(docker, consul, config, board);
            if g.hook_socket != "off" {
                match egresstrator::hook::bind(std::path::Path::new(&g.hook_socket)) {
                    Ok(listener) => {
                        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                        tokio::spawn(egresstrator::hook::serve(listener, tx));
                        tracing::info!("runtime hooks answered on {}", g.hook_socket);
                        agent = agent.with_hooks(rx);
                    }
                    Err(e) => tracing::warn!("runtime hooks disabled: {e}"),
                }
            }
            agent.run(shutdown_signal()).await;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Set(args)) => {
            commands::set(&docker, &consul, &settings, &g.state_dir, args).await
        }
        Some(Command::Clear(args)) => {
            commands::clear(&docker, &settings.applier, &g.state_dir, args).await
        }
        Some(Command::Validate(args)) => commands::validate(&consul, args).await,
        Some(Command::Explain(args)) => {
            commands::explain(&docker, &consul, &settings, &g.state_dir, args).await
        }
        Some(Command::Check(args)) => {
            commands::check(&docker, &consul, &settings, &g.state_dir, &g.listen, args).await
        }
        Some(
            Command::HelperImage(_)
            | Command::Monitor(_)
            | Command::Status(_)
            | Command::Runtime(_)
            | Command::Doctor(_)
            | Command::Image(_),
        ) => Ok(ExitCode::SUCCESS),
    }
}

/// Docker's own convention: `$DOCKER_TLS_VERIFY` set to anything non-empty turns TLS on,
/// with the certificates in `$DOCKER_CERT_PATH` (default `~/.docker`).
fn docker_tls() -> Option<std::path::PathBuf> {
    let on = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty());
    if !on {
        return None;
    }
    Some(
        match std::env::var_os("DOCKER_CERT_PATH").filter(|v| !v.is_empty()) {
            Some(p) => p.into(),
            None => {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".docker")
            }
        },
    )
}

/// `runtime install|uninstall`: says what changed and what to do next.
fn runtime_command(args: &cli::RuntimeArgs, hook_socket: &str) -> Result<ExitCode> {
    use egresstrator::runtime::{self, Change};
    let said = |c: &Change, what: &str| match c {
        Change::Unchanged => println!(
            "{}: already {what}; nothing changed",
            args.daemon_json.display()
        ),
        Change::Written { backup } => {
            println!("{}: {what}", args.daemon_json.display());
            if let Some(b) = backup {
                println!("the previous file is kept as {}", b.display());
            }
        }
    };
    let changed = match &args.action {
        cli::RuntimeAction::Install { default, shim } => {
            let shim = match shim {
                Some(s) => s.clone(),
                None => std::env::current_exe()
                    .context("cannot find this binary's directory; pass --shim")?
                    .with_file_name("egresstrator-runc"),
            };
            let c = runtime::install(&args.daemon_json, &shim, *default)?;
            said(
                &c,
                &format!(
                    "runtime \"{}\" registered ({}){}",
                    runtime::RUNTIME_NAME,
                    shim.display(),
                    if *default {
                        ", the default runtime"
                    } else {
                        ""
                    }
                ),
            );
            if runtime::write_runc_conf(&args.runc_conf, hook_socket)? {
                println!(
                    "{}: written (socket = {hook_socket})",
                    args.runc_conf.display()
                );
            }
            c != Change::Unchanged
        }
        cli::RuntimeAction::Uninstall => {
            let c = runtime::uninstall(&args.daemon_json)?;
            said(
                &c,
                &format!("runtime \"{}\" removed", runtime::RUNTIME_NAME),
            );
            if runtime::remove_runc_conf(&args.runc_conf, hook_socket)? {
                println!("{}: removed", args.runc_conf.display());
            }
            c != Change::Unchanged
        }
    };
    if changed {
        println!("dockerd reads daemon.json on SIGHUP: systemctl reload docker (or kill -HUP $(pidof dockerd))");
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
}
