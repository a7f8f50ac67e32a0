//! SCM certificate lifecycle handlers: list, import, show, delete, export.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ScmCertRecord, bad, bad_param, find_cert, from_unix, valid_enterprise_project_id};
use crate::emulator::wire::scm_time as format_scm_time;
use crate::emulator::{ApiError, Shared, parse_json};

/// Status values the list call accepts (the reference's three plus the SDK's states of purchased
/// certificates, which imported ones never have).
const LIST_STATUSES: &[&str] = &[
    "ALL",
    "PAID",
    "ISSUED",
    "CHECKING",
    "CANCELCHECKING",
    "UNPASSED",
    "EXPIRED",
    "REVOKING",
    "REVOKED",
    "UPLOAD",
    "CHECKING_ORG",
    "ISSUING",
    "SUPPLEMENTCHECKING",
];

/// The validated list query.
struct ListQuery {
    limit: usize,
    offset: usize,
    ascending: bool,
    sort_key: String,
    status: String,
    enterprise_project_id: Option<String>,
    deploy_support: bool,
    expired_days_since: Option<i64>,
    content: Option<String>,
}

fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        limit: 10,
        offset: 0,
        ascending: false,
        sort_key: "certUpdateTime".into(),
        status: "ALL".into(),
        enterprise_project_id: None,
        deploy_support: false,
        expired_days_since: None,
        content: None,
    };
    let int = |k: &str, v: &str| -> Result<i64, ApiError> {
        v.trim()
            .parse::<i64>()
            .map_err(|_| bad_param(format!("{k} must be an integer, got {v:?}")))
    };
    let boolean = |k: &str, v: &str| -> Result<bool, ApiError> {
        match v.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad_param(format!("{k} must be true or false, got {v:?}"))),
        }
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => {
                let n = int("limit", &v)?;
                if ![10, 20, 50].contains(&n) {
                    return Err(bad_param(format!("limit must be 10, 20 or 50, got {n}")));
                }
                q.limit = n as usize;
            }
            "offset" => {
                let n = int("offset", &v)?;
                if !(0..=100).contains(&n) {
                    return Err(bad_param(format!("offset must be 0 to 100, got {n}")));
                }
                q.offset = n as usize;
            }
            "sort_dir" => {
                q.ascending = match v.to_ascii_uppercase().as_str() {
                    "ASC" => true,
                    "DESC" => false,
                    _ => {
                        return Err(bad_param(format!(
                            "sort_dir must be ASC or DESC, got {v:?}"
                        )));
                    }
                }
            }
            "sort_key" => {
                if !["certExpiredTime", "certStatus", "certUpdateTime"].contains(&v.as_ref()) {
                    return Err(bad_param(format!(
                        "sort_key must be certExpiredTime, certStatus or certUpdateTime, got {v:?}"
                    )));
                }
                q.sort_key = v.into_owned();
            }
            "status" => {
                if !LIST_STATUSES.contains(&v.as_ref()) {
                    return Err(bad_param(format!(
                        "status {v:?} is not a certificate status"
                    )));
                }
                q.status = v.into_owned();
            }
            "enterprise_project_id" => {
                if v != "all" && !valid_enterprise_project_id(&v) {
                    return Err(bad_param(format!(
                        "enterprise_project_id must be all, 0 or a UUID, got {v:?}"
                    )));
                }
                q.enterprise_project_id = (v != "all").then(|| v.into_owned());
            }
            "deploy_support" => q.deploy_support = boolean("deploy_support", &v)?,
            "owned_by_self" => {
                boolean("owned_by_self", &v)?;
            }
            "expired_days_since" => {
                let n = int("expired_days_since", &v)?;
                if !(0..=1095).contains(&n) {
                    return Err(bad_param(format!(
                        "expired_days_since must be 0 to 1095, got {n}"
                    )));
                }
                q.expired_days_since = Some(n);
            }
            "content" => {
                if v.len() > 255 {
                    return Err(bad_param("content is longer than 255 characters"));
                }
                q.content = Some(v.to_lowercase()).filter(|s| !s.is_empty());
            }
            // The gateway ignores parameters an API does not define.
            _ => {}
        }
    }
    Ok(q)
}

fn domain_type(c: &ScmCertRecord) -> &'static str {
    let domains = c.all_domains();
    if domains.len() > 1 {
        "MULTI_DOMAIN"
    } else if c.domain.starts_with("*.") {
        "WILDCARD"
    } else {
        "SINGLE_DOMAIN"
    }
}

