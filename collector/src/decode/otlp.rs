//! OTLP protobuf: decoding an `ExportTraceServiceRequest` body into spans (by the wire reader,
//! [`super::otlp_wire`]), and building a request from spans (grouped by resource and scope) for
//! `import --to`, load generation and the OTLP/JSON encoder.

use meshtrace_model::{AttrValue, KeyValue, Span, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue as PbKeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Status};

use super::SERVICE_NAME;
use crate::{Batch, Error, Limits};

/// Decodes a protobuf `ExportTraceServiceRequest` body, straight from its bytes (see
/// [`super::otlp_wire`]).
pub fn decode_protobuf(body: &[u8], limits: &Limits) -> Result<Batch, Error> {
    super::otlp_wire::decode(body, limits)
        .map_err(|e| Error::InvalidArgument(format!("invalid otlp protobuf: {e}")))
}

/// Converts model attributes to OTLP attributes.
pub fn attrs_to_pb(attrs: &[KeyValue]) -> Vec<PbKeyValue> {
    attrs
        .iter()
        .map(|kv| PbKeyValue {
            key: kv.key.clone(),
            value: Some(value_to_pb(&kv.value)),
            ..PbKeyValue::default()
        })
        .collect()
}

/// Converts a model value to an OTLP value.
pub fn value_to_pb(v: &AttrValue) -> AnyValue {
    use any_value::Value as V;
    let value = match v {
        AttrValue::Str(s) => V::StringValue(s.clone()),
        AttrValue::Bool(b) => V::BoolValue(*b),
        AttrValue::Int(i) => V::IntValue(*i),
        AttrValue::Double(d) => V::DoubleValue(*d),
        AttrValue::Bytes(b) => V::BytesValue(b.clone()),
        AttrValue::Array(a) => V::ArrayValue(ArrayValue {
            values: a.iter().map(value_to_pb).collect(),
        }),
        AttrValue::KvList(kvs) => V::KvlistValue(KeyValueList {
            values: attrs_to_pb(kvs),
        }),
    };
    AnyValue { value: Some(value) }
}

/// Spans of one scope, keyed by the first of them.
type ScopeGroup<'a> = (&'a Span, Vec<&'a Span>);
/// Scopes of one resource, keyed by the first span of the resource.
type ResourceGroup<'a> = (&'a Span, Vec<ScopeGroup<'a>>);

