//! Pushing a renewed certificate to cloud services through SCM: `push` (one region),
//! `batch-push` (≤ 10 regions a call) and `deploy` (≤ 20 ELB/WAF resources a call), chunked,
//! with per-region/per-resource results, bounded retries of the failed ones, and persisted
//! state so a deploy (billed per domain) is never repeated for a certificate already there.
//!
//! # The unit
//! A *unit* is one region of a push/batch-push target or one resource of a deploy target. Each
//! unit succeeds or fails on its own; the state file remembers, per unit, the fingerprint last
//! deployed there. A run sends calls only for units that do not have the current certificate,
//! and within a run retries only the failed units (full-jitter backoff, bounded attempts).
//!
//! # SCM copies of certificates held on this host
//! SCM has no update call. A certificate held on this host (PCA-issued) is imported under one
//! stable name ([`DeploySpec::scm_name`]); each renewal imports the new certificate under the
//! same name, deploys it, and once *every* unit has the new certificate deletes the previous
//! copy. Only copies this agent imported (recorded in the state) are ever deleted. Before
//! importing, the agent lists SCM certificates with that name and adopts one with the same
//! fingerprint, so a crash between import and state write does not leave a second copy.
//! A certificate that already lives in SCM is pushed/deployed by its id; nothing is imported
//! or deleted.
//!
//! # Use
//! ```text
//! let store = DeployStore::new(&state_dir);                 // <state_dir>/deploy/<name>.json
//! let m = CertMaterial::local(name, cert_pem, chain_pem, key); // or CertMaterial::scm(name, id, cert_pem)
//! let report = deploy_certificate(&client, &store, spec, &m, dry_run).await?;
//! for (service, action, target, result) in report.metric_rows() { /* counters */ }
//! ```
//! Calling it on every check (not only after a renewal) is cheap: with nothing to do it reads
//! the state file and sends nothing, and units that failed last time are retried.

pub mod config;

use std::time::Duration;

use crate::cloud::scm::{
    self, BatchPushCertificateRequest, DeployCertificateRequest, ImportCertificateRequest,
    ListCertificatesQuery, MAX_BATCH_PUSH_REGIONS, MAX_DEPLOY_RESOURCES, PushCertificateRequest,
    TargetService,
};
use crate::cloud::{Client, CloudError, Secret};
use crate::pki;

pub use crate::state::deploy::{DeployState, DeployStore, DeployedRecord, ScmCopy};
pub use config::{
    CloudTarget, DeployRetry, DeploySpec, RawDeploy, Resource, WafType, check, default_scm_name,
};

/// Why a deploy run stopped before trying its targets.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("certificate {name}: the certificate PEM does not parse: {source}")]
    Certificate {
        name: String,
        #[source]
        source: pki::PkiError,
    },
    #[error(transparent)]
    State(#[from] crate::state::deploy::DeployStateError),
    #[error("certificate {name}: looking for an earlier SCM copy named {scm_name:?}: {source}")]
    Lookup {
        name: String,
        scm_name: String,
        #[source]
        source: Box<CloudError>,
    },
    /// The [`DeployGate`] refused a call (fleet mode: this member no longer holds the lock).
    #[error("certificate {name}: deploy stopped: {detail}")]
    Refused { name: String, detail: String },
    #[error("certificate {name}: importing into SCM as {scm_name:?}: {source}")]
    Import {
        name: String,
        scm_name: String,
        #[source]
        source: Box<CloudError>,
    },
}

/// The certificate to deploy.
#[derive(Clone, Debug)]
pub struct CertMaterial {
    /// The managed certificate's name (state file, logs).
    pub name: String,
    /// The leaf certificate PEM (a chain after it is ignored, or used as the chain when
    /// `chain_pem` is empty).
    pub certificate_pem: String,
    /// The chain above the leaf, PEM (may be empty).
    pub chain_pem: String,
    pub origin: Origin,
}

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// Held on this host (PCA-issued): imported into SCM under the stable name first.
    Local { private_key: Secret },
    /// Already in SCM: pushed and deployed by this id.
    Scm { certificate_id: String },
}

impl CertMaterial {
    /// A certificate held on this host, with its key (sent to SCM only by the import call).
    pub fn local(
        name: impl Into<String>,
        certificate_pem: impl Into<String>,
        chain_pem: impl Into<String>,
        private_key: Secret,
    ) -> Self {
        CertMaterial {
            name: name.into(),
            certificate_pem: certificate_pem.into(),
            chain_pem: chain_pem.into(),
            origin: Origin::Local { private_key },
        }
    }

