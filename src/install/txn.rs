//! The install transaction: a set of files (key, chain, cert, full chain, PKCS#12) swapped in
//! together, with a durable record under the state directory so a crash at any point is either
//! completed or reverted by [`recover`](super::recover).
//!
//! On-disk layout for one certificate name, under `<state>/certs/<name>/`:
//! - `current/`  the last good version: what the last successful transaction put in place
//!   (one file per role, mode 0600, plus `meta.json` with the targets, modes and owners);
//! - `previous/` what was in place before that transaction, same format;
//! - `txn.tmp/`  a transaction being prepared (not yet committed: recovery reverts it);
//! - `txn/`      a committed transaction (recovery completes it): `manifest.json`, `new/`, `old/`;
//! - `txn.done/` a finished transaction being deleted (recovery deletes it).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{InstallError, Role, StoredFile, StoredVersion};
use crate::fsio::{self, FileAttrs, FsError};
use crate::state::StateDir;

/// Simulated crashes for tests: the transaction stops dead at a point, leaving the disk as a
/// killed process would, and returns an error. Per thread, so parallel tests do not interfere.
#[doc(hidden)]
pub mod crash {
    use std::cell::Cell;

    /// Where to stop.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CrashPoint {
        /// Temps and state copies written, not committed.
        BeforeCommit,
        /// Committed, nothing renamed yet.
        AfterCommit,
        /// Committed, this many changed files renamed into place.
        AfterRenames(usize),
        /// Files swapped, `previous/` rotated, `current/` not yet.
        DuringRotation,
    }

    thread_local! {
        static AT: Cell<Option<CrashPoint>> = const { Cell::new(None) };
    }

    /// Arms a crash for the next transaction on this thread.
    pub fn crash_at(point: CrashPoint) {
        AT.with(|c| c.set(Some(point)));
    }

    pub(super) fn hit(point: CrashPoint) -> bool {
        AT.with(|c| {
            if c.get() == Some(point) {
                c.set(None);
                true
            } else {
                false
            }
        })
    }
}

use crash::CrashPoint;

const CRASH_OP: &str = "simulate a crash at";

fn crashed(name: &str) -> InstallError {
    InstallError::State {
        name: name.to_string(),
        detail: "simulated crash".into(),
    }
}

const MANIFEST: &str = "manifest.json";
const META: &str = "meta.json";
const MANIFEST_VERSION: u32 = 1;

/// What a transaction does to `current/` and `previous/` once its files are in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TxnKind {
    /// A new version: previous ← what was in place, current ← new.
    Install,
    /// Roll back: previous ← what was in place, current ← the old previous.
    RestorePrevious,
    /// Repair the files from current: current and previous unchanged.
    RestoreLastGood,
}

/// One file the transaction wants in place.
pub(crate) struct PlannedFile {
    pub role: Role,
    pub target: PathBuf,
    pub contents: Vec<u8>,
    pub attrs: FileAttrs,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    name: String,
    kind: TxnKind,
    /// In swap order; `temp` is set for the files whose content changes.
    files: Vec<ManifestFile>,
}