/// Builds a request from spans, one `ResourceSpans` per distinct (service, resource
/// attributes) and one `ScopeSpans` per distinct scope inside it, in first-seen order.
pub fn to_request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut groups: Vec<ResourceGroup<'_>> = Vec::new();
    for s in spans {
        let r = match groups.iter().rposition(|(k, _)| same_resource(k, s)) {
            Some(i) => i,
            None => {
                groups.push((s, Vec::new()));
                groups.len() - 1
            }
        };
        let scopes = &mut groups[r].1;
        match scopes.iter().rposition(|(k, _)| same_scope(k, s)) {
            Some(i) => scopes[i].1.push(s),
            None => scopes.push((s, vec![s])),
        }
    }
    let resource_spans = groups
        .into_iter()
        .map(|(res, scopes)| ResourceSpans {
            resource: Some(resource_to_pb(res)),
            scope_spans: scopes
                .into_iter()
                .map(|(sc, members)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: sc.scope_name.clone(),
                        version: sc.scope_version.clone(),
                        attributes: attrs_to_pb(&sc.scope_attributes),
                        dropped_attributes_count: 0,
                    }),
                    spans: members.into_iter().map(span_to_pb).collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn same_resource(a: &Span, b: &Span) -> bool {
    a.service_name == b.service_name && a.resource_attributes == b.resource_attributes
}

fn same_scope(a: &Span, b: &Span) -> bool {
    a.scope_name == b.scope_name
        && a.scope_version == b.scope_version
        && a.scope_attributes == b.scope_attributes
}

fn resource_to_pb(s: &Span) -> Resource {
    let mut attributes = Vec::with_capacity(s.resource_attributes.len() + 1);
    if !s.service_name.is_empty() {
        attributes.push(PbKeyValue {
            key: SERVICE_NAME.to_string(),
            value: Some(value_to_pb(&AttrValue::Str(s.service_name.clone()))),
            ..PbKeyValue::default()
        });
    }
    attributes.extend(attrs_to_pb(&s.resource_attributes));
    Resource {
        attributes,
        ..Resource::default()
    }
}

/// Converts one model span to an OTLP span.
pub fn span_to_pb(s: &Span) -> opentelemetry_proto::tonic::trace::v1::Span {
    let start = u64::try_from(s.start_unix_nano).unwrap_or(0);
    let end = u64::try_from(s.end_unix_nano()).unwrap_or(0);
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.clone(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: s.kind.to_otlp(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attrs_to_pb(&s.attributes),
        events: s
            .events
            .iter()
            .map(|e| span::Event {
                time_unix_nano: u64::try_from(e.time_unix_nano).unwrap_or(0),
                name: e.name.clone(),
                attributes: attrs_to_pb(&e.attributes),
                dropped_attributes_count: 0,
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| span::Link {
                trace_id: l.trace_id.to_vec(),
                span_id: l.span_id.to_vec(),
                trace_state: l.trace_state.clone(),
                attributes: attrs_to_pb(&l.attributes),
                ..span::Link::default()
            })
            .collect(),
        status: (s.status_code != StatusCode::Unset || !s.status_message.is_empty()).then(|| {
            Status {
                message: s.status_message.clone(),
                code: s.status_code.to_otlp(),
            }
        }),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::RejectReason;
    use meshtrace_model::{Event, Link, SpanKind};
    use prost::Message;

    fn decode(req: &ExportTraceServiceRequest) -> Batch {
        decode_protobuf(&req.encode_to_vec(), &Limits::default()).unwrap()
    }

    /// A span using every feature the model carries.
    pub(crate) fn rich_span(seed: u8, service: &str) -> Span {
        let kv = |k: &str, v: AttrValue| KeyValue::new(k, v);
        Span {
            trace_id: [seed; 16],
            span_id: [seed.wrapping_add(1); 8],
            parent_span_id: seed.is_multiple_of(2).then_some([9; 8]),
            trace_state: "k=v".into(),
            name: format!("op-{seed}"),
            kind: SpanKind::Client,
            start_unix_nano: 1_700_000_000_000_000_000 + i64::from(seed),
            duration_nano: 1234,
            status_code: StatusCode::Error,
            status_message: "boom".into(),
            service_name: service.into(),
            resource_attributes: vec![KeyValue::string("host.name", "h1")],
            scope_name: "lib".into(),
            scope_version: "1.0".into(),
            scope_attributes: vec![kv("scope.flag", AttrValue::Bool(true))],
            attributes: vec![
                KeyValue::string("s", "x"),
                kv("b", AttrValue::Bool(false)),
                kv("i", AttrValue::Int(-7)),
                kv("d", AttrValue::Double(1.5)),
                kv("y", AttrValue::Bytes(vec![0, 255])),
                kv(
                    "a",
                    AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Str("two".into())]),
                ),
                kv("m", AttrValue::KvList(vec![KeyValue::string("inner", "v")])),
            ],
            events: vec![Event {
                time_unix_nano: 1_700_000_000_000_000_500,
                name: "ev".into(),
                attributes: vec![kv("n", AttrValue::Int(3))],
            }],
            links: vec![Link {
                trace_id: [4; 16],
                span_id: [5; 8],
                trace_state: "a=b".into(),
                attributes: vec![KeyValue::string("opentracing.ref_type", "follows_from")],
            }],
        }
    }

    #[test]
    fn protobuf_round_trip_keeps_every_field() {
        let spans = vec![
            rich_span(2, "svc-a"),
            rich_span(3, "svc-b"),
            rich_span(4, "svc-a"),
        ];
        let req = to_request(&spans);
        assert_eq!(req.resource_spans.len(), 2, "grouped by service");
        let body = req.encode_to_vec();
        let batch = decode_protobuf(&body, &Limits::default()).unwrap();
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        assert_eq!(batch.truncated, 0);
        let mut got = batch.spans;
        got.sort_by_key(|s| s.span_id);
        assert_eq!(got, spans);
    }

    #[test]
    fn service_name_is_taken_out_of_the_resource_and_defaults() {
        let mut req = to_request(&[rich_span(2, "svc-a")]);
        let batch = decode(&req);
        assert_eq!(batch.spans[0].service_name, "svc-a");
        assert!(batch.spans[0]
            .resource_attributes
            .iter()
            .all(|kv| kv.key != SERVICE_NAME));
        req.resource_spans[0].resource = None;
        let batch = decode(&req);
        assert_eq!(batch.spans[0].service_name, "unknown_service");
    }

    #[test]
    fn bad_spans_are_rejected_and_good_ones_kept() {
        let mut req = to_request(&[rich_span(2, "a"), rich_span(3, "a")]);
        let pb = &mut req.resource_spans[0].scope_spans[0].spans;
        pb[0].trace_id = vec![1, 2, 3, 4, 5];
        pb[1].kind = 42;
        let batch = decode(&req);
        assert_eq!(batch.spans.len(), 1);
        assert_eq!(batch.spans[0].kind, SpanKind::Unspecified, "unknown kind");
        assert_eq!(batch.rejected[0].reason, RejectReason::InvalidTraceId);
        assert_eq!(
            batch.rejected[0].message,
            "span 0 of resource 0: trace_id must be 16 bytes, got 5"
        );
    }

    #[test]
    fn end_before_start_is_rejected() {
        let mut req = to_request(&[rich_span(2, "a")]);
        let pb = &mut req.resource_spans[0].scope_spans[0].spans[0];
        pb.end_time_unix_nano = pb.start_time_unix_nano - 1;
        let batch = decode(&req);
        assert_eq!(batch.rejected[0].reason, RejectReason::EndBeforeStart);
    }

    #[test]
    fn undecodable_body_is_invalid_argument() {
        let err =
            decode_protobuf(b"\xff\xff\xff\xff not protobuf", &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.starts_with("invalid otlp protobuf"))
        );
    }
}
