//! Projections and the notifications service fed from a real Kafka-protocol broker (started
//! by `scripts/test`, named by `KAFKA_BROKERS`). Each test publishes under topics of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::order::CancelReason;
use infra::config::KafkaSettings;
use infra::kafka::consumer::{ConsumerConfig, ConsumerStats, InboxConsumer, inbox_count};
use infra::kafka::ensure_topics;
use infra::kafka::relay::{Relay, RelayConfig, RelayOutcome};
use infra::projection::Outcome;
use projections::kafka_source::KafkaFed;
use projections::notifications::Notifications;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use uuid::Uuid;

use crate::helpers::{Shop, drain, rows, worker};

fn settings() -> KafkaSettings {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "the Kafka tests need a Kafka-protocol broker: run scripts/test, or set KAFKA_BROKERS"
        )
    });
    KafkaSettings {
        brokers,
        topic_prefix: format!("it{}.", &Uuid::new_v4().simple().to_string()[..10]),
        partitions: 3,
        message_timeout: Duration::from_secs(5),
        relay_batch_size: 100,
    }
}

async fn publish_everything(pool: &PgPool, settings: &KafkaSettings) -> i64 {
    let config = RelayConfig {
        batch_size: 100,
        ..RelayConfig::default()
    };
    let mut relay = Relay::new(pool.clone(), settings.clone(), "kafka", config).expect("relay");
    // A read comes back short while a transaction anywhere in the cluster is open (other
    // tests run in parallel): `Idle` counts once the checkpoint is at the log's head.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if relay.run_once().await.expect("publish") == RelayOutcome::Idle {
            let published: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (
                    SELECT 1 FROM events e, relay_checkpoints r
                     WHERE r.name = 'kafka'
                       AND (e.transaction_id, e.position) > (r.checkpoint_tx, r.checkpoint_position))",
            )
            .fetch_one(pool)
            .await
            .expect("compare checkpoint and head");
            if published {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not reach the log's head"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// A pool on a schema of its own in the test's database, migrated: the read-model database
/// of a Kafka-fed service.
async fn schema_pool(pool: &PgPool, schema: &str) -> PgPool {
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(pool)
        .await
        .expect("create the schema");
    let options = (*pool.connect_options())
        .clone()
        .options([("search_path", schema)]);
    let fed = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await
        .expect("connect to the schema");
    infra::db::migrate(&fed).await.expect("migrate the schema");
    fed
}

async fn wait_for_inbox(pool: &PgPool, consumer: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let count = inbox_count(pool, consumer).await.expect("inbox count");
        if count >= expected {
            assert_eq!(
                count, expected,
                "{consumer} recorded events that are not in the log"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{consumer} applied {count} of {expected} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Many orders through every path, written by parallel writers so events of different
/// aggregates interleave.
async fn busy_shop(pool: &PgPool) {
    // One set of executors for all writers, as in one command API: commands on the shared
    // item queue behind each other instead of colliding (four executors of their own
    // exhausted their conflict retries on a busy machine).
    let shop = std::sync::Arc::new(Shop::new(pool));
    shop.history().await;
    shop.item("BULK", 700, 10_000).await;
    let writers: Vec<_> = (0..4u8)
        .map(|writer| {
            let shop = shop.clone();
            tokio::spawn(async move {
                for n in (10 + writer..70).step_by(4) {
                    let day = u32::from(n % 5) + 1;
                    let units = u32::from(n % 3) + 1;
                    let total = i64::from(units) * 700;
                    shop.order(n, n % 7, &[("BULK", units)], day).await;
                    match n % 4 {
                        0 => shop.cancel(n, CancelReason::CustomerRequest, day).await,
                        _ => {
                            shop.reserve(n, &[("BULK", units, 700)], day).await;
                            shop.pay_and_confirm(n, total, day).await;
                            if n % 4 == 3 {
                                shop.cancel(n, CancelReason::CustomerRequest, day + 1).await;
                                shop.refund(n, n, total / 2, day + 1).await;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn two_kafka_fed_replicas_build_what_the_log_fed_projector_builds(pool: PgPool) {
    let settings = settings();
    ensure_topics(&settings).await.expect("create topics");
    let fed = schema_pool(&pool, "kafka_fed").await;

    // Two replicas per projection, in one group each, started before anything is published
    // so that they split the partitions.
    let (stop, stopped) = watch::channel(false);
    let mut replicas: Vec<(&'static str, Arc<ConsumerStats>)> = Vec::new();
    let mut tasks = Vec::new();
    for projection in projections::all() {
        for _ in 0..2 {
            let handler = KafkaFed::new(&fed, projection.clone())
                .await
                .expect("a Kafka-fed projection");
            let config = ConsumerConfig {
                batch_size: 40,
                ..ConsumerConfig::all_topics(&settings)
            };
            let consumer =
                InboxConsumer::new(fed.clone(), &settings, handler, config).expect("consumer");
            replicas.push((projection.name(), consumer.stats()));
            tasks.push(tokio::spawn(consumer.run(stopped.clone())));
        }
    }
    let partitions = 3 * u64::try_from(settings.partitions).expect("partitions");
    let deadline = Instant::now() + Duration::from_secs(60);
    for pair in replicas.chunks(2) {
        loop {
            let assigned: Vec<u64> = pair
                .iter()
                .map(|(_, stats)| ConsumerStats::get(&stats.assigned_partitions))
                .collect();
            if assigned.iter().all(|a| *a > 0) && assigned.iter().sum::<u64>() == partitions {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the group did not settle: {assigned:?}",
                pair[0].0
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    busy_shop(&pool).await;
    // The log-fed build, in the test's own schema.
    for projection in projections::all() {
        let mut log_fed = worker(&pool, projection).await;
        assert_eq!(drain(&pool, &mut log_fed).await, Outcome::Idle);
    }
    let total = publish_everything(&pool, &settings).await;

    for projection in projections::all() {
        wait_for_inbox(&fed, &KafkaFed::consumer_name(projection.as_ref()), total).await;
    }
    stop.send(true).expect("stop");
    for task in tasks {
        task.await.expect("replica task").expect("replica run");
    }
    for (name, stats) in &replicas {
        assert!(
            ConsumerStats::get(&stats.applied) > 0,
            "a replica of {name} applied nothing: {stats:?}"
        );
    }
    for projection in projections::all() {
        for table in projection.tables() {
            let from_log = rows(&pool, table.name).await;
            assert!(
                !from_log.is_empty(),
                "{} is empty: the comparison would prove nothing",
                table.name
            );
            assert_eq!(
                from_log,
                rows(&fed, table.name).await,
                "{} differs",
                table.name
            );
        }
        for view in projection.views() {
            assert_eq!(
                rows(&pool, view.name).await,
                rows(&fed, view.name).await,
                "{} differs",
                view.name
            );
        }
    }

    // Neither kind of projector starts where the other has been running.
    let projection = projections::all().remove(0);
    assert!(KafkaFed::new(&pool, projection.clone()).await.is_err());
    assert!(
        infra::projection::Worker::register(fed.clone(), projection, crate::helpers::fast_config())
            .await
            .is_err()
    );
    fed.close().await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_notifier_records_one_message_per_confirmed_or_cancelled_order(pool: PgPool) {
    let settings = settings();
    ensure_topics(&settings).await.expect("create topics");
    Shop::new(&pool).history().await;
    publish_everything(&pool, &settings).await;
    // Twice: the second relay starts from scratch, as one that lost its checkpoint would.
    sqlx::query("DELETE FROM relay_checkpoints")
        .execute(&pool)
        .await
        .expect("forget the checkpoint");
    publish_everything(&pool, &settings).await;
    let order_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'order'")
            .fetch_one(&pool)
            .await
            .expect("count");

    let mut config = ConsumerConfig::all_topics(&settings);
    config.topics = infra::kafka::topic_for(&settings.topic_prefix, "order")
        .into_iter()
        .collect();
    let consumer =
        InboxConsumer::new(pool.clone(), &settings, Notifications, config).expect("consumer");
    let stats = consumer.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(consumer.run(stopped));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ConsumerStats::get(&stats.received) < 2 * order_events as u64 {
        assert!(
            Instant::now() < deadline,
            "the notifier received too little: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).expect("stop");
    task.await.expect("task").expect("run");

    assert_eq!(ConsumerStats::get(&stats.duplicates), order_events as u64);
    assert_eq!(
        inbox_count(&pool, Notifications::NAME)
            .await
            .expect("inbox"),
        order_events
    );
    let messages: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, message FROM notifications ORDER BY order_id, kind")
            .fetch_all(&pool)
            .await
            .expect("notifications");
    let order = |n: u8| crate::helpers::order_id(n).to_string();
    assert_eq!(
        messages,
        [
            (
                "order_confirmed".to_owned(),
                format!("Your order {} is confirmed.", order(1))
            ),
            (
                "order_cancelled".to_owned(),
                format!("Your order {} was cancelled (customer request).", order(2))
            ),
            (
                "order_confirmed".to_owned(),
                format!("Your order {} is confirmed.", order(2))
            ),
            (
                "order_cancelled".to_owned(),
                format!("Your order {} was cancelled (out of stock).", order(3))
            ),
        ]
    );
}
