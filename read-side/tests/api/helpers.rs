use std::net::SocketAddr;
use std::time::{Duration, Instant};

use domain::order::{Order, OrderCommand, ReservedLine};
use domain::payment::{Payment, PaymentCommand};
use infra::commands::{CommandExecutor, CommandOptions, ExecutorPolicy};
use infra::config::HttpSettings;
use infra::projection::{Group, Outcome, WorkerConfig};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Mutex, oneshot, watch};

/// The command API, the query API and the projectors, on one database.
///
/// Tests end with `stop()`, which shuts everything down so the test database can be dropped
/// at once (the projectors' leases hold connections of their own pool).
pub struct System {
    pub write: SocketAddr,
    pub read: SocketAddr,
    pub client: reqwest::Client,
    pub pool: PgPool,
    /// The projectors' pool, like the projector process's own.
    projector_pool: PgPool,
    group: Mutex<Option<Group>>,
    stop_servers: Vec<oneshot::Sender<()>>,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    stop_projector: Option<watch::Sender<bool>>,
    projector: Option<tokio::task::JoinHandle<()>>,
}

fn http() -> HttpSettings {
    HttpSettings {
        addr: ([127, 0, 0, 1], 0).into(),
        request_timeout: Duration::from_secs(30),
    }
}

pub fn worker_config() -> WorkerConfig {
    WorkerConfig {
        batch_size: 50,
        max_attempts: 2,
        poll_interval: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(200),
        max_backoff: Duration::from_millis(200),
        synchronous_commit: false,
    }
}

impl System {
    pub async fn spawn(pool: PgPool) -> Self {
        infra::telemetry::init_for_tests();
        let write = write_side::Application::build_with_pool(pool.clone(), &http())
            .await
            .expect("command API");
        let read = read_side::Application::build_with_pool(pool.clone(), &http())
            .await
            .expect("query API");
        let (write_addr, read_addr) = (write.local_addr(), read.local_addr());
        let (stop_write, write_stopped) = oneshot::channel::<()>();
        let (stop_read, read_stopped) = oneshot::channel::<()>();
        let servers = vec![
            tokio::spawn(write.run_until_stopped(
                async move {
                    let _ = write_stopped.await;
                },
                Duration::from_secs(1),
            )),
            tokio::spawn(read.run_until_stopped(
                async move {
                    let _ = read_stopped.await;
                },
                Duration::from_secs(1),
            )),
        ];
        let projector_pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with((*pool.connect_options()).clone())
            .await
            .expect("the projectors' pool");
        Self {
            write: write_addr,
            read: read_addr,
            client: reqwest::Client::new(),
            pool,
            projector_pool,
            group: Mutex::new(None),
            stop_servers: vec![stop_write, stop_read],
            servers,
            stop_projector: None,
            projector: None,
        }
    }

