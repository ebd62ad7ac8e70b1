//! Provenance in the running server: spans go from the ingest pipeline (once durable and
//! buffered, in sequence order) to a bounded channel; one task groups them into traces
//! ([`meshtrace_provenance::Assembler`]), derives the `traces`, `edges` and `critical_path`
//! rows of every completed trace into a [`DerivedStore`], and learns the signature→class
//! mapping. The handle here feeds it, holds the class rules and answers the counters.
//!
//! Ingest never waits for provenance: when the channel is full the spans skip it and are
//! counted (`meshtrace_provenance_dropped_spans_total{reason="queue_full"}`). WAL records
//! replayed at start-up are fed with waiting, and their traces are re-derived from every span
//! the store holds (see [`task`]).
//!
//! Class rules: those stored in the catalog (`PUT /api/v1/classes`) are tried first, then those
//! of the configuration; the first match wins, and a trace matching none gets `default`. A
//! rule change applies to traces completed afterwards.

mod metrics;
mod repair;
mod task;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::Context;
use meshtrace_model::Span;
use meshtrace_provenance::{
    AssemblerStats, ClassMapping, ClassRule, Derived, GraphConfig, MappingEntry, SlimSpan, Slimmer,
    TraceTree,
};
use meshtrace_storage::{DerivedConfig, DerivedStore, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ProvenanceSettings;
pub use metrics::ProvenanceMetrics;

/// What the pipeline hands over.
enum Msg {
    /// Spans just ingested.
    Live(Arc<Vec<SlimSpan>>),
    /// Spans replayed from the write-ahead log at start-up.
    Replay(Arc<Vec<SlimSpan>>),
}

/// State shared by the handle, the task and the API.
struct Shared {
    queue_dropped: AtomicU64,
    stats: Mutex<AssemblerStats>,
    open_traces: AtomicU64,
    mapping: Mutex<ClassMapping>,
    /// Traces whose class was folded into `other` (see `ClassLimit`).
    classes_folded: AtomicU64,
    config_rules: Vec<ClassRule>,
    catalog_rules: RwLock<Vec<ClassRule>>,
    graph: GraphConfig,
    /// What assembly keeps of a span, for the current rules.
    slimmer: RwLock<Arc<Slimmer>>,
    /// Where completed traces are recorded (for latency budgets), if anywhere.
    observer: Option<Arc<dyn TraceObserver>>,
}

/// What is told of every trace completed for the first time, once derived: its rows, its tree
/// and the wall-clock time (unix ns). The budgets engine records them this way.
pub trait TraceObserver: Send + Sync {
    fn record(&self, derived: &Derived, tree: &TraceTree, now_ns: i64);

    /// Whether traces of `class` keep it however many classes are in use (`max_classes`):
    /// the budgets engine keeps the classes with an objective or an override.
    fn keeps_class(&self, _class: &str) -> bool {
        false
    }
}

impl Shared {
    /// Catalog rules, then configuration rules.
    fn rules(&self) -> Vec<ClassRule> {
        let catalog = self
            .catalog_rules
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        catalog
            .iter()
            .chain(self.config_rules.iter())
            .cloned()
            .collect()
    }

    fn slimmer(&self) -> Arc<Slimmer> {
        let s = self.slimmer.read().unwrap_or_else(PoisonError::into_inner);
        s.clone()
    }

    /// A slimmer for the current rules, sharing the interned names of the one before.
    fn update_slimmer(&self) {
        let rules = self.rules();
        let mut slot = self.slimmer.write().unwrap_or_else(PoisonError::into_inner);
        *slot = Arc::new(slot.renewed(&rules, &self.graph));
    }
}

/// The sending side used by the ingest pipeline: never waits.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl Feed {
    /// The part of these spans that provenance keeps (see [`Slimmer`]): what to offer, so
    /// that the received spans can be freed once stored.
    pub fn slim(&self, spans: &[Span]) -> Vec<SlimSpan> {
        self.shared.slimmer().slim_all(spans)
    }

    /// [`Feed::slim`] for spans owned here: the kept parts are moved, not copied.
    pub fn slim_owned(&self, spans: Vec<Span>) -> Vec<SlimSpan> {
        self.shared.slimmer().slim_all_owned(spans)
    }

    /// Offers durable, buffered spans; counts them as dropped when the queue is full.
    pub fn offer(&self, spans: &Arc<Vec<SlimSpan>>) {
        if spans.is_empty() {
            return;
        }
        if self.tx.try_send(Msg::Live(spans.clone())).is_err() {
            self.shared
                .queue_dropped
                .fetch_add(spans.len() as u64, Ordering::Relaxed);
        }
    }
}

/// The provenance engine's handle. Cheap to clone.
#[derive(Clone)]
pub struct Provenance {
    feed: Feed,
    store: Store,
    derived: DerivedStore,
    stop: CancellationToken,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// Parses the JSON rules stored in the catalog, skipping (and logging) bad ones.
fn parse_stored(rules: Vec<String>) -> Vec<ClassRule> {
    rules
        .into_iter()
        .filter_map(|r| match serde_json::from_str(&r) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::warn!(rule = %r, error = %e, "ignoring a bad class rule in the catalog");
                None
            }
        })
        .collect()
}

