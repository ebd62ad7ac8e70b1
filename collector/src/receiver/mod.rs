//! Protocol receivers: OTLP gRPC ([`grpc`]), OTLP HTTP and Zipkin HTTP ([`http`]).
//!
//! Both share [`Ingest`]: it counts what arrived, hands the valid spans to the [`SpanSink`] and
//! reports rejected spans back so each protocol can answer with its own partial-success shape.

pub mod grpc;
pub mod http;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use meshtrace_model::memory::MemoryBudget;
use meshtrace_model::tenant::TenantId;

use crate::auth::Auth;
use crate::metrics::IngestMetrics;
use crate::sink::{SingleTenant, TenantSinks};
use crate::{Batch, Error, Limits, SpanSink};

/// Size limits and span limits applied by every receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ReceiverConfig {
    pub limits: Limits,
    /// Largest request body accepted as sent (possibly compressed).
    pub max_body_bytes: usize,
    /// Largest request body accepted after decompression.
    pub max_decompressed_bytes: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            limits: Limits::default(),
            max_body_bytes: 8 << 20,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

/// What became of one request's spans.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: usize,
    pub rejected: usize,
    /// Names the rejected spans' problems; empty when none were rejected.
    pub message: String,
}

/// The shared entry point of all receivers.
#[derive(Clone)]
pub struct Ingest {
    sinks: Arc<dyn TenantSinks>,
    metrics: IngestMetrics,
    config: Arc<ReceiverConfig>,
    auth: Auth,
    memory: MemoryBudget,
}

/// How many rejection messages are quoted in a partial-success message.
const MAX_QUOTED_REJECTIONS: usize = 5;

impl Ingest {
    /// Receivers for the default tenant only, delivering to `sink`.
    pub fn new(sink: Arc<dyn SpanSink>, metrics: IngestMetrics, config: ReceiverConfig) -> Self {
        Self::with_tenants(Arc::new(SingleTenant(sink)), metrics, config)
    }

    /// Receivers that deliver each tenant's spans to its own sink.
    pub fn with_tenants(
        sinks: Arc<dyn TenantSinks>,
        metrics: IngestMetrics,
        config: ReceiverConfig,
    ) -> Self {
        Ingest {
            sinks,
            metrics,
            config: Arc::new(config),
            auth: Auth::default(),
            memory: MemoryBudget::unlimited(),
        }
    }

    /// Refuses spans (429 / `RESOURCE_EXHAUSTED`) while the process is over `memory`.
    pub fn with_memory(mut self, memory: MemoryBudget) -> Self {
        self.memory = memory;
        self
    }

    /// Fails while the process is short of memory (see [`MemoryBudget::exceeded`]): checked
    /// before a body is read and again before spans are handed on.
    pub fn admit(&self) -> Result<(), Error> {
        match self.memory.exceeded() {
            Some(exceeded) => Err(Error::MemoryBudget { exceeded }),
            None => Ok(()),
        }
    }

    /// Requires the `ingest` scope of these tokens (when any are configured).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Counts a batch, delivers its valid spans to `tenant`'s sink and waits until they are
    /// durable.
    pub async fn submit(
        &self,
        protocol: &'static str,
        tenant: &TenantId,
        batch: Batch,
    ) -> Result<Outcome, Error> {
        self.submit_from(protocol, tenant, batch, None).await
    }

    /// As [`Ingest::submit`], for a batch decoded from the OTLP protobuf `request` (the sink
    /// may log the request instead of the spans; see [`SpanSink::accept_otlp`]).
    pub async fn submit_otlp(
        &self,
        protocol: &'static str,
        tenant: &TenantId,
        batch: Batch,
        request: Bytes,
    ) -> Result<Outcome, Error> {
        self.submit_from(protocol, tenant, batch, Some(request))
            .await
    }

