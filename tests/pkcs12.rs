//! The PKCS#12 output, checked with the `openssl` command line (OpenSSL 3): it opens with the
//! password and only with it, holds the leaf, the chain and the leaf's key, uses modern
//! algorithms, gets the key's mode, and a re-install of the same content leaves it alone.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ccm_agent::cloud::Secret;
use ccm_agent::install::{
    self, Candidate, Expectations, FileSpec, InstalledState, OutputPaths, Pkcs12Output, Role,
    VerifiedBundle,
};
use ccm_agent::pki::{
    self, CertificateSpec, DistinguishedName, KeyAlgorithm, PrivateKey, PublicKeySource,
    SubjectAltName,
};
use ccm_agent::state::StateDir;
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);
const PW: &str = "correct horse ☃ battery";

struct Ca {
    cert: String,
    key: PrivateKey,
}

struct Pki {
    root: Ca,
    inter: Ca,
}

fn ca(cn: &str, issuer: Option<&Ca>) -> Ca {
    let key = pki::generate_key(KeyAlgorithm::Ec256).unwrap();
    let spec = CertificateSpec::new_ca(
        DistinguishedName::with_common_name(cn),
        datetime!(2026-01-01 00:00 UTC),
        datetime!(2036-01-01 00:00 UTC),
        None,
    );
    let cert = match issuer {
        None => pki::self_signed(&spec, &key).unwrap(),
        Some(i) => pki::issue(&spec, &PublicKeySource::Key(&key), &i.cert, &i.key).unwrap(),
    };
    Ca { cert, key }
}

fn fixture() -> &'static Pki {
    static P: OnceLock<Pki> = OnceLock::new();
    P.get_or_init(|| {
        let root = ca("P12 Test Root", None);
        let inter = ca("P12 Test Issuing CA", Some(&root));
        Pki { root, inter }
    })
}

/// A verified bundle for a fresh leaf with a key of `alg`.
fn bundle(alg: KeyAlgorithm) -> VerifiedBundle {
    let p = fixture();
    let key = pki::generate_key(alg).unwrap();
    let spec = CertificateSpec::new_leaf(
        DistinguishedName::with_common_name("app.example.com"),
        datetime!(2026-05-01 00:00 UTC),
        datetime!(2026-08-01 00:00 UTC),
        vec![SubjectAltName::Dns("app.example.com".into())],
    );
    let cert = pki::issue(
        &spec,
        &PublicKeySource::Key(&key),
        &p.inter.cert,
        &p.inter.key,
    )
    .unwrap();
    install::verify_candidate(
        &Candidate {
            name: "app".into(),
            cert_pem: cert,
            chain_pem: p.inter.cert.clone(),
            key_pem: key.to_pem(),
        },
        &Expectations {
            names: vec!["app.example.com".into()],
            trust: Some(p.root.cert.clone()),
            now: NOW,
        },
    )
    .unwrap()
}

struct Env {
    _tmp: tempfile::TempDir,
    paths: OutputPaths,
    state: StateDir,
}

fn env(password: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = OutputPaths::certbot_layout(tmp.path().join("live/app"));
    paths.pkcs12 = Some(Pkcs12Output {
        path: tmp.path().join("live/app/app.p12"),
        password: Secret::new(password),
    });
    let state = StateDir::new(tmp.path().join("state"));
    Env {
        _tmp: tmp,
        paths,
        state,
    }
}

impl Env {
    fn p12(&self) -> &Path {
        &self.paths.pkcs12.as_ref().unwrap().path
    }
    fn set_password(&mut self, pw: &str) {
        self.paths.pkcs12.as_mut().unwrap().password = Secret::new(pw);
    }
}

fn openssl(args: &[&str], file: &Path, password: &str) -> Output {
    Command::new("openssl")
        .arg("pkcs12")
        .args(args)
        .arg("-in")
        .arg(file)
        .arg("-passin")
        .arg(format!("pass:{password}"))
        .output()
        .expect("the openssl command line is needed for these tests")
}

