//! The derived tables: latest-version views, flush to Parquet, reopen, orphan cleanup,
//! retention and the class rules in the catalog.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{FixedSizeBinaryArray, Int64Array, StringArray, TimestampNanosecondArray};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{now_ns, open, rows};
use crate::{DerivedConfig, DerivedStore, DerivedTable, Store};

pub(super) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("class", DataType::Utf8, false),
        Field::new(
            "start_time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("version", DataType::Int64, false),
    ]))
}

/// Rows of (trace id byte, class, start, version).
pub(super) fn batch(rows: &[(u8, &str, i64, i64)]) -> RecordBatch {
    let ids = FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| [r.0; 16])).unwrap();
    let class = StringArray::from_iter_values(rows.iter().map(|r| r.1));
    let start =
        TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.2)).with_timezone("UTC");
    let version = Int64Array::from_iter_values(rows.iter().map(|r| r.3));
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(ids),
            Arc::new(class),
            Arc::new(start),
            Arc::new(version),
        ],
    )
    .unwrap()
}

async fn derived(store: &Store, retention: Duration) -> DerivedStore {
    let table = DerivedTable {
        name: "traces".into(),
        schema: schema(),
    };
    let cfg = DerivedConfig {
        retention,
        flush_max_age: Duration::from_secs(3600),
        ..DerivedConfig::default()
    };
    DerivedStore::open(store, vec![table], cfg).await.unwrap()
}

#[tokio::test]
async fn latest_version_wins_in_buffer_and_parquet_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let d = derived(&store, Duration::from_secs(3600)).await;
    let now = now_ns();
    d.append("traces", batch(&[(1, "a", now, 10), (2, "b", now, 10)]))
        .unwrap();
    assert_eq!(d.flush().await.unwrap(), 1);
    // A newer version of trace 1, still buffered, replaces the flushed one.
    d.append("traces", batch(&[(1, "c", now, 20)])).unwrap();
    let q = "SELECT class, version FROM traces ORDER BY class";
    assert_eq!(rows(&store, q).await, ["| b | 10 |", "| c | 20 |"]);
    let all = "SELECT count(*) FROM traces_versions";
    assert_eq!(rows(&store, all).await, ["| 3 |"]);
    let by_id = "SELECT class FROM traces WHERE trace_id = X'01010101010101010101010101010101'";
    assert_eq!(rows(&store, by_id).await, ["| c |"]);
    d.flush().await.unwrap();
    assert_eq!(d.stats().segments, 2);
    store.close().await;

    let store = open(dir.path()).await;
    let d = derived(&store, Duration::from_secs(3600)).await;
    assert_eq!(d.segments("traces").unwrap().len(), 2);
    assert!(d.segments("traces").unwrap()[0]
        .path
        .starts_with("derived/traces/date="));
    assert_eq!(rows(&store, q).await, ["| b | 10 |", "| c | 20 |"]);
    assert!(d.append("nope", batch(&[(1, "x", 0, 1)])).is_err());
}

#[tokio::test]
async fn orphans_are_removed_and_retention_deletes_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let stray = dir.path().join("derived/traces/date=2020-01-01");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("seg-1.parquet"), b"junk").unwrap();
    let d = derived(&store, Duration::from_secs(3600)).await;
    assert!(!stray.join("seg-1.parquet").exists());
    let old = now_ns() - 7_200_000_000_000;
    d.append("traces", batch(&[(1, "old", old, 1)])).unwrap();
    d.flush().await.unwrap();
    d.append("traces", batch(&[(2, "new", now_ns(), 1)]))
        .unwrap();
    d.flush().await.unwrap();
    assert_eq!(d.apply_retention().await.unwrap(), 1);
    assert_eq!(rows(&store, "SELECT class FROM traces").await, ["| new |"]);
    assert_eq!(d.stats().segments_deleted, 1);
}

#[tokio::test]
async fn class_rules_are_replaced_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert!(store.class_rules().await.unwrap().is_empty());
    let rules = vec!["{\"class\":\"b\"}".to_string(), "{\"class\":\"a\"}".into()];
    store.set_class_rules(&rules).await.unwrap();
    store.set_class_rules(&rules).await.unwrap();
    assert_eq!(store.class_rules().await.unwrap(), rules);
    store.set_class_rules(&[]).await.unwrap();
    assert!(store.class_rules().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_damaged_derived_segment_is_set_aside_and_the_others_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let d = derived(&store, Duration::from_secs(3600)).await;
    let now = now_ns();
    d.append("traces", batch(&[(1, "a", now, 10)])).unwrap();
    d.flush().await.unwrap();
    d.append("traces", batch(&[(2, "b", now, 10)])).unwrap();
    d.flush().await.unwrap();
    let damaged = d.segments("traces").unwrap()[0].path.clone();
    store.close().await;
    let file = dir.path().join(&damaged);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();

    let store = open(dir.path()).await;
    let d = derived(&store, Duration::from_secs(3600)).await;
    assert_eq!(d.segments("traces").unwrap().len(), 1);
    assert!(dir.path().join("quarantine").join(&damaged).exists());
    // No "Corrupt footer": the intact segment answers.
    let q = "SELECT class FROM traces ORDER BY class";
    assert_eq!(rows(&store, q).await, ["| b |"]);
}

