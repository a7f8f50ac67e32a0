//! A real nginx on a loopback high port, run unprivileged-style from its own prefix under a temp
//! directory, serving TLS from the files the agent installs. After `install::install` swaps in a
//! new certificate, `reload::apply_after_install` must make nginx serve it (checked over TLS);
//! when the configuration breaks, the rollback must leave the old certificate served and the
//! error must carry nginx's own stderr.
//!
//! Without nginx it fails under CI (`CI=true`; CI installs nginx) and is skipped with a message
//! elsewhere.

#![allow(clippy::unwrap_used)]

mod reload_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_agent::reload::{
    self, Hooks, NginxAction, ReloadAction, ReloadPlan, SignalName, Stage, apply_after_install,
};
use reload_common::*;

/// Verify window: long enough for a loaded CI machine, short enough to keep failures quick.
const VERIFY: Duration = Duration::from_secs(10);

struct Nginx {
    binary: PathBuf,
    prefix: PathBuf,
    conf: PathBuf,
    pid_file: PathBuf,
    port: u16,
    _running: Running,
}

/// Writes the configuration (certificate from the agent's files; the key from `key`), and
/// starts nginx as a daemon.
fn start(site: &Site, key: &Path) -> Option<Nginx> {
    let binary = nginx::find()?;
    let dir = site.dir();
    let port = free_port();
    let conf = nginx::write_config(dir, port, SNI, &site.paths.fullchain, key);
    let running = nginx::start(&binary, dir, &conf);
    Some(Nginx {
        binary,
        prefix: dir.to_owned(),
        conf,
        pid_file: nginx::pid_file(dir),
        port,
        _running: running,
    })
}

