//! RFC 9457 problem details: `{"type": "/problems/<code>", "title", "status", "detail",
//! "code", "request_id", ...extensions}`. `code` (and so `type`) is stable and snake_case:
//! clients branch on it.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::middleware::current_request_id;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) to the offending value, e.g. `/lines/0/quantity`; for query
    /// parameters, the parameter's name.
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

/// The error body, as documented in the OpenAPI documents.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// `/problems/<code>`: a stable identifier of the problem type.
    #[serde(rename = "type")]
    #[schema(example = "/problems/validation_failed")]
    pub problem_type: String,
    #[schema(example = "Validation failed")]
    pub title: String,
    #[schema(example = 400)]
    pub status: u16,
    /// What went wrong for this request, and what to change.
    pub detail: String,
    /// Stable, snake_case: branch on this.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// The `x-request-id` of the request, to quote when reporting a problem.
    pub request_id: Option<String>,
    /// Invalid fields, when there are some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// A problem response under construction.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    extensions: serde_json::Map<String, serde_json::Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
    report: Option<Arc<String>>,
}

/// What the logging middleware finds in the extensions of a failed response: the problem's
/// code and the whole error chain behind it.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    pub code: &'static str,
    pub chain: Arc<String>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            headers: Vec::new(),
            report: None,
        }
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// Adds a member to the body (RFC 9457 extension members).
    pub fn with_extension(mut self, key: &str, value: impl Serialize) -> Self {
        if let Ok(value) = serde_json::to_value(value) {
            self.extensions.insert(key.to_owned(), value);
        }
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// The cause, for the log only: never sent to the client.
    pub fn with_report(mut self, err: &(dyn std::error::Error + 'static)) -> Self {
        self.report = Some(Arc::new(infra::telemetry::err_chain(err)));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("type".into(), format!("/problems/{}", self.code).into());
        body.insert("title".into(), self.title.into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.clone().into());
        body.insert("code".into(), self.code.into());
        body.insert("request_id".into(), current_request_id().into());
        if !self.errors.is_empty() {
            body.insert(
                "errors".into(),
                serde_json::to_value(&self.errors).unwrap_or_default(),
            );
        }
        for (key, value) in self.extensions {
            body.entry(key).or_insert(value);
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (self.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response.extensions_mut().insert(ErrorReport {
            code: self.code,
            chain: self.report.unwrap_or_else(|| Arc::new(self.detail)),
        });
        response
    }
}

/// Problems every API shares.
pub mod common {
    use super::*;

    pub fn route_not_found(method: &str, path: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "Not found",
            format!("no route matches {method} {path}; see /openapi.json"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Problem {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    pub fn timeout() -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Timeout",
            "the request took too long and was abandoned",
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Bad request",
            detail,
        )
    }

    /// A 500 that says nothing about its cause; the cause goes to the log.
    pub fn internal(err: &(dyn std::error::Error + 'static)) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
            "internal error",
        )
        .with_report(err)
    }

    pub fn unavailable(err: &(dyn std::error::Error + 'static)) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            "the service cannot serve requests right now",
        )
        .with_report(err)
    }
}
