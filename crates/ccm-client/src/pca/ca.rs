//! PCA v1 private certificate authorities: list, create, quota, details, delete/restore,
//! CSR export, disable/enable, activate, export and import of the CA certificate, revocation of
//! a subordinate CA, and the OBS agency and bucket calls used for CRL publishing.
//!
//! Times arrive as epoch milliseconds and leave this module as `OffsetDateTime`; PEM text
//! arrives with `\r\n` and leaves normalised to `\n`. CA ids are checked to be UUIDs before a
//! request is built, so a typo never reaches the service.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CrlConfiguration, DistinguishedName, Validity};
use crate::time::{epoch_ms_opt, normalize_pem};
use crate::{Client, CloudError, Request, Service};

/// The collection path of CAs.
const CAS: &str = "/v1/private-certificate-authorities";
/// The largest page the list call accepts.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// The service's default page size.
pub const DEFAULT_PAGE_LIMIT: u32 = 10;
/// Scheduled deletion bounds, in days.
pub const MIN_PENDING_DAYS: u32 = 7;
pub const MAX_PENDING_DAYS: u32 = 30;
/// The longest path length a CA may be given.
pub const MAX_PATH_LENGTH: u8 = 6;

/// `ROOT` or `SUBORDINATE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaType {
    Root,
    Subordinate,
    /// A value this client does not know (decoding only).
    #[serde(other)]
    Unknown,
}

impl CaType {
    pub fn as_str(self) -> &'static str {
        match self {
            CaType::Root => "ROOT",
            CaType::Subordinate => "SUBORDINATE",
            CaType::Unknown => "UNKNOWN",
        }
    }
}

/// The lifecycle state of a CA. `ACTIVED` is the API's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CaStatus {
    #[serde(rename = "PENDING")]
    Pending,
    #[serde(rename = "ACTIVED")]
    Active,
    #[serde(rename = "DISABLED")]
    Disabled,
    #[serde(rename = "DELETED")]
    Deleted,
    #[serde(rename = "EXPIRED")]
    Expired,
    /// A value this client does not know (decoding only).
    #[serde(other)]
    Unknown,
}

impl CaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaStatus::Pending => "PENDING",
            CaStatus::Active => "ACTIVED",
            CaStatus::Disabled => "DISABLED",
            CaStatus::Deleted => "DELETED",
            CaStatus::Expired => "EXPIRED",
            CaStatus::Unknown => "UNKNOWN",
        }
    }
}

/// Key algorithms a CA may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    #[serde(rename = "RSA2048")]
    Rsa2048,
    #[serde(rename = "RSA4096")]
    Rsa4096,
    #[serde(rename = "EC256")]
    Ec256,
    #[serde(rename = "EC384")]
    Ec384,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa2048 => "RSA2048",
            KeyAlgorithm::Rsa4096 => "RSA4096",
            KeyAlgorithm::Ec256 => "EC256",
            KeyAlgorithm::Ec384 => "EC384",
        }
    }
}

/// Signature hash algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SignatureAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl SignatureAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureAlgorithm::Sha256 => "SHA256",
            SignatureAlgorithm::Sha384 => "SHA384",
            SignatureAlgorithm::Sha512 => "SHA512",
        }
    }
}

/// X.509 key usages as the API names them (RFC 5280 4.2.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyUsage {
    #[serde(rename = "digitalSignature")]
    DigitalSignature,
    #[serde(rename = "nonRepudiation")]
    NonRepudiation,
    #[serde(rename = "keyEncipherment")]
    KeyEncipherment,
    #[serde(rename = "dataEncipherment")]
    DataEncipherment,
    #[serde(rename = "keyAgreement")]
    KeyAgreement,
    #[serde(rename = "keyCertSign")]
    KeyCertSign,
    #[serde(rename = "cRLSign")]
    CrlSign,
    #[serde(rename = "encipherOnly")]
    EncipherOnly,
    #[serde(rename = "decipherOnly")]
    DecipherOnly,
}

