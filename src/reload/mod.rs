//! After an install changed a certificate's files: run the hooks, test the servers'
//! configuration, reload them, prove over TLS that the new certificate is served, and roll back
//! (previous files, reload again, check the old certificate is back) when any of that fails.
//!
//! # Order
//! [`apply_after_install`] runs after [`crate::install::install`] swapped the files in:
//! 1. `pre` hooks;
//! 2. every action's configuration test (`nginx -t`, `apachectl -t`), all before any reload, so
//!    a rejected configuration never reaches a running server;
//! 3. every action's reload (a signal to the master, `nginx -s reload`, `-k graceful`,
//!    `systemctl reload`, a command);
//! 4. the served-certificate check: each endpoint must present the new leaf (by SHA-256
//!    fingerprint) within the verify window (old workers drain, systemd reloads are
//!    asynchronous). A reload signal is fire-and-forget: an nginx master that rejects the new
//!    configuration only logs it and keeps the old one, an Apache parent that fails on the new
//!    certificate exits while `-k graceful` reports success; this check is what catches both;
//! 5. `deploy` hooks (their failures are reported, not rolled back: the certificate is served);
//! 6. `post` hooks, also after a failure (with `CCM_RESULT=failure`).
//!
//! Any failure in 1–4 rolls back: the caller's `rollback` (normally
//! [`crate::install::restore_previous`]) puts the previous files back, the actions are tested
//! and reloaded again when a reload had already run, and the endpoints are checked for the old
//! certificate. The error carries the failing child's stderr and what the rollback achieved.
//!
//! The configuration is tested against the files in place (after the swap) rather than
//! against a staged copy: rewriting a server's configuration to point at staged paths is
//! fragile, and the swapped-in files are only read by a running server at the reload this module
//! triggers, so testing after the swap and restoring on failure is equivalent.

pub mod config;
pub mod metrics;
pub mod probe;
pub mod process;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::logging::Event;

pub use metrics::ReloadMetrics;
pub use probe::{
    Observation, ProbeError, VerifyEndpoint, fingerprint_der, fingerprint_pem, served_fingerprint,
    wait_for_fingerprint,
};
pub use process::{Argv, RunError};

/// How long the servers get to serve the new certificate after a reload.
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of each hook.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit of each configuration test and reload command.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_NGINX_BINARY: &str = "nginx";
pub const DEFAULT_APACHE_BINARY: &str = "apachectl";
pub const SYSTEMCTL: &str = "systemctl";

/// What to do after a certificate's files changed (`[[certificates.reload]]`,
/// `[[certificates.verify]]`, `[certificates.hooks]`). The default does nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadPlan {
    pub actions: Vec<ReloadAction>,
    pub verify: Vec<VerifyEndpoint>,
    pub verify_timeout: Duration,
    pub hooks: Hooks,
}

impl Default for ReloadPlan {
    fn default() -> Self {
        ReloadPlan {
            actions: Vec::new(),
            verify: Vec::new(),
            verify_timeout: DEFAULT_VERIFY_TIMEOUT,
            hooks: Hooks::default(),
        }
    }
}

impl ReloadPlan {
    /// Nothing to run and nothing to check.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.verify.is_empty() && self.hooks.is_empty()
    }
}

/// One way of making a server load the new files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadAction {
    Nginx(NginxAction),
    Apache(ApacheAction),
    /// `systemctl <mode> <unit>`.
    Systemd {
        unit: String,
        mode: SystemdMode,
        timeout: Duration,
    },
    /// A signal to the process whose id is in `pid_file` (a sidecar that reloads on SIGHUP).
    Signal {
        pid_file: PathBuf,
        signal: SignalName,
    },
    /// Any command; it must exit 0 within `timeout`.
    Command {
        argv: Argv,
        timeout: Duration,
    },
}

/// nginx: `nginx -t`, then SIGHUP to the master (`pid_file`), `systemctl reload`, or
/// `nginx -s reload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxAction {
    pub binary: PathBuf,
    /// `-c`; `None`: nginx's compiled-in default.
    pub config: Option<PathBuf>,
    /// `-p`; `None`: nginx's compiled-in default.
    pub prefix: Option<PathBuf>,
    /// Reload by SIGHUP to the pid in this file.
    pub pid_file: Option<PathBuf>,
    /// Reload by `systemctl reload <unit>` (wins over `pid_file`).
    pub systemd_unit: Option<String>,
    pub timeout: Duration,
}

