//! The order fulfilment saga end to end: the command API, the saga worker, the payment
//! gateway simulator and PostgreSQL, all real.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infra::clock::SystemClock;
use infra::event_store::StoredEvent;
use infra::projection::{ApplyError, Decoded, Projection, Worker, WorkerConfig};
use sqlx::PgConnection;
use tokio::sync::{Notify, watch};
use write_side::sagas::runner::{Runner, RunnerConfig};
use write_side::sagas::trigger::FulfillmentTrigger;

use domain::order::{CancelReason, OrderState};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use write_side::sagas::order_fulfillment::Action;
use write_side::sagas::runner::CrashAfter;

use crate::fulfilment::{Fulfilment, ProcessOptions, gateway, runner_config, simulator_at};
use crate::helpers::{TestApp, assert_problem};

const SETTLE: Duration = Duration::from_secs(20);

fn cancelled(state: &OrderState) -> Option<CancelReason> {
    match state {
        OrderState::Cancelled { reason } => Some(*reason),
        _ => None,
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_visa_order_is_reserved_charged_and_confirmed(pool: PgPool) {
    let shop = Fulfilment::start(pool, Duration::from_secs(10)).await;
    shop.register("MUG", 5, 1250).await;
    shop.register("CUP", 5, 500).await;
    let order = shop.place(&[("MUG", 2), ("CUP", 1)], "tok_visa").await;
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    assert_eq!(
        shop.order(&order).await,
        OrderState::Confirmed { total: eur(3000) }
    );
    assert_eq!(
        (shop.stock("MUG").await, shop.stock("CUP").await),
        ((5, 2), (5, 1))
    );
    assert_eq!(shop.ledger_kinds(&order).await, ["authorize", "capture"]);
    assert_eq!(
        shop.events_of("payment", &order).await,
        ["PaymentAuthorized", "PaymentCaptured"]
    );
    // The reservation was taken in SKU order and recorded with the items' prices.
    let placed: Vec<String> = shop.events_of("order", &order).await;
    assert_eq!(
        placed,
        ["OrderPlaced", "OrderStockReserved", "OrderConfirmed"]
    );
    shop.stop().await;
}

fn eur(minor: i64) -> domain::money::Money {
    domain::money::Money::new(
        minor,
        domain::money::Currency::parse("EUR").expect("test setup"),
    )
    .expect("test setup")
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_flaky_gateway_still_confirms_and_a_declined_card_cancels_and_releases(pool: PgPool) {
    let shop = Fulfilment::start(pool, Duration::from_secs(10)).await;
    shop.register("MUG", 5, 1250).await;
    let flaky = shop.place(&[("MUG", 1)], "tok_flaky").await;
    let declined = shop.place(&[("MUG", 2)], "tok_decline").await;
    shop.wait_for_stage(&flaky, &["confirmed"], SETTLE).await;
    shop.wait_for_stage(&declined, &["cancelled"], SETTLE).await;
    assert_eq!(
        cancelled(&shop.order(&declined).await),
        Some(CancelReason::PaymentDeclined)
    );
    assert_eq!(
        shop.stock("MUG").await,
        (5, 1),
        "only the confirmed order holds stock"
    );
    assert_eq!(shop.ledger_kinds(&flaky).await, ["authorize", "capture"]);
    assert!(
        shop.ledger_kinds(&declined).await.is_empty(),
        "nothing was charged"
    );
    assert_eq!(
        shop.events_of("payment", &declined).await,
        ["PaymentDeclined"]
    );
    shop.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn no_payment_outcome_by_the_deadline_voids_releases_and_cancels(pool: PgPool) {
    let shop = Fulfilment::start(pool, Duration::from_secs(1)).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 1)], "tok_timeout").await;
    shop.wait_for_stage(&order, &["cancelled"], SETTLE).await;
    assert_eq!(
        cancelled(&shop.order(&order).await),
        Some(CancelReason::PaymentTimeout)
    );
    assert_eq!(shop.stock("MUG").await, (5, 0));
    // The hold the gateway made without answering was found and voided.
    assert_eq!(shop.ledger_kinds(&order).await, ["authorize", "void"]);
    shop.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_order_short_of_stock_releases_what_it_reserved_and_cancels(pool: PgPool) {
    let shop = Fulfilment::start(pool, Duration::from_secs(10)).await;
    shop.register("A-PLENTY", 10, 100).await;
    shop.register("B-SCARCE", 1, 100).await;
    let order = shop
        .place(&[("B-SCARCE", 2), ("A-PLENTY", 3)], "tok_visa")
        .await;
    shop.wait_for_stage(&order, &["cancelled"], SETTLE).await;
    assert_eq!(
        cancelled(&shop.order(&order).await),
        Some(CancelReason::OutOfStock)
    );
    assert_eq!(
        shop.stock("A-PLENTY").await,
        (10, 0),
        "A was reserved first (SKU order), then released"
    );
    assert_eq!(
        shop.events_of("inventory_item", "A-PLENTY").await,
        ["InventoryItemRegistered", "StockReserved", "StockReleased"]
    );
    assert!(shop.ledger_kinds(&order).await.is_empty());
    shop.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_customer_cancel_after_capture_refunds_and_releases(pool: PgPool) {
    let shop = Fulfilment::start(pool, Duration::from_secs(10)).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 2)], "tok_visa").await;
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    shop.cancel(&order).await;
    shop.wait_for_stage(&order, &["cancelled"], SETTLE).await;
    assert_eq!(
        shop.ledger_kinds(&order).await,
        ["authorize", "capture", "refund"]
    );
    assert_eq!(shop.stock("MUG").await, (5, 0));
    assert_eq!(
        cancelled(&shop.order(&order).await),
        Some(CancelReason::CustomerRequest)
    );
    shop.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn shipping_commits_the_reservation(pool: PgPool) {
    let shop = Fulfilment::start(pool, Duration::from_secs(10)).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 2)], "tok_visa").await;
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    let response = shop
        .app
        .post(&format!("/orders/{order}/ship"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    shop.wait_for_stage(&order, &["completed"], SETTLE).await;
    assert_eq!(
        shop.stock("MUG").await,
        (3, 0),
        "two units left the warehouse"
    );
    shop.stop().await;
}

/// Every event reaches the saga twice; nothing happens twice.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn events_delivered_twice_reserve_charge_and_refund_once(pool: PgPool) {
    let simulator = simulator_at(([127, 0, 0, 1], 0).into()).await;
    let options = ProcessOptions {
        config: runner_config(Duration::from_secs(10)),
        gateway_url: simulator.clone(),
        twice: true,
        crash_after: None,
    };
    let shop = Fulfilment::start_with(pool, simulator, options).await;
    shop.register("MUG", 5, 1250).await;
    let kept = shop.place(&[("MUG", 1)], "tok_visa").await;
    let refunded = shop.place(&[("MUG", 1)], "tok_visa").await;
    shop.wait_for_stage(&refunded, &["confirmed"], SETTLE).await;
    shop.app
        .post_json(
            &format!("/orders/{refunded}/cancel"),
            &json!({"reason": "customer_request"}),
        )
        .await;
    shop.wait_for_stage(&kept, &["confirmed"], SETTLE).await;
    shop.wait_for_stage(&refunded, &["cancelled"], SETTLE).await;
    assert_eq!(shop.ledger_kinds(&kept).await, ["authorize", "capture"]);
    assert_eq!(
        shop.ledger_kinds(&refunded).await,
        ["authorize", "capture", "refund"]
    );
    assert_eq!(
        shop.events_of("inventory_item", "MUG").await,
        [
            "InventoryItemRegistered",
            "StockReserved",
            "StockReserved",
            "StockReleased"
        ]
    );
    assert_eq!(
        shop.events_of("payment", &refunded).await,
        ["PaymentAuthorized", "PaymentCaptured", "PaymentRefunded"]
    );
    shop.stop().await;
}

