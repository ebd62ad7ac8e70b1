//! Recovery at open: lists the segment files, replays their records, cuts a torn tail off the
//! last segment and refuses to start on damage inside a sealed one.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::format::{parse_segment_name, scan, segment_name, SeqBounds};
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

/// The state of the log directory after recovery.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub records: Vec<Replayed>,
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
pub(crate) fn recover(dir: &Path) -> Result<Recovered, Error> {
    fs::create_dir_all(dir)?;
    let firsts = list_segments(dir)?;
    let mut segments = VecDeque::with_capacity(firsts.len() + 1);
    let mut records = Vec::new();
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
        let mut size = bytes.len() as u64;
        if let Some(reason) = scanned.damage {
            if before.is_some() {
                return Err(Error::Wal(format!(
                    "corrupt sealed segment {} at offset {}: {reason}",
                    path.display(),
                    scanned.valid_len
                )));
            }
            cut_tail(&path, scanned.valid_len, size, &reason)?;
            size = scanned.valid_len;
        }
        if let Some(last) = scanned.records.last() {
            prev = last.seq;
        }
        records.extend(scanned.records);
        segments.push_back(SegMeta {
            first_seq: first,
            bytes: size,
        });
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
