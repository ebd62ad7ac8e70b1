//! The on-disk format of the write-ahead log: segment file names and record framing.
//!
//! A record is `[u32 len_and_kind LE][u32 crc32 of payload LE][u64 seq LE][payload]`. The low
//! 31 bits of the first word are the payload's length; the top bit says what the payload is:
//! clear for a postcard-encoded `Vec<Span>`, set for the OTLP protobuf
//! `ExportTraceServiceRequest` the spans were decoded from (see [`super::Record`]). This module
//! encodes records (without their sequence number, which the writer fills in) and scans a
//! segment's bytes back into records, stopping at the first record that is incomplete, fails
//! its checksum, breaks the sequence order or does not decode.

use bytes::Bytes;
use meshtrace_model::Span;

use super::Replayed;
use crate::decode::otlp_wire;
use crate::{Error, Limits};

/// Bytes before the payload: length, checksum, sequence number.
pub const HEADER_LEN: usize = 16;

/// The largest payload a record may carry. Anything longer in a header is treated as damage.
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;

/// The bit of the length word that marks an OTLP protobuf payload (above any valid length).
const OTLP_PAYLOAD: u32 = 1 << 31;

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

/// An encoded record: its header (sequence number still zero until the writer sets it) and
/// its payload, kept apart so that a received request is logged without another copy.
#[derive(Debug)]
pub(crate) struct Frame {
    pub header: [u8; HEADER_LEN],
    pub payload: Bytes,
}

impl Frame {
    /// Bytes the record takes in the log.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes the sequence number into the header.
    pub fn set_seq(&mut self, seq: u64) {
        self.header[8..16].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Encodes `spans` as a record.
///
/// This runs on the caller's task, so serialization is spread over the runtime's threads and
/// the writer thread only patches in the sequence number and copies bytes.
pub(crate) fn encode_record(spans: &[Span]) -> Result<Frame, Error> {
    let payload = postcard::to_extend(spans, Vec::with_capacity(256 * spans.len().max(1)))
        .map_err(|e| Error::Wal(format!("encoding spans: {e}")))?;
    frame(payload.into(), 0)
}

/// Encodes an OTLP protobuf request's bytes as a record (the bytes are shared, not copied).
pub(crate) fn encode_otlp_record(request: Bytes) -> Result<Frame, Error> {
    frame(request, OTLP_PAYLOAD)
}

/// The header for `payload`: its length with the `kind` bit, and its checksum.
fn frame(payload: Bytes, kind: u32) -> Result<Frame, Error> {
    let len = payload.len();
    if len == 0 || len > MAX_PAYLOAD {
        return Err(Error::Wal(format!(
            "record of {len} bytes is empty or exceeds the limit of {MAX_PAYLOAD} bytes"
        )));
    }
    let mut header = [0; HEADER_LEN];
    header[0..4].copy_from_slice(&(len as u32 | kind).to_le_bytes());
    header[4..8].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    Ok(Frame { header, payload })
}

/// What the sequence numbers in one segment must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct SeqBounds {
    /// The first sequence number of the segment (from its file name): records are `>=` it.
    pub first: u64,
    /// The last sequence number seen before this segment: records are `>` it.
    pub after: u64,
    /// The first sequence number of the next segment, if any: records are `<` it.
    pub before: Option<u64>,
}

/// Damaged bytes in the middle of a segment, with valid records after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Where the damage starts (the end of the last good record before it).
    pub offset: u64,
    /// Bytes skipped up to the next valid record.
    pub len: u64,
    /// What was wrong with the record at `offset`.
    pub reason: String,
    /// The sequence numbers of the records lost in it, first and last (`first > last` when no
    /// record was lost: damaged bytes between two consecutive records).
    pub first_lost: u64,
    pub last_lost: u64,
}

/// The outcome of scanning one segment.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<Replayed>,
    /// The byte range of every valid record, in order.
    pub ranges: Vec<std::ops::Range<usize>>,
    /// The offset just past the last good record.
    pub valid_len: u64,
    /// Damage in the middle: valid records follow each gap.
    pub gaps: Vec<Gap>,
    /// Why the segment ends in bytes that are not a record, if it does (nothing valid follows).
    pub damage: Option<String>,
}

