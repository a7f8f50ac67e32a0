//! Crash loop: the real `ccm-agent run` binary, renewing four certificates (PCA CSR mode with
//! EC and RSA keys, apply mode) about once a second, killed with SIGKILL at random points again
//! and again, against an emulator that lives in the test process and so survives every kill.
//!
//! Kill points: a random delay after the start (0–2.5 s, or 0–0.4 s: often in the startup
//! recovery), a new issuance in the journal (plus 0–40 ms: the create call, the export, the
//! install), a new install transaction directory (plus 0–3 ms: preparing, committing,
//! swapping), or a transaction seen committed (at once, found by busy polling: between the
//! renames).
//!
//! Asserted, after each kill (the process is dead, the files are as the crash left them):
//! - every file of every installed set parses: a crash never leaves a half-written file;
//! - certificate and key match, or the key is the new key of a *committed* install transaction
//!   (`<state>/certs/<name>/txn/`) whose certificate has not been renamed yet: the documented
//!   window between the renames, which recovery at the next start completes.
//!
//! After each restart: within 30 s every pair matches and is valid, and a certificate that a
//! committed transaction was installing is in place (or a newer one). Throughout, a thread
//! reads the files in a loop (see `tests/file_observer/mod.rs`). At the end, a last start with a calm schedule
//! finishes whatever the last crash left, stops on SIGTERM with exit code 0, and then: every
//! certificate is valid, matches its key, covers its names, chains to the emulator's root and
//! is ISSUED in PCA; no temp file is left beside the outputs; and per certificate, the
//! certificates PCA issued that were never installed number at most one per crash (the
//! journal's promise: only a crash between sending a create and recording its answer can cost
//! one, and only when reconciliation cannot find the lost certificate).
//!
//! `CCM_CRASH_ITERATIONS` (default 40) sets the number of kills, `CCM_CRASH_SEED` replays the
//! kill schedule (the timing of the agent itself still varies from run to run).

#![allow(clippy::unwrap_used)]

mod file_observer;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ccm_agent::emulator::{Emulator, EmulatorConfig, Shared};
use ccm_agent::install::{self, OutputPaths};
use ccm_agent::pki;
use ccm_agent::state::Records;
use file_observer::{Lineage, Observer, Watched};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How long a restarted agent gets to repair what a crash left (CI shares two cores).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// How long to wait for the agent to journal an issuance (it renews on every pass).
const KILL_POINT_DEADLINE: Duration = Duration::from_secs(30);
/// How long to look for an install transaction (a few milliseconds each) before killing anyway.
const SWAP_WAIT: Duration = Duration::from_secs(10);

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

struct Spec {
    name: &'static str,
    mode: &'static str,
    alg: &'static str,
}

const SPECS: [Spec; 4] = [
    Spec {
        name: "a-csr",
        mode: "csr",
        alg: "EC256",
    },
    Spec {
        name: "b-csr-rsa",
        mode: "csr",
        alg: "RSA2048",
    },
    Spec {
        name: "c-apply",
        mode: "apply",
        alg: "EC256",
    },
    Spec {
        name: "d-csr-p384",
        mode: "csr",
        alg: "EC384",
    },
];

fn cn(name: &str) -> String {
    format!("{name}.crash.test")
}

fn ip(i: usize) -> String {
    format!("10.9.{i}.1")
}

