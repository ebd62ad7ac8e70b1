//! The commit of a flushed span segment ([`Catalog::commit_segment`]): its row, names,
//! rollups, the write-ahead log checkpoint and, in cluster mode, its partitions' checkpoints
//! and the removal of its file's doomed mark, in one transaction.

use sqlx::Row;

use super::{
    to_i64, Catalog, NewNames, PartitionMark, Retirement, SegmentInfo, CHECKPOINT_KEY,
    ROLLUP_INSERT,
};
use crate::error::StorageError;
use crate::rollup::Rollups;

/// What a flush's commit carries besides its segment row and rollups
/// ([`Catalog::commit_segment`]).
#[derive(Clone, Copy)]
pub(crate) struct FlushCommit<'a> {
    pub names: &'a NewNames,
    /// The write-ahead log's checkpoint after this segment.
    pub checkpoint: u64,
    /// Cluster mode: the checkpoints of the partitions in the segment.
    pub marks: &'a [PartitionMark],
    /// Damaged segments whose spans the segment holds again.
    pub replaces: &'a [i64],
    /// Cluster mode: the file's doomed mark, which the commit takes out.
    pub retire: Option<&'a Retirement>,
}

impl Catalog {
    /// Commits a segment row, its names, its rollups, the new checkpoint and (cluster mode)
    /// its partitions' checkpoints and the removal of its file's doomed mark in one
    /// transaction, and deletes the rows of the damaged segments in `replaces` (the new
    /// segment holds their spans again); returns its id.
    pub async fn commit_segment(
        &self,
        seg: &SegmentInfo,
        rollups: &Rollups,
        flush: &FlushCommit<'_>,
    ) -> Result<i64, StorageError> {
        let FlushCommit {
            names,
            checkpoint,
            marks,
            replaces,
            retire,
        } = *flush;
        const REPLACED_ROLLUPS: &str = "DELETE FROM span_rollups WHERE segment_id = $1";
        const REPLACED: &str = "DELETE FROM segments WHERE id = $1 AND damaged IS NOT NULL";
        const MARK: &str = "UPDATE cluster_partitions SET checkpoint = \
             CASE WHEN checkpoint > $1 THEN checkpoint ELSE $1 END \
             WHERE partition_id = $2 AND epoch = $3";
        const INSERT: &str = "INSERT INTO segments (path, min_start_ns, max_start_ns, row_count, \
             byte_size, wal_seq_min, wal_seq_max, services, created_at_ns) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";
        const SERVICE: &str = "INSERT INTO services (name) VALUES ($1) ON CONFLICT DO NOTHING";
        const OPERATION: &str = "INSERT INTO operations (service, name, kind) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING";
        const META: &str = "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        let services = serde_json::to_string(&seg.services).unwrap_or_else(|_| "[]".into());
        let (seq_min, seq_max) = (
            to_i64(seg.wal_seq_min, "wal_seq_min")?,
            to_i64(seg.wal_seq_max, "wal_seq_max")?,
        );
        let id: i64 = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // First: the new segment may take a replaced one's path (same records, same start).
            for old in replaces {
                sqlx::query(REPLACED_ROLLUPS).bind(old).execute(&mut *tx).await?;
                sqlx::query(REPLACED).bind(old).execute(&mut *tx).await?;
            }
            let row = sqlx::query(INSERT)
                .bind(&seg.path).bind(seg.min_start_ns).bind(seg.max_start_ns)
                .bind(seg.row_count).bind(seg.byte_size).bind(seq_min).bind(seq_max)
                .bind(&services).bind(seg.created_at_ns)
                .fetch_one(&mut *tx).await?;
            for s in &names.services {
                sqlx::query(SERVICE).bind(s).execute(&mut *tx).await?;
            }
            for (svc, op, kind) in &names.operations {
                sqlx::query(OPERATION).bind(svc).bind(op).bind(kind).execute(&mut *tx).await?;
            }
            sqlx::query(META).bind(CHECKPOINT_KEY).bind(checkpoint.to_string())
                .execute(&mut *tx).await?;
            let id: i64 = row.try_get("id")?;
            for m in marks {
                let done = sqlx::query(MARK).bind(to_i64(m.seq, "checkpoint")?)
                    .bind(i64::from(m.partition)).bind(m.epoch)
                    .execute(&mut *tx).await?;
                if done.rows_affected() != 1 {
                    return Err(StorageError::Fenced { partition: m.partition });
                }
            }
            insert_rollups!(tx, id, rollups);
            retire!(tx, retire);
            tx.commit().await.map_err(|e| StorageError::CommitOutcomeUnknown(e.to_string()))?;
            id
        });
        Ok(id)
    }
}
