//! Conversion between slices of [`Span`] and Arrow record batches of [`spans_schema`].

use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampNanosecondType};
use arrow_array::{Array, ArrayRef, MapArray, RecordBatch, TimestampNanosecondArray};

use crate::arrow_map::{append_map, map_builder, read_map, Strings};
use crate::arrow_nested::{events_array, links_array, Nested};
use crate::schema::spans_schema;
use crate::span::{AttrValue, KeyValue, Span, SpanKind, StatusCode, PROMOTED};
use crate::ModelError;

/// Which promoted column (index into [`PROMOTED`]) an attribute goes to, if any.
fn promoted_index(kv: &KeyValue) -> Option<usize> {
    PROMOTED.iter().position(|(_, key, is_int)| {
        *key == kv.key
            && match kv.value {
                AttrValue::Int(_) => *is_int,
                AttrValue::Str(_) => !*is_int,
                _ => false,
            }
    })
}

fn non_empty(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// Builds one record batch of the `spans` schema from spans.
pub fn spans_to_batch(spans: &[Span]) -> Result<RecordBatch, ModelError> {
    let n = spans.len();
    let mut trace_id = FixedSizeBinaryBuilder::with_capacity(n, 16);
    let mut span_id = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut parent = FixedSizeBinaryBuilder::with_capacity(n, 8);
    // The names are sized up front: growing a builder copies everything appended so far.
    let names = |f: fn(&Span) -> &str| {
        StringBuilder::with_capacity(n, spans.iter().map(|s| f(s).len()).sum())
    };
    let mut strings: Vec<StringBuilder> = vec![
        StringBuilder::new(),       // trace_state
        names(|s| &s.service_name), // service_name
        names(|s| &s.name),         // name
        names(|s| s.kind.as_str()),
        names(|s| s.status_code.as_str()),
        StringBuilder::new(), // status_message
        StringBuilder::new(), // scope_name
    ];
    let mut start = Vec::with_capacity(n);
    let mut duration = Int64Builder::with_capacity(n);
    let mut promoted_str: Vec<StringBuilder> =
        PROMOTED.iter().map(|_| StringBuilder::new()).collect();
    let mut promoted_int: Vec<Int64Builder> =
        PROMOTED.iter().map(|_| Int64Builder::new()).collect();
    let mut attrs = map_builder(n);
    let mut resource = map_builder(n);
    let mut scope = map_builder(n);
    let mut types_col = StringBuilder::new();

    let mut rest: Vec<&KeyValue> = Vec::new();
    for s in spans {
        trace_id.append_value(s.trace_id)?;
        span_id.append_value(s.span_id)?;
        match s.parent_span_id {
            Some(p) => parent.append_value(p)?,
            None => parent.append_null(),
        }
        strings[0].append_option(non_empty(&s.trace_state));
        strings[1].append_value(&s.service_name);
        strings[2].append_value(&s.name);
        strings[3].append_value(s.kind.as_str());
        strings[4].append_value(s.status_code.as_str());
        strings[5].append_option(non_empty(&s.status_message));
        strings[6].append_option(non_empty(&s.scope_name));
        start.push(s.start_unix_nano);
        duration.append_value(s.duration_nano);

        let mut promoted: [Option<&AttrValue>; PROMOTED.len()] = [None; PROMOTED.len()];
        rest.clear();
        for kv in &s.attributes {
            match promoted_index(kv) {
                Some(i) if promoted[i].is_none() => promoted[i] = Some(&kv.value),
                _ => rest.push(kv),
            }
        }
        for (i, (_, _, is_int)) in PROMOTED.iter().enumerate() {
            match (promoted[i], is_int) {
                (Some(AttrValue::Int(v)), true) => promoted_int[i].append_value(*v),
                (_, true) => promoted_int[i].append_null(),
                (Some(AttrValue::Str(v)), false) => promoted_str[i].append_value(v),
                (_, false) => promoted_str[i].append_null(),
            }
        }
        let a = append_map(&mut attrs, rest.iter().copied())?;
        let r = append_map(&mut resource, s.resource_attributes.iter())?;
        let sc = append_map(&mut scope, s.scope_attributes.iter())?;
        if a.is_empty() && r.is_empty() && sc.is_empty() {
            types_col.append_null();
        } else {
            let v = serde_json::json!({"a": a, "r": r, "s": sc});
            types_col.append_value(v.to_string());
        }
    }
    let mut scope_version = StringBuilder::new();
    for s in spans {
        scope_version.append_option((!s.scope_version.is_empty()).then_some(&s.scope_version));
    }

    let ts: TimestampNanosecondArray = TimestampNanosecondArray::from(start).with_timezone("UTC");
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(parent.finish()),
        Arc::new(strings[0].finish()),
        Arc::new(strings[1].finish()),
        Arc::new(strings[2].finish()),
        Arc::new(strings[3].finish()),
        Arc::new(ts),
        Arc::new(duration.finish()),
        Arc::new(strings[4].finish()),
        Arc::new(strings[5].finish()),
        Arc::new(strings[6].finish()),
        Arc::new(scope_version.finish()),
    ];
    for (i, (_, _, is_int)) in PROMOTED.iter().enumerate() {
        if *is_int {
            columns.push(Arc::new(promoted_int[i].finish()));
        } else {
            columns.push(Arc::new(promoted_str[i].finish()));
        }
    }
    columns.push(Arc::new(attrs.finish()));
    columns.push(Arc::new(resource.finish()));
    columns.push(Arc::new(scope.finish()));
    columns.push(Arc::new(types_col.finish()));
    columns.push(events_array(spans)?);
    columns.push(links_array(spans)?);
    Ok(RecordBatch::try_new(spans_schema(), columns)?)
}

