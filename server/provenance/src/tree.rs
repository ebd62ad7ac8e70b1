//! One trace's spans as a tree: parent links (after resolving Zipkin shared client/server
//! spans), roots, orphans, and clock-skew-adjusted times.
//!
//! Nodes are the spans as given (a Zipkin RPC reported by both sides is two nodes with the same
//! span ID; the SERVER half, marked with the `zipkin.shared` attribute by the Zipkin decoder, is
//! made a child of its CLIENT half). Parents are resolved as `tests/fixtures/README.md` defines
//! them for Zipkin, which reduces to a plain `parent_span_id` lookup when span IDs are unique:
//!
//! 1. the parent of a shared SERVER span is the non-shared span with the same ID (a CLIENT one
//!    first);
//! 2. any other span with a parent ID: a shared SERVER span with that ID on the child's own
//!    service, else a non-shared span with that ID (same service first, then a CLIENT), else
//!    any span with that ID;
//! 3. a shared SERVER span with no CLIENT half falls back to its parent ID.
//!
//! A span without a parent ID is a root; a span whose parent is missing is an orphan (it heads
//! its own subtree, see [`TraceTree::tops`]); a parent link that would close a cycle is cut and
//! counted as an orphan. Clock skew is corrected where one host's span is the callee of
//! another's: a SERVER span under a CLIENT span of another service (or its shared half) whose
//! raw interval does not lie within its client's, and is not longer, is shifted with its
//! subtree to the middle of the client's (adjusted) interval, as Zipkin's clock-skew
//! correction does; every other span keeps its parent's shift. The raw span times stay in
//! [`Node::span`]; the adjusted ones are [`Node::start_ns`] and [`Node::end_ns`].

use meshtrace_model::{AttrValue, Span, SpanId, SpanKind, SpanRef};
use serde::Serialize;

use crate::span::SlimSpan;

/// The attribute the Zipkin decoder sets on the SERVER half of a shared RPC.
pub const ZIPKIN_SHARED: &str = "zipkin.shared";

/// One span in the tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub span: SpanRef<SlimSpan>,
    /// Index of the parent node, if it was found.
    pub parent: Option<usize>,
    /// Where this node's children are in the tree's child list ([`TraceTree::children`]).
    children: std::ops::Range<u32>,
    /// Start after clock-skew adjustment (ns).
    pub start_ns: i64,
    /// End after clock-skew adjustment (ns).
    pub end_ns: i64,
    /// Whether this is the SERVER half of a Zipkin shared span.
    pub shared: bool,
}

impl Node {
    pub fn duration_ns(&self) -> i64 {
        self.end_ns - self.start_ns
    }
}

/// What building the tree had to deal with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TreeCounters {
    /// Spans without a parent ID (not counting shared SERVER halves attached to a client).
    pub roots: usize,
    /// Spans whose parent is not in the trace (or whose link closed a cycle).
    pub orphans: usize,
    /// Callee spans whose times were shifted to correct clock skew.
    pub skew_adjusted: usize,
    /// Shared SERVER halves attached to their CLIENT half.
    pub shared_merged: usize,
    /// Parent links cut because they closed a cycle.
    pub cycles_cut: usize,
}

/// One trace as a forest of spans.
#[derive(Clone, Debug, Default)]
pub struct TraceTree {
    pub nodes: Vec<Node>,
    /// Nodes without a parent ID, in input order.
    pub roots: Vec<usize>,
    /// Nodes whose parent is missing, in input order.
    pub orphans: Vec<usize>,
    pub counters: TreeCounters,
    by_id: ById,
    /// Every node's children, node after node, each node's in input order: one allocation
    /// for the tree instead of one per parent.
    child_list: Vec<usize>,
}

