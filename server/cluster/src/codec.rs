//! One JetStream message: the spans of one partition from one ingest request.
//!
//! ```text
//! +---------+------------------------------+
//! | version | postcard-encoded Vec<Span>   |
//! | u8 = 1  |                              |
//! +---------+------------------------------+
//! ```
//!
//! A request's spans for one partition that would exceed [`MAX_MESSAGE_BYTES`] (NATS refuses
//! messages over its `max_payload`, 1 MiB by default) are split over several messages. Each
//! message's ID (`Nats-Msg-Id`) is derived from its bytes, so a client's retry of a request
//! (to the same node or any other) publishes messages with the same IDs, which JetStream
//! drops as duplicates within the stream's duplicate window (`[cluster] duplicate_window`).

use bytes::Bytes;
use meshtrace_model::Span;

use crate::partition::fnv1a64;
use crate::ClusterError;

/// The format version byte written first in every message.
pub const VERSION: u8 = 1;

/// The largest message built (below NATS's default 1 MiB `max_payload`, with room for headers).
pub const MAX_MESSAGE_BYTES: usize = 960 * 1024;

/// Encodes `spans` as one or more messages of at most [`MAX_MESSAGE_BYTES`] (a single span
/// larger than that is one message of its own, which NATS may refuse).
pub fn encode(spans: &[Span]) -> Result<Vec<Bytes>, ClusterError> {
    let mut out = Vec::new();
    encode_into(spans, &mut out)?;
    Ok(out)
}

fn encode_into(spans: &[Span], out: &mut Vec<Bytes>) -> Result<(), ClusterError> {
    let mut buf = vec![VERSION];
    let buf = postcard::to_extend(spans, std::mem::take(&mut buf))
        .map_err(|e| ClusterError::Codec(format!("encoding spans: {e}")))?;
    if buf.len() <= MAX_MESSAGE_BYTES || spans.len() <= 1 {
        out.push(Bytes::from(buf));
        return Ok(());
    }
    let (a, b) = spans.split_at(spans.len() / 2);
    encode_into(a, out)?;
    encode_into(b, out)
}

/// Decodes a message built by [`encode`].
pub fn decode(payload: &[u8]) -> Result<Vec<Span>, ClusterError> {
    match payload.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body)
            .map_err(|e| ClusterError::Codec(format!("decoding spans: {e}"))),
        Some((v, _)) => Err(ClusterError::Codec(format!(
            "message format version {v} is not known (this node reads {VERSION})"
        ))),
        None => Err(ClusterError::Codec("empty message".into())),
    }
}

/// The message ID JetStream deduplicates by: the partition, then a 64-bit FNV-1a and a CRC-32
/// of the bytes, then their length.
pub fn message_id(partition: u32, payload: &[u8]) -> String {
    format!(
        "{partition}-{:016x}{:08x}-{}",
        fnv1a64(payload),
        crc32fast::hash(payload),
        payload.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_model::{AttrValue, KeyValue, SpanKind, StatusCode};

    fn span(i: u64, attr_bytes: usize) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: i.to_be_bytes(),
            name: format!("op-{i}"),
            service_name: "svc".into(),
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_000_000_000 + i as i64,
            duration_nano: 100_000,
            status_code: StatusCode::Ok,
            attributes: vec![KeyValue {
                key: "blob".into(),
                value: AttrValue::Str("x".repeat(attr_bytes)),
            }],
            ..Span::default()
        }
    }

    #[test]
    fn round_trips_and_splits_large_parts() {
        let spans: Vec<Span> = (0..300).map(|i| span(i, 10_000)).collect();
        let messages = encode(&spans).unwrap();
        assert!(messages.len() >= 4, "{} messages", messages.len());
        assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES));
        let back: Vec<Span> = messages.iter().flat_map(|m| decode(m).unwrap()).collect();
        assert_eq!(back, spans);
    }

    #[test]
    fn retries_get_the_same_ids_and_other_bytes_other_ids() {
        let a = encode(&[span(1, 10)]).unwrap();
        let again = encode(&[span(1, 10)]).unwrap();
        let b = encode(&[span(2, 10)]).unwrap();
        assert_eq!(message_id(3, &a[0]), message_id(3, &again[0]));
        assert_ne!(message_id(3, &a[0]), message_id(3, &b[0]));
        assert_ne!(message_id(3, &a[0]), message_id(4, &a[0]));
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 1, 2])
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        assert!(decode(&[VERSION, 0xff, 0xff, 0xff]).is_err());
    }
}
