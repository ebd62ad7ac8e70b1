//! Validation and bounding of decoded spans.
//!
//! Every decoder hands each span it decoded to [`validate_raw`] (IDs still as wire bytes) or
//! [`validate`] (IDs already fixed-size). A span with bad IDs or times is rejected with a
//! [`Rejection`] naming the problem; a valid span is bounded by [`Limits`] (attributes, values,
//! events, links and names past the limits are cut, and each cut is counted in
//! [`Batch::truncated`]) and pushed onto [`Batch::spans`].

use std::fmt::Display;

use meshtrace_model::time::now_unix_nanos;
use meshtrace_model::{AttrValue, KeyValue, Span, SpanId, TraceId};
use serde::{Deserialize, Serialize};

/// The service name given to spans whose resource has no `service.name` (OTel convention).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Limits on what one span may carry; attributes past them are truncated and counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_attributes: usize,
    pub max_attribute_value_bytes: usize,
    pub max_events: usize,
    pub max_links: usize,
    pub max_name_bytes: usize,
    /// A span ending further than this in the future is rejected: a forged date would pin its
    /// segment past retention and skew budgets.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_attributes: 128,
            max_attribute_value_bytes: 4096,
            max_events: 128,
            max_links: 128,
            max_name_bytes: 1024,
            max_future_skew: std::time::Duration::from_secs(600),
        }
    }
}

impl Limits {
    /// The defaults for recorded traces read from files (import, test fixtures): any date.
    pub fn for_files() -> Limits {
        Limits {
            max_future_skew: std::time::Duration::MAX,
            ..Limits::default()
        }
    }
}

/// Why a span was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidTraceId,
    InvalidSpanId,
    InvalidParentSpanId,
    EndBeforeStart,
    MissingTimestamp,
    FutureTimestamp,
    ServiceNotAllowed,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidTraceId => "invalid_trace_id",
            RejectReason::InvalidSpanId => "invalid_span_id",
            RejectReason::InvalidParentSpanId => "invalid_parent_span_id",
            RejectReason::EndBeforeStart => "end_before_start",
            RejectReason::MissingTimestamp => "missing_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::ServiceNotAllowed => "service_not_allowed",
        }
    }
}

/// One rejected span with a message naming the problem.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

/// The outcome of decoding one request: the valid spans, the rejected ones, and how many
/// attributes, events, links or values were truncated by [`Limits`].
#[derive(Debug, Default)]
pub struct Batch {
    pub spans: Vec<Span>,
    pub rejected: Vec<Rejection>,
    pub truncated: u64,
    /// Records folded into another record of the same span (Zipkin fragments).
    pub merged: u64,
    /// Spans whose class claim was removed: their sender may not make it ([`crate::auth`]).
    pub stripped: u64,
    /// Spans whose sender ingest named, or whose made-up sender it removed
    /// ([`crate::auth::police`]): they differ from the request as sent.
    pub restamped: u64,
}

impl Batch {
    /// Records a rejected span; `at` says where it was (e.g. "span 3 of resource 0").
    pub fn reject(&mut self, reason: RejectReason, at: impl Display, problem: impl Display) {
        let message = format!("{at}: {problem}");
        tracing::debug!(reason = reason.as_str(), %message, "span rejected");
        self.rejected.push(Rejection { reason, message });
    }

    /// Spans seen: accepted plus rejected.
    pub fn total(&self) -> usize {
        self.spans.len() + self.rejected.len()
    }
}

/// Where a span sat in its request, for rejection messages.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// Index of the resource (OTLP) or trace (Jaeger) holding the span, if the format has one.
    pub resource: Option<usize>,
    /// Index of the span inside its resource, or inside the whole request.
    pub span: usize,
}

impl Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.resource {
            Some(r) => write!(f, "span {} of resource {r}", self.span),
            None => write!(f, "span {}", self.span),
        }
    }
}

/// The IDs of a decoded span as they came on the wire, not yet checked.
#[derive(Debug, Clone, Copy)]
pub struct RawIds<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    /// Empty or all zero for a root span.
    pub parent_span_id: &'a [u8],
}

