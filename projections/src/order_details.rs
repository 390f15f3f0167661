//! `order_details`: everything about one order, composed from the order's, its inventory
//! items' and its payment's events (the read model is the API composition), with a timeline
//! of what happened.
//!
//! Per batch: load the touched orders, evolve them in memory (order events guarded by the
//! order's version, payment events by the payment's), and write the changed rows and the
//! new timeline entries back in one statement.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::Timestamp;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::order::{Order, OrderEvent, OrderStatus};
use domain::payment::{Payment, PaymentEvent};
use infra::event_store::StoredEvent;
use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, Copy, CopySink, Decoded, Fold, Projection, Table, View};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::customer_orders::order_id;

#[derive(Debug, Clone, Copy)]
pub struct OrderDetailsProjection;

impl OrderDetailsProjection {
    pub const NAME: &'static str = "order_details";
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    order_id: Uuid,
    customer_id: Uuid,
    status: String,
    currency: String,
    lines: serde_json::Value,
    total_minor: Option<i64>,
    cancel_reason: Option<String>,
    version: i64,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

/// The payment's part of an order's details: a row of its own, so it does not depend on
/// the order's row having arrived first (Kafka orders events per aggregate only).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct PaymentRow {
    order_id: Uuid,
    payment_status: String,
    captured_minor: i64,
    refunded_minor: i64,
    version: i64,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

/// The query API's view: the order, its payment, and the position of the last event in its
/// timeline. The migration that created it has the same text.
pub const ORDER_DETAILS_VIEW: &str = "\
SELECT o.order_id, o.customer_id, o.status, o.currency, o.lines, o.total_minor,
       COALESCE(p.payment_status, 'none') AS payment_status,
       COALESCE(p.captured_minor, 0) AS captured_minor,
       COALESCE(p.refunded_minor, 0) AS refunded_minor,
       o.cancel_reason, o.version, o.placed_at,
       GREATEST(o.updated_at, p.updated_at) AS updated_at,
       GREATEST(o.last_position, p.last_position,
                (SELECT max(t.position) FROM order_timeline_v1 t WHERE t.order_id = o.order_id))
           AS last_position
  FROM order_details_v1 o
  LEFT JOIN order_payments_v1 p ON p.order_id = o.order_id";

#[derive(Debug, Clone)]
struct Entry {
    order_id: Uuid,
    position: i64,
    event_id: Uuid,
    at: Timestamp,
    source: &'static str,
    event_type: String,
    description: String,
}

/// What one batch does to the model.
#[derive(Debug, Default)]
struct Changes {
    rows: HashMap<Uuid, Row>,
    payments: HashMap<Uuid, PaymentRow>,
    timeline: Vec<Entry>,
}

impl Changes {
    fn entry(
        &mut self,
        order_id: Uuid,
        stored: &StoredEvent,
        at: Timestamp,
        source: &'static str,
        description: String,
    ) {
        self.timeline.push(Entry {
            order_id,
            position: stored.position,
            event_id: stored.event_id,
            at,
            source,
            event_type: stored.event_type.clone(),
            description,
        });
    }

