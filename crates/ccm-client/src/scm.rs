//! SCM v3 (SSL Certificate Manager): list, import, show, delete, export, push, batch-push and
//! deploy SSL certificates, as methods on [`Client`] prefixed `scm_`.
//!
//! Serde names match the API reference (sections 4.1.1.x / 4.1.2.x) and the official SDK models.
//! Time strings (`"2021-05-27 16:46:25.0"`) are parsed into `OffsetDateTime` at this boundary;
//! exported PEMs are normalised from `\r\n` to `\n`. Private keys never show in `Debug`.
//!
//! # Paging
//! `offset` is read as a *record* offset (skip this many records), as the reference's "Query
//! offset" and the SDK's "偏移量" say, and as the Huawei Terraform provider pages it. The
//! reference caps it at 100, so one query reaches at most the first 150 records (offset 100,
//! limit 50); [`Client::scm_list_all_certificates`] says so with [`CloudError::Invalid`] instead
//! of silently returning a partial list. Narrow such queries with `content` (a name or domain
//! keyword) or `expired_days_since`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use super::time::{normalize_pem, scm_time_opt};
use super::{Client, CloudError, Request, Secret, Service};

/// Page sizes the list call accepts.
pub const LIST_LIMITS: [u32; 3] = [10, 20, 50];
/// The largest `offset` the list call accepts.
pub const MAX_LIST_OFFSET: u32 = 100;
/// The largest `expired_days_since` the list call accepts.
pub const MAX_EXPIRED_DAYS_SINCE: u32 = 1095;
/// Regions per batch-push call.
pub const MAX_BATCH_PUSH_REGIONS: usize = 10;
/// Resources per deploy call.
pub const MAX_DEPLOY_RESOURCES: usize = 20;
/// The batch-push `message` of a region that succeeded.
pub const PUSH_SUCCESS: &str = "success";

/// `sort_dir` of the list call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortDir {
    #[serde(rename = "ASC")]
    Asc,
    #[serde(rename = "DESC")]
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

/// `sort_key` of the list call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortKey {
    #[serde(rename = "certExpiredTime")]
    CertExpiredTime,
    #[serde(rename = "certStatus")]
    CertStatus,
    #[serde(rename = "certUpdateTime")]
    CertUpdateTime,
}

impl SortKey {
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::CertExpiredTime => "certExpiredTime",
            SortKey::CertStatus => "certStatus",
            SortKey::CertUpdateTime => "certUpdateTime",
        }
    }
}

/// `status` filter of the list call (the reference's three values; the SDK lists more states
/// of purchased certificates, which imported ones never have).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusFilter {
    #[serde(rename = "ALL")]
    All,
    #[serde(rename = "EXPIRED")]
    Expired,
    #[serde(rename = "UPLOAD")]
    Upload,
}

impl StatusFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::All => "ALL",
            StatusFilter::Expired => "EXPIRED",
            StatusFilter::Upload => "UPLOAD",
        }
    }
}

/// Query of `GET /v3/scm/certificates`. Unset fields are not sent (the service defaults apply:
/// limit 10, offset 0, DESC by certUpdateTime, status ALL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCertificatesQuery {
    /// 10, 20 or 50.
    pub limit: Option<u32>,
    /// Records to skip, 0..=100.
    pub offset: Option<u32>,
    pub sort_dir: Option<SortDir>,
    pub sort_key: Option<SortKey>,
    pub status: Option<StatusFilter>,
    /// `all`, `0`, or an enterprise project UUID.
    pub enterprise_project_id: Option<String>,
    /// Only certificates that can be deployed.
    pub deploy_support: Option<bool>,
    pub owned_by_self: Option<bool>,
    /// Certificates still valid or expired at most this many days ago (0..=1095).
    pub expired_days_since: Option<u32>,
    /// A keyword matched against certificate names and domains.
    pub content: Option<String>,
}

