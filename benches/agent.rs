//! Figures, not timed tests: the release `ccm-agent` binary (a separate process, so its memory
//! and CPU are its own) against the emulator (in this process) on loopback, with a fault rule
//! on `*` adding a fixed latency to every API call. Nothing here asserts on speed; the figures
//! are printed as a table and compared with the targets in BENCHMARKS.md.
//!
//! `cargo bench --bench agent` runs the full figures (1,000 and 10,000 certificates, 50 ms).
//! Without `--bench` in argv (`cargo test --all-targets` runs this binary too) it runs a smoke
//! version: 20 certificates, no latency, a few seconds, to check that the harness works.
//!
//! Options (after `--`): `--latency-ms N` (default 50), `--scm10k-latency-ms N` (default 5:
//! the SCM pass is sequential beyond 150 certificates, see BENCHMARKS.md), `--idle-secs N`
//! (default 60), `--only pca1k,pca10k,scm1k,scm10k,renew,nginx` (the names stand for the
//! default sizes), `--small N` / `--large N` (the sizes of the "1k" and "10k" fleets),
//! `--renewals N`, `--scrapes N`. The agent inherits the environment (`MALLOC_ARENA_MAX=2
//! cargo bench ...` reaches it).
//!
//! Setup: the emulator's state and the agent's installed files are written directly through
//! library functions (the emulator signs each certificate in memory; the agent's four PEM files
//! and its record are plain writes, no fsync), so 10,000 certificates take seconds, not the
//! hour real issuance would. "Due" certificates are issued with a `not_before` 25 days back on
//! a 30-day lifetime (past the default 2/3 renewal point whatever the jitter); the agent runs on
//! the system clock, so nothing else has to move.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/reload_common/mod.rs"]
mod reload_common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_agent::emulator::pca::cert::{IssueParams, issue_certificate};
use ccm_agent::emulator::{Emulator, EmulatorConfig, FaultRule, Shared};
use ccm_agent::pki;
use ccm_agent::state::records::CertRecord;
use time::OffsetDateTime;

const SK_ENV: &str = "CCM_BENCH_SK";
/// Agent concurrency in every scenario (`agent.concurrency`).
const CONCURRENCY: usize = 16;
/// Lifetime of every seeded certificate.
const LIFETIME_DAYS: i64 = 30;

#[derive(Clone, Debug)]
struct Opts {
    full: bool,
    latency_ms: u64,
    scm10k_latency_ms: u64,
    idle_secs: u64,
    only: Option<Vec<String>>,
    small: usize,
    large: usize,
    renewals: usize,
    scrapes: usize,
    nginx_rounds: usize,
}

impl Opts {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        let value = |name: &str| -> Option<String> {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let num = |name: &str, default: u64| -> u64 {
            value(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
            })
        };
        let mut o = if full {
            Opts {
                full,
                latency_ms: 50,
                scm10k_latency_ms: 5,
                idle_secs: 60,
                only: None,
                small: 1_000,
                large: 10_000,
                renewals: 1_000,
                scrapes: 30,
                nginx_rounds: 10,
            }
        } else {
            Opts {
                full,
                latency_ms: 0,
                scm10k_latency_ms: 0,
                idle_secs: 1,
                only: None,
                small: 20,
                large: 40,
                renewals: 20,
                scrapes: 5,
                nginx_rounds: 1,
            }
        };
        o.latency_ms = num("--latency-ms", o.latency_ms);
        o.scm10k_latency_ms = num("--scm10k-latency-ms", o.scm10k_latency_ms);
        o.idle_secs = num("--idle-secs", o.idle_secs);
        o.small = num("--small", o.small as u64) as usize;
        o.large = num("--large", o.large as u64) as usize;
        o.renewals = num("--renewals", o.renewals as u64) as usize;
        o.scrapes = num("--scrapes", o.scrapes as u64) as usize;
        o.only = value("--only").map(|v| v.split(',').map(str::to_owned).collect());
        o
    }

    fn wants(&self, what: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == what))
    }
}

