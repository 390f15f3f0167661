//! Read-your-writes: waiting until a projection has applied the event a command's
//! consistency token names.
//!
//! One watcher per process keeps every projection's checkpoint in a `tokio::sync::watch`
//! channel, refreshed when a projector notifies `ordo_checkpoints` (right after the commit of
//! each batch) and every second as a fallback. A request that must wait subscribes and sleeps
//! until its projection's checkpoint passes the token or its deadline expires: no polling
//! per request.
//!
//! Positions are not in commit order, so a token is compared with checkpoints in log order:
//! by the transaction id it carries, or, for a bare position, the one looked up in the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infra::event_store::{Checkpoint, ConsistencyToken};
use infra::projection::CheckpointNotice;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::queries;

/// How often the watcher reads every projection's row, notices or not.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What the watcher knows of one projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub checkpoint: Checkpoint,
    /// `running`, `halted`, `paused` or `rebuilding`.
    pub state: String,
}

/// Why a read cannot honour a consistency token.
#[derive(Debug, thiserror::Error)]
pub enum ConsistencyError {
    #[error("no event has position {position}; send the position a command returned")]
    UnknownPosition { position: i64 },
    #[error("projection {projection} has not applied position {position} yet")]
    Behind {
        projection: &'static str,
        position: i64,
        /// Events between the projection's checkpoint and the token.
        behind_by: i64,
        checkpoint_position: i64,
    },
    #[error(
        "projection {projection} is {state} and will not apply position {position} until an operator acts"
    )]
    NotRunning {
        projection: &'static str,
        position: i64,
        state: String,
    },
    #[error("failed to look up projection progress")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug)]
pub struct Checkpoints {
    pool: PgPool,
    channels: Mutex<HashMap<String, watch::Sender<Option<Progress>>>>,
    /// Bumped whenever a read model may have changed without an event: a notice that does
    /// not say where its projection is (a rebuild's swap, a reset, a state change), a
    /// checkpoint seen moving back or changing state, and every (re)connection of the
    /// notification listener (notices may have been missed). What was read before a bump
    /// may not be the model any more (see [`crate::cache`]).
    epoch: AtomicU64,
}

impl Checkpoints {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            channels: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        })
    }

    /// See the `epoch` field.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The checkpoint this process last heard `name` is at.
    pub fn known(&self, name: &str) -> Option<Checkpoint> {
        self.channel(name)
            .borrow()
            .as_ref()
            .map(|progress| progress.checkpoint)
    }

    /// Follows `name`'s progress.
    pub fn subscribe(&self, name: &str) -> watch::Receiver<Option<Progress>> {
        self.channel(name).subscribe()
    }

    fn channel(&self, name: &str) -> watch::Sender<Option<Progress>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(name) {
            return channel.clone();
        }
        channels
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Reads every projection's checkpoint and wakes the waiters of those that moved.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        for (name, checkpoint, state) in queries::projections::checkpoints(&self.pool).await? {
            let progress = Some(Progress { checkpoint, state });
            let mut reset = false;
            self.channel(&name).send_if_modified(|current| {
                if *current == progress {
                    false
                } else {
                    // Forward while running is what events do; anything else may not be.
                    reset = current.as_ref().is_some_and(|known| {
                        known.checkpoint > checkpoint
                            || known.state != "running"
                            || progress.as_ref().is_some_and(|p| p.state != "running")
                    });
                    *current = progress;
                    true
                }
            });
            if reset {
                self.bump_epoch();
            }
        }
        Ok(())
    }

    /// A worker's notice that `name` is running at `checkpoint`: wakes its waiters if that
    /// is further than known (a late notice never moves a checkpoint back).
    pub(crate) fn advance(&self, name: &str, checkpoint: Checkpoint) {
        self.channel(name)
            .send_if_modified(|current| match current {
                Some(known) if known.checkpoint >= checkpoint => false,
                _ => {
                    *current = Some(Progress {
                        checkpoint,
                        state: "running".to_owned(),
                    });
                    true
                }
            });
    }

    /// Keeps the checkpoints current until the process ends: from the projectors' notices
    /// (which carry each new checkpoint), and by reading every projection's row when a
    /// notice does not say where it is (a state change) and every second.
    pub async fn watch(self: Arc<Self>) {
        while !self.pool.is_closed() {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(listener) => Some(listener),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for checkpoints; polling");
                    None
                }
            };
            if let Some(l) = listener.as_mut()
                && let Err(err) = l.listen(infra::channels::CHECKPOINTS).await
            {
                tracing::warn!(error = %err, "LISTEN failed; polling");
                listener = None;
            }
            // Notices may have been missed since the last connection.
            self.bump_epoch();
            let mut refresh_due = true;
            let mut refreshed = Instant::now();
            while !self.pool.is_closed() {
                // Every second at least, and whenever a notice does not say where a
                // projection is: a notice naming a checkpoint only ever moves it forward,
                // so an operator's reset (which moves it back) shows at the next refresh.
                if refresh_due || refreshed.elapsed() >= REFRESH_EVERY {
                    if let Err(err) = self.refresh().await {
                        tracing::warn!(error = %err, "failed to refresh checkpoints");
                    }
                    refreshed = Instant::now();
                }
                refresh_due = true;
                match listener.as_mut() {
                    Some(l) => match tokio::time::timeout(REFRESH_EVERY, l.recv()).await {
                        Ok(Ok(notification)) => {
                            match CheckpointNotice::parse(notification.payload()) {
                                Some(CheckpointNotice {
                                    projection,
                                    running_at: Some(checkpoint),
                                }) => {
                                    self.advance(&projection, checkpoint);
                                    refresh_due = false;
                                }
                                // A rebuild's swap, a reset, a pause: read the rows, and
                                // what was read before may not be the model any more.
                                _ => self.bump_epoch(),
                            }
                        }
                        Err(_) => {}
                        Ok(Err(err)) => {
                            tracing::warn!(error = %err, "lost the checkpoint notifications");
                            break;
                        }
                    },
                    None => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Waits (up to `wait`) until `projection` has applied the token's event; returns where
    /// that event is in the log. A token that carries its transaction id says where; one
    /// with the position alone is looked up first. (A client that sends a transaction id of
    /// its own making only misleads its own reads.)
    pub async fn wait_until_applied(
        &self,
        projection: &'static str,
        token: ConsistencyToken,
        wait: Duration,
    ) -> Result<Checkpoint, ConsistencyError> {
        let deadline = Instant::now() + wait;
        let position = token.position;
        let target = match token.checkpoint() {
            Some(target) => target,
            None => queries::projections::locate(&self.pool, position)
                .await?
                .ok_or(ConsistencyError::UnknownPosition { position })?,
        };
        let mut receiver = self.channel(projection).subscribe();
        if receiver.borrow().is_none() {
            self.refresh().await?;
        }
        loop {
            let progress = receiver.borrow_and_update().clone();
            if let Some(progress) = &progress {
                if progress.checkpoint >= target {
                    return Ok(target);
                }
                if progress.state != "running" {
                    return Err(ConsistencyError::NotRunning {
                        projection,
                        position,
                        state: progress.state.clone(),
                    });
                }
            }
            match tokio::time::timeout_at(deadline, receiver.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => {
                    let checkpoint = progress.map(|p| p.checkpoint).unwrap_or_default();
                    let behind_by =
                        queries::projections::events_between(&self.pool, checkpoint, target)
                            .await?;
                    return Err(ConsistencyError::Behind {
                        projection,
                        position,
                        behind_by,
                        checkpoint_position: checkpoint.position,
                    });
                }
            }
        }
    }
}
