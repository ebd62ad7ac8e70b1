//! Concatenating span segments without decoding them, for compaction's second tier
//! ([`crate::compact`]): each input's row groups are copied column chunk by column chunk, as
//! encoded and compressed, with their statistics, page indexes and `trace_id` bloom filters,
//! into one file. Copying costs a memory copy where decoding and encoding again cost seconds
//! of CPU per million spans, which a loaded mesh's ingest would pay.
//!
//! Only a file in today's span schema (the Parquet schema and the Arrow schema an empty
//! segment is written with) is copied as it is; an older one is first decoded, fitted to
//! today's columns ([`crate::layout::conform`]) and encoded alone, then copied.

use std::sync::Arc;

use bytes::Bytes;
use meshtrace_model::schema::spans_schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::bloom_filter::Sbbf;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{KeyValue, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::writer::SerializedFileWriter;

use crate::error::StorageError;
use crate::layout::{conform, encode_segment, writer_properties};

/// The key under which the Arrow writer stores a file's Arrow schema.
const ARROW_SCHEMA_KEY: &str = "ARROW:schema";

/// A segment file being built from the row groups of others.
pub(crate) struct Concat {
    writer: SerializedFileWriter<Vec<u8>>,
    /// An empty segment of today's schema, whose schemas inputs are compared with.
    today: ParquetMetaData,
    row_group_rows: usize,
}

impl Concat {
    pub fn new(row_group_rows: usize) -> Result<Self, StorageError> {
        let empty = encode_segment(&[], row_group_rows)?;
        let today = footer(&empty.bytes)?;
        let root = today.file_metadata().schema_descr().root_schema_ptr();
        // Appended column chunks keep their own bloom filters: the size given is not used.
        let props = Arc::new(writer_properties(row_group_rows, row_group_rows));
        let mut writer = SerializedFileWriter::new(Vec::new(), root, props)?;
        if let Some(kv) = arrow_schema_of(&today) {
            writer.append_key_value_metadata(kv.clone());
        }
        Ok(Concat {
            writer,
            today,
            row_group_rows,
        })
    }

    /// Appends every row group of the segment file `file`.
    pub fn append(&mut self, file: Bytes) -> Result<(), StorageError> {
        let meta = footer(&file)?;
        let (file, meta) = if self.is_today(&meta) {
            (file, meta)
        } else {
            let file = self.reencode(file)?;
            let meta = footer(&file)?;
            (file, meta)
        };
        for (g, rg) in meta.row_groups().iter().enumerate() {
            let mut out = self.writer.next_row_group()?;
            for (c, chunk) in rg.columns().iter().enumerate() {
                let close = ColumnCloseResult {
                    bytes_written: chunk.compressed_size().max(0) as u64,
                    rows_written: rg.num_rows().max(0) as u64,
                    metadata: chunk.clone(),
                    bloom_filter: Sbbf::read_from_column_chunk(chunk, &file)?,
                    column_index: meta.column_index().map(|i| i[g][c].clone()),
                    offset_index: meta.offset_index().map(|i| i[g][c].clone()),
                };
                out.append_column(&file, close)?;
            }
            out.close()?;
        }
        Ok(())
    }

    /// The file, complete.
    pub fn finish(self) -> Result<Bytes, StorageError> {
        Ok(Bytes::from(self.writer.into_inner()?))
    }

    fn is_today(&self, meta: &ParquetMetaData) -> bool {
        let schema = |m: &ParquetMetaData| m.file_metadata().schema_descr().root_schema_ptr();
        schema(meta) == schema(&self.today) && arrow_schema_of(meta) == arrow_schema_of(&self.today)
    }

    /// The rows of a segment of an older schema, in today's columns, encoded alone (they
    /// stay sorted as they were).
    fn reencode(&self, file: Bytes) -> Result<Bytes, StorageError> {
        let schema = spans_schema();
        let batches = ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?
            .map(|b| Ok(conform(b?, &schema)?))
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(encode_segment(&batches, self.row_group_rows)?.bytes)
    }
}

/// A segment file's footer with its page indexes.
fn footer(file: &Bytes) -> Result<ParquetMetaData, StorageError> {
    Ok(ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(file)?)
}

fn arrow_schema_of(meta: &ParquetMetaData) -> Option<&KeyValue> {
    let kvs = meta.file_metadata().key_value_metadata()?;
    kvs.iter().find(|kv| kv.key == ARROW_SCHEMA_KEY)
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::RecordBatch;
    use meshtrace_model::arrow_conv::spans_to_batch;
    use parquet::arrow::ArrowWriter;

    use super::*;
    use crate::tests::gen::mesh_traffic;

    fn read(file: Bytes) -> Vec<RecordBatch> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        reader.build().unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn a_segment_of_an_older_schema_is_fitted_to_todays_and_copied_after_one_of_today() {
        let today = spans_to_batch(&mesh_traffic(1, 300, 1_000, 1_000)).unwrap();
        let today_file = encode_segment(std::slice::from_ref(&today), 128)
            .unwrap()
            .bytes;
        let older = spans_to_batch(&mesh_traffic(2, 200, 1_000, 1_000)).unwrap();
        let gone = older.schema().index_of("trace_state").unwrap();
        let mut older = older;
        older.remove_column(gone);
        let mut older_file = Vec::new();
        let mut w = ArrowWriter::try_new(&mut older_file, older.schema(), None).unwrap();
        w.write(&older).unwrap();
        w.close().unwrap();

        let mut concat = Concat::new(128).unwrap();
        concat.append(today_file.clone()).unwrap();
        concat.append(Bytes::from(older_file)).unwrap();
        let out = concat.finish().unwrap();

        let meta = footer(&out).unwrap();
        let groups_today = footer(&today_file).unwrap().num_row_groups();
        assert!(
            meta.num_row_groups() > groups_today,
            "the older file's groups follow"
        );
        let batches = read(out);
        assert!(batches.iter().all(|b| b.schema() == spans_schema()));
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, today.num_rows() + older.num_rows());
        let ids = |bs: &[RecordBatch]| -> Vec<Vec<u8>> {
            let mut out: Vec<Vec<u8>> = (bs.iter())
                .flat_map(|b| {
                    let col = b.column_by_name("trace_id").unwrap().as_fixed_size_binary();
                    (0..b.num_rows())
                        .map(|i| col.value(i).to_vec())
                        .collect::<Vec<_>>()
                })
                .collect();
            out.sort();
            out
        };
        let mut want = ids(std::slice::from_ref(&today));
        want.extend(ids(&[older]));
        want.sort();
        assert_eq!(ids(&batches), want);
        // The bloom filters came along: every row group of the result has one.
        let meta = footer(&concat_again(&today_file)).unwrap();
        let col = 0;
        for rg in meta.row_groups() {
            assert!(rg.column(col).bloom_filter_offset().is_some());
        }
    }

    fn concat_again(file: &Bytes) -> Bytes {
        let mut concat = Concat::new(128).unwrap();
        concat.append(file.clone()).unwrap();
        concat.finish().unwrap()
    }
}
