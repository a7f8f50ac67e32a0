//! The agent's state directory, and the one module that knows its layout. Every other module
//! asks it for a path or a store instead of joining names of its own:
//!
//! ```text
//! <state>/agent.lock              the lock (lock.rs): daemon or renew, "PID ROLE"
//! <state>/status.json             the last outcome of every certificate (status.rs)
//! <state>/journal/<name>.json     in-flight issuances, and <name>.key in CSR mode (journal.rs)
//! <state>/renew/<name>.json       what was issued and installed, superseded ids (records.rs)
//! <state>/renew/unwritten/<name>/ output files the configuration leaves out
//! <state>/certs/<name>/current/   the last good version, as installed
//! <state>/certs/<name>/previous/  the version before it, for rollback
//! <state>/certs/<name>/txn/       an install transaction in progress (crate::install)
//! <state>/deploy/<name>.json      what was deployed to which cloud target (deploy.rs)
//! ```
//!
//! Names are encoded as one safe path component ([`encode_name`]). Directories are created
//! 0700 when first written, and again when someone deleted them under a running agent; a dry
//! run creates nothing. The install transaction itself (how `current/`, `previous/` and `txn/`
//! change) is [`crate::install`]'s: it asks for the directories here.

pub mod deploy;
pub mod journal;
pub mod lock;
pub mod records;
pub mod status;

use std::path::{Path, PathBuf};

use crate::fsio::FsError;

pub use deploy::DeployStore;
pub use journal::Journal;
pub use lock::StateLock;
pub use records::Records;
pub use status::{CertStatus, StatusFile};

/// The agent's state directory: where each part of the layout (see the module doc) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/certs/<encoded name>`.
    pub fn cert_dir(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(encode_name(name))
    }

    /// `<root>/journal`.
    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// `<root>/renew`: the renewal records.
    pub fn records_dir(&self) -> PathBuf {
        self.root.join("renew")
    }

    /// `<root>/renew/unwritten/<encoded name>`: the output files the configuration leaves out.
    pub fn unwritten_dir(&self, name: &str) -> PathBuf {
        self.records_dir().join("unwritten").join(encode_name(name))
    }

    /// `<root>/deploy`: the deploy progress.
    pub fn deploy_dir(&self) -> PathBuf {
        self.root.join("deploy")
    }

    /// `<root>/status.json`.
    pub fn status_file(&self) -> PathBuf {
        self.root.join(StatusFile::FILE)
    }

    /// `<root>/agent.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(StateLock::FILE)
    }

    /// The journal, without creating anything (its directory is created on first write).
    pub fn journal(&self) -> Journal {
        Journal::at(self.journal_dir())
    }

    /// The renewal records.
    pub fn records(&self) -> Records {
        Records::at(self.records_dir())
    }

    /// The deploy progress.
    pub fn deploy_store(&self) -> DeployStore {
        DeployStore::at(self.deploy_dir())
    }

    /// Whether an install of `name` was interrupted and waits to be completed or reverted.
    pub fn interrupted_install(&self, name: &str) -> Option<PathBuf> {
        let txn = self.cert_dir(name).join("txn");
        txn.exists().then_some(txn)
    }

    /// Names that have install state.
    pub fn names(&self) -> Result<Vec<String>, FsError> {
        let dir = self.root.join("certs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FsError::new("list", &dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| FsError::new("list", &dir, e))?;
            if let Some(n) = entry.file_name().to_str().and_then(decode_name) {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Encodes a certificate name as one safe path component: ASCII letters, digits, `-`, `_` and
/// non-leading `.` are kept, every other byte becomes `%XX`.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// Inverse of [`encode_name`]; `None` for something it did not produce.
pub fn decode_name(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A record of the state directory that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("certificate {name}: state file {}: {detail}", path.display())]
pub struct StateError {
    pub name: String,
    pub path: PathBuf,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_encoding_round_trips() {
        for n in [
            "www.example.com",
            "a/b",
            "..",
            ".hidden",
            "",
            "ümlaut",
            "x%y",
            "*.wild",
        ] {
            let e = encode_name(n);
            assert!(
                !e.contains('/') && e != "." && e != ".." && !e.starts_with('.'),
                "{e}"
            );
            assert_eq!(decode_name(&e).as_deref(), Some(n), "{n}");
        }
        assert_eq!(encode_name("www.example.com"), "www.example.com");
    }
}
