//! `QueryError`: every way a query can fail, rendered as an RFC 9457 problem.

use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
pub use http_kit::FieldError;
use http_kit::Problem;
use http_kit::problem::common;

use crate::consistency::ConsistencyError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("path parameter {name} is invalid: {detail}")]
    InvalidPathParameter { name: &'static str, detail: String },
    #[error("some query parameters are invalid")]
    InvalidQuery { errors: Vec<FieldError> },
    #[error(
        "the cursor is invalid; pass back a next_cursor exactly as a previous page returned it"
    )]
    InvalidCursor,
    #[error("X-Consistency-Token is invalid: {detail}")]
    InvalidConsistencyToken { detail: String },
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    #[error(transparent)]
    Consistency(#[from] ConsistencyError),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for QueryError {
    fn from(err: sqlx::Error) -> Self {
        QueryError::Internal(err.into())
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let bad_request =
            |code, title| Problem::new(StatusCode::BAD_REQUEST, code, title, self.to_string());
        let problem = match &self {
            QueryError::InvalidPathParameter { .. } => {
                bad_request("invalid_path_parameter", "Invalid path parameter")
            }
            QueryError::InvalidQuery { errors } => {
                bad_request("invalid_query", "Invalid query parameters").with_errors(errors.clone())
            }
            QueryError::InvalidCursor => bad_request("invalid_cursor", "Invalid cursor"),
            QueryError::InvalidConsistencyToken { .. } => {
                bad_request("invalid_consistency_token", "Invalid consistency token")
            }
            QueryError::NotFound { code, detail } => {
                Problem::new(StatusCode::NOT_FOUND, code, "Not found", detail.clone())
            }
            QueryError::Consistency(ConsistencyError::UnknownPosition { .. }) => {
                bad_request("invalid_consistency_token", "Invalid consistency token")
            }
            QueryError::Consistency(ConsistencyError::Behind {
                projection,
                position,
                behind_by,
                checkpoint_position,
            }) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "projection_behind",
                "Read model not up to date",
                format!(
                    "projection {projection} has not applied position {position} yet: it is \
                     {behind_by} event(s) behind; retry, or wait longer with ?wait= (at most 10s)"
                ),
            )
            .with_extension("projection", projection)
            .with_extension("behind_by_events", behind_by)
            .with_extension("checkpoint_position", checkpoint_position)
            .with_header(HeaderName::from_static("retry-after"), "1"),
            QueryError::Consistency(ConsistencyError::NotRunning {
                projection, state, ..
            }) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "projection_not_running",
                "Read model not up to date",
                format!("{self}; see GET /projections for its last error"),
            )
            .with_extension("projection", projection)
            .with_extension("state", state),
            QueryError::Consistency(ConsistencyError::Database(err)) => {
                return common::internal(err).into_response();
            }
            QueryError::Internal(err) => return common::internal(err.as_ref()).into_response(),
        };
        problem.with_report(&self).into_response()
    }
}
