//! Latency budgets and dynamic priorities in the running server.
//!
//! Completed traces (from provenance, through a [`Recorder`]) feed windowed
//! [`Observations`]; every window step [`task`] computes the per-class budgets, updates the
//! [`Prioritizer`] with the learned class mapping and the operator's overrides, stores every
//! changed assignment set in the catalog (current and history) and publishes it on the
//! service's watch channel ([`publish::Board`]) so HTTP long polls and gRPC streams wake at
//! once. Objectives come from the configuration and the catalog (catalog wins); overrides and
//! the proxies seen are kept in memory and in the catalog. Published versions continue from
//! the catalog's after a restart, and the stored current sets are served until replaced.

pub mod history;
mod leader;
mod metrics;
pub mod observe;
pub mod proxies;
pub mod publish;
mod task;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use meshtrace_budget::{
    compute_budgets, AssignmentSet, ClassBudget, Objective, Observations, Prioritizer,
    PriorityConfig, WindowConfig,
};
use meshtrace_model::time::now_unix_nanos;
use meshtrace_storage::{StorageError, Store, StoredPrioritySet};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use history::{BudgetHistory, ClassHistory};
pub use observe::Recorder;
use proxies::ProxyRegistry;
use publish::{Board, SetJson};

use crate::config::BudgetSettings;

/// Longest class, service or node name accepted, in characters (the OpenAPI `maxLength`).
pub const MAX_NAME_CHARS: usize = 256;

/// Whether `name` is 1 to [`MAX_NAME_CHARS`] characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS
}
use crate::provenance::Provenance;
pub use metrics::PrioritiesMetrics;

/// A proxy that polled or watched its service's set.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ProxyInfo {
    pub service: String,
    pub node: String,
    /// `http` or `grpc`.
    pub via: String,
    pub last_seen: String,
    #[serde(skip)]
    pub last_seen_ns: i64,
    /// The version it holds (last sent to it).
    pub version: u64,
}

/// Where an objective comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Catalog,
}

struct Inner {
    settings: BudgetSettings,
    store: Store,
    provenance: Provenance,
    obs: Arc<Mutex<Observations>>,
    /// The classes with an objective or an override, shared with the [`Recorder`].
    kept: Arc<RwLock<std::collections::BTreeSet<String>>>,
    catalog_objectives: RwLock<BTreeMap<String, Objective>>,
    overrides: RwLock<BTreeMap<String, u8>>,
    prioritizer: Mutex<Prioritizer>,
    /// Stored version per service when this node started publishing: published versions
    /// continue from it.
    base_versions: Mutex<BTreeMap<String, u64>>,
    /// Whether this node computes and publishes priority sets: always in standalone mode; in
    /// cluster mode only the elected leader, the others follow the catalog ([`leader`]).
    leading: AtomicBool,
    /// Cluster mode: a set whose version could not be stored is not published (the catalog is
    /// what every node serves).
    clustered: bool,
    board: Board,
    proxies: ProxyRegistry,
    wake: Notify,
    stop: CancellationToken,
    updates: AtomicU64,
    published: AtomicU64,
    watchers: AtomicI64,
    publish_latency: Mutex<PublishLatency>,
    /// Step end → published, for `/metrics`.
    publish_seconds: Histogram,
    /// Per class the newest update steps' end-to-end observations (memory only).
    history: BudgetHistory,
}

/// Step end → published, over every published set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PublishLatency {
    pub count: u64,
    pub sum_ns: i64,
    pub max_ns: i64,
}

/// The budgets and priorities engine's handle. Cheap to clone.
#[derive(Clone)]
pub struct Priorities {
    inner: Arc<Inner>,
}

/// The budget window of these settings (what a [`Recorder`] is made with).
/// The objectives (valid ones; bad rows are logged and skipped) and the priority overrides the
/// catalog holds.
async fn read_catalog(
    store: &Store,
) -> anyhow::Result<(BTreeMap<String, Objective>, BTreeMap<String, u8>)> {
    let mut objectives = BTreeMap::new();
    for (class, json) in store.objectives().await.context("reading objectives")? {
        match serde_json::from_str::<Objective>(&json) {
            Ok(o) if o.validate().is_ok() => {
                objectives.insert(class, o);
            }
            _ => tracing::warn!(%class, objective = %json, "ignoring a bad stored objective"),
        }
    }
    let overrides = store
        .priority_overrides()
        .await
        .context("reading priority overrides")?
        .into_iter()
        .map(|(c, l)| (c, u8::try_from(l.clamp(0, 255)).unwrap_or(u8::MAX)))
        .collect();
    Ok((objectives, overrides))
}