impl ListCertificatesQuery {
    /// Check the documented limits before sending.
    pub fn validate(&self) -> Result<(), CloudError> {
        if let Some(limit) = self.limit
            && !LIST_LIMITS.contains(&limit)
        {
            return Err(CloudError::Invalid(format!(
                "scm list_certificates: limit {limit} is not one of 10, 20, 50"
            )));
        }
        if let Some(offset) = self.offset
            && offset > MAX_LIST_OFFSET
        {
            return Err(CloudError::Invalid(format!(
                "scm list_certificates: offset {offset} is above {MAX_LIST_OFFSET}"
            )));
        }
        if let Some(days) = self.expired_days_since
            && days > MAX_EXPIRED_DAYS_SINCE
        {
            return Err(CloudError::Invalid(format!(
                "scm list_certificates: expired_days_since {days} is above {MAX_EXPIRED_DAYS_SINCE}"
            )));
        }
        Ok(())
    }

    fn apply(&self, req: Request) -> Request {
        req.query_opt("limit", self.limit)
            .query_opt("offset", self.offset)
            .query_opt("sort_dir", self.sort_dir.map(SortDir::as_str))
            .query_opt("sort_key", self.sort_key.map(SortKey::as_str))
            .query_opt("status", self.status.map(StatusFilter::as_str))
            .query_opt(
                "enterprise_project_id",
                self.enterprise_project_id.as_deref(),
            )
            .query_opt("deploy_support", self.deploy_support)
            .query_opt("owned_by_self", self.owned_by_self)
            .query_opt("expired_days_since", self.expired_days_since)
            .query_opt("content", self.content.as_deref())
    }
}

/// One certificate of a list (`CertificateDetail` in the reference).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSummary {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default)]
    pub domain: Option<String>,
    /// Additional domains joined with `;` (see [`CertificateSummary::sans_list`]).
    #[serde(default)]
    pub sans: Option<String>,
    #[serde(default)]
    pub signature_algorithm: Option<String>,
    #[serde(default)]
    pub deploy_support: Option<bool>,
    #[serde(default, rename = "type")]
    pub cert_type: Option<String>,
    #[serde(default)]
    pub brand: Option<String>,
    #[serde(default, with = "scm_time_opt")]
    pub expire_time: Option<OffsetDateTime>,
    #[serde(default)]
    pub domain_type: Option<String>,
    #[serde(default)]
    pub validity_period: Option<i64>,
    /// `UPLOAD` (managed) or `EXPIRED` for imported certificates.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub domain_count: Option<i64>,
    #[serde(default)]
    pub wildcard_count: Option<i64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub domain_id: Option<String>,
    #[serde(default)]
    pub enterprise_project_id: Option<String>,
}

impl CertificateSummary {
    /// The additional domains, split on `;`.
    pub fn sans_list(&self) -> Vec<String> {
        split_sans(self.sans.as_deref())
    }

    pub fn is_expired(&self) -> bool {
        self.status.as_deref() == Some("EXPIRED")
    }
}

/// Response of the list call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCertificatesResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub certificates: Vec<CertificateSummary>,
    #[serde(default, deserialize_with = "null_default")]
    pub total_count: u64,
}

/// Body of `POST /v3/scm/certificates/import`.
#[derive(Clone, Serialize, Deserialize)]
pub struct ImportCertificateRequest {
    /// 3..63 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// The certificate PEM (≤ 4096 characters); may carry the chain after it when
    /// `certificate_chain` is not given.
    pub certificate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<String>,
    /// Unencrypted private key PEM (≤ 4096 characters).
    #[serde(serialize_with = "ser_secret", deserialize_with = "de_secret")]
    pub private_key: Secret,
    /// `true` refuses a certificate already held by the account (see the emulator docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_check: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise_project_id: Option<String>,
}

