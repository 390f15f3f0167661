//! `fulfillment_sagas`: each saga's state, its signals, its claim and its durable timer.
//!
//! Writers: the trigger inserts and signals (never touching `state`); the runner holding a
//! claim writes `state` (never touching the signals). Claims are leases: a runner that dies
//! loses its sagas when `claimed_until` passes, and another runner takes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::ids::OrderId;
use infra::batching::BatchQueue;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::oneshot;

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
    /// A group-committed save failed (the message of the statement's error).
    #[error("failed to save saga state: {0}")]
    Batch(String),
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

/// A claim the trigger takes on the sagas it starts, for the runner of its own process
/// (see [`super::runner::Handoff`]): the first `max` of them start claimed by `runner`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimOnStart<'a> {
    pub runner: &'a str,
    pub lease: Duration,
    pub max: usize,
}

/// Starts sagas (due now), in one statement; a second start of the same order does nothing.
/// With `claim`, the first `claim.max` start claimed (an ordinary lease: if the runner
/// never gets them, they are claimed again once it runs out). Returns the orders whose
/// sagas this call started claimed.
pub async fn start_many(
    conn: &mut PgConnection,
    sagas: &[Fulfillment],
    claim: Option<ClaimOnStart<'_>>,
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    if sagas.is_empty() {
        return Ok(Vec::new());
    }
    let order_ids: Vec<uuid::Uuid> = sagas.iter().map(|s| s.order_id.as_uuid()).collect();
    let states: Vec<serde_json::Value> = sagas.iter().map(encode).collect();
    let stages: Vec<&str> = sagas.iter().map(|s| s.stage.name()).collect();
    let max = claim.map_or(0, |c| c.max);
    let claimed: Vec<bool> = (0..sagas.len()).map(|i| i < max).collect();
    sqlx::query_scalar(
        "INSERT INTO fulfillment_sagas
                (order_id, state, stage, next_step, due_at, claimed_by, claimed_until)
         SELECT order_id, state, stage, 'reserve', now(),
                CASE WHEN claimed THEN $5 END,
                CASE WHEN claimed THEN now() + $6 * interval '1 millisecond' END
           FROM UNNEST($1::uuid[], $2::jsonb[], $3::text[], $4::bool[])
                AS s(order_id, state, stage, claimed)
         ON CONFLICT (order_id) DO NOTHING
         RETURNING CASE WHEN claimed_by IS NOT NULL THEN order_id END",
    )
    .bind(&order_ids)
    .bind(&states)
    .bind(&stages)
    .bind(&claimed)
    .bind(claim.map(|c| c.runner))
    .bind(claim.map_or(0.0, |c| c.lease.as_millis() as f64))
    .fetch_all(conn)
    .await
    .map(|ids: Vec<Option<uuid::Uuid>>| ids.into_iter().flatten().collect())
}

