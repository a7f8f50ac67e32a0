//! Fleet mode figures (BENCHMARKS.md, "Fleet mode"): N lightweight members (the real
//! [`Coordinator`]: lease, keep-alive, registration, watch) in this one process, sharing one
//! private etcd server on loopback. Nothing is asserted on speed.
//!
//! - **Propagation**: one member takes the lock and publishes a new generation; the time until
//!   every member's watch-fed view has it. Repeated, min / median / p95 / max.
//! - **Steady state**: etcd requests per member per minute while nothing changes, counted by
//!   the members (unary calls, keep-alives, watch creations) and by the server
//!   (`grpc_server_msg_received_total` from etcd's own /metrics).
//! - **Staged rollout**: the leader publishes one more generation with a rollout (2 canaries,
//!   a 1 s soak, batches of 10 %); every member decides from its own watch-fed view
//!   ([`Coordinator::assess`]) whether it is admitted and, if so, "activates" at once and
//!   reports its result (the install and reload themselves are not part of this figure). Time
//!   per stage and the etcd requests the whole rollout cost.
//!
//! `cargo bench --features fleet --bench fleet` runs 200 members, 20 generations and a 60 s
//! steady state. Without `--bench` in argv it runs a smoke version (20 members, 3 generations,
//! 5 s). Options after `--`: `--members N`, `--generations N`, `--steady-secs N`,
//! `--lease-ttl-secs N` (default 10), `--canaries N` (2), `--batch-percent N` (10), `--soak-secs N` (1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/etcd_fixture/mod.rs"]
mod etcd_fixture;
#[path = "../tests/required/mod.rs"]
mod required;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_agent::fleet::Coordinator;
use ccm_agent::fleet::config::FleetSettings;
use ccm_agent::fleet::keys::{Generation, Member};
use ccm_agent::fleet::rollout::{
    self, Batch, Canary, DeployAfter, MemberResult, RolloutSettings, Stage,
};

struct Opts {
    members: usize,
    generations: usize,
    steady_secs: u64,
    ttl: u64,
    canaries: u32,
    batch_percent: u32,
    soak_secs: u64,
}

impl Opts {
    fn parse() -> Opts {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        let num = |name: &str, default: u64| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Opts {
            members: num("--members", if full { 200 } else { 20 }) as usize,
            generations: num("--generations", if full { 20 } else { 3 }) as usize,
            steady_secs: num("--steady-secs", if full { 60 } else { 5 }),
            ttl: num("--lease-ttl-secs", 10),
            canaries: num("--canaries", 2) as u32,
            batch_percent: num("--batch-percent", 10) as u32,
            soak_secs: num("--soak-secs", 1),
        }
    }
}

