//! The catalog port on the event store: what the registered inventory items say about SKUs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::money::Currency;
use domain::order::CatalogFacts;
use domain::ports::Catalog;
use domain::text::Sku;
use sqlx::{PgPool, Row};

/// Reads each SKU's registration event (sequence 1 of its stream): one indexed lookup per
/// SKU. What it found is kept in memory, because an item's registration never changes (it
/// is the first event of its stream), so the cache is never stale; SKUs not found are not
/// cached, so an item registered later is seen at once.
#[derive(Debug, Clone)]
pub struct PgCatalog {
    pool: PgPool,
    known: Arc<RwLock<HashMap<Sku, Currency>>>,
}

impl PgCatalog {
    /// Registrations kept in memory; past this the cache starts over (a bound, not an LRU:
    /// catalogs of this size are rare, and a miss costs one indexed lookup).
    pub const CACHE_CAPACITY: usize = 100_000;

    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            known: Arc::default(),
        }
    }

    fn cached(&self, skus: &[Sku]) -> Option<CatalogFacts> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        skus.iter()
            .map(|sku| Some((sku.clone(), *known.get(sku)?)))
            .collect::<Option<Vec<_>>>()
            .map(CatalogFacts::new)
    }

    fn remember(&self, facts: &[(Sku, Currency)]) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.len() + facts.len() > Self::CACHE_CAPACITY {
            known.clear();
        }
        known.extend(facts.iter().cloned());
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
        if let Some(facts) = self.cached(skus) {
            return Ok(facts);
        }
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
        self.remember(&facts);
        Ok(CatalogFacts::new(facts))
    }
}
