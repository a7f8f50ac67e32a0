//! The HTTP side of the emulator: routing, the gate every API request passes (request log,
//! faults, authentication), the `/_emulator/` control endpoints, and the accept loop (plain
//! HTTP or TLS).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::{ApiError, FaultRule, RequestRecord, Shared};
use crate::cloud::auth;

/// Largest request body accepted (the AK/SK limit of the real gateway is 12 MB).
const MAX_BODY: usize = 12 * 1024 * 1024;

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .merge(super::scm::routes())
        .merge(super::pca::routes())
        .merge(super::iam::routes())
        .merge(control_routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::new(
        404,
        "APIGW.0101",
        "The API does not exist or has not been published in the environment.",
    )
}

/// `(service.operation, needs authentication)` for a request, by method and path.
pub(crate) fn identify(method: &Method, path: &str) -> Option<(&'static str, bool)> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let m = method.as_str();
    let op = match (m, segs.as_slice()) {
        ("POST", ["v3", "auth", "tokens"]) => return Some(("iam.create_token", false)),
        ("GET", ["v3", "auth", "domains"]) => "iam.list_auth_domains",
        ("GET", ["v3", "scm", "certificates"]) => "scm.list_certificates",
        ("POST", ["v3", "scm", "certificates", "import"]) => "scm.import_certificate",
        ("GET", ["v3", "scm", "certificates", _]) => "scm.show_certificate",
        ("DELETE", ["v3", "scm", "certificates", _]) => "scm.delete_certificate",
        ("POST", ["v3", "scm", "certificates", _, "export"]) => "scm.export_certificate",
        ("POST", ["v3", "scm", "certificates", _, "push"]) => "scm.push_certificate",
        ("POST", ["v3", "scm", "certificates", _, "batch-push"]) => "scm.batch_push_certificate",
        ("POST", ["v3", "scm", "certificates", _, "deploy"]) => "scm.deploy_certificate",
        ("GET", ["v1", "private-certificate-authorities"]) => "pca.list_certificate_authority",
        ("POST", ["v1", "private-certificate-authorities"]) => "pca.create_certificate_authority",
        ("GET", ["v1", "private-certificate-authorities", "quotas"]) => {
            "pca.show_certificate_authority_quota"
        }
        ("GET", ["v1", "private-certificate-authorities", "obs", "agencies"]) => {
            "pca.show_certificate_authority_obs_agency"
        }
        ("POST", ["v1", "private-certificate-authorities", "obs", "agencies"]) => {
            "pca.create_certificate_authority_obs_agency"
        }
        ("GET", ["v1", "private-certificate-authorities", "obs", "buckets"]) => {
            "pca.list_certificate_authority_obs_bucket"
        }
        ("GET", ["v1", "private-certificate-authorities", _]) => "pca.show_certificate_authority",
        ("DELETE", ["v1", "private-certificate-authorities", _]) => {
            "pca.delete_certificate_authority"
        }
        ("GET", ["v1", "private-certificate-authorities", _, "csr"]) => {
            "pca.show_certificate_authority_csr"
        }
        ("POST", ["v1", "private-certificate-authorities", _, action]) => match *action {
            "disable" => "pca.disable_certificate_authority",
            "enable" => "pca.enable_certificate_authority",
            "restore" => "pca.restore_certificate_authority",
            "activate" => "pca.activate_certificate_authority",
            "export" => "pca.export_certificate_authority_certificate",
            "import" => "pca.import_certificate_authority_certificate",
            "revoke" => "pca.revoke_certificate_authority",
            _ => return None,
        },
        ("GET", ["v1", "private-certificates"]) => "pca.list_certificate",
        ("POST", ["v1", "private-certificates"]) => "pca.create_certificate",
        ("POST", ["v1", "private-certificates", "csr"]) => "pca.create_certificate_by_csr",
        ("POST", ["v1", "private-certificates", "csr", "parse"]) => {
            "pca.parse_certificate_signing_request"
        }
        ("GET", ["v1", "private-certificates", "quotas"]) => "pca.show_certificate_quota",
        ("GET", ["v1", "private-certificates", _]) => "pca.show_certificate",
        ("DELETE", ["v1", "private-certificates", _]) => "pca.delete_certificate",
        ("POST", ["v1", "private-certificates", _, "export"]) => "pca.export_certificate",
        ("POST", ["v1", "private-certificates", _, "revoke"]) => "pca.revoke_certificate",
        _ => return None,
    };
    Some((op, true))
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Check AK/SK signature or IAM token; returns the auth kind for the log.
fn authenticate(
    shared: &Shared,
    method: &Method,
    path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<&'static str, ApiError> {
    let cfg = shared.config();
    if headers.contains_key("authorization") {
        let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let hlist = header_list(headers);
        let req = auth::SignableRequest {
            method: method.as_str(),
            path,
            query: &query,
            headers: &hlist,
            body,
        };
        let lookup = |ak: &str| (ak == cfg.access_key).then(|| cfg.secret_key.clone());
        // Signatures are checked against the real wall clock: moving the emulator's clock
        // ages certificates, not the requests of a client living in real time.
        auth::verify(
            &req,
            lookup,
            time::OffsetDateTime::now_utc(),
            super::SIGNATURE_MAX_SKEW,
        )
        .map_err(|e| ApiError::unauthorized(&e.to_string()))?;
        if let Some(domain) = headers.get(auth::HEADER_DOMAIN_ID)
            && domain.as_bytes() != cfg.domain_id.as_bytes()
        {
            return Err(ApiError::unauthorized(
                "X-Domain-Id does not match the access key's account",
            ));
        }
        return Ok("aksk");
    }
    if let Some(token) = headers.get(auth::HEADER_AUTH_TOKEN) {
        let token = token.to_str().unwrap_or_default();
        if shared.token_valid(token) {
            return Ok("token");
        }
        return Err(ApiError::unauthorized("the token is invalid or expired"));
    }
    Err(ApiError::unauthorized(
        "no Authorization or X-Auth-Token header",
    ))
}

/// Every request passes here: log, control bypass, faults, authentication, handler.
async fn gate(State(shared): State<Shared>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    if path.starts_with("/_emulator/") {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let mut record = RequestRecord {
        seq: 0,
        time: shared
            .now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        method: parts.method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
        operation: String::new(),
        auth: "none".to_owned(),
        status: 0,
        fault: None,
    };
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            record.status = 413;
            shared.record(record);
            return ApiError::new(413, "APIGW.0201", "Request entity too large.").into_response();
        }
    };
    let identified = identify(&parts.method, &path);
    let (operation, needs_auth) = identified.unwrap_or(("", true));
    record.operation = operation.to_owned();

    // A request that has arrived runs to completion on its own task, as in a real service:
    // a client that disconnects or dies mid-call (during an injected latency, say) does not
    // cancel what the call does; it only misses the answer.
    let task = tokio::spawn(async move {
        let fault = if operation.is_empty() {
            None
        } else {
            shared.take_fault(operation, None)
        };
        let mut response = run_with_fault(
            &shared,
            fault.as_ref(),
            &mut record,
            needs_auth && identified.is_some(),
            (&parts.method, &path, &raw_query, &parts.headers, &body),
            next,
            Request::from_parts(parts.clone(), Body::from(body.clone())),
        )
        .await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("X-Request-Id", v);
        }
        record.status = response.status().as_u16();
        shared.record(record);
        response
    });
    match task.await {
        Ok(response) => response,
        Err(_) => ApiError::new(500, "APIGW.0500", "Internal error.").into_response(),
    }
}

