//! PCA private CAs in the emulator: every `/v1/private-certificate-authorities` route, the CA
//! state machine, real keys and X.509 (root CAs self-signed, subordinates signed by their
//! issuer's key, pending subordinates with a real CSR), the documented validation and PCA error
//! codes, the CA quota, and the OBS agency and buckets used for CRL publishing.
//!
//! # Rules enforced (API reference 4.2.1, A.2.2)
//! - States: `PENDING` → (activate | import) → `ACTIVED` ⇄ (disable/enable) `DISABLED`;
//!   `DISABLED` → (delete, 7..30 days) `DELETED` → (restore) `DISABLED`; a `DELETED` CA is gone
//!   once its `delete_time` passes on the emulator clock; a `PENDING` CA is deleted at once.
//!   An `ACTIVED` CA past `not_after` is `EXPIRED` (the emulator clock). A disallowed transition
//!   answers 403 `PCA.00030201`.
//! - Validity: `YEAR` = calendar years, `MONTH` = 31 days, `DAY`, `HOUR`; a root CA at most 30
//!   years, a subordinate at most 20 and never beyond its issuer's `not_after`; `start_from` not
//!   earlier than now − 5 minutes (`PCA.00020109`).
//! - Key usages: a root CA's are fixed (digitalSignature, keyCertSign, cRLSign) and a requested
//!   `key_usages` is ignored, as the reference says; a subordinate's default to the same and may
//!   be customised, but must name known usages and include keyCertSign (`PCA.00020001`).
//! - Path length: a root CA is unlimited (reported as 7); a subordinate 0..=6 (default 0) and
//!   strictly below its issuer's (`PCA.00020203`); an issuer with path length 0 cannot sign a CA.
//! - Distinguished name: all six attributes are required for a root CA and for a pending
//!   subordinate; a subordinate issued at once inherits missing attributes (all but the common
//!   name) from its issuer. Lengths and characters per the CA-details page (`PCA.00020101`).
//! - Quota: [`CA_QUOTA`] CAs per account (every CA in the store counts, `DELETED` included);
//!   creating one more answers 403 `PCA.00030001`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::emulator::wire::{
    CrlConfiguration, DistinguishedName, epoch_ms as to_epoch_ms, from_epoch_ms, is_pca_id,
};
use crate::emulator::{ApiError, Shared, parse_json};
use crate::pki;

/// CAs an account may hold (the reference's documented quota).
pub const CA_QUOTA: u64 = 100;
/// The longest validity of a root CA, in years.
pub const MAX_ROOT_YEARS: i32 = 30;
/// The longest validity of a subordinate CA, in years.
pub const MAX_SUB_YEARS: i32 = 20;
/// What the API reports as the path length of a root CA (unlimited in the certificate).
pub const ROOT_PATH_LENGTH: u8 = 7;
/// The longest path length a subordinate CA may have.
pub const MAX_SUB_PATH_LENGTH: u8 = 6;
/// How far in the past `validity.start_from` may lie.
pub const START_FROM_SLACK: Duration = Duration::minutes(5);
/// The common names of the demo CAs.
pub const DEMO_ROOT_CN: &str = "ccm-agent demo root";
pub const DEMO_SUB_CN: &str = "ccm-agent demo issuing CA";

const CAS: &str = "/v1/private-certificate-authorities";

/// One CA. The certificate side reads these fields; the CA side may add more, but not rename
/// or remove these.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaRecord {
    /// UUID.
    pub id: String,
    /// `ROOT` or `SUBORDINATE`.
    pub ca_type: String,
    /// `PENDING`, `ACTIVED`, `DISABLED`, `DELETED` (stored; the clock may also make a CA
    /// expired: use [`CaRecord::effective_status`]).
    pub status: String,
    pub distinguished_name: DistinguishedName,
    /// `RSA2048`, `RSA4096`, `EC256`, `EC384`.
    pub key_algorithm: String,
    /// `SHA256`, `SHA384`, `SHA512`; empty while a subordinate CA is pending without one.
    pub signature_algorithm: String,
    /// The CA's private key, PKCS#8 PEM. Never sent to clients.
    pub key_pem: String,
    /// The CA's certificate; `None` while PENDING.
    pub certificate_pem: Option<String>,
    /// The certificates above this CA up to the root, PEM, nearest first (empty for a root).
    pub chain_pem: String,
    pub issuer_id: Option<String>,
    /// `Some(7)` for a root CA (unlimited: the certificate has no pathLenConstraint), 0..=6 for
    /// an issued subordinate, `None` while pending.
    pub path_length: Option<u8>,
    /// Epoch milliseconds; `None` while PENDING.
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    /// Epoch milliseconds.
    #[serde(default)]
    pub create_time: i64,
    /// When a `DELETED` CA disappears, epoch milliseconds.
    #[serde(default)]
    pub delete_time: Option<i64>,
    /// Decimal, as the API shows it; the same number is the certificate's serial.
    #[serde(default)]
    pub serial_number: Option<String>,
    /// `GENERATE` or `IMPORT`.
    #[serde(default)]
    pub gen_mode: String,
    /// The issuer's common name when issued.
    #[serde(default)]
    pub issuer_name: Option<String>,
    /// API names (`digitalSignature`, ...).
    #[serde(default)]
    pub key_usages: Vec<String>,
    #[serde(default)]
    pub crl_configuration: CrlConfiguration,
    /// The CSR of a pending CA, PEM.
    #[serde(default)]
    pub csr_pem: Option<String>,
    #[serde(default = "default_enterprise_project")]
    pub enterprise_project_id: String,
    /// Set when a subordinate CA was revoked: the reason and when (epoch ms). The status does
    /// not change (the reference names no state for it).
    #[serde(default)]
    pub revoked_reason: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

fn default_enterprise_project() -> String {
    "0".to_owned()
}

/// CAs the service hosts (holds the key of): the ones listed and counted against the quota.
/// An intermediate CA issued from a customer's CSR is recorded (so certificates can chain to
/// it) but, as the reference says, neither listed nor counted.
fn hosted_count(cas: &std::collections::BTreeMap<String, CaRecord>) -> usize {
    cas.values().filter(|c| c.is_hosted()).count()
}

impl CaRecord {
    /// Whether the service holds this CA's key (false for an intermediate issued via CSR).
    pub fn is_hosted(&self) -> bool {
        !self.key_pem.is_empty()
    }

    /// The status as clients see it at `now_ms`: an active CA past `not_after` is `EXPIRED`.
    /// A disabled CA stays `DISABLED` (it was disabled on purpose, and must stay deletable).
    pub fn effective_status(&self, now_ms: i64) -> &str {
        match (self.status.as_str(), self.not_after) {
            ("ACTIVED", Some(na)) if na <= now_ms => "EXPIRED",
            (s, _) => s,
        }
    }

    /// Whether the CA may sign certificates at `now_ms` (`ACTIVED` and not expired).
    pub fn can_issue(&self, now_ms: i64) -> bool {
        self.effective_status(now_ms) == "ACTIVED" && self.certificate_pem.is_some()
    }

    fn common_name(&self) -> &str {
        self.distinguished_name.common_name.as_deref().unwrap_or("")
    }
}

/// The OBS side of CRL publishing: the agency PCA holds, and the buckets of the account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObsState {
    pub agency_id: Option<String>,
    pub buckets: Vec<ObsBucketRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObsBucketRecord {
    pub bucket_name: String,
    pub create_time: i64,
}

/// Buckets every emulated account has.
pub const DEMO_BUCKETS: [&str; 2] = ["ccm-crl-demo", "ccm-crl-backup"];

impl Default for ObsState {
    fn default() -> Self {
        Self {
            agency_id: None,
            buckets: DEMO_BUCKETS
                .iter()
                .enumerate()
                .map(|(i, b)| ObsBucketRecord {
                    bucket_name: (*b).to_owned(),
                    create_time: 1_554_867_690_718 + i as i64 * 81_828_928,
                })
                .collect(),
        }
    }
}

// ---- errors (appendix A.2.2) ----

