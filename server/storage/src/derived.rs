//! Derived tables: rows computed from spans (the provenance tables `traces`, `edges` and
//! `critical_path`), buffered as Arrow batches and flushed to Parquet through the same object
//! store and catalog as span segments.
//!
//! # Layout
//!
//! Each table is a list of immutable segments at
//! `derived/<table>/date=YYYY-MM-DD/seg-<created_ns>.parquet` (the date of the segment's
//! smallest `start_time`), each with a row in the catalog's `derived_segments` table naming its
//! table, plus the batches buffered in memory. A segment is written with one `put`, then its
//! row is committed, then it replaces the flushed batches in memory under one lock (the span
//! store's protocol, see [`crate::layout`]). Files without a row are removed at open.
//!
//! # Versions and replacement
//!
//! Every table has a `trace_id` (16-byte binary), a `start_time` (timestamp, ns) and a
//! `version` (Int64, the completion time in ns) column. A trace derived again (late spans)
//! gets rows with a newer version; nothing is updated in place. SQL sees two tables per
//! derived table: `<table>_versions`, every row ever written, and `<table>`, a DataFusion view
//! keeping, per trace, only the rows of its latest version (each trace's `max(version)`,
//! grouped, joined back to the rows).
//!
//! # Durability
//!
//! Derived rows have no write-ahead log: they can be recomputed from spans. Rows buffered
//! here are lost on a crash; the caller recomputes those of traces whose spans are still in
//! the span WAL (they are replayed), and at start-up re-derives recent stored traces that have
//! no row at all, whose spans were already flushed to Parquet (the server's provenance
//! `repair`, which looks back from the newest segment's `created_at_ns`).
//!
//! Retention deletes whole segments whose newest `start_time` is older than the retention.
//! Small segments are merged in the background ([`compact`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use meshtrace_model::time::now_unix_nanos;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{TableType, ViewTable};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

mod compact;
mod encode;

pub use encode::encoded_size;
use encode::{encode, start_minutes};

pub use crate::catalog::DerivedSegment;
use crate::catalog::{Retirement, SegmentTable};
use crate::check::damaged_derived;
use crate::error::StorageError;
use crate::store::Store;
use crate::store::STORE_URL;

/// The prefix under which every derived segment lives.
pub const DERIVED_PREFIX: &str = "derived";

/// One derived table: its name and schema (with `trace_id`, `start_time` and `version`).
#[derive(Clone, Debug)]
pub struct DerivedTable {
    pub name: String,
    pub schema: SchemaRef,
}

/// When derived rows are flushed and how long segments are kept.
#[derive(Clone, Debug)]
pub struct DerivedConfig {
    pub flush_max_rows: usize,
    pub flush_max_age: Duration,
    pub retention: Duration,
    pub row_group_rows: usize,
    /// Rows a compacted segment holds (see [`compact`]); 0 turns compaction off.
    pub compact_rows: usize,
    /// How long the files of compacted segments stay for queries still reading them.
    pub compact_grace: Duration,
}

impl Default for DerivedConfig {
    fn default() -> Self {
        DerivedConfig {
            flush_max_rows: 100_000,
            flush_max_age: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            row_group_rows: 16_384,
            compact_rows: 500_000,
            compact_grace: Duration::from_secs(120),
        }
    }
}

/// Counters of the derived tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DerivedStats {
    pub buffered_rows: u64,
    pub segments: u64,
    pub segments_written: u64,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub segments_deleted: u64,
}

#[derive(Debug)]
struct Pending {
    batch: RecordBatch,
    at: Instant,
    flushing: bool,
}

#[derive(Debug, Default)]
struct TableView {
    segments: Vec<Arc<DerivedSegment>>,
    batches: Vec<Pending>,
}

#[derive(Debug)]
pub(crate) struct TableState {
    name: String,
    schema: SchemaRef,
    view: RwLock<TableView>,
}

