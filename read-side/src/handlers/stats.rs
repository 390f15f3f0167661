//! `GET /stats/sales`.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use chrono::NaiveDate;
use http_kit::{FieldError, ProblemBody};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::MoneyView;
use crate::http::conditional;
use crate::http::error::QueryError;
use crate::http::params::{self, ReadAfter};
use crate::state::AppState;
use crate::{queries, serving};

/// The longest range one request may ask for.
const MAX_DAYS: i64 = 366;

#[derive(Debug, Serialize, ToSchema)]
pub struct SalesReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Days with any activity, oldest first, one entry per day and currency.
    pub days: Vec<SalesDay>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SalesDay {
    pub day: NaiveDate,
    pub currency: String,
    pub orders_confirmed: i64,
    /// Sum of the totals of the orders confirmed that day.
    pub revenue: MoneyView,
    pub cancellations: Cancellations,
    pub refunds: Refunds,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cancellations {
    pub customer_request: i64,
    pub out_of_stock: i64,
    pub payment_declined: i64,
    pub payment_timeout: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Refunds {
    pub count: i64,
    pub amount: MoneyView,
}

#[derive(Debug, Deserialize)]
struct RangeParams {
    from: Option<String>,
    to: Option<String>,
}

fn date(name: &str, value: &str) -> Result<NaiveDate, FieldError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| FieldError::new(name, "must be a date such as 2026-11-25"))
}

/// Sales per day (UTC) and currency between two dates, both included.
#[utoipa::path(get, path = "/stats/sales", tag = "stats",
    params(
        ("from" = String, Query, description = "First day, e.g. 2026-11-01"),
        ("to" = String, Query, description = "Last day, included; at most 366 days after `from`"),
        ("X-Consistency-Token" = Option<String>, Header, description = "The `consistency_token` (or the `position`) a command returned"),
        ("wait" = Option<String>, Query, description = "How long to wait for the token"),
    ),
    responses(
        (status = 200, description = "The report", body = SalesReport),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 400, description = "Missing or invalid dates", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The read model has not applied the token yet", body = ProblemBody, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
pub async fn sales(
    State(app): State<AppState>,
    uri: Uri,
    read_after: ReadAfter,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let range: RangeParams = params::query(&uri)?;
    let mut errors = Vec::new();
    let mut parse = |name: &str, value: Option<&str>| match value {
        None => {
            errors.push(FieldError::new(name, "is required, e.g. 2026-11-25"));
            None
        }
        Some(value) => date(name, value).map_err(|err| errors.push(err)).ok(),
    };
    let from = parse("from", range.from.as_deref());
    let to = parse("to", range.to.as_deref());
    let (Some(from), Some(to)) = (from, to) else {
        return Err(QueryError::InvalidQuery { errors });
    };
    if to < from {
        return Err(QueryError::InvalidQuery {
            errors: vec![FieldError::new("to", "must not be before `from`")],
        });
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(QueryError::InvalidQuery {
            errors: vec![FieldError::new(
                "to",
                format!("the range may span at most {MAX_DAYS} days"),
            )],
        });
    }
    read_after.ensure(&app, serving::SALES_DAILY).await?;
    let days = queries::sales::days(&app.pool, from, to).await?;
    let report = SalesReport {
        from,
        to,
        days: days
            .into_iter()
            .map(|row| SalesDay {
                day: row.day,
                revenue: MoneyView::new(row.revenue_minor, &row.currency),
                orders_confirmed: row.orders_confirmed,
                cancellations: Cancellations {
                    customer_request: row.cancelled_customer_request,
                    out_of_stock: row.cancelled_out_of_stock,
                    payment_declined: row.cancelled_payment_declined,
                    payment_timeout: row.cancelled_payment_timeout,
                },
                refunds: Refunds {
                    count: row.refunds,
                    amount: MoneyView::new(row.refunded_minor, &row.currency),
                },
                currency: row.currency,
            })
            .collect(),
    };
    Ok(conditional::respond(&headers, &report))
}
