//! The server's [`SpanSink`]: every accepted batch is appended to the write-ahead log, and once
//! durable it is added to the store's in-memory buffer, in sequence order.
//!
//! The log completes appends in sequence order, but the tasks that awaited them resume in any
//! order. The store's checkpoint ("every record up to N is in Parquet") is only true if records
//! reach the buffer in sequence order, so a small reorder buffer releases them strictly in order.
//! Each append runs in its own task, so a client that disconnects cannot leave a hole.
//!
//! On that ordered path, each batch also passes the [`Dedup`] window: spans already stored
//! (a client's retry, a request sent twice) are dropped before they reach the buffer, so the
//! copy first in the log is the one kept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use meshtrace_collector::dedup::{retain_flagged, Dedup};
use meshtrace_collector::wal::{Record, Wal};
use meshtrace_collector::{Error, SpanSink};
use meshtrace_model::arrow_conv::spans_to_batch;
use meshtrace_model::{Span, SpanKind};
use meshtrace_provenance::SlimSpan;
use meshtrace_storage::RecordBatch;
use meshtrace_storage::Store;

use crate::provenance::Feed;

/// A durable batch waiting for its turn: what is kept of its spans, their Arrow form and
/// their fingerprints (see [`Dedup`]).
struct Ready {
    kept: Kept,
    batch: RecordBatch,
    fingerprints: Vec<u64>,
}

/// What the pipeline keeps of a durable batch once its Arrow form is built: provenance's slim
/// spans when it is on (the received spans are then freed), else the received spans.
enum Kept {
    Spans(Arc<Vec<Span>>),
    Slim(Arc<Vec<SlimSpan>>),
}

impl Kept {
    /// (service, operation, kind) of every span, for the catalog's names.
    fn names(&self) -> Box<dyn Iterator<Item = (&str, &str, SpanKind)> + '_> {
        match self {
            Kept::Spans(spans) => Box::new(meshtrace_storage::span_names(spans)),
            Kept::Slim(spans) => {
                Box::new(spans.iter().map(|s| (&*s.service_name, &*s.name, s.kind)))
            }
        }
    }

    /// Only the spans whose flag is set.
    fn retain(&self, keep: &[bool]) -> Kept {
        match self {
            Kept::Spans(spans) => Kept::Spans(Arc::new(retain_flagged(spans, keep))),
            Kept::Slim(spans) => Kept::Slim(Arc::new(retain_flagged(spans, keep))),
        }
    }
}

