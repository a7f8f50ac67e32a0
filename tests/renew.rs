//! The renewal engine against the real emulator, with real files in temp directories and the
//! emulator's movable clock: PCA (CSR and apply mode) end to end, SCM selection and re-export,
//! on-disk drift, every bad-input and fault case (each leaves the files byte-identical and
//! recovers once the fault is gone), crash resume and reconciliation, dry runs, concurrency.
//!
//! Faults on the export come from `FaultRule::replace_body` with crafted JSON; the read-only
//! output directory from `chattr +i` (needs root on ext4-like file systems; skipped otherwise).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ccm_agent::agent::renew::{Action, CheckOptions, CheckReport, RenewError, Renewer};
use ccm_agent::clock::Clock;
use ccm_agent::cloud::pca::Validity;
use ccm_agent::cloud::pca::cert::{
    ApplyCertificateRequest, CertificateStatus, CsrCertificateRequest, ExportType,
    SubjectAlternativeName,
};
use ccm_agent::cloud::scm::ImportCertificateRequest;
use ccm_agent::cloud::{Client, Credentials, Endpoints, RetryPolicy};
use ccm_agent::config::{Config, ManagedCertificate};
use ccm_agent::emulator::faults::FaultRule;
use ccm_agent::emulator::pca::ca::create_active_ca_pair;
use ccm_agent::emulator::{Emulator, EmulatorConfig, Shared};
use ccm_agent::install::{self, InstalledState, OutputPaths};
use ccm_agent::pki;
use ccm_agent::state::StateDir;
use ccm_agent::state::journal::{IssueMode, Journal, Phase};
use tempfile::TempDir;

const CN: &str = "web.internal";

struct Env {
    emu: Emulator,
    shared: Shared,
    client: Client,
    _dir: TempDir,
    out: PathBuf,
    state: PathBuf,
    root_id: String,
    sub_id: String,
    renewer: Arc<Renewer>,
}

/// A client with a short timeout and quick retries, so timeout and 5xx faults are fast.
fn client(emu: &Emulator) -> Client {
    Client::builder(
        Endpoints::single(&emu.base_url()).unwrap(),
        Credentials::AkSk(emu.aksk()),
    )
    .timeout(Duration::from_secs(2))
    .retry(RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(10),
    })
    .build()
    .unwrap()
}

fn renewer(emu: &Emulator, state: &Path) -> Renewer {
    renewer_behind(emu, state, time::Duration::ZERO)
}

/// A renewer whose clock is `behind` the emulator's.
fn renewer_behind(emu: &Emulator, state: &Path, behind: time::Duration) -> Renewer {
    let shared = emu.shared().clone();
    Renewer::new(
        client(emu),
        state,
        Clock::from_fn(move || shared.now() - behind),
        "test-host".into(),
    )
    .unwrap()
}

