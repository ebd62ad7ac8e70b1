//! The writer thread: drains the append queue, writes each group of records with one write and
//! one `fdatasync`, rolls segments, and completes every waiter with its sequence number.
//!
//! Segments are preallocated (`fallocate` keeping the file size, so readers see only records)
//! when they are created, so a full disk is met when a segment is rolled, where the group can
//! be refused cleanly, rather than in the middle of a record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::format::Frame;
use super::recover::{segment_path, sync_dir, SegMeta};
use super::{FsyncPolicy, Shared, WalConfig};
use crate::Error;

/// Stop gathering a group once it holds this many bytes (a bigger single record still goes).
const MAX_GROUP_BYTES: usize = 8 << 20;

/// A message to the writer.
pub(crate) enum Msg {
    /// An encoded record (sequence number still zero) and who waits for it.
    Append {
        frame: Frame,
        spans: usize,
        done: oneshot::Sender<Result<u64, Error>>,
    },
    /// Write what is queued, sync, and stop.
    Shutdown,
}

struct Pending {
    frame: Frame,
    spans: usize,
    done: oneshot::Sender<Result<u64, Error>>,
}

/// Marks the writer stopped when it exits, even by panic, so `shutdown` never hangs.
struct StoppedGuard(Arc<Shared>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        self.0.stopped.send_replace(true);
    }
}

