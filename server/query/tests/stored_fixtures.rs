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
    zipkin::decode(&body, &Limits::for_files()).unwrap().spans
}

fn bookinfo() -> Vec<Span> {
    let body = fixture("istio/responseTrace.json");
    otlp_json::decode(&body, &Limits::for_files())
        .unwrap()
        .spans
}

/// The spans stored, their traces derived and stored, both flushed; the in-memory graph of
/// the same derived rows; and a window holding every span.
struct Stored {
    queries: Queries,
    store: Store,
    derived: DerivedStore,
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
    let mut expected = ServiceGraph::served();
    derive_into(&derived, &spans, &mut expected);
    derived.flush().await.unwrap();
    store.flush().await.unwrap();
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap();
    let end = spans.iter().map(|s| s.end_unix_nano()).max().unwrap();
    let hour = 3_600_000_000_000;
    Stored {
        queries: Queries::new(store.clone(), QueryConfig::default()),
        store,
        derived,
        expected,
        window: TimeRange::new(start - hour, end + hour).unwrap(),
        _dir: dir,
    }
}

/// Derives the traces of `spans` as the provenance task does, appends their rows to the
/// derived tables and counts their calls into `expected`.
fn derive_into(derived: &DerivedStore, spans: &[Span], expected: &mut ServiceGraph) {
    let mut by_trace: BTreeMap<TraceId, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id).or_default().push(s.clone());
    }
    let mut rows = Rows::default();
    for spans in by_trace.values() {
        let tree = build_tree(spans);
        let d = derive_tree(&tree, &[], &GraphConfig::default());
        for e in &d.edges {
            expected.add(e.call());
        }
        rows.push(d, 1, CompletionReason::Idle);
    }
    for (table, batch) in rows.into_batches().unwrap() {
        derived.append(table, batch).unwrap();
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

/// The fixtures' facts (`tests/fixtures/facts.json`) of one Zipkin file.
fn zipkin_facts(name: &str) -> serde_json::Value {
    let facts: serde_json::Value = serde_json::from_slice(&fixture("facts.json")).unwrap();
    facts["zipkin"][name].clone()
}

/// Distinct `parent service->child service` pairs (services differing) read from the parent
/// IDs of an answered trace, as the Jaeger UI links spans.
fn answered_edges(spans: &[Span]) -> BTreeSet<String> {
    let by_id: BTreeMap<_, _> = spans.iter().map(|s| (s.span_id, s)).collect();
    spans
        .iter()
        .filter_map(|s| Some((by_id.get(&s.parent_span_id?)?, s)))
        .filter(|(p, c)| p.service_name != c.service_name)
        .map(|(p, c)| format!("{}->{}", p.service_name, c.service_name))
        .collect()
}

#[tokio::test]
async fn zipkin_shared_spans_are_answered_with_unique_ids_and_the_fixture_tree() {
    for name in [
        "yelp.json",
        "smartthings-oauth-authorization.json",
        "smartthings-mobile-web-install.json",
    ] {
        let spans = zipkin(name);
        let id = spans[0].trace_id;
        let s = store(spans).await;
        let raw = s.queries.raw_trace(id).await.unwrap().unwrap();
        let t = s.queries.trace(id).await.unwrap().unwrap();
        let raw_ids: BTreeSet<_> = raw.spans.iter().map(|s| s.span_id).collect();
        assert!(
            raw_ids.len() < raw.spans.len(),
            "{name}: stored with shared IDs"
        );
        let ids: BTreeSet<_> = t.spans.iter().map(|s| s.span_id).collect();
        assert_eq!(ids.len(), t.spans.len(), "{name}: a span ID appears twice");
        assert_eq!(t.spans.len(), raw.spans.len(), "{name}: no span lost");
        let facts = zipkin_facts(name);
        let mut want: BTreeSet<String> = facts["tree_service_edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect();
        if name == "smartthings-mobile-web-install.json" {
            // The facts count records before Zipkin's fragment merge: a kind-less fragment of
            // platformapi's shared SERVER span 98ffd568af9b79a0 names execution's span as its
            // parent. Merged into that SERVER record (as Zipkin merges), the span hangs under
            // its CLIENT half in guardian, so this edge is not in the answered tree.
            assert!(want.remove("execution->platformapi"));
        }
        assert_eq!(answered_edges(&t.spans), want, "{name}");
        // Every shared SERVER half now has its own ID and hangs under its CLIENT half.
        for (a, r) in t.spans.iter().zip(&raw.spans) {
            if a.span_id != r.span_id {
                assert_eq!(a.parent_span_id, Some(r.span_id), "{name}");
            }
        }
        // The same stored trace is answered with the same IDs every time.
        let again = s.queries.trace(id).await.unwrap().unwrap();
        assert_eq!(again.spans, t.spans);
    }
}

/// The time from the earliest start to the latest end, in ns.
fn extent(spans: &[Span]) -> i64 {
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap();
    spans.iter().map(|s| s.end_unix_nano()).max().unwrap() - start
}

#[tokio::test]
async fn clock_skew_is_corrected_with_a_warning_and_raw_keeps_it() {
    let spans = zipkin("skew.json");
    let id = spans[0].trace_id;
    let s = store(spans).await;
    let raw = s.queries.raw_trace(id).await.unwrap().unwrap();
    assert_eq!(extent(&raw.spans), 161_718_000, "reported as stored");
    assert!(raw.warnings.is_empty());
    let t = s.queries.trace(id).await.unwrap().unwrap();
    let root = t.spans.iter().find(|s| s.parent_span_id.is_none()).unwrap();
    assert_eq!(root.duration_nano, 99_411_000);
    assert_eq!(extent(&t.spans), root.duration_nano);
    // The server half and its child moved by the same amount, and each says so.
    assert_eq!(t.warnings.len(), 2);
    for w in &t.warnings {
        assert_eq!(
            w.message,
            "This span's timestamps were adjusted by 65.922ms"
        );
        assert_eq!(t.spans[w.span].service_name, "serviceb");
    }
    // Provenance reads the same adjusted tree: its call tree names the answered IDs.
    let p = s.queries.trace_provenance(id, &[]).await.unwrap().unwrap();
    let tree = p.tree.unwrap();
    assert_eq!(tree.duration_us, 99_411);
    let answered: BTreeSet<String> = t.spans.iter().map(|s| hex::encode(s.span_id)).collect();
    let mut stack = vec![&tree];
    let mut named = BTreeSet::new();
    while let Some(n) = stack.pop() {
        named.insert(n.span_id.clone());
        stack.extend(n.children.iter());
    }
    assert_eq!(named, answered);
}

/// Whole minutes are answered from rollups once read; rows a late trace adds to a minute
/// already rolled up make it read again. Every answer equals that of a reader without
/// rollups, and the graph computed in memory.
#[tokio::test]
async fn graph_rollups_follow_rows_added_later() {
    let mut s = store(zipkin("yelp.json")).await;
    let plain = Queries::new(
        s.store.clone(),
        QueryConfig {
            graph_cache_mib: 0,
            ..QueryConfig::default()
        },
    );
    let first = s.queries.edges_in_window(s.window, None).await.unwrap();
    assert!(
        s.queries.graph_rollup_minutes() >= 119,
        "the window's whole minutes: {} in {:?}",
        s.queries.graph_rollup_minutes(),
        s.window
    );
    let again = s.queries.edges_in_window(s.window, None).await.unwrap();
    assert_eq!(counts(&again), counts(&first));
    assert_eq!(counts(&first), counts(&s.expected));

    // Bookinfo's trace, moved into a minute of the window that is rolled up already.
    let mut late = bookinfo();
    let shift = s.window.start_ns + 600_000_000_000
        - late.iter().map(|sp| sp.start_unix_nano).min().unwrap();
    for sp in &mut late {
        sp.start_unix_nano += shift;
    }
    s.store.append(2, &late).unwrap();
    derive_into(&s.derived, &late, &mut s.expected);
    let cached = s.queries.dependencies(s.window).await.unwrap();
    let read = plain.dependencies(s.window).await.unwrap();
    assert_eq!(cached, read, "buffered late rows");
    assert!(
        cached.iter().any(|l| l.parent == "productpage.bookinfo"),
        "{cached:?}"
    );
    let got = s.queries.edges_in_window(s.window, None).await.unwrap();
    assert_eq!(counts(&got), counts(&s.expected));
    s.derived.flush().await.unwrap();
    let view = s.queries.service_graph(s.window, None).await.unwrap();
    assert_eq!(
        view,
        plain.service_graph(s.window, None).await.unwrap(),
        "flushed"
    );
}