async fn env() -> Env {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let shared = emu.shared().clone();
    let s2 = shared.clone();
    let (root_id, sub_id) = tokio::task::spawn_blocking(move || {
        create_active_ca_pair(&s2, "Renew Test Root", "Renew Test Issuing CA").unwrap()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live");
    let state = dir.path().join("state");
    fs::create_dir_all(&out).unwrap();
    let renewer = Arc::new(renewer(&emu, &state));
    Env {
        client: client(&emu),
        emu,
        shared,
        _dir: dir,
        out,
        state,
        root_id,
        sub_id,
        renewer,
    }
}

fn parse_config(text: &str) -> ManagedCertificate {
    let text = format!(
        "[agent]\nstate_dir = \"/tmp/unused\"\n[cloud]\nendpoint = \"http://127.0.0.1:1\"\n{text}"
    );
    let cfg = Config::from_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    cfg.certificates.into_iter().next().unwrap()
}

/// A PCA certificate: 30 days, renewed at half its life, no jitter, superseded ones revoked
/// after an hour.
fn pca_cert(e: &Env, name: &str, mode: &str) -> ManagedCertificate {
    pca_cert_with_sans(e, name, mode, &format!(r#""dns:{CN}", "ip:10.0.0.1""#))
}

/// [`pca_cert`] with other SANs (written as the TOML array's items).
fn pca_cert_with_sans(e: &Env, name: &str, mode: &str, sans: &str) -> ManagedCertificate {
    parse_config(&format!(
        r#"
[[certificates]]
name = "{name}"
renew_at_fraction = 0.5
jitter = 0
[certificates.pca]
ca_id = "{ca}"
mode = "{mode}"
key_algorithm = "EC256"
validity = {{ type = "DAY", value = 30 }}
subject = {{ common_name = "{CN}", organization = "Renew Tests" }}
sans = [{sans}]
extended_key_usage = ["server_auth"]
revoke_superseded = true
revoke_grace = "1h"
[certificates.output]
dir = "{out}"
"#,
        ca = e.sub_id,
        out = e.out.display()
    ))
}

fn scm_cert(e: &Env, name: &str, selector: &str) -> ManagedCertificate {
    parse_config(&format!(
        r#"
[[certificates]]
name = "{name}"
renew_before = "10d"
jitter = 0
[certificates.scm]
{selector}
[certificates.output]
dir = "{out}"
"#,
        out = e.out.display()
    ))
}

fn paths(e: &Env) -> OutputPaths {
    OutputPaths::certbot_layout(&e.out)
}

fn snapshot(e: &Env) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let p = paths(e);
    [p.cert, p.chain, p.fullchain, p.key]
        .into_iter()
        .map(|path| {
            let b = fs::read(&path).ok();
            (path, b)
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn installed_serial(e: &Env) -> String {
    match install::read_installed(&paths(e)) {
        InstalledState::Present(c) => c.serial_hex,
        other => panic!("nothing installed: {other:?}"),
    }
}

fn root_pem(e: &Env) -> String {
    e.shared
        .with_state(|st| st.pca.cas[&e.root_id].certificate_pem.clone().unwrap())
}

fn force() -> CheckOptions {
    CheckOptions {
        force: true,
        dry_run: false,
    }
}

fn csr_count(e: &Env) -> usize {
    e.shared.count_requests("pca.create_certificate_by_csr")
}

fn apply_count(e: &Env) -> usize {
    e.shared.count_requests("pca.create_certificate")
}

fn cloud_id(r: &CheckReport) -> String {
    match &r.action {
        Action::Renewed { cloud_id } | Action::Reexported { cloud_id } => cloud_id.clone(),
        other => panic!("expected a renewal, got {other:?}"),
    }
}

/// `chattr +i` for the life of the guard.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test]
async fn pca_csr_mode_issues_installs_waits_renews_and_revokes_the_superseded() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");

    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let first_id = cloud_id(&r);
    assert_eq!(r.source, "pca");
    assert!(r.install_changed);
    assert_eq!(csr_count(&e), 1);
    assert_eq!(apply_count(&e), 0);
    let p = paths(&e);
    for f in [&p.cert, &p.chain, &p.fullchain] {
        assert_eq!(mode(f), 0o644, "{}", f.display());
    }
    assert_eq!(mode(&p.key), 0o600);
    let cert_pem = fs::read_to_string(&p.cert).unwrap();
    let chain_pem = fs::read_to_string(&p.chain).unwrap();
    let key_pem = fs::read_to_string(&p.key).unwrap();
    pki::verify_chain(&cert_pem, &chain_pem, &root_pem(&e), e.shared.now()).unwrap();
    let info = pki::parse_cert(&cert_pem).unwrap();
    let key = pki::PrivateKey::from_pem(&key_pem).unwrap();
    assert!(pki::key_matches_cert(&key, &info));
    assert_eq!(info.subject.common_name.as_deref(), Some(CN));
    assert!(install::names_covered(&info, CN) && install::names_covered(&info, "10.0.0.1"));
    // The key never left the host: PCA holds none for this certificate.
    let exported = e
        .client
        .export_private_certificate(&first_id, ExportType::Other)
        .await
        .unwrap();
    assert!(exported.private_key.is_none());
    let detail = e.client.show_private_certificate(&first_id).await.unwrap();
    assert_eq!(detail.gen_mode.as_deref(), Some("CSR"));
    // The report describes what is on disk.
    let s = r.installed.clone().unwrap();
    assert_eq!(s.serial, info.serial_hex);
    assert_eq!(s.subject_cn.as_deref(), Some(CN));
    assert_eq!(s.issuer_cn.as_deref(), Some("Renew Test Issuing CA"));
    assert_eq!(s.cert_path, p.cert);
    let next = r.next_renewal.unwrap();
    assert_eq!(
        next,
        info.not_before + (info.not_after - info.not_before) / 2
    );
    assert!(
        Journal::open(StateDir::new(&e.state).journal_dir())
            .unwrap()
            .all_pending()
            .unwrap()
            .is_empty()
    );

    // Nothing is due: nothing is issued, nothing written.
    let before = snapshot(&e);
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
    assert!(!r.install_changed);
    assert_eq!(r.next_renewal, Some(next));
    assert_eq!(csr_count(&e), 1);
    assert_eq!(snapshot(&e), before);

    // Past the renewal point: renewed, the new serial installed, the previous one kept.
    e.shared.advance_clock(time::Duration::days(16));
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let second_id = cloud_id(&r);
    assert_ne!(second_id, first_id);
    assert_eq!(csr_count(&e), 2);
    assert_ne!(installed_serial(&e), info.serial_hex);
    let prev = install::previous(&StateDir::new(&e.state), "web")
        .unwrap()
        .unwrap();
    assert_eq!(
        prev.cert_sha256.as_deref(),
        Some(install::sha256_hex(cert_pem.as_bytes()).as_str())
    );
    let new_key = fs::read_to_string(&p.key).unwrap();
    assert_ne!(
        new_key, key_pem,
        "CSR mode generates a fresh key per renewal"
    );

    // The superseded certificate is revoked (SUPERSEDED) once the grace period has passed.
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
    assert_eq!(
        e.client
            .show_private_certificate(&first_id)
            .await
            .unwrap()
            .status,
        CertificateStatus::Issued
    );
    e.shared.advance_clock(time::Duration::hours(2));
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(
        e.client
            .show_private_certificate(&first_id)
            .await
            .unwrap()
            .status,
        CertificateStatus::Revoked
    );
    assert_eq!(e.shared.count_requests("pca.revoke_certificate"), 1);
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(e.shared.count_requests("pca.revoke_certificate"), 1, "once");
    assert_eq!(
        e.client
            .show_private_certificate(&second_id)
            .await
            .unwrap()
            .status,
        CertificateStatus::Issued
    );
}

#[tokio::test]
async fn pca_apply_mode_issues_waits_and_renews() {
    let e = env().await;
    let cert = pca_cert(&e, "api", "apply");
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let id = cloud_id(&r);
    assert_eq!(apply_count(&e), 1);
    assert_eq!(csr_count(&e), 0);
    let p = paths(&e);
    let cert_pem = fs::read_to_string(&p.cert).unwrap();
    pki::verify_chain(
        &cert_pem,
        &fs::read_to_string(&p.chain).unwrap(),
        &root_pem(&e),
        e.shared.now(),
    )
    .unwrap();
    // The installed key is the one PCA generated and exports.
    let exported = e
        .client
        .export_private_certificate(&id, ExportType::Other)
        .await
        .unwrap();
    let pca_key = pki::PrivateKey::from_pem(exported.private_key.as_deref().unwrap()).unwrap();
    let disk_key = pki::PrivateKey::from_pem(&fs::read_to_string(&p.key).unwrap()).unwrap();
    assert_eq!(pca_key.public_key_der(), disk_key.public_key_der());
    let info = pki::parse_cert(&cert_pem).unwrap();
    assert!(
        info.extended_key_usages
            .contains(&pki::ExtendedKeyUsage::ServerAuth)
    );

    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
    assert_eq!(apply_count(&e), 1);

    e.shared.advance_clock(time::Duration::days(16));
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_ne!(cloud_id(&r), id);
    assert_eq!(apply_count(&e), 2);
    assert_ne!(installed_serial(&e), info.serial_hex);
}

/// A local "public" CA and leaves for SCM imports.
struct ScmCa {
    ca: (String, pki::PrivateKey),
}

impl ScmCa {
    fn new(now: time::OffsetDateTime) -> Self {
        ScmCa {
            ca: ccm_agent::emulator::scm::demo_ca(now).unwrap(),
        }
    }

    async fn import(&self, e: &Env, name: &str, cn: &str, from_days: i64, to_days: i64) -> String {
        let now = e.shared.now();
        let (cert, key) = ccm_agent::emulator::scm::demo_leaf(
            &self.ca,
            cn,
            &[],
            now + time::Duration::days(from_days),
            now + time::Duration::days(to_days),
        )
        .unwrap();
        e.client
            .scm_import_certificate(
                &ImportCertificateRequest::new(name, cert, key).chain(&self.ca.0),
            )
            .await
            .unwrap()
            .certificate_id
    }
}

#[tokio::test]
async fn scm_by_name_installs_the_newest_valid_reexports_a_newer_one_and_warns_when_expiring() {
    let e = env().await;
    let ca = ScmCa::new(e.shared.now());
    // SCM refuses expired imports: this one expires once the clock moves on below.
    let _expired = ca.import(&e, "app-cert", "app.example.com", -100, 2).await;
    let older = ca.import(&e, "app-cert", "app.example.com", -60, 40).await;
    let newer = ca.import(&e, "app-cert", "app.example.com", -10, 80).await;
    let _other = ca
        .import(&e, "other-cert", "app.example.com", -1, 300)
        .await;
    e.shared.advance_clock(time::Duration::days(3));
    let cert = scm_cert(&e, "app", "name = \"app-cert\"");

    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.source, "scm");
    assert_eq!(
        r.action,
        Action::Reexported {
            cloud_id: newer.clone()
        }
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let installed = r.installed.clone().unwrap();
    let scm_detail = e.client.scm_show_certificate(&newer).await.unwrap();
    assert_eq!(
        installed.not_after.unix_timestamp(),
        scm_detail.not_after.unwrap().unix_timestamp()
    );
    assert_ne!(newer, older);
    let exports = e.shared.count_requests("scm.export_certificate");

    // Nothing new: nothing exported.
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
    assert_eq!(e.shared.count_requests("scm.export_certificate"), exports);

    // A newer one appears: re-exported.
    let newest = ca.import(&e, "app-cert", "app.example.com", 0, 200).await;
    let before = installed_serial(&e);
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.action,
        Action::Reexported {
            cloud_id: newest.clone()
        }
    );
    assert!(r.install_changed);
    assert_ne!(installed_serial(&e), before);

    // The batched pass: one listing serves the following check.
    let lists = e.shared.count_requests("scm.list_certificates");
    let cands = e
        .renewer
        .scm_candidates(&[&cert], 4, ccm_agent::config::DEFAULT_FULL_CHECK_EVERY)
        .await
        .unwrap();
    assert!(
        cands
            .matching(&ccm_agent::config::ScmSelector::Name("app-cert".into()))
            .len()
            >= 3
    );
    // The change-detection page, then the listing (one page: a small account).
    assert_eq!(e.shared.count_requests("scm.list_certificates"), lists + 2);
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
    assert_eq!(
        e.shared.count_requests("scm.list_certificates"),
        lists + 2,
        "the check used the pass"
    );
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(
        e.shared.count_requests("scm.list_certificates"),
        lists + 3,
        "a pass serves each certificate once"
    );
}

#[tokio::test]
async fn scm_only_certificate_expiring_is_a_warning_and_all_expired_is_an_error() {
    let e = env().await;
    let ca = ScmCa::new(e.shared.now());
    let id = ca
        .import(&e, "lonely-cert", "lonely.example.com", -87, 3)
        .await;
    let cert = scm_cert(&e, "lonely", "domain = \"lonely.example.com\"");
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.action,
        Action::Reexported {
            cloud_id: id.clone()
        }
    );
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    let w = &r.warnings[0];
    assert!(
        w.contains(&id) && w.contains("expires in 3 days") && w.contains("no newer"),
        "{w}"
    );
    assert_eq!(r.next_renewal, None);
    // Still a warning, not a failure, on the next check; nothing re-exported.
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
    assert_eq!(r.warnings.len(), 1);

    // Once expired: an error naming the certificate; the files stay.
    let before = snapshot(&e);
    e.shared.advance_clock(time::Duration::days(4));
    let err = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "expired", "{err}");
    assert!(err.to_string().contains("lonely"), "{err}");
    assert_eq!(snapshot(&e), before);

    let missing = scm_cert(&e, "ghost", "name = \"no-such-cert\"");
    let err = e
        .renewer
        .check(&missing, CheckOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "not_found", "{err}");
    assert!(err.to_string().contains("ghost"), "{err}");
}

#[tokio::test]
async fn scm_by_id() {
    let e = env().await;
    let ca = ScmCa::new(e.shared.now());
    let id = ca.import(&e, "by-id-cert", "id.example.com", -1, 100).await;
    let _newer = ca.import(&e, "by-id-cert", "id.example.com", 0, 200).await;
    let cert = scm_cert(&e, "byid", &format!("id = \"{id}\""));
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::Reexported { cloud_id: id });
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
}

#[tokio::test]
async fn on_disk_drift_is_reinstalled_without_a_new_issuance() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let good = snapshot(&e);
    let p = paths(&e);

    let reinstalled = |r: &CheckReport| {
        assert!(
            matches!(r.action, Action::Reinstalled { .. }),
            "{:?}",
            r.action
        );
        assert!(r.install_changed);
    };

    fs::remove_file(&p.key).unwrap();
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    reinstalled(&r);
    assert_eq!(snapshot(&e), good);

    fs::write(&p.key, b"").unwrap();
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    reinstalled(&r);
    assert_eq!(snapshot(&e), good);

    // Another valid certificate (and its key) put in place behind the agent's back.
    let other = e
        .client
        .apply_private_certificate(&ApplyCertificateRequest::new(
            &e.sub_id,
            CN,
            "EC256",
            "SHA256",
            Validity::days(10),
        ))
        .await
        .unwrap();
    let x = e
        .client
        .export_private_certificate(&other, ExportType::Other)
        .await
        .unwrap();
    fs::write(&p.cert, &x.certificate).unwrap();
    fs::write(&p.key, x.private_key.unwrap()).unwrap();
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    reinstalled(&r);
    assert_eq!(snapshot(&e), good);

    // A certificate that no longer matches its key.
    fs::write(
        &p.key,
        pki::generate_key(pki::KeyAlgorithm::Ec256)
            .unwrap()
            .to_pem(),
    )
    .unwrap();
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    reinstalled(&r);
    assert_eq!(snapshot(&e), good);
    assert_eq!(csr_count(&e), 1, "drift never costs an issuance");

    // SCM too.
    let ca = ScmCa::new(e.shared.now());
    let id = ca
        .import(&e, "drift-cert", "drift.example.com", -1, 100)
        .await;
    let scm_out = e.out.join("scm");
    fs::create_dir_all(&scm_out).unwrap();
    let scm = parse_config(&format!(
        "[[certificates]]\nname = \"drift\"\n[certificates.scm]\nid = \"{id}\"\n[certificates.output]\ndir = \"{}\"\n",
        scm_out.display()
    ));
    e.renewer
        .check(&scm, CheckOptions::default())
        .await
        .unwrap();
    fs::remove_file(scm_out.join("fullchain.pem")).unwrap();
    let exports = e.shared.count_requests("scm.export_certificate");
    let r = e
        .renewer
        .check(&scm, CheckOptions::default())
        .await
        .unwrap();
    reinstalled(&r);
    assert!(scm_out.join("fullchain.pem").exists());
    assert_eq!(e.shared.count_requests("scm.export_certificate"), exports);
}

