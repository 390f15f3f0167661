//! `sales_daily`: per day (UTC, of the event) and currency: orders confirmed, revenue,
//! cancellations by reason, refunds.
//!
//! Counters are not idempotent by themselves, so the projection remembers, per order and per
//! refund, what it has counted (`sales_daily_orders_v1`, `sales_daily_refunds_v1`): applying
//! an event twice counts it once. Confirmation events carry no amount, so the order's total
//! is remembered from its reservation.
//!
//! Per batch: load the memory of the touched orders and refunds, evolve it in memory while
//! summing each day's increments, then write the memory back and add the increments to the
//! day rows, in one statement.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::NaiveDate;
use cqrs_es::Aggregate;
use domain::order::{CancelReason, Order, OrderEvent};
use domain::payment::{Payment, PaymentEvent};
use infra::event_store::StoredEvent;
use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, Copy, CopySink, Decoded, Fold, Projection, Table, View};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::customer_orders::order_id;

#[derive(Debug, Clone, Copy)]
pub struct SalesDailyProjection;

impl SalesDailyProjection {
    pub const NAME: &'static str = "sales_daily";
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Memo {
    order_id: Uuid,
    currency: String,
    total_minor: Option<i64>,
    confirmed: bool,
    cancelled: bool,
}

/// What a batch adds to one day and currency.
#[derive(Debug, Clone, Default)]
struct Increments {
    orders_confirmed: i64,
    revenue_minor: i64,
    cancelled: [i64; 4],
    refunds: i64,
    refunded_minor: i64,
    last_position: i64,
}

fn reason_index(reason: CancelReason) -> usize {
    match reason {
        CancelReason::CustomerRequest => 0,
        CancelReason::OutOfStock => 1,
        CancelReason::PaymentDeclined => 2,
        CancelReason::PaymentTimeout => 3,
    }
}

#[derive(Debug, Default)]
struct Changes {
    memos: HashMap<Uuid, Memo>,
    counted_refunds: HashSet<Uuid>,
    new_refunds: Vec<Uuid>,
    days: BTreeMap<(NaiveDate, String), Increments>,
}

impl Changes {
    fn day(&mut self, day: NaiveDate, currency: &str, position: i64) -> &mut Increments {
        let increments = self.days.entry((day, currency.to_owned())).or_default();
        increments.last_position = increments.last_position.max(position);
        increments
    }

    fn evolve(&mut self, stored: &StoredEvent, event: &DomainEvent) -> Result<(), ApplyError> {
        match event {
            DomainEvent::Order(OrderEvent::Placed { currency, .. }) => {
                let id = order_id(stored)?;
                self.memos.entry(id).or_insert_with(|| Memo {
                    order_id: id,
                    currency: currency.to_string(),
                    total_minor: None,
                    confirmed: false,
                    cancelled: false,
                });
            }
            DomainEvent::Order(OrderEvent::StockReserved { total, .. }) => {
                if let Some(memo) = self.memos.get_mut(&order_id(stored)?) {
                    memo.total_minor = Some(total.amount_minor());
                }
            }
            DomainEvent::Order(OrderEvent::Confirmed { at }) => {
                if let Some(memo) = self.memos.get_mut(&order_id(stored)?)
                    && !memo.confirmed
                {
                    memo.confirmed = true;
                    let (currency, total) = (memo.currency.clone(), memo.total_minor.unwrap_or(0));
                    let day = self.day(at.date_naive(), &currency, stored.position);
                    day.orders_confirmed += 1;
                    day.revenue_minor += total;
                }
            }
            DomainEvent::Order(OrderEvent::Cancelled { reason, at }) => {
                if let Some(memo) = self.memos.get_mut(&order_id(stored)?)
                    && !memo.cancelled
                {
                    memo.cancelled = true;
                    let currency = memo.currency.clone();
                    self.day(at.date_naive(), &currency, stored.position)
                        .cancelled[reason_index(*reason)] += 1;
                }
            }
            DomainEvent::Payment(PaymentEvent::Refunded {
                refund_id,
                amount,
                at,
            }) if self.counted_refunds.insert(refund_id.as_uuid()) => {
                self.new_refunds.push(refund_id.as_uuid());
                let day = self.day(at.date_naive(), amount.currency().as_str(), stored.position);
                day.refunds += 1;
                day.refunded_minor += amount.amount_minor();
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl Projection for SalesDailyProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        const TYPES: [&str; 6] = [
            OrderEvent::TYPES[0],
            OrderEvent::TYPES[1],
            OrderEvent::TYPES[2],
            OrderEvent::TYPES[3],
            OrderEvent::TYPES[4],
            "PaymentRefunded",
        ];
        Some(&TYPES)
    }

    fn tables(&self) -> &'static [Table] {
        &[
            Table {
                name: "sales_daily_v1",
                key: &["day", "currency"],
                insert_only: false,
            },
            Table {
                name: "sales_daily_orders_v1",
                key: &["order_id"],
                insert_only: false,
            },
            Table {
                name: "sales_daily_refunds_v1",
                key: &["refund_id"],
                insert_only: false,
            },
        ]
    }

    /// Orders' events, and refunds.
    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == Order::TYPE
            || (stored.aggregate_type == Payment::TYPE && stored.event_type == "PaymentRefunded")
    }

