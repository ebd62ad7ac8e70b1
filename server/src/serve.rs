//! `meshtrace serve`: recovery at start-up, the four listeners, background flushing and
//! retention, and graceful shutdown.
//!
//! Start-up order matters for durability: open the store (catalog and checkpoint), open the
//! write-ahead log, re-buffer every logged record past the checkpoint, and only then listen.
//! Shutdown reverses it: stop accepting, drain the log, flush the buffer to Parquet, and
//! truncate the log through the new checkpoint.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshtrace_collector::metrics::IngestMetrics;
use meshtrace_collector::receiver::{grpc, http, Ingest};
use meshtrace_collector::wal::{FsyncPolicy, Wal, WalConfig};
use meshtrace_storage::{Store, StoreConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use meshtrace_query::Queries;

use crate::api::access::AllowedHosts;
use crate::api::timing::RequestTiming;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::listener::{serve_http, Gate};
use crate::metrics::StoreMetrics;
use crate::pipeline::Pipeline;
use crate::priorities::publish::WatchService;
use crate::priorities::{self, Priorities, Recorder};
use crate::provenance::Provenance;

/// A running server: its store and log, for callers (demo, bench) that embed it.
pub struct Running {
    pub opened: Opened,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The store and the log, opened and recovered, before any listener.
pub struct Opened {
    pub store: Store,
    pub wal: Wal,
    pub provenance: Provenance,
    /// Where provenance records completed traces for the budgets engine.
    pub recorder: Recorder,
    next_seq: u64,
    provenance_enabled: bool,
}

impl Opened {
    /// The sink that writes to this log and store.
    pub fn pipeline(&self) -> Pipeline {
        let pipeline = Pipeline::new(self.wal.clone(), self.store.clone(), self.next_seq);
        match self.provenance_enabled {
            true => pipeline.with_provenance(self.provenance.feed()),
            false => pipeline,
        }
    }

    /// Drains the log, flushes the buffer to Parquet and truncates the log.
    pub async fn close(self) -> anyhow::Result<()> {
        self.wal
            .shutdown()
            .await
            .context("closing the write-ahead log")?;
        // Appends completed by the drain are delivered by their tasks; give them a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Completes the open traces and writes their derived rows before the final flush.
        self.provenance.close().await;
        if let Some(checkpoint) = self.store.flush().await.context("final flush")? {
            self.wal.truncate_through(checkpoint)?;
        }
        Ok(())
    }
}

/// Opens the store and the log and re-buffers what the log holds past the checkpoint.
pub async fn open(config: &Config) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = Store::open(StoreConfig {
        data_dir: config.data_dir.clone(),
        catalog_url: config.catalog_url.clone(),
        flush_max_rows: config.storage.flush_rows,
        flush_max_age: config.storage.flush_age,
        retention: config.storage.retention,
        row_group_rows: config.storage.row_group_rows,
        sql: config.query.sql_limits(),
        names: meshtrace_storage::NameLimits {
            max_services: config.storage.max_services,
            max_operations_per_service: config.storage.max_operations_per_service,
        },
    })
    .await
    .context("opening the store")?;
    let checkpoint = store.checkpoint().await?;
    let recorder = Recorder::new(priorities::window_config(&config.budgets));
    let provenance = Provenance::start(
        &store,
        &config.provenance,
        config.storage.retention,
        config.storage.row_group_rows,
        Some(Arc::new(recorder.clone())),
    )
    .await?;
    let mut wal_config = WalConfig::new(config.data_dir.join("wal"));
    wal_config.queue_depth = config.wal.queue_depth;
    wal_config.segment_bytes = config.wal.segment_bytes;
    wal_config.fsync = if config.wal.fsync {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Never
    };
    let (wal, replayed) =
        Wal::open_at(wal_config, checkpoint).context("opening the write-ahead log")?;
    wal.advance_past(checkpoint);
    // Segment files without a catalog row: deleted when the log replays them, else quarantined.
    let log_first = replayed.first().map_or(wal.last_seq() + 1, |r| r.seq);
    store.settle_orphans(log_first).await?;
    let (mut spans, records) = (0, replayed.len());
    for record in replayed.into_iter().filter(|r| r.seq > checkpoint) {
        store.append(record.seq, &record.spans)?;
        spans += record.spans.len();
        if config.provenance.enabled {
            provenance.replay(record.spans).await;
        }
    }
    tracing::info!(
        checkpoint,
        records,
        spans,
        "recovered from the write-ahead log"
    );
    if config.provenance.enabled {
        // In the background: the server takes traffic meanwhile.
        let (p, settings) = (provenance.clone(), config.provenance.clone());
        tokio::spawn(async move {
            match p.repair(&settings).await {
                Ok(0) => {}
                Ok(traces) => {
                    tracing::info!(traces, "re-deriving stored traces without derived rows")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for traces without derived rows")
                }
            }
        });
    }
    let next_seq = wal.last_seq().max(checkpoint) + 1;
    Ok(Opened {
        store,
        wal,
        provenance,
        recorder,
        next_seq,
        provenance_enabled: config.provenance.enabled,
    })
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Starts everything and returns once every listener is bound and ready.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let opened = open(config).await?;
    let pipeline = opened.pipeline();
    let (store, wal) = (opened.store.clone(), opened.wal.clone());
    let mut registry = Registry::default();
    let ingest_metrics = IngestMetrics::register(&mut registry);
    let timing = RequestTiming::register(&mut registry);
    let auth = config.auth.build().context("reading the auth tokens")?;
    if !auth.enabled() {
        tracing::warn!(
            "no auth tokens configured: anyone who reaches the ports may send spans and read; \
             changes (classes, objectives, overrides) and SQL are served to loopback clients only"
        );
    }
    let ingest = Ingest::new(Arc::new(pipeline), ingest_metrics, config.ingest.clone())
        .with_auth(auth.clone());
    let shutdown = CancellationToken::new();
    let priorities = Priorities::start(
        &store,
        &config.budgets,
        &opened.provenance,
        opened.recorder.clone(),
        shutdown.child_token(),
    )
    .await?;
    registry.register_collector(Box::new(StoreMetrics {
        store: store.clone(),
        wal: wal.clone(),
    }));
    registry.register_collector(Box::new(opened.provenance.metrics()));
    registry.register_collector(Box::new(priorities.metrics()));
    let refused = Counter::default();
    registry.register(
        "meshtrace_connections_refused",
        "Connections closed as soon as accepted because their listener was at max_connections",
        refused.clone(),
    );
    let state = ApiState {
        queries: Queries::new(store.clone(), config.query.clone()),
        provenance: opened.provenance.clone(),
        priorities: priorities.clone(),
        registry: Arc::new(registry),
        ready: Arc::default(),
    };
    let l = &config.listen;
    let security = api::Security {
        auth: auth.clone(),
        hosts: AllowedHosts::new(l.http, &config.auth.allowed_hosts),
        cors_origins: config.auth.cors_origins.clone(),
    };
    let http_routers = [
        (l.otlp_http, "otlp http", http::otlp_router(ingest.clone())),
        (l.zipkin, "zipkin", http::zipkin_router(ingest.clone())),
        (
            l.http,
            "query http",
            api::router(state.clone(), timing, security),
        ),
    ];
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(l.limits.max_streams))
        .max_connection_age(l.limits.max_connection_age)
        .max_connection_age_grace(Duration::from_secs(10))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(grpc::service(ingest.clone()))
        .add_service(WatchService::server(priorities, auth));
    let tls = config.tls.acceptor().context("setting up TLS")?;
    let mut tasks = listen(l, tls, grpc, http_routers, refused, &shutdown).await?;
    tasks.push(tokio::spawn(background(
        store.clone(),
        wal.clone(),
        shutdown.clone(),
    )));
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        otlp_grpc = %l.otlp_grpc, otlp_http = %l.otlp_http, zipkin = %l.zipkin, http = %l.http,
        data_dir = %config.data_dir.display(), "meshtrace is serving"
    );
    Ok(Running {
        opened,
        shutdown,
        tasks,
    })
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

/// Flushes by size or age and applies retention until shutdown.
async fn background(store: Store, wal: Wal, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_retention = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match store.flush_if_due().await {
            Ok(Some(checkpoint)) => {
                if let Err(e) = wal.truncate_through(checkpoint) {
                    tracing::warn!(error = %e, "could not truncate the write-ahead log");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "flush failed; spans stay in the write-ahead log")
            }
        }
        if last_retention.elapsed() > Duration::from_secs(60) {
            last_retention = std::time::Instant::now();
            match store.apply_retention().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(segments = n, "retention deleted segments"),
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    }
}

impl Running {
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
        self.opened.close().await?;
        tracing::info!("meshtrace stopped cleanly");
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
