//! A real Prometheus server on loopback scrapes a running agent (the daemon, against the
//! emulator) and evaluates the shipped alert rules (`packaging/prometheus/ccm-agent.rules.yml`,
//! only `for:` shortened). The test reads Prometheus' HTTP API: the expiry series hold the
//! not_after of the certificate on disk, a healthy agent raises no alert, and once the
//! emulator's clock makes the agent install a certificate that expires a day from now, the
//! expiry alerts go to `firing` for that certificate.
//!
//! Needs prometheus and promtool (Debian's `prometheus`): without them the test fails under CI
//! (`CI=true`, which installs them) and is skipped with a message elsewhere.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_agent::agent::daemon::{self, RunOptions};
use ccm_agent::clock::Clock;
use ccm_agent::cloud::Credentials;
use ccm_agent::config::Config;
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::pki::CertInfo;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod ports;
use ports::free_port;
mod required;

const DAY: i64 = 86_400;
/// The certificates' lifetime, as configured below.
const VALIDITY_DAYS: i64 = 30;
/// How far the emulator's clock is set back before the second issuance: the certificate it signs
/// then ends `VALIDITY_DAYS - BACK_DAYS` = 1 day after the real now.
const BACK_DAYS: i64 = 29;
/// Generous for a loaded 2-core CI machine; a passing run needs a few seconds per step.
const LIMIT: Duration = Duration::from_secs(60);

