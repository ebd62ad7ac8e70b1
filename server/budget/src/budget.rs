//! Splitting each class's end-to-end objective into per-hop budgets along its aggregated
//! critical path (GrandSLAm's slack idea), and the slack each hop has left.
//!
//! Over the window, each hop position `n` of the class has an observed self time `v(n)`: the
//! quantile, at the objective's quantile, of its critical-path self time over the traces that
//! visited it. A subtree's observed time is `W(n) = v(n) + Σ W(sequential children) +
//! max W(parallel children)`. Budgets flow down from the entry with the objective's target
//! `L`: a node with subtree budget `B(n)` keeps `v(n)·B/W` for itself, each sequential child
//! gets `W(c)·B/W`, and the parallel children of a fan-out each inherit what is left — the
//! parent's budget minus its own and its sequential children's budgets — whole. So on a chain
//! the budgets are in proportion to each hop's observed share. Slack = budget − observed.
//!
//! Per hop also: the class's visit rate, the hop's share of the class's path time, and the
//! share of the hop's (service, operation) critical-path time this class consumes among all
//! classes (its load there).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::objective::Objective;
use crate::observe::{ClassStats, Observations};
use crate::positions::{HopKey, HopPath};

/// One hop position's budget for one class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopBudget {
    pub service: String,
    pub operation: String,
    /// The caller hop (None for a hop directly under the trace's entry).
    pub parent: Option<HopKey>,
    /// Depth on the call path (0 = top level).
    pub depth: usize,
    /// A parallel branch of its parent's fan-out.
    pub parallel: bool,
    /// The hop's own budget for its self time (ms).
    pub budget_ms: f64,
    /// The budget of the hop and everything it calls (ms): the timeout for a call into it.
    pub subtree_budget_ms: f64,
    /// Observed self time at the objective's quantile (ms).
    pub observed_ms: f64,
    /// `budget_ms - observed_ms`; negative when over budget.
    pub slack_ms: f64,
    /// `observed` over the class's total path time (0..=1).
    pub share: f64,
    /// Visits per second over the window.
    pub rate_per_s: f64,
    /// This class's part of all classes' critical-path time at this (service, operation).
    pub load_share: f64,
}

/// One class's objective, attainment and per-hop budgets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassBudget {
    pub class: String,
    pub objective: Objective,
    /// End-to-end latency at the objective's quantile (ms); None without traces.
    pub observed_ms: Option<f64>,
    /// Fraction of the window's traces within the target; None without traces.
    pub attainment: Option<f64>,
    /// Traces in the window.
    pub samples: u64,
    /// Hop positions in depth-first order.
    pub hops: Vec<HopBudget>,
}

impl ClassBudget {
    /// Whether the end-to-end observed quantile is over the target.
    pub fn missing(&self) -> bool {
        self.observed_ms
            .is_some_and(|o| o > self.objective.latency_ms)
    }
}

/// Budgets of every class with an objective, over the window ending at `now_ns`, in class
/// order. A class with an objective but no traces has no observations and no hops.
pub fn compute_budgets(
    obs: &Observations,
    objectives: &BTreeMap<String, Objective>,
    now_ns: i64,
) -> Vec<ClassBudget> {
    let window = obs.window(now_ns);
    let load = load_totals(&window);
    let secs = obs.config().window_secs();
    objectives
        .iter()
        .map(|(class, objective)| match window.get(class) {
            Some(stats) if stats.e2e.count() > 0 => {
                class_budget(class, objective, stats, &load, secs)
            }
            _ => ClassBudget {
                class: class.clone(),
                objective: objective.clone(),
                observed_ms: None,
                attainment: None,
                samples: 0,
                hops: Vec::new(),
            },
        })
        .collect()
}

/// Total critical-path time of all classes per (service, operation).
fn load_totals(window: &BTreeMap<String, ClassStats>) -> BTreeMap<HopKey, f64> {
    let mut out: BTreeMap<HopKey, f64> = BTreeMap::new();
    for stats in window.values() {
        for (k, t) in hop_time(stats) {
            *out.entry(k.clone()).or_default() += t;
        }
    }
    out
}

/// One class's critical-path time per (service, operation), over all its positions.
fn hop_time(stats: &ClassStats) -> BTreeMap<&HopKey, f64> {
    let mut out: BTreeMap<&HopKey, f64> = BTreeMap::new();
    for (path, h) in &stats.hops {
        if let Some(k) = path.last() {
            *out.entry(k).or_default() += h.self_time.sum();
        }
    }
    out
}

/// The aggregated tree of one class's hop positions.
struct Tree<'a> {
    paths: Vec<&'a HopPath>,
    observed: Vec<f64>,
    parallel: Vec<bool>,
    /// Children of each node; index `len` is the virtual entry.
    children: Vec<Vec<usize>>,
    subtree: Vec<f64>,
}

