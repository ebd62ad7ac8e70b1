//! The OpenTelemetry Collector servicegraph connector's golden pairs: our service graph must
//! give exactly the expected edges (client, server, connection_type, failed, extra dimensions,
//! virtual_node label), request counts, and client/server latency sums.
//!
//! The graph is counted as the server counts it: each trace's `edges` rows
//! ([`meshtrace_provenance::derive_tree`], what the server stores) aggregated by
//! [`ServiceGraph`] (what the query layer runs over stored rows), in the connector's view.

mod common;

use std::collections::BTreeMap;

use meshtrace_provenance::graph::VirtualSide;
use meshtrace_provenance::{build_tree, derive_tree, GraphConfig, ServiceGraph};

type Labels = BTreeMap<String, String>;

/// Expected metric data points: labels → (request total, client sum s, server sum s).
fn expected(rel: &str) -> BTreeMap<Labels, (u64, Option<f64>, Option<f64>)> {
    let doc: serde_yaml::Value = serde_yaml::from_slice(&common::read(rel)).unwrap();
    let mut out: BTreeMap<Labels, (u64, Option<f64>, Option<f64>)> = BTreeMap::new();
    for rm in doc["resourceMetrics"].as_sequence().unwrap() {
        for sm in rm["scopeMetrics"].as_sequence().unwrap() {
            for m in sm["metrics"].as_sequence().unwrap() {
                let name = m["name"].as_str().unwrap().trim_end_matches("_seconds");
                let body = if m["sum"].is_mapping() {
                    &m["sum"]
                } else {
                    &m["histogram"]
                };
                for dp in body["dataPoints"].as_sequence().unwrap() {
                    let labels: Labels = dp["attributes"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|a| {
                            let v = &a["value"];
                            let text = match v.get("stringValue") {
                                Some(s) => s.as_str().unwrap().to_string(),
                                None => v["boolValue"].as_bool().unwrap().to_string(),
                            };
                            (a["key"].as_str().unwrap().to_string(), text)
                        })
                        .collect();
                    let e = out.entry(labels).or_default();
                    let sum = dp["sum"].as_f64();
                    match name {
                        "traces_service_graph_request_total" => {
                            e.0 = dp["asInt"].as_str().unwrap().parse().unwrap()
                        }
                        "traces_service_graph_request_client" => e.1 = sum,
                        "traces_service_graph_request_server" => e.2 = sum,
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

fn ours(
    trace: &str,
    (config, label): (GraphConfig, bool),
) -> BTreeMap<Labels, (u64, Option<f64>, Option<f64>)> {
    let mut g = ServiceGraph::connector(label);
    for spans in common::by_trace(common::otlp_yaml(trace)).values() {
        for row in &derive_tree(&build_tree(spans), &[], &config).edges {
            g.add(row.call());
        }
    }
    g.edges
        .iter()
        .map(|(k, v)| {
            let mut l: Labels = k.dimensions.clone();
            l.insert("client".into(), k.client.clone());
            l.insert("server".into(), k.server.clone());
            l.insert("connection_type".into(), k.connection_type.label().into());
            l.insert("failed".into(), k.failed.to_string());
            if let Some(side) = k.virtual_node {
                let side = if side == VirtualSide::Client {
                    "client"
                } else {
                    "server"
                };
                l.insert("virtual_node".into(), side.into());
            }
            let secs = |ns: i64| Some(ns as f64 / 1e9);
            (
                l,
                (
                    v.requests,
                    secs(v.client_latency_sum_ns),
                    secs(v.server_latency_sum_ns),
                ),
            )
        })
        .collect()
}

fn config(dimensions: &[&str], label: bool) -> (GraphConfig, bool) {
    let config = GraphConfig {
        dimensions: dimensions.iter().map(|s| s.to_string()).collect(),
        ..GraphConfig::default()
    };
    (config, label)
}

#[test]
fn messaging_system_pair() {
    let want = expected("servicegraph/messaging-system-trace-expected-metrics.yaml");
    assert_eq!(want.len(), 1);
    assert_eq!(
        ours(
            "servicegraph/messaging-system-trace.yaml",
            config(&[], false)
        ),
        want
    );
}

#[test]
fn extra_dimensions_pair() {
    let want = expected("servicegraph/extra-dimensions-queue-db-expected-metrics.yaml");
    let got = ours(
        "servicegraph/extra-dimensions-queue-db-trace.yaml",
        config(&["db.system", "messaging.system"], false),
    );
    assert_eq!(got, want);
    let labels = got.keys().next().unwrap();
    assert_eq!(labels["client_messaging.system"], "kafka");
    assert_eq!(labels["server_db.system"], "postgresql");
}

#[test]
fn virtual_client_pair() {
    let want = expected("servicegraph/virtual-node-label-client-expected-metrics.yaml");
    let dims = ["peer.service.name", "db.system", "messaging.system"];
    let got = ours(
        "servicegraph/virtual-node-label-client-trace.yaml",
        config(&dims, true),
    );
    assert_eq!(got, want);
    let (labels, (n, client, server)) = got.iter().next().unwrap();
    assert_eq!((labels["client"].as_str(), *n), ("user", 1));
    assert_eq!(
        (*client, *server),
        (Some(0.0), Some(1e-6)),
        "the virtual side has no latency"
    );
}

/// The older pair encodes the swapped-latency bug fixed upstream (see SOURCES.md): labels and
/// counts must match, and our sums are the fixed ones, i.e. the file's sums swapped.
#[test]
fn virtual_node_pair_from_the_older_connector() {
    let want = expected("servicegraph/virtual-node-label-expected-metrics.yaml");
    let got = ours(
        "servicegraph/virtual-node-label-trace.yaml",
        config(&["peer.service"], false),
    );
    assert_eq!(got.len(), 2);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (labels, (n, client, server)) in &got {
        let (wn, wclient, wserver) = want[labels];
        assert_eq!(*n, wn, "{labels:?}");
        assert_eq!((*client, *server), (wserver, wclient), "{labels:?}");
    }
    let pairs: Vec<(&str, &str)> = got
        .keys()
        .map(|l| (l["client"].as_str(), l["server"].as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("foo-server", "unknown"), ("user", "bar-requester")]
    );
}
