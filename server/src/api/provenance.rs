//! Provenance APIs on the query port, answered from the derived tables (`traces`, `edges`,
//! `critical_path`) and the provenance engine:
//!
//! - `GET /api/dependencies?endTs=&lookback=` (ms): Jaeger's dependency links from `edges`
//!   (calls from the virtual client `user` left out); default the last 24 h;
//! - `GET /api/v1/graph?class=&start=&end=` (RFC 3339 or µs; default the last hour): the
//!   service graph of one class (all classes when omitted): per edge request count, rate, error
//!   rate and latency quantiles (DataFusion `approx_percentile_cont` over the client-side
//!   duration, else the server side), per node the rate it handles (requests received, or
//!   traces it is the entry of, whichever is larger) and whether it is virtual (`user`, or an
//!   uninstrumented peer or database named by a client span);
//! - `GET /api/v1/traces/{id}/provenance`: call tree and critical path of one trace, class and
//!   completeness from its `traces` row, or derived on the fly while the trace is still open;
//! - `GET /api/v1/traces/classes?traceID=..`: the rule-assigned class of many traces at once
//!   (the search result list);
//! - `GET /api/v1/classes` (`?effective=true`: with the configuration rules), `PUT
//!   /api/v1/classes` (replaces the catalog rules), `GET /api/v1/classes/mapping`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_model::TraceId;
use meshtrace_provenance::{build_tree, critical_path, ClassRule, TraceTree};
use meshtrace_storage::ScalarValue;
use serde_json::{json, Map, Value};

use super::jaeger::query_pairs;
use super::jaeger_json::envelope;
use super::params::{parse_rfc3339, parse_trace_id};
use super::ApiState;

/// Most class rules accepted by a PUT.
const MAX_RULES: usize = 1000;
/// Longest value of a rule field.
const MAX_FIELD_BYTES: usize = 256;

fn error(status: StatusCode, msg: impl AsRef<str>) -> Response {
    (status, Json(json!({"error": msg.as_ref()}))).into_response()
}

fn bad_request(msg: impl AsRef<str>) -> Response {
    error(StatusCode::BAD_REQUEST, msg)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// The rows of a derived table whose `start_time` is within `[start, end)`, keeping per trace
/// only its latest version among them. Filtering `<table>_versions` by time before the
/// de-duplication (the `<table>` view does it after) lets Parquet statistics skip segments.
fn latest_in_window(table: &str, start_ns: i64, end_ns: i64) -> String {
    format!(
        "(SELECT * FROM (SELECT *, max(version) OVER (PARTITION BY trace_id) AS latest__ \
         FROM {table}_versions WHERE start_time >= to_timestamp_nanos({start_ns}) \
         AND start_time < to_timestamp_nanos({end_ns})) WHERE version = latest__)"
    )
}

/// A failed request: status and message.
type Failure = (StatusCode, String);

fn respond(f: Failure) -> Response {
    error(f.0, f.1)
}

/// Runs SQL on the store and returns its rows as JSON objects.
async fn rows(state: &ApiState, sql: &str) -> Result<Vec<Map<String, Value>>, Failure> {
    rows_with(state, sql, Vec::new()).await
}

/// [`rows`] with values bound to `$1`, `$2`, ... (request values never go into SQL text).
async fn rows_with(
    state: &ApiState,
    sql: &str,
    params: Vec<ScalarValue>,
) -> Result<Vec<Map<String, Value>>, Failure> {
    let max = state.query.sql_max_rows;
    let batches = state
        .store
        .sql_with_params(sql, params, max, state.query.sql_timeout)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, sql, "provenance query failed");
            let status = StatusCode::from_u16(e.code().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, e.to_string())
        })?;
    let body =
        super::sql::render(&batches, max).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let columns: Vec<String> = body["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|r| {
            let values = r.as_array().cloned().unwrap_or_default();
            columns.iter().cloned().zip(values).collect()
        })
        .collect())
}

