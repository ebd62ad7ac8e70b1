//! The service graph of a time window and Jaeger's dependency links, from the derived `edges`
//! and `traces` tables. Stored `edges` rows are counted by
//! [`meshtrace_provenance::ServiceGraph`], the one aggregation the OpenTelemetry connector's
//! golden pairs hold ([`Queries::edges_in_window`]); [`GraphView::build`] then shapes the
//! aggregate into what `/api/v1/graph` serves (nodes with their kind and rates, edges with
//! rates, error rates and latency quantiles) and [`dependency_links`] into what
//! `/api/dependencies` serves.

use std::collections::{BTreeMap, BTreeSet};

use meshtrace_provenance::graph::VIRTUAL_USER;
use meshtrace_provenance::{
    ConnectionType, EdgeCall, EdgeKey, EdgeStats, ServiceGraph, VirtualSide,
};
use meshtrace_storage::touches::{minute_of, MINUTE_NS};
use meshtrace_storage::RecordBatch;
use serde::Serialize;
use utoipa::ToSchema;

use crate::columns::{opt_int, Columns};
use crate::error::QueryError;
pub use crate::graph_rollup::RootCount;
use crate::graph_rollup::{
    ranges_to_read, route, whole_minutes, GraphPart, MAX_ROLLUP_MINUTES, REST, WARM_WINDOW,
};
use crate::window::TimeRange;
use crate::Queries;
use meshtrace_model::time::rfc3339;

/// Rows of `<table>_versions` started within `[$1, $2)`, only each trace's latest version
/// among them. Filtering by time before the de-duplication lets Parquet statistics skip
/// segments. The latest versions are found by grouping the window's (trace, version) pairs
/// and joining the rows to them, not with a window function: a window function holds every
/// row of the window, all columns, in memory at once (several GB for a few minutes of a
/// loaded mesh), where the grouping holds one small entry a trace.
fn latest_in_window(table: &str, columns: &str) -> String {
    format!(
        "(SELECT {columns} FROM (SELECT trace_id AS id__, max(version) AS latest__ \
         FROM {table}_versions WHERE start_time >= $1 AND start_time < $2 GROUP BY trace_id) \
         JOIN {table}_versions ON trace_id = id__ AND version = latest__ \
         WHERE start_time >= $1 AND start_time < $2)"
    )
}

const EDGE_COLUMNS: &str = "class, caller_service, callee_service, connection_type, status, \
                            client_duration_ns, server_duration_ns, dimensions";

impl Queries {
    /// The service graph of the calls of traces started in `window` (of one class, or all): every
    /// stored call of each trace's latest derivation, counted by [`ServiceGraph::served`].
    pub async fn edges_in_window(
        &self,
        window: TimeRange,
        class: Option<&str>,
    ) -> Result<ServiceGraph, QueryError> {
        Ok(self.graph_part(window).await?.graph(class))
    }

    /// How many traces started in `window` each (root service, class) is the entry of.
    pub async fn roots_in_window(&self, window: TimeRange) -> Result<Vec<RootCount>, QueryError> {
        Ok(self.graph_part(window).await?.roots())
    }

    /// The service graph of `window` as `/api/v1/graph` serves it.
    pub async fn service_graph(
        &self,
        window: TimeRange,
        class: Option<&str>,
    ) -> Result<GraphView, QueryError> {
        let part = self.graph_part(window).await?;
        Ok(GraphView::build(
            &part.graph(class),
            &part.roots(),
            window,
            class,
        ))
    }

    /// Jaeger's dependency links of `window` (`/api/dependencies`), rounded out to whole
    /// minutes: as Jaeger's dependency stores count whole periods, so every answer comes from
    /// per-minute rollups and costs the minutes of the window, not its calls.
    pub async fn dependencies(&self, window: TimeRange) -> Result<Vec<DependencyLink>, QueryError> {
        let start = minute_of(window.start_ns);
        let last = minute_of(window.end_ns.saturating_sub(1));
        let end = last.checked_add(MINUTE_NS).unwrap_or(i64::MAX);
        let whole = TimeRange::new(start, end.max(window.end_ns))?;
        Ok(dependency_links(&self.graph_part(whole).await?.graph(None)))
    }

