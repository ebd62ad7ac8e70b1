//! One trace's provenance (its class, call tree and critical path) and the classes of many
//! traces, from the stored spans and the derived `traces` table. The critical path and its
//! self times are [`meshtrace_provenance::critical_path`]'s, the functions the Jaeger
//! critical-path fixtures hold and the derived `critical_path` rows come from.

use std::collections::{BTreeMap, BTreeSet};

use meshtrace_model::{trace_id_text, Span, SpanId, StatusCode, TraceId};
use meshtrace_provenance::critical_path::self_times;
use meshtrace_provenance::{
    build_tree, classify, critical_path, ClassRule, TraceTree, TreeCounters, DEFAULT_CLASS,
};
use meshtrace_storage::ScalarValue;
use serde::Serialize;
use utoipa::ToSchema;

use crate::adjust::{adjust, Adjusted};
use crate::columns::Columns;
use crate::error::QueryError;
use crate::Queries;

/// Most trace IDs one [`Queries::trace_classes`] may ask for.
pub const MAX_CLASS_LOOKUP: usize = 1000;
/// Of those, most traces without a `traces` row whose class is derived on the fly.
pub const MAX_OPEN_DERIVE: usize = 100;

/// One span in the call tree, with its children.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(no_recursion)]
pub struct CallNode {
    pub service: String,
    pub operation: String,
    pub span_id: String,
    /// `server`, `client`, ... (`unspecified` when the span has none).
    pub kind: String,
    pub start_us: i64,
    pub duration_us: i64,
    pub error: bool,
    pub children: Vec<CallNode>,
}

/// One section of the critical path: a span is on it from `start_us` to `end_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct PathSection {
    pub span_id: String,
    pub service: String,
    pub operation: String,
    pub start_us: i64,
    pub end_us: i64,
    /// The span's whole time on the critical path (all its sections).
    pub self_time_us: i64,
}

/// A trace's provenance (`GET /api/v1/traces/{id}/provenance`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TraceProvenance {
    pub trace_id: String,
    pub class: String,
    /// One root, no orphans, completed (false while the trace is open).
    pub complete: bool,
    /// Whether its derived rows are stored (else it is still open and derived on the fly).
    pub derived: bool,
    /// Why it was completed (`idle`, `max_age`, `evicted`); null while open.
    pub completion: Option<String>,
    pub span_count: usize,
    pub counters: TreeCounters,
    /// The entry span's subtree.
    pub tree: Option<CallNode>,
    /// Other subtrees: extra roots and orphans.
    pub detached: Vec<CallNode>,
    /// Earliest section first.
    pub critical_path: Vec<PathSection>,
}

/// The class the rules gave one trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct TraceClass {
    pub class: String,
    /// One root, no orphans, completed (false while the trace is open).
    pub complete: bool,
    /// Whether it comes from a stored `traces` row (else derived on the fly).
    pub derived: bool,
}

/// The latest `traces` row of one trace.
struct StoredClass {
    class: String,
    complete: bool,
    completion: String,
}

/// The class the rules give a trace that has no derived row yet.
pub fn classify_open(spans: &[Span], rules: &[ClassRule]) -> String {
    classify_tree(&build_tree(spans), rules)
}

/// The class the rules give a trace's tree: its entry span's.
fn classify_tree(tree: &TraceTree, rules: &[ClassRule]) -> String {
    match tree.primary_root() {
        Some(root) => classify(&tree.nodes[root].span, rules),
        None => DEFAULT_CLASS.to_string(),
    }
}

impl Queries {
    /// The provenance of one trace: class and completeness from its latest `traces` row, or
    /// classified by `rules` while it is open; `None` when no span of it is stored.
    pub async fn trace_provenance(
        &self,
        id: TraceId,
        rules: &[ClassRule],
    ) -> Result<Option<TraceProvenance>, QueryError> {
        let spans = self.store.trace(id).await?;
        if spans.is_empty() {
            return Ok(None);
        }
        let stored = self.stored_classes(&[id]).await?.remove(&id);
        let Adjusted { spans, tree, .. } = adjust(spans);
        let ids: Vec<SpanId> = spans.iter().map(|s| s.span_id).collect();
        let (main, detached) = call_trees(&tree, &ids);
        Ok(Some(TraceProvenance {
            trace_id: trace_id_text(&id),
            class: match &stored {
                Some(s) => s.class.clone(),
                None => classify_tree(&tree, rules),
            },
            complete: stored.as_ref().is_some_and(|s| s.complete),
            derived: stored.is_some(),
            completion: stored.map(|s| s.completion),
            span_count: spans.len(),
            counters: tree.counters,
            tree: main,
            detached,
            critical_path: path_sections(&tree, &ids),
        }))
    }