    /// A certificate that is SCM certificate `certificate_id`.
    pub fn scm(
        name: impl Into<String>,
        certificate_id: impl Into<String>,
        certificate_pem: impl Into<String>,
    ) -> Self {
        CertMaterial {
            name: name.into(),
            certificate_pem: certificate_pem.into(),
            chain_pem: String::new(),
            origin: Origin::Scm {
                certificate_id: certificate_id.into(),
            },
        }
    }
}

/// What a [`DeployGate`] answers.
pub type GateFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// Lets the caller hold units back and approve each billed call before it is made, and learn
/// its outcome right after ([`deploy_certificate_gated`]). Fleet mode fences each of these
/// through etcd; a refusal (`Err`) stops the run with [`DeployError::Refused`].
pub trait DeployGate: Send + Sync {
    /// A reason not to call this unit (by [`Unit::key`]) in this run; it is reported failed
    /// with that reason.
    fn hold(&self, unit_key: &str) -> Option<String>;
    /// Before the SCM import of a certificate held on this host.
    fn before_import(&self) -> GateFuture<'_>;
    /// Before a push, batch-push or deploy call covering these units.
    fn before_call<'a>(&'a self, unit_keys: &'a [String], scm_id: &'a str) -> GateFuture<'a>;
    /// After the call: each unit's outcome (`Err`: the message).
    fn after_call<'a>(
        &'a self,
        outcomes: &'a [(String, Result<(), String>)],
        scm_id: &'a str,
    ) -> GateFuture<'a>;
}

/// The three calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Push,
    BatchPush,
    Deploy,
}

impl Action {
    /// `push`, `batch-push`, `deploy`: the path suffix and the config's `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::BatchPush => "batch-push",
            Action::Deploy => "deploy",
        }
    }
}

/// One region (push, batch-push) or resource (deploy) of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub action: Action,
    pub service: TargetService,
    /// The region pushed to, or the project of a deployed resource.
    pub region: Option<String>,
    /// Deploy only.
    pub resource: Option<Resource>,
}

impl Unit {
    /// The key of this unit in the state file.
    pub fn key(&self) -> String {
        let region = self.region.as_deref().unwrap_or("-");
        match &self.resource {
            Some(r) => format!(
                "{}/{}/{region}/{}",
                self.action.as_str(),
                self.service.as_str(),
                r.id
            ),
            None => format!(
                "{}/{}/{region}",
                self.action.as_str(),
                self.service.as_str()
            ),
        }
    }

    /// The region (push, batch-push) or the resource id (deploy): the metric label.
    pub fn target(&self) -> &str {
        match &self.resource {
            Some(r) => &r.id,
            None => self.region.as_deref().unwrap_or_default(),
        }
    }

    /// For messages: `ELB batch-push region cn-north-4`, `WAF deploy resource w1`.
    pub fn label(&self) -> String {
        match &self.resource {
            Some(r) => format!(
                "{} {} resource {}",
                self.service.as_str(),
                self.action.as_str(),
                r.id
            ),
            None => format!(
                "{} {} region {}",
                self.service.as_str(),
                self.action.as_str(),
                self.target()
            ),
        }
    }
}

/// The units of a target, in configuration order.
pub fn units_of(target: &CloudTarget) -> Vec<Unit> {
    match target {
        CloudTarget::Push { service, region } => vec![Unit {
            action: Action::Push,
            service: *service,
            region: Some(region.clone()),
            resource: None,
        }],
        CloudTarget::BatchPush { service, regions } => regions
            .iter()
            .map(|r| Unit {
                action: Action::BatchPush,
                service: *service,
                region: Some(r.clone()),
                resource: None,
            })
            .collect(),
        CloudTarget::Deploy {
            service,
            project_name,
            resources,
        } => resources
            .iter()
            .map(|r| Unit {
                action: Action::Deploy,
                service: *service,
                region: project_name.clone(),
                resource: Some(r.clone()),
            })
            .collect(),
    }
}

/// What happened to one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitResult {
    /// Pushed/deployed in this run.
    Deployed,
    /// Already had this certificate: no call made.
    Unchanged,
    /// Still failing after the run's attempts: the last message (`results[].message`,
    /// `failure_list[].failure_info`, or the whole call's error).
    Failed(String),
    /// Dry run: would be pushed/deployed.
    Planned,
}

