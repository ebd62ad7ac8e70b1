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
//!   [`meshtrace_provenance::ServiceGraph`] from the stored `edges` rows;
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
pub use meshtrace_storage::TraceQuery;
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
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            sql_max_rows: 10_000,
            sql_timeout: Duration::from_secs(30),
            max_traces: 1_500,
        }
    }
}

/// The query layer over one store. Cheap to clone.
#[derive(Clone)]
pub struct Queries {
    store: Store,
    config: QueryConfig,
}

impl Queries {
    pub fn new(store: Store, config: QueryConfig) -> Queries {
        Queries { store, config }
    }

    /// The limits it answers under.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }
}
