//! The seam between protocol code and storage: receivers hand validated batches to a sink.

use futures::future::BoxFuture;
use meshtrace_model::Span;

use crate::Error;

/// Where receivers deliver spans. `accept` resolves once the spans are durable (and so may be
/// acknowledged to the client), or fails with [`Error::Overloaded`] when the pipeline is full.
pub trait SpanSink: Send + Sync + 'static {
    fn accept(&self, spans: Vec<Span>) -> BoxFuture<'static, Result<(), Error>>;
}
