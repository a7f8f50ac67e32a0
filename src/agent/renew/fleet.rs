//! What fleet mode asks of the renewal engine: install exactly the certificate the fleet
//! published (exported from the cloud, its fingerprint checked against the published one
//! before anything is written), and a report of what is installed without calling anyone.

use super::{Action, CheckReport, RenewError, Renewer};
use crate::cloud::pca::cert::ExportType;
use crate::config::{CertificateSource, ManagedCertificate};
use crate::install::{self, Candidate, InstalledState};
use crate::pki;
use crate::policy::{self, Decision, Lifetime};

impl Renewer {
    /// Exports certificate `cloud_id` (PCA apply-mode export with its key, or SCM export),
    /// checks that its leaf's SHA-256 is `fingerprint` (when given), verifies it like any
    /// candidate and installs it, recording it as installed. A fingerprint that differs is an
    /// error and nothing is written.
    pub async fn install_published(
        &self,
        cert: &ManagedCertificate,
        cloud_id: &str,
        fingerprint: Option<&str>,
    ) -> Result<CheckReport, RenewError> {
        let slot = self.slot(&cert.name);
        let _guard = slot.lock.lock().await;
        let name = cert.name.as_str();
        let (source, exported, names, anchor) = match &cert.source {
            CertificateSource::Pca(src) => {
                let e = self
                    .client
                    .export_private_certificate(cloud_id, ExportType::Other)
                    .await
                    .map_err(|e| {
                        RenewError::cloud(
                            name,
                            &format!("export the fleet's certificate {cloud_id}"),
                            Some(&src.ca_id),
                            e,
                        )
                    })?;
                let key = e.private_key.clone().ok_or_else(|| RenewError::Crypto {
                    name: name.to_owned(),
                    detail: format!(
                        "the export of the fleet's certificate {cloud_id} holds no private key (not an apply-mode certificate)"
                    ),
                })?;
                let anchor = self.issuer_anchor(name, src, false).await?;
                (
                    "pca",
                    Candidate {
                        name: name.to_owned(),
                        cert_pem: e.certificate,
                        chain_pem: e.certificate_chain,
                        key_pem: key,
                    },
                    super::pca::required_names(src),
                    Some(anchor),
                )
            }
            CertificateSource::Scm(sel) => {
                let e = self
                    .client
                    .scm_export_certificate(cloud_id)
                    .await
                    .map_err(|e| {
                        RenewError::cloud(
                            name,
                            &format!("export the fleet's SCM certificate {cloud_id}"),
                            None,
                            e,
                        )
                    })?;
                (
                    "scm",
                    Candidate {
                        name: name.to_owned(),
                        cert_pem: e.certificate,
                        chain_pem: e.certificate_chain,
                        key_pem: e.private_key.expose().to_owned(),
                    },
                    super::scm::required_names(sel),
                    None,
                )
            }
        };
        let got = pki::parse_pem_chain(&exported.cert_pem)
            .ok()
            .and_then(|c| c.into_iter().next())
            .map(|c| c.sha256_fingerprint_hex)
            .unwrap_or_default();
        if let Some(fingerprint) = fingerprint
            && !got.eq_ignore_ascii_case(fingerprint)
        {
            return Err(RenewError::Crypto {
                name: name.to_owned(),
                detail: format!(
                    "the cloud's certificate {cloud_id} has fingerprint {got}, not the fleet's published {fingerprint}: not installed"
                ),
            });
        }
        let mut report = CheckReport::new(name, source);
        let (bundle, outcome) = self
            .verify_and_install(cert, exported, names, anchor)
            .await?;
        let mut record = self.records.load(name)?;
        record.source = source.into();
        if record.cloud_id.as_deref() != Some(cloud_id) {
            // A superseded certificate of the fleet is the holder's to revoke, not this
            // member's: nothing is queued here.
            record.cloud_id = Some(cloud_id.to_owned());
        }
        if let CertificateSource::Pca(src) = &cert.source {
            record.ca_id = Some(src.ca_id.clone());
            record.mode = Some(super::pca::mode_str(src.mode).into());
        } else {
            record.ca_id = None;
            record.mode = None;
        }
        record.fingerprint_sha256 = Some(bundle.fingerprint_sha256().to_string());
        record.installed_at = Some(self.now().unix_timestamp());
        self.records.save(name, &record)?;
        report.reason = Some("the fleet published it".into());
        report.action = Action::Reexported {
            cloud_id: cloud_id.to_owned(),
        };
        report.cloud_id = Some(cloud_id.to_owned());
        report.next_renewal = self.next_renewal(cert, bundle.leaf());
        report.took_install(bundle, outcome, self.pem_paths(cert).cert);
        if report.install_changed {
            slot.changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(
                event = %crate::logging::Event::Installed,
                certificate = %name,
                cloud_id = %cloud_id,
                fingerprint = %got,
                "installed the fleet's certificate"
            );
        }
        Ok(report)
    }