pub fn window_config(settings: &BudgetSettings) -> WindowConfig {
    WindowConfig {
        window: settings.window.max(Duration::from_millis(1)),
        step: settings.step.max(Duration::from_millis(1)),
        max_positions: settings.max_positions_per_class.max(1),
        min_hop_traces: settings.min_hop_traces,
        max_sender_share: if settings.max_sender_share > 0.0 {
            settings.max_sender_share
        } else {
            1.0
        },
    }
}

/// Replaces what `slot` holds with `value` when they differ; returns whether they did.
fn replace_if_changed<T: PartialEq>(slot: &RwLock<T>, value: T) -> bool {
    let mut held = slot.write().unwrap_or_else(PoisonError::into_inner);
    let changed = *held != value;
    if changed {
        *held = value;
    }
    changed
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn priority_config(s: &BudgetSettings) -> PriorityConfig {
    PriorityConfig {
        levels: s.levels.max(1),
        hysteresis_windows: s.hysteresis_windows,
        at_risk_slack_fraction: s.at_risk_slack_fraction,
        class_header: s.class_header.clone(),
        baggage_key: s.baggage_key.clone(),
        history_len: s.history_len.max(1),
        ..PriorityConfig::default()
    }
}

impl Priorities {
    /// Loads objectives, overrides, published sets and proxies from the catalog and starts the
    /// update task (stopped by `stop`). Budgets are computed from what `recorder` records
    /// (provenance records every completed trace through it).
    pub async fn start(
        store: &Store,
        settings: &BudgetSettings,
        provenance: &Provenance,
        recorder: Recorder,
        leading: bool,
        stop: CancellationToken,
    ) -> anyhow::Result<Priorities> {
        for (class, o) in &settings.objectives {
            o.validate()
                .with_context(|| format!("budgets.objectives.{class}"))?;
        }
        let (catalog_objectives, overrides) = read_catalog(store).await?;
        let board = Board::default();
        let mut base_versions = BTreeMap::new();
        for stored in store
            .priority_sets()
            .await
            .context("reading priority sets")?
        {
            base_versions.insert(stored.service.clone(), stored.version);
            match serde_json::from_str::<SetJson>(&stored.body) {
                Ok(j) => board.publish(j.into_set(stored.generated_at_ns)),
                Err(e) => tracing::warn!(service = %stored.service, error = %e, "bad stored set"),
            }
        }
        let stored = store.proxies().await.context("reading proxies")?;
        let proxies = ProxyRegistry::new(stored, settings.max_proxies, settings.proxy_ttl);
        let inner = Inner {
            settings: settings.clone(),
            store: store.clone(),
            provenance: provenance.clone(),
            obs: recorder.obs,
            kept: recorder.kept,
            catalog_objectives: RwLock::new(catalog_objectives),
            overrides: RwLock::new(overrides),
            prioritizer: Mutex::new(Prioritizer::new(priority_config(settings))),
            base_versions: Mutex::new(base_versions),
            leading: AtomicBool::new(leading),
            clustered: !leading,
            board,
            proxies,
            wake: Notify::new(),
            stop,
            updates: AtomicU64::new(0),
            published: AtomicU64::new(0),
            watchers: AtomicI64::new(0),
            publish_latency: Mutex::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            history: BudgetHistory::default(),
        };
        let p = Priorities {
            inner: Arc::new(inner),
        };
        p.refresh_kept();
        tokio::spawn(task::run(p.clone()));
        Ok(p)
    }

    /// Its metrics, as a collector to register.
    pub fn metrics(&self) -> PrioritiesMetrics {
        PrioritiesMetrics(self.clone())
    }

    pub fn settings(&self) -> &BudgetSettings {
        &self.inner.settings
    }

    /// Asks the task for an update now (after an objective or override change), and
    /// refreshes the classes provenance keeps.
    pub fn wake(&self) {
        self.refresh_kept();
        self.inner.wake.notify_one();
    }

    /// Tells provenance (through the [`Recorder`]) which classes have an objective or an
    /// override: those keep their class past `max_classes`.
    fn refresh_kept(&self) {
        let mut kept: std::collections::BTreeSet<String> = self.objectives().into_keys().collect();
        kept.extend(self.overrides().into_keys());
        *self
            .inner
            .kept
            .write()
            .unwrap_or_else(PoisonError::into_inner) = kept;
    }

    /// Cancelled when the server stops (long polls return at once).
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// Every objective in effect with its source: configuration, overridden by the catalog.
    pub fn objectives(&self) -> BTreeMap<String, (Objective, Source)> {
        let mut out: BTreeMap<String, (Objective, Source)> = self
            .inner
            .settings
            .objectives
            .iter()
            .map(|(c, o)| (c.clone(), (o.clone(), Source::Config)))
            .collect();
        let catalog = self
            .inner
            .catalog_objectives
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (c, o) in catalog.iter() {
            out.insert(c.clone(), (o.clone(), Source::Catalog));
        }
        out
    }

    /// Stores a (validated) objective in the catalog; it applies from the next update.
    pub async fn set_objective(&self, class: &str, o: Objective) -> anyhow::Result<()> {
        let json = serde_json::to_string(&o)?;
        self.inner
            .store
            .put_objective(class, &json, now_unix_nanos())
            .await?;
        self.inner
            .catalog_objectives
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(class.to_string(), o);
        self.wake();
        Ok(())
    }

    /// Re-reads objectives and overrides from the catalog (cluster mode: a peer may have
    /// changed them) and triggers an update when they changed.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let (objectives, overrides) = read_catalog(&self.inner.store).await?;
        // Both are read and replaced: `|` rather than `||`.
        let changed = replace_if_changed(&self.inner.catalog_objectives, objectives)
            | replace_if_changed(&self.inner.overrides, overrides);
        if changed {
            self.wake();
        }
        Ok(())
    }

    /// The operator's overrides: class → level.
    pub fn overrides(&self) -> BTreeMap<String, u8> {
        self.inner
            .overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the overrides (catalog and memory) and triggers an update.
    pub async fn set_overrides(&self, overrides: BTreeMap<String, u8>) -> anyhow::Result<()> {
        let rows: Vec<(String, i64)> = overrides
            .iter()
            .map(|(c, l)| (c.clone(), i64::from(*l)))
            .collect();
        self.inner.store.set_priority_overrides(&rows).await?;
        *self
            .inner
            .overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner) = overrides;
        self.wake();
        Ok(())
    }

    /// Budgets of every class with an objective over the window ending now.
    pub fn budgets(&self) -> Vec<ClassBudget> {
        let objectives: BTreeMap<String, Objective> = self
            .objectives()
            .into_iter()
            .map(|(c, (o, _))| (c, o))
            .collect();
        let obs = self
            .inner
            .obs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        compute_budgets(&obs, &objectives, now_unix_nanos())
    }

    /// Per class (all, or only `class`) the recorded update steps at or after `since_ms`
    /// (unix ms), oldest first; kept in memory only, for the newest
    /// [`history::HISTORY_STEPS`] steps.
    pub fn budget_history(&self, class: Option<&str>, since_ms: Option<i64>) -> Vec<ClassHistory> {
        self.inner.history.query(class, since_ms)
    }

    /// The versions of a service's set stored in the catalog, oldest first.
    pub async fn stored_history(
        &self,
        service: &str,
    ) -> Result<Vec<StoredPrioritySet>, StorageError> {
        self.inner.store.priority_history(service).await
    }

    /// The current set of a service (version 0, empty, when unknown).
    pub fn current(&self, service: &str) -> Arc<AssignmentSet> {
        self.inner.board.current(service)
    }

    /// Proxies long-polling or watching right now.
    pub fn watchers(&self) -> usize {
        self.inner.board.watchers()
    }

    /// A receiver of a service's sets.
    pub fn subscribe(&self, service: &str) -> watch::Receiver<Arc<AssignmentSet>> {
        self.inner.board.subscribe(service)
    }

    /// Records that a proxy polled or watched (kept in memory, written to the catalog by the
    /// task).
    pub fn record_proxy(&self, service: &str, node: &str, via: &str, version: u64) {
        self.inner.proxies.record(service, node, via, version);
    }

    /// Every proxy seen within `[budgets] proxy_ttl`, by service and node.
    pub fn proxies(&self) -> Vec<ProxyInfo> {
        self.inner.proxies.list()
    }

    /// Writes the changed proxies to the catalog and deletes the aged-out ones.
    async fn persist_proxies(&self) {
        let (rows, oldest_kept) = self.inner.proxies.take_changes();
        let store = &self.inner.store;
        if let Err(e) = store.upsert_proxies(&rows).await {
            tracing::warn!(error = %e, "could not store proxies");
        }
        if let Err(e) = store.delete_proxies_seen_before(oldest_kept).await {
            tracing::warn!(error = %e, "could not age out proxies");
        }
    }

    /// Records the time from a step end to a set's publication.
    fn record_publish_latency(&self, ns: i64) {
        self.inner.publish_seconds.observe(ns as f64 / 1e9);
        let mut l = self
            .inner
            .publish_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        l.count += 1;
        l.sum_ns = l.sum_ns.saturating_add(ns);
        l.max_ns = l.max_ns.max(ns);
    }

    /// Step end → published, over every set published since start.
    pub fn publish_latency(&self) -> PublishLatency {
        *self
            .inner
            .publish_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