fn err(status: u16, code: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, code, msg)
}
fn e_param(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020001", msg)
}
fn e_dn(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020101", msg)
}
fn e_key_alg(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020102", msg)
}
fn e_sig(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020103", msg)
}
fn e_validity(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020109", msg)
}
fn e_ca_id(id: &str) -> ApiError {
    let shown: String = id.chars().take(64).collect();
    err(
        400,
        "PCA.00020201",
        format!(
            "Invalid CA ID {shown:?}. Valid CA IDs use a hexadecimal xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx format."
        ),
    )
}
fn e_ca_type(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020202", msg)
}
fn e_path(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020203", msg)
}
fn e_crl(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020204", msg)
}
fn e_cert(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020402", msg)
}
fn e_chain(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020403", msg)
}
fn e_status_value(msg: impl Into<String>) -> ApiError {
    err(400, "PCA.00020404", msg)
}
fn e_quota() -> ApiError {
    err(
        403,
        "PCA.00030001",
        format!("CA or certificate quantity exceeds quota ({CA_QUOTA} CAs)."),
    )
}
fn e_state(op: &str, status: &str, allowed: &str) -> ApiError {
    err(
        403,
        "PCA.00030201",
        format!(
            "Operation not allowed in the current status: {op} needs {allowed}, the CA is {status}."
        ),
    )
}
fn e_key_mismatch() -> ApiError {
    err(
        403,
        "PCA.00030301",
        "Certificate public key and private key does not match.",
    )
}
fn e_obs() -> ApiError {
    err(
        403,
        "PCA.00000006",
        "Obtaining OBS buckets failed: no OBS agency has been created for PCA.",
    )
}
fn e_not_found(id: &str) -> ApiError {
    err(
        404,
        "PCA.00030102",
        format!("CA or certificate is not found: {id}"),
    )
}
fn e_issuer_not_found(id: &str) -> ApiError {
    err(404, "PCA.00030103", format!("Issuer CA is not found: {id}"))
}
fn e_pki(e: pki::PkiError) -> ApiError {
    err(
        500,
        "PCA.00000003",
        format!("Certificate processing failed: {e}"),
    )
}
fn e_key(e: pki::PkiError) -> ApiError {
    err(500, "PCA.00000004", format!("Key processing failed: {e}"))
}

fn is_uuid(s: &str) -> bool {
    is_pca_id(s)
}

fn check_ca_id(id: &str) -> Result<(), ApiError> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(e_ca_id(id))
    }
}

// ---- request bodies as sent (every field optional, so each gets its own error code) ----

