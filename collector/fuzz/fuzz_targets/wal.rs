//! The write-ahead log reader: the segment scan (`wal::format::scan`, through
//! `meshtrace_collector::fuzzing`) and recovery at open (`Wal::open` on a directory whose one
//! segment, `wal-00000000000000000001.log`, holds the input).
//!
//! The input is scanned as it is, and again with the checksum of every record in its chain of
//! headers (from offset 0) made to match, so that the fuzzer also reaches payload decoding
//! (postcard spans, OTLP requests) rather than stopping at checksums. Invariants:
//! - scan: records and gaps tile the valid prefix in order; no record runs past the input; each
//!   record's range is its header's length and its sequence number is the header's, strictly
//!   increasing and inside the bounds; a gap's lost sequence numbers are those between its
//!   neighbours; the scan reports damage exactly when the valid prefix is not the whole input;
//!   the valid records' bytes, put together (what recovery rewrites a segment to), scan again
//!   as the same records with no gap and no damage;
//! - open: replays exactly the scanned records, reports exactly the gaps' records as lost (a
//!   torn tail is not a loss), leaves the segment holding exactly its valid records' bytes, puts
//!   a copy in `damaged/` exactly when there was a gap; a second open (with checkpoint 0) replays
//!   the same records and reports as lost exactly the sequence numbers no record holds.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use meshtrace_collector::fuzzing::{wal_scan, Scan, SeqBounds, HEADER_LEN};
use meshtrace_collector::wal::{FsyncPolicy, Wal, WalConfig, DAMAGED_DIR};
use meshtrace_collector_fuzz::verbose;

const LEN_MASK: u32 = 0x7fff_ffff;

const FROM_START: SeqBounds = SeqBounds {
    first: 1,
    after: 0,
    before: None,
};

/// A sealed segment starting at 3, after a segment ending at 2, before one starting at 8.
const BETWEEN: SeqBounds = SeqBounds {
    first: 3,
    after: 2,
    before: Some(8),
};

fuzz_target!(|data: &[u8]| {
    check_scan(data, FROM_START);
    let fixed = fix_checksums(data);
    check_scan(&fixed, BETWEEN);
    let (scan, kept) = check_scan(&fixed, FROM_START);
    if verbose() {
        eprintln!(
            "wal: {} bytes -> {} records ({} spans), {} gaps, damage {:?}",
            data.len(),
            scan.records.len(),
            scan.records.iter().map(|r| r.spans.len()).sum::<usize>(),
            scan.gaps.len(),
            scan.damage
        );
    }
    check_open(&fixed, &scan, &kept);
});