/// Leaf, chain and key PEMs for crafted export bodies.
struct Crafted {
    cert: String,
    chain: String,
    key: String,
}

fn export_body(c: &Crafted) -> String {
    serde_json::json!({
        "certificate": c.cert,
        "certificate_chain": c.chain,
        "private_key": c.key,
    })
    .to_string()
}

async fn apply_and_export(e: &Env, ca: &str) -> Crafted {
    let mut req = ApplyCertificateRequest::new(ca, CN, "EC256", "SHA256", Validity::days(10));
    req.subject_alternative_names = vec![
        SubjectAlternativeName::dns(CN),
        SubjectAlternativeName::ip("10.0.0.1"),
    ];
    let id = e.client.apply_private_certificate(&req).await.unwrap();
    let x = e
        .client
        .export_private_certificate(&id, ExportType::Other)
        .await
        .unwrap();
    Crafted {
        cert: x.certificate,
        chain: x.certificate_chain,
        key: x.private_key.unwrap(),
    }
}

/// Runs `check(force)` under `fault`, expects `kind`, the certificate named, files untouched;
/// then clears the fault and expects the next plain check to succeed with no new issuance
/// (the pending one is adopted) — or, with `reissues`, with a fresh one.
async fn expect_failure_then_recovery(
    e: &Env,
    cert: &ManagedCertificate,
    kind: &str,
    setup: impl AsyncFnOnce(),
    teardown: impl AsyncFnOnce(),
) -> RenewError {
    let before = snapshot(e);
    let creates = apply_count(e) + csr_count(e);
    setup().await;
    let err = e.renewer.check(cert, force()).await.unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("certificate {}", cert.name)),
        "{err}"
    );
    assert_eq!(snapshot(e), before, "files untouched after {kind}: {err}");
    teardown().await;
    e.shared.clear_faults();
    let r = e
        .renewer
        .check(cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(r.installed.is_some(), "{kind}: {r:?}");
    assert!(
        apply_count(e) + csr_count(e) <= creates + 2,
        "{kind}: at most the forced issuance and one retry"
    );
    err
}