/// `CreateCertificateAuthorityRequestBody`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CreateCaBody {
    #[serde(rename = "type")]
    pub ca_type: Option<String>,
    pub distinguished_name: Option<DistinguishedName>,
    pub key_algorithm: Option<String>,
    pub validity: Option<ValidityBody>,
    pub issuer_id: Option<String>,
    pub path_length: Option<i64>,
    pub signature_algorithm: Option<String>,
    pub key_usages: Option<Vec<String>>,
    pub crl_configuration: Option<CrlBody>,
    pub enterprise_project_id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ValidityBody {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<i64>,
    pub start_from: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CrlBody {
    pub enabled: Option<bool>,
    pub crl_name: Option<String>,
    pub obs_bucket_name: Option<String>,
    pub valid_days: Option<i64>,
}

/// `IssueCertificateAuthorityCertificateRequestBody` (activate). Fields for prepaid CAs
/// (`type`, `distinguished_name`, `key_algorithm`, ...) are accepted and ignored.
#[derive(Clone, Debug, Default, Deserialize)]
struct ActivateBody {
    issuer_id: Option<String>,
    path_length: Option<i64>,
    signature_algorithm: Option<String>,
    validity: Option<ValidityBody>,
    key_usages: Option<Vec<String>>,
    crl_configuration: Option<CrlBody>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct ImportBody {
    certificate: Option<String>,
    certificate_chain: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: Option<String>,
}

const REVOCATION_REASONS: [&str; 9] = [
    "UNSPECIFIED",
    "KEY_COMPROMISE",
    "CERTIFICATE_AUTHORITY_COMPROMISE",
    "AFFILIATION_CHANGED",
    "SUPERSEDED",
    "CESSATION_OF_OPERATION",
    "CERTIFICATE_HOLD",
    "PRIVILEGE_WITHDRAWN",
    "ATTRIBUTE_AUTHORITY_COMPROMISE",
];

const KEY_USAGES: [&str; 9] = [
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
    "encipherOnly",
    "decipherOnly",
];

const DEFAULT_CA_KEY_USAGES: [&str; 3] = ["digitalSignature", "keyCertSign", "cRLSign"];

// ---- field validation ----

fn parse_key_algorithm(s: Option<&str>) -> Result<pki::KeyAlgorithm, ApiError> {
    let msg = "Invalid key algorithm. Only RSA2048, RSA4096, EC256, and EC384 are supported.";
    match s {
        Some("RSA2048") => Ok(pki::KeyAlgorithm::Rsa2048),
        Some("RSA4096") => Ok(pki::KeyAlgorithm::Rsa4096),
        Some("EC256") => Ok(pki::KeyAlgorithm::Ec256),
        Some("EC384") => Ok(pki::KeyAlgorithm::Ec384),
        Some(other) => Err(e_key_alg(format!("{msg} Got {other:?}."))),
        None => Err(e_key_alg(format!("key_algorithm is mandatory. {msg}"))),
    }
}

fn parse_signature(s: &str) -> Result<pki::SignatureHash, ApiError> {
    match s {
        "SHA256" => Ok(pki::SignatureHash::Sha256),
        "SHA384" => Ok(pki::SignatureHash::Sha384),
        "SHA512" => Ok(pki::SignatureHash::Sha512),
        other => Err(e_sig(format!(
            "Invalid signature hash algorithm {other:?}. Only SHA256, SHA384, and SHA512 are supported."
        ))),
    }
}

/// Characters the CA-details page allows in DN values (plus `*` in the common name).
fn dn_char_ok(c: char, common_name: bool) -> bool {
    c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | ',') || (common_name && c == '*')
}

/// Check the DN fields that are present; with `all_required`, every attribute must be.
fn validate_dn(dn: &DistinguishedName, all_required: bool) -> Result<(), ApiError> {
    let fields: [(&str, &Option<String>, usize, usize); 6] = [
        ("common_name", &dn.common_name, 1, 64),
        ("country", &dn.country, 2, 2),
        ("state", &dn.state, 1, 128),
        ("locality", &dn.locality, 1, 128),
        ("organization", &dn.organization, 1, 64),
        ("organizational_unit", &dn.organizational_unit, 1, 64),
    ];
    for (name, value, min, max) in fields {
        let Some(v) = value else {
            if all_required || name == "common_name" {
                return Err(e_dn(format!(
                    "Incorrect certificate distinguished name: {name} is mandatory."
                )));
            }
            continue;
        };
        let n = v.chars().count();
        if n < min || n > max {
            return Err(e_dn(format!(
                "Incorrect certificate distinguished name: {name} must be {min} to {max} characters, got {n}."
            )));
        }
        let chars_ok = if name == "country" {
            v.bytes().all(|b| b.is_ascii_alphabetic())
        } else {
            v.chars().all(|c| dn_char_ok(c, name == "common_name"))
        };
        if !chars_ok {
            return Err(e_dn(format!(
                "Incorrect certificate distinguished name: {name} {v:?} contains characters that are not allowed."
            )));
        }
    }
    Ok(())
}

/// Missing attributes (all but the common name) taken from the issuer's name.
fn inherit_dn(dn: &DistinguishedName, issuer: &DistinguishedName) -> DistinguishedName {
    DistinguishedName {
        common_name: dn.common_name.clone(),
        country: dn.country.clone().or_else(|| issuer.country.clone()),
        state: dn.state.clone().or_else(|| issuer.state.clone()),
        locality: dn.locality.clone().or_else(|| issuer.locality.clone()),
        organization: dn
            .organization
            .clone()
            .or_else(|| issuer.organization.clone()),
        organizational_unit: dn
            .organizational_unit
            .clone()
            .or_else(|| issuer.organizational_unit.clone()),
    }
}

fn to_pki_dn(dn: &DistinguishedName) -> pki::DistinguishedName {
    pki::DistinguishedName {
        country: dn.country.clone(),
        state: dn.state.clone(),
        locality: dn.locality.clone(),
        organization: dn.organization.clone(),
        organizational_unit: dn.organizational_unit.clone(),
        common_name: dn.common_name.clone(),
    }
}

fn from_pki_dn(dn: &pki::DistinguishedName) -> DistinguishedName {
    DistinguishedName {
        common_name: dn.common_name.clone(),
        country: dn.country.clone(),
        state: dn.state.clone(),
        locality: dn.locality.clone(),
        organization: dn.organization.clone(),
        organizational_unit: dn.organizational_unit.clone(),
    }
}

fn add_years(t: OffsetDateTime, years: i64) -> Option<OffsetDateTime> {
    let year = i32::try_from(i64::from(t.year()).checked_add(years)?).ok()?;
    t.replace_year(year)
        .or_else(|_| t.replace_day(28).and_then(|t| t.replace_year(year)))
        .ok()
}

/// The validity window a `validity` object asks for, checked against the documented limits.
fn validity_window(
    v: &ValidityBody,
    now: OffsetDateTime,
    max_years: i32,
) -> Result<(OffsetDateTime, OffsetDateTime), ApiError> {
    let kind = v.kind.as_deref().ok_or_else(|| {
        e_validity("Invalid validity period type or value: validity.type is mandatory.")
    })?;
    let value = v.value.ok_or_else(|| {
        e_validity("Invalid validity period type or value: validity.value is mandatory.")
    })?;
    if value < 1 {
        return Err(e_validity(format!(
            "Invalid validity period type or value: value {value} must be at least 1."
        )));
    }
    let start = match v.start_from {
        None => now,
        Some(ms) => {
            let t = from_epoch_ms(ms)
                .ok_or_else(|| e_validity(format!("Invalid validity start_from {ms}.")))?;
            if t < now - START_FROM_SLACK {
                return Err(e_validity(format!(
                    "Invalid validity start_from {ms}: it cannot be earlier than the current time minus 5 minutes."
                )));
            }
            t
        }
    };
    let start = start.replace_nanosecond(0).unwrap_or(start);
    // Bound `value` before any arithmetic so nothing overflows.
    let too_long = || {
        e_validity(format!(
            "Invalid validity period type or value: {value} {kind} is longer than {max_years} years."
        ))
    };
    if value > 1_000_000 {
        return Err(too_long());
    }
    let end = match kind {
        "YEAR" => add_years(start, value),
        "MONTH" => start.checked_add(Duration::days(31 * value)),
        "DAY" => start.checked_add(Duration::days(value)),
        "HOUR" => start.checked_add(Duration::hours(value)),
        other => {
            return Err(e_validity(format!(
                "Invalid validity period type {other:?}: only YEAR, MONTH, DAY or HOUR are supported."
            )));
        }
    }
    .ok_or_else(too_long)?;
    let limit = add_years(start, i64::from(max_years)).ok_or_else(too_long)?;
    if end > limit {
        return Err(too_long());
    }
    Ok((start, end))
}

fn parse_path_length(p: Option<i64>) -> Result<Option<u8>, ApiError> {
    match p {
        None => Ok(None),
        Some(n) if (0..=i64::from(MAX_SUB_PATH_LENGTH)).contains(&n) => Ok(Some(n as u8)),
        Some(n) => Err(e_path(format!(
            "Invalid CA path length {n}. The value range is [0, 6]."
        ))),
    }
}

/// Key usages of a subordinate CA: the default when absent or empty; each known; keyCertSign
/// present (a CA that cannot sign certificates is no CA).
fn parse_key_usages(k: Option<&Vec<String>>) -> Result<Vec<String>, ApiError> {
    let Some(list) = k.filter(|l| !l.is_empty()) else {
        return Ok(DEFAULT_CA_KEY_USAGES.map(String::from).to_vec());
    };
    let mut out: Vec<String> = Vec::new();
    for u in list {
        if !KEY_USAGES.contains(&u.as_str()) {
            return Err(e_param(format!(
                "Incorrect parameter: unknown key usage {u:?} (expected one of {}).",
                KEY_USAGES.join(", ")
            )));
        }
        if !out.contains(u) {
            out.push(u.clone());
        }
    }
    if !out.iter().any(|u| u == "keyCertSign") {
        return Err(e_param(
            "Incorrect parameter: the key usages of a CA must include keyCertSign.",
        ));
    }
    Ok(out)
}

fn to_pki_key_usages(list: &[String]) -> Vec<pki::KeyUsage> {
    list.iter()
        .filter_map(|u| u.parse::<pki::KeyUsage>().ok())
        .collect()
}

/// Check a CRL configuration; `default_name` is the parent CA's id (own id for a root).
fn parse_crl(
    crl: Option<&CrlBody>,
    obs: &ObsState,
    default_name: &str,
) -> Result<CrlConfiguration, ApiError> {
    let Some(c) = crl else {
        return Ok(CrlConfiguration::default());
    };
    let enabled = c.enabled.ok_or_else(|| {
        e_crl("Invalid CRL configuration: crl_configuration.enabled is mandatory.")
    })?;
    if !enabled {
        return Ok(CrlConfiguration::default());
    }
    if obs.agency_id.is_none() {
        return Err(e_crl(
            "Invalid CRL configuration: create the OBS agency for PCA before enabling CRL publishing.",
        ));
    }
    let bucket = c.obs_bucket_name.as_deref().ok_or_else(|| {
        e_crl("Invalid CRL configuration: obs_bucket_name is mandatory when CRL publishing is enabled.")
    })?;
    if !obs.buckets.iter().any(|b| b.bucket_name == bucket) {
        return Err(e_crl(format!(
            "Invalid CRL configuration: OBS bucket {bucket:?} does not exist."
        )));
    }
    let days = c.valid_days.ok_or_else(|| {
        e_crl("Invalid CRL configuration: valid_days is mandatory when CRL publishing is enabled.")
    })?;
    if !(7..=30).contains(&days) {
        return Err(e_crl(format!(
            "Invalid CRL configuration: valid_days {days} is outside [7, 30]."
        )));
    }
    let name = match c.crl_name.as_deref() {
        None => default_name.to_owned(),
        Some(n) => {
            let ok = (1..=64).contains(&n.chars().count())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(e_crl(format!(
                    "Invalid CRL configuration: crl_name {n:?} must be 1 to 64 of A-Z a-z 0-9 - _ ."
                )));
            }
            n.to_owned()
        }
    };
    Ok(CrlConfiguration {
        enabled: true,
        crl_dis_point: Some(format!("https://{bucket}.obs.myhuaweicloud.com/{name}.crl")),
        crl_name: Some(name),
        obs_bucket_name: Some(bucket.to_owned()),
        valid_days: Some(days),
    })
}

fn check_enterprise_project(epid: Option<&str>) -> Result<String, ApiError> {
    match epid {
        None => Ok("0".to_owned()),
        Some(e) if e == "0" || is_uuid(e) && !e.bytes().any(|b| b.is_ascii_uppercase()) => {
            Ok(e.to_owned())
        }
        Some(e) => Err(e_param(format!(
            "Incorrect parameter: enterprise_project_id {e:?} must be \"0\" or a lower-case UUID."
        ))),
    }
}

/// A serial as the API shows it: `yyyyMMddHHmmss` then 10 random digits (the certificate's
/// serial is the same number).
fn new_serial(now: OffsetDateTime) -> (String, Vec<u8>) {
    use rand::RngExt;
    let fmt = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let stamp = now.format(fmt).unwrap_or_else(|_| "20000101000000".into());
    let tail: u64 = rand::rng().random_range(0..10_000_000_000u64);
    let text = format!("{stamp}{tail:010}");
    let n: u128 = text.parse().unwrap_or(1);
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    (text, bytes)
}

fn hex_serial_to_decimal(hex: &str) -> String {
    match u128::from_str_radix(hex, 16) {
        Ok(n) if hex.len() <= 32 => n.to_string(),
        _ => hex.to_owned(),
    }
}

fn signature_name(alg: &str) -> String {
    let up = alg.to_ascii_uppercase();
    ["SHA512", "SHA384", "SHA256"]
        .into_iter()
        .find(|h| up.contains(h))
        .map(str::to_owned)
        .unwrap_or(up)
}

/// PEM with the API's `\r\n` line endings.
fn crlf(pem: &str) -> String {
    pem.replace("\r\n", "\n").trim_end().replace('\n', "\r\n")
}

/// Remove CAs whose scheduled deletion has passed.
fn purge(cas: &mut std::collections::BTreeMap<String, CaRecord>, now_ms: i64) {
    cas.retain(|_, c| !(c.status == "DELETED" && c.delete_time.is_some_and(|t| t <= now_ms)));
}

