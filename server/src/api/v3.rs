//! Jaeger api_v3 over HTTP (`/api/v3/...`), answering OTLP JSON as
//! `tests/fixtures/specs/jaeger_api_v3_query_service.openapi.yaml` describes. Query parameters
//! are accepted in the spec's camelCase (`query.serviceName`) and in snake_case; errors are
//! `google.rpc.Status` bodies.

use axum::extract::{Path, State};
use axum::Json;
use meshtrace_collector::decode::otlp_json;
use meshtrace_model::Span;
use meshtrace_query::TraceQuery;
use serde::Serialize;
use serde_json::Value;

use super::error::{ApiError, RpcStatus};
use super::jaeger::span_kind;
use super::jaeger_json::JaegerOperation;
use super::params::{parse_go_duration, parse_rfc3339, parse_trace_id, Params};
use super::ApiState;

type Answer<T> = Result<Json<T>, RpcStatus>;

/// `{"result": <OTLP JSON traces>}`.
#[derive(Serialize)]
pub struct TracesData {
    pub result: Value,
}

impl TracesData {
    fn of(spans: &[Span]) -> TracesData {
        TracesData {
            result: otlp_json::encode(spans),
        }
    }
}

#[derive(Serialize)]
pub struct Services {
    pub services: Vec<String>,
}

#[derive(Serialize)]
pub struct Operations {
    pub operations: Vec<JaegerOperation>,
}

/// `GET /api/v3/services`.
pub async fn services(State(state): State<ApiState>) -> Answer<Services> {
    let services = state.queries.services().await?;
    Ok(Json(Services { services }))
}

/// `GET /api/v3/operations?service=&spanKind=`.
pub async fn operations(State(state): State<ApiState>, params: Params) -> Answer<Operations> {
    let service = params.required("service")?;
    let kind = span_kind(&params, &["spanKind", "span_kind"])?;
    let ops = state.queries.operations(service, kind).await?;
    let operations = ops.iter().map(JaegerOperation::from).collect();
    Ok(Json(Operations { operations }))
}

/// `GET /api/v3/traces/{trace_id}`; `rawTraces=true` skips the adjusters.
pub async fn get_trace(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    params: Params,
) -> Answer<TracesData> {
    let id = parse_trace_id(&id).map_err(|e| ApiError::invalid("trace_id", e))?;
    let found = match raw_traces(&params, "rawTraces", "raw_traces")? {
        true => state.queries.raw_trace(id).await?,
        false => state.queries.trace(id).await?,
    };
    match found {
        Some(t) => Ok(Json(TracesData::of(&t.spans))),
        None => Err(ApiError::not_found("trace not found").into()),
    }
}

/// Whether the adjusters are to be skipped.
fn raw_traces(params: &Params, camel: &str, snake: &str) -> Result<bool, ApiError> {
    Ok(params.flag(camel)? || params.flag(snake)?)
}

/// The value of a parameter given in camelCase (`query.serviceName`) or snake_case.
fn either<'a>(params: &'a Params, camel: &str, snake: &str) -> Option<&'a str> {
    params.get_any(&[camel, snake])
}

fn parsed<T>(
    params: &Params,
    camel: &str,
    snake: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, ApiError> {
    either(params, camel, snake)
        .map(|v| {
            parse(v).map_err(|e| {
                ApiError::invalid(camel, format!("malformed parameter '{camel}': {e}"))
            })
        })
        .transpose()
}

/// A search from api_v3's `query.*` parameters.
fn v3_query(params: &Params) -> Result<TraceQuery, ApiError> {
    let depth = parsed(params, "query.searchDepth", "query.search_depth", |d| {
        d.parse::<usize>()
            .map_err(|_| format!("{d:?} is not a number"))
    })?;
    let num_traces = parsed(params, "query.numTraces", "query.num_traces", |d| {
        d.parse::<usize>()
            .map_err(|_| format!("{d:?} is not a number"))
    })?;
    let tags = params
        .pairs()
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("query.attributes[")?.strip_suffix(']')?;
            Some((key.to_string(), v.clone()))
        })
        .collect();
    let service = either(params, "query.serviceName", "query.service_name").ok_or_else(|| {
        ApiError::invalid(
            "query.serviceName",
            "parameter 'query.serviceName' is required",
        )
    })?;
    Ok(TraceQuery {
        service: Some(service.to_string()),
        operation: either(params, "query.operationName", "query.operation_name")
            .map(str::to_string),
        tags,
        start_min_ns: parsed(
            params,
            "query.startTimeMin",
            "query.start_time_min",
            parse_rfc3339,
        )?,
        start_max_ns: parsed(
            params,
            "query.startTimeMax",
            "query.start_time_max",
            parse_rfc3339,
        )?,
        duration_min_ns: parsed(
            params,
            "query.durationMin",
            "query.duration_min",
            parse_go_duration,
        )?,
        duration_max_ns: parsed(
            params,
            "query.durationMax",
            "query.duration_max",
            parse_go_duration,
        )?,
        limit: depth.or(num_traces).unwrap_or(20).max(1),
    })
}

/// `GET /api/v3/traces?query.serviceName=...`.
pub async fn find_traces(State(state): State<ApiState>, params: Params) -> Answer<TracesData> {
    let query = v3_query(&params)?;
    let traces = match raw_traces(&params, "query.rawTraces", "query.raw_traces")? {
        true => state.queries.search_raw(&query).await?,
        false => state.queries.search(&query).await?,
    };
    let spans: Vec<Span> = traces.into_iter().flat_map(|t| t.spans).collect();
    Ok(Json(TracesData::of(&spans)))
}