#[tokio::test]
async fn every_bad_input_is_rejected_names_the_cause_keeps_files_and_recovers() {
    let e = env().await;
    let cert = pca_cert(&e, "api", "apply");
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();

    let export_fault = |body: String| {
        let shared = e.shared.clone();
        async move || {
            shared.add_fault(FaultRule {
                replace_body: Some(body),
                ..FaultRule::new("pca.export_certificate")
            });
        }
    };
    let nothing = async || {};

    // After an export fault the issued certificate is adopted, not issued again.
    let adopted = async |label: &str, creates_before: usize| {
        assert_eq!(
            apply_count(&e),
            creates_before + 1,
            "{label}: the forced issuance only; recovery adopted it"
        );
    };

    let c = apply_count(&e);
    expect_failure_then_recovery(
        &e,
        &cert,
        "malformed",
        export_fault("{not json".into()),
        nothing,
    )
    .await;
    adopted("malformed", c).await;

    let garbage = Crafted {
        cert: "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
            .into(),
        chain: String::new(),
        key: pki::generate_key(pki::KeyAlgorithm::Ec256)
            .unwrap()
            .to_pem(),
    };
    let c = apply_count(&e);
    let err = expect_failure_then_recovery(
        &e,
        &cert,
        "invalid_certificate",
        export_fault(export_body(&garbage)),
        nothing,
    )
    .await;
    assert!(err.to_string().contains("does not parse"), "{err}");
    adopted("unparsable", c).await;

    let other = apply_and_export(&e, &e.sub_id).await;
    let mismatched = Crafted {
        key: pki::generate_key(pki::KeyAlgorithm::Ec256)
            .unwrap()
            .to_pem(),
        ..other
    };
    let c = apply_count(&e);
    expect_failure_then_recovery(
        &e,
        &cert,
        "key_mismatch",
        export_fault(export_body(&mismatched)),
        nothing,
    )
    .await;
    adopted("key mismatch", c).await;

    // Expired: a real certificate, key and chain, but out of date.
    let now = e.shared.now();
    let old_ca = ccm_agent::emulator::scm::demo_ca(now).unwrap();
    let (old_cert, old_key) = ccm_agent::emulator::scm::demo_leaf(
        &old_ca,
        CN,
        &[],
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap();
    let expired = Crafted {
        cert: old_cert,
        chain: old_ca.0.clone(),
        key: old_key,
    };
    let c = apply_count(&e);
    expect_failure_then_recovery(
        &e,
        &cert,
        "expired",
        export_fault(export_body(&expired)),
        nothing,
    )
    .await;
    adopted("expired", c).await;

    // A chain that leads to another CA (the certificate and key match and are valid).
    let s2 = e.shared.clone();
    let (_, other_sub) = tokio::task::spawn_blocking(move || {
        create_active_ca_pair(&s2, "Other Root", "Other Issuing CA").unwrap()
    })
    .await
    .unwrap();
    let foreign = apply_and_export(&e, &other_sub).await;
    let c = apply_count(&e);
    let err = expect_failure_then_recovery(
        &e,
        &cert,
        "chain",
        export_fault(export_body(&foreign)),
        nothing,
    )
    .await;
    assert!(err.to_string().contains("chain"), "{err}");
    adopted("chain", c).await;

    // API errors and timeouts on the export.
    let c = apply_count(&e);
    let shared = e.shared.clone();
    expect_failure_then_recovery(
        &e,
        &cert,
        "api",
        async || {
            shared.add_fault(FaultRule::error(
                "pca.export_certificate",
                500,
                "PCA.00000001",
            ))
        },
        nothing,
    )
    .await;
    adopted("500", c).await;
    let c = apply_count(&e);
    let shared = e.shared.clone();
    expect_failure_then_recovery(
        &e,
        &cert,
        "timeout",
        async || {
            shared.add_fault(FaultRule {
                timeout: true,
                ..FaultRule::new("pca.export_certificate")
            })
        },
        nothing,
    )
    .await;
    adopted("timeout", c).await;

    // A disabled CA: refused before anything is requested.
    let c = apply_count(&e);
    let client = e.client.clone();
    let client2 = e.client.clone();
    let sub = e.sub_id.clone();
    let sub2 = e.sub_id.clone();
    let err = expect_failure_then_recovery(
        &e,
        &cert,
        "ca_unavailable",
        async move || client.pca_disable_ca(&sub).await.unwrap(),
        async move || client2.pca_enable_ca(&sub2).await.unwrap(),
    )
    .await;
    assert!(err.to_string().contains("DISABLED"), "{err}");
    assert_eq!(apply_count(&e), c, "nothing requested from a disabled CA");
    assert!(!err.is_retryable());

    // Quota exhausted.
    let c = apply_count(&e);
    let shared = e.shared.clone();
    let shared2 = e.shared.clone();
    let err = expect_failure_then_recovery(
        &e,
        &cert,
        "quota",
        async move || {
            shared.with_state(|st| st.pca.certificate_quota = Some(st.pca.certs.len() as u64))
        },
        async move || shared2.with_state(|st| st.pca.certificate_quota = None),
    )
    .await;
    assert!(!err.is_retryable());
    assert_eq!(apply_count(&e), c + 1, "the refused request only");
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    assert!(
        journal.pending("api").unwrap().is_none(),
        "a refused issuance is abandoned"
    );

    // A 500 on the create itself: outcome unknown, reconciled at the next check (the gate
    // answered instead of the handler, so nothing was created and the next check issues).
    let shared = e.shared.clone();
    expect_failure_then_recovery(
        &e,
        &cert,
        "api",
        async move || {
            shared.add_fault(FaultRule::error(
                "pca.create_certificate",
                500,
                "PCA.00000001",
            ))
        },
        nothing,
    )
    .await;
    // Reconciliation did not mistake the 10-day certificates made above (same CA, same name,
    // same minute) for the lost 30-day one.
    let info = pki::parse_cert(&fs::read_to_string(paths(&e).cert).unwrap()).unwrap();
    assert_eq!(info.not_after - info.not_before, time::Duration::days(30));
}

#[tokio::test]
async fn read_only_output_directory_keeps_files_and_the_issued_certificate_is_adopted_later() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let before = snapshot(&e);
    let Some(guard) = Immutable::set(&e.out) else {
        eprintln!("skipped: chattr +i is not available here (needs root on ext4-like fs)");
        return;
    };
    let err = e.renewer.check(&cert, force()).await.unwrap_err();
    assert_eq!(err.kind(), "filesystem", "{err}");
    assert!(err.to_string().contains("web"), "{err}");
    assert!(
        err.to_string().contains(&e.out.display().to_string()),
        "{err}"
    );
    drop(guard);
    assert_eq!(snapshot(&e), before);
    assert_eq!(csr_count(&e), 2);
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(matches!(r.action, Action::Renewed { .. }));
    assert_eq!(csr_count(&e), 2, "the issued certificate was adopted");
    assert_ne!(snapshot(&e), before);
}

#[tokio::test]
async fn crash_after_issuance_resumes_with_the_issued_certificate() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");
    // The export fails after PCA issued: as if the agent died before installing.
    e.shared.add_fault(FaultRule::error(
        "pca.export_certificate",
        500,
        "PCA.00000001",
    ));
    let err = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "api");
    assert_eq!(csr_count(&e), 1);
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    let p = journal.pending("web").unwrap().unwrap();
    assert_eq!(p.phase, Phase::Issued);
    let issued = p.cloud_certificate_id.clone().unwrap();
    let kept_key = p.load_key().unwrap().unwrap();
    e.shared.clear_faults();

    // Restart: a new renewer resumes the journal.
    let restarted = renewer(&e.emu, &e.state);
    let results = restarted.resume(std::slice::from_ref(&cert)).await;
    assert_eq!(results.len(), 1);
    let r = results.into_iter().next().unwrap().unwrap();
    assert_eq!(cloud_id(&r), issued);
    assert_eq!(csr_count(&e), 1, "no second issuance");
    assert_eq!(fs::read_to_string(paths(&e).key).unwrap(), kept_key);
    assert!(journal.pending("web").unwrap().is_none());
    // Nothing left to resume.
    assert!(
        restarted
            .resume(std::slice::from_ref(&cert))
            .await
            .is_empty()
    );
}

