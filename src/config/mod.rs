//! The configuration file, in two stages: [`raw`] mirrors the TOML (serde, unknown keys
//! rejected), then [`Config::from_str`] validates it into typed settings (durations, paths, enums,
//! defaults merged into each certificate), collecting every problem with the key that has it.
//! Secrets are never written in the file: they are named (environment variable, file, systemd
//! credential) and read by a separate step, [`Config::resolve_credentials`].
//!
//! `config/ccm-agent.example.toml` documents every key.

pub mod env;
pub mod include;
pub mod raw;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The certificate vocabulary is the domain's own ([`crate::pki`]); the CCM client's wire types
/// are converted at the client boundary (`agent::renew::wire`).
pub use crate::pki::{
    DistinguishedName, ExtendedKeyUsage, KeyAlgorithm, KeyUsage, SignatureHash, SubjectAltName,
};
pub use crate::values::{
    Problem, Schedule, SecretSource, format_duration, parse_duration, parse_mode,
};

use crate::cloud::{AkSk, Credentials, Endpoints, PasswordIdentity};
use crate::policy::{self, RenewPoint, RenewPolicy};
use raw::{RawAuth, RawCertificate, RawConfig, RawOutput, RawPca, RawRenew};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/ccm-agent";
/// Hourly, at minute 0 (UTC).
pub const DEFAULT_SCHEDULE: &str = "0 * * * *";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_CONCURRENCY: usize = 4;
pub const MAX_CONCURRENCY: usize = 64;
pub const DEFAULT_CLOUD_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
/// How often a pass lists SCM in full instead of reading only what changed.
pub const DEFAULT_FULL_CHECK_EVERY: Duration = Duration::from_secs(86_400);
pub const DEFAULT_REVOKE_GRACE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MODE: u32 = 0o644;
pub const DEFAULT_KEY_MODE: u32 = 0o600;
/// certbot's layout under one directory.
pub const CERT_FILE: &str = "cert.pem";
pub const CHAIN_FILE: &str = "chain.pem";
pub const FULLCHAIN_FILE: &str = "fullchain.pem";
pub const KEY_FILE: &str = "privkey.pem";
/// Environment variables tried, in order, when no access key source is configured (the SDK
/// sample conventions).
pub const DEFAULT_ACCESS_KEY_ENV: [&str; 2] = ["CLOUD_SDK_AK", "HUAWEICLOUD_SDK_AK"];
pub const DEFAULT_SECRET_KEY_ENV: [&str; 2] = ["CLOUD_SDK_SK", "HUAWEICLOUD_SDK_SK"];

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything wrong with a configuration file, naming the file and each key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or whatever name the text was given).
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn one(source_name: &str, key: &str, message: impl Into<String>) -> Self {
        Self {
            source_name: source_name.to_owned(),
            problems: vec![Problem {
                key: key.to_owned(),
                message: message.into(),
                position: None,
            }],
        }
    }

    /// Whether some problem is about this key (or a key under it).
    pub fn mentions(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key.starts_with(key))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{}: {one}", self.source_name),
            many => {
                write!(f, "{}: {} problems:", self.source_name, many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems and warnings while validating.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Checker {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
            position: None,
        });
    }

    fn warn(&mut self, key: &str, message: impl fmt::Display) {
        self.warnings.push(format!("{key}: {message}"));
    }

    fn duration(&mut self, key: &str, value: Option<&String>) -> Option<Duration> {
        let value = value?;
        match parse_duration(value) {
            Ok(d) if d.is_zero() => {
                self.err(key, "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    fn abs_path(&mut self, key: &str, value: Option<&String>) -> Option<PathBuf> {
        let value = value?;
        let path = PathBuf::from(value);
        if value.is_empty() || !path.is_absolute() {
            self.err(key, format!("{value:?} must be an absolute path"));
            return None;
        }
        Some(path)
    }

    fn mode(&mut self, key: &str, value: Option<&toml::Value>) -> Option<u32> {
        match parse_mode(value?) {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<&String>,
        options: &[(&str, T)],
    ) -> Option<T> {
        let value = value?;
        let found = options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(value))
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<_> = options.iter().map(|(n, _)| *n).collect();
            self.err(key, format!("{value:?} is not one of {}", names.join(", ")));
        }
        found
    }
}

/// How the configuration file spells an extended key usage: as the API's `extended_key_usage`
/// fields (`server_auth`), not RFC 5280's names (`serverAuth`).
fn eku_file_name(e: ExtendedKeyUsage) -> &'static str {
    match e {
        ExtendedKeyUsage::ServerAuth => "server_auth",
        ExtendedKeyUsage::ClientAuth => "client_auth",
        ExtendedKeyUsage::CodeSigning => "code_signing",
        ExtendedKeyUsage::EmailProtection => "email_protection",
        ExtendedKeyUsage::TimeStamping => "time_stamping",
    }
}

/// A domain enum's values with their names, for [`Checker::choice`].
fn named<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<(&'static str, T)> {
    all.iter().map(|v| (name(*v), *v)).collect()
}

// ---------------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------------

/// A validated configuration: nothing downstream needs to check it again.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub source_name: String,
    pub agent: AgentSettings,
    pub metrics: MetricsSettings,
    pub cloud: CloudSettings,
    pub certificates: Vec<ManagedCertificate>,
    /// The directories the `include` patterns read drop-ins from; the daemon watches them.
    pub include_dirs: Vec<PathBuf>,
    /// `[fleet]`: etcd coordination with other hosts; `None` when not configured.
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// Things that are allowed but probably not meant; print them at startup and in `check`.
    pub warnings: Vec<String>,
}

/// `[agent]`
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Journal, previous versions, generated keys awaiting issuance.
    pub state_dir: PathBuf,
    pub schedule: Schedule,
    /// Run one check at startup in addition to the schedule.
    pub check_on_start: bool,
    /// At most this many certificates are renewed at the same time.
    pub concurrency: usize,
    pub log_format: LogFormat,
    /// A tracing `EnvFilter` directive such as `info` or `ccm_agent=debug`.
    pub log_level: String,
    /// Identifies this host in the renewal jitter; `None`: the system host name.
    pub host_id: Option<String>,
    /// Backoff after a failed renewal: first delay cap and largest delay.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How often a pass lists SCM in full; between, one page of recent changes is read.
    pub full_check_every: Duration,
}

impl AgentSettings {
    /// The configured host id, else the system host name, else `"localhost"`.
    pub fn effective_host_id(&self) -> String {
        self.host_id
            .clone()
            .or_else(system_host_id)
            .unwrap_or_else(|| "localhost".to_owned())
    }
}

/// The kernel's host name (`/proc/sys/kernel/hostname`, else `/etc/hostname`).
pub fn system_host_id() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[metrics]`
#[derive(Clone, Debug)]
pub struct MetricsSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` when disabled.
    pub listen: Option<SocketAddr>,
}

/// `[cloud]`
#[derive(Clone, Debug)]
pub struct CloudSettings {
    pub endpoints: Endpoints,
    pub region: Option<String>,
    pub auth: AuthSettings,
    /// Extra CA certificates (PEM) trusted for the cloud endpoints.
    pub ca_bundle: Option<PathBuf>,
    pub timeout: Duration,
}

/// `[cloud.auth]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthSettings {
    AkSk {
        access_key: SecretSource,
        secret_key: SecretSource,
        security_token: Option<SecretSource>,
        domain_id: Option<String>,
        project_id: Option<String>,
    },
    Password {
        user_name: String,
        domain_name: String,
        project_name: Option<String>,
        password: SecretSource,
    },
}

/// One certificate kept fresh on this host (`[[certificates]]`, defaults merged in).
#[derive(Clone, Debug)]
pub struct ManagedCertificate {
    /// Unique, `[A-Za-z0-9_.-]`: used in file names, the state directory and metric labels.
    pub name: String,
    pub source: CertificateSource,
    pub renew: RenewPolicy,
    pub output: Output,
    /// Cloud targets (`[certificates.deploy]`); `None` when not configured.
    pub deploy: Option<crate::deploy::DeploySpec>,
    /// What to run and check after the files changed (empty: nothing).
    pub reload: crate::reload::ReloadPlan,
    /// Its place in the fleet (`local` without `[fleet]`).
    pub fleet: crate::fleet::FleetMode,
    /// How a shared certificate's new generation reaches the members (`None`: all at once).
    pub rollout: Option<crate::fleet::rollout::RolloutSettings>,
}

