//! The global log: every event of every aggregate in one total order that readers can follow
//! with a checkpoint and never skip an event.
//!
//! Positions come from an identity column, taken at INSERT but visible at COMMIT, so a
//! reader that checkpoints "the highest position I saw" jumps past a lower position whose
//! transaction commits later. Instead, each row records its inserting transaction id
//! (`xid8`), and the reader:
//! - reads only rows whose transaction is older than every transaction still running
//!   (`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`): all of them are settled,
//!   committed or rolled back, so nothing can appear below them any more;
//! - orders by `(transaction_id, position)` and checkpoints that pair.
//!
//! The cost: a transaction that stays open holds every reader back (its events and all
//! later ones wait). Writers take no global lock. Lag is visible as the distance between a
//! reader's checkpoint and [`EventLog::head`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Row};
use uuid::Uuid;

use super::StoreError;

/// A reader's place in the global log: the last `(transaction_id, position)` it processed.
/// Ordered the way the log is, so `a < b` means `a` comes first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Checkpoint {
    pub transaction_id: u64,
    pub position: i64,
}

impl Checkpoint {
    /// Before the first event.
    pub const START: Checkpoint = Checkpoint {
        transaction_id: 0,
        position: 0,
    };
}

/// What a client sends back to read its own write (`X-Consistency-Token`): the position of
/// the event it waits for and, when the writer knew it, the transaction that appended it,
/// which is the event's place in log order, so the reader need not look it up. Written
/// `<position>` or `<position>.<transaction id>`; commands answer with the second form when
/// they appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub position: i64,
    pub transaction_id: Option<u64>,
}

impl ConsistencyToken {
    /// The event's place in the log, when the token carries it.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.transaction_id.map(|transaction_id| Checkpoint {
            transaction_id,
            position: self.position,
        })
    }
}

impl std::fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.transaction_id {
            Some(transaction_id) => write!(f, "{}.{transaction_id}", self.position),
            None => write!(f, "{}", self.position),
        }
    }
}

/// A token that is not `<position>` or `<position>.<transaction id>` (positive integers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a consistency token is `<position>` or `<position>.<transaction id>`, positive integers")]
pub struct InvalidToken;

impl std::str::FromStr for ConsistencyToken {
    type Err = InvalidToken;

    fn from_str(text: &str) -> Result<Self, InvalidToken> {
        let number = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .filter(|n| *n > 0)
                .ok_or(InvalidToken)
        };
        let (position, transaction_id) = match text.split_once('.') {
            Some((position, transaction_id)) => (position, Some(number(transaction_id)?)),
            None => (text, None),
        };
        Ok(Self {
            position: i64::try_from(number(position)?).map_err(|_| InvalidToken)?,
            transaction_id,
        })
    }
}

/// One event as stored, with everything the global log knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub position: i64,
    pub transaction_id: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The checkpoint that says "this event is done".
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }

    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            ..Self::from_row_without_payload(row)?
        })
    }

    /// Every column but `payload` and `metadata` (left `Null`).
    fn from_row_without_payload(row: &PgRow) -> Result<Self, sqlx::Error> {
        let transaction_id: String = row.try_get("transaction_id_text")?;
        Ok(Self {
            event_id: row.try_get("event_id")?,
            position: row.try_get("position")?,
            transaction_id: transaction_id
                .parse()
                .map_err(|err| sqlx::Error::ColumnDecode {
                    index: "transaction_id_text".to_owned(),
                    source: Box::new(err),
                })?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            correlation_id: row.try_get("correlation_id")?,
            causation_id: row.try_get("causation_id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }
}

/// Rows of `COLUMNS` as events.
fn decode_rows(rows: &[PgRow]) -> Result<Vec<StoredEvent>, StoreError> {
    rows.iter()
        .map(StoredEvent::from_row)
        .collect::<Result<_, _>>()
        .map_err(StoreError::ReadLog)
}

// The text form of the xid8 gets its own alias: an output column named `transaction_id` would
// capture `ORDER BY transaction_id` and sort transaction ids as text ("1000" < "999").
const COLUMNS: &str = "event_id, position, transaction_id::text AS transaction_id_text, aggregate_type, \
    aggregate_id, sequence, event_type, event_version, payload, metadata, correlation_id, \
    causation_id, idempotency_key, recorded_at";

/// Reads up to `limit` events after `after`, in log order, on any connection or transaction.
///
/// Returns only settled events: it may return fewer than `limit` (even none) while a
/// transaction that inserted events is still open, and returns them once it commits. Every
/// committed event is returned exactly once to a reader that feeds each batch's last
/// checkpoint back in.
pub async fn read_after<'c>(
    executor: impl PgExecutor<'c>,
    after: Checkpoint,
    limit: u32,
) -> Result<Vec<StoredEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events
          WHERE (transaction_id, position) > ($1::text::xid8, $2)
            AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY events.transaction_id, events.position
          LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(after.transaction_id.to_string())
        .bind(after.position)
        .bind(i64::from(limit))
        .fetch_all(executor)
        .await
        .map_err(StoreError::ReadLog)?;
    decode_rows(&rows)
}

/// Like [`read_after`], for a reader that turns payloads into its own types and reads only
/// some: the payload of each event of `payload_types` goes from the row's JSON text straight
/// through `decode` (no `serde_json::Value` is built, walked and dropped for it), and other
/// types' payloads are not even sent. Every event still arrives, in order, so the checkpoint
/// stays exact; each comes with `payload` and `metadata` set to `Null` and with what `decode`
/// made of its payload (`None` for the other types).
pub async fn read_after_decoding<'c, T>(
    executor: impl PgExecutor<'c>,
    after: Checkpoint,
    limit: u32,
    payload_types: &[&str],
    decode: impl Fn(&StoredEvent, &str) -> T,
) -> Result<Vec<(StoredEvent, Option<T>)>, StoreError> {
    let rows = read_rows_after(executor, after, limit, payload_types).await?;
    decode_read_rows(&rows, decode)
}

