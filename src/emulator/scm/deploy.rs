//! SCM push, batch-push and deploy handlers. Every target is recorded; an injected fault for
//! one target (`take_fault(operation, Some(region or resource id))`) fails that target only.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{
    Deployment, ScmCertRecord, bad, bad_param, check_region, find_cert, rfc3339,
    valid_enterprise_project_id,
};
use crate::emulator::{ApiError, FaultRule, Shared, parse_json};

/// `ELB` / `WAF` from a body value (the reference's example writes `waf`).
fn service(value: Option<&str>, code: &str) -> Result<&'static str, ApiError> {
    match value.map(str::to_ascii_uppercase).as_deref() {
        Some("ELB") => Ok("ELB"),
        Some("WAF") => Ok("WAF"),
        Some(other) => Err(bad(
            code,
            format!("Certificates cannot be pushed to this service: {other:?} (only WAF and ELB)"),
        )),
        None => Err(bad(code, "The target service is required (WAF or ELB).")),
    }
}

/// The default failure an injected per-target fault produces: `(code, message)`.
fn fault_failure(rule: &FaultRule, service: &str) -> (String, String) {
    let (code, msg) = if service == "WAF" {
        ("SCM.0221", "Failed to push to WAF.")
    } else {
        ("SCM.0201", "Failed to push to ELB.")
    };
    (
        rule.error_code.clone().unwrap_or_else(|| code.to_owned()),
        rule.error_msg.clone().unwrap_or_else(|| msg.to_owned()),
    )
}

fn usable(shared: &Shared, id: &str) -> Result<ScmCertRecord, ApiError> {
    let c = find_cert(shared, id)?;
    if c.is_expired(shared.now()) {
        return Err(bad(
            "SCM.0010",
            "This operation is not allowed by the current certificate type or status: the certificate has expired.",
        ));
    }
    Ok(c)
}

struct Target<'a> {
    operation: &'static str,
    service: &'a str,
    project: Option<String>,
    resource_id: Option<String>,
    resource_type: Option<String>,
    enterprise_project_id: Option<String>,
}

fn record(shared: &Shared, cert: &ScmCertRecord, t: Target<'_>, failure: Option<String>) {
    let time = rfc3339(shared.now());
    shared.update_state(|st| {
        st.scm.record(Deployment {
            seq: 0,
            operation: t.operation.to_owned(),
            certificate_id: cert.id.clone(),
            certificate_name: cert.name.clone(),
            fingerprint: cert.fingerprint.clone(),
            service: t.service.to_owned(),
            project: t.project,
            resource_id: t.resource_id,
            resource_type: t.resource_type,
            enterprise_project_id: t.enterprise_project_id,
            time,
            ok: failure.is_none(),
            message: failure.unwrap_or_else(|| "success".to_owned()),
        })
    });
}

#[derive(Deserialize)]
struct PushBody {
    target_project: Option<String>,
    target_service: Option<String>,
}

