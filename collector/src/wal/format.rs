//! The on-disk format of the write-ahead log: segment file names and record framing.
//!
//! A record is `[u32 payload_len LE][u32 crc32 of payload LE][u64 seq LE][payload]`, where the
//! payload is a postcard-encoded `Vec<Span>`. This module encodes records (without their
//! sequence number, which the writer fills in) and scans a segment's bytes back into records,
//! stopping at the first record that is incomplete, fails its checksum, breaks the sequence
//! order or does not decode.

use meshtrace_model::Span;

use super::Replayed;
use crate::Error;

/// Bytes before the payload: length, checksum, sequence number.
pub(crate) const HEADER_LEN: usize = 16;

/// The largest payload a record may carry. Anything longer in a header is treated as damage.
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;

const PREFIX: &str = "wal-";
const SUFFIX: &str = ".log";

/// The file name of the segment whose first record has sequence number `first_seq`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:020}{SUFFIX}")
}

/// The first sequence number encoded in a segment file name, or `None` if the name is not one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes `spans` as a complete record whose sequence number is still zero.
///
/// This runs on the caller's task, so serialization is spread over the runtime's threads and
/// the writer thread only patches in the sequence number and copies bytes.
pub(crate) fn encode_record(spans: &[Span]) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::with_capacity(HEADER_LEN + 256 * spans.len().max(1));
    frame.resize(HEADER_LEN, 0);
    let mut frame = postcard::to_extend(spans, frame)
        .map_err(|e| Error::Wal(format!("encoding spans: {e}")))?;
    let payload_len = frame.len() - HEADER_LEN;
    if payload_len > MAX_PAYLOAD {
        return Err(Error::Wal(format!(
            "record of {payload_len} bytes exceeds the limit of {MAX_PAYLOAD} bytes"
        )));
    }
    let crc = crc32fast::hash(&frame[HEADER_LEN..]);
    frame[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// Writes the sequence number into an encoded record.
pub(crate) fn set_seq(frame: &mut [u8], seq: u64) {
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
}

/// What the sequence numbers in one segment must satisfy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeqBounds {
    /// The first sequence number of the segment (from its file name): records are `>=` it.
    pub first: u64,
    /// The last sequence number seen before this segment: records are `>` it.
    pub after: u64,
    /// The first sequence number of the next segment, if any: records are `<` it.
    pub before: Option<u64>,
}

/// The outcome of scanning one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    pub records: Vec<Replayed>,
    /// Length of the valid prefix: the offset just past the last good record.
    pub valid_len: u64,
    /// Why scanning stopped before the end of the bytes, if it did.
    pub damage: Option<String>,
}

/// Reads records from a segment's bytes until the end or the first damaged record.
pub(crate) fn scan(bytes: &[u8], bounds: SeqBounds) -> Scan {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut prev = bounds.after;
    let damage = loop {
        if offset == bytes.len() {
            break None;
        }
        match read_record(&bytes[offset..], prev, bounds) {
            Ok((seq, spans, len)) => {
                records.push(Replayed { seq, spans });
                prev = seq;
                offset += len;
            }
            Err(reason) => break Some(reason),
        }
    };
    Scan {
        records,
        valid_len: offset as u64,
        damage,
    }
}

/// Decodes the record at the start of `buf`: its sequence number, spans and framed length.
fn read_record(
    buf: &[u8],
    prev: u64,
    bounds: SeqBounds,
) -> Result<(u64, Vec<Span>, usize), String> {
    if buf.len() < HEADER_LEN {
        return Err(format!("incomplete header ({} bytes)", buf.len()));
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Err(format!("invalid payload length {len}"));
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(format!(
            "record of {len} bytes runs past the end of the file ({} bytes left)",
            buf.len() - HEADER_LEN
        ));
    };
    if crc32fast::hash(payload) != crc {
        return Err(format!("checksum mismatch in record of {len} bytes"));
    }
    if seq <= prev || seq < bounds.first || bounds.before.is_some_and(|b| seq >= b) {
        return Err(format!(
            "sequence number {seq} out of order (previous {prev})"
        ));
    }
    let spans: Vec<Span> =
        postcard::from_bytes(payload).map_err(|e| format!("undecodable payload: {e}"))?;
    Ok((seq, spans, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> SeqBounds {
        SeqBounds {
            first: 1,
            after: 0,
            before: None,
        }
    }

    fn record(seq: u64, name: &str) -> Vec<u8> {
        let span = Span {
            name: name.to_string(),
            ..Span::default()
        };
        let mut frame = encode_record(&[span]).unwrap();
        set_seq(&mut frame, seq);
        frame
    }

    #[test]
    fn names_round_trip_and_reject_strangers() {
        assert_eq!(segment_name(42), "wal-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("wal-42.log"), None);
        assert_eq!(parse_segment_name("wal-0000000000000000004x.log"), None);
        assert_eq!(parse_segment_name("wal-00000000000000000042.log.tmp"), None);
    }

    #[test]
    fn scan_reads_records_and_stops_at_damage() {
        let mut bytes = record(1, "a");
        bytes.extend(record(2, "b"));
        let good = bytes.len();
        bytes.extend(record(3, "c"));
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let scan = scan(&bytes, bounds());
        assert_eq!(
            scan.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(scan.records[1].spans[0].name, "b");
        assert_eq!(scan.valid_len, good as u64);
        assert!(scan.damage.unwrap().contains("checksum"));
    }

    #[test]
    fn scan_rejects_zeroed_tail_and_bad_order() {
        let mut bytes = record(1, "a");
        bytes.extend([0u8; 64]);
        let s = scan(&bytes, bounds());
        assert_eq!(s.records.len(), 1);
        assert!(s.damage.unwrap().contains("length"));

        let mut bytes = record(2, "a");
        bytes.extend(record(2, "b"));
        let s = scan(&bytes, bounds());
        assert_eq!(s.records.len(), 1);
        assert!(s.damage.unwrap().contains("out of order"));

        let s = scan(
            &record(5, "a"),
            SeqBounds {
                first: 1,
                after: 0,
                before: Some(5),
            },
        );
        assert!(s.records.is_empty());
        assert_eq!(s.valid_len, 0);
    }
}
