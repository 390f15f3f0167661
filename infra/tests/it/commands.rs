//! The command executor: versions, rejections, retries and idempotency keys.

use std::collections::HashSet;

use domain::inventory::{InventoryError, InventoryItem, InventoryState};
use infra::commands::{
    CommandExecutor, CommandOptions, ExecuteError, ExecutorPolicy, ExpectedVersion,
};
use infra::event_store::EventLog;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{inventory, keyed, register, registered_item, restock};

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("test setup")
}

async fn on_hand(pool: &PgPool, sku: &str) -> u64 {
    let mut conn = pool.acquire().await.expect("test setup");
    let loaded = infra::event_store::stream::load::<InventoryItem>(&mut conn, sku, None, &[])
        .await
        .expect("test setup");
    match loaded.aggregate.state() {
        InventoryState::Registered(levels) => levels.on_hand(),
        InventoryState::Unregistered => panic!("{sku} is not registered"),
    }
}

/// A pool whose sessions give up waiting for locks quickly, like the services' pools.
async fn impatient_pool(connect: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .connect_with(connect.options([("lock_timeout", "200ms")]))
        .await
        .expect("test setup")
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_command_reports_the_new_version_and_the_position_of_its_last_event(pool: PgPool) {
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    let first = items
        .execute("SKU", register("SKU", 1), CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (first.version, first.appended, first.replayed),
        (1, 1, false)
    );
    let second = items
        .execute("SKU", restock(2), CommandOptions::default())
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    let stream = EventLog::new(pool.clone())
        .read_stream("inventory_item", "SKU")
        .await
        .unwrap();
    assert_eq!(first.position, Some(stream[0].position));
    assert_eq!(second.position, Some(stream[1].position));
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_no_op_command_reports_the_current_version_and_position(pool: PgPool) {
    let items = registered_item(&pool, "SKU").await;
    let order_id = domain::ids::OrderId::from(uuid::Uuid::from_bytes([1; 16]));
    let release = domain::inventory::InventoryCommand::Release {
        order_id,
        at: crate::helpers::t(3),
    };
    let committed = items
        .execute("SKU", release, CommandOptions::default())
        .await
        .unwrap();
    let stream = EventLog::new(pool.clone())
        .read_stream("inventory_item", "SKU")
        .await
        .unwrap();
    assert_eq!(committed.appended, 0);
    assert_eq!(
        (committed.version, committed.position),
        (1, Some(stream[0].position))
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_rejected_command_stores_nothing(pool: PgPool) {
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    let err = items
        .execute("NOPE", restock(1), CommandOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ExecuteError::Rejected(InventoryError::NotRegistered)
    ));
    assert_eq!(event_count(&pool).await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_stale_expected_version_is_refused_and_stores_nothing(pool: PgPool) {
    let items = registered_item(&pool, "SKU").await;
    items
        .execute("SKU", restock(1), CommandOptions::default())
        .await
        .unwrap();
    let stale = CommandOptions {
        expected_version: Some(ExpectedVersion::Exactly(1)),
        ..CommandOptions::default()
    };
    let err = items.execute("SKU", restock(1), stale).await.unwrap_err();
    assert!(matches!(
        err,
        ExecuteError::VersionMismatch {
            expected: ExpectedVersion::Exactly(1),
            actual: 2
        }
    ));
    let current = CommandOptions {
        expected_version: Some(ExpectedVersion::Exactly(2)),
        ..CommandOptions::default()
    };
    assert_eq!(
        items
            .execute("SKU", restock(1), current)
            .await
            .unwrap()
            .version,
        3
    );
    let exists = CommandOptions {
        expected_version: Some(ExpectedVersion::Exists),
        ..CommandOptions::default()
    };
    let err = items
        .execute("OTHER", register("OTHER", 1), exists)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ExecuteError::VersionMismatch { actual: 0, .. }
    ));
    assert_eq!(event_count(&pool).await, 3);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_same_idempotency_key_replays_the_outcome_and_appends_nothing(pool: PgPool) {
    let items = registered_item(&pool, "SKU").await;
    let first = items
        .execute("SKU", restock(5), keyed("k1", 1))
        .await
        .unwrap();
    let again = items
        .execute("SKU", restock(5), keyed("k1", 1))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(
        (again.version, again.position),
        (first.version, first.position)
    );
    assert_eq!(event_count(&pool).await, 2);
    assert_eq!(on_hand(&pool, "SKU").await, 15);
    let stream = EventLog::new(pool.clone())
        .read_stream("inventory_item", "SKU")
        .await
        .unwrap();
    assert_eq!(stream[1].idempotency_key.as_deref(), Some("k1"));
}

/// The key is claimed after the aggregate is read (ADR 0003, amended), and a retry is still
/// answered from its key when the aggregate cannot be read any more (an event appended
/// later does not decode); a new command on it fails.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_replay_is_answered_even_when_its_aggregate_no_longer_loads(pool: PgPool) {
    let items = registered_item(&pool, "SKU").await;
    let first = items
        .execute("SKU", restock(5), keyed("k1", 1))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT aggregate_type, aggregate_id, sequence + 1, event_type, event_version,
                '{\"unreadable\": true}', metadata
           FROM events WHERE aggregate_id = 'SKU' AND sequence = 2",
    )
    .execute(&pool)
    .await
    .expect("test setup");
    let fresh = inventory(&pool, ExecutorPolicy::without_snapshots());
    let again = fresh
        .execute("SKU", restock(5), keyed("k1", 1))
        .await
        .expect("the replay");
    assert!(again.replayed);
    assert_eq!(
        (again.version, again.position),
        (first.version, first.position)
    );
    let refused = fresh
        .execute("SKU", restock(5), keyed("k2", 1))
        .await
        .expect_err("the aggregate does not load");
    assert!(matches!(refused, ExecuteError::Store(_)), "{refused:?}");
    assert_eq!(event_count(&pool).await, 3);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_same_key_with_another_request_is_refused(pool: PgPool) {
    let items = registered_item(&pool, "SKU").await;
    items
        .execute("SKU", restock(5), keyed("k1", 1))
        .await
        .unwrap();
    let err = items
        .execute("SKU", restock(6), keyed("k1", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecuteError::IdempotencyKeyReused { key } if key == "k1"));
    assert_eq!(event_count(&pool).await, 2);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_rejected_command_does_not_burn_its_idempotency_key(pool: PgPool) {
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());
    let err = items
        .execute("SKU", restock(5), keyed("k1", 1))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ExecuteError::Rejected(InventoryError::NotRegistered)
    ));
    items
        .execute("SKU", register("SKU", 0), CommandOptions::default())
        .await
        .unwrap();
    let retried = items
        .execute("SKU", restock(5), keyed("k1", 1))
        .await
        .unwrap();
    assert!(!retried.replayed);
    assert_eq!(on_hand(&pool, "SKU").await, 5);
}

/// Twenty requests with one key race, through one process and through several: exactly one
/// appends, and every other one replays its outcome.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn twenty_racing_requests_with_one_key_append_once(pool: PgPool) {
    registered_item(&pool, "SKU").await;
    let shared = inventory(&pool, ExecutorPolicy::without_snapshots());
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            // Even requests share one executor (one process); odd ones each get their own,
            // as if sent to different replicas.
            let items = if i % 2 == 0 {
                shared.clone()
            } else {
                inventory(&pool, ExecutorPolicy::without_snapshots())
            };
            tokio::spawn(async move { items.execute("SKU", restock(3), keyed("race", 9)).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(outcomes.iter().filter(|c| !c.replayed).count(), 1);
    let distinct: HashSet<_> = outcomes.iter().map(|c| (c.version, c.position)).collect();
    assert_eq!(distinct.len(), 1, "every request reports the same outcome");
    assert_eq!(event_count(&pool).await, 2);
    assert_eq!(on_hand(&pool, "SKU").await, 13);
}

/// Two processes (two executors, no shared lock) write the same aggregate concurrently: the
/// losers of each race reload and retry, and no write is lost.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn writers_in_two_processes_conflict_retry_and_lose_nothing(pool: PgPool) {
    registered_item(&pool, "HOT").await;
    let policy = ExecutorPolicy {
        max_attempts: 50,
        ..ExecutorPolicy::without_snapshots()
    };
    let processes = [inventory(&pool, policy), inventory(&pool, policy)];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let items = processes[i % 2].clone();
            tokio::spawn(async move {
                items
                    .execute("HOT", restock(1), CommandOptions::default())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(on_hand(&pool, "HOT").await, 50);
    assert_eq!(event_count(&pool).await, 41);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_writer_that_keeps_losing_gives_up_with_a_conflict(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = impatient_pool(connect).await;
    infra::db::MIGRATOR.run(&pool).await.unwrap();
    registered_item(&pool, "SKU").await;
    // Another process appended version 2 and has not committed: our append must wait for
    // it, and gives up at lock_timeout, twice.
    let mut other = pool.begin().await.unwrap();
    infra::event_store::stream::append::<InventoryItem>(
        &mut other,
        "SKU",
        1,
        &[domain::inventory::InventoryEvent::Restocked {
            quantity: domain::money::Quantity::new(1).unwrap(),
            at: crate::helpers::t(1),
        }],
        &infra::event_store::EventMetadata::default(),
    )
    .await
    .unwrap();
    let items = inventory(
        &pool,
        ExecutorPolicy {
            max_attempts: 2,
            ..ExecutorPolicy::without_snapshots()
        },
    );
    let err = items
        .execute("SKU", restock(1), CommandOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ExecuteError::Conflict { attempts: 2 }));
    other.rollback().await.unwrap();
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_key_held_by_a_request_in_flight_is_reported_after_the_lock_timeout(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = impatient_pool(connect).await;
    infra::db::MIGRATOR.run(&pool).await.unwrap();
    let items: CommandExecutor<InventoryItem> = registered_item(&pool, "SKU").await;
    let mut first = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, request_hash, aggregate_type, aggregate_id)
         VALUES ('busy', '\\x00', 'inventory_item', 'SKU')",
    )
    .execute(&mut *first)
    .await
    .unwrap();
    let err = items
        .execute("SKU", restock(1), keyed("busy", 0))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecuteError::IdempotencyKeyInFlight { key } if key == "busy"));
    first.rollback().await.unwrap();
    assert!(
        !items
            .execute("SKU", restock(1), keyed("busy", 0))
            .await
            .unwrap()
            .replayed
    );
}