/// How far past the last good sequence number a record found after damage may be: sequence
/// numbers are consecutive within a segment, so a header further off is noise, not a record.
const MAX_SEQ_SKIP: u64 = 1 << 20;

/// Reads every valid record of a segment's bytes. Damage followed by valid records is skipped
/// as a [`Gap`] (the next record is found by its header and checksum); damage that nothing
/// valid follows ends the scan ([`Scan::damage`]).
pub fn scan(bytes: &[u8], bounds: SeqBounds) -> Scan {
    let mut out = Scan {
        records: Vec::new(),
        ranges: Vec::new(),
        valid_len: 0,
        gaps: Vec::new(),
        damage: None,
    };
    let mut offset = 0usize;
    let mut prev = bounds.after;
    while offset < bytes.len() {
        match read_record(&bytes[offset..], prev, bounds) {
            Ok((seq, spans, len)) => {
                out.records.push(Replayed { seq, spans });
                out.ranges.push(offset..offset + len);
                prev = seq;
                offset += len;
                out.valid_len = offset as u64;
            }
            Err(reason) => match resync(bytes, offset, prev, bounds) {
                Some((next, next_seq)) => {
                    out.gaps.push(Gap {
                        offset: offset as u64,
                        len: (next - offset) as u64,
                        reason,
                        first_lost: prev + 1,
                        last_lost: next_seq - 1,
                    });
                    offset = next;
                }
                None => {
                    out.damage = Some(reason);
                    break;
                }
            },
        }
    }
    out
}

/// The offset and sequence number of the first valid record after damage at `from`.
fn resync(bytes: &[u8], from: usize, prev: u64, bounds: SeqBounds) -> Option<(usize, u64)> {
    (from + 1..bytes.len().saturating_sub(HEADER_LEN - 1)).find_map(|at| {
        let header = &bytes[at..at + HEADER_LEN];
        let len = (u32::from_le_bytes(header[0..4].try_into().ok()?) & !OTLP_PAYLOAD) as usize;
        let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
        // Cheap checks first: most offsets fail them without a checksum.
        let plausible = len > 0
            && at + HEADER_LEN + len <= bytes.len()
            && seq > prev
            && seq - prev <= MAX_SEQ_SKIP;
        (plausible && read_record(&bytes[at..], prev, bounds).is_ok()).then_some((at, seq))
    })
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
    let word = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let len = (word & !OTLP_PAYLOAD) as usize;
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
    // The header is not checksummed. `u64::MAX` is never assigned (no sequence number would
    // follow it), so it can only be damage, and taking it for a record would overflow the
    // sequence numbers recovery continues from.
    if seq == u64::MAX {
        return Err(format!("sequence number {seq} out of range"));
    }
    if seq <= prev || seq < bounds.first || bounds.before.is_some_and(|b| seq >= b) {
        return Err(format!(
            "sequence number {seq} out of order (previous {prev})"
        ));
    }
    let spans = if word & OTLP_PAYLOAD == 0 {
        postcard::from_bytes(payload).map_err(|e| format!("undecodable payload: {e}"))?
    } else {
        decode_otlp(payload)?
    };
    Ok((seq, spans, HEADER_LEN + len))
}

