//! `GET /projections` tells the truth about lag, liveness and poison events.

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{CUSTOMER, System};

fn find<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["projections"]
        .as_array()
        .expect("test setup")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} is listed"))
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn lag_is_the_events_not_yet_applied_and_drops_to_zero(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    system.project().await;
    let caught_up = system.get_json("/projections").await;
    assert_eq!(caught_up["projections"].as_array().unwrap().len(), 4);
    let inventory = find(&caught_up, "inventory");
    assert_eq!(inventory["lag_events"], 0);
    assert_eq!(inventory["lag_seconds"], 0.0);
    assert_eq!(inventory["state"], "running");
    assert_eq!(inventory["version"], 1);
    assert_eq!(inventory["worker"]["alive"], true);
    assert_eq!(
        inventory["checkpoint"]["position"],
        caught_up["head_position"]
    );

    // Three more events that no worker applies yet.
    system
        .command(
            "/inventory/MUG/restock",
            &serde_json::json!({"quantity": 1}),
        )
        .await;
    system.place(CUSTOMER, &[("MUG", 1)]).await;
    system
        .command(
            "/inventory/MUG/restock",
            &serde_json::json!({"quantity": 1}),
        )
        .await;
    let behind = system.get_json("/projections").await;
    let inventory = find(&behind, "inventory");
    assert_eq!(inventory["lag_events"], 3);
    assert!(inventory["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert!(behind["head_position"].as_i64() > caught_up["head_position"].as_i64());

    system.project().await;
    let again = system.get_json("/projections").await;
    assert_eq!(find(&again, "inventory")["lag_events"], 0);
    assert_eq!(find(&again, "order_details")["lag_events"], 0);
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_projection_without_a_live_worker_is_reported_stalled(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    system.project().await;
    // The worker "died" long ago. Under another owner's name: the test's own worker keeps
    // beating every 200 ms and would otherwise write over the old timestamp (its beat only
    // touches its own row, and stops once that is gone).
    sqlx::query(
        "UPDATE projection_heartbeats
            SET owner = 'a-worker-that-died', heartbeat_at = now() - interval '1 minute'",
    )
    .execute(&system.pool)
    .await
    .unwrap();
    let report = system.get_json("/projections").await;
    let inventory = find(&report, "inventory");
    assert_eq!(inventory["state"], "stalled");
    assert_eq!(inventory["worker"]["alive"], false);
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_poison_event_shows_as_halted_with_its_error_and_a_parked_count(pool: PgPool) {
    let system = System::spawn(pool).await;
    crate::consistency::poison(&system.pool).await;
    system.project().await;
    let report = system.get_json("/projections").await;
    let inventory = find(&report, "inventory");
    assert_eq!(inventory["state"], "halted");
    assert_eq!(inventory["parked"], 1);
    assert!(
        inventory["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot be decoded")
    );
    assert_eq!(inventory["lag_events"], 1);
    system.stop().await;
}
