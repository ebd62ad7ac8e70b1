//! Protocol receivers: OTLP gRPC ([`grpc`]), OTLP HTTP and Zipkin HTTP ([`http`]).
//!
//! Both share [`Ingest`]: it counts what arrived, hands the valid spans to the [`SpanSink`] and
//! reports rejected spans back so each protocol can answer with its own partial-success shape.

pub mod grpc;
pub mod http;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::metrics::IngestMetrics;
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
    sink: Arc<dyn SpanSink>,
    metrics: IngestMetrics,
    config: Arc<ReceiverConfig>,
}

/// How many rejection messages are quoted in a partial-success message.
const MAX_QUOTED_REJECTIONS: usize = 5;

impl Ingest {
    pub fn new(sink: Arc<dyn SpanSink>, metrics: IngestMetrics, config: ReceiverConfig) -> Self {
        Ingest {
            sink,
            metrics,
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Counts a batch, delivers its valid spans and waits until they are durable.
    pub async fn submit(&self, protocol: &'static str, batch: Batch) -> Result<Outcome, Error> {
        let Batch {
            spans,
            rejected,
            truncated,
            ..
        } = batch;
        let accepted = spans.len();
        self.metrics
            .spans_received
            .inc_by((accepted + rejected.len()) as u64);
        self.metrics.values_truncated.inc_by(truncated);
        for r in &rejected {
            self.metrics.reject(r.reason.as_str(), 1);
        }
        if accepted > 0 {
            if let Err(e) = self.sink.accept(spans).await {
                let reason = match e {
                    Error::Overloaded { .. } => "overloaded",
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
            crate::ErrorCode::Internal => "internal",
        };
        self.metrics.request(protocol, outcome);
    }
}
