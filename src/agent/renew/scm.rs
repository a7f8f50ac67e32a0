//! SCM: install the configured certificate (by id), or the newest valid one with the configured
//! name or domain; re-export when a newer one appears; warn loudly when the chosen one is due and
//! nothing newer exists (SCM certificates are renewed by whoever imports them, not by the agent).
//!
//! # One listing pass for many certificates
//! [`Renewer::scm_candidates`] lists SCM certificates once (pages of 50, `expired_days_since` =
//! [`SCM_EXPIRED_DAYS_SINCE`], so long-expired certificates do not eat into the 150 records that
//! offset paging can reach) and keeps the result for the next [`Renewer::check`] of each of the
//! given certificates: each check uses it once, and only within [`SNAPSHOT_TTL`] of the listing,
//! then lists for itself again. When the account holds more matching certificates than paging
//! can reach, the pass falls back to one narrowed listing (`content` = the name or domain) per
//! configured selector. Certificates configured by id are read individually when the pass does
//! not hold them (expired longer ago than the window).
//!
//! # Change detection between passes
//! Listing every certificate on every pass costs one request per configured name once the
//! account outgrows offset paging. Instead, the listing is kept ([`ScmIndex`]) and each later
//! pass reads only the first page of the list sorted by `certUpdateTime`, newest first (the
//! API's default order): a certificate imported or updated since the last pass sorts before
//! every one that was not. Walking that page from its end while its certificates are the ones
//! the previous page showed, in the same order, leaves in front exactly what changed; those are
//! merged into the index. A full listing runs again at startup, after `agent.full_check_every`
//! (default a day), when the whole page changed (more changes than a page shows), and after a
//! check found a listed certificate gone. At steady state a pass over any number of SCM
//! certificates makes one request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use time::OffsetDateTime;

use super::{Action, CheckOptions, CheckReport, PlannedStep, RenewError, Renewer, describe_disk};
use crate::cloud::CloudError;
use crate::cloud::scm::{CertificateSummary, ListCertificatesQuery, SortDir, SortKey};
use crate::config::{CertificateSource, ManagedCertificate, ScmSelector};
use crate::install::{self, Candidate, InstalledState};
use crate::policy::{self, Decision, Lifetime};
use crate::state::records::CertRecord;

/// The list window: certificates still valid or expired at most this many days ago.
pub const SCM_EXPIRED_DAYS_SINCE: u32 = 30;
/// How long a listing pass may stand in for a check's own listing.
pub const SNAPSHOT_TTL: time::Duration = time::Duration::minutes(10);

/// The result of one listing pass ([`Renewer::scm_candidates`]).
#[derive(Clone, Debug)]
pub struct ScmCandidates {
    /// When the pass ran (the renewer's clock).
    pub taken_at: OffsetDateTime,
    /// Every certificate listed, without repeats.
    pub certificates: Vec<CertificateSummary>,
    /// Positions in `certificates` by id, by name, and by domain or SAN (lower case), so a
    /// check finds its candidates without scanning the whole listing.
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, Vec<usize>>,
    by_domain: HashMap<String, Vec<usize>>,
}

impl ScmCandidates {
    pub fn new(taken_at: OffsetDateTime, certificates: Vec<CertificateSummary>) -> Self {
        let mut by_id = HashMap::new();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_domain: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, c) in certificates.iter().enumerate() {
            by_id.insert(c.id.clone(), i);
            by_name.entry(c.name.clone()).or_default().push(i);
            let mut domains: Vec<String> = c.sans_list();
            domains.extend(c.domain.clone());
            let domains: HashSet<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
            for d in domains {
                by_domain.entry(d).or_default().push(i);
            }
        }
        ScmCandidates {
            taken_at,
            certificates,
            by_id,
            by_name,
            by_domain,
        }
    }

    /// The certificates `sel` matches (any validity), in listing order.
    pub fn matching(&self, sel: &ScmSelector) -> Vec<&CertificateSummary> {
        let hits: Vec<usize> = match sel {
            ScmSelector::Id(id) => self.by_id.get(id).copied().into_iter().collect(),
            ScmSelector::Name(n) => self.by_name.get(n).cloned().unwrap_or_default(),
            ScmSelector::Domain(d) => self
                .by_domain
                .get(&d.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default(),
        };
        hits.into_iter()
            .map(|i| &self.certificates[i])
            .filter(|c| matches(sel, c))
            .collect()
    }
}

