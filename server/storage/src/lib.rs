//! Columnar span storage: an Arrow buffer in memory, immutable Parquet segments written through
//! `object_store`, a catalog of segments in SQLite or PostgreSQL, and queries (trace by ID,
//! Jaeger-style trace search, read-only SQL through DataFusion).
//!
//! The server appends spans with their WAL sequence number ([`Store::append`]), flushes on
//! size or age ([`Store::flush_if_due`]) and truncates the WAL up to [`Store::checkpoint`].
//! Buffered spans are queryable at once. The file layout, the flush/commit protocol and the
//! crash cases are described in [`layout`]. Tables derived from spans (provenance) are
//! buffered and flushed the same way by [`DerivedStore`]. Per-minute RED rollups of spans are
//! committed with each span segment ([`rollup`]) and read by [`Store::span_rollups`].

pub mod catalog;
pub mod derived;
pub mod error;
pub mod layout;
pub mod orphans;
pub mod remote;
pub mod rollup;

mod bounded;
mod bounded_ops;
mod budget_store;
mod buffer;
mod cancel;
mod check;
pub mod cluster;
mod commit;
mod compact;
mod concat;
mod object_reader;
mod ownership;
mod pending;
mod query;
mod reader;
mod sql;
mod sql_runtime;
mod store;
mod tag_filter;
pub mod touches;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use meshtrace_model::memory::MemoryBudget;

pub use buffer::NameLimits;
pub use catalog::{DamagedSegment, PartitionMark, SegmentInfo, StoredPrioritySet, StoredProxy};
pub use derived::{DerivedConfig, DerivedSegment, DerivedStats, DerivedStore, DerivedTable};
pub use error::{ErrorCode, StorageError};
pub use remote::object_store_from_url;
pub use sql_runtime::SqlLimits;
pub use store::{span_names, Store};

/// Re-exported so callers name the same types as the store's API.
pub use arrow_array::RecordBatch;
pub use datafusion::catalog::TableProvider;
pub use datafusion::scalar::ScalarValue;
pub use meshtrace_model::{Span, SpanKind, TraceId};

/// How the store is set up.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The root of the object store (segments under `spans/`) and of the default catalog.
    pub data_dir: PathBuf,
    /// `None`: SQLite at `data_dir/catalog.db`; otherwise a `sqlite://` or `postgres://` URL.
    pub catalog_url: Option<String>,
    /// PostgreSQL only: the schema the catalog's tables live in, created if missing (a
    /// tenant's, so that tenants share a database but no table); `None`: the URL's default.
    pub catalog_schema: Option<String>,
    /// Flush once this many rows are buffered.
    pub flush_max_rows: usize,
    /// Flush once the oldest buffered batch is this old.
    pub flush_max_age: Duration,
    /// Segments whose newest span started longer ago than this are deleted.
    pub retention: Duration,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Threads, slots and memory of DataFusion queries.
    pub sql: SqlLimits,
    /// Names the service and operation lists keep.
    pub names: NameLimits,
    /// Rows a compacted span segment holds: smaller segments are merged in the background
    /// ([`Store::compact_segments`]); 0 turns compaction off.
    pub compact_rows: usize,
    /// How long the files of merged segments stay for queries still reading them.
    pub compact_grace: Duration,
    /// `Some(node id)` in cluster mode: several nodes share the object store and the catalog,
    /// so nothing is swept as an orphan at open (a peer may be between its `put` and its
    /// commit), segment names carry the node id, and [`Store::refresh`] reads peers' segments.
    pub cluster_node: Option<String>,
    /// The process's memory budget: no new query plan starts while it is spent.
    pub memory: MemoryBudget,
}

impl StoreConfig {
    /// The defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            ..StoreConfig::default()
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("data"),
            catalog_url: None,
            catalog_schema: None,
            flush_max_rows: 100_000,
            flush_max_age: Duration::from_secs(2),
            retention: Duration::from_secs(7 * 24 * 3600),
            row_group_rows: 16_384,
            sql: SqlLimits::default(),
            names: NameLimits::default(),
            compact_rows: 200_000,
            compact_grace: Duration::from_secs(120),
            cluster_node: None,
            memory: MemoryBudget::unlimited(),
        }
    }
}

/// A Jaeger-style trace search. A trace matches when one of its spans meets every condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub operation: Option<String>,
    /// Each (key, value) must be found among one span's span, resource, scope, event or link
    /// attributes, comparing the value's display string.
    pub tags: Vec<(String, String)>,
    pub start_min_ns: Option<i64>,
    pub start_max_ns: Option<i64>,
    /// `None` or 0: unbounded.
    pub duration_min_ns: Option<i64>,
    /// `None` or 0: unbounded.
    pub duration_max_ns: Option<i64>,
    /// At most this many traces (0: the Jaeger default of 20).
    pub limit: usize,
}

/// Counters for `/metrics` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub flushes: u64,
    pub segments_written: u64,
    pub bytes_written: u64,
    pub rows_written: u64,
    /// Trace-by-ID lookups: segments skipped entirely by statistics and bloom filters.
    pub segments_pruned: u64,
    /// Trace-by-ID lookups: segments from which row groups were read.
    pub segments_read: u64,
    pub row_groups_pruned: u64,
    pub row_groups_read: u64,
    pub segments_deleted: u64,
    /// Segment files without a catalog row deleted (the log replays them), and temporary
    /// files of interrupted writes.
    pub orphans_removed: u64,
    /// Segment files without a catalog row moved to `quarantine/` (the log no longer has them).
    pub segments_quarantined: u64,
    /// Trace searches: segments scanned, and skipped by the catalog's time range and services.
    pub search_segments_scanned: u64,
    pub search_segments_skipped: u64,
    /// Trace searches: row groups of segments scanned (a search reads parts of a large
    /// segment newest first, and may stop inside it).
    pub search_row_groups_scanned: u64,
    /// Appends ignored because their WAL sequence number was at or below the checkpoint.
    pub replayed_appends_skipped: u64,
    /// Flushes that failed (the rows stay buffered and are flushed again).
    pub flush_failures: u64,
    /// Segment files deleted because their catalog commit failed.
    pub failed_segments_deleted: u64,
    /// Damaged segments stored again from the write-ahead log.
    pub segments_rebuilt: u64,
    /// Damaged segments whose spans nothing else holds (gauge).
    pub segments_damaged: u64,
    /// Committed segments now.
    pub segments: u64,
    pub buffered_rows: u64,
    pub checkpoint: u64,
}
