//! The emulator's shared machinery, driven through the real client: AK/SK verification, IAM
//! tokens, fault injection, the control endpoints, TLS and persistence.

use std::time::Duration;

use ccm_agent::cloud::{
    AkSk, Client, CloudError, Credentials, Endpoints, PasswordIdentity, Request, RetryPolicy,
    Secret, Service, auth,
};
use ccm_agent::emulator::{Emulator, EmulatorConfig, FaultRule};

async fn start() -> Emulator {
    Emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator starts")
}

fn domains() -> Request {
    Request::get(Service::Iam, "list_auth_domains", "/v3/auth/domains")
}

fn client_with(
    emu: &Emulator,
    creds: Credentials,
    retry: RetryPolicy,
    timeout: Duration,
) -> Client {
    Client::builder(Endpoints::single(&emu.base_url()).expect("url"), creds)
        .retry(retry)
        .timeout(timeout)
        .build()
        .expect("client")
}

#[tokio::test]
async fn aksk_signed_requests_are_accepted_and_logged() {
    let emu = start().await;
    let client = emu.client().expect("client");
    let v: serde_json::Value = client.call(domains()).await.expect("signed call works");
    assert_eq!(
        v["domains"][0]["id"],
        ccm_agent::emulator::DEFAULT_DOMAIN_ID
    );
    let log = emu.shared().requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].operation, "iam.list_auth_domains");
    assert_eq!(log[0].auth, "aksk");
    assert_eq!(log[0].status, 200);
}

#[tokio::test]
async fn wrong_secret_and_wrong_domain_are_refused() {
    let emu = start().await;
    let bad_sk = AkSk::new(ccm_agent::emulator::DEFAULT_ACCESS_KEY, "not-the-secret")
        .with_domain_id(ccm_agent::emulator::DEFAULT_DOMAIN_ID);
    let client = client_with(
        &emu,
        Credentials::AkSk(bad_sk),
        RetryPolicy::none(),
        Duration::from_secs(5),
    );
    let err = client
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("refused");
    assert_eq!(err.status(), Some(401), "{err}");
    assert_eq!(err.code(), Some("APIGW.0301"));
    assert!(
        !err.to_string().contains("not-the-secret"),
        "secret leaked: {err}"
    );

    let bad_domain = emu
        .aksk()
        .with_domain_id("ffffffffffffffffffffffffffffffff");
    let client = client_with(
        &emu,
        Credentials::AkSk(bad_domain),
        RetryPolicy::none(),
        Duration::from_secs(5),
    );
    // X-Domain-Id goes to the global services (SCM, PCA), not to IAM.
    let scm = Request::get(Service::Scm, "list_certificates", "/v3/scm/certificates");
    let err = client.call_raw(scm).await.expect_err("refused");
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.to_string().contains("X-Domain-Id"), "{err}");
}

/// Sign a request by hand so the test can tamper with it after signing.
fn signed_headers(
    host: &str,
    date: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Host".to_owned(), host.to_owned()),
        ("X-Sdk-Date".to_owned(), date.to_owned()),
    ];
    let req = auth::SignableRequest {
        method,
        path,
        query: &[],
        headers: &headers,
        body,
    };
    let value = auth::authorization(
        ccm_agent::emulator::DEFAULT_ACCESS_KEY,
        &Secret::new(ccm_agent::emulator::DEFAULT_SECRET_KEY),
        &req,
    );
    headers.push(("Authorization".to_owned(), value));
    headers
}

