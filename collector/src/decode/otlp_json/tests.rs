//! Tests of the OTLP/JSON decoder and encoder against the OTLP spec example, Jaeger's storage
//! fixtures and Tempo's output.

use super::*;
use crate::decode::otlp::tests::rich_span;
use crate::RejectReason;
use meshtrace_model::{AttrValue, KeyValue, SpanKind, StatusCode};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn decode_ok(body: &[u8]) -> Batch {
    decode(body, &Limits::default()).unwrap()
}

#[test]
fn spec_example_with_upper_case_ids_and_numeric_kind() {
    let batch = decode_ok(&read("otlp/trace.json"));
    assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
    let [s] = batch.spans.as_slice() else {
        panic!("want 1 span")
    };
    assert_eq!(s.trace_id_hex(), "5b8efff798038103d269b633813fc60c");
    assert_eq!(s.span_id_hex(), "eee19b7ec3c1b174");
    assert_eq!(
        s.parent_span_id.map(hex::encode).as_deref(),
        Some("eee19b7ec3c1b173")
    );
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.service_name, "my.service");
    assert!(s.resource_attributes.is_empty());
    assert_eq!(
        (s.scope_name.as_str(), s.scope_version.as_str()),
        ("my.library", "1.0.0")
    );
    assert_eq!(
        s.scope_attributes,
        vec![KeyValue::string(
            "my.scope.attribute",
            "some scope attribute"
        )]
    );
    assert_eq!(
        s.attribute("my.span.attr"),
        Some(&AttrValue::Str("some value".into()))
    );
    assert_eq!(
        (s.start_unix_nano, s.duration_nano),
        (1_544_712_660_000_000_000, 1_000_000_000)
    );
}

#[test]
fn all_jaeger_storage_fixtures_decode_with_the_stated_counts() {
    let facts: Value = serde_json::from_slice(&read("facts.json")).unwrap();
    let expected = facts["jaeger-storage-suite"]["fixtures"]
        .as_object()
        .unwrap();
    assert_eq!(expected.len(), 32);
    let dir = format!("{FIXTURES}/jaeger-storage-suite/traces");
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let batch = decode_ok(&std::fs::read(&path).unwrap());
        assert!(batch.rejected.is_empty(), "{name}: {:?}", batch.rejected);
        let want = &expected[&name];
        assert_eq!(
            batch.spans.len() as u64,
            want["spans"].as_u64().unwrap(),
            "{name}"
        );
        let mut services: Vec<&str> = batch
            .spans
            .iter()
            .map(|s| s.service_name.as_str())
            .collect();
        services.sort();
        services.dedup();
        let want_services: Vec<&str> = want["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(services, want_services, "{name}");
        files += 1;
    }
    assert_eq!(files, 32);
}

#[test]
fn example_trace_kinds_and_link_attributes() {
    let batch = decode_ok(&read("jaeger-storage-suite/traces/example_trace.json"));
    let kind_of = |op: &str| batch.spans.iter().find(|s| s.name == op).unwrap().kind;
    assert_eq!(kind_of("example-operation-3"), SpanKind::Server);
    assert_eq!(kind_of("example-operation-4"), SpanKind::Client);
    assert_eq!(batch.spans[0].events.len(), 2);

    let batch = decode_ok(&read(
        "jaeger-storage-suite/traces/link_attributes_trace.json",
    ));
    let links = &batch.spans[0].links;
    assert!(!links.is_empty());
    let all: Vec<&KeyValue> = links.iter().flat_map(|l| &l.attributes).collect();
    assert!(all
        .iter()
        .any(|kv| kv.value == AttrValue::Bytes(vec![0, 0, 0x30, 0x39])));
    assert!(all.iter().any(|kv| kv.value == AttrValue::Double(72.5)));
}

#[test]
fn tempo_batches_with_base64_ids_and_string_kinds() {
    let batch = decode_ok(&read("istio/responseTrace.json"));
    assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
    assert_eq!(batch.spans.len(), 8);
    assert!(batch
        .spans
        .iter()
        .all(|s| s.trace_id_hex() == "3ba55609c3cde49649cd77d1f9dcd936"));
    let clients = batch
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .count();
    let servers = batch
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server)
        .count();
    assert_eq!((clients, servers), (4, 4));
    assert_eq!(
        batch
            .spans
            .iter()
            .filter(|s| s.parent_span_id.is_none())
            .count(),
        1
    );
}

