//! The Jaeger query API's JSON model (what the Jaeger UI and Grafana's Jaeger data source
//! read), as types, and the rendering of spans into it following Jaeger's own OTLP-to-Jaeger
//! translation: resource attributes become process tags, the span kind and status become tags,
//! events become logs, links become `FOLLOWS_FROM` references.

use std::collections::BTreeMap;

use meshtrace_model::{AttrValue, KeyValue, Span, SpanKind, StatusCode};
use meshtrace_query::{DamagedSegment, Operation, Trace};
use serde::Serialize;

/// One entry of a Jaeger envelope's `errors`.
#[derive(Serialize)]
pub struct JaegerErrorItem {
    pub code: u16,
    pub msg: String,
}

/// The envelope of every Jaeger API answer.
#[derive(Serialize)]
pub struct Envelope<T> {
    pub data: Option<T>,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    pub errors: Option<Vec<JaegerErrorItem>>,
}

impl<T> Envelope<T> {
    /// A successful answer of `total` items.
    pub fn of(data: T, total: usize) -> Envelope<T> {
        Envelope {
            data: Some(data),
            total,
            limit: 0,
            offset: 0,
            errors: None,
        }
    }

    /// The answer with an error entry for each damaged segment it had to leave out.
    pub fn skipping(mut self, skipped: &[DamagedSegment]) -> Envelope<T> {
        if !skipped.is_empty() {
            let items = skipped.iter().map(skipped_item);
            self.errors.get_or_insert_with(Vec::new).extend(items);
        }
        self
    }

    /// A failed answer.
    pub fn failed(error: JaegerErrorItem) -> Envelope<T> {
        Envelope {
            data: None,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![error]),
        }
    }
}

/// The error entry saying an answer left a damaged segment out (code 206: partial content).
fn skipped_item(d: &DamagedSegment) -> JaegerErrorItem {
    let at = |ns: i64| chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339();
    JaegerErrorItem {
        code: 206,
        msg: format!(
            "partial answer: segment {} ({} spans started {} to {}) was skipped: {}",
            d.path,
            d.rows,
            at(d.min_start_ns),
            at(d.max_start_ns),
            d.reason
        ),
    }
}

/// A list answer: the list and its length.
pub fn list<T>(items: Vec<T>) -> Envelope<Vec<T>> {
    let n = items.len();
    Envelope::of(items, n)
}

/// A tag's value, typed as Jaeger types it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TagValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Float(f64),
}

/// A Jaeger tag: `{"key", "type", "value"}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tag {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: TagValue,
}

impl Tag {
    fn new(key: &str, value: &AttrValue) -> Tag {
        let (kind, value) = match value {
            AttrValue::Str(s) => ("string", TagValue::Str(s.clone())),
            AttrValue::Bool(b) => ("bool", TagValue::Bool(*b)),
            AttrValue::Int(i) => ("int64", TagValue::Int(*i)),
            AttrValue::Double(d) => ("float64", TagValue::Float(*d)),
            AttrValue::Bytes(b) => ("binary", TagValue::Str(hex::encode(b))),
            other => ("string", TagValue::Str(other.to_display())),
        };
        Tag {
            key: key.to_string(),
            kind,
            value,
        }
    }

    fn text(key: &str, value: &str) -> Tag {
        Tag {
            key: key.to_string(),
            kind: "string",
            value: TagValue::Str(value.to_string()),
        }
    }
}

fn tags(attrs: &[KeyValue]) -> Vec<Tag> {
    attrs
        .iter()
        .map(|kv| Tag::new(&kv.key, &kv.value))
        .collect()
}

/// A span's reference to another span.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A span event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Log {
    pub timestamp: i64,
    pub fields: Vec<Tag>,
}

/// The service of a span with its resource attributes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub service_name: String,
    pub tags: Vec<Tag>,
}

/// One span.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JaegerSpan {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    pub references: Vec<Reference>,
    pub flags: u32,
    /// Microseconds since the epoch.
    pub start_time: i64,
    /// Microseconds.
    pub duration: i64,
    pub tags: Vec<Tag>,
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
    pub warnings: Option<Vec<String>>,
}

/// One trace: its spans and the processes they refer to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JaegerTrace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<JaegerSpan>,
    pub processes: BTreeMap<String, Process>,
    pub warnings: Option<Vec<String>>,
}

/// An operation and its span kind (`""` when unspecified).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JaegerOperation {
    pub name: String,
    pub span_kind: &'static str,
}

