//! A local Huawei Cloud Certificate Manager: SCM v3, PCA v1 and IAM token issuance at one base
//! URL, signing real X.509 certificates, enforcing the documented rules and error codes,
//! verifying AK/SK signatures, and injecting faults. It is a test fixture first ([`Emulator::start`]
//! binds `127.0.0.1:0` and returns a handle) and the backend of `ccm-agent emulator` and the demo.
//!
//! Control endpoints live under `/_emulator/` (never authenticated, never faulted): the request
//! log, the clock, fault rules, token expiry, and the record of SCM pushes and deployments.
//!
//! # Independent of the client
//! The emulator reads requests and writes responses with its own types ([`wire`] and the body
//! structs next to each handler), written from the reference, so a serde mistake in the client
//! (`crate::cloud`) is not mirrored here. It uses from the client only what is not a wire type:
//! the `SDK-HMAC-SHA256` signature check (`cloud::auth`, held to the official SDK's vectors and
//! exercised by the SDK tests), `Secret` (a string that is redacted in `Debug`), rustls' crypto
//! provider, and [`Emulator::client`], a convenience that points a client at the emulator.
//!
//! # Readings of the reference
//! The emulator follows the API reference (`shared/seeds`); where a passage can be read two
//! ways, or says nothing, it commits to one reading, listed here with the reason. The modules
//! ([`scm`], [`pca::ca`], [`pca::cert`]) note smaller choices next to the code.
//! - SCM import `duplicate_check`: `true` refuses a certificate the account already holds
//!   (SCM.0063). The English pages say "true: The same certificate can be uploaded"; the SDK's
//!   text ("true：不同意上传相同证书") and the field's name say the opposite. The emulator follows
//!   the SDK's text, as the SDK is what users call the service with.
//! - SCM list `offset` is a record offset and `expired_days_since` keeps certificates valid or
//!   expired at most N days ago (the SDK's wording); see [`scm`].
//! - PCA `customized_extension`: the reference calls `value` "Custom attribute content", a string
//!   of 1..64 characters, without naming an ASN.1 type. It is written as a non-critical
//!   extension whose value is that string as a UTF8String, the type X.509 uses for text
//!   (RFC 5280, DirectoryString). The `object_identifier` must be "a dot-decimal notation
//!   string that complies with the ASN1 specifications": at least two arcs, the first 0..2, the
//!   second below 40 under 0 and 1 (anything else answers PCA.00020001). OIDs under id-ce
//!   (2.5.29) and id-pe (1.3.6.1.5.5.7.1) are refused too: those extensions have their own
//!   syntax, and a text value there would make the certificate unreadable.
//! - PCA export `type` IIS / TOMCAT, compressed: the zip holds `keystorePass.txt` and
//!   `server.pfx` / `server.jks` ("JKX certificate" in the reference, read as JKS, the format
//!   Tomcat's `.jks` keystores use). The password is fresh for every export (20 letters and
//!   digits, no line break in the file); the key, the certificate and the chain share it; the
//!   entry's alias is the common name in lower case. Uncompressed, these types stay refused
//!   ("it is not defined currently"). A certificate issued from a CSR has no key here, and a
//!   keystore without one serves neither server, so these two packages are refused for it
//!   (PCA.00020001); the reference does not say.
//! - PCA create CA `key_usages`: ignored for a root CA ("cannot be changed. The value you
//!   specified is ignored."), checked for a subordinate (known names, keyCertSign included).
//! - PCA export `is_compressed`: the SDK sends the strings "true"/"false", the reference's
//!   example a JSON boolean; both are taken.

pub mod faults;
pub mod iam;
pub mod pca;
pub mod scm;
mod server;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use faults::FaultRule;

use crate::cloud::Secret;

