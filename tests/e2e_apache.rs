//! End to end with a real Apache httpd: the agent issues a private certificate through the
//! emulator, installs it where Apache (own ServerRoot, loopback high port) reads it, runs
//! `apache2 -t` and `-k graceful`, and checks over TLS that the new certificate is served; then
//! two broken configurations each roll a forced renewal back, with the old certificate still
//! installed and served and the failure in the metrics:
//! - a syntax error in an included file: `-t` fails, Apache is never touched;
//! - the key directive pointed at a copy of the old key: `-t` passes (it checks syntax only),
//!   the graceful restart takes the server down on the key mismatch, the served-certificate
//!   check notices, and the rollback's `-k graceful` starts Apache again on the old files.
//!
//! Finally the configuration is repaired and a renewal goes through again.
//!
//! Without apache2/httpd and mod_ssl it fails under CI (`CI=true`; CI installs apache2) and is
//! skipped with a message elsewhere.

#![allow(clippy::unwrap_used)]

mod prom_text;
mod reload_common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ccm_agent::agent::daemon::{Agent, PassError};
use ccm_agent::agent::renew::CheckOptions;
use ccm_agent::clock::Clock;
use ccm_agent::config::Config;
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::metrics::{Metrics, Readiness};
use ccm_agent::reload::{ReloadError, Stage, VerifyEndpoint};
use prom_text::{sample, sum_where};
use reload_common::apache::{self, write_key_conf};
use reload_common::{free_port, served, wait_served, write_placeholder};

const SNI: &str = "web.e2e.internal";

/// How long the test waits for Apache to serve what it expects (a loaded 2-core CI machine).
const WAIT: Duration = Duration::from_secs(30);

const FORCE: CheckOptions = CheckOptions {
    force: true,
    dry_run: false,
};

fn fingerprint(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    ccm_agent::pki::parse_cert(&pem)
        .unwrap()
        .sha256_fingerprint_hex
}

/// Asserts the reload metrics of certificate `web`: reloads by result, rollbacks by result,
/// and the served-certificate gauge.
fn assert_metrics(metrics: &Metrics, reloads: &[(&str, f64)], rollbacks: &[(&str, f64)]) {
    let scrape = metrics.encode().unwrap();
    for (result, want) in reloads {
        let got = sample(
            &scrape,
            "ccm_agent_reloads_total",
            &[("name", "web"), ("result", result)],
        );
        assert_eq!(
            got,
            Some(*want),
            "reloads_total{{result={result:?}}}\n{scrape}"
        );
    }
    let failed: f64 = reloads
        .iter()
        .filter(|(r, _)| *r != "ok")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        sum_where(&scrape, "ccm_agent_reloads_total", |l| {
            l.contains("name=\"web\"") && !l.contains("result=\"ok\"")
        }),
        failed,
        "reloads_total{{result!=\"ok\"}}\n{scrape}"
    );
    for (result, want) in rollbacks {
        let got = sample(
            &scrape,
            "ccm_agent_rollbacks_total",
            &[("name", "web"), ("result", result)],
        );
        assert_eq!(
            got,
            Some(*want),
            "rollbacks_total{{result={result:?}}}\n{scrape}"
        );
    }
    assert_eq!(
        sample(
            &scrape,
            "ccm_agent_served_certificate_match",
            &[("name", "web")]
        ),
        Some(1.0),
        "{scrape}"
    );
}

