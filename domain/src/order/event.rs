use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::{CancelReason, OrderLines, PricedLine};
use crate::Timestamp;
use crate::ids::CustomerId;
use crate::money::{Currency, Money};
use crate::text::CardToken;

/// What happened to an order. A persisted contract: variants and fields are never renamed;
/// a new shape gets a new `event_version` and an upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    Placed {
        customer_id: CustomerId,
        lines: OrderLines,
        card_token: CardToken,
        /// The currency every line is priced in, known from the catalog at placement.
        currency: Currency,
        at: Timestamp,
    },
    StockReserved {
        lines: Vec<PricedLine>,
        /// Sum of the line totals, computed at decision time.
        total: Money,
        at: Timestamp,
    },
    Confirmed {
        at: Timestamp,
    },
    Shipped {
        at: Timestamp,
    },
    Cancelled {
        reason: CancelReason,
        at: Timestamp,
    },
}

impl OrderEvent {
    /// Every event type name this aggregate has ever emitted.
    pub const TYPES: [&'static str; 5] = [
        "OrderPlaced",
        "OrderStockReserved",
        "OrderConfirmed",
        "OrderShipped",
        "OrderCancelled",
    ];
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        let name = match self {
            OrderEvent::Placed { .. } => "OrderPlaced",
            OrderEvent::StockReserved { .. } => "OrderStockReserved",
            OrderEvent::Confirmed { .. } => "OrderConfirmed",
            OrderEvent::Shipped { .. } => "OrderShipped",
            OrderEvent::Cancelled { .. } => "OrderCancelled",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
