//! A real Apache httpd (`apache2 -f <temp>/httpd.conf`) on a loopback high port, with its own
//! ServerRoot, pid file, runtime directory and logs under a temp directory, serving TLS from the
//! files the agent installs. The agent's reload must make it serve a new certificate (checked
//! over TLS), and roll back when the configuration is broken.
//!
//! Apache's `-t` checks syntax only: mod_ssl loads certificates at startup, so a key that does
//! not match passes the test, and the graceful restart then takes the whole server down
//! ("AH02565 ... do not match", "Configuration Failed, exiting") while `-k graceful` exits 0.
//! The served-certificate check is what notices; the rollback's `-k graceful` starts the server
//! again on the old files.
//!
//! Without apache2/httpd it fails under CI (`CI=true`; CI installs apache2) and is skipped with a
//! message elsewhere.

#![allow(clippy::unwrap_used)]

mod reload_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_agent::reload::{
    ApacheAction, Hooks, ProbeError, ReloadAction, ReloadPlan, Stage, apply_after_install,
    served_fingerprint,
};
use reload_common::*;

const VERIFY: Duration = Duration::from_secs(10);

struct Apache {
    binary: PathBuf,
    conf: PathBuf,
    pid_file: PathBuf,
    port: u16,
    _running: Running,
}

fn start(site: &Site, key: &Path) -> Option<Apache> {
    let installed = apache::find()?;
    let dir = site.dir();
    let port = free_port();
    let conf = installed.write_config(dir, port, SNI, &site.paths.fullchain, key);
    let running = installed.start(dir, &conf);
    Some(Apache {
        binary: installed.binary,
        conf,
        pid_file: apache::pid_file(dir),
        port,
        _running: running,
    })
}

impl Apache {
    /// The server binary itself takes the same `-f`, `-t` and `-k graceful` as apachectl.
    fn action(&self, by_pid: bool) -> ReloadAction {
        ReloadAction::Apache(ApacheAction {
            binary: self.binary.clone(),
            config: Some(self.conf.clone()),
            pid_file: by_pid.then(|| self.pid_file.clone()),
            systemd_unit: None,
            timeout: Duration::from_secs(30),
        })
    }

    fn plan(&self, action: ReloadAction) -> ReloadPlan {
        ReloadPlan {
            actions: vec![action],
            verify: vec![endpoint(self.port)],
            verify_timeout: VERIFY,
            hooks: Hooks::default(),
        }
    }
}

