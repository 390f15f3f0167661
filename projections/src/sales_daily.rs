//! `sales_daily`: per day (UTC, of the event) and currency: orders confirmed, revenue,
//! cancellations by reason, refunds.
//!
//! Counters are not idempotent by themselves, so the projection remembers, per order and per
//! refund, what it has counted (`sales_daily_orders_v1`, `sales_daily_refunds_v1`): applying
//! an event twice counts it once. Confirmation events carry no amount, so the order's total
//! is remembered from its reservation.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::order::{CancelReason, Order, OrderEvent};
use domain::payment::{Payment, PaymentEvent};
use infra::event_store::StoredEvent;
use sqlx::{PgConnection, Row};

use crate::customer_orders::order_id;
use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, Projection};

#[derive(Debug, Clone, Copy)]
pub struct SalesDailyProjection;

impl SalesDailyProjection {
    pub const NAME: &'static str = "sales_daily";
}

fn cancellation_column(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::CustomerRequest => "cancelled_customer_request",
        CancelReason::OutOfStock => "cancelled_out_of_stock",
        CancelReason::PaymentDeclined => "cancelled_payment_declined",
        CancelReason::PaymentTimeout => "cancelled_payment_timeout",
    }
}

#[async_trait]
impl Projection for SalesDailyProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    /// Orders' events, and refunds.
    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == Order::TYPE
            || (stored.aggregate_type == Payment::TYPE && stored.event_type == "PaymentRefunded")
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        stored: &StoredEvent,
        event: &DomainEvent,
    ) -> Result<(), ApplyError> {
        match event {
            DomainEvent::Order(OrderEvent::Placed { currency, .. }) => {
                sqlx::query(
                    "INSERT INTO sales_daily_orders_v1 (order_id, currency) VALUES ($1, $2)
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id(stored)?)
                .bind(currency.as_str())
                .execute(conn)
                .await?;
            }
            DomainEvent::Order(OrderEvent::StockReserved { total, .. }) => {
                sqlx::query(
                    "UPDATE sales_daily_orders_v1 SET total_minor = $2 WHERE order_id = $1",
                )
                .bind(order_id(stored)?)
                .bind(total.amount_minor())
                .execute(conn)
                .await?;
            }
            DomainEvent::Order(OrderEvent::Confirmed { at }) => {
                let counted = sqlx::query(
                    "UPDATE sales_daily_orders_v1 SET confirmed = true
                      WHERE order_id = $1 AND NOT confirmed
                      RETURNING currency, COALESCE(total_minor, 0) AS total_minor",
                )
                .bind(order_id(stored)?)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = counted {
                    let currency: String = row.try_get("currency")?;
                    let total: i64 = row.try_get("total_minor")?;
                    sqlx::query(
                        "INSERT INTO sales_daily_v1 (day, currency, orders_confirmed, revenue_minor, last_position)
                         VALUES ($1, $2, 1, $3, $4)
                         ON CONFLICT (day, currency) DO UPDATE
                            SET orders_confirmed = sales_daily_v1.orders_confirmed + 1,
                                revenue_minor = sales_daily_v1.revenue_minor + EXCLUDED.revenue_minor,
                                last_position = GREATEST(sales_daily_v1.last_position, EXCLUDED.last_position)",
                    )
                    .bind(at.date_naive())
                    .bind(currency)
                    .bind(total)
                    .bind(stored.position)
                    .execute(conn)
                    .await?;
                }
            }
            DomainEvent::Order(OrderEvent::Cancelled { reason, at }) => {
                let counted = sqlx::query(
                    "UPDATE sales_daily_orders_v1 SET cancelled = true
                      WHERE order_id = $1 AND NOT cancelled RETURNING currency",
                )
                .bind(order_id(stored)?)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = counted {
                    let currency: String = row.try_get("currency")?;
                    let column = cancellation_column(*reason);
                    // `column` comes from the closed set above, never from input.
                    let sql = format!(
                        "INSERT INTO sales_daily_v1 (day, currency, {column}, last_position)
                         VALUES ($1, $2, 1, $3)
                         ON CONFLICT (day, currency) DO UPDATE
                            SET {column} = sales_daily_v1.{column} + 1,
                                last_position = GREATEST(sales_daily_v1.last_position, EXCLUDED.last_position)"
                    );
                    sqlx::query(&sql)
                        .bind(at.date_naive())
                        .bind(currency)
                        .bind(stored.position)
                        .execute(conn)
                        .await?;
                }
            }
            DomainEvent::Payment(PaymentEvent::Refunded {
                refund_id,
                amount,
                at,
            }) => {
                let first = sqlx::query(
                    "INSERT INTO sales_daily_refunds_v1 (refund_id) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(refund_id.as_uuid())
                .execute(&mut *conn)
                .await?;
                if first.rows_affected() == 1 {
                    sqlx::query(
                        "INSERT INTO sales_daily_v1 (day, currency, refunds, refunded_minor, last_position)
                         VALUES ($1, $2, 1, $3, $4)
                         ON CONFLICT (day, currency) DO UPDATE
                            SET refunds = sales_daily_v1.refunds + 1,
                                refunded_minor = sales_daily_v1.refunded_minor + EXCLUDED.refunded_minor,
                                last_position = GREATEST(sales_daily_v1.last_position, EXCLUDED.last_position)",
                    )
                    .bind(at.date_naive())
                    .bind(amount.currency().as_str())
                    .bind(amount.amount_minor())
                    .bind(stored.position)
                    .execute(conn)
                    .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
