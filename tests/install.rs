//! Install on a real filesystem: verification before swap, atomic durable writes, no-op on
//! identical content, previous/last good versions, failures that leave the files in place, crash
//! recovery, and the issuance journal.
//!
//! Failure techniques (tests run as root in CI, where a 0555 directory does not stop anyone):
//! - read-only directory: `chattr +i` on the directory (EPERM even for root, on ext4);
//! - a file that cannot be replaced mid-swap: `chattr +i` on the target file (its directory stays
//!   writable, so the temps are created and the rename of that one file fails);
//! - full filesystem: a 256 KiB tmpfs mounted on a temp dir and filled (ENOSPC);
//! - a parent "directory" that is a regular file (ENOTDIR; works for any user).
//!
//! The chattr and tmpfs tests need root; without it they print why they were skipped.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ccm_agent::install::crash::{CrashPoint, crash_at};
use ccm_agent::install::{
    self, Candidate, Expectations, FileSpec, InstallError, InstalledState, OutputPaths, Principal,
    Rejection, Role, VerifiedBundle,
};
use ccm_agent::pki::{
    self, CertificateSpec, DistinguishedName, KeyAlgorithm, PrivateKey, PublicKeySource,
    SubjectAltName,
};
use ccm_agent::state::StateDir;
use ccm_agent::state::journal::{IssueMode, Journal, Phase};
use time::OffsetDateTime;
use time::macros::datetime;

/// A missing NSS module fails the NSS test under CI and skips it elsewhere.
mod required;

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

struct Ca {
    cert: String,
    key: PrivateKey,
}

/// Root → intermediate, shared by every test (keygen is the slow part).
struct Pki {
    root: Ca,
    inter: Ca,
    other_root: Ca,
}

fn key() -> PrivateKey {
    pki::generate_key(KeyAlgorithm::Ec256).unwrap()
}

fn ca(cn: &str, issuer: Option<&Ca>) -> Ca {
    let key = key();
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
        let root = ca("Test Root", None);
        let inter = ca("Test Issuing CA", Some(&root));
        let other_root = ca("Other Root", None);
        Pki {
            root,
            inter,
            other_root,
        }
    })
}

struct Leaf {
    cert: String,
    key: String,
}

