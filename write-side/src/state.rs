//! What every handler can reach: the command executors, the catalog, the clock and the pool.

use std::sync::Arc;

use domain::inventory::InventoryItem;
use domain::order::Order;
use domain::ports::Clock;
use infra::catalog::PgCatalog;
use infra::commands::{CommandExecutor, ExecutorPolicy};
use infra::db::Pool;
use infra::event_store::notify::Notifier;

/// Inventory items get long streams (every reservation is an event), so they are
/// snapshotted; orders and payments stay short and are not.
const INVENTORY_SNAPSHOT_EVERY: u64 = 100;
/// Bump when `InventoryItem`'s serde shape changes (old snapshots are then ignored).
const INVENTORY_SNAPSHOT_VERSION: i32 = 1;

/// How inventory items are stored; the same in every process that writes them.
pub fn inventory_policy() -> ExecutorPolicy {
    ExecutorPolicy::with_snapshots(INVENTORY_SNAPSHOT_EVERY, INVENTORY_SNAPSHOT_VERSION)
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub inventory: CommandExecutor<InventoryItem>,
    pub orders: CommandExecutor<Order>,
    pub catalog: PgCatalog,
    pub clock: Arc<dyn Clock>,
    pub pool: Pool,
}

impl AppState {
    pub fn new(pool: Pool, clock: Arc<dyn Clock>) -> Self {
        let notifier = Notifier::new(pool.clone());
        Self {
            inventory: CommandExecutor::new(
                pool.clone(),
                (),
                ExecutorPolicy::with_snapshots(
                    INVENTORY_SNAPSHOT_EVERY,
                    INVENTORY_SNAPSHOT_VERSION,
                ),
            )
            .notifying_through(&notifier),
            orders: CommandExecutor::new(pool.clone(), (), ExecutorPolicy::without_snapshots())
                .notifying_through(&notifier),
            catalog: PgCatalog::new(pool.clone()),
            clock,
            pool,
        }
    }
}

impl axum::extract::FromRef<AppState> for Pool {
    fn from_ref(state: &AppState) -> Pool {
        state.pool.clone()
    }
}
