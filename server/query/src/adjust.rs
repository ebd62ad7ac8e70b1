//! Trace adjusters: what the query path does to a stored trace before answering it, as Jaeger's
//! query service does before the Jaeger UI sees a trace. Each adjuster is one function over the
//! trace's spans; [`adjust`] runs them in order, and `raw=true` on the APIs skips them all.
//!
//! 1. [`drop_duplicate_spans`]: exact copies of a span (an at-least-once sender's retry) are
//!    answered once.
//! 2. [`unique_span_ids`]: the SERVER half of a Zipkin shared span carries its CLIENT's span ID;
//!    it gets a new ID derived deterministically from the shared one, its parent becomes the
//!    client span and its children follow it. Parents are those of
//!    [`meshtrace_provenance::TraceTree`], the tree provenance, the critical path and the service
//!    graph are computed on, so the answer and the analyses agree on one tree.
//! 3. [`correct_clock_skew`]: a callee span that cannot have started before its caller (another
//!    host's clock) is shifted, with its subtree and its events, into the caller's window, by the
//!    tree's skew rule; the span gets a warning saying by how much, as Jaeger's adjuster does.
//! 4. [`sort_attributes`]: attributes in key order (Jaeger's tag-sorting adjuster), so two
//!    answers of one trace compare equal.
//!
//! Jaeger's other adjusters do not apply: IDs and IP addresses are stored in one form already,
//! and the parent reference is always the first one a span is answered with.

use std::collections::HashSet;

use meshtrace_model::{Span, SpanId};
use meshtrace_provenance::{build_tree, TraceTree};

/// A note added to one span by an adjuster (the Jaeger model's span `warnings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanWarning {
    /// Index of the span in the adjusted trace.
    pub span: usize,
    pub message: String,
}

/// One trace after the adjusters, with the tree its parents come from.
#[derive(Clone, Debug)]
pub struct Adjusted {
    /// The spans, in the order given minus exact duplicates; node `i` of `tree` is span `i`.
    pub spans: Vec<Span>,
    pub warnings: Vec<SpanWarning>,
    /// The tree of the spans as stored (raw IDs and times in its nodes).
    pub tree: TraceTree,
}

/// Runs every adjuster over one trace's spans.
pub fn adjust(mut spans: Vec<Span>) -> Adjusted {
    drop_duplicate_spans(&mut spans);
    let tree = build_tree(&spans);
    unique_span_ids(&tree, &mut spans);
    let warnings = correct_clock_skew(&tree, &mut spans);
    sort_attributes(&mut spans);
    Adjusted {
        spans,
        warnings,
        tree,
    }
}

/// Removes exact copies of a span (all fields equal), keeping the first; returns how many.
pub fn drop_duplicate_spans(spans: &mut Vec<Span>) -> usize {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i].span_id);
    let mut duplicate = vec![false; spans.len()];
    for group in order.chunk_by(|&a, &b| spans[a].span_id == spans[b].span_id) {
        for (k, &i) in group.iter().enumerate() {
            duplicate[i] = group[..k].iter().any(|&j| spans[j] == spans[i]);
        }
    }
    let dropped = duplicate.iter().filter(|d| **d).count();
    if dropped > 0 {
        let mut flags = duplicate.into_iter();
        spans.retain(|_| !flags.next().unwrap_or(false));
    }
    dropped
}

/// Gives every span whose ID another span already has a new one, and points every span with a
/// resolved parent at its parent's (possibly new) ID; returns how many IDs changed.
///
/// Of the spans sharing an ID, the one other spans resolve as the owner keeps it: the first
/// that is not a Zipkin shared SERVER half (else the first). A new ID is a hash of the shared
/// ID, the span's service and start, bumped until no span of the trace has it: the same stored
/// trace always gets the same IDs.
pub fn unique_span_ids(tree: &TraceTree, spans: &mut [Span]) -> usize {
    let mut used: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut ids: Vec<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut changed = 0;
    for i in 0..spans.len() {
        let id = spans[i].span_id;
        let owner = tree
            .nodes_with_span_id(id)
            .min_by_key(|&j| (tree.nodes[j].shared, j));
        if owner.is_none_or(|o| o == i) {
            continue;
        }
        let mut new = derived_id(&spans[i]);
        while new == [0; 8] || !used.insert(new) {
            new = u64::from_be_bytes(new).wrapping_add(1).to_be_bytes();
        }
        ids[i] = new;
        changed += 1;
    }
    if changed == 0 {
        return 0;
    }
    for (i, span) in spans.iter_mut().enumerate() {
        span.span_id = ids[i];
        if let Some(p) = tree.nodes[i].parent {
            span.parent_span_id = Some(ids[p]);
        }
    }
    changed
}

