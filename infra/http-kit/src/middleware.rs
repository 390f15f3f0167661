//! Request-scoped plumbing: the request id, problem bodies for bare error responses, and one
//! log line per failed request with its full error chain.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::{ErrorReport, PROBLEM_JSON, common};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled on this task (set by [`request_context`]).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs the rest of the stack with the request id in scope, then:
/// - replaces an error response without a problem body (axum's 405, the timeout layer's
///   503, a rejection from an extractor we did not write) with a problem, so every error
///   has one shape;
/// - logs failures once: 5xx at ERROR with the cause, 4xx at INFO (a client's mistake is
///   not our incident, but it is worth seeing).
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
            let response = problemize(response, &method, &path);
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

fn problemize(response: Response, method: &str, path: &str) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let problem = match status {
        StatusCode::BAD_REQUEST => common::bad_request("check the path, query and headers"),
        StatusCode::NOT_FOUND => common::route_not_found(method, path),
        StatusCode::METHOD_NOT_ALLOWED => common::method_not_allowed(method, path),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => common::timeout(),
        _ => common::internal(
            anyhow::anyhow!("a layer answered {status} without a problem body").as_ref(),
        ),
    };
    problem.into_response()
}

/// The response for a handler that panicked: a 500 problem; the panic message is logged.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    common::internal(anyhow::anyhow!("handler panicked: {message}").as_ref()).into_response()
}
