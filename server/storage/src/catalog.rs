//! The segment catalog in SQLite or PostgreSQL (sqlx): which Parquet segments are committed
//! (span segments with their per-minute rollups, see [`crate::rollup`], and the segments of
//! the derived provenance tables with their table name), the service and operation names seen, the WAL checkpoint, the trace-class rules, and the
//! latency objectives, priority overrides, published priority sets and proxies of budgets.
//!
//! A segment exists for readers only once its row is committed here; the Parquet file is
//! written first (see [`crate::layout`] for the protocol). The schema lives in
//! `migrations/{sqlite,postgres}` at the workspace root and is applied at open. Every value is
//! bound as a parameter; the SQL text is the same for both backends (`$n` placeholders work in
//! SQLite too), and `on_pool!` expands each statement once per backend.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use meshtrace_model::sketch::Sketch;
use meshtrace_model::SpanKind;
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::error::StorageError;
use crate::rollup::{Rollup, RollupFilter, RollupKey};

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

/// A segment whose spans cannot be read and are not held anywhere else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedSegment {
    /// Its catalog row.
    #[serde(skip)]
    pub(crate) id: i64,
    /// Its path, as the catalog has it (the file, if it was found, is under `quarantine/`).
    pub path: String,
    pub min_start_ns: i64,
    pub max_start_ns: i64,
    /// Spans it held.
    pub rows: i64,
    /// Why it cannot be read.
    pub reason: String,
}

impl DamagedSegment {
    pub(crate) fn of(info: &SegmentInfo, reason: String) -> DamagedSegment {
        DamagedSegment {
            id: info.id,
            path: info.path.clone(),
            min_start_ns: info.min_start_ns,
            max_start_ns: info.max_start_ns,
            rows: info.row_count,
            reason,
        }
    }

    /// Whether spans started in `[start_ns, end_ns]` could have been in it.
    pub fn overlaps(&self, start_ns: i64, end_ns: i64) -> bool {
        self.min_start_ns <= end_ns && self.max_start_ns >= start_ns
    }
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

/// A published priority assignment set of one service, as the catalog keeps it: the current
/// one per service (`priority_sets`) and every one in `priority_history` with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPrioritySet {
    pub service: String,
    pub version: u64,
    pub generated_at_ns: i64,
    /// Why this version (which classes changed and why).
    pub reason: String,
    /// The set as JSON.
    pub body: String,
}

/// A proxy that polled or watched its service's priorities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredProxy {
    pub service: String,
    pub node: String,
    /// `http` (long poll) or `grpc` (WatchPriorities).
    pub via: String,
    pub last_seen_ns: i64,
    /// The version the proxy holds.
    pub version: u64,
}

/// Cluster mode: how far a segment commit moves one partition's checkpoint, under the epoch
/// the committing node claimed it with. The commit fails as [`StorageError::Fenced`] when the
/// partition was claimed again since (by a node that took it over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionMark {
    pub partition: u32,
    pub epoch: i64,
    /// The highest stream sequence number of the partition in the segment.
    pub seq: u64,
}

/// The names to persist with a segment: services and (service, operation, kind) triples.
#[derive(Clone, Debug, Default)]
pub(crate) struct NewNames {
    pub services: Vec<String>,
    pub operations: Vec<(String, String, String)>,
}

/// Which segment list a lookup reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentTable {
    Spans,
    Derived,
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

/// The INSERT of one rollup row.
const ROLLUP_INSERT: &str = "INSERT INTO span_rollups (segment_id, minute_ns, service, \
     operation, kind, calls, errors, durations) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Inserts a segment's rollup rows in a transaction (a macro: each catalog backend's
/// transaction is its own type).
macro_rules! insert_rollups {
    ($tx:expr, $id:expr, $rollups:expr) => {
        for (k, r) in $rollups {
            sqlx::query(ROLLUP_INSERT)
                .bind($id)
                .bind(k.minute_ns)
                .bind(&k.service)
                .bind(&k.operation)
                .bind(k.kind.as_str())
                .bind(to_i64(r.calls, "calls")?)
                .bind(to_i64(r.errors, "errors")?)
                .bind(r.durations.to_bytes())
                .execute(&mut *$tx)
                .await?;
        }
    };
}

