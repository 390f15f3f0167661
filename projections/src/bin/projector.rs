//! The projector: runs every read model until Ctrl-C or SIGTERM.
//!
//! `--source log` (the default) follows the PostgreSQL log: run several for availability;
//! each projection runs on one of them at a time, and a standby takes over within a poll
//! interval when the live one dies.
//!
//! `--source kafka` consumes the relay's topics instead, into a database of its own: run
//! several and they split the partitions (one consumer group per projection).

use anyhow::Context;
use clap::{Parser, ValueEnum};
use infra::config::Settings;
use infra::kafka::consumer::{ConsumerConfig, InboxConsumer};
use infra::projection::WorkerConfig;
use projections::kafka_source::KafkaFed;
use sqlx::PgPool;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// The PostgreSQL global log.
    Log,
    /// The Kafka topics the relay publishes (KAFKA_BROKERS).
    Kafka,
}

/// Builds the read models.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where events come from.
    #[arg(long, value_enum, default_value = "log", env = "PROJECTOR_SOURCE")]
    source: Source,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = infra::config::load().context("failed to load configuration")?;
    infra::telemetry::init("projector", &settings.telemetry)?;
    let options = infra::db::connect_options(&settings.database)?;
    let pool = infra::db::connect(options, &settings.database).await?;
    if settings.database.migrate_on_start {
        infra::db::migrate(&pool).await?;
    }
    match args.source {
        Source::Log => {
            let config = WorkerConfig {
                synchronous_commit: settings.projector.synchronous_commit,
                ..WorkerConfig::default()
            };
            from_log(pool, config, settings.projector.joint_batches).await
        }
        Source::Kafka => from_kafka(pool, &settings).await,
    }
}

async fn from_log(pool: PgPool, config: WorkerConfig, joint_batches: bool) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let mut projector = tokio::spawn(projections::run_from_log(
        pool,
        config,
        joint_batches,
        stopped,
    ));
    let ended = tokio::select! {
        ended = &mut projector => Some(ended),
        () = infra::shutdown::shutdown_signal() => None,
    };
    let _ = stop.send(true);
    // The workers finish their batch (committed or rolled back), then release their leases.
    let ended = match ended {
        Some(ended) => ended,
        None => projector.await,
    };
    ended
        .context("the projector's task failed")?
        .context("failed to start the projections")?;
    tracing::info!("projector stopped");
    Ok(())
}

async fn from_kafka(pool: PgPool, settings: &Settings) -> anyhow::Result<()> {
    tokio::select! {
        () = infra::kafka::wait_for_topics(&settings.kafka) => {}
        () = infra::shutdown::shutdown_signal() => return Ok(()),
    }
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for projection in projections::all() {
        let name = projection.name();
        let handler = KafkaFed::new(&pool, projection)
            .await
            .with_context(|| format!("cannot feed projection {name} from Kafka"))?;
        let consumer = InboxConsumer::new(
            pool.clone(),
            &settings.kafka,
            handler,
            ConsumerConfig::all_topics(&settings.kafka),
        )
        .with_context(|| format!("failed to start the consumer of projection {name}"))?;
        tasks.push(tokio::spawn(consumer.run(stopped.clone())));
        tracing::info!(projection = name, brokers = %settings.kafka.brokers, "Kafka consumer started");
    }
    infra::shutdown::shutdown_signal().await;
    let _ = stop.send(true);
    for task in tasks {
        // Each consumer finishes its batch and commits its offsets.
        let _ = task.await;
    }
    tracing::info!("projector stopped");
    Ok(())
}
