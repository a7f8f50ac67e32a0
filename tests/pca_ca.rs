//! PCA private CA management end to end: the client against the emulator over real HTTP with
//! AK/SK signatures, real X.509 parsed back and checked with `openssl verify`, the documented
//! error codes, the state machine and expiry by the emulator's clock.

use ccm_agent::cloud::pca::ca::{
    ActivateCaRequest, CaSortKey, CaStatus, CaType, CreateCaRequest, ImportCaCertificateRequest,
    KeyAlgorithm, KeyUsage, ListCasQuery, RevocationReason, SignatureAlgorithm, SortDir,
};
use ccm_agent::cloud::pca::{CrlConfiguration, DistinguishedName, Validity};
use ccm_agent::cloud::time::to_epoch_ms;
use ccm_agent::cloud::{Client, CloudError, Request, Service};
use ccm_agent::emulator::pca::ca as emu_ca;
use ccm_agent::emulator::{Emulator, EmulatorConfig, Seed};
use ccm_agent::pki;
use serde_json::{Value, json};

const CAS: &str = "/v1/private-certificate-authorities";
const UNKNOWN_ID: &str = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";

async fn start() -> (Emulator, Client) {
    let emu = Emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator starts");
    let client = emu.client().expect("client");
    (emu, client)
}

fn dn(cn: &str) -> DistinguishedName {
    DistinguishedName {
        common_name: Some(cn.into()),
        country: Some("CN".into()),
        state: Some("Guangdong".into()),
        locality: Some("Shenzhen".into()),
        organization: Some("Example Org".into()),
        organizational_unit: Some("PKI".into()),
    }
}

fn root_req(cn: &str) -> CreateCaRequest {
    CreateCaRequest::root(
        dn(cn),
        KeyAlgorithm::Ec256,
        SignatureAlgorithm::Sha256,
        Validity::years(10),
    )
}

/// (status, code) of an API error.
fn api(e: CloudError) -> (u16, String) {
    match e {
        CloudError::Api { status, code, .. } => (status, code.unwrap_or_default()),
        other => panic!("expected an API error, got {other}"),
    }
}

