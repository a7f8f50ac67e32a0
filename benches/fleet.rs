//! Fleet mode figures (BENCHMARKS.md, "Fleet mode"): N lightweight members (the real
//! [`Coordinator`]: lease, keep-alive, registration, watch) in this one process, sharing one
//! private etcd server on loopback. Nothing is asserted on speed.
//!
//! - **Propagation**: one member takes the lock and publishes a new generation; the time until
//!   every member's watch-fed view has it. Repeated, min / median / p95 / max.
//! - **Steady state**: etcd requests per member per minute while nothing changes, counted by
//!   the members (unary calls, keep-alives, watch creations) and by the server
//!   (`grpc_server_msg_received_total` from etcd's own /metrics).
//!
//! `cargo bench --features fleet --bench fleet` runs 200 members, 20 generations and a 60 s
//! steady state. Without `--bench` in argv it runs a smoke version (20 members, 3 generations,
//! 5 s). Options after `--`: `--members N`, `--generations N`, `--steady-secs N`,
//! `--lease-ttl-secs N` (default 10).

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

struct Opts {
    members: usize,
    generations: usize,
    steady_secs: u64,
    ttl: u64,
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
    for m in &members {
        m.stop().await;
    }
}
