//! A staged rollout with real parts: four `ccm-agent run` processes, each in front of its own
//! real nginx, share one certificate through a real etcd, against the emulator. One of them is
//! the canary, and its nginx configuration is broken when the second generation arrives:
//!
//! 1. the canary's config test fails, it rolls back, and the rollout halts: the other three
//!    never install the new generation and still serve the first (TLS handshakes), `fleet
//!    status` names the canary with nginx's stderr and exits 1, the metric says `halted`, and
//!    nothing is deployed to the cloud;
//! 2. the configuration is repaired and `ccm-agent fleet resume` runs: the canary, then the
//!    others one at a time, serve the new generation, and only then is it deployed, once;
//! 3. `ccm-agent fleet rollback`: all four serve the first generation again;
//! 4. `fleet resume` starts it over from the canary and `fleet halt` stops it (an operator's
//!    halt, named in `fleet status`); `fleet halt` again is refused.
//!
//! Without nginx or etcd it fails under CI (which installs both) and is skipped elsewhere.

#![cfg(feature = "fleet")]
#![allow(clippy::unwrap_used)]

mod etcd_fixture;
mod reload_common;

use reload_common::required;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ccm_agent::emulator::{Emulator, EmulatorConfig};
use ccm_agent::fleet::config::FleetSettings;
use ccm_agent::fleet::coordinator::{FleetSnapshot, snapshot};
use ccm_agent::reload::VerifyEndpoint;
use etcd_fixture::Etcd;
use reload_common::{free_port, served, write_placeholder};

const PREFIX: &str = "/rollout-test";
const SNI: &str = "www.fleet.test";
/// Not due for 50 minutes of a one-hour certificate; the emergency floor at 5 minutes left.
const NOT_DUE: &str = "10m";
/// Due 10 s after issuance.
const DUE: &str = "59m50s";

struct Host {
    id: String,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    metrics_port: u16,
    child: Option<Child>,
    _nginx: reload_common::Running,
}

struct World<'a> {
    emu: &'a Emulator,
    etcd: &'a Etcd,
    ca_id: &'a str,
    nginx: &'a Path,
}

fn config_text(w: &World<'_>, h: &Host, renew_before: &str) -> String {
    let aksk = w.emu.aksk();
    let d = h.dir.display();
    format!(
        r#"
[agent]
state_dir = "{d}/state"
schedule = "0 0 * * * *"
host_id = "{id}"
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
lease_ttl = "3s"
timeout = "2s"

[fleet.rollout]
canary = ["m4"]
canary_soak = "2s"
batch = 1

[[certificates]]
name = "www"
fleet = "shared"
renew_before = "{renew_before}"
emergency_before = "5m"
jitter = 0.0
verify_timeout = "15s"
[certificates.output]
dir = "{d}/live"
[certificates.pca]
ca_id = "{ca_id}"
mode = "apply"
subject = {{ common_name = "{SNI}" }}
sans = ["dns:{SNI}"]
validity = {{ type = "HOUR", value = 1 }}
[[certificates.reload]]
type = "nginx"
binary = "{nginx}"
config = "{d}/nginx.conf"
prefix = "{d}"
pid_file = "{d}/nginx.pid"
[[certificates.verify]]
address = "127.0.0.1"
port = {port}
sni = "{SNI}"
[certificates.deploy]
scm_name = "fleet-www"
retry_initial = "10ms"
retry_max = "20ms"
[[certificates.deploy.targets]]
action = "deploy"
service = "ELB"
resources = [{{ id = "lb0001" }}]
"#,
        id = h.id,
        metrics_port = h.metrics_port,
        endpoint = w.emu.base_url(),
        ak = aksk.access_key,
        domain = aksk.domain_id.unwrap_or_default(),
        etcd = w.etcd.url(),
        ca_id = w.ca_id,
        nginx = w.nginx.display(),
        port = h.port,
    )
}

