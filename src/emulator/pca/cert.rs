//! PCA private certificates in the emulator: apply (the emulator generates the key), issue from a
//! CSR (only the public key arrives), parse a CSR, list, detail, quota, delete, export (JSON PEM
//! or a zip package: PEM files, or for IIS / TOMCAT a PFX / JKS keystore with its password, see
//! [`super::keystore`]) and revoke. Certificates are real X.509 signed with the issuing CA's key,
//! the `customized_extension` included.
//!
//! Rules follow the API reference (4.2.2) and its error table (A.2.2). Where the reference is
//! silent the choice is written next to the code: see [`DEFAULT_CERTIFICATE_QUOTA`],
//! [`ENTITY_DEFAULT_KEY_USAGES`] and the handlers' comments.

use std::io::Write as _;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ca::CaRecord;
use super::keystore;
use crate::emulator::wire::{
    DistinguishedName, epoch_ms as to_epoch_ms, from_epoch_ms, is_pca_id, pem_lf,
};
use crate::emulator::{ApiError, Shared, parse_json};
use crate::pki;

/// The documented private certificate quota per account (4.2.2.5). Tests lower it through
/// `PcaStore::certificate_quota`.
pub const DEFAULT_CERTIFICATE_QUOTA: u64 = 100_000;
/// Longest validity of a private certificate or subordinate CA.
pub const MAX_VALIDITY_YEARS: i32 = 20;
/// How far in the past `validity.start_from` may lie.
pub const START_FROM_TOLERANCE_MS: i64 = 5 * 60 * 1000;
/// Most certificates one list call returns; the default is 10.
pub const MAX_LIST_LIMIT: usize = 1000;
pub const DEFAULT_LIST_LIMIT: usize = 10;
pub const MAX_SANS: usize = 20;
pub const MAX_CSR_LEN: usize = 5120;
/// Key usages of a private certificate when the request names none (4.2.2.3: "keyUsage:
/// digitalSignature and keyAgreement"; applied to apply-mode certificates too).
pub const ENTITY_DEFAULT_KEY_USAGES: [pki::KeyUsage; 2] =
    [pki::KeyUsage::DigitalSignature, pki::KeyUsage::KeyAgreement];
/// Key usages of a subordinate CA issued from a CSR (4.2.2.3).
pub const CA_DEFAULT_KEY_USAGES: [pki::KeyUsage; 3] = [
    pki::KeyUsage::DigitalSignature,
    pki::KeyUsage::KeyCertSign,
    pki::KeyUsage::CrlSign,
];
/// The hash a CSR-issued certificate is signed with (4.2.2.3).
pub const CSR_SIGNATURE_HASH: pki::SignatureHash = pki::SignatureHash::Sha384;
/// The demo subordinate CA that [`seed_demo`] issues from.
pub const DEMO_SUB_CA_NAME: &str = super::ca::DEMO_SUB_CN;

/// PCA error codes used here (appendix A.2.2).
pub mod codes {
    pub const PARAMETER: &str = "PCA.00020001";
    pub const DISTINGUISHED_NAME: &str = "PCA.00020101";
    pub const KEY_ALGORITHM: &str = "PCA.00020102";
    pub const SIGNATURE_ALGORITHM: &str = "PCA.00020103";
    pub const VALIDITY: &str = "PCA.00020109";
    pub const DOMAIN_NAME: &str = "PCA.00020110";
    pub const IP: &str = "PCA.00020111";
    pub const SAN_TYPE: &str = "PCA.00020112";
    pub const CA_ID: &str = "PCA.00020201";
    pub const PATH_LENGTH: &str = "PCA.00020203";
    pub const CERTIFICATE_ID: &str = "PCA.00020301";
    pub const CSR: &str = "PCA.00020401";
    pub const QUOTA: &str = "PCA.00030001";
    pub const STATUS: &str = "PCA.00030201";
    pub const NOT_FOUND: &str = "PCA.00030102";
    pub const ISSUER_NOT_FOUND: &str = "PCA.00030103";
    pub const CERTIFICATE_PROCESSING: &str = "PCA.00000003";
    pub const KEY_PROCESSING: &str = "PCA.00000004";
}

/// One private certificate. `status` is `ISSUED` or `REVOKED` as stored; the clock makes an
/// issued one `EXPIRED` ([`CertRecord::effective_status`]).
#[derive(Clone, Serialize, Deserialize)]
pub struct CertRecord {
    pub id: String,
    pub issuer_id: String,
    /// The issuing CA's common name at issuance.
    pub issuer_name: String,
    pub status: String,
    pub key_algorithm: String,
    pub signature_algorithm: String,
    /// `GENERATE` (key made here) or `CSR` (key held by the caller).
    pub gen_mode: String,
    /// The X.509 serial in hex (24 digits: issue time `yyyyMMddHHmmss` + 10 random digits).
    pub serial_number: String,
    pub distinguished_name: DistinguishedName,
    /// Epoch milliseconds.
    pub create_time: i64,
    pub not_before: i64,
    pub not_after: i64,
    /// PEM with `\n`.
    pub certificate_pem: String,
    /// From the issuing CA up to the root, nearest first, PEM with `\n`.
    pub chain_pem: String,
    /// PKCS#8 PEM; `None` for CSR certificates. Never logged.
    pub key_pem: Option<String>,
    #[serde(default)]
    pub subject_alternative_names: Vec<(String, String)>,
    /// `(OID, value)`, written into the X.509 as a non-critical extension whose value is the
    /// text as a UTF8String.
    #[serde(default)]
    pub customized_extension: Option<(String, String)>,
    #[serde(default)]
    pub revoke_reason: Option<String>,
    #[serde(default)]
    pub revoke_time: Option<i64>,
    #[serde(default)]
    pub freeze_flag: i64,
}

impl std::fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("id", &self.id)
            .field("issuer_id", &self.issuer_id)
            .field("status", &self.status)
            .field("common_name", &self.distinguished_name.common_name)
            .field("not_after", &self.not_after)
            .field("gen_mode", &self.gen_mode)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl CertRecord {
    /// The status clients see at `now_ms`.
    pub fn effective_status(&self, now_ms: i64) -> &str {
        if self.status == "ISSUED" && self.not_after <= now_ms {
            "EXPIRED"
        } else {
            &self.status
        }
    }

    fn to_json(&self, now_ms: i64) -> serde_json::Value {
        serde_json::json!({
            "certificate_id": self.id,
            "status": self.effective_status(now_ms),
            "issuer_id": self.issuer_id,
            "issuer_name": self.issuer_name,
            "key_algorithm": self.key_algorithm,
            "signature_algorithm": self.signature_algorithm,
            "freeze_flag": self.freeze_flag,
            "gen_mode": self.gen_mode,
            "serial_number": self.serial_number,
            "create_time": self.create_time,
            "delete_time": null,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "distinguished_name": self.distinguished_name,
            "enterprise_project_id": "0",
        })
    }
}

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/v1/private-certificates",
            get(list_certificates).post(apply_certificate),
        )
        .route("/v1/private-certificates/csr", post(issue_by_csr))
        .route("/v1/private-certificates/csr/parse", post(parse_csr))
        .route("/v1/private-certificates/quotas", get(show_quota))
        .route(
            "/v1/private-certificates/{certificate_id}",
            get(show_certificate).delete(delete_certificate),
        )
        .route(
            "/v1/private-certificates/{certificate_id}/export",
            post(export_certificate),
        )
        .route(
            "/v1/private-certificates/{certificate_id}/revoke",
            post(revoke_certificate),
        )
}

// ---- errors ----

fn bad(code: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(400, code, msg)
}

fn param(msg: impl Into<String>) -> ApiError {
    bad(codes::PARAMETER, msg)
}

