//! Opening one tenant's store: the catalog and checkpoint, the write-ahead log and its replay,
//! the start-up checks of segment files, and provenance started on the store (or, in cluster
//! mode, the connections to NATS, the object store and PostgreSQL instead of a local log).
//!
//! Start-up order matters for durability: open the store (catalog and checkpoint), open the
//! write-ahead log, re-buffer every logged record past the checkpoint, and only then listen.
//! Closing reverses it: drain the log, flush the buffer to Parquet, and truncate the log
//! through the new checkpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use meshtrace_collector::dedup::{retain_flagged, Dedup};
use meshtrace_collector::wal::{FsyncPolicy, Wal, WalConfig};
use meshtrace_collector::SpanSink;
use meshtrace_model::memory::MemoryBudget;
use meshtrace_model::Span;
use meshtrace_storage::{Store, StoreConfig};

use crate::cluster;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::priorities::{self, Recorder};
use crate::provenance::{Provenance, TraceObserver};

/// The store and the log, opened and recovered, before any listener.
pub struct Opened {
    pub store: Store,
    /// The write-ahead log; `None` in cluster mode, where JetStream takes its place.
    pub wal: Option<Wal>,
    /// Cluster mode: the checked connections to NATS and the object store.
    pub cluster: Option<cluster::Connected>,
    pub provenance: Provenance,
    /// Where provenance records completed traces for the budgets engine.
    pub recorder: Recorder,
    next_seq: u64,
    provenance_enabled: bool,
    /// The window of recent span fingerprints, filled by replay (see [`Dedup`]).
    pub dedup: Arc<Mutex<Dedup>>,
    max_buffered_rows: usize,
}

impl Opened {
    /// The sink that writes to this log and store (not in cluster mode: see [`Opened::sink`]).
    pub fn pipeline(&self) -> anyhow::Result<Pipeline> {
        let Some(wal) = &self.wal else {
            anyhow::bail!(
                "a cluster node has no local write-ahead log; send spans to its receivers"
            );
        };
        let (store, dedup) = (self.store.clone(), self.dedup.clone());
        let pipeline = Pipeline::new(wal.clone(), store, self.next_seq, dedup)
            .with_max_buffered_rows(self.max_buffered_rows);
        Ok(match self.provenance_enabled {
            true => pipeline.with_provenance(self.provenance.feed()),
            false => pipeline,
        })
    }

    /// Where receivers hand spans: the log and store, or in cluster mode the span stream.
    pub fn sink(&self) -> anyhow::Result<Arc<dyn SpanSink>> {
        Ok(match &self.cluster {
            Some(c) => Arc::new(c.sink()),
            None => Arc::new(self.pipeline()?),
        })
    }

    /// Drains the log, flushes the buffer to Parquet and truncates the log.
    pub async fn close(&self) -> anyhow::Result<()> {
        if let Some(wal) = &self.wal {
            // A log that failed keeps what it acknowledged on disk; flush what is buffered.
            if let Err(e) = wal.shutdown().await {
                tracing::warn!(error = %e, "the write-ahead log did not close cleanly");
            }
        }
        // Appends completed by the drain are delivered by their tasks; give them a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Completes the open traces and writes their derived rows before the final flush.
        self.provenance.close().await;
        if let Some(cluster) = &self.cluster {
            // Those traces count in the cluster's budgets too.
            cluster.publish_last_budget_steps().await;
        }
        let flushed = self.store.flush().await.context("final flush");
        if let Ok(Some(checkpoint)) = &flushed {
            if let Some(wal) = &self.wal {
                wal.truncate_through(*checkpoint)?;
            }
        }
        // Closing the pool lets SQLite fold its own write-ahead file into catalog.db, so the
        // file alone is the whole catalog once the process is gone (an operator's backup copy).
        self.store.close().await;
        flushed.map(|_| ())
    }
}

/// The store's settings from the server's.
fn store_config(config: &Config, memory: &MemoryBudget) -> StoreConfig {
    StoreConfig {
        data_dir: config.data_dir.clone(),
        catalog_url: config.catalog_url.clone(),
        catalog_schema: config.catalog_schema.clone(),
        flush_max_rows: config.storage.flush_rows,
        flush_max_age: config.storage.flush_age,
        retention: config.storage.retention,
        row_group_rows: config.storage.row_group_rows,
        sql: config.query.sql_limits(),
        names: meshtrace_storage::NameLimits {
            max_services: config.storage.max_services,
            max_operations_per_service: config.storage.max_operations_per_service,
        },
        compact_rows: config.storage.compact_rows,
        // Longer than any query may read the merged files.
        compact_grace: (StoreConfig::default().compact_grace).max(config.query.sql_timeout * 2),
        cluster_node: None,
        memory: memory.clone(),
    }
}

/// Starts provenance on the store. Completed traces go to `observer`: the budgets' recorder,
/// or in cluster mode the forwarder (which shares them with every node's recorder).
async fn start_provenance(
    config: &Config,
    store: &Store,
    observer: Arc<dyn TraceObserver>,
) -> anyhow::Result<Provenance> {
    let provenance = Provenance::start(
        store,
        &config.provenance,
        config.storage.retention,
        config.storage.row_group_rows,
        Some(observer),
    )
    .await?;
    Ok(provenance)
}

