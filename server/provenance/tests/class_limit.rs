//! The bound on distinct classes: claimed classes past it fold into `other` (the trace and
//! all its rows), classes the rules name and `default` are always kept, and a class no trace
//! had for the maximum age makes room again.

use std::time::Duration;

use meshtrace_model::{KeyValue, Span, SpanKind};
use meshtrace_provenance::{derive, ClassLimit, ClassRule, Derived, OTHER_CLASS};

const MIN: i64 = 60_000_000_000;

/// A two-span trace whose entry span claims `class` (none if empty).
fn trace(id: u8, class: &str) -> Derived {
    let mut root = Span {
        trace_id: [id; 16],
        span_id: [1; 8],
        service_name: "front".into(),
        kind: SpanKind::Server,
        name: "GET /".into(),
        duration_nano: 100,
        ..Span::default()
    };
    if !class.is_empty() {
        root.attributes.push(KeyValue::string("mesh.class", class));
    }
    let child = Span {
        span_id: [2; 8],
        parent_span_id: Some([1; 8]),
        kind: SpanKind::Client,
        name: "call".into(),
        ..root.clone()
    };
    derive(&[root, child], &[])
}

fn classes(d: &Derived) -> Vec<String> {
    let mut all = vec![d.trace.class.to_string()];
    all.extend(d.edges.iter().map(|e| e.class.to_string()));
    all.extend(d.critical_path.iter().map(|r| r.class.to_string()));
    all.dedup();
    all
}

#[test]
fn claimed_classes_past_the_limit_fold_into_other() {
    let rules = vec![ClassRule {
        class: "gold".into(),
        service: Some("nowhere".into()),
        ..ClassRule::default()
    }];
    // A class the caller keeps (one with an objective, say).
    let kept = |class: &str| class == "interactive";
    let mut limit = ClassLimit::new(2, Duration::from_secs(3600));
    for (i, class) in ["a", "b", "a"].into_iter().enumerate() {
        let mut d = trace(i as u8 + 1, class);
        assert!(!limit.apply(&mut d, &rules, kept, 0), "{class} kept");
        assert_eq!(classes(&d), [class]);
    }
    let mut flood = trace(9, "made-up-1");
    assert!(limit.apply(&mut flood, &rules, kept, 0));
    assert_eq!(
        classes(&flood),
        [OTHER_CLASS],
        "the trace and every row of it"
    );
    assert!(!flood.edges.is_empty());
    // A class a rule names, one the caller keeps, and the default class are always kept.
    for class in ["gold", "interactive", ""] {
        let mut d = trace(10, class);
        assert!(!limit.apply(&mut d, &rules, kept, 0));
    }
    assert_eq!((limit.len(), limit.folded()), (2, 1));

    // "b" is seen again at 50 min; "a" is an hour old at 61 min and leaves.
    assert!(!limit.apply(&mut trace(11, "b"), &rules, kept, 50 * MIN));
    assert_eq!(limit.expire(61 * MIN), 1);
    let mut late = trace(12, "made-up-2");
    assert!(
        !limit.apply(&mut late, &rules, kept, 61 * MIN),
        "room again"
    );
    assert_eq!(classes(&late), ["made-up-2"]);
}
