//! SCM v3 in the emulator: SSL certificates imported through the API (parsed as real X.509,
//! key checked against the certificate), listed, shown, exported, deleted ([`certs`]), and
//! pushed / batch-pushed / deployed to ELB and WAF ([`deploy`]), every push recorded for
//! `/_emulator/deployments`.
//!
//! Readings of the reference this emulator commits to (the client in `crate::cloud::scm` agrees,
//! but neither takes them from the other):
//! - `offset` is a record offset (0..=100), not a page index.
//! - `expired_days_since=N` keeps certificates still valid or expired at most N days ago
//!   (the SDK's "证书在有效期内及最多过期xx天"); absent, nothing is filtered.
//! - `duplicate_check=true` refuses a certificate (same SHA-1 fingerprint) the account already
//!   holds, with SCM.0063. This follows the field's name and the SDK text ("true：不同意上传相同
//!   证书"); the English pages word it the other way round.
//! - Status follows the emulator clock: past `not_after` a certificate is `EXPIRED`, else `UPLOAD`.
//! - Unknown certificate ids answer 400 SCM.0008; ids that are not letters and digits 400 SCM.0020.

pub mod certs;
pub mod deploy;

use axum::Router;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ApiError, Shared};
use crate::pki;

/// One imported certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScmCertRecord {
    /// `scs` + 13 digits.
    pub id: String,
    pub name: String,
    /// The leaf certificate, PEM with `\n`.
    pub certificate_pem: String,
    /// The chain above it, PEM with `\n` (may be empty).
    pub chain_pem: String,
    /// The private key as uploaded, `\n` line ends. Never logged.
    pub private_key_pem: String,
    /// The subject CN, else the first subjectAltName.
    pub domain: String,
    /// Every subjectAltName value.
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-1, lower-case hex.
    pub fingerprint: String,
    /// e.g. `SHA256WITHRSA`.
    pub signature_algorithm: String,
    pub enterprise_project_id: String,
    /// Import time on the emulator clock (unix seconds): `certUpdateTime`.
    pub updated_at: i64,
}

impl ScmCertRecord {
    pub fn not_after_time(&self) -> OffsetDateTime {
        from_unix(self.not_after)
    }

    pub fn not_before_time(&self) -> OffsetDateTime {
        from_unix(self.not_before)
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now > self.not_after_time()
    }

    /// `EXPIRED` past `not_after`, else `UPLOAD`.
    pub fn status(&self, now: OffsetDateTime) -> &'static str {
        if self.is_expired(now) {
            "EXPIRED"
        } else {
            "UPLOAD"
        }
    }

    /// `domain` and `sans`, without repeats.
    pub fn all_domains(&self) -> Vec<&str> {
        let mut out: Vec<&str> = vec![self.domain.as_str()];
        for s in &self.sans {
            if !out.contains(&s.as_str()) {
                out.push(s);
            }
        }
        out
    }
}

/// One push or deploy of a certificate to one target, successful or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub seq: u64,
    /// `push`, `batch_push` or `deploy`.
    pub operation: String,
    pub certificate_id: String,
    pub certificate_name: String,
    /// SHA-1 of the certificate, lower-case hex.
    pub fingerprint: String,
    /// `ELB` or `WAF`.
    pub service: String,
    /// Region (push) or project name (deploy), when given.
    pub project: Option<String>,
    /// Deploy only.
    pub resource_id: Option<String>,
    pub resource_type: Option<String>,
    pub enterprise_project_id: Option<String>,
    /// Emulator clock, RFC 3339.
    pub time: String,
    pub ok: bool,
    /// `success`, or the injected failure.
    pub message: String,
}

/// Everything SCM stores.
#[derive(Default, Serialize, Deserialize)]
pub struct ScmStore {
    /// Imported certificates, in import order.
    #[serde(default)]
    pub certificates: Vec<ScmCertRecord>,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// The numeric part of the last id handed out (ids grow even when the clock moves back).
    #[serde(default)]
    pub last_id: u64,
}

impl ScmStore {
    /// What was pushed and deployed where, for `/_emulator/deployments`.
    pub fn deployments_json(&self) -> serde_json::Value {
        serde_json::json!({ "deployments": self.deployments })
    }

    /// Every push/deploy attempt, oldest first.
    pub fn deployments(&self) -> &[Deployment] {
        &self.deployments
    }

