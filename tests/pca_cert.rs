//! PCA private certificates: the typed client against the emulator, every operation and the
//! documented error paths, with the issued X.509 parsed back and chains verified (pki and
//! `openssl verify`).

use ccm_agent::cloud::pca::cert::{
    ApplyCertificateRequest, CertificateSortKey, CertificateStatus, CsrCertificateRequest,
    CsrCertificateType, CustomizedExtension, ExportType, ExtendedKeyUsage, ListCertificatesQuery,
    RevokeReason, SortDir, SubjectAlternativeName,
};
use ccm_agent::cloud::pca::{DistinguishedName, Validity};
use ccm_agent::cloud::{Client, CloudError, Request, Service};
use ccm_agent::emulator::pca::cert::{TestCa, insert_test_ca, read_stored_zip};
use ccm_agent::emulator::pca::keystore;
use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::pki;

struct Fixture {
    emu: Emulator,
    client: Client,
    root_id: String,
    sub_id: String,
}

impl Fixture {
    async fn new() -> Self {
        let emu = Emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        let client = emu.client().expect("client");
        let shared = emu.shared().clone();
        let (root_id, sub_id) = tokio::task::spawn_blocking(move || {
            let root = insert_test_ca(&shared, &TestCa::root("Test Root CA")).expect("root");
            let mut sub = TestCa::subordinate("Test Sub CA", &root);
            sub.organization = Some("Sub Org".into());
            let sub = insert_test_ca(&shared, &sub).expect("sub");
            (root, sub)
        })
        .await
        .expect("join");
        Fixture {
            emu,
            client,
            root_id,
            sub_id,
        }
    }

    fn ca_pem(&self, id: &str) -> String {
        self.emu.shared().with_state(|st| {
            st.pca.cas[id]
                .certificate_pem
                .clone()
                .expect("CA certificate")
        })
    }

    fn now(&self) -> time::OffsetDateTime {
        self.emu.shared().now()
    }

    async fn apply(&self, cn: &str) -> String {
        self.client
            .apply_private_certificate(&ApplyCertificateRequest::new(
                &self.sub_id,
                cn,
                "EC256",
                "SHA256",
                Validity::days(30),
            ))
            .await
            .expect("apply")
    }

    /// POST/GET a raw body, bypassing the client's own checks; returns the API error.
    async fn raw_err(&self, method: &str, path: &str, body: Option<&str>) -> CloudError {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut req = match method {
            "GET" => Request::get(Service::Pca, "raw", path),
            "DELETE" => Request::delete(Service::Pca, "raw", path),
            _ => Request::post(Service::Pca, "raw", path),
        };
        req.body = body.map(|b| b.as_bytes().to_vec());
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            req = req.query(&k, v);
        }
        self.client
            .call::<serde_json::Value>(req)
            .await
            .expect_err("the emulator should refuse this")
    }
}

fn assert_api(err: &CloudError, status: u16, code: &str) {
    assert_eq!(err.status(), Some(status), "{err}");
    assert_eq!(err.code(), Some(code), "{err}");
}

fn apply_body(issuer: &str, cn: &str) -> ApplyCertificateRequest {
    ApplyCertificateRequest::new(issuer, cn, "EC256", "SHA256", Validity::days(30))
}

#[tokio::test]
async fn apply_with_every_key_algorithm_and_hash() {
    let f = Fixture::new().await;
    let root_pem = f.ca_pem(&f.root_id);
    let cases = [
        ("EC256", "SHA256", pki::KeyAlgorithm::Ec256),
        ("EC384", "SHA384", pki::KeyAlgorithm::Ec384),
        ("EC256", "SHA512", pki::KeyAlgorithm::Ec256),
        ("RSA2048", "SHA256", pki::KeyAlgorithm::Rsa2048),
        ("RSA4096", "SHA512", pki::KeyAlgorithm::Rsa4096),
    ];
    for (alg, hash, expect_alg) in cases {
        let cn = format!("{}-{}.example.com", alg.to_lowercase(), hash.to_lowercase());
        let mut req = ApplyCertificateRequest::new(&f.sub_id, &cn, alg, hash, Validity::days(10));
        req.subject_alternative_names = vec![SubjectAlternativeName::dns(&cn)];
        let id = f
            .client
            .apply_private_certificate(&req)
            .await
            .expect("apply");
        let detail = f.client.show_private_certificate(&id).await.expect("show");
        assert_eq!(detail.status, CertificateStatus::Issued);
        assert_eq!(detail.key_algorithm.as_deref(), Some(alg));
        assert_eq!(detail.signature_algorithm.as_deref(), Some(hash));
        assert_eq!(detail.gen_mode.as_deref(), Some("GENERATE"));
        assert_eq!(detail.issuer_id.as_deref(), Some(f.sub_id.as_str()));
        assert_eq!(detail.issuer_name.as_deref(), Some("Test Sub CA"));

        let exp = f
            .client
            .export_private_certificate(&id, ExportType::Nginx)
            .await
            .expect("export");
        assert!(!exp.certificate.contains('\r'));
        let info = pki::parse_cert(&exp.certificate).expect("parse");
        assert_eq!(info.key_algorithm, Some(expect_alg), "{alg}");
        assert!(
            info.signature_algorithm.starts_with(hash),
            "{alg}/{hash}: {}",
            info.signature_algorithm
        );
        assert_eq!(
            info.serial_hex,
            detail.serial_number.clone().expect("serial")
        );
        assert_eq!(
            Some(info.not_after),
            detail.not_after,
            "detail not_after is the certificate's"
        );
        let key_pem = exp.private_key.expect("a generated key is exported");
        if alg.starts_with("RSA") {
            assert!(key_pem.contains("BEGIN RSA PRIVATE KEY"), "{key_pem}");
        }
        let key = pki::PrivateKey::from_pem(&key_pem).expect("key");
        assert!(pki::key_matches_cert(&key, &info));
        pki::verify_chain(&exp.certificate, &exp.certificate_chain, &root_pem, f.now())
            .expect("chain verifies to the root");
        let chain = pki::parse_pem_chain(&exp.certificate_chain).expect("chain");
        assert_eq!(chain.len(), 2, "sub CA then root");
        assert_eq!(
            chain[1].subject.common_name.as_deref(),
            Some("Test Root CA")
        );
    }
}

