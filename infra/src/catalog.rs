//! The catalog port on the event store: what the registered inventory items say about SKUs.

use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::order::CatalogFacts;
use domain::ports::Catalog;
use domain::text::Sku;
use sqlx::{PgPool, Row};

/// Reads each SKU's registration event (sequence 1 of its stream): one indexed lookup per
/// SKU, and always current, because an item's currency never changes after registration.
#[derive(Debug, Clone)]
pub struct PgCatalog {
    pool: PgPool,
}

impl PgCatalog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("failed to look up SKUs")]
    Query(#[source] sqlx::Error),
    #[error("the registration event of SKU {sku} is unreadable")]
    Decode {
        sku: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Catalog for PgCatalog {
    type Error = CatalogError;

    async fn facts_for(&self, skus: &[Sku]) -> Result<CatalogFacts, CatalogError> {
        let ids: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let rows = sqlx::query(
            "SELECT aggregate_id, payload FROM events
              WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND sequence = 1",
        )
        .bind(InventoryItem::TYPE)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(CatalogError::Query)?;
        let mut facts = Vec::with_capacity(rows.len());
        for row in rows {
            let sku: String = row.try_get("aggregate_id").map_err(CatalogError::Query)?;
            let payload: serde_json::Value = row.try_get("payload").map_err(CatalogError::Query)?;
            let event: InventoryEvent =
                serde_json::from_value(payload).map_err(|source| CatalogError::Decode {
                    sku: sku.clone(),
                    source,
                })?;
            if let InventoryEvent::Registered {
                sku, unit_price, ..
            } = event
            {
                facts.push((sku, unit_price.currency()));
            }
        }
        Ok(CatalogFacts::new(facts))
    }
}
