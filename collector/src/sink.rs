//! The seam between protocol code and storage: receivers hand validated batches to a sink.

use bytes::Bytes;
use futures::future::BoxFuture;
use meshtrace_model::Span;

use crate::Error;

/// Where receivers deliver spans. `accept` resolves once the spans are durable (and so may be
/// acknowledged to the client), or fails with [`Error::Overloaded`] when the pipeline is full.
pub trait SpanSink: Send + Sync + 'static {
    fn accept(&self, spans: Vec<Span>) -> BoxFuture<'static, Result<(), Error>>;

    /// Like `accept`, for spans that are exactly what the OTLP protobuf `request` decodes to
    /// (every span accepted, nothing truncated), so a sink may keep the request's bytes
    /// instead of encoding the spans again.
    fn accept_otlp(
        &self,
        spans: Vec<Span>,
        request: Bytes,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let _ = request;
        self.accept(spans)
    }
}
