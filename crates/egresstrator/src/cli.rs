//! Command-line interface, compatible with egresstrator 0.2.
//!
//! Parsing here only validates ("low" arguments): no syscalls, no connections. `main` turns
//! the result into real clients. 0.2's flags, short flags, environment variables and defaults
//! are kept, and so are the Go-style spellings (`-consul=host:8500`, `-ssl`) that its packaged
//! service file used.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use egresstrator_core::Mode;

const ABOUT: &str = "Set egress rules in network namespaces.
Enable egresstrator with EGRESSTRATOR_ENABLE=1 in your container.
Specify egress rules with EGRESSTRATOR_ACL=myservice,otherservice";

const AFTER_HELP: &str = "\
Containers opt in with the environment variable EGRESSTRATOR_ENABLE=1 and name the ACLs they
may use with EGRESSTRATOR_ACL=web,payments. Each ACL is the Consul key <kv-path><name>, holding
one destination per line, e.g. 10.50.128.0/24:tcp/20000-32000 or 0.0.0.0/0:tcp/8080.

Without a command, egresstrator runs the agent: it enforces every running enabled container,
then every enabled container that starts. Rules live in the nftables table
'inet egresstrator' inside each container's own network namespace; the host's namespace is
never touched. A container whose policy cannot be built is denied all egress (fail closed).

Options may also be written Go-style, as egresstrator 0.2's service file did:
  -consul=127.0.0.1:8500 -kv-path=egress/acl/";

pub use crate::consul::Secret;

/// Firewall backend, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Nft,
    Iptables,
}

impl From<BackendArg> for crate::backend::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Nft => crate::backend::Backend::Nft,
            BackendArg::Iptables => crate::backend::Backend::Iptables,
        }
    }
}

/// Output format of a template, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TemplateFormatArg {
    Iptables,
    Nft,
}

/// Which service instances count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServiceHealth {
    Any,
    Passing,
}