    /// What the `edges` and `traces` rows of `window` count: whole minutes from their
    /// rollups where still valid, the rest read (see [`crate::graph_rollup`]).
    pub async fn graph_part(&self, window: TimeRange) -> Result<GraphPart, QueryError> {
        let (first, n) = whole_minutes(window.start_ns, window.end_ns);
        let none = BTreeSet::new();
        if !self.graphs.enabled() || n > MAX_ROLLUP_MINUTES {
            let mut parts = self.read_graph(window, &none).await?;
            return Ok(parts.remove(&REST).unwrap_or_default());
        }
        // Before the lookups and the reads: a change after it makes what is read stale.
        let epoch = self.store.derived_epoch();
        let minutes = (0..n).map(|i| first + i * MINUTE_NS);
        let (found, missing) = self
            .graphs
            .lookup(minutes, |m, e| self.store.derived_changed_since(m, e));
        let mut total = GraphPart::default();
        for part in &found {
            total.merge(part);
        }
        let keep: BTreeSet<i64> = missing.iter().copied().collect();
        for (a, b) in ranges_to_read(window.start_ns, window.end_ns, first, n, &missing) {
            let mut parts = self.read_graph(TimeRange::new(a, b)?, &keep).await?;
            for m in keep.range(a..b) {
                let part = parts.remove(m).unwrap_or_default();
                total.merge(&part);
                self.graphs.insert(*m, epoch, part);
            }
            if let Some(rest) = parts.remove(&REST) {
                total.merge(&rest);
            }
        }
        Ok(total)
    }

    /// How many minutes of the service graph are rolled up in memory.
    pub fn graph_rollup_minutes(&self) -> usize {
        self.graphs.len()
    }

    /// Keeps the rollups of the settled recent past ready (a background task calls it).
    pub async fn warm_graphs(&self, now_ns: i64) -> Result<(), QueryError> {
        // No more minutes than the cache holds, else each pass would evict what it read.
        let window = i64::try_from(WARM_WINDOW.as_nanos())
            .unwrap_or(i64::MAX)
            .min(self.graphs.capacity_minutes().saturating_mul(MINUTE_NS));
        // The last two minutes still change with every completed trace.
        let end = minute_of(now_ns) - 2 * MINUTE_NS;
        let start = minute_of(end.saturating_sub(window));
        if self.graphs.enabled() && start < end {
            self.graph_part(TimeRange::new(start, end)?).await?;
        }
        Ok(())
    }

    /// The counts of the `edges` and `traces` rows of `window` (each trace's latest
    /// derivation in it), by minute for the minutes in `keep`, the rest under [`REST`].
    async fn read_graph(
        &self,
        window: TimeRange,
        keep: &BTreeSet<i64>,
    ) -> Result<BTreeMap<i64, GraphPart>, QueryError> {
        let mut parts = BTreeMap::new();
        let timeout = self.config.sql_timeout;
        let edges = format!(
            "SELECT CAST(start_time AS BIGINT) AS start_ns, {EDGE_COLUMNS} FROM {}",
            latest_in_window("edges", &format!("start_time, {EDGE_COLUMNS}"))
        );
        self.store
            .sql_each(&edges, window.params().to_vec(), timeout, |batch| {
                add_edges(&mut parts, keep, &batch)?;
                Ok::<_, QueryError>(true)
            })
            .await?;
        let roots = format!(
            "SELECT CAST(start_time AS BIGINT) AS start_ns, root_service, class FROM {}",
            latest_in_window("traces", "start_time, root_service, class")
        );
        self.store
            .sql_each(&roots, window.params().to_vec(), timeout, |batch| {
                add_roots(&mut parts, keep, &batch)?;
                Ok::<_, QueryError>(true)
            })
            .await?;
        Ok(parts)
    }
}

