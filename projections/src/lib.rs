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
mod writers;

use std::sync::Arc;

use infra::event_store::notify::Notifier;
use infra::projection::{EVENTS_CHANNEL, Group, Projection, Worker, WorkerConfig, WorkerError};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};

/// Rows per statement when a [`Fold`](infra::projection::Fold) writes out what it held.
pub(crate) const FLUSH_ROWS: usize = 10_000;

/// Every read model of the system, in the order they are started.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(inventory::InventoryProjection),
        Arc::new(order_details::OrderDetailsProjection),
        Arc::new(customer_orders::CustomerOrdersProjection),
        Arc::new(sales_daily::SalesDailyProjection),
    ]
}

/// Runs every read model from the global log until `stopped` turns true, as the projector
/// does: with `joint_batches`, the four step together ([`Group`]: one transaction per batch
/// for all of them, each with its own lease, row and checkpoint), else each on a worker of
/// its own. Woken by the log's notifications; their checkpoint notices go out together.
/// Returns when the workers have finished their batches and released their leases.
pub async fn run_from_log(
    pool: PgPool,
    config: WorkerConfig,
    joint_batches: bool,
    stopped: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let notifier = Notifier::new(pool.clone());
    let mut wakeups = Vec::new();
    let mut tasks = Vec::new();
    if joint_batches {
        let group = Group::register(pool.clone(), all(), config)
            .await?
            .notifying_through(&notifier);
        tracing::info!(projections = ?group.names(), "workers started, stepping together");
        let wakeup = Arc::new(Notify::new());
        wakeups.push(wakeup.clone());
        tasks.push(tokio::spawn(group.run(wakeup, stopped)));
    } else {
        for projection in all() {
            let worker = Worker::register(pool.clone(), projection, config)
                .await?
                .notifying_through(&notifier);
            tracing::info!(projection = worker.name(), "worker started");
            let wakeup = Arc::new(Notify::new());
            wakeups.push(wakeup.clone());
            tasks.push(tokio::spawn(worker.run(wakeup, stopped.clone())));
        }
    }
    let listener = tokio::spawn(infra::projection::listen_for_events(
        pool,
        EVENTS_CHANNEL,
        wakeups,
    ));
    for task in tasks {
        // Each finishes its batch (committed or rolled back), then releases its leases.
        let _ = task.await;
    }
    listener.abort();
    Ok(())
}
