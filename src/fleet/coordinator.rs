//! The etcd side of fleet mode: one connection, this member's lease (granted, kept alive,
//! granted again after it was lost), its registration on that lease, a watch-fed cache of the
//! certificates' published state and locks, and the fenced writes.
//!
//! # Fencing
//! A certificate's lock is the key `{prefix}/locks/{name}`, created in a transaction only when
//! it does not exist (`create_revision == 0`), holding the member id and attached to the
//! member's lease. Every write of shared state, and the mark written before every billed cloud
//! call, is a transaction whose compare checks that the lock's value is this member's id AND
//! that its lease is this member's current lease. A member paused past its lease (SIGSTOP, a
//! stall, a partition) lost the key when the lease expired; whether or not another member took
//! it since, the compare fails and the write is refused ([`FleetError::Fenced`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio_util::sync::CancellationToken;

use super::config::FleetSettings;
use super::keys::{Generation, Issuing, Keys, Member, MemberStatus, UnitProgress};
use super::rollout::{self, Assessment, Mark, MemberResult, Rollout, Stage};
use crate::cloud::Secret;

/// What went wrong with a fleet operation.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No session: etcd is unreachable, or this member's lease is being granted again.
    #[error("the fleet coordinator (etcd) is unavailable: {0}")]
    Unavailable(String),
    /// The fenced transaction was refused: this member does not hold the lock (any more).
    #[error(
        "refused by the fence: {what} for certificate {name}: this member no longer holds its lock (its lease expired or another member took it)"
    )]
    Fenced { name: String, what: String },
    #[error("etcd: {0}")]
    Etcd(String),
    /// A command that does not apply to the fleet's state.
    #[error("{0}")]
    Refused(String),
    #[error("fleet state {key}: {detail}")]
    Format { key: String, detail: String },
}

impl From<etcd_client::Error> for FleetError {
    fn from(e: etcd_client::Error) -> Self {
        FleetError::Etcd(e.to_string())
    }
}

/// A cached key: its value and the lease it is attached to (0: none).
#[derive(Clone, Debug)]
struct Kv {
    value: Vec<u8>,
    lease: i64,
}

/// One member's connection to the fleet. Share it (`Arc`); [`Coordinator::start`] spawns the
/// session (lease, keep-alive, registration) and the watch, which run until
/// [`Coordinator::stop`].
pub struct Coordinator {
    settings: FleetSettings,
    keys: Keys,
    password: Option<Secret>,
    member: Member,
    client: tokio::sync::Mutex<Option<Client>>,
    lease: AtomicI64,
    /// The lease of the session before this one: its keys are this member's own leftovers.
    previous_lease: AtomicI64,
    up: AtomicBool,
    synced: AtomicBool,
    cache: Mutex<BTreeMap<String, Kv>>,
    changed: Arc<tokio::sync::Notify>,
    requests: AtomicU64,
    stop: CancellationToken,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("member", &self.member.member_id)
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// The options of an etcd connection from the settings (TLS files are read here).
pub fn connect_options(
    settings: &FleetSettings,
    password: Option<&Secret>,
) -> Result<ConnectOptions, FleetError> {
    let mut opts = ConnectOptions::new()
        .with_timeout(settings.timeout)
        .with_connect_timeout(settings.timeout)
        .with_keep_alive(settings.lease_ttl / 2, settings.timeout);
    if let (Some(auth), Some(pw)) = (&settings.auth, password) {
        // etcd's auth tokens expire (5 minutes with the default simple tokens): get a new one
        // when a request finds it expired.
        opts = opts
            .with_user(auth.user.clone(), pw.expose().to_owned())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &settings.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| FleetError::Etcd(format!("fleet TLS {}: {e}", p.display())))
        };
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(t);
    }
    Ok(opts)
}

/// Connects (the client connects lazily; requests fail while etcd is unreachable).
pub async fn connect(
    settings: &FleetSettings,
    password: Option<&Secret>,
) -> Result<Client, FleetError> {
    let opts = connect_options(settings, password)?;
    tokio::time::timeout(
        settings.timeout + Duration::from_secs(1),
        Client::connect(&settings.endpoints, Some(opts)),
    )
    .await
    .map_err(|_| FleetError::Unavailable("connecting timed out".into()))?
    .map_err(|e| FleetError::Unavailable(e.to_string()))
}