/// Gives up `runner`'s claims on sagas it never started working on (handed over as it
/// stopped), so another runner takes them now rather than when their leases end.
pub async fn release_unstarted(
    pool: &PgPool,
    runner: &str,
    order_ids: &[uuid::Uuid],
) -> Result<u64, SagaStoreError> {
    sqlx::query(
        "UPDATE fulfillment_sagas SET claimed_by = NULL, claimed_until = NULL
          WHERE order_id = ANY($2) AND claimed_by = $1",
    )
    .bind(runner)
    .bind(order_ids)
    .execute(pool)
    .await
    .map(|done| done.rows_affected())
    .map_err(database("release"))
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

/// One saga's save, owned, for [`save_many`].
#[derive(Debug, Clone)]
pub struct SaveRow {
    order_id: uuid::Uuid,
    state: serde_json::Value,
    stage: &'static str,
    next_step: Option<String>,
    seen: i64,
    due_at: Option<DateTime<Utc>>,
    attempts: i32,
    last_error: Option<String>,
    release: bool,
    lease_ms: f64,
}

impl SaveRow {
    pub fn new(claimed: &Claimed, save: Save<'_>) -> Self {
        Self {
            order_id: claimed.saga.order_id.as_uuid(),
            state: encode(&claimed.saga),
            stage: claimed.saga.stage.name(),
            next_step: save.next_step.map(str::to_owned),
            seen: claimed.seen,
            due_at: save.due_at,
            attempts: save.attempts,
            last_error: save.last_error.map(str::to_owned),
            release: save.release,
            lease_ms: save.lease.as_millis() as f64,
        }
    }
}

/// Saves many sagas' states in one statement (each saga at most once), where `runner` still
/// holds the claim. Returns the current signals of each saga saved; a saga missing from the answer
/// lost its claim.
pub async fn save_many(
    pool: &PgPool,
    runner: &str,
    rows: &[SaveRow],
) -> Result<HashMap<uuid::Uuid, (Signals, i64)>, SagaStoreError> {
    let order_ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.order_id).collect();
    let states: Vec<&serde_json::Value> = rows.iter().map(|r| &r.state).collect();
    let stages: Vec<&str> = rows.iter().map(|r| r.stage).collect();
    let next_steps: Vec<Option<&str>> = rows.iter().map(|r| r.next_step.as_deref()).collect();
    let seen: Vec<i64> = rows.iter().map(|r| r.seen).collect();
    let due_at: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.due_at).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
    let release: Vec<bool> = rows.iter().map(|r| r.release).collect();
    let lease: Vec<f64> = rows.iter().map(|r| r.lease_ms).collect();
    let saved = sqlx::query(
        "UPDATE fulfillment_sagas s
            SET state = r.state, stage = r.stage, next_step = r.next_step,
                -- A signal that arrived meanwhile makes the saga due at once.
                due_at = CASE WHEN s.signals <> r.seen THEN now() ELSE r.due_at END,
                attempts = r.attempts,
                last_error = CASE WHEN r.last_error IS NULL AND r.attempts = 0 THEN NULL
                                  ELSE COALESCE(r.last_error, s.last_error) END,
                last_error_at = CASE WHEN r.last_error IS NULL THEN s.last_error_at ELSE now() END,
                stage_since = CASE WHEN s.stage <> r.stage THEN now() ELSE s.stage_since END,
                updated_at = now(),
                claimed_by = CASE WHEN r.release THEN NULL ELSE s.claimed_by END,
                claimed_until = CASE WHEN r.release THEN NULL
                                     ELSE now() + r.lease * interval '1 millisecond' END
           FROM UNNEST($2::uuid[], $3::jsonb[], $4::text[], $5::text[], $6::bigint[],
                       $7::timestamptz[], $8::int[], $9::text[], $10::bool[], $11::float8[])
                AS r(order_id, state, stage, next_step, seen, due_at, attempts, last_error,
                     release, lease)
          WHERE s.order_id = r.order_id AND s.claimed_by = $1
          RETURNING s.order_id, s.cancel_requested, s.ship_requested, s.signals",
    )
    .bind(runner)
    .bind(&order_ids)
    .bind(&states)
    .bind(&stages)
    .bind(&next_steps)
    .bind(&seen)
    .bind(&due_at)
    .bind(&attempts)
    .bind(&errors)
    .bind(&release)
    .bind(&lease)
    .fetch_all(pool)
    .await
    .map_err(database("save"))?;
    saved
        .iter()
        .map(|row| {
            Ok((
                row.try_get("order_id").map_err(database("read"))?,
                (
                    Signals {
                        cancel_requested: row
                            .try_get("cancel_requested")
                            .map_err(database("read"))?,
                        ship_requested: row.try_get("ship_requested").map_err(database("read"))?,
                    },
                    row.try_get("signals").map_err(database("read"))?,
                ),
            ))
        })
        .collect()
}

/// A save waiting for its batch.
struct Pending {
    row: SaveRow,
    reply: oneshot::Sender<Result<Option<(Signals, i64)>, String>>,
}

/// Group commit of one runner's saves: the saves that arrive while one statement runs share
/// the next, in a transaction of their own (one statement, one commit).
pub struct SaveBatcher {
    pool: PgPool,
    runner: String,
    queue: BatchQueue<Pending>,
}

impl std::fmt::Debug for SaveBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveBatcher")
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl SaveBatcher {
    /// Sagas per statement at most.
    pub const MAX_BATCH: usize = 128;

    pub fn new(pool: PgPool, runner: String) -> Arc<Self> {
        Arc::new(Self {
            pool,
            runner,
            queue: BatchQueue::new(Self::MAX_BATCH),
        })
    }

    /// Saves the state if this runner still holds the claim, group-committed. Returns the
    /// current signals, or `None` when the claim was lost (the lease expired and another
    /// runner took the saga). A failed statement fails every save in it (each caller lets
    /// its claim expire; the step is repeated, harmlessly).
    pub async fn save(
        self: &Arc<Self>,
        claimed: &Claimed,
        save: Save<'_>,
    ) -> Result<Option<(Signals, i64)>, SagaStoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            row: SaveRow::new(claimed, save),
            reply,
        };
        if self.queue.push(pending) {
            let batcher = self.clone();
            tokio::spawn(async move { batcher.commit().await });
        }
        match answer.await {
            Ok(Ok(saved)) => Ok(saved),
            Ok(Err(message)) => Err(SagaStoreError::Batch(message)),
            Err(_) => Err(SagaStoreError::Batch(
                "the save batch ended without an answer".to_owned(),
            )),
        }
    }

    async fn commit(&self) {
        let _turn = self.queue.turn();
        while let Some(batch) = self.queue.next() {
            let rows: Vec<SaveRow> = batch.iter().map(|pending| pending.row.clone()).collect();
            match save_many(&self.pool, &self.runner, &rows).await {
                Ok(mut saved) => {
                    for pending in batch {
                        let _ = pending.reply.send(Ok(saved.remove(&pending.row.order_id)));
                    }
                }
                Err(err) => {
                    let message = infra::telemetry::err_chain(&err);
                    for pending in batch {
                        let _ = pending.reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }
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
