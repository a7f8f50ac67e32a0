//! The long-running agent: a startup pass (recover interrupted installs, resume journaled
//! issuances, check everything), then a check of every managed certificate on each tick of the
//! cron schedule, with bounded concurrency, failure backoff per certificate, metrics, and a
//! status file for `ccm-agent status`. A failed certificate is logged, counted and retried
//! later; it never stops the loop or the other certificates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use super::pass::{CycleSummary, PassError, PassResults};
use super::renew::{CheckOptions, Renewer};
use crate::clock::Clock;
use crate::cloud::{Client, Credentials};
use crate::config::{CertificateSource, Config, ManagedCertificate};
use crate::metrics::{Metrics, Readiness};
use crate::state::{CertStatus, StateLock, StatusFile};

/// How long a pass in progress may run on after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Build the cloud client from the configuration, reporting requests to `metrics`.
pub fn build_client(
    config: &Config,
    credentials: Credentials,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<Client> {
    let mut builder =
        Client::builder(config.cloud.endpoints.clone(), credentials).timeout(config.cloud.timeout);
    if let Some(bundle) = &config.cloud.ca_bundle {
        let pem = std::fs::read(bundle)
            .with_context(|| format!("cloud.ca_bundle: reading {}", bundle.display()))?;
        builder = builder.add_root_pem(pem);
    }
    if let Some(m) = metrics {
        builder = builder.observer(m);
    }
    Ok(builder.build()?)
}

/// Everything a running agent shares between its tasks.
pub struct Agent {
    pub(super) config: std::sync::RwLock<Arc<Config>>,
    pub(super) renewer: Arc<Renewer>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) readiness: Readiness,
    pub(super) clock: Clock,
    pub(super) status: Mutex<HashMap<String, CertStatus>>,
    /// Held while the status file is written (once per pass; passes can overlap when a
    /// `renew` runs in-process beside a pass), through one fixed temp name.
    pub(super) status_write: Mutex<()>,
    /// Per certificate: failures in a row and when the next attempt may run (wall time).
    pub(super) backoff: Mutex<HashMap<String, (u32, Instant)>>,
    pub(super) client: Client,
    pub(super) reload_metrics: crate::reload::metrics::ReloadMetrics,
    pub(super) deploy_metrics: prometheus::IntCounterVec,
    /// Fleet mode: the coordinator link, attached by the daemon when `[fleet]` is configured.
    #[cfg(feature = "fleet")]
    pub(super) fleet: std::sync::OnceLock<Arc<super::fleet::FleetLink>>,
}

impl Agent {
    /// The agent of a daemon or a `renew`: opens the state directory (creating it) and
    /// recovers interrupted installs.
    pub fn new(
        config: Arc<Config>,
        client: Client,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        Self::open(config, client, metrics, readiness, clock, false)
    }

    /// The agent of a dry run: creates, moves and deletes nothing (see
    /// [`Renewer::read_only`]).
    pub fn read_only(
        config: Arc<Config>,
        client: Client,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        Self::open(config, client, metrics, readiness, clock, true)
    }

