//! Compaction of span segments: small segments merged into one without a gap or a duplicate
//! (traces, search, SQL, rollups), the old files deleted after the grace, the merge kept
//! across a restart, and a merge cut short leaving only files the next start removes.

use std::collections::BTreeSet;
use std::time::Duration;

use meshtrace_model::SpanKind;

use super::gen::mesh_traffic;
use super::{config, normalized_all, now_ns, rows};
use crate::rollup::RollupFilter;
use crate::{Store, StoreConfig, TraceQuery};

fn compacting(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        compact_rows: 1000,
        compact_grace: Duration::from_millis(50),
        ..config(dir)
    }
}

/// A compacting store with three segments of 200 mesh spans, records 1 to 3.
async fn three_segments(dir: &std::path::Path) -> Store {
    let store = Store::open(compacting(dir)).await.unwrap();
    let t0 = now_ns() - 60_000_000_000;
    for seq in 1..=3u64 {
        store
            .append(seq, &mesh_traffic(seq, 200, t0, 1_000_000))
            .unwrap();
        store.flush().await.unwrap();
    }
    store
}

pub(super) fn parquet_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![dir.join("spans")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                n += 1;
            }
        }
    }
    n
}

/// What a user sees of the store: a few traces, a search, SQL counts and RED rollups.
pub(super) async fn answers(store: &Store, ids: &[[u8; 16]]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let spans = normalized_all(store.trace(*id).await.unwrap());
        out.push(format!("{spans:?}"));
    }
    let found = store
        .find_traces(&TraceQuery {
            service: Some("reviews".into()),
            limit: 5,
            ..TraceQuery::default()
        })
        .await
        .unwrap();
    let found: Vec<String> = found.iter().map(|t| hex::encode(t[0].trace_id)).collect();
    out.push(found.join(","));
    let sql = "SELECT count(*), count(DISTINCT span_id), sum(duration_ns) FROM spans";
    out.extend(rows(store, sql).await);
    let filter = RollupFilter {
        services: vec!["reviews".into()],
        kinds: vec![SpanKind::Server, SpanKind::Client],
        from_ns: 0,
        to_ns: i64::MAX,
    };
    let calls: u64 = store
        .span_rollups(&filter)
        .await
        .unwrap()
        .values()
        .map(|r| r.calls)
        .sum();
    out.push(format!("reviews calls {calls}"));
    out
}

/// Flushes `segments` segments of `spans` mesh spans each (records 1, 2, ...), the n-th
/// starting n times `gap_ns` after `t0`; returns every trace ID sent.
async fn flush_traffic(
    store: &Store,
    segments: u64,
    spans: usize,
    t0: i64,
    gap_ns: i64,
) -> BTreeSet<[u8; 16]> {
    let mut ids = BTreeSet::new();
    for seq in 1..=segments {
        let sent = mesh_traffic(seq, spans, t0 + seq as i64 * gap_ns, 1_000_000);
        ids.extend(sent.iter().map(|s| s.trace_id));
        store.append(seq, &sent).unwrap();
        store.flush().await.unwrap();
    }
    ids
}

#[tokio::test]
async fn small_segments_are_merged_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(compacting(dir.path())).await.unwrap();
    let t0 = now_ns() - 60_000_000_000;
    let ids = flush_traffic(&store, 4, 150, t0, 1_000_000_000).await;
    let ids: Vec<[u8; 16]> = ids.into_iter().step_by(7).collect();
    let before = answers(&store, &ids).await;
    assert_eq!(store.segments().len(), 4);
    assert_eq!(parquet_files(dir.path()), 4);

    assert_eq!(store.compact_segments().await.unwrap(), 4);
    let segs = store.segments();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].wal_seq_min, segs[0].wal_seq_max), (1, 4));
    assert_eq!(answers(&store, &ids).await, before, "right after the swap");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        parquet_files(dir.path()),
        1,
        "merged files deleted after the grace"
    );
    assert_eq!(answers(&store, &ids).await, before);
    assert_eq!(
        store.compact_segments().await.unwrap(),
        0,
        "nothing left to merge"
    );
    store.close().await;

    let store = Store::open(compacting(dir.path())).await.unwrap();
    assert_eq!(store.settle_orphans(1).await.unwrap(), (0, 0));
    assert_eq!(store.segments().len(), 1);
    assert_eq!(answers(&store, &ids).await, before, "after a restart");
}

