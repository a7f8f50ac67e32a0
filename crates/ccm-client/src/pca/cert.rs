//! PCA v1 private certificates: list, apply (the service generates the key), issue from a CSR
//! (the key never leaves the caller), parse a CSR, quota, detail, delete, export, revoke.
//!
//! Times arrive as epoch milliseconds and are parsed here into `OffsetDateTime`; PEM text is
//! normalised to `\n` line endings. Ids are checked to be UUIDs before anything is sent.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{DistinguishedName, Validity};
use crate::time::{epoch_ms_opt, normalize_pem};
use crate::{Client, CloudError, Request, Service};

/// The most certificates one list call may return.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// The most subject alternative names a certificate may carry.
pub const MAX_SUBJECT_ALTERNATIVE_NAMES: usize = 20;
/// The longest CSR the service accepts, in characters.
pub const MAX_CSR_LEN: usize = 5120;

/// Lifecycle state of a private certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CertificateStatus {
    Issued,
    Revoked,
    Expired,
    /// A status this client does not know yet.
    #[serde(other)]
    Unknown,
}

impl CertificateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Issued => "ISSUED",
            CertificateStatus::Revoked => "REVOKED",
            CertificateStatus::Expired => "EXPIRED",
            CertificateStatus::Unknown => "UNKNOWN",
        }
    }
}

/// What a certificate list is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateSortKey {
    CreateTime,
    CommonName,
    IssuerName,
    NotAfter,
}

impl CertificateSortKey {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateSortKey::CreateTime => "create_time",
            CertificateSortKey::CommonName => "common_name",
            CertificateSortKey::IssuerName => "issuer_name",
            CertificateSortKey::NotAfter => "not_after",
        }
    }
}

/// Sort direction (the service defaults to descending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortDir {
    Asc,
    Desc,
}

impl SortDir {
    pub fn as_str(self) -> &'static str {
        match self {
            SortDir::Asc => "ASC",
            SortDir::Desc => "DESC",
        }
    }
}

/// Query of `GET /v1/private-certificates`. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCertificatesQuery {
    /// 0..=1000; the service defaults to 10.
    pub limit: Option<u32>,
    /// Records to skip.
    pub offset: Option<u32>,
    /// Certificates whose common name contains this (1..64 characters).
    pub name: Option<String>,
    pub status: Option<CertificateStatus>,
    pub sort_key: Option<CertificateSortKey>,
    pub sort_dir: Option<SortDir>,
}

/// A private certificate as listed and shown (`Certificates` / `ShowCertificateResponse`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateCertificate {
    pub certificate_id: String,
    pub status: CertificateStatus,
    #[serde(default)]
    pub issuer_id: Option<String>,
    /// The issuing CA's common name.
    #[serde(default)]
    pub issuer_name: Option<String>,
    #[serde(default)]
    pub key_algorithm: Option<String>,
    #[serde(default)]
    pub signature_algorithm: Option<String>,
    /// 0: not frozen; anything else: frozen.
    #[serde(default)]
    pub freeze_flag: Option<i64>,
    /// `GENERATE` (key made by PCA), `IMPORT`, or `CSR` (key held by the caller).
    #[serde(default)]
    pub gen_mode: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default, with = "epoch_ms_opt")]
    pub create_time: Option<OffsetDateTime>,
    #[serde(default, with = "epoch_ms_opt")]
    pub delete_time: Option<OffsetDateTime>,
    #[serde(default, with = "epoch_ms_opt")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(default, with = "epoch_ms_opt")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(default)]
    pub distinguished_name: Option<DistinguishedName>,
    #[serde(default)]
    pub enterprise_project_id: Option<String>,
}

impl PrivateCertificate {
    /// The subject's common name, if the service sent one.
    pub fn common_name(&self) -> Option<&str> {
        self.distinguished_name
            .as_ref()
            .and_then(|dn| dn.common_name.as_deref())
    }