// Built once per configuration load: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum CertificateSource {
    Pca(PcaSource),
    Scm(ScmSelector),
}

/// A private certificate issued by PCA.
#[derive(Clone, Debug, PartialEq)]
pub struct PcaSource {
    /// The issuing CA (`issuer_id`, a UUID).
    pub ca_id: String,
    pub mode: PcaMode,
    /// The subject; validation guarantees a common name ([`PcaSource::common_name`]).
    pub subject: DistinguishedName,
    pub sans: Vec<SubjectAltName>,
    pub key_algorithm: KeyAlgorithm,
    pub signature_algorithm: SignatureHash,
    pub validity: ValidityPeriod,
    pub key_usages: Vec<KeyUsage>,
    pub extended_key_usage: Vec<ExtendedKeyUsage>,
    /// Revoke the superseded certificate (reason SUPERSEDED) this long after the new one is
    /// installed; `None`: never revoke.
    pub revoke_superseded_after: Option<Duration>,
}

impl PcaSource {
    /// The subject's common name (always set once the configuration is validated).
    pub fn common_name(&self) -> &str {
        self.subject.common_name.as_deref().unwrap_or_default()
    }
}

/// Where the private key is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcaMode {
    /// On this host; only a CSR is sent (`POST /v1/private-certificates/csr`). The key never
    /// leaves the host.
    Csr,
    /// By PCA (`POST /v1/private-certificates`), fetched with the export call.
    Apply,
}

macro_rules! api_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [(&'static str, $name)] = &[$(($s, $name::$variant)),+];
            /// The API's spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

api_enum!(
    /// `validity.type`: YEAR (12 months), MONTH (31 days), DAY, HOUR.
    ValidityUnit { Year = "YEAR", Month = "MONTH", Day = "DAY", Hour = "HOUR" }
);

/// Private certificates may live at most 20 years (API reference, `Validity`).
const MAX_VALIDITY_YEARS: u32 = 20;

/// `validity = { type = "DAY", value = 90 }`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidityPeriod {
    pub unit: ValidityUnit,
    pub value: u32,
}

impl ValidityPeriod {
    pub fn to_api(self) -> crate::cloud::pca::Validity {
        crate::cloud::pca::Validity {
            kind: self.unit.as_str().to_owned(),
            value: i64::from(self.value),
            start_from: None,
        }
    }

    /// The shortest lifetime this can mean (a year counted as 365 days, a month as 31).
    pub fn min_duration(self) -> Duration {
        let unit = match self.unit {
            ValidityUnit::Year => 365 * 86400,
            ValidityUnit::Month => 31 * 86400,
            ValidityUnit::Day => 86400,
            ValidityUnit::Hour => 3600,
        };
        Duration::from_secs(unit * u64::from(self.value))
    }

    fn max_value(unit: ValidityUnit) -> u32 {
        match unit {
            ValidityUnit::Year => MAX_VALIDITY_YEARS,
            ValidityUnit::Month => MAX_VALIDITY_YEARS * 12,
            ValidityUnit::Day => MAX_VALIDITY_YEARS * 365,
            ValidityUnit::Hour => MAX_VALIDITY_YEARS * 365 * 24,
        }
    }
}

/// Which SCM certificate to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScmSelector {
    Id(String),
    /// The newest valid certificate with this name.
    Name(String),
    /// The newest valid certificate for this domain.
    Domain(String),
}

/// A file owner or group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Name(String),
    Id(u32),
}

/// Where and how the certificate is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub cert: Option<PathBuf>,
    pub chain: Option<PathBuf>,
    pub fullchain: Option<PathBuf>,
    pub key: PathBuf,
    pub pkcs12: Option<Pkcs12Output>,
    pub owner: Option<Owner>,
    pub group: Option<Owner>,
    /// Mode of the certificate, chain and full chain files.
    pub mode: u32,
    /// Mode of the key and PKCS#12 files.
    pub key_mode: u32,
}

/// The configured output files, as the reload hooks' environment names them.
impl From<&Output> for crate::reload::InstalledPaths {
    fn from(o: &Output) -> Self {
        crate::reload::InstalledPaths {
            cert: o.cert.clone(),
            chain: o.chain.clone(),
            fullchain: o.fullchain.clone(),
            key: Some(o.key.clone()),
        }
    }
}

impl Output {
    /// Every file written, for collision checks and cleanup.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = [&self.cert, &self.chain, &self.fullchain]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect();
        v.push(&self.key);
        if let Some(p) = &self.pkcs12 {
            v.push(&p.path);
        }
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs12Output {
    pub path: PathBuf,
    /// `None`: an empty password.
    pub password: Option<SecretSource>,
}

// ---------------------------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Read and validate a file, with the `CCM_AGENT__*` variables of the process environment
    /// applied (see [`env`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::load_with_env(path, vars)
    }

    /// [`Config::load`] with the given variables instead of the process environment.
    pub fn load_with_env(
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(&name, "", format!("cannot read: {e}")))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        Self::parse(&text, &name, base, vars)
    }

    /// Parse TOML text, apply the `CCM_AGENT__*` variables among `vars` (see [`env`]), and
    /// validate. Problems in the text keep their line and column; once variables are applied,
    /// the source is named with them (`ccm-agent.toml with CCM_AGENT__CLOUD__REGION`).
    /// Relative `include` patterns are taken from the current directory.
    pub fn from_str_with_env(
        text: &str,
        source_name: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::parse(text, source_name, None, vars)
    }

    /// [`Config::from_str_with_env`], with relative `include` patterns taken from `base`.
    fn parse(
        text: &str,
        source_name: &str,
        base: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, source_name, &e))?;
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(env::PREFIX))
            .collect();
        if vars.is_empty() {
            let raw = include::expand(raw, base, source_name)?;
            return Self::from_raw(raw, source_name);
        }
        let mut table: toml::Table = text
            .parse()
            .map_err(|e| toml_error(text, source_name, &e))?;
        let applied = env::apply_overrides(&mut table, vars).map_err(|problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        })?;
        let source = format!("{source_name} with {}", applied.join(", "));
        let raw: RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigError::one(
                        &source,
                        "",
                        truncate_chars(e.to_string().trim_end(), MESSAGE_MAX_CHARS),
                    )
                })?;
        let raw = include::expand(raw, base, &source)?;
        Self::from_raw(raw, &source)
    }

    /// Parse and validate TOML text; `source_name` names it in errors.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, source_name, &e))?;
        let raw = include::expand(raw, None, source_name)?;
        Self::from_raw(raw, source_name)
    }

    /// Stage 2: validate a parsed file.
    pub fn from_raw(raw: RawConfig, source_name: &str) -> Result<Self, ConfigError> {
        let mut c = Checker::default();
        let agent = check_agent(&mut c, &raw.agent);
        let metrics = check_metrics(&mut c, &raw.metrics);
        let cloud = match &raw.cloud {
            Some(cloud) => check_cloud(&mut c, cloud),
            None => {
                c.err(
                    "cloud",
                    "missing: the [cloud] table (region or endpoint, and auth) is required",
                );
                None
            }
        };
        let certificates = check_certificates(&mut c, &raw);
        let fleet = check_fleet(&mut c, &raw, agent.as_ref(), &certificates);
        match (agent, metrics, cloud) {
            (Some(agent), Some(metrics), Some(cloud)) if c.problems.is_empty() => Ok(Config {
                source_name: source_name.to_owned(),
                agent,
                metrics,
                cloud,
                certificates,
                include_dirs: raw.include_dirs,
                fleet,
                warnings: c.warnings,
            }),
            _ => Err(ConfigError {
                source_name: source_name.to_owned(),
                problems: c.problems,
            }),
        }
    }

    /// Read the cloud credentials from where the configuration says they are. `env` looks up
    /// environment variables (pass `|k| std::env::var(k).ok()` in production).
    pub fn resolve_credentials(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Credentials, ConfigError> {
        let mut problems = Vec::new();
        let mut get = |key: &str, source: &SecretSource| match source.resolve(env) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(Problem {
                    key: format!("cloud.auth.{key}"),
                    message: e,
                    position: None,
                });
                None
            }
        };
        let creds = match &self.cloud.auth {
            AuthSettings::AkSk {
                access_key,
                secret_key,
                security_token,
                domain_id,
                project_id,
            } => {
                let ak = get("access_key", access_key);
                let sk = get("secret_key", secret_key);
                let token = security_token.as_ref().map(|t| get("security_token", t));
                match (ak, sk, token) {
                    (Some(ak), Some(sk), None) => Some((ak, sk, None)),
                    (Some(ak), Some(sk), Some(Some(t))) => Some((ak, sk, Some(t))),
                    _ => None,
                }
                .map(|(ak, sk, token)| {
                    let mut aksk = AkSk::new(ak.expose(), sk);
                    aksk.domain_id = domain_id.clone();
                    aksk.project_id = project_id.clone();
                    aksk.security_token = token;
                    Credentials::AkSk(aksk)
                })
            }
            AuthSettings::Password {
                user_name,
                domain_name,
                project_name,
                password,
            } => get("password", password).map(|password| {
                Credentials::Password(PasswordIdentity {
                    user_name: user_name.clone(),
                    password,
                    domain_name: domain_name.clone(),
                    project_name: project_name.clone(),
                })
            }),
        };
        creds.ok_or_else(|| ConfigError {
            source_name: self.source_name.clone(),
            problems,
        })
    }

    pub fn certificate(&self, name: &str) -> Option<&ManagedCertificate> {
        self.certificates.iter().find(|c| c.name == name)
    }
}

