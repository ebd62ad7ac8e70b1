//! The assembler: completion after the idle window or at the maximum age, late spans merged
//! into exactly one replacement, eviction and span limits counted; and the class mapping
//! learned from what it hands out.

mod common;

use std::time::Duration;

use meshtrace_model::{KeyValue, Span, SpanKind};
use meshtrace_provenance::{
    Assembler, AssemblerConfig, ClassMapping, CompletionReason, GraphConfig, SlimSpan,
};

const S: i64 = 1_000_000_000;

fn span(trace: u8, id: u8, parent: Option<u8>, service: &str, kind: SpanKind, start: i64) -> Span {
    Span {
        trace_id: [trace; 16],
        span_id: [0, 0, 0, 0, 0, 0, 0, id],
        parent_span_id: parent.map(|p| [0, 0, 0, 0, 0, 0, 0, p]),
        service_name: service.into(),
        name: format!("op{id}"),
        kind,
        start_unix_nano: start,
        duration_nano: 100,
        ..Span::default()
    }
}

fn config() -> AssemblerConfig {
    AssemblerConfig {
        idle: Duration::from_secs(5),
        max_age: Duration::from_secs(30),
        late_window: Duration::from_secs(60),
        max_open_traces: 3,
        max_spans_per_trace: 4,
    }
}

#[test]
fn completes_after_the_idle_window() {
    let mut a = Assembler::new(config());
    a.add(&[span(1, 1, None, "a", SpanKind::Server, 0)], 0);
    a.add(&[span(1, 2, Some(1), "a", SpanKind::Client, 10)], 3 * S);
    assert!(
        a.poll_complete(7 * S).is_empty(),
        "idle counts from the last span"
    );
    let done = a.poll_complete(8 * S);
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].reason, done[0].replaces),
        (CompletionReason::Idle, false)
    );
    assert_eq!(done[0].tree.nodes.len(), 2);
    assert_eq!(a.open_traces(), 0);
    assert!(a.poll_complete(9 * S).is_empty(), "handed out once");
}

#[test]
fn busy_trace_completes_at_max_age() {
    let mut a = Assembler::new(config());
    for t in 0..=30 {
        a.add(
            &[span(1, t as u8 + 1, None, "a", SpanKind::Server, t)],
            t * S,
        );
        let done = a.poll_complete(t * S);
        if t < 30 {
            assert!(done.is_empty(), "at {t}s");
        } else {
            assert_eq!(done.len(), 1);
            assert_eq!(done[0].reason, CompletionReason::MaxAge);
        }
    }
}