/// Apache httpd: `apachectl -t`, then a graceful restart: SIGUSR1 to the parent (`pid_file`),
/// `systemctl reload`, or `apachectl -k graceful`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApacheAction {
    /// `apachectl`, `apache2ctl`, or the server binary itself (`apache2`, `httpd`): all take
    /// `-f`, `-t` and `-k graceful`.
    pub binary: PathBuf,
    /// `-f`; `None`: the compiled-in default.
    pub config: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub systemd_unit: Option<String>,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemdMode {
    Reload,
    Restart,
    ReloadOrRestart,
}

impl SystemdMode {
    pub const ALL: &'static [(&'static str, SystemdMode)] = &[
        ("reload", SystemdMode::Reload),
        ("restart", SystemdMode::Restart),
        ("reload-or-restart", SystemdMode::ReloadOrRestart),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SystemdMode::Reload => "reload",
            SystemdMode::Restart => "restart",
            SystemdMode::ReloadOrRestart => "reload-or-restart",
        }
    }
}

/// The signals a reload may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalName {
    Hup,
    Usr1,
    Usr2,
    Winch,
    Quit,
    Term,
    Int,
}

impl SignalName {
    pub const ALL: &'static [(&'static str, SignalName)] = &[
        ("HUP", SignalName::Hup),
        ("USR1", SignalName::Usr1),
        ("USR2", SignalName::Usr2),
        ("WINCH", SignalName::Winch),
        ("QUIT", SignalName::Quit),
        ("TERM", SignalName::Term),
        ("INT", SignalName::Int),
    ];

    /// `HUP`, `SIGHUP` or `hup`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix("SIG").unwrap_or(s);
        let s = s.strip_prefix("sig").unwrap_or(s);
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, v)| *v)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    fn to_rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            SignalName::Hup => Signal::HUP,
            SignalName::Usr1 => Signal::USR1,
            SignalName::Usr2 => Signal::USR2,
            SignalName::Winch => Signal::WINCH,
            SignalName::Quit => Signal::QUIT,
            SignalName::Term => Signal::TERM,
            SignalName::Int => Signal::INT,
        }
    }
}

/// certbot-style hooks (see [`hook_env`] for what they are told).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooks {
    /// Before the configuration tests and reloads; a failure rolls back.
    pub pre: Vec<Argv>,
    /// After the new certificate is verified; failures are reported only.
    pub deploy: Vec<Argv>,
    /// Last, after success or failure (`CCM_RESULT`); failures are reported only.
    pub post: Vec<Argv>,
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            pre: Vec::new(),
            deploy: Vec::new(),
            post: Vec::new(),
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.deploy.is_empty() && self.post.is_empty()
    }
}

/// How the server is told to reload.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ReloadStep {
    Run(Argv, Duration),
    Signal(PathBuf, SignalName),
    /// The signal when the process in the pid file is alive, otherwise the command, which
    /// starts the server (a rollback after a reload that took the server down).
    SignalOrStart(PathBuf, SignalName, Argv, Duration),
}

