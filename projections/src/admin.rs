//! Operator actions on projections: pause, resume, and resolving parked events.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no projection named {0}")]
    UnknownProjection(String),
    #[error("no parked event {id} for projection {projection}")]
    UnknownDeadLetter { projection: String, id: i64 },
    #[error("{0}")]
    Refused(String),
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
}

async fn state_of(pool: &PgPool, name: &str) -> Result<String, AdminError> {
    sqlx::query_scalar("SELECT state FROM projection_state WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| AdminError::UnknownProjection(name.to_owned()))
}

async fn notify(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(infra::channels::CHECKPOINTS)
        .bind(name)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Stops a projection's worker from applying events (it keeps its lease and heartbeat).
pub async fn pause(pool: &PgPool, name: &str) -> Result<(), AdminError> {
    match state_of(pool, name).await?.as_str() {
        "paused" => return Ok(()),
        "halted" => {
            return Err(AdminError::Refused(format!(
                "{name} is halted on a poison event; resolve it with `dead-letters {name} --retry ID` or `--skip ID`"
            )));
        }
        _ => {}
    }
    sqlx::query("UPDATE projection_state SET state = 'paused' WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    notify(pool, name).await?;
    Ok(())
}

/// Lets a paused projection apply events again.
pub async fn resume(pool: &PgPool, name: &str) -> Result<(), AdminError> {
    match state_of(pool, name).await?.as_str() {
        "running" => return Ok(()),
        "halted" => {
            return Err(AdminError::Refused(format!(
                "{name} is halted on a poison event, not paused; resolve it with `dead-letters {name} --retry ID` or `--skip ID`"
            )));
        }
        _ => {}
    }
    sqlx::query("UPDATE projection_state SET state = 'running' WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    notify(pool, name).await?;
    Ok(())
}

/// A parked (or resolved) poison event.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub error: String,
    pub attempts: i32,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A projection's dead letters: the parked ones, or all with `all`.
pub async fn dead_letters(
    pool: &PgPool,
    name: &str,
    all: bool,
) -> Result<Vec<DeadLetter>, AdminError> {
    state_of(pool, name).await?;
    Ok(sqlx::query_as(
        "SELECT id, event_id, position, aggregate_type, aggregate_id, sequence, event_type, error,
                attempts, status, created_at, resolved_at
           FROM projection_dead_letters
          WHERE projection = $1 AND ($2 OR status = 'parked')
          ORDER BY id",
    )
    .bind(name)
    .bind(all)
    .fetch_all(pool)
    .await?)
}

async fn parked(pool: &PgPool, name: &str, id: i64) -> Result<DeadLetter, AdminError> {
    state_of(pool, name).await?;
    sqlx::query_as(
        "SELECT id, event_id, position, aggregate_type, aggregate_id, sequence, event_type, error,
                attempts, status, created_at, resolved_at
           FROM projection_dead_letters WHERE projection = $1 AND id = $2 AND status = 'parked'",
    )
    .bind(name)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| AdminError::UnknownDeadLetter {
        projection: name.to_owned(),
        id,
    })
}

/// Tries a parked event again (after a fix was deployed): the projection runs again and
/// applies it; if it still fails, it is parked again.
pub async fn retry(pool: &PgPool, name: &str, id: i64) -> Result<(), AdminError> {
    parked(pool, name, id).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE projection_dead_letters SET status = 'retried', resolved_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE projection_state SET state = 'running', last_error = NULL WHERE name = $1 AND state = 'halted'",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    notify(pool, name).await?;
    Ok(())
}

/// Goes past a parked event: the projection's checkpoint moves over it and it runs again.
/// Only the event the projection is halted on can be skipped.
pub async fn skip(pool: &PgPool, name: &str, id: i64) -> Result<(), AdminError> {
    let letter = parked(pool, name, id).await?;
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE projection_state p
            SET checkpoint_tx = e.transaction_id, checkpoint_position = e.position,
                state = 'running', last_error = NULL, progress_at = now()
           FROM events e
          WHERE p.name = $1 AND e.event_id = $2
            AND (e.transaction_id, e.position) > (p.checkpoint_tx, p.checkpoint_position)",
    )
    .bind(name)
    .bind(letter.event_id)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != 1 {
        tx.rollback().await?;
        return Err(AdminError::Refused(format!(
            "{name} has already gone past event {}; mark it resolved with --retry instead",
            letter.event_id
        )));
    }
    sqlx::query(
        "UPDATE projection_dead_letters SET status = 'skipped', resolved_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    notify(pool, name).await?;
    Ok(())
}
