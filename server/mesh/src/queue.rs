//! The sidecar's admission gate: a fixed number of slots in front of a service, and the
//! priority queue of requests waiting for one.
//!
//! Waiting requests are ordered by level (0 = highest), first in first out within a level.
//! A level may carry a minimum share: while its share of the recent grants is below it and it
//! has waiters, it is served before higher levels, so a throughput class is never starved.
//! With a single level (priorities off) the gate is a plain FIFO. The gate also accounts
//! the time its slots are held ([`Gate::busy`]), from which the experiment measures the
//! service's utilization.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Decay of the recent-grant counts per grant (about the last 50 grants matter).
const SHARE_DECAY: f64 = 0.98;

/// Waiting items by level, FIFO within a level, with optional minimum shares.
#[derive(Debug)]
pub struct PriorityQueue<T> {
    levels: BTreeMap<u8, VecDeque<T>>,
    /// Minimum share of grants per level.
    min_share: BTreeMap<u8, f64>,
    /// Exponentially decayed grant counts per level, and their total.
    recent: BTreeMap<u8, f64>,
    recent_total: f64,
    len: usize,
}

impl<T> Default for PriorityQueue<T> {
    fn default() -> Self {
        PriorityQueue {
            levels: BTreeMap::new(),
            min_share: BTreeMap::new(),
            recent: BTreeMap::new(),
            recent_total: 0.0,
            len: 0,
        }
    }
}

impl<T> PriorityQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the minimum shares of grants per level (replacing the previous ones).
    pub fn set_min_shares(&mut self, shares: BTreeMap<u8, f64>) {
        self.min_share = shares;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues an item at a level behind the items already waiting there.
    pub fn push(&mut self, level: u8, item: T) {
        self.levels.entry(level).or_default().push_back(item);
        self.len += 1;
    }

    /// The level to serve next: a level under its minimum share first, else the highest.
    fn next_level(&self) -> Option<u8> {
        let waiting = |l: &u8| self.levels.get(l).is_some_and(|q| !q.is_empty());
        let starved = self.min_share.iter().find(|(level, share)| {
            let got = self.recent.get(level).copied().unwrap_or(0.0);
            waiting(level) && got < **share * self.recent_total
        });
        match starved {
            Some((level, _)) => Some(*level),
            None => self
                .levels
                .iter()
                .find(|(_, q)| !q.is_empty())
                .map(|(l, _)| *l),
        }
    }

    /// Takes the next item and its level.
    pub fn pop(&mut self) -> Option<(u8, T)> {
        let level = self.next_level()?;
        let item = self.levels.get_mut(&level)?.pop_front()?;
        self.len -= 1;
        for v in self.recent.values_mut() {
            *v *= SHARE_DECAY;
        }
        self.recent_total = self.recent_total * SHARE_DECAY + 1.0;
        *self.recent.entry(level).or_default() += 1.0;
        Some((level, item))
    }
}

/// A fixed number of slots; requests wait in a [`PriorityQueue`] for one.
#[derive(Debug)]
pub struct Gate {
    inner: Mutex<GateInner>,
    slots: usize,
    /// Origin of the nanosecond clock of the busy accounting.
    origin: Instant,
}

#[derive(Debug)]
struct GateInner {
    free: usize,
    queue: PriorityQueue<oneshot::Sender<Permit>>,
    /// Slot-time of the permits already released (ns).
    busy_done_ns: u128,
    /// Permits held now, and the sum of their acquisition times (ns since `origin`).
    held: u128,
    held_since_sum_ns: u128,
}

/// A held slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    armed: bool,
    /// When it was granted (ns since the gate's origin).
    since_ns: u128,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.gate.release(self.since_ns);
        }
    }
}

