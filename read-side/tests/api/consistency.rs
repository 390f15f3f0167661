//! Read-your-writes with `X-Consistency-Token`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{CUSTOMER, System, assert_problem};

pub async fn poison(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
         VALUES ('inventory_item', 'BAD', 1, 'InventoryItemRegistered', '1.0', '{\"Registered\": {}}')",
    )
    .execute(pool)
    .await
    .expect("insert a poison event");
    // Appends outside the command executor notify the log's followers themselves.
    infra::event_store::notify::notify(pool)
        .await
        .expect("notify");
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_query_with_a_token_returns_the_write_it_names(pool: PgPool) {
    let mut system = System::spawn(pool).await;
    system.start_projector();
    system.register("MUG", 1250, 10).await;
    for units in 1..=5 {
        let written = system
            .command("/inventory/MUG/restock", &json!({"quantity": units}))
            .await;
        let position = written["position"].as_i64().unwrap();
        // The token says where the event is in the log: its position and transaction.
        let token = written["consistency_token"].as_str().unwrap().to_owned();
        let transaction_id: String =
            sqlx::query_scalar("SELECT transaction_id::text FROM events WHERE position = $1")
                .bind(position)
                .fetch_one(&system.pool)
                .await
                .unwrap();
        assert_eq!(token, format!("{position}.{transaction_id}"));
        // Either form reads the write: the token, or the bare position (looked up).
        let sent = if units % 2 == 0 {
            position.to_string()
        } else {
            token
        };
        let response = system
            .get_with("/inventory/MUG?wait=10s")
            .header("x-consistency-token", sent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let item: Value = response.json().await.unwrap();
        assert_eq!(
            item["version"], written["version"],
            "the read reflects the write"
        );
        assert!(item["last_position"].as_i64().unwrap() >= position);
    }
    let order_id = system.place(CUSTOMER, &[("MUG", 1)]).await;
    let placed = system.get_json("/projections").await["head_position"]
        .as_i64()
        .unwrap();
    for path in [
        format!("/orders/{order_id}"),
        format!("/customers/{CUSTOMER}/orders"),
    ] {
        let response = system
            .get_with(&format!("{path}?wait=10s"))
            .header("x-consistency-token", placed.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_waiting_query_answers_as_soon_as_the_projection_catches_up(pool: PgPool) {
    let system = std::sync::Arc::new(System::spawn(pool).await);
    let written = system.register("MUG", 1250, 10).await;
    let token = written["position"].as_i64().unwrap();
    let waiting = {
        let system = system.clone();
        tokio::spawn(async move {
            system
                .get_with("/inventory/MUG?wait=10s")
                .header("x-consistency-token", token.to_string())
                .send()
                .await
                .unwrap()
        })
    };
    // The query is waiting; now the projector runs.
    system.project().await;
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_token_the_projection_has_not_reached_is_a_503_saying_by_how_much(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    system.project().await;
    system
        .command("/inventory/MUG/restock", &json!({"quantity": 1}))
        .await;
    let written = system
        .command("/inventory/MUG/restock", &json!({"quantity": 1}))
        .await;
    let response = system
        .get_with("/inventory/MUG?wait=100ms")
        .header(
            "x-consistency-token",
            written["consistency_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let body = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "projection_behind",
    )
    .await;
    assert_eq!(body["projection"], "inventory");
    assert_eq!(body["behind_by_events"], 2);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("2 event(s) behind")
    );
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_token_a_halted_projection_cannot_reach_is_a_503_at_once(pool: PgPool) {
    let system = System::spawn(pool).await;
    poison(&system.pool).await;
    let written = system.register("MUG", 1250, 10).await;
    system.project().await;
    let response = system
        .get_with("/inventory/MUG?wait=10s")
        .header("x-consistency-token", written["position"].to_string())
        .send()
        .await
        .unwrap();
    let body = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "projection_not_running",
    )
    .await;
    assert_eq!(body["projection"], "inventory");
    assert_eq!(body["state"], "halted");
    // Other read models are not held back by the inventory's poison event.
    let order_id = system.place(CUSTOMER, &[("MUG", 1)]).await;
    let position = system.get_json("/projections").await["head_position"]
        .as_i64()
        .unwrap();
    system.project().await;
    let response = system
        .get_with(&format!("/orders/{order_id}"))
        .header("x-consistency-token", position.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn invalid_tokens_and_waits_are_bad_requests(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    for token in ["abc", "-3", "0", "1.", ".1", "1.0", "1.x", "1.2.3"] {
        let response = system
            .get_with("/inventory/MUG")
            .header("x-consistency-token", token)
            .send()
            .await
            .unwrap();
        assert_problem(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_consistency_token",
        )
        .await;
    }
    let response = system
        .get_with("/inventory/MUG")
        .header("x-consistency-token", "999999")
        .send()
        .await
        .unwrap();
    let body = assert_problem(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_consistency_token",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("999999"));
    let body = assert_problem(
        system.get("/inventory/MUG?wait=1h").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_eq!(body["errors"][0]["pointer"], "wait");
    system.stop().await;
}
