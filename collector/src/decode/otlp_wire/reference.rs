//! A second OTLP protobuf decoder, for the tests and the fuzz targets only (through
//! [`crate::fuzzing`]): prost decodes the request, then this converts it. The wire reader must
//! give exactly what this gives (see `tests.rs`).

use meshtrace_model::{AttrValue, Event, KeyValue, Link, Span, SpanKind, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as PbKeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span;

use crate::decode::{duration, nanos, take_service_name};
use crate::validate::{validate_raw, Position, RawIds};
use crate::{Batch, Limits};

/// Converts a request decoded by prost into validated spans.
pub fn from_request(req: ExportTraceServiceRequest, limits: &Limits) -> Batch {
    let mut batch = Batch::default();
    for (r, rs) in req.resource_spans.into_iter().enumerate() {
        let (service_name, resource_attributes) = split_resource(rs.resource);
        let mut index = 0;
        for ss in rs.scope_spans {
            let scope = ss.scope.unwrap_or_default();
            let base = Span {
                service_name: service_name.clone(),
                resource_attributes: resource_attributes.clone(),
                scope_name: scope.name,
                scope_version: scope.version,
                scope_attributes: attrs_from_pb(scope.attributes),
                ..Span::default()
            };
            for pb in ss.spans {
                let at = Position {
                    resource: Some(r),
                    span: index,
                };
                index += 1;
                convert_span(at, pb, &base, limits, &mut batch);
            }
        }
    }
    batch
}

/// Takes `service.name` out of a resource; returns it and the remaining attributes.
fn split_resource(resource: Option<Resource>) -> (String, Vec<KeyValue>) {
    let mut attrs = attrs_from_pb(resource.map(|r| r.attributes).unwrap_or_default());
    let service = take_service_name(&mut attrs);
    (service, attrs)
}

fn convert_span(
    at: Position,
    pb: opentelemetry_proto::tonic::trace::v1::Span,
    base: &Span,
    limits: &Limits,
    batch: &mut Batch,
) {
    let start = nanos(pb.start_time_unix_nano);
    let status = pb.status.unwrap_or_default();
    let span = Span {
        trace_state: pb.trace_state,
        name: pb.name,
        kind: SpanKind::from_otlp(pb.kind).unwrap_or_default(),
        start_unix_nano: start,
        duration_nano: duration(start, nanos(pb.end_time_unix_nano)),
        status_code: StatusCode::from_otlp(status.code),
        status_message: status.message,
        attributes: attrs_from_pb(pb.attributes),
        events: pb.events.into_iter().map(event_from_pb).collect(),
        links: pb.links.into_iter().filter_map(link_from_pb).collect(),
        ..base.clone()
    };
    let ids = RawIds {
        trace_id: &pb.trace_id,
        span_id: &pb.span_id,
        parent_span_id: &pb.parent_span_id,
    };
    validate_raw(at, ids, span, limits, batch);
}

fn event_from_pb(e: span::Event) -> Event {
    Event {
        time_unix_nano: nanos(e.time_unix_nano),
        name: e.name,
        attributes: attrs_from_pb(e.attributes),
    }
}

/// A link with IDs of the wrong size is dropped (it cannot point anywhere).
fn link_from_pb(l: span::Link) -> Option<Link> {
    let (Ok(trace_id), Ok(span_id)) = (l.trace_id.try_into(), l.span_id.try_into()) else {
        tracing::debug!("dropping otlp link with malformed ids");
        return None;
    };
    Some(Link {
        trace_id,
        span_id,
        trace_state: l.trace_state,
        attributes: attrs_from_pb(l.attributes),
    })
}

/// Converts OTLP attributes to model attributes.
fn attrs_from_pb(attrs: Vec<PbKeyValue>) -> Vec<KeyValue> {
    attrs
        .into_iter()
        .map(|kv| KeyValue::new(kv.key, value_from_pb(kv.value)))
        .collect()
}

/// Converts an OTLP value; an empty value becomes an empty string.
fn value_from_pb(v: Option<AnyValue>) -> AttrValue {
    use any_value::Value as V;
    match v.and_then(|v| v.value) {
        Some(V::StringValue(s)) => AttrValue::Str(s),
        Some(V::BoolValue(b)) => AttrValue::Bool(b),
        Some(V::IntValue(i)) => AttrValue::Int(i),
        Some(V::DoubleValue(d)) => AttrValue::Double(d),
        Some(V::BytesValue(b)) => AttrValue::Bytes(b),
        Some(V::ArrayValue(a)) => AttrValue::Array(
            a.values
                .into_iter()
                .map(|v| value_from_pb(Some(v)))
                .collect(),
        ),
        Some(V::KvlistValue(l)) => AttrValue::KvList(attrs_from_pb(l.values)),
        Some(V::StringValueStrindex(_)) | None => AttrValue::Str(String::new()),
    }
}
