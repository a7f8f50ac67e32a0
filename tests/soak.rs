//! Fault soak: the daemon loop (`daemon::run`, in process) against the emulator while a fifth of
//! every request fails (5xx, 429, client timeouts, dropped connections, truncated bodies,
//! tokens expired mid-request), over several renewal rounds of two dozen certificates (PCA CSR
//! and apply mode, SCM), first with AK/SK and then with IAM password tokens that the emulator
//! keeps expiring. A thread reads every output file in a loop the whole time.
//!
//! Asserted:
//! - every certificate converges each round (a new PCA certificate, the newest SCM import) and
//!   at the end is valid, matches its key, covers its names, has a chain that verifies to the
//!   emulator's root, and is one the emulator holds as ISSUED (PCA) or imported (SCM);
//! - the observer never read a file that does not parse, never a file set that vanished, and
//!   every certificate/key mismatch it read is the swap window the install module documents
//!   (the key of a *later* version; see `tests/file_observer/mod.rs`);
//! - nothing was issued more than once per renewal: per PCA name the emulator holds exactly
//!   one certificate per round plus the first, as many as the agent counted renewals
//!   (`ccm_agent_renewals_total{result="ok"}` over both daemon runs), and every create call
//!   PCA handled made one of them; per SCM name, one re-export per import.
//!
//! Faults rotate every 200–900 ms, one rule per service plus one for each create call, each
//! hitting 20% of its requests. Creates never get an answer that arrives after the client's
//! timeout (see `pick_for_create`); a create whose answer is lost after PCA made the
//! certificate (a truncated body) is in the mix, and must be reconciled, not repeated.
//!
//! Length: `CCM_SOAK_ROUNDS` (default 6) rounds of `CCM_SOAK_CERTS` (default 24) certificates;
//! `CCM_SOAK_SEED` replays the test's own choices (fault schedule); the emulator rolls each
//! fault's rate with its own randomness, so a replay is similar, not identical.

#![allow(clippy::unwrap_used)]

mod file_observer;
mod prom_text;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ccm_agent::agent::daemon::{self, RunOptions};
use ccm_agent::clock::Clock;
use ccm_agent::cloud::Credentials;
use ccm_agent::config::Config;
use ccm_agent::emulator::{Emulator, EmulatorConfig, FaultRule, Shared};
use ccm_agent::install::{self, InstalledState, OutputPaths};
use ccm_agent::pki;
use ccm_agent::state::StatusFile;
use ccm_agent::state::{Journal, StateDir};
use file_observer::{Lineage, Observer, Watched};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio_util::sync::CancellationToken;

/// Each round moves the emulator's clock in two steps: past the revocation grace (1 h) of the
/// certificates the last round superseded, which are still valid then, and after a few passes
/// of the daemon past the renewal point of a 1-day certificate renewed at half its life (13 h
/// in all, short of the emergency floor).
const REVOKE_STEP: time::Duration = time::Duration::hours(2);
const RENEW_STEP: time::Duration = time::Duration::hours(11);
/// How long one round may take to converge (generous: CI shares two cores).
const ROUND_DEADLINE: Duration = Duration::from_secs(150);
/// Chance that a request is hit while a fault rule is in force.
const FAULT_RATE: f64 = 0.2;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn seed() -> u64 {
    match std::env::var("CCM_SOAK_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("CCM_SOAK_SEED={v:?} is not a number")),
        Err(_) => rand::rng().random(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Csr,
    Apply,
    Scm,
}

#[derive(Clone, Debug)]
struct Spec {
    name: String,
    kind: Kind,
    cn: String,
    /// DNS and IP names the certificate must cover.
    names: Vec<String>,
    /// The SCM certificate name it follows (SCM only).
    scm_name: String,
}

fn specs(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let kind = match i % 4 {
                0 | 1 => Kind::Csr,
                2 => Kind::Apply,
                _ => Kind::Scm,
            };
            let tag = match kind {
                Kind::Csr => "csr",
                Kind::Apply => "apply",
                Kind::Scm => "scm",
            };
            let name = format!("c{i:02}-{tag}");
            let cn = format!("{name}.soak.test");
            let mut names = vec![cn.clone()];
            if kind != Kind::Scm {
                names.push(format!("10.0.{i}.1"));
            }
            Spec {
                scm_name: format!("scm-{name}"),
                name,
                kind,
                cn,
                names,
            }
        })
        .collect()
}

