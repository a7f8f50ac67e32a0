//! The status file, `<state>/status.json`: the last outcome of every certificate, written once
//! per pass by the agent and read by `ccm-agent status`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// File in the state directory where the agent records the last outcome of every certificate.
pub const STATUS_FILE: &str = "status.json";

/// What `ccm-agent status` shows for one certificate.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CertStatus {
    pub name: String,
    pub source: String,
    /// RFC 3339.
    pub not_after: Option<String>,
    pub next_renewal: Option<String>,
    pub last_check: Option<String>,
    /// `ok`, `renewed`, `reexported`, `reinstalled`, or an error kind.
    pub last_result: String,
    pub last_error: Option<String>,
    pub warnings: Vec<String>,
    pub fingerprint_sha256: Option<String>,
}

/// The status file: written after every check, read by `ccm-agent status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusFile {
    pub updated_at: Option<String>,
    pub certificates: Vec<CertStatus>,
}

impl StatusFile {
    pub const FILE: &'static str = STATUS_FILE;

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATUS_FILE)
    }

    /// Read the status file; a missing file is an empty status.
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("status file {} does not parse", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        if !state_dir.is_dir() {
            crate::fsio::create_private_dir(state_dir)
                .with_context(|| format!("recreating {}", state_dir.display()))?;
        }
        let json = serde_json::to_vec_pretty(self)?;
        let attrs = crate::fsio::FileAttrs {
            mode: 0o644,
            uid: None,
            gid: None,
        };
        crate::fsio::write_atomic(&path, &json, &attrs)
            .map(|_| ())
            .with_context(|| format!("writing {}", path.display()))
    }
}
