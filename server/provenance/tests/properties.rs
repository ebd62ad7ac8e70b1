//! Property tests on random trees: the critical path lies within the root interval, its
//! sections do not overlap, they tile the root, and self times add up to its length.

use meshtrace_model::{Span, SpanKind};
use meshtrace_provenance::critical_path::path_length;
use meshtrace_provenance::{build_tree, critical_path, self_times};
use proptest::prelude::*;

/// Random spans: each one's parent is an earlier span; times and kinds are arbitrary, so
/// children may stick out of, or lie outside, their parents.
fn trees() -> impl Strategy<Value = Vec<Span>> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            0i64..1000,
            0i64..500,
            0usize..5,
        ),
        1..40,
    )
    .prop_map(|raw| {
        let kinds = [
            SpanKind::Internal,
            SpanKind::Client,
            SpanKind::Server,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        raw.iter()
            .enumerate()
            .map(|(i, (parent, start, dur, kind))| Span {
                trace_id: [7; 16],
                span_id: (i as u64 + 1).to_be_bytes(),
                parent_span_id: (i > 0).then(|| (parent.index(i) as u64 + 1).to_be_bytes()),
                service_name: format!("svc{}", i % 3),
                kind: kinds[*kind],
                start_unix_nano: *start,
                duration_nano: *dur,
                ..Span::default()
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn critical_path_invariants(spans in trees()) {
        let tree = build_tree(&spans);
        prop_assert_eq!(tree.roots.len(), 1);
        prop_assert_eq!(tree.orphans.len(), 0);
        let root = &tree.nodes[tree.primary_root().unwrap()];
        let sections = critical_path(&tree);
        let mut sorted = sections.clone();
        sorted.sort_by_key(|s| s.start_ns);
        for s in &sections {
            prop_assert!(s.start_ns < s.end_ns, "no empty sections: {:?}", s);
            prop_assert!(s.start_ns >= root.start_ns && s.end_ns <= root.end_ns, "{:?} outside root", s);
        }
        for w in sorted.windows(2) {
            prop_assert!(w[0].end_ns <= w[1].start_ns, "overlap {:?}", w);
        }
        prop_assert_eq!(path_length(&sections), root.duration_ns());
        let total: i64 = self_times(&sections).iter().map(|(_, t)| t).sum();
        prop_assert_eq!(total, path_length(&sections));
    }
}
