//! One aggregate's stream: load it (snapshot first), append to it, snapshot it. Every
//! function takes the caller's connection, so the caller decides what else commits with it.

use std::collections::HashMap;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::{EventMetadata, StoreError, StreamId, is_lock_timeout, is_unique_violation};

/// When to snapshot an aggregate, and which snapshot format its state has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot each time the version crosses a multiple of this.
    pub every: u64,
    /// Bump when the aggregate's serde shape changes: older snapshots are then ignored and
    /// the state is rebuilt from events (and re-snapshotted at the next boundary).
    pub state_version: i32,
}

/// An aggregate rebuilt from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    pub aggregate: A,
    /// Sequence of the last event applied; 0 for an aggregate with no events.
    pub version: u64,
    /// Position of the last event, when it was read (not when the state came only from a
    /// snapshot).
    pub last_position: Option<i64>,
}

/// Loads an aggregate: its snapshot (when `snapshot` is given and one of that format
/// exists), then the events after it, upcast and applied in order.
pub async fn load<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    snapshot: Option<SnapshotPolicy>,
    upcasters: &[Box<dyn EventUpcaster>],
) -> Result<Loaded<A>, StoreError> {
    let stream = || StreamId::new(A::TYPE, aggregate_id);
    let mut aggregate = A::default();
    let mut version: u64 = 0;
    if let Some(policy) = snapshot {
        let row = sqlx::query(
            "SELECT last_sequence, payload FROM snapshots
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND state_version = $3",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(policy.state_version)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|source| StoreError::Load {
            stream: stream(),
            source,
        })?;
        if let Some(row) = row {
            let last_sequence: i64 =
                row.try_get("last_sequence")
                    .map_err(|source| StoreError::Load {
                        stream: stream(),
                        source,
                    })?;
            let payload: serde_json::Value =
                row.try_get("payload").map_err(|source| StoreError::Load {
                    stream: stream(),
                    source,
                })?;
            match serde_json::from_value::<A>(payload) {
                Ok(state) => {
                    aggregate = state;
                    version = u64::try_from(last_sequence).unwrap_or(0);
                }
                // A snapshot is a cache: when it cannot be read, the events still can.
                Err(err) => tracing::warn!(
                    stream = %stream(), error = %err,
                    "ignoring an unreadable snapshot; rebuilding from events"
                ),
            }
        }
    }
    let rows = sqlx::query(
        "SELECT sequence, event_type, event_version, payload, position FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
          ORDER BY sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| StoreError::Load {
        stream: stream(),
        source,
    })?;
    let mut loaded = Loaded {
        aggregate,
        version,
        last_position: None,
    };
    for row in &rows {
        apply_row(&mut loaded, aggregate_id, row, upcasters)?;
    }
    Ok(loaded)
}

/// Loads many aggregates of one type from their events alone (no snapshots), in one
/// statement: the uncached aggregates of a group commit. Every id gets an entry; an id
/// without events gets the default state at version 0.
pub async fn load_many<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_ids: &[&str],
    upcasters: &[Box<dyn EventUpcaster>],
) -> Result<HashMap<String, Loaded<A>>, StoreError> {
    let rows = sqlx::query(
        "SELECT aggregate_id, sequence, event_type, event_version, payload, position FROM events
          WHERE aggregate_type = $1 AND aggregate_id = ANY($2)
          ORDER BY aggregate_id, sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| StoreError::Load {
        stream: StreamId::new(A::TYPE, aggregate_ids.first().copied().unwrap_or("")),
        source,
    })?;
    let mut loaded: HashMap<String, Loaded<A>> = aggregate_ids
        .iter()
        .map(|id| {
            let empty = Loaded {
                aggregate: A::default(),
                version: 0,
                last_position: None,
            };
            ((*id).to_owned(), empty)
        })
        .collect();
    for row in &rows {
        let id: String = row
            .try_get("aggregate_id")
            .map_err(|source| StoreError::Load {
                stream: StreamId::new(A::TYPE, ""),
                source,
            })?;
        if let Some(state) = loaded.get_mut(&id) {
            apply_row(state, &id, row, upcasters)?;
        }
    }
    Ok(loaded)
}

