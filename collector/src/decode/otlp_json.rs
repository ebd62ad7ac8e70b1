//! OTLP/JSON: decoding `TracesData` / `ExportTraceServiceRequest` bodies and encoding spans as
//! `TracesData` the way Jaeger's api_v3 answers.
//!
//! The decoder works on a `serde_json::Value` rather than `opentelemetry-proto`'s serde
//! support, so that it is lenient where real senders differ from the spec (upper-case hex IDs,
//! base64 IDs as Tempo writes them, `kind` as a number or an enum name, int64 values as
//! numbers or strings, `batches` / `instrumentationLibrarySpans` from older senders) and so
//! that a span with bad IDs is rejected alone instead of failing the whole body. As proto3's
//! JSON mapping asks of parsers, fields are read by their JSON name or their proto field name
//! (`startTimeUnixNano` or `start_time_unix_nano`) and `null` reads as the field's default.

use base64::Engine;
use meshtrace_model::{AttrValue, Event, KeyValue, Link, Span, SpanKind, StatusCode};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as PbKeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans};
use serde_json::{json, Map, Value};

use super::ids::decode_hex_or_base64;
use super::otlp::to_request;
use super::SERVICE_NAME;
use super::{duration, nanos};
use crate::validate::{validate_raw, Position, RawIds};
use crate::{Batch, Error, Limits, RejectReason};

type Obj = Map<String, Value>;

/// Decodes an OTLP/JSON body (also accepts Jaeger api_v3's `{"result": ...}` wrapper and
/// Tempo's `batches`).
pub fn decode(body: &[u8], limits: &Limits) -> Result<Batch, Error> {
    let root: Value = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let mut batch = Batch::default();
    decode_value(&root, limits, &mut batch).map_err(invalid)?;
    Ok(batch)
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(format!("invalid otlp json: {msg}"))
}

/// Decodes an already-parsed OTLP/JSON document into `batch`.
pub fn decode_value(root: &Value, limits: &Limits, batch: &mut Batch) -> Result<(), String> {
    let root = object(root, "the body")?;
    let root = optional_object(root.get("result"), "result")?.unwrap_or(root);
    let resources = field(root, &["resourceSpans", "resource_spans", "batches"]);
    for (r, rs) in array(resources, "resourceSpans")?.iter().enumerate() {
        decode_resource(r, object(rs, "resourceSpans[]")?, limits, batch)
            .map_err(|e| format!("resourceSpans[{r}]: {e}"))?;
    }
    Ok(())
}

fn decode_resource(r: usize, rs: &Obj, limits: &Limits, batch: &mut Batch) -> Result<(), String> {
    let mut resource_attributes = match optional_object(rs.get("resource"), "resource")? {
        Some(res) => attributes(res.get("attributes"))?,
        None => Vec::new(),
    };
    let service_name = match resource_attributes
        .iter()
        .position(|kv| kv.key == SERVICE_NAME)
    {
        Some(i) => resource_attributes.remove(i).value.to_display(),
        None => String::new(),
    };
    let mut index = 0;
    let scopes = field(
        rs,
        &[
            "scopeSpans",
            "scope_spans",
            "instrumentationLibrarySpans",
            "instrumentation_library_spans",
        ],
    );
    for (s, ss) in array(scopes, "scopeSpans")?.iter().enumerate() {
        let ss = object(ss, "scopeSpans[]")?;
        let empty = Obj::new();
        let scope = optional_object(
            field(
                ss,
                &["scope", "instrumentationLibrary", "instrumentation_library"],
            ),
            "scope",
        )?
        .unwrap_or(&empty);
        let base = Span {
            service_name: service_name.clone(),
            resource_attributes: resource_attributes.clone(),
            scope_name: string(scope.get("name"), "scope.name")?,
            scope_version: string(scope.get("version"), "scope.version")?,
            scope_attributes: attributes(scope.get("attributes"))?,
            ..Span::default()
        };
        for (i, sp) in array(ss.get("spans"), "spans")?.iter().enumerate() {
            let at = Position {
                resource: Some(r),
                span: index,
            };
            index += 1;
            decode_span(at, object(sp, "span")?, &base, limits, batch)
                .map_err(|e| format!("scopeSpans[{s}].spans[{i}]: {e}"))?;
        }
    }
    Ok(())
}

