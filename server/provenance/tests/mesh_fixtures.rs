//! Istio Bookinfo (Tempo JSON through the OTLP/JSON decoder, which accepts Tempo's `batches`
//! and base64 IDs) and the Nezha CSVs: services, edges, roots, orphans and classes.

mod common;

use std::collections::BTreeSet;

use meshtrace_provenance::graph::{calls, GraphConfig};
use meshtrace_provenance::{build_tree, derive, ClassRule, DEFAULT_CLASS};

#[test]
fn istio_bookinfo_trace() {
    let spans = common::otlp_json_bytes(&common::read("istio/responseTrace.json"));
    assert_eq!(spans.len(), 8);
    let traces = common::by_trace(spans);
    assert_eq!(traces.len(), 1);
    let (id, spans) = traces.into_iter().next().unwrap();
    assert_eq!(hex::encode(id), "3ba55609c3cde49649cd77d1f9dcd936");
    let tree = build_tree(&spans);
    assert_eq!(tree.services().len(), 5);
    assert_eq!((tree.roots.len(), tree.orphans.len()), (1, 0));
    let want: BTreeSet<(String, String)> = [
        ("istio-ingressgateway.istio-system", "productpage.bookinfo"),
        ("productpage.bookinfo", "details.bookinfo"),
        ("productpage.bookinfo", "reviews.bookinfo"),
        ("reviews.bookinfo", "ratings.bookinfo"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(common::graph_service_edges(&spans), want);
    let root = &tree.nodes[tree.primary_root().unwrap()].span;
    assert_eq!(
        (root.span_id_hex().as_str(), root.duration_nano),
        ("49cd77d1f9dcd936", 11_932_000)
    );
    // Each hop is a client-side proxy span paired with a server-side proxy span: 4 paired
    // calls with both durations, and nothing left to virtual nodes.
    let d = derive(&spans, &[]);
    assert_eq!(d.edges.len(), 4);
    for e in &d.edges {
        assert!(e.overhead_ns.is_some_and(|o| o >= 0), "{e:?}");
    }
    let rows: BTreeSet<(String, String)> = d
        .edges
        .iter()
        .map(|e| (e.caller_service.to_string(), e.callee_service.to_string()))
        .collect();
    assert_eq!(rows, want);
    assert!(d.trace.complete);
    assert_eq!(d.trace.critical_path_ns, root.duration_nano);
}

fn check_nezha(
    rel: &str,
    traces: usize,
    services: usize,
    edges: usize,
    rules: &[ClassRule],
) -> Vec<String> {
    let spans = common::nezha(rel);
    let mut all_edges = BTreeSet::new();
    let mut all_services = BTreeSet::new();
    let mut classes = Vec::new();
    let by_trace = common::by_trace(spans);
    assert_eq!(by_trace.len(), traces, "{rel}");
    for spans in by_trace.values() {
        let tree = build_tree(spans);
        assert_eq!((tree.roots.len(), tree.orphans.len()), (1, 0), "{rel}");
        all_edges.extend(common::graph_service_edges(spans));
        all_services.extend(tree.services().into_iter().map(String::from));
        // Kinds are unspecified in Nezha: every cross-service link is still an edge row.
        let cross = tree.nodes.iter().filter(|n| {
            n.parent
                .is_some_and(|p| tree.nodes[p].span.service_name != n.span.service_name)
        });
        assert_eq!(
            calls(&tree, &GraphConfig::default()).len(),
            cross.count(),
            "{rel}"
        );
        let d = derive(spans, rules);
        assert!(!d.trace.class.is_empty());
        assert!(d.edges.iter().all(|e| e.class == d.trace.class));
        assert!(d.critical_path.iter().all(|r| r.class == d.trace.class));
        assert_eq!(
            d.critical_path.iter().map(|r| r.self_time_ns).sum::<i64>(),
            d.trace.critical_path_ns
        );
        classes.push(d.trace.class.to_string());
    }
    assert_eq!(all_services.len(), services, "{rel} services");
    assert_eq!(all_edges.len(), edges, "{rel} edges");
    classes
}

#[test]
fn nezha_online_boutique_and_train_ticket() {
    let rules = [
        ClassRule {
            class: "storefront".into(),
            service: Some("frontend".into()),
            ..Default::default()
        },
        ClassRule {
            class: "gateway".into(),
            route_prefix: Some("/*".into()),
            ..Default::default()
        },
    ];
    let ob = check_nezha("nezha/ob_2022-08-22_05_29_trace.csv", 309, 10, 13, &rules);
    assert!(ob.iter().all(|c| c == "storefront"));
    let tt = check_nezha(
        "nezha/tt_2023-01-29_08_50_faultfree_trace.csv",
        71,
        25,
        42,
        &rules,
    );
    assert!(tt.iter().all(|c| c == "gateway"));
    let tt = check_nezha(
        "nezha/tt_2023-01-29_08_50_faultfree_trace.csv",
        71,
        25,
        42,
        &[],
    );
    assert!(tt.iter().all(|c| c == DEFAULT_CLASS));
}