fn not_allowed(msg: impl Into<String>) -> ApiError {
    ApiError::new(
        403,
        codes::STATUS,
        format!(
            "Operation not allowed in the current status: {}",
            msg.into()
        ),
    )
}

fn cert_not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        codes::NOT_FOUND,
        format!("CA or certificate is not found: {id}"),
    )
}

fn is_uuid(s: &str) -> bool {
    is_pca_id(s)
}

fn check_cert_id(id: &str) -> Result<(), ApiError> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(bad(
            codes::CERTIFICATE_ID,
            "Invalid certificate ID. Valid certificate IDs use a hexadecimal xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx format.",
        ))
    }
}

fn check_issuer_id(id: Option<&str>) -> Result<&str, ApiError> {
    match id {
        Some(id) if is_uuid(id) => Ok(id),
        _ => Err(bad(
            codes::CA_ID,
            "Invalid CA ID. Valid CA IDs use a hexadecimal xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx format.",
        )),
    }
}

fn now_ms(shared: &Shared) -> i64 {
    to_epoch_ms(shared.now())
}

fn ms_to_time(ms: i64) -> Result<OffsetDateTime, ApiError> {
    from_epoch_ms(ms).ok_or_else(|| bad(codes::VALIDITY, "Invalid validity period type or value."))
}

// ---- request bodies (every field optional, so missing ones get the documented code) ----

#[derive(Deserialize)]
struct ValidityIn {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<i64>,
    start_from: Option<i64>,
}

