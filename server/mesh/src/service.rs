//! The simulated application behind a sidecar: it does its work (a sampled service time,
//! slept or spun), then calls its downstream services through its own sidecar's egress, in
//! sequence or in parallel, each with its probability, propagating the trace context headers
//! it received (as Bookinfo's apps do).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use rand::Rng;

use crate::context::{self, BAGGAGE, CLASS_HEADER, TRACEPARENT, UPSTREAM_HEADER};
use crate::scenario::{CallMode, ServiceSpec};

#[derive(Clone)]
pub struct AppState {
    pub spec: Arc<ServiceSpec>,
    /// This service's sidecar egress.
    pub egress: SocketAddr,
    pub client: reqwest::Client,
}

/// Sleeps (or spins a blocking thread) for one sampled service time.
async fn work(spec: &ServiceSpec) {
    let ms = spec.service_time.sample(&mut rand::thread_rng());
    let d = Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    if spec.spin {
        let _ = tokio::task::spawn_blocking(move || {
            let end = Instant::now() + d;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
        })
        .await;
    } else {
        tokio::time::sleep(d).await;
    }
}

async fn call(state: &AppState, to: &str, headers: &HeaderMap) -> bool {
    let mut req = state
        .client
        .get(format!("http://{}/{to}", state.egress))
        .header(UPSTREAM_HEADER, to);
    for name in [TRACEPARENT, BAGGAGE, CLASS_HEADER] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.clone());
        }
    }
    match req.send().await {
        Ok(r) => r.status().is_success(),
        Err(e) => {
            tracing::warn!(to, error = %e, "downstream call failed");
            false
        }
    }
}

/// Handles one request: work, then the downstream calls.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    work(&state.spec).await;
    let class = context::class_of(&headers);
    let targets: Vec<&str> = {
        let mut rng = rand::thread_rng();
        state
            .spec
            .calls
            .iter()
            .filter(|c| {
                c.classes.is_empty() || class.as_ref().is_some_and(|k| c.classes.contains(k))
            })
            .filter(|c| rng.gen_bool(c.probability.clamp(0.0, 1.0)))
            .map(|c| c.to.as_str())
            .collect()
    };
    let ok = match state.spec.mode {
        CallMode::Sequence => {
            let mut ok = true;
            for t in &targets {
                ok &= call(&state, t, &headers).await;
            }
            ok
        }
        CallMode::Parallel => {
            futures::future::join_all(targets.iter().map(|t| call(&state, t, &headers)))
                .await
                .into_iter()
                .all(|x| x)
        }
    };
    match ok {
        true => (StatusCode::OK, "ok").into_response(),
        false => (StatusCode::BAD_GATEWAY, "a downstream call failed").into_response(),
    }
}

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}
