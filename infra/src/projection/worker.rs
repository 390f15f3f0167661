//! The worker that runs one projection.
//!
//! One live instance per projection: a worker takes a session advisory lock on a connection
//! of its own (the lease) and bumps the projection's fencing token. A second worker waits in
//! standby and takes over when the lease's session ends (its process died). Every batch locks
//! the projection's row, checks the token, applies the events and moves the checkpoint in
//! one transaction, so a worker that lost its lease (a zombie) can never commit, and a crash
//! at any point loses or repeats nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::event_store::notify::Notifier;
use crate::event_store::{Checkpoint, StoreError, StoredEvent};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{
    ApplyError, Decoded, PoisonPolicy, Projection, Read, Wakeup, WorkerConfig, decode_read,
    is_transient,
};

/// The channel a worker notifies (with the projection's name) when its checkpoint or state
/// changes, so readers waiting for a consistency token wake at once.
pub const CHECKPOINTS_CHANNEL: &str = crate::channels::CHECKPOINTS;

/// How soon a worker looks at the log again, unless a notification wakes it first, after
/// a batch that reached the head of the log or a read that a notification prompted and that
/// found nothing; while it keeps finding nothing, it looks again after twice as long, up to
/// the poll interval. The log is read only below the oldest transaction still running
/// (`pg_snapshot_xmin`, ADR 0001): an event whose commit was notified can stay out of
/// reach until an older transaction ends, and if that one appends nothing (a projection's
/// batch, a saga's save), no notification says so. Without these looks such an event would
/// wait for the next append or the poll interval (a second).
pub const RECHECK_AFTER: Duration = Duration::from_millis(20);

/// What a worker's notification on [`CHECKPOINTS_CHANNEL`] says: the projection's name,
/// and, after a batch, that it is running at `checkpoint` (`"<name> running <transaction id>
/// <position>"`), so listeners need not read `projection_state` for it. A payload with the
/// name alone (a state change, an operator's action) means "read the projection's row".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointNotice {
    pub projection: String,
    /// `None`: the notice names the projection only.
    pub running_at: Option<Checkpoint>,
}

impl CheckpointNotice {
    pub fn running(projection: &str, checkpoint: Checkpoint) -> Self {
        Self {
            projection: projection.to_owned(),
            running_at: Some(checkpoint),
        }
    }

    pub fn payload(&self) -> String {
        match self.running_at {
            Some(at) => format!(
                "{} running {} {}",
                self.projection, at.transaction_id, at.position
            ),
            None => self.projection.clone(),
        }
    }

    /// Reads a payload; `None` when it is not one (listeners then read every row).
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let projection = parts.next().filter(|name| !name.is_empty())?.to_owned();
        let running_at = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (None, ..) => None,
            (Some("running"), Some(tx), Some(position), None) => Some(Checkpoint {
                transaction_id: tx.parse().ok()?,
                position: position.parse().ok()?,
            }),
            _ => return None,
        };
        Some(Self {
            projection,
            running_at,
        })
    }
}

/// What one step of a worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: the projection is at the head of the settled log.
    Idle,
    /// Applied `events` events (0 when it went past a skipped poison event).
    Progressed { events: usize },
    /// An event failed; the step will be retried (after a backoff).
    Retrying,
    /// Another worker holds the lease; this one waits to take over.
    Standby,
    /// The projection halted on a poison event and waits for an operator.
    Halted,
    /// An operator paused the projection.
    Paused,
    /// The database holds another version of the projection than this build writes: this
    /// worker applies nothing until a rebuild swaps its version in (or, for an older build,
    /// ever). This is what lets old and new projectors overlap during a deploy.
    VersionMismatch { database: i32, code: i32 },
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("another worker took projection {projection} over")]
    Fenced { projection: &'static str },
    #[error("projection {projection}: database operation failed: {operation}")]
    Database {
        projection: &'static str,
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "projection {projection} is fed from Kafka in this database (its inbox has events); \
         a log-fed projector would apply them a second time"
    )]
    FedFromKafka { projection: &'static str },
    #[error("projection {projection}: reading the log failed")]
    ReadLog {
        projection: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("projections {projections}, stepping together: {operation} failed")]
    Joint {
        projections: String,
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("projection {projection}: applying event {event_id} failed")]
    Apply {
        projection: &'static str,
        event_id: Uuid,
        #[source]
        source: ApplyError,
    },
}

