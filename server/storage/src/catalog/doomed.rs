//! The `doomed_files` table: in cluster mode, the files of the shared object store that are to
//! be deleted once their time has come, by whichever node sweeps first
//! ([`crate::Store::sweep_doomed`]). A node cannot tell a peer's file between its `put` and
//! its commit from a leftover, so it never deletes a file without a catalog row on sight;
//! instead, a compaction marks the file it is about to write ([`Catalog::doom`], due long
//! after any merge ends) and its commit, in the same transaction, unmarks that file and
//! marks the merged inputs, due once queries of an older segment list are done
//! ([`Retirement`]). A node that dies anywhere in between leaves marks that the survivors
//! act on.

use sqlx::Row;

use super::{Catalog, SegmentTable};
use crate::error::StorageError;

/// What a merge's commit does to `doomed_files` in cluster mode (see the module docs).
#[derive(Clone, Debug)]
pub struct Retirement {
    /// The merged file, marked before it was written: it stays.
    pub written: String,
    /// The merged inputs' paths, with their span segment ids (whose rollup rows go with them).
    pub inputs: Vec<(String, Option<i64>)>,
    /// When the inputs are deleted.
    pub after_ns: i64,
}

/// Marks a file (inserts or moves its mark).
pub(super) const MARK: &str = "INSERT INTO doomed_files (path, segment_id, delete_after_ns) \
     VALUES ($1, $2, $3) ON CONFLICT (path) DO UPDATE SET \
     segment_id = excluded.segment_id, delete_after_ns = excluded.delete_after_ns";

/// Unmarks a file.
pub(super) const UNMARK: &str = "DELETE FROM doomed_files WHERE path = $1";

/// Applies a [`Retirement`] in a transaction (a macro: each catalog backend's transaction is
/// its own type).
macro_rules! retire {
    ($tx:expr, $retire:expr) => {
        if let Some(r) = $retire {
            sqlx::query($crate::catalog::doomed::UNMARK)
                .bind(&r.written)
                .execute(&mut *$tx)
                .await?;
            for (path, id) in &r.inputs {
                sqlx::query($crate::catalog::doomed::MARK)
                    .bind(path)
                    .bind(*id)
                    .bind(r.after_ns)
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

    /// Unmarks `path` once its file is deleted, and deletes the rollup rows of its span
    /// segment `segment_id` (unless a segment row has that id).
    pub async fn forget_doomed(
        &self,
        path: &str,
        segment_id: Option<i64>,
    ) -> Result<(), StorageError> {
        const ROLLUPS: &str = "DELETE FROM span_rollups WHERE segment_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM segments WHERE id = $1)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(id) = segment_id {
                sqlx::query(ROLLUPS).bind(id).execute(&mut *tx).await?;
            }
            sqlx::query(UNMARK).bind(path).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
