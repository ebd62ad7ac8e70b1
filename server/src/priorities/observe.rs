//! Feeding completed traces into the budget observations: a trace's class, its end-to-end
//! duration and its critical-path hops with their self times, placed in the call tree (each
//! hop's parent is its nearest ancestor on the critical path; a hop overlapping a sibling in
//! time is a parallel branch of its parent's fan-out).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use meshtrace_budget::{HopSample, Observations};
use meshtrace_provenance::{Derived, TraceTree};

use crate::provenance::TraceObserver;

/// The handle provenance records completed traces through. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    pub(super) obs: Arc<Mutex<Observations>>,
    /// The classes with an objective or an override (kept by [`super::Priorities`]): never
    /// folded into `other` by provenance's class limit.
    pub(super) kept: Arc<RwLock<BTreeSet<String>>>,
}

impl Recorder {
    /// A recorder into observations of its own, made before the engines: provenance records
    /// into it, and the budgets engine computes from the same observations
    /// ([`super::Priorities::start`]).
    pub fn new(window: meshtrace_budget::WindowConfig) -> Recorder {
        Recorder {
            obs: Arc::new(Mutex::new(Observations::new(window))),
            kept: Arc::default(),
        }
    }
}

impl Recorder {
    /// Adds samples folded or capped while this node recorded its traces for the cluster
    /// (`crate::cluster::observations`), so its metrics count them.
    pub fn add_counts(&self, counts: (u64, u64)) {
        let mut obs = self.obs.lock().unwrap_or_else(PoisonError::into_inner);
        obs.add_counts(counts);
    }

    /// Adds a step of observations a cluster node published (see `crate::cluster::observations`).
    pub fn record_step(&self, step: &meshtrace_budget::step::Step) {
        let now = meshtrace_model::time::now_unix_nanos();
        let mut obs = self.obs.lock().unwrap_or_else(PoisonError::into_inner);
        obs.record_step(step, now);
    }
}

impl TraceObserver for Recorder {
    /// Records one completed trace at wall-clock time `now_ns`.
    fn record(&self, d: &Derived, tree: &TraceTree, now_ns: i64) {
        record_into(&self.obs, d, tree, now_ns);
    }

    fn keeps_class(&self, class: &str) -> bool {
        let kept = self.kept.read().unwrap_or_else(PoisonError::into_inner);
        kept.contains(class)
    }
}

/// The node of a critical-path row: same span ID and service (Zipkin shared halves share IDs).
fn node_of(tree: &TraceTree, span_id: &[u8; 8], service: &str) -> Option<usize> {
    let same_id = tree.nodes_with_span_id(*span_id);
    same_id
        .clone()
        .find(|&i| &*tree.nodes[i].span.service_name == service)
        .or_else(|| same_id.clone().next())
}

/// Whether node `i` overlaps in time a sibling (a fan-out).
fn overlaps_sibling(tree: &TraceTree, i: usize) -> bool {
    let Some(p) = tree.nodes[i].parent else {
        return false;
    };
    let me = &tree.nodes[i];
    tree.children(p).iter().any(|&c| {
        let o = &tree.nodes[c];
        c != i && o.start_ns < me.end_ns && me.start_ns < o.end_ns
    })
}

/// The critical-path rows of a trace as hop samples, parents first.
/// Records one completed trace (its class, end-to-end time, critical-path hops and sender)
/// into `obs`; the hops are worked out before the lock is taken.
pub fn record_into(obs: &Mutex<Observations>, d: &Derived, tree: &TraceTree, now_ns: i64) {
    let hops = hop_samples(d, tree);
    let (class, e2e) = (&d.trace.class, d.trace.duration_ns);
    let mut obs = obs.lock().unwrap_or_else(PoisonError::into_inner);
    obs.record_trace_from(tree.sender(), class, e2e, &hops, now_ns);
}

pub fn hop_samples(d: &Derived, tree: &TraceTree) -> Vec<HopSample> {
    // Each node's position in preorder (usize::MAX for a node not reached from a top).
    let mut order = vec![usize::MAX; tree.nodes.len()];
    for (pos, n) in tree.preorder().into_iter().enumerate() {
        order[n] = pos;
    }
    let mut rows: Vec<(usize, Option<usize>, &meshtrace_provenance::CriticalPathRow)> = d
        .critical_path
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let node = node_of(tree, &r.span_id, &r.service);
            let pos = node.map(|n| order[n]).filter(|&p| p != usize::MAX);
            (
                pos.unwrap_or(usize::MAX - d.critical_path.len() + k),
                node,
                r,
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    // Per node, the index of its sample in `out`.
    let mut sample_of: Vec<Option<usize>> = vec![None; tree.nodes.len()];
    let mut out = Vec::with_capacity(rows.len());
    for (_, node, r) in rows {
        let mut s = HopSample::new(r.service.clone(), r.operation.clone(), r.self_time_ns);
        if let Some(n) = node {
            let mut up = tree.nodes[n].parent;
            let mut steps = 0;
            while let Some(a) = up {
                if let Some(idx) = sample_of[a] {
                    s = s.child_of(idx);
                    break;
                }
                up = tree.nodes[a].parent;
                steps += 1;
                if steps > tree.nodes.len() {
                    break;
                }
            }
            if s.parent.is_some() && overlaps_sibling(tree, n) {
                s = s.parallel();
            }
            sample_of[n] = Some(out.len());
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::{Span, SpanKind};
    use meshtrace_provenance::{build_tree, derive};

    fn span(id: u8, parent: Option<u8>, service: &str, start: i64, dur: i64) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            service_name: service.into(),
            kind: SpanKind::Server,
            name: format!("op{id}"),
            start_unix_nano: start,
            duration_nano: dur,
            ..Span::default()
        }
    }

    #[test]
    fn critical_path_hops_form_a_tree_with_self_times() {
        // frontend [0,100) -> reviews [10,90) -> ratings [20,60)
        let spans = [
            span(1, None, "frontend", 0, 100),
            span(2, Some(1), "reviews", 10, 80),
            span(3, Some(2), "ratings", 20, 40),
        ];
        let tree = build_tree(&spans);
        let d = derive(&spans, &[]);
        let got = hop_samples(&d, &tree);
        let view: Vec<(&str, i64, Option<usize>, bool)> = got
            .iter()
            .map(|s| (&*s.hop.service, s.self_time_ns, s.parent, s.parallel))
            .collect();
        assert_eq!(
            view,
            vec![
                ("frontend", 20, None, false),
                ("reviews", 40, Some(0), false),
                ("ratings", 40, Some(1), false),
            ]
        );
    }

    #[test]
    fn a_branch_overlapping_its_sibling_is_parallel() {
        let spans = [
            span(1, None, "gw", 0, 100),
            span(2, Some(1), "a", 10, 80),
            span(3, Some(1), "b", 20, 30),
        ];
        let tree = build_tree(&spans);
        let d = derive(&spans, &[]);
        let got = hop_samples(&d, &tree);
        let a = got.iter().find(|s| &*s.hop.service == "a").unwrap();
        assert_eq!((a.parent, a.parallel), (Some(0), true));
        assert!(
            got.iter().all(|s| &*s.hop.service != "b"),
            "b is off the path"
        );
    }
}