    async fn submit_from(
        &self,
        protocol: &'static str,
        tenant: &TenantId,
        batch: Batch,
        request: Option<Bytes>,
    ) -> Result<Outcome, Error> {
        let Batch {
            spans,
            rejected,
            truncated,
            merged,
            stripped,
            restamped,
        } = batch;
        // The request stands for the spans only if it decodes to exactly them.
        let as_sent =
            rejected.is_empty() && truncated == 0 && merged == 0 && stripped == 0 && restamped == 0;
        let request = request.filter(|_| as_sent);
        self.metrics.class_claims_stripped.inc_by(stripped);
        let accepted = spans.len();
        self.metrics
            .spans_received
            .inc_by((accepted + rejected.len()) as u64);
        self.metrics.values_truncated.inc_by(truncated);
        for r in &rejected {
            self.metrics.reject(r.reason.as_str(), 1);
        }
        if accepted > 0 {
            let durable = async {
                self.admit()?;
                let sink = self.sinks.sink(tenant).await?;
                match request {
                    Some(request) => sink.accept_otlp(spans, request).await,
                    None => sink.accept(spans).await,
                }
            };
            if let Err(e) = durable.await {
                let reason = match e {
                    Error::Overloaded { .. } => "overloaded",
                    Error::Unavailable { .. } => "unavailable",
                    Error::TenantLimit(_) => "tenant_limit",
                    Error::MemoryBudget { .. } => "memory",
                    Error::InvalidArgument(_) => "invalid",
                    _ => "internal",
                };
                self.metrics.reject(reason, accepted as u64);
                self.metrics.request(protocol, reason);
                return Err(e);
            }
            self.metrics.spans_accepted.inc_by(accepted as u64);
        }
        self.metrics.request(protocol, "ok");
        let mut message = String::new();
        if !rejected.is_empty() {
            let quoted: Vec<&str> = rejected
                .iter()
                .take(MAX_QUOTED_REJECTIONS)
                .map(|r| r.message.as_str())
                .collect();
            message = format!("{} spans rejected: {}", rejected.len(), quoted.join("; "));
            if rejected.len() > MAX_QUOTED_REJECTIONS {
                message.push_str("; ...");
            }
        }
        Ok(Outcome {
            accepted,
            rejected: rejected.len(),
            message,
        })
    }

    /// Counts a request whose body could not be read or decoded at all.
    pub fn record_failure(&self, protocol: &'static str, error: &Error) {
        let outcome = match error.code() {
            crate::ErrorCode::InvalidArgument => "invalid",
            crate::ErrorCode::PayloadTooLarge => "too_large",
            crate::ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            crate::ErrorCode::ResourceExhausted => "overloaded",
            crate::ErrorCode::Unavailable => "unavailable",
            crate::ErrorCode::Internal => "internal",
        };
        self.metrics.request(protocol, outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use meshtrace_model::Span;
    use prost::Message;

    use super::*;
    use crate::decode::otlp::{decode_protobuf, tests::rich_span, to_request};

    /// Records how each batch was handed over: `Some(request length)` through `accept_otlp`.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, Option<usize>)>>);

    impl SpanSink for Recorder {
        fn accept(&self, spans: Vec<Span>) -> BoxFuture<'static, Result<(), Error>> {
            self.0.lock().unwrap().push((spans.len(), None));
            Box::pin(async { Ok(()) })
        }

        fn accept_otlp(
            &self,
            spans: Vec<Span>,
            request: Bytes,
        ) -> BoxFuture<'static, Result<(), Error>> {
            self.0
                .lock()
                .unwrap()
                .push((spans.len(), Some(request.len())));
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn only_a_request_accepted_whole_and_unchanged_is_handed_over_as_bytes() {
        let sink = Arc::new(Recorder::default());
        let ingest = Ingest::new(
            sink.clone(),
            IngestMetrics::default(),
            ReceiverConfig::default(),
        );
        let mut req = to_request(&[rich_span(2, "a"), rich_span(3, "b")]);
        let whole = Bytes::from(req.encode_to_vec());
        let batch = decode_protobuf(&whole, ingest.limits()).unwrap();
        ingest
            .submit_otlp("otlp_grpc", &TenantId::single(), batch, whole.clone())
            .await
            .unwrap();

        let tight = Limits {
            max_attribute_value_bytes: 1,
            ..Limits::default()
        };
        let batch = decode_protobuf(&whole, &tight).unwrap();
        assert!(batch.truncated > 0);
        ingest
            .submit_otlp("otlp_grpc", &TenantId::single(), batch, whole.clone())
            .await
            .unwrap();

        req.resource_spans[0].scope_spans[0].spans[0]
            .span_id
            .clear();
        let partly_bad = Bytes::from(req.encode_to_vec());
        let batch = decode_protobuf(&partly_bad, ingest.limits()).unwrap();
        let outcome = ingest
            .submit_otlp("otlp_grpc", &TenantId::single(), batch, partly_bad)
            .await
            .unwrap();
        assert_eq!((outcome.accepted, outcome.rejected), (1, 1));

        let calls = sink.0.lock().unwrap().clone();
        assert_eq!(calls, [(2, Some(whole.len())), (2, None), (1, None)]);
    }
}