fn leaf_from(
    issuer: &Ca,
    sans: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Leaf {
    let key = key();
    let sans = sans
        .iter()
        .map(|s| match s.parse() {
            Ok(ip) => SubjectAltName::Ip(ip),
            Err(_) => SubjectAltName::Dns(s.to_string()),
        })
        .collect();
    let spec = CertificateSpec::new_leaf(
        DistinguishedName::with_common_name("www.example.com"),
        not_before,
        not_after,
        sans,
    );
    let cert = pki::issue(
        &spec,
        &PublicKeySource::Key(&key),
        &issuer.cert,
        &issuer.key,
    )
    .unwrap();
    Leaf {
        cert,
        key: key.to_pem(),
    }
}

fn leaf() -> Leaf {
    leaf_from(
        &fixture().inter,
        &["www.example.com", "*.api.example.com", "10.0.0.1"],
        datetime!(2026-05-01 00:00 UTC),
        datetime!(2026-08-01 00:00 UTC),
    )
}

fn candidate(l: &Leaf) -> Candidate {
    Candidate {
        name: "web".into(),
        cert_pem: l.cert.clone(),
        chain_pem: fixture().inter.cert.clone(),
        key_pem: l.key.clone(),
    }
}

fn expect() -> Expectations {
    Expectations {
        names: vec![
            "www.example.com".into(),
            "v1.api.example.com".into(),
            "10.0.0.1".into(),
        ],
        trust: Some(fixture().root.cert.clone()),
        now: NOW,
    }
}

fn verified(l: &Leaf) -> VerifiedBundle {
    install::verify_candidate(&candidate(l), &expect()).unwrap()
}

struct Env {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    paths: OutputPaths,
    state: StateDir,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("live/web");
    let paths = OutputPaths::certbot_layout(&out);
    let state = StateDir::new(tmp.path().join("state"));
    Env {
        out,
        paths,
        state,
        _tmp: tmp,
    }
}

/// Content, inode and mtime of every file of the set.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot(Vec<(PathBuf, Vec<u8>, u64, i64, i64)>);

fn snapshot(p: &OutputPaths) -> Snapshot {
    Snapshot(
        [&p.cert, &p.chain, &p.fullchain, &p.key]
            .into_iter()
            .map(|path| {
                let m = fs::metadata(path).unwrap();
                (
                    path.clone(),
                    fs::read(path).unwrap(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec(),
                )
            })
            .collect(),
    )
}

fn contents(p: &OutputPaths) -> Vec<Vec<u8>> {
    snapshot(p).0.into_iter().map(|f| f.1).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// No temp file left beside the targets.
fn assert_no_temps(dir: &Path) {
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("ccm-agent-new"))
        .collect();
    assert!(leftovers.is_empty(), "temps left in {dir:?}: {leftovers:?}");
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
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

#[test]
fn install_writes_the_set_with_modes_and_identical_reinstall_is_a_noop() {
    let e = env();
    let l = leaf();
    let b = verified(&l);
    let out = install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert!(out.changed);
    assert_eq!(out.written.len(), 4);
    assert_eq!(out.previous, None, "nothing was in place before");

    let cert = fs::read_to_string(&e.paths.cert).unwrap();
    let chain = fs::read_to_string(&e.paths.chain).unwrap();
    let full = fs::read_to_string(&e.paths.fullchain).unwrap();
    assert_eq!(
        pki::parse_cert(&cert).unwrap(),
        pki::parse_cert(&l.cert).unwrap()
    );
    assert_eq!(
        pki::parse_pem_chain(&chain).unwrap(),
        pki::parse_pem_chain(&fixture().inter.cert).unwrap()
    );
    assert_eq!(full, format!("{cert}{chain}"));
    let key = PrivateKey::from_pem(&fs::read_to_string(&e.paths.key).unwrap()).unwrap();
    assert!(pki::key_matches_cert(
        &key,
        &pki::parse_cert(&cert).unwrap()
    ));
    assert_eq!(mode(&e.paths.cert), 0o644);
    assert_eq!(mode(&e.paths.chain), 0o644);
    assert_eq!(mode(&e.paths.fullchain), 0o644);
    assert_eq!(mode(&e.paths.key), 0o600);
    assert_no_temps(&e.out);

    // The last good version is kept, private, with the targets and modes.
    let good = install::last_good(&e.state, "web").unwrap().unwrap();
    assert_eq!(good.file(Role::Cert).unwrap().contents(), cert.as_bytes());
    assert_eq!(good.file(Role::Key).unwrap().attrs.mode, 0o600);
    assert_eq!(good.file(Role::Key).unwrap().target, e.paths.key);
    let kept_key = e.state.cert_dir("web").join("current/privkey.pem");
    assert_eq!(mode(&kept_key), 0o600);

    // On-disk check agrees with the bundle.
    match install::read_installed(&e.paths) {
        InstalledState::Present(c) => assert_eq!(c.fingerprint_sha256, b.fingerprint_sha256()),
        other => panic!("{other:?}"),
    }
    assert!(!install::read_installed(&e.paths).needs_install(Some(b.fingerprint_sha256())));

    // Same bundle again (even re-verified from CRLF text): nothing renamed, inode and mtime kept.
    let before = snapshot(&e.paths);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut c = candidate(&l);
    c.cert_pem = c.cert_pem.replace('\n', "\r\n");
    let again = install::verify_candidate(&c, &expect()).unwrap();
    let out = install::install(&again, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert!(!out.changed);
    assert!(out.written.is_empty());
    assert_eq!(snapshot(&e.paths), before);

    // A wrong mode alone is corrected in place, content and inode kept.
    fs::set_permissions(&e.paths.key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert!(!out.changed);
    assert_eq!(out.attrs_fixed, vec![e.paths.key.clone()]);
    assert_eq!(mode(&e.paths.key), 0o600);
    assert_eq!(snapshot(&e.paths), before);
}

#[test]
fn every_rejection_names_the_cause_and_leaves_files_byte_identical() {
    let e = env();
    let good = leaf();
    install::install(&verified(&good), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let before = snapshot(&e.paths);
    let p = fixture();

    let other_key = key().to_pem();
    let other_ca = ca("Rogue Issuing CA", Some(&p.other_root));
    let from_other_ca = leaf_from(
        &other_ca,
        &["www.example.com"],
        datetime!(2026-05-01 00:00 UTC),
        datetime!(2026-08-01 00:00 UTC),
    );
    let narrow = leaf_from(
        &p.inter,
        &["www.example.com"],
        datetime!(2026-05-01 00:00 UTC),
        datetime!(2026-08-01 00:00 UTC),
    );
    let not_yet = leaf_from(
        &p.inter,
        &["www.example.com"],
        datetime!(2026-07-01 00:00 UTC),
        datetime!(2026-09-01 00:00 UTC),
    );

    type Case = (
        &'static str,
        Candidate,
        Expectations,
        fn(&Rejection) -> bool,
    );
    let exp_www = || Expectations {
        names: vec!["www.example.com".into()],
        ..expect()
    };
    let cases: Vec<Case> = vec![
        (
            "garbage certificate",
            Candidate {
                cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                ..candidate(&good)
            },
            expect(),
            |r| matches!(r, Rejection::CertificateUnparsable(_)),
        ),
        (
            "empty certificate",
            Candidate {
                cert_pem: String::new(),
                ..candidate(&good)
            },
            expect(),
            |r| matches!(r, Rejection::CertificateUnparsable(_)),
        ),
        (
            "garbage key",
            Candidate {
                key_pem: "not a key".into(),
                ..candidate(&good)
            },
            expect(),
            |r| matches!(r, Rejection::KeyUnparsable(_)),
        ),
        (
            "key mismatch",
            Candidate {
                key_pem: other_key,
                ..candidate(&good)
            },
            expect(),
            |r| matches!(r, Rejection::KeyMismatch),
        ),
        (
            "expired",
            candidate(&good),
            Expectations {
                now: datetime!(2026-08-02 00:00 UTC),
                ..expect()
            },
            |r| matches!(r, Rejection::Expired { .. }),
        ),
        ("not yet valid", candidate(&not_yet), exp_www(), |r| {
            matches!(r, Rejection::NotYetValid { .. })
        }),
        (
            "chain to a different issuer",
            Candidate {
                chain_pem: p.inter.cert.clone(),
                ..candidate(&from_other_ca)
            },
            exp_www(),
            |r| matches!(r, Rejection::Chain(_)),
        ),
        (
            "consistent chain but another trust anchor",
            Candidate {
                chain_pem: other_ca.cert.clone(),
                ..candidate(&from_other_ca)
            },
            exp_www(),
            |r| matches!(r, Rejection::Chain(_)),
        ),
        (
            "empty chain without a trust anchor",
            Candidate {
                chain_pem: String::new(),
                ..candidate(&good)
            },
            Expectations {
                trust: None,
                ..expect()
            },
            |r| matches!(r, Rejection::Chain(_)),
        ),
        ("names not covered", candidate(&narrow), expect(), |r| {
            matches!(r, Rejection::NamesNotCovered { missing, .. }
                    if missing == &["v1.api.example.com".to_string(), "10.0.0.1".to_string()])
        }),
        (
            "wildcard is one label only",
            candidate(&good),
            Expectations {
                names: vec!["a.b.api.example.com".into()],
                ..expect()
            },
            |r| matches!(r, Rejection::NamesNotCovered { .. }),
        ),
    ];

    for (what, cand, exp, is_expected) in cases {
        let result = install::verify_candidate(&cand, &exp)
            .and_then(|b| install::install(&b, &e.paths, &FileSpec::default(), &e.state));
        match result {
            Err(InstallError::Rejected { name, reason }) => {
                assert_eq!(name, "web", "{what}");
                assert!(is_expected(&reason), "{what}: unexpected reason {reason}");
                let msg = InstallError::Rejected { name, reason }.to_string();
                assert!(msg.starts_with("certificate web: rejected: "), "{msg}");
            }
            other => panic!("{what}: expected a rejection, got {other:?}"),
        }
        assert_eq!(snapshot(&e.paths), before, "{what}: files changed");
    }

    // Without a trust anchor a consistent chain is accepted; so is the leaf's issuer at the
    // head of an otherwise empty chain.
    let no_trust = Expectations {
        trust: None,
        ..expect()
    };
    install::verify_candidate(&candidate(&good), &no_trust).unwrap();
}

#[test]
fn restore_previous_rolls_back_and_is_its_own_inverse() {
    let e = env();
    let (v1, v2) = (leaf(), leaf());
    install::install(&verified(&v1), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let files_v1 = contents(&e.paths);
    assert!(matches!(
        install::restore_previous(&e.state, "web"),
        Err(InstallError::NoPrevious { .. })
    ));

    let out = install::install(&verified(&v2), &e.paths, &FileSpec::default(), &e.state).unwrap();
    assert!(out.changed);
    let prev = out.previous.unwrap();
    assert_eq!(
        prev.cert_sha256.as_deref(),
        Some(install::sha256_hex(&files_v1[0]).as_str())
    );
    let files_v2 = contents(&e.paths);
    assert_ne!(files_v1, files_v2);
    let kept = install::previous(&e.state, "web").unwrap().unwrap();
    assert_eq!(kept.file(Role::Key).unwrap().attrs.mode, 0o600);
    assert_eq!(mode(&prev.dir.join("privkey.pem")), 0o600);

    // Rollback (e.g. the reload failed).
    let out = install::restore_previous(&e.state, "web").unwrap();
    assert!(out.changed);
    assert_eq!(contents(&e.paths), files_v1);
    assert_eq!(mode(&e.paths.key), 0o600);
    assert_eq!(mode(&e.paths.cert), 0o644);
    let good = install::last_good(&e.state, "web").unwrap().unwrap();
    assert_eq!(
        good.file(Role::Cert).unwrap().contents(),
        files_v1[0].as_slice()
    );

    install::restore_previous(&e.state, "web").unwrap();
    assert_eq!(contents(&e.paths), files_v2);
    assert_no_temps(&e.out);
}

#[test]
fn restore_last_good_repairs_deleted_truncated_and_replaced_files() {
    let e = env();
    let v1 = leaf();
    install::install(&verified(&v1), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let files = contents(&e.paths);
    let prev_before = install::previous(&e.state, "web").unwrap();

    fs::remove_file(&e.paths.key).unwrap();
    fs::write(&e.paths.cert, b"").unwrap();
    fs::write(&e.paths.fullchain, fixture().other_root.cert.as_bytes()).unwrap();
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Missing { .. }
    ));

    let out = install::restore_last_good(&e.state, "web").unwrap();
    assert_eq!(out.written.len(), 3);
    assert_eq!(contents(&e.paths), files);
    assert_eq!(mode(&e.paths.key), 0o600);
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Present(_)
    ));
    // A repair is not a new version: previous is unchanged.
    assert_eq!(install::previous(&e.state, "web").unwrap(), prev_before);
}

#[test]
fn read_installed_reports_each_problem() {
    let e = env();
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Missing { path } if path == e.paths.cert
    ));
    let b = verified(&leaf());
    install::install(&b, &e.paths, &FileSpec::default(), &e.state).unwrap();

    let state = install::read_installed(&e.paths);
    assert!(state.needs_install(Some("00")));
    assert!(!state.needs_install(Some(&b.fingerprint_sha256().to_lowercase())));

    let key_bytes = fs::read(&e.paths.key).unwrap();
    fs::write(&e.paths.key, key().to_pem()).unwrap();
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::KeyMismatch { .. }
    ));
    fs::write(&e.paths.key, &key_bytes).unwrap();

    fs::write(&e.paths.fullchain, fixture().inter.cert.as_bytes()).unwrap();
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Inconsistent { path, .. } if path == e.paths.fullchain
    ));
    fs::write(
        &e.paths.cert,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Unparsable { path, .. } if path == e.paths.cert
    ));
    fs::remove_file(&e.paths.cert).unwrap();
    fs::create_dir(&e.paths.cert).unwrap();
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Unreadable { path, .. } if path == e.paths.cert
    ));
}

