//! Lease hand-over and takeover against the real NATS JetStream server at 127.0.0.1:4222
//! (`MESHTRACE_TEST_NATS_URL` overrides it), each test in a bucket of its own, removed after.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use meshtrace_cluster::lease::{Change, LeaseConfig, Leases};
use meshtrace_cluster::names::delete_bucket;
use meshtrace_cluster::ClusterNames;

async fn context() -> jetstream::Context {
    let url =
        std::env::var("MESHTRACE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("the tests need NATS with JetStream at {url}: {e}"));
    jetstream::new(client)
}

fn unique(prefix: &str) -> ClusterNames {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    ClusterNames::new(&format!("{prefix}{}x{nanos}", std::process::id())).unwrap()
}

async fn leases(js: &jetstream::Context, names: &ClusterNames, node: &str) -> Leases {
    let cfg = LeaseConfig {
        node: node.into(),
        partitions: 8,
        ttl: Duration::from_secs(2),
    };
    Leases::open(js, names, cfg).await.unwrap()
}

/// Ticks `l`, releasing whatever it is asked to.
async fn tick(l: &mut Leases) -> Vec<Change> {
    let changes = l.tick().await.unwrap();
    for c in &changes {
        if let Change::Release(p) = c {
            l.release(*p).await.unwrap();
        }
    }
    changes
}

fn disjoint(a: &Leases, b: &Leases) {
    let a: BTreeSet<u32> = a.held().into_iter().collect();
    let b: BTreeSet<u32> = b.held().into_iter().collect();
    assert!(a.is_disjoint(&b), "{a:?} and {b:?} overlap");
}

#[tokio::test]
async fn partitions_spread_over_nodes_and_move_when_one_dies() {
    let js = context().await;
    let names = unique("leases");
    let mut a = leases(&js, &names, "a").await;
    tick(&mut a).await;
    assert_eq!(a.held().len(), 8, "alone, a node owns every partition");

    let mut b = leases(&js, &names, "b").await;
    tick(&mut b).await;
    assert!(b.held().is_empty(), "nothing is free yet");
    let changes = tick(&mut a).await;
    assert_eq!(
        changes
            .iter()
            .filter(|c| matches!(c, Change::Release(_)))
            .count(),
        4
    );
    tick(&mut b).await;
    assert_eq!((a.held().len(), b.held().len()), (4, 4));
    disjoint(&a, &b);

    // a stops renewing (as after kill -9): b takes its partitions once the leases expire.
    drop(a);
    let started = std::time::Instant::now();
    while b.held().len() < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "takeover took too long"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        tick(&mut b).await;
    }
    assert!(b.leading(), "the survivor leads");
    b.leave().await.unwrap();
    delete_bucket(&js, &names.lease_bucket()).await.unwrap();
}

#[tokio::test]
async fn one_node_leads_and_another_takes_over_when_it_stops() {
    let js = context().await;
    let names = unique("leader");
    let mut a = leases(&js, &names, "a").await;
    let mut b = leases(&js, &names, "b").await;
    assert!(tick(&mut a).await.contains(&Change::Elected));
    assert!(!tick(&mut b).await.contains(&Change::Elected));
    tick(&mut a).await;
    assert!(a.leading() && !b.leading(), "exactly one leader");
    // a leaves cleanly: b is elected at its next tick.
    a.leave().await.unwrap();
    assert!(tick(&mut b).await.contains(&Change::Elected));
    b.leave().await.unwrap();
    delete_bucket(&js, &names.lease_bucket()).await.unwrap();
}

#[tokio::test]
async fn a_lease_renewed_after_another_node_claimed_it_is_lost() {
    let js = context().await;
    let names = unique("lost");
    let mut a = leases(&js, &names, "a").await;
    tick(&mut a).await;
    // a pauses past the TTL; b claims everything meanwhile.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let mut b = leases(&js, &names, "b").await;
    let claimed = tick(&mut b).await;
    assert!(!claimed.is_empty());
    let changes = tick(&mut a).await;
    let lost: Vec<_> = changes
        .iter()
        .filter(|c| matches!(c, Change::Lost(_)))
        .collect();
    assert_eq!(lost.len(), 8, "{changes:?}");
    disjoint(&a, &b);
    b.leave().await.unwrap();
    delete_bucket(&js, &names.lease_bucket()).await.unwrap();
}
