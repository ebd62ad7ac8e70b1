//! `meshtrace serve`: the tenants' engines (each recovered before any listener, see
//! `crate::engine`), the four listeners, and graceful shutdown.
//!
//! Shutdown reverses start-up: stop accepting, then stop every engine (drain its log, flush
//! its buffer to Parquet, truncate its log through the new checkpoint).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshtrace_collector::metrics::IngestMetrics;
use meshtrace_collector::receiver::{grpc, http, Ingest};
use meshtrace_collector::sink::TenantSinks;
use meshtrace_model::memory::MemoryBudget;
use meshtrace_model::tenant::TenantId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::api::access::AllowedHosts;
use crate::api::timing::RequestTiming;
use crate::config::Config;
use crate::engine::Engine;
pub use crate::engine::{open, Opened};
use crate::listener::{serve_http, Gate};
use crate::priorities::publish::WatchService;
use crate::tenants::{self, Tenants};

/// A running server: its tenants' engines, for callers (demo, bench) that embed it.
pub struct Running {
    pub tenants: Tenants,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Starts everything and returns once every listener is bound and ready.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let mut registry = Registry::default();
    let ingest_metrics = IngestMetrics::register(&mut registry);
    let timing = RequestTiming::register(&mut registry);
    let refused = Counter::default();
    registry.register(
        "meshtrace_connections_refused",
        "Connections closed as soon as accepted because their listener was at max_connections",
        refused.clone(),
    );
    let auth = config.auth.build().context("reading the auth tokens")?;
    anyhow::ensure!(
        !auth.uses_client_certs() || config.tls.client_ca.is_some(),
        "[[auth.tokens]] entries with a client_cert need [tls] client_ca, which verifies the \
         client certificates they name"
    );
    if !auth.enabled() {
        tracing::warn!(
            "no auth tokens configured: anyone who reaches the ports may send spans and read; \
             changes (classes, objectives, overrides) and SQL are served to loopback clients only"
        );
    }
    let shutdown = CancellationToken::new();
    let memory = MemoryBudget::new(config.memory.budget_mib.saturating_mul(1 << 20));
    warn_if_fixed_memory_passes_budget(config);
    let sampler = crate::memory::start(memory.clone(), &mut registry, shutdown.clone());
    let single = TenantId::single();
    let single =
        Engine::start(single, config, registry, timing.clone(), &memory, &shutdown).await?;
    let tenants = Tenants::start(
        config,
        Arc::new(single),
        timing,
        memory.clone(),
        shutdown.clone(),
    )
    .await?;
    let sinks: Arc<dyn TenantSinks> = Arc::new(tenants.clone());
    let ingest = Ingest::with_tenants(sinks, ingest_metrics, config.ingest.clone())
        .with_auth(auth.clone())
        .with_memory(memory);
    let l = &config.listen;
    let security = api::Security {
        auth: auth.clone(),
        hosts: AllowedHosts::new(l.http, &config.auth.allowed_hosts),
        cors_origins: config.auth.cors_origins.clone(),
    };
    let query = api::secure(tenants::router(tenants.clone()), security);
    let http_routers = [
        (l.otlp_http, "otlp http", http::otlp_router(ingest.clone())),
        (l.zipkin, "zipkin", http::zipkin_router(ingest.clone())),
        (l.http, "query http", query),
    ];
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(l.limits.max_streams))
        .max_connection_age(l.limits.max_connection_age)
        .max_connection_age_grace(Duration::from_secs(10))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(grpc::service(ingest.clone()))
        .add_service(WatchService::server(Arc::new(tenants.clone()), auth));
    let tls = config.tls.acceptor().context("setting up TLS")?;
    let mut tasks = listen(l, tls, grpc, http_routers, refused, &shutdown).await?;
    tasks.push(sampler);
    let engine = tenants.single();
    engine.join_cluster(&config.provenance).await?;
    engine.set_ready();
    tracing::info!(
        otlp_grpc = %l.otlp_grpc, otlp_http = %l.otlp_http, zipkin = %l.zipkin, http = %l.http,
        data_dir = %config.data_dir.display(), "meshtrace is serving"
    );
    Ok(Running {
        tenants,
        shutdown,
        tasks,
    })
}

/// Warns when what one engine may hold for queries ([query] memory_mib and graph_cache_mib)
/// already passes the point where the memory budget refuses work: queries alone would stop
/// ingest.
fn warn_if_fixed_memory_passes_budget(config: &Config) {
    let budget = config.memory.budget_mib;
    let fixed = (config.query.memory_mib + config.query.graph_cache_mib) as u64;
    if budget > 0 && fixed >= meshtrace_model::memory::refusal_point(budget) {
        tracing::warn!(
            budget_mib = budget,
            query_memory_mib = config.query.memory_mib,
            graph_cache_mib = config.query.graph_cache_mib,
            "[query] memory_mib and graph_cache_mib together pass seven eighths of [memory] \
             budget_mib: one large query can make ingest refuse spans; lower them or raise the budget"
        );
    }
}

/// Binds every listener behind its connection gate and serves it until `shutdown`.
async fn listen(
    l: &crate::config::Listen,
    tls: Option<tokio_rustls::TlsAcceptor>,
    grpc: tonic::transport::server::Router,
    http_routers: [(SocketAddr, &'static str, axum::Router); 3],
    refused: Counter,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let gate = |listener| Gate::new(listener, &l.limits, tls.clone(), refused.clone());
    let grpc_gate = gate(bind(l.otlp_grpc, "otlp grpc").await?);
    let mut tasks = Vec::new();
    let token = shutdown.clone();
    let incoming = grpc_gate.incoming(token.clone());
    tasks.push(tokio::spawn(async move {
        grpc.serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await
            .context("otlp grpc server")
    }));
    for (addr, what, router) in http_routers {
        let gate = gate(bind(addr, what).await?);
        let (token, limits) = (shutdown.clone(), l.limits.clone());
        tasks.push(tokio::spawn(async move {
            serve_http(gate, router, &limits, token).await;
            Ok(())
        }));
    }
    Ok(tasks)
}

impl Running {
    /// The default tenant's store and log.
    pub fn opened(&self) -> &Opened {
        &self.tenants.single().opened
    }

    /// Stops accepting, drains the log, flushes to Parquet and truncates the log.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        // Listeners wait for open requests; a client that never finishes its request must not
        // hold shutdown (and the final flush) up forever.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for mut task in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "task ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "task panicked"),
                Err(_) => {
                    tracing::warn!("a listener still had open requests after 10 s; closing it");
                    task.abort();
                }
            }
        }
        // Cluster mode: every engine stops consuming before any flushes and leaves.
        self.tenants.stop_consuming().await;
        self.tenants.stop_others().await;
        if let Err(e) = self.tenants.single().stop().await {
            // A full disk or a lost catalog: what was acknowledged is in the write-ahead log
            // (or JetStream) and is stored at the next start. Not a crash: exit as usual.
            tracing::error!(
                error = format!("{e:#}"),
                "could not flush everything before stopping; the acknowledged spans stay in the \
                 write-ahead log and are stored at the next start"
            );
        }
        tracing::info!("meshtrace stopped");
        Ok(())
    }
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = start(&config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
