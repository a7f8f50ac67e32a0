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
    let err = a.publish("www", &g).await.expect_err("refused");
    assert!(matches!(err, FleetError::Fenced { .. }), "{err}");
    let units = b.units("www", 1);
    assert_eq!(
        units.get("push/ELB/r1").map(|p| p.member.as_str()),
        Some("b")
    );
    a.stop().await;
    b.stop().await;
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
    members[0].publish("www", &g).await.expect("publish");
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
