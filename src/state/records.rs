//! The agent's own record of each managed certificate: which cloud certificate is installed
//! (id and fingerprint), from which CA and mode, and the superseded PCA certificates waiting to
//! be revoked. One small JSON file per name under `<state>/renew/`, written atomically (0600).
//! The install module keeps the files themselves; this only says what they are.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StateError, encode_name};
use crate::fsio::{self, FileAttrs};

/// What the agent last installed for one name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// `pca` or `scm`.
    #[serde(default)]
    pub source: String,
    /// The PCA certificate id or SCM certificate id installed.
    #[serde(default)]
    pub cloud_id: Option<String>,
    /// PCA: the issuing CA it came from.
    #[serde(default)]
    pub ca_id: Option<String>,
    /// PCA: `csr` or `apply`.
    #[serde(default)]
    pub mode: Option<String>,
    /// SHA-256 of the installed certificate's DER, upper-case hex.
    #[serde(default)]
    pub fingerprint_sha256: Option<String>,
    /// Unix seconds of the install.
    #[serde(default)]
    pub installed_at: Option<i64>,
    /// PCA certificates replaced by a renewal, to revoke (reason SUPERSEDED) once their grace
    /// period has passed.
    #[serde(default)]
    pub superseded: Vec<Superseded>,
}

/// A replaced PCA certificate awaiting revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superseded {
    pub cloud_id: String,
    /// Unix seconds when it was replaced.
    pub superseded_at: i64,
    /// Unix seconds from when it may be revoked.
    pub revoke_at: i64,
}

/// Where the records live: `<state>/renew/`.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records of the state directory `state_root` (`<state_root>/renew/`).
    pub fn new(state_root: &Path) -> Self {
        super::StateDir::new(state_root).records()
    }

    /// Records kept directly in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Records { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", encode_name(name)))
    }

    /// The record of `name`; an empty one if none was written yet.
    pub fn load(&self, name: &str) -> Result<CertRecord, StateError> {
        let path = self.path(name);
        let bytes = fsio::read_optional(&path).map_err(|e| StateError {
            name: name.to_string(),
            path: path.clone(),
            detail: e.to_string(),
        })?;
        match bytes {
            None => Ok(CertRecord::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| StateError {
                name: name.to_string(),
                path,
                detail: format!("corrupt: {e}"),
            }),
        }
    }

    pub fn save(&self, name: &str, record: &CertRecord) -> Result<(), StateError> {
        let path = self.path(name);
        let err = |detail: String| StateError {
            name: name.to_string(),
            path: path.clone(),
            detail,
        };
        if !self.dir.is_dir() {
            fsio::create_private_dir(&self.dir).map_err(|e| err(e.to_string()))?;
        }
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| err(e.to_string()))?;
        bytes.push(b'\n');
        fsio::write_atomic(&path, &bytes, &FileAttrs::PRIVATE)
            .map(|_| ())
            .map_err(|e| err(e.to_string()))
    }
}