/// Whole months between not_before and not_after, rounded.
fn validity_months(c: &ScmCertRecord) -> i64 {
    ((c.not_after - c.not_before) as f64 / (30.44 * 86_400.0)).round() as i64
}

fn sans_field(c: &ScmCertRecord) -> Value {
    if c.sans.is_empty() {
        Value::Null
    } else {
        Value::String(c.sans.join(";"))
    }
}

fn summary_json(c: &ScmCertRecord, now: time::OffsetDateTime, domain_id: &str) -> Value {
    let domains = c.all_domains();
    json!({
        "id": c.id,
        "name": c.name,
        "domain": c.domain,
        "sans": sans_field(c),
        "signature_algorithm": c.signature_algorithm,
        "deploy_support": !c.is_expired(now),
        "type": null,
        "brand": null,
        "expire_time": format_scm_time(c.not_after_time()),
        "domain_type": domain_type(c),
        "validity_period": validity_months(c),
        "status": c.status(now),
        "domain_count": domains.len(),
        "wildcard_count": domains.iter().filter(|d| d.starts_with("*.")).count(),
        "description": null,
        "domain_id": domain_id,
        "enterprise_project_id": c.enterprise_project_id,
    })
}

/// `GET /v3/scm/certificates`.
pub async fn list(State(shared): State<Shared>, RawQuery(raw): RawQuery) -> Response {
    let q = match parse_list_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let now = shared.now();
    let day = 86_400i64;
    // Filter under the lock and clone only the hits: cloning every certificate (PEMs and keys)
    // for each call made a listing per name over N certificates cost O(N²) copies.
    let mut hits: Vec<ScmCertRecord> = shared.with_state(|st| {
        st.scm
            .certificates
            .iter()
            .filter(|c| q.status == "ALL" || c.status(now) == q.status)
            .filter(|c| !q.deploy_support || !c.is_expired(now))
            .filter(|c| {
                q.expired_days_since
                    .is_none_or(|n| c.not_after + n * day >= now.unix_timestamp())
            })
            .filter(|c| {
                q.enterprise_project_id
                    .as_deref()
                    .is_none_or(|e| c.enterprise_project_id == e)
            })
            .filter(|c| {
                q.content.as_deref().is_none_or(|k| {
                    c.name.to_lowercase().contains(k)
                        || c.all_domains().iter().any(|d| d.to_lowercase().contains(k))
                })
            })
            .cloned()
            .collect()
    });
    hits.sort_by(|a, b| {
        let ord = match q.sort_key.as_str() {
            "certExpiredTime" => a.not_after.cmp(&b.not_after),
            "certStatus" => a.status(now).cmp(b.status(now)),
            _ => a.updated_at.cmp(&b.updated_at),
        }
        .then_with(|| a.id.cmp(&b.id));
        if q.ascending { ord } else { ord.reverse() }
    });
    let total = hits.len();
    let domain_id = shared.config().domain_id.clone();
    let page: Vec<Value> = hits
        .iter()
        .skip(q.offset)
        .take(q.limit)
        .map(|c| summary_json(c, now, &domain_id))
        .collect();
    axum::Json(json!({ "certificates": page, "total_count": total })).into_response()
}

#[derive(Deserialize)]
struct ImportBody {
    name: Option<String>,
    certificate: Option<String>,
    certificate_chain: Option<String>,
    private_key: Option<String>,
    duplicate_check: Option<bool>,
    enterprise_project_id: Option<String>,
    // National-crypto (SM2) fields of the SDK model: accepted, not supported.
    enc_certificate: Option<String>,
    enc_private_key: Option<String>,
}

/// `POST /v3/scm/certificates/import`.
pub async fn import(State(shared): State<Shared>, body: Bytes) -> Response {
    match import_inner(&shared, &body) {
        Ok(id) => axum::Json(json!({ "certificate_id": id })).into_response(),
        Err(e) => e.into_response(),
    }
}

