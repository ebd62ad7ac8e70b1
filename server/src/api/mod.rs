//! The HTTP API on the query port (16686 by default): `/readyz`, `/metrics`, the Jaeger query
//! API ([`jaeger`]) with its RED metrics ([`spm`]), Jaeger api_v3 ([`v3`]), meshtrace's own `/api/v1` ([`provenance`],
//! [`budgets`], [`priorities`], [`sql`]) with its OpenAPI document ([`openapi`]), and the
//! dashboard ([`ui`]).
//!
//! Handlers are thin: they read parameters ([`params::Params`]) into a typed question, ask the
//! query layer ([`meshtrace_query::Queries`]) or an engine handle (provenance, priorities),
//! and return a `Serialize` type or an [`error::ApiError`] in the envelope of their API. Every
//! request is timed by one layer ([`timing`]).

pub mod access;
pub mod budgets;
pub mod error;
pub mod jaeger;
pub mod jaeger_json;
pub mod openapi;
pub mod params;
pub mod priorities;
pub mod provenance;
pub mod spm;
pub mod sql;
pub mod timing;
pub mod ui;
pub mod v3;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meshtrace_collector::auth::{self, Auth};
use meshtrace_query::Queries;
use prometheus_client::registry::Registry;

use crate::health::Health;
use crate::priorities::Priorities;
use crate::provenance::Provenance;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub queries: Queries,
    pub provenance: Provenance,
    pub priorities: Priorities,
    pub registry: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
    /// What stops the node from storing spans, when something does (see [`Health`]).
    pub health: Arc<Health>,
}

/// Who may use the query port and from where ([`access`]).
#[derive(Clone)]
pub struct Security {
    pub auth: Auth,
    pub hosts: access::AllowedHosts,
    /// Origins granted CORS; empty: none.
    pub cors_origins: Vec<String>,
}

/// The query API of one tenant's engine, without the port's security layers ([`secure`]).
pub fn routes(state: ApiState, timing: timing::RequestTiming) -> Router {
    let (v1, _) = openapi::v1_router().split_for_parts();
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/services", get(jaeger::services))
        .route(
            "/api/services/{service}/operations",
            get(jaeger::service_operations),
        )
        .route("/api/operations", get(jaeger::operations))
        .route("/api/traces", get(jaeger::find_traces))
        .route("/api/traces/{trace_id}", get(jaeger::get_trace))
        .route("/api/dependencies", get(provenance::dependencies))
        .route("/api/v3/services", get(v3::services))
        .route("/api/v3/operations", get(v3::operations))
        .route("/api/v3/traces", get(v3::find_traces))
        .route("/api/v3/traces/{trace_id}", get(v3::get_trace))
        .merge(v1)
        .route_layer(axum::middleware::from_fn_with_state(timing, timing::time))
        .fallback(ui::serve)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(state)
}

/// The query port's security around `router` (which serves every tenant): the Host
/// allow-list, then tokens and scopes (which also decide the request's tenant, see
/// [`auth::require`]), and CORS for the configured origins only.
pub fn secure(router: Router, security: Security) -> Router {
    let guard = auth::Guard {
        auth: security.auth,
        access: access::route_access,
    };
    let router = router
        .layer(axum::middleware::from_fn_with_state(guard, auth::require))
        .layer(axum::middleware::from_fn_with_state(
            security.hosts,
            access::check_request,
        ));
    match cors(&security.cors_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// CORS for the configured origins (none by default: browsers then keep other origins' pages
/// from reading the API).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, Method};
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(meshtrace_model::tenant::TENANT_HEADER),
            ]),
    )
}

/// A handler that panicked answers 500 with the JSON error body instead of a dropped
/// connection; the panic itself is logged (it is a bug to fix).
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a query handler panicked");
    let error = error::ApiError {
        code: meshtrace_query::ErrorCode::Internal,
        message: "internal error".into(),
        field: None,
    };
    error.into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let problem = match state.ready.load(Ordering::Acquire) {
        // Starting, or (cluster mode) NATS is not connected.
        false => Some("starting, or the span stream is not connected".to_string()),
        true => state.health.problem(),
    };
    match problem {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The OpenAPI document of meshtrace's own API (`docs/openapi.json` holds the same).
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::document())
}
