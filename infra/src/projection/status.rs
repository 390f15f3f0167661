//! How every projection is doing: checkpoint, lag, liveness, errors, parked events. Shared
//! by the query API's `GET /projections` and the operator CLI.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A worker that has not said it is alive for this long is presumed gone.
pub const HEARTBEAT_STALE_SECONDS: i64 = 10;
/// A projection with pending events whose checkpoint has not moved for this long is stuck.
pub const PROGRESS_STALE_SECONDS: i64 = 30;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    name: String,
    version: i32,
    checkpoint_tx: String,
    checkpoint_position: i64,
    state: String,
    owner: Option<String>,
    heartbeat_at: Option<DateTime<Utc>>,
    progress_at: Option<DateTime<Utc>>,
    events_applied: i64,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    parked: i64,
    skipped: i64,
    lag_events: i64,
    lag_seconds: f64,
    rebuilding: bool,
    now: DateTime<Utc>,
}

/// Where a projection is and how it is doing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub version: i32,
    pub checkpoint: CheckpointView,
    /// Events in the log after the checkpoint (counted up to a million).
    pub lag_events: i64,
    /// How long the oldest event not yet applied has waited (0 when none).
    pub lag_seconds: f64,
    /// `running`, `stalled` (no live worker, or pending events and no progress for 30 s),
    /// `rebuilding` (running, with a rebuild in progress beside it), `halted` (on a poison
    /// event) or `paused`.
    pub state: String,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Poison events waiting for an operator.
    pub parked: i64,
    /// Poison events the projection went past.
    pub skipped: i64,
    pub events_applied: i64,
    pub worker: Option<WorkerView>,
    pub progress_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointView {
    /// As a string: a 64-bit transaction id does not fit a JSON number everywhere.
    pub transaction_id: String,
    pub position: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub heartbeat_at: DateTime<Utc>,
    /// Whether it said it was alive in the last 10 seconds.
    pub alive: bool,
}

fn status_of(row: Row) -> ProjectionStatus {
    let age = |at: Option<DateTime<Utc>>| at.map(|at| (row.now - at).num_seconds());
    let alive = age(row.heartbeat_at).is_some_and(|seconds| seconds < HEARTBEAT_STALE_SECONDS);
    let stuck = row.lag_events > 0
        && age(row.progress_at).is_none_or(|seconds| seconds >= PROGRESS_STALE_SECONDS);
    let state = match row.state.as_str() {
        "running" if !alive || stuck => "stalled".to_owned(),
        "running" if row.rebuilding => "rebuilding".to_owned(),
        other => other.to_owned(),
    };
    ProjectionStatus {
        checkpoint: CheckpointView {
            transaction_id: row.checkpoint_tx,
            position: row.checkpoint_position,
        },
        worker: match (row.owner, row.heartbeat_at) {
            (Some(id), Some(heartbeat_at)) => Some(WorkerView {
                id,
                heartbeat_at,
                alive,
            }),
            _ => None,
        },
        name: row.name,
        version: row.version,
        lag_events: row.lag_events,
        lag_seconds: row.lag_seconds,
        state,
        last_error: row.last_error,
        last_error_at: row.last_error_at,
        parked: row.parked,
        skipped: row.skipped,
        events_applied: row.events_applied,
        progress_at: row.progress_at,
    }
}

/// Every projection (or the one named), and the log's head position.
pub async fn status(
    pool: &PgPool,
    name: Option<&str>,
) -> Result<(Vec<ProjectionStatus>, i64), sqlx::Error> {
    let rows = sqlx::query_as::<_, Row>(
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
                EXISTS (SELECT 1 FROM projection_rebuilds r WHERE r.name = p.name) AS rebuilding,
                now() AS now
           FROM projection_state p LEFT JOIN projection_heartbeats h ON h.name = p.name
          WHERE $1::text IS NULL OR p.name = $1
          ORDER BY p.name",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok((rows.into_iter().map(status_of).collect(), head))
}
