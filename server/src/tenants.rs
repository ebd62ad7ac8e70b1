//! Tenants: one [`Engine`] per tenant, so that nothing of one tenant is seen by another.
//!
//! A request's tenant is decided with its caller (see `meshtrace_collector::auth::tenant_of`:
//! the token's, else `X-Scope-OrgID`, else `single`). The default tenant's engine is the server
//! as it always was, on `DATA_DIR`; every other tenant has an engine of its own on
//! `DATA_DIR/tenants/ID`: its own write-ahead log, span and derived segments, catalog
//! (so classes, objectives, overrides, priority versions and proxies too), provenance,
//! budgets and priorities. Keeping tenants apart is then a matter of routing, not of a filter
//! every query must remember: the receivers hand spans to the tenant's sink
//! ([`TenantSinks`]), the query port sends each request to the tenant's router ([`router`]),
//! and priority watches read the tenant's priorities ([`PrioritiesOf`]).
//!
//! An engine is opened when its tenant's first request arrives, and at start-up for every
//! tenant folder present (its log may hold acknowledged spans). At most `[tenants] max`
//! tenants besides `single` are served: a request for another is 429. With a PostgreSQL
//! catalog, a tenant's catalog is the schema `tenant_ID` of the same database. In cluster mode
//! a tenant's engine is a cluster of its own on the same servers: its own JetStream stream and
//! buckets (`ClusterNames::for_tenant`), its segments under `PREFIX/tenants/ID` in the object
//! store, and its own partitions, leases and budget leader among the nodes that have it open.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use meshtrace_collector::auth::Tenant;
use meshtrace_collector::error::MEMORY_RETRY_AFTER;
use meshtrace_collector::sink::TenantSinks;
use meshtrace_collector::{Error, ErrorCode, SpanSink};
use meshtrace_model::memory::{Exceeded, MemoryBudget};
use meshtrace_model::tenant::TenantId;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::api::timing::RequestTiming;
use crate::config::Config;
use crate::engine::Engine;
use crate::priorities::publish::PrioritiesOf;
use crate::priorities::Priorities;

/// Every tenant's engine. Cheap to clone.
#[derive(Clone)]
pub struct Tenants(Arc<Inner>);

struct Inner {
    config: Config,
    timing: RequestTiming,
    memory: MemoryBudget,
    shutdown: CancellationToken,
    single: Arc<Engine>,
    others: RwLock<HashMap<TenantId, Arc<Engine>>>,
    /// Held while an engine opens (by the task that opens it, so a request that goes away
    /// does not let a second open start), and while engines stop.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// When a tenant's engine last failed to open: it is not tried again for a while.
    failed: Mutex<HashMap<TenantId, Instant>>,
    /// When each open engine (besides the default one) was last asked for.
    used: Mutex<HashMap<TenantId, Instant>>,
}

/// How long a tenant whose engine failed to open is refused before it is tried again.
const RETRY_OPEN_AFTER: Duration = Duration::from_secs(30);

/// Why a tenant's engine is not there.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {tenant} would pass the limit of {max} tenants ([tenants] max)")]
    Limit { tenant: TenantId, max: usize },
    #[error("tenant {tenant} is not served: {why}")]
    NotServed { tenant: TenantId, why: &'static str },
    /// The details are in the server's log, not in answers.
    #[error("tenant {tenant} could not be opened; the server's log says why")]
    Failed { tenant: TenantId },
    /// No new engine opens while the process is short of memory.
    #[error("tenant {tenant} cannot be opened now: {exceeded}")]
    Memory {
        tenant: TenantId,
        exceeded: Exceeded,
    },
}

impl TenantError {
    /// Its code, mapped to HTTP and gRPC as ingest errors' are.
    fn code(&self) -> ErrorCode {
        match self {
            TenantError::Limit { .. } | TenantError::Memory { .. } => ErrorCode::ResourceExhausted,
            TenantError::NotServed { .. } => ErrorCode::InvalidArgument,
            TenantError::Failed { .. } => ErrorCode::Unavailable,
        }
    }

