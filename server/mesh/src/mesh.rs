//! A running mesh: every service of a scenario on loopback, each behind its own sidecar
//! (inbound and egress listeners), the span exporter, and one priority poller per sidecar.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::export::{self, ExportStats, SpanSender};
use crate::priorities::{self, PriorityMode, PriorityTable};
use crate::proxy::{self, ProxyState};
use crate::queue::Gate;
use crate::scenario::Scenario;
use crate::service::{self, AppState};

/// How to run a mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub priorities: PriorityMode,
    /// meshtrace's OTLP gRPC endpoint (`http://127.0.0.1:4317`); `None` emits no spans.
    pub otlp_endpoint: Option<String>,
}

/// One sidecar as seen from outside.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub service: String,
    pub node_id: String,
    pub inbound: SocketAddr,
    pub table: Arc<PriorityTable>,
    pub gate: Arc<Gate>,
}

/// A running mesh.
pub struct Mesh {
    pub sidecars: BTreeMap<String, Sidecar>,
    spans: SpanSender,
    stop: CancellationToken,
    stop_export: CancellationToken,
    servers: Vec<tokio::task::JoinHandle<()>>,
    exporter: Option<tokio::task::JoinHandle<()>>,
}

async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let a = l.local_addr()?;
    Ok((l, a))
}

fn serve(
    l: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "mesh listener failed");
        }
    })
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .context("building an http client")
}

impl Mesh {
    /// Starts every service and sidecar of the scenario.
    pub async fn start(scenario: &Scenario, cfg: MeshConfig) -> anyhow::Result<Mesh> {
        let stop = CancellationToken::new();
        let stop_export = CancellationToken::new();
        let (spans, exporter) = match &cfg.otlp_endpoint {
            Some(e) => {
                let (s, t) = export::start(e.clone(), stop_export.clone());
                (s, Some(t))
            }
            None => (SpanSender::disabled(), None),
        };
        let mut bound = Vec::new();
        for _ in &scenario.services {
            bound.push((bind().await?, bind().await?, bind().await?));
        }
        let upstreams: Arc<BTreeMap<String, SocketAddr>> = Arc::new(
            scenario
                .services
                .iter()
                .zip(&bound)
                .map(|(s, (inb, _, _))| (s.name.clone(), inb.1))
                .collect(),
        );
        let (mut sidecars, mut servers) = (BTreeMap::new(), Vec::new());
        for (i, (spec, ((inb_l, inb), (egr_l, egr), (app_l, app)))) in
            scenario.services.iter().zip(bound).enumerate()
        {
            let node_id = format!(
                "sidecar~127.0.0.1~{}-v1-{i:04x}.default~default.svc.cluster.local",
                spec.name
            );
            let gate = Gate::new(spec.slots);
            let table = PriorityTable::new(scenario.levels, &cfg.priorities);
            let state = ProxyState {
                service: spec.name.clone(),
                node_id: node_id.clone(),
                app,
                gate: gate.clone(),
                table: table.clone(),
                upstreams: upstreams.clone(),
                client: client()?,
                spans: spans.clone(),
            };
            let (inbound_r, egress_r) = proxy::routers(state);
            servers.push(serve(inb_l, inbound_r, stop.clone()));
            servers.push(serve(egr_l, egress_r, stop.clone()));
            let app_state = AppState {
                spec: Arc::new(spec.clone()),
                egress: egr,
                client: client()?,
            };
            servers.push(serve(app_l, service::router(app_state), stop.clone()));
            if let PriorityMode::Meshtrace { base_url } = &cfg.priorities {
                servers.push(tokio::spawn(priorities::poll_loop(
                    base_url.clone(),
                    spec.name.clone(),
                    node_id.clone(),
                    table.clone(),
                    gate.clone(),
                    stop.clone(),
                )));
            }
            let sidecar = Sidecar {
                service: spec.name.clone(),
                node_id,
                inbound: inb,
                table,
                gate,
            };
            sidecars.insert(spec.name.clone(), sidecar);
        }
        tracing::info!(
            scenario = scenario.name,
            services = sidecars.len(),
            "mesh started"
        );
        Ok(Mesh {
            sidecars,
            spans,
            stop,
            stop_export,
            servers,
            exporter,
        })
    }

    /// The URL of a service's sidecar inbound side.
    pub fn url(&self, service: &str, path: &str) -> Option<String> {
        self.sidecars
            .get(service)
            .map(|s| format!("http://{}{path}", s.inbound))
    }

    /// The exporter's counters.
    pub fn export_stats(&self) -> Arc<ExportStats> {
        self.spans.stats().clone()
    }

    /// Stops every listener and poller, then flushes the remaining spans.
    pub async fn stop(mut self) -> Arc<ExportStats> {
        self.stop.cancel();
        for t in self.servers.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("a mesh listener did not stop in 5s");
            }
        }
        self.stop_export.cancel();
        if let Some(t) = self.exporter.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        self.spans.stats().clone()
    }
}