/// Why a certificate or subordinate CA is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RevocationReason {
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

/// `ListCrlConfiguration`: CRL settings as the service reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCrlConfiguration {
    #[serde(default, deserialize_with = "null_as_false")]
    pub enabled: bool,
    #[serde(default)]
    pub crl_name: Option<String>,
    #[serde(default)]
    pub obs_bucket_name: Option<String>,
    #[serde(default)]
    pub valid_days: Option<i64>,
    #[serde(default)]
    pub crl_dis_point: Option<String>,
}

fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// One CA (`CertificateAuthorities` in list answers; the same fields in the details answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertificateAuthority {
    pub ca_id: String,
    #[serde(rename = "type")]
    pub ca_type: CaType,
    pub status: CaStatus,
    /// 7 for a root CA (unlimited), 0..6 for a subordinate; absent while pending.
    #[serde(default)]
    pub path_length: Option<i64>,
    #[serde(default)]
    pub issuer_id: Option<String>,
    #[serde(default)]
    pub issuer_name: Option<String>,
    /// As the service spells it (`RSA2048`, ... and sometimes just `RSA`).
    #[serde(default)]
    pub key_algorithm: Option<String>,
    #[serde(default)]
    pub signature_algorithm: Option<String>,
    #[serde(default)]
    pub freeze_flag: Option<i64>,
    /// `GENERATE`, `IMPORT` or `CSR`.
    #[serde(default)]
    pub gen_mode: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default, with = "epoch_ms_opt")]
    pub create_time: Option<OffsetDateTime>,
    /// When a CA in `DELETED` state will be removed.
    #[serde(default, with = "epoch_ms_opt")]
    pub delete_time: Option<OffsetDateTime>,
    #[serde(default, with = "epoch_ms_opt")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(default, with = "epoch_ms_opt")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub distinguished_name: DistinguishedName,
    #[serde(default)]
    pub crl_configuration: Option<ListCrlConfiguration>,
    #[serde(default)]
    pub enterprise_project_id: Option<String>,
    #[serde(default)]
    pub free_quota: Option<i64>,
    #[serde(default)]
    pub charging_mode: Option<i64>,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub domain_id: Option<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl CertificateAuthority {
    /// The common name, or an empty string.
    pub fn common_name(&self) -> &str {
        self.distinguished_name.common_name.as_deref().unwrap_or("")
    }
}

/// One page of the CA list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaList {
    #[serde(default)]
    pub total: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub certificate_authorities: Vec<CertificateAuthority>,
}

/// Sort keys of the CA list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaSortKey {
    CreateTime,
    CommonName,
    CaType,
    NotAfter,
}

impl CaSortKey {
    pub fn as_str(self) -> &'static str {
        match self {
            CaSortKey::CreateTime => "create_time",
            CaSortKey::CommonName => "common_name",
            CaSortKey::CaType => "ca_type",
            CaSortKey::NotAfter => "not_after",
        }
    }
}

/// `ASC` or `DESC` (the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
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

/// Filters and paging of `GET /v1/private-certificate-authorities`. Unset fields are not sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCasQuery {
    /// 0..=1000 (service default 10).
    pub limit: Option<u32>,
    /// The index of the first record returned.
    pub offset: Option<u32>,
    /// CAs whose common name contains this (1..64 characters).
    pub name: Option<String>,
    pub status: Option<CaStatus>,
    pub ca_type: Option<CaType>,
    pub sort_key: Option<CaSortKey>,
    pub sort_dir: Option<SortDir>,
}