fn json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(bytes).map_err(|e| FleetError::Format {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Coordinator {
    /// Starts the session and the watch in the background and returns at once: an unreachable
    /// etcd is not an error here (the member works without the fleet, see [`Self::is_up`]).
    pub fn start(settings: FleetSettings, member: Member, password: Option<Secret>) -> Arc<Self> {
        let c = Arc::new(Coordinator {
            keys: Keys::new(&settings.prefix),
            settings,
            password,
            member,
            client: tokio::sync::Mutex::new(None),
            lease: AtomicI64::new(0),
            previous_lease: AtomicI64::new(0),
            up: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            cache: Mutex::new(BTreeMap::new()),
            changed: Arc::new(tokio::sync::Notify::new()),
            requests: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        tokio::spawn(c.clone().session());
        tokio::spawn(c.clone().watch());
        c
    }

    /// Stops the background tasks and revokes the lease (its locks and registration go at
    /// once instead of after the TTL).
    pub async fn stop(&self) {
        self.stop.cancel();
        let lease = self.lease.swap(0, Ordering::SeqCst);
        if lease != 0
            && let Some(mut client) = self.client.lock().await.clone()
        {
            let _ = tokio::time::timeout(self.settings.timeout, client.lease_revoke(lease)).await;
        }
        self.up.store(false, Ordering::SeqCst);
    }

    pub fn member_id(&self) -> &str {
        &self.member.member_id
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// This member's current lease (0: none).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Whether this member has a live lease and an up-to-date view of the fleet.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst) && self.synced.load(Ordering::SeqCst)
    }

    /// Notified when the fleet's state changes (a new generation, a lock released or lost,
    /// deploy progress) or the session comes up or goes down.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// etcd requests sent so far (unary calls, keep-alives, watch creations).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    async fn client(&self) -> Result<Client, FleetError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.settings, self.password.as_ref()).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    // ---- the session ----

    async fn session(self: Arc<Self>) {
        let mut failures: u32 = 0;
        while !self.stop.is_cancelled() {
            match self.establish().await {
                Ok(lease) => {
                    failures = 0;
                    tracing::info!(member = %self.member.member_id, lease, "joined the fleet");
                    self.up.store(true, Ordering::SeqCst);
                    self.changed.notify_one();
                    let why = self.keep_alive(lease).await;
                    if self.stop.is_cancelled() {
                        break;
                    }
                    tracing::warn!(member = %self.member.member_id, reason = %why, "lost the fleet session; joining again");
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(member = %self.member.member_id, error = %e, "cannot join the fleet (etcd); working alone until it can");
                    }
                    failures = failures.saturating_add(1);
                    if failures.is_multiple_of(4) {
                        // Connect afresh now and then (a new token, the endpoints again).
                        *self.client.lock().await = None;
                    }
                }
            }
            self.up.store(false, Ordering::SeqCst);
            let old = self.lease.swap(0, Ordering::SeqCst);
            if old != 0 {
                self.previous_lease.store(old, Ordering::SeqCst);
            }
            self.changed.notify_one();
            let delay = Duration::from_millis(500 * u64::from(failures.clamp(1, 4)));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Grants a lease and registers on it. A registration held by another live lease (another
    /// process with the same member id) is an error: two members with one id would share locks.
    async fn establish(&self) -> Result<i64, FleetError> {
        let mut client = self.client().await?;
        let ttl = i64::try_from(self.settings.lease_ttl.as_secs().max(1)).unwrap_or(10);
        self.count();
        let lease = client.lease_grant(ttl, None).await?.id();
        let key = self.keys.member(&self.member.member_id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                to_json(&self.member),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        self.count();
        let mut resp = client.txn(txn.clone()).await?;
        let registered_by = |resp: &etcd_client::TxnResponse| {
            resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
                _ => None,
            })
        };
        let previous = self.previous_lease.load(Ordering::SeqCst);
        if !resp.succeeded() && previous != 0 && registered_by(&resp) == Some(previous) {
            // This member's own session before an outage (etcd keeps leases across its
            // restarts): give it up, with the locks on it, and register again.
            self.count();
            let _ = client.lease_revoke(previous).await;
            self.count();
            resp = client.txn(txn).await?;
        }
        if !resp.succeeded() {
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
                _ => None,
            });
            self.count();
            let _ = client.lease_revoke(lease).await;
            return Err(FleetError::Etcd(format!(
                "member id {:?} is registered by another live process (lease {}); it expires within {}s if that process is gone",
                self.member.member_id,
                holder.unwrap_or_default(),
                ttl
            )));
        }
        self.lease.store(lease, Ordering::SeqCst);
        Ok(lease)
    }

    /// Keeps `lease` alive every third of its TTL; returns why it stopped.
    async fn keep_alive(&self, lease: i64) -> String {
        let Ok(mut client) = self.client().await else {
            return "no client".into();
        };
        self.count();
        let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => return e.to_string(),
        };
        let every = (self.settings.lease_ttl / 3).max(Duration::from_millis(300));
        loop {
            self.count();
            if let Err(e) = keeper.keep_alive().await {
                return e.to_string();
            }
            match tokio::time::timeout(self.settings.timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return "the lease expired".into(),
                Ok(Ok(None)) => return "the keep-alive stream ended".into(),
                Ok(Err(e)) => return e.to_string(),
                Err(_) => return "no keep-alive answer in time".into(),
            }
            tokio::select! {
                _ = self.stop.cancelled() => return "stopping".into(),
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    // ---- the watch ----

    async fn watch(self: Arc<Self>) {
        while !self.stop.is_cancelled() {
            if let Err(e) = self.watch_once().await {
                tracing::debug!(error = %e, "fleet watch interrupted; syncing again");
            }
            self.synced.store(false, Ordering::SeqCst);
            self.changed.notify_one();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// One snapshot of `certs/`, `locks/` and `members/` (one transaction, so one revision),
    /// then a watch of the three from the next revision, until the stream fails.
    async fn watch_once(&self) -> Result<(), FleetError> {
        let mut client = self.client().await?;
        let (certs, locks, members) = (self.keys.certs(), self.keys.locks(), self.keys.members());
        let txn = Txn::new().and_then([
            TxnOp::get(certs.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(locks.clone(), Some(GetOptions::new().with_prefix())),
            // With their values: a rollout picks canaries and admits members from the
            // registrations (which certificates each member serves).
            TxnOp::get(members.clone(), Some(GetOptions::new().with_prefix())),
        ]);
        self.count();
        let resp = client.txn(txn).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut snapshot = BTreeMap::new();
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                for kv in g.kvs() {
                    snapshot.insert(
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        Kv {
                            value: kv.value().to_vec(),
                            lease: kv.lease(),
                        },
                    );
                }
            }
        }
        self.count();
        let mut stream = client
            .watch(
                certs,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        self.count();
        stream
            .watch(
                locks,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        self.count();
        stream
            .watch(
                members,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
        self.synced.store(true, Ordering::SeqCst);
        self.changed.notify_one();
        loop {
            let msg = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                m = stream.message() => m?,
            };
            let Some(resp) = msg else {
                return Err(FleetError::Unavailable("the watch stream ended".into()));
            };
            if resp.canceled() {
                return Err(FleetError::Unavailable(format!(
                    "the watch was cancelled: {}",
                    resp.cancel_reason()
                )));
            }
            if resp.events().is_empty() {
                continue;
            }
            let members = self.keys.members();
            // Members joining or leaving change no certificate: no pass for them.
            let relevant = resp.events().iter().any(|ev| {
                ev.kv()
                    .is_some_and(|kv| !kv.key().starts_with(members.as_bytes()))
            });
            {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match ev.event_type() {
                        EventType::Put => {
                            cache.insert(
                                key,
                                Kv {
                                    value: kv.value().to_vec(),
                                    lease: kv.lease(),
                                },
                            );
                        }
                        EventType::Delete => {
                            cache.remove(&key);
                        }
                    }
                }
            }
            if relevant {
                self.changed.notify_one();
            }
        }
    }

    // ---- reading the cache ----

    fn cached(&self, key: &str) -> Option<Kv> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The published generation of `name`, as the watch last delivered it.
    pub fn generation(&self, name: &str) -> Option<Generation> {
        let key = self.keys.generation(name);
        let kv = self.cached(&key)?;
        match json(&key, &kv.value) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable generation");
                None
            }
        }
    }

    /// How many members are registered (as the watch last delivered).
    pub fn members(&self) -> usize {
        let prefix = self.keys.members();
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count()
    }

    /// Who holds the lock of `name`: (member id, lease).
    pub fn lock_holder(&self, name: &str) -> Option<(String, i64)> {
        self.cached(&self.keys.lock(name))
            .map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease))
    }

    /// Whether this member holds the lock of `name` (as far as the watch knows).
    pub fn holds(&self, name: &str) -> bool {
        let lease = self.lease_id();
        lease != 0
            && self
                .lock_holder(name)
                .is_some_and(|(m, l)| m == self.member.member_id && l == lease)
    }

    /// The deploy progress of `generation` of `name`: unit key → progress.
    pub fn units(&self, name: &str, generation: u64) -> BTreeMap<String, UnitProgress> {
        let prefix = self.keys.deploys(name, generation);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, kv)| {
                let unit = k[prefix.len()..].to_owned();
                json::<UnitProgress>(k, &kv.value).ok().map(|p| (unit, p))
            })
            .collect()
    }

    /// The generations of `name` that have deploy progress recorded.
    pub fn deploy_generations(&self, name: &str) -> Vec<u64> {
        let prefix = format!("{}/certs/{name}/deploy/", self.keys.prefix());
        let mut out: Vec<u64> = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| k[prefix.len()..].split('/').next()?.parse().ok())
            .collect();
        out.dedup();
        out
    }

    /// Forgets the deploy progress of earlier generations once a newer one is deployed
    /// everywhere and their SCM copies are gone (fenced).
    pub async fn forget_generations(
        &self,
        name: &str,
        generations: &[u64],
    ) -> Result<(), FleetError> {
        if generations.is_empty() {
            return Ok(());
        }
        let ops = generations
            .iter()
            .map(|g| {
                TxnOp::delete(
                    self.keys.deploys(name, *g),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
            })
            .collect();
        self.fenced(
            name,
            "forget the deploy progress of earlier generations",
            ops,
        )
        .await
    }

    /// The holder's issuing mark of `name`.
    pub fn issuing(&self, name: &str) -> Option<Issuing> {
        let key = self.keys.issuing(name);
        self.cached(&key).and_then(|kv| json(&key, &kv.value).ok())
    }

    /// The rollout of `name`, as the watch last delivered it.
    pub fn rollout(&self, name: &str) -> Option<Rollout> {
        let key = self.keys.rollout(name);
        let kv = self.cached(&key)?;
        match json(&key, &kv.value) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable rollout");
                None
            }
        }
    }

    /// The members' activation results for `generation` of `name`: member → result.
    pub fn results(&self, name: &str, generation: u64) -> BTreeMap<String, MemberResult> {
        let prefix = self.keys.results(name, generation);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, kv)| {
                json::<MemberResult>(k, &kv.value)
                    .ok()
                    .map(|r| (k[prefix.len()..].to_owned(), r))
            })
            .collect()
    }

    /// The live members that serve `name` as a shared certificate.
    pub fn serving(&self, name: &str) -> std::collections::BTreeSet<String> {
        let prefix = self.keys.members();
        let want = format!("{name}:shared");
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, kv)| json::<Member>(k, &kv.value).ok())
            .filter(|m| m.serves.contains(&want))
            .map(|m| m.member_id)
            .collect()
    }

    /// The rollout of the published generation of `name` and where it stands, if it has one.
    pub fn assess(
        &self,
        name: &str,
        now: time::OffsetDateTime,
    ) -> Option<(Generation, Rollout, Assessment)> {
        let g = self.generation(name)?;
        let r = self
            .rollout(name)
            .filter(|r| r.generation == g.generation)?;
        let a = rollout::assess(
            &r,
            &self.results(name, g.generation),
            &self.serving(name),
            now,
        );
        Some((g, r, a))
    }

    /// Writes this member's activation result for `generation` of `name` (its own key; not
    /// fenced).
    pub async fn put_result(
        &self,
        name: &str,
        generation: u64,
        result: &MemberResult,
    ) -> Result<(), FleetError> {
        let key = self.keys.result(name, generation, &self.member.member_id);
        self.count();
        self.client()
            .await?
            .put(key.clone(), to_json(result), None)
            .await?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            Kv {
                value: to_json(result),
                lease: 0,
            },
        );
        Ok(())
    }

    // ---- writes ----

    fn session_lease(&self) -> Result<i64, FleetError> {
        match self.lease_id() {
            0 => Err(FleetError::Unavailable("no lease".into())),
            l => Ok(l),
        }
    }

    /// Takes the lock of `name` if nobody holds it; `Ok(true)` when this member holds it now.
    pub async fn try_lock(&self, name: &str) -> Result<bool, FleetError> {
        let lease = self.session_lease()?;
        let key = self.keys.lock(name);
        let me = self.member.member_id.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        self.count();
        let resp = self.client().await?.txn(txn).await?;
        let held = resp.succeeded()
            || resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.value() == me.as_bytes() && kv.lease() == lease),
                _ => false,
            });
        if held {
            // The watch delivers it too; set it now so that `holds` is right at once.
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
                key,
                Kv {
                    value: me.into_bytes(),
                    lease,
                },
            );
        }
        Ok(held)
    }

    /// Runs `ops` only if this member holds the lock of `name` with its current lease.
    pub async fn fenced(&self, name: &str, what: &str, ops: Vec<TxnOp>) -> Result<(), FleetError> {
        let lease = self.session_lease().map_err(|_| FleetError::Fenced {
            name: name.to_owned(),
            what: what.to_owned(),
        })?;
        let key = self.keys.lock(name);
        let txn = Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, self.member.member_id.clone()),
                Compare::lease(key, CompareOp::Equal, lease),
            ])
            .and_then(ops);
        self.count();
        let resp = self.client().await?.txn(txn).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            tracing::warn!(certificate = %name, %what, member = %self.member.member_id, "fenced write refused: this member does not hold the lock");
            Err(FleetError::Fenced {
                name: name.to_owned(),
                what: what.to_owned(),
            })
        }
    }

    /// Releases the lock of `name` (fenced: only the holder deletes it).
    pub async fn unlock(&self, name: &str) -> Result<(), FleetError> {
        let key = self.keys.lock(name);
        self.fenced(name, "release the lock", vec![TxnOp::delete(key, None)])
            .await
    }

    /// Publishes a generation with its rollout, if it has one (fenced). The results of earlier
    /// generations go.
    pub async fn publish(
        &self,
        name: &str,
        g: &Generation,
        rollout: Option<&Rollout>,
    ) -> Result<(), FleetError> {
        let mut ops = vec![
            TxnOp::put(self.keys.generation(name), to_json(g), None),
            TxnOp::delete(self.keys.issuing(name), None),
            TxnOp::delete(
                self.keys.all_results(name),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ];
        ops.push(match rollout {
            Some(r) => TxnOp::put(self.keys.rollout(name), to_json(r), None),
            None => TxnOp::delete(self.keys.rollout(name), None),
        });
        self.fenced(name, &format!("publish generation {}", g.generation), ops)
            .await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            self.keys.generation(name),
            Kv {
                value: to_json(g),
                lease: 0,
            },
        );
        let results = self.keys.all_results(name);
        cache.retain(|k, _| !k.starts_with(&results));
        match rollout {
            Some(r) => {
                cache.insert(
                    self.keys.rollout(name),
                    Kv {
                        value: to_json(r),
                        lease: 0,
                    },
                );
            }
            None => {
                cache.remove(&self.keys.rollout(name));
            }
        }
        Ok(())
    }

    /// Marks, fenced, that this member is about to issue or export a replacement of generation
    /// `replaces`: the fence before the billed call.
    pub async fn mark_issuing(&self, name: &str, replaces: u64) -> Result<(), FleetError> {
        let mark = Issuing {
            member: self.member.member_id.clone(),
            replaces,
            at: crate::values::rfc3339(time::OffsetDateTime::now_utc()),
        };
        self.fenced(
            name,
            "mark an issuance",
            vec![TxnOp::put(self.keys.issuing(name), to_json(&mark), None)],
        )
        .await
    }

    /// Removes this member's issuing mark when the renewal issued nothing (fenced).
    pub async fn clear_issuing(&self, name: &str) -> Result<(), FleetError> {
        self.fenced(
            name,
            "clear the issuing mark",
            vec![TxnOp::delete(self.keys.issuing(name), None)],
        )
        .await
    }

    /// Records one deploy unit's progress (fenced).
    pub async fn set_unit(
        &self,
        name: &str,
        generation: u64,
        unit: &str,
        progress: &UnitProgress,
    ) -> Result<(), FleetError> {
        self.set_units(name, generation, &[(unit.to_owned(), progress.clone())])
            .await
    }

    /// Records several deploy units' progress in one fenced transaction.
    pub async fn set_units(
        &self,
        name: &str,
        generation: u64,
        units: &[(String, UnitProgress)],
    ) -> Result<(), FleetError> {
        if units.is_empty() {
            return Ok(());
        }
        let ops: Vec<TxnOp> = units
            .iter()
            .map(|(u, p)| TxnOp::put(self.keys.unit(name, generation, u), to_json(p), None))
            .collect();
        let what = format!(
            "mark {} deploy unit(s) {}",
            units.len(),
            units.first().map(|(_, p)| p.state.as_str()).unwrap_or("")
        );
        self.fenced(name, &what, ops).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (u, p) in units {
            cache.insert(
                self.keys.unit(name, generation, u),
                Kv {
                    value: to_json(p),
                    lease: 0,
                },
            );
        }
        Ok(())
    }

    /// Writes what this member has installed of a certificate (not fenced: it is this
    /// member's own key; written when it changes).
    pub async fn put_status(&self, status: &MemberStatus) -> Result<(), FleetError> {
        let key = self.keys.status(&status.member, &status.name);
        self.count();
        self.client().await?.put(key, to_json(status), None).await?;
        Ok(())
    }
}