    fn ingest_error(self) -> Error {
        match self {
            TenantError::Limit { .. } => Error::TenantLimit(self.to_string()),
            TenantError::NotServed { .. } => Error::InvalidArgument(self.to_string()),
            TenantError::Failed { .. } => Error::Unavailable {
                reason: self.to_string(),
                retry_after: std::time::Duration::from_secs(5),
            },
            TenantError::Memory { exceeded, .. } => Error::MemoryBudget { exceeded },
        }
    }
}

impl IntoResponse for TenantError {
    fn into_response(self) -> Response {
        let status = self.code().http_status();
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (status, axum::Json(body)).into_response();
        if let TenantError::Memory { .. } = self {
            let retry = MEMORY_RETRY_AFTER.as_secs().to_string();
            if let Ok(value) = axum::http::HeaderValue::from_str(&retry) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl Tenants {
    /// The engines of the default tenant and of every tenant folder under `DATA_DIR/tenants`.
    pub async fn start(
        config: &Config,
        single: Arc<Engine>,
        timing: RequestTiming,
        memory: MemoryBudget,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Tenants> {
        let tenants = Tenants(Arc::new(Inner {
            config: config.clone(),
            timing,
            memory,
            shutdown,
            single,
            others: RwLock::default(),
            opening: Arc::default(),
            failed: Mutex::default(),
            used: Mutex::default(),
        }));
        if !config.tenants.enabled {
            return Ok(tenants);
        }
        if !config.tenants.idle_close.is_zero() {
            tokio::spawn(tenants.clone().close_idle_engines());
        }
        // Each is recovered before the listeners start: its log may hold acknowledged spans.
        // One that cannot be opened is logged and tried again at a request after a while.
        // Every present tenant, even past `max` (which bounds new ones).
        for tenant in tenants.present()? {
            let _ = tenants.open_and_keep(tenant).await;
        }
        Ok(tenants)
    }

    /// The folder of the tenants besides `single`.
    fn root(&self) -> PathBuf {
        self.0.config.data_dir.join("tenants")
    }

    /// The tenants with a folder (ignoring what is not a tenant identifier).
    fn present(&self) -> anyhow::Result<Vec<TenantId>> {
        let entries = match std::fs::read_dir(self.root()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("listing the tenants' folders"),
        };
        let mut found = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            match name.to_str().map(TenantId::parse) {
                Some(Ok(t)) if !t.is_single() => found.push(t),
                _ => tracing::warn!(?name, "not a tenant folder; left alone"),
            }
        }
        found.sort();
        Ok(found)
    }

    /// The default tenant's engine.
    pub fn single(&self) -> &Arc<Engine> {
        &self.0.single
    }

    /// Every engine but the default tenant's.
    fn others(&self) -> Vec<Arc<Engine>> {
        let others = self.0.others.read().expect("tenants");
        others.values().cloned().collect()
    }

    /// The tenant's engine, opened if it is new (the default tenant's for every tenant when
    /// `[tenants] enabled` is off).
    pub async fn engine(&self, tenant: &TenantId) -> Result<Arc<Engine>, TenantError> {
        if tenant.is_single() || !self.0.config.tenants.enabled {
            return Ok(self.0.single.clone());
        }
        if let Some(e) = self.0.others.read().expect("tenants").get(tenant) {
            self.used(tenant);
            return Ok(e.clone());
        }
        let opening = self.0.opening.clone().lock_owned().await;
        if let Some(e) = self.0.others.read().expect("tenants").get(tenant) {
            return Ok(e.clone());
        }
        self.may_open(tenant)?;
        // In a task of its own, holding the lock: a request that goes away does not cut an
        // open short (leaving half an engine on the tenant's folder) nor let another start.
        let (tenants, t) = (self.clone(), tenant.clone());
        let task = tokio::spawn(async move {
            let _opening = opening;
            tenants.open_and_keep(t).await
        });
        task.await.unwrap_or_else(|_| {
            Err(TenantError::Failed {
                tenant: tenant.clone(),
            })
        })
    }

    /// Opens the tenant's engine and keeps it, or remembers when it failed.
    async fn open_and_keep(&self, tenant: TenantId) -> Result<Arc<Engine>, TenantError> {
        let failed = &self.0.failed;
        match self.open(&tenant).await {
            Ok(engine) => {
                tracing::info!(%tenant, "serving a tenant");
                failed.lock().expect("tenants").remove(&tenant);
                self.used(&tenant);
                let mut others = self.0.others.write().expect("tenants");
                others.insert(tenant, engine.clone());
                Ok(engine)
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(%tenant, error, "could not open a tenant's engine");
                failed
                    .lock()
                    .expect("tenants")
                    .insert(tenant.clone(), Instant::now());
                Err(TenantError::Failed { tenant })
            }
        }
    }

    /// Refuses a new engine past the limit, while stopping, while the process is short of
    /// memory, or soon after one failed.
    fn may_open(&self, tenant: &TenantId) -> Result<(), TenantError> {
        if let Some(exceeded) = self.0.memory.exceeded() {
            return Err(TenantError::Memory {
                tenant: tenant.clone(),
                exceeded,
            });
        }
        let max = self.0.config.tenants.max;
        if self.0.others.read().expect("tenants").len() >= max {
            return Err(TenantError::Limit {
                tenant: tenant.clone(),
                max,
            });
        }
        if self.0.shutdown.is_cancelled() {
            return Err(TenantError::NotServed {
                tenant: tenant.clone(),
                why: "the server is stopping",
            });
        }
        let failed = self.0.failed.lock().expect("tenants").get(tenant).copied();
        if failed.is_some_and(|at| at.elapsed() < RETRY_OPEN_AFTER) {
            return Err(TenantError::Failed {
                tenant: tenant.clone(),
            });
        }
        Ok(())
    }

    /// Opens a tenant's engine on its folder.
    async fn open(&self, tenant: &TenantId) -> anyhow::Result<Arc<Engine>> {
        let config = self.config_of(tenant)?;
        let engine = Engine::start(
            tenant.clone(),
            &config,
            Registry::default(),
            self.0.timing.clone(),
            &self.0.memory,
            // Its own token, so that it can be closed when idle.
            &self.0.shutdown.child_token(),
        )
        .await?;
        // Cluster mode: the tenant's partitions are consumed by the nodes that have it open.
        if let Err(e) = engine.join_cluster(&config.provenance).await {
            engine.shutdown.cancel();
            if let Err(stopping) = engine.stop().await {
                tracing::warn!(%tenant, error = %stopping, "could not stop an engine that failed to join the cluster");
            }
            return Err(e);
        }
        engine.set_ready();
        Ok(Arc::new(engine))
    }

    /// The server's configuration with the tenant's folder as the data folder (and its schema
    /// as the catalog's, with PostgreSQL).
    fn config_of(&self, tenant: &TenantId) -> Result<Config, TenantError> {
        let not_served = |why| TenantError::NotServed {
            tenant: tenant.clone(),
            why,
        };
        let mut config = self.0.config.clone();
        config.data_dir = self.root().join(tenant.as_str());
        if config.cluster.name.is_some() {
            // Its own stream, buckets and segment prefix in the cluster.
            config.cluster.tenant = Some(tenant.to_string());
            config.cluster.object_store = (config.cluster.object_store)
                .map(|url| format!("{}/tenants/{tenant}", url.trim_end_matches('/')));
        }
        match config.catalog_url.as_deref() {
            // SQLite at the tenant's folder.
            None => {}
            Some(url) if url.starts_with("postgres:") || url.starts_with("postgresql:") => {
                config.catalog_schema = Some(format!("tenant_{tenant}"));
            }
            Some(_) => {
                return Err(not_served(
                    "tenants besides the default one need the embedded catalog or PostgreSQL",
                ))
            }
        }
        Ok(config)
    }

    /// Records that a tenant's engine was asked for.
    fn used(&self, tenant: &TenantId) {
        let mut used = self.0.used.lock().expect("tenants");
        used.insert(tenant.clone(), Instant::now());
    }

    /// Until shutdown: closes the engines no request asked for and no proxy watched for
    /// `[tenants] idle_close`, checking a few times per that period.
    async fn close_idle_engines(self) {
        let idle = self.0.config.tenants.idle_close;
        let mut tick = tokio::time::interval(
            (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.0.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for engine in self.others() {
                self.close_if_idle(&engine.tenant, idle).await;
            }
        }
    }

    /// Closes a tenant's engine if it is still idle, holding the lock that opens engines, so
    /// a request for the tenant meanwhile waits and then opens it again. (A request that took
    /// the engine just before may find it closed and gets a retryable error; nothing it sent
    /// was acknowledged.)
    async fn close_if_idle(&self, tenant: &TenantId, idle: Duration) {
        let _opening = self.0.opening.lock().await;
        if self.0.shutdown.is_cancelled() {
            return;
        }
        let last = self.0.used.lock().expect("tenants").get(tenant).copied();
        if last.is_some_and(|at| at.elapsed() < idle) {
            return;
        }
        let engine = {
            let mut others = self.0.others.write().expect("tenants");
            match others.get(tenant) {
                Some(e) if e.state.priorities.watchers() > 0 => return,
                Some(_) => others.remove(tenant),
                None => None,
            }
        };
        let Some(engine) = engine else { return };
        self.0.used.lock().expect("tenants").remove(tenant);
        engine.shutdown.cancel();
        match engine.stop().await {
            Ok(()) => {
                tracing::info!(%tenant, idle_s = idle.as_secs_f64(), "closed an idle tenant's engine")
            }
            Err(e) => tracing::error!(
                %tenant, error = format!("{e:#}"),
                "could not flush everything while closing an idle tenant's engine; the \
                 acknowledged spans stay in its write-ahead log and are stored when it opens again"
            ),
        }
    }

    /// Cluster mode, at shutdown: stops every engine's partition consumers at once (see
    /// [`Engine::stop_consuming`]).
    pub async fn stop_consuming(&self) {
        let mut engines = self.others();
        engines.push(self.single().clone());
        futures::future::join_all(engines.iter().map(|e| e.stop_consuming())).await;
    }

    /// After the shutdown token was cancelled: stops every tenant's engine but the default
    /// one's (which the server stops last). Waits for an engine being opened; none opens
    /// after (see [`Tenants::may_open`]).
    pub async fn stop_others(&self) {
        let _opening = self.0.opening.lock().await;
        for engine in self.others() {
            if let Err(e) = engine.stop().await {
                tracing::error!(
                    tenant = %engine.tenant, error = format!("{e:#}"),
                    "could not flush everything before stopping; the acknowledged spans stay \
                     in the tenant's write-ahead log and are stored at the next start"
                );
            }
        }
    }
}

impl TenantSinks for Tenants {
    fn sink(&self, tenant: &TenantId) -> BoxFuture<'static, Result<Arc<dyn SpanSink>, Error>> {
        let (tenants, tenant) = (self.clone(), tenant.clone());
        Box::pin(async move {
            match tenants.engine(&tenant).await {
                Ok(engine) => Ok(engine.sink.clone()),
                Err(e) => Err(e.ingest_error()),
            }
        })
    }
}

impl PrioritiesOf for Tenants {
    fn priorities(
        &self,
        tenant: &TenantId,
    ) -> BoxFuture<'static, Result<Priorities, tonic::Status>> {
        let (tenants, tenant) = (self.clone(), tenant.clone());
        Box::pin(async move {
            match tenants.engine(&tenant).await {
                Ok(engine) => Ok(engine.state.priorities.clone()),
                Err(e) => Err(tonic::Status::new(e.code().grpc_code(), e.to_string())),
            }
        })
    }
}

/// The query port's router for every tenant: each request goes to its tenant's engine (the
/// port's security layers, added around this, decided the tenant).
pub fn router(tenants: Tenants) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(tenants)
}

async fn dispatch(
    State(tenants): State<Tenants>,
    Tenant(tenant): Tenant,
    request: Request,
) -> Response {
    match tenants.engine(&tenant).await {
        Ok(engine) => match engine.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(e) => e.into_response(),
    }
}
