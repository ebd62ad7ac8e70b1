//! Shared helpers for the integration tests: fixture paths, decoding, and grouping by trace.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshtrace_collector::decode::{jaeger_json, nezha, otlp_json, zipkin};
use meshtrace_collector::Limits;
use meshtrace_model::{Span, TraceId};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

pub fn read(rel: &str) -> Vec<u8> {
    let p = fixture(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn zipkin(name: &str) -> Vec<Span> {
    zipkin::decode(&read(&format!("zipkin/{name}")), &Limits::for_files())
        .unwrap()
        .spans
}

pub fn jaeger(rel: &str) -> Vec<Span> {
    jaeger_json::decode(&read(rel), &Limits::for_files())
        .unwrap()
        .spans
}

pub fn otlp_json_bytes(body: &[u8]) -> Vec<Span> {
    otlp_json::decode(body, &Limits::for_files()).unwrap().spans
}

pub fn nezha(rel: &str) -> Vec<Span> {
    nezha::decode(
        std::fs::File::open(fixture(rel)).unwrap(),
        &Limits::for_files(),
    )
    .unwrap()
    .spans
}

/// OTLP traces written as YAML (the servicegraph goldens) decoded through the OTLP/JSON decoder.
pub fn otlp_yaml(rel: &str) -> Vec<Span> {
    let v: serde_json::Value = serde_yaml::from_slice(&read(rel)).unwrap();
    otlp_json_bytes(&serde_json::to_vec(&v).unwrap())
}

pub fn by_trace(spans: Vec<Span>) -> BTreeMap<TraceId, Vec<Span>> {
    let mut out: BTreeMap<TraceId, Vec<Span>> = BTreeMap::new();
    for s in spans {
        out.entry(s.trace_id).or_default().push(s);
    }
    out
}

pub fn facts() -> serde_json::Value {
    serde_json::from_slice(&read("facts.json")).unwrap()
}

/// The (caller, callee) service pairs of the served service graph of one trace between two
/// instrumented services: the trace's `edges` rows ([`meshtrace_provenance::derive`]) counted
/// by [`meshtrace_provenance::ServiceGraph::served`], as the query layer counts stored rows,
/// leaving out the virtual `user`, peers and databases and calls within one service.
pub fn graph_service_edges(spans: &[Span]) -> std::collections::BTreeSet<(String, String)> {
    use meshtrace_provenance::{derive, ConnectionType, ServiceGraph};
    let mut graph = ServiceGraph::served();
    for row in &derive(spans, &[]).edges {
        graph.add(row.call());
    }
    graph
        .edges
        .keys()
        .filter(|k| {
            !matches!(
                k.connection_type,
                ConnectionType::VirtualNode | ConnectionType::Database
            )
        })
        .filter(|k| k.client != k.server)
        .map(|k| (k.client.clone(), k.server.clone()))
        .collect()
}
