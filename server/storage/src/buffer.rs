//! The in-memory side of the store: buffered Arrow batches not yet in a committed segment,
//! the in-memory mirror of the committed segment list, and the service/operation names.
//!
//! [`View`] holds the buffer and the segment list behind one lock, so that a query snapshots
//! both at once and a flush swaps "batches in the buffer" for "segment in the list" in one
//! step (see the protocol in [`crate::layout`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use meshtrace_model::SpanKind;

use crate::catalog::{DamagedSegment, NewNames, SegmentInfo};

/// One appended batch.
#[derive(Debug)]
pub(crate) struct Buffered {
    pub seq: u64,
    /// Cluster mode: the partition the batch was consumed from (`seq` is its stream sequence).
    pub partition: Option<u32>,
    pub batch: RecordBatch,
    pub at: Instant,
    /// Taken by the flush in progress; still visible to queries.
    pub flushing: bool,
}

/// A batch taken by a flush.
#[derive(Debug)]
pub(crate) struct Taken {
    pub seq: u64,
    pub partition: Option<u32>,
    pub batch: RecordBatch,
}

/// What a query sees: the committed segments and the buffered batches, taken together.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub segments: Vec<Arc<SegmentInfo>>,
    pub batches: Vec<RecordBatch>,
}

/// The buffer and the committed segment list.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub segments: Vec<Arc<SegmentInfo>>,
    pub batches: Vec<Buffered>,
    /// Segments that cannot be read and that nothing else holds (see [`crate::check`]).
    pub damaged: Vec<Arc<DamagedSegment>>,
}

impl View {
    /// Rows in the buffer, those being flushed included.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.batch.num_rows()).sum()
    }

    /// Rows not yet taken by a flush.
    pub fn pending_rows(&self) -> usize {
        self.pending().map(|b| b.batch.num_rows()).sum()
    }

    /// When the oldest batch not yet taken by a flush was appended.
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.pending().map(|b| b.at).min()
    }

    fn pending(&self) -> impl Iterator<Item = &Buffered> {
        self.batches.iter().filter(|b| !b.flushing)
    }

    /// Marks every pending batch as being flushed and returns them with their sequence numbers
    /// and partitions.
    pub fn mark_for_flush(&mut self) -> Vec<Taken> {
        self.mark_for_flush_where(|_| true)
    }

    /// [`View::mark_for_flush`] for the pending batches whose sequence number `take` accepts.
    pub fn mark_for_flush_where(&mut self, take: impl Fn(u64) -> bool) -> Vec<Taken> {
        self.batches
            .iter_mut()
            .filter(|b| !b.flushing && take(b.seq))
            .map(|b| {
                b.flushing = true;
                Taken {
                    seq: b.seq,
                    partition: b.partition,
                    batch: b.batch.clone(),
                }
            })
            .collect()
    }

    /// Drops every batch of `partition`, those being flushed included (it changed owner).
    pub fn drop_partition(&mut self, partition: u32) {
        self.batches.retain(|b| b.partition != Some(partition));
    }

    /// Gives the marked batches back to the buffer after a failed flush.
    pub fn unmark(&mut self) {
        self.batches.iter_mut().for_each(|b| b.flushing = false);
    }

    /// Publishes a committed segment and drops the batches it holds.
    pub fn finish_flush(&mut self, segment: Arc<SegmentInfo>) {
        self.segments.push(segment);
        self.batches.retain(|b| !b.flushing);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            segments: self.segments.clone(),
            batches: self.batches.iter().map(|b| b.batch.clone()).collect(),
        }
    }
}

/// Service and operation names: all known ones, and those not yet in the catalog.
#[derive(Debug, Default)]
pub(crate) struct Names {
    services: BTreeSet<String>,
    /// service → operation name → kinds (as the catalog spells them). Nested so that a
    /// known name is found from borrowed strings, without copying them.
    operations: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    pending: NewNames,
    limits: NameLimits,
    /// (services, operations) not indexed because the limits were reached.
    pub refused: (u64, u64),
}

