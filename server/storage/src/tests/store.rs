//! Buffer, flush, pruning, crash leftovers, checkpoint, retention, SQL and concurrency.

use std::collections::BTreeSet;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use meshtrace_model::SpanKind;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use super::gen::{mesh_traffic, span};
use super::{config, normalized_all, now_ns, open};
use crate::{ErrorCode, Store, StoreConfig};

fn count(batches: &[arrow_array::RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn append_is_queryable_from_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t0 = now_ns();
    let spans = mesh_traffic(1, 60, t0, 1_000_000);
    store.append(1, &spans).unwrap();
    assert_eq!(store.buffered_rows(), spans.len());
    let id = spans[0].trace_id;
    let want: Vec<_> = spans.iter().filter(|s| s.trace_id == id).cloned().collect();
    let got = store.trace(id).await.unwrap();
    assert_eq!(normalized_all(got), normalized_all(want));
    assert!(store.trace([0xee; 16]).await.unwrap().is_empty());
    let services = store.services().await.unwrap();
    assert!(services.contains(&"reviews".to_string()), "{services:?}");
    assert!(
        services.windows(2).all(|w| w[0] < w[1]),
        "sorted: {services:?}"
    );
    let ops = store
        .operations("productpage", Some(SpanKind::Server))
        .await
        .unwrap();
    assert!(!ops.is_empty() && ops.iter().all(|(_, k)| *k == SpanKind::Server));
    assert_eq!(store.checkpoint().await.unwrap(), 0);
}

#[tokio::test]
async fn flush_writes_a_partitioned_segment_and_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // 2024-03-05T07:xx UTC
    let t0 = 1_709_622_000_000_000_000;
    let spans = mesh_traffic(2, 500, t0, 3_000_000);
    store.append(7, &spans[..200]).unwrap();
    store.append(9, &spans[200..]).unwrap();
    assert_eq!(store.flush().await.unwrap(), Some(9));
    assert_eq!(store.flush().await.unwrap(), None, "nothing left to flush");
    assert_eq!(store.buffered_rows(), 0);
    let segs = store.segments();
    assert_eq!(segs.len(), 1);
    assert_eq!(
        segs[0].path,
        "spans/date=2024-03-05/hour=07/seg-7-9.parquet"
    );
    assert_eq!(segs[0].row_count as usize, spans.len());
    assert!(dir.path().join(&segs[0].path).is_file());
    let stats = store.stats();
    assert_eq!((stats.flushes, stats.segments_written), (1, 1));
    assert_eq!(stats.rows_written as usize, spans.len());
    assert_eq!(stats.bytes_written as i64, segs[0].byte_size);
    for id in [spans[0].trace_id, spans[spans.len() - 1].trace_id] {
        let want: Vec<_> = spans.iter().filter(|s| s.trace_id == id).cloned().collect();
        assert_eq!(
            normalized_all(store.trace(id).await.unwrap()),
            normalized_all(want)
        );
    }
}

#[tokio::test]
async fn trace_lookup_prunes_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t0 = now_ns();
    let mut all = Vec::new();
    for i in 0..4u64 {
        let spans = mesh_traffic(10 + i, 400, t0 + i as i64 * 1_000_000_000, 2_000_000);
        store.append(i + 1, &spans).unwrap();
        store.flush().await.unwrap();
        all.push(spans);
    }
    assert_eq!(store.segments().len(), 4);
    let target = all[2][5].trace_id;
    let before = store.stats();
    let got = store.trace(target).await.unwrap();
    let after = store.stats();
    let want: Vec<_> = all[2]
        .iter()
        .filter(|s| s.trace_id == target)
        .cloned()
        .collect();
    assert_eq!(normalized_all(got), normalized_all(want));
    assert_eq!(after.segments_read - before.segments_read, 1);
    assert_eq!(after.segments_pruned - before.segments_pruned, 3);
    assert_eq!(after.row_groups_read - before.row_groups_read, 1);
}

