//! A typed async client for Huawei Cloud Certificate Manager (CCM): SCM v3 (SSL certificates)
//! and PCA v1 (private CAs and certificates), authenticated by AK/SK signature or IAM token.
//!
//! # Example
//! ```no_run
//! use ccm_client::scm::ListCertificatesQuery;
//! use ccm_client::{AkSk, Client, Credentials, Endpoints};
//!
//! # async fn example() -> Result<(), ccm_client::CloudError> {
//! let credentials = Credentials::AkSk(AkSk::new("my-access-key", "my-secret-key"));
//! let client = Client::builder(Endpoints::for_region("ap-southeast-1")?, credentials).build()?;
//!
//! // Every SSL certificate in SCM, page by page.
//! let certificates = client
//!     .scm_list_all_certificates(&ListCertificatesQuery::default())
//!     .await?;
//! for cert in &certificates {
//!     println!("{} {} expires {:?}", cert.id, cert.name, cert.expire_time);
//! }
//!
//! // A private CA's certificate and chain, in PEM.
//! let ca = client.pca_export_ca_certificate("5e1a5b1c-2b47-4bd3-8e4c-4a3c4b7b3f10").await?;
//! println!("{}", ca.certificate);
//! # Ok(())
//! # }
//! ```
//!
//! One seam carries every call: build a [`Request`] → sign → send → decode. Operations live in
//! [`scm`] and [`pca`]; they only describe requests and response types.
//!
//! # Retries and calls that create things
//! Failures classified as retryable ([`CloudError::is_retryable`]) are retried with exponential
//! backoff and full jitter, bounded in attempts and total time. A call that *creates* something
//! (PCA apply and issue-via-CSR, SCM import, create CA) is retried only when the failure shows
//! that the request was certainly not processed (connection refused, 429, 503). After a timeout
//! or a 500 its outcome is unknown, and the error is returned: the caller reconciles by listing
//! (PCA certificates by `common_name`/`name` sorted by `create_time`, SCM certificates by name)
//! and adopting what the lost call created before deciding to create again.

pub mod auth;
pub mod error;
pub mod pca;
pub mod scm;
pub mod time;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

pub use auth::{AkSk, Secret};
pub use error::{CloudError, ErrorBody, NestedError};

/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which service a request is for; each has its own endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Scm,
    Pca,
    Iam,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Scm => "scm",
            Service::Pca => "pca",
            Service::Iam => "iam",
        }
    }
}

/// Base URLs of the three services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub scm: Url,
    pub pca: Url,
    pub iam: Url,
}

impl Endpoints {
    /// The public endpoints of a region: `scm.{region}`, `ccm.{region}`, `iam.{region}` under
    /// `myhuaweicloud.com`.
    pub fn for_region(region: &str) -> Result<Self, CloudError> {
        let valid = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(CloudError::Invalid(format!(
                "region {region:?} is not a region name (lower-case letters, digits, '-')"
            )));
        }
        let url = |svc: &str| parse_url(&format!("https://{svc}.{region}.myhuaweicloud.com"));
        Ok(Self {
            scm: url("scm")?,
            pca: url("ccm")?,
            iam: url("iam")?,
        })
    }

    /// One base URL for all three services: how tests and the demo reach the emulator.
    pub fn single(base: &str) -> Result<Self, CloudError> {
        let url = parse_url(base)?;
        Ok(Self {
            scm: url.clone(),
            pca: url.clone(),
            iam: url,
        })
    }

    pub fn url(&self, service: Service) -> &Url {
        match service {
            Service::Scm => &self.scm,
            Service::Pca => &self.pca,
            Service::Iam => &self.iam,
        }
    }
}

/// Parse and check an endpoint URL (http or https, with a host).
pub fn parse_url(s: &str) -> Result<Url, CloudError> {
    let url = Url::parse(s).map_err(|e| CloudError::Invalid(format!("endpoint {s:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(CloudError::Invalid(format!(
            "endpoint {s:?}: must be an http or https URL with a host"
        )));
    }
    Ok(url)
}