    /// The class of each of `ids` (at most [`MAX_CLASS_LOOKUP`]): from its latest `traces`
    /// row, else (for at most [`MAX_OPEN_DERIVE`] open traces) classified by `rules` from its
    /// stored spans. Unknown traces are absent; keys are hex IDs.
    pub async fn trace_classes(
        &self,
        ids: &[TraceId],
        rules: &[ClassRule],
    ) -> Result<BTreeMap<String, TraceClass>, QueryError> {
        if ids.len() > MAX_CLASS_LOOKUP {
            return Err(QueryError::InvalidArgument(format!(
                "at most {MAX_CLASS_LOOKUP} trace IDs"
            )));
        }
        let stored = self.stored_classes(ids).await?;
        // One lookup for all open ones: each lookup visits every segment's footer.
        let open: BTreeSet<TraceId> = ids
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .take(MAX_OPEN_DERIVE)
            .copied()
            .collect();
        let mut out: BTreeMap<String, TraceClass> = stored
            .into_iter()
            .map(|(id, s)| {
                let class = TraceClass {
                    class: s.class,
                    complete: s.complete,
                    derived: true,
                };
                (trace_id_text(&id), class)
            })
            .collect();
        if !open.is_empty() {
            for (id, spans) in self.store.traces(&open).await? {
                let class = TraceClass {
                    class: classify_open(&spans, rules),
                    complete: false,
                    derived: false,
                };
                out.insert(trace_id_text(&id), class);
            }
        }
        Ok(out)
    }

    /// The latest `traces` row of each of `ids` that has one.
    async fn stored_classes(
        &self,
        ids: &[TraceId],
    ) -> Result<BTreeMap<TraceId, StoredClass>, QueryError> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let holders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        // Ordered by version: a later row of the same trace replaces an earlier one.
        let sql = format!(
            "SELECT trace_id, class, complete, completion FROM traces_versions \
             WHERE trace_id IN ({}) ORDER BY version",
            holders.join(", ")
        );
        let params = ids
            .iter()
            .map(|id| ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))
            .collect();
        let timeout = self.config.sql_timeout;
        self.store
            .sql_each(&sql, params, timeout, |batch| {
                let c = Columns {
                    table: "traces",
                    batch: &batch,
                };
                let (id, class) = (c.ids("trace_id", 16)?, c.strings("class")?);
                let (complete, completion) = (c.bools("complete")?, c.strings("completion")?);
                for i in 0..batch.num_rows() {
                    let Ok(trace_id) = TraceId::try_from(id.value(i)) else {
                        continue;
                    };
                    let row = StoredClass {
                        class: class.value(i).to_string(),
                        complete: complete.value(i),
                        completion: completion.value(i).to_string(),
                    };
                    out.insert(trace_id, row);
                }
                Ok::<_, QueryError>(true)
            })
            .await?;
        Ok(out)
    }
}

/// The call tree as nested nodes: the entry span's subtree, and the other tops (extra roots,
/// orphans) apart. Node `i` is named by `ids[i]` (its ID after the adjusters).
pub fn call_trees(tree: &TraceTree, ids: &[SpanId]) -> (Option<CallNode>, Vec<CallNode>) {
    let mut built: Vec<Option<CallNode>> = vec![None; tree.nodes.len()];
    // Reverse pre-order: every child is built before its parent.
    for &i in tree.preorder().iter().rev() {
        let n = &tree.nodes[i];
        let children = tree
            .children(i)
            .iter()
            .filter_map(|&c| built[c].take())
            .collect();
        built[i] = Some(CallNode {
            service: n.span.service_name.to_string(),
            operation: n.span.name.to_string(),
            span_id: hex::encode(ids[i]),
            kind: n.span.kind.as_str().to_string(),
            start_us: n.start_ns / 1000,
            duration_us: n.duration_ns() / 1000,
            error: n.span.status_code == StatusCode::Error,
            children,
        });
    }
    let primary = tree.primary_root();
    let mut main = None;
    let mut detached = Vec::new();
    for top in tree.tops() {
        let Some(node) = built[top].take() else {
            continue;
        };
        if Some(top) == primary {
            main = Some(node);
        } else {
            detached.push(node);
        }
    }
    (main, detached)
}

/// The critical path, earliest section first, each with its span's total self time on it;
/// node `i` is named by `ids[i]`.
pub fn path_sections(tree: &TraceTree, ids: &[SpanId]) -> Vec<PathSection> {
    let mut sections = critical_path(tree);
    let totals: BTreeMap<usize, i64> = self_times(&sections).into_iter().collect();
    sections.sort_by_key(|s| s.start_ns);
    sections
        .iter()
        .map(|s| {
            let span = &tree.nodes[s.node].span;
            PathSection {
                span_id: hex::encode(ids[s.node]),
                service: span.service_name.to_string(),
                operation: span.name.to_string(),
                start_us: s.start_ns / 1000,
                end_us: s.end_ns / 1000,
                self_time_us: totals.get(&s.node).copied().unwrap_or_default() / 1000,
            }
        })
        .collect()
}
