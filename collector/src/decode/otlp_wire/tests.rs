//! The wire reader against prost: for any bytes prost decodes, the reader gives the same
//! batch (spans, rejections, truncations); bytes prost refuses, the reader refuses too.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue as PbKv};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Status;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span as PbSpan};
use proptest::prelude::*;
use prost::Message;

use super::decode;
use super::reference::from_request;
use crate::decode::otlp::{tests::rich_span, to_request};
use crate::Limits;

/// prost's decoding then `from_request`, as a comparable string (or the failure).
fn by_prost(body: &[u8], limits: &Limits) -> Option<String> {
    let req = ExportTraceServiceRequest::decode(body).ok()?;
    Some(format!("{:?}", from_request(req, limits)))
}

fn by_wire(body: &[u8], limits: &Limits) -> Option<String> {
    decode(body, limits).ok().map(|b| format!("{b:?}"))
}

fn assert_same(body: &[u8], limits: &Limits) {
    assert_eq!(by_wire(body, limits), by_prost(body, limits));
}

#[test]
fn every_model_field_reads_as_prost_reads_it() {
    let spans = vec![rich_span(2, "a"), rich_span(3, "b"), rich_span(4, "a")];
    let body = to_request(&spans).encode_to_vec();
    let batch = decode(&body, &Limits::default()).unwrap();
    assert_eq!(batch.spans.len(), 3);
    assert!(batch.rejected.is_empty());
    assert_same(&body, &Limits::default());
}

#[test]
fn truncation_limits_apply_as_they_do_after_prost() {
    let body = to_request(&[rich_span(2, "a")]).encode_to_vec();
    let limits = Limits {
        max_attributes: 2,
        max_attribute_value_bytes: 1,
        ..Limits::default()
    };
    let batch = decode(&body, &limits).unwrap();
    assert!(batch.truncated > 0);
    assert_same(&body, &limits);
}

#[test]
fn every_prefix_of_a_request_reads_as_prost_reads_it() {
    let body = to_request(&[rich_span(2, "a"), rich_span(5, "b")]).encode_to_vec();
    for n in 0..body.len() {
        assert_same(&body[..n], &Limits::default());
    }
}

fn tagged(field: u32, message: &impl Message) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::message::encode(field, message, &mut out);
    out
}

#[test]
fn resource_and_scope_after_their_spans_still_apply_to_them() {
    let req = to_request(&[rich_span(2, "svc")]);
    let rs = &req.resource_spans[0];
    let ss = &rs.scope_spans[0];
    // ScopeSpans with its spans before its scope, ResourceSpans with its scopes first.
    let mut scope_spans = Vec::new();
    for s in &ss.spans {
        scope_spans.extend(tagged(2, s));
    }
    scope_spans.extend(tagged(1, ss.scope.as_ref().unwrap()));
    let mut resource_spans = Vec::new();
    prost::encoding::bytes::encode(2, &scope_spans, &mut resource_spans);
    resource_spans.extend(tagged(1, rs.resource.as_ref().unwrap()));
    let mut body = Vec::new();
    prost::encoding::bytes::encode(1, &resource_spans, &mut body);
    let batch = decode(&body, &Limits::default()).unwrap();
    assert_eq!(batch.spans[0].service_name, "svc");
    assert_eq!(batch.spans[0].scope_name, "lib");
    assert_same(&body, &Limits::default());
}

#[test]
fn a_message_field_sent_twice_is_merged() {
    let mut body = to_request(&[rich_span(2, "svc")]).encode_to_vec();
    // A second ResourceSpans whose resource comes in two parts.
    let extra = |key: &str| Resource {
        attributes: vec![PbKv {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(7)),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut rs = tagged(1, &extra("one"));
    rs.extend(tagged(1, &extra("two")));
    rs.extend(tagged(
        2,
        &to_request(&[rich_span(3, "x")]).resource_spans[0].scope_spans[0],
    ));
    prost::encoding::bytes::encode(1, &rs, &mut body);
    let batch = decode(&body, &Limits::default()).unwrap();
    assert_eq!(batch.spans[1].resource_attributes.len(), 2);
    assert_same(&body, &Limits::default());
}

#[test]
fn malformed_bodies_are_refused_with_the_place_named() {
    let mut req = to_request(&[rich_span(2, "a")]);
    req.resource_spans[0].scope_spans[0].spans[0].name = "\u{1F600}".into();
    let mut body = req.encode_to_vec();
    let at = body
        .windows(4)
        .position(|w| w == "\u{1F600}".as_bytes())
        .unwrap();
    body[at] = 0xff;
    assert_eq!(by_prost(&body, &Limits::default()), None);
    let e = decode(&body, &Limits::default()).unwrap_err();
    assert_eq!(e.to_string(), "Span.name: invalid utf-8");
    let e = decode(b"\xff\xff\xff\xff not protobuf", &Limits::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("ExportTraceServiceRequest: "),
        "{e}"
    );
}

#[test]
fn nesting_is_bounded() {
    let mut v = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..200 {
        v = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
        };
    }
    let mut req = to_request(&[rich_span(2, "a")]);
    req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(PbKv {
            key: "deep".into(),
            value: Some(v),
            ..Default::default()
        });
    let e = decode(&req.encode_to_vec(), &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("recursion limit"), "{e}");
}

#[test]
fn nested_unknown_groups_are_bounded_not_a_stack_overflow() {
    // Field 9 of the request, as a start-group tag a hundred thousand times over.
    let body = vec![(9 << 3) | 3; 100_000];
    let e = decode(&body, &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("recursion limit"), "{e}");
    assert_eq!(by_prost(&body, &Limits::default()), None);
    // A well-formed group is skipped like any unknown field.
    let mut body = to_request(&[rich_span(2, "a")]).encode_to_vec();
    body.extend([(9 << 3) | 3, 8, 1, (9 << 3) | 4]);
    assert_eq!(decode(&body, &Limits::default()).unwrap().spans.len(), 1);
    assert_same(&body, &Limits::default());
}

fn any_value_strategy() -> impl Strategy<Value = AnyValue> {
    use any_value::Value as V;
    let leaf = prop_oneof![
        Just(None),
        "[a-z]{0,6}".prop_map(|s| Some(V::StringValue(s))),
        any::<bool>().prop_map(|b| Some(V::BoolValue(b))),
        any::<i64>().prop_map(|i| Some(V::IntValue(i))),
        any::<f64>().prop_map(|d| Some(V::DoubleValue(d))),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(|b| Some(V::BytesValue(b))),
    ]
    .prop_map(|value| AnyValue { value });
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(|values| AnyValue {
                value: Some(V::ArrayValue(ArrayValue { values })),
            }),
            proptest::collection::vec(("[a-z]{1,3}", inner), 0..3).prop_map(|kvs| AnyValue {
                value: Some(V::KvlistValue(KeyValueList {
                    values: kvs.into_iter().map(|(k, v)| kv(k, Some(v))).collect(),
                })),
            }),
        ]
    })
}

