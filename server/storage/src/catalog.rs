//! The segment catalog in SQLite or PostgreSQL (sqlx): which Parquet segments are committed
//! (span segments, and the segments of the derived provenance tables with their table name),
//! the service and operation names seen, the WAL checkpoint and the trace-class rules.
//!
//! A segment exists for readers only once its row is committed here; the Parquet file is
//! written first (see [`crate::layout`] for the protocol). The schema lives in
//! `migrations/{sqlite,postgres}` at the workspace root and is applied at open. Every value is
//! bound as a parameter; the SQL text is the same for both backends (`$n` placeholders work in
//! SQLite too), and `on_pool!` expands each statement once per backend.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::error::StorageError;

/// The `meta` key holding the WAL checkpoint.
const CHECKPOINT_KEY: &str = "checkpoint";

/// One committed segment, as its catalog row describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: i64,
    /// The object path relative to the store root.
    pub path: String,
    pub min_start_ns: i64,
    pub max_start_ns: i64,
    pub row_count: i64,
    pub byte_size: i64,
    pub wal_seq_min: u64,
    pub wal_seq_max: u64,
    /// The distinct service names in the segment, sorted.
    pub services: Vec<String>,
    pub created_at_ns: i64,
}

/// One committed segment of a derived table (see [`crate::derived`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedSegment {
    pub id: i64,
    /// The derived table the segment belongs to, e.g. `traces`.
    pub table: String,
    /// The object path relative to the store root.
    pub path: String,
    pub min_start_ns: i64,
    pub max_start_ns: i64,
    pub row_count: i64,
    pub byte_size: i64,
    pub created_at_ns: i64,
}

/// The names to persist with a segment: services and (service, operation, kind) triples.
#[derive(Clone, Debug, Default)]
pub(crate) struct NewNames {
    pub services: Vec<String>,
    pub operations: Vec<(String, String, String)>,
}

/// The catalog backend.
#[derive(Clone, Debug)]
pub(crate) enum Catalog {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool the catalog holds.
macro_rules! on_pool {
    ($cat:expr, $pool:ident => $body:expr) => {
        match $cat {
            Catalog::Sqlite($pool) => $body,
            Catalog::Postgres($pool) => $body,
        }
    };
}

fn to_i64(v: u64, what: &'static str) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::BadCatalogValue {
        what,
        value: v.to_string(),
    })
}

fn to_u64(v: i64, what: &'static str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::BadCatalogValue {
        what,
        value: v.to_string(),
    })
}

impl Catalog {
    /// Connects (SQLite at `data_dir/catalog.db` when `url` is `None`) and runs the migrations.
    pub async fn connect(data_dir: &Path, url: Option<&str>) -> Result<Catalog, StorageError> {
        let catalog = match url {
            None => {
                let opts = SqliteConnectOptions::new().filename(data_dir.join("catalog.db"));
                Catalog::Sqlite(sqlite_pool(opts).await?)
            }
            Some(u) if u.starts_with("sqlite:") => {
                Catalog::Sqlite(sqlite_pool(SqliteConnectOptions::from_str(u)?).await?)
            }
            Some(u) if u.starts_with("postgres:") || u.starts_with("postgresql:") => {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(u)
                    .await?;
                Catalog::Postgres(pool)
            }
            Some(u) => {
                let scheme = u.split(':').next().unwrap_or_default();
                return Err(StorageError::Config(format!(
                    "catalog url scheme {scheme:?} is not supported (use sqlite:// or postgres://)"
                )));
            }
        };
        match &catalog {
            Catalog::Sqlite(p) => sqlx::migrate!("../../migrations/sqlite").run(p).await?,
            Catalog::Postgres(p) => sqlx::migrate!("../../migrations/postgres").run(p).await?,
        }
        Ok(catalog)
    }