    fn open(
        config: Arc<Config>,
        client: Client,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        clock: Clock,
        read_only: bool,
    ) -> anyhow::Result<Self> {
        if !read_only {
            crate::fsio::create_private_dir(&config.agent.state_dir).context("agent.state_dir")?;
        }
        let reload_metrics = crate::reload::metrics::ReloadMetrics::register(metrics.registry())
            .context("registering reload metrics")?;
        let deploy_metrics = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ccm_agent_deploys_total",
                "Pushes and deployments to cloud targets, per region or resource, by result (ok, error).",
            ),
            &["name", "service", "target", "result"],
        )?;
        metrics
            .registry()
            .register(Box::new(deploy_metrics.clone()))
            .context("registering deploy metrics")?;
        let renewer = if read_only {
            Renewer::read_only(
                client.clone(),
                &config.agent.state_dir,
                clock.clone(),
                config.agent.effective_host_id(),
            )
        } else {
            Renewer::new(
                client.clone(),
                &config.agent.state_dir,
                clock.clone(),
                config.agent.effective_host_id(),
            )
            .context("opening the state directory")?
        };
        let previous = StatusFile::load(&config.agent.state_dir).unwrap_or_default();
        let status = previous
            .certificates
            .into_iter()
            .filter(|c| config.certificate(&c.name).is_some())
            .map(|c| (c.name.clone(), c))
            .collect();
        let agent = Self {
            config: std::sync::RwLock::new(config),
            renewer: Arc::new(renewer),
            metrics,
            readiness,
            clock,
            status: Mutex::new(status),
            status_write: Mutex::new(()),
            backoff: Mutex::new(HashMap::new()),
            client,
            reload_metrics,
            deploy_metrics,
            #[cfg(feature = "fleet")]
            fleet: std::sync::OnceLock::new(),
        };
        if !read_only {
            // Before anything calls the cloud: what is installed is exported even if every
            // call of the first pass fails. The leaf only: the first pass reads the whole set.
            for cert in &agent.config().certificates {
                let leaf = agent.renewer.installed_leaf(cert);
                agent.export_installed(&cert.name, source_name(cert), leaf.as_ref());
            }
        }
        Ok(agent)
    }

    /// The configuration in force (replaced by [`Agent::replace_config`]).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Take a new, already validated configuration: the certificates, their policies, outputs,
    /// reloads and cloud targets. Settings that only a restart changes (state directory,
    /// endpoints and credentials, metrics address, schedule, `[fleet]`) are kept, with a warning.
    pub fn replace_config(&self, new: Arc<Config>) {
        let old = self.config();
        if new.agent.state_dir != old.agent.state_dir
            || new.cloud.endpoints != old.cloud.endpoints
            || new.metrics.listen != old.metrics.listen
            || new.agent.schedule.expression() != old.agent.schedule.expression()
            || new.fleet != old.fleet
        {
            tracing::warn!(
                "state_dir, cloud endpoints, metrics.listen, schedule and [fleet] changes take effect at the next restart"
            );
        }
        let names: Vec<&str> = new.certificates.iter().map(|c| c.name.as_str()).collect();
        self.metrics.retain_certificates(names.iter().copied());
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| names.contains(&name.as_str()));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    pub fn renewer(&self) -> &Renewer {
        &self.renewer
    }

    /// Resume issuances a crash interrupted, before the first check.
    pub async fn resume(&self) {
        let config = self.config();
        for result in self.renewer.resume(&config.certificates).await {
            match result {
                Ok(report) => {
                    tracing::info!(
                        certificate = %report.name,
                        action = %report.action.as_str(),
                        cloud_id = report.action.cloud_id().map(tracing::field::display),
                        "resumed an interrupted renewal"
                    );
                    self.record_ok(&report);
                }
                Err(e) => tracing::warn!(error = %e, "could not resume an interrupted renewal"),
            }
        }
    }

    /// Ends every certificate's wait after a failure, so the next pass checks them all (SIGUSR1,
    /// "check now"). The failure counts stay: the next failure backs off further.
    pub fn end_backoffs(&self) {
        let now = Instant::now();
        for (_, until) in self
            .backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            *until = (*until).min(now);
        }
    }

    /// A one-line summary for logs (and systemd STATUS= later).
    pub fn summary_line(&self, summary: &CycleSummary) -> String {
        summary.to_string()
    }

    /// How long until the next certificate-specific wake-up (renewal time or end of a backoff),
    /// between 1 s and 1 h; the cron schedule covers everything else.
    pub fn next_wake(&self) -> Duration {
        let cap = Duration::from_secs(3600);
        let now = self.clock.now();
        let by_renewal = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|s| s.next_renewal.as_deref())
            .filter_map(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            // A time already past was handled by the last pass (renewed, failed into backoff,
            // or waiting for SCM to hold a newer certificate): it must not spin the loop.
            .filter(|t| *t > now)
            .map(|t| Duration::try_from(t - now).unwrap_or(Duration::ZERO))
            .min()
            .unwrap_or(cap);
        let instant_now = Instant::now();
        let by_backoff = self
            .backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(_, until)| until.saturating_duration_since(instant_now))
            .min()
            .unwrap_or(cap);
        by_renewal
            .min(by_backoff)
            .clamp(Duration::from_secs(1), cap)
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

pub fn source_name(cert: &ManagedCertificate) -> &'static str {
    match cert.source {
        CertificateSource::Pca(_) => "pca",
        CertificateSource::Scm(_) => "scm",
    }
}

/// Called with the summary of every pass.
pub type CycleCallback = Box<dyn Fn(&CycleSummary) + Send + Sync>;

