//! `order_details`: everything about one order, composed from the order's, its inventory
//! items' and its payment's events (the read model is the API composition), with a timeline
//! of what happened.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::Timestamp;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::order::{Order, OrderEvent, OrderStatus};
use domain::payment::{Payment, PaymentEvent};
use infra::event_store::StoredEvent;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::customer_orders::order_id;
use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, Projection};

#[derive(Debug, Clone, Copy)]
pub struct OrderDetailsProjection;

impl OrderDetailsProjection {
    pub const NAME: &'static str = "order_details";
}

#[async_trait]
impl Projection for OrderDetailsProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    /// The order's and its payment's events, and the inventory events about orders.
    fn handles(&self, stored: &StoredEvent) -> bool {
        match stored.aggregate_type.as_str() {
            t if t == Order::TYPE || t == Payment::TYPE => true,
            t if t == InventoryItem::TYPE => {
                matches!(
                    stored.event_type.as_str(),
                    "StockReserved" | "StockReleased" | "StockCommitted"
                )
            }
            _ => false,
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        stored: &StoredEvent,
        event: &DomainEvent,
    ) -> Result<(), ApplyError> {
        match event {
            DomainEvent::Order(event) => apply_order(conn, stored, event).await,
            DomainEvent::Payment(event) => apply_payment(conn, stored, event).await,
            DomainEvent::Inventory(event) => apply_inventory(conn, stored, event).await,
            DomainEvent::Unknown => Ok(()),
        }
    }
}

async fn apply_order(
    conn: &mut PgConnection,
    stored: &StoredEvent,
    event: &OrderEvent,
) -> Result<(), ApplyError> {
    let order_id = order_id(stored)?;
    let (at, description) = match event {
        OrderEvent::Placed {
            customer_id,
            lines,
            currency,
            at,
            ..
        } => {
            let lines_json: Vec<_> = lines
                .iter()
                .map(|line| json!({"sku": line.sku, "quantity": line.quantity}))
                .collect();
            sqlx::query(
                "INSERT INTO order_details_v1 (order_id, customer_id, status, currency, lines,
                                               version, placed_at, updated_at, last_position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(order_id)
            .bind(customer_id.as_uuid())
            .bind(OrderStatus::Pending.as_str())
            .bind(currency.as_str())
            .bind(serde_json::Value::Array(lines_json))
            .bind(stored.sequence)
            .bind(at)
            .bind(stored.position)
            .execute(&mut *conn)
            .await?;
            let n_units: u64 = lines
                .iter()
                .map(|line| u64::from(line.quantity.get()))
                .sum();
            let description = format!("placed: {} line(s), {n_units} unit(s)", lines.len());
            return timeline(conn, order_id, stored, *at, "order", &description).await;
        }
        OrderEvent::StockReserved { lines, total, at } => {
            let priced: Vec<_> = lines
                .iter()
                .map(|line| {
                    json!({
                        "sku": line.sku,
                        "quantity": line.quantity,
                        "unit_price_minor": line.unit_price.amount_minor(),
                        "line_total_minor": line.line_total.amount_minor(),
                    })
                })
                .collect();
            sqlx::query(
                "UPDATE order_details_v1
                    SET status = $2, lines = $3, total_minor = $4, version = $5,
                        updated_at = $6, last_position = $7
                  WHERE order_id = $1 AND version < $5",
            )
            .bind(order_id)
            .bind(OrderStatus::Reserved.as_str())
            .bind(serde_json::Value::Array(priced))
            .bind(total.amount_minor())
            .bind(stored.sequence)
            .bind(at)
            .bind(stored.position)
            .execute(&mut *conn)
            .await?;
            (
                *at,
                format!(
                    "stock reserved; total {} {}",
                    total.amount_minor(),
                    total.currency()
                ),
            )
        }
        OrderEvent::Confirmed { at } => {
            set_status(conn, order_id, stored, OrderStatus::Confirmed, None, *at).await?;
            (*at, "confirmed".to_owned())
        }
        OrderEvent::Shipped { at } => {
            set_status(conn, order_id, stored, OrderStatus::Shipped, None, *at).await?;
            (*at, "shipped".to_owned())
        }
        OrderEvent::Cancelled { reason, at } => {
            set_status(
                conn,
                order_id,
                stored,
                OrderStatus::Cancelled,
                Some(reason.as_str()),
                *at,
            )
            .await?;
            (*at, format!("cancelled: {reason}"))
        }
    };
    timeline(conn, order_id, stored, at, "order", &description).await
}

async fn set_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    stored: &StoredEvent,
    status: OrderStatus,
    cancel_reason: Option<&str>,
    at: Timestamp,
) -> Result<(), ApplyError> {
    sqlx::query(
        "UPDATE order_details_v1
            SET status = $2, cancel_reason = COALESCE($3, cancel_reason), version = $4,
                updated_at = $5, last_position = $6
          WHERE order_id = $1 AND version < $4",
    )
    .bind(order_id)
    .bind(status.as_str())
    .bind(cancel_reason)
    .bind(stored.sequence)
    .bind(at)
    .bind(stored.position)
    .execute(conn)
    .await?;
    Ok(())
}

