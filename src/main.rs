//! The `ccm-agent` binary: parse the command line, build the runtime, run, map to an exit code.

mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use ccm_agent::cloud::Secret;
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use cli::{Cli, Command, EmulatorArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Emulator(args) => run_emulator(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run_emulator(args: EmulatorArgs) -> anyhow::Result<ExitCode> {
    let config = EmulatorConfig {
        listen: args.listen,
        access_key: args.access_key,
        secret_key: Secret::new(args.secret_key),
        domain_id: args.domain_id,
        domain_name: args.domain_name,
        user_name: args.user_name,
        password: Secret::new(args.password),
        seed: args.seed,
        state_file: args.state_file,
        tls: args.tls_ca_out.is_some(),
    };
    let emulator = Emulator::start(config).await?;
    if let (Some(path), Some(pem)) = (&args.tls_ca_out, emulator.tls_ca_pem()) {
        std::fs::write(path, pem)
            .with_context(|| format!("writing the TLS CA to {}", path.display()))?;
    }
    // The first line of stdout is the base URL: scripts and tests read it to find the port.
    println!("{}", emulator.base_url());
    tracing::info!(
        url = %emulator.base_url(),
        access_key = %emulator.shared().config().access_key,
        domain_id = %emulator.shared().config().domain_id,
        "CCM emulator listening (SCM v3, PCA v1, IAM); control endpoints under /_emulator/"
    );
    wait_for_shutdown().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
