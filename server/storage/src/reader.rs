//! Reading segments back with pruning: the [`SegmentReader`] caches each segment's Parquet
//! metadata and its row groups' `trace_id` bloom filters, looks traces up by ID and scans
//! segments for searches. The file layout it reads is [`crate::layout`]'s.
//!
//! # Design
//!
//! ## Lookups and scans
//!
//! A trace lookup first passes, under one lock and without I/O ([`SegmentReader::triage`]),
//! every segment whose cached footer and bloom filters rule its IDs out: row groups whose
//! `trace_id` min/max range misses the IDs, then those whose bloom filter says "no". A flush
//! or a merge caches its segment's footer and filters from the bytes it wrote
//! ([`SegmentReader::prime`]); a segment not cached (after a restart, or evicted) is visited,
//! and the visit reads every row group's filter at once, so that lookups of other traces pass
//! it. In the row groups left only the pages whose `trace_id` bounds may hold an ID are
//! fetched (ranged reads through the object store) and filtered to it.
//!
//! A search skips whole segments by the catalog's time range and service list, cuts the rest
//! into parts of at most [`PART_ROW_GROUPS`] consecutive row groups whose `start_time`
//! statistics meet its range, reads the parts newest first and stops once no unread part can
//! change the answer (`Store::find_traces`), and evaluates service, operation, time and
//! duration inside the Parquet reader (a `RowFilter`), then tags on the attribute columns of
//! the rows those kept, before decoding `trace_id` and `start_time`.
//!

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::ArrowError;
use bytes::Bytes;
use futures::TryStreamExt;
use meshtrace_model::TraceId;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::{
    ArrowPredicate, ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter,
    RowSelection, RowSelector,
};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData,
};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use parquet::schema::types::SchemaDescriptor;

use crate::catalog::SegmentInfo;
use crate::error::StorageError;
use crate::layout::filter_trace_ids;
use crate::object_reader::ObjectReader;

/// The metadata cache holds at most this many segments (the oldest go first).
const METADATA_CACHE_MAX: usize = 4096;

/// The bloom filter cache holds the filters of at most this many row groups (the oldest
/// segments' go first): a few KiB each at the default row group size (8 KiB at most for
/// 16,384 spans of 4-span traces), so under 96 MiB, enough for the row groups of some 200
/// million spans.
const BLOOM_CACHE_MAX: usize = 12_288;

/// A function from a batch to the mask of its rows to keep.
pub(crate) type RowPredicate =
    Arc<dyn Fn(&RecordBatch) -> Result<BooleanArray, ArrowError> + Send + Sync>;

/// Row predicates evaluated inside the Parquet reader, in order: each stage receives the
/// top-level columns it names, decoded only for the rows every earlier stage kept.
#[derive(Clone)]
pub(crate) struct ScanFilter {
    pub stages: Vec<(Vec<&'static str>, RowPredicate)>,
    /// Row groups whose `start_time` range misses `[min, max]` are skipped.
    pub start_range: (i64, i64),
}

/// Row groups a search's part of a segment holds at most: 131,072 rows at the default row
/// group size, about what a loaded server flushes at once.
const PART_ROW_GROUPS: usize = 8;

/// Consecutive row groups of one segment a search reads together.
#[derive(Clone, Debug)]
pub(crate) struct ScanPart {
    pub seg: Arc<SegmentInfo>,
    pub groups: Vec<usize>,
    /// The latest start its row groups' statistics allow.
    pub max_start_ns: i64,
}

/// How a trace-ID lookup went for one segment.
#[derive(Debug, Default)]
pub(crate) struct LookupOutcome {
    /// `None` when the whole segment was pruned.
    pub batches: Option<Vec<RecordBatch>>,
    pub row_groups_pruned: usize,
    pub row_groups_read: usize,
    /// Rows decoded from the row groups read (the pages that may hold the IDs).
    pub rows_decoded: usize,
}

/// The `trace_id` bloom filter of one row group (`None`: the row group has none).
type CachedBloom = Option<Arc<Sbbf>>;

/// What the reader keeps of one segment.
#[derive(Debug)]
struct CachedSegment {
    meta: ArrowReaderMetadata,
    /// The `trace_id` leaf column, if the segment has one.
    trace_col: Option<usize>,
    /// The bloom filter of each row group: `None` until read.
    blooms: Vec<Option<CachedBloom>>,
}

/// The reader's caches, under one lock. Past their bounds the segments cached first go
/// first (their footer, or their bloom filters), never the whole cache at once: the newest
/// segments, which most lookups and searches read, stay.
#[derive(Debug)]
struct Caches {
    segments: HashMap<String, CachedSegment>,
    /// The paths of `segments` (and of segments since forgotten), oldest first.
    order: VecDeque<String>,
    /// Bloom filters held, over every segment.
    blooms: usize,
    max_segments: usize,
    max_blooms: usize,
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            segments: HashMap::new(),
            order: VecDeque::new(),
            blooms: 0,
            max_segments: METADATA_CACHE_MAX,
            max_blooms: BLOOM_CACHE_MAX,
        }
    }
}

