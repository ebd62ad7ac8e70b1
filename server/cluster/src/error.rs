//! The cluster crate's error type, with its one mapping to an ingest error code (and so to HTTP
//! and gRPC).

use meshtrace_collector::ErrorCode;

/// Errors of cluster set-up, leases and the span codec.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// NATS or JetStream did not answer or refused.
    #[error("NATS: {0}")]
    Nats(String),
    #[error("span message: {0}")]
    Codec(String),
}

impl ClusterError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ClusterError::Config(_) | ClusterError::Codec(_) => ErrorCode::InvalidArgument,
            ClusterError::Nats(_) => ErrorCode::Unavailable,
        }
    }

    pub(crate) fn nats(what: &str, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Nats(format!("{what}: {e}"))
    }
}
