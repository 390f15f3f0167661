//! The projections of one process stepping together (`Group`): what they build, one
//! transaction per batch, and the members that must step alone (a failing event, a paused
//! projection, a lease taken over, a crash in the middle of a joint batch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infra::projection::{ApplyError, Decoded, Group, Outcome, Projection, Stepped, WorkerError};
use projections::inventory::InventoryProjection;
use projections::order_details::OrderDetailsProjection;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::helpers::{
    Shop, caught_up, delegating_to, drain, fast_config, rewind, rows, wait_until_caught_up, worker,
};
use crate::runtime::{Recording, applied, create_applied, process_pool};

async fn group(pool: &PgPool, projections: Vec<Arc<dyn Projection>>) -> Group {
    Group::register(pool.clone(), projections, fast_config())
        .await
        .expect("register the group")
}

/// Steps the group until no member has anything left to do (or ten seconds pass); returns
/// each member's last outcome.
async fn drain_group(pool: &PgPool, group: &mut Group) -> BTreeMap<&'static str, Outcome> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = BTreeMap::new();
    loop {
        let mut busy = false;
        for step in group.step().await {
            let outcome = step.outcome.expect("a projection step");
            busy |= match outcome {
                Outcome::Progressed { .. } | Outcome::Retrying => true,
                Outcome::Idle => !caught_up(pool, step.projection).await,
                _ => false,
            };
            last.insert(step.projection, outcome);
        }
        if !busy
            && last.len() == group.names().len()
            && !last.values().any(|o| *o == Outcome::Retrying)
        {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every row of every read model, by table.
async fn read_models(pool: &PgPool) -> BTreeMap<&'static str, Vec<serde_json::Value>> {
    let mut all = BTreeMap::new();
    for projection in projections::all() {
        for table in projection.tables() {
            all.insert(table.name, rows(pool, table.name).await);
        }
    }
    all
}

async fn empty_read_models(pool: &PgPool) {
    for projection in projections::all() {
        for table in projection.tables() {
            sqlx::query(&format!("TRUNCATE {}", table.name))
                .execute(pool)
                .await
                .expect("empty the read model");
        }
    }
    rewind(pool).await;
    sqlx::query("UPDATE projection_state SET state = 'running'")
        .execute(pool)
        .await
        .expect("run every projection");
}

/// Each projection built alone from the start, by its own worker.
async fn built_alone(pool: &PgPool) -> BTreeMap<&'static str, Vec<serde_json::Value>> {
    empty_read_models(pool).await;
    for projection in projections::all() {
        let mut alone = worker(pool, projection).await;
        assert_eq!(drain(pool, &mut alone).await, Outcome::Idle);
        alone.release();
    }
    read_models(pool).await
}

async fn state(pool: &PgPool, name: &str) -> (String, i64) {
    sqlx::query_as("SELECT state, checkpoint_position FROM projection_state WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("the projection's row")
}

/// Steps until a step finds events: until the history is settled (other tests'
/// transactions can hold it back), a step finds nothing.
/// Waits until every event in the log is settled: below the oldest transaction still open
/// anywhere on the server (other tests' included), so one read returns all of them.
async fn wait_until_settled(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let unsettled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())",
        )
        .fetch_one(pool)
        .await
        .expect("test setup");
        if unsettled == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the history never settled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn first_step_with_events(together: &mut Group) -> Vec<Stepped> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stepped = together.step().await;
        if stepped
            .iter()
            .any(|s| !matches!(s.outcome, Ok(Outcome::Idle)))
        {
            return stepped;
        }
        assert!(Instant::now() < deadline, "the history never settled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn projections_stepping_together_build_what_each_builds_alone_one_transaction_per_batch(
    pool: PgPool,
) {
    Shop::new(&pool).history().await;
    let mut together = group(&pool, projections::all()).await;
    let outcomes = drain_group(&pool, &mut together).await;
    assert!(
        outcomes.values().all(|o| *o == Outcome::Idle),
        "{outcomes:?}"
    );
    assert_eq!(together.stepping_together(), together.names());
    // Every batch moved the four in one transaction: one checkpoint, and one transaction's
    // start time (`now()`) on all four rows.
    let moved: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT checkpoint_tx::text, checkpoint_position, events_applied FROM projection_state
          WHERE name = ANY($1) GROUP BY 1, 2, 3, progress_at",
    )
    .bind(together.names())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let built_together = read_models(&pool).await;
    assert!(built_together.values().all(|rows| !rows.is_empty()));
    together.release();
    assert_eq!(built_alone(&pool).await, built_together);
}

