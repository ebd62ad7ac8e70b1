//! The write-ahead log: what makes an acknowledged span survive `kill -9` and power loss.
//!
//! Receivers append each validated batch of spans with [`Wal::append`] and acknowledge the
//! client only once it resolves. Spans then go on to the Arrow buffer and Parquet; once a
//! Parquet segment covering them is committed to the catalog, [`Wal::truncate_through`] lets the
//! log drop the files that only hold spans already stored there.
//!
//! # File layout
//!
//! The log is a directory of segment files named `wal-<first seq, 20 digits>.log`, for example
//! `wal-00000000000000000001.log`. The name is the sequence number of the segment's first
//! record, so sorting names sorts segments, and a segment holds exactly the records from its
//! name up to (not including) the next segment's name. Only the newest segment (the *active*
//! one) is ever written to; older ones are *sealed* and immutable. The writer rolls to a new
//! segment before writing a group once the active one has reached
//! [`WalConfig::segment_bytes`] (so a segment exceeds it by at most one group, ≤ 8 MiB plus one
//! record). Other files in the directory are ignored with a warning.
//!
//! # Record format
//!
//! ```text
//! +----------------+----------------+-------------+---------------------------+
//! | len_and_kind   | crc32(payload) | seq         | payload                   |
//! | u32 LE         | u32 LE         | u64 LE      | spans or OTLP request     |
//! +----------------+----------------+-------------+---------------------------+
//! ```
//!
//! The low 31 bits of `len_and_kind` are the payload's length (at most 256 MiB); its top bit
//! says what the payload holds. Clear: a postcard-encoded `Vec<Span>`. Set: the OTLP protobuf
//! `ExportTraceServiceRequest` the batch was decoded from, logged as received when every span
//! in it was accepted unchanged (none rejected, nothing truncated), so that replay decodes
//! exactly the acknowledged spans. Logging the request's own bytes saves encoding each batch a
//! second time on the ingest path (postcard took 4.4 % of an ingest profile). Records written
//! before this bit existed read as postcard, as they were written; the reverse does not hold:
//! a meshtrace from before it would take the bit for an oversized length and treat the record
//! as damage, so drain the log (let it flush) before going back to such a version.
//!
//! The checksum is CRC-32 (IEEE, via `crc32fast`) of the payload. Sequence numbers start at 1,
//! increase strictly across records, segments and restarts, and are consecutive within one
//! run of the writer. A record is one append: one receiver batch.
//!
//! # Group commit and the fsync policy
//!
//! A [`Record`] is encoded (postcard or the request's bytes, and CRC) on the calling task,
//! so serialization is spread over the runtime's threads; `append` puts it on a bounded queue
//! ([`WalConfig::queue_depth`]) with `try_send`: a full queue fails at once with
//! [`Error::Overloaded`] carrying [`WalConfig::retry_after`], which receivers turn into HTTP 429
//! / gRPC `RESOURCE_EXHAUSTED`. A dedicated writer thread takes everything queued (up to
//! 8 MiB), assigns consecutive sequence numbers, writes the group with one `write_all` and,
//! under [`FsyncPolicy::Always`] (the default), one `fdatasync`, and only then completes each
//! waiter with its sequence number. While one group is being synced, the next one queues up,
//! so the cost of a sync is shared by every append that arrives during it: throughput is
//! bounded by bandwidth, not by sync latency. Creating a segment also syncs the sealed
//! segment and the directory (so the new file's name is durable).
//!
//! [`FsyncPolicy::Never`] skips the per-group sync: data reaches the page cache only, which
//! survives `kill -9` of the process but **not** a power loss or kernel crash. It exists for
//! tests and benchmarks and must not be used where durability matters.
//!
//! # Guarantees
//!
//! Under `Always`, an `Ok(seq)` from `append` means the record is on stable storage: after
//! `kill -9` (or power loss) the next [`Wal::open`] returns it. An error means the record may
//! or may not be there; the client retries, and duplicates are possible (at-least-once).
//! If a write fails (a full disk), the group is cut off again and refused as unavailable, and
//! the log writes the next group as if nothing happened ([`Wal::unavailable`] says why until
//! then). If a sync fails, the log is *poisoned*: the state of the page cache is unknown after
//! a failed `fdatasync`, so every later append fails and the process should restart and
//! recover from disk. Segments are preallocated, so a full disk shows at a roll.
//!
//! # Recovery
//!
//! [`Wal::open`] reads every segment in order and checks each record's length, checksum,
//! sequence order and encoding. Damage is a **torn tail** only when nothing valid follows it in
//! the last segment (a group that was being written when the process died, hence never
//! acknowledged): the segment is truncated at the last good record, with a warning. Any other
//! damage (a bad disk, a stray write) never throws valid records away to get past it: the scan
//! finds the next valid record by its header and checksum, the segment is copied into
//! `damaged/` as evidence and rewritten with its valid records only, and every record lost is
//! reported ([`Loss`], [`Wal::recovery_losses`], `WalStats::records_lost`): an ERROR naming
//! the file, offset and sequence numbers when the records are above the caller's checkpoint
//! ([`Wal::open_at`]), a warning when they are already stored in Parquet. The same holds for
//! a damaged end of a sealed segment: the records up to the next segment's first are lost.
//! With a checkpoint, sequence numbers above it that no segment holds (a segment file deleted,
//! a catalog older than the log's truncation) are reported as lost too.
//! New records continue after the last replayed sequence number.
//!
//! # Truncation and Parquet checkpoints
//!
//! Replay returns every record still on disk, including ones already stored in Parquet: the
//! caller skips records whose `seq` is at or below its checkpoint (the highest sequence number
//! whose spans are committed in the catalog) and re-buffers the rest. After committing a
//! Parquet segment the caller calls `truncate_through(checkpoint)`, which deletes sealed
//! segments whose records all have `seq <= checkpoint`; the active segment is never deleted.
//! If the log directory is lost while the catalog survives, call [`Wal::advance_past`] with the
//! checkpoint right after `open`, so new records never reuse sequence numbers below it.
//!
//! # Replacing the log
//!
//! The interface is deliberately small — append a batch and get back a monotonically
//! increasing position once durable, replay from the start, discard through a position — so
//! the same role can later be played by NATS JetStream (a stream with file storage and
//! replicas: `append` becomes a publish awaiting its ack, whose stream sequence is the `seq`;
//! replay becomes a consumer starting at checkpoint + 1; `truncate_through` becomes a purge up
//! to a sequence). No trait is defined for that yet; the seam is this type's public API.

