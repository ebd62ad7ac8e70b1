//! `POST /api/v1/sql` `{"sql": "SELECT ..."}`: read-only SQL through the query layer.

use axum::extract::State;
use axum::Json;
use meshtrace_query::SqlResult;
use serde::Deserialize;
use utoipa::ToSchema;

use super::access::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::ApiState;

/// The body of a SQL request.
#[derive(Deserialize, ToSchema)]
pub struct SqlRequest {
    /// One read-only statement (a query or EXPLAIN) over `spans`, `traces`, `edges`,
    /// `critical_path` and their `*_versions`.
    #[schema(min_length = 1)]
    pub sql: String,
}

/// Runs one read-only query; anything but a query is refused with 400.
#[utoipa::path(
    post,
    path = "/api/v1/sql",
    tag = "sql",
    request_body = SqlRequest,
    responses(
        (status = 200, description = "the rows, IDs as hex", body = SqlResult),
        (status = 400, description = "not a read-only query, or it does not plan", body = ErrorBody),
        (status = 401, description = "no bearer token, or an unknown one (when tokens are configured)", body = ErrorBody),
        (status = 403, description = "the token lacks the read scope; without tokens, the client is not on loopback", body = ErrorBody),
        (status = 415, description = "the body is not sent as `application/json`", body = ErrorBody),
        (status = 429, description = "too many queries are running; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 504, description = "the query ran past the time limit", body = ErrorBody),
    )
)]
pub async fn query(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Json<SqlResult>, ApiError> {
    let req: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("body must be a JSON object {{\"sql\": \"...\"}}: {e}"),
        )
    })?;
    Ok(Json(state.queries.sql(&req.sql).await?))
}
