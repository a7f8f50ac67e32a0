//! The renewal engine: for one managed certificate, compares what is on disk, what the cloud
//! holds and what the policy says, then issues (PCA), re-exports (SCM) or re-installs, always
//! through [`install::verify_candidate`] and [`install::install`], so a bad candidate never
//! replaces the files in place.
//!
//! # What a check does
//! - **PCA** ([`pca`]): a pending journal entry from an earlier run is finished first (adopt the
//!   issued id; after an unknown-outcome create, reconcile by listing before issuing again).
//!   Then: a missing, unreadable, mismatched or replaced file set is re-installed from the last
//!   good copy kept in the state directory (or the cloud); a certificate that is due
//!   ([`policy::decide`] with this host's [`policy::jitter_unit`]), revoked in PCA, or no longer
//!   matching the configuration (CA, mode, names) is renewed. Superseded certificates are revoked
//!   (reason SUPERSEDED) once their grace period has passed; a failed revocation is a warning.
//!   Whether the installed certificate was revoked comes from the pass's one listing of revoked
//!   certificates ([`Renewer::pca_revocations`]) when the daemon made one, otherwise from a
//!   lookup of that certificate; with a pass, a check of a certificate that is not due makes no
//!   request of its own.
//! - **SCM** ([`scm`]): the configured id, or the newest valid certificate with the configured
//!   name or domain, is exported and installed when it is not the one installed; when the chosen
//!   certificate is due for renewal and nothing newer exists, the report carries a warning (it
//!   is not an error: only whoever imports certificates into SCM can fix it).
//!
//! # Concurrency
//! One check per name at a time (an async lock per name). A forced check that had to wait while
//! another check of the same name renewed or installed is no longer forced: two simultaneous
//! `renew --force` give one issuance.
//!
//! # Outputs the configuration leaves out
//! [`install::install`] writes a full set. A `cert`, `chain` or `fullchain` file the
//! configuration does not want is written under `<state>/renew/unwritten/<name>/` instead.
//! The PKCS#12 output, when configured, is written with the same transaction.

pub mod error;
mod fleet;
mod pca;
mod scm;
pub mod wire;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

pub use error::{FailureKind, RenewError};
pub use scm::{SCM_EXPIRED_DAYS_SINCE, ScmCandidates};

use crate::clock::Clock;
use crate::cloud::{Client, Secret};
use crate::config::{CertificateSource, ManagedCertificate, Owner, SecretSource};
use crate::install::{
    self, Candidate, Expectations, FileSpec, InstallOutcome, InstalledState, OutputPaths,
    Principal, Role, VerifiedBundle,
};
use crate::logging::Event;
use crate::pki;
use crate::policy;
use crate::state::records::CertRecord;
use crate::state::{Journal, Records, StateDir};

/// How a check runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Renew (PCA) or re-export (SCM) even when nothing is due.
    pub force: bool,
    /// Only report what would be requested and written; change nothing, create nothing.
    pub dry_run: bool,
}

/// What a check did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing was needed.
    None,
    /// PCA issued a new certificate, now installed.
    Renewed { cloud_id: String },
    /// An SCM certificate (a newer one, or the configured one) was exported and installed.
    Reexported { cloud_id: String },
    /// The files on disk were repaired with the certificate already issued.
    Reinstalled { reason: String },
    /// Dry run: what would have been done, in order.
    WouldDo(Vec<PlannedStep>),
}

impl Action {
    /// A short label for logs and metrics: `none`, `renewed`, `reexported`, `reinstalled`,
    /// `dry_run`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Renewed { .. } => "renewed",
            Action::Reexported { .. } => "reexported",
            Action::Reinstalled { .. } => "reinstalled",
            Action::WouldDo(_) => "dry_run",
        }
    }

    /// The cloud certificate id a renewal or re-export installed.
    pub fn cloud_id(&self) -> Option<&str> {
        match self {
            Action::Renewed { cloud_id } | Action::Reexported { cloud_id } => Some(cloud_id),
            _ => None,
        }
    }
}