#[derive(Deserialize)]
struct SanIn {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
struct EkuIn {
    #[serde(default)]
    server_auth: Option<bool>,
    #[serde(default)]
    client_auth: Option<bool>,
    #[serde(default)]
    code_signing: Option<bool>,
    #[serde(default)]
    email_protection: Option<bool>,
    #[serde(default)]
    time_stamping: Option<bool>,
}

#[derive(Deserialize)]
struct CustomExtIn {
    object_identifier: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct ApplyBody {
    issuer_id: Option<String>,
    key_algorithm: Option<String>,
    signature_algorithm: Option<String>,
    distinguished_name: Option<DistinguishedName>,
    validity: Option<ValidityIn>,
    key_usages: Option<Vec<String>>,
    subject_alternative_names: Option<Vec<SanIn>>,
    extended_key_usage: Option<EkuIn>,
    customized_extension: Option<CustomExtIn>,
}

#[derive(Deserialize)]
struct CsrBody {
    issuer_id: Option<String>,
    csr: Option<String>,
    validity: Option<ValidityIn>,
    #[serde(rename = "type")]
    kind: Option<String>,
    path_length: Option<i64>,
    /// Reserved: ignored, as at the real service.
    #[allow(dead_code)]
    subject_alternative_names: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ParseBody {
    csr: Option<String>,
}

#[derive(Deserialize)]
struct ExportBody {
    is_compressed: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RevokeBody {
    reason: Option<String>,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json(bytes, param)
}

// ---- validation ----

fn check_len(what: &str, v: &str, min: usize, max: usize, code: &str) -> Result<(), ApiError> {
    let n = v.chars().count();
    if (min..=max).contains(&n) {
        Ok(())
    } else {
        Err(bad(
            code,
            format!(
                "Incorrect certificate distinguished name: {what} must be {min}..{max} characters"
            ),
        ))
    }
}

/// Validate a requested subject and fill absent attributes from the issuing CA's name.
fn subject_with_inheritance(
    req: &DistinguishedName,
    ca: &DistinguishedName,
) -> Result<DistinguishedName, ApiError> {
    let code = codes::DISTINGUISHED_NAME;
    let cn = req.common_name.as_deref().ok_or_else(|| {
        bad(
            code,
            "Incorrect certificate distinguished name: common_name is required",
        )
    })?;
    check_len("common_name", cn, 1, 64, code)?;
    if let Some(c) = &req.country
        && !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err(bad(
            code,
            "Incorrect certificate distinguished name: country must match [A-Za-z]{2}",
        ));
    }
    for (what, v, max) in [
        ("state", &req.state, 128),
        ("locality", &req.locality, 128),
        ("organization", &req.organization, 64),
        ("organizational_unit", &req.organizational_unit, 64),
    ] {
        if let Some(v) = v {
            check_len(what, v, 1, max, code)?;
        }
    }
    let pick = |r: &Option<String>, c: &Option<String>| r.clone().or_else(|| c.clone());
    Ok(DistinguishedName {
        common_name: Some(cn.to_owned()),
        country: pick(&req.country, &ca.country),
        state: pick(&req.state, &ca.state),
        locality: pick(&req.locality, &ca.locality),
        organization: pick(&req.organization, &ca.organization),
        organizational_unit: pick(&req.organizational_unit, &ca.organizational_unit),
    })
}

fn add_years(t: OffsetDateTime, years: i32) -> Option<OffsetDateTime> {
    let date = t.date();
    let year = date.year().checked_add(years)?;
    let new_date = date
        .replace_year(year)
        .or_else(|_| {
            // 29 February in a year without one.
            date.replace_day(28).and_then(|d| d.replace_year(year))
        })
        .ok()?;
    Some(t.replace_date(new_date))
}

/// `(not_before, not_after)` for a requested validity at `now_ms`, checked against the
/// documented rules and the issuing CA's own validity.
fn validity_window(
    v: Option<&ValidityIn>,
    now_ms: i64,
    ca: &CaRecord,
) -> Result<(OffsetDateTime, OffsetDateTime), ApiError> {
    let invalid = |why: &str| {
        bad(
            codes::VALIDITY,
            format!("Invalid validity period type or value: {why}"),
        )
    };
    let v = v.ok_or_else(|| invalid("validity is required"))?;
    let kind = v
        .kind
        .as_deref()
        .ok_or_else(|| invalid("validity.type is required"))?;
    let value = v
        .value
        .ok_or_else(|| invalid("validity.value is required"))?;
    if value < 1 {
        return Err(invalid("validity.value must be at least 1"));
    }
    let start_ms = match v.start_from {
        Some(s) if s < now_ms - START_FROM_TOLERANCE_MS => {
            return Err(invalid(
                "start_from cannot be earlier than the current time minus 5 minutes",
            ));
        }
        Some(s) => s,
        None => now_ms,
    };
    let start = ms_to_time(start_ms)?;
    let limit = add_years(start, MAX_VALIDITY_YEARS).ok_or_else(|| invalid("out of range"))?;
    let end = match kind {
        "YEAR" => {
            if value > i64::from(MAX_VALIDITY_YEARS) {
                return Err(invalid("longer than 20 years"));
            }
            add_years(start, value as i32).ok_or_else(|| invalid("out of range"))?
        }
        "MONTH" | "DAY" | "HOUR" => {
            let unit_ms: i64 = match kind {
                "MONTH" => 31 * 86_400_000,
                "DAY" => 86_400_000,
                _ => 3_600_000,
            };
            let ms = value
                .checked_mul(unit_ms)
                .and_then(|d| d.checked_add(start_ms))
                .ok_or_else(|| invalid("longer than 20 years"))?;
            ms_to_time(ms)?
        }
        other => {
            return Err(invalid(&format!(
                "type {other:?} is not one of YEAR, MONTH, DAY, HOUR"
            )));
        }
    };
    if end > limit {
        return Err(invalid(
            "a private certificate is valid for at most 20 years",
        ));
    }
    if let Some(ca_nb) = ca.not_before
        && to_epoch_ms(start) < ca_nb
    {
        return Err(invalid("the certificate would start before its issuing CA"));
    }
    if let Some(ca_na) = ca.not_after
        && to_epoch_ms(end) > ca_na
    {
        return Err(invalid(
            "the certificate would outlive its issuing CA (not_after beyond the CA's)",
        ));
    }
    Ok((start, end))
}

fn is_dns_name(v: &str) -> bool {
    let name = v.strip_prefix("*.").unwrap_or(v);
    !v.is_empty()
        && v.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_email(v: &str) -> bool {
    match v.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && v.len() <= 256
                && local
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'@' && b != b'"')
                && is_dns_name(domain)
                && !domain.starts_with("*.")
        }
        None => false,
    }
}

fn is_uri(v: &str) -> bool {
    let Some((scheme, rest)) = v.split_once(':') else {
        return false;
    };
    v.len() <= 253
        && !rest.is_empty()
        && scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && v.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_sans(sans: Option<&[SanIn]>) -> Result<Vec<pki::SubjectAltName>, ApiError> {
    let sans = sans.unwrap_or_default();
    if sans.len() > MAX_SANS {
        return Err(param(format!(
            "Incorrect parameter: at most {MAX_SANS} subject alternative names"
        )));
    }
    let mut out = Vec::with_capacity(sans.len());
    for s in sans {
        let kind = s.kind.as_deref().unwrap_or_default();
        let value = s.value.as_deref().unwrap_or_default();
        let san = match kind {
            "DNS" if is_dns_name(value) => pki::SubjectAltName::Dns(value.to_owned()),
            "DNS" => {
                return Err(bad(
                    codes::DOMAIN_NAME,
                    format!("Incorrect domain name: {value:?}"),
                ));
            }
            "IP" => match value.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => pki::SubjectAltName::Ip(ip.into()),
                Err(_) => {
                    return Err(bad(
                        codes::IP,
                        format!("Invalid IP. Enter an IPv4 address: {value:?}"),
                    ));
                }
            },
            "EMAIL" if is_email(value) => pki::SubjectAltName::Email(value.to_owned()),
            "EMAIL" => {
                return Err(param(format!(
                    "Incorrect parameter: {value:?} is not an email address"
                )));
            }
            "URI" if is_uri(value) => pki::SubjectAltName::Uri(value.to_owned()),
            "URI" => {
                return Err(param(format!(
                    "Incorrect parameter: {value:?} is not a URI"
                )));
            }
            other => {
                return Err(bad(
                    codes::SAN_TYPE,
                    format!(
                        "Invalid alternative name type of the certificate subject {other:?}: use DNS, IP, EMAIL or URI"
                    ),
                ));
            }
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    Ok(out)
}

fn parse_key_usages(
    v: Option<&[String]>,
    default: &[pki::KeyUsage],
) -> Result<Vec<pki::KeyUsage>, ApiError> {
    let names = v.unwrap_or_default();
    if names.is_empty() {
        return Ok(default.to_vec());
    }
    let mut out = Vec::new();
    for n in names {
        // The reference spells them exactly as RFC 5280 does; no case folding.
        let ku = pki::KeyUsage::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == n)
            .ok_or_else(|| param(format!("Incorrect parameter: unknown key usage {n:?}")))?;
        if !out.contains(&ku) {
            out.push(ku);
        }
    }
    Ok(out)
}

fn parse_eku(e: Option<&EkuIn>) -> Vec<pki::ExtendedKeyUsage> {
    let Some(e) = e else { return Vec::new() };
    [
        (e.server_auth, pki::ExtendedKeyUsage::ServerAuth),
        (e.client_auth, pki::ExtendedKeyUsage::ClientAuth),
        (e.code_signing, pki::ExtendedKeyUsage::CodeSigning),
        (e.email_protection, pki::ExtendedKeyUsage::EmailProtection),
        (e.time_stamping, pki::ExtendedKeyUsage::TimeStamping),
    ]
    .into_iter()
    .filter_map(|(on, eku)| (on == Some(true)).then_some(eku))
    .collect()
}

/// Arcs whose extensions have a syntax of their own (RFC 5280's id-ce, and id-pe): a
/// UTF8String there would make the certificate unreadable, so they are refused.
const RESERVED_EXTENSION_ARCS: [&str; 2] = ["2.5.29.", "1.3.6.1.5.5.7.1."];

fn parse_custom_extension(e: Option<&CustomExtIn>) -> Result<Option<(String, String)>, ApiError> {
    let Some(e) = e else { return Ok(None) };
    let (Some(oid), Some(value)) = (&e.object_identifier, &e.value) else {
        // Both are optional in the table; an empty object adds nothing.
        return Ok(None);
    };
    if !(1..=64).contains(&oid.len()) {
        return Err(param(
            "Incorrect parameter: customized_extension.object_identifier must be 1..64 characters",
        ));
    }
    // "must be a dot-decimal notation string that complies with the ASN1 specifications"
    if let Err(e) = pki::CustomExtension::utf8_string(oid, value) {
        return Err(param(format!(
            "Incorrect parameter: customized_extension.object_identifier is not a dot-decimal ASN.1 OID: {e}"
        )));
    }
    if RESERVED_EXTENSION_ARCS
        .iter()
        .any(|arc| oid.starts_with(arc))
    {
        return Err(param(format!(
            "Incorrect parameter: customized_extension.object_identifier {oid:?} names a standard certificate extension; use an OID of your own arc"
        )));
    }
    if !(1..=64).contains(&value.chars().count()) {
        return Err(param(
            "Incorrect parameter: customized_extension.value must be 1..64 characters",
        ));
    }
    Ok(Some((oid.clone(), value.clone())))
}

fn parse_key_algorithm(v: Option<&str>) -> Result<pki::KeyAlgorithm, ApiError> {
    pki::KeyAlgorithm::ALL
        .iter()
        .copied()
        .find(|k| Some(k.as_str()) == v)
        .ok_or_else(|| {
            bad(
                codes::KEY_ALGORITHM,
                "Invalid key algorithm. Only RSA2048, RSA4096, EC256, and EC384 are supported.",
            )
        })
}

fn parse_signature_hash(v: Option<&str>) -> Result<pki::SignatureHash, ApiError> {
    pki::SignatureHash::ALL
        .iter()
        .copied()
        .find(|k| Some(k.as_str()) == v)
        .ok_or_else(|| {
            bad(
                codes::SIGNATURE_ALGORITHM,
                "Invalid signature hash algorithm. Only SHA256, SHA384, and SHA512 are supported.",
            )
        })
}

/// The API lets callers write the CSR's line breaks as literal `\r\n` / `\n` sequences.
fn normalize_csr(csr: &str) -> String {
    csr.replace("\\r\\n", "\n")
        .replace("\\n", "\n")
        .replace("\r\n", "\n")
}

fn parse_csr_text(csr: Option<&str>) -> Result<(String, pki::CsrInfo), ApiError> {
    let csr = csr.ok_or_else(|| param("Incorrect parameter: csr is required"))?;
    if csr.chars().count() > MAX_CSR_LEN {
        return Err(param(format!(
            "Incorrect parameter: csr is longer than {MAX_CSR_LEN} characters"
        )));
    }
    let text = normalize_csr(csr);
    let info = pki::parse_csr(&text).map_err(|e| {
        bad(
            codes::CSR,
            format!("Incorrect certificate signature request: {e}"),
        )
    })?;
    Ok((text, info))
}

// ---- the store ----

fn quota_of(st: &crate::emulator::State) -> u64 {
    st.pca
        .certificate_quota
        .unwrap_or(DEFAULT_CERTIFICATE_QUOTA)
}

fn check_quota(st: &crate::emulator::State) -> Result<(), ApiError> {
    if st.pca.certs.len() as u64 >= quota_of(st) {
        Err(ApiError::new(
            403,
            codes::QUOTA,
            "CA or certificate quantity exceeds quota.",
        ))
    } else {
        Ok(())
    }
}

/// The issuing CA, checked to be able to issue now.
fn issuing_ca(shared: &Shared, issuer_id: &str, now_ms: i64) -> Result<CaRecord, ApiError> {
    let ca = shared
        .with_state(|st| st.pca.cas.get(issuer_id).cloned())
        .ok_or_else(|| {
            ApiError::new(
                404,
                codes::ISSUER_NOT_FOUND,
                format!("Issuer CA is not found: {issuer_id}"),
            )
        })?;
    let status = ca.effective_status(now_ms);
    if status != "ACTIVED" {
        return Err(not_allowed(format!(
            "the issuing CA must be ACTIVED to issue certificates, it is {status}"
        )));
    }
    if ca.key_pem.is_empty() || ca.certificate_pem.is_none() {
        return Err(not_allowed(
            "the issuing CA's key is held by its owner, PCA cannot sign with it",
        ));
    }
    Ok(ca)
}

/// A serial as the real service writes it: issue time `yyyyMMddHHmmss` then 10 random digits.
fn new_serial(now: OffsetDateTime) -> String {
    use rand::RngExt;
    let fmt = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let stamp = now.format(fmt).unwrap_or_else(|_| "20000101000000".into());
    let n: u64 = rand::rng().random_range(0..10_000_000_000);
    format!("{stamp}{n:010}")
}

fn pki_dn(dn: &DistinguishedName) -> pki::DistinguishedName {
    pki::DistinguishedName {
        country: dn.country.clone(),
        state: dn.state.clone(),
        locality: dn.locality.clone(),
        organization: dn.organization.clone(),
        organizational_unit: dn.organizational_unit.clone(),
        common_name: dn.common_name.clone(),
    }
}

fn api_dn(dn: &pki::DistinguishedName) -> DistinguishedName {
    DistinguishedName {
        common_name: dn.common_name.clone(),
        country: dn.country.clone(),
        state: dn.state.clone(),
        locality: dn.locality.clone(),
        organization: dn.organization.clone(),
        organizational_unit: dn.organizational_unit.clone(),
    }
}

/// The chain a certificate issued by `ca` carries: the CA itself, then its own chain to the root.
fn chain_for(ca: &CaRecord) -> String {
    let mut chain = pem_lf(ca.certificate_pem.as_deref().unwrap_or(""));
    chain.push_str(&pem_lf(&ca.chain_pem));
    chain
}

/// Everything needed to sign one certificate.
pub struct IssueParams {
    pub subject: DistinguishedName,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key_usages: Vec<pki::KeyUsage>,
    pub extended_key_usages: Vec<pki::ExtendedKeyUsage>,
    pub sans: Vec<pki::SubjectAltName>,
    pub hash: pki::SignatureHash,
    /// `Ok(alg)`: generate a key of this kind; `Err(csr)`: sign this CSR's public key.
    pub key: Result<pki::KeyAlgorithm, (String, pki::KeyAlgorithm)>,
    pub is_ca: bool,
    pub path_length: Option<u8>,
    pub customized_extension: Option<(String, String)>,
}

/// Sign outside any lock. Returns (certificate PEM, key PEM if generated, serial).
fn sign(
    ca: &CaRecord,
    p: &IssueParams,
    now: OffsetDateTime,
) -> Result<(String, Option<String>, String), ApiError> {
    let internal = |code: &str, e: pki::PkiError| {
        tracing::warn!(error = %e, "emulator: issuing a private certificate failed");
        ApiError::new(500, code, format!("Certificate processing failed: {e}"))
    };
    let issuer_key =
        pki::PrivateKey::from_pem(&ca.key_pem).map_err(|e| internal(codes::KEY_PROCESSING, e))?;
    let serial = new_serial(now);
    let spec = pki::CertificateSpec {
        subject: pki_dn(&p.subject),
        not_before: p.not_before,
        not_after: p.not_after,
        is_ca: p.is_ca,
        path_length: p.path_length,
        key_usages: p.key_usages.clone(),
        extended_key_usages: p.extended_key_usages.clone(),
        sans: p.sans.clone(),
        hash: p.hash,
        serial: hex::decode(&serial).ok(),
        custom_extensions: p
            .customized_extension
            .iter()
            .map(|(oid, value)| pki::CustomExtension::utf8_string(oid, value))
            .collect::<Result<_, _>>()
            .map_err(|e| param(format!("Incorrect parameter: customized_extension: {e}")))?,
    };
    let issuer_pem = ca.certificate_pem.as_deref().unwrap_or_default();
    let (cert, key_pem) = match &p.key {
        Ok(alg) => {
            let key = pki::generate_key(*alg).map_err(|e| internal(codes::KEY_PROCESSING, e))?;
            let cert = pki::issue(
                &spec,
                &pki::PublicKeySource::Key(&key),
                issuer_pem,
                &issuer_key,
            )
            .map_err(|e| match e {
                pki::PkiError::InvalidSpec(m) => param(format!("Incorrect parameter: {m}")),
                other => internal(codes::CERTIFICATE_PROCESSING, other),
            })?;
            (cert, Some(key.to_pem()))
        }
        Err((csr, _)) => {
            let cert = pki::issue(
                &spec,
                &pki::PublicKeySource::Csr(csr),
                issuer_pem,
                &issuer_key,
            )
            .map_err(|e| match e {
                pki::PkiError::InvalidSpec(m) => param(format!("Incorrect parameter: {m}")),
                pki::PkiError::CsrSignatureInvalid(_) | pki::PkiError::CsrParse(_) => bad(
                    codes::CSR,
                    format!("Incorrect certificate signature request: {e}"),
                ),
                other => internal(codes::CERTIFICATE_PROCESSING, other),
            })?;
            (cert, None)
        }
    };
    let serial_hex = pki::parse_cert(&cert)
        .map(|i| i.serial_hex)
        .unwrap_or_else(|_| serial.clone());
    Ok((cert, key_pem, serial_hex))
}

/// Issue a private certificate from `ca` and store it; the caller has validated everything.
/// Key generation and signing happen before the state lock is taken.
pub fn issue_certificate(
    shared: &Shared,
    ca: &CaRecord,
    p: IssueParams,
) -> Result<String, ApiError> {
    let now = shared.now();
    let (certificate_pem, key_pem, serial_number) = sign(ca, &p, now)?;
    let (key_algorithm, gen_mode) = match &p.key {
        Ok(alg) => (alg.as_str(), "GENERATE"),
        Err((_, alg)) => (alg.as_str(), "CSR"),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let rec = CertRecord {
        id: id.clone(),
        issuer_id: ca.id.clone(),
        issuer_name: ca
            .distinguished_name
            .common_name
            .clone()
            .unwrap_or_default(),
        status: "ISSUED".into(),
        key_algorithm: key_algorithm.into(),
        signature_algorithm: p.hash.as_str().into(),
        gen_mode: gen_mode.into(),
        serial_number,
        distinguished_name: p.subject.clone(),
        create_time: to_epoch_ms(now),
        not_before: to_epoch_ms(p.not_before) / 1000 * 1000,
        not_after: to_epoch_ms(p.not_after) / 1000 * 1000,
        certificate_pem: pem_lf(&certificate_pem),
        chain_pem: chain_for(ca),
        key_pem,
        subject_alternative_names: p
            .sans
            .iter()
            .map(|s| (s.kind().to_owned(), s.value()))
            .collect(),
        customized_extension: p.customized_extension.clone(),
        revoke_reason: None,
        revoke_time: None,
        freeze_flag: 0,
    };
    shared.update_state(|st| {
        // Checked again: another request may have used the last slot while this one signed.
        check_quota(st)?;
        st.pca.certs.insert(id.clone(), rec);
        Ok::<_, ApiError>(())
    })?;
    Ok(id)
}

// ---- handlers ----

fn json(v: serde_json::Value) -> Response {
    axum::Json(v).into_response()
}

async fn apply_certificate(
    State(shared): State<Shared>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: ApplyBody = body(&bytes)?;
    let issuer_id = check_issuer_id(b.issuer_id.as_deref())?.to_owned();
    let alg = parse_key_algorithm(b.key_algorithm.as_deref())?;
    let hash = parse_signature_hash(b.signature_algorithm.as_deref())?;
    let req_dn = b.distinguished_name.as_ref().ok_or_else(|| {
        bad(
            codes::DISTINGUISHED_NAME,
            "Incorrect certificate distinguished name: distinguished_name is required",
        )
    })?;
    let key_usages = parse_key_usages(b.key_usages.as_deref(), &ENTITY_DEFAULT_KEY_USAGES)?;
    let sans = parse_sans(b.subject_alternative_names.as_deref())?;
    let ekus = parse_eku(b.extended_key_usage.as_ref());
    let custom = parse_custom_extension(b.customized_extension.as_ref())?;
    let now = now_ms(&shared);
    let ca = issuing_ca(&shared, &issuer_id, now)?;
    let subject = subject_with_inheritance(req_dn, &ca.distinguished_name)?;
    let (not_before, not_after) = validity_window(b.validity.as_ref(), now, &ca)?;
    shared.with_state(|st| check_quota(st))?;
    let params = IssueParams {
        subject,
        not_before,
        not_after,
        key_usages,
        extended_key_usages: ekus,
        sans,
        hash,
        key: Ok(alg),
        is_ca: false,
        path_length: None,
        customized_extension: custom,
    };
    // RSA keygen takes long in debug builds: keep it off the async workers.
    let id = tokio::task::spawn_blocking(move || issue_certificate(&shared, &ca, params))
        .await
        .map_err(|e| ApiError::new(500, "PCA.00000001", format!("Unknown error: {e}")))??;
    Ok(json(serde_json::json!({ "certificate_id": id })))
}

async fn issue_by_csr(State(shared): State<Shared>, bytes: Bytes) -> Result<Response, ApiError> {
    let b: CsrBody = body(&bytes)?;
    let issuer_id = check_issuer_id(b.issuer_id.as_deref())?.to_owned();
    let (csr_text, info) = parse_csr_text(b.csr.as_deref())?;
    let alg = info.key_algorithm.ok_or_else(|| {
        bad(
            codes::KEY_ALGORITHM,
            "Invalid key algorithm. Only RSA2048, RSA4096, EC256, and EC384 are supported.",
        )
    })?;
    let intermediate = match b.kind.as_deref() {
        None | Some("ENTITY_CERT") => false,
        Some("INTERMEDIATE_CA") => true,
        Some(other) => {
            return Err(param(format!(
                "Incorrect parameter: type {other:?} is not ENTITY_CERT or INTERMEDIATE_CA"
            )));
        }
    };
    let path_length = match b.path_length {
        None => 0,
        Some(n) if (0..=6).contains(&n) => n as u8,
        Some(_) => {
            return Err(bad(
                codes::PATH_LENGTH,
                "Invalid CA path length. The value range is [0, 6].",
            ));
        }
    };
    let subject = api_dn(&info.subject);
    match subject.common_name.as_deref() {
        Some(cn) if (1..=64).contains(&cn.chars().count()) => {}
        _ => {
            return Err(bad(
                codes::DISTINGUISHED_NAME,
                "Incorrect certificate distinguished name: the CSR's subject needs a common name of 1..64 characters",
            ));
        }
    }
    let now = now_ms(&shared);
    let ca = issuing_ca(&shared, &issuer_id, now)?;
    let (not_before, not_after) = validity_window(b.validity.as_ref(), now, &ca)?;
    if intermediate {
        // Below the issuer's pathLenConstraint; a CA with path length 0 issues no CAs.
        match ca.path_length {
            Some(0) => {
                return Err(bad(
                    codes::PATH_LENGTH,
                    "Invalid CA path length: the issuing CA's path length is 0, it cannot issue CAs",
                ));
            }
            Some(max) if path_length >= max => {
                return Err(bad(
                    codes::PATH_LENGTH,
                    format!(
                        "Invalid CA path length: the issuing CA allows at most {} below it",
                        max - 1
                    ),
                ));
            }
            _ => {}
        }
    } else {
        shared.with_state(|st| check_quota(st))?;
    }
    let params = IssueParams {
        subject: subject.clone(),
        not_before,
        not_after,
        key_usages: if intermediate {
            CA_DEFAULT_KEY_USAGES.to_vec()
        } else {
            ENTITY_DEFAULT_KEY_USAGES.to_vec()
        },
        extended_key_usages: Vec::new(),
        sans: if intermediate {
            Vec::new()
        } else {
            info.sans.clone()
        },
        hash: CSR_SIGNATURE_HASH,
        key: Err((csr_text, alg)),
        is_ca: intermediate,
        path_length: intermediate.then_some(path_length),
        customized_extension: None,
    };
    let id = tokio::task::spawn_blocking(move || {
        if intermediate {
            insert_external_subordinate(&shared, &ca, params)
        } else {
            issue_certificate(&shared, &ca, params)
        }
    })
    .await
    .map_err(|e| ApiError::new(500, "PCA.00000001", format!("Unknown error: {e}")))??;
    Ok(json(serde_json::json!({ "certificate_id": id })))
}

/// A subordinate CA issued from a CSR: its key stays with the caller, so it cannot issue
/// certificates here, does not count against the CA quota and is not listed. It is stored
/// with an empty `key_pem`, which is how the CA half recognises it.
fn insert_external_subordinate(
    shared: &Shared,
    ca: &CaRecord,
    p: IssueParams,
) -> Result<String, ApiError> {
    let now = shared.now();
    let (certificate_pem, _, _) = sign(ca, &p, now)?;
    let alg = match &p.key {
        Ok(a) | Err((_, a)) => *a,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let rec = ca_record_json(
        &id,
        "SUBORDINATE",
        "ACTIVED",
        &p.subject,
        alg.as_str(),
        p.hash.as_str(),
        "",
        &certificate_pem,
        &chain_for(ca),
        Some(&ca.id),
        p.path_length,
        to_epoch_ms(p.not_before) / 1000 * 1000,
        to_epoch_ms(p.not_after) / 1000 * 1000,
    )
    .map_err(|e| ApiError::new(500, "PCA.00000001", format!("Unknown error: {e}")))?;
    shared.update_state(|st| st.pca.cas.insert(id.clone(), rec));
    Ok(id)
}

/// Build a [`CaRecord`] through serde, so fields the CA half adds later (with serde defaults)
/// do not break this constructor.
#[allow(clippy::too_many_arguments)]
fn ca_record_json(
    id: &str,
    ca_type: &str,
    status: &str,
    dn: &DistinguishedName,
    key_algorithm: &str,
    signature_algorithm: &str,
    key_pem: &str,
    certificate_pem: &str,
    chain_pem: &str,
    issuer_id: Option<&str>,
    path_length: Option<u8>,
    not_before: i64,
    not_after: i64,
) -> Result<CaRecord, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "ca_type": ca_type,
        "status": status,
        "distinguished_name": dn,
        "key_algorithm": key_algorithm,
        "signature_algorithm": signature_algorithm,
        "key_pem": key_pem,
        "certificate_pem": pem_lf(certificate_pem),
        "chain_pem": chain_pem,
        "issuer_id": issuer_id,
        "path_length": path_length,
        "not_before": not_before,
        "not_after": not_after,
    }))
}

