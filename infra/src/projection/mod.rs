//! The runtime every log follower with database-only effects runs on: projections (read
//! models) and the saga's trigger. What a projection is, and the worker that runs one.
//!
//! Deliberately not here: any particular read model (the `projections` crate).

pub mod copy;
pub mod events;
mod group;
pub mod status;
mod wake;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use crate::event_store::{Checkpoint, StoreError, StoredEvent, log};
use async_trait::async_trait;
use sqlx::PgConnection;

pub use copy::{CHUNK_ROWS, Copy, CopyChunk, CopySink};
pub use group::{Group, Stepped};
pub use wake::{EVENTS_CHANNEL, Wakeup, listen_for, listen_for_events};
pub use worker::{CHECKPOINTS_CHANNEL, CheckpointNotice, Outcome, Worker, WorkerError};

use events::{DomainEvent, decode, decode_text};

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

    /// The model held in memory, for a rebuild from empty tables (ADR 0009): `None` (the
    /// default) rebuilds with [`apply`](Self::apply), batch by batch.
    fn fold(&self) -> Option<Box<dyn Fold>> {
        None
    }
}

/// A projection's model kept in memory across batches, starting from empty tables: what
/// [`Projection::apply`] loads, evolves and writes back per batch, with the loads and the
/// rewrites of rows that change again later left out. The same evolve as `apply`, so both
/// build the same rows (the tests compare them).
///
/// Rows go out as `COPY` chunks ([`Copy`]) through a [`CopySink`], which writes them on
/// connections of its own while the fold goes on; anything else on `conn` (in
/// [`flush`](Self::flush)). Every connection's `search_path` selects the tables, which were
/// empty when the fold began, and none is in a transaction: what the fold writes commits
/// statement by statement (a long transaction would hold back the log's horizon every live
/// follower reads below). Those rows count only once the caller, after `flush` and after
/// every chunk was written, records its checkpoint; a build that starts over empties the
/// tables first.
#[async_trait]
pub trait Fold: Send {
    /// Folds a batch (the events the projection handles, in log order) into memory, and
    /// hands `out` the rows that are final already (those of insert-only tables).
    async fn fold(&mut self, out: &mut dyn CopySink, events: &[Decoded]) -> Result<(), ApplyError>;

    /// Rows held in memory: the caller flushes beyond its bound.
    fn held(&self) -> usize;

    /// Writes every row held, as new rows, and forgets them. Once `out` has written its
    /// chunks the tables hold the model up to the last event folded, as `apply` would have
    /// left them.
    async fn flush(
        &mut self,
        conn: &mut PgConnection,
        out: &mut dyn CopySink,
    ) -> Result<(), ApplyError>;
}

/// A table a projection owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// The columns that identify a row: the live table must have a unique index on exactly
    /// these (its loads and `ON CONFLICT` use it). Builds are compared row by row on them,
    /// and a rebuild fills the shadow copy with that index alone, building the table's
    /// other indexes from the finished rows (ADR 0006).
    pub key: &'static [&'static str],
    /// `apply` only ever inserts into this table, with no conflict target (`ON CONFLICT DO
    /// NOTHING`), and never reads it back: a rebuild then fills the shadow copy without any
    /// index, not even the key's, and builds them once, from the finished rows, before
    /// verifying. Maintaining a B-tree keyed by random UUIDs row by row was the largest cost
    /// of a rebuild (ADR 0006).
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

/// An event read from the log for projections, with its payload already decoded when it is
/// of a type the read asked for (from the payload's JSON text, no `serde_json::Value`; the
/// event's own `payload` is `Null` then). `None`: decode it from `payload` if it is handled
/// ([`decode_read`]).
pub type Read = (StoredEvent, Option<Result<DomainEvent, serde_json::Error>>);