/// The saga dies right after each kind of step took effect (its command committed, its
/// gateway call made) and before it saved the outcome, then restarts: every step runs again,
/// and none has a second effect.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_saga_killed_between_a_step_and_its_checkpoint_repeats_the_step_harmlessly(pool: PgPool) {
    let crashed: Arc<std::sync::Mutex<HashMap<String, bool>>> = Arc::default();
    let crash: CrashAfter = {
        let crashed = crashed.clone();
        Arc::new(move |action: &Action| {
            // Crash once after each kind of step.
            let kind = action
                .name()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            let mut crashed = crashed.lock().unwrap();
            !std::mem::replace(crashed.entry(kind).or_default(), true)
        })
    };
    let simulator = simulator_at(([127, 0, 0, 1], 0).into()).await;
    let options = ProcessOptions {
        config: runner_config(Duration::from_secs(10)),
        gateway_url: simulator.clone(),
        twice: false,
        crash_after: Some(crash),
    };
    let shop = Fulfilment::start_with(pool, simulator, options).await;
    shop.register("MUG", 5, 1250).await;
    shop.register("CUP", 5, 500).await;
    let order = shop.place(&[("MUG", 1), ("CUP", 2)], "tok_visa").await;
    // Each crash leaves the claim to expire; the runner then takes the saga up again.
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    shop.app
        .post_json(
            &format!("/orders/{order}/cancel"),
            &json!({"reason": "customer_request"}),
        )
        .await;
    shop.wait_for_stage(&order, &["cancelled"], SETTLE).await;
    let kinds: Vec<String> = crashed.lock().unwrap().keys().cloned().collect();
    for kind in [
        "reserve",
        "record-reservation",
        "authorize",
        "capture",
        "confirm",
        "refund",
        "release",
    ] {
        assert!(
            kinds.contains(&kind.to_owned()),
            "crashed after {kind}: {kinds:?}"
        );
    }
    assert_eq!(
        shop.ledger_kinds(&order).await,
        ["authorize", "capture", "refund"]
    );
    assert_eq!(
        shop.events_of("inventory_item", "MUG").await,
        ["InventoryItemRegistered", "StockReserved", "StockReleased"]
    );
    assert_eq!(
        shop.events_of("order", &order).await,
        [
            "OrderPlaced",
            "OrderStockReserved",
            "OrderConfirmed",
            "OrderCancelled"
        ]
    );
    assert_eq!(
        shop.events_of("payment", &order).await,
        ["PaymentAuthorized", "PaymentCaptured", "PaymentRefunded"]
    );
    assert_eq!(
        (shop.stock("MUG").await, shop.stock("CUP").await),
        ((5, 0), (5, 0))
    );
    shop.stop().await;
}

