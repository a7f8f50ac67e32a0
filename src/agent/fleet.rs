//! Fleet mode in the pass (see [`crate::fleet`]). A `shared` or `per-host` certificate goes
//! through [`Agent::fleet_pass`] instead of the stand-alone stages:
//!
//! - **shared, obtain**: when the published generation is missing or due (by this member's
//!   policy and jitter), the member tries the certificate's lock. The holder brings its files to
//!   the published generation, writes its fenced issuing mark (the fence before the billed
//!   call), runs the normal renewal ([`Renewer::check`]) and publishes what it then has as the
//!   next generation (fenced). Every other member installs exactly the published certificate,
//!   exported from the cloud and checked against the published fingerprint
//!   ([`Renewer::install_published`]); it never issues.
//! - **per-host, obtain**: the normal renewal (each member its own certificate); the holder
//!   publishes its own certificate as the generation the cloud targets get.
//! - **activate**: as always, when the files changed.
//! - **deploy**: only the lock holder, only for units the generation's progress does not have
//!   as done; each call preceded by a fenced `calling` mark and followed by a fenced `done` or
//!   `failed`. A unit found `calling` when a member takes over had a caller that stopped
//!   mid-call: SCM's API lists neither pushes nor deployments, so the outcome cannot be
//!   reconciled, and the unit is marked `needs_human` (alerted on), never called blindly.
//! - **etcd unreachable**: the member keeps what it has; a shared certificate at its emergency
//!   floor is renewed by this member alone when `emergency_local` (default); no deploy.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::daemon::Agent;
use super::pass::PassError;
use super::renew::{CheckOptions, CheckReport, Warning, WarningKind, rfc3339};
use crate::config::{CertificateSource, ManagedCertificate};
use crate::deploy::{self, DeployGate, DeploySpec, GateFuture};
use crate::fleet::keys::{Generation, MemberStatus, UnitProgress, UnitState};
use crate::fleet::rollout::{self, MemberResult, Stage};
use crate::fleet::{Coordinator, FleetError, FleetMode};
use crate::policy::{self, Lifetime};

/// The fleet as the agent sees it: the coordinator, the metrics, and the last status written.
pub struct FleetLink {
    pub coordinator: Arc<Coordinator>,
    last_status: Mutex<HashMap<String, MemberStatus>>,
    /// The rollout stage last seen per certificate, to log each change once.
    stages: Mutex<HashMap<String, (u64, Stage)>>,
    metrics: FleetMetrics,
}

struct FleetMetrics {
    up: prometheus::IntGauge,
    members: prometheus::IntGauge,
    leader: prometheus::IntGaugeVec,
    generation: prometheus::IntGaugeVec,
    installed_generation: prometheus::IntGaugeVec,
    lag: prometheus::IntGaugeVec,
    needs_human: prometheus::IntGaugeVec,
    emergency: prometheus::IntCounterVec,
    rollout_state: prometheus::IntGaugeVec,
}

impl FleetMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let gauge = |n: &str, h: &str| prometheus::IntGauge::new(n, h);
        let vec =
            |n: &str, h: &str| prometheus::IntGaugeVec::new(prometheus::Opts::new(n, h), &["name"]);
        let m = FleetMetrics {
            up: gauge(
                "ccm_agent_fleet_coordinator_up",
                "1 when this member holds a live etcd lease and a current view of the fleet.",
            )?,
            members: gauge(
                "ccm_agent_fleet_members",
                "Members registered in the fleet (live etcd leases), as this member sees them.",
            )?,
            leader: vec(
                "ccm_agent_fleet_leader",
                "1 when this member holds the certificate's fleet lock.",
            )?,
            generation: vec(
                "ccm_agent_fleet_generation",
                "The generation the fleet published for the certificate.",
            )?,
            installed_generation: vec(
                "ccm_agent_fleet_installed_generation",
                "The fleet generation this member has installed (0: none of the fleet's).",
            )?,
            lag: vec(
                "ccm_agent_fleet_member_lag",
                "The generation this member should serve (the published one, or the previous one while a rollout holds it back) minus the one installed here (0: up to date).",
            )?,
            needs_human: vec(
                "ccm_agent_fleet_deploy_needs_human",
                "Deploy units of the current generation whose outcome is unknown and wait for an operator.",
            )?,
            emergency: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "ccm_agent_fleet_emergency_renewals_total",
                    "Shared certificates renewed by this member alone at the emergency floor while etcd was unreachable.",
                ),
                &["name"],
            )?,
            rollout_state: prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "ccm_agent_fleet_rollout_state",
                    "1 for the stage the rollout of the certificate's published generation is in (canary, rolling, done, halted, rolled_back); done when it has no rollout.",
                ),
                &["name", "state"],
            )?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.members.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.generation.clone()))?;
        registry.register(Box::new(m.installed_generation.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.needs_human.clone()))?;
        registry.register(Box::new(m.emergency.clone()))?;
        registry.register(Box::new(m.rollout_state.clone()))?;
        Ok(m)
    }
}

