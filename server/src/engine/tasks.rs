//! The background work of one tenant's store: flushing by size or age, retention, the health
//! `/readyz` reports, and maintenance (compaction and the service graph's rollups).

use std::sync::Arc;
use std::time::Duration;

use meshtrace_collector::wal::Wal;
use meshtrace_storage::{DerivedStore, Store};
use tokio_util::sync::CancellationToken;

use meshtrace_query::Queries;

use crate::health::{Backoff, Health};

/// Flushes by size or age (backing off while flushes fail), applies retention and keeps
/// `health` current until shutdown.
pub async fn background(
    store: Store,
    wal: Option<Wal>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_retention = std::time::Instant::now() - Duration::from_secs(3600);
    let mut retry = Backoff::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        health.set(storage_problem(&store, wal.as_ref()));
        if retry.ready() {
            flush_due(&store, wal.as_ref(), &mut retry).await;
        }
        if last_retention.elapsed() > Duration::from_secs(60) {
            last_retention = std::time::Instant::now();
            match store.apply_retention().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(segments = n, "retention deleted segments"),
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    }
}

/// How long a maintenance pass goes on merging span segment runs (of its 30 s).
const COMPACTION_SHARE: Duration = Duration::from_secs(20);

/// Every 30 s: merges small span and derived segments (see `meshtrace_storage`'s
/// `compact` and `derived`), deletes the files merged away in cluster mode, then keeps the service graph's per-minute rollups of the recent
/// past ready, so that graph and dependencies queries read few rows (see
/// `meshtrace_query::graph_rollup`).
pub async fn maintenance(
    store: Store,
    queries: Queries,
    derived: DerivedStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // One run merged at a time, more while runs are due and the pass is young: a loaded
        // mesh flushes a segment every second or so, more than one run a pass keeps up with.
        let pass = tokio::time::Instant::now();
        loop {
            let compacted = tokio::select! {
                // Cut short, a pass leaves at most files without a catalog row, removed at the
                // next open (in cluster mode by the doomed marks' sweep; see the compaction's
                // design note).
                _ = shutdown.cancelled() => return Ok(()),
                compacted = store.compact_segments() => compacted,
            };
            match compacted {
                Ok(n) if n > 0 && pass.elapsed() < COMPACTION_SHARE => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "could not compact span segments");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            compacted = derived.compact() => {
                if let Err(e) = compacted {
                    tracing::warn!(error = %e, "could not compact derived segments");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            // Cluster mode: the files merged away (by any node) whose grace is over.
            swept = store.sweep_doomed() => {
                if let Err(e) = swept {
                    tracing::warn!(error = %e, "could not delete doomed files");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            warmed = queries.warm_graphs(meshtrace_model::time::now_unix_nanos()) => {
                if let Err(e) = warmed {
                    tracing::debug!(error = %e, "could not roll up the recent service graph");
                }
            }
        }
    }
}

/// One flush if one is due; a failure is logged and spaces out the next attempt.
async fn flush_due(store: &Store, wal: Option<&Wal>, retry: &mut Backoff) {
    match store.flush_if_due().await {
        Ok(Some(checkpoint)) => {
            retry.succeeded();
            if let Some(Err(e)) = wal.map(|w| w.truncate_through(checkpoint)) {
                tracing::warn!(error = %e, "could not truncate the write-ahead log");
            }
        }
        Ok(None) => {}
        // Cluster mode: a partition moved to another node; nothing is wrong here.
        Err(meshtrace_storage::StorageError::Fenced { .. }) => {}
        Err(e) => {
            let retry_in = retry.failed();
            tracing::error!(
                error = %e, failures = retry.failures(), retry_in_s = retry_in.as_secs(),
                "flush failed; the spans stay buffered (and in the write-ahead log or JetStream) and are flushed again"
            );
        }
    }
}

/// What stops the node from storing spans now, for `/readyz`.
fn storage_problem(store: &Store, wal: Option<&Wal>) -> Option<String> {
    if let Some(wal) = wal {
        wal.recheck();
    }
    if let Some(why) = wal.and_then(Wal::unavailable) {
        return Some(why);
    }
    let failing = store.flush_failing()?;
    Some(format!("segment flushes are failing: {failing}"))
}