#[test]
fn late_span_gives_exactly_one_replacement() {
    let mut a = Assembler::new(config());
    let mut mapping = ClassMapping::new();
    let graph = GraphConfig::default();
    let mut root = span(1, 1, None, "front", SpanKind::Server, 0);
    root.attributes.push(KeyValue::string("mesh.class", "gold"));
    let earlier = [root, span(1, 2, Some(1), "front", SpanKind::Client, 10)];
    a.add(&earlier, 0);
    let first = a.poll_complete(5 * S);
    assert_eq!(first.len(), 1);
    let d1 = first[0].derive(&[], &graph);
    let learned1 = mapping.learn(&d1, 0).expect("a complete trace is learned");
    // The root SERVER span was called by the virtual `user`; the client's call went
    // unanswered, so its callee is the virtual `unknown`.
    let pairs = |d: &meshtrace_provenance::Derived| -> Vec<(String, String)> {
        d.edges
            .iter()
            .map(|e| (e.caller_service.to_string(), e.callee_service.to_string()))
            .collect()
    };
    let p = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(pairs(&d1), [p("user", "front"), p("front", "unknown")]);

    // The server half arrives late (and once more as a duplicate).
    let late = span(1, 3, Some(2), "back", SpanKind::Server, 20);
    a.add(std::slice::from_ref(&late), 10 * S);
    a.add(std::slice::from_ref(&late), 11 * S);
    let second = a.poll_complete(16 * S);
    assert_eq!(second.len(), 1, "exactly one replacement");
    let r = &second[0];
    assert!(r.replaces);
    // The assembler no longer holds the earlier spans: the replacement carries what came
    // since, once, and the caller rebuilds it from every stored span (duplicates removed).
    assert_eq!(
        r.tree.nodes.len(),
        1,
        "only the late span, the duplicate ignored"
    );
    let stored = [earlier.to_vec(), vec![late.clone(), late]].concat();
    let stored = stored.iter().map(SlimSpan::from).collect();
    let (all, dups) = meshtrace_provenance::unique_spans(stored);
    assert_eq!((all.len(), dups), (3, 1));
    let mut rebuilt = r.clone();
    rebuilt.tree = meshtrace_provenance::build_tree_slim(all);
    let d2 = rebuilt.derive(&[], &graph);
    assert_eq!(
        pairs(&d2),
        [p("front", "back"), p("user", "front")],
        "replaced, not duplicated"
    );
    mapping.forget(&learned1);
    assert!(mapping.learn(&d2, 0).is_some());
    let entries = mapping.entries();
    let got: Vec<(&str, &str, &str, u64)> = entries
        .iter()
        .map(|e| {
            (
                e.callee.as_str(),
                e.operation.as_str(),
                e.class.as_str(),
                e.count,
            )
        })
        .collect();
    assert_eq!(
        got,
        [("back", "op3", "gold", 1), ("front", "op1", "gold", 1)],
        "nothing left of d1's unknown"
    );
    assert_eq!(mapping.traces(), 1);

    let st = a.stats();
    assert_eq!(
        (
            st.completed,
            st.replacements,
            st.late_merges,
            st.duplicate_spans
        ),
        (2, 1, 1, 1)
    );
    assert!(a.poll_complete(30 * S).is_empty());
    // After the late window the trace is forgotten: a straggler starts a new trace.
    a.add(
        &[span(1, 4, Some(1), "front", SpanKind::Internal, 30)],
        100 * S,
    );
    let third = a.poll_complete(106 * S);
    assert_eq!(
        (third.len(), third[0].replaces, third[0].tree.nodes.len()),
        (1, false, 1)
    );
    assert_eq!(third[0].tree.orphans.len(), 1);
    assert_eq!(a.stats().orphans, 1);
}

#[test]
fn limits_evict_the_oldest_and_drop_spans() {
    let mut a = Assembler::new(config());
    for t in 1..=3u8 {
        a.add(&[span(t, 1, None, "a", SpanKind::Server, 0)], i64::from(t));
    }
    assert_eq!(a.open_traces(), 3);
    a.add(&[span(4, 1, None, "a", SpanKind::Server, 0)], 4);
    assert_eq!(a.open_traces(), 3);
    assert_eq!(a.stats().evicted_traces, 1);
    // Five spans for a trace limited to four.
    let spans: Vec<Span> = (1..=5)
        .map(|i| span(4, i + 1, Some(1), "a", SpanKind::Internal, 0))
        .collect();
    a.add(&spans, 5);
    assert_eq!(a.stats().dropped_spans, 2, "1 + 5 spans, 4 kept");
    let out = a.poll_complete(5);
    assert_eq!(out.len(), 1, "only the evicted trace is out yet");
    assert_eq!(
        (out[0].trace_id, out[0].reason),
        ([1; 16], CompletionReason::Evicted)
    );
    assert!(
        !out[0].derive(&[], &GraphConfig::default()).trace.complete,
        "forced out = partial"
    );
    let rest = a.poll_complete(10 * S);
    assert_eq!(rest.len(), 3);
    let t4 = rest.iter().find(|c| c.trace_id == [4; 16]).unwrap();
    assert_eq!((t4.tree.nodes.len(), t4.dropped_spans), (4, 2));
    assert!(
        !t4.derive(&[], &GraphConfig::default()).trace.complete,
        "truncated = partial"
    );
}

#[test]
fn zipkin_stats_are_counted() {
    let mut a = Assembler::new(AssemblerConfig::default());
    a.add(&common::zipkin("skew.json"), 0);
    a.add(&common::zipkin("messaging2.json"), 0);
    a.add(&common::zipkin("smartthings-mobile-web-install.json"), 0);
    let out = a.poll_complete(5 * S);
    assert_eq!(out.len(), 3);
    let st = a.stats();
    // skew.json: 1 hop; smartthings: 21 shared halves whose raw interval does not fit their
    // client's (15 end after it, 6 are zero-length instants at another time).
    assert_eq!((st.orphans, st.skew, st.shared), (6, 1 + 21, 1 + 294));
    assert_eq!(st.multi_root, 0);
}