/// Send any request through the signed client (bodies the typed API would never build).
async fn raw(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<ccm_agent::cloud::RawResponse, CloudError> {
    let mut req = Request::new(Service::Pca, "test", method, path);
    for (k, v) in query {
        req = req.query(k, v);
    }
    req.body = body.map(<[u8]>::to_vec);
    client.call_raw(req).await
}

async fn post_json(client: &Client, path: &str, body: &Value) -> Result<Value, CloudError> {
    let bytes = serde_json::to_vec(body).expect("json");
    let resp = raw(client, reqwest::Method::POST, path, &[], Some(&bytes)).await?;
    Ok(serde_json::from_slice(&resp.body).unwrap_or(Value::Null))
}

async fn create_raw(client: &Client, body: Value) -> (u16, String) {
    match post_json(client, CAS, &body).await {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => api(e),
    }
}

fn openssl_verify(dir: &std::path::Path, ca: &str, untrusted: Option<&str>, leaf: &str) {
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p
    };
    let ca_p = write("ca.pem", ca);
    let leaf_p = write("leaf.pem", leaf);
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&ca_p);
    if let Some(u) = untrusted {
        cmd.arg("-untrusted").arg(write("untrusted.pem", u));
    }
    let out = cmd.arg(&leaf_p).output().expect("openssl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": OK"),
        "openssl verify failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn root_and_subordinate_are_real_x509() {
    let (emu, client) = start().await;
    let root_id = client
        .pca_create_ca(&CreateCaRequest::root(
            dn("Test Root CA"),
            KeyAlgorithm::Ec384,
            SignatureAlgorithm::Sha384,
            Validity::years(10),
        ))
        .await
        .expect("create root");
    let sub_id = client
        .pca_create_ca(
            &CreateCaRequest::subordinate(
                dn("Test Sub CA"),
                KeyAlgorithm::Ec256,
                &root_id,
                SignatureAlgorithm::Sha256,
                Validity::years(5),
            )
            .with_path_length(1),
        )
        .await
        .expect("create sub");
    // A third level, limited by the sub's path length 1: its own must be 0.
    let leaf_ca_id = client
        .pca_create_ca(&CreateCaRequest::subordinate(
            DistinguishedName {
                common_name: Some("Test Issuing CA".into()),
                ..Default::default()
            },
            KeyAlgorithm::Ec256,
            &sub_id,
            SignatureAlgorithm::Sha512,
            Validity::years(2),
        ))
        .await
        .expect("create third level");

    let root = client.pca_show_ca(&root_id).await.expect("show root");
    assert_eq!(root.ca_type, CaType::Root);
    assert_eq!(root.status, CaStatus::Active);
    assert_eq!(root.path_length, Some(7));
    assert_eq!(root.issuer_id, None);
    assert_eq!(root.key_algorithm.as_deref(), Some("EC384"));
    assert_eq!(root.signature_algorithm.as_deref(), Some("SHA384"));
    assert_eq!(root.gen_mode.as_deref(), Some("GENERATE"));
    let sub = client.pca_show_ca(&sub_id).await.expect("show sub");
    assert_eq!(sub.ca_type, CaType::Subordinate);
    assert_eq!(sub.issuer_id.as_deref(), Some(root_id.as_str()));
    assert_eq!(sub.issuer_name.as_deref(), Some("Test Root CA"));
    assert_eq!(sub.path_length, Some(1));
    let third = client.pca_show_ca(&leaf_ca_id).await.expect("show third");
    assert_eq!(third.path_length, Some(0));
    // Inherited from the issuer: everything but the common name.
    assert_eq!(
        third.distinguished_name.organization.as_deref(),
        Some("Example Org")
    );
    assert_eq!(third.distinguished_name.country.as_deref(), Some("CN"));

    // Exported PEMs: \r\n on the wire, \n from the client.
    let resp = raw(
        &client,
        reqwest::Method::POST,
        &format!("{CAS}/{sub_id}/export"),
        &[],
        None,
    )
    .await
    .expect("raw export");
    let wire: Value = serde_json::from_slice(&resp.body).expect("json");
    assert!(wire["certificate"].as_str().expect("cert").contains("\r\n"));
    assert!(
        wire["certificate_chain"]
            .as_str()
            .expect("chain")
            .contains("\r\n")
    );
    let root_pem = client
        .pca_export_ca_certificate(&root_id)
        .await
        .expect("export root");
    let sub_pem = client
        .pca_export_ca_certificate(&sub_id)
        .await
        .expect("export sub");
    let third_pem = client
        .pca_export_ca_certificate(&leaf_ca_id)
        .await
        .expect("export third");
    assert!(!sub_pem.certificate.contains('\r'));
    assert_eq!(root_pem.certificate_chain, root_pem.certificate);
    assert_eq!(sub_pem.certificate_chain, root_pem.certificate);

    let r = pki::parse_cert(&root_pem.certificate).expect("root parses");
    let s = pki::parse_cert(&sub_pem.certificate).expect("sub parses");
    let t = pki::parse_cert(&third_pem.certificate).expect("third parses");
    assert_eq!(r.subject.common_name.as_deref(), Some("Test Root CA"));
    assert_eq!(r.issuer, r.subject);
    assert!(r.is_ca && r.path_length.is_none());
    assert_eq!(r.signature_algorithm, "SHA384WITHECDSA");
    assert_eq!(r.key_algorithm, Some(pki::KeyAlgorithm::Ec384));
    assert_eq!(s.subject.common_name.as_deref(), Some("Test Sub CA"));
    assert_eq!(s.issuer.common_name.as_deref(), Some("Test Root CA"));
    assert!(s.is_ca);
    assert_eq!(s.path_length, Some(1));
    assert_eq!(t.path_length, Some(0));
    assert_eq!(t.signature_algorithm, "SHA512WITHECDSA");
    assert!(s.key_usages.contains(&pki::KeyUsage::KeyCertSign));
    // The API's times and serial are the certificate's.
    assert_eq!(
        sub.not_before.map(to_epoch_ms),
        Some(to_epoch_ms(s.not_before))
    );
    assert_eq!(
        sub.not_after.map(to_epoch_ms),
        Some(to_epoch_ms(s.not_after))
    );
    let years = (s.not_after - s.not_before).whole_days();
    assert!((1825..=1827).contains(&years), "5 years, got {years} days");
    let serial = u128::from_str_radix(&s.serial_hex, 16).expect("serial");
    assert_eq!(
        sub.serial_number.as_deref(),
        Some(serial.to_string().as_str())
    );
    // Chain: third > sub > root.
    assert_eq!(
        third_pem.certificate_chain,
        format!("{}{}", sub_pem.certificate, root_pem.certificate)
    );
    pki::verify_chain(
        &third_pem.certificate,
        &third_pem.certificate_chain,
        &root_pem.certificate,
        emu.shared().now(),
    )
    .expect("chain verifies");

    let dir = tempfile::tempdir().expect("tempdir");
    openssl_verify(
        dir.path(),
        &root_pem.certificate,
        None,
        &sub_pem.certificate,
    );
    openssl_verify(
        dir.path(),
        &root_pem.certificate,
        Some(&sub_pem.certificate),
        &third_pem.certificate,
    );

    // A CA with path length 0 cannot sign another CA.
    let err = client
        .pca_create_ca(&CreateCaRequest::subordinate(
            dn("Too deep"),
            KeyAlgorithm::Ec256,
            &leaf_ca_id,
            SignatureAlgorithm::Sha256,
            Validity::years(1),
        ))
        .await
        .expect_err("path length 0");
    assert_eq!(api(err), (400, "PCA.00020203".into()));
    // Nor may a subordinate's path length reach its issuer's.
    let err = client
        .pca_create_ca(
            &CreateCaRequest::subordinate(
                dn("Too long"),
                KeyAlgorithm::Ec256,
                &sub_id,
                SignatureAlgorithm::Sha256,
                Validity::years(1),
            )
            .with_path_length(1),
        )
        .await
        .expect_err("path length not below issuer's");
    assert_eq!(api(err), (400, "PCA.00020203".into()));
}