/// An IAM user's password identity, exchanged for a token at `POST /v3/auth/tokens`.
#[derive(Clone, Debug)]
pub struct PasswordIdentity {
    pub user_name: String,
    pub password: Secret,
    /// The account (domain) name the user belongs to.
    pub domain_name: String,
    /// Scope the token to this project name instead of the whole account.
    pub project_name: Option<String>,
}

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum Credentials {
    AkSk(AkSk),
    Password(PasswordIdentity),
}

/// Bounds on retrying a failed call.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No new attempt starts once this much time has passed since the first.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay before retry number `retry` (1-based): full jitter over an exponential cap.
    pub fn backoff(&self, retry: u32, rng: &mut impl rand::Rng) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max_delay);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=cap_ms))
    }
}

/// Whether a call may simply be sent again when its outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, deletes, exports, pushes: repeating is harmless.
    Safe,
    /// Creates a resource: repeated only when the first attempt certainly had no effect.
    Creates,
}

/// Receives a report of every HTTP exchange, for metrics.
pub trait Observer: Send + Sync {
    /// One attempt finished: `status` is `None` when no response arrived.
    fn request_done(
        &self,
        service: Service,
        operation: &str,
        status: Option<u16>,
        elapsed: Duration,
    );
    /// A new IAM token was obtained.
    fn token_refreshed(&self) {}
}

/// One API call, described before it is signed and sent.
#[derive(Clone, Debug)]
pub struct Request {
    pub service: Service,
    /// A short stable name for logs and metrics, such as `list_certificates`.
    pub operation: &'static str,
    pub method: Method,
    /// The path, starting with `/`, with every segment already safe (ids are validated).
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub idempotency: Idempotency,
}

impl Request {
    pub fn new(
        service: Service,
        operation: &'static str,
        method: Method,
        path: impl Into<String>,
    ) -> Self {
        let idempotency = if method == Method::POST {
            Idempotency::Creates
        } else {
            Idempotency::Safe
        };
        Self {
            service,
            operation,
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            idempotency,
        }
    }

    pub fn get(service: Service, operation: &'static str, path: impl Into<String>) -> Self {
        Self::new(service, operation, Method::GET, path)
    }

    pub fn post(service: Service, operation: &'static str, path: impl Into<String>) -> Self {
        Self::new(service, operation, Method::POST, path)
    }

    pub fn delete(service: Service, operation: &'static str, path: impl Into<String>) -> Self {
        Self::new(service, operation, Method::DELETE, path)
    }

    /// Add a query parameter.
    pub fn query(mut self, key: &str, value: impl ToString) -> Self {
        self.query.push((key.to_owned(), value.to_string()));
        self
    }

    /// Add a query parameter when it has a value.
    pub fn query_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.query(key, v),
            None => self,
        }
    }

    /// Set a JSON body.
    pub fn json(mut self, body: &impl Serialize) -> Result<Self, CloudError> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            CloudError::Invalid(format!("{}: cannot encode request: {e}", self.operation))
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    /// Mark a POST that does not create anything (export, push, revoke, ...) as safe to repeat.
    pub fn idempotent(mut self) -> Self {
        self.idempotency = Idempotency::Safe;
        self
    }
}

/// A successful response, before decoding.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    endpoints: Endpoints,
    credentials: Credentials,
    timeout: Duration,
    retry: RetryPolicy,
    extra_roots_pem: Vec<Vec<u8>>,
    observer: Option<Arc<dyn Observer>>,
}

