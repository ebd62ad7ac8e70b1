//! The collector's error type, with one mapping to HTTP status and one to gRPC status.

use std::time::Duration;

use meshtrace_model::memory::Exceeded;

/// What kind of failure an [`Error`] is; each maps once to HTTP and once to gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    PayloadTooLarge,
    UnsupportedMediaType,
    ResourceExhausted,
    /// A dependency (the disk) failed for now; retry later.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> http::StatusCode {
        match self {
            ErrorCode::InvalidArgument => http::StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ResourceExhausted => http::StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::PayloadTooLarge => tonic::Code::InvalidArgument,
            ErrorCode::UnsupportedMediaType => tonic::Code::InvalidArgument,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }
}

/// Errors of the ingest path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("request body of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("unsupported content type {got:?}; use {expected}")]
    UnsupportedMediaType { got: String, expected: &'static str },
    #[error("ingest pipeline is full; retry after {}ms", retry_after.as_millis())]
    Overloaded { retry_after: Duration },
    #[error("write-ahead log: {0}")]
    Wal(String),
    /// The spans could not be made durable for now (a full disk, flushes failing with the
    /// buffer full, the span stream away); nothing was kept, retry later.
    #[error("{reason}; retry after {}ms", retry_after.as_millis())]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A new tenant would pass the configured number of tenants.
    #[error("{0}")]
    TenantLimit(String),
    /// The process is over its memory budget (`[memory] budget_mib`): nothing was kept,
    /// retry once the server has shed memory.
    #[error("{exceeded}; retry after {}ms", MEMORY_RETRY_AFTER.as_millis())]
    MemoryBudget { exceeded: Exceeded },
}

/// The retry delay while the memory budget is spent: the server sheds within a second or two.
pub const MEMORY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::UnsupportedMediaType { .. } => ErrorCode::UnsupportedMediaType,
            Error::Overloaded { .. } | Error::TenantLimit(_) | Error::MemoryBudget { .. } => {
                ErrorCode::ResourceExhausted
            }
            Error::Unavailable { .. } => ErrorCode::Unavailable,
            Error::Wal(_) | Error::Io(_) => ErrorCode::Internal,
        }
    }

    /// The delay a client should wait before retrying, for overload errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Overloaded { retry_after } | Error::Unavailable { retry_after, .. } => {
                Some(*retry_after)
            }
            Error::MemoryBudget { .. } => Some(MEMORY_RETRY_AFTER),
            _ => None,
        }
    }
}
