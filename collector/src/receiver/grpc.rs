//! OTLP gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::Ingest;
use crate::decode::otlp;
use crate::Error;

/// The tonic service; build it with [`service`].
pub struct OtlpGrpc {
    ingest: Ingest,
}

/// The gRPC trace service with gzip and the configured decompressed size limit.
pub fn service(ingest: Ingest) -> TraceServiceServer<OtlpGrpc> {
    let max = ingest.config().max_decompressed_bytes;
    TraceServiceServer::new(OtlpGrpc { ingest })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max)
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

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let batch = otlp::from_request(request.into_inner(), self.ingest.limits());
        let outcome = self.ingest.submit("otlp_grpc", batch).await.map_err(|e| {
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
}
