//! Fleet mode against a real etcd (Debian's etcd-server, a private instance per test on
//! loopback ports): the coordinator's lock excludes, its fence refuses a member whose lease
//! expired, and a published generation reaches the other members through the watch.

#![cfg(feature = "fleet")]

mod etcd_fixture;
mod required;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_agent::fleet::config::FleetSettings;
use ccm_agent::fleet::keys::{Generation, Member, UnitProgress, UnitState};
use ccm_agent::fleet::{Coordinator, FleetError};
use etcd_fixture::Etcd;

fn settings(etcd: &Etcd, member: &str, ttl_secs: u64) -> FleetSettings {
    FleetSettings {
        endpoints: vec![etcd.url()],
        prefix: "/test-fleet".into(),
        lease_ttl: Duration::from_secs(ttl_secs),
        timeout: Duration::from_secs(2),
        member_id: member.into(),
        tls: None,
        auth: None,
        emergency_local: true,
    }
}

fn member(id: &str) -> Member {
    Member {
        member_id: id.into(),
        host_id: id.into(),
        version: "test".into(),
        serves: vec!["www:shared".into()],
        started_at: "2026-01-01T00:00:00Z".into(),
    }
}

fn start(etcd: &Etcd, id: &str, ttl: u64) -> Arc<Coordinator> {
    Coordinator::start(settings(etcd, id, ttl), member(id), None)
}

async fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn up(c: &Coordinator) {
    wait_for("the member to join", Duration::from_secs(20), || c.is_up()).await;
}

fn progress(state: UnitState, member: &str) -> UnitProgress {
    UnitProgress {
        state,
        member: member.into(),
        at: "2026-01-01T00:00:00Z".into(),
        scm_id: None,
        detail: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_excludes_and_passes_on_after_release() {
    let Some(etcd) = Etcd::start() else { return };
    let (a, b) = (start(&etcd, "a", 10), start(&etcd, "b", 10));
    up(&a).await;
    up(&b).await;
    assert!(a.try_lock("www").await.expect("a locks"));
    assert!(a.holds("www"));
    assert!(
        !b.try_lock("www").await.expect("b tries"),
        "b must not get a's lock"
    );
    assert!(a.try_lock("www").await.expect("again"), "a keeps it");
    // b's fenced writes are refused; a's go through.
    let err = b
        .set_unit(
            "www",
            1,
            "deploy/ELB/-/lb1",
            &progress(UnitState::Calling, "b"),
        )
        .await
        .expect_err("b does not hold the lock");
    assert!(matches!(err, FleetError::Fenced { .. }), "{err}");
    a.set_unit(
        "www",
        1,
        "deploy/ELB/-/lb1",
        &progress(UnitState::Calling, "a"),
    )
    .await
    .expect("a holds the lock");
    // Another certificate's lock is independent.
    assert!(b.try_lock("api").await.expect("b locks api"));
    a.unlock("www").await.expect("release");
    wait_for("b to see the lock released", Duration::from_secs(5), || {
        b.lock_holder("www").is_none()
    })
    .await;
    assert!(b.try_lock("www").await.expect("b locks now"));
    assert!(!a.try_lock("www").await.expect("a tries"));
    a.stop().await;
    b.stop().await;
}

/// A member whose lease is gone (revoked here, as an expiry would) has its fenced writes
/// refused, whether or not another member took the lock since; the new holder's go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_refuses_a_member_whose_lease_expired() {
    let Some(etcd) = Etcd::start() else { return };
    let (a, b) = (start(&etcd, "a", 10), start(&etcd, "b", 10));
    up(&a).await;
    up(&b).await;
    assert!(a.try_lock("www").await.expect("a locks"));
    let old_lease = a.lease_id();
    // The lease ends under a (as when a was paused past its TTL).
    let mut raw = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("raw client");
    raw.lease_revoke(old_lease).await.expect("revoke");
    wait_for("b to see the lock gone", Duration::from_secs(5), || {
        b.lock_holder("www").is_none()
    })
    .await;
    // Nobody holds it: a's write is refused all the same.
    let err = a
        .set_unit("www", 1, "push/ELB/r1", &progress(UnitState::Calling, "a"))
        .await
        .expect_err("refused");
    assert!(matches!(err, FleetError::Fenced { .. }), "{err}");
    assert!(b.try_lock("www").await.expect("b takes it"));
    b.set_unit("www", 1, "push/ELB/r1", &progress(UnitState::Calling, "b"))
        .await
        .expect("b writes");
    // a joins again with a new lease; the lock stays b's and a's writes stay refused.
    wait_for("a to get a new lease", Duration::from_secs(20), || {
        a.is_up() && a.lease_id() != old_lease && a.lease_id() != 0
    })
    .await;
    assert!(!a.holds("www"));
    assert!(!a.try_lock("www").await.expect("a tries"));
    let g = Generation {
        generation: 1,
        cloud_id: "x".into(),
        fingerprint_sha256: "AB".into(),
        not_after: "2030-01-01T00:00:00Z".into(),
        not_before: "2029-01-01T00:00:00Z".into(),
        issued_by: "a".into(),
        source: "pca".into(),
    };
    let err = a.publish("www", &g, None).await.expect_err("refused");
    assert!(matches!(err, FleetError::Fenced { .. }), "{err}");
    let units = b.units("www", 1);
    assert_eq!(
        units.get("push/ELB/r1").map(|p| p.member.as_str()),
        Some("b")
    );
    a.stop().await;
    b.stop().await;
}

/// Every member sees every other member's registration with its certificates, whether that
/// member registered before or after it joined (the rollout picks canaries and admits members
/// from them). Found by the 200-member rollout bench: the snapshot a member took when it joined
/// held the earlier registrations without their values, so each member saw a different subset
/// and no one was admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_sees_every_registration_with_what_it_serves() {
    let Some(etcd) = Etcd::start() else { return };
    let a = start(&etcd, "a", 10);
    up(&a).await;
    let b = start(&etcd, "b", 10);
    up(&b).await;
    let c = start(&etcd, "c", 10);
    up(&c).await;
    let all: std::collections::BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    for m in [&a, &b, &c] {
        wait_for(
            "every registration in the member's view",
            Duration::from_secs(10),
            || m.serving("www") == all,
        )
        .await;
    }
    for m in [&a, &b, &c] {
        m.stop().await;
    }
}

