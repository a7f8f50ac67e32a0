//! `[fleet]` and each certificate's `fleet` mode, as written (serde) and validated. Always
//! compiled, so that a binary built without the `fleet` feature can say clearly why it refuses
//! a configuration that asks for fleet mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::values::{Problem, SecretSource, format_duration, parse_duration};

/// Where fleet state lives in etcd when `prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/ccm-agent";
/// The lease a member keeps alive; a member silent this long loses its locks.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Each etcd request's timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd refuses shorter leases in practice (its minimum TTL follows the election timeout).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(600);

/// Whether this binary has fleet support compiled in (the cargo feature `fleet`).
pub const COMPILED_IN: bool = cfg!(feature = "fleet");

/// `[fleet]` as written.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub lease_ttl: Option<String>,
    pub timeout: Option<String>,
    pub member_id: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub user: Option<String>,
    /// Present only to be refused with a helpful message.
    pub password: Option<toml::Value>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub emergency_local: Option<bool>,
    /// `[fleet.rollout]`: the default staged rollout of shared certificates.
    pub rollout: Option<super::rollout::RawRollout>,
}

/// The validated `[fleet]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    /// etcd client URLs (`http://host:2379`, `https://host:2379`), tried in turn.
    pub endpoints: Vec<String>,
    /// Key prefix, starting with `/`, without a trailing `/`.
    pub prefix: String,
    pub lease_ttl: Duration,
    /// Each etcd request's timeout.
    pub timeout: Duration,
    /// This member's id in etcd (lock values, registration key); default: the host id.
    pub member_id: String,
    pub tls: Option<FleetTls>,
    /// etcd user and where its password comes from.
    pub auth: Option<FleetAuth>,
    /// A `shared` certificate that reaches its emergency floor while etcd is unreachable is
    /// renewed by this member alone (no cloud deploy).
    pub emergency_local: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetTls {
    /// CA certificate(s) that sign the etcd servers' certificates (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for etcd's `--client-cert-auth`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetAuth {
    pub user: String,
    pub password: SecretSource,
}

/// A certificate's place in the fleet (`fleet = "..."` in `[[certificates]]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FleetMode {
    /// As without a fleet: this host issues, installs and deploys on its own.
    #[default]
    Local,
    /// One member at a time (the holder of the certificate's lock) issues or exports and
    /// publishes; every member installs exactly that certificate; deploys happen once.
    Shared,
    /// Each member issues its own; the fleet owns the cloud deploys.
    PerHost,
}

impl FleetMode {
    pub const ALL: [(&'static str, FleetMode); 3] = [
        ("local", FleetMode::Local),
        ("shared", FleetMode::Shared),
        ("per-host", FleetMode::PerHost),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FleetMode::Local => "local",
            FleetMode::Shared => "shared",
            FleetMode::PerHost => "per-host",
        }
    }
}

impl std::fmt::Display for FleetMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate's `fleet` key; `None` (absent) is `local`.
pub fn check_mode(key: &str, value: Option<&String>) -> Result<FleetMode, Problem> {
    let Some(v) = value else {
        return Ok(FleetMode::Local);
    };
    FleetMode::ALL
        .iter()
        .find(|(n, _)| *n == v.as_str())
        .map(|(_, m)| *m)
        .ok_or_else(|| problem(key, format!("{v:?} is not one of local, shared, per-host")))
}

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.to_owned(),
        message: message.into(),
        position: None,
    }
}

fn abs_path(problems: &mut Vec<Problem>, key: &str, v: Option<&String>) -> Option<PathBuf> {
    let v = v?;
    if Path::new(v).is_absolute() {
        Some(PathBuf::from(v))
    } else {
        problems.push(problem(key, format!("{v:?} must be an absolute path")));
        None
    }
}

/// Whether `s` is a usable member id: 1 to 128 of `A-Z a-z 0-9 _ . -`.
pub fn valid_member_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses a secret's `*_env` / `*_file` pair: (key, env, file) → its source, if any.
pub type SecretParser<'a> =
    dyn Fn(&str, Option<&String>, Option<&String>) -> Result<Option<SecretSource>, Problem> + 'a;

