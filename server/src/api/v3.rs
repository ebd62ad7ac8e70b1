//! Jaeger api_v3 over HTTP (`/api/v3/...`), answering OTLP JSON as
//! `tests/fixtures/specs/jaeger_api_v3_query_service.openapi.yaml` describes. Query parameters
//! are accepted in the spec's camelCase (`query.serviceName`) and in snake_case.

use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_collector::decode::otlp_json;
use meshtrace_model::{Span, SpanKind};
use meshtrace_storage::{StorageError, TraceQuery};
use serde_json::json;

use super::jaeger::query_pairs;
use super::jaeger_json::operations_json;
use super::params::{parse_go_duration, parse_rfc3339, parse_trace_id};
use super::ApiState;

/// A `google.rpc.Status` error body.
fn status(http: StatusCode, grpc: i32, message: impl AsRef<str>) -> Response {
    (
        http,
        Json(json!({"code": grpc, "message": message.as_ref()})),
    )
        .into_response()
}

fn bad_request(message: impl AsRef<str>) -> Response {
    status(StatusCode::BAD_REQUEST, 3, message)
}

fn storage_error(e: &StorageError) -> Response {
    let http =
        StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    status(http, e.code().grpc_code(), e.to_string())
}

/// Finds a parameter by its camelCase or snake_case name.
fn param<'a>(pairs: &'a [(String, String)], camel: &str, snake: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| (k == camel || k == snake) && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn result(spans: &[Span]) -> Response {
    Json(json!({"result": otlp_json::encode(spans)})).into_response()
}

pub async fn services(State(state): State<ApiState>) -> Response {
    match state.store.services().await {
        Ok(list) => Json(json!({"services": list})).into_response(),
        Err(e) => storage_error(&e),
    }
}

pub async fn operations(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(&raw);
    let Some(service) = param(&pairs, "service", "service") else {
        return bad_request("parameter 'service' is required");
    };
    let kind = match param(&pairs, "spanKind", "span_kind") {
        None => None,
        Some(k) => match SpanKind::parse(k) {
            Some(kind) => Some(kind),
            None => return bad_request(format!("unknown span kind {k:?}")),
        },
    };
    match state.store.operations(service, kind).await {
        Ok(ops) => {
            let list = operations_json(&ops);
            Json(json!({"operations": list})).into_response()
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
    let found = state.store.trace(trace_id).await;
    state.observe(started);
    match found {
        Ok(spans) if spans.is_empty() => status(StatusCode::NOT_FOUND, 5, "trace not found"),
        Ok(spans) => result(&spans),
        Err(e) => storage_error(&e),
    }
}

fn v3_query(pairs: &[(String, String)], max: usize) -> Result<TraceQuery, String> {
    let time = |camel, snake| param(pairs, camel, snake).map(parse_rfc3339).transpose();
    let duration = |camel, snake| {
        param(pairs, camel, snake)
            .map(parse_go_duration)
            .transpose()
    };
    let depth = match param(pairs, "query.searchDepth", "query.search_depth")
        .or_else(|| param(pairs, "query.numTraces", "query.num_traces"))
    {
        Some(d) => d
            .parse::<usize>()
            .map_err(|_| format!("malformed parameter 'query.searchDepth': {d:?}"))?,
        None => 20,
    };
    let mut tags = Vec::new();
    for (k, v) in pairs {
        let key = k
            .strip_prefix("query.attributes[")
            .and_then(|rest| rest.strip_suffix(']'));
        if let Some(key) = key {
            tags.push((key.to_string(), v.clone()));
        }
    }
    Ok(TraceQuery {
        service: param(pairs, "query.serviceName", "query.service_name").map(str::to_string),
        operation: param(pairs, "query.operationName", "query.operation_name").map(str::to_string),
        tags,
        start_min_ns: time("query.startTimeMin", "query.start_time_min")?,
        start_max_ns: time("query.startTimeMax", "query.start_time_max")?,
        duration_min_ns: duration("query.durationMin", "query.duration_min")?,
        duration_max_ns: duration("query.durationMax", "query.duration_max")?,
        limit: depth.clamp(1, max),
    })
}

pub async fn find_traces(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let started = Instant::now();
    let pairs = query_pairs(&raw);
    let query = match v3_query(&pairs, state.query.max_traces) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    if query.service.is_none() {
        return bad_request("parameter 'query.serviceName' is required");
    }
    let found = state.store.find_traces(&query).await;
    state.observe(started);
    match found {
        Ok(traces) => {
            let spans: Vec<Span> = traces.into_iter().flatten().collect();
            result(&spans)
        }
        Err(e) => storage_error(&e),
    }
}