/// In words, for people: `renewed (certificate 1a2b…)`, `reinstalled (the key file is missing)`.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::None => f.write_str("up to date"),
            Action::Renewed { cloud_id } | Action::Reexported { cloud_id } => {
                write!(f, "{} (certificate {cloud_id})", self.as_str())
            }
            Action::Reinstalled { reason } => write!(f, "reinstalled ({reason})"),
            Action::WouldDo(steps) => write!(f, "dry run ({} steps)", steps.len()),
        }
    }
}

/// One step a dry run would take, in words: `POST /v1/private-certificates/csr issuer_id=…`,
/// `write /etc/x/cert.pem (0644)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep(pub String);

impl fmt::Display for PlannedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a warning is about: what the daemon acts on (a metric), not its wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WarningKind {
    /// SCM: the selected certificate is due and SCM holds no newer valid one (only whoever
    /// imports certificates into SCM can fix it).
    ScmNoSuccessor,
    /// The installed certificate is not valid yet by this host's clock.
    NotYetValid,
    /// A dry run found an install a crash interrupted (the next real run recovers it).
    InterruptedInstall,
    /// A pending issuance from an earlier run was adopted, or given up for a new one.
    PendingIssuance,
    /// A superseded or abandoned certificate could not be revoked.
    Revocation,
    /// The installed certificate's revocation status could not be read from PCA.
    RevocationUnknown,
    /// The files were repaired from the cloud: no good copy was kept.
    NoGoodCopy,
    /// The state directory could not be fully updated (the check itself succeeded).
    State,
    /// A setting that is only read at check time (a dry run reports it and goes on).
    Config,
}

/// Something an operator should know that did not fail the check: its kind, and the words
/// for the log, `renew` and `status`. Reads as its message (`Deref<Target = str>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

impl Warning {
    pub fn new(kind: WarningKind, message: impl Into<String>) -> Self {
        Warning {
            kind,
            message: message.into(),
        }
    }
}

impl std::ops::Deref for Warning {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl std::borrow::Borrow<str> for Warning {
    fn borrow(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The certificate on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// SHA-256 of the DER, upper-case hex.
    pub fingerprint_sha256: String,
    /// Upper-case hex.
    pub serial: String,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub cert_path: PathBuf,
    /// The whole certificate as parsed from `cert_path` when the check read it: what the
    /// metrics export, without reading the file again. Released once the pass has recorded it
    /// ([`CheckReport::release_parsed`]), so that a pass over 10,000 certificates does not hold
    /// 10,000 parsed certificates until its end.
    pub info: Option<Box<pki::CertInfo>>,
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub name: String,
    /// `pca` or `scm`.
    pub source: &'static str,
    pub action: Action,
    /// What is on disk after the check (`None` when nothing valid is).
    pub installed: Option<CertSummary>,
    /// When this host renews next (PCA), or when the SCM certificate is due; `None` when
    /// unknown or already due.
    pub next_renewal: Option<OffsetDateTime>,
    /// Things an operator should know that did not fail the check.
    pub warnings: Vec<Warning>,
    /// Whether any output file changed (the daemon reloads consumers when it did).
    pub install_changed: bool,
    /// Why the files changed (renewal due, forced, a file missing, …), for the logs.
    pub reason: Option<String>,
    /// The cloud certificate (PCA or SCM id) the installed files came from, as the renewal
    /// record says after this check; `None` when unknown.
    pub cloud_id: Option<String>,
    /// What this check installed (`Some` whenever an install ran, whether or not it changed
    /// the files): the verified set and what the swap replaced. The stages after the install
    /// (activate, publish) work from it instead of reading the state directory again.
    pub installed_set: Option<Box<InstalledSet>>,
}

/// The install stage's product: the set now in place, as verified before the swap, and what
/// the swap did (including the version it replaced).
#[derive(Clone, Debug)]
pub struct InstalledSet {
    pub bundle: VerifiedBundle,
    pub outcome: InstallOutcome,
    /// The certificate file, for messages and the report.
    pub cert_path: PathBuf,
}

impl InstalledSet {
    /// SHA-256 of the replaced leaf's DER, when the install replaced a readable certificate.
    pub fn previous_fingerprint(&self) -> Option<&str> {
        self.outcome
            .previous
            .as_ref()
            .and_then(|p| p.fingerprint_sha256.as_deref())
    }
}

impl CheckReport {
    /// Drops what only the stages of the pass needed (the parsed certificate and the installed
    /// set with its key), keeping what the report says. Called once the outcome is recorded.
    pub fn release_parsed(&mut self) {
        if let Some(installed) = &mut self.installed {
            installed.info = None;
        }
        self.installed_set = None;
    }
    fn new(name: &str, source: &'static str) -> Self {
        CheckReport {
            name: name.to_string(),
            source,
            action: Action::None,
            installed: None,
            next_renewal: None,
            warnings: Vec::new(),
            install_changed: false,
            reason: None,
            cloud_id: None,
            installed_set: None,
        }
    }

