//! Compaction of span segments: a quiet mesh flushes a small segment every `flush_age` (2 s by
//! default), and every trace lookup checks each segment's bloom filter, so the segments are
//! merged in the background into segments of about `compact_rows` rows, and those are
//! appended together into segments of [`APPEND_FACTOR`] times that: the file count (and
//! every per-file cost, such as the footers a lookup keeps in memory) grows by one per 1.6 M
//! spans by default, not one per flush. The run picking ([`pick_run`]) and the schema fitting
//! ([`crate::layout::conform`]) are shared with the derived tables' compaction.
//!
//! # Design
//!
//! Two tiers. A pass first takes the first run of committed segments in log order whose sequence ranges follow
//! each other without a gap (a damaged or lost segment's range breaks a run, so a merged
//! segment holds exactly the records of its range), each under half of `compact_rows`, up to
//! `compact_rows` rows, once it holds at least half of that (or 32 segments); segments near
//! retention, and those of a run whose merge failed, are left alone. It reads them whole,
//! writes their rows as one segment sorted by trace and time (the flush's encoding, bloom
//! filters and page index included) with the inputs' rollups merged, and names it after the
//! union of their sequence ranges plus its creation time (a merge tried again never writes
//! over an earlier attempt's file). A run is cut to what fits in the memory budget's headroom
//! ([`fit_in_memory`]), and nothing is merged when two segments do not fit.
//!
//! When no such run is due, the pass takes the first run of consecutive segments of at least
//! half of `compact_rows` rows each and under half of [`APPEND_FACTOR`] times it (a segment
//! outside that band breaks the run), ending with the segment that takes it to
//! [`APPEND_FACTOR`] times `compact_rows` rows, or [`MANY_SEGMENTS`], once it holds at least
//! half of that. They
//! are not sorted together: their row groups are copied one after the other, as encoded
//! ([`crate::concat`]), into one file built in memory (it is skipped unless twice the inputs'
//! size fits in the budget's headroom; an input of an older schema is decoded and encoded
//! again alone first, which takes more), so the `trace_id` ranges of row groups stay tight and
//! a lookup still reads one, and the catalog row's time range, row count and services are
//! the inputs'. Copying costs no decoding, which a loaded mesh's ingest would pay for; sorting
//! a whole tier by trace would also widen every row group's time range and make
//! time-bounded searches read it all.
//!
//! Retention deletes a merged segment with its newest span, so its oldest spans stay past
//! retention for the time its inputs cover: seconds to minutes under load, hours for an
//! appended segment of a mesh sending a few hundred spans a second.
//!
//! In both tiers the merged segment's rollups are the inputs' catalog rows added up (what
//! their flushes counted, overflow folds included). Reading and writing take no lock. Then,
//! under the flush lock, one catalog
//! transaction inserts the new row with its rollups and deletes exactly the merged rows (it
//! rolls back if any is gone: retention took it), and the in-memory list swaps them for the
//! new segment: a query snapshots the list under the same lock, so it reads either the old
//! segments or the new one, never both, never neither. The old files, and their rollup rows
//! (which queries of an older snapshot still read), are deleted `compact_grace` later, or at
//! the next start when the server stops first ([`Store::settle_orphans`]).
//!
//! A crash loses nothing. Before the commit, the new file has no row; after it, the old files
//! have none. Either way the file without a row is an orphan whose sequence range lies within
//! the ranges of committed segments, which [`crate::orphans`] deletes at the next start (its
//! spans are stored; the sweep runs after the start-up check has set damaged segments aside,
//! so only intact ones count). A commit whose outcome is unknown is looked up by path before
//! any other merge. The write-ahead log is not involved: its checkpoint only moves with
//! flushes. Damaged segments are never merged.
//!
//! In cluster mode a node merges the segments it wrote, in commit order (sequence numbers are
//! the shared stream's, interleaved between nodes, so they say nothing of adjacency), and
//! files are deleted through the catalog's marks instead of the grace timer and the orphan
//! sweep (see [`crate::cluster`]).

use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use meshtrace_model::memory::MemoryBudget;
use meshtrace_model::schema::spans_schema;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;

use crate::catalog::{DerivedSegment, SegmentInfo, SegmentTable};
use crate::concat::Concat;
use crate::error::StorageError;
use crate::layout::{conform, encode_segment, segment_path, EncodedSegment};
use crate::object_reader::ObjectReader;
use crate::pending::UnresolvedMerge;
use crate::store::{lock, Store};

