use chrono::{DateTime, Utc};
use infra::event_store::Checkpoint;
use sqlx::{PgPool, Row};

#[derive(Debug, sqlx::FromRow)]
pub struct ProjectionRow {
    pub name: String,
    pub version: i32,
    pub checkpoint_tx: String,
    pub checkpoint_position: i64,
    pub state: String,
    pub owner: Option<String>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub progress_at: Option<DateTime<Utc>>,
    pub events_applied: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub parked: i64,
    pub skipped: i64,
    /// Events after the checkpoint, settled or not (counted up to a million).
    pub lag_events: i64,
    /// How long the oldest event not yet applied has been waiting.
    pub lag_seconds: f64,
    pub now: DateTime<Utc>,
}

/// Every projection with its lag, and the log's head position.
pub async fn status(pool: &PgPool) -> Result<(Vec<ProjectionRow>, i64), sqlx::Error> {
    let rows = sqlx::query_as::<_, ProjectionRow>(
        "SELECT p.name, p.version, p.checkpoint_tx::text AS checkpoint_tx, p.checkpoint_position,
                p.state, h.owner, h.heartbeat_at, p.progress_at, p.events_applied, p.last_error,
                p.last_error_at,
                (SELECT count(*) FROM projection_dead_letters d
                  WHERE d.projection = p.name AND d.status = 'parked') AS parked,
                (SELECT count(*) FROM projection_dead_letters d
                  WHERE d.projection = p.name AND d.status = 'skipped') AS skipped,
                (SELECT count(*) FROM (
                    SELECT 1 FROM events e
                     WHERE (e.transaction_id, e.position) > (p.checkpoint_tx, p.checkpoint_position)
                     LIMIT 1000000) pending) AS lag_events,
                COALESCE(EXTRACT(EPOCH FROM now() - (
                    SELECT e.recorded_at FROM events e
                     WHERE (e.transaction_id, e.position) > (p.checkpoint_tx, p.checkpoint_position)
                     ORDER BY e.transaction_id, e.position LIMIT 1)), 0)::float8 AS lag_seconds,
                now() AS now
           FROM projection_state p LEFT JOIN projection_heartbeats h ON h.name = p.name
          ORDER BY p.name",
    )
    .fetch_all(pool)
    .await?;
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok((rows, head))
}

/// The projections' checkpoints and states, for the consistency watcher.
pub async fn checkpoints(pool: &PgPool) -> Result<Vec<(String, Checkpoint, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, checkpoint_tx::text AS checkpoint_tx, checkpoint_position, state
           FROM projection_state",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let transaction_id: String = row.try_get("checkpoint_tx")?;
            Ok((
                row.try_get("name")?,
                Checkpoint {
                    transaction_id: transaction_id.parse().unwrap_or(0),
                    position: row.try_get("checkpoint_position")?,
                },
                row.try_get("state")?,
            ))
        })
        .collect()
}

/// Where the event at `position` sits in the log, or `None` if there is no such event.
pub async fn locate(pool: &PgPool, position: i64) -> Result<Option<Checkpoint>, sqlx::Error> {
    let transaction_id: Option<String> =
        sqlx::query_scalar("SELECT transaction_id::text FROM events WHERE position = $1")
            .bind(position)
            .fetch_optional(pool)
            .await?;
    Ok(transaction_id.map(|transaction_id| Checkpoint {
        transaction_id: transaction_id.parse().unwrap_or(0),
        position,
    }))
}

/// Events after `from` up to and including `to`: how far a projection is behind a token.
pub async fn events_between(
    pool: &PgPool,
    from: Checkpoint,
    to: Checkpoint,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE (transaction_id, position) > ($1::text::xid8, $2)
            AND (transaction_id, position) <= ($3::text::xid8, $4)",
    )
    .bind(from.transaction_id.to_string())
    .bind(from.position)
    .bind(to.transaction_id.to_string())
    .bind(to.position)
    .fetch_one(pool)
    .await
}