impl Provenance {
    /// Opens the derived tables and starts the provenance task.
    /// `observer` is told of every completed trace.
    pub async fn start(
        store: &Store,
        settings: &ProvenanceSettings,
        retention: std::time::Duration,
        row_group_rows: usize,
        observer: Option<Arc<dyn TraceObserver>>,
    ) -> anyhow::Result<Provenance> {
        let cfg = DerivedConfig {
            flush_max_rows: settings.flush_rows,
            flush_max_age: settings.flush_age,
            retention,
            row_group_rows,
            compact_rows: settings.compact_rows,
            // As long as the span segments' (longer than any query reads merged files).
            compact_grace: store.config().compact_grace,
        };
        let derived = DerivedStore::open(store, meshtrace_query::tables::tables(), cfg)
            .await
            .context("opening the derived provenance tables")?;
        let stored = store.class_rules().await.context("reading class rules")?;
        let shared = Arc::new(Shared {
            queue_dropped: AtomicU64::new(0),
            stats: Mutex::default(),
            open_traces: AtomicU64::new(0),
            mapping: Mutex::new(
                ClassMapping::with_limit(settings.max_mapping_signatures)
                    .with_max_age(settings.mapping_max_age),
            ),
            classes_folded: AtomicU64::new(0),
            config_rules: settings.classes.clone(),
            catalog_rules: RwLock::new(parse_stored(stored)),
            graph: settings.graph.clone(),
            slimmer: RwLock::default(),
            observer,
        });
        shared.update_slimmer();
        let (tx, rx) = mpsc::channel(settings.queue_depth.max(1));
        let stop = CancellationToken::new();
        let engine = task::Engine::new(settings, shared.clone(), derived.clone(), store.clone());
        let handle = tokio::spawn(task::run(engine, rx, stop.clone()));
        Ok(Provenance {
            feed: Feed { tx, shared },
            store: store.clone(),
            derived,
            stop,
            task: Arc::new(tokio::sync::Mutex::new(Some(handle))),
        })
    }

    /// The pipeline's side.
    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// Feeds spans replayed from the write-ahead log, waiting for room.
    pub async fn replay(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let spans = self.feed.slim_owned(spans);
        if self
            .feed
            .tx
            .send(Msg::Replay(Arc::new(spans)))
            .await
            .is_err()
        {
            tracing::warn!("provenance task is gone; replayed spans skip provenance");
        }
    }

    /// Feeds spans consumed in cluster mode, waiting for room (the consumer slows down
    /// instead of dropping spans from provenance).
    pub async fn feed_waiting(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let spans = Arc::new(self.feed.slim_owned(spans));
        if self.feed.tx.send(Msg::Live(spans)).await.is_err() {
            tracing::warn!("provenance task is gone; consumed spans skip provenance");
        }
    }

    /// The derived tables.
    pub fn derived(&self) -> &DerivedStore {
        &self.derived
    }

    /// Completes every open trace, writes the derived rows to Parquet and stops the task.
    pub async fn close(&self) {
        self.stop.cancel();
        if let Some(handle) = self.task.lock().await.take() {
            if let Err(e) = handle.await {
                tracing::warn!(error = %e, "provenance task failed");
            }
        }
    }

    /// The rules in the order they apply, with where each comes from.
    pub fn effective_rules(&self) -> Vec<(ClassRule, &'static str)> {
        let shared = &self.feed.shared;
        let catalog = self.catalog_rules();
        let config = shared.config_rules.iter().cloned();
        catalog
            .into_iter()
            .map(|r| (r, "catalog"))
            .chain(config.map(|r| (r, "config")))
            .collect()
    }

    /// The rules stored in the catalog.
    pub fn catalog_rules(&self) -> Vec<ClassRule> {
        let rules = &self.feed.shared.catalog_rules;
        rules.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stores new catalog rules (already validated) and applies them to traces completed from
    /// now on.
    pub async fn set_catalog_rules(&self, rules: Vec<ClassRule>) -> anyhow::Result<()> {
        let json = rules
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        self.store.set_class_rules(&json).await?;
        let shared = &self.feed.shared;
        *shared
            .catalog_rules
            .write()
            .unwrap_or_else(PoisonError::into_inner) = rules;
        shared.update_slimmer();
        Ok(())
    }

    /// Re-reads the class rules from the catalog (cluster mode: a peer may have changed them)
    /// and applies them to traces completed from now on.
    pub async fn reload_rules(&self) -> anyhow::Result<()> {
        let rules = parse_stored(self.store.class_rules().await?);
        let shared = &self.feed.shared;
        {
            let mut mine = shared
                .catalog_rules
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if *mine == rules {
                return Ok(());
            }
            *mine = rules;
        }
        shared.update_slimmer();
        Ok(())
    }

    /// The learned signature→class mapping.
    pub fn mapping(&self) -> Vec<MappingEntry> {
        let m = &self.feed.shared.mapping;
        m.lock().unwrap_or_else(PoisonError::into_inner).entries()
    }

    /// Its metrics, as a collector to register.
    pub fn metrics(&self) -> ProvenanceMetrics {
        ProvenanceMetrics(self.clone())
    }

    /// The rules in the order they apply (catalog, then configuration).
    pub fn rules(&self) -> Vec<ClassRule> {
        self.feed.shared.rules()
    }
}
