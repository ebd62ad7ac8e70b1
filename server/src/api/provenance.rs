//! Provenance APIs on the query port, answered by the query layer from the derived tables and
//! the stored spans, and by the provenance engine for class rules:
//!
//! - `GET /api/dependencies?endTs=&lookback=` (ms): Jaeger's dependency links; default the
//!   last 24 h;
//! - `GET /api/v1/graph?class=&start=&end=` (RFC 3339 or µs; default the last hour): the
//!   service graph of one class (all classes when omitted);
//! - `GET /api/v1/traces/{id}/provenance`: call tree and critical path of one trace;
//! - `GET /api/v1/traces/classes?traceID=..`: the rule-assigned class of many traces at once
//!   (the search result list);
//! - `GET /api/v1/classes` (`?effective=true`: with the configuration rules), `PUT
//!   /api/v1/classes` (replaces the catalog rules), `GET /api/v1/classes/mapping`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use meshtrace_model::time::now_unix_nanos;
use meshtrace_model::TraceId;
use meshtrace_provenance::{ClassRule, MappingEntry};
use meshtrace_query::graph::DependencyLink;
use meshtrace_query::provenance::MAX_CLASS_LOOKUP;
use meshtrace_query::{GraphView, TimeRange, TraceClass, TraceProvenance};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::access::JsonBody;
use super::budgets::{is_valid_name, MAX_NAME_CHARS};
use super::error::{ApiError, ErrorBody, JaegerError};
use super::jaeger_json::{list, Envelope};
use super::params::{parse_time_us_or_rfc3339, parse_trace_id, Params, TraceIdHex};
use super::ApiState;

/// Most class rules accepted by a PUT.
const MAX_RULES: usize = 1000;
const HOUR_NS: i64 = 3_600_000_000_000;

