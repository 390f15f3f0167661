//! `ApiError`: every way a command request can fail, and the only code in this crate that
//! knows status codes.
//!
//! Errors are RFC 9457 problems (`http_kit::Problem`), with `errors` (a list of
//! `{pointer, detail}`) for invalid fields and `current_version` for a failed precondition.
//! A 5xx body says only "internal error"; the cause goes to the log through the response's
//! extensions (see `http_kit::middleware`), so converting has no side effects.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::rejection::{Rejection, RejectionKind};
pub use http_kit::FieldError;
use http_kit::Problem;
use http_kit::problem::common;
use infra::commands::ExecuteError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {detail}")]
    MalformedJson { detail: String },
    #[error("the request body does not have the expected shape")]
    InvalidBody { errors: Vec<FieldError> },
    #[error("some fields of the request are invalid")]
    Validation { errors: Vec<FieldError> },
    #[error("the request body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("header {header} is invalid: {detail}")]
    InvalidHeader {
        header: &'static str,
        detail: String,
    },
    #[error("path parameter {name} is invalid: {detail}")]
    InvalidPathParameter { name: &'static str, detail: String },
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    #[error("{detail}")]
    Rejected { code: &'static str, detail: String },
    #[error(
        "the resource is at version {current_version}, not the one in If-Match; fetch it again and retry"
    )]
    PreconditionFailed { current_version: u64 },
    #[error("concurrent updates kept conflicting with this request; retry it")]
    Conflict,
    #[error(
        "this Idempotency-Key was already used with a different request; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    #[error(
        "a request with this Idempotency-Key is still being processed; retry after it completes"
    )]
    IdempotencyKeyInFlight,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson { .. }
            | ApiError::InvalidBody { .. }
            | ApiError::Validation { .. }
            | ApiError::InvalidHeader { .. }
            | ApiError::InvalidPathParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Rejected { .. } | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict | ApiError::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson { .. } => "malformed_json",
            ApiError::InvalidBody { .. } => "invalid_body",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::InvalidHeader { .. } => "invalid_header",
            ApiError::InvalidPathParameter { .. } => "invalid_path_parameter",
            ApiError::NotFound { code, .. } | ApiError::Rejected { code, .. } => code,
            ApiError::PreconditionFailed { .. } => "version_mismatch",
            ApiError::Conflict => "concurrency_conflict",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::MalformedJson { .. } => "Malformed JSON",
            ApiError::InvalidBody { .. } => "Invalid request body",
            ApiError::Validation { .. } => "Validation failed",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::InvalidHeader { .. } => "Invalid header",
            ApiError::InvalidPathParameter { .. } => "Invalid path parameter",
            ApiError::NotFound { .. } => "Not found",
            ApiError::Rejected { .. } => "Request rejected by a business rule",
            ApiError::PreconditionFailed { .. } => "Precondition failed",
            ApiError::Conflict => "Conflict",
            ApiError::IdempotencyKeyReused => "Idempotency key reused",
            ApiError::IdempotencyKeyInFlight => "Idempotency key in flight",
            ApiError::Internal(_) => "Internal error",
        }
    }

    /// Maps a command execution failure. Rejections keep the domain's code.
    pub fn from_execute<E: Rejection + 'static>(err: ExecuteError<E>) -> Self {
        match err {
            ExecuteError::Rejected(rejection) => {
                let code = rejection.code();
                let detail = rejection.to_string();
                match rejection.kind() {
                    RejectionKind::NotFound => ApiError::NotFound { code, detail },
                    RejectionKind::RuleViolated => ApiError::Rejected { code, detail },
                }
            }
            ExecuteError::VersionMismatch { actual, .. } => ApiError::PreconditionFailed {
                current_version: actual,
            },
            ExecuteError::Conflict { .. } => ApiError::Conflict,
            ExecuteError::IdempotencyKeyReused { .. } => ApiError::IdempotencyKeyReused,
            ExecuteError::IdempotencyKeyInFlight { .. } => ApiError::IdempotencyKeyInFlight,
            ExecuteError::Store(err) => ApiError::Internal(err.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut problem = Problem::new(self.status(), self.code(), self.title(), self.to_string());
        match &self {
            ApiError::InvalidBody { errors } | ApiError::Validation { errors } => {
                problem = problem.with_errors(errors.clone());
            }
            ApiError::PreconditionFailed { current_version } => {
                problem = problem
                    .with_extension("current_version", current_version)
                    .with_header(header::ETAG, &format!("\"{current_version}\""));
            }
            // Never leak internals: the log gets the chain, the client the request id.
            ApiError::Internal(err) => return common::internal(err.as_ref()).into_response(),
            _ => {}
        }
        problem.with_report(&self).into_response()
    }
}
