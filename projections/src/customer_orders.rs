//! `customer_orders`: each customer's orders, newest first.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::order::{Order, OrderEvent, OrderStatus};
use infra::event_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, Projection};

#[derive(Debug, Clone, Copy)]
pub struct CustomerOrdersProjection;

impl CustomerOrdersProjection {
    pub const NAME: &'static str = "customer_orders";
}

pub(crate) fn order_id(stored: &StoredEvent) -> Result<Uuid, ApplyError> {
    Uuid::try_parse(&stored.aggregate_id).map_err(|_| {
        ApplyError::Invalid(format!("order id {:?} is not a UUID", stored.aggregate_id))
    })
}

#[async_trait]
impl Projection for CustomerOrdersProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == Order::TYPE
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        stored: &StoredEvent,
        event: &DomainEvent,
    ) -> Result<(), ApplyError> {
        let DomainEvent::Order(event) = event else {
            return Ok(());
        };
        let order_id = order_id(stored)?;
        let (status, total_minor) = match event {
            OrderEvent::Placed {
                customer_id,
                lines,
                currency,
                at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO customer_orders_v1 (customer_id, order_id, placed_at, placed_position,
                                                     status, currency, line_count, version, last_position)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $4)
                     ON CONFLICT (customer_id, order_id) DO NOTHING",
                )
                .bind(customer_id.as_uuid())
                .bind(order_id)
                .bind(at)
                .bind(stored.position)
                .bind(OrderStatus::Pending.as_str())
                .bind(currency.as_str())
                .bind(i32::try_from(lines.len()).unwrap_or(i32::MAX))
                .bind(stored.sequence)
                .execute(conn)
                .await?;
                return Ok(());
            }
            OrderEvent::StockReserved { total, .. } => {
                (OrderStatus::Reserved, Some(total.amount_minor()))
            }
            OrderEvent::Confirmed { .. } => (OrderStatus::Confirmed, None),
            OrderEvent::Shipped { .. } => (OrderStatus::Shipped, None),
            OrderEvent::Cancelled { .. } => (OrderStatus::Cancelled, None),
        };
        sqlx::query(
            "UPDATE customer_orders_v1
                SET status = $2, total_minor = COALESCE($3, total_minor), version = $4,
                    last_position = $5
              WHERE order_id = $1 AND version < $4",
        )
        .bind(order_id)
        .bind(status.as_str())
        .bind(total_minor)
        .bind(stored.sequence)
        .bind(stored.position)
        .execute(conn)
        .await?;
        Ok(())
    }
}
