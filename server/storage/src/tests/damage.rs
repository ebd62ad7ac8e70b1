//! Segment files found missing or unreadable at open: rebuilt from the log's records when it
//! still holds them, otherwise marked damaged, reported and left out of queries without
//! breaking the others (see `check.rs`).

use std::time::Duration;

use meshtrace_model::Span;

use super::gen::mesh_traffic;
use super::{now_ns, open};
use crate::Store;

async fn count(store: &Store) -> usize {
    let batches = store
        .sql("SELECT count(*) FROM spans", 10, Duration::from_secs(10))
        .await
        .unwrap();
    let col = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Int64Type>(
        batches[0].column(0),
    );
    col.value(0) as usize
}

/// Three segments of `n` spans each, from log records 1-2, 3-4 and 5-6.
async fn three_segments(dir: &std::path::Path, n: usize) -> Vec<Vec<Span>> {
    let store = open(dir).await;
    let mut parts = Vec::new();
    for i in 0..3u64 {
        let spans = mesh_traffic(10 + i, n, now_ns() + i as i64 * 1_000_000_000, 1_000_000);
        let half = spans.len() / 2;
        store.append(2 * i + 1, &spans[..half]).unwrap();
        store.append(2 * i + 2, &spans[half..]).unwrap();
        store.flush().await.unwrap();
        parts.push(spans);
    }
    store.close().await;
    parts
}

#[tokio::test]
async fn damaged_segments_are_rebuilt_from_the_log_or_reported_never_breaking_queries() {
    let dir = tempfile::tempdir().unwrap();
    let parts = three_segments(dir.path(), 40).await;
    let total: usize = parts.iter().map(Vec::len).sum();
    let store = open(dir.path()).await;
    let segs = store.segments();
    assert_eq!(segs.len(), 3);
    // The first file deleted, the second cut short: the third is untouched.
    std::fs::remove_file(dir.path().join(&segs[0].path)).unwrap();
    let second = dir.path().join(&segs[1].path);
    let bytes = std::fs::read(&second).unwrap();
    std::fs::write(&second, &bytes[..bytes.len() / 2]).unwrap();
    store.close().await;

    // The log holds records 3 to 6: the second segment is rebuilt, the first is lost.
    let store = open(dir.path()).await;
    assert_eq!(store.check_segments(&[3, 4, 5, 6]).await.unwrap(), (1, 1));
    assert_eq!(store.segments().len(), 1);
    assert!(store.rebuilding(3) && store.rebuilding(4) && !store.rebuilding(1));
    let damaged = store.damaged_segments();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].path, segs[0].path);
    assert_eq!(damaged[0].reason, "the file is missing");
    assert_eq!(damaged[0].rows as usize, parts[0].len());
    let aside = dir.path().join("quarantine").join(&segs[1].path);
    assert_eq!(std::fs::read(aside).unwrap().len(), bytes.len() / 2);
    // Queries that need neither still answer (no "Corrupt footer").
    assert_eq!(count(&store).await, parts[2].len());
    // The replay of records 3-4 (at or below the checkpoint) is taken, and flushed with the
    // damaged row replaced in the same commit.
    let half = parts[1].len() / 2;
    store.append(3, &parts[1][..half]).unwrap();
    store.append(4, &parts[1][half..]).unwrap();
    store.flush().await.unwrap();
    assert!(!store.rebuilding(3));
    assert_eq!(store.stats().segments_rebuilt, 1);
    assert_eq!(count(&store).await, total - parts[0].len());
    store.close().await;

    // Next start: the rebuilt segment is whole; the lost one is still reported.
    let store = open(dir.path()).await;
    assert_eq!(store.check_segments(&[]).await.unwrap(), (0, 1));
    assert_eq!(store.segments().len(), 2);
    assert_eq!(store.damaged_segments().len(), 1);
    assert_eq!(store.stats().segments_damaged, 1);
    assert_eq!(count(&store).await, total - parts[0].len());
}
