//! Windowed latency observations per class: the end-to-end latency (trace duration) and, per
//! hop position on the class's critical paths, the hop's critical-path self time, as
//! [`Sketch`]es in time buckets of `step` covering a sliding `window`.
//!
//! A hop is a (service, operation) pair; its *position* is the path of hops from the trace's
//! entry down to it, so the same operation reached through different callers is a different
//! position and the positions of a class form a tree. Each position also remembers whether it
//! ran as a parallel branch of a fan-out (majority of its visits). Within one trace, samples
//! at the same position are combined: summed when sequential, the maximum when parallel.
//!
//! A class keeps at most `max_positions` positions in each step. A high-cardinality
//! application (or a client making up routes) would otherwise grow memory and the cost of
//! every budget update without bound, and a position seen that rarely has no usable quantile
//! anyway. A sample at a position its class has no room for is folded, with everything below
//! it, into its nearest kept ancestor: its time counts as the ancestor's own, so the
//! ancestor's subtree time, and the budgets above it, stay whole. A top-level sample with no
//! room is dropped. Positions are admitted first come, so the frequent ones are in early;
//! folded samples are counted.
//!
//! Buckets are keyed by `timestamp.div_euclid(step)`; merging two [`Observations`] merges
//! bucket by bucket, so windows, and several nodes, merge exactly. Positions are interned
//! ([`crate::positions`]) so that recording a deep trace stays linear in its depth.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::positions::{HopKey, HopPath, Map, Positions, TOP};
use crate::share::{self, SenderCounts};
use meshtrace_model::sketch::Sketch;

/// The sliding window over which quantiles, rates and attainment are computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Length of the window (default 60 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Granularity: the window slides in steps of this (default 10 s).
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// Hop positions kept per class in each step (default 1000); see [`Observations`].
    #[serde(default = "default_max_positions")]
    pub max_positions: usize,
    /// A hop position visited by fewer traces in the window is left out of the window's
    /// statistics (default 5), so a few traces, forged or rare, do not move budgets.
    #[serde(default = "default_min_hop_traces")]
    pub min_hop_traces: u64,
    /// The largest share of a class's samples at a hop (and end to end) one sender's traces
    /// may hold in a step (default 1: no bound); see [`crate::share`].
    #[serde(default = "default_max_sender_share")]
    pub max_sender_share: f64,
}

fn default_max_sender_share() -> f64 {
    1.0
}

fn default_min_hop_traces() -> u64 {
    5
}

fn default_max_positions() -> usize {
    1000
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window: Duration::from_secs(60),
            step: Duration::from_secs(10),
            max_positions: default_max_positions(),
            min_hop_traces: default_min_hop_traces(),
            max_sender_share: default_max_sender_share(),
        }
    }
}

impl WindowConfig {
    pub(crate) fn step_ns(&self) -> i64 {
        (self.step.as_nanos() as i64).max(1)
    }

    /// Buckets in a window: `ceil(window / step)`, at least 1.
    pub fn buckets(&self) -> i64 {
        let w = self.window.as_nanos() as i64;
        ((w + self.step_ns() - 1) / self.step_ns()).max(1)
    }

    /// The bucket of a timestamp.
    pub fn bucket_of(&self, ts_ns: i64) -> i64 {
        ts_ns.div_euclid(self.step_ns())
    }

    /// The window's length in seconds, as covered by its buckets.
    pub fn window_secs(&self) -> f64 {
        (self.buckets() * self.step_ns()) as f64 / 1e9
    }
}

/// One hop of one trace: its critical-path self time and its place in the call tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopSample {
    pub hop: HopKey,
    /// Time this hop itself spent on the critical path (ns); for a parallel branch off the
    /// critical path, the branch's own time.
    pub self_time_ns: i64,
    /// Index of the parent sample in the same slice; must come before this one. None for a
    /// hop directly under the trace's entry (a flat list of critical-path rows is a chain of
    /// sequential top-level hops).
    pub parent: Option<usize>,
    /// A parallel branch of its parent's fan-out (runs concurrently with its siblings).
    pub parallel: bool,
}

impl HopSample {
    /// A sequential top-level hop.
    pub fn new(
        service: impl Into<Arc<str>>,
        operation: impl Into<Arc<str>>,
        self_time_ns: i64,
    ) -> Self {
        HopSample {
            hop: HopKey::new(service, operation),
            self_time_ns,
            parent: None,
            parallel: false,
        }
    }

