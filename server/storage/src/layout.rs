//! The Parquet segment layout: how buffered spans become an immutable file, and how files are
//! read back with pruning.
//!
//! # Design
//!
//! ## Files
//!
//! A *segment* is one Parquet file holding every span of one flush. Its object path is
//!
//! ```text
//! spans/date=YYYY-MM-DD/hour=HH/seg-<firstseq>-<lastseq>.parquet
//! ```
//!
//! where the date and hour are those (UTC) of the segment's smallest start time, and
//! `firstseq`/`lastseq` are the smallest and largest WAL sequence numbers of the flushed
//! batches. The hive-style prefix keeps a listing of one hour cheap for external tools; our own
//! readers never list, they take the segment list from the catalog. All access goes through an
//! `Arc<dyn ObjectStore>` (a `LocalFileSystem` rooted at the data directory by default), so the
//! same code runs on S3-like stores. A segment is written with a single `put`, which the local
//! store makes atomic (temporary file + rename), and is never modified afterwards.
//!
//! ## Rows and encodings
//!
//! The schema is [`meshtrace_model::schema::spans_schema`], the same in memory, in Parquet and
//! in SQL. Within a segment rows are sorted by `(trace_id, start_time)`
//! (keys read into integers and sorted, then the rows gathered with `interleave`), so that:
//!
//! - the spans of one trace are contiguous, and row-group min/max statistics on `trace_id` are
//!   tight, non-overlapping ranges: a lookup by trace ID touches at most one or two row groups;
//! - `trace_id` dictionary indices form long runs (one per trace) that RLE encodes to almost
//!   nothing, and the parent IDs of sibling spans repeat next to each other for ZSTD to find.
//!
//! Writer settings ([`writer_properties`]): ZSTD level 1 on every column; dictionary encoding on (it
//! suits the low-cardinality strings of a mesh: service, operation, cluster, node, method,
//! response flags, map keys and values) but off for `span_id` and `parent_span_id`, which are
//! random and unique so a dictionary would only add an index per value; `start_time` and
//! `duration_ns` use `BYTE_STREAM_SPLIT` without a dictionary (each byte plane compresses on
//! its own: the high bytes of nearby timestamps are nearly constant); a split-block bloom
//! filter on `trace_id` per row group (allocated for the traces a row group holds,
//! [`traces_per_row_group`], and folded to [`BLOOM_FPP`] when it closes); row groups of
//! `row_group_rows` rows (16 384 by default); data pages of at most [`PAGE_ROWS`] (4 096) rows, with per-page `trace_id` bounds
//! in the page index, so a trace lookup decodes the pages holding its traces instead of whole
//! row groups (it cost 1 % more bytes a span than one page per row group; 1 024-row pages
//! cost 7 %); chunk statistics on every column.
//!
//! Measured on 50k generated Istio/Envoy spans (the `size` test, which prints a per-column
//! breakdown): 36.7 bytes/span. `span_id` costs 8 bytes (random), `parent_span_id` about 6,
//! the attribute map about 5.6, `peer_address` (ip:ephemeral port) about 5.5, times about 6.4
//! together. For the two time columns `BYTE_STREAM_SPLIT` beat `DELTA_BINARY_PACKED` (7.7
//! bytes/span, as rows sorted by trace jump in time) and `PLAIN` (7.0); ZSTD level 9 instead of
//! 3 would save another 3.5% for more flush CPU. Level 1 instead of 3 costs 0.4% (30.96 against
//! 30.83 bytes/span in `bench ingest`): the dictionaries and run lengths do most of the work,
//! and level 3 took 2.5% of an ingest profile.
//!
//! ## Flush and commit protocol
//!
//! 1. The batches to flush are *marked* in the buffer (not removed): queries keep seeing them.
//!    Batches appended meanwhile are not marked and stay for the next flush.
//! 2. The rows of the marked batches are sorted into one batch and encoded to Parquet in memory, then
//!    written with one `put`.
//! 3. One catalog transaction inserts the segment row, the new service/operation names and the
//!    new checkpoint (the largest WAL sequence number of the segment).
//! 4. Under the buffer lock, the segment is added to the in-memory segment list and the marked
//!    batches are dropped, in one step: a query snapshots both under the same lock, so it sees
//!    every span exactly once (no gap, no duplicate).
//!
//! If the `put` or the commit fails, the marked batches are unmarked and wait for the next
//! flush; a file written without a committed row is invisible (readers take the catalog's
//! list) and is settled at the next start ([`crate::orphans`]). Retention deletes the file
//! first, then its catalog row; a query that snapshotted the segment just before treats the
//! missing object as gone.
//!
//! Reading them back is [`crate::reader`]'s.
//!
//! ## Crash cases
//!
//! - Crash before or during the `put`: no file (or a temporary one), no row; the WAL still
//!   holds the spans (the checkpoint did not move) and replays them.
//! - Crash after the `put`, before the commit: a file without a row. The server's start-up
//!   ([`crate::Store::settle_orphans`]) deletes it when the WAL holds its sequences (the WAL
//!   replays them) and quarantines it otherwise (a catalog restored from an older copy); a
//!   temporary file of a `put` cut short is removed at open.
//! - Crash after the commit: the segment and the checkpoint are durable together; the WAL
//!   replays only what comes after the checkpoint, so nothing is stored twice (and
//!   [`crate::Store::append`] ignores a sequence number at or below the checkpoint).
//! - Crash during retention between the file delete and the row delete: a row without its
//!   file, which queries treat as gone and the next retention pass deletes.