fn decode_span(
    at: Position,
    sp: &Obj,
    base: &Span,
    limits: &Limits,
    batch: &mut Batch,
) -> Result<(), String> {
    let mut ids = [Vec::new(), Vec::new(), Vec::new()];
    let names = [
        ("traceId", "trace_id"),
        ("spanId", "span_id"),
        ("parentSpanId", "parent_span_id"),
    ];
    let reasons = [
        RejectReason::InvalidTraceId,
        RejectReason::InvalidSpanId,
        RejectReason::InvalidParentSpanId,
    ];
    for k in 0..3 {
        let text = string(get(sp, names[k].0, names[k].1), names[k].0)?;
        match decode_hex_or_base64(&text) {
            Ok(bytes) => ids[k] = bytes,
            Err(e) => {
                batch.reject(reasons[k], at, format!("{}: {e}", names[k].0));
                return Ok(());
            }
        }
    }
    let start = nanos(uint(
        get(sp, "startTimeUnixNano", "start_time_unix_nano"),
        "startTimeUnixNano",
    )?);
    let end = nanos(uint(
        get(sp, "endTimeUnixNano", "end_time_unix_nano"),
        "endTimeUnixNano",
    )?);
    let (status_code, status_message) = status(sp.get("status"))?;
    let span = Span {
        trace_state: string(get(sp, "traceState", "trace_state"), "traceState")?,
        name: string(sp.get("name"), "name")?,
        kind: kind(sp.get("kind"))?,
        start_unix_nano: start,
        duration_nano: duration(start, end),
        status_code,
        status_message,
        attributes: attributes(sp.get("attributes"))?,
        events: events(sp.get("events"))?,
        links: links(sp.get("links"))?,
        ..base.clone()
    };
    let raw = RawIds {
        trace_id: &ids[0],
        span_id: &ids[1],
        parent_span_id: &ids[2],
    };
    validate_raw(at, raw, span, limits, batch);
    Ok(())
}

fn events(v: Option<&Value>) -> Result<Vec<Event>, String> {
    array(v, "events")?
        .iter()
        .map(|e| {
            let e = object(e, "event")?;
            Ok(Event {
                time_unix_nano: nanos(uint(
                    get(e, "timeUnixNano", "time_unix_nano"),
                    "event.timeUnixNano",
                )?),
                name: string(e.get("name"), "event.name")?,
                attributes: attributes(e.get("attributes"))?,
            })
        })
        .collect()
}

/// Links whose IDs do not decode to 16 and 8 bytes are dropped.
fn links(v: Option<&Value>) -> Result<Vec<Link>, String> {
    let mut out = Vec::new();
    for l in array(v, "links")? {
        let l = object(l, "link")?;
        let trace = decode_hex_or_base64(&string(get(l, "traceId", "trace_id"), "link.traceId")?);
        let span = decode_hex_or_base64(&string(get(l, "spanId", "span_id"), "link.spanId")?);
        let (Some(trace_id), Some(span_id)) = (
            trace.ok().and_then(|t| t.try_into().ok()),
            span.ok().and_then(|s| s.try_into().ok()),
        ) else {
            tracing::debug!("dropping otlp json link with malformed ids");
            continue;
        };
        out.push(Link {
            trace_id,
            span_id,
            trace_state: string(get(l, "traceState", "trace_state"), "link.traceState")?,
            attributes: attributes(l.get("attributes"))?,
        });
    }
    Ok(out)
}

fn kind(v: Option<&Value>) -> Result<SpanKind, String> {
    Ok(match v {
        None | Some(Value::Null) => SpanKind::Unspecified,
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .and_then(SpanKind::from_otlp)
            .unwrap_or_default(),
        Some(Value::String(s)) => SpanKind::parse(s).unwrap_or_default(),
        Some(other) => return Err(format!("kind must be a number or a name, got {other}")),
    })
}

fn status(v: Option<&Value>) -> Result<(StatusCode, String), String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((StatusCode::Unset, String::new()));
    };
    let st = object(v, "status")?;
    let code = match st.get("code") {
        None | Some(Value::Null) => StatusCode::Unset,
        Some(Value::Number(n)) => StatusCode::from_otlp(n.as_i64().unwrap_or(0) as i32),
        Some(Value::String(s)) => {
            let s = s.to_ascii_lowercase();
            StatusCode::parse(s.strip_prefix("status_code_").unwrap_or(&s))
        }
        Some(other) => {
            return Err(format!(
                "status.code must be a number or a name, got {other}"
            ))
        }
    };
    Ok((code, string(st.get("message"), "status.message")?))
}