impl FleetLink {
    pub fn new(
        coordinator: Arc<Coordinator>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Self> {
        Ok(FleetLink {
            coordinator,
            last_status: Mutex::new(HashMap::new()),
            stages: Mutex::new(HashMap::new()),
            metrics: FleetMetrics::register(registry)?,
        })
    }

    /// Refreshes the gauges that follow the coordinator (called on every fleet change).
    pub fn observe(&self, names: &[(String, FleetMode)], now: time::OffsetDateTime) {
        let c = &self.coordinator;
        self.metrics.up.set(i64::from(c.is_up()));
        if c.is_up() {
            self.metrics
                .members
                .set(i64::try_from(c.members()).unwrap_or(i64::MAX));
        }
        for (name, mode) in names {
            if *mode == FleetMode::Local {
                continue;
            }
            self.metrics
                .leader
                .with_label_values(&[name])
                .set(i64::from(c.holds(name)));
            let published = c.generation(name).map_or(0, |g| g.generation);
            self.metrics
                .generation
                .with_label_values(&[name])
                .set(i64::try_from(published).unwrap_or(i64::MAX));
            if *mode == FleetMode::Shared && c.is_up() {
                let assessed = c.assess(name, now);
                let stage = assessed.as_ref().map_or(Stage::Done, |(_, _, a)| a.stage);
                if let Some((g, _, a)) = &assessed {
                    self.log_stage(name, g.generation, a);
                }
                for s in Stage::ALL {
                    self.metrics
                        .rollout_state
                        .with_label_values(&[name, s.as_str()])
                        .set(i64::from(s == stage));
                }
            }
        }
    }
}

impl FleetLink {
    /// Logs a rollout's change of stage once per member (the audit trail on every host: who
    /// halted, resumed or rolled back, and which member's failure halted it).
    fn log_stage(&self, name: &str, generation: u64, a: &rollout::Assessment) {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        let before = stages.insert(name.to_owned(), (generation, a.stage));
        if before == Some((generation, a.stage)) {
            return;
        }
        let from = before
            .filter(|(g, _)| *g == generation)
            .map_or("new", |(_, s)| s.as_str());
        let why = a.halt.as_ref().map(|h| format!("{} ({})", h.reason, h.by));
        match a.stage {
            Stage::Halted | Stage::RolledBack => tracing::warn!(
                event = "rollout", certificate = %name, generation, from, stage = %a.stage,
                reason = why.as_deref().unwrap_or(""), next = %a.next,
                "the rollout changed stage"
            ),
            _ => tracing::info!(
                event = "rollout", certificate = %name, generation, from, stage = %a.stage,
                next = %a.next, "the rollout changed stage"
            ),
        }
    }
}

/// The lifetime a generation describes.
fn lifetime(g: &Generation) -> Option<Lifetime> {
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    };
    Some(Lifetime::new(parse(&g.not_before)?, parse(&g.not_after)?))
}

/// Whether this member should install generation `g` (due or not by its policy) over what it
/// has: yes when nothing is installed or something else is, except that a certificate this
/// member renewed alone during an outage and that outlives a `g` that is due anyway stays
/// until the fleet publishes the next generation (a member would otherwise step back to an
/// older certificate for a moment).
fn should_install(local: Option<&super::renew::CertSummary>, g: &Generation, g_due: bool) -> bool {
    let Some(local) = local else { return true };
    if local
        .fingerprint_sha256
        .eq_ignore_ascii_case(&g.fingerprint_sha256)
    {
        return false;
    }
    !(g_due && lifetime(g).is_some_and(|l| local.not_after > l.not_after))
}

fn fleet_error(name: &str) -> impl Fn(FleetError) -> PassError + '_ {
    move |e| PassError::Fleet {
        name: name.to_owned(),
        detail: e.to_string(),
    }
}

impl Agent {
    /// The fleet link, when this certificate is coordinated through it.
    pub(super) fn fleet_of(&self, cert: &ManagedCertificate) -> Option<Arc<FleetLink>> {
        if cert.fleet == FleetMode::Local {
            return None;
        }
        self.fleet.get().cloned()
    }

    /// Connects the agent to its fleet (the daemon, once).
    pub fn attach_fleet(&self, link: Arc<FleetLink>) {
        let _ = self.fleet.set(link);
    }

    /// The fleet link, if attached.
    pub fn fleet(&self) -> Option<Arc<FleetLink>> {
        self.fleet.get().cloned()
    }

    /// After a fleet change: refresh the gauges. (A certificate waiting out a failure's
    /// backoff keeps waiting: ending it on every change would let the members of a fleet
    /// whose cloud calls fail take turns at them as fast as the lock passes.)
    pub fn on_fleet_change(&self) {
        let config = self.config();
        let names: Vec<(String, FleetMode)> = config
            .certificates
            .iter()
            .map(|c| (c.name.clone(), c.fleet))
            .collect();
        if let Some(link) = self.fleet.get() {
            link.observe(&names, self.clock.now());
        }
    }

