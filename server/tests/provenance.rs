//! End-to-end provenance through the real binary: Nezha Online Boutique imported over OTLP,
//! Istio Bookinfo in Tempo's JSON, late spans replacing a trace's rows, class rules set over
//! the API, and spans replayed from the write-ahead log after a crash.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{fixture, now_ns, otlp_request, otlp_span, Server};
use serde_json::Value;

const BOOKINFO_TRACE: &str = "3ba55609c3cde49649cd77d1f9dcd936";

#[tokio::test]
async fn nezha_online_boutique_is_assembled_classified_and_graphed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--retention", "100000d", "--provenance-idle", "1s"],
    )
    .await;
    let csv = fixture("nezha/ob_2022-08-22_05_29_trace.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_meshtrace"))
        .args(["import", "--format", "nezha-csv"])
        .arg(&csv)
        .args(["--to", &server.otlp])
        .env("MESHTRACE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
        .wait_count("SELECT count(*) FROM traces", 309, 30)
        .await;
    let unclassified = "SELECT count(*) FROM traces WHERE class IS NULL OR class = ''";
    assert_eq!(server.count(unclassified).await, 0);
    assert_eq!(
        server
            .count("SELECT count(*) FROM traces WHERE complete")
            .await,
        309
    );
    assert_eq!(
        server.count("SELECT sum(span_count) FROM traces").await,
        14045
    );

    let window = "start=2022-08-21T00:00:00Z&end=2022-08-24T00:00:00Z";
    let (status, g) = server.get(&format!("/api/v1/graph?{window}")).await;
    assert_eq!(status, 200, "{g}");
    let nodes = g["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 10, "{g}");
    for n in nodes {
        let kind = n["kind"].as_str().unwrap();
        assert!(
            ["service", "user", "database", "peer"].contains(&kind),
            "{n}"
        );
        assert_eq!(n["virtual"], kind != "service", "{n}");
    }
    let pairs: BTreeSet<(String, String)> = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["caller"].to_string(), e["callee"].to_string()))
        .collect();
    assert_eq!(pairs.len(), 13, "{g}");
    for e in g["edges"].as_array().unwrap() {
        assert!(e["requests"].as_u64().unwrap() > 0);
        assert!(
            e["p50_ms"].as_f64().unwrap() <= e["p99_ms"].as_f64().unwrap(),
            "{e}"
        );
    }
    let (_, one_class) = server
        .get(&format!("/api/v1/graph?{window}&class=nope"))
        .await;
    assert!(one_class["edges"].as_array().unwrap().is_empty());

    let end_ms = 1_661_212_800_000i64; // 2022-08-23T00:00:00Z
    let (status, deps) = server
        .get(&format!(
            "/api/dependencies?endTs={end_ms}&lookback=172800000"
        ))
        .await;
    assert_eq!(status, 200);
    let links = deps["data"].as_array().unwrap();
    assert_eq!(links.len(), 13, "{deps}");
    assert!(links.iter().all(|l| l["callCount"].as_u64().unwrap() > 0));

    let (_, mapping) = server.get("/api/v1/classes/mapping").await;
    assert!(!mapping.as_array().unwrap().is_empty());
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("meshtrace_provenance_completed_traces_total 309"),
        "{metrics}"
    );
    assert!(metrics.contains("meshtrace_provenance_orphans_total 0"));
}

/// Tempo's Bookinfo trace with every timestamp moved to the last second.
fn bookinfo_now() -> Value {
    let text = std::fs::read_to_string(fixture("istio/responseTrace.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let mut starts = Vec::new();
    walk_times(&mut v, &mut |t| {
        starts.push(t);
        t
    });
    let shift = now_ns() - 1_000_000_000 - starts.iter().min().unwrap();
    walk_times(&mut v, &mut |t| t + shift);
    v
}

/// Applies `f` to every `*TimeUnixNano` value (string or number), in place.
fn walk_times(v: &mut Value, f: &mut dyn FnMut(i64) -> i64) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k.ends_with("TimeUnixNano") {
                    let t = match val {
                        Value::String(s) => s.parse::<i64>().ok(),
                        Value::Number(n) => n.as_i64(),
                        _ => None,
                    };
                    if let Some(t) = t {
                        *val = Value::String(f(t).to_string());
                    }
                } else {
                    walk_times(val, f);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| walk_times(i, f)),
        _ => {}
    }
}

fn tree_services(node: &Value, out: &mut BTreeSet<String>) {
    out.insert(node["service"].as_str().unwrap().to_string());
    for c in node["children"].as_array().unwrap() {
        tree_services(c, out);
    }
}