#[tokio::test]
async fn pending_subordinate_csr_then_activate() {
    let (emu, client) = start().await;
    let root_id = client
        .pca_create_ca(&root_req("Activate Root"))
        .await
        .expect("root");
    let pending = client
        .pca_create_ca(
            &CreateCaRequest::pending_subordinate(dn("Pending Sub"), KeyAlgorithm::Ec384)
                .with_key_usages(vec![
                    KeyUsage::KeyCertSign,
                    KeyUsage::CrlSign,
                    KeyUsage::DigitalSignature,
                    KeyUsage::NonRepudiation,
                ]),
        )
        .await
        .expect("pending sub");
    let shown = client.pca_show_ca(&pending).await.expect("show");
    assert_eq!(shown.status, CaStatus::Pending);
    assert!(shown.not_after.is_none() && shown.issuer_id.is_none());

    let csr = client.pca_export_ca_csr(&pending).await.expect("csr");
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
    let info = pki::parse_csr(&csr).expect("csr parses and its signature verifies");
    assert_eq!(info.subject.common_name.as_deref(), Some("Pending Sub"));
    assert_eq!(info.subject.organizational_unit.as_deref(), Some("PKI"));
    assert_eq!(info.key_algorithm, Some(pki::KeyAlgorithm::Ec384));

    // Export, disable: not while pending.
    let err = client
        .pca_export_ca_certificate(&pending)
        .await
        .expect_err("pending export");
    assert_eq!(api(err), (403, "PCA.00030201".into()));
    let err = client
        .pca_disable_ca(&pending)
        .await
        .expect_err("pending disable");
    assert_eq!(api(err), (403, "PCA.00030201".into()));
    // Activation needs an existing issuer.
    let err = client
        .pca_activate_ca(
            &pending,
            &ActivateCaRequest::new(UNKNOWN_ID, SignatureAlgorithm::Sha256, Validity::years(1)),
        )
        .await
        .expect_err("unknown issuer");
    assert_eq!(api(err), (404, "PCA.00030103".into()));
    // Activation body missing validity: the documented validity error.
    let err = post_json(
        &client,
        &format!("{CAS}/{pending}/activate"),
        &json!({"issuer_id": root_id, "signature_algorithm": "SHA256"}),
    )
    .await
    .expect_err("no validity");
    assert_eq!(api(err), (400, "PCA.00020109".into()));

    client
        .pca_activate_ca(
            &pending,
            &ActivateCaRequest::new(&root_id, SignatureAlgorithm::Sha384, Validity::days(400))
                .with_path_length(2),
        )
        .await
        .expect("activate");
    let shown = client.pca_show_ca(&pending).await.expect("show");
    assert_eq!(shown.status, CaStatus::Active);
    assert_eq!(shown.issuer_id.as_deref(), Some(root_id.as_str()));
    assert_eq!(shown.path_length, Some(2));
    assert_eq!(shown.signature_algorithm.as_deref(), Some("SHA384"));
    let err = client
        .pca_export_ca_csr(&pending)
        .await
        .expect_err("csr after activation");
    assert_eq!(api(err), (403, "PCA.00030201".into()));
    let err = client
        .pca_activate_ca(
            &pending,
            &ActivateCaRequest::new(&root_id, SignatureAlgorithm::Sha256, Validity::days(1)),
        )
        .await
        .expect_err("activate twice");
    assert_eq!(api(err), (403, "PCA.00030201".into()));

    let exported = client
        .pca_export_ca_certificate(&pending)
        .await
        .expect("export");
    let cert = pki::parse_cert(&exported.certificate).expect("parses");
    // The certificate carries the CSR's key.
    assert_eq!(cert.public_key_der, info.public_key_der);
    assert_eq!(cert.path_length, Some(2));
    assert!(cert.key_usages.contains(&pki::KeyUsage::NonRepudiation));
    assert_eq!((cert.not_after - cert.not_before).whole_days(), 400);
    let root_pem = client
        .pca_export_ca_certificate(&root_id)
        .await
        .expect("root");
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_verify(
        dir.path(),
        &root_pem.certificate,
        None,
        &exported.certificate,
    );
    let _ = emu;
}

#[tokio::test]
async fn pending_subordinate_import_external_certificate() {
    let (emu, client) = start().await;
    let pending = client
        .pca_create_ca(&CreateCaRequest::pending_subordinate(
            dn("Imported Sub"),
            KeyAlgorithm::Ec256,
        ))
        .await
        .expect("pending sub");
    let csr = client.pca_export_ca_csr(&pending).await.expect("csr");

    // An external root, unknown to the emulator, signs the CSR.
    let now = emu.shared().now();
    let ext_key = pki::generate_key(pki::KeyAlgorithm::Ec256).expect("key");
    let ext_root = pki::self_signed(
        &pki::CertificateSpec::new_ca(
            pki::DistinguishedName::with_common_name("External Root"),
            now - time::Duration::hours(1),
            now + time::Duration::days(3650),
            None,
        ),
        &ext_key,
    )
    .expect("external root");
    let issued = pki::issue(
        &pki::CertificateSpec::new_ca(
            pki::DistinguishedName::with_common_name("Imported Sub"),
            now - time::Duration::hours(1),
            now + time::Duration::days(365),
            Some(0),
        ),
        &pki::PublicKeySource::Csr(&csr),
        &ext_root,
        &ext_key,
    )
    .expect("issue from CSR");

    // A certificate for another key does not match the CA's private key.
    let other_key = pki::generate_key(pki::KeyAlgorithm::Ec256).expect("key");
    let foreign = pki::issue(
        &pki::CertificateSpec::new_ca(
            pki::DistinguishedName::with_common_name("Imported Sub"),
            now,
            now + time::Duration::days(30),
            Some(0),
        ),
        &pki::PublicKeySource::Key(&other_key),
        &ext_root,
        &ext_key,
    )
    .expect("foreign");
    let req = |cert: &str, chain: Option<&str>| ImportCaCertificateRequest {
        certificate: cert.to_owned(),
        certificate_chain: chain.map(str::to_owned),
    };
    let err = client
        .pca_import_ca_certificate(&pending, &req(&foreign, Some(&ext_root)))
        .await
        .expect_err("key mismatch");
    assert_eq!(api(err), (403, "PCA.00030301".into()));
    let err = client
        .pca_import_ca_certificate(
            &pending,
            &req(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                None,
            ),
        )
        .await
        .expect_err("garbage");
    assert_eq!(api(err), (400, "PCA.00020402".into()));
    // A chain that did not sign the certificate.
    let err = client
        .pca_import_ca_certificate(&pending, &req(&issued, Some(&foreign)))
        .await
        .expect_err("wrong chain");
    assert_eq!(api(err), (400, "PCA.00020403".into()));
    // A leaf (not CA) certificate.
    let leaf = pki::issue(
        &pki::CertificateSpec::new_leaf(
            pki::DistinguishedName::with_common_name("leaf"),
            now,
            now + time::Duration::days(30),
            vec![],
        ),
        &pki::PublicKeySource::Csr(&csr),
        &ext_root,
        &ext_key,
    )
    .expect("leaf");
    let err = client
        .pca_import_ca_certificate(&pending, &req(&leaf, None))
        .await
        .expect_err("leaf");
    assert_eq!(api(err), (400, "PCA.00020402".into()));

    // With \r\n line endings, as the API itself sends PEM.
    let crlf = |s: &str| s.replace('\n', "\r\n");
    client
        .pca_import_ca_certificate(&pending, &req(&crlf(&issued), Some(&crlf(&ext_root))))
        .await
        .expect("import");
    let shown = client.pca_show_ca(&pending).await.expect("show");
    assert_eq!(shown.status, CaStatus::Active);
    assert_eq!(shown.gen_mode.as_deref(), Some("IMPORT"));
    assert_eq!(shown.issuer_name.as_deref(), Some("External Root"));
    assert_eq!(shown.issuer_id, None);
    assert_eq!(shown.path_length, Some(0));
    let exported = client
        .pca_export_ca_certificate(&pending)
        .await
        .expect("export");
    assert_eq!(exported.certificate, issued);
    assert_eq!(exported.certificate_chain, ext_root);
    let err = client
        .pca_import_ca_certificate(&pending, &req(&issued, None))
        .await
        .expect_err("import twice");
    assert_eq!(api(err), (403, "PCA.00030201".into()));
}

