//! Bad input gets a clear problem+json 4xx and stores nothing; internal failures say nothing
//! about internals.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_problem, item};

fn raw(app: &TestApp, path: &str, body: &str) -> reqwest::RequestBuilder {
    app.post(path)
        .header("content-type", "application/json")
        .body(body.to_owned())
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn malformed_json_is_a_bad_request_that_says_where(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = raw(&app, "/inventory", "{\"sku\": \"A\",")
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, StatusCode::BAD_REQUEST, "malformed_json").await;
    assert!(
        body["detail"].as_str().unwrap().contains("line 1"),
        "{body}"
    );
    assert_eq!(app.total_events().await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn unknown_fields_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut body = item("MUG-1", 1);
    body["colour"] = json!("blue");
    let response = app.post_json("/inventory", &body).await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`")
    );
    let mut nested = item("MUG-1", 1);
    nested["unit_price"]["cents"] = json!(1);
    let response = app.post_json("/inventory", &nested).await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert_eq!(problem["errors"][0]["pointer"], "/unit_price/cents");
    assert_eq!(app.total_events().await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn wrong_types_and_missing_fields_point_at_the_field(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut wrong_type = item("MUG-1", 1);
    wrong_type["initial_stock"] = json!("ten");
    let response = app.post_json("/inventory", &wrong_type).await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert_eq!(problem["errors"][0]["pointer"], "/initial_stock");
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("invalid type")
    );

    let response = app
        .post_json("/orders", &json!({"customer_id": "x", "lines": []}))
        .await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `payment`")
    );

    let response = app.post_json("/inventory", &json!([1, 2])).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    let response = app.post("/inventory").send().await.unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert_eq!(app.total_events().await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn nul_characters_are_refused_anywhere_in_the_body(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = raw(
        &app,
        "/inventory",
        r#"{"sku":"MUG-1","name":"Mug\u0000","unit_price":{"amount_minor":1,"currency":"EUR"},"initial_stock":1}"#,
    )
    .send()
    .await
    .unwrap();
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["errors"][0]["pointer"], "/name");
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("NUL")
    );
    assert_eq!(app.total_events().await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn bodies_over_64_kib_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut body = item("MUG-1", 1);
    body["name"] = json!("x".repeat(70 * 1024));
    let response = app.post_json("/inventory", &body).await;
    let problem =
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(problem["detail"].as_str().unwrap().contains("65536"));
    // Also without a Content-Length (a chunked body): the limit holds while reading.
    let chunks = futures::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let response = app
        .post("/inventory")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(app.total_events().await, 0);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_body_that_is_not_json_is_an_unsupported_media_type(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .post("/inventory")
        .header("content-type", "text/plain")
        .body(item("MUG-1", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let response = app
        .post("/inventory")
        .header("content-type", "application/json; charset=utf-8")
        .body(item("MUG-1", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn unknown_routes_and_methods_are_problems_too(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_problem(
        app.get("/nowhere").await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    assert_problem(
        app.get("/orders").await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

/// Sabotage: the events table disappears. The client gets a bare 500 with a request id and
/// no SQL, table name or stack in it.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_internal_error_reveals_nothing_but_a_request_id(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    sqlx::query("ALTER TABLE events RENAME TO events_gone")
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app.post_json("/inventory", &item("MUG-1", 1)).await;
    let body: Value = assert_problem(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert_eq!(body["detail"], "internal error");
    let text = body.to_string();
    assert!(!text.contains("events"), "{text}");
    assert!(!text.to_lowercase().contains("relation"), "{text}");
}