async fn send_raw(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut b = http.request(method, format!("{}{path}", emu.base_url()));
    for (k, v) in headers {
        if k != "Host" {
            b = b.header(k, v);
        }
    }
    let resp = b.body(body.to_vec()).send().await.expect("send");
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn tampered_body_and_stale_date_are_refused() {
    ccm_agent::cloud::install_crypto_provider();
    let emu = start().await;
    let host = emu.addr().to_string();
    let now = auth::format_sdk_date(time::OffsetDateTime::now_utc());
    let path = "/v3/auth/domains";

    let good = signed_headers(&host, &now, "GET", path, b"");
    let (status, _) = send_raw(&emu, reqwest::Method::GET, path, &good, b"").await;
    assert_eq!(status, 200, "a correctly signed raw request passes");

    // Signed over one body, sent with another.
    let tokens = "/v3/scm/certificates/import";
    let signed = signed_headers(&host, &now, "POST", tokens, br#"{"name":"a"}"#);
    let (status, body) = send_raw(
        &emu,
        reqwest::Method::POST,
        tokens,
        &signed,
        br#"{"name":"b"}"#,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error_code"], "APIGW.0301");
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{body}"
    );

    let stale = auth::format_sdk_date(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
    let old = signed_headers(&host, &stale, "GET", path, b"");
    let (status, body) = send_raw(&emu, reqwest::Method::GET, path, &old, b"").await;
    assert_eq!(status, 401);
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap_or_default()
            .contains("time"),
        "{body}"
    );

    let (status, body) = send_raw(&emu, reqwest::Method::GET, path, &[], b"").await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn domain_id_is_discovered_once_like_the_sdks() {
    let emu = start().await;
    let no_domain = AkSk::new(
        ccm_agent::emulator::DEFAULT_ACCESS_KEY,
        ccm_agent::emulator::DEFAULT_SECRET_KEY,
    );
    let client = client_with(
        &emu,
        Credentials::AkSk(no_domain),
        RetryPolicy::none(),
        Duration::from_secs(5),
    );
    // An SCM path: the domain id must be looked up first, then sent.
    for _ in 0..2 {
        let _ = client
            .call_raw(Request::get(
                Service::Scm,
                "list_certificates",
                "/v3/scm/certificates",
            ))
            .await;
    }
    assert_eq!(emu.shared().count_requests("iam.list_auth_domains"), 1);
    let scm: Vec<_> = emu
        .shared()
        .requests()
        .into_iter()
        .filter(|r| r.operation == "scm.list_certificates")
        .collect();
    assert_eq!(scm.len(), 2);
    assert!(
        scm.iter().all(|r| r.auth == "aksk" && r.status != 401),
        "{scm:?}"
    );
}

#[tokio::test]
async fn password_token_is_cached_and_refetched_once_after_expiry() {
    let emu = start().await;
    let client = client_with(
        &emu,
        Credentials::Password(emu.password_identity()),
        RetryPolicy::none(),
        Duration::from_secs(5),
    );
    for _ in 0..3 {
        let _: serde_json::Value = client.call(domains()).await.expect("token call");
    }
    assert_eq!(
        emu.shared().count_requests("iam.create_token"),
        1,
        "token cached"
    );
    assert!(emu.shared().requests().iter().any(|r| r.auth == "token"));

    emu.shared().expire_tokens();
    let _: serde_json::Value = client.call(domains()).await.expect("re-authenticates");
    assert_eq!(
        emu.shared().count_requests("iam.create_token"),
        2,
        "one re-fetch after a 401"
    );

    // Moving the emulator clock a day ahead expires the token too.
    emu.shared().advance_clock(time::Duration::hours(25));
    let _: serde_json::Value = client.call(domains()).await.expect("re-authenticates");
    assert_eq!(emu.shared().count_requests("iam.create_token"), 3);
}

#[tokio::test]
async fn wrong_password_is_a_clear_error_without_the_password() {
    let emu = start().await;
    let identity = PasswordIdentity {
        password: Secret::new("hunter2-wrong"),
        ..emu.password_identity()
    };
    let client = client_with(
        &emu,
        Credentials::Password(identity),
        RetryPolicy::none(),
        Duration::from_secs(5),
    );
    let err = client
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("refused");
    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(
        text.contains("iam") && text.contains("password is wrong"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn injected_errors_are_retried_when_safe() {
    let emu = start().await;
    emu.shared().add_fault(FaultRule {
        times: Some(2),
        ..FaultRule::error("iam.list_auth_domains", 503, "APIGW.0503")
    });
    let retry = RetryPolicy {
        base_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    let client = client_with(
        &emu,
        Credentials::AkSk(emu.aksk()),
        retry,
        Duration::from_secs(5),
    );
    let _: serde_json::Value = client
        .call(domains())
        .await
        .expect("third attempt succeeds");
    assert_eq!(emu.shared().count_requests("iam.list_auth_domains"), 3);
    let faults: Vec<_> = emu
        .shared()
        .requests()
        .into_iter()
        .filter_map(|r| r.fault)
        .collect();
    assert_eq!(faults, vec!["error", "error"]);
}

#[tokio::test]
async fn creating_calls_are_not_repeated_after_an_unknown_outcome() {
    let emu = start().await;
    emu.shared()
        .add_fault(FaultRule::error("scm.import_certificate", 500, "SCM.0500"));
    let client = client_with(
        &emu,
        Credentials::AkSk(emu.aksk()),
        RetryPolicy::default(),
        Duration::from_secs(5),
    );
    let req = Request::post(
        Service::Scm,
        "import_certificate",
        "/v3/scm/certificates/import",
    )
    .json(&serde_json::json!({"name": "x"}))
    .expect("body");
    let err = client.call_raw(req).await.expect_err("500");
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.code(), Some("SCM.0500"));
    assert_eq!(
        emu.shared().count_requests("scm.import_certificate"),
        1,
        "a create is sent once"
    );
}

#[tokio::test]
async fn timeouts_drops_and_broken_bodies_are_typed_errors() {
    let emu = start().await;
    let client = client_with(
        &emu,
        Credentials::AkSk(emu.aksk()),
        RetryPolicy::none(),
        Duration::from_millis(400),
    );
    // Everything that must *not* time out uses a client with a generous
    // timeout, so a slow machine cannot turn those cases into timeouts.
    let patient = client_with(
        &emu,
        Credentials::AkSk(emu.aksk()),
        RetryPolicy::none(),
        Duration::from_secs(10),
    );

    emu.shared().add_fault(FaultRule {
        timeout: true,
        times: Some(1),
        ..FaultRule::new("iam.list_auth_domains")
    });
    let err = client
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("timeout");
    assert!(matches!(err, CloudError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());

    emu.shared().add_fault(FaultRule {
        drop_connection: true,
        times: Some(1),
        ..FaultRule::new("iam.list_auth_domains")
    });
    let err = patient
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("dropped");
    assert!(matches!(err, CloudError::Http { .. }), "{err:?}");
    assert!(err.is_retryable());

    emu.shared().add_fault(FaultRule {
        truncate_body: true,
        times: Some(1),
        ..FaultRule::new("iam.list_auth_domains")
    });
    let err = patient
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("truncated");
    assert!(matches!(err, CloudError::Decode { .. }), "{err:?}");

    emu.shared().add_fault(FaultRule {
        replace_body: Some("{\"domains\": [".into()),
        times: Some(1),
        ..FaultRule::new("iam.*")
    });
    let err = patient
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("malformed");
    assert!(matches!(err, CloudError::Decode { .. }), "{err:?}");
    assert!(!err.is_retryable());

    let started = std::time::Instant::now();
    emu.shared().add_fault(FaultRule {
        latency_ms: 300,
        times: Some(1),
        ..FaultRule::new("*")
    });
    let _: serde_json::Value = patient.call(domains()).await.expect("slow but fine");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn control_endpoints_drive_clock_faults_and_log() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let base = emu.base_url();
    let before: serde_json::Value = http
        .get(format!("{base}/_emulator/clock"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let after: serde_json::Value = http
        .post(format!("{base}/_emulator/clock"))
        .body(r#"{"advance_secs": 86400}"#)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let delta = after["now_ms"].as_i64().unwrap_or(0) - before["now_ms"].as_i64().unwrap_or(0);
    assert!(
        (86_400_000..86_460_000).contains(&delta),
        "clock moved by {delta} ms"
    );
    assert_eq!(after["offset_secs"], 86400);

    let resp = http
        .post(format!("{base}/_emulator/faults"))
        .body(r#"{"operation":"iam.*","status":500,"bogus":1}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400, "unknown fault fields rejected");
    let resp = http
        .post(format!("{base}/_emulator/faults"))
        .body(r#"[{"operation":"iam.list_auth_domains","status":429,"error_code":"APIGW.0308","times":1}]"#)
        .send().await.expect("post");
    assert_eq!(resp.status(), 200);
    let client = client_with(
        &emu,
        Credentials::AkSk(emu.aksk()),
        RetryPolicy::none(),
        Duration::from_secs(5),
    );
    let err = client
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("429");
    assert_eq!(err.code(), Some("APIGW.0308"));
    let log: Vec<serde_json::Value> = http
        .get(format!("{base}/_emulator/requests"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        log.last().map(|r| r["status"].clone()),
        Some(serde_json::json!(429))
    );
    assert_eq!(
        http.delete(format!("{base}/_emulator/faults"))
            .send()
            .await
            .expect("del")
            .status(),
        204
    );
    assert!(emu.shared().faults().is_empty());
}

#[tokio::test]
async fn tls_mode_serves_https_trusted_only_through_its_ca() {
    let emu = Emulator::start(EmulatorConfig {
        tls: true,
        ..EmulatorConfig::default()
    })
    .await
    .expect("tls emulator");
    assert!(emu.base_url().starts_with("https://"));
    let trusted = emu.client().expect("client with CA");
    let _: serde_json::Value = trusted
        .call(domains())
        .await
        .expect("TLS call with the emulator CA");

    let untrusted = client_with(
        &emu,
        Credentials::AkSk(emu.aksk()),
        RetryPolicy::none(),
        Duration::from_secs(5),
    );
    let err = untrusted
        .call::<serde_json::Value>(domains())
        .await
        .expect_err("unknown CA refused");
    assert!(matches!(err, CloudError::Http { .. }), "{err:?}");
}

#[tokio::test]
async fn state_file_persists_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    let config = EmulatorConfig {
        state_file: Some(path.clone()),
        ..EmulatorConfig::default()
    };
    let emu = Emulator::start(config.clone()).await.expect("start");
    emu.shared().advance_clock(time::Duration::days(3));
    emu.shutdown().await;
    assert!(path.exists());
    let emu = Emulator::start(config).await.expect("restart");
    assert_eq!(emu.shared().with_state(|s| s.clock_offset_secs), 3 * 86_400);

    std::fs::write(&path, b"{ not json").expect("write");
    let err = Emulator::start(EmulatorConfig {
        state_file: Some(path.clone()),
        ..EmulatorConfig::default()
    })
    .await
    .err()
    .expect("corrupt state refused");
    assert!(format!("{err:#}").contains("state.json"), "{err:#}");
}

#[test]
fn binary_prints_its_url_and_serves() {
    use std::io::BufRead;
    // reqwest needs a rustls provider; without this the test depends on another one having
    // started an emulator or built a client first.
    ccm_agent::cloud::install_crypto_provider();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
        .args(["emulator", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read");
    let url = line.trim().to_owned();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let health = rt.block_on(async {
        reqwest::get(format!("{url}/_emulator/health"))
            .await
            .expect("get")
            .text()
            .await
            .expect("text")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(health, "ok");
}