fn held(s: &CachedSegment) -> usize {
    s.blooms.iter().filter(|b| b.is_some()).count()
}

impl Caches {
    /// Caches a segment (replacing what was cached of it), within the caches' bounds.
    fn insert(&mut self, path: &str, seg: CachedSegment) {
        if self.segments.contains_key(path) {
            self.remove(path);
            self.order.retain(|p| p != path);
        }
        self.make_room(1, held(&seg));
        self.blooms += held(&seg);
        self.segments.insert(path.to_string(), seg);
        self.order.push_back(path.to_string());
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.segments.remove(path) {
            self.blooms -= held(&old);
        }
    }

    /// Evicts the oldest segments' footers until `segments` more fit, then the oldest
    /// segments' bloom filters until `blooms` more fit.
    fn make_room(&mut self, segments: usize, blooms: usize) {
        while self.segments.len() + segments > self.max_segments {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(&oldest);
        }
        let mut at = 0;
        while self.blooms + blooms > self.max_blooms && at < self.order.len() {
            if let Some(s) = self.segments.get_mut(&self.order[at]) {
                self.blooms -= held(s);
                s.blooms.iter_mut().for_each(|b| *b = None);
            }
            at += 1;
        }
        // Paths forgotten since they were cached.
        if self.order.len() > 2 * self.segments.len() + 64 {
            let segments = &self.segments;
            self.order.retain(|p| segments.contains_key(p));
        }
    }

    fn keep_bloom(&mut self, path: &str, rg: usize, bloom: CachedBloom) {
        let missing = (self.segments.get(path))
            .and_then(|s| s.blooms.get(rg))
            .is_some_and(Option::is_none);
        if !missing {
            return;
        }
        self.make_room(0, 1);
        if let Some(slot) = (self.segments.get_mut(path)).and_then(|s| s.blooms.get_mut(rg)) {
            *slot = Some(bloom);
            self.blooms += 1;
        }
    }
}

/// Whether a lookup of `ids` reads row group `rg`, as far as its `trace_id` range and its
/// bloom filter (`None`: not read yet) tell.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Skip,
    Read,
    NeedsBloom,
}

fn verdict(
    rg: &RowGroupMetaData,
    col: usize,
    ids: &BTreeSet<TraceId>,
    bloom: Option<&CachedBloom>,
) -> Verdict {
    let range = byte_range(rg, col);
    let in_range = |id: &&TraceId| range.is_none_or(|(min, max)| &id[..] >= min && &id[..] <= max);
    let mut candidates = ids.iter().filter(in_range).peekable();
    if candidates.peek().is_none() {
        return Verdict::Skip;
    }
    match bloom {
        None => Verdict::NeedsBloom,
        Some(None) => Verdict::Read,
        Some(Some(b)) if candidates.any(|id| b.check(&id[..])) => Verdict::Read,
        Some(Some(_)) => Verdict::Skip,
    }
}

/// What a lookup learnt before reading anything: the segments it must visit, and those (and
/// their row groups) the cached footers and bloom filters ruled out.
#[derive(Debug, Default)]
pub(crate) struct Triage {
    pub visit: Vec<Arc<SegmentInfo>>,
    pub segments_pruned: usize,
    pub row_groups_pruned: usize,
}

/// Reads segments through the object store, caching their Parquet metadata and the
/// `trace_id` bloom filters of their row groups, so that a lookup by trace ID costs reads only
/// for the row groups that may hold it, however many segments there are.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    caches: Mutex<Caches>,
}