async fn parse_csr(bytes: Bytes) -> Result<Response, ApiError> {
    let b: ParseBody = body(&bytes)?;
    let (_, info) = parse_csr_text(b.csr.as_deref())?;
    let (kind, bits) = match info.key_algorithm {
        Some(pki::KeyAlgorithm::Rsa2048) => ("RSA", 2048),
        Some(pki::KeyAlgorithm::Rsa4096) => ("RSA", 4096),
        Some(pki::KeyAlgorithm::Ec256) => ("EC", 256),
        Some(pki::KeyAlgorithm::Ec384) => ("EC", 384),
        None => {
            return Err(bad(
                codes::KEY_ALGORITHM,
                "Invalid key algorithm. Only RSA2048, RSA4096, EC256, and EC384 are supported.",
            ));
        }
    };
    // "SHA256WITHRSA" → "SHA256withRSA", as the reference's example spells it.
    let sig = info.signature_algorithm.replace("WITH", "with");
    Ok(json(serde_json::json!({
        "distinguished_name": api_dn(&info.subject),
        "public_key": pem_crlf("PUBLIC KEY", &info.public_key_der),
        "key_algorithm": kind,
        "key_algorithm_length": bits,
        "signature_algorithm": sig,
    })))
}

fn pem_crlf(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\r\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out.push_str(&format!("-----END {label}-----\r\n"));
    out
}

