//! Segments checked at open: a Parquet file that is missing, of another size than its catalog
//! row says, or whose footer cannot be read never breaks queries that do not need it, and is
//! never dropped without a word.
//!
//! [`Store::check_segments`] runs once at start-up, after the write-ahead log is open (it needs
//! the first sequence number the log holds). Every damaged segment is moved under
//! `quarantine/` (if its file is still there), its catalog row is marked `damaged` with the
//! reason, and it leaves the list queries read. Then:
//!
//! - **The log still holds every one of its sequence numbers**: it is *rebuilt*. The caller
//!   replays those records although they are at or below the checkpoint ([`Store::append`]
//!   takes them while the rebuild is pending); a flush writes them, and only them, to a new
//!   segment (so segment sequence ranges never interleave) and deletes the damaged row in the
//!   same transaction. A crash before that simply finds the row marked
//!   damaged again at the next start, with the log still holding its records (the log is only
//!   truncated after a flush commits).
//! - **It does not**: the spans are lost unless the file or the catalog is restored. The
//!   segment stays in the catalog marked damaged, reported with an ERROR at every start and as
//!   `meshtrace_segments_damaged`, and queries whose time range overlaps it say they skipped it
//!   ([`Store::damaged_segments`]): the Jaeger API with an entry in `errors`, SQL with
//!   `"partial": true`. Retention deletes its row like any other segment's.

use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::AsyncFileReader;

use crate::catalog::{DamagedSegment, DerivedSegment, SegmentInfo};
use crate::error::StorageError;
use crate::object_reader::ObjectReader;
use crate::orphans::quarantine;
use crate::pending::Rebuild;
use crate::store::{lock, Store};

/// Segment files checked at once at open.
const CHECKS_IN_FLIGHT: usize = 8;

impl Store {
    /// Checks every segment file against its catalog row (see the module docs); `log_holds`
    /// are the sequence numbers the write-ahead log holds, sorted (a segment is rebuilt only
    /// if every one of its sequence numbers is there). Returns how many segments were
    /// found damaged now or before, and whether each is being rebuilt.
    pub async fn check_segments(&self, log_holds: &[u64]) -> Result<(usize, usize), StorageError> {
        // Past retention: a file already deleted by it is not damage (its row goes next).
        let cutoff = self.retention_cutoff_ns();
        let segments: Vec<_> = self.read_view().segments.clone();
        let segments = segments.into_iter().filter(|s| s.max_start_ns >= cutoff);
        let store = self.inner.store.clone();
        let found: Vec<(Arc<SegmentInfo>, String)> = futures::stream::iter(segments)
            .map(|seg| {
                let store = store.clone();
                let checked = check(store, seg.path.clone(), seg.byte_size);
                async move { checked.await.err().map(|why| (seg, why)) }
            })
            .buffer_unordered(CHECKS_IN_FLIGHT)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        for (seg, why) in &found {
            self.set_aside(seg, why).await?;
        }
        let damaged = self.inner.catalog.damaged_segments().await?;
        let (mut rebuilt, mut lost) = (0, 0);
        for (seg, why) in damaged {
            if seg.wal_seq_min > 0 && holds_all(log_holds, seg.wal_seq_min, seg.wal_seq_max) {
                tracing::warn!(path = %seg.path, reason = %why, seq_min = seg.wal_seq_min,
                    seq_max = seg.wal_seq_max, "damaged segment: rebuilding it from the write-ahead log");
                lock(&self.inner.rebuild).push(Rebuild {
                    id: seg.id,
                    seq_min: seg.wal_seq_min,
                    seq_max: seg.wal_seq_max,
                });
                rebuilt += 1;
            } else {
                tracing::error!(path = %seg.path, reason = %why, spans = seg.row_count,
                    min_start_ns = seg.min_start_ns, max_start_ns = seg.max_start_ns,
                    seq_min = seg.wal_seq_min, seq_max = seg.wal_seq_max,
                    "damaged segment whose spans the write-ahead log no longer holds: they are \
                     missing from answers (what was left of the file is under quarantine/)");
                self.write_view()
                    .damaged
                    .push(Arc::new(DamagedSegment::of(&seg, why)));
                lost += 1;
            }
        }
        Ok((rebuilt, lost))
    }

    /// Moves a damaged segment's file aside, marks its row and drops it from the read list.
    async fn set_aside(&self, seg: &SegmentInfo, why: &str) -> Result<(), StorageError> {
        let path = ObjectPath::from(seg.path.as_str());
        let aside = quarantine(self.inner.store.as_ref(), &path).await?;
        self.inner.catalog.mark_damaged(seg.id, why).await?;
        self.write_view().segments.retain(|s| s.id != seg.id);
        tracing::error!(path = %seg.path, reason = %why, quarantined = %aside, "segment file damaged");
        Ok(())
    }

