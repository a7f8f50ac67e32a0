//! SCM v3: the typed client against the emulator, for every operation and documented error.

use ccm_agent::cloud::scm::{
    self, BatchPushCertificateRequest, DeployCertificateRequest, DeployedResource,
    ImportCertificateRequest, ListCertificatesQuery, PushCertificateRequest, SortDir, SortKey,
    StatusFilter, TargetService,
};
use ccm_agent::cloud::{Client, CloudError, Request, Service};
use ccm_agent::emulator::scm::{KNOWN_REGIONS, demo_ca, demo_leaf};
use ccm_agent::emulator::{Emulator, EmulatorConfig, FaultRule, Seed};
use ccm_agent::pki;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

type Ca = (String, pki::PrivateKey);

async fn start() -> (Emulator, Client) {
    let emu = Emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let client = emu.client().expect("client");
    (emu, client)
}

fn leaf(ca: &Ca, cn: &str, sans: &[&str], from_days: i64, to_days: i64) -> (String, String) {
    let now = OffsetDateTime::now_utc();
    demo_leaf(
        ca,
        cn,
        sans,
        now + Duration::days(from_days),
        now + Duration::days(to_days),
    )
    .expect("leaf")
}

async fn import(client: &Client, ca: &Ca, name: &str, cn: &str, to_days: i64) -> String {
    let (cert, key) = leaf(ca, cn, &[], -10, to_days);
    client
        .scm_import_certificate(&ImportCertificateRequest::new(name, cert, key).chain(ca.0.clone()))
        .await
        .expect("import")
        .certificate_id
}

/// Send a request bypassing the client's own validation; return the API error.
async fn raw_err(client: &Client, req: Request) -> CloudError {
    client
        .call::<Value>(req)
        .await
        .expect_err("the emulator should refuse this")
}

fn assert_api(err: &CloudError, status: u16, code: &str) {
    assert_eq!(err.status(), Some(status), "{err}");
    assert_eq!(err.code(), Some(code), "{err}");
}

fn raw_import(body: Value) -> Request {
    Request::post(
        Service::Scm,
        "import_certificate",
        "/v3/scm/certificates/import",
    )
    .json(&body)
    .expect("json")
}

#[tokio::test]
async fn import_show_export_delete_roundtrip() {
    let (_emu, client) = start().await;
    let ca = demo_ca(OffsetDateTime::now_utc()).expect("ca");
    let (cert, key) = leaf(&ca, "www.example.org", &["a.example.org"], -1, 90);
    let id = client
        .scm_import_certificate(
            &ImportCertificateRequest::new("web_cert-1.0", cert.clone(), key.clone())
                .chain(ca.0.clone()),
        )
        .await
        .expect("import")
        .certificate_id;
    assert_eq!(id.len(), 16);
    assert!(id.starts_with("scs") && id[3..].bytes().all(|b| b.is_ascii_digit()));

    let info = pki::parse_cert(&cert).expect("parse");
    let d = client.scm_show_certificate(&id).await.expect("show");
    assert_eq!(d.name, "web_cert-1.0");
    assert_eq!(d.domain.as_deref(), Some("www.example.org"));
    assert_eq!(d.sans_list(), vec!["www.example.org", "a.example.org"]);
    assert_eq!(
        d.fingerprint.as_deref(),
        Some(info.sha1_fingerprint_hex.to_ascii_lowercase().as_str())
    );
    assert_eq!(d.not_after, Some(info.not_after));
    assert_eq!(d.not_before, Some(info.not_before));
    assert_eq!(d.signature_algorithm.as_deref(), Some("SHA256WITHECDSA"));
    assert_eq!(d.status.as_deref(), Some("UPLOAD"));
    assert_eq!(d.push_support.as_deref(), Some("ON"));

    // The service sends PEMs with \r\n; the client hands out \n.
    let raw = client
        .call_raw(
            Request::post(
                Service::Scm,
                "export_certificate",
                format!("/v3/scm/certificates/{id}/export"),
            )
            .idempotent(),
        )
        .await
        .expect("raw export");
    assert!(String::from_utf8_lossy(&raw.body).contains("\\r\\n"));
    let e = client.scm_export_certificate(&id).await.expect("export");
    for pem in [
        &e.certificate,
        &e.certificate_chain,
        &e.entire_certificate,
        &e.private_key.expose().to_owned(),
    ] {
        assert!(!pem.contains('\r'));
        assert!(pem.ends_with('\n'));
    }
    assert_eq!(pki::parse_cert(&e.certificate).expect("cert").der, info.der);
    let chain = pki::parse_pem_chain(&e.certificate_chain).expect("chain");
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].der, pki::parse_cert(&ca.0).expect("ca").der);
    assert_eq!(
        pki::parse_pem_chain(&e.entire_certificate)
            .expect("entire")
            .len(),
        2
    );
    let k = pki::PrivateKey::from_pem(e.private_key.expose()).expect("key");
    assert!(pki::key_matches_cert(&k, &info));
    assert!(!format!("{e:?}").contains("PRIVATE KEY"));

    client.scm_delete_certificate(&id).await.expect("delete");
    let err = client.scm_show_certificate(&id).await.expect_err("gone");
    assert_api(&err, 400, "SCM.0008");
    assert!(scm::is_not_found(&err));
}