    /// One fleet certificate through the stages (see the module doc).
    pub(super) async fn fleet_pass(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        opts: CheckOptions,
    ) -> Result<CheckReport, PassError> {
        if opts.dry_run {
            return Ok(self.renewer.check(cert, opts).await?);
        }
        let mut took = false;
        let result = self.fleet_stages(link, cert, opts, &mut took).await;
        let f = &link.coordinator;
        if took
            && f.holds(&cert.name)
            && let Err(e) = f.unlock(&cert.name).await
        {
            tracing::debug!(certificate = %cert.name, error = %e, "could not release the fleet lock (it goes with the lease)");
        }
        self.fleet_status(link, cert, &result).await;
        result
    }

    async fn fleet_stages(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        opts: CheckOptions,
        took: &mut bool,
    ) -> Result<CheckReport, PassError> {
        let f = &link.coordinator;
        let report = match cert.fleet {
            FleetMode::Shared => self.shared_obtain(link, cert, opts, took).await?,
            _ => self.renewer.check(cert, opts).await?,
        };
        if report.install_changed
            && let Some(set) = report.installed_set.as_deref()
        {
            let activated = self.activate(cert, set).await;
            if let Err(e) = &activated
                && cert.fleet == FleetMode::Shared
            {
                self.report_failure(link, cert, set.bundle.fingerprint_sha256(), e)
                    .await;
            }
            activated?;
        }
        if cert.fleet == FleetMode::Shared {
            self.report_success(link, cert, &report).await;
        }
        if cert.fleet == FleetMode::PerHost && f.is_up() {
            self.per_host_publish(link, cert, &report, took).await?;
        }
        if let Some(spec) = &cert.deploy {
            if f.is_up() {
                self.fleet_deploy(link, cert, spec, &report, took).await?;
            } else {
                tracing::warn!(certificate = %cert.name, "the fleet coordinator (etcd) is unreachable: cloud deploys wait for it (never without the lock)");
            }
        }
        Ok(report)
    }

    /// A shared certificate's obtain stage (see the module doc).
    async fn shared_obtain(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        opts: CheckOptions,
        took: &mut bool,
    ) -> Result<CheckReport, PassError> {
        let f = &link.coordinator;
        let name = cert.name.as_str();
        if !f.is_up() {
            return self.alone(link, cert, opts).await;
        }
        let now = self.clock.now();
        let g = f.generation(name);
        let local = self.renewer.installed(cert);
        let rollout = f.assess(name, now);
        // What the fleet serves: the published generation, or the previous one while it is
        // rolled back. Renewal is decided on it.
        let basis = match &rollout {
            Some((_, r, a)) if a.stage == Stage::RolledBack => Some(r.previous.clone()),
            _ => g.clone(),
        };
        let due_on = |g: &Generation| {
            lifetime(g).is_none_or(|l| {
                self.renewer
                    .renewal_decision(cert, l.not_before, l.not_after)
                    .is_ok()
            })
        };
        let g_due = basis.as_ref().is_none_or(due_on);
        let mut due = g_due || opts.force;
        let mut notes = Vec::new();
        if let Some((_, r, a)) = &rollout
            && due
            && matches!(a.stage, Stage::Canary | Stage::Rolling | Stage::Halted)
        {
            // A new generation would bypass the rollout (and its halt): only at the emergency
            // floor of what the members serve.
            if !self.at_emergency_floor(cert, &r.previous, now) {
                due = false;
                notes.push(Warning::new(
                    WarningKind::State,
                    format!(
                        "the rollout of generation {} is {}: no new generation until it is done, rolled back, or the previous one reaches its emergency floor",
                        r.generation, a.stage
                    ),
                ));
            }
        }
        if due {
            match f.try_lock(name).await {
                Ok(held) => *took = held,
                Err(e) => {
                    tracing::warn!(certificate = %name, error = %e, "cannot reach the fleet coordinator for the lock");
                    return self.alone(link, cert, opts).await;
                }
            }
        }
        if *took {
            // Bring the files to what this member should serve before issuing over it.
            if let Some(t) = self.target(f, name, now)
                && should_install(local.as_ref(), &t, g_due)
            {
                self.renewer
                    .install_published(cert, &t.cloud_id, Some(&t.fingerprint_sha256))
                    .await?;
            }
            let served_before = self.renewer.installed(cert);
            if let Some(report) = self
                .adopt_interrupted(f, cert, g.as_ref(), basis.as_ref())
                .await?
            {
                return self.hold_back(f, cert, report, served_before).await;
            }
            // The fence before the billed call: a member that lost the lock stops here.
            f.mark_issuing(name, g.as_ref().map_or(0, |g| g.generation))
                .await
                .map_err(fleet_error(name))?;
            let report = self.renewer.check(cert, opts).await?;
            if self
                .publish_installed(f, cert, &report, g.as_ref(), basis.as_ref())
                .await?
                .is_none()
            {
                f.clear_issuing(name).await.map_err(fleet_error(name))?;
                return Ok(report);
            }
            return self.hold_back(f, cert, report, served_before).await;
        }
        let target = self.target(f, name, now);
        let mut report = match &target {
            Some(t) if should_install(local.as_ref(), t, g_due) => {
                self.renewer
                    .install_published(cert, &t.cloud_id, Some(&t.fingerprint_sha256))
                    .await?
            }
            Some(_) => self.renewer.observe(cert)?,
            None => {
                let mut r = self.renewer.observe(cert)?;
                let holder = f
                    .lock_holder(name)
                    .map_or_else(|| "nobody yet".to_owned(), |(m, _)| m);
                r.warnings.push(Warning::new(
                    WarningKind::State,
                    format!("waiting for the fleet's first generation of this certificate (lock held by {holder})"),
                ));
                r
            }
        };
        report.warnings.extend(notes);
        // Waiting for the canaries' soak: wake when it ends (no etcd event marks it).
        if let Some((_, _, a)) = &rollout
            && let Some(until) = a.soak_until
            && !a.admits(f.member_id())
        {
            report.next_renewal = Some(report.next_renewal.map_or(until, |t| t.min(until)));
        }
        Ok(report)
    }

