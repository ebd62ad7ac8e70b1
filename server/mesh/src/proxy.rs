//! The sidecar proxy of one service. Its inbound side admits requests to the service through
//! the priority [`Gate`] (the service's slots), forwards them and emits a SERVER span; its
//! egress side forwards the service's calls to the callee's inbound side and emits a CLIENT
//! span. Both sides propagate `traceparent` and `baggage` (with `mesh.class`) and tag their
//! spans with Envoy-style attributes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshtrace_model::time::now_unix_nanos;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use meshtrace_model::{
    AttrValue, KeyValue, Span, SpanId, SpanKind, StatusCode as SpanStatus, TraceId,
};

use crate::context::{self, BAGGAGE, CLASS_HEADER, TRACEPARENT, UPSTREAM_HEADER};
use crate::export::SpanSender;
use crate::priorities::PriorityTable;
use crate::queue::Gate;

/// Largest body forwarded.
const MAX_BODY: usize = 1 << 20;

/// Everything one sidecar needs.
#[derive(Clone)]
pub struct ProxyState {
    pub service: String,
    pub node_id: String,
    pub app: SocketAddr,
    pub gate: Arc<Gate>,
    pub table: Arc<PriorityTable>,
    /// Inbound addresses of the other sidecars, by service.
    pub upstreams: Arc<BTreeMap<String, SocketAddr>>,
    pub client: reqwest::Client,
    pub spans: SpanSender,
}

fn fqdn(service: &str) -> String {
    format!("{service}.default.svc.cluster.local")
}

/// The trace context, class and path of a request as a sidecar sees it.
struct Incoming {
    trace: TraceId,
    parent: Option<SpanId>,
    class: Option<String>,
    baggage: Option<String>,
    method: http::Method,
    path: String,
}

