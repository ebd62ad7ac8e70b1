//! Prometheus metrics of the ingest path: spans received, accepted, rejected by reason,
//! truncated, and requests by protocol and outcome. Registered into a registry that the
//! server owns and passes in; nothing here is global.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub protocol: &'static str,
    pub outcome: &'static str,
}

/// Counters of the ingest path; cheap to clone (the counters are shared).
#[derive(Clone, Default)]
pub struct IngestMetrics {
    pub spans_received: Counter,
    pub spans_accepted: Counter,
    pub spans_rejected: Family<ReasonLabel, Counter>,
    pub values_truncated: Counter,
    pub class_claims_stripped: Counter,
    pub requests: Family<RequestLabels, Counter>,
}

impl IngestMetrics {
    /// Creates the counters and registers them under `meshtrace_*` names.
    pub fn register(registry: &mut Registry) -> Self {
        let m = IngestMetrics::default();
        registry.register(
            "meshtrace_spans_received",
            "spans received by any receiver, before validation",
            m.spans_received.clone(),
        );
        registry.register(
            "meshtrace_class_claims_stripped",
            "spans whose trace class claim was removed: their ingest token may not claim it",
            m.class_claims_stripped.clone(),
        );
        registry.register(
            "meshtrace_spans_accepted",
            "spans written to the write-ahead log and acknowledged",
            m.spans_accepted.clone(),
        );
        registry.register(
            "meshtrace_spans_rejected",
            "spans rejected, by reason",
            m.spans_rejected.clone(),
        );
        registry.register(
            "meshtrace_values_truncated",
            "attributes, values, events or links cut by the configured limits",
            m.values_truncated.clone(),
        );
        registry.register(
            "meshtrace_ingest_requests",
            "ingest requests by protocol and outcome",
            m.requests.clone(),
        );
        m
    }

    pub fn reject(&self, reason: &str, n: u64) {
        self.spans_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    pub fn request(&self, protocol: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { protocol, outcome })
            .inc();
    }
}