/// The payment deadline is a timer in PostgreSQL: it fires even if no saga process was
/// running when it fell due.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_deadline_that_passes_while_no_worker_runs_fires_after_the_restart(pool: PgPool) {
    let mut shop = Fulfilment::start(pool, Duration::from_secs(1)).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 1)], "tok_timeout").await;
    shop.wait_for_stage(&order, &["charging"], SETTLE).await;
    shop.kill().await;
    // The deadline passes with no worker alive.
    let due: bool = loop {
        let past: bool = sqlx::query_scalar(
            "SELECT (state->>'deadline')::timestamptz < now() FROM fulfillment_sagas WHERE order_id = $1::uuid",
        )
        .bind(&order)
        .fetch_one(&shop.app.pool)
        .await
        .unwrap();
        if past {
            break past;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(due);
    assert_eq!(shop.stage(&order).await.as_deref(), Some("charging"));
    shop.restart().await;
    shop.wait_for_stage(&order, &["cancelled"], SETTLE).await;
    assert_eq!(
        cancelled(&shop.order(&order).await),
        Some(CancelReason::PaymentTimeout)
    );
    assert_eq!(shop.stock("MUG").await, (5, 0));
    shop.stop().await;
}

/// While the gateway is down (its breaker open), a saga keeps trying until its deadline
/// rather than cancelling at once, and completes when the gateway comes back.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn sagas_wait_for_a_gateway_that_is_down_until_their_deadline(pool: PgPool) {
    // An address nothing listens on yet.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let options = ProcessOptions {
        config: runner_config(Duration::from_secs(30)),
        gateway_url: format!("http://{addr}"),
        twice: false,
        crash_after: None,
    };
    let shop = Fulfilment::start_with(pool, format!("http://{addr}"), options).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 1)], "tok_visa").await;
    // It keeps failing, and keeps waiting.
    loop {
        let (stage, attempts): (String, i32) = sqlx::query_as(
            "SELECT stage, attempts FROM fulfillment_sagas WHERE order_id = $1::uuid",
        )
        .bind(&order)
        .fetch_optional(&shop.app.pool)
        .await
        .unwrap()
        .unwrap_or(("none".into(), 0));
        if stage == "charging" && attempts >= 12 {
            break;
        }
        assert_ne!(
            stage, "cancelled",
            "the saga must not give up before its deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_error: String =
        sqlx::query_scalar("SELECT last_error FROM fulfillment_sagas WHERE order_id = $1::uuid")
            .bind(&order)
            .fetch_one(&shop.app.pool)
            .await
            .unwrap();
    assert!(last_error.contains("unavailable"), "{last_error}");
    // The gateway comes back.
    simulator_at(addr).await;
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    assert_eq!(shop.ledger_kinds(&order).await, ["authorize", "capture"]);
    shop.stop().await;
}

/// A saga that meets something it cannot handle stops as `failed`; once the cause is fixed,
/// an operator retries it.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_failed_saga_is_retried_by_an_operator(pool: PgPool) {
    let shop = Fulfilment::start(pool, Duration::from_secs(10)).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 1)], "tok_visa").await;
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    // Sabotage: someone releases the order's reservation behind the saga's back.
    let items = infra::commands::CommandExecutor::<domain::inventory::InventoryItem>::new(
        shop.app.pool.clone(),
        (),
        infra::commands::ExecutorPolicy::without_snapshots(),
    );
    let order_id: domain::ids::OrderId = order.parse().unwrap();
    let release = domain::inventory::InventoryCommand::Release {
        order_id,
        at: chrono::Utc::now(),
    };
    items
        .execute("MUG", release, Default::default())
        .await
        .unwrap();
    shop.app
        .post(&format!("/orders/{order}/ship"))
        .send()
        .await
        .unwrap();
    shop.wait_for_stage(&order, &["failed"], SETTLE).await;
    let (next_step, last_error): (String, String) = sqlx::query_as(
        "SELECT next_step, last_error FROM fulfillment_sagas WHERE order_id = $1::uuid",
    )
    .bind(&order)
    .fetch_one(&shop.app.pool)
    .await
    .unwrap();
    assert_eq!(next_step, "commit:MUG");
    assert!(last_error.contains("no_reservation"), "{last_error}");

    // The operator puts the reservation back and retries.
    let reserve = domain::inventory::InventoryCommand::Reserve {
        order_id,
        quantity: domain::money::Quantity::new(1).unwrap(),
        at: chrono::Utc::now(),
    };
    items
        .execute("MUG", reserve, Default::default())
        .await
        .unwrap();
    let response = shop
        .app
        .post(&format!("/sagas/{order}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["outcome"], "resumed");
    shop.wait_for_stage(&order, &["completed"], SETTLE).await;
    assert_eq!(shop.stock("MUG").await, (4, 0));
    // A finished saga has nothing to retry; an unknown one is not found.
    let response = shop
        .app
        .post(&format!("/sagas/{order}/retry"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "saga_finished").await;
    let unknown = uuid::Uuid::new_v4();
    let response = shop
        .app
        .post(&format!("/sagas/{unknown}/retry"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "saga_not_found").await;
    shop.stop().await;
}

/// 200 orders from 20 concurrent clients against too little stock, with every kind of card.
async fn two_hundred_orders(pool: PgPool, kill_midway: bool) {
    const SKUS: [&str; 4] = ["SKU-A", "SKU-B", "SKU-C", "SKU-D"];
    const STOCK: i64 = 30;
    const TOKENS: [&str; 4] = ["tok_visa", "tok_decline", "tok_timeout", "tok_flaky"];
    // The payment deadline leaves a declined card time to get its answer while fifty
    // timeout cards hold the gateway's attempts (250 ms each) and trip its breaker: with
    // 8 s, a slow machine running the other tests alongside once ended a `tok_decline`
    // order `payment_timeout` (1 run in 4).
    let mut shop = Fulfilment::start(pool, Duration::from_secs(20)).await;
    for sku in SKUS {
        shop.register(sku, STOCK, 1000).await;
    }
    let placed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let halfway = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..20)
        .map(|client| {
            let app_url = shop.app.url("");
            let placed = placed.clone();
            let halfway = halfway.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for n in 0..10 {
                    let i = client * 10 + n;
                    let token = TOKENS[i % 4];
                    // One or two lines, 1 to 3 units: 200 orders want ~600 units of 120.
                    let mut lines = vec![json!({"sku": SKUS[i % 4], "quantity": 1 + i % 3})];
                    if i % 2 == 0 {
                        lines.push(
                            json!({"sku": SKUS[(i / 2 + 1) % 4], "quantity": 1 + (i / 3) % 3}),
                        );
                    }
                    if lines.len() == 2 && lines[0]["sku"] == lines[1]["sku"] {
                        lines.pop();
                    }
                    let body = json!({
                        "customer_id": "7d9f2b1e-0c4a-4f7e-9a57-2f4c1d3e5b6a",
                        "lines": lines,
                        "payment": {"card_token": token},
                    });
                    let response = http
                        .post(format!("{app_url}/orders"))
                        .json(&body)
                        .send()
                        .await
                        .expect("test setup");
                    assert_eq!(response.status(), StatusCode::CREATED);
                    let order: serde_json::Value = response.json().await.expect("test setup");
                    let mut placed = placed.lock().expect("test setup");
                    placed.push((
                        order["order_id"].as_str().expect("test setup").to_owned(),
                        token,
                        body["lines"].clone(),
                    ));
                    if placed.len() == 100 {
                        halfway.store(true, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    if kill_midway {
        while !halfway.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shop.kill().await;
    }
    for client in clients {
        client.await.expect("test setup");
    }
    if kill_midway {
        shop.restart().await;
    }
    shop.wait_until_settled(200, Duration::from_secs(60)).await;

    let placed = placed.lock().expect("test setup").clone();
    let mut confirmed_units: HashMap<String, u64> = HashMap::new();
    let mut confirmed_total = 0i64;
    let mut outcomes: HashMap<&str, HashMap<String, usize>> = HashMap::new();
    for (order_id, token, lines) in &placed {
        let state = shop.order(order_id).await;
        let outcome = match &state {
            OrderState::Confirmed { total } => {
                confirmed_total += total.amount_minor();
                for line in lines.as_array().expect("test setup") {
                    *confirmed_units
                        .entry(line["sku"].as_str().expect("test setup").to_owned())
                        .or_default() += line["quantity"].as_u64().expect("test setup");
                }
                "confirmed".to_owned()
            }
            OrderState::Cancelled { reason } => reason.as_str().to_owned(),
            other => panic!("order {order_id} ({token}) ended {other:?}"),
        };
        let allowed: &[&str] = match *token {
            "tok_visa" | "tok_flaky" => &["confirmed", "out_of_stock"],
            "tok_decline" => &["payment_declined", "out_of_stock"],
            _ => &["payment_timeout", "out_of_stock"],
        };
        assert!(
            allowed.contains(&outcome.as_str()),
            "order {order_id} with {token} ended {outcome}"
        );
        *outcomes
            .entry(token)
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }
    // Every kind of ending happened, so the check covered them all.
    for (token, ending) in [
        ("tok_visa", "confirmed"),
        ("tok_flaky", "confirmed"),
        ("tok_decline", "payment_declined"),
        ("tok_timeout", "payment_timeout"),
    ] {
        assert!(
            outcomes[token].get(ending).copied().unwrap_or(0) > 0,
            "{outcomes:?}"
        );
    }
    assert!(
        outcomes.values().any(|o| o.contains_key("out_of_stock")),
        "{outcomes:?}"
    );

    // No SKU oversold; all stock of cancelled orders released.
    for sku in SKUS {
        let (on_hand, reserved) = shop.stock(sku).await;
        assert_eq!(on_hand, STOCK as u64);
        assert!(reserved <= on_hand, "{sku} oversold");
        assert_eq!(
            reserved,
            confirmed_units.get(sku).copied().unwrap_or(0),
            "{sku}: reserved = confirmed units"
        );
    }

    // Captured minus refunded equals the confirmed totals; nothing charged twice.
    let ledger = shop.ledger().await;
    let sum = |kind: &str| -> i64 {
        ledger
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["amount_minor"].as_i64().expect("test setup"))
            .sum()
    };
    assert_eq!(sum("capture") - sum("refund"), confirmed_total);
    let mut captures: HashMap<String, usize> = HashMap::new();
    let mut authorizations: HashMap<String, usize> = HashMap::new();
    for entry in &ledger {
        let order = entry["order_id"].as_str().expect("test setup").to_owned();
        match entry["kind"].as_str().expect("test setup") {
            "capture" => *captures.entry(order).or_default() += 1,
            "authorize" => *authorizations.entry(order).or_default() += 1,
            _ => {}
        }
    }
    assert!(
        captures.values().all(|n| *n == 1),
        "an order was charged twice"
    );
    assert!(
        authorizations.values().all(|n| *n == 1),
        "an order was authorized twice"
    );
    shop.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn two_hundred_concurrent_orders_settle_consistently(pool: PgPool) {
    two_hundred_orders(pool, false).await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn two_hundred_concurrent_orders_settle_consistently_when_the_saga_worker_is_killed(
    pool: PgPool,
) {
    two_hundred_orders(pool, true).await;
}

/// A shop whose saga process crashes once, right after the first step `kind` matches (before
/// saving its outcome); the flag turns true when it did.
async fn crashing_once_after(
    pool: PgPool,
    kind: fn(&Action) -> bool,
) -> (Fulfilment, Arc<AtomicBool>) {
    let crashed = Arc::new(AtomicBool::new(false));
    let crash: CrashAfter = {
        let crashed = crashed.clone();
        Arc::new(move |action: &Action| kind(action) && !crashed.swap(true, Ordering::SeqCst))
    };
    let simulator = simulator_at(([127, 0, 0, 1], 0).into()).await;
    let options = ProcessOptions {
        config: runner_config(Duration::from_secs(30)),
        gateway_url: simulator.clone(),
        twice: false,
        crash_after: Some(crash),
    };
    (
        Fulfilment::start_with(pool, simulator, options).await,
        crashed,
    )
}

/// The runner saves a saga only where it must (entering `Charging`, compensating, waiting):
/// a crash after a happy-path step repeats the steps since the last save, harmlessly, and
/// the payment deadline, set on entering `Charging` and saved then, does not move.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_crash_after_an_unsaved_step_repeats_it_and_keeps_the_payment_deadline(pool: PgPool) {
    let (shop, crashed) =
        crashing_once_after(pool, |action| matches!(action, Action::Capture { .. })).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 1)], "tok_visa").await;
    // The crash after the capture leaves the saga as last saved: charging, until the claim
    // expires and the runner takes it up again.
    shop.wait_for_stage(&order, &["charging"], SETTLE).await;
    let deadline = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT state->>'deadline' FROM fulfillment_sagas WHERE order_id = $1::uuid",
        )
        .bind(&order)
        .fetch_one(&shop.app.pool)
        .await
        .unwrap()
    };
    let first = deadline().await;
    assert!(
        first.is_some(),
        "the deadline is saved on entering charging"
    );
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    assert!(crashed.load(Ordering::SeqCst));
    assert_eq!(deadline().await, first);
    // Authorize and capture ran twice; the gateway and the payment took each once.
    assert_eq!(shop.ledger_kinds(&order).await, ["authorize", "capture"]);
    assert_eq!(
        shop.events_of("payment", &order).await,
        ["PaymentAuthorized", "PaymentCaptured"]
    );
    assert_eq!(
        shop.events_of("order", &order).await,
        ["OrderPlaced", "OrderStockReserved", "OrderConfirmed"]
    );
    shop.stop().await;
}

/// The process dies right after a payment was authorized (at the gateway and in the
/// payment's stream) and before the saga saved it; a new process, with nothing cached,
/// repeats the step. Its first payment command guesses an empty stream (no load), collides
/// with the event already there and is decided again on a fresh load, as a no-op.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_new_process_repeating_an_authorization_appends_nothing_twice(pool: PgPool) {
    let (mut shop, crashed) =
        crashing_once_after(pool, |action| matches!(action, Action::Authorize { .. })).await;
    shop.register("MUG", 5, 1250).await;
    let order = shop.place(&[("MUG", 1)], "tok_visa").await;
    let deadline = std::time::Instant::now() + SETTLE;
    while !crashed.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "never authorized");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shop.restart().await;
    shop.wait_for_stage(&order, &["confirmed"], SETTLE).await;
    assert_eq!(shop.ledger_kinds(&order).await, ["authorize", "capture"]);
    assert_eq!(
        shop.events_of("payment", &order).await,
        ["PaymentAuthorized", "PaymentCaptured"]
    );
    shop.stop().await;
}

