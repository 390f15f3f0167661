//! `If-Match`: optimistic concurrency for clients.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{TestApp, assert_problem, etag};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_current_etag_lets_the_command_through(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 1).await;
    let response = app
        .post("/inventory/MUG-1/restock")
        .header("if-match", "\"1\"")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"2\"");
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_stale_etag_is_a_failed_precondition_and_stores_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 1).await;
    app.post_json("/inventory/MUG-1/restock", &json!({"quantity": 1}))
        .await;
    let response = app
        .post("/inventory/MUG-1/restock")
        .header("if-match", "\"1\"")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&response), "\"2\"");
    let body = assert_problem(
        response,
        StatusCode::PRECONDITION_FAILED,
        "version_mismatch",
    )
    .await;
    assert_eq!(body["current_version"], 2);
    assert_eq!(app.event_count("inventory_item").await, 2);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_stale_etag_on_an_order_is_refused_too(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 1).await;
    let order_id = app.place("MUG-1").await;
    let response = app
        .post(&format!("/orders/{order_id}/cancel"))
        .header("if-match", "\"7\"")
        .json(&json!({"reason": "customer_request"}))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::PRECONDITION_FAILED,
        "version_mismatch",
    )
    .await;
    let response = app
        .post(&format!("/orders/{order_id}/cancel"))
        .header("if-match", "*")
        .json(&json!({"reason": "customer_request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_malformed_if_match_is_a_bad_request(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 1).await;
    for value in ["2", "\"a\"", "\"1\", \"2\""] {
        let response = app
            .post("/inventory/MUG-1/restock")
            .header("if-match", value)
            .json(&json!({"quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_header").await;
    }
    assert_eq!(app.event_count("inventory_item").await, 1);
}

/// Another process holds the order's next version and does not commit: the command retries,
/// then gives up with a 409 rather than hanging.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn losing_every_race_for_a_version_is_a_conflict(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_impatient(connect, "100ms").await;
    app.register("MUG-1", 1).await;
    let order_id = app.place("MUG-1").await;
    let mut other_process = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
         VALUES ('order', $1, 2, 'OrderCancelled', '1.0', '{\"Cancelled\": {\"reason\": \"out_of_stock\", \"at\": \"2026-01-01T00:00:00Z\"}}')",
    )
    .bind(&order_id)
    .execute(&mut *other_process)
    .await
    .unwrap();
    let response = app
        .post_json(
            &format!("/orders/{order_id}/cancel"),
            &json!({"reason": "customer_request"}),
        )
        .await;
    assert_problem(response, StatusCode::CONFLICT, "concurrency_conflict").await;
    other_process.rollback().await.unwrap();
    assert_eq!(app.event_count("order").await, 1);
}
