//! Shared by `reload_nginx.rs`, `reload_apache.rs` and the end-to-end tests: certificates, the
//! agent's install into a temp directory, free loopback ports, finding the server binaries, the
//! Apache and nginx setups ([`apache`], [`nginx`]), a placeholder pair for a server to start
//! with, and stopping a server when a test ends (even by panic).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ccm_agent::install::{self, Candidate, Expectations, FileSpec, InstallOutcome, OutputPaths};
use ccm_agent::pki::{
    self, CertificateSpec, DistinguishedName, KeyAlgorithm, PrivateKey, PublicKeySource,
    SubjectAltName,
};
use ccm_agent::reload::{ChangeContext, InstalledPaths, VerifyEndpoint, served_fingerprint};
use ccm_agent::state::StateDir;
use time::OffsetDateTime;

pub mod apache;
pub mod nginx;

pub const SNI: &str = "www.example.com";

struct Ca {
    cert: String,
    key: PrivateKey,
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let key = pki::generate_key(KeyAlgorithm::Ec256).unwrap();
        let now = OffsetDateTime::now_utc();
        let spec = CertificateSpec::new_ca(
            DistinguishedName::with_common_name("reload test CA"),
            now - time::Duration::days(1),
            now + time::Duration::days(365),
            None,
        );
        let cert = pki::self_signed(&spec, &key).unwrap();
        Ca { cert, key }
    })
}

/// A leaf for www.example.com issued by the test CA.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub fingerprint: String,
}

pub fn leaf() -> Leaf {
    let key = pki::generate_key(KeyAlgorithm::Ec256).unwrap();
    let now = OffsetDateTime::now_utc();
    let spec = CertificateSpec::new_leaf(
        DistinguishedName::with_common_name(SNI),
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
        vec![SubjectAltName::Dns(SNI.into())],
    );
    let ca = ca();
    let cert = pki::issue(&spec, &PublicKeySource::Key(&key), &ca.cert, &ca.key).unwrap();
    let fingerprint = pki::parse_cert(&cert).unwrap().sha256_fingerprint_hex;
    Leaf {
        cert,
        key: key.to_pem(),
        fingerprint,
    }
}

/// A temp directory with the agent's output (`live/`) and state (`state/`).
pub struct Site {
    pub tmp: tempfile::TempDir,
    pub paths: OutputPaths,
    pub state: StateDir,
}

pub const NAME: &str = "www";

impl Site {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let paths = OutputPaths::certbot_layout(tmp.path().join("live"));
        let state = StateDir::new(tmp.path().join("state"));
        Site { tmp, paths, state }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The agent's install (verify, then the atomic swap).
    pub fn install(&self, leaf: &Leaf) -> InstallOutcome {
        let candidate = Candidate {
            name: NAME.into(),
            cert_pem: leaf.cert.clone(),
            chain_pem: ca().cert.clone(),
            key_pem: leaf.key.clone(),
        };
        let expect = Expectations {
            names: vec![SNI.into()],
            trust: Some(ca().cert.clone()),
            now: OffsetDateTime::now_utc(),
        };
        let bundle = install::verify_candidate(&candidate, &expect).unwrap();
        assert_eq!(bundle.fingerprint_sha256(), leaf.fingerprint);
        install::install(&bundle, &self.paths, &FileSpec::default(), &self.state).unwrap()
    }

    /// What the daemon hands the reload after installing `new` over `old`.
    pub fn change(&self, outcome: &InstallOutcome, old: &Leaf, new: &Leaf) -> ChangeContext {
        ChangeContext {
            name: NAME.into(),
            changed: outcome.changed,
            paths: InstalledPaths::from(&self.paths),
            names: vec![SNI.into()],
            old_fingerprint: Some(old.fingerprint.clone()),
            new_fingerprint: new.fingerprint.clone(),
        }
    }

    /// The certificate file's leaf fingerprint.
    pub fn installed_fingerprint(&self) -> String {
        let pem = std::fs::read_to_string(&self.paths.cert).unwrap();
        pki::parse_cert(&pem).unwrap().sha256_fingerprint_hex
    }

    /// The rollback the daemon passes: restore the previous version.
    pub fn rollback(&self) -> impl FnOnce() -> Result<InstallOutcome, install::InstallError> + '_ {
        move || install::restore_previous(&self.state, NAME)
    }
}

#[path = "../ports/mod.rs"]
mod ports;
/// A missing nginx or Apache fails the test under CI (which installs both) and skips it elsewhere.
#[path = "../required/mod.rs"]
pub mod required;
pub use ports::free_port;
/// For the benchmark, which reports a missing nginx as a skipped row.
#[allow(unused_imports)]
pub use required::find_binary;

pub fn endpoint(port: u16) -> VerifyEndpoint {
    VerifyEndpoint {
        address: "127.0.0.1".into(),
        port,
        sni: Some(SNI.into()),
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a server command, panicking with its output on failure.
pub fn run(argv: &[&str]) -> String {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{argv:?}: {}: {text}", out.status);
    text
}

/// Waits until `endpoint` serves `fingerprint`; panics after `within` with what it saw.
pub async fn wait_served(endpoint: &VerifyEndpoint, fingerprint: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let seen = served_fingerprint(endpoint, Duration::from_secs(2)).await;
        if matches!(&seen, Ok(fp) if fp == fingerprint) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{endpoint} does not serve {fingerprint}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an endpoint serves now.
pub async fn served(endpoint: &VerifyEndpoint) -> String {
    served_fingerprint(endpoint, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Stops a daemonized server when dropped: SIGTERM to the pid in its pid file (a fast stop for
/// both nginx and apache; their own stop commands parse the configuration, which a test may
/// have broken), then SIGKILL to its process group (both servers `setsid()` when they
/// daemonize) for anything left, such as workers of an older generation.
pub struct Running {
    pub pid_file: PathBuf,
    /// Logs shown when a test fails.
    pub error_log: PathBuf,
}

impl Running {
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process, kill_process_group, test_kill_process};
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.error_log.display(), self.error_log());
        }
        let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            return;
        };
        let _ = kill_process(pid, Signal::TERM);
        for _ in 0..100 {
            if test_kill_process(pid).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Never our own group (a server that did not daemonize).
        if rustix::process::getpgrp() != pid {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// A throwaway self-signed pair for `sni` as `live/fullchain.pem` and `live/privkey.pem`, for a
/// server to start with before the agent installs the real one. Returns its fingerprint.
pub fn write_placeholder(live: &Path, sni: &str) -> String {
    let key = pki::generate_key(KeyAlgorithm::Ec256).unwrap();
    let now = OffsetDateTime::now_utc();
    let spec = CertificateSpec::new_leaf(
        DistinguishedName::with_common_name("placeholder"),
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
        vec![SubjectAltName::Dns(sni.into())],
    );
    let pem = pki::self_signed(&spec, &key).unwrap();
    std::fs::write(live.join("fullchain.pem"), &pem).unwrap();
    std::fs::write(live.join("privkey.pem"), key.to_pem()).unwrap();
    pki::parse_cert(&pem).unwrap().sha256_fingerprint_hex
}