#[tokio::test]
async fn a_lookup_visits_only_the_segments_that_may_hold_its_trace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t0 = now_ns();
    let mut all = Vec::new();
    for i in 0..4u64 {
        let spans = mesh_traffic(20 + i, 400, t0 + i as i64 * 1_000_000_000, 2_000_000);
        store.append(i + 1, &spans).unwrap();
        store.flush().await.unwrap();
        all.push(spans);
    }
    // A flush caches its segment's footer and bloom filters: no lookup reads them back.
    let segments: Vec<_> = store.read_view().segments.clone();
    let reader = &store.inner.reader;
    let triage = reader.triage(&segments, &BTreeSet::from([all[2][5].trace_id]));
    assert_eq!(triage.visit.len(), 1);
    assert_eq!(triage.visit[0].id, segments[2].id);
    assert_eq!(triage.segments_pruned, 3);
    let unknown = BTreeSet::from([[0x5a; 16]]);
    assert!(reader.triage(&segments, &unknown).visit.is_empty());
    // A segment whose footer is not cached (after a restart) is visited once: that visit
    // reads every row group's bloom filter, so a lookup of another trace passes it.
    reader.forget(&segments[1].path);
    let triage = reader.triage(&segments, &unknown);
    assert_eq!(triage.visit.len(), 1);
    assert_eq!(triage.visit[0].id, segments[1].id);
    store.trace(all[1][3].trace_id).await.unwrap();
    assert!(reader.triage(&segments, &unknown).visit.is_empty());
    let other = BTreeSet::from([all[3][7].trace_id]);
    assert_eq!(reader.triage(&segments, &other).visit.len(), 1);
}

#[tokio::test]
async fn lookup_prunes_row_groups_inside_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        row_group_rows: 256,
        ..config(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    let spans = mesh_traffic(3, 3000, now_ns(), 1_000_000);
    store.append(1, &spans).unwrap();
    store.flush().await.unwrap();
    let target = spans[100].trace_id;
    let got = store.trace(target).await.unwrap();
    assert_eq!(
        got.len(),
        spans.iter().filter(|s| s.trace_id == target).count()
    );
    let stats = store.stats();
    assert!(stats.row_groups_read <= 2, "{stats:?}");
    assert!(stats.row_groups_pruned >= 9, "{stats:?}");
}

/// A store with one committed segment and, beside it, a segment file the catalog does not know
/// (WAL sequences 5 to 6) and the temporary file of a write cut short.
async fn store_with_leftovers(dir: &std::path::Path, spans: &[meshtrace_model::Span]) {
    let store = open(dir).await;
    store.append(1, spans).unwrap();
    store.flush().await.unwrap();
    let leftover = ObjectPath::from("spans/date=2024-01-01/hour=00/seg-5-6.parquet");
    store
        .object_store()
        .put(&leftover, PutPayload::from_static(b"PAR1 torn"))
        .await
        .unwrap();
    store.close().await;
    let temporary = dir.join("spans/date=2024-01-01/hour=00/seg-7-7.parquet#3");
    std::fs::write(temporary, b"half a write").unwrap();
}

#[tokio::test]
async fn orphans_the_log_replays_are_deleted_and_temporary_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let spans = mesh_traffic(4, 100, now_ns(), 1_000_000);
    store_with_leftovers(dir.path(), &spans).await;
    let hour = dir.path().join("spans/date=2024-01-01/hour=00");
    let store = open(dir.path()).await;
    assert!(
        !hour.join("seg-7-7.parquet#3").exists(),
        "temporary file removed at open"
    );
    assert!(
        hour.join("seg-5-6.parquet").is_file(),
        "open only lists orphans"
    );
    // The log still holds sequence 5 onwards: the replay writes the file again.
    assert_eq!(store.settle_orphans(5).await.unwrap(), (1, 0));
    assert!(!hour.join("seg-5-6.parquet").exists());
    assert_eq!(store.stats().orphans_removed, 2);
    let committed = store.segments();
    assert_eq!(committed.len(), 1);
    assert!(dir.path().join(&committed[0].path).is_file());
    assert_eq!(
        store.trace(spans[0].trace_id).await.unwrap().len(),
        spans
            .iter()
            .filter(|s| s.trace_id == spans[0].trace_id)
            .count()
    );
}

