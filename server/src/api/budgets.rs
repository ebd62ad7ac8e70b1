//! Latency budget APIs on the query port:
//!
//! - `GET|PUT /api/v1/classes/{class}/objective`: a class's objective, body
//!   `{"quantile": 0.99, "latency_ms": 250, "importance": 10, "min_share": 0.2}` (`min_share`
//!   optional); a malformed one is a 400 whose `error` and `field` name the field. Stored in
//!   the catalog, where it overrides the configuration's;
//! - `GET /api/v1/budgets?class=`: per class the objective, observed end-to-end quantile,
//!   attainment, samples, and per hop its budget, observation, slack, share, rate and risk;
//! - `GET /api/v1/budgets/history?class=&since=`: per class the end-to-end observation at each
//!   recent update step, oldest first; `since` is unix ms or RFC 3339. Kept in memory only
//!   (the newest steps per class), so it starts empty after a restart.

use axum::extract::{Path, State};
use axum::Json;
use meshtrace_budget::{ClassBudget, HopBudget, Objective, ObjectiveSpec};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::access::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::params::Params;
use super::ApiState;
use crate::priorities::history::ClassHistory;
use crate::priorities::Source;

pub use crate::priorities::{is_valid_name, MAX_NAME_CHARS};

/// A 400 naming `what` when `name` is empty or too long.
pub fn check_name(what: &'static str, name: &str) -> Result<(), ApiError> {
    if !is_valid_name(name) {
        return Err(ApiError::invalid(
            what,
            format!("invalid {what}: must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Parses and validates an objective body; the error names the field (`Err((field, msg))`).
pub fn parse_objective(body: &[u8]) -> Result<Objective, (String, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ("body".to_string(), format!("invalid body: {e}")))?;
    let Value::Object(map) = v else {
        return Err(("body".into(), "invalid body: must be a JSON object".into()));
    };
    const FIELDS: [&str; 4] = ["quantile", "latency_ms", "importance", "min_share"];
    if let Some(k) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err((k.clone(), format!("unknown field {k}")));
    }
    let number = |k: &str| -> Result<Option<f64>, (String, String)> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err((k.to_string(), format!("invalid {k}: must be a number"))),
        }
    };
    let required = |k: &str| -> Result<f64, (String, String)> {
        number(k)?.ok_or_else(|| (k.to_string(), format!("missing {k}")))
    };
    let spec = ObjectiveSpec {
        quantile: required("quantile")?,
        latency_ms: required("latency_ms")?,
        importance: required("importance")?,
        min_share: number("min_share")?,
    };
    Objective::try_from(spec).map_err(|e| (e.field_name().to_string(), e.to_string()))
}

/// A class's objective and where it comes from.
#[derive(Serialize, ToSchema)]
pub struct ClassObjective {
    pub class: String,
    pub objective: Objective,
    pub source: Source,
}

/// A class's objective.
#[utoipa::path(
    get,
    path = "/api/v1/classes/{class}/objective",
    tag = "budgets",
    params(("class" = String, Path, min_length = 1, max_length = 256)),
    responses(
        (status = 200, body = ClassObjective),
        (status = 404, description = "the class has no objective", body = ErrorBody),
    )
)]
pub async fn get_objective(
    State(state): State<ApiState>,
    Path(class): Path<String>,
) -> Result<Json<ClassObjective>, ApiError> {
    match state.priorities.objectives().remove(&class) {
        Some((objective, source)) => Ok(Json(ClassObjective {
            class,
            objective,
            source,
        })),
        None => Err(ApiError::not_found(format!(
            "no objective for class {class}"
        ))),
    }
}

/// Sets a class's objective in the catalog (it overrides the configuration's).
#[utoipa::path(
    put,
    path = "/api/v1/classes/{class}/objective",
    tag = "budgets",
    params(("class" = String, Path, min_length = 1, max_length = 256)),
    request_body = Objective,
    responses(
        (status = 200, body = ClassObjective),
        (status = 400, description = "a malformed objective; `field` names the field", body = ErrorBody),
        (status = 401, description = "no bearer token, or an unknown one (when tokens are configured)", body = ErrorBody),
        (status = 403, description = "the token lacks the admin scope; without tokens, the client is not on loopback", body = ErrorBody),
        (status = 415, description = "the body is not sent as `application/json`", body = ErrorBody),
    )
)]
pub async fn put_objective(
    State(state): State<ApiState>,
    Path(class): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<ClassObjective>, ApiError> {
    check_name("class", &class)?;
    let objective = parse_objective(&body).map_err(|(field, msg)| ApiError::invalid(field, msg))?;
    state
        .priorities
        .set_objective(&class, objective.clone())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ClassObjective {
        class,
        objective,
        source: Source::Catalog,
    }))
}

/// One hop of a class's budget.
#[derive(Serialize, ToSchema)]
pub struct HopView {
    pub service: String,
    pub operation: String,
    /// The caller hop, `service operation`; null directly under the entry.
    pub parent: Option<String>,
    pub depth: usize,
    pub parallel: bool,
    pub budget_ms: f64,
    pub subtree_budget_ms: f64,
    pub observed_ms: f64,
    pub slack_ms: f64,
    pub share: f64,
    pub rate_per_s: f64,
    pub load_share: f64,
    /// Slack under the configured fraction of the budget.
    pub at_risk: bool,
}

