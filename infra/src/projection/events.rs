//! Decoding stored events into the domain's event types, by aggregate type.

use crate::event_store::StoredEvent;
use cqrs_es::Aggregate;
use domain::inventory::{InventoryEvent, InventoryItem};
use domain::order::{Order, OrderEvent};
use domain::payment::{Payment, PaymentEvent};

/// An event of any aggregate this system knows.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    Order(OrderEvent),
    Inventory(InventoryEvent),
    Payment(PaymentEvent),
    /// An aggregate type we do not know (another writer shares the table): ignored.
    Unknown,
}

/// Decodes the payload. A failure means the event cannot be read by this version of the code:
/// a poison event for every projection that needs it.
pub fn decode(event: &StoredEvent) -> Result<DomainEvent, serde_json::Error> {
    let payload = event.payload.clone();
    Ok(match event.aggregate_type.as_str() {
        t if t == Order::TYPE => DomainEvent::Order(serde_json::from_value(payload)?),
        t if t == InventoryItem::TYPE => DomainEvent::Inventory(serde_json::from_value(payload)?),
        t if t == Payment::TYPE => DomainEvent::Payment(serde_json::from_value(payload)?),
        _ => DomainEvent::Unknown,
    })
}