/// A lease that really expires (keep-alives stop: the member's process is gone) frees the lock
/// within about the TTL; another member takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_frees_the_lock_for_another_member() {
    let Some(etcd) = Etcd::start() else { return };
    let b = start(&etcd, "b", 3);
    up(&b).await;
    // "a" takes the lock on a lease nobody keeps alive.
    let mut raw = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("raw client");
    let lease = raw.lease_grant(3, None).await.expect("grant").id();
    raw.put(
        "/test-fleet/locks/www",
        "a",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("a's lock");
    wait_for("b to see a's lock", Duration::from_secs(5), || {
        b.lock_holder("www").is_some()
    })
    .await;
    assert!(!b.try_lock("www").await.expect("b tries"));
    let t0 = Instant::now();
    wait_for("a's lease to expire", Duration::from_secs(15), || {
        b.lock_holder("www").is_none()
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(b.try_lock("www").await.expect("b takes it"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_generation_reaches_the_other_members_through_the_watch() {
    let Some(etcd) = Etcd::start() else { return };
    let members: Vec<Arc<Coordinator>> = ["a", "b", "c"]
        .iter()
        .map(|id| start(&etcd, id, 10))
        .collect();
    for m in &members {
        up(m).await;
    }
    let changed = members[2].changed();
    let notified = changed.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    assert!(members[0].try_lock("www").await.expect("lock"));
    let g = Generation {
        generation: 7,
        cloud_id: "cert-7".into(),
        fingerprint_sha256: "AA11".into(),
        not_after: "2030-01-01T00:00:00Z".into(),
        not_before: "2029-01-01T00:00:00Z".into(),
        issued_by: "a".into(),
        source: "pca".into(),
    };
    members[0].publish("www", &g, None).await.expect("publish");
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("c is notified");
    for m in &members {
        wait_for("the generation to arrive", Duration::from_secs(5), || {
            m.generation("www").as_ref() == Some(&g)
        })
        .await;
    }
    // A member that joins later gets it from the snapshot.
    let d = start(&etcd, "d", 10);
    up(&d).await;
    assert_eq!(d.generation("www"), Some(g));
    // A duplicate member id is refused while the first is alive.
    let dup = start(&etcd, "a", 10);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dup.lease_id(), 0, "a second 'a' must not register");
    dup.stop().await;
    for m in members {
        m.stop().await;
    }
    d.stop().await;
}

/// etcd down: the member reports it (not up); back: it joins again and resyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_survives_an_etcd_outage() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let a = start(&etcd, "a", 3);
    up(&a).await;
    etcd.stop();
    wait_for("a to notice the outage", Duration::from_secs(20), || {
        !a.is_up()
    })
    .await;
    assert!(matches!(
        a.try_lock("www").await,
        Err(FleetError::Unavailable(_) | FleetError::Etcd(_))
    ));
    etcd.restart();
    up(&a).await;
    assert!(a.try_lock("www").await.expect("lock after the outage"));
    a.stop().await;
}

/// A CA, an etcd server certificate (127.0.0.1) and a client certificate, as PEM files in `dir`.
fn tls_files(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fleet test etcd CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf = |sans: Vec<String>, cn: &str, eku: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = eku;
        let cert = p.signed_by(&key, &issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "etcd",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let (client, client_key) = leaf(
        Vec::new(),
        "ccm-agent",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    (
        write("ca.pem", &ca_cert.pem()),
        write("server.pem", &server),
        write("server-key.pem", &server_key),
        write("client.pem", &client),
        write("client-key.pem", &client_key),
    )
}

/// etcd with TLS, client certificates and user/password auth: a member with the CA, its client
/// certificate and the right password joins and holds locks; a wrong password, or no client
/// certificate, keeps a member out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_and_password_auth() {
    use ccm_agent::config::SecretSource;
    use ccm_agent::fleet::config::{FleetAuth, FleetTls};
    ccm_agent::cloud::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, server, server_key, client, client_key) = tls_files(dir.path());
    let Some(etcd) = Etcd::start_tls(ca.clone(), server, server_key) else {
        return;
    };
    let tls = FleetTls {
        ca: Some(ca.clone()),
        identity: Some((client.clone(), client_key.clone())),
    };
    let with = |id: &str, tls: Option<FleetTls>, auth: Option<FleetAuth>| FleetSettings {
        tls,
        auth,
        ..settings(&etcd, id, 5)
    };
    // Enable auth as an administrator would: a root user, then a user for the agents.
    let admin = with("admin", Some(tls.clone()), None);
    let mut root = ccm_agent::fleet::coordinator::connect(&admin, None)
        .await
        .expect("TLS connection");
    root.user_add("root", "root-pw", None)
        .await
        .expect("root user");
    root.user_grant_role("root", "root")
        .await
        .expect("root role");
    root.auth_enable().await.expect("auth on");
    let auth = |pw: &str| {
        Some(FleetAuth {
            user: "root".into(),
            password: SecretSource::Env(vec!["UNUSED".into()]),
        })
        .map(|a| (a, ccm_agent::cloud::Secret::new(pw)))
    };
    let (a, pw) = auth("root-pw").expect("auth");
    let good = Coordinator::start(
        with("good", Some(tls.clone()), Some(a)),
        member("good"),
        Some(pw),
    );
    up(&good).await;
    assert!(good.try_lock("www").await.expect("lock over TLS with auth"));
    let g = Generation {
        generation: 1,
        cloud_id: "c".into(),
        fingerprint_sha256: "AA".into(),
        not_after: "2030-01-01T00:00:00Z".into(),
        not_before: "2029-01-01T00:00:00Z".into(),
        issued_by: "good".into(),
        source: "pca".into(),
    };
    good.publish("www", &g, None).await.expect("publish");
    let (a, pw) = auth("wrong").expect("auth");
    let wrong_pw = Coordinator::start(
        with("wrong-pw", Some(tls.clone()), Some(a)),
        member("wrong-pw"),
        Some(pw),
    );
    let (a, pw) = auth("root-pw").expect("auth");
    let no_cert = Coordinator::start(
        with(
            "no-cert",
            Some(FleetTls {
                ca: Some(ca.clone()),
                identity: None,
            }),
            Some(a),
        ),
        member("no-cert"),
        Some(pw),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!wrong_pw.is_up(), "a wrong password must not join");
    assert!(
        !no_cert.is_up(),
        "a member without a client certificate must not join"
    );
    assert_eq!(good.generation("www"), Some(g));
    wrong_pw.stop().await;
    no_cert.stop().await;
    good.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Real `ccm-agent run` processes sharing one certificate through one etcd, against the emulator.
// ---------------------------------------------------------------------------------------------

mod procs {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use ccm_agent::emulator::scm::Deployment;
    use ccm_agent::emulator::{Emulator, EmulatorConfig};
    use ccm_agent::fleet::config::FleetSettings;
    use ccm_agent::fleet::coordinator::{FleetSnapshot, snapshot};

    use super::etcd_fixture::Etcd;

    pub const PREFIX: &str = "/fleet-test";

    pub async fn emulator_with_ca() -> (Emulator, String) {
        ccm_agent::cloud::install_crypto_provider();
        let emu = Emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        let shared = emu.shared().clone();
        let (_, sub) = tokio::task::spawn_blocking(move || {
            ccm_agent::emulator::pca::ca::create_active_ca_pair(
                &shared,
                "fleet test root",
                "fleet test issuing CA",
            )
        })
        .await
        .expect("join")
        .expect("CA pair");
        (emu, sub)
    }

    /// How the shared certificate is set up.
    pub struct Setup<'a> {
        pub emu: &'a Emulator,
        pub etcd: &'a Etcd,
        pub ca_id: &'a str,
        /// e.g. `{ type = "DAY", value = 30 }`
        pub validity: &'a str,
        /// Extra keys of the certificate (renew_before, emergency_before).
        pub renew: &'a str,
        pub lease_ttl: &'a str,
        /// `shared` or `per-host`.
        pub fleet: &'a str,
        /// `apply` or `csr`.
        pub pca_mode: &'a str,
    }

    pub fn config_text(s: &Setup<'_>, dir: &Path, member: &str, metrics_port: u16) -> String {
        let aksk = s.emu.aksk();
        format!(
            r#"
[agent]
state_dir = "{dir}/state"
schedule = "0 0 * * * *"
host_id = "{member}"
retry_initial = "1s"
retry_max = "2s"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[cloud]
endpoint = "{endpoint}"
timeout = "20s"

[cloud.auth]
access_key = "{ak}"
secret_key_env = "CCM_TEST_SK"
domain_id = "{domain}"

[fleet]
endpoints = ["{etcd}"]
prefix = "{PREFIX}"
lease_ttl = "{ttl}"
timeout = "2s"

[[certificates]]
name = "www"
fleet = "{fleet}"
{renew}
[certificates.output]
dir = "{dir}/live/www"
[certificates.pca]
ca_id = "{ca_id}"
mode = "{pca_mode}"
subject = {{ common_name = "www.fleet.test" }}
sans = ["dns:www.fleet.test"]
validity = {validity}
[certificates.deploy]
scm_name = "fleet-www"
retry_initial = "10ms"
retry_max = "20ms"
[[certificates.deploy.targets]]
action = "deploy"
service = "ELB"
resources = [{{ id = "lb0001" }}, {{ id = "lb0002" }}]
[[certificates.deploy.targets]]
action = "batch-push"
service = "WAF"
regions = ["ap-southeast-1", "cn-north-4"]
"#,
            dir = dir.display(),
            endpoint = s.emu.base_url(),
            ak = aksk.access_key,
            domain = aksk.domain_id.unwrap_or_default(),
            etcd = s.etcd.url(),
            ttl = s.lease_ttl,
            ca_id = s.ca_id,
            validity = s.validity,
            renew = s.renew,
            fleet = s.fleet,
            pca_mode = s.pca_mode,
        )
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// One `ccm-agent run` process.
    pub struct Member {
        pub id: String,
        pub dir: PathBuf,
        child: Option<Child>,
        pub config: PathBuf,
        pub metrics_port: u16,
        sk: String,
    }

    impl Member {
        pub fn spawn(s: &Setup<'_>, root: &Path, id: &str) -> Member {
            let dir = root.join(id);
            std::fs::create_dir_all(&dir).expect("member dir");
            let config = dir.join("ccm-agent.toml");
            let metrics_port = free_port();
            std::fs::write(&config, config_text(s, &dir, id, metrics_port)).expect("config");
            let mut m = Member {
                id: id.to_owned(),
                dir,
                child: None,
                config,
                metrics_port,
                sk: s.emu.aksk().secret_key.expose().to_owned(),
            };
            m.start();
            m
        }

        pub fn start(&mut self) {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("agent.log"))
                .expect("log");
            let child = Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("CCM_TEST_SK", &self.sk)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn ccm-agent");
            self.child = Some(child);
        }

        pub fn pid(&self) -> u32 {
            self.child.as_ref().map(|c| c.id()).unwrap_or(0)
        }

        pub fn signal(&self, sig: &str) {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &self.pid().to_string()])
                .status();
        }

        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        pub fn fingerprint(&self) -> Option<String> {
            let pem = std::fs::read_to_string(self.dir.join("live/www/cert.pem")).ok()?;
            ccm_agent::pki::parse_cert(&pem)
                .ok()
                .map(|c| c.sha256_fingerprint_hex.to_ascii_uppercase())
        }

        pub async fn metrics(&self) -> String {
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
                .await
                .expect("scrape")
                .text()
                .await
                .expect("body")
        }

        /// `ccm-agent fleet status` with this member's configuration: (exit code, stdout).
        pub fn fleet_status(&self) -> (i32, String) {
            let out = Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
                .args(["fleet", "status", "--config"])
                .arg(&self.config)
                .output()
                .expect("fleet status");
            (
                out.status.code().unwrap_or(-1),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }

        pub fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
        }
    }

    impl Drop for Member {
        fn drop(&mut self) {
            self.signal("CONT");
            self.kill();
        }
    }

    pub fn logs(members: &[Member]) -> String {
        members
            .iter()
            .map(|m| {
                let log = m.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "==== {} ====\n{}",
                    m.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn settings(etcd: &Etcd) -> FleetSettings {
        FleetSettings {
            endpoints: vec![etcd.url()],
            prefix: PREFIX.into(),
            lease_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            member_id: "observer".into(),
            tls: None,
            auth: None,
            emergency_local: true,
        }
    }

    pub async fn fleet(etcd: &Etcd) -> FleetSnapshot {
        snapshot(&settings(etcd), None)
            .await
            .expect("fleet snapshot")
    }

    pub fn deployments(emu: &Emulator) -> Vec<Deployment> {
        emu.shared().with_state(|st| st.scm.deployments().to_vec())
    }

    /// Deploy attempts that reached the emulator, per (operation, target).
    pub fn calls_per_target(emu: &Emulator) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for d in deployments(emu) {
            let target = d
                .resource_id
                .clone()
                .or(d.project.clone())
                .unwrap_or_default();
            *m.entry(format!("{}/{}/{target}", d.operation, d.service))
                .or_insert(0) += 1;
        }
        m
    }

    pub async fn wait_until<F, Fut>(what: &str, limit: Duration, members: &[Member], f: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !f().await {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}\n{}",
                logs(members)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every member has the published generation installed; returns its fingerprint.
    pub async fn converged(etcd: &Etcd, members: &[Member]) -> Option<String> {
        let s = fleet(etcd).await;
        let g = s.generations.get("www")?;
        members
            .iter()
            .all(|m| m.fingerprint().as_deref() == Some(g.fingerprint_sha256.as_str()))
            .then(|| g.fingerprint_sha256.clone())
    }

    /// Every unit of the generation is done.
    pub async fn deployed(etcd: &Etcd, generation: u64) -> bool {
        let s = fleet(etcd).await;
        s.units
            .get("www")
            .and_then(|g| g.get(&generation))
            .is_some_and(|u| {
                u.len() == 4
                    && u.values()
                        .all(|p| p.state == ccm_agent::fleet::keys::UnitState::Done)
            })
    }
}

use procs::{
    Member as Proc, Setup, calls_per_target, converged, deployed, emulator_with_ca, fleet, logs,
    wait_until,
};

const DAY30: &str = r#"{ type = "DAY", value = 30 }"#;

/// Five agents share one apply-mode certificate with ELB and WAF targets: one PCA issuance,
/// one SCM import, one call per target; all five install the same certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_one_issuance_one_call_per_target() {
    let Some(etcd) = Etcd::start() else { return };
    let (emu, ca_id) = emulator_with_ca().await;
    let root = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        validity: DAY30,
        renew: "",
        lease_ttl: "3s",
        fleet: "shared",
        pca_mode: "apply",
    };
    emu.shared().clear_requests();
    let members: Vec<Proc> = (1..=5)
        .map(|i| Proc::spawn(&setup, root.path(), &format!("member-{i}")))
        .collect();
    wait_until(
        "all five to converge",
        Duration::from_secs(90),
        &members,
        || async { converged(&etcd, &members).await.is_some() },
    )
    .await;
    wait_until(
        "every target deployed",
        Duration::from_secs(60),
        &members,
        || async { deployed(&etcd, 1).await },
    )
    .await;
    // Let any straggler act on the final state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fp = converged(&etcd, &members).await.expect("still converged");
    let s = fleet(&etcd).await;
    let g = &s.generations["www"];
    assert_eq!(g.generation, 1);
    assert_eq!(g.fingerprint_sha256, fp);
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate"),
        1,
        "exactly one PCA issuance\n{}",
        logs(&members)
    );
    assert_eq!(emu.shared().count_requests("scm.import_certificate"), 1);
    assert_eq!(emu.shared().count_requests("scm.deploy_certificate"), 1);
    assert_eq!(emu.shared().count_requests("scm.batch_push_certificate"), 1);
    let calls = calls_per_target(&emu);
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls.values().all(|n| *n == 1), "{calls:?}");
    // Every member registered and reported the generation it has.
    assert_eq!(s.members.len(), 5);
    let statuses: Vec<_> = s.statuses.iter().filter(|st| st.name == "www").collect();
    assert_eq!(statuses.len(), 5, "{statuses:?}");
    assert!(statuses.iter().all(|st| st.generation == 1), "{statuses:?}");

    // What an operator sees: every member on generation 1, matching; exit 0.
    let (code, out) = members[0].fleet_status();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("certificate www: generation 1"), "{out}");
    for m in &members {
        let row = out
            .lines()
            .find(|l| l.trim_start().starts_with(&m.id))
            .unwrap_or_else(|| panic!("no row for {}: {out}", m.id));
        assert!(row.contains(" yes "), "{row}");
    }
    // The metrics of a member.
    let metrics = members[0].metrics().await;
    for line in [
        "ccm_agent_fleet_coordinator_up 1",
        "ccm_agent_fleet_members 5",
        "ccm_agent_fleet_generation{name=\"www\"} 1",
        "ccm_agent_fleet_installed_generation{name=\"www\"} 1",
        "ccm_agent_fleet_member_lag{name=\"www\"} 0",
        "ccm_agent_fleet_deploy_needs_human{name=\"www\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // A member whose status says it is behind: fleet status exits 1 and names it.
    let mut raw = etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("raw client");
    let mut behind = s
        .statuses
        .iter()
        .find(|st| st.member == "member-2")
        .expect("member-2 status")
        .clone();
    behind.generation = 0;
    behind.fingerprint_sha256 = Some("00".into());
    raw.put(
        format!("{}/status/member-2/www", procs::PREFIX),
        serde_json::to_vec(&behind).expect("json"),
        None,
    )
    .await
    .expect("put");
    let (code, out) = members[0].fleet_status();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("lagging: member-2 (www)"), "{out}");
}