impl SegmentReader {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        SegmentReader {
            store,
            caches: Mutex::new(Caches::default()),
        }
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.caches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sorts `segments` into those a lookup of `ids` must visit and those whose cached footer
    /// and bloom filters already rule every row group out. It takes one lock and no I/O, so a
    /// lookup's cost does not grow with the segments that cannot hold its traces.
    pub fn triage(&self, segments: &[Arc<SegmentInfo>], ids: &BTreeSet<TraceId>) -> Triage {
        let caches = self.caches();
        let mut out = Triage::default();
        for seg in segments {
            let ruled_out = caches.segments.get(&seg.path).and_then(|c| {
                let col = c.trace_col?;
                let groups = c.meta.metadata().row_groups().iter().enumerate();
                let mut skipped = 0;
                for (i, rg) in groups {
                    match verdict(rg, col, ids, c.blooms.get(i).and_then(Option::as_ref)) {
                        Verdict::Skip => skipped += 1,
                        _ => return None,
                    }
                }
                Some(skipped)
            });
            match ruled_out {
                Some(groups) => {
                    out.segments_pruned += 1;
                    out.row_groups_pruned += groups;
                }
                None => out.visit.push(seg.clone()),
            }
        }
        out
    }

    fn object_reader(&self, seg: &SegmentInfo) -> ObjectReader {
        let path = ObjectPath::from(seg.path.as_str());
        ObjectReader::new(self.store.clone(), path, seg.byte_size.max(0) as u64)
    }

    /// Forgets the cached metadata of a deleted segment.
    pub fn forget(&self, path: &str) {
        self.caches().remove(path);
    }

    /// The segment's footer (read once) and its `trace_id` leaf column.
    async fn metadata(
        &self,
        seg: &SegmentInfo,
    ) -> Result<(ArrowReaderMetadata, Option<usize>), StorageError> {
        if let Some(c) = self.caches().segments.get(&seg.path) {
            return Ok((c.meta.clone(), c.trace_col));
        }
        let mut reader = self.object_reader(seg);
        // The page index where a segment has one (older segments do not).
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load_async(&mut reader, options).await?;
        let trace_col = leaf_index(&meta, "trace_id").ok();
        let cached = CachedSegment {
            meta: meta.clone(),
            trace_col,
            blooms: vec![None; meta.metadata().num_row_groups()],
        };
        self.caches().insert(&seg.path, cached);
        Ok((meta, trace_col))
    }

    /// The `trace_id` bloom filters of every row group of a segment (those not cached read),
    /// kept in the cache.
    async fn read_blooms(
        &self,
        builder: &mut ParquetRecordBatchStreamBuilder<ObjectReader>,
        seg: &SegmentInfo,
        col: usize,
        meta: &ArrowReaderMetadata,
    ) -> Result<Vec<CachedBloom>, StorageError> {
        let mut out = Vec::new();
        for i in 0..meta.metadata().num_row_groups() {
            let bloom = match self.cached_bloom(&seg.path, i) {
                Some(b) => b,
                None => {
                    let read = builder.get_row_group_column_bloom_filter(i, col).await?;
                    let bloom = read.map(Arc::new);
                    self.caches().keep_bloom(&seg.path, i, bloom.clone());
                    bloom
                }
            };
            out.push(bloom);
        }
        Ok(out)
    }

    /// Caches the footer and bloom filters of a segment just written, read from its bytes in
    /// memory, so that no lookup has to read them back.
    pub fn prime(&self, path: &str, file: &Bytes) {
        let cached = (|| -> Result<CachedSegment, StorageError> {
            let parsed = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .parse_and_finish(file)?;
            let meta = ArrowReaderMetadata::try_new(Arc::new(parsed), ArrowReaderOptions::new())?;
            let trace_col = leaf_index(&meta, "trace_id").ok();
            let groups = meta.metadata().row_groups();
            let blooms = match trace_col {
                Some(col) => (groups.iter())
                    .map(|rg| {
                        Ok(Some(
                            Sbbf::read_from_column_chunk(rg.column(col), file)?.map(Arc::new),
                        ))
                    })
                    .collect::<Result<Vec<_>, StorageError>>()?,
                None => vec![None; groups.len()],
            };
            Ok(CachedSegment {
                meta,
                trace_col,
                blooms,
            })
        })();
        match cached {
            Ok(c) => self.caches().insert(path, c),
            Err(e) => tracing::debug!(%path, error = %e, "a new segment's footer was not cached"),
        }
    }

    /// The cached bloom filter of row group `rg` (`None`: not read yet).
    fn cached_bloom(&self, path: &str, rg: usize) -> Option<CachedBloom> {
        let caches = self.caches();
        caches.segments.get(path)?.blooms.get(rg)?.clone()
    }