    /// The successful pushes/deploys of one certificate.
    pub fn deployments_of(&self, certificate_id: &str) -> Vec<Deployment> {
        self.deployments
            .iter()
            .filter(|d| d.ok && d.certificate_id == certificate_id)
            .cloned()
            .collect()
    }

    pub fn certificate(&self, id: &str) -> Option<&ScmCertRecord> {
        self.certificates.iter().find(|c| c.id == id)
    }

    pub fn certificates(&self) -> &[ScmCertRecord] {
        &self.certificates
    }

    /// A fresh `scs` + 13-digit id, at least the clock's epoch milliseconds.
    fn next_id(&mut self, now: OffsetDateTime) -> String {
        let ms = u64::try_from(crate::emulator::wire::epoch_ms(now)).unwrap_or(0);
        let mut n = ms.max(self.last_id + 1);
        while self.certificate(&format!("scs{n:013}")).is_some() {
            n += 1;
        }
        self.last_id = n;
        format!("scs{n:013}")
    }

    fn record(&mut self, mut d: Deployment) {
        d.seq = self.deployments.len() as u64 + 1;
        self.deployments.push(d);
    }
}

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v3/scm/certificates", get(certs::list))
        .route("/v3/scm/certificates/import", post(certs::import))
        .route(
            "/v3/scm/certificates/{certificate_id}",
            get(certs::show).delete(certs::delete),
        )
        .route(
            "/v3/scm/certificates/{certificate_id}/export",
            post(certs::export),
        )
        .route(
            "/v3/scm/certificates/{certificate_id}/push",
            post(deploy::push),
        )
        .route(
            "/v3/scm/certificates/{certificate_id}/batch-push",
            post(deploy::batch_push),
        )
        .route(
            "/v3/scm/certificates/{certificate_id}/deploy",
            post(deploy::deploy),
        )
}

/// 400 with an SCM code.
pub(crate) fn bad(code: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(400, code, msg)
}

/// SCM.0005, the generic bad-parameter answer (also for malformed JSON).
pub(crate) fn bad_param(detail: impl std::fmt::Display) -> ApiError {
    bad("SCM.0005", format!("Incorrect request parameter: {detail}"))
}

/// Look a certificate up by the path id, with the documented codes.
pub(crate) fn find_cert(shared: &Shared, id: &str) -> Result<ScmCertRecord, ApiError> {
    let well_formed =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !well_formed {
        return Err(bad("SCM.0020", format!("Incorrect certificate ID: {id:?}")));
    }
    shared
        .with_state(|st| st.scm.certificate(id).cloned())
        .ok_or_else(|| {
            bad(
                "SCM.0008",
                format!("Abnormal certificate ID: {id} not found"),
            )
        })
}

/// `0` or an enterprise project UUID (lower-case letters and digits in 8-4-4-4-12).
pub(crate) fn valid_enterprise_project_id(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        })
}

/// Regions the emulator knows (Huawei Cloud public regions, plus the reference's example).
pub const KNOWN_REGIONS: &[&str] = &[
    "af-north-1",
    "af-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "cn-east-2",
    "cn-east-3",
    "cn-east-4",
    "cn-east-5",
    "cn-north-1",
    "cn-north-2",
    "cn-north-4",
    "cn-north-9",
    "cn-north-11",
    "cn-north-12",
    "cn-south-1",
    "cn-south-2",
    "cn-south-4",
    "cn-southwest-2",
    "eu-west-0",
    "eu-west-101",
    "la-north-2",
    "la-south-2",
    "me-east-1",
    "my-kualalumpur-1",
    "na-mexico-1",
    "ru-moscow-1",
    "sa-brazil-1",
    "tr-west-1",
];

/// Check a region (or `region_subproject` project name): SCM.0061 when malformed, SCM.0068
/// when unknown.
pub(crate) fn check_region(project: &str) -> Result<(), ApiError> {
    let region = project.split_once('_').map_or(project, |(r, _)| r);
    let well_formed = !region.is_empty()
        && project.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(bad(
            "SCM.0061",
            format!("Region parameter error: {project:?}"),
        ));
    }
    if !KNOWN_REGIONS.contains(&region) {
        return Err(bad("SCM.0068", format!("Unsupported region: {region}")));
    }
    Ok(())
}

pub(crate) fn from_unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A certificate to import, parsed and checked outside the state lock.
pub(crate) struct Parsed {
    pub certificate_pem: String,
    pub chain_pem: String,
    pub private_key_pem: String,
    pub domain: String,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: String,
    pub signature_algorithm: String,
}

