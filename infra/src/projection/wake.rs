//! Wake-ups: one LISTEN connection per process, fanned out to every worker.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

/// The channel appenders notify after their events commit (`event_store::notify`).
pub const EVENTS_CHANNEL: &str = crate::channels::EVENTS;

/// A wake-up a worker can wait on. `Notify::notify_one` stores a permit, so a notification
/// that arrives while the worker is busy is not lost: its next wait returns at once.
pub type Wakeup = Arc<Notify>;

/// Listens on `channel` until the process ends, waking every worker on each notification.
/// Reconnects after errors; while disconnected, workers still poll.
pub async fn listen_for_events(pool: PgPool, channel: &'static str, workers: Vec<Wakeup>) {
    listen_for(pool, channel, |_| true, workers).await;
}

/// Like [`listen_for_events`], waking the workers only on notifications whose payload
/// `wanted` accepts.
pub async fn listen_for(
    pool: PgPool,
    channel: &'static str,
    wanted: fn(&str) -> bool,
    workers: Vec<Wakeup>,
) {
    while !pool.is_closed() {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(err) = listener.listen(channel).await {
                    tracing::warn!(error = %err, channel, "LISTEN failed; retrying");
                } else {
                    tracing::debug!(channel, "listening for notifications");
                    loop {
                        match listener.recv().await {
                            Ok(notification) if wanted(notification.payload()) => {
                                workers.iter().for_each(|w| w.notify_one());
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(error = %err, channel, "lost the notification connection");
                                break;
                            }
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, channel, "cannot open a LISTEN connection"),
        }
        // Whatever was missed meanwhile, the workers' polling picks up.
        workers.iter().for_each(|w| w.notify_one());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
