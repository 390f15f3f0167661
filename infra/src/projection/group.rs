//! Several projections of one process stepped together (ADR 0004, amended): per batch, one
//! read of the log, one transaction, one statement locking their rows and one moving their
//! checkpoints, where each [`Worker`] alone spends one of each per projection.
//!
//! Each projection keeps everything of its own: its row, checkpoint, lease, fencing token,
//! version and state. The joint step applies a projection's events exactly as its worker
//! would (those after its own checkpoint, through its own `apply`, its checkpoint moving in
//! the same transaction), and only while its row says the worker may: the lease's token is
//! the row's, the row's version is the build's, and it is running. A member the joint step
//! cannot take steps alone, as a lone worker, until it can rejoin: while its lease is held
//! elsewhere (standby), while it is paused, halted or of another version, and after one of
//! its events failed (the lone worker's retries, careful re-run and parking apply then).
//!
//! The price: the members' batches wait on each other, and one member's failing event rolls
//! the others' batch back too (they step again at once, without it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;

use super::worker::{RECHECK_AFTER, begin, next_backoff};
use super::{
    ApplyError, CheckpointNotice, Outcome, Projection, Read, Wakeup, Worker, WorkerConfig,
    WorkerError, distribute, event_types_of, read_log,
};
use crate::event_store::Checkpoint;
use crate::event_store::notify::Notifier;

/// The projections of one process, stepping together where they can.
pub struct Group {
    pool: PgPool,
    config: WorkerConfig,
    members: Vec<Member>,
    /// What any member consumes (`None`: every payload), for the one read they share.
    types: Option<Vec<&'static str>>,
    /// The members that last stepped together (indexes into `members`).
    joint: Vec<usize>,
    /// The checkpoint all of `joint` last committed, while it can be trusted (as a
    /// worker's `known`): the next read starts there, outside any transaction.
    known: Option<Checkpoint>,
    /// The last joint batch read fewer events than it asked for.
    caught_up: bool,
    /// After a transient failure, the joint step waits until then.
    joint_due: Option<Instant>,
    joint_backoff: Duration,
    /// The members whose `apply` ran in the joint batch in progress.
    applying: Vec<usize>,
    /// `joint`'s names, for errors.
    label: Arc<str>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("projections", &self.names())
            .field("stepping_together", &self.stepping_together())
            .finish_non_exhaustive()
    }
}

struct Member {
    worker: Worker,
    /// Steps alone until it can rejoin.
    solo: bool,
    /// Its next step alone waits until then (backing off after a failure).
    due: Option<Instant>,
    backoff: Duration,
}

/// What a round did for one member.
#[derive(Debug)]
pub struct Stepped {
    pub projection: &'static str,
    /// Whether it stepped in the joint batch.
    pub joint: bool,
    pub outcome: Result<Outcome, WorkerError>,
    /// Its batch came back full: there is more to read at once.
    full: bool,
}

/// How a joint batch's transaction ends.
enum Batch {
    Commit {
        /// The members whose checkpoint moved, with the events they read.
        moved: Vec<(usize, usize)>,
        /// Where the moved ones are now.
        last: Checkpoint,
    },
    /// Nothing to commit: nothing settled after the checkpoints (`idle`), or a member left.
    Rollback { idle: bool },
    /// A member's `apply` failed.
    Failed { member: usize, error: ApplyError },
}

impl Group {
    /// Registers a worker per projection (see [`Worker::register`]).
    pub async fn register(
        pool: PgPool,
        projections: Vec<Arc<dyn Projection>>,
        config: WorkerConfig,
    ) -> Result<Self, WorkerError> {
        let mut workers = Vec::with_capacity(projections.len());
        for projection in projections {
            workers.push(Worker::register(pool.clone(), projection, config).await?);
        }
        let types = event_types_of(workers.iter().map(|w| &*w.projection));
        Ok(Self {
            pool,
            config,
            members: workers
                .into_iter()
                .map(|worker| Member {
                    worker,
                    solo: false,
                    due: None,
                    backoff: Duration::ZERO,
                })
                .collect(),
            types,
            joint: Vec::new(),
            known: None,
            caught_up: false,
            joint_due: None,
            joint_backoff: Duration::ZERO,
            applying: Vec::new(),
            label: Arc::from(""),
        })
    }