impl ListCasQuery {
    fn check(&self) -> Result<(), CloudError> {
        if let Some(limit) = self.limit
            && limit > MAX_PAGE_LIMIT
        {
            return Err(CloudError::Invalid(format!(
                "list CAs: limit {limit} is above {MAX_PAGE_LIMIT}"
            )));
        }
        if let Some(name) = &self.name {
            let n = name.chars().count();
            if !(1..=64).contains(&n) {
                return Err(CloudError::Invalid(format!(
                    "list CAs: name filter must be 1 to 64 characters, got {n}"
                )));
            }
        }
        if matches!(self.status, Some(CaStatus::Unknown))
            || matches!(self.ca_type, Some(CaType::Unknown))
        {
            return Err(CloudError::Invalid(
                "list CAs: cannot filter by an unknown status or type".into(),
            ));
        }
        Ok(())
    }
}

/// The body of `POST /v1/private-certificate-authorities`. Build it with [`CreateCaRequest::root`],
/// [`CreateCaRequest::subordinate`] or [`CreateCaRequest::pending_subordinate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCaRequest {
    #[serde(rename = "type")]
    pub ca_type: CaType,
    pub distinguished_name: DistinguishedName,
    pub key_algorithm: KeyAlgorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity: Option<Validity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_length: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_algorithm: Option<SignatureAlgorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usages: Option<Vec<KeyUsage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_configuration: Option<CrlConfiguration>,
}

impl CreateCaRequest {
    /// A self-signed root CA.
    pub fn root(
        distinguished_name: DistinguishedName,
        key_algorithm: KeyAlgorithm,
        signature_algorithm: SignatureAlgorithm,
        validity: Validity,
    ) -> Self {
        Self {
            ca_type: CaType::Root,
            distinguished_name,
            key_algorithm,
            validity: Some(validity),
            issuer_id: None,
            path_length: None,
            signature_algorithm: Some(signature_algorithm),
            key_usages: None,
            crl_configuration: None,
        }
    }

    /// A subordinate CA issued at once by `issuer_id`.
    pub fn subordinate(
        distinguished_name: DistinguishedName,
        key_algorithm: KeyAlgorithm,
        issuer_id: impl Into<String>,
        signature_algorithm: SignatureAlgorithm,
        validity: Validity,
    ) -> Self {
        Self {
            ca_type: CaType::Subordinate,
            distinguished_name,
            key_algorithm,
            validity: Some(validity),
            issuer_id: Some(issuer_id.into()),
            path_length: None,
            signature_algorithm: Some(signature_algorithm),
            key_usages: None,
            crl_configuration: None,
        }
    }

    /// A subordinate CA left `PENDING`: its CSR can be exported, then it is activated or an
    /// externally issued certificate imported.
    pub fn pending_subordinate(
        distinguished_name: DistinguishedName,
        key_algorithm: KeyAlgorithm,
    ) -> Self {
        Self {
            ca_type: CaType::Subordinate,
            distinguished_name,
            key_algorithm,
            validity: None,
            issuer_id: None,
            path_length: None,
            signature_algorithm: None,
            key_usages: None,
            crl_configuration: None,
        }
    }

    pub fn with_path_length(mut self, path_length: u8) -> Self {
        self.path_length = Some(path_length);
        self
    }

    pub fn with_key_usages(mut self, key_usages: Vec<KeyUsage>) -> Self {
        self.key_usages = Some(key_usages);
        self
    }

    pub fn with_crl_configuration(mut self, crl: CrlConfiguration) -> Self {
        self.crl_configuration = Some(crl);
        self
    }

    fn check(&self) -> Result<(), CloudError> {
        if self.ca_type == CaType::Unknown {
            return Err(CloudError::Invalid(
                "create CA: type must be ROOT or SUBORDINATE".into(),
            ));
        }
        if let Some(id) = &self.issuer_id {
            validate_uuid("issuer_id", id)?;
        }
        check_path_length(self.path_length)
    }
}

fn check_path_length(p: Option<u8>) -> Result<(), CloudError> {
    match p {
        Some(p) if p > MAX_PATH_LENGTH => Err(CloudError::Invalid(format!(
            "path_length {p} is outside 0..={MAX_PATH_LENGTH}"
        ))),
        _ => Ok(()),
    }
}