impl fmt::Display for ReloadStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadStep::Run(argv, _) => write!(f, "`{argv}`"),
            ReloadStep::Signal(pid_file, sig) => {
                write!(
                    f,
                    "SIG{} to the pid in {}",
                    sig.as_str(),
                    pid_file.display()
                )
            }
            ReloadStep::SignalOrStart(pid_file, sig, start, _) => {
                write!(
                    f,
                    "SIG{} to the pid in {}, or `{start}` when it is not running",
                    sig.as_str(),
                    pid_file.display()
                )
            }
        }
    }
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl ReloadAction {
    /// A short name for messages: `nginx`, `apache`, `systemd haproxy.service`, ...
    pub fn label(&self) -> String {
        match self {
            ReloadAction::Nginx(_) => "nginx".into(),
            ReloadAction::Apache(_) => "apache".into(),
            ReloadAction::Systemd { unit, .. } => format!("systemd {unit}"),
            ReloadAction::Signal { pid_file, .. } => format!("signal {}", pid_file.display()),
            ReloadAction::Command { argv, .. } => {
                format!("command {}", argv.program().unwrap_or(""))
            }
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            ReloadAction::Nginx(a) => a.timeout,
            ReloadAction::Apache(a) => a.timeout,
            ReloadAction::Systemd { timeout, .. } | ReloadAction::Command { timeout, .. } => {
                *timeout
            }
            ReloadAction::Signal { .. } => DEFAULT_ACTION_TIMEOUT,
        }
    }

    /// The configuration test, for servers that have one.
    pub fn config_test(&self) -> Option<Argv> {
        match self {
            ReloadAction::Nginx(a) => {
                let mut v = vec![path_arg(&a.binary)];
                v.extend(a.location_args());
                v.push("-t".into());
                Some(Argv(v))
            }
            ReloadAction::Apache(a) => {
                let mut v = vec![path_arg(&a.binary)];
                v.extend(a.location_args());
                v.push("-t".into());
                Some(Argv(v))
            }
            _ => None,
        }
    }

    /// The reload of a rollback: like [`Self::reload_step`], but it also brings back a server
    /// that the failed change took down (an Apache parent exits when a graceful restart meets a
    /// certificate that does not match its key, and a signal to its stale pid file would fail):
    /// `systemctl reload-or-restart` instead of `reload`, and for a pid file, the server started
    /// when the pid is not alive. `-k graceful` and `nginx -s reload` need no change: apachectl
    /// starts a server that is not running, and an nginx master does not exit on a bad reload.
    fn rollback_reload_step(&self) -> ReloadStep {
        let restart = |unit: &str, timeout: Duration| {
            ReloadStep::Run(
                Argv::new([SYSTEMCTL, SystemdMode::ReloadOrRestart.as_str(), unit]),
                timeout,
            )
        };
        match self {
            ReloadAction::Nginx(a) => match (&a.systemd_unit, &a.pid_file) {
                (Some(unit), _) => restart(unit, a.timeout),
                (None, Some(pid)) => {
                    let mut v = vec![path_arg(&a.binary)];
                    v.extend(a.location_args());
                    ReloadStep::SignalOrStart(pid.clone(), SignalName::Hup, Argv(v), a.timeout)
                }
                (None, None) => self.reload_step(),
            },
            ReloadAction::Apache(a) => match (&a.systemd_unit, &a.pid_file) {
                (Some(unit), _) => restart(unit, a.timeout),
                (None, Some(pid)) => {
                    let mut v = vec![path_arg(&a.binary)];
                    v.extend(a.location_args());
                    v.extend(["-k".into(), "start".into()]);
                    ReloadStep::SignalOrStart(pid.clone(), SignalName::Usr1, Argv(v), a.timeout)
                }
                (None, None) => self.reload_step(),
            },
            _ => self.reload_step(),
        }
    }

    fn reload_step(&self) -> ReloadStep {
        let systemctl = |mode: SystemdMode, unit: &str| Argv::new([SYSTEMCTL, mode.as_str(), unit]);
        match self {
            ReloadAction::Nginx(a) => match (&a.systemd_unit, &a.pid_file) {
                (Some(unit), _) => ReloadStep::Run(systemctl(SystemdMode::Reload, unit), a.timeout),
                (None, Some(pid)) => ReloadStep::Signal(pid.clone(), SignalName::Hup),
                (None, None) => {
                    let mut v = vec![path_arg(&a.binary)];
                    v.extend(a.location_args());
                    v.extend(["-s".into(), "reload".into()]);
                    ReloadStep::Run(Argv(v), a.timeout)
                }
            },
            ReloadAction::Apache(a) => match (&a.systemd_unit, &a.pid_file) {
                (Some(unit), _) => ReloadStep::Run(systemctl(SystemdMode::Reload, unit), a.timeout),
                (None, Some(pid)) => ReloadStep::Signal(pid.clone(), SignalName::Usr1),
                (None, None) => {
                    let mut v = vec![path_arg(&a.binary)];
                    v.extend(a.location_args());
                    v.extend(["-k".into(), "graceful".into()]);
                    ReloadStep::Run(Argv(v), a.timeout)
                }
            },
            ReloadAction::Systemd {
                unit,
                mode,
                timeout,
            } => ReloadStep::Run(systemctl(*mode, unit), *timeout),
            ReloadAction::Signal { pid_file, signal } => {
                ReloadStep::Signal(pid_file.clone(), *signal)
            }
            ReloadAction::Command { argv, timeout } => ReloadStep::Run(argv.clone(), *timeout),
        }
    }
}

impl NginxAction {
    /// Defaults: `nginx` from `PATH`, its compiled-in configuration, `nginx -s reload`.
    pub fn new() -> Self {
        NginxAction {
            binary: DEFAULT_NGINX_BINARY.into(),
            config: None,
            prefix: None,
            pid_file: None,
            systemd_unit: None,
            timeout: DEFAULT_ACTION_TIMEOUT,
        }
    }