use std::collections::BTreeSet;

use arrow::buffer::ScalarBuffer;
use arrow::compute::interleave_record_batch;
use arrow::compute::{concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch};
use arrow::compute::{max as arrow_max, min as arrow_min, SortColumn};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampNanosecondType};
use arrow_array::{new_null_array, Array, BooleanArray, FixedSizeBinaryArray, RecordBatch};
use arrow_schema::{ArrowError, SchemaRef};
use bytes::Bytes;
use meshtrace_model::schema::spans_schema;
use meshtrace_model::TraceId;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{
    EnabledStatistics, WriterProperties, WriterPropertiesBuilder, WriterVersion,
};
use parquet::schema::types::ColumnPath;

use crate::error::StorageError;

/// The prefix under which every segment lives.
pub const SEGMENT_PREFIX: &str = "spans";

/// Rows a data page holds at most (see [`writer_properties`]).
pub const PAGE_ROWS: usize = 4096;

/// The writer settings of every segment (see the module docs), with `trace_id` bloom filters
/// sized for `row_group_traces` distinct IDs a row group ([`traces_per_row_group`]).
pub fn writer_properties(row_group_rows: usize, row_group_traces: usize) -> WriterProperties {
    let col = |name: &str| ColumnPath::from(name);
    let mut b = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        // Pages of at most PAGE_ROWS rows, and per-page `trace_id` bounds in the page index:
        // a lookup then decodes the pages holding its traces, not whole row groups.
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_column_statistics_enabled(col("trace_id"), EnabledStatistics::Page);
    b = trace_id_bloom_filter(b, row_group_traces);
    for id in ["span_id", "parent_span_id"] {
        b = b.set_column_dictionary_enabled(col(id), false);
    }
    for int in ["start_time", "duration_ns"] {
        b = b
            .set_column_dictionary_enabled(col(int), false)
            .set_column_encoding(col(int), Encoding::BYTE_STREAM_SPLIT);
    }
    b.build()
}