/// Policy mode, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Deny egress except the named ACLs' destinations, DNS to the container's resolvers,
    /// loopback and replies.
    Allowlist,
    /// egresstrator 0.2 semantics: allow egress except the destinations of ACLs the container
    /// does not name; DNS only to --dns-allow; NTP and non-SYN new TCP rejected.
    Protect,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Allowlist => Mode::Allowlist,
            ModeArg::Protect => Mode::Protect,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "egresstrator",
    version = env!("EGRESSTRATOR_LONG_VERSION"),
    about = ABOUT,
    after_help = AFTER_HELP,
    disable_version_flag = true,
    args_conflicts_with_subcommands = false,
    args_override_self = true
)]
pub struct Cli {
    /// Print the version
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    version: Option<bool>,

    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Consul address
    #[arg(
        short = 'c',
        long = "consul",
        env = "CONSUL_HTTP_ADDR",
        default_value = "127.0.0.1:8500",
        global = true
    )]
    pub consul: String,

    /// Consul token
    #[arg(
        short = 't',
        long = "consul-token",
        env = "CONSUL_HTTP_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub consul_token: Option<Secret>,

    /// Consul K/V path for egress ACL's
    #[arg(
        short = 'k',
        long = "kv-path",
        env = "CONSUL_PATH",
        default_value = "egress/acl/",
        global = true
    )]
    pub kv_path: String,

    /// Custom consul template: a consul-template file rendered per container (with
    /// EGRESSTRATOR_ACL and CONSUL_PATH in its environment) instead of the built-in policy
    #[arg(short = 'f', long = "template", env = "CONSUL_TEMPLATE", global = true)]
    pub template: Option<PathBuf>,

    /// Apply rules through a short-lived helper container from this image (for daemons whose
    /// namespaces the agent cannot enter); build one with `egresstrator helper-image build`
    #[arg(short = 'i', long = "image", global = true)]
    pub image: Option<String>,

    /// Use SSL when accessing Consul (certificates are always verified)
    #[arg(long = "ssl", env = "CONSUL_HTTP_SSL", action = ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), global = true)]
    pub ssl: bool,

    /// Path to a custom SSL CA cert to use when accessing Consul
    #[arg(long = "ssl-ca-cert", env = "CONSUL_CACERT", global = true)]
    pub ssl_ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) for Consul's TLS
    #[arg(long = "ssl-client-cert", env = "CONSUL_CLIENT_CERT", global = true)]
    pub ssl_client_cert: Option<PathBuf>,

    /// Client key (PEM) for Consul's TLS
    #[arg(long = "ssl-client-key", env = "CONSUL_CLIENT_KEY", global = true)]
    pub ssl_client_key: Option<PathBuf>,

    /// File holding the Consul token (used when no token is given directly)
    #[arg(
        long = "consul-token-file",
        env = "CONSUL_HTTP_TOKEN_FILE",
        global = true
    )]
    pub consul_token_file: Option<PathBuf>,

    /// What a --template renders: iptables-restore input (as 0.2) or an nft script
    #[arg(
        long = "template-format",
        env = "EGRESSTRATOR_TEMPLATE_FORMAT",
        value_enum,
        default_value = "iptables",
        global = true
    )]
    pub template_format: TemplateFormatArg,

    /// Policy mode
    #[arg(
        long = "mode",
        env = "EGRESSTRATOR_MODE",
        value_enum,
        default_value = "allowlist",
        global = true
    )]
    pub mode: ModeArg,

    /// Firewall backend: an nftables table (IPv4 and IPv6, in-process), or iptables-restore
    /// into egresstrator's own chains
    #[arg(
        long = "backend",
        env = "EGRESSTRATOR_BACKEND",
        value_enum,
        default_value = "nft",
        global = true
    )]
    pub backend: BackendArg,

    /// Protect mode without the manifest (the kv-path's own key listing every ACL key):
    /// trust that Consul's answer holds every key. A token that cannot read a key, or any
    /// key, then leaves what that key protects open
    #[arg(
        long = "protect-without-manifest",
        env = "EGRESSTRATOR_PROTECT_WITHOUT_MANIFEST",
        action = ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub protect_without_manifest: bool,

    /// Audit mode for every container: its real ruleset, but where it would refuse a
    /// connection it lets it through and reports it (log, `monitor`, metrics) as `audit`.
    /// Deny-all (fail closed) is never audited. Per container: EGRESSTRATOR_AUDIT=1 or the
    /// label egresstrator.audit=true
    #[arg(
        long = "audit",
        env = "EGRESSTRATOR_AUDIT_ALL",
        action = ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub audit: bool,

    /// Refuse every enabled container's DNS queries for names that none of its ACL lines
    /// allows (a name line, or NAME:dns): answered REFUSED, never forwarded, shown in
    /// `monitor`. Per container: the label egresstrator.dns-filter=true (or
    /// EGRESSTRATOR_DNS_FILTER=1 for containers enabled by environment). Needs the nft backend
    #[arg(
        long = "dns-filter",
        env = "EGRESSTRATOR_DNS_FILTER_ALL",
        action = ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub dns_filter: bool,

    /// Resolvers DNS may reach in protect mode [default: the RFC 1918 ranges]
    #[arg(
        long = "dns-allow",
        env = "EGRESSTRATOR_DNS_ALLOW",
        value_delimiter = ',',
        value_name = "CIDR,...",
        global = true
    )]
    pub dns_allow: Vec<ipnet::IpNet>,

    /// Docker daemon address (unix:///var/run/docker.sock when unset). One agent per daemon:
    /// an agent started while another uses the same address refuses to start (lock in
    /// /run/egresstrator)
    #[arg(long = "docker-host", env = "DOCKER_HOST", global = true)]
    pub docker_host: Option<String>,

    /// Where the agent keeps its last good policy snapshot and the overrides of `set`/`clear`.
    /// One agent per state dir: an agent started while another uses it refuses to start
    /// (agent.lock)
    #[arg(
        long = "state-dir",
        env = "EGRESSTRATOR_STATE_DIR",
        default_value = "/var/lib/egresstrator",
        global = true
    )]
    pub state_dir: PathBuf,

    /// Address of the agent's status and metrics endpoint (GET /status, GET /metrics), or
    /// "off"
    #[arg(
        long = "listen",
        env = "EGRESSTRATOR_LISTEN",
        default_value = "127.0.0.1:9797",
        global = true
    )]
    pub listen: String,

    /// Unix socket (root only) where the agent answers egresstrator-runc's runtime hook, or
    /// "off"
    #[arg(long = "hook-socket", env = "EGRESSTRATOR_HOOK_SOCKET", default_value = crate::hook::DEFAULT_SOCKET, global = true)]
    pub hook_socket: String,

    /// How often the agent checks every enforced namespace for drift (egresstrator's rules
    /// changed or removed, interfaces added) and loads it again when it finds any, e.g. 10s,
    /// 500ms; also checked on every Docker event of its containers
    #[arg(
        long = "verify-interval",
        env = "EGRESSTRATOR_VERIFY_INTERVAL",
        default_value = "10s",
        value_parser = parse_interval,
        global = true
    )]
    pub verify_interval: std::time::Duration,

    /// Name destinations (`api.example.com:tcp/443`): the shortest time an address learned
    /// from a DNS answer stays allowed, whatever the answer's TTL (e.g. 60s, 0s)
    #[arg(
        long = "fqdn-min-ttl",
        env = "EGRESSTRATOR_FQDN_MIN_TTL",
        default_value = "60s",
        value_parser = parse_ttl,
        global = true
    )]
    pub fqdn_min_ttl: std::time::Duration,

    /// Name destinations: the longest time an address learned from a DNS answer stays
    /// allowed before it must be answered again
    #[arg(
        long = "fqdn-max-ttl",
        env = "EGRESSTRATOR_FQDN_MAX_TTL",
        default_value = "1h",
        value_parser = parse_ttl,
        global = true
    )]
    pub fqdn_max_ttl: std::time::Duration,

    /// Fail every container closed once the last good policy is older than this (e.g. 1h):
    /// Consul has not answered for that long. Off by default; it must be longer than a
    /// blocking query's 60 s
    #[arg(
        long = "max-policy-age",
        env = "EGRESSTRATOR_MAX_POLICY_AGE",
        value_parser = parse_max_age,
        global = true
    )]
    pub max_policy_age: Option<std::time::Duration>,

    /// Which service instances a service reference reaches: in any health state (as 0.2), or
    /// only those whose checks pass
    #[arg(
        long = "service-health",
        env = "EGRESSTRATOR_SERVICE_HEALTH",
        value_enum,
        default_value = "any",
        global = true
    )]
    pub service_health: ServiceHealth,

    /// Log filter (error, warn, info, debug, trace, or a tracing filter)
    #[arg(
        long = "log-level",
        env = "EGRESSTRATOR_LOG",
        default_value = "info",
        global = true
    )]
    pub log_level: String,

    /// Log format: text for people, json (one object per line) for log shippers
    #[arg(
        long = "log-format",
        env = "EGRESSTRATOR_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A duration such as `10s` or `500ms`, between 100 ms and one hour.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 10s or 500ms)"))?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("{s} is outside 100ms..1h"));
    }
    Ok(d)
}

