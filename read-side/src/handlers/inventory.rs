//! `GET /inventory/{sku}` and `GET /inventory`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use chrono::{DateTime, Utc};
use domain::text::Sku;
use http_kit::ProblemBody;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::MoneyView;
use crate::http::conditional;
use crate::http::error::QueryError;
use crate::http::params::{self, ReadAfter};
use crate::queries::inventory::ItemRow;
use crate::state::AppState;
use crate::{queries, serving};

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemView {
    #[schema(example = "MUG-BLUE")]
    pub sku: String,
    pub name: String,
    pub unit_price: MoneyView,
    pub on_hand: i64,
    pub reserved: i64,
    /// `on_hand - reserved`: what new orders can reserve.
    pub available: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    /// Global position of the last event applied to this row.
    pub last_position: i64,
}

impl From<ItemRow> for ItemView {
    fn from(row: ItemRow) -> Self {
        Self {
            unit_price: MoneyView::new(row.unit_price_minor, &row.currency),
            sku: row.sku,
            name: row.name,
            on_hand: row.on_hand,
            reserved: row.reserved,
            available: row.available,
            version: row.version,
            updated_at: row.updated_at,
            last_position: row.last_position,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemsPage {
    /// In SKU order.
    pub items: Vec<ItemView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PageParams {
    limit: Option<String>,
    cursor: Option<String>,
}

const CURSOR_KIND: &str = "sku";

/// One inventory item's price and stock.
#[utoipa::path(get, path = "/inventory/{sku}", tag = "inventory",
    params(
        ("sku" = String, Path, description = "The SKU"),
        ("X-Consistency-Token" = Option<String>, Header, description = "The `consistency_token` (or the `position`) a command returned"),
        ("wait" = Option<String>, Query, description = "How long to wait for the token"),
    ),
    responses(
        (status = 200, description = "The item", body = ItemView, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 400, description = "Invalid SKU or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such SKU (`inventory_item_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The read model has not applied the token yet", body = ProblemBody, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn get_item(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    read_after: ReadAfter,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let sku = Sku::parse(sku).map_err(|err| QueryError::InvalidPathParameter {
        name: "sku",
        detail: err.to_string(),
    })?;
    read_after.ensure(&app, serving::INVENTORY).await?;
    let row = queries::inventory::item(&app.pool, sku.as_str())
        .await?
        .ok_or_else(|| QueryError::NotFound {
            code: "inventory_item_not_found",
            detail: format!("no inventory item with SKU {sku}"),
        })?;
    Ok(conditional::respond(&headers, &ItemView::from(row)))
}

/// All inventory items in SKU order, keyset-paginated.
#[utoipa::path(get, path = "/inventory", tag = "inventory",
    params(
        ("limit" = Option<i64>, Query, description = "1 to 100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("X-Consistency-Token" = Option<String>, Header, description = "The `consistency_token` (or the `position`) a command returned"),
        ("wait" = Option<String>, Query, description = "How long to wait for the token"),
    ),
    responses(
        (status = 200, description = "One page of items", body = ItemsPage),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 400, description = "Invalid limit, cursor or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The read model has not applied the token yet", body = ProblemBody, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
pub async fn list_items(
    State(app): State<AppState>,
    uri: Uri,
    read_after: ReadAfter,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let page: PageParams = params::query(&uri)?;
    let limit = params::limit(page.limit.as_deref())
        .map_err(|err| QueryError::InvalidQuery { errors: vec![err] })?;
    let after = params::decode_cursor(CURSOR_KIND, page.cursor.as_deref())?;
    read_after.ensure(&app, serving::INVENTORY).await?;
    let mut rows = queries::inventory::items(&app.pool, after.as_deref(), limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|row| params::encode_cursor(CURSOR_KIND, &row.sku))
    } else {
        None
    };
    let page = ItemsPage {
        items: rows.into_iter().map(ItemView::from).collect(),
        next_cursor,
    };
    Ok(conditional::respond(&headers, &page))
}
