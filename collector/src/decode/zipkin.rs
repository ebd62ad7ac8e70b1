//! Zipkin v2 JSON: decoding a `POST /api/v2/spans` body (a JSON array of spans) into spans.
//!
//! Mapping: `traceId` (16 or 32 hex characters, 64-bit IDs left-padded with zeros), `id`,
//! `parentId`; `kind` CLIENT/SERVER/PRODUCER/CONSUMER (absent → unspecified); `timestamp` and
//! `duration` in µs (a missing timestamp rejects the span, a missing duration is 0);
//! `localEndpoint.serviceName`, lower-cased, is the service; `remoteEndpoint` becomes
//! `peer.service`, `net.peer.ip` and `net.peer.port`; tags become string attributes and an
//! `error` tag sets the status to error; annotations become events; `shared: true` becomes
//! `zipkin.shared = true`. The `debug` flag is ignored.

use std::collections::{BTreeMap, HashMap};

use meshtrace_model::{AttrValue, Event, KeyValue, Span, SpanId, SpanKind, StatusCode, TraceId};
use serde::Deserialize;
use serde_json::Value;

use super::ids::padded_hex;
use crate::validate::{validate_raw, Position, RawIds};
use crate::{Batch, Error, Limits, RejectReason};

/// Attribute set on the SERVER half of an RPC that shares its span ID with the CLIENT half.
pub const SHARED: &str = "zipkin.shared";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: Option<String>,
    id: Option<String>,
    parent_id: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    timestamp: Option<i64>,
    duration: Option<i64>,
    local_endpoint: Option<Endpoint>,
    remote_endpoint: Option<Endpoint>,
    annotations: Option<Vec<Annotation>>,
    tags: Option<BTreeMap<String, Value>>,
    shared: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    service_name: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    port: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Annotation {
    timestamp: Option<i64>,
    value: Option<String>,
}

/// Decodes a Zipkin v2 JSON array of spans.
pub fn decode(body: &[u8], limits: &Limits) -> Result<Batch, Error> {
    let spans: Vec<ZipkinSpan> = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidArgument(format!("invalid zipkin v2 json: {e}")))?;
    let mut batch = Batch::default();
    let (spans, merged) = merge_fragments(spans);
    batch.merged = merged;
    for (i, z) in spans.into_iter().enumerate() {
        convert(
            Position {
                resource: None,
                span: i,
            },
            z,
            limits,
            &mut batch,
        );
    }
    Ok(batch)
}

/// The identity Zipkin merges fragments by: trace, span ID and the reporting service.
fn fragment_key(z: &ZipkinSpan) -> Option<(String, String, String)> {
    let trace = z.trace_id.as_deref()?.to_ascii_lowercase();
    let trace = format!("{trace:0>32}");
    let id = z.id.as_deref()?.to_ascii_lowercase();
    let service = z
        .local_endpoint
        .as_ref()
        .and_then(|e| e.service_name.as_deref())
        .unwrap_or_default()
        .to_lowercase();
    Some((trace, id, service))
}

/// Folds records without a timestamp (late annotations or tags reported separately, as
/// Zipkin allows) into the record of the same span that has one, as Zipkin's own merge does.
/// Returns the remaining records and how many were folded.
fn merge_fragments(spans: Vec<ZipkinSpan>) -> (Vec<ZipkinSpan>, u64) {
    let mut anchor: HashMap<(String, String, String), usize> = HashMap::new();
    for (i, z) in spans.iter().enumerate() {
        if z.timestamp.is_some() {
            if let Some(key) = fragment_key(z) {
                anchor.entry(key).or_insert(i);
            }
        }
    }
    let mut slots: Vec<Option<ZipkinSpan>> = spans.into_iter().map(Some).collect();
    let mut merged = 0;
    for i in 0..slots.len() {
        let target = match slots[i].as_ref() {
            Some(z) if z.timestamp.is_none() => {
                fragment_key(z).and_then(|k| anchor.get(&k).copied())
            }
            _ => None,
        };
        let Some(target) = target else { continue };
        let Some(fragment) = slots[i].take() else {
            continue;
        };
        if let Some(into) = slots[target].as_mut() {
            absorb(into, fragment);
            merged += 1;
        }
    }
    (slots.into_iter().flatten().collect(), merged)
}

fn absorb(into: &mut ZipkinSpan, from: ZipkinSpan) {
    into.duration = into.duration.or(from.duration);
    into.parent_id = into.parent_id.take().or(from.parent_id);
    into.kind = into.kind.take().or(from.kind);
    into.remote_endpoint = into.remote_endpoint.take().or(from.remote_endpoint);
    into.shared = into.shared.or(from.shared);
    if into.name.as_deref().unwrap_or_default().is_empty() {
        into.name = from.name;
    }
    if let Some(tags) = from.tags {
        let mine = into.tags.get_or_insert_with(BTreeMap::new);
        for (k, v) in tags {
            mine.entry(k).or_insert(v);
        }
    }
    if let Some(anns) = from.annotations {
        into.annotations.get_or_insert_with(Vec::new).extend(anns);
    }
}