    fn location_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(p) = &self.prefix {
            v.extend(["-p".into(), path_arg(p)]);
        }
        if let Some(c) = &self.config {
            v.extend(["-c".into(), path_arg(c)]);
        }
        v
    }
}

impl Default for NginxAction {
    fn default() -> Self {
        Self::new()
    }
}

impl ApacheAction {
    /// Defaults: `apachectl` from `PATH`, its compiled-in configuration, `-k graceful`.
    pub fn new() -> Self {
        ApacheAction {
            binary: DEFAULT_APACHE_BINARY.into(),
            config: None,
            pid_file: None,
            systemd_unit: None,
            timeout: DEFAULT_ACTION_TIMEOUT,
        }
    }

    fn location_args(&self) -> Vec<String> {
        match &self.config {
            Some(c) => vec!["-f".into(), path_arg(c)],
            None => Vec::new(),
        }
    }
}

impl Default for ApacheAction {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the installed files are, for the hooks' environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledPaths {
    pub cert: Option<PathBuf>,
    pub chain: Option<PathBuf>,
    pub fullchain: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl From<&crate::install::OutputPaths> for InstalledPaths {
    fn from(o: &crate::install::OutputPaths) -> Self {
        InstalledPaths {
            cert: Some(o.cert.clone()),
            chain: Some(o.chain.clone()),
            fullchain: Some(o.fullchain.clone()),
            key: Some(o.key.clone()),
        }
    }
}

/// What an install changed, as the hooks and the check need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeContext {
    /// The configured certificate name.
    pub name: String,
    /// Whether the install changed any file ([`crate::install::InstallOutcome::changed`]).
    /// When false, nothing is run: hooks and reloads happen only when something changed.
    pub changed: bool,
    pub paths: InstalledPaths,
    /// DNS names and IP addresses of the new certificate.
    pub names: Vec<String>,
    /// SHA-256 (hex, as [`fingerprint_pem`]) of the leaf that was installed before, if any.
    pub old_fingerprint: Option<String>,
    /// SHA-256 of the leaf just installed.
    pub new_fingerprint: String,
}

impl ChangeContext {
    /// The context after an install of `name`, read from the state directory: the new leaf from
    /// the last good version (what the install just put in place), the old one from the
    /// previous version (`None` on a first install). `changed` is
    /// [`crate::install::InstallOutcome::changed`] (or the renewal report's `install_changed`).
    pub fn after_install(
        state: &crate::state::StateDir,
        name: &str,
        paths: InstalledPaths,
        changed: bool,
    ) -> Result<Self, String> {
        let leaf = |v: &crate::install::StoredVersion| {
            use crate::install::Role;
            let file = v.file(Role::Cert).or_else(|| v.file(Role::Fullchain))?;
            let pem = std::str::from_utf8(file.contents()).ok()?;
            crate::pki::parse_cert(pem).ok()
        };
        let current = crate::install::last_good(state, name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("certificate {name}: nothing installed"))?;
        let new = leaf(&current).ok_or_else(|| {
            format!("certificate {name}: the installed version has no readable certificate")
        })?;
        let old = crate::install::previous(state, name)
            .map_err(|e| e.to_string())?
            .as_ref()
            .and_then(leaf);
        Ok(Self::of_install(
            name,
            paths,
            changed,
            &new,
            old.map(|c| c.sha256_fingerprint_hex),
        ))
    }

    /// The context of an install whose new leaf the caller already holds (the pass's install
    /// stage): nothing is read from disk.
    pub fn of_install(
        name: &str,
        paths: InstalledPaths,
        changed: bool,
        new: &crate::pki::CertInfo,
        old_fingerprint: Option<String>,
    ) -> Self {
        let names = new
            .sans
            .iter()
            .filter(|s| matches!(s.kind(), "DNS" | "IP"))
            .map(crate::pki::SubjectAltName::value)
            .collect();
        ChangeContext {
            name: name.to_owned(),
            changed,
            paths,
            names,
            old_fingerprint,
            new_fingerprint: new.sha256_fingerprint_hex.clone(),
        }
    }
}

/// Which step of the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    PreHook,
    ConfigTest,
    Reload,
    Verify,
    DeployHook,
    PostHook,
    /// The caller's file restore.
    RestoreFiles,
    /// A configuration test or reload after restoring the files.
    RollbackReload,
    /// The check that the old certificate is served again.
    RollbackVerify,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PreHook => "pre hook",
            Stage::ConfigTest => "config test",
            Stage::Reload => "reload",
            Stage::Verify => "served-certificate check",
            Stage::DeployHook => "deploy hook",
            Stage::PostHook => "post hook",
            Stage::RestoreFiles => "restore previous files",
            Stage::RollbackReload => "reload after rollback",
            Stage::RollbackVerify => "old certificate check",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that was run or checked.
