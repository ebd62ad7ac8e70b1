//! Calls between services and the service graph, following the OpenTelemetry Collector
//! servicegraph connector's semantics.
//!
//! A *call* ([`calls`]) is found in one trace's tree:
//! - a CLIENT span with a SERVER child (including a Zipkin shared SERVER half), or a PRODUCER
//!   span with a CONSUMER child (`messaging_system`), is one paired call;
//! - any other parent→child link that crosses services is an [`ConnectionType::Unpaired`] call
//!   whose client side is the parent if it is a CLIENT/PRODUCER span, else unknown (the
//!   connector would not pair it; the served graph shows it, the connector's view leaves it
//!   out, see [`ServiceGraph::include_unpaired`]);
//! - a CLIENT/PRODUCER span that nothing answered (no SERVER, CONSUMER or CLIENT child — a
//!   CLIENT child means a mesh proxy carried the call on — and no cross-service child) calls an
//!   uninstrumented peer: a database named by `db.name`/`db.namespace` (`database`), else a
//!   virtual node named by the first of [`GraphConfig::peer_attributes`] present, else
//!   `unknown` (`virtual_node`);
//! - a SERVER/CONSUMER root span (no parent ID) was called by the virtual client `user`.
//!
//! Each call becomes one `edges` row ([`crate::derive::EdgeRow`]), stored by the server. The
//! service graph of any set of rows, whether just derived or read back from storage, is one
//! [`ServiceGraph`]: it aggregates rows by (client, server, connection type, failed, virtual
//! side, extra dimensions) with request counts, client/server latency sums (the side that is
//! virtual contributes 0, as the connector does since its fix of issue #32689) and a latency
//! sketch. The golden-pair tests and the query layer behind `/api/v1/graph` and
//! `/api/dependencies` both aggregate through it.

use std::collections::BTreeMap;

use meshtrace_model::sketch::Sketch;
use meshtrace_model::{find_attribute, SpanKind};
use serde::{Deserialize, Serialize};

use crate::span::{Name, SlimSpan};
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
    /// A parent→child link across services that is not a client/server (or producer/consumer)
    /// pair; the connector leaves it out.
    Unpaired,
}

impl ConnectionType {
    /// Every connection type, in order.
    pub const ALL: [ConnectionType; 5] = [
        ConnectionType::Direct,
        ConnectionType::VirtualNode,
        ConnectionType::MessagingSystem,
        ConnectionType::Database,
        ConnectionType::Unpaired,
    ];

    /// The connector's `connection_type` label value.
    pub fn label(self) -> &'static str {
        match self {
            ConnectionType::Direct => "",
            other => other.as_str(),
        }
    }

    /// The name in the `edges` table and the APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Direct => "direct",
            ConnectionType::VirtualNode => "virtual_node",
            ConnectionType::MessagingSystem => "messaging_system",
            ConnectionType::Database => "database",
            ConnectionType::Unpaired => "unpaired",
        }
    }

    /// The connection type named `s` (see [`ConnectionType::as_str`]).
    pub fn parse(s: &str) -> Option<ConnectionType> {
        ConnectionType::ALL.into_iter().find(|c| c.as_str() == s)
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
}

/// Service-graph settings (defaults follow the connector, plus the peer keys named in the issue).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphConfig {
    /// Attributes naming an uninstrumented peer, in priority order.
    pub peer_attributes: Vec<String>,
    /// Attributes naming a database a client span talks to.
    pub database_name_attributes: Vec<String>,
    /// Extra dimensions: copied as `client_<key>` / `server_<key>` from the side carrying it
    /// into each `edges` row; the served graph splits edges by them.
    pub dimensions: Vec<String>,
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
            };
            Some(call)
        } else if caller != callee {
            let client = is_caller_kind(parent.span.kind).then_some(p);
            Some(Call {
                client,
                server: Some(i),
                caller: caller.clone(),
                callee: callee.clone(),
                connection: ConnectionType::Unpaired,
                virtual_side: None,
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
    }
}

/// The extra dimensions of one side of a call: `<prefix>_<key>` for each configured key found
/// among the span's attributes, then its resource's.
pub fn dimensions(
    span: &SlimSpan,
    prefix: &str,
    config: &GraphConfig,
    out: &mut BTreeMap<String, String>,
) {
    for key in &config.dimensions {
        let found = span
            .attribute(key)
            .or_else(|| find_attribute(&span.resource_attributes, key));
        if let Some(v) = found {
            out.insert(format!("{prefix}_{key}"), v.to_display());
        }
    }
}

/// What the service graph reads of one call (an `edges` row, derived or read back).
#[derive(Clone, Copy, Debug)]
pub struct EdgeCall<'a> {
    pub caller: &'a str,
    pub callee: &'a str,
    pub connection_type: ConnectionType,
    /// Either side failed.
    pub failed: bool,
    /// The client side's duration, when the client side was seen.
    pub client_ns: Option<i64>,
    /// The server side's duration, when the server side was seen.
    pub server_ns: Option<i64>,
    /// Extra dimensions (`client_<key>`, `server_<key>`), if any.
    pub dimensions: Option<&'a BTreeMap<String, String>>,
}