/// etcd's own count of gRPC messages received (unary requests and stream messages).
async fn server_messages(url: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("etcd metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let opts = Opts::parse();
    let Some(etcd) = etcd_fixture::Etcd::start() else {
        return;
    };
    ccm_agent::cloud::install_crypto_provider();
    let settings = |id: &str| FleetSettings {
        endpoints: vec![etcd.url()],
        prefix: "/bench".into(),
        lease_ttl: Duration::from_secs(opts.ttl),
        timeout: Duration::from_secs(5),
        member_id: id.into(),
        tls: None,
        auth: None,
        emergency_local: true,
    };
    let t0 = Instant::now();
    let members: Vec<Arc<Coordinator>> = (0..opts.members)
        .map(|i| {
            let id = format!("m{i:03}");
            Coordinator::start(
                settings(&id),
                Member {
                    member_id: id.clone(),
                    host_id: id,
                    version: "bench".into(),
                    serves: vec!["www:shared".into()],
                    started_at: "2026-01-01T00:00:00Z".into(),
                },
                None,
            )
        })
        .collect();
    while !members.iter().all(|m| m.is_up()) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "members did not join"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join = t0.elapsed();
    println!(
        "fleet bench: {} members joined (lease, registration, watch) in {:.2} s",
        opts.members,
        join.as_secs_f64()
    );

    // Propagation of a new generation to every member.
    let leader = &members[0];
    assert!(leader.try_lock("www").await.expect("lock"));
    let mut times = Vec::new();
    for n in 1..=opts.generations as u64 {
        let g = Generation {
            generation: n,
            cloud_id: format!("cert-{n}"),
            fingerprint_sha256: format!("{n:064X}"),
            not_after: "2030-01-01T00:00:00Z".into(),
            not_before: "2029-01-01T00:00:00Z".into(),
            issued_by: leader.member_id().to_owned(),
            source: "pca".into(),
        };
        let start = Instant::now();
        leader.publish("www", &g, None).await.expect("publish");
        loop {
            if members
                .iter()
                .all(|m| m.generation("www").is_some_and(|x| x.generation == n))
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "generation {n} never arrived"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        times.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    leader.unlock("www").await.expect("unlock");
    times.sort();
    println!(
        "new generation -> every member ({} members, {} generations): min {:.1} ms, median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        opts.members,
        times.len(),
        times[0].as_secs_f64() * 1e3,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );

    // Steady state: nothing changes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client_before: u64 = members.iter().map(|m| m.requests()).sum();
    let server_before = server_messages(&etcd.url()).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(opts.steady_secs)).await;
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let client: u64 = members.iter().map(|m| m.requests()).sum::<u64>() - client_before;
    let server = server_messages(&etcd.url()).await - server_before;
    let per = |x: f64| x / opts.members as f64 / minutes;
    println!(
        "steady state over {} s, lease TTL {} s: {:.1} requests per member per minute counted by the members, {:.1} gRPC messages per member per minute received by etcd",
        opts.steady_secs,
        opts.ttl,
        per(client as f64),
        per(server),
    );

    // A staged rollout of one more generation.
    let previous = leader.generation("www").expect("the last generation");
    let n = previous.generation + 1;
    let g = Generation {
        generation: n,
        cloud_id: format!("cert-{n}"),
        fingerprint_sha256: format!("{n:064X}"),
        ..previous.clone()
    };
    let settings = RolloutSettings {
        canary: Canary::Count(opts.canaries),
        canary_soak: Duration::from_secs(opts.soak_secs),
        batch: Batch::Percent(opts.batch_percent),
        failure_budget: 0,
        deploy_after: DeployAfter::Done,
        emergency_skip_soak: true,
    };
    let plan = rollout::start(
        &settings,
        &g,
        &previous,
        &leader.serving("www"),
        leader.member_id(),
        false,
        time::OffsetDateTime::now_utc(),
    );
    assert!(leader.try_lock("www").await.expect("lock"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client_before: u64 = members.iter().map(|m| m.requests()).sum();
    let server_before = server_messages(&etcd.url()).await;
    let start = Instant::now();
    leader
        .publish("www", &g, Some(&plan))
        .await
        .expect("publish");
    let mut stage = Stage::Canary;
    let mut marks = vec![(Stage::Canary, Duration::ZERO)];
    let mut next_progress = Duration::from_secs(10);
    loop {
        let now = time::OffsetDateTime::now_utc();
        for m in &members {
            let Some((seen, _, a)) = m.assess("www", now) else {
                continue;
            };
            if seen.generation == n
                && a.admits(m.member_id())
                && !m.results("www", n).contains_key(m.member_id())
            {
                let result = MemberResult {
                    ok: true,
                    fingerprint_sha256: g.fingerprint_sha256.clone(),
                    detail: None,
                    result: "ok".into(),
                    at: ccm_agent::values::rfc3339(now),
                };
                m.put_result("www", n, &result).await.expect("report");
            }
        }
        let now_stage = leader
            .assess("www", time::OffsetDateTime::now_utc())
            .map(|(_, _, a)| a.stage)
            .expect("the rollout");
        if now_stage != stage {
            stage = now_stage;
            marks.push((stage, start.elapsed()));
        }
        // Progress every 10 s, so that a rollout that does not finish shows where it stands.
        if start.elapsed() >= next_progress {
            next_progress += Duration::from_secs(10);
            let now = time::OffsetDateTime::now_utc();
            let behind: Vec<String> = members
                .iter()
                .filter_map(|m| match m.assess("www", now) {
                    Some((_, _, a)) if a.stage == Stage::Done => None,
                    Some((_, _, a)) => Some(format!("{}: {} ({})", m.member_id(), a.stage, a.next)),
                    None => Some(format!("{}: no rollout in its view", m.member_id())),
                })
                .collect();
            let seen: Vec<usize> = members.iter().map(|m| m.results("www", n).len()).collect();
            let up = members.iter().filter(|m| m.is_up()).count();
            let lagging: Vec<String> = members
                .iter()
                .zip(&seen)
                .filter(|(_, k)| **k < seen.iter().copied().max().unwrap_or(0))
                .map(|(m, k)| format!("{} sees {k}", m.member_id()))
                .take(5)
                .collect();
            eprintln!(
                "rollout after {:.0} s: the leader sees {stage}; {} member(s) not done yet, first: {:?}; {up} up; results seen per member: min {} max {}; behind: {lagging:?}",
                start.elapsed().as_secs_f64(),
                behind.len(),
                behind.first(),
                seen.iter().min().unwrap_or(&0),
                seen.iter().max().unwrap_or(&0),
            );
        }
        // Done when every member's own view says so.
        if members.iter().all(|m| {
            m.assess("www", time::OffsetDateTime::now_utc())
                .is_some_and(|(_, _, a)| a.stage == Stage::Done)
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the rollout did not finish: {stage}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total = start.elapsed();
    leader.unlock("www").await.expect("unlock");
    let client: u64 = members.iter().map(|m| m.requests()).sum::<u64>() - client_before;
    let server = server_messages(&etcd.url()).await - server_before;
    let mut line = Vec::new();
    for (i, (s, at)) in marks.iter().enumerate() {
        let end = marks.get(i + 1).map_or(total, |(_, t)| *t);
        if *s != Stage::Done {
            line.push(format!("{s} {:.2} s", (end - *at).as_secs_f64()));
        }
    }
    println!(
        "staged rollout over {} members ({} canaries, soak {} s, batches of {}): {} ; done after {:.2} s (the soak included); {} requests counted by the members ({:.1} per member), {:.0} gRPC messages received by etcd",
        opts.members,
        plan.canaries.len(),
        opts.soak_secs,
        plan.batch,
        line.join(", "),
        total.as_secs_f64(),
        client,
        client as f64 / opts.members as f64,
        server,
    );
    for m in &members {
        m.stop().await;
    }
}