/// What the listings have shown, kept between passes (see the module doc).
pub(super) struct ScmIndex {
    data: Arc<ScmCandidates>,
    /// The ids of the first page sorted by `certUpdateTime` DESC, as the last pass read it.
    anchor: Vec<String>,
    /// When the last full listing ran (the renewer's clock).
    full_at: OffsetDateTime,
    /// The narrowed keywords the index covers; `None`: a complete listing of the window.
    covered: Option<HashSet<String>>,
}

/// The page size of the change detection (the API's maximum).
const ANCHOR_PAGE: u32 = 50;

/// The page of the change detection: the same window as the full listing, newest update first.
fn anchor_query() -> ListCertificatesQuery {
    ListCertificatesQuery {
        limit: Some(ANCHOR_PAGE),
        sort_key: Some(SortKey::CertUpdateTime),
        sort_dir: Some(SortDir::Desc),
        expired_days_since: Some(SCM_EXPIRED_DAYS_SINCE),
        ..ListCertificatesQuery::default()
    }
}

/// The certificates of `page` (newest update first) that changed since `previous` (the ids of
/// the previous pass's page): everything in front of the longest tail that the previous page
/// showed in the same order. `None` when a whole full page changed: more may have changed than
/// one page shows.
fn changed_since<'a>(
    page: &'a [CertificateSummary],
    previous: &[String],
) -> Option<&'a [CertificateSummary]> {
    let position: HashMap<&str, usize> = previous
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut start = page.len();
    let mut next_position = usize::MAX;
    while start > 0 {
        match position.get(page[start - 1].id.as_str()) {
            Some(&p) if p < next_position => {
                next_position = p;
                start -= 1;
            }
            _ => break,
        }
    }
    if start == page.len() && page.len() >= ANCHOR_PAGE as usize {
        return None;
    }
    Some(&page[..start])
}

/// A pass kept for the checks that follow it.
pub(super) struct Snapshot {
    data: Arc<ScmCandidates>,
    /// When the pass ran: the listing may be older (kept in the index), the pass is not.
    taken_at: OffsetDateTime,
    /// Names that have not used it yet.
    unused: HashSet<String>,
}

fn matches(sel: &ScmSelector, c: &CertificateSummary) -> bool {
    match sel {
        ScmSelector::Id(id) => c.id == *id,
        ScmSelector::Name(n) => c.name == *n,
        ScmSelector::Domain(d) => {
            c.domain
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(d))
                || c.sans_list().iter().any(|x| x.eq_ignore_ascii_case(d))
        }
    }
}

fn describe(sel: &ScmSelector) -> String {
    match sel {
        ScmSelector::Id(id) => format!("with id {id}"),
        ScmSelector::Name(n) => format!("named {n}"),
        ScmSelector::Domain(d) => format!("for domain {d}"),
    }
}

fn is_valid(c: &CertificateSummary, now: OffsetDateTime) -> bool {
    !c.is_expired() && c.expire_time.is_none_or(|t| t > now)
}

fn list_query(content: Option<String>) -> ListCertificatesQuery {
    ListCertificatesQuery {
        limit: Some(50),
        sort_key: Some(SortKey::CertExpiredTime),
        sort_dir: Some(SortDir::Desc),
        expired_days_since: Some(SCM_EXPIRED_DAYS_SINCE),
        content,
        ..ListCertificatesQuery::default()
    }
}

pub(super) fn required_names(sel: &ScmSelector) -> Vec<String> {
    match sel {
        ScmSelector::Domain(d) => vec![d.clone()],
        _ => Vec::new(),
    }
}

enum Need {
    Nothing,
    Export(String),
    Reinstall(String),
}