/// Up to `limit` settled events after `after`; with `types` (what the projections reading
/// them consume), the payloads of those types decoded and the others not read at all.
/// Settled events never change, so this may run on any connection, ahead of the transaction
/// that applies them.
pub async fn read_log<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    types: Option<&[&str]>,
    after: Checkpoint,
    limit: u32,
) -> Result<Vec<Read>, StoreError> {
    match types {
        Some(types) => log::read_after_decoding(executor, after, limit, types, decode_text).await,
        None => log::read_after(executor, after, limit)
            .await
            .map(|events| events.into_iter().map(|stored| (stored, None)).collect()),
    }
}

/// [`read_log`] in two steps, for a reader that decodes one batch while it reads the next:
/// the rows of up to `limit` settled events after `after`, the payloads of `types` as text.
pub async fn read_log_rows<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    types: &[&str],
    after: Checkpoint,
    limit: u32,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    log::read_rows_after(executor, after, limit, types).await
}

/// The events of rows from [`read_log_rows`], as [`read_log`] returns them.
pub fn decode_log_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Read>, StoreError> {
    log::decode_read_rows(rows, decode_text)
}

/// Where the last of rows from [`read_log_rows`] lies in the log (`None` for no rows).
pub fn last_of_log_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Option<Checkpoint>, StoreError> {
    log::last_checkpoint(rows)
}

/// What an event [`read_log`] returned decodes to: an event of a type not read has no
/// payload, and fails like any undecodable one if a projection handles it after all.
pub fn decode_read(
    stored: &StoredEvent,
    read: Option<Result<DomainEvent, serde_json::Error>>,
) -> Result<DomainEvent, serde_json::Error> {
    read.unwrap_or_else(|| decode(stored))
}

/// The event types any of `projections` consumes, for one read that serves them all; `None`
/// (read every payload) when one of them does not list its types.
pub fn event_types_of<'a>(
    projections: impl IntoIterator<Item = &'a dyn Projection>,
) -> Option<Vec<&'static str>> {
    let mut types: Vec<&'static str> = Vec::new();
    for projection in projections {
        for event_type in projection.event_types()? {
            if !types.contains(event_type) {
                types.push(event_type);
            }
        }
    }
    Some(types)
}

/// What one batch, read once for several projections, holds for one of them.
#[derive(Debug, Default)]
pub struct Share {
    /// Events after the projection's checkpoint, whether it handles them or not.
    pub read: usize,
    /// The last of those: the projection's checkpoint once its share is applied.
    pub last: Option<Checkpoint>,
    /// The events it handles, in log order, up to `poison`.
    pub decoded: Vec<Decoded>,
    /// The first event it handles that cannot be decoded (and why); nothing after it is in
    /// `decoded`.
    pub poison: Option<(Arc<StoredEvent>, String)>,
}

/// Splits a batch between projections at their checkpoints: each gets the events after its
/// own. An event is decoded once; the projections that handle it share it (the decoded form
/// is cloned for all but the last).
pub fn distribute(events: Vec<Read>, readers: &[(Checkpoint, &dyn Projection)]) -> Vec<Share> {
    let mut shares: Vec<Share> = readers.iter().map(|_| Share::default()).collect();
    let mut handlers: Vec<usize> = Vec::with_capacity(readers.len());
    for (stored, read) in events {
        let at = stored.checkpoint();
        handlers.clear();
        for (i, (checkpoint, projection)) in readers.iter().enumerate() {
            if at <= *checkpoint {
                continue;
            }
            let share = &mut shares[i];
            share.read += 1;
            share.last = Some(at);
            if share.poison.is_none() && projection.handles(&stored) {
                handlers.push(i);
            }
        }
        let Some((&last, others)) = handlers.split_last() else {
            continue;
        };
        let stored = Arc::new(stored);
        match decode_read(&stored, read) {
            Ok(event) => {
                for &i in others {
                    shares[i].decoded.push(Decoded {
                        stored: Arc::clone(&stored),
                        event: event.clone(),
                    });
                }
                shares[last].decoded.push(Decoded { stored, event });
            }
            Err(err) => {
                let reason = err.to_string();
                for &i in &handlers {
                    shares[i].poison = Some((Arc::clone(&stored), reason.clone()));
                }
            }
        }
    }
    shares
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