fn config_text(dir: &Path, emu: &Emulator, ca_id: &str, specs: &[Spec]) -> String {
    let aksk = emu.aksk();
    let mut text = format!(
        r#"
[agent]
state_dir = "{dir}/state"
schedule = "* * * * * *"
host_id = "soak-host"
concurrency = 8
retry_initial = "500ms"
retry_max = "2s"

[cloud]
endpoint = "{endpoint}"
timeout = "2s"

[cloud.auth]
access_key = "{ak}"
secret_key_env = "CCM_SOAK_SK_UNUSED"
domain_id = "{domain}"

[defaults]
renew_at_fraction = 0.5
jitter = 0

[defaults.output]
base_dir = "{dir}/live"
"#,
        dir = dir.display(),
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.unwrap_or_default(),
    );
    for (i, s) in specs.iter().enumerate() {
        match s.kind {
            Kind::Scm => text.push_str(&format!(
                "\n[[certificates]]\nname = \"{}\"\n[certificates.scm]\nname = \"{}\"\n",
                s.name, s.scm_name
            )),
            Kind::Csr | Kind::Apply => {
                let (mode, alg) = match (s.kind, i % 8) {
                    (Kind::Csr, 1) => ("csr", "RSA2048"),
                    (Kind::Csr, _) => ("csr", "EC256"),
                    _ => ("apply", "EC256"),
                };
                let revoke = if i % 3 == 0 {
                    "revoke_superseded = true\nrevoke_grace = \"1h\"\n"
                } else {
                    ""
                };
                text.push_str(&format!(
                    r#"
[[certificates]]
name = "{name}"
[certificates.pca]
ca_id = "{ca_id}"
mode = "{mode}"
key_algorithm = "{alg}"
subject = {{ common_name = "{cn}", organization = "Soak" }}
sans = ["dns:{cn}", "ip:{ip}"]
validity = {{ type = "DAY", value = 1 }}
extended_key_usage = ["server_auth"]
{revoke}"#,
                    name = s.name,
                    cn = s.cn,
                    ip = s.names[1],
                ));
            }
        }
    }
    text
}

/// The emulator's SCM side: a "public" CA and the newest import per certificate.
struct ScmImports {
    ca: (String, pki::PrivateKey),
    /// name → SHA-256 fingerprint of the newest import.
    newest: BTreeMap<String, String>,
    count: usize,
}