#[tokio::test]
async fn orphans_the_log_no_longer_holds_are_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spans = mesh_traffic(4, 100, now_ns(), 1_000_000);
    store_with_leftovers(dir.path(), &spans).await;
    let store = open(dir.path()).await;
    // As after a catalog restored from an older copy: the log starts past the file's sequences.
    assert_eq!(store.settle_orphans(10).await.unwrap(), (0, 1));
    let aside = dir
        .path()
        .join("quarantine/spans/date=2024-01-01/hour=00/seg-5-6.parquet");
    assert_eq!(std::fs::read(aside).unwrap(), b"PAR1 torn");
    assert!(!dir
        .path()
        .join("spans/date=2024-01-01/hour=00/seg-5-6.parquet")
        .exists());
    assert_eq!(store.stats().segments_quarantined, 1);
    assert_eq!(
        store.segments().len(),
        1,
        "the committed segment is untouched"
    );
}

#[tokio::test]
async fn checkpoint_and_names_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    {
        let store = open(dir.path()).await;
        store
            .append(3, &[span(1, 1, "front", "GET /", t0, 10)])
            .unwrap();
        store
            .append(4, &[span(2, 1, "back", "query", t0, 10)])
            .unwrap();
        assert_eq!(store.flush().await.unwrap(), Some(4));
        store.append(5, &[span(3, 1, "late", "x", t0, 10)]).unwrap();
        assert_eq!(
            store.checkpoint().await.unwrap(),
            4,
            "seq 5 is only buffered"
        );
        store.close().await;
    }
    let store = open(dir.path()).await;
    assert_eq!(store.checkpoint().await.unwrap(), 4);
    // A replay from too early: seq 3 and 4 are committed already and must not be duplicated.
    store
        .append(3, &[span(1, 1, "front", "GET /", t0, 10)])
        .unwrap();
    store
        .append(4, &[span(2, 1, "back", "query", t0, 10)])
        .unwrap();
    assert_eq!(store.buffered_rows(), 0);
    assert_eq!(store.stats().replayed_appends_skipped, 2);
    assert_eq!(store.trace([1; 16]).await.unwrap().len(), 1);
    assert_eq!(store.services().await.unwrap(), vec!["back", "front"]);
    let ops = store.operations("front", None).await.unwrap();
    assert_eq!(ops, vec![("GET /".to_string(), SpanKind::Server)]);
    // Retention must not move the checkpoint back.
    store
        .append(6, &[span(4, 1, "front", "GET /", t0, 10)])
        .unwrap();
    assert_eq!(store.flush().await.unwrap(), Some(6));
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.checkpoint().await.unwrap(), 6);
}

#[tokio::test]
async fn flush_if_due_respects_rows_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        flush_max_rows: 3,
        flush_max_age: Duration::from_millis(200),
        ..StoreConfig::new(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    let t0 = now_ns();
    assert_eq!(store.flush_if_due().await.unwrap(), None);
    store.append(1, &[span(1, 1, "a", "x", t0, 1)]).unwrap();
    assert_eq!(
        store.flush_if_due().await.unwrap(),
        None,
        "too few rows, too young"
    );
    store
        .append(
            2,
            &[span(2, 1, "a", "x", t0, 1), span(2, 2, "a", "y", t0, 1)],
        )
        .unwrap();
    assert_eq!(
        store.flush_if_due().await.unwrap(),
        Some(2),
        "row threshold"
    );
    store.append(3, &[span(3, 1, "a", "x", t0, 1)]).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        store.flush_if_due().await.unwrap(),
        Some(3),
        "age threshold"
    );
}