fn now_ms(shared: &Shared) -> i64 {
    to_epoch_ms(shared.now())
}

// ---- creation and activation ----

/// What a subordinate CA's issuance needs from its issuer, copied out of the store.
struct IssuerSnapshot {
    id: String,
    cert_pem: String,
    chain_pem: String,
    key_pem: String,
    dn: DistinguishedName,
    path_length: Option<u8>,
    is_root: bool,
    not_after: i64,
}

fn snapshot_issuer(
    st: &crate::emulator::State,
    issuer_id: &str,
    now_ms: i64,
) -> Result<IssuerSnapshot, ApiError> {
    let issuer = st
        .pca
        .cas
        .get(issuer_id)
        .ok_or_else(|| e_issuer_not_found(issuer_id))?;
    let status = issuer.effective_status(now_ms);
    if status != "ACTIVED" {
        return Err(e_state(
            "issuing a certificate",
            status,
            "an ACTIVED issuer CA",
        ));
    }
    let cert_pem = issuer
        .certificate_pem
        .clone()
        .ok_or_else(|| e_issuer_not_found(issuer_id))?;
    Ok(IssuerSnapshot {
        id: issuer.id.clone(),
        cert_pem,
        chain_pem: issuer.chain_pem.clone(),
        key_pem: issuer.key_pem.clone(),
        dn: issuer.distinguished_name.clone(),
        path_length: issuer.path_length,
        is_root: issuer.ca_type == "ROOT",
        not_after: issuer.not_after.unwrap_or(i64::MIN),
    })
}

/// The checked parameters of a subordinate CA certificate.
struct SubIssuance {
    issuer: IssuerSnapshot,
    hash: pki::SignatureHash,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_length: u8,
}

fn plan_sub_issuance(
    issuer: IssuerSnapshot,
    signature: &str,
    validity: &ValidityBody,
    path_length: Option<u8>,
    now: OffsetDateTime,
) -> Result<SubIssuance, ApiError> {
    let hash = parse_signature(signature)?;
    let (not_before, not_after) = validity_window(validity, now, MAX_SUB_YEARS)?;
    if to_epoch_ms(not_after) > issuer.not_after {
        return Err(e_validity(
            "Invalid validity period: a subordinate CA cannot outlive its issuer CA's not_after.",
        ));
    }
    let path_length = path_length.unwrap_or(0);
    match issuer.path_length {
        _ if issuer.is_root => {}
        Some(0) | None => {
            return Err(e_path(
                "Invalid CA path length: the issuer CA's path length is 0, so it cannot issue CAs.",
            ));
        }
        Some(p) if path_length >= p => {
            return Err(e_path(format!(
                "Invalid CA path length {path_length}: it must be less than the issuer CA's path length {p}."
            )));
        }
        Some(_) => {}
    }
    Ok(SubIssuance {
        issuer,
        hash,
        not_before,
        not_after,
        path_length,
    })
}

/// Sign a subordinate CA certificate. Crypto: call without the state lock held.
fn sign_sub(
    plan: &SubIssuance,
    subject: &DistinguishedName,
    key: &pki::PrivateKey,
    key_usages: &[String],
    serial: Vec<u8>,
) -> Result<(String, String), ApiError> {
    let issuer_key = pki::PrivateKey::from_pem(&plan.issuer.key_pem).map_err(e_key)?;
    let mut spec = pki::CertificateSpec::new_ca(
        to_pki_dn(subject),
        plan.not_before,
        plan.not_after,
        Some(plan.path_length),
    )
    .with_hash(plan.hash);
    spec.key_usages = to_pki_key_usages(key_usages);
    spec.serial = Some(serial);
    let cert = pki::issue(
        &spec,
        &pki::PublicKeySource::Key(key),
        &plan.issuer.cert_pem,
        &issuer_key,
    )
    .map_err(e_pki)?;
    let chain = if plan.issuer.chain_pem.trim().is_empty() {
        plan.issuer.cert_pem.clone()
    } else {
        format!(
            "{}\n{}",
            plan.issuer.cert_pem.trim_end(),
            plan.issuer.chain_pem.trim_end()
        )
    };
    Ok((cert, format!("{}\n", chain.trim_end())))
}

/// Create a CA as `POST /v1/private-certificate-authorities` does; returns its id. Does the
/// key generation and signing itself (outside the state lock): call it from a blocking context.
pub fn create_ca(shared: &Shared, body: CreateCaBody) -> Result<String, ApiError> {
    let ca_type = match body.ca_type.as_deref() {
        Some("ROOT") => "ROOT",
        Some("SUBORDINATE") => "SUBORDINATE",
        Some(other) => {
            return Err(e_ca_type(format!(
                "Invalid CA type {other:?}. Only ROOT and SUBORDINATE are supported."
            )));
        }
        None => return Err(e_ca_type("type is mandatory (ROOT or SUBORDINATE).")),
    };
    let dn = body
        .distinguished_name
        .clone()
        .ok_or_else(|| e_dn("distinguished_name is mandatory."))?;
    let key_alg = parse_key_algorithm(body.key_algorithm.as_deref())?;
    if let Some(s) = body.signature_algorithm.as_deref() {
        parse_signature(s)?;
    }
    if let Some(id) = body.issuer_id.as_deref()
        && ca_type == "SUBORDINATE"
    {
        check_ca_id(id)?;
    }
    let path_length = parse_path_length(body.path_length)?;
    // "Root CA certificates: [digitalSignature, keyCertSign, cRLSign], which cannot be changed.
    // The value you specified is ignored." Only a subordinate's are read (and checked).
    let key_usages = match ca_type {
        "ROOT" => DEFAULT_CA_KEY_USAGES.map(String::from).to_vec(),
        _ => parse_key_usages(body.key_usages.as_ref())?,
    };
    let epid = check_enterprise_project(body.enterprise_project_id.as_deref())?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = shared.now();
    let now_ms = to_epoch_ms(now);

    enum Plan {
        Root {
            hash: pki::SignatureHash,
            not_before: OffsetDateTime,
            not_after: OffsetDateTime,
        },
        Sub(Box<SubIssuance>),
        Pending,
    }

    // Everything that reads the store, under the lock; no crypto here.
    let (plan, dn, crl) = shared.with_state(|st| -> Result<_, ApiError> {
        purge(&mut st.pca.cas, now_ms);
        if hosted_count(&st.pca.cas) as u64 >= CA_QUOTA {
            return Err(e_quota());
        }
        match ca_type {
            "ROOT" => {
                validate_dn(&dn, true)?;
                let sig = body
                    .signature_algorithm
                    .as_deref()
                    .ok_or_else(|| e_sig("signature_algorithm is mandatory for a root CA."))?;
                let validity = body
                    .validity
                    .as_ref()
                    .ok_or_else(|| e_validity("validity is mandatory for a root CA."))?;
                let (not_before, not_after) = validity_window(validity, now, MAX_ROOT_YEARS)?;
                let crl = parse_crl(body.crl_configuration.as_ref(), &st.pca.obs, &id)?;
                let plan = Plan::Root {
                    hash: parse_signature(sig)?,
                    not_before,
                    not_after,
                };
                Ok((plan, dn, crl))
            }
            _ => match (
                body.issuer_id.as_deref(),
                body.signature_algorithm.as_deref(),
                body.validity.as_ref(),
            ) {
                (Some(issuer_id), Some(sig), Some(validity)) => {
                    let issuer = snapshot_issuer(st, issuer_id, now_ms)?;
                    validate_dn(&dn, false)?;
                    let dn = inherit_dn(&dn, &issuer.dn);
                    let crl = parse_crl(body.crl_configuration.as_ref(), &st.pca.obs, issuer_id)?;
                    let plan = plan_sub_issuance(issuer, sig, validity, path_length, now)?;
                    Ok((Plan::Sub(Box::new(plan)), dn, crl))
                }
                _ => {
                    validate_dn(&dn, true)?;
                    if let Some(v) = body.validity.as_ref() {
                        validity_window(v, now, MAX_SUB_YEARS)?;
                    }
                    let default_name = body.issuer_id.as_deref().unwrap_or(&id);
                    let crl =
                        parse_crl(body.crl_configuration.as_ref(), &st.pca.obs, default_name)?;
                    Ok((Plan::Pending, dn, crl))
                }
            },
        }
    })?;

    // Crypto, outside the lock.
    let key = pki::generate_key(key_alg).map_err(e_key)?;
    let (serial_text, serial) = new_serial(now);
    let mut rec = CaRecord {
        id: id.clone(),
        ca_type: ca_type.to_owned(),
        status: "ACTIVED".to_owned(),
        distinguished_name: dn.clone(),
        key_algorithm: key_alg.as_str().to_owned(),
        signature_algorithm: String::new(),
        key_pem: key.to_pem(),
        certificate_pem: None,
        chain_pem: String::new(),
        issuer_id: None,
        path_length: None,
        not_before: None,
        not_after: None,
        create_time: now_ms,
        delete_time: None,
        serial_number: None,
        gen_mode: "GENERATE".to_owned(),
        issuer_name: None,
        key_usages: key_usages.clone(),
        crl_configuration: crl,
        csr_pem: None,
        enterprise_project_id: epid,
        revoked_reason: None,
        revoked_at: None,
    };
    match plan {
        Plan::Root {
            hash,
            not_before,
            not_after,
        } => {
            let mut spec =
                pki::CertificateSpec::new_ca(to_pki_dn(&dn), not_before, not_after, None)
                    .with_hash(hash);
            spec.serial = Some(serial);
            let cert = pki::self_signed(&spec, &key).map_err(e_pki)?;
            rec.certificate_pem = Some(cert);
            rec.signature_algorithm = hash.as_str().to_owned();
            rec.path_length = Some(ROOT_PATH_LENGTH);
            rec.key_usages = DEFAULT_CA_KEY_USAGES.map(String::from).to_vec();
            rec.not_before = Some(to_epoch_ms(not_before));
            rec.not_after = Some(to_epoch_ms(not_after));
            rec.serial_number = Some(serial_text);
        }
        Plan::Sub(plan) => {
            let (cert, chain) = sign_sub(&plan, &dn, &key, &key_usages, serial)?;
            rec.certificate_pem = Some(cert);
            rec.chain_pem = chain;
            rec.signature_algorithm = plan.hash.as_str().to_owned();
            rec.path_length = Some(plan.path_length);
            rec.issuer_id = Some(plan.issuer.id.clone());
            rec.issuer_name = plan.issuer.dn.common_name.clone();
            rec.not_before = Some(to_epoch_ms(plan.not_before));
            rec.not_after = Some(to_epoch_ms(plan.not_after));
            rec.serial_number = Some(serial_text);
        }
        Plan::Pending => {
            let csr = pki::generate_csr(&key, &to_pki_dn(&dn), &[]).map_err(e_pki)?;
            rec.status = "PENDING".to_owned();
            rec.csr_pem = Some(csr);
            rec.signature_algorithm = body.signature_algorithm.clone().unwrap_or_default();
        }
    }
    shared.update_state(|st| {
        // Another request may have taken the last quota slot meanwhile.
        if hosted_count(&st.pca.cas) as u64 >= CA_QUOTA {
            return Err(e_quota());
        }
        st.pca.cas.insert(id.clone(), rec);
        Ok(())
    })?;
    Ok(id)
}