/// The body of `POST .../{ca_id}/activate`: issue a `PENDING` subordinate CA's certificate from
/// one of this account's CAs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateCaRequest {
    pub issuer_id: String,
    pub signature_algorithm: SignatureAlgorithm,
    pub validity: Validity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_length: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usages: Option<Vec<KeyUsage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_configuration: Option<CrlConfiguration>,
}

impl ActivateCaRequest {
    pub fn new(
        issuer_id: impl Into<String>,
        signature_algorithm: SignatureAlgorithm,
        validity: Validity,
    ) -> Self {
        Self {
            issuer_id: issuer_id.into(),
            signature_algorithm,
            validity,
            path_length: None,
            key_usages: None,
            crl_configuration: None,
        }
    }

    pub fn with_path_length(mut self, path_length: u8) -> Self {
        self.path_length = Some(path_length);
        self
    }
}

/// A CA certificate and the chain above it (intermediate > ... > root), PEM with `\n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertificate {
    pub certificate: String,
    #[serde(default)]
    pub certificate_chain: String,
}

/// The body of `POST .../{ca_id}/import`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCaCertificateRequest {
    pub certificate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<String>,
}

/// Quota of one resource kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaResource {
    /// `CERTIFICATE_AUTHORITY` or `CERTIFICATE`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub used: u64,
    #[serde(default)]
    pub quota: u64,
}

/// The `quotas` object of the quota answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: Vec<QuotaResource>,
}

impl Quotas {
    /// The entry for `kind` (`CERTIFICATE_AUTHORITY`, `CERTIFICATE`).
    pub fn get(&self, kind: &str) -> Option<&QuotaResource> {
        self.resources.iter().find(|r| r.kind == kind)
    }
}

/// One OBS bucket CRLs may be published to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObsBucket {
    pub bucket_name: String,
    #[serde(default, with = "epoch_ms_opt")]
    pub create_time: Option<OffsetDateTime>,
}

/// The answer of the OBS bucket list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObsBucketList {
    #[serde(default)]
    pub total: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub obs_buckets: Vec<ObsBucket>,
}

/// Check that `id` is a hyphenated UUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex), the form
/// every PCA id takes. `what` names the id in the error.
pub fn validate_uuid(what: &str, id: &str) -> Result<(), CloudError> {
    if is_uuid(id) {
        Ok(())
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(CloudError::Invalid(format!(
            "{what} {shown:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        )))
    }
}

/// Whether `s` is a hyphenated hex UUID of 36 characters.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn ca_path(ca_id: &str, action: Option<&str>) -> Result<String, CloudError> {
    validate_uuid("ca_id", ca_id)?;
    Ok(match action {
        Some(a) => format!("{CAS}/{ca_id}/{a}"),
        None => format!("{CAS}/{ca_id}"),
    })
}

/// The answer of `POST /v1/private-certificate-authorities`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCaResponse {
    pub ca_id: String,
}

/// The answer of `GET .../{ca_id}/csr`: the pending CA's CSR, PEM (with `\r\n` as sent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCsrResponse {
    pub csr: String,
}

/// The answer of `GET /v1/private-certificate-authorities/quotas`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaQuotaResponse {
    #[serde(default)]
    pub quotas: Quotas,
}

/// The body of `POST .../{ca_id}/revoke`: a reason, or `{}` (the service then records none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeCaRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RevocationReason>,
}

/// The answer of `GET .../obs/agencies`. Documented as the string `"true"`/`"false"`; a JSON
/// boolean is read too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObsAgencyResponse {
    #[serde(default)]
    pub agency_granted: Option<serde_json::Value>,
}