fn csr_for(key: &pki::PrivateKey) -> String {
    let mut dn = pki::DistinguishedName::with_common_name(CN);
    dn.organization = Some("Renew Tests".into());
    pki::generate_csr(
        key,
        &dn,
        &[
            pki::SubjectAltName::Dns(CN.into()),
            pki::SubjectAltName::Ip("10.0.0.1".parse().unwrap()),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn lost_answer_is_reconciled_by_listing_and_adopted() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    // Another certificate with the same name but a different key, issued just before: it must
    // not be taken for ours.
    let decoy_key = pki::generate_key(pki::KeyAlgorithm::Ec256).unwrap();
    e.client
        .issue_private_certificate_by_csr(&CsrCertificateRequest::new(
            &e.sub_id,
            csr_for(&decoy_key),
            Validity::days(30),
        ))
        .await
        .unwrap();
    // The request went out (journaled with its key), PCA issued, the answer was lost.
    let key = pki::generate_key(pki::KeyAlgorithm::Ec256).unwrap();
    journal
        .begin_issue(
            "web",
            IssueMode::Csr,
            Some(&key.to_pem()),
            None,
            e.shared.now(),
        )
        .unwrap();
    let lost = e
        .client
        .issue_private_certificate_by_csr(&CsrCertificateRequest::new(
            &e.sub_id,
            csr_for(&key),
            Validity::days(30),
        ))
        .await
        .unwrap();
    assert_eq!(csr_count(&e), 2);

    let restarted = renewer(&e.emu, &e.state);
    let mut results = restarted.resume(std::slice::from_ref(&cert)).await;
    let r = results.pop().unwrap().unwrap();
    assert_eq!(cloud_id(&r), lost);
    assert!(
        r.warnings.iter().any(|w| w.contains("adopted")),
        "{:?}",
        r.warnings
    );
    assert_eq!(csr_count(&e), 2, "adopted, not issued again");
    let disk_key = pki::PrivateKey::from_pem(&fs::read_to_string(paths(&e).key).unwrap()).unwrap();
    assert_eq!(disk_key.public_key_der(), key.public_key_der());
    assert!(journal.pending("web").unwrap().is_none());
}

#[tokio::test]
async fn request_that_created_nothing_is_sent_again_with_the_same_key() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");
    // A timeout on the create: the gate answers nothing, the handler never runs.
    e.shared.add_fault(FaultRule {
        timeout: true,
        times: Some(1),
        ..FaultRule::new("pca.create_certificate_by_csr")
    });
    let err = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("certificate web"), "{err}");
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    let p = journal.pending("web").unwrap().unwrap();
    assert_eq!(p.phase, Phase::Requested);
    let key = pki::PrivateKey::from_pem(&p.load_key().unwrap().unwrap()).unwrap();
    assert!(!paths(&e).cert.exists());

    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(matches!(r.action, Action::Renewed { .. }));
    let issued = e.shared.with_state(|st| st.pca.certs.len());
    assert_eq!(issued, 1, "one certificate in PCA");
    let disk_key = pki::PrivateKey::from_pem(&fs::read_to_string(paths(&e).key).unwrap()).unwrap();
    assert_eq!(
        disk_key.public_key_der(),
        key.public_key_der(),
        "the journaled key was reused"
    );
}

#[tokio::test]
async fn dry_run_names_the_calls_and_files_and_changes_nothing() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");
    let dry = CheckOptions {
        force: false,
        dry_run: true,
    };
    let r = e.renewer.check(&cert, dry).await.unwrap();
    let Action::WouldDo(steps) = &r.action else {
        panic!("{:?}", r.action)
    };
    let text: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    let all = text.join("\n");
    assert!(
        all.contains(&format!(
            "POST /v1/private-certificates/csr issuer_id={}",
            e.sub_id
        )) && all.contains(&format!("cn={CN}"))
            && all.contains("validity=30 DAY"),
        "{all}"
    );
    let p = paths(&e);
    assert!(
        all.contains(&format!("write {} (0600)", p.key.display())),
        "{all}"
    );
    assert!(
        all.contains(&format!("write {} (0644)", p.cert.display())),
        "{all}"
    );
    assert_eq!(csr_count(&e), 0);
    assert!(
        fs::read_dir(&e.out).unwrap().next().is_none(),
        "nothing written"
    );
    assert!(
        Journal::open(StateDir::new(&e.state).journal_dir())
            .unwrap()
            .all_pending()
            .unwrap()
            .is_empty()
    );

    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let before = snapshot(&e);
    let r = e
        .renewer
        .check(
            &cert,
            CheckOptions {
                force: true,
                dry_run: true,
            },
        )
        .await
        .unwrap();
    let Action::WouldDo(steps) = &r.action else {
        panic!("{:?}", r.action)
    };
    assert!(
        steps
            .iter()
            .any(|s| s.0.contains("revoke reason=SUPERSEDED")),
        "{steps:?}"
    );
    assert_eq!(csr_count(&e), 1);
    assert_eq!(snapshot(&e), before);
    assert!(r.installed.is_some());

    // Apply mode names its own call.
    let apply = pca_cert(&e, "api", "apply");
    let r = e.renewer.check(&apply, dry).await.unwrap();
    let Action::WouldDo(steps) = &r.action else {
        panic!("{:?}", r.action)
    };
    assert!(
        steps.iter().any(
            |s| s.0.starts_with("POST /v1/private-certificates issuer_id=")
                && s.0.contains("key_algorithm=EC256")
        ),
        "{steps:?}"
    );
    assert_eq!(apply_count(&e), 0);
}

#[tokio::test]
async fn concurrent_forced_checks_issue_once() {
    let e = env().await;
    let cert = pca_cert(&e, "web", "csr");
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        e.renewer.check(&cert, force()),
        e.renewer.check(&cert, force())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(csr_count(&e), 2, "one issuance for two forced checks");
    let renewed = [&a, &b]
        .iter()
        .filter(|r| matches!(r.action, Action::Renewed { .. }))
        .count();
    assert_eq!(renewed, 1, "{:?} / {:?}", a.action, b.action);
}

#[tokio::test]
async fn scm_bad_exports_are_rejected_and_files_kept() {
    let e = env().await;
    let ca = ScmCa::new(e.shared.now());
    let first = ca
        .import(&e, "shop-cert", "shop.example.com", -1, 100)
        .await;
    let cert = scm_cert(&e, "shop", "name = \"shop-cert\"");
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    let before = snapshot(&e);
    let newer = ca.import(&e, "shop-cert", "shop.example.com", 0, 200).await;
    assert_ne!(first, newer);

    // A certificate whose chain is another CA.
    let now = e.shared.now();
    let (leaf, key) = ccm_agent::emulator::scm::demo_leaf(
        &ca.ca,
        "shop.example.com",
        &[],
        now,
        now + time::Duration::days(50),
    )
    .unwrap();
    let stranger = ccm_agent::emulator::scm::demo_ca(now).unwrap();
    let body = serde_json::json!({
        "entire_certificate": format!("{leaf}{}", stranger.0),
        "certificate": leaf,
        "certificate_chain": stranger.0,
        "private_key": key,
    })
    .to_string();
    let cases: Vec<(&str, FaultRule)> = vec![
        (
            "chain",
            FaultRule {
                replace_body: Some(body),
                ..FaultRule::new("scm.export_certificate")
            },
        ),
        (
            "malformed",
            FaultRule {
                replace_body: Some("[1, 2".into()),
                ..FaultRule::new("scm.export_certificate")
            },
        ),
        (
            "api",
            FaultRule::error("scm.export_certificate", 500, "SCM.0500"),
        ),
        (
            "api",
            FaultRule::error("scm.list_certificates", 500, "SCM.0500"),
        ),
    ];
    for (kind, rule) in cases {
        e.shared.add_fault(rule);
        let err = e
            .renewer
            .check(&cert, CheckOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains("certificate shop"), "{err}");
        assert_eq!(snapshot(&e), before, "{kind}");
        e.shared.clear_faults();
    }
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::Reexported { cloud_id: newer });
}