pub(crate) mod format;
mod recover;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use meshtrace_model::Span;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::Error;
use recover::{segment_path, SegMeta};
pub use recover::{Loss, DAMAGED_DIR};
use writer::{Msg, Writer};

/// When the writer syncs written records to stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// `fdatasync` every group commit before acknowledging it (the default).
    #[default]
    Always,
    /// Never sync per group. **Unsafe for durability**: acknowledged records survive a process
    /// kill but not a power loss or kernel crash. For tests and benchmarks only.
    Never,
}

/// Configuration of the write-ahead log.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory of the segment files (created if missing).
    pub dir: PathBuf,
    /// Roll to a new segment file once the active one has reached this size.
    pub segment_bytes: u64,
    /// When to sync; see [`FsyncPolicy`].
    pub fsync: FsyncPolicy,
    /// Maximum number of appends waiting for the writer; more fail with `Overloaded`.
    pub queue_depth: usize,
    /// Retry delay reported to clients when the queue is full.
    pub retry_after: Duration,
}

impl WalConfig {
    /// The default configuration for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            ..WalConfig::default()
        }
    }
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig {
            dir: PathBuf::from("wal"),
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Always,
            queue_depth: 1024,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A batch encoded as a log record, ready for [`Wal::append_record`]; see the record format in
/// the module documentation.
#[derive(Debug)]
pub struct Record {
    frame: format::Frame,
    spans: usize,
}

impl Record {
    /// A record holding `spans` themselves.
    pub fn spans(spans: &[Span]) -> Result<Record, Error> {
        Ok(Record {
            frame: format::encode_record(spans)?,
            spans: spans.len(),
        })
    }

    /// A record holding the OTLP protobuf request that decoded, under the receivers' limits,
    /// to `spans` spans with none rejected and nothing truncated. Replay decodes it again.
    pub fn otlp(request: Bytes, spans: usize) -> Result<Record, Error> {
        Ok(Record {
            frame: format::encode_otlp_record(request)?,
            spans,
        })
    }
}

/// One record read back at open: a batch of spans and its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub seq: u64,
    pub spans: Vec<Span>,
}