impl ObsAgencyResponse {
    /// Whether PCA holds the agency (`"true"` or `true`).
    pub fn granted(&self) -> bool {
        match &self.agency_granted {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }
}

/// The answer of `POST .../obs/agencies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateObsAgencyResponse {
    pub agency_id: String,
}

impl Client {
    /// One page of CAs.
    pub async fn pca_list_cas(&self, query: &ListCasQuery) -> Result<CaList, CloudError> {
        query.check()?;
        let req = Request::get(Service::Pca, "list_certificate_authority", CAS)
            .query_opt("limit", query.limit)
            .query_opt("offset", query.offset)
            .query_opt("name", query.name.as_deref())
            .query_opt("status", query.status.map(CaStatus::as_str))
            .query_opt("type", query.ca_type.map(CaType::as_str))
            .query_opt("sort_key", query.sort_key.map(CaSortKey::as_str))
            .query_opt("sort_dir", query.sort_dir.map(SortDir::as_str));
        self.call(req).await
    }

    /// Every CA matching `query`'s filters, walking the pages (`limit` is the page size, 1000
    /// when unset; `offset` is where to start). Stops at `total` or at the first short page.
    pub async fn pca_list_all_cas(
        &self,
        query: &ListCasQuery,
    ) -> Result<Vec<CertificateAuthority>, CloudError> {
        let page = match query.limit {
            Some(0) | None => MAX_PAGE_LIMIT,
            Some(l) => l.min(MAX_PAGE_LIMIT),
        };
        let mut offset = query.offset.unwrap_or(0);
        let mut all = Vec::new();
        loop {
            let q = ListCasQuery {
                limit: Some(page),
                offset: Some(offset),
                ..query.clone()
            };
            let got = self.pca_list_cas(&q).await?;
            let n = got.certificate_authorities.len();
            all.extend(got.certificate_authorities);
            offset = offset.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            if n == 0 || (n as u64) < u64::from(page) || u64::from(offset) >= got.total {
                return Ok(all);
            }
        }
    }

    /// Create a CA; returns its id. Not retried after an ambiguous failure (it creates).
    pub async fn pca_create_ca(&self, body: &CreateCaRequest) -> Result<String, CloudError> {
        body.check()?;
        let req = Request::post(Service::Pca, "create_certificate_authority", CAS).json(body)?;
        let got: CreateCaResponse = self.call(req).await?;
        Ok(got.ca_id)
    }

    /// The CA quota (`CERTIFICATE_AUTHORITY`: used and total).
    pub async fn pca_ca_quota(&self) -> Result<Quotas, CloudError> {
        let req = Request::get(
            Service::Pca,
            "show_certificate_authority_quota",
            format!("{CAS}/quotas"),
        );
        let got: CaQuotaResponse = self.call(req).await?;
        Ok(got.quotas)
    }

    /// Details of one CA.
    pub async fn pca_show_ca(&self, ca_id: &str) -> Result<CertificateAuthority, CloudError> {
        let req = Request::get(
            Service::Pca,
            "show_certificate_authority",
            ca_path(ca_id, None)?,
        );
        self.call(req).await
    }

    /// Delete a CA: a `DISABLED` one is scheduled for deletion in `pending_days` (7..=30) and
    /// can be restored meanwhile; a `PENDING` one is deleted at once.
    pub async fn pca_delete_ca(&self, ca_id: &str, pending_days: u32) -> Result<(), CloudError> {
        if !(MIN_PENDING_DAYS..=MAX_PENDING_DAYS).contains(&pending_days) {
            return Err(CloudError::Invalid(format!(
                "delete CA: pending_days {pending_days} is outside {MIN_PENDING_DAYS}..={MAX_PENDING_DAYS}"
            )));
        }
        let req = Request::delete(
            Service::Pca,
            "delete_certificate_authority",
            ca_path(ca_id, None)?,
        )
        .query("pending_days", pending_days);
        self.call_empty(req).await
    }

