//! The load generator: drives the running system through its HTTP APIs (the command API and
//! the query API, as clients would) and reads timings that only the database knows (when a
//! reservation was committed) from the event log.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use infra::event_store::{Checkpoint, ConsistencyToken};
use rand::Rng;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::report::{Row, Target};

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runs: usize,
    pub seconds: f64,
    pub concurrencies: Vec<u32>,
    pub hot_concurrency: u32,
    pub read_concurrency: u32,
    pub saga_rate: f64,
    pub saga_seconds: f64,
    /// Orders per closed-loop run at most (every order starts a saga the system must
    /// finish before the next run): bounds how long a run of the benchmark takes.
    pub max_orders: Option<u64>,
    pub settle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Load {
    client: reqwest::Client,
    write: String,
    read: String,
    pool: PgPool,
    skus: Arc<Vec<String>>,
    hot_sku: String,
}

/// One closed-loop run.
#[derive(Debug, Default)]
struct Run {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// What each successful request returned (order ids), for later cases.
    outputs: Vec<String>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` workers each send requests back to back until `duration` is over or, when
/// `max_requests` is set, that many requests were sent.
async fn closed_loop<F, Fut>(
    concurrency: u32,
    duration: Duration,
    max_requests: Option<u64>,
    request: F,
) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<String>> + Send,
{
    let request = Arc::new(request);
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let request = request.clone();
        let sent = sent.clone();
        workers.spawn(async move {
            let mut run = Run::default();
            while Instant::now() < deadline
                && max_requests.is_none_or(|max| sent.fetch_add(1, Ordering::Relaxed) < max)
            {
                let sent = Instant::now();
                match request().await {
                    Ok(output) => {
                        run.ok += 1;
                        run.latencies.push(sent.elapsed());
                        run.outputs.push(output);
                    }
                    Err(err) => {
                        run.errors += 1;
                        run.first_error.get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            }
            run
        });
    }
    let mut total = Run::default();
    while let Some(done) = workers.join_next().await {
        let Ok(run) = done else { continue };
        total.ok += run.ok;
        total.errors += run.errors;
        if total.first_error.is_none() {
            total.first_error = run.first_error;
        }
        total.latencies.extend(run.latencies);
        total.outputs.extend(run.outputs);
    }
    total.elapsed = start.elapsed();
    total
}

fn error_note(errors: u64, first: &Option<String>) -> Option<String> {
    (errors > 0).then(|| {
        format!(
            "{errors} failed requests, first: {}",
            first.as_deref().unwrap_or("?")
        )
    })
}

impl Load {
    pub async fn new(write: &str, read: &str, pool: PgPool) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()?;
        let tag = Uuid::new_v4().simple().to_string()[..8].to_uppercase();
        let load = Self {
            client,
            write: write.trim_end_matches('/').to_owned(),
            read: read.trim_end_matches('/').to_owned(),
            pool,
            skus: Arc::new((0..100).map(|i| format!("B{tag}-{i}")).collect()),
            hot_sku: format!("B{tag}-HOT"),
        };
        for sku in load.skus.iter().chain(std::iter::once(&load.hot_sku)) {
            load.register(sku).await?;
        }
        Ok(load)
    }

    async fn register(&self, sku: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{}/inventory", self.write))
            .json(&json!({
                "sku": sku,
                "name": format!("Benchmark item {sku}"),
                "unit_price": {"amount_minor": 1000, "currency": "EUR"},
                "initial_stock": 1_000_000_000u32,
            }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "registering {sku}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        Ok(())
    }

    /// Places an order for one unit of `sku`; returns the order id and the consistency token.
    async fn place(
        client: &reqwest::Client,
        write: &str,
        sku: &str,
    ) -> anyhow::Result<(String, String)> {
        let response = client
            .post(format!("{write}/orders"))
            .json(&json!({
                "customer_id": Uuid::new_v4(),
                "lines": [{"sku": sku, "quantity": 1}],
                "payment": {"card_token": "tok_visa"},
            }))
            .send()
            .await?;
        let status = response.status();
        if status != reqwest::StatusCode::CREATED {
            bail!("POST /orders: {status} {}", response.text().await?);
        }
        let body: Value = response.json().await?;
        let id = body["order_id"]
            .as_str()
            .context("no order_id in the response")?
            .to_owned();
        let token = body["consistency_token"]
            .as_str()
            .context("no consistency_token in the response")?
            .to_owned();
        Ok((id, token))
    }

    /// Waits until the system is idle: no saga has a step due, the log's head has not moved
    /// for half a second, and every projection has applied it.
    pub async fn settle(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_head = -1i64;
        let mut still_since = Instant::now();
        loop {
            let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
                .fetch_one(&self.pool)
                .await?;
            let busy_sagas: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM fulfillment_sagas WHERE due_at IS NOT NULL)",
            )
            .fetch_one(&self.pool)
            .await?;
            let projections: Value = self
                .client
                .get(format!("{}/projections", self.read))
                .send()
                .await?
                .json()
                .await?;
            let behind = projections["projections"]
                .as_array()
                .or_else(|| projections.as_array())
                .map_or(0, |list| {
                    list.iter()
                        .filter(|p| p["lag_events"].as_i64().unwrap_or(0) > 0)
                        .count()
                });
            if head != last_head {
                last_head = head;
                still_since = Instant::now();
            }
            if !busy_sagas && behind == 0 && still_since.elapsed() >= Duration::from_millis(500) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the system did not settle within {timeout:?}: sagas busy: {busy_sagas}, {behind} projections behind"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Case 1: orders placed on distinct orders (and spread over 100 SKUs), closed loop,
    /// the system settling between runs.
    pub async fn place_orders(
        &self,
        s: &Settings,
        order_ids: &mut Vec<String>,
    ) -> anyhow::Result<Vec<Row>> {
        self.place_orders_as("1. place orders", s, true, order_ids)
            .await
    }

    /// Case 1 against the command API running alone (no saga worker, no projector, no
    /// query API): what the command path itself sustains. Nothing to settle between runs.
    pub async fn place_orders_alone(&self, s: &Settings) -> anyhow::Result<Vec<Row>> {
        self.place_orders_as(
            "1b. place orders, command API alone (no saga worker, projector or query API running)",
            s,
            false,
            &mut Vec::new(),
        )
        .await
    }

    async fn place_orders_as(
        &self,
        case: &str,
        s: &Settings,
        settle: bool,
        order_ids: &mut Vec<String>,
    ) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        for &c in &s.concurrencies {
            let mut rates = Vec::new();
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            for _ in 0..s.runs {
                let (client, write, skus) =
                    (self.client.clone(), self.write.clone(), self.skus.clone());
                let run = closed_loop(
                    c,
                    Duration::from_secs_f64(s.seconds),
                    s.max_orders,
                    move || {
                        let (client, write, skus) = (client.clone(), write.clone(), skus.clone());
                        async move {
                            let sku = &skus[rand::rng().random_range(0..skus.len())];
                            Ok(Self::place(&client, &write, sku).await?.0)
                        }
                    },
                )
                .await;
                eprintln!("  {case} c={c}: {:.0} orders/s", run.rate());
                rates.push(run.rate());
                latencies.extend(run.latencies);
                order_ids.extend(run.outputs);
                errors += run.errors;
                first_error = first_error.or(run.first_error);
                if settle {
                    self.settle(s.settle_timeout).await?;
                }
            }
            let mut row = Row::measured(case, "ops/s", &rates, &mut latencies)
                .concurrency(c)
                .baseline(format!("pgbench.insert.c{c}"));
            if c == 32 {
                row = row.target(Target {
                    min_ratio: Some(0.6),
                    ..Target::default()
                });
            }
            if let Some(note) = error_note(errors, &first_error) {
                row = row.note(note);
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// Case 2: every order reserves the same SKU. Orders are placed closed loop; the saga
    /// reserves them one after another on the one inventory item. The rate is reservations
    /// committed per second on that item (from the log), the latency placed -> reserved.
    pub async fn hot_sku(&self, s: &Settings) -> anyhow::Result<Row> {
        let mut rates = Vec::new();
        let mut latencies = Vec::new();
        let mut placed_rates = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        for _ in 0..s.runs {
            let (client, write, sku) = (
                self.client.clone(),
                self.write.clone(),
                self.hot_sku.clone(),
            );
            let run = closed_loop(
                s.hot_concurrency,
                Duration::from_secs_f64(s.seconds),
                s.max_orders,
                move || {
                    let (client, write, sku) = (client.clone(), write.clone(), sku.clone());
                    async move { Ok(Self::place(&client, &write, &sku).await?.0) }
                },
            )
            .await;
            placed_rates.push(run.rate());
            errors += run.errors;
            first_error = first_error.or(run.first_error.clone());
            self.settle(s.settle_timeout).await?;
            let timings: Vec<(f64, f64)> = sqlx::query_as(
                "SELECT extract(epoch FROM o.recorded_at)::float8,
                        extract(epoch FROM r.recorded_at)::float8
                   FROM events o
                   JOIN events r
                     ON r.aggregate_type = 'inventory_item' AND r.aggregate_id = $2
                    AND r.event_type = 'StockReserved'
                    AND r.payload -> 'Reserved' ->> 'order_id' = o.aggregate_id
                  WHERE o.aggregate_type = 'order' AND o.sequence = 1
                    AND o.aggregate_id = ANY($1)",
            )
            .bind(&run.outputs)
            .bind(&self.hot_sku)
            .fetch_all(&self.pool)
            .await?;
            if timings.len() != run.outputs.len() {
                bail!(
                    "hot SKU: {} orders placed but {} reserved",
                    run.outputs.len(),
                    timings.len()
                );
            }
            let first = timings.iter().map(|t| t.1).fold(f64::MAX, f64::min);
            let last = timings.iter().map(|t| t.1).fold(f64::MIN, f64::max);
            let rate = if last > first {
                (timings.len() - 1) as f64 / (last - first)
            } else {
                0.0
            };
            eprintln!(
                "  hot SKU: {:.0} orders/s placed, {rate:.0} reservations/s",
                run.rate()
            );
            rates.push(rate);
            latencies.extend(
                timings.iter().map(|(placed, reserved)| {
                    Duration::from_secs_f64((reserved - placed).max(0.0))
                }),
            );
        }
        let (placed, _, _) = crate::report::spread(&placed_rates);
        let mut note = format!(
            "reservations/s on one item; placed {placed:.0} orders/s; latency placed -> reserved"
        );
        if let Some(e) = error_note(errors, &first_error) {
            note.push_str("; ");
            note.push_str(&e);
        }
        Ok(
            Row::measured("2. hot SKU reserved", "ops/s", &rates, &mut latencies)
                .concurrency(s.hot_concurrency)
                .target(Target {
                    min_value: Some(1000.0),
                    ..Target::default()
                })
                .note(note),
        )
    }

    /// Cases 3 and 4: orders placed open loop at a fixed rate. After each POST the client
    /// reads the order from the query API with the consistency token (its latency is the
    /// projection lag a client sees). One follower of the global log (as any service would
    /// follow it) hands each order the position of its `OrderConfirmed` event; the client
    /// then reads the order with that position as its consistency token and checks that it
    /// shows `confirmed`. End to end: POST sent -> that read answered. One read per order
    /// instead of polling, so the measurement does not load the services it measures.
    pub async fn saga(&self, s: &Settings) -> anyhow::Result<Vec<Row>> {
        let mut confirmed_rates = Vec::new();
        let mut placed_rates = Vec::new();
        let mut end_to_end = Vec::new();
        let mut lags = Vec::new();
        let mut failures = 0u64;
        let mut first_failure = None;
        for _ in 0..s.runs {
            let n = (s.saga_rate * s.saga_seconds).round() as u64;
            let outcomes = Arc::new(std::sync::Mutex::new(Outcomes::default()));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let follower = tokio::spawn(follow_outcomes(
                self.pool.clone(),
                outcomes.clone(),
                stop.clone(),
            ));
            let start = tokio::time::Instant::now();
            let mut tasks = JoinSet::new();
            for i in 0..n {
                let at = start + Duration::from_secs_f64(i as f64 / s.saga_rate);
                let (client, write, read, skus, outcomes) = (
                    self.client.clone(),
                    self.write.clone(),
                    self.read.clone(),
                    self.skus.clone(),
                    outcomes.clone(),
                );
                tasks.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let sent = Instant::now();
                    let sku = skus[i as usize % skus.len()].clone();
                    let (id, token) = Self::place(&client, &write, &sku).await?;
                    let acked = Instant::now();
                    let outcome = Outcomes::wait_for(&outcomes, &id);
                    let url = format!("{read}/orders/{id}?wait=10s");
                    let first = client
                        .get(&url)
                        .header("X-Consistency-Token", token)
                        .send()
                        .await?;
                    if first.status() != reqwest::StatusCode::OK {
                        bail!("GET {url} with its token: {}", first.status());
                    }
                    let lag = acked.elapsed();
                    let confirmed_at =
                        match tokio::time::timeout(Duration::from_secs(30), outcome).await {
                            Ok(Ok(Ok(position))) => position,
                            Ok(Ok(Err(at))) => {
                                bail!("order {id} was cancelled (position {})", at.position)
                            }
                            Ok(Err(_)) => bail!("the log follower stopped"),
                            Err(_) => bail!("order {id} not confirmed after 30 s"),
                        };
                    let read = client
                        .get(&url)
                        .header(
                            "X-Consistency-Token",
                            ConsistencyToken {
                                position: confirmed_at.position,
                                transaction_id: Some(confirmed_at.transaction_id),
                            }
                            .to_string(),
                        )
                        .send()
                        .await?;
                    if read.status() != reqwest::StatusCode::OK {
                        bail!("GET {url} with the confirmation's token: {}", read.status());
                    }
                    let body: Value = read.json().await?;
                    if body["status"] != "confirmed" {
                        bail!(
                            "order {id} read after its confirmation shows {}",
                            body["status"]
                        );
                    }
                    Ok::<_, anyhow::Error>((acked - sent, lag, sent.elapsed(), Instant::now()))
                });
            }
            let mut confirmed = 0u64;
            let mut last_confirmed = Instant::now();
            let mut last_ack = Duration::ZERO;
            while let Some(done) = tasks.join_next().await {
                match done.context("a load task panicked")? {
                    Ok((ack, lag, e2e, at)) => {
                        confirmed += 1;
                        lags.push(lag);
                        end_to_end.push(e2e);
                        last_confirmed = last_confirmed.max(at);
                        last_ack = last_ack.max(ack);
                    }
                    Err(err) => {
                        failures += 1;
                        first_failure.get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            follower.await.context("the log follower panicked")??;
            let elapsed = (last_confirmed - start.into_std()).as_secs_f64();
            let rate = confirmed as f64 / elapsed;
            eprintln!(
                "  saga at {:.0}/s: {confirmed} confirmed, {rate:.0} confirmed/s",
                s.saga_rate
            );
            confirmed_rates.push(rate);
            placed_rates.push(n as f64 / s.saga_seconds);
            self.settle(s.settle_timeout).await?;
        }
        let mut saga_note = format!(
            "offered {:.0} orders/s for {:.1} s; POST -> `confirmed` read from the query API with the place of OrderConfirmed in the log as consistency token",
            s.saga_rate, s.saga_seconds
        );
        if let Some(e) = error_note(failures, &first_failure) {
            saga_note.push_str("; ");
            saga_note.push_str(&e);
        }
        Ok(vec![
            Row::measured(
                "3. full saga, orders confirmed",
                "ops/s",
                &confirmed_rates,
                &mut end_to_end,
            )
            .target(Target {
                max_p99_ms: Some(200.0),
                ..Target::default()
            })
            .note(saga_note),
            Row::measured(
                "4. projection lag under load",
                "ops/s",
                &placed_rates,
                &mut lags,
            )
            .target(Target {
                max_p99_ms: Some(50.0),
                ..Target::default()
            })
            .note(
                "commands offered per second; lag: POST acknowledged -> read with its token answered",
            ),
        ])
    }

    /// Case 6: orders read by id from the query API. With [`ReadsFrom::Cache`] (what
    /// clients get) every order is read once first, untimed, so the runs measure the query
    /// API with its order cache warm, as the pgbench baseline runs with the table in shared
    /// buffers; [`ReadsFrom::Database`] sends `Cache-Control: no-cache`, so every read is a
    /// query.
    pub async fn reads(
        &self,
        s: &Settings,
        order_ids: &[String],
        from: ReadsFrom,
    ) -> anyhow::Result<Row> {
        if order_ids.is_empty() {
            bail!("no orders to read");
        }
        let ids = Arc::new(order_ids.to_vec());
        let c = s.read_concurrency;
        let no_cache = from == ReadsFrom::Database;
        let read_one = {
            let (client, read) = (self.client.clone(), self.read.clone());
            move |id: String| {
                let (client, read) = (client.clone(), read.clone());
                async move {
                    let mut request = client.get(format!("{read}/orders/{id}"));
                    if no_cache {
                        request = request.header("cache-control", "no-cache");
                    }
                    let response = request.send().await?;
                    if response.status() != reqwest::StatusCode::OK {
                        bail!("GET /orders/{id}: {}", response.status());
                    }
                    response.bytes().await?;
                    Ok(String::new())
                }
            }
        };
        if from == ReadsFrom::Cache {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (warm_ids, read_one, next) = (ids.clone(), read_one.clone(), next.clone());
            let warm = closed_loop(
                c,
                Duration::from_secs(60),
                Some(ids.len() as u64),
                move || {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    read_one(warm_ids[i % warm_ids.len()].clone())
                },
            )
            .await;
            if let Some(error) = warm.first_error {
                bail!("warming the order cache: {error}");
            }
        }
        let mut rates = Vec::new();
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        for _ in 0..s.runs {
            let (ids, read_one) = (ids.clone(), read_one.clone());
            let run = closed_loop(c, Duration::from_secs_f64(s.seconds), None, move || {
                read_one(ids[rand::rng().random_range(0..ids.len())].clone())
            })
            .await;
            eprintln!("  reads ({from:?}) c={c}: {:.0} reads/s", run.rate());
            rates.push(run.rate());
            latencies.extend(run.latencies);
            errors += run.errors;
            first_error = first_error.or(run.first_error);
        }
        let name = match from {
            ReadsFrom::Cache => "6. query API: order by id",
            ReadsFrom::Database => {
                "6b. query API: order by id, `Cache-Control: no-cache` (every read from the database)"
            }
        };
        let mut row = Row::measured(name, "ops/s", &rates, &mut latencies)
            .concurrency(c)
            .baseline(format!("pgbench.select.c{c}"));
        if from == ReadsFrom::Cache {
            row = row.target(Target {
                min_ratio: Some(0.5),
                max_p99_ms: Some(5.0),
                ..Target::default()
            });
        }
        let mut note = match from {
            ReadsFrom::Cache => format!("{} distinct orders, each read once before", ids.len()),
            ReadsFrom::Database => format!("{} distinct orders", ids.len()),
        };
        if let Some(e) = error_note(errors, &first_error) {
            note.push_str("; ");
            note.push_str(&e);
        }
        row = row.note(note);
        Ok(row)
    }
}

/// Where case 6's reads are answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadsFrom {
    /// As clients read: the query API's order cache, warmed first.
    Cache,
    /// `Cache-Control: no-cache`: the database, every time.
    Database,
}

/// Case 7: each service's peak resident set (VmHWM) since it started.
pub fn peak_rss(services: &[(String, u32)]) -> anyhow::Result<Vec<Row>> {
    services
        .iter()
        .map(|(name, pid)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("{name} (pid {pid}) is not running"))?;
            let kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .context("no VmHWM in /proc/PID/status")?;
            let mb = kib / 1024.0;
            Ok(
                Row::measured(&format!("7. peak RSS: {name}"), "MB", &[mb], &mut []).target(
                    Target {
                        max_value: Some(64.0),
                        ..Target::default()
                    },
                ),
            )
        })
        .collect()
}

/// What the log follower saw of each order: where its `OrderConfirmed` (`Ok`) or
/// `OrderCancelled` (`Err`) is in the log, and the clients waiting for one.
#[derive(Default)]
struct Outcomes {
    seen: HashMap<String, Result<Checkpoint, Checkpoint>>,
    waiting: HashMap<String, oneshot::Sender<Result<Checkpoint, Checkpoint>>>,
}

impl Outcomes {
    fn wait_for(
        outcomes: &std::sync::Mutex<Self>,
        order_id: &str,
    ) -> oneshot::Receiver<Result<Checkpoint, Checkpoint>> {
        let (sender, receiver) = oneshot::channel();
        let mut outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
        match outcomes.seen.remove(order_id) {
            Some(outcome) => {
                let _ = sender.send(outcome);
            }
            None => {
                outcomes.waiting.insert(order_id.to_owned(), sender);
            }
        }
        receiver
    }

    fn saw(&mut self, order_id: &str, outcome: Result<Checkpoint, Checkpoint>) {
        match self.waiting.remove(order_id) {
            Some(sender) => {
                let _ = sender.send(outcome);
            }
            None => {
                self.seen.insert(order_id.to_owned(), outcome);
            }
        }
    }
}

/// Follows the global log from its current end (gap-safe, with the event store's reader)
/// until `stop`, handing orders their confirmations and cancellations.
async fn follow_outcomes(
    pool: PgPool,
    outcomes: Arc<std::sync::Mutex<Outcomes>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let log = infra::event_store::EventLog::new(pool.clone());
    let last: Option<(String, i64)> = sqlx::query_as(
        "SELECT transaction_id::text, position FROM events
          ORDER BY transaction_id DESC, position DESC LIMIT 1",
    )
    .fetch_optional(&pool)
    .await?;
    let mut checkpoint = match last {
        Some((transaction_id, position)) => Checkpoint {
            transaction_id: transaction_id.parse()?,
            position,
        },
        None => Checkpoint::default(),
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let events = log.read_after(checkpoint, 1000).await?;
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let mut outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
        for event in &events {
            match (event.aggregate_type.as_str(), event.event_type.as_str()) {
                ("order", "OrderConfirmed") => {
                    outcomes.saw(&event.aggregate_id, Ok(event.checkpoint()))
                }
                ("order", "OrderCancelled") => {
                    outcomes.saw(&event.aggregate_id, Err(event.checkpoint()))
                }
                _ => {}
            }
        }
        if let Some(event) = events.last() {
            checkpoint = event.checkpoint();
        }
    }
    Ok(())
}