/// How [`run`] is wired.
pub struct RunOptions {
    pub clock: Clock,
    /// Serve metrics on this already-bound listener (the caller binds it so errors surface
    /// before anything else starts); `None` disables the endpoint.
    pub metrics_listener: Option<tokio::net::TcpListener>,
    pub shutdown: CancellationToken,
    /// Called after every pass with its summary (the demo prints progress from it).
    pub on_cycle: Option<CycleCallback>,
    /// systemd notifications (a no-op outside systemd).
    pub notifier: crate::systemd::Notifier,
    /// Re-reads and validates the configuration on SIGHUP; `None` ignores SIGHUP.
    pub reload_config: Option<ConfigLoader>,
    /// The configuration file: when set (with `reload_config`), a change to it is reloaded
    /// like a SIGHUP.
    pub config_path: Option<PathBuf>,
}

/// Why the file watcher woke the loop.
enum Watched {
    Output(PathBuf),
    Config,
}

/// What the output files looked like when the agent last knew them: taken of every output
/// before a pass, and again after the pass for the certificates whose files the pass itself
/// changed (an install, a restore, a rollback), but only for a file whose content is still what
/// the install wrote (the last good version): someone may have changed it since, while the pass
/// went on. A watch event on a file whose stamp still matches is the echo of the agent's own
/// write and starts no pass; any other change, or a file not known, does.
#[derive(Default)]
struct OutputStamps(std::collections::HashMap<PathBuf, Option<crate::fsio::FileStamp>>);

impl OutputStamps {
    fn take(&mut self, cert: &crate::config::ManagedCertificate) {
        for path in cert.output.paths() {
            self.0
                .insert(path.to_path_buf(), crate::fsio::FileStamp::of(path));
        }
    }

    fn take_all(&mut self, config: &Config) {
        self.0.clear();
        for cert in &config.certificates {
            self.take(cert);
        }
    }

    /// After a pass: the certificates whose files the pass wrote, each file only if it still
    /// holds what the install wrote (and did not change while it was compared).
    fn take_written(&mut self, pass: &PassResults, state: &crate::state::StateDir) {
        for (cert, result) in &pass.results {
            let wrote = match result {
                Ok(report) => report.install_changed,
                // A failed reload restored the previous files.
                Err(PassError::Reload(_)) => true,
                Err(_) => false,
            };
            if !wrote {
                continue;
            }
            let good = crate::install::last_good(state, &cert.name).ok().flatten();
            for path in cert.output.paths() {
                let before = crate::fsio::FileStamp::of(path);
                let as_installed = good
                    .as_ref()
                    .and_then(|v| v.files.iter().find(|f| f.target == path))
                    .is_some_and(|f| std::fs::read(path).is_ok_and(|b| b == f.contents()));
                if as_installed && before.is_some() && before == crate::fsio::FileStamp::of(path) {
                    self.0.insert(path.to_path_buf(), before);
                } else {
                    self.0.remove(path);
                }
            }
        }
    }

    /// Whether `path` is not as the agent last knew it (or was never known).
    fn changed(&self, path: &Path) -> bool {
        self.0
            .get(path)
            .is_none_or(|known| *known != crate::fsio::FileStamp::of(path))
    }
}

/// Watch the directories of every output file (a deleted, truncated or replaced certificate or
/// key starts a pass at once, which restores the last good version without calling the cloud),
/// the configuration file and the drop-in directories of its `include` (a change reloads the
/// configuration). Directories, not files: installs and editors' saves are renames.
fn watch_files(
    config: &Config,
    config_path: Option<&Path>,
) -> anyhow::Result<(
    notify::RecommendedWatcher,
    tokio::sync::mpsc::UnboundedReceiver<Watched>,
)> {
    use notify::Watcher as _;
    let outputs: std::collections::HashSet<PathBuf> = config
        .certificates
        .iter()
        .flat_map(|c| c.output.paths().into_iter().map(Path::to_path_buf))
        .collect();
    let config_path = config_path.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watched_outputs = outputs.clone();
    let watched_config = config_path.clone();
    let drop_in_dirs: std::collections::HashSet<PathBuf> =
        config.include_dirs.iter().cloned().collect();
    let watched_drop_ins = drop_in_dirs.clone();
    // A drop-in: a visible `.toml` file in an include directory (written, added or removed).
    let is_drop_in = move |path: &Path| {
        path.parent().is_some_and(|d| watched_drop_ins.contains(d))
            && path.extension().is_some_and(|e| e == "toml")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        for path in &event.paths {
            if watched_outputs.contains(path) {
                let _ = tx.send(Watched::Output(path.clone()));
            } else if watched_config.as_deref() == Some(path.as_path()) || is_drop_in(path) {
                let _ = tx.send(Watched::Config);
            }
        }
    })
    .context("starting the file watcher")?;
    let mut dirs: std::collections::BTreeSet<PathBuf> = outputs
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    if let Some(parent) = config_path.as_deref().and_then(Path::parent) {
        dirs.insert(parent.to_path_buf());
    }
    dirs.extend(drop_in_dirs);
    for dir in dirs {
        // A directory the first install creates is watched from the next start; the schedule
        // still covers it meanwhile.
        if dir.is_dir()
            && let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes");
        }
    }
    Ok((watcher, rx))
}

