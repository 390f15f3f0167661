//! `GET /orders/{id}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use chrono::{DateTime, Utc};
use http_kit::ProblemBody;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::MoneyView;
use crate::cache::Cached;
use crate::http::conditional;
use crate::http::error::QueryError;
use crate::http::params::ReadAfter;
use crate::queries::orders::{OrderRow, TimelineRow};
use crate::state::AppState;
use crate::{queries, serving};

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// `pending`, `reserved`, `confirmed`, `shipped` or `cancelled`.
    #[schema(example = "confirmed")]
    pub status: String,
    pub currency: String,
    pub lines: Vec<OrderLineView>,
    /// Known once stock is reserved (prices are fixed then).
    pub total: Option<MoneyView>,
    pub payment: PaymentView,
    /// `customer_request`, `out_of_stock`, `payment_declined` or `payment_timeout`.
    pub cancel_reason: Option<String>,
    /// The order's version (its ETag on the command API).
    pub version: i64,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Global position of the last event applied to this order's row.
    pub last_position: i64,
    /// What happened, oldest first, from the order's, its items' and its payment's events.
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineView {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: Option<MoneyView>,
    pub line_total: Option<MoneyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    /// `none`, `authorized`, `captured`, `declined`, `voided`, `partially_refunded`, `refunded`.
    #[schema(example = "captured")]
    pub status: String,
    pub captured: MoneyView,
    pub refunded: MoneyView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub position: i64,
    /// `order`, `inventory` or `payment`.
    pub source: String,
    #[schema(example = "OrderConfirmed")]
    pub event_type: String,
    #[schema(example = "confirmed")]
    pub description: String,
}

/// The shape of a line as the projection stores it.
#[derive(Debug, Deserialize)]
struct StoredLine {
    sku: String,
    quantity: i64,
    unit_price_minor: Option<i64>,
    line_total_minor: Option<i64>,
}

impl OrderView {
    fn new(row: OrderRow, timeline: Vec<TimelineRow>) -> Result<Self, QueryError> {
        let lines: Vec<StoredLine> = serde_json::from_value(row.lines).map_err(|err| {
            QueryError::Internal(anyhow::Error::new(err).context("unreadable order lines"))
        })?;
        let currency = row.currency;
        Ok(Self {
            order_id: row.order_id,
            customer_id: row.customer_id,
            status: row.status,
            lines: lines
                .into_iter()
                .map(|line| OrderLineView {
                    sku: line.sku,
                    quantity: line.quantity,
                    unit_price: line.unit_price_minor.map(|m| MoneyView::new(m, &currency)),
                    line_total: line.line_total_minor.map(|m| MoneyView::new(m, &currency)),
                })
                .collect(),
            total: row.total_minor.map(|m| MoneyView::new(m, &currency)),
            payment: PaymentView {
                status: row.payment_status,
                captured: MoneyView::new(row.captured_minor, &currency),
                refunded: MoneyView::new(row.refunded_minor, &currency),
            },
            cancel_reason: row.cancel_reason,
            version: row.version,
            placed_at: row.placed_at,
            updated_at: row.updated_at,
            last_position: row.last_position,
            timeline: timeline
                .into_iter()
                .map(|entry| TimelineEntry {
                    at: entry.at,
                    position: entry.position,
                    source: entry.source,
                    event_type: entry.event_type,
                    description: entry.description,
                })
                .collect(),
            currency,
        })
    }
}

/// One order with its lines, total, payment and timeline.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(
        ("id" = String, Path, description = "The order id"),
        ("X-Consistency-Token" = Option<String>, Header, description = "The `consistency_token` (or the `position`) a command returned: answer only once it is applied"),
        ("wait" = Option<String>, Query, description = "How long to wait for the token: `500ms`, `2s` (default 2s, at most 10s)"),
        ("Cache-Control" = Option<String>, Header, description = "`no-cache`: answer from the database, not from the query API's order cache"),
    ),
    responses(
        (status = 200, description = "The order", body = OrderView, headers(("ETag" = String), ("X-Cache" = String, description = "`hit`: from the query API's order cache; `miss`: from the database"))),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 400, description = "Invalid id or token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such order (`order_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The read model has not applied the token yet (`projection_behind`) or is halted (`projection_not_running`)", body = ProblemBody, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn get_order(
    State(app): State<AppState>,
    Path(id): Path<String>,
    read_after: ReadAfter,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let order_id = Uuid::try_parse(&id).map_err(|_| QueryError::InvalidPathParameter {
        name: "id",
        detail: "must be a UUID".to_owned(),
    })?;
    let token = read_after.ensure(&app, serving::ORDER_DETAILS).await?;
    if !read_after.no_cache
        && let Some(cached) = app.orders.get(order_id, token)
    {
        let mut response = conditional::respond_encoded(&headers, cached.body, &cached.etag);
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static("hit"));
        return Ok(response);
    }
    let ticket = app.orders.ticket();
    let found = queries::orders::order(&app.pool, order_id)
        .await?
        .ok_or_else(|| QueryError::NotFound {
            code: "order_not_found",
            detail: format!("no order {order_id}"),
        })?;
    let as_of = found.as_of;
    let view = OrderView::new(found.order, found.timeline)?;
    let (body, etag) = conditional::encode(&view).map_err(|err| {
        QueryError::Internal(anyhow::Error::new(err).context("encoding an order"))
    })?;
    app.orders.put(
        ticket,
        order_id,
        as_of,
        Cached {
            body: body.clone(),
            etag: etag.clone(),
        },
    );
    let mut response = conditional::respond_encoded(&headers, body, &etag);
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static("miss"));
    Ok(response)
}

/// `hit` when the answer came from the order cache, `miss` when from the database.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
