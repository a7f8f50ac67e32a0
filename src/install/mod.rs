//! Installs certificates on the host: verifies a candidate before anything is swapped in, then
//! writes certificate, chain, full chain, key (and optional PKCS#12) atomically and durably,
//! keeps the last good and the previous version under a state directory, and repairs a swap
//! that a crash interrupted.
//!
//! # Durability and ordering
//! Each file is written to a hidden temp file in its own directory, fsynced, given its owner
//! and mode, then renamed over the target; the directory is fsynced after the renames. A file
//! whose content is already identical is not rewritten (its inode and mtime stay; only a wrong
//! mode or owner is corrected in place), so a no-op install never wakes file watchers.
//! For the PKCS#12 file, whose encoding is randomised, "identical" means the same key and
//! certificates under the same password (see [`pkcs12`]).
//!
//! A *set* of files cannot be replaced by one rename, so a set is a small transaction recorded
//! under `<state>/certs/<name>/` (see [`txn`]'s layout):
//! 1. prepare: the manifest (targets and temp names) is written and fsynced first, then every
//!    changed file's temp, then copies of the new set (`txn.tmp/new/`) and of the files in place
//!    (`txn.tmp/old/`), all fsynced. Any failure here (ENOSPC, EROFS, EACCES, a path that is not a
//!    directory) removes the temps and leaves the files in place untouched.
//! 2. commit: `txn.tmp/` is renamed to `txn/` and the state directory fsynced. This rename is
//!    the commit point.
//! 3. swap: the temps are renamed over the targets in the order key, chain, cert, full chain,
//!    PKCS#12, then the target directories are fsynced. If a rename fails, the files already
//!    swapped are put back from `txn/old/` (or removed where there was none), so the set is never
//!    left mixed.
//! 4. rotate: `txn/old/` becomes `previous/`, `txn/new/` becomes `current/` (the last good).
//!
//! [`recover`] (run at startup, and before every install of the same name) reverts an
//! uncommitted `txn.tmp/` and completes a committed `txn/`: every step checks what is done, so a
//! crash at any point, including during recovery, ends with either the old set or the new set
//! in place. After the commit point even a lost temp is rewritten from `txn/new/`.
//!
//! Why key first and the certificate last: readers that load both files do so at a reload the
//! agent triggers after the swap, so for them the order does not matter; readers that watch the
//! certificate (or full chain) file for changes and then load the pair see the new key already
//! in place when the certificate changes. The window in which key and certificate differ is the
//! time between consecutive renames (microseconds), and it is closed by recovery after a crash.
//!
//! The swap is synchronous and short; the agent runs it to completion (on a blocking thread it
//! does not abort) even when SIGTERM arrives, and a SIGKILL or power loss is repaired by
//! [`recover`]. Installs of the same name must not run concurrently (the agent has one task
//! per certificate); different names use different state directories.

pub mod pkcs12;
mod txn;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cloud::Secret;
use crate::state::StateDir;

pub use crate::fsio::{self, FileAttrs, FsError, Principal};
pub use verify::{
    Candidate, Expectations, Rejection, VerifiedBundle, names_covered, verify_candidate,
};

use txn::{PlannedFile, TxnKind};

#[doc(hidden)]
pub use txn::crash;

/// Default mode of certificate, chain and full chain files.
pub const DEFAULT_CERT_MODE: u32 = 0o644;
/// Default mode of the private key (and the PKCS#12 file, which contains it).
pub const DEFAULT_KEY_MODE: u32 = 0o600;

