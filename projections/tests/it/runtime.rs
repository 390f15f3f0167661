//! The worker: crash safety, one live instance, fencing, poison events, transient failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::inventory::InventoryCommand;
use infra::event_store::StoredEvent;
use infra::projection::{
    ApplyError, Decoded, Outcome, PoisonPolicy, Projection, Worker, WorkerConfig, WorkerError,
};
use projections::inventory::InventoryProjection;
use projections::order_details::OrderDetailsProjection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};

use crate::helpers::{
    Shop, caught_up, delegating_to, drain, fast_config, qty, rows, start_order_details_over, worker,
};

/// A pool of its own, standing for another process: closing it is that process dying.
pub(crate) async fn process_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("test setup")
}

async fn wait_until_caught_up(pool: &PgPool, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !caught_up(pool, name).await {
        assert!(Instant::now() < deadline, "{name} did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Delegates to order details, but stops forever inside the `stop_at`-th event it applies,
/// with the batch's transaction open: the moment a crash hurts most.
struct StopsMidBatch {
    applied: AtomicU32,
    stop_at: u32,
    inside: Arc<Notify>,
}

#[async_trait]
impl Projection for StopsMidBatch {
    delegating_to!(OrderDetailsProjection);
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        OrderDetailsProjection.apply(conn, events).await?;
        let before = self
            .applied
            .fetch_add(events.len() as u32, Ordering::SeqCst);
        if before < self.stop_at && before + events.len() as u32 >= self.stop_at {
            self.inside.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_worker_killed_mid_batch_and_restarted_ends_with_the_rows_of_an_uninterrupted_run(
    pool: PgPool,
) {
    Shop::new(&pool).history().await;
    // First run: it commits one batch (7 events), then dies in the middle of the second.
    let victim = process_pool(&pool).await;
    let inside = Arc::new(Notify::new());
    let stopping = Arc::new(StopsMidBatch {
        applied: AtomicU32::new(0),
        stop_at: 11,
        inside: inside.clone(),
    });
    let mut doomed = Worker::register(victim.clone(), stopping, fast_config())
        .await
        .unwrap();
    let run = tokio::spawn(async move {
        loop {
            doomed.run_once().await.unwrap();
        }
    });
    inside.notified().await;
    run.abort();
    let _ = run.await;
    victim.close().await;

    // Second run: a new process resumes from the committed checkpoint.
    let mut restarted = worker(&pool, Arc::new(OrderDetailsProjection)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while drain(&pool, &mut restarted).await == Outcome::Standby {
        assert!(Instant::now() < deadline, "the lease was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_crash = (
        rows(&pool, "order_details_v1").await,
        rows(&pool, "order_timeline_v1").await,
    );

    // The reference: the same projection built in one uninterrupted run.
    start_order_details_over(&pool).await;
    restarted.release();
    let mut clean = worker(&pool, Arc::new(OrderDetailsProjection)).await;
    while drain(&pool, &mut clean).await == Outcome::Standby {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let uninterrupted = (
        rows(&pool, "order_details_v1").await,
        rows(&pool, "order_timeline_v1").await,
    );
    assert_eq!(after_crash, uninterrupted);
    assert_eq!(after_crash.0.len(), 3);
}

/// Delegates to order details, noting the `synchronous_commit` its batches run with.
struct NotesCommitMode {
    seen: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Projection for NotesCommitMode {
    delegating_to!(OrderDetailsProjection);
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        let mode: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *conn)
            .await?;
        self.seen.lock().expect("not poisoned").push(mode);
        OrderDetailsProjection.apply(conn, events).await
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn batches_commit_without_waiting_for_the_wal_flush_unless_configured_to(pool: PgPool) {
    Shop::new(&pool).history().await;
    // The server's own setting (on, unless this PostgreSQL is configured otherwise).
    let server: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut modes = Vec::new();
    for synchronous_commit in [false, true] {
        let projection = Arc::new(NotesCommitMode {
            seen: std::sync::Mutex::new(Vec::new()),
        });
        let config = WorkerConfig {
            synchronous_commit,
            ..fast_config()
        };
        let mut worker = Worker::register(pool.clone(), projection.clone(), config)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while drain(&pool, &mut worker).await == Outcome::Standby {
            // The previous worker's lease session is still closing.
            assert!(Instant::now() < deadline, "the lease was never released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.release();
        // What an asynchronous commit wrote is there for every other session at once.
        assert!(caught_up(&pool, OrderDetailsProjection::NAME).await);
        assert_eq!(rows(&pool, "order_details_v1").await.len(), 3);
        let seen = projection.seen.lock().expect("not poisoned").clone();
        assert!(seen.len() >= 2, "{seen:?}");
        modes.push(seen);
        // The second run starts over.
        start_order_details_over(&pool).await;
    }
    assert!(modes[0].iter().all(|mode| mode == "off"), "{modes:?}");
    assert!(modes[1].iter().all(|mode| *mode == server), "{modes:?}");
    // The setting was the batch's own: the pool's sessions keep the server's.
    let after: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, server);
}

/// Records which worker applied which event, in a table without a unique key, so a double
/// application shows as a duplicate row.
/// Records which worker applied each event, in `applied` (which the test creates).
pub(crate) struct Recording {
    pub(crate) label: &'static str,
}

#[async_trait]
impl Projection for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn version(&self) -> i32 {
        1
    }
    fn handles(&self, _: &StoredEvent) -> bool {
        true
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        for decoded in events {
            sqlx::query("INSERT INTO applied (event_id, worker) VALUES ($1, $2)")
                .bind(decoded.stored.event_id)
                .bind(self.label)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// The table `Recording` writes each application into, with the worker that made it.
pub(crate) async fn create_applied(pool: &PgPool) {
    sqlx::query("CREATE TABLE applied (event_id uuid NOT NULL, worker text NOT NULL)")
        .execute(pool)
        .await
        .expect("test setup");
}

pub(crate) async fn applied(pool: &PgPool) -> (i64, i64, Vec<String>) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id), COALESCE(array_agg(DISTINCT worker), '{}') FROM applied",
    )
    .fetch_one(pool)
    .await
    .expect("test setup")
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn two_workers_on_one_projection_never_both_apply_and_the_standby_takes_over(pool: PgPool) {
    create_applied(&pool).await;
    let shop = Shop::new(&pool);
    shop.item("HOT", 1, 0).await;
    let (stop, stopped) = watch::channel(false);
    let process_a = process_pool(&pool).await;
    let process_b = process_pool(&pool).await;
    let a = Worker::register(
        process_a.clone(),
        Arc::new(Recording { label: "a" }),
        fast_config(),
    )
    .await
    .unwrap();
    let b = Worker::register(
        process_b.clone(),
        Arc::new(Recording { label: "b" }),
        fast_config(),
    )
    .await
    .unwrap();
    let task_a = tokio::spawn(a.run(Arc::new(Notify::new()), stopped.clone()));
    let task_b = tokio::spawn(b.run(Arc::new(Notify::new()), stopped.clone()));
    for _ in 0..30 {
        shop.inventory(
            "HOT",
            InventoryCommand::Restock {
                quantity: qty(1),
                at: crate::helpers::t(1, 1),
            },
        )
        .await;
    }
    wait_until_caught_up(&pool, "recording").await;
    let (total, distinct, workers) = applied(&pool).await;
    assert_eq!(
        (total, distinct),
        (31, 31),
        "every event applied exactly once"
    );
    assert_eq!(
        workers.len(),
        1,
        "only the live worker applied: {workers:?}"
    );
    let first = workers[0].clone();

    // The live worker's process dies; the standby takes over and applies the rest.
    let (dead_task, dead_pool) = if first == "a" {
        (task_a, process_a)
    } else {
        (task_b, process_b)
    };
    dead_task.abort();
    let _ = dead_task.await;
    dead_pool.close().await;
    for _ in 0..20 {
        shop.inventory(
            "HOT",
            InventoryCommand::Restock {
                quantity: qty(1),
                at: crate::helpers::t(1, 2),
            },
        )
        .await;
    }
    wait_until_caught_up(&pool, "recording").await;
    let (total, distinct, workers) = applied(&pool).await;
    assert_eq!(
        (total, distinct),
        (51, 51),
        "nothing lost, nothing applied twice"
    );
    assert_eq!(workers.len(), 2, "the standby took over");
    let _ = stop.send(true);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_worker_whose_lease_was_taken_over_cannot_commit(pool: PgPool) {
    create_applied(&pool).await;
    let shop = Shop::new(&pool);
    shop.item("SKU", 1, 0).await;
    // A heartbeat too slow to notice anything during the test: the zombie believes it
    // still holds the lease.
    let slow = WorkerConfig {
        heartbeat_interval: Duration::from_secs(3600),
        ..fast_config()
    };
    let mut zombie = Worker::register(pool.clone(), Arc::new(Recording { label: "zombie" }), slow)
        .await
        .unwrap();
    assert_eq!(drain(&pool, &mut zombie).await, Outcome::Idle);
    // Its lease session dies (a network partition, say) without it noticing...
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .execute(&pool)
    .await
    .unwrap();
    // ...and another worker takes over.
    let mut successor = worker(&pool, Arc::new(Recording { label: "successor" })).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while drain(&pool, &mut successor).await == Outcome::Standby {
        assert!(
            Instant::now() < deadline,
            "the successor never got the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shop.inventory(
        "SKU",
        InventoryCommand::Restock {
            quantity: qty(1),
            at: crate::helpers::t(1, 1),
        },
    )
    .await;
    // The zombie tries to apply the new event: its token is stale, so it is refused.
    let err = zombie.run_once().await.unwrap_err();
    assert!(matches!(
        err,
        WorkerError::Fenced {
            projection: "recording"
        }
    ));
    drain(&pool, &mut successor).await;
    let (total, distinct, _) = applied(&pool).await;
    assert_eq!((total, distinct), (2, 2));
    let zombie_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM applied WHERE worker = 'zombie'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        zombie_rows, 1,
        "only what it applied while it held the lease"
    );
}

async fn poison(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
         VALUES ('inventory_item', 'BAD', 1, 'InventoryItemRegistered', '1.0', '{\"Registered\": {\"oops\": true}}')",
    )
    .execute(pool)
    .await
    .expect("test setup");
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_poison_event_is_parked_and_halts_the_projection(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.item("GOOD1", 1, 1).await;
    poison(&pool).await;
    shop.item("GOOD2", 1, 1).await;
    let mut inventory = worker(&pool, Arc::new(InventoryProjection)).await;
    assert_eq!(drain(&pool, &mut inventory).await, Outcome::Halted);
    let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM inventory ORDER BY sku")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        skus,
        ["GOOD1"],
        "the events before the poison are applied, none after"
    );
    let (status, attempts, error, aggregate_id): (String, i32, String, String) = sqlx::query_as(
        "SELECT status, attempts, error, aggregate_id FROM projection_dead_letters WHERE projection = 'inventory'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), attempts, aggregate_id.as_str()),
        ("parked", 3, "BAD")
    );
    assert!(error.contains("decoded"), "{error}");
    let (state, last_error): (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM projection_state WHERE name = 'inventory'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "halted");
    assert_eq!(last_error.as_deref(), Some(error.as_str()));
    // Halted stays halted: running again applies nothing.
    assert_eq!(inventory.run_once().await.unwrap(), Outcome::Halted);
}

struct SkippingInventory;

#[async_trait]
impl Projection for SkippingInventory {
    fn name(&self) -> &'static str {
        "inventory_skipping"
    }
    fn version(&self) -> i32 {
        1
    }
    fn poison_policy(&self) -> PoisonPolicy {
        PoisonPolicy::Skip
    }
    fn handles(&self, stored: &StoredEvent) -> bool {
        InventoryProjection.handles(stored)
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        InventoryProjection.apply(conn, events).await
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_projection_that_skips_parks_the_poison_event_and_goes_on(pool: PgPool) {
    let shop = Shop::new(&pool);
    poison(&pool).await;
    shop.item("GOOD", 1, 1).await;
    let mut inventory = worker(&pool, Arc::new(SkippingInventory)).await;
    assert_eq!(drain(&pool, &mut inventory).await, Outcome::Idle);
    let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM inventory")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(skus, ["GOOD"]);
    let status: String = sqlx::query_scalar(
        "SELECT status FROM projection_dead_letters WHERE projection = 'inventory_skipping'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "skipped");
    let state: String =
        sqlx::query_scalar("SELECT state FROM projection_state WHERE name = 'inventory_skipping'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "running");
}

/// Fails with a connection-level error a few times, then works.
struct Flaky {
    failures_left: AtomicU32,
}

#[async_trait]
impl Projection for Flaky {
    fn name(&self) -> &'static str {
        InventoryProjection::NAME
    }
    fn version(&self) -> i32 {
        1
    }
    fn handles(&self, stored: &StoredEvent) -> bool {
        InventoryProjection.handles(stored)
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ApplyError::Database(sqlx::Error::PoolTimedOut));
        }
        InventoryProjection.apply(conn, events).await
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn transient_failures_are_retried_and_never_parked(pool: PgPool) {
    Shop::new(&pool).item("SKU", 1, 1).await;
    let mut inventory = worker(
        &pool,
        Arc::new(Flaky {
            failures_left: AtomicU32::new(5),
        }),
    )
    .await;
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match inventory.run_once().await {
            Err(WorkerError::Apply { .. }) => failures += 1,
            Ok(Outcome::Progressed { events: 1 }) => break,
            // The event is not settled yet (a transaction elsewhere is open): look again.
            Ok(Outcome::Idle) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "never applied");
    }
    assert_eq!(failures, 5, "each transient failure is retried as is");
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
    let on_hand: i64 = sqlx::query_scalar("SELECT on_hand FROM inventory WHERE sku = 'SKU'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(on_hand, 1);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_worker_for_another_version_than_the_database_applies_nothing(pool: PgPool) {
    Shop::new(&pool).item("SKU", 1, 1).await;
    sqlx::query("INSERT INTO projection_state (name, version) VALUES ('inventory', 7)")
        .execute(&pool)
        .await
        .unwrap();
    let mut inventory = worker(&pool, Arc::new(InventoryProjection)).await;
    assert_eq!(
        inventory.run_once().await.unwrap(),
        Outcome::VersionMismatch {
            database: 7,
            code: 1
        }
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory_v1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

/// The log is read only below the oldest running transaction: an event whose append was
/// notified stays out of reach while an older transaction runs, and when that one appends
/// nothing, no notification says it ended. The worker looks again shortly after a read a
/// notification prompted finds nothing (and again, less and less often), so the event is
/// applied soon after, not at the next poll (ten minutes here).
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_event_held_back_by_an_older_transaction_is_applied_when_it_ends_unannounced(
    pool: PgPool,
) {
    let shop = Shop::new(&pool);
    // Older than the append below (it has a transaction id), and appends nothing.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *blocker)
        .await
        .unwrap();
    shop.item("MUG", 1250, 5).await;
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(600),
        ..fast_config()
    };
    let worker = Worker::register(pool.clone(), Arc::new(InventoryProjection), config)
        .await
        .unwrap();
    let wakeup = Arc::new(Notify::new());
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(worker.run(wakeup.clone(), stopped));
    // The append's notification.
    wakeup.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rows(&pool, "inventory").await.is_empty(),
        "read past a running older transaction"
    );
    blocker.commit().await.unwrap();
    wait_until_caught_up(&pool, InventoryProjection::NAME).await;
    assert_eq!(rows(&pool, "inventory").await.len(), 1);
    let _ = stop.send(true);
    run.await.unwrap();
}