/// The payment's id is its order's id.
async fn apply_payment(
    conn: &mut PgConnection,
    stored: &StoredEvent,
    event: &PaymentEvent,
) -> Result<(), ApplyError> {
    let order_id = order_id(stored)?;
    // (status, captured, refunded delta, when, what)
    let (status, captured, refunded, at, description) = match event {
        PaymentEvent::Authorized { amount, at, .. } => (
            "authorized",
            None,
            0,
            *at,
            format!(
                "payment authorized: {} {}",
                amount.amount_minor(),
                amount.currency()
            ),
        ),
        PaymentEvent::Captured { amount, at } => (
            "captured",
            Some(amount.amount_minor()),
            0,
            *at,
            format!(
                "payment captured: {} {}",
                amount.amount_minor(),
                amount.currency()
            ),
        ),
        PaymentEvent::Declined { reason, at, .. } => (
            "declined",
            None,
            0,
            *at,
            format!("payment declined: {reason}"),
        ),
        PaymentEvent::Refunded { amount, at, .. } => (
            "refunded",
            None,
            amount.amount_minor(),
            *at,
            format!("refunded: {} {}", amount.amount_minor(), amount.currency()),
        ),
        PaymentEvent::Voided { at, .. } => ("voided", None, 0, *at, "payment voided".to_owned()),
    };
    sqlx::query(
        "UPDATE order_details_v1
            SET captured_minor = COALESCE($3, captured_minor),
                refunded_minor = refunded_minor + $4,
                payment_status = CASE
                    WHEN $2 = 'refunded' AND refunded_minor + $4 < captured_minor
                        THEN 'partially_refunded'
                    ELSE $2 END,
                payment_version = $5, updated_at = GREATEST(updated_at, $6), last_position = $7
          WHERE order_id = $1 AND payment_version < $5",
    )
    .bind(order_id)
    .bind(status)
    .bind(captured)
    .bind(refunded)
    .bind(stored.sequence)
    .bind(at)
    .bind(stored.position)
    .execute(&mut *conn)
    .await?;
    timeline(conn, order_id, stored, at, "payment", &description).await
}

/// Inventory events that concern an order appear in its timeline.
async fn apply_inventory(
    conn: &mut PgConnection,
    stored: &StoredEvent,
    event: &InventoryEvent,
) -> Result<(), ApplyError> {
    let sku = &stored.aggregate_id;
    let (order_id, at, description) = match event {
        InventoryEvent::Reserved {
            order_id,
            quantity,
            unit_price,
            at,
        } => (
            order_id,
            at,
            format!(
                "reserved {quantity} x {sku} at {} {}",
                unit_price.amount_minor(),
                unit_price.currency()
            ),
        ),
        InventoryEvent::Released {
            order_id,
            quantity,
            at,
        } => (order_id, at, format!("released {quantity} x {sku}")),
        InventoryEvent::Committed {
            order_id,
            quantity,
            at,
        } => (
            order_id,
            at,
            format!("{quantity} x {sku} left the warehouse"),
        ),
        InventoryEvent::Registered { .. } | InventoryEvent::Restocked { .. } => return Ok(()),
    };
    let order_id = order_id.as_uuid();
    sqlx::query(
        "UPDATE order_details_v1 SET last_position = GREATEST(last_position, $2) WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(stored.position)
    .execute(&mut *conn)
    .await?;
    timeline(conn, order_id, stored, *at, "inventory", &description).await
}

async fn timeline(
    conn: &mut PgConnection,
    order_id: Uuid,
    stored: &StoredEvent,
    at: Timestamp,
    source: &str,
    description: &str,
) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO order_timeline_v1 (order_id, position, event_id, at, source, event_type, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (order_id, position) DO NOTHING",
    )
    .bind(order_id)
    .bind(stored.position)
    .bind(stored.event_id)
    .bind(at)
    .bind(source)
    .bind(&stored.event_type)
    .bind(description)
    .execute(conn)
    .await?;
    Ok(())
}
