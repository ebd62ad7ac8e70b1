//! Latency budget and priority APIs on the query port:
//!
//! - `GET|PUT /api/v1/classes/{class}/objective`: a class's objective, body
//!   `{"quantile": 0.99, "latency_ms": 250, "importance": 10, "min_share": 0.2}` (`min_share`
//!   optional); a malformed one is a 400 whose `error` and `field` name the field. Stored in
//!   the catalog, where it overrides the configuration's;
//! - `GET /api/v1/budgets?class=`: per class the objective, observed end-to-end quantile,
//!   attainment, samples, and per hop its budget, observation, slack, share, rate and risk;
//! - `GET /api/v1/budgets/history?class=&since=`: per class the end-to-end observation at each
//!   recent update step, `[{"class", "points": [{"t" (unix ms), "observed_ms", "attainment",
//!   "samples", "objective_ms"}]}]`, oldest first; `since` is unix ms or RFC 3339. Kept in
//!   memory only (the newest steps per class), so it starts empty after a restart;
//! - `GET /api/v1/priorities?service=&node=&wait=&version=`: a service's assignment set with a
//!   strong `ETag: "<version>"`; `If-None-Match` with the current version gives 304; `wait`
//!   (e.g. `30s`, clamped to `[budgets] max_wait`, minus up to 10% jitter) long-polls until the
//!   version differs from `version` (else from `If-None-Match`, else from the current one);
//! - `GET|PUT /api/v1/priorities/overrides`: `{"<class>": <level>, ...}` replaces every
//!   operator override (`{}` clears them); they apply at once with reason "operator override";
//! - `GET /api/v1/priorities/history?service=`: the stored versions with their reasons;
//! - `GET /api/v1/proxies`: the proxies that polled (HTTP) or watched (gRPC).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_budget::{Objective, ObjectiveSpec};
use rand::Rng;
use serde_json::{json, Value};

use super::jaeger::query_pairs;
use super::ApiState;
use crate::priorities::publish::{SetJson, WatcherGuard};

/// Longest class or service name accepted.
const MAX_NAME_BYTES: usize = 256;

fn error(status: StatusCode, msg: impl AsRef<str>) -> Response {
    (status, Json(json!({"error": msg.as_ref()}))).into_response()
}

