//! Read-your-writes: waiting until a projection has applied the event a command returned
//! as its `position` (the consistency token).
//!
//! One watcher per process keeps every projection's checkpoint in a `tokio::sync::watch`
//! channel, refreshed when a projector notifies `ordo_checkpoints` (right after the commit of
//! each batch) and every second as a fallback. A request that must wait subscribes and sleeps
//! until its projection's checkpoint passes the token or its deadline expires: no polling
//! per request.
//!
//! Positions are not in commit order, so a token is first located in the log (its
//! transaction id), and compared with checkpoints in log order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infra::event_store::Checkpoint;
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
}

impl Checkpoints {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            channels: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self, name: &str) -> watch::Sender<Option<Progress>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Reads every projection's checkpoint and wakes the waiters of those that moved.
    pub async fn refresh(&self) -> Result<(), sqlx::Error> {
        for (name, checkpoint, state) in queries::projections::checkpoints(&self.pool).await? {
            let progress = Some(Progress { checkpoint, state });
            self.channel(&name).send_if_modified(|current| {
                if *current == progress {
                    false
                } else {
                    *current = progress;
                    true
                }
            });
        }
        Ok(())
    }

    /// A worker's notice that `name` is running at `checkpoint`: wakes its waiters if that
    /// is further than known (a late notice never moves a checkpoint back).
    fn advance(&self, name: &str, checkpoint: Checkpoint) {
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
                            if let Some(notice) = CheckpointNotice::parse(notification.payload())
                                && let Some(checkpoint) = notice.running_at
                            {
                                self.advance(&notice.projection, checkpoint);
                                refresh_due = false;
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

    /// Waits (up to `wait`) until `projection` has applied the event at `position`.
    pub async fn wait_until_applied(
        &self,
        projection: &'static str,
        position: i64,
        wait: Duration,
    ) -> Result<(), ConsistencyError> {
        let deadline = Instant::now() + wait;
        let target = queries::projections::locate(&self.pool, position)
            .await?
            .ok_or(ConsistencyError::UnknownPosition { position })?;
        let mut receiver = self.channel(projection).subscribe();
        if receiver.borrow().is_none() {
            self.refresh().await?;
        }
        loop {
            let progress = receiver.borrow_and_update().clone();
            if let Some(progress) = &progress {
                if progress.checkpoint >= target {
                    return Ok(());
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
