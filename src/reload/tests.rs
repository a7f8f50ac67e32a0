#![allow(clippy::unwrap_used)]
//! The sequence against an in-process TLS server that loads its certificate files at every
//! connection, commands and shell hooks. The real nginx and apache are in `tests/reload_*.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use time::macros::datetime;
use tokio::net::TcpListener;

use super::*;
use crate::pki::{self, CertificateSpec, DistinguishedName, KeyAlgorithm, SubjectAltName};

struct Pair {
    cert: String,
    key: String,
    fp: String,
}

fn pair(cn: &str) -> Pair {
    let key = pki::generate_key(KeyAlgorithm::Ec256).unwrap();
    let spec = CertificateSpec::new_leaf(
        DistinguishedName::with_common_name(cn),
        datetime!(2026-01-01 00:00 UTC),
        datetime!(2036-01-01 00:00 UTC),
        vec![SubjectAltName::Dns(cn.into())],
    );
    let cert = pki::self_signed(&spec, &key).unwrap();
    let fp = fingerprint_pem(&cert).unwrap();
    Pair {
        cert,
        key: key.to_pem(),
        fp,
    }
}

fn write_pair(dir: &Path, p: &Pair) {
    std::fs::write(dir.join("cert.pem"), &p.cert).unwrap();
    std::fs::write(dir.join("privkey.pem"), &p.key).unwrap();
}

/// A TLS server on 127.0.0.1 that reads `dir/cert.pem` and `dir/privkey.pem` at every
/// connection (a server that always serves what is on disk).
async fn file_server(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let dir = dir.clone();
            tokio::spawn(async move {
                let cert = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
                let key = std::fs::read_to_string(dir.join("privkey.pem")).unwrap();
                handshake(tcp, &cert, &key).await;
            });
        }
    });
    port
}

/// A TLS server on 127.0.0.1 that presents `script[i]` on its i-th connection, then the last
/// entry for ever (old and new workers taking turns right after a reload).
async fn scripted_server(script: Vec<(String, String)>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        for i in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (cert, key) = script[i.min(script.len() - 1)].clone();
            tokio::spawn(async move { handshake(tcp, &cert, &key).await });
        }
    });
    port
}

/// Completes (or fails) one server-side TLS handshake presenting `cert` with `key`.
async fn handshake(tcp: tokio::net::TcpStream, cert: &str, key: &str) {
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let _ = acceptor.accept(tcp).await;
}

fn endpoint(port: u16) -> VerifyEndpoint {
    VerifyEndpoint {
        address: "127.0.0.1".into(),
        port,
        sni: Some("www.example.com".into()),
    }
}

fn ctx(dir: &Path, old: &Pair, new: &Pair) -> ChangeContext {
    ChangeContext {
        name: "www".into(),
        changed: true,
        paths: InstalledPaths {
            cert: Some(dir.join("cert.pem")),
            chain: None,
            fullchain: None,
            key: Some(dir.join("privkey.pem")),
        },
        names: vec!["www.example.com".into(), "example.com".into()],
        old_fingerprint: Some(old.fp.clone()),
        new_fingerprint: new.fp.clone(),
    }
}

