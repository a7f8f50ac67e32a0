//! The agent's Prometheus metrics: one [`Metrics`] registry per process (never the crate's global
//! default registry), the [`Readiness`] latch, and the small HTTP server for `/metrics`,
//! `/healthz` and `/readyz` ([`serve`]).
//!
//! # What is exported
//! Per-certificate series carry only `name` (the configured certificate name) and, for the facts
//! read from the certificate, `source` (`pca` / `scm`); both are bounded by the configuration.
//! Result labels come from callers as short kinds ("ok", "timeout", "api_error", ...); each
//! per-certificate counter keeps at most [`MAX_RESULTS_PER_COUNTER`] distinct values and folds the
//! rest into `other`. No SAN, secret or free text is ever a label value.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `ccm_agent_build_info` | gauge (1) | `version`, `os`, `arch` |
//! | `ccm_agent_ready` | gauge 0/1 | (the [`Readiness`] latch given to [`serve`]) |
//! | `ccm_agent_certificate_not_before_timestamp_seconds` | gauge | `name`, `source` |
//! | `ccm_agent_certificate_not_after_timestamp_seconds` | gauge | `name`, `source` |
//! | `ccm_agent_certificate_ready` | gauge 0/1 | `name` |
//! | `ccm_agent_certificate_last_renewal_timestamp_seconds` | gauge | `name` |
//! | `ccm_agent_scm_expiring_without_successor` | gauge 0/1 | `name` |
//! | `ccm_agent_checks_total` | counter | `name`, `result` |
//! | `ccm_agent_renewals_total` | counter | `name`, `result` |
//! | `ccm_agent_installs_total` | counter | `name`, `result` |
//! | `ccm_agent_last_successful_check_timestamp_seconds` | gauge | |
//! | `ccm_agent_api_requests_total` | counter | `service`, `operation`, `code` |
//! | `ccm_agent_api_request_duration_seconds` | histogram | `service`, `operation` |
//! | `ccm_agent_token_refreshes_total` | counter | |
//!
//! `code` is the HTTP status ("200", "404", ...) or `none` when no response arrived (connection
//! failure, timeout). `operation` is the client's stable operation name (`Request::operation`).
//! Counters by result start at 0 for `ok` as soon as a certificate is known, so `rate()` and
//! `increase()` see the first success.
//!
//! # x509-certificate-exporter compatibility
//! The same certificates are also exported under the names and labels of
//! enix/x509-certificate-exporter (file mode), so its Grafana dashboard and alert rules work
//! unchanged: `x509_cert_not_before`, `x509_cert_not_after`, `x509_cert_expired`,
//! `x509_cert_expires_in_seconds`, `x509_cert_valid_since_seconds` with the labels `filename`,
//! `filepath`, `serial_number` (decimal, as the exporter prints Go's `big.Int`), and
//! `subject_{C,ST,L,O,OU,CN}` / `issuer_{C,ST,L,O,OU,CN}`, plus the unlabelled gauge
//! `x509_read_errors`. Differences: an attribute a certificate lacks is an empty label value
//! (which Prometheus treats as an absent label) rather than a missing label; only the leaf
//! certificate of each configured name is exported (the exporter also lists chain certificates
//! found in the same file); `ST` is the stateOrProvinceName (the exporter fills it from the
//! streetAddress); the per-file `x509_cert_error` series is not exported. Time-relative series
//! (`x509_cert_expired`, `..._expires_in_seconds`, `..._valid_since_seconds`) are evaluated at
//! every scrape against the [`Metrics`] clock, as the exporter does against its wall clock.
//!
//! # Adding a metric
//! A process-wide series (deploys by service/region/result, reloads by result): a field on
//! [`Metrics`], created and registered in `Metrics::build`, and a method that updates it. A
//! per-certificate series: a field on `CertState`, an entry in `CERT_FAMILIES` (kept sorted by
//! name) and its arm in `render`, which writes the text directly; it then disappears with its
//! certificate for free. [`text::parse`] reads an exposition back, for tests and status
//! summaries.

#[cfg(test)]
mod legacy;
mod server;
pub mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::cloud::{Observer, Service};
use crate::pki::{CertInfo, DistinguishedName};

pub use server::{BindError, Readiness, bind, serve};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Distinct `result` values kept per certificate and counter; more fold into `other`.
pub const MAX_RESULTS_PER_COUNTER: usize = 16;

/// Longest `result` label value kept; longer values are cut.
const MAX_RESULT_LEN: usize = 64;

/// Buckets of the API latency histogram, in seconds (the client's default timeout is 30 s).
const API_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The labels of enix/x509-certificate-exporter's per-certificate series, in output order.
const X509_LABELS: &[&str] = &[
    "filename",
    "filepath",
    "serial_number",
    "subject_C",
    "subject_ST",
    "subject_L",
    "subject_O",
    "subject_OU",
    "subject_CN",
    "issuer_C",
    "issuer_ST",
    "issuer_L",
    "issuer_O",
    "issuer_OU",
    "issuer_CN",
];