/// Parse and check certificate, chain and key with the documented codes. The validity is
/// checked by the caller (seeding imports expired certificates on purpose).
pub(crate) fn parse_import(
    certificate: &str,
    chain: Option<&str>,
    private_key: &str,
) -> Result<Parsed, ApiError> {
    let certs = pki::parse_pem_chain(certificate).map_err(|e| {
        bad(
            "SCM.0006",
            format!("The uploaded certificate failed to be resolved: {e}"),
        )
    })?;
    let Some((leaf, rest)) = certs.split_first() else {
        return Err(bad(
            "SCM.0006",
            "The uploaded certificate failed to be resolved: no certificate",
        ));
    };
    let chain_certs = match chain.filter(|c| !c.trim().is_empty()) {
        Some(c) => pki::parse_pem_chain(c).map_err(|e| {
            ApiError::new(
                500,
                "SCM.0013",
                format!("The uploaded certificate chain failed to be resolved: {e}"),
            )
        })?,
        None => rest.to_vec(),
    };
    let sans: Vec<String> = leaf.sans.iter().map(|s| s.value()).collect();
    let domain = leaf
        .subject
        .common_name
        .clone()
        .filter(|cn| !cn.is_empty())
        .or_else(|| sans.first().cloned())
        .ok_or_else(|| {
            bad(
                "SCM.0009",
                "Failed to upload the certificate. No domain name is bound to the certificate.",
            )
        })?;
    let key = pki::PrivateKey::from_pem(private_key).map_err(|e| {
        bad(
            "SCM.0012",
            format!("The uploaded private key failed to be resolved: {e}"),
        )
    })?;
    if !pki::key_matches_cert(&key, leaf) {
        return Err(bad(
            "SCM.0014",
            "The uploaded certificate does not match the private key.",
        ));
    }
    let chain_pem: String = chain_certs.iter().map(pki::CertInfo::to_pem).collect();
    Ok(Parsed {
        certificate_pem: leaf.to_pem(),
        chain_pem,
        private_key_pem: crate::emulator::wire::pem_lf(private_key.trim()),
        domain,
        sans,
        not_before: leaf.not_before.unix_timestamp(),
        not_after: leaf.not_after.unix_timestamp(),
        fingerprint: leaf.sha1_fingerprint_hex.to_ascii_lowercase(),
        signature_algorithm: leaf.signature_algorithm.clone(),
    })
}

/// Store a parsed certificate; SCM.0063 when `duplicate_check` finds the same certificate.
pub(crate) fn insert(
    shared: &Shared,
    parsed: Parsed,
    name: &str,
    enterprise_project_id: &str,
    duplicate_check: bool,
) -> Result<String, ApiError> {
    let now = shared.now();
    shared.update_state(|st| {
        if duplicate_check
            && st
                .scm
                .certificates
                .iter()
                .any(|c| c.fingerprint == parsed.fingerprint)
        {
            return Err(bad(
                "SCM.0063",
                "Duplicate domain error: this certificate has already been uploaded",
            ));
        }
        let id = st.scm.next_id(now);
        st.scm.certificates.push(ScmCertRecord {
            id: id.clone(),
            name: name.to_owned(),
            certificate_pem: parsed.certificate_pem,
            chain_pem: parsed.chain_pem,
            private_key_pem: parsed.private_key_pem,
            domain: parsed.domain,
            sans: parsed.sans,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            fingerprint: parsed.fingerprint,
            signature_algorithm: parsed.signature_algorithm,
            enterprise_project_id: enterprise_project_id.to_owned(),
            updated_at: now.unix_timestamp(),
        });
        Ok(id)
    })
}

/// Store a certificate as `POST /v3/scm/certificates/import` would (parsed, key checked;
/// validity not checked, as for seeding), without the HTTP round trip or the AK/SK signature:
/// for fixtures and benchmarks that need thousands of certificates. Returns its id.
pub fn import_certificate(
    shared: &Shared,
    name: &str,
    certificate: &str,
    chain: Option<&str>,
    private_key: &str,
) -> anyhow::Result<String> {
    let parsed = parse_import(certificate, chain, private_key)
        .map_err(|e| anyhow::anyhow!("certificate {name}: {} {}", e.code, e.msg))?;
    insert(shared, parsed, name, "0", false)
        .map_err(|e| anyhow::anyhow!("certificate {name}: {} {}", e.code, e.msg))
}

