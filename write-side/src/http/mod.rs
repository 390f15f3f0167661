//! The HTTP surface of the command API: routes, the OpenAPI document and the docs page. The
//! middleware stack and the error format are shared with the query API (`http-kit`).

pub mod error;
pub mod extract;
pub mod response;
pub mod validate;

use std::time::Duration;

use axum::Router;
use http_kit::health;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::handlers::{inventory, orders, sagas};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ordo command API",
        description = "Commands for inventory items and orders. Every success returns the aggregate's \
            new `version` (also its `ETag`), the `position` of its latest event and a \
            `consistency_token` the query API accepts to read the write. Every error is `application/problem+json` with a stable `code`. Every POST \
            accepts an `Idempotency-Key`.",
    ),
    tags(
        (name = "inventory", description = "Inventory items, one per SKU"),
        (name = "orders", description = "Orders and their lifecycle"),
        (name = "operations", description = "Saga retries and probes"),
    ),
    components(schemas(http_kit::ProblemBody, http_kit::FieldError)),
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
        .routes(routes!(sagas::retry_saga))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .split_for_parts()
}

/// The whole application: routes, `/openapi.json`, the `/docs` page (Swagger UI embedded in
/// the binary, so it works offline) and the middleware stack.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let (api, openapi) = api();
    let router = api
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .with_state(state);
    http_kit::stack::wrap(router, request_timeout)
}