fn crlf(pem: &str) -> String {
    pem_lf(pem).replace('\n', "\r\n")
}

async fn show_quota(State(shared): State<Shared>) -> Response {
    let (used, quota) = shared.with_state(|st| (st.pca.certs.len() as u64, quota_of(st)));
    json(serde_json::json!({
        "quotas": { "resources": [ { "type": "CERTIFICATE", "used": used, "quota": quota } ] }
    }))
}

/// Sort and filter as the list query asks.
async fn list_certificates(
    State(shared): State<Shared>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut limit = DEFAULT_LIST_LIMIT;
    let mut offset = 0usize;
    let mut name: Option<String> = None;
    let mut status: Option<String> = None;
    let mut sort_key = "create_time".to_owned();
    let mut desc = true;
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= MAX_LIST_LIMIT)
                    .ok_or_else(|| {
                        param(format!(
                            "Incorrect parameter: limit must be 0..{MAX_LIST_LIMIT}"
                        ))
                    })?;
            }
            "offset" => {
                offset = v.parse::<usize>().map_err(|_| {
                    param("Incorrect parameter: offset must be a non-negative integer")
                })?;
            }
            "name" => {
                if !(1..=64).contains(&v.chars().count()) {
                    return Err(param("Incorrect parameter: name must be 1..64 characters"));
                }
                name = Some(v.into_owned());
            }
            "status" => match v.as_ref() {
                "ISSUED" | "REVOKED" | "EXPIRED" => status = Some(v.into_owned()),
                _ => {
                    return Err(param(
                        "Incorrect parameter: status must be ISSUED, REVOKED or EXPIRED",
                    ));
                }
            },
            "sort_key" => match v.as_ref() {
                "create_time" | "common_name" | "issuer_name" | "not_after" => {
                    sort_key = v.into_owned()
                }
                _ => {
                    return Err(param(
                        "Incorrect parameter: sort_key must be create_time, common_name, issuer_name or not_after",
                    ));
                }
            },
            "sort_dir" => match v.as_ref() {
                "DESC" => desc = true,
                "ASC" => desc = false,
                _ => return Err(param("Incorrect parameter: sort_dir must be ASC or DESC")),
            },
            _ => {}
        }
    }
    let now = now_ms(&shared);
    let mut rows: Vec<CertRecord> = shared.with_state(|st| {
        st.pca
            .certs
            .values()
            .filter(|c| {
                name.as_deref().is_none_or(|n| {
                    c.distinguished_name
                        .common_name
                        .as_deref()
                        .is_some_and(|cn| cn.contains(n))
                })
            })
            .filter(|c| {
                status
                    .as_deref()
                    .is_none_or(|s| c.effective_status(now) == s)
            })
            .cloned()
            .collect()
    });
    rows.sort_by(|a, b| {
        let ord = match sort_key.as_str() {
            "common_name" => a
                .distinguished_name
                .common_name
                .cmp(&b.distinguished_name.common_name),
            "issuer_name" => a.issuer_name.cmp(&b.issuer_name),
            "not_after" => a.not_after.cmp(&b.not_after),
            _ => a.create_time.cmp(&b.create_time),
        }
        // A stable tie-break keeps pages disjoint when keys collide.
        .then_with(|| a.create_time.cmp(&b.create_time))
        .then_with(|| a.id.cmp(&b.id));
        if desc { ord.reverse() } else { ord }
    });
    let total = rows.len();
    let page: Vec<serde_json::Value> = rows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|c| c.to_json(now))
        .collect();
    Ok(json(
        serde_json::json!({ "total": total, "certificates": page }),
    ))
}