    /// Whether PCA holds the private key (so export returns it).
    pub fn key_held_by_service(&self) -> bool {
        self.gen_mode.as_deref() != Some("CSR")
    }
}

/// One page of certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateList {
    /// Matching certificates in all pages.
    #[serde(default)]
    pub total: u64,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub certificates: Vec<PrivateCertificate>,
}

/// A subject alternative name kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SanType {
    Dns,
    Ip,
    Email,
    Uri,
}

/// One subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectAlternativeName {
    #[serde(rename = "type")]
    pub kind: SanType,
    pub value: String,
}

impl SubjectAlternativeName {
    pub fn dns(v: impl Into<String>) -> Self {
        Self {
            kind: SanType::Dns,
            value: v.into(),
        }
    }
    pub fn ip(v: impl Into<String>) -> Self {
        Self {
            kind: SanType::Ip,
            value: v.into(),
        }
    }
    pub fn email(v: impl Into<String>) -> Self {
        Self {
            kind: SanType::Email,
            value: v.into(),
        }
    }
    pub fn uri(v: impl Into<String>) -> Self {
        Self {
            kind: SanType::Uri,
            value: v.into(),
        }
    }
}

/// Extended key usages to set (all default to false).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedKeyUsage {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server_auth: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_auth: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub code_signing: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub email_protection: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub time_stamping: bool,
}

/// A custom extension: a dot-decimal OID and a text value (each 1..64 characters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomizedExtension {
    pub object_identifier: String,
    pub value: String,
}

/// Body of `POST /v1/private-certificates`: PCA generates the key and signs the certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyCertificateRequest {
    pub issuer_id: String,
    /// `RSA2048`, `RSA4096`, `EC256`, `EC384`.
    pub key_algorithm: String,
    /// `SHA256`, `SHA384`, `SHA512`.
    pub signature_algorithm: String,
    /// Only `common_name` is required; absent attributes are inherited from the issuing CA.
    pub distinguished_name: DistinguishedName,
    pub validity: Validity,
    /// RFC 5280 names: `digitalSignature`, `keyEncipherment`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_usages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alternative_names: Vec<SubjectAlternativeName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_key_usage: Option<ExtendedKeyUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customized_extension: Option<CustomizedExtension>,
}

impl ApplyCertificateRequest {
    /// A request with the required fields; the rest can be set on the returned value.
    pub fn new(
        issuer_id: impl Into<String>,
        common_name: impl Into<String>,
        key_algorithm: impl Into<String>,
        signature_algorithm: impl Into<String>,
        validity: Validity,
    ) -> Self {
        Self {
            issuer_id: issuer_id.into(),
            key_algorithm: key_algorithm.into(),
            signature_algorithm: signature_algorithm.into(),
            distinguished_name: DistinguishedName {
                common_name: Some(common_name.into()),
                ..DistinguishedName::default()
            },
            validity,
            key_usages: None,
            subject_alternative_names: Vec::new(),
            extended_key_usage: None,
            customized_extension: None,
        }
    }
}

/// What a CSR is signed into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CsrCertificateType {
    /// A private (end-entity) certificate; the default.
    EntityCert,
    /// A subordinate CA whose key stays with the caller; the returned id is a CA id.
    IntermediateCa,
}

/// Body of `POST /v1/private-certificates/csr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrCertificateRequest {
    pub issuer_id: String,
    /// PEM; at most [`MAX_CSR_LEN`] characters.
    pub csr: String,
    pub validity: Validity,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<CsrCertificateType>,
    /// 0..=6, only for [`CsrCertificateType::IntermediateCa`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_length: Option<u8>,
    /// Reserved: the service ignores it (the CSR's own names are used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alternative_names: Vec<SubjectAlternativeName>,
}

impl CsrCertificateRequest {
    pub fn new(issuer_id: impl Into<String>, csr: impl Into<String>, validity: Validity) -> Self {
        Self {
            issuer_id: issuer_id.into(),
            csr: csr.into(),
            validity,
            kind: None,
            path_length: None,
            subject_alternative_names: Vec::new(),
        }
    }
}

