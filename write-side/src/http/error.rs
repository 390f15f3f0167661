//! `ApiError`: every way a request can fail, and the only code that knows status codes.
//!
//! Errors are RFC 9457 `application/problem+json` documents:
//! `{"type": "/problems/<code>", "title", "status", "detail", "instance", "code",
//! "request_id"}` plus `errors` (a list of `{pointer, detail}`) for invalid fields and
//! `current_version` for a failed precondition. `code` (and so `type`) is stable: clients
//! branch on it. A 5xx body says only "internal error"; the cause goes to the log, through
//! the response's extensions (see `http::middleware`), so converting has no side effects.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::rejection::{Rejection, RejectionKind};
use infra::commands::ExecuteError;
use serde::Serialize;
use utoipa::ToSchema;

use super::middleware::current_request_id;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) to the offending value, e.g. `/lines/0/quantity`.
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl ToString) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.to_string(),
        }
    }
}

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
    #[error("the request is malformed: {detail}")]
    BadRequest { detail: String },
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
    #[error("no route matches {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request took too long and was abandoned")]
    Timeout,
    #[error("the service cannot serve requests right now")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `/problems/<code>`: a stable identifier of the problem type.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    /// What went wrong for this request, and what to change.
    pub detail: String,
    /// Stable, snake_case: branch on this.
    pub code: &'static str,
    /// The `x-request-id` of the request, to quote when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// The full error chain of a failed request, left in the response extensions for the
/// logging middleware.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    pub code: &'static str,
    pub chain: Arc<String>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson { .. }
            | ApiError::InvalidBody { .. }
            | ApiError::Validation { .. }
            | ApiError::InvalidHeader { .. }
            | ApiError::InvalidPathParameter { .. }
            | ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound { .. } | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Rejected { .. } | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict | ApiError::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ApiError::Timeout | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::NotFound { code, .. } | ApiError::Rejected { code, .. } => code,
            ApiError::PreconditionFailed { .. } => "version_mismatch",
            ApiError::Conflict => "concurrency_conflict",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Timeout => "timeout",
            ApiError::Unavailable(_) => "unavailable",
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
            ApiError::BadRequest { .. } => "Bad request",
            ApiError::NotFound { .. } | ApiError::RouteNotFound { .. } => "Not found",
            ApiError::Rejected { .. } => "Request rejected by a business rule",
            ApiError::PreconditionFailed { .. } => "Precondition failed",
            ApiError::Conflict => "Conflict",
            ApiError::IdempotencyKeyReused => "Idempotency key reused",
            ApiError::IdempotencyKeyInFlight => "Idempotency key in flight",
            ApiError::MethodNotAllowed { .. } => "Method not allowed",
            ApiError::Timeout => "Timeout",
            ApiError::Unavailable(_) => "Service unavailable",
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
        let status = self.status();
        let code = self.code();
        let detail = match &self {
            // Never leak internals: the log has the chain, the client gets the request id.
            ApiError::Internal(_) => "internal error".to_owned(),
            ApiError::Unavailable(_) => "the service cannot serve requests right now".to_owned(),
            other => other.to_string(),
        };
        let (errors, current_version) = match &self {
            ApiError::InvalidBody { errors } | ApiError::Validation { errors } => {
                (errors.clone(), None)
            }
            ApiError::PreconditionFailed { current_version } => {
                (Vec::new(), Some(*current_version))
            }
            _ => (Vec::new(), None),
        };
        let problem = Problem {
            problem_type: format!("/problems/{code}"),
            title: self.title(),
            status: status.as_u16(),
            detail,
            code,
            request_id: current_request_id(),
            errors,
            current_version,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(version) = current_version
            && let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\""))
        {
            response.headers_mut().insert(header::ETAG, etag);
        }
        response.extensions_mut().insert(ErrorReport {
            code,
            chain: Arc::new(infra::telemetry::err_chain(&self)),
        });
        response
    }
}