impl ClientBuilder {
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Trust these PEM CA certificates in addition to the system roots.
    pub fn add_root_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_roots_pem.push(pem.into());
        self
    }

    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn build(self) -> Result<Client, CloudError> {
        install_crypto_provider();
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("ccm-agent/", env!("CARGO_PKG_VERSION")));
        for pem in &self.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| CloudError::Invalid(format!("extra CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(CloudError::Invalid(
                    "extra CA bundle holds no certificate".into(),
                ));
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| CloudError::Invalid(format!("HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoints: self.endpoints,
                credentials: self.credentials,
                timeout: self.timeout,
                retry: self.retry,
                observer: self.observer,
                token: tokio::sync::Mutex::new(None),
                domain_id: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

/// Install ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_at: ::time::OffsetDateTime,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Endpoints,
    credentials: Credentials,
    timeout: Duration,
    retry: RetryPolicy,
    observer: Option<Arc<dyn Observer>>,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    domain_id: tokio::sync::OnceCell<Option<String>>,
}

/// The CCM client. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// Refresh a token this long before it expires (tokens live 24 h).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(3600);

impl Client {
    pub fn builder(endpoints: Endpoints, credentials: Credentials) -> ClientBuilder {
        ClientBuilder {
            endpoints,
            credentials,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            extra_roots_pem: Vec::new(),
            observer: None,
        }
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// Send a request and decode its JSON body.
    pub async fn call<T: DeserializeOwned>(&self, req: Request) -> Result<T, CloudError> {
        let (service, operation) = (req.service.name(), req.operation);
        let raw = self.call_raw(req).await?;
        decode_json(service, operation, &raw.body)
    }

    /// Send a request whose success has no body worth reading (204).
    pub async fn call_empty(&self, req: Request) -> Result<(), CloudError> {
        self.call_raw(req).await.map(|_| ())
    }

    /// Send a request with retries; return the successful response undecoded.
    pub async fn call_raw(&self, req: Request) -> Result<RawResponse, CloudError> {
        let started = Instant::now();
        let mut attempt = 1;
        let mut reauthenticated = false;
        loop {
            let result = self.send_once(&req).await;
            let err = match result {
                Ok(resp) => return Ok(resp),
                Err(err) => err,
            };
            // A token refused with 401 may have been revoked or expired early: fetch once more.
            let is_token_request = req.service == Service::Iam && req.operation == "create_token";
            if err.status() == Some(401)
                && matches!(self.inner.credentials, Credentials::Password(_))
                && !is_token_request
                && !reauthenticated
            {
                reauthenticated = true;
                *self.inner.token.lock().await = None;
                continue;
            }
            let may_repeat = match req.idempotency {
                Idempotency::Safe => err.is_retryable(),
                Idempotency::Creates => err.certainly_not_processed(),
            };
            if !may_repeat
                || attempt >= self.inner.retry.max_attempts
                || started.elapsed() >= self.inner.retry.max_elapsed
            {
                return Err(err);
            }
            let delay = self.inner.retry.backoff(attempt, &mut rand::rng());
            tracing::debug!(service = req.service.name(), operation = req.operation, attempt, ?delay, error = %err, "retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send_once(&self, req: &Request) -> Result<RawResponse, CloudError> {
        let (service, operation) = (req.service.name(), req.operation);
        let base = self.inner.endpoints.url(req.service);
        let mut url = base.clone();
        let path = format!("{}{}", base.path().trim_end_matches('/'), req.path);
        url.set_path(&path);
        let query = auth::canonical_query(&req.query);
        url.set_query((!query.is_empty()).then_some(query.as_str()));

        let mut headers: Vec<(String, String)> = vec![(
            "Content-Type".to_owned(),
            "application/json;charset=UTF-8".to_owned(),
        )];
        match &self.inner.credentials {
            Credentials::AkSk(cred) => {
                let host = match url.port() {
                    Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_owned(),
                };
                headers.push(("Host".to_owned(), host));
                headers.push((
                    auth::HEADER_SDK_DATE.to_owned(),
                    auth::format_sdk_date(::time::OffsetDateTime::now_utc()),
                ));
                if req.service != Service::Iam {
                    if let Some(domain_id) = self.domain_id(cred).await? {
                        headers.push((auth::HEADER_DOMAIN_ID.to_owned(), domain_id));
                    }
                    if let Some(project_id) = &cred.project_id {
                        headers.push((auth::HEADER_PROJECT_ID.to_owned(), project_id.clone()));
                    }
                }
                if let Some(token) = &cred.security_token {
                    headers.push((
                        auth::HEADER_SECURITY_TOKEN.to_owned(),
                        token.expose().to_owned(),
                    ));
                }
                let signable = auth::SignableRequest {
                    method: req.method.as_str(),
                    path: url.path(),
                    query: &req.query,
                    headers: &headers,
                    body: req.body.as_deref().unwrap_or_default(),
                };
                let authorization =
                    auth::authorization(&cred.access_key, &cred.secret_key, &signable);
                headers.push(("Authorization".to_owned(), authorization));
            }
            Credentials::Password(identity) => {
                // Every call but the token request itself carries the token.
                if !(req.service == Service::Iam && req.operation == "create_token") {
                    let token = self.token(identity).await?;
                    headers.push((
                        auth::HEADER_AUTH_TOKEN.to_owned(),
                        token.expose().to_owned(),
                    ));
                }
            }
        }

        let mut builder = self.inner.http.request(req.method.clone(), url);
        for (k, v) in &headers {
            // reqwest derives Host from the URL, which is what was signed.
            if !k.eq_ignore_ascii_case("host") {
                builder = builder.header(k, v);
            }
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let start = Instant::now();
        let sent = builder.send().await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                self.observe(req, None, start.elapsed());
                return Err(self.transport_error(service, operation, &e));
            }
        };
        let status = resp.status().as_u16();
        let resp_headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.observe(req, Some(status), start.elapsed());
                return Err(self.transport_error(service, operation, &e));
            }
        };
        self.observe(req, Some(status), start.elapsed());
        if (200..300).contains(&status) {
            return Ok(RawResponse {
                status,
                headers: resp_headers,
                body,
            });
        }
        Err(api_error(service, operation, status, &resp_headers, &body))
    }

    fn observe(&self, req: &Request, status: Option<u16>, elapsed: Duration) {
        if let Some(obs) = &self.inner.observer {
            obs.request_done(req.service, req.operation, status, elapsed);
        }
    }

    fn transport_error(
        &self,
        service: &'static str,
        operation: &'static str,
        e: &reqwest::Error,
    ) -> CloudError {
        if e.is_timeout() {
            return CloudError::Timeout {
                service,
                operation,
                timeout: self.inner.timeout,
            };
        }
        CloudError::Http {
            service,
            operation,
            detail: error_chain(e),
            not_sent: e.is_connect(),
        }
    }

    /// The account id for `X-Domain-Id`: configured, or looked up once at IAM
    /// (`GET /v3/auth/domains`) the way the official SDKs do.
    async fn domain_id(&self, cred: &AkSk) -> Result<Option<String>, CloudError> {
        if let Some(id) = &cred.domain_id {
            return Ok(Some(id.clone()));
        }
        let found = self
            .inner
            .domain_id
            .get_or_try_init(|| async {
                #[derive(serde::Deserialize)]
                struct Domains {
                    #[serde(default)]
                    domains: Vec<Domain>,
                }
                #[derive(serde::Deserialize)]
                struct Domain {
                    id: String,
                }
                let req = Request::get(Service::Iam, "list_auth_domains", "/v3/auth/domains");
                let raw = Box::pin(self.call_raw(req)).await?;
                let d: Domains = decode_json("iam", "list_auth_domains", &raw.body)?;
                Ok::<_, CloudError>(d.domains.into_iter().next().map(|d| d.id))
            })
            .await?;
        Ok(found.clone())
    }

    /// A valid IAM token, fetched or refreshed when needed.
    async fn token(&self, identity: &PasswordIdentity) -> Result<Secret, CloudError> {
        let mut cached = self.inner.token.lock().await;
        let now = ::time::OffsetDateTime::now_utc();
        if let Some(tok) = cached.as_ref()
            && tok.expires_at - now > TOKEN_REFRESH_MARGIN
        {
            return Ok(tok.token.clone());
        }
        let fresh = self.fetch_token(identity).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        if let Some(obs) = &self.inner.observer {
            obs.token_refreshed();
        }
        Ok(token)
    }

    async fn fetch_token(&self, identity: &PasswordIdentity) -> Result<CachedToken, CloudError> {
        let scope = match &identity.project_name {
            Some(p) => serde_json::json!({ "project": { "name": p } }),
            None => serde_json::json!({ "domain": { "name": identity.domain_name } }),
        };
        let body = serde_json::json!({
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": { "user": {
                        "name": identity.user_name,
                        "password": identity.password.expose(),
                        "domain": { "name": identity.domain_name }
                    } }
                },
                "scope": scope
            }
        });
        // A token is not a resource anyone reconciles: asking again is harmless.
        let req = Request::post(Service::Iam, "create_token", "/v3/auth/tokens")
            .json(&body)?
            .idempotent();
        let raw = Box::pin(self.call_raw(req)).await?;
        let token = raw
            .headers
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CloudError::Decode {
                service: "iam",
                operation: "create_token",
                detail: "no X-Subject-Token header".into(),
            })?;
        #[derive(serde::Deserialize)]
        struct TokenBody {
            token: TokenInfo,
        }
        #[derive(serde::Deserialize)]
        struct TokenInfo {
            expires_at: String,
        }
        let info: TokenBody = decode_json("iam", "create_token", &raw.body)?;
        let expires_at = ::time::OffsetDateTime::parse(
            &info.token.expires_at,
            &::time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| CloudError::Decode {
            service: "iam",
            operation: "create_token",
            detail: format!("expires_at {:?}: {e}", info.token.expires_at),
        })?;
        Ok(CachedToken {
            token: Secret::new(token),
            expires_at,
        })
    }
}