/// How a batch ends its transaction.
enum Step {
    Commit(Outcome),
    Rollback(Outcome),
    /// An event failed: roll back, then decide (retry it, or park it).
    Failed {
        index: usize,
        stored: Box<StoredEvent>,
        error: ApplyError,
    },
}

/// Holds the advisory lock and heartbeats until dropped (or until the connection fails).
pub(super) struct Lease {
    pub(super) token: i64,
    lost: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Ends the session, which releases the advisory lock.
        self.task.abort();
    }
}

pub struct Worker {
    pool: PgPool,
    pub(super) projection: Arc<dyn Projection>,
    pub(super) config: WorkerConfig,
    id: String,
    pub(super) lease: Option<Lease>,
    /// Failed attempts per event, to tell a poison event from a passing failure.
    pub(super) attempts: HashMap<Uuid, u32>,
    /// After a failure at index i of a batch, the next batch stops before it, so the events
    /// before the failing one are committed.
    pub(super) next_limit: Option<u32>,
    /// After a batch failed, events are applied one at a time up to its end.
    pub(super) careful_until: Option<Checkpoint>,
    /// The database holds a newer version than this build: never take the lease again.
    pub(super) outdated: bool,
    /// The last batch read fewer events than it asked for: it reached the head of the settled
    /// log, so the next read would most likely find nothing. `run` waits for a wake-up
    /// instead of reading again at once (an empty round trip per batch otherwise).
    pub(super) caught_up: bool,
    /// The checkpoint this worker last committed, while it can trust it is still the
    /// projection's (see [`Worker::run`]): the next read of the log starts there, outside
    /// any transaction, so finding nothing new costs one statement instead of four (begin,
    /// lock the projection's row, read, roll back).
    pub(super) known: Option<Checkpoint>,
    /// Events read ahead from `known`, applied if the locked row still has that checkpoint.
    read_ahead: Option<(Checkpoint, Vec<Read>)>,
    /// The checkpoint the batch in progress moves to, once it commits.
    applied_up_to: Option<Checkpoint>,
    /// Tells query APIs waiting on consistency tokens that the checkpoint moved, after each
    /// commit and outside it: a NOTIFY inside the batch's transaction would hold
    /// PostgreSQL's global notification lock through the commit's WAL flush, serialising
    /// the commits of every projection.
    pub(super) checkpoints: Notifier,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("projection", &self.projection.name())
            .field("id", &self.id)
            .field("leased", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Registers the projection (its state row, at this build's version if it is new).
    pub async fn register(
        pool: PgPool,
        projection: Arc<dyn Projection>,
        config: WorkerConfig,
    ) -> Result<Self, WorkerError> {
        let name = projection.name();
        let database = |operation| {
            move |source| WorkerError::Database {
                projection: name,
                operation,
                source,
            }
        };
        sqlx::query(
            "INSERT INTO projection_state (name, version) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(projection.version())
        .execute(&pool)
        .await
        .map_err(database("register"))?;
        let fed_from_kafka: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM consumer_inbox WHERE consumer = $1)")
                .bind(format!(
                    "{}{name}",
                    crate::kafka::PROJECTION_CONSUMER_PREFIX
                ))
                .fetch_one(&pool)
                .await
                .map_err(database("check the Kafka inbox"))?;
        if fed_from_kafka {
            return Err(WorkerError::FedFromKafka { projection: name });
        }
        let id = format!(
            "pid{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            checkpoints: Notifier::on(pool.clone(), CHECKPOINTS_CHANNEL, name.to_owned()),
            pool,
            projection,
            config,
            id,
            lease: None,
            attempts: HashMap::new(),
            next_limit: None,
            careful_until: None,
            caught_up: false,
            known: None,
            read_ahead: None,
            applied_up_to: None,
            outdated: false,
        })
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Sends this worker's checkpoint notices through `notifier`'s task, with whatever else
    /// the process notifies (one statement for what is pending together).
    pub fn notifying_through(mut self, notifier: &Notifier) -> Self {
        self.checkpoints = notifier.sharing(CHECKPOINTS_CHANNEL, self.name().to_owned());
        self
    }

    /// This worker's identity, as recorded in `projection_state.owner`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn database(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> WorkerError {
        let projection = self.projection.name();
        move |source| WorkerError::Database {
            projection,
            operation,
            source,
        }
    }

    /// Whether this worker is the projection's live instance (taking the lease if it is
    /// free). The lease is a session advisory lock, so it ends with the process.
    pub async fn try_acquire(&mut self) -> Result<bool, WorkerError> {
        if self.outdated {
            return Ok(false);
        }
        if let Some(lease) = &self.lease {
            if !lease.lost.load(Ordering::SeqCst) {
                return Ok(true);
            }
            tracing::warn!(projection = self.name(), "lost the lease");
            self.lease = None;
        }
        let name = self.projection.name();
        // A pool connection, so that closing the pool waits for the lease to end; closed
        // (never recycled) when dropped, because its session holds the lock.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(self.database("open the lease connection"))?;
        conn.close_on_drop();
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('projection:' || $1, 0))",
        )
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(self.database("take the lease"))?;
        if !locked {
            return Ok(false);
        }
        // Waits for a zombie's batch (it holds this row) to end before taking over.
        let token: i64 = sqlx::query_scalar(
            "UPDATE projection_state SET fencing_token = fencing_token + 1, owner = $2
              WHERE name = $1 RETURNING fencing_token",
        )
        .bind(name)
        .bind(&self.id)
        .fetch_one(&mut *conn)
        .await
        .map_err(self.database("bump the fencing token"))?;
        sqlx::query(
            "INSERT INTO projection_heartbeats (name, owner, heartbeat_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, heartbeat_at = now()",
        )
        .bind(name)
        .bind(&self.id)
        .execute(&mut *conn)
        .await
        .map_err(self.database("record the first heartbeat"))?;
        tracing::info!(projection = name, worker = %self.id, token, "took the lease");
        let lost = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(heartbeat(
            conn,
            name,
            self.id.clone(),
            self.config.heartbeat_interval,
            lost.clone(),
        ));
        self.lease = Some(Lease { token, lost, task });
        Ok(true)
    }

    /// Gives the lease up (a standby worker can take over at once).
    pub fn release(&mut self) {
        self.lease = None;
    }

    /// One step: applies the next batch of events (if this worker holds the lease) and moves
    /// the checkpoint, in one transaction. Always starts from the projection's row (never
    /// from what this worker last committed), so it sees what an operator changed.
    pub async fn run_once(&mut self) -> Result<Outcome, WorkerError> {
        self.known = None;
        self.step().await
    }

    /// [`Worker::run_once`], reading the log ahead from `known` when this worker has it.
    pub(super) async fn step(&mut self) -> Result<Outcome, WorkerError> {
        if !self.try_acquire().await? {
            self.known = None;
            return Ok(Outcome::Standby);
        }
        if let Some(known) = self.known.take()
            && self.next_limit.is_none()
            && self.careful_until.is_none()
        {
            let events = self
                .read_log(&self.pool, known, self.config.batch_size)
                .await?;
            if events.is_empty() {
                self.known = Some(known);
                return Ok(Outcome::Idle);
            }
            self.read_ahead = Some((known, events));
        }
        let mut tx = begin(&self.pool, &self.config)
            .await
            .map_err(self.database("begin"))?;
        let step = self.batch(&mut tx).await;
        // Every path ends the transaction now: a dropped transaction's rollback waits for the
        // connection's next use, holding the projection's row lock meanwhile.
        match step {
            Ok(Step::Commit(outcome)) => {
                let committed = tx.commit().await.map_err(self.database("commit"));
                self.projection.finished(committed.is_ok());
                committed?;
                if let Outcome::Progressed { .. } = outcome {
                    self.known = self.applied_up_to.take();
                    match self.known {
                        Some(checkpoint) => self.checkpoints.committed_with(
                            CheckpointNotice::running(self.name(), checkpoint).payload(),
                        ),
                        None => self.checkpoints.committed(),
                    }
                }
                // Everything failing so far is behind us now.
                self.attempts.clear();
                Ok(outcome)
            }
            Ok(Step::Rollback(outcome)) => {
                self.projection.finished(false);
                tx.rollback().await.map_err(self.database("roll back"))?;
                Ok(outcome)
            }
            Ok(Step::Failed {
                index,
                stored,
                error,
            }) => {
                self.projection.finished(false);
                let _ = tx.rollback().await;
                self.failed(index, &stored, error).await
            }
            Err(err) => {
                self.projection.finished(false);
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }

    /// Up to `limit` settled events after `after` (when the projection says which event
    /// types it reads: those decoded, the others without their payload).
    async fn read_log<'c>(
        &self,
        executor: impl sqlx::PgExecutor<'c>,
        after: Checkpoint,
        limit: u32,
    ) -> Result<Vec<Read>, WorkerError> {
        super::read_log(executor, self.projection.event_types(), after, limit)
            .await
            .map_err(|source| WorkerError::ReadLog {
                projection: self.projection.name(),
                source,
            })
    }

    async fn batch(&mut self, tx: &mut PgConnection) -> Result<Step, WorkerError> {
        let read_ahead = self.read_ahead.take();
        self.applied_up_to = None;
        let token = self.lease.as_ref().map_or(0, |lease| lease.token);
        let name = self.projection.name();
        let row = sqlx::query(
            "SELECT checkpoint_tx::text AS checkpoint_tx, checkpoint_position, state, fencing_token,
                    version
               FROM projection_state WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(self.database("lock the projection"))?;
        let fencing_token: i64 = row
            .try_get("fencing_token")
            .map_err(self.database("read the token"))?;
        if fencing_token != token {
            self.lease = None;
            return Err(WorkerError::Fenced { projection: name });
        }
        let database: i32 = row
            .try_get("version")
            .map_err(self.database("read the version"))?;
        if database != self.projection.version() {
            if database > self.projection.version() {
                // A newer build took the projection over: step aside for good, so a worker
                // of that build can take the lease.
                self.outdated = true;
                self.lease = None;
            }
            return Ok(Step::Rollback(Outcome::VersionMismatch {
                database,
                code: self.projection.version(),
            }));
        }
        let state: String = row
            .try_get("state")
            .map_err(self.database("read the state"))?;
        match state.as_str() {
            "running" => {}
            "halted" => return Ok(Step::Rollback(Outcome::Halted)),
            _ => return Ok(Step::Rollback(Outcome::Paused)),
        }
        let checkpoint_tx: String = row
            .try_get("checkpoint_tx")
            .map_err(self.database("read the checkpoint"))?;
        let checkpoint = Checkpoint {
            transaction_id: checkpoint_tx.parse().unwrap_or(0),
            position: row
                .try_get("checkpoint_position")
                .map_err(self.database("read the checkpoint"))?,
        };
        // One event at a time while a failed batch is re-run, to find the event that fails.
        let careful = self.careful_until.is_some_and(|until| checkpoint < until);
        if !careful {
            self.careful_until = None;
        }
        let limit = match self.next_limit.take() {
            Some(limit) => limit,
            None if careful => 1,
            None => self.config.batch_size,
        };
        let events = match read_ahead {
            Some((from, events)) if from == checkpoint && limit == self.config.batch_size => events,
            _ => self.read_log(&mut *tx, checkpoint, limit).await?,
        };
        let read = events.len();
        self.caught_up = !careful && read < limit as usize;
        let Some((last, _)) = events.last() else {
            return Ok(Step::Rollback(Outcome::Idle));
        };
        let last = last.checkpoint();
        let mut decoded = Vec::with_capacity(read);
        for (index, (stored, payload)) in events.into_iter().enumerate() {
            if !self.projection.handles(&stored) {
                continue;
            }
            match decode_read(&stored, payload) {
                Ok(event) => decoded.push(Decoded {
                    stored: std::sync::Arc::new(stored),
                    event,
                }),
                Err(err) => {
                    return Ok(Step::Failed {
                        index,
                        stored: Box::new(stored),
                        error: ApplyError::Decode(err),
                    });
                }
            }
        }
        if let Err(err) = self.projection.apply(&mut *tx, &decoded).await {
            if decoded.len() == 1 {
                return Ok(Step::Failed {
                    index: 0,
                    stored: Box::new(StoredEvent::clone(&decoded[0].stored)),
                    error: err,
                });
            }
            if err.is_transient() {
                return Err(WorkerError::Apply {
                    projection: name,
                    event_id: decoded.first().map_or(Uuid::nil(), |d| d.stored.event_id),
                    source: err,
                });
            }
            // Some event of the batch fails: go through it one event at a time.
            tracing::warn!(projection = name, error = %crate::telemetry::err_chain(&err),
                "a batch failed; applying its events one at a time");
            self.careful_until = Some(last);
            return Ok(Step::Rollback(Outcome::Retrying));
        }
        sqlx::query(
            "UPDATE projection_state
                SET checkpoint_tx = $2::text::xid8, checkpoint_position = $3, progress_at = now(),
                    events_applied = events_applied + $4
              WHERE name = $1",
        )
        .bind(name)
        .bind(last.transaction_id.to_string())
        .bind(last.position)
        .bind(read as i64)
        .execute(&mut *tx)
        .await
        .map_err(self.database("move the checkpoint"))?;
        self.applied_up_to = Some(last);
        Ok(Step::Commit(Outcome::Progressed { events: read }))
    }

    async fn failed(
        &mut self,
        index: usize,
        stored: &StoredEvent,
        err: ApplyError,
    ) -> Result<Outcome, WorkerError> {
        let name = self.projection.name();
        if err.is_transient() {
            return Err(WorkerError::Apply {
                projection: name,
                event_id: stored.event_id,
                source: err,
            });
        }
        if index > 0 {
            // Commit the events before the failing one first; it then comes first.
            self.next_limit = Some(u32::try_from(index).unwrap_or(1));
            return Ok(Outcome::Retrying);
        }
        let attempts = self.attempts.entry(stored.event_id).or_insert(0);
        *attempts += 1;
        let attempts = *attempts;
        let error = crate::telemetry::err_chain(&err);
        tracing::warn!(
            projection = name, event_id = %stored.event_id, position = stored.position,
            attempts, error = %error, "an event failed to apply"
        );
        if attempts < self.config.max_attempts {
            self.next_limit = Some(1);
            return Ok(Outcome::Retrying);
        }
        self.attempts.remove(&stored.event_id);
        self.park(stored, &error, attempts).await
    }

    /// Records a poison event and applies the projection's policy, in one transaction.
    async fn park(
        &mut self,
        stored: &StoredEvent,
        error: &str,
        attempts: u32,
    ) -> Result<Outcome, WorkerError> {
        let name = self.projection.name();
        let policy = self.projection.poison_policy();
        let token = self.lease.as_ref().map_or(0, |lease| lease.token);
        let mut tx = self.pool.begin().await.map_err(self.database("begin"))?;
        let current: i64 = sqlx::query_scalar(
            "SELECT fencing_token FROM projection_state WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(self.database("lock the projection"))?;
        if current != token {
            let _ = tx.rollback().await;
            self.lease = None;
            return Err(WorkerError::Fenced { projection: name });
        }
        let status = match policy {
            PoisonPolicy::Halt => "parked",
            PoisonPolicy::Skip => "skipped",
        };
        sqlx::query(
            "INSERT INTO projection_dead_letters
                (projection, event_id, position, transaction_id, aggregate_type, aggregate_id,
                 sequence, event_type, error, attempts, status)
             VALUES ($1, $2, $3, $4::text::xid8, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(name)
        .bind(stored.event_id)
        .bind(stored.position)
        .bind(stored.transaction_id.to_string())
        .bind(&stored.aggregate_type)
        .bind(&stored.aggregate_id)
        .bind(stored.sequence)
        .bind(&stored.event_type)
        .bind(error)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(status)
        .execute(&mut *tx)
        .await
        .map_err(self.database("park the event"))?;
        let outcome = match policy {
            PoisonPolicy::Halt => {
                sqlx::query(
                    "UPDATE projection_state SET state = 'halted', last_error = $2, last_error_at = now()
                      WHERE name = $1",
                )
                .bind(name)
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(self.database("halt"))?;
                Outcome::Halted
            }
            PoisonPolicy::Skip => {
                let past = stored.checkpoint();
                sqlx::query(
                    "UPDATE projection_state
                        SET checkpoint_tx = $2::text::xid8, checkpoint_position = $3,
                            progress_at = now(), last_error = $4, last_error_at = now()
                      WHERE name = $1",
                )
                .bind(name)
                .bind(past.transaction_id.to_string())
                .bind(past.position)
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(self.database("skip the event"))?;
                Outcome::Progressed { events: 0 }
            }
        };
        tx.commit().await.map_err(self.database("commit"))?;
        self.checkpoints.committed();
        tracing::error!(
            projection = name, event_id = %stored.event_id, position = stored.position,
            policy = ?policy, error, "parked a poison event"
        );
        Ok(outcome)
    }

    /// Best effort: makes a failure visible in `projection_state.last_error`.
    pub(super) async fn record_error(&self, error: &str) {
        let result = sqlx::query(
            "UPDATE projection_state SET last_error = $2, last_error_at = now() WHERE name = $1",
        )
        .bind(self.projection.name())
        .bind(error)
        .execute(&self.pool)
        .await;
        if let Err(err) = result {
            tracing::debug!(error = %err, "could not record the error");
        }
    }

    /// Runs until `shutdown` turns true: applies batches while there are events, then waits
    /// for a wake-up or the poll interval; backs off after failures.
    pub async fn run(mut self, wakeup: Wakeup, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::ZERO;
        // The last wait ended with a notification (something committed).
        let mut notified = false;
        // The last wait was a second look after this long (see [`RECHECK_AFTER`]).
        let mut rechecked: Option<Duration> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Look again after this long unless a notification comes first.
            let mut recheck: Option<Duration> = None;
            let (wait, wakeable) = match self.step().await {
                Ok(Outcome::Progressed { .. }) => {
                    backoff = Duration::ZERO;
                    if !std::mem::take(&mut self.caught_up) {
                        continue;
                    }
                    // At the head of the log: the next events' commit notifies (a
                    // notification that came during this batch left a permit, so the wait
                    // below returns at once), and the poll interval covers a lost one.
                    recheck = Some(RECHECK_AFTER);
                    (self.config.poll_interval, true)
                }
                Ok(Outcome::Retrying) => {
                    backoff = next_backoff(backoff, self.config.max_backoff);
                    (backoff, false)
                }
                Ok(Outcome::Idle) => {
                    backoff = Duration::ZERO;
                    recheck = match rechecked {
                        _ if notified => Some(RECHECK_AFTER),
                        // Still nothing: look again later, up to the poll interval.
                        Some(after) => Some(after * 2).filter(|&d| d < self.config.poll_interval),
                        None => None,
                    };
                    (self.config.poll_interval, true)
                }
                Ok(
                    Outcome::Standby
                    | Outcome::Halted
                    | Outcome::Paused
                    | Outcome::VersionMismatch { .. },
                ) => {
                    backoff = Duration::ZERO;
                    (self.config.poll_interval, true)
                }
                Err(err @ WorkerError::Fenced { .. }) => {
                    tracing::warn!(error = %err, "stepping down");
                    (self.config.poll_interval, true)
                }
                Err(err) => {
                    let error = crate::telemetry::err_chain(&err);
                    tracing::error!(projection = self.name(), error = %error, "projection step failed");
                    self.record_error(&error).await;
                    backoff = next_backoff(backoff, self.config.max_backoff);
                    (backoff, false)
                }
            };
            let wait = recheck.map_or(wait, |after| wait.min(after));
            notified = false;
            rechecked = None;
            tokio::select! {
                () = wakeup.notified(), if wakeable => notified = true,
                () = tokio::time::sleep(wait) => {
                    rechecked = recheck;
                    if recheck.is_none() {
                        // No notification for a while: read the projection's row before the
                        // log again, in case an operator moved its checkpoint (a reset, a
                        // skip, a rebuild's swap) while nothing was appended.
                        self.known = None;
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(projection = self.name(), "worker stopped");
        self.release();
    }
}

/// Begins a batch's transaction; see [`WorkerConfig::synchronous_commit`] (the setting
/// travels with the `BEGIN`, one round trip).
pub(super) async fn begin(
    pool: &PgPool,
    config: &WorkerConfig,
) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
    if config.synchronous_commit {
        pool.begin().await
    } else {
        pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await
    }
}

pub(super) fn next_backoff(current: Duration, max: Duration) -> Duration {
    if current.is_zero() {
        Duration::from_millis(50)
    } else {
        (current * 2).min(max)
    }
}

/// Keeps the lease's session alive and says so every `interval`; on failure (the session
/// broke, or another worker took over) flags the lease as lost and ends the session.
async fn heartbeat(
    mut conn: PoolConnection<Postgres>,
    name: &'static str,
    owner: String,
    interval: Duration,
    lost: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(interval).await;
        let result = sqlx::query(
            "UPDATE projection_heartbeats SET heartbeat_at = now() WHERE name = $1 AND owner = $2",
        )
        .bind(name)
        .bind(&owner)
        .execute(&mut *conn)
        .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => {
                tracing::warn!(projection = name, "another worker took the lease over");
                break;
            }
            Err(err) if is_transient(&err) => {
                tracing::warn!(projection = name, error = %err, "the lease's session failed");
                break;
            }
            Err(err) => {
                tracing::warn!(projection = name, error = %err, "heartbeat failed");
                break;
            }
        }
    }
    lost.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_notice_reads_back_what_it_says() {
        let at = Checkpoint {
            transaction_id: 18_446_744_073_709_551_000,
            position: 42,
        };
        let notice = CheckpointNotice::running("order_details", at);
        assert_eq!(
            notice.payload(),
            "order_details running 18446744073709551000 42"
        );
        assert_eq!(CheckpointNotice::parse(&notice.payload()), Some(notice));
        // The name alone (what operators' actions send) says "read the row".
        assert_eq!(
            CheckpointNotice::parse("inventory"),
            Some(CheckpointNotice {
                projection: "inventory".to_owned(),
                running_at: None
            })
        );
        for bad in [
            "",
            "x running",
            "x running 1",
            "x running 1 two",
            "x paused 1 2",
            "x running 1 2 3",
        ] {
            assert_eq!(CheckpointNotice::parse(bad), None, "{bad:?}");
        }
    }
}