fn column<'a>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a ArrayRef, ModelError> {
    batch.column_by_name(name).ok_or(ModelError::Column(name))
}

fn strings<'a>(batch: &'a RecordBatch, name: &'static str) -> Result<Strings<'a>, ModelError> {
    Ok(Strings(column(batch, name)?.as_ref()))
}

/// Rebuilds spans from a record batch holding every column of [`spans_schema`].
pub fn batch_to_spans(batch: &RecordBatch) -> Result<Vec<Span>, ModelError> {
    let trace_id = column(batch, "trace_id")?
        .as_fixed_size_binary_opt()
        .ok_or(ModelError::Column("trace_id"))?;
    let span_id = column(batch, "span_id")?
        .as_fixed_size_binary_opt()
        .ok_or(ModelError::Column("span_id"))?;
    let parent = column(batch, "parent_span_id")?
        .as_fixed_size_binary_opt()
        .ok_or(ModelError::Column("parent_span_id"))?;
    let start = column(batch, "start_time")?
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or(ModelError::Column("start_time"))?;
    let duration = column(batch, "duration_ns")?
        .as_primitive_opt::<Int64Type>()
        .ok_or(ModelError::Column("duration_ns"))?;
    let (trace_state, service, name, kind) = (
        strings(batch, "trace_state")?,
        strings(batch, "service_name")?,
        strings(batch, "name")?,
        strings(batch, "kind")?,
    );
    let (status, status_msg, scope_name, scope_version) = (
        strings(batch, "status_code")?,
        strings(batch, "status_message")?,
        strings(batch, "scope_name")?,
        strings(batch, "scope_version")?,
    );
    let map = |n: &'static str| -> Result<&MapArray, ModelError> {
        column(batch, n)?.as_map_opt().ok_or(ModelError::Column(n))
    };
    let (attrs, resource, scope) = (
        map("attributes")?,
        map("resource_attributes")?,
        map("scope_attributes")?,
    );
    let types = strings(batch, "attribute_types")?;
    let events = Nested::new(column(batch, "events")?, "events")?;
    let links = Nested::new(column(batch, "links")?, "links")?;
    let promoted: Vec<&ArrayRef> = PROMOTED
        .iter()
        .map(|(c, _, _)| column(batch, c))
        .collect::<Result<_, _>>()?;

    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let types_json: Option<serde_json::Value> =
            types.get(row).and_then(|t| serde_json::from_str(t).ok());
        let tj = types_json.as_ref();
        let mut attributes = Vec::new();
        for (i, (_, key, is_int)) in PROMOTED.iter().enumerate() {
            let col = promoted[i];
            if col.is_null(row) {
                continue;
            }
            let value = if *is_int {
                match col.as_primitive_opt::<Int64Type>() {
                    Some(a) => AttrValue::Int(a.value(row)),
                    None => continue,
                }
            } else {
                match Strings(col.as_ref()).get(row) {
                    Some(v) => AttrValue::Str(v.to_string()),
                    None => continue,
                }
            };
            attributes.push(KeyValue::new(*key, value));
        }
        attributes.extend(read_map(attrs, row, tj.and_then(|t| t.get("a"))));
        let mut parent_id = None;
        if !parent.is_null(row) {
            parent_id = parent.value(row).try_into().ok();
        }
        out.push(Span {
            trace_id: trace_id
                .value(row)
                .try_into()
                .map_err(|_| ModelError::Column("trace_id"))?,
            span_id: span_id
                .value(row)
                .try_into()
                .map_err(|_| ModelError::Column("span_id"))?,
            parent_span_id: parent_id,
            trace_state: trace_state.get(row).unwrap_or_default().to_string(),
            name: name.get(row).unwrap_or_default().to_string(),
            kind: kind.get(row).and_then(SpanKind::parse).unwrap_or_default(),
            start_unix_nano: start.value(row),
            duration_nano: duration.value(row),
            status_code: StatusCode::parse(status.get(row).unwrap_or_default()),
            status_message: status_msg.get(row).unwrap_or_default().to_string(),
            service_name: service.get(row).unwrap_or_default().to_string(),
            resource_attributes: read_map(resource, row, tj.and_then(|t| t.get("r"))),
            scope_name: scope_name.get(row).unwrap_or_default().to_string(),
            scope_version: scope_version.get(row).unwrap_or_default().to_string(),
            scope_attributes: read_map(scope, row, tj.and_then(|t| t.get("s"))),
            attributes,
            events: events.events(row)?,
            links: links.links(row)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{Event, Link};

    fn sample() -> Span {
        Span {
            trace_id: [7; 16],
            span_id: [1; 8],
            parent_span_id: Some([2; 8]),
            name: "GET /api".into(),
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_000_000_000,
            duration_nano: 1234,
            status_code: StatusCode::Error,
            status_message: "boom".into(),
            service_name: "productpage".into(),
            resource_attributes: vec![KeyValue::string("host.name", "h1")],
            scope_name: "envoy".into(),
            attributes: vec![
                KeyValue::string("http.method", "GET"),
                KeyValue::new("http.status_code", AttrValue::Int(503)),
                KeyValue::new("http.method", AttrValue::Str("dup".into())),
                KeyValue::new("retries", AttrValue::Int(3)),
                KeyValue::new("ratio", AttrValue::Double(0.5)),
                KeyValue::new("ok", AttrValue::Bool(true)),
                KeyValue::new(
                    "list",
                    AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Str("x".into())]),
                ),
            ],
            events: vec![Event {
                time_unix_nano: 5,
                name: "retry".into(),
                attributes: vec![],
            }],
            links: vec![Link {
                trace_id: [3; 16],
                span_id: [4; 8],
                trace_state: String::new(),
                attributes: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_keeps_every_attribute_and_type() {
        let span = sample();
        let batch = spans_to_batch(std::slice::from_ref(&span)).unwrap();
        assert_eq!(batch.num_rows(), 1);
        let back = batch_to_spans(&batch).unwrap();
        let mut want = span.attributes.clone();
        let mut got = back[0].attributes.clone();
        want.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(a.value.to_display().cmp(&b.value.to_display()))
        });
        got.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(a.value.to_display().cmp(&b.value.to_display()))
        });
        assert_eq!(got, want);
        let mut back0 = back[0].clone();
        back0.attributes = span.attributes.clone();
        assert_eq!(back0, span);
    }

    #[test]
    fn promoted_columns_are_filled() {
        let batch = spans_to_batch(&[sample()]).unwrap();
        let col = batch.column_by_name("http_status_code").unwrap();
        assert_eq!(col.as_primitive::<Int64Type>().value(0), 503);
        let method = batch.column_by_name("http_method").unwrap();
        assert_eq!(method.as_string::<i32>().value(0), "GET");
    }
}
