//! [`SpanRef`]: one span of a batch that several owners share.
//!
//! After the write-ahead log, trace assembly receives each batch (as slim copies holding only
//! what provenance reads) and keeps its spans until their trace is complete. Holding a
//! reference into the shared batch instead of a copy of each span saves a copy per span; a
//! batch stays in memory while any of its spans is referenced, which assembly bounds by its
//! limit on open traces.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::Span;

/// A span inside a shared batch; cloning it copies a reference, not the span.
#[derive(Clone)]
pub struct SpanRef {
    batch: Arc<Vec<Span>>,
    index: usize,
}

impl SpanRef {
    /// References to every span of a batch, in order.
    pub fn all(batch: &Arc<Vec<Span>>) -> impl Iterator<Item = SpanRef> + '_ {
        (0..batch.len()).map(|index| SpanRef {
            batch: batch.clone(),
            index,
        })
    }

    /// References to spans owned by no one else (tests, APIs that read a trace back).
    pub fn from_spans(spans: Vec<Span>) -> Vec<SpanRef> {
        let batch = Arc::new(spans);
        SpanRef::all(&batch).collect()
    }
}

impl Deref for SpanRef {
    type Target = Span;

    fn deref(&self) -> &Span {
        &self.batch[self.index]
    }
}

impl Borrow<Span> for SpanRef {
    fn borrow(&self) -> &Span {
        self
    }
}

impl fmt::Debug for SpanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Span::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_read_the_shared_spans_without_copying_them() {
        let batch = Arc::new(vec![
            Span {
                name: "a".into(),
                ..Span::default()
            },
            Span {
                name: "b".into(),
                ..Span::default()
            },
        ]);
        let refs: Vec<SpanRef> = SpanRef::all(&batch).collect();
        assert_eq!(refs[1].name, "b");
        assert!(std::ptr::eq(&*refs[0], &batch[0]));
        assert_eq!(Arc::strong_count(&batch), 3);
        drop(refs);
        assert_eq!(Arc::strong_count(&batch), 1);
    }
}