/// Body of `POST /v1/private-certificates/csr/parse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseCsrRequest {
    /// PEM; at most [`MAX_CSR_LEN`] characters.
    pub csr: String,
}

/// What `POST /v1/private-certificates/csr/parse` reads out of a CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedCsr {
    /// `RSA`, `EC`.
    #[serde(default)]
    pub key_algorithm: Option<String>,
    /// Key size in bits.
    #[serde(default, deserialize_with = "lenient_u32")]
    pub key_algorithm_length: Option<u32>,
    /// Such as `SHA256withRSA`.
    #[serde(default)]
    pub signature_algorithm: Option<String>,
    /// SubjectPublicKeyInfo PEM, normalised to `\n`.
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub distinguished_name: Option<DistinguishedName>,
}

/// One quota line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaResource {
    /// `CERTIFICATE` or `CERTIFICATE_AUTHORITY`.
    #[serde(rename = "type")]
    pub kind: String,
    pub used: u64,
    pub quota: u64,
}

/// The answer of `GET /v1/private-certificates/quotas`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateQuotaResponse {
    pub quotas: CertificateQuotas,
}

/// The `quotas` object of [`CertificateQuotaResponse`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateQuotas {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub resources: Vec<QuotaResource>,
}

/// The server a certificate export is shaped for. Sent in upper case, as the tables write it;
/// read in either case, as the reference's export example writes `"other"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ExportType {
    #[serde(alias = "nginx")]
    Nginx,
    #[serde(alias = "apache")]
    Apache,
    #[serde(alias = "iis")]
    Iis,
    #[serde(alias = "tomcat")]
    Tomcat,
    /// Plain PEM files.
    #[serde(alias = "other")]
    Other,
}

impl ExportType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportType::Nginx => "NGINX",
            ExportType::Apache => "APACHE",
            ExportType::Iis => "IIS",
            ExportType::Tomcat => "TOMCAT",
            ExportType::Other => "OTHER",
        }
    }
}

/// Body of `POST /v1/private-certificates/{certificate_id}/export`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCertificateRequest {
    /// A zip package instead of JSON. Sent as the string `"true"`/`"false"`, as the official
    /// SDK does; the reference's example writes a JSON boolean, and both are read.
    #[serde(serialize_with = "ser_bool_str", deserialize_with = "de_bool_or_str")]
    pub is_compressed: bool,
    #[serde(rename = "type")]
    pub kind: ExportType,
}

fn ser_bool_str<S: serde::Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *v { "true" } else { "false" })
}

fn de_bool_or_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Ok(b),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "is_compressed: expected true or false, got {other}"
        ))),
    }
}

/// An exported certificate (uncompressed export), PEMs normalised to `\n`.
#[derive(Clone, PartialEq, Eq)]
pub struct ExportedCertificate {
    pub certificate: String,
    /// The issuing CA up to the root, nearest first.
    pub certificate_chain: String,
    /// `None` for a certificate issued from a CSR: the caller holds its key.
    pub private_key: Option<String>,
}

impl std::fmt::Debug for ExportedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedCertificate")
            .field("certificate", &self.certificate)
            .field("certificate_chain", &self.certificate_chain)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The answer of an uncompressed export as sent (PEMs with `\r\n`; no key for a certificate
/// issued from a CSR); [`ExportedCertificate`] is what
/// [`Client::export_private_certificate`] makes of it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCertificateResponse {
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub certificate_chain: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
}

impl std::fmt::Debug for ExportCertificateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportCertificateResponse")
            .field("certificate", &self.certificate)
            .field("certificate_chain", &self.certificate_chain)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a certificate is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RevokeReason {
    Unspecified,
    KeyCompromise,
    CertificateAuthorityCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AttributeAuthorityCompromise,
}

/// Body of `POST /v1/private-certificates/{certificate_id}/revoke`: a reason, or `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeCertificateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RevokeReason>,
}

