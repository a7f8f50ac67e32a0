//! `ccm-agent demo`: the built-in emulator with the demo seed, and the agent running against it
//! with a generated configuration under one directory. The emulator's clock runs `--speed`
//! times faster than real time and the agent reads that clock, so the demo's one-hour private
//! certificates reach their renewal point within a minute and the user sees renewals happen.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use ccm_agent::agent::daemon::{self, RunOptions};
use ccm_agent::clock::Clock;
use ccm_agent::cloud::Credentials;
use ccm_agent::config::Config;
use ccm_agent::emulator::{Emulator, EmulatorConfig, Seed};
use ccm_agent::fsio::{self, FileAttrs};

use crate::cli::DemoArgs;

/// Print to stdout, ignoring a closed pipe (`ccm-agent demo | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The demo configuration; `{…}` placeholders are filled in at start.
const DEMO_CONFIG: &str = r#"# Written by `ccm-agent demo`: the agent's configuration for the built-in emulator.
# Every key is documented in config/ccm-agent.example.toml.

[agent]
state_dir = "{dir}/state"
# Six fields (seconds first): every 5 seconds, because the demo's clock runs fast.
schedule = "*/5 * * * * *"
host_id = "ccm-agent-demo"
retry_initial = "5s"
retry_max = "30s"

[metrics]
listen = "{metrics}"

[cloud]
endpoint = "{endpoint}"

[cloud.auth]
access_key = "{access_key}"
# The demo hands the emulator's secret to the agent directly; a real deployment reads it
# from the environment or a file (secret_key_env / secret_key_file).
secret_key_env = "CCM_EMULATOR_SK"
domain_id = "{domain_id}"

[defaults.output]
base_dir = "{dir}/live"

# A private certificate whose key is generated here and never leaves this host (CSR mode).
[[certificates]]
name = "web"
[certificates.pca]
ca_id = "{ca_id}"
mode = "csr"
sans = ["dns:web.demo.internal", "dns:www.demo.internal", "ip:127.0.0.1"]
key_algorithm = "EC256"
validity = { type = "HOUR", value = 1 }
extended_key_usage = ["server_auth"]

# A private certificate whose key PCA generates (apply mode), fetched by export.
[[certificates]]
name = "api"
[certificates.pca]
ca_id = "{ca_id}"
mode = "apply"
subject = { common_name = "api.demo.internal", organization = "ccm-agent demo" }
sans = ["dns:api.demo.internal"]
key_algorithm = "EC256"
validity = { type = "HOUR", value = 2 }
extended_key_usage = ["server_auth", "client_auth"]

# The newest valid SSL certificate named "demo-app" in SCM, re-exported when a newer one appears.
[[certificates]]
name = "demo-app"
[certificates.scm]
name = "demo-app"
"#;

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir =
        std::path::absolute(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    fsio::create_private_dir(&dir)?;

    say!("Starting the built-in CCM emulator with demo data (generating CA keys)...");
    let emulator = Emulator::start(EmulatorConfig {
        seed: Some(Seed::Demo),
        ..EmulatorConfig::default()
    })
    .await
    .context("starting the emulator")?;
    let shared = emulator.shared().clone();
    let ca_id = ccm_agent::emulator::pca::ca::find_ca_by_name(
        &shared,
        ccm_agent::emulator::pca::ca::DEMO_SUB_CN,
    )
    .context("the demo seed has no issuing CA")?;

    let aksk = emulator.aksk();
    let text = DEMO_CONFIG
        .replace("{dir}", &dir.display().to_string())
        .replace("{metrics}", &args.metrics_listen.to_string())
        .replace("{endpoint}", &emulator.base_url())
        .replace("{access_key}", &aksk.access_key)
        .replace("{domain_id}", aksk.domain_id.as_deref().unwrap_or_default())
        .replace("{ca_id}", &ca_id);
    let config_path = dir.join("ccm-agent.toml");
    fsio::write_atomic(&config_path, text.as_bytes(), &FileAttrs::PRIVATE)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::from_str(&text, &config_path.display().to_string())?;

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}", args.metrics_listen))?;
    let metrics_addr = listener.local_addr()?;

    let speed = i64::from(args.speed.max(1));
    let clock_shared = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            clock_shared.advance_clock(time::Duration::seconds(speed - 1));
        }
    });

    say!();
    say!(
        "ccm-agent demo is running (emulator at {}, clock x{speed}).",
        emulator.base_url()
    );
    say!("  configuration:  {}", config_path.display());
    say!(
        "  certificates:   {}/live/<name>/{{cert,chain,fullchain,privkey}}.pem",
        dir.display()
    );
    say!("  metrics:        http://{metrics_addr}/metrics   (also /healthz, /readyz)");
    say!(
        "  status:         CCM_EMULATOR_SK=... ccm-agent status --config {}",
        config_path.display()
    );
    say!("  The one-hour certificates renew at about 2/3 of their lifetime: within a minute here.");
    say!("  Press Ctrl-C to stop.");
    say!();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let stopper = shutdown.clone();
    let duration = args.duration;
    tokio::spawn(async move {
        match duration {
            Some(secs) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {},
                    _ = crate::wait_for_shutdown() => {},
                }
            }
            None => crate::wait_for_shutdown().await,
        }
        stopper.cancel();
    });

    let credentials = Credentials::AkSk(aksk);
    daemon::run(
        Arc::new(config),
        credentials,
        RunOptions {
            clock: Clock::from_fn(move || shared.now()),
            metrics_listener: Some(listener),
            shutdown,
            // Each pass is logged once, by the daemon (`check finished`); nothing to add here.
            on_cycle: None,
            notifier: ccm_agent::systemd::Notifier::disabled(),
            reload_config: None,
            config_path: None,
        },
    )
    .await?;
    emulator.shutdown().await;
    say!("demo stopped; files are kept under {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