#[tokio::test]
async fn sans_eku_key_usages_and_dn_inheritance() {
    let f = Fixture::new().await;
    let mut req = apply_body(&f.sub_id, "svc.example.com");
    req.distinguished_name.organizational_unit = Some("Platform".into());
    req.distinguished_name.state = Some("Sichuan".into());
    req.subject_alternative_names = vec![
        SubjectAlternativeName::dns("svc.example.com"),
        SubjectAlternativeName::dns("*.svc.example.com"),
        SubjectAlternativeName::ip("10.1.2.3"),
        SubjectAlternativeName::email("ops@example.com"),
        SubjectAlternativeName::uri("spiffe://example.com/ns/default/sa/svc"),
    ];
    req.extended_key_usage = Some(ExtendedKeyUsage {
        server_auth: true,
        client_auth: true,
        time_stamping: true,
        ..Default::default()
    });
    req.key_usages = Some(vec!["digitalSignature".into(), "keyEncipherment".into()]);
    req.customized_extension = Some(CustomizedExtension {
        object_identifier: "1.3.6.1.4.1.2011.4.1".into(),
        value: "This is custom extensions.".into(),
    });
    let id = f
        .client
        .apply_private_certificate(&req)
        .await
        .expect("apply");
    let exp = f
        .client
        .export_private_certificate(&id, ExportType::Other)
        .await
        .expect("export");
    let info = pki::parse_cert(&exp.certificate).expect("parse");
    let kinds: Vec<(&str, String)> = info.sans.iter().map(|s| (s.kind(), s.value())).collect();
    assert_eq!(
        kinds,
        vec![
            ("DNS", "svc.example.com".to_owned()),
            ("DNS", "*.svc.example.com".to_owned()),
            ("IP", "10.1.2.3".to_owned()),
            ("EMAIL", "ops@example.com".to_owned()),
            ("URI", "spiffe://example.com/ns/default/sa/svc".to_owned()),
        ]
    );
    assert_eq!(
        info.extended_key_usages,
        vec![
            pki::ExtendedKeyUsage::ServerAuth,
            pki::ExtendedKeyUsage::ClientAuth,
            pki::ExtendedKeyUsage::TimeStamping
        ]
    );
    assert_eq!(
        info.key_usages,
        vec![
            pki::KeyUsage::DigitalSignature,
            pki::KeyUsage::KeyEncipherment
        ]
    );
    assert!(!info.is_ca);
    let (_, x509) = x509_parser::parse_x509_certificate(&info.der).expect("x509");
    let ext = |oid: &str| {
        x509.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
            .unwrap_or_else(|| panic!("extension {oid} missing"))
    };
    // The customized extension is in the certificate: non-critical, the value a UTF8String.
    let custom = ext("1.3.6.1.4.1.2011.4.1");
    assert!(!custom.critical);
    let text = b"This is custom extensions.";
    assert_eq!(custom.value, [&[0x0c, text.len() as u8][..], text].concat());
    // Strict DER: BasicConstraints leaves out its DEFAULT cA FALSE (an empty SEQUENCE).
    let bc = ext("2.5.29.19");
    assert!(bc.critical);
    assert_eq!(bc.value, [0x30, 0x00]);
    // Given attributes win; absent ones come from the issuing CA (C=CN, O=Sub Org).
    assert_eq!(info.subject.common_name.as_deref(), Some("svc.example.com"));
    assert_eq!(
        info.subject.organizational_unit.as_deref(),
        Some("Platform")
    );
    assert_eq!(info.subject.state.as_deref(), Some("Sichuan"));
    assert_eq!(info.subject.country.as_deref(), Some("CN"));
    assert_eq!(info.subject.organization.as_deref(), Some("Sub Org"));
    assert_eq!(info.subject.locality, None);
    assert_eq!(info.issuer.common_name.as_deref(), Some("Test Sub CA"));
    let detail = f.client.show_private_certificate(&id).await.expect("show");
    let dn = detail.distinguished_name.expect("dn");
    assert_eq!(dn.organization.as_deref(), Some("Sub Org"));
    assert_eq!(dn.organizational_unit.as_deref(), Some("Platform"));

    // Defaults: no key usages given → digitalSignature + keyAgreement; no EKU extension.
    let id = f
        .client
        .apply_private_certificate(&apply_body(&f.sub_id, "defaults.example.com"))
        .await
        .expect("apply");
    let exp = f
        .client
        .export_private_certificate(&id, ExportType::Apache)
        .await
        .expect("export");
    let info = pki::parse_cert(&exp.certificate).expect("parse");
    assert_eq!(
        info.key_usages,
        vec![pki::KeyUsage::DigitalSignature, pki::KeyUsage::KeyAgreement]
    );
    assert!(info.extended_key_usages.is_empty());
    assert!(info.sans.is_empty());
}