    /// The CSR of a `PENDING` CA, PEM with `\n`.
    pub async fn pca_export_ca_csr(&self, ca_id: &str) -> Result<String, CloudError> {
        let req = Request::get(
            Service::Pca,
            "show_certificate_authority_csr",
            ca_path(ca_id, Some("csr"))?,
        );
        let got: CaCsrResponse = self.call(req).await?;
        Ok(normalize_pem(&got.csr))
    }

    /// Disable an `ACTIVED` or `EXPIRED` CA.
    pub async fn pca_disable_ca(&self, ca_id: &str) -> Result<(), CloudError> {
        self.ca_action(ca_id, "disable", "disable_certificate_authority", None)
            .await
    }

    /// Enable a `DISABLED` CA.
    pub async fn pca_enable_ca(&self, ca_id: &str) -> Result<(), CloudError> {
        self.ca_action(ca_id, "enable", "enable_certificate_authority", None)
            .await
    }

    /// Restore a CA scheduled for deletion; it becomes `DISABLED`.
    pub async fn pca_restore_ca(&self, ca_id: &str) -> Result<(), CloudError> {
        self.ca_action(ca_id, "restore", "restore_certificate_authority", None)
            .await
    }

    /// Revoke a subordinate CA; `None` sends `{}` (reason `UNSPECIFIED`).
    pub async fn pca_revoke_ca(
        &self,
        ca_id: &str,
        reason: Option<RevocationReason>,
    ) -> Result<(), CloudError> {
        let body = serde_json::to_value(RevokeCaRequest { reason })
            .map_err(|e| CloudError::Invalid(format!("revoke CA: cannot encode: {e}")))?;
        self.ca_action(ca_id, "revoke", "revoke_certificate_authority", Some(body))
            .await
    }

    /// Activate a `PENDING` subordinate CA: its issuer signs its CSR.
    pub async fn pca_activate_ca(
        &self,
        ca_id: &str,
        body: &ActivateCaRequest,
    ) -> Result<(), CloudError> {
        validate_uuid("issuer_id", &body.issuer_id)?;
        check_path_length(body.path_length)?;
        let body = serde_json::to_value(body)
            .map_err(|e| CloudError::Invalid(format!("activate CA: cannot encode: {e}")))?;
        self.ca_action(
            ca_id,
            "activate",
            "activate_certificate_authority",
            Some(body),
        )
        .await
    }

    /// The CA certificate and its chain (`ACTIVED` or `EXPIRED` CAs), PEM with `\n`.
    pub async fn pca_export_ca_certificate(
        &self,
        ca_id: &str,
    ) -> Result<CaCertificate, CloudError> {
        let req = Request::post(
            Service::Pca,
            "export_certificate_authority_certificate",
            ca_path(ca_id, Some("export"))?,
        )
        .idempotent();
        let got: CaCertificate = self.call(req).await?;
        Ok(CaCertificate {
            certificate: normalize_pem(&got.certificate),
            certificate_chain: normalize_pem(&got.certificate_chain),
        })
    }

    /// Import the certificate issued (elsewhere) for a `PENDING` subordinate CA's CSR.
    pub async fn pca_import_ca_certificate(
        &self,
        ca_id: &str,
        body: &ImportCaCertificateRequest,
    ) -> Result<(), CloudError> {
        let body = serde_json::to_value(body)
            .map_err(|e| CloudError::Invalid(format!("import CA: cannot encode: {e}")))?;
        self.ca_action(
            ca_id,
            "import",
            "import_certificate_authority_certificate",
            Some(body),
        )
        .await
    }

    async fn ca_action(
        &self,
        ca_id: &str,
        action: &str,
        operation: &'static str,
        body: Option<serde_json::Value>,
    ) -> Result<(), CloudError> {
        let mut req = Request::post(Service::Pca, operation, ca_path(ca_id, Some(action))?)
            // A state change that already happened answers "not allowed in the current
            // status" on a repeat, which the caller can read: repeating is harmless.
            .idempotent();
        if let Some(b) = body {
            req = req.json(&b)?;
        }
        self.call_empty(req).await
    }

