use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub currency: String,
    pub lines: serde_json::Value,
    pub total_minor: Option<i64>,
    pub payment_status: String,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub cancel_reason: Option<String>,
    pub version: i64,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_position: i64,
}

#[derive(Debug, sqlx::FromRow)]
pub struct TimelineRow {
    pub at: DateTime<Utc>,
    pub position: i64,
    pub source: String,
    pub event_type: String,
    pub description: String,
}

/// One order with its timeline (oldest first), or `None`.
pub async fn order(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<(OrderRow, Vec<TimelineRow>)>, sqlx::Error> {
    let Some(order) = sqlx::query_as::<_, OrderRow>(
        "SELECT order_id, customer_id, status, currency, lines, total_minor, payment_status,
                captured_minor, refunded_minor, cancel_reason, version, placed_at, updated_at,
                last_position
           FROM order_details WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let timeline = sqlx::query_as::<_, TimelineRow>(
        "SELECT at, position, source, event_type, description
           FROM order_timeline WHERE order_id = $1 ORDER BY at, position",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    Ok(Some((order, timeline)))
}
