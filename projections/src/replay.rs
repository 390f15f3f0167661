//! Replay for debugging: how an aggregate got into its state, what a projection makes of a
//! range of events, which events made a read-model row, what a saga did. Read-only: scratch
//! work happens in a transaction that is rolled back.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::inventory::InventoryItem;
use domain::order::Order;
use domain::payment::Payment;
use infra::event_store::{EventLog, StoreError, StoredEvent};
use infra::projection::events::decode;
use infra::projection::{Decoded, Projection};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::rebuild;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("unknown aggregate type {0:?}: use order, inventory_item or payment")]
    UnknownAggregateType(String),
    #[error("{0}")]
    NotFound(String),
    #[error("event {sequence} of the stream cannot be decoded")]
    Decode {
        sequence: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the projection failed on these events")]
    Apply(#[source] rebuild::RebuildError),
    #[error("failed to read the log")]
    Log(#[from] StoreError),
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
}

/// How far to replay a stream.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    End,
    Version(i64),
    At(DateTime<Utc>),
}

/// One event of a stream, and the aggregate's state before and after it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStep {
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub event_id: Uuid,
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub payload: Value,
    #[serde(skip)]
    pub state_before: Value,
    pub state: Value,
}

fn fold<A: Aggregate>(events: Vec<StoredEvent>) -> Result<Vec<StreamStep>, ReplayError> {
    let mut aggregate = A::default();
    let mut steps = Vec::with_capacity(events.len());
    for stored in events {
        let state_before = serde_json::to_value(&aggregate).unwrap_or(Value::Null);
        let event: A::Event = serde_json::from_value(stored.payload.clone()).map_err(|source| {
            ReplayError::Decode {
                sequence: stored.sequence,
                source,
            }
        })?;
        aggregate.apply(event);
        steps.push(StreamStep {
            sequence: stored.sequence,
            event_type: stored.event_type,
            event_version: stored.event_version,
            event_id: stored.event_id,
            position: stored.position,
            recorded_at: stored.recorded_at,
            correlation_id: stored.correlation_id,
            causation_id: stored.causation_id,
            payload: stored.payload,
            state_before,
            state: serde_json::to_value(&aggregate).unwrap_or(Value::Null),
        });
    }
    Ok(steps)
}

/// Replays one aggregate's stream, event by event.
pub async fn stream(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
    until: Until,
) -> Result<Vec<StreamStep>, ReplayError> {
    let mut events = EventLog::new(pool.clone())
        .read_stream(aggregate_type, id)
        .await?;
    events.retain(|event| match until {
        Until::End => true,
        Until::Version(version) => event.sequence <= version,
        Until::At(at) => event.recorded_at <= at,
    });
    if events.is_empty() {
        return Err(ReplayError::NotFound(format!(
            "no events for {aggregate_type} {id} in that range"
        )));
    }
    match aggregate_type {
        t if t == Order::TYPE => fold::<Order>(events),
        t if t == InventoryItem::TYPE => fold::<InventoryItem>(events),
        t if t == Payment::TYPE => fold::<Payment>(events),
        other => Err(ReplayError::UnknownAggregateType(other.to_owned())),
    }
}

/// A row the replayed range produced, beside the live row with the same key.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedRow {
    pub table: String,
    pub key: Value,
    /// `added` (no live row), `same` or `differs`.
    pub status: &'static str,
    pub replayed: Value,
    pub live: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectionReplay {
    pub projection: String,
    pub from: i64,
    pub to: i64,
    pub events_read: usize,
    pub events_applied: usize,
    pub rows: Vec<ComparedRow>,
}

