//! Request-scoped plumbing: the request id, turning bare error responses into problems, and
//! logging every failed request once, with its full error chain.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorReport, PROBLEM_JSON};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled on this task (set by [`request_context`]).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs the rest of the stack with the request id in scope, then:
/// - replaces an error response that has no problem body (an unmatched route's 405, the
///   timeout layer's 503, a caught panic) with a problem, so every error has one shape;
/// - logs the error chain: 5xx at ERROR, 4xx at INFO (a client mistake is not our
///   incident, but it is worth seeing).
pub async fn request_context(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    REQUEST_ID
        .scope(request_id, async move {
            let response = next.run(request).await;
            let response = problemize(response, method, path);
            if let Some(report) = response.extensions().get::<ErrorReport>() {
                if response.status().is_server_error() {
                    tracing::error!(code = report.code, error = %report.chain, "request failed");
                } else {
                    tracing::info!(code = report.code, error = %report.chain, "request rejected");
                }
            }
            response
        })
        .await
}

fn problemize(response: Response, method: String, path: String) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let error = match status {
        StatusCode::BAD_REQUEST => ApiError::BadRequest {
            detail: "check the path and headers".to_owned(),
        },
        StatusCode::NOT_FOUND => ApiError::RouteNotFound { method, path },
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed { method, path },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
            limit: super::extract::BODY_LIMIT,
        },
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
        _ => ApiError::Internal(anyhow::anyhow!(
            "a layer answered {status} without a problem body"
        )),
    };
    error.into_response()
}

/// The response for a handler that panicked: a 500 problem; the panic message is logged.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}
