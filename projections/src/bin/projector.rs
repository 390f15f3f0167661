//! The projector: runs a worker per read model until Ctrl-C or SIGTERM. Run several for
//! availability: each projection runs on one of them at a time, and a standby takes over
//! within a poll interval when the live one dies.

use anyhow::Context;
use infra::projection::{EVENTS_CHANNEL, Worker, WorkerConfig, listen_for_events};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::config::load().context("failed to load configuration")?;
    infra::telemetry::init("projector", &settings.telemetry)?;
    let options = infra::db::connect_options(&settings.database)?;
    let pool = infra::db::connect(options, &settings.database).await?;
    if settings.database.migrate_on_start {
        infra::db::migrate(&pool).await?;
    }
    let (stop, stopped) = watch::channel(false);
    let mut wakeups = Vec::new();
    let mut tasks = Vec::new();
    for projection in projections::all() {
        let name = projection.name();
        let worker = Worker::register(pool.clone(), projection, WorkerConfig::default())
            .await
            .with_context(|| format!("failed to start projection {name}"))?;
        let wakeup = std::sync::Arc::new(tokio::sync::Notify::new());
        wakeups.push(wakeup.clone());
        tasks.push(tokio::spawn(worker.run(wakeup, stopped.clone())));
        tracing::info!(projection = name, "worker started");
    }
    let listener = tokio::spawn(listen_for_events(pool.clone(), EVENTS_CHANNEL, wakeups));
    infra::shutdown::shutdown_signal().await;
    let _ = stop.send(true);
    for task in tasks {
        // Each worker finishes its batch (committed or rolled back), then releases its lease.
        let _ = task.await;
    }
    listener.abort();
    tracing::info!("projector stopped");
    Ok(())
}
