//! Latency budgets and priorities end to end through the real binary, with fast windows: an
//! `interactive` class (p99 <= 50 ms, importance 10) missing its objective at the `reviews` hop
//! it shares with a `batch` class (p99 <= 5000 ms, importance 1, min_share 0.2) must be given a
//! higher priority there, seen by an HTTP long poll and a gRPC WatchPriorities stream.

mod common;

use std::time::{Duration, Instant};

use common::{now_ns, otlp_request, Server};
use meshtrace_proto::priorities::v1::priorities_client::PrioritiesClient;
use meshtrace_proto::priorities::v1::{AssignmentSet, WatchRequest};
use serde_json::{json, Value};

const CONFIG: &str = r#"
[budgets]
max_wait = "3s"
[budgets.objectives.batch]
quantile = 0.99
latency_ms = 5000
importance = 1
min_share = 0.2
"#;

/// One SERVER span with the `mesh.class` attribute on roots.
fn span(
    service: &str,
    ids: [String; 3],
    name: &str,
    start: i64,
    dur_ms: i64,
    class: Option<&str>,
) -> Value {
    let [trace, span, parent] = ids;
    let attrs: Vec<Value> = class
        .map(|c| json!({"key": "mesh.class", "value": {"stringValue": c}}))
        .into_iter()
        .collect();
    json!({
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace, "spanId": span, "parentSpanId": parent, "name": name, "kind": 2,
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": (start + dur_ms * 1_000_000).to_string(),
            "attributes": attrs,
        }]}]
    })
}

/// `n` traces of each class: frontend(120 ms) -> reviews(100 ms) for interactive,
/// batchjob(40 ms) -> reviews(20 ms) for batch.
fn traffic(n: u32) -> Value {
    let start = now_ns() - 500_000_000;
    let mut spans = Vec::new();
    for i in 0..n {
        for (k, (class, root, root_ms, child_ms)) in [
            ("interactive", "frontend", 120, 100),
            ("batch", "batchjob", 40, 20),
        ]
        .into_iter()
        .enumerate()
        {
            let trace = format!("{:016x}{:016x}", k + 1, i + 1);
            let (r, c) = (format!("{:016x}", 2 * i + 1), format!("{:016x}", 2 * i + 2));
            let name = format!("GET /{class}");
            spans.push(span(
                root,
                [trace.clone(), r.clone(), String::new()],
                &name,
                start,
                root_ms,
                Some(class),
            ));
            spans.push(span(
                "reviews",
                [trace, c, r],
                "GET /reviews",
                start + 5_000_000,
                child_ms,
                None,
            ));
        }
    }
    otlp_request(spans)
}

/// GET with headers; returns status, ETag, JSON body and the time it took.
async fn poll(server: &Server, query: &str, inm: Option<&str>) -> (u16, String, Value, Duration) {
    let t = Instant::now();
    let mut req = reqwest::Client::new().get(format!("{}/api/v1/priorities?{query}", server.http));
    if let Some(tag) = inm {
        req = req.header("if-none-match", tag);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, etag, body, t.elapsed())
}

fn level(set: &Value, class: &str) -> Option<u64> {
    set["assignments"]
        .as_array()?
        .iter()
        .find(|a| a["class"] == class)
        .and_then(|a| a["priority"].as_u64())
}

fn grpc_level(set: &AssignmentSet, class: &str) -> Option<u32> {
    set.assignments
        .iter()
        .find(|a| a.class == class)
        .map(|a| a.priority)
}

fn interactive_first(set: &Value) -> bool {
    matches!((level(set, "interactive"), level(set, "batch")), (Some(i), Some(b)) if i < b)
}