fn sh(script: impl Into<String>) -> Argv {
    Argv::shell(script)
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn probe_reads_the_served_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let a = pair("www.example.com");
    write_pair(dir.path(), &a);
    let port = file_server(dir.path().to_owned()).await;
    let fp = served_fingerprint(&endpoint(port), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(fp, a.fp);
    // By IP, without SNI.
    let fp = served_fingerprint(
        &VerifyEndpoint {
            address: "127.0.0.1".into(),
            port,
            sni: None,
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(fp, a.fp);

    // Nothing listening: a connect error naming the endpoint.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = served_fingerprint(&endpoint(closed_port), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&closed_port.to_string()), "{e}");

    // A server that accepts and never answers: the time limit.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let e = served_fingerprint(&endpoint(silent_port), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::Timeout { .. }), "{e}");
    drop(silent);
}

/// One matching handshake is not enough: right after a reload an old worker can still accept
/// the next connection. The wait goes on until [`probe::PROBE_CONFIRMATIONS`] handshakes in a
/// row present the new certificate.
#[tokio::test]
async fn the_served_check_waits_for_the_new_certificate_to_hold() {
    let (old, new) = (pair("www.example.com"), pair("www.example.com"));
    let o = (old.cert.clone(), old.key.clone());
    let n = (new.cert.clone(), new.key.clone());
    // new, old (a draining worker), then new for ever.
    let port = scripted_server(vec![n.clone(), o, n.clone()]).await;
    let obs =
        probe::wait_for_fingerprint(&[endpoint(port)], &new.fp, Duration::from_secs(20)).await;
    assert_eq!(obs.len(), 1);
    assert!(obs[0].matches(&new.fp), "{}", obs[0]);
    assert_eq!(
        obs[0].attempts,
        2 + probe::PROBE_CONFIRMATIONS,
        "{}",
        obs[0]
    );

    // Two matching handshakes, then the old certificate until the time runs out: not served.
    let script = vec![n.clone(), n, (old.cert.clone(), old.key.clone())];
    let port = scripted_server(script).await;
    let obs = probe::wait_for_fingerprint(&[endpoint(port)], &new.fp, Duration::from_secs(3)).await;
    assert!(!obs[0].matches(&new.fp), "{}", obs[0]);
    assert!(obs[0].matches(&old.fp), "{}", obs[0]);
}

#[tokio::test]
async fn success_runs_everything_in_order_with_the_hook_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let (a, b) = (pair("www.example.com"), pair("www.example.com"));
    write_pair(dir.path(), &b); // installed
    let port = file_server(dir.path().to_owned()).await;
    let logcmd = |what: &str| {
        sh(format!(
            "echo \"{what} $CCM_HOOK $CCM_CERT_NAME $CCM_OLD_FINGERPRINT $CCM_NEW_FINGERPRINT \
             [$CCM_CERT_NAMES] $CCM_CERT_PATH $CCM_KEY_PATH [$CCM_CHAIN_PATH] \
             $RENEWED_LINEAGE ${{CCM_RESULT:-none}}\" >> {}",
            log.display()
        ))
    };
    let plan = ReloadPlan {
        actions: vec![ReloadAction::Command {
            argv: sh(format!("echo reload >> {}", log.display())),
            timeout: Duration::from_secs(5),
        }],
        verify: vec![endpoint(port)],
        verify_timeout: Duration::from_secs(5),
        hooks: Hooks {
            pre: vec![logcmd("pre")],
            deploy: vec![logcmd("deploy")],
            post: vec![logcmd("post")],
            timeout: Duration::from_secs(5),
        },
    };
    let c = ctx(dir.path(), &a, &b);
    let rolled_back = std::cell::Cell::new(false);
    let report = apply_after_install(&plan, &c, || {
        rolled_back.set(true);
        Ok::<_, String>(())
    })
    .await
    .unwrap();
    assert!(!rolled_back.get());
    assert!(report.ran);
    assert!(report.hook_failures.is_empty());
    assert_eq!(report.verified.len(), 1);
    assert!(report.verified[0].matches(&b.fp));
    let d = dir.path().display();
    let tail = format!(
        "www {} {} [www.example.com example.com] {d}/cert.pem {d}/privkey.pem [] {d}",
        a.fp, b.fp
    );
    assert_eq!(
        log_lines(&log),
        vec![
            format!("pre pre {tail} none"),
            "reload".to_owned(),
            format!("deploy deploy {tail} none"),
            format!("post post {tail} success"),
        ]
    );
    let stages: Vec<Stage> = report.steps.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::PreHook,
            Stage::Reload,
            Stage::Verify,
            Stage::DeployHook,
            Stage::PostHook
        ]
    );
}

#[tokio::test]
async fn nothing_runs_when_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = sh(format!("touch {}", marker.display()));
    let plan = ReloadPlan {
        actions: vec![ReloadAction::Command {
            argv: touch.clone(),
            timeout: Duration::from_secs(5),
        }],
        verify: vec![endpoint(1)],
        verify_timeout: Duration::from_secs(1),
        hooks: Hooks {
            pre: vec![touch.clone()],
            deploy: vec![touch.clone()],
            post: vec![touch],
            timeout: Duration::from_secs(5),
        },
    };
    let a = pair("www.example.com");
    let mut c = ctx(dir.path(), &a, &a);
    c.changed = false;
    let report = apply_after_install(&plan, &c, || Err::<(), _>("must not be called"))
        .await
        .unwrap();
    assert!(!report.ran);
    assert!(report.steps.is_empty());
    assert!(!marker.exists());
}

