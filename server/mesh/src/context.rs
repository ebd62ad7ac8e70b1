//! W3C trace context and baggage as the sidecars read and write them: `traceparent`
//! (`00-<trace>-<parent span>-<flags>`), `baggage` (`k=v,k2=v2`, carrying `mesh.class`), and
//! the class header.

use http::HeaderMap;
use meshtrace_model::{SpanId, TraceId};
use rand::Rng;

pub const TRACEPARENT: &str = "traceparent";
pub const BAGGAGE: &str = "baggage";
/// Request header carrying the class (as meshtrace's `class_header` default).
pub const CLASS_HEADER: &str = "x-mesh-class";
/// Baggage key carrying the class (as meshtrace's `baggage_key` default).
pub const CLASS_BAGGAGE_KEY: &str = "mesh.class";
/// Header the app sets on a call to its sidecar's egress: the destination service.
pub const UPSTREAM_HEADER: &str = "x-mesh-upstream";

/// Parses a `traceparent` value into (trace ID, parent span ID).
pub fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId)> {
    let mut parts = v.trim().split('-');
    let (_ver, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let mut t = [0u8; 16];
    let mut s = [0u8; 8];
    hex::decode_to_slice(trace, &mut t).ok()?;
    hex::decode_to_slice(span, &mut s).ok()?;
    (t != [0; 16] && s != [0; 8]).then_some((t, s))
}

pub fn format_traceparent(trace: &TraceId, span: &SpanId) -> String {
    format!("00-{}-{}-01", hex::encode(trace), hex::encode(span))
}

/// A random non-zero span ID.
pub fn new_span_id(rng: &mut impl Rng) -> SpanId {
    loop {
        let id: SpanId = rng.gen();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A random non-zero trace ID.
pub fn new_trace_id(rng: &mut impl Rng) -> TraceId {
    loop {
        let id: TraceId = rng.gen();
        if id != [0; 16] {
            return id;
        }
    }
}

/// The value of a baggage member.
pub fn baggage_value(baggage: &str, key: &str) -> Option<String> {
    baggage.split(',').find_map(|member| {
        let kv = member.split(';').next()?;
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// The class of a request: the class header, else `mesh.class` in its baggage.
pub fn class_of(headers: &HeaderMap) -> Option<String> {
    let header = headers
        .get(CLASS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    header.filter(|c| !c.is_empty()).or_else(|| {
        headers
            .get(BAGGAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|b| baggage_value(b, CLASS_BAGGAGE_KEY))
    })
}

/// The baggage of a request with `mesh.class` set to `class`.
pub fn baggage_with_class(existing: Option<&str>, class: &str) -> String {
    let mut members: Vec<String> = existing
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty() && !m.starts_with(&format!("{CLASS_BAGGAGE_KEY}=")))
        .map(str::to_string)
        .collect();
    members.push(format!("{CLASS_BAGGAGE_KEY}={class}"));
    members.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_zero_ids() {
        let (t, s) = ([7u8; 16], [9u8; 8]);
        let v = format_traceparent(&t, &s);
        assert_eq!(parse_traceparent(&v), Some((t, s)));
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-0909090909090909-01"),
            None
        );
        assert_eq!(parse_traceparent("garbage"), None);
    }

    #[test]
    fn class_comes_from_header_then_baggage() {
        let mut h = HeaderMap::new();
        h.insert(BAGGAGE, "user=1, mesh.class=batch;prop".parse().unwrap());
        assert_eq!(class_of(&h).as_deref(), Some("batch"));
        h.insert(CLASS_HEADER, "interactive".parse().unwrap());
        assert_eq!(class_of(&h).as_deref(), Some("interactive"));
        assert_eq!(
            baggage_with_class(Some("user=1,mesh.class=x"), "batch"),
            "user=1,mesh.class=batch"
        );
    }
}