#[tokio::test]
async fn validity_bounds() {
    let f = Fixture::new().await;
    let now_ms = ccm_agent::cloud::time::to_epoch_ms(f.now());

    // HOUR / DAY / MONTH (31 days) / start_from in the near future.
    for (validity, secs) in [
        (Validity::hours(5), 5 * 3600),
        (Validity::days(3), 3 * 86400),
        (
            Validity {
                kind: "MONTH".into(),
                value: 2,
                start_from: None,
            },
            62 * 86400,
        ),
    ] {
        let mut req = apply_body(&f.sub_id, "v.example.com");
        req.validity = validity;
        let id = f
            .client
            .apply_private_certificate(&req)
            .await
            .expect("apply");
        let d = f.client.show_private_certificate(&id).await.expect("show");
        let span = d.not_after.expect("na") - d.not_before.expect("nb");
        assert!(
            (span.whole_seconds() - secs).abs() <= 1,
            "span {span} vs {secs}s"
        );
    }
    let start = now_ms + 3_600_000;
    let mut req = apply_body(&f.sub_id, "later.example.com");
    req.validity = Validity {
        kind: "DAY".into(),
        value: 1,
        start_from: Some(start),
    };
    let id = f
        .client
        .apply_private_certificate(&req)
        .await
        .expect("apply");
    let d = f.client.show_private_certificate(&id).await.expect("show");
    assert_eq!(
        d.not_before.map(ccm_agent::cloud::time::to_epoch_ms),
        Some(start / 1000 * 1000)
    );

    let refused = [
        // Beyond the CA's not_after (the sub CA lives 5 years).
        Validity::years(6),
        // More than 20 years.
        Validity::years(21),
        Validity {
            kind: "DAY".into(),
            value: 20 * 366,
            start_from: None,
        },
        // Starts more than 5 minutes in the past.
        Validity {
            kind: "DAY".into(),
            value: 1,
            start_from: Some(now_ms - 10 * 60 * 1000),
        },
        Validity {
            kind: "WEEK".into(),
            value: 1,
            start_from: None,
        },
        Validity {
            kind: "DAY".into(),
            value: 0,
            start_from: None,
        },
    ];
    for v in refused {
        let mut req = apply_body(&f.sub_id, "bad.example.com");
        req.validity = v.clone();
        let err = f
            .client
            .apply_private_certificate(&req)
            .await
            .expect_err("refused");
        assert_api(&err, 400, "PCA.00020109");
    }
    // start_from 4 minutes ago is within the tolerance.
    let mut req = apply_body(&f.sub_id, "tolerated.example.com");
    req.validity.start_from = Some(now_ms - 4 * 60 * 1000);
    f.client
        .apply_private_certificate(&req)
        .await
        .expect("4 minutes back is fine");
}

#[tokio::test]
async fn apply_validation_errors() {
    let f = Fixture::new().await;
    let c = &f.client;
    let mut req = apply_body(&f.sub_id, "x.example.com");
    req.key_algorithm = "RSA1024".into();
    assert_api(
        &c.apply_private_certificate(&req).await.expect_err("alg"),
        400,
        "PCA.00020102",
    );
    let mut req = apply_body(&f.sub_id, "x.example.com");
    req.signature_algorithm = "MD5".into();
    assert_api(
        &c.apply_private_certificate(&req).await.expect_err("sig"),
        400,
        "PCA.00020103",
    );
    let mut req = apply_body(&f.sub_id, "x.example.com");
    req.distinguished_name.country = Some("CHN".into());
    assert_api(
        &c.apply_private_certificate(&req).await.expect_err("c"),
        400,
        "PCA.00020101",
    );
    let mut req = apply_body(&f.sub_id, &"a".repeat(65));
    req.distinguished_name.common_name = Some("a".repeat(65));
    assert_api(
        &c.apply_private_certificate(&req).await.expect_err("cn"),
        400,
        "PCA.00020101",
    );
    let mut req = apply_body(&f.sub_id, "x.example.com");
    req.distinguished_name.common_name = None;
    assert_api(
        &c.apply_private_certificate(&req).await.expect_err("no cn"),
        400,
        "PCA.00020101",
    );

    // SANs.
    for (san, code) in [
        (SubjectAlternativeName::dns("bad domain"), "PCA.00020110"),
        (SubjectAlternativeName::dns(""), "PCA.00020110"),
        (SubjectAlternativeName::ip("300.1.1.1"), "PCA.00020111"),
        (SubjectAlternativeName::ip("::1"), "PCA.00020111"),
        (
            SubjectAlternativeName::email("not-an-email"),
            "PCA.00020001",
        ),
        (
            SubjectAlternativeName::uri("no scheme here"),
            "PCA.00020001",
        ),
    ] {
        let mut req = apply_body(&f.sub_id, "x.example.com");
        req.subject_alternative_names = vec![san.clone()];
        let err = c.apply_private_certificate(&req).await.expect_err("san");
        assert_api(&err, 400, code);
    }
    let sub = &f.sub_id;
    let base = |extra: &str| {
        format!(
            r#"{{"issuer_id":"{sub}","key_algorithm":"EC256","signature_algorithm":"SHA256",
            "distinguished_name":{{"common_name":"x.example.com"}},
            "validity":{{"type":"DAY","value":1}}{extra}}}"#
        )
    };
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates",
            Some(&base(
                r#","subject_alternative_names":[{"type":"OTHERNAME","value":"x"}]"#,
            )),
        )
        .await;
    assert_api(&err, 400, "PCA.00020112");
    let many: Vec<String> = (0..21)
        .map(|i| format!(r#"{{"type":"DNS","value":"h{i}.example.com"}}"#))
        .collect();
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates",
            Some(&base(&format!(
                r#","subject_alternative_names":[{}]"#,
                many.join(",")
            ))),
        )
        .await;
    assert_api(&err, 400, "PCA.00020001");
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates",
            Some(&base(r#","key_usages":["flyHigh"]"#)),
        )
        .await;
    assert_api(&err, 400, "PCA.00020001");
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates",
            Some(&base(
                r#","customized_extension":{"object_identifier":"not.an.oid","value":"v"}"#,
            )),
        )
        .await;
    assert_api(&err, 400, "PCA.00020001");
    // Malformed JSON and wrong types get the PCA parameter code, not a framework message.
    let err = f
        .raw_err("POST", "/v1/private-certificates", Some("{not json"))
        .await;
    assert_api(&err, 400, "PCA.00020001");
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates",
            Some(r#"{"validity":{"value":"ten"}}"#),
        )
        .await;
    assert_api(&err, 400, "PCA.00020001");
    // Issuer: malformed id (sent raw: the client checks ids itself), unknown CA.
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates",
            Some(&base("").replace(sub.as_str(), "not-a-uuid")),
        )
        .await;
    assert_api(&err, 400, "PCA.00020201");
    let err = c
        .apply_private_certificate(&apply_body("00000000-0000-4000-8000-000000000000", "x.io"))
        .await
        .expect_err("unknown CA");
    assert_api(&err, 404, "PCA.00030103");
    assert!(matches!(
        c.apply_private_certificate(&apply_body("nope", "x.io"))
            .await,
        Err(CloudError::Invalid(_))
    ));
    assert_eq!(f.emu.shared().with_state(|st| st.pca.certs.len()), 0);
}

