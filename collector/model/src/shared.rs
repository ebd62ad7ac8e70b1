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

/// A span inside a shared batch; cloning it copies a reference, not the span. Generic over
/// the span type: trace assembly holds its slim spans this way.
pub struct SpanRef<T = Span> {
    batch: Arc<Vec<T>>,
    index: usize,
}

impl<T> Clone for SpanRef<T> {
    fn clone(&self) -> Self {
        SpanRef {
            batch: self.batch.clone(),
            index: self.index,
        }
    }
}

impl<T> SpanRef<T> {
    /// References to every span of a batch, in order.
    pub fn all(batch: &Arc<Vec<T>>) -> impl Iterator<Item = SpanRef<T>> + '_ {
        (0..batch.len()).map(|index| SpanRef {
            batch: batch.clone(),
            index,
        })
    }

    /// References to spans owned by no one else (tests, APIs that read a trace back).
    pub fn from_spans(spans: Vec<T>) -> Vec<SpanRef<T>> {
        let batch = Arc::new(spans);
        SpanRef::all(&batch).collect()
    }
}

impl<T> Deref for SpanRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.batch[self.index]
    }
}

impl<T> Borrow<T> for SpanRef<T> {
    fn borrow(&self) -> &T {
        self
    }
}

impl<T: fmt::Debug> fmt::Debug for SpanRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        T::fmt(self, f)
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
