//! Priority APIs on the query port:
//!
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

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_collector::auth::{AuthError, Caller, Scope};
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use super::access::JsonBody;
use super::budgets::{check_name, is_valid_name, MAX_NAME_CHARS};
use super::error::{ApiError, ErrorBody};
use super::params::Params;
use super::ApiState;
use crate::priorities::publish::{AssignmentJson, SetJson, WatcherGuard};
use crate::priorities::ProxyInfo;
use meshtrace_model::time::rfc3339;

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

/// A service's assignment set, long-polled with `wait`; 304 when `If-None-Match` holds the
/// current version.
#[utoipa::path(
    get,
    path = "/api/v1/priorities",
    tag = "priorities",
    params(
        ("service" = String, Query, min_length = 1, max_length = 256, description = "the proxy's service"),
        ("node" = Option<String>, Query, min_length = 1, max_length = 256, description = "the proxy's node (registered with its version)"),
        ("wait" = Option<f64>, Query, minimum = 0, description = "long-poll up to this many seconds (or a duration such as `30s`) for a version other than `version`; clamped to `[budgets] max_wait`"),
        ("version" = Option<u64>, Query, description = "the version the proxy holds"),
    ),
    responses(
        (status = 200, body = SetJson, description = "the current set; `ETag` is its version"),
        (status = 304, description = "`If-None-Match` holds the current version"),
        (status = 400, description = "a malformed parameter, named", body = ErrorBody),
    )
)]
pub async fn priorities(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let service = params
        .get("service")
        .ok_or_else(|| ApiError::invalid("service", "missing service"))?;
    check_name("service", service)?;
    if !caller.may_act_for(Scope::Proxy, service) {
        let refusal = format!(
            "{} may not read the priorities of service {service:?}",
            caller.name()
        );
        return Ok(AuthError::PermissionDenied(refusal).into_response());
    }
    let node = params.get("node").unwrap_or("-");
    check_name("node", node)?;
    let wait = params.parsed("wait", |w| {
        parse_wait(w).ok_or_else(|| format!("invalid wait: {w:?}"))
    })?;
    let version = params.number::<u64>("version")?;
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
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response());
    }
    Ok(([(header::ETAG, etag), cache], Json(SetJson::from(&*set))).into_response())
}

/// The operator's overrides: class → level (0 highest).
#[utoipa::path(
    get,
    path = "/api/v1/priorities/overrides",
    tag = "priorities",
    responses((status = 200, body = BTreeMap<String, u8>))
)]
pub async fn get_overrides(State(state): State<ApiState>) -> Json<BTreeMap<String, u8>> {
    Json(state.priorities.overrides())
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
        if !is_valid_name(&class) {
            return Err((class, "invalid class name".into()));
        }
        let max = levels.max(1) - 1;
        // JSON has one number type: 2.0 is the integer 2 (as JSON Schema reads it).
        let level = level.as_f64().filter(|l| l.fract() == 0.0);
        match level {
            Some(l) if (0.0..=f64::from(max)).contains(&l) => {
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

/// The schema of an overrides body: class name -> level, levels below `[budgets] levels` (the
/// document states the default, 8).
pub struct OverridesBody;

impl utoipa::PartialSchema for OverridesBody {
    fn schema() -> RefOr<Schema> {
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_NAME_CHARS));
        let level = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(7));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(name))
            .additional_properties(Some(level))
            .description(Some(
                "class -> level (0 highest), below `[budgets] levels` (8 by default)",
            ))
            .into()
    }
}

impl ToSchema for OverridesBody {}

/// Replaces every operator override (`{}` clears them); they apply at once.
#[utoipa::path(
    put,
    path = "/api/v1/priorities/overrides",
    tag = "priorities",
    request_body = OverridesBody,
    responses(
        (status = 200, body = BTreeMap<String, u8>, description = "the overrides now"),
        (status = 400, description = "a malformed override; `field` names the class", body = ErrorBody),
        (status = 401, description = "no bearer token, or an unknown one (when tokens are configured)", body = ErrorBody),
        (status = 403, description = "the token lacks the admin scope; without tokens, the client is not on loopback", body = ErrorBody),
        (status = 415, description = "the body is not sent as `application/json`", body = ErrorBody),
    )
)]
pub async fn put_overrides(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Json<BTreeMap<String, u8>>, ApiError> {
    let levels = state.priorities.settings().levels;
    let overrides =
        parse_overrides(&body, levels).map_err(|(field, msg)| ApiError::invalid(field, msg))?;
    state
        .priorities
        .set_overrides(overrides)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(state.priorities.overrides()))
}

/// One published version of a service's set.
#[derive(Serialize, ToSchema)]
pub struct PublishedVersion {
    pub version: u64,
    pub generated_at: String,
    /// Why it changed.
    pub reason: String,
    /// Null when the stored body cannot be read.
    pub assignments: Option<Vec<AssignmentJson>>,
}

/// A service's published versions.
#[derive(Serialize, ToSchema)]
pub struct PriorityHistory {
    pub service: String,
    pub versions: Vec<PublishedVersion>,
}

/// A service's published versions with why each changed.
#[utoipa::path(
    get,
    path = "/api/v1/priorities/history",
    tag = "priorities",
    params(("service" = String, Query, min_length = 1, max_length = 256)),
    responses(
        (status = 200, body = PriorityHistory),
        (status = 400, description = "no service", body = ErrorBody),
    )
)]
pub async fn history(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<PriorityHistory>, ApiError> {
    let service = params
        .get("service")
        .ok_or_else(|| ApiError::invalid("service", "missing service"))?;
    check_name("service", service)?;
    let rows = state.priorities.stored_history(service).await?;
    let versions = rows
        .into_iter()
        .map(|r| PublishedVersion {
            version: r.version,
            generated_at: rfc3339(r.generated_at_ns),
            reason: r.reason,
            assignments: serde_json::from_str::<SetJson>(&r.body)
                .ok()
                .map(|set| set.assignments),
        })
        .collect();
    Ok(Json(PriorityHistory {
        service: service.to_string(),
        versions,
    }))
}

/// The proxies that polled or watched.
#[derive(Serialize, ToSchema)]
pub struct Proxies {
    pub proxies: Vec<ProxyInfo>,
}

/// The proxies that polled (HTTP) or watched (gRPC), with the version each holds.
#[utoipa::path(
    get,
    path = "/api/v1/proxies",
    tag = "priorities",
    responses((status = 200, body = Proxies))
)]
pub async fn proxies(State(state): State<ApiState>) -> Json<Proxies> {
    Json(Proxies {
        proxies: state.priorities.proxies(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
