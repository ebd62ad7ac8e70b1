//! OTLP gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The service is written out here instead of taken from `opentelemetry-proto`'s generated
//! `TraceServiceServer` for one reason: its codec. The generated one decodes the request
//! message straight from tonic's receive buffer, a `BytesMut` behind a length-limited view,
//! where every varint and every field pays a bounds check and a buffer advance through two
//! layers. [`RequestCodec`] instead takes the whole (already decompressed, size-checked)
//! message as one `Bytes` (split off the buffer, not copied) and [`otlp::decode_protobuf`]
//! decodes it from a plain slice, as the bench's decode-only ceiling does; the same bytes are
//! what the write-ahead log keeps for a batch accepted whole. Routing, gzip and
//! the decoded size limit are tonic's, as in the generated server. The caller's token is
//! checked ([`crate::auth`]) before the message is read.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use meshtrace_model::tenant::TenantId;

use super::Ingest;
use crate::auth::{authorization, police, tenant_header, tenant_of, Access, Caller};
use crate::decode::otlp;
use crate::peer::Peer;
use crate::Error;

/// The gRPC method path of an OTLP trace export.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP trace service; build it with [`service`].
#[derive(Clone)]
pub struct OtlpGrpc {
    ingest: Arc<Ingest>,
    max_decoded: usize,
}

/// The gRPC trace service with gzip and the configured decompressed size limit.
pub fn service(ingest: Ingest) -> OtlpGrpc {
    let max_decoded = ingest.config().max_decompressed_bytes;
    OtlpGrpc {
        ingest: Arc::new(ingest),
        max_decoded,
    }
}

impl NamedService for OtlpGrpc {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for OtlpGrpc
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let peer = Peer::of(req.extensions());
        let auth = self.ingest.auth();
        let decided = auth
            .authorize(authorization(req.headers()), &peer, Access::INGEST)
            .and_then(|caller| {
                let tenant = tenant_of(&caller, tenant_header(req.headers()))?;
                Ok((caller, tenant))
            });
        let (caller, tenant) = match decided {
            Ok(decided) => decided,
            Err(e) => return Box::pin(async move { Ok(e.grpc_status().into_http()) }),
        };
        // Short of memory: refused before the message is read.
        if let Err(e) = self.ingest.admit() {
            self.ingest.record_failure("otlp_grpc", &e);
            let status = to_status(&e);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let this = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(RequestCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(this.max_decoded);
            Ok(grpc.unary(Export(this.ingest, caller, tenant), req).await)
        })
    }
}

/// One export call.
struct Export(Arc<Ingest>, Caller, TenantId);

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (ingest, caller, tenant) = (self.0.clone(), self.1.clone(), self.2.clone());
        Box::pin(async move { export(&ingest, (&caller, &tenant), request.into_inner()).await })
    }
}

async fn export(
    ingest: &Ingest,
    (caller, tenant): (&Caller, &TenantId),
    body: Bytes,
) -> Result<Response<ExportTraceServiceResponse>, Status> {
    let mut batch = otlp::decode_protobuf(&body, ingest.limits()).map_err(|e| {
        ingest.record_failure("otlp_grpc", &e);
        to_status(&e)
    })?;
    police(caller, &mut batch);
    let outcome = ingest
        .submit_otlp("otlp_grpc", tenant, batch, body)
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "otlp grpc export failed");
            to_status(&e)
        })?;
    let partial_success = (outcome.rejected > 0).then_some(ExportTracePartialSuccess {
        rejected_spans: outcome.rejected as i64,
        error_message: outcome.message,
    });
    Ok(Response::new(ExportTraceServiceResponse {
        partial_success,
    }))
}

/// Requests arrive as the message's bytes; responses are encoded with prost.
#[derive(Clone, Copy, Default)]
pub struct RequestCodec;

/// Takes the whole message off tonic's buffer without copying it.
pub struct RequestDecoder;

/// Encodes the export response.
pub struct ResponseEncoder;

impl Codec for RequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

impl Decoder for RequestDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

/// Maps a collector error to a gRPC status, with `RetryInfo` when the client should retry.
pub fn to_status(error: &Error) -> Status {
    let code = error.code().grpc_code();
    match error.retry_after() {
        Some(delay) => Status::with_error_details(
            code,
            error.to_string(),
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        None => Status::new(code, error.to_string()),
    }
}
