//! The `ccm-agent` binary: parse the command line, load and validate the configuration (a bad
//! one exits with 2 before any runtime starts), build the runtime, run, map to an exit code.

mod cli;
mod demo;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use ccm_agent::agent::daemon::{self, RunOptions};
use ccm_agent::agent::renew::{Action, CheckOptions};
use ccm_agent::clock::Clock;
use ccm_agent::cloud::Secret;
use ccm_agent::config::{CertificateSource, Config, LogFormat};
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::fsio::{self, FileAttrs};
use ccm_agent::logging;
use ccm_agent::state::{CertStatus, StateLock, StatusFile};
use cli::{CheckArgs, Cli, Command, EmulatorArgs, RenewArgs, StatusArgs};

/// An operation failed.
const EXIT_FAILURE: u8 = 1;
/// Bad command line or configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let Some(config) = load_config(&args.config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let config_path = args.config.clone();
            let reload_path = args.config.clone();
            init_tracing(cli.log_format.as_deref(), Some(&config));
            let credentials = match config.resolve_credentials(&|k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => {
                    logging::print_error(e);
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Bind before starting anything, so a taken port is a clear startup error.
            let listener = match config
                .metrics
                .listen
                .map(std::net::TcpListener::bind)
                .transpose()
            {
                Ok(l) => l,
                Err(e) => {
                    logging::print_error(format_args!(
                        "metrics.listen {}: {e}",
                        config
                            .metrics
                            .listen
                            .map(|a| a.to_string())
                            .unwrap_or_default()
                    ));
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            block_on(async move {
                let listener = listener
                    .map(|l| {
                        l.set_nonblocking(true)?;
                        tokio::net::TcpListener::from_std(l)
                    })
                    .transpose()
                    .context("metrics listener")?;
                let shutdown = tokio_util::sync::CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                daemon::run(
                    Arc::new(config),
                    credentials,
                    RunOptions {
                        clock: Clock::system(),
                        metrics_listener: listener,
                        shutdown,
                        on_cycle: None,
                        notifier: ccm_agent::systemd::Notifier::from_env(),
                        reload_config: Some(Box::new(move || {
                            Config::load(&reload_path).map_err(|e| e.to_string())
                        })),
                        config_path: std::path::absolute(&config_path).ok(),
                    },
                )
                .await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Check(args) => {
            init_tracing(cli.log_format.as_deref(), None);
            check(args)
        }
        Command::Status(args) => status(args),
        Command::Renew(args) => {
            let Some(config) = load_config(&args.config.config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            init_tracing(cli.log_format.as_deref(), Some(&config));
            renew(config, args)
        }
        Command::Demo(args) => {
            init_tracing(cli.log_format.as_deref(), None);
            block_on(demo::run(args))
        }
        Command::Emulator(args) => {
            init_tracing(cli.log_format.as_deref(), None);
            block_on(run_emulator(args))
        }
        Command::Fleet(cli::FleetCommand::Status(args)) => fleet_status(args),
        Command::Fleet(cli::FleetCommand::Halt(args)) => {
            fleet_rollout(cli.log_format.as_deref(), args, "halt")
        }
        Command::Fleet(cli::FleetCommand::Resume(args)) => {
            fleet_rollout(cli.log_format.as_deref(), args, "resume")
        }
        Command::Fleet(cli::FleetCommand::Rollback(args)) => {
            fleet_rollout(cli.log_format.as_deref(), args, "rollback")
        }
    }
}

/// The `[fleet]` settings and the etcd password of a configuration, or the exit code.
#[cfg(feature = "fleet")]
fn fleet_settings(
    config: &Config,
) -> Result<(ccm_agent::fleet::FleetSettings, Option<Secret>), ExitCode> {
    let Some(settings) = config.fleet.clone() else {
        logging::print_error(format_args!(
            "{}: no [fleet] section: this host is not in a fleet",
            config.source_name
        ));
        return Err(ExitCode::from(EXIT_CONFIG));
    };
    let password = match &settings.auth {
        Some(a) => match a.password.resolve(&|k| std::env::var(k).ok()) {
            Ok(p) => Some(p),
            Err(e) => {
                logging::print_error(format_args!("fleet.password ({}): {e}", a.password));
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        },
        None => None,
    };
    Ok((settings, password))
}

/// `ccm-agent fleet halt|resume|rollback NAME`: one compare-and-swap transaction on the
/// certificate's rollout, logged for the audit with who ran it.
#[cfg(feature = "fleet")]
fn fleet_rollout(log_format: Option<&str>, args: cli::RolloutArgs, command: &str) -> ExitCode {
    use ccm_agent::fleet::coordinator::{RolloutCommand, rollout_command};
    let Some(config) = load_config(&args.config.config) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    init_tracing(log_format, Some(&config));
    let (settings, password) = match fleet_settings(&config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(cert) = config.certificate(&args.name) else {
        logging::print_error(format_args!(
            "{}: no certificate named {:?} in this configuration",
            config.source_name, args.name
        ));
        return ExitCode::from(EXIT_CONFIG);
    };
    if cert.fleet != ccm_agent::fleet::FleetMode::Shared {
        logging::print_error(format_args!(
            "certificate {:?} is not fleet = \"shared\": it has no rollout",
            args.name
        ));
        return ExitCode::from(EXIT_CONFIG);
    }
    let cmd = match command {
        "halt" => RolloutCommand::Halt,
        "resume" => RolloutCommand::Resume,
        _ => RolloutCommand::Rollback,
    };
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    let by = format!("{user}@{}", settings.member_id);
    block_on(async move {
        match rollout_command(
            &settings,
            password.as_ref(),
            &args.name,
            cmd,
            &by,
            time::OffsetDateTime::now_utc(),
        )
        .await
        {
            Ok(done) => {
                tracing::warn!(
                    event = "fleet_command", command = cmd.as_str(), certificate = %args.name,
                    by = %by, "{done}"
                );
                println!("{done}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                tracing::error!(
                    event = "fleet_command", command = cmd.as_str(), certificate = %args.name,
                    by = %by, error = %e, "refused"
                );
                logging::print_error(format_args!("fleet {}: {e}", cmd.as_str()));
                Ok(ExitCode::from(EXIT_FAILURE))
            }
        }
    })
}

#[cfg(not(feature = "fleet"))]
fn fleet_rollout(_log_format: Option<&str>, _args: cli::RolloutArgs, _command: &str) -> ExitCode {
    logging::print_error(
        "this ccm-agent was built without fleet support (the cargo feature `fleet`)",
    );
    ExitCode::from(EXIT_CONFIG)
}

/// `ccm-agent fleet status`: one read of the fleet's keys, as a table or JSON.
#[cfg(feature = "fleet")]
fn fleet_status(args: StatusArgs) -> ExitCode {
    let Some(config) = load_config(&args.config.config) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let (settings, password) = match fleet_settings(&config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    block_on(async move {
        let snapshot = ccm_agent::fleet::coordinator::snapshot(&settings, password.as_ref())
            .await
            .context("reading the fleet from etcd")?;
        let report = ccm_agent::fleet::status::Report::from_snapshot(
            &snapshot,
            time::OffsetDateTime::now_utc(),
        );
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        Ok(if report.unhealthy() {
            ExitCode::from(EXIT_FAILURE)
        } else {
            ExitCode::SUCCESS
        })
    })
}

#[cfg(not(feature = "fleet"))]
fn fleet_status(_args: StatusArgs) -> ExitCode {
    logging::print_error(
        "this ccm-agent was built without fleet support (the cargo feature `fleet`)",
    );
    ExitCode::from(EXIT_CONFIG)
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::print_error(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            logging::print_error(format_args!("{e:#}"));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn load_config(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            logging::print_error(e);
            None
        }
    }
}

fn init_tracing(flag: Option<&str>, config: Option<&Config>) {
    let level = config
        .map(|c| c.agent.log_level.clone())
        .unwrap_or_else(|| "info".into());
    let json = match flag {
        Some(f) => f == "json",
        None => config.is_some_and(|c| c.agent.log_format == LogFormat::Json),
    };
    // The scheduler crate logs its own lifecycle at info; keep the agent's logs readable.
    logging::init(
        &format!("{level},tokio_cron_scheduler=warn"),
        logging::Output::detect(json),
    );
}

async fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    wait_for_shutdown().await;
    token.cancel();
}

fn check(args: CheckArgs) -> ExitCode {
    let Some(config) = load_config(&args.config.config) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    println!(
        "{}: valid; {} managed certificate(s)",
        config.source_name,
        config.certificates.len()
    );
    for w in &config.warnings {
        println!("warning: {w}");
    }
    if !args.online {
        return ExitCode::SUCCESS;
    }
    let credentials = match config.resolve_credentials(&|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            logging::print_error(e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    block_on(async move {
        let client = daemon::build_client(&config, credentials, None)?;
        let mut failed = false;
        let mut report = |what: String, result: Result<String, String>| match result {
            Ok(detail) => println!("ok: {what}: {detail}"),
            Err(e) => {
                failed = true;
                println!("{}: {what}: {e}", logging::red_on_terminal("FAILED"));
            }
        };
        let q = ccm_agent::cloud::scm::ListCertificatesQuery::default();
        report(
            format!("SCM at {}", config.cloud.endpoints.scm),
            client
                .scm_list_certificates(&q)
                .await
                .map(|r| format!("credentials accepted, {} certificate(s)", r.total_count))
                .map_err(|e| e.to_string()),
        );
        for cert in &config.certificates {
            if let CertificateSource::Pca(pca) = &cert.source {
                let what = format!("certificate {:?}: issuing CA {}", cert.name, pca.ca_id);
                let result = match client.pca_show_ca(&pca.ca_id).await {
                    Ok(ca) => {
                        let status = ca.status.as_str();
                        if status == "ACTIVED" {
                            Ok("active".to_owned())
                        } else {
                            Err(format!("the CA is {status}, not ACTIVED: it cannot issue"))
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                report(what, result);
            }
        }
        Ok(if failed {
            ExitCode::from(EXIT_FAILURE)
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn status(args: StatusArgs) -> ExitCode {
    let Some(config) = load_config(&args.config.config) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let file = match StatusFile::load(&config.agent.state_dir) {
        Ok(f) => f,
        Err(e) => {
            logging::print_error(format_args!("{e:#}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let rows: Vec<CertStatus> = config
        .certificates
        .iter()
        .map(|c| {
            file.certificates
                .iter()
                .find(|s| s.name == c.name)
                .cloned()
                .unwrap_or_else(|| CertStatus {
                    name: c.name.clone(),
                    source: daemon::source_name(c).to_owned(),
                    last_result: "never checked".into(),
                    ..Default::default()
                })
        })
        .collect();
    if args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                logging::print_error(e);
                return ExitCode::from(EXIT_FAILURE);
            }
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<24} {:<6} {:<20} {:>9} {:<20} LAST RESULT",
        "NAME", "SOURCE", "NOT AFTER", "DAYS LEFT", "NEXT RENEWAL"
    );
    for r in &rows {
        let parse = |s: &Option<String>| {
            s.as_deref().and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
        };
        let not_after = parse(&r.not_after);
        let days_left = not_after
            .map(|t| format!("{:.1}", (t - now).as_seconds_f64() / 86_400.0))
            .unwrap_or_else(|| "-".into());
        let short = |t: Option<time::OffsetDateTime>| {
            t.map(|t| {
                let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
                t.format(&fmt).unwrap_or_default()
            })
            .unwrap_or_else(|| "-".into())
        };
        let mut result = r.last_result.clone();
        if let Some(e) = &r.last_error {
            result = format!("{result}: {e}");
        }
        if !r.warnings.is_empty() {
            result = format!("{result} (warning: {})", r.warnings.join("; "));
        }
        if r.last_error.is_some() {
            result = logging::red_on_terminal(&result);
        }
        println!(
            "{:<24} {:<6} {:<20} {:>9} {:<20} {}",
            r.name,
            r.source,
            short(not_after),
            days_left,
            short(parse(&r.next_renewal)),
            result
        );
    }
    ExitCode::SUCCESS
}

fn renew(config: Config, args: RenewArgs) -> ExitCode {
    let unknown: Vec<&String> = args
        .names
        .iter()
        .filter(|n| config.certificate(n).is_none())
        .collect();
    if !unknown.is_empty() {
        logging::print_error(format_args!(
            "{}: no managed certificate named {}",
            config.source_name,
            unknown
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return ExitCode::from(EXIT_CONFIG);
    }
    let credentials = match config.resolve_credentials(&|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            logging::print_error(e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    block_on(async move {
        let client = daemon::build_client(&config, credentials, None)?;
        // A running daemon holds the state lock; renewing beside it would race its checks. A
        // dry run takes no lock and creates nothing.
        let (_lock, open): (_, fn(_, _, _, _, _) -> _) = if args.dry_run {
            (None, daemon::Agent::read_only)
        } else {
            fsio::create_private_dir(&config.agent.state_dir).context("agent.state_dir")?;
            (
                Some(StateLock::acquire(&config.agent.state_dir, "renew")?),
                daemon::Agent::new,
            )
        };
        let agent = std::sync::Arc::new(open(
            std::sync::Arc::new(config.clone()),
            client,
            ccm_agent::metrics::Metrics::new(),
            ccm_agent::metrics::Readiness::new(),
            Clock::system(),
        )?);
        let opts = CheckOptions {
            force: args.force,
            dry_run: args.dry_run,
        };
        // The daemon's pass over the selected certificates: the same listings, fan-out and
        // records, the status file written once.
        let pass = agent.run_pass(&args.names, opts).await;
        for (cert, result) in &pass.results {
            match result {
                Ok(report) => {
                    match &report.action {
                        Action::WouldDo(steps) => {
                            println!("{}: would do:", report.name);
                            for s in steps {
                                println!("  {s}");
                            }
                            if steps.is_empty() {
                                println!("  nothing (not due)");
                            } else {
                                // After a change: the reloads and hooks, then the cloud targets.
                                for line in ccm_agent::reload::describe(&cert.reload) {
                                    println!("  {line}");
                                }
                                if let Some(spec) = &cert.deploy {
                                    let store = ccm_agent::deploy::DeployStore::new(
                                        agent.renewer().state_dir(),
                                    );
                                    let material = dry_run_material(cert);
                                    match ccm_agent::deploy::describe(&store, spec, &material) {
                                        Ok(lines) => lines.iter().for_each(|l| println!("  {l}")),
                                        Err(e) => println!("  cloud targets: {e}"),
                                    }
                                }
                            }
                        }
                        Action::None => println!("{}: up to date, nothing to do", report.name),
                        other => println!("{}: {other}", report.name),
                    }
                    for w in &report.warnings {
                        println!("{}: warning: {w}", report.name);
                    }
                }
                Err(e) => println!(
                    "{}: {} ({}): {e}",
                    cert.name,
                    logging::red_on_terminal("FAILED"),
                    e.kind()
                ),
            }
        }
        if args.dry_run {
            for line in dry_run_fleet(&config, &pass.results).await {
                println!("{line}");
            }
        }
        Ok(if pass.summary.failed > 0 {
            ExitCode::from(EXIT_FAILURE)
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// What a dry run says of the shared certificates it covered: the fleet's generation, where
/// its rollout stands and what this member does next (one read of etcd).
#[cfg(feature = "fleet")]
async fn dry_run_fleet<T>(
    config: &Config,
    results: &[(ccm_agent::config::ManagedCertificate, T)],
) -> Vec<String> {
    use ccm_agent::fleet::FleetMode;
    let names: Vec<&str> = results
        .iter()
        .filter(|(c, _)| c.fleet == FleetMode::Shared)
        .map(|(c, _)| c.name.as_str())
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let Ok((settings, password)) = fleet_settings(config) else {
        return Vec::new();
    };
    let snapshot = match ccm_agent::fleet::coordinator::snapshot(&settings, password.as_ref()).await
    {
        Ok(s) => s,
        Err(e) => {
            return vec![format!(
                "fleet: cannot read the fleet's state from etcd: {e}"
            )];
        }
    };
    let me = settings.member_id.as_str();
    let now = time::OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for name in names {
        let Some(g) = snapshot.generations.get(name) else {
            out.push(format!(
                "{name}: fleet: no generation published yet; the member that takes the lock issues the first"
            ));
            continue;
        };
        match snapshot.assess(name, now) {
            None => out.push(format!(
                "{name}: fleet: generation {} published by {} (no staged rollout: every member installs it at once)",
                g.generation, g.issued_by
            )),
            Some((_, r, a)) => {
                out.push(format!(
                    "{name}: fleet: rollout of generation {} over {}: {}; next: {}",
                    r.generation, r.previous.generation, a.stage, a.next
                ));
                out.push(if a.admits(me) {
                    format!(
                        "{name}: fleet: this member ({me}) is admitted: it serves generation {}",
                        r.generation
                    )
                } else {
                    format!(
                        "{name}: fleet: this member ({me}) is not admitted: it keeps generation {}",
                        r.previous.generation
                    )
                });
            }
        }
    }
    out
}

#[cfg(not(feature = "fleet"))]
async fn dry_run_fleet<T>(
    _config: &Config,
    _results: &[(ccm_agent::config::ManagedCertificate, T)],
) -> Vec<String> {
    Vec::new()
}

/// What a dry run can say about the certificate it would deploy: the one installed now (the
/// new one is not issued in a dry run), or a placeholder naming it.
fn dry_run_material(
    cert: &ccm_agent::config::ManagedCertificate,
) -> ccm_agent::deploy::CertMaterial {
    let pem = cert
        .output
        .cert
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    match &cert.source {
        CertificateSource::Scm(_) => {
            ccm_agent::deploy::CertMaterial::scm(&cert.name, "(selected at renewal)", pem)
        }
        CertificateSource::Pca(_) => ccm_agent::deploy::CertMaterial::local(
            &cert.name,
            pem,
            String::new(),
            Secret::new(String::new()),
        ),
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
        // A CA certificate: public, but its mode is not left to the umask.
        let attrs = FileAttrs {
            mode: 0o644,
            ..FileAttrs::PRIVATE
        };
        fsio::write_atomic(path, pem.as_bytes(), &attrs)
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

pub(crate) async fn wait_for_shutdown() {
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