const BATCH_WAF: &str = "batch-push/WAF/ap-southeast-1";
const DEPLOY_ELB: &str = "deploy/ELB/-/lb0001";

/// The state of `unit` of generation `generation`, and who wrote it.
async fn unit_state(
    etcd: &Etcd,
    generation: u64,
    unit: &str,
) -> Option<(ccm_agent::fleet::keys::UnitState, String)> {
    let s = fleet(etcd).await;
    s.units
        .get("www")?
        .get(&generation)?
        .get(unit)
        .map(|p| (p.state, p.member.clone()))
}

/// [`unit_state`] on a connection kept open: for loops that must see a short-lived state.
async fn poll_unit(
    client: &mut etcd_client::Client,
    generation: u64,
    unit: &str,
) -> Option<(ccm_agent::fleet::keys::UnitState, String)> {
    let key = format!("{}/certs/www/deploy/{generation}/{unit}", procs::PREFIX);
    let resp = client.get(key, None).await.ok()?;
    let kv = resp.kvs().first()?;
    let p: ccm_agent::fleet::keys::UnitProgress = serde_json::from_slice(kv.value()).ok()?;
    Some((p.state, p.member))
}

async fn poller(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.url()], None)
        .await
        .expect("etcd client")
}

fn slow(operation: &str, ms: u64) -> ccm_agent::emulator::FaultRule {
    ccm_agent::emulator::FaultRule {
        latency_ms: ms,
        times: Some(1),
        ..ccm_agent::emulator::FaultRule::new(operation)
    }
}