    /// Reads the rows of `ids` from a segment, skipping row groups by `trace_id` statistics
    /// and bloom filter.
    pub async fn lookup(
        &self,
        seg: &SegmentInfo,
        ids: &BTreeSet<TraceId>,
    ) -> Result<LookupOutcome, StorageError> {
        let (meta, col) = self.metadata(seg).await?;
        let col = col.ok_or_else(|| ArrowError::SchemaError("segment has no trace_id".into()))?;
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.object_reader(seg),
            meta.clone(),
        );
        let mut keep = Vec::new();
        let mut outcome = LookupOutcome::default();
        // Read at the first one missing: every row group's filter, so that the lookups of
        // other traces pass this segment without a visit.
        let mut read: Option<Vec<CachedBloom>> = None;
        for (i, rg) in meta.metadata().row_groups().iter().enumerate() {
            let known = match &read {
                Some(blooms) => blooms.get(i).cloned(),
                None => self.cached_bloom(&seg.path, i),
            };
            let mut v = verdict(rg, col, ids, known.as_ref());
            if v == Verdict::NeedsBloom {
                let blooms = self.read_blooms(&mut builder, seg, col, &meta).await?;
                v = verdict(rg, col, ids, Some(&blooms.get(i).cloned().flatten()));
                read = Some(blooms);
            }
            if v == Verdict::Read {
                keep.push(i);
            } else {
                outcome.row_groups_pruned += 1;
            }
        }
        outcome.row_groups_read = keep.len();
        if keep.is_empty() {
            return Ok(outcome);
        }
        let selection = pages_of(meta.metadata(), col, &keep, ids);
        let stream = builder
            .with_row_groups(keep)
            .with_row_selection(selection)
            .build()?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        outcome.rows_decoded = batches.iter().map(RecordBatch::num_rows).sum();
        let filtered = batches
            .iter()
            .map(|b| filter_trace_ids(b, ids))
            .collect::<Result<Vec<_>, _>>()?;
        outcome.batches = Some(filtered.into_iter().filter(|b| b.num_rows() > 0).collect());
        Ok(outcome)
    }

    /// The parts a search reads of a segment: runs of consecutive row groups whose
    /// `start_time` range meets `filter`'s, [`PART_ROW_GROUPS`] at most, with their
    /// latest start. A search reads parts newest first and stops early inside a large
    /// segment too (an appended segment's row groups each hold one earlier segment's rows).
    pub async fn parts(
        &self,
        seg: &Arc<SegmentInfo>,
        filter: &ScanFilter,
    ) -> Result<Vec<ScanPart>, StorageError> {
        let (meta, _) = self.metadata(seg).await?;
        let time_col = leaf_index(&meta, "start_time")?;
        let (lo, hi) = filter.start_range;
        let mut parts: Vec<ScanPart> = Vec::new();
        for (i, rg) in meta.metadata().row_groups().iter().enumerate() {
            let latest = match int_range(rg, time_col) {
                Some((min, max)) if max < lo || min > hi => continue,
                Some((_, max)) => max,
                None => seg.max_start_ns,
            };
            match parts.last_mut() {
                Some(p)
                    if p.groups.last().is_some_and(|g| g + 1 == i)
                        && p.groups.len() < PART_ROW_GROUPS =>
                {
                    p.groups.push(i);
                    p.max_start_ns = p.max_start_ns.max(latest);
                }
                _ => parts.push(ScanPart {
                    seg: seg.clone(),
                    groups: vec![i],
                    max_start_ns: latest,
                }),
            }
        }
        Ok(parts)
    }

    /// Reads the rows of a part that pass `filter`, with only `output` columns (all when
    /// `None`).
    pub async fn scan(
        &self,
        part: &ScanPart,
        filter: &ScanFilter,
        output: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        let (meta, _) = self.metadata(&part.seg).await?;
        let descr = meta.metadata().file_metadata().schema_descr_ptr();
        let mut predicates: Vec<Box<dyn ArrowPredicate>> = Vec::new();
        for (columns, predicate) in &filter.stages {
            let predicate = predicate.clone();
            predicates.push(Box::new(ArrowPredicateFn::new(
                roots_mask(&descr, columns),
                move |batch: RecordBatch| predicate(&batch),
            )));
        }
        let row_filter = RowFilter::new(predicates);
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.object_reader(&part.seg),
            meta.clone(),
        )
        .with_row_groups(part.groups.clone())
        .with_row_filter(row_filter);
        if let Some(cols) = output {
            builder = builder.with_projection(roots_mask(&descr, cols));
        }
        Ok(builder.build()?.try_collect().await?)
    }
}