impl HopView {
    fn new(h: &HopBudget, at_risk_fraction: f64) -> HopView {
        HopView {
            service: h.service.clone(),
            operation: h.operation.clone(),
            parent: h.parent.as_ref().map(|p| p.to_string()),
            depth: h.depth,
            parallel: h.parallel,
            budget_ms: h.budget_ms,
            subtree_budget_ms: h.subtree_budget_ms,
            observed_ms: h.observed_ms,
            slack_ms: h.slack_ms,
            share: h.share,
            rate_per_s: h.rate_per_s,
            load_share: h.load_share,
            at_risk: h.slack_ms < at_risk_fraction * h.budget_ms,
        }
    }
}

/// One class's budget.
#[derive(Serialize, ToSchema)]
pub struct BudgetView {
    pub class: String,
    pub objective: Objective,
    pub source: Option<Source>,
    /// End-to-end latency at the objective's quantile (ms); null without traces.
    pub observed_ms: Option<f64>,
    /// Fraction of the window's traces within the target; null without traces.
    pub attainment: Option<f64>,
    pub samples: u64,
    /// Whether the observed quantile is over the target.
    pub missing: bool,
    pub hops: Vec<HopView>,
}

/// Every class's budget.
#[derive(Serialize, ToSchema)]
pub struct Budgets {
    pub classes: Vec<BudgetView>,
}

/// Per class with an objective: observed quantile, attainment and per-hop budgets.
#[utoipa::path(
    get,
    path = "/api/v1/budgets",
    tag = "budgets",
    params(("class" = Option<String>, Query, description = "one class")),
    responses(
        (status = 200, body = Budgets),
        (status = 404, description = "the class has no objective", body = ErrorBody),
    )
)]
pub async fn budgets(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Budgets>, ApiError> {
    let only = params.get("class");
    let at_risk = state.priorities.settings().at_risk_slack_fraction;
    let sources = state.priorities.objectives();
    let view = |b: ClassBudget| BudgetView {
        source: sources.get(&b.class).map(|s| s.1),
        missing: b.missing(),
        hops: b.hops.iter().map(|h| HopView::new(h, at_risk)).collect(),
        class: b.class,
        objective: b.objective,
        observed_ms: b.observed_ms,
        attainment: b.attainment,
        samples: b.samples,
    };
    let classes: Vec<BudgetView> = state
        .priorities
        .budgets()
        .into_iter()
        .filter(|b| only.is_none_or(|c| c == b.class))
        .map(view)
        .collect();
    if let (Some(c), true) = (only, classes.is_empty()) {
        return Err(ApiError::not_found(format!("no objective for class {c}")));
    }
    Ok(Json(Budgets { classes }))
}

/// `since` as unix milliseconds (an integer) or an RFC 3339 timestamp.
fn parse_since(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Per class the end-to-end observation at each recent update step, oldest first (memory
/// only: empty after a restart).
#[utoipa::path(
    get,
    path = "/api/v1/budgets/history",
    tag = "budgets",
    params(
        ("class" = Option<String>, Query, description = "one class"),
        ("since" = Option<i64>, Query, description = "unix ms (RFC 3339 is accepted too)"),
    ),
    responses(
        (status = 200, body = Vec<ClassHistory>),
        (status = 400, description = "a malformed `since` or class", body = ErrorBody),
    )
)]
pub async fn budget_history(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Vec<ClassHistory>>, ApiError> {
    let class = params.get("class");
    if let Some(c) = class {
        check_name("class", c)?;
    }
    let since = params.parsed("since", |s| {
        parse_since(s)
            .ok_or_else(|| format!("invalid since {s:?}: must be unix milliseconds or RFC 3339"))
    })?;
    Ok(Json(state.priorities.budget_history(class, since)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_unix_ms_or_rfc3339() {
        assert_eq!(parse_since("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(
            parse_since("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_since("yesterday"), None);
    }

    #[test]
    fn objective_errors_name_the_field() {
        let ok =
            parse_objective(br#"{"quantile": 0.99, "latency_ms": 250, "importance": 10}"#).unwrap();
        assert_eq!((ok.importance, ok.min_share), (10, None));
        let cases: [(&[u8], &str); 7] = [
            (
                br#"{"quantile": 1.5, "latency_ms": 1, "importance": 1}"#,
                "quantile",
            ),
            (br#"{"quantile": 0.5, "importance": 1}"#, "latency_ms"),
            (
                br#"{"quantile": 0.5, "latency_ms": "x", "importance": 1}"#,
                "latency_ms",
            ),
            (
                br#"{"quantile": 0.5, "latency_ms": 1, "importance": 1.5}"#,
                "importance",
            ),
            (
                br#"{"quantile": 0.5, "latency_ms": 1, "importance": 1, "min_share": 2}"#,
                "min_share",
            ),
            (
                br#"{"quantile": 0.5, "latency_ms": 1, "importance": 1, "nope": 2}"#,
                "nope",
            ),
            (br#"[1]"#, "body"),
        ];
        for (body, field) in cases {
            let (f, msg) = parse_objective(body).unwrap_err();
            assert_eq!(f, field, "{msg}");
            assert!(msg.contains(field), "{msg}");
        }
    }
}
