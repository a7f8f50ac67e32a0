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

mod server;
pub mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use time::OffsetDateTime;

use crate::agent::clock::Clock;
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

        let certs = Arc::new(CertCollector::new(clock)?);
        registry.register(Box::new(CollectorRef(certs.clone())))?;

        Ok(Self {
            registry,
            certs,
            api_requests,
            api_duration,
            token_refreshes,
            last_successful_check,
        })
    }

    /// The registry, to register more collectors (e.g. a component's own metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Record what a certificate is now: its validity and identity. Replaces earlier facts, so the
    /// series of a replaced certificate (old serial) disappear.
    pub fn set_certificate(&self, name: &str, source: &str, facts: &CertificateFacts) {
        self.certs.update(name, |c| {
            c.source = source.to_owned();
            c.facts = Some(facts.clone());
        });
    }

    /// Forget a certificate (removed from the configuration): all its series disappear.
    pub fn remove_certificate(&self, name: &str) {
        self.certs.lock().certs.remove(name);
    }

    /// Keep only the certificates named in `names` (after a configuration reload).
    pub fn retain_certificates<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = names.into_iter().collect();
        self.certs
            .lock()
            .certs
            .retain(|name, _| keep.contains(name.as_str()));
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

    /// The text exposition format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let families = self.registry.gather();
        let mut buf = Vec::new();
        TextEncoder::new().encode(&families, &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
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

/// The per-certificate series: built from [`CertState`] at every scrape, so removing a
/// certificate or replacing its serial leaves no stale series behind.
struct CertCollector {
    clock: Clock,
    state: Mutex<CollectorState>,
    ready: GaugeVec,
    not_before: GaugeVec,
    not_after: GaugeVec,
    cert_ready: GaugeVec,
    last_renewal: GaugeVec,
    scm_expiring: GaugeVec,
    checks: IntCounterVec,
    renewals: IntCounterVec,
    installs: IntCounterVec,
    x509_not_before: GaugeVec,
    x509_not_after: GaugeVec,
    x509_expired: GaugeVec,
    x509_expires_in: GaugeVec,
    x509_valid_since: GaugeVec,
    x509_read_errors: GaugeVec,
}

#[derive(Default)]
struct CollectorState {
    certs: BTreeMap<String, CertState>,
    readiness: Option<Readiness>,
}

impl CertCollector {
    fn new(clock: Clock) -> prometheus::Result<Self> {
        let gauge =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["name", "result"]);
        Ok(Self {
            clock,
            state: Mutex::new(CollectorState::default()),
            ready: gauge(
                "ccm_agent_ready",
                "1 once the agent has completed its first check round and is ready.",
                &[],
            )?,
            not_before: gauge(
                "ccm_agent_certificate_not_before_timestamp_seconds",
                "Unix time the current certificate becomes valid.",
                &["name", "source"],
            )?,
            not_after: gauge(
                "ccm_agent_certificate_not_after_timestamp_seconds",
                "Unix time the current certificate expires.",
                &["name", "source"],
            )?,
            cert_ready: gauge(
                "ccm_agent_certificate_ready",
                "1 when the certificate is valid and installed, 0 when it needs attention.",
                &["name"],
            )?,
            last_renewal: gauge(
                "ccm_agent_certificate_last_renewal_timestamp_seconds",
                "Unix time of the last successful renewal of the certificate.",
                &["name"],
            )?,
            scm_expiring: gauge(
                "ccm_agent_scm_expiring_without_successor",
                "1 when an SCM certificate nears expiry and SCM holds no successor: renew or \
                 buy it in SCM.",
                &["name"],
            )?,
            checks: counter(
                "ccm_agent_checks_total",
                "Certificate checks, by certificate and result.",
            )?,
            renewals: counter(
                "ccm_agent_renewals_total",
                "Certificate renewal attempts, by certificate and result.",
            )?,
            installs: counter(
                "ccm_agent_installs_total",
                "Certificate installs, by certificate and result.",
            )?,
            x509_not_before: gauge(
                "x509_cert_not_before",
                "Indicates the certificate's not before timestamp",
                X509_LABELS,
            )?,
            x509_not_after: gauge(
                "x509_cert_not_after",
                "Indicates the certificate's not after timestamp",
                X509_LABELS,
            )?,
            x509_expired: gauge(
                "x509_cert_expired",
                "Indicates if the certificate is expired",
                X509_LABELS,
            )?,
            x509_expires_in: gauge(
                "x509_cert_expires_in_seconds",
                "Indicates the remaining time before the certificate's not after timestamp",
                X509_LABELS,
            )?,
            x509_valid_since: gauge(
                "x509_cert_valid_since_seconds",
                "Indicates the elapsed time since the certificate's not before timestamp",
                X509_LABELS,
            )?,
            x509_read_errors: gauge(
                "x509_read_errors",
                "Indicates the number of read failure(s)",
                &[],
            )?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, CollectorState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut CertState)) {
        let mut st = self.lock();
        f(st.certs.entry(name.to_owned()).or_default());
    }

    fn gauges(&self) -> [&GaugeVec; 12] {
        [
            &self.ready,
            &self.not_before,
            &self.not_after,
            &self.cert_ready,
            &self.last_renewal,
            &self.scm_expiring,
            &self.x509_not_before,
            &self.x509_not_after,
            &self.x509_expired,
            &self.x509_expires_in,
            &self.x509_valid_since,
            &self.x509_read_errors,
        ]
    }

    fn counters(&self) -> [&IntCounterVec; 3] {
        [&self.checks, &self.renewals, &self.installs]
    }
}

/// Registers a shared [`CertCollector`] (the registry wants an owned collector).
struct CollectorRef(Arc<CertCollector>);

impl Collector for CollectorRef {
    fn desc(&self) -> Vec<&Desc> {
        let c = &self.0;
        let mut descs: Vec<&Desc> = c.gauges().into_iter().flat_map(|g| g.desc()).collect();
        descs.extend(c.counters().into_iter().flat_map(|v| v.desc()));
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let c = &self.0;
        let now = c.clock.now();
        // Held across reset, fill and collect: concurrent scrapes must not interleave on the
        // shared vectors.
        let st = c.lock();
        for g in c.gauges() {
            g.reset();
        }
        for v in c.counters() {
            v.reset();
        }

        if let Some(readiness) = &st.readiness {
            c.ready
                .with_label_values::<&str>(&[])
                .set(if readiness.is_ready() { 1.0 } else { 0.0 });
        }

        let mut read_errors = 0u32;
        let mut x509_seen = std::collections::BTreeSet::new();
        for (name, cert) in &st.certs {
            let name = name.as_str();
            for (vec, counts) in [
                (&c.checks, &cert.checks),
                (&c.renewals, &cert.renewals),
                (&c.installs, &cert.installs),
            ] {
                for (result, n) in &counts.0 {
                    vec.with_label_values(&[name, result]).inc_by(*n);
                }
            }
            if let Some(ready) = cert.ready {
                c.cert_ready
                    .with_label_values(&[name])
                    .set(f64::from(u8::from(ready)));
            }
            if let Some(flag) = cert.scm_expiring_without_successor {
                c.scm_expiring
                    .with_label_values(&[name])
                    .set(f64::from(u8::from(flag)));
            }
            if let Some(at) = cert.last_renewal {
                c.last_renewal
                    .with_label_values(&[name])
                    .set(unix_seconds(at));
            }
            if cert.read_error {
                read_errors += 1;
            }
            let Some(facts) = &cert.facts else { continue };
            let source = cert.source.as_str();
            c.not_before
                .with_label_values(&[name, source])
                .set(unix_seconds(facts.not_before));
            c.not_after
                .with_label_values(&[name, source])
                .set(unix_seconds(facts.not_after));

            let labels = facts.x509_label_values();
            // Two names holding the very same certificate file would give duplicate series.
            if !x509_seen.insert(labels.clone()) {
                continue;
            }
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            let expired = now > facts.not_after;
            c.x509_not_before
                .with_label_values(&labels)
                .set(unix_seconds(facts.not_before));
            c.x509_not_after
                .with_label_values(&labels)
                .set(unix_seconds(facts.not_after));
            c.x509_expired
                .with_label_values(&labels)
                .set(f64::from(u8::from(expired)));
            c.x509_expires_in
                .with_label_values(&labels)
                .set((facts.not_after - now).as_seconds_f64());
            c.x509_valid_since
                .with_label_values(&labels)
                .set((now - facts.not_before).as_seconds_f64());
        }
        c.x509_read_errors
            .with_label_values::<&str>(&[])
            .set(f64::from(read_errors));

        let mut families: Vec<MetricFamily> =
            c.gauges().into_iter().flat_map(|g| g.collect()).collect();
        families.extend(c.counters().into_iter().flat_map(|v| v.collect()));
        families
    }
}

#[cfg(test)]
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
        assert_eq!(serials, ["11", "12"], "old serial 10 of \"app\" must be gone");

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
}
