//! PCA: issue (CSR or apply mode), adopt what the journal says was issued, reconcile after an
//! unknown-outcome create, re-install from the last good copy, revoke superseded certificates.
//!
//! # Crash safety
//! Before a create call leaves the host the journal holds the attempt (and, in CSR mode, the
//! key). A 4xx or a refusal that certainly had no effect abandons the entry; a timeout, a 5xx or
//! an unreadable answer leaves it `requested`, and the next check reconciles: it lists this CA's
//! certificates with the common name, created since the request (minus [`RECONCILE_SLACK`] for
//! clock skew), not the installed or superseded one, of the same generation mode, and in CSR
//! mode whose public key is the stored key's. A match is adopted; otherwise the same key is sent
//! again. In apply mode the newest match is taken: another host applying for the same common
//! name at the same moment could be mistaken for ours (the API has no request tag to tell them
//! apart); CSR mode has no such ambiguity.

use std::collections::HashSet;

use super::{
    Action, CheckOptions, CheckReport, PlannedStep, RenewError, Renewer, Warning, WarningKind,
    describe_disk,
};
use crate::cloud::CloudError;
use crate::cloud::pca::ca::CaStatus;
use crate::cloud::pca::cert::{
    CertificateSortKey, CertificateStatus, CsrCertificateRequest, ExportType,
    ListCertificatesQuery, RevokeReason, SortDir,
};
use crate::config::{ManagedCertificate, PcaMode, PcaSource, ValidityUnit};
use crate::install::{self, Candidate, InstalledState};
use crate::logging::Event;
use crate::pki::{self, SubjectAltName};
use crate::policy::{self, Decision, Lifetime};
use crate::state::journal::{IssueMode, IssuedFor, Pending};
use crate::state::records::{CertRecord, Superseded};

/// How far before the journaled request time a reconciled certificate may have been created
/// (clock skew between this host and PCA).
pub const RECONCILE_SLACK: time::Duration = time::Duration::minutes(10);
/// How many recent certificates with the common name reconciliation looks at.
pub(super) const RECONCILE_PAGE: u32 = 50;

const STEP_CSR: &str = "issue (POST /v1/private-certificates/csr)";
const STEP_APPLY: &str = "issue (POST /v1/private-certificates)";

/// What a PCA certificate needs.
enum Need {
    /// Nothing to do; what is installed (read once by the decision).
    Nothing(Box<super::CertSummary>),
    Issue(String),
    Reinstall(String),
}

fn issue_mode(mode: PcaMode) -> IssueMode {
    match mode {
        PcaMode::Csr => IssueMode::Csr,
        PcaMode::Apply => IssueMode::Apply,
    }
}

pub(super) fn mode_str(mode: PcaMode) -> &'static str {
    match mode {
        PcaMode::Csr => "csr",
        PcaMode::Apply => "apply",
    }
}

/// The names the certificate must cover: the configured DNS and IP SANs, or the common name
/// when there are none.
pub(super) fn required_names(src: &PcaSource) -> Vec<String> {
    let names: Vec<String> = src
        .sans
        .iter()
        .filter(|s| matches!(s, SubjectAltName::Dns(_) | SubjectAltName::Ip(_)))
        .map(SubjectAltName::value)
        .collect();
    if names.is_empty() {
        vec![src.common_name().to_owned()]
    } else {
        names
    }
}

/// What a request for `src` asks for, as the journal records it.
fn issued_for(src: &PcaSource) -> IssuedFor {
    let mut names = required_names(src);
    names.sort();
    names.dedup();
    IssuedFor {
        ca_id: src.ca_id.clone(),
        key_algorithm: src.key_algorithm.as_str().to_string(),
        names,
    }
}

/// Why a pending issuance can no longer be adopted for `src`: another mode, or (when the entry
/// records it) another CA, key algorithm or set of names. `None` when it still fits.
fn pending_misfit(p: &Pending, src: &PcaSource) -> Option<String> {
    if p.mode != issue_mode(src.mode) {
        return Some(format!(
            "it was requested in {:?} mode and the certificate is now configured for {} mode",
            p.mode,
            mode_str(src.mode)
        ));
    }
    p.request.as_ref()?.misfit(&issued_for(src))
}

