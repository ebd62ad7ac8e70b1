//! OTLP/JSON: decoding `TracesData` / `ExportTraceServiceRequest` bodies ([`read`], straight
//! from the text into spans) and encoding spans as `TracesData` the way Jaeger's api_v3
//! answers.
//!
//! The decoder is lenient where real senders differ from the spec (upper-case hex IDs, base64
//! IDs as Tempo writes them, `kind` as a number or an enum name, int64 values as numbers or
//! strings, `batches` / `instrumentationLibrarySpans` from older senders) and rejects a span
//! with bad IDs alone instead of failing the whole body. As proto3's JSON mapping asks of
//! parsers, fields are read by their JSON name or their proto field name (`startTimeUnixNano`
//! or `start_time_unix_nano`) and `null` reads as the field's default.

use base64::Engine;
use meshtrace_model::Span;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as PbKeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans};
use serde_json::{json, Map, Value};

use super::otlp::to_request;
use crate::{Batch, Error, Limits};

mod read;

type Obj = Map<String, Value>;

/// Decodes an OTLP/JSON body (also accepts Jaeger api_v3's `{"result": ...}` wrapper and
/// Tempo's `batches`).
pub fn decode(body: &[u8], limits: &Limits) -> Result<Batch, Error> {
    read::read(body, limits).map_err(invalid)
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(format!("invalid otlp json: {msg}"))
}

/// Encodes spans as an OTLP/JSON `TracesData` object: grouped by resource and scope,
/// lowercase hex IDs, int64s as strings, bytes as base64, numeric kind and status code.
pub fn encode(spans: &[Span]) -> Value {
    encode_request(&to_request(spans))
}

/// Encodes an OTLP request as OTLP/JSON, as [`encode`] does.
pub fn encode_request(req: &ExportTraceServiceRequest) -> Value {
    let resource_spans: Vec<Value> = req.resource_spans.iter().map(resource_json).collect();
    json!({ "resourceSpans": resource_spans })
}

fn resource_json(rs: &ResourceSpans) -> Value {
    let attrs = rs
        .resource
        .as_ref()
        .map(|r| r.attributes.as_slice())
        .unwrap_or_default();
    let scopes: Vec<Value> = rs
        .scope_spans
        .iter()
        .map(|ss| {
            let scope = ss.scope.clone().unwrap_or_default();
            json!({
                "scope": {
                    "name": scope.name,
                    "version": scope.version,
                    "attributes": attrs_json(&scope.attributes),
                },
                "spans": ss.spans.iter().map(span_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "resource": { "attributes": attrs_json(attrs) }, "scopeSpans": scopes })
}

fn span_json(s: &opentelemetry_proto::tonic::trace::v1::Span) -> Value {
    let mut o = Obj::new();
    o.insert("traceId".into(), hex::encode(&s.trace_id).into());
    o.insert("spanId".into(), hex::encode(&s.span_id).into());
    if !s.parent_span_id.is_empty() {
        o.insert("parentSpanId".into(), hex::encode(&s.parent_span_id).into());
    }
    if !s.trace_state.is_empty() {
        o.insert("traceState".into(), s.trace_state.clone().into());
    }
    o.insert("name".into(), s.name.clone().into());
    o.insert("kind".into(), s.kind.into());
    o.insert(
        "startTimeUnixNano".into(),
        s.start_time_unix_nano.to_string().into(),
    );
    o.insert(
        "endTimeUnixNano".into(),
        s.end_time_unix_nano.to_string().into(),
    );
    o.insert("attributes".into(), attrs_json(&s.attributes));
    if !s.events.is_empty() {
        o.insert("events".into(), s.events.iter().map(event_json).collect());
    }
    if !s.links.is_empty() {
        o.insert("links".into(), s.links.iter().map(link_json).collect());
    }
    let mut status = Obj::new();
    if let Some(st) = &s.status {
        if st.code != 0 {
            status.insert("code".into(), st.code.into());
        }
        if !st.message.is_empty() {
            status.insert("message".into(), st.message.clone().into());
        }
    }
    o.insert("status".into(), status.into());
    o.into()
}

fn event_json(e: &span::Event) -> Value {
    json!({
        "timeUnixNano": e.time_unix_nano.to_string(),
        "name": e.name,
        "attributes": attrs_json(&e.attributes),
    })
}

fn link_json(l: &span::Link) -> Value {
    json!({
        "traceId": hex::encode(&l.trace_id),
        "spanId": hex::encode(&l.span_id),
        "traceState": l.trace_state,
        "attributes": attrs_json(&l.attributes),
    })
}

fn attrs_json(attrs: &[PbKeyValue]) -> Value {
    attrs
        .iter()
        .map(|kv| json!({ "key": kv.key, "value": value_json(kv.value.as_ref()) }))
        .collect()
}

fn value_json(v: Option<&AnyValue>) -> Value {
    use any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        Some(V::StringValue(s)) => json!({ "stringValue": s }),
        Some(V::BoolValue(b)) => json!({ "boolValue": b }),
        Some(V::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(V::DoubleValue(d)) if d.is_finite() => json!({ "doubleValue": d }),
        Some(V::DoubleValue(d)) => {
            let text = if d.is_nan() {
                "NaN"
            } else if *d > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            json!({ "doubleValue": text })
        }
        Some(V::BytesValue(b)) => {
            json!({ "bytesValue": base64::engine::general_purpose::STANDARD.encode(b) })
        }
        Some(V::ArrayValue(a)) => {
            let values: Vec<Value> = a.values.iter().map(|v| value_json(Some(v))).collect();
            json!({ "arrayValue": { "values": values } })
        }
        Some(V::KvlistValue(l)) => json!({ "kvlistValue": { "values": attrs_json(&l.values) } }),
        Some(V::StringValueStrindex(_)) | None => json!({}),
    }
}

#[cfg(test)]
mod tests;