/// `pca_cert` plus a PKCS#12 output with the given password settings.
fn pca_cert_with_pkcs12(e: &Env, name: &str, password_line: &str) -> ManagedCertificate {
    parse_config(&format!(
        r#"
[[certificates]]
name = "{name}"
renew_at_fraction = 0.5
jitter = 0
[certificates.pca]
ca_id = "{ca}"
mode = "csr"
key_algorithm = "EC256"
validity = {{ type = "DAY", value = 30 }}
subject = {{ common_name = "{CN}" }}
sans = ["dns:{CN}"]
[certificates.output]
dir = "{out}"
key_mode = "0640"
pkcs12 = "bundle.p12"
{password_line}
"#,
        ca = e.sub_id,
        out = e.out.display()
    ))
}

fn openssl_pkcs12(file: &Path, password: &str) -> std::process::Output {
    Command::new("openssl")
        .args(["pkcs12", "-nodes", "-in"])
        .arg(file)
        .arg("-passin")
        .arg(format!("pass:{password}"))
        .output()
        .expect("the openssl command line is needed for this test")
}

#[tokio::test]
async fn pca_certificate_with_pkcs12_output_gets_the_file() {
    let e = env().await;
    let pw_file = e.out.parent().unwrap().join("p12-password");
    fs::write(&pw_file, "s3cret p12\n").unwrap();
    let cert = pca_cert_with_pkcs12(
        &e,
        "web",
        &format!("pkcs12_password_file = \"{}\"", pw_file.display()),
    );
    let p12 = e.out.join("bundle.p12");

    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    cloud_id(&r);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(mode(&p12), 0o640, "the key's mode");

    // openssl opens it with the password from the file (trailing newline trimmed) and finds
    // the installed leaf, its chain and the leaf's key.
    let out = openssl_pkcs12(&p12, "s3cret p12");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let certs = pki::parse_pem_chain(&text).unwrap();
    let p = paths(&e);
    let leaf = pki::parse_cert(&fs::read_to_string(&p.cert).unwrap()).unwrap();
    let chain = pki::parse_pem_chain(&fs::read_to_string(&p.chain).unwrap()).unwrap();
    assert_eq!(certs[0].der, leaf.der);
    assert_eq!(
        certs[1..].iter().map(|c| &c.der).collect::<Vec<_>>(),
        chain.iter().map(|c| &c.der).collect::<Vec<_>>()
    );
    let key = pki::PrivateKey::from_pem(&text).unwrap();
    assert!(pki::key_matches_cert(&key, &leaf));
    assert!(!openssl_pkcs12(&p12, "wrong").status.success());

    // A second check finds everything in place: nothing issued, the file untouched.
    let before = fs::read(&p12).unwrap();
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(r.action, Action::None);
    assert!(!r.install_changed);
    assert_eq!(fs::read(&p12).unwrap(), before);
    assert_eq!(csr_count(&e), 1);

    // The file deleted behind the agent's back: re-installed without a new issuance.
    fs::remove_file(&p12).unwrap();
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(matches!(r.action, Action::Reinstalled { .. }), "{r:?}");
    assert!(openssl_pkcs12(&p12, "s3cret p12").status.success());
    assert_eq!(csr_count(&e), 1);

    // A rotated password: the next check rewrites the file for it, again without issuing.
    fs::write(&pw_file, "rotated").unwrap();
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(matches!(r.action, Action::Reinstalled { .. }), "{r:?}");
    assert!(openssl_pkcs12(&p12, "rotated").status.success());
    assert!(!openssl_pkcs12(&p12, "s3cret p12").status.success());
    assert_eq!(csr_count(&e), 1);
}

#[tokio::test]
async fn pkcs12_without_a_password_uses_the_empty_one() {
    let e = env().await;
    let cert = pca_cert_with_pkcs12(&e, "web", "");
    e.renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(
        openssl_pkcs12(&e.out.join("bundle.p12"), "")
            .status
            .success()
    );
}

#[tokio::test]
async fn an_unset_pkcs12_password_is_a_config_error_before_anything_is_issued() {
    let e = env().await;
    let var = "CCM_AGENT_TEST_P12_PASSWORD_NEVER_SET";
    assert!(std::env::var_os(var).is_none());
    let cert = pca_cert_with_pkcs12(&e, "web", &format!("pkcs12_password_env = \"{var}\""));

    let err = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "config", "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("certificate web")
            && msg.contains("pkcs12_password_env")
            && msg.contains(&format!("${var}")),
        "{msg}"
    );
    assert_eq!(csr_count(&e), 0, "nothing issued");
    assert!(snapshot(&e).iter().all(|(_, b)| b.is_none()));
    assert!(!e.out.join("bundle.p12").exists());

    // A dry run reports it as a warning and still plans the PKCS#12 write.
    let r = e
        .renewer
        .check(
            &cert,
            CheckOptions {
                force: false,
                dry_run: true,
            },
        )
        .await
        .unwrap();
    assert!(
        r.warnings.iter().any(|w| w.contains("pkcs12_password_env")),
        "{:?}",
        r.warnings
    );
    let Action::WouldDo(steps) = &r.action else {
        panic!("{:?}", r.action)
    };
    let all: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    let want = format!("write {} (0640)", e.out.join("bundle.p12").display());
    assert!(all.iter().any(|s| s.starts_with(&want)), "{all:?}");
}

/// Three PCA certificates, each in its own directory.
fn pca_trio(e: &Env) -> Vec<ManagedCertificate> {
    ["one", "two", "three"]
        .iter()
        .map(|n| {
            let text = format!(
                r#"
[[certificates]]
name = "{n}"
renew_at_fraction = 0.5
jitter = 0
[certificates.pca]
ca_id = "{ca}"
key_algorithm = "EC256"
validity = {{ type = "DAY", value = 30 }}
subject = {{ common_name = "{n}.internal" }}
[certificates.output]
dir = "{out}/{n}"
"#,
                ca = e.sub_id,
                out = e.out.display()
            );
            parse_config(&text)
        })
        .collect()
}

