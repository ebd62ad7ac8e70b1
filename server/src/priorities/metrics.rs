//! The `meshtrace_priority_*` and `meshtrace_budget_*` metrics, read from the engine at scrape
//! time.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};

use super::Priorities;
use crate::metrics::{counter, gauge};

/// The budgets and priorities engine's counters, as a collector.
pub struct PrioritiesMetrics(pub Priorities);

impl std::fmt::Debug for PrioritiesMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrioritiesMetrics")
    }
}

impl Collector for PrioritiesMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let i = &self.0.inner;
        let (late, folded, capped) = {
            let obs = i.obs.lock().unwrap_or_else(PoisonError::into_inner);
            (
                obs.late_traces(),
                obs.folded_samples(),
                obs.capped_samples(),
            )
        };
        let e = &mut e;
        counter(
            e,
            "meshtrace_priority_versions_published",
            "priority assignment set versions published",
            i.published.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "meshtrace_priorities_leading",
            "1 when this node computes and publishes priority sets (always outside cluster mode; \
             the elected leader in a cluster)",
            i64::from(i.leading.load(Ordering::Acquire)),
        )?;
        gauge(
            e,
            "meshtrace_priority_watchers",
            "open priority long polls and WatchPriorities streams",
            i.watchers.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "meshtrace_budget_updates",
            "budget and priority updates run",
            i.updates.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "meshtrace_budget_late_traces",
            "completed traces too old for the budget window",
            late,
        )?;
        counter(
            e,
            "meshtrace_proxies_refused",
            "polls and watches of new proxies not recorded: the registry held max_proxies",
            i.proxies.refused(),
        )?;
        counter(
            e,
            "meshtrace_budget_folded_hop_samples",
            "hop samples counted towards an ancestor position: their class had \
             max_positions_per_class positions in the step",
            folded,
        )?;
        counter(
            e,
            "meshtrace_budget_capped_samples",
            "samples left out of budgets: their sender's traces held max_sender_share of their \
             class's samples at the hop (or end to end) in the step",
            capped,
        )?;
        let h = &i.publish_seconds;
        h.encode(e.encode_descriptor(
            "meshtrace_priority_publish_latency_seconds",
            "window step end to a changed set published",
            None,
            h.metric_type(),
        )?)?;
        gauge(
            e,
            "meshtrace_priority_publish_latency_max_seconds",
            "longest window step end to a changed set published",
            self.0.publish_latency().max_ns as f64 / 1e9,
        )
    }
}
