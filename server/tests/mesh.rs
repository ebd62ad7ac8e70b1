//! The closed loop on a simulated mesh: the priority experiment through the real binary
//! (static table and meshtrace's own priorities), and every sidecar span of each shipped
//! scenario (Bookinfo, Online Boutique, TrainTicket) arriving in meshtrace with complete
//! provenance.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Server;
use meshtrace_mesh::scenario::Workload;
use meshtrace_mesh::{experiment, Mesh, MeshConfig, PriorityMode, Scenario};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The experiments measure latency: run them one at a time.
static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `meshtrace experiment priority` and returns results.json. 12 s runs: the 3 s warm-up
/// lets the fresh server of the "on" run learn the foreground class before the burst.
fn experiment_results(extra: &[&str]) -> Value {
    let _one_at_a_time = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let scenario = scenario_path("bookinfo");
    let mut args = vec![
        "experiment",
        "priority",
        "--scenario",
        scenario.to_str().unwrap(),
        "--duration",
        "12s",
        "--quiet",
        "--out",
        out.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_meshtrace"))
        .args(&args)
        .env("MESHTRACE_LOG", "warn")
        .status()
        .expect("run meshtrace experiment");
    assert!(status.success(), "experiment failed: {status}");
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("interactive"));
    serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap()
}

fn class<'a>(results: &'a Value, priorities: bool, class: &str) -> &'a Value {
    results["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["priorities"] == priorities)
        .unwrap()["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == class)
        .unwrap()
}

/// The interactive p99 with priorities on and off.
fn p99s(results: &Value) -> (f64, f64) {
    let p99 = |on| {
        class(results, on, "interactive")["p99_ms"]
            .as_f64()
            .unwrap()
    };
    (p99(true), p99(false))
}

/// Runs the experiment, and once more if the first run shows no gain: a p99 of about a hundred
/// samples on a shared 2-core machine can be spoiled by one stall, and a real regression
/// fails both runs.
fn experiment_with_gain(extra: &[&str]) -> Value {
    let first = experiment_results(extra);
    let (on, off) = p99s(&first);
    if on < 0.8 * off {
        return first;
    }
    eprintln!("first run showed no gain (p99 on {on} ms, off {off} ms); running once more");
    experiment_results(extra)
}

fn assert_priorities_help(results: &Value) {
    let (p99_on, p99_off) = p99s(results);
    assert!(
        p99_on < 0.8 * p99_off,
        "interactive p99 on {p99_on} ms, off {p99_off} ms: {results:#}"
    );
    // The shared hop was saturated: batch really competed in both runs.
    for p in [false, true] {
        assert!(class(results, p, "batch")["achieved_rps"].as_f64().unwrap() > 10.0);
        assert!(
            class(results, p, "interactive")["achieved_rps"]
                .as_f64()
                .unwrap()
                > 5.0
        );
    }
    assert!(results["unloaded_p99_ms"]["interactive"].as_f64().unwrap() > 0.0);
    // The shared services' measured utilization: high under the burst, never above 1.
    for run in results["runs"].as_array().unwrap() {
        let u = run["utilization"].as_object().unwrap();
        let names: Vec<&str> = u.keys().map(String::as_str).collect();
        assert_eq!(names, ["ratings", "reviews"], "{results:#}");
        let u: Vec<f64> = u.values().map(|v| v.as_f64().unwrap()).collect();
        assert!(u.iter().all(|v| *v > 0.0 && *v <= 1.001), "{results:#}");
        // The batch load saturates reviews.
        assert!(u.iter().any(|v| *v > 0.8), "{results:#}");
    }
    assert_eq!(results["sweep"].as_array().map(Vec::len), Some(0));
}

/// The queueing effect alone: the "on" run's sidecars get a fixed table (the documented
/// `--static-priorities` hook), interactive above batch.
#[test]
fn static_priorities_cut_interactive_p99() {
    let results = experiment_with_gain(&["--static-priorities"]);
    assert_eq!(results["priority_source"], "static");
    assert_priorities_help(&results);
}

/// The closed loop: objectives set through the API, sidecars long-polling meshtrace's
/// priorities.
#[test]
fn meshtrace_priorities_cut_interactive_p99() {
    let results = experiment_with_gain(&[]);
    assert_eq!(results["priority_source"], "meshtrace");
    assert_priorities_help(&results);
    // The "on" run starts against a fresh meshtrace: the loop must learn the classes and
    // react to the burst, so the reaction is measured (not zero because of earlier runs).
    let applied = results["reaction_s"]["priorities_applied"].as_f64();
    assert!(applied.is_some_and(|s| s > 0.0), "{results:#}");
    // Window end -> published and -> applied at the last sidecar (loose bounds: timing).
    let published = results["publish_latency_s"]
        .as_f64()
        .expect("publish latency");
    let visible = results["visible_latency_s"]
        .as_f64()
        .expect("visible latency");
    assert!((0.0..5.0).contains(&published), "{results:#}");
    assert!(visible > 0.0 && visible < 5.0, "{results:#}");
    assert!(results["propagation"]["applied_versions"].as_u64().unwrap() > 0);
}

fn scenario_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("mesh/scenarios/{name}.toml"))
}

