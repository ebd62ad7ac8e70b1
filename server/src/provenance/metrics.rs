//! The `meshtrace_provenance_*` metrics, read from the engine at scrape time.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::Provenance;
use crate::metrics::{counter, gauge, labelled_counter};

/// The provenance engine's counters, as a collector.
pub struct ProvenanceMetrics(pub Provenance);

impl std::fmt::Debug for ProvenanceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProvenanceMetrics")
    }
}

impl Collector for ProvenanceMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0.feed.shared;
        let s = *shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let (refused, expired) = {
            let mapping = shared
                .mapping
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (mapping.refused(), mapping.expired())
        };
        let d = self.0.derived.stats();
        let e = &mut e;
        let counters = [
            (
                "meshtrace_provenance_completed_traces",
                "traces completed and derived",
                s.completed,
            ),
            (
                "meshtrace_provenance_replacements",
                "traces derived again after late spans",
                s.replacements,
            ),
            (
                "meshtrace_provenance_late_merges",
                "completed traces reopened by a late span",
                s.late_merges,
            ),
            (
                "meshtrace_provenance_orphans",
                "orphan spans in completed traces",
                s.orphans,
            ),
            (
                "meshtrace_provenance_multi_root",
                "completed traces with more than one root",
                s.multi_root,
            ),
            (
                "meshtrace_provenance_skew",
                "spans shifted to correct clock skew",
                s.skew,
            ),
            (
                "meshtrace_provenance_shared",
                "Zipkin shared server halves joined to their client",
                s.shared,
            ),
            (
                "meshtrace_provenance_evicted_traces",
                "open traces forced out by the limit",
                s.evicted_traces,
            ),
            (
                "meshtrace_provenance_duplicate_spans",
                "exact duplicate spans ignored",
                s.duplicate_spans,
            ),
            (
                "meshtrace_provenance_mapping_signatures_refused",
                "call signatures not learned: the class mapping held max_mapping_signatures",
                refused,
            ),
            (
                "meshtrace_provenance_classes_folded",
                "traces whose claimed class was folded into `other`: max_classes were in use",
                shared.classes_folded.load(Ordering::Relaxed),
            ),
            (
                "meshtrace_provenance_mapping_signatures_expired",
                "call signatures dropped from the class mapping: unseen for mapping_max_age",
                expired,
            ),
            (
                "meshtrace_provenance_derived_segments_written",
                "derived Parquet segments",
                d.segments_written,
            ),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, v)?;
        }
        labelled_counter(
            e,
            "meshtrace_provenance_dropped_spans",
            "spans left out of provenance (queue full, or beyond the per-trace limit)",
            "reason",
            &[
                ("queue_full", shared.queue_dropped.load(Ordering::Relaxed)),
                ("trace_limit", s.dropped_spans),
            ],
        )?;
        let open = shared.open_traces.load(Ordering::Relaxed);
        gauge(
            e,
            "meshtrace_provenance_open_traces",
            "traces being assembled",
            i64::try_from(open).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "meshtrace_provenance_derived_buffered_rows",
            "derived rows not yet in Parquet",
            i64::try_from(d.buffered_rows).unwrap_or(i64::MAX),
        )
    }
}