fn convert(at: Position, z: ZipkinSpan, limits: &Limits, batch: &mut Batch) {
    let Some((trace_id, span_id, parent)) = ids(at, &z, batch) else {
        return;
    };
    let mut attributes: Vec<KeyValue> = Vec::new();
    let (mut status_code, mut status_message) = (StatusCode::Unset, String::new());
    for (key, value) in z.tags.unwrap_or_default() {
        let value = match value {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if key == "error" {
            status_code = StatusCode::Error;
            if !value.is_empty() && value != "true" {
                status_message = value.clone();
            }
        }
        attributes.push(KeyValue::string(key, value));
    }
    if let Some(remote) = z.remote_endpoint {
        attributes.extend(remote_attributes(remote));
    }
    if z.shared == Some(true) {
        attributes.push(KeyValue::new(SHARED, AttrValue::Bool(true)));
    }
    let local = z.local_endpoint.unwrap_or_default();
    let span = Span {
        name: z.name.unwrap_or_default(),
        kind: z
            .kind
            .as_deref()
            .and_then(SpanKind::parse)
            .unwrap_or_default(),
        start_unix_nano: micros(z.timestamp.unwrap_or(0)),
        duration_nano: micros(z.duration.unwrap_or(0)),
        status_code,
        status_message,
        service_name: local.service_name.unwrap_or_default().to_lowercase(),
        attributes,
        events: z
            .annotations
            .unwrap_or_default()
            .into_iter()
            .map(|a| Event {
                time_unix_nano: micros(a.timestamp.unwrap_or(0)),
                name: a.value.unwrap_or_default(),
                attributes: Vec::new(),
            })
            .collect(),
        ..Span::default()
    };
    let raw = RawIds {
        trace_id: &trace_id,
        span_id: &span_id,
        parent_span_id: parent.as_ref().map(|p| p.as_slice()).unwrap_or_default(),
    };
    validate_raw(at, raw, span, limits, batch);
}

/// Parses the three IDs, rejecting the span if one is malformed.
fn ids(
    at: Position,
    z: &ZipkinSpan,
    batch: &mut Batch,
) -> Option<(TraceId, SpanId, Option<SpanId>)> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let trace = padded_hex::<16>(&text(&z.trace_id));
    let span = padded_hex::<8>(&text(&z.id));
    let parent = match z.parent_id.as_deref() {
        None | Some("") => Ok(None),
        Some(p) => padded_hex::<8>(p).map(Some),
    };
    match (trace, span, parent) {
        (Ok(t), Ok(s), Ok(p)) => Some((t, s, p)),
        (Err(e), _, _) => {
            batch.reject(RejectReason::InvalidTraceId, at, format!("traceId {e}"));
            None
        }
        (_, Err(e), _) => {
            batch.reject(RejectReason::InvalidSpanId, at, format!("id {e}"));
            None
        }
        (_, _, Err(e)) => {
            batch.reject(
                RejectReason::InvalidParentSpanId,
                at,
                format!("parentId {e}"),
            );
            None
        }
    }
}

fn remote_attributes(remote: Endpoint) -> Vec<KeyValue> {
    let mut out = Vec::new();
    if let Some(name) = remote.service_name.filter(|s| !s.is_empty()) {
        out.push(KeyValue::string("peer.service", name.to_lowercase()));
    }
    if let Some(ip) = remote.ipv4.or(remote.ipv6).filter(|s| !s.is_empty()) {
        out.push(KeyValue::string("net.peer.ip", ip));
    }
    if let Some(port) = remote.port.filter(|p| *p > 0) {
        out.push(KeyValue::new("net.peer.port", AttrValue::Int(port)));
    }
    out
}

