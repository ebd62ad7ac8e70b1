//! The provenance task: assembles traces from the span channel, and every tick derives the
//! rows of the traces that completed, appends them to the derived tables, updates the class
//! mapping and flushes the derived tables when due (retention once a minute).
//!
//! A trace is re-derived from every span the store holds, instead of the spans the assembler
//! saw, when the assembler cannot have seen them all: its spans came from a WAL replay (the
//! earlier ones may be in Parquet already), or it completed before and was forgotten by the
//! assembler (a span later than the late window). Such a derivation has a newer version, so
//! it replaces the earlier rows instead of adding a partial trace next to them.
//!
//! Versions are wall-clock completion times in ns, strictly increasing within a process.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use meshtrace_model::time::now_unix_nanos;
use meshtrace_model::{Span, TraceId};
use meshtrace_provenance::{
    build_tree_slim, unique_spans, Assembler, ClassLimit, CompletedTrace, Derived, Learned,
    SlimSpan,
};
use meshtrace_storage::{DerivedStore, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Msg, Shared};
use crate::config::ProvenanceSettings;
use crate::health::Backoff;
use meshtrace_query::tables::Rows;

/// How often completed traces are collected.
const TICK: Duration = Duration::from_millis(200);
/// How many completed trace IDs are remembered to detect very late spans.
const SEEN_CAP: usize = 200_000;
/// Messages taken from the channel per wake-up before looking at the clock again.
const DRAIN_BATCH: usize = 256;

/// A set (or map) with a size cap that forgets its oldest entries first.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Copy, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        // The stale key left in `order` is skipped when it reaches the front.
        self.map.remove(k)
    }

    fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }
}

/// Everything the task owns.
pub(super) struct Engine {
    assembler: Assembler,
    shared: Arc<Shared>,
    derived: DerivedStore,
    store: Store,
    clock: Instant,
    max_spans: usize,
    replayed: HashSet<TraceId>,
    /// Rows learned into the mapping, per recent trace, to forget on replacement.
    recent: Bounded<TraceId, Learned>,
    /// Completed trace IDs, to detect spans later than the assembler remembers.
    seen: Bounded<TraceId, ()>,
    last_version: i64,
    /// The bound on distinct classes.
    classes: ClassLimit,
    /// When shedding open traces for memory was last logged.
    last_shed: Option<Instant>,
}

impl Engine {
    pub fn new(
        settings: &ProvenanceSettings,
        shared: Arc<Shared>,
        derived: DerivedStore,
        store: Store,
    ) -> Engine {
        Engine {
            assembler: Assembler::new(settings.assembler()),
            shared,
            derived,
            store,
            clock: Instant::now(),
            max_spans: settings.max_spans_per_trace,
            replayed: HashSet::new(),
            recent: Bounded::new(settings.max_open_traces),
            seen: Bounded::new(SEEN_CAP),
            last_version: 0,
            classes: ClassLimit::new(settings.max_classes, settings.mapping_max_age),
            last_shed: None,
        }
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn add(&mut self, msg: Msg) {
        let now = self.now();
        match msg {
            Msg::Live(spans) => self.assembler.add_shared(&spans, now),
            Msg::Replay(spans) => {
                self.replayed.extend(spans.iter().map(|s| s.trace_id));
                self.assembler.add_shared(&spans, now);
            }
        }
    }

    /// While the process is short of memory, completes the oldest eighth of the open traces
    /// each tick (marked evicted: partial, and replaced if more spans come) so their spans
    /// leave memory. An eighth at a time: deriving a trace takes memory for a moment too, and
    /// deriving half of them at once carried the process past its budget in the test.
    fn shed_if_short_of_memory(&mut self, now: i64) {
        let Some(exceeded) = self.store.config().memory.exceeded() else {
            return;
        };
        let open = self.assembler.open_traces();
        if open == 0 {
            return;
        }
        let keep = open - open.div_ceil(8);
        if self
            .last_shed
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_shed = Some(Instant::now());
            tracing::warn!(%exceeded, open_traces = open, "short of memory: completing the oldest open traces early");
        }
        self.assembler.shed(keep, now);
    }