#[tokio::test]
async fn verify_mismatch_rolls_back_and_reloads_again() {
    let dir = tempfile::tempdir().unwrap();
    let served_dir = dir.path().join("other");
    std::fs::create_dir(&served_dir).unwrap();
    let log = dir.path().join("log");
    let (a, b, other) = (
        pair("www.example.com"),
        pair("www.example.com"),
        pair("www.example.com"),
    );
    write_pair(dir.path(), &b);
    // The endpoint serves a third certificate, whatever is installed (wrong server block).
    write_pair(&served_dir, &other);
    let port = file_server(served_dir).await;
    let plan = ReloadPlan {
        actions: vec![ReloadAction::Command {
            argv: sh(format!("echo reload >> {}", log.display())),
            timeout: Duration::from_secs(5),
        }],
        verify: vec![endpoint(port)],
        verify_timeout: Duration::from_millis(800),
        hooks: Hooks {
            post: vec![sh(format!("echo post $CCM_RESULT >> {}", log.display()))],
            deploy: vec![sh(format!("echo deploy >> {}", log.display()))],
            ..Hooks::default()
        },
    };
    let c = ctx(dir.path(), &a, &b);
    let calls = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let e = apply_after_install(&plan, &c, || {
        calls.fetch_add(1, Ordering::SeqCst);
        write_pair(dir.path(), &a);
        Ok::<_, String>(())
    })
    .await
    .unwrap_err();
    // Two verify windows (new, then old), bounded.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(e.stage, Stage::Verify);
    assert_eq!(e.result_label(), "verify_failed");
    assert!(e.detail.contains(&other.fp), "{}", e.detail);
    assert!(e.detail.contains(&b.fp), "{}", e.detail);
    assert_eq!(e.rollback.files, Ok(()));
    assert_eq!(e.rollback.reload, Some(Ok(())));
    // The endpoint serves neither: the old certificate is not back either, and that is said.
    assert!(
        matches!(&e.rollback.old_served, Some(Err(m)) if m.contains(&a.fp)),
        "{:?}",
        e.rollback
    );
    assert!(!e.rollback.complete());
    assert_eq!(log_lines(&log), ["reload", "reload", "post failure"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cert.pem")).unwrap(),
        a.cert
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("certificate www: served-certificate check failed"),
        "{msg}"
    );
    assert!(
        msg.contains("previous files restored, reloaded, old certificate NOT served"),
        "{msg}"
    );

    let registry = prometheus::Registry::new();
    let m = ReloadMetrics::register(&registry).unwrap();
    m.observe("www", &Err(e));
    assert_eq!(
        m.reloads.with_label_values(&["www", "verify_failed"]).get(),
        1
    );
    assert_eq!(m.reloads.with_label_values(&["www", "ok"]).get(), 0);
    assert_eq!(
        m.rollbacks.with_label_values(&["www", "incomplete"]).get(),
        1
    );
    assert_eq!(m.served_match.with_label_values(&["www"]).get(), 0);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(r#"ccm_agent_reloads_total{name="www",result="verify_failed"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn failed_reload_command_rolls_back_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pair("www.example.com"), pair("www.example.com"));
    write_pair(dir.path(), &b);
    let port = file_server(dir.path().to_owned()).await;
    // Fails while the new certificate is installed, works once the old one is back.
    let script = format!(
        "if grep -q '{}' {}/cert.fp; then echo 'emerg: cannot load certificate' >&2; exit 1; fi",
        b.fp,
        dir.path().display()
    );
    std::fs::write(dir.path().join("cert.fp"), &b.fp).unwrap();
    let plan = ReloadPlan {
        actions: vec![ReloadAction::Command {
            argv: sh(script),
            timeout: Duration::from_secs(5),
        }],
        verify: vec![endpoint(port)],
        verify_timeout: Duration::from_secs(3),
        hooks: Hooks {
            deploy: vec![sh(format!("touch {}/deployed", dir.path().display()))],
            ..Hooks::default()
        },
    };
    let c = ctx(dir.path(), &a, &b);
    let e = apply_after_install(&plan, &c, || {
        write_pair(dir.path(), &a);
        std::fs::write(dir.path().join("cert.fp"), &a.fp)
    })
    .await
    .unwrap_err();
    assert_eq!(e.stage, Stage::Reload);
    assert_eq!(e.stderr, "emerg: cannot load certificate\n");
    assert!(
        e.detail.contains("emerg: cannot load certificate"),
        "{}",
        e.detail
    );
    assert_eq!(e.rollback.reload, Some(Ok(())));
    assert_eq!(e.rollback.old_served, Some(Ok(())));
    assert!(e.rollback.complete());
    assert!(!dir.path().join("deployed").exists());
    let registry = prometheus::Registry::new();
    let m = ReloadMetrics::register(&registry).unwrap();
    m.observe("www", &Err(e));
    assert_eq!(
        m.reloads.with_label_values(&["www", "reload_failed"]).get(),
        1
    );
    assert_eq!(m.rollbacks.with_label_values(&["www", "complete"]).get(), 1);
    // Served again: the old certificate, which is the installed one after the rollback.
    assert_eq!(m.served_match.with_label_values(&["www"]).get(), 1);
}

#[tokio::test]
async fn failed_pre_hook_rolls_back_without_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("reloaded");
    let (a, b) = (pair("www.example.com"), pair("www.example.com"));
    let plan = ReloadPlan {
        actions: vec![ReloadAction::Command {
            argv: sh(format!("touch {}", marker.display())),
            timeout: Duration::from_secs(5),
        }],
        hooks: Hooks {
            pre: vec![sh("echo 'maintenance window closed' >&2; exit 2")],
            ..Hooks::default()
        },
        ..ReloadPlan::default()
    };
    let c = ctx(dir.path(), &a, &b);
    let e = apply_after_install(&plan, &c, || Ok::<_, String>(()))
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::PreHook);
    assert_eq!(e.result_label(), "pre_hook_failed");
    assert!(e.detail.starts_with("pre hook `/bin/sh -c"), "{}", e.detail);
    assert!(
        e.detail.contains("maintenance window closed"),
        "{}",
        e.detail
    );
    assert_eq!(e.rollback.files, Ok(()));
    assert_eq!(e.rollback.reload, None, "no reload had run");
    assert!(!marker.exists());
}

