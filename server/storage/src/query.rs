//! Span queries without SQL: trace by ID (pruned by Parquet statistics and bloom filters),
//! Jaeger-style trace search, and the service/operation name lists.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::compute::filter_record_batch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampNanosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow_schema::ArrowError;
use futures::StreamExt;
use meshtrace_model::arrow_conv::batch_to_spans;
use meshtrace_model::{Span, SpanKind, TraceId};

use crate::catalog::SegmentInfo;
use crate::error::StorageError;
use crate::layout::{filter_trace_ids, is_not_found};
use crate::reader::{RowPredicate, ScanFilter, ScanPart};
use crate::store::{lock, Store};
use crate::tag_filter::TagFilter;
use crate::TraceQuery;

/// Segments read at the same time by one query.
const PARALLEL_SEGMENTS: usize = 8;

/// The Jaeger UI's default number of traces.
const DEFAULT_LIMIT: usize = 20;

/// The columns [`span_mask`] reads.
const FILTER_COLUMNS: [&str; 4] = ["service_name", "name", "start_time", "duration_ns"];

/// The columns a search reads of the spans that match.
const MATCH_COLUMNS: [&str; 2] = ["trace_id", "start_time"];

/// The in-reader filter of a search: the span conditions first, then the tags on the rows
/// they kept.
fn search_scan(filter: &SpanFilter, tags: &TagFilter) -> ScanFilter {
    let shared = Arc::new(filter.clone());
    let mut stages: Vec<(Vec<&'static str>, RowPredicate)> = vec![(
        FILTER_COLUMNS.to_vec(),
        Arc::new(move |b: &RecordBatch| span_mask(b, &shared)),
    )];
    if !tags.is_empty() {
        let tags = Arc::new(tags.clone());
        let columns = tags.columns();
        stages.push((columns, Arc::new(move |b: &RecordBatch| tags.mask(b))));
    }
    ScanFilter {
        stages,
        start_range: filter.start,
    }
}

/// The span-level conditions of a [`TraceQuery`] that columns can answer.
#[derive(Clone, Debug)]
struct SpanFilter {
    service: Option<String>,
    operation: Option<String>,
    start: (i64, i64),
    duration: (i64, i64),
}

impl SpanFilter {
    fn new(q: &TraceQuery) -> Result<SpanFilter, StorageError> {
        let bound = |v: Option<i64>, default: i64| v.filter(|v| *v != 0).unwrap_or(default);
        let f = SpanFilter {
            service: q.service.clone().filter(|s| !s.is_empty()),
            operation: q.operation.clone().filter(|s| !s.is_empty()),
            start: (
                q.start_min_ns.unwrap_or(i64::MIN),
                q.start_max_ns.unwrap_or(i64::MAX),
            ),
            duration: (
                bound(q.duration_min_ns, i64::MIN),
                bound(q.duration_max_ns, i64::MAX),
            ),
        };
        if f.start.0 > f.start.1 {
            return Err(StorageError::InvalidArgument(
                "start_min is after start_max".into(),
            ));
        }
        if f.duration.0 > f.duration.1 {
            return Err(StorageError::InvalidArgument(
                "duration_min is greater than duration_max".into(),
            ));
        }
        Ok(f)
    }

    fn wants_segment(&self, seg: &SegmentInfo) -> bool {
        let in_time = seg.max_start_ns >= self.start.0 && seg.min_start_ns <= self.start.1;
        let has_service = self
            .service
            .as_ref()
            .is_none_or(|s| seg.services.binary_search(s).is_ok());
        in_time && has_service
    }
}

fn str_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name} is missing or not utf8")))
}

/// Which rows of `batch` (holding at least [`FILTER_COLUMNS`]) meet the filter.
fn span_mask(batch: &RecordBatch, f: &SpanFilter) -> Result<BooleanArray, ArrowError> {
    let service = str_column(batch, "service_name")?;
    let name = str_column(batch, "name")?;
    let start = batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| ArrowError::SchemaError("start_time is missing".into()))?;
    let duration = batch
        .column_by_name("duration_ns")
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| ArrowError::SchemaError("duration_ns is missing".into()))?;
    let eq = |col: &StringArray, want: &Option<String>, i: usize| {
        want.as_ref()
            .is_none_or(|w| col.is_valid(i) && col.value(i) == w)
    };
    Ok((0..batch.num_rows())
        .map(|i| {
            let (s, d) = (start.value(i), duration.value(i));
            Some(
                eq(service, &f.service, i)
                    && eq(name, &f.operation, i)
                    && (f.start.0..=f.start.1).contains(&s)
                    && (f.duration.0..=f.duration.1).contains(&d),
            )
        })
        .collect())
}

