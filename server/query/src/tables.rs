//! The Arrow form of the derived provenance tables `traces`, `edges` and `critical_path`: their
//! schemas (the same in memory, in Parquet and in SQL) and the conversion of
//! [`meshtrace_provenance::Derived`] rows into record batches. The server's provenance task
//! writes through [`Rows`]; the queries of this crate read the same columns back.
//!
//! Every row carries the trace's `start_time` (for retention and time filters: an edge is in
//! the minute its trace started, and the same value on all of a trace's rows compresses to
//! almost nothing; its span's own start is in the span row) and the `version` of the derivation
//! (its completion time in ns): the SQL tables show only the latest version per trace. An
//! edge's `dimensions` (the service graph's extra dimensions, `client_<key>` and
//! `server_<key>`) are null unless some are configured; segments written before the column
//! existed read it as null.
//!
//! Derived rows do not repeat what the span rows hold, to keep them to a few bytes a span. An
//! edge names no span: its client span is the one whose child is its server span, in the span
//! rows (`GET /api/v1/traces/{id}/provenance` lists one trace's edges with their span IDs); a
//! random 8-byte span ID per edge was 4 of the 9.5 bytes a span the edges cost. Its
//! proxy/network overhead is `client_duration_ns - server_duration_ns`, and `critical_path`
//! holds one row per trace and (service, operation) on the path, with the self time summed and
//! the `spans` counted (the per-span path of one trace is the same endpoint). Segments written
//! before that keep their extra columns (`client_span_id`, `server_span_id`, `span_id`,
//! `overhead_ns`) on disk, unread; their `spans` read as null (each of their rows was one span:
//! `coalesce(spans, 1)`).

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeBinaryArray, Int64Array, MapBuilder, StringArray,
    StringBuilder, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use meshtrace_model::schema::timestamp_type;
use meshtrace_provenance::{CompletionReason, CriticalPathRow, Derived, EdgeRow, Name};
use meshtrace_storage::{DerivedTable, RecordBatch};

pub const TRACES: &str = "traces";
pub const EDGES: &str = "edges";
pub const CRITICAL_PATH: &str = "critical_path";

fn f(name: &str, ty: DataType, nullable: bool) -> Field {
    Field::new(name, ty, nullable)
}

fn id16() -> DataType {
    DataType::FixedSizeBinary(16)
}

fn traces_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        use DataType::{Boolean, Int64, Utf8};
        Arc::new(Schema::new(vec![
            f("trace_id", id16(), false),
            f("class", Utf8, false),
            f("root_service", Utf8, false),
            f("root_operation", Utf8, false),
            f("start_time", timestamp_type(), false),
            f("duration_ns", Int64, false),
            f("span_count", Int64, false),
            f("service_count", Int64, false),
            f("error", Boolean, false),
            f("critical_path_ns", Int64, false),
            f("complete", Boolean, false),
            f("roots", Int64, false),
            f("orphans", Int64, false),
            f("completion", Utf8, false),
            f("version", Int64, false),
        ]))
    })
    .clone()
}

fn edges_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        use DataType::{Int64, Utf8};
        Arc::new(Schema::new(vec![
            f("trace_id", id16(), false),
            f("class", Utf8, false),
            f("caller_service", Utf8, false),
            f("callee_service", Utf8, false),
            f("operation", Utf8, false),
            f("connection_type", Utf8, false),
            f("client_duration_ns", Int64, true),
            f("server_duration_ns", Int64, true),
            f("status", Utf8, false),
            f("start_time", timestamp_type(), false),
            f("version", Int64, false),
            f("dimensions", dimensions_type(), true),
        ]))
    })
    .clone()
}

/// The names [`MapBuilder`] gives a string-to-string map's entries.
fn map_fields() -> (Field, Field, Field) {
    (
        Field::new("keys", DataType::Utf8, false),
        Field::new("values", DataType::Utf8, true),
        Field::new("entries", DataType::Null, false),
    )
}

/// `Map<Utf8, Utf8>`, as [`MapBuilder`] builds it.
fn dimensions_type() -> DataType {
    let (key, value, entries) = map_fields();
    DataType::Map(
        Arc::new(Field::new(
            entries.name(),
            DataType::Struct(Fields::from(vec![key, value])),
            false,
        )),
        false,
    )
}

fn critical_path_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        use DataType::{Int64, Utf8};
        Arc::new(Schema::new(vec![
            f("trace_id", id16(), false),
            f("class", Utf8, false),
            f("service", Utf8, false),
            f("operation", Utf8, false),
            f("self_time_ns", Int64, false),
            // Null in segments written before rows were summed per operation (one per span).
            f("spans", Int64, true),
            f("start_time", timestamp_type(), false),
            f("version", Int64, false),
        ]))
    })
    .clone()
}

