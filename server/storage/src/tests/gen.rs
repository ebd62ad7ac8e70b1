//! Deterministic span generators for the tests: hand-built spans and realistic mesh traffic.

use meshtrace_model::{AttrValue, Event, KeyValue, Span, SpanKind, StatusCode, TraceId};

/// A small deterministic PRNG (xorshift64*), enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn trace_id(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        id
    }
}

/// A plain span for semantic tests.
pub fn span(trace: u8, id: u8, service: &str, name: &str, start_ns: i64, dur_ns: i64) -> Span {
    Span {
        trace_id: [trace; 16],
        span_id: [id; 8],
        parent_span_id: (id > 1).then_some([1; 8]),
        name: name.into(),
        kind: SpanKind::Server,
        start_unix_nano: start_ns,
        duration_nano: dur_ns,
        service_name: service.into(),
        scope_name: "envoy".into(),
        ..Default::default()
    }
}

const SERVICES: &[(&str, &[&str])] = &[
    ("istio-ingressgateway", &["productpage"]),
    ("productpage", &["details", "reviews"]),
    ("reviews", &["ratings"]),
    ("details", &[]),
    ("ratings", &["mongodb"]),
    ("mongodb", &[]),
];

fn pod(rng: &mut Rng, service: &str) -> (String, String) {
    let n = rng.below(3);
    let ip = format!("10.44.{}.{}", service.len(), 10 + n);
    let node =
        format!("sidecar~{ip}~{service}-v1-7d4b9c{n}f-x2k{n}q.default~default.svc.cluster.local");
    (ip, node)
}

struct TraceCtx {
    trace_id: TraceId,
    request_id: String,
    spans: Vec<Span>,
}

