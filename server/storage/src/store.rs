//! The [`Store`] handle: opening (migrations, orphan cleanup), appending, flushing, retention,
//! the checkpoint, the rollups and the counters. Queries live in `query.rs` and `sql.rs`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use meshtrace_model::arrow_conv::spans_to_batch;
use meshtrace_model::time::now_unix_nanos;
use meshtrace_model::{Span, SpanKind};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::buffer::{Buffered, Names, Snapshot, Taken, View};
use crate::catalog::{Catalog, FlushCommit, SegmentInfo};
use crate::error::StorageError;
use crate::layout::{encode_segment, node_file_name, segment_path};
use crate::orphans::{self, Settled};
use crate::ownership::Owned;
use crate::pending::{Rebuild, Unresolved};
use crate::reader::SegmentReader;
use crate::rollup::{rollups_of, RollupFilter, Rollups};
use crate::sql_runtime::SqlRuntime;
use crate::touches::Touches;
use crate::{StoreConfig, StoreStats};

/// How often retention trims the name lists.
const NAMES_TRIM_EVERY_NS: i64 = 600_000_000_000;
/// How much longer than the retention a name stays after its last span was appended (spans
/// may be dated a little ahead of the clock).
const NAMES_MARGIN_NS: i64 = 3_600_000_000_000;

/// The span store. Cheap to clone; all clones share one state.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub flushes: AtomicU64,
    pub segments_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub rows_written: AtomicU64,
    pub segments_pruned: AtomicU64,
    pub segments_read: AtomicU64,
    pub row_groups_pruned: AtomicU64,
    pub row_groups_read: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub orphans_removed: AtomicU64,
    pub segments_quarantined: AtomicU64,
    pub search_segments_scanned: AtomicU64,
    pub search_segments_skipped: AtomicU64,
    pub search_row_groups_scanned: AtomicU64,
    pub replayed_appends_skipped: AtomicU64,
    pub flush_failures: AtomicU64,
    pub failed_segments_deleted: AtomicU64,
    pub segments_rebuilt: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub cfg: StoreConfig,
    pub store: Arc<dyn ObjectStore>,
    pub catalog: Catalog,
    pub view: RwLock<View>,
    pub names: Mutex<Names>,
    pub reader: SegmentReader,
    pub flush_lock: tokio::sync::Mutex<()>,
    /// When the name lists were last trimmed (unix ns; see [`Store::trim_names`]).
    names_trimmed_at: AtomicI64,
    pub checkpoint: AtomicU64,
    pub counters: Counters,
    pub tables: Mutex<Vec<(String, Arc<dyn TableProvider>)>>,
    /// Shared by every SQL session, so DataFusion's file metadata cache outlives a query.
    pub runtime: Arc<RuntimeEnv>,
    /// The threads, slots and limits SQL plans run under.
    pub(crate) sql_runtime: SqlRuntime,
    /// Segment files found without a catalog row at open, until [`Store::settle_orphans`].
    pub orphans: Mutex<Vec<ObjectPath>>,
    /// Cluster mode: the partitions this node owns (see [`crate::cluster`]).
    pub owned: Mutex<Owned>,
    /// Why the last flush failed, until one succeeds.
    pub flush_error: Mutex<Option<String>>,
    /// A segment whose commit outcome is not known yet (see [`crate::commit`]).
    pub unresolved: Mutex<Option<Unresolved>>,
    /// Damaged segments the write-ahead log is rebuilding (see [`crate::check`]).
    pub rebuild: Mutex<Vec<Rebuild>>,
    /// Which minutes of derived rows changed when (see [`crate::touches`]).
    pub derived_touches: Mutex<Touches>,
    /// Span compaction's state (see [`crate::compact`]).
    pub merges: Mutex<crate::pending::Merges>,
}

/// The URL under which the store's object store is registered in every session.
pub(crate) const STORE_URL: &str = "meshtrace://store/";