/// The three derived tables.
pub fn tables() -> Vec<DerivedTable> {
    [
        (TRACES, traces_schema()),
        (EDGES, edges_schema()),
        (CRITICAL_PATH, critical_path_schema()),
    ]
    .into_iter()
    .map(|(name, schema)| DerivedTable {
        name: name.to_string(),
        schema,
    })
    .collect()
}

fn reason_name(r: CompletionReason) -> &'static str {
    match r {
        CompletionReason::Idle => "idle",
        CompletionReason::MaxAge => "max_age",
        CompletionReason::Evicted => "evicted",
    }
}

/// One derivation ready to be written.
struct Entry {
    derived: Derived,
    version: i64,
    reason: CompletionReason,
}

/// Rows of many traces, gathered before they become one batch per table.
#[derive(Default)]
pub struct Rows {
    entries: Vec<Entry>,
}

impl Rows {
    /// Adds one trace's rows.
    pub fn push(&mut self, derived: Derived, version: i64, reason: CompletionReason) {
        self.entries.push(Entry {
            derived,
            version,
            reason,
        });
    }

    /// One batch per table, with the table name.
    pub fn into_batches(self) -> Result<Vec<(&'static str, RecordBatch)>, ArrowError> {
        Ok(vec![
            (TRACES, self.traces_batch()?),
            (EDGES, self.edges_batch()?),
            (CRITICAL_PATH, self.critical_path_batch()?),
        ])
    }

    fn traces_batch(&self) -> Result<RecordBatch, ArrowError> {
        let t: Vec<(&Entry, &meshtrace_provenance::TraceRow)> =
            self.entries.iter().map(|e| (e, &e.derived.trace)).collect();
        let int = |g: &dyn Fn(&(&Entry, &meshtrace_provenance::TraceRow)) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(t.iter().map(g)))
        };
        type T<'a> = (&'a Entry, &'a meshtrace_provenance::TraceRow);
        let text = |g: &dyn for<'a> Fn(&'a T<'a>) -> &'a str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(t.iter().map(g)))
        };
        let columns: Vec<ArrayRef> = vec![
            ids16(t.iter().map(|(_, r)| r.trace_id))?,
            text(&|(_, r)| &r.class),
            text(&|(_, r)| &r.root_service),
            text(&|(_, r)| &r.root_operation),
            times(t.iter().map(|(_, r)| r.start_ns)),
            int(&|(_, r)| r.duration_ns),
            int(&|(_, r)| r.span_count as i64),
            int(&|(_, r)| r.service_count as i64),
            Arc::new(BooleanArray::from_iter(
                t.iter().map(|(_, r)| Some(r.error)),
            )),
            int(&|(_, r)| r.critical_path_ns),
            Arc::new(BooleanArray::from_iter(
                t.iter().map(|(_, r)| Some(r.complete)),
            )),
            int(&|(e, _)| e.derived.counters.roots as i64),
            int(&|(e, _)| e.derived.counters.orphans as i64),
            text(&|(e, _)| reason_name(e.reason)),
            int(&|(e, _)| e.version),
        ];
        RecordBatch::try_new(traces_schema(), columns)
    }

    fn edges_batch(&self) -> Result<RecordBatch, ArrowError> {
        let rows: Vec<(&Entry, &EdgeRow, i64)> = self
            .entries
            .iter()
            .flat_map(|e| {
                let start = e.derived.trace.start_ns;
                e.derived.edges.iter().map(move |r| (e, r, start))
            })
            .collect();
        let text = |g: &dyn Fn(&EdgeRow) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| g(r.1))))
        };
        let opt_int = |g: &dyn Fn(&EdgeRow) -> Option<i64>| -> ArrayRef {
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| g(r.1))))
        };
        let columns: Vec<ArrayRef> = vec![
            ids16(rows.iter().map(|r| r.1.trace_id))?,
            text(&|r| &r.class),
            text(&|r| &r.caller_service),
            text(&|r| &r.callee_service),
            text(&|r| &r.operation),
            text(&|r| r.connection_type.as_str()),
            opt_int(&|r| r.client_duration_ns),
            opt_int(&|r| r.server_duration_ns),
            text(&|r| r.status.as_str()),
            times(rows.iter().map(|r| r.2)),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.0.version),
            )),
            dimensions(rows.iter().map(|r| r.1))?,
        ];
        RecordBatch::try_new(edges_schema(), columns)
    }

    /// One row per trace and (service, operation) on its critical path, in the order the
    /// path first reaches it: the self time summed and the spans counted.
    fn critical_path_batch(&self) -> Result<RecordBatch, ArrowError> {
        let rows: Vec<(&Entry, PathSum)> = self
            .entries
            .iter()
            .flat_map(|e| path_sums(&e.derived.critical_path).map(move |r| (e, r)))
            .collect();
        let text = |g: &dyn Fn(&PathSum) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| g(&r.1))))
        };
        let int = |g: &dyn Fn(&(&Entry, PathSum)) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(rows.iter().map(g)))
        };
        let columns: Vec<ArrayRef> = vec![
            ids16(rows.iter().map(|r| r.0.derived.trace.trace_id))?,
            text(&|r| &r.class),
            text(&|r| &r.service),
            text(&|r| &r.operation),
            int(&|r| r.1.self_time_ns),
            int(&|r| r.1.spans),
            times(rows.iter().map(|r| r.0.derived.trace.start_ns)),
            int(&|r| r.0.version),
        ];
        RecordBatch::try_new(critical_path_schema(), columns)
    }
}