#[tokio::test]
async fn one_revocation_listing_serves_a_pass_and_still_catches_a_revoked_certificate() {
    let e = env().await;
    let certs = pca_trio(&e);
    for c in &certs {
        let r = e.renewer.check(c, CheckOptions::default()).await.unwrap();
        assert!(matches!(r.action, Action::Renewed { .. }), "{:?}", r.action);
    }
    let records = ccm_agent::state::Records::new(&e.state);
    let two_id = records.load("two").unwrap().cloud_id.unwrap();
    e.client
        .revoke_private_certificate(&two_id, None)
        .await
        .unwrap();

    // A pass: one listing, then no lookup of its own by any check; the revoked one is renewed.
    let shows = e.shared.count_requests("pca.show_certificate");
    let lists = e.shared.count_requests("pca.list_certificate");
    let issued = csr_count(&e);
    let refs: Vec<&ManagedCertificate> = certs.iter().collect();
    assert!(e.renewer.pca_revocations(&refs).await.unwrap());
    assert_eq!(e.shared.count_requests("pca.list_certificate"), lists + 1);
    for c in &certs {
        let r = e.renewer.check(c, CheckOptions::default()).await.unwrap();
        if c.name == "two" {
            assert!(matches!(r.action, Action::Renewed { .. }), "{:?}", r.action);
        } else {
            assert_eq!(r.action, Action::None, "{}", c.name);
        }
    }
    assert_eq!(
        csr_count(&e),
        issued + 1,
        "only the revoked one was reissued"
    );
    assert_eq!(
        e.shared.count_requests("pca.show_certificate"),
        shows,
        "the checks used the pass"
    );
    assert_ne!(records.load("two").unwrap().cloud_id.unwrap(), two_id);

    // A pass serves each certificate once: the next check looks its certificate up itself.
    e.renewer
        .check(&certs[0], CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(e.shared.count_requests("pca.show_certificate"), shows + 1);

    // Revoked after the listing: a stale pass does not hide it once its time is up.
    assert!(e.renewer.pca_revocations(&refs).await.unwrap());
    let one_id = records.load("one").unwrap().cloud_id.unwrap();
    e.client
        .revoke_private_certificate(&one_id, None)
        .await
        .unwrap();
    e.shared.advance_clock(time::Duration::minutes(11));
    let r = e
        .renewer
        .check(&certs[0], CheckOptions::default())
        .await
        .unwrap();
    assert!(matches!(r.action, Action::Renewed { .. }), "{:?}", r.action);

    // One PCA certificate: no pass (a lookup is cheaper than a listing).
    let lists = e.shared.count_requests("pca.list_certificate");
    assert!(!e.renewer.pca_revocations(&refs[..1]).await.unwrap());
    assert_eq!(e.shared.count_requests("pca.list_certificate"), lists);
}

/// More SCM certificates than offset paging reaches (150): the pass lists per configured name,
/// the listings run concurrently, and each check finds its own candidates in the pass.
#[tokio::test]
async fn a_large_scm_account_is_listed_per_name_and_serves_every_check() {
    let e = env().await;
    let now = e.shared.now();
    let ca = ccm_agent::emulator::scm::demo_ca(now).unwrap();
    let shared = e.shared.clone();
    let ca2 = ca.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..160 {
            let cn = format!("bulk{i}.example.com");
            let (cert, key) = ccm_agent::emulator::scm::demo_leaf(
                &ca2,
                &cn,
                &[],
                now - time::Duration::days(1),
                now + time::Duration::days(200),
            )
            .unwrap();
            ccm_agent::emulator::scm::import_certificate(
                &shared,
                &format!("bulk-{i}"),
                &cert,
                Some(&ca2.0),
                &key,
            )
            .unwrap();
        }
    })
    .await
    .unwrap();
    let certs: Vec<ManagedCertificate> = [3, 77, 150, 159]
        .iter()
        .map(|i| {
            let text = format!(
                "[[certificates]]\nname = \"s{i}\"\n[certificates.scm]\nname = \"bulk-{i}\"\n\
                 [certificates.output]\ndir = \"{}/s{i}\"\n",
                e.out.display()
            );
            parse_config(&text)
        })
        .collect();
    let refs: Vec<&ManagedCertificate> = certs.iter().collect();
    let lists = e.shared.count_requests("scm.list_certificates");
    let full = ccm_agent::config::DEFAULT_FULL_CHECK_EVERY;
    let pass = e.renewer.scm_candidates(&refs, 4, full).await.unwrap();
    let listed = e.shared.count_requests("scm.list_certificates") - lists;
    // The change-detection page, three pages of the whole account (offset 0, 50, 100), then one
    // listing per name.
    assert_eq!(listed, 1 + 3 + certs.len(), "{listed} listings");
    for i in [3, 77, 150, 159] {
        let hits = pass.matching(&ccm_agent::config::ScmSelector::Name(format!("bulk-{i}")));
        assert_eq!(hits.len(), 1, "bulk-{i}");
        let by_domain = pass.matching(&ccm_agent::config::ScmSelector::Domain(format!(
            "BULK{i}.example.com"
        )));
        assert_eq!(by_domain.len(), 1, "domain of bulk-{i}, any case");
        assert_eq!(by_domain[0].id, hits[0].id);
    }
    for c in &certs {
        let r = e.renewer.check(c, CheckOptions::default()).await.unwrap();
        assert!(
            matches!(r.action, Action::Reexported { .. }),
            "{:?}",
            r.action
        );
    }
    assert_eq!(
        e.shared.count_requests("scm.list_certificates") - lists,
        listed,
        "the checks used the pass"
    );
}

/// Between full listings a pass reads one page of recent changes: with nothing new, one request
/// however large the account; a certificate imported since is found in that page and
/// re-exported; after `full_check_every` the pass lists in full again.
#[tokio::test]
async fn later_passes_read_only_what_changed_in_scm() {
    let e = env().await;
    let now = e.shared.now();
    let ca = ccm_agent::emulator::scm::demo_ca(now).unwrap();
    let shared = e.shared.clone();
    let ca2 = ca.clone();
    let leaf = move |shared: &ccm_agent::emulator::Shared, i: usize, days: i64| {
        let now = shared.now();
        let (cert, key) = ccm_agent::emulator::scm::demo_leaf(
            &ca2,
            &format!("delta{i}.example.com"),
            &[],
            now - time::Duration::days(1),
            now + time::Duration::days(days),
        )
        .unwrap();
        ccm_agent::emulator::scm::import_certificate(
            shared,
            &format!("delta-{i}"),
            &cert,
            Some(&ca2.0),
            &key,
        )
        .unwrap()
    };
    let leaf2 = leaf.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..160 {
            leaf2(&shared, i, 200);
        }
    })
    .await
    .unwrap();
    let certs: Vec<ManagedCertificate> = [5, 120]
        .iter()
        .map(|i| {
            parse_config(&format!(
                "[[certificates]]\nname = \"d{i}\"\n[certificates.scm]\nname = \"delta-{i}\"\n\
                 [certificates.output]\ndir = \"{}/d{i}\"\n",
                e.out.display()
            ))
        })
        .collect();
    let refs: Vec<&ManagedCertificate> = certs.iter().collect();
    let full = std::time::Duration::from_secs(3600);
    let lists = || e.shared.count_requests("scm.list_certificates");
    let pass = |expected_requests: usize, what: &'static str| {
        let refs = refs.clone();
        let e = &e;
        async move {
            let before = lists();
            let data = e.renewer.scm_candidates(&refs, 4, full).await.unwrap();
            let mut reports = Vec::new();
            for c in &refs {
                reports.push(e.renewer.check(c, CheckOptions::default()).await.unwrap());
            }
            assert_eq!(lists() - before, expected_requests, "{what}");
            (data, reports)
        }
    };
    // Startup: the change page, three pages of the account, one listing per name.
    pass(1 + 3 + 2, "the full listing").await;
    let installed = std::fs::read(e.out.join("d5/cert.pem")).unwrap();

    // Nothing changed: one request.
    e.shared.advance_clock(time::Duration::minutes(1));
    pass(1, "a pass with nothing new").await;
    assert_eq!(std::fs::read(e.out.join("d5/cert.pem")).unwrap(), installed);

    // A newer delta-5 imported, and an unrelated certificate: one request; delta-5 re-exported.
    e.shared.advance_clock(time::Duration::minutes(1));
    let shared = e.shared.clone();
    let leaf3 = leaf.clone();
    let newer = tokio::task::spawn_blocking(move || {
        leaf3(&shared, 999, 300);
        leaf3(&shared, 5, 400)
    })
    .await
    .unwrap();
    let (data, reports) = pass(1, "a pass after two imports").await;
    let hits = data.matching(&ccm_agent::config::ScmSelector::Name("delta-5".into()));
    assert!(hits.iter().any(|c| c.id == newer), "{hits:?}");
    assert_eq!(
        reports[0].action,
        Action::Reexported {
            cloud_id: newer.clone()
        }
    );
    assert!(!reports[1].install_changed, "d120 did not change");
    assert_ne!(std::fs::read(e.out.join("d5/cert.pem")).unwrap(), installed);

    // More changes than one page shows: a full listing.
    e.shared.advance_clock(time::Duration::minutes(1));
    let shared = e.shared.clone();
    let leaf4 = leaf.clone();
    tokio::task::spawn_blocking(move || {
        for i in 1000..1060 {
            leaf4(&shared, i, 200);
        }
    })
    .await
    .unwrap();
    pass(1 + 1 + 3 + 2, "a pass after 60 imports lists in full").await;

    // After full_check_every: a full listing again, then one request.
    e.shared.advance_clock(time::Duration::hours(2));
    pass(1 + 3 + 2, "the daily full listing").await;
    pass(1, "then one request again").await;
}

