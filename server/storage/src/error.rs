//! The storage error type and its mapping to the status codes the HTTP and gRPC APIs return.

use std::time::Duration;

/// The class of a [`StorageError`], as the APIs report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    Timeout,
    /// Too busy now; retry later (429 with `Retry-After`).
    Overloaded,
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Timeout => 504,
            ErrorCode::Overloaded => 429,
            ErrorCode::Internal => 500,
        }
    }

    /// The numeric gRPC status code (the values of `tonic::Code`).
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument => 3,
            ErrorCode::NotFound => 5,
            ErrorCode::Timeout => 4,
            ErrorCode::Overloaded => 8,
            ErrorCode::Internal => 13,
        }
    }
}

/// Everything that can go wrong in the span store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("span conversion: {0}")]
    Model(#[from] meshtrace_model::ModelError),
    #[error("catalog holds a bad value for {what}: {value}")]
    BadCatalogValue { what: &'static str, value: String },
    /// A write that would move something backwards (a priority version not above the stored
    /// one).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Cluster mode: another node claimed the partition since this one did (its epoch moved).
    #[error("partition {partition} is owned by another node now")]
    Fenced { partition: u32 },
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("file system: {0}")]
    Io(String),
    /// The catalog reported an error for a transaction's commit itself: it may have been
    /// stored (see `commit.rs`).
    #[error("catalog commit outcome unknown: {0}")]
    CommitOutcomeUnknown(String),
}

/// Work refused while the process is short of memory: overloaded, retry later.
impl From<meshtrace_model::memory::Exceeded> for StorageError {
    fn from(e: meshtrace_model::memory::Exceeded) -> Self {
        StorageError::Overloaded(format!("{e}; retry later"))
    }
}

impl StorageError {
    /// The class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StorageError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            StorageError::NotFound(_) => ErrorCode::NotFound,
            StorageError::Timeout(_) => ErrorCode::Timeout,
            StorageError::Overloaded(_) => ErrorCode::Overloaded,
            _ => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_http_and_grpc() {
        let e = StorageError::InvalidArgument("only queries".into());
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert_eq!(e.code().http_status(), 400);
        assert_eq!(e.code().grpc_code(), 3);
        let t = StorageError::Timeout(Duration::from_secs(1));
        assert_eq!((t.code().http_status(), t.code().grpc_code()), (504, 4));
        let n = StorageError::NotFound("trace".into());
        assert_eq!((n.code().http_status(), n.code().grpc_code()), (404, 5));
        let i = StorageError::Config("x".into());
        assert_eq!((i.code().http_status(), i.code().grpc_code()), (500, 13));
    }
}
