//! A harness for the order fulfilment saga: the command API, the payment gateway simulator,
//! and a "saga worker process" (trigger and runner on a pool of their own) that tests can
//! kill and restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::inventory::{InventoryItem, InventoryState};
use domain::order::{Order, OrderState};
use infra::clock::SystemClock;
use infra::event_store::StoredEvent;
use infra::event_store::stream::load;
use infra::payment_gateway::{BreakerConfig, GatewayClientConfig, HttpPaymentGateway};
use infra::projection::{
    ApplyError, Decoded, Projection, Worker, WorkerConfig, listen_for, listen_for_events,
};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use write_side::sagas::runner::{CrashAfter, Runner, RunnerConfig};
use write_side::sagas::trigger::FulfillmentTrigger;

use crate::helpers::TestApp;

pub fn runner_config(deadline: Duration) -> RunnerConfig {
    RunnerConfig {
        concurrency: 32,
        lease: Duration::from_millis(1500),
        poll_interval: Duration::from_millis(50),
        payment_deadline: deadline,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
    }
}

/// The production client, with test-sized times: 250 ms per attempt (tok_timeout costs three
/// of them per call), a 300 ms open breaker.
pub fn gateway(url: &str) -> HttpPaymentGateway {
    let mut config = GatewayClientConfig::new(url, Duration::from_millis(250));
    config.backoff_base = Duration::from_millis(10);
    config.breaker = BreakerConfig {
        window: 40,
        min_calls: 20,
        open_for: Duration::from_millis(300),
        ..BreakerConfig::default()
    };
    HttpPaymentGateway::new(config).expect("gateway client")
}

/// Applies every event twice: what redelivery looks like.
pub struct Twice(pub FulfillmentTrigger);

#[async_trait]
impl Projection for Twice {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn version(&self) -> i32 {
        self.0.version()
    }
    fn handles(&self, stored: &StoredEvent) -> bool {
        self.0.handles(stored)
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        for decoded in events {
            let once = std::slice::from_ref(decoded);
            self.0.apply(conn, once).await?;
            self.0.apply(conn, once).await?;
        }
        Ok(())
    }
    fn finished(&self, committed: bool) {
        self.0.finished(committed)
    }
}

/// One saga worker process.
struct Process {
    pool: PgPool,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// How to start a saga process.
#[derive(Clone)]
pub struct ProcessOptions {
    pub config: RunnerConfig,
    pub gateway_url: String,
    pub twice: bool,
    pub crash_after: Option<CrashAfter>,
}

pub struct Fulfilment {
    pub app: TestApp,
    pub simulator: String,
    process: Option<Process>,
    pub options: ProcessOptions,
}

pub async fn simulator_at(addr: std::net::SocketAddr) -> String {
    let server = payment_gateway_sim::Server::bind(addr)
        .await
        .expect("bind the simulator");
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    url
}

impl Fulfilment {
    pub async fn start(pool: PgPool, deadline: Duration) -> Self {
        let simulator = simulator_at(([127, 0, 0, 1], 0).into()).await;
        let options = ProcessOptions {
            config: runner_config(deadline),
            gateway_url: simulator.clone(),
            twice: false,
            crash_after: None,
        };
        Self::start_with(pool, simulator, options).await
    }

    pub async fn start_with(pool: PgPool, simulator: String, options: ProcessOptions) -> Self {
        let app = TestApp::spawn(pool).await;
        let mut this = Self {
            app,
            simulator,
            process: None,
            options,
        };
        this.restart().await;
        this
    }

    /// Starts a saga process (killing the current one first, if any).
    pub async fn restart(&mut self) {
        self.kill().await;
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .connect_with((*self.app.pool.connect_options()).clone())
            .await
            .expect("the saga process's pool");
        let (stop, stopped) = watch::channel(false);
        let gateway = Arc::new(gateway(&self.options.gateway_url));
        let runner = match &self.options.crash_after {
            Some(crash) => Runner::with_crash_after(
                pool.clone(),
                gateway,
                Arc::new(SystemClock),
                self.options.config,
                crash.clone(),
            ),
            None => Runner::new(
                pool.clone(),
                gateway,
                Arc::new(SystemClock),
                self.options.config,
            ),
        };
        let trigger: Arc<dyn Projection> = if self.options.twice {
            Arc::new(Twice(FulfillmentTrigger::handing_to(runner.handoff())))
        } else {
            Arc::new(FulfillmentTrigger::handing_to(runner.handoff()))
        };
        let worker_config = WorkerConfig {
            poll_interval: Duration::from_millis(50),
            heartbeat_interval: Duration::from_millis(200),
            ..WorkerConfig::default()
        };
        let trigger = Worker::register(pool.clone(), trigger, worker_config)
            .await
            .expect("trigger");
        let (trigger_wakeup, runner_wakeup) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let tasks = vec![
            tokio::spawn(trigger.run(trigger_wakeup.clone(), stopped.clone())),
            tokio::spawn(runner.run(runner_wakeup.clone(), stopped)),
            tokio::spawn(listen_for_events(
                pool.clone(),
                infra::channels::EVENTS,
                vec![trigger_wakeup],
            )),
            tokio::spawn(listen_for(
                pool.clone(),
                infra::channels::CHECKPOINTS,
                write_side::sagas::trigger::wakes_runners,
                vec![runner_wakeup],
            )),
        ];
        self.process = Some(Process { pool, stop, tasks });
    }

