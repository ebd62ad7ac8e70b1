//! The query layer over stored data: third-party traces go through the write path the server
//! uses (spans into the store, their derived rows as `tables::Rows` into the derived store,
//! both flushed to Parquet), then the typed queries read them back. What they answer must be
//! what the provenance crate computes from the same spans in memory (the code the golden tests
//! check), and the fixtures' own facts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use meshtrace_collector::decode::{otlp_json, zipkin};
use meshtrace_collector::Limits;
use meshtrace_model::{Span, TraceId};
use meshtrace_provenance::{
    build_tree, derive_tree, CompletionReason, GraphConfig, ServiceGraph, DEFAULT_CLASS,
};
use meshtrace_query::tables::{tables, Rows};
use meshtrace_query::{Queries, QueryConfig, TimeRange};
use meshtrace_storage::{DerivedConfig, DerivedStore, Store, StoreConfig};

fn fixture(rel: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn zipkin(name: &str) -> Vec<Span> {
    let body = fixture(&format!("zipkin/{name}"));
    zipkin::decode(&body, &Limits::default()).unwrap().spans
}

fn bookinfo() -> Vec<Span> {
    let body = fixture("istio/responseTrace.json");
    otlp_json::decode(&body, &Limits::default()).unwrap().spans
}

/// The spans stored, their traces derived and stored, both flushed; the in-memory graph of
/// the same derived rows; and a window holding every span.
struct Stored {
    queries: Queries,
    expected: ServiceGraph,
    window: TimeRange,
    _dir: tempfile::TempDir,
}

async fn store(spans: Vec<Span>) -> Stored {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
    let derived = DerivedStore::open(&store, tables(), DerivedConfig::default())
        .await
        .unwrap();
    store.append(1, &spans).unwrap();
    let mut by_trace: BTreeMap<TraceId, Vec<Span>> = BTreeMap::new();
    for s in &spans {
        by_trace.entry(s.trace_id).or_default().push(s.clone());
    }
    let mut rows = Rows::default();
    let mut expected = ServiceGraph::served();
    for spans in by_trace.values() {
        let tree = build_tree(spans);
        let d = derive_tree(&tree, &[], &GraphConfig::default());
        for e in &d.edges {
            expected.add(e.call());
        }
        rows.push(d, &tree, 1, CompletionReason::Idle);
    }
    for (table, batch) in rows.into_batches().unwrap() {
        derived.append(table, batch).unwrap();
    }
    derived.flush().await.unwrap();
    store.flush().await.unwrap();
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap();
    let end = spans.iter().map(|s| s.end_unix_nano()).max().unwrap();
    let hour = 3_600_000_000_000;
    Stored {
        queries: Queries::new(store, QueryConfig::default()),
        expected,
        window: TimeRange::new(start - hour, end + hour).unwrap(),
        _dir: dir,
    }
}

/// Each edge of a graph with its request count and the sides seen.
fn counts(g: &ServiceGraph) -> BTreeMap<String, (u64, u64, u64)> {
    g.edges
        .iter()
        .map(|(k, s)| {
            let key = format!(
                "{}->{} {:?} failed={}",
                k.client, k.server, k.connection_type, k.failed
            );
            (key, (s.requests, s.client_sides, s.server_sides))
        })
        .collect()
}

#[tokio::test]
async fn stored_edges_give_the_graph_computed_in_memory() {
    for spans in [
        zipkin("yelp.json"),
        zipkin("smartthings-oauth-authorization.json"),
        bookinfo(),
    ] {
        let s = store(spans).await;
        let got = s.queries.edges_in_window(s.window, None).await.unwrap();
        assert!(!got.edges.is_empty());
        assert_eq!(counts(&got), counts(&s.expected));
        let classed = s
            .queries
            .edges_in_window(s.window, Some(DEFAULT_CLASS))
            .await
            .unwrap();
        assert_eq!(
            counts(&classed),
            counts(&s.expected),
            "every trace is `default`"
        );
        let other = s
            .queries
            .edges_in_window(s.window, Some("batch"))
            .await
            .unwrap();
        assert!(other.edges.is_empty(), "no trace is `batch`");
    }
}

#[tokio::test]
async fn bookinfo_dependencies_and_graph() {
    let s = store(bookinfo()).await;
    let links: BTreeSet<(String, String, u64)> = s
        .queries
        .dependencies(s.window)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.parent, l.child, l.call_count))
        .collect();
    let want: BTreeSet<(String, String, u64)> = [
        ("istio-ingressgateway.istio-system", "productpage.bookinfo"),
        ("productpage.bookinfo", "details.bookinfo"),
        ("productpage.bookinfo", "reviews.bookinfo"),
        ("reviews.bookinfo", "ratings.bookinfo"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string(), 1))
    .collect();
    assert_eq!(links, want);

    let view = s.queries.service_graph(s.window, None).await.unwrap();
    let services: BTreeSet<&str> = view
        .nodes
        .iter()
        .filter(|n| !n.is_virtual)
        .map(|n| n.id.as_str())
        .collect();
    assert_eq!(services.len(), 5, "{services:?}");
    assert_eq!(view.classes.len(), 1);
    assert_eq!(
        (view.classes[0].class.as_str(), view.classes[0].traces),
        (DEFAULT_CLASS, 1)
    );
    for e in view.edges.iter().filter(|e| e.caller != "user") {
        assert_eq!((e.requests, e.errors), (1, 0), "{e:?}");
        assert!(e.p50_ms.is_some_and(|p| p > 0.0), "{e:?}");
    }
}

#[tokio::test]
async fn a_stored_trace_has_its_critical_path() {
    let spans = zipkin("yelp.json");
    let id = spans[0].trace_id;
    let s = store(spans).await;
    let p = s
        .queries
        .trace_provenance(id, &[])
        .await
        .unwrap()
        .expect("stored");
    assert!(p.derived && p.complete, "{p:?}");
    assert_eq!(p.class, DEFAULT_CLASS);
    assert_eq!(p.span_count, 16);
    let path = &p.critical_path;
    assert!(!path.is_empty());
    assert!(
        path.windows(2).all(|w| w[0].end_us <= w[1].start_us),
        "{path:?}"
    );
    let tree = p.tree.as_ref().expect("a root");
    let covered: i64 = path.iter().map(|s| s.end_us - s.start_us).sum();
    assert_eq!(
        covered, tree.duration_us,
        "the path covers the root's duration"
    );
}