/// A policy age such as `1h` or `90s`: more than the 60 s a healthy blocking query may take
/// to answer, at most a week.
fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d > std::time::Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("{s:?} is longer than a week"));
    }
    Ok(d)
}

fn parse_max_age(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 1h or 10m)"))?;
    if d <= std::time::Duration::from_secs(70) || d > std::time::Duration::from_secs(7 * 86400) {
        return Err(format!(
            "{s} is outside 71s..7d (consul answers a healthy watch at least every ~65 s)"
        ));
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: enforce every enabled container, now and as they start (the default)
    Run,
    /// Set egress rules on specified container
    Set(SetArgs),
    /// Clear egress rules on specified container
    Clear(ClearArgs),
    /// Check every ACL under the kv-path (or only the named ones) and print each error
    Validate(ValidateArgs),
    /// Print the exact ruleset a container would get, without applying it
    Explain(ExplainArgs),
    /// Answer whether a container may open a connection, and name the ACL line that decides
    Check(CheckArgs),
    /// Stream the connections the running agent's rulesets refuse (and audit), live
    Monitor(MonitorArgs),
    /// Print the running agent's view: containers, posture, ACLs, last apply, flows, errors
    Status(StatusArgs),
    /// Register the runtime shim (egresstrator-runc) with dockerd, or take it out again
    Runtime(RuntimeArgs),
    /// Check everything the agent needs on this host, with a fix for each failure
    Doctor(DoctorArgs),
    /// Build the image for --image locally, from this machine's nft and iptables
    HelperImage(HelperImageArgs),
    /// Build the agent's own image locally (no registry): this binary and its tools
    Image(ImageArgs),
}

