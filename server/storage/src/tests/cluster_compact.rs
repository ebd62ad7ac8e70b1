//! Compaction in cluster mode: each node merges the segments it wrote (never a peer's), the
//! peer sees the merge at its next refresh with the same answers, and the merged files are
//! deleted through the catalog's marks by whichever node sweeps, never a file a segment row
//! points at.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use meshtrace_model::arrow_conv::spans_to_batch;

use super::cluster::node_config;
use super::compact::{answers, parquet_files};
use super::gen::mesh_traffic;
use super::now_ns;
use crate::cluster::Appended;
use crate::{span_names, DerivedConfig, DerivedStore, DerivedTable, Store};

async fn compacting_node(dir: &Path, name: &str) -> Store {
    on_catalog(dir, name, None).await
}

/// A compacting node on a shared object store under `dir` and the shared catalog `catalog`
/// (`None`: a SQLite file under `dir`).
async fn on_catalog(dir: &Path, name: &str, catalog: Option<&str>) -> Store {
    let objects =
        crate::object_store_from_url(&format!("file://{}", dir.join("objects").display())).unwrap();
    let mut cfg = crate::StoreConfig {
        compact_rows: 1000,
        compact_grace: Duration::ZERO,
        ..node_config(dir, name)
    };
    if let Some(url) = catalog {
        cfg.catalog_url = Some(url.to_string());
    }
    Store::open_with_object_store(cfg, objects).await.unwrap()
}

/// How many of the segments `store` lists were written by `node`.
fn written_by(store: &Store, node: &str) -> usize {
    (store.segments().iter())
        .filter(|s| crate::layout::node_of(&s.path) == Some(node))
        .count()
}

#[tokio::test]
async fn each_node_merges_its_own_segments_and_its_peer_sees_the_merge() {
    merge_own_segments(None).await;
}

#[tokio::test]
async fn each_node_merges_its_own_segments_on_a_postgres_catalog() {
    use super::postgres::{drop_schema, fresh_schema, SERVER};
    let schema = fresh_schema().await;
    merge_own_segments(Some(&format!("{SERVER}?options=-csearch_path%3D{schema}"))).await;
    drop_schema(&schema).await;
}

async fn merge_own_segments(catalog: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    // Node IDs may hold '-': "a-b" is not "b".
    let (a, b) = (
        on_catalog(dir.path(), "a-b", catalog).await,
        on_catalog(dir.path(), "b", catalog).await,
    );
    let claims = [
        a.claim_partition(7).await.unwrap(),
        b.claim_partition(8).await.unwrap(),
    ];
    // Four flushes each of partitions 7 (a) and 8 (b), whose messages interleave in the one
    // stream: a's segments hold records 1, 3, 5, 7, so no two of them are adjacent.
    let t0 = now_ns() - 60_000_000_000;
    let mut ids = BTreeSet::new();
    for round in 0..4u64 {
        for (i, store) in [&a, &b].into_iter().enumerate() {
            let seq = 2 * round + 1 + i as u64;
            let spans = mesh_traffic(seq, 150, t0 + seq as i64 * 1_000_000_000, 1_000_000);
            ids.extend(spans.iter().map(|s| s.trace_id));
            let batch = spans_to_batch(&spans).unwrap();
            let (partition, epoch) = (7 + i as u32, claims[i].epoch);
            let appended = store.append_partition(partition, epoch, seq, span_names(&spans), batch);
            assert_eq!(appended, Appended::New);
            store.flush().await.unwrap();
        }
    }
    let sample: Vec<[u8; 16]> = ids.into_iter().step_by(7).collect();
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    let before = answers(&b, &sample).await;
    assert_eq!(answers(&a, &sample).await, before);
    let objects = dir.path().join("objects");
    assert_eq!(parquet_files(&objects), 8);

    assert_eq!(a.compact_segments().await.unwrap(), 4, "a merges its four");
    assert_eq!(
        a.compact_segments().await.unwrap(),
        0,
        "and leaves b's alone"
    );
    assert_eq!((written_by(&a, "a-b"), written_by(&a, "b")), (1, 4));
    b.refresh().await.unwrap();
    assert_eq!((written_by(&b, "a-b"), written_by(&b, "b")), (1, 4));
    assert_eq!(answers(&b, &sample).await, before, "b sees the merge");
    assert_eq!(answers(&a, &sample).await, before);

    // The merged files stay until a sweep finds their marks due, on any node.
    assert_eq!(parquet_files(&objects), 9);
    assert_eq!(b.sweep_doomed().await.unwrap(), 4);
    assert_eq!(parquet_files(&objects), 5);
    assert_eq!(answers(&b, &sample).await, before);

    assert_eq!(b.compact_segments().await.unwrap(), 4, "b merges its own");
    a.refresh().await.unwrap();
    assert_eq!(a.segments().len(), 2);
    assert_eq!(a.sweep_doomed().await.unwrap(), 4);
    assert_eq!(parquet_files(&objects), 2);
    assert_eq!(answers(&a, &sample).await, before);
    assert_eq!(answers(&b, &sample).await, before);
}

