//! Per-minute RED rollups of spans: for every minute, service, operation and span kind, the
//! number of spans (calls), how many had an error status, and a sketch of their durations.
//!
//! # Design
//!
//! Rollups are computed from the very batches a span segment is written from
//! ([`rollups_of`]) and committed in the catalog transaction that commits the segment
//! (`span_rollups` rows carry the segment's ID), so a committed segment always has its rollups
//! and a crash before the commit leaves neither. Retention deletes them with their segment.
//! Spans still in the buffer are rolled up when asked, from the same snapshot of the buffer a
//! span query would read; catalog rows are kept only for segments in that snapshot, so a
//! flush racing a query counts its spans once. Reading a time range costs the rows of its
//! minutes, not the spans in it.
//!
//! A minute is the one the span started in. Duration sketches are
//! [`meshtrace_model::sketch::Sketch`]es (DDSketch, 1% relative error), merged exactly across
//! rows. Names are client-controlled: past [`MAX_SERIES_PER_SEGMENT`] distinct (service,
//! operation, kind) series in one segment, further operations are counted under
//! [`OVERFLOW_OPERATION`].

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{Array, StringArray};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampNanosecondType};
use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use meshtrace_model::sketch::Sketch;
use meshtrace_model::SpanKind;

use crate::error::StorageError;

/// The width of one rollup row (ns).
pub const ROLLUP_STEP_NS: i64 = 60_000_000_000;
/// Distinct (service, operation, kind) series one segment rolls up before folding operations.
pub const MAX_SERIES_PER_SEGMENT: usize = 10_000;
/// The operation further operations of a segment past the series limit are counted under.
pub const OVERFLOW_OPERATION: &str = "(other operations)";

/// What one rollup row counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    /// Start of the minute (ns since the epoch).
    pub minute_ns: i64,
    pub service: String,
    pub operation: String,
    pub kind: SpanKind,
}

/// Calls, errors and durations of one key.
#[derive(Clone, Debug, Default)]
pub struct Rollup {
    pub calls: u64,
    pub errors: u64,
    /// Span durations (ns).
    pub durations: Sketch,
}

impl Rollup {
    /// Adds another rollup of the same key.
    pub fn merge(&mut self, other: &Rollup) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.durations.merge(&other.durations);
    }
}

/// Rollups by key.
pub type Rollups = BTreeMap<RollupKey, Rollup>;

/// Which rollups a query wants: some services, some span kinds (all when empty), minutes
/// starting in `[from_ns, to_ns]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollupFilter {
    pub services: Vec<String>,
    pub kinds: Vec<SpanKind>,
    pub from_ns: i64,
    pub to_ns: i64,
}

impl RollupFilter {
    /// Whether a key is wanted.
    pub fn wants(&self, key: &RollupKey) -> bool {
        self.wants_series(&key.service, key.kind)
            && key.minute_ns >= self.from_ns
            && key.minute_ns <= self.to_ns
    }

    fn wants_series(&self, service: &str, kind: SpanKind) -> bool {
        self.services.iter().any(|s| s == service)
            && (self.kinds.is_empty() || self.kinds.contains(&kind))
    }
}

/// The start of the minute `ns` falls in.
pub fn minute_of(ns: i64) -> i64 {
    ns.div_euclid(ROLLUP_STEP_NS).saturating_mul(ROLLUP_STEP_NS)
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, StorageError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| ArrowError::SchemaError(format!("{name} is missing or not a string")).into())
}

/// A rollup key borrowing its names from the batches being rolled up.
type BorrowedKey<'a> = (i64, &'a str, &'a str, SpanKind);