fn num(row: &Map<String, Value>, key: &str) -> f64 {
    row.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn text<'a>(row: &'a Map<String, Value>, key: &str) -> &'a str {
    row.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `GET /api/dependencies?endTs=&lookback=`.
pub async fn dependencies(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(&raw);
    let ms = |key: &str, default: i64| -> Result<i64, String> {
        match param(&pairs, key) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| format!("malformed parameter '{key}': {v:?}")),
        }
    };
    let (end, lookback) = match (
        ms("endTs", now_ns() / 1_000_000),
        ms("lookback", 24 * 3600 * 1000),
    ) {
        (Ok(e), Ok(l)) => (e, l),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let (start_ns, end_ns) = (
        end.saturating_sub(lookback).saturating_mul(1_000_000),
        end.saturating_add(1).saturating_mul(1_000_000),
    );
    let sql = format!(
        "SELECT caller_service, callee_service, count(*) AS calls FROM {} \
         WHERE NOT (connection_type = 'virtual_node' AND client_span_id IS NULL) \
         GROUP BY caller_service, callee_service ORDER BY caller_service, callee_service",
        latest_in_window("edges", start_ns, end_ns)
    );
    let started = Instant::now();
    let result = rows(&state, &sql).await;
    state.observe(started);
    let links: Vec<Value> = match result {
        Ok(r) => r
            .iter()
            .map(|row| {
                json!({"parent": text(row, "caller_service"), "child": text(row, "callee_service"),
                       "callCount": num(row, "calls") as u64})
            })
            .collect(),
        Err(f) => return respond(f),
    };
    let n = links.len();
    Json(envelope(json!(links), n)).into_response()
}

/// Parses a time parameter: RFC 3339, or microseconds since the epoch.
fn time_param(pairs: &[(String, String)], key: &str) -> Result<Option<i64>, String> {
    match param(pairs, key) {
        None => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(us) => Ok(Some(us.saturating_mul(1000))),
            Err(_) => parse_rfc3339(v)
                .map(Some)
                .map_err(|e| format!("malformed parameter '{key}': {e}")),
        },
    }
}

/// Per-node totals of the graph.
#[derive(Default)]
struct NodeAcc {
    requests_in: f64,
    requests_out: f64,
    errors_in: f64,
    traces_rooted: f64,
    virtual_node: bool,
    instrumented: bool,
    /// Called as a database (`connection_type` `database`, no server side).
    database: bool,
    /// A virtual caller: the `user` client of root spans.
    user: bool,
}

impl NodeAcc {
    /// `service` (instrumented), else what kind of virtual node: `user`, `database` or `peer`
    /// (an uninstrumented peer named by a peer attribute, or `unknown`).
    fn kind(&self) -> &'static str {
        match (
            self.virtual_node && !self.instrumented,
            self.database,
            self.user,
        ) {
            (false, _, _) => "service",
            (true, true, _) => "database",
            (true, false, true) => "user",
            (true, false, false) => "peer",
        }
    }
}