/// Followers are woken after an append commits, by the executor rather than by the
/// appending transaction (which would serialise concurrent commits on PostgreSQL's
/// notification lock).
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_append_notifies_followers_after_it_commits(pool: PgPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen(infra::channels::EVENTS).await.unwrap();
    let items = inventory(&pool, ExecutorPolicy::without_snapshots());

    // An append in a transaction of its own notifies nobody any more.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
         VALUES ('test', 'raw', 1, 'Raw', '1.0', '{}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "a raw insert notified: {quiet:?}");

    items
        .execute("MUG", register("MUG", 1), CommandOptions::default())
        .await
        .unwrap();
    let notification = tokio::time::timeout(std::time::Duration::from_secs(2), listener.recv())
        .await
        .expect("a notification within 2 s of the commit")
        .unwrap();
    assert_eq!(notification.channel(), infra::channels::EVENTS);
}

fn reserve(order: u8, units: u32) -> domain::inventory::InventoryCommand {
    domain::inventory::InventoryCommand::Reserve {
        order_id: domain::ids::OrderId::from(uuid::Uuid::from_bytes([order; 16])),
        quantity: domain::money::Quantity::new(units).expect("quantity"),
        at: crate::helpers::t(2),
    }
}

/// Two executors stand for two processes, each with its own cache of the states it
/// committed: what one appends, the other's cache does not know.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_cached_state_made_stale_by_another_process_loses_the_race_and_is_reloaded(pool: PgPool) {
    let here = inventory(&pool, ExecutorPolicy::without_snapshots());
    let there = inventory(&pool, ExecutorPolicy::without_snapshots());
    let none = CommandOptions::default;
    here.execute("SKU", register("SKU", 1), none())
        .await
        .unwrap();
    there.execute("SKU", restock(2), none()).await.unwrap();
    // `here` has version 1 cached; its append at version 2 collides and it reloads.
    let third = here.execute("SKU", restock(3), none()).await.unwrap();
    assert_eq!((third.version, third.appended), (3, 1));
    assert_eq!(on_hand(&pool, "SKU").await, 6);
    // And the next command on `here` runs on the state it just committed.
    let fourth = here.execute("SKU", restock(4), none()).await.unwrap();
    assert_eq!(fourth.version, 4);
    assert_eq!(on_hand(&pool, "SKU").await, 10);
    assert_eq!(event_count(&pool).await, 4);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn rejections_and_version_mismatches_on_a_cached_state_are_confirmed_on_a_fresh_load(
    pool: PgPool,
) {
    let here = inventory(&pool, ExecutorPolicy::without_snapshots());
    let there = inventory(&pool, ExecutorPolicy::without_snapshots());
    let none = CommandOptions::default;
    here.execute("SKU", register("SKU", 1), none())
        .await
        .unwrap();
    here.execute("SKU", reserve(1, 1), none()).await.unwrap();
    there.execute("SKU", restock(5), none()).await.unwrap();
    // On `here`'s cached state nothing is available; in truth 5 are.
    let reserved = here.execute("SKU", reserve(2, 2), none()).await.unwrap();
    assert_eq!((reserved.version, reserved.appended), (4, 1));
    // A rejection that holds on the fresh state is still reported, and stores nothing.
    let err = here
        .execute("SKU", reserve(3, 100), none())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Rejected(InventoryError::InsufficientStock { .. })
        ),
        "{err:?}"
    );
    // `If-Match` checked against the database, not the cache.
    there.execute("SKU", restock(1), none()).await.unwrap();
    let expected = CommandOptions {
        expected_version: Some(ExpectedVersion::Exactly(5)),
        ..none()
    };
    let matched = here.execute("SKU", restock(1), expected).await.unwrap();
    assert_eq!(matched.version, 6);
    let stale = CommandOptions {
        expected_version: Some(ExpectedVersion::Exactly(5)),
        ..none()
    };
    let err = here.execute("SKU", restock(1), stale).await.unwrap_err();
    assert!(
        matches!(err, ExecuteError::VersionMismatch { actual: 6, .. }),
        "{err:?}"
    );
    assert_eq!(event_count(&pool).await, 6);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_no_op_on_a_cached_state_is_confirmed_on_a_fresh_load(pool: PgPool) {
    let here = inventory(&pool, ExecutorPolicy::without_snapshots());
    let there = inventory(&pool, ExecutorPolicy::without_snapshots());
    let none = CommandOptions::default;
    here.execute("SKU", register("SKU", 5), none())
        .await
        .unwrap();
    here.execute("SKU", reserve(1, 2), none()).await.unwrap();
    let release = || domain::inventory::InventoryCommand::Release {
        order_id: domain::ids::OrderId::from(uuid::Uuid::from_bytes([1; 16])),
        at: crate::helpers::t(3),
    };
    there.execute("SKU", release(), none()).await.unwrap();
    // `here` still sees the reservation: reserving it again would be a no-op there, but
    // the reservation was released, so it is made anew.
    let again = here.execute("SKU", reserve(1, 2), none()).await.unwrap();
    assert_eq!((again.version, again.appended), (4, 1));
    // A release of a released reservation is a no-op, answered with the current version.
    there.execute("SKU", release(), none()).await.unwrap();
    let noop = here.execute("SKU", release(), none()).await.unwrap();
    assert_eq!((noop.version, noop.appended), (5, 0));
}

/// `new_aggregate` skips the load for an id the caller just minted; an id that has events
/// after all is caught by the primary key (or the fresh load behind a rejection).
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_new_aggregate_guess_that_is_wrong_is_corrected_by_the_database(pool: PgPool) {
    let items = inventory(&pool, ExecutorPolicy::without_snapshots().uncached());
    let new = || CommandOptions {
        new_aggregate: true,
        ..CommandOptions::default()
    };
    let first = items
        .execute("NEW", register("NEW", 1), new())
        .await
        .unwrap();
    assert_eq!((first.version, first.appended), (1, 1));
    // "NEW" has an event now: a restock guessed on an empty item collides and is redone.
    let restocked = items.execute("NEW", restock(2), new()).await.unwrap();
    assert_eq!((restocked.version, restocked.appended), (2, 1));
    assert_eq!(on_hand(&pool, "NEW").await, 3);
    // A second registration is refused on the fresh load, not appended.
    let err = items
        .execute("NEW", register("NEW", 5), new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Rejected(InventoryError::AlreadyRegistered)
        ),
        "{err:?}"
    );
    assert_eq!(event_count(&pool).await, 2);
}