fn field_error(field: &str, msg: impl AsRef<str>) -> Response {
    let body = json!({"error": msg.as_ref(), "field": field});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// A 400 naming `what` when `name` is empty or too long.
fn check_name(what: &'static str, name: &str) -> Option<Response> {
    (name.is_empty() || name.len() > MAX_NAME_BYTES).then(|| {
        field_error(
            what,
            format!("invalid {what}: must be 1 to {MAX_NAME_BYTES} bytes"),
        )
    })
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

/// `GET /api/v1/classes/{class}/objective`.
pub async fn get_objective(State(state): State<ApiState>, Path(class): Path<String>) -> Response {
    match state.priorities.objectives().remove(&class) {
        Some((o, source)) => {
            Json(json!({"class": class, "objective": o, "source": source})).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no objective for class {class}"),
        ),
    }
}

/// `PUT /api/v1/classes/{class}/objective`.
pub async fn put_objective(
    State(state): State<ApiState>,
    Path(class): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = check_name("class", &class) {
        return r;
    }
    let o = match parse_objective(&body) {
        Ok(o) => o,
        Err((field, msg)) => return field_error(&field, msg),
    };
    match state.priorities.set_objective(&class, o.clone()).await {
        Ok(()) => {
            Json(json!({"class": class, "objective": o, "source": "catalog"})).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/budgets?class=`.
pub async fn budgets(State(state): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(&q);
    let only = param(&pairs, "class");
    let at_risk = state.priorities.settings().at_risk_slack_fraction;
    let sources = state.priorities.objectives();
    let classes: Vec<Value> = state
        .priorities
        .budgets()
        .into_iter()
        .filter(|b| only.is_none_or(|c| c == b.class))
        .map(|b| {
            let hops: Vec<Value> = b
                .hops
                .iter()
                .map(|h| {
                    json!({
                        "service": h.service, "operation": h.operation,
                        "parent": h.parent.as_ref().map(|p| p.to_string()),
                        "depth": h.depth, "parallel": h.parallel,
                        "budget_ms": h.budget_ms, "subtree_budget_ms": h.subtree_budget_ms,
                        "observed_ms": h.observed_ms, "slack_ms": h.slack_ms, "share": h.share,
                        "rate_per_s": h.rate_per_s, "load_share": h.load_share,
                        "at_risk": h.slack_ms < at_risk * h.budget_ms,
                    })
                })
                .collect();
            json!({
                "class": b.class, "objective": b.objective,
                "source": sources.get(&b.class).map(|s| s.1),
                "observed_ms": b.observed_ms, "attainment": b.attainment,
                "samples": b.samples, "missing": b.missing(), "hops": hops,
            })
        })
        .collect();
    if let (Some(c), true) = (only, classes.is_empty()) {
        return error(StatusCode::NOT_FOUND, format!("no objective for class {c}"));
    }
    Json(json!({ "classes": classes })).into_response()
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

/// `GET /api/v1/budgets/history?class=&since=`.
pub async fn budget_history(State(state): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(&q);
    let class = param(&pairs, "class");
    if let Some(r) = class.and_then(|c| check_name("class", c)) {
        return r;
    }
    let since = match param(&pairs, "since") {
        None => None,
        Some(s) => match parse_since(s) {
            Some(ms) => Some(ms),
            None => {
                return field_error(
                    "since",
                    format!("invalid since {s:?}: must be unix milliseconds or RFC 3339"),
                )
            }
        },
    };
    Json(state.priorities.budget_history(class, since)).into_response()
}

/// A Go-style or humantime duration (`30s`, `1m`), or plain seconds.
fn parse_wait(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    humantime::parse_duration(s).ok()
}

/// The versions an `If-None-Match` header lists (`*` matches any).
fn if_none_match(headers: &HeaderMap) -> (Vec<u64>, bool) {
    let mut versions = Vec::new();
    let mut any = false;
    for v in headers.get_all(header::IF_NONE_MATCH) {
        for tag in v.to_str().unwrap_or_default().split(',') {
            let tag = tag.trim();
            if tag == "*" {
                any = true;
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
            if let Ok(n) = tag.parse() {
                versions.push(n);
            }
        }
    }
    (versions, any)
}

/// `GET /api/v1/priorities?service=&node=&wait=&version=`.
pub async fn priorities(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(&q);
    let Some(service) = param(&pairs, "service") else {
        return field_error("service", "missing service");
    };
    if let Some(r) = check_name("service", service) {
        return r;
    }
    let node = param(&pairs, "node").unwrap_or("-");
    let wait = match param(&pairs, "wait").map(|w| (w, parse_wait(w))) {
        None => None,
        Some((_, Some(d))) => Some(d),
        Some((w, None)) => return field_error("wait", format!("invalid wait: {w:?}")),
    };
    let version = match param(&pairs, "version").map(|v| (v, v.parse::<u64>())) {
        None => None,
        Some((_, Ok(v))) => Some(v),
        Some((v, Err(_))) => return field_error("version", format!("invalid version: {v:?}")),
    };
    let (tags, any) = if_none_match(&headers);
    let p = &state.priorities;
    let mut set = p.current(service);
    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
        let mut rx = p.subscribe(service);
        set = rx.borrow_and_update().clone();
        let held = version.or(tags.first().copied()).unwrap_or(set.version);
        if set.version == held {
            let max = p.settings().max_wait;
            let jitter = rand::thread_rng().gen_range(0.0..0.1);
            let wait = wait.min(max).mul_f64(1.0 - jitter);
            let _guard = WatcherGuard::new(p);
            tokio::select! {
                _ = tokio::time::timeout(wait, rx.wait_for(|s| s.version != held)) => {}
                _ = p.stopping().cancelled() => {}
            }
            set = rx.borrow().clone();
        }
    }
    p.record_proxy(service, node, "http", set.version);
    let etag = HeaderValue::from_str(&format!("\"{}\"", set.version))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if any || tags.contains(&set.version) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response();
    }
    ([(header::ETAG, etag), cache], Json(SetJson::from(&*set))).into_response()
}

/// `GET /api/v1/priorities/overrides`.
pub async fn get_overrides(State(state): State<ApiState>) -> Response {
    Json(state.priorities.overrides()).into_response()
}

/// Parses `{"<class>": <level>, ...}`; levels are integers below `levels`.
pub fn parse_overrides(body: &[u8], levels: u8) -> Result<BTreeMap<String, u8>, (String, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ("body".to_string(), format!("invalid body: {e}")))?;
    let Value::Object(map) = v else {
        return Err((
            "body".into(),
            "invalid body: must be an object of class to level".into(),
        ));
    };
    let mut out = BTreeMap::new();
    for (class, level) in map {
        if class.is_empty() || class.len() > MAX_NAME_BYTES {
            return Err((class, "invalid class name".into()));
        }
        let max = levels.max(1) - 1;
        match level.as_u64() {
            Some(l) if l <= u64::from(max) => {
                out.insert(class, l as u8);
            }
            _ => {
                let msg = format!("invalid {class}: level must be an integer in 0..={max}");
                return Err((class, msg));
            }
        }
    }
    Ok(out)
}

/// `PUT /api/v1/priorities/overrides`.
pub async fn put_overrides(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let levels = state.priorities.settings().levels;
    let overrides = match parse_overrides(&body, levels) {
        Ok(o) => o,
        Err((field, msg)) => return field_error(&field, msg),
    };
    match state.priorities.set_overrides(overrides).await {
        Ok(()) => Json(state.priorities.overrides()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/priorities/history?service=`.
pub async fn history(State(state): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(&q);
    let Some(service) = param(&pairs, "service") else {
        return field_error("service", "missing service");
    };
    match state.store.priority_history(service).await {
        Ok(rows) => {
            let versions: Vec<Value> = rows
                .into_iter()
                .map(|r| {
                    let set: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                    json!({
                        "version": r.version,
                        "generated_at": crate::priorities::publish::rfc3339(r.generated_at_ns),
                        "reason": r.reason,
                        "assignments": set.get("assignments").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect();
            Json(json!({"service": service, "versions": versions})).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/proxies`.
pub async fn proxies(State(state): State<ApiState>) -> Response {
    Json(json!({ "proxies": state.priorities.proxies() })).into_response()
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

    #[test]
    fn overrides_parse_and_validate() {
        let o = parse_overrides(br#"{"batch": 7, "interactive": 0}"#, 8).unwrap();
        assert_eq!(o["batch"], 7);
        assert_eq!(
            parse_overrides(br#"{"batch": 8}"#, 8).unwrap_err().0,
            "batch"
        );
        assert_eq!(
            parse_overrides(br#"{"batch": -1}"#, 8).unwrap_err().0,
            "batch"
        );
        assert_eq!(parse_overrides(br#"[]"#, 8).unwrap_err().0, "body");
    }

    #[test]
    fn etags_and_waits_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"3\", W/\"4\""),
        );
        assert_eq!(if_none_match(&h), (vec![3, 4], false));
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_wait("soon"), None);
    }
}