/// How much of a source line a parse error echoes: a window around the error's column.
const ECHO_MAX_CHARS: usize = 200;
/// How much of the parser's message is kept: enough for the list of known keys that an unknown
/// key gets, not a whole value that a type error quotes.
const MESSAGE_MAX_CHARS: usize = 1000;
/// Words that make an echoed line a secret's: its value is not shown.
const SECRET_WORDS: [&str; 5] = ["secret", "password", "passwd", "token", "private"];

/// A TOML syntax or type error, rendered like toml's own (location, the line, a caret, the
/// message), except that the echoed line is cut to [`ECHO_MAX_CHARS`] around the column, a line
/// that sets a secret (or lies inside a multi-line string) is not shown, and the message is
/// capped: an error must neither print a secret nor flood the terminal.
fn toml_error(text: &str, source_name: &str, e: &toml::de::Error) -> ConfigError {
    let message = truncate_chars(e.message().trim_end(), MESSAGE_MAX_CHARS);
    let located = e.span().map(|span| {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let before = &text[..start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_no = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        let line = text[line_start..].split('\n').next().unwrap_or("");
        let line = line.strip_suffix('\r').unwrap_or(line);
        let in_multiline_string = before[..line_start].matches("\"\"\"").count() % 2 == 1
            || before[..line_start].matches("\'\'\'").count() % 2 == 1;
        let (echo, caret) = echo_line(line, column, in_multiline_string);
        let gutter = " ".repeat(line_no.to_string().len());
        let rendered = format!(
            "TOML parse error at line {line_no}, column {column}\n{gutter} |\n{line_no} | {echo}\n\
             {gutter} | {}^\n{message}",
            " ".repeat(caret)
        );
        (rendered, (line_no, column))
    });
    let (message, position) = match located {
        Some((rendered, position)) => (rendered, Some(position)),
        None => (format!("TOML parse error: {message}"), None),
    };
    ConfigError {
        source_name: source_name.to_owned(),
        problems: vec![Problem {
            key: String::new(),
            message,
            position,
        }],
    }
}

/// What a parse error shows of `line` (1-based `column`), and the caret's offset in it.
fn echo_line(line: &str, column: usize, hidden: bool) -> (String, usize) {
    if hidden {
        return ("<inside a multi-line string: not shown>".to_owned(), 0);
    }
    let lower = line.to_ascii_lowercase();
    if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
        let echo = match line.split_once('=') {
            Some((key, _)) => format!("{}= <redacted>", truncate_chars(key, ECHO_MAX_CHARS)),
            None => "<redacted: the line may hold a secret>".to_owned(),
        };
        let caret = (column - 1).min(echo.chars().count());
        return (echo, caret);
    }
    let len = line.chars().count();
    if len <= ECHO_MAX_CHARS {
        return (line.to_owned(), column - 1);
    }
    // A window of ECHO_MAX_CHARS around the column, marked where it was cut.
    let from = (column - 1)
        .saturating_sub(ECHO_MAX_CHARS / 2)
        .min(len - ECHO_MAX_CHARS);
    let window: String = line.chars().skip(from).take(ECHO_MAX_CHARS).collect();
    let (head, tail) = (
        if from > 0 { "..." } else { "" },
        if from + ECHO_MAX_CHARS < len {
            "..."
        } else {
            ""
        },
    );
    (
        format!("{head}{window}{tail}"),
        head.len() + (column - 1 - from).min(ECHO_MAX_CHARS),
    )
}

/// `s` cut to `max` characters, with `...` where it was cut.
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn check_agent(c: &mut Checker, a: &raw::RawAgent) -> Option<AgentSettings> {
    let state_dir = match &a.state_dir {
        Some(_) => c.abs_path("agent.state_dir", a.state_dir.as_ref()),
        None => Some(PathBuf::from(DEFAULT_STATE_DIR)),
    };
    let schedule_text = a.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    let schedule = match Schedule::parse(schedule_text) {
        Ok(s) => Some(s),
        Err(e) => {
            c.err("agent.schedule", e);
            None
        }
    };
    let concurrency = match a.concurrency {
        None => DEFAULT_CONCURRENCY,
        Some(n) if (1..=MAX_CONCURRENCY as i64).contains(&n) => n as usize,
        Some(n) => {
            c.err(
                "agent.concurrency",
                format!("{n} is not within 1..={MAX_CONCURRENCY}"),
            );
            DEFAULT_CONCURRENCY
        }
    };
    let log_format = match &a.log_format {
        None => LogFormat::Text,
        Some(_) => c
            .choice(
                "agent.log_format",
                a.log_format.as_ref(),
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )
            .unwrap_or(LogFormat::Text),
    };
    let log_level = a.log_level.clone().unwrap_or_else(|| "info".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        c.err(
            "agent.log_level",
            format!("{log_level:?} is not a log filter: {e}"),
        );
    }
    if let Some(h) = &a.host_id
        && h.trim().is_empty()
    {
        c.err(
            "agent.host_id",
            "must not be empty (leave it out to use the host name)",
        );
    }
    let retry_initial = c
        .duration("agent.retry_initial", a.retry_initial.as_ref())
        .unwrap_or(DEFAULT_RETRY_INITIAL);
    let retry_max = c
        .duration("agent.retry_max", a.retry_max.as_ref())
        .unwrap_or(DEFAULT_RETRY_MAX);
    if retry_max < retry_initial {
        c.err(
            "agent.retry_max",
            format!(
                "{} is shorter than agent.retry_initial ({})",
                format_duration(retry_max),
                format_duration(retry_initial)
            ),
        );
    }
    let full_check_every = c
        .duration("agent.full_check_every", a.full_check_every.as_ref())
        .unwrap_or(DEFAULT_FULL_CHECK_EVERY);
    if full_check_every.is_zero() {
        c.err(
            "agent.full_check_every",
            "must be longer than 0 (\"1h\" lists SCM in full every hour)",
        );
    }
    Some(AgentSettings {
        state_dir: state_dir?,
        schedule: schedule?,
        check_on_start: a.check_on_start.unwrap_or(true),
        concurrency,
        log_format,
        log_level,
        host_id: a.host_id.clone(),
        retry_initial,
        retry_max,
        full_check_every,
    })
}