#[derive(Clone, Debug)]
pub struct StepRecord {
    pub stage: Stage,
    /// The command, signal or endpoints.
    pub what: String,
    /// `Err` with the message (including the child's stderr).
    pub outcome: Result<(), String>,
    pub elapsed: Duration,
}

/// What a successful [`apply_after_install`] did.
#[derive(Clone, Debug, Default)]
pub struct ReloadReport {
    /// False when nothing had changed, so nothing was run.
    pub ran: bool,
    pub steps: Vec<StepRecord>,
    /// What each endpoint served at the end (empty without endpoints).
    pub verified: Vec<Observation>,
    /// Failed deploy and post hooks (reported, not rolled back).
    pub hook_failures: Vec<String>,
}

/// How far a rollback got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackReport {
    /// The caller's restore of the previous files.
    pub files: Result<(), String>,
    /// The configuration test and reload after the restore; `None` when not needed (no reload
    /// had run yet) or not possible (the files could not be restored).
    pub reload: Option<Result<(), String>>,
    /// Whether the endpoints serve the old certificate again; `None` when not checked (no
    /// endpoints, no old fingerprint, or the files could not be restored).
    pub old_served: Option<Result<(), String>>,
}

impl RollbackReport {
    /// Files restored, reloaded where needed, and the old certificate seen where checkable.
    pub fn complete(&self) -> bool {
        self.files.is_ok()
            && !matches!(self.reload, Some(Err(_)))
            && !matches!(self.old_served, Some(Err(_)))
    }
}

impl fmt::Display for RollbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.files {
            Ok(()) => f.write_str("previous files restored")?,
            Err(e) => return write!(f, "restoring the previous files failed: {e}"),
        }
        match &self.reload {
            None => {}
            Some(Ok(())) => f.write_str(", reloaded")?,
            Some(Err(e)) => write!(f, ", reload failed: {e}")?,
        }
        match &self.old_served {
            None => Ok(()),
            Some(Ok(())) => f.write_str(", old certificate served again"),
            Some(Err(e)) => write!(f, ", old certificate NOT served: {e}"),
        }
    }
}

/// Why the new certificate is not (known to be) served. The rollback has run.
#[derive(Clone, Debug)]
pub struct ReloadError {
    pub name: String,
    /// The stage that failed: [`Stage::PreHook`], [`Stage::ConfigTest`], [`Stage::Reload`] or
    /// [`Stage::Verify`].
    pub stage: Stage,
    /// What failed and how, with the child's stderr.
    pub detail: String,
    /// The failing child's stderr alone (empty when the failure was not a child's).
    pub stderr: String,
    pub rollback: RollbackReport,
    /// Everything that ran, rollback included.
    pub steps: Vec<StepRecord>,
    /// Failed post hooks.
    pub hook_failures: Vec<String>,
}

impl ReloadError {
    /// Label for the `result` of the reload counter.
    pub fn result_label(&self) -> &'static str {
        match self.stage {
            Stage::PreHook => "pre_hook_failed",
            Stage::ConfigTest => "config_test_failed",
            Stage::Verify => "verify_failed",
            _ => "reload_failed",
        }
    }
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate {}: {} failed: {}; rollback: {}",
            self.name, self.stage, self.detail, self.rollback
        )
    }
}

impl std::error::Error for ReloadError {}