fn activate_ca(shared: &Shared, ca_id: &str, body: ActivateBody) -> Result<(), ApiError> {
    let issuer_id = body
        .issuer_id
        .as_deref()
        .ok_or_else(|| e_param("Incorrect parameter: issuer_id is mandatory."))?;
    check_ca_id(issuer_id)?;
    let sig = body
        .signature_algorithm
        .as_deref()
        .ok_or_else(|| e_sig("signature_algorithm is mandatory."))?;
    parse_signature(sig)?;
    let validity = body
        .validity
        .clone()
        .ok_or_else(|| e_validity("validity is mandatory."))?;
    let path_length = parse_path_length(body.path_length)?;
    let now = shared.now();
    let now_ms = to_epoch_ms(now);
    let (plan, dn, key_pem, key_usages, crl) = shared.with_state(|st| -> Result<_, ApiError> {
        purge(&mut st.pca.cas, now_ms);
        let rec = st.pca.cas.get(ca_id).ok_or_else(|| e_not_found(ca_id))?;
        let status = rec.effective_status(now_ms);
        if status != "PENDING" {
            return Err(e_state("activating a CA", status, "PENDING"));
        }
        if issuer_id == ca_id {
            return Err(e_param(
                "Incorrect parameter: a CA cannot issue its own certificate.",
            ));
        }
        let key_usages = match body.key_usages.as_ref() {
            Some(k) => parse_key_usages(Some(k))?,
            None => rec.key_usages.clone(),
        };
        let crl = match body.crl_configuration.as_ref() {
            Some(c) => parse_crl(Some(c), &st.pca.obs, issuer_id)?,
            None => rec.crl_configuration.clone(),
        };
        let (dn, key_pem) = (rec.distinguished_name.clone(), rec.key_pem.clone());
        let issuer = snapshot_issuer(st, issuer_id, now_ms)?;
        let plan = plan_sub_issuance(issuer, sig, &validity, path_length, now)?;
        Ok((plan, dn, key_pem, key_usages, crl))
    })?;
    let key = pki::PrivateKey::from_pem(&key_pem).map_err(e_key)?;
    let (serial_text, serial) = new_serial(now);
    let (cert, chain) = sign_sub(&plan, &dn, &key, &key_usages, serial)?;
    shared.update_state(|st| {
        let rec = st
            .pca
            .cas
            .get_mut(ca_id)
            .ok_or_else(|| e_not_found(ca_id))?;
        if rec.status != "PENDING" {
            return Err(e_state("activating a CA", &rec.status, "PENDING"));
        }
        rec.status = "ACTIVED".to_owned();
        rec.certificate_pem = Some(cert);
        rec.chain_pem = chain;
        rec.signature_algorithm = plan.hash.as_str().to_owned();
        rec.path_length = Some(plan.path_length);
        rec.issuer_id = Some(plan.issuer.id.clone());
        rec.issuer_name = plan.issuer.dn.common_name.clone();
        rec.not_before = Some(to_epoch_ms(plan.not_before));
        rec.not_after = Some(to_epoch_ms(plan.not_after));
        rec.serial_number = Some(serial_text);
        rec.key_usages = key_usages;
        rec.crl_configuration = crl;
        rec.csr_pem = None;
        Ok(())
    })
}