/// A snapshot of the log's counters (totals since open, except the gauges noted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Record bytes written (headers included).
    pub bytes_written: u64,
    /// Records (appends) written.
    pub records: u64,
    /// Spans in the records written.
    pub spans: u64,
    /// Groups written, each with one write call.
    pub group_commits: u64,
    /// `fdatasync`/`fsync` calls, including segment rolls and directory syncs.
    pub fsyncs: u64,
    /// Segment files created since open.
    pub segments_created: u64,
    /// Segment files deleted by truncation since open.
    pub segments_deleted: u64,
    /// Appends refused because the queue was full.
    pub overloaded: u64,
    /// Gauge: bytes in segment files.
    pub bytes_on_disk: u64,
    /// Gauge: number of segment files.
    pub segments: u64,
    /// Gauge: sequence number of the last record written (0 if none).
    pub last_seq: u64,
    /// Records found damaged at open and not stored elsewhere (above the checkpoint).
    pub records_lost: u64,
    /// Records found damaged at open that were already stored (at or below the checkpoint).
    pub records_skipped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    bytes_written: AtomicU64,
    records: AtomicU64,
    spans: AtomicU64,
    group_commits: AtomicU64,
    fsyncs: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
    overloaded: AtomicU64,
}

/// State shared by the handles and the writer thread.
struct Shared {
    dir: PathBuf,
    /// Next sequence number to assign (the writer reserves groups with `fetch_add`).
    next_seq: AtomicU64,
    /// Last sequence number written (and synced, under `Always`).
    last_seq: AtomicU64,
    bytes_on_disk: AtomicU64,
    /// All segments, oldest first; the last is the active one.
    segments: Mutex<VecDeque<SegMeta>>,
    /// Set once a sync fails; every later append fails with this reason.
    poison: OnceLock<String>,
    /// Why the last group could not be written (a full disk), until one is written again.
    failing: Mutex<Option<String>>,
    /// Free space that lets a segment be rolled (see [`Wal::recheck`]).
    segment_bytes: u64,
    /// Becomes true when the writer thread has exited.
    stopped: watch::Sender<bool>,
    /// What recovery at open could not read back.
    losses: Vec<Loss>,
    counters: Counters,
}

impl Shared {
    fn lock_segments(&self) -> MutexGuard<'_, VecDeque<SegMeta>> {
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_failing(&self, reason: Option<String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing.is_some() && reason.is_none() {
            info!("the write-ahead log writes again");
        }
        *failing = reason;
    }

    fn poisoned(&self) -> Option<Error> {
        self.poison
            .get()
            .map(|r| Error::Wal(format!("log is unusable after an error: {r}")))
    }
}

