//! The catalog side of span segment compaction ([`crate::compact`]): one transaction that
//! commits the merged segment's row and rollups and deletes exactly the merged segments' rows,
//! and the later deletion of their rollup rows.

use sqlx::Row;

use super::{rollup_row, to_i64, Catalog, Retirement, SegmentInfo, ROLLUP_INSERT};
use crate::error::StorageError;
use crate::rollup::Rollups;

impl Catalog {
    /// Commits `seg` (with its rollups) in place of the segments `old`, in one transaction
    /// that rolls back unless every one of them is still there; returns the new row's id.
    /// The rollup rows of `old` stay (queries of an earlier snapshot read them) until
    /// [`Catalog::delete_rollups`] (or, in cluster mode, until `retire` marks them doomed
    /// is carried out).
    pub async fn replace_segments(
        &self,
        seg: &SegmentInfo,
        rollups: &Rollups,
        old: &[i64],
        retire: Option<&Retirement>,
    ) -> Result<i64, StorageError> {
        const INSERT: &str = "INSERT INTO segments (path, min_start_ns, max_start_ns, row_count, \
             byte_size, wal_seq_min, wal_seq_max, services, created_at_ns) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";
        const DELETE: &str = "DELETE FROM segments WHERE id = $1 AND damaged IS NULL";
        let services = serde_json::to_string(&seg.services).unwrap_or_else(|_| "[]".into());
        let (seq_min, seq_max) = (
            to_i64(seg.wal_seq_min, "wal_seq_min")?,
            to_i64(seg.wal_seq_max, "wal_seq_max")?,
        );
        let id = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for id in old {
                let done = sqlx::query(DELETE).bind(id).execute(&mut *tx).await?;
                if done.rows_affected() != 1 {
                    return Err(StorageError::Conflict(format!("segment {id} is gone")));
                }
            }
            let id: i64 = sqlx::query_scalar(INSERT)
                .bind(&seg.path).bind(seg.min_start_ns).bind(seg.max_start_ns)
                .bind(seg.row_count).bind(seg.byte_size).bind(seq_min).bind(seq_max)
                .bind(&services).bind(seg.created_at_ns)
                .fetch_one(&mut *tx).await?;
            insert_rollups!(tx, id, rollups);
            retire!(tx, retire);
            tx.commit().await.map_err(|e| StorageError::CommitOutcomeUnknown(e.to_string()))?;
            id
        });
        Ok(id)
    }

    /// Deletes every rollup row whose segment has no row: those of segments merged by a
    /// server that stopped within the grace, before it deleted them. For a start, before any
    /// query reads; answers how many.
    pub async fn delete_orphan_rollups(&self) -> Result<u64, StorageError> {
        const SQL: &str = "DELETE FROM span_rollups WHERE NOT EXISTS \
             (SELECT 1 FROM segments WHERE segments.id = span_rollups.segment_id)";
        let deleted = on_pool!(self, pool => sqlx::query(SQL).execute(pool).await?.rows_affected());
        Ok(deleted)
    }

    /// Deletes the rollup rows of segments whose rows are gone (merged ones, once no query
    /// can still read them).
    pub async fn delete_rollups(&self, segments: &[i64]) -> Result<(), StorageError> {
        const SQL: &str = "DELETE FROM span_rollups WHERE segment_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM segments WHERE id = $1)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for id in segments {
                sqlx::query(SQL).bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The rollups committed with the segments `ids`, merged by key: what a segment merging
    /// them counts.
    pub async fn segment_rollups(&self, ids: &[i64]) -> Result<Rollups, StorageError> {
        const SQL: &str = "SELECT service, minute_ns, operation, kind, calls, errors, \
             durations FROM span_rollups WHERE segment_id = $1";
        let mut out = Rollups::default();
        for id in ids {
            on_pool!(self, pool => {
                for r in sqlx::query(SQL).bind(id).fetch_all(pool).await? {
                    let (key, rollup) = rollup_row(&r, r.try_get("service")?)?;
                    out.entry(key).or_default().merge(&rollup);
                }
            });
        }
        Ok(out)
    }
}