/// The lock holder is SIGKILLed in the middle of a deploy call: every target is called exactly
/// once. The call in flight still lands in SCM, but its outcome is unknown to the fleet and SCM
/// cannot tell it, so the member that takes over marks it for a human instead of calling
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lock_holder_mid_deploy_never_repeats_a_call() {
    use ccm_agent::fleet::keys::UnitState;
    let Some(etcd) = Etcd::start() else { return };
    let (emu, ca_id) = emulator_with_ca().await;
    let root = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        validity: DAY30,
        renew: "",
        lease_ttl: "3s",
        fleet: "shared",
        pca_mode: "apply",
    };
    // The WAF batch push (the second target) hangs for a while.
    emu.shared()
        .add_fault(slow("scm.batch_push_certificate", 6000));
    let mut members: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&setup, root.path(), &format!("member-{i}")))
        .collect();
    let mut poll = poller(&etcd).await;
    let mut holder = String::new();
    let start = std::time::Instant::now();
    while holder.is_empty() {
        if let Some((UnitState::Calling, who)) = poll_unit(&mut poll, 1, BATCH_WAF).await {
            holder = who;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no batch push started\n{}",
            logs(&members)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = members
        .iter_mut()
        .find(|m| m.id == holder)
        .expect("the holder is a member");
    victim.kill();
    let victim_id = victim.id.clone();
    let survivors: Vec<Proc> = members.into_iter().filter(|m| m.id != victim_id).collect();
    wait_until(
        "another member to take over and mark the in-flight unit",
        Duration::from_secs(60),
        &survivors,
        || async {
            matches!(unit_state(&etcd, 1, BATCH_WAF).await, Some((UnitState::NeedsHuman, w)) if w != victim_id)
        },
    )
    .await;
    // Past the hung call's latency, and a few passes more.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = fleet(&etcd).await;
    let units = &s.units["www"][&1];
    assert_eq!(units[DEPLOY_ELB].state, UnitState::Done, "{units:?}");
    assert_eq!(
        units["batch-push/WAF/cn-north-4"].state,
        UnitState::NeedsHuman,
        "the same call covered both regions: {units:?}"
    );
    // The killed member's batch push had reached SCM and completed there (a service does
    // not undo a call whose client died): one call per target, none repeated.
    let calls = calls_per_target(&emu);
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls.values().all(|n| *n == 1),
        "one call per target: {calls:?}"
    );
    assert_eq!(
        emu.shared().count_requests("scm.batch_push_certificate"),
        1,
        "the batch push was sent again"
    );
    assert_eq!(emu.shared().count_requests("pca.create_certificate"), 1);
    assert_eq!(emu.shared().count_requests("scm.import_certificate"), 1);
    let fp = converged(&etcd, &survivors)
        .await
        .expect("survivors converged");
    assert_eq!(s.generations["www"].fingerprint_sha256, fp);
    assert!(
        survivors
            .iter()
            .any(|m| m.log().contains("marked for a human")),
        "{}",
        logs(&survivors)
    );
    // fleet status shows it, and exits 1; the killed member is gone, not lagging.
    let (code, out) = survivors[0].fleet_status();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "needs a human (outcome of a deploy call unknown): www: batch-push/WAF/ap-southeast-1"
        ),
        "{out}"
    );
    assert!(!out.contains("lagging:"), "{out}");
}