/// Checks the wire IDs of a span, stores them into it and then applies [`validate_at`].
pub fn validate_raw(
    at: impl Display,
    ids: RawIds<'_>,
    mut span: Span,
    limits: &Limits,
    batch: &mut Batch,
) {
    let Ok(trace_id) = TraceId::try_from(ids.trace_id) else {
        let problem = format!("trace_id must be 16 bytes, got {}", ids.trace_id.len());
        return batch.reject(RejectReason::InvalidTraceId, at, problem);
    };
    let Ok(span_id) = SpanId::try_from(ids.span_id) else {
        let problem = format!("span_id must be 8 bytes, got {}", ids.span_id.len());
        return batch.reject(RejectReason::InvalidSpanId, at, problem);
    };
    span.trace_id = trace_id;
    span.span_id = span_id;
    span.parent_span_id = match ids.parent_span_id.len() {
        0 => None,
        8 => SpanId::try_from(ids.parent_span_id).ok(),
        n => {
            let problem = format!("parent_span_id must be empty or 8 bytes, got {n}");
            return batch.reject(RejectReason::InvalidParentSpanId, at, problem);
        }
    };
    validate_at(at, span, limits, batch);
}

/// Validates and bounds a span whose IDs are already fixed-size; rejection messages name the
/// span by its hex ID.
pub fn validate(span: Span, limits: &Limits, batch: &mut Batch) {
    let at = format!("span {}", hex::encode(span.span_id));
    validate_at(at, span, limits, batch);
}

/// Validates and bounds one span, pushing it onto `batch.spans` or `batch.rejected`.
pub fn validate_at(at: impl Display, mut span: Span, limits: &Limits, batch: &mut Batch) {
    if span.trace_id == [0; 16] {
        return batch.reject(RejectReason::InvalidTraceId, at, "trace_id is all zero");
    }
    if span.span_id == [0; 8] {
        return batch.reject(RejectReason::InvalidSpanId, at, "span_id is all zero");
    }
    if span.parent_span_id == Some([0; 8]) {
        span.parent_span_id = None;
    }
    if span.start_unix_nano <= 0 {
        let problem = format!(
            "start time is missing or not positive ({})",
            span.start_unix_nano
        );
        return batch.reject(RejectReason::MissingTimestamp, at, problem);
    }
    if span.duration_nano < 0 {
        let problem = format!("end time is {} ns before start time", -span.duration_nano);
        return batch.reject(RejectReason::EndBeforeStart, at, problem);
    }
    let skew = i64::try_from(limits.max_future_skew.as_nanos()).unwrap_or(i64::MAX);
    let latest = now_unix_nanos().saturating_add(skew);
    if span.start_unix_nano.saturating_add(span.duration_nano) > latest {
        let problem = format!(
            "end time is more than {} in the future",
            humantime::format_duration(limits.max_future_skew)
        );
        return batch.reject(RejectReason::FutureTimestamp, at, problem);
    }
    if span.service_name.is_empty() {
        span.service_name = UNKNOWN_SERVICE.to_string();
    }
    batch.truncated += bound(&mut span, limits);
    batch.spans.push(span);
}

/// Cuts a span down to the limits; returns how many things were cut.
pub fn bound(span: &mut Span, limits: &Limits) -> u64 {
    let mut cut = 0;
    cut += truncate_str(&mut span.name, limits.max_name_bytes);
    cut += bound_attributes(&mut span.attributes, limits);
    cut += bound_attributes(&mut span.resource_attributes, limits);
    cut += bound_attributes(&mut span.scope_attributes, limits);
    cut += truncate_vec(&mut span.events, limits.max_events);
    for event in &mut span.events {
        cut += truncate_str(&mut event.name, limits.max_name_bytes);
        cut += bound_attributes(&mut event.attributes, limits);
    }
    cut += truncate_vec(&mut span.links, limits.max_links);
    for link in &mut span.links {
        cut += bound_attributes(&mut link.attributes, limits);
    }
    cut
}

/// Keeps the first `max_attributes` attributes and cuts long values; returns the number cut.
pub fn bound_attributes(attrs: &mut Vec<KeyValue>, limits: &Limits) -> u64 {
    let mut cut = truncate_vec(attrs, limits.max_attributes);
    for kv in attrs.iter_mut() {
        cut += bound_value(&mut kv.value, limits);
    }
    cut
}