fn check_metrics(c: &mut Checker, m: &raw::RawMetrics) -> Option<MetricsSettings> {
    if m.enabled == Some(false) {
        if m.listen.is_some() {
            c.warn("metrics.listen", "ignored: metrics are disabled");
        }
        return Some(MetricsSettings { listen: None });
    }
    let text = m.listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN);
    match text.parse::<SocketAddr>() {
        Ok(addr) => {
            if !addr.ip().is_loopback() {
                c.warn(
                    "metrics.listen",
                    format!("{addr} is reachable from other hosts (metrics and health have no authentication)"),
                );
            }
            Some(MetricsSettings { listen: Some(addr) })
        }
        Err(_) => {
            c.err(
                "metrics.listen",
                format!("{text:?} is not an address:port such as \"127.0.0.1:9464\""),
            );
            None
        }
    }
}

fn check_cloud(c: &mut Checker, cloud: &raw::RawCloud) -> Option<CloudSettings> {
    let endpoints = match (&cloud.region, &cloud.endpoint) {
        (Some(_), Some(_)) => {
            c.err(
                "cloud.endpoint",
                "set either cloud.region or cloud.endpoint, not both",
            );
            None
        }
        (Some(region), None) => Endpoints::for_region(region)
            .map_err(|e| c.err("cloud.region", e.to_string()))
            .ok(),
        (None, Some(url)) => Endpoints::single(url)
            .map_err(|e| c.err("cloud.endpoint", e.to_string()))
            .ok(),
        (None, None) => None,
    };
    let base_given = cloud.region.is_some() || cloud.endpoint.is_some();
    let per_service = [
        ("cloud.scm_endpoint", &cloud.scm_endpoint),
        ("cloud.pca_endpoint", &cloud.pca_endpoint),
        ("cloud.iam_endpoint", &cloud.iam_endpoint),
    ];
    if !base_given {
        let missing: Vec<_> = per_service
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() {
            c.err(
                "cloud",
                format!(
                    "no endpoints: set cloud.region, or cloud.endpoint, or all of \
                     cloud.scm_endpoint, cloud.pca_endpoint and cloud.iam_endpoint (missing {})",
                    missing.join(", ")
                ),
            );
        }
    }
    let mut parsed = [None, None, None];
    for ((key, value), slot) in per_service.iter().zip(parsed.iter_mut()) {
        if let Some(v) = value {
            match crate::cloud::parse_url(v) {
                Ok(url) => *slot = Some(url),
                Err(e) => c.err(*key, e.to_string()),
            }
        }
    }
    let [scm, pca, iam] = parsed;
    let endpoints = match endpoints {
        // Per-service URLs override the region's or the single endpoint's.
        Some(base) => Some(Endpoints {
            scm: scm.unwrap_or(base.scm),
            pca: pca.unwrap_or(base.pca),
            iam: iam.unwrap_or(base.iam),
        }),
        None if !base_given => match (scm, pca, iam) {
            (Some(scm), Some(pca), Some(iam)) => Some(Endpoints { scm, pca, iam }),
            _ => None,
        },
        None => None,
    };
    let ca_bundle = c.abs_path("cloud.ca_bundle", cloud.ca_bundle.as_ref());
    let timeout = c
        .duration("cloud.timeout", cloud.timeout.as_ref())
        .unwrap_or(DEFAULT_CLOUD_TIMEOUT);
    if timeout > Duration::from_secs(600) {
        c.err("cloud.timeout", "must be at most 10m");
    }
    let auth = check_auth(c, &cloud.auth, cloud.region.as_deref());
    Some(CloudSettings {
        endpoints: endpoints?,
        region: cloud.region.clone(),
        auth: auth?,
        ca_bundle,
        timeout,
    })
}

/// A secret's source from its `*_env` / `*_file` keys. Inline values were refused before.
fn secret_source(
    c: &mut Checker,
    key: &str,
    env: Option<&String>,
    file: Option<&String>,
) -> Option<Option<SecretSource>> {
    match (env, file) {
        (Some(_), Some(_)) => {
            c.err(
                format!("{key}_file"),
                format!("set either {key}_env or {key}_file, not both"),
            );
            None
        }
        (Some(name), None) => {
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !ok {
                c.err(
                    format!("{key}_env"),
                    format!("{name:?} is not an environment variable name"),
                );
                return None;
            }
            Some(Some(SecretSource::Env(vec![name.clone()])))
        }
        (None, Some(path)) => {
            let p = Path::new(path);
            if p.is_absolute() {
                Some(Some(SecretSource::File(p.to_path_buf())))
            } else if !path.is_empty()
                && p.components().count() == 1
                && matches!(p.components().next(), Some(Component::Normal(_)))
            {
                Some(Some(SecretSource::Credential(path.clone())))
            } else {
                c.err(
                    format!("{key}_file"),
                    format!(
                        "{path:?} must be an absolute path or a systemd credential name \
                         (a bare file name, read from $CREDENTIALS_DIRECTORY)"
                    ),
                );
                None
            }
        }
        (None, None) => Some(None),
    }
}

/// `[fleet]`, and the certificates' fleet modes against it: a mode other than `local` needs
/// `[fleet]`; a `shared` certificate must be one whose key the cloud can hand to every member
/// (not PCA CSR mode).
fn check_fleet(
    c: &mut Checker,
    raw: &RawConfig,
    agent: Option<&AgentSettings>,
    certificates: &[ManagedCertificate],
) -> Option<crate::fleet::FleetSettings> {
    use crate::fleet::FleetMode;
    let settings = raw.fleet.as_ref().and_then(|f| {
        let host_id = agent
            .map(AgentSettings::effective_host_id)
            .unwrap_or_default();
        let secret = |key: &str, env: Option<&String>, file: Option<&String>| {
            let mut inner = Checker::default();
            match secret_source(&mut inner, key, env, file) {
                Some(s) if inner.problems.is_empty() => Ok(s),
                _ => Err(inner.problems.into_iter().next().unwrap_or(Problem {
                    key: key.to_owned(),
                    message: "invalid".to_owned(),
                    position: None,
                })),
            }
        };
        crate::fleet::config::check(f, &host_id, &secret)
            .map_err(|problems| c.problems.extend(problems))
            .ok()
    });
    for (i, cert) in certificates.iter().enumerate() {
        if cert.fleet == FleetMode::Local {
            continue;
        }
        let key = format!("certificates[{i}].fleet");
        if raw.fleet.is_none() {
            c.err(
                &key,
                format!(
                    "certificate {:?} is {:?} but there is no [fleet] section (etcd endpoints)",
                    cert.name,
                    cert.fleet.as_str()
                ),
            );
        }
        if cert.fleet == FleetMode::Shared
            && let CertificateSource::Pca(p) = &cert.source
            && p.mode == PcaMode::Csr
        {
            c.err(
                &key,
                format!(
                    "certificate {:?} cannot be shared in PCA CSR mode: its private key is \
                     generated on one host and never leaves it, so the other members could not \
                     install it; use pca.mode = \"apply\" (PCA generates the key and every \
                     member exports it), or fleet = \"per-host\"",
                    cert.name
                ),
            );
        }
    }
    settings
}

fn refuse_inline(c: &mut Checker, key: &str, value: Option<&toml::Value>) {
    if value.is_some() {
        c.err(
            key,
            format!(
                "secrets are not accepted in the configuration file; use {key}_env (an \
                 environment variable name) or {key}_file (a file or systemd credential)"
            ),
        );
    }
}

