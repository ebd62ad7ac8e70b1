//! Rendering spans in the Jaeger query API's JSON model (what the Jaeger UI and Grafana's
//! Jaeger data source read), following Jaeger's own OTLP-to-Jaeger translation: resource
//! attributes become process tags, the span kind and status become tags, events become logs,
//! links become `FOLLOWS_FROM` references.

use std::collections::HashMap;

use meshtrace_model::{AttrValue, KeyValue, Span, SpanKind, StatusCode};
use serde_json::{json, Value};

/// A Jaeger tag: `{"key", "type", "value"}`.
fn tag(key: &str, value: &AttrValue) -> Value {
    let (ty, v) = match value {
        AttrValue::Str(s) => ("string", json!(s)),
        AttrValue::Bool(b) => ("bool", json!(b)),
        AttrValue::Int(i) => ("int64", json!(i)),
        AttrValue::Double(d) => ("float64", json!(d)),
        AttrValue::Bytes(b) => ("binary", json!(hex::encode(b))),
        other => ("string", json!(other.to_display())),
    };
    json!({"key": key, "type": ty, "value": v})
}

fn tags(attrs: &[KeyValue]) -> Vec<Value> {
    attrs.iter().map(|kv| tag(&kv.key, &kv.value)).collect()
}

fn micros(nanos: i64) -> i64 {
    nanos.div_euclid(1000)
}

/// Trace IDs are always shown as 32 lowercase hex characters.
pub fn trace_id_hex(id: &[u8; 16]) -> String {
    hex::encode(id)
}

fn span_tags(span: &Span) -> Vec<Value> {
    let mut out = tags(&span.attributes);
    if !matches!(span.kind, SpanKind::Unspecified) {
        out.push(tag("span.kind", &AttrValue::Str(span.kind.as_str().into())));
    }
    match span.status_code {
        StatusCode::Error => {
            out.push(tag("error", &AttrValue::Bool(true)));
            out.push(tag("otel.status_code", &AttrValue::Str("ERROR".into())));
        }
        StatusCode::Ok => out.push(tag("otel.status_code", &AttrValue::Str("OK".into()))),
        StatusCode::Unset => {}
    }
    if !span.status_message.is_empty() {
        let msg = AttrValue::Str(span.status_message.clone());
        out.push(tag("otel.status_description", &msg));
    }
    if !span.scope_name.is_empty() {
        out.push(tag(
            "otel.scope.name",
            &AttrValue::Str(span.scope_name.clone()),
        ));
    }
    if !span.scope_version.is_empty() {
        let v = AttrValue::Str(span.scope_version.clone());
        out.push(tag("otel.scope.version", &v));
    }
    out.extend(tags(&span.scope_attributes));
    if !span.trace_state.is_empty() {
        out.push(tag(
            "w3c.tracestate",
            &AttrValue::Str(span.trace_state.clone()),
        ));
    }
    out
}

fn references(span: &Span) -> Vec<Value> {
    let mut refs = Vec::new();
    if let Some(parent) = span.parent_span_id {
        refs.push(json!({
            "refType": "CHILD_OF",
            "traceID": trace_id_hex(&span.trace_id),
            "spanID": hex::encode(parent),
        }));
    }
    for link in &span.links {
        refs.push(json!({
            "refType": "FOLLOWS_FROM",
            "traceID": trace_id_hex(&link.trace_id),
            "spanID": hex::encode(link.span_id),
        }));
    }
    refs
}

fn logs(span: &Span) -> Vec<Value> {
    span.events
        .iter()
        .map(|e| {
            let mut fields = vec![tag("event", &AttrValue::Str(e.name.clone()))];
            fields.extend(tags(&e.attributes));
            json!({"timestamp": micros(e.time_unix_nano), "fields": fields})
        })
        .collect()
}

