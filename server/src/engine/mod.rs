//! One tenant's engine: everything that stores and analyses one tenant's spans. Its store and
//! write-ahead log ([`open`]), provenance, budgets and priorities, the state its query API
//! answers from, and the background tasks that flush, compact and apply retention
//! ([`tasks`]). A server runs one engine per tenant (see `crate::tenants`); the default
//! tenant's engine is the whole server when tenants are not used.
//!
//! An engine owns no listener: the server's receivers hand it spans through [`Engine::sink`]
//! and the query port routes requests to [`Engine::router`].

pub mod open;
pub mod tasks;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshtrace_collector::SpanSink;
use meshtrace_model::memory::MemoryBudget;
use meshtrace_model::tenant::TenantId;
use meshtrace_query::Queries;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::timing::RequestTiming;
use crate::api::{self, ApiState};
use crate::cluster;
use crate::config::{Config, ProvenanceSettings};
use crate::metrics::StoreMetrics;
use crate::priorities::Priorities;
pub use open::{open, Opened};

/// A running engine. Stopped by the server's shutdown token, then [`Engine::stop`].
pub struct Engine {
    pub tenant: TenantId,
    pub opened: Opened,
    pub state: ApiState,
    /// The tenant's query API, without the port's security layers (the server adds them once).
    pub router: axum::Router,
    /// Where the receivers hand this tenant's spans.
    pub sink: Arc<dyn SpanSink>,
    /// Stops the engine's tasks (the server's shutdown token, or a child of it for an engine
    /// that may be closed on its own).
    pub shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<anyhow::Result<()>>>>,
    /// Cluster mode: the leases and partition consumers, once [`Engine::join_cluster`].
    node: tokio::sync::Mutex<Option<cluster::Node>>,
    /// Cluster mode: the leases once consuming stopped, given up once flushed.
    leases: tokio::sync::Mutex<Option<meshtrace_cluster::lease::Leases>>,
}

impl Engine {
    /// Opens and recovers the tenant's store (see [`open()`]; it refuses queries, flushes early
    /// and sheds open traces while the process is over `memory`), starts priorities and the
    /// background tasks, and registers the engine's metrics in `registry` (served as the
    /// tenant's `/metrics`). The tasks stop when `shutdown` is cancelled.
    pub async fn start(
        tenant: TenantId,
        config: &Config,
        mut registry: Registry,
        timing: RequestTiming,
        memory: &MemoryBudget,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Engine> {
        let opened = open(config, memory).await?;
        let sink = opened.sink()?;
        let store = opened.store.clone();
        let priorities = Priorities::start(
            &store,
            &config.budgets,
            &opened.provenance,
            opened.recorder.clone(),
            // In cluster mode the elected node leads; the others follow its published sets.
            opened.cluster.is_none(),
            shutdown.child_token(),
        )
        .await;
        let priorities = match priorities {
            Ok(p) => p,
            Err(e) => {
                // Leaves nothing running on the tenant's folder (the log is replayed again at
                // the next open).
                if let Err(closing) = opened.close().await {
                    tracing::warn!(error = %closing, "could not close a store that failed to start");
                }
                return Err(e);
            }
        };
        registry.register_collector(Box::new(StoreMetrics {
            store: store.clone(),
            wal: opened.wal.clone(),
            dedup: opened.dedup.clone(),
        }));
        registry.register_collector(Box::new(opened.provenance.metrics()));
        registry.register_collector(Box::new(priorities.metrics()));
        let state = ApiState {
            queries: Queries::new(store.clone(), config.query.clone()),
            provenance: opened.provenance.clone(),
            priorities,
            registry: Arc::new(registry),
            ready: Arc::default(),
            health: Arc::default(),
        };
        let router = api::routes(state.clone(), timing);
        let tasks = vec![
            tokio::spawn(tasks::background(
                store.clone(),
                opened.wal.clone(),
                state.health.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(tasks::maintenance(
                store,
                state.queries.clone(),
                opened.provenance.derived().clone(),
                shutdown.clone(),
            )),
        ];
        Ok(Engine {
            tenant,
            opened,
            state,
            router,
            sink,
            shutdown: shutdown.clone(),
            tasks: Mutex::new(tasks),
            node: tokio::sync::Mutex::new(None),
            leases: tokio::sync::Mutex::new(None),
        })
    }

    /// Cluster mode: starts holding the engine's leases and consuming the partitions it owns
    /// (assembling traces as `provenance` says); nothing otherwise.
    pub async fn join_cluster(&self, provenance: &ProvenanceSettings) -> anyhow::Result<()> {
        let Some(connected) = &self.opened.cluster else {
            return Ok(());
        };
        let node = connected
            .start(cluster::Shared {
                store: self.opened.store.clone(),
                provenance: self.opened.provenance.clone(),
                assemble: provenance.enabled,
                straddle: provenance.idle + provenance.max_age,
                priorities: self.state.priorities.clone(),
                recorder: self.opened.recorder.clone(),
                ready: self.state.ready.clone(),
            })
            .await?;
        *self.node.lock().await = Some(node);
        Ok(())
    }

    /// Cluster mode: stops consuming the engine's partitions and keeps its leases until
    /// [`Engine::stop`] has flushed (a server stops every engine's consumers first, so no
    /// tenant keeps consuming while others flush).
    pub async fn stop_consuming(&self) {
        if let Some(node) = self.node.lock().await.take() {
            *self.leases.lock().await = node.stop().await;
        }
    }

    /// Marks the engine ready for `/readyz`.
    pub fn set_ready(&self) {
        self.state.ready.store(true, Ordering::Release);
    }

    /// After the shutdown token was cancelled: waits for the background tasks, then drains
    /// the log, flushes to Parquet and truncates the log (see [`Opened::close`]).
    pub async fn stop(&self) -> anyhow::Result<()> {
        // Cluster mode: stop consuming, flush (in close), then give the leases up so that
        // peers take the partitions over at once.
        self.stop_consuming().await;
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("engine tasks"));
        for task in tasks {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "engine task ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "engine task panicked"),
                Err(_) => tracing::warn!(tenant = %self.tenant, "an engine task did not stop"),
            }
        }
        let closed = self.opened.close().await;
        if let Some(mut leases) = self.leases.lock().await.take() {
            if let Err(e) = leases.leave().await {
                tracing::warn!(tenant = %self.tenant, error = %e, "could not give the leases up; they expire");
            }
        }
        closed
    }
}
