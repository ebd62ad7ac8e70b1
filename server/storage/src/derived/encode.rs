//! Encoding one derived segment: rows sorted by `(trace_id, version)` into one batch and
//! written as Parquet with the column encodings chosen per column ([`column_encoding`]), and
//! the `start_time` ranges a segment's catalog row and the graph rollups' change tracking need.

use arrow::compute::{max as arrow_max, min as arrow_min};
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{RecordBatch, TimestampNanosecondArray};
use arrow_schema::{ArrowError, DataType, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::error::StorageError;
use crate::layout::{sort_by_trace, trace_id_bloom_filter, traces_per_row_group};
use crate::touches::{minute_of, MINUTE_NS};

pub(super) struct Encoded {
    pub(super) bytes: bytes::Bytes,
    pub(super) rows: usize,
    pub(super) min_start_ns: i64,
    pub(super) max_start_ns: i64,
}

/// The `start_time` column of a batch of a derived table.
fn start_column(batch: &RecordBatch) -> Result<&TimestampNanosecondArray, StorageError> {
    Ok(batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| ArrowError::SchemaError("start_time has the wrong type".into()))?)
}

/// The minutes of a batch's `start_time`s as ranges of adjacent minutes, so that a batch
/// with one old trace touches its minute, not every minute since.
pub(super) fn start_minutes(batch: &RecordBatch) -> Result<Vec<(i64, i64)>, StorageError> {
    let mut minutes = std::collections::BTreeSet::new();
    let mut last = None;
    for m in start_column(batch)?
        .values()
        .iter()
        .map(|ns| minute_of(*ns))
    {
        // Rows of a batch mostly share a minute: only a new one costs a set insert.
        if last != Some(m) {
            minutes.insert(m);
            last = Some(m);
        }
    }
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for m in minutes {
        match ranges.last_mut() {
            Some(last) if last.1.checked_add(MINUTE_NS) == Some(m) => last.1 = m,
            _ => ranges.push((m, m)),
        }
    }
    Ok(ranges)
}

/// The smallest and largest `start_time` of a batch of a derived table.
fn start_range(batch: &RecordBatch) -> Result<(i64, i64), StorageError> {
    let start = start_column(batch)?;
    Ok((
        arrow_min(start).unwrap_or_default(),
        arrow_max(start).unwrap_or_default(),
    ))
}

/// The bytes of the segment a flush would write for these batches (`meshtrace bench
/// assembly` times it).
pub fn encoded_size(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
) -> Result<usize, StorageError> {
    Ok(encode(schema, batches, row_group_rows)?.bytes.len())
}

/// How one derived column is written.
#[derive(Debug, PartialEq, Eq)]
enum ColumnEncoding {
    Dictionary,
    Plain,
    ByteStreamSplit,
}

/// Names and small counts get a dictionary, durations (`*_ns`) byte planes, the rest (IDs,
/// times, versions, maps) neither.
fn column_encoding(name: &str, ty: &DataType) -> ColumnEncoding {
    match ty {
        DataType::Utf8 | DataType::LargeUtf8 => ColumnEncoding::Dictionary,
        DataType::Int64 if name.ends_with("_ns") => ColumnEncoding::ByteStreamSplit,
        DataType::Int64 if name != "version" => ColumnEncoding::Dictionary,
        _ => ColumnEncoding::Plain,
    }
}

/// Sorts by `(trace_id, version)` into one batch and encodes one segment.
pub(super) fn encode(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
) -> Result<Encoded, StorageError> {
    let batch = sort_by_trace(schema, batches, "version")?;
    let (min_start_ns, max_start_ns) = start_range(&batch)?;
    let props = WriterProperties::builder()
        // Level 1, not the span segments' 3: zstd was a third of encoding these tables, which
        // are rewritten at the rate traces complete; level 1 is the fast strategy.
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)));
    let traces = traces_per_row_group(&batch, row_group_rows);
    let mut props = trace_id_bloom_filter(props, traces);
    // Column encodings, measured on `bench ingest` segments (docs/benchmarks.md, "Derived
    // data under 10 bytes a span"):
    // - a dictionary pays for the names (classes, services, operations) and the small counts
    //   (`spans`, `span_count`, `roots`, ...): few distinct values;
    // - durations (`*_ns`) are split into byte planes (`BYTE_STREAM_SPLIT`): their high bytes
    //   are nearly constant and compress apart from the random low ones (-20 % on the critical
    //   path's self time against plain);
    // - IDs, times and versions stay plain: mostly distinct, and the same value on all of a
    //   trace's rows is a repeat ZSTD finds.
    // Min/max statistics are kept for `trace_id` and `start_time` only: rows are sorted by
    // trace, so a row group covers a range of trace IDs (and, flushed every few seconds, of
    // times), while every other column spans nearly all its values in every row group, and
    // its statistics would prune nothing for two comparisons per value.
    for field in schema.fields() {
        let name = field.name().as_str();
        if !matches!(name, "trace_id" | "start_time") {
            props = props.set_column_statistics_enabled(name.into(), EnabledStatistics::None);
        }
        match column_encoding(name, field.data_type()) {
            ColumnEncoding::Dictionary => {}
            ColumnEncoding::Plain => {
                props = props.set_column_dictionary_enabled(name.into(), false)
            }
            ColumnEncoding::ByteStreamSplit => {
                props = props
                    .set_column_dictionary_enabled(name.into(), false)
                    .set_column_encoding(name.into(), Encoding::BYTE_STREAM_SPLIT);
            }
        }
    }
    let props = props.build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Encoded {
        bytes: bytes::Bytes::from(buf),
        rows: batch.num_rows(),
        min_start_ns,
        max_start_ns,
    })
}