/// `renew_before`: "59m59s" renews a 1-hour certificate one second after it was issued, so
/// the agent renews on every pass of its 1-second schedule; the calm variant (2/3 of the
/// lifetime) lets the last run settle. Superseded certificates are "revoked" after 30 days,
/// i.e. never during the test: the record keeps every replaced id, which is how the test knows
/// what was installed.
fn config_text(dir: &Path, emu: &Emulator, ca_id: &str, calm: bool) -> String {
    let aksk = emu.aksk();
    let policy = if calm {
        "renew_at_fraction = 0.6667"
    } else {
        "renew_before = \"59m59s\""
    };
    let mut text = format!(
        r#"
[agent]
state_dir = "{dir}/state"
schedule = "* * * * * *"
host_id = "crash-host"
concurrency = 4
retry_initial = "200ms"
retry_max = "1s"

[metrics]
enabled = false

[cloud]
endpoint = "{endpoint}"
timeout = "10s"

[cloud.auth]
access_key = "{ak}"
secret_key_env = "CCM_CRASH_TEST_SK"
domain_id = "{domain}"

[defaults]
{policy}
jitter = 0

[defaults.output]
base_dir = "{dir}/live"
"#,
        dir = dir.display(),
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.unwrap_or_default(),
    );
    for (i, s) in SPECS.iter().enumerate() {
        text.push_str(&format!(
            r#"
[[certificates]]
name = "{name}"
[certificates.pca]
ca_id = "{ca_id}"
mode = "{mode}"
key_algorithm = "{alg}"
subject = {{ common_name = "{cn}" }}
sans = ["dns:{cn}", "ip:{ip}"]
validity = {{ type = "HOUR", value = 1 }}
revoke_superseded = true
revoke_grace = "30d"
"#,
            name = s.name,
            mode = s.mode,
            alg = s.alg,
            cn = cn(s.name),
            ip = ip(i),
        ));
    }
    text
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KillPoint {
    /// 0–2.5 s after the start.
    Random,
    /// 0–0.4 s after the start: often during the startup recovery and resume.
    Early,
    /// 0–40 ms after an issuance was journaled.
    Issuing,
    /// 0–3 ms after an install transaction directory appeared.
    Swapping,
    /// As soon as an install transaction is seen committed (busy polling).
    Committed,
}

struct Paths {
    state: PathBuf,
    live: PathBuf,
    logs: PathBuf,
}

impl Paths {
    fn out(&self, name: &str) -> OutputPaths {
        OutputPaths::certbot_layout(self.live.join(name))
    }
    fn txn(&self, name: &str, which: &str) -> PathBuf {
        self.state
            .join("certs")
            .join(ccm_agent::state::encode_name(name))
            .join(which)
    }
    fn journal(&self) -> PathBuf {
        self.state.join("journal")
    }
}

fn spawn(bin: &Path, config: &Path, log: &Path) -> Child {
    Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("CCM_CRASH_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The tickets of the issuances in the journal now.
fn journal_tickets(p: &Paths) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(p.journal()) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
            Some(v["ticket"].as_str()?.to_string())
        })
        .collect()
}

fn any_journal_entry(p: &Paths) -> bool {
    !journal_tickets(p).is_empty()
}

/// The install transaction directories there are now (`txn.tmp` being prepared, `txn`
/// committed), with their inode numbers, so that a new one can be told from a leftover.
fn txn_dirs(p: &Paths, which: &[&str]) -> BTreeSet<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    SPECS
        .iter()
        .flat_map(|s| which.iter().map(|w| p.txn(s.name, w)))
        .filter_map(|d| fs::metadata(&d).ok().map(|m| (d, m.ino())))
        .collect()
}

fn any_txn(p: &Paths) -> bool {
    !txn_dirs(p, &["txn.tmp", "txn"]).is_empty()
}