/// The environment of every hook (certbot's names where certbot has them):
/// - `CCM_CERT_NAME`: the configured name; `CCM_HOOK`: `pre`, `deploy` or `post`;
/// - `CCM_CERT_PATH`, `CCM_CHAIN_PATH`, `CCM_FULLCHAIN_PATH`, `CCM_KEY_PATH` (empty when that
///   file is not written);
/// - `CCM_CERT_NAMES`: the certificate's names, space separated (also `RENEWED_DOMAINS`);
/// - `CCM_OLD_FINGERPRINT` (empty for a first install), `CCM_NEW_FINGERPRINT`: SHA-256 of the
///   leaf, upper-case hex;
/// - `RENEWED_LINEAGE`: the directory of the certificate (or full chain, or key) file;
/// - `CCM_RESULT` (post hooks only): `success` or `failure`.
pub fn hook_env(ctx: &ChangeContext, hook: &str, result: Option<bool>) -> Vec<(String, String)> {
    let p = |o: &Option<PathBuf>| o.as_deref().map(path_arg).unwrap_or_default();
    let lineage = [&ctx.paths.cert, &ctx.paths.fullchain, &ctx.paths.key]
        .into_iter()
        .flatten()
        .next()
        .and_then(|f| f.parent())
        .map(path_arg)
        .unwrap_or_default();
    let names = ctx.names.join(" ");
    let mut env = vec![
        ("CCM_CERT_NAME".to_owned(), ctx.name.clone()),
        ("CCM_HOOK".to_owned(), hook.to_owned()),
        ("CCM_CERT_PATH".to_owned(), p(&ctx.paths.cert)),
        ("CCM_CHAIN_PATH".to_owned(), p(&ctx.paths.chain)),
        ("CCM_FULLCHAIN_PATH".to_owned(), p(&ctx.paths.fullchain)),
        ("CCM_KEY_PATH".to_owned(), p(&ctx.paths.key)),
        ("CCM_CERT_NAMES".to_owned(), names.clone()),
        (
            "CCM_OLD_FINGERPRINT".to_owned(),
            ctx.old_fingerprint.clone().unwrap_or_default(),
        ),
        (
            "CCM_NEW_FINGERPRINT".to_owned(),
            ctx.new_fingerprint.clone(),
        ),
        ("RENEWED_LINEAGE".to_owned(), lineage),
        ("RENEWED_DOMAINS".to_owned(), names),
    ];
    if let Some(ok) = result {
        let r = if ok { "success" } else { "failure" };
        env.push(("CCM_RESULT".to_owned(), r.to_owned()));
    }
    env
}

/// What `renew --dry-run` prints: the hooks, tests, reloads and checks that would run after a
/// change, in order, one line each.
pub fn describe(plan: &ReloadPlan) -> Vec<String> {
    let mut lines = Vec::new();
    let t = |d: Duration| crate::values::format_duration(d);
    for h in &plan.hooks.pre {
        lines.push(format!(
            "pre hook: `{h}` (time limit {})",
            t(plan.hooks.timeout)
        ));
    }
    for a in &plan.actions {
        if let Some(test) = a.config_test() {
            lines.push(format!("{}: config test `{test}`", a.label()));
        }
    }
    for a in &plan.actions {
        let limit = match a.reload_step() {
            ReloadStep::Run(_, d) | ReloadStep::SignalOrStart(_, _, _, d) => {
                format!(" (time limit {})", t(d))
            }
            ReloadStep::Signal(..) => String::new(),
        };
        lines.push(format!("{}: reload {}{limit}", a.label(), a.reload_step()));
    }
    for e in &plan.verify {
        lines.push(format!(
            "verify: {e} serves the new certificate within {}",
            t(plan.verify_timeout)
        ));
    }
    for h in &plan.hooks.deploy {
        lines.push(format!(
            "deploy hook: `{h}` (time limit {})",
            t(plan.hooks.timeout)
        ));
    }
    for h in &plan.hooks.post {
        lines.push(format!(
            "post hook: `{h}` (time limit {})",
            t(plan.hooks.timeout)
        ));
    }
    if !plan.actions.is_empty() || !plan.verify.is_empty() {
        lines.push(
            "on failure: restore the previous files, reload again, check the old certificate"
                .into(),
        );
    }
    lines
}

