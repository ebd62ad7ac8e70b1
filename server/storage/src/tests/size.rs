//! Bytes per span on disk for realistic Envoy/Istio traffic.

use std::collections::BTreeMap;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::gen::mesh_traffic;
use super::{now_ns, open};
use crate::Store;

/// Prints the compressed bytes per span of each column of the first segment, largest first.
async fn print_columns(store: &Store, spans: usize) {
    let seg = &store.segments()[0];
    let path = ObjectPath::from(seg.path.as_str());
    let bytes = store
        .object_store()
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader = SerializedFileReader::new(bytes).unwrap();
    let mut sizes: BTreeMap<String, i64> = BTreeMap::new();
    for rg in reader.metadata().row_groups() {
        for c in rg.columns() {
            let root = c.column_path().parts()[0].clone();
            *sizes.entry(root).or_default() += c.compressed_size();
        }
    }
    let mut sizes: Vec<_> = sizes.into_iter().collect();
    sizes.sort_by_key(|(_, n)| -n);
    for (col, n) in sizes {
        println!("  {col:<22} {:6.2} bytes/span", n as f64 / spans as f64);
    }
}

#[tokio::test]
async fn realistic_mesh_spans_are_compact_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // ~50k spans at ~500 traces/s, appended in WAL-sized chunks as the server would.
    let spans = mesh_traffic(42, 50_000, now_ns(), 2_000_000);
    for (i, chunk) in spans.chunks(1000).enumerate() {
        store.append(i as u64 + 1, chunk).unwrap();
    }
    store.flush().await.unwrap();
    let stats = store.stats();
    let per_span = stats.bytes_written as f64 / spans.len() as f64;
    println!(
        "segment: {} spans, {} bytes, {per_span:.1} bytes/span",
        spans.len(),
        stats.bytes_written
    );
    print_columns(&store, spans.len()).await;
    assert_eq!(stats.rows_written as usize, spans.len());
    assert!(per_span < 120.0, "{per_span:.1} bytes/span");
    let target = spans[spans.len() / 2].trace_id;
    let want = spans.iter().filter(|s| s.trace_id == target).count();
    assert_eq!(store.trace(target).await.unwrap().len(), want);
}

/// A trace lookup selects the pages whose `trace_id` bounds hold the ID: a few thousand rows
/// of a row group are decoded, not all of it, and the trace is still whole.
#[tokio::test]
async fn lookups_decode_pages_not_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let spans = mesh_traffic(7, 40_000, now_ns(), 2_000_000);
    store.append(1, &spans).unwrap();
    store.flush().await.unwrap();
    let seg = store.segments()[0].clone();
    let target = spans[spans.len() / 3].trace_id;
    let outcome = store
        .inner
        .reader
        .lookup(&seg, &[target].into())
        .await
        .unwrap();
    assert_eq!(outcome.row_groups_read, 1);
    let decoded = outcome.rows_decoded;
    assert!(
        decoded > 0 && decoded <= 2 * crate::layout::PAGE_ROWS,
        "{decoded} rows decoded for one trace"
    );
    let want = spans.iter().filter(|s| s.trace_id == target).count();
    let found: usize = outcome.batches.unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(found, want);
    assert_eq!(store.trace(target).await.unwrap().len(), want);
}
