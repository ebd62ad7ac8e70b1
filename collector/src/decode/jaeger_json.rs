//! Jaeger query-API JSON ("legacy" JSON): decoding `{"data": [trace, ...]}`, a bare trace
//! object `{traceID, spans, processes}`, or a document holding one under `"trace"` (the
//! critical-path fixtures) into spans.
//!
//! Times are µs. IDs are hex (left-padded when short); IDs that are not hex at all, as in
//! hand-written test traces (`"span-A"`), are mapped by hashing (see [`super::ids`]) and the
//! original text is kept in the `meshtrace.original_*` attributes. The parent is the first
//! `CHILD_OF` reference, else the first `FOLLOWS_FROM` one; other references become links
//! with `opentracing.ref_type`. The tags `span.kind`, `error`, `otel.status_code`,
//! `otel.status_description`, `w3c.tracestate` and `otel.scope.*` / `otel.library.*` set the
//! matching span fields and are removed from the attributes, as Jaeger's OTLP translation does.

use std::collections::HashMap;

use base64::Engine;
use meshtrace_model::{AttrValue, Event, KeyValue, Link, Span, SpanKind, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::ids::{span_id_from_text, trace_id_from_text, ORIGINAL_SPAN_ID, ORIGINAL_TRACE_ID};
use crate::validate::{validate_at, Position};
use crate::{Batch, Error, Limits, RejectReason};

#[derive(Debug, Default, Deserialize)]
struct Trace {
    #[serde(rename = "traceID")]
    trace_id: Option<String>,
    #[serde(default)]
    spans: Vec<JSpan>,
    #[serde(default)]
    processes: HashMap<String, Process>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JSpan {
    #[serde(rename = "traceID")]
    trace_id: Option<String>,
    #[serde(rename = "spanID")]
    span_id: Option<String>,
    operation_name: Option<String>,
    references: Option<Vec<Reference>>,
    start_time: Option<i64>,
    duration: Option<i64>,
    tags: Option<Vec<Tag>>,
    logs: Option<Vec<Log>>,
    #[serde(rename = "processID")]
    process_id: Option<String>,
    process: Option<Process>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reference {
    ref_type: Option<String>,
    #[serde(rename = "traceID")]
    trace_id: Option<String>,
    #[serde(rename = "spanID")]
    span_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Tag {
    key: String,
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(default)]
    value: Value,
}

#[derive(Debug, Deserialize)]
struct Log {
    timestamp: Option<i64>,
    fields: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    service_name: Option<String>,
    tags: Option<Vec<Tag>>,
}

/// Decodes a Jaeger query-API JSON body.
pub fn decode(body: &[u8], limits: &Limits) -> Result<Batch, Error> {
    let invalid = |m: String| Error::InvalidArgument(format!("invalid jaeger json: {m}"));
    let root: Value = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let traces: Vec<Trace> = match &root {
        Value::Object(o) if o.contains_key("data") => {
            serde_json::from_value(o["data"].clone()).map_err(|e| invalid(format!("data: {e}")))?
        }
        Value::Object(o) if o.contains_key("trace") => {
            vec![serde_json::from_value(o["trace"].clone())
                .map_err(|e| invalid(format!("trace: {e}")))?]
        }
        Value::Object(o) if o.contains_key("spans") => {
            vec![serde_json::from_value(root).map_err(|e| invalid(e.to_string()))?]
        }
        _ => {
            let m =
                "expected {\"data\": [...]}, a trace object with \"spans\", or {\"trace\": ...}";
            return Err(invalid(m.to_string()));
        }
    };
    let mut batch = Batch::default();
    for (t, trace) in traces.into_iter().enumerate() {
        let Trace {
            trace_id,
            spans,
            processes,
        } = trace;
        for (i, span) in spans.into_iter().enumerate() {
            let at = Position {
                resource: Some(t),
                span: i,
            };
            convert(
                at,
                span,
                trace_id.as_deref(),
                &processes,
                limits,
                &mut batch,
            );
        }
    }
    Ok(batch)
}

fn convert(
    at: Position,
    js: JSpan,
    trace_level_id: Option<&str>,
    processes: &HashMap<String, Process>,
    limits: &Limits,
    batch: &mut Batch,
) {
    let trace_text = js
        .trace_id
        .as_deref()
        .or(trace_level_id)
        .unwrap_or_default();
    if trace_text.is_empty() {
        return batch.reject(RejectReason::InvalidTraceId, at, "traceID is missing");
    }
    let span_text = js.span_id.clone().unwrap_or_default();
    if span_text.is_empty() {
        return batch.reject(RejectReason::InvalidSpanId, at, "spanID is missing");
    }
    let (trace_id, trace_hashed) = trace_id_from_text(trace_text);
    let (span_id, span_hashed) = span_id_from_text(&span_text);
    let mut span = Span {
        trace_id,
        span_id,
        name: js.operation_name.unwrap_or_default(),
        start_unix_nano: js.start_time.unwrap_or(0).saturating_mul(1000),
        duration_nano: js.duration.unwrap_or(0).saturating_mul(1000),
        ..Span::default()
    };
    let process = js
        .process
        .or_else(|| js.process_id.and_then(|p| processes.get(&p).cloned()))
        .unwrap_or_default();
    span.service_name = process.service_name.unwrap_or_default();
    span.resource_attributes = process
        .tags
        .unwrap_or_default()
        .iter()
        .map(tag_to_kv)
        .collect();
    apply_tags(&mut span, js.tags.unwrap_or_default());
    if trace_hashed {
        span.attributes
            .push(KeyValue::string(ORIGINAL_TRACE_ID, trace_text));
    }
    if span_hashed {
        span.attributes
            .push(KeyValue::string(ORIGINAL_SPAN_ID, span_text));
    }
    apply_references(&mut span, js.references.unwrap_or_default(), trace_text);
    span.events = js
        .logs
        .unwrap_or_default()
        .into_iter()
        .map(log_to_event)
        .collect();
    validate_at(at, span, limits, batch);
}

/// Sets the parent from the references and turns the others into links.
fn apply_references(span: &mut Span, refs: Vec<Reference>, own_trace: &str) {
    let is = |r: &Reference, ty: &str| {
        r.ref_type
            .as_deref()
            .unwrap_or("CHILD_OF")
            .eq_ignore_ascii_case(ty)
    };
    let parent = refs
        .iter()
        .position(|r| is(r, "CHILD_OF"))
        .or_else(|| refs.iter().position(|r| is(r, "FOLLOWS_FROM")));
    for (i, r) in refs.iter().enumerate() {
        let Some(target) = r.span_id.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let target = span_id_from_text(target).0;
        if Some(i) == parent {
            span.parent_span_id = Some(target);
            continue;
        }
        let trace = r
            .trace_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(own_trace);
        let ref_type = if is(r, "FOLLOWS_FROM") {
            "follows_from"
        } else {
            "child_of"
        };
        span.links.push(Link {
            trace_id: trace_id_from_text(trace).0,
            span_id: target,
            trace_state: String::new(),
            attributes: vec![KeyValue::string("opentracing.ref_type", ref_type)],
        });
    }
}

/// Moves the tags into attributes, mapping the special ones onto span fields.
fn apply_tags(span: &mut Span, tags: Vec<Tag>) {
    for tag in &tags {
        let kv = tag_to_kv(tag);
        let text = kv.value.to_display();
        match kv.key.as_str() {
            "span.kind" => span.kind = SpanKind::parse(&text).unwrap_or_default(),
            "error" if text == "true" => span.status_code = StatusCode::Error,
            "otel.status_code" => {
                span.status_code = StatusCode::parse(&text.to_ascii_lowercase());
            }
            "otel.status_description" => span.status_message = text,
            "w3c.tracestate" => span.trace_state = text,
            "otel.scope.name" | "otel.library.name" => span.scope_name = text,
            "otel.scope.version" | "otel.library.version" => span.scope_version = text,
            _ => span.attributes.push(kv),
        }
    }
}

fn log_to_event(log: Log) -> Event {
    let mut name = String::new();
    let mut attributes = Vec::new();
    for field in log.fields.unwrap_or_default() {
        let kv = tag_to_kv(&field);
        if kv.key == "event" && name.is_empty() {
            name = kv.value.to_display();
        } else {
            attributes.push(kv);
        }
    }
    Event {
        time_unix_nano: log.timestamp.unwrap_or(0).saturating_mul(1000),
        name,
        attributes,
    }
}

/// Converts a tag by its declared type; an untyped tag takes the JSON value's own type.
fn tag_to_kv(tag: &Tag) -> KeyValue {
    let v = &tag.value;
    let text = || match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let value = match tag.ty.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("string") => AttrValue::Str(text()),
        Some("bool") => match v {
            Value::Bool(b) => AttrValue::Bool(*b),
            _ => text()
                .parse()
                .map(AttrValue::Bool)
                .unwrap_or_else(|_| AttrValue::Str(text())),
        },
        Some("int64") => match v.as_i64() {
            Some(i) => AttrValue::Int(i),
            None => text()
                .parse()
                .map(AttrValue::Int)
                .unwrap_or_else(|_| AttrValue::Str(text())),
        },
        Some("float64") => match v.as_f64() {
            Some(d) => AttrValue::Double(d),
            None => text()
                .parse()
                .map(AttrValue::Double)
                .unwrap_or_else(|_| AttrValue::Str(text())),
        },
        Some("binary") => base64::engine::general_purpose::STANDARD
            .decode(text())
            .map(AttrValue::Bytes)
            .unwrap_or_else(|_| AttrValue::Str(text())),
        _ => AttrValue::from_plain_json(v),
    };
    KeyValue::new(tag.key.clone(), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/critical-path"
    );

    fn fixture(name: &str) -> Batch {
        let body = std::fs::read(format!("{DIR}/{name}")).unwrap();
        decode(&body, &Limits::default()).unwrap()
    }

    fn by_original<'a>(b: &'a Batch, id: &str) -> &'a Span {
        b.spans
            .iter()
            .find(|s| s.attribute(ORIGINAL_SPAN_ID) == Some(&AttrValue::Str(id.into())))
            .unwrap_or_else(|| panic!("no span {id}"))
    }

    #[test]
    fn all_critical_path_fixtures_decode() {
        let facts: Value =
            serde_json::from_slice(&std::fs::read(format!("{DIR}/../facts.json")).unwrap())
                .unwrap();
        for n in 1..=9 {
            let name = format!("test{n}.json");
            let b = fixture(&name);
            assert!(b.rejected.is_empty(), "{name}: {:?}", b.rejected);
            let want = facts["critical-path"][&name]["spans"].as_u64().unwrap();
            assert_eq!(b.spans.len() as u64, want, "{name}");
            let roots = b
                .spans
                .iter()
                .filter(|s| s.parent_span_id.is_none())
                .count();
            assert_eq!(roots, 1, "{name}");
            let trace = b.spans[0].trace_id;
            assert!(b.spans.iter().all(|s| s.trace_id == trace), "{name}");
        }
    }

    #[test]
    fn test1_parents_times_and_service() {
        let b = fixture("test1.json");
        let c = by_original(&b, "span-C");
        let e = by_original(&b, "span-E");
        assert_eq!(e.parent_span_id, Some(c.span_id));
        assert_eq!(c.span_id, span_id_from_text("span-C").0);
        assert_eq!((c.start_unix_nano, c.duration_nano), (1_000, 100_000));
        assert_eq!(c.service_name, "customers-service");
        assert_eq!(
            c.attribute(ORIGINAL_TRACE_ID),
            Some(&AttrValue::Str("test1-trace".into()))
        );
    }

    #[test]
    fn test5_kinds_from_tags_and_follows_from_parent() {
        let b = fixture("test5.json");
        let a = by_original(&b, "span-A");
        let bspan = by_original(&b, "span-B");
        assert_eq!(a.kind, SpanKind::Producer);
        assert_eq!(bspan.kind, SpanKind::Consumer);
        assert_eq!(
            bspan.parent_span_id,
            Some(a.span_id),
            "FOLLOWS_FROM is the parent"
        );
        assert!(
            a.attribute("span.kind").is_none(),
            "span.kind is moved, not kept"
        );
    }

    #[test]
    fn test3_hex_ids_typed_tags_and_processes() {
        let b = fixture("test3.json");
        let child = b
            .spans
            .iter()
            .find(|s| s.span_id_hex() == "2dc4b796e2127e32")
            .unwrap();
        assert_eq!(child.trace_id_hex(), "0000000000000000006c3cf93508f205");
        assert_eq!(
            child.parent_span_id.map(hex::encode).as_deref(),
            Some("006c3cf93508f205")
        );
        assert_eq!(child.kind, SpanKind::Client);
        assert_eq!(child.service_name, "service-two");
        assert_eq!(
            child.attribute("http.method"),
            Some(&AttrValue::Str("POST".into()))
        );
        assert!(
            child.attribute(ORIGINAL_SPAN_ID).is_none(),
            "hex ids are not hashed"
        );
    }

    #[test]
    fn data_wrapper_tags_logs_links_and_rejections() {
        let body = serde_json::json!({"data": [{
            "traceID": "abc",
            "spans": [
                {"spanID": "1", "operationName": "op", "startTime": 10, "duration": 5,
                 "references": [{"refType": "CHILD_OF", "spanID": "2"},
                                {"refType": "FOLLOWS_FROM", "traceID": "def", "spanID": "3"}],
                 "tags": [{"key": "n", "type": "int64", "value": 7},
                          {"key": "error", "type": "bool", "value": true},
                          {"key": "raw", "type": "binary", "value": "AAE="}],
                 "logs": [{"timestamp": 11, "fields": [{"key": "event", "value": "retry"},
                                                       {"key": "attempt", "value": 2}]}],
                 "processID": "p1"},
                {"spanID": "4", "operationName": "no start", "duration": 1, "processID": "p1"},
                {"operationName": "no id", "startTime": 1, "processID": "p1"}
            ],
            "processes": {"p1": {"serviceName": "svc", "tags": [{"key": "host", "type": "string", "value": "h"}]}}
        }]});
        let b = decode(&serde_json::to_vec(&body).unwrap(), &Limits::default()).unwrap();
        let s = &b.spans[0];
        assert_eq!(s.trace_id_hex(), "00000000000000000000000000000abc");
        assert_eq!(s.parent_span_id, Some([0, 0, 0, 0, 0, 0, 0, 2]));
        assert_eq!(s.links[0].trace_id[15], 0xef);
        assert_eq!(
            s.links[0].attributes[0].value,
            AttrValue::Str("follows_from".into())
        );
        assert_eq!(s.attribute("n"), Some(&AttrValue::Int(7)));
        assert_eq!(s.attribute("raw"), Some(&AttrValue::Bytes(vec![0, 1])));
        assert_eq!(s.status_code, StatusCode::Error);
        assert_eq!(s.events[0].name, "retry");
        assert_eq!(s.events[0].time_unix_nano, 11_000);
        assert_eq!(
            s.events[0].attributes,
            vec![KeyValue::new("attempt", AttrValue::Int(2))]
        );
        assert_eq!(s.resource_attributes, vec![KeyValue::string("host", "h")]);
        let reasons: Vec<_> = b.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [RejectReason::MissingTimestamp, RejectReason::InvalidSpanId]
        );
        assert_eq!(
            b.rejected[1].message,
            "span 2 of resource 0: spanID is missing"
        );
    }

    #[test]
    fn undecodable_bodies_are_invalid_argument() {
        for body in [
            &b"{\"foo\": 1}"[..],
            b"not json",
            b"{\"data\": [{\"spans\": 3}]}",
        ] {
            let err = decode(body, &Limits::default()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.starts_with("invalid jaeger json: ")),
                "{err}"
            );
        }
    }
}