impl UnitResult {
    /// The metric label: `deployed`, `unchanged`, `failed`, `planned`.
    pub fn label(&self) -> &'static str {
        match self {
            UnitResult::Deployed => "deployed",
            UnitResult::Unchanged => "unchanged",
            UnitResult::Failed(_) => "failed",
            UnitResult::Planned => "planned",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitOutcome {
    pub unit: Unit,
    pub result: UnitResult,
    /// Calls tried for this unit in this run (0 when unchanged or planned).
    pub attempts: u32,
}

/// One API call made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub action: Action,
    pub service: TargetService,
    pub certificate_id: String,
    /// Regions (push, batch-push) or resource ids (deploy) of the call.
    pub targets: Vec<String>,
    /// The whole call's error; per-unit failures of a call that answered are in the outcomes.
    pub error: Option<String>,
}

/// How the SCM copy of a certificate held on this host was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyAction {
    /// Recorded in the state from an earlier run.
    Reused,
    /// Found in SCM by name and fingerprint (imported by a run that did not record it).
    Adopted,
    /// Imported in this run.
    Imported,
}

/// An SCM copy that could not be deleted (kept in the state, retried next run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanupFailure {
    pub certificate_id: String,
    pub message: String,
}

/// Everything one run did, per unit, for logs, `--dry-run` and metrics (by service, region or
/// resource, and result).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployReport {
    pub certificate: String,
    /// SHA-256 of the leaf, upper-case hex.
    pub fingerprint: String,
    pub dry_run: bool,
    /// The SCM certificate pushed/deployed (none when nothing had to be).
    pub scm_certificate_id: Option<String>,
    pub copy: Option<CopyAction>,
    /// One per unit, in configuration order.
    pub outcomes: Vec<UnitOutcome>,
    /// Push, batch-push and deploy calls made, in order.
    pub calls: Vec<CallRecord>,
    /// Superseded SCM copies deleted in this run.
    pub deleted: Vec<String>,
    pub cleanup_failures: Vec<CleanupFailure>,
    /// Dry run: the calls that would be made, one line each.
    pub planned: Vec<String>,
}

