//! Each read model, built from a history written through the command executor.

use std::sync::Arc;

use infra::projection::{Outcome, Projection};
use projections::customer_orders::CustomerOrdersProjection;
use projections::inventory::InventoryProjection;
use projections::order_details::OrderDetailsProjection;
use projections::sales_daily::SalesDailyProjection;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Shop, drain, order_id, rewind, rows, worker};

const TABLES: [&str; 9] = [
    "inventory_v1",
    "order_details_v1",
    "order_payments_v1",
    "order_timeline_v1",
    "customer_orders_v1",
    "sales_daily_v1",
    "sales_daily_orders_v1",
    "sales_daily_refunds_v1",
    "projection_dead_letters",
];

async fn build_all(pool: &PgPool) {
    for projection in projections::all() {
        let mut worker = worker(pool, projection).await;
        assert_eq!(drain(pool, &mut worker).await, Outcome::Idle);
    }
}

/// Empties every read model and moves every projection back to the start of the log.
async fn start_over(pool: &PgPool) {
    for table in TABLES {
        sqlx::query(&format!("TRUNCATE {table}"))
            .execute(pool)
            .await
            .expect("empty a read model");
    }
    rewind(pool).await;
}

async fn snapshot(pool: &PgPool) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for table in TABLES {
        all.push(rows(pool, table).await);
    }
    all
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn inventory_rows_follow_stock_movements(pool: PgPool) {
    Shop::new(&pool).history().await;
    let projection: Arc<dyn Projection> = Arc::new(InventoryProjection);
    drain(&pool, &mut worker(&pool, projection).await).await;
    let items: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_array(sku, name, unit_price_minor, currency, on_hand, reserved, available, version)
           FROM inventory ORDER BY sku",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        items,
        vec![
            json!(["CUP", "Item CUP", 500, "EUR", 2, 0, 2, 3]),
            json!(["MUG", "Item MUG", 1250, "EUR", 13, 0, 13, 6]),
        ]
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn order_details_compose_order_payment_and_inventory_events(pool: PgPool) {
    Shop::new(&pool).history().await;
    let projection: Arc<dyn Projection> = Arc::new(OrderDetailsProjection);
    drain(&pool, &mut worker(&pool, projection).await).await;

    let shipped: Value = sqlx::query_scalar(
        "SELECT jsonb_build_object('status', status, 'total', total_minor, 'payment', payment_status,
                'captured', captured_minor, 'refunded', refunded_minor, 'lines', lines, 'version', version)
           FROM order_details WHERE order_id = $1",
    )
    .bind(order_id(1).as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        shipped,
        json!({
            "status": "shipped", "total": 3000, "payment": "captured", "captured": 3000,
            "refunded": 0, "version": 4,
            "lines": [
                {"sku": "MUG", "quantity": 2, "unit_price_minor": 1250, "line_total_minor": 2500},
                {"sku": "CUP", "quantity": 1, "unit_price_minor": 500, "line_total_minor": 500},
            ],
        })
    );
    let timeline: Vec<(String, String)> = sqlx::query_as(
        "SELECT source, description FROM order_timeline WHERE order_id = $1 ORDER BY at, position",
    )
    .bind(order_id(1).as_uuid())
    .fetch_all(&pool)
    .await
    .unwrap();
    let sources: Vec<&str> = timeline.iter().map(|(source, _)| source.as_str()).collect();
    assert_eq!(
        sources,
        [
            "order",
            "inventory",
            "inventory",
            "order",
            "payment",
            "payment",
            "order",
            "inventory",
            "inventory",
            "order"
        ]
    );
    assert_eq!(timeline[1].1, "reserved 2 x MUG at 1250 EUR");
    assert_eq!(timeline.last().unwrap().1, "shipped");

    let (status, reason, payment, refunded): (String, Option<String>, String, i64) = sqlx::query_as(
        "SELECT status, cancel_reason, payment_status, refunded_minor FROM order_details WHERE order_id = $1",
    )
    .bind(order_id(2).as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (
            status.as_str(),
            reason.as_deref(),
            payment.as_str(),
            refunded
        ),
        (
            "cancelled",
            Some("customer_request"),
            "partially_refunded",
            1000
        )
    );
    let (status, total, payment): (String, Option<i64>, String) = sqlx::query_as(
        "SELECT status, total_minor, payment_status FROM order_details WHERE order_id = $1",
    )
    .bind(order_id(3).as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), total, payment.as_str()),
        ("cancelled", None, "none")
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn customer_orders_list_each_customers_orders_newest_first(pool: PgPool) {
    Shop::new(&pool).history().await;
    let projection: Arc<dyn Projection> = Arc::new(CustomerOrdersProjection);
    drain(&pool, &mut worker(&pool, projection).await).await;
    let listed: Vec<(uuid::Uuid, String, Option<i64>, i32)> = sqlx::query_as(
        "SELECT order_id, status, total_minor, line_count FROM customer_orders
          WHERE customer_id = $1 ORDER BY placed_position DESC",
    )
    .bind(crate::helpers::customer(1).as_uuid())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        listed,
        vec![
            (order_id(2).as_uuid(), "cancelled".into(), Some(1250), 1),
            (order_id(1).as_uuid(), "shipped".into(), Some(3000), 2),
        ]
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn sales_daily_counts_confirmations_cancellations_and_refunds_per_day(pool: PgPool) {
    Shop::new(&pool).history().await;
    let projection: Arc<dyn Projection> = Arc::new(SalesDailyProjection);
    drain(&pool, &mut worker(&pool, projection).await).await;
    let days: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('day', day::text, 'confirmed', orders_confirmed, 'revenue', revenue_minor,
                'customer_request', cancelled_customer_request, 'out_of_stock', cancelled_out_of_stock,
                'refunds', refunds, 'refunded', refunded_minor)
           FROM sales_daily WHERE currency = 'EUR' ORDER BY day",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        days,
        vec![
            json!({"day": "2026-03-02", "confirmed": 1, "revenue": 3000, "customer_request": 0, "out_of_stock": 0, "refunds": 0, "refunded": 0}),
            json!({"day": "2026-03-03", "confirmed": 1, "revenue": 1250, "customer_request": 0, "out_of_stock": 0, "refunds": 0, "refunded": 0}),
            json!({"day": "2026-03-04", "confirmed": 0, "revenue": 0, "customer_request": 1, "out_of_stock": 1, "refunds": 1, "refunded": 1000}),
        ]
    );
}

