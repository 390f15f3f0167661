use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::ids::{OrderId, RefundId};
use crate::money::Money;
use crate::text::{AuthorizationId, DeclineReason};

/// What happened to a payment. A persisted contract: variants and fields are never renamed;
/// a new shape gets a new `event_version` and an upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentEvent {
    Authorized {
        order_id: OrderId,
        amount: Money,
        /// The gateway's reference, needed to capture, void or refund.
        authorization_id: AuthorizationId,
        at: Timestamp,
    },
    Captured {
        amount: Money,
        at: Timestamp,
    },
    Declined {
        order_id: OrderId,
        amount: Money,
        reason: DeclineReason,
        at: Timestamp,
    },
    Refunded {
        refund_id: RefundId,
        amount: Money,
        at: Timestamp,
    },
    Voided {
        amount: Money,
        at: Timestamp,
    },
}

impl PaymentEvent {
    /// Every event type name this aggregate has ever emitted.
    pub const TYPES: [&'static str; 5] = [
        "PaymentAuthorized",
        "PaymentCaptured",
        "PaymentDeclined",
        "PaymentRefunded",
        "PaymentVoided",
    ];
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        let name = match self {
            PaymentEvent::Authorized { .. } => "PaymentAuthorized",
            PaymentEvent::Captured { .. } => "PaymentCaptured",
            PaymentEvent::Declined { .. } => "PaymentDeclined",
            PaymentEvent::Refunded { .. } => "PaymentRefunded",
            PaymentEvent::Voided { .. } => "PaymentVoided",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
