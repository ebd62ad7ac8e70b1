//! Traces and the names to search them by: a trace by ID, several by ID in one lookup, a
//! Jaeger-style search, and the service and operation lists.

use std::collections::BTreeSet;

use meshtrace_model::{Span, SpanKind, TraceId};
use meshtrace_storage::TraceQuery;

use crate::adjust::{adjust, SpanWarning};
use crate::error::QueryError;
use crate::Queries;

/// Most trace IDs one [`Queries::traces`] may ask for.
pub const MAX_TRACE_LOOKUP: usize = 1000;

/// One trace: its stored spans sorted by start time, after the [adjusters](crate::adjust)
/// unless asked raw.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub id: TraceId,
    pub spans: Vec<Span>,
    /// What the adjusters noted on spans (none when raw).
    pub warnings: Vec<SpanWarning>,
}

impl Trace {
    /// A trace as stored, unadjusted.
    pub fn raw(id: TraceId, spans: Vec<Span>) -> Trace {
        Trace {
            id,
            spans,
            warnings: Vec::new(),
        }
    }

    /// A trace after every adjuster.
    pub fn adjusted(id: TraceId, spans: Vec<Span>) -> Trace {
        let a = adjust(spans);
        Trace {
            id,
            spans: a.spans,
            warnings: a.warnings,
        }
    }

    /// The warnings of span `i`.
    pub fn warnings_of(&self, i: usize) -> impl Iterator<Item = &str> {
        self.warnings
            .iter()
            .filter(move |w| w.span == i)
            .map(|w| w.message.as_str())
    }
}

/// An operation of a service and its span kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub name: String,
    pub kind: SpanKind,
}

impl Queries {
    /// Every service name seen, sorted.
    pub async fn services(&self) -> Result<Vec<String>, QueryError> {
        Ok(self.store.services().await?)
    }

    /// The operations of a service with their span kinds, sorted; only those of `kind` if
    /// given.
    pub async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<Operation>, QueryError> {
        let ops = self.store.operations(service, kind).await?;
        Ok(ops
            .into_iter()
            .map(|(name, kind)| Operation { name, kind })
            .collect())
    }

    /// One trace, adjusted, or `None` when none of its spans is stored.
    pub async fn trace(&self, id: TraceId) -> Result<Option<Trace>, QueryError> {
        let spans = self.store.trace(id).await?;
        Ok((!spans.is_empty()).then(|| Trace::adjusted(id, spans)))
    }

    /// One trace as stored (`raw=true`): no adjuster has run on it.
    pub async fn raw_trace(&self, id: TraceId) -> Result<Option<Trace>, QueryError> {
        let spans = self.store.trace(id).await?;
        Ok((!spans.is_empty()).then(|| Trace::raw(id, spans)))
    }

    /// The traces of `ids` in the order asked (duplicates once), unknown ones left out; one
    /// store lookup for all of them. At most [`MAX_TRACE_LOOKUP`] IDs.
    pub async fn traces(&self, ids: &[TraceId]) -> Result<Vec<Trace>, QueryError> {
        if ids.len() > MAX_TRACE_LOOKUP {
            return Err(QueryError::InvalidArgument(format!(
                "at most {MAX_TRACE_LOOKUP} trace IDs"
            )));
        }
        let wanted: BTreeSet<TraceId> = ids.iter().copied().collect();
        let mut found = self.store.traces(&wanted).await?;
        let mut seen = BTreeSet::new();
        Ok(ids
            .iter()
            .filter(|id| seen.insert(**id))
            .filter_map(|id| found.remove(id).map(|spans| Trace::adjusted(*id, spans)))
            .collect())
    }

    /// Jaeger trace search: traces with a span meeting every condition, most recent first,
    /// at most `query.limit` of them (capped at the configured `max_traces`), adjusted.
    pub async fn search(&self, query: &TraceQuery) -> Result<Vec<Trace>, QueryError> {
        let found = self.search_raw(query).await?;
        Ok(found
            .into_iter()
            .map(|t| Trace::adjusted(t.id, t.spans))
            .collect())
    }

    /// [`Queries::search`] without the adjusters.
    pub async fn search_raw(&self, query: &TraceQuery) -> Result<Vec<Trace>, QueryError> {
        let mut query = query.clone();
        query.limit = match query.limit {
            0 => 20,
            n => n,
        }
        .min(self.config.max_traces.max(1));
        let found = self.store.find_traces(&query).await?;
        Ok(found
            .into_iter()
            .filter_map(|spans| {
                let id = spans.first()?.trace_id;
                Some(Trace::raw(id, spans))
            })
            .collect())
    }
}
