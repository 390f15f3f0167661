//! Decoding stored events into the domain's event types, by aggregate type.

use crate::event_store::StoredEvent;
use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::order::{Order, OrderEvent};
use domain::payment::{Payment, PaymentEvent};
use serde::Deserialize;

/// An event of any aggregate this system knows.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    Order(OrderEvent),
    Inventory(InventoryEvent),
    Payment(PaymentEvent),
    /// An aggregate type we do not know (another writer shares the table): ignored.
    Unknown,
}

/// Decodes a payload from its JSON text (see `log::read_after_decoding`): the same as
/// [`decode`] without building a `serde_json::Value` first.
pub fn decode_text(event: &StoredEvent, payload: &str) -> Result<DomainEvent, serde_json::Error> {
    Ok(match event.aggregate_type.as_str() {
        t if t == Order::TYPE => DomainEvent::Order(serde_json::from_str(payload)?),
        t if t == InventoryItem::TYPE => DomainEvent::Inventory(serde_json::from_str(payload)?),
        t if t == Payment::TYPE => DomainEvent::Payment(serde_json::from_str(payload)?),
        _ => DomainEvent::Unknown,
    })
}

/// Decodes the payload. A failure means the event cannot be read by this version of the code:
/// a poison event for every projection that needs it.
pub fn decode(event: &StoredEvent) -> Result<DomainEvent, serde_json::Error> {
    // Deserialized from the borrowed payload: no copy of the JSON tree.
    let payload = &event.payload;
    Ok(match event.aggregate_type.as_str() {
        t if t == Order::TYPE => DomainEvent::Order(OrderEvent::deserialize(payload)?),
        t if t == InventoryItem::TYPE => {
            DomainEvent::Inventory(InventoryEvent::deserialize(payload)?)
        }
        t if t == Payment::TYPE => DomainEvent::Payment(PaymentEvent::deserialize(payload)?),
        _ => DomainEvent::Unknown,
    })
}
