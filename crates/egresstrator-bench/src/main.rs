//! egresstrator-bench: measures how fast egresstrator puts a container's egress policy in
//! force, against a real dockerd, a real Consul and the real agent, side by side with the
//! helper-container mechanism of egresstrator 0.2 on the same machine.
//!
//! It starts its own agent (own kv-path `egt-bench/<run>/`, own status port), makes only
//! `egt-bench-<run>-*` containers and namespaces, sends no traffic that leaves a namespace
//! (the deny measure's packets are refused inside its container's namespace), and removes
//! all of it at the end, also on error or Ctrl-C. Timing is reported, never judged by the exit
//! code: the exit code says only whether the benchmark could run.
//!
//! The dfw measure (`dfw.rs`) runs dfw (pitkley/dfw) as a peer when it is installed: dfw
//! writes its own tables into the host's nftables (the benchmark itself only reads the host's
//! ruleset), for the benchmark's own internal docker network only; they are deleted, and the
//! network removed, at the end of the measure and by the cleanup.

mod agent;
mod apply;
mod checker;
mod consul;
mod deny;
mod dfw;
mod docker;
mod fqdn;
mod helper;
mod hook;
mod logsplit;
mod report;
mod run;
mod soak;
mod stats;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

/// What can be measured; `--only` picks a subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Measure {
    /// apply_ms: nft (and iptables) apply time into throwaway namespaces
    Apply,
    /// event_to_enforced_ms, exposure_window_ms (from State.StartedAt) and their raw samples:
    /// sequential container starts
    Sequential,
    /// burst_all_enforced_ms, burst_worst_window_ms, burst_worst_exposure_ms: concurrent starts
    Burst,
    /// kv_change_to_reenforced_ms and kv_by_containers: one Consul write, every container
    /// re-enforced, at several numbers of running containers
    Kv,
    /// agent_rss_mib
    Rss,
    /// helper_container_ms (and helper_container_samples_ms): egresstrator 0.2's mechanism
    /// without its sleeps
    Helper,
    /// hook_added_start_latency_ms: what the egresstrator-runc runtime adds to a start
    Hook,
    /// deny_to_monitor_ms, deny_flood_agent_cpu_percent: refused SYN → its `/monitor`
    /// record, and the agent's CPU under a flood of refused flows
    Deny,
    /// dns_answer_added_latency_ms, fqdn_first_connect_success: name destinations' held
    /// DNS answers (its own agent, after the others)
    Fqdn,
    /// dfw_ms, dfw_cpu, dfw_rss_mib, ratio_dfw_over_agent_p50: dfw (pitkley/dfw) as a peer on
    /// the same dockerd, with --burst-timeout 500 (its default) and 0; not measured (with the
    /// reason in the notes) when no dfw is found
    Dfw,
}

#[derive(Debug, Parser)]
#[command(
    name = "egresstrator-bench",
    version,
    about = "Benchmark egresstrator against a real dockerd, Consul and agent, side by side with \
             egresstrator 0.2's helper-container mechanism",
    after_help = "Needs root, a running dockerd, a Consul agent and the local image \
                  egresstrator-test:latest (`make image`). Run with `make bench` or \
                  `make bench-quick`. The dfw measure also needs dfw (pitkley/dfw) and nft; \
                  without dfw it is not run and the notes say why."
)]
pub struct Args {
    /// Write the results as one JSON object to stdout (the table then goes to stderr)
    #[arg(long)]
    pub json: bool,

    /// Smaller counts, finishes in about 2 minutes on an idle machine (for CI); the output says
    /// so
    #[arg(long)]
    pub quick: bool,

    /// The agent binary [default: `egresstrator` next to this binary]
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,