// The doomed files of cluster mode, the derived tables' segment rows, span compaction's rows
// and the name tables' trimming (after `on_pool!` and `insert_rollups!`, which they use;
// `doomed` first: its `retire!` is used by the others).
#[macro_use]
mod doomed;
mod derived_rows;
mod flush;
mod merged;
mod names;

pub(crate) use doomed::due_in;
pub use doomed::Retirement;
pub(crate) use flush::FlushCommit;

fn to_i64(v: u64, what: &'static str) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::BadCatalogValue {
        what,
        value: v.to_string(),
    })
}

/// One `span_rollups` row (`minute_ns`, `operation`, `kind`, `calls`, `errors`, `durations`)
/// of `service`.
fn rollup_row<R: Row>(r: &R, service: String) -> Result<(RollupKey, Rollup), StorageError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Vec<u8>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = r.try_get("kind")?;
    let durations: Vec<u8> = r.try_get("durations")?;
    let key = RollupKey {
        minute_ns: r.try_get("minute_ns")?,
        service,
        operation: r.try_get("operation")?,
        kind: SpanKind::parse(&kind).unwrap_or_default(),
    };
    let rollup = Rollup {
        calls: to_u64(r.try_get("calls")?, "span_rollups.calls")?,
        errors: to_u64(r.try_get("errors")?, "span_rollups.errors")?,
        durations: Sketch::from_bytes(&durations).map_err(|e| StorageError::BadCatalogValue {
            what: "span_rollups.durations",
            value: e.to_string(),
        })?,
    };
    Ok((key, rollup))
}

fn to_u64(v: i64, what: &'static str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::BadCatalogValue {
        what,
        value: v.to_string(),
    })
}