    /// The name of the backend, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Catalog::Sqlite(_) => "sqlite",
            Catalog::Postgres(_) => "postgres",
        }
    }

    /// Every committed segment, oldest first.
    pub async fn segments(&self) -> Result<Vec<SegmentInfo>, StorageError> {
        const SQL: &str = "SELECT id, path, min_start_ns, max_start_ns, row_count, byte_size, \
             wal_seq_min, wal_seq_max, services, created_at_ns FROM segments ORDER BY id";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                let services: String = row.try_get("services")?;
                out.push(SegmentInfo {
                    id: row.try_get("id")?,
                    path: row.try_get("path")?,
                    min_start_ns: row.try_get("min_start_ns")?,
                    max_start_ns: row.try_get("max_start_ns")?,
                    row_count: row.try_get("row_count")?,
                    byte_size: row.try_get("byte_size")?,
                    wal_seq_min: to_u64(row.try_get("wal_seq_min")?, "wal_seq_min")?,
                    wal_seq_max: to_u64(row.try_get("wal_seq_max")?, "wal_seq_max")?,
                    services: serde_json::from_str(&services).map_err(|_| {
                        StorageError::BadCatalogValue { what: "segments.services", value: services.clone() }
                    })?,
                    created_at_ns: row.try_get("created_at_ns")?,
                });
            }
        });
        Ok(out)
    }

    /// All service names and (service, operation, kind) triples.
    pub async fn names(&self) -> Result<NewNames, StorageError> {
        let mut names = NewNames::default();
        on_pool!(self, pool => {
            for row in sqlx::query("SELECT name FROM services").fetch_all(pool).await? {
                names.services.push(row.try_get("name")?);
            }
            let ops = sqlx::query("SELECT service, name, kind FROM operations").fetch_all(pool).await?;
            for row in ops {
                names.operations.push((row.try_get("service")?, row.try_get("name")?, row.try_get("kind")?));
            }
        });
        Ok(names)
    }

    /// The persisted WAL checkpoint (0 when none was ever committed).
    pub async fn checkpoint(&self) -> Result<u64, StorageError> {
        const SQL: &str = "SELECT value FROM meta WHERE key = $1";
        let value: Option<String> = on_pool!(self, pool => {
            sqlx::query(SQL).bind(CHECKPOINT_KEY).fetch_optional(pool).await?
                .map(|r| r.try_get("value")).transpose()?
        });
        match value {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| StorageError::BadCatalogValue {
                what: "meta.checkpoint",
                value: v,
            }),
        }
    }

    /// Commits a segment row, its names and the new checkpoint in one transaction; returns
    /// the segment id.
    pub async fn commit_segment(
        &self,
        seg: &SegmentInfo,
        names: &NewNames,
        checkpoint: u64,
    ) -> Result<i64, StorageError> {
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
            tx.commit().await?;
            row.try_get("id")?
        });
        Ok(id)
    }

    /// Deletes a segment row (its file is deleted by the caller afterwards).
    pub async fn delete_segment(&self, id: i64) -> Result<(), StorageError> {
        const SQL: &str = "DELETE FROM segments WHERE id = $1";
        on_pool!(self, pool => { sqlx::query(SQL).bind(id).execute(pool).await?; });
        Ok(())
    }

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

    /// Commits the row of a derived-table segment; returns its id.
    pub async fn commit_derived_segment(&self, seg: &DerivedSegment) -> Result<i64, StorageError> {
        const SQL: &str = "INSERT INTO derived_segments (table_name, path, min_start_ns, \
             max_start_ns, row_count, byte_size, created_at_ns) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";
        let id: i64 = on_pool!(self, pool => {
            let row = sqlx::query(SQL)
                .bind(&seg.table).bind(&seg.path).bind(seg.min_start_ns).bind(seg.max_start_ns)
                .bind(seg.row_count).bind(seg.byte_size).bind(seg.created_at_ns)
                .fetch_one(pool).await?;
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

    /// The stored trace-class rules (JSON documents), in order.
    pub async fn class_rules(&self) -> Result<Vec<String>, StorageError> {
        const SQL: &str = "SELECT rule FROM class_rules ORDER BY position";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                out.push(row.try_get("rule")?);
            }
        });
        Ok(out)
    }

    /// Replaces every trace-class rule, in one transaction.
    pub async fn replace_class_rules(&self, rules: &[String]) -> Result<(), StorageError> {
        const DELETE: &str = "DELETE FROM class_rules";
        const INSERT: &str = "INSERT INTO class_rules (position, rule) VALUES ($1, $2)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(DELETE).execute(&mut *tx).await?;
            for (i, rule) in rules.iter().enumerate() {
                sqlx::query(INSERT).bind(i as i64).bind(rule).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

async fn sqlite_pool(opts: SqliteConnectOptions) -> Result<SqlitePool, StorageError> {
    let opts = opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?)
}
