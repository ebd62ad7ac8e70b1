//! `meshtrace serve`: recovery at start-up, the four listeners, background flushing and
//! retention, and graceful shutdown.
//!
//! Start-up order matters for durability: open the store (catalog and checkpoint), open the
//! write-ahead log, re-buffer every logged record past the checkpoint, and only then listen.
//! Shutdown reverses it: stop accepting, drain the log, flush the buffer to Parquet, and
//! truncate the log through the new checkpoint.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use meshtrace_collector::dedup::{retain_flagged, Dedup};
use meshtrace_collector::metrics::IngestMetrics;
use meshtrace_collector::receiver::{grpc, http, Ingest};
use meshtrace_collector::wal::{FsyncPolicy, Wal, WalConfig};
use meshtrace_collector::SpanSink;
use meshtrace_model::Span;
use meshtrace_storage::{DerivedStore, Store, StoreConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use meshtrace_query::Queries;

use crate::api::access::AllowedHosts;
use crate::api::timing::RequestTiming;
use crate::api::{self, ApiState};
use crate::cluster;
use crate::config::Config;
use crate::health::{Backoff, Health};
use crate::listener::{serve_http, Gate};
use crate::metrics::StoreMetrics;
use crate::pipeline::Pipeline;
use crate::priorities::publish::WatchService;
use crate::priorities::{self, Priorities, Recorder};
use crate::provenance::{Provenance, TraceObserver};

/// A running server: its store and log, for callers (demo, bench) that embed it.
pub struct Running {
    pub opened: Opened,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Cluster mode: the leases and partition consumers.
    node: Option<cluster::Node>,
}

/// The store and the log, opened and recovered, before any listener.
pub struct Opened {
    pub store: Store,
    /// The write-ahead log; `None` in cluster mode, where JetStream takes its place.
    pub wal: Option<Wal>,
    /// Cluster mode: the checked connections to NATS and the object store.
    pub cluster: Option<cluster::Connected>,
    pub provenance: Provenance,
    /// Where provenance records completed traces for the budgets engine.
    pub recorder: Recorder,
    next_seq: u64,
    provenance_enabled: bool,
    /// The window of recent span fingerprints, filled by replay (see [`Dedup`]).
    pub dedup: Arc<Mutex<Dedup>>,
    max_buffered_rows: usize,
}

impl Opened {
    /// The sink that writes to this log and store (not in cluster mode: see [`Opened::sink`]).
    pub fn pipeline(&self) -> anyhow::Result<Pipeline> {
        let Some(wal) = &self.wal else {
            anyhow::bail!(
                "a cluster node has no local write-ahead log; send spans to its receivers"
            );
        };
        let (store, dedup) = (self.store.clone(), self.dedup.clone());
        let pipeline = Pipeline::new(wal.clone(), store, self.next_seq, dedup)
            .with_max_buffered_rows(self.max_buffered_rows);
        Ok(match self.provenance_enabled {
            true => pipeline.with_provenance(self.provenance.feed()),
            false => pipeline,
        })
    }

    /// Where receivers hand spans: the log and store, or in cluster mode the span stream.
    pub fn sink(&self) -> anyhow::Result<Arc<dyn SpanSink>> {
        Ok(match &self.cluster {
            Some(c) => Arc::new(c.sink()),
            None => Arc::new(self.pipeline()?),
        })
    }

    /// Drains the log, flushes the buffer to Parquet and truncates the log.
    pub async fn close(self) -> anyhow::Result<()> {
        if let Some(wal) = &self.wal {
            // A log that failed keeps what it acknowledged on disk; flush what is buffered.
            if let Err(e) = wal.shutdown().await {
                tracing::warn!(error = %e, "the write-ahead log did not close cleanly");
            }
        }
        // Appends completed by the drain are delivered by their tasks; give them a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Completes the open traces and writes their derived rows before the final flush.
        self.provenance.close().await;
        let flushed = self.store.flush().await.context("final flush");
        if let Ok(Some(checkpoint)) = &flushed {
            if let Some(wal) = &self.wal {
                wal.truncate_through(*checkpoint)?;
            }
        }
        // Closing the pool lets SQLite fold its own write-ahead file into catalog.db, so the
        // file alone is the whole catalog once the process is gone (an operator's backup copy).
        self.store.close().await;
        flushed.map(|_| ())
    }
}

/// The store's settings from the server's.
fn store_config(config: &Config) -> StoreConfig {
    StoreConfig {
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
        compact_rows: config.storage.compact_rows,
        // Longer than any query may read the merged files.
        compact_grace: (StoreConfig::default().compact_grace).max(config.query.sql_timeout * 2),
        cluster_node: None,
    }
}

/// Starts provenance on the store. Completed traces go to the budgets' recorder, or in
/// cluster mode to `forward` (which shares them with every node's recorder).
async fn start_provenance(
    config: &Config,
    store: &Store,
    forward: Option<Arc<dyn TraceObserver>>,
) -> anyhow::Result<(Provenance, Recorder)> {
    let recorder = Recorder::new(priorities::window_config(&config.budgets));
    let observer = forward.unwrap_or_else(|| Arc::new(recorder.clone()));
    let provenance = Provenance::start(
        store,
        &config.provenance,
        config.storage.retention,
        config.storage.row_group_rows,
        Some(observer),
    )
    .await?;
    Ok((provenance, recorder))
}

/// Cluster mode: checks NATS and the object store, opens the store on them and the
/// PostgreSQL catalog. Nothing is replayed: the partitions' consumers do that once claimed.
async fn open_cluster(config: &Config) -> anyhow::Result<Opened> {
    let connected = cluster::connect(config).await?;
    let mut store_cfg = store_config(config);
    store_cfg.cluster_node = Some(connected.node.clone());
    let catalog = config
        .catalog_url
        .as_deref()
        .map(mask_password)
        .unwrap_or_default();
    let store = Store::open_with_object_store(store_cfg, connected.object_store.clone())
        .await
        .with_context(|| format!("cannot reach the catalog at {catalog}"))?;
    let forward: Arc<dyn TraceObserver> = connected.forwarder.clone();
    let (provenance, recorder) = start_provenance(config, &store, Some(forward)).await?;
    Ok(Opened {
        store,
        wal: None,
        cluster: Some(connected),
        provenance,
        recorder,
        next_seq: 0,
        provenance_enabled: config.provenance.enabled,
        // JetStream's duplicate window does this in cluster mode.
        dedup: Arc::new(Mutex::new(Dedup::new(0))),
        max_buffered_rows: config.storage.max_buffered_rows,
    })
}

/// `url` with its password, if any, replaced by `***`, for messages.
fn mask_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Opens the store and the log and re-buffers what the log holds past the checkpoint (or, in
/// cluster mode, connects to the cluster's dependencies).
pub async fn open(config: &Config) -> anyhow::Result<Opened> {
    if config.cluster.name.is_some() {
        return open_cluster(config).await;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = Store::open(store_config(config))
        .await
        .context("opening the store")?;
    let checkpoint = store.checkpoint().await?;
    let (provenance, recorder) = start_provenance(config, &store, None).await?;
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
    // Segment files missing or unreadable: rebuilt from the log when it holds them.
    let log_holds: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
    store.check_segments(&log_holds).await?;
    // Segment files without a catalog row: deleted when intact committed segments or the log
    // hold their spans, else quarantined (after the check, so damaged segments do not count).
    let log_first = replayed.first().map_or(wal.last_seq() + 1, |r| r.seq);
    store.settle_orphans(log_first).await?;
    let mut dedup = Dedup::new(config.storage.dedup_window_spans);
    let (mut spans, records) = (0, replayed.len());
    for record in replayed {
        let stored = record.seq <= checkpoint && !store.rebuilding(record.seq);
        let Some(kept) = replay_one(&mut dedup, stored, record.spans) else {
            continue;
        };
        store.append(record.seq, &kept)?;
        spans += kept.len();
        if config.provenance.enabled {
            provenance.replay(kept).await;
        }
    }
    tracing::info!(
        checkpoint,
        records,
        spans,
        duplicates = dedup.duplicates,
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
        wal: Some(wal),
        cluster: None,
        provenance,
        recorder,
        next_seq,
        provenance_enabled: config.provenance.enabled,
        dedup: Arc::new(Mutex::new(dedup)),
        max_buffered_rows: config.storage.max_buffered_rows,
    })
}

/// One replayed record through the dedup window: records already `stored` in Parquet only
/// fill it; the others come back without the spans it has seen.
fn replay_one(dedup: &mut Dedup, stored: bool, spans: Vec<Span>) -> Option<Vec<Span>> {
    if !dedup.enabled() {
        return (!stored).then_some(spans);
    }
    let fingerprints = dedup.fingerprinter().of(&spans);
    if stored {
        dedup.remember(&fingerprints);
        return None;
    }
    match dedup.admit(&fingerprints) {
        None => Some(spans),
        Some(keep) => Some(retain_flagged(&spans, &keep)),
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Starts everything and returns once every listener is bound and ready.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let opened = open(config).await?;
    let sink = opened.sink()?;
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
    let ingest = Ingest::new(sink, ingest_metrics, config.ingest.clone()).with_auth(auth.clone());
    let shutdown = CancellationToken::new();
    let priorities = Priorities::start(
        &store,
        &config.budgets,
        &opened.provenance,
        opened.recorder.clone(),
        // In cluster mode the elected node leads; the others follow its published sets.
        opened.cluster.is_none(),
        shutdown.child_token(),
    )
    .await?;
    registry.register_collector(Box::new(StoreMetrics {
        store: store.clone(),
        wal: wal.clone(),
        dedup: opened.dedup.clone(),
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
        health: Arc::default(),
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
        state.health.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(maintenance(
        store.clone(),
        state.queries.clone(),
        opened.provenance.derived().clone(),
        shutdown.clone(),
    )));
    let node = match &opened.cluster {
        Some(c) => Some(
            c.start(cluster::Shared {
                store: store.clone(),
                provenance: opened.provenance.clone(),
                assemble: config.provenance.enabled,
                priorities: state.priorities.clone(),
                recorder: opened.recorder.clone(),
                ready: state.ready.clone(),
            })
            .await?,
        ),
        None => None,
    };
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        otlp_grpc = %l.otlp_grpc, otlp_http = %l.otlp_http, zipkin = %l.zipkin, http = %l.http,
        data_dir = %config.data_dir.display(), "meshtrace is serving"
    );
    Ok(Running {
        opened,
        shutdown,
        tasks,
        node,
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

/// Flushes by size or age (backing off while flushes fail), applies retention and keeps
/// `health` current until shutdown.
async fn background(
    store: Store,
    wal: Option<Wal>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_retention = std::time::Instant::now() - Duration::from_secs(3600);
    let mut retry = Backoff::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        health.set(storage_problem(&store, wal.as_ref()));
        if retry.ready() {
            flush_due(&store, wal.as_ref(), &mut retry).await;
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

/// Every 30 s: merges small span and derived segments (see `meshtrace_storage`'s
/// `compact` and `derived`), then keeps the service graph's per-minute rollups of the recent
/// past ready, so that graph and dependencies queries read few rows (see
/// `meshtrace_query::graph_rollup`).
async fn maintenance(
    store: Store,
    queries: Queries,
    derived: DerivedStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        tokio::select! {
            // Cut short, a pass leaves at most files without a catalog row, removed at the
            // next open (see the compaction's design note).
            _ = shutdown.cancelled() => return Ok(()),
            compacted = store.compact_segments() => {
                if let Err(e) = compacted {
                    tracing::warn!(error = %e, "could not compact span segments");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            compacted = derived.compact() => {
                if let Err(e) = compacted {
                    tracing::warn!(error = %e, "could not compact derived segments");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            warmed = queries.warm_graphs(meshtrace_model::time::now_unix_nanos()) => {
                if let Err(e) = warmed {
                    tracing::debug!(error = %e, "could not roll up the recent service graph");
                }
            }
        }
    }
}

/// One flush if one is due; a failure is logged and spaces out the next attempt.
async fn flush_due(store: &Store, wal: Option<&Wal>, retry: &mut Backoff) {
    match store.flush_if_due().await {
        Ok(Some(checkpoint)) => {
            retry.succeeded();
            if let Some(Err(e)) = wal.map(|w| w.truncate_through(checkpoint)) {
                tracing::warn!(error = %e, "could not truncate the write-ahead log");
            }
        }
        Ok(None) => {}
        // Cluster mode: a partition moved to another node; nothing is wrong here.
        Err(meshtrace_storage::StorageError::Fenced { .. }) => {}
        Err(e) => {
            let retry_in = retry.failed();
            tracing::error!(
                error = %e, failures = retry.failures(), retry_in_s = retry_in.as_secs(),
                "flush failed; the spans stay buffered (and in the write-ahead log or JetStream) and are flushed again"
            );
        }
    }
}

/// What stops the node from storing spans now, for `/readyz`.
fn storage_problem(store: &Store, wal: Option<&Wal>) -> Option<String> {
    if let Some(wal) = wal {
        wal.recheck();
    }
    if let Some(why) = wal.and_then(Wal::unavailable) {
        return Some(why);
    }
    let failing = store.flush_failing()?;
    Some(format!("segment flushes are failing: {failing}"))
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
        // Cluster mode: stop consuming, flush (in close), then give the leases up so peers
        // take the partitions over at once.
        let leases = match self.node {
            Some(node) => node.stop().await,
            None => None,
        };
        if let Err(e) = self.opened.close().await {
            // A full disk or a lost catalog: what was acknowledged is in the write-ahead log
            // (or JetStream) and is stored at the next start. Not a crash: exit as usual.
            tracing::error!(
                error = format!("{e:#}"),
                "could not flush everything before stopping; the acknowledged spans stay in the \
                 write-ahead log and are stored at the next start"
            );
        }
        if let Some(mut leases) = leases {
            if let Err(e) = leases.leave().await {
                tracing::warn!(error = %e, "could not give the leases up; they expire");
            }
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
