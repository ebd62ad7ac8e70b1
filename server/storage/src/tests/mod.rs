//! Tests of the whole store: buffer and Parquet round trips, pruning, crash leftovers, the
//! checkpoint, retention, trace search semantics, SQL, segment size and PostgreSQL.

mod cluster;
mod cluster_compact;
mod compact;
mod damage;
mod derived;
pub(crate) mod gen;
mod postgres;
mod search;
mod size;
mod store;

use std::path::Path;
use std::time::Duration;

use meshtrace_model::Span;

use crate::{Store, StoreConfig};

/// A store on `dir` with the default SQLite catalog and flushes only on demand.
pub async fn open(dir: &Path) -> Store {
    Store::open(config(dir)).await.expect("open store")
}

pub fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        flush_max_age: Duration::from_secs(3600),
        ..StoreConfig::new(dir)
    }
}

/// A span with its attributes sorted by key, for comparisons after a round trip (promoted
/// attributes come back first).
pub fn normalized(mut s: Span) -> Span {
    s.attributes.sort_by(|a, b| a.key.cmp(&b.key));
    s
}

pub fn normalized_all(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| (s.trace_id, s.start_unix_nano, s.span_id));
    spans.into_iter().map(normalized).collect()
}

pub use meshtrace_model::time::now_unix_nanos as now_ns;

/// The rows of a SQL answer as text, cells separated by single spaces (Arrow's table format).
pub async fn rows(store: &Store, sql: &str) -> Vec<String> {
    let batches = store.sql(sql, 100, Duration::from_secs(10)).await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    text.lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}