#[tokio::test]
async fn disabled_pending_and_expired_cas_refuse_to_issue() {
    let f = Fixture::new().await;
    let shared = f.emu.shared().clone();
    let root_id = f.root_id.clone();
    let (disabled, pending) = tokio::task::spawn_blocking(move || {
        let mut d = TestCa::subordinate("Disabled CA", &root_id);
        d.status = "DISABLED".into();
        let mut p = TestCa::subordinate("Pending CA", &root_id);
        p.status = "PENDING".into();
        (
            insert_test_ca(&shared, &d).expect("disabled"),
            insert_test_ca(&shared, &p).expect("pending"),
        )
    })
    .await
    .expect("join");
    for ca in [&disabled, &pending] {
        let err = f
            .client
            .apply_private_certificate(&apply_body(ca, "x.example.com"))
            .await
            .expect_err("refused");
        assert_api(&err, 403, "PCA.00030201");
    }
    // The root itself issues fine.
    f.client
        .apply_private_certificate(&apply_body(&f.root_id, "from-root.example.com"))
        .await
        .expect("root issues");
    // Once the sub CA's not_after has passed it is EXPIRED and refuses.
    f.emu.shared().advance_clock(time::Duration::days(5 * 366));
    let err = f
        .client
        .apply_private_certificate(&apply_body(&f.sub_id, "late.example.com"))
        .await
        .expect_err("expired CA");
    assert_api(&err, 403, "PCA.00030201");
}

