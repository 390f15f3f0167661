//! `POST /orders`, `POST /orders/{id}/cancel` and `POST /orders/{id}/ship`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use domain::ids::{CustomerId, OrderId};
use domain::money::Quantity;
use domain::order::{CancelReason, OrderCommand, OrderLine, OrderLines};
use domain::ports::Catalog;
use domain::text::{CardToken, Sku};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use http_kit::ProblemBody as Problem;

use infra::commands::CommandOptions;

use crate::http::error::ApiError;
use crate::http::extract::{CommandBody, CommandRequest};
use crate::http::response::{Accepted, OrderAccepted};
use crate::http::validate::{Validator, valid};
use crate::state::AppState;

/// One line of a new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    #[schema(example = "MUG-BLUE")]
    pub sku: String,
    /// At least 1.
    #[schema(example = 2)]
    pub quantity: i64,
}

/// How the customer pays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    /// The payment provider's token for the customer's card.
    #[schema(example = "tok_visa")]
    pub card_token: String,
}

/// Place an order. Prices are not sent: they are the items' prices when stock is reserved.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    #[schema(example = "7d9f2b1e-0c4a-4f7e-9a57-2f4c1d3e5b6a")]
    pub customer_id: String,
    /// 1 to 100 lines, each SKU at most once.
    pub lines: Vec<LineBody>,
    pub payment: PaymentBody,
}

impl CommandBody for PlaceOrderBody {}

struct PlaceOrder {
    customer_id: CustomerId,
    lines: OrderLines,
    card_token: CardToken,
}

impl PlaceOrderBody {
    fn parse(self) -> Result<PlaceOrder, ApiError> {
        let mut v = Validator::new();
        let customer_id = v.field("/customer_id", self.customer_id.parse::<CustomerId>());
        let card_token = v.field(
            "/payment/card_token",
            CardToken::parse(self.payment.card_token),
        );
        let mut lines = Vec::with_capacity(self.lines.len());
        if self.lines.len() > OrderLines::MAX_LINES {
            v.error(
                "/lines",
                format!("an order may have at most {} lines", OrderLines::MAX_LINES),
            );
        } else {
            for (index, line) in self.lines.into_iter().enumerate() {
                let sku = v.field(&format!("/lines/{index}/sku"), Sku::parse(line.sku));
                let quantity = v.field(
                    &format!("/lines/{index}/quantity"),
                    Quantity::from_i64(line.quantity),
                );
                if let (Some(sku), Some(quantity)) = (sku, quantity) {
                    lines.push(OrderLine { sku, quantity });
                }
            }
        }
        v.finish()?;
        let mut v = Validator::new();
        let lines = v.field("/lines", OrderLines::new(lines));
        v.finish()?;
        Ok(PlaceOrder {
            customer_id: valid(customer_id)?,
            lines: valid(lines)?,
            card_token: valid(card_token)?,
        })
    }
}

/// Cancel an order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderBody {
    /// One of `customer_request`, `out_of_stock`, `payment_declined`, `payment_timeout`.
    #[schema(example = "customer_request")]
    pub reason: String,
}

impl CommandBody for CancelOrderBody {}

/// Ship an order. The body is empty (or `{}`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipOrderBody {}

impl CommandBody for ShipOrderBody {
    const OPTIONAL: bool = true;
}

fn parse_order_id(id: &str) -> Result<OrderId, ApiError> {
    id.parse::<OrderId>()
        .map_err(|err| ApiError::InvalidPathParameter {
            name: "id",
            detail: err.to_string(),
        })
}

/// Place an order for registered SKUs. Unknown SKUs are refused (`unknown_sku`).
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = PlaceOrderBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key: the same key with the same body replays the first response (the same order id)"),
    ),
    responses(
        (status = 201, description = "Placed: status `pending`", body = OrderAccepted,
            headers(("ETag" = String, description = "The order's version"), ("Location" = String))),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown SKU (`unknown_sku`), mixed currencies, or the key was reused", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(order_id))]
pub async fn place_order(
    State(app): State<AppState>,
    request: CommandRequest<PlaceOrderBody>,
) -> Result<Accepted<OrderAccepted>, ApiError> {
    // Ids and time are minted at the edge; a replay answers with the first request's id.
    let order_id = OrderId::from(Uuid::new_v4());
    tracing::Span::current().record("order_id", tracing::field::display(&order_id));
    let order = request.body.parse()?;
    let skus: Vec<Sku> = order.lines.skus().cloned().collect();
    let catalog = app
        .catalog
        .facts_for(&skus)
        .await
        .map_err(|err| ApiError::Internal(err.into()))?;
    let command = OrderCommand::Place {
        customer_id: order.customer_id,
        lines: order.lines,
        card_token: order.card_token,
        catalog,
        at: app.clock.now(),
    };
    // The id was minted above: there is nothing to load.
    let options = CommandOptions {
        new_aggregate: true,
        ..request.options
    };
    let committed = app
        .orders
        .execute(&order_id.to_string(), command, options)
        .await
        .map_err(ApiError::from_execute)?;
    Ok(Accepted::order(StatusCode::CREATED, committed))
}

/// Cancel an order that has not shipped.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    request_body = CancelOrderBody,
    params(
        ("id" = String, Path, description = "The order id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key"),
        ("If-Match" = Option<String>, Header, description = "Only if the order is at this version (its ETag)"),
    ),
    responses(
        (status = 200, description = "Cancelled (or already cancelled)", body = OrderAccepted),
        (status = 400, description = "Invalid body or id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (`order_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale (`version_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Already shipped (`order_already_shipped`)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn cancel_order(
    State(app): State<AppState>,
    Path(id): Path<String>,
    request: CommandRequest<CancelOrderBody>,
) -> Result<Accepted<OrderAccepted>, ApiError> {
    let order_id = parse_order_id(&id)?;
    let mut v = Validator::new();
    let reason = v.field("/reason", request.body.reason.parse::<CancelReason>());
    v.finish()?;
    let command = OrderCommand::Cancel {
        reason: valid(reason)?,
        at: app.clock.now(),
    };
    let committed = app
        .orders
        .execute(&order_id.to_string(), command, request.options)
        .await
        .map_err(ApiError::from_execute)?;
    Ok(Accepted::order(StatusCode::OK, committed))
}

/// Ship a confirmed (paid) order.
#[utoipa::path(post, path = "/orders/{id}/ship", tag = "orders",
    params(
        ("id" = String, Path, description = "The order id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key"),
        ("If-Match" = Option<String>, Header, description = "Only if the order is at this version (its ETag)"),
    ),
    responses(
        (status = 200, description = "Shipped (or already shipped)", body = OrderAccepted),
        (status = 400, description = "Invalid id or a non-empty body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (`order_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale (`version_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not confirmed yet (`order_not_confirmed`) or cancelled (`order_cancelled`)", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn ship_order(
    State(app): State<AppState>,
    Path(id): Path<String>,
    request: CommandRequest<ShipOrderBody>,
) -> Result<Accepted<OrderAccepted>, ApiError> {
    let order_id = parse_order_id(&id)?;
    let command = OrderCommand::Ship {
        at: app.clock.now(),
    };
    let committed = app
        .orders
        .execute(&order_id.to_string(), command, request.options)
        .await
        .map_err(ApiError::from_execute)?;
    Ok(Accepted::order(StatusCode::OK, committed))
}