/// The spans of a logged OTLP request. Only requests whose every span was accepted as sent
/// (none rejected, nothing truncated) are logged this way, so decoding them without limits
/// gives back exactly the spans that were acknowledged, whatever the limits are now.
fn decode_otlp(payload: &[u8]) -> Result<Vec<Span>, String> {
    let unbounded = Limits {
        max_attributes: usize::MAX,
        max_attribute_value_bytes: usize::MAX,
        max_events: usize::MAX,
        max_links: usize::MAX,
        max_name_bytes: usize::MAX,
        max_future_skew: std::time::Duration::MAX,
    };
    let batch =
        otlp_wire::decode(payload, &unbounded).map_err(|e| format!("undecodable payload: {e}"))?;
    Ok(batch.spans)
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

    fn bytes_of(frame: &Frame) -> Vec<u8> {
        [&frame.header[..], &frame.payload].concat()
    }

    fn record(seq: u64, name: &str) -> Vec<u8> {
        let span = Span {
            name: name.to_string(),
            ..Span::default()
        };
        let mut frame = encode_record(&[span]).unwrap();
        frame.set_seq(seq);
        bytes_of(&frame)
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
    fn damage_in_the_middle_is_a_gap_and_the_records_after_it_are_read() {
        let mut bytes = record(1, "a");
        let damaged_at = bytes.len();
        bytes.extend(record(2, "b"));
        let resumed_at = bytes.len();
        bytes.extend(record(3, "c"));
        bytes.extend(record(4, "d"));
        bytes[damaged_at + HEADER_LEN + 2] ^= 0x55;
        let s = scan(&bytes, bounds());
        let seqs: Vec<u64> = s.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 3, 4]);
        assert_eq!(s.damage, None);
        assert_eq!(s.valid_len, bytes.len() as u64);
        let gap = &s.gaps[..];
        assert_eq!(gap.len(), 1);
        assert_eq!(
            (gap[0].offset, gap[0].len),
            (damaged_at as u64, (resumed_at - damaged_at) as u64)
        );
        assert_eq!((gap[0].first_lost, gap[0].last_lost), (2, 2));
        assert!(gap[0].reason.contains("checksum"));
        // The valid records' bytes are what a rewrite keeps.
        let kept: Vec<u8> = s
            .ranges
            .iter()
            .flat_map(|r| bytes[r.clone()].to_vec())
            .collect();
        let again = scan(&kept, bounds());
        assert_eq!(again.records.len(), 3);
        assert!(again.gaps.is_empty() && again.damage.is_none());
    }

    #[test]
    fn otlp_records_replay_as_the_spans_they_were_decoded_to() {
        use crate::decode::otlp::{decode_protobuf, tests::rich_span, to_request};
        use prost::Message;

        let request = to_request(&[rich_span(2, "a"), rich_span(3, "b")]).encode_to_vec();
        let mut bytes = record(1, "postcard");
        let mut frame = encode_otlp_record(request.clone().into()).unwrap();
        frame.set_seq(2);
        bytes.extend(bytes_of(&frame));
        bytes.extend(record(3, "after"));
        let read = scan(&bytes, bounds());
        assert_eq!(read.damage, None);
        let names: Vec<&str> = read
            .records
            .iter()
            .flat_map(|r| &r.spans)
            .map(|s| &*s.name)
            .collect();
        assert_eq!(names.len(), 4);
        assert_eq!((names[0], names[3]), ("postcard", "after"));
        let expected = decode_protobuf(&request, &Limits::default()).unwrap().spans;
        assert_eq!(read.records[1].spans, expected);

        // A damaged OTLP payload with a matching checksum is damage, not an empty batch.
        let mut frame = encode_otlp_record(Bytes::from_static(b"\xff\xff\xff\xff")).unwrap();
        frame.set_seq(1);
        let damaged = scan(&bytes_of(&frame), bounds());
        assert!(damaged.records.is_empty());
        assert!(damaged.damage.unwrap().contains("undecodable"));
    }

    /// Found by the `wal_recover` fuzz target: a record whose (unchecksummed) sequence number
    /// was `u64::MAX` was replayed, and recovery then overflowed computing the next one.
    #[test]
    fn scan_rejects_the_largest_sequence_number_as_damage() {
        let mut bytes = record(1, "a");
        bytes.extend(record(u64::MAX, "b"));
        let s = scan(&bytes, bounds());
        assert_eq!(s.records.len(), 1);
        assert!(s.damage.unwrap().contains("out of range"));
        // Between two good records it is a gap: what follows is still read.
        bytes.extend(record(3, "c"));
        let s = scan(&bytes, bounds());
        let seqs: Vec<u64> = s.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!((s.gaps[0].first_lost, s.gaps[0].last_lost), (2, 2));
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
