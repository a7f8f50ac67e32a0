//! End to end with the real thing: the agent renews a private certificate through the emulator,
//! installs it where a real nginx (own prefix, loopback high port) reads it, reloads nginx and
//! checks over TLS that the new certificate is served; then, with nginx's configuration broken,
//! a renewal is rolled back: the old certificate stays installed and served, and the failure is
//! in the metrics.
//!
//! Without nginx it fails under CI (`CI=true`; CI installs nginx) and is skipped with a message
//! elsewhere.

#![allow(clippy::unwrap_used)]

mod reload_common;

use std::sync::Arc;
use std::time::Duration;

use ccm_agent::agent::daemon::{Agent, PassError};
use ccm_agent::agent::renew::CheckOptions;
use ccm_agent::clock::Clock;
use ccm_agent::config::Config;
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::metrics::{Metrics, Readiness};
use ccm_agent::reload::probe::VerifyEndpoint;
use reload_common::{free_port, served, wait_served, write_placeholder};

fn fingerprint(path: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    ccm_agent::pki::parse_cert(&pem)
        .unwrap()
        .sha256_fingerprint_hex
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_reloads_nginx_and_rolls_back_a_broken_config() {
    let Some(nginx) = reload_common::nginx::find() else {
        return;
    };
    ccm_agent::cloud::install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let shared = emu.shared().clone();
    let (_, ca_id) = tokio::task::spawn_blocking(move || {
        ccm_agent::emulator::pca::ca::create_active_ca_pair(&shared, "e2e root", "e2e issuing CA")
    })
    .await
    .unwrap()
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let live = d.join("live/web");
    std::fs::create_dir_all(&live).unwrap();
    let port = free_port();

    // nginx needs files to start with: a throwaway self-signed pair the agent then replaces.
    let placeholder_fp = write_placeholder(&live, "web.e2e.internal");
    let conf = reload_common::nginx::write_config(
        d,
        port,
        "web.e2e.internal",
        &live.join("fullchain.pem"),
        &live.join("privkey.pem"),
    );
    let pid = reload_common::nginx::pid_file(d);
    let _running = reload_common::nginx::start(&nginx, d, &conf);
    let endpoint = VerifyEndpoint {
        address: "127.0.0.1".into(),
        port,
        sni: Some("web.e2e.internal".into()),
    };
    wait_served(&endpoint, &placeholder_fp, Duration::from_secs(10)).await;

    let aksk = emu.aksk();
    // What the deploy hook is told: the pass hands activate the installed set (new leaf and the
    // replaced one's fingerprint) instead of re-reading the state directory.
    let hook_log = d.join("deploy-hook.log");
    let text = format!(
        r#"
[agent]
state_dir = "{d}/state"
host_id = "e2e"
[metrics]
enabled = false
[cloud]
endpoint = "{endpoint}"
[cloud.auth]
access_key = "{ak}"
secret_key_env = "UNUSED_IN_THIS_TEST"
domain_id = "{domain}"
[[certificates]]
name = "web"
verify_timeout = "15s"
[certificates.pca]
ca_id = "{ca_id}"
sans = ["dns:web.e2e.internal"]
validity = {{ type = "DAY", value = 30 }}
[certificates.output]
dir = "{live}"
[[certificates.reload]]
type = "nginx"
binary = "{nginx}"
config = "{conf}"
prefix = "{d}"
pid_file = "{pid}"
[[certificates.verify]]
address = "127.0.0.1"
port = {port}
sni = "web.e2e.internal"
[certificates.hooks]
deploy = "echo \"$CCM_OLD_FINGERPRINT $CCM_NEW_FINGERPRINT\" >> {hook_log}"
"#,
        d = d.display(),
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.clone().unwrap_or_default(),
        live = live.display(),
        nginx = nginx.display(),
        conf = conf.display(),
        pid = pid.display(),
        hook_log = hook_log.display(),
    );
    let config = Arc::new(Config::from_str(&text, "e2e.toml").unwrap());
    let metrics = Metrics::new();
    let shared = emu.shared().clone();
    let agent = Arc::new(
        Agent::new(
            config.clone(),
            emu.client().unwrap(),
            metrics.clone(),
            Readiness::new(),
            Clock::from_fn(move || shared.now()),
        )
        .unwrap(),
    );
    let cert = config.certificate("web").unwrap();

    // 1. First install: issued through the emulator, nginx reloaded, the new certificate served.
    agent.pass(cert, CheckOptions::default()).await.unwrap();
    let first = fingerprint(&live.join("cert.pem"));
    assert_ne!(first, placeholder_fp);
    // Waited for: an old worker may still answer a connection or two.
    wait_served(&endpoint, &first, Duration::from_secs(10)).await;

    // 2. The emulator's clock crosses the renewal point: renewed, reloaded, served.
    emu.shared().advance_clock(time::Duration::days(21));
    let report = agent.pass(cert, CheckOptions::default()).await.unwrap();
    assert!(report.install_changed, "{report:?}");
    let second = fingerprint(&live.join("cert.pem"));
    assert_ne!(second, first);
    // Waited for: an old worker may still answer a connection or two.
    wait_served(&endpoint, &second, Duration::from_secs(10)).await;
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        format!(" {first}\n{first} {second}\n"),
        "the deploy hook saw each install's old and new fingerprint"
    );

    // 3. nginx's configuration breaks; a forced renewal is issued and installed, the config
    //    test fails, the files are rolled back, and the old certificate is still served.
    std::fs::write(d.join("extra.conf"), "this_is_not_a_directive on;\n").unwrap();
    let err = agent
        .pass(
            cert,
            CheckOptions {
                force: true,
                dry_run: false,
            },
        )
        .await
        .expect_err("the reload must fail");
    assert!(matches!(err, PassError::Reload(_)), "{err}");
    assert_eq!(err.kind(), "config_test_failed");
    assert!(
        err.to_string().contains("this_is_not_a_directive"),
        "nginx's stderr is reported: {err}"
    );
    assert_eq!(
        fingerprint(&live.join("cert.pem")),
        second,
        "the previous files are back"
    );
    assert_eq!(
        served(&endpoint).await,
        second,
        "the old certificate is still served"
    );
    let scrape = metrics.encode().unwrap();
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("ccm_agent_reloads_total{")
                && l.contains("name=\"web\"")
                && l.contains("result=\"config_test_failed\"")
                && l.ends_with(" 1")),
        "{scrape}"
    );
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("ccm_agent_reloads_total{")
                && l.contains("result=\"ok\"")
                && l.ends_with(" 2")),
        "{scrape}"
    );
}