impl ImportCertificateRequest {
    pub fn new(
        name: impl Into<String>,
        certificate: impl Into<String>,
        private_key: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            certificate: certificate.into(),
            certificate_chain: None,
            private_key: Secret::new(private_key.into()),
            duplicate_check: None,
            enterprise_project_id: None,
        }
    }

    pub fn chain(mut self, chain: impl Into<String>) -> Self {
        self.certificate_chain = Some(chain.into());
        self
    }

    /// Check the name rule and the documented lengths before sending.
    pub fn validate(&self) -> Result<(), CloudError> {
        if !valid_name(&self.name) {
            return Err(CloudError::Invalid(format!(
                "scm import_certificate: name {:?} must be 3 to 63 characters of letters, digits, '_', '-', '.'",
                self.name
            )));
        }
        let limits = [
            ("certificate", self.certificate.len(), 4096),
            (
                "certificate_chain",
                self.certificate_chain.as_deref().map_or(0, str::len),
                8192,
            ),
            ("private_key", self.private_key.expose().len(), 4096),
        ];
        for (field, len, max) in limits {
            if len > max {
                return Err(CloudError::Invalid(format!(
                    "scm import_certificate: {field} is {len} characters, more than {max}"
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ImportCertificateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportCertificateRequest")
            .field("name", &self.name)
            .field("certificate_len", &self.certificate.len())
            .field(
                "certificate_chain_len",
                &self.certificate_chain.as_ref().map(String::len),
            )
            .field("private_key", &self.private_key)
            .field("duplicate_check", &self.duplicate_check)
            .field("enterprise_project_id", &self.enterprise_project_id)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCertificateResponse {
    pub certificate_id: String,
}

/// Certificate application information (purchased certificates only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationInfo {
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub company_province: Option<String>,
    #[serde(default)]
    pub company_city: Option<String>,
    #[serde(default)]
    pub applicant_name: Option<String>,
    #[serde(default)]
    pub applicant_phone: Option<String>,
    #[serde(default)]
    pub applicant_email: Option<String>,
    #[serde(default)]
    pub contact_name: Option<String>,
    #[serde(default)]
    pub contact_phone: Option<String>,
    #[serde(default)]
    pub contact_email: Option<String>,
}

/// Domain ownership verification record (`Authentification`, the API's spelling).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authentification {
    #[serde(default)]
    pub record_name: Option<String>,
    #[serde(default)]
    pub record_type: Option<String>,
    #[serde(default)]
    pub record_value: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
}

/// Response of `GET /v3/scm/certificates/{certificate_id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateDetail {
    pub id: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub order_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, rename = "type")]
    pub cert_type: Option<String>,
    #[serde(default)]
    pub brand: Option<String>,
    /// `ON` or `OFF`.
    #[serde(default)]
    pub push_support: Option<String>,
    #[serde(default)]
    pub revoke_reason: Option<String>,
    #[serde(default)]
    pub signature_algorithm: Option<String>,
    #[serde(default, with = "scm_time_opt")]
    pub issue_time: Option<OffsetDateTime>,
    #[serde(default, with = "scm_time_opt")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(default, with = "scm_time_opt")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(default)]
    pub validity_period: Option<i64>,
    #[serde(default)]
    pub validation_method: Option<String>,
    #[serde(default)]
    pub domain_type: Option<String>,
    #[serde(default)]
    pub multi_domain_type: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub sans: Option<String>,
    #[serde(default)]
    pub domain_count: Option<i64>,
    #[serde(default)]
    pub wildcard_count: Option<i64>,
    /// SHA-1 fingerprint, hex.
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub shared: Option<bool>,
    #[serde(default)]
    pub application_info: Option<ApplicationInfo>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enterprise_project_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub authentification: Vec<Authentification>,
}

impl CertificateDetail {
    pub fn sans_list(&self) -> Vec<String> {
        split_sans(self.sans.as_deref())
    }
}

/// Response of `POST /v3/scm/certificates/{certificate_id}/export`, PEMs normalised to `\n`.
#[derive(Clone, PartialEq, Eq)]
pub struct ExportedCertificate {
    /// Certificate followed by the chain.
    pub entire_certificate: String,
    pub certificate: String,
    pub certificate_chain: String,
    pub private_key: Secret,
}

impl std::fmt::Debug for ExportedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedCertificate")
            .field("certificate", &self.certificate)
            .field("certificate_chain", &self.certificate_chain)
            .field("private_key", &self.private_key)
            .finish_non_exhaustive()
    }
}