fn bound_value(value: &mut AttrValue, limits: &Limits) -> u64 {
    match value {
        AttrValue::Str(s) => truncate_str(s, limits.max_attribute_value_bytes),
        AttrValue::Bytes(b) => truncate_vec(b, limits.max_attribute_value_bytes),
        AttrValue::Array(items) => {
            let mut cut = truncate_vec(items, limits.max_attributes);
            for item in items.iter_mut() {
                cut += bound_value(item, limits);
            }
            cut
        }
        AttrValue::KvList(kvs) => bound_attributes(kvs, limits),
        AttrValue::Bool(_) | AttrValue::Int(_) | AttrValue::Double(_) => 0,
    }
}

fn truncate_vec<T>(items: &mut Vec<T>, max: usize) -> u64 {
    if items.len() <= max {
        return 0;
    }
    let cut = items.len() - max;
    items.truncate(max);
    cut as u64
}

/// Cuts a string to at most `max` bytes at a UTF-8 character boundary; returns 1 if cut.
pub fn truncate_str(s: &mut String, max: usize) -> u64 {
    if s.len() <= max {
        return 0;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::{Event, Link};

    fn good() -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            name: "op".into(),
            start_unix_nano: 1_000,
            duration_nano: 10,
            service_name: "svc".into(),
            ..Span::default()
        }
    }

    fn run_raw(trace: &[u8], span: &[u8], parent: &[u8]) -> Batch {
        let mut batch = Batch::default();
        let ids = RawIds {
            trace_id: trace,
            span_id: span,
            parent_span_id: parent,
        };
        let at = Position {
            resource: Some(0),
            span: 3,
        };
        validate_raw(at, ids, good(), &Limits::default(), &mut batch);
        batch
    }

    fn rejected(batch: &Batch) -> (RejectReason, String) {
        assert!(batch.spans.is_empty(), "span should be rejected");
        assert_eq!(batch.rejected.len(), 1);
        (batch.rejected[0].reason, batch.rejected[0].message.clone())
    }

    #[test]
    fn accepts_valid_raw_ids_and_sets_them() {
        let batch = run_raw(&[7; 16], &[8; 8], &[9; 8]);
        assert!(batch.rejected.is_empty());
        let s = &batch.spans[0];
        assert_eq!(
            (s.trace_id, s.span_id, s.parent_span_id),
            ([7; 16], [8; 8], Some([9; 8]))
        );
    }

    #[test]
    fn rejects_short_trace_id_with_position() {
        let batch = run_raw(&[7; 5], &[8; 8], &[]);
        let (reason, msg) = rejected(&batch);
        assert_eq!(reason, RejectReason::InvalidTraceId);
        assert_eq!(
            msg,
            "span 3 of resource 0: trace_id must be 16 bytes, got 5"
        );
    }

    #[test]
    fn rejects_spans_ending_past_the_allowed_future_skew() {
        let now = now_unix_nanos();
        let minute = 60_000_000_000;
        let at = |start: i64, duration: i64| Span {
            start_unix_nano: start,
            duration_nano: duration,
            ..good()
        };
        let mut batch = Batch::default();
        validate(at(now + 5 * minute, 1_000), &Limits::default(), &mut batch);
        assert_eq!(
            batch.spans.len(),
            1,
            "five minutes of clock drift is accepted"
        );
        let year_2100 = 4_102_444_800_000_000_000;
        for span in [at(year_2100, 1_000), at(now, 20 * minute)] {
            let mut batch = Batch::default();
            validate(span, &Limits::default(), &mut batch);
            let (reason, msg) = rejected(&batch);
            assert_eq!(reason, RejectReason::FutureTimestamp);
            assert!(
                msg.ends_with("end time is more than 10m in the future"),
                "{msg}"
            );
        }
    }

    #[test]
    fn rejects_zero_trace_id() {
        let (reason, msg) = rejected(&run_raw(&[0; 16], &[8; 8], &[]));
        assert_eq!(reason, RejectReason::InvalidTraceId);
        assert!(msg.contains("all zero"), "{msg}");
    }

    #[test]
    fn rejects_bad_span_ids() {
        let (reason, msg) = rejected(&run_raw(&[7; 16], &[8; 4], &[]));
        assert_eq!(reason, RejectReason::InvalidSpanId);
        assert!(msg.ends_with("span_id must be 8 bytes, got 4"), "{msg}");
        let (reason, _) = rejected(&run_raw(&[7; 16], &[0; 8], &[]));
        assert_eq!(reason, RejectReason::InvalidSpanId);
    }

    #[test]
    fn rejects_bad_parent_and_accepts_empty_or_zero_parent_as_root() {
        let (reason, msg) = rejected(&run_raw(&[7; 16], &[8; 8], &[1; 3]));
        assert_eq!(reason, RejectReason::InvalidParentSpanId);
        assert!(msg.contains("got 3"), "{msg}");
        assert_eq!(
            run_raw(&[7; 16], &[8; 8], &[]).spans[0].parent_span_id,
            None
        );
        assert_eq!(
            run_raw(&[7; 16], &[8; 8], &[0; 8]).spans[0].parent_span_id,
            None
        );
    }

    #[test]
    fn rejects_bad_times() {
        let mut batch = Batch::default();
        let missing = Span {
            start_unix_nano: 0,
            ..good()
        };
        validate(missing, &Limits::default(), &mut batch);
        assert_eq!(rejected(&batch).0, RejectReason::MissingTimestamp);
        let mut batch = Batch::default();
        let backwards = Span {
            duration_nano: -5,
            ..good()
        };
        validate(backwards, &Limits::default(), &mut batch);
        let (reason, msg) = rejected(&batch);
        assert_eq!(reason, RejectReason::EndBeforeStart);
        assert_eq!(
            msg,
            "span 0202020202020202: end time is 5 ns before start time"
        );
    }

    #[test]
    fn missing_service_becomes_unknown_service_and_empty_name_is_kept() {
        let mut batch = Batch::default();
        let span = Span {
            service_name: String::new(),
            name: String::new(),
            ..good()
        };
        validate(span, &Limits::default(), &mut batch);
        assert_eq!(batch.spans[0].service_name, UNKNOWN_SERVICE);
        assert_eq!(batch.spans[0].name, "");
    }

    fn attrs(n: usize) -> Vec<KeyValue> {
        (0..n)
            .map(|i| KeyValue::new(format!("k{i}"), AttrValue::Int(i as i64)))
            .collect()
    }

    fn small() -> Limits {
        Limits {
            max_attributes: 2,
            max_attribute_value_bytes: 4,
            max_events: 1,
            max_links: 1,
            max_name_bytes: 3,
            ..Limits::default()
        }
    }

    #[test]
    fn truncates_attributes_of_span_resource_and_scope() {
        let span = Span {
            attributes: attrs(5),
            resource_attributes: attrs(3),
            scope_attributes: attrs(4),
            name: "ab".into(),
            ..good()
        };
        let mut batch = Batch::default();
        validate(span, &small(), &mut batch);
        let s = &batch.spans[0];
        assert_eq!(batch.truncated, 3 + 1 + 2);
        assert_eq!(s.attributes, attrs(2));
        assert_eq!(
            (s.resource_attributes.len(), s.scope_attributes.len()),
            (2, 2)
        );
    }

    #[test]
    fn truncates_long_values_at_char_boundary() {
        let span = Span {
            attributes: vec![
                KeyValue::string("a", "héllo"),
                KeyValue::new("b", AttrValue::Array(vec![AttrValue::Str("abcdef".into())])),
            ],
            name: "ab".into(),
            ..good()
        };
        let mut batch = Batch::default();
        validate(span, &small(), &mut batch);
        let s = &batch.spans[0];
        // "hél" is 4 bytes (é takes two).
        assert_eq!(s.attributes[0].value, AttrValue::Str("hél".into()));
        assert_eq!(
            s.attributes[1].value,
            AttrValue::Array(vec![AttrValue::Str("abcd".into())])
        );
        assert_eq!(batch.truncated, 2);
        let mut multi = "aé".to_string();
        assert_eq!(truncate_str(&mut multi, 2), 1);
        assert_eq!(multi, "a");
    }

    #[test]
    fn truncates_events_links_and_names() {
        let event = Event {
            time_unix_nano: 1,
            name: "e".into(),
            attributes: vec![],
        };
        let link = Link {
            trace_id: [1; 16],
            span_id: [1; 8],
            trace_state: String::new(),
            attributes: vec![],
        };
        let span = Span {
            name: "abcdef".into(),
            events: vec![event.clone(), event.clone(), event],
            links: vec![link.clone(), link],
            ..good()
        };
        let mut batch = Batch::default();
        validate(span, &small(), &mut batch);
        let s = &batch.spans[0];
        assert_eq!(s.name, "abc");
        assert_eq!((s.events.len(), s.links.len()), (1, 1));
        assert_eq!(batch.truncated, 1 + 2 + 1);
    }
}
