//! The sidecar's admission gate: a fixed number of slots in front of a service, and the
//! priority queue of requests waiting for one.
//!
//! Waiting requests are ordered by level (0 = highest), first in first out within a level.
//! A level may carry a minimum share: while its share of the recent grants is below it and it
//! has waiters, it is served before higher levels, so a throughput class is never starved.
//! With a single level (priorities off) the gate is a plain FIFO.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

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
}

#[derive(Debug)]
struct GateInner {
    free: usize,
    queue: PriorityQueue<oneshot::Sender<Permit>>,
}

/// A held slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.gate.release();
        }
    }
}

impl Gate {
    pub fn new(slots: usize) -> Arc<Gate> {
        Arc::new(Gate {
            inner: Mutex::new(GateInner {
                free: slots.max(1),
                queue: PriorityQueue::new(),
            }),
        })
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
                return Permit {
                    gate: self.clone(),
                    armed: true,
                };
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
            },
        }
    }

    /// Hands a freed slot to the next live waiter, or returns it to the pool.
    fn release(self: &Arc<Self>) {
        let mut inner = self.lock();
        loop {
            match inner.queue.pop() {
                None => {
                    inner.free += 1;
                    return;
                }
                Some((_, tx)) => {
                    let permit = Permit {
                        gate: self.clone(),
                        armed: true,
                    };
                    match tx.send(permit) {
                        Ok(()) => return,
                        // The waiter went away: disarm so that dropping does not re-enter.
                        Err(mut p) => p.armed = false,
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
