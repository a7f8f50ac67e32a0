//! Command-line interface (clap derive only; `main` wires it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ccm-agent",
    version,
    about = "Keeps Huawei Cloud Certificate Manager (CCM) certificates fresh on this host",
    after_help = "Exit codes: 0 success (including \"nothing needed renewing\"), 1 an operation failed, \
                  2 bad command line or configuration."
)]
pub struct Cli {
    /// Log format: text or json (default: the config's agent.log_format, else text).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent until interrupted: check on start and on the schedule, renew what is due.
    Run(ConfigArgs),
    /// Validate a configuration file without side effects.
    Check(CheckArgs),
    /// Show the managed certificates: source, not-after, days left, next renewal, last result.
    Status(StatusArgs),
    /// Check the named certificates now and renew them if due (or always, with --force).
    Renew(RenewArgs),
    /// Start the built-in emulator with demo data and run the agent against it.
    Demo(DemoArgs),
    /// Run the local CCM emulator (SCM v3, PCA v1, IAM tokens) until interrupted.
    Emulator(EmulatorArgs),
    /// Fleet mode (etcd): what the fleet's members hold.
    #[command(subcommand)]
    Fleet(FleetCommand),
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Members × certificates: generation, whether the fingerprint matches the fleet's, last
    /// result, last seen, and where each rollout stands. Exits 1 when a live member lags, a
    /// deploy unit needs a human, or a rollout is halted.
    Status(StatusArgs),
    /// Halt the rollout of a shared certificate's new generation: members that have it keep
    /// it, the others stay on the previous generation.
    Halt(RolloutArgs),
    /// Resume a halted rollout (members that failed try again), or start a rolled-back
    /// generation over from its canaries.
    Resume(RolloutArgs),
    /// Send every member back to the previous generation (still valid; checked).
    Rollback(RolloutArgs),
}

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The certificate's name.
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The configuration file.
    #[arg(
        long,
        short = 'c',
        env = "CCM_AGENT_CONFIG",
        default_value = "/etc/ccm-agent/ccm-agent.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Also resolve the credentials and test them against the cloud (and that each PCA
    /// issuing CA exists and can issue).
    #[arg(long)]
    pub online: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Managed certificate names (all when none is given).
    pub names: Vec<String>,
    /// Renew even when not due.
    #[arg(long)]
    pub force: bool,
    /// Show what would be requested and written; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo writes its configuration, state and certificates.
    #[arg(long, default_value = "./ccm-agent-demo")]
    pub dir: PathBuf,
    /// Metrics, /healthz and /readyz address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    /// How much faster than real time the emulator's clock runs, so short-lived demo
    /// certificates reach their renewal point within a minute.
    #[arg(long, default_value_t = 120)]
    pub speed: u32,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub duration: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port (the URL is printed on start).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Access key the emulator accepts.
    #[arg(long, env = "CCM_EMULATOR_AK", default_value = ccm_agent::emulator::DEFAULT_ACCESS_KEY)]
    pub access_key: String,
    /// Secret key the emulator accepts (prefer the environment variable to the command line).
    #[arg(long, env = "CCM_EMULATOR_SK", default_value = ccm_agent::emulator::DEFAULT_SECRET_KEY, hide_env_values = true, hide_default_value = true)]
    pub secret_key: String,
    /// Account (domain) id expected in X-Domain-Id.
    #[arg(long, default_value = ccm_agent::emulator::DEFAULT_DOMAIN_ID)]
    pub domain_id: String,
    /// Account (domain) name for IAM password tokens.
    #[arg(long, default_value = ccm_agent::emulator::DEFAULT_DOMAIN_NAME)]
    pub domain_name: String,
    /// IAM user name for password tokens.
    #[arg(long, default_value = ccm_agent::emulator::DEFAULT_USER_NAME)]
    pub user_name: String,
    /// IAM user password for password tokens.
    #[arg(long, env = "CCM_EMULATOR_PASSWORD", default_value = ccm_agent::emulator::DEFAULT_PASSWORD, hide_env_values = true, hide_default_value = true)]
    pub password: String,
    /// Start from a canned state: `demo`.
    #[arg(long)]
    pub seed: Option<ccm_agent::emulator::Seed>,
    /// Keep state in this JSON file (loaded at start when it exists, saved after each change).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Serve HTTPS with a generated CA; its PEM is written to this path.
    #[arg(long)]
    pub tls_ca_out: Option<PathBuf>,
}