/// FNV-1a over the span's ID, service and start: stable across runs and platforms.
fn derived_id(span: &Span) -> SpanId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let start = span.start_unix_nano.to_be_bytes();
    let bytes = span
        .span_id
        .iter()
        .chain(span.service_name.as_bytes())
        .chain(&start);
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.to_be_bytes()
}

/// Moves each span (and its events) to the tree's skew-adjusted times; a span moved gets a
/// warning. Returns the warnings.
pub fn correct_clock_skew(tree: &TraceTree, spans: &mut [Span]) -> Vec<SpanWarning> {
    let mut warnings = Vec::new();
    for (i, span) in spans.iter_mut().enumerate() {
        let node = &tree.nodes[i];
        let shift = node.start_ns - span.start_unix_nano;
        if shift == 0 {
            continue;
        }
        span.start_unix_nano = node.start_ns;
        span.duration_nano = node.duration_ns();
        for e in &mut span.events {
            e.time_unix_nano = e.time_unix_nano.saturating_add(shift);
        }
        warnings.push(SpanWarning {
            span: i,
            message: format!(
                "This span's timestamps were adjusted by {}",
                go_duration(shift)
            ),
        });
    }
    warnings
}

/// Sorts span, resource and scope attributes by key (stable, so repeated keys keep their order).
pub fn sort_attributes(spans: &mut [Span]) {
    for s in spans {
        s.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        s.resource_attributes.sort_by(|a, b| a.key.cmp(&b.key));
        s.scope_attributes.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

/// A duration as Go prints one (`65.441ms`, `-1.5s`, `2m3s`), the form Jaeger's warnings use.
pub fn go_duration(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let n = ns.unsigned_abs();
    let decimal = |value: u64, unit: u64, suffix: &str| {
        let whole = value / unit;
        let frac = format!("{:0width$}", value % unit, width = unit.ilog10() as usize);
        let frac = frac.trim_end_matches('0');
        match frac.is_empty() {
            true => format!("{sign}{whole}{suffix}"),
            false => format!("{sign}{whole}.{frac}{suffix}"),
        }
    };
    match n {
        0..1_000 => format!("{sign}{n}ns"),
        1_000..1_000_000 => decimal(n, 1_000, "µs"),
        1_000_000..1_000_000_000 => decimal(n, 1_000_000, "ms"),
        1_000_000_000..60_000_000_000 => decimal(n, 1_000_000_000, "s"),
        _ => {
            let secs = n % 60_000_000_000;
            let mins = n / 60_000_000_000;
            let (h, m) = (mins / 60, mins % 60);
            let s = decimal(secs, 1_000_000_000, "s");
            let s = s.trim_start_matches('-');
            match h {
                0 => format!("{sign}{m}m{s}"),
                _ => format!("{sign}{h}h{m}m{s}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::{AttrValue, KeyValue, SpanKind};

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0ns");
        assert_eq!(go_duration(481_000), "481µs");
        assert_eq!(go_duration(65_441_000), "65.441ms");
        assert_eq!(go_duration(-1_500_000_000), "-1.5s");
        assert_eq!(go_duration(123_000_000_000), "2m3s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
    }

    fn span(id: u8, parent: Option<u8>, service: &str, kind: SpanKind) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [0, 0, 0, 0, 0, 0, 0, id],
            parent_span_id: parent.map(|p| [0, 0, 0, 0, 0, 0, 0, p]),
            service_name: service.into(),
            kind,
            start_unix_nano: 1_000,
            duration_nano: 100,
            ..Span::default()
        }
    }

    #[test]
    fn exact_copies_are_dropped_and_distinct_halves_kept() {
        let a = span(1, None, "a", SpanKind::Client);
        let b = span(1, None, "b", SpanKind::Server);
        let mut spans = vec![a.clone(), b.clone(), a.clone()];
        assert_eq!(drop_duplicate_spans(&mut spans), 1);
        assert_eq!(spans, vec![a, b]);
    }

    #[test]
    fn new_ids_are_deterministic_and_unique() {
        let mut server = span(2, Some(1), "b", SpanKind::Server);
        server
            .attributes
            .push(KeyValue::new("zipkin.shared", AttrValue::Bool(true)));
        let spans = vec![
            span(1, None, "a", SpanKind::Server),
            span(2, Some(1), "a", SpanKind::Client),
            server,
            span(3, Some(2), "b", SpanKind::Client),
        ];
        let first = adjust(spans.clone()).spans;
        assert_eq!(first, adjust(spans).spans);
        let ids: HashSet<SpanId> = first.iter().map(|s| s.span_id).collect();
        assert_eq!(ids.len(), 4);
        // The server half hangs under its client; the server's child under the server half.
        assert_eq!(first[2].parent_span_id, Some(first[1].span_id));
        assert_eq!(first[3].parent_span_id, Some(first[2].span_id));
        assert_ne!(first[2].span_id, first[1].span_id);
    }
}
