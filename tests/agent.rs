//! The agent as a whole: the daemon loop against the emulator (install at startup, renew when
//! the emulator's clock crosses the renewal point, metrics scraped and checked, status file),
//! the systemd notify protocol on a real datagram socket, and the CLI's exit codes.

mod prom_text;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_agent::agent::daemon::{self, RunOptions};
use ccm_agent::clock::Clock;
use ccm_agent::cloud::Credentials;
use ccm_agent::config::Config;
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::state::{StateLock, StatusFile};
use prom_text::sample;

async fn emulator_with_ca() -> (Emulator, String) {
    ccm_agent::cloud::install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let shared = emu.shared().clone();
    let (_, sub) = tokio::task::spawn_blocking(move || {
        ccm_agent::emulator::pca::ca::create_active_ca_pair(
            &shared,
            "agent test root",
            "agent test issuing CA",
        )
    })
    .await
    .expect("join")
    .expect("CA pair");
    (emu, sub)
}

fn config_text(dir: &Path, emu: &Emulator, ca_id: &str, metrics: &str, schedule: &str) -> String {
    let aksk = emu.aksk();
    format!(
        r#"
[agent]
state_dir = "{dir}/state"
schedule = "{schedule}"
host_id = "test-host"
retry_initial = "1s"
retry_max = "2s"

[metrics]
listen = "{metrics}"

[cloud]
endpoint = "{endpoint}"
timeout = "5s"

[cloud.auth]
access_key = "{ak}"
secret_key_env = "CCM_TEST_SK"
domain_id = "{domain}"

[defaults.output]
base_dir = "{dir}/live"

[[certificates]]
name = "web"
[certificates.pca]
ca_id = "{ca_id}"
sans = ["dns:web.test.internal", "ip:127.0.0.1"]
validity = {{ type = "DAY", value = 30 }}
extended_key_usage = ["server_auth"]

[[certificates]]
name = "api"
[certificates.pca]
ca_id = "{ca_id}"
mode = "apply"
subject = {{ common_name = "api.test.internal" }}
sans = ["dns:api.test.internal"]
validity = {{ type = "DAY", value = 30 }}
"#,
        dir = dir.display(),
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.unwrap_or_default(),
    )
}

