//! The agent's lock on its state directory, `<state>/agent.lock` (an advisory `flock` holding
//! "PID ROLE"): the daemon holds it while it runs, `ccm-agent renew` takes it, so the two never
//! renew the same certificate at once.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The agent's exclusive hold on its state directory: the daemon keeps it while it runs, and
/// `ccm-agent renew` takes it, so the two never renew the same certificate at once. Released
/// when dropped (or when the process dies: it is an advisory `flock`).
#[derive(Debug)]
pub struct StateLock {
    file: std::fs::File,
    path: PathBuf,
    role: String,
}

impl StateLock {
    pub const FILE: &'static str = "agent.lock";

    /// Takes the lock for `role` (`daemon` or `renew`), or says who holds it.
    pub fn acquire(state_dir: &Path, role: &str) -> anyhow::Result<Self> {
        crate::fsio::create_private_dir(state_dir).context("agent.state_dir")?;
        let path = state_dir.join(Self::FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // Whatever the umask, and for a file an older version created with a looser mode.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                // Who holds it ("PID ROLE"), for the message another process prints. Best
                // effort: the lock works without it.
                let _ = file.set_len(0);
                let _ = (&file).write_all(format!("{} {role}\n", std::process::id()).as_bytes());
                Ok(Self {
                    file,
                    path,
                    role: role.to_owned(),
                })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let mut words = text.split_whitespace();
                let pid = words.next().and_then(|w| w.parse::<u32>().ok());
                let what = match (pid, words.next()) {
                    (Some(pid), Some("daemon")) => format!(
                        "the daemon (pid {pid}) is running. To have it check every certificate \
                         now: kill -USR1 {pid} (or systemctl kill -s USR1 --kill-whom=main \
                         ccm-agent)"
                    ),
                    (Some(pid), _) => {
                        format!("a `ccm-agent renew` (pid {pid}) is running; wait for it")
                    }
                    (None, _) => "another ccm-agent holds it; stop it or wait".to_owned(),
                };
                anyhow::bail!(
                    "{} is in use (lock {}): {what}. Running both would renew the same \
                     certificates twice; --dry-run works beside it",
                    state_dir.display(),
                    path.display()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock is still the state directory's: the file this process locked is the
    /// one at its path. Someone who deletes the state directory (or the lock file) under a
    /// running daemon takes the lock with it, and a `renew` could then run beside the daemon:
    /// the daemon calls this on every pass and every few seconds, and takes the lock again
    /// (`Ok(true)`). When another process took it meanwhile, the error says who, and the daemon
    /// stops rather than run beside it.
    pub fn ensure(&mut self) -> anyhow::Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let held = self
            .file
            .metadata()
            .with_context(|| format!("reading the lock {}", self.path.display()))?;
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => return Ok(false),
            Ok(_) | Err(_) => {}
        }
        let dir = crate::fsio::parent_dir(&self.path);
        *self = Self::acquire(dir, &self.role).with_context(|| {
            format!(
                "the lock {} was removed under this {} and could not be taken again",
                self.path.display(),
                self.role
            )
        })?;
        Ok(true)
    }
}
