//! The relay and the consumer runtime against a real Kafka-protocol broker (nisshi, started
//! by `scripts/test` and named by `KAFKA_BROKERS`). Each test publishes under topics of its
//! own (a random prefix) and uses consumer groups of its own, so tests run in parallel on
//! one broker. The broker-freezing test starts a broker of its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infra::commands::{CommandOptions, ExecutorPolicy};
use infra::config::KafkaSettings;
use infra::event_store::{Checkpoint, EventLog, StoredEvent};
use infra::kafka::consumer::{
    ConsumerConfig, ConsumerStats, HandlerError, InboxConsumer, InboxHandler, inbox_count,
};
use infra::kafka::relay::{Relay, RelayConfig, RelayError, RelayOutcome};
use infra::kafka::{Envelope, all_topics, ensure_topics, topic_for};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use sqlx::{PgConnection, PgPool};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::helpers::{inventory, register, restock};

/// The shared broker. Without one these tests fail rather than pass vacuously.
fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "the Kafka tests need a Kafka-protocol broker: run scripts/test, or set KAFKA_BROKERS"
        )
    })
}

fn settings(brokers: String) -> KafkaSettings {
    KafkaSettings {
        brokers,
        topic_prefix: format!("it{}.", &Uuid::new_v4().simple().to_string()[..10]),
        partitions: 3,
        message_timeout: Duration::from_secs(3),
        relay_batch_size: 100,
    }
}

fn relay_config() -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    }
}

