//! The trace assembler: groups spans by trace as they arrive and hands a trace out once it is
//! complete — after an idle window without new spans, or when it reaches a maximum age.
//!
//! Time is passed in by the caller (`now`, monotonic nanoseconds), so nothing here reads a
//! clock. Memory is bounded: at most [`AssemblerConfig::max_open_traces`] open traces (adding
//! a new trace at the limit forces the oldest out, as a partial trace, counted in
//! `evicted_traces`) and at most [`AssemblerConfig::max_spans_per_trace`] spans per trace
//! (later ones are dropped and counted in `dropped_spans`). Exact duplicate spans (same ID,
//! kind, service and start, as sent again by an at-least-once sender) are ignored and counted.
//!
//! Late spans: a completed trace is remembered (its ID, not its spans) for
//! [`AssemblerConfig::late_window`] (at most `max_open_traces` of them). A span arriving for
//! such a trace reopens it (`late_merges`); when it completes again it comes out with
//! `replaces = true` and only the spans that arrived since: the caller rebuilds it from the
//! stored spans (which hold the earlier ones) and replaces the rows it derived before instead
//! of adding new ones. Not keeping completed traces' spans is what lets a batch's memory go
//! as soon as its traces complete. Spans arriving after the late window start a new trace.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use meshtrace_model::{Span, SpanId, SpanKind, SpanRef, TraceId};
use serde::{Deserialize, Serialize};

use crate::classes::ClassRule;
use crate::derive::{derive_tree, Derived};
use crate::graph::GraphConfig;
use crate::span::SlimSpan;
use crate::tree::{build_tree_shared, TraceTree};

/// Assembler limits and windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssemblerConfig {
    /// A trace without new spans for this long is complete.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// A trace open for this long is completed even if spans keep coming.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long a completed trace is kept so that late spans merge into it.
    #[serde(with = "humantime_serde")]
    pub late_window: Duration,
    pub max_open_traces: usize,
    pub max_spans_per_trace: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            idle: Duration::from_secs(5),
            max_age: Duration::from_secs(60),
            late_window: Duration::from_secs(60),
            max_open_traces: 100_000,
            max_spans_per_trace: 10_000,
        }
    }
}

/// Why a trace was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionReason {
    Idle,
    MaxAge,
    /// Forced out to make room for a new trace.
    Evicted,
}

/// A trace handed out by [`Assembler::poll_complete`].
#[derive(Clone, Debug)]
pub struct CompletedTrace {
    pub trace_id: TraceId,
    pub tree: TraceTree,
    pub reason: CompletionReason,
    /// This trace was handed out before; its earlier derived rows must be replaced, and `tree`
    /// holds only the spans that arrived since (rebuild it from the stored spans).
    pub replaces: bool,
    /// Spans of this trace dropped by the per-trace limit.
    pub dropped_spans: u64,
}

impl CompletedTrace {
    /// Derives the rows; a trace forced out or cut by the span limit is never `complete`.
    pub fn derive(&self, rules: &[ClassRule], graph: &GraphConfig) -> Derived {
        let mut d = derive_tree(&self.tree, rules, graph);
        d.trace.complete &= self.reason != CompletionReason::Evicted && self.dropped_spans == 0;
        d
    }
}

/// What the assembler has dealt with so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AssemblerStats {
    /// Traces handed out (replacements included).
    pub completed: u64,
    /// Traces handed out again after late spans.
    pub replacements: u64,
    /// Orphan spans in handed-out traces.
    pub orphans: u64,
    /// Handed-out traces with more than one root.
    pub multi_root: u64,
    /// Spans shifted to correct clock skew.
    pub skew: u64,
    /// Zipkin shared SERVER halves attached to their CLIENT half.
    pub shared: u64,
    /// Traces forced out by the open-trace limit.
    pub evicted_traces: u64,
    /// Spans dropped by the per-trace limit.
    pub dropped_spans: u64,
    /// Completed traces reopened by a late span.
    pub late_merges: u64,
    /// Exact duplicate spans ignored.
    pub duplicate_spans: u64,
}

