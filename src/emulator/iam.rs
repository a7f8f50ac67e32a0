//! IAM as far as CCM clients need it: password tokens (`POST /v3/auth/tokens`, token in
//! `X-Subject-Token`, 24 h) and the account lookup the SDKs make when no domain id is given
//! (`GET /v3/auth/domains`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use rand::RngExt;
use serde::Deserialize;

use super::{Shared, TokenRecord};

/// Token lifetime, as IAM documents.
pub const TOKEN_LIFETIME: time::Duration = time::Duration::hours(24);

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v3/auth/tokens", post(create_token))
        .route("/v3/auth/domains", get(list_domains))
}

fn iam_error(status: StatusCode, message: &str) -> Response {
    let title = match status {
        StatusCode::UNAUTHORIZED => "Unauthorized",
        _ => "Bad Request",
    };
    let body = serde_json::json!({ "error": { "code": status.as_u16(), "message": message, "title": title } });
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    auth: Auth,
}
#[derive(Deserialize)]
struct Auth {
    identity: Identity,
    #[serde(default)]
    scope: Option<serde_json::Value>,
}
#[derive(Deserialize)]
struct Identity {
    methods: Vec<String>,
    password: Option<PasswordBlock>,
}
#[derive(Deserialize)]
struct PasswordBlock {
    user: User,
}
#[derive(Deserialize)]
struct User {
    name: String,
    password: String,
    domain: Named,
}
#[derive(Deserialize)]
struct Named {
    name: String,
}

async fn create_token(State(shared): State<Shared>, body: Bytes) -> Response {
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return iam_error(
                StatusCode::BAD_REQUEST,
                &format!("The request body is invalid: {e}"),
            );
        }
    };
    if !req.auth.identity.methods.iter().any(|m| m == "password") {
        return iam_error(
            StatusCode::BAD_REQUEST,
            "Only the password method is supported here.",
        );
    }
    let Some(pw) = req.auth.identity.password else {
        return iam_error(StatusCode::BAD_REQUEST, "identity.password is required.");
    };
    let cfg = shared.config();
    let ok = pw.user.name == cfg.user_name
        && pw.user.password == cfg.password.expose()
        && pw.user.domain.name == cfg.domain_name;
    if !ok {
        return iam_error(
            StatusCode::UNAUTHORIZED,
            "The username or password is wrong.",
        );
    }
    let now = shared.now();
    let expires = now + TOKEN_LIFETIME;
    let mut raw = [0u8; 48];
    rand::rng().fill(&mut raw[..]);
    let token = format!(
        "MIIemu{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    shared.insert_token(
        token.clone(),
        TokenRecord {
            expires_at: expires,
            user_name: pw.user.name.clone(),
        },
    );
    let fmt = &time::format_description::well_known::Rfc3339;
    let scope = req.auth.scope.unwrap_or(serde_json::Value::Null);
    let mut token_body = serde_json::json!({
        "expires_at": expires.format(fmt).unwrap_or_default(),
        "issued_at": now.format(fmt).unwrap_or_default(),
        "methods": ["password"],
        "catalog": [],
        "roles": [{ "id": "0", "name": "op_service" }],
        "user": {
            "id": format!("{:032x}", fxhash(&cfg.user_name)),
            "name": cfg.user_name,
            "domain": { "id": cfg.domain_id, "name": cfg.domain_name },
            "password_expires_at": ""
        }
    });
    if scope.get("project").is_some() {
        token_body["project"] = scope["project"].clone();
    } else {
        token_body["domain"] = serde_json::json!({ "id": cfg.domain_id, "name": cfg.domain_name });
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = token.parse() {
        headers.insert("X-Subject-Token", v);
    }
    (
        StatusCode::CREATED,
        headers,
        axum::Json(serde_json::json!({ "token": token_body })),
    )
        .into_response()
}

async fn list_domains(State(shared): State<Shared>) -> Response {
    let cfg = shared.config();
    axum::Json(serde_json::json!({
        "domains": [{
            "id": cfg.domain_id,
            "name": cfg.domain_name,
            "enabled": true,
            "description": ""
        }],
        "links": { "self": "/v3/auth/domains" }
    }))
    .into_response()
}

/// A stable id from a name, without pulling in another hash crate.
fn fxhash(s: &str) -> u128 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u128, |h, b| {
        (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