#[test]
fn owner_and_group_by_id_and_by_name() {
    let e = env();
    let b = verified(&leaf());
    let unknown = FileSpec {
        owner: Some(Principal::Name("no-such-user-ccm".into())),
        ..FileSpec::default()
    };
    let err = install::install(&b, &e.paths, &unknown, &e.state).unwrap_err();
    assert!(
        err.to_string().contains("no-such-user-ccm")
            && err.to_string().contains("user database (getpwnam)"),
        "{err}"
    );
    assert!(!e.paths.key.exists());

    if !is_root() {
        eprintln!("skipped the chown part: not root");
        return;
    }
    let spec = FileSpec {
        owner: Some(Principal::Id(4321)),
        group: Some(Principal::Name("root".into())),
        cert_mode: 0o640,
        key_mode: 0o400,
    };
    install::install(&b, &e.paths, &spec, &e.state).unwrap();
    for p in [&e.paths.cert, &e.paths.key] {
        let m = fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 0), "{p:?}");
    }
    assert_eq!(mode(&e.paths.cert), 0o640);
    assert_eq!(mode(&e.paths.key), 0o400);
}

#[test]
fn read_only_directory_leaves_old_files_and_names_the_path() {
    if !is_root() {
        eprintln!("skipped: chattr +i needs root");
        return;
    }
    let e = env();
    install::install(&verified(&leaf()), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let before = snapshot(&e.paths);
    let guard = Immutable::set(&e.out).expect("chattr +i on an ext4 temp dir");
    let err =
        install::install(&verified(&leaf()), &e.paths, &FileSpec::default(), &e.state).unwrap_err();
    drop(guard);
    let msg = err.to_string();
    assert!(msg.contains(&*e.out.to_string_lossy()), "{msg}");
    assert_eq!(
        err.io_error().and_then(|e| e.raw_os_error()),
        Some(1),
        "EPERM: {msg}"
    );
    assert_eq!(snapshot(&e.paths), before);
    assert_no_temps(&e.out);
    assert!(!e.state.cert_dir("web").join("txn").exists());
}

#[test]
fn failure_midway_through_preparation_removes_the_temps_already_written() {
    if !is_root() {
        eprintln!("skipped: chattr +i needs root");
        return;
    }
    // The key lives in its own writable directory (its temp is written first); the
    // certificates in a read-only one.
    let e = env();
    let key_dir = e.out.parent().unwrap().join("private");
    let paths = OutputPaths {
        key: key_dir.join("web.key"),
        ..e.paths.clone()
    };
    install::install(&verified(&leaf()), &paths, &FileSpec::default(), &e.state).unwrap();
    let before = snapshot(&paths);
    let guard = Immutable::set(&e.out).expect("chattr");
    let err =
        install::install(&verified(&leaf()), &paths, &FileSpec::default(), &e.state).unwrap_err();
    drop(guard);
    // The chain is the same in both versions (not rewritten); the certificate is next.
    assert!(err.to_string().contains("/cert.pem"), "{err}");
    assert_eq!(snapshot(&paths), before);
    assert_no_temps(&key_dir);
    assert_no_temps(&e.out);
}

#[test]
fn failed_rename_midway_through_the_swap_reverts_the_files_already_swapped() {
    if !is_root() {
        eprintln!("skipped: chattr +i needs root");
        return;
    }
    let e = env();
    let v1 = leaf();
    install::install(&verified(&v1), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let before = contents(&e.paths);
    // The key is swapped first (the chain is identical in both versions, so not rewritten),
    // then the certificate's rename fails: the key must be put back.
    let guard = Immutable::set(&e.paths.cert).expect("chattr");
    let err =
        install::install(&verified(&leaf()), &e.paths, &FileSpec::default(), &e.state).unwrap_err();
    drop(guard);
    assert!(matches!(err, InstallError::Fs { .. }), "{err:?}");
    assert!(err.to_string().contains("cert.pem"), "{err}");
    assert_eq!(contents(&e.paths), before);
    assert_eq!(mode(&e.paths.key), 0o600);
    assert_no_temps(&e.out);
    assert!(!e.state.cert_dir("web").join("txn").exists());
    let good = install::last_good(&e.state, "web").unwrap().unwrap();
    assert_eq!(
        good.file(Role::Key).unwrap().contents(),
        before[3].as_slice()
    );
}

/// A tmpfs mounted on a temp dir for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_filesystem_leaves_old_files_and_reports_enospc() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let Some(_fs) = Tmpfs::mount(&mnt, "256k") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let paths = OutputPaths::certbot_layout(mnt.join("web"));
    let state = StateDir::new(tmp.path().join("state"));
    install::install(&verified(&leaf()), &paths, &FileSpec::default(), &state).unwrap();
    let before = snapshot(&paths);

    // Fill the filesystem.
    let filler = mnt.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    loop {
        use std::io::Write;
        if f.write_all(&block).and_then(|()| f.flush()).is_err() {
            break;
        }
    }
    drop(f);

    let err =
        install::install(&verified(&leaf()), &paths, &FileSpec::default(), &state).unwrap_err();
    assert_eq!(
        err.io_error().and_then(|e| e.raw_os_error()),
        Some(28),
        "ENOSPC: {err}"
    );
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(err.to_string().contains(&*mnt.to_string_lossy()), "{err}");
    assert_eq!(snapshot(&paths), before);
    assert_no_temps(&mnt.join("web"));

    // Space back: the same install now succeeds.
    fs::remove_file(&filler).unwrap();
    install::install(&verified(&leaf()), &paths, &FileSpec::default(), &state).unwrap();
}

#[test]
fn parent_that_is_a_file_fails_cleanly_for_any_user() {
    let e = env();
    install::install(&verified(&leaf()), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let before = snapshot(&e.paths);
    let blocker = e.out.parent().unwrap().join("not-a-dir");
    fs::write(&blocker, b"x").unwrap();
    let paths = OutputPaths {
        fullchain: blocker.join("fullchain.pem"),
        ..e.paths.clone()
    };
    let err =
        install::install(&verified(&leaf()), &paths, &FileSpec::default(), &e.state).unwrap_err();
    assert!(err.to_string().contains("not-a-dir/fullchain.pem"), "{err}");
    assert_eq!(snapshot(&e.paths), before);
    assert_no_temps(&e.out);
}

#[test]
fn crash_at_every_point_is_completed_or_reverted_by_recovery() {
    let points = [
        (CrashPoint::BeforeCommit, false),
        (CrashPoint::AfterCommit, true),
        (CrashPoint::AfterRenames(1), true),
        (CrashPoint::AfterRenames(2), true),
        (CrashPoint::DuringRotation, true),
    ];
    let v1 = leaf();
    for (point, completes) in points {
        let e = env();
        install::install(&verified(&v1), &e.paths, &FileSpec::default(), &e.state).unwrap();
        let files_v1 = contents(&e.paths);
        let v2 = verified(&leaf());

        crash_at(point);
        let err = install::install(&v2, &e.paths, &FileSpec::default(), &e.state).unwrap_err();
        assert!(
            err.to_string().contains("simulated crash"),
            "{point:?}: {err}"
        );
        if let CrashPoint::AfterRenames(1) = point {
            // Mid-set: the new key is in place beside the old certificate.
            assert!(matches!(
                install::read_installed(&e.paths),
                InstalledState::KeyMismatch { .. }
            ));
        }

        // Restart.
        let done = install::recover(&e.state).unwrap();
        assert_eq!(done.len(), 1, "{point:?}");
        assert_eq!(done[0].name, "web");
        assert!(
            install::recover(&e.state).unwrap().is_empty(),
            "{point:?}: idempotent"
        );
        assert_no_temps(&e.out);

        let now = contents(&e.paths);
        let good = install::last_good(&e.state, "web").unwrap().unwrap();
        if completes {
            assert_eq!(now[0], v2.cert_pem().as_bytes(), "{point:?}");
            assert_eq!(now[3], v2.key_pem().as_bytes(), "{point:?}");
            assert_eq!(
                good.file(Role::Cert).unwrap().contents(),
                v2.cert_pem().as_bytes()
            );
            let prev = install::previous(&e.state, "web").unwrap().unwrap();
            assert_eq!(
                prev.file(Role::Cert).unwrap().contents(),
                files_v1[0].as_slice()
            );
        } else {
            assert_eq!(now, files_v1, "{point:?}");
            assert_eq!(
                good.file(Role::Cert).unwrap().contents(),
                files_v1[0].as_slice()
            );
        }
        assert!(matches!(
            install::read_installed(&e.paths),
            InstalledState::Present(_)
        ));
        assert_eq!(mode(&e.paths.key), 0o600);
    }
}

#[test]
fn crash_recovery_rewrites_a_lost_temp_from_the_committed_copy() {
    let e = env();
    install::install(&verified(&leaf()), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let v2 = verified(&leaf());
    crash_at(CrashPoint::AfterRenames(1));
    install::install(&v2, &e.paths, &FileSpec::default(), &e.state).unwrap_err();
    // Someone cleaned up hidden files before the restart.
    fs::remove_file(e.out.join(".cert.pem.ccm-agent-new")).unwrap();
    install::recover(&e.state).unwrap();
    assert_eq!(fs::read(&e.paths.cert).unwrap(), v2.cert_pem().as_bytes());
    assert_eq!(mode(&e.paths.cert), 0o644);
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Present(_)
    ));
}

#[test]
fn journal_survives_a_crash_and_returns_the_recorded_id() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path());
    let local_key = key().to_pem();
    {
        let j = Journal::open(state.journal_dir()).unwrap();
        j.begin_issue("web", IssueMode::Csr, Some(&local_key), None, NOW)
            .unwrap();
        // Crash: dropped without record_issued.
    }
    {
        let j = Journal::open(state.journal_dir()).unwrap();
        let p = j.pending("web").unwrap().unwrap();
        assert_eq!(p.phase, Phase::Requested);
        assert_eq!(p.cloud_certificate_id, None);
        // The key that went into the CSR is still there, private.
        assert_eq!(p.load_key().unwrap().as_deref(), Some(local_key.as_str()));
        assert_eq!(mode(p.key_path.as_ref().unwrap()), 0o600);
        j.record_issued("web", "6d8d1c3a-0000-4000-8000-000000000001")
            .unwrap();
        // Crash again before the install.
    }
    let j = Journal::open(state.journal_dir()).unwrap();
    let p = j.pending("web").unwrap().unwrap();
    assert_eq!(p.phase, Phase::Issued);
    assert_eq!(
        p.cloud_certificate_id.as_deref(),
        Some("6d8d1c3a-0000-4000-8000-000000000001")
    );
    assert_eq!(p.requested_at, NOW);
    let key = PrivateKey::from_pem(&p.load_key().unwrap().unwrap()).unwrap();
    assert_eq!(key.to_pem(), local_key);
    j.complete("web").unwrap();
    assert!(j.pending("web").unwrap().is_none());
    assert!(j.all_pending().unwrap().is_empty());
}

