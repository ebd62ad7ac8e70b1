//! Jaeger's HTTP query API (`/api/services`, `/api/operations`, `/api/traces`), answering the
//! JSON model the Jaeger UI and Grafana's Jaeger data source expect ([`super::jaeger_json`]).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_model::{SpanKind, TraceId};
use meshtrace_query::TraceQuery;

use super::error::{ApiError, JaegerError};
use super::jaeger_json::{list, trace, Envelope, JaegerErrorItem, JaegerOperation, JaegerTrace};
use super::params::{parse_go_duration, parse_lookback, parse_trace_id, Params};
use super::ApiState;

type Answer<T> = Result<Json<Envelope<T>>, JaegerError>;

/// `GET /api/services`.
pub async fn services(State(state): State<ApiState>) -> Answer<Vec<String>> {
    Ok(Json(list(state.queries.services().await?)))
}

/// `GET /api/services/{service}/operations`: the names only.
pub async fn service_operations(
    State(state): State<ApiState>,
    Path(service): Path<String>,
) -> Answer<Vec<String>> {
    let mut names: Vec<String> = state
        .queries
        .operations(&service, None)
        .await?
        .into_iter()
        .map(|op| op.name)
        .collect();
    names.dedup();
    Ok(Json(list(names)))
}

/// The `spanKind` parameter, if given.
pub fn span_kind(params: &Params, keys: &[&str]) -> Result<Option<SpanKind>, ApiError> {
    match params.get_any(keys) {
        None => Ok(None),
        Some(k) => SpanKind::parse(k)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(keys[0], format!("unknown span kind {k:?}"))),
    }
}

/// `GET /api/operations?service=S&spanKind=K`.
pub async fn operations(
    State(state): State<ApiState>,
    params: Params,
) -> Answer<Vec<JaegerOperation>> {
    let service = params.required("service")?;
    let kind = span_kind(&params, &["spanKind"])?;
    let ops = state.queries.operations(service, kind).await?;
    Ok(Json(list(ops.iter().map(JaegerOperation::from).collect())))
}

/// `GET /api/traces/{traceID}`; `prettyPrint=true` indents the JSON (the Jaeger UI's "Trace
/// JSON" view asks for it), `raw=true` skips the adjusters ("Trace JSON (unadjusted)").
pub async fn get_trace(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, JaegerError> {
    let id = parse_trace_id(&id).map_err(|e| ApiError::invalid("traceID", e))?;
    let pretty = params.flag("prettyPrint")?;
    let found = match params.flag("raw")? {
        true => state.queries.raw_trace(id).await?,
        false => state.queries.trace(id).await?,
    };
    // A damaged segment may hold spans of any trace: say so, found or not.
    let skipped = state.queries.skipped_segments(None, None);
    let Some(t) = found else {
        if !skipped.is_empty() {
            let missing = JaegerErrorItem {
                code: 404,
                msg: "trace not found".into(),
            };
            let body = Envelope::<Vec<JaegerTrace>>::failed(missing).skipping(&skipped);
            return Ok((axum::http::StatusCode::NOT_FOUND, Json(body)).into_response());
        }
        return Err(ApiError::not_found("trace not found").into());
    };
    let body = list(vec![trace(&t)]).skipping(&skipped);
    if !pretty {
        return Ok(Json(body).into_response());
    }
    let text = serde_json::to_string_pretty(&body).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// Parses the tags of a search: `tags={"k":"v"}` (as the Jaeger UI sends) or repeated `tag=k:v`.
fn parse_tags(params: &Params) -> Result<Vec<(String, String)>, ApiError> {
    let mut tags = Vec::new();
    for (k, v) in params.pairs() {
        match k.as_str() {
            "tags" if !v.is_empty() => {
                let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(v)
                    .map_err(|e| {
                        ApiError::invalid("tags", format!("malformed parameter 'tags': {e}"))
                    })?;
                for (key, value) in obj {
                    let text = match value {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    tags.push((key, text));
                }
            }
            "tag" => {
                let (key, value) = v.split_once(':').ok_or_else(|| {
                    ApiError::invalid(
                        "tag",
                        format!("malformed parameter 'tag' {v:?}: want key:value"),
                    )
                })?;
                tags.push((key.to_string(), value.to_string()));
            }
            _ => {}
        }
    }
    Ok(tags)
}

/// A Jaeger search from its parameters (`start`/`end` in µs, `lookback` as a duration,
/// `minDuration`/`maxDuration` as durations, `limit`).
pub fn trace_query(params: &Params) -> Result<TraceQuery, ApiError> {
    let end = params.number::<i64>("end")?;
    let mut start = params.number::<i64>("start")?;
    if start.is_none() {
        let lookback = params.parsed("lookback", |l| match l {
            "custom" => Ok(None),
            other => parse_lookback(other).map(Some),
        })?;
        if let Some(ns) = lookback.flatten() {
            let end_us = end.unwrap_or_else(|| meshtrace_model::time::now_unix_nanos() / 1000);
            start = Some(end_us.saturating_sub(ns / 1000));
        }
    }
    Ok(TraceQuery {
        service: params.get("service").map(str::to_string),
        operation: params.get("operation").map(str::to_string),
        tags: parse_tags(params)?,
        start_min_ns: start.map(|s| s.saturating_mul(1000)),
        start_max_ns: end.map(|e| e.saturating_mul(1000)),
        duration_min_ns: params.parsed("minDuration", parse_go_duration)?,
        duration_max_ns: params.parsed("maxDuration", parse_go_duration)?,
        limit: params.number::<usize>("limit")?.unwrap_or(0),
    })
}

/// The most traces one `/api/traces?traceID=` request may name.
const MAX_TRACE_IDS: usize = 1000;

/// `GET /api/traces`: search, or fetch the traces named by repeated `traceID`.
pub async fn find_traces(
    State(state): State<ApiState>,
    params: Params,
) -> Answer<Vec<JaegerTrace>> {
    if params.all("traceID").count() > MAX_TRACE_IDS {
        let many = format!("at most {MAX_TRACE_IDS} traceID values per request");
        return Err(ApiError::invalid("traceID", many).into());
    }
    let ids: Vec<TraceId> = params
        .all("traceID")
        .map(|id| parse_trace_id(id).map_err(|e| ApiError::invalid("traceID", e)))
        .collect::<Result<_, _>>()?;
    let (traces, skipped) = if !ids.is_empty() {
        let skipped = state.queries.skipped_segments(None, None);
        (state.queries.traces(&ids).await?, skipped)
    } else {
        params.required("service")?;
        let query = trace_query(&params)?;
        let skipped = state
            .queries
            .skipped_segments(query.start_min_ns, query.start_max_ns);
        (state.queries.search(&query).await?, skipped)
    };
    Ok(Json(
        list(traces.iter().map(trace).collect()).skipping(&skipped),
    ))
}