    /// After a lock holder stopped between an issuance and its publication: the apply-mode
    /// certificate it issued, if PCA lists one (this CA, the configured common name, issued
    /// since `since` minus the clock slack, not CSR-generated, not one of `known`); the newest
    /// when several match. `None` for SCM certificates (an export issues nothing).
    pub async fn find_fleet_issuance(
        &self,
        cert: &ManagedCertificate,
        since: time::OffsetDateTime,
        known: &[&str],
    ) -> Result<Option<String>, RenewError> {
        use crate::cloud::pca::cert::CertificateStatus;
        let CertificateSource::Pca(src) = &cert.source else {
            return Ok(None);
        };
        let cn = src.common_name();
        let q = super::pca::newest_with_common_name(src, super::pca::RECONCILE_PAGE);
        let list = self
            .client
            .list_private_certificates(&q)
            .await
            .map_err(|e| {
                RenewError::cloud(
                    &cert.name,
                    "reconcile the fleet's interrupted issuance (GET /v1/private-certificates)",
                    Some(&src.ca_id),
                    e,
                )
            })?;
        let since = since - super::pca::RECONCILE_SLACK;
        Ok(list
            .certificates
            .iter()
            .filter(|c| {
                c.issuer_id.as_deref() == Some(src.ca_id.as_str())
                    && c.common_name() == Some(cn)
                    && c.status == CertificateStatus::Issued
                    && c.create_time.is_some_and(|t| t >= since)
                    && c.gen_mode.as_deref() != Some("CSR")
                    && !known.contains(&c.certificate_id.as_str())
            })
            .max_by_key(|c| c.create_time)
            .map(|c| c.certificate_id.clone()))
    }

    /// What is installed, as a report that did nothing: the cloud id the record holds and when
    /// the certificate is due (`installed` is `None` when nothing valid is installed).
    pub fn observe(&self, cert: &ManagedCertificate) -> Result<CheckReport, RenewError> {
        let name = cert.name.as_str();
        let source = match cert.source {
            CertificateSource::Pca(_) => "pca",
            CertificateSource::Scm(_) => "scm",
        };
        let mut report = CheckReport::new(name, source);
        let paths = self.checked_paths(cert);
        if let InstalledState::Present(c) = install::read_installed(&paths) {
            report.next_renewal = self.next_renewal(cert, &c.info);
            report.installed = Some(super::summary_of(&c, paths.cert.clone()));
        }
        report.cloud_id = self.records.load(name)?.cloud_id;
        Ok(report)
    }

    /// When `leaf` is due by this member's policy and jitter; `None` when it is due now.
    pub fn next_renewal(
        &self,
        cert: &ManagedCertificate,
        leaf: &pki::CertInfo,
    ) -> Option<time::OffsetDateTime> {
        self.renewal_decision(cert, leaf.not_before, leaf.not_after)
            .err()
    }

    /// `Ok(())` when a certificate with this lifetime is due now by this member's policy and
    /// jitter, else `Err(when)`.
    pub fn renewal_decision(
        &self,
        cert: &ManagedCertificate,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<(), time::OffsetDateTime> {
        match policy::decide(
            self.now(),
            &Lifetime::new(not_before, not_after),
            &cert.renew,
            self.jitter_unit(&cert.name),
        ) {
            Decision::Renew { .. } => Ok(()),
            Decision::Wait { until } => Err(until),
        }
    }

    /// This renewer's clock.
    pub fn clock_now(&self) -> time::OffsetDateTime {
        self.now()
    }
}