/// The distinct trace IDs a row group of `batch` (sorted by trace) holds, estimated from the
/// whole batch, with half as many again to spare: what its `trace_id` bloom filters are
/// allocated for while it is written. The writer folds each filter down to [`BLOOM_FPP`] for
/// the values it saw when the row group closes, so the size on disk follows the traces either
/// way; sizing it near them saves allocating (and folding) a filter for as many traces as
/// rows, as the derived tables did.
pub(crate) fn traces_per_row_group(batch: &RecordBatch, row_group_rows: usize) -> usize {
    let rows = batch.num_rows();
    let ids = batch
        .column_by_name("trace_id")
        .and_then(|c| c.as_fixed_size_binary_opt());
    let Some(ids) = ids.filter(|_| rows > 0) else {
        return 16;
    };
    let distinct = 1
        + (1..rows)
            .filter(|&i| ids.value(i) != ids.value(i - 1))
            .count();
    let per_group = (distinct * row_group_rows.min(rows)).div_ceil(rows);
    (per_group * 3 / 2).clamp(16, row_group_rows.max(16))
}

/// The false-positive rate of the `trace_id` bloom filters. A lookup checks every segment's
/// filter, so false positives grow with the segment count: at 1 % a search's 20 traces read
/// about 16 row groups for nothing at 10 M spans; at 0.1 % about 2.
const BLOOM_FPP: f64 = 0.001;

/// Adds the split-block bloom filter on `trace_id` ([`BLOOM_FPP`] false positives), sized for
/// `distinct_ids` trace IDs per row group. Sizing matters: parquet's default of a million
/// allocates and folds a 1 MB filter for every row group.
pub(crate) fn trace_id_bloom_filter(
    b: WriterPropertiesBuilder,
    distinct_ids: usize,
) -> WriterPropertiesBuilder {
    let col = || ColumnPath::from("trace_id");
    b.set_column_bloom_filter_enabled(col(), true)
        .set_column_bloom_filter_fpp(col(), BLOOM_FPP)
        .set_column_bloom_filter_max_ndv(col(), distinct_ids as u64)
}

/// The object path of a segment.
pub fn segment_path(min_start_ns: i64, first_seq: u64, last_seq: u64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(min_start_ns);
    format!(
        "{SEGMENT_PREFIX}/{}/seg-{first_seq}-{last_seq}.parquet",
        t.format("date=%Y-%m-%d/hour=%H")
    )
}

/// A segment encoded in memory, ready to be written.
#[derive(Debug)]
pub(crate) struct EncodedSegment {
    pub bytes: Bytes,
    pub rows: usize,
    pub min_start_ns: i64,
    pub max_start_ns: i64,
    /// Distinct service names, sorted.
    pub services: Vec<String>,
}