/// A lighter load of a shipped scenario for the span-completeness check.
fn light(name: &str) -> Scenario {
    let mut s = Scenario::load(&scenario_path(name)).unwrap();
    for c in &mut s.classes {
        c.workload = match c.workload {
            Workload::Open { .. } => Workload::Open {
                rps: 10.0,
                ramp_to_rps: None,
            },
            Workload::Closed { .. } => Workload::Closed {
                concurrency: 2,
                think_ms: 50.0,
            },
        };
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bookinfo_sidecar_span_arrives_with_complete_provenance() {
    // Bookinfo calls every hop: interactive has 7 sidecar spans a request (3 hops, client
    // and server, plus the entry); batch 3 (reviews in, reviews -> ratings out, ratings in).
    every_sidecar_span_arrives("bookinfo", Some(&[("interactive", 7), ("batch", 3)])).await;
}

/// Boutique and TrainTicket have probabilistic calls: the span count per request varies,
/// every other check is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_boutique_sidecar_span_arrives_with_complete_provenance() {
    every_sidecar_span_arrives("boutique", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_trainticket_sidecar_span_arrives_with_complete_provenance() {
    every_sidecar_span_arrives("trainticket", None).await;
}

/// Runs a light load of a shipped scenario for 3 s against a fresh meshtrace and checks
/// that every span the sidecars emitted was exported and stored, and that every trace is
/// assembled complete with one root, no orphan and its class. `spans_per_request`, when
/// every call is certain, gives the exact number of sidecar spans per request of a class.
async fn every_sidecar_span_arrives(name: &str, spans_per_request: Option<&[(&str, u64)]>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--provenance-idle", "1s"]).await;
    let grpc = server.grpc.clone();
    let scenario = light(name);
    let mesh = Mesh::start(
        &scenario,
        MeshConfig {
            priorities: PriorityMode::Off,
            otlp_endpoint: Some(grpc),
        },
    )
    .await
    .unwrap();
    let targets = experiment::targets(&mesh, &scenario, Duration::ZERO, true);
    let load = meshtrace_mesh::workload::run(
        targets,
        Duration::from_secs(3),
        Duration::ZERO,
        CancellationToken::new(),
    )
    .await;
    let stats = mesh.stop().await;
    let (emitted, exported) = (
        stats.emitted.load(Ordering::Relaxed),
        stats.exported.load(Ordering::Relaxed),
    );
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(emitted, exported);
    let requests: u64 = load.values().map(|r| r.ok).sum();
    assert!(requests > 20, "{name}: only {requests} requests answered");
    assert!(
        load.values().all(|r| r.ok > 0),
        "{name}: a class got no answer"
    );
    if let Some(per) = spans_per_request {
        let want: u64 = per.iter().map(|(c, n)| load[*c].ok * n).sum();
        assert_eq!(exported, want);
    } else {
        // Every entry service makes at least one certain call: the entry's SERVER span, then
        // a CLIENT and a SERVER span for the call.
        assert!(exported >= 3 * requests, "{name}: {exported} spans");
    }
    server
        .wait_count("SELECT count(*) FROM spans", exported as i64, 30)
        .await;
    let traces = server
        .count("SELECT count(DISTINCT trace_id) FROM spans")
        .await;
    assert_eq!(traces as u64, requests);
    // Every trace assembled, complete, one root, no orphan, with its class.
    server
        .wait_count(
            "SELECT count(*) FROM traces WHERE complete = true AND roots = 1 AND orphans = 0",
            traces,
            30,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.count("SELECT count(*) FROM traces").await != traces {
        assert!(Instant::now() < deadline, "extra trace rows");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let classes = server
        .sql("SELECT class, count(*) FROM traces GROUP BY class ORDER BY class")
        .await;
    let by_class: Vec<(String, u64)> = classes
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = load.iter().map(|(c, r)| (c.clone(), r.ok)).collect();
    assert_eq!(by_class, want, "{name}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("meshtrace_provenance_orphans_total 0"),
        "{metrics}"
    );
    // The Envoy attributes were promoted into their columns.
    let bad = server
        .count(
            "SELECT count(*) FROM spans WHERE component <> 'proxy' OR node_id IS NULL \
             OR upstream_cluster IS NULL OR request_class IS NULL OR http_status_code <> 200",
        )
        .await;
    assert_eq!(bad, 0);
}