fn check_auth(c: &mut Checker, a: &RawAuth, region: Option<&str>) -> Option<AuthSettings> {
    let method = match &a.method {
        None => "aksk",
        Some(m) if m == "aksk" || m == "password" => m.as_str(),
        Some(m) => {
            c.err(
                "cloud.auth.method",
                format!("{m:?} is not one of aksk, password"),
            );
            return None;
        }
    };
    refuse_inline(c, "cloud.auth.secret_key", a.secret_key.as_ref());
    refuse_inline(c, "cloud.auth.security_token", a.security_token.as_ref());
    refuse_inline(c, "cloud.auth.password", a.password.as_ref());
    let foreign: &[(&str, bool)] = if method == "aksk" {
        &[
            ("user_name", a.user_name.is_some()),
            ("domain_name", a.domain_name.is_some()),
            ("project_name", a.project_name.is_some()),
            ("password_env", a.password_env.is_some()),
            ("password_file", a.password_file.is_some()),
        ]
    } else {
        &[
            ("access_key", a.access_key.is_some()),
            ("access_key_env", a.access_key_env.is_some()),
            ("access_key_file", a.access_key_file.is_some()),
            ("secret_key_env", a.secret_key_env.is_some()),
            ("secret_key_file", a.secret_key_file.is_some()),
            ("security_token_env", a.security_token_env.is_some()),
            ("security_token_file", a.security_token_file.is_some()),
            ("domain_id", a.domain_id.is_some()),
            ("project_id", a.project_id.is_some()),
        ]
    };
    for (k, present) in foreign {
        if *present {
            c.err(
                format!("cloud.auth.{k}"),
                format!("does not apply to method = \"{method}\""),
            );
        }
    }
    let id_ok =
        |v: &String| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if method == "aksk" {
        let access_key = match (&a.access_key, &a.access_key_env, &a.access_key_file) {
            (Some(v), None, None) if !v.is_empty() => Some(SecretSource::Inline(v.clone())),
            (Some(_), None, None) => {
                c.err("cloud.auth.access_key", "must not be empty");
                None
            }
            (Some(_), _, _) => {
                c.err(
                    "cloud.auth.access_key",
                    "set only one of access_key, access_key_env, access_key_file",
                );
                None
            }
            (None, env, file) => {
                secret_source(c, "cloud.auth.access_key", env.as_ref(), file.as_ref())?.or_else(
                    || {
                        Some(SecretSource::Env(
                            DEFAULT_ACCESS_KEY_ENV.map(String::from).to_vec(),
                        ))
                    },
                )
            }
        };
        let secret_key = secret_source(
            c,
            "cloud.auth.secret_key",
            a.secret_key_env.as_ref(),
            a.secret_key_file.as_ref(),
        )
        .map(|s| {
            s.unwrap_or_else(|| {
                SecretSource::Env(DEFAULT_SECRET_KEY_ENV.map(String::from).to_vec())
            })
        });
        let security_token = secret_source(
            c,
            "cloud.auth.security_token",
            a.security_token_env.as_ref(),
            a.security_token_file.as_ref(),
        );
        for (k, v) in [("domain_id", &a.domain_id), ("project_id", &a.project_id)] {
            if let Some(v) = v
                && !id_ok(v)
            {
                c.err(
                    format!("cloud.auth.{k}"),
                    format!("{v:?} is not an id (letters, digits, '-')"),
                );
            }
        }
        Some(AuthSettings::AkSk {
            access_key: access_key?,
            secret_key: secret_key?,
            security_token: security_token?,
            domain_id: a.domain_id.clone(),
            project_id: a.project_id.clone(),
        })
    } else {
        let mut required = |k: &str, v: &Option<String>| match v {
            Some(v) if !v.is_empty() => Some(v.clone()),
            _ => {
                c.err(
                    format!("cloud.auth.{k}"),
                    "missing: required for method = \"password\"",
                );
                None
            }
        };
        let user_name = required("user_name", &a.user_name);
        let domain_name = required("domain_name", &a.domain_name);
        let password = match secret_source(
            c,
            "cloud.auth.password",
            a.password_env.as_ref(),
            a.password_file.as_ref(),
        ) {
            Some(Some(s)) => Some(s),
            Some(None) => {
                c.err(
                    "cloud.auth.password_env",
                    "missing: set password_env or password_file",
                );
                None
            }
            None => None,
        };
        Some(AuthSettings::Password {
            user_name: user_name?,
            domain_name: domain_name?,
            project_name: a.project_name.clone().or_else(|| region.map(str::to_owned)),
            password: password?,
        })
    }
}

/// Renewal settings of one level (defaults or a certificate), parsed but not merged.
#[derive(Default)]
struct PartialRenew {
    point: Option<RenewPoint>,
    jitter: Option<f64>,
    max_jitter: Option<Duration>,
    emergency_before: Option<Duration>,
}

fn check_renew(c: &mut Checker, prefix: &str, r: &RawRenew) -> PartialRenew {
    let key = |k: &str| format!("{prefix}{k}");
    let before = c.duration(&key("renew_before"), r.renew_before.as_ref());
    let fraction = r.renew_at_fraction.and_then(|f| {
        if f > 0.0 && f < 1.0 {
            Some(f)
        } else {
            c.err(
                key("renew_at_fraction"),
                format!("{f} is not between 0 and 1 (exclusive)"),
            );
            None
        }
    });
    let point = match (before, fraction) {
        (Some(_), Some(_)) => {
            c.err(
                key("renew_at_fraction"),
                "set either renew_before or renew_at_fraction, not both",
            );
            None
        }
        (Some(b), None) => Some(RenewPoint::Before(b)),
        (None, Some(f)) => Some(RenewPoint::AtFraction(f)),
        (None, None) => None,
    };
    let jitter = r.jitter.and_then(|j| {
        if (0.0..=policy::MAX_JITTER).contains(&j) {
            Some(j)
        } else {
            c.err(
                key("jitter"),
                format!("{j} is not between 0 and {}", policy::MAX_JITTER),
            );
            None
        }
    });
    PartialRenew {
        point,
        jitter,
        max_jitter: c.duration(&key("max_jitter"), r.max_jitter.as_ref()),
        emergency_before: c.duration(&key("emergency_before"), r.emergency_before.as_ref()),
    }
}

fn merge_renew(cert: PartialRenew, defaults: &PartialRenew) -> RenewPolicy {
    let builtin = RenewPolicy::default();
    RenewPolicy {
        point: cert.point.or(defaults.point).unwrap_or(builtin.point),
        jitter: cert.jitter.or(defaults.jitter).unwrap_or(builtin.jitter),
        max_jitter: cert.max_jitter.or(defaults.max_jitter),
        emergency_before: cert.emergency_before.or(defaults.emergency_before),
    }
}