/// The lock holder is SIGSTOPped during its first deploy call, past its lease, then SIGCONTed:
/// another member took over meanwhile, and every write of the woken member is refused by the
/// fence, so it makes no further call; each target was called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_lease_then_sigcont_is_fenced_off() {
    use ccm_agent::fleet::keys::UnitState;
    let Some(etcd) = Etcd::start() else { return };
    let (emu, ca_id) = emulator_with_ca().await;
    let root = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        validity: DAY30,
        renew: "",
        lease_ttl: "3s",
        fleet: "shared",
        pca_mode: "apply",
    };
    // The ELB deploy (the first target) is slow.
    emu.shared().add_fault(slow("scm.deploy_certificate", 6000));
    let members: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&setup, root.path(), &format!("member-{i}")))
        .collect();
    let mut poll = poller(&etcd).await;
    let mut holder = String::new();
    let start = std::time::Instant::now();
    while holder.is_empty() {
        if let Some((UnitState::Calling, who)) = poll_unit(&mut poll, 1, DEPLOY_ELB).await {
            holder = who;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no deploy started\n{}",
            logs(&members)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let paused = members.iter().find(|m| m.id == holder).expect("holder");
    paused.signal("STOP");
    eprintln!(
        "{:?}: stopped {holder} (pid {}) during its deploy call",
        std::time::SystemTime::now(),
        paused.pid()
    );
    let others: Vec<&Proc> = members.iter().filter(|m| m.id != holder).collect();
    wait_until(
        "another member to take over",
        Duration::from_secs(60),
        &members,
        || async {
            matches!(unit_state(&etcd, 1, BATCH_WAF).await, Some((UnitState::Done, w)) if w != holder)
        },
    )
    .await;
    assert!(matches!(
        unit_state(&etcd, 1, DEPLOY_ELB).await,
        Some((UnitState::NeedsHuman, w)) if w != holder
    ));
    // Wake the paused holder: its call returns, and its write of the outcome is refused.
    paused.signal("CONT");
    wait_until(
        "the woken member's write to be refused",
        Duration::from_secs(30),
        &members,
        || async { paused.log().contains("refused by the fence") },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Its "done" did not overwrite the takeover's mark, and it called nothing more.
    assert!(matches!(
        unit_state(&etcd, 1, DEPLOY_ELB).await,
        Some((UnitState::NeedsHuman, w)) if w != holder
    ));
    let calls = calls_per_target(&emu);
    assert!(calls.values().all(|n| *n == 1), "{calls:?}");
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(emu.shared().count_requests("scm.deploy_certificate"), 1);
    assert_eq!(emu.shared().count_requests("scm.batch_push_certificate"), 1);
    assert_eq!(emu.shared().count_requests("pca.create_certificate"), 1);
    assert!(!others.is_empty());
    wait_until(
        "all three to converge",
        Duration::from_secs(30),
        &members,
        || async { converged(&etcd, &members).await.is_some() },
    )
    .await;
}

/// etcd stops: every member keeps its certificate; when the shared certificate reaches its
/// emergency floor each renews it alone and nothing is deployed. etcd returns: the fleet
/// publishes one generation again, every member installs it, and it is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_emergency_renewal_without_deploy_then_convergence() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let (emu, ca_id) = emulator_with_ca().await;
    let root = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        // Due 30 s after issuance, at the emergency floor after 60 s.
        validity: r#"{ type = "HOUR", value = 1 }"#,
        renew: "renew_before = \"59m30s\"\nemergency_before = \"59m\"\njitter = 0.0",
        lease_ttl: "3s",
        fleet: "shared",
        pca_mode: "apply",
    };
    let url = etcd.url();
    let members: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&setup, root.path(), &format!("member-{i}")))
        .collect();
    wait_until(
        "the first generation everywhere",
        Duration::from_secs(60),
        &members,
        || async { converged(&etcd, &members).await.is_some() && deployed(&etcd, 1).await },
    )
    .await;
    let g1 = converged(&etcd, &members).await.expect("g1");
    etcd.stop();
    let issued = emu.shared().count_requests("pca.create_certificate");
    let deploys = procs::deployments(&emu).len();
    wait_until(
        "every member to renew alone at the emergency floor",
        Duration::from_secs(120),
        &members,
        || async {
            members
                .iter()
                .all(|m| m.fingerprint().is_some_and(|fp| fp != g1))
        },
    )
    .await;
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate"),
        issued + 3,
        "one emergency issuance per member"
    );
    assert_eq!(
        procs::deployments(&emu).len(),
        deploys,
        "no deploy without the coordinator"
    );
    assert!(members.iter().all(|m| m.log().contains("emergency floor")));
    etcd.restart();
    assert_eq!(etcd.url(), url);
    wait_until(
        "the fleet to converge on a new generation",
        Duration::from_secs(90),
        &members,
        || async {
            match converged(&etcd, &members).await {
                Some(fp) => fp != g1,
                None => false,
            }
        },
    )
    .await;
    let s = fleet(&etcd).await;
    let g = s.generations["www"].generation;
    assert!(g >= 2, "{g}");
    wait_until(
        "the new generation to be deployed",
        Duration::from_secs(60),
        &members,
        || async {
            let s = fleet(&etcd).await;
            let g = s.generations["www"].generation;
            deployed(&etcd, g).await
        },
    )
    .await;
    let calls = calls_per_target(&emu);
    // One call per target per generation: at most as many as generations published.
    let s = fleet(&etcd).await;
    let generations = s.generations["www"].generation as usize;
    assert!(
        calls.values().all(|n| *n <= generations),
        "{calls:?} for {generations} generations"
    );
}

