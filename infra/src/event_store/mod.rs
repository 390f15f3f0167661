//! The event store on PostgreSQL: postgres-es's `events` table, extended with an event id, a
//! global position, the inserting transaction's id and typed metadata.
//!
//! - [`stream`] loads one aggregate (snapshot, then the events after it) and appends to it,
//!   inside a transaction the caller owns, so other writes (an idempotency key) commit
//!   atomically with the events.
//! - [`log`] reads the global log, "every event after checkpoint C, at most N", in a total
//!   order that never skips an event committed out of position order.
//!
//! - [`notify`] wakes the log's followers after appends commit.
//!
//! Not here: deciding what to append (the `domain` crate) and retry policy (`commands`).

pub mod log;
pub mod notify;
pub mod stream;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use log::{Checkpoint, ConsistencyToken, EventLog, StoredEvent};

/// Facts about why an event was written, stored beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMetadata {
    /// Shared by every event of one business flow (an HTTP request and the saga steps it
    /// triggers), to trace a flow across aggregates.
    pub correlation_id: Option<Uuid>,
    /// The event (by `event_id`) whose handling issued the command, for saga steps.
    pub causation_id: Option<Uuid>,
    /// The `Idempotency-Key` of the request that wrote the event.
    pub idempotency_key: Option<String>,
    /// Free-form string pairs, stored in postgres-es's `metadata` column so that cqrs-es
    /// readers (which expect a string map) see them.
    pub extra: BTreeMap<String, String>,
}

/// Names one aggregate instance in messages: `order/0f8f…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamId {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl StreamId {
    pub fn new(aggregate_type: &str, aggregate_id: &str) -> Self {
        Self {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// A failure of the event store itself (never a rejected command).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to load {stream}")]
    Load {
        stream: StreamId,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to decode event {sequence} ({event_type} {event_version}) of {stream}")]
    Decode {
        stream: StreamId,
        sequence: i64,
        event_type: String,
        event_version: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to encode an event or the state of {stream}")]
    Encode {
        stream: StreamId,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to append to {stream}")]
    Append {
        stream: StreamId,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to write the snapshot of {stream}")]
    Snapshot {
        stream: StreamId,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to {operation} the command transaction")]
    Transaction {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to record idempotency key {key:?}")]
    Idempotency {
        key: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to read the global log")]
    ReadLog(#[source] sqlx::Error),
}

/// SQLSTATE 23505: a unique index refused the row.
pub(crate) fn is_unique_violation(err: &sqlx::Error, constraint: &str) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint))
}

/// SQLSTATE 55P03: `lock_timeout` expired while waiting for another transaction.
pub(crate) fn is_lock_timeout(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}