impl From<&Operation> for JaegerOperation {
    fn from(op: &Operation) -> JaegerOperation {
        JaegerOperation {
            name: op.name.clone(),
            span_kind: match op.kind {
                SpanKind::Unspecified => "",
                other => other.as_str(),
            },
        }
    }
}

fn micros(nanos: i64) -> i64 {
    nanos.div_euclid(1000)
}

/// Trace IDs as Jaeger prints them: 16 hex characters for a 64-bit ID, else 32.
pub fn trace_id_hex(id: &[u8; 16]) -> String {
    meshtrace_model::trace_id_text(id)
}

fn span_tags(span: &Span) -> Vec<Tag> {
    let mut out = tags(&span.attributes);
    if !matches!(span.kind, SpanKind::Unspecified) {
        out.push(Tag::text("span.kind", span.kind.as_str()));
    }
    match span.status_code {
        StatusCode::Error => {
            out.push(Tag::new("error", &AttrValue::Bool(true)));
            out.push(Tag::text("otel.status_code", "ERROR"));
        }
        StatusCode::Ok => out.push(Tag::text("otel.status_code", "OK")),
        StatusCode::Unset => {}
    }
    let optional = [
        ("otel.status_description", &span.status_message),
        ("otel.scope.name", &span.scope_name),
        ("otel.scope.version", &span.scope_version),
    ];
    for (key, value) in optional {
        if !value.is_empty() {
            out.push(Tag::text(key, value));
        }
    }
    out.extend(tags(&span.scope_attributes));
    if !span.trace_state.is_empty() {
        out.push(Tag::text("w3c.tracestate", &span.trace_state));
    }
    out
}

fn references(span: &Span) -> Vec<Reference> {
    let parent = span.parent_span_id.map(|parent| Reference {
        ref_type: "CHILD_OF",
        trace_id: trace_id_hex(&span.trace_id),
        span_id: hex::encode(parent),
    });
    let links = span.links.iter().map(|link| Reference {
        ref_type: "FOLLOWS_FROM",
        trace_id: trace_id_hex(&link.trace_id),
        span_id: hex::encode(link.span_id),
    });
    parent.into_iter().chain(links).collect()
}

fn logs(span: &Span) -> Vec<Log> {
    span.events
        .iter()
        .map(|e| {
            let mut fields = vec![Tag::text("event", &e.name)];
            fields.extend(tags(&e.attributes));
            Log {
                timestamp: micros(e.time_unix_nano),
                fields,
            }
        })
        .collect()
}

fn warnings(t: &Trace, i: usize) -> Option<Vec<String>> {
    let all: Vec<String> = t.warnings_of(i).map(str::to_string).collect();
    (!all.is_empty()).then_some(all)
}

/// One trace in the Jaeger model, with the adjusters' warnings on its spans; spans of the same
/// service and resource share one process.
pub fn trace(t: &Trace) -> JaegerTrace {
    let spans = &t.spans;
    let mut processes = BTreeMap::new();
    // (service, resource, ID): few per trace, compared in order.
    let mut process_ids: Vec<(&str, &[KeyValue], String)> = Vec::new();
    let mut out_spans = Vec::with_capacity(spans.len());
    for (i, span) in spans.iter().enumerate() {
        let (service, resource) = (span.service_name.as_str(), &span.resource_attributes[..]);
        let known = process_ids
            .iter()
            .find(|(s, r, _)| *s == service && *r == resource);
        let pid = match known {
            Some((_, _, id)) => id.clone(),
            None => {
                let id = format!("p{}", process_ids.len() + 1);
                let process = Process {
                    service_name: span.service_name.clone(),
                    tags: tags(resource),
                };
                processes.insert(id.clone(), process);
                process_ids.push((service, resource, id.clone()));
                id
            }
        };
        out_spans.push(JaegerSpan {
            trace_id: trace_id_hex(&span.trace_id),
            span_id: hex::encode(span.span_id),
            operation_name: span.name.clone(),
            references: references(span),
            flags: 1,
            start_time: micros(span.start_unix_nano),
            duration: micros(span.duration_nano),
            tags: span_tags(span),
            logs: logs(span),
            process_id: pid,
            warnings: warnings(t, i),
        });
    }
    JaegerTrace {
        trace_id: spans
            .first()
            .map(|s| trace_id_hex(&s.trace_id))
            .unwrap_or_default(),
        spans: out_spans,
        processes,
        warnings: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::{Event, Link};
    use serde_json::json;

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
        let stored = Trace::raw(root.trace_id, vec![root, child]);
        let t = serde_json::to_value(trace(&stored)).unwrap();
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