fn find_cert(shared: &Shared, id: &str) -> Result<CertRecord, ApiError> {
    check_cert_id(id)?;
    shared
        .with_state(|st| st.pca.certs.get(id).cloned())
        .ok_or_else(|| cert_not_found(id))
}

async fn show_certificate(
    State(shared): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = find_cert(&shared, &id)?;
    Ok(json(c.to_json(now_ms(&shared))))
}

/// Any status may be deleted (the reference names no restriction); the slot returns to the quota.
async fn delete_certificate(
    State(shared): State<Shared>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_cert_id(&id)?;
    let removed = shared.update_state(|st| st.pca.certs.remove(&id));
    match removed {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(cert_not_found(&id)),
    }
}

/// The export body's `is_compressed`: the SDK sends the string "true"/"false", the reference's
/// example a JSON boolean; both are taken.
fn parse_compressed(v: Option<&serde_json::Value>) -> Result<bool, ApiError> {
    match v {
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(param(
            "Incorrect parameter: is_compressed must be \"true\" or \"false\"",
        )),
    }
}

/// A private key the way the service exports it: RSA as PKCS#1 (`RSA PRIVATE KEY`, as in the
/// reference's example), EC as PKCS#8; `\r\n` line endings.
fn export_key_pem(pkcs8_pem: &str) -> String {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    match rsa::RsaPrivateKey::from_pkcs8_pem(pkcs8_pem) {
        Ok(k) => match k.to_pkcs1_pem(rsa::pkcs8::LineEnding::CRLF) {
            Ok(p) => p.to_string(),
            Err(_) => crlf(pkcs8_pem),
        },
        Err(_) => crlf(pkcs8_pem),
    }
}

/// The PFX (`IIS`) or JKS (`TOMCAT`) holding `c`'s key, the certificate and its chain.
fn keystore_file(
    c: &CertRecord,
    kind: &str,
    password: &str,
    now_ms: i64,
) -> Result<Vec<u8>, ApiError> {
    let internal = |e: String| {
        tracing::warn!(certificate = %c.id, error = %e, "emulator: building a keystore failed");
        ApiError::new(
            500,
            codes::CERTIFICATE_PROCESSING,
            format!("Certificate processing failed: {e}"),
        )
    };
    // The reference does not say what a package of a CSR certificate holds; a keystore without
    // its key is of no use to IIS or Tomcat, so it is refused rather than built.
    let key_pem = c.key_pem.as_deref().ok_or_else(|| {
        param(format!(
            "Incorrect parameter: type {kind} packages the private key, and the key of a certificate issued from a CSR stays with its owner (export it as APACHE, NGINX or OTHER)"
        ))
    })?;
    let key = pki::PrivateKey::from_pem(key_pem).map_err(|e| internal(e.to_string()))?;
    let mut certs_der = vec![
        pki::parse_cert(&c.certificate_pem)
            .map_err(|e| internal(e.to_string()))?
            .der,
    ];
    certs_der.extend(
        pki::parse_pem_chain(&c.chain_pem)
            .map_err(|e| internal(e.to_string()))?
            .into_iter()
            .map(|i| i.der),
    );
    let alias = keystore::alias_for(
        c.distinguished_name
            .common_name
            .as_deref()
            .unwrap_or_default(),
    );
    let contents = keystore::KeystoreContents {
        alias: &alias,
        key_pkcs8: key.to_pkcs8_der(),
        certs_der: &certs_der,
    };
    if kind == "IIS" {
        keystore::pfx(&contents, password).map_err(internal)
    } else {
        keystore::jks(&contents, password, now_ms).map_err(internal)
    }
}