#[derive(Debug, Args)]
pub struct HelperImageArgs {
    #[command(subcommand)]
    pub action: HelperImageAction,
}

#[derive(Debug, Subcommand)]
pub enum HelperImageAction {
    /// Import an image holding sh, nft and the iptables tools with their libraries (no
    /// registry needed)
    Build {
        /// Name of the image
        #[arg(long = "tag", default_value = crate::helper::DEFAULT_IMAGE)]
        tag: String,
    },
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub action: ImageAction,
}

#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Import an image holding this egresstrator binary (its entrypoint), nft and the iptables
    /// tools with their libraries
    Build {
        /// Name of the image
        #[arg(long = "tag", default_value = crate::helper::AGENT_IMAGE)]
        tag: String,
    },
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Only these containers (name, or id prefix) [default: every one]
    pub containers: Vec<String>,

    /// One JSON object per line instead of text
    #[arg(long = "json")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    #[command(subcommand)]
    pub action: RuntimeAction,

    /// dockerd's configuration file
    #[arg(
        long = "daemon-json",
        default_value = "/etc/docker/daemon.json",
        global = true
    )]
    pub daemon_json: PathBuf,

    /// The shim's configuration file
    #[arg(long = "runc-conf", default_value = crate::runtime::RUNC_CONF, global = true)]
    pub runc_conf: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeAction {
    /// Add the runtime "egresstrator" to daemon.json (every other key kept, a backup of the
    /// file kept) and write runc.conf if there is none; running it twice changes nothing
    Install {
        /// Also make it dockerd's default runtime, so every container starts under it
        #[arg(long = "default")]
        default: bool,
        /// The installed shim [default: egresstrator-runc next to this binary]
        #[arg(long = "shim")]
        shim: Option<PathBuf>,
    },
    /// Remove the runtime (and default-runtime if it names it), and runc.conf if it is as
    /// install wrote it
    Uninstall,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The checks as a JSON array
    #[arg(long = "json")]
    pub json: bool,

    /// dockerd's configuration file, where the runtime shim is registered
    #[arg(long = "daemon-json", default_value = "/etc/docker/daemon.json")]
    pub daemon_json: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The raw /status document instead of a table
    #[arg(long = "json")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// ACL names to check [default: every key under the kv-path]
    pub acls: Vec<String>,
}

/// Output format of `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    Nft,
    Iptables,
    Json,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Container id, short id or name
    pub container: String,

    /// ACLs to explain instead of what the agent enforces (the container's own, or those of
    /// `set --rules`, kept in --state-dir)
    #[arg(short = 'r', long = "rules", value_name = "ACL,...")]
    pub rules: Option<String>,

    /// Output format
    #[arg(long = "format", value_enum, default_value = "nft")]
    pub format: ExplainFormat,
}

/// Transport protocol, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Container id, short id or name
    pub container: String,
    /// Destination address (IPv4 or IPv6), or a DNS name (decided by the ACLs' name lines).
    /// An address the running agent (at --listen) learned for the container is allowed too
    pub address: String,
    /// Protocol
    #[arg(value_enum)]
    pub proto: ProtoArg,
    /// Destination port
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// ACLs to check instead of what the agent enforces (the container's own, or those of
    /// `set --rules`, kept in --state-dir)
    #[arg(short = 'r', long = "rules", value_name = "ACL,...")]
    pub rules: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Container id, short id or name
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub container: Option<String>,

    /// Every running enabled container
    #[arg(short = 'a', long = "all")]
    pub all: bool,

    /// ACLs to apply instead of the container's EGRESSTRATOR_ACL; with it the container
    /// needs no EGRESSTRATOR_ENABLE
    #[arg(short = 'r', long = "rules", value_name = "ACL,...")]
    pub rules: Option<String>,

    /// Audit mode on or off for the container's lifetime, whatever it asks for itself (live:
    /// the running agent loads the change); a plain `set` returns it to its own choice
    #[arg(long = "audit-mode", value_enum, value_name = "on|off")]
    pub audit_mode: Option<OnOff>,
}

/// A switch on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    /// Container id, short id or name
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub container: Option<String>,

    /// Every running container
    #[arg(short = 'a', long = "all")]
    pub all: bool,
}

