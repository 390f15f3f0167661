//! Snapshots: taken at boundaries, used when loading, ignored when unusable.

use domain::inventory::InventoryItem;
use infra::commands::{CommandOptions, ExecutorPolicy};
use infra::event_store::stream::{SnapshotPolicy, load};
use sqlx::PgPool;

use crate::helpers::{inventory, register, restock};

const POLICY: SnapshotPolicy = SnapshotPolicy {
    every: 10,
    state_version: 1,
};

async fn write_history(pool: &PgPool, events: u32) {
    let items = inventory(
        pool,
        ExecutorPolicy::with_snapshots(POLICY.every, POLICY.state_version),
    );
    items
        .execute("SKU", register("SKU", 0), CommandOptions::default())
        .await
        .expect("test setup");
    for units in 1..events {
        items
            .execute("SKU", restock(units), CommandOptions::default())
            .await
            .expect("test setup");
    }
}

async fn snapshot_row(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT last_sequence, current_snapshot FROM snapshots WHERE aggregate_id = 'SKU'",
    )
    .fetch_one(pool)
    .await
    .expect("test setup")
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_snapshot_is_taken_at_each_boundary_and_loads_the_same_state(pool: PgPool) {
    write_history(&pool, 25).await;
    assert_eq!(snapshot_row(&pool).await, (20, 2));
    let mut conn = pool.acquire().await.unwrap();
    let from_snapshot = load::<InventoryItem>(&mut conn, "SKU", Some(POLICY), &[])
        .await
        .unwrap();
    let from_events = load::<InventoryItem>(&mut conn, "SKU", None, &[])
        .await
        .unwrap();
    assert_eq!(from_snapshot.version, 25);
    assert_eq!(from_snapshot.aggregate, from_events.aggregate);
    assert_eq!(from_snapshot.version, from_events.version);
    // Only the five events after the snapshot were read.
    assert!(from_snapshot.last_position.is_some());
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_unreadable_snapshot_falls_back_to_the_events(pool: PgPool) {
    write_history(&pool, 12).await;
    sqlx::query("UPDATE snapshots SET payload = '{\"garbage\": true}'")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let loaded = load::<InventoryItem>(&mut conn, "SKU", Some(POLICY), &[])
        .await
        .unwrap();
    let from_events = load::<InventoryItem>(&mut conn, "SKU", None, &[])
        .await
        .unwrap();
    assert_eq!(
        (loaded.version, loaded.aggregate),
        (12, from_events.aggregate)
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_snapshot_of_another_state_version_is_ignored_then_replaced(pool: PgPool) {
    write_history(&pool, 12).await;
    let newer = SnapshotPolicy {
        every: 10,
        state_version: 2,
    };
    sqlx::query("UPDATE snapshots SET last_sequence = 12, payload = '\"Unregistered\"'")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // Under version 2 the (deliberately wrong) version-1 snapshot is not even read.
    let loaded = load::<InventoryItem>(&mut conn, "SKU", Some(newer), &[])
        .await
        .unwrap();
    assert_eq!(loaded.version, 12);
    assert!(loaded.aggregate.state().levels().is_some());
    drop(conn);
    let items = inventory(&pool, ExecutorPolicy::with_snapshots(10, 2));
    for _ in 0..8 {
        items
            .execute("SKU", restock(1), CommandOptions::default())
            .await
            .unwrap();
    }
    let state_version: i32 = sqlx::query_scalar("SELECT state_version FROM snapshots")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state_version, 2);
    assert_eq!(snapshot_row(&pool).await.0, 20);
}
