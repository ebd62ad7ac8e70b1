//! Recovery at open: lists the segment files, replays their records and deals with damage.
//!
//! A record is a torn tail only if nothing valid follows it in the last segment (a group cut
//! short by a crash, never acknowledged): the segment is truncated there with a warning. Any
//! other damage (valid records after it, or the end of a sealed segment whose successor
//! starts later) may have held acknowledged records: the segment is copied into `damaged/`
//! first, then rewritten with its valid records only, so the next open does not meet the
//! damage again, and each loss is reported with the file, offset and sequence numbers it
//! covers: an ERROR when any of them is above the caller's checkpoint (not yet in Parquet), a
//! warning when all are at or below it (already stored; nothing is lost).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use super::format::{parse_segment_name, scan, segment_name, Scan, SeqBounds};
use super::Replayed;
use crate::Error;

/// What the WAL knows about one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegMeta {
    /// Sequence number of the segment's first record (its file name).
    pub first_seq: u64,
    /// Size in bytes; kept exact for sealed segments only.
    pub bytes: u64,
}

/// The sub-directory damaged segments are copied to before they are rewritten.
pub const DAMAGED_DIR: &str = "damaged";

/// Records recovery could not read back from a damaged segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub segment: PathBuf,
    /// Where the damage starts in the segment as it was found.
    pub offset: u64,
    /// The sequence numbers lost, first and last.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Every lost record is at or below the checkpoint: its spans are in Parquet already.
    pub stored: bool,
    pub reason: String,
}

impl Loss {
    /// How many records it covers.
    pub fn records(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }
}

/// The state of the log directory after recovery.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub records: Vec<Replayed>,
    /// Records lost to damage (none lost to a torn tail).
    pub losses: Vec<Loss>,
    /// All segments, oldest first; the last one is the active segment (never empty).
    pub segments: VecDeque<SegMeta>,
    /// The active segment, opened for appending at its (valid) end.
    pub active: File,
    /// The next sequence number to assign.
    pub next_seq: u64,
}

/// The path of the segment starting at `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(segment_name(first_seq))
}

/// Makes a file creation or deletion in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens (creating if needed) the log directory and replays every valid record in order.
/// `checkpoint` is the caller's, if it has one: records at or below it are already stored
/// elsewhere, and sequence numbers above it that no segment holds are reported as lost.
pub(crate) fn recover(dir: &Path, known: Option<u64>) -> Result<Recovered, Error> {
    let checkpoint = known.unwrap_or(0);
    fs::create_dir_all(dir)?;
    let firsts = list_segments(dir)?;
    let mut segments = VecDeque::with_capacity(firsts.len() + 1);
    let mut records = Vec::new();
    let mut losses = Vec::new();
    let mut prev = 0u64;
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let bytes = fs::read(&path)?;
        let before = firsts.get(i + 1).copied();
        let scanned = scan(
            &bytes,
            SeqBounds {
                first,
                after: prev,
                before,
            },
        );
        let found = losses_of(&path, &scanned, prev, before, checkpoint);
        let mut size = bytes.len() as u64;
        if !found.is_empty() || !scanned.gaps.is_empty() {
            size = rewrite(dir, &path, &bytes, &scanned)?;
            for loss in &found {
                report(loss);
            }
        } else if let Some(reason) = &scanned.damage {
            cut_tail(&path, scanned.valid_len, size, reason)?;
            size = scanned.valid_len;
        }
        losses.extend(found.into_iter().filter(|l| l.records() > 0));
        if let Some(last) = scanned.records.last() {
            prev = last.seq;
        }
        records.extend(scanned.records);
        segments.push_back(SegMeta {
            first_seq: first,
            bytes: size,
        });
    }
    if let Some(checkpoint) = known {
        let missing = missing_after(dir, checkpoint, &records, &losses);
        missing.iter().for_each(report);
        losses.extend(missing);
    }
    let mut next_seq = prev + 1;
    if let Some(last) = segments.back() {
        next_seq = next_seq.max(last.first_seq);
    } else {
        File::create(segment_path(dir, next_seq))?.sync_all()?;
        sync_dir(dir)?;
        segments.push_back(SegMeta {
            first_seq: next_seq,
            bytes: 0,
        });
    }
    let active_first = segments.back().expect("one segment").first_seq;
    let active = OpenOptions::new()
        .append(true)
        .open(segment_path(dir, active_first))?;
    info!(
        dir = %dir.display(),
        segments = segments.len(),
        records = records.len(),
        next_seq,
        "wal recovered"
    );
    Ok(Recovered {
        records,
        losses,
        segments,
        active,
        next_seq,
    })
}

