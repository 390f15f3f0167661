//! The example downstream service: records an "order confirmed" / "order cancelled"
//! notification per order, from the Kafka topics, until Ctrl-C or SIGTERM. Run several and
//! they split the partitions.

use anyhow::Context;
use infra::kafka::consumer::{ConsumerConfig, InboxConsumer};
use projections::notifications::Notifications;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::config::load().context("failed to load configuration")?;
    infra::telemetry::init("notifier", &settings.telemetry)?;
    let options = infra::db::connect_options(&settings.database)?;
    let pool = infra::db::connect(options, &settings.database).await?;
    if settings.database.migrate_on_start {
        infra::db::migrate(&pool).await?;
    }
    tokio::select! {
        () = infra::kafka::wait_for_topics(&settings.kafka) => {}
        () = infra::shutdown::shutdown_signal() => return Ok(()),
    }
    let mut config = ConsumerConfig::all_topics(&settings.kafka);
    // Only order events concern it.
    config.topics = infra::kafka::topic_for(&settings.kafka.topic_prefix, "order")
        .into_iter()
        .collect();
    let consumer = InboxConsumer::new(pool, &settings.kafka, Notifications, config)
        .context("failed to start the notifications consumer")?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(consumer.run(stopped));
    tracing::info!(brokers = %settings.kafka.brokers, "notifier running");
    infra::shutdown::shutdown_signal().await;
    let _ = stop.send(true);
    task.await?.context("the notifications consumer failed")?;
    Ok(())
}