/// Sorts a batch by the named columns, ascending, in order.
pub(crate) fn sort_by(batch: &RecordBatch, columns: &[&str]) -> Result<RecordBatch, StorageError> {
    let keys = columns
        .iter()
        .map(|name| {
            let values = batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| ArrowError::SchemaError(format!("missing column {name}")))?;
            Ok(SortColumn {
                values,
                options: None,
            })
        })
        .collect::<Result<Vec<_>, ArrowError>>()?;
    let indices = lexsort_to_indices(&keys, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

/// Sorts the rows of several batches (of one schema) into one batch by `trace_id` (16-byte
/// binary), then by `then` (a 64-bit integer or timestamp column). Both keys are read once
/// into a `(u128, i64)` per row and sorted as integers, which is several times cheaper than
/// [`sort_by`]'s comparisons of byte slices, and the rows are gathered from the input batches
/// in one pass (`interleave`) instead of being concatenated first and then taken. Other column
/// types fall back to concatenating and [`sort_by`].
pub(crate) fn sort_by_trace(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    then: &str,
) -> Result<RecordBatch, StorageError> {
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    // (trace ID, then, batch, row): sorting the tuples sorts by the keys, ties in input order.
    let mut keys: Vec<(u128, i64, usize, usize)> =
        Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for (b, batch) in batches.iter().enumerate() {
        let Some((ids, second)) = trace_keys(batch, then) else {
            return sort_by(&concat_batches(schema, batches)?, &["trace_id", then]);
        };
        keys.extend((0..batch.num_rows()).map(|i| {
            let id = <[u8; 16]>::try_from(ids.value(i)).unwrap_or_default();
            (u128::from_be_bytes(id), second[i], b, i)
        }));
    }
    keys.sort_unstable();
    let indices: Vec<(usize, usize)> = keys.into_iter().map(|(_, _, b, i)| (b, i)).collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    Ok(interleave_record_batch(&refs, &indices)?)
}

/// A batch's `trace_id` column and the values of `then`, if both have the types
/// [`sort_by_trace`] sorts as integers and no nulls.
fn trace_keys<'a>(
    batch: &'a RecordBatch,
    then: &str,
) -> Option<(&'a FixedSizeBinaryArray, ScalarBuffer<i64>)> {
    let ids = batch
        .column_by_name("trace_id")
        .and_then(|c| c.as_fixed_size_binary_opt())
        .filter(|a| a.value_length() == 16 && a.null_count() == 0)?;
    let second = batch.column_by_name(then).and_then(|c| {
        c.as_primitive_opt::<TimestampNanosecondType>()
            .map(|a| a.values().clone())
            .or_else(|| {
                c.as_primitive_opt::<Int64Type>()
                    .map(|a| a.values().clone())
            })
            .filter(|_| c.null_count() == 0)
    })?;
    Some((ids, second))
}

/// Sorts batches of the spans schema into one and encodes it as one Parquet file.
pub(crate) fn encode_segment(
    batches: &[RecordBatch],
    row_group_rows: usize,
) -> Result<EncodedSegment, StorageError> {
    let schema = spans_schema();
    let batch = sort_by_trace(&schema, batches, "start_time")?;
    let start = batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| ArrowError::SchemaError("start_time has the wrong type".into()))?;
    let services: BTreeSet<&str> = batch
        .column_by_name("service_name")
        .and_then(|c| c.as_string_opt::<i32>())
        .map(|a| a.iter().flatten().collect())
        .unwrap_or_default();
    let services: Vec<String> = services.into_iter().map(str::to_string).collect();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 8);
    let props = writer_properties(row_group_rows, traces_per_row_group(&batch, row_group_rows));
    let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(EncodedSegment {
        bytes: Bytes::from(buf),
        rows: batch.num_rows(),
        min_start_ns: arrow_min(start).unwrap_or_default(),
        max_start_ns: arrow_max(start).unwrap_or_default(),
        services,
    })
}

/// A batch in `schema`'s columns: taken by name, null where the batch has none (a column added
/// since it was written; refused unless nullable), the batch's other columns left out.
pub(crate) fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns)
}

/// Keeps the rows whose trace ID is in `ids`.
pub(crate) fn filter_trace_ids(
    batch: &RecordBatch,
    ids: &BTreeSet<TraceId>,
) -> Result<RecordBatch, StorageError> {
    let col = batch
        .column_by_name("trace_id")
        .and_then(|c| c.as_fixed_size_binary_opt())
        .ok_or_else(|| ArrowError::SchemaError("trace_id has the wrong type".into()))?;
    let mask: BooleanArray = (0..batch.num_rows())
        .map(|i| Some(<TraceId>::try_from(col.value(i)).is_ok_and(|id| ids.contains(&id))))
        .collect();
    Ok(filter_record_batch(batch, &mask)?)
}

/// Whether a Parquet error says the object is gone (a segment removed by retention while a
/// query was reading it).
pub(crate) fn is_not_found(e: &StorageError) -> bool {
    let not_found = |o: &object_store::Error| matches!(o, object_store::Error::NotFound { .. });
    match e {
        StorageError::ObjectStore(o) => not_found(o),
        StorageError::Parquet(ParquetError::External(b)) => b
            .downcast_ref::<object_store::Error>()
            .is_some_and(not_found),
        _ => false,
    }
}

