use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{CUSTOMER, System, assert_problem};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn sales_are_reported_per_day_and_currency(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    let confirmed = system.place(CUSTOMER, &[("MUG", 2)]).await;
    system.fulfil(&confirmed, &[("MUG", 2, 1250)]).await;
    let cancelled = system.place(CUSTOMER, &[("MUG", 1)]).await;
    system
        .command(
            &format!("/orders/{cancelled}/cancel"),
            &json!({"reason": "out_of_stock"}),
        )
        .await;
    system.project().await;
    let today = chrono::Utc::now().date_naive();
    let report = system
        .get_json(&format!("/stats/sales?from={today}&to={today}"))
        .await;
    assert_eq!(report["from"], today.to_string());
    assert_eq!(
        report["days"],
        json!([{
            "day": today.to_string(),
            "currency": "EUR",
            "orders_confirmed": 1,
            "revenue": {"amount_minor": 2500, "currency": "EUR"},
            "cancellations": {"customer_request": 0, "out_of_stock": 1, "payment_declined": 0, "payment_timeout": 0},
            "refunds": {"count": 0, "amount": {"amount_minor": 0, "currency": "EUR"}},
        }])
    );
    let earlier = today - chrono::Days::new(10);
    let report = system
        .get_json(&format!("/stats/sales?from={earlier}&to={earlier}"))
        .await;
    assert_eq!(report["days"], json!([]));
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn invalid_ranges_are_bad_requests(pool: PgPool) {
    let system = System::spawn(pool).await;
    let body = assert_problem(
        system.get("/stats/sales").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);
    let body = assert_problem(
        system
            .get("/stats/sales?from=2026-13-01&to=2026-01-01")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_eq!(body["errors"][0]["pointer"], "from");
    let body = assert_problem(
        system
            .get("/stats/sales?from=2026-02-01&to=2026-01-01")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_eq!(body["errors"][0]["pointer"], "to");
    assert_problem(
        system
            .get("/stats/sales?from=2024-01-01&to=2026-01-01")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    system.stop().await;
}