/// Compacted segments (at least half of `compact_rows`) are appended into one, each keeping
/// row groups of its own: a lookup still reads one row group, and nothing is lost or doubled.
#[tokio::test]
async fn compacted_segments_are_appended_into_larger_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(compacting(dir.path())).await.unwrap();
    let t0 = now_ns() - 60_000_000_000;
    let ids = flush_traffic(&store, 8, 600, t0, 1_000_000_000).await;
    let ids: Vec<[u8; 16]> = ids.into_iter().step_by(11).collect();
    let before = answers(&store, &ids).await;
    let inputs = store.segments();
    assert!(inputs.iter().all(|s| s.row_count >= 500), "none is small");

    assert_eq!(store.compact_segments().await.unwrap(), 8);
    let segs = store.segments();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].wal_seq_min, segs[0].wal_seq_max), (1, 8));
    let rows: i64 = inputs.iter().map(|s| s.row_count).sum();
    assert_eq!(segs[0].row_count, rows);
    let on_disk = std::fs::metadata(dir.path().join(&segs[0].path))
        .unwrap()
        .len();
    assert_eq!(segs[0].byte_size as u64, on_disk);
    assert_eq!(answers(&store, &ids).await, before, "right after the swap");

    let stats = store.stats();
    store.trace(ids[3]).await.unwrap();
    let after = store.stats();
    let read = after.row_groups_read - stats.row_groups_read;
    let pruned = after.row_groups_pruned - stats.row_groups_pruned;
    assert_eq!(
        (read, pruned),
        (1, 7),
        "one input's row group holds the trace"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(parquet_files(dir.path()), 1);
    store.close().await;

    let store = Store::open(compacting(dir.path())).await.unwrap();
    assert_eq!(store.settle_orphans(1).await.unwrap(), (0, 0));
    assert_eq!(answers(&store, &ids).await, before, "after a restart");
}

/// A search reads an appended segment's parts newest first and stops inside it.
#[tokio::test]
async fn a_search_stops_inside_an_appended_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        row_group_rows: 64,
        ..compacting(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    let t0 = now_ns() - 600_000_000_000;
    flush_traffic(&store, 8, 600, t0, 30_000_000_000).await;
    let query = TraceQuery {
        service: Some("reviews".into()),
        limit: 5,
        ..TraceQuery::default()
    };
    let before = store.find_traces(&query).await.unwrap();
    assert_eq!(store.compact_segments().await.unwrap(), 8);
    let seg = &store.segments()[0];
    let stats = store.stats();
    let after = store.find_traces(&query).await.unwrap();
    assert_eq!(after, before);
    let read = store.stats().search_row_groups_scanned - stats.search_row_groups_scanned;
    let groups = std::fs::read(dir.path().join(&seg.path)).unwrap();
    let groups = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(groups))
        .unwrap()
        .num_row_groups() as u64;
    assert!(groups >= 80, "{groups} row groups");
    assert!(read > 0 && read <= 16, "read {read} of {groups} row groups");
}

/// A server stopped within the grace leaves the merged segments' files and rollup rows;
/// the next start deletes both, and the answers stay those of before.
#[tokio::test]
async fn what_a_merge_leaves_for_the_grace_goes_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = || StoreConfig {
        compact_grace: Duration::from_secs(3600),
        ..compacting(dir.path())
    };
    let store = Store::open(config()).await.unwrap();
    let t0 = now_ns() - 60_000_000_000;
    for seq in 1..=3u64 {
        let spans = mesh_traffic(seq, 200, t0, 1_000_000);
        store.append(seq, &spans).unwrap();
        store.flush().await.unwrap();
    }
    let before = answers(&store, &[]).await;
    let rollup_segments = |store: &Store| {
        let store = store.clone();
        async move {
            let filter = RollupFilter {
                services: vec!["reviews".into()],
                kinds: vec![],
                from_ns: 0,
                to_ns: i64::MAX,
            };
            let rows = store.inner.catalog.rollups(&filter).await.unwrap();
            rows.iter().map(|(id, _, _)| *id).collect::<BTreeSet<i64>>()
        }
    };
    assert_eq!(rollup_segments(&store).await.len(), 3);
    assert_eq!(store.compact_segments().await.unwrap(), 3);
    assert_eq!(rollup_segments(&store).await.len(), 4, "kept for the grace");
    store.close().await;

    let store = Store::open(config()).await.unwrap();
    assert_eq!(store.settle_orphans(1).await.unwrap(), (3, 0));
    let live: BTreeSet<i64> = store.segments().iter().map(|s| s.id).collect();
    assert_eq!(rollup_segments(&store).await, live);
    assert_eq!(parquet_files(dir.path()), 1);
    assert_eq!(answers(&store, &[]).await, before);
}