/// Cluster mode: checks NATS and the object store, opens the store on them and the
/// PostgreSQL catalog. Nothing is replayed: the partitions' consumers do that once claimed.
async fn open_cluster(config: &Config, memory: &MemoryBudget) -> anyhow::Result<Opened> {
    // Nothing is stored here, but a tenant's folder tells the next start to open it again.
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let connected = cluster::connect(config).await?;
    let mut store_cfg = store_config(config, memory);
    store_cfg.cluster_node = Some(connected.node.clone());
    let catalog = config
        .catalog_url
        .as_deref()
        .map(mask_password)
        .unwrap_or_default();
    let store = Store::open_with_object_store(store_cfg, connected.object_store.clone())
        .await
        .with_context(|| format!("cannot reach the catalog at {catalog}"))?;
    let forward: Arc<dyn TraceObserver> = connected.forwarder.clone();
    let provenance = start_provenance(config, &store, forward).await?;
    let recorder = connected.forwarder.recorder().clone();
    Ok(Opened {
        store,
        wal: None,
        cluster: Some(connected),
        provenance,
        recorder,
        next_seq: 0,
        provenance_enabled: config.provenance.enabled,
        // JetStream's duplicate window does this in cluster mode.
        dedup: Arc::new(Mutex::new(Dedup::new(0))),
        max_buffered_rows: config.storage.max_buffered_rows,
    })
}

/// `url` with its password, if any, replaced by `***`, for messages.
fn mask_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Opens the store and the log and re-buffers what the log holds past the checkpoint (or, in
/// cluster mode, connects to the cluster's dependencies).
pub async fn open(config: &Config, memory: &MemoryBudget) -> anyhow::Result<Opened> {
    if config.cluster.name.is_some() {
        return open_cluster(config, memory).await;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = Store::open(store_config(config, memory))
        .await
        .context("opening the store")?;
    let checkpoint = store.checkpoint().await?;
    let recorder = Recorder::new(priorities::window_config(&config.budgets));
    let provenance = start_provenance(config, &store, Arc::new(recorder.clone())).await?;
    let mut wal_config = WalConfig::new(config.data_dir.join("wal"));
    wal_config.queue_depth = config.wal.queue_depth;
    wal_config.segment_bytes = config.wal.segment_bytes;
    wal_config.fsync = if config.wal.fsync {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Never
    };
    let (wal, replayed) =
        Wal::open_at(wal_config, checkpoint).context("opening the write-ahead log")?;
    wal.advance_past(checkpoint);
    // Segment files missing or unreadable: rebuilt from the log when it holds them.
    let log_holds: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
    store.check_segments(&log_holds).await?;
    // Segment files without a catalog row: deleted when intact committed segments or the log
    // hold their spans, else quarantined (after the check, so damaged segments do not count).
    let log_first = replayed.first().map_or(wal.last_seq() + 1, |r| r.seq);
    store.settle_orphans(log_first).await?;
    let mut dedup = Dedup::new(config.storage.dedup_window_spans);
    let (mut spans, records) = (0, replayed.len());
    for record in replayed {
        let stored = record.seq <= checkpoint && !store.rebuilding(record.seq);
        let Some(kept) = replay_one(&mut dedup, stored, record.spans) else {
            continue;
        };
        store.append(record.seq, &kept)?;
        spans += kept.len();
        if config.provenance.enabled {
            provenance.replay(kept).await;
        }
    }
    tracing::info!(
        checkpoint,
        records,
        spans,
        duplicates = dedup.duplicates,
        "recovered from the write-ahead log"
    );
    if config.provenance.enabled {
        // In the background: the server takes traffic meanwhile.
        let (p, settings) = (provenance.clone(), config.provenance.clone());
        tokio::spawn(async move {
            match p.repair(&settings).await {
                Ok(0) => {}
                Ok(traces) => {
                    tracing::info!(traces, "re-deriving stored traces without derived rows")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for traces without derived rows")
                }
            }
        });
    }
    let next_seq = wal.last_seq().max(checkpoint) + 1;
    Ok(Opened {
        store,
        wal: Some(wal),
        cluster: None,
        provenance,
        recorder,
        next_seq,
        provenance_enabled: config.provenance.enabled,
        dedup: Arc::new(Mutex::new(dedup)),
        max_buffered_rows: config.storage.max_buffered_rows,
    })
}

/// One replayed record through the dedup window: records already `stored` in Parquet only
/// fill it; the others come back without the spans it has seen.
fn replay_one(dedup: &mut Dedup, stored: bool, spans: Vec<Span>) -> Option<Vec<Span>> {
    if !dedup.enabled() {
        return (!stored).then_some(spans);
    }
    let fingerprints = dedup.fingerprinter().of(&spans);
    if stored {
        dedup.remember(&fingerprints);
        return None;
    }
    match dedup.admit(&fingerprints) {
        None => Some(spans),
        Some(keep) => Some(retain_flagged(&spans, &keep)),
    }
}