    /// Takes in what an install did: the report's `installed` summary comes from the verified
    /// bundle (the certificate is not read back from disk).
    fn took_install(
        &mut self,
        bundle: VerifiedBundle,
        outcome: InstallOutcome,
        cert_path: PathBuf,
    ) {
        self.install_changed = outcome.changed;
        self.installed = Some(CertSummary::of_leaf(bundle.leaf(), cert_path.clone()));
        self.installed_set = Some(Box::new(InstalledSet {
            bundle,
            outcome,
            cert_path,
        }));
    }
}

/// Per-name lock, and a counter bumped after every check that changed the files.
#[derive(Default)]
struct Slot {
    lock: tokio::sync::Mutex<()>,
    changes: AtomicU64,
}

/// The renewal engine. Share one per process (`Arc<Renewer>`); checks of different names run
/// concurrently.
pub struct Renewer {
    client: Client,
    state: StateDir,
    journal: Journal,
    records: Records,
    clock: Clock,
    host_id: String,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    scm_snapshot: Mutex<Option<scm::Snapshot>>,
    /// What the SCM listings have shown so far, kept from pass to pass (see [`scm`]).
    scm_index: Mutex<Option<scm::ScmIndex>>,
    pca_revoked: Mutex<Option<pca::RevokedSnapshot>>,
}

impl fmt::Debug for Renewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renewer")
            .field("state", &self.state)
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl Renewer {
    /// The renewer of a dry run: reads the state directory as it is and creates, completes or
    /// reverts nothing (a missing directory reads as empty; an interrupted install is reported
    /// as a warning of the check, not recovered).
    pub fn read_only(client: Client, state_dir: &Path, clock: Clock, host_id: String) -> Self {
        Renewer {
            client,
            records: Records::new(state_dir),
            state: StateDir::new(state_dir),
            journal: Journal::at(StateDir::new(state_dir).journal_dir()),
            clock,
            host_id,
            slots: Mutex::new(HashMap::new()),
            scm_snapshot: Mutex::new(None),
            scm_index: Mutex::new(None),
            pca_revoked: Mutex::new(None),
        }
    }

    /// Opens the state directory (creating it, 0700), the journal, and completes or reverts any
    /// install a crash interrupted ([`install::recover_each`]).
    pub fn new(
        client: Client,
        state_dir: &Path,
        clock: Clock,
        host_id: String,
    ) -> Result<Self, RenewError> {
        let state = StateDir::new(state_dir);
        let fs_err = |e: install::FsError| RenewError::State {
            name: "(all)".into(),
            path: state_dir.to_path_buf(),
            detail: e.to_string(),
        };
        if !state_dir.is_dir() {
            install::fsio::create_private_dir(state_dir).map_err(fs_err)?;
        }
        let journal =
            Journal::open(state.journal_dir()).map_err(|e| RenewError::journal("(all)", e))?;
        // A certificate whose interrupted install cannot be recovered fails its own checks
        // (its install tries again); it does not keep the agent from starting.
        install::recover_each(&state).map_err(RenewError::install)?;
        Ok(Renewer {
            client,
            records: Records::new(state_dir),
            state,
            journal,
            clock,
            host_id,
            slots: Mutex::new(HashMap::new()),
            scm_snapshot: Mutex::new(None),
            scm_index: Mutex::new(None),
            pca_revoked: Mutex::new(None),
        })
    }

    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(name.to_string()).or_default().clone()
    }