    fn views(&self) -> &'static [View] {
        &[View {
            name: "sales_daily",
            definition: "SELECT * FROM sales_daily_v1",
        }]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        let mut order_ids = Vec::new();
        let mut refund_ids = Vec::new();
        for decoded in events {
            match &decoded.event {
                DomainEvent::Order(_) => order_ids.push(order_id(&decoded.stored)?),
                DomainEvent::Payment(PaymentEvent::Refunded { refund_id, .. }) => {
                    refund_ids.push(refund_id.as_uuid());
                }
                _ => {}
            }
        }
        order_ids.sort_unstable();
        order_ids.dedup();
        let memos: Vec<Memo> = sqlx::query_as(
            "SELECT order_id, currency, total_minor, confirmed, cancelled
               FROM sales_daily_orders_v1 WHERE order_id = ANY($1)",
        )
        .bind(&order_ids)
        .fetch_all(&mut *conn)
        .await?;
        let counted: Vec<Uuid> = if refund_ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT refund_id FROM sales_daily_refunds_v1 WHERE refund_id = ANY($1)",
            )
            .bind(&refund_ids)
            .fetch_all(&mut *conn)
            .await?
        };
        let mut changes = Changes {
            memos: memos.into_iter().map(|m| (m.order_id, m)).collect(),
            counted_refunds: counted.into_iter().collect(),
            ..Changes::default()
        };
        let before = changes.memos.clone();
        for decoded in events {
            changes.evolve(&decoded.stored, &decoded.event)?;
        }
        let memos: Vec<&Memo> = changes
            .memos
            .values()
            .filter(|memo| before.get(&memo.order_id) != Some(*memo))
            .collect();
        let existing: Vec<bool> = memos
            .iter()
            .map(|m| before.contains_key(&m.order_id))
            .collect();
        write(conn, &memos, &existing, &changes.new_refunds, &changes.days).await
    }

    fn fold(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(Folded::default()))
    }
}