impl TraceTree {
    /// Roots followed by orphans: the heads of every subtree.
    pub fn tops(&self) -> impl Iterator<Item = usize> + '_ {
        self.roots.iter().chain(self.orphans.iter()).copied()
    }

    /// The entry span: the earliest root (the longest on a tie), else the earliest orphan.
    pub fn primary_root(&self) -> Option<usize> {
        let pick = |set: &[usize]| {
            set.iter()
                .copied()
                .min_by_key(|&i| (self.nodes[i].start_ns, -self.nodes[i].duration_ns(), i))
        };
        pick(&self.roots).or_else(|| pick(&self.orphans))
    }

    /// The ingest token the entry span came with (`meshtrace.sender` on its resource, which
    /// only ingest sets); None without tokens.
    pub fn sender(&self) -> Option<&str> {
        let root = &self.nodes[self.primary_root()?].span;
        let key = meshtrace_model::class::SENDER_KEY;
        match meshtrace_model::span::find_attribute(&root.resource_attributes, key)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The children of a node, in input order.
    pub fn children(&self, i: usize) -> &[usize] {
        let r = &self.nodes[i].children;
        &self.child_list[r.start as usize..r.end as usize]
    }

    /// The service of a node.
    pub fn service(&self, i: usize) -> &str {
        &self.nodes[i].span.service_name
    }

    /// Distinct service names, sorted.
    pub fn services(&self) -> std::collections::BTreeSet<&str> {
        self.nodes.iter().map(|n| &*n.span.service_name).collect()
    }

    /// The nodes with this span ID, in input order (two for a Zipkin shared span).
    pub fn nodes_with_span_id(&self, id: SpanId) -> impl Iterator<Item = usize> + Clone + '_ {
        self.by_id.get(id)
    }

    /// Nodes in depth-first pre-order from every top (cycle-free by construction).
    pub fn preorder(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<usize> = self.tops().collect();
        stack.reverse();
        while let Some(i) = stack.pop() {
            out.push(i);
            stack.extend(self.children(i).iter().rev());
        }
        out
    }
}

/// Whether a span is the SERVER half of a Zipkin shared RPC.
pub fn is_shared(span: &SlimSpan) -> bool {
    match span.attribute(ZIPKIN_SHARED) {
        Some(AttrValue::Bool(b)) => *b,
        Some(AttrValue::Str(s)) => s == "true",
        _ => false,
    }
}

/// Builds the tree of one trace's spans (the caller groups spans by trace), from slim copies
/// of them with every attribute; [`build_tree_shared`] builds it from shared slim spans.
pub fn build_tree(spans: &[Span]) -> TraceTree {
    build_tree_slim(spans.iter().map(SlimSpan::from).collect())
}

/// [`build_tree`] from slim spans.
pub fn build_tree_slim(spans: Vec<SlimSpan>) -> TraceTree {
    build_tree_shared(SpanRef::from_spans(spans))
}

/// [`build_tree`] from slim spans that stay in their shared batches.
pub fn build_tree_shared(spans: Vec<SpanRef<SlimSpan>>) -> TraceTree {
    let mut nodes: Vec<Node> = spans
        .into_iter()
        .map(|s| Node {
            parent: None,
            children: 0..0,
            start_ns: s.start_unix_nano,
            end_ns: s.end_unix_nano(),
            shared: is_shared(&s),
            span: s,
        })
        .collect();
    let by_id = ById::new(&nodes);
    let mut tree = TraceTree::default();
    for i in 0..nodes.len() {
        match resolve_parent(&nodes, &by_id, i) {
            Resolved::Parent(p) => {
                if nodes[i].shared && nodes[p].span.span_id == nodes[i].span.span_id {
                    tree.counters.shared_merged += 1;
                }
                nodes[i].parent = Some(p);
            }
            Resolved::Root => tree.roots.push(i),
            Resolved::Orphan => tree.orphans.push(i),
        }
    }
    cut_cycles(&mut nodes, &mut tree);
    tree.child_list = link_children(&mut nodes);
    tree.nodes = nodes;
    tree.by_id = by_id;
    tree.counters.roots = tree.roots.len();
    tree.counters.orphans = tree.orphans.len();
    tree.counters.skew_adjusted = adjust_skew(&mut tree);
    tree
}

/// Lays out every node's children in one list (input order within each node) and points
/// each node at its stretch of it.
fn link_children(nodes: &mut [Node]) -> Vec<usize> {
    let mut counts = vec![0u32; nodes.len()];
    for n in nodes.iter() {
        if let Some(p) = n.parent {
            counts[p] += 1;
        }
    }
    let mut at = 0u32;
    for (n, count) in nodes.iter_mut().zip(counts) {
        n.children = at..at;
        at += count;
    }
    let mut list = vec![0usize; at as usize];
    for i in 0..nodes.len() {
        if let Some(p) = nodes[i].parent {
            let slot = &mut nodes[p].children.end;
            list[*slot as usize] = i;
            *slot += 1;
        }
    }
    list
}

