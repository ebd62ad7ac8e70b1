//! The process's memory budget, shared by the parts that must refuse work when it is spent.
//!
//! The server samples its resident memory (RSS) twenty times a second and records it here
//! ([`MemoryBudget::record`]); ingest refuses new spans (429 / `RESOURCE_EXHAUSTED` with a
//! retry delay) and the query runtime new plans while the last sample is past seven eighths
//! of the budget ([`MemoryBudget::exceeded`]), and the server sheds what it can (open traces
//! are completed early, buffers flushed) until it is back under. The last eighth is for what
//! is already in flight when refusals start (requests being decoded, a flush encoding), so
//! that the peak stays under the budget itself. Measuring the whole process, not estimating parts, accounts for
//! everything at once: buffers, open traces, caches, running queries, the allocator's slack.
//! Past three quarters of the budget buffers are flushed four times sooner
//! ([`MemoryBudget::pressed`]): a flush needs a few times the buffer's size for a moment, so
//! small buffers are what keep the peak under the budget.
//! This crate does no I/O: the sampling is the server's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A memory budget and the last resident size measured against it. Cheap to clone: clones
/// share the measurement.
#[derive(Clone, Debug, Default)]
pub struct MemoryBudget(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Bytes; 0 is no budget.
    limit: u64,
    rss: AtomicU64,
}

/// The budget is spent: what was measured against what is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub rss: u64,
    pub limit: u64,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server is short of memory ({} MiB resident, past seven eighths of its memory budget of {} MiB)",
            self.rss >> 20,
            self.limit >> 20
        )
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes (0: none).
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget(Arc::new(Inner {
            limit,
            rss: AtomicU64::new(0),
        }))
    }

    /// No budget: never exceeded.
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget::default()
    }

    /// The budget in bytes (0: none).
    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Records a measurement of the process's resident memory.
    pub fn record(&self, rss: u64) {
        self.0.rss.store(rss, Ordering::Relaxed);
    }

    /// The last measurement (0 before the first).
    pub fn rss(&self) -> u64 {
        self.0.rss.load(Ordering::Relaxed)
    }

    /// Whether the last measurement is past seven eighths of the budget ([`refusal_point`]),
    /// where new work is refused.
    pub fn exceeded(&self) -> Option<Exceeded> {
        let (rss, limit) = (self.rss(), self.limit());
        (limit > 0 && rss > refusal_point(limit)).then_some(Exceeded { rss, limit })
    }

    /// What may still be taken before new work is refused; `None` without a budget.
    pub fn headroom(&self) -> Option<u64> {
        let limit = self.limit();
        (limit > 0).then(|| refusal_point(limit).saturating_sub(self.rss()))
    }

    /// Whether the last measurement is over three quarters of the budget: buffers are then
    /// flushed four times sooner, so that encoding a large buffer (which takes a few times its
    /// size for a moment) cannot carry the process far past the budget.
    pub fn pressed(&self) -> bool {
        let (rss, limit) = (self.rss(), self.limit());
        limit > 0 && rss > limit / 4 * 3
    }

    /// The age at which a buffer is flushed: `normal`, or a quarter of it while
    /// [`MemoryBudget::pressed`].
    pub fn flush_age(&self, normal: Duration) -> Duration {
        match self.pressed() {
            true => normal / 4,
            false => normal,
        }
    }
}

/// Seven eighths of a budget (in any unit): past it new work is refused; the last eighth is
/// for work already in flight.
pub fn refusal_point(budget: u64) -> u64 {
    budget / 8 * 7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceeded_only_past_a_set_budget() {
        let none = MemoryBudget::unlimited();
        none.record(u64::MAX);
        assert_eq!(none.exceeded(), None);
        let budget = MemoryBudget::new(800 << 20);
        let shared = budget.clone();
        shared.record(700 << 20);
        assert_eq!(budget.exceeded(), None, "seven eighths is not past them");
        assert!(budget.pressed());
        shared.record(600 << 20);
        assert!(!budget.pressed(), "three quarters is not pressed yet");
        assert_eq!(budget.headroom(), Some(100 << 20));
        assert_eq!(none.headroom(), None);
        shared.record(701 << 20);
        let e = budget.exceeded().expect("past seven eighths");
        assert_eq!(
            e.to_string(),
            "the server is short of memory (701 MiB resident, past seven eighths of its memory budget of 800 MiB)"
        );
    }
}
