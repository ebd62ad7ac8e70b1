//! The server's [`SpanSink`]: every accepted batch is appended to the write-ahead log, and once
//! durable it is added to the store's in-memory buffer, in sequence order.
//!
//! The log completes appends in sequence order, but the tasks that awaited them resume in any
//! order. The store's checkpoint ("every record up to N is in Parquet") is only true if records
//! reach the buffer in sequence order, so a small reorder buffer releases them strictly in order.
//! Each append runs in its own task, so a client that disconnects cannot leave a hole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use meshtrace_collector::wal::Wal;
use meshtrace_collector::{Error, SpanSink};
use meshtrace_model::Span;
use meshtrace_storage::Store;

struct Reorder {
    next: u64,
    waiting: BTreeMap<u64, Arc<Vec<Span>>>,
}

/// Write-ahead log first, then the queryable buffer.
#[derive(Clone)]
pub struct Pipeline {
    wal: Wal,
    store: Store,
    reorder: Arc<Mutex<Reorder>>,
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
        }
    }

    fn deliver(&self, seq: u64, spans: Arc<Vec<Span>>) {
        let mut r = self.reorder.lock().unwrap_or_else(|e| e.into_inner());
        r.waiting.insert(seq, spans);
        while let Some(spans) = {
            let next = r.next;
            r.waiting.remove(&next)
        } {
            let next = r.next;
            if let Err(e) = self.store.append(next, &spans) {
                tracing::error!(error = %e, seq = next, "could not buffer spans; they stay in the write-ahead log");
            }
            r.next += 1;
        }
    }
}

impl SpanSink for Pipeline {
    fn accept(&self, spans: Vec<Span>) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.clone();
        let spans = Arc::new(spans);
        let task = tokio::spawn(async move {
            let seq = this.wal.append(spans.clone()).await?;
            this.deliver(seq, spans);
            Ok(())
        });
        Box::pin(async move {
            task.await
                .map_err(|e| Error::Wal(format!("append task failed: {e}")))?
        })
    }
}