impl<'a> Tree<'a> {
    fn build(stats: &'a ClassStats, q: f64) -> Tree<'a> {
        let paths: Vec<&HopPath> = stats.hops.keys().collect();
        let index: BTreeMap<&[HopKey], usize> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i))
            .collect();
        let n = paths.len();
        let mut children = vec![Vec::new(); n + 1];
        for (i, p) in paths.iter().enumerate() {
            // The nearest recorded ancestor, else the entry.
            let parent = (1..p.len())
                .rev()
                .find_map(|k| index.get(&p[..k]).copied())
                .unwrap_or(n);
            children[parent].push(i);
        }
        let observed = stats
            .hops
            .values()
            .map(|h| h.self_time.quantile(q).unwrap_or(0.0) / 1e6)
            .collect();
        let parallel = stats.hops.values().map(|h| h.is_parallel()).collect();
        let mut t = Tree {
            paths,
            observed,
            parallel,
            children,
            subtree: vec![0.0; n + 1],
        };
        t.fill_subtree(n);
        t
    }

    fn entry(&self) -> usize {
        self.paths.len()
    }

    fn own(&self, i: usize) -> f64 {
        if i == self.entry() {
            0.0
        } else {
            self.observed[i]
        }
    }

    /// Computes `W` bottom-up (recursion depth is the call depth, which is small).
    fn fill_subtree(&mut self, i: usize) -> f64 {
        let kids = self.children[i].clone();
        let (mut seq, mut par) = (0.0, 0.0f64);
        for c in kids {
            let w = self.fill_subtree(c);
            if self.parallel[c] {
                par = par.max(w);
            } else {
                seq += w;
            }
        }
        let w = self.own(i) + seq + par;
        self.subtree[i] = w;
        w
    }

    /// Distributes `budget` over node `i`'s subtree; returns (self budget, subtree budget)
    /// per node.
    fn distribute(&self, i: usize, budget: f64, out: &mut [(f64, f64)]) {
        let w = self.subtree[i];
        let scale = if w > 0.0 { budget / w } else { 0.0 };
        // A leaf, or a subtree without observed time, keeps its whole budget.
        let own = if w > 0.0 && !self.children[i].is_empty() {
            self.own(i) * scale
        } else {
            budget
        };
        out[i] = (own, budget);
        let seq: f64 = self.children[i]
            .iter()
            .filter(|&&c| !self.parallel[c])
            .map(|&c| self.subtree[c] * scale)
            .sum();
        let fan_out = (budget - own - seq).max(0.0);
        for &c in &self.children[i] {
            let b = if self.parallel[c] {
                fan_out
            } else {
                self.subtree[c] * scale
            };
            self.distribute(c, b, out);
        }
    }

    fn preorder(&self, i: usize, depth: usize, out: &mut Vec<(usize, usize)>) {
        for &c in &self.children[i] {
            out.push((c, depth));
            self.preorder(c, depth + 1, out);
        }
    }
}

fn class_budget(
    class: &str,
    objective: &Objective,
    stats: &ClassStats,
    load: &BTreeMap<HopKey, f64>,
    window_secs: f64,
) -> ClassBudget {
    let q = objective.quantile;
    let samples = stats.e2e.count();
    let observed_ms = stats.e2e.quantile(q).map(|v| v / 1e6);
    let within = stats.e2e.count_at_or_below(objective.latency_ns());
    let tree = Tree::build(stats, q);
    let entry = tree.entry();
    let mut budgets = vec![(0.0, 0.0); entry + 1];
    tree.distribute(entry, objective.latency_ms, &mut budgets);
    let total = tree.subtree[entry];
    let mut order = Vec::new();
    tree.preorder(entry, 0, &mut order);
    let hop_stats: Vec<_> = stats.hops.values().collect();
    let mine = hop_time(stats);
    let hops = order
        .into_iter()
        .map(|(i, depth)| {
            let path = tree.paths[i];
            let key = path.last().cloned().unwrap_or_else(|| HopKey::new("", ""));
            let observed = tree.observed[i];
            let (budget, subtree) = budgets[i];
            let mine = mine.get(&key).copied().unwrap_or(0.0);
            let all: f64 = load.get(&key).copied().unwrap_or(0.0);
            HopBudget {
                parent: path.len().checked_sub(2).map(|k| path[k].clone()),
                depth,
                parallel: tree.parallel[i],
                budget_ms: budget,
                subtree_budget_ms: subtree,
                observed_ms: observed,
                slack_ms: budget - observed,
                share: if total > 0.0 { observed / total } else { 0.0 },
                rate_per_s: hop_stats[i].visits() as f64 / window_secs,
                load_share: if all > 0.0 { mine / all } else { 0.0 },
                service: key.service.to_string(),
                operation: key.operation.to_string(),
            }
        })
        .collect();
    ClassBudget {
        class: class.to_string(),
        objective: objective.clone(),
        observed_ms,
        attainment: Some(within as f64 / samples as f64),
        samples,
        hops,
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