impl TableState {
    fn view(&self) -> std::sync::RwLockWriteGuard<'_, TableView> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> (Vec<Arc<DerivedSegment>>, Vec<RecordBatch>) {
        let v = self.view.read().unwrap_or_else(PoisonError::into_inner);
        let batches = v.batches.iter().map(|p| p.batch.clone()).collect();
        (v.segments.clone(), batches)
    }

    /// (pending rows, oldest pending batch).
    fn pending(&self) -> (usize, Option<Instant>) {
        let v = self.view.read().unwrap_or_else(PoisonError::into_inner);
        let pending = v.batches.iter().filter(|p| !p.flushing);
        let rows = pending.clone().map(|p| p.batch.num_rows()).sum();
        (rows, pending.map(|p| p.at).min())
    }
}

#[derive(Debug, Default)]
struct Counters {
    segments_written: AtomicU64,
    rows_written: AtomicU64,
    bytes_written: AtomicU64,
    segments_deleted: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    cfg: DerivedConfig,
    tables: Vec<Arc<TableState>>,
    flush_lock: tokio::sync::Mutex<()>,
    counters: Counters,
}

/// The derived tables of one [`Store`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DerivedStore {
    inner: Arc<Inner>,
}

fn check_schema(t: &DerivedTable) -> Result<(), StorageError> {
    let want = |name: &str, ok: &dyn Fn(&DataType) -> bool| match t.schema.field_with_name(name) {
        Ok(f) if ok(f.data_type()) => Ok(()),
        _ => Err(StorageError::Config(format!(
            "derived table {} needs a suitable {name} column",
            t.name
        ))),
    };
    want("trace_id", &|d| *d == DataType::FixedSizeBinary(16))?;
    want("version", &|d| *d == DataType::Int64)?;
    want("start_time", &|d| {
        matches!(
            d,
            DataType::Timestamp(arrow_schema::TimeUnit::Nanosecond, _)
        )
    })
}

impl DerivedStore {
    /// Opens the derived tables on a span store: loads their segments from the catalog,
    /// removes files without a catalog row, and registers `<table>_versions` and `<table>`
    /// with the store's SQL.
    pub async fn open(
        store: &Store,
        tables: Vec<DerivedTable>,
        cfg: DerivedConfig,
    ) -> Result<DerivedStore, StorageError> {
        let mut segments = store.inner.catalog.derived_segments().await?;
        let orphans = match store.inner.cfg.cluster_node {
            // A peer may be between writing a file and committing its row.
            Some(_) => 0,
            None => remove_orphans(store.inner.store.as_ref(), &segments).await?,
        };
        if store.inner.cfg.cluster_node.is_none() {
            for seg in damaged_derived(&store.inner.store, &segments).await? {
                store.inner.catalog.delete_derived_segment(seg.id).await?;
                segments.retain(|s| s.id != seg.id);
            }
        }
        let mut states = Vec::new();
        for t in tables {
            check_schema(&t)?;
            let mine = segments.iter().filter(|s| s.table == t.name);
            let view = TableView {
                segments: mine.cloned().map(Arc::new).collect(),
                batches: Vec::new(),
            };
            states.push(Arc::new(TableState {
                name: t.name,
                schema: t.schema,
                view: RwLock::new(view),
            }));
        }
        for state in &states {
            let versions = format!("{}_versions", state.name);
            let provider: Arc<dyn TableProvider> = Arc::new(VersionsTable(state.clone()));
            store.register_table(versions.clone(), provider.clone());
            let view = latest_view(&versions, provider, &state.schema).await?;
            store.register_table(state.name.clone(), Arc::new(view));
        }
        tracing::info!(segments = segments.len(), orphans, "derived tables opened");
        Ok(DerivedStore {
            inner: Arc::new(Inner {
                store: store.clone(),
                cfg,
                tables: states,
                flush_lock: tokio::sync::Mutex::new(()),
                counters: Counters::default(),
            }),
        })
    }