    /// Kills the saga process: its tasks stop wherever they are, its connections close.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            for task in &process.tasks {
                task.abort();
            }
            for task in process.tasks {
                let _ = task.await;
            }
            process.pool.close().await;
        }
    }

    /// Stops the process gracefully.
    pub async fn stop(mut self) {
        if let Some(process) = self.process.take() {
            let _ = process.stop.send(true);
            let mut tasks = process.tasks.into_iter();
            // The trigger and the runner finish their step; the listeners never end by themselves.
            for task in tasks.by_ref().take(2) {
                let _ = task.await;
            }
            for task in tasks {
                task.abort();
                let _ = task.await;
            }
            process.pool.close().await;
        }
    }

    pub async fn register(&self, sku: &str, stock: i64, price: i64) {
        let body = json!({"sku": sku, "name": format!("Item {sku}"),
                          "unit_price": {"amount_minor": price, "currency": "EUR"}, "initial_stock": stock});
        let response = self.app.post_json("/inventory", &body).await;
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    }

    pub async fn place(&self, lines: &[(&str, i64)], token: &str) -> String {
        let body = json!({
            "customer_id": "7d9f2b1e-0c4a-4f7e-9a57-2f4c1d3e5b6a",
            "lines": lines.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
            "payment": {"card_token": token},
        });
        let response = self.app.post_json("/orders", &body).await;
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        let body: Value = response.json().await.expect("json");
        body["order_id"].as_str().expect("order id").to_owned()
    }

    /// Cancels an order as its customer.
    pub async fn cancel(&self, order_id: &str) {
        let response = self
            .app
            .post_json(
                &format!("/orders/{order_id}/cancel"),
                &json!({"reason": "customer_request"}),
            )
            .await;
        assert_eq!(
            response.status(),
            reqwest::StatusCode::OK,
            "cancelling {order_id}"
        );
    }

    pub async fn stage(&self, order_id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT stage FROM fulfillment_sagas WHERE order_id = $1::uuid")
            .bind(order_id)
            .fetch_optional(&self.app.pool)
            .await
            .expect("read the saga")
    }

    /// Waits until the order's saga is in one of `stages`.
    pub async fn wait_for_stage(
        &self,
        order_id: &str,
        stages: &[&str],
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(stage) = self.stage(order_id).await
                && stages.contains(&stage.as_str())
            {
                return stage;
            }
            assert!(
                Instant::now() < deadline,
                "saga of {order_id} is {:?}, not in {stages:?}",
                self.stage(order_id).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every saga is settled (confirmed, completed, cancelled or failed) and
    /// there are `expected` of them.
    pub async fn wait_until_settled(&self, expected: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (total, settled): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE stage IN ('confirmed', 'completed', 'cancelled', 'failed'))
                   FROM fulfillment_sagas",
            )
            .fetch_one(&self.app.pool)
            .await
            .expect("count sagas");
            if total == expected && settled == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{settled} of {total} sagas settled ({expected} expected)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn order(&self, order_id: &str) -> OrderState {
        let mut conn = self.app.pool.acquire().await.expect("connection");
        let loaded = load::<Order>(&mut conn, order_id, None, &[])
            .await
            .expect("load the order");
        loaded.aggregate.state().clone()
    }

    /// (on hand, reserved) of an item.
    pub async fn stock(&self, sku: &str) -> (u64, u64) {
        let mut conn = self.app.pool.acquire().await.expect("connection");
        let loaded = load::<InventoryItem>(&mut conn, sku, None, &[])
            .await
            .expect("load the item");
        match loaded.aggregate.state() {
            InventoryState::Registered(levels) => (levels.on_hand(), levels.reserved()),
            InventoryState::Unregistered => panic!("{sku} is not registered"),
        }
    }

    /// Every money movement at the gateway.
    pub async fn ledger(&self) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/ledger", self.simulator))
            .await
            .expect("ledger")
            .json()
            .await
            .expect("ledger json");
        body["entries"].as_array().cloned().unwrap_or_default()
    }

    pub async fn ledger_kinds(&self, order_id: &str) -> Vec<String> {
        self.ledger()
            .await
            .into_iter()
            .filter(|entry| entry["order_id"] == order_id)
            .map(|entry| entry["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub async fn events_of(&self, aggregate_type: &str, aggregate_id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT event_type FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.app.pool)
        .await
        .expect("read events")
    }
}
