//! Starts and signals fulfilment sagas from the global log: a projection, so it runs on the
//! shared worker with its own checkpoint, and each event's effect commits with the
//! checkpoint (exactly once; a redelivered event changes nothing anyway).

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::ids::OrderId;
use domain::order::{Order, OrderEvent};
use infra::event_store::StoredEvent;
use infra::projection::events::DomainEvent;
use infra::projection::{ApplyError, CheckpointNotice, Decoded, Projection};
use sqlx::PgConnection;

use super::order_fulfillment::Fulfillment;
use super::store;

#[derive(Debug, Clone, Copy)]
pub struct FulfillmentTrigger;

impl FulfillmentTrigger {
    pub const NAME: &'static str = "order_fulfillment";
}

#[async_trait]
impl Projection for FulfillmentTrigger {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == Order::TYPE
            && matches!(
                stored.event_type.as_str(),
                "OrderPlaced" | "OrderCancelled" | "OrderShipped"
            )
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        // The batch's starts go in one statement; a signal (rare: a cancel, a shipment)
        // goes on its own, after the starts before it. Runners hear of them from the
        // worker's checkpoint notice after the commit ([`wakes_runners`]), not from a NOTIFY
        // in this transaction, which would hold PostgreSQL's notification lock through the
        // commit.
        let mut starts = Vec::new();
        for decoded in events {
            apply_one(conn, &decoded.stored, &decoded.event, &mut starts).await?;
        }
        store::start_many(conn, &starts).await?;
        Ok(())
    }
}

/// Whether a notification on `ordo_checkpoints` should wake saga runners: the trigger
/// committed a batch (which may have started or signalled sagas) or changed state.
pub fn wakes_runners(payload: &str) -> bool {
    CheckpointNotice::parse(payload)
        .is_some_and(|notice| notice.projection == FulfillmentTrigger::NAME)
}

/// Adds a start to `starts`, or signals a saga (after writing the starts so far).
async fn apply_one(
    conn: &mut PgConnection,
    stored: &StoredEvent,
    event: &DomainEvent,
    starts: &mut Vec<Fulfillment>,
) -> Result<(), ApplyError> {
    {
        let DomainEvent::Order(event) = event else {
            return Ok(());
        };
        let order_id: OrderId = stored.aggregate_id.parse().map_err(|_| {
            ApplyError::Invalid(format!("order id {:?} is not a UUID", stored.aggregate_id))
        })?;
        match event {
            OrderEvent::Placed {
                lines,
                card_token,
                currency,
                ..
            } => {
                let saga = Fulfillment::start(
                    order_id,
                    stored.event_id,
                    card_token.clone(),
                    *currency,
                    lines.iter().cloned().collect(),
                );
                starts.push(saga);
            }
            OrderEvent::Cancelled { .. } => {
                store::start_many(conn, &std::mem::take(starts)).await?;
                store::signal(conn, order_id, true, false).await?;
            }
            OrderEvent::Shipped { .. } => {
                store::start_many(conn, &std::mem::take(starts)).await?;
                store::signal(conn, order_id, false, true).await?;
            }
            OrderEvent::StockReserved { .. } | OrderEvent::Confirmed { .. } => {}
        }
        Ok(())
    }
}