/// The body of the export answer as sent (PEMs with `\r\n`); [`ExportedCertificate`] is what
/// [`Client::scm_export_certificate`] makes of it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCertificateResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub entire_certificate: String,
    #[serde(default, deserialize_with = "null_default")]
    pub certificate: String,
    #[serde(default, deserialize_with = "null_default")]
    pub certificate_chain: String,
    #[serde(
        default,
        serialize_with = "ser_secret",
        deserialize_with = "de_secret_or_null"
    )]
    pub private_key: Secret,
}

impl std::fmt::Debug for ExportCertificateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportCertificateResponse")
            .field("certificate", &self.certificate)
            .field("certificate_chain", &self.certificate_chain)
            .field("private_key", &self.private_key)
            .finish_non_exhaustive()
    }
}

impl From<ExportCertificateResponse> for ExportedCertificate {
    fn from(wire: ExportCertificateResponse) -> Self {
        Self {
            entire_certificate: normalize_pem(&wire.entire_certificate),
            certificate: normalize_pem(&wire.certificate),
            certificate_chain: normalize_pem(&wire.certificate_chain),
            private_key: Secret::new(normalize_pem(wire.private_key.expose())),
        }
    }
}

/// Where a certificate can be pushed or deployed. Sent in upper case, as the tables write it;
/// read in either case, as the reference's push examples write `"waf"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TargetService {
    #[serde(rename = "ELB", alias = "elb", alias = "Elb")]
    Elb,
    #[serde(rename = "WAF", alias = "waf", alias = "Waf")]
    Waf,
}

impl TargetService {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetService::Elb => "ELB",
            TargetService::Waf => "WAF",
        }
    }
}

impl std::str::FromStr for TargetService {
    type Err = CloudError;
    fn from_str(s: &str) -> Result<Self, CloudError> {
        match s.to_ascii_uppercase().as_str() {
            "ELB" => Ok(TargetService::Elb),
            "WAF" => Ok(TargetService::Waf),
            _ => Err(CloudError::Invalid(format!(
                "target service {s:?} is not ELB or WAF"
            ))),
        }
    }
}

/// Body of `POST .../push`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushCertificateRequest {
    /// The region, e.g. `ap-southeast-1`.
    pub target_project: String,
    pub target_service: TargetService,
}

/// Body of `POST .../batch-push`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPushCertificateRequest {
    /// 1..=10 regions.
    pub target_projects: Vec<String>,
    pub target_service: TargetService,
}

/// One region's outcome of a batch push.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPushResult {
    #[serde(default, deserialize_with = "null_default")]
    pub project_name: String,
    #[serde(default)]
    pub cert_id: Option<String>,
    /// `success`, or why the push to this region failed.
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
}

impl BatchPushResult {
    pub fn succeeded(&self) -> bool {
        self.message.eq_ignore_ascii_case(PUSH_SUCCESS)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPushCertificateResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub results: Vec<BatchPushResult>,
}

impl BatchPushCertificateResponse {
    /// Regions whose push failed, with the message.
    pub fn failures(&self) -> impl Iterator<Item = &BatchPushResult> {
        self.results.iter().filter(|r| !r.succeeded())
    }
}

/// A resource to deploy to (`DeployedResource`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedResource {
    /// Required for ELB and WAF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// WAF only: `cloud` or `premium`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// CDN only (in the SDK model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    /// WAF only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise_project_id: Option<String>,
}

impl DeployedResource {
    /// An ELB listener/certificate resource.
    pub fn elb(id: impl Into<String>) -> Self {
        Self {
            id: Some(id.into()),
            ..Self::default()
        }
    }

    /// A WAF instance: `resource_type` is `cloud` or `premium`.
    pub fn waf(
        id: impl Into<String>,
        resource_type: impl Into<String>,
        enterprise_project_id: impl Into<String>,
    ) -> Self {
        Self {
            id: Some(id.into()),
            resource_type: Some(resource_type.into()),
            domain_name: None,
            enterprise_project_id: Some(enterprise_project_id.into()),
        }
    }
}

