//! The query layer's error type, classified by the store's [`ErrorCode`] (mapped once to an
//! HTTP status and once to a gRPC code there).

pub use meshtrace_storage::ErrorCode;
use meshtrace_storage::StorageError;

/// Everything a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The question itself is wrong (bounds inverted, a malformed value); the message names
    /// what.
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A table answered without a column the query reads, or with another type: a bug or a
    /// damaged file, never silently read as zero.
    #[error("column {column} of {table} is missing or has type {found}")]
    Column {
        table: &'static str,
        column: &'static str,
        found: String,
    },
}

impl QueryError {
    /// The class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            QueryError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            QueryError::Storage(e) => e.code(),
            QueryError::Column { .. } => ErrorCode::Internal,
        }
    }
}

impl From<arrow::error::ArrowError> for QueryError {
    fn from(e: arrow::error::ArrowError) -> QueryError {
        QueryError::Storage(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cause() {
        let bad = QueryError::InvalidArgument("start after end".into());
        assert_eq!(bad.code().http_status(), 400);
        let timeout = QueryError::from(StorageError::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!(timeout.code().http_status(), 504);
        let column = QueryError::Column {
            table: "edges",
            column: "status",
            found: "Int64".into(),
        };
        assert_eq!(column.code().grpc_code(), 13);
    }
}
