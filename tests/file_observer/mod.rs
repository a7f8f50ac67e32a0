//! Shared by `soak.rs` and `crash_loop.rs`: a thread that reads every managed certificate's
//! installed files in a loop for the whole test and checks what `src/install/mod.rs` promises a
//! concurrent reader.
//!
//! # What is checked, and why this way
//! Each file is replaced by a rename, so every read must find a *complete* file: `fullchain.pem`
//! and `chain.pem` parse as certificate chains, `cert.pem` as a certificate covering the
//! configured names, `privkey.pem` as a key. A file set is several files, swapped in the order
//! key, chain, cert, full chain, so no reader can see all of them change at one instant. What
//! the order does promise is that the key is never *older* than the certificate: a reader that
//! reads the certificate (or the full chain) and then the key finds the certificate's own key
//! or the key of a later version (whose certificate rename has not happened yet, or a crash
//! stopped before it and recovery finishes it). The observer reads in exactly that order
//! (full chain, cert, key, chain) and records every pair that does not match as a *window*;
//! [`Report::check_windows`] then requires each window's key to be the key of a certificate
//! issued for the same name after the one read. A key older than the certificate, or a key
//! that belongs to no later certificate, fails.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ccm_agent::install;
use ccm_agent::pki;

/// One certificate's output directory (certbot layout) and the names it must cover.
#[derive(Clone, Debug)]
pub struct Watched {
    pub name: String,
    pub dir: PathBuf,
    pub names: Vec<String>,
}

/// A moment at which the key read did not belong to the certificate read just before it.
#[derive(Clone, Debug)]
pub struct Window {
    pub name: String,
    /// `cert.pem` or `fullchain.pem`.
    pub file: &'static str,
    /// SHA-256 fingerprint (upper-case hex) of the certificate read.
    pub cert_fingerprint: String,
    /// The key read after it (PEM).
    pub key_pem: String,
}

/// What the observer saw.
#[derive(Debug, Default)]
pub struct Report {
    pub sweeps: u64,
    /// File sets read completely (all four files present).
    pub sets_read: u64,
    pub failures: Vec<String>,
    pub windows: Vec<Window>,
    /// Per name: every certificate fingerprint seen in `cert.pem`.
    pub seen: BTreeMap<String, BTreeSet<String>>,
}

/// The certificates issued for one name, oldest first.
pub type Lineage = Vec<pki::CertInfo>;

impl Report {
    /// Every window must show a key of a certificate issued for that name *after* the one read.
    /// Returns one message per window that does not.
    pub fn check_windows(&self, lineages: &BTreeMap<String, Lineage>) -> Vec<String> {
        let mut bad = Vec::new();
        for w in &self.windows {
            let Some(lineage) = lineages.get(&w.name) else {
                bad.push(format!("{}: no lineage known", w.name));
                continue;
            };
            let Some(pos) = lineage.iter().position(|c| {
                c.sha256_fingerprint_hex
                    .eq_ignore_ascii_case(&w.cert_fingerprint)
            }) else {
                bad.push(format!(
                    "{}: {} {} is not a certificate the emulator issued for it",
                    w.name, w.file, w.cert_fingerprint
                ));
                continue;
            };
            let key = pki::PrivateKey::from_pem(&w.key_pem).unwrap();
            let key_of = lineage.iter().position(|c| pki::key_matches_cert(&key, c));
            match key_of {
                Some(k) if k > pos => {}
                Some(k) => bad.push(format!(
                    "{}: {} {} (version {pos}) was read with the key of version {k}: the key is older than the certificate",
                    w.name, w.file, w.cert_fingerprint
                )),
                None => bad.push(format!(
                    "{}: {} {} was read with a key that belongs to no certificate issued for it",
                    w.name, w.file, w.cert_fingerprint
                )),
            }
        }
        bad
    }
}

/// The running observer thread.
pub struct Observer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Report>>,
}

impl Observer {
    /// Starts reading `watched` in a loop, pausing `pause` between sweeps.
    pub fn start(watched: Vec<Watched>, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("file-observer".into())
            .spawn(move || {
                let mut report = Report::default();
                let mut installed: BTreeSet<String> = BTreeSet::new();
                while !flag.load(Ordering::Relaxed) {
                    for w in &watched {
                        observe_one(w, &mut installed, &mut report);
                    }
                    report.sweeps += 1;
                    std::thread::sleep(pause);
                }
                report
            })
            .unwrap();
        Observer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread and returns what it saw.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read(path: &Path) -> Option<String> {
    match std::fs::read(path) {
        Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("<unreadable: {e}>")),
    }
}

fn observe_one(w: &Watched, installed: &mut BTreeSet<String>, report: &mut Report) {
    let paths = install::OutputPaths::certbot_layout(&w.dir);
    // The order matters: see the module doc.
    let fullchain = read(&paths.fullchain);
    let cert = read(&paths.cert);
    let key = read(&paths.key);
    let chain = read(&paths.chain);
    let ever = installed.contains(&w.name);
    let (Some(fullchain), Some(cert), Some(key), Some(chain)) = (fullchain, cert, key, chain)
    else {
        // The full chain is renamed last: until it is first seen, the first install is in
        // progress (or a crash interrupted it). After that, nothing may disappear.
        if ever {
            report.failures.push(format!(
                "{}: a file of the installed set disappeared",
                w.name
            ));
        }
        return;
    };
    installed.insert(w.name.clone());
    report.sets_read += 1;
    let mut fail = |what: &str, len: usize, e: String| {
        report.failures.push(format!(
            "{}: {what} ({len} bytes) does not parse (half-written?): {e}",
            w.name
        ));
    };
    let full = match pki::parse_pem_chain(&fullchain) {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            fail("fullchain.pem", fullchain.len(), "empty".into());
            None
        }
        Err(e) => {
            fail("fullchain.pem", fullchain.len(), e.to_string());
            None
        }
    };
    let leaf = pki::parse_cert(&cert)
        .map_err(|e| fail("cert.pem", cert.len(), e.to_string()))
        .ok();
    let private = pki::PrivateKey::from_pem(&key)
        .map_err(|e| fail("privkey.pem", key.len(), e.to_string()))
        .ok();
    match pki::parse_pem_chain(&chain) {
        Ok(c) if !c.is_empty() => {}
        Ok(_) => fail("chain.pem", chain.len(), "empty".into()),
        Err(e) => fail("chain.pem", chain.len(), e.to_string()),
    }
    let (Some(full), Some(leaf), Some(private)) = (full, leaf, private) else {
        return;
    };
    for n in &w.names {
        if !install::names_covered(&leaf, n) {
            report
                .failures
                .push(format!("{}: cert.pem does not cover {n}", w.name));
        }
    }
    report
        .seen
        .entry(w.name.clone())
        .or_default()
        .insert(leaf.sha256_fingerprint_hex.clone());
    for (file, c) in [("cert.pem", &leaf), ("fullchain.pem", &full[0])] {
        if !pki::key_matches_cert(&private, c) {
            report.windows.push(Window {
                name: w.name.clone(),
                file,
                cert_fingerprint: c.sha256_fingerprint_hex.clone(),
                key_pem: key.clone(),
            });
        }
    }
}