async fn run_with_fault(
    shared: &Shared,
    fault: Option<&FaultRule>,
    record: &mut RequestRecord,
    needs_auth: bool,
    (method, path, raw_query, headers, body): (&Method, &str, &str, &HeaderMap, &Bytes),
    next: Next,
    req: Request,
) -> Response {
    if let Some(f) = fault {
        if f.latency_ms > 0 {
            record.fault = Some("latency".into());
            tokio::time::sleep(std::time::Duration::from_millis(f.latency_ms)).await;
        }
        if f.expire_tokens {
            record.fault = Some("expire_tokens".into());
            shared.expire_tokens();
        }
        if f.timeout {
            record.fault = Some("timeout".into());
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            return ApiError::new(504, "APIGW.0504", "Backend timeout.").into_response();
        }
        if f.drop_connection {
            record.fault = Some("drop".into());
            return Response::builder()
                .status(StatusCode::OK)
                .body(Body::new(BrokenBody))
                .unwrap_or_default();
        }
    }
    if needs_auth {
        match authenticate(shared, method, path, raw_query, headers, body) {
            Ok(kind) => record.auth = kind.to_owned(),
            Err(e) => return e.into_response(),
        }
    }
    if let Some(f) = fault
        && let Some(status) = f.status
    {
        record.fault = Some("error".into());
        let service = record.operation.split('.').next().unwrap_or_default();
        let default_code = match service {
            "scm" => "SCM.0500",
            "pca" => "PCA.00010001",
            _ => "APIGW.0500",
        };
        return ApiError::new(
            status,
            f.error_code
                .clone()
                .unwrap_or_else(|| default_code.to_owned()),
            f.error_msg
                .clone()
                .unwrap_or_else(|| "Injected fault.".to_owned()),
        )
        .into_response();
    }
    let response = next.run(req).await;
    match fault {
        Some(f) if f.truncate_body || f.replace_body.is_some() => {
            let (mut parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let new_body = if let Some(replacement) = &f.replace_body {
                record.fault = Some("body".into());
                parts.status = StatusCode::OK;
                Bytes::from(replacement.clone())
            } else {
                record.fault = Some("truncate".into());
                bytes.slice(..bytes.len() / 2)
            };
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(new_body))
        }
        _ => response,
    }
}