/// Everything `ccm-agent fleet status` shows, read once.
#[derive(Clone, Debug, Default)]
pub struct FleetSnapshot {
    pub members: Vec<Member>,
    pub generations: BTreeMap<String, Generation>,
    /// Certificate → (holder, lease).
    pub locks: BTreeMap<String, String>,
    pub statuses: Vec<MemberStatus>,
    /// Certificate → generation → unit → progress.
    pub units: BTreeMap<String, BTreeMap<u64, BTreeMap<String, UnitProgress>>>,
    /// Certificate → its rollout.
    pub rollouts: BTreeMap<String, Rollout>,
    /// Certificate → generation → member → activation result.
    pub results: BTreeMap<String, BTreeMap<u64, BTreeMap<String, MemberResult>>>,
}

impl FleetSnapshot {
    /// The live members serving `name` as a shared certificate.
    pub fn serving(&self, name: &str) -> std::collections::BTreeSet<String> {
        let want = format!("{name}:shared");
        self.members
            .iter()
            .filter(|m| m.serves.contains(&want))
            .map(|m| m.member_id.clone())
            .collect()
    }

    /// The rollout of the published generation of `name` and where it stands.
    pub fn assess(
        &self,
        name: &str,
        now: time::OffsetDateTime,
    ) -> Option<(Generation, Rollout, Assessment)> {
        let g = self.generations.get(name)?;
        let r = self
            .rollouts
            .get(name)
            .filter(|r| r.generation == g.generation)?;
        let empty = BTreeMap::new();
        let results = self
            .results
            .get(name)
            .and_then(|r| r.get(&g.generation))
            .unwrap_or(&empty);
        let a = rollout::assess(r, results, &self.serving(name), now);
        Some((g.clone(), r.clone(), a))
    }
}