fn kv(key: String, value: Option<AnyValue>) -> PbKv {
    PbKv {
        key,
        value,
        ..Default::default()
    }
}

fn attrs_strategy() -> impl Strategy<Value = Vec<PbKv>> {
    proptest::collection::vec(
        ("[a-z.]{0,8}", proptest::option::of(any_value_strategy())),
        0..5,
    )
    .prop_map(|kvs| kvs.into_iter().map(|(k, v)| kv(k, v)).collect())
}

/// IDs of every length that matters: valid, empty, zero and wrong sizes.
fn id_strategy(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), len),
        1 => Just(Vec::new()),
        1 => Just(vec![0; len]),
        1 => proptest::collection::vec(any::<u8>(), 1..20),
    ]
}

prop_compose! {
    fn span_strategy()(
        trace_id in id_strategy(16),
        span_id in id_strategy(8),
        parent_span_id in id_strategy(8),
        name in "[a-z/]{0,10}",
        kind in -1i32..7,
        start in prop_oneof![Just(0u64), 1_000u64..2_000, Just(u64::MAX)],
        length in prop_oneof![0u64..1_000, Just(u64::MAX)],
        attributes in attrs_strategy(),
        events in proptest::collection::vec((any::<u64>(), "[a-z]{0,4}", attrs_strategy()), 0..2),
        links in proptest::collection::vec((id_strategy(16), id_strategy(8), attrs_strategy()), 0..2),
        status in proptest::option::of((-1i32..4, "[a-z]{0,4}")),
    ) -> PbSpan {
        PbSpan {
            trace_id,
            span_id,
            parent_span_id,
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start.wrapping_add(length),
            attributes,
            events: events.into_iter().map(|(t, name, attributes)| span::Event {
                time_unix_nano: t,
                name,
                attributes,
                dropped_attributes_count: 0,
            }).collect(),
            links: links.into_iter().map(|(trace_id, span_id, attributes)| span::Link {
                trace_id,
                span_id,
                attributes,
                ..Default::default()
            }).collect(),
            status: status.map(|(code, message)| Status { code, message }),
            ..Default::default()
        }
    }
}

fn request_strategy() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope = (
        proptest::option::of(("[a-z]{0,4}", "[0-9.]{0,3}", attrs_strategy())),
        proptest::collection::vec(span_strategy(), 0..4),
    )
        .prop_map(|(scope, spans)| ScopeSpans {
            scope: scope.map(|(name, version, attributes)| InstrumentationScope {
                name,
                version,
                attributes,
                dropped_attributes_count: 0,
            }),
            spans,
            schema_url: String::new(),
        });
    let resource = (
        proptest::option::of(attrs_strategy()),
        proptest::option::of("[a-z]{0,5}"),
        proptest::collection::vec(scope, 0..3),
    )
        .prop_map(|(attrs, service, scope_spans)| ResourceSpans {
            resource: attrs.map(|mut attributes| {
                if let Some(s) = service {
                    let value = AnyValue {
                        value: Some(any_value::Value::StringValue(s)),
                    };
                    attributes.push(kv("service.name".into(), Some(value)));
                }
                Resource {
                    attributes,
                    ..Default::default()
                }
            }),
            scope_spans,
            schema_url: String::new(),
        });
    proptest::collection::vec(resource, 0..3)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_request_reads_as_prost_reads_it(req in request_strategy()) {
        let body = req.encode_to_vec();
        let limits = Limits { max_attributes: 3, max_attribute_value_bytes: 5, ..Limits::default() };
        prop_assert!(by_wire(&body, &limits).is_some());
        prop_assert_eq!(by_wire(&body, &limits), by_prost(&body, &limits));
    }

    #[test]
    fn damaged_requests_read_as_prost_reads_them_when_prost_accepts(
        req in request_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut body = req.encode_to_vec();
        if !body.is_empty() {
            for (at, byte) in flips {
                let i = at.index(body.len());
                body[i] = byte;
            }
        }
        let limits = Limits::default();
        if let Some(expected) = by_prost(&body, &limits) {
            prop_assert_eq!(by_wire(&body, &limits), Some(expected));
        }
    }
}