#[tokio::test]
async fn rsa_key_and_chain_inside_certificate_field() {
    let (_emu, client) = start().await;
    let now = OffsetDateTime::now_utc();
    let ca = demo_ca(now).expect("ca");
    let key = pki::generate_key(pki::KeyAlgorithm::Rsa2048).expect("rsa");
    let spec = pki::CertificateSpec::new_leaf(
        pki::DistinguishedName::with_common_name("rsa.example.org"),
        now - Duration::days(1),
        now + Duration::days(30),
        vec![],
    );
    let cert = pki::issue(&spec, &pki::PublicKeySource::Key(&key), &ca.0, &ca.1).expect("issue");
    // No certificate_chain: the chain travels after the certificate, with \r\n line ends.
    let both = format!("{cert}{}", ca.0).replace('\n', "\r\n");
    let id = client
        .scm_import_certificate(&ImportCertificateRequest::new(
            "rsa-cert",
            both,
            key.to_pem(),
        ))
        .await
        .expect("import")
        .certificate_id;
    let d = client.scm_show_certificate(&id).await.expect("show");
    assert_eq!(d.signature_algorithm.as_deref(), Some("SHA256WITHECDSA"));
    assert_eq!(d.domain.as_deref(), Some("rsa.example.org"));
    assert!(d.sans_list().is_empty());
    let e = client.scm_export_certificate(&id).await.expect("export");
    assert_eq!(
        pki::parse_pem_chain(&e.certificate_chain)
            .expect("chain")
            .len(),
        1
    );
}

