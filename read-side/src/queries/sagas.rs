use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct SagaRow {
    pub order_id: Uuid,
    pub stage: String,
    pub next_step: Option<String>,
    pub stage_since: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub claimed_by: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Which sagas to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter<'a> {
    /// In this stage (`failed` lists those an operator must retry).
    Stage(&'a str),
    /// Not finished, and either failing again and again or in one stage for too long.
    Stuck {
        stage_older_than_seconds: i64,
        attempts_at_least: i32,
    },
    /// Every saga that is not finished.
    Active,
}

/// Sagas matching `filter` in order id order, after the order id `after`.
pub async fn sagas(
    pool: &PgPool,
    filter: Filter<'_>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    let (stage, active, stuck) = match filter {
        Filter::Stage(stage) => (Some(stage), false, None),
        Filter::Active => (None, true, None),
        Filter::Stuck {
            stage_older_than_seconds,
            attempts_at_least,
        } => (
            None,
            false,
            Some((stage_older_than_seconds, attempts_at_least)),
        ),
    };
    sqlx::query_as::<_, SagaRow>(
        "SELECT order_id, stage, next_step, stage_since, due_at, attempts, last_error,
                last_error_at, claimed_by, updated_at
           FROM fulfillment_sagas
          WHERE ($1::text IS NULL OR stage = $1)
            AND (NOT $2 OR stage NOT IN ('completed', 'cancelled'))
            AND ($3::bigint IS NULL
                 OR (stage NOT IN ('completed', 'cancelled', 'confirmed', 'failed')
                     AND (stage_since < now() - $3 * interval '1 second' OR attempts >= $4)))
            AND order_id > COALESCE($5, '00000000-0000-0000-0000-000000000000'::uuid)
          ORDER BY order_id
          LIMIT $6",
    )
    .bind(stage)
    .bind(active)
    .bind(stuck.map(|(seconds, _)| seconds))
    .bind(stuck.map_or(0, |(_, attempts)| attempts))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