/// Why an install, a restore or a verification failed. Every variant names the certificate.
/// Except [`InstallError::Inconsistent`], every error guarantees that the files in place are
/// untouched (byte for byte; a reverted swap may leave them with a new inode).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The candidate failed a check; nothing was written.
    #[error("certificate {name}: rejected: {reason}")]
    Rejected { name: String, reason: Rejection },
    /// A filesystem operation failed; the error names the path and carries the OS error.
    #[error("certificate {name}: {source}")]
    Fs {
        name: String,
        #[source]
        source: FsError,
    },
    /// A swap failed and reverting it failed too: the transaction stays recorded and
    /// [`recover`] retries it.
    #[error("certificate {name}: {forward}; reverting the partial swap also failed: {rollback}")]
    Inconsistent {
        name: String,
        forward: FsError,
        rollback: FsError,
    },
    #[error("certificate {name}: unknown {kind} {principal:?} (not found by {database})")]
    UnknownPrincipal {
        name: String,
        kind: &'static str,
        principal: String,
        /// Where it was looked up: `getpwnam` or `getgrnam` (every NSS source).
        database: &'static str,
    },
    #[error("certificate {name}: no previous version to restore")]
    NoPrevious { name: String },
    #[error("certificate {name}: no last good version recorded")]
    NoLastGood { name: String },
    /// The state directory holds something it should not (a corrupt manifest).
    #[error("certificate {name}: state directory: {detail}")]
    State { name: String, detail: String },
    #[error("certificate {name}: {detail}")]
    Unsupported { name: String, detail: String },
}

impl InstallError {
    /// The certificate name the error is about.
    pub fn name(&self) -> &str {
        match self {
            InstallError::Rejected { name, .. }
            | InstallError::Fs { name, .. }
            | InstallError::Inconsistent { name, .. }
            | InstallError::UnknownPrincipal { name, .. }
            | InstallError::NoPrevious { name }
            | InstallError::NoLastGood { name }
            | InstallError::State { name, .. }
            | InstallError::Unsupported { name, .. } => name,
        }
    }

    /// The OS error behind a filesystem failure, if that is what it was.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            InstallError::Fs { source, .. }
            | InstallError::Inconsistent {
                forward: source, ..
            } => Some(&source.source),
            _ => None,
        }
    }
}

/// One file of an installed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Key,
    Chain,
    Cert,
    Fullchain,
    Pkcs12,
}

impl Role {
    /// Position in the swap (see the module doc for why the key goes first).
    fn swap_rank(self) -> u8 {
        match self {
            Role::Key => 0,
            Role::Chain => 1,
            Role::Cert => 2,
            Role::Fullchain => 3,
            Role::Pkcs12 => 4,
        }
    }

    /// File name of the copy kept in the state directory (certbot's names).
    fn stored_name(self) -> &'static str {
        match self {
            Role::Key => "privkey.pem",
            Role::Chain => "chain.pem",
            Role::Cert => "cert.pem",
            Role::Fullchain => "fullchain.pem",
            Role::Pkcs12 => "cert.p12",
        }
    }
}

/// Where the files go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPaths {
    pub cert: PathBuf,
    pub chain: PathBuf,
    pub fullchain: PathBuf,
    pub key: PathBuf,
    pub pkcs12: Option<Pkcs12Output>,
}

impl OutputPaths {
    /// certbot's layout: `cert.pem`, `chain.pem`, `fullchain.pem`, `privkey.pem` in `dir`.
    pub fn certbot_layout(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        OutputPaths {
            cert: dir.join("cert.pem"),
            chain: dir.join("chain.pem"),
            fullchain: dir.join("fullchain.pem"),
            key: dir.join("privkey.pem"),
            pkcs12: None,
        }
    }
}

/// An optional PKCS#12 bundle (certificate, chain and key in one file; see [`pkcs12`]). It holds
/// the key, so it gets the key's mode and owner.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs12Output {
    pub path: PathBuf,
    /// Password encrypting the key and certificates and keying the MAC; empty when none is
    /// configured. Never shown by `Debug`.
    pub password: Secret,
}

impl fmt::Debug for Pkcs12Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs12Output")
            .field("path", &self.path)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Owner, group and modes of the installed files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Owner by name (looked up with `getpwnam_r`: `/etc/passwd` and any other NSS source) or
    /// numeric id; `None` keeps the agent's.
    pub owner: Option<Principal>,
    /// Group by name (looked up with `getgrnam_r`, NSS) or numeric id; `None` keeps the agent's.
    pub group: Option<Principal>,
    pub cert_mode: u32,
    pub key_mode: u32,
}