/// Loads and validates the configuration again (SIGHUP).
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Run the agent until `shutdown` is cancelled.
pub async fn run(
    config: Arc<Config>,
    credentials: Credentials,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let mut lock = StateLock::acquire(&config.agent.state_dir, "daemon")?;
    let metrics = Metrics::with_clock(opts.clock.clone());
    let readiness = Readiness::new();
    let client = build_client(&config, credentials, Some(metrics.clone()))?;
    let agent = Arc::new(Agent::new(
        config.clone(),
        client,
        metrics.clone(),
        readiness.clone(),
        opts.clock.clone(),
    )?);

    let server = opts.metrics_listener.map(|listener| {
        tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics on /metrics, health on /healthz and /readyz");
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            readiness.clone(),
            opts.shutdown.clone(),
        ))
    });

    // Ticks of the cron schedule wake the loop through this.
    let tick = Arc::new(tokio::sync::Notify::new());
    let scheduler = start_scheduler(config.agent.schedule.expression(), tick.clone()).await?;

    let notifier = opts.notifier.clone();
    let mut watchdog = notifier.watchdog_interval().map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // SIGHUP is taken from here on, before the startup check: one sent while that check runs
    // (or right after READY=1) reloads the configuration once the loop starts, instead of
    // killing the process with the signal's default action.
    let mut hangup = match &opts.reload_config {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("listening for SIGHUP")?,
        ),
        None => None,
    };
    // SIGUSR1: check every certificate now (what an operator wants after fixing the cause of a
    // failure, without waiting for the schedule or the backoff).
    let mut check_now =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .context("listening for SIGUSR1")?;
    #[cfg(feature = "fleet")]
    let fleet = start_fleet(&agent, &config, &metrics).await?;
    #[cfg(not(feature = "fleet"))]
    let fleet: Option<Arc<tokio::sync::Notify>> = None;
    agent.resume().await;
    let mut stamps = OutputStamps::default();
    stamps.take_all(&agent.config());
    if config.agent.check_on_start {
        let pass = run_cycle(&agent, watchdog.as_mut(), &notifier, &opts.shutdown).await;
        stamps.take_written(&pass, agent.renewer().state_dir());
        let summary = pass.summary;
        tracing::info!(%summary, "startup check finished");
        if let Some(cb) = &opts.on_cycle {
            cb(&summary);
        }
    }
    // Watching before ready: a file deleted right after READY=1 is noticed.
    let (_watcher, mut watched) = watch_files(&config, opts.config_path.as_deref())?;
    // Ready: configuration loaded, metrics listener bound, first check finished.
    readiness.set_ready(true);
    notifier.ready();

    // The lock is checked every few seconds (a stat), so that a deleted state directory is
    // noticed and its lock taken again before a `renew` can slip in beside this daemon.
    let mut lock_check = tokio::time::interval(LOCK_CHECK_EVERY);
    lock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fatal = None;
    'outer: loop {
        // Besides the schedule, wake at the earliest certificate renewal time and when a
        // failed certificate's backoff ends.
        let wake = agent.next_wake();
        let sleep = tokio::time::sleep(wake);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = opts.shutdown.cancelled() => break,
                _ = tick.notified() => break,
                _ = &mut sleep => break,
                _ = next_watchdog(watchdog.as_mut()) => notifier.watchdog(),
                _ = lock_check.tick() => match retake_lock(&mut lock) {
                    Ok(false) => {}
                    // Run a pass now: it recreates the layout of the state directory.
                    Ok(true) => break,
                    Err(e) => {
                        fatal = Some(e);
                        break 'outer;
                    }
                },
                _ = fleet_changed(fleet.as_deref()) => {
                    // Let a burst of changes (a holder's deploy marks) settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    fleet_pass(&agent, &opts.shutdown).await;
                    // The pass may have set an earlier wake (the end of a rollout's soak).
                    sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + agent.next_wake());
                    continue;
                }
                _ = check_now.recv() => {
                    tracing::info!("SIGUSR1: checking every certificate now");
                    agent.end_backoffs();
                    break;
                }
                _ = next_hangup(hangup.as_mut()) => {
                    if let Some(load) = &opts.reload_config {
                        reload_config(&agent, load, &notifier);
                    }
                    break;
                }
                Some(what) = watched.recv() => {
                    // Let a burst of events (an editor's save, our own install) settle.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut events = vec![what];
                    while let Ok(more) = watched.try_recv() {
                        events.push(more);
                    }
                    let config_changed = events.iter().any(|e| matches!(e, Watched::Config));
                    let changed: std::collections::BTreeSet<&Path> = events
                        .iter()
                        .filter_map(|e| match e {
                            Watched::Output(p) if stamps.changed(p) => Some(p.as_path()),
                            _ => None,
                        })
                        .collect();
                    if config_changed {
                        if let Some(load) = &opts.reload_config {
                            reload_config(&agent, load, &notifier);
                        }
                    } else if let Some(first) = changed.first() {
                        tracing::info!(
                            path = %first.display(),
                            files = changed.len(),
                            "an output file changed; checking"
                        );
                    } else {
                        // Only the echo of the agent's own installs: nothing to check.
                        tracing::debug!(events = events.len(), "own writes; not checking");
                        continue;
                    }
                    break;
                }
            }
        }
        if opts.shutdown.is_cancelled() {
            break;
        }
        if let Err(e) = retake_lock(&mut lock) {
            fatal = Some(e);
            break;
        }
        stamps.take_all(&agent.config());
        let pass = run_cycle(&agent, watchdog.as_mut(), &notifier, &opts.shutdown).await;
        stamps.take_written(&pass, agent.renewer().state_dir());
        let summary = pass.summary;
        tracing::info!(%summary, "check finished");
        if let Some(cb) = &opts.on_cycle {
            cb(&summary);
        }
    }
    notifier.stopping();
    tracing::info!("shutting down");
    #[cfg(feature = "fleet")]
    if let Some(link) = agent.fleet() {
        link.coordinator.stop().await;
    }
    let mut scheduler = scheduler;
    let _ = scheduler.shutdown().await;
    if fatal.is_some() {
        opts.shutdown.cancel();
    }
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    fatal.map_or(Ok(()), Err)
}

