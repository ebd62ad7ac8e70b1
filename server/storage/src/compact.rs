//! Compaction of span segments: a quiet mesh flushes a small segment every `flush_age` (2 s by
//! default), and every trace lookup checks each segment's bloom filter, so the segments are
//! merged in the background into segments of about `compact_rows` rows and the file count
//! grows with the spans, not with the flushes. The run picking ([`pick_run`]) and the
//! schema fitting ([`conform`]) are shared with the derived tables' compaction.
//!
//! # Design
//!
//! A pass takes the oldest run of consecutive committed segments (in commit order) each under
//! half of `compact_rows`, up to `compact_rows` rows, once it holds at least half of that (or
//! 32 segments). It reads them whole, writes their rows as one segment sorted by trace and
//! time (the flush's encoding, bloom filters and page index included) with the per-minute
//! rollups computed from the same rows, and names it after the union of their log sequence
//! ranges. Reading and writing take no lock. Then, under the flush lock, one catalog
//! transaction inserts the new row with its rollups and deletes exactly the merged rows (it
//! rolls back if any is gone: retention took it), and the in-memory list swaps them for the
//! new segment: a query snapshots the list under the same lock, so it reads either the old
//! segments or the new one, never both, never neither. The old files, and their rollup rows
//! (which queries of an older snapshot still read), are deleted `compact_grace` later.
//!
//! A crash loses nothing. Before the commit, the new file has no row; after it, the old files
//! have none. Either way the file without a row is an orphan whose sequence range lies within
//! the ranges of committed segments, which [`crate::orphans`] deletes at the next start (its
//! spans are stored). A commit whose outcome is unknown is looked up by path. The write-ahead
//! log is not involved: its checkpoint only moves with flushes. Damaged segments are never
//! merged, and in cluster mode (peers list each other's segments) nothing is.

use std::sync::Arc;

use arrow_array::{new_null_array, RecordBatch};
use arrow_schema::{ArrowError, SchemaRef};
use futures::TryStreamExt;
use meshtrace_model::schema::spans_schema;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ParquetRecordBatchStreamBuilder;

use crate::catalog::{DerivedSegment, SegmentInfo, SegmentTable};
use crate::error::StorageError;
use crate::layout::{encode_segment, segment_path};
use crate::object_reader::ObjectReader;
use crate::rollup::rollups_of;
use crate::store::Store;

/// A run of this many small segments is merged even when it holds fewer than half of
/// `compact_rows` rows (a quiet mesh flushes small segments).
pub(crate) const MANY_SEGMENTS: usize = 32;

/// What picking a run needs of a segment.
pub(crate) trait Rows {
    fn rows(&self) -> usize;
}

impl Rows for DerivedSegment {
    fn rows(&self) -> usize {
        self.row_count.max(0) as usize
    }
}

impl Rows for SegmentInfo {
    fn rows(&self) -> usize {
        self.row_count.max(0) as usize
    }
}