/// Upcasts, decodes and applies one stored event (a row with `sequence`, `event_type`,
/// `event_version`, `payload`, `position`).
fn apply_row<A: Aggregate>(
    loaded: &mut Loaded<A>,
    aggregate_id: &str,
    row: &PgRow,
    upcasters: &[Box<dyn EventUpcaster>],
) -> Result<(), StoreError> {
    let stream = || StreamId::new(A::TYPE, aggregate_id);
    let decode_column = |source| StoreError::Load {
        stream: stream(),
        source,
    };
    let sequence: i64 = row.try_get("sequence").map_err(decode_column)?;
    let serialized = SerializedEvent::new(
        aggregate_id.to_owned(),
        usize::try_from(sequence).unwrap_or(0),
        A::TYPE.to_owned(),
        row.try_get("event_type").map_err(decode_column)?,
        row.try_get("event_version").map_err(decode_column)?,
        row.try_get("payload").map_err(decode_column)?,
        serde_json::Value::Null,
    );
    let serialized = upcast(serialized, upcasters);
    let event: A::Event =
        serde_json::from_value(serialized.payload).map_err(|source| StoreError::Decode {
            stream: stream(),
            sequence,
            event_type: serialized.event_type,
            event_version: serialized.event_version,
            source,
        })?;
    loaded.aggregate.apply(event);
    loaded.version = u64::try_from(sequence).unwrap_or(0);
    loaded.last_position = Some(row.try_get("position").map_err(decode_column)?);
    Ok(())
}

/// Applies every upcaster that claims the event, in order.
pub fn upcast(event: SerializedEvent, upcasters: &[Box<dyn EventUpcaster>]) -> SerializedEvent {
    upcasters.iter().fold(event, |event, upcaster| {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            upcaster.upcast(event)
        } else {
            event
        }
    })
}

/// The position of one event, for commands that appended nothing but must still answer
/// with the position of the aggregate's latest event.
pub async fn position_of(
    conn: &mut PgConnection,
    stream: &StreamId,
    sequence: u64,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(
        "SELECT position FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(&stream.aggregate_type)
    .bind(&stream.aggregate_id)
    .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
    .fetch_optional(conn)
    .await
    .map_err(|source| StoreError::Load {
        stream: stream.clone(),
        source,
    })
}

/// What an append produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The aggregate's version after the append: the sequence of its last event.
    pub version: u64,
    /// The global position of the last event appended.
    pub last_position: i64,
    /// The transaction that appended it (with the position, its place in the log).
    pub transaction_id: u64,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended at the same version first (or holds it uncommitted past
    /// `lock_timeout`). Reload and decide again.
    #[error("another writer appended to {stream} first")]
    Conflict { stream: StreamId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Appends `events` after `expected_version`, in one statement. Positions are taken in
/// sequence order. Nothing is committed: the caller commits the transaction.
pub async fn append<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    expected_version: u64,
    events: &[A::Event],
    metadata: &EventMetadata,
) -> Result<Appended, AppendError> {
    let appends = [StreamAppend {
        aggregate_id,
        expected_version,
        events,
        metadata,
    }];
    let appended = append_many::<A>(conn, &appends).await?;
    Ok(appended[0])
}

/// One stream's part of [`append_many`].
#[derive(Debug)]
pub struct StreamAppend<'a, E> {
    pub aggregate_id: &'a str,
    /// The stream's version before these events; the first gets the next sequence.
    pub expected_version: u64,
    /// At least one.
    pub events: &'a [E],
    pub metadata: &'a EventMetadata,
}

/// Appends to several streams of one aggregate type in one statement: the commands of a
/// group commit. A stream may appear more than once, each part continuing the previous
/// one's sequence. Positions are taken in the order of `appends`, and of events within
/// each. Returns what each part appended, in order. On a conflict nothing is appended and
/// the transaction is aborted; the conflict names the first stream (the database does not
/// say which one collided). Outside a transaction the statement commits on its own, before
/// this returns `Ok`.
pub async fn append_many<A: Aggregate>(
    conn: &mut PgConnection,
    appends: &[StreamAppend<'_, A::Event>],
) -> Result<Vec<Appended>, AppendError> {
    let first_stream = || {
        StreamId::new(
            A::TYPE,
            appends.first().map_or("", |append| append.aggregate_id),
        )
    };
    let rows = appends.iter().map(|append| append.events.len()).sum();
    let mut ids = Vec::with_capacity(rows);
    let mut sequences = Vec::with_capacity(rows);
    let mut types = Vec::with_capacity(rows);
    let mut versions = Vec::with_capacity(rows);
    let mut payloads = Vec::with_capacity(rows);
    let mut extras = Vec::with_capacity(rows);
    let mut correlations = Vec::with_capacity(rows);
    let mut causations = Vec::with_capacity(rows);
    let mut keys = Vec::with_capacity(rows);
    for append in appends {
        let encode = |source| StoreError::Encode {
            stream: StreamId::new(A::TYPE, append.aggregate_id),
            source,
        };
        let first = i64::try_from(append.expected_version).unwrap_or(i64::MAX);
        let extra = serde_json::to_value(&append.metadata.extra).map_err(encode)?;
        for (offset, event) in (1i64..).zip(append.events) {
            ids.push(append.aggregate_id);
            sequences.push(first + offset);
            types.push(event.event_type());
            versions.push(event.event_version());
            payloads.push(serde_json::to_value(event).map_err(encode)?);
            extras.push(extra.clone());
            correlations.push(append.metadata.correlation_id);
            causations.push(append.metadata.causation_id);
            keys.push(append.metadata.idempotency_key.as_deref());
        }
    }
    let result = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, correlation_id, causation_id, idempotency_key)
         SELECT $1, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload,
                e.metadata, e.correlation_id, e.causation_id, e.idempotency_key
           FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[],
                       $7::jsonb[], $8::uuid[], $9::uuid[], $10::text[])
                AS e(aggregate_id, sequence, event_type, event_version, payload, metadata,
                     correlation_id, causation_id, idempotency_key)
         RETURNING aggregate_id, sequence, position, transaction_id::text AS transaction_id",
    )
    .bind(A::TYPE)
    .bind(&ids)
    .bind(&sequences)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&extras)
    .bind(&correlations)
    .bind(&causations)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(err) if is_unique_violation(&err, "events_pkey") || is_lock_timeout(&err) => {
            return Err(AppendError::Conflict {
                stream: first_stream(),
            });
        }
        Err(source) => {
            return Err(StoreError::Append {
                stream: first_stream(),
                source,
            }
            .into());
        }
    };
    let mut positions = HashMap::with_capacity(rows.len());
    // One statement, one transaction: every row has the same, read from the first.
    let mut transaction_id = 0;
    for row in rows {
        let decode = |source| StoreError::Append {
            stream: first_stream(),
            source,
        };
        let id: String = row.try_get("aggregate_id").map_err(decode)?;
        let sequence: i64 = row.try_get("sequence").map_err(decode)?;
        let position: i64 = row.try_get("position").map_err(decode)?;
        if transaction_id == 0 {
            let transaction: String = row.try_get("transaction_id").map_err(decode)?;
            transaction_id = transaction.parse().map_err(|_| StoreError::Append {
                stream: first_stream(),
                source: sqlx::Error::Decode(format!("transaction id {transaction:?}").into()),
            })?;
        }
        positions.insert((id, sequence), position);
    }
    appends
        .iter()
        .map(|append| {
            let version = append.expected_version + append.events.len() as u64;
            let last = (
                append.aggregate_id.to_owned(),
                i64::try_from(version).unwrap_or(i64::MAX),
            );
            let last_position =
                positions
                    .get(&last)
                    .copied()
                    .ok_or_else(|| StoreError::Append {
                        stream: StreamId::new(A::TYPE, append.aggregate_id),
                        source: sqlx::Error::RowNotFound,
                    })?;
            Ok(Appended {
                version,
                last_position,
                transaction_id,
            })
        })
        .collect()
}

