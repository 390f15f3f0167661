use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, sqlx::FromRow)]
pub struct ItemRow {
    pub sku: String,
    pub name: String,
    pub unit_price_minor: i64,
    pub currency: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    pub last_position: i64,
}

const COLUMNS: &str = "sku, name, unit_price_minor, currency, on_hand, reserved, available, version, \
    updated_at, last_position";

pub async fn item(pool: &PgPool, sku: &str) -> Result<Option<ItemRow>, sqlx::Error> {
    sqlx::query_as::<_, ItemRow>(&format!("SELECT {COLUMNS} FROM inventory WHERE sku = $1"))
        .bind(sku)
        .fetch_optional(pool)
        .await
}

/// Up to `limit` items after the SKU `after`, in SKU order.
pub async fn items(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ItemRow>, sqlx::Error> {
    sqlx::query_as::<_, ItemRow>(&format!(
        "SELECT {COLUMNS} FROM inventory WHERE sku > COALESCE($1, '') ORDER BY sku LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
