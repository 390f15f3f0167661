//! Projections: workers that follow the global log and keep PostgreSQL read models.
//!
//! They run on `infra::projection`'s worker: one live instance per projection (advisory lock
//! plus a fencing token), each batch of rows and its checkpoint in one transaction, wake-ups
//! by LISTEN/NOTIFY with polling as a fallback, retries with backoff for transient errors,
//! and poison events parked in a dead-letter table.
//!
//! - One module per read model: [`inventory`], [`order_details`], [`customer_orders`],
//!   [`sales_daily`]. Each is an `evolve` for tables: idempotent upserts guarded by the last
//!   applied version, with timestamps taken from events so a rebuild reproduces every row.
//!
//! - [`rebuild`]: zero-downtime rebuilds into shadow tables, and dry runs.
//! - [`admin`], [`replay`], [`cli`]: the operator CLI, `ordo`.
//!
//! Deliberately not here: reading the models (the `read-side` crate) and side effects outside
//! the read-model database (sagas, Kafka), which cannot share the checkpoint's transaction.

pub mod admin;
pub mod cli;
pub mod customer_orders;
pub mod inventory;
pub mod kafka_source;
pub mod notifications;
pub mod order_details;
pub mod rebuild;
pub mod replay;
pub mod sales_daily;

use std::sync::Arc;

use infra::projection::Projection;

/// Every read model of the system, in the order they are started.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(inventory::InventoryProjection),
        Arc::new(order_details::OrderDetailsProjection),
        Arc::new(customer_orders::CustomerOrdersProjection),
        Arc::new(sales_daily::SalesDailyProjection),
    ]
}