/// Records, per trace, the latest start of a matching span (`batch` holds the matching rows'
/// `trace_id` and `start_time`).
fn collect_matches(
    batch: &RecordBatch,
    out: &mut HashMap<TraceId, i64>,
) -> Result<(), StorageError> {
    let ids = batch
        .column_by_name("trace_id")
        .and_then(|c| c.as_fixed_size_binary_opt());
    let starts = batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>());
    let (Some(ids), Some(starts)) = (ids, starts) else {
        return Err(ArrowError::SchemaError("trace_id or start_time is missing".into()).into());
    };
    for i in 0..batch.num_rows() {
        if let Ok(id) = TraceId::try_from(ids.value(i)) {
            let e = out.entry(id).or_insert(starts.value(i));
            *e = (*e).max(starts.value(i));
        }
    }
    Ok(())
}

/// The start of the `limit`-th most recent match, once there are that many.
fn kth_latest(matches: &HashMap<TraceId, i64>, limit: usize) -> Option<i64> {
    if limit == 0 || matches.len() < limit {
        return None;
    }
    let mut starts: Vec<i64> = matches.values().copied().collect();
    let (_, kth, _) = starts.select_nth_unstable_by(limit - 1, |a, b| b.cmp(a));
    Some(*kth)
}

/// Segments read together by a search: the newest first, then more at a time while the
/// search goes on (most searches end within the first few).
fn waves(n: usize) -> Vec<std::ops::Range<usize>> {
    let (mut out, mut at, mut size) = (Vec::new(), 0, 1);
    while at < n {
        out.push(at..(at + size).min(n));
        at += size;
        size = (size * 2).min(PARALLEL_SEGMENTS);
    }
    out
}

impl Store {
    /// Refuses a read (429 with a retry delay) while the process is over its memory budget's
    /// refusal point, as SQL plans are: reads decode whole row groups.
    fn admit_read(&self) -> Result<(), StorageError> {
        self.inner
            .cfg
            .memory
            .exceeded()
            .map_or(Ok(()), |e| Err(e.into()))
    }

    /// Every span of a trace, sorted by start time (empty when the trace is unknown).
    pub async fn trace(&self, trace_id: [u8; 16]) -> Result<Vec<Span>, StorageError> {
        let mut traces = self.traces(&BTreeSet::from([trace_id])).await?;
        Ok(traces.remove(&trace_id).unwrap_or_default())
    }

