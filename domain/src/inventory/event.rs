use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::ids::OrderId;
use crate::money::{Money, Quantity};
use crate::text::{ItemName, Sku};

/// What happened to an inventory item. A persisted contract: variants and fields are never
/// renamed; a new shape gets a new `event_version` and an upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InventoryEvent {
    Registered {
        sku: Sku,
        name: ItemName,
        unit_price: Money,
        initial_stock: u32,
        at: Timestamp,
    },
    Restocked {
        quantity: Quantity,
        at: Timestamp,
    },
    /// `unit_price` is the item's price at the moment of reservation: the order's total is
    /// computed from it, so a later price change does not alter a placed order.
    Reserved {
        order_id: OrderId,
        quantity: Quantity,
        unit_price: Money,
        at: Timestamp,
    },
    Released {
        order_id: OrderId,
        quantity: Quantity,
        at: Timestamp,
    },
    /// The reserved units left the warehouse: on hand and reserved both drop by `quantity`.
    Committed {
        order_id: OrderId,
        quantity: Quantity,
        at: Timestamp,
    },
}

impl InventoryEvent {
    /// Every event type name this aggregate has ever emitted.
    pub const TYPES: [&'static str; 5] = [
        "InventoryItemRegistered",
        "InventoryItemRestocked",
        "StockReserved",
        "StockReleased",
        "StockCommitted",
    ];
}

impl DomainEvent for InventoryEvent {
    fn event_type(&self) -> String {
        let name = match self {
            InventoryEvent::Registered { .. } => "InventoryItemRegistered",
            InventoryEvent::Restocked { .. } => "InventoryItemRestocked",
            InventoryEvent::Reserved { .. } => "StockReserved",
            InventoryEvent::Released { .. } => "StockReleased",
            InventoryEvent::Committed { .. } => "StockCommitted",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