#[tokio::test]
async fn retention_deletes_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        retention: Duration::from_secs(3600),
        ..config(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    let now = now_ns();
    let old = now - 2 * 3_600_000_000_000;
    store.append(1, &[span(1, 1, "a", "old", old, 5)]).unwrap();
    store.flush().await.unwrap();
    store.append(2, &[span(2, 1, "a", "new", now, 5)]).unwrap();
    store.flush().await.unwrap();
    let old_path = dir.path().join(&store.segments()[0].path);
    assert!(old_path.is_file());
    assert_eq!(store.apply_retention().await.unwrap(), 1);
    assert_eq!(store.apply_retention().await.unwrap(), 0);
    assert!(!old_path.exists());
    assert_eq!(store.segments().len(), 1);
    assert!(store.trace([1; 16]).await.unwrap().is_empty());
    assert_eq!(store.trace([2; 16]).await.unwrap().len(), 1);
    assert_eq!(
        store.checkpoint().await.unwrap(),
        2,
        "checkpoint outlives its segments"
    );
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.segments().len(), 1);
    assert_eq!(store.checkpoint().await.unwrap(), 2);
}

/// Names no span was appended with since the cutoff leave the name lists and the catalog;
/// names appended since, and those not yet persisted, stay.
#[tokio::test]
async fn names_unseen_since_the_cutoff_leave_the_lists_and_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let t = now_ns();
    let gone = span(3, 1, "gone", "x", t, 5);
    store
        .append(1, &[span(1, 1, "a", "old", t, 5), gone])
        .unwrap();
    store.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = now_ns();
    store.append(2, &[span(2, 1, "a", "new", t, 5)]).unwrap();
    store.flush().await.unwrap();
    // Buffered, its names not yet persisted.
    store
        .append(3, &[span(4, 1, "b", "buffered", t, 5)])
        .unwrap();
    assert_eq!(store.services().await.unwrap(), ["a", "b", "gone"]);
    assert_eq!(
        store.trim_names(cutoff).await.unwrap(),
        3,
        "gone, gone/x and a/old"
    );
    assert_eq!(store.services().await.unwrap(), ["a", "b"]);
    let ops = |store: Store| async move {
        let ops = store.operations("a", None).await.unwrap();
        ops.into_iter().map(|(name, _)| name).collect::<Vec<_>>()
    };
    assert_eq!(ops(store.clone()).await, ["new"]);
    store.flush().await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(
        store.services().await.unwrap(),
        ["a", "b"],
        "trimmed in the catalog"
    );
    assert_eq!(ops(store.clone()).await, ["new"]);
}

