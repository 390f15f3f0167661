//! `POST /inventory` and `POST /inventory/{sku}/restock`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use domain::Timestamp;
use domain::inventory::InventoryCommand;
use domain::money::{Currency, Money, Quantity};
use domain::text::{ItemName, Sku};
use serde::Deserialize;
use utoipa::ToSchema;

use http_kit::ProblemBody as Problem;

use crate::http::error::ApiError;
use crate::http::extract::{CommandBody, CommandRequest};
use crate::http::response::{Accepted, ItemAccepted};
use crate::http::validate::{Validator, valid};
use crate::state::AppState;

/// An amount of money in minor units (cents for EUR) of an ISO 4217 currency.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    /// Minor units, zero or more.
    #[schema(example = 1250)]
    pub amount_minor: i64,
    /// ISO 4217 code, upper case.
    #[schema(example = "EUR")]
    pub currency: String,
}

/// Register a new SKU.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterItemBody {
    /// 1 to 64 of ASCII letters, digits, `-`, `_`, `.`; starts with a letter or digit.
    #[schema(example = "MUG-BLUE")]
    pub sku: String,
    #[schema(example = "Blue mug")]
    pub name: String,
    pub unit_price: MoneyBody,
    /// Units on hand at registration, zero or more.
    #[schema(example = 25)]
    pub initial_stock: i64,
}

impl CommandBody for RegisterItemBody {}

impl RegisterItemBody {
    fn into_command(self, at: Timestamp) -> Result<(Sku, InventoryCommand), ApiError> {
        let mut v = Validator::new();
        let sku = v.field("/sku", Sku::parse(self.sku));
        let name = v.field("/name", ItemName::parse(&self.name));
        let currency = v.field(
            "/unit_price/currency",
            Currency::parse(&self.unit_price.currency),
        );
        if self.unit_price.amount_minor < 0 {
            v.error("/unit_price/amount_minor", "must not be negative");
        }
        let initial_stock = v.field(
            "/initial_stock",
            u32::try_from(self.initial_stock)
                .ok()
                .filter(|stock| *stock <= Quantity::MAX)
                .ok_or(format!("must be between 0 and {}", Quantity::MAX)),
        );
        v.finish()?;
        let unit_price = Money::new(self.unit_price.amount_minor, valid(currency)?)
            .map_err(|err| ApiError::Internal(err.into()))?;
        let sku = valid(sku)?;
        let command = InventoryCommand::Register {
            sku: sku.clone(),
            name: valid(name)?,
            unit_price,
            initial_stock: valid(initial_stock)?,
            at,
        };
        Ok((sku, command))
    }
}

/// Add stock to a SKU.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockBody {
    /// Units received, at least 1.
    #[schema(example = 10)]
    pub quantity: i64,
}

impl CommandBody for RestockBody {}

pub(crate) fn parse_sku(sku: String) -> Result<Sku, ApiError> {
    Sku::parse(sku).map_err(|err| ApiError::InvalidPathParameter {
        name: "sku",
        detail: err.to_string(),
    })
}

/// Register an inventory item (one per SKU) with its price and initial stock.
#[utoipa::path(post, path = "/inventory", tag = "inventory",
    request_body = RegisterItemBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key: the same key with the same body replays the first response"),
    ),
    responses(
        (status = 201, description = "Registered", body = ItemAccepted,
            headers(("ETag" = String, description = "The item's version"), ("Location" = String))),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The SKU is already registered (`sku_already_registered`), or the key was reused", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(sku))]
pub async fn register_item(
    State(app): State<AppState>,
    request: CommandRequest<RegisterItemBody>,
) -> Result<Accepted<ItemAccepted>, ApiError> {
    let (sku, command) = request.body.into_command(app.clock.now())?;
    tracing::Span::current().record("sku", sku.as_str());
    let committed = app
        .inventory
        .execute(sku.as_str(), command, request.options)
        .await
        .map_err(ApiError::from_execute)?;
    Ok(Accepted::item(StatusCode::CREATED, committed))
}

/// Add stock to a registered SKU.
#[utoipa::path(post, path = "/inventory/{sku}/restock", tag = "inventory",
    request_body = RestockBody,
    params(
        ("sku" = String, Path, description = "The SKU"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key"),
        ("If-Match" = Option<String>, Header, description = "Only if the item is at this version (its ETag)"),
    ),
    responses(
        (status = 200, description = "Restocked", body = ItemAccepted,
            headers(("ETag" = String, description = "The item's version"))),
        (status = 400, description = "Invalid body or SKU", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such SKU (`inventory_item_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale (`version_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A business rule refused it", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn restock_item(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    request: CommandRequest<RestockBody>,
) -> Result<Accepted<ItemAccepted>, ApiError> {
    let sku = parse_sku(sku)?;
    let mut v = Validator::new();
    let quantity = v.field("/quantity", Quantity::from_i64(request.body.quantity));
    v.finish()?;
    let command = InventoryCommand::Restock {
        quantity: valid(quantity)?,
        at: app.clock.now(),
    };
    let committed = app
        .inventory
        .execute(sku.as_str(), command, request.options)
        .await
        .map_err(ApiError::from_execute)?;
    Ok(Accepted::item(StatusCode::OK, committed))
}
