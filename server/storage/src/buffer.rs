//! The in-memory side of the store: buffered Arrow batches not yet in a committed segment,
//! the in-memory mirror of the committed segment list, and the service/operation names.
//!
//! [`View`] holds the buffer and the segment list behind one lock, so that a query snapshots
//! both at once and a flush swaps "batches in the buffer" for "segment in the list" in one
//! step (see the protocol in [`crate::layout`]).

use std::collections::{BTreeMap, HashSet};
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

/// Service and operation names: all known ones, when a span of each was last appended, and
/// those not yet in the catalog.
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// service → when a span of it was last appended (unix ns).
    services: BTreeMap<String, i64>,
    /// service → operation name → kind (as the catalog spells it) → last appended. Nested
    /// so that a known name is found from borrowed strings, without copying them.
    operations: BTreeMap<String, BTreeMap<String, BTreeMap<String, i64>>>,
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
    /// Starts from the names the catalog already holds, as if last seen at `now_ns`.
    pub fn from_catalog(names: NewNames, limits: NameLimits, now_ns: i64) -> Names {
        let mut out = Names {
            limits,
            ..Names::default()
        };
        out.absorb(names, now_ns);
        out
    }

    /// Adds names as seen at `now_ns`, bypassing the limits: names a peer committed to the
    /// catalog (cluster mode, the peer applied them), or names given back after a failure.
    pub fn absorb(&mut self, names: NewNames, now_ns: i64) {
        for service in names.services {
            let seen = self.services.entry(service).or_default();
            *seen = (*seen).max(now_ns);
        }
        for (service, name, kind) in names.operations {
            let kinds = self.operations.entry(service).or_default().entry(name);
            let seen = kinds.or_default().entry(kind).or_default();
            *seen = (*seen).max(now_ns);
        }
    }

    /// Records the (service, operation, kind) names of spans appended at `now_ns`.
    pub fn observe<'a>(
        &mut self,
        spans: impl IntoIterator<Item = (&'a str, &'a str, SpanKind)>,
        now_ns: i64,
    ) {
        let mut last: Option<(&str, &str, SpanKind)> = None;
        for (service, name, kind) in spans {
            // Spans of a batch come grouped by resource: most repeat the one before.
            if last == Some((service, name, kind)) {
                continue;
            }
            last = Some((service, name, kind));
            let full = self.services.len() >= self.limits.max_services;
            match self.services.get_mut(service) {
                Some(seen) => *seen = (*seen).max(now_ns),
                None if full => {
                    self.refused.0 += 1;
                    continue;
                }
                None => {
                    self.services.insert(service.to_string(), now_ns);
                    self.pending.services.push(service.to_string());
                }
            }
            let known = self
                .operations
                .get_mut(service)
                .and_then(|ops| ops.get_mut(name))
                .and_then(|kinds| kinds.get_mut(kind.as_str()));
            if let Some(seen) = known {
                *seen = (*seen).max(now_ns);
                continue;
            }
            let ops = self.operations.get(service);
            let new_name = ops.is_none_or(|ops| !ops.contains_key(name));
            let full = ops.is_some_and(|ops| ops.len() >= self.limits.max_operations_per_service);
            if new_name && full {
                self.refused.1 += 1;
                continue;
            }
            let ops = self.operations.entry(service.to_string()).or_default();
            let kinds = ops.entry(name.to_string()).or_default();
            kinds.insert(kind.as_str().to_string(), now_ns);
            let op = (
                service.to_string(),
                name.to_string(),
                kind.as_str().to_string(),
            );
            self.pending.operations.push(op);
        }
    }

    /// Drops the names no span was appended with since `cutoff_ns` and returns them: an
    /// operation (service, name, kind), and a service left without operations. Names not yet
    /// persisted are kept.
    pub fn trim(&mut self, cutoff_ns: i64) -> NewNames {
        let pending: HashSet<&String> = self.pending.services.iter().collect();
        let pending_ops: HashSet<&(String, String, String)> =
            self.pending.operations.iter().collect();
        let mut removed = NewNames::default();
        for (service, ops) in &mut self.operations {
            for (name, kinds) in ops.iter_mut() {
                kinds.retain(|kind, seen| {
                    if *seen >= cutoff_ns {
                        return true;
                    }
                    let series = (service.clone(), name.clone(), kind.clone());
                    let keep = pending_ops.contains(&series);
                    if !keep {
                        removed.operations.push(series);
                    }
                    keep
                });
            }
            ops.retain(|_, kinds| !kinds.is_empty());
        }
        self.operations.retain(|_, ops| !ops.is_empty());
        let operations = &self.operations;
        self.services.retain(|service, seen| {
            let keep =
                *seen >= cutoff_ns || operations.contains_key(service) || pending.contains(service);
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
        self.services.keys().cloned().collect()
    }

    /// The operations of a service, sorted by name then kind, optionally of one kind only.
    pub fn operations(&self, service: &str, kind: Option<SpanKind>) -> Vec<(String, SpanKind)> {
        let Some(ops) = self.operations.get(service) else {
            return Vec::new();
        };
        ops.iter()
            .flat_map(|(name, kinds)| kinds.keys().map(move |k| (name, k)))
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
        let mut names = Names::from_catalog(NewNames::default(), limits, 0);
        let made_up: Vec<(String, String)> = (0..10)
            .flat_map(|s| (0..10).map(move |o| (format!("svc-{s}"), format!("op-{o}"))))
            .collect();
        names.observe(
            made_up
                .iter()
                .map(|(s, o)| (s.as_str(), o.as_str(), SpanKind::Server)),
            0,
        );
        assert_eq!(names.services(), ["svc-0", "svc-1"]);
        assert_eq!(names.operations("svc-1", None).len(), 3);
        assert_eq!(names.refused, (80, 14));
        // A known operation under a new kind is still indexed.
        names.observe([("svc-0", "op-0", SpanKind::Client)], 0);
        assert_eq!(names.operations("svc-0", None).len(), 4);
        assert_eq!(names.take_pending().services.len(), 2);
    }

    #[test]
    fn names_unseen_since_the_cutoff_are_trimmed_unless_pending() {
        let stored = NewNames {
            services: ["gone", "live"].map(String::from).to_vec(),
            operations: [
                ("gone", "old", "server"),
                ("live", "get", "server"),
                ("live", "old", "server"),
            ]
            .map(|(s, o, k)| (s.to_string(), o.to_string(), k.to_string()))
            .to_vec(),
        };
        let mut names = Names::from_catalog(stored, NameLimits::default(), 100);
        names.observe([("live", "get", SpanKind::Server)], 200);
        names.observe([("live", "get", SpanKind::Client)], 50);
        names.observe([("fresh", "new", SpanKind::Server)], 50);
        let removed = names.trim(150);
        assert_eq!(removed.services, ["gone"]);
        let mut ops = removed.operations;
        ops.sort();
        let series = |s: &str, o: &str, k: &str| (s.to_string(), o.to_string(), k.to_string());
        assert_eq!(
            ops,
            [
                series("gone", "old", "server"),
                series("live", "old", "server")
            ]
        );
        assert_eq!(
            names.services(),
            ["fresh", "live"],
            "not yet persisted: kept"
        );
        let live: Vec<_> = names.operations("live", None);
        assert_eq!(live.len(), 2, "get as a server, and as a client (pending)");
        assert!(names.take_pending().operations.len() == 2);
        assert_eq!(
            names.trim(150).services,
            ["fresh"],
            "once persisted, it goes"
        );
    }
}
