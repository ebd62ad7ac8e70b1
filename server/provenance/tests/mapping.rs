//! The class mapping learned from derived rows: counts and shares per signature, partial
//! traces ignored, signatures unseen for the maximum age dropped.

use meshtrace_model::{KeyValue, Span, SpanKind};
use meshtrace_provenance::{derive, ClassMapping};

fn call(trace: u8, class: &str, op: &str, orphan: bool) -> Vec<Span> {
    let mk = |id: u8, parent: Option<u8>, svc: &str, kind, name: &str| Span {
        trace_id: [trace; 16],
        span_id: [0, 0, 0, 0, 0, 0, 0, id],
        parent_span_id: parent.map(|p| [0, 0, 0, 0, 0, 0, 0, p]),
        service_name: svc.into(),
        kind,
        name: name.into(),
        duration_nano: 10,
        ..Span::default()
    };
    let mut root = mk(1, orphan.then_some(9), "web", SpanKind::Internal, "entry");
    root.attributes.push(KeyValue::string("mesh.class", class));
    vec![
        root,
        mk(2, Some(1), "web", SpanKind::Client, "call"),
        mk(3, Some(2), "api", SpanKind::Server, op),
    ]
}

#[test]
fn shares_per_signature() {
    let mut m = ClassMapping::new();
    for (t, class) in [(1, "gold"), (2, "gold"), (3, "gold"), (4, "bronze")] {
        assert!(m
            .learn(&derive(&call(t, class, "GET /items", false), &[]), 0)
            .is_some());
    }
    assert!(m
        .learn(&derive(&call(5, "bronze", "POST /pay", false), &[]), 0)
        .is_some());
    assert!(
        m.learn(&derive(&call(6, "gold", "POST /pay", true), &[]), 0)
            .is_none(),
        "partial: not learned"
    );
    assert_eq!(m.traces(), 5);
    let got: Vec<(String, String, String, String, u64, f64)> = m
        .entries()
        .into_iter()
        .map(|e| (e.caller, e.callee, e.operation, e.class, e.count, e.share))
        .collect();
    let row = |op: &str, class: &str, n: u64, share: f64| {
        (
            "web".to_string(),
            "api".to_string(),
            op.to_string(),
            class.to_string(),
            n,
            share,
        )
    };
    assert_eq!(
        got,
        [
            row("GET /items", "bronze", 1, 0.25),
            row("GET /items", "gold", 3, 0.75),
            row("POST /pay", "bronze", 1, 1.0)
        ]
    );
    assert_eq!(
        m.classes_for("web", "api", "GET /items"),
        [("gold".to_string(), 0.75), ("bronze".to_string(), 0.25)]
    );
    assert!(m.classes_for("web", "api", "nope").is_empty());
}

#[test]
fn a_full_mapping_learns_no_new_signatures_and_forgets_cleanly() {
    let mut m = ClassMapping::with_limit(2);
    let mut learned = Vec::new();
    for (t, op) in [(1, "GET /a"), (2, "GET /b"), (3, "GET /c"), (4, "GET /a")] {
        learned.push(
            m.learn(&derive(&call(t, "gold", op, false), &[]), 0)
                .unwrap(),
        );
    }
    let ops = |m: &ClassMapping| {
        m.entries()
            .into_iter()
            .map(|e| e.operation)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ops(&m),
        ["GET /a", "GET /b"],
        "a known signature is still counted"
    );
    assert_eq!(m.refused(), 1);
    m.forget(&learned[2]);
    m.forget(&learned[1]);
    assert_eq!(ops(&m), ["GET /a"]);
    assert_eq!(m.entries()[0].count, 2);
}

/// A signature no complete trace has made for the mapping's maximum age is dropped; those
/// seen since stay, and a dropped one is learned again when it comes back.
#[test]
fn signatures_age_out() {
    const MIN: i64 = 60_000_000_000;
    let flood = derive(&call(1, "gold", "made-up-7f3a", false), &[]);
    let real = derive(&call(2, "gold", "GET /items", false), &[]);
    let mut m = ClassMapping::new().with_max_age(std::time::Duration::from_secs(3600));
    let old = m.learn(&flood, 0).expect("learned");
    m.learn(&real, 0).expect("learned");
    m.learn(&real, 50 * MIN).expect("learned again");
    let operations = |m: &ClassMapping| -> Vec<String> {
        let mut ops: Vec<String> = m.entries().into_iter().map(|e| e.operation).collect();
        ops.dedup();
        ops
    };
    assert_eq!(operations(&m), ["GET /items", "made-up-7f3a"]);
    assert_eq!(m.expire(59 * MIN), 0, "nothing is an hour old yet");
    assert_eq!(m.expire(70 * MIN), 1, "the signature unseen for an hour");
    assert_eq!(operations(&m), ["GET /items"]);
    assert_eq!(m.expired(), 1);
    let again = m.learn(&flood, 71 * MIN).expect("learned anew");
    assert_eq!(operations(&m), ["GET /items", "made-up-7f3a"]);
    // Forgetting the trace learned before the signature expired leaves the new count alone.
    m.forget(&old);
    assert_eq!(operations(&m), ["GET /items", "made-up-7f3a"]);
    m.forget(&again);
    assert_eq!(operations(&m), ["GET /items"]);
}