/// per-host: each member issues its own certificate (CSR mode: the key stays on its host); the
/// fleet publishes one of them as the generation the cloud targets get, deployed once per
/// target. No member lags. `ccm-agent renew` refuses a fleet certificate (it would bypass the
/// lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_members_issue_their_own_and_the_fleet_deploys_once() {
    let Some(etcd) = Etcd::start() else { return };
    let (emu, ca_id) = emulator_with_ca().await;
    let root = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        validity: DAY30,
        renew: "",
        lease_ttl: "3s",
        fleet: "per-host",
        pca_mode: "csr",
    };
    let members: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&setup, root.path(), &format!("member-{i}")))
        .collect();
    wait_until(
        "every member installed and the targets deployed",
        Duration::from_secs(90),
        &members,
        || async { members.iter().all(|m| m.fingerprint().is_some()) && deployed(&etcd, 1).await },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        3
    );
    assert_eq!(emu.shared().count_requests("pca.create_certificate"), 0);
    let fps: std::collections::BTreeSet<String> =
        members.iter().filter_map(|m| m.fingerprint()).collect();
    assert_eq!(fps.len(), 3, "each member has its own certificate");
    let s = fleet(&etcd).await;
    let g = &s.generations["www"];
    assert_eq!(g.generation, 1);
    assert!(fps.contains(&g.fingerprint_sha256));
    let calls = calls_per_target(&emu);
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls.values().all(|n| *n == 1), "{calls:?}");
    assert_eq!(emu.shared().count_requests("scm.import_certificate"), 1);
    let (code, out) = members[0].fleet_status();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("LAGGING"), "{out}");
    for m in &members {
        let metrics = m.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l == "ccm_agent_fleet_member_lag{name=\"www\"} 0"),
            "{metrics}"
        );
    }

    // `ccm-agent renew` of a fleet certificate, on a host whose daemon is not running.
    let spare = root.path().join("spare");
    std::fs::create_dir_all(&spare).expect("dir");
    let config = spare.join("ccm-agent.toml");
    std::fs::write(&config, procs::config_text(&setup, &spare, "spare", 1)).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
        .args(["renew", "--force", "--config"])
        .arg(&config)
        .env("CCM_TEST_SK", emu.aksk().secret_key.expose())
        .output()
        .expect("renew");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("only the daemon renews and deploys it"),
        "{text}"
    );
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate_by_csr"),
        3
    );
}