    /// The same hop, as a child of sample `parent`.
    pub fn child_of(mut self, parent: usize) -> Self {
        self.parent = Some(parent);
        self
    }

    /// The same hop, as a parallel branch of its parent's fan-out.
    pub fn parallel(mut self) -> Self {
        self.parallel = true;
        self
    }
}

/// Statistics of one hop position.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HopStats {
    /// Self times, one value per trace visiting the position.
    pub self_time: Sketch,
    /// Visits as a parallel branch.
    pub parallel_visits: u64,
    /// Samples admitted per sender in this step (see [`crate::share`]); never merged.
    #[serde(skip)]
    senders: SenderCounts,
}

impl HopStats {
    pub fn visits(&self) -> u64 {
        self.self_time.count()
    }

    /// Whether most visits were as a parallel branch.
    pub fn is_parallel(&self) -> bool {
        self.parallel_visits * 2 > self.visits()
    }

    pub(crate) fn merge(&mut self, other: &HopStats) {
        self.self_time.merge(&other.self_time);
        self.parallel_visits += other.parallel_visits;
    }
}

/// Statistics of one class (in one bucket, or merged over a window).
#[derive(Clone, Debug, Default)]
pub struct ClassStats {
    /// End-to-end latency (trace duration), one value per trace.
    pub e2e: Sketch,
    pub hops: BTreeMap<HopPath, HopStats>,
}

/// [`ClassStats`] of one bucket, keyed by interned position.
#[derive(Clone, Debug, Default)]
pub(crate) struct BucketStats {
    pub(crate) e2e: Sketch,
    pub(crate) hops: Map<u32, HopStats>,
    /// Traces admitted per sender end to end (see [`crate::share`]); never merged.
    e2e_senders: SenderCounts,
}

impl BucketStats {
    /// Adds `other`'s statistics, its positions mapped to this one's by `position`.
    fn merge(&mut self, other: &BucketStats, mut position: impl FnMut(u32) -> u32) {
        self.e2e.merge(&other.e2e);
        for (id, h) in &other.hops {
            self.hops.entry(position(*id)).or_default().merge(h);
        }
    }
}

pub(crate) type Bucket = BTreeMap<String, BucketStats>;

/// Interned positions are rebuilt from the live buckets once this many more exist than live.
const COMPACT_SLACK: usize = 4096;

/// Windowed observations of every class.
#[derive(Clone, Debug)]
pub struct Observations {
    pub(crate) cfg: WindowConfig,
    pub(crate) buckets: BTreeMap<i64, Bucket>,
    pub(crate) positions: Positions,
    /// The newest bucket seen (by recording or advancing).
    pub(crate) latest: Option<i64>,
    /// Traces refused because they fell before the window.
    pub(crate) late: u64,
    /// Hop samples folded into an ancestor (or dropped) for want of room for their position.
    pub(crate) folded: u64,
    /// Samples left out because their sender held its share already ([`crate::share`]).
    capped: u64,
}

impl Observations {
    pub fn new(cfg: WindowConfig) -> Self {
        Observations {
            cfg,
            buckets: BTreeMap::new(),
            positions: Positions::default(),
            latest: None,
            late: 0,
            folded: 0,
            capped: 0,
        }
    }

    pub fn config(&self) -> &WindowConfig {
        &self.cfg
    }

    /// Traces dropped because their time was already out of the window.
    pub fn late_traces(&self) -> u64 {
        self.late
    }

    /// Hop samples folded into an ancestor position (or dropped, at the top) because their
    /// class had `max_positions` positions in the step already.
    pub fn folded_samples(&self) -> u64 {
        self.folded
    }

    /// Samples (end-to-end or at a hop) left out because their sender already held
    /// `max_sender_share` of them in the step.
    pub fn capped_samples(&self) -> u64 {
        self.capped
    }