/// A merge's output whose commit never came (its node died) is deleted once its mark is due;
/// a marked file that a segment row points at is only unmarked.
#[tokio::test]
async fn a_sweep_deletes_an_uncommitted_merge_but_never_a_committed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let a = compacting_node(dir.path(), "a").await;
    let claim = a.claim_partition(7).await.unwrap();
    let spans = mesh_traffic(1, 150, now_ns() - 60_000_000_000, 1_000_000);
    let batch = spans_to_batch(&spans).unwrap();
    a.append_partition(7, claim.epoch, 1, span_names(&spans), batch);
    a.flush().await.unwrap();
    let committed = a.segments()[0].path.clone();

    let stray = "spans/date=2026-01-01/hour=00/seg-1-1-1-a.parquet";
    let file = dir.path().join("objects").join(stray);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"a merge's output, never committed").unwrap();
    let catalog = &a.inner.catalog;
    let due = now_ns();
    catalog.doom(stray, None, due).await.unwrap();
    catalog.doom(&committed, None, due).await.unwrap();
    // Not due yet: left alone.
    catalog
        .doom("spans/later.parquet", None, due + 3_600_000_000_000)
        .await
        .unwrap();

    assert_eq!(a.sweep_doomed().await.unwrap(), 1);
    assert!(!file.exists(), "the uncommitted merge's file is deleted");
    assert_eq!(parquet_files(&dir.path().join("objects")), 1);
    assert_eq!(
        super::rows(&a, "SELECT count(*) FROM spans").await,
        [format!("| {} |", spans.len())]
    );
    let left = catalog.due_doomed(i64::MAX, 10).await.unwrap();
    assert_eq!(
        left,
        [("spans/later.parquet".to_string(), None)],
        "both due marks are gone"
    );
}

/// Derived segments too: each node merges the ones it wrote, and the peer reads the merge.
#[tokio::test]
async fn each_node_merges_its_own_derived_segments() {
    use super::derived::{batch, schema};
    let dir = tempfile::tempdir().unwrap();
    let cfg = DerivedConfig {
        flush_max_age: Duration::from_secs(3600),
        compact_rows: 6,
        compact_grace: Duration::ZERO,
        ..DerivedConfig::default()
    };
    let table = DerivedTable {
        name: "traces".into(),
        schema: schema(),
    };
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let store = compacting_node(dir.path(), name).await;
        let derived = DerivedStore::open(&store, vec![table.clone()], cfg.clone())
            .await
            .unwrap();
        nodes.push((store, derived));
    }
    let now = now_ns();
    for i in 0..3u8 {
        for (n, (_, d)) in nodes.iter().enumerate() {
            let id = 10 * (n as u8 + 1) + i;
            let rows = [(id, "x", now + i64::from(i), 1), (id + 100, "y", now, 1)];
            d.append("traces", batch(&rows)).unwrap();
            d.flush().await.unwrap();
        }
    }
    let (a, da) = &nodes[0];
    let (b, db) = &nodes[1];
    db.refresh().await.unwrap();
    let q = "SELECT class, count(*) FROM traces GROUP BY class ORDER BY class";
    let before = super::rows(b, q).await;
    assert_eq!(before, ["| x | 6 |", "| y | 6 |"]);

    assert_eq!(da.compact().await.unwrap(), 3, "a merges its three");
    assert_eq!(da.compact().await.unwrap(), 0, "and leaves b's alone");
    db.refresh().await.unwrap();
    let rows_of = |d: &DerivedStore| {
        let mut rows: Vec<i64> = (d.segments("traces").unwrap().iter())
            .map(|s| s.row_count)
            .collect();
        rows.sort_unstable();
        rows
    };
    assert_eq!(rows_of(db), [2, 2, 2, 6]);
    assert_eq!(super::rows(b, q).await, before, "b reads a's merge");
    assert_eq!(b.sweep_doomed().await.unwrap(), 3);
    da.refresh().await.unwrap();
    assert_eq!(super::rows(a, q).await, before);
    assert_eq!(super::rows(b, q).await, before);
}

/// A commit whose file's mark a sweep already took rolls back: the file may be gone.
#[tokio::test]
async fn a_commit_whose_mark_was_swept_rolls_back() {
    use crate::catalog::Retirement;
    let dir = tempfile::tempdir().unwrap();
    let a = compacting_node(dir.path(), "a").await;
    let catalog = &a.inner.catalog;
    let seg = crate::DerivedSegment {
        id: 0,
        table: "traces".into(),
        path: "derived/traces/date=2026-01-01/seg-1-1.node=a.parquet".into(),
        min_start_ns: 0,
        max_start_ns: 0,
        row_count: 1,
        byte_size: 1,
        created_at_ns: 0,
    };
    let now = now_ns();
    catalog.doom(&seg.path, None, now).await.unwrap();
    assert!(
        catalog.take_doomed(&seg.path, now).await.unwrap(),
        "a sweep takes the mark"
    );
    let retire = Retirement {
        written: seg.path.clone(),
        inputs: Vec::new(),
        grace: Duration::ZERO,
    };
    match catalog.commit_derived_segment(&seg, Some(&retire)).await {
        Err(crate::StorageError::Conflict(why)) => assert!(why.contains("swept"), "{why}"),
        other => panic!("the commit must roll back, got {other:?}"),
    }
    assert!(catalog.derived_segments().await.unwrap().is_empty());
}