/// Waits for a change of the fleet's state (forever without a fleet).
async fn fleet_changed(changed: Option<&tokio::sync::Notify>) {
    match changed {
        Some(n) => n.notified().await,
        None => std::future::pending::<()>().await,
    }
}

/// After a fleet change: a pass over the fleet's certificates only (not the whole schedule's
/// work), unless shutting down.
async fn fleet_pass(agent: &Arc<Agent>, shutdown: &CancellationToken) {
    #[cfg(feature = "fleet")]
    {
        agent.on_fleet_change();
        let names: Vec<String> = agent
            .config()
            .certificates
            .iter()
            .filter(|c| c.fleet != crate::fleet::FleetMode::Local)
            .map(|c| c.name.clone())
            .collect();
        if names.is_empty() || shutdown.is_cancelled() {
            return;
        }
        let summary = agent
            .run_pass(&names, CheckOptions::default())
            .await
            .summary;
        tracing::debug!(%summary, "fleet change handled");
    }
    #[cfg(not(feature = "fleet"))]
    let _ = (agent, shutdown);
}

/// Joins the fleet when `[fleet]` is configured: starts the coordinator (an unreachable etcd
/// is not fatal), attaches it to the agent, and waits a little for it so that the first pass
/// is coordinated. Returns what wakes the loop on a fleet change.
#[cfg(feature = "fleet")]
async fn start_fleet(
    agent: &Arc<Agent>,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<tokio::sync::Notify>>> {
    let Some(settings) = &config.fleet else {
        return Ok(None);
    };
    let password = match &settings.auth {
        Some(a) => Some(
            a.password
                .resolve(&|k| std::env::var(k).ok())
                .map_err(|e| anyhow::anyhow!("fleet.password ({}): {e}", a.password))?,
        ),
        None => None,
    };
    let member = crate::fleet::keys::Member {
        member_id: settings.member_id.clone(),
        host_id: config.agent.effective_host_id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        serves: config
            .certificates
            .iter()
            .filter(|c| c.fleet != crate::fleet::FleetMode::Local)
            .map(|c| format!("{}:{}", c.name, c.fleet))
            .collect(),
        started_at: super::renew::rfc3339(time::OffsetDateTime::now_utc()),
    };
    let coordinator = crate::fleet::Coordinator::start(settings.clone(), member, password);
    let changed = coordinator.changed();
    let link = super::fleet::FleetLink::new(coordinator.clone(), metrics.registry())
        .context("registering fleet metrics")?;
    agent.attach_fleet(Arc::new(link));
    let deadline = Instant::now() + settings.timeout * 2;
    while !coordinator.is_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.on_fleet_change();
    if !coordinator.is_up() {
        tracing::warn!("the fleet coordinator (etcd) is not reachable yet: starting alone");
    }
    Ok(Some(changed))
}

/// How often the daemon checks that its lock is still the state directory's.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// [`StateLock::ensure`], logged: `Ok(true)` when the lock had to be taken again.
fn retake_lock(lock: &mut StateLock) -> anyhow::Result<bool> {
    let retaken = lock.ensure()?;
    if retaken {
        tracing::warn!(
            lock = %lock.path().display(),
            "the state directory's lock file was removed under the running daemon; took it again and recreating the state directory"
        );
    }
    Ok(retaken)
}

/// One pass over the certificates, feeding the systemd watchdog while it runs (the loop is
/// alive as long as it is making progress here), then STATUS= with the summary.
async fn run_cycle(
    agent: &Arc<Agent>,
    mut watchdog: Option<&mut tokio::time::Interval>,
    notifier: &crate::systemd::Notifier,
    shutdown: &CancellationToken,
) -> PassResults {
    let check = agent.run_pass(&[], CheckOptions::default());
    tokio::pin!(check);
    let pass = loop {
        tokio::select! {
            s = &mut check => break s,
            _ = next_watchdog(watchdog.as_deref_mut()) => notifier.watchdog(),
            _ = shutdown.cancelled() => {
                // Stop taking new work; give the pass in progress a grace period. A file swap
                // runs on a blocking thread and completes even if the pass is dropped here.
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut check).await {
                    Ok(s) => break s,
                    Err(_) => {
                        tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown: abandoning the pass in progress");
                        break PassResults {
                            summary: CycleSummary::default(),
                            results: Vec::new(),
                        };
                    }
                }
            }
        }
    };
    notifier.status(&pass.summary.to_string());
    pass
}

