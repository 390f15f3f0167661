use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{CUSTOMER, System, assert_problem};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_item_shows_its_price_and_stock_levels(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    system
        .command("/inventory/MUG/restock", &json!({"quantity": 5}))
        .await;
    system.project().await;
    let item = system.get_json("/inventory/MUG").await;
    assert_eq!(item["sku"], "MUG");
    assert_eq!(item["name"], "Item MUG");
    assert_eq!(
        item["unit_price"],
        json!({"amount_minor": 1250, "currency": "EUR"})
    );
    assert_eq!(
        (
            item["on_hand"].as_i64(),
            item["reserved"].as_i64(),
            item["available"].as_i64()
        ),
        (Some(15), Some(0), Some(15))
    );
    assert_eq!(item["version"], 2);
    let _ = CUSTOMER;
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn unknown_and_invalid_skus_are_problems(pool: PgPool) {
    let system = System::spawn(pool).await;
    assert_problem(
        system.get("/inventory/NOPE").await,
        StatusCode::NOT_FOUND,
        "inventory_item_not_found",
    )
    .await;
    assert_problem(
        system.get("/inventory/-x-").await,
        StatusCode::BAD_REQUEST,
        "invalid_path_parameter",
    )
    .await;
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn all_items_are_listed_in_sku_order_one_page_at_a_time(pool: PgPool) {
    let system = System::spawn(pool).await;
    for sku in ["D", "A", "C", "B", "E"] {
        system.register(sku, 100, 1).await;
    }
    system.project().await;
    let first = system.get_json("/inventory?limit=3").await;
    let skus: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["A", "B", "C"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = system
        .get_json(&format!("/inventory?limit=3&cursor={cursor}"))
        .await;
    let skus: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["D", "E"]);
    assert!(second["next_cursor"].is_null());
    assert_problem(
        system.get("/inventory?limit=-1").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    system.stop().await;
}