    fn order(&mut self, order_id: Uuid, stored: &StoredEvent, event: &OrderEvent) {
        if let OrderEvent::Placed {
            customer_id,
            lines,
            currency,
            at,
            ..
        } = event
        {
            if self.rows.contains_key(&order_id) {
                return;
            }
            let lines_json: Vec<_> = lines
                .iter()
                .map(|line| json!({"sku": line.sku, "quantity": line.quantity}))
                .collect();
            self.rows.insert(
                order_id,
                Row {
                    order_id,
                    customer_id: customer_id.as_uuid(),
                    status: OrderStatus::Pending.as_str().to_owned(),
                    currency: currency.to_string(),
                    lines: serde_json::Value::Array(lines_json),
                    total_minor: None,
                    cancel_reason: None,
                    version: stored.sequence,
                    placed_at: *at,
                    updated_at: *at,
                    last_position: stored.position,
                },
            );
            let n_units: u64 = lines
                .iter()
                .map(|line| u64::from(line.quantity.get()))
                .sum();
            let description = format!("placed: {} line(s), {n_units} unit(s)", lines.len());
            self.entry(order_id, stored, *at, "order", description);
            return;
        }
        let Some(row) = self.rows.get_mut(&order_id) else {
            return;
        };
        if stored.sequence <= row.version {
            return;
        }
        let (at, description) = match event {
            OrderEvent::Placed { .. } => return,
            OrderEvent::StockReserved { lines, total, at } => {
                row.lines = serde_json::Value::Array(
                    lines
                        .iter()
                        .map(|line| {
                            json!({
                                "sku": line.sku,
                                "quantity": line.quantity,
                                "unit_price_minor": line.unit_price.amount_minor(),
                                "line_total_minor": line.line_total.amount_minor(),
                            })
                        })
                        .collect(),
                );
                row.total_minor = Some(total.amount_minor());
                row.status = OrderStatus::Reserved.as_str().to_owned();
                (
                    *at,
                    format!(
                        "stock reserved; total {} {}",
                        total.amount_minor(),
                        total.currency()
                    ),
                )
            }
            OrderEvent::Confirmed { at } => {
                row.status = OrderStatus::Confirmed.as_str().to_owned();
                (*at, "confirmed".to_owned())
            }
            OrderEvent::Shipped { at } => {
                row.status = OrderStatus::Shipped.as_str().to_owned();
                (*at, "shipped".to_owned())
            }
            OrderEvent::Cancelled { reason, at } => {
                row.status = OrderStatus::Cancelled.as_str().to_owned();
                row.cancel_reason = Some(reason.as_str().to_owned());
                (*at, format!("cancelled: {reason}"))
            }
        };
        row.version = stored.sequence;
        row.updated_at = at;
        row.last_position = stored.position;
        self.entry(order_id, stored, at, "order", description);
    }

    /// Folds a batch in, in log order.
    fn evolve_all(&mut self, events: &[Decoded]) -> Result<(), ApplyError> {
        for decoded in events {
            let stored = &decoded.stored;
            match &decoded.event {
                DomainEvent::Order(event) => self.order(order_id(stored)?, stored, event),
                DomainEvent::Payment(event) => self.payment(order_id(stored)?, stored, event),
                DomainEvent::Inventory(event) => self.inventory(stored, event),
                DomainEvent::Unknown => {}
            }
        }
        Ok(())
    }

    /// The payment's id is its order's id.
    fn payment(&mut self, order_id: Uuid, stored: &StoredEvent, event: &PaymentEvent) {
        let row = self.payments.entry(order_id).or_insert_with(|| PaymentRow {
            order_id,
            payment_status: "none".to_owned(),
            captured_minor: 0,
            refunded_minor: 0,
            version: 0,
            updated_at: DateTime::<Utc>::MIN_UTC,
            last_position: 0,
        });
        if stored.sequence <= row.version {
            return;
        }
        let (at, description) = match event {
            PaymentEvent::Authorized { amount, at, .. } => {
                row.payment_status = "authorized".to_owned();
                (
                    *at,
                    format!(
                        "payment authorized: {} {}",
                        amount.amount_minor(),
                        amount.currency()
                    ),
                )
            }
            PaymentEvent::Captured { amount, at } => {
                row.payment_status = "captured".to_owned();
                row.captured_minor = amount.amount_minor();
                (
                    *at,
                    format!(
                        "payment captured: {} {}",
                        amount.amount_minor(),
                        amount.currency()
                    ),
                )
            }
            PaymentEvent::Declined { reason, at, .. } => {
                row.payment_status = "declined".to_owned();
                (*at, format!("payment declined: {reason}"))
            }
            PaymentEvent::Refunded { amount, at, .. } => {
                row.refunded_minor += amount.amount_minor();
                row.payment_status = if row.refunded_minor < row.captured_minor {
                    "partially_refunded"
                } else {
                    "refunded"
                }
                .to_owned();
                (
                    *at,
                    format!("refunded: {} {}", amount.amount_minor(), amount.currency()),
                )
            }
            PaymentEvent::Voided { at, .. } => {
                row.payment_status = "voided".to_owned();
                (*at, "payment voided".to_owned())
            }
        };
        row.version = stored.sequence;
        row.updated_at = at;
        row.last_position = stored.position;
        self.entry(order_id, stored, at, "payment", description);
    }

