//! The catalog rows of the derived tables' segments (`derived_segments`): listing them,
//! committing one, replacing merged ones by their compaction in one transaction, deleting one.

use sqlx::Row;

use super::{Catalog, DerivedSegment, Retirement};
use crate::error::StorageError;

/// The INSERT of one segment row, returning its id.
const INSERT: &str = "INSERT INTO derived_segments (table_name, path, min_start_ns, \
     max_start_ns, row_count, byte_size, created_at_ns) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";

/// [`INSERT`] with a segment's values bound (a macro: each catalog backend is its own type).
macro_rules! insert_row {
    ($seg:expr) => {
        sqlx::query(INSERT)
            .bind(&$seg.table)
            .bind(&$seg.path)
            .bind($seg.min_start_ns)
            .bind($seg.max_start_ns)
            .bind($seg.row_count)
            .bind($seg.byte_size)
            .bind($seg.created_at_ns)
    };
}

impl Catalog {
    /// Every committed segment of the derived tables, oldest first.
    pub async fn derived_segments(&self) -> Result<Vec<DerivedSegment>, StorageError> {
        const SQL: &str = "SELECT id, table_name, path, min_start_ns, max_start_ns, row_count, \
             byte_size, created_at_ns FROM derived_segments ORDER BY id";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                out.push(DerivedSegment {
                    id: row.try_get("id")?,
                    table: row.try_get("table_name")?,
                    path: row.try_get("path")?,
                    min_start_ns: row.try_get("min_start_ns")?,
                    max_start_ns: row.try_get("max_start_ns")?,
                    row_count: row.try_get("row_count")?,
                    byte_size: row.try_get("byte_size")?,
                    created_at_ns: row.try_get("created_at_ns")?,
                });
            }
        });
        Ok(out)
    }

    /// Commits the row of a derived-table segment (in cluster mode with the removal of its
    /// file's doomed mark, see [`Retirement`]); returns its id.
    pub async fn commit_derived_segment(
        &self,
        seg: &DerivedSegment,
        retire: Option<&Retirement>,
    ) -> Result<i64, StorageError> {
        let unknown = |e: sqlx::Error| StorageError::CommitOutcomeUnknown(e.to_string());
        let id: i64 = on_pool!(self, pool => {
            // Only a failing commit may have stored the row.
            let mut tx = pool.begin().await?;
            let row = insert_row!(seg).fetch_one(&mut *tx).await?;
            retire!(tx, retire);
            tx.commit().await.map_err(unknown)?;
            row.try_get("id")?
        });
        Ok(id)
    }

    /// Commits a compacted derived segment in place of the segments it merged, in one
    /// transaction (which carries out `retire` in cluster mode); returns its id.
    pub async fn replace_derived_segments(
        &self,
        seg: &DerivedSegment,
        merged: &[i64],
        retire: Option<&Retirement>,
    ) -> Result<i64, StorageError> {
        const DELETE: &str = "DELETE FROM derived_segments WHERE id = $1";
        let unknown = |e: sqlx::Error| StorageError::CommitOutcomeUnknown(e.to_string());
        let id: i64 = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row = insert_row!(seg).fetch_one(&mut *tx).await?;
            for id in merged {
                let deleted = sqlx::query(DELETE).bind(id).execute(&mut *tx).await?;
                if deleted.rows_affected() != 1 {
                    // Rolled back when `tx` is dropped: the merged rows are not all there.
                    return Err(StorageError::InvalidArgument(format!(
                        "derived segment {id} to be replaced is not in the catalog"
                    )));
                }
            }
            retire!(tx, retire);
            tx.commit().await.map_err(unknown)?;
            row.try_get("id")?
        });
        Ok(id)
    }

    /// Deletes the row of a derived-table segment (the caller deletes the file afterwards).
    pub async fn delete_derived_segment(&self, id: i64) -> Result<(), StorageError> {
        const SQL: &str = "DELETE FROM derived_segments WHERE id = $1";
        on_pool!(self, pool => { sqlx::query(SQL).bind(id).execute(pool).await?; });
        Ok(())
    }
}