/// Validates `[fleet]`. `host_id` is the member id when none is configured; `secret` parses a
/// secret's `*_env` / `*_file` pair the way the rest of the configuration does.
pub fn check(
    raw: &RawFleet,
    host_id: &str,
    secret: &SecretParser<'_>,
) -> Result<FleetSettings, Vec<Problem>> {
    let mut p = Vec::new();
    if !COMPILED_IN {
        p.push(problem(
            "fleet",
            "this ccm-agent was built without fleet support (the cargo feature `fleet`, which \
             needs protoc at build time): rebuild with `cargo build --features fleet`, or use the \
             Debian package or the container image, which have it; or remove [fleet] and the \
             certificates' fleet modes",
        ));
    }
    let endpoints = match &raw.endpoints {
        None => {
            p.push(problem(
                "fleet.endpoints",
                "missing: the etcd client URLs, e.g. [\"http://10.0.0.1:2379\"]",
            ));
            Vec::new()
        }
        Some(list) if list.is_empty() => {
            p.push(problem(
                "fleet.endpoints",
                "empty: give at least one etcd URL",
            ));
            Vec::new()
        }
        Some(list) => {
            for (i, e) in list.iter().enumerate() {
                let ok = url::Url::parse(e).ok().is_some_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some()
                        && u.port().is_some()
                        && matches!(u.path(), "" | "/")
                });
                if !ok {
                    p.push(problem(
                        &format!("fleet.endpoints[{i}]"),
                        format!("{e:?} is not an etcd URL like \"http://10.0.0.1:2379\" (scheme, host and port)"),
                    ));
                }
            }
            list.iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect()
        }
    };
    let prefix = raw
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    if !prefix.starts_with('/')
        || prefix.len() < 2
        || prefix.ends_with('/')
        || prefix.len() > 128
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        p.push(problem(
            "fleet.prefix",
            format!("{prefix:?}: start with '/', no trailing '/', no spaces, at most 128 characters (e.g. \"/ccm-agent\")"),
        ));
    }
    let duration = |p: &mut Vec<Problem>, key: &str, v: Option<&String>, default: Duration| match v
    {
        None => default,
        Some(v) => match parse_duration(v) {
            Ok(d) => d,
            Err(e) => {
                p.push(problem(key, e));
                default
            }
        },
    };
    let lease_ttl = duration(
        &mut p,
        "fleet.lease_ttl",
        raw.lease_ttl.as_ref(),
        DEFAULT_LEASE_TTL,
    );
    if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease_ttl) {
        p.push(problem(
            "fleet.lease_ttl",
            format!(
                "{} is not within {}..={}",
                format_duration(lease_ttl),
                format_duration(MIN_LEASE_TTL),
                format_duration(MAX_LEASE_TTL)
            ),
        ));
    }
    let timeout = duration(
        &mut p,
        "fleet.timeout",
        raw.timeout.as_ref(),
        DEFAULT_TIMEOUT,
    );
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        p.push(problem("fleet.timeout", "must be between 1ms and 60s"));
    }
    let member_id = raw.member_id.clone().unwrap_or_else(|| host_id.to_owned());
    if !valid_member_id(&member_id) {
        let key = if raw.member_id.is_some() {
            "fleet.member_id"
        } else {
            "agent.host_id"
        };
        p.push(problem(
            key,
            format!("{member_id:?} is not a member id: use 1 to 128 of A-Z a-z 0-9 _ . - (set fleet.member_id)"),
        ));
    }
    let ca = abs_path(&mut p, "fleet.tls_ca", raw.tls_ca.as_ref());
    let cert = abs_path(&mut p, "fleet.tls_cert", raw.tls_cert.as_ref());
    let key = abs_path(&mut p, "fleet.tls_key", raw.tls_key.as_ref());
    let identity = match (cert, key, raw.tls_cert.is_some(), raw.tls_key.is_some()) {
        (Some(c), Some(k), _, _) => Some((c, k)),
        (_, _, true, false) => {
            p.push(problem("fleet.tls_key", "missing: tls_cert needs tls_key"));
            None
        }
        (_, _, false, true) => {
            p.push(problem("fleet.tls_cert", "missing: tls_key needs tls_cert"));
            None
        }
        _ => None,
    };
    let any_https = endpoints.iter().any(|e| e.starts_with("https://"));
    let tls =
        (any_https || ca.is_some() || identity.is_some()).then_some(FleetTls { ca, identity });
    if tls.is_some() && !any_https && !endpoints.is_empty() {
        p.push(problem(
            "fleet.endpoints",
            "TLS settings are given but no endpoint is https://",
        ));
    }
    if any_https && endpoints.iter().any(|e| e.starts_with("http://")) {
        p.push(problem(
            "fleet.endpoints",
            "mixes http:// and https:// endpoints: use one scheme",
        ));
    }
    if raw.password.is_some() {
        p.push(problem(
            "fleet.password",
            "secrets are not accepted in the configuration file; use fleet.password_env (an \
             environment variable name) or fleet.password_file (a file or systemd credential)",
        ));
    }
    let password = match secret(
        "fleet.password",
        raw.password_env.as_ref(),
        raw.password_file.as_ref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            p.push(e);
            None
        }
    };
    let auth = match (&raw.user, password) {
        (Some(user), Some(password)) if !user.is_empty() => Some(FleetAuth {
            user: user.clone(),
            password,
        }),
        (Some(_), Some(_)) => {
            p.push(problem("fleet.user", "must not be empty"));
            None
        }
        (Some(_), None) => {
            if raw.password.is_none() {
                p.push(problem(
                    "fleet.password_env",
                    "missing: fleet.user needs fleet.password_env or fleet.password_file",
                ));
            }
            None
        }
        (None, Some(_)) => {
            p.push(problem(
                "fleet.user",
                "missing: a password is given without a user",
            ));
            None
        }
        (None, None) => None,
    };
    if !p.is_empty() {
        return Err(p);
    }
    Ok(FleetSettings {
        endpoints,
        prefix,
        lease_ttl,
        timeout,
        member_id,
        tls,
        auth,
        emergency_local: raw.emergency_local.unwrap_or(true),
    })
}