/// Long options that take a value or are switches; used to accept Go-style spellings.
fn long_names() -> Vec<String> {
    let cmd = Cli::command();
    let mut names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    for sub in cmd.get_subcommands() {
        names.extend(
            sub.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned)),
        );
    }
    names.push("help".into());
    names
}

/// Rewrites Go-style long options (`-consul=x`, `-ssl`, `-kv-path x`) to `--consul=x` etc.
/// Only single-dash words whose name is a known long option of more than one letter are
/// touched, so short flags (`-c x`, `-a`) and values keep their meaning. Everything after
/// `--` is left alone.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let names = long_names();
    let mut out = Vec::new();
    let mut rest = false;
    for arg in args {
        if rest {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        if let Some(body) = s.strip_prefix('-').filter(|b| !b.starts_with('-')) {
            let name = body.split_once('=').map_or(body, |(n, _)| n);
            if name.len() > 1 && names.iter().any(|n| n == name) {
                out.push(OsString::from(format!("-{s}")));
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// Parses the process arguments.
pub fn parse() -> Cli {
    Cli::parse_from(normalize_args(std::env::args_os()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args.iter().map(OsString::from)))
    }

    #[test]
    fn defaults_match_0_2() {
        let cli = parse(&["egresstrator"]).expect("parses");
        assert_eq!(cli.global.consul, "127.0.0.1:8500");
        assert_eq!(cli.global.kv_path, "egress/acl/");
        assert!(cli.command.is_none());
        assert_eq!(cli.global.mode, ModeArg::Allowlist);
    }

    #[test]
    fn short_flags() {
        let cli = parse(&[
            "egresstrator",
            "-c",
            "h:1",
            "-k",
            "x/",
            "-t",
            "tok",
            "set",
            "-a",
            "-r",
            "web",
        ])
        .expect("parses");
        assert_eq!(cli.global.consul, "h:1");
        assert_eq!(cli.global.kv_path, "x/");
        assert_eq!(
            cli.global.consul_token.as_ref().map(Secret::expose),
            Some("tok")
        );
        match cli.command {
            Some(Command::Set(s)) => {
                assert!(s.all);
                assert_eq!(s.rules.as_deref(), Some("web"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_style_long_options() {
        let cli = parse(&[
            "egresstrator",
            "-ssl",
            "-ssl-ca-cert=/etc/pki/certs/CA.crt",
            "-consul=host:8500",
            "-kv-path",
            "acl/",
        ])
        .expect("parses");
        assert!(cli.global.ssl);
        assert_eq!(
            cli.global.ssl_ca_cert.as_deref(),
            Some(std::path::Path::new("/etc/pki/certs/CA.crt"))
        );
        assert_eq!(cli.global.consul, "host:8500");
        assert_eq!(cli.global.kv_path, "acl/");
    }

    #[test]
    fn values_that_look_like_options_are_kept() {
        // A value after a flag is never rewritten unless it is itself a known long name.
        let n =
            normalize_args(["egresstrator", "clear", "-a", "--", "-consul"].map(OsString::from));
        assert_eq!(n[2], "-a");
        assert_eq!(n[4], "-consul");
    }

    #[test]
    fn set_needs_container_or_all() {
        assert!(parse(&["egresstrator", "set"]).is_err());
        assert!(parse(&["egresstrator", "set", "c1", "--all"]).is_err());
        assert!(parse(&["egresstrator", "clear", "c1"]).is_ok());
        assert!(parse(&["egresstrator", "run"]).is_ok());
    }

    #[test]
    fn token_never_shows_in_debug_or_help() {
        let cli = parse(&["egresstrator", "-t", "hunter2"]).expect("parses");
        assert!(!format!("{cli:?}").contains("hunter2"));
        std::env::set_var("CONSUL_HTTP_TOKEN", "hunter3");
        let help = Cli::command().render_long_help().to_string();
        std::env::remove_var("CONSUL_HTTP_TOKEN");
        assert!(!help.contains("hunter3"));
        assert!(help.contains("EGRESSTRATOR_ENABLE=1"));
        assert!(help.contains("EGRESSTRATOR_ACL="));
    }

    #[test]
    fn version_flag_is_lowercase_v() {
        let e = parse(&["egresstrator", "-v"]).expect_err("version exits");
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "egresstrator {} (commit ",
                env!("CARGO_PKG_VERSION")
            )),
            "{shown}"
        );
        assert!(shown.contains(", built 20"), "{shown}");
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
