use infra::event_store::Checkpoint;
use sqlx::{PgPool, Row};

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
