//! Calls between services and the service graph, following the OpenTelemetry Collector
//! servicegraph connector's semantics.
//!
//! A *call* ([`calls`]) is found in one trace's tree:
//! - a CLIENT span with a SERVER child (including a Zipkin shared SERVER half), or a PRODUCER
//!   span with a CONSUMER child (`messaging_system`), is one paired call;
//! - any other parent→child link that crosses services is a call whose client side is the
//!   parent if it is a CLIENT/PRODUCER span, else unknown (used for derived rows only: the
//!   connector would not pair it, so [`ServiceGraph`] skips it);
//! - a CLIENT/PRODUCER span that nothing answered (no SERVER, CONSUMER or CLIENT child — a
//!   CLIENT child means a mesh proxy carried the call on — and no cross-service child) calls an
//!   uninstrumented peer: a database named by `db.name`/`db.namespace` (`database`), else a
//!   virtual node named by the first of [`GraphConfig::peer_attributes`] present, else
//!   `unknown` (`virtual_node`);
//! - a SERVER/CONSUMER root span (no parent ID) was called by the virtual client `user`.
//!
//! [`ServiceGraph`] aggregates calls by (client, server, connection type, failed, virtual side,
//! extra dimensions) with request counts and client/server latency sums; the side that is
//! virtual contributes 0 latency, as the connector does since its fix of issue #32689.
//! [`service_edges`] is the simpler "parent→child service edge" relation of the fixtures README.

use std::collections::{BTreeMap, BTreeSet};

use meshtrace_model::{find_attribute, SpanKind, StatusCode};
use serde::{Deserialize, Serialize};

use crate::slim::Name;
use crate::tree::TraceTree;

/// How a call's two ends were connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionType {
    /// Both sides instrumented (the connector's empty label).
    Direct,
    /// One side is a virtual node (`user` or an uninstrumented peer).
    VirtualNode,
    /// Producer → consumer.
    MessagingSystem,
    /// Client → database named by `db.name`.
    Database,
}

impl ConnectionType {
    /// The connector's `connection_type` label value.
    pub fn label(self) -> &'static str {
        match self {
            ConnectionType::Direct => "",
            ConnectionType::VirtualNode => "virtual_node",
            ConnectionType::MessagingSystem => "messaging_system",
            ConnectionType::Database => "database",
        }
    }
}

/// Which side of a virtual-node call is virtual.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtualSide {
    Client,
    Server,
}

/// One caller→callee call in a trace; service names are shared with the tree's spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The client-side node, if any.
    pub client: Option<usize>,
    /// The server-side node, if any.
    pub server: Option<usize>,
    pub caller: Name,
    pub callee: Name,
    pub connection: ConnectionType,
    pub virtual_side: Option<VirtualSide>,
    /// Whether the connector would pair this call (see the module docs).
    pub graphable: bool,
}

/// Service-graph settings (defaults follow the connector, plus the peer keys named in the issue).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphConfig {
    /// Attributes naming an uninstrumented peer, in priority order.
    pub peer_attributes: Vec<String>,
    /// Attributes naming a database a client span talks to.
    pub database_name_attributes: Vec<String>,
    /// Extra dimensions: copied as `client_<key>` / `server_<key>` from the side carrying it.
    pub dimensions: Vec<String>,
    /// Whether edge keys say which side is virtual (the connector's `VirtualNodeExtraLabel`).
    pub virtual_node_label: bool,
}

impl Default for GraphConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        GraphConfig {
            peer_attributes: s(&[
                "peer.service",
                "db.name",
                "db.system",
                "server.address",
                "net.peer.name",
                "messaging.system",
            ]),
            database_name_attributes: s(&["db.name", "db.namespace"]),
            dimensions: Vec::new(),
            virtual_node_label: false,
        }
    }
}

/// The virtual client of root SERVER/CONSUMER spans.
pub const VIRTUAL_USER: &str = "user";
/// The virtual server when a client span names no peer.
pub const VIRTUAL_UNKNOWN: &str = "unknown";

fn is_paired(parent: SpanKind, child: SpanKind) -> Option<ConnectionType> {
    match (parent, child) {
        (SpanKind::Client, SpanKind::Server) => Some(ConnectionType::Direct),
        (SpanKind::Producer, SpanKind::Consumer) => Some(ConnectionType::MessagingSystem),
        _ => None,
    }
}

fn is_caller_kind(k: SpanKind) -> bool {
    matches!(k, SpanKind::Client | SpanKind::Producer)
}

