//! The one error type of the query port's handlers, [`ApiError`], and the three envelopes it
//! is answered in: meshtrace's own `/api/v1` body `{"error", "field"}` ([`ApiError`] itself),
//! the Jaeger API's `{"data": null, "errors": [{"code", "msg"}]}` ([`JaegerError`]) and
//! api_v3's `google.rpc.Status` `{"code", "message"}` ([`RpcStatus`]). The status of every
//! error comes from its [`ErrorCode`], mapped once to HTTP and once to gRPC.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshtrace_query::{ErrorCode, QueryError};
use meshtrace_storage::StorageError;
use serde::Serialize;
use utoipa::ToSchema;

use super::jaeger_json::{Envelope, JaegerErrorItem};

/// A failed API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The parameter or body field at fault, if one is.
    pub field: Option<String>,
}

impl ApiError {
    /// A malformed or missing parameter or field, named.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            code: ErrorCode::NotFound,
            message: message.into(),
            field: None,
        }
    }

    /// A failure of the server; logged with its cause.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %cause, "request failed");
        ApiError {
            code: ErrorCode::Internal,
            message: cause.to_string(),
            field: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e.code() {
            ErrorCode::Internal => ApiError::internal(e),
            code => ApiError {
                code,
                message: e.to_string(),
                field: None,
            },
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        QueryError::from(e).into()
    }
}

/// The error body of meshtrace's own API.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The parameter or body field at fault, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = (self.status(), self.code);
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        with_retry_after(code, (status, Json(body)).into_response())
    }
}

/// Adds `Retry-After` to the errors a client should retry later.
fn with_retry_after(code: ErrorCode, mut response: Response) -> Response {
    if code == ErrorCode::Overloaded {
        let second = axum::http::HeaderValue::from_static("1");
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, second);
    }
    response
}

/// An [`ApiError`] in the Jaeger query API's envelope.
#[derive(Debug)]
pub struct JaegerError(pub ApiError);

impl From<ApiError> for JaegerError {
    fn from(e: ApiError) -> JaegerError {
        JaegerError(e)
    }
}

impl From<QueryError> for JaegerError {
    fn from(e: QueryError) -> JaegerError {
        JaegerError(e.into())
    }
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let (status, code) = (self.0.status(), self.0.code);
        let body = Envelope::<()>::failed(JaegerErrorItem {
            code: status.as_u16(),
            msg: self.0.message,
        });
        with_retry_after(code, (status, Json(body)).into_response())
    }
}

/// An [`ApiError`] as api_v3's `google.rpc.Status`.
#[derive(Debug)]
pub struct RpcStatus(pub ApiError);

#[derive(Serialize)]
struct StatusBody {
    code: i32,
    message: String,
}

impl From<ApiError> for RpcStatus {
    fn from(e: ApiError) -> RpcStatus {
        RpcStatus(e)
    }
}

impl From<QueryError> for RpcStatus {
    fn from(e: QueryError) -> RpcStatus {
        RpcStatus(e.into())
    }
}

impl IntoResponse for RpcStatus {
    fn into_response(self) -> Response {
        let (status, code) = (self.0.status(), self.0.code);
        let body = StatusBody {
            code: code.grpc_code(),
            message: self.0.message,
        };
        with_retry_after(code, (status, Json(body)).into_response())
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn body(r: Response) -> (u16, serde_json::Value) {
        let status = r.status().as_u16();
        let bytes = to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn one_error_three_envelopes() {
        let e = ApiError::invalid("limit", "malformed parameter 'limit': \"x\"");
        let (status, v1) = body(e.clone().into_response()).await;
        assert_eq!(status, 400);
        assert_eq!(v1["field"], "limit");
        let (_, jaeger) = body(JaegerError(e.clone()).into_response()).await;
        assert_eq!(jaeger["errors"][0]["code"], 400);
        assert!(jaeger["data"].is_null());
        let (_, v3) = body(RpcStatus(e).into_response()).await;
        assert_eq!(v3["code"], 3);
        let missing = ApiError::not_found("trace not found");
        let (status, v3) = body(RpcStatus(missing).into_response()).await;
        assert_eq!((status, v3["code"].as_i64()), (404, Some(5)));
    }
}
