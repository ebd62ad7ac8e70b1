//! Priority levels per proxy (service) and class, from budgets and slack, published as
//! versioned assignment sets.
//!
//! At each service, every class with hops there gets a *standing*: its tightest hop there (the
//! lowest slack over budget), whether that hop is at risk (slack under
//! `at_risk_slack_fraction` of its budget, or negative), and its importance. Classes are
//! ranked at-risk first, then by importance (higher first); each distinct (at risk,
//! importance) tier is one level, 0 the highest, capped at `levels - 1`. So a class at risk at
//! a hop it shares is raised above classes with slack or lower importance there.
//!
//! Hysteresis: a class's level at a service changes only after the same new level has been
//! proposed in `hysteresis_windows` consecutive updates (one update per window step); a class
//! new at a service gets its level at once. Operator overrides are applied last, at once, with
//! the reason "operator override". Timeouts (the subtree budget of the class's hops at the
//! service) are republished only when they move by more than `timeout_tolerance`. A set's
//! version goes up by one each time its content changes, and only then.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::budget::{ClassBudget, HopBudget};

/// A learned mapping row: (caller service, callee service, operation, class, share), as
/// provenance's `ClassMapping::entries` gives them.
pub type MappingRow = (String, String, String, String, f64);

/// How priorities are derived.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PriorityConfig {
    /// Number of priority levels (0 = highest, `levels - 1` = lowest); at least 1.
    pub levels: u8,
    /// Consecutive updates a new level must be proposed in before it applies.
    pub hysteresis_windows: u32,
    /// A hop is at risk when its slack is under this fraction of its budget.
    pub at_risk_slack_fraction: f64,
    /// Request header carrying the class.
    pub class_header: String,
    /// Baggage key carrying the class.
    pub baggage_key: String,
    /// Relative change of a timeout below which the published one is kept.
    pub timeout_tolerance: f64,
    /// Assignment sets kept per service in the history.
    pub history_len: usize,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            levels: 8,
            hysteresis_windows: 2,
            at_risk_slack_fraction: 0.1,
            class_header: "x-mesh-class".into(),
            baggage_key: "mesh.class".into(),
            timeout_tolerance: 0.1,
            history_len: 16,
        }
    }
}

/// A learned call signature into the service carrying the class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signature {
    pub caller: String,
    pub operation: String,
    /// Share of this signature's calls that belong to the class, rounded to 0.01.
    pub share: f64,
}

/// How a proxy recognises a class: any rule matching is enough.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatchRule {
    /// (header name, value).
    pub header: Option<(String, String)>,
    /// (baggage key, value).
    pub baggage: Option<(String, String)>,
    pub signatures: Vec<Signature>,
}

/// One class's assignment at one service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Assignment {
    pub class: String,
    /// 0 = highest.
    pub priority: u8,
    /// Timeout budget for a call into the service for this class (ms).
    pub timeout_ms: f64,
    pub r#match: MatchRule,
    /// Why this level, as of when it was applied.
    pub reason: String,
    /// The class's minimum share, for throughput classes.
    pub min_share: Option<f64>,
}

/// The assignments of one service at one version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AssignmentSet {
    pub version: u64,
    pub service: String,
    pub generated_at_ns: i64,
    /// In class order.
    pub assignments: Vec<Assignment>,
}

impl AssignmentSet {
    /// The set of a service nothing is known about: version 0, no assignments.
    pub fn empty(service: &str) -> Self {
        AssignmentSet {
            version: 0,
            service: service.to_string(),
            generated_at_ns: 0,
            assignments: Vec::new(),
        }
    }
}

/// A class's position at one service in one update.
#[derive(Clone, Debug)]
struct Standing<'a> {
    budget: &'a ClassBudget,
    /// The tightest hop at the service.
    hop: &'a HopBudget,
    slack_fraction: f64,
    at_risk: bool,
    timeout_ms: f64,
}

/// Hysteresis state of one class at one service.
#[derive(Clone, Debug)]
struct ClassState {
    applied: u8,
    reason: String,
    pending: Option<(u8, u32)>,
    timeout_ms: f64,
}

#[derive(Clone, Debug, Default)]
struct ServiceState {
    classes: BTreeMap<String, ClassState>,
    current: Option<AssignmentSet>,
    history: Vec<AssignmentSet>,
}

/// Turns budgets into versioned per-service assignment sets, one update per window step.
#[derive(Clone, Debug)]
pub struct Prioritizer {
    cfg: PriorityConfig,
    services: BTreeMap<String, ServiceState>,
}

