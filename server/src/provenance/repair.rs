//! Start-up repair of the derived tables after a crash.
//!
//! Derived rows have no write-ahead log (see `meshtrace_storage::derived`): rows buffered when
//! the process dies are lost. The traces whose spans are still in the span write-ahead log are
//! replayed and derived again, but a trace that completed after the last derived flush may
//! have all its spans in Parquet already (span segments flush every few seconds, derived rows
//! every 30 s by default), so replay never sees it. At start-up, [`Provenance::repair`] looks
//! for stored traces without any derived row among the spans that started after the newest
//! `traces` segment was written less the assembler's `max_age` and `idle` (a trace completed
//! after that flush started no earlier), and feeds their stored spans to the assembler as replayed spans:
//! they complete after the idle window and are derived from every stored span, like a WAL
//! replay. At most [`REPAIR_MAX_TRACES`] traces (and half of `max_open_traces`) are repaired
//! per start.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use meshtrace_model::{Span, TraceId};
use meshtrace_storage::ScalarValue;

use super::Provenance;
use crate::config::ProvenanceSettings;
use meshtrace_query::tables::TRACES;

/// Most traces re-derived by one start-up repair.
pub const REPAIR_MAX_TRACES: usize = 100_000;
/// Traces read from the store per lookup.
const CHUNK: usize = 1_000;
/// How long the query looking for traces without rows may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

impl Provenance {
    /// Feeds stored traces that have no derived row to the assembler (see the module docs);
    /// returns how many.
    pub async fn repair(&self, settings: &ProvenanceSettings) -> anyhow::Result<usize> {
        let since = self.repair_since(settings)?;
        let max_age = nanos(settings.max_age);
        let ts = |ns: i64| ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into()));
        // A trace's row carries its start, at most `max_age` before any of its spans.
        let sql = format!(
            "SELECT DISTINCT trace_id FROM spans WHERE start_time >= $1 \
             EXCEPT SELECT trace_id FROM {TRACES}_versions WHERE start_time >= $2"
        );
        let params = vec![ts(since), ts(since.saturating_sub(max_age))];
        // Fed all at once, they must fit among the open traces with room for live ones.
        let cap = REPAIR_MAX_TRACES.min(settings.max_open_traces / 2).max(1);
        let batches = self
            .store
            .sql_with_params(&sql, params, cap, QUERY_TIMEOUT)
            .await
            .context("looking for stored traces without derived rows")?;
        let mut ids: Vec<TraceId> = Vec::new();
        for batch in &batches {
            let col = batch
                .column(0)
                .as_fixed_size_binary_opt()
                .context("trace_id is not 16-byte binary")?;
            let valid = (0..col.len()).filter(|&i| col.is_valid(i));
            ids.extend(valid.filter_map(|i| TraceId::try_from(col.value(i)).ok()));
        }
        if ids.len() >= cap {
            tracing::warn!(
                cap,
                "more stored traces may lack derived rows than one start-up repair takes"
            );
        }
        for chunk in ids.chunks(CHUNK) {
            let wanted: BTreeSet<TraceId> = chunk.iter().copied().collect();
            let found = self.store.traces(&wanted).await?;
            let spans: Vec<Span> = found.into_values().flatten().collect();
            self.replay(spans).await;
        }
        Ok(ids.len())
    }

    /// The earliest span start a trace completed after the newest derived flush can have: the
    /// flush's time (now less the flush age when nothing was flushed yet) less `max_age` and
    /// `idle`. Span times come from the senders' clocks, compared here with the server's: data
    /// sent with timestamps far in the past (imported history) is not repaired.
    fn repair_since(&self, settings: &ProvenanceSettings) -> anyhow::Result<i64> {
        let newest = self
            .derived
            .segments(TRACES)?
            .iter()
            .map(|s| s.created_at_ns)
            .max();
        let flushed = newest.unwrap_or_else(|| {
            let now = meshtrace_model::time::now_unix_nanos();
            now.saturating_sub(nanos(settings.flush_age))
        });
        Ok(flushed.saturating_sub(nanos(settings.max_age + settings.idle)))
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