/// One line of the results table.
struct Row {
    figure: String,
    value: String,
    target: String,
    detail: String,
}

fn row(figure: impl Into<String>, value: impl Into<String>, target: &str, detail: String) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        target: target.into(),
        detail,
    }
}

fn main() {
    let opts = Opts::parse();
    ccm_agent::cloud::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let rows = rt.block_on(run(&opts));
    println!();
    println!(
        "ccm-agent benchmarks ({} mode, agent binary {}, {} s in all)",
        if opts.full { "full" } else { "smoke" },
        agent_binary().display(),
        started.elapsed().as_secs()
    );
    println!("{}", machine());
    println!();
    println!("| figure | measured | target | detail |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.figure, r.value, r.target, r.detail
        );
    }
}

async fn run(opts: &Opts) -> Vec<Row> {
    let mut rows = Vec::new();
    let lat = opts.latency_ms;
    if opts.wants("pca1k") {
        let s = check_cycle(Source::Pca, opts.small, lat, opts, true, false).await;
        rows.extend(s);
    }
    if opts.wants("pca10k") {
        let s = check_cycle(Source::Pca, opts.large, lat, opts, false, true).await;
        rows.extend(s);
    }
    if opts.wants("scm1k") {
        let s = check_cycle(Source::Scm, opts.small, lat, opts, false, false).await;
        rows.extend(s);
    }
    if opts.wants("scm10k") {
        let s = check_cycle(
            Source::Scm,
            opts.large,
            opts.scm10k_latency_ms,
            opts,
            false,
            false,
        )
        .await;
        rows.extend(s);
    }
    if opts.wants("renew") {
        rows.extend(renewals(opts.renewals, lat).await);
    }
    if opts.wants("nginx") {
        rows.extend(nginx(opts.nginx_rounds).await);
    }
    rows
}

fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ccm-agent"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("machine: {cores} cores, {cpu}")
}

// ---- seeding ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Pca,
    Scm,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Pca => "PCA",
            Source::Scm => "SCM",
        }
    }
}

/// A seeded emulator, the agent's files and configuration for `n` certificates.
struct Fleet {
    emu: Emulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    metrics: String,
    seed_time: Duration,
}

impl Fleet {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

fn name_of(source: Source, i: usize) -> String {
    match source {
        Source::Pca => format!("pca-{i:05}"),
        Source::Scm => format!("scm-{i:05}"),
    }
}

fn is_due(i: usize, due_every: usize) -> bool {
    due_every > 0 && i.is_multiple_of(due_every)
}

fn window(due: bool, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let nb = if due {
        now - time::Duration::days(25)
    } else {
        now - time::Duration::hours(1)
    };
    (nb, nb + time::Duration::days(LIFETIME_DAYS))
}

/// The agent's installed files and record for one certificate, as its install writes them
/// (certbot layout under `live/<name>/`), without the fsyncs.
fn write_installed(dir: &Path, name: &str, cert: &str, chain: &str, key: &str, rec: &CertRecord) {
    use std::os::unix::fs::PermissionsExt as _;
    let live = dir.join("live").join(name);
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("cert.pem"), cert).unwrap();
    std::fs::write(live.join("chain.pem"), chain).unwrap();
    std::fs::write(live.join("fullchain.pem"), format!("{cert}{chain}")).unwrap();
    let key_path = live.join("privkey.pem");
    std::fs::write(&key_path, key).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let records = dir.join("state").join("renew");
    let mut json = serde_json::to_vec_pretty(rec).unwrap();
    json.push(b'\n');
    std::fs::write(
        records.join(format!("{}.json", ccm_agent::state::encode_name(name))),
        json,
    )
    .unwrap();
}

fn fingerprint(pem: &str) -> String {
    pki::parse_cert(pem).unwrap().sha256_fingerprint_hex
}

