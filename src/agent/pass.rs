//! One pass, as the daemon and `ccm-agent renew` both run it ([`Agent::run_pass`]), and one
//! certificate's way through it ([`Agent::pass`]). Read this file top to bottom to follow a
//! certificate; each stage consumes what the stage before it produced and reads nothing again
//! that a stage already had.
//!
//! 1. **plan**: is it due, and why. [`Renewer::check`](super::renew::Renewer::check) reads
//!    the renewal record and the files in place and decides (`pca_need` / `scm_need` in
//!    [`super::renew`], on the pure [`crate::policy::decide`]); a dry run stops here with the
//!    planned steps.
//! 2. **obtain**: issue (PCA apply, or CSR with the key generated here), export (SCM), or
//!    resume from the journal what an earlier run issued; the journal records an issuance
//!    before the request and clears it after the install.
//! 3. **verify**: [`crate::install::verify_candidate`] turns the candidate into a
//!    [`crate::install::VerifiedBundle`] (parses, valid now, key matches, chain leads to the
//!    issuer, names covered). Nothing unverified reaches the next stage.
//! 4. **install**: [`crate::install::install`] swaps the files atomically and keeps the
//!    replaced set as the previous version. The check's [`CheckReport`] carries the result as
//!    an [`InstalledSet`]: the verified bundle, what changed, and the replaced leaf.
//! 5. **activate** ([`Agent::activate`]): when the files changed, hooks, configuration tests,
//!    reloads and the served-certificate check run on the [`InstalledSet`]; on failure the
//!    previous version is restored and the consumers reloaded again.
//! 6. **publish** ([`Agent::publish`]): the cloud targets (`[certificates.deploy]`) are brought
//!    up to date with the installed certificate: from the [`InstalledSet`] when this pass
//!    installed it, the cloud id from the report.
//! 7. **record** ([`Agent::run_pass`]): as each certificate's stages end, its metrics, log
//!    line and backoff after a failure (then the parsed certificate is released); once every
//!    certificate is done, the status file, written once per pass.
//!
//! The fan-out (selection, backoff, the pass-wide listings of [`Agent::prefetch`],
//! `agent.concurrency` checks at a time) is the same for the daemon and `renew`.

use std::sync::Arc;
use std::time::Instant;

use super::daemon::{Agent, source_name};
use super::renew::{
    Action, CertSummary, CheckOptions, CheckReport, FailureKind, InstalledSet, RenewError,
    WarningKind, rfc3339,
};
use crate::config::{CertificateSource, ManagedCertificate};
use crate::metrics::CertificateFacts;
use crate::state::{CertStatus, StatusFile};
use time::OffsetDateTime;

/// Why a certificate's pass failed: the renewal itself, or what follows a changed install.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Renew(#[from] RenewError),
    /// The reload, config test or served-certificate check failed; the previous files were
    /// restored (see the error's rollback part).
    #[error("{0}")]
    Reload(Box<crate::reload::ReloadError>),
    /// Some cloud targets still fail after the run's attempts (the rest were deployed).
    #[error("certificate {name}: cloud deploy incomplete: {detail}")]
    Deploy { name: String, detail: String },
    /// Fleet mode: the coordinator refused a fenced write (this member lost the lock) or is
    /// unreachable for a step that needs it.
    #[error("certificate {name}: fleet: {detail}")]
    Fleet { name: String, detail: String },
}

impl PassError {
    pub fn kind(&self) -> FailureKind {
        match self {
            PassError::Renew(e) => e.kind(),
            PassError::Reload(e) => match e.stage {
                crate::reload::Stage::PreHook => FailureKind::PreHookFailed,
                crate::reload::Stage::ConfigTest => FailureKind::ConfigTestFailed,
                crate::reload::Stage::Verify => FailureKind::VerifyFailed,
                _ => FailureKind::ReloadFailed,
            },
            PassError::Deploy { .. } => FailureKind::Deploy,
            PassError::Fleet { .. } => FailureKind::State,
        }
    }
}

