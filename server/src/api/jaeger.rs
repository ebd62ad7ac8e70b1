//! Jaeger's HTTP query API (`/api/services`, `/api/operations`, `/api/traces`), answering the
//! JSON shapes the Jaeger UI and Grafana's Jaeger data source expect.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_model::SpanKind;
use meshtrace_storage::{StorageError, TraceQuery};
use serde_json::{json, Value};

use super::jaeger_json::{envelope, error_envelope, operations_json, trace};
use super::params::{parse_go_duration, parse_trace_id};
use super::ApiState;

/// Query parameters as (key, value) pairs, keeping repeated keys.
pub fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn bad_request(msg: impl AsRef<str>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(error_envelope(400, msg.as_ref())),
    )
        .into_response()
}

fn storage_error(e: &StorageError) -> Response {
    let status =
        StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(error_envelope(status.as_u16(), &e.to_string())),
    )
        .into_response()
}

pub async fn services(State(state): State<ApiState>) -> Response {
    let started = Instant::now();
    let result = state.store.services().await;
    state.observe(started);
    match result {
        Ok(list) => {
            let n = list.len();
            Json(envelope(json!(list), n)).into_response()
        }
        Err(e) => storage_error(&e),
    }
}

pub async fn service_operations(
    State(state): State<ApiState>,
    Path(service): Path<String>,
) -> Response {
    match state.store.operations(&service, None).await {
        Ok(ops) => {
            let mut names: Vec<String> = ops.into_iter().map(|(name, _)| name).collect();
            names.sort();
            names.dedup();
            let n = names.len();
            Json(envelope(json!(names), n)).into_response()
        }
        Err(e) => storage_error(&e),
    }
}

/// `GET /api/operations?service=S&spanKind=K`.
pub async fn operations(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(&raw);
    let Some(service) = first(&pairs, "service") else {
        return bad_request("parameter 'service' is required");
    };
    let kind = match first(&pairs, "spanKind") {
        None => None,
        Some(k) => match SpanKind::parse(k) {
            Some(kind) => Some(kind),
            None => return bad_request(format!("unknown spanKind {k:?}")),
        },
    };
    match state.store.operations(service, kind).await {
        Ok(ops) => {
            let data = operations_json(&ops);
            let n = data.len();
            Json(envelope(json!(data), n)).into_response()
        }
        Err(e) => storage_error(&e),
    }
}

pub async fn get_trace(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let started = Instant::now();
    let trace_id = match parse_trace_id(&id) {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let result = state.store.trace(trace_id).await;
    state.observe(started);
    match result {
        Ok(spans) if spans.is_empty() => (
            StatusCode::NOT_FOUND,
            Json(error_envelope(404, "trace not found")),
        )
            .into_response(),
        Ok(spans) => Json(envelope(json!([trace(&spans)]), 1)).into_response(),
        Err(e) => storage_error(&e),
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Parses the tags of a search: `tags={"k":"v"}` (as the Jaeger UI sends) or repeated `tag=k:v`.
fn parse_tags(pairs: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut tags = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "tags" if !v.is_empty() => {
                let obj: serde_json::Map<String, Value> = serde_json::from_str(v)
                    .map_err(|e| format!("malformed parameter 'tags': {e}"))?;
                for (key, value) in obj {
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    tags.push((key, text));
                }
            }
            "tag" => {
                let (key, value) = v
                    .split_once(':')
                    .ok_or_else(|| format!("malformed parameter 'tag' {v:?}: want key:value"))?;
                tags.push((key.to_string(), value.to_string()));
            }
            _ => {}
        }
    }
    Ok(tags)
}

/// Builds a storage query from Jaeger search parameters.
pub fn trace_query(pairs: &[(String, String)], max: usize) -> Result<TraceQuery, String> {
    let micros_param = |key: &str| -> Result<Option<i64>, String> {
        first(pairs, key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("malformed parameter '{key}': {v:?}"))
            })
            .transpose()
    };
    let end = micros_param("end")?;
    let mut start = micros_param("start")?;
    if start.is_none() {
        if let Some(lb) = first(pairs, "lookback").filter(|l| *l != "custom") {
            let lookback = parse_go_duration(lb)? / 1000;
            start = Some(end.unwrap_or_else(now_micros) - lookback);
        }
    }
    let duration = |key: &str| -> Result<Option<i64>, String> {
        first(pairs, key)
            .map(|v| parse_go_duration(v).map_err(|e| format!("malformed parameter '{key}': {e}")))
            .transpose()
    };
    let limit = match first(pairs, "limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| format!("malformed parameter 'limit': {l:?}"))?,
        None => 20,
    };
    Ok(TraceQuery {
        service: first(pairs, "service").map(str::to_string),
        operation: first(pairs, "operation").map(str::to_string),
        tags: parse_tags(pairs)?,
        start_min_ns: start.map(|s| s.saturating_mul(1000)),
        start_max_ns: end.map(|e| e.saturating_mul(1000)),
        duration_min_ns: duration("minDuration")?,
        duration_max_ns: duration("maxDuration")?,
        limit: if limit == 0 { 20 } else { limit.min(max) },
    })
}

/// `GET /api/traces`: search, or fetch the traces named by repeated `traceID`.
pub async fn find_traces(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let started = Instant::now();
    let pairs = query_pairs(&raw);
    let ids: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "traceID")
        .map(|(_, v)| v.as_str())
        .collect();
    let result = if !ids.is_empty() {
        let mut traces = Vec::new();
        for id in ids {
            let trace_id = match parse_trace_id(id) {
                Ok(t) => t,
                Err(e) => return bad_request(e),
            };
            match state.store.trace(trace_id).await {
                Ok(spans) if !spans.is_empty() => traces.push(spans),
                Ok(_) => {}
                Err(e) => return storage_error(&e),
            }
        }
        Ok(traces)
    } else {
        if first(&pairs, "service").is_none() {
            return bad_request("parameter 'service' is required");
        }
        let query = match trace_query(&pairs, state.query.max_traces) {
            Ok(q) => q,
            Err(e) => return bad_request(e),
        };
        state.store.find_traces(&query).await
    };
    state.observe(started);
    match result {
        Ok(traces) => {
            let data: Vec<Value> = traces.iter().map(|t| trace(t)).collect();
            let n = data.len();
            Json(envelope(json!(data), n)).into_response()
        }
        Err(e) => storage_error(&e),
    }
}