    fn table(&self, name: &str) -> Result<&Arc<TableState>, StorageError> {
        self.inner
            .tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| StorageError::InvalidArgument(format!("no derived table {name:?}")))
    }

    /// Buffers rows of one table; they are queryable on return.
    pub fn append(&self, table: &str, batch: RecordBatch) -> Result<(), StorageError> {
        let t = self.table(table)?;
        if batch.schema().fields() != t.schema.fields() {
            return Err(StorageError::InvalidArgument(format!(
                "batch does not have the schema of derived table {table}"
            )));
        }
        if batch.num_rows() > 0 {
            let minutes = start_minutes(&batch)?;
            t.view().batches.push(Pending {
                batch,
                at: Instant::now(),
                flushing: false,
            });
            // After the rows are visible: a reader that took the epoch before this touch and
            // missed the rows then sees its minutes changed.
            for (first, last) in minutes {
                self.inner.store.touch_derived(first, last);
            }
        }
        Ok(())
    }

    /// Flushes when some table has enough rows or a batch old enough (a quarter of
    /// `flush_max_age` while the process is short of memory, as the span store does); returns
    /// segments written.
    pub async fn flush_if_due(&self) -> Result<usize, StorageError> {
        let memory = &self.inner.store.config().memory;
        let max_age = memory.flush_age(self.inner.cfg.flush_max_age);
        let due = self.inner.tables.iter().any(|t| {
            let (rows, oldest) = t.pending();
            rows > 0
                && (rows >= self.inner.cfg.flush_max_rows
                    || oldest.is_some_and(|o| o.elapsed() >= max_age))
        });
        if due {
            self.flush().await
        } else {
            Ok(0)
        }
    }

    /// Writes every table's buffered rows to one new segment each; returns segments written.
    pub async fn flush(&self) -> Result<usize, StorageError> {
        let _serial = self.inner.flush_lock.lock().await;
        let mut written = 0;
        for t in &self.inner.tables {
            let taken: Vec<RecordBatch> = t
                .view()
                .batches
                .iter_mut()
                .filter(|p| !p.flushing)
                .map(|p| {
                    p.flushing = true;
                    p.batch.clone()
                })
                .collect();
            if taken.is_empty() {
                continue;
            }
            if let Err(e) = self.write_segment(t, taken).await {
                // The caller reports it (and spaces out retries).
                t.view().batches.iter_mut().for_each(|p| p.flushing = false);
                return Err(e);
            }
            written += 1;
        }
        Ok(written)
    }

    async fn write_segment(
        &self,
        t: &TableState,
        batches: Vec<RecordBatch>,
    ) -> Result<(), StorageError> {
        let (mut seg, retire) = self.put_segment(t, batches, &[]).await?;
        let store = &self.inner.store.inner;
        let committed = store.catalog.commit_derived_segment(&seg, retire.as_ref());
        seg.id = match committed.await {
            Ok(id) => id,
            Err(e) => self.settle_failed_commit(&seg.path, e).await?,
        };
        let c = &self.inner.counters;
        c.segments_written.fetch_add(1, Ordering::Relaxed);
        c.rows_written
            .fetch_add(seg.row_count as u64, Ordering::Relaxed);
        c.bytes_written
            .fetch_add(seg.byte_size as u64, Ordering::Relaxed);
        tracing::debug!(table = %t.name, path = %seg.path, rows = seg.row_count, "derived segment committed");
        let mut view = t.view();
        view.segments.push(Arc::new(seg));
        view.batches.retain(|p| !p.flushing);
        Ok(())
    }

    /// Encodes `batches` (sorted by trace and version) into a new segment file, written and
    /// synced; the returned row is not committed yet (its `id` is 0). In cluster mode the file
    /// is marked for deletion before it is written, and the returned [`Retirement`] is what its
    /// commit does to the marks (a compaction's also marks the segments it `merges`).
    pub(crate) async fn put_segment(
        &self,
        t: &TableState,
        batches: Vec<RecordBatch>,
        merges: &[Arc<DerivedSegment>],
    ) -> Result<(DerivedSegment, Option<Retirement>), StorageError> {
        let (schema, rg) = (t.schema.clone(), self.inner.cfg.row_group_rows);
        let enc = tokio::task::spawn_blocking(move || encode(&schema, &batches, rg)).await??;
        let created = now_unix_nanos();
        let day = chrono::DateTime::from_timestamp_nanos(enc.min_start_ns).format("%Y-%m-%d");
        let mut path = format!(
            "{DERIVED_PREFIX}/{}/date={day}/seg-{created}.parquet",
            t.name
        );
        if let Some(node) = &self.inner.store.config().cluster_node {
            path = crate::layout::node_file_name(&path, node);
        }
        let byte_size = enc.bytes.len() as i64;
        // In cluster mode a flush's file is marked too, and unmarked once committed.
        let inputs = merges.iter().map(|s| (s.path.clone(), None)).collect();
        let grace = self.inner.cfg.compact_grace;
        let retire = (self.inner.store)
            .prepare_retirement(&path, inputs, grace)
            .await?;
        let store = &self.inner.store.inner;
        store
            .store
            .put(
                &ObjectPath::from(path.as_str()),
                PutPayload::from(enc.bytes),
            )
            .await?;
        if let Err(e) = self.inner.store.sync_segment(&path).await {
            self.inner
                .store
                .delete_failed(&ObjectPath::from(path.as_str()))
                .await;
            return Err(e);
        }
        let seg = DerivedSegment {
            id: 0,
            table: t.name.clone(),
            path,
            min_start_ns: enc.min_start_ns,
            max_start_ns: enc.max_start_ns,
            row_count: enc.rows as i64,
            byte_size,
            created_at_ns: created,
        };
        Ok((seg, retire))
    }

    /// A derived segment whose commit failed: if nothing was sent (no connection), the file is
    /// deleted. If the statement may have run (the reply was lost) and its row is there after
    /// all, its id; if the row is not there, the file is deleted. If the catalog cannot be
    /// asked, the file stays, invisible without a row, for the next start-up's orphan sweep.
    async fn settle_failed_commit(&self, path: &str, e: StorageError) -> Result<i64, StorageError> {
        let store = &self.inner.store.inner;
        if !matches!(e, StorageError::CommitOutcomeUnknown(_)) {
            self.inner
                .store
                .delete_failed(&ObjectPath::from(path))
                .await;
            return Err(e);
        }
        match store.catalog.segment_id(SegmentTable::Derived, path).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => {
                self.inner
                    .store
                    .delete_failed(&ObjectPath::from(path))
                    .await;
                Err(e)
            }
            Err(_) => Err(e),
        }
    }

    /// Deletes every segment whose newest `start_time` is older than the retention; returns
    /// how many.
    pub async fn apply_retention(&self) -> Result<usize, StorageError> {
        let _serial = self.inner.flush_lock.lock().await;
        let retention = i64::try_from(self.inner.cfg.retention.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now_unix_nanos().saturating_sub(retention);
        let store = &self.inner.store.inner;
        let mut deleted = 0;
        for t in &self.inner.tables {
            let expired: Vec<Arc<DerivedSegment>> = t
                .snapshot()
                .0
                .into_iter()
                .filter(|s| s.max_start_ns < cutoff)
                .collect();
            for seg in expired {
                store.catalog.delete_derived_segment(seg.id).await?;
                t.view().segments.retain(|s| s.id != seg.id);
                // After the rows are gone (see `append`).
                self.inner
                    .store
                    .touch_derived(seg.min_start_ns, seg.max_start_ns);
                match store
                    .store
                    .delete(&ObjectPath::from(seg.path.as_str()))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(path = %seg.path, error = %e, "cannot delete expired derived segment")
                    }
                }
                deleted += 1;
            }
        }
        self.inner
            .counters
            .segments_deleted
            .fetch_add(deleted as u64, Ordering::Relaxed);
        Ok(deleted)
    }

    /// The counters.
    pub fn stats(&self) -> DerivedStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mut buffered_rows, mut segments) = (0, 0);
        for t in &self.inner.tables {
            let (segs, batches) = t.snapshot();
            segments += segs.len() as u64;
            buffered_rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
        DerivedStats {
            buffered_rows,
            segments,
            segments_written: get(&c.segments_written),
            rows_written: get(&c.rows_written),
            bytes_written: get(&c.bytes_written),
            segments_deleted: get(&c.segments_deleted),
        }
    }

    /// Re-reads every table's segment list from the catalog (cluster mode: segments peers
    /// committed, and those deleted by retention anywhere).
    pub async fn refresh(&self) -> Result<(), StorageError> {
        let _serial = self.inner.flush_lock.lock().await;
        let listed = self.inner.store.inner.catalog.derived_segments().await?;
        for t in &self.inner.tables {
            let mut view = t.view();
            let known: std::collections::HashMap<i64, Arc<DerivedSegment>> =
                view.segments.iter().map(|s| (s.id, s.clone())).collect();
            view.segments = listed
                .iter()
                .filter(|s| s.table == t.name)
                .map(|s| match known.get(&s.id) {
                    Some(seg) => seg.clone(),
                    None => {
                        // A peer's segment: rows this node's readers have not seen.
                        self.inner
                            .store
                            .touch_derived(s.min_start_ns, s.max_start_ns);
                        Arc::new(s.clone())
                    }
                })
                .collect();
            let listed_ids: HashSet<i64> = view.segments.iter().map(|s| s.id).collect();
            for gone in known.values().filter(|s| !listed_ids.contains(&s.id)) {
                self.inner
                    .store
                    .touch_derived(gone.min_start_ns, gone.max_start_ns);
            }
        }
        Ok(())
    }

    /// The committed segments of one table, oldest first.
    pub fn segments(&self, table: &str) -> Result<Vec<DerivedSegment>, StorageError> {
        let t = self.table(table)?;
        Ok(t.snapshot().0.iter().map(|s| (**s).clone()).collect())
    }
}