    fn next_version(&mut self) -> i64 {
        let wall = now_unix_nanos();
        self.last_version = wall.max(self.last_version + 1);
        self.last_version
    }

    /// Derives and stores every trace complete at `now` (monotonic ns since the task began).
    async fn complete(&mut self, now: i64) {
        let done = off_worker(|| self.assembler.poll_complete(now));
        self.publish_stats();
        if done.is_empty() {
            return;
        }
        let ready = self.with_all_spans(done).await;
        let batches = off_worker(|| self.derive_rows(ready));
        match batches {
            Ok(batches) => {
                for (table, batch) in batches {
                    if let Err(e) = self.derived.append(table, batch) {
                        tracing::error!(table, error = %e, "could not buffer derived rows");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not build derived rows"),
        }
    }

    /// Derives the rows of completed traces, records them for budgets and learns their
    /// signatures; `first` says whether a trace is recorded for budgets.
    fn derive_rows(
        &mut self,
        done: Vec<(bool, CompletedTrace)>,
    ) -> Result<Vec<(&'static str, arrow::array::RecordBatch)>, arrow::error::ArrowError> {
        let rules = self.shared.rules();
        let graph = self.shared.graph.clone();
        let mut rows = Rows::default();
        let observer = self.shared.observer.clone();
        let wall = now_unix_nanos();
        let now = self.now();
        for (first, c) in done {
            let mut derived = c.derive(&rules, &graph);
            let kept = |class: &str| observer.as_ref().is_some_and(|o| o.keeps_class(class));
            if self.classes.apply(&mut derived, &rules, kept, now) {
                self.shared.classes_folded.fetch_add(1, Ordering::Relaxed);
            }
            if let (Some(o), true) = (&observer, first) {
                o.record(&derived, &c.tree, wall);
            }
            let version = self.next_version();
            self.learn(c.trace_id, &derived);
            rows.push(derived, version, c.reason);
        }
        rows.into_batches()
    }

    /// Replaces the assembled spans with every stored span of the trace when the assembler
    /// cannot have seen them all (see the module docs), reading all such traces of a tick in
    /// one store lookup (after a WAL replay they are hundreds). Each trace comes with whether
    /// it is recorded for budgets: a replacement (late spans) was recorded already, a WAL
    /// replay was not.
    async fn with_all_spans(&mut self, done: Vec<CompletedTrace>) -> Vec<(bool, CompletedTrace)> {
        let mut wanted = BTreeSet::new();
        let mut ready = Vec::with_capacity(done.len());
        for c in done {
            let replayed = self.replayed.remove(&c.trace_id);
            let forgotten = !c.replaces && self.seen.contains(&c.trace_id);
            // A replacement carries only the spans that arrived after it was handed out.
            let needs_stored = replayed || forgotten || c.replaces;
            if needs_stored {
                wanted.insert(c.trace_id);
            }
            ready.push((!c.replaces, needs_stored, c));
        }
        let mut stored = HashMap::new();
        if !wanted.is_empty() {
            match self.store.traces(&wanted).await {
                Ok(found) => stored = found,
                Err(e) => {
                    tracing::warn!(error = %e, traces = wanted.len(), "could not read stored spans of completed traces")
                }
            }
        }
        ready
            .into_iter()
            .map(
                |(first, needs_stored, c)| match stored.remove(&c.trace_id) {
                    Some(spans) if needs_stored => (first, self.rebuilt(c, &spans)),
                    _ => (first, c),
                },
            )
            .collect()
    }

    /// The trace rebuilt from its stored spans, when they are more than it holds.
    fn rebuilt(&self, mut c: CompletedTrace, stored: &[Span]) -> CompletedTrace {
        let (mut spans, _) = unique_spans(stored.iter().map(SlimSpan::from).collect());
        if spans.len() <= c.tree.nodes.len() {
            return c;
        }
        if spans.len() > self.max_spans {
            c.dropped_spans += (spans.len() - self.max_spans) as u64;
            spans.truncate(self.max_spans);
        }
        tracing::debug!(
            trace_id = %hex::encode(c.trace_id),
            assembled = c.tree.nodes.len(),
            stored = spans.len(),
            "trace re-derived from stored spans"
        );
        c.tree = build_tree_slim(spans);
        c.replaces = true;
        c
    }

    /// Updates the class mapping, forgetting this trace's earlier rows if any.
    fn learn(&mut self, id: TraceId, d: &Derived) {
        let now = self.now();
        let mut mapping = self
            .shared
            .mapping
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = self.recent.remove(&id) {
            mapping.forget(&old);
        }
        if let Some(learned) = mapping.learn(d, now) {
            self.recent.insert(id, learned);
        }
        drop(mapping);
        self.seen.insert(id, ());
    }

    /// Drops the class mapping's signatures no complete trace made for its maximum age, and
    /// the classes no trace had as long from the class count.
    fn expire_mapping(&mut self, now: i64) {
        self.classes.expire(now);
        let mut mapping = self
            .shared
            .mapping
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dropped = mapping.expire(now);
        if dropped > 0 {
            tracing::info!(
                dropped,
                held = mapping.len(),
                "class mapping signatures aged out"
            );
        }
    }

    fn publish_stats(&self) {
        *self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.assembler.stats();
        self.shared
            .open_traces
            .store(self.assembler.open_traces() as u64, Ordering::Relaxed);
    }
}

/// Runs CPU-heavy work of the task without holding up the runtime worker it runs on: on a
/// multi-threaded runtime, the worker's other tasks (ingest) move to another thread meanwhile.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Runs until `stop`: then takes what is queued, completes every open trace and flushes.
pub(super) async fn run(mut engine: Engine, mut rx: mpsc::Receiver<Msg>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_retention: Option<Instant> = None;
    let mut retry = Backoff::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                engine.add(msg);
                for _ in 0..DRAIN_BATCH {
                    match rx.try_recv() {
                        Ok(m) => engine.add(m),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                let now = engine.now();
                engine.shed_if_short_of_memory(now);
                engine.complete(now).await;
                if retry.ready() {
                    match engine.derived.flush_if_due().await {
                        Ok(_) => retry.succeeded(),
                        Err(e) => {
                            let retry_in = retry.failed();
                            tracing::warn!(
                                error = %e, failures = retry.failures(), retry_in_s = retry_in.as_secs(),
                                "derived flush failed; rows stay buffered"
                            );
                        }
                    }
                }
                if last_retention.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    last_retention = Some(Instant::now());
                    engine.expire_mapping(now);
                    match engine.derived.apply_retention().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(segments = n, "retention deleted derived segments"),
                        Err(e) => tracing::warn!(error = %e, "derived retention failed"),
                    }
                }
            }
        }
    }
    while let Ok(m) = rx.try_recv() {
        engine.add(m);
    }
    // Every open trace is complete now: the server is stopping.
    engine.complete(i64::MAX).await;
    if let Err(e) = engine.derived.flush().await {
        tracing::error!(error = %e, "final derived flush failed");
    }
    tracing::info!(stats = ?engine.assembler.stats(), "provenance stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_forgets_oldest_first() {
        let mut b: Bounded<u8, ()> = Bounded::new(2);
        b.insert(1, ());
        b.insert(2, ());
        b.insert(3, ());
        assert!(!b.contains(&1) && b.contains(&2) && b.contains(&3));
        b.remove(&2);
        b.insert(4, ());
        assert!(b.contains(&3) && b.contains(&4));
    }
}