/// What makes a span a duplicate: ID, kind, start and (a hash of) the service.
type SpanKey = (SpanId, SpanKind, i64, u64);

fn key_of(s: &SlimSpan) -> SpanKey {
    let mut h = std::hash::DefaultHasher::new();
    s.service_name.hash(&mut h);
    (s.span_id, s.kind, s.start_unix_nano, h.finish())
}

/// The spans without exact duplicates (same ID, kind, start and service: an at-least-once
/// sender's retries), first copy kept, and how many were dropped. Owned spans or references
/// into shared batches alike; only spans sharing an ID are compared in full, so the usual
/// trace without duplicates costs one sort of its span IDs.
pub fn unique_spans<S: Borrow<SlimSpan>>(spans: Vec<S>) -> (Vec<S>, usize) {
    let mut by_id: Vec<(SpanId, usize)> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.borrow().span_id, i))
        .collect();
    by_id.sort_unstable();
    let mut duplicate = vec![false; spans.len()];
    for group in by_id.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        let mut seen = HashSet::with_capacity(group.len());
        for &(_, i) in group {
            duplicate[i] = !seen.insert(key_of(spans[i].borrow()));
        }
    }
    let dropped = duplicate.iter().filter(|d| **d).count();
    if dropped == 0 {
        return (spans, 0);
    }
    let kept = spans
        .into_iter()
        .zip(duplicate)
        .filter_map(|(s, d)| (!d).then_some(s))
        .collect();
    (kept, dropped)
}

/// A map keyed by trace ID, hashed with foldhash: trace IDs come from clients, so the hash is
/// seeded per process, and it is several times cheaper than the default SipHash on 16 bytes,
/// looked up for every span received.
type TraceMap<V> = HashMap<TraceId, V, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Open {
    /// Spans as they came, duplicates included (they are removed when the trace completes).
    spans: Vec<SpanRef<SlimSpan>>,
    /// (first seen, sequence): the key in `Assembler::order`.
    order_key: (i64, u64),
    last_seen: i64,
    replaces: bool,
    dropped: u64,
}

/// Groups spans into traces (see the module docs).
#[derive(Debug, Default)]
pub struct Assembler {
    config: AssemblerConfig,
    open: TraceMap<Open>,
    order: BTreeMap<(i64, u64), TraceId>,
    /// (time a batch touched the trace, trace) in time order; an entry is current while it
    /// equals the trace's `last_seen`, so finding idle traces never scans every open one.
    touched: VecDeque<(i64, TraceId)>,
    seq: u64,
    pending: Vec<CompletedTrace>,
    /// Completed traces kept for late spans: spans, completion time, dropped count.
    retained: TraceMap<(i64, u64)>,
    retained_order: VecDeque<(i64, TraceId)>,
    stats: AssemblerStats,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Assembler {
    pub fn new(config: AssemblerConfig) -> Self {
        Assembler {
            config,
            ..Assembler::default()
        }
    }

    pub fn config(&self) -> &AssemblerConfig {
        &self.config
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Open traces right now.
    pub fn open_traces(&self) -> usize {
        self.open.len()
    }

    /// Adds spans (of any traces) received at `now`, as slim copies with every attribute;
    /// see [`Assembler::add_shared`].
    pub fn add(&mut self, spans: &[Span], now: i64) {
        self.add_shared(&Arc::new(spans.iter().map(SlimSpan::from).collect()), now);
    }

    /// Adds slim spans (of any traces) received at `now`, keeping references into the shared
    /// batch. One map lookup per span of an open trace.
    pub fn add_shared(&mut self, spans: &Arc<Vec<SlimSpan>>, now: i64) {
        self.expire_retained(now);
        let max = self.config.max_spans_per_trace;
        let cap = self.config.max_open_traces.max(1);
        for span in SpanRef::all(spans) {
            let id = span.trace_id;
            if self.open.len() >= cap && !self.open.contains_key(&id) {
                self.make_room(cap, now);
            }
            let open = match self.open.entry(id) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    // Reopened from the retained traces when a late span arrives.
                    let (replaces, dropped) = match self.retained.remove(&id) {
                        Some((_, dropped)) => {
                            self.stats.late_merges += 1;
                            (true, dropped)
                        }
                        None => (false, 0),
                    };
                    self.seq += 1;
                    let order_key = (now, self.seq);
                    self.order.insert(order_key, id);
                    v.insert(Open {
                        spans: Vec::new(),
                        order_key,
                        last_seen: i64::MIN,
                        replaces,
                        dropped,
                    })
                }
            };
            if open.last_seen != now {
                open.last_seen = now;
                self.touched.push_back((now, id));
            }
            if open.spans.len() >= max {
                open.dropped += 1;
                self.stats.dropped_spans += 1;
            } else {
                open.spans.push(span);
            }
        }
    }