fn one_span(span: Value) -> Vec<u8> {
    let doc = json!({ "resourceSpans": [{ "scopeSpans": [{ "spans": [span] }] }] });
    serde_json::to_vec(&doc).unwrap()
}

fn base_span() -> Value {
    json!({
        "traceId": "0102030405060708090a0b0c0d0e0f10",
        "spanId": "0102030405060708",
        "name": "x",
        "startTimeUnixNano": 1000,
        "endTimeUnixNano": "3000",
    })
}

#[test]
fn lenient_kinds_ints_and_status() {
    let mut sp = base_span();
    sp["kind"] = json!("SPAN_KIND_PRODUCER");
    sp["status"] = json!({ "code": "STATUS_CODE_ERROR", "message": "m" });
    sp["attributes"] = json!([
        { "key": "a", "value": { "intValue": "42" } },
        { "key": "b", "value": { "intValue": 7 } },
        { "key": "c", "value": {} },
    ]);
    let batch = decode_ok(&one_span(sp));
    let s = &batch.spans[0];
    assert_eq!(s.kind, SpanKind::Producer);
    assert_eq!(
        (s.status_code, s.status_message.as_str()),
        (StatusCode::Error, "m")
    );
    assert_eq!(s.attribute("a"), Some(&AttrValue::Int(42)));
    assert_eq!(s.attribute("b"), Some(&AttrValue::Int(7)));
    assert_eq!(s.attribute("c"), Some(&AttrValue::Str(String::new())));
    assert_eq!((s.start_unix_nano, s.duration_nano), (1000, 2000));
    assert_eq!(s.service_name, "unknown_service");
}

#[test]
fn bad_ids_reject_only_their_span() {
    let mut bad = base_span();
    bad["spanId"] = json!("zz-not-hex");
    let mut short = base_span();
    short["traceId"] = json!("0102");
    let doc =
        json!({ "resourceSpans": [{ "scopeSpans": [{ "spans": [bad, short, base_span()] }] }] });
    let batch = decode_ok(&serde_json::to_vec(&doc).unwrap());
    assert_eq!(batch.spans.len(), 1);
    let reasons: Vec<_> = batch.rejected.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [RejectReason::InvalidSpanId, RejectReason::InvalidTraceId]
    );
    assert!(batch.rejected[0]
        .message
        .starts_with("span 0 of resource 0: spanId"));
    assert_eq!(
        batch.rejected[1].message,
        "span 1 of resource 0: trace_id must be 16 bytes, got 2"
    );
}

#[test]
fn null_message_fields_read_as_absent() {
    // proto3's JSON mapping reads `null` as the field's default; the serde form of
    // `opentelemetry-proto` (what Rust exporters send) writes `"scope": null`.
    let mut sp = base_span();
    sp["status"] = Value::Null;
    let doc = json!({ "resourceSpans": [{
        "resource": null,
        "scopeSpans": [{ "scope": null, "spans": [sp], "schemaUrl": "" }],
    }] });
    let batch = decode(&serde_json::to_vec(&doc).unwrap(), &Limits::default()).unwrap();
    assert_eq!(batch.spans.len(), 1);
    assert_eq!(batch.spans[0].scope_name, "");
    assert_eq!(batch.spans[0].service_name, "unknown_service");
    // Anything else than an object or null is still refused.
    let bad = json!({ "resourceSpans": [{ "scopeSpans": [{ "scope": 5, "spans": [] }] }] });
    let err = decode(&serde_json::to_vec(&bad).unwrap(), &Limits::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("resourceSpans[0].scopeSpans[0].scope: invalid type: integer `5`"),
        "{err}"
    );
}