fn slack_fraction(h: &HopBudget) -> f64 {
    if h.budget_ms > 0.0 {
        h.slack_ms / h.budget_ms
    } else if h.slack_ms < 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    }
}

/// Every class's standing at every service its hops touch.
fn standings<'a>(budgets: &'a [ClassBudget], at_risk: f64) -> BTreeMap<&'a str, Vec<Standing<'a>>> {
    let mut out: BTreeMap<&str, Vec<Standing>> = BTreeMap::new();
    for b in budgets {
        let mut per_service: BTreeMap<&str, Vec<&HopBudget>> = BTreeMap::new();
        for h in &b.hops {
            per_service.entry(h.service.as_str()).or_default().push(h);
        }
        for (service, hops) in per_service {
            let hop = hops
                .iter()
                .copied()
                .min_by(|x, y| slack_fraction(x).total_cmp(&slack_fraction(y)))
                .expect("a service listed has hops");
            let f = slack_fraction(hop);
            out.entry(service).or_default().push(Standing {
                budget: b,
                hop,
                slack_fraction: f,
                at_risk: f < at_risk,
                timeout_ms: hops.iter().map(|h| h.subtree_budget_ms).fold(0.0, f64::max),
            });
        }
    }
    out
}

/// The level each class would get at one service now, with its reason.
fn propose(standings: &[Standing], levels: u8) -> BTreeMap<String, (u8, String)> {
    let mut order: Vec<&Standing> = standings.iter().collect();
    order.sort_by(|a, b| {
        b.at_risk
            .cmp(&a.at_risk)
            .then(
                b.budget
                    .objective
                    .importance
                    .cmp(&a.budget.objective.importance),
            )
            .then(a.budget.class.cmp(&b.budget.class))
    });
    let shared = standings.len() > 1;
    let mut out = BTreeMap::new();
    let mut tier = 0u8;
    let mut last: Option<(bool, u32)> = None;
    for s in order {
        let key = (s.at_risk, s.budget.objective.importance);
        if last.is_some_and(|l| l != key) {
            tier = tier.saturating_add(1);
        }
        last = Some(key);
        out.insert(
            s.budget.class.clone(),
            (tier.min(levels - 1), reason(s, shared)),
        );
    }
    out
}

fn reason(s: &Standing, shared: bool) -> String {
    let h = s.hop;
    let head = format!(
        "objective {} of class {}: slack {:.1} ms of {:.1} ms budget at {}/{} ({:.0}%)",
        s.budget.objective.describe(),
        s.budget.class,
        h.slack_ms,
        h.budget_ms,
        h.service,
        h.operation,
        s.slack_fraction.max(-9.99) * 100.0,
    );
    match (s.at_risk, shared) {
        (true, true) => {
            format!("{head}; at risk: raised above classes with slack or lower importance")
        }
        (true, false) => format!("{head}; at risk, not sharing this service"),
        (false, _) => format!("{head}; importance {}", s.budget.objective.importance),
    }
}