/// Runs the plan after an install (see the module doc for the order). `rollback` restores the
/// previous files (normally `|| install::restore_previous(&state, name)`); it is called at most
/// once, synchronously (a short file swap that must not be interrupted), and only on failure.
///
/// Returns the report on success, or the error after rolling back. When `ctx.changed` is false
/// nothing runs and the report says so.
pub async fn apply_after_install<R, T, E>(
    plan: &ReloadPlan,
    ctx: &ChangeContext,
    rollback: R,
) -> Result<ReloadReport, ReloadError>
where
    R: FnOnce() -> Result<T, E>,
    E: fmt::Display,
{
    let mut report = ReloadReport::default();
    if !ctx.changed {
        return Ok(report);
    }
    report.ran = true;
    let mut run = Runner {
        steps: Vec::new(),
        ctx,
    };
    let mut reloaded = false;
    let failure = 'forward: {
        for h in &plan.hooks.pre {
            if let Err(f) = run.hook(Stage::PreHook, h, plan.hooks.timeout, None).await {
                break 'forward Some(f);
            }
        }
        for a in &plan.actions {
            if let Err(f) = run.config_test(Stage::ConfigTest, a).await {
                break 'forward Some(f);
            }
        }
        for a in &plan.actions {
            reloaded = true;
            if let Err(f) = run.reload(Stage::Reload, a).await {
                break 'forward Some(f);
            }
        }
        if !plan.verify.is_empty() {
            match run
                .verify(Stage::Verify, plan, &ctx.new_fingerprint, "new")
                .await
            {
                Ok(obs) => report.verified = obs,
                Err((f, obs)) => {
                    report.verified = obs;
                    break 'forward Some(f);
                }
            }
        }
        None
    };
    let Some(failure) = failure else {
        for h in &plan.hooks.deploy {
            if let Err(f) = run
                .hook(Stage::DeployHook, h, plan.hooks.timeout, None)
                .await
            {
                report.hook_failures.push(f.detail);
            }
        }
        for h in &plan.hooks.post {
            if let Err(f) = run
                .hook(Stage::PostHook, h, plan.hooks.timeout, Some(true))
                .await
            {
                report.hook_failures.push(f.detail);
            }
        }
        report.steps = run.steps;
        tracing::info!(
            event = %Event::Reloaded,
            certificate = %ctx.name,
            fingerprint = %ctx.new_fingerprint,
            "the new certificate is in use"
        );
        return Ok(report);
    };

    // Roll back: previous files, reload again if a reload ran, check the old certificate.
    let started = Instant::now();
    let files = rollback().map(|_| ()).map_err(|e| e.to_string());
    run.record(
        Stage::RestoreFiles,
        "previous version".into(),
        &files,
        started,
    );
    let mut rb = RollbackReport {
        files,
        reload: None,
        old_served: None,
    };
    if rb.files.is_ok() {
        if reloaded {
            let mut result = Ok(());
            for a in &plan.actions {
                let r = match run.config_test(Stage::RollbackReload, a).await {
                    Ok(()) => run.reload(Stage::RollbackReload, a).await,
                    Err(f) => Err(f),
                };
                if let Err(f) = r
                    && result.is_ok()
                {
                    result = Err(f.detail);
                }
            }
            rb.reload = Some(result);
        }
        if let Some(old) = &ctx.old_fingerprint
            && !plan.verify.is_empty()
        {
            let r = run.verify(Stage::RollbackVerify, plan, old, "old").await;
            rb.old_served = Some(r.map(|_| ()).map_err(|(f, _)| f.detail));
        }
    }
    let mut hook_failures = Vec::new();
    for h in &plan.hooks.post {
        if let Err(f) = run
            .hook(Stage::PostHook, h, plan.hooks.timeout, Some(false))
            .await
        {
            hook_failures.push(f.detail);
        }
    }
    let error = ReloadError {
        name: ctx.name.clone(),
        stage: failure.stage,
        detail: failure.detail,
        stderr: failure.stderr,
        rollback: rb,
        steps: run.steps,
        hook_failures,
    };
    if error.rollback.files.is_ok() {
        tracing::warn!(
            event = %Event::RolledBack,
            certificate = %ctx.name,
            reason = %error.stage,
            error_kind = %error.result_label(),
            fingerprint = ctx.old_fingerprint.as_deref().map(tracing::field::display),
            rollback = %error.rollback,
            error = %error.detail,
            "rolled back to the previous certificate"
        );
    } else {
        tracing::error!(
            certificate = %ctx.name,
            reason = %error.stage,
            error_kind = %error.result_label(),
            rollback = %error.rollback,
            error = %error.detail,
            "could not roll back to the previous certificate"
        );
    }
    Err(error)
}

/// A failed step.
struct Failure {
    stage: Stage,
    detail: String,
    stderr: String,
}

struct Runner<'a> {
    steps: Vec<StepRecord>,
    ctx: &'a ChangeContext,
}

