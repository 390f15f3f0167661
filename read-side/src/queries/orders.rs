use chrono::{DateTime, Utc};
use infra::event_store::Checkpoint;
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
    as_of_tx: Option<String>,
    as_of_position: Option<i64>,
}

/// An order as the model has it, and the model's checkpoint when it was read.
#[derive(Debug)]
pub struct FoundOrder {
    pub order: OrderRow,
    pub timeline: Vec<TimelineRow>,
    /// `order_details`' checkpoint in the same snapshot: the row reflects every event up to
    /// it and none after (`START` where the projection keeps no log checkpoint).
    pub as_of: Checkpoint,
}

/// One order with its timeline (oldest first), or `None`. One statement: one round trip,
/// and the row, its timeline and the projection's checkpoint come from the same snapshot.
pub async fn order(pool: &PgPool, order_id: Uuid) -> Result<Option<FoundOrder>, sqlx::Error> {
    let found = sqlx::query_as::<_, OrderWithTimeline>(
        "SELECT d.order_id, d.customer_id, d.status, d.currency, d.lines, d.total_minor,
                d.payment_status, d.captured_minor, d.refunded_minor, d.cancel_reason, d.version,
                d.placed_at, d.updated_at, d.last_position,
                COALESCE((SELECT jsonb_agg(jsonb_build_object(
                                     'at', t.at, 'position', t.position, 'source', t.source,
                                     'event_type', t.event_type, 'description', t.description)
                                 ORDER BY t.at, t.position)
                            FROM order_timeline t WHERE t.order_id = d.order_id),
                         '[]') AS timeline,
                s.checkpoint_tx::text AS as_of_tx, s.checkpoint_position AS as_of_position
           FROM order_details d
           LEFT JOIN projection_state s ON s.name = 'order_details'
          WHERE d.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|row| FoundOrder {
        as_of: match (row.as_of_tx, row.as_of_position) {
            (Some(transaction_id), Some(position)) => Checkpoint {
                transaction_id: transaction_id.parse().unwrap_or(0),
                position,
            },
            _ => Checkpoint::START,
        },
        order: row.order,
        timeline: row.timeline.0,
    }))
}