    /// Whether PCA holds the OBS agency it needs to publish CRLs.
    pub async fn pca_obs_agency_granted(&self) -> Result<bool, CloudError> {
        let req = Request::get(
            Service::Pca,
            "show_certificate_authority_obs_agency",
            format!("{CAS}/obs/agencies"),
        );
        let got: ObsAgencyResponse = self.call(req).await?;
        Ok(got.granted())
    }

    /// Create the OBS agency; returns the agency id.
    pub async fn pca_create_obs_agency(&self) -> Result<String, CloudError> {
        let req = Request::post(
            Service::Pca,
            "create_certificate_authority_obs_agency",
            format!("{CAS}/obs/agencies"),
        )
        .idempotent();
        let got: CreateObsAgencyResponse = self.call(req).await?;
        Ok(got.agency_id)
    }

    /// The OBS buckets CRLs may be published to (needs the agency).
    pub async fn pca_list_obs_buckets(&self) -> Result<ObsBucketList, CloudError> {
        let req = Request::get(
            Service::Pca,
            "list_certificate_authority_obs_bucket",
            format!("{CAS}/obs/buckets"),
        );
        self.call(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_check() {
        assert!(is_uuid("a6bbf0be-79f3-4f66-858a-0fdcb96dfcbe"));
        assert!(is_uuid("A6BBF0BE-79F3-4F66-858A-0FDCB96DFCBE"));
        assert!(!is_uuid("a6bbf0be79f34f66858a0fdcb96dfcbe"));
        assert!(!is_uuid("a6bbf0be-79f3-4f66-858a-0fdcb96dfcbg"));
        assert!(!is_uuid("../../etc/passwd-aaaaaaaaaaaaaaaaaaaaa"));
        assert!(matches!(
            validate_uuid("ca_id", "nope"),
            Err(CloudError::Invalid(m)) if m.contains("ca_id")
        ));
    }

    /// The list example of the API reference, verbatim.
    #[test]
    fn decodes_reference_list_example() {
        let body = r#"{
  "total" : 2,
  "certificate_authorities" : [ {
    "signature_algorithm" : "SHA384",
    "issuer_id" : null,
    "issuer_name" : null,
    "not_after" : 1678159435000,
    "not_before" : 1646623375000,
    "status" : "ACTIVED",
    "freeze_flag" : 0,
    "gen_mode" : "GENERATE",
    "serial_number" : "202203070322544291829058",
    "distinguished_name" : {
      "country" : "ru",
      "state" : "Moscow",
      "locality" : "Moscow",
      "organization" : "Moscow",
      "organizational_unit" : "Moscow",
      "common_name" : "CSR_123"
    },
    "key_algorithm" : "EC384",
    "create_time" : 1646623375000,
    "delete_time" : null,
    "ca_id" : "a6bbf0be-79f3-4f66-858a-0fdcb96dfcbe",
    "type" : "ROOT",
    "path_length" : 7,
    "crl_configuration" : {
      "enabled" : false,
      "obs_bucket_name" : null,
      "valid_days" : null,
      "crl_name" : null,
      "crl_dis_point" : null
    }
  } ]
}"#;
        let list: CaList = serde_json::from_str(body).expect("decodes");
        assert_eq!(list.total, 2);
        let ca = &list.certificate_authorities[0];
        assert_eq!(ca.status, CaStatus::Active);
        assert_eq!(ca.ca_type, CaType::Root);
        assert_eq!(ca.path_length, Some(7));
        assert_eq!(ca.common_name(), "CSR_123");
        assert_eq!(
            ca.not_after.map(crate::time::to_epoch_ms),
            Some(1_678_159_435_000)
        );
        assert!(ca.delete_time.is_none());
        assert!(!ca.crl_configuration.as_ref().expect("crl").enabled);
    }

    /// The details example of the newer CA-details page, with its extra `cluster_id` and the
    /// bare `RSA` key algorithm, plus a field this client has never heard of.
    #[test]
    fn decodes_details_example_with_unknowns() {
        let body = r#"{
  "signature_algorithm" : "SHA384", "issuer_id" : "928bd666-e879-448a-ab54-82f6ae3d81e0",
  "issuer_name" : "Huawei IT Root CA", "not_after" : 1647567892000, "not_before" : 1645148632000,
  "status" : "FROZEN_SOMEHOW", "freeze_flag" : 0, "gen_mode" : "CSR",
  "serial_number" : "202202180143522338893611",
  "distinguished_name" : null,
  "key_algorithm" : "RSA", "create_time" : 1645148633000, "delete_time" : null,
  "ca_id" : "4c0e772e-a30c-4029-b929-b7acb04143f7", "type" : "SUBORDINATE", "path_length" : 0,
  "crl_configuration" : null, "cluster_id" : "54d8301b-b859-4c55-a628-21fcf90e609e",
  "brand_new_field": [1, 2]
}"#;
        let ca: CertificateAuthority = serde_json::from_str(body).expect("decodes");
        assert_eq!(ca.status, CaStatus::Unknown);
        assert_eq!(ca.ca_type, CaType::Subordinate);
        assert_eq!(ca.key_algorithm.as_deref(), Some("RSA"));
        assert_eq!(ca.distinguished_name, DistinguishedName::default());
        assert!(ca.crl_configuration.is_none());
    }