/// Decodes a list of OTLP/JSON `KeyValue`s.
pub fn attributes(v: Option<&Value>) -> Result<Vec<KeyValue>, String> {
    array(v, "attributes")?
        .iter()
        .map(|kv| {
            let kv = object(kv, "attribute")?;
            let key = string(kv.get("key"), "attribute key")?;
            let value =
                any_value(kv.get("value")).map_err(|e| format!("attribute {key:?}: {e}"))?;
            Ok(KeyValue::new(key, value))
        })
        .collect()
}

/// Decodes an OTLP/JSON `AnyValue`; an empty value becomes an empty string.
pub fn any_value(v: Option<&Value>) -> Result<AttrValue, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(AttrValue::Str(String::new()));
    };
    let o = object(v, "value")?;
    for (k, v) in o {
        if v.is_null() {
            continue;
        }
        return Ok(match k.as_str() {
            "stringValue" | "string_value" => AttrValue::Str(string(Some(v), k)?),
            "boolValue" | "bool_value" => {
                AttrValue::Bool(v.as_bool().ok_or("boolValue must be a boolean")?)
            }
            "intValue" | "int_value" => AttrValue::Int(int(v)?),
            "doubleValue" | "double_value" => AttrValue::Double(double(v)?),
            "bytesValue" | "bytes_value" => {
                let text = string(Some(v), k)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .map_err(|e| format!("bytesValue is not base64: {e}"))?;
                AttrValue::Bytes(bytes)
            }
            "arrayValue" | "array_value" => {
                let values = object(v, k)?.get("values");
                let items = array(values, "arrayValue.values")?;
                AttrValue::Array(
                    items
                        .iter()
                        .map(|i| any_value(Some(i)))
                        .collect::<Result<_, _>>()?,
                )
            }
            "kvlistValue" | "kvlist_value" => {
                AttrValue::KvList(attributes(object(v, k)?.get("values"))?)
            }
            _ => continue,
        });
    }
    Ok(AttrValue::Str(String::new()))
}

/// The first of `names` present and not `null`.
fn field<'a>(o: &'a Obj, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| o.get(*n).filter(|v| !v.is_null()))
}

/// A field by its JSON name or its proto field name, as proto3's JSON mapping has parsers
/// accept both; `null` reads as absent (the field's default).
fn get<'a>(o: &'a Obj, json: &str, proto: &str) -> Option<&'a Value> {
    field(o, &[json, proto])
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Obj, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be an object, got {}", kind_of(v)))
}

/// An optional message field: absent or `null` (proto3's JSON mapping reads `null` as the
/// field's default, and the serde form of `opentelemetry-proto` writes it) is `None`.
fn optional_object<'a>(v: Option<&'a Value>, what: &str) -> Result<Option<&'a Obj>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => object(v, what).map(Some),
    }
}

/// An absent or null field is an empty array.
fn array<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a [Value], String> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!("{what} must be an array, got {}", kind_of(other))),
    }
}

/// An absent or null field is an empty string.
fn string(v: Option<&Value>, what: &str) -> Result<String, String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{what} must be a string, got {}", kind_of(other))),
    }
}

/// An unsigned 64-bit integer written as a number or a string; absent is 0.
fn uint(v: Option<&Value>, what: &str) -> Result<u64, String> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{what}: {n} is not a u64")),
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => s.parse().map_err(|_| format!("{what}: {s:?} is not a u64")),
        Some(other) => Err(format!("{what} must be an integer, got {}", kind_of(other))),
    }
}

fn int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("intValue {n} is not an i64")),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("intValue {s:?} is not an i64")),
        other => Err(format!(
            "intValue must be an integer, got {}",
            kind_of(other)
        )),
    }
}

fn double(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("doubleValue {n} is not a number")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => s
                .parse()
                .map_err(|_| format!("doubleValue {s:?} is not a number")),
        },
        other => Err(format!(
            "doubleValue must be a number, got {}",
            kind_of(other)
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Encodes spans as an OTLP/JSON `TracesData` object: grouped by resource and scope,
/// lowercase hex IDs, int64s as strings, bytes as base64, numeric kind and status code.
pub fn encode(spans: &[Span]) -> Value {
    let resource_spans: Vec<Value> = to_request(spans)
        .resource_spans
        .iter()
        .map(resource_json)
        .collect();
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
