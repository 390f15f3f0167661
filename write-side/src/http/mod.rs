//! The HTTP surface of the command API: routes, middleware, OpenAPI document and docs page.

pub mod error;
pub mod extract;
pub mod health;
pub mod middleware;
pub mod response;
pub mod validate;

use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::handlers::{inventory, orders};
use crate::state::AppState;
use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ordo command API",
        description = "Commands for inventory items and orders. Every success returns the aggregate's \
            new `version` (also its `ETag`) and `position`, the consistency token the query API \
            accepts. Every error is `application/problem+json` with a stable `code`. Every POST \
            accepts an `Idempotency-Key`.",
    ),
    tags(
        (name = "inventory", description = "Inventory items, one per SKU"),
        (name = "orders", description = "Orders and their lifecycle"),
        (name = "operations", description = "Probes"),
    ),
    components(schemas(error::Problem, error::FieldError)),
)]
struct ApiDoc;

/// The router with its OpenAPI document, before middleware.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(inventory::register_item))
        .routes(routes!(inventory::restock_item))
        .routes(routes!(orders::place_order))
        .routes(routes!(orders::cancel_order))
        .routes(routes!(orders::ship_order))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .split_for_parts()
}

/// The whole application: routes, `/openapi.json`, the `/docs` page (Swagger UI embedded in
/// the binary, so it works offline) and the middleware stack.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let (api, openapi) = api();
    let middleware = ServiceBuilder::new()
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
                .on_response(DefaultOnResponse::new().level(Level::INFO))
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
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(|request: Request<axum::body::Body>| async move {
            ApiError::RouteNotFound {
                method: request.method().to_string(),
                path: request.uri().path().to_owned(),
            }
        })
        .with_state(state)
        .layer(middleware)
}