fn reload_error(err: PassError) -> Box<ReloadError> {
    match err {
        PassError::Reload(e) => e,
        other => panic!("expected a reload error, got {}: {other}", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_reloads_apache_and_rolls_back_broken_configs() {
    let Some(installed) = apache::find() else {
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

    // Apache needs files to start with: a throwaway self-signed pair the agent then replaces.
    let placeholder_fp = write_placeholder(&live, SNI);
    let conf = installed.write_config(
        d,
        port,
        SNI,
        &live.join("fullchain.pem"),
        &live.join("privkey.pem"),
    );
    let _running = installed.start(d, &conf);
    let endpoint = VerifyEndpoint {
        address: "127.0.0.1".into(),
        port,
        sni: Some(SNI.into()),
    };
    wait_served(&endpoint, &placeholder_fp, WAIT).await;

    // The reload is `apache2 -f CONF -t`, then `apache2 -f CONF -k graceful` (no pid_file): only
    // `-k graceful` can start the server again after a restart killed it.
    let aksk = emu.aksk();
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
verify_timeout = "20s"
[certificates.pca]
ca_id = "{ca_id}"
sans = ["dns:{SNI}"]
validity = {{ type = "DAY", value = 30 }}
[certificates.output]
dir = "{live}"
[[certificates.reload]]
type = "apache"
binary = "{apache}"
config = "{conf}"
timeout = "60s"
[[certificates.verify]]
address = "127.0.0.1"
port = {port}
sni = "{SNI}"
"#,
        d = d.display(),
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.clone().unwrap_or_default(),
        live = live.display(),
        apache = installed.binary.display(),
        conf = conf.display(),
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

    // 1. First install: issued through the emulator, Apache tested and restarted gracefully,
    //    the new certificate served.
    let report = agent.pass(cert, CheckOptions::default()).await.unwrap();
    assert!(report.install_changed, "{report:?}");
    let first = fingerprint(&live.join("cert.pem"));
    assert_ne!(first, placeholder_fp);
    assert_eq!(fingerprint(&live.join("fullchain.pem")), first);
    wait_served(&endpoint, &first, WAIT).await;
    assert_metrics(&metrics, &[("ok", 1.0)], &[]);

    // 2. The emulator's clock crosses the renewal point: renewed, reloaded, served.
    emu.shared().advance_clock(time::Duration::days(21));
    let report = agent.pass(cert, CheckOptions::default()).await.unwrap();
    assert!(report.install_changed, "{report:?}");
    let second = fingerprint(&live.join("cert.pem"));
    assert_ne!(second, first);
    wait_served(&endpoint, &second, WAIT).await;
    assert_metrics(&metrics, &[("ok", 2.0)], &[]);

    // 3. A syntax error in an included file: a forced renewal is issued and installed, `-t`
    //    fails with Apache's message, the files are put back, and Apache, never restarted,
    //    still serves the old certificate.
    std::fs::write(d.join("extra.conf"), "SSLBogusDirective on\n").unwrap();
    let err = agent
        .pass(cert, FORCE)
        .await
        .expect_err("the config test must fail");
    assert_eq!(err.kind(), "config_test_failed", "{err}");
    let e = reload_error(err);
    assert_eq!(e.stage, Stage::ConfigTest, "{e}");
    assert!(e.stderr.contains("SSLBogusDirective"), "{}", e.stderr);
    assert!(
        e.to_string().contains("Invalid command"),
        "Apache's stderr is reported: {e}"
    );
    assert_eq!(e.rollback.files, Ok(()), "{e}");
    assert_eq!(e.rollback.reload, None, "nothing was restarted: {e}");
    assert_eq!(e.rollback.old_served, Some(Ok(())), "{e}");
    assert!(!e.detail.is_empty());
    assert_eq!(
        fingerprint(&live.join("cert.pem")),
        second,
        "the previous files are back"
    );
    assert_eq!(fingerprint(&live.join("fullchain.pem")), second);
    assert_eq!(
        served(&endpoint).await,
        second,
        "the old certificate is still served"
    );
    assert_metrics(
        &metrics,
        &[("ok", 2.0), ("config_test_failed", 1.0)],
        &[("complete", 1.0)],
    );

    // 4. The syntax is fixed, but the key directive now names a copy of the installed key, a
    //    file the agent does not manage. A forced renewal installs a new pair; `-t` passes (it
    //    does not load certificates); the graceful restart finds the new certificate with the
    //    old key and the whole server exits; the check sees the new certificate never served;
    //    the rollback restores the files and `-k graceful` starts Apache again on the old pair.
    std::fs::write(d.join("extra.conf"), "# included\n").unwrap();
    let pinned = d.join("pinned.key");
    std::fs::copy(live.join("privkey.pem"), &pinned).unwrap();
    write_key_conf(d, &pinned);
    let err = agent
        .pass(cert, FORCE)
        .await
        .expect_err("the served-certificate check must fail");
    assert_eq!(err.kind(), "verify_failed", "{err}");
    let e = reload_error(err);
    assert_eq!(e.stage, Stage::Verify, "{e}");
    let stages: Vec<Stage> = e.steps.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::ConfigTest,
            Stage::Reload,
            Stage::Verify,
            Stage::RestoreFiles,
            Stage::RollbackReload,
            Stage::RollbackReload,
            Stage::RollbackVerify,
        ],
        "{e}"
    );
    assert_eq!(e.rollback.files, Ok(()), "{e}");
    assert_eq!(e.rollback.reload, Some(Ok(())), "{e}");
    assert_eq!(e.rollback.old_served, Some(Ok(())), "{e}");
    // What the check saw last: the server gone (or, had it survived, the old certificate).
    assert!(
        e.detail.contains("expected the new certificate")
            && (e.detail.contains("connect") || e.detail.contains(&second)),
        "{}",
        e.detail
    );
    let log = std::fs::read_to_string(d.join("error.log")).unwrap();
    assert!(log.contains("AH02565"), "Apache logged the mismatch: {log}");
    assert_eq!(
        fingerprint(&live.join("cert.pem")),
        second,
        "the previous files are back"
    );
    assert_eq!(fingerprint(&live.join("fullchain.pem")), second);
    wait_served(&endpoint, &second, WAIT).await;
    assert_metrics(
        &metrics,
        &[
            ("ok", 2.0),
            ("config_test_failed", 1.0),
            ("verify_failed", 1.0),
        ],
        &[("complete", 2.0)],
    );

    // 5. The configuration is repaired: the next forced renewal goes through and is served.
    write_key_conf(d, &live.join("privkey.pem"));
    let report = agent.pass(cert, FORCE).await.unwrap();
    assert!(report.install_changed, "{report:?}");
    let third = fingerprint(&live.join("cert.pem"));
    assert_ne!(third, second);
    wait_served(&endpoint, &third, WAIT).await;
    assert_metrics(
        &metrics,
        &[
            ("ok", 3.0),
            ("config_test_failed", 1.0),
            ("verify_failed", 1.0),
        ],
        &[("complete", 2.0)],
    );
    let scrape = metrics.encode().unwrap();
    assert_eq!(
        sample(
            &scrape,
            "ccm_agent_rollbacks_total",
            &[("name", "web"), ("result", "incomplete")]
        ),
        None,
        "{scrape}"
    );
}