/// A handle to the write-ahead log. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    retry_after: Duration,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens the log in `cfg.dir`, recovers it, starts the writer thread and returns every
    /// valid record in sequence order (see the module docs for the recovery rules).
    pub fn open(cfg: WalConfig) -> Result<(Wal, Vec<Replayed>), Error> {
        Wal::open_inner(cfg, None, None)
    }

    /// [`Wal::open`] for a caller whose records up to `checkpoint` are stored elsewhere:
    /// damaged records at or below it are reported as skipped, not lost, and sequence numbers
    /// above it that no segment holds (a deleted segment file, a checkpoint older than the
    /// log's truncation) are reported as lost.
    pub fn open_at(cfg: WalConfig, checkpoint: u64) -> Result<(Wal, Vec<Replayed>), Error> {
        Wal::open_inner(cfg, None, Some(checkpoint))
    }

    fn open_inner(
        cfg: WalConfig,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        checkpoint: Option<u64>,
    ) -> Result<(Wal, Vec<Replayed>), Error> {
        let rec = recover::recover(&cfg.dir, checkpoint)?;
        let on_disk: u64 = rec.segments.iter().map(|s| s.bytes).sum();
        let active_len = rec.segments.back().map_or(0, |s| s.bytes);
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            next_seq: AtomicU64::new(rec.next_seq),
            last_seq: AtomicU64::new(rec.next_seq - 1),
            bytes_on_disk: AtomicU64::new(on_disk),
            segments: Mutex::new(rec.segments),
            poison: OnceLock::new(),
            failing: Mutex::new(None),
            segment_bytes: cfg.segment_bytes,
            stopped: watch::Sender::new(false),
            losses: rec.losses,
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
        let writer = Writer::new(rx, shared.clone(), rec.active, active_len, &cfg, gate);
        std::thread::Builder::new()
            .name("meshtrace-wal".into())
            .spawn(move || writer.run())?;
        let wal = Wal {
            tx,
            shared,
            retry_after: cfg.retry_after,
        };
        Ok((wal, rec.records))
    }

    /// Appends a batch as one record and returns its sequence number once it is written and,
    /// under [`FsyncPolicy::Always`], synced. Fails at once with [`Error::Overloaded`] if the
    /// queue is full, and with [`Error::Wal`] if the log is shut down or poisoned.
    pub async fn append(&self, spans: Arc<Vec<Span>>) -> Result<u64, Error> {
        if let Some(e) = self.shared.poisoned() {
            return Err(e);
        }
        self.append_record(Record::spans(&spans)?).await
    }

    /// Appends an encoded record, as [`Wal::append`] does.
    pub async fn append_record(&self, record: Record) -> Result<u64, Error> {
        if let Some(e) = self.shared.poisoned() {
            return Err(e);
        }
        let (done, rx) = oneshot::channel();
        let msg = Msg::Append {
            frame: record.frame,
            spans: record.spans,
            done,
        };
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.shared.counters.overloaded.fetch_add(1, Relaxed);
                Error::Overloaded {
                    retry_after: self.retry_after,
                }
            }
            mpsc::error::TrySendError::Closed(_) => Error::Wal("log is shut down".into()),
        })?;
        rx.await
            .map_err(|_| Error::Wal("writer stopped before the record was written".into()))?
    }

    /// Deletes the sealed segments whose records all have `seq <= seq`: their spans are durable
    /// elsewhere. The active segment is never deleted. May be called from any thread.
    pub fn truncate_through(&self, seq: u64) -> Result<(), Error> {
        let mut segments = self.shared.lock_segments();
        while segments.len() >= 2 && segments[1].first_seq <= seq.saturating_add(1) {
            let seg = segments[0];
            let path = segment_path(&self.shared.dir, seg.first_seq);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            segments.pop_front();
            self.shared.bytes_on_disk.fetch_sub(seg.bytes, Relaxed);
            self.shared.counters.segments_deleted.fetch_add(1, Relaxed);
            info!(segment = %path.display(), through_seq = seq, "wal segment deleted");
        }
        Ok(())
    }

    /// Makes every future record's sequence number greater than `seq`. Use right after `open`
    /// when the Parquet checkpoint is ahead of the log (for example, the directory was lost).
    pub fn advance_past(&self, seq: u64) {
        self.shared
            .next_seq
            .fetch_max(seq.saturating_add(1), SeqCst);
    }

    /// Why appends fail right now, if they do: the last group could not be written (until
    /// one is), or the log is poisoned.
    pub fn unavailable(&self) -> Option<String> {
        if let Some(reason) = self.shared.poison.get() {
            return Some(format!(
                "the write-ahead log is unusable after an error: {reason}"
            ));
        }
        let failing = self
            .shared
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failing.clone()
    }

    /// While appends fail for want of space, clears the failure once the log's file system
    /// has room for a segment again, so `/readyz` recovers even when no client writes (a
    /// load balancer that follows it sends none). The next write confirms it or fails anew.
    pub fn recheck(&self) {
        if self.shared.poison.get().is_some() {
            return;
        }
        let failing = self
            .shared
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if failing.is_none() {
            return;
        }
        drop(failing);
        let Ok(fs) = nix::sys::statvfs::statvfs(&self.shared.dir) else {
            return;
        };
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        if free >= self.shared.segment_bytes {
            self.shared.set_failing(None);
        }
    }

    /// Bytes in the segment files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.shared.bytes_on_disk.load(Relaxed)
    }

    /// Sequence number of the last record written (synced under `Always`); 0 if none.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(SeqCst)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            bytes_written: c.bytes_written.load(Relaxed),
            records: c.records.load(Relaxed),
            spans: c.spans.load(Relaxed),
            group_commits: c.group_commits.load(Relaxed),
            fsyncs: c.fsyncs.load(Relaxed),
            segments_created: c.segments_created.load(Relaxed),
            segments_deleted: c.segments_deleted.load(Relaxed),
            overloaded: c.overloaded.load(Relaxed),
            bytes_on_disk: self.bytes_on_disk(),
            segments: self.shared.lock_segments().len() as u64,
            last_seq: self.last_seq(),
            records_lost: self.lost(false),
            records_skipped: self.lost(true),
        }
    }

    /// Records recovery found damaged, already stored (`stored`) or not.
    fn lost(&self, stored: bool) -> u64 {
        let losses = self.shared.losses.iter().filter(|l| l.stored == stored);
        losses.map(Loss::records).sum()
    }

    /// What recovery at open could not read back, in file order.
    pub fn recovery_losses(&self) -> &[Loss] {
        &self.shared.losses
    }

    /// Writes and syncs every append already queued, refuses new ones and stops the writer.
    /// Safe to call from several handles or more than once; all calls wait for the writer.
    pub async fn shutdown(&self) -> Result<(), Error> {
        // A send error means the writer already stopped or is stopping; wait for it either way.
        let _ = self.tx.send(Msg::Shutdown).await;
        let mut stopped = self.shared.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
        match self.shared.poisoned() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Wal::shutdown`], consuming this handle.
    pub async fn close(self) -> Result<(), Error> {
        self.shutdown().await
    }
}