    /// Inventory events that concern an order appear in its timeline.
    fn inventory(&mut self, stored: &StoredEvent, event: &InventoryEvent) {
        let sku = &stored.aggregate_id;
        let (order_id, at, description) = match event {
            InventoryEvent::Reserved {
                order_id,
                quantity,
                unit_price,
                at,
            } => (
                order_id,
                at,
                format!(
                    "reserved {quantity} x {sku} at {} {}",
                    unit_price.amount_minor(),
                    unit_price.currency()
                ),
            ),
            InventoryEvent::Released {
                order_id,
                quantity,
                at,
            } => (order_id, at, format!("released {quantity} x {sku}")),
            InventoryEvent::Committed {
                order_id,
                quantity,
                at,
            } => (
                order_id,
                at,
                format!("{quantity} x {sku} left the warehouse"),
            ),
            InventoryEvent::Registered { .. } | InventoryEvent::Restocked { .. } => return,
        };
        self.entry(order_id.as_uuid(), stored, *at, "inventory", description);
    }
}

#[async_trait]
impl Projection for OrderDetailsProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        const TYPES: [&str; 13] = [
            OrderEvent::TYPES[0],
            OrderEvent::TYPES[1],
            OrderEvent::TYPES[2],
            OrderEvent::TYPES[3],
            OrderEvent::TYPES[4],
            PaymentEvent::TYPES[0],
            PaymentEvent::TYPES[1],
            PaymentEvent::TYPES[2],
            PaymentEvent::TYPES[3],
            PaymentEvent::TYPES[4],
            "StockReserved",
            "StockReleased",
            "StockCommitted",
        ];
        Some(&TYPES)
    }

    fn tables(&self) -> &'static [Table] {
        &[
            Table {
                name: "order_details_v1",
                key: &["order_id"],
                insert_only: false,
            },
            Table {
                name: "order_payments_v1",
                key: &["order_id"],
                insert_only: false,
            },
            Table {
                name: "order_timeline_v1",
                key: &["order_id", "position"],
                insert_only: true,
            },
        ]
    }

    /// The order's and its payment's events, and the inventory events about orders.
    fn handles(&self, stored: &StoredEvent) -> bool {
        match stored.aggregate_type.as_str() {
            t if t == Order::TYPE || t == Payment::TYPE => true,
            t if t == InventoryItem::TYPE => {
                matches!(
                    stored.event_type.as_str(),
                    "StockReserved" | "StockReleased" | "StockCommitted"
                )
            }
            _ => false,
        }
    }

    fn views(&self) -> &'static [View] {
        &[
            View {
                name: "order_details",
                definition: ORDER_DETAILS_VIEW,
            },
            View {
                name: "order_timeline",
                definition: "SELECT * FROM order_timeline_v1",
            },
        ]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        let mut order_ids = Vec::new();
        let mut payment_ids = Vec::new();
        for decoded in events {
            match &decoded.event {
                DomainEvent::Order(_) => order_ids.push(order_id(&decoded.stored)?),
                DomainEvent::Payment(_) => payment_ids.push(order_id(&decoded.stored)?),
                _ => {}
            }
        }
        for ids in [&mut order_ids, &mut payment_ids] {
            ids.sort_unstable();
            ids.dedup();
        }
        let loaded: Vec<Row> = sqlx::query_as(
            "SELECT order_id, customer_id, status, currency, lines, total_minor, cancel_reason,
                    version, placed_at, updated_at, last_position
               FROM order_details_v1 WHERE order_id = ANY($1)",
        )
        .bind(&order_ids)
        .fetch_all(&mut *conn)
        .await?;
        let payments: Vec<PaymentRow> = if payment_ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "SELECT order_id, payment_status, captured_minor, refunded_minor, version, updated_at,
                        last_position
                   FROM order_payments_v1 WHERE order_id = ANY($1)",
            )
            .bind(&payment_ids)
            .fetch_all(&mut *conn)
            .await?
        };
        let mut changes = Changes {
            rows: loaded.into_iter().map(|r| (r.order_id, r)).collect(),
            payments: payments.into_iter().map(|p| (p.order_id, p)).collect(),
            timeline: Vec::new(),
        };
        let before = changes.rows.clone();
        let payments_before = changes.payments.clone();
        changes.evolve_all(events)?;
        let payments: Vec<&PaymentRow> = changes
            .payments
            .values()
            .filter(|row| row.version > 0 && payments_before.get(&row.order_id) != Some(*row))
            .collect();
        let rows: Vec<&Row> = changes
            .rows
            .values()
            .filter(|row| before.get(&row.order_id) != Some(*row))
            .collect();
        let payments_existing: Vec<bool> = payments
            .iter()
            .map(|r| payments_before.contains_key(&r.order_id))
            .collect();
        let rows_existing: Vec<bool> = rows
            .iter()
            .map(|r| before.contains_key(&r.order_id))
            .collect();
        write(
            conn,
            (&payments, &payments_existing),
            (&rows, &rows_existing),
            &changes.timeline,
        )
        .await
    }

    fn fold(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(Folded::default()))
    }
}

