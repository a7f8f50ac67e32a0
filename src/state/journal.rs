//! A small durable journal of in-flight issuance, one JSON file per certificate name, so a crash
//! between "the CA issued certificate X" and "X is installed" resumes with X on restart instead
//! of issuing another one.
//!
//! # Protocol
//! 1. [`Journal::begin_issue`] before the request leaves the host. In CSR mode the locally
//!    generated key is written first (`<name>.key`, mode 0600, fsynced), then the entry
//!    (`<name>.json`, phase `requested`) atomically (temp, fsync, rename, fsync directory).
//! 2. Send the request (apply, or CSR).
//! 3. [`Journal::record_issued`] with the certificate id from the response, before anything else
//!    (phase `issued`).
//! 4. Export, verify, install.
//! 5. [`Journal::complete`] once the install committed: the entry is removed, then the key copy.
//!
//! # Guarantee
//! - A crash before step 1 returns: nothing was sent; the restart issues normally.
//! - A crash after step 3: [`Journal::pending`] returns the recorded id; the agent adopts it
//!   (exports that certificate, verifies, installs, completes) and does **not** issue again.
//!   A crash after step 4 but before step 5 does the same; the install is then an identical
//!   no-op.
//! - A crash between steps 1 and 3 (request sent or not, response lost): `pending` returns the
//!   entry without an id. The agent reconciles by listing the CA's certificates requested at or
//!   after `requested_at` for this name, and in CSR mode matching the public key of the stored
//!   key; if it finds one, it records and adopts it; otherwise it issues again (in CSR mode with
//!   the same stored key). So each crash costs **at most one extra issuance** (only when the
//!   lost certificate cannot be found), never more.
//! - In CSR mode the private key is durable on disk before the CSR is sent, so a certificate
//!   the CA issued for it can always be installed: **no key is ever lost**.
//! - The journal never holds more than one in-flight issuance per name: `begin_issue` refuses
//!   while one is pending, so the agent must adopt or [`Journal::abandon`] it first.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::encode_name;
use crate::fsio::{self, FileAttrs, FsError};

/// How the certificate is being obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueMode {
    /// The agent generated the key and sends a CSR; the key stays on the host.
    Csr,
    /// The cloud generates the key (apply); it is exported with the certificate.
    Apply,
}

/// Where an issuance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The request may have been sent; no certificate id is known yet.
    Requested,
    /// The cloud returned a certificate id; it is not installed yet.
    Issued,
}

/// What an issuance was requested for, kept in its journal entry: a pending certificate that no
/// longer fits the configuration (another CA, key algorithm or set of names) is abandoned
/// instead of adopted, so a changed configuration never blocks on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedFor {
    pub ca_id: String,
    /// The API's name (`RSA2048`, `EC256`, ...).
    pub key_algorithm: String,
    /// The names the certificate must cover, sorted.
    pub names: Vec<String>,
}

impl IssuedFor {
    /// How `self` (what was requested) differs from `now` (what the configuration asks), in
    /// words; `None` when it still fits.
    pub fn misfit(&self, now: &IssuedFor) -> Option<String> {
        let mut why = Vec::new();
        if self.ca_id != now.ca_id {
            why.push(format!("CA {} (now {})", self.ca_id, now.ca_id));
        }
        if !self.key_algorithm.eq_ignore_ascii_case(&now.key_algorithm) {
            why.push(format!(
                "key algorithm {} (now {})",
                self.key_algorithm, now.key_algorithm
            ));
        }
        if self.names != now.names {
            why.push(format!(
                "names {} (now {})",
                self.names.join(","),
                now.names.join(",")
            ));
        }
        (!why.is_empty()).then(|| format!("it was requested for {}", why.join(", ")))
    }
}

/// An in-flight issuance found in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub name: String,
    pub mode: IssueMode,
    pub phase: Phase,
    /// Random id of this attempt (for logs, and as a request tag where the API has one).
    pub ticket: String,
    #[serde(with = "rfc3339")]
    pub requested_at: OffsetDateTime,
    /// CSR mode: where the local key is kept (0600).
    pub key_path: Option<PathBuf>,
    /// Set once the cloud returned it.
    pub cloud_certificate_id: Option<String>,
    /// What was requested (absent in entries written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<IssuedFor>,
}

impl Pending {
    /// Reads the locally generated key (CSR mode).
    pub fn load_key(&self) -> Result<Option<String>, JournalError> {
        let Some(path) = &self.key_path else {
            return Ok(None);
        };
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| JournalError::Fs {
                name: self.name.clone(),
                source: FsError::new("read", path, e),
            })
    }
}