/// The answer of apply and issue-via-CSR: the new certificate's (or intermediate CA's) id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateIdResponse {
    pub certificate_id: String,
}

/// Check that `id` looks like a PCA id (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex).
pub fn validate_id(what: &str, id: &str) -> Result<(), CloudError> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(CloudError::Invalid(format!(
            "{what} {id:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        )))
    }
}

/// Whether `s` is a hyphenated hex UUID.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The reference's example sends the key length as a number, the table says string: take both.
fn lenient_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => Ok(n.as_u64().and_then(|v| u32::try_from(v).ok())),
        Some(serde_json::Value::String(s)) => Ok(s.trim().parse().ok()),
        Some(other) => Err(serde::de::Error::custom(format!(
            "key_algorithm_length: expected a number, got {other}"
        ))),
    }
}

fn non_empty_pem(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
        .map(|s| normalize_pem(&s))
}

impl Client {
    /// One page of private certificates.
    pub async fn list_private_certificates(
        &self,
        q: &ListCertificatesQuery,
    ) -> Result<CertificateList, CloudError> {
        if let Some(limit) = q.limit
            && limit > MAX_LIST_LIMIT
        {
            return Err(CloudError::Invalid(format!(
                "list_certificate: limit {limit} exceeds {MAX_LIST_LIMIT}"
            )));
        }
        if let Some(name) = &q.name
            && !(1..=64).contains(&name.chars().count())
        {
            return Err(CloudError::Invalid(
                "list_certificate: name must be 1..64 characters".into(),
            ));
        }
        if q.status == Some(CertificateStatus::Unknown) {
            return Err(CloudError::Invalid(
                "list_certificate: cannot filter by an unknown status".into(),
            ));
        }
        let req = Request::get(Service::Pca, "list_certificate", "/v1/private-certificates")
            .query_opt("limit", q.limit)
            .query_opt("offset", q.offset)
            .query_opt("name", q.name.as_deref())
            .query_opt("status", q.status.map(CertificateStatus::as_str))
            .query_opt("sort_key", q.sort_key.map(CertificateSortKey::as_str))
            .query_opt("sort_dir", q.sort_dir.map(SortDir::as_str));
        self.call(req).await
    }

    /// Every private certificate matching `q`, walking the pages. `q.limit` is the page size
    /// (default and maximum [`MAX_LIST_LIMIT`]); `q.offset` is ignored. Stops at a short or
    /// empty page, or once `total` certificates have arrived.
    pub async fn list_all_private_certificates(
        &self,
        q: &ListCertificatesQuery,
    ) -> Result<Vec<PrivateCertificate>, CloudError> {
        let page_size = q.limit.unwrap_or(MAX_LIST_LIMIT).clamp(1, MAX_LIST_LIMIT);
        let mut all = Vec::new();
        let mut offset: u32 = 0;
        loop {
            let page_query = ListCertificatesQuery {
                limit: Some(page_size),
                offset: Some(offset),
                ..q.clone()
            };
            let page = self.list_private_certificates(&page_query).await?;
            let n = u32::try_from(page.certificates.len()).unwrap_or(u32::MAX);
            all.extend(page.certificates);
            if n == 0 || n < page_size || all.len() as u64 >= page.total {
                return Ok(all);
            }
            offset = offset.saturating_add(n);
        }
    }

    /// Apply for a certificate whose key PCA generates. Returns the new certificate's id.
    ///
    /// Creates a certificate: after an unknown outcome (timeout, 500), look for it by listing
    /// (name = common name, sorted by create_time) before applying again.
    pub async fn apply_private_certificate(
        &self,
        body: &ApplyCertificateRequest,
    ) -> Result<String, CloudError> {
        validate_id("issuer_id", &body.issuer_id)?;
        if body.subject_alternative_names.len() > MAX_SUBJECT_ALTERNATIVE_NAMES {
            return Err(CloudError::Invalid(format!(
                "create_certificate: at most {MAX_SUBJECT_ALTERNATIVE_NAMES} subject alternative names"
            )));
        }
        let req = Request::post(
            Service::Pca,
            "create_certificate",
            "/v1/private-certificates",
        )
        .json(body)?;
        let id: CertificateIdResponse = self.call(req).await?;
        Ok(id.certificate_id)
    }