#[test]
fn undecodable_bodies_are_invalid_argument() {
    let msg = |body: &[u8]| match decode(body, &Limits::default()) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("want InvalidArgument, got {other:?}"),
    };
    assert!(msg(b"{not json").starts_with("invalid otlp json: "));
    assert!(msg(b"[]").contains("expected an OTLP/JSON object"));
    let m = msg(br#"{"resourceSpans": 5}"#);
    assert!(
        m.contains("resourceSpans: invalid type: integer `5`"),
        "{m}"
    );
    // The path of the field that failed, and what is wrong with it.
    let mut sp = base_span();
    sp["startTimeUnixNano"] = json!("soon");
    let m = msg(&one_span(sp));
    let want = r#"resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano: "soon" is not"#;
    assert!(m.contains(want), "{m}");
    let mut sp = base_span();
    sp["attributes"] = json!([{ "key": "http.status_code", "value": { "intValue": "x" } }]);
    let m = msg(&one_span(sp));
    assert!(
        m.contains(r#"spans[0].attributes: attribute "http.status_code": intValue "x""#),
        "{m}"
    );
    assert!(m.matches(" at line ").count() == 1, "one position: {m}");
}

#[test]
fn encode_decode_round_trip() {
    let spans = vec![
        rich_span(2, "svc-a"),
        rich_span(3, "svc-b"),
        rich_span(4, "svc-a"),
    ];
    let doc = encode(&spans);
    let first = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(first["traceId"], json!("02020202020202020202020202020202"));
    assert_eq!(first["startTimeUnixNano"], json!("1700000000000000002"));
    assert_eq!(first["attributes"][2]["value"], json!({ "intValue": "-7" }));
    let batch = decode_ok(&serde_json::to_vec(&doc).unwrap());
    assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
    let mut got = batch.spans;
    got.sort_by_key(|s| s.span_id);
    assert_eq!(got, spans);
}

/// Every object key of a JSON document rewritten from lowerCamelCase to the proto field name
/// (`startTimeUnixNano` -> `start_time_unix_nano`); values (attribute keys among them) kept.
fn proto_names(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let mut snake = String::new();
                    for c in k.chars() {
                        if c.is_ascii_uppercase() {
                            snake.push('_');
                        }
                        snake.push(c.to_ascii_lowercase());
                    }
                    (snake, proto_names(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(proto_names).collect()),
        other => other,
    }
}

/// Differential: what Rust exporters send (the serde form of `opentelemetry-proto`, with
/// `null` for absent messages), the same document with proto field names, and the protobuf
/// encoding of the same request (read by the wire reader) all decode to the same spans.
#[test]
fn serde_form_and_proto_names_decode_as_protobuf_does() {
    use crate::decode::otlp::{decode_protobuf, to_request};
    use prost::Message;
    let mut bare = rich_span(7, "svc-c");
    (bare.scope_name, bare.scope_version) = (String::new(), String::new());
    bare.scope_attributes.clear();
    bare.resource_attributes.clear();
    let spans = vec![rich_span(2, "svc-a"), rich_span(3, "svc-b"), bare];
    let mut req = to_request(&spans);
    // An absent scope: serde writes `"scope": null`.
    for rs in &mut req.resource_spans {
        for ss in &mut rs.scope_spans {
            if ss.scope.as_ref().is_some_and(|s| s.name.is_empty()) {
                ss.scope = None;
            }
        }
    }
    let wire = decode_protobuf(&req.encode_to_vec(), &Limits::default()).unwrap();
    assert!(wire.rejected.is_empty());
    assert_eq!(wire.spans.len(), 3);
    let serde_form = serde_json::to_value(&req).unwrap();
    assert!(
        serde_form.to_string().contains("\"scope\":null"),
        "the serde form writes null for an absent message"
    );
    for doc in [serde_form.clone(), proto_names(serde_form)] {
        let batch = decode_ok(&serde_json::to_vec(&doc).unwrap());
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        assert_eq!(batch.spans, wire.spans, "{doc}");
    }
}

/// proto3's JSON mapping reads `null` as the default of any field: a span whose every
/// optional field is null decodes, with defaults.
#[test]
fn null_reads_as_the_default_of_any_field() {
    let mut sp = base_span();
    for k in [
        "parentSpanId",
        "traceState",
        "kind",
        "status",
        "attributes",
        "events",
        "links",
        "droppedAttributesCount",
        "flags",
    ] {
        sp[k] = Value::Null;
    }
    sp["events"] = json!([{ "timeUnixNano": null, "name": null, "attributes": null }]);
    sp["status"] = json!({ "code": null, "message": null });
    let doc = json!({ "resourceSpans": [{
        "resource": { "attributes": null },
        "schemaUrl": null,
        "scopeSpans": [{ "scope": { "name": null, "version": null }, "spans": [sp] }, { "spans": null }],
    }, { "scopeSpans": null }] });
    let batch = decode_ok(&serde_json::to_vec(&doc).unwrap());
    assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
    let s = &batch.spans[0];
    assert_eq!(
        (s.kind, s.status_code),
        (SpanKind::Unspecified, StatusCode::Unset)
    );
    assert_eq!((s.parent_span_id, s.events.len()), (None, 1));
    assert!(s.attributes.is_empty() && s.links.is_empty());
    // Null where a value is required (an ID) is the empty ID: that span alone is refused.
    let mut no_id = base_span();
    no_id["traceId"] = Value::Null;
    let batch = decode_ok(&one_span(no_id));
    assert_eq!(batch.rejected[0].reason, RejectReason::InvalidTraceId);
}

/// JSON objects have no field order: a resource written after its scopes and a scope after
/// its spans give the same spans as the usual order; escaped IDs read as plain ones.
#[test]
fn resource_and_scope_after_their_spans() {
    let span = r#"{"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708",
        "name": "x", "startTimeUnixNano": "1000", "endTimeUnixNano": "3000"}"#;
    let resource = r#"{"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}},
        {"key": "host", "value": {"stringValue": "h1"}}]}"#;
    let scope = r#"{"name": "lib", "version": "1"}"#;
    let ordered = format!(
        r#"{{"resourceSpans": [{{"resource": {resource}, "scopeSpans": [
            {{"scope": {scope}, "spans": [{span}, {span}]}}, {{"spans": [{span}]}}]}}]}}"#
    );
    let shuffled = format!(
        r#"{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}, {span}], "scope": {scope}}},
            {{"spans": [{span}]}}], "resource": {resource}}}]}}"#
    );
    let escaped = shuffled.replace(r#""0102030405060708""#, r#""\u00301020304050607\u00308""#);
    let want = decode_ok(ordered.as_bytes());
    assert_eq!(want.spans.len(), 3);
    assert_eq!(want.spans[0].service_name, "svc");
    assert_eq!(want.spans[0].scope_name, "lib");
    assert_eq!(want.spans[2].scope_name, "");
    assert_eq!(
        want.spans[0].resource_attributes,
        vec![KeyValue::string("host", "h1")]
    );
    for body in [shuffled, escaped] {
        let got = decode_ok(body.as_bytes());
        assert!(got.rejected.is_empty(), "{:?}", got.rejected);
        assert_eq!(got.spans, want.spans, "{body}");
    }
    // A resource that never comes: the spans have none.
    let none = format!(r#"{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}]}}]}}]}}"#);
    assert_eq!(
        decode_ok(none.as_bytes()).spans[0].service_name,
        "unknown_service"
    );
}

/// A field under two names (or twice) is read once: spans are not ingested twice, and `null`
/// under one name does not erase the value under the other; enums written as floats read as
/// their default.
#[test]
fn aliases_and_repeated_keys_are_read_once() {
    let span = r#"{"traceId": "0102030405060708090a0b0c0d0e0f10", "trace_id": null,
        "spanId": "0102030405060708", "name": "x", "kind": 2.0, "status": {"code": 1.0},
        "startTimeUnixNano": "1000", "endTimeUnixNano": "3000"}"#;
    let resource = format!(
        r#"{{"scopeSpans": [{{"spans": [{span}]}}], "scope_spans": [{{"spans": [{span}]}}]}}"#
    );
    let body = format!(
        r#"{{"resourceSpans": [{resource}], "batches": [{resource}], "result": {{"resourceSpans": [{resource}]}}}}"#
    );
    let batch = decode_ok(body.as_bytes());
    assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
    assert_eq!(batch.spans.len(), 1, "one resource, one scope list");
    let s = &batch.spans[0];
    assert_eq!(s.trace_id_hex(), "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(
        (s.kind, s.status_code),
        (SpanKind::Unspecified, StatusCode::Unset)
    );
    // api_v3's wrapper alone is read.
    let wrapped = format!(r#"{{"result": {{"resourceSpans": [{resource}]}}}}"#);
    assert_eq!(decode_ok(wrapped.as_bytes()).spans.len(), 1);
}