impl Ready {
    /// Drops the spans the window has seen already; `None` when every span was a copy.
    fn deduplicated(self, dedup: &Mutex<Dedup>) -> Option<Ready> {
        let Some(keep) = lock(dedup).admit(&self.fingerprints) else {
            return Some(self);
        };
        if !keep.iter().any(|k| *k) {
            return None;
        }
        let mask = arrow::array::BooleanArray::from(keep.clone());
        match arrow::compute::filter_record_batch(&self.batch, &mask) {
            Ok(batch) => Some(Ready {
                kept: self.kept.retain(&keep),
                batch,
                fingerprints: Vec::new(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "could not drop duplicate spans; the batch is kept whole");
                Some(self)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Reorder {
    next: u64,
    waiting: BTreeMap<u64, Ready>,
}

/// Write-ahead log first, then the queryable buffer.
#[derive(Clone)]
pub struct Pipeline {
    wal: Wal,
    store: Store,
    reorder: Arc<Mutex<Reorder>>,
    dedup: Arc<Mutex<Dedup>>,
    provenance: Option<Feed>,
    /// Rows the store may hold before ingest is refused (see [`Pipeline::room`]).
    max_buffered_rows: usize,
}

impl Pipeline {
    /// `next_seq` is the sequence number the log will assign to its next record; `dedup` the
    /// window replay at start-up filled.
    pub fn new(wal: Wal, store: Store, next_seq: u64, dedup: Arc<Mutex<Dedup>>) -> Self {
        Pipeline {
            wal,
            store,
            reorder: Arc::new(Mutex::new(Reorder {
                next: next_seq,
                waiting: BTreeMap::new(),
            })),
            dedup,
            provenance: None,
            max_buffered_rows: usize::MAX,
        }
    }

    /// Refuses ingest while the store holds `rows` rows or more.
    pub fn with_max_buffered_rows(mut self, rows: usize) -> Self {
        self.max_buffered_rows = rows;
        self
    }

    /// Whether the buffer may take more: past its bound, spans are refused (nothing is
    /// logged) as unavailable while flushes fail, as overloaded while they only lag.
    fn room(&self) -> Result<(), Error> {
        let rows = self.store.buffered_rows();
        if rows < self.max_buffered_rows {
            return Ok(());
        }
        Err(match self.store.flush_failing() {
            Some(why) => Error::Unavailable {
                reason: format!("{rows} span rows wait for segment flushes that fail ({why})"),
                retry_after: std::time::Duration::from_secs(5),
            },
            None => Error::Overloaded {
                retry_after: std::time::Duration::from_secs(1),
            },
        })
    }

    /// Also hands every buffered batch to provenance (in sequence order, never waiting).
    pub fn with_provenance(mut self, feed: Feed) -> Self {
        self.provenance = Some(feed);
        self
    }

    fn deliver(&self, seq: u64, ready: Ready) {
        let mut r = lock(&self.reorder);
        r.waiting.insert(seq, ready);
        while let Some(ready) = {
            let next = r.next;
            r.waiting.remove(&next)
        } {
            let next = r.next;
            r.next += 1;
            // Every span a copy: the record still moves the checkpoint when a later one flushes.
            let Some(Ready { kept, batch, .. }) = ready.deduplicated(&self.dedup) else {
                self.store.note_empty(next);
                continue;
            };
            match self.store.append_converted(next, kept.names(), batch) {
                Ok(()) => {
                    if let (Some(feed), Kept::Slim(spans)) = (&self.provenance, &kept) {
                        feed.offer(spans);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, seq = next, "could not buffer spans; they stay in the write-ahead log")
                }
            }
        }
    }
}

impl Pipeline {
    /// What is kept of a durable batch once its Arrow form is built (see [`Kept`]).
    fn kept(&self, spans: Arc<Vec<Span>>) -> Kept {
        match &self.provenance {
            Some(feed) => Kept::Slim(Arc::new(match Arc::try_unwrap(spans) {
                Ok(owned) => feed.slim_owned(owned),
                Err(shared) => feed.slim(&shared),
            })),
            None => Kept::Spans(spans),
        }
    }

    /// Lets the sequence move past a record that could not be buffered (it stays in the log).
    fn skip(&self, seq: u64) {
        let empty = spans_to_batch(&[]);
        if let Ok(batch) = empty {
            let kept = Kept::Spans(Arc::new(Vec::new()));
            let fingerprints = Vec::new();
            self.deliver(
                seq,
                Ready {
                    kept,
                    batch,
                    fingerprints,
                },
            );
        }
    }
}

impl SpanSink for Pipeline {
    fn accept(&self, spans: Vec<Span>) -> BoxFuture<'static, Result<(), Error>> {
        if let Err(e) = self.room() {
            return Box::pin(async move { Err(e) });
        }
        match Record::spans(&spans) {
            Ok(record) => self.log_and_buffer(spans, record),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn accept_otlp(
        &self,
        spans: Vec<Span>,
        request: Bytes,
    ) -> BoxFuture<'static, Result<(), Error>> {
        if let Err(e) = self.room() {
            return Box::pin(async move { Err(e) });
        }
        match Record::otlp(request, spans.len()) {
            Ok(record) => self.log_and_buffer(spans, record),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

impl Pipeline {
    /// Appends `record` (which holds `spans`, encoded one way or another) to the log and, once
    /// durable, hands the spans to the buffer in sequence order.
    fn log_and_buffer(
        &self,
        spans: Vec<Span>,
        record: Record,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.clone();
        let spans = Arc::new(spans);
        let task = tokio::spawn(async move {
            // Build the Arrow batch while the log writes and syncs, off the ordered path.
            let for_arrow = spans.clone();
            let fingerprinter = {
                let dedup = lock(&this.dedup);
                dedup.enabled().then(|| dedup.fingerprinter())
            };
            let convert = tokio::task::spawn_blocking(move || {
                let fingerprints = fingerprinter.map(|f| f.of(&for_arrow));
                spans_to_batch(&for_arrow).map(|batch| (batch, fingerprints.unwrap_or_default()))
            });
            let seq = this.wal.append_record(record).await?;
            let converted = match convert.await {
                Ok(converted) => converted,
                Err(e) => {
                    // The record is durable; it must still take its turn or later ones stall.
                    this.skip(seq);
                    return Err(Error::Wal(format!("conversion task failed: {e}")));
                }
            };
            let converted = converted
                .map_err(|e| Error::Wal(format!("arrow conversion failed: {e}")))
                .map(|(batch, fingerprints)| Ready {
                    kept: this.kept(spans),
                    batch,
                    fingerprints,
                });
            match converted {
                Ok(ready) => this.deliver(seq, ready),
                Err(e) => {
                    // The record is durable; it must still take its turn or later ones stall.
                    tracing::error!(error = %e, seq, "could not convert a durable batch");
                    this.skip(seq);
                }
            }
            Ok(())
        });
        Box::pin(async move {
            task.await
                .map_err(|e| Error::Wal(format!("append task failed: {e}")))?
        })
    }
}