/// Body of `POST .../deploy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCertificateRequest {
    /// The project (main project = region id) of the resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
    pub service_name: TargetService,
    /// 1..=20 resources.
    pub resources: Vec<DeployedResource>,
}

/// A resource that failed to deploy (`FaiureResource`, the API's spelling).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureResource {
    #[serde(default, deserialize_with = "null_default")]
    pub resource: String,
    /// Usually the target service's error code and message, e.g. `ELB.8904:...`.
    #[serde(default, deserialize_with = "null_default")]
    pub failure_info: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCertificateResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub failure_list: Vec<FailureResource>,
}

/// Whether an error says the certificate does not exist (an unknown or malformed id).
pub fn is_not_found(err: &CloudError) -> bool {
    err.status() == Some(404) || matches!(err.code(), Some("SCM.0008" | "SCM.0020" | "SCM.0094"))
}

/// Whether `name` follows the import rule: 3..=63 of `[A-Za-z0-9_.-]`.
pub fn valid_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Client {
    /// `GET /v3/scm/certificates`: one page.
    pub async fn scm_list_certificates(
        &self,
        q: &ListCertificatesQuery,
    ) -> Result<ListCertificatesResponse, CloudError> {
        q.validate()?;
        let req = q.apply(Request::get(
            Service::Scm,
            "list_certificates",
            "/v3/scm/certificates",
        ));
        self.call(req).await
    }

    /// Every certificate matching `q`, walking pages of 50 (or `q.limit`) by record offset.
    /// `q.offset` is ignored. Fails with [`CloudError::Invalid`] when more certificates match
    /// than offset ≤ 100 can reach, instead of returning a partial list.
    pub async fn scm_list_all_certificates(
        &self,
        q: &ListCertificatesQuery,
    ) -> Result<Vec<CertificateSummary>, CloudError> {
        let limit = q.limit.unwrap_or(50);
        let mut page_q = ListCertificatesQuery {
            limit: Some(limit),
            ..q.clone()
        };
        let mut all: Vec<CertificateSummary> = Vec::new();
        let mut offset: u32 = 0;
        loop {
            page_q.offset = Some(offset);
            let page = self.scm_list_certificates(&page_q).await?;
            let got = u32::try_from(page.certificates.len()).unwrap_or(u32::MAX);
            for c in page.certificates {
                // A certificate imported between two pages shifts the rest by one: skip repeats.
                if !all.iter().any(|seen| seen.id == c.id) {
                    all.push(c);
                }
            }
            let total = page.total_count;
            if got == 0 || u64::try_from(all.len()).unwrap_or(u64::MAX) >= total {
                return Ok(all);
            }
            let next = offset.saturating_add(got);
            if next > MAX_LIST_OFFSET {
                return Err(CloudError::Invalid(format!(
                    "scm list_certificates: {total} certificates match, but paging by offset \
                     (at most {MAX_LIST_OFFSET}) reaches only the first {}; narrow the query \
                     (content, expired_days_since, status)",
                    MAX_LIST_OFFSET + limit
                )));
            }
            offset = next;
        }
    }

    /// `POST /v3/scm/certificates/import`: creates a certificate; returns its id.
    pub async fn scm_import_certificate(
        &self,
        body: &ImportCertificateRequest,
    ) -> Result<ImportCertificateResponse, CloudError> {
        body.validate()?;
        let req = Request::post(
            Service::Scm,
            "import_certificate",
            "/v3/scm/certificates/import",
        )
        .json(body)?;
        self.call(req).await
    }

    /// `GET /v3/scm/certificates/{certificate_id}`.
    pub async fn scm_show_certificate(
        &self,
        certificate_id: &str,
    ) -> Result<CertificateDetail, CloudError> {
        let path = cert_path(certificate_id, "")?;
        self.call(Request::get(Service::Scm, "show_certificate", path))
            .await
    }

    /// `DELETE /v3/scm/certificates/{certificate_id}` (204).
    pub async fn scm_delete_certificate(&self, certificate_id: &str) -> Result<(), CloudError> {
        let path = cert_path(certificate_id, "")?;
        self.call_empty(Request::delete(Service::Scm, "delete_certificate", path))
            .await
    }

    /// `POST /v3/scm/certificates/{certificate_id}/export`, PEMs normalised to `\n`.
    pub async fn scm_export_certificate(
        &self,
        certificate_id: &str,
    ) -> Result<ExportedCertificate, CloudError> {
        let path = cert_path(certificate_id, "/export")?;
        let wire: ExportCertificateResponse = self
            .call(Request::post(Service::Scm, "export_certificate", path).idempotent())
            .await?;
        Ok(wire.into())
    }

    /// `POST /v3/scm/certificates/{certificate_id}/push` to one region (204).
    pub async fn scm_push_certificate(
        &self,
        certificate_id: &str,
        body: &PushCertificateRequest,
    ) -> Result<(), CloudError> {
        if body.target_project.is_empty() {
            return Err(CloudError::Invalid(
                "scm push_certificate: target_project is empty".into(),
            ));
        }
        let path = cert_path(certificate_id, "/push")?;
        let req = Request::post(Service::Scm, "push_certificate", path)
            .json(body)?
            .idempotent();
        self.call_empty(req).await
    }

    /// `POST /v3/scm/certificates/{certificate_id}/batch-push` to 1..=10 regions.
    pub async fn scm_batch_push_certificate(
        &self,
        certificate_id: &str,
        body: &BatchPushCertificateRequest,
    ) -> Result<BatchPushCertificateResponse, CloudError> {
        let n = body.target_projects.len();
        if !(1..=MAX_BATCH_PUSH_REGIONS).contains(&n) {
            return Err(CloudError::Invalid(format!(
                "scm batch_push_certificate: {n} regions; one call takes 1 to {MAX_BATCH_PUSH_REGIONS} \
                 (use scm_batch_push_chunked)"
            )));
        }
        let path = cert_path(certificate_id, "/batch-push")?;
        let req = Request::post(Service::Scm, "batch_push_certificate", path)
            .json(body)?
            .idempotent();
        self.call(req).await
    }

    /// Batch-push to any number of regions in calls of at most 10, merging the results in
    /// order. Repeated regions are pushed once. A chunk whose whole call fails adds one failed
    /// result per region of that chunk (message `error: ...`) and the remaining chunks still
    /// run, so the caller always sees every region's outcome.
    pub async fn scm_batch_push_chunked(
        &self,
        certificate_id: &str,
        regions: &[String],
        service: TargetService,
    ) -> Result<BatchPushCertificateResponse, CloudError> {
        let regions = dedup(regions.iter().cloned());
        if regions.is_empty() {
            return Err(CloudError::Invalid(
                "scm batch_push_certificate: no regions".into(),
            ));
        }
        cert_path(certificate_id, "")?;
        let mut merged = BatchPushCertificateResponse::default();
        for chunk in regions.chunks(MAX_BATCH_PUSH_REGIONS) {
            let body = BatchPushCertificateRequest {
                target_projects: chunk.to_vec(),
                target_service: service,
            };
            match self.scm_batch_push_certificate(certificate_id, &body).await {
                Ok(resp) => merged.results.extend(resp.results),
                Err(e) => merged
                    .results
                    .extend(chunk.iter().map(|region| BatchPushResult {
                        project_name: region.clone(),
                        cert_id: Some(certificate_id.to_owned()),
                        message: format!("error: {e}"),
                    })),
            }
        }
        Ok(merged)
    }

    /// `POST /v3/scm/certificates/{certificate_id}/deploy` to 1..=20 resources.
    pub async fn scm_deploy_certificate(
        &self,
        certificate_id: &str,
        body: &DeployCertificateRequest,
    ) -> Result<DeployCertificateResponse, CloudError> {
        let n = body.resources.len();
        if !(1..=MAX_DEPLOY_RESOURCES).contains(&n) {
            return Err(CloudError::Invalid(format!(
                "scm deploy_certificate: {n} resources; one call takes 1 to {MAX_DEPLOY_RESOURCES} \
                 (use scm_deploy_chunked)"
            )));
        }
        let path = cert_path(certificate_id, "/deploy")?;
        let req = Request::post(Service::Scm, "deploy_certificate", path)
            .json(body)?
            .idempotent();
        self.call(req).await
    }

    /// Deploy to any number of resources in calls of at most 20, merging the failure lists.
    /// Repeated resources (same id) are deployed once. A chunk whose whole call fails adds one
    /// failure per resource of that chunk (`failure_info` = the error) and the rest still run.
    pub async fn scm_deploy_chunked(
        &self,
        certificate_id: &str,
        project_name: Option<&str>,
        service: TargetService,
        resources: &[DeployedResource],
    ) -> Result<DeployCertificateResponse, CloudError> {
        let mut unique: Vec<DeployedResource> = Vec::with_capacity(resources.len());
        for r in resources {
            if r.id.is_none() || !unique.iter().any(|u| u.id == r.id) {
                unique.push(r.clone());
            }
        }
        if unique.is_empty() {
            return Err(CloudError::Invalid(
                "scm deploy_certificate: no resources".into(),
            ));
        }
        cert_path(certificate_id, "")?;
        let mut merged = DeployCertificateResponse::default();
        for chunk in unique.chunks(MAX_DEPLOY_RESOURCES) {
            let body = DeployCertificateRequest {
                project_name: project_name.map(str::to_owned),
                service_name: service,
                resources: chunk.to_vec(),
            };
            match self.scm_deploy_certificate(certificate_id, &body).await {
                Ok(resp) => merged.failure_list.extend(resp.failure_list),
                Err(e) => merged
                    .failure_list
                    .extend(chunk.iter().map(|r| FailureResource {
                        resource: r.id.clone().unwrap_or_default(),
                        failure_info: format!("error: {e}"),
                    })),
            }
        }
        Ok(merged)
    }
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// `/v3/scm/certificates/{id}{suffix}`, refusing ids that are not plain letters and digits
/// (an id is put in the path unescaped).
fn cert_path(certificate_id: &str, suffix: &str) -> Result<String, CloudError> {
    let ok = !certificate_id.is_empty()
        && certificate_id.len() <= 64
        && certificate_id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok {
        return Err(CloudError::Invalid(format!(
            "SCM certificate id {certificate_id:?} is not an id (letters and digits, like scs1554192131150)"
        )));
    }
    Ok(format!("/v3/scm/certificates/{certificate_id}{suffix}"))
}

fn split_sans(s: Option<&str>) -> Vec<String> {
    s.unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn ser_secret<S: Serializer>(v: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.expose())
}

fn de_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(String::deserialize(d)?))
}