/// `GET /api/v1/graph?class=&start=&end=`.
pub async fn graph(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(&raw);
    let (start, end) = match (time_param(&pairs, "start"), time_param(&pairs, "end")) {
        (Ok(s), Ok(e)) => {
            let end = e.unwrap_or_else(now_ns);
            (s.unwrap_or(end - 3_600_000_000_000), end)
        }
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    if start >= end {
        return bad_request("parameter 'start' must be before 'end'");
    }
    let class = param(&pairs, "class");
    let class_filter = if class.is_some() {
        " WHERE class = $1"
    } else {
        ""
    };
    let params: Vec<ScalarValue> = class
        .map(|c| ScalarValue::Utf8(Some(c.to_string())))
        .into_iter()
        .collect();
    let (edges_in, traces_in) = (
        latest_in_window("edges", start, end),
        latest_in_window("traces", start, end),
    );
    let edges_sql = format!(
        "SELECT caller_service, callee_service, connection_type, count(*) AS requests, \
         sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors, \
         count(client_span_id) AS client_sides, count(server_span_id) AS server_sides, {} \
         FROM {edges_in}{class_filter} \
         GROUP BY caller_service, callee_service, connection_type \
         ORDER BY caller_service, callee_service, connection_type",
        [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
            .map(|(name, q)| format!(
                "approx_percentile_cont(CAST(coalesce(client_duration_ns, server_duration_ns) \
                 AS DOUBLE), {q}) AS {name}"
            ))
            .join(", ")
    );
    let roots_sql = format!(
        "SELECT root_service, class, count(*) AS traces FROM {traces_in} \
         GROUP BY root_service, class"
    );
    let started = Instant::now();
    let (edges, roots) = match (
        rows_with(&state, &edges_sql, params).await,
        rows(&state, &roots_sql).await,
    ) {
        (Ok(e), Ok(r)) => (e, r),
        (Err(f), _) | (_, Err(f)) => return respond(f),
    };
    state.observe(started);
    let seconds = (end - start) as f64 / 1e9;
    Json(graph_body(class, start, end, seconds, &edges, &roots)).into_response()
}

fn graph_body(
    class: Option<&str>,
    start: i64,
    end: i64,
    seconds: f64,
    edges: &[Map<String, Value>],
    roots: &[Map<String, Value>],
) -> Value {
    let mut nodes: BTreeMap<String, NodeAcc> = BTreeMap::new();
    let mut edge_list = Vec::new();
    for e in edges {
        let (caller, callee, conn) = (
            text(e, "caller_service"),
            text(e, "callee_service"),
            text(e, "connection_type"),
        );
        let (requests, errors) = (num(e, "requests"), num(e, "errors"));
        let caller_virtual = conn == "virtual_node" && num(e, "client_sides") == 0.0;
        let callee_virtual =
            matches!(conn, "virtual_node" | "database") && num(e, "server_sides") == 0.0;
        let c = nodes.entry(caller.to_string()).or_default();
        c.requests_out += requests;
        c.virtual_node |= caller_virtual;
        c.instrumented |= !caller_virtual;
        c.user |= caller_virtual;
        let s = nodes.entry(callee.to_string()).or_default();
        s.requests_in += requests;
        s.errors_in += errors;
        s.virtual_node |= callee_virtual;
        s.instrumented |= !callee_virtual;
        s.database |= callee_virtual && conn == "database";
        let ms = |k: &str| e.get(k).and_then(Value::as_f64).map(|ns| ns / 1e6);
        edge_list.push(json!({
            "caller": caller, "callee": callee, "connection_type": conn,
            "requests": requests as u64, "errors": errors as u64,
            "rate_per_s": requests / seconds, "error_rate": errors / requests.max(1.0),
            "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"),
        }));
    }
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for r in roots {
        let n = num(r, "traces");
        *classes.entry(text(r, "class").to_string()).or_default() += n as u64;
        if class.is_none_or(|c| c == text(r, "class")) {
            let node = nodes
                .entry(text(r, "root_service").to_string())
                .or_default();
            node.traces_rooted += n;
            node.instrumented = true;
        }
    }
    let node_list: Vec<Value> = nodes
        .iter()
        .map(|(id, n)| {
            json!({
                "id": id, "rate": n.requests_in.max(n.traces_rooted) / seconds,
                "requests_in": n.requests_in as u64, "requests_out": n.requests_out as u64,
                "traces_rooted": n.traces_rooted as u64,
                "error_rate": n.errors_in / n.requests_in.max(1.0),
                "virtual": n.virtual_node && !n.instrumented,
                "kind": n.kind(),
            })
        })
        .collect();
    let rfc = |ns: i64| chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339();
    json!({
        "class": class, "start": rfc(start), "end": rfc(end), "window_s": seconds,
        "classes": classes.iter().map(|(c, n)| json!({"class": c, "traces": n})).collect::<Vec<_>>(),
        "nodes": node_list, "edges": edge_list,
    })
}

/// The call tree as nested nodes: the entry span's subtree, and the other tops (extra roots,
/// orphans) apart.
fn nested_tree(tree: &TraceTree) -> (Value, Vec<Value>) {
    let order = tree.preorder();
    let mut built: Vec<Option<Value>> = vec![None; tree.nodes.len()];
    // Reverse pre-order: every child is built before its parent.
    for &i in order.iter().rev() {
        let n = &tree.nodes[i];
        let children: Vec<Value> = tree
            .children(i)
            .iter()
            .filter_map(|&c| built[c].take())
            .collect();
        built[i] = Some(json!({
            "service": n.span.service_name, "operation": n.span.name,
            "span_id": n.span.span_id_hex(), "kind": n.span.kind.as_str(),
            "start_us": n.start_ns / 1000, "duration_us": n.duration_ns() / 1000,
            "error": n.span.status_code == meshtrace_model::StatusCode::Error,
            "children": children,
        }));
    }
    let primary = tree.primary_root();
    let mut others = Vec::new();
    let mut main = Value::Null;
    for top in tree.tops() {
        let v = built[top].take().unwrap_or(Value::Null);
        if Some(top) == primary {
            main = v;
        } else {
            others.push(v);
        }
    }
    (main, others)
}

/// The critical path, earliest section first, each with its span's total self time on it.
fn critical_path_json(tree: &TraceTree) -> Vec<Value> {
    let mut sections = critical_path(tree);
    let mut self_ns: BTreeMap<usize, i64> = BTreeMap::new();
    for s in &sections {
        *self_ns.entry(s.node).or_default() += s.len_ns();
    }
    sections.sort_by_key(|s| s.start_ns);
    sections
        .iter()
        .map(|s| {
            let span = &tree.nodes[s.node].span;
            json!({
                "span_id": span.span_id_hex(), "service": span.service_name,
                "operation": span.name, "start_us": s.start_ns / 1000, "end_us": s.end_ns / 1000,
                "self_time_us": self_ns.get(&s.node).copied().unwrap_or_default() / 1000,
            })
        })
        .collect()
}

/// `GET /api/v1/traces/{id}/provenance`.
pub async fn trace_provenance(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let started = Instant::now();
    let trace_id = match parse_trace_id(&id) {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let spans = match state.store.trace(trace_id).await {
        Ok(s) if s.is_empty() => return error(StatusCode::NOT_FOUND, "trace not found"),
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let hex_id = hex::encode(trace_id);
    let sql = "SELECT class, complete, completion, version FROM traces_versions \
               WHERE trace_id = $1 ORDER BY version DESC LIMIT 1";
    let id_param = ScalarValue::FixedSizeBinary(16, Some(trace_id.to_vec()));
    let derived = match rows_with(&state, sql, vec![id_param]).await {
        Ok(r) => r.into_iter().next(),
        Err(f) => return respond(f),
    };
    let (class, complete, completion) = match &derived {
        Some(row) => (
            text(row, "class").to_string(),
            row.get("complete")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            Value::from(text(row, "completion")),
        ),
        None => (
            state.provenance.derive_open(&spans).trace.class.to_string(),
            false,
            Value::Null,
        ),
    };
    let tree = build_tree(&spans);
    let (main, others) = nested_tree(&tree);
    let body = json!({
        "trace_id": hex_id, "class": class, "complete": complete,
        "derived": derived.is_some(), "completion": completion,
        "span_count": spans.len(), "counters": tree.counters,
        "tree": main, "detached": others, "critical_path": critical_path_json(&tree),
    });
    state.observe(started);
    Json(body).into_response()
}

/// Most trace IDs one `GET /api/v1/traces/classes` may ask for.
const MAX_CLASS_LOOKUP: usize = 1000;
/// Of those, most traces without a `traces` row whose class is derived on the fly.
const MAX_OPEN_DERIVE: usize = 100;

/// `GET /api/v1/traces/classes?traceID=..&traceID=..`: the class of each trace as the rules
/// assigned it (its latest `traces` row; derived on the fly while the trace is still open), so
/// a search result list can show it. Unknown IDs are left out of the answer.
pub async fn trace_classes(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let started = Instant::now();
    let pairs = query_pairs(&raw);
    let mut ids = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "traceID") {
        match parse_trace_id(v) {
            Ok(id) if !ids.contains(&id) => ids.push(id),
            Ok(_) => {}
            Err(e) => return bad_request(format!("traceID: {e}")),
        }
    }
    if ids.len() > MAX_CLASS_LOOKUP {
        return bad_request(format!("at most {MAX_CLASS_LOOKUP} traceID values"));
    }
    let mut out = Map::new();
    if !ids.is_empty() {
        let holders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT trace_id, class, complete, version FROM traces_versions \
             WHERE trace_id IN ({}) ORDER BY version",
            holders.join(", ")
        );
        let params = ids
            .iter()
            .map(|id| ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))
            .collect();
        // Ordered by version: a later row of the same trace replaces the earlier one.
        let rows = match rows_with(&state, &sql, params).await {
            Ok(r) => r,
            Err(f) => return respond(f),
        };
        for row in rows {
            let id = text(&row, "trace_id").to_string();
            let complete = row.get("complete").and_then(Value::as_bool);
            let class = text(&row, "class");
            out.insert(
                id,
                json!({"class": class, "complete": complete, "derived": true}),
            );
        }
    }
    // One lookup for all of them: each lookup visits every segment's footer.
    let open: BTreeSet<TraceId> = ids
        .iter()
        .filter(|id| !out.contains_key(&hex::encode(id)))
        .take(MAX_OPEN_DERIVE)
        .copied()
        .collect();
    if !open.is_empty() {
        match state.store.traces(&open).await {
            Ok(found) => {
                for (id, spans) in found {
                    let class = state.provenance.derive_open(&spans).trace.class;
                    let entry = json!({"class": class, "complete": false, "derived": false});
                    out.insert(hex::encode(id), entry);
                }
            }
            Err(e) => tracing::warn!(error = %e, traces = open.len(), "could not read open traces"),
        }
    }
    state.observe(started);
    Json(json!({ "classes": out })).into_response()
}