/// Reads the fleet's state in one transaction.
pub async fn snapshot(
    settings: &FleetSettings,
    password: Option<&Secret>,
) -> Result<FleetSnapshot, FleetError> {
    let keys = Keys::new(&settings.prefix);
    let mut client = connect(settings, password).await?;
    let prefix = format!("{}/", keys.prefix());
    let resp = client
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut s = FleetSnapshot::default();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        absorb(&mut s, &prefix, &key, kv.value())?;
    }
    Ok(s)
}

/// Files one key of the fleet's state into a snapshot.
fn absorb(s: &mut FleetSnapshot, prefix: &str, key: &str, value: &[u8]) -> Result<(), FleetError> {
    let rest = &key[prefix.len()..];
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    match parts.as_slice() {
        ["members", _] => s.members.push(json(key, value)?),
        ["locks", name] => {
            s.locks.insert(
                (*name).to_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
        }
        ["certs", name, "generation"] => {
            s.generations.insert((*name).to_owned(), json(key, value)?);
        }
        ["certs", name, "deploy", generation, unit] if generation.parse::<u64>().is_ok() => {
            file_per_generation(&mut s.units, name, generation, unit, json(key, value)?);
        }
        ["certs", name, "rollout"] => {
            s.rollouts.insert((*name).to_owned(), json(key, value)?);
        }
        ["certs", name, "results", generation, member] if generation.parse::<u64>().is_ok() => {
            file_per_generation(&mut s.results, name, generation, member, json(key, value)?);
        }
        ["status", _, _] => s.statuses.push(json(key, value)?),
        _ => {}
    }
    Ok(())
}

/// Files `value` under certificate → generation → `key` (a key whose generation is not a number
/// is ignored).
fn file_per_generation<T>(
    map: &mut BTreeMap<String, BTreeMap<u64, BTreeMap<String, T>>>,
    name: &str,
    generation: &str,
    key: &str,
    value: T,
) {
    if let Ok(g) = generation.parse::<u64>() {
        map.entry(name.to_owned())
            .or_default()
            .entry(g)
            .or_default()
            .insert(key.to_owned(), value);
    }
}

/// An operator's command on a certificate's rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutCommand {
    Halt,
    Resume,
    Rollback,
}