/// The state owned by the writer thread.
pub(crate) struct Writer {
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    file: File,
    active_len: u64,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    /// Reused buffer holding one group's bytes.
    buf: Vec<u8>,
    /// Test hook: the writer waits for this before taking anything from the queue.
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Writer {
    /// A writer appending to `file` (the active segment, `active_len` bytes long).
    pub fn new(
        rx: mpsc::Receiver<Msg>,
        shared: Arc<Shared>,
        file: File,
        active_len: u64,
        cfg: &WalConfig,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> Writer {
        // Best effort: on a disk already full the log still opens and refuses writes.
        if let Err(e) = preallocate(&file, active_len, cfg.segment_bytes) {
            warn!(error = %e, "could not preallocate the active wal segment");
        }
        Writer {
            rx,
            shared,
            file,
            active_len,
            segment_bytes: cfg.segment_bytes,
            fsync: cfg.fsync,
            buf: Vec::new(),
            gate,
        }
    }

    /// Runs until shutdown is requested or every handle is dropped.
    pub fn run(mut self) {
        let _guard = StoppedGuard(self.shared.clone());
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        let mut group = Vec::new();
        while let Some(msg) = self.rx.blocking_recv() {
            let mut bytes = 0;
            let mut stop = take(msg, &mut group, &mut bytes);
            while bytes < MAX_GROUP_BYTES && !stop {
                match self.rx.try_recv() {
                    Ok(msg) => stop = take(msg, &mut group, &mut bytes),
                    Err(_) => break,
                }
            }
            if stop {
                // Refuse new appends, but write everything already accepted.
                self.rx.close();
                while let Ok(msg) = self.rx.try_recv() {
                    take(msg, &mut group, &mut bytes);
                }
            }
            self.commit(&mut group);
            if stop {
                break;
            }
        }
        self.finish();
    }

    /// Writes one group, syncs it and completes its waiters.
    fn commit(&mut self, group: &mut Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        if let Some(reason) = self.shared.poison.get() {
            fail(group, reason);
            return;
        }
        let n = group.len() as u64;
        let first = self.shared.next_seq.fetch_add(n, SeqCst);
        let written = self.write_group(group, first);
        if let Err(e) = written {
            return self.recover_from(e, group, first);
        }
        let last = first + n - 1;
        self.shared.last_seq.store(last, SeqCst);
        self.shared.set_failing(None);
        let c = &self.shared.counters;
        c.records.fetch_add(n, Relaxed);
        c.spans
            .fetch_add(group.iter().map(|p| p.spans as u64).sum(), Relaxed);
        c.group_commits.fetch_add(1, Relaxed);
        for (seq, p) in (first..).zip(group.drain(..)) {
            let _ = p.done.send(Ok(seq));
        }
    }

    /// A group that could not be written is refused as unavailable (clients retry) and the
    /// log stays usable: a write that failed (a full disk) is cut back off the segment, a
    /// segment that could not be created is removed, and the group's sequence numbers are
    /// given back; the next group that is written clears the failure. A failed fsync poisons
    /// the log instead: after it, the kernel may have dropped pages the log counted on, so
    /// only a restart (which recovers from what is on disk) is safe.
    fn recover_from(&mut self, e: WriteError, group: &mut Vec<Pending>, first: u64) {
        let n = group.len();
        let kept = match &e {
            WriteError::Write(_) => self.file.set_len(self.active_len).is_ok(),
            WriteError::Roll(_) => true,
            WriteError::Sync(_) => false,
        };
        if kept {
            self.shared.next_seq.store(first, SeqCst);
            let reason = format!("the write-ahead log cannot write: {e}");
            warn!(error = %e, first_seq = first, records = n, "wal write failed; refused, log kept");
            self.shared.set_failing(Some(reason.clone()));
            for p in group.drain(..) {
                let _ = p.done.send(Err(Error::Unavailable {
                    reason: reason.clone(),
                    retry_after: std::time::Duration::from_secs(1),
                }));
            }
            return;
        }
        let reason = format!("{e}");
        error!(error = %e, first_seq = first, records = n, "wal failed; refusing further appends");
        let _ = self.shared.poison.set(reason.clone());
        fail(group, &reason);
    }

    /// Rolls the segment if it is full, then writes and (by policy) syncs the group.
    fn write_group(&mut self, group: &mut [Pending], first: u64) -> Result<(), WriteError> {
        if self.active_len >= self.segment_bytes && self.active_len > 0 {
            self.file.sync_data().map_err(WriteError::Sync)?;
            self.shared.counters.fsyncs.fetch_add(1, Relaxed);
            self.roll(first).map_err(WriteError::Roll)?;
        }
        let total: usize = group.iter().map(|p| p.frame.len()).sum();
        if self.buf.capacity() > 2 * MAX_GROUP_BYTES {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.buf.reserve(total);
        for (seq, p) in (first..).zip(group.iter_mut()) {
            p.frame.set_seq(seq);
            self.buf.extend_from_slice(&p.frame.header);
            self.buf.extend_from_slice(&p.frame.payload);
        }
        self.file.write_all(&self.buf).map_err(WriteError::Write)?;
        self.active_len += total as u64;
        let c = &self.shared.counters;
        c.bytes_written.fetch_add(total as u64, Relaxed);
        self.shared.bytes_on_disk.fetch_add(total as u64, Relaxed);
        if self.fsync == FsyncPolicy::Always {
            self.file.sync_data().map_err(WriteError::Sync)?;
            c.fsyncs.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Starts a new segment after the active one (already synced, whatever the policy), which
    /// becomes sealed. On failure nothing changed: the new file, if made, is removed.
    fn roll(&mut self, first: u64) -> std::io::Result<()> {
        let c = &self.shared.counters;
        let path = segment_path(&self.shared.dir, first);
        let open = || OpenOptions::new().append(true).create_new(true).open(&path);
        let file = match open() {
            // Left by an earlier roll that failed and could not remove it: it holds no record.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::metadata(&path)?.len() != 0 {
                    return Err(e);
                }
                std::fs::remove_file(&path)?;
                open()?
            }
            other => other?,
        };
        let made = preallocate(&file, 0, self.segment_bytes).and_then(|()| {
            c.fsyncs.fetch_add(1, Relaxed);
            sync_dir(&self.shared.dir)
        });
        if let Err(e) = made {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        {
            let mut segments = self.shared.lock_segments();
            if let Some(sealed) = segments.back_mut() {
                sealed.bytes = self.active_len;
            }
            segments.push_back(SegMeta {
                first_seq: first,
                bytes: 0,
            });
        }
        c.segments_created.fetch_add(1, Relaxed);
        debug!(segment = %path.display(), sealed_bytes = self.active_len, "wal segment rolled");
        self.file = file;
        self.active_len = 0;
        Ok(())
    }

    /// Final sync before the thread exits; a failure poisons the log.
    fn finish(&mut self) {
        if self.shared.poison.get().is_some() {
            return;
        }
        if let Err(e) = self.file.sync_data() {
            error!(error = %e, "wal final sync failed");
            let _ = self.shared.poison.set(format!("final sync failed: {e}"));
            return;
        }
        self.shared.counters.fsyncs.fetch_add(1, Relaxed);
        debug!(
            last_seq = self.shared.last_seq.load(SeqCst),
            "wal writer stopped"
        );
    }
}

/// Adds a message to the group; returns whether it asks the writer to stop.
fn take(msg: Msg, group: &mut Vec<Pending>, bytes: &mut usize) -> bool {
    match msg {
        Msg::Append { frame, spans, done } => {
            *bytes += frame.len();
            group.push(Pending { frame, spans, done });
            false
        }
        Msg::Shutdown => true,
    }
}

/// Why a group was not logged.
#[derive(Debug)]
enum WriteError {
    /// Writing the bytes failed: nothing past the segment's old length counts.
    Write(std::io::Error),
    /// A new segment could not be made (or preallocated): nothing was written.
    Roll(std::io::Error),
    /// Rolling or syncing failed: what is durable is unknown.
    Sync(std::io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Write(e) => write!(f, "write failed: {e}"),
            WriteError::Roll(e) => write!(f, "new segment failed: {e}"),
            WriteError::Sync(e) => write!(f, "sync failed: {e}"),
        }
    }
}

/// Completes every waiter of the group with an error.
fn fail(group: &mut Vec<Pending>, reason: &str) {
    for p in group.drain(..) {
        let _ = p.done.send(Err(Error::Wal(reason.to_string())));
    }
}

/// Reserves the blocks for a segment of `size` bytes past `from` without changing the file's
/// length. File systems that cannot (`EOPNOTSUPP`) are fine: they then meet a full disk at
/// write time, which is refused as cleanly.
fn preallocate(file: &File, from: u64, size: u64) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    if from >= size {
        return Ok(());
    }
    let (offset, len) = (from as i64, (size - from) as i64);
    match fallocate(file, FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, len) {
        Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)),
    }
}