/// Rolls up span batches (the span schema); rows of services `only` wants, if given. Names
/// are borrowed from the batches while counting and copied once per key at the end.
pub fn rollups_of(
    batches: &[RecordBatch],
    only: Option<&RollupFilter>,
) -> Result<Rollups, StorageError> {
    let mut counted: HashMap<BorrowedKey<'_>, Rollup> = HashMap::new();
    let mut series: HashSet<(&str, &str, SpanKind)> = HashSet::new();
    for batch in batches {
        let service = strings(batch, "service_name")?;
        let name = strings(batch, "name")?;
        let kind = strings(batch, "kind")?;
        let status = strings(batch, "status_code")?;
        let start = batch
            .column_by_name("start_time")
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .ok_or_else(|| ArrowError::SchemaError("start_time has the wrong type".into()))?;
        let duration = batch
            .column_by_name("duration_ns")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| ArrowError::SchemaError("duration_ns has the wrong type".into()))?;
        for row in 0..batch.num_rows() {
            let span_kind = SpanKind::parse(kind.value(row)).unwrap_or_default();
            let svc = service.value(row);
            if only.is_some_and(|f| !f.wants_series(svc, span_kind)) {
                continue;
            }
            let mut op = name.value(row);
            if !series.contains(&(svc, op, span_kind)) {
                if series.len() < MAX_SERIES_PER_SEGMENT {
                    series.insert((svc, op, span_kind));
                } else {
                    op = OVERFLOW_OPERATION;
                }
            }
            let minute_ns = minute_of(start.value(row));
            if only.is_some_and(|f| minute_ns < f.from_ns || minute_ns > f.to_ns) {
                continue;
            }
            let r = counted.entry((minute_ns, svc, op, span_kind)).or_default();
            r.calls += 1;
            r.errors += u64::from(status.value(row) == "error");
            r.durations.add(if duration.is_null(row) {
                0
            } else {
                duration.value(row)
            });
        }
    }
    Ok(counted
        .into_iter()
        .map(|((minute_ns, service, operation, kind), r)| {
            let key = RollupKey {
                minute_ns,
                service: service.to_string(),
                operation: operation.to_string(),
                kind,
            };
            (key, r)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::arrow_conv::spans_to_batch;
    use meshtrace_model::{Span, StatusCode};

    fn span(service: &str, name: &str, start: i64, ms: i64, error: bool) -> Span {
        Span {
            service_name: service.into(),
            name: name.into(),
            kind: SpanKind::Server,
            start_unix_nano: start,
            duration_nano: ms * 1_000_000,
            status_code: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            ..Span::default()
        }
    }

    #[test]
    fn counts_calls_errors_and_durations_per_minute() {
        let m = ROLLUP_STEP_NS;
        let spans = vec![
            span("a", "GET", 10 * m + 1, 10, false),
            span("a", "GET", 10 * m + 2, 30, true),
            span("a", "GET", 11 * m, 20, false),
            span("b", "PUT", 10 * m, 5, false),
        ];
        let batch = spans_to_batch(&spans).unwrap();
        let all = rollups_of(std::slice::from_ref(&batch), None).unwrap();
        assert_eq!(all.len(), 3);
        let first = all.values().next().unwrap();
        assert_eq!((first.calls, first.errors), (2, 1));
        assert_eq!(first.durations.quantile(1.0), Some(30_000_000.0));
        let only_a = RollupFilter {
            services: vec!["a".into()],
            kinds: vec![SpanKind::Server],
            from_ns: 11 * m,
            to_ns: 12 * m,
        };
        let some = rollups_of(&[batch], Some(&only_a)).unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some.keys().next().unwrap().minute_ns, 11 * m);
    }

    #[test]
    fn series_past_the_limit_fold_into_one_operation() {
        let spans: Vec<Span> = (0..MAX_SERIES_PER_SEGMENT + 5)
            .map(|i| span("a", &format!("op{i}"), 0, 1, false))
            .collect();
        let all = rollups_of(&[spans_to_batch(&spans).unwrap()], None).unwrap();
        assert_eq!(all.len(), MAX_SERIES_PER_SEGMENT + 1);
        let other = all
            .iter()
            .find(|(k, _)| k.operation == OVERFLOW_OPERATION)
            .unwrap();
        assert_eq!(other.1.calls, 5);
    }
}
