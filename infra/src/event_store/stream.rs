//! One aggregate's stream: load it (snapshot first), append to it, snapshot it. Every
//! function takes the caller's connection, so the caller decides what else commits with it.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
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
    let mut last_position = None;
    for row in rows {
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
        aggregate.apply(event);
        version = u64::try_from(sequence).unwrap_or(0);
        last_position = Some(row.try_get("position").map_err(decode_column)?);
    }
    Ok(Loaded {
        aggregate,
        version,
        last_position,
    })
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
    let stream = || StreamId::new(A::TYPE, aggregate_id);
    let first = i64::try_from(expected_version).unwrap_or(i64::MAX);
    let mut sequences = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for (offset, event) in (1i64..).zip(events) {
        sequences.push(first + offset);
        types.push(event.event_type());
        versions.push(event.event_version());
        payloads.push(
            serde_json::to_value(event).map_err(|source| StoreError::Encode {
                stream: stream(),
                source,
            })?,
        );
    }
    let extra = serde_json::to_value(&metadata.extra).map_err(|source| StoreError::Encode {
        stream: stream(),
        source,
    })?;
    let result = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, correlation_id, causation_id, idempotency_key)
         SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, $7, $8, $9, $10
           FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::jsonb[])
                AS e(sequence, event_type, event_version, payload)
         RETURNING position",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(&sequences)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&extra)
    .bind(metadata.correlation_id)
    .bind(metadata.causation_id)
    .bind(metadata.idempotency_key.as_deref())
    .fetch_all(&mut *conn)
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(err) if is_unique_violation(&err, "events_pkey") || is_lock_timeout(&err) => {
            return Err(AppendError::Conflict { stream: stream() });
        }
        Err(source) => {
            return Err(StoreError::Append {
                stream: stream(),
                source,
            }
            .into());
        }
    };
    let mut last_position = 0;
    for row in rows {
        let position: i64 = row
            .try_get("position")
            .map_err(|source| StoreError::Append {
                stream: stream(),
                source,
            })?;
        last_position = last_position.max(position);
    }
    Ok(Appended {
        version: expected_version + events.len() as u64,
        last_position,
    })
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