/// `GET /api/dependencies?endTs=&lookback=` (milliseconds).
pub async fn dependencies(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Envelope<Vec<DependencyLink>>>, JaegerError> {
    let end_ms = params
        .number::<i64>("endTs")?
        .unwrap_or_else(|| now_unix_nanos() / 1_000_000);
    let lookback_ms = params
        .number::<i64>("lookback")?
        .unwrap_or(24 * 3600 * 1000);
    let window = TimeRange::new(
        end_ms.saturating_sub(lookback_ms).saturating_mul(1_000_000),
        end_ms.saturating_add(1).saturating_mul(1_000_000),
    )
    .map_err(|_| ApiError::invalid("lookback", "parameter 'lookback' must be positive"))?;
    Ok(Json(list(state.queries.dependencies(window).await?)))
}

/// The service graph of one class, or all, over a window.
#[utoipa::path(
    get,
    path = "/api/v1/graph",
    tag = "provenance",
    params(
        ("class" = Option<String>, Query, description = "one class; all when omitted"),
        ("start" = Option<i64>, Query, description = "unix µs (RFC 3339 is accepted too); default `end` less an hour"),
        ("end" = Option<i64>, Query, description = "unix µs (RFC 3339 is accepted too); default now"),
    ),
    responses(
        (status = 200, body = GraphView),
        (status = 400, description = "a malformed time, or start not before end", body = ErrorBody),
    )
)]
pub async fn graph(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<GraphView>, ApiError> {
    let end = params
        .parsed("end", parse_time_us_or_rfc3339)?
        .unwrap_or_else(now_unix_nanos);
    let start = params
        .parsed("start", parse_time_us_or_rfc3339)?
        .unwrap_or(end.saturating_sub(HOUR_NS));
    let window = TimeRange::new(start, end)
        .map_err(|_| ApiError::invalid("start", "parameter 'start' must be before 'end'"))?;
    let class = params.get("class");
    Ok(Json(state.queries.service_graph(window, class).await?))
}

/// A trace's class, call tree and critical path.
#[utoipa::path(
    get,
    path = "/api/v1/traces/{trace_id}/provenance",
    tag = "provenance",
    params(("trace_id" = TraceIdHex, Path, description = "hex, up to 32 characters")),
    responses(
        (status = 200, body = TraceProvenance),
        (status = 400, description = "not a trace ID", body = ErrorBody),
        (status = 404, description = "no span of the trace is stored", body = ErrorBody),
    )
)]
pub async fn trace_provenance(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TraceProvenance>, ApiError> {
    let id = parse_trace_id(&id).map_err(|e| ApiError::invalid("trace_id", e))?;
    let rules = state.provenance.rules();
    match state.queries.trace_provenance(id, &rules).await? {
        Some(p) => Ok(Json(p)),
        None => Err(ApiError::not_found("trace not found")),
    }
}

/// The classes of many traces, by hex trace ID.
#[derive(Serialize, ToSchema)]
pub struct TraceClasses {
    pub classes: BTreeMap<String, TraceClass>,
}

/// The class the rules assigned to each of up to 1000 traces (open traces classified on the
/// fly); unknown IDs are left out.
#[utoipa::path(
    get,
    path = "/api/v1/traces/classes",
    tag = "provenance",
    params(("traceID" = Option<Vec<TraceIdHex>>, Query, max_items = 1000, description = "repeated, up to 1000")),
    responses(
        (status = 200, body = TraceClasses),
        (status = 400, description = "a malformed ID, or too many", body = ErrorBody),
    )
)]
pub async fn trace_classes(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<TraceClasses>, ApiError> {
    if params.all("traceID").count() > MAX_CLASS_LOOKUP {
        return Err(ApiError::invalid(
            "traceID",
            format!("at most {MAX_CLASS_LOOKUP} traceID values"),
        ));
    }
    let mut ids: Vec<TraceId> = Vec::new();
    for v in params.all("traceID") {
        let id =
            parse_trace_id(v).map_err(|e| ApiError::invalid("traceID", format!("traceID: {e}")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let rules = state.provenance.rules();
    let classes = state.queries.trace_classes(&ids, &rules).await?;
    Ok(Json(TraceClasses { classes }))
}

/// A class rule, and with `effective=true` where it comes from (`catalog` or `config`).
#[derive(Serialize, ToSchema)]
pub struct RuleView {
    pub class: String,
    pub service: Option<String>,
    pub route_prefix: Option<String>,
    pub operation: Option<String>,
    /// `[key, value]`.
    #[schema(value_type = Option<Vec<String>>, min_items = 2, max_items = 2)]
    pub attribute: Option<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
}

impl RuleView {
    fn new(rule: ClassRule, source: Option<&'static str>) -> RuleView {
        RuleView {
            class: rule.class,
            service: rule.service,
            route_prefix: rule.route_prefix,
            operation: rule.operation,
            attribute: rule.attribute,
            source,
        }
    }
}

/// The catalog's class rules; with `effective=true` every rule in the order they apply, with
/// its `source`.
#[utoipa::path(
    get,
    path = "/api/v1/classes",
    tag = "classes",
    params(("effective" = Option<bool>, Query, description = "every rule in effect, with its source")),
    responses(
        (status = 200, body = Vec<RuleView>),
        (status = 400, description = "`effective` is not a boolean", body = ErrorBody),
    )
)]
pub async fn get_classes(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    let rules = if params.flag("effective")? {
        state
            .provenance
            .effective_rules()
            .into_iter()
            .map(|(rule, source)| RuleView::new(rule, Some(source)))
            .collect()
    } else {
        state
            .provenance
            .catalog_rules()
            .into_iter()
            .map(|rule| RuleView::new(rule, None))
            .collect()
    };
    Ok(Json(rules))
}

/// Checks one optional rule field.
fn check_field(at: &str, name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some("") => Err(format!("{at}.{name}: must not be empty when set")),
        Some(v) if !is_valid_name(v) => Err(format!(
            "{at}.{name}: longer than {MAX_NAME_CHARS} characters"
        )),
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
        if let Some((k, v)) = &rule.attribute {
            check_field(&at, "attribute", Some(k.as_str()))?;
            check_field(&at, "attribute", Some(v.as_str()))?;
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// Replaces the catalog's class rules with the list in the body; errors name the rule field.
#[utoipa::path(
    put,
    path = "/api/v1/classes",
    tag = "classes",
    request_body = Vec<ClassRule>,
    responses(
        (status = 200, body = Vec<ClassRule>, description = "the catalog rules now"),
        (status = 400, description = "a malformed rule, named", body = ErrorBody),
        (status = 401, description = "no bearer token, or an unknown one (when tokens are configured)", body = ErrorBody),
        (status = 403, description = "the token lacks the admin scope; without tokens, the client is not on loopback", body = ErrorBody),
        (status = 415, description = "the body is not sent as `application/json`", body = ErrorBody),
    )
)]
pub async fn put_classes(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Vec<ClassRule>>, ApiError> {
    let rules = validate_rules(&body).map_err(|e| {
        let field = e.split(':').next().unwrap_or("body").to_string();
        ApiError::invalid(field, e)
    })?;
    state
        .provenance
        .set_catalog_rules(rules)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(state.provenance.catalog_rules()))
}

/// The learned (caller, callee, operation) → class signatures with counts and shares.
#[utoipa::path(
    get,
    path = "/api/v1/classes/mapping",
    tag = "classes",
    responses((status = 200, body = Vec<MappingEntry>))
)]
pub async fn class_mapping(State(state): State<ApiState>) -> Json<Vec<MappingEntry>> {
    Json(state.provenance.mapping())
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
}