/// What [`read_after_decoding`] reads, as rows, before anything is decoded: a caller that
/// reads ahead decodes one batch (with [`decode_read_rows`]) while it reads the next, after
/// [`last_checkpoint`].
pub async fn read_rows_after<'c>(
    executor: impl PgExecutor<'c>,
    after: Checkpoint,
    limit: u32,
    payload_types: &[&str],
) -> Result<Vec<PgRow>, StoreError> {
    let sql =
        "SELECT event_id, position, transaction_id::text AS transaction_id_text, aggregate_type,
                aggregate_id, sequence, event_type, event_version,
                CASE WHEN event_type = ANY($4) THEN payload::text END AS payload_text,
                correlation_id, causation_id, idempotency_key, recorded_at
           FROM events
          WHERE (transaction_id, position) > ($1::text::xid8, $2)
            AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY events.transaction_id, events.position
          LIMIT $3";
    sqlx::query(sql)
        .bind(after.transaction_id.to_string())
        .bind(after.position)
        .bind(i64::from(limit))
        .bind(payload_types)
        .fetch_all(executor)
        .await
        .map_err(StoreError::ReadLog)
}

/// The place in the log of the last of `rows` (from [`read_rows_after`]), if any.
pub fn last_checkpoint(rows: &[PgRow]) -> Result<Option<Checkpoint>, StoreError> {
    rows.last()
        .map(|row| StoredEvent::from_row_without_payload(row).map(|e| e.checkpoint()))
        .transpose()
        .map_err(StoreError::ReadLog)
}

/// The events of `rows` (from [`read_rows_after`]), each payload read decoded.
pub fn decode_read_rows<T>(
    rows: &[PgRow],
    decode: impl Fn(&StoredEvent, &str) -> T,
) -> Result<Vec<(StoredEvent, Option<T>)>, StoreError> {
    rows.iter()
        .map(|row| {
            let stored = StoredEvent::from_row_without_payload(row)?;
            let payload: Option<&str> = row.try_get("payload_text")?;
            let decoded = payload.map(|payload| decode(&stored, payload));
            Ok((stored, decoded))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::ReadLog)
}

/// The global log on a pool.
#[derive(Debug, Clone)]
pub struct EventLog {
    pool: PgPool,
}

impl EventLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// See [`read_after`].
    pub async fn read_after(
        &self,
        after: Checkpoint,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        read_after(&self.pool, after, limit).await
    }

    /// The highest position taken so far (0 when empty), committed or not: the far end of
    /// the log, for lag reporting.
    pub async fn head(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::ReadLog)
    }

    /// Committed events with positions from `from` to `to` (both included), in log order.
    pub async fn read_positions(&self, from: i64, to: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE position BETWEEN $1 AND $2
              ORDER BY events.transaction_id, events.position"
        );
        let rows = sqlx::query(&sql)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::ReadLog)?;
        decode_rows(&rows)
    }

    /// Committed events matching an SQL condition over the `events` columns, in log order
    /// (for debugging tools; `condition` must come from code, and may use `$1`, bound to
    /// `argument`).
    pub async fn read_where(
        &self,
        condition: &str,
        argument: &str,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {condition}
              ORDER BY events.transaction_id, events.position"
        );
        let rows = sqlx::query(&sql)
            .bind(argument)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::ReadLog)?;
        decode_rows(&rows)
    }

    /// The event at `position`, if it is committed.
    pub async fn event_at(&self, position: i64) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE position = $1");
        let row = sqlx::query(&sql)
            .bind(position)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::ReadLog)?;
        row.as_ref()
            .map(StoredEvent::from_row)
            .transpose()
            .map_err(StoreError::ReadLog)
    }

    /// Up to `limit` committed events of one aggregate before `before` (a sequence number;
    /// `None`: from the end), newest first: for finding a recent event in a long stream
    /// without reading all of it.
    pub async fn read_stream_backwards(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence < $3
              ORDER BY sequence DESC
              LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::ReadLog)?;
        decode_rows(&rows)
    }

    /// Every committed event of one aggregate, in sequence order (for debugging and tests).
    pub async fn read_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2
              ORDER BY sequence"
        );
        let rows = sqlx::query(&sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::ReadLog)?;
        decode_rows(&rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consistency_token_reads_back_what_it_says() {
        let full = ConsistencyToken {
            position: 1043,
            transaction_id: Some(18_446_744_073_709_551_000),
        };
        assert_eq!(full.to_string(), "1043.18446744073709551000");
        assert_eq!("1043.18446744073709551000".parse(), Ok(full));
        assert_eq!(
            full.checkpoint(),
            Some(Checkpoint {
                transaction_id: 18_446_744_073_709_551_000,
                position: 1043
            })
        );
        let bare = ConsistencyToken {
            position: 7,
            transaction_id: None,
        };
        assert_eq!(bare.to_string(), "7");
        assert_eq!("7".parse(), Ok(bare));
        assert_eq!(bare.checkpoint(), None);
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.",
            ".1",
            "1.0",
            "1.2.3",
            "1.x",
            "x",
            " 1",
            "1e3",
            "9223372036854775808",
            "1.18446744073709551616",
        ] {
            assert_eq!(
                bad.parse::<ConsistencyToken>(),
                Err(InvalidToken),
                "{bad:?}"
            );
        }
    }
}