    /// Looks at one managed certificate and renews, re-exports or re-installs it when needed
    /// (or when forced). See the module doc.
    pub async fn check(
        &self,
        cert: &ManagedCertificate,
        opts: CheckOptions,
    ) -> Result<CheckReport, RenewError> {
        let slot = self.slot(&cert.name);
        let seen = slot.changes.load(Ordering::SeqCst);
        let _guard = slot.lock.lock().await;
        let mut opts = opts;
        if opts.force && !opts.dry_run && slot.changes.load(Ordering::SeqCst) != seen {
            tracing::info!(certificate = %cert.name, "a concurrent check just renewed it; not forcing again");
            opts.force = false;
        }
        let result = match &cert.source {
            CertificateSource::Pca(src) => self.check_pca(cert, src, opts).await,
            CertificateSource::Scm(sel) => self.check_scm(cert, sel, opts).await,
        };
        if let Ok(r) = &result
            && r.install_changed
        {
            slot.changes.fetch_add(1, Ordering::SeqCst);
            let installed = r.installed.as_ref();
            tracing::info!(
                event = %Event::Installed,
                certificate = %cert.name,
                action = %r.action.as_str(),
                cloud_id = r.action.cloud_id().map(tracing::field::display),
                reason = r.reason.as_deref().map(tracing::field::display),
                fingerprint = installed.map(|i| tracing::field::display(&i.fingerprint_sha256)),
                serial = installed.map(|i| tracing::field::display(&i.serial)),
                not_after = installed.map(|i| tracing::field::display(rfc3339(i.not_after))),
                "installed"
            );
        }
        let mut result = result;
        if let Ok(r) = &mut result
            && let Some(w) = not_yet_valid(r.installed.as_ref(), self.now())
        {
            tracing::warn!(certificate = %cert.name, "{w}");
            r.warnings.push(Warning::new(WarningKind::NotYetValid, w));
        }
        if opts.dry_run
            && let Ok(r) = &mut result
            && self.state.cert_dir(&cert.name).join("txn").exists()
        {
            r.warnings.push(Warning::new(WarningKind::InterruptedInstall, format!(
                "an install was interrupted ({}): the next run that is not a dry run completes or reverts it first",
                self.state.cert_dir(&cert.name).join("txn").display()
            )));
        }
        result
    }

    /// Finishes the issuances a crash left in the journal, for the configured certificates that
    /// have one (adopting issued ids, reconciling unknown outcomes). Certificates without a
    /// pending entry are not checked and have no entry in the result. Entries for names no
    /// longer configured are left alone (and logged).
    pub async fn resume(
        &self,
        certs: &[ManagedCertificate],
    ) -> Vec<Result<CheckReport, RenewError>> {
        let pending = match self.journal.all_pending() {
            Ok(p) => p,
            Err(e) => return vec![Err(RenewError::journal("(all)", e))],
        };
        let mut out = Vec::new();
        for p in pending {
            match certs.iter().find(|c| c.name == p.name) {
                Some(cert) => out.push(self.check(cert, CheckOptions::default()).await),
                None => tracing::warn!(
                    certificate = %p.name,
                    ticket = %p.ticket,
                    "pending issuance for a certificate that is no longer configured; left in the journal"
                ),
            }
        }
        out
    }

    // ---- shared helpers ----

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    fn jitter_unit(&self, name: &str) -> f64 {
        policy::jitter_unit(&self.host_id, name)
    }