/// Applies the trigger, then fails its first batch: the worker rolls it back and applies
/// the events again.
struct FailsFirstBatch {
    trigger: FulfillmentTrigger,
    failed: AtomicBool,
}

#[async_trait]
impl Projection for FailsFirstBatch {
    fn name(&self) -> &'static str {
        self.trigger.name()
    }
    fn version(&self) -> i32 {
        self.trigger.version()
    }
    fn handles(&self, stored: &StoredEvent) -> bool {
        self.trigger.handles(stored)
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        self.trigger.apply(conn, events).await?;
        if self.failed.swap(true, Ordering::SeqCst) {
            Ok(())
        } else {
            Err(ApplyError::Invalid(
                "failing the first batch on purpose".into(),
            ))
        }
    }
    fn finished(&self, committed: bool) {
        self.trigger.finished(committed)
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_trigger_hands_the_sagas_it_starts_to_its_runner_claimed_up_to_its_room(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("MUG", 10).await;
    let mut orders = vec![
        app.place("MUG").await,
        app.place("MUG").await,
        app.place("MUG").await,
    ];
    // A runner with room for two, not running yet, and its process's trigger.
    let simulator = simulator_at(([127, 0, 0, 1], 0).into()).await;
    let config = RunnerConfig {
        concurrency: 2,
        lease: Duration::from_secs(60),
        ..runner_config(Duration::from_secs(10))
    };
    let runner = Runner::new(
        pool.clone(),
        Arc::new(gateway(&simulator)),
        Arc::new(SystemClock),
        config,
    );
    let handoff = runner.handoff();
    let trigger = Arc::new(FailsFirstBatch {
        trigger: FulfillmentTrigger::handing_to(handoff.clone()),
        failed: AtomicBool::new(false),
    });
    let worker_config = WorkerConfig {
        poll_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    let worker = Worker::register(pool.clone(), trigger, worker_config)
        .await
        .expect("trigger");
    let (stop, stopped) = watch::channel(false);
    let worker = tokio::spawn(worker.run(Arc::new(Notify::new()), stopped.clone()));
    let deadline = Instant::now() + SETTLE;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        let runner_id = handoff.runner().to_owned();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(runner_id)
                .fetch_one(&pool)
                .await
                .expect("count sagas")
        }
    };
    while count("SELECT count(*) FROM fulfillment_sagas WHERE $1 <> ''").await < 3 {
        assert!(
            Instant::now() < deadline,
            "the trigger did not start the sagas"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two started claimed by the runner and handed over (once: the rolled-back batch handed
    // nothing), the third unclaimed, for any runner.
    assert_eq!(
        count("SELECT count(*) FROM fulfillment_sagas WHERE claimed_by = $1").await,
        2
    );
    assert_eq!(
        count("SELECT count(*) FROM fulfillment_sagas WHERE claimed_by IS NULL AND $1 <> ''").await,
        1
    );
    assert_eq!(handoff.waiting(), 2);
    assert_eq!(handoff.room(), 0);
    // A runner that stops gives back the claims on what it was handed and never started.
    let (_, already_stopped) = watch::channel(true);
    runner
        .clone()
        .run(Arc::new(Notify::new()), already_stopped)
        .await;
    assert_eq!(
        count("SELECT count(*) FROM fulfillment_sagas WHERE claimed_by IS NULL AND $1 <> ''").await,
        3
    );
    assert_eq!((handoff.waiting(), handoff.room()), (0, 2));
    // A fourth order's saga is handed over, claimed for a minute (no claim can take it
    // meanwhile): the runner works it from the hand-off and claims the other three.
    orders.push(app.place("MUG").await);
    while count("SELECT count(*) FROM fulfillment_sagas WHERE claimed_by = $1").await < 1 {
        assert!(
            Instant::now() < deadline,
            "the trigger did not start the fourth saga"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handoff.waiting(), 1);
    let running = tokio::spawn(runner.run(Arc::new(Notify::new()), stopped));
    while count("SELECT count(*) FROM fulfillment_sagas WHERE stage = 'confirmed' AND $1 <> ''")
        .await
        < 4
    {
        assert!(Instant::now() < deadline, "the sagas did not all confirm");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handoff.room(), 2);
    let _ = stop.send(true);
    let _ = worker.await;
    let _ = running.await;
    for order in &orders {
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT event_type FROM events WHERE aggregate_type = 'order' AND aggregate_id = $1
              ORDER BY sequence",
        )
        .bind(order)
        .fetch_all(&pool)
        .await
        .expect("events");
        assert_eq!(
            events,
            ["OrderPlaced", "OrderStockReserved", "OrderConfirmed"]
        );
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_saga_handed_over_with_its_cancel_in_the_same_batch_reserves_nothing(pool: PgPool) {
    let mut shop = Fulfilment::start(pool, Duration::from_secs(10)).await;
    shop.register("MUG", 5, 1250).await;
    // Placed and cancelled while no saga worker runs: the trigger reads both in one batch,
    // starts the saga claimed for its runner and signals it.
    shop.kill().await;
    let order = shop.place(&[("MUG", 2)], "tok_visa").await;
    shop.cancel(&order).await;
    // Both settled (below every running transaction of the cluster), so one batch has both.
    let deadline = Instant::now() + SETTLE;
    loop {
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'order' AND aggregate_id = $1
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
        )
        .bind(&order)
        .fetch_one(&shop.app.pool)
        .await
        .expect("settled events");
        if settled == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order's events did not settle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shop.restart().await;
    shop.wait_for_stage(&order, &["cancelled"], SETTLE).await;
    // The runner got the cancel with the saga, as a claim would have read it: nothing was
    // reserved or charged.
    assert_eq!(
        shop.events_of("inventory_item", "MUG").await,
        ["InventoryItemRegistered"]
    );
    assert!(shop.ledger_kinds(&order).await.is_empty());
    shop.stop().await;
}