#[tokio::test]
async fn the_new_certificate_is_served_after_a_graceful_restart() {
    let site = Site::new();
    let (a, b, c) = (leaf(), leaf(), leaf());
    site.install(&a);
    let key = site.paths.key.clone();
    let Some(apache) = start(&site, &key) else {
        return;
    };
    let ep = endpoint(apache.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;

    // B, by `apache2 -f CONF -k graceful`.
    let outcome = site.install(&b);
    let report = apply_after_install(
        &apache.plan(apache.action(false)),
        &site.change(&outcome, &a, &b),
        site.rollback(),
    )
    .await
    .unwrap();
    assert!(report.verified[0].matches(&b.fingerprint));
    // Waited for: an old worker may still answer a connection or two.
    wait_served(&ep, &b.fingerprint, VERIFY).await;
    let stages: Vec<Stage> = report.steps.iter().map(|s| s.stage).collect();
    assert_eq!(stages, [Stage::ConfigTest, Stage::Reload, Stage::Verify]);

    // C, by SIGUSR1 to the parent.
    let outcome = site.install(&c);
    apply_after_install(
        &apache.plan(apache.action(true)),
        &site.change(&outcome, &b, &c),
        site.rollback(),
    )
    .await
    .unwrap();
    // Waited for: an old worker may still answer a connection or two.
    wait_served(&ep, &c.fingerprint, VERIFY).await;
}

/// A key Apache reads from a file the agent does not manage: `-t` passes, the graceful restart
/// kills the server, the check finds nothing listening, and the rollback brings it back with
/// the old certificate.
#[tokio::test]
async fn a_key_mismatch_is_caught_by_the_served_check_and_rolled_back() {
    let site = Site::new();
    let (a, b) = (leaf(), leaf());
    site.install(&a);
    let pinned = site.dir().join("pinned.key");
    std::fs::write(&pinned, &a.key).unwrap();
    let Some(apache) = start(&site, &pinned) else {
        return;
    };
    let ep = endpoint(apache.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;

    let outcome = site.install(&b);
    let mut plan = apache.plan(apache.action(false));
    plan.verify_timeout = Duration::from_secs(6);
    let e = apply_after_install(&plan, &site.change(&outcome, &a, &b), site.rollback())
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::Verify, "{e}");
    assert_eq!(e.result_label(), "verify_failed");
    assert!(e.detail.contains(&b.fingerprint), "{}", e.detail);
    assert_eq!(e.rollback.files, Ok(()));
    assert_eq!(e.rollback.reload, Some(Ok(())), "{}", e.rollback);
    assert_eq!(e.rollback.old_served, Some(Ok(())), "{}", e.rollback);
    assert_eq!(site.installed_fingerprint(), a.fingerprint);
    assert_eq!(served(&ep).await, a.fingerprint);
    let log = std::fs::read_to_string(site.dir().join("error.log")).unwrap();
    assert!(log.contains("AH02565"), "{log}");
    // What the check saw: the server gone (or, on a fast machine, still the old certificate).
    assert!(
        e.detail.contains("connect") || e.detail.contains(&a.fingerprint),
        "{}",
        e.detail
    );
}

/// A syntax error in an included file: `-t` fails with Apache's message, nothing is restarted,
/// the files are put back, and the old certificate is still served.
#[tokio::test]
async fn a_failed_config_test_rolls_back_and_the_old_certificate_stays() {
    let site = Site::new();
    let (a, b) = (leaf(), leaf());
    site.install(&a);
    let key = site.paths.key.clone();
    let Some(apache) = start(&site, &key) else {
        return;
    };
    let ep = endpoint(apache.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;
    std::fs::write(site.dir().join("extra.conf"), "SSLBogusDirective on\n").unwrap();

    let outcome = site.install(&b);
    let e = apply_after_install(
        &apache.plan(apache.action(false)),
        &site.change(&outcome, &a, &b),
        site.rollback(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.stage, Stage::ConfigTest, "{e}");
    assert!(e.stderr.contains("SSLBogusDirective"), "{}", e.stderr);
    assert!(e.to_string().contains("Invalid command"), "{e}");
    assert_eq!(e.rollback.reload, None);
    assert_eq!(e.rollback.old_served, Some(Ok(())));
    assert_eq!(site.installed_fingerprint(), a.fingerprint);
    assert_eq!(served(&ep).await, a.fingerprint);
    // The server was never touched: still the same parent.
    let probe = served_fingerprint(&ep, Duration::from_secs(5)).await;
    assert!(!matches!(probe, Err(ProbeError::Connect { .. })));
}

/// The same key mismatch with the reload by SIGUSR1 to the pid file: the graceful restart takes
/// the parent down and leaves a stale pid file, so the rollback cannot signal it; it starts the
/// server instead (`apache2 -f CONF -k start`), which comes back on the old files.
#[tokio::test]
async fn a_server_a_signalled_reload_took_down_is_started_again_by_the_rollback() {
    let site = Site::new();
    let (a, b) = (leaf(), leaf());
    site.install(&a);
    let pinned = site.dir().join("pinned.key");
    std::fs::write(&pinned, &a.key).unwrap();
    let Some(apache) = start(&site, &pinned) else {
        return;
    };
    let ep = endpoint(apache.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;
    let parent = std::fs::read_to_string(&apache.pid_file).unwrap();

    let outcome = site.install(&b);
    let mut plan = apache.plan(apache.action(true));
    plan.verify_timeout = Duration::from_secs(6);
    let e = apply_after_install(&plan, &site.change(&outcome, &a, &b), site.rollback())
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::Verify, "{e}");
    assert_eq!(e.rollback.reload, Some(Ok(())), "{}", e.rollback);
    assert_eq!(e.rollback.old_served, Some(Ok(())), "{}", e.rollback);
    assert!(e.rollback.complete(), "{}", e.rollback);
    let started = e
        .steps
        .iter()
        .find(|s| s.stage == Stage::RollbackReload && s.what.contains("-k start"));
    assert!(
        started.is_some(),
        "the rollback started the server: {:?}",
        e.steps
    );
    assert_eq!(site.installed_fingerprint(), a.fingerprint);
    assert_eq!(served(&ep).await, a.fingerprint);
    let now = std::fs::read_to_string(&apache.pid_file).unwrap();
    assert_ne!(parent.trim(), now.trim(), "a new parent");
}
