//! Budget history: at every budget update step the update task records, per class with an
//! objective, the step's end-to-end observation (observed quantile, attainment, samples and
//! the objective's latency) in a bounded in-memory ring per class (the newest
//! [`HISTORY_STEPS`] steps). It is kept in memory only — nothing is persisted, so a restart
//! starts an empty history — and served by `GET /api/v1/budgets/history`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use meshtrace_budget::ClassBudget;
use serde::Serialize;

/// Steps kept per class (an hour at the default 10 s step).
pub const HISTORY_STEPS: usize = 360;

/// One class's observation at one update step.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    /// The step's end, unix milliseconds.
    pub t: i64,
    /// End-to-end latency at the objective's quantile (ms); None without traces.
    pub observed_ms: Option<f64>,
    /// Fraction of the window's traces within the target; None without traces.
    pub attainment: Option<f64>,
    /// Traces in the window.
    pub samples: u64,
    /// The objective's latency target at that step (ms).
    pub objective_ms: f64,
}

/// One class's points, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ClassHistory {
    pub class: String,
    pub points: Vec<HistoryPoint>,
}

/// Bounded per-class rings of [`HistoryPoint`]s.
#[derive(Debug)]
pub struct BudgetHistory {
    capacity: usize,
    rings: Mutex<BTreeMap<String, VecDeque<HistoryPoint>>>,
}

impl Default for BudgetHistory {
    fn default() -> Self {
        BudgetHistory::new(HISTORY_STEPS)
    }
}

impl BudgetHistory {
    /// A history keeping the newest `capacity` (at least 1) points per class.
    pub fn new(capacity: usize) -> BudgetHistory {
        BudgetHistory {
            capacity: capacity.max(1),
            rings: Mutex::default(),
        }
    }

    /// Records one step ending at `t_ns` (unix ns) for every class in `budgets`.
    pub fn record(&self, budgets: &[ClassBudget], t_ns: i64) {
        let t = t_ns.div_euclid(1_000_000);
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        for b in budgets {
            let ring = rings.entry(b.class.clone()).or_default();
            if ring.len() >= self.capacity {
                ring.pop_front();
            }
            ring.push_back(HistoryPoint {
                t,
                observed_ms: b.observed_ms.filter(|v| v.is_finite()),
                attainment: b.attainment.filter(|v| v.is_finite()),
                samples: b.samples,
                objective_ms: b.objective.latency_ms,
            });
        }
    }

    /// Per class (all, or only `class`) the points at or after `since_ms` (unix ms), oldest
    /// first. Classes are in name order; an unknown class gives no entry.
    pub fn query(&self, class: Option<&str>, since_ms: Option<i64>) -> Vec<ClassHistory> {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings
            .iter()
            .filter(|(c, _)| class.is_none_or(|k| k == c.as_str()))
            .map(|(c, ring)| ClassHistory {
                class: c.clone(),
                points: ring
                    .iter()
                    .filter(|p| since_ms.is_none_or(|s| p.t >= s))
                    .cloned()
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_budget::Objective;

    fn budget(class: &str, observed: Option<f64>, samples: u64) -> ClassBudget {
        let objective = Objective {
            quantile: 0.9,
            latency_ms: 100.0,
            importance: 1,
            min_share: None,
        };
        ClassBudget {
            class: class.into(),
            objective,
            observed_ms: observed,
            attainment: observed.map(|o| if o <= 100.0 { 1.0 } else { 0.5 }),
            samples,
            hops: vec![],
        }
    }

    #[test]
    fn ring_keeps_the_newest_steps_per_class() {
        let h = BudgetHistory::new(3);
        for i in 0..5_i64 {
            let mut b = vec![budget("a", Some(50.0 + i as f64), i as u64)];
            if i % 2 == 0 {
                b.push(budget("b", None, 0));
            }
            h.record(&b, i * 1_000_000_000 + 999);
        }
        let all = h.query(None, None);
        assert_eq!(
            all.iter().map(|c| c.class.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let a = &all[0].points;
        assert_eq!(
            a.iter().map(|p| p.t).collect::<Vec<_>>(),
            [2000, 3000, 4000]
        );
        assert_eq!(a[2].observed_ms, Some(54.0));
        assert_eq!(a[2].attainment, Some(1.0));
        assert_eq!((a[2].samples, a[2].objective_ms), (4, 100.0));
        assert_eq!(all[1].points.len(), 3);
        assert_eq!(all[1].points[0].observed_ms, None);
    }

    #[test]
    fn query_filters_by_class_and_since() {
        let h = BudgetHistory::default();
        for i in 0..4_i64 {
            h.record(
                &[budget("a", Some(1.0), 1), budget("b", Some(200.0), 2)],
                i * 1_000_000_000,
            );
        }
        let b = h.query(Some("b"), Some(2000));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].class, "b");
        assert_eq!(
            b[0].points.iter().map(|p| p.t).collect::<Vec<_>>(),
            [2000, 3000]
        );
        assert_eq!(b[0].points[0].attainment, Some(0.5));
        assert!(h.query(Some("nope"), None).is_empty());
        assert!(h
            .query(None, Some(10_000))
            .iter()
            .all(|c| c.points.is_empty()));
    }
}
