//! Compaction of derived segments: the small segments each flush writes (one per table every
//! `flush_age`) are merged in the background into segments of about `compact_rows` rows, so the
//! file count of a table grows with its rows, not with the flushes.
//!
//! # Design
//!
//! A pass takes, per table, the oldest run of consecutive segments (in commit order, so in
//! time) each under half of `compact_rows`, up to `compact_rows` rows, once the run holds at
//! least half of that (or 32 segments, for a quiet mesh). It reads them whole, writes their
//! rows as one segment sorted by trace and version (the flush's encoding), and commits in one
//! catalog transaction the new row and the deletion of the old rows. Then, under the table's
//! lock, the old segments are replaced by the new one in memory: a query snapshots the segment list under the same lock, so it reads
//! either the old segments or the new one, never both and never neither. The rows do not
//! change, so nothing the query layer rolled up goes stale.
//!
//! The old files are deleted `compact_grace` later, so that queries that snapshotted them
//! before the swap can finish reading. A crash at any point loses nothing: before the commit
//! the new file has no row and is removed at the next open (as any derived file without a
//! row), after it the old files have none and are removed likewise. A commit whose outcome is
//! unknown is looked up by path. Reading and writing the merged file take no lock; the commit
//! and the swap hold the flush lock (as flushes and retention do) and happen only if every
//! merged segment is still listed, and the commit deletes exactly their rows or rolls back. In
//! cluster mode (peers share the catalog and refresh their lists of each other's segments) a
//! node merges the segments it wrote, and files are deleted through the catalog's marks
//! instead of the grace timer and the orphan sweep at open (see [`crate::cluster`]).
//!
//! Segments written before a table's schema changed are merged in the schema of today
//! ([`conform`]): columns it dropped are left out, nullable columns it added are null.

use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;

use super::{DerivedSegment, DerivedStore, TableState};
use crate::catalog::SegmentTable;
use crate::compact::{fit_in_memory, pick_run};
use crate::error::StorageError;
use crate::layout::conform;
use crate::object_reader::ObjectReader;

