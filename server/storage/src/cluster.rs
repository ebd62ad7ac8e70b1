//! Cluster mode in the store: the partitions this node owns, the spans consumed from them,
//! fenced commits, reading the segments peers commit, and deleting the files compaction
//! leaves behind in the shared object store.
//!
//! In cluster mode the JetStream span stream replaces the write-ahead log. Each partition of
//! the stream has one owner at a time; the owner [claims](Store::claim_partition) it in the
//! catalog, which moves the partition's epoch on and returns its checkpoint (the highest stream
//! sequence number whose spans are in a committed segment). The owner consumes from just past
//! the checkpoint and [appends](Store::append_partition) each message's spans with its stream
//! sequence number. A flush commits, in the segment's own transaction, the new checkpoint of
//! every partition in it, but only under the epoch it claimed the partition with: a node that
//! lost a partition (a pause longer than its lease) fails to commit it and drops those rows,
//! which the new owner consumes again from the checkpoint. So every acknowledged message is in
//! exactly one committed segment, whatever node dies when.
//!
//! Peers' segments become visible through [`Store::refresh`], which re-reads the catalog's
//! segment list and names (the server calls it every second).
//!
//! Each node compacts the segments it wrote (their names say so), so no two nodes merge the
//! same ones; a commit that finds an input gone rolls back all the same. As a node
//! cannot tell a peer's file between `put` and commit from a leftover, files are deleted only
//! through the catalog's `doomed_files` marks ([`crate::catalog::Retirement`]), which
//! [`Store::sweep_doomed`] carries out on any node once they are due: the merged inputs
//! `compact_grace` after the commit (peers re-read the segment list every second, so their
//! queries are done by then; the nodes' clocks must agree, as NTP keeps them), and the file
//! of a flush or a merge whose commit never came [`UNCOMMITTED_DUE`] after it was written.
//! File names say which node wrote them ([`crate::layout::node_file_name`]), and no two
//! attempts share one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use meshtrace_model::SpanKind;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use crate::buffer::{Buffered, Taken};
use crate::catalog::{due_in, PartitionMark, Retirement};
use crate::error::StorageError;
use crate::layout::node_of;
use crate::ownership::Partition;
use crate::store::{lock, Store};

/// How long after it is written a file whose commit never came is deleted: far beyond the
/// time a flush or a merge takes between its `put` and its commit.
pub(crate) const UNCOMMITTED_DUE: Duration = Duration::from_secs(15 * 60);

/// What [`Store::append_partition`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Buffered.
    New,
    /// Already appended before (a redelivery): not buffered again.
    Again,
    /// The partition is not owned under that claim any more: stop consuming it.
    NotOwned,
}

/// A claimed partition: its epoch and its checkpoint when claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    pub checkpoint: u64,
}

impl Store {
    /// Claims `partition` for this node (see the module docs): the claim's epoch and the
    /// stream sequence number its consumer starts after. Rows of an earlier ownership still
    /// buffered are dropped: they are consumed again.
    pub async fn claim_partition(&self, partition: u32) -> Result<Claim, StorageError> {
        let node = self
            .inner
            .cfg
            .cluster_node
            .as_deref()
            .unwrap_or("standalone");
        let _serial = self.inner.flush_lock.lock().await;
        let (epoch, checkpoint) = self.inner.catalog.claim_partition(partition, node).await?;
        self.write_view().drop_partition(partition);
        let state = Partition {
            epoch,
            committed: checkpoint,
            appended: checkpoint,
        };
        lock(&self.inner.owned).0.insert(partition, state);
        tracing::info!(partition, epoch, checkpoint, "partition claimed");
        Ok(Claim { epoch, checkpoint })
    }

    /// Gives `partition` up: waits for a flush in progress, then forgets it and drops its rows
    /// still buffered (flush first to keep the new owner from consuming them again).
    pub async fn release_partition(&self, partition: u32) {
        let _serial = self.inner.flush_lock.lock().await;
        self.forget_partition(partition);
        self.write_view().drop_partition(partition);
    }

