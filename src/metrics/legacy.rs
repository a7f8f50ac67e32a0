//! The rendering of the per-certificate families before they were written straight to text
//! (prometheus `MetricVec`s rebuilt at every scrape), kept for tests only: the direct rendering
//! must produce the very same exposition.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

use super::{CertCollector, Metrics, X509_LABELS, unix_seconds};

/// What [`Metrics::encode`] returned before the direct rendering.
pub(super) fn encode(m: &Metrics) -> String {
    let old = Registry::new();
    old.register(Box::new(CollectorRef(Arc::new(
        OldVecs::new(m.certs.clone()).unwrap(),
    ))))
    .unwrap();
    let mut families: std::collections::BTreeMap<String, MetricFamily> = m
        .registry
        .gather()
        .into_iter()
        .map(|f| (f.name().to_owned(), f))
        .collect();
    for f in old.gather() {
        families.insert(f.name().to_owned(), f);
    }
    let families: Vec<MetricFamily> = families.into_values().collect();
    TextEncoder::new().encode_to_string(&families).unwrap()
}

/// The per-certificate families as prometheus vectors, reset and refilled at every scrape.
struct OldVecs {
    certs: Arc<CertCollector>,
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

impl OldVecs {
    fn new(certs: Arc<CertCollector>) -> prometheus::Result<Self> {
        let gauge =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["name", "result"]);
        Ok(Self {
            certs,
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

/// Registers a shared [`OldVecs`] (the registry wants an owned collector).
struct CollectorRef(Arc<OldVecs>);

impl Collector for CollectorRef {
    fn desc(&self) -> Vec<&Desc> {
        let c = &self.0;
        let mut descs: Vec<&Desc> = c.gauges().into_iter().flat_map(|g| g.desc()).collect();
        descs.extend(c.counters().into_iter().flat_map(|v| v.desc()));
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let c = &self.0;
        let now = c.certs.clock.now();
        // Held across reset, fill and collect: concurrent scrapes must not interleave on the
        // shared vectors.
        let st = c.certs.lock();
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