/// Every update is guarded, so going over the log again (a checkpoint reset without
/// truncating) leaves every row as it was: no counter counts twice.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn replaying_the_log_over_existing_rows_changes_nothing(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_all(&pool).await;
    let before = snapshot(&pool).await;
    rewind(&pool).await;
    build_all(&pool).await;
    assert_eq!(snapshot(&pool).await, before);
}

/// Rows carry the events' times, never the projector's, so a build from scratch reproduces
/// every row exactly.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_build_from_scratch_reproduces_every_row(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_all(&pool).await;
    let before = snapshot(&pool).await;
    assert!(before.iter().take(5).all(|table| !table.is_empty()));
    start_over(&pool).await;
    build_all(&pool).await;
    assert_eq!(snapshot(&pool).await, before);
}

/// A row the batch's load did not find is written with a plain `INSERT`, one it found
/// through `ON CONFLICT ... DO UPDATE`: a build one event per batch (every event after an
/// order's first updates rows written by an earlier batch) and a build in one batch (every
/// row new) must give the same rows.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn one_event_per_batch_and_one_batch_for_all_give_the_same_rows(pool: PgPool) {
    Shop::new(&pool).history().await;
    let build = |batch_size: u32| {
        let pool = pool.clone();
        async move {
            for projection in projections::all() {
                let config = infra::projection::WorkerConfig {
                    batch_size,
                    ..crate::helpers::fast_config()
                };
                let mut worker =
                    infra::projection::Worker::register(pool.clone(), projection, config)
                        .await
                        .expect("register the worker");
                assert_eq!(drain(&pool, &mut worker).await, Outcome::Idle);
            }
        }
    };
    build(1).await;
    let one_by_one = snapshot(&pool).await;
    assert!(one_by_one.iter().take(5).all(|table| !table.is_empty()));
    start_over(&pool).await;
    build(10_000).await;
    assert_eq!(snapshot(&pool).await, one_by_one);
}
