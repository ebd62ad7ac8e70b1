//! The critical path of a trace, computed the way Jaeger UI's trace view does, as a list of
//! sections (span, start, end) emitted latest first, plus each span's self time on it.
//!
//! Before the walk the tree under the entry span is sanitised, top-down, on the
//! skew-adjusted times of [`crate::tree`]:
//! 1. a CONSUMER child of a PRODUCER span does not block it: it is pruned with its subtree;
//! 2. a child entirely outside its (already clipped) parent — it starts at or after the
//!    parent's end, or ends at or before the parent's start — is dropped with its subtree;
//! 3. a child sticking out of its parent is clipped to the parent's interval.
//!
//! The walk starts at the end of the entry span. A span with children hands the path to its
//! last-finishing child (LFC) and owns `[LFC.end, current end)`; a span without an eligible
//! child owns `[start, current end)` and returns to its parent with "current time = its start";
//! the parent then picks the child finishing last strictly before that time. Zero-length
//! sections are left out. The sections tile the entry span: their lengths add up to its
//! duration.

use meshtrace_model::{SpanId, SpanKind};
use serde::Serialize;

use crate::tree::TraceTree;

/// A stretch of time during which one span is on the critical path: `[start_ns, end_ns)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Section {
    pub span_id: SpanId,
    /// The node index in the [`TraceTree`] (shared Zipkin halves have the same span ID).
    pub node: usize,
    pub start_ns: i64,
    pub end_ns: i64,
}

impl Section {
    pub fn len_ns(&self) -> i64 {
        self.end_ns - self.start_ns
    }
}

/// A node of the sanitised tree: clipped interval, parent, and where its children (by end
/// time, latest first) are in [`Sanitized::kids`].
#[derive(Clone, Debug)]
struct Work {
    start: i64,
    end: i64,
    parent: Option<usize>,
    children: std::ops::Range<usize>,
}

/// The sanitised tree: a [`Work`] per kept node, and every kept node's children in one list.
struct Sanitized {
    work: Vec<Option<Work>>,
    kids: Vec<usize>,
}

/// The critical path from the trace's entry span ([`TraceTree::primary_root`]).
pub fn critical_path(tree: &TraceTree) -> Vec<Section> {
    match tree.primary_root() {
        Some(root) => critical_path_from(tree, root),
        None => Vec::new(),
    }
}

/// The critical path under one node, taken as the root.
pub fn critical_path_from(tree: &TraceTree, root: usize) -> Vec<Section> {
    let Sanitized { work, kids } = sanitize(tree, root);
    let mut out = Vec::new();
    let mut push = |node: usize, start: i64, end: i64| {
        if start != end {
            out.push(Section {
                span_id: tree.nodes[node].span.span_id,
                node,
                start_ns: start,
                end_ns: end,
            });
        }
    };
    let mut cur = root;
    let mut returning: Option<i64> = None;
    loop {
        let w = work[cur]
            .as_ref()
            .expect("walk stays in the sanitised tree");
        let end = returning.unwrap_or(w.end);
        let lfc = match returning {
            None => kids[w.children.clone()].first().copied(),
            Some(t) => kids[w.children.clone()]
                .iter()
                .copied()
                .find(|&c| end_of(&work, c) < t),
        };
        match lfc {
            Some(c) => {
                push(cur, end_of(&work, c), end);
                cur = c;
                returning = None;
            }
            None => {
                push(cur, w.start, end);
                match w.parent {
                    Some(p) if cur != root => {
                        returning = Some(w.start);
                        cur = p;
                    }
                    _ => break,
                }
            }
        }
    }
    out
}

fn end_of(work: &[Option<Work>], i: usize) -> i64 {
    work[i].as_ref().map(|w| w.end).unwrap_or(i64::MIN)
}

/// Applies the pruning, dropping and clipping rules top-down from `root`.
fn sanitize(tree: &TraceTree, root: usize) -> Sanitized {
    let mut work: Vec<Option<Work>> = vec![None; tree.nodes.len()];
    let mut kids = Vec::new();
    let r = &tree.nodes[root];
    work[root] = Some(Work {
        start: r.start_ns,
        end: r.end_ns.max(r.start_ns),
        parent: None,
        children: 0..0,
    });
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        let (ps, pe) = work[p]
            .as_ref()
            .map(|w| (w.start, w.end))
            .expect("queued nodes are kept");
        let parent_kind = tree.nodes[p].span.kind;
        let first = kids.len();
        for &c in tree.children(p) {
            let child = &tree.nodes[c];
            if parent_kind == SpanKind::Producer && child.span.kind == SpanKind::Consumer {
                continue;
            }
            let (cs, ce) = (child.start_ns, child.end_ns.max(child.start_ns));
            if ce <= ps || cs >= pe {
                continue;
            }
            work[c] = Some(Work {
                start: cs.max(ps),
                end: ce.min(pe),
                parent: Some(p),
                children: 0..0,
            });
            kids.push(c);
            queue.push_back(c);
        }
        // Stable: among equal ends the input order is kept.
        kids[first..].sort_by_key(|&c| std::cmp::Reverse(end_of(&work, c)));
        if let Some(w) = work[p].as_mut() {
            w.children = first..kids.len();
        }
    }
    Sanitized { work, kids }
}

/// Each node's total time on the critical path (its self time there), in order of first
/// appearance: `(node, ns)`. Per node, not per span ID: the two halves of a Zipkin shared
/// span are two nodes.
pub fn self_times(sections: &[Section]) -> Vec<(usize, i64)> {
    let mut out: Vec<(usize, i64)> = Vec::new();
    for s in sections {
        match out.iter_mut().find(|(node, _)| *node == s.node) {
            Some((_, t)) => *t += s.len_ns(),
            None => out.push((s.node, s.len_ns())),
        }
    }
    out
}

/// The critical path's total length.
pub fn path_length(sections: &[Section]) -> i64 {
    sections.iter().map(Section::len_ns).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::build_tree;
    use meshtrace_model::Span;

    fn span(id: u8, parent: Option<u8>, start: i64, dur: i64) -> Span {
        Span {
            span_id: [0, 0, 0, 0, 0, 0, 0, id],
            parent_span_id: parent.map(|p| [0, 0, 0, 0, 0, 0, 0, p]),
            start_unix_nano: start,
            duration_nano: dur,
            ..Span::default()
        }
    }

    #[test]
    fn child_ending_exactly_at_the_next_start_is_not_on_the_path() {
        // Jaeger picks children finishing strictly before the returning time.
        let t = build_tree(&[
            span(1, None, 0, 100),
            span(2, Some(1), 10, 30),
            span(3, Some(1), 40, 20),
        ]);
        let got: Vec<(u8, i64, i64)> = critical_path(&t)
            .iter()
            .map(|s| (s.span_id[7], s.start_ns, s.end_ns))
            .collect();
        assert_eq!(got, vec![(1, 60, 100), (3, 40, 60), (1, 0, 40)]);
        let by_id: Vec<(u8, i64)> = self_times(&critical_path(&t))
            .into_iter()
            .map(|(node, ns)| (t.nodes[node].span.span_id[7], ns))
            .collect();
        assert_eq!(by_id, vec![(1, 80), (3, 20)]);
    }

    #[test]
    fn empty_tree_has_no_path() {
        assert!(critical_path(&build_tree(&[])).is_empty());
    }
}