/// Poll `f` every 250 ms until it returns `Ok`, or fail after `limit` with the last reason.
async fn poll<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(why) => assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Move the emulator's clock through its control API; returns the new offset from real time.
async fn move_emulator_clock(emu: &Emulator, secs: i64) -> i64 {
    let resp = reqwest::Client::new()
        .post(format!("{}/_emulator/clock", emu.base_url()))
        .json(&serde_json::json!({ "advance_secs": secs }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    body["offset_secs"].as_i64().unwrap()
}

fn config_text(dir: &Path, emu: &Emulator, ca_id: &str, metrics: SocketAddr) -> String {
    let aksk = emu.aksk();
    format!(
        r#"
[agent]
state_dir = "{dir}/state"
schedule = "*/2 * * * * *"
host_id = "prometheus-e2e"
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
sans = ["dns:web.test.internal"]
validity = {{ type = "DAY", value = {VALIDITY_DAYS} }}
extended_key_usage = ["server_auth"]
"#,
        dir = dir.display(),
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.unwrap_or_default(),
    )
}

/// The in-process daemon (`ccm-agent run` without the CLI) on the emulator's clock, serving its
/// metrics on `addr`.
struct Daemon {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    async fn start(config: Arc<Config>, emu: &Emulator, addr: SocketAddr) -> Self {
        // After a restart the port may take a moment to be free again.
        let listener = poll("the metrics port", LIMIT, || async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("bind {addr}: {e}"))
        })
        .await;
        let shutdown = CancellationToken::new();
        let shared = emu.shared().clone();
        let task = tokio::spawn(daemon::run(
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
        let ready = format!("http://{addr}/readyz");
        poll("the agent's /readyz", LIMIT, || {
            let ready = ready.clone();
            async move {
                match reqwest::get(&ready).await {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the daemon stops promptly")
            .expect("join")
            .expect("the daemon exits cleanly");
    }
}

/// A Prometheus server on a loopback port; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(binary: &Path, dir: &Path, config: &Path) -> Self {
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("prometheus.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut prom = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        let ready = format!("{}/-/ready", prom.url);
        let start = Instant::now();
        loop {
            if let Some(status) = prom.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prom.log_tail());
            }
            if let Ok(r) = prom.http.get(&ready).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                start.elapsed() < LIMIT,
                "prometheus never became ready:\n{}",
                prom.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        prom
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `GET /api/v1/<path>` → `data`, or why not.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), params)
            .unwrap();
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{path}: {body}"));
        }
        Ok(body["data"].clone())
    }

    /// An instant query: the samples of the result vector.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", promql)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The only sample of `promql`, as (labels, evaluation time, value).
    async fn single(&self, promql: &str) -> Result<(Value, f64, f64), String> {
        let result = self.query(promql).await?;
        let [sample] = result.as_slice() else {
            return Err(format!("{promql}: expected one sample, got {result:?}"));
        };
        let at = sample["value"][0].as_f64().ok_or("no timestamp")?;
        let value = sample["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("{promql}: bad value in {sample}"))?;
        Ok((sample["metric"].clone(), at, value))
    }

    /// The only sample of `promql` once its value is `expected`, polled for up to `LIMIT`. One
    /// scrape that times out (`scrape_timeout: 1s`) on a loaded machine sets `up` to 0 and makes
    /// the agent's series stale until the next good scrape, so a single instant query can miss
    /// them; the caller still asserts on what this returns.
    async fn single_eventually(&self, promql: &str, expected: f64) -> (Value, f64, f64) {
        poll(promql, LIMIT, || async {
            let sample = self.single(promql).await?;
            if sample.2 == expected {
                Ok(sample)
            } else {
                Err(format!("{promql} is {}, expected {expected}", sample.2))
            }
        })
        .await
    }

    /// Active (pending or firing) alerts.
    async fn alerts(&self) -> Result<Vec<Value>, String> {
        let data = self.api("alerts", &[]).await?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// The rule groups, with their rules, health and last evaluation.
    async fn rule_groups(&self) -> Result<Vec<Value>, String> {
        let data = self.api("rules", &[]).await?;
        Ok(data["groups"].as_array().cloned().unwrap_or_default())
    }
}

/// The shipped rules with every `for:` set to `0s`: the shipped durations (5 to 60 minutes) keep
/// a transient condition from paging, which a test cannot wait for; the expressions, labels and
/// annotations are the shipped ones, unchanged.
fn rules_without_for(shipped: &str) -> String {
    let mut rewritten = 0;
    let mut out = String::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let is_for = trimmed
            .strip_prefix("for: ")
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric()));
        if is_for {
            out.push_str(&line[..line.len() - trimmed.len()]);
            out.push_str("for: 0s");
            rewritten += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(rewritten > 0, "no `for:` found in the shipped rules");
    assert_eq!(
        rewritten,
        shipped.matches("for:").count(),
        "every `for:` of the shipped rules is rewritten"
    );
    out
}

fn read_cert(path: &Path) -> CertInfo {
    ccm_agent::pki::parse_cert(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ts(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

fn alert_named<'a>(alerts: &'a [Value], name: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_fires_the_expiry_alerts() {
    let Some(prometheus) = required::binary(&["prometheus"], "prometheus") else {
        return;
    };
    let Some(promtool) = required::binary(&["promtool"], "prometheus") else {
        return;
    };
    ccm_agent::cloud::install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();

    // The CA hierarchy is created 40 days in the (emulator's) past, so that it is valid when the
    // emulator's clock is set back later: PCA refuses a certificate that starts before its CA.
    assert_eq!(move_emulator_clock(&emu, -40 * DAY).await, -40 * DAY);
    let shared = emu.shared().clone();
    let (_, ca_id) = tokio::task::spawn_blocking(move || {
        ccm_agent::emulator::pca::ca::create_active_ca_pair(
            &shared,
            "prometheus e2e root",
            "prometheus e2e issuing CA",
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(move_emulator_clock(&emu, 40 * DAY).await, 0);

    let dir = tempfile::tempdir().unwrap();
    let agent_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = config_text(dir.path(), &emu, &ca_id, agent_addr);
    let config_file = dir.path().join("ccm-agent.toml");
    std::fs::write(&config_file, &text).unwrap();
    let config = Arc::new(Config::from_str(&text, "ccm-agent.toml").unwrap());
    let cert_path = dir.path().join("live/web/cert.pem");

    // --- A healthy agent: a fresh 30-day certificate. ----------------------------------------
    let agent = Daemon::start(config.clone(), &emu, agent_addr).await;
    let first = read_cert(&cert_path);
    let now = OffsetDateTime::now_utc();
    assert!(
        (first.not_before - now).abs() < time::Duration::minutes(5),
        "issued on the emulator's clock, which is the real one here: {first:?}"
    );

    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus/ccm-agent.rules.yml"),
    )
    .unwrap();
    let rules = dir.path().join("ccm-agent.rules.yml");
    std::fs::write(&rules, rules_without_for(&shipped)).unwrap();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: ccm-agent
    static_configs:
      - targets: ["{agent_addr}"]
"#,
            rules = rules.display()
        ),
    )
    .unwrap();
    let out = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&prom_config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let prom = Prometheus::start(&prometheus, dir.path(), &prom_config).await;

    let (_, _, up) = prom.single_eventually(r#"up{job="ccm-agent"}"#, 1.0).await;
    assert_eq!(up, 1.0, "the agent's target is up");

    let not_after = r#"ccm_agent_certificate_not_after_timestamp_seconds{job="ccm-agent"}"#;
    let (labels, seen_at, value) =
        poll("the expiry series", LIMIT, || prom.single(not_after)).await;
    assert_eq!(value, ts(first.not_after), "{labels}");
    assert_eq!(labels["name"], "web", "{labels}");
    assert_eq!(labels["source"], "pca", "{labels}");
    assert_eq!(labels["instance"], agent_addr.to_string(), "{labels}");
    let (_, _, value) = prom
        .single_eventually(
            r#"ccm_agent_certificate_not_before_timestamp_seconds{job="ccm-agent",name="web"}"#,
            ts(first.not_before),
        )
        .await;
    assert_eq!(value, ts(first.not_before));
    let x509 = format!(
        r#"x509_cert_not_after{{job="ccm-agent",filepath="{}"}}"#,
        cert_path.display()
    );
    let (labels, _, value) = prom.single_eventually(&x509, ts(first.not_after)).await;
    assert_eq!(value, ts(first.not_after), "{labels}");
    assert_eq!(labels["subject_CN"], "web.test.internal", "{labels}");
    assert_eq!(labels["issuer_CN"], "prometheus e2e issuing CA", "{labels}");

    // Every group has been evaluated with the agent's series present: every shipped rule is
    // healthy on a real server, and a healthy agent raises no alert at all.
    let groups = poll("rule evaluations after the first scrape", LIMIT, || async {
        let groups = prom.rule_groups().await?;
        for g in &groups {
            let last = g["lastEvaluation"].as_str().unwrap_or_default();
            let last = OffsetDateTime::parse(last, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("{}: lastEvaluation {last:?}: {e}", g["name"]))?;
            if (last.unix_timestamp_nanos() as f64) / 1e9 <= seen_at {
                return Err(format!("{} last evaluated at {last}", g["name"]));
            }
        }
        Ok(groups)
    })
    .await;
    // Every alert of the shipped file is loaded.
    let mut loaded: Vec<&str> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["name"].as_str())
        .collect();
    loaded.sort_unstable();
    let mut shipped_alerts: Vec<&str> = shipped
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    shipped_alerts.sort_unstable();
    assert!(
        loaded.contains(&"CcmAgentCertificateExpiringSoon"),
        "{loaded:?}"
    );
    assert_eq!(loaded, shipped_alerts);
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // With `for: 0s`, one scrape that times out on a loaded machine raises these two at once;
    // they are about the scrape, not the agent, and not what this test is about.
    let scrape_failure = ["CcmAgentDown", "CcmAgentMetricsAbsent"];
    let alerts: Vec<Value> = prom
        .alerts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| {
            !scrape_failure
                .iter()
                .any(|n| a["labels"]["alertname"] == *n)
        })
        .collect();
    assert!(
        alerts.is_empty(),
        "a healthy agent raises alerts: {alerts:#?}"
    );

    // --- The emulator's clock goes back 29 days, and the certificate is renewed. --------------
    // PCA dates what it signs by its own clock, so the next certificate is valid from 29 days ago
    // and ends one day from the real now. The agent runs on the emulator's clock: to it the
    // certificate is brand new and nothing is due, so it keeps it (as an agent whose clock lags
    // would). Prometheus evaluates on the real clock and sees one day of thirty left.
    // (CcmAgentNotReporting fires too from here on, rightly: the agent's last-check timestamp is
    // on its clock, 29 days behind Prometheus'. Not asserted: it is about the clock, not expiry.)
    assert_eq!(
        move_emulator_clock(&emu, -BACK_DAYS * DAY).await,
        -BACK_DAYS * DAY
    );
    // `ccm-agent renew` refuses to run beside the daemon (state lock), so, as an operator would:
    // stop the daemon, `ccm-agent renew --force web` (what the Critical alert's annotation
    // says), start the daemon again on the same metrics port. The CLI runs on the system clock,
    // which does not matter to a forced renewal: the certificate's dates are PCA's.
    agent.stop().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
        .args(["renew", "--force", "web", "--config"])
        .arg(&config_file)
        .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("web: renewed"),
        "renew --force: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let second = read_cert(&cert_path);
    assert_ne!(second.serial_hex, first.serial_hex);
    let left = second.not_after - OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::hours(23) && left <= time::Duration::days(1),
        "the new certificate ends a day from now: {left}"
    );
    assert_eq!(
        second.not_after - second.not_before,
        time::Duration::days(VALIDITY_DAYS)
    );
    let agent = Daemon::start(config.clone(), &emu, agent_addr).await;
    assert_eq!(
        read_cert(&cert_path).sha256_fingerprint_hex,
        second.sha256_fingerprint_hex,
        "the restarted agent keeps the certificate: nothing is due on its clock"
    );

    let (_, _, value) = poll("the renewed certificate's not_after", LIMIT, || async {
        let s = prom.single(not_after).await?;
        if s.2 == ts(second.not_after) {
            Ok(s)
        } else {
            Err(format!("not_after is still {}", s.2))
        }
    })
    .await;
    assert_eq!(value, ts(second.not_after));
    let (_, _, value) = prom.single_eventually(&x509, ts(second.not_after)).await;
    assert_eq!(value, ts(second.not_after));

    // Warning (less than a quarter of the lifetime left) and critical (less than a tenth, at
    // most 3 days) both fire for this certificate; it has not expired.
    let alerts = poll("the expiry alerts to fire", LIMIT, || async {
        let alerts = prom.alerts().await?;
        for name in [
            "CcmAgentCertificateExpiringSoon",
            "CcmAgentCertificateExpiringCritical",
        ] {
            if !alert_named(&alerts, name)
                .iter()
                .any(|a| a["state"] == "firing")
            {
                return Err(format!("{name} not firing: {alerts:#?}"));
            }
        }
        Ok(alerts)
    })
    .await;
    for (name, severity) in [
        ("CcmAgentCertificateExpiringSoon", "warning"),
        ("CcmAgentCertificateExpiringCritical", "critical"),
    ] {
        let found = alert_named(&alerts, name);
        let [alert] = found.as_slice() else {
            panic!("one {name} alert expected: {found:#?}");
        };
        let labels = &alert["labels"];
        assert_eq!(alert["state"], "firing", "{alert}");
        assert_eq!(labels["name"], "web", "{alert}");
        assert_eq!(labels["source"], "pca", "{alert}");
        assert_eq!(labels["severity"], severity, "{alert}");
        assert_eq!(labels["job"], "ccm-agent", "{alert}");
        assert_eq!(labels["instance"], agent_addr.to_string(), "{alert}");
        // The value is the time left, in seconds, by Prometheus' clock.
        let left: f64 = alert["value"].as_str().unwrap().parse().unwrap();
        assert!(
            left > (DAY - 3600) as f64 && left <= DAY as f64,
            "{name}: {left} s left: {alert}"
        );
        let summary = alert["annotations"]["summary"].as_str().unwrap();
        assert!(
            summary.starts_with("Certificate web expires in 23h "),
            "{summary}"
        );
    }
    assert!(
        alert_named(&alerts, "CcmAgentCertificateExpired").is_empty(),
        "{alerts:#?}"
    );
    let (_, _, up) = prom.single_eventually(r#"up{job="ccm-agent"}"#, 1.0).await;
    assert_eq!(up, 1.0);
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        2,
        "one issuance at startup, one forced; the agent did not renew on its own"
    );

    agent.stop().await;
    drop(prom);
}
