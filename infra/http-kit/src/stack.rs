//! The middleware stack both APIs run behind, outermost first: a request id (taken from
//! `x-request-id` or minted), a tracing span per request (its completion logged at DEBUG: an
//! access log, off by default), the id echoed in the response, the request context (problems
//! and one log line per failure), panics as 500s, and a timeout.

use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::middleware;
use crate::problem::common;

/// Adds the fallback for unknown routes and the middleware stack to a finished router.
pub fn wrap(router: Router, request_timeout: Duration) -> Router {
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id,
                    )
                })
                // Successful requests at DEBUG: at INFO, formatting and writing a line per
                // request cost the query API 40% of its cached-read throughput (BENCHMARKS.md).
                // `RUST_LOG=info,tower_http=debug` turns the access log on.
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // Failures are logged once, with their cause, by `request_context`.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn(middleware::request_context))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ));
    router
        .fallback(|request: Request<axum::body::Body>| async move {
            common::route_not_found(request.method().as_str(), request.uri().path())
        })
        .layer(layers)
}