/// The first sequence numbers of the segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(first) if entry.file_type()?.is_file() => firsts.push(first),
            None if name == DAMAGED_DIR && entry.file_type()?.is_dir() => {}
            // A rewrite cut short by a crash: the segment itself was not replaced yet.
            None if name.to_string_lossy().ends_with(".log.rewrite") => {
                fs::remove_file(entry.path())?;
            }
            _ => {
                warn!(dir = %dir.display(), file = ?name, "ignoring unexpected file in wal directory")
            }
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Truncates the last segment to its valid prefix: the cut records were never acknowledged.
fn cut_tail(path: &Path, valid_len: u64, size: u64, reason: &str) -> Result<(), Error> {
    warn!(
        segment = %path.display(),
        offset = valid_len,
        dropped_bytes = size - valid_len,
        reason,
        "truncating torn wal tail"
    );
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(valid_len)?;
    file.sync_all()?;
    Ok(())
}

/// The records a segment's damage lost: each gap's, and for a sealed segment whose end is
/// damaged, those between its last good record and the next segment's first.
fn losses_of(
    path: &Path,
    scanned: &Scan,
    prev: u64,
    before: Option<u64>,
    checkpoint: u64,
) -> Vec<Loss> {
    let loss = |offset, first_seq, last_seq: u64, reason: &str| Loss {
        segment: path.to_path_buf(),
        offset,
        first_seq,
        last_seq,
        stored: last_seq <= checkpoint,
        reason: reason.to_string(),
    };
    let mut out: Vec<Loss> = scanned
        .gaps
        .iter()
        .map(|g| loss(g.offset, g.first_lost, g.last_lost, &g.reason))
        .collect();
    if let (Some(reason), Some(next)) = (&scanned.damage, before) {
        let last_good = scanned.records.last().map_or(prev, |r| r.seq);
        out.push(loss(scanned.valid_len, last_good + 1, next - 1, reason));
    }
    out
}

/// Logs one loss: an ERROR when acknowledged spans may be gone, a warning when all of it is
/// stored in Parquet already (or it held no record).
fn report(loss: &Loss) {
    let segment = loss.segment.display();
    let (offset, first_seq, last_seq) = (loss.offset, loss.first_seq, loss.last_seq);
    if loss.records() > 0 && !loss.stored {
        error!(%segment, offset, first_seq, last_seq, records = loss.records(), reason = %loss.reason,
            "damaged wal records lost: these acknowledged spans were not stored elsewhere");
    } else {
        warn!(%segment, offset, first_seq, last_seq, records = loss.records(), reason = %loss.reason,
            "damaged wal records skipped: already stored in Parquet");
    }
}

/// Copies a damaged segment into `damaged/` (the evidence), then replaces it, through a
/// synced temporary file and a rename, by its valid records only; returns the new size.
fn rewrite(dir: &Path, path: &Path, bytes: &[u8], scanned: &Scan) -> Result<u64, Error> {
    let aside = dir.join(DAMAGED_DIR);
    fs::create_dir_all(&aside)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let copy = aside.join(format!(
        "{name}.{}",
        meshtrace_model::time::now_unix_nanos()
    ));
    fs::write(&copy, bytes)?;
    File::open(&copy)?.sync_all()?;
    sync_dir(&aside)?;
    let kept: Vec<u8> = scanned
        .ranges
        .iter()
        .flat_map(|r| bytes[r.clone()].iter().copied())
        .collect();
    let tmp = path.with_extension("log.rewrite");
    fs::write(&tmp, &kept)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    warn!(segment = %path.display(), copy = %copy.display(), kept_bytes = kept.len(),
        dropped_bytes = bytes.len() - kept.len(), "damaged wal segment copied aside and rewritten");
    Ok(kept.len() as u64)
}

/// Sequence numbers above the checkpoint, before the last one the log holds, that neither a
/// record nor a reported loss covers: a segment file deleted or a catalog checkpoint older than
/// the log's truncation. Spans there are neither in Parquet nor in the log.
fn missing_after(dir: &Path, checkpoint: u64, records: &[Replayed], losses: &[Loss]) -> Vec<Loss> {
    let mut covered: Vec<(u64, u64)> = records.iter().map(|r| (r.seq, r.seq)).collect();
    covered.extend(losses.iter().map(|l| (l.first_seq, l.last_seq)));
    covered.sort_unstable();
    let mut expected = checkpoint + 1;
    let mut out = Vec::new();
    for (first, last) in covered {
        if first > expected {
            out.push(Loss {
                segment: dir.to_path_buf(),
                offset: 0,
                first_seq: expected,
                last_seq: first - 1,
                stored: false,
                reason: format!(
                    "no log segment holds these sequences, and the checkpoint ({checkpoint}) \
                     is below them"
                ),
            });
        }
        expected = expected.max(last + 1);
    }
    out
}