fn incoming(req: &Request) -> Incoming {
    let h = req.headers();
    let parent = h
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(context::parse_traceparent);
    let trace = parent
        .map(|(t, _)| t)
        .unwrap_or_else(|| context::new_trace_id(&mut rand::thread_rng()));
    Incoming {
        trace,
        parent: parent.map(|(_, s)| s),
        class: context::class_of(h),
        baggage: h
            .get(BAGGAGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
    }
}

/// Forwards a request to `url` with the propagated context; returns status and body.
async fn forward(
    state: &ProxyState,
    url: String,
    inc: &Incoming,
    span_id: &SpanId,
    body: bytes::Bytes,
) -> Result<(StatusCode, bytes::Bytes), reqwest::Error> {
    let mut req = state
        .client
        .request(inc.method.clone(), url)
        .header(
            TRACEPARENT,
            context::format_traceparent(&inc.trace, span_id),
        )
        .body(body);
    if let Some(class) = &inc.class {
        req = req.header(CLASS_HEADER, class.as_str()).header(
            BAGGAGE,
            context::baggage_with_class(inc.baggage.as_deref(), class),
        );
    } else if let Some(b) = &inc.baggage {
        req = req.header(BAGGAGE, b.as_str());
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    Ok((status, body))
}

/// One proxy span with the Envoy attributes.
struct SpanParts<'a> {
    kind: SpanKind,
    cluster: String,
    host: &'a str,
    span_id: SpanId,
    start_ns: i64,
    started: Instant,
    status: u16,
    flags: &'a str,
    extra: Vec<KeyValue>,
}

fn emit(state: &ProxyState, inc: &Incoming, p: SpanParts<'_>) {
    let mut attributes = vec![
        KeyValue::string("component", "proxy"),
        KeyValue::string("node_id", state.node_id.clone()),
        KeyValue::string("upstream_cluster", p.cluster),
        KeyValue::string("http.method", inc.method.as_str()),
        KeyValue::string("http.url", format!("http://{}:9080{}", p.host, inc.path)),
        KeyValue::new("http.status_code", AttrValue::Int(p.status as i64)),
        KeyValue::string("response_flags", p.flags),
        KeyValue::string("istio.canonical_service", state.service.clone()),
    ];
    if let Some(c) = &inc.class {
        attributes.push(KeyValue::string("mesh.class", c.clone()));
    }
    attributes.extend(p.extra);
    state.spans.send(Span {
        trace_id: inc.trace,
        span_id: p.span_id,
        parent_span_id: inc.parent,
        name: format!("{}:9080/*", fqdn(p.host)),
        kind: p.kind,
        start_unix_nano: p.start_ns,
        duration_nano: p.started.elapsed().as_nanos() as i64,
        status_code: if p.status >= 500 {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        },
        service_name: state.service.clone(),
        resource_attributes: vec![KeyValue::string("k8s.namespace.name", "default")],
        scope_name: "envoy".into(),
        attributes,
        ..Default::default()
    });
}

fn respond(status: StatusCode, body: bytes::Bytes, flags: &str) -> Response {
    let mut r = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(flags) {
        r.headers_mut().insert("x-envoy-response-flags", v);
    }
    r
}

/// Inbound side: admit through the gate by class priority, forward to the app, emit a span.
pub async fn inbound(State(state): State<ProxyState>, req: Request) -> Response {
    let (start_ns, started) = (now_unix_nanos(), Instant::now());
    let inc = incoming(&req);
    let span_id = context::new_span_id(&mut rand::thread_rng());
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let level = state.table.level_of(inc.class.as_deref());
    let permit = state.gate.acquire(level).await;
    let queued_ms = started.elapsed().as_secs_f64() * 1000.0;
    let url = format!("http://{}{}", state.app, inc.path);
    let result = forward(&state, url, &inc, &span_id, body).await;
    drop(permit);
    let (status, body, flags) = match result {
        Ok((s, b)) => (s, b, "-"),
        Err(e) => {
            tracing::warn!(service = state.service, error = %e, "app unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, bytes::Bytes::new(), "UF")
        }
    };
    let extra = vec![
        KeyValue::new("mesh.priority", AttrValue::Int(level as i64)),
        KeyValue::new("mesh.queue_ms", AttrValue::Double(queued_ms)),
    ];
    let cluster = format!("inbound|9080||{}", fqdn(&state.service));
    let service = state.service.clone();
    emit(
        &state,
        &inc,
        SpanParts {
            kind: SpanKind::Server,
            cluster,
            host: &service,
            span_id,
            start_ns,
            started,
            status: status.as_u16(),
            flags,
            extra,
        },
    );
    respond(status, body, flags)
}

/// Egress side: forward the app's call to the upstream's sidecar, emit a span.
pub async fn egress(State(state): State<ProxyState>, req: Request) -> Response {
    let (start_ns, started) = (now_unix_nanos(), Instant::now());
    let inc = incoming(&req);
    let upstream = upstream_of(req.headers());
    let span_id = context::new_span_id(&mut rand::thread_rng());
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let Some(addr) = upstream
        .as_deref()
        .and_then(|u| state.upstreams.get(u).copied())
    else {
        return (StatusCode::NOT_FOUND, "no such upstream").into_response();
    };
    let upstream = upstream.unwrap_or_default();
    let url = format!("http://{addr}{}", inc.path);
    let (status, body, flags) = match forward(&state, url, &inc, &span_id, body).await {
        Ok((s, b)) => (s, b, "-"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, bytes::Bytes::new(), "UF"),
    };
    emit(
        &state,
        &inc,
        SpanParts {
            kind: SpanKind::Client,
            cluster: format!("outbound|9080||{}", fqdn(&upstream)),
            host: &upstream,
            span_id,
            start_ns,
            started,
            status: status.as_u16(),
            flags,
            extra: Vec::new(),
        },
    );
    respond(status, body, flags)
}

fn upstream_of(h: &HeaderMap) -> Option<String> {
    h.get(UPSTREAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Routers for the two sides.
pub fn routers(state: ProxyState) -> (axum::Router, axum::Router) {
    let inbound_r = axum::Router::new()
        .fallback(inbound)
        .with_state(state.clone());
    let egress_r = axum::Router::new().fallback(egress).with_state(state);
    (inbound_r, egress_r)
}
