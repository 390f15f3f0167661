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

#[derive(Debug, serde::Deserialize)]
pub struct TimelineRow {
    pub at: DateTime<Utc>,
    pub position: i64,
    pub source: String,
    pub event_type: String,
    pub description: String,
}

#[derive(Debug, sqlx::FromRow)]
struct OrderWithTimeline {
    #[sqlx(flatten)]
    order: OrderRow,
    timeline: sqlx::types::Json<Vec<TimelineRow>>,
}

/// One order with its timeline (oldest first), or `None`. One statement: one round trip,
/// and the row and its timeline come from the same snapshot.
pub async fn order(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<(OrderRow, Vec<TimelineRow>)>, sqlx::Error> {
    let found = sqlx::query_as::<_, OrderWithTimeline>(
        "SELECT d.order_id, d.customer_id, d.status, d.currency, d.lines, d.total_minor,
                d.payment_status, d.captured_minor, d.refunded_minor, d.cancel_reason, d.version,
                d.placed_at, d.updated_at, d.last_position,
                COALESCE((SELECT jsonb_agg(jsonb_build_object(
                                     'at', t.at, 'position', t.position, 'source', t.source,
                                     'event_type', t.event_type, 'description', t.description)
                                 ORDER BY t.at, t.position)
                            FROM order_timeline t WHERE t.order_id = d.order_id),
                         '[]') AS timeline
           FROM order_details d WHERE d.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|row| (row.order, row.timeline.0)))
}