    /// Where the files go; parts the configuration leaves out go under the state directory.
    /// Resolves the PKCS#12 password: one that cannot be read is a configuration error.
    fn output_paths(&self, cert: &ManagedCertificate) -> Result<OutputPaths, RenewError> {
        Ok(OutputPaths {
            pkcs12: Self::pkcs12_output(cert)?,
            ..self.pem_paths(cert)
        })
    }

    /// The files to check on disk: [`Self::output_paths`], or only the PEM files when the
    /// PKCS#12 password cannot be read (a dry run; [`Self::preflight`] fails a real check
    /// before this).
    fn checked_paths(&self, cert: &ManagedCertificate) -> OutputPaths {
        self.output_paths(cert)
            .unwrap_or_else(|_| self.pem_paths(cert))
    }

    /// The PEM files of [`Self::output_paths`], without the PKCS#12 output (which needs the
    /// password), for plans and messages.
    fn pem_paths(&self, cert: &ManagedCertificate) -> OutputPaths {
        let spare = self.unwritten_dir(&cert.name);
        let out = &cert.output;
        OutputPaths {
            cert: out.cert.clone().unwrap_or_else(|| spare.join("cert.pem")),
            chain: out.chain.clone().unwrap_or_else(|| spare.join("chain.pem")),
            fullchain: out
                .fullchain
                .clone()
                .unwrap_or_else(|| spare.join("fullchain.pem")),
            key: out.key.clone(),
            pkcs12: None,
        }
    }

    /// The PKCS#12 output with its password read from the process environment (or its file);
    /// no password configured means the empty password.
    fn pkcs12_output(
        cert: &ManagedCertificate,
    ) -> Result<Option<install::Pkcs12Output>, RenewError> {
        let Some(p) = &cert.output.pkcs12 else {
            return Ok(None);
        };
        let password = match &p.password {
            None => Secret::new(""),
            Some(source) => source
                .resolve(&|k| std::env::var(k).ok())
                .map_err(|detail| RenewError::Config {
                    name: cert.name.clone(),
                    detail: format!(
                        "output.{}: the PKCS#12 password ({source}): {detail}",
                        password_key(source)
                    ),
                })?,
        };
        Ok(Some(install::Pkcs12Output {
            path: p.path.clone(),
            password,
        }))
    }

    fn unwritten_dir(&self, name: &str) -> PathBuf {
        self.state.unwritten_dir(name)
    }

    fn file_spec(cert: &ManagedCertificate) -> FileSpec {
        let principal = |o: &Owner| match o {
            Owner::Name(n) => Principal::Name(n.clone()),
            Owner::Id(i) => Principal::Id(*i),
        };
        FileSpec {
            owner: cert.output.owner.as_ref().map(principal),
            group: cert.output.group.as_ref().map(principal),
            cert_mode: cert.output.mode,
            key_mode: cert.output.key_mode,
        }
    }