impl Catalog {
    /// Connects (SQLite at `data_dir/catalog.db` when `url` is `None`; PostgreSQL in `schema`
    /// when given) and runs the migrations.
    pub async fn connect(
        data_dir: &Path,
        url: Option<&str>,
        schema: Option<&str>,
    ) -> Result<Catalog, StorageError> {
        let catalog = match url {
            None => {
                let opts = SqliteConnectOptions::new().filename(data_dir.join("catalog.db"));
                Catalog::Sqlite(sqlite_pool(opts).await?)
            }
            Some(u) if u.starts_with("sqlite:") => {
                Catalog::Sqlite(sqlite_pool(SqliteConnectOptions::from_str(u)?).await?)
            }
            Some(u) if u.starts_with("postgres:") || u.starts_with("postgresql:") => {
                Catalog::Postgres(postgres_pool(u, schema).await?)
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

    /// Every committed segment that is not marked damaged, oldest first.
    pub async fn segments(&self) -> Result<Vec<SegmentInfo>, StorageError> {
        const SQL: &str = "SELECT id, path, min_start_ns, max_start_ns, row_count, byte_size, \
             wal_seq_min, wal_seq_max, services, created_at_ns, damaged FROM segments \
             WHERE damaged IS NULL ORDER BY id";
        Ok(self
            .segment_rows(SQL)
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// The segments marked damaged (see [`Catalog::mark_damaged`]) with the reason, oldest first.
    pub async fn damaged_segments(&self) -> Result<Vec<(SegmentInfo, String)>, StorageError> {
        const SQL: &str = "SELECT id, path, min_start_ns, max_start_ns, row_count, byte_size, \
             wal_seq_min, wal_seq_max, services, created_at_ns, damaged FROM segments \
             WHERE damaged IS NOT NULL ORDER BY id";
        let rows = self.segment_rows(SQL).await?;
        Ok(rows
            .into_iter()
            .map(|(s, why)| (s, why.unwrap_or_default()))
            .collect())
    }

    /// Marks a segment damaged: its file is missing or unreadable (`why`).
    pub async fn mark_damaged(&self, id: i64, why: &str) -> Result<(), StorageError> {
        const SQL: &str = "UPDATE segments SET damaged = $1 WHERE id = $2";
        on_pool!(self, pool => { sqlx::query(SQL).bind(why).bind(id).execute(pool).await?; });
        Ok(())
    }

    async fn segment_rows(
        &self,
        sql: &'static str,
    ) -> Result<Vec<(SegmentInfo, Option<String>)>, StorageError> {
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(sql).fetch_all(pool).await? {
                let services: String = row.try_get("services")?;
                out.push((SegmentInfo {
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
                }, row.try_get("damaged")?));
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

    /// The id of the segment row at `path` in `table`, if there is one.
    pub async fn segment_id(
        &self,
        table: SegmentTable,
        path: &str,
    ) -> Result<Option<i64>, StorageError> {
        let sql = match table {
            // Not a damaged row a rebuilt segment replaces (same records, same path).
            SegmentTable::Spans => "SELECT id FROM segments WHERE path = $1 AND damaged IS NULL",
            SegmentTable::Derived => "SELECT id FROM derived_segments WHERE path = $1",
        };
        let id = on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(path).fetch_optional(pool).await?
        });
        Ok(id)
    }

    /// Cluster mode: every partition's current epoch.
    pub async fn partition_epochs(&self) -> Result<Vec<(u32, i64)>, StorageError> {
        const SQL: &str = "SELECT partition_id, epoch FROM cluster_partitions";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                let p: i64 = row.try_get("partition_id")?;
                let p = u32::try_from(p).map_err(|_| StorageError::BadCatalogValue {
                    what: "cluster_partitions.partition_id", value: p.to_string(),
                })?;
                out.push((p, row.try_get("epoch")?));
            }
        });
        Ok(out)
    }

    /// Cluster mode: claims `partition` for `owner`, moving its epoch on (so the previous
    /// owner's later commits fail); returns (epoch, checkpoint).
    pub async fn claim_partition(
        &self,
        partition: u32,
        owner: &str,
    ) -> Result<(i64, u64), StorageError> {
        const SQL: &str =
            "INSERT INTO cluster_partitions (partition_id, epoch, checkpoint, owner) \
             VALUES ($1, 1, 0, $2) ON CONFLICT (partition_id) DO UPDATE \
             SET epoch = cluster_partitions.epoch + 1, owner = excluded.owner \
             RETURNING epoch, checkpoint";
        let (epoch, checkpoint): (i64, i64) = on_pool!(self, pool => {
            let row = sqlx::query(SQL).bind(i64::from(partition)).bind(owner)
                .fetch_one(pool).await?;
            (row.try_get("epoch")?, row.try_get("checkpoint")?)
        });
        Ok((epoch, to_u64(checkpoint, "cluster_partitions.checkpoint")?))
    }

    /// The rollups of `filter`'s services and minutes, with the ID of the segment each row
    /// belongs to (span kinds are filtered by the caller).
    pub async fn rollups(
        &self,
        filter: &RollupFilter,
    ) -> Result<Vec<(i64, RollupKey, Rollup)>, StorageError> {
        const SQL: &str = "SELECT segment_id, minute_ns, operation, kind, calls, errors, \
             durations FROM span_rollups WHERE service = $1 AND minute_ns >= $2 \
             AND minute_ns <= $3";
        let mut out = Vec::new();
        for service in &filter.services {
            let rows = on_pool!(self, pool => {
                let rows = sqlx::query(SQL).bind(service).bind(filter.from_ns)
                    .bind(filter.to_ns).fetch_all(pool).await?;
                rows.iter().map(|r| {
                    let (key, rollup) = rollup_row(r, service.clone())?;
                    Ok((r.try_get("segment_id")?, key, rollup))
                }).collect::<Result<Vec<_>, StorageError>>()?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Deletes a segment row (its file is deleted by the caller afterwards).
    pub async fn delete_segment(&self, id: i64) -> Result<(), StorageError> {
        const ROLLUPS: &str = "DELETE FROM span_rollups WHERE segment_id = $1";
        const SQL: &str = "DELETE FROM segments WHERE id = $1";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(ROLLUPS).bind(id).execute(&mut *tx).await?;
            sqlx::query(SQL).bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
        });
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

    /// The stored class objectives: (class, objective JSON), by class.
    pub async fn objectives(&self) -> Result<Vec<(String, String)>, StorageError> {
        const SQL: &str = "SELECT class, objective FROM budget_objectives ORDER BY class";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                out.push((row.try_get("class")?, row.try_get("objective")?));
            }
        });
        Ok(out)
    }

    /// Stores (or replaces) one class's objective.
    pub async fn put_objective(
        &self,
        class: &str,
        objective: &str,
        now_ns: i64,
    ) -> Result<(), StorageError> {
        const SQL: &str = "INSERT INTO budget_objectives (class, objective, updated_at_ns) \
             VALUES ($1, $2, $3) ON CONFLICT (class) DO UPDATE SET \
             objective = excluded.objective, updated_at_ns = excluded.updated_at_ns";
        on_pool!(self, pool => {
            sqlx::query(SQL).bind(class).bind(objective).bind(now_ns).execute(pool).await?;
        });
        Ok(())
    }

    /// Deletes one class's stored objective; returns whether there was one.
    pub async fn delete_objective(&self, class: &str) -> Result<bool, StorageError> {
        const SQL: &str = "DELETE FROM budget_objectives WHERE class = $1";
        let n = on_pool!(self, pool => {
            sqlx::query(SQL).bind(class).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// The operator's priority overrides: (class, level).
    pub async fn priority_overrides(&self) -> Result<Vec<(String, i64)>, StorageError> {
        const SQL: &str = "SELECT class, priority FROM priority_overrides ORDER BY class";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                out.push((row.try_get("class")?, row.try_get("priority")?));
            }
        });
        Ok(out)
    }

    /// Replaces every priority override, in one transaction.
    pub async fn replace_priority_overrides(
        &self,
        overrides: &[(String, i64)],
    ) -> Result<(), StorageError> {
        const DELETE: &str = "DELETE FROM priority_overrides";
        const INSERT: &str = "INSERT INTO priority_overrides (class, priority) VALUES ($1, $2)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(DELETE).execute(&mut *tx).await?;
            for (class, level) in overrides {
                sqlx::query(INSERT).bind(class).bind(level).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The current assignment set of every service (reason left empty).
    pub async fn priority_sets(&self) -> Result<Vec<StoredPrioritySet>, StorageError> {
        const SQL: &str =
            "SELECT service, version, generated_at_ns, body FROM priority_sets ORDER BY service";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                out.push(StoredPrioritySet {
                    service: row.try_get("service")?,
                    version: to_u64(row.try_get("version")?, "priority_sets.version")?,
                    generated_at_ns: row.try_get("generated_at_ns")?,
                    reason: String::new(),
                    body: row.try_get("body")?,
                });
            }
        });
        Ok(out)
    }

    /// Makes `set` its service's current set and appends it to the history, keeping the last
    /// `keep` versions of the service there; one transaction. A version not above the stored
    /// one is refused as [`StorageError::Conflict`] (in a cluster, a former leader that has not
    /// noticed yet must not move a service's version back).
    pub async fn store_priority_set(
        &self,
        set: &StoredPrioritySet,
        keep: usize,
    ) -> Result<(), StorageError> {
        const CURRENT: &str = "INSERT INTO priority_sets (service, version, generated_at_ns, body) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (service) DO UPDATE SET version = excluded.version, \
             generated_at_ns = excluded.generated_at_ns, body = excluded.body \
             WHERE priority_sets.version < excluded.version";
        const HISTORY: &str = "INSERT INTO priority_history \
             (service, version, generated_at_ns, reason, body) VALUES ($1, $2, $3, $4, $5)";
        const PRUNE: &str = "DELETE FROM priority_history WHERE service = $1 AND version <= $2";
        let version = to_i64(set.version, "priority version")?;
        let oldest_kept = version - i64::try_from(keep.max(1)).unwrap_or(i64::MAX);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(CURRENT).bind(&set.service).bind(version).bind(set.generated_at_ns)
                .bind(&set.body).execute(&mut *tx).await?;
            if done.rows_affected() != 1 {
                return Err(StorageError::Conflict(format!(
                    "{} version {version} is not above the stored one", set.service
                )));
            }
            sqlx::query(HISTORY).bind(&set.service).bind(version).bind(set.generated_at_ns)
                .bind(&set.reason).bind(&set.body).execute(&mut *tx).await?;
            sqlx::query(PRUNE).bind(&set.service).bind(oldest_kept).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The stored versions of one service's set, oldest first.
    pub async fn priority_history(
        &self,
        service: &str,
    ) -> Result<Vec<StoredPrioritySet>, StorageError> {
        const SQL: &str = "SELECT service, version, generated_at_ns, reason, body \
             FROM priority_history WHERE service = $1 ORDER BY version, id";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).bind(service).fetch_all(pool).await? {
                out.push(StoredPrioritySet {
                    service: row.try_get("service")?,
                    version: to_u64(row.try_get("version")?, "priority_history.version")?,
                    generated_at_ns: row.try_get("generated_at_ns")?,
                    reason: row.try_get("reason")?,
                    body: row.try_get("body")?,
                });
            }
        });
        Ok(out)
    }

    /// Inserts or updates proxies, in one transaction.
    pub async fn upsert_proxies(&self, proxies: &[StoredProxy]) -> Result<(), StorageError> {
        const SQL: &str = "INSERT INTO proxies (service, node, via, last_seen_ns, version) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service, node) DO UPDATE SET \
             via = excluded.via, last_seen_ns = excluded.last_seen_ns, version = excluded.version";
        if proxies.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for p in proxies {
                let version = to_i64(p.version, "proxy version")?;
                sqlx::query(SQL).bind(&p.service).bind(&p.node).bind(&p.via)
                    .bind(p.last_seen_ns).bind(version).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes the proxies last seen before `ns`; answers how many.
    pub async fn delete_proxies_seen_before(&self, ns: i64) -> Result<u64, StorageError> {
        const SQL: &str = "DELETE FROM proxies WHERE last_seen_ns < $1";
        let deleted = on_pool!(self, pool => {
            sqlx::query(SQL).bind(ns).execute(pool).await?.rows_affected()
        });
        Ok(deleted)
    }

    /// Every proxy seen, by service and node.
    pub async fn proxies(&self) -> Result<Vec<StoredProxy>, StorageError> {
        const SQL: &str = "SELECT service, node, via, last_seen_ns, version FROM proxies \
             ORDER BY service, node";
        let mut out = Vec::new();
        on_pool!(self, pool => {
            for row in sqlx::query(SQL).fetch_all(pool).await? {
                out.push(StoredProxy {
                    service: row.try_get("service")?,
                    node: row.try_get("node")?,
                    via: row.try_get("via")?,
                    last_seen_ns: row.try_get("last_seen_ns")?,
                    version: to_u64(row.try_get("version")?, "proxies.version")?,
                });
            }
        });
        Ok(out)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        if let Catalog::Sqlite(pool) = self {
            // Folds SQLite's write-ahead file into catalog.db now, so the file alone is the
            // catalog: the pool closes its connections on worker threads that a process
            // exiting right after may not wait for (seen as a flaky restored-catalog test).
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await
            {
                tracing::warn!(error = %e, "could not fold the catalog's write-ahead file in");
            }
        }
        on_pool!(self, pool => pool.close().await)
    }
}

/// A pool on `url` whose connections use `schema` (created first) when given.
async fn postgres_pool(url: &str, schema: Option<&str>) -> Result<PgPool, StorageError> {
    let options = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10));
    let Some(schema) = schema else {
        return Ok(options.connect(url).await?);
    };
    // Quoted, from characters that need no escaping: never SQL built from arbitrary text.
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if schema.is_empty() || schema.len() > 63 || !schema.chars().all(safe) {
        return Err(StorageError::Config(format!(
            "catalog schema {schema:?} must be 1 to 63 letters, digits, '_', '-' or '.'"
        )));
    }
    let set_path = format!("SET search_path TO \"{schema}\"");
    let first = PgPoolOptions::new().max_connections(1).connect(url).await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&first)
        .await?;
    first.close().await;
    let pool = options
        .after_connect(move |conn, _| {
            let set_path = set_path.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, set_path.as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
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