fn de_secret_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(
        Option::<String>::deserialize(d)?.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_example_from_reference_decodes() {
        let body = r#"{
          "certificates" : [ {
            "id" : "scs1554192131150", "name" : "test", "domain" : "www.zx.com",
            "sans" : "a.zx.com;b.zx.com", "type" : null, "deploy_support" : true,
            "signature_algorithm" : "SHA256WITHRSA", "brand" : null,
            "expire_time" : "2021-05-27 16:46:25.0", "domain_type" : null,
            "validity_period" : 12, "status" : "UPLOAD", "domain_count" : 2,
            "wildcard_count" : 0, "description" : null
          } ],
          "total_count" : 1
        }"#;
        let r: ListCertificatesResponse = serde_json::from_str(body).expect("decode");
        assert_eq!(r.total_count, 1);
        let c = &r.certificates[0];
        assert_eq!(c.sans_list(), vec!["a.zx.com", "b.zx.com"]);
        assert_eq!(
            c.expire_time.map(OffsetDateTime::unix_timestamp),
            Some(1_622_133_985)
        );
        assert!(!c.is_expired());
    }

    #[test]
    fn detail_example_from_reference_decodes() {
        let body = r#"{
          "id" : "scs1590053258704", "order_id" : "CS20052117270N7V9", "name" : "scm-testing",
          "type" : null, "brand" : null, "push_support" : "OFF", "revoke_reason" : null,
          "status" : "UPLOAD", "signature_algorithm" : null, "issue_time" : null,
          "not_before" : null, "not_after" : null, "validity_period" : 12,
          "validation_method" :null, "domain_type" : null, "multi_domain_type" : null,
          "domain" : "hosting-******.test.cn", "sans" : null, "domain_count" : 1,
          "wildcard_count" : 0, "fingerprint" : "185d687de3f44f2249d0e0f084efccb56b7c2cbe",
          "enterprise_project_id" : "0"
        }"#;
        let d: CertificateDetail = serde_json::from_str(body).expect("decode");
        assert_eq!(d.not_after, None);
        assert!(d.sans_list().is_empty());
        assert_eq!(d.push_support.as_deref(), Some("OFF"));
    }

    #[test]
    fn batch_push_and_deploy_examples_decode() {
        let r: BatchPushCertificateResponse = serde_json::from_str(
            r#"{"results":[{"project_name":"my-kualalumpur-1","cert_id":"scs16751254852691","message":"success"}]}"#,
        )
        .expect("decode");
        assert!(r.results[0].succeeded());
        assert_eq!(r.failures().count(), 0);
        let d: DeployCertificateResponse = serde_json::from_str(
            r#"{"failure_list":[{"resource":"982b8a6a6ebc43809d82a46ca99aaeb7","failure_info":"ELB.8904:certificate 982b8a6a6ebc43809d82a46ca99aaeb7 does not exist"}]}"#,
        )
        .expect("decode");
        assert_eq!(
            d.failure_list[0].resource,
            "982b8a6a6ebc43809d82a46ca99aaeb7"
        );
        let empty: DeployCertificateResponse =
            serde_json::from_str(r#"{"failure_list":null}"#).expect("decode");
        assert!(empty.failure_list.is_empty());
    }

    #[test]
    fn requests_encode_like_the_reference() {
        let body = DeployCertificateRequest {
            project_name: Some("my-kualalumpur-1".into()),
            service_name: TargetService::Elb,
            resources: vec![DeployedResource::elb("982b8a6a6ebc43809d82a46ca99aaeb7")],
        };
        assert_eq!(
            serde_json::to_value(&body).expect("encode"),
            serde_json::json!({"service_name":"ELB","project_name":"my-kualalumpur-1",
                "resources":[{"id":"982b8a6a6ebc43809d82a46ca99aaeb7"}]})
        );
        let imp = ImportCertificateRequest::new("test_cert", "CERT", "KEY");
        let v = serde_json::to_value(&imp).expect("encode");
        assert_eq!(v["private_key"], "KEY");
        assert!(v.get("certificate_chain").is_none());
        assert!(
            !format!("{imp:?}").contains("KEY"),
            "key must not show in Debug"
        );
    }

    #[test]
    fn client_side_validation() {
        let q = ListCertificatesQuery {
            limit: Some(15),
            ..Default::default()
        };
        assert!(matches!(q.validate(), Err(CloudError::Invalid(_))));
        let q = ListCertificatesQuery {
            offset: Some(101),
            ..Default::default()
        };
        assert!(q.validate().is_err());
        let q = ListCertificatesQuery {
            expired_days_since: Some(1096),
            ..Default::default()
        };
        assert!(q.validate().is_err());
        assert!(valid_name("a.b-c_1"));
        assert!(!valid_name("ab"));
        assert!(!valid_name("bad name"));
        assert!(cert_path("scs1554192131150", "/export").is_ok());
        assert!(cert_path("../x", "").is_err());
        assert!(
            ImportCertificateRequest::new("ok-name", "x".repeat(4097), "k")
                .validate()
                .is_err()
        );
    }
}
