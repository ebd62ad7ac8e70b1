//! The server's [`SpanSink`]: every accepted batch is appended to the write-ahead log, and once
//! durable it is added to the store's in-memory buffer, in sequence order.
//!
//! The log completes appends in sequence order, but the tasks that awaited them resume in any
//! order. The store's checkpoint ("every record up to N is in Parquet") is only true if records
//! reach the buffer in sequence order, so a small reorder buffer releases them strictly in order.
//! Each append runs in its own task, so a client that disconnects cannot leave a hole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use meshtrace_collector::wal::{Record, Wal};
use meshtrace_collector::{Error, SpanSink};
use meshtrace_model::arrow_conv::spans_to_batch;
use meshtrace_model::{Span, SpanKind};
use meshtrace_provenance::SlimSpan;
use meshtrace_storage::RecordBatch;
use meshtrace_storage::Store;

use crate::provenance::Feed;

/// A durable batch waiting for its turn: what is kept of its spans and their Arrow form.
type Ready = (Kept, RecordBatch);

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
    provenance: Option<Feed>,
}

impl Pipeline {
    /// `next_seq` is the sequence number the log will assign to its next record.
    pub fn new(wal: Wal, store: Store, next_seq: u64) -> Self {
        Pipeline {
            wal,
            store,
            reorder: Arc::new(Mutex::new(Reorder {
                next: next_seq,
                waiting: BTreeMap::new(),
            })),
            provenance: None,
        }
    }

    /// Also hands every buffered batch to provenance (in sequence order, never waiting).
    pub fn with_provenance(mut self, feed: Feed) -> Self {
        self.provenance = Some(feed);
        self
    }

    fn deliver(&self, seq: u64, ready: Ready) {
        let mut r = self.reorder.lock().unwrap_or_else(|e| e.into_inner());
        r.waiting.insert(seq, ready);
        while let Some((kept, batch)) = {
            let next = r.next;
            r.waiting.remove(&next)
        } {
            let next = r.next;
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
            r.next += 1;
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
            self.deliver(seq, (Kept::Spans(Arc::new(Vec::new())), batch));
        }
    }
}

impl SpanSink for Pipeline {
    fn accept(&self, spans: Vec<Span>) -> BoxFuture<'static, Result<(), Error>> {
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
            let convert = tokio::task::spawn_blocking(move || spans_to_batch(&for_arrow));
            let seq = this.wal.append_record(record).await?;
            let converted = convert
                .await
                .map_err(|e| Error::Wal(format!("conversion task failed: {e}")))?
                .map_err(|e| Error::Wal(format!("arrow conversion failed: {e}")))
                .map(|batch| (this.kept(spans), batch));
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