fn import_ca(shared: &Shared, ca_id: &str, body: ImportBody) -> Result<(), ApiError> {
    let cert_text = body
        .certificate
        .as_deref()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| e_param("Incorrect parameter: certificate is mandatory."))?;
    if cert_text.chars().count() > 32_768 {
        return Err(e_param(
            "Incorrect parameter: certificate is longer than 32768 characters.",
        ));
    }
    let chain_text = body.certificate_chain.as_deref().unwrap_or("");
    if chain_text.chars().count() > 2_097_152 {
        return Err(e_param(
            "Incorrect parameter: certificate_chain is longer than 2097152 characters.",
        ));
    }
    let now_ms = now_ms(shared);
    let (key_pem, ours) = shared.with_state(|st| -> Result<_, ApiError> {
        purge(&mut st.pca.cas, now_ms);
        let rec = st.pca.cas.get(ca_id).ok_or_else(|| e_not_found(ca_id))?;
        let status = rec.effective_status(now_ms);
        if status != "PENDING" {
            return Err(e_state("importing a CA certificate", status, "PENDING"));
        }
        // Our issued CAs, to find the issuer of the imported certificate.
        let ours: Vec<(String, Option<String>, String, String)> = st
            .pca
            .cas
            .values()
            .filter_map(|c| {
                c.certificate_pem.as_ref().map(|p| {
                    (
                        c.id.clone(),
                        c.distinguished_name.common_name.clone(),
                        p.clone(),
                        c.chain_pem.clone(),
                    )
                })
            })
            .collect();
        Ok((rec.key_pem.clone(), ours))
    })?;
    let cert_pem = cert_text.replace("\r\n", "\n");
    let info =
        pki::parse_cert(&cert_pem).map_err(|e| e_cert(format!("Incorrect certificate: {e}")))?;
    if !info.is_ca {
        return Err(e_cert(
            "Incorrect certificate: it is not a CA certificate (BasicConstraints CA:TRUE).",
        ));
    }
    let key = pki::PrivateKey::from_pem(&key_pem).map_err(e_key)?;
    if !pki::key_matches_cert(&key, &info) {
        return Err(e_key_mismatch());
    }
    let chain_pem = chain_text.replace("\r\n", "\n");
    let chain = pki::parse_pem_chain(&chain_pem)
        .map_err(|e| e_chain(format!("Incorrect certificate chain: {e}")))?;
    // The chain must run intermediate > ... > root, each signing the one before.
    let mut below = &info;
    for c in &chain {
        pki::verify_signed_by(below, c).map_err(|e| {
            e_chain(format!(
                "Incorrect certificate chain: the order must be intermediate CA > ... > root CA: {e}"
            ))
        })?;
        below = c;
    }
    if let Some(last) = chain.last()
        && pki::verify_signed_by(last, last).is_err()
    {
        return Err(e_chain(
            "Incorrect certificate chain: it is incomplete (it does not end with a root CA).",
        ));
    }
    // Which of our CAs signed it, if any.
    let issuer = ours.iter().find(|(_, _, pem, _)| {
        pki::parse_cert(pem).is_ok_and(|ic| pki::verify_signed_by(&info, &ic).is_ok())
    });
    let stored_chain = if !chain.is_empty() {
        format!("{}\n", chain_pem.trim())
    } else if let Some((_, _, pem, ichain)) = issuer {
        format!("{}\n{}", pem.trim_end(), ichain)
            .trim_end()
            .to_owned()
            + "\n"
    } else {
        String::new()
    };
    let path_length = info
        .path_length
        .unwrap_or(MAX_SUB_PATH_LENGTH)
        .min(MAX_SUB_PATH_LENGTH);
    shared.update_state(|st| {
        let rec = st
            .pca
            .cas
            .get_mut(ca_id)
            .ok_or_else(|| e_not_found(ca_id))?;
        if rec.status != "PENDING" {
            return Err(e_state(
                "importing a CA certificate",
                &rec.status,
                "PENDING",
            ));
        }
        rec.status = "ACTIVED".to_owned();
        rec.distinguished_name = from_pki_dn(&info.subject);
        rec.certificate_pem = Some(format!("{}\n", cert_pem.trim()));
        rec.chain_pem = stored_chain;
        rec.signature_algorithm = signature_name(&info.signature_algorithm);
        rec.path_length = Some(path_length);
        rec.issuer_id = issuer.map(|(id, _, _, _)| id.clone());
        rec.issuer_name = issuer
            .and_then(|(_, cn, _, _)| cn.clone())
            .or_else(|| info.issuer.common_name.clone());
        rec.not_before = Some(to_epoch_ms(info.not_before));
        rec.not_after = Some(to_epoch_ms(info.not_after));
        rec.serial_number = Some(hex_serial_to_decimal(&info.serial_hex));
        rec.gen_mode = "IMPORT".to_owned();
        rec.csr_pem = None;
        Ok(())
    })
}

// ---- rendering ----

fn ca_json(rec: &CaRecord, now_ms: i64, domain_id: &str) -> Value {
    let crl = &rec.crl_configuration;
    json!({
        "ca_id": rec.id,
        "type": rec.ca_type,
        "status": rec.effective_status(now_ms),
        "path_length": rec.path_length,
        "issuer_id": rec.issuer_id,
        "issuer_name": rec.issuer_name,
        "key_algorithm": rec.key_algorithm,
        "signature_algorithm": Some(rec.signature_algorithm.as_str()).filter(|s| !s.is_empty()),
        "freeze_flag": 0,
        "gen_mode": rec.gen_mode,
        "serial_number": rec.serial_number,
        "create_time": rec.create_time,
        "delete_time": rec.delete_time,
        "not_before": rec.not_before,
        "not_after": rec.not_after,
        "distinguished_name": rec.distinguished_name,
        "crl_configuration": {
            "enabled": crl.enabled,
            "crl_name": crl.crl_name,
            "obs_bucket_name": crl.obs_bucket_name,
            "valid_days": crl.valid_days,
            "crl_dis_point": crl.crl_dis_point,
        },
        "enterprise_project_id": rec.enterprise_project_id,
        "charging_mode": 1,
        "domain_id": domain_id,
    })
}

// ---- handlers ----

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(CAS, get(list_cas).post(create_ca_handler))
        .route(&format!("{CAS}/quotas"), get(show_quota))
        .route(
            &format!("{CAS}/obs/agencies"),
            get(show_agency).post(create_agency),
        )
        .route(&format!("{CAS}/obs/buckets"), get(list_buckets))
        .route(&format!("{CAS}/{{ca_id}}"), get(show_ca).delete(delete_ca))
        .route(&format!("{CAS}/{{ca_id}}/csr"), get(export_csr))
        .route(&format!("{CAS}/{{ca_id}}/disable"), post(disable_ca))
        .route(&format!("{CAS}/{{ca_id}}/enable"), post(enable_ca))
        .route(&format!("{CAS}/{{ca_id}}/restore"), post(restore_ca))
        .route(&format!("{CAS}/{{ca_id}}/activate"), post(activate_handler))
        .route(&format!("{CAS}/{{ca_id}}/export"), post(export_ca))
        .route(&format!("{CAS}/{{ca_id}}/import"), post(import_handler))
        .route(&format!("{CAS}/{{ca_id}}/revoke"), post(revoke_ca))
}

fn query_map(raw: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_int(q: &HashMap<String, String>, key: &str, max: i64) -> Result<Option<i64>, ApiError> {
    let Some(v) = q.get(key) else {
        return Ok(None);
    };
    match v.parse::<i64>() {
        Ok(n) if (0..=max).contains(&n) => Ok(Some(n)),
        _ => Err(e_param(format!(
            "Incorrect parameter: {key} {v:?} must be an integer in [0, {max}]."
        ))),
    }
}

async fn list_cas(
    State(shared): State<Shared>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_map(raw.as_deref());
    let limit = query_int(&q, "limit", 1000)?.unwrap_or(10) as usize;
    let offset = query_int(&q, "offset", i64::from(i32::MAX))?.unwrap_or(0) as usize;
    let name = q.get("name").cloned();
    if let Some(n) = &name
        && !(1..=64).contains(&n.chars().count())
    {
        return Err(e_param(
            "Incorrect parameter: name must be 1 to 64 characters.",
        ));
    }
    let status = q.get("status").cloned();
    if let Some(s) = &status
        && !["PENDING", "ACTIVED", "DISABLED", "DELETED", "EXPIRED"].contains(&s.as_str())
    {
        return Err(e_status_value(format!(
            "Invalid status {s:?}. The current support status is PENDING, ACTIVED, DISABLED, DELETED, and EXPIRED."
        )));
    }
    let ca_type = q.get("type").cloned();
    if let Some(t) = &ca_type
        && !["ROOT", "SUBORDINATE"].contains(&t.as_str())
    {
        return Err(e_ca_type(format!(
            "Invalid CA type {t:?}. Only ROOT and SUBORDINATE are supported."
        )));
    }
    let sort_key = q
        .get("sort_key")
        .map(String::as_str)
        .unwrap_or("create_time");
    if !["create_time", "common_name", "ca_type", "not_after"].contains(&sort_key) {
        return Err(e_param(format!(
            "Incorrect parameter: sort_key {sort_key:?} must be create_time, common_name, ca_type or not_after."
        )));
    }
    let sort_dir = q.get("sort_dir").map(String::as_str).unwrap_or("DESC");
    if !["ASC", "DESC"].contains(&sort_dir) {
        return Err(e_param(format!(
            "Incorrect parameter: sort_dir {sort_dir:?} must be ASC or DESC."
        )));
    }
    let now_ms = now_ms(&shared);
    let domain = shared.config().domain_id.clone();
    let body = shared.with_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        let needle = name.as_deref().map(str::to_lowercase);
        let mut hits: Vec<&CaRecord> = st
            .pca
            .cas
            .values()
            .filter(|c| c.is_hosted())
            .filter(|c| {
                needle
                    .as_deref()
                    .is_none_or(|n| c.common_name().to_lowercase().contains(n))
            })
            .filter(|c| {
                status
                    .as_deref()
                    .is_none_or(|s| c.effective_status(now_ms) == s)
            })
            .filter(|c| ca_type.as_deref().is_none_or(|t| c.ca_type == t))
            .collect();
        hits.sort_by(|a, b| {
            let ord = match sort_key {
                "common_name" => a.common_name().cmp(b.common_name()),
                "ca_type" => a.ca_type.cmp(&b.ca_type),
                "not_after" => a.not_after.cmp(&b.not_after),
                _ => a.create_time.cmp(&b.create_time),
            }
            .then_with(|| a.id.cmp(&b.id));
            if sort_dir == "ASC" {
                ord
            } else {
                ord.reverse()
            }
        });
        let total = hits.len();
        let page: Vec<Value> = hits
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|c| ca_json(c, now_ms, &domain))
            .collect();
        json!({ "total": total, "certificate_authorities": page })
    });
    Ok(axum::Json(body).into_response())
}