/// Checks that the critical path's sections tile the root span.
fn assert_tiles_root(p: &Value) {
    let root = &p["tree"];
    let (start, dur) = (
        root["start_us"].as_i64().unwrap(),
        root["duration_us"].as_i64().unwrap(),
    );
    let sections = p["critical_path"].as_array().unwrap();
    assert!(!sections.is_empty());
    let mut at = start;
    for s in sections {
        assert_eq!(s["start_us"].as_i64().unwrap(), at, "{p}");
        at = s["end_us"].as_i64().unwrap();
    }
    assert_eq!(at, start + dur, "{p}");
}

#[tokio::test]
async fn bookinfo_provenance_open_then_derived() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--provenance-idle", "1s"]).await;
    server.send_otlp_json(&bookinfo_now()).await;
    let path = format!("/api/v1/traces/{BOOKINFO_TRACE}/provenance");
    let (status, open) = server.get(&path).await;
    assert_eq!(status, 200, "{open}");
    let mut services = BTreeSet::new();
    tree_services(&open["tree"], &mut services);
    for s in [
        "istio-ingressgateway.istio-system",
        "productpage.bookinfo",
        "details.bookinfo",
        "reviews.bookinfo",
        "ratings.bookinfo",
    ] {
        assert!(services.contains(s), "{s} missing from {open}");
    }
    assert_tiles_root(&open);

    let sql = format!("SELECT count(*) FROM traces WHERE trace_id = X'{BOOKINFO_TRACE}'");
    server.wait_count(&sql, 1, 15).await;
    let (_, done) = server.get(&path).await;
    assert_eq!(done["derived"], Value::Bool(true), "{done}");
    assert_eq!(done["complete"], Value::Bool(true), "{done}");
    assert_eq!(done["class"], "default");
    assert_tiles_root(&done);
    let edges = format!("SELECT count(*) FROM edges WHERE trace_id = X'{BOOKINFO_TRACE}' AND connection_type = 'direct'");
    assert_eq!(server.count(&edges).await, 4);
    let (_, g) = server.get("/api/v1/graph").await;
    let pairs: BTreeSet<(String, String)> = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["caller"].as_str().unwrap().into(),
                e["callee"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        pairs.contains(&("reviews.bookinfo".into(), "ratings.bookinfo".into())),
        "{g}"
    );

    let (status, _) = server
        .get("/api/v1/traces/0123456789abcdef0123456789abcdef/provenance")
        .await;
    assert_eq!(status, 404);
}

/// A two-level trace: a root SERVER span on `service` and `children` CLIENT spans under it.
fn trace_spans(trace: &str, service: &str, children: std::ops::Range<u8>, t0: i64) -> Value {
    let mut spans = Vec::new();
    if children.start == 0 {
        spans.push(otlp_span(
            service,
            [trace, "00000000000000aa", ""],
            "GET /",
            2,
            t0,
            50_000_000,
        ));
    }
    for i in children {
        let id = format!("00000000000000{:02x}", i + 1);
        let start = t0 + 1_000_000 * i64::from(i + 1);
        spans.push(otlp_span(
            service,
            [trace, &id, "00000000000000aa"],
            "call",
            3,
            start,
            1_000_000,
        ));
    }
    otlp_request(spans)
}

#[tokio::test]
async fn late_span_replaces_the_trace_row() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--provenance-idle", "1s"]).await;
    let trace = "11111111111111111111111111111111";
    let t0 = now_ns() - 2_000_000_000;
    server
        .send_otlp_json(&trace_spans(trace, "late-svc", 0..2, t0))
        .await;
    let one = format!("SELECT count(*) FROM traces WHERE trace_id = X'{trace}'");
    server.wait_count(&one, 1, 15).await;
    let spans = format!("SELECT span_count FROM traces WHERE trace_id = X'{trace}'");
    assert_eq!(server.count(&spans).await, 3);
    // The late span arrives after the idle window has completed the trace.
    server
        .send_otlp_json(&trace_spans(trace, "late-svc", 2..3, t0))
        .await;
    server.wait_count(&spans, 4, 15).await;
    assert_eq!(server.count(&one).await, 1);
    let versions = format!("SELECT count(*) FROM traces_versions WHERE trace_id = X'{trace}'");
    assert_eq!(server.count(&versions).await, 2);
    let cp =
        format!("SELECT count(DISTINCT version) FROM critical_path WHERE trace_id = X'{trace}'");
    assert_eq!(server.count(&cp).await, 1);
    assert!(server
        .metrics()
        .await
        .contains("meshtrace_provenance_late_merges_total 1"));
}