/// One trace (all spans share a trace ID) as a Jaeger JSON trace object.
pub fn trace(spans: &[Span]) -> Value {
    let mut processes = serde_json::Map::new();
    let mut process_ids: HashMap<String, String> = HashMap::new();
    let mut out_spans = Vec::with_capacity(spans.len());
    for span in spans {
        let process = json!({
            "serviceName": span.service_name,
            "tags": tags(&span.resource_attributes),
        });
        let key = process.to_string();
        let next = format!("p{}", process_ids.len() + 1);
        let pid = process_ids.entry(key).or_insert_with(|| {
            processes.insert(next.clone(), process);
            next
        });
        out_spans.push(json!({
            "traceID": trace_id_hex(&span.trace_id),
            "spanID": hex::encode(span.span_id),
            "operationName": span.name,
            "references": references(span),
            "flags": 1,
            "startTime": micros(span.start_unix_nano),
            "duration": micros(span.duration_nano),
            "tags": span_tags(span),
            "logs": logs(span),
            "processID": pid,
            "warnings": null,
        }));
    }
    let trace_id = spans
        .first()
        .map(|s| trace_id_hex(&s.trace_id))
        .unwrap_or_default();
    json!({
        "traceID": trace_id,
        "spans": out_spans,
        "processes": processes,
        "warnings": null,
    })
}

/// Operations as `[{"name", "spanKind"}]` (an unspecified kind is `""`), as both the Jaeger
/// API and api_v3 list them.
pub fn operations_json(ops: &[(String, SpanKind)]) -> Vec<Value> {
    ops.iter()
        .map(|(name, kind)| {
            let k = match kind {
                SpanKind::Unspecified => "",
                other => other.as_str(),
            };
            json!({"name": name, "spanKind": k})
        })
        .collect()
}

/// The Jaeger API envelope around `data`.
pub fn envelope(data: Value, total: usize) -> Value {
    json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": null})
}

/// The Jaeger API envelope of an error.
pub fn error_envelope(code: u16, msg: &str) -> Value {
    json!({"data": null, "total": 0, "limit": 0, "offset": 0,
           "errors": [{"code": code, "msg": msg}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::{Event, Link};

    #[test]
    fn renders_references_tags_and_processes() {
        let root = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_unix_nano: 5_000_000,
            duration_nano: 2_000_000,
            status_code: StatusCode::Error,
            service_name: "frontend".into(),
            resource_attributes: vec![KeyValue::string("host.name", "a")],
            attributes: vec![KeyValue::new("http.status_code", AttrValue::Int(503))],
            events: vec![Event {
                time_unix_nano: 6_000_000,
                name: "retry".into(),
                attributes: vec![],
            }],
            ..Default::default()
        };
        let child = Span {
            span_id: [3; 8],
            parent_span_id: Some([2; 8]),
            service_name: "backend".into(),
            links: vec![Link {
                trace_id: [9; 16],
                span_id: [8; 8],
                trace_state: String::new(),
                attributes: vec![],
            }],
            ..root.clone()
        };
        let t = trace(&[root, child]);
        assert_eq!(t["traceID"], "01".repeat(16));
        assert_eq!(t["processes"].as_object().unwrap().len(), 2);
        let s1 = &t["spans"][1];
        assert_eq!(s1["references"][0]["refType"], "CHILD_OF");
        assert_eq!(s1["references"][0]["spanID"], "0202020202020202");
        assert_eq!(s1["references"][1]["refType"], "FOLLOWS_FROM");
        assert_eq!(t["spans"][0]["startTime"], 5000);
        assert_eq!(t["spans"][0]["duration"], 2000);
        let tags = t["spans"][0]["tags"].as_array().unwrap();
        assert!(tags.contains(&json!({"key": "http.status_code", "type": "int64", "value": 503})));
        assert!(tags.contains(&json!({"key": "error", "type": "bool", "value": true})));
        assert_eq!(t["spans"][0]["logs"][0]["fields"][0]["value"], "retry");
    }
}