async fn create_ca_handler(
    State(shared): State<Shared>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateCaBody = parse_json(&body, |m| e_param(format!("Incorrect parameter: {m}")))?;
    let id = tokio::task::spawn_blocking(move || create_ca(&shared, req))
        .await
        .map_err(|e| err(500, "PCA.00000001", format!("Unknown error: {e}")))??;
    Ok(axum::Json(json!({ "ca_id": id })).into_response())
}

async fn show_quota(State(shared): State<Shared>) -> Response {
    let now_ms = now_ms(&shared);
    let used = shared.with_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        hosted_count(&st.pca.cas)
    });
    axum::Json(json!({
        "quotas": { "resources": [
            { "type": "CERTIFICATE_AUTHORITY", "used": used, "quota": CA_QUOTA }
        ] }
    }))
    .into_response()
}

async fn show_ca(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
) -> Result<Response, ApiError> {
    check_ca_id(&ca_id)?;
    let now_ms = now_ms(&shared);
    let domain = shared.config().domain_id.clone();
    let body = shared.with_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        st.pca
            .cas
            .get(&ca_id)
            .map(|c| ca_json(c, now_ms, &domain))
            .ok_or_else(|| e_not_found(&ca_id))
    })?;
    Ok(axum::Json(body).into_response())
}

async fn delete_ca(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_ca_id(&ca_id)?;
    let q = query_map(raw.as_deref());
    let days = match q.get("pending_days").map(|v| v.parse::<i64>()) {
        Some(Ok(d)) if (7..=30).contains(&d) => d,
        Some(_) => {
            return Err(e_param(
                "Incorrect parameter: pending_days must be an integer in [7, 30].",
            ));
        }
        None => return Err(e_param("Incorrect parameter: pending_days is mandatory.")),
    };
    let now_ms = now_ms(&shared);
    shared.update_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        let rec = st
            .pca
            .cas
            .get_mut(&ca_id)
            .ok_or_else(|| e_not_found(&ca_id))?;
        match rec.effective_status(now_ms) {
            "PENDING" => {
                st.pca.cas.remove(&ca_id);
            }
            "DISABLED" => {
                rec.status = "DELETED".to_owned();
                rec.delete_time = Some(now_ms + days * 86_400_000);
            }
            other => return Err(e_state("deleting a CA", other, "PENDING or DISABLED")),
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn export_csr(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
) -> Result<Response, ApiError> {
    check_ca_id(&ca_id)?;
    let now_ms = now_ms(&shared);
    let csr = shared.with_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        let rec = st.pca.cas.get(&ca_id).ok_or_else(|| e_not_found(&ca_id))?;
        let status = rec.effective_status(now_ms);
        match (status, &rec.csr_pem) {
            ("PENDING", Some(csr)) => Ok(csr.clone()),
            _ => Err(e_state("exporting the CSR of a CA", status, "PENDING")),
        }
    })?;
    Ok(axum::Json(json!({ "csr": crlf(&csr) })).into_response())
}