#[derive(Serialize, Deserialize)]
struct ManifestFile {
    role: Role,
    target: PathBuf,
    temp: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct VersionMeta {
    pub name: String,
    /// Unix seconds when this version was saved (informational).
    pub saved_at: i64,
    pub cert_sha256: Option<String>,
    pub files: Vec<VersionFile>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct VersionFile {
    pub role: Role,
    pub target: PathBuf,
    pub attrs: FileAttrs,
}

/// What a finished transaction changed.
pub(crate) struct TxnResult {
    pub changed: Vec<PathBuf>,
    pub attrs_fixed: Vec<PathBuf>,
    pub previous_cert_sha256: Option<String>,
    /// SHA-256 of the DER of the leaf the swap replaced (the certificate file parsed), if
    /// there was a readable one: what the reload hooks and the logs call the old certificate.
    pub previous_fingerprint: Option<String>,
    pub previous_saved: bool,
}

/// Runs a whole transaction: recover leftovers, prepare (temps + state copies), commit, swap,
/// rotate. Any error before the commit point leaves the files in place untouched and removes
/// the temps; an error during the swap reverts the files already swapped.
pub(crate) fn run(
    state: &StateDir,
    name: &str,
    kind: TxnKind,
    mut planned: Vec<PlannedFile>,
    cert_sha256: Option<String>,
) -> Result<TxnResult, InstallError> {
    let fs_err = |source: FsError| InstallError::Fs {
        name: name.to_string(),
        source,
    };
    let dir = state.cert_dir(name);
    if !dir.is_dir() {
        // New directories must survive a crash too: fsync the ones above them.
        fsio::create_private_dir(&dir).map_err(fs_err)?;
        let certs = fsio::parent_dir(&dir);
        fsio::sync_dir(certs).map_err(fs_err)?;
        fsio::sync_dir(fsio::parent_dir(certs)).map_err(fs_err)?;
    }
    recover_name(state, name)?;
    planned.sort_by_key(|p| p.role.swap_rank());

    // What is in place now. An unreadable file is treated as absent: it cannot be backed up,
    // and replacing it is exactly what the caller wants.
    let mut old: Vec<Option<(Vec<u8>, FileAttrs)>> = Vec::with_capacity(planned.len());
    for p in &planned {
        let parent = fsio::parent_dir(&p.target);
        if !parent.is_dir() {
            // The key goes first (the sort above), so a directory it shares with certificates
            // gets the key's protection.
            let attrs = match p.role {
                Role::Key | Role::Pkcs12 => FileAttrs::key_dir(&p.attrs),
                Role::Cert | Role::Chain | Role::Fullchain => FileAttrs::PUBLIC_DIR,
            };
            fsio::create_dir_all_with(parent, &attrs).map_err(|e| {
                fs_err(FsError::new(
                    "create the directory for",
                    &p.target,
                    e.source,
                ))
            })?;
        }
        if p.target.is_dir() {
            return Err(fs_err(FsError::new(
                "replace",
                &p.target,
                std::io::Error::other("it is a directory"),
            )));
        }
        let contents = fsio::read_optional(&p.target).unwrap_or_else(|e| {
            tracing::warn!(certificate = name, error = %e, "existing file unreadable; replacing it without a backup");
            None
        });
        old.push(contents.and_then(|c| {
            let meta = fs::metadata(&p.target).ok()?;
            Some((
                c,
                FileAttrs {
                    mode: meta.mode() & 0o7777,
                    uid: Some(meta.uid()),
                    gid: Some(meta.gid()),
                },
            ))
        }));
    }

    let changed_idx: Vec<usize> = (0..planned.len())
        .filter(|&i| old[i].as_ref().map(|(c, _)| c) != Some(&planned[i].contents))
        .collect();

    if changed_idx.is_empty() {
        let mut attrs_fixed = Vec::new();
        for p in &planned {
            let before = fs::metadata(&p.target)
                .map(|m| p.attrs.matches(&m))
                .unwrap_or(false);
            fsio::fix_attrs(&p.target, &p.attrs).map_err(fs_err)?;
            if !before {
                attrs_fixed.push(p.target.clone());
            }
        }
        // The files already match; make sure `current/` says so (first run over files put in
        // place by hand or by an older agent, or a lost state directory).
        if kind != TxnKind::RestoreLastGood {
            refresh_current(state, name, &planned, cert_sha256.as_deref())?;
        }
        return Ok(TxnResult {
            changed: Vec::new(),
            attrs_fixed,
            previous_cert_sha256: None,
            previous_fingerprint: None,
            previous_saved: false,
        });
    }

    // Prepare. The manifest goes first so an interrupted preparation knows which temps to remove.
    let tmp = dir.join("txn.tmp");
    fsio::remove_dir_if_exists(&tmp).map_err(fs_err)?;
    fsio::create_private_dir(&tmp).map_err(fs_err)?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        name: name.to_string(),
        kind,
        files: planned
            .iter()
            .enumerate()
            .map(|(i, p)| ManifestFile {
                role: p.role,
                target: p.target.clone(),
                temp: changed_idx
                    .contains(&i)
                    .then(|| fsio::temp_path_for(&p.target)),
            })
            .collect(),
    };
    let prepared = (|| {
        write_json(&tmp.join(MANIFEST), &manifest)?;
        fsio::sync_dir(&tmp)?;
        fsio::sync_dir(&dir)?;
        for &i in &changed_idx {
            let p = &planned[i];
            fsio::write_temp(&p.target, &p.contents, &p.attrs)?;
        }
        let new_files: Vec<(Role, &Path, &[u8], FileAttrs)> = planned
            .iter()
            .map(|p| (p.role, p.target.as_path(), p.contents.as_slice(), p.attrs))
            .collect();
        write_version_dir(&tmp.join("new"), name, cert_sha256.as_deref(), &new_files)?;
        let old_files: Vec<(Role, &Path, &[u8], FileAttrs)> = planned
            .iter()
            .zip(&old)
            .filter_map(|(p, o)| {
                o.as_ref()
                    .map(|(c, a)| (p.role, p.target.as_path(), c.as_slice(), *a))
            })
            .collect();
        let old_leaf = old_files.iter().find(|f| f.0 == Role::Cert);
        let old_cert = old_leaf.map(|f| super::sha256_hex(f.2));
        let old_fingerprint = old_leaf.and_then(|f| {
            let pem = std::str::from_utf8(f.2).ok()?;
            crate::pki::parse_cert(pem)
                .ok()
                .map(|c| c.sha256_fingerprint_hex)
        });
        write_version_dir(&tmp.join("old"), name, old_cert.as_deref(), &old_files)?;
        fsio::sync_dir(&tmp)?;
        Ok::<_, FsError>((old_cert, old_fingerprint))
    })();
    let (old_cert, old_fingerprint) = match prepared {
        Ok(c) => c,
        Err(e) => {
            abort_prepared(&tmp, &manifest);
            return Err(fs_err(e));
        }
    };

    if crash::hit(CrashPoint::BeforeCommit) {
        return Err(crashed(name));
    }
    // Commit point: from here on, recovery completes the transaction.
    let committed = dir.join("txn");
    if let Err(e) = fsio::rename(&tmp, &committed).and_then(|()| fsio::sync_dir(&dir)) {
        if committed.exists() {
            // The rename happened; only the directory fsync failed. Carry on: completing is
            // what recovery would do too.
            tracing::warn!(certificate = name, error = %e, "fsync of the state directory failed after commit");
        } else {
            abort_prepared(&tmp, &manifest);
            return Err(fs_err(e));
        }
    }
    if crash::hit(CrashPoint::AfterCommit) {
        return Err(crashed(name));
    }
    let report = complete_committed(state, name)?;
    Ok(TxnResult {
        changed: report.changed,
        attrs_fixed: Vec::new(),
        previous_cert_sha256: old_cert,
        previous_fingerprint: old_fingerprint,
        previous_saved: report.previous_saved,
    })
}

/// Removes the temps of a transaction that was never committed, and its directory.
fn abort_prepared(tmp: &Path, manifest: &Manifest) {
    for f in &manifest.files {
        if let Some(t) = &f.temp {
            let _ = fsio::remove_if_exists(t);
        }
    }
    let _ = fsio::remove_dir_if_exists(tmp);
}

struct Completed {
    changed: Vec<PathBuf>,
    previous_saved: bool,
}

/// Completes the committed transaction of `name`: swaps every changed file in (reverting on
/// failure), then rotates `current/` and `previous/`. Idempotent: every step checks what is
/// already done, so it can be interrupted and run again.
fn complete_committed(state: &StateDir, name: &str) -> Result<Completed, InstallError> {
    let fs_err = |source: FsError| InstallError::Fs {
        name: name.to_string(),
        source,
    };
    let dir = state.cert_dir(name);
    let txn = dir.join("txn");
    let manifest: Manifest = read_json(&txn.join(MANIFEST)).map_err(|e| state_err(name, e))?;
    let new_dir = txn.join("new");
    let old_dir = txn.join("old");
    let mut changed = Vec::new();

    // Both copies still there: the swap may be incomplete. Once rotation has moved either one,
    // the swap had finished.
    if new_dir.is_dir() && old_dir.is_dir() {
        match swap_forward(&manifest, &new_dir) {
            Ok(c) => changed = c,
            Err(e) if e.op == CRASH_OP => return Err(crashed(name)),
            Err(forward) => {
                return match swap_back(&manifest, &new_dir, &old_dir) {
                    Ok(()) => {
                        let _ = discard(&dir, &txn);
                        let _ = fsio::sync_dir(&dir);
                        Err(fs_err(forward))
                    }
                    Err(rollback) => Err(InstallError::Inconsistent {
                        name: name.to_string(),
                        forward,
                        rollback,
                    }),
                };
            }
        }
    }

    let mut previous_saved = false;
    if old_dir.is_dir() {
        let keep = manifest.kind != TxnKind::RestoreLastGood
            && read_meta(&old_dir)
                .map(|m| !m.files.is_empty())
                .unwrap_or(false);
        if keep {
            replace_dir(&old_dir, &dir.join("previous")).map_err(fs_err)?;
            previous_saved = true;
        } else {
            fsio::remove_dir_if_exists(&old_dir).map_err(fs_err)?;
        }
    }
    if crash::hit(CrashPoint::DuringRotation) {
        return Err(crashed(name));
    }
    if new_dir.is_dir() {
        replace_dir(&new_dir, &dir.join("current")).map_err(fs_err)?;
    }
    discard(&dir, &txn).map_err(fs_err)?;
    fsio::sync_dir(&dir).map_err(fs_err)?;
    Ok(Completed {
        changed,
        previous_saved,
    })
}

/// Where a finished transaction directory is moved to be deleted. `remove_dir_all` is not
/// atomic: a crash inside it could leave a `txn/` without its manifest, which recovery would
/// take for a committed transaction it can neither complete nor revert (and every start would
/// fail). Renamed first, the leftover is plainly garbage.
const DISCARDED: &str = "txn.done";

/// Removes a finished (completed or reverted) transaction directory: rename, then delete.
fn discard(dir: &Path, txn: &Path) -> Result<(), FsError> {
    let trash = dir.join(DISCARDED);
    fsio::remove_dir_if_exists(&trash)?;
    fsio::rename(txn, &trash)?;
    fsio::remove_dir_if_exists(&trash)
}

/// Puts every changed file in place, in swap order: the prepared temp is renamed when it holds
/// the new content, otherwise (lost temp during recovery) the new content is written again.
fn swap_forward(manifest: &Manifest, new_dir: &Path) -> Result<Vec<PathBuf>, FsError> {
    let meta = read_meta_fs(new_dir)?;
    let mut changed = Vec::new();
    let mut dirs = BTreeSet::new();
    for f in &manifest.files {
        let Some(temp) = &f.temp else { continue };
        let new = read_required(&new_dir.join(f.role.stored_name()))?;
        let attrs = attrs_for(&meta, f.role);
        let temp_ok = fsio::read_optional(temp)
            .ok()
            .flatten()
            .is_some_and(|c| c == new);
        if crash::hit(CrashPoint::AfterRenames(changed.len())) {
            return Err(FsError::new(
                CRASH_OP,
                &f.target,
                std::io::Error::other("simulated crash"),
            ));
        }
        if temp_ok {
            fsio::rename(temp, &f.target)?;
        } else {
            fsio::remove_if_exists(temp)?;
            fsio::write_atomic(&f.target, &new, &attrs)?;
        }
        changed.push(f.target.clone());
        dirs.insert(fsio::parent_dir(&f.target).to_path_buf());
    }
    for d in dirs {
        fsio::sync_dir(&d)?;
    }
    Ok(changed)
}

/// Reverts a partial swap: every target that holds the new content gets the old content back
/// (or is removed when there was no old file); temps are removed.
fn swap_back(manifest: &Manifest, new_dir: &Path, old_dir: &Path) -> Result<(), FsError> {
    let old_meta = read_meta_fs(old_dir)?;
    let mut dirs = BTreeSet::new();
    for f in &manifest.files {
        let Some(temp) = &f.temp else { continue };
        fsio::remove_if_exists(temp)?;
        let new = read_required(&new_dir.join(f.role.stored_name()))?;
        let in_place = fsio::read_optional(&f.target).ok().flatten();
        if in_place.as_deref() != Some(new.as_slice()) {
            continue;
        }
        match old_meta.files.iter().find(|v| v.role == f.role) {
            Some(v) => {
                let old = read_required(&old_dir.join(f.role.stored_name()))?;
                fsio::write_atomic(&f.target, &old, &v.attrs)?;
            }
            None => fsio::remove_if_exists(&f.target)?,
        }
        dirs.insert(fsio::parent_dir(&f.target).to_path_buf());
    }
    for d in dirs {
        fsio::sync_dir(&d)?;
    }
    Ok(())
}

/// Completes or reverts whatever a crash left for `name`. Returns what it did, if anything.
pub(crate) fn recover_name(state: &StateDir, name: &str) -> Result<Option<String>, InstallError> {
    let fs_err = |source: FsError| InstallError::Fs {
        name: name.to_string(),
        source,
    };
    let dir = state.cert_dir(name);
    let mut did = None;
    let tmp = dir.join("txn.tmp");
    if tmp.is_dir() {
        // Never committed: remove its temps (the manifest, written first, lists them; when it
        // is unreadable no temp was created yet).
        if let Ok(m) = read_json::<Manifest>(&tmp.join(MANIFEST)) {
            abort_prepared(&tmp, &m);
        }
        fsio::remove_dir_if_exists(&tmp).map_err(fs_err)?;
        did = Some("reverted an uncommitted install".to_string());
    }
    let txn = dir.join("txn");
    if txn.is_dir()
        && !txn.join(MANIFEST).exists()
        && !txn.join("new").exists()
        && !txn.join("old").exists()
    {
        // Swap and rotation done, only the directory's removal was interrupted (an agent
        // before `discard` deleted it in place): nothing to complete.
        discard(&dir, &txn).map_err(fs_err)?;
        fsio::sync_dir(&dir).map_err(fs_err)?;
        did = Some("removed the remains of a finished install".to_string());
    }
    if txn.is_dir() {
        let done = complete_committed(state, name)?;
        did = Some(format!(
            "completed an interrupted install ({} file(s) swapped in)",
            done.changed.len()
        ));
    }
    for leftover in ["current.new", "current.old", DISCARDED] {
        let p = dir.join(leftover);
        if p.is_dir() {
            if leftover == "current.old" && !dir.join("current").is_dir() {
                fsio::rename(&p, &dir.join("current")).map_err(fs_err)?;
            } else {
                fsio::remove_dir_if_exists(&p).map_err(fs_err)?;
            }
        }
    }
    Ok(did)
}

/// Rewrites `current/` from `planned` when it does not already describe exactly these files.
fn refresh_current(
    state: &StateDir,
    name: &str,
    planned: &[PlannedFile],
    cert_sha256: Option<&str>,
) -> Result<(), InstallError> {
    let fs_err = |source: FsError| InstallError::Fs {
        name: name.to_string(),
        source,
    };
    let dir = state.cert_dir(name);
    let up_to_date = load_version(&dir.join("current"))
        .ok()
        .flatten()
        .is_some_and(|v| {
            v.files.len() == planned.len()
                && planned.iter().all(|p| {
                    v.files.iter().any(|f| {
                        f.role == p.role
                            && f.target == p.target
                            && f.attrs == p.attrs
                            && f.contents() == p.contents.as_slice()
                    })
                })
        });
    if up_to_date {
        return Ok(());
    }
    let files: Vec<(Role, &Path, &[u8], FileAttrs)> = planned
        .iter()
        .map(|p| (p.role, p.target.as_path(), p.contents.as_slice(), p.attrs))
        .collect();
    let staging = dir.join("current.new");
    fsio::remove_dir_if_exists(&staging).map_err(fs_err)?;
    write_version_dir(&staging, name, cert_sha256, &files).map_err(fs_err)?;
    let current = dir.join("current");
    let old = dir.join("current.old");
    fsio::remove_dir_if_exists(&old).map_err(fs_err)?;
    if current.is_dir() {
        fsio::rename(&current, &old).map_err(fs_err)?;
    }
    fsio::rename(&staging, &current).map_err(fs_err)?;
    fsio::sync_dir(&dir).map_err(fs_err)?;
    fsio::remove_dir_if_exists(&old).map_err(fs_err)?;
    Ok(())
}

/// Writes a version directory (one 0600 file per role plus `meta.json`), everything fsynced.
fn write_version_dir(
    dir: &Path,
    name: &str,
    cert_sha256: Option<&str>,
    files: &[(Role, &Path, &[u8], FileAttrs)],
) -> Result<(), FsError> {
    fsio::create_private_dir(dir)?;
    for (role, _, contents, _) in files {
        fsio::write_atomic(&dir.join(role.stored_name()), contents, &FileAttrs::PRIVATE)?;
    }
    let meta = VersionMeta {
        name: name.to_string(),
        saved_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        cert_sha256: cert_sha256.map(str::to_string),
        files: files
            .iter()
            .map(|(role, target, _, attrs)| VersionFile {
                role: *role,
                target: target.to_path_buf(),
                attrs: *attrs,
            })
            .collect(),
    };
    write_json(&dir.join(META), &meta)?;
    fsio::sync_dir(dir)
}

/// Reads a version directory; `Ok(None)` when it does not exist.
pub(crate) fn load_version(dir: &Path) -> Result<Option<StoredVersion>, FsError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let meta = read_meta_fs(dir)?;
    let mut files = Vec::with_capacity(meta.files.len());
    for f in meta.files {
        let contents = read_required(&dir.join(f.role.stored_name()))?;
        files.push(StoredFile {
            role: f.role,
            target: f.target,
            attrs: f.attrs,
            contents,
        });
    }
    Ok(Some(StoredVersion {
        name: meta.name,
        saved_at: meta.saved_at,
        cert_sha256: meta.cert_sha256,
        files,
    }))
}

