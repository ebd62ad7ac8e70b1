//! The load generator's payloads: a pool of distinct OTLP export requests, encoded once, sent
//! again and again with fresh trace IDs, over OTLP gRPC (a codec that writes the encoded bytes
//! as they are) or OTLP/HTTP with JSON bodies ([`Protocol`], [`Sender`]).
//!
//! Building and encoding a request of 500 spans costs the generator about as much CPU as the
//! server spends ingesting it, and both share the machine's cores. Encoding once and only
//! rewriting the trace IDs (16 bytes, or 32 hex digits in JSON, at offsets found when the pool
//! is built) keeps every request a distinct set of traces while the generator's own cost stays
//! small. On the wire it is the same `TraceService/Export` call or `POST /v1/traces` any OTLP
//! exporter makes; the JSON is what the SDKs' JSON exporters write (hex IDs, 64-bit integers
//! as strings).

use std::time::Duration;

use bytes::{BufMut, Bytes};
use meshtrace_collector::decode::otlp_json;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;

/// How the load generator sends its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP gRPC, protobuf (port 4317)
    Grpc,
    /// OTLP/HTTP with JSON bodies (port 4318)
    HttpJson,
}

impl Protocol {
    /// The encoded request.
    pub fn encode(self, req: &ExportTraceServiceRequest) -> Vec<u8> {
        match self {
            Protocol::Grpc => req.encode_to_vec(),
            Protocol::HttpJson => {
                serde_json::to_vec(&otlp_json::encode_request(req)).unwrap_or_default()
            }
        }
    }
}

/// One encoded request and where its trace IDs sit in it.
pub struct Payload {
    body: Vec<u8>,
    protocol: Protocol,
    /// Per trace, the offsets of each copy of its ID in `body`.
    trace_id_offsets: Vec<Vec<usize>>,
    pub spans: usize,
}

impl Payload {
    /// Encodes `req` and finds every copy of each trace ID in the bytes.
    pub fn new(req: &ExportTraceServiceRequest, protocol: Protocol) -> Payload {
        let body = protocol.encode(req);
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
            .map(|id| match protocol {
                Protocol::Grpc => memchr::memmem::find_iter(&body, id).collect(),
                Protocol::HttpJson => memchr::memmem::find_iter(&body, &hex::encode(id)).collect(),
            })
            .collect();
        Payload {
            body,
            protocol,
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
                match self.protocol {
                    Protocol::Grpc => {
                        let tail = &mut body[at + 8..at + 16];
                        let v = u64::from_le_bytes(tail.try_into().unwrap_or_default()) ^ mask;
                        tail.copy_from_slice(&v.to_le_bytes());
                    }
                    Protocol::HttpJson => {
                        let tail = &mut body[at + 16..at + 32];
                        let text = std::str::from_utf8(tail).unwrap_or_default();
                        let v = u64::from_str_radix(text, 16).unwrap_or_default() ^ mask;
                        tail.copy_from_slice(format!("{v:016x}").as_bytes());
                    }
                }
            }
        }
        Bytes::from(body)
    }
}

/// An export client that sends pre-encoded requests.
pub enum Sender {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

/// Why an export failed: the server shed load (429 or 503, `RESOURCE_EXHAUSTED` or
/// `UNAVAILABLE`: try again later) or something else.
pub enum SendError {
    Busy,
    Failed(String),
}

impl Sender {
    /// A client of `endpoint` (`http://host:port`, the port of `protocol`).
    pub async fn connect(endpoint: &str, protocol: Protocol) -> anyhow::Result<Sender> {
        use anyhow::Context;
        Ok(match protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                Sender::Grpc(tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20))
            }
            Protocol::HttpJson => Sender::Http {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?,
                url: format!("{endpoint}/v1/traces"),
            },
        })
    }

    /// Sends one request and waits for its acknowledgement.
    pub async fn send(&mut self, body: Bytes) -> Result<(), SendError> {
        match self {
            Sender::Grpc(client) => {
                client
                    .ready()
                    .await
                    .map_err(|e| SendError::Failed(e.to_string()))?;
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                );
                let request = tonic::Request::new(body);
                match client
                    .unary::<_, ExportTraceServiceResponse, _>(request, path, RawCodec)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                        ) =>
                    {
                        Err(SendError::Busy)
                    }
                    Err(s) => Err(SendError::Failed(s.to_string())),
                }
            }
            Sender::Http { client, url } => {
                let response = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| SendError::Failed(e.to_string()))?;
                match response.status().as_u16() {
                    200 => Ok(()),
                    429 | 503 => Err(SendError::Busy),
                    status => Err(SendError::Failed(format!("HTTP {status}"))),
                }
            }
        }
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
        let limits = Limits::default();
        for protocol in [Protocol::Grpc, Protocol::HttpJson] {
            let p = Payload::new(&req, protocol);
            assert_eq!(p.spans, n);
            assert_eq!(p.trace_id_offsets.len(), 5);
            let traces = |b: &[u8]| {
                let batch = match protocol {
                    Protocol::Grpc => otlp::decode_protobuf(b, &limits).unwrap(),
                    Protocol::HttpJson => otlp_json::decode(b, &limits).unwrap(),
                };
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
}