/// Runs `projection` over the events with positions `from..=to`, starting from empty tables
/// in a scratch schema, and compares what it produced with live. Everything is rolled back.
pub async fn projection(
    pool: &PgPool,
    projection: &dyn Projection,
    from: i64,
    to: i64,
) -> Result<ProjectionReplay, ReplayError> {
    let tables = projection.tables();
    if tables.is_empty() {
        return Err(ReplayError::NotFound(format!(
            "projection {} has no tables",
            projection.name()
        )));
    }
    let events = EventLog::new(pool.clone()).read_positions(from, to).await?;
    let mut decoded = Vec::new();
    for stored in &events {
        if projection.handles(stored) {
            let event = decode(stored).map_err(|source| ReplayError::Decode {
                sequence: stored.sequence,
                source,
            })?;
            decoded.push(Decoded {
                stored: std::sync::Arc::new(stored.clone()),
                event,
            });
        }
    }
    let schema = format!("replay_{}_{}", projection.name(), std::process::id());
    let mut tx = pool.begin().await?;
    rebuild::create_shadow(&mut tx, &schema, tables).await?;
    sqlx::query(&format!("SET LOCAL search_path TO \"{schema}\", public"))
        .execute(&mut *tx)
        .await?;
    if !decoded.is_empty() {
        projection
            .apply(&mut tx, &decoded)
            .await
            .map_err(|source| {
                ReplayError::Apply(rebuild::RebuildError::Poison {
                    event_id: decoded[0].stored.event_id,
                    position: decoded[0].stored.position,
                    source,
                })
            })?;
    }
    let mut rows = Vec::new();
    for table in tables {
        let key = table
            .key
            .iter()
            .map(|c| format!("t.\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT s.k, s.r, l.r AS live
               FROM (SELECT jsonb_build_array({key}) AS k, to_jsonb(t) AS r FROM \"{schema}\".\"{name}\" t) s
               LEFT JOIN (SELECT jsonb_build_array({key}) AS k, to_jsonb(t) AS r FROM public.\"{name}\" t) l
                 ON l.k = s.k
              ORDER BY s.k::text",
            name = table.name
        );
        for row in sqlx::query(&sql).fetch_all(&mut *tx).await? {
            let replayed: Value = row.try_get("r")?;
            let live: Option<Value> = row.try_get("live")?;
            let status = match &live {
                None => "added",
                Some(live) if *live == replayed => "same",
                Some(_) => "differs",
            };
            rows.push(ComparedRow {
                table: table.name.to_owned(),
                key: row.try_get("k")?,
                status,
                replayed,
                live,
            });
        }
    }
    tx.rollback().await?;
    Ok(ProjectionReplay {
        projection: projection.name().to_owned(),
        from,
        to,
        events_read: events.len(),
        events_applied: decoded.len(),
        rows,
    })
}

/// An event, briefly.
#[derive(Debug, Clone, Serialize)]
pub struct EventLine {
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub payload: Value,
}

impl From<StoredEvent> for EventLine {
    fn from(stored: StoredEvent) -> Self {
        Self {
            position: stored.position,
            recorded_at: stored.recorded_at,
            aggregate_type: stored.aggregate_type,
            aggregate_id: stored.aggregate_id,
            sequence: stored.sequence,
            event_type: stored.event_type,
            payload: stored.payload,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RowHistory {
    pub projection: String,
    pub key: String,
    /// The live row, if there is one.
    pub row: Option<Value>,
    pub events: Vec<EventLine>,
}

/// The SQL that finds a row's events, and the one that reads the row, by projection. For
/// `sales_daily` the key is `DAY/CURRENCY` and the events are those counted that day.
fn row_queries(projection: &str) -> Option<(&'static str, &'static str)> {
    Some(match projection {
        "inventory" => (
            "aggregate_type = 'inventory_item' AND aggregate_id = $1",
            "SELECT to_jsonb(t) FROM inventory t WHERE sku = $1",
        ),
        "customer_orders" => (
            "aggregate_type = 'order' AND aggregate_id = $1",
            "SELECT to_jsonb(t) FROM customer_orders t WHERE order_id::text = $1",
        ),
        "order_details" => (
            "(aggregate_type IN ('order', 'payment') AND aggregate_id = $1)
             OR (aggregate_type = 'inventory_item'
                 AND event_type IN ('StockReserved', 'StockReleased', 'StockCommitted')
                 AND jsonb_path_exists(payload, '$.*.order_id ? (@ == $k)', jsonb_build_object('k', $1::text)))",
            "SELECT to_jsonb(t) FROM order_details t WHERE order_id::text = $1",
        ),
        "sales_daily" => (
            "event_type IN ('OrderConfirmed', 'OrderCancelled', 'PaymentRefunded')
             AND ((jsonb_path_query_first(payload, '$.*.at') #>> '{}')::timestamptz AT TIME ZONE 'UTC')::date
                 = split_part($1, '/', 1)::date
             AND (CASE WHEN aggregate_type = 'payment'
                       THEN jsonb_path_query_first(payload, '$.*.amount.currency') #>> '{}'
                       ELSE (SELECT p.payload -> 'Placed' ->> 'currency' FROM events p
                              WHERE p.aggregate_type = 'order' AND p.aggregate_id = events.aggregate_id
                                AND p.sequence = 1)
                  END) = split_part($1, '/', 2)",
            "SELECT to_jsonb(t) FROM sales_daily t
              WHERE day = split_part($1, '/', 1)::date AND currency = split_part($1, '/', 2)",
        ),
        _ => return None,
    })
}

/// The events, in log order, that produced one read-model row.
pub async fn row(pool: &PgPool, projection: &str, key: &str) -> Result<RowHistory, ReplayError> {
    let (events_where, row_sql) = row_queries(projection)
        .ok_or_else(|| ReplayError::NotFound(format!("no projection named {projection}")))?;
    if projection == "sales_daily" && !key.contains('/') {
        return Err(ReplayError::NotFound(format!(
            "a sales_daily key is DAY/CURRENCY, such as 2026-03-02/EUR, not {key:?}"
        )));
    }
    let row: Option<Value> = sqlx::query_scalar(row_sql)
        .bind(key)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten();
    let events = EventLog::new(pool.clone())
        .read_where(events_where, key)
        .await?;
    if row.is_none() && events.is_empty() {
        return Err(ReplayError::NotFound(format!(
            "no {projection} row {key} and no events for it"
        )));
    }
    Ok(RowHistory {
        projection: projection.to_owned(),
        key: key.to_owned(),
        row,
        events: events.into_iter().map(EventLine::from).collect(),
    })
}

/// One thing that happened in a saga's life.
#[derive(Debug, Clone, Serialize)]
pub struct SagaStep {
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    /// `trigger` (an event the saga reacted to) or `step` (an event a saga step wrote).
    pub kind: &'static str,
    /// The saga step, from the command's idempotency key.
    pub step: Option<String>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SagaReplay {
    pub order_id: Uuid,
    pub stage: String,
    pub next_step: Option<String>,
    /// The saga's timer: when a runner looks at it next.
    pub due_at: Option<DateTime<Utc>>,
    /// The payment deadline.
    pub deadline: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub steps: Vec<SagaStep>,
}

/// What the fulfilment saga of an order did, step by step, with its timers.
pub async fn saga(pool: &PgPool, order_id: Uuid) -> Result<SagaReplay, ReplayError> {
    let row = sqlx::query(
        "SELECT stage, next_step, due_at, state ->> 'deadline' AS deadline, attempts, last_error,
                state ->> 'placed_event_id' AS placed_event_id
           FROM fulfillment_sagas WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ReplayError::NotFound(format!("no saga for order {order_id}")))?;
    let placed: Option<String> = row.try_get("placed_event_id")?;
    let prefix = format!("saga:{}:", placed.unwrap_or_default());
    let events = EventLog::new(pool.clone())
        .read_where(
            "(aggregate_type = 'order' AND aggregate_id = split_part($1, '|', 1)
              AND event_type IN ('OrderPlaced', 'OrderCancelled', 'OrderShipped')
              AND (idempotency_key IS NULL OR idempotency_key NOT LIKE 'saga:%'))
             OR idempotency_key LIKE split_part($1, '|', 2) || '%'",
            &format!("{order_id}|{prefix}"),
        )
        .await?;
    let steps = events
        .into_iter()
        .map(|event| {
            let step = event
                .idempotency_key
                .as_deref()
                .and_then(|key| key.strip_prefix(&prefix))
                .map(str::to_owned);
            SagaStep {
                position: event.position,
                recorded_at: event.recorded_at,
                kind: if step.is_some() { "step" } else { "trigger" },
                step,
                aggregate_type: event.aggregate_type,
                aggregate_id: event.aggregate_id,
                event_type: event.event_type,
            }
        })
        .collect();
    Ok(SagaReplay {
        order_id,
        stage: row.try_get("stage")?,
        next_step: row.try_get("next_step")?,
        due_at: row.try_get("due_at")?,
        deadline: row.try_get("deadline")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        steps,
    })
}