/// Handle for an issuance begun with [`Journal::begin_issue`].
#[derive(Clone, PartialEq, Eq)]
pub struct IssueTicket {
    pub name: String,
    pub ticket: String,
    pub key_path: Option<PathBuf>,
}

impl fmt::Debug for IssueTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueTicket")
            .field("name", &self.name)
            .field("ticket", &self.ticket)
            .field("key_path", &self.key_path)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal for certificate {name}: {source}")]
    Fs {
        name: String,
        #[source]
        source: FsError,
    },
    #[error("journal for certificate {name}: {path} is corrupt: {detail}")]
    Corrupt {
        name: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "journal for certificate {name}: an issuance is already in flight (ticket {ticket}); adopt or abandon it first"
    )]
    AlreadyPending { name: String, ticket: String },
    #[error("journal for certificate {name}: no issuance in flight")]
    NotPending { name: String },
    #[error(
        "journal for certificate {name}: certificate {recorded} is already recorded for this issuance, not {given}"
    )]
    IdMismatch {
        name: String,
        recorded: String,
        given: String,
    },
    #[error("journal for certificate {name}: CSR mode needs the local key")]
    MissingKey { name: String },
}

/// The journal directory (usually [`StateDir::journal_dir`](super::StateDir::journal_dir)).
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating, mode 0700) the journal directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, JournalError> {
        let dir = dir.into();
        if !dir.is_dir() {
            fsio::create_private_dir(&dir)
                .and_then(|()| fsio::sync_dir(fsio::parent_dir(&dir)))
                .map_err(|source| JournalError::Fs {
                    name: "(journal)".into(),
                    source,
                })?;
        }
        Ok(Journal { dir })
    }

    /// The journal in `dir` without creating anything: a missing directory is an empty journal
    /// (for dry runs, which must not change the host).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Journal { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", encode_name(name)))
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.key", encode_name(name)))
    }

    /// Records that an issuance for `name` is about to be requested. In CSR mode `local_key_pem`
    /// is stored (0600, fsynced) before the entry, and both are durable when this returns: only
    /// then may the request be sent.
    pub fn begin_issue(
        &self,
        name: &str,
        mode: IssueMode,
        local_key_pem: Option<&str>,
        request: Option<IssuedFor>,
        now: OffsetDateTime,
    ) -> Result<IssueTicket, JournalError> {
        if let Some(p) = self.pending(name)? {
            return Err(JournalError::AlreadyPending {
                name: name.to_string(),
                ticket: p.ticket,
            });
        }
        let key_path = match (mode, local_key_pem) {
            (IssueMode::Csr, None) => {
                return Err(JournalError::MissingKey {
                    name: name.to_string(),
                });
            }
            (_, Some(pem)) => {
                self.ensure_dir(name)?;
                let path = self.key_path(name);
                fsio::write_atomic(&path, pem.as_bytes(), &FileAttrs::PRIVATE)
                    .map_err(|source| fs_err(name, source))?;
                Some(path)
            }
            (IssueMode::Apply, None) => None,
        };
        let entry = Pending {
            name: name.to_string(),
            mode,
            phase: Phase::Requested,
            ticket: uuid::Uuid::new_v4().to_string(),
            requested_at: now,
            key_path: key_path.clone(),
            cloud_certificate_id: None,
            request,
        };
        self.write(&entry)?;
        Ok(IssueTicket {
            name: name.to_string(),
            ticket: entry.ticket,
            key_path,
        })
    }

    /// Records the certificate id the cloud returned. Recording the same id again is a no-op.
    pub fn record_issued(
        &self,
        name: &str,
        cloud_certificate_id: &str,
    ) -> Result<(), JournalError> {
        let mut entry = self
            .pending(name)?
            .ok_or_else(|| JournalError::NotPending {
                name: name.to_string(),
            })?;
        match &entry.cloud_certificate_id {
            Some(id) if id == cloud_certificate_id => return Ok(()),
            Some(id) => {
                return Err(JournalError::IdMismatch {
                    name: name.to_string(),
                    recorded: id.clone(),
                    given: cloud_certificate_id.to_string(),
                });
            }
            None => {}
        }
        entry.cloud_certificate_id = Some(cloud_certificate_id.to_string());
        entry.phase = Phase::Issued;
        self.write(&entry)
    }

    /// Ends the issuance after the certificate is installed: removes the entry, then the key
    /// copy (the installed key file and the install state hold it from now on).
    pub fn complete(&self, name: &str) -> Result<(), JournalError> {
        fsio::remove_if_exists(&self.entry_path(name)).map_err(|s| fs_err(name, s))?;
        fsio::sync_dir(&self.dir).map_err(|s| fs_err(name, s))?;
        fsio::remove_if_exists(&self.key_path(name)).map_err(|s| fs_err(name, s))?;
        fsio::sync_dir(&self.dir).map_err(|s| fs_err(name, s))
    }

    /// Gives up an issuance that cannot be adopted (the certificate was not found, or was
    /// revoked). Same effect as [`complete`](Self::complete).
    pub fn abandon(&self, name: &str) -> Result<(), JournalError> {
        self.complete(name)
    }

    /// The in-flight issuance of `name`, if any (read at startup to resume).
    pub fn pending(&self, name: &str) -> Result<Option<Pending>, JournalError> {
        let path = self.entry_path(name);
        let bytes = fsio::read_optional(&path).map_err(|s| fs_err(name, s))?;
        let Some(bytes) = bytes else { return Ok(None) };
        let entry: Pending = serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
            name: name.to_string(),
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if entry.name != name {
            return Err(JournalError::Corrupt {
                name: name.to_string(),
                path,
                detail: format!("entry is for {:?}", entry.name),
            });
        }
        Ok(Some(entry))
    }

    /// Every in-flight issuance, sorted by name.
    pub fn all_pending(&self) -> Result<Vec<Pending>, JournalError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| fs_err("(journal)", FsError::new("list", &self.dir, e)))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| fs_err("(journal)", FsError::new("list", &self.dir, e)))?;
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if let Some(name) = super::decode_name(stem)
                && let Some(p) = self.pending(&name)?
            {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Recreates the journal's directory when it is gone (someone deleted the state directory
    /// under a running agent).
    fn ensure_dir(&self, name: &str) -> Result<(), JournalError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fsio::create_private_dir(&self.dir)
            .and_then(|()| fsio::sync_dir(fsio::parent_dir(&self.dir)))
            .map_err(|source| fs_err(name, source))
    }

    fn write(&self, entry: &Pending) -> Result<(), JournalError> {
        self.ensure_dir(&entry.name)?;
        let mut bytes = serde_json::to_vec_pretty(entry).map_err(|e| JournalError::Corrupt {
            name: entry.name.clone(),
            path: self.entry_path(&entry.name),
            detail: e.to_string(),
        })?;
        bytes.push(b'\n');
        fsio::write_atomic(&self.entry_path(&entry.name), &bytes, &FileAttrs::PRIVATE)
            .map(|_| ())
            .map_err(|s| fs_err(&entry.name, s))
    }
}