/// What the metrics need to know about a certificate, read from its X.509.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The serial as hex (any case, no separators), as [`CertInfo::serial_hex`].
    pub serial_hex: String,
    pub subject: DistinguishedName,
    pub issuer: DistinguishedName,
    /// Where the certificate is installed, if it is written to a file.
    pub filepath: Option<PathBuf>,
}

impl CertificateFacts {
    /// The facts of a parsed certificate installed at `filepath` (if any).
    pub fn from_cert(cert: &CertInfo, filepath: Option<&Path>) -> Self {
        Self {
            not_before: cert.not_before,
            not_after: cert.not_after,
            serial_hex: cert.serial_hex.clone(),
            subject: cert.subject.clone(),
            issuer: cert.issuer.clone(),
            filepath: filepath.map(Path::to_path_buf),
        }
    }

    /// Label values in [`X509_LABELS`] order.
    fn x509_label_values(&self) -> Vec<String> {
        let (filename, filepath) = match &self.filepath {
            Some(p) => (
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                p.to_string_lossy().into_owned(),
            ),
            None => (String::new(), String::new()),
        };
        let serial = hex_to_decimal(&self.serial_hex).unwrap_or_else(|| self.serial_hex.clone());
        let mut values = vec![filename, filepath, serial];
        for dn in [&self.subject, &self.issuer] {
            for attr in [
                &dn.country,
                &dn.state,
                &dn.locality,
                &dn.organization,
                &dn.organizational_unit,
                &dn.common_name,
            ] {
                values.push(attr.clone().unwrap_or_default());
            }
        }
        values
    }
}

/// Counts by result, bounded in the number of distinct results.
#[derive(Debug, Default)]
struct ResultCounts(BTreeMap<String, u64>);

impl ResultCounts {
    fn starting_at_ok() -> Self {
        Self(BTreeMap::from([("ok".to_owned(), 0)]))
    }

    fn inc(&mut self, result: &str) {
        let mut key: String = result.chars().take(MAX_RESULT_LEN).collect();
        if key.is_empty() {
            key = "unknown".to_owned();
        }
        if !self.0.contains_key(&key) && self.0.len() >= MAX_RESULTS_PER_COUNTER - 1 {
            key = "other".to_owned();
        }
        *self.0.entry(key).or_insert(0) += 1;
    }
}

/// Everything known about one configured certificate.
#[derive(Debug)]
struct CertState {
    source: String,
    facts: Option<CertificateFacts>,
    /// The x509 label set of `facts`.
    x509: Option<Arc<X509Series>>,
    checks: ResultCounts,
    renewals: ResultCounts,
    installs: ResultCounts,
    last_renewal: Option<OffsetDateTime>,
    ready: Option<bool>,
    scm_expiring_without_successor: Option<bool>,
    read_error: bool,
}

impl Default for CertState {
    fn default() -> Self {
        Self {
            source: String::new(),
            facts: None,
            x509: None,
            checks: ResultCounts::starting_at_ok(),
            renewals: ResultCounts::starting_at_ok(),
            installs: ResultCounts::starting_at_ok(),
            last_renewal: None,
            ready: None,
            scm_expiring_without_successor: None,
            read_error: false,
        }
    }
}

/// The agent's metrics. Create one per process with [`Metrics::new`] (tests create their own).
pub struct Metrics {
    registry: Registry,
    certs: Arc<CertCollector>,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    token_refreshes: IntCounter,
    last_successful_check: Gauge,
    /// The length of the last exposition: the next one's buffer starts this large.
    encoded_len: AtomicUsize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics on the system clock.
    pub fn new() -> Arc<Self> {
        Self::with_clock(Clock::system())
    }

    /// Metrics whose time-relative series (expired, expires-in, valid-since) are evaluated against
    /// `clock` at every scrape, e.g. the emulator's movable clock.
    pub fn with_clock(clock: Clock) -> Arc<Self> {
        // Every name, help and label below is a constant that is valid, and each is registered
        // once in a fresh registry, so construction cannot fail.
        #[allow(clippy::expect_used)]
        Arc::new(Self::build(clock).expect("static metric definitions are valid"))
    }

