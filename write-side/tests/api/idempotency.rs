//! `Idempotency-Key`: the same key and body replay the first response and append nothing.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_problem, order};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_retried_request_replays_the_first_response(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let send = || {
        app.post("/orders")
            .header("idempotency-key", "order-attempt-1")
            .json(&order(&[("MUG-1", 1)]))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_etag = first.headers()["etag"].clone();
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["etag"], first_etag);
    assert_eq!(
        second.headers()["location"],
        format!("/orders/{}", first["order_id"].as_str().unwrap())
    );
    let second: Value = second.json().await.unwrap();
    assert_eq!(second, first);
    // The replayed consistency token is the first one: the event's position and transaction.
    let (position, transaction) = second["consistency_token"]
        .as_str()
        .unwrap()
        .split_once('.')
        .unwrap();
    assert_eq!(position, first["position"].to_string());
    assert!(transaction.parse::<u64>().unwrap() > 0);
    assert_eq!(app.event_count("order").await, 1);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_same_key_with_another_body_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let send = |quantity: i64| {
        app.post("/orders")
            .header("idempotency-key", "k-1")
            .json(&order(&[("MUG-1", quantity)]))
            .send()
    };
    assert_eq!(send(1).await.unwrap().status(), StatusCode::CREATED);
    assert_problem(
        send(2).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    // Another route with the same key and an empty body is another request, too.
    let response = app
        .post("/inventory/MUG-1/restock")
        .header("idempotency-key", "k-1")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.total_events().await, 2);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_same_body_with_other_whitespace_and_key_order_is_the_same_request(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let compact = r#"{"quantity":3}"#;
    let spaced = "{ \"quantity\" : 3 }\n";
    for body in [compact, spaced] {
        let response = app
            .post("/inventory/MUG-1/restock")
            .header("idempotency-key", "restock-1")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(app.event_count("inventory_item").await, 2);
}

/// Twenty identical requests race: one order is placed, and all twenty answer with it.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn twenty_racing_identical_requests_place_one_order(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let requests = (0..20).map(|_| {
        app.post("/orders")
            .header("idempotency-key", "race-1")
            .json(&order(&[("MUG-1", 1)]))
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut order_ids = HashSet::new();
    let mut replayed = 0;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        if response.headers().get("idempotent-replayed").is_some() {
            replayed += 1;
        }
        let body: Value = response.json().await.unwrap();
        order_ids.insert(body["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(order_ids.len(), 1, "every response names the same order");
    assert_eq!(replayed, 19);
    assert_eq!(app.event_count("order").await, 1);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_rejected_request_does_not_burn_its_key(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let send = || {
        app.post("/orders")
            .header("idempotency-key", "early-bird")
            .json(&order(&[("MUG-1", 1)]))
            .send()
    };
    assert_problem(
        send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_sku",
    )
    .await;
    app.register("MUG-1", 5).await;
    let response = send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_invalid_key_is_a_bad_request(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let response = app
        .post("/inventory/MUG-1/restock")
        .header("idempotency-key", "k".repeat(300))
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_header").await;
    assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"));
    assert_eq!(app.event_count("inventory_item").await, 1);
}
