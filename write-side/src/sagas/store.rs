//! `fulfillment_sagas`: each saga's state, its signals, its claim and its durable timer.
//!
//! Writers: the trigger inserts and signals (never touching `state`); the runner holding a
//! claim writes `state` (never touching the signals). Claims are leases: a runner that dies
//! loses its sagas when `claimed_until` passes, and another runner takes them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::ids::OrderId;
use sqlx::{PgConnection, PgPool, Row};

use super::order_fulfillment::{Fulfillment, Signals, Stage};

/// A claimed saga.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub saga: Fulfillment,
    pub signals: Signals,
    /// The signal count when read: a save that sees another count re-checks at once.
    pub seen: i64,
    pub attempts: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum SagaStoreError {
    #[error("failed to {operation} saga state")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the state of saga {order_id} is unreadable")]
    Decode {
        order_id: String,
        #[source]
        source: serde_json::Error,
    },
}

fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> SagaStoreError {
    move |source| SagaStoreError::Database { operation, source }
}

fn encode(saga: &Fulfillment) -> serde_json::Value {
    // Every field serialises (plain data), so this cannot fail in practice.
    serde_json::to_value(saga).unwrap_or(serde_json::Value::Null)
}

/// Starts a saga (due now); a second start of the same order does nothing.
pub async fn start(conn: &mut PgConnection, saga: &Fulfillment) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fulfillment_sagas (order_id, state, stage, next_step, due_at)
         VALUES ($1, $2, $3, 'reserve', now())
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(saga.order_id.as_uuid())
    .bind(encode(saga))
    .bind(saga.stage.name())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a signal and makes the saga due now.
pub async fn signal(
    conn: &mut PgConnection,
    order_id: OrderId,
    cancel: bool,
    ship: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fulfillment_sagas
            SET cancel_requested = cancel_requested OR $2, ship_requested = ship_requested OR $3,
                signals = signals + 1, due_at = now()
          WHERE order_id = $1",
    )
    .bind(order_id.as_uuid())
    .bind(cancel)
    .bind(ship)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims up to `limit` due sagas (due soonest first) that no live runner holds.
pub async fn claim(
    pool: &PgPool,
    runner: &str,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Claimed>, SagaStoreError> {
    let rows = sqlx::query(
        "UPDATE fulfillment_sagas s
            SET claimed_by = $1, claimed_until = now() + $2 * interval '1 millisecond'
          WHERE s.order_id IN (
                SELECT order_id FROM fulfillment_sagas
                 WHERE due_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
                 ORDER BY due_at
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED)
          RETURNING s.order_id, s.state, s.cancel_requested, s.ship_requested, s.signals, s.attempts",
    )
    .bind(runner)
    .bind(lease.as_millis() as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(database("claim"))?;
    rows.iter()
        .map(|row| {
            let order_id: uuid::Uuid = row.try_get("order_id").map_err(database("read"))?;
            let state: serde_json::Value = row.try_get("state").map_err(database("read"))?;
            Ok(Claimed {
                saga: serde_json::from_value(state).map_err(|source| SagaStoreError::Decode {
                    order_id: order_id.to_string(),
                    source,
                })?,
                signals: Signals {
                    cancel_requested: row.try_get("cancel_requested").map_err(database("read"))?,
                    ship_requested: row.try_get("ship_requested").map_err(database("read"))?,
                },
                seen: row.try_get("signals").map_err(database("read"))?,
                attempts: row.try_get("attempts").map_err(database("read"))?,
            })
        })
        .collect()
}

/// What a save writes besides the state.
#[derive(Debug, Clone)]
pub struct Save<'a> {
    pub next_step: Option<&'a str>,
    pub due_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<&'a str>,
    /// Give the claim up (the saga waits for its timer or a signal).
    pub release: bool,
    pub lease: Duration,
}

/// Saves the state if this runner still holds the claim. Returns the current signals, or
/// `None` when the claim was lost (the lease expired and another runner took the saga). On
/// the pool, or in the transaction of the step whose outcome it saves.
pub async fn save<'e>(
    db: impl sqlx::PgExecutor<'e>,
    runner: &str,
    claimed: &Claimed,
    save: Save<'_>,
) -> Result<Option<(Signals, i64)>, SagaStoreError> {
    let row = sqlx::query(
        "UPDATE fulfillment_sagas
            SET state = $3, stage = $4, next_step = $5,
                -- A signal that arrived meanwhile makes the saga due at once.
                due_at = CASE WHEN signals <> $6 THEN now() ELSE $7 END,
                attempts = $8,
                last_error = CASE WHEN $9::text IS NULL AND $8 = 0 THEN NULL ELSE COALESCE($9, last_error) END,
                last_error_at = CASE WHEN $9::text IS NULL THEN last_error_at ELSE now() END,
                stage_since = CASE WHEN stage <> $4 THEN now() ELSE stage_since END,
                updated_at = now(),
                claimed_by = CASE WHEN $10 THEN NULL ELSE claimed_by END,
                claimed_until = CASE WHEN $10 THEN NULL
                                     ELSE now() + $11 * interval '1 millisecond' END
          WHERE order_id = $1 AND claimed_by = $2
          RETURNING cancel_requested, ship_requested, signals",
    )
    .bind(claimed.saga.order_id.as_uuid())
    .bind(runner)
    .bind(encode(&claimed.saga))
    .bind(claimed.saga.stage.name())
    .bind(save.next_step)
    .bind(claimed.seen)
    .bind(save.due_at)
    .bind(save.attempts)
    .bind(save.last_error)
    .bind(save.release)
    .bind(save.lease.as_millis() as f64)
    .fetch_optional(db)
    .await
    .map_err(database("save"))?;
    row.map(|row| {
        Ok((
            Signals {
                cancel_requested: row.try_get("cancel_requested").map_err(database("read"))?,
                ship_requested: row.try_get("ship_requested").map_err(database("read"))?,
            },
            row.try_get("signals").map_err(database("read"))?,
        ))
    })
    .transpose()
}