/// `data` with the checksum of each record along the chain of headers from offset 0 set to
/// its payload's.
fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0;
    while out.len() - at >= HEADER_LEN {
        let word = u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
        let end = at + HEADER_LEN + (word & LEN_MASK) as usize;
        if end == at + HEADER_LEN || end > out.len() {
            break;
        }
        let crc = crc32fast::hash(&out[at + HEADER_LEN..end]);
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Scans `bytes`, checks the scan invariants and returns the scan and its valid records' bytes.
fn check_scan(bytes: &[u8], bounds: SeqBounds) -> (Scan, Vec<u8>) {
    let s = wal_scan(bytes, bounds);
    assert_eq!(s.records.len(), s.ranges.len());
    let mut at = 0usize;
    let mut prev = bounds.after;
    let mut gaps = s.gaps.iter().peekable();
    for (range, record) in s.ranges.iter().zip(&s.records) {
        if let Some(gap) = gaps.next_if(|g| g.offset == at as u64) {
            assert!(gap.len > 0, "empty gap");
            assert_eq!(gap.first_lost, prev + 1, "gap's first lost sequence");
            assert_eq!(gap.last_lost, record.seq - 1, "gap's last lost sequence");
            at += gap.len as usize;
        }
        assert_eq!(range.start, at, "records and gaps do not tile the valid prefix");
        assert!(range.end <= bytes.len(), "record past the end of the input");
        assert!(range.len() > HEADER_LEN, "record without a payload");
        let word = u32::from_le_bytes(bytes[range.start..range.start + 4].try_into().unwrap());
        assert_eq!((word & LEN_MASK) as usize, range.len() - HEADER_LEN, "record length");
        assert_eq!(u64_at(bytes, range.start + 8), record.seq, "record sequence number");
        assert!(record.seq > prev, "sequence numbers not increasing");
        assert!(record.seq >= bounds.first, "sequence number below the segment's first");
        assert!(
            bounds.before.is_none_or(|b| record.seq < b),
            "sequence number of the next segment"
        );
        prev = record.seq;
        at = range.end;
    }
    assert!(gaps.next().is_none(), "a gap with no record after it: {:?}", s.gaps);
    assert_eq!(s.valid_len, at as u64, "valid_len is not the end of the last record");
    assert_eq!(s.damage.is_some(), at < bytes.len(), "damage reported wrongly");

    let kept: Vec<u8> = s.ranges.iter().flat_map(|r| bytes[r.clone()].to_vec()).collect();
    let again = wal_scan(&kept, bounds);
    assert!(again.gaps.is_empty(), "valid records rescan with gaps");
    assert_eq!(again.damage, None, "valid records rescan with damage");
    assert_eq!(again.valid_len, kept.len() as u64);
    assert_eq!(format!("{:?}", again.records), format!("{:?}", s.records));
    (s, kept)
}

/// Where the log directories go: tmpfs when there is one (syncs cost nothing there).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

fn check_open(bytes: &[u8], scan: &Scan, kept: &[u8]) {
    let dir = tempfile::Builder::new()
        .prefix("meshtrace-fuzz-wal")
        .tempdir_in(scratch())
        .expect("scratch directory");
    let segment = dir.path().join("wal-00000000000000000001.log");
    std::fs::write(&segment, bytes).expect("writing the segment");
    let cfg = WalConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 4096,
        ..WalConfig::new(dir.path())
    };
    let expected = format!("{:?}", scan.records);

    let (wal, replayed) = Wal::open(cfg.clone()).expect("open");
    assert_eq!(format!("{replayed:?}"), expected, "open replays other records than the scan");
    let lost: Vec<(u64, u64)> = wal
        .recovery_losses()
        .iter()
        .map(|l| (l.first_seq, l.last_seq))
        .collect();
    let gaps: Vec<(u64, u64)> = scan
        .gaps
        .iter()
        .filter(|g| g.first_lost <= g.last_lost)
        .map(|g| (g.first_lost, g.last_lost))
        .collect();
    assert_eq!(lost, gaps, "losses are not the gaps' records");
    let last = scan.records.last().map_or(0, |r| r.seq);
    assert_eq!(wal.last_seq(), last, "last_seq after open");
    block_on(wal.close()).expect("close");
    let on_disk = std::fs::read(&segment).expect("segment still there");
    assert!(on_disk == kept, "the segment after recovery is not its valid records");
    assert_eq!(
        dir.path().join(DAMAGED_DIR).exists(),
        !scan.gaps.is_empty(),
        "damaged/ copy"
    );

    let (wal, again) = Wal::open_at(cfg, 0).expect("second open");
    assert_eq!(format!("{again:?}"), expected, "second open replays other records");
    let mut losses = wal.recovery_losses().iter();
    let mut next = 1;
    for r in &again {
        if r.seq > next {
            let l = losses.next().expect("missing sequence numbers not reported");
            assert_eq!((l.first_seq, l.last_seq), (next, r.seq - 1));
            assert!(!l.stored);
        }
        next = r.seq + 1;
    }
    assert!(losses.next().is_none(), "losses at the second open: {:?}", wal.recovery_losses());
    block_on(wal.close()).expect("close");
}