/// `name` (a file name ending in `.parquet`) marked as written by `node`, with the time, so
/// that no two attempts write the same file: `<stem>-<unix ns>.node=<node>.parquet`. Node IDs
/// hold no `=`, so [`node_of`] reads the node back exactly.
pub(crate) fn node_file_name(name: &str, node: &str) -> String {
    let stem = name.strip_suffix(".parquet").unwrap_or(name);
    let now = meshtrace_model::time::now_unix_nanos();
    format!("{stem}-{now}.node={node}.parquet")
}

/// The node that wrote the file at `path` ([`node_file_name`]), if it says.
pub(crate) fn node_of(path: &str) -> Option<&str> {
    let stem = path.strip_suffix(".parquet")?;
    stem.rsplit_once(".node=").map(|(_, node)| node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, FixedSizeBinaryArray, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn bloom_filters_are_sized_for_the_traces_a_row_group_holds() {
        let batch = |per_trace: u32| {
            let ids: Vec<[u8; 16]> = (0..4000u32)
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[12..].copy_from_slice(&(i / per_trace).to_be_bytes());
                    id
                })
                .collect();
            let schema = Arc::new(Schema::new(vec![Field::new(
                "trace_id",
                DataType::FixedSizeBinary(16),
                false,
            )]));
            let ids = FixedSizeBinaryArray::try_from_iter(ids.iter()).unwrap();
            RecordBatch::try_new(schema, vec![Arc::new(ids)]).unwrap()
        };
        // 4 rows a trace: 256 traces in a row group of 1024, and half as many again.
        assert_eq!(traces_per_row_group(&batch(4), 1024), 384);
        // One row a trace: as many as rows, no more.
        assert_eq!(traces_per_row_group(&batch(1), 1024), 1024);
        // A segment smaller than a row group: its own traces.
        assert_eq!(traces_per_row_group(&batch(4), 16_384), 1500);
        assert_eq!(traces_per_row_group(&batch(4).slice(0, 0), 1024), 16);
    }

    #[test]
    fn sorting_by_trace_matches_the_general_sort() {
        // Few distinct trace IDs (ties broken by the second key), IDs differing only in the
        // last byte or only in the first, and negative second keys.
        let ids: Vec<[u8; 16]> = (0..200u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[(i % 2) as usize * 15] = (i * 37 % 11) as u8;
                id
            })
            .collect();
        let then: Vec<i64> = (0..200i64).map(|i| (i * 7919 % 101) - 50).collect();
        let tag: Vec<String> = (0..200).map(|i| format!("row{i}")).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("trace_id", DataType::FixedSizeBinary(16), false),
            Field::new("version", DataType::Int64, false),
            Field::new("tag", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(FixedSizeBinaryArray::try_from_iter(ids.iter()).unwrap()),
            Arc::new(Int64Array::from(then)),
            Arc::new(StringArray::from(tag)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        // Split in three, as a flush sorts several buffered batches together.
        let parts = [batch.slice(0, 70), batch.slice(70, 1), batch.slice(71, 129)];
        let fast = sort_by_trace(&schema, &parts, "version").unwrap();
        let general = sort_by(&batch, &["trace_id", "version"]).unwrap();
        let keys = |b: &RecordBatch| -> Vec<(Vec<u8>, i64)> {
            let ids = b.column(0).as_fixed_size_binary();
            let v = b.column(1).as_primitive::<Int64Type>();
            (0..b.num_rows())
                .map(|i| (ids.value(i).to_vec(), v.value(i)))
                .collect()
        };
        assert_eq!(keys(&fast), keys(&general));
        let mut sorted = keys(&fast);
        sorted.sort();
        assert_eq!(keys(&fast), sorted);
        assert_eq!(fast.num_rows(), 200);
    }
}
