//! The example downstream service: a notifications consumer fed from Kafka. Per order it
//! records one message when the order is confirmed and one when it is cancelled, in its own
//! table, through the inbox runtime (so a redelivered event sends nothing twice).
//!
//! It reads only the public envelope contract, as a service in another team would.

use async_trait::async_trait;
use domain::order::OrderEvent;
use infra::kafka::Envelope;
use infra::kafka::consumer::{HandlerError, InboxHandler};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, Default)]
pub struct Notifications;

impl Notifications {
    pub const NAME: &'static str = "notifications";
}

/// The notification an event calls for, if any: (order id, kind, message).
pub fn notification_for(
    envelope: &Envelope,
) -> Result<Option<(Uuid, &'static str, String)>, HandlerError> {
    if envelope.aggregate_type != "order" {
        return Ok(None);
    }
    let rejected = |reason: String| HandlerError::Rejected {
        event_id: envelope.event_id,
        reason,
    };
    let decode = || {
        serde_json::from_value::<OrderEvent>(envelope.payload.clone())
            .map_err(|err| rejected(format!("the payload is not an order event: {err}")))
    };
    let order_id = || {
        Uuid::parse_str(&envelope.aggregate_id)
            .map_err(|err| rejected(format!("the order id is not a UUID: {err}")))
    };
    Ok(match envelope.event_type.as_str() {
        "OrderConfirmed" => {
            let id = order_id()?;
            Some((
                id,
                "order_confirmed",
                format!("Your order {id} is confirmed."),
            ))
        }
        "OrderCancelled" => match decode()? {
            OrderEvent::Cancelled { reason, .. } => {
                let id = order_id()?;
                let why = reason.as_str().replace('_', " ");
                Some((
                    id,
                    "order_cancelled",
                    format!("Your order {id} was cancelled ({why})."),
                ))
            }
            _ => None,
        },
        _ => None,
    })
}

#[async_trait]
impl InboxHandler for Notifications {
    fn name(&self) -> String {
        Self::NAME.to_owned()
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        let (mut ids, mut kinds, mut messages, mut event_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for envelope in events {
            if let Some((order_id, kind, message)) = notification_for(envelope)? {
                ids.push(order_id);
                kinds.push(kind);
                messages.push(message);
                event_ids.push(envelope.event_id);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        // The inbox already removed redelivered events; the key keeps one message per
        // order and kind even if an order's event were ever published under a new id.
        sqlx::query(
            "INSERT INTO notifications (order_id, kind, message, event_id)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[])
             ON CONFLICT (order_id, kind) DO NOTHING",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&messages)
        .bind(&event_ids)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