/// The lock holder is SIGKILLed after PCA issued the first generation and before it was
/// published (its export of the new certificate hangs): the member that takes over finds that
/// certificate in PCA and publishes it instead of issuing another. One issuance in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_between_issuance_and_publication_costs_no_second_issuance() {
    let Some(etcd) = Etcd::start() else { return };
    let (emu, ca_id) = emulator_with_ca().await;
    let root = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        validity: DAY30,
        renew: "",
        lease_ttl: "3s",
        fleet: "shared",
        pca_mode: "apply",
    };
    emu.shared().add_fault(slow("pca.export_certificate", 8000));
    emu.shared().clear_requests();
    let mut members: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&setup, root.path(), &format!("member-{i}")))
        .collect();
    let start = std::time::Instant::now();
    while emu.shared().count_requests("pca.create_certificate") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no issuance\n{}",
            logs(&members)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The holder is the one that marked the issuance.
    let mut holder = None;
    while holder.is_none() {
        holder = fleet(&etcd).await.locks.get("www").cloned();
        assert!(start.elapsed() < Duration::from_secs(60), "no holder");
    }
    let holder = holder.expect("holder");
    members
        .iter_mut()
        .find(|m| m.id == holder)
        .expect("member")
        .kill();
    let survivors: Vec<Proc> = members.into_iter().filter(|m| m.id != holder).collect();
    wait_until(
        "the survivors to converge",
        Duration::from_secs(60),
        &survivors,
        || async { converged(&etcd, &survivors).await.is_some() && deployed(&etcd, 1).await },
    )
    .await;
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate"),
        1,
        "{}",
        logs(&survivors)
    );
    let s = fleet(&etcd).await;
    assert_eq!(s.generations["www"].generation, 1);
    assert!(
        survivors.iter().any(|m| m
            .log()
            .contains("adopting the certificate the previous lock holder issued")),
        "{}",
        logs(&survivors)
    );
}

