//! Values read from components at scrape time, written through `prometheus-client` like every
//! other metric: each engine (store and write-ahead log here, provenance, priorities) has a
//! [`prometheus_client::collector::Collector`] that reads its counters when `/metrics` is
//! scraped, built from the few helpers below. Counters get their `_total` suffix from the
//! encoder.

use std::sync::{Arc, Mutex};

use meshtrace_collector::dedup::Dedup;
use meshtrace_collector::wal::Wal;
use meshtrace_storage::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Writes one counter.
pub fn counter(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes one counter with a value per label value: `name{label="value"}`.
pub fn labelled_counter(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (value, v) in values {
        ConstCounter::new(*v).encode(m.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// Writes one gauge (`i64` or `f64`).
pub fn gauge<N>(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The store's and the write-ahead log's counters.
pub struct StoreMetrics {
    pub store: Store,
    /// `None` in cluster mode.
    pub wal: Option<Wal>,
    /// The window that drops copies of spans already stored.
    pub dedup: Arc<Mutex<Dedup>>,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

impl Collector for StoreMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (w, s) = (
            self.wal.as_ref().map(Wal::stats).unwrap_or_default(),
            self.store.stats(),
        );
        let e = &mut e;
        gauge(
            e,
            "meshtrace_wal_bytes",
            "bytes in write-ahead log segments",
            i64::try_from(w.bytes_on_disk).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "meshtrace_wal_group_commits",
            "write-ahead log group commits",
            w.group_commits,
        )?;
        counter(
            e,
            "meshtrace_wal_fsyncs",
            "write-ahead log fsync calls",
            w.fsyncs,
        )?;
        let (services, operations) = self.store.names_refused();
        labelled_counter(
            e,
            "meshtrace_names_refused",
            "span names left out of the service and operation lists: the lists were full",
            "kind",
            &[("service", services), ("operation", operations)],
        )?;
        counter(
            e,
            "meshtrace_wal_records_lost",
            "write-ahead log records found damaged at start-up and not stored elsewhere",
            w.records_lost,
        )?;
        counter(
            e,
            "meshtrace_wal_records_skipped",
            "write-ahead log records found damaged at start-up, already stored in Parquet",
            w.records_skipped,
        )?;
        counter(
            e,
            "meshtrace_flushes",
            "flushes of the buffer to Parquet",
            s.flushes,
        )?;
        counter(
            e,
            "meshtrace_flush_failures",
            "flushes of the buffer to Parquet that failed (retried with backoff)",
            s.flush_failures,
        )?;
        counter(
            e,
            "meshtrace_segments_rebuilt",
            "damaged segments (missing or unreadable files) stored again from the write-ahead log",
            s.segments_rebuilt,
        )?;
        gauge(
            e,
            "meshtrace_segments",
            "span segments (Parquet files) queries read; compaction keeps it down",
            s.segments as i64,
        )?;
        gauge(
            e,
            "meshtrace_segments_damaged",
            "damaged segments whose spans nothing else holds: answers over their time range are partial",
            s.segments_damaged as i64,
        )?;
        counter(
            e,
            "meshtrace_failed_segments_deleted",
            "Parquet files deleted because their catalog commit failed",
            s.failed_segments_deleted,
        )?;
        let duplicates = self.dedup.lock().map_or(0, |d| d.duplicates);
        counter(
            e,
            "meshtrace_spans_deduplicated",
            "spans dropped as copies of spans already stored (retries, requests sent twice)",
            duplicates,
        )?;
        gauge(
            e,
            "meshtrace_cluster_partitions_owned",
            "cluster mode: span-stream partitions this node owns and consumes",
            self.store.owned_partitions().len() as i64,
        )?;
        counter(
            e,
            "meshtrace_segments_quarantined",
            "Parquet files without a catalog row whose spans the log no longer holds, moved to quarantine/",
            s.segments_quarantined,
        )?;
        counter(
            e,
            "meshtrace_segments_written",
            "Parquet segments written",
            s.segments_written,
        )?;
        counter(
            e,
            "meshtrace_segment_bytes_written",
            "bytes of Parquet written",
            s.bytes_written,
        )?;
        gauge(
            e,
            "meshtrace_buffered_spans",
            "spans buffered in memory, not yet in Parquet",
            i64::try_from(self.store.buffered_rows()).unwrap_or(i64::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            counter(&mut e, "meshtrace_test_things", "things", 3)?;
            labelled_counter(
                &mut e,
                "meshtrace_test_dropped",
                "dropped",
                "reason",
                &[("queue_full", 1), ("limit", 2)],
            )?;
            gauge(&mut e, "meshtrace_test_open", "open", 4i64)?;
            gauge(&mut e, "meshtrace_test_seconds", "seconds", 0.5f64)
        }
    }

    #[test]
    fn collected_values_are_written_as_openmetrics() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "meshtrace_test_things_total 3",
            "meshtrace_test_dropped_total{reason=\"queue_full\"} 1",
            "meshtrace_test_dropped_total{reason=\"limit\"} 2",
            "meshtrace_test_open 4\n",
            "meshtrace_test_seconds 0.5",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