/// What an operator's retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// A failed saga resumes from the stage it failed in.
    Resumed,
    /// A saga that was waiting for a retry (or stuck) runs now.
    Rescheduled,
    /// A completed or cancelled saga has nothing to retry.
    Finished,
    NotFound,
}

/// Makes a saga due now with a clean slate of attempts; a failed saga goes back to the stage
/// it failed in. Refuses to touch a saga a live runner holds (it is being worked on).
pub async fn retry(pool: &PgPool, order_id: OrderId) -> Result<Retried, SagaStoreError> {
    let mut tx = pool.begin().await.map_err(database("begin"))?;
    let row = sqlx::query(
        "SELECT state FROM fulfillment_sagas
          WHERE order_id = $1 AND (claimed_until IS NULL OR claimed_until < now())
          FOR UPDATE",
    )
    .bind(order_id.as_uuid())
    .fetch_optional(&mut *tx)
    .await
    .map_err(database("read"))?;
    let Some(row) = row else {
        tx.rollback().await.map_err(database("roll back"))?;
        return Ok(Retried::NotFound);
    };
    let state: serde_json::Value = row.try_get("state").map_err(database("read"))?;
    let mut saga: Fulfillment =
        serde_json::from_value(state).map_err(|source| SagaStoreError::Decode {
            order_id: order_id.to_string(),
            source,
        })?;
    let retried = match saga.stage {
        Stage::Completed | Stage::Cancelled => {
            tx.rollback().await.map_err(database("roll back"))?;
            return Ok(Retried::Finished);
        }
        Stage::Failed { stage, .. } => {
            saga.stage = *stage;
            Retried::Resumed
        }
        _ => Retried::Rescheduled,
    };
    sqlx::query(
        "UPDATE fulfillment_sagas
            SET state = $2, stage = $3, due_at = now(), attempts = 0, claimed_by = NULL,
                claimed_until = NULL, stage_since = now(), updated_at = now()
          WHERE order_id = $1",
    )
    .bind(order_id.as_uuid())
    .bind(encode(&saga))
    .bind(saga.stage.name())
    .execute(&mut *tx)
    .await
    .map_err(database("retry"))?;
    tx.commit().await.map_err(database("commit"))?;
    Ok(retried)
}
