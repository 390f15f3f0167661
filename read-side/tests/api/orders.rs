use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{CUSTOMER, System, assert_problem};

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_order_is_served_with_its_lines_total_payment_and_timeline(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    system.register("CUP", 500, 10).await;
    let order_id = system.place(CUSTOMER, &[("MUG", 2), ("CUP", 1)]).await;
    system
        .fulfil(&order_id, &[("MUG", 2, 1250), ("CUP", 1, 500)])
        .await;
    system.project().await;

    let order = system.get_json(&format!("/orders/{order_id}")).await;
    assert_eq!(order["order_id"], order_id.as_str());
    assert_eq!(order["customer_id"], CUSTOMER);
    assert_eq!(order["status"], "confirmed");
    assert_eq!(
        order["total"],
        serde_json::json!({"amount_minor": 3000, "currency": "EUR"})
    );
    assert_eq!(order["lines"][0]["sku"], "MUG");
    assert_eq!(order["lines"][0]["line_total"]["amount_minor"], 2500);
    assert_eq!(order["payment"]["status"], "captured");
    assert_eq!(order["payment"]["captured"]["amount_minor"], 3000);
    assert_eq!(order["version"], 3);
    let timeline: Vec<&str> = order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        timeline,
        [
            "OrderPlaced",
            "OrderStockReserved",
            "PaymentAuthorized",
            "PaymentCaptured",
            "OrderConfirmed"
        ]
    );

    let response = system
        .client
        .post(format!("http://{}/orders/{order_id}/cancel", system.write))
        .json(&serde_json::json!({"reason": "customer_request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    system.project().await;
    let order = system.get_json(&format!("/orders/{order_id}")).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["cancel_reason"], "customer_request");
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn unknown_and_invalid_order_ids_are_problems(pool: PgPool) {
    let system = System::spawn(pool).await;
    let unknown = uuid::Uuid::new_v4();
    assert_problem(
        system.get(&format!("/orders/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "order_not_found",
    )
    .await;
    assert_problem(
        system.get("/orders/42").await,
        StatusCode::BAD_REQUEST,
        "invalid_path_parameter",
    )
    .await;
    assert_problem(
        system.get("/nowhere").await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_unchanged_order_is_not_sent_twice(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 10).await;
    let order_id = system.place(CUSTOMER, &[("MUG", 1)]).await;
    system.project().await;
    let path = format!("/orders/{order_id}");
    let first = system.get(&path).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let response = system
        .get_with(&path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()["etag"], etag.as_str());
    assert!(response.bytes().await.unwrap().is_empty());
    // Once the order changes, the old tag no longer matches.
    system.fulfil(&order_id, &[("MUG", 1, 1250)]).await;
    system.project().await;
    let response = system
        .get_with(&path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(response.headers()["etag"], etag.as_str());
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_customers_orders_come_newest_first_one_page_at_a_time(pool: PgPool) {
    let system = System::spawn(pool).await;
    system.register("MUG", 1250, 100).await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(system.place(CUSTOMER, &[("MUG", 1)]).await);
    }
    system
        .place("11111111-2222-3333-4444-555555555555", &[("MUG", 1)])
        .await;
    system.project().await;

    let mut seen = Vec::new();
    let mut path = format!("/customers/{CUSTOMER}/orders?limit=2");
    let mut pages = 0;
    loop {
        let page = system.get_json(&path).await;
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["order_id"].as_str().unwrap().to_owned());
            assert_eq!(item["status"], "pending");
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/customers/{CUSTOMER}/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    placed.reverse();
    assert_eq!(seen, placed, "every order once, newest first");
    assert_eq!(pages, 3);

    let empty: Value = system
        .get_json("/customers/00000000-0000-0000-0000-000000000001/orders")
        .await;
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);
    assert!(empty["next_cursor"].is_null());
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn invalid_pages_are_bad_requests(pool: PgPool) {
    let system = System::spawn(pool).await;
    let base = format!("/customers/{CUSTOMER}/orders");
    for query in ["?limit=0", "?limit=101", "?limit=many"] {
        let body = assert_problem(
            system.get(&format!("{base}{query}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        )
        .await;
        assert_eq!(body["errors"][0]["pointer"], "limit");
    }
    assert_problem(
        system.get(&format!("{base}?cursor=garbage!")).await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
    // A cursor from another list is refused too.
    let other = read_side_cursor("sku", "MUG");
    assert_problem(
        system.get(&format!("{base}?cursor={other}")).await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
    assert_problem(
        system.get("/customers/nobody/orders").await,
        StatusCode::BAD_REQUEST,
        "invalid_path_parameter",
    )
    .await;
    system.stop().await;
}

fn read_side_cursor(kind: &str, value: &str) -> String {
    read_side::http::params::encode_cursor(kind, value)
}

fn cache_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned()
}

fn etag_of(response: &reqwest::Response) -> String {
    response.headers()["etag"]
        .to_str()
        .expect("an ETag is text")
        .to_owned()
}

/// Reads `path` until the order cache answers (a miss stores the answer, so the next read
/// is a hit once the cache's follower has read as far as the projection reported).
async fn read_until_hit(system: &System, path: &str) -> reqwest::Response {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let response = system.get(path).await;
        if cache_of(&response) == "hit" {
            return response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the order cache never answered {path}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn place(system: &System) -> (String, i64) {
    let placed = system
        .command(
            "/orders",
            &serde_json::json!({
                "customer_id": CUSTOMER,
                "lines": [{"sku": "MUG", "quantity": 1}],
                "payment": {"card_token": "tok_visa"},
            }),
        )
        .await;
    (
        placed["order_id"].as_str().expect("order id").to_owned(),
        placed["position"].as_i64().expect("position"),
    )
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_order_is_answered_from_memory_until_it_changes(pool: PgPool) {
    let mut system = System::spawn(pool).await;
    system.start_projector();
    system.register("MUG", 1250, 10).await;
    let (order_id, placed) = place(&system).await;
    let (other_id, _) = place(&system).await;
    let path = format!("/orders/{order_id}");

    let first = system.get_after(&path, placed).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(cache_of(&first), "miss");
    let etag = etag_of(&first);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "pending");

    let again = read_until_hit(&system, &path).await;
    assert_eq!(etag_of(&again), etag);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    // The ETag still works from memory.
    let unchanged = system
        .get_with(&path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    // `Cache-Control: no-cache` reads the database (a directive in a list, any case).
    let fresh = system
        .get_with(&path)
        .header("cache-control", "max-age=0, No-Cache")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_of(&fresh), "miss");
    assert_eq!(etag_of(&fresh), etag);

    // Another order's change: this one still reads as it was (from memory once the
    // follower has passed the change, from the database until then; that the entry is
    // kept is pinned by the cache's unit tests).
    let cancelled_other = system
        .command(
            &format!("/orders/{other_id}/cancel"),
            &serde_json::json!({"reason": "customer_request"}),
        )
        .await;
    let other = system
        .get_after(
            &format!("/orders/{other_id}"),
            cancelled_other["position"].as_i64().unwrap(),
        )
        .await;
    assert_eq!(other.json::<Value>().await.unwrap()["status"], "cancelled");
    let still = system.get(&path).await;
    assert_eq!(etag_of(&still), etag);

    // Its own change. Wait for the projection through another path (this order's entry
    // untouched), give the cache's follower time to pass the change, then read without a
    // token: the old entry must have been dropped, not served (a follower still behind
    // sends the read to the database, which shows the change too).
    let cancelled = system
        .command(
            &format!("/orders/{order_id}/cancel"),
            &serde_json::json!({"reason": "customer_request"}),
        )
        .await;
    let position = cancelled["position"].as_i64().unwrap();
    let elsewhere = system
        .get_after(&format!("/orders/{}", uuid::Uuid::nil()), position)
        .await;
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let later = system.get_json(&path).await;
    assert_eq!(later["status"], "cancelled");
    let after = system.get_after(&path, position).await;
    assert_eq!(after.json::<Value>().await.unwrap()["status"], "cancelled");
    system.stop().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_notice_that_the_model_changed_without_events_empties_the_cache(pool: PgPool) {
    let mut system = System::spawn(pool.clone()).await;
    system.start_projector();
    system.register("MUG", 1250, 10).await;
    let (order_id, placed) = place(&system).await;
    let path = format!("/orders/{order_id}");
    let first = system.get_after(&path, placed).await;
    assert_eq!(cache_of(&first), "miss");
    read_until_hit(&system, &path).await;
    // What a rebuild's swap (or an operator's reset) sends: the projection's name alone.
    sqlx::query("SELECT pg_notify($1, 'order_details')")
        .bind(infra::channels::CHECKPOINTS)
        .execute(&pool)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let response = system.get(&path).await;
        if cache_of(&response) == "miss" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache still answered after the notice"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    system.stop().await;
}
