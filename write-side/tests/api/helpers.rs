use std::net::SocketAddr;
use std::time::Duration;

use domain::order::Order;
use infra::commands::{CommandExecutor, CommandOptions, ExecutorPolicy};
use infra::config::HttpSettings;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use write_side::Application;

/// The running application and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub pool: PgPool,
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> Self {
        infra::telemetry::init_for_tests();
        let http = HttpSettings {
            addr: ([127, 0, 0, 1], 0).into(),
            request_timeout: Duration::from_secs(30),
        };
        let app = Application::build_with_pool(pool.clone(), &http)
            .await
            .expect("the application builds");
        let addr = app.local_addr();
        tokio::spawn(app.run_until_stopped(std::future::pending(), Duration::from_secs(1)));
        Self {
            addr,
            client: reqwest::Client::new(),
            pool,
        }
    }

    /// Like `spawn`, on a pool of its own whose sessions wait at most `lock_timeout` behind
    /// another transaction (the services use 5 s).
    pub async fn spawn_impatient(connect: PgConnectOptions, lock_timeout: &str) -> Self {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_with(connect.options([("lock_timeout", lock_timeout)]))
            .await
            .expect("connect");
        infra::db::migrate(&pool).await.expect("migrate");
        Self::spawn(pool).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.post(path)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn event_count(&self, aggregate_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = $1")
            .bind(aggregate_type)
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }

    pub async fn total_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }

    /// Registers `sku` at 12.50 EUR with `stock` units.
    pub async fn register(&self, sku: &str, stock: i64) -> Value {
        let response = self.post_json("/inventory", &item(sku, stock)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "registering {sku}");
        response.json().await.expect("json body")
    }

    /// Places a one-line order for `sku`; returns the order id.
    pub async fn place(&self, sku: &str) -> String {
        let response = self.post_json("/orders", &order(&[(sku, 1)])).await;
        assert_eq!(response.status(), StatusCode::CREATED, "placing an order");
        let body: Value = response.json().await.expect("json body");
        body["order_id"].as_str().expect("order id").to_owned()
    }

    /// Moves an order to `confirmed` the way the fulfilment saga will: records the reserved
    /// stock at the item's price, then confirms. (The saga itself arrives with issue #4.)
    pub async fn confirm(&self, order_id: &str, sku: &str) {
        use domain::money::{Currency, Money, Quantity};
        use domain::order::{OrderCommand, ReservedLine};
        let orders: CommandExecutor<Order> =
            CommandExecutor::new(self.pool.clone(), (), ExecutorPolicy::without_snapshots());
        let at = chrono::Utc::now();
        let reserved = OrderCommand::RecordStockReserved {
            lines: vec![ReservedLine {
                sku: domain::text::Sku::parse(sku).expect("sku"),
                quantity: Quantity::new(1).expect("quantity"),
                unit_price: Money::new(1250, Currency::parse("EUR").expect("EUR")).expect("price"),
            }],
            at,
        };
        orders
            .execute(order_id, reserved, CommandOptions::default())
            .await
            .expect("reserved");
        orders
            .execute(
                order_id,
                OrderCommand::Confirm { at },
                CommandOptions::default(),
            )
            .await
            .expect("confirmed");
    }
}

pub fn item(sku: &str, stock: i64) -> Value {
    json!({
        "sku": sku,
        "name": "Blue mug",
        "unit_price": {"amount_minor": 1250, "currency": "EUR"},
        "initial_stock": stock,
    })
}

pub fn order(lines: &[(&str, i64)]) -> Value {
    json!({
        "customer_id": "7d9f2b1e-0c4a-4f7e-9a57-2f4c1d3e5b6a",
        "lines": lines.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
        "payment": {"card_token": "tok_visa"},
    })
}

/// Asserts a problem+json response with `status` and `code`; returns the body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["type"], format!("/problems/{code}"));
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string());
    assert!(!body["detail"].as_str().unwrap_or_default().is_empty());
    assert_eq!(body["request_id"].as_str().map(str::to_owned), request_id);
    body
}

pub fn etag(response: &Response) -> String {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("an ETag")
        .to_owned()
}
