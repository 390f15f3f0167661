//! The saga worker: the fulfilment trigger (following the log) and the saga runner (taking
//! due sagas), until Ctrl-C or SIGTERM. Run several for availability: the trigger runs on one
//! at a time, and runners share the sagas through claims.

use std::sync::Arc;

use anyhow::Context;
use infra::clock::SystemClock;
use infra::payment_gateway::{GatewayClientConfig, HttpPaymentGateway};
use infra::projection::{Worker, WorkerConfig, listen_for, listen_for_events};
use tokio::sync::{Notify, watch};
use write_side::sagas::runner::{Runner, RunnerConfig};
use write_side::sagas::trigger::FulfillmentTrigger;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = infra::config::load().context("failed to load configuration")?;
    infra::telemetry::init("saga-worker", &settings.telemetry)?;
    let options = infra::db::connect_options(&settings.database)?;
    let pool = infra::db::connect(options, &settings.database).await?;
    if settings.database.migrate_on_start {
        infra::db::migrate(&pool).await?;
    }
    let gateway = HttpPaymentGateway::new(GatewayClientConfig::new(
        settings.payment_gateway.url.clone(),
        settings.payment_gateway.timeout,
    ))
    .context("failed to build the payment gateway client")?;
    let (stop, stopped) = watch::channel(false);

    let runner = Runner::new(
        pool.clone(),
        Arc::new(gateway),
        Arc::new(SystemClock),
        RunnerConfig {
            concurrency: settings.saga.concurrency.get(),
            ..RunnerConfig::new(settings.saga.payment_deadline)
        },
    );
    let trigger = Worker::register(
        pool.clone(),
        Arc::new(FulfillmentTrigger::handing_to(runner.handoff())),
        WorkerConfig {
            synchronous_commit: settings.projector.synchronous_commit,
            ..WorkerConfig::default()
        },
    )
    .await
    .context("failed to start the saga trigger")?
    .notifying_through(runner.notifier());
    let trigger_wakeup = Arc::new(Notify::new());
    let trigger_task = tokio::spawn(trigger.run(trigger_wakeup.clone(), stopped.clone()));

    let runner_wakeup = Arc::new(Notify::new());
    let runner_task = tokio::spawn(runner.run(runner_wakeup.clone(), stopped.clone()));

    let listeners = [
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
    tracing::info!(deadline = ?settings.saga.payment_deadline, "saga worker running");
    infra::shutdown::shutdown_signal().await;
    let _ = stop.send(true);
    let _ = trigger_task.await;
    let _ = runner_task.await;
    for listener in listeners {
        listener.abort();
    }
    tracing::info!("saga worker stopped");
    Ok(())
}