/// Moves `src` to `dst`, replacing any `dst` tree, and fsyncs the parent.
fn replace_dir(src: &Path, dst: &Path) -> Result<(), FsError> {
    fsio::remove_dir_if_exists(dst)?;
    fsio::rename(src, dst)?;
    fsio::sync_dir(fsio::parent_dir(dst))
}

fn attrs_for(meta: &VersionMeta, role: Role) -> FileAttrs {
    meta.files
        .iter()
        .find(|f| f.role == role)
        .map(|f| f.attrs)
        .unwrap_or(FileAttrs::PRIVATE)
}

fn read_meta(dir: &Path) -> Result<VersionMeta, String> {
    read_json(&dir.join(META))
}

fn read_meta_fs(dir: &Path) -> Result<VersionMeta, FsError> {
    let path = dir.join(META);
    read_json(&path).map_err(|e| {
        FsError::new(
            "read",
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

fn read_required(path: &Path) -> Result<Vec<u8>, FsError> {
    fs::read(path).map_err(|e| FsError::new("read", path, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FsError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| {
        FsError::new(
            "encode",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    bytes.push(b'\n');
    fsio::write_atomic(path, &bytes, &FileAttrs::PRIVATE).map(|_| ())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("cannot decode {}: {e}", path.display()))
}

fn state_err(name: &str, detail: String) -> InstallError {
    InstallError::State {
        name: name.to_string(),
        detail,
    }
}