/// Node indices by span ID: (ID, index) pairs sorted, so the nodes sharing an ID are one run
/// in input order. No allocation per span, unlike a map to lists.
#[derive(Clone, Debug, Default)]
struct ById(Vec<(SpanId, usize)>);

impl ById {
    fn new(nodes: &[Node]) -> ById {
        let mut pairs: Vec<(SpanId, usize)> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.span.span_id, i))
            .collect();
        pairs.sort_unstable();
        ById(pairs)
    }

    /// The nodes with this span ID, in input order.
    fn get(&self, id: SpanId) -> impl Iterator<Item = usize> + Clone + '_ {
        let from = self.0.partition_point(|(k, _)| *k < id);
        self.0[from..]
            .iter()
            .take_while(move |(k, _)| *k == id)
            .map(|&(_, i)| i)
    }
}

enum Resolved {
    Parent(usize),
    Root,
    Orphan,
}

fn resolve_parent(nodes: &[Node], by_id: &ById, i: usize) -> Resolved {
    let me = &nodes[i];
    if me.shared {
        let client = by_id
            .get(me.span.span_id)
            .filter(|&j| j != i && !nodes[j].shared)
            .min_by_key(|&j| (nodes[j].span.kind != SpanKind::Client, j));
        if let Some(c) = client {
            return Resolved::Parent(c);
        }
    }
    let parent_id = match me.span.parent_span_id {
        Some(p) if p != [0; 8] => p,
        _ => return Resolved::Root,
    };
    let candidates = by_id.get(parent_id);
    let same_service = |j: usize| nodes[j].span.service_name == me.span.service_name;
    let usable = || candidates.clone().filter(|&j| j != i);
    let pick = usable()
        .find(|&j| nodes[j].shared && same_service(j))
        .or_else(|| {
            usable()
                .filter(|&j| !nodes[j].shared)
                .min_by_key(|&j| (!same_service(j), nodes[j].span.kind != SpanKind::Client, j))
        })
        .or_else(|| usable().next());
    match pick {
        Some(p) => Resolved::Parent(p),
        None => Resolved::Orphan,
    }
}

/// Cuts every parent link that closes a cycle; the cut node becomes an orphan.
fn cut_cycles(nodes: &mut [Node], tree: &mut TraceTree) {
    // 0 = unvisited, 1 = on the current chain, 2 = known to reach a top.
    let mut state = vec![0u8; nodes.len()];
    for start in 0..nodes.len() {
        let mut chain = Vec::new();
        let mut cur = Some(start);
        while let Some(i) = cur {
            match state[i] {
                2 => break,
                1 => {
                    // `i` is on the chain: cut its link to break the loop.
                    nodes[i].parent = None;
                    tree.orphans.push(i);
                    tree.counters.cycles_cut += 1;
                    break;
                }
                _ => {
                    state[i] = 1;
                    chain.push(i);
                    cur = nodes[i].parent;
                }
            }
        }
        for i in chain {
            state[i] = 2;
        }
    }
    tree.orphans.sort_unstable();
}

/// Whether `child` is the callee side of an RPC made by `parent` on another host.
fn is_remote_callee(parent: &Node, child: &Node) -> bool {
    child.span.kind == SpanKind::Server
        && parent.span.kind == SpanKind::Client
        && (child.shared || parent.span.service_name != child.span.service_name)
}