/// Waits until `cond` holds, polling every 200 µs (or without pause when `busy`); false after
/// the deadline.
fn wait_until_with(deadline: Duration, busy: bool, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > deadline {
            return false;
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    true
}

fn wait_until(deadline: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_with(deadline, false, cond)
}

/// Certificate, key, certificate again: a pair read while no swap of this name happened.
fn stable_pair(out: &OutputPaths) -> Option<(pki::CertInfo, bool)> {
    for _ in 0..100 {
        let c1 = fs::read_to_string(&out.cert).ok()?;
        let k = fs::read_to_string(&out.key).ok()?;
        let c2 = fs::read_to_string(&out.cert).ok()?;
        if c1 != c2 {
            continue;
        }
        let info = pki::parse_cert(&c1).ok()?;
        let key = pki::PrivateKey::from_pem(&k).ok()?;
        let ok = pki::key_matches_cert(&key, &info);
        return Some((info, ok));
    }
    None
}

/// When PCA created the certificate with this fingerprint (ms), from the emulator's state.
fn create_time(shared: &Shared, fingerprint: &str) -> Option<i64> {
    shared.with_state(|st| {
        st.pca
            .certs
            .values()
            .find(|c| {
                pki::parse_cert(&c.certificate_pem)
                    .is_ok_and(|i| i.sha256_fingerprint_hex == fingerprint)
            })
            .map(|c| c.create_time)
    })
}

#[derive(Default, Debug)]
struct CrashStates {
    /// A kill left an issuance journaled, by phase.
    journal_requested: u32,
    journal_issued: u32,
    /// A kill left an uncommitted (reverted at restart) or committed (completed) transaction.
    txn_uncommitted: u32,
    txn_committed: u32,
    /// A kill left certificate and key of different versions (committed transaction).
    torn_pairs: u32,
    /// A kill came before the first install of a certificate finished.
    not_yet_installed: u32,
}

/// What changed in the tallies: the state this crash left.
fn diff_states(before: &str, after: &CrashStates) -> String {
    let now = format!("{after:?}");
    let pairs = |s: &str| -> Vec<(String, u32)> {
        s.trim_start_matches("CrashStates {")
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect()
    };
    let changed: Vec<String> = pairs(before)
        .into_iter()
        .zip(pairs(&now))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, b)| format!("{} +{}", a.0, b.1 - a.1))
        .collect();
    if changed.is_empty() {
        "left nothing in flight".into()
    } else {
        format!("left {}", changed.join(", "))
    }
}