/// PCA settings of one level, parsed but not merged.
#[derive(Default, Clone)]
struct PartialPca {
    ca_id: Option<String>,
    mode: Option<PcaMode>,
    subject: raw::RawSubject,
    sans: Option<Vec<SubjectAltName>>,
    key_algorithm: Option<KeyAlgorithm>,
    signature_algorithm: Option<SignatureHash>,
    validity: Option<ValidityPeriod>,
    key_usages: Option<Vec<KeyUsage>>,
    extended_key_usage: Option<Vec<ExtendedKeyUsage>>,
    revoke_superseded: Option<bool>,
    revoke_grace: Option<Duration>,
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn is_dns_name(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && s.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn check_san(c: &mut Checker, key: &str, v: &toml::Value) -> Option<SubjectAltName> {
    let (kind, value) = match v {
        toml::Value::String(s) => match s.split_once(':') {
            Some((k, v)) => (k.to_ascii_lowercase(), v.to_owned()),
            None => {
                c.err(key, format!("{s:?}: write type:value, e.g. \"dns:www.example.com\", \"ip:10.0.0.1\", \"email:a@example.com\", \"uri:spiffe://example/x\""));
                return None;
            }
        },
        toml::Value::Table(t) => {
            let unknown: Vec<_> = t.keys().filter(|k| *k != "type" && *k != "value").collect();
            if !unknown.is_empty() {
                c.err(
                    key,
                    format!("unknown keys {unknown:?}; a SAN table has `type` and `value`"),
                );
                return None;
            }
            match (
                t.get("type").and_then(|x| x.as_str()),
                t.get("value").and_then(|x| x.as_str()),
            ) {
                (Some(k), Some(v)) => (k.to_ascii_lowercase(), v.to_owned()),
                _ => {
                    c.err(key, "a SAN table needs string `type` and `value`");
                    return None;
                }
            }
        }
        other => {
            c.err(
                key,
                format!(
                    "expected \"type:value\" or {{ type, value }}, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    let bad = |c: &mut Checker, why: &str| {
        c.err(key, format!("{value:?}: {why}"));
        None
    };
    match kind.as_str() {
        "dns" => {
            if is_dns_name(&value) {
                Some(SubjectAltName::Dns(value))
            } else {
                bad(c, "not a DNS name")
            }
        }
        "ip" => match value.parse::<IpAddr>() {
            Ok(ip) => Some(SubjectAltName::Ip(ip)),
            Err(_) => bad(c, "not an IP address"),
        },
        "email" => {
            let ok = value.len() <= 256
                && value
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
            if ok {
                Some(SubjectAltName::Email(value))
            } else {
                bad(c, "not an email address")
            }
        }
        "uri" => match url::Url::parse(&value) {
            Ok(_) if value.len() <= 253 => Some(SubjectAltName::Uri(value)),
            Ok(_) => bad(c, "longer than 253 characters"),
            Err(e) => bad(c, &format!("not a URI ({e})")),
        },
        other => {
            c.err(
                key,
                format!("unknown SAN type {other:?} (dns, ip, email, uri)"),
            );
            None
        }
    }
}

fn check_pca(c: &mut Checker, prefix: &str, p: &RawPca) -> PartialPca {
    let key = |k: &str| format!("{prefix}{k}");
    let ca_id = p.ca_id.as_ref().and_then(|id| {
        if is_uuid(id) {
            Some(id.to_ascii_lowercase())
        } else {
            c.err(
                key("ca_id"),
                format!("{id:?} is not a CA id (a 36-character UUID)"),
            );
            None
        }
    });
    let mode = c.choice(
        &key("mode"),
        p.mode.as_ref(),
        &[("csr", PcaMode::Csr), ("apply", PcaMode::Apply)],
    );
    let subject = p.subject.clone().unwrap_or_default();
    let limits: [(&str, &Option<String>, usize, usize); 6] = [
        ("common_name", &subject.common_name, 1, 64),
        ("country", &subject.country, 2, 2),
        ("state", &subject.state, 1, 128),
        ("locality", &subject.locality, 1, 128),
        ("organization", &subject.organization, 1, 64),
        ("organizational_unit", &subject.organizational_unit, 1, 64),
    ];
    for (k, v, min, max) in limits {
        if let Some(v) = v {
            let n = v.chars().count();
            if n < min || n > max {
                c.err(
                    key(&format!("subject.{k}")),
                    format!("{v:?} must be {min} to {max} characters"),
                );
            }
        }
    }
    if let Some(cc) = &subject.country
        && !cc.bytes().all(|b| b.is_ascii_alphabetic())
    {
        c.err(
            key("subject.country"),
            format!("{cc:?} is not a two-letter country code"),
        );
    }
    let sans = p.sans.as_ref().map(|list| {
        if list.len() > 20 {
            c.err(
                key("sans"),
                format!("{} entries; PCA accepts at most 20", list.len()),
            );
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, v)| check_san(c, &key(&format!("sans[{i}]")), v))
            .collect::<Vec<_>>()
    });
    let key_algorithm = c.choice(
        &key("key_algorithm"),
        p.key_algorithm.as_ref(),
        &named(KeyAlgorithm::ALL, KeyAlgorithm::as_str),
    );
    let signature_algorithm = c.choice(
        &key("signature_algorithm"),
        p.signature_algorithm.as_ref(),
        &named(SignatureHash::ALL, SignatureHash::as_str),
    );
    let validity = p.validity.as_ref().and_then(|v| {
        let unit = match &v.kind {
            Some(_) => c.choice(&key("validity.type"), v.kind.as_ref(), ValidityUnit::ALL)?,
            None => {
                c.err(key("validity.type"), "missing (YEAR, MONTH, DAY or HOUR)");
                return None;
            }
        };
        let max = ValidityPeriod::max_value(unit);
        match v.value {
            Some(n) if n >= 1 && n <= i64::from(max) => Some(ValidityPeriod {
                unit,
                value: n as u32,
            }),
            Some(n) => {
                c.err(
                    key("validity.value"),
                    format!("{n} is not within 1..={max} for {unit} (at most 20 years)"),
                );
                None
            }
            None => {
                c.err(key("validity.value"), "missing");
                None
            }
        }
    });
    let key_usages = p.key_usages.as_ref().map(|vs| {
        vs.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                c.choice(
                    &key(&format!("key_usages[{i}]")),
                    Some(v),
                    &named(KeyUsage::ALL, KeyUsage::as_str),
                )
            })
            .collect()
    });
    let extended_key_usage = p.extended_key_usage.as_ref().map(|vs| {
        vs.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                c.choice(
                    &key(&format!("extended_key_usage[{i}]")),
                    Some(v),
                    &named(ExtendedKeyUsage::ALL, eku_file_name),
                )
            })
            .collect()
    });
    PartialPca {
        ca_id,
        mode,
        subject,
        sans,
        key_algorithm,
        signature_algorithm,
        validity,
        key_usages,
        extended_key_usage,
        revoke_superseded: p.revoke_superseded,
        revoke_grace: c.duration(&key("revoke_grace"), p.revoke_grace.as_ref()),
    }
}

fn merge_pca(c: &mut Checker, prefix: &str, cert: PartialPca, d: &PartialPca) -> Option<PcaSource> {
    let sans = cert.sans.or_else(|| d.sans.clone()).unwrap_or_default();
    let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
    let (s, ds) = (&cert.subject, &d.subject);
    let common_name = pick(&s.common_name, &ds.common_name).or_else(|| {
        sans.iter().find_map(|san| match san {
            SubjectAltName::Dns(n) => Some(n.clone()),
            _ => None,
        })
    });
    let common_name = match common_name {
        Some(cn) => Some(cn),
        None => {
            c.err(
                format!("{prefix}subject.common_name"),
                "missing: set it, or give a dns: SAN (the first one becomes the common name)",
            );
            None
        }
    };
    let subject = DistinguishedName {
        common_name,
        country: pick(&s.country, &ds.country),
        state: pick(&s.state, &ds.state),
        locality: pick(&s.locality, &ds.locality),
        organization: pick(&s.organization, &ds.organization),
        organizational_unit: pick(&s.organizational_unit, &ds.organizational_unit),
    };
    let ca_id = cert.ca_id.or_else(|| d.ca_id.clone());
    if ca_id.is_none() {
        c.err(
            format!("{prefix}ca_id"),
            "missing: set it here or in [defaults.pca]",
        );
    }
    let validity = cert.validity.or(d.validity);
    if validity.is_none() {
        c.err(
            format!("{prefix}validity"),
            "missing: set it here or in [defaults.pca], e.g. { type = \"DAY\", value = 90 }",
        );
    }
    let revoke = cert
        .revoke_superseded
        .or(d.revoke_superseded)
        .unwrap_or(false);
    let grace = cert.revoke_grace.or(d.revoke_grace);
    if !revoke && cert.revoke_grace.is_some() {
        c.warn(
            &format!("{prefix}revoke_grace"),
            "has no effect without revoke_superseded = true",
        );
    }
    if sans.is_empty() {
        c.warn(
            &format!("{prefix}sans"),
            "empty: TLS clients ignore the common name; add dns:/ip: SANs",
        );
    }
    Some(PcaSource {
        ca_id: ca_id?,
        mode: cert.mode.or(d.mode).unwrap_or(PcaMode::Csr),
        subject,
        sans,
        key_algorithm: cert
            .key_algorithm
            .or(d.key_algorithm)
            .unwrap_or(KeyAlgorithm::Ec256),
        signature_algorithm: cert
            .signature_algorithm
            .or(d.signature_algorithm)
            .unwrap_or(SignatureHash::Sha256),
        validity: validity?,
        key_usages: cert
            .key_usages
            .or_else(|| d.key_usages.clone())
            .unwrap_or_default(),
        extended_key_usage: cert
            .extended_key_usage
            .or_else(|| d.extended_key_usage.clone())
            .unwrap_or_default(),
        revoke_superseded_after: revoke.then(|| grace.unwrap_or(DEFAULT_REVOKE_GRACE)),
    })
}