    /// The generation this member should serve: the published one, or the previous one while
    /// the rollout does not admit this member (see [`crate::fleet::rollout`]).
    fn target(&self, f: &Coordinator, name: &str, now: time::OffsetDateTime) -> Option<Generation> {
        match f.assess(name, now) {
            Some((_, r, a)) if !a.admits(f.member_id()) => Some(r.previous),
            _ => f.generation(name),
        }
    }

    /// Whether generation `g` is inside its emergency floor by this member's policy.
    fn at_emergency_floor(
        &self,
        cert: &ManagedCertificate,
        g: &Generation,
        now: time::OffsetDateTime,
    ) -> bool {
        lifetime(g).is_none_or(|l| policy::emergency_time(&l, &cert.renew) <= now)
    }

    /// After the holder published a generation with a rollout that does not admit it: its
    /// files go back to what it served before (nothing was activated in between, so nothing
    /// to reload); it installs the new generation when the rollout admits it, like any member.
    async fn hold_back(
        &self,
        f: &Coordinator,
        cert: &ManagedCertificate,
        report: CheckReport,
        served_before: Option<super::renew::CertSummary>,
    ) -> Result<CheckReport, PassError> {
        let name = cert.name.as_str();
        let Some(t) = self.target(f, name, self.clock.now()) else {
            return Ok(report);
        };
        let installed = report
            .installed
            .as_ref()
            .map(|i| i.fingerprint_sha256.clone());
        if installed.is_some_and(|fp| fp.eq_ignore_ascii_case(&t.fingerprint_sha256)) {
            return Ok(report);
        }
        tracing::info!(
            certificate = %name, generation = t.generation,
            "the rollout does not admit this member yet: keeping the generation it serves"
        );
        let mut back = self
            .renewer
            .install_published(cert, &t.cloud_id, Some(&t.fingerprint_sha256))
            .await?;
        if served_before.is_some_and(|s| {
            s.fingerprint_sha256
                .eq_ignore_ascii_case(&t.fingerprint_sha256)
        }) {
            // The same files as before the pass: nothing to activate.
            back.install_changed = false;
            back.installed_set = None;
        }
        back.action = report.action;
        back.reason = report.reason;
        back.warnings.extend(report.warnings);
        Ok(back)
    }

    /// Reports to the rollout that this member serves its generation (once per generation).
    async fn report_success(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        report: &CheckReport,
    ) {
        let f = &link.coordinator;
        let name = cert.name.as_str();
        let Some((g, _, a)) = f.assess(name, self.clock.now()) else {
            return;
        };
        let has_it = report.installed.as_ref().is_some_and(|i| {
            i.fingerprint_sha256
                .eq_ignore_ascii_case(&g.fingerprint_sha256)
        });
        if !has_it
            || a.stage == Stage::RolledBack
            || f.results(name, g.generation).contains_key(f.member_id())
        {
            return;
        }
        let result = MemberResult {
            ok: true,
            fingerprint_sha256: g.fingerprint_sha256.clone(),
            detail: None,
            result: "ok".into(),
            at: rfc3339(self.clock.now()),
        };
        match f.put_result(name, g.generation, &result).await {
            Ok(()) => tracing::info!(
                certificate = %name, generation = g.generation, stage = %a.stage,
                "reported to the rollout: serving the new generation"
            ),
            Err(e) => tracing::warn!(
                certificate = %name, generation = g.generation, error = %e,
                "could not report to the rollout (tried again next pass)"
            ),
        }
    }

    /// Reports to the rollout that activating its generation failed here (and was rolled
    /// back): a canary's failure halts it.
    async fn report_failure(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        fingerprint: &str,
        error: &PassError,
    ) {
        let f = &link.coordinator;
        let name = cert.name.as_str();
        let Some((g, r, _)) = f.assess(name, self.clock.now()) else {
            return;
        };
        if !g.fingerprint_sha256.eq_ignore_ascii_case(fingerprint) {
            return;
        }
        let mut detail = error.to_string();
        if detail.len() > 4000 {
            let mut cut = 4000;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push_str(" [...]");
        }
        let result = MemberResult {
            ok: false,
            fingerprint_sha256: g.fingerprint_sha256.clone(),
            detail: Some(detail),
            result: error.kind().to_string(),
            at: rfc3339(self.clock.now()),
        };
        let canary = r.canaries.iter().any(|c| c == f.member_id());
        match f.put_result(name, g.generation, &result).await {
            Ok(()) => tracing::error!(
                certificate = %name, generation = g.generation, canary,
                result = %result.result,
                "reported to the rollout: activating the new generation failed here{}",
                if canary { "; a canary's failure halts the rollout" } else { "" }
            ),
            Err(e) => tracing::warn!(
                certificate = %name, generation = g.generation, error = %e,
                "could not report the failure to the rollout"
            ),
        }
    }

