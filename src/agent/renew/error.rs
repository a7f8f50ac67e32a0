//! Why a check failed: every variant names the certificate and the cause, [`RenewError::kind`]
//! is a short label for metrics, and [`RenewError::is_retryable`] says whether the failure may go
//! away on its own (the daemon retries every failure; a non-retryable one needs an operator, so it
//! is retried at the slow end of the backoff).

use std::path::PathBuf;

use crate::cloud::CloudError;
use crate::install::{InstallError, Rejection};
use crate::state::journal::JournalError;

/// PCA: "CA or certificate quantity exceeds quota".
pub const PCA_QUOTA: &str = "PCA.00030001";
/// PCA: "Operation not allowed in the current status" (a disabled or expired issuing CA).
pub const PCA_STATUS: &str = "PCA.00030201";
/// PCA: the issuing CA does not exist.
pub const PCA_ISSUER_NOT_FOUND: &str = "PCA.00030103";

/// A failed check. Whatever the variant, the files in place were left as they were.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// A CCM call failed: API error, timeout, network, malformed response.
    #[error("certificate {name}: {step}: {source}")]
    Cloud {
        name: String,
        /// What the agent was doing, e.g. "issue (POST /v1/private-certificates/csr)".
        step: String,
        #[source]
        source: Box<CloudError>,
    },
    /// The issuing CA cannot issue: disabled, pending, expired, deleted or not found.
    #[error("certificate {name}: the issuing CA {ca_id} cannot issue: {detail}")]
    CaUnavailable {
        name: String,
        ca_id: String,
        detail: String,
    },
    /// PCA refused to issue because the certificate quota is used up.
    #[error("certificate {name}: {step}: the private certificate quota is exhausted: {source}")]
    Quota {
        name: String,
        step: String,
        #[source]
        source: Box<CloudError>,
    },
    /// The candidate failed a check ([`InstallError::Rejected`]) or the install failed
    /// (filesystem). The message already names the certificate.
    #[error("{source}")]
    Install {
        name: String,
        #[source]
        source: Box<InstallError>,
    },
    /// The issuance journal could not be read or written.
    #[error("{source}")]
    Journal {
        name: String,
        #[source]
        source: JournalError,
    },
    /// The agent's own record of the certificate could not be read or written.
    #[error("certificate {name}: state file {}: {detail}", path.display())]
    State {
        name: String,
        path: PathBuf,
        detail: String,
    },
    /// SCM: no valid certificate matches (all expired).
    #[error("certificate {name}: {detail}")]
    NoValidCertificate { name: String, detail: String },
    /// SCM: nothing matches the configured id, name or domain.
    #[error("certificate {name}: {detail}")]
    NotFound { name: String, detail: String },
    /// The configuration asks for something the agent cannot do.
    #[error("certificate {name}: {detail}")]
    Config { name: String, detail: String },
    /// Generating the key or the CSR failed.
    #[error("certificate {name}: {detail}")]
    Crypto { name: String, detail: String },
}

impl RenewError {
    /// The certificate the error is about.
    pub fn name(&self) -> &str {
        match self {
            RenewError::Cloud { name, .. }
            | RenewError::CaUnavailable { name, .. }
            | RenewError::Quota { name, .. }
            | RenewError::Install { name, .. }
            | RenewError::Journal { name, .. }
            | RenewError::State { name, .. }
            | RenewError::NoValidCertificate { name, .. }
            | RenewError::NotFound { name, .. }
            | RenewError::Config { name, .. }
            | RenewError::Crypto { name, .. } => name,
        }
    }

    /// What kind of failure this is, for metrics, logs and the status file.
    pub fn kind(&self) -> FailureKind {
        match self {
            RenewError::Cloud { source, .. } => cloud_kind(source),
            RenewError::CaUnavailable { .. } => FailureKind::CaUnavailable,
            RenewError::Quota { .. } => FailureKind::Quota,
            RenewError::Install { source, .. } => match source.as_ref() {
                InstallError::Rejected { reason, .. } => rejection_kind(reason),
                InstallError::Fs { .. } | InstallError::Inconsistent { .. } => {
                    FailureKind::Filesystem
                }
                InstallError::UnknownPrincipal { .. } | InstallError::Unsupported { .. } => {
                    FailureKind::Config
                }
                InstallError::NoPrevious { .. }
                | InstallError::NoLastGood { .. }
                | InstallError::State { .. } => FailureKind::State,
            },
            RenewError::Journal { source, .. } => match source {
                JournalError::Fs { .. } => FailureKind::Filesystem,
                _ => FailureKind::State,
            },
            RenewError::State { .. } => FailureKind::State,
            RenewError::NoValidCertificate { .. } => FailureKind::Expired,
            RenewError::NotFound { .. } => FailureKind::NotFound,
            RenewError::Config { .. } => FailureKind::Config,
            RenewError::Crypto { .. } => FailureKind::Crypto,
        }
    }