/// Counts the traces of one batch of `traces` rows by root service and class.
fn add_roots(
    parts: &mut BTreeMap<i64, GraphPart>,
    keep: &BTreeSet<i64>,
    batch: &RecordBatch,
) -> Result<(), QueryError> {
    let c = Columns {
        table: "traces",
        batch,
    };
    let (start, service, class) = (
        c.ints("start_ns")?,
        c.strings("root_service")?,
        c.strings("class")?,
    );
    for i in 0..batch.num_rows() {
        let part = parts.entry(route(start.value(i), keep)).or_default();
        let key = (service.value(i).to_string(), class.value(i).to_string());
        *part.roots.entry(key).or_default() += 1;
    }
    Ok(())
}

/// Counts the calls of one batch of `edges` rows, by class.
fn add_edges(
    parts: &mut BTreeMap<i64, GraphPart>,
    keep: &BTreeSet<i64>,
    batch: &RecordBatch,
) -> Result<(), QueryError> {
    let c = Columns {
        table: "edges",
        batch,
    };
    let (start, class) = (c.ints("start_ns")?, c.strings("class")?);
    let (caller, callee) = (c.strings("caller_service")?, c.strings("callee_service")?);
    let (connection, status) = (c.strings("connection_type")?, c.strings("status")?);
    let (client, server) = (c.ints("client_duration_ns")?, c.ints("server_duration_ns")?);
    let dimensions = c.string_maps("dimensions")?;
    for (i, dims) in dimensions.iter().enumerate() {
        let name = connection.value(i);
        let connection_type = ConnectionType::parse(name).ok_or_else(|| QueryError::Column {
            table: "edges",
            column: "connection_type",
            found: format!("the unknown value {name:?}"),
        })?;
        let part = parts.entry(route(start.value(i), keep)).or_default();
        part.class_graph(class.value(i)).add(EdgeCall {
            caller: caller.value(i),
            callee: callee.value(i),
            connection_type,
            failed: status.value(i) == "error",
            client_ns: opt_int(&client, i),
            server_ns: opt_int(&server, i),
            dimensions: Some(dims).filter(|d| !d.is_empty()),
        });
    }
    Ok(())
}

/// What kind of thing a graph node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// An instrumented service.
    Service,
    /// The virtual client of traces' entry spans.
    User,
    /// An uninstrumented database named by a client span.
    Database,
    /// An uninstrumented peer named by a client span (or `unknown`).
    Peer,
}

/// One node of the service graph.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct GraphNode {
    pub id: String,
    /// Requests per second it handles: requests received, or traces it is the entry of,
    /// whichever is larger.
    pub rate: f64,
    pub requests_in: u64,
    pub requests_out: u64,
    pub traces_rooted: u64,
    /// Failed requests received over requests received.
    pub error_rate: f64,
    /// Not instrumented: only named by the other side of its calls.
    #[serde(rename = "virtual")]
    pub is_virtual: bool,
    pub kind: NodeKind,
}

/// One edge of the service graph: the calls from `caller` to `callee` of one connection type.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct GraphEdge {
    pub caller: String,
    pub callee: String,
    /// `direct`, `virtual_node`, `messaging_system`, `database` or `unpaired`.
    pub connection_type: String,
    pub requests: u64,
    pub errors: u64,
    pub rate_per_s: f64,
    pub error_rate: f64,
    /// Latency quantiles of the calls (client side, else server side), ms.
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The configured extra dimensions of these calls (`client_<key>`, `server_<key>`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
}

/// Traces of one class in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ClassCount {
    pub class: String,
    pub traces: u64,
}

/// The service graph of one class (or all) over a window (`GET /api/v1/graph`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct GraphView {
    /// The class asked for; null for all.
    pub class: Option<String>,
    /// The window, RFC 3339.
    pub start: String,
    pub end: String,
    pub window_s: f64,
    /// Every class with traces in the window, whichever was asked for.
    pub classes: Vec<ClassCount>,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

/// Per-node totals while the view is built.
#[derive(Default)]
struct NodeAcc {
    requests_in: u64,
    requests_out: u64,
    errors_in: u64,
    traces_rooted: u64,
    virtual_node: bool,
    instrumented: bool,
    /// Called as a database (`database`, no server side).
    database: bool,
    /// The virtual client of entry spans.
    user: bool,
}

