//! The rows derived from one complete (or force-completed) trace: one `traces` row, one
//! `edges` row per caller→callee call, and one `critical_path` row per span on the critical
//! path with its self time there (per node: the two halves of a Zipkin shared span are two
//! rows with the same span ID). Every row carries the trace's class.
//!
//! Durations are taken on the skew-adjusted times of [`crate::tree`]. A trace is `complete`
//! when it has exactly one root and no orphans (the assembler also marks force-completed or
//! truncated traces partial). An edge's `overhead_ns` is client duration minus server
//! duration, the time spent in the network and proxies, when both sides exist.
//!
//! Names (class, services, operations) are shared strings ([`Name`]): the rows hold the names
//! interned by [`crate::slim`], so a row repeating a service or operation name copies nothing.

use std::collections::BTreeMap;

use meshtrace_model::{Span, SpanId, StatusCode, TraceId};
use serde::Serialize;

use crate::classes::{classify, ClassRule, DEFAULT_CLASS};
use crate::critical_path::{critical_path, path_length, self_times};
use crate::graph::{calls, dimensions, ConnectionType, EdgeCall, GraphConfig};
pub use crate::span::Name;
use crate::tree::{build_tree, TraceTree, TreeCounters};

/// One row of the `traces` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceRow {
    pub trace_id: TraceId,
    pub class: Name,
    pub root_service: Name,
    pub root_operation: Name,
    /// Earliest span start (ns).
    pub start_ns: i64,
    /// Latest span end minus earliest start (ns).
    pub duration_ns: i64,
    pub span_count: usize,
    pub service_count: usize,
    /// Whether any span has status error.
    pub error: bool,
    pub critical_path_ns: i64,
    /// One root and no orphans (and, from the assembler, not truncated or forced out).
    pub complete: bool,
}

/// One row of the `edges` table: one caller→callee call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EdgeRow {
    pub trace_id: TraceId,
    pub class: Name,
    pub caller_service: Name,
    pub callee_service: Name,
    /// The server span's name, else the client span's.
    pub operation: Name,
    pub connection_type: ConnectionType,
    pub client_span_id: Option<SpanId>,
    pub server_span_id: Option<SpanId>,
    pub client_duration_ns: Option<i64>,
    pub server_duration_ns: Option<i64>,
    /// Client minus server duration, when both sides exist.
    pub overhead_ns: Option<i64>,
    /// Error if either side failed, else ok if either side says ok, else unset.
    pub status: StatusCode,
    /// The extra dimensions configured in [`GraphConfig::dimensions`], from either side
    /// (`client_<key>`, `server_<key>`); empty when none are configured.
    pub dimensions: BTreeMap<String, String>,
}

impl EdgeRow {
    /// What the service graph counts of this row.
    pub fn call(&self) -> EdgeCall<'_> {
        EdgeCall {
            caller: &self.caller_service,
            callee: &self.callee_service,
            connection_type: self.connection_type,
            failed: self.status == StatusCode::Error,
            client_ns: self.client_duration_ns,
            server_ns: self.server_duration_ns,
            dimensions: (!self.dimensions.is_empty()).then_some(&self.dimensions),
        }
    }
}

/// One row of the `critical_path` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CriticalPathRow {
    pub trace_id: TraceId,
    pub class: Name,
    pub span_id: SpanId,
    pub service: Name,
    pub operation: Name,
    pub self_time_ns: i64,
}

/// Everything derived from one trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Derived {
    pub trace: TraceRow,
    pub edges: Vec<EdgeRow>,
    pub critical_path: Vec<CriticalPathRow>,
    pub counters: TreeCounters,
}

impl Derived {
    /// Gives the trace and every row of it another class.
    pub fn set_class(&mut self, class: Name) {
        for e in &mut self.edges {
            e.class = class.clone();
        }
        for r in &mut self.critical_path {
            r.class = class.clone();
        }
        self.trace.class = class;
    }
}