async fn scrape(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

async fn wait_for<F: Fn() -> bool>(what: &str, limit: Duration, f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the agent's /readyz answers 200 (its first check finished).
async fn wait_ready(addr: &str) {
    let ready_url = format!("http://{addr}/readyz");
    let start = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(&ready_url).await
            && r.status() == 200
        {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fingerprint(path: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(path).ok()?;
    ccm_agent::pki::parse_cert(&pem)
        .ok()
        .map(|c| c.sha256_fingerprint_hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_installs_renews_and_reports() {
    let (emu, ca_id) = emulator_with_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let text = config_text(dir.path(), &emu, &ca_id, &addr, "*/1 * * * * *");
    let config = Arc::new(Config::from_str(&text, "test.toml").expect("config"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let shared = emu.shared().clone();
    let run = tokio::spawn(daemon::run(
        config.clone(),
        Credentials::AkSk(emu.aksk()),
        RunOptions {
            clock: Clock::from_fn(move || shared.now()),
            metrics_listener: Some(listener),
            shutdown: shutdown.clone(),
            on_cycle: None,
            notifier: ccm_agent::systemd::Notifier::disabled(),
            reload_config: None,
            config_path: None,
        },
    ));

    // Ready once the first check has installed everything.
    wait_ready(&addr).await;
    let web = dir.path().join("live/web");
    for f in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
        assert!(web.join(f).exists(), "{f} installed");
    }
    let first = fingerprint(&web.join("cert.pem")).expect("cert parses");
    let cert =
        ccm_agent::pki::parse_cert(&std::fs::read_to_string(web.join("cert.pem")).expect("read"))
            .expect("parse");
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        1,
        "csr mode for web"
    );
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate"),
        1,
        "apply mode for api"
    );

    let metrics = scrape(&addr).await;
    let not_after = sample(
        &metrics,
        "ccm_agent_certificate_not_after_timestamp_seconds",
        &[("name", "web")],
    )
    .expect("not_after metric");
    assert_eq!(not_after as i64, cert.not_after.unix_timestamp());
    let x509 = sample(
        &metrics,
        "x509_cert_not_after",
        &[("subject_CN", "web.test.internal")],
    )
    .expect("x509 exporter family");
    assert_eq!(x509 as i64, cert.not_after.unix_timestamp());
    assert!(
        sample(
            &metrics,
            "ccm_agent_api_requests_total",
            &[("service", "pca")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Cross the renewal point (2/3 of 30 days, minus at most the jitter): the next tick renews.
    emu.shared().advance_clock(time::Duration::days(21));
    let cert_path = web.join("cert.pem");
    wait_for("renewal", Duration::from_secs(30), || {
        fingerprint(&cert_path).is_some_and(|f| f != first)
    })
    .await;
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        2
    );
    let metrics = scrape(&addr).await;
    assert!(
        sample(
            &metrics,
            "ccm_agent_renewals_total",
            &[("name", "web"), ("result", "ok")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "renewal counted"
    );

    let status = StatusFile::load(&dir.path().join("state")).expect("status file");
    let web_status = status
        .certificates
        .iter()
        .find(|c| c.name == "web")
        .expect("web in status");
    assert!(web_status.next_renewal.is_some());
    assert!(web_status.last_error.is_none(), "{web_status:?}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops promptly")
        .expect("join")
        .expect("run ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_and_the_files_stay() {
    let (emu, ca_id) = emulator_with_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let text = config_text(dir.path(), &emu, &ca_id, &addr, "*/1 * * * * *");
    let config = Arc::new(Config::from_str(&text, "test.toml").expect("config"));
    // Every PCA issuance fails with a 500 from the start.
    emu.shared()
        .add_fault(ccm_agent::emulator::FaultRule::error(
            "pca.*",
            500,
            "PCA.00010001",
        ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let shared = emu.shared().clone();
    let run = tokio::spawn(daemon::run(
        config,
        Credentials::AkSk(emu.aksk()),
        RunOptions {
            clock: Clock::from_fn(move || shared.now()),
            metrics_listener: Some(listener),
            shutdown: shutdown.clone(),
            on_cycle: None,
            notifier: ccm_agent::systemd::Notifier::disabled(),
            reload_config: None,
            config_path: None,
        },
    ));
    let start = Instant::now();
    let metrics = loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            let text = r.text().await.unwrap_or_default();
            let failed: f64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("ccm_agent_checks_total{")
                        && l.contains("name=\"web\"")
                        && !l.contains("result=\"ok\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if failed >= 1.0 {
                break text;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "failure never counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("ccm_agent_checks_total"), "{metrics}");
    assert!(
        !dir.path().join("live/web/cert.pem").exists(),
        "nothing installed from a failure"
    );
    // The status file is written at the end of the pass that counted the failure.
    let state = dir.path().join("state");
    wait_for("status file", Duration::from_secs(20), || {
        StatusFile::load(&state)
            .map(|s| s.certificates.iter().any(|c| c.name == "web"))
            .unwrap_or(false)
    })
    .await;
    let status = StatusFile::load(&state).expect("status");
    let web = status
        .certificates
        .iter()
        .find(|c| c.name == "web")
        .expect("web");
    let err = web.last_error.as_deref().unwrap_or_default();
    assert!(
        err.contains("web") || err.contains("PCA.00010001") || err.contains("500"),
        "{err}"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops");
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ccm-agent"))
}

#[test]
fn check_reports_every_problem_with_exit_code_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[agent]\nconcurrency = 0\n[cloud]\nregion = \"ap-southeast-1\"\n[[certificates]]\nname = \"x\"\n[certificates.pca]\nca_id = \"not-a-uuid\"\nkey_algorithm = \"RSA1024\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("agent.concurrency"), "{err}");
    assert!(err.contains("certificates[0].pca.ca_id"), "{err}");
    assert!(err.contains("certificates[0].pca.key_algorithm"), "{err}");
}

/// `ccm-agent run --config CFG` with `NOTIFY_SOCKET` on a datagram socket in `dir`: the
/// messages it sends, read as they come.
struct NotifiedAgent {
    child: std::process::Child,
    sock: std::os::unix::net::UnixDatagram,
    seen: Vec<String>,
}

impl NotifiedAgent {
    fn spawn(dir: &Path, cfg: &Path, watchdog_usec: Option<&str>) -> Self {
        let sock_path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["run", "--config"])
            .arg(cfg)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(usec) = watchdog_usec {
            cmd.env("WATCHDOG_USEC", usec);
        }
        let child = cmd.spawn().expect("spawn agent");
        NotifiedAgent {
            child,
            sock,
            seen: Vec::new(),
        }
    }

    /// Reads messages until `done` holds for all seen so far, `limit` passes, or the socket
    /// is quiet for a minute (the agent died).
    fn recv_until(&mut self, limit: Duration, done: impl Fn(&[String]) -> bool) {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && !done(&self.seen) {
            match self.sock.recv(&mut buf) {
                Ok(n) => self
                    .seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => break,
            }
        }
    }

    /// `kill -SIG` to the agent.
    fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status();
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

#[test]
fn systemd_notify_ready_status_watchdog_stopping() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let text = config_text(
        dir.path(),
        &emu,
        &ca_id,
        &format!("127.0.0.1:{port}"),
        "0 0 * * * *",
    );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let mut agent = NotifiedAgent::spawn(dir.path(), &cfg, Some("1000000"));
    agent.recv_until(Duration::from_secs(60), |seen| {
        seen.iter().any(|m| m.contains("READY=1"))
            && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2
    });
    // SIGHUP with a broken file: RELOADING=1, the error is logged, READY=1 again, still running.
    std::fs::write(&cfg, "[agent]\nconcurrency = 0\n").expect("break config");
    agent.signal("HUP");
    let before = agent.seen.len();
    agent.recv_until(Duration::from_secs(20), |seen| {
        seen[before..].iter().any(|m| m.contains("RELOADING=1"))
            && seen[before..].iter().any(|m| m.contains("READY=1"))
    });
    assert!(
        agent.alive(),
        "an invalid config on SIGHUP must not stop the agent"
    );
    agent.signal("TERM");
    agent.recv_until(Duration::from_secs(20), |seen| {
        seen.iter().any(|m| m.contains("STOPPING=1"))
    });
    let status = agent.child.wait().expect("wait");
    drop(emu);
    let seen = &agent.seen;
    let all = seen.join("|");
    let ready_at = seen
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("READY=1 sent");
    let status_at = seen
        .iter()
        .position(|m| m.contains("STATUS="))
        .expect("STATUS= sent");
    assert!(
        status_at <= ready_at,
        "the first pass reports STATUS before READY: {all}"
    );
    assert!(seen.iter().any(|m| m.contains("STATUS=2 managed")), "{all}");
    assert!(
        seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{all}"
    );
    let reloading = seen
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .expect("RELOADING=1 on SIGHUP");
    assert!(seen[reloading].contains("MONOTONIC_USEC="), "{all}");
    assert!(
        seen[reloading..].iter().any(|m| m.contains("READY=1")),
        "READY=1 after reload: {all}"
    );
    assert!(
        seen.last().is_some_and(|m| m.contains("STOPPING=1")),
        "{all}"
    );
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

/// A SIGHUP that arrives while the startup check is still running (systemd's ExecReload, or an
/// operator, right after the start) must not kill the agent with the signal's default action:
/// it is taken and the configuration is reloaded once the check is done.
#[test]
fn a_sighup_during_the_startup_check_reloads_instead_of_killing() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    // Every API call takes 1.5 s: the startup check lasts several seconds.
    emu.shared().add_fault(ccm_agent::emulator::FaultRule {
        latency_ms: 1500,
        ..ccm_agent::emulator::FaultRule::new("*")
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let mut agent = NotifiedAgent::spawn(dir.path(), &cfg, Some("1000000"));
    // The first WATCHDOG=1 is sent as the startup check begins.
    agent.recv_until(Duration::from_secs(90), |s| {
        s.iter().any(|m| m.contains("WATCHDOG=1"))
    });
    assert!(
        !agent.seen.iter().any(|m| m.contains("READY=1")),
        "the startup check should still be running: {:?}",
        agent.seen
    );
    agent.signal("HUP");
    agent.recv_until(Duration::from_secs(90), |s| {
        s.iter()
            .position(|m| m.contains("RELOADING=1"))
            .is_some_and(|at| s[at..].iter().any(|m| m.contains("READY=1")))
    });
    let alive = agent.alive();
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let seen = &agent.seen;
    assert!(
        alive,
        "SIGHUP during the startup check killed the agent: {seen:?}"
    );
    let ready = seen.iter().position(|m| m.contains("READY=1"));
    let reloading = seen.iter().position(|m| m.contains("RELOADING=1"));
    assert!(
        matches!((ready, reloading), (Some(r), Some(l)) if r < l),
        "READY=1 after the startup check, then the reload: {seen:?}"
    );
    drop(emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_restored_within_seconds_without_the_cloud() {
    let (emu, ca_id) = emulator_with_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    // Hourly: only the file watcher can notice the deletion within the test.
    let text = config_text(dir.path(), &emu, &ca_id, &addr, "0 0 * * * *");
    let config = Arc::new(Config::from_str(&text, "test.toml").expect("config"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let shared = emu.shared().clone();
    let run = tokio::spawn(daemon::run(
        config,
        Credentials::AkSk(emu.aksk()),
        RunOptions {
            clock: Clock::from_fn(move || shared.now()),
            metrics_listener: Some(listener),
            shutdown: shutdown.clone(),
            on_cycle: None,
            notifier: ccm_agent::systemd::Notifier::disabled(),
            reload_config: None,
            config_path: None,
        },
    ));
    wait_ready(&addr).await;
    let key = dir.path().join("live/web/privkey.pem");
    let original = std::fs::read(&key).expect("key installed");
    let issued = emu.shared().count_requests("pca.create_certificate_by_csr");
    std::fs::remove_file(&key).expect("delete key");
    let k = key.clone();
    wait_for("key restored", Duration::from_secs(30), || {
        std::fs::read(&k).is_ok_and(|b| b == original)
    })
    .await;
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        issued,
        "restored from the last good version, not reissued"
    );
    // Truncated: restored too.
    std::fs::write(&key, b"").expect("truncate");
    wait_for("truncated key restored", Duration::from_secs(30), || {
        std::fs::read(&k).is_ok_and(|b| b == original)
    })
    .await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops");
}

/// The watcher sees the agent's own writes too: restoring a deleted key is one pass, not a
/// second one set off by the restore's own rename (issue "Cheaper passes"). A change by someone
/// else after that still starts a pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_writes_start_no_second_pass() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (emu, ca_id) = emulator_with_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    // Hourly: only the file watcher starts passes within the test.
    let text = config_text(dir.path(), &emu, &ca_id, &addr, "0 0 * * * *");
    let config = Arc::new(Config::from_str(&text, "test.toml").expect("config"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let shared = emu.shared().clone();
    let passes = Arc::new(AtomicU64::new(0));
    let run = tokio::spawn(daemon::run(
        config,
        Credentials::AkSk(emu.aksk()),
        RunOptions {
            clock: Clock::from_fn(move || shared.now()),
            metrics_listener: Some(listener),
            shutdown: shutdown.clone(),
            on_cycle: Some(Box::new({
                let passes = passes.clone();
                move |_| {
                    passes.fetch_add(1, Ordering::SeqCst);
                }
            })),
            notifier: ccm_agent::systemd::Notifier::disabled(),
            reload_config: None,
            config_path: None,
        },
    ));
    wait_ready(&addr).await;
    assert_eq!(passes.load(Ordering::SeqCst), 1, "the startup pass");
    let key = dir.path().join("live/web/privkey.pem");
    let original = std::fs::read(&key).expect("key installed");

    // Deleted: one pass restores it; the restore's own events start nothing more.
    std::fs::remove_file(&key).expect("delete key");
    let k = key.clone();
    wait_for("key restored", Duration::from_secs(30), || {
        std::fs::read(&k).is_ok_and(|b| b == original)
    })
    .await;
    wait_for("the restoring pass ends", Duration::from_secs(30), || {
        passes.load(Ordering::SeqCst) >= 2
    })
    .await;
    // Longer than the watcher's 300 ms settling time, several times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        passes.load(Ordering::SeqCst),
        2,
        "the restore's own rename started another pass"
    );

    // Someone else's write is still noticed (and undone).
    std::fs::write(&key, b"not a key").expect("overwrite");
    wait_for("overwritten key restored", Duration::from_secs(30), || {
        std::fs::read(&k).is_ok_and(|b| b == original)
    })
    .await;
    wait_for("the third pass ends", Duration::from_secs(30), || {
        passes.load(Ordering::SeqCst) >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(passes.load(Ordering::SeqCst), 3);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops");
}

/// Drop-ins: a certificate added as `conf.d/api.toml` to a running daemon is picked up (the
/// include directory is watched like the configuration file) and installed; a broken drop-in is
/// rejected with its file and key named, and the running configuration stays.
#[test]
fn a_drop_in_added_to_a_running_daemon_is_managed() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    let dir = tempfile::tempdir().expect("tempdir");
    let full = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *");
    let split = full
        .find("[[certificates]]\nname = \"api\"")
        .expect("api entry");
    let (main, api) = full.split_at(split);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("include = [\"conf.d/*.toml\"]\n{main}")).expect("config");
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).expect("conf.d");
    let log = dir.path().join("agent.log");
    let mut child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn agent");
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let live = dir.path().join("live");
    // Ready (after the startup check, once the watcher runs): /readyz answers 200.
    let ready = || {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let Some(at) = log.find("address=") else {
            return false;
        };
        let addr: String = log[at + 8..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        rt.block_on(reqwest::get(format!("http://{addr}/readyz")))
            .is_ok_and(|r| r.status() == 200)
    };
    wait("ready", &ready);
    assert!(live.join("web/cert.pem").exists());
    assert!(!live.join("api").exists());

    // Written as configuration management does: a temp file, renamed into place.
    std::fs::write(conf_d.join(".api.toml.tmp"), api).expect("drop-in");
    std::fs::rename(conf_d.join(".api.toml.tmp"), conf_d.join("api.toml")).expect("rename");
    wait("api installed from the drop-in", &|| {
        live.join("api/cert.pem").exists()
    });

    std::fs::write(
        conf_d.join("bad.toml"),
        "[[certificates]]\nname = \"bad\"\n[certificates.pca]\nsans = [\"dns:bad.internal\"]\n",
    )
    .expect("bad drop-in");
    let bad = conf_d.join("bad.toml").display().to_string();
    wait("the broken drop-in rejected", &|| {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains(&format!("{bad}: certificates[0].pca.ca_id")))
    });
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(emu);
}

/// `check --online`, `renew --dry-run`, `renew`, and `status --json`, as an operator runs them.
#[test]
fn cli_check_online_renew_dry_run_and_status() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let cli = |args: &[&str], sk: &str| {
        let out = std::process::Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .env("CCM_TEST_SK", sk)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = ccm_agent::emulator::DEFAULT_SECRET_KEY;

    let (code, out, err) = cli(&["check", "--online"], good);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("credentials accepted") && out.contains("active"),
        "{out}"
    );
    let (code, out, _) = cli(&["check", "--online"], "wrong-secret");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAILED") && out.contains("APIGW.0301"),
        "{out}"
    );
    assert!(!out.contains("wrong-secret"), "{out}");

    let (code, out, err) = cli(&["renew", "--dry-run", "web"], good);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("would do") && out.contains("/v1/private-certificates/csr"),
        "{out}"
    );
    assert!(out.contains("privkey.pem"), "{out}");
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        0,
        "a dry run creates nothing"
    );
    assert!(!dir.path().join("live/web/cert.pem").exists());

    let (code, out, err) = cli(&["renew", "web"], good);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(dir.path().join("live/web/cert.pem").exists());
    let (code, out, _) = cli(&["renew", "nosuch"], good);
    assert_eq!(code, Some(2), "{out}");

    let (code, out, err) = cli(&["status", "--json"], good);
    assert_eq!(code, Some(0), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let web = rows
        .as_array()
        .and_then(|r| r.iter().find(|c| c["name"] == "web"))
        .expect("web row");
    assert_eq!(web["last_result"], "renewed", "{out}");
    assert!(web["not_after"].is_string(), "{out}");
    let api = rows
        .as_array()
        .and_then(|r| r.iter().find(|c| c["name"] == "api"))
        .expect("api row");
    assert_eq!(api["last_result"], "never checked", "{out}");
    let (code, table, _) = cli(&["status"], good);
    assert_eq!(code, Some(0));
    assert!(
        table.contains("NAME") && table.contains("DAYS LEFT") && table.contains("web"),
        "{table}"
    );

    // Every certificate: checked concurrently after one revocation listing, reported in
    // configuration order; web (installed, not due) needs no request of its own.
    let lists = emu.shared().count_requests("pca.list_certificate");
    let shows = emu.shared().count_requests("pca.show_certificate");
    let (code, out, err) = cli(&["renew"], good);
    assert_eq!(code, Some(0), "{out}{err}");
    let (w, a) = (out.find("web: "), out.find("api: "));
    assert!(w.is_some() && a.is_some() && w < a, "{out}");
    assert!(out.contains("web: up to date"), "{out}");
    assert_eq!(
        emu.shared().count_requests("pca.list_certificate"),
        lists + 1,
        "one revocation listing for the run"
    );
    assert_eq!(emu.shared().count_requests("pca.show_certificate"), shows);
    assert!(out.contains("api: renewed (certificate "), "{out}");
}

/// The daemon's pass pushes a renewed PCA certificate to its cloud targets (imported into SCM
/// under a stable name) and does not call them again while the certificate is unchanged; a
/// failing region is counted and retried on the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_deploys_changed_certificates_to_cloud_targets_once() {
    let (emu, ca_id) = emulator_with_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *");
    // Targets for "api" (the last certificate in the file).
    text.push_str(
        r#"[certificates.deploy]
scm_name = "agent-api"
retry_initial = "10ms"
retry_max = "20ms"
[[certificates.deploy.targets]]
action = "batch-push"
service = "ELB"
regions = ["ap-southeast-1", "ap-southeast-3"]
[[certificates.deploy.targets]]
action = "deploy"
service = "ELB"
resources = [{ id = "lb0001" }, { id = "lb0002" }]
"#,
    );
    let config = Arc::new(Config::from_str(&text, "deploy.toml").expect("config"));
    let metrics = ccm_agent::metrics::Metrics::new();
    let shared = emu.shared().clone();
    let agent = Arc::new(
        daemon::Agent::new(
            config.clone(),
            emu.client().expect("client"),
            metrics.clone(),
            ccm_agent::metrics::Readiness::new(),
            Clock::from_fn(move || shared.now()),
        )
        .expect("agent"),
    );
    let api = config.certificate("api").expect("api");
    // One region fails (every attempt of this pass).
    emu.shared().add_fault(ccm_agent::emulator::FaultRule {
        target: Some("ap-southeast-3".into()),
        ..ccm_agent::emulator::FaultRule::error("scm.batch_push_certificate", 500, "SCM.0201")
    });
    let err = agent
        .pass(api, Default::default())
        .await
        .expect_err("one region failed");
    assert_eq!(err.kind(), "deploy", "{err}");
    assert!(err.to_string().contains("api"), "{err}");
    let records = emu.shared().with_state(|st| st.scm.deployments().to_vec());
    let ok: Vec<_> = records.iter().filter(|d| d.ok).collect();
    assert_eq!(
        ok.len(),
        3,
        "one region and two resources deployed: {records:?}"
    );
    assert!(ok.iter().all(|d| d.certificate_name == "agent-api"));
    let scrape = metrics.encode().expect("metrics");
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("ccm_agent_deploys_total{")
                && l.contains("target=\"ap-southeast-3\"")
                && l.contains("result=\"error\"")),
        "{scrape}"
    );

    // Next pass: the fault is gone; only the failed region is called.
    emu.shared().clear_faults();
    emu.shared().clear_requests();
    agent
        .pass(api, Default::default())
        .await
        .expect("complete now");
    assert_eq!(emu.shared().count_requests("scm.batch_push_certificate"), 1);
    assert_eq!(emu.shared().count_requests("scm.deploy_certificate"), 0);
    assert_eq!(emu.shared().count_requests("scm.import_certificate"), 0);

    // Unchanged certificate: no cloud call at all.
    emu.shared().clear_requests();
    agent
        .pass(api, Default::default())
        .await
        .expect("nothing to do");
    assert_eq!(emu.shared().count_requests("scm.batch_push_certificate"), 0);
    assert_eq!(emu.shared().count_requests("scm.deploy_certificate"), 0);
}

/// `ccm-agent renew` refuses to run beside a daemon holding the state directory.
/// SIGUSR1 makes a running daemon check every certificate now, including one waiting out a
/// failure's backoff (here up to a day), which is what `renew` beside a daemon points to.
#[test]
fn sigusr1_makes_the_daemon_check_now_even_in_backoff() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    // Every CSR issuance fails: "web" (CSR mode) fails its first pass; "api" (apply) does not.
    emu.shared()
        .add_fault(ccm_agent::emulator::FaultRule::error(
            "pca.create_certificate_by_csr",
            500,
            "PCA.10010001",
        ));
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 0 1 1 *")
        .replace("retry_initial = \"1s\"", "retry_initial = \"24h\"")
        .replace("retry_max = \"2s\"", "retry_max = \"24h\"");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let mut agent = NotifiedAgent::spawn(dir.path(), &cfg, None);
    agent.recv_until(Duration::from_secs(60), |s| {
        s.iter().any(|m| m.contains("READY=1"))
    });
    if !agent.seen.iter().any(|m| m.contains("READY=1")) {
        let _ = agent.child.kill();
        panic!("no READY=1 from the agent: {:?}", agent.seen);
    }
    let web = dir.path().join("live/web/cert.pem");
    let api = dir.path().join("live/api/cert.pem");
    assert!(api.exists(), "api was issued in the startup check");
    assert!(!web.exists(), "web failed in the startup check");
    let status = std::fs::read_to_string(dir.path().join("state/status.json")).expect("status");
    assert!(status.contains("failure 1 in a row"), "{status}");

    // The cause is fixed; SIGUSR1 instead of waiting for the backoff.
    emu.shared().clear_faults();
    agent.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !web.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let alive = agent.alive();
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    assert!(alive, "SIGUSR1 must not stop the agent");
    assert!(web.exists(), "web was not checked again after SIGUSR1");
    drop(emu);
}

#[test]
fn renew_does_not_race_a_running_daemon() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let renew = || {
        std::process::Command::new(bin())
            .args(["renew", "web", "--config"])
            .arg(&cfg)
            .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
            .output()
            .expect("run")
    };
    let lock =
        StateLock::acquire(&dir.path().join("state"), "daemon").expect("lock as a daemon would");
    let out = renew();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // It names the holder and how to ask a running daemon instead.
    let pid = std::process::id();
    assert!(
        err.contains(&format!("the daemon (pid {pid}) is running")),
        "{err}"
    );
    assert!(err.contains(&format!("kill -USR1 {pid}")), "{err}");
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        0
    );
    drop(lock);
    // Held by another renew: wait for it (a renew has no SIGUSR1 handler: never suggested).
    let lock =
        StateLock::acquire(&dir.path().join("state"), "renew").expect("lock as a renew would");
    let out = renew();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "a `ccm-agent renew` (pid {pid}) is running; wait for it"
        )),
        "{err}"
    );
    assert!(!err.contains("USR1"), "{err}");
    drop(lock);
    let out = renew();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file and directory under `root`: path, mode, contents (directories: none), inode.
fn tree(root: &Path) -> Vec<(PathBuf, u32, Option<Vec<u8>>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(entry.expect("entry").path());
            }
            out.push((p, meta.mode(), None, meta.ino()));
        } else {
            out.push((
                p.clone(),
                meta.mode(),
                Some(std::fs::read(&p).expect("read")),
                meta.ino(),
            ));
        }
    }
    out.sort();
    out
}

/// `renew --dry-run` changes nothing: on a fresh host it creates no state directory (nor the
/// journal in it), and with an interrupted install waiting in `txn/` it completes nothing (it
/// says the next real run will).
#[test]
fn renew_dry_run_creates_moves_and_deletes_nothing() {
    use ccm_agent::cloud::pca::Validity;
    use ccm_agent::cloud::pca::cert::{
        ApplyCertificateRequest, ExportType, SubjectAlternativeName,
    };
    use ccm_agent::install::{self, Candidate, Expectations, FileSpec, OutputPaths};
    use ccm_agent::state::StateDir;

    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let state = dir.path().join("state");
    let live = dir.path().join("live");

    // A fresh host.
    let (code, out, err) = cli(&["renew", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("would do"), "{out}");
    assert!(!state.exists(), "the dry run created {}", state.display());
    assert!(!live.exists(), "the dry run created {}", live.display());

    // An install of web interrupted after its first rename.
    let (code, out, err) = cli(&["renew", "web"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let client = emu.client().expect("client");
    let candidate = rt.block_on(async {
        let mut req = ApplyCertificateRequest::new(
            &ca_id,
            "web.test.internal",
            "EC256",
            "SHA256",
            Validity::days(30),
        );
        req.subject_alternative_names = vec![
            SubjectAlternativeName::dns("web.test.internal"),
            SubjectAlternativeName::ip("127.0.0.1"),
        ];
        let id = client.apply_private_certificate(&req).await.expect("apply");
        let x = client
            .export_private_certificate(&id, ExportType::Other)
            .await
            .expect("export");
        Candidate {
            name: "web".into(),
            cert_pem: x.certificate,
            chain_pem: x.certificate_chain,
            key_pem: x.private_key.expect("key"),
        }
    });
    let bundle = install::verify_candidate(
        &candidate,
        &Expectations {
            names: vec!["web.test.internal".into()],
            trust: None,
            now: emu.shared().now(),
        },
    )
    .expect("verified");
    let paths = OutputPaths {
        cert: live.join("web/cert.pem"),
        chain: live.join("web/chain.pem"),
        fullchain: live.join("web/fullchain.pem"),
        key: live.join("web/privkey.pem"),
        pkcs12: None,
    };
    let state_dir = StateDir::new(&state);
    install::crash::crash_at(install::crash::CrashPoint::AfterRenames(1));
    let crashed = install::install(&bundle, &paths, &FileSpec::default(), &state_dir);
    assert!(crashed.is_err(), "the simulated crash");
    let txn = state_dir.cert_dir("web").join("txn");
    assert!(txn.exists());

    let before = (tree(&state), tree(&live));
    let (code, out, err) = cli(&["renew", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("interrupted"), "{out}");
    assert_eq!(
        (tree(&state), tree(&live)),
        before,
        "the dry run changed files"
    );

    // The next real run completes it.
    let (code, out, err) = cli(&["renew", "web"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!txn.exists());
}

/// `ccm-agent renew` writes the status file once per run, as a pass of the daemon does, not
/// once per certificate (a rewrite per certificate made a run over 1,000 certificates rename
/// the file 1,750 times and write 70 MB).
#[test]
fn renew_writes_the_status_file_once() {
    use notify::Watcher as _;
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *");
    for i in 0..10 {
        text.push_str(&format!(
            r#"
[[certificates]]
name = "extra{i}"
[certificates.pca]
ca_id = "{ca_id}"
sans = ["dns:extra{i}.test.internal"]
validity = {{ type = "DAY", value = 30 }}
"#
        ));
    }
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let _ = tx.send(event);
        }
    })
    .expect("watcher");
    watcher
        .watch(&state, notify::RecursiveMode::NonRecursive)
        .expect("watch");
    let status = state.join(StatusFile::FILE);
    // Writes of the status file: each lands by a rename onto its name (inotify's IN_MOVED_TO;
    // notify also reports the pair as one `Both` event, not counted) or by creating it.
    let writes = |rx: &std::sync::mpsc::Receiver<notify::Event>| {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        std::thread::sleep(Duration::from_millis(500));
        rx.try_iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    notify::EventKind::Create(CreateKind::File)
                        | notify::EventKind::Modify(ModifyKind::Name(RenameMode::To))
                ) && e.paths.contains(&status)
            })
            .count()
    };
    let renew = || {
        let out = std::process::Command::new(bin())
            .args(["renew", "--config"])
            .arg(&cfg)
            .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Twelve certificates issued, then twelve with nothing due.
    let out = renew();
    assert_eq!(out.matches(": renewed").count(), 12, "{out}");
    assert_eq!(writes(&rx), 1, "status file writes while issuing");
    let out = renew();
    assert_eq!(out.matches("up to date").count(), 12, "{out}");
    assert_eq!(writes(&rx), 1, "status file writes with nothing due");
    let file = StatusFile::load(&state).expect("status");
    assert_eq!(file.certificates.len(), 12);
}

/// Starts the daemon in-process on `config`, metrics on `listener`, on the emulator's clock.
fn spawn_daemon(
    emu: &Emulator,
    config: Arc<Config>,
    listener: tokio::net::TcpListener,
    shutdown: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let shared = emu.shared().clone();
    tokio::spawn(daemon::run(
        config,
        Credentials::AkSk(emu.aksk()),
        RunOptions {
            clock: Clock::from_fn(move || shared.now()),
            metrics_listener: Some(listener),
            shutdown: shutdown.clone(),
            on_cycle: None,
            notifier: ccm_agent::systemd::Notifier::disabled(),
            reload_config: None,
            config_path: None,
        },
    ))
}

/// Failed checks of `name` counted in a scrape.
fn failed_checks(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("ccm_agent_checks_total{")
                && l.contains(&format!("name=\"{name}\""))
                && !l.contains("result=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A restart during an outage: every API call fails, yet `/metrics` exports the certificates
/// already installed (expiry, readiness, the x509 family), so the expiry alerts can fire; and
/// they stay exported after the due renewal fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_export_the_installed_certificates_through_an_outage() {
    let (emu, ca_id) = emulator_with_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bind = || async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = l.local_addr().expect("addr").to_string();
        (l, a)
    };
    let (listener, addr) = bind().await;
    let text = config_text(dir.path(), &emu, &ca_id, &addr, "*/1 * * * * *");
    let config = Arc::new(Config::from_str(&text, "test.toml").expect("config"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = spawn_daemon(&emu, config.clone(), listener, &shutdown);
    wait_ready(&addr).await;
    let cert = ccm_agent::pki::parse_cert(
        &std::fs::read_to_string(dir.path().join("live/web/cert.pem")).expect("read"),
    )
    .expect("parse");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops")
        .expect("join")
        .expect("run ok");

    // The outage: every call of every service fails, and both certificates are due, so every
    // check of the restarted daemon fails (a check that is not due makes no call of its own).
    emu.shared()
        .add_fault(ccm_agent::emulator::FaultRule::error("*", 500, "SCM.0001"));
    emu.shared().advance_clock(time::Duration::days(21));
    let (listener, addr) = bind().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = spawn_daemon(&emu, config, listener, &shutdown);
    let expect_exported = |metrics: &str| {
        for name in ["web", "api"] {
            assert!(
                sample(
                    metrics,
                    "ccm_agent_certificate_not_after_timestamp_seconds",
                    &[("name", name)]
                )
                .is_some(),
                "no not_after for {name}:\n{metrics}"
            );
            assert_eq!(
                sample(metrics, "ccm_agent_certificate_ready", &[("name", name)]),
                Some(1.0),
                "{metrics}"
            );
        }
        let not_after = sample(
            metrics,
            "ccm_agent_certificate_not_after_timestamp_seconds",
            &[("name", "web")],
        );
        assert_eq!(
            not_after.map(|v| v as i64),
            Some(cert.not_after.unix_timestamp())
        );
        assert_eq!(
            sample(
                metrics,
                "x509_cert_not_after",
                &[("subject_CN", "web.test.internal")]
            )
            .map(|v| v as i64),
            Some(cert.not_after.unix_timestamp()),
            "{metrics}"
        );
        assert_eq!(
            sample(
                metrics,
                "x509_cert_expired",
                &[("subject_CN", "web.test.internal")]
            ),
            Some(0.0),
            "{metrics}"
        );
    };
    // Exported from the start, before any check finished...
    let start = Instant::now();
    let metrics = loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            break r.text().await.unwrap_or_default();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    expect_exported(&metrics);
    // ... and still after the failed renewals.
    let start = Instant::now();
    let metrics = loop {
        let m = scrape(&addr).await;
        if failed_checks(&m, "web") >= 1.0 && failed_checks(&m, "api") >= 1.0 {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no failed checks:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    expect_exported(&metrics);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
}

/// Deleting the state directory under a running daemon: the daemon takes its lock again (so a
/// `renew` is still refused beside it) and recreates the layout, and its next renewal works
/// (the journal directory is recreated, not "cannot create a temp file beside it").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_directory_is_recreated_and_its_lock_taken_again() {
    let (emu, ca_id) = emulator_with_ca().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let text = config_text(dir.path(), &emu, &ca_id, &addr, "*/1 * * * * *");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, &text).expect("write config");
    let config = Arc::new(Config::from_str(&text, "test.toml").expect("config"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = spawn_daemon(&emu, config, listener, &shutdown);
    wait_ready(&addr).await;
    let cert_path = dir.path().join("live/web/cert.pem");
    let first = fingerprint(&cert_path).expect("installed");
    let issued = emu.shared().count_requests("pca.create_certificate_by_csr");
    let state = dir.path().join("state");
    std::fs::remove_dir_all(&state).expect("rm -rf state");

    wait_for("the lock taken again", Duration::from_secs(30), || {
        state.join(StateLock::FILE).exists()
    })
    .await;
    let out = tokio::process::Command::new(bin())
        .args(["renew", "web", "--config"])
        .arg(&cfg)
        .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
        .output()
        .await
        .expect("run renew");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains("daemon"),
        "{stderr}"
    );

    // With its record gone, the installed certificate is one the agent has no record of
    // issuing: the pass that recreated the layout issued web again, through the recreated
    // journal, once.
    wait_for("the reissue", Duration::from_secs(60), || {
        fingerprint(&cert_path).is_some_and(|f| f != first)
    })
    .await;
    assert!(state.join("journal").is_dir());
    wait_for("status file", Duration::from_secs(20), || {
        StatusFile::load(&state)
            .map(|s| {
                s.certificates.iter().any(|c| {
                    c.name == "web" && c.last_error.is_none() && c.last_result == "renewed"
                })
            })
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        issued + 1
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops")
        .expect("join")
        .expect("run ok");
}

/// Under `umask 000`, `renew` still creates every directory and file with its own mode: the
/// state directory and all below it private, the lock 0600, the directories holding keys 0700
/// (0750 with the configured group), and nothing group- or world-writable.
#[test]
fn renew_under_umask_000_sets_every_mode_itself() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (emu, ca_id) = rt.block_on(emulator_with_ca());
    let dir = tempfile::tempdir().expect("tempdir");
    let gid = rustix::process::getegid().as_raw();
    // The last certificate (api) gets a group: the agent's own, which it may always give.
    let text = config_text(dir.path(), &emu, &ca_id, "127.0.0.1:0", "0 0 * * * *")
        + &format!(
            "[certificates.output]\ngroup = {gid}\npkcs12 = \"{}/p12/api/api.p12\"\n",
            dir.path().display()
        );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");
    let out = std::process::Command::new("sh")
        .args(["-c", r#"umask 000 && exec "$0" "$@""#])
        .arg(bin())
        .args(["renew", "web", "api", "--config"])
        .arg(&cfg)
        .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    let d = dir.path();
    let expect = [
        ("state", 0o700),
        ("state/agent.lock", 0o600),
        ("state/status.json", 0o644),
        ("live/web", 0o700),
        ("live/web/privkey.pem", 0o600),
        ("live/web/cert.pem", 0o644),
        ("live/web/fullchain.pem", 0o644),
        ("live/api", 0o750),
        ("live/api/privkey.pem", 0o600),
        ("p12/api", 0o750),
        ("p12/api/api.p12", 0o600),
    ];
    for (path, want) in expect {
        assert_eq!(
            mode(&d.join(path)),
            want,
            "{path}: {:04o}",
            mode(&d.join(path))
        );
    }
    for path in ["live/api", "p12/api"] {
        assert_eq!(
            std::fs::metadata(d.join(path)).expect("stat").gid(),
            gid,
            "{path}"
        );
    }
    // Everything the agent created: nothing writable by group or others, and under the state
    // directory nothing readable by them either but the status file.
    let mut todo = vec![d.join("state"), d.join("live"), d.join("p12")];
    let mut seen = 0;
    while let Some(p) = todo.pop() {
        let m = mode(&p);
        seen += 1;
        assert_eq!(m & 0o022, 0, "{} is {m:04o}", p.display());
        if p.starts_with(d.join("state")) && !p.ends_with("status.json") {
            assert_eq!(m & 0o077, 0, "{} is {m:04o}", p.display());
        }
        if p.is_dir() {
            let entries = std::fs::read_dir(&p).expect("read_dir");
            todo.extend(entries.map(|e| e.expect("entry").path()));
        }
    }
    assert!(seen > 15, "only {seen} files and directories");
}