#[tokio::test]
async fn state_machine_delete_restore_and_scheduled_removal() {
    let (emu, client) = start().await;
    let id = client
        .pca_create_ca(&root_req("Lifecycle Root"))
        .await
        .expect("root");
    let state = |e: CloudError| assert_eq!(api(e), (403, "PCA.00030201".into()));
    state(client.pca_enable_ca(&id).await.expect_err("enable active"));
    state(
        client
            .pca_delete_ca(&id, 7)
            .await
            .expect_err("delete active"),
    );
    state(
        client
            .pca_restore_ca(&id)
            .await
            .expect_err("restore active"),
    );
    state(
        client
            .pca_export_ca_csr(&id)
            .await
            .expect_err("csr of active"),
    );
    client.pca_disable_ca(&id).await.expect("disable");
    assert_eq!(
        client.pca_show_ca(&id).await.expect("show").status,
        CaStatus::Disabled
    );
    state(client.pca_disable_ca(&id).await.expect_err("disable twice"));
    state(
        client
            .pca_export_ca_certificate(&id)
            .await
            .expect_err("export disabled"),
    );
    client.pca_enable_ca(&id).await.expect("enable");
    assert_eq!(
        client.pca_show_ca(&id).await.expect("show").status,
        CaStatus::Active
    );
    client.pca_disable_ca(&id).await.expect("disable again");

    // pending_days: checked by the client, and by the service for callers that skip it.
    assert!(matches!(
        client.pca_delete_ca(&id, 6).await,
        Err(CloudError::Invalid(_))
    ));
    assert!(matches!(
        client.pca_delete_ca(&id, 31).await,
        Err(CloudError::Invalid(_))
    ));
    let path = format!("{CAS}/{id}");
    for q in [
        &[("pending_days", "6")][..],
        &[("pending_days", "31")],
        &[("pending_days", "x")],
        &[],
    ] {
        let err = raw(&client, reqwest::Method::DELETE, &path, q, None)
            .await
            .expect_err("bad pending_days");
        assert_eq!(api(err), (400, "PCA.00020001".into()), "{q:?}");
    }

    let before = to_epoch_ms(emu.shared().now());
    client
        .pca_delete_ca(&id, 7)
        .await
        .expect("schedule deletion");
    let shown = client.pca_show_ca(&id).await.expect("show deleted");
    assert_eq!(shown.status, CaStatus::Deleted);
    let delete_at = to_epoch_ms(shown.delete_time.expect("delete_time"));
    assert!((delete_at - before - 7 * 86_400_000).abs() < 60_000);
    state(client.pca_enable_ca(&id).await.expect_err("enable deleted"));
    client.pca_restore_ca(&id).await.expect("restore");
    let shown = client.pca_show_ca(&id).await.expect("show restored");
    assert_eq!(shown.status, CaStatus::Disabled);
    assert!(shown.delete_time.is_none());

    client
        .pca_delete_ca(&id, 30)
        .await
        .expect("delete for real");
    assert_eq!(
        client
            .pca_ca_quota()
            .await
            .expect("quota")
            .get("CERTIFICATE_AUTHORITY")
            .expect("ca")
            .used,
        1
    );
    emu.shared().advance_clock(time::Duration::days(29));
    assert_eq!(
        client.pca_show_ca(&id).await.expect("still there").status,
        CaStatus::Deleted
    );
    emu.shared().advance_clock(time::Duration::days(2));
    assert_eq!(
        api(client.pca_show_ca(&id).await.expect_err("gone")),
        (404, "PCA.00030102".into())
    );
    assert_eq!(
        client
            .pca_ca_quota()
            .await
            .expect("quota")
            .get("CERTIFICATE_AUTHORITY")
            .expect("ca")
            .used,
        0
    );

    // A pending CA is deleted at once.
    let pending = client
        .pca_create_ca(&CreateCaRequest::pending_subordinate(
            dn("Short-lived"),
            KeyAlgorithm::Ec256,
        ))
        .await
        .expect("pending");
    client
        .pca_delete_ca(&pending, 7)
        .await
        .expect("delete pending");
    assert_eq!(
        api(client.pca_show_ca(&pending).await.expect_err("gone")).0,
        404
    );
}

#[tokio::test]
async fn expiry_follows_the_emulator_clock() {
    let (emu, client) = start().await;
    let root = client
        .pca_create_ca(&CreateCaRequest::root(
            dn("Short Root"),
            KeyAlgorithm::Ec256,
            SignatureAlgorithm::Sha256,
            Validity::days(2),
        ))
        .await
        .expect("root");
    // A subordinate may not outlive its issuer.
    let err = client
        .pca_create_ca(&CreateCaRequest::subordinate(
            dn("Too long"),
            KeyAlgorithm::Ec256,
            &root,
            SignatureAlgorithm::Sha256,
            Validity::days(3),
        ))
        .await
        .expect_err("outlives issuer");
    assert_eq!(api(err), (400, "PCA.00020109".into()));
    let sub = client
        .pca_create_ca(&CreateCaRequest::subordinate(
            dn("Short Sub"),
            KeyAlgorithm::Ec256,
            &root,
            SignatureAlgorithm::Sha256,
            Validity::hours(24),
        ))
        .await
        .expect("sub");

    emu.shared().advance_clock(time::Duration::days(3));
    let shown = client.pca_show_ca(&root).await.expect("show");
    assert_eq!(shown.status, CaStatus::Expired);
    assert!(shown.not_after.expect("not_after") < emu.shared().now());
    let expired = client
        .pca_list_all_cas(&ListCasQuery {
            status: Some(CaStatus::Expired),
            ..Default::default()
        })
        .await
        .expect("list expired");
    assert_eq!(expired.len(), 2);
    // Export works on an expired CA; issuing from it does not.
    client
        .pca_export_ca_certificate(&root)
        .await
        .expect("export expired");
    let err = client
        .pca_create_ca(&CreateCaRequest::subordinate(
            dn("Under expired"),
            KeyAlgorithm::Ec256,
            &root,
            SignatureAlgorithm::Sha256,
            Validity::hours(1),
        ))
        .await
        .expect_err("expired issuer");
    assert_eq!(api(err), (403, "PCA.00030201".into()));
    // EXPIRED → DISABLED → (deleted).
    client.pca_disable_ca(&sub).await.expect("disable expired");
    assert_eq!(
        client.pca_show_ca(&sub).await.expect("show").status,
        CaStatus::Disabled
    );
    client.pca_delete_ca(&sub, 7).await.expect("delete");
}