    pub(crate) fn forget_partition(&self, partition: u32) {
        lock(&self.inner.owned).0.remove(&partition);
    }

    /// The partitions owned now, sorted.
    pub fn owned_partitions(&self) -> Vec<u32> {
        let mut out: Vec<u32> = lock(&self.inner.owned).0.keys().copied().collect();
        out.sort_unstable();
        out
    }

    /// The highest stream sequence number of `partition` in a committed segment, if owned.
    pub fn partition_committed(&self, partition: u32) -> Option<u64> {
        lock(&self.inner.owned)
            .0
            .get(&partition)
            .map(|p| p.committed)
    }

    /// The highest stream sequence number of `partition` appended under the claim of
    /// `epoch`, or `None` when the partition is not this claim's any more.
    pub fn partition_appended(&self, partition: u32, epoch: i64) -> Option<u64> {
        let owned = lock(&self.inner.owned);
        owned
            .0
            .get(&partition)
            .filter(|p| p.epoch == epoch)
            .map(|p| p.appended)
    }

    /// Buffers the spans of stream message `seq` of `partition`, consumed under the claim of
    /// `epoch`. A message at or below what was already appended (a redelivery) is not
    /// buffered again, nor is one of a partition not owned under that claim.
    pub fn append_partition<'a>(
        &self,
        partition: u32,
        epoch: i64,
        seq: u64,
        names: impl IntoIterator<Item = (&'a str, &'a str, SpanKind)>,
        batch: RecordBatch,
    ) -> Appended {
        {
            let mut owned = lock(&self.inner.owned);
            match owned.0.get_mut(&partition) {
                Some(p) if p.epoch != epoch => return Appended::NotOwned,
                None => return Appended::NotOwned,
                Some(p) if seq <= p.appended => {
                    let c = &self.inner.counters.replayed_appends_skipped;
                    c.fetch_add(1, Ordering::Relaxed);
                    return Appended::Again;
                }
                Some(p) => p.appended = seq,
            }
        }
        if batch.num_rows() == 0 {
            return Appended::New;
        }
        lock(&self.inner.names).observe(names, meshtrace_model::time::now_unix_nanos());
        self.write_view().batches.push(Buffered {
            seq,
            partition: Some(partition),
            batch,
            at: Instant::now(),
            flushing: false,
        });
        Appended::New
    }

    /// The checkpoint each partition in `taken` moves to, with the epoch it is owned under.
    pub(crate) fn partition_marks(
        &self,
        taken: &[Taken],
    ) -> Result<Vec<PartitionMark>, StorageError> {
        let mut highest: HashMap<u32, u64> = HashMap::new();
        for t in taken {
            if let Some(p) = t.partition {
                let e = highest.entry(p).or_default();
                *e = (*e).max(t.seq);
            }
        }
        let owned = lock(&self.inner.owned);
        let mut marks = Vec::with_capacity(highest.len());
        for (partition, seq) in highest {
            let Some(state) = owned.0.get(&partition) else {
                return Err(StorageError::Fenced { partition });
            };
            marks.push(PartitionMark {
                partition,
                epoch: state.epoch,
                seq,
            });
        }
        marks.sort_by_key(|m| m.partition);
        Ok(marks)
    }

    /// Records a commit's partition checkpoints.
    pub(crate) fn committed(&self, marks: &[PartitionMark]) {
        let mut owned = lock(&self.inner.owned);
        for m in marks {
            if let Some(p) = owned.0.get_mut(&m.partition) {
                if p.epoch == m.epoch {
                    p.committed = p.committed.max(m.seq);
                }
            }
        }
    }

    /// Re-reads the catalog's segment list (segments peers committed, and those deleted by
    /// retention anywhere) and its names; returns how many segments were new. Partitions
    /// another node claimed since are dropped first: the segments it committed for them would
    /// otherwise show their spans twice here, beside the rows still buffered.
    pub async fn refresh(&self) -> Result<usize, StorageError> {
        let _serial = self.inner.flush_lock.lock().await;
        let epochs = self.inner.catalog.partition_epochs().await?;
        for (partition, epoch) in epochs {
            let mine = lock(&self.inner.owned).0.get(&partition).map(|p| p.epoch);
            if mine.is_some_and(|e| e != epoch) {
                self.forget_partition(partition);
                self.write_view().drop_partition(partition);
                tracing::warn!(
                    partition,
                    "partition claimed by another node; its buffered rows dropped"
                );
            }
        }
        let listed = self.inner.catalog.segments().await?;
        let names = self.inner.catalog.names().await?;
        let mut view = self.write_view();
        let known: HashMap<i64, Arc<crate::SegmentInfo>> =
            view.segments.iter().map(|s| (s.id, s.clone())).collect();
        let listed_ids: HashSet<i64> = listed.iter().map(|s| s.id).collect();
        let new = listed.iter().filter(|s| !known.contains_key(&s.id)).count();
        for gone in view.segments.iter().filter(|s| !listed_ids.contains(&s.id)) {
            self.inner.reader.forget(&gone.path);
        }
        view.segments = listed
            .into_iter()
            .map(|s| known.get(&s.id).cloned().unwrap_or_else(|| Arc::new(s)))
            .collect();
        drop(view);
        lock(&self.inner.names).absorb(names, meshtrace_model::time::now_unix_nanos());
        Ok(new)
    }

    /// Whether this node compacts the segment at `path`: in cluster mode, those it wrote
    /// ([`crate::layout::node_of`] names it); every one otherwise.
    pub(crate) fn compacts(&self, path: &str) -> bool {
        match &self.inner.cfg.cluster_node {
            Some(node) => node_of(path) == Some(node.as_str()),
            None => true,
        }
    }

    /// In cluster mode, marks `written`, a file about to be written, for deletion should its
    /// commit never come, and returns what the commit does to the marks (see the module docs):
    /// the file's mark goes, a merge's `inputs` (paths and span segment ids) are marked, due
    /// `grace` after the commit. `None` in standalone mode, which deletes merged files itself.
    pub(crate) async fn prepare_retirement(
        &self,
        written: &str,
        inputs: Vec<(String, Option<i64>)>,
        grace: Duration,
    ) -> Result<Option<Retirement>, StorageError> {
        if self.inner.cfg.cluster_node.is_none() {
            return Ok(None);
        }
        let due = due_in(UNCOMMITTED_DUE);
        self.inner.catalog.doom(written, None, due).await?;
        Ok(Some(Retirement {
            written: written.to_string(),
            inputs,
            grace,
        }))
    }

    /// Deletes the files whose `doomed_files` marks are due (see the module docs), with the
    /// rollup rows of the span segments among them. Each mark is taken out of the catalog
    /// first, so a commit that still counts on it rolls back instead; a file a segment row
    /// points at is kept. Returns how many files were deleted.
    pub async fn sweep_doomed(&self) -> Result<usize, StorageError> {
        let now = meshtrace_model::time::now_unix_nanos();
        let due = self.inner.catalog.due_doomed(now, 1_000).await?;
        let mut deleted = 0;
        for (path, segment_id) in due {
            if !self.inner.catalog.take_doomed(&path, now).await? {
                continue; // taken by another node's sweep, or moved by a commit
            }
            if self.inner.catalog.path_registered(&path).await? {
                continue;
            }
            self.inner.reader.forget(&path);
            match self
                .inner
                .store
                .delete(&ObjectPath::from(path.as_str()))
                .await
            {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    // Marked again, for a later pass; the others go on.
                    tracing::warn!(%path, error = %e, "could not delete a doomed file");
                    let retry = due_in(UNCOMMITTED_DUE);
                    self.inner.catalog.doom(&path, segment_id, retry).await?;
                    continue;
                }
            }
            if let Some(id) = segment_id {
                self.inner.catalog.delete_rollups(&[id]).await?;
            }
        }
        if deleted > 0 {
            tracing::info!(files = deleted, "doomed files deleted");
        }
        Ok(deleted)
    }
}