impl Default for FileSpec {
    fn default() -> Self {
        FileSpec {
            owner: None,
            group: None,
            cert_mode: DEFAULT_CERT_MODE,
            key_mode: DEFAULT_KEY_MODE,
        }
    }
}

impl FileSpec {
    /// Resolves names to ids: `(attrs for public files, attrs for the key and PKCS#12)`.
    pub fn resolve(&self, name: &str) -> Result<(FileAttrs, FileAttrs), InstallError> {
        let uid = resolve_principal(name, self.owner.as_ref(), USER_DATABASE)?;
        let gid = resolve_principal(name, self.group.as_ref(), GROUP_DATABASE)?;
        Ok((
            FileAttrs {
                mode: self.cert_mode,
                uid,
                gid,
            },
            FileAttrs {
                mode: self.key_mode,
                uid,
                gid,
            },
        ))
    }
}

/// What a principal is, where it is looked up, and how.
type Database = (
    &'static str,
    &'static str,
    fn(&str) -> std::io::Result<Option<u32>>,
);
const USER_DATABASE: Database = ("user", "the user database (getpwnam)", fsio::lookup_user);
const GROUP_DATABASE: Database = ("group", "the group database (getgrnam)", fsio::lookup_group);

fn resolve_principal(
    name: &str,
    p: Option<&Principal>,
    (kind, database, lookup): Database,
) -> Result<Option<u32>, InstallError> {
    match p {
        None => Ok(None),
        Some(Principal::Id(id)) => Ok(Some(*id)),
        Some(Principal::Name(n)) => lookup(n)
            .map_err(|e| InstallError::Fs {
                name: name.to_string(),
                source: FsError::new("look up", Path::new(n), e),
            })?
            .map(Some)
            .ok_or_else(|| InstallError::UnknownPrincipal {
                name: name.to_string(),
                kind,
                principal: n.clone(),
                database,
            }),
    }
}

/// What an install or restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOutcome {
    /// Whether any file content changed (false: identical content, nothing renamed).
    pub changed: bool,
    /// Targets whose content was replaced.
    pub written: Vec<PathBuf>,
    /// Targets whose content was already right but whose mode or owner was corrected.
    pub attrs_fixed: Vec<PathBuf>,
    /// What was in place before, now kept as the previous version (when anything changed and
    /// there was something in place).
    pub previous: Option<PreviousVersion>,
}

/// The version a changing install replaced, kept for [`restore_previous`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousVersion {
    /// Where its copies are kept.
    pub dir: PathBuf,
    /// SHA-256 of the replaced certificate's file content, if there was one.
    pub cert_sha256: Option<String>,
    /// SHA-256 of the replaced leaf's DER (upper-case hex), if its file parsed.
    pub fingerprint_sha256: Option<String>,
}

/// A version kept in the state directory (last good or previous).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub name: String,
    /// Unix seconds when it was saved.
    pub saved_at: i64,
    /// SHA-256 of the certificate file's content, if the version has one.
    pub cert_sha256: Option<String>,
    pub files: Vec<StoredFile>,
}

impl StoredVersion {
    /// The file of one role, if the version has it.
    pub fn file(&self, role: Role) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

impl fmt::Debug for StoredVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredVersion")
            .field("name", &self.name)
            .field("saved_at", &self.saved_at)
            .field("cert_sha256", &self.cert_sha256)
            .field("files", &self.files)
            .finish()
    }
}

/// One kept file: where it goes, with which mode and owner, and its content.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub role: Role,
    pub target: PathBuf,
    pub attrs: FileAttrs,
    contents: Vec<u8>,
}

impl StoredFile {
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }
}

impl fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Content is never shown: it may be a private key.
        f.debug_struct("StoredFile")
            .field("role", &self.role)
            .field("target", &self.target)
            .field("attrs", &self.attrs)
            .field("len", &self.contents.len())
            .finish()
    }
}