    fn build(clock: Clock) -> prometheus::Result<Self> {
        let registry = Registry::new();

        let build_info = IntGaugeVec::new(
            Opts::new(
                "ccm_agent_build_info",
                "Build information of the running ccm-agent; always 1.",
            ),
            &["version", "os", "arch"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
            ])
            .set(1);
        registry.register(Box::new(build_info))?;

        let api_requests = IntCounterVec::new(
            Opts::new(
                "ccm_agent_api_requests_total",
                "HTTP requests to the cloud APIs, by service, operation and response status \
                 code (\"none\" when no response arrived). Retries count separately.",
            ),
            &["service", "operation", "code"],
        )?;
        registry.register(Box::new(api_requests.clone()))?;

        let api_duration = HistogramVec::new(
            HistogramOpts::new(
                "ccm_agent_api_request_duration_seconds",
                "Duration of HTTP requests to the cloud APIs, by service and operation.",
            )
            .buckets(API_LATENCY_BUCKETS.to_vec()),
            &["service", "operation"],
        )?;
        registry.register(Box::new(api_duration.clone()))?;

        let token_refreshes = IntCounter::new(
            "ccm_agent_token_refreshes_total",
            "IAM tokens obtained (first token and refreshes).",
        )?;
        registry.register(Box::new(token_refreshes.clone()))?;

        let last_successful_check = Gauge::new(
            "ccm_agent_last_successful_check_timestamp_seconds",
            "Unix time of the end of the last check round that succeeded.",
        )?;
        registry.register(Box::new(last_successful_check.clone()))?;

        // Not in the registry: `encode` writes its families itself, merged with the registry's.
        let certs = Arc::new(CertCollector::new(clock));

        Ok(Self {
            registry,
            certs,
            api_requests,
            api_duration,
            token_refreshes,
            last_successful_check,
            encoded_len: AtomicUsize::new(0),
        })
    }

    /// The registry, to register more collectors (e.g. a component's own metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Record what a certificate is now: its validity and identity. Replaces earlier facts, so the
    /// series of a replaced certificate (old serial) disappear.
    pub fn set_certificate(&self, name: &str, source: &str, facts: &CertificateFacts) {
        let mut st = self.certs.lock();
        let c = st.certs.entry(name.to_owned()).or_default();
        if c.source == source && c.facts.as_ref() == Some(facts) {
            return;
        }
        c.source = source.to_owned();
        c.facts = Some(facts.clone());
        c.x509 = Some(Arc::new(X509Series::new(facts)));
        st.x509_order = None;
    }

    /// Forget a certificate (removed from the configuration): all its series disappear.
    pub fn remove_certificate(&self, name: &str) {
        let mut st = self.certs.lock();
        if st.certs.remove(name).is_some() {
            st.x509_order = None;
        }
    }

    /// Keep only the certificates named in `names` (after a configuration reload).
    pub fn retain_certificates<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = names.into_iter().collect();
        let mut st = self.certs.lock();
        st.certs.retain(|name, _| keep.contains(name.as_str()));
        st.x509_order = None;
    }

    /// One check of a certificate ended with `result` ("ok" or a short error kind).
    pub fn record_check(&self, name: &str, result: &str) {
        self.certs.update(name, |c| c.checks.inc(result));
    }

    /// One renewal attempt ended with `result`; on "ok" the last renewal time becomes `at`.
    pub fn record_renewal(&self, name: &str, result: &str, at: OffsetDateTime) {
        self.certs.update(name, |c| {
            c.renewals.inc(result);
            if result == "ok" {
                c.last_renewal = Some(at);
            }
        });
    }

    /// One install of a certificate's files ended with `result`.
    pub fn record_install(&self, name: &str, result: &str) {
        self.certs.update(name, |c| c.installs.inc(result));
    }

    /// Whether a certificate is currently in a good state (valid, installed, not overdue).
    pub fn set_cert_ready(&self, name: &str, ready: bool) {
        self.certs.update(name, |c| c.ready = Some(ready));
    }

    /// A check round succeeded at `at`.
    pub fn set_last_successful_check(&self, at: OffsetDateTime) {
        self.last_successful_check.set(unix_seconds(at));
    }

    /// An SCM certificate is close to expiry and no successor (renewed or re-issued certificate)
    /// exists in SCM: someone must act, and this gauge says so loudly.
    pub fn set_scm_expiring_without_successor(&self, name: &str, flag: bool) {
        self.certs
            .update(name, |c| c.scm_expiring_without_successor = Some(flag));
    }

    /// Whether the installed certificate file of `name` could not be read or parsed; the number of
    /// such certificates is `x509_read_errors`. Earlier facts are kept.
    pub fn set_read_error(&self, name: &str, failed: bool) {
        self.certs.update(name, |c| c.read_error = failed);
    }

    /// The text exposition format 0.0.4 ([`CONTENT_TYPE`]), as `/metrics` serves it.
    ///
    /// Written into one buffer sized from the previous exposition (22.8 MiB at 10,000
    /// certificates), so a scrape does not regrow it.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let families = self.registry.gather();
        let last = self.encoded_len.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last + last / 16 + 4096);
        self.certs.encode_with(&families, &mut out)?;
        self.encoded_len.store(out.len(), Ordering::Relaxed);
        Ok(out)
    }

    /// Make `ccm_agent_ready` follow `readiness` ([`serve`] does this).
    pub fn attach_readiness(&self, readiness: &Readiness) {
        self.certs.lock().readiness = Some(readiness.clone());
    }
}