impl Host {
    fn new(w: &World<'_>, root: &Path, id: &str) -> Host {
        let dir = root.join(id);
        let live = dir.join("live");
        std::fs::create_dir_all(&live).unwrap();
        let port = free_port();
        write_placeholder(&live, SNI);
        let conf = reload_common::nginx::write_config(
            &dir,
            port,
            SNI,
            &live.join("fullchain.pem"),
            &live.join("privkey.pem"),
        );
        let nginx = reload_common::nginx::start(w.nginx, &dir, &conf);
        let mut h = Host {
            id: id.to_owned(),
            config: dir.join("ccm-agent.toml"),
            dir,
            port,
            metrics_port: free_port(),
            child: None,
            _nginx: nginx,
        };
        h.configure(w, NOT_DUE);
        let log = std::fs::File::create(h.dir.join("agent.log")).unwrap();
        h.child = Some(
            Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
                .args(["run", "--config"])
                .arg(&h.config)
                .env("CCM_TEST_SK", w.emu.aksk().secret_key.expose())
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        h
    }

    fn configure(&self, w: &World<'_>, renew_before: &str) {
        std::fs::write(&self.config, config_text(w, self, renew_before)).unwrap();
    }

    /// Rewrites the configuration and tells the daemon (SIGHUP).
    fn reconfigure(&self, w: &World<'_>, renew_before: &str) {
        self.configure(w, renew_before);
        let pid = self.child.as_ref().unwrap().id();
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
    }

    fn endpoint(&self) -> VerifyEndpoint {
        VerifyEndpoint {
            address: "127.0.0.1".into(),
            port: self.port,
            sni: Some(SNI.into()),
        }
    }

    async fn serves(&self) -> String {
        served(&self.endpoint()).await.to_ascii_uppercase()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// `ccm-agent fleet ARGS... --config` with this host's configuration: (exit code, output).
    fn fleet(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
            .arg("fleet")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("USER", "ops")
            .env_remove("SUDO_USER")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn logs(hosts: &[Host]) -> String {
    hosts
        .iter()
        .map(|h| {
            let log = h.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("==== {} ====\n{}", h.id, tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn settings(etcd: &Etcd) -> FleetSettings {
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

async fn fleet(etcd: &Etcd) -> FleetSnapshot {
    snapshot(&settings(etcd), None).await.unwrap()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, hosts: &[Host], f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}\n{}",
            logs(hosts)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether every host in `which` serves `fp`.
async fn all_serve(hosts: &[Host], which: &[usize], fp: &str) -> bool {
    for i in which {
        match ccm_agent::reload::served_fingerprint(&hosts[*i].endpoint(), Duration::from_secs(2))
            .await
        {
            Ok(s) if s.eq_ignore_ascii_case(fp) => {}
            _ => return false,
        }
    }
    true
}

async fn deploys(emu: &Emulator) -> usize {
    emu.shared().count_requests("scm.deploy_certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_canary_halts_the_rollout_then_resume_and_rollback() {
    let Some(nginx) = reload_common::nginx::find() else {
        return;
    };
    let Some(etcd) = Etcd::start() else { return };
    ccm_agent::cloud::install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let shared = emu.shared().clone();
    let (_, ca_id) = tokio::task::spawn_blocking(move || {
        ccm_agent::emulator::pca::ca::create_active_ca_pair(&shared, "rollout root", "rollout CA")
    })
    .await
    .unwrap()
    .unwrap();
    let w = World {
        emu: &emu,
        etcd: &etcd,
        ca_id: &ca_id,
        nginx: &nginx,
    };
    let root = tempfile::tempdir().unwrap();
    let hosts: Vec<Host> = (1..=4)
        .map(|i| Host::new(&w, root.path(), &format!("m{i}")))
        .collect();
    let all = [0, 1, 2, 3];
    let canary = 3;
    let others = [0, 1, 2];

    // Generation 1 (nothing to roll out over): every host serves it, and it is deployed.
    wait_until(
        "generation 1 served by all four",
        Duration::from_secs(90),
        &hosts,
        || async {
            let s = fleet(&etcd).await;
            match s.generations.get("www") {
                Some(g) => all_serve(&hosts, &all, &g.fingerprint_sha256).await,
                None => false,
            }
        },
    )
    .await;
    let g1 = fleet(&etcd).await.generations["www"].clone();
    wait_until(
        "generation 1 deployed",
        Duration::from_secs(30),
        &hosts,
        || async { deploys(&emu).await == 1 },
    )
    .await;

    // The canary's nginx configuration breaks; the certificate becomes due everywhere.
    std::fs::write(
        hosts[canary].dir.join("extra.conf"),
        "this_is_not_a_directive on;\n",
    )
    .unwrap();
    for h in &hosts {
        h.reconfigure(&w, DUE);
    }
    wait_until(
        "the rollout to halt",
        Duration::from_secs(90),
        &hosts,
        || async {
            let s = fleet(&etcd).await;
            s.assess("www", time::OffsetDateTime::now_utc())
                .is_some_and(|(_, _, a)| a.stage == ccm_agent::fleet::rollout::Stage::Halted)
        },
    )
    .await;
    let s = fleet(&etcd).await;
    let g2 = s.generations["www"].clone();
    assert_eq!(g2.generation, 2);
    assert_eq!(s.rollouts["www"].canaries, ["m4"]);
    assert_eq!(
        emu.shared().count_requests("pca.create_certificate"),
        2,
        "one issuance per generation, none while halted\n{}",
        logs(&hosts)
    );
    // Nobody but the canary ever served generation 2; it rolled back to generation 1.
    for i in all {
        assert_eq!(
            hosts[i].serves().await,
            g1.fingerprint_sha256,
            "{} serves generation 1\n{}",
            hosts[i].id,
            logs(&hosts)
        );
    }
    assert!(
        hosts[canary]
            .log()
            .contains("rolled back to the previous certificate"),
        "{}",
        logs(&hosts)
    );
    let (code, out) = hosts[0].fleet(&["status"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rollout of generation 2 (over 1): halted"),
        "{out}"
    );
    assert!(out.contains("canary m4 failed"), "{out}");
    assert!(
        out.contains("this_is_not_a_directive"),
        "nginx's stderr is shown: {out}"
    );
    assert!(out.contains("rollout halted: www"), "{out}");
    // Every member's metric says so (each updates it on the watch event).
    wait_until(
        "the metric to say halted",
        Duration::from_secs(20),
        &hosts,
        || async {
            let mut all = true;
            for h in &hosts {
                let metrics = h.metrics().await;
                all &= [
                    "ccm_agent_fleet_rollout_state{name=\"www\",state=\"halted\"} 1",
                    "ccm_agent_fleet_rollout_state{name=\"www\",state=\"canary\"} 0",
                ]
                .iter()
                .all(|line| metrics.lines().any(|l| l == *line));
            }
            all
        },
    )
    .await;
    assert_eq!(
        deploys(&emu).await,
        1,
        "generation 2 is not deployed while halted"
    );
    // No third generation while the rollout is halted, even though generation 2 is due.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(fleet(&etcd).await.generations["www"].generation, 2);

    // Repair, stop the renewals, resume: the canary first, then the others.
    std::fs::write(hosts[canary].dir.join("extra.conf"), "# repaired\n").unwrap();
    for h in &hosts {
        h.reconfigure(&w, NOT_DUE);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, out) = hosts[1].fleet(&["resume", "www"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("members that failed try again: m4"), "{out}");
    wait_until(
        "generation 2 served by all four",
        Duration::from_secs(120),
        &hosts,
        || async { all_serve(&hosts, &all, &g2.fingerprint_sha256).await },
    )
    .await;
    wait_until(
        "the rollout to be done and deployed",
        Duration::from_secs(60),
        &hosts,
        || async {
            let s = fleet(&etcd).await;
            let done = s
                .assess("www", time::OffsetDateTime::now_utc())
                .is_some_and(|(_, _, a)| a.stage == ccm_agent::fleet::rollout::Stage::Done);
            done && deploys(&emu).await == 2
        },
    )
    .await;
    // The order: the canary reported first, the others after the soak.
    let s = fleet(&etcd).await;
    let results = &s.results["www"][&2];
    assert_eq!(results.len(), 4, "{results:?}");
    let at = |m: &str| {
        time::OffsetDateTime::parse(
            &results[m].at,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    for m in ["m1", "m2", "m3"] {
        assert!(
            at(m) >= at("m4") + time::Duration::seconds(2),
            "{m} switched after the canary's soak: {results:?}"
        );
    }
    wait_until(
        "fleet status healthy",
        Duration::from_secs(30),
        &hosts,
        || async { hosts[2].fleet(&["status"]).0 == 0 },
    )
    .await;
    let (_, out) = hosts[2].fleet(&["status"]);
    assert!(
        out.contains("rollout of generation 2 (over 1): done"),
        "{out}"
    );

    // Roll back: all four serve generation 1 again.
    let (code, out) = hosts[2].fleet(&["rollback", "www"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rolled back www from generation 2 to generation 1"),
        "{out}"
    );
    wait_until(
        "generation 1 served by all four again",
        Duration::from_secs(90),
        &hosts,
        || async { all_serve(&hosts, &all, &g1.fingerprint_sha256).await },
    )
    .await;
    // Each member reports what it serves: none lags behind its target, generation 1.
    wait_until(
        "fleet status healthy",
        Duration::from_secs(30),
        &hosts,
        || async { hosts[0].fleet(&["status"]).0 == 0 },
    )
    .await;
    let (_, out) = hosts[0].fleet(&["status"]);
    assert!(out.contains("rolled_back: rollback by ops@m3"), "{out}");
    assert!(
        hosts
            .iter()
            .any(|h| h.log().contains("the rollout changed stage")),
        "the members log the change"
    );

    // Resume starts it over from the canary; an operator halts it.
    let (code, out) = hosts[0].fleet(&["resume", "www"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("starts over from the canaries (m4)"), "{out}");
    let (code, out) = hosts[0].fleet(&["halt", "www"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = hosts[3].fleet(&["status"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("halted: halt by ops@m1"), "{out}");
    let (code, out) = hosts[3].fleet(&["halt", "www"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing to halt"), "{out}");
    // The members outside the canary never left generation 1.
    assert!(all_serve(&hosts, &others, &g1.fingerprint_sha256).await);
}