    /// Have PCA sign a CSR; the private key stays with the caller. Returns the certificate's id
    /// (for [`CsrCertificateType::IntermediateCa`], the new subordinate CA's id).
    pub async fn issue_private_certificate_by_csr(
        &self,
        body: &CsrCertificateRequest,
    ) -> Result<String, CloudError> {
        validate_id("issuer_id", &body.issuer_id)?;
        if body.csr.len() > MAX_CSR_LEN {
            return Err(CloudError::Invalid(format!(
                "create_certificate_by_csr: the CSR is {} characters, at most {MAX_CSR_LEN} are accepted",
                body.csr.len()
            )));
        }
        let req = Request::post(
            Service::Pca,
            "create_certificate_by_csr",
            "/v1/private-certificates/csr",
        )
        .json(body)?;
        let id: CertificateIdResponse = self.call(req).await?;
        Ok(id.certificate_id)
    }

    /// Have PCA parse a CSR (nothing is created).
    pub async fn parse_certificate_signing_request(
        &self,
        csr: &str,
    ) -> Result<ParsedCsr, CloudError> {
        if csr.len() > MAX_CSR_LEN {
            return Err(CloudError::Invalid(format!(
                "parse_certificate_signing_request: the CSR is {} characters, at most {MAX_CSR_LEN} are accepted",
                csr.len()
            )));
        }
        let req = Request::post(
            Service::Pca,
            "parse_certificate_signing_request",
            "/v1/private-certificates/csr/parse",
        )
        .json(&ParseCsrRequest {
            csr: csr.to_owned(),
        })?
        .idempotent();
        let mut parsed: ParsedCsr = self.call(req).await?;
        parsed.public_key = non_empty_pem(parsed.public_key);
        Ok(parsed)
    }

    /// The private certificate quota lines (`CERTIFICATE`: used and total).
    pub async fn private_certificate_quota(&self) -> Result<Vec<QuotaResource>, CloudError> {
        let req = Request::get(
            Service::Pca,
            "show_certificate_quota",
            "/v1/private-certificates/quotas",
        );
        let body: CertificateQuotaResponse = self.call(req).await?;
        Ok(body.quotas.resources)
    }

    /// One private certificate.
    pub async fn show_private_certificate(
        &self,
        certificate_id: &str,
    ) -> Result<PrivateCertificate, CloudError> {
        validate_id("certificate_id", certificate_id)?;
        let req = Request::get(
            Service::Pca,
            "show_certificate",
            format!("/v1/private-certificates/{certificate_id}"),
        );
        self.call(req).await
    }

    /// Delete a private certificate.
    pub async fn delete_private_certificate(&self, certificate_id: &str) -> Result<(), CloudError> {
        validate_id("certificate_id", certificate_id)?;
        let req = Request::delete(
            Service::Pca,
            "delete_certificate",
            format!("/v1/private-certificates/{certificate_id}"),
        );
        self.call_empty(req).await
    }

    /// Export an issued certificate as PEM (certificate, chain to the root, key when PCA holds it).
    pub async fn export_private_certificate(
        &self,
        certificate_id: &str,
        kind: ExportType,
    ) -> Result<ExportedCertificate, CloudError> {
        let req = export_request(certificate_id, kind, false)?;
        let wire: ExportCertificateResponse = self.call(req).await?;
        let certificate = non_empty_pem(wire.certificate).ok_or_else(|| CloudError::Decode {
            service: "pca",
            operation: "export_certificate",
            detail: "no certificate in the export".into(),
        })?;
        Ok(ExportedCertificate {
            certificate,
            certificate_chain: non_empty_pem(wire.certificate_chain).unwrap_or_default(),
            private_key: non_empty_pem(wire.private_key),
        })
    }