    /// Consul HTTP address
    #[arg(
        long,
        short = 'c',
        env = "CONSUL_HTTP_ADDR",
        default_value = "127.0.0.1:8500"
    )]
    pub consul: String,

    /// Image of the benchmark's containers (needs `sleep`)
    #[arg(long, default_value = "egresstrator-test:latest")]
    pub image: String,

    /// Passed to the agent as --backend (e.g. nft or iptables); omitted when unset
    #[arg(long)]
    pub backend: Option<String>,

    /// Log level of the agent (its log is kept in the run's work directory) [default: info,
    /// with --profile: debug for bollard and egresstrator]
    #[arg(long)]
    pub agent_log_level: Option<String>,

    /// Also split each sequential start's time into its steps, from the agent's debug log
    /// (debug logging slows the agent a little: use the plain run for the headline numbers)
    #[arg(long)]
    pub profile: bool,

    /// Start the agent even when containers that are not the benchmark's opt in to
    /// egresstrator: the benchmark's agent fails them closed (their egress is denied until
    /// their own agent re-applies). Without it, the benchmark waits up to 2 minutes for
    /// them to go away, then gives up
    #[arg(long)]
    pub allow_foreign: bool,

    /// Run only these measures
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Measure>,

    /// How often the agent's /status is polled while waiting, in milliseconds
    #[arg(long, default_value_t = 2)]
    pub poll_ms: u64,

    /// Sequential starts for event_to_enforced_ms [default: 200, quick: 30]
    #[arg(long)]
    pub starts: Option<usize>,

    /// Concurrent starts for the burst [default: 100, quick: 20]
    #[arg(long)]
    pub burst: Option<usize>,

    /// Running containers for kv_change_to_reenforced_ms [default: 100, quick: 20]
    #[arg(long)]
    pub kv_containers: Option<usize>,

    /// Running containers for each point of kv_by_containers (KV convergence vs number of
    /// containers) [default: 10,50,<kv-containers>, quick: 5,10,<kv-containers>]
    #[arg(long, value_delimiter = ',')]
    pub kv_by_containers: Vec<usize>,

    /// KV writes for kv_change_to_reenforced_ms and each kv_by_containers point [default: 5,
    /// quick: 2]
    #[arg(long)]
    pub kv_repeats: Option<usize>,

    /// Enforced containers for agent_rss_mib.containers_200 [default: 200, quick: 40]
    #[arg(long)]
    pub rss_containers: Option<usize>,

    /// Helper-container runs [default: 20, quick: 5]
    #[arg(long)]
    pub helper_runs: Option<usize>,
    /// Pairs of starts (shim, then plain runc) for the runtime hook [default: 60, quick: 30]
    #[arg(long)]
    pub hook_runs: Option<usize>,

    /// Applies per ruleset size and backend for apply_ms [default: 11, quick: 5]
    #[arg(long)]
    pub apply_reps: Option<usize>,

    /// Refused SYNs timed to their /monitor record for deny_to_monitor_ms [default: 200,
    /// quick: 40]
    #[arg(long)]
    pub deny_samples: Option<usize>,

    /// The dfw binary for the dfw measure [default: `dfw` on PATH, else /root/.cargo/bin/dfw]
    #[arg(long, value_name = "PATH")]
    pub dfw: Option<PathBuf>,

    /// Sequential starts per dfw burst timeout (each kept running until its phase ends)
    /// [default: 50, quick: 10]
    #[arg(long)]
    pub dfw_starts: Option<usize>,

    /// Instead of the measures: the soak (RELIABILITY.md). A churn of containers with an
    /// independent invariant checker reading every namespace with nsenter and nft, then the
    /// fault schedules. Its exit code fails on any violation, on a fault not recovered from
    /// within 60 s, and on leaked fds. It restarts Consul and dockerd: run it alone
    #[arg(long)]
    pub soak: bool,

    /// Containers the soak's churn starts [default: 1000, quick: 100]
    #[arg(long, requires = "soak")]
    pub soak_containers: Option<usize>,

    /// Containers running at once in the churn [default: 50]
    #[arg(long, requires = "soak", default_value_t = 50)]
    pub soak_concurrent: usize,

    /// Size of the burst the agent is killed in [default: 100, quick: 30]
    #[arg(long, requires = "soak")]
    pub soak_burst: Option<usize>,

    /// Only the churn, no fault schedules
    #[arg(long, requires = "soak")]
    pub soak_no_faults: bool,

    /// Seed of the soak's random choices [default: from the clock; the report prints it]
    #[arg(long, requires = "soak")]
    pub soak_seed: Option<u64>,
}

impl Args {
    pub fn wants(&self, m: Measure) -> bool {
        self.only.is_empty() || self.only.contains(&m)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match real_main(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresstrator-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main(args: Args) -> Result<()> {
    let agent_path = match &args.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find the path of this binary")?
            .parent()
            .context("this binary has no parent directory")?
            .join("egresstrator"),
    };
    let mut ctx = run::Context::new(&args, agent_path).await?;
    if args.soak {
        return soak_main(&args, &mut ctx).await;
    }
    let outcome = tokio::select! {
        r = run::run(&mut ctx) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    ctx.cleanup().await;
    let report = outcome?;
    let table = report::table(&report);
    if args.json {
        eprintln!("{table}");
        let json = serde_json::to_string_pretty(&report).context("cannot serialize the report")?;
        println!("{json}");
    } else {
        println!("{table}");
    }
    Ok(())
}

async fn soak_main(args: &Args, ctx: &mut run::Context) -> Result<()> {
    let soak_args = soak::SoakArgs {
        containers: args
            .soak_containers
            .unwrap_or(if args.quick { 100 } else { 1000 }),
        concurrent: args.soak_concurrent,
        burst: args.soak_burst.unwrap_or(if args.quick { 30 } else { 100 }),
        faults: !args.soak_no_faults,
        seed: args
            .soak_seed
            .unwrap_or_else(|| stats::now_unix_nano() as u64),
    };
    let outcome = tokio::select! {
        r = soak::run(ctx, soak_args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    ctx.cleanup().await;
    let report = outcome?;
    if args.json {
        eprintln!("{}", report.table());
        let json = serde_json::to_string_pretty(&report).context("cannot serialize the report")?;
        println!("{json}");
    } else {
        println!("{}", report.table());
    }
    let failed = report.failed();
    if !failed.is_empty() {
        anyhow::bail!("the soak failed: {}", failed.join("; "));
    }
    Ok(())
}