/// Decode a JSON body, naming the operation and what did not fit.
pub fn decode_json<T: DeserializeOwned>(
    service: &'static str,
    operation: &'static str,
    body: &[u8],
) -> Result<T, CloudError> {
    serde_json::from_slice(body).map_err(|e| CloudError::Decode {
        service,
        operation,
        detail: e.to_string(),
    })
}

fn api_error(
    service: &'static str,
    operation: &'static str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> CloudError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed.code();
    let msg = parsed.message().unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let snippet: String = text.chars().take(200).collect();
        if snippet.is_empty() {
            "(no body)".to_owned()
        } else {
            snippet
        }
    });
    let request_id = headers
        .get("X-Request-Id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    CloudError::Api {
        service,
        operation,
        status,
        code,
        msg,
        request_id,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_endpoints() {
        let e = Endpoints::for_region("ap-southeast-1").expect("region");
        assert_eq!(
            e.scm.as_str(),
            "https://scm.ap-southeast-1.myhuaweicloud.com/"
        );
        assert_eq!(
            e.pca.as_str(),
            "https://ccm.ap-southeast-1.myhuaweicloud.com/"
        );
        assert_eq!(
            e.iam.as_str(),
            "https://iam.ap-southeast-1.myhuaweicloud.com/"
        );
        assert!(Endpoints::for_region("evil.com/x").is_err());
        assert!(Endpoints::single("ftp://x").is_err());
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy::default();
        let mut rng = rand::rng();
        for retry in 1..10 {
            let cap = p
                .base_delay
                .saturating_mul(2u32.pow(retry - 1))
                .min(p.max_delay);
            for _ in 0..50 {
                assert!(p.backoff(retry, &mut rng) <= cap);
            }
        }
    }

    #[test]
    fn api_error_parses_flat_and_nested_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("X-Request-Id", "abc".parse().expect("header"));
        let e = api_error(
            "scm",
            "list",
            400,
            &h,
            br#"{"error_code":"SCM.0005","error_msg":"bad"}"#,
        );
        assert_eq!(e.code(), Some("SCM.0005"));
        assert!(e.to_string().contains("abc"));
        let e = api_error(
            "iam",
            "t",
            401,
            &h,
            br#"{"error":{"message":"auth","title":"Unauthorized"}}"#,
        );
        assert!(e.to_string().contains("auth"));
        let e = api_error("pca", "x", 502, &h, b"<html>bad gateway</html>");
        assert!(e.to_string().contains("bad gateway"));
    }
}