#[tokio::test]
async fn csr_issuance_keeps_the_key_local() {
    let f = Fixture::new().await;
    let root_pem = f.ca_pem(&f.root_id);
    for alg in [pki::KeyAlgorithm::Ec256, pki::KeyAlgorithm::Rsa2048] {
        let key = pki::generate_key(alg).expect("key");
        let subject = pki::DistinguishedName {
            common_name: Some("csr.example.com".into()),
            organization: Some("CSR Org".into()),
            country: Some("DE".into()),
            ..Default::default()
        };
        let sans = vec![
            pki::SubjectAltName::Dns("csr.example.com".into()),
            pki::SubjectAltName::Ip("192.168.7.1".parse().expect("ip")),
        ];
        let csr = pki::generate_csr(&key, &subject, &sans).expect("csr");

        let parsed = f
            .client
            .parse_certificate_signing_request(&csr)
            .await
            .expect("parse csr");
        let dn = parsed.distinguished_name.expect("dn");
        assert_eq!(dn.common_name.as_deref(), Some("csr.example.com"));
        assert_eq!(dn.country.as_deref(), Some("DE"));
        let (kind, bits) = if alg.is_rsa() {
            ("RSA", 2048)
        } else {
            ("EC", 256)
        };
        assert_eq!(parsed.key_algorithm.as_deref(), Some(kind));
        assert_eq!(parsed.key_algorithm_length, Some(bits));
        assert!(
            parsed
                .signature_algorithm
                .as_deref()
                .is_some_and(|s| s.starts_with("SHA256with")),
            "{:?}",
            parsed.signature_algorithm
        );
        assert!(
            parsed
                .public_key
                .as_deref()
                .is_some_and(|p| p.starts_with("-----BEGIN PUBLIC KEY-----\n"))
        );

        // Literal "\n" sequences (as the reference's example writes them) are accepted too.
        let escaped = csr.trim_end().replace('\n', "\\n");
        let id = f
            .client
            .issue_private_certificate_by_csr(&CsrCertificateRequest::new(
                &f.sub_id,
                escaped,
                Validity::days(90),
            ))
            .await
            .expect("issue by CSR");
        let detail = f.client.show_private_certificate(&id).await.expect("show");
        assert_eq!(detail.gen_mode.as_deref(), Some("CSR"));
        assert_eq!(detail.key_algorithm.as_deref(), Some(alg.as_str()));
        assert_eq!(detail.signature_algorithm.as_deref(), Some("SHA384"));
        assert!(!detail.key_held_by_service());
        let exp = f
            .client
            .export_private_certificate(&id, ExportType::Nginx)
            .await
            .expect("export");
        assert_eq!(exp.private_key, None, "the key is the caller's");
        let info = pki::parse_cert(&exp.certificate).expect("cert");
        assert!(pki::key_matches_cert(&key, &info), "matches the local key");
        assert_eq!(info.subject.organization.as_deref(), Some("CSR Org"));
        assert!(info.signature_algorithm.starts_with("SHA384"));
        assert_eq!(info.sans.len(), 2, "the CSR's names are kept");
        pki::verify_chain(&exp.certificate, &exp.certificate_chain, &root_pem, f.now())
            .expect("chain");
        openssl_verify(&root_pem, &exp.certificate_chain, &exp.certificate);
    }
    // The key never crossed the wire.
    let requests = f.emu.shared().requests();
    assert!(
        requests
            .iter()
            .any(|r| r.operation == "pca.create_certificate_by_csr")
    );

    // Broken CSRs.
    let err = f
        .client
        .issue_private_certificate_by_csr(&CsrCertificateRequest::new(
            &f.sub_id,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            Validity::days(1),
        ))
        .await
        .expect_err("garbage");
    assert_api(&err, 400, "PCA.00020401");
    let key = pki::generate_key(pki::KeyAlgorithm::Ec256).expect("key");
    let csr = pki::generate_csr(&key, &pki::DistinguishedName::with_common_name("t.io"), &[])
        .expect("csr");
    let tampered = tamper_pem(&csr);
    let err = f
        .client
        .parse_certificate_signing_request(&tampered)
        .await
        .expect_err("bad signature");
    assert_api(&err, 400, "PCA.00020401");
    let big = "A".repeat(5121);
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates/csr",
            Some(&format!(
                r#"{{"issuer_id":"{}","csr":"{big}","validity":{{"type":"DAY","value":1}}}}"#,
                f.sub_id
            )),
        )
        .await;
    assert_api(&err, 400, "PCA.00020001");
    let mut req = CsrCertificateRequest::new(&f.sub_id, csr.clone(), Validity::days(1));
    req.path_length = Some(7);
    req.kind = Some(CsrCertificateType::IntermediateCa);
    let err = f
        .client
        .issue_private_certificate_by_csr(&req)
        .await
        .expect_err("path");
    assert_api(&err, 400, "PCA.00020203");
}

/// Flip one base64 character inside the signature region of a PEM object.
fn tamper_pem(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    let idx = lines.len() - 2;
    let line = &mut lines[idx];
    let pos = line.len() / 2;
    let ch = line.as_bytes()[pos];
    let replacement = if ch == b'A' { "B" } else { "A" };
    line.replace_range(pos..pos + 1, replacement);
    lines.join("\n") + "\n"
}

fn openssl_verify(root_pem: &str, chain_pem: &str, leaf_pem: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("root.pem");
    let chain = dir.path().join("chain.pem");
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&root, root_pem).expect("write");
    std::fs::write(&chain, chain_pem).expect("write");
    std::fs::write(&leaf, leaf_pem).expect("write");
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&leaf)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn csr_intermediate_ca_is_a_ca_that_cannot_issue_here() {
    let f = Fixture::new().await;
    // The fixture's sub CA has path length 0, so only the root (path length 2) can do this.
    let key = pki::generate_key(pki::KeyAlgorithm::Ec256).expect("key");
    let csr = pki::generate_csr(
        &key,
        &pki::DistinguishedName::with_common_name("External Intermediate"),
        &[],
    )
    .expect("csr");
    let mut req = CsrCertificateRequest::new(&f.sub_id, csr.clone(), Validity::days(100));
    req.kind = Some(CsrCertificateType::IntermediateCa);
    let err = f
        .client
        .issue_private_certificate_by_csr(&req)
        .await
        .expect_err("path length 0 issuer");
    assert_api(&err, 400, "PCA.00020203");
    req.issuer_id = f.root_id.clone();
    req.path_length = Some(1);
    let ca_id = f
        .client
        .issue_private_certificate_by_csr(&req)
        .await
        .expect("sub CA");
    let rec = f
        .emu
        .shared()
        .with_state(|st| st.pca.cas.get(&ca_id).cloned())
        .expect("stored as a CA");
    assert!(rec.key_pem.is_empty());
    assert_eq!(rec.ca_type, "SUBORDINATE");
    let info = pki::parse_cert(rec.certificate_pem.as_deref().expect("cert")).expect("parse");
    assert!(info.is_ca);
    assert_eq!(info.path_length, Some(1));
    assert!(pki::key_matches_cert(&key, &info));
    // Not a private certificate: not listed, not counted, not shown.
    let list = f
        .client
        .list_private_certificates(&ListCertificatesQuery::default())
        .await
        .expect("list");
    assert_eq!(list.total, 0);
    assert_api(
        &f.client
            .show_private_certificate(&ca_id)
            .await
            .expect_err("not a cert"),
        404,
        "PCA.00030102",
    );
    // Its key is with its owner: PCA cannot sign with it.
    let err = f
        .client
        .apply_private_certificate(&apply_body(&ca_id, "x.example.com"))
        .await
        .expect_err("cannot issue");
    assert_api(&err, 403, "PCA.00030201");
}