impl Store {
    /// The trace-class rules stored in the catalog (JSON documents), in order.
    pub async fn class_rules(&self) -> Result<Vec<String>, StorageError> {
        self.inner.catalog.class_rules().await
    }

    /// Replaces the trace-class rules stored in the catalog.
    pub async fn set_class_rules(&self, rules: &[String]) -> Result<(), StorageError> {
        self.inner.catalog.replace_class_rules(rules).await
    }
}

/// The user-facing table: per trace, only the rows of its latest version.
async fn latest_view(
    versions: &str,
    provider: Arc<dyn TableProvider>,
    schema: &SchemaRef,
) -> Result<ViewTable, StorageError> {
    let ctx = SessionContext::new();
    ctx.register_table(versions, provider)?;
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect();
    // Grouped and joined, not `max(version) OVER (PARTITION BY trace_id)`: a window function
    // holds every row of the table, all columns, in memory at once (7 GB for a GROUP BY over
    // 90 M edges), where the grouping holds one small entry a trace, in the query memory pool.
    let sql = format!(
        "SELECT {} FROM (SELECT trace_id AS latest_trace__, max(version) AS latest_version__ \
         FROM {versions} GROUP BY trace_id) \
         JOIN {versions} ON trace_id = latest_trace__ AND version = latest_version__",
        cols.join(", ")
    );
    let plan = ctx.sql(&sql).await?.into_unoptimized_plan();
    Ok(ViewTable::new(plan, Some(sql)))
}