#[tokio::test]
async fn sql_counts_segments_and_buffer_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let spans = mesh_traffic(5, 300, now_ns(), 1_000_000);
    store.append(1, &spans[..100]).unwrap();
    store.flush().await.unwrap();
    store.append(2, &spans[100..200]).unwrap();
    store.flush().await.unwrap();
    store.append(3, &spans[200..]).unwrap();
    let t = Duration::from_secs(30);
    let out = store
        .sql("SELECT count(*) FROM spans", 10, t)
        .await
        .unwrap();
    assert_eq!(count(&out) as usize, spans.len());
    let sql = "SELECT service_name, count(*) AS n FROM spans WHERE http_status_code = 200 \
               AND attributes['zone'] = 'europe-west1-b' GROUP BY service_name ORDER BY n DESC";
    let out = store.sql(sql, 1000, t).await.unwrap();
    assert_eq!(
        out[0].schema().field(0).data_type(),
        &arrow_schema::DataType::Utf8
    );
    assert!(out.iter().map(|b| b.num_rows()).sum::<usize>() >= 3);
    let out = store.sql("SELECT span_id FROM spans", 7, t).await.unwrap();
    assert_eq!(
        out.iter().map(|b| b.num_rows()).sum::<usize>(),
        7,
        "max_rows truncates"
    );
    for bad in [
        "CREATE TABLE x (a INT)",
        "INSERT INTO spans (name) VALUES ('x')",
        "DROP TABLE spans",
    ] {
        let err = store.sql(bad, 10, t).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad}: {err}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
    let err = store
        .sql("SELECT nope FROM spans", 10, t)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    let slow = "SELECT count(*) FROM generate_series(1, 5000000000) a";
    let err = store
        .sql(slow, 10, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_flushes_see_every_span_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let spans = mesh_traffic(6, 4000, now_ns(), 1_000_000);
    let appended = Arc::new(AtomicUsize::new(0));
    let flusher = {
        let (store, spans, appended) = (store.clone(), spans.clone(), appended.clone());
        tokio::spawn(async move {
            for (i, c) in spans.chunks(250).enumerate() {
                store.append(i as u64 + 1, c).unwrap();
                appended.fetch_add(c.len(), Ordering::SeqCst);
                store.flush().await.unwrap();
            }
        })
    };
    let t = Duration::from_secs(30);
    let first = spans[0].trace_id;
    let first_len = spans.iter().filter(|s| s.trace_id == first).count();
    while !flusher.is_finished() {
        let lo = appended.load(Ordering::SeqCst);
        let out = store.sql("SELECT count(*) FROM spans", 1, t).await.unwrap();
        let hi = appended.load(Ordering::SeqCst);
        let n = count(&out) as usize;
        assert!(lo <= n && n <= hi, "count {n} outside [{lo}, {hi}]");
        if lo >= 250 {
            assert_eq!(store.trace(first).await.unwrap().len(), first_len);
        }
    }
    flusher.await.unwrap();
    let out = store.sql("SELECT count(*) FROM spans", 1, t).await.unwrap();
    assert_eq!(count(&out) as usize, spans.len());
    let ids: BTreeSet<_> = spans.iter().map(|s| s.trace_id).collect();
    let found = store.traces(&ids).await.unwrap();
    assert_eq!(found.values().map(Vec::len).sum::<usize>(), spans.len());
}

/// A store whose SQL runs one plan at a time, in 16 MiB.
async fn open_with_one_query_slot(dir: &std::path::Path, queue_wait: Duration) -> Store {
    let cfg = StoreConfig {
        sql: crate::SqlLimits {
            threads: 1,
            max_concurrent: 1,
            queue_wait,
            memory_bytes: 16 << 20,
        },
        ..config(dir)
    };
    Store::open(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_query_is_cancelled_at_its_time_limit_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_one_query_slot(dir.path(), Duration::from_secs(5)).await;
    let spans = mesh_traffic(4, 2000, now_ns(), 1_000_000);
    store.append(1, &spans).unwrap();
    // The condition keeps DataFusion from answering from statistics: 8 billion rows to test.
    let cross = "SELECT count(*) FROM spans a, spans b, spans c \
                 WHERE a.duration_ns + b.duration_ns > c.duration_ns";
    let started = std::time::Instant::now();
    let err = store
        .sql(cross, 10, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The only slot is free again: the cancelled plan stopped.
    let out = store
        .sql("SELECT count(*) FROM spans", 1, Duration::from_secs(4))
        .await
        .unwrap();
    assert_eq!(count(&out) as usize, spans.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_the_slots_are_refused_as_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_one_query_slot(dir.path(), Duration::from_millis(200)).await;
    let slow = {
        let store = store.clone();
        tokio::spawn(async move {
            let sql = "SELECT count(*) FROM generate_series(1, 5000000000) a";
            store.sql(sql, 1, Duration::from_secs(3)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = store
        .sql("SELECT 1", 1, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Overloaded, "{err}");
    assert_eq!(err.code().http_status(), 429);
    let slow = slow.await.unwrap().unwrap_err();
    assert_eq!(slow.code(), ErrorCode::Timeout, "{slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_past_the_memory_limit_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_one_query_slot(dir.path(), Duration::from_secs(1)).await;
    let t = Duration::from_secs(20);
    for sql in [
        "SELECT array_agg(value) FROM generate_series(1, 100000000)",
        "SELECT repeat('x', 2000000000)",
        "SELECT range(1, 10000000000)",
    ] {
        let err = store.sql(sql, 1, t).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{sql}: {err}");
        assert!(err.to_string().contains("more memory"), "{sql}: {err}");
    }
}
