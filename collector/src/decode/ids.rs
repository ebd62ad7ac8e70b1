//! Parsing of trace and span IDs from text: hex of either case, left-padded short hex (Zipkin,
//! Jaeger), base64 (Tempo), and a deterministic hash for IDs that are not hex at all.

use base64::Engine;
use meshtrace_model::{SpanId, TraceId};

/// Attribute key holding a trace ID that was not hex and was mapped by hashing.
pub const ORIGINAL_TRACE_ID: &str = "meshtrace.original_trace_id";
/// Attribute key holding a span ID that was not hex and was mapped by hashing.
pub const ORIGINAL_SPAN_ID: &str = "meshtrace.original_span_id";
/// Attribute key holding a parent span ID that was not hex and was mapped by hashing.
pub const ORIGINAL_PARENT_ID: &str = "meshtrace.original_parent_id";

/// Decodes hex of either case into bytes.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| format!("{s:?} is not hex: {e}"))
}

/// Decodes an OTLP/JSON ID: hex as the spec says, or base64 as Tempo writes it. The length is
/// left for validation to check.
pub fn decode_hex_or_base64(s: &str) -> Result<Vec<u8>, String> {
    if let Ok(bytes) = hex::decode(s) {
        return Ok(bytes);
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| format!("{s:?} is neither hex nor base64"))
}

/// Parses 1 to 2·N hex characters into N bytes, left-padding with zeros (64-bit Zipkin and
/// Jaeger trace IDs, IDs written without leading zeros).
pub fn padded_hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    if s.is_empty() || s.len() > 2 * N {
        return Err(format!(
            "{s:?} must be 1 to {} hex characters, got {}",
            2 * N,
            s.len()
        ));
    }
    let mut padded = String::with_capacity(2 * N);
    padded.extend(std::iter::repeat_n('0', 2 * N - s.len()));
    padded.push_str(s);
    let bytes = decode_hex(&padded).map_err(|_| format!("{s:?} is not hex"))?;
    let mut out = [0; N];
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// A trace ID from any text: padded hex when it is hex, else a 128-bit FNV-1a hash.
/// The boolean says whether the text was hashed.
pub fn trace_id_from_text(s: &str) -> (TraceId, bool) {
    match padded_hex::<16>(s) {
        Ok(id) => (id, false),
        Err(_) => (nonzero(fnv1a_128(s.as_bytes()).to_be_bytes()), true),
    }
}

/// A span ID from any text: padded hex when it is hex, else a 64-bit FNV-1a hash.
/// The boolean says whether the text was hashed.
pub fn span_id_from_text(s: &str) -> (SpanId, bool) {
    match padded_hex::<8>(s) {
        Ok(id) => (id, false),
        Err(_) => (nonzero(fnv1a_64(s.as_bytes()).to_be_bytes()), true),
    }
}

fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

fn fnv1a_64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fnv1a_128(data: &[u8]) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for &b in data {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_hex_left_pads_and_accepts_upper_case() {
        let id = padded_hex::<16>("ABCDEF0123456789").unwrap();
        assert_eq!(hex::encode(id), "0000000000000000abcdef0123456789");
        assert_eq!(padded_hex::<8>("1").unwrap(), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(padded_hex::<8>("00112233445566778").is_err());
        assert!(padded_hex::<8>("xyz").is_err());
        assert!(padded_hex::<8>("").is_err());
    }

    #[test]
    fn text_ids_hash_non_hex_deterministically() {
        let (a, hashed) = span_id_from_text("span-C");
        assert!(hashed);
        assert_eq!(a, span_id_from_text("span-C").0);
        assert_ne!(a, span_id_from_text("span-D").0);
        let (t, hashed) = trace_id_from_text("006c3cf93508f205");
        assert!(!hashed);
        assert_eq!(hex::encode(t), "0000000000000000006c3cf93508f205");
        assert!(trace_id_from_text("test1-trace").1);
    }

    #[test]
    fn otlp_json_ids_accept_hex_or_base64() {
        assert_eq!(decode_hex_or_base64("EEE19B7EC3C1B174").unwrap().len(), 8);
        let tempo = decode_hex_or_base64("O6VWCcPN5JZJzXfR+dzZNg==").unwrap();
        assert_eq!(hex::encode(tempo), "3ba55609c3cde49649cd77d1f9dcd936");
        assert!(decode_hex_or_base64("not an id!").is_err());
    }
}
