//! The Kafka relay: publishes every event of the global log to Kafka, until Ctrl-C or
//! SIGTERM. Run two for availability: one publishes, the other waits on the lease.

use std::sync::Arc;

use anyhow::Context;
use infra::kafka::relay::{Relay, RelayConfig};
use infra::projection::listen_for_events;
use tokio::sync::{Notify, watch};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::config::load().context("failed to load configuration")?;
    infra::telemetry::init("kafka-relay", &settings.telemetry)?;
    let options = infra::db::connect_options(&settings.database)?;
    let pool = infra::db::connect(options, &settings.database).await?;
    if settings.database.migrate_on_start {
        infra::db::migrate(&pool).await?;
    }
    // A produce to a missing topic would block: create them first (the broker may come up
    // after us).
    tokio::select! {
        () = infra::kafka::wait_for_topics(&settings.kafka) => {}
        () = infra::shutdown::shutdown_signal() => return Ok(()),
    }
    let config = RelayConfig {
        batch_size: settings.kafka.relay_batch_size.max(1),
        ..RelayConfig::default()
    };
    let relay = Relay::new(pool.clone(), settings.kafka.clone(), "kafka", config)
        .context("failed to start the relay")?;
    let (stop, stopped) = watch::channel(false);
    let wakeup = Arc::new(Notify::new());
    let task = tokio::spawn(relay.run(wakeup.clone(), stopped));
    let listener = tokio::spawn(listen_for_events(
        pool.clone(),
        infra::channels::EVENTS,
        vec![wakeup],
    ));
    tracing::info!(brokers = %settings.kafka.brokers, prefix = %settings.kafka.topic_prefix, "relay running");
    infra::shutdown::shutdown_signal().await;
    let _ = stop.send(true);
    let _ = task.await;
    listener.abort();
    Ok(())
}