/// Whether moving from `before` to `after` crosses a snapshot boundary.
pub fn snapshot_due(policy: SnapshotPolicy, before: u64, after: u64) -> bool {
    policy.every > 0 && before / policy.every != after / policy.every
}

/// Stores `aggregate` as the snapshot at `version`, replacing an older one.
pub async fn save_snapshot<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    aggregate: &A,
    version: u64,
    policy: SnapshotPolicy,
) -> Result<(), StoreError> {
    let stream = || StreamId::new(A::TYPE, aggregate_id);
    let payload = serde_json::to_value(aggregate).map_err(|source| StoreError::Encode {
        stream: stream(),
        source,
    })?;
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                payload, state_version)
         VALUES ($1, $2, $3, 1, $4, $5)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = EXCLUDED.last_sequence,
                current_snapshot = snapshots.current_snapshot + 1,
                payload = EXCLUDED.payload,
                state_version = EXCLUDED.state_version
          WHERE snapshots.last_sequence < EXCLUDED.last_sequence
             OR snapshots.state_version <> EXCLUDED.state_version",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .bind(payload)
    .bind(policy.state_version)
    .execute(conn)
    .await
    .map_err(|source| StoreError::Snapshot {
        stream: stream(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_due_when_a_boundary_is_crossed() {
        let policy = SnapshotPolicy {
            every: 100,
            state_version: 1,
        };
        assert!(!snapshot_due(policy, 0, 99));
        assert!(snapshot_due(policy, 99, 100));
        assert!(snapshot_due(policy, 98, 102));
        assert!(!snapshot_due(policy, 100, 101));
    }
}
