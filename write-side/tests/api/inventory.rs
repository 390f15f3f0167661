use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_problem, etag, item};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn registering_an_item_returns_its_version_position_etag_and_location(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app.post_json("/inventory", &item("MUG-1", 25)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(etag(&response), "\"1\"");
    assert_eq!(response.headers()["location"], "/inventory/MUG-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sku"], "MUG-1");
    assert_eq!(body["version"], 1);
    let position: i64 = sqlx::query_scalar("SELECT position FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(body["position"], position);
    assert_eq!(app.event_count("inventory_item").await, 1);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn registering_a_sku_twice_is_a_rule_violation(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 1).await;
    let response = app.post_json("/inventory", &item("MUG-1", 5)).await;
    let body = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "sku_already_registered",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("restock"));
    assert_eq!(app.event_count("inventory_item").await, 1);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn restocking_returns_the_next_version(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let registered = app.register("MUG-1", 1).await;
    let response = app
        .post_json("/inventory/MUG-1/restock", &json!({"quantity": 10}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"2\"");
    assert!(response.headers().get("location").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert!(body["position"].as_i64().unwrap() > registered["position"].as_i64().unwrap());
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn restocking_an_unknown_sku_is_not_found(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .post_json("/inventory/NOPE/restock", &json!({"quantity": 1}))
        .await;
    assert_problem(response, StatusCode::NOT_FOUND, "inventory_item_not_found").await;
    assert_eq!(app.total_events().await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn restocking_zero_or_negative_quantities_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 1).await;
    for quantity in [0, -5] {
        let response = app
            .post_json("/inventory/MUG-1/restock", &json!({"quantity": quantity}))
            .await;
        let body = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(body["errors"][0]["pointer"], "/quantity");
        assert_eq!(body["errors"][0]["detail"], "quantity must be at least 1");
    }
    assert_eq!(app.event_count("inventory_item").await, 1);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_invalid_sku_in_the_path_is_a_bad_request(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .post_json("/inventory/-bad-/restock", &json!({"quantity": 1}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_path_parameter").await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn every_invalid_field_of_a_registration_is_listed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = json!({
        "sku": "bad sku",
        "name": "   ",
        "unit_price": {"amount_minor": -1, "currency": "eur"},
        "initial_stock": -3,
    });
    let response = app.post_json("/inventory", &body).await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "/sku",
            "/name",
            "/unit_price/currency",
            "/unit_price/amount_minor",
            "/initial_stock"
        ]
    );
    assert_eq!(app.total_events().await, 0);
}