/// Installs a verified bundle to `paths` with `spec`'s owner and modes (see the module doc for
/// the transaction). Identical content is a no-op. On error the files in place are untouched.
pub fn install(
    bundle: &VerifiedBundle,
    paths: &OutputPaths,
    spec: &FileSpec,
    state: &StateDir,
) -> Result<InstallOutcome, InstallError> {
    let name = bundle.name();
    let (public, private) = spec.resolve(name)?;
    let mut planned = vec![
        PlannedFile {
            role: Role::Key,
            target: paths.key.clone(),
            contents: bundle.key_pem().as_bytes().to_vec(),
            attrs: private,
        },
        PlannedFile {
            role: Role::Chain,
            target: paths.chain.clone(),
            contents: bundle.chain_pem().as_bytes().to_vec(),
            attrs: public,
        },
        PlannedFile {
            role: Role::Cert,
            target: paths.cert.clone(),
            contents: bundle.cert_pem().as_bytes().to_vec(),
            attrs: public,
        },
        PlannedFile {
            role: Role::Fullchain,
            target: paths.fullchain.clone(),
            contents: bundle.fullchain_pem().into_bytes(),
            attrs: public,
        },
    ];
    if let Some(p12) = &paths.pkcs12 {
        planned.push(PlannedFile {
            role: Role::Pkcs12,
            target: p12.path.clone(),
            contents: pkcs12::pkcs12_bytes(bundle, p12)?,
            attrs: private,
        });
    }
    let cert_sha = sha256_hex(bundle.cert_pem().as_bytes());
    let r = txn::run(state, name, TxnKind::Install, planned, Some(cert_sha))?;
    Ok(outcome(state, name, r))
}

fn outcome(state: &StateDir, name: &str, r: txn::TxnResult) -> InstallOutcome {
    let previous = r.previous_saved.then(|| PreviousVersion {
        dir: state.cert_dir(name).join("previous"),
        cert_sha256: r.previous_cert_sha256,
        fingerprint_sha256: r.previous_fingerprint,
    });
    InstallOutcome {
        changed: !r.changed.is_empty(),
        written: r.changed,
        attrs_fixed: r.attrs_fixed,
        previous,
    }
}

/// Puts the previous version back (rollback after a failed reload). The set in place becomes
/// the previous version, so a second call undoes the first.
pub fn restore_previous(state: &StateDir, name: &str) -> Result<InstallOutcome, InstallError> {
    let prev = previous(state, name)?
        .filter(|v| !v.files.is_empty())
        .ok_or_else(|| InstallError::NoPrevious {
            name: name.to_string(),
        })?;
    restore(state, name, prev, TxnKind::RestorePrevious)
}

/// Rewrites the last good version over whatever is in place (a file deleted, truncated or
/// replaced behind the agent's back). Previous and last good stay as they are.
pub fn restore_last_good(state: &StateDir, name: &str) -> Result<InstallOutcome, InstallError> {
    let good = last_good(state, name)?.ok_or_else(|| InstallError::NoLastGood {
        name: name.to_string(),
    })?;
    restore(state, name, good, TxnKind::RestoreLastGood)
}

fn restore(
    state: &StateDir,
    name: &str,
    version: StoredVersion,
    kind: TxnKind,
) -> Result<InstallOutcome, InstallError> {
    let planned = version
        .files
        .into_iter()
        .map(|f| PlannedFile {
            role: f.role,
            target: f.target,
            contents: f.contents,
            attrs: f.attrs,
        })
        .collect();
    let r = txn::run(state, name, kind, planned, version.cert_sha256)?;
    Ok(outcome(state, name, r))
}

/// The last good version: what the last successful install or restore put in place.
pub fn last_good(state: &StateDir, name: &str) -> Result<Option<StoredVersion>, InstallError> {
    load(state, name, "current")
}

/// The previous version, kept for [`restore_previous`].
pub fn previous(state: &StateDir, name: &str) -> Result<Option<StoredVersion>, InstallError> {
    load(state, name, "previous")
}