/// Defaults of a fresh emulator: fixed, documented demo credentials (never real ones).
pub const DEFAULT_ACCESS_KEY: &str = "EMULATORACCESSKEY0001";
pub const DEFAULT_SECRET_KEY: &str = "emulator-secret-key-not-for-production";
pub const DEFAULT_DOMAIN_ID: &str = "0970dd7a1300f5672ff2c003c60ae115";
pub const DEFAULT_DOMAIN_NAME: &str = "ccm-emulator";
pub const DEFAULT_USER_NAME: &str = "emulator-user";
pub const DEFAULT_PASSWORD: &str = "emulator-password";
/// How far `X-Sdk-Date` may be from the emulator's wall clock, as at the real gateway.
pub const SIGNATURE_MAX_SKEW: time::Duration = time::Duration::minutes(15);
/// Requests kept in the log for `/_emulator/requests`.
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// A canned starting state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    /// A root CA, a subordinate CA, private certificates and SCM certificates at various
    /// distances from expiry.
    Demo,
}

impl std::str::FromStr for Seed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "demo" => Ok(Seed::Demo),
            other => Err(format!("unknown seed {other:?} (known: demo)")),
        }
    }
}

/// How to start an emulator.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    pub access_key: String,
    pub secret_key: Secret,
    pub domain_id: String,
    pub domain_name: String,
    pub user_name: String,
    pub password: Secret,
    pub seed: Option<Seed>,
    /// Load state from this file at start (when it exists) and save it after every change.
    pub state_file: Option<PathBuf>,
    /// Serve HTTPS with a generated CA and server certificate instead of plain HTTP.
    pub tls: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: DEFAULT_ACCESS_KEY.to_owned(),
            secret_key: Secret::new(DEFAULT_SECRET_KEY),
            domain_id: DEFAULT_DOMAIN_ID.to_owned(),
            domain_name: DEFAULT_DOMAIN_NAME.to_owned(),
            user_name: DEFAULT_USER_NAME.to_owned(),
            password: Secret::new(DEFAULT_PASSWORD),
            seed: None,
            state_file: None,
            tls: false,
        }
    }
}

/// Everything the services store; saved to the state file when persistence is on.
#[derive(Default, Serialize, Deserialize)]
pub struct State {
    pub scm: scm::ScmStore,
    pub pca: pca::PcaStore,
    /// How far the emulator's clock runs ahead of the wall clock, in seconds.
    #[serde(default)]
    pub clock_offset_secs: i64,
}

/// An issued IAM token.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub expires_at: OffsetDateTime,
    pub user_name: String,
}

/// One request as it arrived, for `/_emulator/requests` and tests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    pub seq: u64,
    /// Emulator clock, RFC 3339.
    pub time: String,
    pub method: String,
    pub path: String,
    pub query: String,
    /// `service.operation`, e.g. `scm.list_certificates`; empty for unknown paths.
    pub operation: String,
    /// `aksk`, `token` or `none`.
    pub auth: String,
    pub status: u16,
    /// The fault applied, if any (`error`, `latency`, `timeout`, `drop`, `truncate`, `body`).
    pub fault: Option<String>,
}

pub(crate) struct Inner {
    pub(crate) config: EmulatorConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) tokens: Mutex<HashMap<String, TokenRecord>>,
    pub(crate) faults: Mutex<Vec<FaultRule>>,
    pub(crate) log: Mutex<std::collections::VecDeque<RequestRecord>>,
    /// Requests per operation since the start, not bounded by the log's capacity.
    pub(crate) counts: Mutex<std::collections::BTreeMap<String, u64>>,
    pub(crate) seq: std::sync::atomic::AtomicU64,
    /// Serialises writes of the state file.
    pub(crate) save_lock: Mutex<()>,
}