    /// Whether a record at or below the checkpoint belongs to a segment being rebuilt (the
    /// caller replays it, see the module docs).
    pub fn rebuilding(&self, seq: u64) -> bool {
        let rebuild = lock(&self.inner.rebuild);
        rebuild
            .iter()
            .any(|r| (r.seq_min..=r.seq_max).contains(&seq))
    }

    /// The next damaged segment to write again from its replayed records.
    pub(crate) fn next_rebuild(&self) -> Option<Rebuild> {
        lock(&self.inner.rebuild).first().copied()
    }

    /// How far the write-ahead log may be truncated after a flush that reached `checkpoint`:
    /// not past the records of damaged segments still waiting to be rebuilt.
    pub(crate) fn truncatable(&self, checkpoint: u64) -> u64 {
        let rebuild = lock(&self.inner.rebuild);
        match rebuild.iter().map(|r| r.seq_min).min() {
            Some(first) => checkpoint.min(first.saturating_sub(1)),
            None => checkpoint,
        }
    }

    /// A rebuild whose records did not come back (none were buffered): it stays damaged.
    pub(crate) fn rebuild_failed(&self, id: i64) {
        let mut rebuild = lock(&self.inner.rebuild);
        rebuild.retain(|r| r.id != id);
        tracing::error!(segment_id = id, "a damaged segment's records did not come back from the write-ahead log; it stays reported as damaged");
    }

    /// After a commit that replaced `ids`: they are rebuilt.
    pub(crate) fn rebuilt(&self, ids: &[i64]) {
        if !ids.is_empty() {
            lock(&self.inner.rebuild).retain(|r| !ids.contains(&r.id));
            let c = &self.inner.counters.segments_rebuilt;
            c.fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                segments = ids.len(),
                "damaged segments rebuilt from the write-ahead log"
            );
        }
    }

    /// The damaged segments whose spans are missing from answers (see the module docs).
    pub fn damaged_segments(&self) -> Vec<DamagedSegment> {
        let view = self.read_view();
        view.damaged.iter().map(|d| (**d).clone()).collect()
    }
}

/// Whether the sorted sequence numbers `held` include every one from `min` to `max`.
fn holds_all(held: &[u64], min: u64, max: u64) -> bool {
    let from = held.partition_point(|s| *s < min);
    let to = held.partition_point(|s| *s <= max);
    max >= min && (to - from) as u64 == max - min + 1
}

/// The derived-table segments (`segments`) whose files are damaged, moved under
/// `quarantine/`: their rows can be derived again from the spans, so the caller drops them
/// (traces in their time range lose their derived rows unless the start-up repair covers
/// them). Returns the damaged ones.
pub(crate) async fn damaged_derived(
    store: &Arc<dyn ObjectStore>,
    segments: &[DerivedSegment],
) -> Result<Vec<DerivedSegment>, StorageError> {
    let mut damaged = Vec::new();
    for seg in segments {
        let Err(why) = check(store.clone(), seg.path.clone(), seg.byte_size).await else {
            continue;
        };
        quarantine(store.as_ref(), &ObjectPath::from(seg.path.as_str())).await?;
        tracing::error!(path = %seg.path, table = %seg.table, reason = %why,
            min_start_ns = seg.min_start_ns, max_start_ns = seg.max_start_ns,
            "derived segment file damaged: moved to quarantine/ and dropped (its rows are \
             derived again only for traces the start-up repair covers)");
        damaged.push(seg.clone());
    }
    Ok(damaged)
}

/// Why a segment file cannot be read, if it cannot: missing, another size than the catalog's
/// `byte_size`, no readable footer.
async fn check(store: Arc<dyn ObjectStore>, path: String, byte_size: i64) -> Result<(), String> {
    let object = ObjectPath::from(path.as_str());
    let meta = match store.head(&object).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => return Err("the file is missing".into()),
        Err(e) => {
            // Permissions, too many open files: not damage; queries will say what is wrong.
            tracing::warn!(%path, error = %e, "could not check a segment file");
            return Ok(());
        }
    };
    if meta.size != byte_size as u64 {
        return Err(format!(
            "the file has {} bytes, the catalog says {byte_size}",
            meta.size
        ));
    }
    let mut reader = ObjectReader::new(store, object, meta.size);
    match reader.get_metadata(None).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the footer cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::holds_all;

    #[test]
    fn a_segment_is_rebuilt_only_when_the_log_holds_every_one_of_its_records() {
        assert!(holds_all(&[3, 4, 5, 6], 3, 4));
        assert!(holds_all(&[1, 2, 3], 2, 2));
        // A record lost to damage in the middle, the start missing, nothing held.
        assert!(!holds_all(&[3, 5, 6], 3, 5));
        assert!(!holds_all(&[4, 5, 6], 3, 4));
        assert!(!holds_all(&[], 1, 1));
    }
}