/// A plain state change: allowed from `from`, to `to`.
fn transition(
    shared: &Shared,
    ca_id: &str,
    op: &str,
    from: &[&str],
    to: &str,
) -> Result<Response, ApiError> {
    check_ca_id(ca_id)?;
    let now_ms = now_ms(shared);
    shared.update_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        let rec = st
            .pca
            .cas
            .get_mut(ca_id)
            .ok_or_else(|| e_not_found(ca_id))?;
        let status = rec.effective_status(now_ms).to_owned();
        if !from.contains(&status.as_str()) {
            return Err(e_state(op, &status, &from.join(" or ")));
        }
        rec.status = to.to_owned();
        rec.delete_time = None;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn disable_ca(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
) -> Result<Response, ApiError> {
    transition(
        &shared,
        &ca_id,
        "disabling a CA",
        &["ACTIVED", "EXPIRED"],
        "DISABLED",
    )
}

async fn enable_ca(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
) -> Result<Response, ApiError> {
    transition(&shared, &ca_id, "enabling a CA", &["DISABLED"], "ACTIVED")
}

async fn restore_ca(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
) -> Result<Response, ApiError> {
    transition(&shared, &ca_id, "restoring a CA", &["DELETED"], "DISABLED")
}

async fn activate_handler(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_ca_id(&ca_id)?;
    let req: ActivateBody = parse_json(&body, |m| e_param(format!("Incorrect parameter: {m}")))?;
    tokio::task::spawn_blocking(move || activate_ca(&shared, &ca_id, req))
        .await
        .map_err(|e| err(500, "PCA.00000001", format!("Unknown error: {e}")))??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn import_handler(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_ca_id(&ca_id)?;
    let req: ImportBody = parse_json(&body, |m| e_param(format!("Incorrect parameter: {m}")))?;
    tokio::task::spawn_blocking(move || import_ca(&shared, &ca_id, req))
        .await
        .map_err(|e| err(500, "PCA.00000001", format!("Unknown error: {e}")))??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn export_ca(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
) -> Result<Response, ApiError> {
    check_ca_id(&ca_id)?;
    let now_ms = now_ms(&shared);
    let (cert, chain) = shared.with_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        let rec = st.pca.cas.get(&ca_id).ok_or_else(|| e_not_found(&ca_id))?;
        let status = rec.effective_status(now_ms);
        match (status, &rec.certificate_pem) {
            ("ACTIVED" | "EXPIRED", Some(cert)) => {
                // A root's chain is the root itself (the field is never empty).
                let chain = if rec.chain_pem.trim().is_empty() {
                    cert.clone()
                } else {
                    rec.chain_pem.clone()
                };
                Ok((cert.clone(), chain))
            }
            _ => Err(e_state(
                "exporting a CA certificate",
                status,
                "ACTIVED or EXPIRED",
            )),
        }
    })?;
    Ok(axum::Json(json!({
        "certificate": crlf(&cert),
        "certificate_chain": crlf(&chain),
    }))
    .into_response())
}

async fn revoke_ca(
    State(shared): State<Shared>,
    Path(ca_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_ca_id(&ca_id)?;
    let req: RevokeBody = parse_json(&body, |m| {
        e_param(format!(
            "Incorrect parameter: {m} (send {{}} when giving no reason)"
        ))
    })?;
    let reason = req.reason.unwrap_or_else(|| "UNSPECIFIED".to_owned());
    if !REVOCATION_REASONS.contains(&reason.as_str()) {
        return Err(e_param(format!(
            "Incorrect parameter: reason {reason:?} must be one of {}.",
            REVOCATION_REASONS.join(", ")
        )));
    }
    let now_ms = now_ms(&shared);
    shared.update_state(|st| {
        purge(&mut st.pca.cas, now_ms);
        let rec = st
            .pca
            .cas
            .get_mut(&ca_id)
            .ok_or_else(|| e_not_found(&ca_id))?;
        if rec.ca_type != "SUBORDINATE" {
            return Err(e_ca_type("Only a subordinate CA can be revoked."));
        }
        let status = rec.effective_status(now_ms).to_owned();
        if !["ACTIVED", "DISABLED", "EXPIRED"].contains(&status.as_str())
            || rec.revoked_reason.is_some()
        {
            let status = if rec.revoked_reason.is_some() {
                format!("{status} (already revoked)")
            } else {
                status
            };
            return Err(e_state(
                "revoking a CA",
                &status,
                "an issued, unrevoked CA (ACTIVED, DISABLED or EXPIRED)",
            ));
        }
        rec.revoked_reason = Some(reason);
        rec.revoked_at = Some(now_ms);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn show_agency(State(shared): State<Shared>) -> Response {
    let granted = shared.with_state(|st| st.pca.obs.agency_id.is_some());
    axum::Json(json!({ "agency_granted": granted.to_string() })).into_response()
}

async fn create_agency(State(shared): State<Shared>) -> Response {
    let id = shared.update_state(|st| {
        st.pca
            .obs
            .agency_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string())
            .clone()
    });
    axum::Json(json!({ "agency_id": id })).into_response()
}

async fn list_buckets(State(shared): State<Shared>) -> Result<Response, ApiError> {
    let body = shared.with_state(|st| {
        if st.pca.obs.agency_id.is_none() {
            return Err(e_obs());
        }
        let buckets: Vec<Value> = st
            .pca
            .obs
            .buckets
            .iter()
            .map(|b| json!({ "bucket_name": b.bucket_name, "create_time": b.create_time }))
            .collect();
        Ok(json!({ "total": buckets.len(), "obs_buckets": buckets }))
    })?;
    Ok(axum::Json(body).into_response())
}

// ---- helpers for the demo, tests and other code ----

fn full_dn(cn: &str, ou: &str) -> DistinguishedName {
    DistinguishedName {
        common_name: Some(cn.to_owned()),
        country: Some("CN".to_owned()),
        state: Some("Guangdong".to_owned()),
        locality: Some("Shenzhen".to_owned()),
        organization: Some("ccm-agent".to_owned()),
        organizational_unit: Some(ou.to_owned()),
    }
}

fn api_to_anyhow(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{} {}: {}", e.status, e.code, e.msg)
}

/// Create an active root CA named `cn` (10 years, SHA256 or SHA384 for EC384); returns its id.
pub fn create_root_ca(shared: &Shared, cn: &str, key_algorithm: &str) -> anyhow::Result<String> {
    let sig = if key_algorithm == "EC384" {
        "SHA384"
    } else {
        "SHA256"
    };
    create_ca(
        shared,
        CreateCaBody {
            ca_type: Some("ROOT".into()),
            distinguished_name: Some(full_dn(cn, "Root CA")),
            key_algorithm: Some(key_algorithm.into()),
            validity: Some(ValidityBody {
                kind: Some("YEAR".into()),
                value: Some(10),
                start_from: None,
            }),
            signature_algorithm: Some(sig.into()),
            ..Default::default()
        },
    )
    .map_err(api_to_anyhow)
}

/// Create an active subordinate CA named `cn` under `issuer_id` (5 years, or less when the
/// issuer expires sooner); returns its id.
pub fn create_subordinate_ca(
    shared: &Shared,
    issuer_id: &str,
    cn: &str,
    key_algorithm: &str,
    path_length: u8,
) -> anyhow::Result<String> {
    let now = shared.now();
    let issuer_end = shared
        .with_state(|st| st.pca.cas.get(issuer_id).and_then(|c| c.not_after))
        .ok_or_else(|| anyhow::anyhow!("issuer CA {issuer_id} not found or not issued"))?;
    let days = ((issuer_end - to_epoch_ms(now)) / 86_400_000 - 1).clamp(1, 5 * 365);
    create_ca(
        shared,
        CreateCaBody {
            ca_type: Some("SUBORDINATE".into()),
            distinguished_name: Some(full_dn(cn, "Issuing CA")),
            key_algorithm: Some(key_algorithm.into()),
            validity: Some(ValidityBody {
                kind: Some("DAY".into()),
                value: Some(days),
                start_from: None,
            }),
            issuer_id: Some(issuer_id.into()),
            path_length: Some(i64::from(path_length)),
            signature_algorithm: Some("SHA256".into()),
            ..Default::default()
        },
    )
    .map_err(api_to_anyhow)
}

/// An active EC256 root CA and an active EC256 subordinate CA (path length 0) under it, for
/// tests and other emulator code; returns `(root_id, sub_id)`. Does crypto: not from inside
/// a state closure.
pub fn create_active_ca_pair(
    shared: &Shared,
    root_cn: &str,
    sub_cn: &str,
) -> anyhow::Result<(String, String)> {
    let root = create_root_ca(shared, root_cn, "EC256")?;
    let sub = create_subordinate_ca(shared, &root, sub_cn, "EC256", 0)?;
    Ok((root, sub))
}

/// The id of the CA whose common name is exactly `cn` (the newest, if several).
pub fn find_ca_by_name(shared: &Shared, cn: &str) -> Option<String> {
    shared.with_state(|st| {
        st.pca
            .cas
            .values()
            .filter(|c| c.common_name() == cn)
            .max_by_key(|c| c.create_time)
            .map(|c| c.id.clone())
    })
}

/// The demo: [`DEMO_ROOT_CN`] (EC384, SHA384, 10 years) and [`DEMO_SUB_CN`] (EC256, active,
/// path length 0) under it. Both are found by name through the list call.
pub fn seed_demo(shared: &Shared) -> anyhow::Result<()> {
    let root = create_root_ca(shared, DEMO_ROOT_CN, "EC384")?;
    create_subordinate_ca(shared, &root, DEMO_SUB_CN, "EC256", 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("time")
    }

    fn v(kind: &str, value: i64) -> ValidityBody {
        ValidityBody {
            kind: Some(kind.into()),
            value: Some(value),
            start_from: None,
        }
    }

    #[test]
    fn validity_limits() {
        let now = t("2024-02-29T12:00:00.5Z");
        let (s, e) = validity_window(&v("YEAR", 30), now, MAX_ROOT_YEARS).expect("30y root");
        assert_eq!(s, t("2024-02-29T12:00:00Z"));
        assert_eq!(e, t("2054-02-28T12:00:00Z"));
        assert_eq!(
            validity_window(&v("YEAR", 31), now, MAX_ROOT_YEARS)
                .expect_err("31y")
                .code,
            "PCA.00020109"
        );
        assert!(validity_window(&v("YEAR", 21), now, MAX_SUB_YEARS).is_err());
        let (_, e) = validity_window(&v("MONTH", 2), now, MAX_SUB_YEARS).expect("months");
        assert_eq!(e, t("2024-05-01T12:00:00Z"));
        assert!(validity_window(&v("HOUR", 0), now, MAX_SUB_YEARS).is_err());
        assert!(validity_window(&v("WEEK", 1), now, MAX_SUB_YEARS).is_err());
        assert!(validity_window(&v("DAY", i64::MAX), now, MAX_SUB_YEARS).is_err());
        let mut early = v("DAY", 1);
        early.start_from = Some(to_epoch_ms(now - Duration::minutes(6)));
        assert!(validity_window(&early, now, MAX_SUB_YEARS).is_err());
        early.start_from = Some(to_epoch_ms(now - Duration::minutes(4)));
        assert!(validity_window(&early, now, MAX_SUB_YEARS).is_ok());
    }

    #[test]
    fn dn_rules() {
        let full = full_dn("Example CA", "IT");
        assert!(validate_dn(&full, true).is_ok());
        let mut bad = full.clone();
        bad.country = Some("C1".into());
        assert_eq!(
            validate_dn(&bad, true).expect_err("country").code,
            "PCA.00020101"
        );
        bad.country = Some("CHN".into());
        assert!(validate_dn(&bad, true).is_err());
        let mut partial = DistinguishedName {
            common_name: Some("*.sub CA".into()),
            ..Default::default()
        };
        assert!(validate_dn(&partial, true).is_err());
        assert!(validate_dn(&partial, false).is_ok());
        partial.organization = Some("Bad<Org>".into());
        assert!(validate_dn(&partial, false).is_err());
        let inherited = inherit_dn(&DistinguishedName::default(), &full);
        assert_eq!(inherited.common_name, None);
        assert_eq!(inherited.organization.as_deref(), Some("ccm-agent"));
    }

    #[test]
    fn serial_is_decimal_timestamp() {
        let (text, bytes) = new_serial(t("2022-03-07T03:22:54Z"));
        assert!(
            text.starts_with("20220307032254") && text.len() == 24,
            "{text}"
        );
        let n = bytes.iter().fold(0u128, |acc, b| acc << 8 | u128::from(*b));
        assert_eq!(n.to_string(), text);
        assert_eq!(hex_serial_to_decimal(&format!("{n:X}")), text);
    }

    #[test]
    fn crlf_line_endings() {
        assert_eq!(crlf("a\nb\n"), "a\r\nb");
        assert_eq!(crlf("a\r\nb\r\n"), "a\r\nb");
    }
}