#[tokio::test]
async fn a_hanging_hook_is_killed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pair("www.example.com"), pair("www.example.com"));
    let after = dir.path().join("after");
    let plan = ReloadPlan {
        hooks: Hooks {
            deploy: vec![
                sh(format!("sleep 30; touch {}", after.display())),
                sh(format!("touch {}", after.display())),
            ],
            timeout: Duration::from_secs(2),
            ..Hooks::default()
        },
        ..ReloadPlan::default()
    };
    let c = ctx(dir.path(), &a, &b);
    let started = std::time::Instant::now();
    let report = apply_after_install(&plan, &c, || Err::<(), _>("not called"))
        .await
        .unwrap();
    // Killed at 2s, not left to its 30s.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(report.hook_failures.len(), 1, "{:?}", report.hook_failures);
    assert!(
        report.hook_failures[0].contains("killed after 2s"),
        "{}",
        report.hook_failures[0]
    );
    // The next hook still ran.
    assert!(after.exists());
    let registry = prometheus::Registry::new();
    let m = ReloadMetrics::register(&registry).unwrap();
    m.observe("www", &Ok(report));
    assert_eq!(
        m.hook_failures.with_label_values(&["www", "deploy"]).get(),
        1
    );
    assert_eq!(m.reloads.with_label_values(&["www", "ok"]).get(), 1);
}

#[tokio::test]
async fn signal_action_reaches_the_process_in_the_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hup");
    let ready = dir.path().join("ready");
    let pid_file = dir.path().join("sidecar.pid");
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "trap 'touch {}' HUP; touch {}; while :; do sleep 0.05; done",
            marker.display(),
            ready.display()
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, format!("{}\n", child.id().unwrap())).unwrap();
    // The trap is set once `ready` exists.
    for _ in 0..200 {
        if ready.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready.exists(), "the shell did not start");
    let action = ReloadAction::Signal {
        pid_file: pid_file.clone(),
        signal: SignalName::Hup,
    };
    let (a, b) = (pair("www.example.com"), pair("www.example.com"));
    let plan = ReloadPlan {
        actions: vec![action],
        ..ReloadPlan::default()
    };
    let c = ctx(dir.path(), &a, &b);
    apply_after_install(&plan, &c, || Err::<(), _>("not called"))
        .await
        .unwrap();
    for _ in 0..200 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marker.exists(), "the process did not get SIGHUP");
    child.kill().await.unwrap();

    // A stale pid file: the error names it.
    std::fs::write(&pid_file, "999999999\n").unwrap();
    let e = apply_after_install(&plan, &c, || Ok::<_, String>(()))
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::Reload);
    assert!(e.detail.contains("sidecar.pid"), "{}", e.detail);
    std::fs::write(&pid_file, "nginx\n").unwrap();
    let e = apply_after_install(&plan, &c, || Ok::<_, String>(()))
        .await
        .unwrap_err();
    assert!(e.detail.contains("is not a process id"), "{}", e.detail);
}