fn check_scm(c: &mut Checker, prefix: &str, s: &raw::RawScm) -> Option<ScmSelector> {
    let given: Vec<_> = [("id", &s.id), ("name", &s.name), ("domain", &s.domain)]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
    let [(k, v)] = given.as_slice() else {
        c.err(
            prefix.trim_end_matches('.'),
            format!(
                "set exactly one of id, name, domain (found {})",
                if given.is_empty() {
                    "none".to_owned()
                } else {
                    given.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                }
            ),
        );
        return None;
    };
    let key = format!("{prefix}{k}");
    match *k {
        "id" if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Some(ScmSelector::Id((*v).clone()))
        }
        "id" => {
            c.err(
                key,
                format!("{v:?} is not an SCM certificate id (like \"scs1554192131150\")"),
            );
            None
        }
        "name" if !v.is_empty() && v.chars().count() <= 255 => {
            Some(ScmSelector::Name((*v).clone()))
        }
        "name" => {
            c.err(key, "must be 1 to 255 characters");
            None
        }
        _ if is_dns_name(v) => Some(ScmSelector::Domain(v.to_ascii_lowercase())),
        _ => {
            c.err(key, format!("{v:?} is not a domain name"));
            None
        }
    }
}

/// Output settings of one level, parsed but not merged.
#[derive(Default, Clone)]
struct PartialOutput {
    dir: Option<PathBuf>,
    cert: Option<String>,
    chain: Option<String>,
    fullchain: Option<String>,
    key: Option<String>,
    pkcs12: Option<String>,
    pkcs12_password: Option<SecretSource>,
    owner: Option<Owner>,
    group: Option<Owner>,
    mode: Option<u32>,
    key_mode: Option<u32>,
}