/// Small segments are merged into one: the same rows before, after, after the old files are
/// gone and after a reopen; a merge committed before a crash leaves no stray file.
#[tokio::test]
async fn compaction_merges_small_segments_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let table = DerivedTable {
        name: "traces".into(),
        schema: schema(),
    };
    let cfg = DerivedConfig {
        flush_max_age: Duration::from_secs(3600),
        compact_rows: 6,
        compact_grace: Duration::from_millis(50),
        ..DerivedConfig::default()
    };
    let d = DerivedStore::open(&store, vec![table.clone()], cfg.clone())
        .await
        .unwrap();
    let now = now_ns();
    for i in 0..4u8 {
        // Trace 1 gets a newer version in every flush: only the last must show.
        let rows = [
            (1, "one", now, i64::from(i)),
            (10 + i, "x", now + i64::from(i), 1),
        ];
        d.append("traces", batch(&rows)).unwrap();
        d.flush().await.unwrap();
    }
    let q = "SELECT class, version, count(*) OVER () AS n FROM traces ORDER BY class LIMIT 2";
    let before = rows(&store, q).await;
    assert_eq!(before, ["| one | 3 | 5 |", "| x | 1 | 5 |"]);
    let versions = "SELECT count(*) FROM traces_versions";
    assert_eq!(rows(&store, versions).await, ["| 8 |"]);
    assert_eq!(d.segments("traces").unwrap().len(), 4);

    // Three segments of two rows reach the target of six; the fourth is left. Two passes at
    // once: one merges, the other finds its run gone and drops its file.
    let (a, b) = tokio::join!(d.compact(), d.compact());
    assert_eq!(a.unwrap() + b.unwrap(), 3);
    let segs = d.segments("traces").unwrap();
    assert_eq!(segs.iter().map(|s| s.row_count).collect::<Vec<_>>(), [6, 2]);
    assert_eq!(rows(&store, q).await, before);
    assert_eq!(rows(&store, versions).await, ["| 8 |"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let files = |dir: &std::path::Path| {
        walk(&dir.join("derived"))
            .into_iter()
            .filter(|p| p.ends_with(".parquet"))
            .count()
    };
    assert_eq!(
        files(dir.path()),
        2,
        "the merged files are deleted after the grace"
    );
    assert_eq!(rows(&store, q).await, before);
    assert_eq!(d.compact().await.unwrap(), 0, "nothing left to merge");
    store.close().await;

    let store = open(dir.path()).await;
    let d = DerivedStore::open(&store, vec![table], cfg).await.unwrap();
    assert_eq!(d.segments("traces").unwrap().len(), 2);
    assert_eq!(rows(&store, q).await, before);
    assert_eq!(rows(&store, versions).await, ["| 8 |"]);
}

/// A table whose schema changed (`class` dropped, a nullable `spans` added) reads its older
/// segments and merges them with new ones in the schema of today.
#[tokio::test]
async fn segments_of_an_older_schema_are_read_and_merged_in_todays() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let cfg = DerivedConfig {
        flush_max_age: Duration::from_secs(3600),
        compact_rows: 6,
        compact_grace: Duration::from_millis(50),
        ..DerivedConfig::default()
    };
    let old = DerivedTable {
        name: "traces".into(),
        schema: schema(),
    };
    let d = DerivedStore::open(&store, vec![old], cfg.clone())
        .await
        .unwrap();
    let now = now_ns();
    for i in 0..2u8 {
        d.append("traces", batch(&[(i, "a", now, 1), (10 + i, "b", now, 1)]))
            .unwrap();
        d.flush().await.unwrap();
    }
    store.close().await;

    let store = open(dir.path()).await;
    let today: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new(
            "start_time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("version", DataType::Int64, false),
        Field::new("spans", DataType::Int64, true),
    ]));
    let table = DerivedTable {
        name: "traces".into(),
        schema: today.clone(),
    };
    let d = DerivedStore::open(&store, vec![table], cfg).await.unwrap();
    let new = RecordBatch::try_new(
        today,
        vec![
            Arc::new(FixedSizeBinaryArray::try_from_iter([[20u8; 16]].into_iter()).unwrap()),
            Arc::new(TimestampNanosecondArray::from_iter_values([now]).with_timezone("UTC")),
            Arc::new(Int64Array::from_iter_values([1])),
            Arc::new(Int64Array::from_iter_values([3])),
        ],
    )
    .unwrap();
    d.append("traces", new).unwrap();
    d.flush().await.unwrap();
    let q = "SELECT count(*), count(spans), sum(spans) FROM traces";
    assert_eq!(rows(&store, q).await, ["| 5 | 1 | 3 |"]);
    assert_eq!(d.compact().await.unwrap(), 3);
    let segs = d.segments("traces").unwrap();
    assert_eq!(segs.iter().map(|s| s.row_count).collect::<Vec<_>>(), [5]);
    assert_eq!(rows(&store, q).await, ["| 5 | 1 | 3 |"]);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