/// A server with [`CONFIG`], a 1 s idle window and 1 s budget steps, in `dir`.
async fn fast_server(dir: &std::path::Path) -> Server {
    let config = dir.join("meshtrace.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let cfg = config.display().to_string();
    let flags = [
        "--config",
        &cfg,
        "--provenance-idle",
        "1s",
        "--budget-step",
        "1s",
    ];
    Server::start(&dir.join("data"), &flags).await
}

#[tokio::test]
async fn interactive_is_raised_above_batch_at_the_shared_hop() {
    let dir = tempfile::tempdir().unwrap();
    let server = fast_server(dir.path()).await;

    // Objectives: from the configuration, through the API, and malformed ones.
    let (status, batch) = server.get("/api/v1/classes/batch/objective").await;
    assert_eq!(
        (status, batch["source"].as_str()),
        (200, Some("config")),
        "{batch}"
    );
    let body = r#"{"quantile": 0.99, "latency_ms": 50, "importance": 10}"#;
    let (status, put) = server
        .put("/api/v1/classes/interactive/objective", body)
        .await;
    assert_eq!(status, 200, "{put}");
    let (_, got) = server.get("/api/v1/classes/interactive/objective").await;
    assert_eq!(got["objective"]["latency_ms"], 50.0, "{got}");
    assert_eq!(got["source"], "catalog");
    for (body, field) in [
        (
            r#"{"quantile": 1.5, "latency_ms": 50, "importance": 10}"#,
            "quantile",
        ),
        (r#"{"quantile": 0.9, "importance": 10}"#, "latency_ms"),
        (
            r#"{"quantile": 0.9, "latency_ms": 5, "importance": "high"}"#,
            "importance",
        ),
        (
            r#"{"quantile": 0.9, "latency_ms": 5, "importance": 1, "min_share": 3}"#,
            "min_share",
        ),
    ] {
        let (status, err) = server.put("/api/v1/classes/x/objective", body).await;
        assert_eq!((status, err["field"].as_str()), (400, Some(field)), "{err}");
        assert!(err["error"].as_str().unwrap().contains(field), "{err}");
    }
    let (_, x) = server.get("/api/v1/classes/x/objective").await;
    assert!(
        x["error"].is_string(),
        "malformed objective must not be stored: {x}"
    );

    // Unknown service: version 0, no assignments.
    let (status, etag, unknown, _) = poll(&server, "service=nobody", None).await;
    assert_eq!((status, etag.as_str()), (200, "\"0\""));
    assert_eq!(unknown["version"], 0);
    assert_eq!(unknown["assignments"], json!([]));

    // A long poll and a gRPC watch on `reviews`, both before any span.
    let long_poll = {
        let url = format!(
            "{}/api/v1/priorities?service=reviews&node=n1&wait=30s&version=0",
            server.http
        );
        tokio::spawn(async move {
            let t = Instant::now();
            let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            (body, t)
        })
    };
    let mut client = PrioritiesClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let request = WatchRequest {
        service: "reviews".into(),
        node: "g1".into(),
    };
    let mut stream = client.watch_priorities(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!((first.version, first.assignments.len()), (0, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sent = Instant::now();
    server.send_otlp_json(&traffic(20)).await;
    let (changed, _) = tokio::time::timeout(Duration::from_secs(15), long_poll)
        .await
        .expect("long poll returns once the set changes")
        .unwrap();
    // Trace completion (1 s idle) + one budget step (1 s) + slack.
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "{:?}",
        sent.elapsed()
    );
    assert!(changed["version"].as_u64().unwrap() >= 1, "{changed}");

    // The set settles with interactive above batch at reviews.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut set = changed;
    while !interactive_first(&set) {
        assert!(
            Instant::now() < deadline,
            "interactive never raised above batch: {set}"
        );
        let q = format!("service=reviews&node=n1&wait=5s&version={}", set["version"]);
        set = poll(&server, &q, None).await.2;
    }
    let a = set["assignments"].as_array().unwrap();
    let interactive = a.iter().find(|a| a["class"] == "interactive").unwrap();
    assert_eq!(
        interactive["match"]["header"]["value"], "interactive",
        "{set}"
    );
    assert!(interactive["timeout_ms"].as_f64().unwrap() > 0.0);
    assert!(
        interactive["reason"].as_str().unwrap().contains("at risk"),
        "{set}"
    );
    let batch = a.iter().find(|a| a["class"] == "batch").unwrap();
    assert_eq!(batch["min_share"], 0.2);
    assert!(set["generated_at"].as_str().unwrap().ends_with('Z'));

    // The gRPC stream sees it too.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a gRPC update")
            .unwrap()
            .expect("stream open");
        if matches!((grpc_level(&msg, "interactive"), grpc_level(&msg, "batch")), (Some(i), Some(b)) if i < b)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gRPC never saw interactive first: {msg:?}"
        );
    }

    // ETag and If-None-Match; long polls without change end with their (clamped) wait.
    let mut version = set["version"].as_u64().unwrap();
    let (status, etag, _, _) = poll(&server, "service=reviews", None).await;
    let current_tag = format!("\"{version}\"");
    if etag == current_tag {
        let (status, etag, _, _) = poll(&server, "service=reviews", Some(&current_tag)).await;
        assert_eq!((status, etag.as_str()), (304, current_tag.as_str()));
    }
    assert_eq!(status, 200);
    for (wait, min, max) in [("1s", 0.85, 2.5), ("1h", 2.6, 5.0)] {
        let mut unchanged = false;
        for _ in 0..3 {
            let q = format!("service=reviews&node=n1&wait={wait}&version={version}");
            let (status, _, body, took) = poll(&server, &q, None).await;
            assert_eq!(status, 200, "{body}");
            if body["version"].as_u64() == Some(version) {
                let s = took.as_secs_f64();
                assert!(s >= min && s <= max, "wait={wait} took {s}s");
                unchanged = true;
                break;
            }
            version = body["version"].as_u64().unwrap();
        }
        assert!(unchanged, "the set kept changing");
    }

    // Budgets: interactive misses its objective, reviews is at risk.
    let (status, b) = server.get("/api/v1/budgets?class=interactive").await;
    assert_eq!(status, 200, "{b}");
    let c = &b["classes"][0];
    assert_eq!(
        (c["samples"].as_u64(), c["attainment"].as_f64()),
        (Some(20), Some(0.0)),
        "{b}"
    );
    assert!(c["observed_ms"].as_f64().unwrap() > 100.0, "{b}");
    let reviews = c["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["service"] == "reviews")
        .unwrap();
    assert_eq!(reviews["at_risk"], true, "{b}");
    for k in [
        "budget_ms",
        "observed_ms",
        "slack_ms",
        "share",
        "rate_per_s",
    ] {
        assert!(reviews[k].is_number(), "{k} in {reviews}");
    }
    assert!(reviews["slack_ms"].as_f64().unwrap() < 0.0);

    // Budget history: every update step recorded per class, filtered by class and `since`.
    let t = Instant::now();
    let points = loop {
        let (status, h) = server
            .get("/api/v1/budgets/history?class=interactive")
            .await;
        assert_eq!(status, 200, "{h}");
        let list = h.as_array().unwrap();
        assert!(list.iter().all(|c| c["class"] == "interactive"), "{h}");
        let points = list
            .first()
            .map(|c| c["points"].as_array().unwrap().clone())
            .unwrap_or_default();
        if points.len() >= 2 && points.iter().any(|p| p["samples"] == 20) {
            break points;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no history: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ts: Vec<i64> = points.iter().map(|p| p["t"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    let full = points.iter().rev().find(|p| p["samples"] == 20).unwrap();
    assert_eq!(full["objective_ms"], 50.0, "{full}");
    assert_eq!(full["attainment"], 0.0, "{full}");
    assert!(full["observed_ms"].as_f64().unwrap() > 100.0, "{full}");
    let last = ts[ts.len() - 1];
    let (_, h) = server
        .get(&format!("/api/v1/budgets/history?since={last}"))
        .await;
    let classes: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert!(
        classes.contains(&"batch") && classes.contains(&"interactive"),
        "{h}"
    );
    for c in h.as_array().unwrap() {
        assert!(
            c["points"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["t"].as_i64().unwrap() >= last),
            "{h}"
        );
    }
    let (status, e) = server.get("/api/v1/budgets/history?since=soon").await;
    assert_eq!((status, e["field"].as_str()), (400, Some("since")), "{e}");

    // Operator override: applied at once with its reason, and kept in the history.
    let (status, o) = server
        .put(
            "/api/v1/priorities/overrides",
            r#"{"batch": 0, "interactive": 3}"#,
        )
        .await;
    assert_eq!(status, 200, "{o}");
    let (_, o) = server.get("/api/v1/priorities/overrides").await;
    assert_eq!(o, json!({"batch": 0, "interactive": 3}));
    let t = Instant::now();
    let mut set = poll(
        &server,
        &format!("service=reviews&wait=10s&version={version}"),
        None,
    )
    .await
    .2;
    while level(&set, "batch") != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "override not applied: {set}"
        );
        set = poll(
            &server,
            &format!("service=reviews&wait=5s&version={}", set["version"]),
            None,
        )
        .await
        .2;
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let batch = set["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["class"] == "batch")
        .unwrap();
    assert_eq!(batch["reason"], "operator override");
    let (status, h) = server
        .put("/api/v1/priorities/overrides", r#"{"batch": 99}"#)
        .await;
    assert_eq!((status, h["field"].as_str()), (400, Some("batch")), "{h}");
    let (_, h) = server
        .get("/api/v1/priorities/history?service=reviews")
        .await;
    let versions = h["versions"].as_array().unwrap();
    assert!(versions.len() >= 2, "{h}");
    let last = versions.last().unwrap();
    assert_eq!(last["version"], set["version"]);
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("operator override"),
        "{h}"
    );

    // Proxies and metrics.
    let (_, p) = server.get("/api/v1/proxies").await;
    let seen: Vec<(String, String, String)> = p["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["service"].as_str().unwrap().into(),
                p["node"].as_str().unwrap().into(),
                p["via"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        seen.contains(&("reviews".into(), "n1".into(), "http".into())),
        "{p}"
    );
    assert!(
        seen.contains(&("reviews".into(), "g1".into(), "grpc".into())),
        "{p}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("meshtrace_priority_watchers 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("meshtrace_priority_versions_published_total 0"));
    assert!(metrics.contains("meshtrace_priority_versions_published_total"));
    assert!(metrics.contains("meshtrace_budget_updates_total"));
    drop(stream);
}

/// A tenant's (`X-Scope-OrgID`) objectives, budgets and priorities are its own: acme's traffic
/// raises interactive above batch for acme's watchers, over HTTP and gRPC, while the default
/// tenant's `reviews` set stays at version 0.
#[tokio::test]
async fn a_tenants_priorities_are_its_own() {
    const TENANT: (&str, &str) = ("x-scope-orgid", "acme");
    let dir = tempfile::tempdir().unwrap();
    let server = fast_server(dir.path()).await;
    let http = reqwest::Client::new();
    let objective = r#"{"quantile": 0.99, "latency_ms": 50, "importance": 10}"#;
    let r = http
        .put(format!(
            "{}/api/v1/classes/interactive/objective",
            server.http
        ))
        .header(TENANT.0, TENANT.1)
        .header("content-type", "application/json")
        .body(objective)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{}/v1/traces", server.otlp))
        .header(TENANT.0, TENANT.1)
        .header("content-type", "application/json")
        .body(traffic(20).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("{}/api/v1/priorities?service=reviews", server.http);
        let set: Value = http
            .get(url)
            .header(TENANT.0, TENANT.1)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if interactive_first(&set) {
            break;
        }
        assert!(Instant::now() < deadline, "acme's set never changed: {set}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut client = PrioritiesClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let watch = |tenant: Option<&str>| {
        let mut request = tonic::Request::new(WatchRequest {
            service: "reviews".into(),
            node: "g1".into(),
        });
        if let Some(t) = tenant {
            request.metadata_mut().insert(TENANT.0, t.parse().unwrap());
        }
        request
    };
    let mut acme = client
        .watch_priorities(watch(Some(TENANT.1)))
        .await
        .unwrap();
    let set = acme.get_mut().message().await.unwrap().unwrap();
    assert!(set.version >= 1, "{set:?}");
    let (i, b) = (grpc_level(&set, "interactive"), grpc_level(&set, "batch"));
    assert!(matches!((i, b), (Some(i), Some(b)) if i < b), "{set:?}");

    let mut plain = client.watch_priorities(watch(None)).await.unwrap();
    let set = plain.get_mut().message().await.unwrap().unwrap();
    assert_eq!((set.version, set.assignments.len()), (0, 0), "{set:?}");
    let (_, _, default, _) = poll(&server, "service=reviews", None).await;
    assert_eq!(default["version"], 0, "{default}");
    let bad = client
        .watch_priorities(watch(Some("../x")))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
}