    /// Sends the members' checkpoint notices through `notifier`'s task (one statement for
    /// what is pending together).
    pub fn notifying_through(mut self, notifier: &Notifier) -> Self {
        self.members = self
            .members
            .into_iter()
            .map(|member| Member {
                worker: member.worker.notifying_through(notifier),
                ..member
            })
            .collect();
        self
    }

    /// The members' projections, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.members.iter().map(|m| m.worker.name()).collect()
    }

    /// The projections that stepped together in the last round.
    pub fn stepping_together(&self) -> Vec<&'static str> {
        self.joint
            .iter()
            .map(|&i| self.members[i].worker.name())
            .collect()
    }

    /// Gives every lease up.
    pub fn release(&mut self) {
        for member in &mut self.members {
            member.worker.release();
        }
    }

    /// One round: the members that can step together apply their next batch in one
    /// transaction; the others step alone (those waiting out a backoff or, in a state that
    /// only an operator or another process changes, the poll interval, wait). Each member
    /// stepped gets its own outcome (`Progressed` with the events it read, `Idle` if the
    /// joint batch did not move it). Failures are logged here and recorded on the
    /// projection's row.
    pub async fn step(&mut self) -> Vec<Stepped> {
        let mut stepped: Vec<Option<Stepped>> = self.members.iter().map(|_| None).collect();
        let now = Instant::now();
        let mut backing_off = Vec::new();
        if self.joint_due.is_some_and(|due| due > now) {
            backing_off.clone_from(&self.joint);
        } else {
            self.joint_due = None;
            // A member leaves at each retry, so this ends.
            for _ in 0..=self.members.len() {
                let joint = self.joint_members().await;
                if joint != self.joint {
                    self.known = None;
                    self.joint = joint;
                    self.label = self.stepping_together().join(", ").into();
                }
                if self.joint.len() < 2 {
                    // Nothing to share: a lone member steps as a worker does.
                    break;
                }
                let joint = self.joint.clone();
                match self.joint_step(&joint).await {
                    Ok(None) => continue,
                    Ok(Some(outcomes)) => {
                        self.joint_backoff = Duration::ZERO;
                        for (i, outcome) in outcomes {
                            stepped[i] = Some(Stepped {
                                projection: self.members[i].worker.name(),
                                joint: true,
                                outcome: Ok(outcome),
                                full: !self.caught_up,
                            });
                        }
                        break;
                    }
                    Err(err) => {
                        let error = crate::telemetry::err_chain(&err);
                        tracing::error!(projections = ?self.stepping_together(), error = %error,
                            "a joint projection step failed");
                        self.joint_backoff =
                            next_backoff(self.joint_backoff, self.config.max_backoff);
                        self.joint_due = Some(now + self.joint_backoff);
                        self.known = None;
                        let mut err = Some(err);
                        for &i in &joint {
                            self.members[i].worker.record_error(&error).await;
                            // The error itself for the first, its text for the others.
                            let outcome = Err(err.take().unwrap_or_else(|| WorkerError::Joint {
                                projections: self.label.to_string(),
                                operation: "the joint step",
                                source: error.clone().into(),
                            }));
                            stepped[i] = Some(Stepped {
                                projection: self.members[i].worker.name(),
                                joint: true,
                                outcome,
                                full: false,
                            });
                        }
                        // They wait out the backoff together.
                        backing_off = joint;
                        break;
                    }
                }
            }
        }
        let poll = self.config.poll_interval;
        for (i, slot) in stepped.iter_mut().enumerate() {
            let member = &mut self.members[i];
            if slot.is_some() || backing_off.contains(&i) || member.due.is_some_and(|due| due > now)
            {
                continue;
            }
            let outcome = member.worker.step().await;
            let full = !std::mem::take(&mut member.worker.caught_up);
            let name = member.worker.name();
            member.due = None;
            match &outcome {
                Ok(Outcome::Progressed { .. } | Outcome::Idle) => {
                    member.backoff = Duration::ZERO;
                    // Only once at the head of the log: one far behind would hold the
                    // others back (a joint batch is read from the lowest checkpoint).
                    if member.solo && in_stride(&member.worker) && !full {
                        tracing::debug!(projection = name, "rejoins the joint step");
                        member.solo = false;
                    }
                }
                Ok(Outcome::Retrying) => {
                    member.backoff = next_backoff(member.backoff, self.config.max_backoff);
                    member.due = Some(now + member.backoff);
                    member.solo = true;
                }
                Ok(
                    Outcome::Standby
                    | Outcome::Halted
                    | Outcome::Paused
                    | Outcome::VersionMismatch { .. },
                ) => {
                    // Another process or an operator changes that: look again after the
                    // poll interval, not at every wake-up (a standby's look opens a
                    // connection).
                    member.backoff = Duration::ZERO;
                    member.due = Some(now + poll);
                    member.solo = true;
                }
                Err(err @ WorkerError::Fenced { .. }) => {
                    tracing::warn!(error = %err, "stepping down");
                    member.due = Some(now + poll);
                    member.solo = true;
                }
                Err(err) => {
                    let error = crate::telemetry::err_chain(err);
                    tracing::error!(projection = name, error = %error, "projection step failed");
                    member.worker.record_error(&error).await;
                    member.backoff = next_backoff(member.backoff, self.config.max_backoff);
                    member.due = Some(now + member.backoff);
                    member.solo = true;
                }
            }
            *slot = Some(Stepped {
                projection: name,
                joint: false,
                outcome,
                full,
            });
        }
        stepped.into_iter().flatten().collect()
    }

    /// The members that may step together now: not alone, holding their lease, in no
    /// recovery of their own. The others are marked to step alone.
    async fn joint_members(&mut self) -> Vec<usize> {
        let mut joint = Vec::with_capacity(self.members.len());
        for (i, member) in self.members.iter_mut().enumerate() {
            if member.solo {
                continue;
            }
            match member.worker.try_acquire().await {
                Ok(true) if in_stride(&member.worker) => joint.push(i),
                // Its own step says why (standby, an error) and acts on it.
                _ => member.solo = true,
            }
        }
        joint
    }

    /// One joint batch, with each joint member's outcome. `None`: a member left the joint
    /// step (its row or an event of its needs its own step); the others try again at once
    /// without it.
    async fn joint_step(
        &mut self,
        joint: &[usize],
    ) -> Result<Option<Vec<(usize, Outcome)>>, WorkerError> {
        let idle = || Some(joint.iter().map(|&i| (i, Outcome::Idle)).collect());
        let limit = self.config.batch_size;
        let mut ahead = None;
        if let Some(known) = self.known.take() {
            let events = self.read(&self.pool, known, limit).await?;
            if events.is_empty() {
                self.known = Some(known);
                return Ok(idle());
            }
            ahead = Some((known, events));
        }
        let mut tx = begin(&self.pool, &self.config)
            .await
            .map_err(self.failed("begin"))?;
        self.applying.clear();
        let batch = self.joint_batch(&mut tx, joint, ahead).await;
        match batch {
            Ok(Batch::Commit { moved, last }) => {
                let committed = tx.commit().await;
                for &i in &std::mem::take(&mut self.applying) {
                    self.members[i]
                        .worker
                        .projection
                        .finished(committed.is_ok());
                }
                committed.map_err(self.failed("commit"))?;
                for &(i, _) in &moved {
                    let worker = &mut self.members[i].worker;
                    worker.known = Some(last);
                    worker.attempts.clear();
                    worker
                        .checkpoints
                        .committed_with(CheckpointNotice::running(worker.name(), last).payload());
                }
                // Trusted only while every member is where the batch left them all.
                if moved.len() == joint.len() {
                    self.known = Some(last);
                }
                Ok(Some(
                    joint
                        .iter()
                        .map(|&i| match moved.iter().find(|&&(m, _)| m == i) {
                            Some(&(_, events)) => (i, Outcome::Progressed { events }),
                            None => (i, Outcome::Idle),
                        })
                        .collect(),
                ))
            }
            Ok(Batch::Rollback { idle: at_head }) => {
                tx.rollback().await.map_err(self.failed("roll back"))?;
                Ok(if at_head { idle() } else { None })
            }
            Ok(Batch::Failed { member, error }) => {
                let _ = tx.rollback().await;
                self.finished_in_vain();
                if error.is_transient() {
                    return Err(self.failed("apply")(error));
                }
                let name = self.members[member].worker.name();
                tracing::warn!(projection = name, error = %crate::telemetry::err_chain(&error),
                    "a joint batch failed; the projection steps alone to find the event");
                self.alone(member);
                Ok(None)
            }
            Err(err) => {
                let _ = tx.rollback().await;
                self.finished_in_vain();
                Err(err)
            }
        }
    }

    /// Tells the members whose `apply` ran in a batch that rolled back.
    fn finished_in_vain(&mut self) {
        for i in std::mem::take(&mut self.applying) {
            self.members[i].worker.projection.finished(false);
        }
    }

    /// Sends a member to step alone, from its row (not from what it last committed: its row
    /// is why it left).
    fn alone(&mut self, member: usize) {
        let member = &mut self.members[member];
        member.solo = true;
        member.worker.known = None;
    }

    async fn joint_batch(
        &mut self,
        tx: &mut PgConnection,
        joint: &[usize],
        ahead: Option<(Checkpoint, Vec<Read>)>,
    ) -> Result<Batch, WorkerError> {
        let names: Vec<&str> = joint
            .iter()
            .map(|&i| self.members[i].worker.name())
            .collect();
        // In the order of their names: two lockers of several rows never wait on each other
        // in a cycle.
        let rows = sqlx::query(
            "SELECT name, checkpoint_tx::text AS checkpoint_tx, checkpoint_position, state,
                    fencing_token, version
               FROM projection_state WHERE name = ANY($1) ORDER BY name FOR UPDATE",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await
        .map_err(self.failed("lock the projections"))?;
        let mut readers: Vec<(usize, Checkpoint)> = Vec::with_capacity(joint.len());
        for &i in joint {
            let member = &mut self.members[i];
            let row = rows
                .iter()
                .find(|row| row.try_get::<&str, _>("name").ok() == Some(member.worker.name()));
            match row.and_then(|row| stepping_at(row, &member.worker)) {
                Some(checkpoint) => readers.push((i, checkpoint)),
                // Fenced, paused, halted, another version: its own step acts on it.
                None => self.alone(i),
            }
        }
        if readers.len() < joint.len() {
            return Ok(Batch::Rollback { idle: false });
        }
        let Some(from) = readers.iter().map(|&(_, checkpoint)| checkpoint).min() else {
            return Ok(Batch::Rollback { idle: false });
        };
        let limit = self.config.batch_size;
        let events = match ahead {
            Some((at, events)) if at == from => events,
            _ => self.read(&mut *tx, from, limit).await?,
        };
        self.caught_up = events.len() < limit as usize;
        let Some(last) = events.last().map(|(stored, _)| stored.checkpoint()) else {
            return Ok(Batch::Rollback { idle: true });
        };
        let projections: Vec<(Checkpoint, &dyn Projection)> = readers
            .iter()
            .map(|&(i, checkpoint)| (checkpoint, &*self.members[i].worker.projection))
            .collect();
        let shares = distribute(events, &projections);
        drop(projections);
        if let Some(((i, _), _)) = readers
            .iter()
            .zip(&shares)
            .find(|(_, share)| share.poison.is_some())
        {
            // Its own step finds the event, retries and parks it.
            self.alone(*i);
            return Ok(Batch::Rollback { idle: false });
        }
        let mut moved = Vec::with_capacity(readers.len());
        for (&(i, _), share) in readers.iter().zip(&shares) {
            if share.read > 0 {
                moved.push((i, share.read));
            }
            if share.decoded.is_empty() {
                continue;
            }
            self.applying.push(i);
            let projection = Arc::clone(&self.members[i].worker.projection);
            if let Err(error) = projection.apply(&mut *tx, &share.decoded).await {
                return Ok(Batch::Failed { member: i, error });
            }
        }
        let (names, counts): (Vec<&str>, Vec<i64>) = moved
            .iter()
            .map(|&(i, read)| (self.members[i].worker.name(), read as i64))
            .unzip();
        sqlx::query(
            "UPDATE projection_state AS p
                SET checkpoint_tx = $2::text::xid8, checkpoint_position = $3, progress_at = now(),
                    events_applied = p.events_applied + u.events
               FROM UNNEST($1::text[], $4::int8[]) AS u(name, events)
              WHERE p.name = u.name",
        )
        .bind(&names)
        .bind(last.transaction_id.to_string())
        .bind(last.position)
        .bind(&counts)
        .execute(&mut *tx)
        .await
        .map_err(self.failed("move the checkpoints"))?;
        Ok(Batch::Commit { moved, last })
    }

    async fn read<'c>(
        &self,
        executor: impl sqlx::PgExecutor<'c>,
        after: Checkpoint,
        limit: u32,
    ) -> Result<Vec<Read>, WorkerError> {
        read_log(executor, self.types.as_deref(), after, limit)
            .await
            .map_err(self.failed("read the log"))
    }

    fn failed<E>(&self, operation: &'static str) -> impl FnOnce(E) -> WorkerError + use<E>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        // Built once per membership: this runs for every statement, failing or not.
        let projections = Arc::clone(&self.label);
        move |source| WorkerError::Joint {
            projections: projections.to_string(),
            operation,
            source: Box::new(source),
        }
    }

    /// Runs until `shutdown` turns true, as [`Worker::run`] does for one projection:
    /// applies batches while there are events, then waits for a wake-up, a second look
    /// ([`RECHECK_AFTER`]), a backoff's end or the poll interval.
    pub async fn run(mut self, wakeup: Wakeup, mut shutdown: watch::Receiver<bool>) {
        let mut notified = false;
        let mut rechecked: Option<Duration> = None;
        let poll = self.config.poll_interval;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let stepped = self.step().await;
            if stepped
                .iter()
                .any(|s| s.full && matches!(s.outcome, Ok(Outcome::Progressed { .. })))
            {
                continue;
            }
            let progressed = stepped
                .iter()
                .any(|s| matches!(s.outcome, Ok(Outcome::Progressed { .. })));
            let recheck = if progressed || notified {
                Some(RECHECK_AFTER)
            } else {
                rechecked
                    .map(|after| after * 2)
                    .filter(|&after| after < poll)
            };
            let due = self
                .members
                .iter()
                .filter_map(|m| m.due)
                .chain(self.joint_due)
                .min()
                .map(|due| due.saturating_duration_since(Instant::now()));
            let wait = [Some(poll), recheck, due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(poll);
            notified = false;
            rechecked = None;
            tokio::select! {
                () = wakeup.notified() => notified = true,
                () = tokio::time::sleep(wait) => {
                    rechecked = recheck;
                    if recheck.is_none() {
                        // No notification for a while: read the rows before the log again,
                        // in case an operator moved a checkpoint while nothing was appended.
                        self.forget();
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(projections = ?self.names(), "workers stopped");
        self.release();
    }

    fn forget(&mut self) {
        self.known = None;
        for member in &mut self.members {
            member.worker.known = None;
        }
    }
}

/// Whether a worker can step with others: it holds its lease and is in no recovery of its
/// own (a failed batch's careful re-run, a shortened batch before a failing event).
fn in_stride(worker: &Worker) -> bool {
    worker.lease.is_some()
        && !worker.outdated
        && worker.next_limit.is_none()
        && worker.careful_until.is_none()
}

/// The checkpoint `worker` applies from, if its locked row lets it step now: the row's token
/// is its lease's, its version the build's, and it is running.
fn stepping_at(row: &sqlx::postgres::PgRow, worker: &Worker) -> Option<Checkpoint> {
    let token: i64 = row.try_get("fencing_token").ok()?;
    let version: i32 = row.try_get("version").ok()?;
    let state: &str = row.try_get("state").ok()?;
    let lease = worker.lease.as_ref()?;
    if token != lease.token || version != worker.projection.version() || state != "running" {
        return None;
    }
    let checkpoint_tx: &str = row.try_get("checkpoint_tx").ok()?;
    Some(Checkpoint {
        transaction_id: checkpoint_tx.parse().ok()?,
        position: row.try_get("checkpoint_position").ok()?,
    })
}
