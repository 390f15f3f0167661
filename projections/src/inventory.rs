//! `inventory`: one row per SKU with its price and stock levels.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use infra::event_store::StoredEvent;
use sqlx::PgConnection;

use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, Projection};

#[derive(Debug, Clone, Copy)]
pub struct InventoryProjection;

impl InventoryProjection {
    pub const NAME: &'static str = "inventory";
}

#[async_trait]
impl Projection for InventoryProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == InventoryItem::TYPE
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        stored: &StoredEvent,
        event: &DomainEvent,
    ) -> Result<(), ApplyError> {
        let DomainEvent::Inventory(event) = event else {
            return Ok(());
        };
        let sku = &stored.aggregate_id;
        // (on hand, reserved) deltas; every update is guarded by the row's version, so an
        // event applied twice changes nothing the second time.
        let (on_hand, reserved, at) = match event {
            InventoryEvent::Registered {
                name,
                unit_price,
                initial_stock,
                at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO inventory_v1 (sku, name, unit_price_minor, currency, on_hand,
                                               reserved, version, updated_at, last_position)
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8)
                     ON CONFLICT (sku) DO NOTHING",
                )
                .bind(sku)
                .bind(name.as_str())
                .bind(unit_price.amount_minor())
                .bind(unit_price.currency().as_str())
                .bind(i64::from(*initial_stock))
                .bind(stored.sequence)
                .bind(at)
                .bind(stored.position)
                .execute(conn)
                .await?;
                return Ok(());
            }
            InventoryEvent::Restocked { quantity, at } => (i64::from(quantity.get()), 0, at),
            InventoryEvent::Reserved { quantity, at, .. } => (0, i64::from(quantity.get()), at),
            InventoryEvent::Released { quantity, at, .. } => (0, -i64::from(quantity.get()), at),
            InventoryEvent::Committed { quantity, at, .. } => {
                let units = i64::from(quantity.get());
                (-units, -units, at)
            }
        };
        sqlx::query(
            "UPDATE inventory_v1
                SET on_hand = on_hand + $2, reserved = reserved + $3, version = $4,
                    updated_at = $5, last_position = $6
              WHERE sku = $1 AND version < $4",
        )
        .bind(sku)
        .bind(on_hand)
        .bind(reserved)
        .bind(stored.sequence)
        .bind(at)
        .bind(stored.position)
        .execute(conn)
        .await?;
        Ok(())
    }
}