fn micros(us: i64) -> i64 {
    us.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn fixture(name: &str) -> Batch {
        let path = format!(
            "{}/../tests/fixtures/zipkin/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        decode(&body, &Limits::default()).unwrap()
    }

    /// (file, records, accepted, events, error statuses, services, shared)
    const EXPECTED: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        ("ascend.json", 8, 8, 0, 0, 3, 2),
        ("envoy.json", 1, 1, 0, 0, 1, 1),
        ("messaging-kafka.json", 28, 28, 0, 3, 2, 0),
        ("messaging2.json", 11, 11, 0, 0, 4, 1),
        ("skew.json", 4, 4, 0, 0, 2, 1),
        (
            "smartthings-mobile-web-install.json",
            1041,
            957,
            92,
            2,
            16,
            294,
        ),
        (
            "smartthings-oauth-authorization.json",
            175,
            175,
            9,
            2,
            8,
            45,
        ),
        ("yelp.json", 16, 16, 1, 0, 6, 4),
    ];

    #[test]
    fn every_fixture_decodes_with_the_stated_counts() {
        for &(name, records, accepted, events, errors, services, shared) in EXPECTED {
            let b = fixture(name);
            assert_eq!(b.total() + b.merged as usize, records, "{name} records");
            assert_eq!(b.spans.len(), accepted, "{name} accepted");
            assert!(
                b.rejected
                    .iter()
                    .all(|r| r.reason == RejectReason::MissingTimestamp),
                "{name}"
            );
            let got_events: usize = b.spans.iter().map(|s| s.events.len()).sum();
            assert_eq!(got_events, events, "{name} events");
            let got_errors = b
                .spans
                .iter()
                .filter(|s| s.status_code == StatusCode::Error)
                .count();
            assert_eq!(got_errors, errors, "{name} errors");
            let svcs: BTreeSet<&str> = b.spans.iter().map(|s| s.service_name.as_str()).collect();
            assert_eq!(svcs.len(), services, "{name} services");
            let got_shared = b
                .spans
                .iter()
                .filter(|s| s.attribute(SHARED).is_some())
                .count();
            assert_eq!(got_shared, shared, "{name} shared");
        }
    }

    #[test]
    fn yelp_ids_endpoints_and_kinds() {
        let b = fixture("yelp.json");
        let s = &b.spans[0];
        assert_eq!(s.trace_id_hex(), "0000000000000000a03ee8fff1dcd9b9");
        assert_eq!(s.span_id_hex(), "15fc03927f0f68df");
        assert_eq!(
            s.parent_span_id.map(hex::encode).as_deref(),
            Some("f5f268651b2a2b34")
        );
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.service_name, "mobile_api");
        assert_eq!(
            (s.start_unix_nano, s.duration_nano),
            (1_571_896_375_322_000_000, 14_000_000)
        );
        assert_eq!(
            s.attribute("peer.service"),
            Some(&AttrValue::Str("blt".into()))
        );
        assert_eq!(s.attribute("net.peer.port"), Some(&AttrValue::Int(31882)));
        assert_eq!(
            s.attribute("request_budget"),
            Some(&AttrValue::Str("9980".into()))
        );
    }

    #[test]
    fn envoy_without_service_name_is_unknown_service() {
        let b = fixture("envoy.json");
        assert_eq!(b.spans[0].service_name, "unknown_service");
        assert_eq!(b.spans[0].parent_span_id, None);
        assert_eq!(
            b.spans[0].attribute("http.status_code"),
            Some(&AttrValue::Str("200".into()))
        );
    }

    #[test]
    fn error_tag_sets_status_and_message() {
        let b = fixture("messaging-kafka.json");
        let msgs: Vec<&str> = b
            .spans
            .iter()
            .filter(|s| s.status_code == StatusCode::Error)
            .map(|s| s.status_message.as_str())
            .collect();
        assert_eq!(msgs, ["some error", "some error", ""]);
    }

    fn decode_one(span: &str) -> Batch {
        decode(format!("[{span}]").as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn malformed_spans_are_rejected_with_reasons() {
        let cases = [
            (
                r#"{"traceId":"xyz","id":"1","timestamp":1}"#,
                RejectReason::InvalidTraceId,
            ),
            (
                r#"{"traceId":"1","id":"","timestamp":1}"#,
                RejectReason::InvalidSpanId,
            ),
            (
                r#"{"traceId":"1","id":"2","parentId":"12345678901234567","timestamp":1}"#,
                RejectReason::InvalidParentSpanId,
            ),
            (
                r#"{"traceId":"1","id":"2"}"#,
                RejectReason::MissingTimestamp,
            ),
            (
                r#"{"traceId":"1","id":"2","timestamp":5,"duration":-3}"#,
                RejectReason::EndBeforeStart,
            ),
        ];
        for (json, reason) in cases {
            let b = decode_one(json);
            assert!(b.spans.is_empty(), "{json}");
            assert_eq!(
                b.rejected[0].reason, reason,
                "{json}: {}",
                b.rejected[0].message
            );
            assert!(
                b.rejected[0].message.starts_with("span 0: "),
                "{}",
                b.rejected[0].message
            );
        }
        let ok = decode_one(r#"{"traceId":"1","id":"2","timestamp":5,"shared":true,"debug":true}"#);
        assert_eq!(ok.spans[0].duration_nano, 0, "missing duration is 0");
        assert_eq!(ok.spans[0].attribute(SHARED), Some(&AttrValue::Bool(true)));
    }

    #[test]
    fn limits_are_applied_and_counted() {
        let limits = Limits {
            max_attributes: 2,
            max_name_bytes: 4,
            ..Limits::default()
        };
        let body = br#"[{"traceId":"1","id":"2","timestamp":5,"name":"longname",
            "tags":{"a":"1","b":"2","c":"3","d":"4"}}]"#;
        let b = decode(body, &limits).unwrap();
        assert_eq!(b.spans[0].name, "long");
        assert_eq!(b.spans[0].attributes.len(), 2);
        assert_eq!(b.truncated, 1 + 2);
    }

    #[test]
    fn undecodable_body_is_invalid_argument() {
        for body in [&b"{\"traceId\":1}"[..], b"[{\"timestamp\":\"x\"}]", b"nope"] {
            let err = decode(body, &Limits::default()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.starts_with("invalid zipkin v2 json: ")),
                "{err}"
            );
        }
    }
}