impl RolloutCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Halt => "halt",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Rollback => "rollback",
        }
    }
}

/// Runs `command` on the rollout of `name`'s published generation: one compare-and-swap
/// transaction on the rollout key (retried if a member or another operator changed it
/// meanwhile), so it is safe from any member at any time. `by` names the operator. Returns
/// what was done, for the audit log.
pub async fn rollout_command(
    settings: &FleetSettings,
    password: Option<&Secret>,
    name: &str,
    command: RolloutCommand,
    by: &str,
    now: time::OffsetDateTime,
) -> Result<String, FleetError> {
    let keys = Keys::new(&settings.prefix);
    let mut client = connect(settings, password).await?;
    for _ in 0..5 {
        let s = read_certificate(&mut client, &keys, name).await?;
        let Some(g) = s.generations.get(name) else {
            return Err(FleetError::Refused(format!(
                "certificate {name} has no published generation in this fleet"
            )));
        };
        let Some((_, mut r, a)) = s.assess(name, now) else {
            return Err(FleetError::Refused(format!(
                "generation {} of certificate {name} has no rollout (the certificate has no rollout settings, or it is the first generation)",
                g.generation
            )));
        };
        let mark = Mark {
            by: by.to_owned(),
            reason: format!("{} by {by}", command.as_str()),
            at: crate::values::rfc3339(now),
        };
        let results = keys.results(name, r.generation);
        let mut ops = Vec::new();
        let done = match command {
            RolloutCommand::Halt => {
                if matches!(a.stage, Stage::Done | Stage::RolledBack | Stage::Halted) {
                    return Err(FleetError::Refused(format!(
                        "the rollout of generation {} of {name} is {}: nothing to halt",
                        r.generation, a.stage
                    )));
                }
                r.halted = Some(mark);
                format!(
                    "halted the rollout of generation {} of {name} (it was {})",
                    r.generation, a.stage
                )
            }
            RolloutCommand::Resume => match a.stage {
                Stage::Halted => {
                    r.halted = None;
                    r.resumed = Some(mark);
                    // The members that failed try again.
                    let empty = BTreeMap::new();
                    let failed: Vec<String> = s
                        .results
                        .get(name)
                        .and_then(|x| x.get(&r.generation))
                        .unwrap_or(&empty)
                        .iter()
                        .filter(|(_, x)| !x.ok)
                        .map(|(m, _)| m.clone())
                        .collect();
                    for m in &failed {
                        ops.push(TxnOp::delete(format!("{results}{m}"), None));
                    }
                    format!(
                        "resumed the rollout of generation {} of {name}; members that failed try again: {}",
                        r.generation,
                        if failed.is_empty() {
                            "none".to_owned()
                        } else {
                            failed.join(", ")
                        }
                    )
                }
                Stage::RolledBack => {
                    r.rolled_back = None;
                    r.halted = None;
                    r.resumed = Some(mark);
                    ops.push(TxnOp::delete(
                        results,
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ));
                    format!(
                        "resumed the rolled-back generation {} of {name}: its rollout starts over from the canaries ({})",
                        r.generation,
                        r.canaries.join(", ")
                    )
                }
                other => {
                    return Err(FleetError::Refused(format!(
                        "the rollout of generation {} of {name} is {other}: nothing to resume",
                        r.generation
                    )));
                }
            },
            RolloutCommand::Rollback => {
                if a.stage == Stage::RolledBack {
                    return Err(FleetError::Refused(format!(
                        "generation {} of {name} is already rolled back",
                        r.generation
                    )));
                }
                let valid = time::OffsetDateTime::parse(
                    &r.previous.not_after,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|t| t > now);
                if !valid {
                    return Err(FleetError::Refused(format!(
                        "the previous generation {} of {name} is no longer valid (not after {}): rolling back to it would serve an expired certificate",
                        r.previous.generation, r.previous.not_after
                    )));
                }
                r.rolled_back = Some(mark);
                format!(
                    "rolled back {name} from generation {} to generation {} (it was {})",
                    r.generation, r.previous.generation, a.stage
                )
            }
        };
        let key = keys.rollout(name);
        ops.insert(0, TxnOp::put(key.clone(), to_json(&r), None));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                s.rollout_revision,
            )])
            .and_then(ops);
        if client.txn(txn).await?.succeeded() {
            return Ok(done);
        }
    }
    Err(FleetError::Refused(format!(
        "the rollout of {name} kept changing under the command; try again"
    )))
}