/// A handle on the emulator's state, shared by every request handler. Cheap to clone.
#[derive(Clone)]
pub struct Shared(pub(crate) Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler that panicked mid-update must not wedge the emulator for every later test.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(config: EmulatorConfig, state: State) -> Self {
        Shared(Arc::new(Inner {
            config,
            state: Mutex::new(state),
            tokens: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(std::collections::VecDeque::new()),
            counts: Mutex::new(std::collections::BTreeMap::new()),
            seq: std::sync::atomic::AtomicU64::new(0),
            save_lock: Mutex::new(()),
        }))
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.0.config
    }

    /// The emulator's clock: the wall clock plus the offset set by [`Shared::advance_clock`].
    pub fn now(&self) -> OffsetDateTime {
        let offset = lock(&self.0.state).clock_offset_secs;
        OffsetDateTime::now_utc() + time::Duration::seconds(offset)
    }

    /// Move the emulator's clock forward (or back, with a negative duration).
    pub fn advance_clock(&self, by: time::Duration) {
        {
            let mut s = lock(&self.0.state);
            s.clock_offset_secs = s.clock_offset_secs.saturating_add(by.whole_seconds());
        }
        self.save();
    }

    /// Run `f` with the state locked. Keep it short: no I/O, no key generation inside.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(&self.0.state))
    }

    /// Like [`Shared::with_state`], then save the state file when persistence is on.
    pub fn update_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = self.with_state(f);
        self.save();
        r
    }

    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.0.faults).push(rule);
    }

    pub fn clear_faults(&self) {
        lock(&self.0.faults).clear();
    }

    pub fn faults(&self) -> Vec<FaultRule> {
        lock(&self.0.faults).clone()
    }

    /// Take the first fault rule matching `operation` (and `target`, where the rule names one),
    /// counting it down. Used by the gate for whole requests, and by handlers for per-region and
    /// per-resource failures (`target` = region or resource id).
    pub fn take_fault(&self, operation: &str, target: Option<&str>) -> Option<FaultRule> {
        faults::take(&mut lock(&self.0.faults), operation, target)
    }

    /// Make every issued IAM token expired.
    pub fn expire_tokens(&self) {
        let past = self.now() - time::Duration::seconds(1);
        for t in lock(&self.0.tokens).values_mut() {
            t.expires_at = past;
        }
    }

    pub(crate) fn insert_token(&self, token: String, record: TokenRecord) {
        let mut tokens = lock(&self.0.tokens);
        let now = self.now();
        tokens.retain(|_, t| t.expires_at > now);
        tokens.insert(token, record);
    }

    pub(crate) fn token_valid(&self, token: &str) -> bool {
        let now = self.now();
        lock(&self.0.tokens)
            .get(token)
            .is_some_and(|t| t.expires_at > now)
    }

    /// The requests received so far, oldest first (the last [`REQUEST_LOG_CAPACITY`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.0.log).iter().cloned().collect()
    }

    /// How many requests for `operation` (e.g. `pca.create_certificate`) arrived.
    pub fn count_requests(&self, operation: &str) -> usize {
        lock(&self.0.log)
            .iter()
            .filter(|r| r.operation == operation)
            .count()
    }

    /// Requests per operation (`scm.list_certificates`, ...; `""` for unknown paths) since the
    /// emulator started. Unlike [`Shared::requests`] it is not bounded by
    /// [`REQUEST_LOG_CAPACITY`] and [`Shared::clear_requests`] does not reset it: take the
    /// difference of two readings.
    pub fn request_counts(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.0.counts).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.0.log).clear();
    }

    pub(crate) fn record(&self, mut rec: RequestRecord) {
        rec.seq = self
            .0
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        *lock(&self.0.counts)
            .entry(rec.operation.clone())
            .or_insert(0) += 1;
        let mut log = lock(&self.0.log);
        if log.len() >= REQUEST_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(rec);
    }

    /// Write the state file, when persistence is on. Failures are logged, not fatal: the
    /// emulator keeps serving from memory.
    pub fn save(&self) {
        let Some(path) = &self.0.config.state_file else {
            return;
        };
        let _guard = lock(&self.0.save_lock);
        let json = match serde_json::to_vec_pretty(&*lock(&self.0.state)) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "emulator: cannot serialise state");
                return;
            }
        };
        if let Err(e) = write_atomic(path, &json) {
            tracing::error!(path = %path.display(), error = %e, "emulator: cannot save state");
        }
    }
}

fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    // The state holds CA private keys: 0600 whatever the umask.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// An API error as SCM and PCA send it: `{"error_code": "...", "error_msg": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub msg: String,
}

impl ApiError {
    pub fn new(status: u16, code: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.into(),
            msg: msg.into(),
        }
    }

    /// 401 from the API gateway in front of every service.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(
            401,
            "APIGW.0301",
            format!("Incorrect IAM authentication information: {detail}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error_code": self.code, "error_msg": self.msg });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Decode a JSON request body, or answer the service's "bad parameter" error naming the cause.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    bad_request: impl Fn(String) -> ApiError,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request body: {e}")))
}

/// A running emulator.
pub struct Emulator {
    addr: SocketAddr,
    shared: Shared,
    tls_ca_pem: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// Bind, seed, and serve in the background.
    pub async fn start(config: EmulatorConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let state = match &config.state_file {
            Some(path) if path.exists() => {
                let data = std::fs::read(path)
                    .with_context(|| format!("reading emulator state {}", path.display()))?;
                serde_json::from_slice(&data)
                    .with_context(|| format!("emulator state {} does not parse", path.display()))?
            }
            _ => State::default(),
        };
        let fresh = match &config.state_file {
            Some(path) => !path.exists(),
            None => true,
        };
        let seed = config.seed;
        let shared = Shared::new(config, state);
        if let (Some(Seed::Demo), true) = (seed, fresh) {
            seed_demo(&shared).context("seeding the demo state")?;
        }
        shared.save();
        let listener = tokio::net::TcpListener::bind(shared.config().listen)
            .await
            .with_context(|| format!("binding {}", shared.config().listen))?;
        let addr = listener.local_addr()?;
        let (tls, tls_ca_pem) = if shared.config().tls {
            let (acceptor, ca) = server::tls_acceptor()?;
            (Some(acceptor), Some(ca))
        } else {
            (None, None)
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let router = server::router(shared.clone());
        let task = tokio::spawn(server::serve(listener, router, tls, shutdown.clone()));
        Ok(Self {
            addr,
            shared,
            tls_ca_pem,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of all three services, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls_ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA that signed the TLS server certificate, when serving HTTPS.
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.tls_ca_pem.as_deref()
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// AK/SK credentials the emulator accepts, with its account id.
    pub fn aksk(&self) -> crate::cloud::AkSk {
        let c = self.shared.config();
        crate::cloud::AkSk::new(c.access_key.clone(), c.secret_key.clone())
            .with_domain_id(c.domain_id.clone())
    }

    /// The IAM password identity the emulator accepts.
    pub fn password_identity(&self) -> crate::cloud::PasswordIdentity {
        let c = self.shared.config();
        crate::cloud::PasswordIdentity {
            user_name: c.user_name.clone(),
            password: c.password.clone(),
            domain_name: c.domain_name.clone(),
            project_name: None,
        }
    }

    /// A client for this emulator authenticated by AK/SK.
    pub fn client(&self) -> anyhow::Result<crate::cloud::Client> {
        let mut b = crate::cloud::Client::builder(
            crate::cloud::Endpoints::single(&self.base_url())?,
            crate::cloud::Credentials::AkSk(self.aksk()),
        );
        if let Some(ca) = &self.tls_ca_pem {
            b = b.add_root_pem(ca.as_bytes().to_vec());
        }
        Ok(b.build()?)
    }

    /// Stop serving and wait for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Fill a fresh emulator with the demo state.
pub fn seed_demo(shared: &Shared) -> anyhow::Result<()> {
    pca::seed_demo(shared)?;
    scm::seed_demo(shared)?;
    Ok(())
}
