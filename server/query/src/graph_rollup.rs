//! Per-minute rollups of the service graph: what the `edges` and `traces` rows of one minute
//! count (a [`ServiceGraph`] per class, traces per root service and class), kept in memory so
//! that `/api/dependencies` and `/api/v1/graph` over a long window read a few rows per minute
//! instead of every stored call.
//!
//! # Design
//!
//! A window is cut into whole minutes and the partial minutes at its edges. A whole minute is
//! served from its rollup while the store says no derived row of that minute changed since the
//! rollup was read ([`meshtrace_storage::touches`]: rows appended, segments removed, a peer's
//! segments seen); everything else (partial minutes, minutes never read or gone stale) is read
//! with SQL in as few contiguous ranges as possible (of at most 15 minutes each, which bounds
//! a read's memory), and the whole minutes read are kept as new rollups. The store's epoch is taken before the SQL snapshot, so a change racing the
//! read leaves the rollup stale, never wrong. Late traces touch the minutes they started in,
//! which are then read again: rollups of settled minutes are exact.
//!
//! Rollups are estimated at about 2 KiB per edge (its latency sketch) and bounded by `[query]
//! graph_cache_mib`; past it the oldest minutes go first. A background task keeps the last
//! [`WARM_WINDOW`] rolled up (or as many minutes as fit), so a query finds settled minutes
//! ready after a restart too.
//!
//! Each trace's latest derivation is chosen among its rows inside the range read (as a query
//! of that range alone would): a trace derived again after late spans whose calls moved to
//! another minute may count its earlier calls in a minute read apart. Both derivations are
//! otherwise never counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use meshtrace_provenance::ServiceGraph;
use meshtrace_storage::touches::{minute_of, MINUTE_NS};

use serde::Serialize;
use utoipa::ToSchema;

/// The recent past a background task keeps rolled up.
pub const WARM_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Windows of more whole minutes are read with SQL alone (their rollups would not fit).
pub(crate) const MAX_ROLLUP_MINUTES: i64 = 200_000;
/// The estimated bytes of one edge of a rollup (mostly its latency sketch).
const EDGE_BYTES: usize = 2048;

/// Traces of one class entering at one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct RootCount {
    pub root_service: String,
    pub class: String,
    pub traces: u64,
}

/// What the rows of a time range count.
#[derive(Clone, Debug, Default)]
pub struct GraphPart {
    /// The service graph of each class.
    pub by_class: BTreeMap<String, ServiceGraph>,
    /// Traces per (root service, class).
    pub roots: BTreeMap<(String, String), u64>,
}

impl GraphPart {
    pub fn merge(&mut self, other: &GraphPart) {
        for (class, g) in &other.by_class {
            match self.by_class.get_mut(class) {
                Some(mine) => mine.merge(g),
                None => {
                    self.by_class.insert(class.clone(), g.clone());
                }
            }
        }
        for (k, n) in &other.roots {
            *self.roots.entry(k.clone()).or_default() += n;
        }
    }

    /// The graph of one class, or of all.
    pub fn graph(&self, class: Option<&str>) -> ServiceGraph {
        let mut out = ServiceGraph::served();
        for (c, g) in &self.by_class {
            if class.is_none_or(|want| want == c) {
                out.merge(g);
            }
        }
        out
    }

    /// The traces per root service and class.
    pub fn roots(&self) -> Vec<RootCount> {
        self.roots
            .iter()
            .map(|((root_service, class), traces)| RootCount {
                root_service: root_service.clone(),
                class: class.clone(),
                traces: *traces,
            })
            .collect()
    }

    /// The class's graph, created empty when new.
    pub(crate) fn class_graph(&mut self, class: &str) -> &mut ServiceGraph {
        if !self.by_class.contains_key(class) {
            self.by_class
                .insert(class.to_string(), ServiceGraph::served());
        }
        self.by_class
            .get_mut(class)
            .expect("the class was just inserted")
    }

    fn estimated_bytes(&self) -> usize {
        let edges: usize = self.by_class.values().map(|g| g.edges.len()).sum();
        256 + edges * EDGE_BYTES + self.roots.len() * 96
    }
}

struct Cached {
    /// The store's derived epoch read before the rows were.
    epoch: u64,
    part: Arc<GraphPart>,
    bytes: usize,
}

/// The rollups, by minute start. Cheap to clone.
#[derive(Clone)]
pub(crate) struct MinuteCache {
    inner: Arc<Mutex<CacheState>>,
}

struct CacheState {
    minutes: BTreeMap<i64, Cached>,
    bytes: usize,
    max_bytes: usize,
}

impl MinuteCache {
    pub(crate) fn new(max_bytes: usize) -> MinuteCache {
        MinuteCache {
            inner: Arc::new(Mutex::new(CacheState {
                minutes: BTreeMap::new(),
                bytes: 0,
                max_bytes,
            })),
        }
    }

    /// How many minutes are rolled up.
    pub(crate) fn len(&self) -> usize {
        self.lock().minutes.len()
    }

