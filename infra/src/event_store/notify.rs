//! Wakes the log's followers (projectors, the saga trigger, the Kafka relay) after appends
//! commit, without slowing the appends down.
//!
//! A NOTIFY inside the appending transaction (a trigger on `events`, as this store first
//! had) makes every such commit take PostgreSQL's global notification lock, held through the
//! WAL flush: concurrent appends then commit one at a time, and group commit is lost
//! (measured: 1.9 ms instead of 0.66 ms per single-event append at concurrency 1, and a
//! ceiling of about 450 appends/s at concurrency 32). So the executor signals after its
//! commit instead, and a background task per notifier sends `pg_notify` on its own
//! connection, outside any appending transaction, coalescing: the commits that happen while
//! one notification is on its way share the next one. A lost signal (a crash between commit
//! and notify, an append made outside the executor) only delays followers until their
//! polling fallback, never loses an event: followers read the log, not the notifications.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::channels;

/// Sends coalesced `ordo_events` notifications. Cheap to clone; clones share the task.
pub type AppendNotifier = Notifier;

/// Sends coalesced notifications on one channel with one payload, each after a commit and
/// outside it. Cheap to clone; clones share the task. Notifiers made with
/// [`Notifier::sharing`] share it too: whatever they have pending goes out in one statement
/// (one transaction, one wake-up of each listener), so a process whose workers and
/// executors commit at about the same time sends one notification round instead of one per
/// notifier.
#[derive(Debug, Clone)]
pub struct Notifier {
    hub: Arc<Hub>,
    channel: &'static str,
    /// What `committed` sends; also what tells this notifier's notifications from those of
    /// the others sharing the task (each has its own latest).
    payload: Arc<str>,
}

/// A notifier: its channel and its own payload.
type NotifierKey = (&'static str, Arc<str>);

#[derive(Debug)]
struct Hub {
    pool: PgPool,
    /// Per notifier (channel and own payload), the payload to send next.
    latest: Mutex<BTreeMap<NotifierKey, Arc<str>>>,
    pending: Notify,
    task: OnceLock<()>,
}

impl Notifier {
    /// Wakes the log's followers (`ordo_events`) after appends.
    pub fn new(pool: PgPool) -> Self {
        Self::on(pool, channels::EVENTS, String::new())
    }

    /// Notifies `channel` with `payload` after commits (a projection's checkpoint moves on
    /// `ordo_checkpoints`, with the projection's name).
    pub fn on(pool: PgPool, channel: &'static str, payload: String) -> Self {
        Self {
            hub: Arc::new(Hub {
                pool,
                latest: Mutex::new(BTreeMap::new()),
                pending: Notify::new(),
                task: OnceLock::new(),
            }),
            channel,
            payload: payload.into(),
        }
    }

    /// A notifier for `channel` and `payload` that sends through this one's task.
    pub fn sharing(&self, channel: &'static str, payload: String) -> Self {
        Self {
            hub: self.hub.clone(),
            channel,
            payload: payload.into(),
        }
    }

    /// Like [`Notifier::committed`], with `payload` instead of the notifier's own; when
    /// commits are coalesced, the latest payload is sent (so it must say everything the
    /// earlier ones said, as a checkpoint does).
    pub fn committed_with(&self, payload: String) {
        self.signal(payload.into());
    }

    /// Records that a transaction committed; listeners are notified shortly, with the
    /// notifier's own payload (also when this comes after a [`Notifier::committed_with`]
    /// not sent yet: the latest call says what is sent). Never blocks. Must be called from
    /// within a Tokio runtime (the task starts on first use).
    pub fn committed(&self) {
        self.signal(self.payload.clone());
    }

    fn signal(&self, payload: Arc<str>) {
        self.hub
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((self.channel, self.payload.clone()), payload);
        self.hub.task.get_or_init(|| {
            let hub = self.hub.clone();
            tokio::spawn(async move {
                loop {
                    // A permit is stored when nobody waits, so commits made while a
                    // notification was on its way are covered by the next one.
                    hub.pending.notified().await;
                    if hub.pool.is_closed() {
                        return;
                    }
                    let latest =
                        std::mem::take(&mut *hub.latest.lock().unwrap_or_else(|p| p.into_inner()));
                    if latest.is_empty() {
                        continue;
                    }
                    let (channels, payloads): (Vec<&str>, Vec<&str>) = latest
                        .iter()
                        .map(|((channel, _), payload)| (*channel, &**payload))
                        .unzip();
                    let sent = sqlx::query(
                        "SELECT pg_notify(n.channel, n.payload)
                           FROM UNNEST($1::text[], $2::text[]) AS n(channel, payload)",
                    )
                    .bind(&channels)
                    .bind(&payloads)
                    .execute(&hub.pool)
                    .await;
                    if let Err(err) = sent {
                        tracing::debug!(error = %err, "could not notify listeners; they will poll");
                    }
                }
            });
        });
        self.hub.pending.notify_one();
    }
}

/// One `ordo_events` notification, in a transaction of its own.
pub async fn notify(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channels::EVENTS)
        .execute(pool)
        .await
        .map(|_| ())
}