    /// The previous holder marked an issuance replacing the current generation and never
    /// published it (it stopped in between): the certificate it may have issued is looked for
    /// in PCA first, and adopted and published instead of issuing another. A listing that fails
    /// fails the pass (issuing blindly could cost a second issuance).
    async fn adopt_interrupted(
        &self,
        f: &Coordinator,
        cert: &ManagedCertificate,
        g: Option<&Generation>,
        serving: Option<&Generation>,
    ) -> Result<Option<CheckReport>, PassError> {
        let name = cert.name.as_str();
        let Some(mark) = f.issuing(name) else {
            return Ok(None);
        };
        if mark.member == f.member_id() || mark.replaces != g.map_or(0, |g| g.generation) {
            return Ok(None);
        }
        let Ok(at) =
            time::OffsetDateTime::parse(&mark.at, &time::format_description::well_known::Rfc3339)
        else {
            return Ok(None);
        };
        let known: Vec<&str> = g.map(|g| g.cloud_id.as_str()).into_iter().collect();
        let Some(id) = self.renewer.find_fleet_issuance(cert, at, &known).await? else {
            tracing::info!(certificate = %name, previous = %mark.member, "the interrupted issuance of the previous lock holder created nothing");
            return Ok(None);
        };
        tracing::warn!(
            certificate = %name, previous = %mark.member, cloud_id = %id,
            "adopting the certificate the previous lock holder issued but did not publish"
        );
        let report = self.renewer.install_published(cert, &id, None).await?;
        self.publish_installed(f, cert, &report, g, serving).await?;
        Ok(Some(report))
    }

    /// Publishes what the report installed as the next generation when it is not the
    /// published one (fenced), with its rollout over `serving` (the generation the members
    /// serve) when the certificate has rollout settings.
    async fn publish_installed(
        &self,
        f: &Coordinator,
        cert: &ManagedCertificate,
        report: &CheckReport,
        current: Option<&Generation>,
        serving: Option<&Generation>,
    ) -> Result<Option<Generation>, PassError> {
        let name = cert.name.as_str();
        let (Some(inst), Some(id)) = (&report.installed, report.cloud_id.clone()) else {
            return Ok(None);
        };
        if current.is_some_and(|g| {
            g.fingerprint_sha256
                .eq_ignore_ascii_case(&inst.fingerprint_sha256)
        }) {
            return Ok(None);
        }
        let g = Generation {
            generation: current.map_or(1, |g| g.generation + 1),
            cloud_id: id,
            fingerprint_sha256: inst.fingerprint_sha256.to_ascii_uppercase(),
            not_after: rfc3339(inst.not_after),
            not_before: rfc3339(inst.not_before),
            issued_by: f.member_id().to_owned(),
            source: report.source.to_owned(),
        };
        let now = self.clock.now();
        let rollout = match (&cert.rollout, serving) {
            (Some(settings), Some(previous)) => Some(rollout::start(
                settings,
                &g,
                previous,
                &f.serving(name),
                f.member_id(),
                self.at_emergency_floor(cert, previous, now),
                now,
            )),
            _ => None,
        };
        f.publish(name, &g, rollout.as_ref())
            .await
            .map_err(fleet_error(name))?;
        tracing::info!(
            certificate = %name, generation = g.generation, cloud_id = %g.cloud_id,
            fingerprint = %g.fingerprint_sha256, "published a new fleet generation"
        );
        if let Some(r) = &rollout {
            tracing::info!(
                certificate = %name, generation = r.generation, previous = r.previous.generation,
                canaries = %r.canaries.join(","), soak = r.canary_soak_secs, batch = r.batch,
                emergency = r.emergency, soak_skipped = r.soak_skipped,
                "started the rollout: canaries first"
            );
        }
        Ok(Some(g))
    }

    /// etcd unreachable: keep what is installed; at the emergency floor, renew alone when
    /// allowed (no deploy follows: the caller skips deploys while the coordinator is down).
    async fn alone(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        opts: CheckOptions,
    ) -> Result<CheckReport, PassError> {
        let name = cert.name.as_str();
        let now = self.clock.now();
        let local = self.renewer.installed(cert);
        let floor = local.as_ref().map(|s| {
            policy::emergency_time(&Lifetime::new(s.not_before, s.not_after), &cert.renew)
        });
        let at_floor = floor.is_none_or(|t| t <= now);
        if at_floor && link.coordinator.settings().emergency_local {
            tracing::warn!(
                certificate = %name,
                "the fleet coordinator (etcd) is unreachable and the shared certificate is at its emergency floor: renewing on this member alone, without cloud deploys"
            );
            link.metrics.emergency.with_label_values(&[name]).inc();
            let mut r = self.renewer.check(cert, opts).await?;
            r.warnings.push(Warning::new(
                WarningKind::State,
                "renewed by this member alone at the emergency floor while the fleet coordinator was unreachable",
            ));
            return Ok(r);
        }
        let mut r = self.renewer.observe(cert)?;
        // Wake at the emergency floor, the next thing this member may do alone.
        r.next_renewal = floor.filter(|t| *t > now);
        Ok(r)
    }