/// A transaction recovery cannot read (here a garbled manifest) stops only its own certificate:
/// the others are recovered and installed, and the broken one reports its error each time.
#[test]
fn an_unrecoverable_transaction_blocks_only_its_own_certificate() {
    let e = env();
    install::install(&verified(&leaf()), &e.paths, &FileSpec::default(), &e.state).unwrap();
    let v2 = verified(&leaf());
    crash_at(CrashPoint::AfterRenames(1));
    install::install(&v2, &e.paths, &FileSpec::default(), &e.state).unwrap_err();
    let broken = e.state.cert_dir("other").join("txn");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("manifest.json"), b"{ not json").unwrap();

    let (done, failed) = install::recover_each(&e.state).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].name, "web",
        "the interrupted install of web was completed"
    );
    assert_eq!(failed.len(), 1);
    let msg = failed[0].to_string();
    assert!(
        msg.contains("other") && msg.contains("manifest.json"),
        "{msg}"
    );
    assert_eq!(fs::read(&e.paths.cert).unwrap(), v2.cert_pem().as_bytes());
    assert!(matches!(
        install::read_installed(&e.paths),
        InstalledState::Present(_)
    ));
    // `recover` reports the failure as an error; the broken transaction is left for an operator.
    let err = install::recover(&e.state).unwrap_err();
    assert!(err.to_string().contains("other"), "{err}");
    assert!(broken.join("manifest.json").is_file());
}