impl Nginx {
    fn action(&self, by_pid: bool) -> ReloadAction {
        ReloadAction::Nginx(NginxAction {
            binary: self.binary.clone(),
            config: Some(self.conf.clone()),
            prefix: Some(self.prefix.clone()),
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
async fn the_new_certificate_is_served_after_the_reload() {
    let site = Site::new();
    let (a, b, c) = (leaf(), leaf(), leaf());
    assert!(site.install(&a).changed);
    let key = site.paths.key.clone();
    let Some(nginx) = start(&site, &key) else {
        return;
    };
    let ep = endpoint(nginx.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;

    // B, reloaded by SIGHUP to the master; a deploy hook records what it was told.
    let hook_out = site.dir().join("deploy.env");
    let mut plan = nginx.plan(nginx.action(true));
    plan.hooks.deploy = vec![reload::Argv::shell(format!(
        "echo \"$CCM_CERT_NAME $CCM_OLD_FINGERPRINT $CCM_NEW_FINGERPRINT $CCM_FULLCHAIN_PATH\" > {}",
        hook_out.display()
    ))];
    let outcome = site.install(&b);
    let report = apply_after_install(&plan, &site.change(&outcome, &a, &b), site.rollback())
        .await
        .unwrap();
    assert!(report.verified[0].matches(&b.fingerprint), "{report:?}");
    // Waited for: an old worker may still answer a connection or two.
    wait_served(&ep, &b.fingerprint, VERIFY).await;
    assert_eq!(
        std::fs::read_to_string(&hook_out).unwrap().trim(),
        format!(
            "www {} {} {}",
            a.fingerprint,
            b.fingerprint,
            site.paths.fullchain.display()
        )
    );
    let stages: Vec<Stage> = report.steps.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::ConfigTest,
            Stage::Reload,
            Stage::Verify,
            Stage::DeployHook
        ]
    );

    // C, reloaded by `nginx -s reload`; the context read back from the state directory, as the
    // daemon builds it.
    let outcome = site.install(&c);
    let plan = nginx.plan(nginx.action(false));
    let ctx = reload::ChangeContext::after_install(
        &site.state,
        NAME,
        reload::InstalledPaths::from(&site.paths),
        outcome.changed,
    )
    .unwrap();
    assert_eq!(ctx, site.change(&outcome, &b, &c));
    apply_after_install(&plan, &ctx, site.rollback())
        .await
        .unwrap();
    // Waited for: an old worker may still answer a connection or two.
    wait_served(&ep, &c.fingerprint, VERIFY).await;

    // Installing C again changes nothing: nothing runs, C stays.
    let outcome = site.install(&c);
    assert!(!outcome.changed);
    let report = apply_after_install(&plan, &site.change(&outcome, &c, &c), site.rollback())
        .await
        .unwrap();
    assert!(!report.ran && report.steps.is_empty());
}

/// The configuration reads the key from a file the agent does not manage (a common mistake):
/// after the swap, certificate and key no longer match and `nginx -t` says so.
#[tokio::test]
async fn a_failed_config_test_rolls_back_and_the_old_certificate_stays() {
    let site = Site::new();
    let (a, b) = (leaf(), leaf());
    site.install(&a);
    let pinned = site.dir().join("pinned.key");
    std::fs::write(&pinned, &a.key).unwrap();
    let Some(nginx) = start(&site, &pinned) else {
        return;
    };
    let ep = endpoint(nginx.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;

    let outcome = site.install(&b);
    assert_eq!(site.installed_fingerprint(), b.fingerprint);
    let plan = nginx.plan(nginx.action(true));
    let e = apply_after_install(&plan, &site.change(&outcome, &a, &b), site.rollback())
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::ConfigTest, "{e}");
    assert_eq!(e.result_label(), "config_test_failed");
    // nginx's own words, in the error and on its own.
    assert!(e.stderr.contains("key values mismatch"), "{}", e.stderr);
    assert!(e.to_string().contains("key values mismatch"), "{e}");
    assert!(e.to_string().contains("pinned.key"), "{e}");
    // Rolled back: files restored; no reload had run, so none was needed; A still served.
    assert_eq!(e.rollback.files, Ok(()));
    assert_eq!(e.rollback.reload, None);
    assert_eq!(e.rollback.old_served, Some(Ok(())));
    assert!(e.rollback.complete());
    assert_eq!(site.installed_fingerprint(), a.fingerprint);
    assert_eq!(served(&ep).await, a.fingerprint);
    // nginx itself accepts the restored files.
    run(&[
        nginx.binary.to_str().unwrap(),
        "-p",
        nginx.prefix.to_str().unwrap(),
        "-c",
        nginx.conf.to_str().unwrap(),
        "-t",
    ]);
}

/// A syntax error in an included file: the config test fails with nginx's message; the files
/// are put back and the running server, never reloaded, still serves the old certificate.
#[tokio::test]
async fn a_syntax_error_stops_before_the_reload() {
    let site = Site::new();
    let (a, b) = (leaf(), leaf());
    site.install(&a);
    let key = site.paths.key.clone();
    let Some(nginx) = start(&site, &key) else {
        return;
    };
    let ep = endpoint(nginx.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;
    std::fs::write(site.dir().join("extra.conf"), "ssl_bogus_directive on;\n").unwrap();

    let outcome = site.install(&b);
    let plan = nginx.plan(nginx.action(false));
    let e = apply_after_install(&plan, &site.change(&outcome, &a, &b), site.rollback())
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::ConfigTest);
    assert!(
        e.stderr
            .contains("unknown directive \"ssl_bogus_directive\""),
        "{}",
        e.stderr
    );
    assert!(e.rollback.complete(), "{}", e.rollback);
    assert_eq!(site.installed_fingerprint(), a.fingerprint);
    assert_eq!(served(&ep).await, a.fingerprint);
}

/// Without a config test (a bare SIGHUP, as many renewal hooks do), the nginx master rejects the
/// new configuration, logs it, keeps the old one, and nothing reports an error: the
/// served-certificate check is what notices, and the rollback reloads the old files again.
#[tokio::test]
async fn a_reload_nginx_rejected_silently_is_caught_by_the_served_check() {
    let site = Site::new();
    let (a, b) = (leaf(), leaf());
    site.install(&a);
    let pinned = site.dir().join("pinned.key");
    std::fs::write(&pinned, &a.key).unwrap();
    let Some(nginx) = start(&site, &pinned) else {
        return;
    };
    let ep = endpoint(nginx.port);
    wait_served(&ep, &a.fingerprint, VERIFY).await;

    let outcome = site.install(&b);
    let mut plan = nginx.plan(ReloadAction::Signal {
        pid_file: nginx.pid_file.clone(),
        signal: SignalName::Hup,
    });
    plan.verify_timeout = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let e = apply_after_install(&plan, &site.change(&outcome, &a, &b), site.rollback())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(e.stage, Stage::Verify, "{e}");
    // What was served instead: the old certificate.
    assert!(e.detail.contains(&a.fingerprint), "{}", e.detail);
    assert_eq!(e.rollback.reload, Some(Ok(())));
    assert_eq!(e.rollback.old_served, Some(Ok(())));
    assert_eq!(site.installed_fingerprint(), a.fingerprint);
    assert_eq!(served(&ep).await, a.fingerprint);
    // nginx logged the rejection the signal could not report.
    let log = std::fs::read_to_string(site.dir().join("error.log")).unwrap();
    assert!(log.contains("key values mismatch"), "{log}");
}