/// A crash before the merge's commit leaves the merged file without a row, one after it the
/// merged inputs: the next start deletes either (committed segments hold their spans), it
/// does not quarantine them, even when the write-ahead log no longer holds them.
#[tokio::test]
async fn files_a_merge_cut_short_leaves_are_removed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = three_segments(dir.path()).await;
    let segs = store.segments();
    let first = dir.path().join(&segs[0].path);
    // As if a merge of all three was written and never committed.
    let merged = first.with_file_name("seg-1-3-1765055000.parquet");
    std::fs::copy(&first, &merged).unwrap();
    store.close().await;
    let store = Store::open(compacting(dir.path())).await.unwrap();
    let before = rows(&store, "SELECT count(*) FROM spans").await;
    // The log starts far after them: only the committed segments hold these spans.
    assert_eq!(store.settle_orphans(1000).await.unwrap(), (1, 0));
    assert!(!merged.exists());
    assert_eq!(rows(&store, "SELECT count(*) FROM spans").await, before);
}

/// A run never spans a gap in the log's sequence numbers (a segment lost, or not there yet):
/// a merged segment holds exactly the records its range names.
#[tokio::test]
async fn runs_do_not_span_a_gap_in_the_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(compacting(dir.path())).await.unwrap();
    let t0 = now_ns() - 60_000_000_000;
    for seq in [1u64, 2, 4, 5] {
        store
            .append(seq, &mesh_traffic(seq, 300, t0, 1_000_000))
            .unwrap();
        store.flush().await.unwrap();
    }
    let ranges = |store: &Store| {
        let mut r: Vec<(u64, u64)> = store
            .segments()
            .iter()
            .map(|s| (s.wal_seq_min, s.wal_seq_max))
            .collect();
        r.sort_unstable();
        r
    };
    assert_eq!(store.compact_segments().await.unwrap(), 2);
    assert_eq!(ranges(&store), [(1, 2), (4, 4), (5, 5)]);
    assert_eq!(store.compact_segments().await.unwrap(), 2);
    assert_eq!(ranges(&store), [(1, 2), (4, 5)]);
    assert_eq!(
        store.compact_segments().await.unwrap(),
        0,
        "(1, 2) and (4, 5) are not merged"
    );
}

/// A catalog put back from before a merge lists the merged inputs, whose files are gone: the
/// start-up check sets them aside first, so the merged file (the only copy of their spans) is
/// quarantined, not deleted as covered by them.
#[tokio::test]
async fn a_catalog_from_before_a_merge_quarantines_the_merged_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = three_segments(dir.path()).await;
    store.close().await;
    drop(store);
    // The catalog as it is now: the database and SQLite's write-ahead file, if any.
    let sides = ["catalog.db", "catalog.db-wal"];
    let backup = tempfile::tempdir().unwrap();
    for side in sides {
        let from = dir.path().join(side);
        if from.exists() {
            std::fs::copy(&from, backup.path().join(side)).unwrap();
        }
    }
    let store = Store::open(compacting(dir.path())).await.unwrap();
    assert_eq!(store.segments().len(), 3);
    assert_eq!(store.compact_segments().await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.close().await;
    drop(store);
    // The catalog put back as it was before the merge.
    for side in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(side));
    }
    for side in sides {
        let from = backup.path().join(side);
        if from.exists() {
            std::fs::copy(&from, dir.path().join(side)).unwrap();
        }
    }
    let store = Store::open(compacting(dir.path())).await.unwrap();
    assert_eq!(
        store.segments().len(),
        3,
        "the catalog from before the merge"
    );
    let (rebuilt, lost) = store.check_segments(&[]).await.unwrap();
    assert_eq!((rebuilt, lost), (0, 3), "the inputs' files are gone");
    assert_eq!(store.settle_orphans(1000).await.unwrap(), (0, 1));
    assert_eq!(parquet_files(&dir.path().join("quarantine")), 1);
}