impl NodeAcc {
    fn kind(&self) -> NodeKind {
        match (
            self.virtual_node && !self.instrumented,
            self.database,
            self.user,
        ) {
            (false, _, _) => NodeKind::Service,
            (true, true, _) => NodeKind::Database,
            (true, false, true) => NodeKind::User,
            (true, false, false) => NodeKind::Peer,
        }
    }
}

/// An edge of the view: the aggregate's keys merged over `failed` and the virtual side.
type ViewKey = (String, String, &'static str, BTreeMap<String, String>);

impl GraphView {
    /// Shapes an aggregated graph and the window's entry counts into the served view.
    pub fn build(
        graph: &ServiceGraph,
        roots: &[RootCount],
        window: TimeRange,
        class: Option<&str>,
    ) -> GraphView {
        let mut merged: BTreeMap<ViewKey, (EdgeStats, u64)> = BTreeMap::new();
        for (key, stats) in &graph.edges {
            let view_key = (
                key.client.clone(),
                key.server.clone(),
                key.connection_type.as_str(),
                key.dimensions.clone(),
            );
            let (sum, errors) = merged.entry(view_key).or_default();
            sum.merge(stats);
            *errors += if key.failed { stats.requests } else { 0 };
        }
        let seconds = window.seconds();
        let mut nodes: BTreeMap<String, NodeAcc> = BTreeMap::new();
        let mut edges = Vec::with_capacity(merged.len());
        for ((caller, callee, connection, dimensions), (stats, errors)) in merged {
            count_ends(&mut nodes, &caller, &callee, connection, &stats, errors);
            let ms = |q: f64| stats.latency.quantile(q).map(|ns| ns / 1e6);
            edges.push(GraphEdge {
                requests: stats.requests,
                errors,
                rate_per_s: stats.requests as f64 / seconds,
                error_rate: errors as f64 / stats.requests.max(1) as f64,
                p50_ms: ms(0.5),
                p90_ms: ms(0.9),
                p99_ms: ms(0.99),
                caller,
                callee,
                connection_type: connection.to_string(),
                dimensions,
            });
        }
        let mut classes: BTreeMap<&str, u64> = BTreeMap::new();
        for r in roots {
            *classes.entry(&r.class).or_default() += r.traces;
            if class.is_none_or(|c| c == r.class) {
                let node = nodes.entry(r.root_service.clone()).or_default();
                node.traces_rooted += r.traces;
                node.instrumented = true;
            }
        }
        GraphView {
            class: class.map(str::to_string),
            start: rfc3339(window.start_ns),
            end: rfc3339(window.end_ns),
            window_s: seconds,
            classes: classes
                .into_iter()
                .map(|(class, traces)| ClassCount {
                    class: class.to_string(),
                    traces,
                })
                .collect(),
            nodes: nodes
                .into_iter()
                .map(|(id, n)| GraphNode {
                    id,
                    rate: n.requests_in.max(n.traces_rooted) as f64 / seconds,
                    requests_in: n.requests_in,
                    requests_out: n.requests_out,
                    traces_rooted: n.traces_rooted,
                    error_rate: n.errors_in as f64 / n.requests_in.max(1) as f64,
                    is_virtual: n.virtual_node && !n.instrumented,
                    kind: n.kind(),
                })
                .collect(),
            edges,
        }
    }
}

/// Counts one edge at both of its ends, noting which end is virtual.
fn count_ends(
    nodes: &mut BTreeMap<String, NodeAcc>,
    caller: &str,
    callee: &str,
    connection: &str,
    stats: &EdgeStats,
    errors: u64,
) {
    let virtual_node = connection == ConnectionType::VirtualNode.as_str();
    let database = connection == ConnectionType::Database.as_str();
    let caller_virtual = virtual_node && stats.client_sides == 0;
    let callee_virtual = (virtual_node || database) && stats.server_sides == 0;
    let c = nodes.entry(caller.to_string()).or_default();
    c.requests_out += stats.requests;
    c.virtual_node |= caller_virtual;
    c.instrumented |= !caller_virtual;
    c.user |= caller_virtual;
    let s = nodes.entry(callee.to_string()).or_default();
    s.requests_in += stats.requests;
    s.errors_in += errors;
    s.virtual_node |= callee_virtual;
    s.instrumented |= !callee_virtual;
    s.database |= callee_virtual && database;
}

/// A Jaeger dependency link: calls from `parent` to `child`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    #[serde(rename = "callCount")]
    pub call_count: u64,
}