/// Writes `per_item` restocks to each of `items` inventory items, the items in parallel,
/// so commits interleave and land out of position order.
async fn write_events(pool: &PgPool, tag: &str, items: usize, per_item: u32) -> usize {
    let writers: Vec<_> = (0..items)
        .map(|i| {
            let pool = pool.clone();
            let sku = format!("{tag}-{i}");
            tokio::spawn(async move {
                let executor = inventory(&pool, ExecutorPolicy::without_snapshots());
                executor
                    .execute(&sku, register(&sku, 1), CommandOptions::default())
                    .await
                    .expect("register");
                for _ in 0..per_item {
                    executor
                        .execute(&sku, restock(1), CommandOptions::default())
                        .await
                        .expect("restock");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    items * (per_item as usize + 1)
}

async fn all_events(pool: &PgPool) -> Vec<StoredEvent> {
    let log = EventLog::new(pool.clone());
    let head = log.head().await.expect("head");
    log.read_positions(0, head).await.expect("read every event")
}

async fn log_end(pool: &PgPool) -> Checkpoint {
    all_events(pool)
        .await
        .iter()
        .map(StoredEvent::checkpoint)
        .max_by_key(|c| (c.transaction_id, c.position))
        .unwrap_or(Checkpoint::START)
}

/// Waits until the relay's checkpoint is at the end of the log.
async fn wait_for_relay(pool: &PgPool, name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let end = log_end(pool).await;
        let at = Relay::checkpoint(pool, name).await.expect("checkpoint");
        if at == end {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the relay stopped at {at:?}, short of {end:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the relay until its checkpoint is at the end of the log, and returns the errors it
/// met on the way. A read comes back short while a transaction anywhere in the cluster is
/// open (other tests run in parallel), so `Idle` alone does not mean everything went out.
async fn publish_to_head(relay: &mut Relay, pool: &PgPool, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut errors = Vec::new();
    loop {
        match relay.run_once().await {
            Ok(RelayOutcome::Idle) => {
                if Relay::checkpoint(pool, "kafka").await.expect("checkpoint")
                    == log_end(pool).await
                {
                    return errors;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(_) => {}
            Err(err) => errors.push(format!("{err:?}")),
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not reach the end of the log: {} failures, last {:?}",
            errors.len(),
            errors.last()
        );
    }
}

/// A consumer that records every event it is given, in arrival order.
#[derive(Debug, Clone)]
struct Recorder {
    name: String,
}

impl Recorder {
    async fn new(pool: &PgPool, name: &str) -> Self {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS recorded (
                 arrival bigserial PRIMARY KEY, consumer text NOT NULL, event_id uuid NOT NULL,
                 aggregate_id text NOT NULL, sequence bigint NOT NULL)",
        )
        .execute(pool)
        .await
        .expect("create the recording table");
        Self {
            name: name.to_owned(),
        }
    }
}

#[async_trait]
impl InboxHandler for Recorder {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        for event in events {
            sqlx::query("INSERT INTO recorded (consumer, event_id, aggregate_id, sequence) VALUES ($1, $2, $3, $4)")
                .bind(&self.name)
                .bind(event.event_id)
                .bind(&event.aggregate_id)
                .bind(event.sequence)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// Checks what `consumer` recorded: every event of the log exactly once, and each
/// aggregate's events in order.
async fn assert_applied_once_in_order(pool: &PgPool, consumer: &str) {
    let expected: HashSet<Uuid> = all_events(pool).await.iter().map(|e| e.event_id).collect();
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT event_id, aggregate_id, sequence FROM recorded WHERE consumer = $1 ORDER BY arrival",
    )
    .bind(consumer)
    .fetch_all(pool)
    .await
    .expect("read the recording");
    let applied: HashSet<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(applied.len(), rows.len(), "an event was applied twice");
    assert_eq!(applied, expected, "the events applied are not the log's");
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, aggregate, sequence) in &rows {
        let previous = last.insert(aggregate, *sequence).unwrap_or(0);
        assert_eq!(
            *sequence,
            previous + 1,
            "{aggregate}: event {sequence} arrived after {previous}"
        );
    }
}

/// Runs `consumer` until its inbox holds `expected` events.
async fn consume_until<H: InboxHandler>(
    pool: &PgPool,
    consumer: InboxConsumer<H>,
    expected: i64,
) -> Arc<ConsumerStats> {
    let name = consumer.name().to_owned();
    let stats = consumer.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(consumer.run(stopped));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let count = inbox_count(pool, &name).await.expect("inbox count");
        if count >= expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} applied {count} of {expected} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).expect("stop");
    task.await.expect("consumer task").expect("consumer run");
    stats
}

fn consumer_config(settings: &KafkaSettings) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 50,
        max_backoff: Duration::from_millis(500),
        ..ConsumerConfig::all_topics(settings)
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn every_event_arrives_once_keyed_in_per_aggregate_order_with_its_headers(pool: PgPool) {
    let settings = settings(brokers());
    ensure_topics(&settings).await.expect("create topics");
    let relay = Relay::new(pool.clone(), settings.clone(), "kafka", relay_config()).expect("relay");
    let (stop, stopped) = watch::channel(false);
    let relay_task = tokio::spawn(relay.run(Arc::new(Notify::new()), stopped));
    // Written while the relay runs, by parallel writers.
    let total = write_events(&pool, "A", 12, 30).await;
    wait_for_relay(&pool, "kafka", Duration::from_secs(60)).await;
    stop.send(true).expect("stop");
    relay_task.await.expect("relay");

    // What is on the topics, read raw.
    let raw: StreamConsumer = infra::kafka::client_config(&settings)
        .set("group.id", format!("{}raw", settings.topic_prefix))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw consumer");
    let topics = all_topics(&settings.topic_prefix);
    raw.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("subscribe");
    let events: HashMap<Uuid, StoredEvent> = all_events(&pool)
        .await
        .into_iter()
        .map(|e| (e.event_id, e))
        .collect();
    assert_eq!(events.len(), total);
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut per_key: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    while seen.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(60), raw.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} events arrived", seen.len()))
            .expect("receive");
        let envelope: Envelope =
            serde_json::from_slice(message.payload().expect("a value")).expect("an envelope");
        let stored = &events[&envelope.event_id];
        assert_eq!(envelope, Envelope::from(stored));
        assert_eq!(
            Some(message.topic()),
            topic_for(&settings.topic_prefix, &stored.aggregate_type).as_deref()
        );
        assert_eq!(message.key(), Some(stored.aggregate_id.as_bytes()));
        let headers: HashMap<&str, &[u8]> = message
            .headers()
            .expect("headers")
            .iter()
            .filter_map(|h| h.value.map(|v| (h.key, v)))
            .collect();
        assert_eq!(headers["event_id"], stored.event_id.to_string().as_bytes());
        assert_eq!(headers["event_type"], stored.event_type.as_bytes());
        assert_eq!(headers["traceparent"], envelope.traceparent().as_bytes());
        assert!(
            seen.insert(envelope.event_id),
            "event {} published twice",
            envelope.event_id
        );
        // One partition per key, and the key's events in sequence.
        let (partition, sequence) = per_key
            .entry(stored.aggregate_id.clone())
            .or_insert((message.partition(), 0));
        assert_eq!(
            *partition,
            message.partition(),
            "{} moved partition",
            stored.aggregate_id
        );
        assert_eq!(
            stored.sequence,
            *sequence + 1,
            "{} out of order",
            stored.aggregate_id
        );
        *sequence = stored.sequence;
    }
    drop(raw);
    let checkpoint: (i64,) =
        sqlx::query_as("SELECT events_published FROM relay_checkpoints WHERE name = 'kafka'")
            .fetch_one(&pool)
            .await
            .expect("relay state");
    assert_eq!(checkpoint.0, total as i64);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_relay_killed_mid_stream_loses_nothing_and_consumers_apply_each_event_once(pool: PgPool) {
    let settings = settings(brokers());
    ensure_topics(&settings).await.expect("create topics");
    let spawn_relay = || relay_process(&pool, &settings);
    let mut relay = spawn_relay().await;
    // Writers keep going while the relay dies and comes back.
    let writing = {
        let pool = pool.clone();
        tokio::spawn(async move { write_events(&pool, "K", 10, 150).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let published: Option<i64> = sqlx::query_scalar(
            "SELECT events_published FROM relay_checkpoints WHERE name = 'kafka'",
        )
        .fetch_optional(&pool)
        .await
        .expect("relay state");
        if published.unwrap_or(0) >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "the relay published nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill().await.expect("kill -9 the relay");
    let at_kill = Relay::checkpoint(&pool, "kafka").await.expect("checkpoint");
    let mut relay = spawn_relay().await;
    let total = writing.await.expect("writers");
    wait_for_relay(&pool, "kafka", Duration::from_secs(90)).await;
    relay.kill().await.expect("stop the relay");
    assert_ne!(
        at_kill,
        log_end(&pool).await,
        "the relay was killed after the end: nothing was tested"
    );

    let recorder = Recorder::new(&pool, "recorder").await;
    let consumer = InboxConsumer::new(
        pool.clone(),
        &settings,
        recorder,
        consumer_config(&settings),
    )
    .expect("consumer");
    consume_until(&pool, consumer, total as i64).await;
    assert_applied_once_in_order(&pool, "recorder").await;
}

/// The relay binary on this test's database, publishing under the test's prefix.
async fn relay_process(pool: &PgPool, settings: &KafkaSettings) -> Child {
    let options = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    Command::new(env!("CARGO_BIN_EXE_kafka-relay"))
        .env("DATABASE_URL", url)
        .env("DATABASE_MIGRATE", "false")
        .env("KAFKA_BROKERS", &settings.brokers)
        .env("KAFKA_TOPIC_PREFIX", &settings.topic_prefix)
        .env("KAFKA_RELAY_BATCH_SIZE", "50")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay")
}

/// A broker of the test's own, to freeze.
struct DedicatedBroker {
    child: std::process::Child,
    address: String,
}

impl DedicatedBroker {
    async fn start() -> Self {
        let binary = std::env::var("NISSHI_BIN").unwrap_or_else(|_| {
            format!(
                "{}/.cache/ordo/nisshi/bin/nisshi",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{address}"),
                "--advertised-listener-url",
                &format!("tcp://{address}"),
                "--storage-engine",
                "memory://nisshi/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start the broker {binary} (scripts/test installs it): {err}")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not open {address}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, address }
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for DedicatedBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_frozen_broker_holds_the_checkpoint_back_and_loses_nothing(pool: PgPool) {
    let broker = DedicatedBroker::start().await;
    let settings = KafkaSettings {
        message_timeout: Duration::from_secs(2),
        ..settings(broker.address.clone())
    };
    ensure_topics(&settings).await.expect("create topics");
    let mut relay =
        Relay::new(pool.clone(), settings.clone(), "kafka", relay_config()).expect("relay");
    write_events(&pool, "F", 4, 20).await;
    let errors = publish_to_head(&mut relay, &pool, Duration::from_secs(30)).await;
    assert!(errors.is_empty(), "{errors:?}");
    let before = Relay::checkpoint(&pool, "kafka").await.expect("checkpoint");

    // Frozen for longer than the producer's timeout while more events commit.
    broker.signal("-STOP");
    let total = write_events(&pool, "G", 4, 20).await + 4 * 21;
    // At least one delivery must have failed: a read can come back empty while another
    // test's transaction holds the log's visible end back.
    let frozen_until = Instant::now() + Duration::from_secs(6);
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    while Instant::now() < frozen_until || (failures == 0 && Instant::now() < give_up) {
        match relay.run_once().await {
            Err(RelayError::Delivery { .. }) => failures += 1,
            Ok(RelayOutcome::Idle) => tokio::time::sleep(Duration::from_millis(10)).await,
            other => panic!("while the broker is frozen the relay got {other:?}"),
        }
        assert_eq!(
            Relay::checkpoint(&pool, "kafka").await.expect("checkpoint"),
            before,
            "the checkpoint passed events the broker never confirmed"
        );
    }
    assert!(failures > 0);
    broker.signal("-CONT");

    // The failures while the broker thaws are expected; reaching the end is what counts.
    publish_to_head(&mut relay, &pool, Duration::from_secs(90)).await;

    let recorder = Recorder::new(&pool, "after-freeze").await;
    let consumer = InboxConsumer::new(
        pool.clone(),
        &settings,
        recorder,
        consumer_config(&settings),
    )
    .expect("consumer");
    consume_until(&pool, consumer, total as i64).await;
    assert_applied_once_in_order(&pool, "after-freeze").await;
    drop(broker);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_consumer_killed_between_effect_and_offset_commit_applies_nothing_twice(pool: PgPool) {
    let settings = settings(brokers());
    ensure_topics(&settings).await.expect("create topics");
    let total = write_events(&pool, "C", 6, 40).await;
    let mut relay =
        Relay::new(pool.clone(), settings.clone(), "kafka", relay_config()).expect("relay");
    let errors = publish_to_head(&mut relay, &pool, Duration::from_secs(30)).await;
    assert!(errors.is_empty(), "{errors:?}");

    // The first member dies right after its first transaction committed.
    let crashed_after = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder::new(&pool, "crashy").await;
    let mut config = consumer_config(&settings);
    config.crash_after_effect = Some({
        let crashed_after = crashed_after.clone();
        Arc::new(move |batch: &[Envelope]| {
            crashed_after.store(batch.len(), Ordering::SeqCst);
            true
        })
    });
    let first =
        InboxConsumer::new(pool.clone(), &settings, recorder.clone(), config).expect("consumer");
    let (_stop, stopped) = watch::channel(false);
    let result = tokio::time::timeout(Duration::from_secs(60), first.run(stopped))
        .await
        .expect("the first member received a batch");
    assert!(matches!(
        result,
        Err(infra::kafka::consumer::ConsumerError::Crashed)
    ));
    let applied_before_crash = inbox_count(&pool, "crashy").await.expect("inbox");
    assert_eq!(
        applied_before_crash,
        crashed_after.load(Ordering::SeqCst) as i64
    );
    assert!(applied_before_crash > 0);

    // Its replacement is handed the same messages again (no offset was committed).
    let second = InboxConsumer::new(
        pool.clone(),
        &settings,
        recorder,
        consumer_config(&settings),
    )
    .expect("consumer");
    let stats = consume_until(&pool, second, total as i64).await;
    assert!(
        ConsumerStats::get(&stats.duplicates) >= applied_before_crash as u64,
        "the redelivered batch was not recognised: {stats:?}"
    );
    assert_applied_once_in_order(&pool, "crashy").await;
}