    /// Takes out the counts of folded and capped samples (as a cluster node hands the counts
    /// of the traces it recorded to the window its metrics read, see [`Self::add_counts`]).
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.folded),
            std::mem::take(&mut self.capped),
        )
    }

    /// Adds folded and capped samples counted elsewhere (see [`Self::take_counts`]).
    pub fn add_counts(&mut self, (folded, capped): (u64, u64)) {
        self.folded += folded;
        self.capped += capped;
    }

    /// Records one trace of `class` ending (or seen) at `now_ns`; returns false when it is too
    /// old for the window. Advances the window when `now_ns` is newer than anything seen.
    pub fn record_trace(
        &mut self,
        class: &str,
        e2e_ns: i64,
        hops: &[HopSample],
        now_ns: i64,
    ) -> bool {
        self.record_trace_from(None, class, e2e_ns, hops, now_ns)
    }

    /// [`Observations::record_trace`] for a trace sent by `sender` (the token its entry span
    /// came with), whose samples count only within `max_sender_share` ([`crate::share`]).
    pub fn record_trace_from(
        &mut self,
        sender: Option<&str>,
        class: &str,
        e2e_ns: i64,
        hops: &[HopSample],
        now_ns: i64,
    ) -> bool {
        let b = self.cfg.bucket_of(now_ns);
        self.advance(now_ns);
        if b <= self.latest.unwrap_or(b) - self.cfg.buckets() {
            self.late += 1;
            tracing::debug!(class, now_ns, "trace older than the budget window dropped");
            return false;
        }
        // None: no bound, nothing counted.
        let limit = match self.cfg.max_sender_share {
            s if s >= 1.0 => None,
            s => Some(share::limit(s, self.senders_in_window(class, sender))),
        };
        let bucket = self.buckets.entry(b).or_default();
        if !bucket.contains_key(class) {
            bucket.insert(class.to_string(), BucketStats::default());
        }
        let Some(stats) = bucket.get_mut(class) else {
            return false;
        };
        let (combined, folded) = combine(
            &mut self.positions,
            hops,
            &stats.hops,
            self.cfg.max_positions,
        );
        self.folded += folded;
        if limit.is_none_or(|l| stats.e2e_senders.admit(sender, l)) {
            stats.e2e.add(e2e_ns);
        } else {
            self.capped += 1;
        }
        for (position, (ns, parallel)) in combined {
            let h = stats.hops.entry(position).or_default();
            if limit.is_some_and(|l| !h.senders.admit(sender, l)) {
                self.capped += 1;
                continue;
            }
            h.self_time.add(ns);
            h.parallel_visits += u64::from(parallel);
        }
        true
    }

    /// The senders of `class`'s traces in the window, `sender` included.
    fn senders_in_window(&self, class: &str, sender: Option<&str>) -> usize {
        let mut seen: Vec<Option<&str>> = vec![sender];
        let in_window = self.buckets.values().filter_map(|b| b.get(class));
        for s in in_window.flat_map(|stats| stats.e2e_senders.senders()) {
            if !seen.contains(&s) {
                seen.push(s);
            }
        }
        seen.len()
    }

    /// Slides the window so that it ends at `now_ns` (never backwards), dropping old buckets.
    pub fn advance(&mut self, now_ns: i64) {
        let b = self.cfg.bucket_of(now_ns);
        let latest = self.latest.map_or(b, |l| l.max(b));
        self.latest = Some(latest);
        let oldest_kept = latest - self.cfg.buckets() + 1;
        if self
            .buckets
            .first_key_value()
            .is_some_and(|(k, _)| *k < oldest_kept)
        {
            self.buckets = self.buckets.split_off(&oldest_kept);
            self.compact();
        }
    }

    /// Rebuilds the interned positions from the live buckets when many are no longer used.
    pub(crate) fn compact(&mut self) {
        let live: usize = self
            .buckets
            .values()
            .flat_map(|b| b.values())
            .map(|s| s.hops.len())
            .sum();
        if self.positions.len() <= live.saturating_mul(4) + COMPACT_SLACK {
            return;
        }
        let mut fresh = Positions::default();
        for bucket in self.buckets.values_mut() {
            for stats in bucket.values_mut() {
                stats.hops = std::mem::take(&mut stats.hops)
                    .into_iter()
                    .map(|(id, h)| (fresh.intern_path(&self.positions.path(id)), h))
                    .collect();
            }
        }
        tracing::debug!(
            before = self.positions.len(),
            after = fresh.len(),
            "hop positions compacted"
        );
        self.positions = fresh;
    }

    /// Adds another node's (or window's) observations, bucket by bucket. Both must use the
    /// same window configuration; buckets of `other` are aligned by their time.
    pub fn merge(&mut self, other: &Observations) {
        for (b, classes) in &other.buckets {
            let bucket = self.buckets.entry(*b).or_default();
            for (class, stats) in classes {
                let positions = &mut self.positions;
                bucket
                    .entry(class.clone())
                    .or_default()
                    .merge(stats, |id| positions.intern_path(&other.positions.path(id)));
            }
        }
        self.late += other.late;
        self.folded += other.folded;
        self.capped += other.capped;
        if let Some(l) = other.latest {
            self.advance(l * self.cfg.step_ns());
        }
    }

    /// Every class's statistics merged over the window ending at `now_ns`.
    pub fn window(&self, now_ns: i64) -> BTreeMap<String, ClassStats> {
        let end = self.cfg.bucket_of(now_ns);
        let start = end - self.cfg.buckets() + 1;
        let mut merged: BTreeMap<&str, BucketStats> = BTreeMap::new();
        for (_, bucket) in self.buckets.range(start..=end) {
            for (class, stats) in bucket {
                merged.entry(class).or_default().merge(stats, |id| id);
            }
        }
        merged
            .into_iter()
            .map(|(class, m)| {
                let hops = m
                    .hops
                    .into_iter()
                    .filter(|(_, h)| h.visits() >= self.cfg.min_hop_traces)
                    .map(|(id, h)| (self.positions.path(id), h))
                    .collect();
                (class.to_string(), ClassStats { e2e: m.e2e, hops })
            })
            .collect()
    }
}

