//! Segment files without a catalog row, and temporary files of interrupted writes.
//!
//! A span segment is written (one `put`) before its catalog row is committed, so a crash in
//! between leaves a file the catalog does not know. Such a file is usually a leftover whose
//! spans the write-ahead log still holds and replays; but a catalog restored from an older copy,
//! or a commit whose reply was lost, leaves files whose spans exist nowhere else. So open only
//! lists them ([`find`]); once the log is open the server calls [`crate::Store::settle_orphans`]
//! with the first sequence number the log holds, and each file is judged by the sequence range
//! in its name (`seg-<first>-<last>.parquet`): when committed segments hold all of it (the
//! leftover of a compaction, see [`crate::compact`]) or the log does (the replay writes it
//! again) the file is deleted, otherwise it is moved under `quarantine/` with an ERROR and
//! never deleted. Temporary files of a `put` cut short (`<name>#<n>`, which listing skips) are
//! removed at open ([`remove_temporary_files`]).

use std::collections::HashSet;
use std::path::Path;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::catalog::SegmentInfo;
use crate::error::StorageError;
use crate::layout::SEGMENT_PREFIX;

/// Where settled orphans that may hold the only copy of spans are moved.
pub const QUARANTINE_PREFIX: &str = "quarantine";

/// The segment files under the segment prefix that have no catalog row.
pub(crate) async fn find(
    store: &dyn ObjectStore,
    segments: &[SegmentInfo],
) -> Result<Vec<ObjectPath>, StorageError> {
    let known: HashSet<&str> = segments.iter().map(|s| s.path.as_str()).collect();
    let prefix = ObjectPath::from(SEGMENT_PREFIX);
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    Ok(objects
        .into_iter()
        .map(|o| o.location)
        .filter(|p| !known.contains(p.as_ref()))
        .collect())
}

/// The WAL sequence range a segment file name states (`seg-<first>-<last>[-<n>].parquet`).
pub fn sequence_range(path: &str) -> Option<(u64, u64)> {
    let name = path.rsplit('/').next()?;
    let stem = name.strip_prefix("seg-")?.strip_suffix(".parquet")?;
    let mut parts = stem.split('-');
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((first, last))
}

/// What became of one orphan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The log holds its spans: deleted, the replay writes them again.
    Deleted,
    /// The log does not hold all of them: moved under [`QUARANTINE_PREFIX`].
    Quarantined,
}

/// Whether the sequence ranges `stored` (of committed segments, as `(first, last)`) cover
/// every number from `first` to `last`.
pub(crate) fn covered(first: u64, last: u64, stored: &[(u64, u64)]) -> bool {
    let mut ranges = stored.to_vec();
    ranges.sort_unstable();
    let mut next = first;
    for (a, b) in ranges {
        if a > next {
            break;
        }
        if b >= next {
            if b >= last {
                return true;
            }
            next = b + 1;
        }
    }
    false
}

/// Deletes or quarantines one orphan given the first sequence number the log holds and the
/// sequence ranges of the committed segments.
pub(crate) async fn settle(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    log_first: u64,
    stored: &[(u64, u64)],
) -> Result<Settled, StorageError> {
    let range = sequence_range(path.as_ref());
    if let Some((first, last)) = range.filter(|&(f, l)| covered(f, l, stored)) {
        tracing::warn!(%path, first, last, "removing segment file without catalog row: committed segments hold its spans (a compaction's leftover)");
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => return Ok(Settled::Deleted),
            Err(e) => return Err(e.into()),
        }
    }
    if range.is_some_and(|(first, _)| first >= log_first) {
        tracing::warn!(%path, "removing segment file without catalog row: the log replays it");
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => return Ok(Settled::Deleted),
            Err(e) => return Err(e.into()),
        }
    }
    let aside = quarantine(store, path).await?;
    tracing::error!(
        %path,
        quarantined = %aside,
        sequences = ?range,
        log_first,
        "segment file without catalog row holds spans the log no longer has: quarantined, \
         not deleted (restore the catalog or re-import the file)"
    );
    Ok(Settled::Quarantined)
}

/// Moves `path` to the same path under [`QUARANTINE_PREFIX`] (a file already gone is fine);
/// returns where it went.
pub(crate) async fn quarantine(
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<ObjectPath, StorageError> {
    let aside = ObjectPath::from(format!("{QUARANTINE_PREFIX}/{path}"));
    match store.rename(path, &aside).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(aside),
        Err(e) => Err(e.into()),
    }
}

/// Removes the temporary files of writes cut short (`…parquet#<n>`) under the span and derived
/// segment directories of a local store; returns how many.
pub(crate) fn remove_temporary_files(data_dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut dirs = vec![data_dir.join(SEGMENT_PREFIX), data_dir.join("derived")];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().to_string_lossy().contains('#') {
                tracing::warn!(path = %entry.path().display(), "removing temporary file of an interrupted write");
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_ranges_from_file_names() {
        let p = "spans/date=2026-12-06/hour=21/seg-5-9.parquet";
        assert_eq!(sequence_range(p), Some((5, 9)));
        let renamed = "spans/date=2026-12-06/hour=21/seg-5-9-1765055000.parquet";
        assert_eq!(sequence_range(renamed), Some((5, 9)));
        assert_eq!(sequence_range("spans/x/other.parquet"), None);
    }

    #[test]
    fn ranges_covered_by_committed_segments() {
        let stored = [(11, 20), (1, 5), (6, 10), (30, 40)];
        assert!(covered(1, 20, &stored), "a merge of the first three");
        assert!(covered(6, 10, &stored), "one merged input");
        assert!(covered(32, 35, &stored));
        assert!(!covered(15, 31, &stored), "21 to 29 are stored nowhere");
        assert!(!covered(41, 50, &stored), "a flush not committed");
        assert!(!covered(1, 5, &[]));
    }
}