/// A run of this many small segments is merged even when it holds fewer than half of
/// `compact_rows` rows (a quiet mesh flushes small segments).
pub(crate) const MANY_SEGMENTS: usize = 32;

/// What picking a run needs of a segment.
pub(crate) trait Rows {
    fn rows(&self) -> usize;
    /// The file's size.
    fn bytes(&self) -> u64;
}

impl Rows for DerivedSegment {
    fn rows(&self) -> usize {
        self.row_count.max(0) as usize
    }
    fn bytes(&self) -> u64 {
        self.byte_size.max(0) as u64
    }
}

impl Rows for SegmentInfo {
    fn rows(&self) -> usize {
        self.row_count.max(0) as usize
    }
    fn bytes(&self) -> u64 {
        self.byte_size.max(0) as u64
    }
}

/// A merge holds its inputs decoded, sorted and encoded again at once: about this many times
/// their files' size (random attribute values barely compress; repeated names decode to more).
pub(crate) const MERGE_MEMORY_PER_FILE_BYTE: u64 = 8;

/// The longest start of `run` whose merge fits in the memory budget's headroom
/// ([`MemoryBudget::headroom`]); empty when fewer than two segments fit, so a merge never
/// carries the process past the point where it refuses work.
pub(crate) fn fit_in_memory<T: Rows>(run: Vec<Arc<T>>, memory: &MemoryBudget) -> Vec<Arc<T>> {
    let Some(headroom) = memory.headroom() else {
        return run;
    };
    let allowance = headroom / MERGE_MEMORY_PER_FILE_BYTE;
    let mut total = 0;
    let fits = run
        .iter()
        .take_while(|s| {
            total += s.bytes();
            total <= allowance
        })
        .count();
    if fits < 2 {
        return Vec::new();
    }
    let mut run = run;
    run.truncate(fits);
    run
}

