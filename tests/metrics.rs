//! The metrics server over real HTTP: scraped values, readiness, routing, the API observer against
//! the emulator, and `promtool check metrics` on the exposition.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ccm_agent::clock::Clock;
use ccm_agent::cloud::{Client, Credentials, Endpoints, Request, RetryPolicy, Service};
use ccm_agent::emulator::faults::FaultRule;
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::metrics::text::{self, Sample};
use ccm_agent::metrics::{self, CertificateFacts, Metrics, Readiness};
use ccm_agent::pki::{
    CertificateSpec, DistinguishedName, KeyAlgorithm, SubjectAltName, generate_key, parse_cert,
    self_signed,
};
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// promtool missing: a failure under CI, a printed skip elsewhere.
mod required;

struct Server {
    addr: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(metrics: Arc<Metrics>, readiness: Readiness) -> Self {
        ccm_agent::cloud::install_crypto_provider();
        let listener = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(metrics::serve(
            listener,
            metrics,
            readiness,
            shutdown.clone(),
        ));
        Self {
            addr,
            http: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn scrape_text(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/plain; version=0.0.4"
        );
        resp.text().await.unwrap()
    }

    async fn scrape(&self) -> Vec<Sample> {
        text::parse(&self.scrape_text().await).unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

fn movable_clock(start: OffsetDateTime) -> (Clock, Arc<AtomicI64>) {
    let t = Arc::new(AtomicI64::new(start.unix_timestamp()));
    let t2 = t.clone();
    let clock = Clock::from_fn(move || {
        OffsetDateTime::from_unix_timestamp(t2.load(Ordering::SeqCst)).unwrap()
    });
    (clock, t)
}

/// A real certificate with a full subject, an issuer and SANs that must never become labels.
fn leaf_cert() -> ccm_agent::pki::CertInfo {
    let key = generate_key(KeyAlgorithm::Ec256).unwrap();
    let subject = DistinguishedName {
        country: Some("CN".into()),
        state: Some("Guangdong".into()),
        locality: Some("Shenzhen".into()),
        organization: Some("Example \"Quoted\" Org".into()),
        organizational_unit: Some("Ops".into()),
        common_name: Some("app.example.com".into()),
    };
    let mut spec = CertificateSpec::new_leaf(
        subject,
        datetime!(2026-01-01 00:00 UTC),
        datetime!(2026-04-01 00:00 UTC),
        vec![
            SubjectAltName::Dns("app.example.com".into()),
            SubjectAltName::Dns("hidden-san.internal.example".into()),
        ],
    );
    // A 20-byte serial with the top bit clear: its decimal form is well known.
    spec.serial = Some(vec![0x7F; 20]);
    parse_cert(&self_signed(&spec, &key).unwrap()).unwrap()
}

#[tokio::test]
async fn certificate_series_are_served_and_follow_the_clock() {
    let (clock, t) = movable_clock(datetime!(2026-03-01 00:00 UTC));
    let m = Metrics::with_clock(clock);
    let server = Server::start(m.clone(), Readiness::new()).await;

    let cert = leaf_cert();
    let facts = CertificateFacts::from_cert(&cert, Some("/etc/ssl/app/fullchain.pem".as_ref()));
    m.set_certificate("app", "pca", &facts);

    let s = server.scrape().await;
    // Go's big.Int.String() of 0x7F7F...7F (20 bytes), as x509-certificate-exporter prints it;
    // cross-checked with x509-parser's own BigUint.
    let (_, x509) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
    let serial_dec = x509.tbs_certificate.serial.to_string();
    assert_eq!(
        serial_dec,
        "727885129180488904360266563744972327436484050815"
    );
    let labels = [
        ("filename", "fullchain.pem"),
        ("filepath", "/etc/ssl/app/fullchain.pem"),
        ("serial_number", serial_dec.as_str()),
        ("subject_C", "CN"),
        ("subject_ST", "Guangdong"),
        ("subject_L", "Shenzhen"),
        ("subject_O", "Example \"Quoted\" Org"),
        ("subject_OU", "Ops"),
        ("subject_CN", "app.example.com"),
        ("issuer_CN", "app.example.com"),
        ("issuer_O", "Example \"Quoted\" Org"),
    ];
    let not_after = datetime!(2026-04-01 00:00 UTC).unix_timestamp() as f64;
    let not_before = datetime!(2026-01-01 00:00 UTC).unix_timestamp() as f64;
    assert_eq!(
        text::value(&s, "x509_cert_not_after", &labels),
        Some(not_after)
    );
    assert_eq!(
        text::value(&s, "x509_cert_not_before", &labels),
        Some(not_before)
    );
    assert_eq!(text::value(&s, "x509_cert_expired", &labels), Some(0.0));
    assert_eq!(
        text::value(&s, "x509_cert_expires_in_seconds", &labels),
        Some(31.0 * 86400.0)
    );
    assert_eq!(
        text::value(&s, "x509_cert_valid_since_seconds", &labels),
        Some(59.0 * 86400.0)
    );
    let by_name = [("name", "app"), ("source", "pca")];
    assert_eq!(
        text::value(
            &s,
            "ccm_agent_certificate_not_after_timestamp_seconds",
            &by_name
        ),
        Some(not_after)
    );
    assert_eq!(
        text::value(
            &s,
            "ccm_agent_certificate_not_before_timestamp_seconds",
            &by_name
        ),
        Some(not_before)
    );
    // The x509 family has exactly the exporter's labels; no name/source/SAN labels.
    let x = text::find(&s, "x509_cert_not_after", &[]).next().unwrap();
    let keys: Vec<&str> = x.labels.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "filename",
            "filepath",
            "issuer_C",
            "issuer_CN",
            "issuer_L",
            "issuer_O",
            "issuer_OU",
            "issuer_ST",
            "serial_number",
            "subject_C",
            "subject_CN",
            "subject_L",
            "subject_O",
            "subject_OU",
            "subject_ST",
        ]
    );

    // Past not_after the expired flag flips on the next scrape, without any new call.
    t.store(
        datetime!(2026-04-01 00:00:01 UTC).unix_timestamp(),
        Ordering::SeqCst,
    );
    let s = server.scrape().await;
    assert_eq!(text::value(&s, "x509_cert_expired", &labels), Some(1.0));
    assert_eq!(
        text::value(&s, "x509_cert_expires_in_seconds", &labels),
        Some(-1.0)
    );

    let raw = server.scrape_text().await;
    assert!(!raw.contains("hidden-san"), "a SAN leaked into the metrics");

    // Renewed: a new serial replaces the old series.
    let mut renewed = facts.clone();
    renewed.serial_hex = "01".into();
    m.set_certificate("app", "pca", &renewed);
    let s = server.scrape().await;
    let serials: Vec<&str> = text::find(&s, "x509_cert_not_after", &[])
        .map(|x| x.labels["serial_number"].as_str())
        .collect();
    assert_eq!(serials, ["1"]);

    m.remove_certificate("app");
    let s = server.scrape().await;
    assert!(
        !s.iter()
            .any(|x| x.name.starts_with("x509_cert_") || x.labels.contains_key("name")),
        "stale series after remove_certificate: {s:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn events_are_counted_by_result() {
    let m = Metrics::new();
    let server = Server::start(m.clone(), Readiness::new()).await;

    m.record_check("app", "ok");
    m.record_check("app", "ok");
    m.record_check("app", "api_error");
    m.record_install("app", "ok");
    m.record_install("app", "verify_failed");
    let at = datetime!(2026-02-03 04:05:06 UTC);
    m.record_renewal("app", "timeout", datetime!(2026-02-03 00:00 UTC));
    m.record_renewal("app", "ok", at);
    m.set_cert_ready("app", false);
    m.set_scm_expiring_without_successor("shop", true);
    m.set_last_successful_check(at);

    let s = server.scrape().await;
    let v =
        |name: &str, result: &str| text::value(&s, name, &[("name", "app"), ("result", result)]);
    assert_eq!(v("ccm_agent_checks_total", "ok"), Some(2.0));
    assert_eq!(v("ccm_agent_checks_total", "api_error"), Some(1.0));
    assert_eq!(v("ccm_agent_installs_total", "ok"), Some(1.0));
    assert_eq!(v("ccm_agent_installs_total", "verify_failed"), Some(1.0));
    assert_eq!(v("ccm_agent_renewals_total", "ok"), Some(1.0));
    assert_eq!(v("ccm_agent_renewals_total", "timeout"), Some(1.0));
    let ts = at.unix_timestamp() as f64;
    assert_eq!(
        text::value(
            &s,
            "ccm_agent_certificate_last_renewal_timestamp_seconds",
            &[("name", "app")]
        ),
        Some(ts)
    );
    assert_eq!(
        text::value(&s, "ccm_agent_certificate_ready", &[("name", "app")]),
        Some(0.0)
    );
    assert_eq!(
        text::value(
            &s,
            "ccm_agent_scm_expiring_without_successor",
            &[("name", "shop")]
        ),
        Some(1.0)
    );
    assert_eq!(
        text::value(&s, "ccm_agent_last_successful_check_timestamp_seconds", &[]),
        Some(ts)
    );
    assert_eq!(
        text::value(
            &s,
            "ccm_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    m.record_check("app", "ok");
    m.set_cert_ready("app", true);
    let s = server.scrape().await;
    assert_eq!(
        text::value(
            &s,
            "ccm_agent_checks_total",
            &[("name", "app"), ("result", "ok")]
        ),
        Some(3.0)
    );
    assert_eq!(
        text::value(&s, "ccm_agent_certificate_ready", &[("name", "app")]),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_routing() {
    let m = Metrics::new();
    let readiness = Readiness::new();
    let server = Server::start(m.clone(), readiness.clone()).await;

    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(server.get("/readyz").await.0, 503);
    assert_eq!(
        text::value(&server.scrape().await, "ccm_agent_ready", &[]),
        Some(0.0)
    );

    let waiter = {
        let r = readiness.clone();
        tokio::spawn(async move { r.wait_ready().await })
    };
    readiness.set_ready(true);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait_ready returns once ready")
        .unwrap();
    assert_eq!(server.get("/readyz").await.0, 200);
    assert_eq!(
        text::value(&server.scrape().await, "ccm_agent_ready", &[]),
        Some(1.0)
    );
    readiness.set_ready(false);
    assert_eq!(server.get("/readyz").await.0, 503);

    assert_eq!(server.get("/").await.0, 404);
    assert_eq!(server.get("/metrics/extra").await.0, 404);
    assert_eq!(server.get("/metrics?x=1").await.0, 200);

    let resp = server
        .http
        .post(server.url("/metrics"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    let resp = server
        .http
        .delete(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let resp = server
        .http
        .head(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let addr = server.addr;
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn shutdown_completes_with_an_idle_keep_alive_connection() {
    let server = Server::start(Metrics::new(), Readiness::new()).await;
    // reqwest keeps the connection alive in its pool after this request.
    assert_eq!(server.get("/healthz").await.0, 200);
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Silent connections, far more than the server keeps open, do not lock the scraper out: each
/// scrape on a fresh connection is served, for longer than the 10 s header timeout that used to
/// be the only thing closing them, while the flood goes on between scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_succeed_under_a_flood_of_idle_connections() {
    const FLOOD: usize = 500;
    const MORE_PER_ROUND: usize = 50;
    const ROUNDS: u32 = 13;
    // Both ends live in this process: room for every client socket and the server's.
    let wanted = (2 * (FLOOD + MORE_PER_ROUND * ROUNDS as usize) + 256) as u64;
    ensure_open_files(wanted);
    let server = Server::start(Metrics::new(), Readiness::new()).await;
    let connect = || tokio::net::TcpStream::connect(server.addr);
    let mut idle = Vec::new();
    for _ in 0..FLOOD {
        idle.push(connect().await.unwrap());
    }
    // Over ROUNDS seconds at least (the old header timeout is 10 s).
    for round in 0..ROUNDS {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let resp = http
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("scrape {round} with {} idle connections: {e:?}", idle.len())
            });
        assert_eq!(resp.status().as_u16(), 200, "scrape {round}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("ccm_agent_ready"), "scrape {round}: {body}");
        for _ in 0..MORE_PER_ROUND {
            idle.push(connect().await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(idle);
    server.stop().await;
}

/// Raises this process's open-file limit to at least `wanted` (up to the hard limit).
fn ensure_open_files(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c >= wanted) {
        return;
    }
    let current = limit.maximum.map_or(wanted, |max| wanted.min(max));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(current),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    assert!(
        current >= wanted,
        "the open-file limit is {current}, the test needs {wanted} (raise ulimit -n)"
    );
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let held = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = held.local_addr().unwrap();
    let err = metrics::bind(addr).await.unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn api_requests_are_observed() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let m = Metrics::new();
    let client = Client::builder(
        Endpoints::single(&emu.base_url()).unwrap(),
        Credentials::AkSk(emu.aksk()),
    )
    .retry(RetryPolicy {
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    })
    .observer(m.clone())
    .build()
    .unwrap();

    // One 503 then a retried success: both attempts are counted.
    emu.shared().add_fault(FaultRule {
        times: Some(1),
        ..FaultRule::error("iam.list_auth_domains", 503, "SYS.0503")
    });
    let req = || Request::get(Service::Iam, "list_auth_domains", "/v3/auth/domains");
    client.call::<serde_json::Value>(req()).await.unwrap();
    // A slow answer lands in the upper latency buckets.
    emu.shared().add_fault(FaultRule {
        latency_ms: 300,
        times: Some(1),
        ..FaultRule::new("iam.list_auth_domains")
    });
    client.call::<serde_json::Value>(req()).await.unwrap();

    let server = Server::start(m.clone(), Readiness::new()).await;
    let s = server.scrape().await;
    let count = |code: &str| {
        text::value(
            &s,
            "ccm_agent_api_requests_total",
            &[
                ("service", "iam"),
                ("operation", "list_auth_domains"),
                ("code", code),
            ],
        )
    };
    assert_eq!(count("200"), Some(2.0));
    assert_eq!(count("503"), Some(1.0));
    let op = [("service", "iam"), ("operation", "list_auth_domains")];
    assert_eq!(
        text::value(&s, "ccm_agent_api_request_duration_seconds_count", &op),
        Some(3.0)
    );
    let bucket = |le: &str| {
        text::value(
            &s,
            "ccm_agent_api_request_duration_seconds_bucket",
            &[
                ("service", "iam"),
                ("operation", "list_auth_domains"),
                ("le", le),
            ],
        )
        .unwrap()
    };
    assert_eq!(bucket("+Inf"), 3.0);
    // Only the slow answer has a lower bound on its duration: at most the two others are at or
    // below 0.25 s (how fast they were depends on the machine), never the 300 ms one.
    assert!(
        bucket("0.25") <= 2.0,
        "the 300 ms answer is above 0.25 s: {}",
        bucket("0.25")
    );
    assert_eq!(bucket("60"), 3.0);
    let sum = text::value(&s, "ccm_agent_api_request_duration_seconds_sum", &op).unwrap();
    assert!(sum >= 0.3, "sum {sum}");

    // No response at all: code "none".
    // A port held by a socket that is bound but never listens: connecting is refused, and
    // nothing else can take the port meanwhile (as it could one bound and released).
    let dead = tokio::net::TcpSocket::new_v4().unwrap();
    dead.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let offline = Client::builder(
        Endpoints::single(&format!("http://{dead_addr}")).unwrap(),
        Credentials::AkSk(emu.aksk()),
    )
    .retry(RetryPolicy::none())
    .observer(m.clone())
    .build()
    .unwrap();
    offline
        .call::<serde_json::Value>(Request::get(
            Service::Scm,
            "list_certificates",
            "/v3/scm/certificates",
        ))
        .await
        .unwrap_err();
    let raw = server.scrape_text().await;
    let s = text::parse(&raw).unwrap();
    assert_eq!(
        text::value(
            &s,
            "ccm_agent_api_requests_total",
            &[
                ("service", "scm"),
                ("operation", "list_certificates"),
                ("code", "none")
            ]
        ),
        Some(1.0)
    );
    // Credentials never show up.
    let cfg = emu.shared().config();
    assert!(!raw.contains(&cfg.access_key));
    assert!(!raw.contains(cfg.secret_key.expose()));
    server.stop().await;
}

#[tokio::test]
async fn token_refreshes_are_counted() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let m = Metrics::new();
    let client = Client::builder(
        Endpoints::single(&emu.base_url()).unwrap(),
        Credentials::Password(emu.password_identity()),
    )
    .observer(m.clone())
    .build()
    .unwrap();
    let list = || Request::get(Service::Scm, "list_certificates", "/v3/scm/certificates");
    client.call::<serde_json::Value>(list()).await.unwrap();
    client.call::<serde_json::Value>(list()).await.unwrap();
    let s = text::parse(&m.encode().unwrap()).unwrap();
    assert_eq!(
        text::value(&s, "ccm_agent_token_refreshes_total", &[]),
        Some(1.0),
        "one token serves both calls"
    );
    assert!(
        text::find(
            &s,
            "ccm_agent_api_requests_total",
            &[("service", "iam"), ("code", "201")]
        )
        .next()
        .is_some(),
        "the token request itself is observed: {s:?}"
    );
    let raw = m.encode().unwrap();
    assert!(!raw.contains(emu.shared().config().password.expose()));
}

/// `promtool check metrics` (the Prometheus project's linter) accepts the exposition with every
/// family populated, and with 200 more certificates whose subjects and paths hold quotes,
/// backslashes and line feeds.
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Some(promtool) = required::binary(&["promtool"], "prometheus") else {
        return;
    };
    let (clock, _t) = movable_clock(datetime!(2026-03-01 00:00 UTC));
    let m = Metrics::with_clock(clock);
    let readiness = Readiness::new();
    let server = Server::start(m.clone(), readiness.clone()).await;
    m.set_certificate(
        "app",
        "pca",
        &CertificateFacts::from_cert(&leaf_cert(), Some("/etc/ssl/app/cert.pem".as_ref())),
    );
    m.record_check("app", "ok");
    m.record_renewal("app", "ok", datetime!(2026-02-01 00:00 UTC));
    m.record_install("app", "ok");
    m.set_cert_ready("app", true);
    m.set_scm_expiring_without_successor("app", false);
    m.set_read_error("app", false);
    m.set_last_successful_check(datetime!(2026-02-01 00:00 UTC));
    use ccm_agent::cloud::Observer;
    m.request_done(
        Service::Pca,
        "apply_certificate",
        Some(200),
        Duration::from_millis(12),
    );
    m.request_done(
        Service::Scm,
        "list_certificates",
        None,
        Duration::from_secs(30),
    );
    m.token_refreshed();
    let leaf = CertificateFacts::from_cert(&leaf_cert(), None);
    for i in 0..200 {
        let name = format!("cert-{i:03} \"q\" \\ \n");
        let mut facts = leaf.clone();
        facts.serial_hex = format!("{:x}", 0x1000 + i);
        facts.subject.common_name = Some(format!("app{i}.example.com \"\\\n"));
        facts.subject.organizational_unit = (i % 2 == 0).then(|| "Ops\\Team\n2".to_owned());
        facts.filepath = Some(format!("/etc/ssl/we\"ird\\dir\n/{i}/cert.pem").into());
        m.set_certificate(&name, if i % 3 == 0 { "scm" } else { "pca" }, &facts);
        m.record_check(&name, "ok");
        m.record_check(&name, "api_error");
        m.set_cert_ready(&name, i % 5 != 0);
    }
    readiness.set_ready(true);
    let body = server.scrape_text().await;
    server.stop().await;
    assert_eq!(
        body,
        m.encode().unwrap(),
        "/metrics serves what encode() returns"
    );
    let s = text::parse(&body).unwrap();
    assert_eq!(text::find(&s, "x509_cert_not_after", &[]).count(), 201);
    let x = text::find(
        &s,
        "x509_cert_expires_in_seconds",
        &[("filepath", "/etc/ssl/we\"ird\\dir\n/7/cert.pem")],
    )
    .next()
    .unwrap();
    assert_eq!(x.labels["subject_CN"], "app7.example.com \"\\\n");
    assert_eq!(x.labels["filename"], "cert.pem");
    assert_eq!(x.value, 31.0 * 86400.0);
    if std::env::var_os("DUMP_METRICS").is_some() {
        println!("{body}");
    }

    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\nstdout: {}\nstderr: {}\n--- exposition ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool also reports lint problems (naming, units, counters) on success output.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.trim().is_empty(), "promtool lint: {report}");
}