/// Shifts callee subtrees whose raw times do not fit their caller; returns how many were
/// shifted. A callee that fits its caller on raw times shares its caller's clock and so its
/// shift; one that does not (and is not longer than its caller) is centred in the caller's
/// adjusted interval, and its descendants follow it.
fn adjust_skew(tree: &mut TraceTree) -> usize {
    let mut delta = vec![0i64; tree.nodes.len()];
    let mut adjusted = 0;
    for i in tree.preorder() {
        let Some(p) = tree.nodes[i].parent else {
            continue;
        };
        let (parent, child) = (&tree.nodes[p], &tree.nodes[i]);
        let mut d = delta[p];
        if is_remote_callee(parent, child) {
            let (cs, ce) = (child.span.start_unix_nano, child.span.end_unix_nano());
            let (ps, pe) = (parent.span.start_unix_nano, parent.span.end_unix_nano());
            let fits = cs >= ps && ce <= pe;
            let (client_dur, server_dur) = (pe - ps, ce - cs);
            if !fits && server_dur <= client_dur {
                let latency = (client_dur - server_dur) / 2;
                d = parent.start_ns + latency - cs;
                adjusted += 1;
                tracing::debug!(
                    span_id = %hex::encode(child.span.span_id),
                    service = %child.span.service_name,
                    shift_ns = d,
                    "clock skew corrected"
                );
            }
        }
        delta[i] = d;
        let n = &mut tree.nodes[i];
        n.start_ns = n.span.start_unix_nano.saturating_add(d);
        n.end_ns = n.span.end_unix_nano().saturating_add(d);
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::KeyValue;

    pub(crate) fn span(
        id: u8,
        parent: Option<u8>,
        service: &str,
        kind: SpanKind,
        start: i64,
        dur: i64,
    ) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [0, 0, 0, 0, 0, 0, 0, id],
            parent_span_id: parent.map(|p| [0, 0, 0, 0, 0, 0, 0, p]),
            service_name: service.into(),
            kind,
            start_unix_nano: start,
            duration_nano: dur,
            name: format!("op{id}"),
            ..Span::default()
        }
    }

    #[test]
    fn orphans_roots_and_children() {
        let spans = [
            span(1, None, "a", SpanKind::Server, 0, 100),
            span(2, Some(1), "a", SpanKind::Client, 10, 50),
            span(3, Some(9), "b", SpanKind::Server, 20, 10),
            span(4, None, "c", SpanKind::Server, 30, 10),
        ];
        let t = build_tree(&spans);
        assert_eq!(t.roots, vec![0, 3]);
        assert_eq!(t.orphans, vec![2]);
        assert_eq!(t.children(0), [1]);
        assert_eq!(t.children(1), [] as [usize; 0]);
        assert_eq!((t.counters.roots, t.counters.orphans), (2, 1));
        assert_eq!(t.primary_root(), Some(0));
    }

    #[test]
    fn shared_server_half_hangs_under_client_half() {
        let client = span(2, Some(1), "a", SpanKind::Client, 10, 50);
        let mut server = span(2, Some(1), "b", SpanKind::Server, 20, 30);
        server
            .attributes
            .push(KeyValue::new(ZIPKIN_SHARED, AttrValue::Bool(true)));
        let child = span(3, Some(2), "b", SpanKind::Client, 25, 5);
        let t = build_tree(&[
            span(1, None, "a", SpanKind::Server, 0, 100),
            client,
            server,
            child,
        ]);
        assert_eq!(t.nodes[2].parent, Some(1));
        assert_eq!(
            t.nodes[3].parent,
            Some(2),
            "rule 2: the shared half on the same service"
        );
        assert_eq!(t.counters.shared_merged, 1);
        assert_eq!(t.counters.skew_adjusted, 0);
    }

    #[test]
    fn skewed_server_is_centred_in_its_client_with_its_subtree() {
        let spans = [
            span(1, None, "a", SpanKind::Client, 1000, 100),
            span(2, Some(1), "b", SpanKind::Server, 900, 60),
            span(3, Some(2), "b", SpanKind::Internal, 910, 10),
        ];
        let t = build_tree(&spans);
        assert_eq!(t.counters.skew_adjusted, 1);
        assert_eq!((t.nodes[1].start_ns, t.nodes[1].end_ns), (1020, 1080));
        assert_eq!((t.nodes[2].start_ns, t.nodes[2].end_ns), (1030, 1040));
        assert_eq!(t.nodes[1].span.start_unix_nano, 900, "raw times are kept");
    }

    #[test]
    fn cycles_are_cut() {
        let spans = [
            span(1, Some(2), "a", SpanKind::Internal, 0, 1),
            span(2, Some(1), "a", SpanKind::Internal, 0, 1),
        ];
        let t = build_tree(&spans);
        assert_eq!(t.counters.cycles_cut, 1);
        assert_eq!(t.orphans.len(), 1);
        assert_eq!(t.preorder().len(), 2);
    }
}