    /// Export an issued certificate as the service's zip package (files depend on `kind`).
    pub async fn export_private_certificate_zip(
        &self,
        certificate_id: &str,
        kind: ExportType,
    ) -> Result<Vec<u8>, CloudError> {
        let req = export_request(certificate_id, kind, true)?;
        let raw = self.call_raw(req).await?;
        if !raw.body.starts_with(b"PK") {
            return Err(CloudError::Decode {
                service: "pca",
                operation: "export_certificate",
                detail: "the compressed export is not a zip archive".into(),
            });
        }
        Ok(raw.body.to_vec())
    }

    /// Revoke a certificate, optionally saying why (`None` sends `{}`).
    pub async fn revoke_private_certificate(
        &self,
        certificate_id: &str,
        reason: Option<RevokeReason>,
    ) -> Result<(), CloudError> {
        validate_id("certificate_id", certificate_id)?;
        let req = Request::post(
            Service::Pca,
            "revoke_certificate",
            format!("/v1/private-certificates/{certificate_id}/revoke"),
        )
        .json(&RevokeCertificateRequest { reason })?
        .idempotent();
        self.call_empty(req).await
    }
}

fn export_request(
    certificate_id: &str,
    kind: ExportType,
    compressed: bool,
) -> Result<Request, CloudError> {
    validate_id("certificate_id", certificate_id)?;
    Ok(Request::post(
        Service::Pca,
        "export_certificate",
        format!("/v1/private-certificates/{certificate_id}/export"),
    )
    .json(&ExportCertificateRequest {
        is_compressed: compressed,
        kind,
    })?
    .idempotent())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_list_example() {
        let body = r#"{
  "total" : 2,
  "certificates" : [ {
    "signature_algorithm" : "SHA256",
    "issuer_id" : "ef5d84d1-4f52-47d2-b1c8-a91a672487a0",
    "issuer_name" : "12",
    "not_after" : 1665539214000,
    "not_before" : 1634295475000,
    "status" : "ISSUED",
    "freeze_flag" : 0,
    "gen_mode" : "GENERATE",
    "serial_number" : "202110151057541266081861",
    "distinguished_name" : {
      "country" : "cn",
      "state" : "guizhou",
      "locality" : "guiyang",
      "organization" : "hw",
      "organizational_unit" : "IT",
      "common_name" : "test.huawei.com"
    },
    "key_algorithm" : "RSA4096",
    "create_time" : 1634295475000,
    "delete_time" : null,
    "certificate_id" : "6434f74f-2d13-4e6a-89eb-93ee313f1a43"
  }, {
    "signature_algorithm" : "SHA256",
    "issuer_id" : "ef5d84d1-4f52-47d2-b1c8-a91a672487a0",
    "issuer_name" : "12",
    "not_after" : 1665539214000,
    "not_before" : 1634110315000,
    "status" : "SOMETHING_NEW",
    "freeze_flag" : 0,
    "gen_mode" : "CSR",
    "serial_number" : "202110130731541908887138",
    "distinguished_name" : { "common_name" : "hr.huawei.com" },
    "key_algorithm" : "RSA4096",
    "create_time" : 1634110316000,
    "delete_time" : null,
    "certificate_id" : "1cbb5a52-806b-469c-b182-7446e1851a1c",
    "enc_cert_info": null
  } ]
}"#;
        let list: CertificateList = serde_json::from_str(body).expect("decode");
        assert_eq!(list.total, 2);
        let c = &list.certificates[0];
        assert_eq!(c.status, CertificateStatus::Issued);
        assert_eq!(c.common_name(), Some("test.huawei.com"));
        assert_eq!(
            c.not_after.map(crate::time::to_epoch_ms),
            Some(1_665_539_214_000)
        );
        assert!(c.delete_time.is_none());
        assert!(c.key_held_by_service());
        assert_eq!(list.certificates[1].status, CertificateStatus::Unknown);
        assert!(!list.certificates[1].key_held_by_service());
    }

    #[test]
    fn apply_body_matches_the_reference_example() {
        let mut req = ApplyCertificateRequest::new(
            "2cb2878b-6cd1-460d-bd25-afe655159bdc",
            "TestCert",
            "RSA2048",
            "SHA256",
            Validity::years(3),
        );
        req.distinguished_name.country = Some("CN".into());
        req.subject_alternative_names = vec![SubjectAlternativeName::ip("156.127.116.38")];
        req.key_usages = Some(vec!["digitalSignature".into(), "nonRepudiation".into()]);
        req.customized_extension = Some(CustomizedExtension {
            object_identifier: "1.3.6.1.4.1.2011.4.1".into(),
            value: "This is custom extensions.".into(),
        });
        let v = serde_json::to_value(&req).expect("encode");
        assert_eq!(
            v["subject_alternative_names"],
            serde_json::json!([{"type": "IP", "value": "156.127.116.38"}])
        );
        assert_eq!(
            v["validity"],
            serde_json::json!({"type": "YEAR", "value": 3})
        );
        assert_eq!(
            v["distinguished_name"],
            serde_json::json!({"common_name": "TestCert", "country": "CN"})
        );
        assert!(v.get("extended_key_usage").is_none());
        let eku = ExtendedKeyUsage {
            server_auth: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(eku).expect("eku"),
            serde_json::json!({"server_auth": true})
        );
    }

    #[test]
    fn export_and_revoke_bodies() {
        let v = serde_json::to_value(ExportCertificateRequest {
            is_compressed: false,
            kind: ExportType::Nginx,
        })
        .expect("export");
        assert_eq!(
            v,
            serde_json::json!({"is_compressed": "false", "type": "NGINX"})
        );
        let v = serde_json::to_value(RevokeCertificateRequest { reason: None }).expect("revoke");
        assert_eq!(v, serde_json::json!({}));
        let v = serde_json::to_value(RevokeCertificateRequest {
            reason: Some(RevokeReason::CertificateAuthorityCompromise),
        })
        .expect("revoke");
        assert_eq!(
            v,
            serde_json::json!({"reason": "CERTIFICATE_AUTHORITY_COMPROMISE"})
        );
        let v = serde_json::to_value(CsrCertificateType::IntermediateCa).expect("type");
        assert_eq!(v, serde_json::json!("INTERMEDIATE_CA"));
    }

    #[test]
    fn parse_csr_example_decodes() {
        let body = r#"{"distinguished_name":{"country":"RU","common_name":"test.com"},
            "public_key":"-----BEGIN PUBLIC KEY-----\r\nMIIB\r\n-----END PUBLIC KEY-----\r\n",
            "key_algorithm":"RSA","key_algorithm_length":2048,"signature_algorithm":"SHA256withRSA"}"#;
        let mut p: ParsedCsr = serde_json::from_str(body).expect("decode");
        p.public_key = non_empty_pem(p.public_key);
        assert_eq!(p.key_algorithm_length, Some(2048));
        assert_eq!(
            p.public_key.as_deref(),
            Some("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n")
        );
        let p: ParsedCsr =
            serde_json::from_str(r#"{"key_algorithm_length":"4096"}"#).expect("decode");
        assert_eq!(p.key_algorithm_length, Some(4096));
    }

    #[test]
    fn uuid_check() {
        assert!(is_uuid("6434f74f-2d13-4e6a-89eb-93ee313f1a43"));
        assert!(!is_uuid("6434f74f-2d13-4e6a-89eb-93ee313f1a4"));
        assert!(!is_uuid("6434f74f-2d13-4e6a-89eb-93ee313f1a4g"));
        assert!(!is_uuid("../../v1/private-certificate-authorities"));
        assert!(validate_id("certificate_id", "x/y").is_err());
    }
}
