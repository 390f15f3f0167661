use std::time::{Duration, Instant};

use chrono::TimeZone;
use domain::Timestamp;
use domain::inventory::{InventoryCommand, InventoryItem};
use domain::money::{Currency, Money, Quantity};
use domain::text::{ItemName, Sku};
use infra::commands::{CommandExecutor, CommandOptions, ExecutorPolicy, IdempotencyKey};
use infra::event_store::{Checkpoint, EventLog, StoredEvent};
use sqlx::PgPool;

pub fn t(second: u32) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, second)
        .single()
        .expect("valid time")
}

pub fn register(sku: &str, initial_stock: u32) -> InventoryCommand {
    InventoryCommand::Register {
        sku: Sku::parse(sku).expect("valid sku"),
        name: ItemName::parse("Mug").expect("valid name"),
        unit_price: Money::new(1250, Currency::parse("EUR").expect("EUR")).expect("price"),
        initial_stock,
        at: t(0),
    }
}

pub fn restock(units: u32) -> InventoryCommand {
    InventoryCommand::Restock {
        quantity: Quantity::new(units).expect("quantity"),
        at: t(1),
    }
}

pub fn inventory(pool: &PgPool, policy: ExecutorPolicy) -> CommandExecutor<InventoryItem> {
    CommandExecutor::new(pool.clone(), (), policy)
}

pub async fn registered_item(pool: &PgPool, sku: &str) -> CommandExecutor<InventoryItem> {
    let executor = inventory(pool, ExecutorPolicy::without_snapshots());
    executor
        .execute(sku, register(sku, 10), CommandOptions::default())
        .await
        .expect("register");
    executor
}

/// Follows the global log from `from` until `count` events arrived or ten seconds passed.
///
/// Reads can come back short while any transaction in the cluster is open (the reader waits
/// for the oldest one: other tests run in parallel against the same server), so this polls;
/// it never sleeps to let something happen, it only waits for it.
pub async fn follow(log: &EventLog, from: Checkpoint, count: usize) -> Vec<StoredEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut checkpoint = from;
    let mut seen = Vec::new();
    while seen.len() < count && Instant::now() < deadline {
        let batch = log.read_after(checkpoint, 7).await.expect("read the log");
        if let Some(last) = batch.last() {
            checkpoint = last.checkpoint();
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.extend(batch);
    }
    seen
}

/// Options carrying idempotency key `key` for a request whose digest is all `hash`.
pub fn keyed(key: &str, hash: u8) -> CommandOptions {
    CommandOptions {
        idempotency: Some(IdempotencyKey::new(key, [hash; 32]).expect("test setup")),
        ..CommandOptions::default()
    }
}