async fn export_certificate(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let c = find_cert(&shared, &id)?;
    let b: ExportBody = body(&bytes)?;
    let compressed = parse_compressed(b.is_compressed.as_ref())?;
    let kind = b.kind.as_deref().map(str::to_ascii_uppercase);
    let kind = match kind.as_deref() {
        Some(k @ ("APACHE" | "NGINX" | "IIS" | "TOMCAT" | "OTHER")) => k.to_owned(),
        _ => {
            return Err(param(
                "Incorrect parameter: type must be APACHE, NGINX, IIS, TOMCAT or OTHER",
            ));
        }
    };
    let status = c.effective_status(now_ms(&shared));
    if status != "ISSUED" {
        return Err(not_allowed(format!(
            "only ISSUED certificates can be exported, this one is {status}"
        )));
    }
    let cert = crlf(&c.certificate_pem);
    let chain = crlf(&c.chain_pem);
    // A CSR certificate's key is with its owner: the field is present and empty.
    let key = c.key_pem.as_deref().map(export_key_pem).unwrap_or_default();
    if !compressed {
        if matches!(kind.as_str(), "IIS" | "TOMCAT") {
            // "If type is set to IIS or TOMCAT, it is not defined currently."
            return Err(param(
                "Incorrect parameter: the uncompressed export is defined for APACHE, NGINX and OTHER only",
            ));
        }
        return Ok(json(serde_json::json!({
            "certificate": cert,
            "certificate_chain": chain,
            "private_key": key,
        })));
    }
    let mut files: Vec<(&str, Vec<u8>)> = Vec::new();
    match kind.as_str() {
        "APACHE" => {
            files.push(("server.crt", cert.into_bytes()));
            files.push(("chain.crt", chain.into_bytes()));
        }
        "NGINX" => files.push(("server.crt", format!("{cert}{chain}").into_bytes())),
        "OTHER" => {
            files.push(("server.pem", cert.into_bytes()));
            files.push(("chain.pem", chain.into_bytes()));
        }
        // "keystorePass.txt (keystore password) and server.pfx" / "server.jks".
        _ => {
            let password = keystore::new_password();
            let store = keystore_file(&c, &kind, &password, now_ms(&shared))?;
            files.push(("keystorePass.txt", password.into_bytes()));
            let name = if kind == "IIS" {
                "server.pfx"
            } else {
                "server.jks"
            };
            files.push((name, store));
        }
    }
    if !key.is_empty() && !matches!(kind.as_str(), "IIS" | "TOMCAT") {
        files.push(("server.key", key.into_bytes()));
    }
    let zip = write_zip(&files)
        .map_err(|e| ApiError::new(500, "PCA.00000001", format!("Unknown error: {e}")))?;
    let cn = c
        .distinguished_name
        .common_name
        .as_deref()
        .unwrap_or("certificate");
    let file_name: String = format!("{cn}_{}.zip", kind.to_ascii_lowercase())
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "._-".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        zip,
    )
        .into_response())
}