impl ScmImports {
    async fn import_all(&mut self, emu: &Emulator, specs: &[Spec]) {
        let client = emu.client().unwrap();
        let now = emu.shared().now();
        // Each import outlives the one before, so it is the newest valid one.
        let not_after = now + time::Duration::days(10);
        for s in specs.iter().filter(|s| s.kind == Kind::Scm) {
            let (cert, key) = ccm_agent::emulator::scm::demo_leaf(
                &self.ca,
                &s.cn,
                &[],
                now - time::Duration::hours(1),
                not_after,
            )
            .unwrap();
            let fp = pki::parse_cert(&cert).unwrap().sha256_fingerprint_hex;
            client
                .scm_import_certificate(
                    &ccm_agent::cloud::scm::ImportCertificateRequest::new(&s.scm_name, cert, key)
                        .chain(&self.ca.0),
                )
                .await
                .unwrap();
            self.newest.insert(s.name.clone(), fp);
            self.count += 1;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum FaultKind {
    Status(u16),
    Timeout,
    Slow,
    Drop,
    Truncate,
    ExpireTokens,
    Latency,
}

fn fault_rule(operation: &str, kind: FaultKind) -> FaultRule {
    let base = FaultRule {
        rate: FAULT_RATE,
        ..FaultRule::new(operation)
    };
    match kind {
        FaultKind::Status(s) => FaultRule {
            status: Some(s),
            ..base
        },
        FaultKind::Timeout => FaultRule {
            timeout: true,
            ..base
        },
        // Answers after the client's 2 s timeout, having done the work.
        FaultKind::Slow => FaultRule {
            latency_ms: 2500,
            ..base
        },
        FaultKind::Drop => FaultRule {
            drop_connection: true,
            ..base
        },
        FaultKind::Truncate => FaultRule {
            truncate_body: true,
            ..base
        },
        FaultKind::ExpireTokens => FaultRule {
            expire_tokens: true,
            ..base
        },
        FaultKind::Latency => FaultRule {
            latency_ms: 300,
            ..base
        },
    }
}

/// A create answered late is still being processed when the agent, having timed out, lists to
/// reconcile; it finds nothing and issues again, which is the inherent cost of an API without
/// idempotency tokens, not a bug, and would make the issuance count a matter of timing. The
/// "processed, answer lost" case is covered by `Truncate` (the handler ran before the client
/// saw the failure), which the agent must reconcile deterministically.
fn pick_for_create(rng: &mut StdRng) -> FaultKind {
    loop {
        let k = pick(rng);
        if !matches!(k, FaultKind::Slow) {
            return k;
        }
    }
}

fn pick(rng: &mut StdRng) -> FaultKind {
    // Timeouts cost a client timeout each: rarer than the rest.
    match rng.random_range(0..20) {
        0..=3 => FaultKind::Status(500),
        4..=5 => FaultKind::Status(503),
        6 => FaultKind::Status(429),
        7 => FaultKind::Timeout,
        8 => FaultKind::Slow,
        9..=11 => FaultKind::Drop,
        12..=14 => FaultKind::Truncate,
        15..=17 => FaultKind::ExpireTokens,
        _ => FaultKind::Latency,
    }
}

/// Replaces the fault rules every few hundred milliseconds (one rule per service, each hitting
/// [`FAULT_RATE`] of its requests) and, with token auth, expires every token now and then.
struct FaultStorm {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl FaultStorm {
    fn start(shared: Shared, seed: u64, expire_tokens: bool) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut rotations, mut expiries) = (0u64, 0u64);
            while !token.is_cancelled() {
                shared.clear_faults();
                // The first matching rule applies: creates get their own, never `Slow` (see
                // `pick_for_create`), then one per service.
                for op in ["pca.create_certificate", "pca.create_certificate_by_csr"] {
                    shared.add_fault(fault_rule(op, pick_for_create(&mut rng)));
                }
                for op in ["pca.*", "scm.*", "iam.*"] {
                    shared.add_fault(fault_rule(op, pick(&mut rng)));
                }
                rotations += 1;
                if expire_tokens && rng.random_bool(0.15) {
                    shared.expire_tokens();
                    expiries += 1;
                }
                let pause = Duration::from_millis(rng.random_range(200..900));
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            shared.clear_faults();
            (rotations, expiries)
        });
        FaultStorm { stop, task }
    }

    async fn stop(self, shared: &Shared) -> (u64, u64) {
        self.stop.cancel();
        let r = self.task.await.unwrap();
        shared.clear_faults();
        r
    }
}

/// Reads the emulator's request log as it grows (it keeps the last 10 000) and counts.
#[derive(Default, Debug)]
struct RequestTally {
    total: u64,
    faults: BTreeMap<String, u64>,
    by_auth: BTreeMap<String, u64>,
    unauthorized: u64,
    /// Create calls the handler ran (answered 200, perhaps late or truncated; a dropped
    /// connection also says 200 but the handler never ran).
    creates_handled: u64,
    revokes_handled: u64,
    reconcile_listings: u64,
    revoked_listings: u64,
    gaps: u64,
}

fn tally_task(shared: Shared, stop: CancellationToken) -> tokio::task::JoinHandle<RequestTally> {
    tokio::spawn(async move {
        let mut t = RequestTally::default();
        // Sequence numbers are taken before the log lock, so entries may land out of order:
        // remember every one seen rather than a high-water mark.
        let mut seen = BTreeSet::new();
        loop {
            let done = stop.is_cancelled();
            for r in shared.requests() {
                if !seen.insert(r.seq) {
                    continue;
                }
                t.total += 1;
                if let Some(f) = &r.fault {
                    *t.faults.entry(f.clone()).or_default() += 1;
                }
                *t.by_auth.entry(r.auth.clone()).or_default() += 1;
                if r.status == 401 {
                    t.unauthorized += 1;
                }
                let handled = (200..300).contains(&r.status) && r.fault.as_deref() != Some("drop");
                match r.operation.as_str() {
                    "pca.create_certificate" | "pca.create_certificate_by_csr" if handled => {
                        t.creates_handled += 1;
                    }
                    "pca.revoke_certificate" if handled => t.revokes_handled += 1,
                    // The agent lists PCA certificates for a pass's revocation statuses and
                    // to reconcile an unknown outcome.
                    "pca.list_certificate" if r.query.contains("status=REVOKED") => {
                        t.revoked_listings += 1;
                    }
                    "pca.list_certificate" => t.reconcile_listings += 1,
                    _ => {}
                }
            }
            if done {
                t.gaps = seen.last().copied().unwrap_or(0) - seen.len() as u64;
                return t;
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    })
}

struct Daemon {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: String,
    cycles: Arc<AtomicU64>,
}

async fn start_daemon(
    config: Arc<Config>,
    credentials: Credentials,
    shared: Shared,
    cycles: Arc<AtomicU64>,
) -> Daemon {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon::run(
        config,
        credentials,
        RunOptions {
            clock: Clock::from_fn(move || shared.now()),
            metrics_listener: Some(listener),
            shutdown: shutdown.clone(),
            on_cycle: Some(Box::new({
                let cycles = cycles.clone();
                move |_| {
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            })),
            notifier: ccm_agent::systemd::Notifier::disabled(),
            reload_config: None,
            config_path: None,
        },
    ));
    Daemon {
        shutdown,
        task,
        metrics,
        cycles,
    }
}

impl Daemon {
    /// Scrapes the metrics one last time, then stops the daemon.
    async fn stop(self) -> String {
        // `converge` sees a pass's files as soon as they are installed, which can be before that
        // pass has recorded its renewals in the metrics. A pass is counted only once it has
        // finished recording, so after one more the converging pass is in the scrape.
        wait_cycles(&self.cycles, 1).await;
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the daemon stops within a minute")
            .expect("join")
            .expect("the daemon ends cleanly");
        text
    }
}

/// The value of `name{labels…}` in a Prometheus text, 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    prom_text::sample(text, name, labels).unwrap_or(0.0)
}

fn installed_fingerprint(dir: &Path) -> Option<String> {
    match install::read_installed(&OutputPaths::certbot_layout(dir)) {
        InstalledState::Present(c) => Some(c.fingerprint_sha256.to_ascii_uppercase()),
        _ => None,
    }
}

/// Waits until every certificate has a new version (PCA: one not installed before, with the
/// journal entry completed; SCM: the newest import). Returns the fingerprints installed.
async fn converge(
    round: usize,
    specs: &[Spec],
    live: &Path,
    journal: &Journal,
    before: &BTreeMap<String, BTreeSet<String>>,
    scm: &ScmImports,
    state: &Path,
) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let mut now_installed = BTreeMap::new();
        let mut waiting = Vec::new();
        for s in specs {
            let fp = installed_fingerprint(&live.join(&s.name));
            let done = match (&fp, s.kind) {
                (Some(fp), Kind::Scm) => scm.newest.get(&s.name) == Some(fp),
                (Some(fp), _) => {
                    !before.get(&s.name).is_some_and(|b| b.contains(fp))
                        && journal.pending(&s.name).unwrap().is_none()
                }
                (None, _) => false,
            };
            match (done, fp) {
                (true, Some(fp)) => {
                    now_installed.insert(s.name.clone(), fp);
                }
                _ => waiting.push(s.name.clone()),
            }
        }
        if waiting.is_empty() {
            return now_installed;
        }
        if start.elapsed() > ROUND_DEADLINE {
            let status = StatusFile::load(state).unwrap_or_default();
            let errors: Vec<String> = status
                .certificates
                .iter()
                .filter(|c| waiting.contains(&c.name))
                .map(|c| format!("{}: {} {:?}", c.name, c.last_result, c.last_error))
                .collect();
            panic!(
                "round {round}: not converged after {ROUND_DEADLINE:?}: {waiting:?}\n{}",
                errors.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the daemon finished `n` more passes (a minute at most: a pass under faults can
/// wait out client timeouts and retries).
async fn wait_cycles(cycles: &AtomicU64, n: u64) {
    let target = cycles.load(Ordering::Relaxed) + n;
    let start = Instant::now();
    while cycles.load(Ordering::Relaxed) < target {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the daemon stopped making passes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cert_sha256(pem: &str) -> String {
    pki::parse_cert(pem).unwrap().sha256_fingerprint_hex
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_converge_under_faults_without_torn_files_or_extra_issuance() {
    ccm_agent::cloud::install_crypto_provider();
    let started = Instant::now();
    let rounds = env_usize("CCM_SOAK_ROUNDS", 6).max(2);
    let count = env_usize("CCM_SOAK_CERTS", 24).max(4);
    let seed = seed();
    println!(
        "soak: seed {seed} (CCM_SOAK_SEED={seed} to replay), {rounds} rounds, {count} certificates"
    );

    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let shared = emu.shared().clone();
    let s2 = shared.clone();
    let (root_id, ca_id) = tokio::task::spawn_blocking(move || {
        ccm_agent::emulator::pca::ca::create_active_ca_pair(&s2, "Soak Root", "Soak Issuing CA")
            .unwrap()
    })
    .await
    .unwrap();
    let root_pem = shared.with_state(|st| st.pca.cas[&root_id].certificate_pem.clone().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let state = dir.path().join("state");
    let specs = specs(count);
    let text = config_text(dir.path(), &emu, &ca_id, &specs);
    let config = Arc::new(Config::from_str(&text, "soak.toml").unwrap_or_else(|e| panic!("{e}")));
    let mut scm = ScmImports {
        ca: ccm_agent::emulator::scm::demo_ca(shared.now()).unwrap(),
        newest: BTreeMap::new(),
        count: 0,
    };
    scm.import_all(&emu, &specs).await;

    let observer = Observer::start(
        specs
            .iter()
            .map(|s| Watched {
                name: s.name.clone(),
                dir: live.join(&s.name),
                names: s.names.clone(),
            })
            .collect(),
        Duration::from_millis(1),
    );
    let tally_stop = CancellationToken::new();
    let tally = tally_task(shared.clone(), tally_stop.clone());
    let cycles = Arc::new(AtomicU64::new(0));
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut rotations, mut storm_expiries, mut explicit_expiries) = (0u64, 0u64, 0u64);
    let mut installed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut metrics_texts = Vec::new();
    let http = reqwest::Client::new();
    let journal = Journal::open(StateDir::new(&state).journal_dir()).unwrap();

    // Phase 1, AK/SK: the first issuance (round 0) and the first half of the rounds. Phase 2,
    // IAM password tokens, expired by the storm, by `expire_tokens` rules, by the control
    // endpoint and by the clock moves themselves.
    let half = rounds.div_ceil(2);
    let mut round = 0;
    for phase in 0..2 {
        let token_auth = phase == 1;
        let credentials = if token_auth {
            Credentials::Password(emu.password_identity())
        } else {
            Credentials::AkSk(emu.aksk())
        };
        let storm = FaultStorm::start(shared.clone(), rng.random(), token_auth);
        let daemon =
            start_daemon(config.clone(), credentials, shared.clone(), cycles.clone()).await;
        let last = if token_auth { rounds } else { half };
        let mut storm = Some(storm);
        loop {
            // Phase 2 starts where phase 1 converged.
            let fresh_start = token_auth && round == half;
            if !fresh_start {
                let fps = converge(round, &specs, &live, &journal, &installed, &scm, &state).await;
                for (name, fp) in fps {
                    installed.entry(name).or_default().insert(fp);
                }
                println!(
                    "soak: round {round} converged at {:.1}s ({} auth)",
                    started.elapsed().as_secs_f64(),
                    if token_auth { "token" } else { "aksk" }
                );
            }
            if round >= last {
                break;
            }
            // The next round: new SCM imports (with the faults off, they are the test's own
            // calls), then the clock past every PCA renewal point, then the storm again.
            round += 1;
            let (r, e) = storm.take().unwrap().stop(&shared).await;
            rotations += r;
            storm_expiries += e;
            scm.import_all(&emu, &specs).await;
            storm = Some(FaultStorm::start(shared.clone(), rng.random(), token_auth));
            shared.advance_clock(REVOKE_STEP);
            wait_cycles(&cycles, 2).await;
            shared.advance_clock(RENEW_STEP);
            if token_auth {
                let wait = Duration::from_millis(rng.random_range(0..1500));
                tokio::time::sleep(wait).await;
                let r = http
                    .post(format!("{}/_emulator/tokens/expire", emu.base_url()))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
                explicit_expiries += 1;
            }
        }
        let (r, e) = storm.take().unwrap().stop(&shared).await;
        rotations += r;
        storm_expiries += e;
        metrics_texts.push(daemon.stop().await);
    }

    // ---- the end state ----
    tally_stop.cancel();
    let tally = tally.await.unwrap();
    let report = observer.finish();
    assert!(
        journal.all_pending().unwrap().is_empty(),
        "no issuance left in flight"
    );
    let now = shared.now();
    let now_ms = now.unix_timestamp() * 1000;
    let pca_certs: Vec<_> = shared.with_state(|st| st.pca.certs.values().cloned().collect());
    let scm_certs: Vec<_> = shared.with_state(|st| st.scm.certificates().to_vec());
    let mut lineages: BTreeMap<String, Lineage> = BTreeMap::new();
    let mut problems = Vec::new();
    let (mut issued_total, mut renewals_total, mut revoked) = (0usize, 0usize, 0usize);
    for s in &specs {
        let d = live.join(&s.name);
        let p = OutputPaths::certbot_layout(&d);
        let read = |path: &PathBuf| std::fs::read_to_string(path).unwrap();
        let (cert_pem, chain_pem, full_pem, key_pem) = (
            read(&p.cert),
            read(&p.chain),
            read(&p.fullchain),
            read(&p.key),
        );
        let info = pki::parse_cert(&cert_pem).unwrap();
        let key = pki::PrivateKey::from_pem(&key_pem).unwrap();
        if !pki::key_matches_cert(&key, &info) {
            problems.push(format!("{}: the key does not match", s.name));
        }
        if !info.is_valid_at(now) {
            problems.push(format!("{}: not valid now", s.name));
        }
        for n in &s.names {
            if !install::names_covered(&info, n) {
                problems.push(format!("{}: does not cover {n}", s.name));
            }
        }
        if pki::parse_pem_chain(&full_pem).unwrap()[0].der != info.der {
            problems.push(format!("{}: fullchain.pem is not led by cert.pem", s.name));
        }
        let renewals = metrics_texts
            .iter()
            .map(|m| {
                sample(
                    m,
                    "ccm_agent_renewals_total",
                    &[("name", &s.name), ("result", "ok")],
                )
            })
            .sum::<f64>() as usize;
        renewals_total += renewals;
        let fp = info.sha256_fingerprint_hex.clone();
        match s.kind {
            Kind::Csr | Kind::Apply => {
                if let Err(e) = pki::verify_chain(&cert_pem, &chain_pem, &root_pem, now) {
                    problems.push(format!("{}: chain: {e}", s.name));
                }
                let mut mine: Vec<_> = pca_certs
                    .iter()
                    .filter(|c| c.distinguished_name.common_name.as_deref() == Some(&s.cn))
                    .collect();
                mine.sort_by_key(|c| c.create_time);
                revoked += mine.iter().filter(|c| c.status == "REVOKED").count();
                match mine.iter().find(|c| cert_sha256(&c.certificate_pem) == fp) {
                    Some(c) if c.effective_status(now_ms) == "ISSUED" => {}
                    Some(c) => problems.push(format!(
                        "{}: installed certificate {} is {} in PCA",
                        s.name,
                        c.id,
                        c.effective_status(now_ms)
                    )),
                    None => problems.push(format!(
                        "{}: installed certificate {fp} is unknown to PCA",
                        s.name
                    )),
                }
                let issued = mine.len();
                issued_total += issued;
                if issued != renewals || issued != rounds + 1 {
                    problems.push(format!(
                        "{}: {issued} issued in PCA for {renewals} renewals by the agent over {rounds} rounds plus the first (expected {} of each)",
                        s.name,
                        rounds + 1
                    ));
                }
                lineages.insert(
                    s.name.clone(),
                    mine.iter()
                        .map(|c| pki::parse_cert(&c.certificate_pem).unwrap())
                        .collect(),
                );
            }
            Kind::Scm => {
                if let Err(e) = pki::verify_chain(&cert_pem, &chain_pem, &scm.ca.0, now) {
                    problems.push(format!("{}: chain: {e}", s.name));
                }
                if scm.newest.get(&s.name) != Some(&fp) {
                    problems.push(format!("{}: not the newest SCM import", s.name));
                }
                if renewals != rounds + 1 {
                    problems.push(format!(
                        "{}: re-exported {renewals} times for {} imports",
                        s.name,
                        rounds + 1
                    ));
                }
                lineages.insert(
                    s.name.clone(),
                    scm_certs
                        .iter()
                        .filter(|c| c.name == s.scm_name)
                        .map(|c| pki::parse_cert(&c.certificate_pem).unwrap())
                        .collect(),
                );
            }
        }
    }
    problems.extend(report.failures.iter().cloned());
    problems.extend(report.check_windows(&lineages));
    if tally.gaps == 0 && tally.creates_handled as usize != issued_total {
        problems.push(format!(
            "{} create calls were handled by PCA but {issued_total} certificates exist",
            tally.creates_handled
        ));
    }
    let unanswered: f64 = metrics_texts
        .iter()
        .map(|m| {
            m.lines()
                .filter(|l| {
                    l.starts_with("ccm_agent_api_requests_total{") && l.contains("code=\"none\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum();
    let token_refreshes: f64 = metrics_texts
        .iter()
        .map(|m| sample(m, "ccm_agent_token_refreshes_total", &[]))
        .sum();

    println!(
        "soak: {rounds} rounds of {count} certificates in {:.1}s; {} passes of the daemon",
        started.elapsed().as_secs_f64(),
        cycles.load(Ordering::Relaxed)
    );
    println!(
        "soak: {} requests logged ({} log entries missed), faults injected {:?} (the log holds a `timeout` only once its 600 s are up: the agent saw {unanswered} requests end without a status: timeouts, dropped connections), by auth {:?}, {} answered 401",
        tally.total, tally.gaps, tally.faults, tally.by_auth, tally.unauthorized
    );
    println!(
        "soak: {rotations} fault-rule rotations; tokens expired {storm_expiries} times by the storm, {explicit_expiries} by POST /_emulator/tokens/expire, plus every `expire_tokens` fault; {token_refreshes} token fetches by the agent"
    );
    println!(
        "soak: PCA issued {issued_total} certificates ({} create calls handled) for {renewals_total} renewals and re-exports counted by the agent; {} SCM imports; {revoked} superseded certificates revoked ({} revoke calls handled); {} reconciliation listings, {} revocation-status listings",
        tally.creates_handled,
        scm.count,
        tally.revokes_handled,
        tally.reconcile_listings,
        tally.revoked_listings
    );
    println!(
        "soak: observer: {} sweeps, {} file sets read, {} cert/key windows (key of the next version), {} failures",
        report.sweeps,
        report.sets_read,
        report.windows.len(),
        report.failures.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
