use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct CustomerOrderRow {
    pub order_id: Uuid,
    pub placed_at: DateTime<Utc>,
    pub placed_position: i64,
    pub status: String,
    pub currency: String,
    pub total_minor: Option<i64>,
    pub line_count: i32,
    pub version: i64,
}

/// Up to `limit` of a customer's orders placed before `before` (a placement position),
/// newest first.
pub async fn orders_of(
    pool: &PgPool,
    customer_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<CustomerOrderRow>, sqlx::Error> {
    sqlx::query_as::<_, CustomerOrderRow>(
        "SELECT order_id, placed_at, placed_position, status, currency, total_minor, line_count, version
           FROM customer_orders
          WHERE customer_id = $1 AND placed_position < COALESCE($2, 9223372036854775807)
          ORDER BY placed_position DESC
          LIMIT $3",
    )
    .bind(customer_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}