fn sans_text(src: &PcaSource) -> String {
    if src.sans.is_empty() {
        return "(none)".into();
    }
    src.sans
        .iter()
        .map(|s| format!("{}:{}", s.kind(), s.value()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a failed create certainly created nothing (so the journal entry can go).
fn create_certainly_failed(e: &CloudError) -> bool {
    e.certainly_not_processed()
        || matches!(e, CloudError::Invalid(_))
        || matches!(e.status(), Some(s) if (400..500).contains(&s))
}

impl Renewer {
    pub(super) async fn check_pca(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        opts: CheckOptions,
    ) -> Result<CheckReport, RenewError> {
        let name = cert.name.as_str();
        let mut report = CheckReport::new(name, "pca");
        Self::preflight(cert, opts, &mut report)?;

        if let Some(p) = self
            .journal
            .pending(name)
            .map_err(|e| RenewError::journal(name, e))?
        {
            let misfit = pending_misfit(&p, src);
            if opts.dry_run && misfit.is_none() {
                let mut steps = vec![PlannedStep(match &p.cloud_certificate_id {
                    Some(id) => format!(
                        "adopt certificate {id} issued by an earlier run (journal ticket {})",
                        p.ticket
                    ),
                    None => format!(
                        "reconcile the request of {} (journal ticket {}): GET /v1/private-certificates name={} sort_key=create_time, adopt a match or issue again",
                        p.requested_at,
                        p.ticket,
                        src.common_name()
                    ),
                })];
                steps.push(PlannedStep(
                    "POST /v1/private-certificates/{id}/export type=OTHER".into(),
                ));
                self.plan_install_steps(cert, &mut steps);
                report.action = Action::WouldDo(steps);
                report.installed = self.summary(cert);
                return Ok(report);
            }
            match misfit {
                None => return self.finish_pending(cert, src, p, report).await,
                Some(why) if opts.dry_run => {
                    report.warnings.push(Warning::new(
                        WarningKind::PendingIssuance,
                        format!(
                            "would abandon the pending issuance (journal ticket {}): {why}",
                            p.ticket
                        ),
                    ));
                }
                Some(why) => {
                    self.abandon_misfit(cert, src, &p, &why, &mut report)
                        .await?
                }
            }
        }

        let mut record = self.records.load(name)?;
        report.cloud_id = record.cloud_id.clone();
        if opts.dry_run {
            self.plan_revocations(&record, &mut report);
        } else {
            self.revoke_superseded(cert, &mut record, &mut report).await;
        }

        match self.pca_need(cert, src, &record, opts, &mut report).await? {
            Need::Nothing(installed) => {
                report.installed = Some(*installed);
                Ok(report)
            }
            Need::Issue(reason) => {
                if opts.dry_run {
                    let mut steps = match std::mem::replace(&mut report.action, Action::None) {
                        Action::WouldDo(revocations) => revocations,
                        _ => Vec::new(),
                    };
                    steps.extend(self.plan_issue(cert, src, &record, &reason));
                    report.action = Action::WouldDo(steps);
                    report.installed = self.summary(cert);
                    return Ok(report);
                }
                self.issue(cert, src, record, &reason, report, None).await
            }
            Need::Reinstall(reason) => {
                if opts.dry_run {
                    let mut steps = vec![PlannedStep(format!(
                        "re-install the last good copy of certificate {} ({reason})",
                        record.cloud_id.as_deref().unwrap_or("?")
                    ))];
                    self.plan_install_steps(cert, &mut steps);
                    report.action = Action::WouldDo(steps);
                    report.installed = self.summary(cert);
                    return Ok(report);
                }
                self.reinstall(cert, src, record, reason, report).await
            }
        }
    }

    /// Decides what the certificate needs (see the module doc of `renew`).
    async fn pca_need(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        record: &CertRecord,
        opts: CheckOptions,
        report: &mut CheckReport,
    ) -> Result<Need, RenewError> {
        if opts.force {
            return Ok(Need::Issue("forced".into()));
        }
        let paths = self.checked_paths(cert);
        let installed = match install::read_installed(&paths) {
            InstalledState::Present(c) => c,
            other => {
                let what = describe_disk(&other);
                return Ok(if record.fingerprint_sha256.is_some() {
                    Need::Reinstall(what)
                } else {
                    Need::Issue(format!("no certificate installed: {what}"))
                });
            }
        };
        match record.fingerprint_sha256.as_deref() {
            Some(fp) if fp.eq_ignore_ascii_case(&installed.fingerprint_sha256) => {}
            Some(_) => {
                return Ok(Need::Reinstall(format!(
                    "the certificate on disk (serial {}) is not the one the agent installed",
                    installed.serial_hex
                )));
            }
            None => {
                return Ok(Need::Issue(format!(
                    "no record of issuing the certificate on disk (serial {})",
                    installed.serial_hex
                )));
            }
        }
        if record.ca_id.as_deref() != Some(src.ca_id.as_str()) {
            return Ok(Need::Issue(format!(
                "the issuing CA changed from {} to {}",
                record.ca_id.as_deref().unwrap_or("(unknown)"),
                src.ca_id
            )));
        }
        if record.mode.as_deref() != Some(mode_str(src.mode)) {
            return Ok(Need::Issue(format!(
                "the mode changed to {}",
                mode_str(src.mode)
            )));
        }
        let missing: Vec<String> = required_names(src)
            .into_iter()
            .filter(|n| !install::names_covered(&installed.info, n))
            .collect();
        if !missing.is_empty() {
            return Ok(Need::Issue(format!(
                "the installed certificate does not cover {}",
                missing.join(", ")
            )));
        }
        if let Some(id) = &record.cloud_id {
            let revoked = match self.revoked_in_pass(&cert.name, id) {
                Some(revoked) => revoked,
                None => match self.client.show_private_certificate(id).await {
                    Ok(c) => c.status == CertificateStatus::Revoked,
                    Err(e) => {
                        report.warnings.push(Warning::new(WarningKind::RevocationUnknown, format!(
                            "could not read certificate {id} from PCA (its revocation status is unknown): {e}"
                        )));
                        false
                    }
                },
            };
            if revoked {
                return Ok(Need::Issue(format!("certificate {id} was revoked in PCA")));
            }
        }
        let lifetime = Lifetime::new(installed.not_before, installed.not_after);
        match policy::decide(
            self.now(),
            &lifetime,
            &cert.renew,
            self.jitter_unit(&cert.name),
        ) {
            Decision::Renew { reason } => Ok(Need::Issue(format!(
                "renewal {} (valid until {})",
                reason.as_str(),
                installed.not_after
            ))),
            Decision::Wait { until } => {
                report.next_renewal = Some(until);
                Ok(Need::Nothing(Box::new(super::summary_of(
                    &installed,
                    paths.cert.clone(),
                ))))
            }
        }
    }

    pub(super) fn next_renewal_of(
        &self,
        cert: &ManagedCertificate,
        leaf: &pki::CertInfo,
    ) -> Option<time::OffsetDateTime> {
        match policy::decide(
            self.now(),
            &Lifetime::new(leaf.not_before, leaf.not_after),
            &cert.renew,
            self.jitter_unit(&cert.name),
        ) {
            Decision::Wait { until } => Some(until),
            Decision::Renew { .. } => None,
        }
    }

    fn plan_issue(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        record: &CertRecord,
        reason: &str,
    ) -> Vec<PlannedStep> {
        let v = &src.validity;
        let mut steps = vec![
            PlannedStep(format!("renew: {reason}")),
            PlannedStep(format!(
                "GET /v1/private-certificate-authorities/{} (must be ACTIVED)",
                src.ca_id
            )),
            PlannedStep(format!(
                "POST /v1/private-certificate-authorities/{}/export (the issuer the chain must lead to)",
                src.ca_id
            )),
        ];
        match src.mode {
            PcaMode::Csr => {
                steps.push(PlannedStep(format!(
                    "generate a {} key on this host (kept in the journal, 0600; never sent)",
                    src.key_algorithm
                )));
                steps.push(PlannedStep(format!(
                    "POST /v1/private-certificates/csr issuer_id={} cn={} sans={} validity={} {}",
                    src.ca_id,
                    src.common_name(),
                    sans_text(src),
                    v.value,
                    v.unit
                )));
            }
            PcaMode::Apply => {
                let eku: Vec<&str> = src.extended_key_usage.iter().map(|e| e.as_str()).collect();
                let ku: Vec<&str> = src.key_usages.iter().map(|k| k.as_str()).collect();
                steps.push(PlannedStep(format!(
                    "POST /v1/private-certificates issuer_id={} cn={} sans={} key_algorithm={} signature_algorithm={} validity={} {} key_usages=[{}] extended_key_usage=[{}]",
                    src.ca_id,
                    src.common_name(),
                    sans_text(src),
                    src.key_algorithm,
                    src.signature_algorithm,
                    v.value,
                    v.unit,
                    ku.join(","),
                    eku.join(",")
                )));
            }
        }
        steps.push(PlannedStep(
            "POST /v1/private-certificates/{new id}/export type=OTHER".into(),
        ));
        self.plan_install_steps(cert, &mut steps);
        if let (Some(old), Some(grace)) = (&record.cloud_id, src.revoke_superseded_after) {
            steps.push(PlannedStep(format!(
                "after {}: POST /v1/private-certificates/{old}/revoke reason=SUPERSEDED",
                crate::config::format_duration(grace)
            )));
        }
        steps
    }

    fn plan_revocations(&self, record: &CertRecord, report: &mut CheckReport) {
        let now = self.now().unix_timestamp();
        let due: Vec<PlannedStep> = record
            .superseded
            .iter()
            .filter(|s| s.revoke_at <= now)
            .map(|s| {
                PlannedStep(format!(
                    "POST /v1/private-certificates/{}/revoke reason=SUPERSEDED",
                    s.cloud_id
                ))
            })
            .collect();
        if !due.is_empty() {
            report.action = Action::WouldDo(due);
        }
    }

    /// The issuing CA's certificate, the anchor a candidate's chain must lead to. With
    /// `require_active`, the CA is first checked to be able to issue.
    pub(super) async fn issuer_anchor(
        &self,
        name: &str,
        src: &PcaSource,
        require_active: bool,
    ) -> Result<String, RenewError> {
        let ca_id = src.ca_id.as_str();
        if require_active {
            let ca = self.client.pca_show_ca(ca_id).await.map_err(|e| {
                if e.status() == Some(404) {
                    RenewError::CaUnavailable {
                        name: name.to_string(),
                        ca_id: ca_id.to_string(),
                        detail: format!("it does not exist: {e}"),
                    }
                } else {
                    RenewError::cloud(name, "read the issuing CA", Some(ca_id), e)
                }
            })?;
            if ca.status != CaStatus::Active {
                return Err(RenewError::CaUnavailable {
                    name: name.to_string(),
                    ca_id: ca_id.to_string(),
                    detail: format!("it is {}, not ACTIVED", ca.status.as_str()),
                });
            }
        }
        let exported = self
            .client
            .pca_export_ca_certificate(ca_id)
            .await
            .map_err(|e| {
                RenewError::cloud(name, "export the issuing CA certificate", Some(ca_id), e)
            })?;
        Ok(exported.certificate)
    }

    /// Issues a new certificate and installs it. `reuse_key`: in CSR mode, send a CSR for this
    /// key (from an abandoned attempt) instead of generating one.
    async fn issue(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        record: CertRecord,
        reason: &str,
        mut report: CheckReport,
        reuse_key: Option<String>,
    ) -> Result<CheckReport, RenewError> {
        let name = cert.name.as_str();
        tracing::info!(certificate = %name, %reason, mode = %mode_str(src.mode), "issuing");
        let anchor = self.issuer_anchor(name, src, true).await?;
        let now = self.now();
        let (id, key_pem) = match src.mode {
            PcaMode::Csr => {
                let key = match reuse_key {
                    Some(pem) => {
                        pki::PrivateKey::from_pem(&pem).map_err(|e| RenewError::Crypto {
                            name: name.to_string(),
                            detail: format!("the key kept in the journal does not parse: {e}"),
                        })?
                    }
                    None => self.generate_key(name, src).await?,
                };
                let key_pem = key.to_pem();
                let csr = pki::generate_csr(&key, &src.subject, &src.sans).map_err(|e| {
                    RenewError::Crypto {
                        name: name.to_string(),
                        detail: format!("building the CSR: {e}"),
                    }
                })?;
                self.journal
                    .begin_issue(
                        name,
                        IssueMode::Csr,
                        Some(&key_pem),
                        Some(issued_for(src)),
                        now,
                    )
                    .map_err(|e| RenewError::journal(name, e))?;
                let body = CsrCertificateRequest::new(&src.ca_id, csr, src.validity.to_api());
                let r = self.client.issue_private_certificate_by_csr(&body).await;
                (self.after_create(name, src, r, STEP_CSR)?, Some(key_pem))
            }
            PcaMode::Apply => {
                self.journal
                    .begin_issue(name, IssueMode::Apply, None, Some(issued_for(src)), now)
                    .map_err(|e| RenewError::journal(name, e))?;
                let r = self
                    .client
                    .apply_private_certificate(&super::wire::apply_request(src))
                    .await;
                (self.after_create(name, src, r, STEP_APPLY)?, None)
            }
        };
        tracing::info!(event = %Event::Issued, certificate = %name, cloud_id = %id, %reason, "issued");
        report.reason = Some(reason.to_owned());
        report.action = Action::Renewed {
            cloud_id: id.clone(),
        };
        self.adopt(cert, src, &id, key_pem, anchor, record, report)
            .await
    }

    async fn generate_key(
        &self,
        name: &str,
        src: &PcaSource,
    ) -> Result<pki::PrivateKey, RenewError> {
        let alg = src.key_algorithm;
        let crypto = |detail: String| RenewError::Crypto {
            name: name.to_string(),
            detail,
        };
        tokio::task::spawn_blocking(move || pki::generate_key(alg))
            .await
            .map_err(|e| crypto(format!("key generation task failed: {e}")))?
            .map_err(|e| crypto(format!("generating a {alg} key: {e}")))
    }

    /// Records the id of a successful create; after a failure, abandons the journal entry when
    /// nothing was created, and keeps it for reconciliation when the outcome is unknown.
    fn after_create(
        &self,
        name: &str,
        src: &PcaSource,
        r: Result<String, CloudError>,
        step: &str,
    ) -> Result<String, RenewError> {
        match r {
            Ok(id) => {
                self.journal
                    .record_issued(name, &id)
                    .map_err(|e| RenewError::journal(name, e))?;
                Ok(id)
            }
            Err(e) => {
                if create_certainly_failed(&e) {
                    if let Err(je) = self.journal.abandon(name) {
                        tracing::warn!(certificate = %name, error = %je, "could not clear the journal entry");
                    }
                } else {
                    tracing::warn!(
                        certificate = %name, error = %e,
                        "the outcome of the create call is unknown; the next check reconciles before issuing again"
                    );
                }
                Err(RenewError::cloud(name, step, Some(&src.ca_id), e))
            }
        }
    }

    /// Exports certificate `id`, verifies it against the issuer and the configured names,
    /// installs it, updates the record and completes the journal entry.
    #[allow(clippy::too_many_arguments)]
    async fn adopt(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        id: &str,
        key_pem: Option<String>,
        anchor: String,
        mut record: CertRecord,
        mut report: CheckReport,
    ) -> Result<CheckReport, RenewError> {
        let name = cert.name.as_str();
        let exported = self
            .client
            .export_private_certificate(id, ExportType::Other)
            .await
            .map_err(|e| {
                RenewError::cloud(
                    name,
                    &format!("export certificate {id}"),
                    Some(&src.ca_id),
                    e,
                )
            })?;
        let key_pem = match src.mode {
            PcaMode::Csr => key_pem.ok_or_else(|| RenewError::Crypto {
                name: name.to_string(),
                detail: format!("the journal holds no key for certificate {id}"),
            })?,
            PcaMode::Apply => exported
                .private_key
                .clone()
                .ok_or_else(|| RenewError::Cloud {
                    name: name.to_string(),
                    step: format!("export certificate {id}"),
                    source: Box::new(CloudError::Decode {
                        service: "pca",
                        operation: "export_certificate",
                        detail: "the export of an apply-mode certificate holds no private key"
                            .into(),
                    }),
                })?,
        };
        let candidate = Candidate {
            name: name.to_string(),
            cert_pem: exported.certificate.clone(),
            chain_pem: exported.certificate_chain.clone(),
            key_pem,
        };
        let (bundle, outcome) = self
            .verify_and_install(cert, candidate, required_names(src), Some(anchor))
            .await?;
        let now = self.now();
        if let Some(old) = record.cloud_id.take()
            && old != id
            && let Some(grace) = src.revoke_superseded_after
        {
            let grace = time::Duration::try_from(grace).unwrap_or(time::Duration::MAX);
            let revoke_at = now.checked_add(grace).unwrap_or(now);
            record.superseded.push(Superseded {
                cloud_id: old,
                superseded_at: now.unix_timestamp(),
                revoke_at: revoke_at.unix_timestamp(),
            });
        }
        record.source = "pca".into();
        record.cloud_id = Some(id.to_string());
        record.ca_id = Some(src.ca_id.clone());
        record.mode = Some(mode_str(src.mode).into());
        record.fingerprint_sha256 = Some(bundle.fingerprint_sha256().to_string());
        record.installed_at = Some(now.unix_timestamp());
        self.records.save(name, &record)?;
        if let Err(e) = self.journal.complete(name) {
            report.warnings.push(Warning::new(WarningKind::State, format!(
                "installed, but the journal entry could not be cleared (the next check re-adopts it harmlessly): {e}"
            )));
        }
        // The `installed` event itself is logged once per check, by `Renewer::check`.
        tracing::debug!(
            certificate = %name, cloud_id = %id, serial = %bundle.leaf().serial_hex,
            changed = outcome.changed, "adopted"
        );
        if matches!(report.action, Action::None) {
            report.action = Action::Renewed {
                cloud_id: id.to_string(),
            };
        }
        report.next_renewal = self.next_renewal_of(cert, bundle.leaf());
        report.cloud_id = Some(id.to_string());
        report.took_install(bundle, outcome, self.pem_paths(cert).cert);
        Ok(report)
    }

    /// Gives up a pending issuance that no longer fits the configuration (see
    /// [`pending_misfit`]): logged and reported, its certificate revoked when superseded
    /// certificates are revoked (a failed revocation is a warning), and the journal entry
    /// cleared so that a new certificate is issued.
    async fn abandon_misfit(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        p: &Pending,
        why: &str,
        report: &mut CheckReport,
    ) -> Result<(), RenewError> {
        let name = cert.name.as_str();
        let what = match &p.cloud_certificate_id {
            Some(id) => format!("certificate {id}"),
            None => "the issuance".to_string(),
        };
        tracing::warn!(
            certificate = %name, ticket = %p.ticket, reason = %why,
            "abandoning a pending issuance that no longer fits the configuration"
        );
        report.warnings.push(Warning::new(
            WarningKind::PendingIssuance,
            format!(
                "abandoned the pending {what} (journal ticket {}): {why}; issuing a new one",
                p.ticket
            ),
        ));
        if let Some(id) = &p.cloud_certificate_id
            && src.revoke_superseded_after.is_some()
        {
            match self
                .client
                .revoke_private_certificate(id, Some(RevokeReason::Superseded))
                .await
            {
                Ok(()) => {
                    tracing::info!(certificate = %name, certificate_id = %id, "revoked the abandoned certificate")
                }
                Err(e) => report.warnings.push(Warning::new(
                    WarningKind::Revocation,
                    format!("could not revoke the abandoned certificate {id}: {e}"),
                )),
            }
        }
        self.journal
            .abandon(name)
            .map_err(|e| RenewError::journal(name, e))
    }

    /// Finishes an issuance an earlier run began.
    async fn finish_pending(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        p: Pending,
        mut report: CheckReport,
    ) -> Result<CheckReport, RenewError> {
        let name = cert.name.as_str();
        let record = self.records.load(name)?;
        let key_pem = p.load_key().map_err(|e| RenewError::journal(name, e))?;
        let id = match &p.cloud_certificate_id {
            Some(id) => {
                let gone = match self.client.show_private_certificate(id).await {
                    Ok(c)
                        if matches!(
                            c.status,
                            CertificateStatus::Revoked | CertificateStatus::Expired
                        ) =>
                    {
                        Some(format!("it is {}", c.status.as_str()))
                    }
                    // An entry written before journal entries recorded their request: compare
                    // what the listing says.
                    Ok(c)
                        if p.request.is_none()
                            && (c.issuer_id.as_deref().is_some_and(|i| i != src.ca_id)
                                || c.key_algorithm.as_deref().is_some_and(|a| {
                                    !a.eq_ignore_ascii_case(src.key_algorithm.as_str())
                                })) =>
                    {
                        Some(format!(
                            "it was issued by CA {} with key algorithm {}, and the configuration now asks for CA {} with {}",
                            c.issuer_id.as_deref().unwrap_or("?"),
                            c.key_algorithm.as_deref().unwrap_or("?"),
                            src.ca_id,
                            src.key_algorithm.as_str()
                        ))
                    }
                    Ok(_) => None,
                    Err(e) if e.status() == Some(404) => Some("it no longer exists".to_string()),
                    Err(e) => {
                        return Err(RenewError::cloud(
                            name,
                            &format!("read certificate {id} issued by an earlier run"),
                            Some(&src.ca_id),
                            e,
                        ));
                    }
                };
                if let Some(why) = gone {
                    report.warnings.push(Warning::new(WarningKind::PendingIssuance, format!(
                        "the certificate {id} issued by an earlier run cannot be adopted ({why}); issuing a new one"
                    )));
                    self.journal
                        .abandon(name)
                        .map_err(|e| RenewError::journal(name, e))?;
                    return self
                        .issue(
                            cert,
                            src,
                            record,
                            "the pending certificate is unusable",
                            report,
                            None,
                        )
                        .await;
                }
                id.clone()
            }
            None => match self
                .reconcile(cert, src, &p, key_pem.as_deref(), &record)
                .await?
            {
                Some(id) => {
                    report.warnings.push(Warning::new(WarningKind::PendingIssuance, format!(
                        "adopted certificate {id}, found by listing after an issuance whose answer was lost"
                    )));
                    self.journal
                        .record_issued(name, &id)
                        .map_err(|e| RenewError::journal(name, e))?;
                    id
                }
                None => {
                    tracing::info!(
                        certificate = %name, ticket = %p.ticket,
                        "the lost issuance created nothing; issuing again"
                    );
                    self.journal
                        .abandon(name)
                        .map_err(|e| RenewError::journal(name, e))?;
                    return self
                        .issue(
                            cert,
                            src,
                            record,
                            "the earlier request created no certificate",
                            report,
                            key_pem,
                        )
                        .await;
                }
            },
        };
        let anchor = self.issuer_anchor(name, src, false).await?;
        report.reason = Some("finishing an interrupted issuance".into());
        report.action = Action::Renewed {
            cloud_id: id.clone(),
        };
        let legacy = p.request.is_none();
        let before = (record.clone(), report.clone());
        match self
            .adopt(cert, src, &id, key_pem, anchor, record, report)
            .await
        {
            // An entry written before entries recorded their request, for names the
            // configuration has changed since: give it up rather than fail on it forever.
            Err(RenewError::Install { source, .. })
                if legacy
                    && matches!(
                        source.as_ref(),
                        install::InstallError::Rejected {
                            reason: install::Rejection::NamesNotCovered { .. },
                            ..
                        }
                    ) =>
            {
                let (record, mut report) = before;
                let why =
                    format!("certificate {id} does not cover the configured names ({source})");
                self.abandon_misfit(cert, src, &p, &why, &mut report)
                    .await?;
                report.action = Action::None;
                self.issue(
                    cert,
                    src,
                    record,
                    "the pending certificate no longer fits",
                    report,
                    None,
                )
                .await
            }
            other => other,
        }
    }

    /// Looks for the certificate a lost create call made (see the module doc).
    async fn reconcile(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        p: &Pending,
        key_pem: Option<&str>,
        record: &CertRecord,
    ) -> Result<Option<String>, RenewError> {
        let name = cert.name.as_str();
        let cn = src.common_name();
        let q = newest_with_common_name(src, RECONCILE_PAGE);
        let list = self
            .client
            .list_private_certificates(&q)
            .await
            .map_err(|e| {
                RenewError::cloud(
                    name,
                    "reconcile (GET /v1/private-certificates)",
                    Some(&src.ca_id),
                    e,
                )
            })?;
        let since = p.requested_at - RECONCILE_SLACK;
        let mut known: HashSet<&str> = record
            .superseded
            .iter()
            .map(|s| s.cloud_id.as_str())
            .collect();
        if let Some(id) = &record.cloud_id {
            known.insert(id);
        }
        let want_csr = src.mode == PcaMode::Csr;
        let lifetime = exact_lifetime(src);
        let candidates = list.certificates.iter().filter(|c| {
            c.issuer_id.as_deref() == Some(src.ca_id.as_str())
                && c.common_name() == Some(cn)
                && c.status == CertificateStatus::Issued
                && c.create_time.is_some_and(|t| t >= since)
                && !known.contains(c.certificate_id.as_str())
                && (c.gen_mode.as_deref() == Some("CSR")) == want_csr
                // What the request asked for, where the list says it.
                && (want_csr
                    || c.key_algorithm.as_deref().is_none_or(|a| {
                        a.eq_ignore_ascii_case(src.key_algorithm.as_str())
                    }))
                && match (lifetime, c.not_before, c.not_after) {
                    (Some(want), Some(nb), Some(na)) => {
                        ((na - nb) - want).abs() <= time::Duration::minutes(1)
                    }
                    _ => true,
                }
        });
        if !want_csr {
            return Ok(candidates
                .max_by_key(|c| c.create_time)
                .map(|c| c.certificate_id.clone()));
        }
        let Some(key_pem) = key_pem else {
            return Ok(None);
        };
        let key = pki::PrivateKey::from_pem(key_pem).map_err(|e| RenewError::Crypto {
            name: name.to_string(),
            detail: format!("the key kept in the journal does not parse: {e}"),
        })?;
        for c in candidates {
            let exported = self
                .client
                .export_private_certificate(&c.certificate_id, ExportType::Other)
                .await
                .map_err(|e| {
                    RenewError::cloud(
                        name,
                        &format!("reconcile: export certificate {}", c.certificate_id),
                        Some(&src.ca_id),
                        e,
                    )
                })?;
            if let Ok(info) = pki::parse_cert(&exported.certificate)
                && pki::key_matches_cert(&key, &info)
            {
                return Ok(Some(c.certificate_id.clone()));
            }
        }
        Ok(None)
    }

    /// Repairs the files from the last good copy; without one (or if it is due itself), issues.
    async fn reinstall(
        &self,
        cert: &ManagedCertificate,
        src: &PcaSource,
        record: CertRecord,
        reason: String,
        mut report: CheckReport,
    ) -> Result<CheckReport, RenewError> {
        let name = cert.name.as_str();
        match self
            .reinstall_last_good(cert, &record, required_names(src))
            .await?
        {
            Some((bundle, outcome)) => {
                tracing::debug!(certificate = %name, %reason, "re-installed the last good copy");
                report.reason = Some(reason.clone());
                report.cloud_id = record.cloud_id.clone();
                report.took_install(bundle, outcome, self.pem_paths(cert).cert);
                let due = match &report.installed {
                    Some(s) => match policy::decide(
                        self.now(),
                        &Lifetime::new(s.not_before, s.not_after),
                        &cert.renew,
                        self.jitter_unit(name),
                    ) {
                        Decision::Wait { until } => {
                            report.next_renewal = Some(until);
                            false
                        }
                        Decision::Renew { .. } => true,
                    },
                    None => true,
                };
                if !due {
                    report.action = Action::Reinstalled { reason };
                    return Ok(report);
                }
                self.issue(
                    cert,
                    src,
                    record,
                    "the re-installed copy is due",
                    report,
                    None,
                )
                .await
            }
            None => {
                report.warnings.push(Warning::new(
                    WarningKind::NoGoodCopy,
                    format!("{reason}, and no good copy is kept: issuing a new certificate"),
                ));
                self.issue(cert, src, record, &reason, report, None).await
            }
        }
    }

    /// Revokes superseded certificates whose grace period has passed. Failures are warnings; a
    /// retryable one is tried again at the next check.
    async fn revoke_superseded(
        &self,
        cert: &ManagedCertificate,
        record: &mut CertRecord,
        report: &mut CheckReport,
    ) {
        if record.superseded.is_empty() {
            return;
        }
        let now = self.now().unix_timestamp();
        let mut keep = Vec::new();
        let mut changed = false;
        for s in std::mem::take(&mut record.superseded) {
            if now < s.revoke_at {
                keep.push(s);
                continue;
            }
            match self
                .client
                .revoke_private_certificate(&s.cloud_id, Some(RevokeReason::Superseded))
                .await
            {
                Ok(()) => {
                    tracing::info!(certificate = %cert.name, certificate_id = %s.cloud_id, "revoked the superseded certificate");
                    changed = true;
                }
                Err(e) if e.is_retryable() => {
                    report.warnings.push(Warning::new(
                        WarningKind::Revocation,
                        format!(
                            "could not revoke the superseded certificate {} (will retry): {e}",
                            s.cloud_id
                        ),
                    ));
                    keep.push(s);
                }
                Err(e) => {
                    report.warnings.push(Warning::new(
                        WarningKind::Revocation,
                        format!(
                            "could not revoke the superseded certificate {} (giving up): {e}",
                            s.cloud_id
                        ),
                    ));
                    changed = true;
                }
            }
        }
        record.superseded = keep;
        if changed && let Err(e) = self.records.save(&cert.name, record) {
            report
                .warnings
                .push(Warning::new(WarningKind::State, e.to_string()));
        }
    }
}

/// The lifetime a request for `src` yields, where it is exact (DAY and HOUR; months and years
/// depend on the calendar).
fn exact_lifetime(src: &PcaSource) -> Option<time::Duration> {
    let v = i64::from(src.validity.value);
    match src.validity.unit {
        ValidityUnit::Day => Some(time::Duration::days(v)),
        ValidityUnit::Hour => Some(time::Duration::hours(v)),
        ValidityUnit::Month | ValidityUnit::Year => None,
    }
}

/// The listing that finds what was issued for `src`: its common name (the API's 64-character
/// limit), newest first. Used to reconcile an issuance whose outcome is unknown, here and in
/// fleet mode.
pub(super) fn newest_with_common_name(src: &PcaSource, limit: u32) -> ListCertificatesQuery {
    ListCertificatesQuery {
        limit: Some(limit),
        name: Some(src.common_name().chars().take(64).collect()),
        sort_key: Some(CertificateSortKey::CreateTime),
        sort_dir: Some(SortDir::Desc),
        ..ListCertificatesQuery::default()
    }
}

/// How long a revocation listing may stand in for a check's own lookup.
pub const REVOKED_SNAPSHOT_TTL: time::Duration = time::Duration::minutes(10);
/// Page size of the revocation listing (the API's maximum).
const REVOKED_PAGE: u32 = 1000;

/// The revoked certificates of one listing pass ([`Renewer::pca_revocations`]).
pub(super) struct RevokedSnapshot {
    taken_at: time::OffsetDateTime,
    revoked: HashSet<String>,
    /// Names that have not used it yet.
    unused: HashSet<String>,
}

impl Renewer {
    /// One listing pass for the revocation status of many PCA certificates: the revoked
    /// certificates of the account (`status=REVOKED`, pages of 1000), kept for the next
    /// [`check`](Self::check) of each of the given certificates, which then needs no request of
    /// its own to learn whether its certificate was revoked. Each name uses the pass once, and
    /// only within [`REVOKED_SNAPSHOT_TTL`]; after that a check looks its certificate up itself
    /// (`GET /v1/private-certificates/{id}`), as it does without a pass.
    ///
    /// The pass is skipped (`Ok(false)`) when it would cost more requests than it saves: fewer
    /// than two PCA certificates, or more pages of revoked certificates than there are PCA
    /// certificates. Returns whether a pass is now in place.
    pub async fn pca_revocations(&self, certs: &[&ManagedCertificate]) -> Result<bool, RenewError> {
        let names: HashSet<String> = certs
            .iter()
            .filter(|c| matches!(c.source, crate::config::CertificateSource::Pca(_)))
            .map(|c| c.name.clone())
            .collect();
        if names.len() < 2 {
            return Ok(false);
        }
        let err = |e| RenewError::cloud("(pca)", "list revoked certificates", None, e);
        let query = |offset: u32| ListCertificatesQuery {
            limit: Some(REVOKED_PAGE),
            offset: Some(offset),
            status: Some(CertificateStatus::Revoked),
            ..ListCertificatesQuery::default()
        };
        let taken_at = self.now();
        let first = self
            .client
            .list_private_certificates(&query(0))
            .await
            .map_err(err)?;
        let pages = first.total.div_ceil(u64::from(REVOKED_PAGE));
        if pages > names.len() as u64 {
            tracing::debug!(
                revoked = first.total,
                certificates = names.len(),
                "more revoked certificates than a listing pass pays for; each check looks up its own"
            );
            return Ok(false);
        }
        let mut revoked: HashSet<String> = HashSet::new();
        let mut page = first.certificates;
        let mut offset: u32 = 0;
        loop {
            let n = u32::try_from(page.len()).unwrap_or(u32::MAX);
            revoked.extend(
                page.into_iter()
                    .filter(|c| c.status == CertificateStatus::Revoked)
                    .map(|c| c.certificate_id),
            );
            offset = offset.saturating_add(n);
            if n < REVOKED_PAGE || u64::from(offset) >= first.total {
                break;
            }
            page = self
                .client
                .list_private_certificates(&query(offset))
                .await
                .map_err(err)?
                .certificates;
        }
        let mut g = self.pca_revoked.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(RevokedSnapshot {
            taken_at,
            revoked,
            unused: names,
        });
        Ok(true)
    }

    /// From the pass, whether certificate `id` of `name` is revoked; `None` when no fresh pass
    /// holds an answer for `name`.
    fn revoked_in_pass(&self, name: &str, id: &str) -> Option<bool> {
        let now = self.now();
        let mut g = self.pca_revoked.lock().unwrap_or_else(|p| p.into_inner());
        let snap = g.as_mut()?;
        let age = now - snap.taken_at;
        if age > REVOKED_SNAPSHOT_TTL || age.is_negative() {
            *g = None;
            return None;
        }
        snap.unused.remove(name).then(|| snap.revoked.contains(id))
    }
}