/// A demo "public" CA (self-signed EC P-256 root) and the PEM of its certificate and key.
pub fn demo_ca(now: OffsetDateTime) -> anyhow::Result<(String, pki::PrivateKey)> {
    let key = pki::generate_key(pki::KeyAlgorithm::Ec256)?;
    let mut dn = pki::DistinguishedName::with_common_name("Emulator Demo Public Root CA");
    dn.organization = Some("CCM Emulator".into());
    dn.country = Some("CN".into());
    let spec = pki::CertificateSpec::new_ca(
        dn,
        now - time::Duration::days(400),
        now + time::Duration::days(3650),
        None,
    );
    let pem = pki::self_signed(&spec, &key)?;
    Ok((pem, key))
}

/// A leaf for `cn` (+ `sans`) valid from `not_before` to `not_after`, signed by the CA: returns
/// (certificate PEM, key PEM).
pub fn demo_leaf(
    ca: &(String, pki::PrivateKey),
    cn: &str,
    sans: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    let key = pki::generate_key(pki::KeyAlgorithm::Ec256)?;
    let mut all = vec![pki::SubjectAltName::Dns(cn.to_owned())];
    all.extend(
        sans.iter()
            .map(|s| pki::SubjectAltName::Dns((*s).to_owned())),
    );
    let spec = pki::CertificateSpec::new_leaf(
        pki::DistinguishedName::with_common_name(cn),
        not_before,
        not_after,
        all,
    );
    let pem = pki::issue(&spec, &pki::PublicKeySource::Key(&key), &ca.0, &ca.1)?;
    Ok((pem, key.to_pem()))
}

/// Demo certificates at various distances from expiry: expired 2 days ago, 5, 20 and 200 days
/// left, and `demo-app` twice (an older one with 10 days left, a newer one with 300).
pub fn seed_demo(shared: &Shared) -> anyhow::Result<()> {
    let now = shared.now();
    let ca = demo_ca(now)?;
    let plan: [(&str, &str, &[&str], i64, i64); 6] = [
        ("demo-expired", "old.example.com", &[], -92, -2),
        ("demo-shop", "shop.example.com", &[], -85, 5),
        (
            "demo-api",
            "api.example.com",
            &["api2.example.com", "*.api.example.com"],
            -70,
            20,
        ),
        ("demo-www", "www.example.com", &["example.com"], -165, 200),
        ("demo-app", "app.example.com", &[], -355, 10),
        ("demo-app", "app.example.com", &[], -65, 300),
    ];
    for (name, cn, sans, from_days, to_days) in plan {
        let (cert, key) = demo_leaf(
            &ca,
            cn,
            sans,
            now + time::Duration::days(from_days),
            now + time::Duration::days(to_days),
        )?;
        let parsed = parse_import(&cert, Some(&ca.0), &key)
            .map_err(|e| anyhow::anyhow!("demo certificate {name}: {}", e.msg))?;
        insert(shared, parsed, name, "0", false)
            .map_err(|e| anyhow::anyhow!("demo certificate {name}: {}", e.msg))?;
        // As if each was imported an hour after it was issued: the newer demo-app sorts first
        // by certUpdateTime.
        shared.update_state(|st| {
            if let Some(c) = st.scm.certificates.last_mut() {
                c.updated_at = c.not_before + 3600;
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_and_project_checks() {
        assert!(check_region("ap-southeast-1").is_ok());
        assert!(check_region("cn-north-4_subproject").is_ok());
        assert_eq!(
            check_region("mars-1").map_err(|e| e.code),
            Err("SCM.0068".into())
        );
        assert_eq!(
            check_region("AP southeast").map_err(|e| e.code),
            Err("SCM.0061".into())
        );
        assert!(valid_enterprise_project_id("0"));
        assert!(valid_enterprise_project_id(
            "2b5a3c1d-0e4f-4a6b-8c7d-9e0f1a2b3c4d"
        ));
        assert!(!valid_enterprise_project_id("all"));
        assert!(!valid_enterprise_project_id(
            "2B5A3C1D-0E4F-4A6B-8C7D-9E0F1A2B3C4D"
        ));
    }

    #[test]
    fn ids_are_scs_and_13_digits_and_unique() {
        let mut store = ScmStore::default();
        let now = OffsetDateTime::now_utc();
        let a = store.next_id(now);
        let b = store.next_id(now - time::Duration::days(1));
        assert_eq!(a.len(), 16);
        assert!(a.starts_with("scs") && a[3..].bytes().all(|c| c.is_ascii_digit()));
        assert!(b > a, "ids keep growing when the clock moves back");
    }
}
