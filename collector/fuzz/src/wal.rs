//! Helpers of the two write-ahead log targets: `wal` (the segment scan) and `wal_recover`
//! (recovery at open).

use meshtrace_collector::fuzzing::{wal_scan, Scan, SeqBounds, HEADER_LEN};

/// The length bits of a record header's first word (the top bit marks an OTLP payload).
pub const LEN_MASK: u32 = 0x7fff_ffff;

/// The only segment of a log, or its first one.
pub const FROM_START: SeqBounds = SeqBounds {
    first: 1,
    after: 0,
    before: None,
};

/// A sealed segment starting at 3, after a segment ending at 2, before one starting at 8.
pub const BETWEEN: SeqBounds = SeqBounds {
    first: 3,
    after: 2,
    before: Some(8),
};

/// `data` with the checksum of each record along the chain of headers from offset 0 set to
/// its payload's.
pub fn fix_checksums(data: &[u8]) -> Vec<u8> {
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
pub fn check_scan(bytes: &[u8], bounds: SeqBounds) -> (Scan, Vec<u8>) {
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
        assert_eq!(
            range.start, at,
            "records and gaps do not tile the valid prefix"
        );
        assert!(range.end <= bytes.len(), "record past the end of the input");
        assert!(range.len() > HEADER_LEN, "record without a payload");
        let word = u32::from_le_bytes(bytes[range.start..range.start + 4].try_into().unwrap());
        assert_eq!(
            (word & LEN_MASK) as usize,
            range.len() - HEADER_LEN,
            "record length"
        );
        assert_eq!(
            u64_at(bytes, range.start + 8),
            record.seq,
            "record sequence number"
        );
        assert!(record.seq > prev, "sequence numbers not increasing");
        assert!(
            record.seq >= bounds.first,
            "sequence number below the segment's first"
        );
        assert!(
            bounds.before.is_none_or(|b| record.seq < b),
            "sequence number of the next segment"
        );
        prev = record.seq;
        at = range.end;
    }
    assert!(
        gaps.next().is_none(),
        "a gap with no record after it: {:?}",
        s.gaps
    );
    assert_eq!(
        s.valid_len, at as u64,
        "valid_len is not the end of the last record"
    );
    assert_eq!(
        s.damage.is_some(),
        at < bytes.len(),
        "damage reported wrongly"
    );

    let kept: Vec<u8> = s
        .ranges
        .iter()
        .flat_map(|r| bytes[r.clone()].to_vec())
        .collect();
    let again = wal_scan(&kept, bounds);
    assert!(again.gaps.is_empty(), "valid records rescan with gaps");
    assert_eq!(again.damage, None, "valid records rescan with damage");
    assert_eq!(again.valid_len, kept.len() as u64);
    assert_eq!(format!("{:?}", again.records), format!("{:?}", s.records));
    (s, kept)
}
