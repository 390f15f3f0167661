//! `inventory`: one row per SKU with its price and stock levels.
//!
//! Per batch: load the touched rows, evolve them in memory (each event applied only if it is
//! newer than the row's version), write the changed rows back in one statement.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use infra::event_store::StoredEvent;
use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, CopySink, Decoded, Fold, Projection, Table, View};

use crate::FLUSH_ROWS;
use sqlx::PgConnection;

#[derive(Debug, Clone, Copy)]
pub struct InventoryProjection;

impl InventoryProjection {
    pub const NAME: &'static str = "inventory";
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    sku: String,
    name: String,
    unit_price_minor: i64,
    currency: String,
    on_hand: i64,
    reserved: i64,
    version: i64,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

/// Folds one event into the rows (pure).
fn evolve(rows: &mut HashMap<String, Row>, stored: &StoredEvent, event: &InventoryEvent) {
    let sku = &stored.aggregate_id;
    if let InventoryEvent::Registered {
        name,
        unit_price,
        initial_stock,
        at,
        ..
    } = event
    {
        rows.entry(sku.clone()).or_insert_with(|| Row {
            sku: sku.clone(),
            name: name.to_string(),
            unit_price_minor: unit_price.amount_minor(),
            currency: unit_price.currency().to_string(),
            on_hand: i64::from(*initial_stock),
            reserved: 0,
            version: stored.sequence,
            updated_at: *at,
            last_position: stored.position,
        });
        return;
    }
    let Some(row) = rows.get_mut(sku) else {
        return;
    };
    // Applied once: an event at or below the row's version is already in it.
    if stored.sequence <= row.version {
        return;
    }
    let (on_hand, reserved, at) = match event {
        InventoryEvent::Registered { .. } => return,
        InventoryEvent::Restocked { quantity, at } => (i64::from(quantity.get()), 0, at),
        InventoryEvent::Reserved { quantity, at, .. } => (0, i64::from(quantity.get()), at),
        InventoryEvent::Released { quantity, at, .. } => (0, -i64::from(quantity.get()), at),
        InventoryEvent::Committed { quantity, at, .. } => {
            let units = i64::from(quantity.get());
            (-units, -units, at)
        }
    };
    row.on_hand += on_hand;
    row.reserved += reserved;
    row.version = stored.sequence;
    row.updated_at = *at;
    row.last_position = stored.position;
}

#[async_trait]
impl Projection for InventoryProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&InventoryEvent::TYPES)
    }

    fn tables(&self) -> &'static [Table] {
        &[Table {
            name: "inventory_v1",
            key: &["sku"],
            insert_only: false,
        }]
    }

    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == InventoryItem::TYPE
    }

    fn views(&self) -> &'static [View] {
        &[View {
            name: "inventory",
            definition: "SELECT * FROM inventory_v1",
        }]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        let mut skus: Vec<&str> = events
            .iter()
            .map(|d| d.stored.aggregate_id.as_str())
            .collect();
        skus.sort_unstable();
        skus.dedup();
        let loaded: Vec<Row> = sqlx::query_as(
            "SELECT sku, name, unit_price_minor, currency, on_hand, reserved, version, updated_at,
                    last_position
               FROM inventory_v1 WHERE sku = ANY($1)",
        )
        .bind(&skus)
        .fetch_all(&mut *conn)
        .await?;
        let mut rows: HashMap<String, Row> =
            loaded.into_iter().map(|r| (r.sku.clone(), r)).collect();
        let before = rows.clone();
        evolve_all(&mut rows, events);
        let changed: Vec<&Row> = rows
            .values()
            .filter(|row| before.get(&row.sku) != Some(*row))
            .collect();
        write(conn, &changed).await
    }

    fn fold(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(Folded::default()))
    }
}

fn evolve_all(rows: &mut HashMap<String, Row>, events: &[Decoded]) {
    for decoded in events {
        if let DomainEvent::Inventory(event) = &decoded.event {
            evolve(rows, &decoded.stored, event);
        }
    }
}

async fn write(conn: &mut PgConnection, changed: &[&Row]) -> Result<(), ApplyError> {
    if changed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO inventory_v1 (sku, name, unit_price_minor, currency, on_hand, reserved,
                                       version, updated_at, last_position)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::bigint[], $8::timestamptz[], $9::bigint[])
             ON CONFLICT (sku) DO UPDATE
                SET name = EXCLUDED.name, unit_price_minor = EXCLUDED.unit_price_minor,
                    currency = EXCLUDED.currency, on_hand = EXCLUDED.on_hand,
                    reserved = EXCLUDED.reserved, version = EXCLUDED.version,
                    updated_at = EXCLUDED.updated_at, last_position = EXCLUDED.last_position",
    )
    .bind(changed.iter().map(|r| r.sku.as_str()).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|r| r.unit_price_minor)
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|r| r.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(changed.iter().map(|r| r.on_hand).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.reserved).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.last_position).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// The model in memory for a rebuild from empty tables ([`Fold`]).
#[derive(Debug, Default)]
struct Folded {
    rows: HashMap<String, Row>,
}

#[async_trait]
impl Fold for Folded {
    async fn fold(
        &mut self,
        _out: &mut dyn CopySink,
        events: &[Decoded],
    ) -> Result<(), ApplyError> {
        evolve_all(&mut self.rows, events);
        Ok(())
    }

    fn held(&self) -> usize {
        self.rows.len()
    }

    async fn flush(
        &mut self,
        conn: &mut PgConnection,
        _out: &mut dyn CopySink,
    ) -> Result<(), ApplyError> {
        let mut rows: Vec<Row> = self.rows.drain().map(|(_, row)| row).collect();
        rows.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
        for chunk in rows.chunks(FLUSH_ROWS) {
            write(conn, &chunk.iter().collect::<Vec<_>>()).await?;
        }
        Ok(())
    }
}