/// Builds the tree of one trace's spans and derives its rows.
pub fn derive(spans: &[Span], rules: &[ClassRule]) -> Derived {
    derive_tree(&build_tree(spans), rules, &GraphConfig::default())
}

/// Derives the rows of an already built tree.
pub fn derive_tree(tree: &TraceTree, rules: &[ClassRule], graph: &GraphConfig) -> Derived {
    let root = tree.primary_root();
    let class: Name = root
        .map(|r| classify(&tree.nodes[r].span, rules))
        .unwrap_or_else(|| DEFAULT_CLASS.to_string())
        .into();
    let trace_id = tree
        .nodes
        .first()
        .map(|n| n.span.trace_id)
        .unwrap_or_default();
    let sections = critical_path(tree);
    let start_ns = tree.nodes.iter().map(|n| n.start_ns).min().unwrap_or(0);
    let end_ns = tree.nodes.iter().map(|n| n.end_ns).max().unwrap_or(0);
    let mut services: Vec<&str> = tree.nodes.iter().map(|n| &*n.span.service_name).collect();
    services.sort_unstable();
    services.dedup();
    let root_span = root.map(|r| &tree.nodes[r].span);
    let trace = TraceRow {
        trace_id,
        class: class.clone(),
        root_service: root_span.map_or_else(Name::default, |s| s.service_name.clone()),
        root_operation: root_span.map_or_else(Name::default, |s| s.name.clone()),
        start_ns,
        duration_ns: end_ns - start_ns,
        span_count: tree.nodes.len(),
        service_count: services.len(),
        error: tree
            .nodes
            .iter()
            .any(|n| n.span.status_code == StatusCode::Error),
        critical_path_ns: path_length(&sections),
        complete: tree.roots.len() == 1 && tree.orphans.is_empty(),
    };
    let edges = edge_rows(tree, graph, trace_id, &class);
    // Per node, not per span ID: the two halves of a Zipkin shared span are separate rows.
    let critical_path = self_times(&sections)
        .into_iter()
        .map(|(node, self_time_ns)| {
            let span = &tree.nodes[node].span;
            CriticalPathRow {
                trace_id,
                class: class.clone(),
                span_id: span.span_id,
                service: span.service_name.clone(),
                operation: span.name.clone(),
                self_time_ns,
            }
        })
        .collect();
    Derived {
        trace,
        edges,
        critical_path,
        counters: tree.counters,
    }
}

fn edge_rows(
    tree: &TraceTree,
    graph: &GraphConfig,
    trace_id: TraceId,
    class: &Name,
) -> Vec<EdgeRow> {
    calls(tree, graph)
        .into_iter()
        .map(|c| {
            let client = c.client.map(|i| &tree.nodes[i]);
            let server = c.server.map(|i| &tree.nodes[i]);
            let mut dims = BTreeMap::new();
            if !graph.dimensions.is_empty() {
                for (prefix, side) in [("client", client), ("server", server)] {
                    if let Some(n) = side {
                        dimensions(&n.span, prefix, graph, &mut dims);
                    }
                }
            }
            let client_duration_ns = client.map(|n| n.duration_ns());
            let server_duration_ns = server.map(|n| n.duration_ns());
            let statuses = [client, server].map(|n| n.map(|n| n.span.status_code));
            let status = if statuses.contains(&Some(StatusCode::Error)) {
                StatusCode::Error
            } else if statuses.contains(&Some(StatusCode::Ok)) {
                StatusCode::Ok
            } else {
                StatusCode::Unset
            };
            EdgeRow {
                trace_id,
                class: class.clone(),
                caller_service: c.caller,
                callee_service: c.callee,
                operation: server
                    .or(client)
                    .map_or_else(Name::default, |n| n.span.name.clone()),
                connection_type: c.connection,
                client_span_id: client.map(|n| n.span.span_id),
                server_span_id: server.map(|n| n.span.span_id),
                client_duration_ns,
                server_duration_ns,
                overhead_ns: client_duration_ns
                    .zip(server_duration_ns)
                    .map(|(c, s)| c - s),
                status,
                dimensions: dims,
            }
        })
        .collect()
}