/// One PCA certificate: signed by the emulator (stored as a CSR-mode certificate whose key the
/// agent holds), installed on the agent's side.
fn seed_pca_one(
    shared: &Shared,
    ca: &ccm_agent::emulator::pca::ca::CaRecord,
    dir: &Path,
    i: usize,
    due: bool,
) {
    let name = name_of(Source::Pca, i);
    let cn = format!("{name}.bench.internal");
    let (nb, na) = window(due, shared.now());
    let params = IssueParams {
        subject: ccm_agent::emulator::wire::DistinguishedName {
            common_name: Some(cn.clone()),
            ..Default::default()
        },
        not_before: nb,
        not_after: na,
        key_usages: vec![pki::KeyUsage::DigitalSignature, pki::KeyUsage::KeyAgreement],
        extended_key_usages: vec![pki::ExtendedKeyUsage::ServerAuth],
        sans: vec![pki::SubjectAltName::Dns(cn)],
        hash: pki::SignatureHash::Sha256,
        key: Ok(pki::KeyAlgorithm::Ec256),
        is_ca: false,
        path_length: None,
        customized_extension: None,
    };
    let id = issue_certificate(shared, ca, params).expect("issue");
    let (cert, chain, key) = shared.with_state(|st| {
        let c = st.pca.certs.get_mut(&id).expect("issued");
        // As if issued from the agent's CSR: the key is only on the agent's side.
        c.gen_mode = "CSR".into();
        let key = c.key_pem.take().expect("generated key");
        (c.certificate_pem.clone(), c.chain_pem.clone(), key)
    });
    let rec = CertRecord {
        source: "pca".into(),
        cloud_id: Some(id),
        ca_id: Some(ca.id.clone()),
        mode: Some("csr".into()),
        fingerprint_sha256: Some(fingerprint(&cert)),
        installed_at: Some(nb.unix_timestamp()),
        superseded: Vec::new(),
    };
    write_installed(dir, &name, &cert, &chain, &key, &rec);
}

