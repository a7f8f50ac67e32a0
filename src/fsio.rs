//! Durable file primitives: a temp file beside the target, written, owned and chmod-ed and
//! fsynced before an atomic rename, then the directory fsynced; owner and group names resolved
//! through the system's user database (`getpwnam_r`/`getgrnam_r`: NSS, so LDAP, SSSD and
//! systemd-userdb users count as well as `/etc/passwd`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A filesystem operation that failed, with the path it was applied to and the OS error
/// (`No space left on device`, `Read-only file system`, `Permission denied`, ...).
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done: "create", "write", "fsync", "rename to", ...
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub(crate) fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        FsError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Mode and ownership a file is given before it is renamed into place.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileAttrs {
    /// Permission bits (`0o644`, `0o600`); only the low 12 bits are used.
    pub mode: u32,
    /// Numeric owner; `None` keeps the owner of the creating process.
    pub uid: Option<u32>,
    /// Numeric group; `None` keeps the creating process's group.
    pub gid: Option<u32>,
}

impl FileAttrs {
    /// A private file owned by whoever runs the agent (state copies, journal entries, keys).
    pub const PRIVATE: FileAttrs = FileAttrs {
        mode: 0o600,
        uid: None,
        gid: None,
    };

    /// A private directory owned by whoever runs the agent (state, journal, lock).
    pub const PRIVATE_DIR: FileAttrs = FileAttrs {
        mode: 0o700,
        uid: None,
        gid: None,
    };

    /// A directory for public files (certificates, chains) that the agent creates.
    pub const PUBLIC_DIR: FileAttrs = FileAttrs {
        mode: 0o755,
        uid: None,
        gid: None,
    };

    /// A directory the agent creates for a key (or PKCS#12 file) with these attributes: owned
    /// like the key, 0750 when a group is configured (so the group can reach the key), else 0700.
    pub fn key_dir(key: &FileAttrs) -> FileAttrs {
        FileAttrs {
            mode: if key.gid.is_some() { 0o750 } else { 0o700 },
            uid: key.uid,
            gid: key.gid,
        }
    }

    /// Whether `meta` already has this mode and ownership.
    pub fn matches(&self, meta: &fs::Metadata) -> bool {
        meta.permissions().mode() & 0o7777 == self.mode & 0o7777
            && self.uid.is_none_or(|u| meta.uid() == u)
            && self.gid.is_none_or(|g| meta.gid() == g)
    }
}

impl fmt::Debug for FileAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileAttrs({:04o}", self.mode)?;
        if let Some(u) = self.uid {
            write!(f, " uid={u}")?;
        }
        if let Some(g) = self.gid {
            write!(f, " gid={g}")?;
        }
        f.write_str(")")
    }
}

/// A file's identity and version as `stat` gives them: device, inode, size, and the
/// modification and status-change times in nanoseconds. A rename onto the path, a write, a
/// truncation, a chmod or a chown all change it; reading does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    /// The stamp of `path` (following symlinks), or `None` when it cannot be read (missing,
    /// unreadable): a missing file is a state of its own.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = fs::metadata(path).ok()?;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The temp file used for `target`: hidden, in the same directory (so the rename is atomic and
/// stays on one filesystem), and with a fixed name so a crash leaves at most one behind, which
/// recovery and the next write remove.
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.ccm-agent-new"))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `contents` to the temp file for `target` and returns its path. Any stale temp is
/// removed first; the new one is created exclusively (never following a planted symlink) with
/// mode 0600 so a key is never readable by others even for a moment, then written, chowned,
/// chmod-ed and fsynced. On error the temp is removed and the error names `target`.
pub fn write_temp(target: &Path, contents: &[u8], attrs: &FileAttrs) -> Result<PathBuf, FsError> {
    let temp = temp_path_for(target);
    let res = write_temp_inner(target, &temp, contents, attrs);
    if res.is_err() {
        let _ = fs::remove_file(&temp);
    }
    res.map(|()| temp)
}

fn write_temp_inner(
    target: &Path,
    temp: &Path,
    contents: &[u8],
    attrs: &FileAttrs,
) -> Result<(), FsError> {
    remove_if_exists(temp)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .map_err(|e| FsError::new("create a temp file beside", target, e))?;
    file.write_all(contents)
        .map_err(|e| FsError::new("write the temp file for", target, e))?;
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::fchown(&file, attrs.uid, attrs.gid)
            .map_err(|e| FsError::new("set the owner of the temp file for", target, e))?;
    }
    // After chown, which may clear set-id bits.
    file.set_permissions(fs::Permissions::from_mode(attrs.mode & 0o7777))
        .map_err(|e| FsError::new("set the mode of the temp file for", target, e))?;
    file.sync_all()
        .map_err(|e| FsError::new("fsync the temp file for", target, e))?;
    Ok(())
}

/// Renames `from` over `to` (atomic on one filesystem).
pub fn rename(from: &Path, to: &Path) -> Result<(), FsError> {
    fs::rename(from, to).map_err(|e| FsError::new("rename the new version into", to, e))
}

/// Fsyncs a directory so renames and creations inside it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new("fsync directory", dir, e))
}

/// Removes a file; a missing file is not an error.
pub fn remove_if_exists(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::new("remove", path, e)),
    }
}