/// "Root CA certificates: [digitalSignature, keyCertSign, cRLSign], which cannot be changed.
/// The value you specified is ignored." (create CA, `key_usages`). The keyCertSign rule is a
/// subordinate's.
#[tokio::test]
async fn root_ca_key_usages_are_ignored() {
    let (_emu, client) = start().await;
    let body = json!({
        "type": "ROOT", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
        "distinguished_name": {"common_name": "Ignored Usages Root", "country": "CN",
            "state": "S", "locality": "L", "organization": "O", "organizational_unit": "OU"},
        "validity": {"type": "YEAR", "value": 1},
        "key_usages": ["keyEncipherment"]
    });
    let created = post_json(&client, CAS, &body)
        .await
        .expect("a root CA's key usages are ignored, not refused");
    let root = created["ca_id"].as_str().expect("ca_id");
    let exported = client
        .pca_export_ca_certificate(root)
        .await
        .expect("export");
    let cert = pki::parse_cert(&exported.certificate).expect("parse");
    assert_eq!(
        cert.key_usages,
        vec![
            pki::KeyUsage::DigitalSignature,
            pki::KeyUsage::KeyCertSign,
            pki::KeyUsage::CrlSign
        ]
    );
    let sub = json!({
        "type": "SUBORDINATE", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
        "issuer_id": root, "distinguished_name": {"common_name": "S"},
        "key_usages": ["keyEncipherment"], "validity": {"type": "YEAR", "value": 1}
    });
    assert_eq!(create_raw(&client, sub).await, (400, "PCA.00020001".into()));
}

#[tokio::test]
async fn create_validation_errors() {
    let (_emu, client) = start().await;
    let root = client
        .pca_create_ca(&root_req("Validation Root"))
        .await
        .expect("root");
    let good = || {
        json!({
            "type": "ROOT", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
            "distinguished_name": {"common_name": "X", "country": "CN", "state": "S",
                "locality": "L", "organization": "O", "organizational_unit": "OU"},
            "validity": {"type": "YEAR", "value": 1}
        })
    };
    let with = |path: &[&str], v: Value| {
        let mut b = good();
        let mut cur = &mut b;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        b
    };
    let now = to_epoch_ms(time::OffsetDateTime::now_utc());
    let cases: Vec<(Value, u16, &str)> = vec![
        (with(&["type"], json!("INTERMEDIATE")), 400, "PCA.00020202"),
        (
            with(&["key_algorithm"], json!("RSA1024")),
            400,
            "PCA.00020102",
        ),
        (
            with(&["signature_algorithm"], json!("MD5")),
            400,
            "PCA.00020103",
        ),
        (
            with(&["signature_algorithm"], Value::Null),
            400,
            "PCA.00020103",
        ),
        (
            with(&["distinguished_name", "country"], json!("C1")),
            400,
            "PCA.00020101",
        ),
        (
            with(&["distinguished_name", "country"], json!("CHN")),
            400,
            "PCA.00020101",
        ),
        (
            with(&["distinguished_name", "state"], Value::Null),
            400,
            "PCA.00020101",
        ),
        (
            with(
                &["distinguished_name", "common_name"],
                json!("x".repeat(65)),
            ),
            400,
            "PCA.00020101",
        ),
        (
            with(&["distinguished_name", "organization"], json!("Bad<Org>")),
            400,
            "PCA.00020101",
        ),
        (with(&["validity", "value"], json!(31)), 400, "PCA.00020109"),
        (
            with(&["validity", "type"], json!("WEEK")),
            400,
            "PCA.00020109",
        ),
        (with(&["validity", "value"], json!(0)), 400, "PCA.00020109"),
        (
            with(&["validity", "start_from"], json!(now - 10 * 60_000)),
            400,
            "PCA.00020109",
        ),
        (with(&["validity"], Value::Null), 400, "PCA.00020109"),
        (
            with(&["validity", "value"], json!("3")),
            400,
            "PCA.00020001",
        ),
        (
            with(
                &["crl_configuration"],
                json!({"enabled": true, "obs_bucket_name": "ccm-crl-demo", "valid_days": 7}),
            ),
            400,
            "PCA.00020204",
        ),
        (
            with(&["crl_configuration"], json!({"valid_days": 7})),
            400,
            "PCA.00020204",
        ),
        (
            with(&["enterprise_project_id"], json!("project-x")),
            400,
            "PCA.00020001",
        ),
        (
            json!({"type": "SUBORDINATE", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
                "issuer_id": root, "distinguished_name": {"common_name": "S"},
                "validity": {"type": "YEAR", "value": 21}}),
            400,
            "PCA.00020109",
        ),
        (
            json!({"type": "SUBORDINATE", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
                "issuer_id": root, "distinguished_name": {"common_name": "S"}, "path_length": 7,
                "validity": {"type": "YEAR", "value": 1}}),
            400,
            "PCA.00020203",
        ),
        (
            json!({"type": "SUBORDINATE", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
                "issuer_id": root, "distinguished_name": {"common_name": "S"},
                "key_usages": ["digitalSignature", "cRLSign"],
                "validity": {"type": "YEAR", "value": 1}}),
            400,
            "PCA.00020001",
        ),
        (
            json!({"type": "SUBORDINATE", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
                "issuer_id": root, "distinguished_name": {"common_name": "S"},
                "key_usages": ["keyCertSign", "flyingSign"],
                "validity": {"type": "YEAR", "value": 1}}),
            400,
            "PCA.00020001",
        ),
        (
            json!({"type": "SUBORDINATE", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
                "issuer_id": "not-a-uuid", "distinguished_name": {"common_name": "S"},
                "validity": {"type": "YEAR", "value": 1}}),
            400,
            "PCA.00020201",
        ),
        (
            json!({"type": "SUBORDINATE", "key_algorithm": "EC256", "signature_algorithm": "SHA256",
                "issuer_id": UNKNOWN_ID, "distinguished_name": {"common_name": "S"},
                "validity": {"type": "YEAR", "value": 1}}),
            404,
            "PCA.00030103",
        ),
        // A pending subordinate has no issuer to inherit from: the whole name is required.
        (
            json!({"type": "SUBORDINATE", "key_algorithm": "EC256", "distinguished_name": {"common_name": "S"}}),
            400,
            "PCA.00020101",
        ),
    ];
    for (body, status, code) in cases {
        assert_eq!(
            create_raw(&client, body.clone()).await,
            (status, code.to_owned()),
            "{body}"
        );
    }
    // Malformed JSON gets the service's own parameter error.
    let err = raw(
        &client,
        reqwest::Method::POST,
        CAS,
        &[],
        Some(b"{\"type\": \"ROOT\",,}"),
    )
    .await
    .expect_err("malformed");
    assert_eq!(api(err), (400, "PCA.00020001".into()));
    // The boundaries themselves pass: 30 years for a root, start_from 4 minutes ago.
    post_json(&client, CAS, &with(&["validity", "value"], json!(30)))
        .await
        .expect("30 years");
    post_json(
        &client,
        CAS,
        &with(&["validity", "start_from"], json!(now - 4 * 60_000)),
    )
    .await
    .expect("start_from now - 4 min");
    // The reference's create example, verbatim but for a faster key (it spells the OU
    // `organization_unit` and sends OBS fields with CRL publishing off).
    let example = r#"{
  "type" : "ROOT",
  "key_algorithm" : "RSA4096",
  "signature_algorithm" : "SHA512",
  "distinguished_name" : {
    "common_name" : "demoRootRSA",
    "country" : "RU",
    "locality" : "Moscow",
    "organization" : "TEST",
    "organization_unit" : "dew",
    "state" : "Moscow"
  },
  "validity" : {
    "type" : "YEAR",
    "value" : 3
  },
  "crl_configuration" : {
    "enabled" : false,
    "obs_bucket_name" : "demoBucket",
    "valid_days" : 8
  }
}"#
    .replace("RSA4096", "EC256");
    let v = post_json(&client, CAS, &serde_json::from_str(&example).expect("json"))
        .await
        .expect("reference example");
    let id = v["ca_id"].as_str().expect("ca_id");
    let shown = client.pca_show_ca(id).await.expect("show");
    assert_eq!(
        shown.distinguished_name.organizational_unit.as_deref(),
        Some("dew")
    );
    assert!(!shown.crl_configuration.expect("crl").enabled);
}

