//! Request timing for the query port, as one layer: every request to a route is observed in
//! `meshtrace_query_duration_seconds{route="<the route's pattern>"}`, so handlers time nothing
//! themselves.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The route label: the pattern the request matched (`/api/traces/{trace_id}`), so IDs in
/// paths do not make new series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: String,
}

type Histograms = Family<Route, Histogram, fn() -> Histogram>;

/// The request-duration histograms, one per route.
#[derive(Clone)]
pub struct RequestTiming {
    histograms: Histograms,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl RequestTiming {
    /// Creates the histograms and registers them.
    pub fn register(registry: &mut Registry) -> RequestTiming {
        let histograms: Histograms = Family::new_with_constructor(histogram);
        registry.register(
            "meshtrace_query_duration_seconds",
            "time to answer query-port requests, by route",
            histograms.clone(),
        );
        RequestTiming { histograms }
    }
}

/// The layer's function: runs the request and observes how long it took.
pub async fn time(State(timing): State<RequestTiming>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    timing
        .histograms
        .get_or_create(&Route { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