/// Removes a directory tree; a missing one is not an error.
pub fn remove_dir_if_exists(path: &Path) -> Result<(), FsError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::new("remove directory", path, e)),
    }
}

/// Creates a directory (and its parents) with mode 0700 for the new ones, whatever the umask.
pub fn create_private_dir(path: &Path) -> Result<(), FsError> {
    create_dir_all_with(path, &FileAttrs::PRIVATE_DIR)
}

/// Creates `path` and its missing parents, each new one given `attrs` (owner and group first,
/// then the mode) whatever the umask, which only ever removes bits from what `mkdir` is asked
/// for. Directories that exist are left as they are.
pub fn create_dir_all_with(path: &Path, attrs: &FileAttrs) -> Result<(), FsError> {
    let missing: Vec<&Path> = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| !p.is_dir())
        .collect();
    for dir in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(attrs.mode & 0o777).create(dir) {
            Ok(()) => fix_attrs(dir, attrs)?,
            // Created meanwhile by someone else: theirs, like any existing directory.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(FsError::new("create directory", dir, e)),
        }
    }
    Ok(())
}

/// Reads a file; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| FsError::new("read", path, e))?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::new("open", path, e)),
    }
}

/// Atomically and durably replaces `target` with `contents`: temp file in the same directory,
/// write, chown, chmod, fsync, rename, fsync the directory. When the file already holds exactly
/// `contents`, nothing is rewritten (mode and owner are corrected in place if they differ) and
/// `Ok(false)` is returned.
pub fn write_atomic(target: &Path, contents: &[u8], attrs: &FileAttrs) -> Result<bool, FsError> {
    if let Ok(Some(existing)) = read_optional(target)
        && existing == contents
    {
        fix_attrs(target, attrs)?;
        return Ok(false);
    }
    let temp = write_temp(target, contents, attrs)?;
    if let Err(e) = rename(&temp, target) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(parent_dir(target))?;
    Ok(true)
}

/// Gives an existing file the mode and owner in `attrs`, without touching its content.
pub fn fix_attrs(path: &Path, attrs: &FileAttrs) -> Result<(), FsError> {
    let meta = fs::metadata(path).map_err(|e| FsError::new("stat", path, e))?;
    if attrs.matches(&meta) {
        return Ok(());
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::chown(path, attrs.uid, attrs.gid)
            .map_err(|e| FsError::new("change owner of", path, e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(attrs.mode & 0o7777))
        .map_err(|e| FsError::new("set mode of", path, e))
}

/// A user or group given by name or by numeric id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Principal {
    Id(u32),
    Name(String),
}

impl Principal {
    /// `"1000"` is an id, anything else a name.
    pub fn parse(s: &str) -> Principal {
        match s.parse::<u32>() {
            Ok(id) => Principal::Id(id),
            Err(_) => Principal::Name(s.to_string()),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Id(id) => write!(f, "{id}"),
            Principal::Name(n) => f.write_str(n),
        }
    }
}

/// Looks a user name up through the system's user database (`getpwnam_r`, so every NSS source
/// in `/etc/nsswitch.conf`); `Ok(None)` when no source knows it.
pub fn lookup_user(name: &str) -> io::Result<Option<u32>> {
    nix::unistd::User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(io::Error::from)
}

/// Looks a group name up through the system's group database (`getgrnam_r`, NSS).
pub fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    nix::unistd::Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(io::Error::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_through_the_system_database() {
        assert_eq!(lookup_user("root").unwrap(), Some(0));
        assert_eq!(lookup_group("root").unwrap(), Some(0));
        assert_eq!(lookup_user("no-such-user-ccm").unwrap(), None);
        assert_eq!(lookup_group("no-such-group-ccm").unwrap(), None);
    }

    #[test]
    fn new_directories_get_their_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        fs::create_dir(&existing).unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o711)).unwrap();
        let attrs = FileAttrs {
            mode: 0o770,
            ..FileAttrs::PRIVATE
        };
        // The test process's umask (typically 022) would take the group's write bit: the mode
        // is set after mkdir.
        create_dir_all_with(&existing.join("a/b"), &attrs).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&existing.join("a")), 0o770);
        assert_eq!(mode(&existing.join("a/b")), 0o770);
        assert_eq!(
            mode(&existing),
            0o711,
            "an existing directory is left alone"
        );
        create_dir_all_with(&existing.join("a/b"), &FileAttrs::PRIVATE_DIR).unwrap();
        assert_eq!(mode(&existing.join("a/b")), 0o770);
        let file = existing.join("file");
        fs::write(&file, b"x").unwrap();
        let err = create_dir_all_with(&file.join("sub"), &attrs).unwrap_err();
        assert!(
            err.to_string().contains("existing/file: File exists"),
            "{err}"
        );
    }

    #[test]
    fn principal_parse() {
        assert_eq!(Principal::parse("0"), Principal::Id(0));
        assert_eq!(Principal::parse("nginx"), Principal::Name("nginx".into()));
    }

    #[test]
    fn temp_name_is_hidden_sibling() {
        assert_eq!(
            temp_path_for(Path::new("/etc/ssl/a/privkey.pem")),
            PathBuf::from("/etc/ssl/a/.privkey.pem.ccm-agent-new")
        );
    }
}