impl DeployReport {
    /// No unit failed (and, outside a dry run, every unit has the certificate).
    pub fn is_complete(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| !matches!(o.result, UnitResult::Failed(_)))
    }

    pub fn failed(&self) -> impl Iterator<Item = &UnitOutcome> {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.result, UnitResult::Failed(_)))
    }

    /// How many units ended with `label` ([`UnitResult::label`]).
    pub fn count(&self, label: &str) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.result.label() == label)
            .count()
    }

    /// `(service, action, region or resource, result)` per unit: the metric labels.
    pub fn metric_rows(&self) -> Vec<(&'static str, &'static str, String, &'static str)> {
        self.outcomes
            .iter()
            .map(|o| {
                (
                    o.unit.service.as_str(),
                    o.unit.action.as_str(),
                    o.unit.target().to_owned(),
                    o.result.label(),
                )
            })
            .collect()
    }

    /// `2 deployed, 1 failed, 3 unchanged`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = ["deployed", "failed", "unchanged", "planned"]
            .into_iter()
            .map(|l| (l, self.count(l)))
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| format!("{n} {l}"))
            .collect();
        if parts.is_empty() {
            "no targets".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// The leaf and its fingerprints.
struct Leaf {
    pem: String,
    chain: String,
    /// SHA-256, upper-case hex.
    sha256: String,
    /// SHA-1, lower-case hex (as SCM shows it).
    sha1: String,
}

impl Leaf {
    fn of(m: &CertMaterial) -> Result<Leaf, DeployError> {
        let certs = pki::parse_pem_chain(&m.certificate_pem).map_err(|source| {
            DeployError::Certificate {
                name: m.name.clone(),
                source,
            }
        })?;
        let Some((leaf, rest)) = certs.split_first() else {
            return Err(DeployError::Certificate {
                name: m.name.clone(),
                source: pki::PkiError::CertificateParse("no certificate in the PEM".into()),
            });
        };
        let chain = if m.chain_pem.trim().is_empty() {
            rest.iter().map(pki::CertInfo::to_pem).collect()
        } else {
            m.chain_pem.clone()
        };
        Ok(Leaf {
            pem: leaf.to_pem(),
            chain,
            sha256: leaf.sha256_fingerprint_hex.to_ascii_uppercase(),
            sha1: leaf.sha1_fingerprint_hex.to_ascii_lowercase(),
        })
    }
}

/// Whether `unit` already has this certificate.
fn is_done(st: &DeployState, unit: &Unit, fingerprint: &str, scm_id: Option<&str>) -> bool {
    st.deployed
        .get(&unit.key())
        .is_some_and(|r| r.fingerprint == fingerprint && scm_id.is_none_or(|id| r.scm_id == id))
}

fn all_units(spec: &DeploySpec) -> Vec<(usize, Unit)> {
    spec.targets
        .iter()
        .enumerate()
        .flat_map(|(i, t)| units_of(t).into_iter().map(move |u| (i, u)))
        .collect()
}

/// The SCM id fixed by the material (SCM-sourced certificates).
fn fixed_id(m: &CertMaterial) -> Option<&str> {
    match &m.origin {
        Origin::Scm { certificate_id } => Some(certificate_id),
        Origin::Local { .. } => None,
    }
}

/// The lines `--dry-run` prints: the import (if needed), every push/batch-push/deploy call
/// that would be made (chunked as it would be sent), the copies that would be deleted, and the
/// units skipped as unchanged. Reads only the state file; makes no API call.
pub fn describe(
    store: &DeployStore,
    spec: &DeploySpec,
    material: &CertMaterial,
) -> Result<Vec<String>, DeployError> {
    let leaf = Leaf::of(material)?;
    let st = store.load(&material.name)?;
    Ok(plan_lines(spec, material, &leaf, &st))
}

fn plan_lines(spec: &DeploySpec, m: &CertMaterial, leaf: &Leaf, st: &DeployState) -> Vec<String> {
    let units = all_units(spec);
    let fixed = fixed_id(m);
    let pending: Vec<&(usize, Unit)> = units
        .iter()
        .filter(|(_, u)| !is_done(st, u, &leaf.sha256, fixed))
        .collect();
    let mut lines = Vec::new();
    let short = &leaf.sha256[..leaf.sha256.len().min(16)];
    let current = st
        .scm_copy
        .as_ref()
        .filter(|c| c.fingerprint == leaf.sha256);
    let id = match (fixed, current) {
        (Some(id), _) => id.to_owned(),
        (None, Some(c)) => c.id.clone(),
        (None, None) => "{imported id}".to_owned(),
    };
    if pending.is_empty() {
        lines.push(format!(
            "nothing to deploy: all {} regions/resources already have certificate sha256 {short}",
            units.len()
        ));
    } else if fixed.is_none() {
        match current {
            Some(c) => lines.push(format!(
                "SCM copy {} ({:?}) already holds certificate sha256 {short}: no import",
                c.id, c.name
            )),
            None => lines.push(format!(
                "POST /v3/scm/certificates/import name={:?} (certificate sha256 {short}; a copy \
                 with this name and SHA-1 {} already in SCM is adopted instead)",
                spec.scm_name, leaf.sha1
            )),
        }
    }
    let pending_idx: Vec<usize> = units
        .iter()
        .enumerate()
        .filter(|(_, (_, u))| !is_done(st, u, &leaf.sha256, fixed))
        .map(|(i, _)| i)
        .collect();
    let calls = plan_calls(spec, &units, &pending_idx);
    for (n, call) in calls.iter().enumerate() {
        let of = calls
            .iter()
            .filter(|c| c.target_index == call.target_index)
            .count();
        let nth = calls[..n]
            .iter()
            .filter(|c| c.target_index == call.target_index)
            .count()
            + 1;
        let svc = call.service.as_str();
        let targets: Vec<String> = call
            .units
            .iter()
            .map(|&i| {
                let u = &units[i].1;
                match &u.resource {
                    Some(Resource {
                        id,
                        waf_type: Some(t),
                        enterprise_project_id: Some(e),
                    }) => format!("{id}({} eps={e})", t.as_str()),
                    _ => u.target().to_owned(),
                }
            })
            .collect();
        let path = format!("POST /v3/scm/certificates/{id}/{}", call.action.as_str());
        lines.push(match call.action {
            Action::Push => format!("{path} {svc} region={}", targets.join(",")),
            Action::BatchPush => format!(
                "{path} {svc} regions=[{}] (call {nth} of {of})",
                targets.join(",")
            ),
            Action::Deploy => format!(
                "{path} {svc} project={} resources=[{}] (call {nth} of {of})",
                call.project.as_deref().unwrap_or("-"),
                targets.join(",")
            ),
        });
    }
    if fixed.is_none() && !pending.is_empty() {
        let mut old: Vec<&ScmCopy> = st.superseded.iter().collect();
        if let Some(c) = st
            .scm_copy
            .as_ref()
            .filter(|c| c.fingerprint != leaf.sha256)
        {
            old.push(c);
        }
        for c in old {
            lines.push(format!(
                "DELETE /v3/scm/certificates/{} (superseded copy {:?}, once every target has the new certificate)",
                c.id, c.name
            ));
        }
    } else if fixed.is_none() {
        for c in &st.superseded {
            lines.push(format!(
                "DELETE /v3/scm/certificates/{} (superseded copy {:?})",
                c.id, c.name
            ));
        }
    }
    let unchanged: Vec<String> = units
        .iter()
        .filter(|(_, u)| is_done(st, u, &leaf.sha256, fixed))
        .map(|(_, u)| u.label())
        .collect();
    if !unchanged.is_empty() && !pending.is_empty() {
        lines.push(format!("unchanged, no call: {}", unchanged.join("; ")));
    }
    lines
}

/// Deploy `material` to every target of `spec` that does not already have it.
///
/// Returns the per-unit report; failed units are in it (not an error) and are retried by the
/// next run. `Err` only when nothing could be tried: the certificate does not parse, the state
/// cannot be read or written, or the SCM copy cannot be imported. With `dry_run`, nothing is
/// sent and nothing written: the report lists the planned calls ([`describe`]).
pub async fn deploy_certificate(
    client: &Client,
    store: &DeployStore,
    spec: &DeploySpec,
    material: &CertMaterial,
    dry_run: bool,
) -> Result<DeployReport, DeployError> {
    deploy_certificate_gated(client, store, spec, material, dry_run, None).await
}

/// [`deploy_certificate`], with every billed call (and the import) approved by `gate` first
/// and reported to it after, and the units it holds back left alone.
pub async fn deploy_certificate_gated(
    client: &Client,
    store: &DeployStore,
    spec: &DeploySpec,
    material: &CertMaterial,
    dry_run: bool,
    gate: Option<&dyn DeployGate>,
) -> Result<DeployReport, DeployError> {
    let refused = |detail: String| DeployError::Refused {
        name: material.name.clone(),
        detail,
    };
    let leaf = Leaf::of(material)?;
    let mut st = store.load(&material.name)?;
    let fixed = fixed_id(material);
    let units = all_units(spec);
    let mut results: Vec<UnitResult> = Vec::with_capacity(units.len());
    let mut attempts: Vec<u32> = vec![0; units.len()];
    let mut todo: Vec<usize> = Vec::new();
    for (i, (_, u)) in units.iter().enumerate() {
        if is_done(&st, u, &leaf.sha256, fixed) {
            results.push(UnitResult::Unchanged);
        } else if let Some(why) = gate.and_then(|g| g.hold(&u.key())) {
            results.push(UnitResult::Failed(why));
        } else {
            results.push(if dry_run {
                UnitResult::Planned
            } else {
                UnitResult::Failed("not tried".into())
            });
            todo.push(i);
        }
    }
    let mut report = DeployReport {
        certificate: material.name.clone(),
        fingerprint: leaf.sha256.clone(),
        dry_run,
        scm_certificate_id: None,
        copy: None,
        outcomes: Vec::new(),
        calls: Vec::new(),
        deleted: Vec::new(),
        cleanup_failures: Vec::new(),
        planned: Vec::new(),
    };
    let finish = |mut report: DeployReport, results: Vec<UnitResult>, attempts: Vec<u32>| {
        report.outcomes = units
            .iter()
            .zip(results)
            .zip(attempts)
            .map(|(((_, unit), result), attempts)| UnitOutcome {
                unit: unit.clone(),
                result,
                attempts,
            })
            .collect();
        report
    };
    if dry_run {
        report.planned = plan_lines(spec, material, &leaf, &st);
        return Ok(finish(report, results, attempts));
    }
    if todo.is_empty() {
        // Copies left by an earlier run whose delete failed.
        if fixed.is_none() && !st.superseded.is_empty() {
            cleanup(client, store, &material.name, &mut st, &mut report).await?;
        }
        return Ok(finish(report, results, attempts));
    }

    let scm_id = match &material.origin {
        Origin::Scm { certificate_id } => certificate_id.clone(),
        Origin::Local { private_key } => {
            ensure_copy(
                client,
                store,
                spec,
                material,
                &leaf,
                private_key,
                &mut st,
                &mut report,
                gate,
            )
            .await?
        }
    };
    report.scm_certificate_id = Some(scm_id.clone());

    for attempt in 1..=spec.retry.attempts.max(1) {
        if attempt > 1 {
            let delay = retry_delay(attempt - 1, &spec.retry);
            tracing::info!(certificate = %material.name, failed = todo.len(), ?delay, attempt, "retrying failed deploy targets");
            tokio::time::sleep(delay).await;
        }
        let mut failed = Vec::new();
        let mut copy_lost = false;
        for call in plan_calls(spec, &units, &todo) {
            let keys: Vec<String> = call.units.iter().map(|&i| units[i].1.key()).collect();
            if let Some(g) = gate {
                g.before_call(&keys, &scm_id).await.map_err(refused)?;
            }
            let sent = send(client, &scm_id, &call, &units).await;
            if let Some(g) = gate {
                let outcomes: Vec<(String, Result<(), String>)> = sent
                    .outcomes
                    .iter()
                    .map(|(i, r)| (units[*i].1.key(), r.clone()))
                    .collect();
                g.after_call(&outcomes, &scm_id).await.map_err(refused)?;
            }
            report.calls.push(sent.record);
            let mut changed = false;
            for (i, outcome) in sent.outcomes {
                attempts[i] = attempt;
                match outcome {
                    Ok(()) => {
                        st.deployed.insert(
                            units[i].1.key(),
                            DeployedRecord {
                                fingerprint: leaf.sha256.clone(),
                                scm_id: scm_id.clone(),
                            },
                        );
                        changed = true;
                        results[i] = UnitResult::Deployed;
                    }
                    Err(msg) => {
                        tracing::warn!(certificate = %material.name, target = %units[i].1.label(), attempt, error = %msg, "deploy target failed");
                        results[i] = UnitResult::Failed(msg);
                        failed.push(i);
                    }
                }
            }
            if sent.copy_lost && fixed.is_none() && st.scm_copy.is_some() {
                // The copy this agent imported is gone from SCM: import again next run.
                st.scm_copy = None;
                changed = true;
            }
            copy_lost |= sent.copy_lost;
            // Saved after every call: a crash or shutdown never repeats a billed deploy.
            if changed {
                store.save(&material.name, &st)?;
            }
        }
        failed.sort_unstable();
        todo = failed;
        if todo.is_empty() || copy_lost {
            break;
        }
    }

    // Forget units no longer configured, so the file does not grow with old targets.
    let keys: Vec<String> = units.iter().map(|(_, u)| u.key()).collect();
    let before = st.deployed.len();
    st.deployed.retain(|k, _| keys.contains(k));
    if st.deployed.len() != before {
        store.save(&material.name, &st)?;
    }

    let everywhere = units
        .iter()
        .all(|(_, u)| is_done(&st, u, &leaf.sha256, fixed));
    if fixed.is_none() && everywhere && !st.superseded.is_empty() {
        cleanup(client, store, &material.name, &mut st, &mut report).await?;
    }
    let report = finish(report, results, attempts);
    if report.is_complete() {
        tracing::info!(
            event = %crate::logging::Event::Deployed,
            certificate = %material.name,
            cloud_id = %scm_id,
            fingerprint = %report.fingerprint,
            summary = %report.summary(),
            "cloud deploy finished"
        );
    } else {
        tracing::warn!(certificate = %material.name, summary = %report.summary(), "cloud deploy incomplete");
    }
    Ok(report)
}

fn retry_delay(failures: u32, r: &DeployRetry) -> Duration {
    crate::policy::retry_delay(failures, r.initial, r.max, &mut rand::rng())
}

/// Find or import the SCM copy of the current certificate; record it (and the copy it
/// supersedes) in the state before anything is deployed.
#[allow(clippy::too_many_arguments)]
async fn ensure_copy(
    client: &Client,
    store: &DeployStore,
    spec: &DeploySpec,
    m: &CertMaterial,
    leaf: &Leaf,
    private_key: &Secret,
    st: &mut DeployState,
    report: &mut DeployReport,
    gate: Option<&dyn DeployGate>,
) -> Result<String, DeployError> {
    if let Some(c) = st
        .scm_copy
        .as_ref()
        .filter(|c| c.fingerprint == leaf.sha256)
    {
        report.copy = Some(CopyAction::Reused);
        return Ok(c.id.clone());
    }
    let found = find_copy(client, &spec.scm_name, &leaf.sha1)
        .await
        .map_err(|source| DeployError::Lookup {
            name: m.name.clone(),
            scm_name: spec.scm_name.clone(),
            source: Box::new(source),
        })?;
    let id = match found {
        Some(id) => {
            tracing::info!(certificate = %m.name, scm_id = %id, "adopting the SCM copy an earlier run imported");
            report.copy = Some(CopyAction::Adopted);
            id
        }
        None => {
            if let Some(g) = gate {
                g.before_import()
                    .await
                    .map_err(|detail| DeployError::Refused {
                        name: m.name.clone(),
                        detail,
                    })?;
            }
            let mut body = ImportCertificateRequest::new(
                spec.scm_name.clone(),
                leaf.pem.clone(),
                private_key.expose(),
            );
            if !leaf.chain.trim().is_empty() {
                body = body.chain(leaf.chain.clone());
            }
            let id = client
                .scm_import_certificate(&body)
                .await
                .map_err(|source| DeployError::Import {
                    name: m.name.clone(),
                    scm_name: spec.scm_name.clone(),
                    source: Box::new(source),
                })?
                .certificate_id;
            tracing::info!(certificate = %m.name, scm_id = %id, scm_name = %spec.scm_name, "imported into SCM");
            report.copy = Some(CopyAction::Imported);
            id
        }
    };
    if let Some(old) = st.scm_copy.take()
        && old.id != id
        && !st.superseded.iter().any(|s| s.id == old.id)
    {
        st.superseded.push(old);
    }
    st.superseded.retain(|s| s.id != id);
    st.scm_copy = Some(ScmCopy {
        id: id.clone(),
        name: spec.scm_name.clone(),
        fingerprint: leaf.sha256.clone(),
        sha1: leaf.sha1.clone(),
    });
    store.save(&m.name, st)?;
    Ok(id)
}

/// An SCM certificate named exactly `name` with SHA-1 `sha1`.
async fn find_copy(client: &Client, name: &str, sha1: &str) -> Result<Option<String>, CloudError> {
    let q = ListCertificatesQuery {
        content: Some(name.to_owned()),
        ..ListCertificatesQuery::default()
    };
    let listed = client.scm_list_all_certificates(&q).await?;
    for c in listed.iter().filter(|c| c.name == name) {
        match client.scm_show_certificate(&c.id).await {
            Ok(d) => {
                if d.fingerprint
                    .as_deref()
                    .is_some_and(|f| f.eq_ignore_ascii_case(sha1))
                {
                    return Ok(Some(d.id));
                }
            }
            // Deleted between the list and the show.
            Err(e) if scm::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Delete the superseded copies recorded in the state; a failure keeps the copy for next run.
async fn cleanup(
    client: &Client,
    store: &DeployStore,
    name: &str,
    st: &mut DeployState,
    report: &mut DeployReport,
) -> Result<(), DeployError> {
    let current = st.scm_copy.as_ref().map(|c| c.id.clone());
    let mut keep = Vec::new();
    for old in std::mem::take(&mut st.superseded) {
        if Some(&old.id) == current.as_ref() {
            continue;
        }
        match client.scm_delete_certificate(&old.id).await {
            Ok(()) => {
                tracing::info!(certificate = %name, scm_id = %old.id, "deleted the superseded SCM copy");
                report.deleted.push(old.id);
            }
            Err(e) if scm::is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(certificate = %name, scm_id = %old.id, error = %e, "could not delete the superseded SCM copy");
                report.cleanup_failures.push(CleanupFailure {
                    certificate_id: old.id.clone(),
                    message: e.to_string(),
                });
                keep.push(old);
            }
        }
    }
    st.superseded = keep;
    Ok(store.save(name, st)?)
}

/// One push, batch-push or deploy call to be made.
#[derive(Debug)]
struct PlannedCall {
    target_index: usize,
    action: Action,
    service: TargetService,
    /// Deploy only.
    project: Option<String>,
    /// Indexes into the unit list: one region (push), ≤ 10 regions (batch-push), ≤ 20
    /// resources (deploy).
    units: Vec<usize>,
}

/// The calls for the units in `todo`, target by target, in configuration order; used both to
/// send and to print a dry run, so the two never differ.
fn plan_calls(spec: &DeploySpec, units: &[(usize, Unit)], todo: &[usize]) -> Vec<PlannedCall> {
    let mut calls = Vec::new();
    for (ti, target) in spec.targets.iter().enumerate() {
        let mut mine: Vec<usize> = todo.iter().copied().filter(|&i| units[i].0 == ti).collect();
        mine.sort_unstable();
        let (action, size, project) = match target {
            CloudTarget::Push { .. } => (Action::Push, 1, None),
            CloudTarget::BatchPush { .. } => (Action::BatchPush, MAX_BATCH_PUSH_REGIONS, None),
            CloudTarget::Deploy { project_name, .. } => {
                (Action::Deploy, MAX_DEPLOY_RESOURCES, project_name.clone())
            }
        };
        for chunk in mine.chunks(size) {
            calls.push(PlannedCall {
                target_index: ti,
                action,
                service: target.service(),
                project: project.clone(),
                units: chunk.to_vec(),
            });
        }
    }
    calls
}

struct Sent {
    record: CallRecord,
    /// Unit index → success or the failure message.
    outcomes: Vec<(usize, Result<(), String>)>,
    /// The call said the SCM certificate does not exist.
    copy_lost: bool,
}

async fn send(client: &Client, scm_id: &str, call: &PlannedCall, units: &[(usize, Unit)]) -> Sent {
    let service = call.service;
    let targets: Vec<String> = call
        .units
        .iter()
        .map(|&i| units[i].1.target().to_owned())
        .collect();
    // Per unit: Ok, or the message from results[] / failure_list[]; Err: the whole call failed.
    let answer: Result<Vec<Result<(), String>>, CloudError> = match call.action {
        Action::Push => {
            let body = PushCertificateRequest {
                target_project: targets.first().cloned().unwrap_or_default(),
                target_service: service,
            };
            client
                .scm_push_certificate(scm_id, &body)
                .await
                .map(|()| vec![Ok(())])
        }
        Action::BatchPush => {
            let body = BatchPushCertificateRequest {
                target_projects: targets.clone(),
                target_service: service,
            };
            client
                .scm_batch_push_certificate(scm_id, &body)
                .await
                .map(|resp| {
                    targets
                        .iter()
                        .map(|region| {
                            match resp.results.iter().find(|x| &x.project_name == region) {
                                Some(x) if x.succeeded() => Ok(()),
                                Some(x) => Err(x.message.clone()),
                                None => Err("no result for this region in the response".into()),
                            }
                        })
                        .collect()
                })
        }
        Action::Deploy => {
            let body = DeployCertificateRequest {
                project_name: call.project.clone(),
                service_name: service,
                resources: call
                    .units
                    .iter()
                    .filter_map(|&i| units[i].1.resource.as_ref())
                    .map(Resource::to_api)
                    .collect(),
            };
            client
                .scm_deploy_certificate(scm_id, &body)
                .await
                .map(|resp| {
                    targets
                        .iter()
                        .map(
                            |id| match resp.failure_list.iter().find(|f| &f.resource == id) {
                                Some(f) => Err(f.failure_info.clone()),
                                None => Ok(()),
                            },
                        )
                        .collect()
                })
        }
    };
    let (per_unit, error, copy_lost) = match answer {
        Ok(v) => (v, None, false),
        Err(e) => {
            let msg = e.to_string();
            (
                vec![Err(msg.clone()); call.units.len()],
                Some(msg),
                scm::is_not_found(&e),
            )
        }
    };
    Sent {
        record: CallRecord {
            action: call.action,
            service,
            certificate_id: scm_id.to_owned(),
            targets,
            error,
        },
        outcomes: call.units.iter().copied().zip(per_unit).collect(),
        copy_lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_keys_are_distinct_per_action_service_region_resource() {
        let t = CloudTarget::Deploy {
            service: TargetService::Waf,
            project_name: Some("cn-north-4".into()),
            resources: vec![
                Resource::waf("w1", WafType::Cloud, "0"),
                Resource::waf("w2", WafType::Premium, "0"),
            ],
        };
        let keys: Vec<String> = units_of(&t).iter().map(Unit::key).collect();
        assert_eq!(
            keys,
            vec!["deploy/WAF/cn-north-4/w1", "deploy/WAF/cn-north-4/w2"]
        );
        let p = units_of(&CloudTarget::Push {
            service: TargetService::Elb,
            region: "cn-north-4".into(),
        });
        assert_eq!(p[0].key(), "push/ELB/cn-north-4");
        assert_eq!(p[0].target(), "cn-north-4");
        assert_eq!(p[0].label(), "ELB push region cn-north-4");
    }
}