/// `<table>_versions`: the committed segments and the buffer, as of each scan.
#[derive(Debug)]
struct VersionsTable(Arc<TableState>);

#[async_trait]
impl TableProvider for VersionsTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = self.0.schema.clone();
        let (segments, batches) = self.0.snapshot();
        let buffer = MemTable::try_new(schema.clone(), vec![batches])?;
        let mut inputs = vec![buffer.scan(state, projection, filters, limit).await?];
        if !segments.is_empty() {
            let urls = segments
                .iter()
                .map(|s| ListingTableUrl::parse(format!("{STORE_URL}{}", s.path)))
                .collect::<Result<Vec<_>, DataFusionError>>()?;
            let format =
                ParquetFormat::default().with_options(state.table_options().parquet.clone());
            let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(schema);
            let table = ListingTable::try_new(config)?;
            inputs.push(table.scan(state, projection, filters, limit).await?);
        }
        UnionExec::try_new(inputs)
    }
}

/// Deletes every object under [`DERIVED_PREFIX`] without a catalog row; returns how many.
async fn remove_orphans(
    store: &dyn ObjectStore,
    segments: &[DerivedSegment],
) -> Result<usize, StorageError> {
    let known: HashSet<&str> = segments.iter().map(|s| s.path.as_str()).collect();
    let prefix = ObjectPath::from(DERIVED_PREFIX);
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let mut removed = 0;
    for obj in objects {
        if known.contains(obj.location.as_ref()) {
            continue;
        }
        tracing::warn!(path = %obj.location, "removing derived segment file without catalog row");
        match store.delete(&obj.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(removed)
}