#[tokio::test]
async fn ids_queries_and_unknown_cas() {
    let (_emu, client) = start().await;
    // The client refuses non-UUID ids before sending anything.
    for bad in ["", "abc", "../quotas", "0b1c2d3e4f504a6b8c7d9e0f1a2b3c4d"] {
        assert!(
            matches!(client.pca_show_ca(bad).await, Err(CloudError::Invalid(_))),
            "{bad}"
        );
        assert!(matches!(
            client.pca_disable_ca(bad).await,
            Err(CloudError::Invalid(_))
        ));
    }
    // The service does too.
    let err = raw(
        &client,
        reqwest::Method::GET,
        &format!("{CAS}/not-a-uuid"),
        &[],
        None,
    )
    .await
    .expect_err("bad id");
    assert_eq!(api(err), (400, "PCA.00020201".into()));
    let err = raw(
        &client,
        reqwest::Method::POST,
        &format!("{CAS}/1234/enable"),
        &[],
        None,
    )
    .await
    .expect_err("bad id");
    assert_eq!(api(err), (400, "PCA.00020201".into()));
    // Unknown CAs: 404 for every operation.
    assert_eq!(
        api(client.pca_show_ca(UNKNOWN_ID).await.expect_err("show")),
        (404, "PCA.00030102".into())
    );
    assert_eq!(
        api(client
            .pca_disable_ca(UNKNOWN_ID)
            .await
            .expect_err("disable"))
        .1,
        "PCA.00030102"
    );
    assert_eq!(
        api(client.pca_enable_ca(UNKNOWN_ID).await.expect_err("enable")).1,
        "PCA.00030102"
    );
    assert_eq!(
        api(client
            .pca_restore_ca(UNKNOWN_ID)
            .await
            .expect_err("restore"))
        .1,
        "PCA.00030102"
    );
    assert_eq!(
        api(client
            .pca_delete_ca(UNKNOWN_ID, 7)
            .await
            .expect_err("delete"))
        .1,
        "PCA.00030102"
    );
    assert_eq!(
        api(client.pca_export_ca_csr(UNKNOWN_ID).await.expect_err("csr")).1,
        "PCA.00030102"
    );
    assert_eq!(
        api(client
            .pca_export_ca_certificate(UNKNOWN_ID)
            .await
            .expect_err("export"))
        .1,
        "PCA.00030102"
    );
    assert_eq!(
        api(client
            .pca_revoke_ca(UNKNOWN_ID, None)
            .await
            .expect_err("revoke"))
        .1,
        "PCA.00030102"
    );
    // List query checks.
    assert!(matches!(
        client
            .pca_list_cas(&ListCasQuery {
                limit: Some(1001),
                ..Default::default()
            })
            .await,
        Err(CloudError::Invalid(_))
    ));
    for (q, code) in [
        (("limit", "1001"), "PCA.00020001"),
        (("limit", "-1"), "PCA.00020001"),
        (("offset", "x"), "PCA.00020001"),
        (("status", "ACTIVE"), "PCA.00020404"),
        (("type", "LEAF"), "PCA.00020202"),
        (("sort_key", "serial"), "PCA.00020001"),
        (("sort_dir", "UP"), "PCA.00020001"),
    ] {
        let err = raw(&client, reqwest::Method::GET, CAS, &[q], None)
            .await
            .expect_err("bad query");
        assert_eq!(api(err), (400, code.to_owned()), "{q:?}");
    }
}

