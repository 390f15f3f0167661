//! The runtime every log follower with database-only effects runs on: projections (read
//! models) and the saga's trigger. What a projection is, and the worker that runs one.
//!
//! Deliberately not here: any particular read model (the `projections` crate).

pub mod events;
pub mod status;
mod wake;
mod worker;

use std::time::Duration;

use crate::event_store::StoredEvent;
use async_trait::async_trait;
use sqlx::PgConnection;

pub use wake::{EVENTS_CHANNEL, Wakeup, listen_for, listen_for_events};
pub use worker::{CHECKPOINTS_CHANNEL, CheckpointNotice, Outcome, Worker, WorkerError};

use events::DomainEvent;

/// What a projection does with an event it cannot apply after `max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Park the event and stop until an operator retries or skips it. The default: a read
    /// model that silently misses an event is wrong in ways nobody notices.
    Halt,
    /// Park the event and go on without it.
    Skip,
}

/// A read model kept from the global log.
///
/// `apply` runs inside the worker's transaction, with the checkpoint update that follows it,
/// so it must only write to the read-model database, and must be idempotent per row (a
/// guard on the last applied version), which keeps replays and rebuilds safe. It receives a
/// whole batch, so it can load the rows it touches once and write them back once: no
/// round trip per event. Its SQL names tables without a schema, so a rebuild can run it
/// against shadow tables by setting `search_path`.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable: it keys the checkpoint and names the tables.
    fn name(&self) -> &'static str;

    /// Bumped when the handler's output changes; the tables are suffixed `_v{version}`.
    fn version(&self) -> i32;

    fn poison_policy(&self) -> PoisonPolicy {
        PoisonPolicy::Halt
    }

    /// Whether this projection consumes the event, judged by aggregate and event type only.
    /// Events it does not consume are not even decoded, so an unreadable event halts only
    /// the projections that need it (and rebuilds skip them cheaply).
    fn handles(&self, stored: &StoredEvent) -> bool;

    /// The event types this projection consumes, when it can list them: the others are then
    /// read without their payload, and these are decoded straight from their JSON text (the
    /// `Decoded::stored` it gets then has no `payload` or `metadata`). `None` reads every
    /// payload (and `handles` filters).
    fn event_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// The tables this projection writes (rebuilt and swapped together). Empty for a
    /// projection whose effects must not be rebuilt (the saga's trigger).
    fn tables(&self) -> &'static [Table] {
        &[]
    }

    /// The views over those tables.
    fn views(&self) -> &'static [View] {
        &[]
    }

    /// Applies a batch of events (those `handles` accepted), in log order.
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError>;

    /// Called by the worker when a batch's transaction ended: `committed` when its effects
    /// (and the checkpoint) are durable, false when it rolled back or its commit failed (it
    /// may then have run [`apply`](Self::apply) zero, one or more times). What must follow
    /// only a committed batch (the saga trigger handing the sagas it started to the runner
    /// of its process) goes here; the default does nothing.
    fn finished(&self, committed: bool) {
        let _ = committed;
    }
}

/// A table a projection owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// The columns of its primary key, to compare builds row by row.
    pub key: &'static [&'static str],
    /// `apply` only ever inserts into this table, with no conflict target (`ON CONFLICT DO
    /// NOTHING`), and never reads it back: a rebuild then fills the shadow copy without its
    /// indexes and builds them once, from the finished rows, before verifying. Maintaining a
    /// B-tree keyed by random UUIDs row by row was the largest cost of a rebuild (ADR 0006).
    pub insert_only: bool,
}

/// A view the query API reads a projection through, re-created when a rebuild swaps the
/// tables (a view points at tables, not at names). `definition` is the `SELECT`, with table
/// names unqualified; the migration that first creates the view uses the same text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub name: &'static str,
    pub definition: &'static str,
}

/// An event with its decoded payload.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Shared, not copied, when several projections apply the same event (a rebuild's pass).
    /// For a projection that lists its `event_types`, `payload` and `metadata` are `Null`:
    /// the payload was deserialized from its JSON text into `event` without a
    /// `serde_json::Value` in between.
    pub stored: std::sync::Arc<StoredEvent>,
    pub event: DomainEvent,
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the read-model database failed")]
    Database(#[from] sqlx::Error),
    #[error("the event's payload cannot be decoded")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

impl ApplyError {
    /// Worth retrying as is (the database is restarting, a deadlock, a lost connection),
    /// as opposed to failing the same way every time (a poison event).
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Database(err) => is_transient(err),
            ApplyError::Decode(_) | ApplyError::Invalid(_) => false,
        }
    }
}

/// Connection trouble, timeouts, and the SQLSTATE classes that mean "try again":
/// 08 (connection), 40 (serialization failure, deadlock), 53 (resources), 57 (operator
/// intervention, e.g. the server shutting down).
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// Tuning of a worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Events per transaction.
    pub batch_size: u32,
    /// Attempts at one event before it is treated as poison.
    pub max_attempts: u32,
    /// How often to look for events when no notification arrives.
    pub poll_interval: Duration,
    /// How often a worker says it is alive.
    pub heartbeat_interval: Duration,
    /// The longest wait between retries after transient failures.
    pub max_backoff: Duration,
    /// Whether a batch's commit waits for its WAL to reach the disk. It need not (the
    /// default): a batch's writes and its checkpoint commit in one transaction, and
    /// PostgreSQL recovers asynchronous commits in order and whole, so a crash of PostgreSQL
    /// can only take the last batches back (those committed within about three
    /// `wal_writer_delay`s, 600 ms by default) together with their checkpoints, and the
    /// worker applies those events again: nothing is lost or applied twice. Any synchronous
    /// commit after a batch (the next command appended) makes the batch durable too.
    /// `PROJECTOR_SYNCHRONOUS_COMMIT=on` ([`crate::config::ProjectorSettings`]) sets it.
    pub synchronous_commit: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_attempts: 3,
            poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            synchronous_commit: false,
        }
    }
}