fn import_inner(shared: &Shared, body: &[u8]) -> Result<String, ApiError> {
    let b: ImportBody = parse_json(body, bad_param)?;
    let name = b.name.ok_or_else(|| bad_param("name is required"))?;
    if !crate::emulator::wire::is_scm_name(&name) {
        return Err(bad(
            "SCM.0032",
            format!("Invalid certificate name {name:?}: 3 to 63 letters, digits, '_', '-' or '.'"),
        ));
    }
    let certificate = b
        .certificate
        .ok_or_else(|| bad_param("certificate is required"))?;
    let private_key = b
        .private_key
        .ok_or_else(|| bad_param("private_key is required"))?;
    if private_key.trim().is_empty() {
        return Err(bad("SCM.0059", "The certificate private key is empty."));
    }
    if b.enc_certificate.as_deref().is_some_and(|s| !s.is_empty())
        || b.enc_private_key.as_deref().is_some_and(|s| !s.is_empty())
    {
        return Err(bad_param(
            "enc_certificate / enc_private_key (SM2 certificates) are not supported by the emulator",
        ));
    }
    let sizes = [
        ("certificate", certificate.len(), 4096),
        (
            "certificate_chain",
            b.certificate_chain.as_deref().map_or(0, str::len),
            8192,
        ),
        ("private_key", private_key.len(), 4096),
    ];
    for (field, len, max) in sizes {
        if len > max {
            return Err(bad(
                "SCM.0065",
                format!("File size exceeds limit: {field} is {len} characters, at most {max}"),
            ));
        }
    }
    let eps = b.enterprise_project_id.unwrap_or_else(|| "0".into());
    if !valid_enterprise_project_id(&eps) {
        return Err(bad_param(format!(
            "enterprise_project_id must be 0 or a UUID, got {eps:?}"
        )));
    }
    if certificate.trim().is_empty() {
        return Err(bad(
            "SCM.0006",
            "The uploaded certificate failed to be resolved: empty",
        ));
    }
    // Parsing and key checks happen outside the state lock.
    let parsed = super::parse_import(&certificate, b.certificate_chain.as_deref(), &private_key)?;
    let now = shared.now();
    if now > from_unix(parsed.not_after) {
        return Err(bad("SCM.0042", "Cert has expired."));
    }
    if now < from_unix(parsed.not_before) {
        return Err(bad(
            "SCM.0052",
            "Cert effective time error: the certificate is not valid yet.",
        ));
    }
    super::insert(
        shared,
        parsed,
        &name,
        &eps,
        b.duplicate_check.unwrap_or(false),
    )
}

/// `GET /v3/scm/certificates/{certificate_id}`.
pub async fn show(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let c = match find_cert(&shared, &id) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let now = shared.now();
    let domains = c.all_domains();
    axum::Json(json!({
        "id": c.id,
        "status": c.status(now),
        "order_id": null,
        "name": c.name,
        "type": null,
        "brand": null,
        "push_support": if c.is_expired(now) { "OFF" } else { "ON" },
        "revoke_reason": null,
        "signature_algorithm": c.signature_algorithm,
        "issue_time": format_scm_time(c.not_before_time()),
        "not_before": format_scm_time(c.not_before_time()),
        "not_after": format_scm_time(c.not_after_time()),
        "validity_period": validity_months(&c),
        "validation_method": null,
        "domain_type": domain_type(&c),
        "multi_domain_type": null,
        "domain": c.domain,
        "sans": sans_field(&c),
        "domain_count": domains.len(),
        "wildcard_count": domains.iter().filter(|d| d.starts_with("*.")).count(),
        "fingerprint": c.fingerprint,
        "shared": false,
        "description": null,
        "enterprise_project_id": c.enterprise_project_id,
        "authentification": [],
    }))
    .into_response()
}

/// `DELETE /v3/scm/certificates/{certificate_id}`: 204.
pub async fn delete(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    if let Err(e) = find_cert(&shared, &id) {
        return e.into_response();
    }
    shared.update_state(|st| st.scm.certificates.retain(|c| c.id != id));
    StatusCode::NO_CONTENT.into_response()
}

/// PEM with `\r\n` line ends, as the service sends it.
fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// `POST /v3/scm/certificates/{certificate_id}/export`.
pub async fn export(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let c = match find_cert(&shared, &id) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let entire = format!("{}{}", c.certificate_pem, c.chain_pem);
    axum::Json(json!({
        "entire_certificate": crlf(&entire),
        "certificate": crlf(&c.certificate_pem),
        "certificate_chain": crlf(&c.chain_pem),
        "private_key": crlf(&c.private_key_pem),
    }))
    .into_response()
}