    /// Whether the failure may clear by itself (network, timeouts, 5xx, throttling, a bad
    /// response, a full or read-only disk that someone fixes, a candidate the cloud may send
    /// correctly next time). `false` for what needs a change: quota, a disabled CA, a 4xx,
    /// configuration, a corrupt state file, an SCM certificate that nobody renewed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RenewError::Cloud { source, .. } => {
                source.is_retryable() || matches!(source.as_ref(), CloudError::Decode { .. })
            }
            RenewError::Install { source, .. } => !matches!(
                source.as_ref(),
                InstallError::UnknownPrincipal { .. } | InstallError::Unsupported { .. }
            ),
            RenewError::Journal { source, .. } => matches!(source, JournalError::Fs { .. }),
            RenewError::Crypto { .. } => true,
            RenewError::CaUnavailable { .. }
            | RenewError::Quota { .. }
            | RenewError::State { .. }
            | RenewError::NoValidCertificate { .. }
            | RenewError::NotFound { .. }
            | RenewError::Config { .. } => false,
        }
    }

    /// Classifies a failed CCM call made at `step`: quota and CA-state refusals get their own
    /// variants.
    pub(crate) fn cloud(name: &str, step: &str, ca_id: Option<&str>, e: CloudError) -> Self {
        match (e.code(), ca_id) {
            (Some(PCA_QUOTA), _) => RenewError::Quota {
                name: name.to_string(),
                step: step.to_string(),
                source: Box::new(e),
            },
            (Some(PCA_STATUS | PCA_ISSUER_NOT_FOUND), Some(ca)) => RenewError::CaUnavailable {
                name: name.to_string(),
                ca_id: ca.to_string(),
                detail: format!("{step}: {e}"),
            },
            _ => RenewError::Cloud {
                name: name.to_string(),
                step: step.to_string(),
                source: Box::new(e),
            },
        }
    }

    pub(crate) fn install(e: InstallError) -> Self {
        RenewError::Install {
            name: e.name().to_string(),
            source: Box::new(e),
        }
    }

    pub(crate) fn journal(name: &str, e: JournalError) -> Self {
        RenewError::Journal {
            name: name.to_string(),
            source: e,
        }
    }
}

fn cloud_kind(e: &CloudError) -> FailureKind {
    match e {
        CloudError::Api { .. } => FailureKind::Api,
        CloudError::Http { .. } => FailureKind::Network,
        CloudError::Timeout { .. } => FailureKind::Timeout,
        CloudError::Decode { .. } => FailureKind::Malformed,
        CloudError::Invalid(_) => FailureKind::Config,
    }
}

fn rejection_kind(r: &Rejection) -> FailureKind {
    match r {
        Rejection::CertificateUnparsable(_)
        | Rejection::ChainUnparsable(_)
        | Rejection::KeyUnparsable(_) => FailureKind::InvalidCertificate,
        Rejection::NotYetValid { .. } => FailureKind::NotYetValid,
        Rejection::Expired { .. } => FailureKind::Expired,
        Rejection::KeyMismatch => FailureKind::KeyMismatch,
        Rejection::Chain(_) => FailureKind::Chain,
        Rejection::NamesNotCovered { .. } => FailureKind::NamesNotCovered,
    }
}

impl From<crate::state::StateError> for RenewError {
    fn from(e: crate::state::StateError) -> Self {
        RenewError::State {
            name: e.name,
            path: e.path,
            detail: e.detail,
        }
    }
}

/// Why a check or a pass failed: the label of `ccm_agent_checks_total{result}`, the logs'
/// `error_kind` and the status file's `last_result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The API answered with an error.
    Api,
    /// No answer: connection refused or reset, DNS, TLS.
    Network,
    Timeout,
    /// The API's answer did not parse or lacked what it must hold.
    Malformed,
    InvalidCertificate,
    KeyMismatch,
    Expired,
    NotYetValid,
    Chain,
    NamesNotCovered,
    /// The issuing CA is disabled, not active or gone.
    CaUnavailable,
    Quota,
    Filesystem,
    /// The agent's own state (records, journal, kept versions) is unusable.
    State,
    NotFound,
    Config,
    Crypto,
    /// After an install: a pre hook failed (the previous files were restored).
    PreHookFailed,
    /// After an install: a server's configuration test failed.
    ConfigTestFailed,
    /// After an install: a reload failed.
    ReloadFailed,
    /// After an install: the server did not serve the new certificate.
    VerifyFailed,
    /// Some cloud targets still fail.
    Deploy,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Api => "api",
            FailureKind::Network => "network",
            FailureKind::Timeout => "timeout",
            FailureKind::Malformed => "malformed",
            FailureKind::InvalidCertificate => "invalid_certificate",
            FailureKind::KeyMismatch => "key_mismatch",
            FailureKind::Expired => "expired",
            FailureKind::NotYetValid => "not_yet_valid",
            FailureKind::Chain => "chain",
            FailureKind::NamesNotCovered => "names_not_covered",
            FailureKind::CaUnavailable => "ca_unavailable",
            FailureKind::Quota => "quota",
            FailureKind::Filesystem => "filesystem",
            FailureKind::State => "state",
            FailureKind::NotFound => "not_found",
            FailureKind::Config => "config",
            FailureKind::Crypto => "crypto",
            FailureKind::PreHookFailed => "pre_hook_failed",
            FailureKind::ConfigTestFailed => "config_test_failed",
            FailureKind::ReloadFailed => "reload_failed",
            FailureKind::VerifyFailed => "verify_failed",
            FailureKind::Deploy => "deploy",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for FailureKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
