//! `customer_orders`: each customer's orders, newest first.
//!
//! Per batch: load the touched rows, evolve them in memory, write the changed ones back in
//! one statement.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::order::{Order, OrderEvent, OrderStatus};
use infra::event_store::StoredEvent;
use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, Copy, CopySink, Decoded, Fold, Projection, Table, View};

use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
pub struct CustomerOrdersProjection;

impl CustomerOrdersProjection {
    pub const NAME: &'static str = "customer_orders";
}

pub(crate) fn order_id(stored: &StoredEvent) -> Result<Uuid, ApplyError> {
    Uuid::try_parse(&stored.aggregate_id).map_err(|_| {
        ApplyError::Invalid(format!("order id {:?} is not a UUID", stored.aggregate_id))
    })
}

/// The distinct ids of the aggregates of `events`, as UUIDs.
pub(crate) fn aggregate_uuids(events: &[Decoded]) -> Result<Vec<Uuid>, ApplyError> {
    let mut ids = events
        .iter()
        .map(|d| order_id(&d.stored))
        .collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    customer_id: Uuid,
    order_id: Uuid,
    placed_at: DateTime<Utc>,
    placed_position: i64,
    status: String,
    currency: String,
    total_minor: Option<i64>,
    line_count: i32,
    version: i64,
    last_position: i64,
}

fn evolve(rows: &mut HashMap<Uuid, Row>, order_id: Uuid, stored: &StoredEvent, event: &OrderEvent) {
    if let OrderEvent::Placed {
        customer_id,
        lines,
        currency,
        at,
        ..
    } = event
    {
        rows.entry(order_id).or_insert_with(|| Row {
            customer_id: customer_id.as_uuid(),
            order_id,
            placed_at: *at,
            placed_position: stored.position,
            status: OrderStatus::Pending.as_str().to_owned(),
            currency: currency.to_string(),
            total_minor: None,
            line_count: i32::try_from(lines.len()).unwrap_or(i32::MAX),
            version: stored.sequence,
            last_position: stored.position,
        });
        return;
    }
    let Some(row) = rows.get_mut(&order_id) else {
        return;
    };
    if stored.sequence <= row.version {
        return;
    }
    let status = match event {
        OrderEvent::Placed { .. } => return,
        OrderEvent::StockReserved { total, .. } => {
            row.total_minor = Some(total.amount_minor());
            OrderStatus::Reserved
        }
        OrderEvent::Confirmed { .. } => OrderStatus::Confirmed,
        OrderEvent::Shipped { .. } => OrderStatus::Shipped,
        OrderEvent::Cancelled { .. } => OrderStatus::Cancelled,
    };
    row.status = status.as_str().to_owned();
    row.version = stored.sequence;
    row.last_position = stored.position;
}

#[async_trait]
impl Projection for CustomerOrdersProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&OrderEvent::TYPES)
    }

    fn tables(&self) -> &'static [Table] {
        &[Table {
            name: "customer_orders_v1",
            key: &["order_id"],
            insert_only: false,
        }]
    }

    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == Order::TYPE
    }

    fn views(&self) -> &'static [View] {
        &[View {
            name: "customer_orders",
            definition: "SELECT * FROM customer_orders_v1",
        }]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        let ids = aggregate_uuids(events)?;
        let loaded: Vec<Row> = sqlx::query_as(
            "SELECT customer_id, order_id, placed_at, placed_position, status, currency,
                    total_minor, line_count, version, last_position
               FROM customer_orders_v1 WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut rows: HashMap<Uuid, Row> = loaded.into_iter().map(|r| (r.order_id, r)).collect();
        let before = rows.clone();
        evolve_all(&mut rows, events)?;
        let changed: Vec<&Row> = rows
            .values()
            .filter(|row| before.get(&row.order_id) != Some(*row))
            .collect();
        let existing: Vec<bool> = changed
            .iter()
            .map(|r| before.contains_key(&r.order_id))
            .collect();
        write(conn, &changed, &existing).await
    }

    fn fold(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(Folded::default()))
    }
}