#[tokio::test]
async fn import_errors_have_documented_codes() {
    let (emu, client) = start().await;
    let ca = demo_ca(OffsetDateTime::now_utc()).expect("ca");
    let (cert, key) = leaf(&ca, "ok.example.org", &[], -1, 30);
    let (_, other_key) = leaf(&ca, "other.example.org", &[], -1, 30);
    let (expired, expired_key) = leaf(&ca, "old.example.org", &[], -60, -1);
    let (future, future_key) = leaf(&ca, "new.example.org", &[], 2, 60);
    let body =
        |name: &str, c: &str, k: &str| json!({"name": name, "certificate": c, "private_key": k});

    let cases: Vec<(Value, u16, &str)> = vec![
        (body("x", &cert, &key), 400, "SCM.0032"),
        (body("bad name!", &cert, &key), 400, "SCM.0032"),
        (
            json!({"certificate": cert, "private_key": key}),
            400,
            "SCM.0005",
        ),
        (
            body(
                "garbage",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &key,
            ),
            400,
            "SCM.0006",
        ),
        (body("notpem", "hello", &key), 400, "SCM.0006"),
        (
            body(
                "badkey",
                &cert,
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
            400,
            "SCM.0012",
        ),
        (
            body(
                "enckey",
                &cert,
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
            400,
            "SCM.0012",
        ),
        (body("emptykey", &cert, ""), 400, "SCM.0059"),
        (body("mismatch", &cert, &other_key), 400, "SCM.0014"),
        (body("expired", &expired, &expired_key), 400, "SCM.0042"),
        (body("future", &future, &future_key), 400, "SCM.0052"),
        (body("huge", &"A".repeat(4097), &key), 400, "SCM.0065"),
        (
            json!({"name": "badchain", "certificate": cert, "private_key": key, "certificate_chain": "junk"}),
            500,
            "SCM.0013",
        ),
        (
            json!({"name": "badeps", "certificate": cert, "private_key": key, "enterprise_project_id": "nope"}),
            400,
            "SCM.0005",
        ),
        (
            json!({"name": 5, "certificate": cert, "private_key": key}),
            400,
            "SCM.0005",
        ),
    ];
    for (b, status, code) in cases {
        let err = raw_err(&client, raw_import(b.clone())).await;
        assert_api(&err, status, code);
    }

    // Malformed JSON gets SCM's own parameter code.
    let mut req = raw_import(json!({}));
    req.body = Some(b"{\"name\": ".to_vec());
    assert_api(&raw_err(&client, req).await, 400, "SCM.0005");

    // duplicate_check=true refuses the same certificate; false (or absent) accepts it.
    let first = ImportCertificateRequest::new("dup", cert.clone(), key.clone());
    client.scm_import_certificate(&first).await.expect("first");
    let mut again = first.clone();
    again.duplicate_check = Some(false);
    client
        .scm_import_certificate(&again)
        .await
        .expect("dup allowed");
    again.duplicate_check = Some(true);
    let err = client
        .scm_import_certificate(&again)
        .await
        .expect_err("dup refused");
    assert_api(&err, 400, "SCM.0063");
    assert_eq!(emu.shared().with_state(|st| st.scm.certificates().len()), 2);

    // The client refuses obviously bad input before sending.
    let before = emu.shared().count_requests("scm.import_certificate");
    let err = client
        .scm_import_certificate(&ImportCertificateRequest::new("no", cert, key))
        .await
        .expect_err("invalid");
    assert!(matches!(err, CloudError::Invalid(_)), "{err}");
    assert_eq!(
        emu.shared().count_requests("scm.import_certificate"),
        before
    );
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let (_emu, client) = start().await;
    let id = "scs1554192131150";
    assert_api(
        &client.scm_show_certificate(id).await.expect_err("show"),
        400,
        "SCM.0008",
    );
    assert_api(
        &client.scm_delete_certificate(id).await.expect_err("delete"),
        400,
        "SCM.0008",
    );
    assert_api(
        &client.scm_export_certificate(id).await.expect_err("export"),
        400,
        "SCM.0008",
    );
    let push = PushCertificateRequest {
        target_project: "ap-southeast-1".into(),
        target_service: TargetService::Elb,
    };
    assert_api(
        &client
            .scm_push_certificate(id, &push)
            .await
            .expect_err("push"),
        400,
        "SCM.0008",
    );
    let err = raw_err(
        &client,
        Request::get(
            Service::Scm,
            "show_certificate",
            "/v3/scm/certificates/scs-1%2Cx",
        ),
    )
    .await;
    assert_api(&err, 400, "SCM.0020");
    assert!(matches!(
        client.scm_show_certificate("../etc").await,
        Err(CloudError::Invalid(_))
    ));
}

#[tokio::test]
async fn list_query_errors() {
    let (_emu, client) = start().await;
    for (k, v) in [
        ("limit", "15"),
        ("limit", "x"),
        ("offset", "101"),
        ("offset", "-1"),
        ("sort_key", "name"),
        ("sort_dir", "UP"),
        ("status", "BOGUS"),
        ("expired_days_since", "1096"),
        ("deploy_support", "maybe"),
        ("enterprise_project_id", "x"),
    ] {
        let req =
            Request::get(Service::Scm, "list_certificates", "/v3/scm/certificates").query(k, v);
        assert_api(&raw_err(&client, req).await, 400, "SCM.0005");
    }
    let q = ListCertificatesQuery {
        limit: Some(15),
        ..Default::default()
    };
    assert!(matches!(
        client.scm_list_certificates(&q).await,
        Err(CloudError::Invalid(_))
    ));
}

#[tokio::test]
async fn pagination_sorting_and_content() {
    let (emu, client) = start().await;
    let ca = demo_ca(OffsetDateTime::now_utc()).expect("ca");
    // Same certificate many times (duplicates allowed by default) keeps the test fast.
    let (cert, key) = leaf(&ca, "many.example.org", &[], -1, 100);
    for i in 0..60 {
        let req = ImportCertificateRequest::new(format!("cert-{i:03}"), cert.clone(), key.clone());
        client.scm_import_certificate(&req).await.expect("import");
    }
    let special = import(&client, &ca, "special-one", "special.example.net", 10).await;

    let page = client
        .scm_list_certificates(&ListCertificatesQuery {
            limit: Some(50),
            ..Default::default()
        })
        .await
        .expect("page 1");
    assert_eq!(page.total_count, 61);
    assert_eq!(page.certificates.len(), 50);
    let page2 = client
        .scm_list_certificates(&ListCertificatesQuery {
            limit: Some(50),
            offset: Some(50),
            ..Default::default()
        })
        .await
        .expect("page 2");
    assert_eq!(page2.certificates.len(), 11);
    let default = client
        .scm_list_certificates(&ListCertificatesQuery::default())
        .await
        .expect("default");
    assert_eq!(default.certificates.len(), 10, "default limit is 10");

    let all = client
        .scm_list_all_certificates(&ListCertificatesQuery::default())
        .await
        .expect("all");
    assert_eq!(all.len(), 61);
    let mut seen: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 61);
    assert_eq!(
        emu.shared().count_requests("scm.list_certificates"),
        3 + 2,
        "two pages of 50"
    );

    // Earliest expiry first; the special certificate expires first.
    let asc = client
        .scm_list_certificates(&ListCertificatesQuery {
            sort_key: Some(SortKey::CertExpiredTime),
            sort_dir: Some(SortDir::Asc),
            ..Default::default()
        })
        .await
        .expect("asc");
    assert_eq!(asc.certificates[0].id, special);
    let by_content = client
        .scm_list_certificates(&ListCertificatesQuery {
            content: Some("SPECIAL".into()),
            ..Default::default()
        })
        .await
        .expect("content");
    assert_eq!(by_content.total_count, 1);
    assert_eq!(
        by_content.certificates[0].domain.as_deref(),
        Some("special.example.net")
    );

    // Beyond offset 100 + limit 50 the listing cannot be complete: say so.
    for i in 0..90 {
        let req = ImportCertificateRequest::new(format!("more-{i:03}"), cert.clone(), key.clone());
        client.scm_import_certificate(&req).await.expect("import");
    }
    let err = client
        .scm_list_all_certificates(&ListCertificatesQuery::default())
        .await
        .expect_err("too many");
    assert!(
        matches!(err, CloudError::Invalid(ref m) if m.contains("151")),
        "{err}"
    );
}

#[tokio::test]
async fn expiry_filters_follow_the_emulator_clock() {
    let (emu, client) = start().await;
    let ca = demo_ca(OffsetDateTime::now_utc()).expect("ca");
    let soon = import(&client, &ca, "soon", "soon.example.org", 5).await;
    let later = import(&client, &ca, "later", "later.example.org", 200).await;
    let ids = |r: &scm::ListCertificatesResponse| {
        let mut v: Vec<String> = r.certificates.iter().map(|c| c.id.clone()).collect();
        v.sort();
        v
    };
    let q = |days: Option<u32>, status: Option<StatusFilter>, deploy: Option<bool>| {
        ListCertificatesQuery {
            expired_days_since: days,
            status,
            deploy_support: deploy,
            ..Default::default()
        }
    };
    let mut both = vec![soon.clone(), later.clone()];
    both.sort();

    let r = client
        .scm_list_certificates(&q(Some(0), None, None))
        .await
        .expect("list");
    assert_eq!(ids(&r), both);

    emu.shared().advance_clock(Duration::days(6));
    let r = client
        .scm_list_certificates(&q(None, None, None))
        .await
        .expect("list");
    assert_eq!(r.total_count, 2, "no filter: expired ones are listed too");
    let soon_row = r.certificates.iter().find(|c| c.id == soon).expect("soon");
    assert!(soon_row.is_expired());
    assert_eq!(soon_row.deploy_support, Some(false));
    let r = client
        .scm_list_certificates(&q(Some(0), None, None))
        .await
        .expect("list");
    assert_eq!(ids(&r), vec![later.clone()]);
    let r = client
        .scm_list_certificates(&q(Some(3), None, None))
        .await
        .expect("list");
    assert_eq!(ids(&r), both, "expired one day ago, within 3");
    let r = client
        .scm_list_certificates(&q(None, Some(StatusFilter::Expired), None))
        .await
        .expect("list");
    assert_eq!(ids(&r), vec![soon.clone()]);
    let r = client
        .scm_list_certificates(&q(None, Some(StatusFilter::Upload), None))
        .await
        .expect("list");
    assert_eq!(ids(&r), vec![later.clone()]);
    let r = client
        .scm_list_certificates(&q(None, None, Some(true)))
        .await
        .expect("list");
    assert_eq!(ids(&r), vec![later.clone()]);
    assert_eq!(
        client
            .scm_show_certificate(&soon)
            .await
            .expect("show")
            .status
            .as_deref(),
        Some("EXPIRED")
    );

    emu.shared().advance_clock(Duration::days(10));
    let r = client
        .scm_list_certificates(&q(Some(3), None, None))
        .await
        .expect("list");
    assert_eq!(ids(&r), vec![later.clone()]);

    // An expired certificate cannot be pushed.
    let push = PushCertificateRequest {
        target_project: "cn-north-4".into(),
        target_service: TargetService::Waf,
    };
    assert_api(
        &client
            .scm_push_certificate(&soon, &push)
            .await
            .expect_err("expired"),
        400,
        "SCM.0010",
    );
}

#[tokio::test]
async fn push_records_and_faults() {
    let (emu, client) = start().await;
    let ca = demo_ca(OffsetDateTime::now_utc()).expect("ca");
    let id = import(&client, &ca, "pushme", "push.example.org", 60).await;
    let push = |region: &str, svc| PushCertificateRequest {
        target_project: region.into(),
        target_service: svc,
    };
    client
        .scm_push_certificate(&id, &push("ap-southeast-1", TargetService::Elb))
        .await
        .expect("push");
    assert_api(
        &client
            .scm_push_certificate(&id, &push("mars-1", TargetService::Elb))
            .await
            .expect_err("unknown"),
        400,
        "SCM.0068",
    );
    assert_api(
        &client
            .scm_push_certificate(&id, &push("Bad Region", TargetService::Elb))
            .await
            .expect_err("bad"),
        400,
        "SCM.0061",
    );
    let req = Request::post(
        Service::Scm,
        "push_certificate",
        format!("/v3/scm/certificates/{id}/push"),
    )
    .json(&json!({"target_project": "cn-north-4", "target_service": "CDN"}))
    .expect("json");
    assert_api(&raw_err(&client, req).await, 400, "SCM.0030");
    // The reference's example writes the service in lower case.
    let req = Request::post(
        Service::Scm,
        "push_certificate",
        format!("/v3/scm/certificates/{id}/push"),
    )
    .json(&json!({"target_project": "my-kualalumpur-1", "target_service": "waf"}))
    .expect("json");
    client.call_empty(req).await.expect("lower-case waf");

    emu.shared().add_fault(FaultRule {
        target: Some("cn-north-4".into()),
        ..FaultRule::new("scm.push_certificate")
    });
    let err = client
        .scm_push_certificate(&id, &push("cn-north-4", TargetService::Waf))
        .await
        .expect_err("fault");
    assert_api(&err, 400, "SCM.0221");

    let recs = emu.shared().with_state(|st| st.scm.deployments().to_vec());
    let fp = emu
        .shared()
        .with_state(|st| st.scm.certificate(&id).map(|c| c.fingerprint.clone()))
        .expect("cert");
    assert_eq!(recs.len(), 3);
    assert!(
        recs[0].ok
            && recs[0].service == "ELB"
            && recs[0].project.as_deref() == Some("ap-southeast-1")
    );
    assert_eq!(recs[0].fingerprint, fp);
    assert!(recs[1].ok && recs[1].service == "WAF");
    assert!(!recs[2].ok && recs[2].message.starts_with("SCM.0221"));
    assert_eq!(
        emu.shared()
            .with_state(|st| st.scm.deployments_of(&id).len()),
        2
    );

    // The control endpoint shows the same records.
    let body: Value = reqwest::get(format!("{}/_emulator/deployments", emu.base_url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["deployments"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["deployments"][0]["certificate_id"], id.as_str());
}

#[tokio::test]
async fn batch_push_partial_failure_and_chunking() {
    let (emu, client) = start().await;
    let ca = demo_ca(OffsetDateTime::now_utc()).expect("ca");
    let id = import(&client, &ca, "batch", "batch.example.org", 60).await;
    emu.shared().add_fault(FaultRule {
        target: Some("cn-east-3".into()),
        error_code: Some("SCM.0204".into()),
        error_msg: Some("ELB does not support this region.".into()),
        ..FaultRule::new("scm.batch_push_certificate")
    });
    let body = BatchPushCertificateRequest {
        target_projects: vec![
            "cn-north-4".into(),
            "cn-east-3".into(),
            "ap-southeast-1".into(),
        ],
        target_service: TargetService::Elb,
    };
    let r = client
        .scm_batch_push_certificate(&id, &body)
        .await
        .expect("batch");
    assert_eq!(r.results.len(), 3);
    let failed: Vec<&str> = r.failures().map(|f| f.project_name.as_str()).collect();
    assert_eq!(failed, vec!["cn-east-3"]);
    assert_eq!(
        r.results[1].message,
        "SCM.0204:ELB does not support this region."
    );
    assert_eq!(r.results[0].cert_id.as_deref(), Some(id.as_str()));

    // Input errors.
    let eleven: Vec<String> = KNOWN_REGIONS[..11].iter().map(|s| s.to_string()).collect();
    let too_many = BatchPushCertificateRequest {
        target_projects: eleven.clone(),
        target_service: TargetService::Elb,
    };
    assert!(matches!(
        client.scm_batch_push_certificate(&id, &too_many).await,
        Err(CloudError::Invalid(_))
    ));
    let path = format!("/v3/scm/certificates/{id}/batch-push");
    for (b, code) in [
        (
            json!({"target_projects": eleven, "target_service": "ELB"}),
            "SCM.0505",
        ),
        (
            json!({"target_projects": [], "target_service": "ELB"}),
            "SCM.0505",
        ),
        (
            json!({"target_projects": ["cn-north-4", "cn-north-4"], "target_service": "ELB"}),
            "SCM.0507",
        ),
        (
            json!({"target_projects": ["cn-north-4"], "target_service": "OBS"}),
            "SCM.0030",
        ),
        (
            json!({"target_projects": ["nowhere-9"], "target_service": "ELB"}),
            "SCM.0068",
        ),
    ] {
        let req = Request::post(Service::Scm, "batch_push_certificate", path.clone())
            .json(&b)
            .expect("json");
        assert_api(&raw_err(&client, req).await, 400, code);
    }

    // 25 regions (one repeated): three calls, every region answered once.
    emu.shared().clear_requests();
    emu.shared().clear_faults();
    emu.shared().add_fault(FaultRule {
        target: Some(KNOWN_REGIONS[12].into()),
        ..FaultRule::new("scm.batch_push_certificate")
    });
    let mut regions: Vec<String> = KNOWN_REGIONS[..25].iter().map(|s| s.to_string()).collect();
    regions.push(KNOWN_REGIONS[0].to_string());
    let r = client
        .scm_batch_push_chunked(&id, &regions, TargetService::Waf)
        .await
        .expect("chunked");
    assert_eq!(r.results.len(), 25);
    assert_eq!(emu.shared().count_requests("scm.batch_push_certificate"), 3);
    let failed: Vec<&str> = r.failures().map(|f| f.project_name.as_str()).collect();
    assert_eq!(failed, vec![KNOWN_REGIONS[12]]);
    assert!(r.results[12].message.starts_with("SCM.0221:"));
    let ok_pushes = emu.shared().with_state(|st| {
        st.scm
            .deployments()
            .iter()
            .filter(|d| d.ok && d.operation == "batch_push" && d.service == "WAF")
            .count()
    });
    assert_eq!(ok_pushes, 24);
}

#[tokio::test]
async fn deploy_partial_failure_and_chunking() {
    let (emu, client) = start().await;
    let ca = demo_ca(OffsetDateTime::now_utc()).expect("ca");
    let id = import(&client, &ca, "deployme", "deploy.example.org", 60).await;
    let res_id = |i: usize| format!("{i:032x}");
    emu.shared().add_fault(FaultRule {
        target: Some(res_id(7)),
        error_code: Some("ELB.8904".into()),
        error_msg: Some(format!("certificate {} does not exist", res_id(7))),
        ..FaultRule::new("scm.deploy_certificate")
    });
    emu.shared().add_fault(FaultRule {
        target: Some(res_id(33)),
        ..FaultRule::new("scm.deploy_certificate")
    });
    let resources: Vec<DeployedResource> =
        (0..45).map(|i| DeployedResource::elb(res_id(i))).collect();
    let r = client
        .scm_deploy_chunked(&id, Some("cn-north-4"), TargetService::Elb, &resources)
        .await
        .expect("deploy");
    assert_eq!(emu.shared().count_requests("scm.deploy_certificate"), 3);
    let failed: Vec<&str> = r.failure_list.iter().map(|f| f.resource.as_str()).collect();
    assert_eq!(failed, vec![res_id(7), res_id(33)]);
    assert_eq!(
        r.failure_list[0].failure_info,
        format!("ELB.8904:certificate {} does not exist", res_id(7))
    );
    assert!(r.failure_list[1].failure_info.starts_with("SCM.0201:"));
    let recs = emu.shared().with_state(|st| st.scm.deployments().to_vec());
    assert_eq!(recs.len(), 45);
    assert_eq!(recs.iter().filter(|d| d.ok).count(), 43);
    assert!(
        recs.iter()
            .all(|d| d.project.as_deref() == Some("cn-north-4"))
    );

    // WAF needs type and enterprise project.
    let waf = DeployCertificateRequest {
        project_name: None,
        service_name: TargetService::Waf,
        resources: vec![DeployedResource::waf(res_id(1), "premium", "0")],
    };
    let r = client.scm_deploy_certificate(&id, &waf).await.expect("waf");
    assert!(r.failure_list.is_empty());
    let path = format!("/v3/scm/certificates/{id}/deploy");
    for (b, code) in [
        (
            json!({"service_name": "WAF", "resources": [{"id": "abc", "enterprise_project_id": "0"}]}),
            "SCM.0005",
        ),
        (
            json!({"service_name": "WAF", "resources": [{"id": "abc", "type": "shared", "enterprise_project_id": "0"}]}),
            "SCM.0005",
        ),
        (
            json!({"service_name": "WAF", "resources": [{"id": "abc", "type": "cloud"}]}),
            "SCM.0005",
        ),
        (
            json!({"service_name": "ELB", "resources": [{}]}),
            "SCM.0005",
        ),
        (
            json!({"service_name": "CDN", "resources": [{"id": "abc"}]}),
            "SCM.0501",
        ),
        (json!({"service_name": "ELB", "resources": []}), "SCM.0505"),
        (
            json!({"service_name": "ELB", "resources": [{"id": "a"}, {"id": "a"}]}),
            "SCM.0507",
        ),
        (
            json!({"service_name": "ELB", "project_name": "nowhere-1", "resources": [{"id": "a"}]}),
            "SCM.0068",
        ),
    ] {
        let req = Request::post(Service::Scm, "deploy_certificate", path.clone())
            .json(&b)
            .expect("json");
        assert_api(&raw_err(&client, req).await, 400, code);
    }
    let mut req = Request::post(Service::Scm, "deploy_certificate", path).idempotent();
    req.body = Some(b"[not json".to_vec());
    assert_api(&raw_err(&client, req).await, 400, "SCM.0005");
    let too_many = DeployCertificateRequest {
        project_name: None,
        service_name: TargetService::Elb,
        resources: resources[..21].to_vec(),
    };
    assert!(matches!(
        client.scm_deploy_certificate(&id, &too_many).await,
        Err(CloudError::Invalid(_))
    ));
}

#[tokio::test]
async fn demo_seed() {
    let emu = Emulator::start(EmulatorConfig {
        seed: Some(Seed::Demo),
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let client = emu.client().expect("client");
    let all = client
        .scm_list_all_certificates(&ListCertificatesQuery::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 6);
    assert_eq!(all.iter().filter(|c| c.is_expired()).count(), 1);
    // Newest import first (certUpdateTime DESC): the newer demo-app before the older one.
    let apps: Vec<_> = all.iter().filter(|c| c.name == "demo-app").collect();
    assert_eq!(apps.len(), 2);
    assert!(apps[0].expire_time > apps[1].expire_time);
    let within_30 = client
        .scm_list_certificates(&ListCertificatesQuery {
            sort_key: Some(SortKey::CertExpiredTime),
            sort_dir: Some(SortDir::Asc),
            status: Some(StatusFilter::Upload),
            ..Default::default()
        })
        .await
        .expect("list");
    let names: Vec<&str> = within_30
        .certificates
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["demo-shop", "demo-app", "demo-api", "demo-www", "demo-app"]
    );
    let e = client
        .scm_export_certificate(&all[0].id)
        .await
        .expect("export");
    let leaf = pki::parse_cert(&e.certificate).expect("leaf");
    let chain = pki::parse_pem_chain(&e.certificate_chain).expect("chain");
    pki::verify_signed_by(&leaf, &chain[0]).expect("signed by the demo CA");
}