/// A response body that fails at once, so the server aborts the connection mid-response.
struct BrokenBody;

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "injected dropped connection",
        ))))
    }
}

// ---- control endpoints ----

fn control_routes() -> Router<Shared> {
    Router::new()
        .route("/_emulator/health", get(|| async { "ok" }))
        .route(
            "/_emulator/requests",
            get(get_requests).delete(delete_requests),
        )
        .route("/_emulator/clock", get(get_clock).post(post_clock))
        .route(
            "/_emulator/faults",
            get(get_faults).post(post_faults).delete(delete_faults),
        )
        .route("/_emulator/tokens/expire", post(post_expire_tokens))
        .route("/_emulator/deployments", get(get_deployments))
}

async fn get_requests(State(s): State<Shared>) -> Response {
    axum::Json(s.requests()).into_response()
}

async fn delete_requests(State(s): State<Shared>) -> StatusCode {
    s.clear_requests();
    StatusCode::NO_CONTENT
}

fn clock_json(s: &Shared) -> serde_json::Value {
    let now = s.now();
    serde_json::json!({
        "now": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "now_ms": crate::emulator::wire::epoch_ms(now),
        "offset_secs": s.with_state(|st| st.clock_offset_secs),
    })
}

async fn get_clock(State(s): State<Shared>) -> Response {
    axum::Json(clock_json(&s)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockChange {
    advance_secs: i64,
}

async fn post_clock(State(s): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<ClockChange>(&body) {
        Ok(c) => {
            s.advance_clock(time::Duration::seconds(c.advance_secs));
            axum::Json(clock_json(&s)).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("expected {{\"advance_secs\": N}}: {e}\n"),
        )
            .into_response(),
    }
}

async fn get_faults(State(s): State<Shared>) -> Response {
    axum::Json(s.faults()).into_response()
}

/// Accepts one rule or a list of rules.
async fn post_faults(State(s): State<Shared>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(FaultRule),
        Many(Vec<FaultRule>),
    }
    match serde_json::from_slice::<OneOrMany>(&body) {
        Ok(OneOrMany::One(r)) => s.add_fault(r),
        Ok(OneOrMany::Many(rs)) => rs.into_iter().for_each(|r| s.add_fault(r)),
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a fault rule: {e}\n")).into_response();
        }
    }
    axum::Json(s.faults()).into_response()
}

async fn delete_faults(State(s): State<Shared>) -> StatusCode {
    s.clear_faults();
    StatusCode::NO_CONTENT
}

async fn post_expire_tokens(State(s): State<Shared>) -> StatusCode {
    s.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn get_deployments(State(s): State<Shared>) -> Response {
    axum::Json(s.with_state(|st| st.scm.deployments_json())).into_response()
}

// ---- accept loop ----

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "emulator: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let router = router.clone();
                    async move {
                        use tower::ServiceExt;
                        Ok::<_, Infallible>(
                            router
                                .oneshot(req.map(Body::new))
                                .await
                                .unwrap_or_else(|e| match e {}),
                        )
                    }
                });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        tokio::select! { _ = conn => {}, _ = shutdown.cancelled() => {} }
                    }
                }
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, _ = shutdown.cancelled() => {} }
                }
            }
        });
    }
    tracker.close();
}

/// A TLS acceptor with a fresh CA and a server certificate for localhost / 127.0.0.1 / ::1;
/// returns the CA's PEM for clients to trust.
pub(crate) fn tls_acceptor() -> anyhow::Result<(tokio_rustls::TlsAcceptor, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    crate::cloud::install_crypto_provider();
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ccm-agent emulator CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let now = time::OffsetDateTime::now_utc();
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(365);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.signed_by(&key, &issuer)?;
    let chain = vec![cert.der().clone()];
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    Ok((
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        ca_cert.pem(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_operations() {
        let id = |m: Method, p: &str| identify(&m, p).map(|(op, _)| op);
        assert_eq!(
            id(Method::GET, "/v3/scm/certificates"),
            Some("scm.list_certificates")
        );
        assert_eq!(
            id(Method::POST, "/v3/scm/certificates/import"),
            Some("scm.import_certificate")
        );
        assert_eq!(
            id(Method::GET, "/v3/scm/certificates/scs1554192131150"),
            Some("scm.show_certificate")
        );
        assert_eq!(
            id(Method::POST, "/v3/scm/certificates/x/batch-push"),
            Some("scm.batch_push_certificate")
        );
        assert_eq!(
            id(Method::GET, "/v1/private-certificate-authorities/quotas"),
            Some("pca.show_certificate_authority_quota")
        );
        assert_eq!(
            id(Method::POST, "/v1/private-certificates/csr/parse"),
            Some("pca.parse_certificate_signing_request")
        );
        assert_eq!(
            id(Method::POST, "/v1/private-certificate-authorities/x/bogus"),
            None
        );
        assert_eq!(
            identify(&Method::POST, "/v3/auth/tokens"),
            Some(("iam.create_token", false))
        );
    }
}