/// One SCM certificate, installed; for a due one a newer certificate with the same name is in
/// SCM too, so the check exports and installs it.
fn seed_scm_one(shared: &Shared, ca: &(String, pki::PrivateKey), dir: &Path, i: usize, due: bool) {
    let name = name_of(Source::Scm, i);
    let cn = format!("{name}.bench.example");
    let (nb, na) = window(false, shared.now());
    let (cert, key) = ccm_agent::emulator::scm::demo_leaf(ca, &cn, &[], nb, na).unwrap();
    let id = ccm_agent::emulator::scm::import_certificate(shared, &name, &cert, Some(&ca.0), &key)
        .unwrap();
    let cert = shared.with_state(|st| {
        st.scm
            .certificate(&id)
            .map(|c| c.certificate_pem.clone())
            .unwrap()
    });
    if due {
        let (newer, newer_key) =
            ccm_agent::emulator::scm::demo_leaf(ca, &cn, &[], nb, na + time::Duration::days(10))
                .unwrap();
        ccm_agent::emulator::scm::import_certificate(
            shared,
            &name,
            &newer,
            Some(&ca.0),
            &newer_key,
        )
        .unwrap();
    }
    let rec = CertRecord {
        source: "scm".into(),
        cloud_id: Some(id),
        fingerprint_sha256: Some(fingerprint(&cert)),
        installed_at: Some(nb.unix_timestamp()),
        ..CertRecord::default()
    };
    let chain = ccm_agent::cloud::time::normalize_pem(&ca.0);
    write_installed(dir, &name, &cert, &chain, &key, &rec);
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Seed `n` certificates of `source`, one in `due_every` due (0: none), and write the agent's
/// configuration.
async fn seed(source: Source, n: usize, due_every: usize) -> Fleet {
    let started = Instant::now();
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state/renew")).unwrap();
    let shared = emu.shared().clone();
    let root = dir.path().to_path_buf();
    let ca_id = tokio::task::spawn_blocking(move || {
        let threads = 2;
        match source {
            Source::Pca => {
                let (_, sub) = ccm_agent::emulator::pca::ca::create_active_ca_pair(
                    &shared,
                    "bench root",
                    "bench issuing CA",
                )
                .unwrap();
                let ca = shared.with_state(|st| st.pca.cas.get(&sub).cloned().unwrap());
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (shared, ca, root) = (&shared, &ca, &root);
                        s.spawn(move || {
                            for i in (t..n).step_by(threads) {
                                seed_pca_one(shared, ca, root, i, is_due(i, due_every));
                            }
                        });
                    }
                });
                Some(sub)
            }
            Source::Scm => {
                let ca = ccm_agent::emulator::scm::demo_ca(shared.now()).unwrap();
                // SCM ids come from one counter: insert in order, sign in parallel would
                // reorder ids only, which nothing depends on.
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (shared, ca, root) = (&shared, &ca, &root);
                        s.spawn(move || {
                            for i in (t..n).step_by(threads) {
                                seed_scm_one(shared, ca, root, i, is_due(i, due_every));
                            }
                        });
                    }
                });
                None
            }
        }
    })
    .await
    .unwrap();

    let metrics = free_addr();
    let aksk = emu.aksk();
    let d = dir.path().display();
    let mut text = format!(
        r#"[agent]
state_dir = "{d}/state"
# Only the startup check runs while measured (1 January, midnight).
schedule = "0 0 0 1 1 *"
host_id = "bench"
concurrency = {CONCURRENCY}

[metrics]
listen = "{metrics}"

[cloud]
endpoint = "{endpoint}"
timeout = "60s"

[cloud.auth]
access_key = "{ak}"
secret_key_env = "{SK_ENV}"
domain_id = "{domain}"

[defaults.output]
base_dir = "{d}/live"
"#,
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.unwrap_or_default(),
    );
    for i in 0..n {
        let name = name_of(source, i);
        match (source, &ca_id) {
            (Source::Pca, Some(ca)) => write!(
                text,
                r#"
[[certificates]]
name = "{name}"
[certificates.pca]
ca_id = "{ca}"
sans = ["dns:{name}.bench.internal"]
validity = {{ type = "DAY", value = {LIFETIME_DAYS} }}
extended_key_usage = ["server_auth"]
"#
            )
            .unwrap(),
            _ => write!(
                text,
                r#"
[[certificates]]
name = "{name}"
[certificates.scm]
name = "{name}"
"#
            )
            .unwrap(),
        }
    }
    let config = dir.path().join("ccm-agent.toml");
    std::fs::write(&config, text).unwrap();
    Fleet {
        emu,
        dir,
        config,
        metrics,
        seed_time: started.elapsed(),
    }
}

// ---- the agent process ----