/// Every call in one trace (see the module docs), in node order.
pub fn calls(tree: &TraceTree, config: &GraphConfig) -> Vec<Call> {
    let mut out = Vec::new();
    let mut answered = vec![false; tree.nodes.len()];
    for (i, n) in tree.nodes.iter().enumerate() {
        let Some(p) = n.parent else { continue };
        let parent = &tree.nodes[p];
        let (caller, callee) = (&parent.span.service_name, &n.span.service_name);
        let call = if let Some(connection) = is_paired(parent.span.kind, n.span.kind) {
            let call = Call {
                client: Some(p),
                server: Some(i),
                caller: caller.clone(),
                callee: callee.clone(),
                connection,
                virtual_side: None,
                graphable: true,
            };
            Some(call)
        } else if caller != callee {
            let client = is_caller_kind(parent.span.kind).then_some(p);
            let connection = ConnectionType::Direct;
            Some(Call {
                client,
                server: Some(i),
                caller: caller.clone(),
                callee: callee.clone(),
                connection,
                virtual_side: None,
                graphable: false,
            })
        } else {
            None
        };
        if call.is_some()
            || matches!(
                n.span.kind,
                SpanKind::Client | SpanKind::Server | SpanKind::Consumer
            )
        {
            answered[p] = true;
        }
        out.extend(call);
    }
    for (i, n) in tree.nodes.iter().enumerate() {
        let span = &n.span;
        if is_caller_kind(span.kind) && !answered[i] {
            out.push(unanswered(tree, i, config));
        } else if matches!(span.kind, SpanKind::Server | SpanKind::Consumer)
            && tree.roots.contains(&i)
        {
            out.push(Call {
                client: None,
                server: Some(i),
                caller: VIRTUAL_USER.into(),
                callee: span.service_name.clone(),
                connection: ConnectionType::VirtualNode,
                virtual_side: Some(VirtualSide::Client),
                graphable: true,
            });
        }
    }
    out
}

fn unanswered(tree: &TraceTree, i: usize, config: &GraphConfig) -> Call {
    let span = &tree.nodes[i].span;
    let find = |keys: &[String]| {
        keys.iter().find_map(|k| {
            span.attribute(k)
                .map(|v| v.to_display())
                .filter(|v| !v.is_empty())
        })
    };
    let (callee, connection, virtual_side) = match find(&config.database_name_attributes) {
        Some(db) => (db.into(), ConnectionType::Database, None),
        None => (
            find(&config.peer_attributes).map_or(VIRTUAL_UNKNOWN.into(), Name::from),
            ConnectionType::VirtualNode,
            Some(VirtualSide::Server),
        ),
    };
    Call {
        client: Some(i),
        server: None,
        caller: span.service_name.clone(),
        callee,
        connection,
        virtual_side,
        graphable: true,
    }
}

/// Distinct (parent service, child service) pairs over parent links, where the two differ.
pub fn service_edges(tree: &TraceTree) -> BTreeSet<(String, String)> {
    tree.nodes
        .iter()
        .filter_map(|n| {
            let p = &tree.nodes[n.parent?];
            (p.span.service_name != n.span.service_name).then(|| {
                (
                    p.span.service_name.to_string(),
                    n.span.service_name.to_string(),
                )
            })
        })
        .collect()
}

/// The identity of one service-graph edge (the connector's metric labels).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EdgeKey {
    pub client: String,
    pub server: String,
    pub connection_type: ConnectionType,
    pub failed: bool,
    /// Which side is virtual, when [`GraphConfig::virtual_node_label`] is set.
    pub virtual_node: Option<VirtualSide>,
    /// `client_<key>` / `server_<key>` extra dimensions.
    pub dimensions: BTreeMap<String, String>,
}

/// Counts and latency sums of one edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EdgeStats {
    pub requests: u64,
    pub client_latency_sum_ns: i64,
    pub server_latency_sum_ns: i64,
}

/// A service graph aggregated over any number of traces.
#[derive(Clone, Debug, Default)]
pub struct ServiceGraph {
    pub config: GraphConfig,
    pub edges: BTreeMap<EdgeKey, EdgeStats>,
}

impl ServiceGraph {
    pub fn new(config: GraphConfig) -> Self {
        ServiceGraph {
            config,
            edges: BTreeMap::new(),
        }
    }

    /// Adds every graphable call of one trace.
    pub fn add_tree(&mut self, tree: &TraceTree) {
        for call in calls(tree, &self.config)
            .into_iter()
            .filter(|c| c.graphable)
        {
            let node = |i: Option<usize>| i.map(|i| &tree.nodes[i]);
            let (client, server) = (node(call.client), node(call.server));
            let failed = [client, server]
                .iter()
                .flatten()
                .any(|n| n.span.status_code == StatusCode::Error);
            let mut dimensions = BTreeMap::new();
            for (prefix, side) in [("client", client), ("server", server)] {
                let Some(n) = side else { continue };
                for key in &self.config.dimensions {
                    if let Some(v) = n
                        .span
                        .attribute(key)
                        .or_else(|| find_attribute(&n.span.resource_attributes, key))
                    {
                        dimensions.insert(format!("{prefix}_{key}"), v.to_display());
                    }
                }
            }
            let key = EdgeKey {
                client: call.caller.to_string(),
                server: call.callee.to_string(),
                connection_type: call.connection,
                failed,
                virtual_node: call.virtual_side.filter(|_| self.config.virtual_node_label),
                dimensions,
            };
            let stats = self.edges.entry(key).or_default();
            stats.requests += 1;
            stats.client_latency_sum_ns += client.map_or(0, |n| n.duration_ns());
            stats.server_latency_sum_ns += server.map_or(0, |n| n.duration_ns());
        }
    }
}

/// The service graph of these traces.
pub fn service_graph(trees: &[TraceTree], config: GraphConfig) -> ServiceGraph {
    let mut g = ServiceGraph::new(config);
    for t in trees {
        g.add_tree(t);
    }
    g
}
