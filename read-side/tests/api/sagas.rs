//! `GET /sagas?state=` over saga rows as the saga runner leaves them.

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{System, assert_problem};

async fn saga(
    pool: &PgPool,
    n: u8,
    stage: &str,
    attempts: i32,
    minutes_in_stage: i32,
    error: Option<&str>,
) -> String {
    let order_id = uuid::Uuid::from_bytes([n; 16]);
    sqlx::query(
        "INSERT INTO fulfillment_sagas (order_id, state, stage, next_step, attempts, last_error,
                                        last_error_at, stage_since)
         VALUES ($1, '{}', $2, 'authorize', $3, $4, CASE WHEN $4 IS NULL THEN NULL ELSE now() END,
                 now() - $5 * interval '1 minute')",
    )
    .bind(order_id)
    .bind(stage)
    .bind(attempts)
    .bind(error)
    .bind(minutes_in_stage)
    .execute(pool)
    .await
    .expect("insert a saga");
    order_id.to_string()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("test setup")
        .iter()
        .map(|s| s["order_id"].as_str().expect("test setup").to_owned())
        .collect()
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn sagas_are_listed_by_state_with_their_step_age_and_last_error(pool: PgPool) {
    let system = System::spawn(pool).await;
    let failed = saga(
        &system.pool,
        1,
        "failed",
        1,
        0,
        Some("no_reservation: order holds no reservation"),
    )
    .await;
    let retrying = saga(
        &system.pool,
        2,
        "charging",
        7,
        0,
        Some("the payment gateway is unavailable"),
    )
    .await;
    let slow = saga(&system.pool, 3, "reserving", 0, 5, None).await;
    let fine = saga(&system.pool, 4, "charging", 0, 0, None).await;
    let waiting = saga(&system.pool, 5, "confirmed", 0, 90, None).await;
    let done = saga(&system.pool, 6, "cancelled", 0, 90, None).await;

    let page = system.get_json("/sagas?state=failed").await;
    assert_eq!(ids(&page), std::slice::from_ref(&failed));
    let item = &page["items"][0];
    assert_eq!(item["stage"], "failed");
    assert_eq!(item["next_step"], "authorize");
    assert!(
        item["last_error"]
            .as_str()
            .unwrap()
            .contains("no_reservation")
    );
    assert!(item["since"].is_string());

    assert_eq!(
        ids(&system.get_json("/sagas?state=stuck").await),
        [retrying.clone(), slow.clone()]
    );
    assert_eq!(
        ids(&system.get_json("/sagas?state=charging").await),
        [retrying.clone(), fine.clone()]
    );
    let active = ids(&system.get_json("/sagas").await);
    assert_eq!(active, [failed, retrying, slow, fine, waiting]);
    assert!(!active.contains(&done));

    let first = system.get_json("/sagas?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = system
        .get_json(&format!("/sagas?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&second).len(), 2);
    assert_ne!(ids(&first), ids(&second));

    let body = assert_problem(
        system.get("/sagas?state=sleepy").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_eq!(body["errors"][0]["pointer"], "state");
    system.stop().await;
}