#[test]
fn sigkill_during_renewals_never_leaves_a_torn_pair_or_more_than_one_extra_issuance() {
    ccm_agent::cloud::install_crypto_provider();
    let started = Instant::now();
    let iterations: usize = env_num("CCM_CRASH_ITERATIONS").unwrap_or(40);
    let seed: u64 = env_num("CCM_CRASH_SEED").unwrap_or_else(|| rand::rng().random());
    println!("crash loop: seed {seed} (CCM_CRASH_SEED={seed} to replay), {iterations} kills");
    let mut rng = StdRng::seed_from_u64(seed);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let emu = rt
        .block_on(Emulator::start(EmulatorConfig::default()))
        .unwrap();
    let shared = emu.shared().clone();
    let (root_id, ca_id) = ccm_agent::emulator::pca::ca::create_active_ca_pair(
        &shared,
        "Crash Loop Root",
        "Crash Loop Issuing CA",
    )
    .unwrap();
    let root_pem = shared.with_state(|st| st.pca.cas[&root_id].certificate_pem.clone().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let p = Paths {
        state: dir.path().join("state"),
        live: dir.path().join("live"),
        logs: dir.path().join("logs"),
    };
    fs::create_dir_all(&p.logs).unwrap();
    let config = dir.path().join("agent.toml");
    fs::write(&config, config_text(dir.path(), &emu, &ca_id, false)).unwrap();
    let calm = dir.path().join("agent-calm.toml");
    fs::write(&calm, config_text(dir.path(), &emu, &ca_id, true)).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ccm-agent"));

    let observer = Observer::start(
        SPECS
            .iter()
            .enumerate()
            .map(|(i, s)| Watched {
                name: s.name.to_string(),
                dir: p.live.join(s.name),
                names: vec![cn(s.name), ip(i)],
            })
            .collect(),
        Duration::from_millis(1),
    );

    let mut states = CrashStates::default();
    let mut points: BTreeMap<KillPoint, u32> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    // Per name: the certificate a committed transaction was putting in place when the last kill
    // came; the restart must complete it.
    let mut expected: BTreeMap<&str, String> = BTreeMap::new();
    // Every certificate seen installed after a kill.
    let mut seen_after_kill: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut ever_installed: BTreeSet<&str> = BTreeSet::new();
    let mut kills = 0u32;
    let mut kill_times: Vec<time::OffsetDateTime> = Vec::new();
    let mut deferred_checks = 0u32;
    // Swapping / Committed kills that found no transaction in time (killed anyway).
    let mut missed = 0u32;

    for i in 0..iterations {
        let log = p.logs.join(format!("agent-{i:03}.log"));
        // What the last crash left: a kill point waits for something new.
        let old_tickets = journal_tickets(&p);
        let old_txns = txn_dirs(&p, &["txn.tmp", "txn"]);
        let mut child = spawn(&bin, &config, &log);
        let spawned = Instant::now();
        let point = if i == 0 {
            KillPoint::Random
        } else {
            match rng.random_range(0..20) {
                0..=4 => KillPoint::Random,
                5..=7 => KillPoint::Early,
                8..=12 => KillPoint::Issuing,
                13..=16 => KillPoint::Swapping,
                _ => KillPoint::Committed,
            }
        };
        *points.entry(point).or_default() += 1;

        // The restart repairs what the last kill left (unless this run is killed early, in the
        // middle of its own startup: then the next run is checked for both).
        if point != KillPoint::Early {
            let repaired = wait_until(RECOVERY_DEADLINE, || {
                SPECS.iter().all(|s| {
                    if !ever_installed.contains(s.name) {
                        return true;
                    }
                    let Some((info, true)) = stable_pair(&p.out(s.name)) else {
                        return false;
                    };
                    if !info.is_valid_at(time::OffsetDateTime::now_utc()) {
                        return false;
                    }
                    match expected.get(s.name) {
                        None => true,
                        Some(want) if *want == info.sha256_fingerprint_hex => true,
                        Some(want) => {
                            match (
                                create_time(&shared, want),
                                create_time(&shared, &info.sha256_fingerprint_hex),
                            ) {
                                (Some(w), Some(now)) => now > w,
                                _ => false,
                            }
                        }
                    }
                })
            });
            if !repaired {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "iteration {i}: the restart did not repair the files within {RECOVERY_DEADLINE:?} (expected {expected:?})\n{}",
                    log_tail(&log)
                );
            }
            expected.clear();
        } else {
            deferred_checks += 1;
        }

        let reached = match point {
            KillPoint::Random => {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..2500)));
                true
            }
            KillPoint::Early => {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
                true
            }
            KillPoint::Issuing => {
                let ok = wait_until(KILL_POINT_DEADLINE, || {
                    !journal_tickets(&p).is_subset(&old_tickets)
                });
                std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
                ok
            }
            // A transaction lives for milliseconds; one missed is not the agent's fault.
            KillPoint::Swapping => {
                let seen = wait_until(SWAP_WAIT, || {
                    !txn_dirs(&p, &["txn.tmp", "txn"]).is_subset(&old_txns)
                });
                missed += u32::from(!seen);
                std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
                true
            }
            KillPoint::Committed => {
                let seen = wait_until_with(SWAP_WAIT, true, || {
                    !txn_dirs(&p, &["txn"]).is_subset(&old_txns)
                });
                missed += u32::from(!seen);
                true
            }
        };
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "iteration {i}: the agent exited by itself ({status})\n{}",
                log_tail(&log)
            );
        }
        assert!(
            reached,
            "iteration {i}: the agent never reached the kill point {point:?}\n{}",
            log_tail(&log)
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        kill_times.push(time::OffsetDateTime::now_utc());
        let lived = spawned.elapsed();
        let before = format!("{states:?}");

        // What the crash left, with nothing running.
        for s in &SPECS {
            let out = p.out(s.name);
            let read = |path: &Path| fs::read_to_string(path).ok();
            let (cert, key, chain, full) = (
                read(&out.cert),
                read(&out.key),
                read(&out.chain),
                read(&out.fullchain),
            );
            let committed = p.txn(s.name, "txn");
            if committed.is_dir() {
                states.txn_committed += 1;
            }
            if p.txn(s.name, "txn.tmp").is_dir() {
                states.txn_uncommitted += 1;
            }
            let new_cert = fs::read_to_string(committed.join("new/cert.pem"))
                .ok()
                .and_then(|t| pki::parse_cert(&t).ok());
            if let Some(n) = &new_cert {
                expected.insert(s.name, n.sha256_fingerprint_hex.clone());
            }
            let (Some(cert), Some(key)) = (cert, key) else {
                if ever_installed.contains(s.name) {
                    failures.push(format!(
                        "kill {kills}: {}: certificate or key missing after an install",
                        s.name
                    ));
                } else {
                    states.not_yet_installed += 1;
                }
                continue;
            };
            let cert_info = match pki::parse_cert(&cert) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!(
                        "kill {kills}: {}: cert.pem ({} bytes) does not parse: {e}",
                        s.name,
                        cert.len()
                    ));
                    continue;
                }
            };
            let key_info = match pki::PrivateKey::from_pem(&key) {
                Ok(k) => k,
                Err(e) => {
                    failures.push(format!(
                        "kill {kills}: {}: privkey.pem ({} bytes) does not parse: {e}",
                        s.name,
                        key.len()
                    ));
                    continue;
                }
            };
            for (file, text) in [("chain.pem", &chain), ("fullchain.pem", &full)] {
                match text.as_deref().map(pki::parse_pem_chain) {
                    Some(Ok(c)) if !c.is_empty() => {}
                    // The first install renames the key, chain, cert, then the full chain.
                    None if !ever_installed.contains(s.name) && new_cert.is_some() => {}
                    other => failures.push(format!(
                        "kill {kills}: {}: {file} is missing or does not parse: {:?}",
                        s.name,
                        other.map(|r| r.map(|c| c.len()).map_err(|e| e.to_string()))
                    )),
                }
            }
            if pki::key_matches_cert(&key_info, &cert_info) {
                seen_after_kill
                    .entry(s.name)
                    .or_default()
                    .insert(cert_info.sha256_fingerprint_hex.clone());
            } else {
                // Only the window between the key's rename and the certificate's, with the
                // transaction committed: the key in place must be the new version's.
                let new_key_matches = new_cert
                    .as_ref()
                    .is_some_and(|n| pki::key_matches_cert(&key_info, n));
                if new_key_matches {
                    states.torn_pairs += 1;
                } else {
                    failures.push(format!(
                        "kill {kills}: {}: certificate {} and key do not match, and no committed transaction explains it",
                        s.name, cert_info.sha256_fingerprint_hex
                    ));
                }
            }
            if full.is_some() {
                ever_installed.insert(s.name);
            }
        }
        if let Ok(entries) = fs::read_dir(p.journal()) {
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().ends_with(".json") {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&fs::read(e.path()).unwrap()).unwrap();
                match v["phase"].as_str() {
                    Some("requested") => states.journal_requested += 1,
                    Some("issued") => states.journal_issued += 1,
                    other => failures.push(format!("journal entry with phase {other:?}")),
                }
            }
        }
        // One line per kill (shown by `--nocapture`, or with a failure).
        let log_lines = fs::read_to_string(&log).unwrap_or_default().lines().count();
        println!(
            "kill {kills}: {point:?} after {:.0} ms ({log_lines} log lines); {}",
            lived.as_secs_f64() * 1000.0,
            diff_states(&before, &states)
        );
        assert!(
            failures.is_empty(),
            "iteration {i} ({point:?}):\n{}\n{}",
            failures.join("\n"),
            log_tail(&log)
        );
    }

    // The last start: a calm schedule, so once the crash's leftovers are finished nothing is
    // due. Then SIGTERM, which must end the agent cleanly.
    // Settled: the status file rewritten by this run's first pass (so its signal handler is
    // installed too), no error, nothing in flight.
    use ccm_agent::state::StatusFile;
    let before = StatusFile::load(&p.state).unwrap_or_default().updated_at;
    let log = p.logs.join("agent-final.log");
    let mut child = spawn(&bin, &calm, &log);
    let settled = wait_until(Duration::from_secs(60), || {
        let status = StatusFile::load(&p.state).unwrap_or_default();
        status.updated_at.is_some()
            && status.updated_at != before
            && status.certificates.len() == SPECS.len()
            && status.certificates.iter().all(|c| c.last_error.is_none())
            && !any_journal_entry(&p)
            && !any_txn(&p)
    });
    assert!(settled, "the last start did not settle\n{}", log_tail(&log));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent ignored SIGTERM\n{}", log_tail(&log));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit on SIGTERM: {status}\n{}",
        log_tail(&log)
    );
    let report = observer.finish();

    // ---- accounting ----
    let now = shared.now();
    let now_ms = now.unix_timestamp() * 1000;
    let records = Records::new(&p.state);
    let pca: Vec<_> = shared.with_state(|st| st.pca.certs.values().cloned().collect());
    let mut lineages: BTreeMap<String, Lineage> = BTreeMap::new();
    let (mut issued_total, mut installed_total, mut extra_total) = (0usize, 0usize, 0usize);
    let mut per_name = Vec::new();
    for (i, s) in SPECS.iter().enumerate() {
        let out = p.out(s.name);
        let cert_pem = fs::read_to_string(&out.cert).unwrap();
        let chain_pem = fs::read_to_string(&out.chain).unwrap();
        let info = pki::parse_cert(&cert_pem).unwrap();
        let key = pki::PrivateKey::from_pem(&fs::read_to_string(&out.key).unwrap()).unwrap();
        if !pki::key_matches_cert(&key, &info) {
            failures.push(format!("{}: the final key does not match", s.name));
        }
        for n in [cn(s.name), ip(i)] {
            if !install::names_covered(&info, &n) {
                failures.push(format!("{}: does not cover {n}", s.name));
            }
        }
        if let Err(e) = pki::verify_chain(&cert_pem, &chain_pem, &root_pem, now) {
            failures.push(format!("{}: chain: {e}", s.name));
        }
        let mut mine: Vec<_> = pca
            .iter()
            .filter(|c| c.distinguished_name.common_name.as_deref() == Some(cn(s.name).as_str()))
            .collect();
        mine.sort_by_key(|c| c.create_time);
        let fingerprint = |c: &ccm_agent::emulator::pca::cert::CertRecord| {
            pki::parse_cert(&c.certificate_pem)
                .unwrap()
                .sha256_fingerprint_hex
        };
        let record = records.load(s.name).unwrap();
        match mine
            .iter()
            .find(|c| fingerprint(c) == info.sha256_fingerprint_hex)
        {
            Some(c) if c.effective_status(now_ms) == "ISSUED" => {
                if record.cloud_id.as_deref() != Some(c.id.as_str()) {
                    failures.push(format!(
                        "{}: the record names {:?}, the files hold {}",
                        s.name, record.cloud_id, c.id
                    ));
                }
            }
            Some(c) => failures.push(format!(
                "{}: the installed certificate is {} in PCA",
                s.name,
                c.effective_status(now_ms)
            )),
            None => failures.push(format!(
                "{}: the installed certificate is unknown to PCA",
                s.name
            )),
        }
        // Installed at some point: the record's current and superseded ids, and whatever the
        // observer or a post-kill look saw on disk.
        let mut installed: BTreeSet<String> = record
            .superseded
            .iter()
            .map(|x| x.cloud_id.clone())
            .chain(record.cloud_id.clone())
            .collect();
        let seen: BTreeSet<&String> = report
            .seen
            .get(s.name)
            .into_iter()
            .flatten()
            .chain(seen_after_kill.get(s.name).into_iter().flatten())
            .collect();
        for c in &mine {
            if seen.contains(&fingerprint(c)) {
                installed.insert(c.id.clone());
            }
        }
        let issued = mine.len();
        let never_installed: Vec<&str> = mine
            .iter()
            .filter(|c| !installed.contains(&c.id))
            .map(|c| c.id.as_str())
            .collect();
        issued_total += issued;
        installed_total += issued - never_installed.len();
        extra_total += never_installed.len();
        if never_installed.len() > kills as usize {
            failures.push(format!(
                "{}: {} certificates issued and never installed ({never_installed:?}) for {kills} crashes",
                s.name,
                never_installed.len()
            ));
        }
        // Where each one came from: its creation relative to the nearest kill, and whether
        // the agent sent the same journaled key again (CSR mode, after reconciling found
        // nothing: the lost request was still being processed).
        let explained: Vec<String> = mine
            .iter()
            .filter(|c| !installed.contains(&c.id))
            .map(|c| {
                let created = c.create_time;
                let nearest = kill_times
                    .iter()
                    .enumerate()
                    .map(|(k, t)| (k + 1, created - t.unix_timestamp_nanos() as i64 / 1_000_000))
                    .min_by_key(|(_, d)| d.abs());
                let info = pki::parse_cert(&c.certificate_pem).unwrap();
                let twin = mine.iter().any(|o| {
                    o.id != c.id
                        && installed.contains(&o.id)
                        && pki::parse_cert(&o.certificate_pem).unwrap().public_key_der
                            == info.public_key_der
                });
                match nearest {
                    Some((k, d)) => format!(
                        "created {d:+} ms from kill {k}{}",
                        if twin {
                            ", its key reused by an installed one"
                        } else {
                            ""
                        }
                    ),
                    None => "created with no kill before it".into(),
                }
            })
            .collect();
        per_name.push(format!(
            "{} {}: {issued} issued, {} never installed{}",
            s.name,
            s.mode,
            never_installed.len(),
            if explained.is_empty() {
                String::new()
            } else {
                format!(" ({})", explained.join("; "))
            }
        ));
        lineages.insert(
            s.name.to_string(),
            mine.iter()
                .map(|c| pki::parse_cert(&c.certificate_pem).unwrap())
                .collect(),
        );
        // Recovery removes the temps of interrupted transactions.
        for e in fs::read_dir(p.live.join(s.name)).unwrap().flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with('.') {
                failures.push(format!("{}: leftover temp file {f}", s.name));
            }
        }
    }
    failures.extend(report.failures.iter().cloned());
    failures.extend(report.check_windows(&lineages));

    println!(
        "crash loop: {kills} SIGKILLs in {:.1}s (kill points {points:?}, {missed} of them found no transaction in time; {deferred_checks} restarts checked together with the next one)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "crash loop: crashes left {} issuances journaled as requested and {} as issued, {} uncommitted and {} committed install transactions, {} torn pairs (key renamed, certificate not yet: completed at restart), {} first installs unfinished",
        states.journal_requested,
        states.journal_issued,
        states.txn_uncommitted,
        states.txn_committed,
        states.torn_pairs,
        states.not_yet_installed
    );
    println!(
        "crash loop: PCA issued {issued_total} certificates, {installed_total} of them installed, {extra_total} extra issuances (allowed: at most {kills} per certificate); {}",
        per_name.join("; ")
    );
    println!(
        "crash loop: observer: {} sweeps, {} file sets read, {} cert/key windows (key of the next version), {} failures",
        report.sweeps,
        report.sets_read,
        report.windows.len(),
        report.failures.len()
    );
    drop(emu);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Found by the loop above (a kill while the agent deleted a finished transaction directory):
/// `remove_dir_all` had taken `txn/manifest.json` but not yet `txn/`, and every later start
/// failed with "cannot read .../txn/manifest.json" before doing anything. The state such a
/// crash leaves, for the recovery every start runs.
#[test]
fn a_crash_while_deleting_a_finished_transaction_does_not_stop_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = ccm_agent::state::StateDir::new(dir.path());
    let cert = state.cert_dir("web");
    // What the old code's interrupted `remove_dir_all(txn)` leaves (the manifest unlinked,
    // the directory not yet), and what the new one's interrupted delete of `txn.done` leaves.
    fs::create_dir_all(cert.join("txn")).unwrap();
    fs::create_dir_all(cert.join("txn.done/new")).unwrap();
    fs::write(cert.join("txn.done/new/cert.pem"), "partial").unwrap();
    let done = install::recover(&state).unwrap_or_else(|e| panic!("recovery failed: {e}"));
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(!cert.join("txn").exists() && !cert.join("txn.done").exists());
    assert!(install::recover(&state).unwrap().is_empty(), "nothing left");
}