/// One Envoy span: a client span in the caller's sidecar or a server span in the callee's.
#[allow(clippy::too_many_arguments)]
fn envoy_span(
    rng: &mut Rng,
    t: &TraceCtx,
    parent: Option<[u8; 8]>,
    service: &str,
    upstream: &str,
    kind: SpanKind,
    start: i64,
    dur: i64,
) -> Span {
    let (ip, node) = pod(rng, service);
    let (peer_ip, _) = pod(rng, upstream);
    let fail = rng.below(50) == 0;
    let status: i64 = if fail { 503 } else { 200 };
    let cluster = match kind {
        SpanKind::Client => format!("outbound|9080||{upstream}.default.svc.cluster.local"),
        _ => "inbound|9080||".to_string(),
    };
    let path = format!("/{upstream}/{}", rng.below(4));
    let mut attributes = vec![
        KeyValue::string("node_id", node),
        KeyValue::string("zone", "europe-west1-b"),
        KeyValue::string("guid:x-request-id", t.request_id.clone()),
        KeyValue::string("http.url", format!("http://{upstream}:9080{path}")),
        KeyValue::string("http.method", *rng.pick(&["GET", "GET", "GET", "POST"])),
        KeyValue::string("downstream_cluster", "-"),
        KeyValue::string(
            "user_agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        KeyValue::string("http.protocol", "HTTP/1.1"),
        KeyValue::string(
            "peer.address",
            format!("{peer_ip}:{}", 40000 + rng.below(20000)),
        ),
        KeyValue::string("request_size", "0"),
        KeyValue::string("upstream_cluster", cluster.clone()),
        KeyValue::string("upstream_cluster.name", cluster),
        KeyValue::new("http.status_code", AttrValue::Int(status)),
        KeyValue::string("response_size", (200 + rng.below(3000)).to_string()),
        KeyValue::string("response_flags", if fail { "UH" } else { "-" }),
        KeyValue::string("istio.canonical_revision", "v1"),
        KeyValue::string("istio.canonical_service", service),
        KeyValue::string("istio.mesh_id", "cluster.local"),
        KeyValue::string("istio.namespace", "default"),
        KeyValue::string("component", "proxy"),
    ];
    if fail {
        attributes.push(KeyValue::new("error", AttrValue::Bool(true)));
    }
    let events = if fail {
        vec![Event {
            time_unix_nano: start + dur / 2,
            name: "upstream_reset_before_response_started".into(),
            attributes: vec![KeyValue::string("reason", "connection failure")],
        }]
    } else {
        Vec::new()
    };
    Span {
        trace_id: t.trace_id,
        span_id: rng.next_u64().to_be_bytes(),
        parent_span_id: parent,
        name: format!("{upstream}.default.svc.cluster.local:9080{path}"),
        kind,
        start_unix_nano: start,
        duration_nano: dur,
        status_code: if fail {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        service_name: service.into(),
        resource_attributes: vec![KeyValue::string("k8s.pod.ip", ip)],
        scope_name: "envoy".into(),
        attributes,
        events,
        ..Default::default()
    }
}

fn micros(rng: &mut Rng, lo: u64, hi: u64) -> i64 {
    ((lo + rng.below(hi - lo)) * 1000) as i64
}

/// Adds the client/server span pair of one call and, recursively, the calls it makes.
fn add_call(
    rng: &mut Rng,
    t: &mut TraceCtx,
    parent: [u8; 8],
    caller: &str,
    callee: &str,
    start: i64,
    budget: usize,
) {
    if t.spans.len() + 2 > budget {
        return;
    }
    let dur = micros(rng, 800, 40_000);
    let client = envoy_span(
        rng,
        t,
        Some(parent),
        caller,
        callee,
        SpanKind::Client,
        start,
        dur,
    );
    let server_start = start + micros(rng, 50, 400);
    let server_dur = (dur - (server_start - start)).max(1000);
    let server = envoy_span(
        rng,
        t,
        Some(client.span_id),
        callee,
        callee,
        SpanKind::Server,
        server_start,
        server_dur,
    );
    let server_id = server.span_id;
    t.spans.push(client);
    t.spans.push(server);
    let next: &[&str] = SERVICES
        .iter()
        .find(|(s, _)| *s == callee)
        .map(|(_, n)| *n)
        .unwrap_or(&[]);
    for callee2 in next {
        let repeats = 1 + rng.below(3);
        for _ in 0..repeats {
            let at = server_start + micros(rng, 100, 2000);
            add_call(rng, t, server_id, callee, callee2, at, budget);
        }
    }
}

/// One realistic mesh trace of 10 to 30 spans starting at `start`.
pub fn mesh_trace(rng: &mut Rng, start: i64) -> Vec<Span> {
    let budget = 10 + rng.below(21) as usize;
    let request_id = format!("{:016x}-{:08x}", rng.next_u64(), rng.next_u64() as u32);
    let mut t = TraceCtx {
        trace_id: rng.trace_id(),
        request_id,
        spans: Vec::new(),
    };
    let start = start / 1000 * 1000;
    let dur = micros(rng, 5_000, 200_000);
    let root = envoy_span(
        rng,
        &t,
        None,
        "istio-ingressgateway",
        "productpage",
        SpanKind::Server,
        start,
        dur,
    );
    let root_id = root.span_id;
    t.spans.push(root);
    while t.spans.len() + 2 <= budget {
        let at = start + micros(rng, 100, 3000);
        add_call(
            rng,
            &mut t,
            root_id,
            "istio-ingressgateway",
            "productpage",
            at,
            budget,
        );
    }
    t.spans
}

/// About `n` spans of mesh traffic, traces starting `step_ns` apart from `start`.
pub fn mesh_traffic(seed: u64, n: usize, start: i64, step_ns: i64) -> Vec<Span> {
    let mut rng = Rng::new(seed);
    let mut spans = Vec::with_capacity(n + 30);
    let mut at = start;
    while spans.len() < n {
        spans.extend(mesh_trace(&mut rng, at));
        at += step_ns;
    }
    spans
}