fn load(state: &StateDir, name: &str, which: &str) -> Result<Option<StoredVersion>, InstallError> {
    txn::load_version(&state.cert_dir(name).join(which)).map_err(|source| InstallError::Fs {
        name: name.to_string(),
        source,
    })
}

/// What [`recover`] did for one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub name: String,
    pub action: String,
}

/// Completes or reverts every install a crash interrupted. Run at startup before anything else
/// touches the files. Returns one entry per certificate that needed it.
pub fn recover(state: &StateDir) -> Result<Vec<Recovery>, InstallError> {
    let (done, mut failed) = recover_each(state)?;
    match failed.pop() {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Like [`recover`], but one certificate's failure does not stop the others: returns what was
/// recovered and, separately, the certificates whose recovery failed (each logged). Their
/// next [`install`] tries again and reports the same error, so only they wait; the agent
/// starts with the rest. Fails as a whole only when the state directory cannot be listed.
pub fn recover_each(state: &StateDir) -> Result<(Vec<Recovery>, Vec<InstallError>), InstallError> {
    let names = state.names().map_err(|source| InstallError::Fs {
        name: "(all)".into(),
        source,
    })?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        match txn::recover_name(state, &name) {
            Ok(Some(action)) => {
                tracing::info!(certificate = %name, %action, "recovered");
                done.push(Recovery { name, action });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(certificate = %name, error = %e, "cannot recover an interrupted install; this certificate waits, the others go on");
                failed.push(e);
            }
        }
    }
    Ok((done, failed))
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What is on disk, as the agent's health check sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstalledState {
    /// A file of the set does not exist.
    Missing { path: PathBuf },
    /// A file exists but cannot be read.
    Unreadable { path: PathBuf, error: String },
    /// A file does not hold what it should (bad PEM, empty certificate).
    Unparsable { path: PathBuf, detail: String },
    /// The key is not the certificate's.
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// The files disagree with each other (full chain not starting with the certificate).
    Inconsistent { path: PathBuf, detail: String },
    /// All files present and consistent.
    Present(InstalledCert),
}

/// The certificate found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledCert {
    /// SHA-256 of the certificate's DER (the usual fingerprint).
    pub fingerprint_sha256: String,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The whole parsed certificate (names, subject, issuer), so callers need not read and
    /// parse the file again.
    pub info: Box<crate::pki::CertInfo>,
}

impl InstalledState {
    /// Whether the agent must (re)install: anything but a present certificate with the
    /// expected fingerprint (SHA-256 of the DER, hex, case-insensitive; `:` separators allowed).
    pub fn needs_install(&self, expected_fingerprint: Option<&str>) -> bool {
        match self {
            InstalledState::Present(c) => expected_fingerprint.is_some_and(|e| {
                let e: String = e.chars().filter(|c| *c != ':').collect();
                !e.eq_ignore_ascii_case(&c.fingerprint_sha256)
            }),
            _ => true,
        }
    }
}

pub use verify::read_installed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_install_compares_fingerprints() {
        let key = crate::pki::generate_key(crate::pki::KeyAlgorithm::Ec256).expect("key");
        let spec = crate::pki::CertificateSpec::new_leaf(
            crate::pki::DistinguishedName::with_common_name("t"),
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::UNIX_EPOCH + time::Duration::days(1),
            Vec::new(),
        );
        let pem = crate::pki::self_signed(&spec, &key).expect("certificate");
        let c = InstalledState::Present(InstalledCert {
            fingerprint_sha256: "abcd".into(),
            serial_hex: "01".into(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH,
            info: Box::new(crate::pki::parse_cert(&pem).expect("parses")),
        });
        assert!(!c.needs_install(Some("AB:CD")));
        assert!(c.needs_install(Some("abce")));
        assert!(!c.needs_install(None));
        assert!(InstalledState::Missing { path: "x".into() }.needs_install(None));
    }
}
