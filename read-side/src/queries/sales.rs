use chrono::NaiveDate;
use sqlx::PgPool;

#[derive(Debug, sqlx::FromRow)]
pub struct SalesDayRow {
    pub day: NaiveDate,
    pub currency: String,
    pub orders_confirmed: i64,
    pub revenue_minor: i64,
    pub cancelled_customer_request: i64,
    pub cancelled_out_of_stock: i64,
    pub cancelled_payment_declined: i64,
    pub cancelled_payment_timeout: i64,
    pub refunds: i64,
    pub refunded_minor: i64,
}

/// Days from `from` to `to`, both included, that had any activity.
pub async fn days(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<SalesDayRow>, sqlx::Error> {
    sqlx::query_as::<_, SalesDayRow>(
        "SELECT day, currency, orders_confirmed, revenue_minor, cancelled_customer_request,
                cancelled_out_of_stock, cancelled_payment_declined, cancelled_payment_timeout,
                refunds, refunded_minor
           FROM sales_daily WHERE day BETWEEN $1 AND $2 ORDER BY day, currency",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}
