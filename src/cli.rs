//! The command line (docs/ARCHITECTURE.md §2, a contract): `run`, `check`, `status`, `ca`. Every flag
//! that configures the agent also reads its `FUSEBOX_*` environment variable (`--strict`,
//! `--watch` and `--upstream` do not).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::{Agent, RunConfig, StopSignals};
use crate::policy::listeners::FixedListener;

#[derive(Debug, Parser)]
#[command(name = "fusebox", version, about = "A resilience-focused egress agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: the egress listener, route listeners and the admin server.
    Run(RunArgs),
    /// Validate and lint the policies directory; exit 0 clean, 1 on errors, 2 on warnings with --strict.
    Check(CheckArgs),
    /// Show every destination's breaker: state, window counts, last trip reason.
    Status(crate::status::StatusArgs),
    /// The local CA for HTTPS interception: `init` creates it, `show` prints its certificate.
    Ca(crate::ca_cli::CaArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of policy files (*.toml).
    #[arg(long, env = "FUSEBOX_POLICIES", default_value = "./policies")]
    pub policies: PathBuf,
    /// Egress listener: apps set HTTP_PROXY to this address.
    #[arg(long, env = "FUSEBOX_LISTEN", default_value = "127.0.0.1:15001")]
    pub listen: SocketAddr,
    /// Admin server: /metrics, /healthz, /readyz.
    #[arg(long, env = "FUSEBOX_ADMIN", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Runtime worker threads (default: number of cores).
    #[arg(long, env = "FUSEBOX_WORKERS")]
    pub workers: Option<usize>,
    /// Log format.
    #[arg(long, env = "FUSEBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Largest request head accepted from apps, in bytes; larger ones get 431.
    #[arg(long, env = "FUSEBOX_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// How long an app may take to send a request head, counted from its first byte.
    #[arg(long, env = "FUSEBOX_HEADER_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub header_timeout: Duration,
    /// How long an app connection may stay idle between requests before fusebox closes it, and
    /// how long an HTTP/1.1 app may take nothing of a response being written to it.
    #[arg(long, env = "FUSEBOX_IDLE_TIMEOUT", default_value = "5m", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "FUSEBOX_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Bearer token required by the admin API's POST endpoints (required for them at all when
    /// --admin is not a loopback address). Visible in `ps`: prefer --admin-token-file.
    #[arg(long, env = "FUSEBOX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Read the admin token from this file (a Docker or Kubernetes secret); surrounding
    /// whitespace is trimmed.
    #[arg(
        long,
        env = "FUSEBOX_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token",
        value_name = "PATH"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// A name the admin server answers to besides loopback names and IP addresses (a
    /// Kubernetes Service name, a port-forward's); repeat it or separate names with commas.
    /// Any other `Host` gets 421, against DNS rebinding.
    #[arg(
        long = "admin-host",
        env = "FUSEBOX_ADMIN_HOST",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub admin_hosts: Vec<String>,
    /// The local CA (`fusebox ca init`) that policies with `intercept = true` present
    /// certificates from.
    #[arg(long, env = "FUSEBOX_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// The Redis that `scope = "fleet"` rate limits are shared through (`redis://HOST:PORT`,
    /// `rediss://` for TLS).
    #[arg(long, env = "FUSEBOX_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// The DNS server that resolves destinations into their endpoints (`IP:port`); the
    /// system's configuration (`/etc/resolv.conf`, `/etc/hosts`) when unset.
    #[arg(long, env = "FUSEBOX_DNS_SERVER", value_name = "IP:PORT")]
    pub dns_server: Option<std::net::SocketAddr>,
}