/// The outcome of one pass over the certificates.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CycleSummary {
    pub managed: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped_backoff: usize,
    pub warnings: usize,
    /// The earliest renewal time among the certificates (agent clock).
    pub next_renewal: Option<OffsetDateTime>,
}

impl std::fmt::Display for CycleSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} managed, {} changed, {} failing, {} waiting to retry, {} warnings",
            self.managed, self.changed, self.failed, self.skipped_backoff, self.warnings
        )
    }
}

/// What [`Agent::run_pass`] did: the summary, and each certificate checked with its outcome,
/// in configuration order.
pub struct PassResults {
    pub summary: CycleSummary,
    pub results: Vec<(ManagedCertificate, Result<CheckReport, PassError>)>,
}

impl Agent {
    /// Check every managed certificate once (renewing what is due), `concurrency` at a time.
    pub async fn check_all(self: &Arc<Self>, opts: CheckOptions) -> CycleSummary {
        self.run_pass(&[], opts).await.summary
    }

    /// One pass, as the daemon and `ccm-agent renew` both run it: the certificates named in
    /// `names` (all when empty) that are not waiting out a failure's backoff (unless forced),
    /// after the pass-wide listings ([`Agent::prefetch`]), `concurrency` at a time; each
    /// outcome recorded in the metrics and the status file, which is written once at the end.
    /// A dry run records nothing. The results come back in configuration order.
    pub async fn run_pass(self: &Arc<Self>, names: &[String], opts: CheckOptions) -> PassResults {
        let config = self.config();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(config.agent.concurrency.max(1)));
        let selected: Vec<&ManagedCertificate> = config
            .certificates
            .iter()
            .filter(|c| names.is_empty() || names.contains(&c.name))
            .collect();
        let mut summary = CycleSummary {
            managed: selected.len(),
            ..CycleSummary::default()
        };
        let now = Instant::now();
        let due: Vec<&ManagedCertificate> = selected
            .iter()
            .copied()
            .filter(|c| opts.force || !self.in_backoff(&c.name, now))
            .collect();
        summary.skipped_backoff = selected.len() - due.len();
        self.prefetch(&due).await;
        // A task is spawned only once it has its permit, and finished ones are collected as
        // the loop goes: at most `concurrency` passes exist at a time. (Spawning every pass up
        // front kept 10,000 unpolled futures of 8.8 KiB each: 86 MiB at 10,000 certificates.)
        let mut tasks = tokio::task::JoinSet::new();
        let mut results: Vec<(usize, Result<CheckReport, PassError>)> =
            Vec::with_capacity(due.len());
        let collect = |joined: Result<_, tokio::task::JoinError>,
                       results: &mut Vec<_>,
                       summary: &mut CycleSummary| match joined {
            Ok(r) => results.push(r),
            // A task that panicked: counted; its certificate is retried next pass.
            Err(_) => summary.failed += 1,
        };
        for (i, cert) in due.iter().enumerate() {
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                break;
            };
            while let Some(joined) = tasks.try_join_next() {
                collect(joined, &mut results, &mut summary);
            }
            let cert = (*cert).clone();
            let agent = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let mut result = agent.pass(&cert, opts).await;
                // Recorded as each certificate finishes: the parsed certificate and the
                // installed set go as soon as the metrics have them, not at the pass's end.
                match &mut result {
                    Ok(report) => {
                        if !opts.dry_run {
                            agent.record_ok(report);
                        }
                        report.release_parsed();
                    }
                    Err(e) => {
                        if !opts.dry_run {
                            agent.record_failure(&cert, e);
                        }
                    }
                }
                (i, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            collect(joined, &mut results, &mut summary);
        }
        results.sort_by_key(|(i, _)| *i);
        let mut out = Vec::with_capacity(results.len());
        for (i, result) in results {
            let cert = due[i];
            match &result {
                Ok(report) => {
                    if report.install_changed {
                        summary.changed += 1;
                    }
                    summary.next_renewal = match (summary.next_renewal, report.next_renewal) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    summary.warnings += report.warnings.len();
                }
                Err(_) => summary.failed += 1,
            }
            out.push((cert.clone(), result));
        }
        if !opts.dry_run {
            if summary.failed == 0 {
                self.metrics.set_last_successful_check(self.clock.now());
            }
            self.save_status();
        }
        PassResults {
            summary,
            results: out,
        }
    }

    /// The pass-wide listings that stand in for per-certificate calls in the checks that follow:
    /// one SCM listing for every SCM certificate (per configured name, `concurrency` at a time,
    /// when the account is larger than offset paging reaches), and one listing of the revoked
    /// PCA certificates (skipped when it would not save requests). A failure is not fatal: each
    /// check then calls for itself and reports its own error.
    pub async fn prefetch(&self, certs: &[&ManagedCertificate]) {
        let config = self.config();
        let scm: Vec<&ManagedCertificate> = certs
            .iter()
            .copied()
            .filter(|c| matches!(c.source, CertificateSource::Scm(_)))
            .collect();
        if !scm.is_empty()
            && let Err(e) = self
                .renewer
                .scm_candidates(
                    &scm,
                    config.agent.concurrency,
                    config.agent.full_check_every,
                )
                .await
        {
            tracing::warn!(error = %e, "SCM listing for this pass failed; checking one by one");
        }
        if let Err(e) = self.renewer.pca_revocations(certs).await {
            tracing::warn!(error = %e, "PCA revocation listing for this pass failed; checking one by one");
        }
    }

    /// One certificate through the stages (see the module doc): plan, obtain, verify and
    /// install in [`Renewer::check`](super::renew::Renewer::check), then [`Agent::activate`] when the files changed, then
    /// [`Agent::publish`]. Recording is the pass's ([`Agent::run_pass`]). A dry run stops
    /// after the plan.
    pub async fn pass(
        &self,
        cert: &ManagedCertificate,
        opts: CheckOptions,
    ) -> Result<CheckReport, PassError> {
        #[cfg(feature = "fleet")]
        if let Some(link) = self.fleet_of(cert) {
            return self.fleet_pass(&link, cert, opts).await;
        }
        #[cfg(feature = "fleet")]
        if cert.fleet != crate::fleet::FleetMode::Local && !opts.dry_run {
            // Without the fleet (`ccm-agent renew`), issuing or deploying here would bypass
            // the lock and the fence.
            return Err(PassError::Fleet {
                name: cert.name.clone(),
                detail: format!(
                    "the certificate is {:?} in a fleet: only the daemon renews and deploys it, \
                     coordinated through etcd (SIGUSR1 makes a running daemon check now; \
                     `ccm-agent fleet status` shows the fleet)",
                    cert.fleet.as_str()
                ),
            });
        }
        let report = self.renewer.check(cert, opts).await?;
        if opts.dry_run {
            return Ok(report);
        }
        if report.install_changed
            && let Some(set) = report.installed_set.as_deref()
        {
            self.activate(cert, set).await?;
        }
        if let Some(spec) = &cert.deploy {
            self.publish(cert, spec, &report).await?;
        }
        Ok(report)
    }

    /// Stage 5: the consumers take the new files (hooks, configuration tests, reloads, the
    /// served-certificate check), described from the [`InstalledSet`]; on failure the previous
    /// version is restored and the consumers reloaded again.
    pub async fn activate(
        &self,
        cert: &ManagedCertificate,
        set: &InstalledSet,
    ) -> Result<(), PassError> {
        if cert.reload.is_empty() {
            return Ok(());
        }
        let ctx = crate::reload::ChangeContext::of_install(
            &cert.name,
            crate::reload::InstalledPaths::from(&cert.output),
            set.outcome.changed,
            set.bundle.leaf(),
            set.previous_fingerprint().map(str::to_owned),
        );
        let state = self.renewer.state_dir().clone();
        let name = cert.name.clone();
        let result = crate::reload::apply_after_install(&cert.reload, &ctx, move || {
            crate::install::restore_previous(&state, &name)
        })
        .await;
        self.reload_metrics.observe(&cert.name, &result);
        result
            .map(|_| ())
            .map_err(|e| PassError::Reload(Box::new(e)))
    }

    /// Stage 6: pushes the installed certificate to its cloud targets; only targets that do
    /// not have it yet are called (the deploy state remembers what went where). The material
    /// is the [`InstalledSet`] when this pass installed it; otherwise the last good version the
    /// state directory keeps (what is in place). An SCM certificate is deployed by the cloud id
    /// the report carries.
    pub async fn publish(
        &self,
        cert: &ManagedCertificate,
        spec: &crate::deploy::DeploySpec,
        report: &CheckReport,
    ) -> Result<(), PassError> {
        let fail = |detail: String| PassError::Deploy {
            name: cert.name.clone(),
            detail,
        };
        let Some(pem) = self.installed_pem(cert, report).map_err(fail)? else {
            return Ok(());
        };
        let material = match &cert.source {
            CertificateSource::Pca(_) => crate::deploy::CertMaterial::local(
                &cert.name,
                pem.cert,
                pem.chain,
                crate::cloud::Secret::new(pem.key),
            ),
            CertificateSource::Scm(_) => {
                let Some(id) = report.cloud_id.clone() else {
                    return Ok(());
                };
                crate::deploy::CertMaterial::scm(&cert.name, id, pem.cert)
            }
        };
        let store = self.renewer.state_dir().deploy_store();
        let result =
            crate::deploy::deploy_certificate(&self.client, &store, spec, &material, false)
                .await
                .map_err(|e| fail(e.to_string()))?;
        for (service, _action, target, outcome) in result.metric_rows() {
            let label = match outcome {
                "deployed" => "ok",
                "failed" => "error",
                _ => continue,
            };
            self.deploy_metrics
                .with_label_values(&[&cert.name, service, &target, label])
                .inc();
        }
        // deploy_certificate logs the `deployed` event.
        if result.is_complete() {
            Ok(())
        } else {
            Err(fail(result.summary()))
        }
    }

    /// The PEM text of the set in place: this pass's [`InstalledSet`], or else the last good
    /// version kept in the state directory. `None` when nothing is installed.
    pub(super) fn installed_pem(
        &self,
        cert: &ManagedCertificate,
        report: &CheckReport,
    ) -> Result<Option<InstalledPem>, String> {
        if let Some(set) = report.installed_set.as_deref() {
            return Ok(Some(InstalledPem {
                cert: set.bundle.cert_pem().to_owned(),
                chain: set.bundle.chain_pem().to_owned(),
                key: set.bundle.key_pem().to_owned(),
            }));
        }
        use crate::install::Role;
        let Some(current) = crate::install::last_good(self.renewer.state_dir(), &cert.name)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let text = |role: Role| {
            current
                .file(role)
                .map(|f| String::from_utf8_lossy(f.contents()).into_owned())
                .unwrap_or_default()
        };
        Ok(Some(InstalledPem {
            cert: text(Role::Cert),
            chain: text(Role::Chain),
            key: text(Role::Key),
        }))
    }

    fn in_backoff(&self, name: &str, now: Instant) -> bool {
        let backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        backoff.get(name).is_some_and(|(_, until)| *until > now)
    }

    pub(super) fn record_ok(&self, report: &CheckReport) {
        let result = match &report.action {
            Action::None => "ok",
            Action::Renewed { .. } => "renewed",
            Action::Reexported { .. } => "reexported",
            Action::Reinstalled { .. } => "reinstalled",
            Action::WouldDo(_) => "dry_run",
        };
        let now = self.clock.now();
        self.metrics.record_check(&report.name, "ok");
        if matches!(
            report.action,
            Action::Renewed { .. } | Action::Reexported { .. }
        ) {
            self.metrics.record_renewal(&report.name, "ok", now);
        }
        if report.install_changed {
            self.metrics.record_install(&report.name, "ok");
        }
        // Metrics describe what is on disk, as the check read it back.
        self.export_installed(&report.name, report.source, report.installed.as_ref());
        self.metrics.set_scm_expiring_without_successor(
            &report.name,
            report
                .warnings
                .iter()
                .any(|w| w.kind == WarningKind::ScmNoSuccessor),
        );
        for w in &report.warnings {
            tracing::warn!(certificate = %report.name, "{w}");
        }
        match &report.action {
            Action::None => tracing::debug!(certificate = %report.name, "nothing to do"),
            other => tracing::info!(
                certificate = %report.name,
                action = %other.as_str(),
                cloud_id = other.cloud_id().map(tracing::field::display),
                "certificate updated"
            ),
        }
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&report.name);
        let entry = CertStatus {
            name: report.name.clone(),
            source: report.source.to_owned(),
            not_after: report.installed.as_ref().map(|i| rfc3339(i.not_after)),
            next_renewal: report.next_renewal.map(rfc3339),
            last_check: Some(rfc3339(now)),
            last_result: result.to_owned(),
            last_error: None,
            warnings: report.warnings.iter().map(|w| w.message.clone()).collect(),
            fingerprint_sha256: report
                .installed
                .as_ref()
                .map(|i| i.fingerprint_sha256.clone()),
        };
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(report.name.clone(), entry);
    }

    /// The metrics of what is installed: the certificate's facts and readiness. The installed
    /// files are the truth, whatever the cloud answers: the daemon exports them at startup and
    /// after a failed check, so the expiry alerts keep working through an outage.
    pub(super) fn export_installed(
        &self,
        name: &str,
        source: &str,
        installed: Option<&CertSummary>,
    ) {
        if let Some(installed) = installed {
            self.metrics.set_read_error(name, false);
            if let Some(info) = installed.info.as_deref() {
                self.metrics.set_certificate(
                    name,
                    source,
                    &CertificateFacts::from_cert(info, Some(&installed.cert_path)),
                );
            }
        }
        self.metrics.set_cert_ready(name, installed.is_some());
    }

    /// Reads the installed files of `cert` and exports them ([`Agent::export_installed`]).
    pub(super) fn observe_installed(&self, cert: &ManagedCertificate) {
        let installed = self.renewer.installed(cert);
        self.export_installed(&cert.name, source_name(cert), installed.as_ref());
    }

    fn record_failure(&self, cert: &ManagedCertificate, e: &PassError) {
        let kind = e.kind();
        // The files in place are unchanged (or restored): export what they are.
        self.observe_installed(cert);
        tracing::error!(
            event = %crate::logging::Event::Failed,
            certificate = %cert.name,
            error_kind = %kind,
            error = %e,
            "certificate check failed; the files in place are unchanged"
        );
        self.metrics.record_check(&cert.name, kind.as_str());
        if kind == FailureKind::Filesystem {
            self.metrics.record_install(&cert.name, kind.as_str());
        } else {
            self.metrics
                .record_renewal(&cert.name, kind.as_str(), self.clock.now());
        }
        let failures = {
            let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
            let failures = backoff.get(&cert.name).map(|(n, _)| n + 1).unwrap_or(1);
            let delay = crate::policy::retry_delay(
                failures,
                self.config().agent.retry_initial,
                self.config().agent.retry_max,
                &mut rand::rng(),
            );
            backoff.insert(cert.name.clone(), (failures, Instant::now() + delay));
            failures
        };
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let entry = status
            .entry(cert.name.clone())
            .or_insert_with(|| CertStatus {
                name: cert.name.clone(),
                source: source_name(cert).to_owned(),
                ..CertStatus::default()
            });
        entry.last_check = Some(rfc3339(self.clock.now()));
        entry.last_result = kind.to_string();
        entry.last_error = Some(format!("{e} (failure {failures} in a row)"));
    }

    fn save_status(&self) {
        let _writing = self.status_write.lock().unwrap_or_else(|p| p.into_inner());
        let mut certificates: Vec<CertStatus> = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        certificates.sort_by(|a, b| a.name.cmp(&b.name));
        let file = StatusFile {
            updated_at: Some(rfc3339(self.clock.now())),
            certificates,
        };
        if let Err(e) = file.save(&self.config().agent.state_dir) {
            tracing::warn!(error = %format!("{e:#}"), "could not write the status file");
        }
    }
}

/// The text of an installed set, as the publish stage sends it.
pub(super) struct InstalledPem {
    pub(super) cert: String,
    pub(super) chain: String,
    pub(super) key: String,
}
