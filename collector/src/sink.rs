//! The seam between protocol code and storage: receivers hand validated batches to a sink.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use meshtrace_model::tenant::TenantId;
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

/// The sink of each tenant (see [`meshtrace_model::tenant`]): a server that keeps tenants
/// apart opens a tenant's sink when its first spans arrive, and may refuse a new tenant
/// ([`Error::TenantLimit`]).
pub trait TenantSinks: Send + Sync + 'static {
    fn sink(&self, tenant: &TenantId) -> BoxFuture<'static, Result<Arc<dyn SpanSink>, Error>>;
}

/// One sink for the default tenant only: requests naming another tenant are refused.
pub struct SingleTenant(pub Arc<dyn SpanSink>);

impl TenantSinks for SingleTenant {
    fn sink(&self, tenant: &TenantId) -> BoxFuture<'static, Result<Arc<dyn SpanSink>, Error>> {
        let result = match tenant.is_single() {
            true => Ok(self.0.clone()),
            false => Err(Error::InvalidArgument(format!(
                "tenant {tenant} is not served here: only the default tenant {:?} is",
                TenantId::SINGLE
            ))),
        };
        Box::pin(async move { result })
    }
}
