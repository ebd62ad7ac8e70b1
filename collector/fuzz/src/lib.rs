//! Invariants shared by the fuzz targets: what every decoded batch must satisfy beyond "did not
//! panic".
//!
//! Each decoder target decodes its input twice, under [`small_limits`] (so that truncation
//! happens on most inputs) and under [`unbounded`] limits, then checks:
//!
//! - [`check_batch`]: every accepted span is valid (non-zero IDs, a positive start, no negative
//!   duration, a service name) and within the limits, as `validate::bound` defines them: at most
//!   `max_attributes` attributes (span, resource, scope, event and link attributes, and the
//!   items of array and key-value-list values at any depth), string and bytes values of at most
//!   `max_attribute_value_bytes`, at most `max_events` events and `max_links` links, span and
//!   event names of at most `max_name_bytes`;
//! - [`check_limits_only_truncate`]: the limits change nothing but what `bound` cuts: the same
//!   spans are accepted and rejected, each bounded span is the unbounded one cut by
//!   `validate::bound`, and `truncated` counts exactly those cuts.
//!
//! Both decodes use an unlimited future skew, so that the clock cannot make them differ.
//!
//! [`wal`] holds what the two write-ahead log targets share.

pub mod wal;

use std::time::Duration;

use meshtrace_collector::validate::bound;
use meshtrace_collector::{Batch, Limits};
use meshtrace_model::{AttrValue, KeyValue, Span};

/// Limits small enough that fuzz inputs hit every truncation path.
pub fn small_limits() -> Limits {
    Limits {
        max_attributes: 3,
        max_attribute_value_bytes: 7,
        max_events: 2,
        max_links: 2,
        max_name_bytes: 5,
        max_future_skew: Duration::MAX,
    }
}

/// No limit at all (what the write-ahead log replays OTLP records with).
pub fn unbounded() -> Limits {
    Limits {
        max_attributes: usize::MAX,
        max_attribute_value_bytes: usize::MAX,
        max_events: usize::MAX,
        max_links: usize::MAX,
        max_name_bytes: usize::MAX,
        max_future_skew: Duration::MAX,
    }
}

/// Every accepted span of `batch` is valid and within `limits`.
pub fn check_batch(batch: &Batch, limits: &Limits) {
    for span in &batch.spans {
        check_span(span, limits);
    }
    for r in &batch.rejected {
        assert!(!r.message.is_empty(), "a rejection without a message");
    }
}

fn check_span(s: &Span, limits: &Limits) {
    assert_ne!(s.trace_id, [0; 16], "accepted span with a zero trace ID");
    assert_ne!(s.span_id, [0; 8], "accepted span with a zero span ID");
    assert_ne!(
        s.parent_span_id,
        Some([0; 8]),
        "zero parent not mapped to root"
    );
    assert!(s.start_unix_nano > 0, "accepted span without a start time");
    assert!(
        s.duration_nano >= 0,
        "accepted span ending before its start"
    );
    assert!(
        !s.service_name.is_empty(),
        "accepted span without a service"
    );
    assert!(
        s.name.len() <= limits.max_name_bytes,
        "span name over the limit"
    );
    check_attrs(&s.attributes, limits, "span");
    check_attrs(&s.resource_attributes, limits, "resource");
    check_attrs(&s.scope_attributes, limits, "scope");
    assert!(s.events.len() <= limits.max_events, "events over the limit");
    for e in &s.events {
        assert!(
            e.name.len() <= limits.max_name_bytes,
            "event name over the limit"
        );
        check_attrs(&e.attributes, limits, "event");
    }
    assert!(s.links.len() <= limits.max_links, "links over the limit");
    for l in &s.links {
        check_attrs(&l.attributes, limits, "link");
    }
}

fn check_attrs(attrs: &[KeyValue], limits: &Limits, what: &str) {
    assert!(
        attrs.len() <= limits.max_attributes,
        "{what} attributes over the limit: {}",
        attrs.len()
    );
    for kv in attrs {
        check_value(&kv.value, limits, what);
    }
}

fn check_value(v: &AttrValue, limits: &Limits, what: &str) {
    match v {
        AttrValue::Str(s) => assert!(
            s.len() <= limits.max_attribute_value_bytes,
            "{what} string value over the limit"
        ),
        AttrValue::Bytes(b) => assert!(
            b.len() <= limits.max_attribute_value_bytes,
            "{what} bytes value over the limit"
        ),
        AttrValue::Array(items) => {
            assert!(
                items.len() <= limits.max_attributes,
                "{what} array over the limit"
            );
            for item in items {
                check_value(item, limits, what);
            }
        }
        AttrValue::KvList(kvs) => check_attrs(kvs, limits, what),
        AttrValue::Bool(_) | AttrValue::Int(_) | AttrValue::Double(_) => {}
    }
}

/// `bounded` (decoded under `limits`) is `full` (decoded without limits) cut by
/// `validate::bound`, span by span, with `truncated` counting the cuts.
pub fn check_limits_only_truncate(bounded: &Batch, full: &Batch, limits: &Limits) {
    assert_eq!(
        bounded.spans.len(),
        full.spans.len(),
        "limits changed acceptance"
    );
    assert_eq!(
        rejections(bounded),
        rejections(full),
        "limits changed the rejections"
    );
    assert_eq!(full.truncated, 0, "truncated without limits");
    assert_eq!(bounded.merged, full.merged);
    assert_eq!(bounded.stripped, full.stripped);
    let mut cut = 0;
    for (b, f) in bounded.spans.iter().zip(&full.spans) {
        let mut expected = f.clone();
        cut += bound(&mut expected, limits);
        // Debug, not ==, so that NaN doubles compare equal to themselves.
        assert_eq!(
            format!("{b:?}"),
            format!("{expected:?}"),
            "bounded span differs"
        );
    }
    assert_eq!(bounded.truncated, cut, "truncated does not count the cuts");
}

fn rejections(b: &Batch) -> Vec<String> {
    b.rejected
        .iter()
        .map(|r| format!("{}: {}", r.reason.as_str(), r.message))
        .collect()
}

/// The spans as sorted Debug strings: the same multiset whatever the grouping order.
pub fn span_set(spans: &[Span]) -> Vec<String> {
    let mut out: Vec<String> = spans.iter().map(|s| format!("{s:?}")).collect();
    out.sort_unstable();
    out
}

/// Whether `MESHTRACE_FUZZ_VERBOSE` is set: targets then print what each input decoded to
/// (to check seeds with `-runs=0`).
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("MESHTRACE_FUZZ_VERBOSE").is_some())
}

/// Prints a one-line summary of a decode when [`verbose`].
pub fn report(target: &str, len: usize, result: Result<&Batch, &dyn std::fmt::Display>) {
    if !verbose() {
        return;
    }
    match result {
        Ok(b) => eprintln!(
            "{target}: {len} bytes -> {} spans, {} rejected, {} truncated, {} merged",
            b.spans.len(),
            b.rejected.len(),
            b.truncated,
            b.merged
        ),
        Err(e) => eprintln!("{target}: {len} bytes -> error: {e}"),
    }
}
