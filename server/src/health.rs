//! Whether this node can keep what it is sent: the reason `/readyz` reports when it cannot
//! (the write-ahead log cannot write, segment flushes fail), and the [`Backoff`] that spaces
//! out retries of a failing flush so a fault does not flood the log.
//!
//! The background flush loop sets the reason every tick from the log's and the store's own
//! state, so `/readyz` turns 503 within a tick of a fault and back to 200 within a tick of
//! the first write or flush that succeeds again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What stops this node from storing spans right now, if anything.
#[derive(Debug, Default)]
pub struct Health {
    problem: Mutex<Option<String>>,
}

impl Health {
    /// Replaces the current problem (`None`: healthy).
    pub fn set(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// The current problem, if any.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Retry spacing after failures: 1 s, doubling up to 30 s; a success resets it.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    next: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff {
            failures: 0,
            next: None,
        }
    }

    /// Whether it is time to try (always, unless the last attempt failed recently).
    pub fn ready(&self) -> bool {
        self.next.is_none_or(|t| Instant::now() >= t)
    }

    /// Records a failure; returns the delay until the next attempt.
    pub fn failed(&mut self) -> Duration {
        let delay = Self::FIRST
            .saturating_mul(1 << self.failures.min(5))
            .min(Self::MAX);
        self.failures += 1;
        self.next = Some(Instant::now() + delay);
        delay
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a success.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.next = None;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_thirty_seconds_and_reset_on_success() {
        let mut b = Backoff::new();
        assert!(b.ready());
        let delays: Vec<u64> = (0..7).map(|_| b.failed().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert!(!b.ready());
        assert_eq!(b.failures(), 7);
        b.succeeded();
        assert!(b.ready());
        assert_eq!(b.failed().as_secs(), 1);
    }

    #[test]
    fn health_reports_the_last_problem_set() {
        let h = Health::default();
        assert_eq!(h.problem(), None);
        h.set(Some("disk full".into()));
        assert_eq!(h.problem().as_deref(), Some("disk full"));
        h.set(None);
        assert_eq!(h.problem(), None);
    }
}