impl Runner<'_> {
    fn record(&mut self, stage: Stage, what: String, outcome: &Result<(), String>, t: Instant) {
        match outcome {
            Ok(()) => tracing::info!(certificate = %self.ctx.name, %stage, %what, "done"),
            Err(e) => {
                tracing::warn!(certificate = %self.ctx.name, %stage, %what, error = %e, "failed")
            }
        }
        self.steps.push(StepRecord {
            stage,
            what,
            outcome: outcome.clone(),
            elapsed: t.elapsed(),
        });
    }

    async fn command(
        &mut self,
        stage: Stage,
        argv: &Argv,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<(), Failure> {
        let t = Instant::now();
        let r = process::run(argv, env, None, timeout).await;
        let outcome = r.as_ref().map(|_| ()).map_err(ToString::to_string);
        self.record(stage, format!("`{argv}`"), &outcome, t);
        r.map(|_| ()).map_err(|e| Failure {
            stage,
            detail: e.to_string(),
            stderr: e.stderr().to_owned(),
        })
    }

    async fn hook(
        &mut self,
        stage: Stage,
        argv: &Argv,
        timeout: Duration,
        result: Option<bool>,
    ) -> Result<(), Failure> {
        let name = match stage {
            Stage::PreHook => "pre",
            Stage::DeployHook => "deploy",
            _ => "post",
        };
        let env = hook_env(self.ctx, name, result);
        self.command(stage, argv, &env, timeout)
            .await
            .map_err(|mut f| {
                f.detail = format!("{name} hook {}", f.detail);
                f
            })
    }

    async fn config_test(&mut self, stage: Stage, a: &ReloadAction) -> Result<(), Failure> {
        match a.config_test() {
            Some(argv) => self
                .command(stage, &argv, &[], a.timeout())
                .await
                .map_err(|mut f| {
                    f.detail = format!("{} config test {}", a.label(), f.detail);
                    f
                }),
            None => Ok(()),
        }
    }

    async fn reload(&mut self, stage: Stage, a: &ReloadAction) -> Result<(), Failure> {
        let step = if stage == Stage::RollbackReload {
            a.rollback_reload_step()
        } else {
            a.reload_step()
        };
        let r = match &step {
            ReloadStep::Run(argv, timeout) => self.command(stage, argv, &[], *timeout).await,
            ReloadStep::SignalOrStart(pid_file, _, start, timeout) if !pid_alive(pid_file) => {
                tracing::warn!(
                    certificate = %self.ctx.name,
                    pid_file = %pid_file.display(),
                    "the server is not running; starting it"
                );
                self.command(stage, start, &[], *timeout).await
            }
            ReloadStep::Signal(pid_file, sig) | ReloadStep::SignalOrStart(pid_file, sig, _, _) => {
                let t = Instant::now();
                let r = send_signal(pid_file, *sig);
                self.record(stage, step.to_string(), &r, t);
                r.map_err(|detail| Failure {
                    stage,
                    detail,
                    stderr: String::new(),
                })
            }
        };
        r.map_err(|mut f| {
            f.detail = format!("{} reload {}", a.label(), f.detail);
            f
        })
    }

    async fn verify(
        &mut self,
        stage: Stage,
        plan: &ReloadPlan,
        expected: &str,
        which: &str,
    ) -> Result<Vec<Observation>, (Failure, Vec<Observation>)> {
        let t = Instant::now();
        let obs = wait_for_fingerprint(&plan.verify, expected, plan.verify_timeout).await;
        let wrong: Vec<String> = obs
            .iter()
            .filter(|o| !o.matches(expected))
            .map(ToString::to_string)
            .collect();
        let what: Vec<String> = plan.verify.iter().map(ToString::to_string).collect();
        let outcome = if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "expected the {which} certificate {expected} within {}: {}",
                crate::values::format_duration(plan.verify_timeout),
                wrong.join("; ")
            ))
        };
        self.record(stage, what.join(", "), &outcome, t);
        match outcome {
            Ok(()) => Ok(obs),
            Err(detail) => Err((
                Failure {
                    stage,
                    detail,
                    stderr: String::new(),
                },
                obs,
            )),
        }
    }
}

/// Whether the pid file names a live process (a missing or unreadable pid file: no).
fn pid_alive(pid_file: &Path) -> bool {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// Sends `sig` to the pid in `pid_file`, and checks the process is still alive afterwards (a
/// master that died on a reload signal is a failed reload).
fn send_signal(pid_file: &Path, sig: SignalName) -> Result<(), String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("pid file {}: {e}", pid_file.display()))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| {
            format!(
                "pid file {}: {:?} is not a process id",
                pid_file.display(),
                text.trim()
            )
        })?;
    rustix::process::kill_process(pid, sig.to_rustix()).map_err(|e| {
        format!(
            "SIG{} to pid {} (from {}): {e}",
            sig.as_str(),
            pid.as_raw_nonzero(),
            pid_file.display()
        )
    })?;
    if !matches!(sig, SignalName::Term | SignalName::Int | SignalName::Quit) {
        rustix::process::test_kill_process(pid).map_err(|e| {
            format!(
                "pid {} (from {}) is gone after SIG{}: {e}",
                pid.as_raw_nonzero(),
                pid_file.display(),
                sig.as_str()
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
