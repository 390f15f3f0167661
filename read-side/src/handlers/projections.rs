//! `GET /projections`: how every read model is doing.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::conditional;
use crate::http::error::QueryError;
use crate::queries;
use crate::queries::projections::ProjectionRow;
use crate::state::AppState;

/// A worker that has not said it is alive for this long is presumed gone.
const HEARTBEAT_STALE_SECONDS: i64 = 10;
/// A projection with pending events whose checkpoint has not moved for this long is stuck.
const PROGRESS_STALE_SECONDS: i64 = 30;

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionsReport {
    /// The highest position taken in the log.
    pub head_position: i64,
    pub projections: Vec<ProjectionStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionStatus {
    #[schema(example = "order_details")]
    pub name: String,
    pub version: i32,
    pub checkpoint: CheckpointView,
    /// Events in the log after the checkpoint.
    pub lag_events: i64,
    /// How long the oldest event not yet applied has waited (0 when none).
    pub lag_seconds: f64,
    /// `running`, `stalled` (no live worker, or pending events and no progress for 30 s),
    /// `halted` (on a poison event), `paused` or `rebuilding`.
    #[schema(example = "running")]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    /// As a string: a 64-bit transaction id does not fit a JSON number everywhere.
    pub transaction_id: String,
    pub position: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub heartbeat_at: DateTime<Utc>,
    /// Whether it said it was alive in the last 10 seconds.
    pub alive: bool,
}

fn status(row: ProjectionRow) -> ProjectionStatus {
    let age = |at: Option<DateTime<Utc>>| at.map(|at| (row.now - at).num_seconds());
    let alive = age(row.heartbeat_at).is_some_and(|seconds| seconds < HEARTBEAT_STALE_SECONDS);
    let stuck = row.lag_events > 0
        && age(row.progress_at).is_none_or(|seconds| seconds >= PROGRESS_STALE_SECONDS);
    let state = match row.state.as_str() {
        "running" if !alive || stuck => "stalled".to_owned(),
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

/// Every projection: version, checkpoint, lag, state, last error, parked events.
#[utoipa::path(get, path = "/projections", tag = "operations",
    responses((status = 200, description = "Every projection", body = ProjectionsReport)))]
#[tracing::instrument(skip_all)]
pub async fn list_projections(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let (rows, head_position) = queries::projections::status(&app.pool).await?;
    let report = ProjectionsReport {
        head_position,
        projections: rows.into_iter().map(status).collect(),
    };
    Ok(conditional::respond(&headers, &report))
}
