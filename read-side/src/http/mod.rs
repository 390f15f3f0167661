//! The HTTP surface of the query API: routes, the OpenAPI document and the docs page. The
//! middleware stack and the error format are shared with the command API (`http-kit`).

pub mod conditional;
pub mod error;
pub mod params;

use std::time::Duration;

use axum::Router;
use http_kit::health;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::handlers::{customers, inventory, orders, projections, sagas, stats};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ordo query API",
        description = "Read models kept by the projections. Send the `consistency_token` (or the \
            `position`) a command returned as `X-Consistency-Token` to read your own write: the query waits (up to `?wait=`, \
            default 2s, at most 10s) until the read model has applied it, or answers 503. Every \
            answer has an `ETag`; `If-None-Match` gets 304. Errors are \
            `application/problem+json` with a stable `code`.",
    ),
    tags(
        (name = "orders", description = "Orders and customers' orders"),
        (name = "inventory", description = "Stock and prices"),
        (name = "stats", description = "Reports"),
        (name = "operations", description = "Projections, sagas and probes"),
    ),
    components(schemas(http_kit::ProblemBody, http_kit::FieldError)),
)]
struct ApiDoc;

/// The router with its OpenAPI document, before middleware.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(orders::get_order))
        .routes(routes!(customers::list_customer_orders))
        .routes(routes!(inventory::get_item))
        .routes(routes!(inventory::list_items))
        .routes(routes!(stats::sales))
        .routes(routes!(projections::list_projections))
        .routes(routes!(sagas::list_sagas))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .split_for_parts()
}

/// The whole application: routes, `/openapi.json`, the `/docs` page (embedded, works
/// offline) and the middleware stack.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let (api, openapi) = api();
    let router = api
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .with_state(state);
    http_kit::stack::wrap(router, request_timeout)
}
