use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_problem, etag, order};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn placing_an_order_stores_one_event_and_answers_with_its_id(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    app.register("CUP-1", 5).await;
    let response = app
        .post_json("/orders", &order(&[("MUG-1", 2), ("CUP-1", 1)]))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(etag(&response), "\"1\"");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap();
    assert!(uuid::Uuid::try_parse(order_id).is_ok());
    assert_eq!(location, format!("/orders/{order_id}"));
    assert_eq!(body["version"], 1);
    assert!(body["position"].is_i64());
    assert_eq!(app.event_count("order").await, 1);
    let (event_type, payload): (String, Value) =
        sqlx::query_as("SELECT event_type, payload FROM events WHERE aggregate_type = 'order'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(event_type, "OrderPlaced");
    assert_eq!(payload["Placed"]["currency"], "EUR");
    assert_eq!(
        payload["Placed"]["lines"][0],
        json!({"sku": "MUG-1", "quantity": 2})
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn placing_an_order_for_an_unknown_sku_is_refused_and_stores_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let response = app
        .post_json("/orders", &order(&[("MUG-1", 1), ("GHOST", 1)]))
        .await;
    let body = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "unknown_sku").await;
    assert!(body["detail"].as_str().unwrap().contains("GHOST"));
    assert_eq!(app.event_count("order").await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn order_lines_must_be_one_to_a_hundred_distinct_positive_lines(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let too_many: Vec<(String, i64)> = (0..101).map(|i| (format!("S{i}"), 1)).collect();
    let too_many: Vec<(&str, i64)> = too_many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let cases = [
        (order(&[]), "/lines"),
        (order(&too_many), "/lines"),
        (order(&[("MUG-1", 1), ("MUG-1", 2)]), "/lines"),
        (order(&[("MUG-1", 0)]), "/lines/0/quantity"),
        (order(&[("MUG-1", -2)]), "/lines/0/quantity"),
    ];
    for (body, pointer) in cases {
        let response = app.post_json("/orders", &body).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{problem}");
    }
    let mut bad_ids = order(&[("MUG-1", 1)]);
    bad_ids["customer_id"] = json!("not-a-uuid");
    bad_ids["payment"]["card_token"] = json!("4111 1111 1111 1111");
    let response = app.post_json("/orders", &bad_ids).await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2);
    assert_eq!(app.event_count("order").await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn cancelling_an_order_records_the_reason_and_is_idempotent(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let order_id = app.place("MUG-1").await;
    let path = format!("/orders/{order_id}/cancel");
    let response = app
        .post_json(&path, &json!({"reason": "customer_request"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let first: Value = response.json().await.unwrap();
    assert_eq!(first["version"], 2);
    // Cancelling again changes nothing and answers with the same version and position.
    let response = app
        .post_json(&path, &json!({"reason": "out_of_stock"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await.unwrap();
    for field in ["order_id", "version", "position"] {
        assert_eq!(second[field], first[field], "{field}");
    }
    // It appended nothing, so its token is the bare position (the query API looks it up).
    assert_eq!(second["consistency_token"], first["position"].to_string());
    assert_eq!(app.event_count("order").await, 2);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn cancelling_needs_a_known_reason_a_valid_id_and_an_existing_order(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let order_id = app.place("MUG-1").await;
    let response = app
        .post_json(
            &format!("/orders/{order_id}/cancel"),
            &json!({"reason": "fraud"}),
        )
        .await;
    let body = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("customer_request")
    );
    let response = app
        .post_json("/orders/42/cancel", &json!({"reason": "customer_request"}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_path_parameter").await;
    let unknown = uuid::Uuid::new_v4();
    let response = app
        .post_json(
            &format!("/orders/{unknown}/cancel"),
            &json!({"reason": "customer_request"}),
        )
        .await;
    assert_problem(response, StatusCode::NOT_FOUND, "order_not_found").await;
    assert_eq!(app.event_count("order").await, 1);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn shipping_needs_a_confirmed_order_and_then_forbids_cancelling(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let order_id = app.place("MUG-1").await;
    let ship = format!("/orders/{order_id}/ship");
    let response = app.post(&ship).send().await.unwrap();
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "order_not_confirmed",
    )
    .await;

    app.confirm(&order_id, "MUG-1").await;
    let response = app.post(&ship).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"4\"");
    let shipped: Value = response.json().await.unwrap();
    // An explicit empty object is accepted too, and shipping twice is a no-op.
    let response = app.post_json(&ship, &json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"4\"");
    // The no-op appended nothing: its token is the shipment's position, bare (the query API
    // looks it up), where the shipment's own also carried its transaction.
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["position"], shipped["position"]);
    assert_eq!(again["consistency_token"], shipped["position"].to_string());
    assert!(
        shipped["consistency_token"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}.", shipped["position"]))
    );

    let response = app
        .post_json(
            &format!("/orders/{order_id}/cancel"),
            &json!({"reason": "customer_request"}),
        )
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "order_already_shipped",
    )
    .await;
    assert_eq!(app.event_count("order").await, 4);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn shipping_a_cancelled_or_unknown_order_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register("MUG-1", 5).await;
    let order_id = app.place("MUG-1").await;
    app.post_json(
        &format!("/orders/{order_id}/cancel"),
        &json!({"reason": "customer_request"}),
    )
    .await;
    let response = app
        .post(&format!("/orders/{order_id}/ship"))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "order_cancelled",
    )
    .await;
    let response = app
        .post(&format!("/orders/{}/ship", uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "order_not_found").await;
    let response = app
        .post_json(
            &format!("/orders/{order_id}/ship"),
            &json!({"carrier": "x"}),
        )
        .await;
    let body = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("carrier")
    );
}