/// The DataFusion runtime shared by the store's sessions, with the store's object store
/// registered under [`STORE_URL`] and one memory pool of `memory_bytes` for all their plans.
pub(crate) fn runtime(
    store: &Arc<dyn ObjectStore>,
    memory_bytes: usize,
) -> Result<Arc<RuntimeEnv>, StorageError> {
    let pool = FairSpillPool::new(memory_bytes);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .build_arc()?;
    let url = ObjectStoreUrl::parse(STORE_URL)?;
    runtime.register_object_store(url.as_ref(), store.clone());
    Ok(runtime)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The (service, operation, kind) names of spans, as [`Store::append_converted`] takes them.
pub fn span_names(spans: &[Span]) -> impl Iterator<Item = (&str, &str, SpanKind)> {
    spans
        .iter()
        .map(|s| (s.service_name.as_str(), s.name.as_str(), s.kind))
}

impl Store {
    /// Opens the store on a local directory: creates it, connects the catalog, runs the
    /// migrations, removes temporary files of interrupted writes and lists the segment files
    /// the catalog does not know, for [`Store::settle_orphans`].
    pub async fn open(cfg: StoreConfig) -> Result<Store, StorageError> {
        tokio::fs::create_dir_all(&cfg.data_dir)
            .await
            .map_err(|e| StorageError::Config(format!("cannot create {:?}: {e}", cfg.data_dir)))?;
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(&cfg.data_dir)?);
        let temporary = orphans::remove_temporary_files(&cfg.data_dir)
            .map_err(|e| StorageError::Config(format!("sweeping {:?}: {e}", cfg.data_dir)))?;
        let opened = Store::open_with_object_store(cfg, store).await?;
        opened
            .inner
            .counters
            .orphans_removed
            .fetch_add(temporary as u64, Ordering::Relaxed);
        Ok(opened)
    }

    /// Opens the store on any object store (`cfg.data_dir` still holds the default catalog).
    pub async fn open_with_object_store(
        cfg: StoreConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Store, StorageError> {
        let url = cfg.catalog_url.as_deref();
        let catalog = Catalog::connect(&cfg.data_dir, url, cfg.catalog_schema.as_deref()).await?;
        let segments = catalog.segments().await?;
        let orphans = match cfg.cluster_node {
            // A peer may be between writing a file and committing its row.
            Some(_) => Vec::new(),
            None => orphans::find(store.as_ref(), &segments).await?,
        };
        let names = catalog.names().await?;
        let checkpoint = catalog.checkpoint().await?;
        tracing::info!(
            backend = catalog.backend(),
            segments = segments.len(),
            orphans = orphans.len(),
            checkpoint,
            "span store opened"
        );
        let runtime = runtime(&store, cfg.sql.memory_bytes)?;
        let names = Names::from_catalog(names, cfg.names, now_unix_nanos());
        let sql_runtime = SqlRuntime::new(cfg.sql.clone(), cfg.memory.clone())?;
        let inner = Inner {
            reader: SegmentReader::new(store.clone()),
            cfg,
            store,
            catalog,
            view: RwLock::new(View {
                segments: segments.into_iter().map(Arc::new).collect(),
                batches: Vec::new(),
                damaged: Vec::new(),
            }),
            names: Mutex::new(names),
            flush_lock: tokio::sync::Mutex::new(()),
            names_trimmed_at: AtomicI64::new(now_unix_nanos()),
            checkpoint: AtomicU64::new(checkpoint),
            counters: Counters::default(),
            tables: Mutex::new(Vec::new()),
            runtime,
            sql_runtime,
            orphans: Mutex::new(orphans),
            owned: Mutex::default(),
            flush_error: Mutex::new(None),
            unresolved: Mutex::new(None),
            rebuild: Mutex::new(Vec::new()),
            derived_touches: Mutex::default(),
            merges: Mutex::default(),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn read_view(&self) -> RwLockReadGuard<'_, View> {
        self.inner
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_view(&self) -> RwLockWriteGuard<'_, View> {
        self.inner
            .view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The committed segments and the buffered batches, taken together.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.read_view().snapshot()
    }

    /// The configuration the store was opened with.
    /// (services, operations) left out of the name lists because they were full.
    pub fn names_refused(&self) -> (u64, u64) {
        lock(&self.inner.names).refused
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// The object store holding the segments.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.store.clone()
    }

    /// The committed segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.read_view()
            .segments
            .iter()
            .map(|s| (**s).clone())
            .collect()
    }

    /// The highest WAL sequence number whose spans are all in committed segments (0 if none).
    pub async fn checkpoint(&self) -> Result<u64, StorageError> {
        Ok(self.inner.checkpoint.load(Ordering::Acquire))
    }

    /// Buffers spans (converted to one Arrow batch); they are queryable on return.
    ///
    /// A non-zero `wal_seq` at or below the checkpoint is already in a committed segment (a
    /// WAL replay from too early): it is skipped, so replays never duplicate spans.
    pub fn append(&self, wal_seq: u64, spans: &[Span]) -> Result<(), StorageError> {
        if spans.is_empty() {
            return Ok(());
        }
        let batch = spans_to_batch(spans)?;
        self.append_converted(wal_seq, span_names(spans), batch)
    }

    /// [`Store::append`] with the Arrow batch of the spans already built (by
    /// `meshtrace_model::arrow_conv::spans_to_batch`), so callers can convert off the
    /// ordered delivery path, and their (service, operation, kind) names.
    pub fn append_converted<'a>(
        &self,
        wal_seq: u64,
        names: impl IntoIterator<Item = (&'a str, &'a str, SpanKind)>,
        batch: RecordBatch,
    ) -> Result<(), StorageError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let checkpoint = self.inner.checkpoint.load(Ordering::Acquire);
        if wal_seq != 0 && wal_seq <= checkpoint && !self.rebuilding(wal_seq) {
            let c = &self.inner.counters.replayed_appends_skipped;
            c.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                wal_seq,
                checkpoint,
                "append at or below the checkpoint skipped"
            );
            return Ok(());
        }
        lock(&self.inner.names).observe(names, now_unix_nanos());
        self.buffer(wal_seq, batch);
        Ok(())
    }

    /// Adds a batch of log record `wal_seq` to the buffer.
    fn buffer(&self, wal_seq: u64, batch: RecordBatch) {
        self.write_view().batches.push(Buffered {
            seq: wal_seq,
            partition: None,
            batch,
            at: Instant::now(),
            flushing: false,
        });
    }

    /// Records that log record `wal_seq` was delivered with no rows to store (every span in
    /// it a copy of one stored already), so the checkpoint of the next flush covers it and a
    /// restart does not replay it without its originals.
    pub fn note_empty(&self, wal_seq: u64) {
        let checkpoint = self.inner.checkpoint.load(Ordering::Acquire);
        if wal_seq <= checkpoint {
            return;
        }
        if let Ok(batch) = spans_to_batch(&[]) {
            self.buffer(wal_seq, batch);
        }
    }

    /// Rows in memory, those of a flush in progress included.
    pub fn buffered_rows(&self) -> usize {
        self.read_view().rows()
    }

    /// Flushes when enough rows are buffered, the oldest buffered batch is old enough or the
    /// process is short of memory ([`meshtrace_model::memory::MemoryBudget::pressed`]) and it is a
    /// quarter of that age; returns the new checkpoint when it flushed.
    pub async fn flush_if_due(&self) -> Result<Option<u64>, StorageError> {
        let (rows, oldest) = {
            let view = self.read_view();
            (view.pending_rows(), view.oldest_pending())
        };
        let max_age = self
            .inner
            .cfg
            .memory
            .flush_age(self.inner.cfg.flush_max_age);
        let old = oldest.is_some_and(|t| t.elapsed() >= max_age);
        // A commit whose outcome is unknown is asked about again even if nothing is pending
        // (its rows are marked; ingest may be refused until it is settled).
        let unsettled = self.has_unresolved();
        if !unsettled && (rows == 0 || (rows < self.inner.cfg.flush_max_rows && !old)) {
            return Ok(None);
        }
        self.flush().await
    }

    /// Writes every buffered batch to one new segment; returns the new checkpoint, or `None`
    /// when nothing was buffered.
    pub async fn flush(&self) -> Result<Option<u64>, StorageError> {
        let _serial = self.inner.flush_lock.lock().await;
        match self.resolve_unresolved().await {
            Ok(Some(checkpoint)) => {
                self.note_flush(None);
                return Ok(Some(self.truncatable(checkpoint)));
            }
            Ok(None) => {}
            Err(e) => {
                self.note_flush(Some(&e));
                return Err(e);
            }
        }
        // A damaged segment being rebuilt gets a segment of its own records only, so segment
        // sequence ranges never interleave (see `check.rs`).
        let (taken, replaces) = match self.next_rebuild() {
            Some(r) => {
                let mut view = self.write_view();
                let range = r.seq_min..=r.seq_max;
                (
                    view.mark_for_flush_where(|seq| range.contains(&seq)),
                    vec![r.id],
                )
            }
            None => (self.write_view().mark_for_flush(), Vec::new()),
        };
        if taken.iter().all(|t| t.batch.num_rows() == 0) {
            // Only records without rows (see `note_empty`): they ride with the next flush.
            self.write_view().unmark();
            // Nothing came back for a rebuild: leave its row marked damaged (reported).
            if let Some(id) = replaces.first() {
                self.rebuild_failed(*id);
            }
            return Ok(None);
        }
        let written = self.write_segment(taken, replaces).await;
        self.note_flush(written.as_ref().err());
        match written {
            Ok(checkpoint) => Ok(Some(self.truncatable(checkpoint))),
            Err(StorageError::Fenced { partition }) => {
                // Another node owns it now and consumes it from its checkpoint: these rows
                // are its to write. The rest are flushed again next time.
                self.forget_partition(partition);
                let mut view = self.write_view();
                view.drop_partition(partition);
                view.unmark();
                tracing::warn!(
                    partition,
                    "partition taken over by another node; its buffered rows dropped"
                );
                Err(StorageError::Fenced { partition })
            }
            Err(e) => {
                // The caller reports it (and spaces out retries). Rows of a segment whose
                // commit is unresolved stay marked: they may be stored already.
                if !self.has_unresolved() {
                    self.write_view().unmark();
                }
                Err(e)
            }
        }
    }

    /// Records how a flush went, for [`Store::flush_failing`].
    fn note_flush(&self, error: Option<&StorageError>) {
        let mut last = lock(&self.inner.flush_error);
        match error {
            Some(StorageError::Fenced { .. }) => {}
            Some(e) => {
                let c = &self.inner.counters;
                c.flush_failures.fetch_add(1, Ordering::Relaxed);
                *last = Some(e.to_string());
            }
            None => {
                if last.take().is_some() {
                    tracing::info!("flushes succeed again");
                }
            }
        }
    }

    /// Why flushes fail, while they do (from the last failure until a flush succeeds).
    pub fn flush_failing(&self) -> Option<String> {
        lock(&self.inner.flush_error).clone()
    }

    async fn write_segment(
        &self,
        taken: Vec<Taken>,
        replaces: Vec<i64>,
    ) -> Result<u64, StorageError> {
        let started = Instant::now();
        let seq_min = taken.iter().map(|t| t.seq).min().unwrap_or_default();
        let seq_max = taken.iter().map(|t| t.seq).max().unwrap_or_default();
        let marks = self.partition_marks(&taken)?;
        let batches: Vec<RecordBatch> = taken.into_iter().map(|t| t.batch).collect();
        let rg = self.inner.cfg.row_group_rows;
        let (enc, rollups) = tokio::task::spawn_blocking(move || {
            Ok::<_, StorageError>((encode_segment(&batches, rg)?, rollups_of(&batches, None)?))
        })
        .await??;
        let mut path = segment_path(enc.min_start_ns, seq_min, seq_max);
        if let Some(node) = &self.inner.cfg.cluster_node {
            path = node_file_name(&path, node);
        } else if self.read_view().segments.iter().any(|s| s.path == path) {
            path = path.replace(".parquet", &format!("-{}.parquet", now_unix_nanos()));
        }
        let object = ObjectPath::from(path.as_str());
        let retire = self.prepare_retirement(&path, Vec::new(), Duration::ZERO);
        let retire = retire.await?;
        let mut info = self
            .put_segment(path, enc, (seq_min, seq_max), now_unix_nanos())
            .await?;
        let names = lock(&self.inner.names).take_pending();
        let checkpoint = self.inner.checkpoint.load(Ordering::Acquire).max(seq_max);
        let flush = FlushCommit {
            names: &names,
            checkpoint,
            marks: &marks,
            replaces: &replaces,
            retire: retire.as_ref(),
        };
        let commit = self
            .inner
            .catalog
            .commit_segment(&info, &rollups, &flush)
            .await;
        match commit {
            Ok(id) => info.id = id,
            Err(e) => {
                let failed = Unresolved {
                    object,
                    info: info.clone(),
                    marks: marks.clone(),
                    checkpoint,
                    replaces: replaces.clone(),
                };
                match self.settle_failed_commit(failed, e).await {
                    Ok(id) => info.id = id,
                    Err(e) => {
                        lock(&self.inner.names).restore_pending(names);
                        return Err(e);
                    }
                }
            }
        }
        self.rebuilt(&replaces);
        self.finish_commit(info, &marks, checkpoint, started);
        Ok(checkpoint)
    }

    /// The per-minute rollups `filter` asks for, merged by key: those committed with the
    /// segments of one snapshot of the store, and those of the spans still buffered in it.
    pub async fn span_rollups(&self, filter: &RollupFilter) -> Result<Rollups, StorageError> {
        let snapshot = self.snapshot();
        let committed: HashSet<i64> = snapshot.segments.iter().map(|s| s.id).collect();
        let wanted = filter.clone();
        let batches = snapshot.batches;
        let mut out =
            tokio::task::spawn_blocking(move || rollups_of(&batches, Some(&wanted))).await??;
        for (segment, key, rollup) in self.inner.catalog.rollups(filter).await? {
            if committed.contains(&segment) && filter.wants(&key) {
                out.entry(key).or_default().merge(&rollup);
            }
        }
        Ok(out)
    }

    /// Deletes every segment whose newest span started before `now - retention` (the file
    /// first, then its catalog row); returns how many.
    pub async fn apply_retention(&self) -> Result<usize, StorageError> {
        let cutoff = self.retention_cutoff_ns();
        let expired: Vec<Arc<SegmentInfo>> = self
            .read_view()
            .segments
            .iter()
            .filter(|s| s.max_start_ns < cutoff)
            .cloned()
            .collect();
        for seg in &expired {
            // The file goes before its row: a crash in between leaves a row whose file is gone
            // (the next pass deletes the row), never a file without a row, which start-up
            // could not tell from spans the catalog lost.
            self.write_view().segments.retain(|s| s.id != seg.id);
            self.inner.reader.forget(&seg.path);
            match self
                .inner
                .store
                .delete(&ObjectPath::from(seg.path.as_str()))
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(path = %seg.path, error = %e, "cannot delete expired segment");
                    continue;
                }
            }
            self.inner.catalog.delete_segment(seg.id).await?;
            self.inner
                .counters
                .segments_deleted
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(path = %seg.path, max_start_ns = seg.max_start_ns, "segment expired");
        }
        let damaged: Vec<_> = self.read_view().damaged.clone();
        for seg in damaged.iter().filter(|d| d.max_start_ns < cutoff) {
            self.inner.catalog.delete_segment(seg.id).await?;
            self.write_view().damaged.retain(|d| d.id != seg.id);
            tracing::info!(path = %seg.path, "damaged segment expired");
        }
        if self.inner.cfg.cluster_node.is_none() && self.names_trim_due() {
            let cutoff = cutoff.saturating_sub(NAMES_MARGIN_NS);
            match self.trim_names(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(names = n, "names no span had since the retention dropped"),
                Err(e) => tracing::warn!(error = %e, "trimming the name lists failed"),
            }
        }
        Ok(expired.len())
    }

    /// Whether the name lists are due for [`Store::trim_names`] (every 10 minutes).
    fn names_trim_due(&self) -> bool {
        let now = now_unix_nanos();
        let last = self.inner.names_trimmed_at.load(Ordering::Relaxed);
        now.saturating_sub(last) >= NAMES_TRIM_EVERY_NS
            && self
                .inner
                .names_trimmed_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Drops the service and operation names no span was appended with since `cutoff_ns`
    /// (names not yet persisted are kept), from the name lists and the catalog; retention
    /// calls it with its cutoff less an hour, so a name leaves once the spans that carried it
    /// are gone. Not in cluster mode, where peers append names this node does not see.
    /// Returns how many names went.
    pub async fn trim_names(&self, cutoff_ns: i64) -> Result<usize, StorageError> {
        // No flush commits names between the trim and the catalog's deletion.
        let _serial = self.inner.flush_lock.lock().await;
        let removed = lock(&self.inner.names).trim(cutoff_ns);
        let count = removed.services.len() + removed.operations.len();
        if count == 0 {
            return Ok(0);
        }
        if let Err(e) = self.inner.catalog.delete_names(&removed).await {
            lock(&self.inner.names).absorb(removed, now_unix_nanos());
            return Err(e);
        }
        Ok(count)
    }

    /// Segments that start before this are past retention (and may be deleted at any time).
    pub(crate) fn retention_cutoff_ns(&self) -> i64 {
        let retention = i64::try_from(self.inner.cfg.retention.as_nanos()).unwrap_or(i64::MAX);
        now_unix_nanos().saturating_sub(retention)
    }

    /// Makes another table available to [`Store::sql`] under `name`.
    pub fn register_table(&self, name: impl Into<String>, provider: Arc<dyn TableProvider>) {
        let name = name.into();
        let mut tables = lock(&self.inner.tables);
        tables.retain(|(n, _)| *n != name);
        tables.push((name, provider));
    }

    /// The counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let view = self.read_view();
        StoreStats {
            flushes: get(&c.flushes),
            segments_written: get(&c.segments_written),
            bytes_written: get(&c.bytes_written),
            rows_written: get(&c.rows_written),
            segments_pruned: get(&c.segments_pruned),
            segments_read: get(&c.segments_read),
            row_groups_pruned: get(&c.row_groups_pruned),
            row_groups_read: get(&c.row_groups_read),
            segments_deleted: get(&c.segments_deleted),
            orphans_removed: get(&c.orphans_removed),
            segments_quarantined: get(&c.segments_quarantined),
            search_segments_scanned: get(&c.search_segments_scanned),
            search_segments_skipped: get(&c.search_segments_skipped),
            search_row_groups_scanned: get(&c.search_row_groups_scanned),
            replayed_appends_skipped: get(&c.replayed_appends_skipped),
            flush_failures: get(&c.flush_failures),
            failed_segments_deleted: get(&c.failed_segments_deleted),
            segments_rebuilt: get(&c.segments_rebuilt),
            segments_damaged: view.damaged.len() as u64,
            segments: view.segments.len() as u64,
            buffered_rows: view.rows() as u64,
            checkpoint: self.inner.checkpoint.load(Ordering::Acquire),
        }
    }

    /// Deletes or quarantines the segment files found without a catalog row at open, now that
    /// the caller's log is open: `log_first` is the first sequence number it holds (see
    /// [`crate::orphans`]), and the rollup rows of segments merged by a run that stopped
    /// within the grace. Returns (deleted, quarantined) files.
    pub async fn settle_orphans(&self, log_first: u64) -> Result<(usize, usize), StorageError> {
        let found = std::mem::take(&mut *lock(&self.inner.orphans));
        let stored: Vec<(u64, u64)> = (self.read_view().segments.iter())
            .map(|s| (s.wal_seq_min, s.wal_seq_max))
            .collect();
        let (mut deleted, mut quarantined) = (0, 0);
        for path in found {
            let store = self.inner.store.as_ref();
            match orphans::settle(store, &path, log_first, &stored).await? {
                Settled::Deleted => deleted += 1,
                Settled::Quarantined => quarantined += 1,
            }
        }
        let rollups = self.inner.catalog.delete_orphan_rollups().await?;
        if rollups > 0 {
            tracing::info!(rows = rollups, "rollup rows of merged segments deleted");
        }
        let c = &self.inner.counters;
        c.orphans_removed
            .fetch_add(deleted as u64, Ordering::Relaxed);
        c.segments_quarantined
            .fetch_add(quarantined as u64, Ordering::Relaxed);
        Ok((deleted, quarantined))
    }

    /// Closes the catalog connections (buffered spans are not flushed: call [`Store::flush`]).
    pub async fn close(&self) {
        self.inner.catalog.close().await;
    }
}

impl Store {
    /// The epoch of the last change to derived rows (see [`crate::touches`]); read it before
    /// reading derived tables.
    pub fn derived_epoch(&self) -> u64 {
        lock(&self.inner.derived_touches).epoch()
    }

    /// Whether derived rows started in the minute at `minute_ns` changed after `epoch`.
    pub fn derived_changed_since(&self, minute_ns: i64, epoch: u64) -> bool {
        lock(&self.inner.derived_touches).changed_since(minute_ns, epoch)
    }

    /// Records a change to derived rows started within `[min_ns, max_ns]`.
    pub(crate) fn touch_derived(&self, min_ns: i64, max_ns: i64) {
        lock(&self.inner.derived_touches).touch(min_ns, max_ns);
    }
}