    /// per-host: the holder publishes its own certificate as the generation the cloud
    /// targets get, when none is published or the published one is due.
    async fn per_host_publish(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        report: &CheckReport,
        took: &mut bool,
    ) -> Result<(), PassError> {
        let f = &link.coordinator;
        let name = cert.name.as_str();
        let g = f.generation(name);
        let Some(inst) = &report.installed else {
            return Ok(());
        };
        let due = match &g {
            None => true,
            Some(g) => {
                !g.fingerprint_sha256
                    .eq_ignore_ascii_case(&inst.fingerprint_sha256)
                    && lifetime(g).is_none_or(|l| {
                        l.not_after < inst.not_after
                            && self
                                .renewer
                                .renewal_decision(cert, l.not_before, l.not_after)
                                .is_ok()
                    })
            }
        };
        if !due {
            return Ok(());
        }
        if !f.holds(name) {
            match f.try_lock(name).await {
                Ok(true) => *took = true,
                Ok(false) => return Ok(()),
                Err(e) => return Err(fleet_error(name)(e)),
            }
        }
        self.publish_installed(f, cert, report, g.as_ref(), None)
            .await?;
        Ok(())
    }

    /// The deploy stage of a fleet certificate (see the module doc).
    async fn fleet_deploy(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        spec: &DeploySpec,
        report: &CheckReport,
        took: &mut bool,
    ) -> Result<(), PassError> {
        let f = &link.coordinator;
        let name = cert.name.as_str();
        let fail = |detail: String| PassError::Deploy {
            name: name.to_owned(),
            detail,
        };
        let Some(g) = f.generation(name) else {
            return Ok(());
        };
        if let Some((_, r, a)) = f.assess(name, self.clock.now())
            && !a.deploys_released(&r)
        {
            tracing::debug!(certificate = %name, generation = g.generation, stage = %a.stage, "cloud deploys wait for the rollout");
            return Ok(());
        }
        // Only a member that has the generation's certificate can deploy it.
        let has_it = report.installed.as_ref().is_some_and(|i| {
            i.fingerprint_sha256
                .eq_ignore_ascii_case(&g.fingerprint_sha256)
        });
        let keys: Vec<String> = spec
            .targets
            .iter()
            .flat_map(deploy::units_of)
            .map(|u| u.key())
            .collect();
        let progress = f.units(name, g.generation);
        let state_of = |k: &str| progress.get(k).map(|p| p.state);
        let needs_human: HashSet<String> = keys
            .iter()
            .filter(|k| state_of(k) == Some(UnitState::NeedsHuman))
            .cloned()
            .collect();
        link.metrics
            .needs_human
            .with_label_values(&[name])
            .set(i64::try_from(needs_human.len()).unwrap_or(i64::MAX));
        let open = keys.iter().any(|k| {
            !matches!(
                state_of(k),
                Some(UnitState::Done) | Some(UnitState::NeedsHuman)
            )
        });
        if !open || !has_it {
            return Ok(());
        }
        if !f.holds(name) {
            match f.try_lock(name).await {
                Ok(true) => *took = true,
                Ok(false) => return Ok(()),
                Err(e) => return Err(fleet_error(name)(e)),
            }
        }
        // Read again now that this member holds the lock: the previous holder's last marks.
        let progress = f.units(name, g.generation);
        let now = rfc3339(self.clock.now());
        let unknown: Vec<(String, UnitProgress)> = keys
            .iter()
            .filter(|k| progress.get(*k).is_some_and(|p| p.state == UnitState::Calling))
            .map(|k| {
                let was = progress.get(k).map(|p| p.member.clone()).unwrap_or_default();
                (
                    k.clone(),
                    UnitProgress {
                        state: UnitState::NeedsHuman,
                        member: f.member_id().to_owned(),
                        at: now.clone(),
                        scm_id: progress.get(k).and_then(|p| p.scm_id.clone()),
                        detail: Some(format!(
                            "member {was} stopped during this call: SCM's API cannot tell whether it landed; check the target and mark it done or pending"
                        )),
                    },
                )
            })
            .collect();
        let mut held: HashSet<String> = needs_human;
        if !unknown.is_empty() {
            f.set_units(name, g.generation, &unknown)
                .await
                .map_err(fleet_error(name))?;
            for (k, p) in &unknown {
                tracing::error!(
                    certificate = %name, generation = g.generation, unit = %k,
                    detail = p.detail.as_deref().unwrap_or_default(),
                    "a deploy call's outcome is unknown: marked for a human, not called again"
                );
                held.insert(k.clone());
            }
            link.metrics
                .needs_human
                .with_label_values(&[name])
                .set(i64::try_from(held.len()).unwrap_or(i64::MAX));
        }
        // What the fleet has done for this generation counts as done here too.
        let store = self.renewer.state_dir().deploy_store();
        let mut st = store.load(name).map_err(|e| fail(e.to_string()))?;
        let fp = g.fingerprint_sha256.to_ascii_uppercase();
        let mut primed = false;
        for (k, p) in &progress {
            if p.state == UnitState::Done && st.deployed.get(k).is_none_or(|r| r.fingerprint != fp)
            {
                st.deployed.insert(
                    k.clone(),
                    deploy::DeployedRecord {
                        fingerprint: fp.clone(),
                        scm_id: p.scm_id.clone().unwrap_or_default(),
                    },
                );
                primed = true;
            }
        }
        // The SCM copies of earlier generations, imported by whichever member held the lock
        // then: superseded by this generation's, deleted by the run once every unit has it.
        let older: Vec<u64> = f
            .deploy_generations(name)
            .into_iter()
            .filter(|k| *k < g.generation)
            .collect();
        if matches!(cert.source, CertificateSource::Pca(_)) {
            for k in &older {
                for p in f.units(name, *k).values() {
                    let Some(id) = &p.scm_id else { continue };
                    let current = st.scm_copy.as_ref().is_some_and(|c| &c.id == id);
                    if !current && !st.superseded.iter().any(|c| &c.id == id) {
                        st.superseded.push(deploy::ScmCopy {
                            id: id.clone(),
                            name: spec.scm_name.clone(),
                            fingerprint: String::new(),
                            sha1: String::new(),
                        });
                        primed = true;
                    }
                }
            }
        }
        if primed {
            store.save(name, &st).map_err(|e| fail(e.to_string()))?;
        }
        let Some(pem) = self.installed_pem(cert, report).map_err(fail)? else {
            return Ok(());
        };
        let material = match &cert.source {
            CertificateSource::Pca(_) => deploy::CertMaterial::local(
                name,
                pem.cert,
                pem.chain,
                crate::cloud::Secret::new(pem.key),
            ),
            CertificateSource::Scm(_) => {
                deploy::CertMaterial::scm(name, g.cloud_id.clone(), pem.cert)
            }
        };
        let gate = FleetGate {
            f,
            name,
            generation: g.generation,
            held,
            clock: self.clock.clone(),
        };
        let result = deploy::deploy_certificate_gated(
            &self.client,
            &store,
            spec,
            &material,
            false,
            Some(&gate),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        for (service, _action, target, outcome) in result.metric_rows() {
            let label = match outcome {
                "deployed" => "ok",
                "failed" => "error",
                _ => continue,
            };
            self.deploy_metrics
                .with_label_values(&[name, service, &target, label])
                .inc();
        }
        // Units this member had already deployed (its own state) become done for the fleet.
        let progress = f.units(name, g.generation);
        let known: Vec<(String, UnitProgress)> = result
            .outcomes
            .iter()
            .filter(|o| o.result == deploy::UnitResult::Unchanged)
            .map(|o| o.unit.key())
            .filter(|k| progress.get(k).is_none_or(|p| p.state != UnitState::Done))
            .map(|k| {
                (
                    k,
                    UnitProgress {
                        state: UnitState::Done,
                        member: f.member_id().to_owned(),
                        at: rfc3339(self.clock.now()),
                        scm_id: result.scm_certificate_id.clone(),
                        detail: Some("already deployed by this member".into()),
                    },
                )
            })
            .collect();
        f.set_units(name, g.generation, &known)
            .await
            .map_err(fleet_error(name))?;
        let progress = f.units(name, g.generation);
        let everywhere = keys
            .iter()
            .all(|k| progress.get(k).is_some_and(|p| p.state == UnitState::Done));
        if everywhere && result.cleanup_failures.is_empty() {
            f.forget_generations(name, &older)
                .await
                .map_err(fleet_error(name))?;
        }
        if result.is_complete() {
            Ok(())
        } else {
            Err(fail(result.summary()))
        }
    }

    /// Writes this member's view of the certificate when it changed.
    async fn fleet_status(
        &self,
        link: &FleetLink,
        cert: &ManagedCertificate,
        result: &Result<CheckReport, PassError>,
    ) {
        let f = &link.coordinator;
        let name = cert.name.as_str();
        let fp = match result {
            Ok(r) => r.installed.as_ref().map(|i| i.fingerprint_sha256.clone()),
            Err(_) => self.renewer.installed(cert).map(|i| i.fingerprint_sha256),
        };
        let g = f.generation(name);
        // During a rollout a member may serve the previous generation: that is a fleet
        // generation too.
        let previous = f
            .rollout(name)
            .filter(|r| g.as_ref().is_some_and(|g| g.generation == r.generation))
            .map(|r| r.previous);
        let installed_generation = [&g, &previous]
            .into_iter()
            .flatten()
            .find(|x| {
                fp.as_deref()
                    .is_some_and(|fp| x.fingerprint_sha256.eq_ignore_ascii_case(fp))
            })
            .map_or(0, |x| x.generation);
        // per-host: each member has its own certificate; only the one the targets get is
        // published, so the others do not lag behind it. shared: the generation this member
        // should serve (the rollout may hold it on the previous one).
        let published = match cert.fleet {
            FleetMode::Shared => self
                .target(f, name, self.clock.now())
                .map_or(0, |t| t.generation),
            _ => installed_generation,
        };
        link.metrics
            .installed_generation
            .with_label_values(&[name])
            .set(i64::try_from(installed_generation).unwrap_or(i64::MAX));
        link.metrics
            .lag
            .with_label_values(&[name])
            .set(i64::try_from(published.saturating_sub(installed_generation)).unwrap_or(i64::MAX));
        link.observe(&[(cert.name.clone(), cert.fleet)], self.clock.now());
        if !f.is_up() {
            return;
        }
        let last_result = match result {
            Ok(r) => r.action.as_str().to_owned(),
            Err(e) => e.kind().to_string(),
        };
        let status = MemberStatus {
            member: f.member_id().to_owned(),
            name: name.to_owned(),
            mode: cert.fleet.as_str().to_owned(),
            generation: installed_generation,
            fingerprint_sha256: fp,
            last_result,
            last_seen: rfc3339(self.clock.now()),
        };
        let unchanged = link
            .last_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|s| {
                s.generation == status.generation
                    && s.fingerprint_sha256 == status.fingerprint_sha256
                    && s.last_result == status.last_result
            });
        if unchanged {
            return;
        }
        match f.put_status(&status).await {
            Ok(()) => {
                link.last_status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_owned(), status);
            }
            Err(e) => {
                tracing::debug!(certificate = %name, error = %e, "could not write the fleet status")
            }
        }
    }
}

