//! Jaeger's Service Performance Monitoring API, which the Jaeger UI's Monitor tab and the
//! dashboard's service view read: `/api/metrics/{latencies,calls,errors}` answer a
//! [`MetricFamily`] with Jaeger's parameters and shape, `/api/metrics/minstep` the smallest
//! step in ms. The numbers come from the query layer's RED metrics ([`meshtrace_query::red`]),
//! computed from per-minute rollups of the stored spans; no metrics backend is needed.
//!
//! Parameters as Jaeger reads them: `service` (repeated for several, required),
//! `spanKind` (repeated; `server` by default), `groupByOperation`, `quantile` (latencies only),
//! `endTs` (unix ms, default now) and `lookback`, `step`, `ratePer` in ms (defaults 1 h, 5 s,
//! 10 min; Go durations such as `10m` are accepted too).

use axum::extract::{Path, State};
use axum::Json;
use meshtrace_model::SpanKind;
use meshtrace_query::red::MIN_STEP_NS;
use meshtrace_query::{MetricFamily, RedMetric, RedQuery};

use super::error::{ApiError, JaegerError};
use super::params::{parse_go_duration, Params};
use super::ApiState;

type Answer<T> = Result<Json<T>, JaegerError>;

const MS: i64 = 1_000_000;
const DEFAULT_LOOKBACK_MS: i64 = 3_600_000;
const DEFAULT_STEP_MS: i64 = 5_000;
const DEFAULT_RATE_PER_MS: i64 = 600_000;

/// A duration parameter in ms (Jaeger's form) or as a Go duration; in ns.
fn millis(params: &Params, key: &str, default_ms: i64) -> Result<i64, ApiError> {
    let parsed = params.parsed(key, |v| match v.parse::<i64>() {
        Ok(ms) => Ok(ms.saturating_mul(MS)),
        Err(_) => parse_go_duration(v),
    })?;
    Ok(parsed.unwrap_or(default_ms * MS))
}

/// The query every metrics endpoint shares.
fn red_query(params: &Params) -> Result<RedQuery, ApiError> {
    let services: Vec<String> = params
        .all("service")
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect();
    if services.is_empty() {
        return Err(ApiError::invalid(
            "service",
            "please provide at least one service name",
        ));
    }
    let kinds = params
        .all("spanKind")
        .filter(|k| !k.is_empty())
        .map(|k| {
            SpanKind::parse(k)
                .ok_or_else(|| ApiError::invalid("spanKind", format!("unknown span kind {k:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let end_ms = params.number::<i64>("endTs")?;
    Ok(RedQuery {
        services,
        kinds: if kinds.is_empty() {
            vec![SpanKind::Server]
        } else {
            kinds
        },
        group_by_operation: params.flag("groupByOperation")?,
        end_ns: end_ms.map_or_else(meshtrace_model::time::now_unix_nanos, |ms| {
            ms.saturating_mul(MS)
        }),
        lookback_ns: millis(params, "lookback", DEFAULT_LOOKBACK_MS)?,
        step_ns: millis(params, "step", DEFAULT_STEP_MS)?,
        rate_per_ns: millis(params, "ratePer", DEFAULT_RATE_PER_MS)?,
    })
}

/// `GET /api/metrics/latencies`: a quantile of span durations (ms), per service or per
/// operation.
#[utoipa::path(
    get,
    path = "/api/metrics/latencies",
    tag = "metrics",
    params(
        ("quantile" = f64, Query, exclusive_minimum = 0, maximum = 1, description = "in (0, 1], e.g. 0.95"),
        ("service" = String, Query, pattern = "\\S", description = "a service; repeat the parameter for several"),
        ("spanKind" = Option<String>, Query, pattern = "^(unspecified|internal|server|client|producer|consumer)$", description = "`server` (default), `client`, `internal`, `producer`, `consumer`, `unspecified`; repeat for several"),
        ("groupByOperation" = Option<bool>, Query, description = "one series per operation"),
        ("endTs" = Option<i64>, Query, description = "unix ms; default now"),
        ("lookback" = Option<i64>, Query, minimum = 1, description = "ms; default 3600000"),
        ("step" = Option<i64>, Query, minimum = 1, description = "ms; default 5000, at least 60000 is used"),
        ("ratePer" = Option<i64>, Query, minimum = 1, description = "window of each point, ms; default 600000"),
    ),
    responses(
        (status = 200, body = MetricFamily),
        (status = 400, description = "a missing service or quantile, or a malformed parameter"),
    )
)]
pub async fn latencies(State(state): State<ApiState>, params: Params) -> Answer<MetricFamily> {
    let quantile = params
        .number::<f64>("quantile")?
        .ok_or_else(|| ApiError::invalid("quantile", "please provide a quantile between (0, 1]"))?;
    answer(&state, &params, RedMetric::Latencies { quantile }).await
}

/// `GET /api/metrics/{metric}`: `calls` (calls per second) or `errors` (the fraction of calls
/// with an error status), per service or per operation; the same parameters as `latencies`
/// without `quantile`.
#[utoipa::path(
    get,
    path = "/api/metrics/{metric}",
    tag = "metrics",
    params(
        ("metric" = String, Path, pattern = "^(calls|errors)$", description = "`calls` or `errors`"),
        ("service" = String, Query, pattern = "\\S", description = "a service; repeat the parameter for several"),
        ("spanKind" = Option<String>, Query, pattern = "^(unspecified|internal|server|client|producer|consumer)$", description = "default `server`; repeat for several"),
        ("groupByOperation" = Option<bool>, Query, description = "one series per operation"),
        ("endTs" = Option<i64>, Query, description = "unix ms; default now"),
        ("lookback" = Option<i64>, Query, minimum = 1, description = "ms; default 3600000"),
        ("step" = Option<i64>, Query, minimum = 1, description = "ms; default 5000, at least 60000 is used"),
        ("ratePer" = Option<i64>, Query, minimum = 1, description = "window of each point, ms; default 600000"),
    ),
    responses(
        (status = 200, body = MetricFamily),
        (status = 400, description = "a missing service, or a malformed parameter"),
        (status = 404, description = "neither `calls` nor `errors`"),
    )
)]
pub async fn rates(
    State(state): State<ApiState>,
    Path(metric): Path<String>,
    params: Params,
) -> Answer<MetricFamily> {
    let metric = match metric.as_str() {
        "calls" => RedMetric::Calls,
        "errors" => RedMetric::Errors,
        _ => return Err(ApiError::not_found("no such metric").into()),
    };
    answer(&state, &params, metric).await
}

async fn answer(state: &ApiState, params: &Params, metric: RedMetric) -> Answer<MetricFamily> {
    let query = red_query(params)?;
    Ok(Json(state.queries.red_metrics(metric, &query).await?))
}

/// `GET /api/metrics/minstep`: the smallest step the metrics resolve, in ms (`data`).
#[utoipa::path(
    get,
    path = "/api/metrics/minstep",
    tag = "metrics",
    responses((status = 200, body = MinStep))
)]
pub async fn minstep() -> Json<MinStep> {
    Json(MinStep {
        data: MIN_STEP_NS / MS,
        total: 0,
        limit: 0,
        offset: 0,
        errors: None,
    })
}

/// The `minstep` answer: Jaeger's envelope around a number.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct MinStep {
    /// The smallest step, ms.
    pub data: i64,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    /// Always null.
    pub errors: Option<Vec<String>>,
}
