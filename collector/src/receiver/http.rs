//! HTTP receivers: OTLP `POST /v1/traces` (protobuf and JSON) and Zipkin `POST /api/v2/spans`.
//!
//! Both read the body under a size cap, undo gzip under a second cap (so a small compressed
//! body cannot expand without bound), check the content type, decode, and answer with the
//! protocol's own shape. Errors are JSON `{"error": "..."}` with the status of the error code;
//! overload adds a `Retry-After` header.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use meshtrace_model::tenant::TenantId;

use super::{Ingest, Outcome};
use crate::auth::{self, Caller, Tenant};
use crate::decode::{otlp, otlp_json, zipkin};
use crate::Error;

/// The router of the OTLP HTTP port.
pub fn otlp_router(ingest: Ingest) -> Router {
    let guard = ingest_guard(&ingest);
    Router::new()
        .route("/v1/traces", post(otlp_traces))
        .route_layer(axum::middleware::from_fn_with_state(guard, auth::require))
        .with_state(ingest)
}

/// The router of the Zipkin port.
pub fn zipkin_router(ingest: Ingest) -> Router {
    let guard = ingest_guard(&ingest);
    Router::new()
        .route("/api/v2/spans", post(zipkin_spans))
        .route_layer(axum::middleware::from_fn_with_state(guard, auth::require))
        .with_state(ingest)
}

/// Every ingest route needs the `ingest` scope.
fn ingest_guard(ingest: &Ingest) -> auth::Guard {
    auth::Guard {
        auth: ingest.auth().clone(),
        access: |_, _| Some(auth::Access::INGEST),
    }
}

/// Turns a collector error into an HTTP response.
pub fn error_response(error: &Error) -> Response {
    let status = error.code().http_status();
    let body = serde_json::json!({ "error": error.to_string() });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(delay) = error.retry_after() {
        let secs = delay.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// The media type of a request's `Content-Type`, lowercase, without parameters ("" if none).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads the whole body under `max_body_bytes` and decompresses it under
/// `max_decompressed_bytes`; refuses it unread while the process is short of memory.
pub async fn read_body(ingest: &Ingest, headers: &HeaderMap, body: Body) -> Result<Bytes, Error> {
    ingest.admit()?;
    let limit = ingest.config().max_body_bytes;
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .map(|s| s.is::<http_body_util::LengthLimitError>())
            .unwrap_or(false)
            || e.to_string().contains("length limit");
        if too_large {
            Error::PayloadTooLarge {
                size: limit + 1,
                limit,
            }
        } else {
            Error::InvalidArgument(format!("could not read request body: {e}"))
        }
    })?;
    let encoding = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => gunzip(&raw, ingest.config().max_decompressed_bytes),
        other => Err(Error::UnsupportedMediaType {
            got: format!("content-encoding {other}"),
            expected: "identity or gzip",
        }),
    }
}

fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, Error> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    let decoder = flate2::read::MultiGzDecoder::new(raw);
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::InvalidArgument(format!("invalid gzip body: {e}")))?;
    if out.len() > limit {
        return Err(Error::PayloadTooLarge {
            size: out.len(),
            limit,
        });
    }
    Ok(Bytes::from(out))
}

async fn otlp_traces(
    State(ingest): State<Ingest>,
    caller: Caller,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding = match media_type(&headers).as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            let e = Error::UnsupportedMediaType {
                got: other.to_string(),
                expected: "application/x-protobuf or application/json",
            };
            ingest.record_failure("otlp_http", &e);
            return error_response(&e);
        }
    };
    let who = (&caller, &tenant);
    match otlp_ingest(&ingest, who, &headers, body, encoding).await {
        Ok(outcome) => otlp_success(encoding, outcome),
        Err(e) => {
            ingest.record_failure("otlp_http", &e);
            error_response(&e)
        }
    }
}

async fn otlp_ingest(
    ingest: &Ingest,
    (caller, tenant): (&Caller, &TenantId),
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<Outcome, Error> {
    let bytes = read_body(ingest, headers, body).await?;
    match encoding {
        Encoding::Protobuf => {
            let mut batch = otlp::decode_protobuf(&bytes, ingest.limits())?;
            auth::police(caller, &mut batch);
            ingest.submit_otlp("otlp_http", tenant, batch, bytes).await
        }
        Encoding::Json => {
            let mut batch = otlp_json::decode(&bytes, ingest.limits())?;
            auth::police(caller, &mut batch);
            ingest.submit("otlp_http", tenant, batch).await
        }
    }
}

fn otlp_success(encoding: Encoding, outcome: Outcome) -> Response {
    match encoding {
        Encoding::Protobuf => {
            let partial_success = (outcome.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: outcome.rejected as i64,
                error_message: outcome.message,
            });
            let body = ExportTraceServiceResponse { partial_success }.encode_to_vec();
            (
                StatusCode::OK,
                [(CONTENT_TYPE, "application/x-protobuf")],
                body,
            )
                .into_response()
        }
        Encoding::Json => {
            let body = if outcome.rejected > 0 {
                serde_json::json!({"partialSuccess": {
                    "rejectedSpans": outcome.rejected.to_string(),
                    "errorMessage": outcome.message,
                }})
            } else {
                serde_json::json!({})
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

async fn zipkin_spans(
    State(ingest): State<Ingest>,
    caller: Caller,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A JSON content type also keeps browsers from sending spans cross-origin without a
    // CORS preflight (which this port never grants).
    let media = media_type(&headers);
    if media != "application/json" {
        let e = Error::UnsupportedMediaType {
            got: media,
            expected: "application/json",
        };
        ingest.record_failure("zipkin", &e);
        return error_response(&e);
    }
    let result = async {
        let bytes = read_body(&ingest, &headers, body).await?;
        let mut batch = zipkin::decode(&bytes, ingest.limits())?;
        auth::police(&caller, &mut batch);
        ingest.submit("zipkin", &tenant, batch).await
    }
    .await;
    match result {
        Ok(outcome) if outcome.rejected > 0 => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({
                "rejectedSpans": outcome.rejected,
                "errorMessage": outcome.message,
            })),
        )
            .into_response(),
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            ingest.record_failure("zipkin", &e);
            error_response(&e)
        }
    }
}