    /// About how many minutes fit in the budget (nine tenths of it), judged by the minutes
    /// held now; unbounded while nothing is held.
    pub(crate) fn capacity_minutes(&self) -> i64 {
        let state = self.lock();
        match state.minutes.len() {
            0 => i64::MAX,
            n => {
                let per_minute = (state.bytes / n).max(1);
                i64::try_from(state.max_bytes / 10 * 9 / per_minute).unwrap_or(i64::MAX)
            }
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.lock().max_bytes > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The rollup of each of `minutes` that is still valid (`stale` says whether a minute
    /// changed after an epoch); the others are returned as missing.
    pub(crate) fn lookup(
        &self,
        minutes: impl Iterator<Item = i64>,
        stale: impl Fn(i64, u64) -> bool,
    ) -> (Vec<Arc<GraphPart>>, Vec<i64>) {
        let state = self.lock();
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for m in minutes {
            match state.minutes.get(&m).filter(|c| !stale(m, c.epoch)) {
                Some(c) => found.push(c.part.clone()),
                None => missing.push(m),
            }
        }
        (found, missing)
    }

    /// Keeps the rollup of a minute read at `epoch`, evicting the oldest minutes past the
    /// budget.
    pub(crate) fn insert(&self, minute: i64, epoch: u64, part: GraphPart) {
        let bytes = part.estimated_bytes();
        let mut state = self.lock();
        if bytes > state.max_bytes {
            return;
        }
        let cached = Cached {
            epoch,
            part: Arc::new(part),
            bytes,
        };
        if let Some(old) = state.minutes.insert(minute, cached) {
            state.bytes -= old.bytes;
        }
        state.bytes += bytes;
        while state.bytes > state.max_bytes {
            let Some((_, evicted)) = state.minutes.pop_first() else {
                break;
            };
            state.bytes -= evicted.bytes;
        }
    }
}

/// The whole minutes inside `[start_ns, end_ns)`: the first one's start and how many.
pub(crate) fn whole_minutes(start_ns: i64, end_ns: i64) -> (i64, i64) {
    let first = match minute_of(start_ns) {
        m if m == start_ns => m,
        m => m.saturating_add(MINUTE_NS),
    };
    let last = minute_of(end_ns);
    let n = (i128::from(last) - i128::from(first)) / i128::from(MINUTE_NS);
    (first, n.clamp(0, i128::from(i64::MAX)) as i64)
}

/// The ranges to read: the partial minutes at the window's edges and the `missing` whole
/// minutes, adjacent ones joined.
pub(crate) fn ranges_to_read(
    start_ns: i64,
    end_ns: i64,
    first: i64,
    n: i64,
    missing: &[i64],
) -> Vec<(i64, i64)> {
    let whole_end = first + n * MINUTE_NS;
    let mut pieces: Vec<(i64, i64)> = Vec::new();
    if start_ns < first.min(end_ns) {
        pieces.push((start_ns, first.min(end_ns)));
    }
    pieces.extend(missing.iter().map(|m| (*m, m + MINUTE_NS)));
    let tail_start = whole_end.max(first.min(end_ns));
    if tail_start < end_ns {
        pieces.push((tail_start, end_ns));
    }
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (a, b) in pieces {
        match out.last_mut() {
            Some(last) if last.1 == a && b - last.0 <= MAX_RANGE_NS => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

/// A range read at once spans at most this long (15 minutes), so that the memory one read
/// takes (each trace's latest derivation is chosen over its rows) stays bounded however long
/// the window.
const MAX_RANGE_NS: i64 = 15 * MINUTE_NS;

/// The minute key rows of the minutes in `keep` go to; every other row goes to `REST`.
pub(crate) const REST: i64 = i64::MIN;

pub(crate) fn route(start_ns: i64, keep: &BTreeSet<i64>) -> i64 {
    let m = minute_of(start_ns);
    if keep.contains(&m) {
        m
    } else {
        REST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = MINUTE_NS;

    #[test]
    fn windows_split_into_whole_minutes_and_edges() {
        assert_eq!(whole_minutes(0, 3 * M), (0, 3));
        assert_eq!(whole_minutes(1, 3 * M + 5), (M, 2));
        assert_eq!(whole_minutes(5, 10), (M, 0));
        // Nothing cached: the whole window in one range.
        assert_eq!(
            ranges_to_read(1, 3 * M + 5, M, 2, &[M, 2 * M]),
            vec![(1, 3 * M + 5)]
        );
        // Minute 1 cached: the head with minute 0's rest, then minute 2 with the tail.
        assert_eq!(
            ranges_to_read(1, 4 * M + 5, M, 3, &[2 * M, 3 * M]),
            vec![(1, M), (2 * M, 4 * M + 5)]
        );
        // A long run is read in ranges of at most 15 minutes.
        let missing: Vec<i64> = (0..40).map(|m| m * M).collect();
        let ranges = ranges_to_read(0, 40 * M, 0, 40, &missing);
        assert_eq!(
            ranges,
            vec![(0, 15 * M), (15 * M, 30 * M), (30 * M, 40 * M)]
        );
        // All cached, aligned: nothing to read.
        assert!(ranges_to_read(0, 2 * M, 0, 2, &[]).is_empty());
        // Inside one minute, and across one boundary.
        assert_eq!(ranges_to_read(5, 10, M, 0, &[]), vec![(5, 10)]);
        assert_eq!(whole_minutes(M - 5, M + 5), (M, 0));
        assert_eq!(
            ranges_to_read(M - 5, M + 5, M, 0, &[]),
            vec![(M - 5, M + 5)]
        );
        // The widest windows a client can ask for are too long to roll up.
        assert!(whole_minutes(i64::MIN, i64::MAX).1 > MAX_ROLLUP_MINUTES);
        assert_eq!(whole_minutes(i64::MAX - 5, i64::MAX).1, 0);
    }

    #[test]
    fn the_cache_keeps_to_its_budget_and_drops_stale_minutes() {
        let cache = MinuteCache::new(3 * 256);
        for m in 0..5 {
            cache.insert(m * M, 1, GraphPart::default());
        }
        let (found, missing) = cache.lookup((0..5).map(|m| m * M), |_, _| false);
        assert_eq!((found.len(), missing), (3, vec![0, M]), "oldest evicted");
        let (found, missing) = cache.lookup([3 * M, 4 * M].into_iter(), |m, _| m == 4 * M);
        assert_eq!(
            (found.len(), missing),
            (1, vec![4 * M]),
            "a changed minute is stale"
        );
    }
}