fn fs_err(name: &str, source: FsError) -> JournalError {
    JournalError::Fs {
        name: name.to_string(),
        source,
    }
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use time::macros::datetime;

    #[test]
    fn csr_issue_lifecycle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path().join("journal")).expect("open");
        let now = datetime!(2026-05-01 10:00 UTC);
        let t = j
            .begin_issue("www/a", IssueMode::Csr, Some("KEY PEM\n"), None, now)
            .expect("begin");
        let key_path = t.key_path.clone().expect("key path");
        let mode = std::fs::metadata(&key_path)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A crash here: a fresh handle sees the request without an id, and the key.
        let j2 = Journal::open(dir.path().join("journal")).expect("reopen");
        let p = j2.pending("www/a").expect("pending").expect("some");
        assert_eq!(p.phase, Phase::Requested);
        assert_eq!(p.requested_at, now);
        assert_eq!(p.load_key().expect("key").as_deref(), Some("KEY PEM\n"));
        assert!(matches!(
            j2.begin_issue("www/a", IssueMode::Csr, Some("OTHER"), None, now),
            Err(JournalError::AlreadyPending { .. })
        ));

        j2.record_issued("www/a", "cert-1").expect("record");
        j2.record_issued("www/a", "cert-1").expect("idempotent");
        assert!(matches!(
            j2.record_issued("www/a", "cert-2"),
            Err(JournalError::IdMismatch { .. })
        ));
        let all = j2.all_pending().expect("all");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].cloud_certificate_id.as_deref(), Some("cert-1"));

        j2.complete("www/a").expect("complete");
        assert_eq!(j2.pending("www/a").expect("pending"), None);
        assert!(!key_path.exists());
        assert!(matches!(
            j2.record_issued("www/a", "x"),
            Err(JournalError::NotPending { .. })
        ));
    }

    #[test]
    fn csr_mode_requires_key_and_corrupt_entry_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let now = datetime!(2026-05-01 10:00 UTC);
        assert!(matches!(
            j.begin_issue("a", IssueMode::Csr, None, None, now),
            Err(JournalError::MissingKey { .. })
        ));
        std::fs::write(dir.path().join("a.json"), b"{not json").expect("write");
        let err = j.pending("a").expect_err("corrupt");
        assert!(err.to_string().contains("a.json"), "{err}");
    }
}