fn check_owner(c: &mut Checker, key: &str, v: Option<&toml::Value>) -> Option<Owner> {
    match v? {
        toml::Value::Integer(n) => match u32::try_from(*n) {
            Ok(id) => Some(Owner::Id(id)),
            Err(_) => {
                c.err(key, format!("{n} is not a user or group id"));
                None
            }
        },
        toml::Value::String(s) => {
            let ok = !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
                && !s.starts_with('-');
            if let Ok(id) = s.parse::<u32>() {
                Some(Owner::Id(id))
            } else if ok {
                Some(Owner::Name(s.clone()))
            } else {
                c.err(key, format!("{s:?} is not a user or group name"));
                None
            }
        }
        other => {
            c.err(
                key,
                format!(
                    "expected a name or a numeric id, found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

fn check_output(c: &mut Checker, prefix: &str, o: &RawOutput, is_defaults: bool) -> PartialOutput {
    let key = |k: &str| format!("{prefix}{k}");
    let dir = if is_defaults {
        if o.dir.is_some() {
            c.err(key("dir"), "belongs to a certificate; in [defaults.output] use base_dir (each certificate gets base_dir/<name>)");
        }
        if o.pkcs12_password_env.is_some() || o.pkcs12_password_file.is_some() {
            c.err(
                key("pkcs12_password_env"),
                "set PKCS#12 passwords per certificate",
            );
        }
        c.abs_path(&key("base_dir"), o.base_dir.as_ref())
    } else {
        if o.base_dir.is_some() {
            c.err(
                key("base_dir"),
                "belongs in [defaults.output]; for one certificate use dir",
            );
        }
        c.abs_path(&key("dir"), o.dir.as_ref())
    };
    refuse_inline(c, &key("pkcs12_password"), o.pkcs12_password.as_ref());
    let pkcs12_password = secret_source(
        c,
        &key("pkcs12_password"),
        o.pkcs12_password_env.as_ref(),
        o.pkcs12_password_file.as_ref(),
    )
    .flatten();
    let files = [
        ("cert", &o.cert),
        ("chain", &o.chain),
        ("fullchain", &o.fullchain),
        ("key", &o.key),
        ("pkcs12", &o.pkcs12),
    ];
    for (k, v) in files {
        if let Some(v) = v
            && is_defaults
            && Path::new(v).is_absolute()
        {
            c.err(key(k), format!("{v:?}: in [defaults.output] give a file name relative to each certificate's directory"));
        }
    }
    let key_mode = c.mode(&key("key_mode"), o.key_mode.as_ref());
    if let Some(m) = key_mode
        && m & 0o007 != 0
    {
        c.err(
            key("key_mode"),
            format!("{m:04o} lets other users access the private key; use 0600 or 0640"),
        );
    }
    PartialOutput {
        dir,
        cert: o.cert.clone(),
        chain: o.chain.clone(),
        fullchain: o.fullchain.clone(),
        key: o.key.clone(),
        pkcs12: o.pkcs12.clone(),
        pkcs12_password,
        owner: check_owner(c, &key("owner"), o.owner.as_ref()),
        group: check_owner(c, &key("group"), o.group.as_ref()),
        mode: c.mode(&key("mode"), o.mode.as_ref()),
        key_mode,
    }
}

fn merge_output(
    c: &mut Checker,
    prefix: &str,
    name: &str,
    o: PartialOutput,
    d: &PartialOutput,
) -> Option<Output> {
    let dir = o
        .dir
        .clone()
        .or_else(|| d.dir.as_ref().map(|base| base.join(name)));
    let mut ok = true;
    let mut resolve = |c: &mut Checker,
                       k: &str,
                       v: Option<String>,
                       default: Option<&str>|
     -> Option<PathBuf> {
        let v = v.or_else(|| dir.as_ref().and(default.map(str::to_owned)))?;
        if v.is_empty() {
            return None; // explicitly not written
        }
        let p = Path::new(&v);
        if p.is_absolute() {
            Some(p.to_path_buf())
        } else if let Some(dir) = &dir {
            Some(dir.join(p))
        } else {
            c.err(
                format!("{prefix}{k}"),
                format!("{v:?} is relative: set output.dir (or [defaults.output] base_dir), or give an absolute path"),
            );
            ok = false;
            None
        }
    };
    let cert = resolve(
        c,
        "cert",
        o.cert.or_else(|| d.cert.clone()),
        Some(CERT_FILE),
    );
    let chain = resolve(
        c,
        "chain",
        o.chain.or_else(|| d.chain.clone()),
        Some(CHAIN_FILE),
    );
    let fullchain = resolve(
        c,
        "fullchain",
        o.fullchain.or_else(|| d.fullchain.clone()),
        Some(FULLCHAIN_FILE),
    );
    let key = resolve(c, "key", o.key.or_else(|| d.key.clone()), Some(KEY_FILE));
    let pkcs12 = resolve(c, "pkcs12", o.pkcs12.or_else(|| d.pkcs12.clone()), None);
    if !ok {
        return None;
    }
    if key.is_none() {
        c.err(
            format!("{prefix}key"),
            "missing: set output.dir (certbot layout) or output.key",
        );
    }
    if cert.is_none() && fullchain.is_none() {
        c.err(
            format!("{prefix}cert"),
            "nothing to write: set output.dir, or output.cert or output.fullchain",
        );
    }
    if o.pkcs12_password.is_some() && pkcs12.is_none() {
        c.warn(
            &format!("{prefix}pkcs12_password_env"),
            "has no effect without output.pkcs12",
        );
    }
    Some(Output {
        cert,
        chain,
        fullchain,
        key: key?,
        pkcs12: pkcs12.map(|path| Pkcs12Output {
            path,
            password: o.pkcs12_password,
        }),
        owner: o.owner.or_else(|| d.owner.clone()),
        group: o.group.or_else(|| d.group.clone()),
        mode: o.mode.or(d.mode).unwrap_or(DEFAULT_MODE),
        key_mode: o.key_mode.or(d.key_mode).unwrap_or(DEFAULT_KEY_MODE),
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Lexically normalised, so `/a//b/./c` and `/a/b/c` collide.
fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn check_certificates(c: &mut Checker, raw: &RawConfig) -> Vec<ManagedCertificate> {
    let defaults_renew = check_renew(c, "defaults.", &raw.defaults.renew());
    let defaults_pca = check_pca(c, "defaults.pca.", &raw.defaults.pca);
    let defaults_output = check_output(c, "defaults.output.", &raw.defaults.output, true);
    if raw.certificates.is_empty() {
        c.warn(
            "certificates",
            "none configured: the agent has nothing to do",
        );
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut paths: HashMap<PathBuf, String> = HashMap::new();
    let mut scm_names: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let label = |i: usize| {
        raw.certificate_labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("certificates[{i}]"))
    };
    for (i, cert) in raw.certificates.iter().enumerate() {
        let prefix = label(i);
        if let Some(cert) = check_certificate(
            c,
            &prefix,
            cert,
            &defaults_renew,
            &defaults_pca,
            &defaults_output,
            raw.fleet.as_ref().and_then(|f| f.rollout.as_ref()),
        ) {
            if let Some(first) = names.insert(cert.name.clone(), i) {
                c.err(
                    format!("{prefix}.name"),
                    format!("{:?} is already the name of {}", cert.name, label(first)),
                );
            }
            for (field, path) in output_fields(&cert.output) {
                let key = format!("{prefix}.output.{field}");
                if let Some(other) = paths.insert(normalize(path), key.clone()) {
                    c.err(
                        &key,
                        format!("{} is also written by {other}", path.display()),
                    );
                }
            }
            if let (Some(d), CertificateSource::Pca(_)) = (&cert.deploy, &cert.source)
                && let Some(first) = scm_names.insert(d.scm_name.clone(), i)
            {
                c.err(
                    format!("{prefix}.deploy.scm_name"),
                    format!("{:?} is also the SCM name of {}", d.scm_name, label(first)),
                );
            }
            out.push(cert);
        }
    }
    out
}

fn output_fields(o: &Output) -> Vec<(&'static str, &Path)> {
    let mut v = Vec::new();
    for (k, p) in [
        ("cert", &o.cert),
        ("chain", &o.chain),
        ("fullchain", &o.fullchain),
    ] {
        if let Some(p) = p {
            v.push((k, p.as_path()));
        }
    }
    v.push(("key", o.key.as_path()));
    if let Some(p) = &o.pkcs12 {
        v.push(("pkcs12", p.path.as_path()));
    }
    v
}

fn check_certificate(
    c: &mut Checker,
    prefix: &str,
    raw: &RawCertificate,
    defaults_renew: &PartialRenew,
    defaults_pca: &PartialPca,
    defaults_output: &PartialOutput,
    fleet_rollout: Option<&crate::fleet::rollout::RawRollout>,
) -> Option<ManagedCertificate> {
    let name = match &raw.name {
        Some(n) if valid_name(n) => Some(n.clone()),
        Some(n) => {
            c.err(
                format!("{prefix}.name"),
                format!("{n:?}: use 1 to 64 of A-Z a-z 0-9 _ . - (not starting with '.')"),
            );
            None
        }
        None => {
            c.err(format!("{prefix}.name"), "missing");
            None
        }
    };
    let source_kind = match (raw.source.as_deref(), raw.pca.is_some(), raw.scm.is_some()) {
        (Some("pca"), _, true) | (Some("scm"), true, _) => {
            c.err(
                format!("{prefix}.source"),
                "the table of the other source is also present",
            );
            None
        }
        (Some("pca"), _, _) | (None, true, false) => Some("pca"),
        (Some("scm"), _, _) | (None, false, true) => Some("scm"),
        (Some(other), _, _) => {
            c.err(
                format!("{prefix}.source"),
                format!("{other:?} is not one of pca, scm"),
            );
            None
        }
        (None, true, true) => {
            c.err(
                format!("{prefix}.source"),
                "both [pca] and [scm] given: keep one",
            );
            None
        }
        (None, false, false) => {
            c.err(
                format!("{prefix}.source"),
                "missing: set source = \"pca\" (with a pca table) or \"scm\" (with an scm table)",
            );
            None
        }
    };
    let renew = check_renew(c, &format!("{prefix}."), &raw.renew());
    let renew = merge_renew(renew, defaults_renew);
    let source = match source_kind {
        Some("pca") => {
            let p = check_pca(
                c,
                &format!("{prefix}.pca."),
                &raw.pca.clone().unwrap_or_default(),
            );
            merge_pca(c, &format!("{prefix}.pca."), p, defaults_pca).map(CertificateSource::Pca)
        }
        Some(_) => match &raw.scm {
            Some(s) => check_scm(c, &format!("{prefix}.scm."), s).map(CertificateSource::Scm),
            None => {
                c.err(
                    format!("{prefix}.scm"),
                    "missing: an scm table with id, name or domain",
                );
                None
            }
        },
        None => None,
    };
    if let Some(CertificateSource::Pca(p)) = &source {
        let life = p.validity.min_duration();
        let show = |d: Duration| format_duration(d);
        if let RenewPoint::Before(b) = renew.point
            && b >= life
        {
            c.err(
                format!("{prefix}.renew_before"),
                format!(
                    "{} is not shorter than the validity ({} {})",
                    show(b),
                    p.validity.value,
                    p.validity.unit
                ),
            );
        }
        if let Some(e) = renew.emergency_before
            && e >= life
        {
            c.err(
                format!("{prefix}.emergency_before"),
                format!(
                    "{} is not shorter than the validity ({} {})",
                    show(e),
                    p.validity.value,
                    p.validity.unit
                ),
            );
        }
        if let Some(g) = p.revoke_superseded_after
            && g >= life
        {
            c.warn(
                &format!("{prefix}.pca.revoke_grace"),
                "not shorter than the validity: the old certificate expires first",
            );
        }
    }
    if let (RenewPoint::Before(b), Some(e)) = (renew.point, renew.emergency_before)
        && e >= b
    {
        c.warn(
            &format!("{prefix}.emergency_before"),
            "not shorter than renew_before: every renewal will be an emergency",
        );
    }
    let output = check_output(c, &format!("{prefix}.output."), &raw.output, false);
    let output = merge_output(
        c,
        &format!("{prefix}.output."),
        name.as_deref().unwrap_or("_"),
        output,
        defaults_output,
    );
    let deploy = match &raw.deploy {
        Some(d) => match crate::deploy::check(prefix, name.as_deref().unwrap_or("_"), d) {
            Ok(spec) => Some(Some(spec)),
            Err(problems) => {
                c.problems.extend(problems);
                None
            }
        },
        None => Some(None),
    };
    let reload = crate::reload::config::check(
        &format!("{prefix}."),
        &raw.reload,
        &raw.verify,
        raw.verify_timeout.as_ref(),
        raw.hooks.as_ref(),
    );
    c.problems.extend(reload.problems);
    c.warnings.extend(reload.warnings);
    let fleet = crate::fleet::config::check_mode(&format!("{prefix}.fleet"), raw.fleet.as_ref())
        .map_err(|p| c.problems.push(p))
        .ok();
    let rollout = match fleet {
        Some(crate::fleet::FleetMode::Shared) => {
            crate::fleet::rollout::check(prefix, fleet_rollout, raw.rollout.as_ref())
                .map_err(|p| c.problems.extend(p))
                .ok()
        }
        _ if raw.rollout.is_some() => {
            c.err(
                format!("{prefix}.rollout"),
                "a staged rollout is for fleet = \"shared\" certificates (one certificate \
                 that every member installs); this one is not shared",
            );
            None
        }
        _ => Some(None),
    };
    Some(ManagedCertificate {
        name: name?,
        source: source?,
        renew,
        output: output?,
        deploy: deploy?,
        reload: reload.plan,
        fleet: fleet?,
        rollout: rollout?,
    })
}

#[cfg(test)]
mod tests;