    /// Checks that do not need the cloud: an unreadable PKCS#12 password fails the check before
    /// anything is issued (a dry run reports it as a warning and goes on planning).
    fn preflight(
        cert: &ManagedCertificate,
        opts: CheckOptions,
        report: &mut CheckReport,
    ) -> Result<(), RenewError> {
        match Self::pkcs12_output(cert) {
            Err(e) if opts.dry_run => {
                report
                    .warnings
                    .push(Warning::new(WarningKind::Config, e.to_string()));
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// The dry-run steps of an install.
    fn plan_install_steps(&self, cert: &ManagedCertificate, steps: &mut Vec<PlannedStep>) {
        let paths = self.pem_paths(cert);
        let mode = cert.output.mode;
        let key_mode = cert.output.key_mode;
        steps.push(PlannedStep(
            "verify: parses, valid now, key matches, chain leads to the issuer, names covered"
                .into(),
        ));
        for (path, m, configured) in [
            (&paths.key, key_mode, true),
            (&paths.chain, mode, cert.output.chain.is_some()),
            (&paths.cert, mode, cert.output.cert.is_some()),
            (&paths.fullchain, mode, cert.output.fullchain.is_some()),
        ] {
            let note = if configured {
                ""
            } else {
                " [not configured: kept in the state directory]"
            };
            steps.push(PlannedStep(format!(
                "write {} ({m:04o}){note}",
                path.display()
            )));
        }
        if let Some(p12) = &cert.output.pkcs12 {
            steps.push(PlannedStep(format!(
                "write {} ({key_mode:04o}): PKCS#12 of key, certificate and chain",
                p12.path.display()
            )));
        }
    }

    /// Verifies a candidate and installs it (on a blocking thread that runs to completion even
    /// if this future is dropped), creating missing output directories first.
    async fn verify_and_install(
        &self,
        cert: &ManagedCertificate,
        candidate: Candidate,
        names: Vec<String>,
        trust: Option<String>,
    ) -> Result<(VerifiedBundle, InstallOutcome), RenewError> {
        let expectations = Expectations {
            names,
            trust,
            now: self.now(),
        };
        let bundle =
            install::verify_candidate(&candidate, &expectations).map_err(RenewError::install)?;
        let outcome = self.install_bundle(cert, bundle.clone()).await?;
        Ok((bundle, outcome))
    }

    async fn install_bundle(
        &self,
        cert: &ManagedCertificate,
        bundle: VerifiedBundle,
    ) -> Result<InstallOutcome, RenewError> {
        let paths = self.output_paths(cert)?;
        let spec = Self::file_spec(cert);
        let state = self.state.clone();
        let name = cert.name.clone();
        let unwritten = self.unwritten_dir(&cert.name);
        let needs_spare = cert.output.cert.is_none()
            || cert.output.chain.is_none()
            || cert.output.fullchain.is_none();
        let join = tokio::task::spawn_blocking(move || {
            if needs_spare && !unwritten.is_dir() {
                install::fsio::create_private_dir(&unwritten).map_err(|source| {
                    install::InstallError::Fs {
                        name: name.clone(),
                        source,
                    }
                })?;
            }
            // The install creates the missing output directories, each with its mode.
            install::install(&bundle, &paths, &spec, &state)
        })
        .await;
        match join {
            Ok(r) => r.map_err(RenewError::install),
            Err(e) => Err(RenewError::State {
                name: cert.name.clone(),
                path: self.state.cert_dir(&cert.name),
                detail: format!("install task failed: {e}"),
            }),
        }
    }

    /// Re-installs the last good version kept in the state directory, if it is the certificate
    /// the record says was installed. `Ok(None)` when there is no such copy.
    async fn reinstall_last_good(
        &self,
        cert: &ManagedCertificate,
        record: &CertRecord,
        names: Vec<String>,
    ) -> Result<Option<(VerifiedBundle, InstallOutcome)>, RenewError> {
        let Some(want) = record.fingerprint_sha256.as_deref() else {
            return Ok(None);
        };
        let Some(good) =
            install::last_good(&self.state, &cert.name).map_err(RenewError::install)?
        else {
            return Ok(None);
        };
        let text = |role| {
            good.file(role)
                .map(|f| String::from_utf8_lossy(f.contents()).into_owned())
        };
        let (Some(cert_pem), Some(key_pem)) = (text(Role::Cert), text(Role::Key)) else {
            return Ok(None);
        };
        let matches = pki::parse_cert(&cert_pem)
            .map(|c| c.sha256_fingerprint_hex.eq_ignore_ascii_case(want))
            .unwrap_or(false);
        if !matches {
            return Ok(None);
        }
        let candidate = Candidate {
            name: cert.name.clone(),
            cert_pem,
            chain_pem: text(Role::Chain).unwrap_or_default(),
            key_pem,
        };
        // The chain was checked against the issuer when this copy was first installed; here it
        // only has to be internally consistent.
        self.verify_and_install(cert, candidate, names, None)
            .await
            .map(Some)
    }

    /// What is on disk now, for the report; `None` when no valid set is installed.
    pub fn installed(&self, cert: &ManagedCertificate) -> Option<CertSummary> {
        self.summary(cert)
    }

    /// The installed leaf as cheaply as it can be read, for the metrics at startup: the
    /// certificate file parsed, and the key, chain and full chain present. Whether they match is
    /// the first check's to say (see [`Renewer::installed`]); reading it here too would double
    /// the startup pass's local work.
    pub fn installed_leaf(&self, cert: &ManagedCertificate) -> Option<CertSummary> {
        let paths = self.pem_paths(cert);
        if ![&paths.key, &paths.chain, &paths.fullchain]
            .iter()
            .all(|p| p.is_file())
        {
            return None;
        }
        let text = std::fs::read_to_string(&paths.cert).ok()?;
        let info = pki::parse_cert(&text).ok()?;
        Some(CertSummary::of_leaf(&info, paths.cert))
    }

    /// What is on disk now, for the report.
    fn summary(&self, cert: &ManagedCertificate) -> Option<CertSummary> {
        let paths = self.output_paths(cert).ok()?;
        match install::read_installed(&paths) {
            InstalledState::Present(c) => Some(summary_of(&c, paths.cert)),
            _ => None,
        }
    }
}

/// The report's view of an installed certificate.
fn summary_of(installed: &install::InstalledCert, cert_path: PathBuf) -> CertSummary {
    CertSummary::of_leaf(&installed.info, cert_path)
}

impl CertSummary {
    /// The summary of a parsed leaf installed at `cert_path`.
    pub fn of_leaf(info: &pki::CertInfo, cert_path: PathBuf) -> CertSummary {
        CertSummary {
            fingerprint_sha256: info.sha256_fingerprint_hex.clone(),
            serial: info.serial_hex.clone(),
            subject_cn: info.subject.common_name.clone(),
            issuer_cn: info.issuer.common_name.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            cert_path,
            info: Some(Box::new(info.clone())),
        }
    }
}

/// A readable description of what is wrong with the files on disk.
fn describe_disk(state: &InstalledState) -> String {
    match state {
        InstalledState::Missing { path } => format!("{} is missing", path.display()),
        InstalledState::Unreadable { path, error } => {
            format!("{} is unreadable: {error}", path.display())
        }
        InstalledState::Unparsable { path, detail } => {
            format!("{} does not parse: {detail}", path.display())
        }
        InstalledState::KeyMismatch { cert, key } => format!(
            "the key {} does not match the certificate {}",
            key.display(),
            cert.display()
        ),
        InstalledState::Inconsistent { path, detail } => {
            format!("{} is inconsistent: {detail}", path.display())
        }
        InstalledState::Present(c) => format!("certificate {} present", c.serial_hex),
    }
}

/// Days in a duration, rounded to the nearest whole day, for messages.
fn days(d: time::Duration) -> i64 {
    (d.whole_seconds() + 43_200).div_euclid(86_400)
}

/// How far ahead of this host's clock a certificate's `not_before` may be before it is reported
/// (CAs often backdate by a minute or so; clocks drift by seconds).
const NOT_YET_VALID_SLACK: time::Duration = time::Duration::minutes(5);

/// A warning when the installed certificate is not valid yet by this host's clock: clients
/// reject it until then, so either this host's clock or the issuer's is wrong.
fn not_yet_valid(installed: Option<&CertSummary>, now: OffsetDateTime) -> Option<String> {
    let s = installed?;
    (s.not_before > now + NOT_YET_VALID_SLACK).then(|| {
        format!(
            "the installed certificate is not valid before {} ({} minutes after this host's clock, {}): clients reject it until then; check this host's clock (NTP) and the issuer's",
            rfc3339(s.not_before),
            (s.not_before - now).whole_minutes(),
            rfc3339(now)
        )
    })
}

pub(crate) use crate::values::rfc3339;

/// The configuration key a PKCS#12 password source was written as.
fn password_key(source: &SecretSource) -> &'static str {
    match source {
        SecretSource::Env(_) => "pkcs12_password_env",
        SecretSource::File(_) | SecretSource::Credential(_) => "pkcs12_password_file",
        SecretSource::Inline(_) => "pkcs12_password",
    }
}