/// The graph's caller→callee links with their call counts, calls from the virtual client of
/// entry spans (`user`) left out, as Jaeger's dependencies have no such node.
pub fn dependency_links(graph: &ServiceGraph) -> Vec<DependencyLink> {
    let mut links: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (key, stats) in &graph.edges {
        if is_virtual_client(key) {
            continue;
        }
        *links.entry((&key.client, &key.server)).or_default() += stats.requests;
    }
    links
        .into_iter()
        .map(|((parent, child), call_count)| DependencyLink {
            parent: parent.to_string(),
            child: child.to_string(),
            call_count,
        })
        .collect()
}

fn is_virtual_client(key: &EdgeKey) -> bool {
    key.virtual_node == Some(VirtualSide::Client)
        || (key.connection_type == ConnectionType::VirtualNode && key.client == VIRTUAL_USER)
}

#[cfg(test)]
mod tests {
    use meshtrace_provenance::EdgeCall;

    use super::*;

    fn call<'a>(
        caller: &'a str,
        callee: &'a str,
        connection_type: ConnectionType,
        client_ns: Option<i64>,
        server_ns: Option<i64>,
    ) -> EdgeCall<'a> {
        EdgeCall {
            caller,
            callee,
            connection_type,
            failed: false,
            client_ns,
            server_ns,
            dimensions: None,
        }
    }

    #[test]
    fn nodes_have_kinds_and_rates() {
        let mut g = ServiceGraph::served();
        for i in 0..10 {
            let mut user = call(
                "user",
                "a",
                ConnectionType::VirtualNode,
                None,
                Some(2_000_000),
            );
            user.failed = i == 0;
            g.add(user);
        }
        for _ in 0..20 {
            g.add(call(
                "a",
                "b",
                ConnectionType::Direct,
                Some(3_000_000),
                Some(1_000_000),
            ));
        }
        for _ in 0..5 {
            g.add(call(
                "b",
                "orders-db",
                ConnectionType::Database,
                Some(1_000_000),
                None,
            ));
        }
        for _ in 0..3 {
            let peer = call(
                "b",
                "payments.example.com",
                ConnectionType::VirtualNode,
                Some(1),
                None,
            );
            g.add(peer);
        }
        let roots = [RootCount {
            root_service: "a".into(),
            class: "default".into(),
            traces: 10,
        }];
        let window = TimeRange::new(0, 10_000_000_000).unwrap();
        let v = GraphView::build(&g, &roots, window, None);
        let kind = |id: &str| v.nodes.iter().find(|n| n.id == id).unwrap().kind;
        assert_eq!(
            ["user", "a", "b", "orders-db", "payments.example.com"].map(kind),
            [
                NodeKind::User,
                NodeKind::Service,
                NodeKind::Service,
                NodeKind::Database,
                NodeKind::Peer
            ]
        );
        let a = v.nodes.iter().find(|n| n.id == "a").unwrap();
        assert_eq!((a.is_virtual, a.rate, a.error_rate), (false, 1.0, 0.1));
        let edge = |caller: &str, callee: &str| {
            v.edges
                .iter()
                .find(|e| e.caller == caller && e.callee == callee)
                .unwrap()
        };
        let user = edge("user", "a");
        assert_eq!((user.requests, user.errors, user.error_rate), (10, 1, 0.1));
        assert_eq!(user.p50_ms, Some(2.0));
        assert_eq!(edge("a", "b").rate_per_s, 2.0);
        assert_eq!(
            edge("a", "b").p99_ms,
            Some(3.0),
            "the client side's duration"
        );
        assert_eq!(
            v.classes,
            [ClassCount {
                class: "default".into(),
                traces: 10
            }]
        );
        let links = dependency_links(&g);
        assert!(links.iter().all(|l| l.parent != "user"), "{links:?}");
        assert_eq!(links.len(), 3);
    }
}