/// One certificate's keys and the members, read in one transaction.
struct CertificateRead {
    snapshot: FleetSnapshot,
    rollout_revision: i64,
}

impl std::ops::Deref for CertificateRead {
    type Target = FleetSnapshot;
    fn deref(&self) -> &FleetSnapshot {
        &self.snapshot
    }
}

async fn read_certificate(
    client: &mut Client,
    keys: &Keys,
    name: &str,
) -> Result<CertificateRead, FleetError> {
    let certs = format!("{}/certs/{name}/", keys.prefix());
    let txn = Txn::new().and_then([
        TxnOp::get(certs.clone(), Some(GetOptions::new().with_prefix())),
        TxnOp::get(keys.members(), Some(GetOptions::new().with_prefix())),
    ]);
    let resp = client.txn(txn).await?;
    let prefix = format!("{}/", keys.prefix());
    let mut s = FleetSnapshot::default();
    let mut rollout_revision = 0;
    for r in resp.op_responses() {
        let TxnOpResponse::Get(g) = r else { continue };
        for kv in g.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if key == keys.rollout(name) {
                rollout_revision = kv.mod_revision();
            }
            absorb(&mut s, &prefix, &key, kv.value())?;
        }
    }
    Ok(CertificateRead {
        snapshot: s,
        rollout_revision,
    })
}