/// `GET /api/v1/classes`: the catalog rules; with `effective=true` every rule in the order
/// they apply, with its `source`.
pub async fn get_classes(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(&raw);
    if param(&pairs, "effective").is_some_and(|v| v == "true" || v == "1") {
        let rules: Vec<Value> = state
            .provenance
            .effective_rules()
            .into_iter()
            .map(|(rule, source)| {
                let mut v = json!(rule);
                v["source"] = json!(source);
                v
            })
            .collect();
        return Json(rules).into_response();
    }
    Json(state.provenance.catalog_rules()).into_response()
}

/// Checks one optional rule field.
fn check_field(at: &str, name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some("") => Err(format!("{at}.{name}: must not be empty when set")),
        Some(v) if v.len() > MAX_FIELD_BYTES => {
            Err(format!("{at}.{name}: longer than {MAX_FIELD_BYTES} bytes"))
        }
        _ => Ok(()),
    }
}

/// Parses and validates the body of `PUT /api/v1/classes`; errors name the field.
pub fn validate_rules(body: &[u8]) -> Result<Vec<ClassRule>, String> {
    let list: Vec<Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(list)) => list,
        Ok(_) => return Err("body: must be a JSON list of rules".into()),
        Err(e) => return Err(format!("body: not valid JSON: {e}")),
    };
    if list.len() > MAX_RULES {
        return Err(format!("body: more than {MAX_RULES} rules"));
    }
    let mut rules = Vec::with_capacity(list.len());
    for (i, v) in list.into_iter().enumerate() {
        let at = format!("rules[{i}]");
        if !v.is_object() {
            return Err(format!("{at}: must be an object"));
        }
        let rule: ClassRule = serde_json::from_value(v).map_err(|e| format!("{at}: {e}"))?;
        if rule.class.trim().is_empty() {
            return Err(format!("{at}.class: is required and must not be empty"));
        }
        check_field(&at, "class", Some(&rule.class))?;
        check_field(&at, "service", rule.service.as_deref())?;
        check_field(&at, "route_prefix", rule.route_prefix.as_deref())?;
        check_field(&at, "operation", rule.operation.as_deref())?;
        if let Some((k, _)) = &rule.attribute {
            check_field(&at, "attribute", Some(k.as_str()))?;
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// `PUT /api/v1/classes`: replaces the catalog rules with the JSON list in the body.
pub async fn put_classes(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let rules = match validate_rules(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    match state.provenance.set_catalog_rules(rules).await {
        Ok(()) => Json(state.provenance.catalog_rules()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/classes/mapping`: the learned (caller, callee, operation) → class shares.
pub async fn class_mapping(State(state): State<ApiState>) -> Response {
    Json(state.provenance.mapping()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_validation_names_the_field() {
        let ok = validate_rules(br#"[{"class": "checkout", "service": "frontend"}]"#).unwrap();
        assert_eq!(ok[0].service.as_deref(), Some("frontend"));
        let cases: [(&[u8], &str); 6] = [
            (br#"{"class": "x"}"#, "body"),
            (br#"[{"service": "a"}]"#, "rules[0].class"),
            (
                br#"[{"class": "a"}, {"class": "b", "servce": "x"}]"#,
                "rules[1]: unknown field `servce`",
            ),
            (
                br#"[{"class": "a", "route_prefix": ""}]"#,
                "rules[0].route_prefix",
            ),
            (br#"[3]"#, "rules[0]: must be an object"),
            (br#"[{"class": 5}]"#, "rules[0]: invalid type"),
        ];
        for (body, want) in cases {
            let err = validate_rules(body).unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn graph_marks_virtual_nodes_and_rates() {
        let row = |v: Value| v.as_object().unwrap().clone();
        let edges = [
            row(
                json!({"caller_service": "user", "callee_service": "a", "connection_type": "virtual_node",
                       "requests": 10, "errors": 1, "client_sides": 0, "server_sides": 10, "p50": 2e6}),
            ),
            row(
                json!({"caller_service": "a", "callee_service": "b", "connection_type": "direct",
                       "requests": 20, "errors": 0, "client_sides": 20, "server_sides": 20, "p50": null}),
            ),
            row(
                json!({"caller_service": "b", "callee_service": "orders-db", "connection_type": "database",
                       "requests": 5, "errors": 0, "client_sides": 5, "server_sides": 0, "p50": 1e6}),
            ),
            row(
                json!({"caller_service": "b", "callee_service": "payments.example.com", "connection_type": "virtual_node",
                       "requests": 3, "errors": 0, "client_sides": 3, "server_sides": 0, "p50": 1e6}),
            ),
        ];
        let roots = [row(
            json!({"root_service": "a", "class": "default", "traces": 10}),
        )];
        let g = graph_body(None, 0, 10_000_000_000, 10.0, &edges, &roots);
        let nodes = g["nodes"].as_array().unwrap();
        let user = nodes.iter().find(|n| n["id"] == "user").unwrap();
        assert_eq!(user["virtual"], json!(true));
        let kind = |id: &str| nodes.iter().find(|n| n["id"] == id).unwrap()["kind"].clone();
        assert_eq!(
            ["user", "a", "b", "orders-db", "payments.example.com"].map(kind),
            ["user", "service", "service", "database", "peer"].map(|k| json!(k))
        );
        let a = nodes.iter().find(|n| n["id"] == "a").unwrap();
        assert_eq!(
            (a["virtual"].clone(), a["rate"].clone()),
            (json!(false), json!(1.0))
        );
        assert_eq!(g["edges"][0]["p50_ms"], json!(2.0));
        assert_eq!(g["edges"][0]["error_rate"], json!(0.1));
        assert_eq!(g["edges"][1]["rate_per_s"], json!(2.0));
        assert_eq!(g["classes"][0]["traces"], json!(10));
    }
}
