//! The `doomed_files` table: in cluster mode, the files of the shared object store that are to
//! be deleted once their time has come, by whichever node sweeps first
//! ([`crate::Store::sweep_doomed`]). A node cannot tell a peer's file between its `put` and
//! its commit from a leftover, so it never deletes a file without a catalog row on sight;
//! instead, a flush or a compaction marks the file it is about to write ([`Catalog::doom`],
//! due long after any commit ends) and its commit, in the same transaction, unmarks that file
//! (rolling back if the mark is gone) and marks a merge's inputs, due once queries of an older
//! segment list are done ([`Retirement`]). A sweep takes a mark out before it deletes the file,
//! so a commit and a sweep never both succeed on one file. A node that dies anywhere in
//! between leaves marks that the survivors act on.

use sqlx::Row;

use super::{Catalog, SegmentTable};
use crate::error::StorageError;

/// What a commit does to `doomed_files` in cluster mode (see the module docs).
#[derive(Clone, Debug)]
pub struct Retirement {
    /// The file committed, marked before it was written: its mark goes, and the commit rolls
    /// back if a sweep took the mark first (the file may be gone).
    pub written: String,
    /// A merge's inputs, with their span segment ids (whose rollup rows go with them).
    pub inputs: Vec<(String, Option<i64>)>,
    /// How long after the commit the inputs are deleted.
    pub grace: std::time::Duration,
}

/// The time `d` from now, in Unix nanoseconds.
pub(crate) fn due_in(d: std::time::Duration) -> i64 {
    let now = meshtrace_model::time::now_unix_nanos();
    now.saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Marks a file (inserts or moves its mark).
pub(super) const MARK: &str = "INSERT INTO doomed_files (path, segment_id, delete_after_ns) \
     VALUES ($1, $2, $3) ON CONFLICT (path) DO UPDATE SET \
     segment_id = excluded.segment_id, delete_after_ns = excluded.delete_after_ns";

/// Unmarks a file.
pub(super) const UNMARK: &str = "DELETE FROM doomed_files WHERE path = $1";

/// Applies a [`Retirement`] in a transaction, returning a conflict (the caller's transaction
/// rolls back when dropped) if the written file's mark is gone (a macro: each catalog
/// backend's transaction is its own type).
macro_rules! retire {
    ($tx:expr, $retire:expr) => {
        if let Some(r) = $retire {
            let unmarked = sqlx::query($crate::catalog::doomed::UNMARK)
                .bind(&r.written)
                .execute(&mut *$tx)
                .await?;
            if unmarked.rows_affected() != 1 {
                return Err($crate::error::StorageError::Conflict(format!(
                    "{} was swept before its commit",
                    r.written
                )));
            }
            // Due from the commit, not from when the merge began.
            let due = $crate::catalog::doomed::due_in(r.grace);
            for (path, id) in &r.inputs {
                sqlx::query($crate::catalog::doomed::MARK)
                    .bind(path)
                    .bind(*id)
                    .bind(due)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    };
}

impl Catalog {
    /// Marks `path` (with its span segment id, if it is one) for deletion at `after_ns`.
    pub async fn doom(
        &self,
        path: &str,
        segment_id: Option<i64>,
        after_ns: i64,
    ) -> Result<(), StorageError> {
        on_pool!(self, pool => {
            sqlx::query(MARK).bind(path).bind(segment_id).bind(after_ns).execute(pool).await?;
        });
        Ok(())
    }

    /// Up to `limit` marked files due at `now_ns`, with their span segment ids.
    pub async fn due_doomed(
        &self,
        now_ns: i64,
        limit: i64,
    ) -> Result<Vec<(String, Option<i64>)>, StorageError> {
        const SQL: &str = "SELECT path, segment_id FROM doomed_files \
             WHERE delete_after_ns <= $1 ORDER BY delete_after_ns LIMIT $2";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).bind(now_ns).bind(limit).fetch_all(pool).await? {
                out.push((row.try_get("path")?, row.try_get("segment_id")?));
            }
        });
        Ok(out)
    }

    /// Whether a span or derived segment row points at `path` (a marked file with a row is
    /// never deleted).
    pub async fn path_registered(&self, path: &str) -> Result<bool, StorageError> {
        Ok(self.segment_id(SegmentTable::Spans, path).await?.is_some()
            || self
                .segment_id(SegmentTable::Derived, path)
                .await?
                .is_some())
    }

    /// Takes the mark of `path` out if it is due at `now_ns`; false if it is not there (another
    /// node's sweep took it, or a commit moved it).
    pub async fn take_doomed(&self, path: &str, now_ns: i64) -> Result<bool, StorageError> {
        const SQL: &str = "DELETE FROM doomed_files WHERE path = $1 AND delete_after_ns <= $2";
        let taken = on_pool!(self, pool => {
            sqlx::query(SQL).bind(path).bind(now_ns).execute(pool).await?.rows_affected()
        });
        Ok(taken == 1)
    }
}