impl Gate {
    pub fn new(slots: usize) -> Arc<Gate> {
        Arc::new(Gate {
            inner: Mutex::new(GateInner {
                free: slots.max(1),
                queue: PriorityQueue::new(),
                busy_done_ns: 0,
                held: 0,
                held_since_sum_ns: 0,
            }),
            slots: slots.max(1),
            origin: Instant::now(),
        })
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    fn now_ns(&self) -> u128 {
        self.origin.elapsed().as_nanos()
    }

    /// Total slot-time held since the gate was created, including the permits held now.
    /// Utilization over a window is the difference of two readings over `slots × wall time`.
    pub fn busy(&self) -> Duration {
        let now = self.now_ns();
        let inner = self.lock();
        let ns = inner.busy_done_ns + inner.held * now - inner.held_since_sum_ns;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// A new armed permit granted now, counted as held.
    fn grant(self: &Arc<Self>, inner: &mut GateInner) -> Permit {
        let since_ns = self.now_ns();
        inner.held += 1;
        inner.held_since_sum_ns += since_ns;
        Permit {
            gate: self.clone(),
            armed: true,
            since_ns,
        }
    }

    /// Stops counting a permit as held, adding its slot-time to the busy total if `used`.
    fn ungrant(&self, inner: &mut GateInner, since_ns: u128, used: bool) {
        inner.held -= 1;
        inner.held_since_sum_ns -= since_ns;
        if used {
            inner.busy_done_ns += self.now_ns().saturating_sub(since_ns);
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    /// Sets the minimum shares of grants per level.
    pub fn set_min_shares(&self, shares: BTreeMap<u8, f64>) {
        self.lock().queue.set_min_shares(shares);
    }

    /// Waits for a slot at `level` (0 = highest).
    pub async fn acquire(self: &Arc<Self>, level: u8) -> Permit {
        let rx = {
            let mut inner = self.lock();
            if inner.free > 0 && inner.queue.is_empty() {
                inner.free -= 1;
                return self.grant(&mut inner);
            }
            let (tx, rx) = oneshot::channel();
            inner.queue.push(level, tx);
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The gate never drops a waiter's sender without sending; keep going regardless.
            Err(_) => Permit {
                gate: self.clone(),
                armed: false,
                since_ns: 0,
            },
        }
    }

    /// Hands a freed slot (held since `since_ns`) to the next live waiter, or returns it to
    /// the pool.
    fn release(self: &Arc<Self>, since_ns: u128) {
        let mut inner = self.lock();
        self.ungrant(&mut inner, since_ns, true);
        loop {
            match inner.queue.pop() {
                None => {
                    inner.free += 1;
                    return;
                }
                Some((_, tx)) => {
                    let permit = self.grant(&mut inner);
                    match tx.send(permit) {
                        Ok(()) => return,
                        // The waiter went away: disarm so that dropping does not re-enter.
                        Err(mut p) => {
                            p.armed = false;
                            self.ungrant(&mut inner, p.since_ns, false);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn orders_across_levels_and_fifo_within() {
        let mut q = PriorityQueue::new();
        q.push(3, "b1");
        q.push(0, "i1");
        q.push(3, "b2");
        q.push(1, "m1");
        q.push(0, "i2");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, x)| x)).collect();
        assert_eq!(order, ["i1", "i2", "m1", "b1", "b2"]);
        assert!(q.is_empty());
    }

    #[test]
    fn min_share_keeps_a_low_level_from_starving() {
        let mut q = PriorityQueue::new();
        q.set_min_shares(BTreeMap::from([(7, 0.2)]));
        let mut low = 0;
        for i in 0..1000 {
            // Both levels always backlogged.
            q.push(0, i);
            q.push(7, i);
            if q.pop().unwrap().0 == 7 {
                low += 1;
            }
        }
        let share = low as f64 / 1000.0;
        assert!((0.17..0.25).contains(&share), "low share {share}");
    }

    #[test]
    fn without_min_share_the_high_level_always_wins() {
        let mut q = PriorityQueue::new();
        for i in 0..100 {
            q.push(0, i);
            q.push(7, i);
            assert_eq!(q.pop().unwrap().0, 0);
        }
    }

    #[tokio::test]
    async fn gate_grants_waiters_by_level_then_arrival() {
        let gate = Gate::new(1);
        let held = gate.acquire(5).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, level) in [("b1", 7u8), ("i1", 0), ("b2", 7), ("i2", 0)] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire(level).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }));
            // Arrival order is the spawn order.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gate.waiting(), 4);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["i1", "i2", "b1", "b2"]);
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn busy_time_counts_the_time_permits_are_held() {
        let gate = Gate::new(2);
        assert_eq!(gate.slots(), 2);
        let before = gate.busy();
        assert!(before.is_zero());
        let started = Instant::now();
        let a = gate.acquire(0).await;
        let b = gate.acquire(0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Held permits count while still held.
        let mid = gate.busy();
        assert!(mid >= Duration::from_millis(200), "{mid:?}");
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(b);
        let wall = started.elapsed();
        // Idle time adds nothing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let busy = gate.busy();
        assert_eq!(busy, gate.busy());
        // One slot for ~100 ms, the other for ~200 ms: at least 300 ms, at most both slots
        // for the whole wall time.
        assert!(busy >= Duration::from_millis(300), "{busy:?}");
        assert!(busy <= wall * 2, "{busy:?} over {wall:?}");
        // A permit handed to a waiter keeps counting; a cancelled waiter adds nothing.
        let held = gate.acquire(0).await;
        let _other = gate.acquire(0).await;
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.acquire(0).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        waiter.abort();
        let _ = waiter.await;
        let t0 = (Instant::now(), gate.busy());
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let grown = gate.busy() - t0.1;
        assert!(grown >= Duration::from_millis(100), "{grown:?}");
        assert!(grown <= t0.0.elapsed() * 2, "{grown:?}");
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_its_slot() {
        let gate = Gate::new(1);
        let held = gate.acquire(0).await;
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.acquire(0).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        // The slot is free again: this must not block.
        let p = tokio::time::timeout(Duration::from_secs(1), gate.acquire(0)).await;
        assert!(p.is_ok());
    }
}