#[tokio::test]
async fn list_pagination_sorting_and_filters() {
    let (_emu, client) = start().await;
    let root = client
        .pca_create_ca(&root_req("Paging Root"))
        .await
        .expect("root");
    let mut subs = Vec::new();
    for i in 0..4 {
        subs.push(
            client
                .pca_create_ca(&CreateCaRequest::subordinate(
                    dn(&format!("Paging Sub {i}")),
                    KeyAlgorithm::Ec256,
                    &root,
                    SignatureAlgorithm::Sha256,
                    Validity::years(1),
                ))
                .await
                .expect("sub"),
        );
    }
    client
        .pca_create_ca(&CreateCaRequest::pending_subordinate(
            dn("Paging Pending"),
            KeyAlgorithm::Ec256,
        ))
        .await
        .expect("pending");
    let page = client
        .pca_list_cas(&ListCasQuery {
            limit: Some(2),
            offset: Some(1),
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(page.total, 6);
    assert_eq!(page.certificate_authorities.len(), 2);
    let all = client
        .pca_list_all_cas(&ListCasQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .expect("all");
    assert_eq!(all.len(), 6);
    let mut ids: Vec<_> = all.iter().map(|c| c.ca_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "no CA twice across pages");
    let by_name = client
        .pca_list_all_cas(&ListCasQuery {
            name: Some("paging sub".into()),
            ca_type: Some(CaType::Subordinate),
            status: Some(CaStatus::Active),
            sort_key: Some(CaSortKey::CommonName),
            sort_dir: Some(SortDir::Asc),
            ..Default::default()
        })
        .await
        .expect("filtered");
    let names: Vec<_> = by_name.iter().map(|c| c.common_name().to_owned()).collect();
    assert_eq!(
        names,
        [
            "Paging Sub 0",
            "Paging Sub 1",
            "Paging Sub 2",
            "Paging Sub 3"
        ]
    );
    let roots = client
        .pca_list_cas(&ListCasQuery {
            ca_type: Some(CaType::Root),
            ..Default::default()
        })
        .await
        .expect("roots");
    assert_eq!(roots.total, 1);
    assert_eq!(roots.certificate_authorities[0].ca_id, root);
    let pending = client
        .pca_list_cas(&ListCasQuery {
            status: Some(CaStatus::Pending),
            ..Default::default()
        })
        .await
        .expect("pending");
    assert_eq!(pending.total, 1);
    let none = client
        .pca_list_cas(&ListCasQuery {
            limit: Some(0),
            ..Default::default()
        })
        .await
        .expect("limit 0");
    assert_eq!((none.total, none.certificate_authorities.len()), (6, 0));
    // Default order: newest first.
    let newest = client
        .pca_list_cas(&ListCasQuery::default())
        .await
        .expect("default");
    assert_eq!(
        newest.certificate_authorities[0].common_name(),
        "Paging Pending"
    );
}

#[tokio::test]
async fn quota_is_enforced() {
    let (emu, client) = start().await;
    let q = client.pca_ca_quota().await.expect("quota");
    let ca = q.get("CERTIFICATE_AUTHORITY").expect("ca quota");
    assert_eq!((ca.used, ca.quota), (0, emu_ca::CA_QUOTA));
    // Fill the quota directly (fast), leaving one slot for the API.
    let shared = emu.shared().clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..emu_ca::CA_QUOTA - 1 {
            emu_ca::create_root_ca(&shared, &format!("Quota Root {i}"), "EC256").expect("root");
        }
    })
    .await
    .expect("fill");
    let last = client
        .pca_create_ca(&root_req("Last Root"))
        .await
        .expect("the 100th");
    let err = client
        .pca_create_ca(&root_req("One Too Many"))
        .await
        .expect_err("over quota");
    assert_eq!(api(err), (403, "PCA.00030001".into()));
    let q = client.pca_ca_quota().await.expect("quota");
    assert_eq!(
        q.get("CERTIFICATE_AUTHORITY").expect("ca").used,
        emu_ca::CA_QUOTA
    );
    // A CA scheduled for deletion keeps its slot until it is really gone.
    client.pca_disable_ca(&last).await.expect("disable");
    client.pca_delete_ca(&last, 7).await.expect("delete");
    let err = client
        .pca_create_ca(&root_req("Still Too Many"))
        .await
        .expect_err("still over");
    assert_eq!(api(err).1, "PCA.00030001");
    emu.shared().advance_clock(time::Duration::days(8));
    client
        .pca_create_ca(&root_req("Fits Again"))
        .await
        .expect("slot freed");
}

#[tokio::test]
async fn revoke_subordinate() {
    let (emu, client) = start().await;
    let (root, sub) =
        emu_ca::create_active_ca_pair(emu.shared(), "Revoke Root", "Revoke Sub").expect("pair");
    let err = client
        .pca_revoke_ca(&root, Some(RevocationReason::KeyCompromise))
        .await
        .expect_err("root");
    assert_eq!(api(err), (400, "PCA.00020202".into()));
    // No body, or a reason outside the enum.
    let path = format!("{CAS}/{sub}/revoke");
    let err = raw(&client, reqwest::Method::POST, &path, &[], None)
        .await
        .expect_err("no body");
    assert_eq!(api(err), (400, "PCA.00020001".into()));
    let err = post_json(&client, &path, &json!({"reason": "BORED"}))
        .await
        .expect_err("bad reason");
    assert_eq!(api(err), (400, "PCA.00020001".into()));
    client
        .pca_revoke_ca(&sub, Some(RevocationReason::CessationOfOperation))
        .await
        .expect("revoke");
    let err = client.pca_revoke_ca(&sub, None).await.expect_err("twice");
    assert_eq!(api(err), (403, "PCA.00030201".into()));
    let rec = emu
        .shared()
        .with_state(|st| st.pca.cas.get(&sub).cloned())
        .expect("record");
    assert_eq!(
        rec.revoked_reason.as_deref(),
        Some("CESSATION_OF_OPERATION")
    );
    // The reference's "{}" form.
    let other = emu_ca::create_subordinate_ca(emu.shared(), &root, "Revoke Sub 2", "EC256", 0)
        .expect("sub 2");
    client
        .pca_revoke_ca(&other, None)
        .await
        .expect("revoke with {}");
}

#[tokio::test]
async fn obs_agency_buckets_and_crl_configuration() {
    let (_emu, client) = start().await;
    assert!(!client.pca_obs_agency_granted().await.expect("agency"));
    let err = client.pca_list_obs_buckets().await.expect_err("no agency");
    assert_eq!(api(err), (403, "PCA.00000006".into()));
    let crl = CrlConfiguration {
        enabled: true,
        obs_bucket_name: Some("ccm-crl-demo".into()),
        valid_days: Some(7),
        ..Default::default()
    };
    let err = client
        .pca_create_ca(&root_req("CRL Root").with_crl_configuration(crl.clone()))
        .await
        .expect_err("no agency yet");
    assert_eq!(api(err), (400, "PCA.00020204".into()));

    let agency = client.pca_create_obs_agency().await.expect("create agency");
    assert_eq!(agency.len(), 32);
    assert_eq!(client.pca_create_obs_agency().await.expect("again"), agency);
    assert!(client.pca_obs_agency_granted().await.expect("agency"));
    let buckets = client.pca_list_obs_buckets().await.expect("buckets");
    assert_eq!(buckets.total, 2);
    assert_eq!(buckets.obs_buckets[0].bucket_name, "ccm-crl-demo");
    assert!(buckets.obs_buckets[0].create_time.is_some());

    for bad in [
        CrlConfiguration {
            obs_bucket_name: Some("no-such-bucket".into()),
            ..crl.clone()
        },
        CrlConfiguration {
            valid_days: Some(6),
            ..crl.clone()
        },
        CrlConfiguration {
            valid_days: None,
            ..crl.clone()
        },
        CrlConfiguration {
            crl_name: Some("bad/name".into()),
            ..crl.clone()
        },
    ] {
        let err = client
            .pca_create_ca(&root_req("CRL Root").with_crl_configuration(bad.clone()))
            .await
            .expect_err("bad crl");
        assert_eq!(api(err), (400, "PCA.00020204".into()), "{bad:?}");
    }
    let id = client
        .pca_create_ca(&root_req("CRL Root").with_crl_configuration(crl))
        .await
        .expect("crl root");
    let shown = client.pca_show_ca(&id).await.expect("show");
    let c = shown.crl_configuration.expect("crl");
    assert!(c.enabled);
    assert_eq!(c.valid_days, Some(7));
    assert_eq!(c.crl_name.as_deref(), Some(id.as_str()));
    assert_eq!(
        c.crl_dis_point.as_deref(),
        Some(format!("https://ccm-crl-demo.obs.myhuaweicloud.com/{id}.crl").as_str())
    );
}

#[tokio::test]
async fn demo_seed_is_discoverable_by_name() {
    let emu = Emulator::start(EmulatorConfig {
        seed: Some(Seed::Demo),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let client = emu.client().expect("client");
    let found = client
        .pca_list_all_cas(&ListCasQuery {
            name: Some(emu_ca::DEMO_SUB_CN.into()),
            ..Default::default()
        })
        .await
        .expect("list");
    let sub = found
        .iter()
        .find(|c| c.common_name() == emu_ca::DEMO_SUB_CN)
        .expect("demo sub listed");
    assert_eq!(sub.status, CaStatus::Active);
    assert_eq!(sub.key_algorithm.as_deref(), Some("EC256"));
    assert_eq!(sub.issuer_name.as_deref(), Some(emu_ca::DEMO_ROOT_CN));
    let root_id = sub.issuer_id.clone().expect("issuer");
    assert_eq!(
        emu_ca::find_ca_by_name(emu.shared(), emu_ca::DEMO_SUB_CN).as_deref(),
        Some(sub.ca_id.as_str())
    );
    let root = client.pca_show_ca(&root_id).await.expect("root");
    assert_eq!(root.key_algorithm.as_deref(), Some("EC384"));
    let root_pem = client
        .pca_export_ca_certificate(&root_id)
        .await
        .expect("root pem");
    let sub_pem = client
        .pca_export_ca_certificate(&sub.ca_id)
        .await
        .expect("sub pem");
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_verify(
        dir.path(),
        &root_pem.certificate,
        None,
        &sub_pem.certificate,
    );
}

#[tokio::test]
async fn rsa_root_with_sha512() {
    let (_emu, client) = start().await;
    let id = client
        .pca_create_ca(&CreateCaRequest::root(
            dn("RSA Root"),
            KeyAlgorithm::Rsa2048,
            SignatureAlgorithm::Sha512,
            Validity::years(1),
        ))
        .await
        .expect("rsa root");
    let shown = client.pca_show_ca(&id).await.expect("show");
    assert_eq!(shown.key_algorithm.as_deref(), Some("RSA2048"));
    let pem = client.pca_export_ca_certificate(&id).await.expect("export");
    let info = pki::parse_cert(&pem.certificate).expect("parses");
    assert_eq!(info.key_algorithm, Some(pki::KeyAlgorithm::Rsa2048));
    assert_eq!(info.signature_algorithm, "SHA512WITHRSA");
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_verify(dir.path(), &pem.certificate, None, &pem.certificate);
}