/// `POST /v3/scm/certificates/{certificate_id}/push`: 204.
pub async fn push(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    match push_inner(&shared, &id, &body) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

fn push_inner(shared: &Shared, id: &str, body: &[u8]) -> Result<(), ApiError> {
    let b: PushBody = parse_json(body, bad_param)?;
    let svc = service(b.target_service.as_deref(), "SCM.0030")?;
    let region = b
        .target_project
        .ok_or_else(|| bad_param("target_project is required"))?;
    check_region(&region)?;
    let cert = usable(shared, id)?;
    let target = Target {
        operation: "push",
        service: svc,
        project: Some(region.clone()),
        resource_id: None,
        resource_type: None,
        enterprise_project_id: None,
    };
    if let Some(rule) = shared.take_fault("scm.push_certificate", Some(&region)) {
        let (code, msg) = fault_failure(&rule, svc);
        record(shared, &cert, target, Some(format!("{code}:{msg}")));
        return Err(ApiError::new(rule.status.unwrap_or(400), code, msg));
    }
    record(shared, &cert, target, None);
    Ok(())
}

#[derive(Deserialize)]
struct BatchPushBody {
    target_projects: Option<Vec<String>>,
    target_service: Option<String>,
}

/// `POST /v3/scm/certificates/{certificate_id}/batch-push`.
pub async fn batch_push(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    match batch_push_inner(&shared, &id, &body) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn batch_push_inner(shared: &Shared, id: &str, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let b: BatchPushBody = parse_json(body, bad_param)?;
    let svc = service(b.target_service.as_deref(), "SCM.0030")?;
    let regions = b.target_projects.unwrap_or_default();
    if !(1..=10).contains(&regions.len()) {
        return Err(bad(
            "SCM.0505",
            format!(
                "Parameter error, parameter is null or its list size is out of range, additional info:target_projects has {} entries (1 to 10)",
                regions.len()
            ),
        ));
    }
    for (i, r) in regions.iter().enumerate() {
        if regions[..i].contains(r) {
            return Err(bad(
                "SCM.0507",
                format!(
                    "The list parameter cannot have duplicate elements, parameter name:target_projects ({r})"
                ),
            ));
        }
        check_region(r)?;
    }
    let cert = usable(shared, id)?;
    let mut results = Vec::with_capacity(regions.len());
    for region in regions {
        let failure = shared
            .take_fault("scm.batch_push_certificate", Some(&region))
            .map(|rule| {
                let (code, msg) = fault_failure(&rule, svc);
                format!("{code}:{msg}")
            });
        let message = failure.clone().unwrap_or_else(|| "success".to_owned());
        record(
            shared,
            &cert,
            Target {
                operation: "batch_push",
                service: svc,
                project: Some(region.clone()),
                resource_id: None,
                resource_type: None,
                enterprise_project_id: None,
            },
            failure,
        );
        results.push(json!({ "project_name": region, "cert_id": cert.id, "message": message }));
    }
    Ok(json!({ "results": results }))
}

#[derive(Deserialize)]
struct DeployBody {
    project_name: Option<String>,
    service_name: Option<String>,
    resources: Option<Vec<ResourceBody>>,
}

#[derive(Deserialize)]
struct ResourceBody {
    id: Option<String>,
    #[serde(rename = "type")]
    resource_type: Option<String>,
    #[allow(dead_code)]
    domain_name: Option<String>,
    enterprise_project_id: Option<String>,
}

/// `POST /v3/scm/certificates/{certificate_id}/deploy`.
pub async fn deploy(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    match deploy_inner(&shared, &id, &body) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn deploy_inner(shared: &Shared, id: &str, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let b: DeployBody = parse_json(body, bad_param)?;
    let svc = service(b.service_name.as_deref(), "SCM.0501").map_err(|_| {
        bad(
            "SCM.0501",
            "The parameter cannot be null or the parameter is wrong. Currently only supports: WAF/ELB",
        )
    })?;
    if let Some(p) = &b.project_name {
        check_region(p)?;
    }
    let resources = b.resources.unwrap_or_default();
    if !(1..=20).contains(&resources.len()) {
        return Err(bad(
            "SCM.0505",
            format!(
                "Parameter error, parameter is null or its list size is out of range, additional info:resources has {} entries (1 to 20)",
                resources.len()
            ),
        ));
    }
    let mut ids: Vec<&str> = Vec::with_capacity(resources.len());
    for r in &resources {
        let rid =
            r.id.as_deref()
                .ok_or_else(|| bad_param(format!("resources[].id is required for {svc}")))?;
        let well_formed = !rid.is_empty()
            && rid.len() <= 64
            && rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return Err(bad_param(format!(
                "resources[].id {rid:?} is not a resource id"
            )));
        }
        if ids.contains(&rid) {
            return Err(bad(
                "SCM.0507",
                format!(
                    "The list parameter cannot have duplicate elements, parameter name:resources ({rid})"
                ),
            ));
        }
        ids.push(rid);
        if svc == "WAF" {
            match r.resource_type.as_deref() {
                Some("cloud" | "premium") => {}
                other => {
                    return Err(bad_param(format!(
                        "resources[].type must be cloud or premium for WAF, got {other:?}"
                    )));
                }
            }
            match r.enterprise_project_id.as_deref() {
                Some(e) if valid_enterprise_project_id(e) => {}
                other => {
                    return Err(bad_param(format!(
                        "resources[].enterprise_project_id must be 0 or a UUID for WAF, got {other:?}"
                    )));
                }
            }
        }
    }
    let cert = usable(shared, id)?;
    let mut failures = Vec::new();
    for r in resources {
        let rid = r.id.unwrap_or_default();
        let failure = shared
            .take_fault("scm.deploy_certificate", Some(&rid))
            .map(|rule| {
                let (code, msg) = fault_failure(&rule, svc);
                format!("{code}:{msg}")
            });
        if let Some(f) = &failure {
            failures.push(json!({ "resource": rid, "failure_info": f }));
        }
        record(
            shared,
            &cert,
            Target {
                operation: "deploy",
                service: svc,
                project: b.project_name.clone(),
                resource_id: Some(rid),
                resource_type: r.resource_type,
                enterprise_project_id: r.enterprise_project_id,
            },
            failure,
        );
    }
    Ok(json!({ "failure_list": failures }))
}