/// Fences every billed call of a deploy run through etcd.
struct FleetGate<'a> {
    f: &'a Coordinator,
    name: &'a str,
    generation: u64,
    held: HashSet<String>,
    clock: crate::clock::Clock,
}

impl FleetGate<'_> {
    fn progress(&self, state: UnitState, scm_id: &str, detail: Option<String>) -> UnitProgress {
        UnitProgress {
            state,
            member: self.f.member_id().to_owned(),
            at: rfc3339(self.clock.now()),
            scm_id: (!scm_id.is_empty()).then(|| scm_id.to_owned()),
            detail,
        }
    }
}

impl DeployGate for FleetGate<'_> {
    fn hold(&self, unit_key: &str) -> Option<String> {
        self.held.contains(unit_key).then(|| {
            "needs a human: an earlier call's outcome is unknown (see `ccm-agent fleet status`)"
                .to_owned()
        })
    }

    fn before_import(&self) -> GateFuture<'_> {
        Box::pin(async move {
            self.f
                .fenced(self.name, "import into SCM", Vec::new())
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn before_call<'a>(&'a self, unit_keys: &'a [String], scm_id: &'a str) -> GateFuture<'a> {
        Box::pin(async move {
            let units: Vec<(String, UnitProgress)> = unit_keys
                .iter()
                .map(|k| (k.clone(), self.progress(UnitState::Calling, scm_id, None)))
                .collect();
            self.f
                .set_units(self.name, self.generation, &units)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn after_call<'a>(
        &'a self,
        outcomes: &'a [(String, Result<(), String>)],
        scm_id: &'a str,
    ) -> GateFuture<'a> {
        Box::pin(async move {
            let units: Vec<(String, UnitProgress)> = outcomes
                .iter()
                .map(|(k, r)| {
                    let p = match r {
                        Ok(()) => self.progress(UnitState::Done, scm_id, None),
                        Err(m) => self.progress(UnitState::Failed, scm_id, Some(m.clone())),
                    };
                    (k.clone(), p)
                })
                .collect();
            self.f
                .set_units(self.name, self.generation, &units)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(fp: &str, not_after: &str) -> super::super::renew::CertSummary {
        let t = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .expect("time")
        };
        let pem = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()])
            .expect("certificate")
            .cert
            .pem();
        let info = crate::pki::parse_cert(&pem).expect("parses");
        super::super::renew::CertSummary {
            fingerprint_sha256: fp.into(),
            serial: "01".into(),
            subject_cn: None,
            issuer_cn: None,
            not_before: t("2029-01-01T00:00:00Z"),
            not_after: t(not_after),
            cert_path: "/x".into(),
            info: Some(Box::new(info)),
        }
    }

    fn generation(fp: &str, not_after: &str) -> Generation {
        Generation {
            generation: 3,
            cloud_id: "c".into(),
            fingerprint_sha256: fp.into(),
            not_after: not_after.into(),
            not_before: "2029-01-01T00:00:00Z".into(),
            issued_by: "a".into(),
            source: "pca".into(),
        }
    }

    #[test]
    fn when_a_member_installs_the_published_generation() {
        let g = generation("AA", "2030-01-01T00:00:00Z");
        assert!(should_install(None, &g, false), "nothing installed");
        let same = summary("aa", "2030-01-01T00:00:00Z");
        assert!(!should_install(Some(&same), &g, true), "already installed");
        let older = summary("BB", "2029-06-01T00:00:00Z");
        assert!(should_install(Some(&older), &g, false));
        assert!(should_install(Some(&older), &g, true));
        // Renewed alone during an outage, fresher than a generation that is due anyway: kept
        // until the next generation; a fresh generation replaces it.
        let fresher = summary("CC", "2031-01-01T00:00:00Z");
        assert!(!should_install(Some(&fresher), &g, true));
        assert!(should_install(Some(&fresher), &g, false));
    }
}
