//! `GET /customers/{id}/orders`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use chrono::{DateTime, Utc};
use http_kit::ProblemBody;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::MoneyView;
use crate::http::conditional;
use crate::http::error::QueryError;
use crate::http::params::{self, ReadAfter};
use crate::state::AppState;
use crate::{queries, serving};

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerOrdersPage {
    /// Newest first.
    pub items: Vec<CustomerOrderSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerOrderSummary {
    pub order_id: Uuid,
    pub status: String,
    pub total: Option<MoneyView>,
    pub line_count: i32,
    pub placed_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Deserialize)]
struct PageParams {
    limit: Option<String>,
    cursor: Option<String>,
}

const CURSOR_KIND: &str = "placed";

/// A customer's orders, newest first, keyset-paginated.
#[utoipa::path(get, path = "/customers/{id}/orders", tag = "orders",
    params(
        ("id" = String, Path, description = "The customer id"),
        ("limit" = Option<i64>, Query, description = "1 to 100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("X-Consistency-Token" = Option<String>, Header, description = "The `consistency_token` (or the `position`) a command returned"),
        ("wait" = Option<String>, Query, description = "How long to wait for the token"),
    ),
    responses(
        (status = 200, description = "One page of orders", body = CustomerOrdersPage),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 400, description = "Invalid id, limit, cursor or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The read model has not applied the token yet", body = ProblemBody, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(customer_id = %id))]
pub async fn list_customer_orders(
    State(app): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    read_after: ReadAfter,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let customer_id = Uuid::try_parse(&id).map_err(|_| QueryError::InvalidPathParameter {
        name: "id",
        detail: "must be a UUID".to_owned(),
    })?;
    let page: PageParams = params::query(&uri)?;
    let limit = params::limit(page.limit.as_deref())
        .map_err(|err| QueryError::InvalidQuery { errors: vec![err] })?;
    let before = params::decode_cursor(CURSOR_KIND, page.cursor.as_deref())?
        .map(|position| {
            position
                .parse::<i64>()
                .map_err(|_| QueryError::InvalidCursor)
        })
        .transpose()?;
    read_after.ensure(&app, serving::CUSTOMER_ORDERS).await?;
    // One more than asked tells whether there is a next page.
    let mut rows = queries::customers::orders_of(&app.pool, customer_id, before, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|row| params::encode_cursor(CURSOR_KIND, &row.placed_position.to_string()))
    } else {
        None
    };
    let page = CustomerOrdersPage {
        items: rows
            .into_iter()
            .map(|row| CustomerOrderSummary {
                order_id: row.order_id,
                total: row.total_minor.map(|m| MoneyView::new(m, &row.currency)),
                status: row.status,
                line_count: row.line_count,
                placed_at: row.placed_at,
                version: row.version,
            })
            .collect(),
        next_cursor,
    };
    Ok(conditional::respond(&headers, &page))
}