#[test]
fn commands_for_each_server() {
    let nginx = ReloadAction::Nginx(NginxAction {
        binary: "/usr/sbin/nginx".into(),
        config: Some("/srv/n/nginx.conf".into()),
        prefix: Some("/srv/n".into()),
        ..NginxAction::new()
    });
    assert_eq!(
        nginx.config_test().unwrap().to_string(),
        "/usr/sbin/nginx -p /srv/n -c /srv/n/nginx.conf -t"
    );
    assert_eq!(
        nginx.reload_step().to_string(),
        "`/usr/sbin/nginx -p /srv/n -c /srv/n/nginx.conf -s reload`"
    );
    let by_pid = ReloadAction::Nginx(NginxAction {
        pid_file: Some("/run/nginx.pid".into()),
        ..NginxAction::new()
    });
    assert_eq!(
        by_pid.reload_step().to_string(),
        "SIGHUP to the pid in /run/nginx.pid"
    );
    let by_unit = ReloadAction::Nginx(NginxAction {
        systemd_unit: Some("nginx.service".into()),
        ..NginxAction::new()
    });
    assert_eq!(
        by_unit.reload_step().to_string(),
        "`systemctl reload nginx.service`"
    );
    assert_eq!(by_unit.config_test().unwrap().to_string(), "nginx -t");
    let apache = ReloadAction::Apache(ApacheAction {
        config: Some("/srv/a/httpd.conf".into()),
        ..ApacheAction::new()
    });
    assert_eq!(
        apache.config_test().unwrap().to_string(),
        "apachectl -f /srv/a/httpd.conf -t"
    );
    assert_eq!(
        apache.reload_step().to_string(),
        "`apachectl -f /srv/a/httpd.conf -k graceful`"
    );
    let apache_pid = ReloadAction::Apache(ApacheAction {
        pid_file: Some("/run/apache2/apache2.pid".into()),
        ..ApacheAction::new()
    });
    assert_eq!(
        apache_pid.reload_step().to_string(),
        "SIGUSR1 to the pid in /run/apache2/apache2.pid"
    );
}

#[test]
fn describe_lists_what_would_run() {
    let plan = ReloadPlan {
        actions: vec![
            ReloadAction::Nginx(NginxAction {
                pid_file: Some("/run/nginx.pid".into()),
                ..NginxAction::new()
            }),
            ReloadAction::Systemd {
                unit: "haproxy.service".into(),
                mode: SystemdMode::Reload,
                timeout: Duration::from_secs(30),
            },
        ],
        verify: vec![endpoint(443)],
        verify_timeout: Duration::from_secs(20),
        hooks: Hooks {
            pre: vec![sh("logger pre")],
            deploy: vec![Argv::new(["/usr/local/bin/notify", "renewed cert"])],
            post: vec![],
            timeout: Duration::from_secs(60),
        },
    };
    assert_eq!(
        describe(&plan),
        [
            "pre hook: `/bin/sh -c 'logger pre'` (time limit 1m)",
            "nginx: config test `nginx -t`",
            "nginx: reload SIGHUP to the pid in /run/nginx.pid",
            "systemd haproxy.service: reload `systemctl reload haproxy.service` (time limit 30s)",
            "verify: 127.0.0.1:443 (SNI www.example.com) serves the new certificate within 20s",
            "deploy hook: `/usr/local/bin/notify 'renewed cert'` (time limit 1m)",
            "on failure: restore the previous files, reload again, check the old certificate",
        ]
    );
    assert!(describe(&ReloadPlan::default()).is_empty());
}

#[test]
fn signal_names() {
    assert_eq!(SignalName::parse("SIGHUP"), Some(SignalName::Hup));
    assert_eq!(SignalName::parse("usr2"), Some(SignalName::Usr2));
    assert_eq!(SignalName::parse("KILL"), None);
    assert_eq!(SignalName::Winch.as_str(), "WINCH");
}