/// Writes changed payment rows and order rows, each with whether it is in its table
/// already, and new timeline entries.
async fn write(
    conn: &mut PgConnection,
    (payments, payments_existing): (&[&PaymentRow], &[bool]),
    (rows, rows_existing): (&[&Row], &[bool]),
    timeline: &[Entry],
) -> Result<(), ApplyError> {
    if payments.is_empty() && rows.is_empty() && timeline.is_empty() {
        return Ok(());
    }
    // One statement for the three tables (a round trip instead of three inside the
    // batch's transaction); a part with no rows inserts nothing. Rows the loads did not
    // find are new (this projection is its tables' one writer): a plain INSERT spares
    // them the conflict check's extra index probe; the others update through ON
    // CONFLICT, which finds them by their key.
    sqlx::query(
        "WITH changed_payments AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[],
                        $5::bigint[], $6::timestamptz[], $7::bigint[], $26::bool[])
                     AS p(order_id, payment_status, captured_minor, refunded_minor, version,
                          updated_at, last_position, existing)
             ), new_payments AS (
                 INSERT INTO order_payments_v1 (order_id, payment_status, captured_minor,
                        refunded_minor, version, updated_at, last_position)
                 SELECT order_id, payment_status, captured_minor, refunded_minor, version,
                        updated_at, last_position
                   FROM changed_payments WHERE NOT existing
             ), payments AS (
                 INSERT INTO order_payments_v1 (order_id, payment_status, captured_minor,
                        refunded_minor, version, updated_at, last_position)
                 SELECT order_id, payment_status, captured_minor, refunded_minor, version,
                        updated_at, last_position
                   FROM changed_payments WHERE existing
                 ON CONFLICT (order_id) DO UPDATE
                    SET payment_status = EXCLUDED.payment_status,
                        captured_minor = EXCLUDED.captured_minor,
                        refunded_minor = EXCLUDED.refunded_minor, version = EXCLUDED.version,
                        updated_at = EXCLUDED.updated_at, last_position = EXCLUDED.last_position
             ), changed_details AS (
                 SELECT * FROM UNNEST($8::uuid[], $9::uuid[], $10::text[], $11::text[],
                        $12::jsonb[], $13::bigint[], $14::text[], $15::bigint[],
                        $16::timestamptz[], $17::timestamptz[], $18::bigint[], $27::bool[])
                     AS d(order_id, customer_id, status, currency, lines, total_minor,
                          cancel_reason, version, placed_at, updated_at, last_position, existing)
             ), new_details AS (
                 INSERT INTO order_details_v1 (order_id, customer_id, status, currency, lines,
                        total_minor, cancel_reason, version, placed_at, updated_at, last_position)
                 SELECT order_id, customer_id, status, currency, lines, total_minor,
                        cancel_reason, version, placed_at, updated_at, last_position
                   FROM changed_details WHERE NOT existing
             ), details AS (
                 INSERT INTO order_details_v1 (order_id, customer_id, status, currency, lines,
                        total_minor, cancel_reason, version, placed_at, updated_at, last_position)
                 SELECT order_id, customer_id, status, currency, lines, total_minor,
                        cancel_reason, version, placed_at, updated_at, last_position
                   FROM changed_details WHERE existing
                 ON CONFLICT (order_id) DO UPDATE
                    SET status = EXCLUDED.status, lines = EXCLUDED.lines,
                        total_minor = EXCLUDED.total_minor, cancel_reason = EXCLUDED.cancel_reason,
                        version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
                        last_position = EXCLUDED.last_position
             )
             INSERT INTO order_timeline_v1 (order_id, position, event_id, at, source, event_type,
                                            description)
             SELECT * FROM UNNEST($19::uuid[], $20::bigint[], $21::uuid[], $22::timestamptz[],
                                  $23::text[], $24::text[], $25::text[])
             ON CONFLICT DO NOTHING",
    )
    .bind(payments.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(
        payments
            .iter()
            .map(|r| r.payment_status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        payments
            .iter()
            .map(|r| r.captured_minor)
            .collect::<Vec<_>>(),
    )
    .bind(
        payments
            .iter()
            .map(|r| r.refunded_minor)
            .collect::<Vec<_>>(),
    )
    .bind(payments.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(payments.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(payments.iter().map(|r| r.last_position).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.customer_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lines.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.total_minor).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.cancel_reason.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.placed_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.last_position).collect::<Vec<_>>())
    .bind(timeline.iter().map(|e| e.order_id).collect::<Vec<_>>())
    .bind(timeline.iter().map(|e| e.position).collect::<Vec<_>>())
    .bind(timeline.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(timeline.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(timeline.iter().map(|e| e.source).collect::<Vec<_>>())
    .bind(
        timeline
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        timeline
            .iter()
            .map(|e| e.description.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(payments_existing)
    .bind(rows_existing)
    .execute(conn)
    .await?;
    Ok(())
}

/// The model in memory for a rebuild from empty tables ([`Fold`]): every order's and
/// payment's row; the timeline, insert-only, is written batch by batch.
#[derive(Debug, Default)]
struct Folded {
    changes: Changes,
}

#[async_trait]
impl Fold for Folded {
    async fn fold(&mut self, out: &mut dyn CopySink, events: &[Decoded]) -> Result<(), ApplyError> {
        self.changes.evolve_all(events)?;
        let timeline = std::mem::take(&mut self.changes.timeline);
        copy_timeline(out, &timeline).await
    }

    fn held(&self) -> usize {
        self.changes.rows.len() + self.changes.payments.len()
    }

    async fn flush(
        &mut self,
        _conn: &mut PgConnection,
        out: &mut dyn CopySink,
    ) -> Result<(), ApplyError> {
        let Changes {
            rows,
            payments,
            timeline,
        } = std::mem::take(&mut self.changes);
        let mut payments: Vec<PaymentRow> = payments
            .into_values()
            .filter(|row| row.version > 0)
            .collect();
        // In key order: each row's key lands beside the last in the key's index.
        payments.sort_unstable_by_key(|r| r.order_id);
        let mut copy = Copy::into(
            out,
            "order_payments_v1",
            "order_id, payment_status, captured_minor, refunded_minor, version, updated_at, \
             last_position",
            false,
        );
        for r in &payments {
            copy.uuid(r.order_id)
                .text(&r.payment_status)
                .int(r.captured_minor)
                .int(r.refunded_minor)
                .int(r.version)
                .timestamp(r.updated_at)
                .int(r.last_position);
            copy.end_row().await?;
        }
        copy.finish().await?;
        let mut rows: Vec<Row> = rows.into_values().collect();
        rows.sort_unstable_by_key(|r| r.order_id);
        let mut copy = Copy::into(
            out,
            "order_details_v1",
            "order_id, customer_id, status, currency, lines, total_minor, cancel_reason, \
             version, placed_at, updated_at, last_position",
            false,
        );
        for r in &rows {
            copy.uuid(r.order_id)
                .uuid(r.customer_id)
                .text(&r.status)
                .text(&r.currency)
                .json(&r.lines)
                .opt_int(r.total_minor)
                .opt_text(r.cancel_reason.as_deref())
                .int(r.version)
                .timestamp(r.placed_at)
                .timestamp(r.updated_at)
                .int(r.last_position);
            copy.end_row().await?;
        }
        copy.finish().await?;
        copy_timeline(out, &timeline).await
    }
}

/// New timeline entries, with `COPY`.
async fn copy_timeline(out: &mut dyn CopySink, timeline: &[Entry]) -> Result<(), ApplyError> {
    if timeline.is_empty() {
        return Ok(());
    }
    let mut copy = Copy::into(
        out,
        "order_timeline_v1",
        "order_id, position, event_id, at, source, event_type, description",
        true,
    );
    for e in timeline {
        copy.uuid(e.order_id)
            .int(e.position)
            .uuid(e.event_id)
            .timestamp(e.at)
            .text(e.source)
            .text(&e.event_type)
            .text(&e.description);
        copy.end_row().await?;
    }
    copy.finish().await?;
    Ok(())
}
