use crate::Timestamp;
use crate::ids::{OrderId, RefundId};
use crate::money::Money;
use crate::text::{AuthorizationId, DeclineReason};

/// What can be recorded about a payment.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentCommand {
    /// The gateway authorized `amount` on the customer's card.
    Authorize {
        order_id: OrderId,
        amount: Money,
        authorization_id: AuthorizationId,
        at: Timestamp,
    },
    /// The gateway captured the authorized amount.
    Capture { at: Timestamp },
    /// The gateway refused to authorize.
    Decline {
        order_id: OrderId,
        amount: Money,
        reason: DeclineReason,
        at: Timestamp,
    },
    /// Give back `amount` of what was captured. `refund_id` makes a retried refund a no-op.
    Refund {
        refund_id: RefundId,
        amount: Money,
        at: Timestamp,
    },
    /// Release an authorization that will not be captured.
    Void { at: Timestamp },
}