/// `openssl pkcs12 -nodes` output: certificates in file order and the private key.
fn open_with_openssl(file: &Path, password: &str) -> (Vec<pki::CertInfo>, PrivateKey) {
    let out = openssl(&["-nodes"], file, password);
    assert!(
        out.status.success(),
        "openssl pkcs12 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let certs = pki::parse_pem_chain(&text).unwrap();
    let key = PrivateKey::from_pem(&text).unwrap();
    (certs, key)
}

fn assert_holds(file: &Path, password: &str, b: &VerifiedBundle) {
    let (certs, key) = open_with_openssl(file, password);
    let ders: Vec<_> = certs.iter().map(|c| c.der.clone()).collect();
    let chain = pki::parse_pem_chain(b.chain_pem()).unwrap();
    assert_eq!(
        ders,
        vec![b.leaf().der.clone(), chain[0].der.clone()],
        "leaf then chain"
    );
    assert!(pki::key_matches_cert(&key, b.leaf()), "key is the leaf's");
    assert_eq!(
        key.to_pkcs8_der(),
        PrivateKey::from_pem(b.key_pem()).unwrap().to_pkcs8_der()
    );
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn ino_mtime(path: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn pkcs12_holds_leaf_chain_and_key_and_needs_the_password() {
    let e = env(PW);
    let b = bundle(KeyAlgorithm::Ec256);
    let out = install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert!(out.changed);
    assert_eq!(out.written.len(), 5);
    assert!(out.written.contains(&e.p12().to_path_buf()));

    assert_holds(e.p12(), PW, &b);
    assert_eq!(mode(e.p12()), 0o600, "the key's mode");

    // Modern algorithms, accepted by OpenSSL 3's strict -info parser.
    let info = openssl(&["-info", "-noout"], e.p12(), PW);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&info.stdout),
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(info.status.success(), "{text}");
    assert!(text.contains("MAC: sha256"), "{text}");
    assert!(
        text.contains("PBES2, PBKDF2, AES-256-CBC") && text.contains("hmacWithSHA256"),
        "{text}"
    );
    assert!(!text.contains("RC2") && !text.contains("3DES"), "{text}");

    // Any other password is refused (MAC verification fails).
    for wrong in ["wrong", "", "correct horse"] {
        let bad = openssl(&["-nodes"], e.p12(), wrong);
        assert!(!bad.status.success(), "opened with {wrong:?}");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("Mac verify error"),
            "{}",
            String::from_utf8_lossy(&bad.stderr)
        );
    }

    // The health check opens it too, and a copy is kept as the last good version.
    match install::read_installed(&e.paths) {
        InstalledState::Present(c) => assert_eq!(c.fingerprint_sha256, b.fingerprint_sha256()),
        other => panic!("{other:?}"),
    }
    let good = install::last_good(&e.state, "app").unwrap().unwrap();
    let kept = good.file(Role::Pkcs12).unwrap();
    assert_eq!(kept.contents(), fs::read(e.p12()).unwrap().as_slice());
    assert_eq!(kept.attrs.mode, 0o600);
}

#[test]
fn reinstall_of_the_same_content_leaves_the_pkcs12_file_alone() {
    let e = env(PW);
    let b = bundle(KeyAlgorithm::Ec256);
    install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
    let bytes = fs::read(e.p12()).unwrap();
    let before = ino_mtime(e.p12());
    std::thread::sleep(std::time::Duration::from_millis(20));

    for _ in 0..2 {
        let out = install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
        assert!(!out.changed, "{out:?}");
        assert!(out.written.is_empty());
        assert_eq!(ino_mtime(e.p12()), before);
        assert_eq!(fs::read(e.p12()).unwrap(), bytes);
    }
    // No previous version was made by the no-op installs.
    assert!(install::previous(&e.state, "app").unwrap().is_none());

    // A wrong mode alone is corrected in place.
    fs::set_permissions(e.p12(), fs::Permissions::from_mode(0o644)).unwrap();
    let out = install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert!(!out.changed);
    assert_eq!(out.attrs_fixed, vec![e.p12().to_path_buf()]);
    assert_eq!(mode(e.p12()), 0o600);
    assert_eq!(ino_mtime(e.p12()).0, before.0);
}

#[test]
fn a_custom_key_mode_applies_to_the_pkcs12_file() {
    let e = env(PW);
    let b = bundle(KeyAlgorithm::Ec256);
    let spec = FileSpec {
        key_mode: 0o640,
        cert_mode: 0o644,
        ..FileSpec::default()
    };
    install::install(&b, &e.paths, &spec, &e.state).unwrap();
    assert_eq!(mode(e.p12()), 0o640);
    assert_eq!(mode(&e.paths.key), 0o640);
    assert_eq!(mode(&e.paths.cert), 0o644);
}

#[test]
fn a_new_certificate_or_password_rewrites_it_and_rollback_restores_the_old_one() {
    let mut e = env(PW);
    let old = bundle(KeyAlgorithm::Ec256);
    install::install(&old, &e.paths, &FileSpec::default(), &e.state).unwrap();
    let old_bytes = fs::read(e.p12()).unwrap();

    let new = bundle(KeyAlgorithm::Ec256);
    let out = install::install(&new, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert!(out.changed);
    assert!(out.written.contains(&e.p12().to_path_buf()));
    assert_holds(e.p12(), PW, &new);

    // Rollback puts the old set back, PKCS#12 included, byte for byte.
    install::restore_previous(&e.state, "app").unwrap();
    assert_eq!(fs::read(e.p12()).unwrap(), old_bytes);
    assert_holds(e.p12(), PW, &old);

    // A changed password: same content, but the file must open with the new password.
    e.set_password("rotated");
    assert!(
        matches!(
            install::read_installed(&e.paths),
            InstalledState::Unparsable { ref path, .. } if path == e.p12()
        ),
        "the health check notices the file no longer opens"
    );
    let out = install::install(&old, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert_eq!(
        out.written,
        vec![e.p12().to_path_buf()],
        "only the PKCS#12 changes"
    );
    assert_holds(e.p12(), "rotated", &old);
    assert!(!openssl(&["-nodes"], e.p12(), PW).status.success());
}

#[test]
fn a_pkcs12_file_with_other_content_is_detected_and_replaced() {
    let e = env(PW);
    let installed = bundle(KeyAlgorithm::Ec256);
    install::install(&installed, &e.paths, &FileSpec::default(), &e.state).unwrap();

    // Someone writes a PKCS#12 of another certificate with the same password over it.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other_paths = OutputPaths::certbot_layout(other_dir.path().join("out"));
    other_paths.pkcs12 = e.paths.pkcs12.clone().map(|mut p| {
        p.path = other_dir.path().join("out/other.p12");
        p
    });
    let other = bundle(KeyAlgorithm::Ec256);
    install::install(
        &other,
        &other_paths,
        &FileSpec::default(),
        &StateDir::new(other_dir.path().join("state")),
    )
    .unwrap();
    fs::copy(&other_paths.pkcs12.as_ref().unwrap().path, e.p12()).unwrap();

    assert!(
        matches!(
            install::read_installed(&e.paths),
            InstalledState::Inconsistent { ref path, .. } if path == e.p12()
        ),
        "{:?}",
        install::read_installed(&e.paths)
    );
    let out = install::install(&installed, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert_eq!(out.written, vec![e.p12().to_path_buf()]);
    assert_holds(e.p12(), PW, &installed);
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Present(_)
    ));
}

#[test]
fn no_password_means_the_empty_password() {
    let e = env("");
    let b = bundle(KeyAlgorithm::Ec256);
    install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert_holds(e.p12(), "", &b);
    let info = openssl(&["-info", "-noout"], e.p12(), "");
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(!openssl(&["-nodes"], e.p12(), "x").status.success());
}

#[test]
fn rsa_keys_work_too() {
    let e = env(PW);
    let b = bundle(KeyAlgorithm::Rsa2048);
    install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert_holds(e.p12(), PW, &b);
    // And through `openssl pkey -pubout`: the key's public half is the certificate's.
    let out = openssl(&["-nodes", "-nocerts"], e.p12(), PW);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let key_file: PathBuf = dir.path().join("k.pem");
    fs::write(&key_file, &out.stdout).unwrap();
    let pubkey = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    let cert_file = dir.path().join("c.pem");
    fs::write(&cert_file, b.cert_pem()).unwrap();
    let cert_pub = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&cert_file)
        .output()
        .unwrap();
    assert!(cert_pub.status.success());
    assert_eq!(pubkey.stdout, cert_pub.stdout);
}