#[tokio::test]
async fn revoke_then_export_refused() {
    let f = Fixture::new().await;
    let a = f.apply("a.example.com").await;
    let b = f.apply("b.example.com").await;
    f.client
        .revoke_private_certificate(&a, Some(RevokeReason::KeyCompromise))
        .await
        .expect("revoke");
    f.client
        .revoke_private_certificate(&b, None)
        .await
        .expect("revoke with {}");
    for id in [&a, &b] {
        let d = f.client.show_private_certificate(id).await.expect("show");
        assert_eq!(d.status, CertificateStatus::Revoked);
        let err = f
            .client
            .export_private_certificate(id, ExportType::Other)
            .await
            .expect_err("export refused");
        assert_api(&err, 403, "PCA.00030201");
        let err = f
            .client
            .revoke_private_certificate(id, Some(RevokeReason::Superseded))
            .await
            .expect_err("twice");
        assert_api(&err, 403, "PCA.00030201");
    }
    let (ra, rb) = f.emu.shared().with_state(|st| {
        (
            st.pca.certs[&a].revoke_reason.clone(),
            st.pca.certs[&b].revoke_reason.clone(),
        )
    });
    assert_eq!(ra.as_deref(), Some("KEY_COMPROMISE"));
    assert_eq!(rb.as_deref(), Some("UNSPECIFIED"));
    let c = f.apply("c.example.com").await;
    let path = format!("/v1/private-certificates/{c}/revoke");
    assert_api(
        &f.raw_err("POST", &path, Some(r#"{"reason":"BORED"}"#))
            .await,
        400,
        "PCA.00020001",
    );
    assert_api(&f.raw_err("POST", &path, None).await, 400, "PCA.00020001");
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_api(
        &f.client
            .revoke_private_certificate(unknown, None)
            .await
            .expect_err("404"),
        404,
        "PCA.00030102",
    );
}

#[tokio::test]
async fn clock_past_not_after_means_expired() {
    let f = Fixture::new().await;
    let mut req = apply_body(&f.sub_id, "short.example.com");
    req.validity = Validity::hours(2);
    let short = f
        .client
        .apply_private_certificate(&req)
        .await
        .expect("apply");
    let long = f.apply("long.example.com").await;
    f.emu.shared().advance_clock(time::Duration::hours(3));
    let d = f
        .client
        .show_private_certificate(&short)
        .await
        .expect("show");
    assert_eq!(d.status, CertificateStatus::Expired);
    let expired = f
        .client
        .list_private_certificates(&ListCertificatesQuery {
            status: Some(CertificateStatus::Expired),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(expired.total, 1);
    assert_eq!(expired.certificates[0].certificate_id, short);
    let issued = f
        .client
        .list_private_certificates(&ListCertificatesQuery {
            status: Some(CertificateStatus::Issued),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(issued.total, 1);
    assert_eq!(issued.certificates[0].certificate_id, long);
    let err = f
        .client
        .export_private_certificate(&short, ExportType::Nginx)
        .await
        .expect_err("expired export");
    assert_api(&err, 403, "PCA.00030201");
    let err = f
        .client
        .revoke_private_certificate(&short, None)
        .await
        .expect_err("expired revoke");
    assert_api(&err, 403, "PCA.00030201");
    // Deleting works in any status.
    f.client
        .delete_private_certificate(&short)
        .await
        .expect("delete");
}

#[tokio::test]
async fn pagination_filters_and_sorting() {
    let f = Fixture::new().await;
    let mut ids = Vec::new();
    for i in 0..23 {
        let mut req = apply_body(&f.sub_id, &format!("host{i:02}.example.com"));
        req.validity = Validity::days(100 - i);
        ids.push(
            f.client
                .apply_private_certificate(&req)
                .await
                .expect("apply"),
        );
    }
    let from_root = f
        .client
        .apply_private_certificate(&apply_body(&f.root_id, "aaa-root.example.com"))
        .await
        .expect("apply");

    // Default page: 10, newest first.
    let page = f
        .client
        .list_private_certificates(&ListCertificatesQuery::default())
        .await
        .expect("list");
    assert_eq!(page.total, 24);
    assert_eq!(page.certificates.len(), 10);
    assert_eq!(page.certificates[0].certificate_id, from_root);

    // Walk all pages of 7 (4 pages): every certificate once.
    let all = f
        .client
        .list_all_private_certificates(&ListCertificatesQuery {
            limit: Some(7),
            sort_key: Some(CertificateSortKey::CreateTime),
            sort_dir: Some(SortDir::Asc),
            ..Default::default()
        })
        .await
        .expect("all");
    assert_eq!(all.len(), 24);
    let mut seen: Vec<&str> = all.iter().map(|c| c.certificate_id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 24);
    assert!(
        f.emu.shared().count_requests("pca.list_certificate") >= 5,
        "several pages were fetched"
    );

    // Offset and limit.
    let p = f
        .client
        .list_private_certificates(&ListCertificatesQuery {
            limit: Some(5),
            offset: Some(20),
            sort_key: Some(CertificateSortKey::CommonName),
            sort_dir: Some(SortDir::Asc),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(p.total, 24);
    let names: Vec<&str> = p
        .certificates
        .iter()
        .filter_map(|c| c.common_name())
        .collect();
    assert_eq!(
        names,
        vec![
            "host19.example.com",
            "host20.example.com",
            "host21.example.com",
            "host22.example.com"
        ]
    );

    // Name contains; sort by not_after.
    let p = f
        .client
        .list_private_certificates(&ListCertificatesQuery {
            name: Some("host1".into()),
            sort_key: Some(CertificateSortKey::NotAfter),
            sort_dir: Some(SortDir::Desc),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(p.total, 10);
    let na: Vec<_> = p.certificates.iter().map(|c| c.not_after).collect();
    let mut sorted = na.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(na, sorted);
    assert_eq!(p.certificates[0].common_name(), Some("host10.example.com"));

    // Issuer name: "Test Root CA" < "Test Sub CA".
    let p = f
        .client
        .list_private_certificates(&ListCertificatesQuery {
            sort_key: Some(CertificateSortKey::IssuerName),
            sort_dir: Some(SortDir::Asc),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(p.certificates[0].certificate_id, from_root);

    // Revoked filter.
    f.client
        .revoke_private_certificate(&ids[3], None)
        .await
        .expect("revoke");
    let p = f
        .client
        .list_private_certificates(&ListCertificatesQuery {
            status: Some(CertificateStatus::Revoked),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(p.total, 1);
    assert_eq!(p.certificates[0].certificate_id, ids[3]);

    // Bad query values.
    for q in [
        "limit=1001",
        "limit=-1",
        "offset=x",
        "status=DELETED",
        "sort_key=serial",
        "sort_dir=UP",
    ] {
        let err = f
            .raw_err("GET", &format!("/v1/private-certificates?{q}"), None)
            .await;
        assert_api(&err, 400, "PCA.00020001");
    }
    assert!(matches!(
        f.client
            .list_private_certificates(&ListCertificatesQuery {
                limit: Some(1001),
                ..Default::default()
            })
            .await,
        Err(CloudError::Invalid(_))
    ));
}

#[tokio::test]
async fn quota_detail_and_delete() {
    let f = Fixture::new().await;
    let q = f.client.private_certificate_quota().await.expect("quota");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].kind, "CERTIFICATE");
    assert_eq!((q[0].used, q[0].quota), (0, 100_000));

    f.emu
        .shared()
        .update_state(|st| st.pca.certificate_quota = Some(2));
    let a = f.apply("a.example.com").await;
    let _b = f.apply("b.example.com").await;
    let err = f
        .client
        .apply_private_certificate(&apply_body(&f.sub_id, "c.example.com"))
        .await
        .expect_err("quota");
    assert_api(&err, 403, "PCA.00030001");
    let key = pki::generate_key(pki::KeyAlgorithm::Ec256).expect("key");
    let csr = pki::generate_csr(&key, &pki::DistinguishedName::with_common_name("q.io"), &[])
        .expect("csr");
    let err = f
        .client
        .issue_private_certificate_by_csr(&CsrCertificateRequest::new(
            &f.sub_id,
            csr,
            Validity::days(1),
        ))
        .await
        .expect_err("quota");
    assert_api(&err, 403, "PCA.00030001");
    let q = f.client.private_certificate_quota().await.expect("quota");
    assert_eq!((q[0].used, q[0].quota), (2, 2));

    f.client
        .delete_private_certificate(&a)
        .await
        .expect("delete");
    assert_api(
        &f.client
            .show_private_certificate(&a)
            .await
            .expect_err("gone"),
        404,
        "PCA.00030102",
    );
    assert_api(
        &f.client
            .delete_private_certificate(&a)
            .await
            .expect_err("gone"),
        404,
        "PCA.00030102",
    );
    f.apply("c.example.com").await;

    // Malformed ids reach the emulator only raw.
    for (m, p) in [
        ("GET", "/v1/private-certificates/not-a-uuid"),
        ("DELETE", "/v1/private-certificates/not-a-uuid"),
    ] {
        assert_api(&f.raw_err(m, p, None).await, 400, "PCA.00020301");
    }
    let err = f
        .raw_err(
            "POST",
            "/v1/private-certificates/not-a-uuid/export",
            Some(r#"{"is_compressed":"false","type":"NGINX"}"#),
        )
        .await;
    assert_api(&err, 400, "PCA.00020301");
    assert!(matches!(
        f.client.show_private_certificate("x").await,
        Err(CloudError::Invalid(_))
    ));
}

#[tokio::test]
async fn export_formats_and_zip_packages() {
    let f = Fixture::new().await;
    let id = f.apply("Zip Me").await;
    let path = format!("/v1/private-certificates/{id}/export");

    // The raw JSON uses \r\n, as the real service does; the reference's boolean form is taken.
    let mut req = Request::post(Service::Pca, "raw", &path);
    req.body = Some(br#"{"is_compressed": false, "type": "other"}"#.to_vec());
    let v: serde_json::Value = f.client.call(req).await.expect("raw export");
    let cert = v["certificate"].as_str().expect("certificate");
    assert!(
        cert.starts_with("-----BEGIN CERTIFICATE-----\r\n"),
        "{cert}"
    );
    assert!(
        v["certificate_chain"]
            .as_str()
            .expect("chain")
            .contains("\r\n")
    );
    assert!(
        v["private_key"]
            .as_str()
            .expect("key")
            .contains("PRIVATE KEY-----\r\n")
    );

    let exp = f
        .client
        .export_private_certificate(&id, ExportType::Other)
        .await
        .expect("export");
    let cases = [
        (ExportType::Nginx, vec!["server.crt", "server.key"]),
        (
            ExportType::Apache,
            vec!["server.crt", "chain.crt", "server.key"],
        ),
        (
            ExportType::Other,
            vec!["server.pem", "chain.pem", "server.key"],
        ),
    ];
    for (kind, expect) in cases {
        let zip = f
            .client
            .export_private_certificate_zip(&id, kind)
            .await
            .expect("zip");
        let files = read_stored_zip(&zip).expect("a zip");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, expect, "{kind:?}");
        let text = |name: &str| {
            let (_, data) = files.iter().find(|(n, _)| n == name).expect("file");
            String::from_utf8(data.clone())
                .expect("utf8")
                .replace("\r\n", "\n")
        };
        match kind {
            ExportType::Nginx => {
                assert_eq!(
                    text("server.crt"),
                    format!("{}{}", exp.certificate, exp.certificate_chain)
                )
            }
            ExportType::Apache => assert_eq!(text("chain.crt"), exp.certificate_chain),
            _ => assert_eq!(text("server.pem"), exp.certificate),
        }
        // unzip agrees the archive is sound.
        let dir = tempfile::tempdir().expect("tmp");
        let zpath = dir.path().join("x.zip");
        std::fs::write(&zpath, &zip).expect("write");
        if let Ok(out) = std::process::Command::new("unzip")
            .arg("-t")
            .arg(&zpath)
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    // IIS and TOMCAT: the keystore with the key, the certificate and its chain, and the
    // password that opens it (`keystorePass.txt`).
    let leaf = pki::parse_cert(&exp.certificate).expect("leaf").der;
    for (kind, store) in [
        (ExportType::Iis, "server.pfx"),
        (ExportType::Tomcat, "server.jks"),
    ] {
        let zip = f
            .client
            .export_private_certificate_zip(&id, kind)
            .await
            .expect("zip");
        let files = read_stored_zip(&zip).expect("a zip");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["keystorePass.txt", store], "{kind:?}");
        let password = String::from_utf8(files[0].1.clone()).expect("utf8");
        assert_eq!(password.len(), keystore::PASSWORD_LEN);
        let data = &files[1].1;
        if kind == ExportType::Iis {
            let p12 = p12_keystore::Pkcs12Archive::from_pkcs12(data, &password).expect("opens");
            assert_eq!(p12.keys.len(), 1);
            assert_eq!(p12.certs.len(), 3, "leaf, sub CA, root");
            assert_eq!(p12.certs[0].cert.as_der(), leaf.as_slice());
            assert!(p12_keystore::Pkcs12Archive::from_pkcs12(data, "wrong").is_err());
        } else {
            // Magic 0xFEEDFEED, version 2; the certificates are stored in the clear.
            assert_eq!(data[..8], [0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2]);
            assert!(data.windows(leaf.len()).any(|w| w == leaf.as_slice()));
        }
    }
    for (compressed, kind) in [
        ("false", "IIS"),
        ("false", "TOMCAT"),
        ("false", "PEM"),
        ("maybe", "NGINX"),
    ] {
        let err = f
            .raw_err(
                "POST",
                &path,
                Some(&format!(
                    r#"{{"is_compressed":"{compressed}","type":"{kind}"}}"#
                )),
            )
            .await;
        assert_api(&err, 400, "PCA.00020001");
    }
}

#[tokio::test]
async fn demo_seed_issues_from_the_demo_sub_ca() {
    let emu = Emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let shared = emu.shared().clone();
    // Without a demo CA the certificate seed does nothing.
    ccm_agent::emulator::pca::cert::seed_demo(&shared).expect("seed without CA");
    assert_eq!(shared.with_state(|st| st.pca.certs.len()), 0);
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        let root = insert_test_ca(&s, &TestCa::root("ccm-agent demo root CA")).expect("root");
        let sub_name = ccm_agent::emulator::pca::cert::DEMO_SUB_CA_NAME;
        insert_test_ca(&s, &TestCa::subordinate(sub_name, &root)).expect("sub");
        ccm_agent::emulator::pca::cert::seed_demo(&s).expect("seed");
    })
    .await
    .expect("join");
    let client = emu.client().expect("client");
    let all = client
        .list_all_private_certificates(&ListCertificatesQuery::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 5);
    let status = |cn: &str| {
        all.iter()
            .find(|c| c.common_name() == Some(cn))
            .map(|c| c.status)
            .expect("seeded")
    };
    assert_eq!(
        status("expiring-soon.demo.internal"),
        CertificateStatus::Issued
    );
    assert_eq!(status("fresh.demo.internal"), CertificateStatus::Issued);
    assert_eq!(status("revoked.demo.internal"), CertificateStatus::Revoked);
    assert_eq!(status("expired.demo.internal"), CertificateStatus::Expired);
    let soon = all
        .iter()
        .find(|c| c.common_name() == Some("expiring-soon.demo.internal"))
        .expect("soon");
    let left = soon.not_after.expect("na") - shared.now();
    assert!(left < time::Duration::hours(7) && left > time::Duration::hours(5));
    let _ = DistinguishedName::default();
}