/// A certificate that is not valid yet by this host's clock (the host's clock behind the CA's)
/// is reported: clients would reject it. Within a few minutes of skew it is not.
#[tokio::test]
async fn a_certificate_not_valid_yet_by_this_hosts_clock_is_a_warning() {
    let e = env().await;
    let cert = pca_cert(&e, "skew", "csr");
    let r = e
        .renewer
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(r.install_changed);
    assert!(
        !r.warnings.iter().any(|w| w.contains("not valid before")),
        "{:?}",
        r.warnings
    );
    let behind = |by: time::Duration| renewer_behind(&e.emu, &e.state, by);
    let r = behind(time::Duration::minutes(2))
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(
        !r.warnings.iter().any(|w| w.contains("not valid before")),
        "{:?}",
        r.warnings
    );
    let r = behind(time::Duration::hours(2))
        .check(&cert, CheckOptions::default())
        .await
        .unwrap();
    assert!(!r.install_changed, "nothing is renewed because of it");
    let w: Vec<_> = r
        .warnings
        .iter()
        .filter(|w| w.contains("not valid before"))
        .collect();
    assert_eq!(w.len(), 1, "{:?}", r.warnings);
    assert!(w[0].contains("check this host's clock"), "{}", w[0]);
    let nb = r.installed.as_ref().unwrap().not_before;
    assert!(
        w[0].contains(
            &nb.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        ),
        "{}",
        w[0]
    );
}

/// The certificate `pca_cert` configures, with one more SAN.
fn pca_cert_with_extra_san(e: &Env, name: &str) -> ManagedCertificate {
    pca_cert_with_sans(
        e,
        name,
        "csr",
        &format!(r#""dns:{CN}", "ip:10.0.0.1", "dns:extra.internal""#),
    )
}

/// Issues `cert` with its export failing, so the issued certificate stays pending in the journal;
/// returns its id.
async fn leave_pending(e: &Env, cert: &ManagedCertificate) -> String {
    e.shared.add_fault(FaultRule::error(
        "pca.export_certificate",
        500,
        "PCA.00000001",
    ));
    let err = e.renewer.check(cert, force()).await.unwrap_err();
    assert_eq!(err.kind(), "api");
    e.shared.clear_faults();
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    let p = journal.pending(&cert.name).unwrap().unwrap();
    assert_eq!(p.phase, Phase::Issued);
    p.cloud_certificate_id.unwrap()
}

/// After the pending certificate was given up: a new one covers the new name, the old one is
/// revoked, the journal is clear, and a second check does nothing.
async fn assert_abandoned_and_reissued(e: &Env, cert: &ManagedCertificate, pending_id: &str) {
    let r = e
        .renewer
        .check(cert, CheckOptions::default())
        .await
        .unwrap();
    let new_id = cloud_id(&r);
    assert_ne!(new_id, pending_id);
    assert!(
        r.warnings.iter().any(|w| w.contains("abandoned")
            && w.contains(pending_id)
            && w.contains("extra.internal")),
        "{:?}",
        r.warnings
    );
    let pem = fs::read_to_string(paths(e).cert).unwrap();
    let info = pki::parse_cert(&pem).unwrap();
    assert!(
        info.sans
            .iter()
            .any(|n| *n == pki::SubjectAltName::Dns("extra.internal".into())),
        "{:?}",
        info.sans
    );
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    assert!(journal.pending(&cert.name).unwrap().is_none());
    assert_eq!(
        e.client
            .show_private_certificate(pending_id)
            .await
            .unwrap()
            .status,
        CertificateStatus::Revoked,
        "revoke_superseded is on: the abandoned certificate is revoked"
    );
    let again = e
        .renewer
        .check(cert, CheckOptions::default())
        .await
        .unwrap();
    assert_eq!(again.action, Action::None);
    assert_eq!(
        e.renewer.check(cert, force()).await.map(|_| ()).ok(),
        Some(())
    );
}

#[tokio::test]
async fn a_pending_certificate_that_no_longer_fits_the_configuration_is_abandoned() {
    let e = env().await;
    let pending_id = leave_pending(&e, &pca_cert(&e, "web", "csr")).await;
    // The configuration gains a SAN while the issued certificate is still pending.
    let cert = pca_cert_with_extra_san(&e, "web");
    // A dry run says what it would do and changes nothing.
    let dry = e
        .renewer
        .check(
            &cert,
            CheckOptions {
                force: false,
                dry_run: true,
            },
        )
        .await
        .unwrap();
    assert!(
        dry.warnings.iter().any(|w| w.contains("would abandon")),
        "{:?}",
        dry.warnings
    );
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    assert!(journal.pending("web").unwrap().is_some());
    let csr_before = csr_count(&e);
    assert_abandoned_and_reissued(&e, &cert, &pending_id).await;
    assert!(csr_count(&e) > csr_before);
}

#[tokio::test]
async fn a_pending_entry_from_an_older_version_that_no_longer_fits_is_abandoned() {
    let e = env().await;
    let pending_id = leave_pending(&e, &pca_cert(&e, "web", "csr")).await;
    // An entry written before the journal recorded what was requested.
    let journal = Journal::open(StateDir::new(&e.state).journal_dir()).unwrap();
    let entry = journal.dir().join("web.json");
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&entry).unwrap()).unwrap();
    assert!(json.as_object_mut().unwrap().remove("request").is_some());
    fs::write(&entry, serde_json::to_vec(&json).unwrap()).unwrap();
    assert!(journal.pending("web").unwrap().unwrap().request.is_none());
    let cert = pca_cert_with_extra_san(&e, "web");
    assert_abandoned_and_reissued(&e, &cert, &pending_id).await;
}