    /// Every span of each of `ids`, grouped by trace and sorted by start time. Traces with no
    /// span are absent. Refused (overloaded) while the process is short of memory.
    pub async fn traces(
        &self,
        ids: &BTreeSet<TraceId>,
    ) -> Result<HashMap<TraceId, Vec<Span>>, StorageError> {
        self.admit_read()?;
        let snap = self.snapshot();
        let mut batches = Vec::new();
        for b in &snap.batches {
            let f = filter_trace_ids(b, ids)?;
            if f.num_rows() > 0 {
                batches.push(f);
            }
        }
        let reader = &self.inner.reader;
        let c = &self.inner.counters;
        // Segments whose cached filters rule the IDs out are passed without a visit.
        let triage = reader.triage(&snap.segments, ids);
        c.segments_pruned
            .fetch_add(triage.segments_pruned as u64, Ordering::Relaxed);
        c.row_groups_pruned
            .fetch_add(triage.row_groups_pruned as u64, Ordering::Relaxed);
        let mut lookups = futures::stream::iter(triage.visit)
            .map(|seg: Arc<SegmentInfo>| async move {
                let outcome = reader.lookup(&seg, ids).await;
                (seg, outcome)
            })
            .buffer_unordered(PARALLEL_SEGMENTS);
        while let Some((seg, outcome)) = lookups.next().await {
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) if is_not_found(&e) => {
                    tracing::debug!(path = %seg.path, "segment vanished during lookup");
                    continue;
                }
                Err(e) => return Err(e),
            };
            c.row_groups_pruned
                .fetch_add(outcome.row_groups_pruned as u64, Ordering::Relaxed);
            c.row_groups_read
                .fetch_add(outcome.row_groups_read as u64, Ordering::Relaxed);
            match outcome.batches {
                None => c.segments_pruned.fetch_add(1, Ordering::Relaxed),
                Some(found) => {
                    batches.extend(found);
                    c.segments_read.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        let mut out: HashMap<TraceId, Vec<Span>> = HashMap::new();
        for b in &batches {
            for span in batch_to_spans(b)? {
                out.entry(span.trace_id).or_default().push(span);
            }
        }
        for spans in out.values_mut() {
            spans.sort_by(|a, b| {
                (a.start_unix_nano, a.span_id).cmp(&(b.start_unix_nano, b.span_id))
            });
        }
        Ok(out)
    }

    /// Jaeger trace search: traces with at least one span meeting every condition, most recent
    /// first (by their latest matching span), each with all its spans.
    ///
    /// Segments are read newest first (by their latest start) and the search stops once it
    /// holds `limit` traces whose latest match is later than anything the unread segments can
    /// hold: the answer is the one reading every segment would give. Inside a segment, row
    /// groups are skipped by their time range and the conditions are evaluated on the columns
    /// in the Parquet reader (tags only on the rows the cheaper conditions kept).
    pub async fn find_traces(&self, q: &TraceQuery) -> Result<Vec<Vec<Span>>, StorageError> {
        self.admit_read()?;
        let filter = SpanFilter::new(q)?;
        let tags = TagFilter::new(&q.tags);
        let limit = if q.limit == 0 { DEFAULT_LIMIT } else { q.limit };
        let snap = self.snapshot();
        let mut matches: HashMap<TraceId, i64> = HashMap::new();
        for b in &snap.batches {
            let mut selected = filter_record_batch(b, &span_mask(b, &filter)?)?;
            if !tags.is_empty() {
                selected = filter_record_batch(&selected, &tags.mask(&selected)?)?;
            }
            collect_matches(&selected, &mut matches)?;
        }
        let scan = search_scan(&filter, &tags);
        let wanted: Vec<Arc<SegmentInfo>> = snap
            .segments
            .iter()
            .filter(|s| filter.wants_segment(s))
            .cloned()
            .collect();
        let parts = self.parts(wanted, &scan).await?;
        let c = &self.inner.counters;
        let mut scanned: HashSet<i64> = HashSet::new();
        for wave in waves(parts.len()) {
            let next_start = parts.get(wave.start).map_or(i64::MIN, |p| p.max_start_ns);
            if kth_latest(&matches, limit).is_some_and(|kth| kth > next_start) {
                break;
            }
            scanned.extend(parts[wave.clone()].iter().map(|p| p.seg.id));
            let groups: usize = parts[wave.clone()].iter().map(|p| p.groups.len()).sum();
            c.search_row_groups_scanned
                .fetch_add(groups as u64, Ordering::Relaxed);
            let scans = parts[wave].iter().map(|part| {
                let scan = &scan;
                async move {
                    let reader = &self.inner.reader;
                    (part, reader.scan(part, scan, Some(&MATCH_COLUMNS)).await)
                }
            });
            for (part, result) in futures::future::join_all(scans).await {
                match result {
                    Ok(batches) => {
                        for b in &batches {
                            collect_matches(b, &mut matches)?;
                        }
                    }
                    Err(e) if is_not_found(&e) => {
                        tracing::debug!(path = %part.seg.path, "segment vanished during search");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let read = scanned.len();
        let skipped = (snap.segments.len() - read) as u64;
        c.search_segments_skipped
            .fetch_add(skipped, Ordering::Relaxed);
        c.search_segments_scanned
            .fetch_add(read as u64, Ordering::Relaxed);
        let mut ranked: Vec<(TraceId, i64)> = matches.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(limit);
        let ids: BTreeSet<TraceId> = ranked.iter().map(|r| r.0).collect();
        let mut traces = self.traces(&ids).await?;
        Ok(ranked
            .iter()
            .filter_map(|(id, _)| traces.remove(id))
            .collect())
    }

    /// The parts of `segments` a search reads ([`crate::reader::SegmentReader::parts`]), newest
    /// first.
    async fn parts(
        &self,
        segments: Vec<Arc<SegmentInfo>>,
        scan: &ScanFilter,
    ) -> Result<Vec<ScanPart>, StorageError> {
        let reader = &self.inner.reader;
        let mut footers = futures::stream::iter(segments)
            .map(|seg| async move { (reader.parts(&seg, scan).await, seg) })
            .buffer_unordered(PARALLEL_SEGMENTS);
        let mut parts = Vec::new();
        while let Some((found, seg)) = footers.next().await {
            match found {
                Ok(p) => parts.extend(p),
                Err(e) if is_not_found(&e) => {
                    tracing::debug!(path = %seg.path, "segment vanished during search");
                }
                Err(e) => return Err(e),
            }
        }
        parts.sort_by_key(|p| std::cmp::Reverse(p.max_start_ns));
        Ok(parts)
    }

    /// Every service name seen (catalog and buffer), sorted.
    pub async fn services(&self) -> Result<Vec<String>, StorageError> {
        Ok(lock(&self.inner.names).services())
    }

    /// The operations of a service with their span kinds, sorted; only one kind if given.
    pub async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<(String, SpanKind)>, StorageError> {
        Ok(lock(&self.inner.names).operations(service, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_bounds_are_invalid() {
        let q = TraceQuery {
            start_min_ns: Some(10),
            start_max_ns: Some(5),
            ..Default::default()
        };
        let err = SpanFilter::new(&q).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidArgument);
    }
}