/// SIGHUP: validate the new configuration first; an invalid one is rejected with its errors
/// and the running configuration stays.
fn reload_config(agent: &Agent, load: &ConfigLoader, notifier: &crate::systemd::Notifier) {
    notifier.reloading();
    match load() {
        Ok(new) => {
            tracing::info!(
                certificates = new.certificates.len(),
                "configuration reloaded"
            );
            agent.replace_config(Arc::new(new));
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload rejected; the running configuration stays")
        }
    }
    notifier.ready();
}

async fn next_hangup(hangup: Option<&mut tokio::signal::unix::Signal>) {
    match hangup {
        Some(h) => {
            h.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

async fn next_watchdog(watchdog: Option<&mut tokio::time::Interval>) {
    match watchdog {
        Some(w) => {
            w.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

async fn start_scheduler(
    expression: &str,
    tick: Arc<tokio::sync::Notify>,
) -> anyhow::Result<tokio_cron_scheduler::JobScheduler> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    let scheduler = JobScheduler::new()
        .await
        .context("starting the scheduler")?;
    let job = Job::new_async(expression, move |_id, _lock| {
        let tick = tick.clone();
        Box::pin(async move {
            tick.notify_one();
        })
    })
    .with_context(|| format!("agent.schedule {expression:?}"))?;
    scheduler.add(job).await.context("scheduling checks")?;
    scheduler.start().await.context("starting the scheduler")?;
    Ok(scheduler)
}