impl DerivedStore {
    /// One compaction pass over every table; returns how many segments were merged away.
    pub async fn compact(&self) -> Result<usize, StorageError> {
        let target = self.inner.cfg.compact_rows;
        if target == 0 {
            return Ok(0);
        }
        let mut merged = 0;
        let mut failed = None;
        for t in &self.inner.tables {
            let store = &self.inner.store;
            let mine: Vec<_> = (t.snapshot().0.iter())
                .filter(|s| store.compacts(&s.path))
                .cloned()
                .collect();
            let run = pick_run(&mine, target, |_, _| true);
            let run = fit_in_memory(run, &self.inner.store.config().memory);
            if run.len() < 2 {
                continue;
            }
            // One table's failure does not hold up the others.
            match self.merge(t, &run).await {
                Ok(true) => merged += run.len(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(table = %t.name, error = %e, "derived compaction failed");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if merged == 0 => Err(e),
            _ => Ok(merged),
        }
    }

    /// Replaces `run` by one segment holding all its rows; false when the run changed while
    /// it was merged (retention, or another pass), and nothing was replaced.
    async fn merge(
        &self,
        t: &TableState,
        run: &[Arc<DerivedSegment>],
    ) -> Result<bool, StorageError> {
        // Reading, encoding and writing take no lock: flushes (the provenance task waits for
        // them) go on meanwhile.
        let mut batches = Vec::new();
        for seg in run {
            for batch in self.read_segment(seg).await? {
                batches.push(conform(batch, &t.schema)?);
            }
        }
        let (mut seg, retire) = self.put_segment(t, batches, run).await?;
        seg.created_at_ns = run
            .iter()
            .map(|s| s.created_at_ns)
            .max()
            .unwrap_or(seg.created_at_ns);
        let old: Vec<i64> = run.iter().map(|s| s.id).collect();
        let _serial = self.inner.flush_lock.lock().await;
        let listed = t.snapshot().0;
        if !old.iter().all(|id| listed.iter().any(|s| s.id == *id)) {
            self.inner
                .store
                .delete_failed(&ObjectPath::from(seg.path.as_str()))
                .await;
            return Ok(false);
        }
        let catalog = &self.inner.store.inner.catalog;
        seg.id = match catalog
            .replace_derived_segments(&seg, &old, retire.as_ref())
            .await
        {
            Ok(id) => id,
            Err(e) => self.settle_failed_merge(&seg.path, e).await?,
        };
        tracing::info!(table = %t.name, segments = run.len(), rows = seg.row_count, path = %seg.path, "derived segments compacted");
        {
            let mut view = t.view();
            let at = view.segments.iter().position(|s| old.contains(&s.id));
            view.segments.retain(|s| !old.contains(&s.id));
            let at = at.unwrap_or(view.segments.len()).min(view.segments.len());
            view.segments.insert(at, Arc::new(seg));
        }
        if self.inner.store.config().cluster_node.is_none() {
            self.delete_later(run.iter().map(|s| s.path.clone()).collect());
        }
        Ok(true)
    }

    /// A merge whose commit failed: rolled back (the file is deleted), or of unknown outcome,
    /// looked up: if its row is there the merge happened (its id), if not the file is deleted;
    /// if the catalog cannot be asked the file stays for the next open's orphan sweep.
    async fn settle_failed_merge(&self, path: &str, e: StorageError) -> Result<i64, StorageError> {
        let store = &self.inner.store;
        if !matches!(e, StorageError::CommitOutcomeUnknown(_)) {
            store.delete_failed(&ObjectPath::from(path)).await;
            return Err(e);
        }
        match store
            .inner
            .catalog
            .segment_id(SegmentTable::Derived, path)
            .await
        {
            Ok(Some(id)) => Ok(id),
            Ok(None) => {
                store.delete_failed(&ObjectPath::from(path)).await;
                Err(e)
            }
            Err(_) => Err(e),
        }
    }

    /// Every row of one segment, in the columns it was written with.
    async fn read_segment(&self, seg: &DerivedSegment) -> Result<Vec<RecordBatch>, StorageError> {
        let store = self.inner.store.inner.store.clone();
        let size = u64::try_from(seg.byte_size).unwrap_or(0);
        let reader = ObjectReader::new(store, ObjectPath::from(seg.path.as_str()), size);
        let stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await?
            .build()?;
        Ok(stream.try_collect().await?)
    }

    /// Deletes the files of merged segments once queries that may still read them are done.
    fn delete_later(&self, paths: Vec<String>) {
        let (store, grace) = (
            self.inner.store.inner.store.clone(),
            self.inner.cfg.compact_grace,
        );
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            for p in paths {
                match store.delete(&ObjectPath::from(p.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(path = %p, error = %e, "could not delete a compacted segment; the next start removes it")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::MANY_SEGMENTS;

    fn seg(id: i64, rows: i64) -> Arc<DerivedSegment> {
        Arc::new(DerivedSegment {
            id,
            table: "t".into(),
            path: format!("p{id}"),
            min_start_ns: 0,
            max_start_ns: 0,
            row_count: rows,
            byte_size: 1,
            created_at_ns: id,
        })
    }

    fn ids(run: Vec<Arc<DerivedSegment>>) -> Vec<i64> {
        run.iter().map(|s| s.id).collect()
    }

    #[test]
    fn a_run_is_cut_to_what_its_merge_can_take_of_the_memory_budget() {
        use meshtrace_model::memory::MemoryBudget;
        let sized = |id, mib: i64| {
            let mut s = (*seg(id, 100)).clone();
            s.byte_size = mib << 20;
            Arc::new(s)
        };
        let run = vec![sized(1, 5), sized(2, 5), sized(3, 5)];
        assert_eq!(
            ids(fit_in_memory(run.clone(), &MemoryBudget::unlimited())),
            vec![1, 2, 3]
        );
        let budget = MemoryBudget::new(800 << 20);
        // 100 MiB before refusals start: a merge of 8 x 10 MiB fits, of 8 x 15 MiB does not.
        budget.record(600 << 20);
        assert_eq!(ids(fit_in_memory(run.clone(), &budget)), vec![1, 2]);
        budget.record(690 << 20);
        assert!(fit_in_memory(run, &budget).is_empty(), "not even two fit");
    }

    #[test]
    fn runs_are_the_oldest_consecutive_small_segments_up_to_the_target() {
        let list = [
            seg(1, 600),
            seg(2, 300),
            seg(3, 300),
            seg(4, 900),
            seg(5, 100),
        ];
        assert_eq!(ids(pick_run(&list, 1000, |_, _| true)), vec![2, 3]);
        let list = [seg(1, 400), seg(2, 400), seg(3, 400), seg(4, 400)];
        assert_eq!(ids(pick_run(&list, 1000, |_, _| true)), vec![1, 2, 3]);
        let lone = [seg(1, 100), seg(2, 900)];
        assert!(
            pick_run(&lone, 1000, |_, _| true).is_empty(),
            "one small segment alone is left"
        );
        // Too few rows to be worth a rewrite yet, unless there are many of them.
        let few = [seg(1, 100), seg(2, 100), seg(3, 900), seg(4, 10)];
        assert!(pick_run(&few, 1000, |_, _| true).is_empty());
        let many: Vec<_> = (0..40).map(|i| seg(i, 1)).collect();
        assert_eq!(pick_run(&many, 1000, |_, _| true).len(), MANY_SEGMENTS);
        assert!(
            pick_run(&list, 0, |_, _| true).is_empty(),
            "a target of 0 is off"
        );
    }
}
