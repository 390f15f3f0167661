use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::PaymentEvent;
use crate::ids::RefundId;
use crate::money::Money;

/// The lifecycle of a payment, holding only what decisions need.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentState {
    #[default]
    Empty,
    Authorized {
        amount: Money,
    },
    Captured {
        captured: Money,
        refunded: Money,
        /// Refunds already applied, so a retried refund is recognised. A payment sees a
        /// handful of refunds at most, so this stays small.
        refund_ids: BTreeSet<RefundId>,
    },
    Declined,
    Voided,
}

/// Folds one event into the state; total, like every `evolve`.
pub fn evolve(state: PaymentState, event: PaymentEvent) -> PaymentState {
    match event {
        PaymentEvent::Authorized { amount, .. } => match state {
            PaymentState::Empty => PaymentState::Authorized { amount },
            other => other,
        },
        PaymentEvent::Captured { amount, .. } => match state {
            PaymentState::Authorized { .. } => PaymentState::Captured {
                captured: amount,
                refunded: Money::zero(amount.currency()),
                refund_ids: BTreeSet::new(),
            },
            other => other,
        },
        PaymentEvent::Declined { .. } => match state {
            PaymentState::Empty => PaymentState::Declined,
            other => other,
        },
        PaymentEvent::Refunded {
            refund_id, amount, ..
        } => match state {
            PaymentState::Captured {
                captured,
                refunded,
                mut refund_ids,
            } => {
                let refunded = if refund_ids.insert(refund_id) {
                    refunded.checked_add(amount).unwrap_or(refunded)
                } else {
                    refunded
                };
                PaymentState::Captured {
                    captured,
                    refunded,
                    refund_ids,
                }
            }
            other => other,
        },
        PaymentEvent::Voided { .. } => match state {
            PaymentState::Authorized { .. } => PaymentState::Voided,
            other => other,
        },
    }
}