/// A user and a group that only NSS knows, not `/etc/passwd` or `/etc/group`: systemd userdb
/// drop-ins in `/run/userdb`, which nss-systemd serves (Debian's libnss-systemd adds `systemd`
/// to the passwd and group lines of `/etc/nsswitch.conf`). The installed files get their ids.
#[test]
fn owner_and_group_known_only_through_nss_are_resolved() {
    use nix::unistd::{Gid, Group, Uid, User};
    if !is_root() {
        required::missing("writing /run/userdb and chown need root", "run as root");
        return;
    }
    let name = format!("ccmnss{}", std::process::id());
    for file in ["/etc/passwd", "/etc/group"] {
        let text = fs::read_to_string(file).unwrap();
        assert!(!text.contains(&name), "{name} is in {file}");
    }
    let id = (61000..62000)
        .find(|&id| {
            User::from_uid(Uid::from_raw(id)).unwrap().is_none()
                && Group::from_gid(Gid::from_raw(id)).unwrap().is_none()
        })
        .expect("a free id in 61000..62000");
    struct Dropins(Vec<PathBuf>);
    impl Drop for Dropins {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = fs::remove_file(p);
            }
        }
    }
    let dir = Path::new("/run/userdb");
    fs::create_dir_all(dir).unwrap();
    let dropins = Dropins(vec![
        dir.join(format!("{name}.user")),
        dir.join(format!("{name}.group")),
    ]);
    let user = serde_json::json!({"userName": name, "uid": id, "gid": id,
        "disposition": "regular", "homeDirectory": "/nonexistent", "shell": "/usr/sbin/nologin"});
    let group = serde_json::json!({"groupName": name, "gid": id, "disposition": "regular"});
    fs::write(&dropins.0[0], user.to_string()).unwrap();
    fs::write(&dropins.0[1], group.to_string()).unwrap();
    if User::from_name(&name).unwrap().is_none() || Group::from_name(&name).unwrap().is_none() {
        required::missing(
            "nss-systemd does not serve /run/userdb (`systemd` missing from the passwd and group \
             lines of /etc/nsswitch.conf?)",
            "apt-get install libnss-systemd",
        );
        return;
    }

    let e = env();
    let spec = FileSpec {
        owner: Some(Principal::Name(name.clone())),
        group: Some(Principal::Name(name.clone())),
        ..FileSpec::default()
    };
    install::install(&verified(&leaf()), &e.paths, &spec, &e.state).unwrap();
    for p in [&e.paths.cert, &e.paths.key] {
        let m = fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (id, id), "{p:?}");
    }
    drop(dropins);
}