#[tokio::test]
async fn class_rules_put_applies_to_new_traces() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--provenance-idle", "1s"]).await;
    let (status, err) = server
        .put(
            "/api/v1/classes",
            r#"[{"class": "a"}, {"servce": "x", "class": "b"}]"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("rules[1]"), "{err}");
    assert!(err["error"].as_str().unwrap().contains("servce"), "{err}");
    let (status, err) = server.put("/api/v1/classes", r#"[{"service": "x"}]"#).await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("rules[0].class"),
        "{err}"
    );

    let rules = r#"[{"class": "checkout", "service": "checkout-svc", "route_prefix": "GET"}]"#;
    let (status, body) = server.put("/api/v1/classes", rules).await;
    assert_eq!(status, 200, "{body}");
    let (_, got) = server.get("/api/v1/classes").await;
    assert_eq!(got[0]["class"], "checkout");
    assert_eq!(got.as_array().unwrap().len(), 1);

    let t0 = now_ns() - 1_000_000_000;
    let a = "22222222222222222222222222222222";
    let b = "33333333333333333333333333333333";
    server
        .send_otlp_json(&trace_spans(a, "checkout-svc", 0..1, t0))
        .await;
    server
        .send_otlp_json(&trace_spans(b, "other-svc", 0..1, t0))
        .await;
    server
        .wait_count("SELECT count(*) FROM traces", 2, 15)
        .await;
    let class = |id: &str| format!("SELECT class FROM traces WHERE trace_id = X'{id}'");
    assert_eq!(server.sql(&class(a)).await[0][0], "checkout");
    assert_eq!(server.sql(&class(b)).await[0][0], "default");

    // The batch lookup the search page uses: rule-assigned classes, unknown IDs left out, and
    // a trace still open classified on the fly.
    let (c, d) = (
        "44444444444444444444444444444444",
        "55555555555555555555555555555555",
    );
    server
        .send_otlp_json(&trace_spans(c, "checkout-svc", 0..1, now_ns()))
        .await;
    server
        .send_otlp_json(&trace_spans(d, "other-svc", 0..2, now_ns()))
        .await;
    let unknown = "0123456789abcdef0123456789abcdef";
    let path = format!(
        "/api/v1/traces/classes?traceID={a}&traceID={b}&traceID={c}&traceID={d}&traceID={unknown}"
    );
    let (status, got) = server.get(&path).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["classes"][a]["class"], "checkout", "{got}");
    assert_eq!(got["classes"][a]["derived"], true, "{got}");
    assert_eq!(got["classes"][b]["class"], "default", "{got}");
    assert_eq!(got["classes"][c]["class"], "checkout", "{got}");
    assert_eq!(got["classes"][d]["class"], "default", "{got}");
    assert!(got["classes"].get(unknown).is_none(), "{got}");
    let (status, err) = server.get("/api/v1/traces/classes?traceID=zz").await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("traceID"), "{err}");
}

#[tokio::test]
async fn spans_replayed_after_a_crash_are_assembled() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--provenance-idle", "1s", "--flush-age", "1h"];
    let mut server = Server::start(dir.path(), &flags).await;
    let (status, _) = server
        .put("/api/v1/classes", r#"[{"class": "kept"}]"#)
        .await;
    assert_eq!(status, 200);
    let trace = "44444444444444444444444444444444";
    server
        .send_otlp_json(&trace_spans(trace, "replay-svc", 0..3, now_ns()))
        .await;
    // Killed before the idle window ends: the spans are only in the write-ahead log.
    server.crash_and_restart().await;
    let sql = format!("SELECT span_count FROM traces WHERE trace_id = X'{trace}'");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while server.sql(&sql).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "trace never derived");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(server.count(&sql).await, 4);
    let class = format!("SELECT class FROM traces WHERE trace_id = X'{trace}'");
    assert_eq!(server.sql(&class).await[0][0], "kept");
}

#[tokio::test]
async fn traces_flushed_before_a_crash_are_derived_again() {
    let dir = tempfile::tempdir().unwrap();
    // Spans go to Parquet at once, derived rows only after an hour: a crash loses the rows
    // buffered in memory while the spans are already stored and past the log's checkpoint.
    let config = dir.path().join("meshtrace.toml");
    std::fs::write(&config, "[provenance]\nflush_age = \"1h\"\n").unwrap();
    let config = config.to_str().unwrap();
    let flags = [
        "--config",
        config,
        "--provenance-idle",
        "1s",
        "--flush-age",
        "200ms",
    ];
    let mut server = Server::start(dir.path(), &flags).await;
    let trace = "66666666666666666666666666666666";
    server
        .send_otlp_json(&trace_spans(trace, "flushed-svc", 0..3, now_ns()))
        .await;
    let versions = format!("SELECT count(*) FROM traces_versions WHERE trace_id = X'{trace}'");
    server.wait_count(&versions, 1, 15).await;
    let spans = format!("SELECT count(*) FROM spans WHERE trace_id = X'{trace}'");
    assert_eq!(server.count(&spans).await, 4);

    server.crash_and_restart().await;
    // The row buffered before the crash is gone; the start-up repair derives the trace again
    // from its stored spans.
    server.wait_count(&versions, 1, 15).await;
    let row = format!("SELECT span_count, class FROM traces WHERE trace_id = X'{trace}'");
    let got = server.sql(&row).await;
    assert_eq!(got[0][0], 4, "{got:?}");
    assert_eq!(got[0][1], "default", "{got:?}");
}
