//! Cluster mode in the store: two nodes share one catalog and one object store; partition
//! claims fence the previous owner, and each node sees the other's segments after a refresh.

use std::path::Path;

use meshtrace_model::arrow_conv::spans_to_batch;

use super::gen::mesh_traffic;
use super::{config, now_ns};
use crate::cluster::{Appended, Claim};
use crate::{span_names, StorageError, Store, StoreConfig};

pub(super) fn node_config(dir: &Path, node: &str) -> StoreConfig {
    StoreConfig {
        cluster_node: Some(node.into()),
        catalog_url: Some(format!(
            "sqlite://{}?mode=rwc",
            dir.join("catalog.db").display()
        )),
        ..config(dir)
    }
}

async fn node(dir: &Path, name: &str) -> Store {
    let objects =
        crate::object_store_from_url(&format!("file://{}", dir.join("objects").display())).unwrap();
    Store::open_with_object_store(node_config(dir, name), objects)
        .await
        .unwrap()
}

fn append(store: &Store, claim: Claim, seq: u64, spans: &[meshtrace_model::Span]) -> Appended {
    let batch = spans_to_batch(spans).unwrap();
    store.append_partition(7, claim.epoch, seq, span_names(spans), batch)
}

async fn count(store: &Store) -> i64 {
    let rows = super::rows(store, "SELECT count(*) AS n FROM spans").await;
    rows[0].trim_matches('|').trim().parse().unwrap()
}

#[tokio::test]
async fn a_node_that_lost_its_partition_cannot_commit_it() {
    lost_partition(true).await;
}

#[tokio::test]
async fn a_node_that_lost_its_partition_drops_it_at_the_next_refresh() {
    lost_partition(false).await;
}

async fn lost_partition(fenced_at_flush: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(dir.path(), "a").await, node(dir.path(), "b").await);
    let spans = mesh_traffic(4, 40, now_ns(), 1_000_000);
    let (first, second) = spans.split_at(spans.len() / 2);

    let a7 = a.claim_partition(7).await.unwrap();
    assert_eq!(a7.checkpoint, 0);
    assert_eq!(append(&a, a7, 10, first), Appended::New);
    assert_eq!(
        append(&a, a7, 10, first),
        Appended::Again,
        "a redelivery is not buffered twice"
    );
    let other = Claim {
        epoch: a7.epoch + 1,
        ..a7
    };
    assert_eq!(
        append(&a, other, 11, first),
        Appended::NotOwned,
        "only under the claim's epoch"
    );
    a.flush().await.unwrap();
    assert_eq!(a.partition_committed(7), Some(10));

    // a pauses; b claims the partition, starts after a's checkpoint and consumes the rest.
    assert_eq!(append(&a, a7, 12, second), Appended::New);
    let b7 = b.claim_partition(7).await.unwrap();
    assert_eq!(b7.checkpoint, 10);
    assert_eq!(append(&b, b7, 12, second), Appended::New);
    b.flush().await.unwrap();
    if fenced_at_flush {
        match a.flush().await {
            Err(StorageError::Fenced { partition: 7 }) => {}
            other => panic!("a's late commit must be fenced, got {other:?}"),
        }
    } else {
        // a refreshes before it flushes: it sees b's claim and drops the rows, rather than
        // showing them twice beside b's segment.
        a.refresh().await.unwrap();
        a.flush().await.unwrap();
    }
    assert_eq!(a.owned_partitions(), Vec::<u32>::new());
    assert_eq!(
        a.buffered_rows(),
        0,
        "a drops the rows that are b's to write"
    );
    assert_eq!(append(&a, a7, 13, second), Appended::NotOwned);

    for store in [&a, &b] {
        store.refresh().await.unwrap();
        assert_eq!(
            count(store).await,
            spans.len() as i64,
            "every span exactly once"
        );
    }
    assert_eq!(b.segments().len(), 2);
    // A later claim starts after everything committed.
    let again = a.claim_partition(7).await.unwrap();
    assert_eq!((again.epoch, again.checkpoint), (3, 12));
}

#[tokio::test]
async fn open_in_cluster_mode_leaves_a_peers_uncommitted_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects").join("spans");
    std::fs::create_dir_all(&objects).unwrap();
    // A peer between its put and its commit.
    let in_flight = objects.join("seg-1-2-peer.parquet");
    std::fs::write(&in_flight, b"not yet committed").unwrap();
    let store = node(dir.path(), "a").await;
    store.settle_orphans(0).await.unwrap();
    assert!(in_flight.exists());
    assert_eq!(store.stats().orphans_removed, 0);
}
