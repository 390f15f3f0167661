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

use std::sync::{Arc, Mutex};

use super::order_fulfillment::{Fulfillment, Signals};
use super::runner::Handoff;
use super::store::{self, Claimed};

/// The trigger. With a [`Handoff`] (the saga worker's), the sagas it starts are claimed for
/// the runner of its process in the same statement and handed to it once the batch commits.
#[derive(Debug, Clone, Default)]
pub struct FulfillmentTrigger {
    handoff: Option<Arc<Handoff>>,
    /// Started claimed by the batch in progress; handed over when it commits.
    started: Arc<Mutex<Vec<Claimed>>>,
}

impl FulfillmentTrigger {
    pub const NAME: &'static str = "order_fulfillment";

    /// A trigger that leaves every saga it starts to be claimed by some runner.
    pub fn new() -> Self {
        Self::default()
    }

    /// A trigger that hands the sagas it starts to `handoff`'s runner (at most its room).
    pub fn handing_to(handoff: Arc<Handoff>) -> Self {
        Self {
            handoff: Some(handoff),
            started: Arc::default(),
        }
    }

    /// A signal for a saga this batch started claimed: the runner gets it with the saga,
    /// as a claim would have read it from the row.
    fn signalled(&self, order_id: OrderId, cancel: bool, ship: bool) {
        if let Some(claimed) = self
            .started()
            .iter_mut()
            .find(|claimed| claimed.saga.order_id == order_id)
        {
            claimed.signals.cancel_requested |= cancel;
            claimed.signals.ship_requested |= ship;
            claimed.seen += 1;
        }
    }

    fn started(&self) -> std::sync::MutexGuard<'_, Vec<Claimed>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the starts so far (claimed for the hand-off's runner while it has room).
    async fn start(
        &self,
        conn: &mut PgConnection,
        starts: &mut Vec<Fulfillment>,
    ) -> Result<(), sqlx::Error> {
        let starts = std::mem::take(starts);
        let claim = self.handoff.as_ref().map(|handoff| store::ClaimOnStart {
            runner: handoff.runner(),
            lease: handoff.lease(),
            max: handoff.room().saturating_sub(self.started().len()),
        });
        let claimed = store::start_many(conn, &starts, claim).await?;
        if !claimed.is_empty() {
            let mut started = self.started();
            started.extend(
                starts
                    .into_iter()
                    .filter(|saga| claimed.contains(&saga.order_id.as_uuid()))
                    .map(|saga| Claimed {
                        saga,
                        signals: Signals::default(),
                        seen: 0,
                        attempts: 0,
                    }),
            );
        }
        Ok(())
    }
}

/// The events that start or signal sagas.
const READS: [&str; 3] = ["OrderPlaced", "OrderCancelled", "OrderShipped"];

#[async_trait]
impl Projection for FulfillmentTrigger {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn handles(&self, stored: &StoredEvent) -> bool {
        stored.aggregate_type == Order::TYPE && READS.contains(&stored.event_type.as_str())
    }

    /// The log is read without the payloads of every other event (most of them).
    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&READS)
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        // The batch's starts go in one statement; a signal (rare: a cancel, a shipment)
        // goes on its own, after the starts before it. Runners hear of them from the
        // worker's checkpoint notice after the commit ([`wakes_runners`]), not from a NOTIFY
        // in this transaction, which would hold PostgreSQL's notification lock through the
        // commit.
        let mut starts = Vec::new();
        for decoded in events {
            self.apply_one(conn, &decoded.stored, &decoded.event, &mut starts)
                .await?;
        }
        self.start(conn, &mut starts).await?;
        Ok(())
    }

    fn finished(&self, committed: bool) {
        let started = std::mem::take(&mut *self.started());
        if committed && let Some(handoff) = &self.handoff {
            handoff.give(started);
        }
    }
}

/// Whether a notification on `ordo_checkpoints` should wake saga runners: the trigger
/// committed a batch (which may have started or signalled sagas) or changed state.
pub fn wakes_runners(payload: &str) -> bool {
    CheckpointNotice::parse(payload)
        .is_some_and(|notice| notice.projection == FulfillmentTrigger::NAME)
}

/// Adds a start to `starts`, or signals a saga (after writing the starts so far).
impl FulfillmentTrigger {
    async fn apply_one(
        &self,
        conn: &mut PgConnection,
        stored: &StoredEvent,
        event: &DomainEvent,
        starts: &mut Vec<Fulfillment>,
    ) -> Result<(), ApplyError> {
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
                self.start(conn, starts).await?;
                store::signal(conn, order_id, true, false).await?;
                self.signalled(order_id, true, false);
            }
            OrderEvent::Shipped { .. } => {
                self.start(conn, starts).await?;
                store::signal(conn, order_id, false, true).await?;
                self.signalled(order_id, false, true);
            }
            OrderEvent::StockReserved { .. } | OrderEvent::Confirmed { .. } => {}
        }
        Ok(())
    }
}
