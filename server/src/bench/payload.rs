//! The load generator's payloads: a pool of distinct OTLP export requests, encoded once, sent
//! again and again with fresh trace IDs, through a gRPC codec that writes the encoded bytes
//! as they are.
//!
//! Building and encoding a request of 500 spans costs the generator about as much CPU as the
//! server spends ingesting it, and both share the machine's cores. Encoding once and only
//! rewriting the trace IDs (16 bytes at offsets found when the pool is built) keeps every
//! request a distinct set of traces while the generator's own cost stays small. On the wire
//! it is the same `TraceService/Export` call any OTLP exporter makes.

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;

/// One encoded request and where its trace IDs sit in it.
pub struct Payload {
    body: Vec<u8>,
    /// Per trace, the offsets of each copy of its ID in `body`.
    trace_id_offsets: Vec<Vec<usize>>,
    pub spans: usize,
}

impl Payload {
    /// Encodes `req` and finds every copy of each trace ID in the bytes.
    pub fn new(
        req: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    ) -> Payload {
        let body = req.encode_to_vec();
        let mut ids: Vec<&[u8]> = Vec::new();
        let mut spans = 0;
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    spans += 1;
                    if !ids.contains(&s.trace_id.as_slice()) {
                        ids.push(&s.trace_id);
                    }
                }
            }
        }
        let trace_id_offsets = ids
            .iter()
            .map(|id| memchr::memmem::find_iter(&body, id).collect())
            .collect();
        Payload {
            body,
            trace_id_offsets,
            spans,
        }
    }

    /// A copy of the request whose trace IDs are all new: the last 8 bytes of each are XORed
    /// with `salt` (distinct per send) and the trace's index, so traces stay whole.
    pub fn render(&self, salt: u64) -> Bytes {
        let mut body = self.body.clone();
        for (t, offsets) in self.trace_id_offsets.iter().enumerate() {
            let mask = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t as u64;
            for &at in offsets {
                let tail = &mut body[at + 8..at + 16];
                let v = u64::from_le_bytes(tail.try_into().unwrap_or_default()) ^ mask;
                tail.copy_from_slice(&v.to_le_bytes());
            }
        }
        Bytes::from(body)
    }
}

/// Sends already encoded request bytes; decodes the OTLP response.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_collector::decode::otlp;
    use meshtrace_collector::Limits;

    #[test]
    fn rendered_payloads_have_new_whole_traces() {
        let mut rng = rand::thread_rng();
        let (req, n) = super::super::request(&mut rng, 5);
        let p = Payload::new(&req);
        assert_eq!(p.spans, n);
        assert_eq!(p.trace_id_offsets.len(), 5);
        let limits = Limits::default();
        let traces = |b: &[u8]| {
            let batch = otlp::decode_protobuf(b, &limits).unwrap();
            assert_eq!(batch.spans.len(), n);
            let ids: std::collections::BTreeSet<_> =
                batch.spans.iter().map(|s| s.trace_id).collect();
            ids
        };
        let (a, b) = (traces(&p.render(1)), traces(&p.render(2)));
        assert_eq!(
            a.len(),
            5,
            "each trace's spans stay together under one new ID"
        );
        assert_eq!(b.len(), 5);
        assert!(
            a.iter().all(|id| !b.contains(id)),
            "each send has its own IDs"
        );
    }
}
