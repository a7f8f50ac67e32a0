//! Stage 1: the configuration file exactly as written (serde, unknown keys rejected). Nothing is
//! checked here beyond TOML types; [`super::Config`] validates. Values that need a friendly
//! message when mistyped (modes, SANs, inline secrets) are kept as raw TOML values.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Drop-in files (`include = ["/etc/ccm-agent/conf.d/*.toml"]`), each holding
    /// `[[certificates]]` only; see [`super::include`].
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub cloud: Option<RawCloud>,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// `[fleet]`: coordination with other hosts through etcd (see `crate::fleet`).
    pub fleet: Option<crate::fleet::config::RawFleet>,
    /// How errors name each entry of `certificates`: `certificates[2]` for the main file's,
    /// `FILE: certificates[0]` for a drop-in's. Empty: the main file's numbering.
    #[serde(skip)]
    pub certificate_labels: Vec<String>,
    /// The directories the `include` patterns look in (watched for new drop-ins).
    #[serde(skip)]
    pub include_dirs: Vec<std::path::PathBuf>,
}

/// A drop-in file: certificates only (the agent, cloud and defaults live in the main file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDropIn {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub state_dir: Option<String>,
    pub schedule: Option<String>,
    pub check_on_start: Option<bool>,
    pub concurrency: Option<i64>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub host_id: Option<String>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub full_check_every: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloud {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub scm_endpoint: Option<String>,
    pub pca_endpoint: Option<String>,
    pub iam_endpoint: Option<String>,
    pub ca_bundle: Option<String>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub auth: RawAuth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub method: Option<String>,
    // AK/SK
    pub access_key: Option<String>,
    pub access_key_env: Option<String>,
    pub access_key_file: Option<String>,
    /// Present only to be refused with a helpful message.
    pub secret_key: Option<toml::Value>,
    pub secret_key_env: Option<String>,
    pub secret_key_file: Option<String>,
    pub security_token: Option<toml::Value>,
    pub security_token_env: Option<String>,
    pub security_token_file: Option<String>,
    pub domain_id: Option<String>,
    pub project_id: Option<String>,
    // IAM password
    pub user_name: Option<String>,
    pub domain_name: Option<String>,
    pub project_name: Option<String>,
    pub password: Option<toml::Value>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
}

/// Renewal keys, allowed both in `[defaults]` and in each certificate (repeated there rather
/// than `#[serde(flatten)]`ed, which would weaken unknown-key checks and TOML error positions).
#[derive(Debug, Default, Clone)]
pub struct RawRenew {
    pub renew_before: Option<String>,
    pub renew_at_fraction: Option<f64>,
    pub jitter: Option<f64>,
    pub max_jitter: Option<String>,
    pub emergency_before: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub renew_before: Option<String>,
    pub renew_at_fraction: Option<f64>,
    pub jitter: Option<f64>,
    pub max_jitter: Option<String>,
    pub emergency_before: Option<String>,
    #[serde(default)]
    pub output: RawOutput,
    #[serde(default)]
    pub pca: RawPca,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub name: Option<String>,
    pub source: Option<String>,
    pub renew_before: Option<String>,
    pub renew_at_fraction: Option<f64>,
    pub jitter: Option<f64>,
    pub max_jitter: Option<String>,
    pub emergency_before: Option<String>,
    pub pca: Option<RawPca>,
    pub scm: Option<RawScm>,
    #[serde(default)]
    pub output: RawOutput,
    /// `[certificates.deploy]`: cloud targets (ELB / WAF through SCM).
    pub deploy: Option<crate::deploy::RawDeploy>,
    // After an install: reload actions, served-certificate checks, hooks (see `crate::reload`).
    #[serde(default)]
    pub reload: Vec<crate::reload::config::RawReload>,
    #[serde(default)]
    pub verify: Vec<crate::reload::config::RawVerify>,
    pub verify_timeout: Option<String>,
    pub hooks: Option<crate::reload::config::RawHooks>,
    /// `local` (default), `shared` or `per-host` (see `crate::fleet`).
    pub fleet: Option<String>,
    /// `[certificates.rollout]`: a shared certificate's staged rollout (over `[fleet.rollout]`).
    pub rollout: Option<crate::fleet::rollout::RawRollout>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSubject {
    pub common_name: Option<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub locality: Option<String>,
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawValidity {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawPca {
    pub ca_id: Option<String>,
    pub mode: Option<String>,
    pub subject: Option<RawSubject>,
    pub sans: Option<Vec<toml::Value>>,
    pub key_algorithm: Option<String>,
    pub signature_algorithm: Option<String>,
    pub validity: Option<RawValidity>,
    pub key_usages: Option<Vec<String>>,
    pub extended_key_usage: Option<Vec<String>>,
    pub revoke_superseded: Option<bool>,
    pub revoke_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScm {
    pub id: Option<String>,
    pub name: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Only in `[defaults.output]`: each certificate's `dir` defaults to `base_dir/<name>`.
    pub base_dir: Option<String>,
    pub dir: Option<String>,
    pub cert: Option<String>,
    pub chain: Option<String>,
    pub fullchain: Option<String>,
    pub key: Option<String>,
    pub pkcs12: Option<String>,
    pub pkcs12_password: Option<toml::Value>,
    pub pkcs12_password_env: Option<String>,
    pub pkcs12_password_file: Option<String>,
    pub owner: Option<toml::Value>,
    pub group: Option<toml::Value>,
    pub mode: Option<toml::Value>,
    pub key_mode: Option<toml::Value>,
}

macro_rules! renew_of {
    ($t:ty) => {
        impl $t {
            pub fn renew(&self) -> RawRenew {
                RawRenew {
                    renew_before: self.renew_before.clone(),
                    renew_at_fraction: self.renew_at_fraction,
                    jitter: self.jitter,
                    max_jitter: self.max_jitter.clone(),
                    emergency_before: self.emergency_before.clone(),
                }
            }
        }
    };
}
renew_of!(RawDefaults);
renew_of!(RawCertificate);