/// The first run of consecutive small segments worth merging (see the module docs): one
/// that holds at least half of `target` rows (its result is not small, so it is not merged
/// again), or [`MANY_SEGMENTS`]. A segment for which `follows(previous, it)` is false starts a
/// new run.
pub(crate) fn pick_run<T: Rows>(
    segments: &[Arc<T>],
    target: usize,
    follows: impl Fn(&T, &T) -> bool,
) -> Vec<Arc<T>> {
    let worth = |run: &[Arc<T>], rows: usize| {
        run.len() >= 2 && (rows >= target / 2 || run.len() >= MANY_SEGMENTS)
    };
    let (mut run, mut rows): (Vec<Arc<T>>, usize) = (Vec::new(), 0);
    for seg in segments {
        let breaks = run.last().is_some_and(|prev| !follows(prev, seg));
        if seg.rows() >= target / 2 || breaks {
            if worth(&run, rows) {
                return run;
            }
            (run, rows) = (Vec::new(), 0);
            if seg.rows() >= target / 2 {
                continue;
            }
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

/// Segments of at least half of `compact_rows` rows are appended together into segments of
/// about this many times `compact_rows` (see the module docs).
pub(crate) const APPEND_FACTOR: usize = 8;

/// How a run is merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    /// Small segments, read whole and sorted together by trace and time.
    Sorted,
    /// Compacted segments, streamed one after the other.
    Appended,
}

/// Segments whose spans retention deletes within this long are not merged (a merge would
/// keep them until its newest input expires).
const NEAR_RETENTION_NS: i64 = 600_000_000_000;

impl Store {
    /// One compaction pass over the span segments; returns how many segments were merged
    /// away (0 when compaction is off or nothing is worth merging).
    pub async fn compact_segments(&self) -> Result<usize, StorageError> {
        let target = self.inner.cfg.compact_rows;
        if target == 0 {
            return Ok(0);
        }
        if !self.settle_unresolved_merge().await? {
            return Ok(0);
        }
        let mut run = fit_in_memory(self.next_run(target, Tier::Sorted), &self.inner.cfg.memory);
        let mut tier = Tier::Sorted;
        if run.len() < 2 {
            let appended = self.next_run(target, Tier::Appended);
            // The new file is built in memory, one input beside it.
            let bytes: u64 = appended.iter().map(|s| s.bytes()).sum();
            let fits = (self.inner.cfg.memory.headroom()).is_none_or(|h| h >= 2 * bytes);
            (run, tier) = (if fits { appended } else { Vec::new() }, Tier::Appended);
        }
        if run.len() < 2 {
            return Ok(0);
        }
        match self.merge(&run, tier).await {
            Ok(merged) => Ok(if merged { run.len() } else { 0 }),
            Err(e) => {
                // Not tried again until a restart: a failure that repeats must not stop every
                // later merge.
                let mut merges = lock(&self.inner.merges);
                merges.failed.extend(run.iter().map(|s| s.id));
                Err(e)
            }
        }
    }

    /// The run to merge in `tier`: segments in log order, each following the one before it
    /// without a gap in the sequence numbers (a damaged or missing segment's range breaks a
    /// run), none near retention or in a failed run; in cluster mode, this node's segments
    /// in commit order. Small segments (under half of `target`) are sorted together towards
    /// `target` rows; larger ones are appended together towards [`APPEND_FACTOR`] times
    /// that, a small segment between them breaking their run.
    fn next_run(&self, target: usize, tier: Tier) -> Vec<Arc<SegmentInfo>> {
        let keep_after = self.retention_cutoff_ns().saturating_add(NEAR_RETENTION_NS);
        let failed = lock(&self.inner.merges).failed.clone();
        let in_tier = |s: &SegmentInfo| tier == Tier::Sorted || s.rows() >= target / 2;
        let mut segments: Vec<Arc<SegmentInfo>> = (self.read_view().segments.iter())
            .filter(|s| s.max_start_ns > keep_after && !failed.contains(&s.id) && in_tier(s))
            .filter(|s| self.compacts(&s.path))
            .cloned()
            .collect();
        let cluster = self.inner.cfg.cluster_node.is_some();
        match cluster {
            true => segments.sort_by_key(|s| s.id),
            false => segments.sort_by_key(|s| s.wal_seq_min),
        }
        let follows =
            |a: &SegmentInfo, b: &SegmentInfo| cluster || b.wal_seq_min == a.wal_seq_max + 1;
        match tier {
            Tier::Sorted => pick_run(&segments, target, follows),
            Tier::Appended => pick_run(&segments, target * APPEND_FACTOR, follows),
        }
    }

    /// Replaces `run` by one segment holding all its rows; false when the run changed while
    /// it was merged (retention), and nothing was replaced.
    async fn merge(&self, run: &[Arc<SegmentInfo>], tier: Tier) -> Result<bool, StorageError> {
        let started = std::time::Instant::now();
        let seq_min = run.iter().map(|s| s.wal_seq_min).min().unwrap_or_default();
        let seq_max = run.iter().map(|s| s.wal_seq_max).max().unwrap_or_default();
        let min_start = run.iter().map(|s| s.min_start_ns).min().unwrap_or_default();
        // Named apart from every other file: a merge tried again never writes over an earlier
        // attempt's file, which a lost commit may have registered.
        let path = segment_path(min_start, seq_min, seq_max);
        let path = match &self.inner.cfg.cluster_node {
            Some(node) => crate::layout::node_file_name(&path, node),
            None => path.replace(".parquet", &format!("-{}.parquet", now_ns())),
        };
        let object = ObjectPath::from(path.as_str());
        let inputs = run.iter().map(|s| (s.path.clone(), Some(s.id))).collect();
        let grace = self.inner.cfg.compact_grace;
        let retire = self.prepare_retirement(&path, inputs, grace).await?;
        let created = run
            .iter()
            .map(|s| s.created_at_ns)
            .max()
            .unwrap_or_default();
        let old: Vec<i64> = run.iter().map(|s| s.id).collect();
        // What the inputs' flushes counted (their overflow folds included).
        let rollups = self.inner.catalog.segment_rollups(&old).await?;
        let mut info = match tier {
            Tier::Sorted => {
                let schema = spans_schema();
                let mut batches = Vec::new();
                for seg in run {
                    for b in self.read_whole(seg).await? {
                        batches.push(conform(b, &schema)?);
                    }
                }
                let rg = self.inner.cfg.row_group_rows;
                let enc =
                    tokio::task::spawn_blocking(move || encode_segment(&batches, rg)).await??;
                self.put_segment(path, enc, (seq_min, seq_max), created)
                    .await?
            }
            Tier::Appended => {
                self.append_segments(path, run, (seq_min, seq_max), created)
                    .await?
            }
        };
        let _serial = self.inner.flush_lock.lock().await;
        let listed = old
            .iter()
            .all(|id| self.read_view().segments.iter().any(|s| s.id == *id));
        if !listed {
            self.delete_failed(&object).await;
            return Ok(false);
        }
        match self
            .inner
            .catalog
            .replace_segments(&info, &rollups, &old, retire.as_ref())
            .await
        {
            Ok(id) => info.id = id,
            Err(StorageError::CommitOutcomeUnknown(why)) => {
                // Settled (looked up by path) now if the catalog answers, else before any
                // other pass.
                tracing::warn!(%why, "the commit of a span merge may or may not have happened");
                let old = run.to_vec();
                lock(&self.inner.merges).unresolved = Some(UnresolvedMerge { info, old });
                drop(_serial);
                self.settle_unresolved_merge().await?;
                return Ok(false);
            }
            Err(StorageError::Conflict(why)) => {
                // Rolled back: a merged segment went meanwhile (retention).
                tracing::debug!(%why, "span merge abandoned");
                self.delete_failed(&object).await;
                return Ok(false);
            }
            Err(e) => {
                self.delete_failed(&object).await;
                return Err(e);
            }
        }
        tracing::info!(
            ?tier,
            ms = started.elapsed().as_millis() as u64,
            "span segments merged"
        );
        self.swap_merged(info, run);
        Ok(true)
    }

    /// Shows `info` instead of the merged segments `run` and deletes their files and rollup
    /// rows after the grace (in cluster mode, the catalog's marks have them deleted).
    fn swap_merged(&self, info: SegmentInfo, run: &[Arc<SegmentInfo>]) {
        tracing::info!(segments = run.len(), rows = info.row_count, path = %info.path, "span segments compacted");
        let old: Vec<i64> = run.iter().map(|s| s.id).collect();
        {
            let mut view = self.write_view();
            let at = view.segments.iter().position(|s| old.contains(&s.id));
            view.segments.retain(|s| !old.contains(&s.id));
            let at = at.unwrap_or(view.segments.len()).min(view.segments.len());
            view.segments.insert(at, Arc::new(info));
        }
        if self.inner.cfg.cluster_node.is_none() {
            self.delete_merged_later(run.iter().map(|s| s.path.clone()).collect(), old);
        }
    }

    /// Settles a merge whose commit outcome was not known, by looking its path up (under the
    /// flush lock): registered, the merge happened and is shown; not, its file is deleted.
    /// False while the catalog cannot be asked (no other merge runs meanwhile).
    async fn settle_unresolved_merge(&self) -> Result<bool, StorageError> {
        let Some(u) = lock(&self.inner.merges).unresolved.take() else {
            return Ok(true);
        };
        let _serial = self.inner.flush_lock.lock().await;
        let found = self
            .inner
            .catalog
            .segment_id(SegmentTable::Spans, &u.info.path)
            .await;
        match found {
            Ok(Some(id)) => {
                let info = SegmentInfo { id, ..u.info };
                self.swap_merged(info, &u.old);
                Ok(true)
            }
            Ok(None) => {
                self.delete_failed(&ObjectPath::from(u.info.path.as_str()))
                    .await;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the outcome of a span merge is not known yet");
                lock(&self.inner.merges).unresolved = Some(u);
                Ok(false)
            }
        }
    }

    /// Writes the row groups of `run`, one segment after the other and copied as encoded
    /// ([`Concat`]), into the file `path`; the catalog row's figures are the inputs'.
    async fn append_segments(
        &self,
        path: String,
        run: &[Arc<SegmentInfo>],
        wal_seqs: (u64, u64),
        created_at_ns: i64,
    ) -> Result<SegmentInfo, StorageError> {
        let mut concat = Concat::new(self.inner.cfg.row_group_rows)?;
        for seg in run {
            let object = ObjectPath::from(seg.path.as_str());
            let file = self.inner.store.get(&object).await?.bytes().await?;
            concat =
                tokio::task::spawn_blocking(move || concat.append(file).map(|()| concat)).await??;
        }
        let bytes = tokio::task::spawn_blocking(move || concat.finish()).await??;
        let mut services: Vec<String> = run.iter().flat_map(|s| s.services.clone()).collect();
        services.sort();
        services.dedup();
        let enc = EncodedSegment {
            bytes,
            rows: run.iter().map(|s| s.rows()).sum(),
            min_start_ns: run.iter().map(|s| s.min_start_ns).min().unwrap_or_default(),
            max_start_ns: run.iter().map(|s| s.max_start_ns).max().unwrap_or_default(),
            services,
        };
        self.put_segment(path, enc, wal_seqs, created_at_ns).await
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
