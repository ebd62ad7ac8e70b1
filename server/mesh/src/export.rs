//! Span export from the sidecars to meshtrace: one channel shared by every proxy, drained
//! every ~200 ms into an OTLP gRPC `Export` call. Spans that cannot be sent after a few tries
//! are dropped and counted, never retried forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshtrace_collector::decode::otlp;
use meshtrace_model::Span;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the batch is flushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
const MAX_BATCH: usize = 2000;

/// Counters of the exporter.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub emitted: AtomicU64,
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
}

/// The sending side handed to every proxy.
#[derive(Clone, Debug)]
pub struct SpanSender {
    tx: Option<mpsc::UnboundedSender<Span>>,
    stats: Arc<ExportStats>,
}

impl SpanSender {
    /// A sender that discards every span (no meshtrace to send to).
    pub fn disabled() -> Self {
        SpanSender {
            tx: None,
            stats: Arc::default(),
        }
    }

    pub fn send(&self, span: Span) {
        if let Some(tx) = &self.tx {
            self.stats.emitted.fetch_add(1, Ordering::Relaxed);
            if tx.send(span).is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }
}

/// Starts the exporter towards `endpoint` (`http://host:4317`). The task ends, after a final
/// flush, when every sender is dropped or `stop` is cancelled.
pub fn start(
    endpoint: String,
    stop: CancellationToken,
) -> (SpanSender, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ExportStats::default());
    let task = tokio::spawn(run(endpoint, rx, stats.clone(), stop));
    (
        SpanSender {
            tx: Some(tx),
            stats,
        },
        task,
    )
}

async fn run(
    endpoint: String,
    mut rx: mpsc::UnboundedReceiver<Span>,
    stats: Arc<ExportStats>,
    stop: CancellationToken,
) {
    let mut client = None;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut batch = Vec::new();
    loop {
        let closed = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let mut open = true;
        loop {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while !batch.is_empty() {
            let take = batch.len().min(MAX_BATCH);
            let chunk: Vec<Span> = batch.drain(..take).collect();
            send(&endpoint, &mut client, &chunk, &stats).await;
        }
        if closed || !open {
            return;
        }
    }
}

async fn send(
    endpoint: &str,
    client: &mut Option<TraceServiceClient<tonic::transport::Channel>>,
    spans: &[Span],
    stats: &ExportStats,
) {
    let request = otlp::to_request(spans);
    for attempt in 0..5u32 {
        if client.is_none() {
            match TraceServiceClient::connect(endpoint.to_string()).await {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    tracing::warn!(endpoint, error = %e, "cannot reach meshtrace for spans");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match c.export(request.clone()).await {
            Ok(_) => {
                stats
                    .exported
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "span export failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    stats
        .dropped
        .fetch_add(spans.len() as u64, Ordering::Relaxed);
}
