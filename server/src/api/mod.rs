//! The HTTP API on the query port (16686 by default): `/readyz`, `/metrics`, the Jaeger query
//! API ([`jaeger`]), Jaeger api_v3 ([`v3`]) and read-only SQL ([`sql`]).

pub mod budgets;
pub mod jaeger;
pub mod jaeger_json;
pub mod params;
pub mod provenance;
pub mod sql;
pub mod ui;
pub mod v3;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use meshtrace_storage::Store;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::QueryConfig;

/// Writes metrics that are read from components at scrape time (WAL and storage stats).
pub type PulledMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub pulled: PulledMetrics,
    pub ready: Arc<AtomicBool>,
    pub query: QueryConfig,
    pub query_seconds: Histogram,
    pub provenance: crate::provenance::Provenance,
    pub priorities: crate::priorities::Priorities,
}

impl ApiState {
    /// Creates the query-latency histogram and registers it.
    pub fn query_histogram(registry: &mut Registry) -> Histogram {
        let h = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "meshtrace_query_duration_seconds",
            "time to answer query API requests",
            h.clone(),
        );
        h
    }

    /// Observes how long a query took.
    pub fn observe(&self, started: std::time::Instant) {
        self.query_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// The router of the query port.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/services", get(jaeger::services))
        .route(
            "/api/services/{service}/operations",
            get(jaeger::service_operations),
        )
        .route("/api/operations", get(jaeger::operations))
        .route("/api/traces", get(jaeger::find_traces))
        .route("/api/traces/{trace_id}", get(jaeger::get_trace))
        .route("/api/v3/services", get(v3::services))
        .route("/api/v3/operations", get(v3::operations))
        .route("/api/v3/traces", get(v3::find_traces))
        .route("/api/v3/traces/{trace_id}", get(v3::get_trace))
        .route("/api/v1/sql", post(sql::query))
        .route("/api/dependencies", get(provenance::dependencies))
        .route("/api/v1/graph", get(provenance::graph))
        .route("/api/v1/traces/classes", get(provenance::trace_classes))
        .route(
            "/api/v1/traces/{trace_id}/provenance",
            get(provenance::trace_provenance),
        )
        .route(
            "/api/v1/classes",
            get(provenance::get_classes).put(provenance::put_classes),
        )
        .route("/api/v1/classes/mapping", get(provenance::class_mapping))
        .route(
            "/api/v1/classes/{class}/objective",
            get(budgets::get_objective).put(budgets::put_objective),
        )
        .route("/api/v1/budgets", get(budgets::budgets))
        .route("/api/v1/budgets/history", get(budgets::budget_history))
        .route("/api/v1/priorities", get(budgets::priorities))
        .route(
            "/api/v1/priorities/overrides",
            get(budgets::get_overrides).put(budgets::put_overrides),
        )
        .route("/api/v1/priorities/history", get(budgets::history))
        .route("/api/v1/proxies", get(budgets::proxies))
        .fallback(ui::serve)
        .with_state(state)
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut body, &state.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (state.pulled)(&mut body);
    body.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