const REVOKE_REASONS: [&str; 9] = [
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

/// Only an ISSUED certificate can be revoked: a revoked one cannot be revoked again, and an
/// expired one is no longer trusted anyway (choice: the reference is silent on expired).
async fn revoke_certificate(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, ApiError> {
    check_cert_id(&id)?;
    // "If you do not want to provide the revocation reason, set the request body to {}.
    // Otherwise, an error will be reported."
    let b: RevokeBody = body(&bytes)?;
    let reason = match b.reason.as_deref() {
        None => "UNSPECIFIED",
        Some(r) if REVOKE_REASONS.contains(&r) => r,
        Some(r) => {
            return Err(param(format!(
                "Incorrect parameter: reason {r:?} is not a revocation reason"
            )));
        }
    };
    let now = now_ms(&shared);
    shared.update_state(|st| {
        let c = st
            .pca
            .certs
            .get_mut(&id)
            .ok_or_else(|| cert_not_found(&id))?;
        let status = c.effective_status(now).to_owned();
        if status != "ISSUED" {
            return Err(not_allowed(format!(
                "only ISSUED certificates can be revoked, this one is {status}"
            )));
        }
        c.status = "REVOKED".into();
        c.revoke_reason = Some(reason.to_owned());
        c.revoke_time = Some(now);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- zip (stored entries; enough for unzip, Python's zipfile and every archive tool) ----

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn write_zip<D: AsRef<[u8]>>(files: &[(&str, D)]) -> std::io::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    let mut central: Vec<u8> = Vec::new();
    let to_u32 = |n: usize| {
        u32::try_from(n).map_err(|_| std::io::Error::other("zip entry larger than 4 GiB"))
    };
    for (name, data) in files {
        let data = data.as_ref();
        let crc = crc32(data);
        let size = to_u32(data.len())?;
        let name_len = u16::try_from(name.len()).map_err(std::io::Error::other)?;
        let offset = to_u32(out.len())?;
        // Local file header: version 2.0, no flags, stored, 1980-01-01 00:00.
        out.write_all(&0x0403_4b50u32.to_le_bytes())?;
        out.write_all(&20u16.to_le_bytes())?;
        out.write_all(&0u16.to_le_bytes())?;
        out.write_all(&0u16.to_le_bytes())?;
        out.write_all(&0u16.to_le_bytes())?;
        out.write_all(&0x0021u16.to_le_bytes())?;
        out.write_all(&crc.to_le_bytes())?;
        out.write_all(&size.to_le_bytes())?;
        out.write_all(&size.to_le_bytes())?;
        out.write_all(&name_len.to_le_bytes())?;
        out.write_all(&0u16.to_le_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(data)?;
        central.write_all(&0x0201_4b50u32.to_le_bytes())?;
        central.write_all(&20u16.to_le_bytes())?;
        central.write_all(&20u16.to_le_bytes())?;
        central.write_all(&0u16.to_le_bytes())?;
        central.write_all(&0u16.to_le_bytes())?;
        central.write_all(&0u16.to_le_bytes())?;
        central.write_all(&0x0021u16.to_le_bytes())?;
        central.write_all(&crc.to_le_bytes())?;
        central.write_all(&size.to_le_bytes())?;
        central.write_all(&size.to_le_bytes())?;
        central.write_all(&name_len.to_le_bytes())?;
        central.write_all(&[0u8; 12])?; // extra, comment, disk, internal attrs, external attrs
        central.write_all(&offset.to_le_bytes())?;
        central.write_all(name.as_bytes())?;
    }
    let cd_offset = to_u32(out.len())?;
    let cd_size = to_u32(central.len())?;
    let count = u16::try_from(files.len()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&central);
    out.write_all(&0x0605_4b50u32.to_le_bytes())?;
    out.write_all(&[0u8; 4])?;
    out.write_all(&count.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    out.write_all(&cd_size.to_le_bytes())?;
    out.write_all(&cd_offset.to_le_bytes())?;
    out.write_all(&0u16.to_le_bytes())?;
    Ok(out)
}

/// Read back a zip written by [`write_zip`] (stored entries only): `(name, bytes)` pairs.
pub fn read_stored_zip(zip: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut pos = 0usize;
    let u16_at = |p: usize| zip.get(p..p + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |p: usize| {
        zip.get(p..p + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    while u32_at(pos)? == 0x0403_4b50 {
        if u16_at(pos + 8)? != 0 {
            return None;
        }
        let size = u32_at(pos + 18)? as usize;
        let name_len = u16_at(pos + 26)? as usize;
        let extra_len = u16_at(pos + 28)? as usize;
        let name_start = pos + 30;
        let name = String::from_utf8(zip.get(name_start..name_start + name_len)?.to_vec()).ok()?;
        let data_start = name_start + name_len + extra_len;
        let data = zip.get(data_start..data_start + size)?.to_vec();
        if crc32(&data) != u32_at(pos + 14)? {
            return None;
        }
        files.push((name, data));
        pos = data_start + size;
    }
    Some(files)
}

// ---- CAs for tests and the demo, before the CA half's routes exist ----

/// A CA to put straight into the store (tests, demo).
#[derive(Clone, Debug)]
pub struct TestCa {
    pub common_name: String,
    pub country: Option<String>,
    pub organization: Option<String>,
    pub key_algorithm: pki::KeyAlgorithm,
    /// `None`: a self-signed root.
    pub issuer_id: Option<String>,
    pub path_length: Option<u8>,
    /// Valid from `now - 1 hour` for this long.
    pub validity: time::Duration,
    /// Stored status (`ACTIVED`, `DISABLED`, `PENDING`...).
    pub status: String,
}

impl TestCa {
    pub fn root(common_name: &str) -> Self {
        Self {
            common_name: common_name.into(),
            country: Some("CN".into()),
            organization: Some("ccm-agent".into()),
            key_algorithm: pki::KeyAlgorithm::Ec256,
            issuer_id: None,
            path_length: Some(2),
            validity: time::Duration::days(3650),
            status: "ACTIVED".into(),
        }
    }

    pub fn subordinate(common_name: &str, issuer_id: &str) -> Self {
        Self {
            issuer_id: Some(issuer_id.into()),
            path_length: Some(0),
            validity: time::Duration::days(1825),
            ..Self::root(common_name)
        }
    }
}

/// Sign and insert a CA record directly (no API call). Returns its id.
pub fn insert_test_ca(shared: &Shared, spec: &TestCa) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let now = shared.now();
    let not_before = now - time::Duration::hours(1);
    let not_after = not_before + spec.validity;
    let dn = DistinguishedName {
        common_name: Some(spec.common_name.clone()),
        country: spec.country.clone(),
        organization: spec.organization.clone(),
        ..DistinguishedName::default()
    };
    let key = pki::generate_key(spec.key_algorithm)?;
    let cert_spec =
        pki::CertificateSpec::new_ca(pki_dn(&dn), not_before, not_after, spec.path_length);
    let (cert, chain) = match &spec.issuer_id {
        None => (pki::self_signed(&cert_spec, &key)?, String::new()),
        Some(issuer_id) => {
            let issuer = shared
                .with_state(|st| st.pca.cas.get(issuer_id).cloned())
                .with_context(|| format!("issuer CA {issuer_id} is not in the store"))?;
            let issuer_key = pki::PrivateKey::from_pem(&issuer.key_pem)?;
            let issuer_cert = issuer
                .certificate_pem
                .clone()
                .context("issuer CA has no certificate")?;
            let cert = pki::issue(
                &cert_spec,
                &pki::PublicKeySource::Key(&key),
                &issuer_cert,
                &issuer_key,
            )?;
            (cert, chain_for(&issuer))
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let rec = ca_record_json(
        &id,
        if spec.issuer_id.is_some() {
            "SUBORDINATE"
        } else {
            "ROOT"
        },
        &spec.status,
        &dn,
        spec.key_algorithm.as_str(),
        "SHA256",
        &key.to_pem(),
        &cert,
        &chain,
        spec.issuer_id.as_deref(),
        spec.path_length,
        to_epoch_ms(not_before) / 1000 * 1000,
        to_epoch_ms(not_after) / 1000 * 1000,
    )?;
    shared.update_state(|st| st.pca.cas.insert(id.clone(), rec));
    Ok(id)
}

/// Private certificates from the demo subordinate CA at various distances from expiry: one
/// expiring within hours, one within days, one fresh for a year, one revoked, and one
/// already expired. Skipped when the CA seed made no such CA.
pub fn seed_demo(shared: &Shared) -> anyhow::Result<()> {
    let ca = shared.with_state(|st| {
        st.pca
            .cas
            .values()
            .find(|c| {
                c.distinguished_name.common_name.as_deref() == Some(DEMO_SUB_CA_NAME)
                    && !c.key_pem.is_empty()
                    && c.certificate_pem.is_some()
            })
            .cloned()
    });
    let Some(ca) = ca else {
        tracing::info!("emulator: no demo subordinate CA, no demo private certificates");
        return Ok(());
    };
    let now = shared.now();
    let ca_end = ca
        .not_after
        .and_then(from_epoch_ms)
        .unwrap_or(now + time::Duration::days(365));
    let demo: [(&str, time::Duration, time::Duration, bool); 5] = [
        (
            "expiring-soon.demo.internal",
            time::Duration::hours(-1),
            time::Duration::hours(6),
            false,
        ),
        (
            "expiring-in-days.demo.internal",
            time::Duration::days(-20),
            time::Duration::days(5),
            false,
        ),
        (
            "fresh.demo.internal",
            time::Duration::ZERO,
            time::Duration::days(365),
            false,
        ),
        (
            "revoked.demo.internal",
            time::Duration::ZERO,
            time::Duration::days(90),
            true,
        ),
        (
            "expired.demo.internal",
            time::Duration::days(-30),
            time::Duration::days(-1),
            false,
        ),
    ];
    for (cn, start, end, revoke) in demo {
        let not_after = (now + end).min(ca_end);
        let params = IssueParams {
            subject: subject_with_inheritance(
                &DistinguishedName {
                    common_name: Some(cn.into()),
                    ..DistinguishedName::default()
                },
                &ca.distinguished_name,
            )
            .map_err(|e| anyhow::anyhow!("{}", e.msg))?,
            not_before: now + start,
            not_after,
            key_usages: vec![
                pki::KeyUsage::DigitalSignature,
                pki::KeyUsage::KeyEncipherment,
            ],
            extended_key_usages: vec![pki::ExtendedKeyUsage::ServerAuth],
            sans: vec![pki::SubjectAltName::Dns(cn.into())],
            hash: pki::SignatureHash::Sha256,
            key: Ok(pki::KeyAlgorithm::Ec256),
            is_ca: false,
            path_length: None,
            customized_extension: None,
        };
        let id = issue_certificate(shared, &ca, params)
            .map_err(|e| anyhow::anyhow!("demo certificate {cn}: {}", e.msg))?;
        if revoke {
            shared.update_state(|st| {
                if let Some(c) = st.pca.certs.get_mut(&id) {
                    c.status = "REVOKED".into();
                    c.revoke_reason = Some("SUPERSEDED".into());
                    c.revoke_time = Some(to_epoch_ms(now));
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_roundtrip() {
        let files = [
            ("a.txt", "hello".to_owned()),
            ("b/c.pem", "x\r\ny".to_owned()),
        ];
        let z = write_zip(&files).expect("zip");
        let back = read_stored_zip(&z).expect("read");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, "a.txt");
        assert_eq!(back[1].1, b"x\r\ny");
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn san_checks() {
        assert!(is_dns_name("a.example.com"));
        assert!(is_dns_name("*.example.com"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.b"));
        assert!(!is_dns_name("a b"));
        assert!(is_email("ops@example.com"));
        assert!(!is_email("ops.example.com"));
        assert!(is_uri("https://example.com/x"));
        assert!(is_uri("spiffe://cluster/ns/a"));
        assert!(!is_uri("no scheme"));
    }

    #[test]
    fn years_add_handles_leap_day() {
        let t = time::macros::datetime!(2024-02-29 12:00 UTC);
        assert_eq!(
            add_years(t, 1),
            Some(time::macros::datetime!(2025-02-28 12:00 UTC))
        );
    }

    #[test]
    fn serial_shape() {
        let s = new_serial(time::macros::datetime!(2021-10-15 10:57:54 UTC));
        assert_eq!(s.len(), 24);
        assert!(s.starts_with("20211015105754"));
    }
}