    /// Stops the servers and the projectors and closes the projectors' pool.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop_projector.take() {
            let _ = stop.send(true);
        }
        if let Some(projector) = self.projector.take() {
            projector.abort();
            let _ = projector.await;
        }
        for stop in self.stop_servers.drain(..) {
            let _ = stop.send(());
        }
        for server in self.servers.drain(..) {
            let _ = server.await;
        }
        *self.group.lock().await = None;
        self.projector_pool.close().await;
    }

    pub async fn command(&self, path: &str, body: &Value) -> Value {
        let response = self
            .client
            .post(format!("http://{}{path}", self.write))
            .json(body)
            .send()
            .await
            .expect("command sent");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("command response")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("http://{}{path}", self.read))
            .send()
            .await
            .expect("query sent")
    }

    /// A read with `position` as its consistency token.
    pub async fn get_after(&self, path: &str, position: i64) -> Response {
        self.get_with(path)
            .header("x-consistency-token", position)
            .send()
            .await
            .expect("query sent")
    }

    pub fn get_with(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("http://{}{path}", self.read))
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect("json")
    }

    pub async fn register(&self, sku: &str, price: i64, stock: i64) -> Value {
        self.command(
            "/inventory",
            &json!({"sku": sku, "name": format!("Item {sku}"),
                    "unit_price": {"amount_minor": price, "currency": "EUR"}, "initial_stock": stock}),
        )
        .await
    }

    pub async fn place(&self, customer: &str, lines: &[(&str, i64)]) -> String {
        let body = json!({
            "customer_id": customer,
            "lines": lines.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
            "payment": {"card_token": "tok_visa"},
        });
        let response = self.command("/orders", &body).await;
        response["order_id"].as_str().expect("order id").to_owned()
    }

    /// What the fulfilment saga (issue #4) will do: reserve at the item's price, charge,
    /// confirm. Through the same executors the services use.
    pub async fn fulfil(&self, order_id: &str, lines: &[(&str, u32, i64)]) {
        use domain::money::{Currency, Money, Quantity};
        let eur = |minor| Money::new(minor, Currency::parse("EUR").expect("EUR")).expect("money");
        let orders: CommandExecutor<Order> =
            CommandExecutor::new(self.pool.clone(), (), ExecutorPolicy::without_snapshots());
        let payments: CommandExecutor<Payment> =
            CommandExecutor::new(self.pool.clone(), (), ExecutorPolicy::without_snapshots());
        let at = chrono::Utc::now();
        let reserved: Vec<ReservedLine> = lines
            .iter()
            .map(|(sku, quantity, price)| ReservedLine {
                sku: domain::text::Sku::parse(*sku).expect("sku"),
                quantity: Quantity::new(*quantity).expect("quantity"),
                unit_price: eur(*price),
            })
            .collect();
        let total: i64 = lines.iter().map(|(_, q, p)| i64::from(*q) * p).sum();
        let options = CommandOptions::default;
        orders
            .execute(
                order_id,
                OrderCommand::RecordStockReserved {
                    lines: reserved,
                    at,
                },
                options(),
            )
            .await
            .expect("reserved");
        let id = order_id.parse().expect("order id");
        payments
            .execute(
                order_id,
                PaymentCommand::Authorize {
                    order_id: id,
                    amount: eur(total),
                    authorization_id: domain::text::AuthorizationId::parse("auth_test")
                        .expect("authorization id"),
                    at,
                },
                options(),
            )
            .await
            .expect("authorized");
        payments
            .execute(order_id, PaymentCommand::Capture { at }, options())
            .await
            .expect("captured");
        orders
            .execute(order_id, OrderCommand::Confirm { at }, options())
            .await
            .expect("confirmed");
    }

    /// Runs every projection until it has applied the whole log, stepping together as the
    /// projector's do.
    pub async fn project(&self) {
        let mut guard = self.group.lock().await;
        if guard.is_none() {
            *guard = Some(
                Group::register(
                    self.projector_pool.clone(),
                    projections::all(),
                    worker_config(),
                )
                .await
                .expect("workers"),
            );
        }
        let group = guard.as_mut().expect("registered above");
        let members = group.names().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Each member's last outcome: a halted one steps only every poll interval.
        let mut last = std::collections::BTreeMap::new();
        loop {
            let mut busy = false;
            for step in group.step().await {
                let outcome = match step.outcome {
                    Ok(outcome) => outcome,
                    Err(err) => panic!("{}: {err}", step.projection),
                };
                busy |= match outcome {
                    Outcome::Progressed { .. } | Outcome::Retrying => true,
                    Outcome::Idle => !caught_up(&self.pool, step.projection).await,
                    Outcome::Halted => false,
                    other => {
                        assert!(Instant::now() < deadline, "{}: {other:?}", step.projection);
                        true
                    }
                };
                last.insert(step.projection, outcome);
            }
            if !busy && last.len() == members && !last.values().any(|o| *o == Outcome::Retrying) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the projections did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(guard);
        self.heard_of_the_head().await;
    }

    /// Waits until the query API has heard that `order_details` applied the whole log, as
    /// a client would: a read with the last event's position as its token. Until then its
    /// order cache may answer from before the last batch (its notice still on the way), as
    /// it documents; tests that read right after `project()` expect the batch.
    async fn heard_of_the_head(&self) {
        let head: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("the log's head");
        if let Some(head) = head {
            // 404 (no such order) once heard; a halted projection answers 503 at once.
            let _ = self
                .get_with(&format!("/orders/{}?wait=5s", uuid::Uuid::nil()))
                .header("x-consistency-token", head)
                .send()
                .await;
        }
    }

    /// Starts the projectors in the background, as the projector binary does, until `stop`.
    pub fn start_projector(&mut self) {
        let (stop, stopped) = watch::channel(false);
        self.stop_projector = Some(stop);
        let pool = self.projector_pool.clone();
        self.projector = Some(tokio::spawn(async move {
            projections::run_from_log(pool, worker_config(), true, stopped)
                .await
                .expect("the projections run");
        }));
    }
}

pub async fn caught_up(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (
            SELECT 1 FROM events e, projection_state p
             WHERE p.name = $1
               AND (e.transaction_id, e.position) > (p.checkpoint_tx, p.checkpoint_position))",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("caught up?")
}

pub const CUSTOMER: &str = "7d9f2b1e-0c4a-4f7e-9a57-2f4c1d3e5b6a";

/// Asserts a problem+json response; returns its body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("/problems/{code}"));
    assert!(body["request_id"].is_string());
    body
}