fn evolve_all(rows: &mut HashMap<Uuid, Row>, events: &[Decoded]) -> Result<(), ApplyError> {
    for decoded in events {
        if let DomainEvent::Order(event) = &decoded.event {
            evolve(rows, order_id(&decoded.stored)?, &decoded.stored, event);
        }
    }
    Ok(())
}

/// Writes `changed` rows; `existing[i]` says whether row `i` is in the table already.
async fn write(
    conn: &mut PgConnection,
    changed: &[&Row],
    existing: &[bool],
) -> Result<(), ApplyError> {
    if changed.is_empty() {
        return Ok(());
    }
    // Rows the load did not find are new (this projection is its tables' one writer):
    // a plain INSERT spares them the conflict check's extra index probe; the others
    // update through ON CONFLICT, which finds them by their key.
    sqlx::query(
        "WITH changed AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[],
                                      $5::text[], $6::text[], $7::bigint[], $8::int[],
                                      $9::bigint[], $10::bigint[], $11::bool[])
                     AS c(customer_id, order_id, placed_at, placed_position, status, currency,
                          total_minor, line_count, version, last_position, existing)
             ), new_rows AS (
                 INSERT INTO customer_orders_v1 (customer_id, order_id, placed_at,
                        placed_position, status, currency, total_minor, line_count, version,
                        last_position)
                 SELECT customer_id, order_id, placed_at, placed_position, status, currency,
                        total_minor, line_count, version, last_position
                   FROM changed WHERE NOT existing
             )
             INSERT INTO customer_orders_v1 (customer_id, order_id, placed_at, placed_position,
                                             status, currency, total_minor, line_count, version,
                                             last_position)
             SELECT customer_id, order_id, placed_at, placed_position, status, currency,
                    total_minor, line_count, version, last_position
               FROM changed WHERE existing
             ON CONFLICT (order_id) DO UPDATE
                SET status = EXCLUDED.status, total_minor = EXCLUDED.total_minor,
                    version = EXCLUDED.version, last_position = EXCLUDED.last_position",
    )
    .bind(changed.iter().map(|r| r.customer_id).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.placed_at).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|r| r.placed_position)
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|r| r.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|r| r.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(changed.iter().map(|r| r.total_minor).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.line_count).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.last_position).collect::<Vec<_>>())
    .bind(existing)
    .execute(conn)
    .await?;
    Ok(())
}

/// The model in memory for a rebuild from empty tables ([`Fold`]).
#[derive(Debug, Default)]
struct Folded {
    rows: HashMap<Uuid, Row>,
}

#[async_trait]
impl Fold for Folded {
    async fn fold(
        &mut self,
        _out: &mut dyn CopySink,
        events: &[Decoded],
    ) -> Result<(), ApplyError> {
        evolve_all(&mut self.rows, events)
    }

    fn held(&self) -> usize {
        self.rows.len()
    }

    async fn flush(
        &mut self,
        _conn: &mut PgConnection,
        out: &mut dyn CopySink,
    ) -> Result<(), ApplyError> {
        let mut rows: Vec<Row> = self.rows.drain().map(|(_, row)| row).collect();
        // In key order: each row's key lands beside the last in the key's index.
        rows.sort_unstable_by_key(|r| r.order_id);
        let mut copy = Copy::into(
            out,
            "customer_orders_v1",
            "customer_id, order_id, placed_at, placed_position, status, currency, total_minor, \
             line_count, version, last_position",
            false,
        );
        for r in &rows {
            copy.uuid(r.customer_id)
                .uuid(r.order_id)
                .timestamp(r.placed_at)
                .int(r.placed_position)
                .text(&r.status)
                .text(&r.currency)
                .opt_int(r.total_minor)
                .int4(r.line_count)
                .int(r.version)
                .int(r.last_position);
            copy.end_row().await?;
        }
        copy.finish().await?;
        Ok(())
    }
}