    /// Forces the oldest open traces out until at most `keep` are open (the process is short of
    /// memory); the next [`Assembler::poll_complete`] hands them out, marked evicted.
    pub fn shed(&mut self, keep: usize, now: i64) {
        self.make_room(keep.saturating_add(1), now);
    }

    /// Forces the oldest open traces out until a new one fits under `cap`.
    fn make_room(&mut self, cap: usize, now: i64) {
        while self.open.len() >= cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(open) = self.open.remove(&oldest) {
                self.stats.evicted_traces += 1;
                tracing::debug!(trace_id = %hex::encode(oldest), spans = open.spans.len(), "trace evicted");
                let done = self.finish(oldest, open, CompletionReason::Evicted, now);
                self.pending.push(done);
            }
        }
    }

    /// Hands out every trace that is complete at `now`, and those forced out since the last call.
    pub fn poll_complete(&mut self, now: i64) -> Vec<CompletedTrace> {
        let (idle, max_age) = (nanos(self.config.idle), nanos(self.config.max_age));
        let mut due: Vec<(TraceId, CompletionReason)> = Vec::new();
        while let Some(&(at, id)) = self.touched.front() {
            if now.saturating_sub(at) < idle {
                break;
            }
            self.touched.pop_front();
            if self.open.get(&id).is_some_and(|o| o.last_seen == at) {
                due.push((id, CompletionReason::Idle));
            }
        }
        for (&(first, _), &id) in &self.order {
            if now.saturating_sub(first) < max_age {
                break;
            }
            due.push((id, CompletionReason::MaxAge));
        }
        let mut out = std::mem::take(&mut self.pending);
        for (id, reason) in due {
            if let Some(open) = self.open.remove(&id) {
                self.order.remove(&open.order_key);
                out.push(self.finish(id, open, reason, now));
            }
        }
        self.expire_retained(now);
        out.sort_by_key(|c| c.trace_id);
        out
    }

    fn finish(
        &mut self,
        id: TraceId,
        open: Open,
        reason: CompletionReason,
        now: i64,
    ) -> CompletedTrace {
        let (spans, duplicates) = unique_spans(open.spans);
        self.stats.duplicate_spans += duplicates as u64;
        let tree = build_tree_shared(spans);
        let c = tree.counters;
        self.stats.completed += 1;
        self.stats.replacements += u64::from(open.replaces);
        // A replacement's tree holds only its late spans; its shape was counted the first time.
        if !open.replaces {
            self.stats.orphans += c.orphans as u64;
            self.stats.multi_root += u64::from(c.roots > 1);
            self.stats.skew += c.skew_adjusted as u64;
            self.stats.shared += c.shared_merged as u64;
        }
        self.retained.insert(id, (now, open.dropped));
        self.retained_order.push_back((now, id));
        CompletedTrace {
            trace_id: id,
            tree,
            reason,
            replaces: open.replaces,
            dropped_spans: open.dropped,
        }
    }

    fn expire_retained(&mut self, now: i64) {
        let window = nanos(self.config.late_window);
        let cap = self.config.max_open_traces.max(1);
        while let Some(&(at, id)) = self.retained_order.front() {
            let stale = now.saturating_sub(at) >= window;
            if !stale && self.retained.len() <= cap {
                break;
            }
            self.retained_order.pop_front();
            // Only drop the entry this queue item stands for (a reopened trace is re-queued).
            if self.retained.get(&id).is_some_and(|(t, _)| *t == at) {
                self.retained.remove(&id);
            }
        }
    }
}
