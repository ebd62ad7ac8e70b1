//! The typed query layer: every question the HTTP APIs ask of stored data, as a typed function
//! over the store that answers a type the API serializes as it is. Handlers parse request
//! parameters into these inputs, call one function and return what it answers; they build no
//! SQL and no JSON by hand. The tests that hold provenance to third-party golden data call the
//! same functions.
//!
//! - [`adjust`]: the adjusters a trace goes through before it is answered (Zipkin shared
//!   span IDs, clock skew);
//! - [`traces`]: a trace by ID, many by ID, Jaeger search, service and operation names;
//! - [`graph`]: the service graph of a window and Jaeger's dependency links, counted by
//!   [`meshtrace_provenance::ServiceGraph`] from the stored `edges` rows, whole minutes from
//!   the rollups of [`graph_rollup`];
//! - [`provenance`]: one trace's class, call tree and critical path; the classes of many;
//! - [`red`]: RED metrics per service and operation over time (Jaeger SPM), from the
//!   per-minute rollups the store commits with its segments;
//! - [`sql`]: read-only SQL with row and time limits;
//! - [`tables`]: the Arrow form of the derived tables (`traces`, `edges`, `critical_path`),
//!   written by the server's provenance task and read back here.
//!
//! Request values reach SQL only as bound parameters; a column a query reads that is missing
//! or of the wrong type is an error naming it ([`QueryError::Column`]), never a silent zero.

pub mod adjust;
mod columns;
pub mod error;
pub mod graph;
pub mod graph_rollup;
pub mod provenance;
pub mod red;
pub mod sql;
pub mod tables;
pub mod traces;
pub mod window;

use std::time::Duration;

use meshtrace_storage::Store;
use serde::{Deserialize, Serialize};

pub use adjust::SpanWarning;
pub use error::{ErrorCode, QueryError};
pub use graph::{DependencyLink, GraphView};
pub use meshtrace_storage::{DamagedSegment, TraceQuery};
pub use provenance::{TraceClass, TraceProvenance};
pub use red::{MetricFamily, RedMetric, RedQuery};
pub use sql::SqlResult;
pub use traces::{Operation, Trace};
pub use window::TimeRange;

/// Limits of the query APIs (`[query]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Rows a SQL answer holds at most (the rest is cut, `truncated: true`).
    pub sql_max_rows: usize,
    /// A query running longer fails with 504.
    #[serde(with = "humantime_serde")]
    pub sql_timeout: Duration,
    /// Traces a search answers at most.
    pub max_traces: usize,
    /// Threads SQL plans run on, apart from ingest (default: half the cores, at least one).
    pub threads: usize,
    /// SQL plans running at once; more wait up to `queue_wait`, then get 429.
    pub max_concurrent: usize,
    #[serde(with = "humantime_serde")]
    pub queue_wait: Duration,
    /// Memory all running plans may hold together, in MiB (sorts spill, the rest fails).
    pub memory_mib: usize,
    /// Memory the per-minute rollups of the service graph may take, in MiB (0: none, every
    /// graph and dependencies query reads its whole window).
    pub graph_cache_mib: usize,
}

impl QueryConfig {
    /// The store's limits for DataFusion plans.
    pub fn sql_limits(&self) -> meshtrace_storage::SqlLimits {
        meshtrace_storage::SqlLimits {
            threads: self.threads.max(1),
            max_concurrent: self.max_concurrent.max(1),
            queue_wait: self.queue_wait,
            memory_bytes: self.memory_mib.max(16) << 20,
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        let limits = meshtrace_storage::SqlLimits::default();
        QueryConfig {
            sql_max_rows: 10_000,
            sql_timeout: Duration::from_secs(30),
            max_traces: 1_500,
            threads: limits.threads,
            max_concurrent: limits.max_concurrent,
            queue_wait: limits.queue_wait,
            memory_mib: limits.memory_bytes >> 20,
            graph_cache_mib: 64,
        }
    }
}

/// The query layer over one store. Cheap to clone.
#[derive(Clone)]
pub struct Queries {
    store: Store,
    config: QueryConfig,
    graphs: graph_rollup::MinuteCache,
}

impl Queries {
    pub fn new(store: Store, config: QueryConfig) -> Queries {
        let graphs = graph_rollup::MinuteCache::new(config.graph_cache_mib << 20);
        Queries {
            store,
            config,
            graphs,
        }
    }

    /// The limits it answers under.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// The damaged segments (spans nothing else holds) that could hold spans started between
    /// `start_ns` and `end_ns` (either open): an answer over that range left them out.
    pub fn skipped_segments(
        &self,
        start_ns: Option<i64>,
        end_ns: Option<i64>,
    ) -> Vec<DamagedSegment> {
        let (start, end) = (start_ns.unwrap_or(i64::MIN), end_ns.unwrap_or(i64::MAX));
        let mut damaged = self.store.damaged_segments();
        damaged.retain(|d| d.overlaps(start, end));
        damaged
    }
}
