//! Deploy progress: what was deployed where, persisted per certificate in `<state_dir>/deploy/<name>.json`
//! (atomic, durable writes), so a restart never repeats a billed deploy and the SCM copies this
//! agent imported are known (and only those are ever deleted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StateDir, encode_name};
use crate::fsio::{self, FileAttrs, FsError};

/// The deploy progress could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DeployStateError {
    #[error("deploy state: {0}")]
    Fs(#[from] FsError),
    #[error("deploy state {}: {message} (fix or remove the file; an unreadable state would repeat billed deploys)", path.display())]
    Format {
        path: std::path::PathBuf,
        message: String,
    },
}

/// A certificate this agent imported into SCM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScmCopy {
    /// The SCM certificate id.
    pub id: String,
    /// The SCM name it was imported under.
    pub name: String,
    /// SHA-256 of the leaf certificate (DER), upper-case hex: the agent's fingerprint.
    pub fingerprint: String,
    /// SHA-1 of the leaf, lower-case hex: what SCM shows as `fingerprint`.
    pub sha1: String,
}

/// The last successful push/deploy to one region or resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedRecord {
    /// SHA-256 of the leaf certificate, upper-case hex.
    pub fingerprint: String,
    /// The SCM certificate id that was pushed or deployed.
    pub scm_id: String,
}

/// Everything remembered about one certificate's cloud deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployState {
    /// The SCM copy of the current certificate, once imported (certificates held on this host).
    #[serde(default)]
    pub scm_copy: Option<ScmCopy>,
    /// Copies of earlier certificates, deleted once the current one is deployed everywhere.
    #[serde(default)]
    pub superseded: Vec<ScmCopy>,
    /// Unit key (see [`super::Unit::key`]) → the last successful push/deploy there.
    #[serde(default)]
    pub deployed: BTreeMap<String, DeployedRecord>,
}

/// The directory of deploy state files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployStore {
    dir: PathBuf,
}

impl DeployStore {
    /// `<state_dir>/deploy`.
    pub fn new(state: &StateDir) -> Self {
        state.deploy_store()
    }

    /// State files directly in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        DeployStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file of certificate `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", encode_name(name)))
    }

    /// The state of `name`; empty when it was never deployed. A file that does not parse is an
    /// error (not an empty state): treating it as empty would repeat billed deploys.
    pub fn load(&self, name: &str) -> Result<DeployState, DeployStateError> {
        let path = self.path(name);
        match fsio::read_optional(&path)? {
            None => Ok(DeployState::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| DeployStateError::Format {
                path: path.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// Atomically replace the state of `name`.
    pub fn save(&self, name: &str, state: &DeployState) -> Result<(), DeployStateError> {
        fsio::create_private_dir(&self.dir)?;
        let path = self.path(name);
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| DeployStateError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        fsio::write_atomic(&path, &bytes, &FileAttrs::PRIVATE)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_and_corrupt_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DeployStore::new(&StateDir::new(dir.path()));
        assert_eq!(store.load("www").expect("empty"), DeployState::default());
        let mut st = DeployState::default();
        st.deployed.insert(
            "push/ELB/cn-north-4".into(),
            DeployedRecord {
                fingerprint: "AB".into(),
                scm_id: "scs1".into(),
            },
        );
        store.save("www", &st).expect("save");
        assert_eq!(store.load("www").expect("load"), st);
        assert!(store.path("www").starts_with(dir.path().join("deploy")));
        std::fs::write(store.path("www"), b"{not json").expect("write");
        assert!(matches!(
            store.load("www"),
            Err(DeployStateError::Format { .. })
        ));
    }
}