impl Renewer {
    /// One listing pass for many SCM certificates (see the module doc); the following
    /// [`check`](Self::check) of each of them uses it instead of listing again. Certificates
    /// with another source are ignored. The listing is the index kept from earlier passes,
    /// brought up to date with one page of recent changes, unless a full listing is due (none
    /// yet, or the last is older than `full_every`). A full listing of an account larger than
    /// offset paging reaches runs one narrowed listing per configured name or domain, up to
    /// `concurrency` at a time.
    pub async fn scm_candidates(
        &self,
        certs: &[&ManagedCertificate],
        concurrency: usize,
        full_every: std::time::Duration,
    ) -> Result<Arc<ScmCandidates>, RenewError> {
        let selected: Vec<(&str, &ScmSelector)> = certs
            .iter()
            .filter_map(|c| match &c.source {
                CertificateSource::Scm(s) => Some((c.name.as_str(), s)),
                CertificateSource::Pca(_) => None,
            })
            .collect();
        let mut keywords: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for (_, sel) in &selected {
            let kw = match sel {
                ScmSelector::Name(n) => n,
                ScmSelector::Domain(d) => d,
                ScmSelector::Id(_) => continue,
            };
            if seen.insert(kw.clone()) {
                keywords.push(kw.clone());
            }
        }
        let now = self.now();
        // Taken out while the pass runs: a failed pass leaves no index, and the next one lists
        // in full.
        let kept = self
            .scm_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|index| {
                let age = now - index.full_at;
                !age.is_negative() && age < full_every
            });
        let index = match kept {
            Some(index) => match self.scm_update_index(index, &keywords, concurrency).await? {
                Some(index) => index,
                None => self.scm_full_index(&keywords, concurrency).await?,
            },
            None => self.scm_full_index(&keywords, concurrency).await?,
        };
        let data = index.data.clone();
        *self.scm_index.lock().unwrap_or_else(|p| p.into_inner()) = Some(index);
        let mut g = self.scm_snapshot.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(Snapshot {
            data: data.clone(),
            taken_at: now,
            unused: selected.iter().map(|(n, _)| n.to_string()).collect(),
        });
        Ok(data)
    }

    /// A full listing, and the change-detection page read just before it (so that a change
    /// made during the listing shows as a change in the next pass).
    async fn scm_full_index(
        &self,
        keywords: &[String],
        concurrency: usize,
    ) -> Result<ScmIndex, RenewError> {
        let list_err = |e| RenewError::cloud("(scm)", "list SCM certificates", None, e);
        let anchor = self
            .client
            .scm_list_certificates(&anchor_query())
            .await
            .map_err(list_err)?;
        let (certificates, covered) = match self
            .client
            .scm_list_all_certificates(&list_query(None))
            .await
        {
            Ok(all) => (all, None),
            Err(CloudError::Invalid(msg)) => {
                tracing::info!(%msg, "too many SCM certificates for one pass; listing per name or domain");
                let listed = self
                    .scm_list_narrowed(keywords.to_vec(), concurrency)
                    .await?;
                (listed, Some(keywords.iter().cloned().collect()))
            }
            Err(e) => return Err(list_err(e)),
        };
        let now = self.now();
        Ok(ScmIndex {
            data: Arc::new(ScmCandidates::new(now, certificates)),
            anchor: anchor.certificates.into_iter().map(|c| c.id).collect(),
            full_at: now,
            covered,
        })
    }

    /// The kept index brought up to date from one page of recent changes (and a narrowed
    /// listing of any keyword it does not cover yet); `None` when a full listing is needed.
    async fn scm_update_index(
        &self,
        mut index: ScmIndex,
        keywords: &[String],
        concurrency: usize,
    ) -> Result<Option<ScmIndex>, RenewError> {
        let page = self
            .client
            .scm_list_certificates(&anchor_query())
            .await
            .map_err(|e| RenewError::cloud("(scm)", "list SCM certificates", None, e))?
            .certificates;
        let Some(changed) = changed_since(&page, &index.anchor) else {
            tracing::info!("more SCM certificates changed than one page shows; listing them all");
            return Ok(None);
        };
        let missing: Vec<String> = match &index.covered {
            Some(covered) => keywords
                .iter()
                .filter(|k| !covered.contains(*k))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if !changed.is_empty() || !missing.is_empty() {
            let mut merged = index.data.certificates.clone();
            let mut at: HashMap<String, usize> = merged
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id.clone(), i))
                .collect();
            let mut add = |c: CertificateSummary| match at.get(&c.id) {
                Some(&i) => merged[i] = c,
                None => {
                    at.insert(c.id.clone(), merged.len());
                    merged.push(c);
                }
            };
            for c in changed {
                add(c.clone());
            }
            if !missing.is_empty() {
                for c in self.scm_list_narrowed(missing.clone(), concurrency).await? {
                    add(c);
                }
                if let Some(covered) = &mut index.covered {
                    covered.extend(missing);
                }
            }
            tracing::debug!(changed = changed.len(), "SCM listing brought up to date");
            index.data = Arc::new(ScmCandidates::new(self.now(), merged));
        }
        index.anchor = page.into_iter().map(|c| c.id).collect();
        Ok(Some(index))
    }

    /// Drops the kept listing: the next pass lists in full (a listed certificate was gone).
    fn forget_scm_index(&self) {
        *self.scm_index.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// One `content=<keyword>` listing per keyword, `concurrency` at a time, merged without
    /// repeats in keyword order. The first failure fails the pass.
    async fn scm_list_narrowed(
        &self,
        keywords: Vec<String>,
        concurrency: usize,
    ) -> Result<Vec<CertificateSummary>, RenewError> {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, kw) in keywords.into_iter().enumerate() {
            let client = self.client.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                let part = client
                    .scm_list_all_certificates(&list_query(Some(kw)))
                    .await;
                (i, part)
            });
        }
        let mut parts: Vec<(usize, Vec<CertificateSummary>)> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (i, part) = joined.map_err(|e| RenewError::State {
                name: "(scm)".into(),
                path: self.state.root().to_path_buf(),
                detail: format!("an SCM listing task failed: {e}"),
            })?;
            let part =
                part.map_err(|e| RenewError::cloud("(scm)", "list SCM certificates", None, e))?;
            parts.push((i, part));
        }
        parts.sort_by_key(|(i, _)| *i);
        let mut ids = HashSet::new();
        Ok(parts
            .into_iter()
            .flat_map(|(_, part)| part)
            .filter(|c| ids.insert(c.id.clone()))
            .collect())
    }

    /// The pass for `name`, if one is fresh and `name` has not used it yet.
    fn take_snapshot(&self, name: &str) -> Option<Arc<ScmCandidates>> {
        let now = self.now();
        let mut g = self.scm_snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let snap = g.as_mut()?;
        let age = now - snap.taken_at;
        if age > SNAPSHOT_TTL || age.is_negative() {
            *g = None;
            return None;
        }
        snap.unused.remove(name).then(|| snap.data.clone())
    }

    /// The certificates `sel` may mean, from the pass or from the API.
    async fn scm_listed(
        &self,
        name: &str,
        sel: &ScmSelector,
    ) -> Result<Vec<CertificateSummary>, RenewError> {
        if let Some(snap) = self.take_snapshot(name) {
            let hits: Vec<CertificateSummary> = snap.matching(sel).into_iter().cloned().collect();
            if !hits.is_empty() || !matches!(sel, ScmSelector::Id(_)) {
                return Ok(hits);
            }
        }
        match sel {
            ScmSelector::Id(id) => match self.client.scm_show_certificate(id).await {
                Ok(d) => Ok(vec![CertificateSummary {
                    id: d.id,
                    name: d.name,
                    domain: d.domain,
                    sans: d.sans,
                    expire_time: d.not_after,
                    status: d.status,
                    ..CertificateSummary::default()
                }]),
                Err(e) if crate::cloud::scm::is_not_found(&e) => Ok(Vec::new()),
                Err(e) => Err(RenewError::cloud(
                    name,
                    &format!("read SCM certificate {id}"),
                    None,
                    e,
                )),
            },
            ScmSelector::Name(kw) | ScmSelector::Domain(kw) => self
                .client
                .scm_list_all_certificates(&list_query(Some(kw.clone())))
                .await
                .map(|all| all.into_iter().filter(|c| matches(sel, c)).collect())
                .map_err(|e| RenewError::cloud(name, "list SCM certificates", None, e)),
        }
    }

    pub(super) async fn check_scm(
        &self,
        cert: &ManagedCertificate,
        sel: &ScmSelector,
        opts: CheckOptions,
    ) -> Result<CheckReport, RenewError> {
        let name = cert.name.as_str();
        let mut report = CheckReport::new(name, "scm");
        Self::preflight(cert, opts, &mut report)?;
        let now = self.now();
        let listed = self.scm_listed(name, sel).await?;
        let best = listed
            .iter()
            .filter(|c| is_valid(c, now))
            .max_by(|a, b| (a.expire_time, &a.id).cmp(&(b.expire_time, &b.id)));
        let Some(best) = best else {
            return Err(if listed.is_empty() {
                RenewError::NotFound {
                    name: name.to_string(),
                    detail: format!(
                        "scm: no certificate {} (valid, or expired in the last {SCM_EXPIRED_DAYS_SINCE} days)",
                        describe(sel)
                    ),
                }
            } else {
                let newest = listed.iter().filter_map(|c| c.expire_time).max();
                RenewError::NoValidCertificate {
                    name: name.to_string(),
                    detail: format!(
                        "scm: every certificate {} has expired (the newest on {}) and no newer one was imported; the files in place are kept",
                        describe(sel),
                        newest.map_or_else(|| "an unknown date".to_string(), super::rfc3339)
                    ),
                }
            });
        };

        let record = self.records.load(name)?;
        report.cloud_id = record.cloud_id.clone();
        let need = self.scm_need(cert, best, &record, opts);
        match need {
            Need::Nothing => {}
            Need::Export(reason) if opts.dry_run => {
                let mut steps = vec![
                    PlannedStep(format!("re-export: {reason}")),
                    PlannedStep(format!("POST /v3/scm/certificates/{}/export", best.id)),
                ];
                self.plan_install_steps(cert, &mut steps);
                report.action = Action::WouldDo(steps);
            }
            Need::Reinstall(reason) if opts.dry_run => {
                let mut steps = vec![PlannedStep(format!(
                    "re-install certificate {} from the last good copy, else export it again ({reason})",
                    best.id
                ))];
                self.plan_install_steps(cert, &mut steps);
                report.action = Action::WouldDo(steps);
            }
            Need::Export(reason) => {
                tracing::info!(certificate = %name, cloud_id = %best.id, %reason, "exporting from SCM");
                report.reason = Some(reason.clone());
                self.scm_export_install(cert, sel, &best.id, record, &mut report)
                    .await?;
                report.action = Action::Reexported {
                    cloud_id: best.id.clone(),
                };
            }
            Need::Reinstall(reason) => {
                report.reason = Some(reason.clone());
                match self
                    .reinstall_last_good(cert, &record, required_names(sel))
                    .await?
                {
                    Some((bundle, outcome)) => {
                        report.took_install(bundle, outcome, self.pem_paths(cert).cert);
                        report.action = Action::Reinstalled { reason };
                    }
                    None => {
                        self.scm_export_install(cert, sel, &best.id, record, &mut report)
                            .await?;
                        report.action = Action::Reinstalled { reason };
                    }
                }
            }
        }
        if report.installed_set.is_none() {
            report.installed = self.summary(cert);
        }

        // Due, and nothing newer in SCM: say so loudly, but this is not a failure.
        let (nb, na) = match &report.installed {
            Some(s) => (Some(s.not_before), Some(s.not_after)),
            None => (None, best.expire_time),
        };
        if let Some(na) = na {
            let lifetime = Lifetime::new(nb.unwrap_or(now), na);
            match policy::decide(now, &lifetime, &cert.renew, self.jitter_unit(name)) {
                Decision::Wait { until } => report.next_renewal = Some(until),
                Decision::Renew { reason } => {
                    let msg = format!(
                        "scm: certificate {} {} expires in {} days ({}; renewal {}) and no newer valid certificate {} exists in SCM; import a renewed one",
                        best.id,
                        describe(sel),
                        super::days(na - now),
                        super::rfc3339(na),
                        reason.as_str(),
                        describe(sel)
                    );
                    tracing::warn!(certificate = %name, "{msg}");
                    report
                        .warnings
                        .push(super::Warning::new(super::WarningKind::ScmNoSuccessor, msg));
                }
            }
        }
        Ok(report)
    }

    fn scm_need(
        &self,
        cert: &ManagedCertificate,
        best: &CertificateSummary,
        record: &CertRecord,
        opts: CheckOptions,
    ) -> Need {
        if opts.force {
            return Need::Export("forced".into());
        }
        match &record.cloud_id {
            Some(id) if *id == best.id => {}
            Some(id) => {
                return Need::Export(format!(
                    "certificate {} replaces the installed {id}",
                    best.id
                ));
            }
            None => return Need::Export("not installed by the agent yet".into()),
        }
        match install::read_installed(&self.checked_paths(cert)) {
            InstalledState::Present(c) => {
                if record
                    .fingerprint_sha256
                    .as_deref()
                    .is_some_and(|fp| fp.eq_ignore_ascii_case(&c.fingerprint_sha256))
                {
                    Need::Nothing
                } else {
                    Need::Reinstall(format!(
                        "the certificate on disk (serial {}) is not the one the agent installed",
                        c.serial_hex
                    ))
                }
            }
            other => Need::Reinstall(describe_disk(&other)),
        }
    }

    async fn scm_export_install(
        &self,
        cert: &ManagedCertificate,
        sel: &ScmSelector,
        id: &str,
        mut record: CertRecord,
        report: &mut CheckReport,
    ) -> Result<(), RenewError> {
        let name = cert.name.as_str();
        let exported = self.client.scm_export_certificate(id).await.map_err(|e| {
            if crate::cloud::scm::is_not_found(&e) {
                // Deleted since it was listed: the kept listing is stale.
                self.forget_scm_index();
            }
            RenewError::cloud(name, &format!("export SCM certificate {id}"), None, e)
        })?;
        let candidate = Candidate {
            name: name.to_string(),
            cert_pem: exported.certificate.clone(),
            chain_pem: exported.certificate_chain.clone(),
            key_pem: exported.private_key.expose().to_string(),
        };
        let (bundle, outcome) = self
            .verify_and_install(cert, candidate, required_names(sel), None)
            .await?;
        record.source = "scm".into();
        record.cloud_id = Some(id.to_string());
        record.ca_id = None;
        record.mode = None;
        record.fingerprint_sha256 = Some(bundle.fingerprint_sha256().to_string());
        record.installed_at = Some(self.now().unix_timestamp());
        self.records.save(name, &record)?;
        report.cloud_id = Some(id.to_string());
        report.took_install(bundle, outcome, self.pem_paths(cert).cert);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ids: &[&str]) -> Vec<CertificateSummary> {
        ids.iter()
            .map(|id| CertificateSummary {
                id: (*id).to_owned(),
                ..CertificateSummary::default()
            })
            .collect()
    }

    fn ids(p: &[CertificateSummary]) -> Vec<&str> {
        p.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn what_changed_is_in_front_of_the_tail_the_last_page_showed() {
        let prev: Vec<String> = ["c", "b", "a"].iter().map(|s| s.to_string()).collect();
        // Nothing new.
        assert_eq!(
            ids(changed_since(&page(&["c", "b", "a"]), &prev).expect("some")),
            Vec::<&str>::new()
        );
        // Two imports.
        assert_eq!(
            ids(changed_since(&page(&["e", "d", "c", "b", "a"]), &prev).expect("some")),
            ["e", "d"]
        );
        // `a` updated: it moves to the front, out of order.
        assert_eq!(
            ids(changed_since(&page(&["a", "c", "b"]), &prev).expect("some")),
            ["a"]
        );
        // `b` deleted: the rest is still the old order.
        assert_eq!(
            ids(changed_since(&page(&["d", "c", "a"]), &prev).expect("some")),
            ["d"]
        );
        // No previous page: everything is new.
        assert_eq!(ids(changed_since(&page(&["x"]), &[]).expect("some")), ["x"]);
        // A full page of changes: more may lie beyond it.
        let full: Vec<String> = (0..ANCHOR_PAGE).map(|i| format!("n{i}")).collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        assert!(changed_since(&page(&full), &prev).is_none());
    }
}