/// How many names the index keeps: span names come from clients. Spans past the limits are
/// stored and found by search all the same; only the name lists leave them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameLimits {
    pub max_services: usize,
    pub max_operations_per_service: usize,
}

impl Default for NameLimits {
    fn default() -> Self {
        NameLimits {
            max_services: 10_000,
            max_operations_per_service: 2_000,
        }
    }
}

impl Names {
    /// Starts from the names the catalog already holds.
    pub fn from_catalog(names: NewNames, limits: NameLimits) -> Names {
        let mut operations: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for (service, name, kind) in names.operations {
            let kinds = operations.entry(service).or_default().entry(name);
            kinds.or_default().insert(kind);
        }
        Names {
            services: names.services.into_iter().collect(),
            operations,
            pending: NewNames::default(),
            limits,
            refused: (0, 0),
        }
    }

    /// Adds names a peer committed to the catalog (cluster mode), bypassing the limits: the
    /// peer applied them.
    pub fn absorb(&mut self, names: NewNames) {
        self.services.extend(names.services);
        for (service, name, kind) in names.operations {
            let kinds = self.operations.entry(service).or_default().entry(name);
            kinds.or_default().insert(kind);
        }
    }

    /// Records the (service, operation, kind) names of appended spans.
    pub fn observe<'a>(&mut self, spans: impl IntoIterator<Item = (&'a str, &'a str, SpanKind)>) {
        let mut last: Option<(&str, &str, SpanKind)> = None;
        for (service, name, kind) in spans {
            // Spans of a batch come grouped by resource: most repeat the one before.
            if last == Some((service, name, kind)) {
                continue;
            }
            last = Some((service, name, kind));
            if !self.services.contains(service) {
                if self.services.len() >= self.limits.max_services {
                    self.refused.0 += 1;
                    continue;
                }
                self.services.insert(service.to_string());
                self.pending.services.push(service.to_string());
            }
            let ops = self.operations.get(service);
            let known = ops
                .and_then(|ops| ops.get(name))
                .is_some_and(|kinds| kinds.contains(kind.as_str()));
            let new_name = ops.is_none_or(|ops| !ops.contains_key(name));
            let full = ops.is_some_and(|ops| ops.len() >= self.limits.max_operations_per_service);
            if new_name && full {
                self.refused.1 += 1;
            } else if !known {
                let ops = self.operations.entry(service.to_string()).or_default();
                let kinds = ops.entry(name.to_string()).or_default();
                kinds.insert(kind.as_str().to_string());
                let op = (
                    service.to_string(),
                    name.to_string(),
                    kind.as_str().to_string(),
                );
                self.pending.operations.push(op);
            }
        }
    }

    /// Drops the names stored spans no longer hold and returns them: an operation whose
    /// (service, name, kind) series `live` does not hold, unless its service is in `folded`
    /// (its rollups counted some operations under the overflow name: all of its operations
    /// are kept), and a service left without operations that `live` holds no series of.
    /// Names not yet persisted are kept.
    pub fn trim(
        &mut self,
        live: &HashSet<(String, String, String)>,
        folded: &HashSet<String>,
    ) -> NewNames {
        let pending: HashSet<&String> = self.pending.services.iter().collect();
        let pending_ops: HashSet<&(String, String, String)> =
            self.pending.operations.iter().collect();
        let mut removed = NewNames::default();
        for (service, ops) in &mut self.operations {
            if folded.contains(service) {
                continue;
            }
            for (name, kinds) in ops.iter_mut() {
                kinds.retain(|kind| {
                    let series = (service.clone(), name.clone(), kind.clone());
                    let keep = live.contains(&series) || pending_ops.contains(&series);
                    if !keep {
                        removed.operations.push(series);
                    }
                    keep
                });
            }
            ops.retain(|_, kinds| !kinds.is_empty());
        }
        let with_series: HashSet<&str> = live.iter().map(|(s, _, _)| s.as_str()).collect();
        self.operations.retain(|_, ops| !ops.is_empty());
        let operations = &self.operations;
        self.services.retain(|service| {
            let keep = operations.contains_key(service)
                || with_series.contains(service.as_str())
                || pending.contains(service);
            if !keep {
                removed.services.push(service.clone());
            }
            keep
        });
        removed
    }

    /// The names not yet persisted (the caller gives them back if the commit fails).
    pub fn take_pending(&mut self) -> NewNames {
        std::mem::take(&mut self.pending)
    }

    pub fn restore_pending(&mut self, names: NewNames) {
        self.pending.services.extend(names.services);
        self.pending.operations.extend(names.operations);
    }

    /// All service names, sorted.
    pub fn services(&self) -> Vec<String> {
        self.services.iter().cloned().collect()
    }

    /// The operations of a service, sorted by name then kind, optionally of one kind only.
    pub fn operations(&self, service: &str, kind: Option<SpanKind>) -> Vec<(String, SpanKind)> {
        let Some(ops) = self.operations.get(service) else {
            return Vec::new();
        };
        ops.iter()
            .flat_map(|(name, kinds)| kinds.iter().map(move |k| (name, k)))
            .filter_map(|(name, k)| Some((name.clone(), SpanKind::parse(k)?)))
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lists_stop_growing_at_their_limits() {
        let limits = NameLimits {
            max_services: 2,
            max_operations_per_service: 3,
        };
        let mut names = Names::from_catalog(NewNames::default(), limits);
        let made_up: Vec<(String, String)> = (0..10)
            .flat_map(|s| (0..10).map(move |o| (format!("svc-{s}"), format!("op-{o}"))))
            .collect();
        names.observe(
            made_up
                .iter()
                .map(|(s, o)| (s.as_str(), o.as_str(), SpanKind::Server)),
        );
        assert_eq!(names.services(), ["svc-0", "svc-1"]);
        assert_eq!(names.operations("svc-1", None).len(), 3);
        assert_eq!(names.refused, (80, 14));
        // A known operation under a new kind is still indexed.
        names.observe([("svc-0", "op-0", SpanKind::Client)]);
        assert_eq!(names.operations("svc-0", None).len(), 4);
        assert_eq!(names.take_pending().services.len(), 2);
    }

    #[test]
    fn trimming_keeps_live_folded_and_pending_names() {
        let stored = NewNames {
            services: ["gone", "live", "folded"].map(String::from).to_vec(),
            operations: [
                ("gone", "old", "server"),
                ("live", "get", "server"),
                ("live", "get", "client"),
                ("live", "old", "server"),
                ("folded", "rare", "server"),
            ]
            .map(|(s, o, k)| (s.to_string(), o.to_string(), k.to_string()))
            .to_vec(),
        };
        let mut names = Names::from_catalog(stored, NameLimits::default());
        names.observe([("fresh", "new", SpanKind::Server)]);
        let series = |s: &str, o: &str, k: &str| (s.to_string(), o.to_string(), k.to_string());
        let live: HashSet<_> = [
            series("live", "get", "server"),
            series("folded", "(other operations)", "server"),
        ]
        .into();
        let folded: HashSet<String> = ["folded".to_string()].into();
        let removed = names.trim(&live, &folded);
        assert_eq!(removed.services, ["gone"]);
        let mut ops = removed.operations;
        ops.sort();
        assert_eq!(
            ops,
            [
                series("gone", "old", "server"),
                series("live", "get", "client"),
                series("live", "old", "server")
            ]
        );
        assert_eq!(names.services(), ["folded", "fresh", "live"]);
        assert_eq!(
            names.operations("live", None),
            [("get".to_string(), SpanKind::Server)]
        );
        assert_eq!(names.operations("folded", None).len(), 1);
        assert_eq!(
            names.operations("fresh", None).len(),
            1,
            "not yet persisted: kept"
        );
    }
}
