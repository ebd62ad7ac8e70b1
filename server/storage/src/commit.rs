//! What happens around a segment's catalog commit: the file is made durable before the row
//! points at it, and a commit that failed leaves neither a stray file nor a second copy.
//!
//! A commit can fail in two ways. Before the transaction commits (the catalog refused the
//! connection, a statement failed), nothing was stored: the file is deleted at once and the
//! rows stay buffered for the next flush. When the commit itself reports an error
//! ([`StorageError::CommitOutcomeUnknown`], e.g. the reply was lost), the row may be there:
//! the catalog is asked for the segment's path. Found: the flush is complete after all (a
//! second flush of the same rows would store them twice). Not found: the file is deleted.
//! Cannot be asked: the segment is kept [`Unresolved`] with its rows still marked as being
//! flushed, and the next flush asks again before it writes anything else.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::catalog::{PartitionMark, SegmentInfo, SegmentTable};
use crate::error::StorageError;
use crate::layout::EncodedSegment;
use crate::pending::Unresolved;
use crate::store::{lock, Store};

impl Store {
    /// Settles a failed commit of `failed` (see the module docs): `Ok(id)` when the commit
    /// went through after all, else the error to report.
    pub(crate) async fn settle_failed_commit(
        &self,
        failed: Unresolved,
        e: StorageError,
    ) -> Result<i64, StorageError> {
        if !matches!(e, StorageError::CommitOutcomeUnknown(_)) {
            self.delete_failed(&failed.object).await;
            return Err(e);
        }
        let catalog = &self.inner.catalog;
        match catalog
            .segment_id(SegmentTable::Spans, failed.object.as_ref())
            .await
        {
            Ok(Some(id)) => {
                tracing::warn!(path = %failed.object, error = %e, "the segment's commit reported an error but it is in the catalog");
                Ok(id)
            }
            Ok(None) => {
                self.delete_failed(&failed.object).await;
                Err(e)
            }
            Err(_) => {
                *lock(&self.inner.unresolved) = Some(failed);
                Err(e)
            }
        }
    }

    /// Whether a segment's outcome is still unknown (its rows then stay marked).
    pub(crate) fn has_unresolved(&self) -> bool {
        lock(&self.inner.unresolved).is_some()
    }

    /// Asks the catalog about an earlier commit whose outcome was unknown. Returns the
    /// checkpoint if it went through (the flush it belonged to is now complete), `None` if
    /// there was none or it did not (its file deleted, its rows free to flush again).
    pub(crate) async fn resolve_unresolved(&self) -> Result<Option<u64>, StorageError> {
        let Some(u) = lock(&self.inner.unresolved).take() else {
            return Ok(None);
        };
        let catalog = &self.inner.catalog;
        match catalog
            .segment_id(SegmentTable::Spans, u.object.as_ref())
            .await
        {
            Err(e) => {
                *lock(&self.inner.unresolved) = Some(u);
                Err(e)
            }
            Ok(None) => {
                self.delete_failed(&u.object).await;
                self.write_view().unmark();
                Ok(None)
            }
            Ok(Some(id)) => {
                let mut info = u.info;
                info.id = id;
                self.rebuilt(&u.replaces);
                self.finish_commit(info, &u.marks, u.checkpoint, Instant::now());
                Ok(Some(u.checkpoint))
            }
        }
    }

    /// Everything after a segment's row is committed: ownership marks, the checkpoint, the
    /// counters, and the buffer drops the rows the segment now holds.
    pub(crate) fn finish_commit(
        &self,
        info: SegmentInfo,
        marks: &[PartitionMark],
        checkpoint: u64,
        started: Instant,
    ) {
        self.committed(marks);
        self.inner.checkpoint.store(checkpoint, Ordering::Release);
        let c = &self.inner.counters;
        c.flushes.fetch_add(1, Ordering::Relaxed);
        c.segments_written.fetch_add(1, Ordering::Relaxed);
        c.bytes_written
            .fetch_add(info.byte_size as u64, Ordering::Relaxed);
        c.rows_written
            .fetch_add(info.row_count as u64, Ordering::Relaxed);
        tracing::info!(
            path = %info.path,
            rows = info.row_count,
            bytes = info.byte_size,
            checkpoint,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "segment committed"
        );
        self.write_view().finish_flush(Arc::new(info));
    }

    /// Writes an encoded segment at `path` (one `put`, then made durable; deleted again if
    /// that fails) and describes it for the catalog (`id` 0 until committed).
    pub(crate) async fn put_segment(
        &self,
        path: String,
        enc: EncodedSegment,
        (wal_seq_min, wal_seq_max): (u64, u64),
        created_at_ns: i64,
    ) -> Result<SegmentInfo, StorageError> {
        let object = ObjectPath::from(path.as_str());
        let byte_size = enc.bytes.len() as i64;
        let file = enc.bytes.clone();
        self.inner
            .store
            .put(&object, PutPayload::from(enc.bytes))
            .await?;
        // Lookups find its footer and bloom filters in memory from the start.
        self.inner.reader.prime(&path, &file);
        if let Err(e) = self.sync_segment(&path).await {
            self.delete_failed(&object).await;
            return Err(e);
        }
        Ok(SegmentInfo {
            id: 0,
            path,
            min_start_ns: enc.min_start_ns,
            max_start_ns: enc.max_start_ns,
            row_count: enc.rows as i64,
            byte_size,
            wal_seq_min,
            wal_seq_max,
            services: enc.services,
            created_at_ns,
        })
    }

    /// Makes a segment file just written to the local data directory durable (see
    /// [`sync_local`]); a no-op in cluster mode, where the object store is remote.
    pub(crate) async fn sync_segment(&self, path: &str) -> Result<(), StorageError> {
        match self.inner.cfg.cluster_node {
            Some(_) => Ok(()),
            None => sync_local(&self.inner.cfg.data_dir, path).await,
        }
    }

    /// Deletes the file of a commit that did not happen (a warning if that fails: the next
    /// start-up's orphan sweep then removes it, or in cluster mode its doomed mark).
    pub(crate) async fn delete_failed(&self, object: &ObjectPath) {
        self.inner.reader.forget(object.as_ref());
        match self.inner.store.delete(object).await {
            Ok(()) => {
                let c = &self.inner.counters;
                c.failed_segments_deleted.fetch_add(1, Ordering::Relaxed);
            }
            Err(d) => {
                tracing::warn!(path = %object, error = %d, "could not delete the file of a failed commit")
            }
        }
    }
}

/// Makes a segment file just written under `root` durable before its catalog row points at it:
/// the file, then each directory up to `root` (a new `date=`/`hour=` directory's entry is
/// only durable once its parent is synced).
async fn sync_local(root: &std::path::Path, path: &str) -> Result<(), StorageError> {
    let (root, file) = (root.to_path_buf(), root.join(path));
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&file)?.sync_all()?;
        let mut dir = file.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&root)) {
            std::fs::File::open(d)?.sync_all()?;
            dir = d.parent();
        }
        Ok::<_, std::io::Error>(())
    })
    .await?
    .map_err(|e| StorageError::Io(e.to_string()))
}