/// A trace's critical path summed per (service, operation).
struct PathSum {
    class: Name,
    service: Name,
    operation: Name,
    self_time_ns: i64,
    spans: i64,
}

/// Sums the path's rows per (service, operation), in the order the path first reaches each
/// (a trace's path holds a few dozen rows: a linear search is enough).
fn path_sums(rows: &[CriticalPathRow]) -> impl Iterator<Item = PathSum> {
    let mut sums: Vec<PathSum> = Vec::new();
    for r in rows {
        match sums
            .iter_mut()
            .find(|s| s.service == r.service && s.operation == r.operation)
        {
            Some(s) => {
                s.self_time_ns += r.self_time_ns;
                s.spans += 1;
            }
            None => sums.push(PathSum {
                class: r.class.clone(),
                service: r.service.clone(),
                operation: r.operation.clone(),
                self_time_ns: r.self_time_ns,
                spans: 1,
            }),
        }
    }
    sums.into_iter()
}

/// The `dimensions` column: null for rows without extra dimensions.
fn dimensions<'a>(rows: impl Iterator<Item = &'a EdgeRow>) -> Result<ArrayRef, ArrowError> {
    let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for row in rows {
        for (k, v) in &row.dimensions {
            b.keys().append_value(k);
            b.values().append_value(v);
        }
        b.append(!row.dimensions.is_empty())?;
    }
    Ok(Arc::new(b.finish()))
}

fn ids16(ids: impl Iterator<Item = [u8; 16]>) -> Result<ArrayRef, ArrowError> {
    let ids: Vec<[u8; 16]> = ids.collect();
    Ok(Arc::new(
        FixedSizeBinaryArray::try_from_sparse_iter_with_size(ids.into_iter().map(Some), 16)?,
    ))
}

fn times(t: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter_values(t).with_timezone("UTC"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use meshtrace_model::{Span, SpanKind};
    use meshtrace_provenance::derive;

    fn span(id: u8, parent: Option<u8>, service: &str, kind: SpanKind, start: i64) -> Span {
        Span {
            trace_id: [7; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            service_name: service.into(),
            kind,
            name: format!("op{id}"),
            start_unix_nano: start,
            duration_nano: 100 - start,
            ..Span::default()
        }
    }

    #[test]
    fn batches_match_the_schemas_and_edges_start_with_their_trace() {
        let spans = [
            span(1, None, "a", SpanKind::Server, 0),
            span(2, Some(1), "a", SpanKind::Client, 10),
            span(3, Some(2), "b", SpanKind::Server, 20),
        ];
        let mut rows = Rows::default();
        rows.push(derive(&spans, &[]), 42, CompletionReason::Idle);
        let batches = rows.into_batches().unwrap();
        let by_name: HashMap<&str, &RecordBatch> = batches.iter().map(|(n, b)| (*n, b)).collect();
        assert_eq!(by_name[TRACES].num_rows(), 1);
        // user -> a (virtual client of the root SERVER span) and a -> b.
        let edges = by_name[EDGES];
        assert_eq!(edges.num_rows(), 2);
        let starts = edges
            .column_by_name("start_time")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        let callers = edges
            .column_by_name("caller_service")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for i in 0..2 {
            assert_eq!(starts.value(i), 0, "{}", callers.value(i));
        }
        assert!(by_name[CRITICAL_PATH].num_rows() >= 1);
        for t in tables() {
            assert_eq!(by_name[t.name.as_str()].schema(), t.schema);
        }
    }
}