impl Prioritizer {
    pub fn new(cfg: PriorityConfig) -> Self {
        Prioritizer {
            cfg,
            services: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &PriorityConfig {
        &self.cfg
    }

    /// One update (call once per window step). Returns the sets that changed, each with its
    /// version bumped by one, in service order. `mapping` gives the learned signatures,
    /// `overrides` pins classes to levels (clamped to the lowest level).
    pub fn update(
        &mut self,
        budgets: &[ClassBudget],
        mapping: &[MappingRow],
        overrides: &BTreeMap<String, u8>,
        now_ns: i64,
    ) -> Vec<AssignmentSet> {
        let levels = self.cfg.levels.max(1);
        let all = standings(budgets, self.cfg.at_risk_slack_fraction);
        let mut names: Vec<String> = all.keys().map(|s| s.to_string()).collect();
        names.extend(self.services.keys().cloned());
        names.sort();
        names.dedup();
        let mut changed = Vec::new();
        for service in names {
            let st = all.get(service.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let proposed = propose(st, levels);
            let assignments = self.step_service(&service, st, proposed, mapping, overrides);
            if let Some(set) = self.publish(&service, assignments, now_ns) {
                changed.push(set);
            }
        }
        changed
    }

    /// Applies hysteresis to one service's proposals and builds its assignments.
    fn step_service(
        &mut self,
        service: &str,
        standings: &[Standing],
        proposed: BTreeMap<String, (u8, String)>,
        mapping: &[MappingRow],
        overrides: &BTreeMap<String, u8>,
    ) -> Vec<Assignment> {
        let cfg = self.cfg.clone();
        let state = self.services.entry(service.to_string()).or_default();
        state.classes.retain(|c, _| proposed.contains_key(c));
        let mut out = Vec::new();
        for s in standings {
            let class = &s.budget.class;
            let (level, why) = proposed[class].clone();
            let cs = state
                .classes
                .entry(class.clone())
                .or_insert_with(|| ClassState {
                    applied: level,
                    reason: why.clone(),
                    pending: None,
                    timeout_ms: s.timeout_ms,
                });
            step_class(cs, level, why, cfg.hysteresis_windows);
            if (s.timeout_ms - cs.timeout_ms).abs() > cfg.timeout_tolerance * cs.timeout_ms {
                cs.timeout_ms = s.timeout_ms;
            }
            let (priority, reason) = match overrides.get(class) {
                Some(&p) => (
                    p.min(cfg.levels.max(1) - 1),
                    "operator override".to_string(),
                ),
                None => (cs.applied, cs.reason.clone()),
            };
            out.push(Assignment {
                class: class.clone(),
                priority,
                timeout_ms: cs.timeout_ms,
                r#match: match_rule(&cfg, service, class, mapping),
                reason,
                min_share: s.budget.objective.min_share,
            });
        }
        out.sort_by(|a, b| a.class.cmp(&b.class));
        out
    }

    /// Stores a service's assignments; returns the new set when they changed.
    fn publish(
        &mut self,
        service: &str,
        assignments: Vec<Assignment>,
        now_ns: i64,
    ) -> Option<AssignmentSet> {
        let history_len = self.cfg.history_len;
        let state = self.services.entry(service.to_string()).or_default();
        let version = match &state.current {
            Some(cur) if cur.assignments == assignments => return None,
            Some(cur) => cur.version + 1,
            None if assignments.is_empty() => return None,
            None => 1,
        };
        let set = AssignmentSet {
            version,
            service: service.to_string(),
            generated_at_ns: now_ns,
            assignments,
        };
        tracing::info!(
            service,
            version,
            classes = set.assignments.len(),
            "priority assignments changed"
        );
        state.current = Some(set.clone());
        state.history.push(set.clone());
        if state.history.len() > history_len {
            let excess = state.history.len() - history_len;
            state.history.drain(..excess);
        }
        Some(set)
    }

    /// The current set of a service; None when nothing was ever published for it.
    pub fn current(&self, service: &str) -> Option<&AssignmentSet> {
        self.services.get(service).and_then(|s| s.current.as_ref())
    }

    /// The current set of a service, or an empty one (version 0) for an unknown service.
    pub fn current_or_empty(&self, service: &str) -> AssignmentSet {
        self.current(service)
            .cloned()
            .unwrap_or_else(|| AssignmentSet::empty(service))
    }

    /// The last published sets of a service, oldest first (at most `history_len`).
    pub fn history(&self, service: &str) -> &[AssignmentSet] {
        self.services
            .get(service)
            .map_or(&[], |s| s.history.as_slice())
    }

    /// Services that have a published set.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .filter(|(_, s)| s.current.is_some())
            .map(|(k, _)| k.as_str())
    }
}

/// Moves one class's level toward `level` under hysteresis.
fn step_class(cs: &mut ClassState, level: u8, why: String, windows: u32) {
    if level == cs.applied {
        cs.pending = None;
        return;
    }
    let count = match cs.pending {
        Some((p, n)) if p == level => n + 1,
        _ => 1,
    };
    if count >= windows {
        cs.applied = level;
        cs.reason = why;
        cs.pending = None;
    } else {
        cs.pending = Some((level, count));
    }
}

fn match_rule(
    cfg: &PriorityConfig,
    service: &str,
    class: &str,
    mapping: &[MappingRow],
) -> MatchRule {
    let mut signatures: Vec<Signature> = mapping
        .iter()
        .filter(|(_, callee, _, c, _)| callee == service && c == class)
        .map(|(caller, _, operation, _, share)| Signature {
            caller: caller.clone(),
            operation: operation.clone(),
            share: (share * 100.0).round() / 100.0,
        })
        .collect();
    signatures.sort_by(|a, b| {
        b.share
            .total_cmp(&a.share)
            .then_with(|| (&a.caller, &a.operation).cmp(&(&b.caller, &b.operation)))
    });
    MatchRule {
        header: Some((cfg.class_header.clone(), class.to_string())),
        baggage: Some((cfg.baggage_key.clone(), class.to_string())),
        signatures,
    }
}

#[cfg(test)]
#[path = "priority_tests.rs"]
mod tests;
