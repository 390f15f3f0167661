use super::{PaymentCommand, PaymentEvent, PaymentState};
use crate::money::Money;
use crate::rejection::Rejection;

/// Why a payment command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("a payment amount must be greater than zero")]
    ZeroAmount,
    #[error("the payment is already authorized for {amount}")]
    AlreadyAuthorized { amount: Money },
    #[error("the payment has not been authorized")]
    NotAuthorized,
    #[error("the payment has already been captured; refund it instead")]
    AlreadyCaptured,
    #[error("the payment has not been captured, so there is nothing to refund")]
    NotCaptured,
    #[error("the payment was declined")]
    Declined,
    #[error("the payment was voided")]
    Voided,
    #[error("at most {refundable} can still be refunded")]
    RefundExceedsCaptured { refundable: Money },
    #[error("the amount is in another currency than the payment")]
    CurrencyMismatch,
}

impl Rejection for PaymentError {
    fn code(&self) -> &'static str {
        match self {
            PaymentError::ZeroAmount => "zero_amount",
            PaymentError::AlreadyAuthorized { .. } => "payment_already_authorized",
            PaymentError::NotAuthorized => "payment_not_authorized",
            PaymentError::AlreadyCaptured => "payment_already_captured",
            PaymentError::NotCaptured => "payment_not_captured",
            PaymentError::Declined => "payment_declined",
            PaymentError::Voided => "payment_voided",
            PaymentError::RefundExceedsCaptured { .. } => "refund_exceeds_captured",
            PaymentError::CurrencyMismatch => "currency_mismatch",
        }
    }
}

/// Decides what a command does to a payment.
///
/// Every command a saga may retry is idempotent: authorizing the same amount again,
/// capturing twice, declining twice, refunding with a known `refund_id` and voiding
/// something that holds no authorization all emit nothing.
pub fn decide(
    command: PaymentCommand,
    state: &PaymentState,
) -> Result<Vec<PaymentEvent>, PaymentError> {
    match (command, state) {
        (PaymentCommand::Authorize { amount, .. }, _) if amount.is_zero() => {
            Err(PaymentError::ZeroAmount)
        }
        (
            PaymentCommand::Authorize {
                order_id,
                amount,
                authorization_id,
                at,
            },
            PaymentState::Empty,
        ) => Ok(vec![PaymentEvent::Authorized {
            order_id,
            amount,
            authorization_id,
            at,
        }]),
        (PaymentCommand::Authorize { amount, .. }, PaymentState::Authorized { amount: held })
        | (
            PaymentCommand::Authorize { amount, .. },
            PaymentState::Captured { captured: held, .. },
        ) => {
            if amount == *held {
                Ok(vec![])
            } else {
                Err(PaymentError::AlreadyAuthorized { amount: *held })
            }
        }

        (
            PaymentCommand::Decline {
                order_id,
                amount,
                reason,
                at,
            },
            PaymentState::Empty,
        ) => Ok(vec![PaymentEvent::Declined {
            order_id,
            amount,
            reason,
            at,
        }]),
        (PaymentCommand::Decline { .. }, PaymentState::Declined) => Ok(vec![]),
        (PaymentCommand::Decline { .. }, PaymentState::Authorized { amount }) => {
            Err(PaymentError::AlreadyAuthorized { amount: *amount })
        }
        (PaymentCommand::Decline { .. }, PaymentState::Captured { .. }) => {
            Err(PaymentError::AlreadyCaptured)
        }

        (PaymentCommand::Capture { at }, PaymentState::Authorized { amount }) => {
            Ok(vec![PaymentEvent::Captured {
                amount: *amount,
                at,
            }])
        }
        (PaymentCommand::Capture { .. }, PaymentState::Captured { .. }) => Ok(vec![]),
        (PaymentCommand::Capture { .. }, PaymentState::Empty) => Err(PaymentError::NotAuthorized),

        (
            PaymentCommand::Refund {
                refund_id,
                amount,
                at,
            },
            PaymentState::Captured {
                captured,
                refunded,
                refund_ids,
            },
        ) => {
            if refund_ids.contains(&refund_id) {
                return Ok(vec![]);
            }
            if amount.currency() != captured.currency() {
                return Err(PaymentError::CurrencyMismatch);
            }
            if amount.is_zero() {
                return Err(PaymentError::ZeroAmount);
            }
            let refundable = captured
                .checked_sub(*refunded)
                .unwrap_or(Money::zero(captured.currency()));
            if amount.amount_minor() > refundable.amount_minor() {
                return Err(PaymentError::RefundExceedsCaptured { refundable });
            }
            Ok(vec![PaymentEvent::Refunded {
                refund_id,
                amount,
                at,
            }])
        }
        (PaymentCommand::Refund { .. }, PaymentState::Empty | PaymentState::Authorized { .. }) => {
            Err(PaymentError::NotCaptured)
        }

        (PaymentCommand::Void { at }, PaymentState::Authorized { amount }) => {
            Ok(vec![PaymentEvent::Voided {
                amount: *amount,
                at,
            }])
        }
        // Nothing is held, so there is nothing to release: a timeout may void blindly.
        (
            PaymentCommand::Void { .. },
            PaymentState::Empty | PaymentState::Declined | PaymentState::Voided,
        ) => Ok(vec![]),
        (PaymentCommand::Void { .. }, PaymentState::Captured { .. }) => {
            Err(PaymentError::AlreadyCaptured)
        }

        (
            PaymentCommand::Authorize { .. }
            | PaymentCommand::Capture { .. }
            | PaymentCommand::Refund { .. },
            PaymentState::Declined,
        ) => Err(PaymentError::Declined),
        (
            PaymentCommand::Authorize { .. }
            | PaymentCommand::Decline { .. }
            | PaymentCommand::Capture { .. }
            | PaymentCommand::Refund { .. },
            PaymentState::Voided,
        ) => Err(PaymentError::Voided),
    }
}