/// Generations follow one another (a one-hour certificate due after 10 s; whichever member
/// wins the lock issues): each generation's SCM copy, whoever imported it, is deleted once the
/// next one is deployed everywhere, and the progress of old generations is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_scm_copies_are_deleted_whoever_imported_them() {
    let Some(etcd) = Etcd::start() else { return };
    let (emu, ca_id) = emulator_with_ca().await;
    let root = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        validity: r#"{ type = "HOUR", value = 1 }"#,
        renew: "renew_before = \"59m50s\"\nemergency_before = \"10m\"\njitter = 0.0",
        lease_ttl: "3s",
        fleet: "shared",
        pca_mode: "apply",
    };
    let members: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&setup, root.path(), &format!("member-{i}")))
        .collect();
    let copies = || {
        emu.shared().with_state(|st| {
            st.scm
                .certificates()
                .iter()
                .filter(|c| c.name == "fleet-www")
                .count()
        })
    };
    wait_until(
        "generation 3 deployed",
        Duration::from_secs(120),
        &members,
        || async {
            let s = fleet(&etcd).await;
            match s.generations.get("www") {
                Some(g) if g.generation >= 3 => deployed(&etcd, g.generation).await,
                _ => false,
            }
        },
    )
    .await;
    let s = fleet(&etcd).await;
    let g = s.generations["www"].generation;
    // Right after the deploy that completes a generation, its run deletes the older copies.
    wait_until(
        "old copies deleted",
        Duration::from_secs(30),
        &members,
        || async {
            let s = fleet(&etcd).await;
            let current = s.generations["www"].generation;
            copies() <= 1 + (current - g) as usize
                && s.units
                    .get("www")
                    .is_some_and(|u| u.keys().all(|k| *k + 1 >= current))
        },
    )
    .await;
    let imported = emu.shared().count_requests("scm.import_certificate");
    let deleted = emu.shared().count_requests("scm.delete_certificate");
    assert!(imported >= 3, "{imported}");
    assert!(
        deleted >= 2,
        "{deleted} deleted of {imported}\n{}",
        logs(&members)
    );
}
