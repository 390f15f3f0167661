use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use domain::Timestamp;
use domain::ids::{CustomerId, OrderId, RefundId};
use domain::inventory::{InventoryCommand, InventoryItem};
use domain::money::{Currency, Money, Quantity};
use domain::order::{
    CancelReason, CatalogFacts, Order, OrderCommand, OrderLine, OrderLines, ReservedLine,
};
use domain::payment::{Payment, PaymentCommand};
use domain::text::{CardToken, ItemName, Sku};
use infra::commands::{CommandExecutor, CommandOptions, ExecutorPolicy};
use infra::projection::{Outcome, Projection, Worker, WorkerConfig};
use sqlx::PgPool;

pub fn t(day: u32, second: u32) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 3, day, 12, 0, second)
        .single()
        .expect("valid time")
}

pub fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").expect("EUR")).expect("money")
}

pub fn qty(units: u32) -> Quantity {
    Quantity::new(units).expect("quantity")
}

pub fn sku(name: &str) -> Sku {
    Sku::parse(name).expect("sku")
}

pub fn order_id(n: u8) -> OrderId {
    OrderId::from(uuid::Uuid::from_bytes([n; 16]))
}

pub fn customer(n: u8) -> CustomerId {
    CustomerId::from(uuid::Uuid::from_bytes([0xc0 | n; 16]))
}

/// Writes commands the way the command API and the saga do.
pub struct Shop {
    pub items: CommandExecutor<InventoryItem>,
    pub orders: CommandExecutor<Order>,
    pub payments: CommandExecutor<Payment>,
}

impl Shop {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            items: CommandExecutor::new(pool.clone(), (), ExecutorPolicy::without_snapshots()),
            orders: CommandExecutor::new(pool.clone(), (), ExecutorPolicy::without_snapshots()),
            payments: CommandExecutor::new(pool.clone(), (), ExecutorPolicy::without_snapshots()),
        }
    }

    pub async fn item(&self, name: &str, unit_price: i64, stock: u32) {
        let command = InventoryCommand::Register {
            sku: sku(name),
            name: ItemName::parse(format!("Item {name}")).expect("name"),
            unit_price: eur(unit_price),
            initial_stock: stock,
            at: t(1, 0),
        };
        self.items
            .execute(name, command, CommandOptions::default())
            .await
            .expect("register");
    }

    pub async fn inventory(&self, name: &str, command: InventoryCommand) {
        self.items
            .execute(name, command, CommandOptions::default())
            .await
            .expect("inventory command");
    }

    pub async fn order(&self, order: u8, customer_n: u8, lines: &[(&str, u32)], day: u32) {
        let order_lines = OrderLines::new(
            lines
                .iter()
                .map(|(name, units)| OrderLine {
                    sku: sku(name),
                    quantity: qty(*units),
                })
                .collect(),
        )
        .expect("lines");
        let catalog = CatalogFacts::new(
            lines
                .iter()
                .map(|(name, _)| (sku(name), Currency::parse("EUR").expect("EUR"))),
        );
        let command = OrderCommand::Place {
            customer_id: customer(customer_n),
            lines: order_lines,
            card_token: CardToken::parse("tok_visa").expect("token"),
            catalog,
            at: t(day, 1),
        };
        self.orders
            .execute(
                &order_id(order).to_string(),
                command,
                CommandOptions::default(),
            )
            .await
            .expect("place");
    }

    /// Reserves each line on its item, then records the reservation on the order.
    pub async fn reserve(&self, order: u8, lines: &[(&str, u32, i64)], day: u32) {
        for (name, units, _) in lines {
            self.inventory(
                name,
                InventoryCommand::Reserve {
                    order_id: order_id(order),
                    quantity: qty(*units),
                    at: t(day, 2),
                },
            )
            .await;
        }
        let reserved = lines
            .iter()
            .map(|(name, units, price)| ReservedLine {
                sku: sku(name),
                quantity: qty(*units),
                unit_price: eur(*price),
            })
            .collect();
        self.order_command(
            order,
            OrderCommand::RecordStockReserved {
                lines: reserved,
                at: t(day, 2),
            },
        )
        .await;
    }

    pub async fn order_command(&self, order: u8, command: OrderCommand) {
        self.orders
            .execute(
                &order_id(order).to_string(),
                command,
                CommandOptions::default(),
            )
            .await
            .expect("order command");
    }

    pub async fn payment(&self, order: u8, command: PaymentCommand) {
        self.payments
            .execute(
                &order_id(order).to_string(),
                command,
                CommandOptions::default(),
            )
            .await
            .expect("payment command");
    }

    /// Authorizes and captures `total`, then confirms.
    pub async fn pay_and_confirm(&self, order: u8, total: i64, day: u32) {
        self.payment(
            order,
            PaymentCommand::Authorize {
                order_id: order_id(order),
                amount: eur(total),
                authorization_id: domain::text::AuthorizationId::parse(format!("auth_{order}"))
                    .expect("authorization id"),
                at: t(day, 3),
            },
        )
        .await;
        self.payment(order, PaymentCommand::Capture { at: t(day, 4) })
            .await;
        self.order_command(order, OrderCommand::Confirm { at: t(day, 5) })
            .await;
    }

    pub async fn cancel(&self, order: u8, reason: CancelReason, day: u32) {
        self.order_command(
            order,
            OrderCommand::Cancel {
                reason,
                at: t(day, 6),
            },
        )
        .await;
    }

    pub async fn refund(&self, order: u8, refund: u8, minor: i64, day: u32) {
        self.payment(
            order,
            PaymentCommand::Refund {
                refund_id: RefundId::from(uuid::Uuid::from_bytes([refund; 16])),
                amount: eur(minor),
                at: t(day, 7),
            },
        )
        .await;
    }

    /// A small but complete history touching every read model.
    pub async fn history(&self) {
        self.item("MUG", 1250, 10).await;
        self.item("CUP", 500, 3).await;
        self.inventory(
            "MUG",
            InventoryCommand::Restock {
                quantity: qty(5),
                at: t(1, 9),
            },
        )
        .await;
        // Order 1: confirmed then shipped.
        self.order(1, 1, &[("MUG", 2), ("CUP", 1)], 2).await;
        self.reserve(1, &[("MUG", 2, 1250), ("CUP", 1, 500)], 2)
            .await;
        self.pay_and_confirm(1, 3000, 2).await;
        self.inventory(
            "MUG",
            InventoryCommand::Commit {
                order_id: order_id(1),
                at: t(3, 0),
            },
        )
        .await;
        self.inventory(
            "CUP",
            InventoryCommand::Commit {
                order_id: order_id(1),
                at: t(3, 0),
            },
        )
        .await;
        self.order_command(1, OrderCommand::Ship { at: t(3, 1) })
            .await;
        // Order 2: same customer, confirmed, then cancelled and partly refunded.
        self.order(2, 1, &[("MUG", 1)], 3).await;
        self.reserve(2, &[("MUG", 1, 1250)], 3).await;
        self.pay_and_confirm(2, 1250, 3).await;
        self.cancel(2, CancelReason::CustomerRequest, 4).await;
        self.refund(2, 1, 1000, 4).await;
        self.inventory(
            "MUG",
            InventoryCommand::Release {
                order_id: order_id(2),
                at: t(4, 8),
            },
        )
        .await;
        // Order 3: another customer, cancelled out of stock before any reservation.
        self.order(3, 2, &[("CUP", 9)], 4).await;
        self.cancel(3, CancelReason::OutOfStock, 4).await;
    }
}

pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        batch_size: 7,
        max_attempts: 3,
        poll_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_millis(100),
        max_backoff: Duration::from_millis(200),
        synchronous_commit: false,
    }
}

pub async fn worker(pool: &PgPool, projection: Arc<dyn Projection>) -> Worker {
    Worker::register(pool.clone(), projection, fast_config())
        .await
        .expect("register the worker")
}

/// Runs the worker until it reports `Idle` with nothing left in the log, or ten seconds pass.
/// A read can come back short while a transaction anywhere in the cluster is open (other
/// tests run in parallel), so `Idle` is confirmed against the log's head.
pub async fn drain(pool: &PgPool, worker: &mut Worker) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = worker.run_once().await.expect("a projection step");
        match outcome {
            Outcome::Progressed { .. } | Outcome::Retrying => continue,
            Outcome::Idle if caught_up(pool, worker.name()).await => return outcome,
            Outcome::Halted
            | Outcome::Standby
            | Outcome::Paused
            | Outcome::VersionMismatch { .. } => return outcome,
            Outcome::Idle => {}
        }
        assert!(Instant::now() < deadline, "the projection did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the projection's checkpoint is at the last event in log order.
pub async fn caught_up(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (
            SELECT 1 FROM events e, projection_state p
             WHERE p.name = $1
               AND (e.transaction_id, e.position) > (p.checkpoint_tx, p.checkpoint_position))",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("compare checkpoint and head")
}

/// Moves every projection back to the start of the log (its rows stay).
pub async fn rewind(pool: &PgPool) {
    sqlx::query("UPDATE projection_state SET checkpoint_tx = '0', checkpoint_position = 0")
        .execute(pool)
        .await
        .expect("rewind the projections");
}

/// Empties order details' tables and moves every projection back to the start of the log.
pub async fn start_order_details_over(pool: &PgPool) {
    sqlx::query("TRUNCATE order_details_v1, order_payments_v1, order_timeline_v1")
        .execute(pool)
        .await
        .expect("empty order details");
    rewind(pool).await;
}

/// Every row of `table` as JSON, in a stable order, for whole-table comparisons.
pub async fn rows(pool: &PgPool, table: &str) -> Vec<serde_json::Value> {
    let sql = format!("SELECT to_jsonb(t) AS row FROM {table} t ORDER BY to_jsonb(t)::text");
    sqlx::query_scalar(&sql)
        .fetch_all(pool)
        .await
        .expect("read rows")
}

/// Waits until the projection has applied the whole log (its worker runs elsewhere).
pub async fn wait_until_caught_up(pool: &PgPool, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !caught_up(pool, name).await {
        assert!(Instant::now() < deadline, "{name} did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The name, version, filter and event types of `$inner`, for the test projections that wrap
/// a read model (to fail, stop or note something on the way).
macro_rules! delegating_to {
    ($inner:expr) => {
        fn name(&self) -> &'static str {
            $inner.name()
        }
        fn version(&self) -> i32 {
            $inner.version()
        }
        fn handles(&self, stored: &infra::event_store::StoredEvent) -> bool {
            $inner.handles(stored)
        }
        fn event_types(&self) -> Option<&'static [&'static str]> {
            $inner.event_types()
        }
    };
}
pub(crate) use delegating_to;