/// One trace's positions with (self time, parallel).
type Combined = Vec<(u32, (i64, bool))>;

/// Where one sample of a trace went.
#[derive(Clone, Copy)]
enum Slot {
    /// Its own position ([`TOP`] stands for the entry, as a parent).
    Own(u32),
    /// Folded, with everything below it, into this ancestor position ([`TOP`]: dropped).
    Folded(u32),
}

/// One trace's samples by position: (self time, parallel), summed when sequential, max when
/// parallel. A sample whose parent index is not before it is taken as top-level. `known` are
/// the positions the class already has in the bucket, and at most `max` positions in all are
/// kept: a sample at a new position past that is folded into its nearest kept ancestor (its
/// time added to the ancestor's own) with all its descendants. Returns the positions and the
/// number of samples folded.
fn combine(
    positions: &mut Positions,
    hops: &[HopSample],
    known: &Map<u32, HopStats>,
    max: usize,
) -> (Combined, u64) {
    let mut room = max.saturating_sub(known.len());
    let mut slots: Vec<Slot> = Vec::with_capacity(hops.len());
    let mut out: Combined = Vec::with_capacity(hops.len());
    let mut at: Map<u32, usize> = Map::with_capacity_and_hasher(hops.len(), Default::default());
    let mut folded = 0;
    for (i, s) in hops.iter().enumerate() {
        let parent = match s.parent {
            Some(p) if p < i => slots[p],
            Some(p) => {
                tracing::debug!(index = i, parent = p, "hop parent not before it; top-level");
                Slot::Own(TOP)
            }
            None => Slot::Own(TOP),
        };
        let slot = match parent {
            Slot::Folded(a) => Slot::Folded(a),
            Slot::Own(p) => match positions.get(p, &s.hop) {
                Some(id) if at.contains_key(&id) || known.contains_key(&id) => Slot::Own(id),
                _ if room == 0 => Slot::Folded(p),
                found => {
                    room -= 1;
                    Slot::Own(found.unwrap_or_else(|| positions.intern(p, &s.hop)))
                }
            },
        };
        slots.push(slot);
        let ns = s.self_time_ns.max(0);
        match slot {
            Slot::Own(id) => match at.get(&id) {
                Some(&k) => {
                    let (t, par) = &mut out[k].1;
                    *t = if s.parallel { (*t).max(ns) } else { *t + ns };
                    *par = *par && s.parallel;
                }
                None => {
                    at.insert(id, out.len());
                    out.push((id, (ns, s.parallel)));
                }
            },
            Slot::Folded(a) => {
                folded += 1;
                if let Some(&k) = at.get(&a) {
                    out[k].1 .0 += ns;
                }
            }
        }
    }
    (out, folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn window_slides_and_drops_old_buckets() {
        let mut o = Observations::new(WindowConfig::default());
        assert!(o.record_trace("a", 10, &[], 5 * S));
        assert!(o.record_trace("a", 20, &[], 25 * S));
        assert_eq!(o.window(25 * S)["a"].e2e.count(), 2);
        // At 65 s the window is buckets 1..=6 (10 s .. 70 s): the trace at 5 s is out.
        o.advance(65 * S);
        assert_eq!(o.window(65 * S)["a"].e2e.count(), 1);
        assert!(!o.record_trace("a", 30, &[], 3 * S), "too old");
        assert_eq!(o.late_traces(), 1);
        o.advance(200 * S);
        assert!(o.window(200 * S).is_empty());
    }

    #[test]
    fn samples_combine_per_position() {
        let hops = [
            HopSample::new("gw", "GET /", 10),
            HopSample::new("db", "query", 5).child_of(0),
            HopSample::new("db", "query", 7).child_of(0),
            HopSample::new("shard", "get", 30).child_of(0).parallel(),
            HopSample::new("shard", "get", 40).child_of(0).parallel(),
            HopSample::new("db", "query", 1),
            HopSample::new("x", "y", 1).child_of(9),
        ];
        let mut positions = Positions::default();
        let (combined, folded) = combine(&mut positions, &hops, &Map::default(), 100);
        assert_eq!(folded, 0);
        let got: BTreeMap<HopPath, (i64, bool)> = combined
            .into_iter()
            .map(|(id, v)| (positions.path(id), v))
            .collect();
        let gw = HopKey::new("gw", "GET /");
        let db = HopKey::new("db", "query");
        let shard = HopKey::new("shard", "get");
        assert_eq!(got[&vec![gw.clone(), db.clone()]], (12, false));
        assert_eq!(got[&vec![gw.clone(), shard]], (40, true));
        assert_eq!(got[&vec![db]], (1, false));
        assert_eq!(got[&vec![HopKey::new("x", "y")]], (1, false));
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn positions_past_the_limit_fold_into_their_ancestor() {
        let cfg = WindowConfig {
            max_positions: 3,
            min_hop_traces: 1,
            ..WindowConfig::default()
        };
        let mut o = Observations::new(cfg);
        let chain = |names: &[&str], ns: i64| -> Vec<HopSample> {
            let mut v: Vec<HopSample> = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let s = HopSample::new(*n, "op", ns);
                v.push(if i == 0 { s } else { s.child_of(i - 1) });
            }
            v
        };
        assert!(o.record_trace("web", 30, &chain(&["gw", "a", "b"], 10), S));
        // gw -> a -> b -> e: e is new and folds into b; gw -> c -> d: c and d fold into gw.
        assert!(o.record_trace("web", 40, &chain(&["gw", "a", "b", "e"], 10), S));
        let mut fan = chain(&["gw", "c", "d"], 5);
        fan[0].self_time_ns = 10;
        assert!(o.record_trace("web", 20, &fan, S));
        // A new top-level hop has no ancestor: dropped.
        assert!(o.record_trace("web", 5, &chain(&["x"], 5), S));
        assert_eq!(o.folded_samples(), 4);
        // Another class has room of its own.
        assert!(o.record_trace("batch", 5, &chain(&["x"], 5), S));
        assert_eq!(o.folded_samples(), 4);

        let w = o.window(S);
        let web = &w["web"];
        assert_eq!(web.e2e.count(), 4, "every trace still counts end to end");
        let key =
            |names: &[&str]| -> HopPath { names.iter().map(|n| HopKey::new(*n, "op")).collect() };
        assert_eq!(web.hops.len(), 3);
        let gw = &web.hops[&key(&["gw"])].self_time;
        assert_eq!(gw.count(), 3);
        // The gw -> c -> d trace's gw sample holds 10 + 5 + 5.
        assert!(
            (gw.quantile(1.0).unwrap_or(0.0) - 20.0).abs() < 0.5,
            "{:?}",
            gw.quantile(1.0)
        );
        let b = &web.hops[&key(&["gw", "a", "b"])].self_time;
        assert!(
            (b.quantile(1.0).unwrap_or(0.0) - 20.0).abs() < 0.5,
            "b holds e's time"
        );
        assert_eq!(w["batch"].hops.len(), 1);
    }

    #[test]
    fn window_config_parses_humantime() {
        let cfg: WindowConfig = serde_json::from_str(r#"{"window": "2m", "step": "15s"}"#).unwrap();
        assert_eq!(cfg.buckets(), 8);
        assert_eq!(cfg.window_secs(), 120.0);
    }
}
