//! The layout of fleet state under the prefix, and the JSON of its values.
//!
//! ```text
//! {prefix}/members/{member}                       member registration (on the member's lease)
//! {prefix}/locks/{name}                           the certificate's lock: the holder's member id
//!                                                 (on the holder's lease)
//! {prefix}/certs/{name}/generation                the published generation (Generation)
//! {prefix}/certs/{name}/issuing                   the holder's mark before an issuance (Issuing)
//! {prefix}/certs/{name}/deploy/{gen}/{unit}       one deploy unit's progress (UnitProgress)
//! {prefix}/certs/{name}/rollout                   the published generation's rollout (Rollout)
//! {prefix}/certs/{name}/results/{gen}/{member}    a member's activation result (MemberResult)
//! {prefix}/status/{member}/{name}                 what a member has installed (MemberStatus)
//! ```

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn members(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    pub fn member(&self, id: &str) -> String {
        format!("{}/members/{id}", self.prefix)
    }

    pub fn locks(&self) -> String {
        format!("{}/locks/", self.prefix)
    }

    pub fn lock(&self, name: &str) -> String {
        format!("{}/locks/{name}", self.prefix)
    }

    pub fn certs(&self) -> String {
        format!("{}/certs/", self.prefix)
    }

    pub fn generation(&self, name: &str) -> String {
        format!("{}/certs/{name}/generation", self.prefix)
    }

    pub fn issuing(&self, name: &str) -> String {
        format!("{}/certs/{name}/issuing", self.prefix)
    }

    pub fn deploys(&self, name: &str, generation: u64) -> String {
        format!("{}/certs/{name}/deploy/{generation}/", self.prefix)
    }

    pub fn unit(&self, name: &str, generation: u64, unit: &str) -> String {
        format!("{}/certs/{name}/deploy/{generation}/{unit}", self.prefix)
    }

    pub fn rollout(&self, name: &str) -> String {
        format!("{}/certs/{name}/rollout", self.prefix)
    }

    /// Every generation's results of `name`.
    pub fn all_results(&self, name: &str) -> String {
        format!("{}/certs/{name}/results/", self.prefix)
    }

    pub fn results(&self, name: &str, generation: u64) -> String {
        format!("{}/certs/{name}/results/{generation}/", self.prefix)
    }

    pub fn result(&self, name: &str, generation: u64, member: &str) -> String {
        format!("{}/certs/{name}/results/{generation}/{member}", self.prefix)
    }

    pub fn statuses(&self) -> String {
        format!("{}/status/", self.prefix)
    }

    pub fn status(&self, member: &str, name: &str) -> String {
        format!("{}/status/{member}/{name}", self.prefix)
    }
}

/// A member's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub member_id: String,
    pub host_id: String,
    pub version: String,
    /// The certificates it manages, with their modes: `www:shared`.
    pub serves: Vec<String>,
    pub started_at: String,
}

/// A certificate generation the lock holder published: every member installs exactly this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u64,
    /// PCA certificate id or SCM certificate id.
    pub cloud_id: String,
    /// SHA-256 of the leaf's DER, upper-case hex.
    pub fingerprint_sha256: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339; lets every member decide "due" on the same lifetime.
    #[serde(default)]
    pub not_before: String,
    /// The member that published it.
    pub issued_by: String,
    /// `pca` or `scm`.
    #[serde(default)]
    pub source: String,
}

/// The holder's mark, written (fenced) just before it issues or exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuing {
    pub member: String,
    /// The generation it replaces (0: none).
    pub replaces: u64,
    pub at: String,
}

/// One deploy unit's progress in one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    Pending,
    /// A call is (or was) in flight: if its caller is gone, the outcome is unknown.
    Calling,
    Done,
    /// The call answered with a failure for this unit: it may be called again.
    Failed,
    /// The outcome of a call is unknown and SCM cannot tell: an operator decides.
    NeedsHuman,
}

impl UnitState {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Pending => "pending",
            UnitState::Calling => "calling",
            UnitState::Done => "done",
            UnitState::Failed => "failed",
            UnitState::NeedsHuman => "needs_human",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitProgress {
    pub state: UnitState,
    pub member: String,
    pub at: String,
    /// The SCM certificate pushed or deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What one member has installed of one certificate, for `ccm-agent fleet status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member: String,
    pub name: String,
    pub mode: String,
    /// The generation its files are (0: none of the fleet's).
    pub generation: u64,
    pub fingerprint_sha256: Option<String>,
    pub last_result: String,
    /// RFC 3339.
    pub last_seen: String,
}