/// Writes `memos` (`existing[i]`: whether memo `i` is in the table already), records
/// `new_refunds` as counted and adds `days`' increments to the day rows.
async fn write(
    conn: &mut PgConnection,
    memos: &[&Memo],
    existing: &[bool],
    new_refunds: &[Uuid],
    days: &BTreeMap<(NaiveDate, String), Increments>,
) -> Result<(), ApplyError> {
    if memos.is_empty() && new_refunds.is_empty() && days.is_empty() {
        return Ok(());
    }
    let days: Vec<(&(NaiveDate, String), &Increments)> = days.iter().collect();
    let column = |i: usize| {
        days.iter()
            .map(|(_, inc)| inc.cancelled[i])
            .collect::<Vec<_>>()
    };
    // One statement for the three tables (a round trip instead of three inside the
    // batch's transaction); a part with no rows inserts nothing. Memos the load did not
    // find are new (this projection is its tables' one writer): a plain INSERT spares
    // them the conflict check's extra index probe.
    sqlx::query(
        "WITH changed_memos AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bool[],
                                      $5::bool[], $18::bool[])
                     AS m(order_id, currency, total_minor, confirmed, cancelled, existing)
             ), new_memos AS (
                 INSERT INTO sales_daily_orders_v1 (order_id, currency, total_minor, confirmed,
                        cancelled)
                 SELECT order_id, currency, total_minor, confirmed, cancelled
                   FROM changed_memos WHERE NOT existing
             ), memos AS (
                 INSERT INTO sales_daily_orders_v1 (order_id, currency, total_minor, confirmed,
                        cancelled)
                 SELECT order_id, currency, total_minor, confirmed, cancelled
                   FROM changed_memos WHERE existing
                 ON CONFLICT (order_id) DO UPDATE
                    SET total_minor = EXCLUDED.total_minor, confirmed = EXCLUDED.confirmed,
                        cancelled = EXCLUDED.cancelled
             ), refunds AS (
                 INSERT INTO sales_daily_refunds_v1 (refund_id) SELECT * FROM UNNEST($6::uuid[])
             )
             INSERT INTO sales_daily_v1 (day, currency, orders_confirmed, revenue_minor,
                    cancelled_customer_request, cancelled_out_of_stock,
                    cancelled_payment_declined, cancelled_payment_timeout, refunds,
                    refunded_minor, last_position)
             SELECT * FROM UNNEST($7::date[], $8::text[], $9::bigint[], $10::bigint[],
                    $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
                    $16::bigint[], $17::bigint[])
             ON CONFLICT (day, currency) DO UPDATE SET
                orders_confirmed = sales_daily_v1.orders_confirmed + EXCLUDED.orders_confirmed,
                revenue_minor = sales_daily_v1.revenue_minor + EXCLUDED.revenue_minor,
                cancelled_customer_request = sales_daily_v1.cancelled_customer_request
                    + EXCLUDED.cancelled_customer_request,
                cancelled_out_of_stock = sales_daily_v1.cancelled_out_of_stock
                    + EXCLUDED.cancelled_out_of_stock,
                cancelled_payment_declined = sales_daily_v1.cancelled_payment_declined
                    + EXCLUDED.cancelled_payment_declined,
                cancelled_payment_timeout = sales_daily_v1.cancelled_payment_timeout
                    + EXCLUDED.cancelled_payment_timeout,
                refunds = sales_daily_v1.refunds + EXCLUDED.refunds,
                refunded_minor = sales_daily_v1.refunded_minor + EXCLUDED.refunded_minor,
                last_position = GREATEST(sales_daily_v1.last_position, EXCLUDED.last_position)",
    )
    .bind(memos.iter().map(|m| m.order_id).collect::<Vec<_>>())
    .bind(
        memos
            .iter()
            .map(|m| m.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(memos.iter().map(|m| m.total_minor).collect::<Vec<_>>())
    .bind(memos.iter().map(|m| m.confirmed).collect::<Vec<_>>())
    .bind(memos.iter().map(|m| m.cancelled).collect::<Vec<_>>())
    .bind(new_refunds)
    .bind(days.iter().map(|((day, _), _)| *day).collect::<Vec<_>>())
    .bind(
        days.iter()
            .map(|((_, currency), _)| currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        days.iter()
            .map(|(_, inc)| inc.orders_confirmed)
            .collect::<Vec<_>>(),
    )
    .bind(
        days.iter()
            .map(|(_, inc)| inc.revenue_minor)
            .collect::<Vec<_>>(),
    )
    .bind(column(0))
    .bind(column(1))
    .bind(column(2))
    .bind(column(3))
    .bind(days.iter().map(|(_, inc)| inc.refunds).collect::<Vec<_>>())
    .bind(
        days.iter()
            .map(|(_, inc)| inc.refunded_minor)
            .collect::<Vec<_>>(),
    )
    .bind(
        days.iter()
            .map(|(_, inc)| inc.last_position)
            .collect::<Vec<_>>(),
    )
    .bind(existing)
    .execute(conn)
    .await?;
    Ok(())
}

/// The model in memory for a rebuild from empty tables ([`Fold`]): the memos, the refunds
/// counted and the days' sums over every batch folded.
#[derive(Debug, Default)]
struct Folded {
    changes: Changes,
}

#[async_trait]
impl Fold for Folded {
    async fn fold(
        &mut self,
        _out: &mut dyn CopySink,
        events: &[Decoded],
    ) -> Result<(), ApplyError> {
        for decoded in events {
            self.changes.evolve(&decoded.stored, &decoded.event)?;
        }
        Ok(())
    }

    fn held(&self) -> usize {
        self.changes.memos.len() + self.changes.counted_refunds.len() + self.changes.days.len()
    }

    async fn flush(
        &mut self,
        conn: &mut PgConnection,
        out: &mut dyn CopySink,
    ) -> Result<(), ApplyError> {
        let Changes {
            memos,
            counted_refunds: _,
            mut new_refunds,
            days,
        } = std::mem::take(&mut self.changes);
        let mut memos: Vec<Memo> = memos.into_values().collect();
        // In key order: each row's key lands beside the last in the key's index.
        memos.sort_unstable_by_key(|m| m.order_id);
        let mut copy = Copy::into(
            out,
            "sales_daily_orders_v1",
            "order_id, currency, total_minor, confirmed, cancelled",
            false,
        );
        for m in &memos {
            copy.uuid(m.order_id)
                .text(&m.currency)
                .opt_int(m.total_minor)
                .bool(m.confirmed)
                .bool(m.cancelled);
            copy.end_row().await?;
        }
        copy.finish().await?;
        new_refunds.sort_unstable();
        let mut copy = Copy::into(out, "sales_daily_refunds_v1", "refund_id", false);
        for refund in new_refunds {
            copy.uuid(refund);
            copy.end_row().await?;
        }
        copy.finish().await?;
        // A row per day and currency: a few hundred at most.
        write(conn, &[], &[], &[], &days).await
    }
}
