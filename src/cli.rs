//! Command-line interface (clap derive only; `main` wires it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ccm-agent",
    version,
    about = "Keeps Huawei Cloud CCM certificates fresh on this host"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the local CCM emulator (SCM v3, PCA v1, IAM tokens) until interrupted.
    Emulator(EmulatorArgs),
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
