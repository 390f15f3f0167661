//! `GET /sagas?state=`: fulfilment sagas an operator should look at.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use chrono::{DateTime, Utc};
use http_kit::{FieldError, ProblemBody};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::conditional;
use crate::http::error::QueryError;
use crate::http::params;
use crate::queries;
use crate::queries::sagas::Filter;
use crate::state::AppState;

/// A saga that has been in one stage this long (and is not waiting on purpose) is stuck.
const STUCK_AFTER_SECONDS: i64 = 60;
/// A saga that failed its step this many times in a row is stuck.
const STUCK_AFTER_ATTEMPTS: i32 = 5;

const STAGES: [&str; 10] = [
    "reserving",
    "recording",
    "charging",
    "confirming",
    "confirmed",
    "committing",
    "compensating",
    "completed",
    "cancelled",
    "failed",
];

#[derive(Debug, Serialize, ToSchema)]
pub struct SagasPage {
    pub items: Vec<SagaView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SagaView {
    pub order_id: Uuid,
    /// `reserving`, `recording`, `charging`, `confirming`, `confirmed`, `committing`,
    /// `compensating`, `completed`, `cancelled` or `failed`.
    #[schema(example = "charging")]
    pub stage: String,
    /// What it does next (e.g. `authorize`, `release:MUG-1`), if anything.
    pub next_step: Option<String>,
    /// In this stage since.
    pub since: DateTime<Utc>,
    /// When a runner looks at it next (its timer), if it waits for one.
    pub due_at: Option<DateTime<Utc>>,
    /// Failed attempts at the current step in a row.
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The runner working on it now, if any.
    pub claimed_by: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct SagaParams {
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const CURSOR_KIND: &str = "saga";

/// Fulfilment sagas by state: `failed` (needs an operator: `POST /sagas/{order_id}/retry` on
/// the command API), `stuck` (retrying for a while, or in one stage over a minute), `active`
/// (not finished, the default), or any stage name.
#[utoipa::path(get, path = "/sagas", tag = "operations",
    params(
        ("state" = Option<String>, Query, description = "`failed`, `stuck`, `active` (default) or a stage"),
        ("limit" = Option<i64>, Query, description = "1 to 100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "Matching sagas", body = SagasPage),
        (status = 400, description = "Unknown state, bad limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
pub async fn list_sagas(
    State(app): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let query: SagaParams = params::query(&uri)?;
    let filter = match query.state.as_deref() {
        None | Some("active") => Filter::Active,
        Some("stuck") => Filter::Stuck {
            stage_older_than_seconds: STUCK_AFTER_SECONDS,
            attempts_at_least: STUCK_AFTER_ATTEMPTS,
        },
        Some(stage) if STAGES.contains(&stage) => Filter::Stage(stage),
        Some(_) => {
            return Err(QueryError::InvalidQuery {
                errors: vec![FieldError::new(
                    "state",
                    format!(
                        "must be failed, stuck, active or one of {}",
                        STAGES.join(", ")
                    ),
                )],
            });
        }
    };
    let limit = params::limit(query.limit.as_deref())
        .map_err(|err| QueryError::InvalidQuery { errors: vec![err] })?;
    let after = params::decode_cursor(CURSOR_KIND, query.cursor.as_deref())?
        .map(|id| Uuid::try_parse(&id).map_err(|_| QueryError::InvalidCursor))
        .transpose()?;
    let mut rows = queries::sagas::sagas(&app.pool, filter, after, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|row| params::encode_cursor(CURSOR_KIND, &row.order_id.to_string()))
    } else {
        None
    };
    let page = SagasPage {
        items: rows
            .into_iter()
            .map(|row| SagaView {
                order_id: row.order_id,
                stage: row.stage,
                next_step: row.next_step,
                since: row.stage_since,
                due_at: row.due_at,
                attempts: row.attempts,
                last_error: row.last_error,
                last_error_at: row.last_error_at,
                claimed_by: row.claimed_by,
                updated_at: row.updated_at,
            })
            .collect(),
        next_cursor,
    };
    Ok(conditional::respond(&headers, &page))
}