impl Observer for Metrics {
    fn request_done(
        &self,
        service: Service,
        operation: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let code = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.api_requests
            .with_label_values(&[service.name(), operation, &code])
            .inc();
        self.api_duration
            .with_label_values(&[service.name(), operation])
            .observe(elapsed.as_secs_f64());
    }

    fn token_refreshed(&self) {
        self.token_refreshes.inc();
    }
}

fn unix_seconds(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

/// A big-endian hex number as decimal digits (certificate serials are up to 20 bytes).
fn hex_to_decimal(hex: &str) -> Option<String> {
    let hex = hex.trim();
    if hex.is_empty() {
        return None;
    }
    // Little-endian limbs in base 10^9.
    const BASE: u64 = 1_000_000_000;
    let mut limbs: Vec<u64> = vec![0];
    for c in hex.chars() {
        let mut carry = u64::from(c.to_digit(16)?);
        for limb in &mut limbs {
            let v = *limb * 16 + carry;
            *limb = v % BASE;
            carry = v / BASE;
        }
        if carry > 0 {
            limbs.push(carry);
        }
    }
    let mut out = String::new();
    let mut iter = limbs.iter().rev();
    if let Some(top) = iter.next() {
        out.push_str(&top.to_string());
    }
    for limb in iter {
        out.push_str(&format!("{limb:09}"));
    }
    Some(out)
}

/// The per-certificate series, written straight to text at every scrape from [`CertState`], so
/// removing a certificate or replacing its serial leaves no stale series behind. What changes
/// only with a certificate's facts (its escaped x509 label set and the series order) is kept
/// between scrapes; a scrape computes the values and appends them to the one response buffer.
/// (Building prometheus `MetricVec`s for 120,000 samples per scrape took a second at 10,000
/// certificates, see BENCHMARKS.md (4).)
struct CertCollector {
    clock: Clock,
    state: Mutex<CollectorState>,
}

#[derive(Default)]
struct CollectorState {
    certs: BTreeMap<String, CertState>,
    readiness: Option<Readiness>,
    /// The x509 series in output order, one per distinct label set; `None` once facts or the
    /// set of certificates changed, rebuilt by the next scrape.
    x509_order: Option<Vec<Arc<X509Series>>>,
}

/// The label set of one certificate's x509-certificate-exporter series, built when its facts are
/// set.
#[derive(Debug)]
struct X509Series {
    /// The label values ordered by label name: the prometheus text encoder sorts series by these.
    sort_key: Vec<String>,
    /// `{filename="...",...,subject_ST="..."}`, escaped, labels ordered by name.
    labels: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl X509Series {
    fn new(facts: &CertificateFacts) -> Self {
        let mut pairs: Vec<(&str, String)> = X509_LABELS
            .iter()
            .copied()
            .zip(facts.x509_label_values())
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut labels = String::new();
        for (i, (name, value)) in pairs.iter().enumerate() {
            labels.push(if i == 0 { '{' } else { ',' });
            labels.push_str(name);
            labels.push_str("=\"");
            text::escape_label_value(&mut labels, value);
            labels.push('"');
        }
        labels.push('}');
        Self {
            sort_key: pairs.into_iter().map(|(_, v)| v).collect(),
            labels,
            not_before: facts.not_before,
            not_after: facts.not_after,
        }
    }
}

/// The per-certificate families.
#[derive(Clone, Copy, Debug)]
enum Family {
    Ready,
    NotBefore,
    NotAfter,
    CertReady,
    LastRenewal,
    ScmExpiring,
    Checks,
    Renewals,
    Installs,
    X509NotBefore,
    X509NotAfter,
    X509Expired,
    X509ExpiresIn,
    X509ValidSince,
    X509ReadErrors,
}

struct FamilyDef {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    family: Family,
}

const fn def(
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    family: Family,
) -> FamilyDef {
    FamilyDef {
        name,
        help,
        kind,
        family,
    }
}

/// Ordered by name, as the registry gathers its families, so both merge into one sorted
/// exposition. Help texts must not contain a backslash or a line feed (they are written as is).
const CERT_FAMILIES: &[FamilyDef] = &[
    def(
        "ccm_agent_certificate_last_renewal_timestamp_seconds",
        "Unix time of the last successful renewal of the certificate.",
        "gauge",
        Family::LastRenewal,
    ),
    def(
        "ccm_agent_certificate_not_after_timestamp_seconds",
        "Unix time the current certificate expires.",
        "gauge",
        Family::NotAfter,
    ),
    def(
        "ccm_agent_certificate_not_before_timestamp_seconds",
        "Unix time the current certificate becomes valid.",
        "gauge",
        Family::NotBefore,
    ),
    def(
        "ccm_agent_certificate_ready",
        "1 when the certificate is valid and installed, 0 when it needs attention.",
        "gauge",
        Family::CertReady,
    ),
    def(
        "ccm_agent_checks_total",
        "Certificate checks, by certificate and result.",
        "counter",
        Family::Checks,
    ),
    def(
        "ccm_agent_installs_total",
        "Certificate installs, by certificate and result.",
        "counter",
        Family::Installs,
    ),
    def(
        "ccm_agent_ready",
        "1 once the agent has completed its first check round and is ready.",
        "gauge",
        Family::Ready,
    ),
    def(
        "ccm_agent_renewals_total",
        "Certificate renewal attempts, by certificate and result.",
        "counter",
        Family::Renewals,
    ),
    def(
        "ccm_agent_scm_expiring_without_successor",
        "1 when an SCM certificate nears expiry and SCM holds no successor: renew or buy it in \
         SCM.",
        "gauge",
        Family::ScmExpiring,
    ),
    def(
        "x509_cert_expired",
        "Indicates if the certificate is expired",
        "gauge",
        Family::X509Expired,
    ),
    def(
        "x509_cert_expires_in_seconds",
        "Indicates the remaining time before the certificate's not after timestamp",
        "gauge",
        Family::X509ExpiresIn,
    ),
    def(
        "x509_cert_not_after",
        "Indicates the certificate's not after timestamp",
        "gauge",
        Family::X509NotAfter,
    ),
    def(
        "x509_cert_not_before",
        "Indicates the certificate's not before timestamp",
        "gauge",
        Family::X509NotBefore,
    ),
    def(
        "x509_cert_valid_since_seconds",
        "Indicates the elapsed time since the certificate's not before timestamp",
        "gauge",
        Family::X509ValidSince,
    ),
    def(
        "x509_read_errors",
        "Indicates the number of read failure(s)",
        "gauge",
        Family::X509ReadErrors,
    ),
];

impl CertCollector {
    fn new(clock: Clock) -> Self {
        Self {
            clock,
            state: Mutex::new(CollectorState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CollectorState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut CertState)) {
        let mut st = self.lock();
        f(st.certs.entry(name.to_owned()).or_default());
    }

    /// Append the exposition to `out`: the `registry` families (sorted by name, as gathered) and
    /// the per-certificate families, merged in name order.
    fn encode_with(&self, registry: &[MetricFamily], out: &mut String) -> prometheus::Result<()> {
        let encoder = TextEncoder::new();
        let now = self.clock.now();
        // Held while writing: the series of one scrape come from one state.
        let mut st = self.lock();
        if st.x509_order.is_none() {
            let order = x509_order(&st.certs);
            st.x509_order = Some(order);
        }
        let st = &*st;
        let x509 = st.x509_order.as_deref().unwrap_or_default();
        let mut rest = registry.iter().peekable();
        for def in CERT_FAMILIES {
            while let Some(mf) = rest.next_if(|mf| mf.name() < def.name) {
                encoder.encode_utf8(std::slice::from_ref(mf), out)?;
            }
            render(st, x509, def, now, out).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        }
        for mf in rest {
            encoder.encode_utf8(std::slice::from_ref(mf), out)?;
        }
        Ok(())
    }
}

/// The x509 series in the order the text encoder would sort them, without duplicates: two names
/// holding the very same certificate file would give duplicate series; the first name wins.
fn x509_order(certs: &BTreeMap<String, CertState>) -> Vec<Arc<X509Series>> {
    let mut order: Vec<Arc<X509Series>> = certs.values().filter_map(|c| c.x509.clone()).collect();
    // Stable: among equal label sets the first name stays first, and dedup keeps it.
    order.sort_by(|a, b| a.sort_key.cmp(&b.sort_key));
    order.dedup_by(|later, first| later.sort_key == first.sort_key);
    order
}

/// One family in the text format 0.0.4, as prometheus' `TextEncoder` writes it; nothing (not
/// even the header) when it has no sample.
fn render(
    st: &CollectorState,
    x509: &[Arc<X509Series>],
    def: &FamilyDef,
    now: OffsetDateTime,
    out: &mut String,
) -> std::fmt::Result {
    use std::fmt::Write as _;

    let start = out.len();
    let name = def.name;
    writeln!(out, "# HELP {name} {}", def.help)?;
    writeln!(out, "# TYPE {name} {}", def.kind)?;
    let header_end = out.len();

    let by_name = |out: &mut String, cert: &str, extra: Option<(&str, &str)>, value: f64| {
        out.push_str(name);
        out.push_str("{name=\"");
        text::escape_label_value(out, cert);
        if let Some((label, v)) = extra {
            out.push_str("\",");
            out.push_str(label);
            out.push_str("=\"");
            text::escape_label_value(out, v);
        }
        writeln!(out, "\"}} {value}")
    };
    let flag = |b: bool| f64::from(u8::from(b));
    match def.family {
        Family::Ready => {
            if let Some(readiness) = &st.readiness {
                writeln!(out, "{name} {}", flag(readiness.is_ready()))?;
            }
        }
        Family::NotBefore | Family::NotAfter => {
            for (cert_name, cert) in &st.certs {
                let Some(facts) = &cert.facts else { continue };
                let at = match def.family {
                    Family::NotBefore => facts.not_before,
                    _ => facts.not_after,
                };
                by_name(
                    out,
                    cert_name,
                    Some(("source", &cert.source)),
                    unix_seconds(at),
                )?;
            }
        }
        Family::CertReady | Family::ScmExpiring | Family::LastRenewal => {
            for (cert_name, cert) in &st.certs {
                let value = match def.family {
                    Family::CertReady => cert.ready.map(flag),
                    Family::ScmExpiring => cert.scm_expiring_without_successor.map(flag),
                    _ => cert.last_renewal.map(unix_seconds),
                };
                if let Some(value) = value {
                    by_name(out, cert_name, None, value)?;
                }
            }
        }
        Family::Checks | Family::Renewals | Family::Installs => {
            for (cert_name, cert) in &st.certs {
                let counts = match def.family {
                    Family::Checks => &cert.checks,
                    Family::Renewals => &cert.renewals,
                    _ => &cert.installs,
                };
                for (result, n) in &counts.0 {
                    by_name(out, cert_name, Some(("result", result)), *n as f64)?;
                }
            }
        }
        Family::X509NotBefore
        | Family::X509NotAfter
        | Family::X509Expired
        | Family::X509ExpiresIn
        | Family::X509ValidSince => {
            for s in x509 {
                let value = match def.family {
                    Family::X509NotBefore => unix_seconds(s.not_before),
                    Family::X509NotAfter => unix_seconds(s.not_after),
                    Family::X509Expired => flag(now > s.not_after),
                    Family::X509ExpiresIn => (s.not_after - now).as_seconds_f64(),
                    _ => (now - s.not_before).as_seconds_f64(),
                };
                out.push_str(name);
                out.push_str(&s.labels);
                writeln!(out, " {value}")?;
            }
        }
        Family::X509ReadErrors => {
            let n = st.certs.values().filter(|c| c.read_error).count();
            writeln!(out, "{name} {}", n as f64)?;
        }
    }
    if out.len() == header_end {
        out.truncate(start);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::text::{Sample, parse};
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use time::macros::datetime;

    fn facts(serial: &str, cn: &str) -> CertificateFacts {
        CertificateFacts {
            not_before: datetime!(2026-01-01 00:00 UTC),
            not_after: datetime!(2026-04-01 00:00 UTC),
            serial_hex: serial.to_owned(),
            subject: DistinguishedName {
                common_name: Some(cn.to_owned()),
                organization: Some("Example Org".to_owned()),
                ..Default::default()
            },
            issuer: DistinguishedName::with_common_name("ccm-agent demo issuing CA"),
            filepath: Some(PathBuf::from("/etc/ssl/app/cert.pem")),
        }
    }

    fn movable_clock(start: OffsetDateTime) -> (Clock, Arc<AtomicI64>) {
        let t = Arc::new(AtomicI64::new(start.unix_timestamp()));
        let t2 = t.clone();
        let clock = Clock::from_fn(move || {
            OffsetDateTime::from_unix_timestamp(t2.load(Ordering::SeqCst))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        });
        (clock, t)
    }

    fn scrape(m: &Metrics) -> Vec<Sample> {
        parse(&m.encode().unwrap()).unwrap()
    }

    #[test]
    fn hex_serials_become_decimal_like_go_big_int() {
        assert_eq!(hex_to_decimal("0").as_deref(), Some("0"));
        assert_eq!(hex_to_decimal("FF").as_deref(), Some("255"));
        assert_eq!(hex_to_decimal("3b9aca00").as_deref(), Some("1000000000"));
        // 2^64
        assert_eq!(
            hex_to_decimal("10000000000000000").as_deref(),
            Some("18446744073709551616")
        );
        // A 20-byte serial: 2^159 - 1 ... checked against Python's int(h, 16).
        assert_eq!(
            hex_to_decimal("7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF").as_deref(),
            Some("730750818665451459101842416358141509827966271487")
        );
        assert_eq!(hex_to_decimal("12:34"), None);
        assert_eq!(hex_to_decimal(""), None);
    }

    #[test]
    fn certificate_series_follow_facts_and_clock() {
        let (clock, t) = movable_clock(datetime!(2026-02-01 00:00 UTC));
        let m = Metrics::with_clock(clock);
        m.set_certificate("app", "pca", &facts("0A", "app.example.com"));
        let s = scrape(&m);
        let x509 = [("serial_number", "10"), ("subject_CN", "app.example.com")];
        assert_eq!(
            text::value(&s, "x509_cert_not_after", &x509),
            Some(datetime!(2026-04-01 00:00 UTC).unix_timestamp() as f64)
        );
        assert_eq!(text::value(&s, "x509_cert_expired", &x509), Some(0.0));
        assert_eq!(
            text::value(&s, "x509_cert_expires_in_seconds", &x509),
            Some((59 * 86400) as f64)
        );
        assert_eq!(
            text::value(
                &s,
                "ccm_agent_certificate_not_before_timestamp_seconds",
                &[("name", "app"), ("source", "pca")]
            ),
            Some(datetime!(2026-01-01 00:00 UTC).unix_timestamp() as f64)
        );

        t.store(
            datetime!(2026-04-01 00:00:01 UTC).unix_timestamp(),
            Ordering::SeqCst,
        );
        let s = scrape(&m);
        assert_eq!(text::value(&s, "x509_cert_expired", &x509), Some(1.0));
        assert_eq!(
            text::value(&s, "x509_cert_expires_in_seconds", &x509),
            Some(-1.0)
        );
    }

    #[test]
    fn replacing_and_removing_leaves_no_stale_series() {
        let m = Metrics::new();
        m.set_certificate("app", "pca", &facts("0A", "app.example.com"));
        m.set_certificate("other", "scm", &facts("0B", "other.example.com"));
        m.set_certificate("app", "pca", &facts("0C", "app.example.com"));
        m.record_check("app", "ok");
        let s = scrape(&m);
        let mut serials: Vec<&str> = s
            .iter()
            .filter(|x| x.name == "x509_cert_not_after")
            .map(|x| x.labels["serial_number"].as_str())
            .collect();
        serials.sort_unstable();
        assert_eq!(
            serials,
            ["11", "12"],
            "old serial 10 of \"app\" must be gone"
        );

        m.remove_certificate("app");
        let s = scrape(&m);
        assert!(
            !s.iter()
                .any(|x| x.labels.get("name").map(String::as_str) == Some("app")
                    || x.labels.get("subject_CN").map(String::as_str) == Some("app.example.com")),
            "series of a removed certificate remain"
        );
        assert!(text::value(&s, "x509_cert_not_after", &[("serial_number", "11")]).is_some());

        m.retain_certificates(["nothing"]);
        let s = scrape(&m);
        assert!(!s.iter().any(|x| x.name.starts_with("x509_cert_")));
    }

    #[test]
    fn counters_by_result_are_bounded() {
        let m = Metrics::new();
        assert!(!m.encode().unwrap().contains("ccm_agent_checks_total{"));
        m.record_check("app", "timeout");
        let s = scrape(&m);
        let ok = [("name", "app"), ("result", "ok")];
        assert_eq!(text::value(&s, "ccm_agent_checks_total", &ok), Some(0.0));
        for i in 0..100 {
            m.record_check("app", &format!("kind{i}"));
        }
        m.record_check("app", "ok");
        let s = scrape(&m);
        let results: Vec<&Sample> = s
            .iter()
            .filter(|x| x.name == "ccm_agent_checks_total")
            .collect();
        assert_eq!(results.len(), MAX_RESULTS_PER_COUNTER);
        assert_eq!(text::value(&s, "ccm_agent_checks_total", &ok), Some(1.0));
        let other = [("name", "app"), ("result", "other")];
        assert_eq!(
            text::value(&s, "ccm_agent_checks_total", &other),
            Some((100 - (MAX_RESULTS_PER_COUNTER - 3)) as f64)
        );
    }

    #[test]
    fn renewal_sets_last_renewal_only_on_success() {
        let m = Metrics::new();
        let at = datetime!(2026-03-01 12:00 UTC);
        m.record_renewal("app", "api_error", at);
        let s = scrape(&m);
        assert_eq!(
            text::value(
                &s,
                "ccm_agent_certificate_last_renewal_timestamp_seconds",
                &[("name", "app")]
            ),
            None
        );
        m.record_renewal("app", "ok", at);
        let s = scrape(&m);
        assert_eq!(
            text::value(
                &s,
                "ccm_agent_certificate_last_renewal_timestamp_seconds",
                &[("name", "app")]
            ),
            Some(at.unix_timestamp() as f64)
        );
        assert_eq!(
            text::value(
                &s,
                "ccm_agent_renewals_total",
                &[("name", "app"), ("result", "api_error")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn read_errors_count_certificates() {
        let m = Metrics::new();
        assert_eq!(text::value(&scrape(&m), "x509_read_errors", &[]), Some(0.0));
        m.set_read_error("a", true);
        m.set_read_error("b", true);
        m.set_read_error("b", false);
        assert_eq!(text::value(&scrape(&m), "x509_read_errors", &[]), Some(1.0));
    }

    #[test]
    fn build_info_names_the_version() {
        let s = scrape(&Metrics::new());
        assert_eq!(
            text::value(
                &s,
                "ccm_agent_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn cert_families_are_sorted_by_name() {
        for w in CERT_FAMILIES.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
    }

    /// Facts whose label values need every escape of the text format.
    fn awkward(serial: &str, cn: &str, path: &str) -> CertificateFacts {
        CertificateFacts {
            not_before: datetime!(2026-01-01 00:00 UTC),
            not_after: datetime!(2026-04-01 00:00 UTC),
            serial_hex: serial.to_owned(),
            subject: DistinguishedName {
                country: Some("CN".to_owned()),
                state: Some("Guang\\dong".to_owned()),
                locality: Some("Shen\nzhen".to_owned()),
                organization: Some("Example \"Quoted\" Org".to_owned()),
                organizational_unit: Some("Ops\\\"\n".to_owned()),
                common_name: Some(cn.to_owned()),
            },
            issuer: DistinguishedName {
                organization: Some("Issuer, Inc. {a=\"b\"}".to_owned()),
                ..DistinguishedName::with_common_name("CA \\ \"root\"\n2")
            },
            filepath: Some(PathBuf::from(path)),
        }
    }

    #[test]
    fn direct_rendering_equals_the_metric_vec_rendering() {
        let (clock, t) = movable_clock(datetime!(2026-02-01 00:00 UTC));
        let m = Metrics::with_clock(clock);
        assert_eq!(m.encode().unwrap(), legacy::encode(&m), "empty");

        m.attach_readiness(&Readiness::new());
        m.set_certificate(
            "app \"one\"",
            "pca",
            &awkward("0A", "app.example.com", "/etc/ssl/we\"ird\\dir/ce\nrt.pem"),
        );
        m.set_certificate(
            "b\\ack\nslash",
            "scm",
            &awkward("FF", "b\"\\\n", "/etc/ssl/b/cert.pem"),
        );
        // The same certificate file under two names: one x509 series set, from the first name.
        m.set_certificate("dup-a", "pca", &awkward("0B", "dup", "/etc/ssl/dup.pem"));
        m.set_certificate("dup-b", "pca", &awkward("0B", "dup", "/etc/ssl/dup.pem"));
        // No file, no attributes: empty label values.
        m.set_certificate(
            "bare",
            "pca",
            &CertificateFacts {
                subject: DistinguishedName::default(),
                issuer: DistinguishedName::default(),
                filepath: None,
                ..awkward("", "", "/x")
            },
        );
        // Sorted by label values, not by name: "a/..." sorts before "z/...".
        m.set_certificate("zz", "pca", &awkward("01", "first", "/a/cert.pem"));
        for name in ["app \"one\"", "b\\ack\nslash", "zz"] {
            m.record_check(name, "ok");
            m.record_check(name, "time\"out\n");
            m.record_install(name, "verify_failed");
            m.record_renewal(name, "ok", datetime!(2026-01-15 00:00 UTC));
            m.set_cert_ready(name, true);
        }
        m.set_cert_ready("bare", false);
        m.set_scm_expiring_without_successor("b\\ack\nslash", true);
        m.set_read_error("zz", true);
        m.set_read_error("only-errors", true);
        m.set_last_successful_check(datetime!(2026-02-01 00:00 UTC));
        m.request_done(
            Service::Pca,
            "create_certificate",
            Some(200),
            Duration::from_millis(40),
        );
        m.request_done(
            Service::Scm,
            "list_certificates",
            None,
            Duration::from_secs(31),
        );
        m.token_refreshed();
        let other = IntCounter::new("zzz_component_total", "A component's own counter.").unwrap();
        other.inc();
        m.registry().register(Box::new(other)).unwrap();

        let new = m.encode().unwrap();
        assert_eq!(new, legacy::encode(&m));
        assert!(
            new.contains(r#"filepath="/etc/ssl/we\"ird\\dir/ce\nrt.pem""#),
            "{new}"
        );
        assert!(new.contains("x509_cert_not_after{filename=\"\",filepath=\"\",issuer_C=\"\""));
        assert_eq!(
            text::find(&parse(&new).unwrap(), "x509_cert_expired", &[]).count(),
            5
        );
        // A second scrape reuses the cached label sets; the clock still moves the values.
        t.store(
            datetime!(2026-05-01 00:00 UTC).unix_timestamp(),
            Ordering::SeqCst,
        );
        let later = m.encode().unwrap();
        assert_eq!(later, legacy::encode(&m));
        assert_ne!(later, new);
        // Changes invalidate the cached order.
        m.set_certificate("zz", "pca", &awkward("02", "renewed", "/a/cert.pem"));
        m.remove_certificate("dup-a");
        assert_eq!(m.encode().unwrap(), legacy::encode(&m));
        m.retain_certificates(["zz", "bare"]);
        assert_eq!(m.encode().unwrap(), legacy::encode(&m));
    }
}