struct AgentProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(fleet: &Fleet) -> Self {
        let log = fleet.dir.path().join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(&fleet.config)
            .env(SK_ENV, fleet.emu.shared().config().secret_key.expose())
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning ccm-agent");
        AgentProcess { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `/readyz` (the startup check finished), polling every 10 ms.
    async fn wait_ready(&mut self, metrics: &str) {
        let url = format!("http://{metrics}/readyz");
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("ccm-agent exited ({status}) before ready:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `VmRSS` and `VmHWM` in KiB.
    fn memory(&self) -> (u64, u64) {
        let (rss, hwm, _) = self.memory_threads();
        (rss, hwm)
    }

    /// `VmRSS`, `VmHWM` (KiB) and `Threads`.
    fn memory_threads(&self) -> (u64, u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
    }

    /// utime + stime, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `after` starts at field 3.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    fn stop(mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        if let Some(pid) = Pid::from_raw(self.pid() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// With `CCM_BENCH_PERF=FILE`, `perf record` the agent's check cycle into FILE and its
/// `/metrics` scrapes into FILE.scrape (diagnostics: where the agent's CPU time goes).
fn profile(pid: u32, suffix: &str) -> Option<std::process::Child> {
    let mut out = std::env::var_os("CCM_BENCH_PERF")?;
    out.push(suffix);
    std::process::Command::new("perf")
        .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

fn stop_profile(perf: Option<std::process::Child>) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(mut p) = perf {
        if let Some(pid) = Pid::from_raw(p.id() as i32) {
            let _ = kill_process(pid, Signal::INT);
        }
        let _ = p.wait();
    }
}

/// Wall time of `ccm-agent check --config` (parse and validate, offline): the part of a startup
/// that is not the check itself.
fn config_load_time(fleet: &Fleet) -> Duration {
    let started = Instant::now();
    let out = std::process::Command::new(agent_binary())
        .args(["check", "--config"])
        .arg(&fleet.config)
        .env(SK_ENV, fleet.emu.shared().config().secret_key.expose())
        .output()
        .expect("running ccm-agent check");
    assert!(
        out.status.success(),
        "ccm-agent check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn ops_text(ops: &BTreeMap<String, u64>) -> String {
    ops.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Certificates whose last result in the status file is an error.
fn failures(state: &Path) -> usize {
    ccm_agent::state::StatusFile::load(state)
        .map(|s| {
            s.certificates
                .iter()
                .filter(|c| c.last_error.is_some())
                .count()
        })
        .unwrap_or(usize::MAX)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A startup check of `n` certificates (1% due) through `ccm-agent run`.
async fn check_cycle(
    source: Source,
    n: usize,
    latency_ms: u64,
    opts: &Opts,
    idle: bool,
    scrape: bool,
) -> Vec<Row> {
    let due_every = 100;
    let due = (0..n).filter(|i| is_due(*i, due_every)).count();
    eprintln!(
        "== {} check cycle: {n} certificates, {due} due, {latency_ms} ms latency",
        source.label()
    );
    let fleet = seed(source, n, due_every).await;
    eprintln!("   seeded in {}", secs(fleet.seed_time));
    let shared = fleet.emu.shared().clone();
    if latency_ms > 0 {
        shared.add_fault(FaultRule {
            latency_ms,
            ..FaultRule::new("*")
        });
    }
    let load = config_load_time(&fleet);
    let before = shared.request_counts();
    let started = Instant::now();
    let mut agent = AgentProcess::spawn(&fleet);
    let perf = profile(agent.pid(), "");
    agent.wait_ready(&fleet.metrics).await;
    let wall = started.elapsed();
    stop_profile(perf);
    let cycle_cpu = agent.cpu_ticks() as f64 / clock_ticks_per_second() as f64;
    let ops = diff(&shared.request_counts(), &before);
    let requests: u64 = ops.values().sum();
    let (_, hwm, threads) = agent.memory_threads();
    let ideal =
        Duration::from_secs_f64(requests as f64 * latency_ms as f64 / 1000.0 / CONCURRENCY as f64);
    let failed = failures(&fleet.state());
    let label = format!(
        "{} check cycle, {n} certs, {due} due, {latency_ms} ms",
        source.label()
    );
    let ratio = if ideal.is_zero() {
        "n/a".to_owned()
    } else {
        format!("{:.1}x ideal", wall.as_secs_f64() / ideal.as_secs_f64())
    };
    let target = if n >= 10_000 && latency_ms == 50 {
        "≤ 1.5x ideal and < 3 s"
    } else {
        "(none)"
    };
    let mut rows = vec![row(
        label,
        format!("{} ({ratio})", secs(wall)),
        target,
        format!(
            "ideal {} = {requests} requests × {latency_ms} ms / {CONCURRENCY}; {:.2} requests/cert; {}; failed {failed}; agent CPU {cycle_cpu:.2} s; `ccm-agent check` (config load alone) {}; seeded in {}",
            secs(ideal),
            requests as f64 / n as f64,
            ops_text(&ops),
            secs(load),
            secs(fleet.seed_time)
        ),
    )];
    eprintln!("   cycle {} ({requests} requests)", secs(wall));
    if n >= 10_000 || !opts.full {
        rows.push(row(
            format!("agent peak RSS (VmHWM), {} {n}-cert cycle", source.label()),
            mib(hwm),
            if n >= 10_000 { "< 64 MiB" } else { "(none)" },
            format!("/proc/PID/status after the startup check; {threads} threads"),
        ));
    }
    if idle {
        // Let the pass's buffers settle, then measure an idle interval.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss0, _, threads) = agent.memory_threads();
        let t0 = agent.cpu_ticks();
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
        let t1 = agent.cpu_ticks();
        let measured = w0.elapsed();
        let (rss1, _) = agent.memory();
        let tck = clock_ticks_per_second();
        let cpu = Duration::from_secs_f64((t1 - t0) as f64 / tck as f64);
        let per_hour = cpu.as_secs_f64() * 3600.0 / measured.as_secs_f64();
        rows.push(row(
            format!("agent idle RSS (VmRSS), {n} certs"),
            mib(rss0.max(rss1)),
            if n == 1_000 { "< 20 MiB" } else { "(none)" },
            format!(
                "{} before and {} after the idle interval; {threads} threads",
                mib(rss0),
                mib(rss1)
            ),
        ));
        rows.push(row(
            format!("agent CPU per idle hour, {n} certs"),
            format!("{per_hour:.2} s/h"),
            "(none)",
            format!(
                "utime+stime {} ticks ({tck}/s) over {:.0} s idle, × 3600 / {:.0}",
                t1 - t0,
                measured.as_secs_f64(),
                measured.as_secs_f64()
            ),
        ));
    }
    if scrape {
        let url = format!("http://{}/metrics", fleet.metrics);
        let client = reqwest::Client::new();
        let mut times = Vec::new();
        let mut body = bytes::Bytes::new();
        let perf = profile(agent.pid(), ".scrape");
        for _ in 0..opts.scrapes {
            let t = Instant::now();
            body = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            times.push(t.elapsed());
            if times.len() % 10 == 0 {
                let (rss, _) = agent.memory();
                eprintln!("   after {} scrapes: agent VmRSS {}", times.len(), mib(rss));
            }
        }
        stop_profile(perf);
        let (rss_after, hwm_after) = agent.memory();
        let bytes = body.len();
        let text = String::from_utf8_lossy(&body);
        let x509_bytes: usize = text
            .lines()
            .filter(|l| l.starts_with("x509_"))
            .map(|l| l.len() + 1)
            .sum();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        times.sort();
        rows.push(row(
            format!("/metrics scrape, {n} certs"),
            format!(
                "median {:.1} ms, p99 {:.1} ms",
                percentile(&times, 50.0).as_secs_f64() * 1000.0,
                percentile(&times, 99.0).as_secs_f64() * 1000.0
            ),
            if n >= 10_000 { "< 100 ms" } else { "(none)" },
            format!(
                "{} sequential scrapes, {:.1} MiB and {samples} samples each ({:.0}% of the bytes in the x509_* series), max {:.1} ms; agent VmRSS {} and VmHWM {} after the scrapes",
                times.len(),
                bytes as f64 / 1048576.0,
                x509_bytes as f64 * 100.0 / bytes.max(1) as f64,
                times.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                mib(rss_after),
                mib(hwm_after)
            ),
        ));
    }
    agent.stop();
    rows
}

/// `n` due PCA certificates renewed by one startup check at concurrency 16.
async fn renewals(n: usize, latency_ms: u64) -> Vec<Row> {
    eprintln!("== renewals: {n} due PCA certificates, {latency_ms} ms latency");
    let fleet = seed(Source::Pca, n, 1).await;
    eprintln!("   seeded in {}", secs(fleet.seed_time));
    let shared = fleet.emu.shared().clone();
    if latency_ms > 0 {
        shared.add_fault(FaultRule {
            latency_ms,
            ..FaultRule::new("*")
        });
    }
    let before = shared.request_counts();
    let started = Instant::now();
    let mut agent = AgentProcess::spawn(&fleet);
    agent.wait_ready(&fleet.metrics).await;
    let wall = started.elapsed();
    let ops = diff(&shared.request_counts(), &before);
    let requests: u64 = ops.values().sum();
    let renewed = ops
        .get("pca.create_certificate_by_csr")
        .copied()
        .unwrap_or(0);
    let per = requests as f64 / renewed.max(1) as f64;
    let ideal = Duration::from_secs_f64(renewed as f64 * per * latency_ms as f64 / 1000.0 / 16.0);
    let failed = failures(&fleet.state());
    let (_, hwm) = agent.memory();
    agent.stop();
    eprintln!("   renewed {renewed} in {}", secs(wall));
    let ratio = if ideal.is_zero() {
        "n/a".to_owned()
    } else {
        format!("{:.2}x ideal", wall.as_secs_f64() / ideal.as_secs_f64())
    };
    vec![row(
        format!("{n} renewals end to end, concurrency 16, {latency_ms} ms"),
        format!("{} ({ratio})", secs(wall)),
        "≤ 1.5x ideal",
        format!(
            "ideal {} = {renewed} renewals × {per:.2} requests × {latency_ms} ms / 16; {}; failed {failed}; agent VmHWM {}",
            secs(ideal),
            ops_text(&ops),
            mib(hwm)
        ),
    )]
}

// ---- nginx ----

/// Time from the new `cert.pem` appearing (the install's rename) to nginx serving it, over
/// forced renewals by the agent (in this process) with an nginx reload and served check.
async fn nginx(rounds: usize) -> Vec<Row> {
    use ccm_agent::agent::daemon::Agent;
    use ccm_agent::agent::renew::CheckOptions;
    use ccm_agent::clock::Clock;
    use ccm_agent::config::Config;
    use ccm_agent::metrics::{Metrics, Readiness};
    use ccm_agent::reload::probe::VerifyEndpoint;
    use reload_common::{find_binary, free_port, wait_served, write_placeholder};

    let Some(nginx) = find_binary(&["nginx"]) else {
        eprintln!("== nginx: skipped, nginx is not installed");
        return vec![row(
            "installed → served by nginx",
            "skipped",
            "< 2 s",
            "nginx is not installed".into(),
        )];
    };
    eprintln!("== nginx: {rounds} forced renewals, installed → served");
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let shared = emu.shared().clone();
    let (_, ca_id) = tokio::task::spawn_blocking(move || {
        ccm_agent::emulator::pca::ca::create_active_ca_pair(&shared, "nginx root", "nginx CA")
    })
    .await
    .unwrap()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let live = d.join("live/web");
    std::fs::create_dir_all(&live).unwrap();
    let port = free_port();
    // nginx needs files to start with: a throwaway pair the agent replaces.
    write_placeholder(&live, "web.bench.internal");
    let conf = reload_common::nginx::write_config(
        d,
        port,
        "web.bench.internal",
        &live.join("fullchain.pem"),
        &live.join("privkey.pem"),
    );
    let pid = reload_common::nginx::pid_file(d);
    let _running = reload_common::nginx::start(&nginx, d, &conf);
    let endpoint = VerifyEndpoint {
        address: "127.0.0.1".into(),
        port,
        sni: Some("web.bench.internal".into()),
    };
    let aksk = emu.aksk();
    let text = format!(
        r#"
[agent]
state_dir = "{d}/state"
host_id = "bench"
[metrics]
enabled = false
[cloud]
endpoint = "{endpoint}"
[cloud.auth]
access_key = "{ak}"
secret_key_env = "UNUSED_IN_THE_BENCH"
domain_id = "{domain}"
[[certificates]]
name = "web"
verify_timeout = "15s"
[certificates.pca]
ca_id = "{ca_id}"
sans = ["dns:web.bench.internal"]
validity = {{ type = "DAY", value = 30 }}
[certificates.output]
dir = "{live}"
[[certificates.reload]]
type = "nginx"
binary = "{nginx}"
config = "{conf}"
prefix = "{d}"
pid_file = "{pid}"
[[certificates.verify]]
address = "127.0.0.1"
port = {port}
sni = "web.bench.internal"
"#,
        d = d.display(),
        endpoint = emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.clone().unwrap_or_default(),
        live = live.display(),
        nginx = nginx.display(),
        conf = conf.display(),
        pid = pid.display(),
    );
    let config = Arc::new(Config::from_str(&text, "bench-nginx.toml").unwrap());
    let shared = emu.shared().clone();
    let agent = Arc::new(
        Agent::new(
            config.clone(),
            emu.client().unwrap(),
            Metrics::new(),
            Readiness::new(),
            Clock::from_fn(move || shared.now()),
        )
        .unwrap(),
    );
    // What each task of a pass holds while it waits for its permit: `check_all` spawns one
    // task per certificate up front. Futures are lazy: building one does nothing.
    let pass_future_size = {
        let fut = agent.pass(config.certificate("web").unwrap(), CheckOptions::default());
        std::mem::size_of_val(&fut)
    };
    let cert_path = live.join("cert.pem");
    // First install.
    agent
        .pass(config.certificate("web").unwrap(), CheckOptions::default())
        .await
        .unwrap();
    let first = fingerprint(&std::fs::read_to_string(&cert_path).unwrap());
    wait_served(&endpoint, &first, Duration::from_secs(10)).await;

    let mut served_after = Vec::new();
    let mut pass_times = Vec::new();
    for _ in 0..rounds {
        let old = std::fs::read(&cert_path).unwrap();
        let a = agent.clone();
        let cfg = config.clone();
        let t_pass = Instant::now();
        let pass = tokio::spawn(async move {
            a.pass(
                cfg.certificate("web").unwrap(),
                CheckOptions {
                    force: true,
                    dry_run: false,
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        });
        let installed = loop {
            if std::fs::read(&cert_path).is_ok_and(|b| b != old) {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let new_fp = fingerprint(&std::fs::read_to_string(&cert_path).unwrap());
        let served = loop {
            let seen =
                ccm_agent::reload::served_fingerprint(&endpoint, Duration::from_secs(2)).await;
            if matches!(&seen, Ok(fp) if *fp == new_fp) {
                break Instant::now();
            }
            assert!(
                installed.elapsed() < Duration::from_secs(30),
                "never served"
            );
        };
        pass.await.unwrap().unwrap();
        pass_times.push(t_pass.elapsed());
        served_after.push(served - installed);
    }
    served_after.sort();
    pass_times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    vec![row(
        "installed → served by nginx",
        format!(
            "median {:.0} ms, max {:.0} ms",
            ms(percentile(&served_after, 50.0)),
            ms(*served_after.last().unwrap())
        ),
        "< 2 s",
        format!(
            "{rounds} forced renewals; cert.pem polled every 1 ms, then TLS probes back to back; whole pass (issue, export, verify, install, nginx -t, SIGHUP, served check) median {:.0} ms",
            ms(percentile(&pass_times, 50.0))
        ),
    ),
    row(
        "size of one `Agent::pass` future",
        format!("{:.1} KiB", pass_future_size as f64 / 1024.0),
        "(none)",
        "std::mem::size_of_val of the future before it is polled; a pass spawns one per certificate before taking a permit".into(),
    )]
}
