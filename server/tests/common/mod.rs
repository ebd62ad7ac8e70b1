//! Starts the real `meshtrace` binary on free ports with a temporary data directory, and talks
//! to it over HTTP.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub http: String,
    pub otlp: String,
    /// The OTLP gRPC address (also serving meshtrace.priorities.v1), as an http:// URL.
    pub grpc: String,
    pub dir: PathBuf,
    args: Vec<String>,
}

/// `n` distinct free ports: every listener is held until all are chosen, so none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

impl Server {
    /// Starts a server on `dir` with extra flags and waits until it is ready. A port chosen
    /// free can be taken by a parallel test before the server binds it, so a server that exits
    /// at start-up is tried again on fresh ports, three times in all.
    pub async fn start(dir: &Path, extra: &[&str]) -> Server {
        for attempt in 1..=3 {
            let mut server = Self::spawn_on_free_ports(dir, extra);
            match server.try_wait_ready().await {
                Ok(()) => return server,
                Err(status) if attempt < 3 => {
                    eprintln!("meshtrace exited at start-up ({status}); trying fresh ports");
                }
                Err(status) => panic!("meshtrace exited early: {status}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn spawn_on_free_ports(dir: &Path, extra: &[&str]) -> Server {
        let ports = free_ports(4);
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--otlp-grpc-listen".into(),
            addr(ports[0]),
            "--otlp-http-listen".into(),
            addr(ports[1]),
            "--zipkin-listen".into(),
            addr(ports[2]),
            "--http-listen".into(),
            addr(ports[3]),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server {
            child: spawn(&args),
            http: format!("http://{}", addr(ports[3])),
            otlp: format!("http://{}", addr(ports[1])),
            grpc: format!("http://{}", addr(ports[0])),
            dir: dir.to_path_buf(),
            args,
        }
    }

    async fn wait_ready(&mut self) {
        if let Err(status) = self.try_wait_ready().await {
            panic!("meshtrace exited early: {status}");
        }
    }

    /// Waits for `/readyz`; the exit status if the server stopped first.
    async fn try_wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/readyz", self.http);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("meshtrace not ready after 30s");
    }

    /// Kills the server at once (no graceful shutdown) and starts it again on the same data.
    pub async fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.args);
        self.wait_ready().await;
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::get(format!("{}{path}", self.http)).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .put(format!("{}{path}", self.http))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Rows of a SQL query (panics on error).
    pub async fn sql(&self, sql: &str) -> Vec<Value> {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/sql", self.http))
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{sql}: {body}");
        body["rows"].as_array().unwrap().clone()
    }

    /// The single integer a query returns.
    pub async fn count(&self, sql: &str) -> i64 {
        self.sql(sql).await[0][0].as_i64().unwrap()
    }

    /// Polls `sql` until its single integer equals `want` (or fails after `secs`).
    pub async fn wait_count(&self, sql: &str, want: i64, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = -1;
        while Instant::now() < deadline {
            last = self.count(sql).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{sql}: got {last}, want {want}");
    }

    /// POSTs an OTLP/JSON body to /v1/traces.
    pub async fn send_otlp_json(&self, body: &Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/traces", self.otlp))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(status.is_success(), "{status}: {}", r.text().await.unwrap());
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_meshtrace"))
        .args(args)
        .env("MESHTRACE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meshtrace")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unused_imports)] // not every test binary uses it
pub use meshtrace_model::time::now_unix_nanos as now_ns;

/// One OTLP/JSON span of `service`; `ids` are the trace, span and parent IDs in hex.
pub fn otlp_span(
    service: &str,
    ids: [&str; 3],
    name: &str,
    kind: i32,
    start_ns: i64,
    dur_ns: i64,
) -> Value {
    let [trace, span, parent] = ids;
    json!({
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace, "spanId": span, "parentSpanId": parent, "name": name, "kind": kind,
            "startTimeUnixNano": start_ns.to_string(),
            "endTimeUnixNano": (start_ns + dur_ns).to_string(),
        }]}]
    })
}

/// An OTLP/JSON request of resource spans.
pub fn otlp_request(resource_spans: Vec<Value>) -> Value {
    json!({ "resourceSpans": resource_spans })
}