impl EdgeCall<'_> {
    /// Which side of a `virtual_node` call is virtual: the one that was not seen.
    pub fn virtual_side(&self) -> Option<VirtualSide> {
        if self.connection_type != ConnectionType::VirtualNode {
            return None;
        }
        match (self.client_ns, self.server_ns) {
            (None, _) => Some(VirtualSide::Client),
            (_, None) => Some(VirtualSide::Server),
            _ => None,
        }
    }
}

/// The identity of one service-graph edge (the connector's metric labels).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EdgeKey {
    pub client: String,
    pub server: String,
    pub connection_type: ConnectionType,
    pub failed: bool,
    /// Which side is virtual, when [`ServiceGraph::virtual_node_label`] is set.
    pub virtual_node: Option<VirtualSide>,
    /// `client_<key>` / `server_<key>` extra dimensions.
    pub dimensions: BTreeMap<String, String>,
}

/// Counts, latency sums and the latency sketch of one edge.
#[derive(Clone, Debug, Default)]
pub struct EdgeStats {
    pub requests: u64,
    /// Calls whose client side was seen (instrumented).
    pub client_sides: u64,
    /// Calls whose server side was seen (instrumented).
    pub server_sides: u64,
    pub client_latency_sum_ns: i64,
    pub server_latency_sum_ns: i64,
    /// The call's duration as its client saw it, else as its server did.
    pub latency: Sketch,
}

impl EdgeStats {
    /// Adds another edge's counts and sketch.
    pub fn merge(&mut self, other: &EdgeStats) {
        self.requests += other.requests;
        self.client_sides += other.client_sides;
        self.server_sides += other.server_sides;
        self.client_latency_sum_ns += other.client_latency_sum_ns;
        self.server_latency_sum_ns += other.server_latency_sum_ns;
        self.latency.merge(&other.latency);
    }
}

/// A service graph aggregated over any number of `edges` rows.
#[derive(Clone, Debug, Default)]
pub struct ServiceGraph {
    /// Whether edge keys say which side is virtual (the connector's `VirtualNodeExtraLabel`).
    pub virtual_node_label: bool,
    /// Whether [`ConnectionType::Unpaired`] calls are counted (the served graph counts them,
    /// the connector does not).
    pub include_unpaired: bool,
    pub edges: BTreeMap<EdgeKey, EdgeStats>,
}

impl ServiceGraph {
    /// The graph the query APIs serve: unpaired calls counted, virtual sides in the key.
    pub fn served() -> ServiceGraph {
        ServiceGraph {
            virtual_node_label: true,
            include_unpaired: true,
            edges: BTreeMap::new(),
        }
    }

    /// The OpenTelemetry servicegraph connector's view, with its `virtual_node` label or not.
    pub fn connector(virtual_node_label: bool) -> ServiceGraph {
        ServiceGraph {
            virtual_node_label,
            include_unpaired: false,
            edges: BTreeMap::new(),
        }
    }

    /// Adds the counts and sketches of another graph built with the same settings.
    pub fn merge(&mut self, other: &ServiceGraph) {
        for (key, stats) in &other.edges {
            match self.edges.get_mut(key) {
                Some(s) => s.merge(stats),
                None => {
                    self.edges.insert(key.clone(), stats.clone());
                }
            }
        }
    }

    /// Counts one call.
    pub fn add(&mut self, call: EdgeCall<'_>) {
        if call.connection_type == ConnectionType::Unpaired && !self.include_unpaired {
            return;
        }
        let key = EdgeKey {
            client: call.caller.to_string(),
            server: call.callee.to_string(),
            connection_type: call.connection_type,
            failed: call.failed,
            virtual_node: call.virtual_side().filter(|_| self.virtual_node_label),
            dimensions: call.dimensions.cloned().unwrap_or_default(),
        };
        let stats = self.edges.entry(key).or_default();
        stats.requests += 1;
        stats.client_sides += u64::from(call.client_ns.is_some());
        stats.server_sides += u64::from(call.server_ns.is_some());
        stats.client_latency_sum_ns += call.client_ns.unwrap_or(0);
        stats.server_latency_sum_ns += call.server_ns.unwrap_or(0);
        if let Some(d) = call.client_ns.or(call.server_ns) {
            stats.latency.add(d);
        }
    }
}
