//! The 9 Jaeger UI critical-path cases in tests/fixtures/critical-path, decoded with the
//! Jaeger JSON decoder, must give exactly the expected sections, in order.

mod common;

use meshtrace_model::AttrValue;
use meshtrace_provenance::critical_path::path_length;
use meshtrace_provenance::{build_tree, critical_path, self_times, SlimSpan};

/// The span ID as written in the fixture (hashed IDs keep their text in an attribute).
fn label(s: &SlimSpan) -> String {
    match s.attribute("meshtrace.original_span_id") {
        Some(AttrValue::Str(t)) => t.clone(),
        _ => s.span_id_hex(),
    }
}

#[test]
fn all_nine_cases_reproduce_exactly() {
    let root_durations = [100, 100, 40, 30, 30, 29, 29, 20, 20];
    for (n, root_duration) in (1..=9).zip(root_durations) {
        let rel = format!("critical-path/test{n}.json");
        let doc: serde_json::Value = serde_json::from_slice(&common::read(&rel)).unwrap();
        let spans = common::jaeger(&rel);
        assert_eq!(
            spans.len(),
            doc["trace"]["spans"].as_array().unwrap().len(),
            "{rel}"
        );
        let tree = build_tree(&spans);
        let sections = critical_path(&tree);
        // Jaeger JSON times are µs; the decoder gives ns.
        let got: Vec<(String, i64, i64)> = sections
            .iter()
            .map(|s| {
                (
                    label(&tree.nodes[s.node].span),
                    s.start_ns / 1000,
                    s.end_ns / 1000,
                )
            })
            .collect();
        let want: Vec<(String, i64, i64)> = doc["expectedCriticalPath"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let id = e["spanID"].as_str().unwrap().to_string();
                (
                    id,
                    e["sectionStart"].as_i64().unwrap(),
                    e["sectionEnd"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "{rel}");
        // The sections tile the root span.
        assert_eq!(path_length(&sections), root_duration * 1000, "{rel}");
        let root = &tree.nodes[tree.primary_root().unwrap()];
        assert_eq!(root.duration_ns(), root_duration * 1000, "{rel}");
        for w in sections.windows(2) {
            assert_eq!(
                w[1].end_ns, w[0].start_ns,
                "{rel}: contiguous, latest first"
            );
        }
        let total: i64 = self_times(&sections).iter().map(|(_, t)| t).sum();
        assert_eq!(total, root_duration * 1000, "{rel}");
    }
}

#[test]
fn self_times_merge_repeated_spans() {
    // test1: span-C appears three times: [60,101) + [40,50) + [1,20) = 41 + 10 + 19 = 70.
    let spans = common::jaeger("critical-path/test1.json");
    let tree = build_tree(&spans);
    let times = self_times(&critical_path(&tree));
    let named: Vec<(String, i64)> = times
        .iter()
        .map(|(node, t)| (label(&tree.nodes[*node].span), t / 1000))
        .collect();
    assert_eq!(
        named,
        [
            ("span-C".to_string(), 70),
            ("span-E".into(), 10),
            ("span-D".into(), 20)
        ]
    );
}