/// The oldest run of consecutive small segments worth merging (see the module docs): one
/// that holds at least half of `target` rows (its result is not small, so it is not merged
/// again), or [`MANY_SEGMENTS`].
pub(crate) fn pick_run<T: Rows>(segments: &[Arc<T>], target: usize) -> Vec<Arc<T>> {
    let worth = |run: &[Arc<T>], rows: usize| {
        run.len() >= 2 && (rows >= target / 2 || run.len() >= MANY_SEGMENTS)
    };
    let (mut run, mut rows): (Vec<Arc<T>>, usize) = (Vec::new(), 0);
    for seg in segments {
        if seg.rows() >= target / 2 {
            if worth(&run, rows) {
                return run;
            }
            (run, rows) = (Vec::new(), 0);
            continue;
        }
        run.push(seg.clone());
        rows += seg.rows();
        if rows >= target || run.len() >= MANY_SEGMENTS {
            return run;
        }
    }
    if worth(&run, rows) {
        run
    } else {
        Vec::new()
    }
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

impl Store {
    /// One compaction pass over the span segments; returns how many segments were merged
    /// away (0 when compaction is off, in cluster mode, or nothing is worth merging).
    pub async fn compact_segments(&self) -> Result<usize, StorageError> {
        let target = self.inner.cfg.compact_rows;
        if target == 0 || self.inner.cfg.cluster_node.is_some() {
            return Ok(0);
        }
        let run = pick_run(&self.read_view().segments, target);
        if run.len() < 2 {
            return Ok(0);
        }
        Ok(if self.merge(&run).await? {
            run.len()
        } else {
            0
        })
    }

    /// Replaces `run` by one segment holding all its rows; false when the run changed while
    /// it was merged (retention), and nothing was replaced.
    async fn merge(&self, run: &[Arc<SegmentInfo>]) -> Result<bool, StorageError> {
        let schema = spans_schema();
        let mut batches = Vec::new();
        for seg in run {
            for batch in self.read_whole(seg).await? {
                batches.push(conform(batch, &schema)?);
            }
        }
        let rg = self.inner.cfg.row_group_rows;
        let (enc, rollups) = tokio::task::spawn_blocking(move || {
            Ok::<_, StorageError>((encode_segment(&batches, rg)?, rollups_of(&batches, None)?))
        })
        .await??;
        let seq_min = run.iter().map(|s| s.wal_seq_min).min().unwrap_or_default();
        let seq_max = run.iter().map(|s| s.wal_seq_max).max().unwrap_or_default();
        let mut path = segment_path(enc.min_start_ns, seq_min, seq_max);
        if self.read_view().segments.iter().any(|s| s.path == path) {
            path = path.replace(".parquet", &format!("-{}.parquet", now_ns()));
        }
        let object = ObjectPath::from(path.as_str());
        let byte_size = enc.bytes.len() as i64;
        self.inner
            .store
            .put(&object, PutPayload::from(enc.bytes))
            .await?;
        self.sync_segment(&path).await?;
        let mut info = SegmentInfo {
            id: 0,
            path,
            min_start_ns: enc.min_start_ns,
            max_start_ns: enc.max_start_ns,
            row_count: enc.rows as i64,
            byte_size,
            wal_seq_min: seq_min,
            wal_seq_max: seq_max,
            services: enc.services,
            created_at_ns: run
                .iter()
                .map(|s| s.created_at_ns)
                .max()
                .unwrap_or_default(),
        };
        let old: Vec<i64> = run.iter().map(|s| s.id).collect();
        let _serial = self.inner.flush_lock.lock().await;
        let listed = old
            .iter()
            .all(|id| self.read_view().segments.iter().any(|s| s.id == *id));
        if !listed {
            self.delete_failed(&object).await;
            return Ok(false);
        }
        info.id = match self
            .inner
            .catalog
            .replace_segments(&info, &rollups, &old)
            .await
        {
            Ok(id) => id,
            Err(e) => self.settle_failed_merge(&object, e).await?,
        };
        tracing::info!(segments = run.len(), rows = info.row_count, path = %info.path, "span segments compacted");
        {
            let mut view = self.write_view();
            let at = view.segments.iter().position(|s| old.contains(&s.id));
            view.segments.retain(|s| !old.contains(&s.id));
            let at = at.unwrap_or(view.segments.len()).min(view.segments.len());
            view.segments.insert(at, Arc::new(info));
        }
        self.delete_merged_later(run.iter().map(|s| s.path.clone()).collect(), old);
        Ok(true)
    }

    /// Every row of one segment, in the columns it was written with.
    async fn read_whole(&self, seg: &SegmentInfo) -> Result<Vec<RecordBatch>, StorageError> {
        let size = u64::try_from(seg.byte_size).unwrap_or(0);
        let path = ObjectPath::from(seg.path.as_str());
        let reader = ObjectReader::new(self.inner.store.clone(), path, size);
        let stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await?
            .build()?;
        Ok(stream.try_collect().await?)
    }

    /// A merge whose commit failed: rolled back (the file is deleted), or of unknown outcome,
    /// looked up: if its row is there the merge happened (its id), if not the file is deleted;
    /// if the catalog cannot be asked the file stays for the next start's orphan sweep.
    async fn settle_failed_merge(
        &self,
        object: &ObjectPath,
        e: StorageError,
    ) -> Result<i64, StorageError> {
        if !matches!(e, StorageError::CommitOutcomeUnknown(_)) {
            self.delete_failed(object).await;
            return Err(e);
        }
        match self
            .inner
            .catalog
            .segment_id(SegmentTable::Spans, object.as_ref())
            .await
        {
            Ok(Some(id)) => Ok(id),
            Ok(None) => {
                self.delete_failed(object).await;
                Err(e)
            }
            Err(_) => Err(e),
        }
    }

    /// Deletes the files and rollup rows of merged segments once queries that may still read
    /// them are done.
    fn delete_merged_later(&self, paths: Vec<String>, ids: Vec<i64>) {
        let (store, grace) = (self.clone(), self.inner.cfg.compact_grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            for p in paths {
                store.inner.reader.forget(&p);
                match store
                    .inner
                    .store
                    .delete(&ObjectPath::from(p.as_str()))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(path = %p, error = %e, "could not delete a merged segment; the next start removes it")
                    }
                }
            }
            if let Err(e) = store.inner.catalog.delete_rollups(&ids).await {
                tracing::warn!(error = %e, "could not delete the rollups of merged segments");
            }
        });
    }
}

fn now_ns() -> i64 {
    meshtrace_model::time::now_unix_nanos()
}