    #[test]
    fn create_request_wire_form() {
        let dn = DistinguishedName {
            common_name: Some("demoRootRSA".into()),
            country: Some("RU".into()),
            ..Default::default()
        };
        let r = CreateCaRequest::root(
            dn.clone(),
            KeyAlgorithm::Rsa4096,
            SignatureAlgorithm::Sha512,
            Validity::years(3),
        );
        let v = serde_json::to_value(&r).expect("encode");
        assert_eq!(v["type"], "ROOT");
        assert_eq!(v["key_algorithm"], "RSA4096");
        assert_eq!(v["signature_algorithm"], "SHA512");
        assert_eq!(v["validity"]["type"], "YEAR");
        assert!(v.get("issuer_id").is_none());
        let p = CreateCaRequest::pending_subordinate(dn, KeyAlgorithm::Ec256)
            .with_key_usages(vec![KeyUsage::CrlSign, KeyUsage::KeyCertSign]);
        let v = serde_json::to_value(&p).expect("encode");
        assert_eq!(v["type"], "SUBORDINATE");
        assert!(v.get("validity").is_none() && v.get("signature_algorithm").is_none());
        assert_eq!(v["key_usages"][0], "cRLSign");
        assert_eq!(
            serde_json::to_value(RevocationReason::CertificateAuthorityCompromise).expect("enc"),
            "CERTIFICATE_AUTHORITY_COMPROMISE"
        );
    }

    #[test]
    fn decodes_quota_and_buckets_examples() {
        let q: CaQuotaResponse = serde_json::from_str(
            r#"{"quotas":{"resources":[{"type":"CERTIFICATE_AUTHORITY","used":25,"quota":100}]}}"#,
        )
        .expect("quota");
        let r = q.quotas.get("CERTIFICATE_AUTHORITY").expect("ca quota");
        assert_eq!((r.used, r.quota), (25, 100));
        let b: ObsBucketList = serde_json::from_str(
            r#"{"total":2,"obs_buckets":[{"create_time":1554867690718,"bucket_name":"admin1"},{"create_time":1554949519646,"bucket_name":"admin3"}]}"#,
        )
        .expect("buckets");
        assert_eq!(b.obs_buckets[1].bucket_name, "admin3");
    }
}