/// Inventory, failing (not as poison: an ordinary error) on the events of one item.
struct FailsOn {
    sku: &'static str,
}

#[async_trait]
impl Projection for FailsOn {
    delegating_to!(InventoryProjection);
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        if let Some(bad) = events.iter().find(|e| e.stored.aggregate_id == self.sku) {
            return Err(ApplyError::Invalid(format!(
                "cannot apply {}",
                bad.stored.event_type
            )));
        }
        InventoryProjection.apply(conn, events).await
    }
}

fn all_but_inventory() -> impl Iterator<Item = Arc<dyn Projection>> {
    projections::all()
        .into_iter()
        .filter(|p| p.name() != InventoryProjection.name())
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_member_whose_event_fails_halts_alone_and_the_others_go_on(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.history().await;
    shop.item("BROKEN", 100, 5).await;
    shop.item("AFTER", 100, 5).await;
    let mut members: Vec<Arc<dyn Projection>> = vec![Arc::new(FailsOn { sku: "BROKEN" })];
    members.extend(all_but_inventory());
    let mut together = group(&pool, members).await;
    let outcomes = drain_group(&pool, &mut together).await;

    assert_eq!(outcomes["inventory"], Outcome::Halted);
    assert!(
        outcomes
            .iter()
            .all(|(name, o)| *name == "inventory" || *o == Outcome::Idle),
        "{outcomes:?}"
    );
    // The failing event is parked after the lone worker's attempts, as a worker alone would.
    let (event_id, attempts): (String, i32) = sqlx::query_as(
        "SELECT aggregate_id, attempts FROM projection_dead_letters WHERE projection = 'inventory'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((event_id.as_str(), attempts), ("BROKEN", 3));
    let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM inventory ORDER BY sku")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!skus.is_empty());
    assert!(
        !skus.iter().any(|s| s == "BROKEN" || s == "AFTER"),
        "nothing from the failing event on: {skus:?}"
    );
    // The others applied everything, the events their batch shared with the failure too.
    let others = together.stepping_together();
    assert_eq!(others.len(), 3, "{others:?}");
    assert!(!others.contains(&"inventory"));
    let built_together = read_models(&pool).await;
    together.release();
    let alone = built_alone(&pool).await;
    for (table, rows) in &built_together {
        if !table.starts_with("inventory") {
            assert_eq!(rows, &alone[table], "{table}");
        }
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_paused_member_waits_and_rejoins_when_resumed(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.item("FIRST", 100, 5).await;
    let mut together = group(&pool, projections::all()).await;
    drain_group(&pool, &mut together).await;
    let (_, paused_at) = state(&pool, "inventory").await;
    sqlx::query("UPDATE projection_state SET state = 'paused' WHERE name = 'inventory'")
        .execute(&pool)
        .await
        .unwrap();
    shop.history().await;

    let outcomes = drain_group(&pool, &mut together).await;
    assert_eq!(outcomes["inventory"], Outcome::Paused);
    assert_eq!(
        state(&pool, "inventory").await,
        ("paused".to_owned(), paused_at)
    );
    assert_eq!(together.stepping_together().len(), 3);
    assert!(caught_up(&pool, "order_details").await);

    sqlx::query("UPDATE projection_state SET state = 'running' WHERE name = 'inventory'")
        .execute(&pool)
        .await
        .unwrap();
    // Far behind (the history is several batches), it catches up alone: a joint batch is
    // read from the lowest checkpoint, so it would hold the others back.
    tokio::time::sleep(fast_config().poll_interval).await;
    for _ in 0..2 {
        together.step().await;
    }
    assert!(!caught_up(&pool, "inventory").await);
    assert_eq!(together.stepping_together().len(), 3);
    let outcomes = drain_group(&pool, &mut together).await;
    assert!(
        outcomes.values().all(|o| *o == Outcome::Idle),
        "{outcomes:?}"
    );
    assert!(caught_up(&pool, "inventory").await);
    // Caught up, it steps with the others again.
    shop.item("LATER", 100, 5).await;
    drain_group(&pool, &mut together).await;
    assert_eq!(together.stepping_together(), together.names());
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_member_whose_lease_was_taken_over_is_not_applied_by_the_joint_batch(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.item("FIRST", 100, 5).await;
    let mut together = group(&pool, projections::all()).await;
    drain_group(&pool, &mut together).await;
    let (_, before) = state(&pool, "order_details").await;
    // What a new owner does on taking the projection over: the group's token is stale now.
    sqlx::query(
        "UPDATE projection_state SET fencing_token = fencing_token + 1 WHERE name = 'order_details'",
    )
    .execute(&pool)
    .await
    .unwrap();
    shop.history().await;

    let stepped = first_step_with_events(&mut together).await;
    let order_details = stepped
        .iter()
        .find(|s| s.projection == "order_details")
        .expect("order details stepped");
    assert!(!order_details.joint);
    assert!(
        matches!(order_details.outcome, Err(WorkerError::Fenced { .. })),
        "{:?}",
        order_details.outcome
    );
    assert_eq!(state(&pool, "order_details").await.1, before);
    let others: Vec<_> = stepped
        .iter()
        .filter(|s| s.projection != "order_details")
        .collect();
    assert_eq!(others.len(), 3);
    assert!(
        others
            .iter()
            .all(|s| s.joint && matches!(s.outcome, Ok(Outcome::Progressed { .. })))
    );
}

/// Delegates to inventory, and stops forever inside its `stop_at`-th batch with the joint
/// transaction open (the other members' writes in it too): the moment a crash hurts most.
struct StopsInside {
    batches: std::sync::atomic::AtomicU32,
    stop_at: u32,
    inside: Arc<Notify>,
    stopping: AtomicBool,
}

#[async_trait]
impl Projection for StopsInside {
    delegating_to!(InventoryProjection);
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        InventoryProjection.apply(conn, events).await?;
        if self.batches.fetch_add(1, Ordering::SeqCst) + 1 == self.stop_at {
            self.stopping.store(true, Ordering::SeqCst);
            self.inside.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_group_killed_inside_a_joint_batch_and_restarted_ends_with_what_each_builds_alone(
    pool: PgPool,
) {
    Shop::new(&pool).history().await;
    // A process of its own: closing its pool is that process dying.
    let victim = process_pool(&pool).await;
    let inside = Arc::new(Notify::new());
    let stopping = Arc::new(StopsInside {
        batches: Default::default(),
        stop_at: 2,
        inside: inside.clone(),
        stopping: AtomicBool::new(false),
    });
    let mut members: Vec<Arc<dyn Projection>> = vec![stopping.clone()];
    members.extend(all_but_inventory());
    let mut doomed = Group::register(victim.clone(), members, fast_config())
        .await
        .unwrap();
    let run = tokio::spawn(async move {
        loop {
            doomed.step().await;
        }
    });
    inside.notified().await;
    assert!(stopping.stopping.load(Ordering::SeqCst));
    run.abort();
    let _ = run.await;
    victim.close().await;
    // It committed batches before dying in one.
    let (_, committed) = state(&pool, "order_details").await;
    assert!(committed > 0);

    let mut restarted = group(&pool, projections::all()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcomes = drain_group(&pool, &mut restarted).await;
        if outcomes.values().all(|o| *o == Outcome::Idle) {
            break;
        }
        // The dead process's leases end with its sessions.
        assert!(Instant::now() < deadline, "{outcomes:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_crash = read_models(&pool).await;
    restarted.release();
    assert_eq!(built_alone(&pool).await, after_crash);
}

/// Order details, failing once with an error worth retrying (a pool timeout).
struct FailsOnceTransiently {
    failed: AtomicBool,
}

#[async_trait]
impl Projection for FailsOnceTransiently {
    delegating_to!(OrderDetailsProjection);
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(ApplyError::Database(sqlx::Error::PoolTimedOut));
        }
        OrderDetailsProjection.apply(conn, events).await
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn after_a_transient_failure_the_joint_members_back_off_together_then_go_on(pool: PgPool) {
    Shop::new(&pool).history().await;
    let mut members: Vec<Arc<dyn Projection>> = projections::all()
        .into_iter()
        .filter(|p| p.name() != OrderDetailsProjection::NAME)
        .collect();
    members.push(Arc::new(FailsOnceTransiently {
        failed: AtomicBool::new(false),
    }));
    let mut together = group(&pool, members).await;
    // The first batch must hold order details' events: read the whole history at once.
    wait_until_settled(&pool).await;
    let failed = first_step_with_events(&mut together).await;
    // Every member of the batch is told, none stepped alone.
    assert_eq!(failed.len(), 4);
    assert!(
        failed
            .iter()
            .all(|s| s.joint && matches!(s.outcome, Err(WorkerError::Joint { .. }))),
        "{failed:?}"
    );
    // Nothing moved, and none steps alone: they wait out the backoff together (the next
    // round steps nobody, or, once the backoff is over, all of them together).
    assert_eq!(state(&pool, "inventory").await.1, 0);
    let next = together.step().await;
    assert!(next.iter().all(|s| s.joint), "{next:?}");
    let outcomes = drain_group(&pool, &mut together).await;
    assert!(
        outcomes.values().all(|o| *o == Outcome::Idle),
        "{outcomes:?}"
    );
    assert_eq!(together.stepping_together().len(), 4);
    let built_together = read_models(&pool).await;
    together.release();
    assert_eq!(built_alone(&pool).await, built_together);
}

/// A process's projector: `Recording` (which notes who applied what) and three read models,
/// stepping together.
async fn projector(pool: &PgPool, label: &'static str) -> Group {
    let mut members: Vec<Arc<dyn Projection>> = vec![Arc::new(Recording { label })];
    members.extend(all_but_inventory());
    group(pool, members).await
}

async fn all_caught_up(pool: &PgPool, names: &[&str]) {
    for name in names {
        wait_until_caught_up(pool, name).await;
    }
}

/// `select` (a column of `projection_state`) for the projections `names`.
async fn column<T>(pool: &PgPool, select: &str, names: &[&str]) -> Vec<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(&format!(
        "SELECT {select} FROM projection_state WHERE name = ANY($1)"
    ))
    .bind(names)
    .fetch_all(pool)
    .await
    .expect("read the projections' rows")
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn two_projectors_never_both_apply_and_the_standby_takes_every_projection_over(pool: PgPool) {
    create_applied(&pool).await;
    let shop = Shop::new(&pool);
    shop.history().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let names = [
        "recording",
        "order_details",
        "customer_orders",
        "sales_daily",
    ];
    let mut processes = Vec::new();
    for label in ["a", "b"] {
        // A pool of its own: closing it is that process dying.
        let process = process_pool(&pool).await;
        let group = projector(&process, label).await;
        let task = tokio::spawn(group.run(Arc::new(Notify::new()), stopped.clone()));
        processes.push((label, process, task));
        // The first takes every lease (started together, they would share them out).
        all_caught_up(&pool, &names).await;
    }
    let (total, distinct, workers) = applied(&pool).await;
    assert_eq!(total, distinct, "every event applied once");
    assert_eq!(workers.len(), 1, "only one process applied: {workers:?}");
    let owners: Vec<String> = column(&pool, "DISTINCT owner", &names).await;
    assert_eq!(owners.len(), 4, "a lease per projection: {owners:?}");

    // The live process dies; the standby takes every projection over and applies the rest.
    let live = processes
        .iter()
        .position(|(label, ..)| *label == workers[0])
        .unwrap();
    let (_, dead_pool, dead_task) = processes.remove(live);
    dead_task.abort();
    let _ = dead_task.await;
    dead_pool.close().await;
    shop.item("LATER", 100, 5).await;
    shop.order(9, 9, &[("LATER", 1)], 3).await;
    all_caught_up(&pool, &names).await;
    let (total, distinct, workers) = applied(&pool).await;
    assert_eq!(total, distinct, "nothing applied twice");
    assert_eq!(workers.len(), 2, "the standby took over: {workers:?}");
    let tokens: Vec<i64> = column(&pool, "fencing_token", &names).await;
    assert!(
        tokens.iter().all(|&token| token >= 2),
        "every lease changed hands: {tokens:?}"
    );
    let _ = stop.send(true);
    let (_, _, task) = processes.remove(0);
    task.await.unwrap();
    // What the two built equals what each builds alone.
    let built = read_models(&pool).await;
    let alone = built_alone(&pool).await;
    for (table, rows) in &built {
        if !table.starts_with("inventory") {
            assert_eq!(rows, &alone[table], "{table}");
        }
    }
}
