//! The name tables (`services`, `operations`) kept to what stored spans still hold: the
//! series the rollups of committed segments count, read after retention deleted segments, and
//! the deletion of names none of them counts any more (see [`crate::Store::trim_names`]).

use sqlx::Row;

use super::{Catalog, NewNames};
use crate::error::StorageError;

impl Catalog {
    /// Every (service, operation, kind) series the rollups of committed segments count.
    pub async fn rolled_up_series(&self) -> Result<Vec<(String, String, String)>, StorageError> {
        const SQL: &str = "SELECT DISTINCT service, operation, kind FROM span_rollups";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                out.push((row.try_get("service")?, row.try_get("operation")?, row.try_get("kind")?));
            }
        });
        Ok(out)
    }

    /// Deletes these services and operations from the name tables, in one transaction.
    pub async fn delete_names(&self, names: &NewNames) -> Result<(), StorageError> {
        const SERVICE: &str = "DELETE FROM services WHERE name = $1";
        const OPERATION: &str =
            "DELETE FROM operations WHERE service = $1 AND name = $2 AND kind = $3";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for s in &names.services {
                sqlx::query(SERVICE).bind(s).execute(&mut *tx).await?;
            }
            for (service, name, kind) in &names.operations {
                sqlx::query(OPERATION).bind(service).bind(name).bind(kind).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