/// The rows of the row groups `keep` (in order) on the `trace_id` pages whose page-index
/// bounds may hold one of `ids`; a row group without a page index is selected whole.
fn pages_of(
    meta: &ParquetMetaData,
    col: usize,
    keep: &[usize],
    ids: &BTreeSet<TraceId>,
) -> RowSelection {
    let mut selectors: Vec<RowSelector> = Vec::new();
    let mut push = |select: bool, rows: usize| match selectors.last_mut() {
        Some(last) if last.skip != select => last.row_count += rows,
        _ if rows > 0 => selectors.push(if select {
            RowSelector::select(rows)
        } else {
            RowSelector::skip(rows)
        }),
        _ => {}
    };
    for &rg in keep {
        let rows = usize::try_from(meta.row_group(rg).num_rows()).unwrap_or(0);
        let pages = meta
            .offset_index()
            .and_then(|o| o.get(rg)?.get(col))
            .map(|o| o.page_locations());
        let bounds = match meta.column_index().and_then(|c| c.get(rg)?.get(col)) {
            Some(ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(b)) => Some(b),
            _ => None,
        };
        let (Some(pages), Some(bounds)) = (pages, bounds) else {
            push(true, rows);
            continue;
        };
        for (p, page) in pages.iter().enumerate() {
            let first = usize::try_from(page.first_row_index).unwrap_or(0);
            let end = pages
                .get(p + 1)
                .map_or(rows, |n| usize::try_from(n.first_row_index).unwrap_or(rows));
            let hit = match (bounds.min_value(p), bounds.max_value(p)) {
                (Some(min), Some(max)) => ids.iter().any(|id| &id[..] >= min && &id[..] <= max),
                _ => true,
            };
            push(hit, end.saturating_sub(first));
        }
    }
    RowSelection::from(selectors)
}

/// The top-level columns named (with every leaf of a nested one).
fn roots_mask(descr: &SchemaDescriptor, names: &[&str]) -> ProjectionMask {
    let roots = descr.root_schema().get_fields().iter().enumerate();
    let picked = roots
        .filter(|(_, f)| names.contains(&f.name()))
        .map(|(i, _)| i);
    ProjectionMask::roots(descr, picked)
}

/// The index of a top-level primitive column among the leaves.
fn leaf_index(meta: &ArrowReaderMetadata, name: &str) -> Result<usize, StorageError> {
    meta.metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [name])
        .ok_or_else(|| ArrowError::SchemaError(format!("segment has no column {name}")).into())
}

fn byte_range(rg: &RowGroupMetaData, col: usize) -> Option<(&[u8], &[u8])> {
    let stats = rg.column(col).statistics()?;
    Some((stats.min_bytes_opt()?, stats.max_bytes_opt()?))
}

fn int_range(rg: &RowGroupMetaData, col: usize) -> Option<(i64, i64)> {
    match rg.column(col).statistics()? {
        Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use meshtrace_model::arrow_conv::spans_to_batch;

    use super::*;
    use crate::layout::encode_segment;
    use crate::tests::gen::mesh_traffic;

    fn file(seed: u64) -> Bytes {
        let batch = spans_to_batch(&mesh_traffic(seed, 100, 0, 1000)).unwrap();
        encode_segment(&[batch], 1024).unwrap().bytes
    }

    #[test]
    fn the_oldest_segments_leave_the_caches_first() {
        let reader = SegmentReader::new(Arc::new(object_store::memory::InMemory::new()));
        (reader.caches().max_segments, reader.caches().max_blooms) = (3, 2);
        for i in 0..3 {
            reader.prime(&format!("s{i}"), &file(i));
        }
        {
            let c = reader.caches();
            assert_eq!((c.segments.len(), c.blooms), (3, 2));
            assert!(c.segments["s0"].blooms.iter().all(Option::is_none));
            assert!(c.segments["s2"].blooms.iter().all(Option::is_some));
        }
        reader.prime("s3", &file(3));
        let c = reader.caches();
        assert!(!c.segments.contains_key("s0"), "the oldest footer left");
        assert_eq!((c.segments.len(), c.blooms), (3, 2));
        assert!(c.segments["s3"].blooms.iter().all(Option::is_some));
        drop(c);
        reader.forget("s3");
        assert_eq!(reader.caches().blooms, 1);
    }
}
