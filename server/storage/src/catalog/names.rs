//! The name tables (`services`, `operations`) kept to what stored spans still hold: the
//! deletion of names no span was appended with since the retention (see
//! [`crate::Store::trim_names`]).

use super::{Catalog, NewNames};
use crate::error::StorageError;

impl Catalog {
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