/// A humantime duration greater than zero (`30s`, `5m`).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be greater than 0".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// The admin token from `--admin-token` or `--admin-token-file`. An unreadable or empty file is
/// an error: an operator who points at a secret expects it to be used.
fn admin_token(args: &RunArgs) -> Result<Option<String>, String> {
    let Some(path) = &args.admin_token_file else {
        return Ok(args.admin_token.clone());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --admin-token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--admin-token-file {} is empty", path.display()));
    }
    Ok(Some(token.to_owned()))
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Directory of policy files (*.toml).
    #[arg(long, env = "FUSEBOX_POLICIES", default_value = "./policies")]
    pub policies: PathBuf,
    /// Output format: `text` (file:line:col lines on stderr, a summary on stdout) or `json`
    /// (one document on stdout, for CI pipelines).
    #[arg(long, env = "FUSEBOX_CHECK_FORMAT", value_enum, default_value_t = crate::check::Format::Text)]
    pub format: crate::check::Format,
    /// Exit 2 when there are warnings (dangerous combinations) but no errors.
    #[arg(long)]
    pub strict: bool,
    /// The egress listener `fusebox run` will bind: a route listener on it is an error.
    #[arg(long, env = "FUSEBOX_LISTEN", default_value = "127.0.0.1:15001")]
    pub listen: SocketAddr,
    /// The admin address `fusebox run` will bind: a route listener on it is an error.
    #[arg(long, env = "FUSEBOX_ADMIN", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// The local CA `fusebox run` will use: `intercept = true` without one is an error, and
    /// the CA itself is checked.
    #[arg(long, env = "FUSEBOX_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// The Redis `fusebox run` will use: `scope = "fleet"` without one is a warning
    /// (`fleet-without-redis`). Not contacted.
    #[arg(long, env = "FUSEBOX_REDIS", value_name = "URL")]
    pub redis: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // `--help` and `--version` are not errors. A usage error exits 64 (EX_USAGE), not
            // clap's 2, which `fusebox check --strict` uses for "warnings found".
            return if error.use_stderr() { 64 } else { 0 };
        }
    };
    match cli.command {
        Command::Check(args) => {
            let target = crate::check::Target {
                dir: &args.policies,
                fixed: vec![
                    FixedListener::egress(args.listen),
                    FixedListener::admin(args.admin),
                ],
                ca_dir: args.ca_dir.as_deref(),
                redis: args.redis.is_some(),
            };
            crate::check::run(&target, args.format, args.strict)
        }
        Command::Run(args) => run(args),
        Command::Status(args) => crate::status::run(&args),
        Command::Ca(args) => crate::ca_cli::run(&args),
    }
}

fn run(args: RunArgs) -> i32 {
    let admin_token = match admin_token(&args) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("fusebox: {error}");
            return 1;
        }
    };
    let _flush_logs_on_exit = crate::logging::init(match args.log_format {
        LogFormat::Text => crate::logging::Format::Text,
        LogFormat::Json => crate::logging::Format::Json,
    });
    // One worker runs everything on one thread: no work stealing, no wake-ups across threads.
    let mut runtime = match args.workers {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(workers);
            runtime
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fusebox: cannot start the runtime: {error}");
            return 1;
        }
    };
    let config = RunConfig {
        policies: args.policies,
        listen: args.listen,
        admin: args.admin,
        max_header_bytes: args.max_header_bytes,
        drain_timeout: args.drain_timeout,
        jitter: true,
        watch: true,
        admin_token,
        admin_hosts: args
            .admin_hosts
            .iter()
            .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect(),
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        rest_after: crate::agent::REST_AFTER,
        ca_dir: args.ca_dir,
        redis: args.redis,
        dns_server: args.dns_server,
    };
    runtime.block_on(async {
        let signals = match StopSignals::install() {
            Ok(signals) => signals,
            Err(error) => {
                eprintln!("fusebox: cannot install signal handlers: {error}");
                return 1;
            }
        };
        let agent = match Agent::start(config).await {
            Ok(agent) => agent,
            Err(error) => {
                eprintln!("fusebox: {error}");
                return 1;
            }
        };
        match agent.run_until_signal(signals).await {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("fusebox: {error}");
                1
            }
        }
    })
}
