//! The order fulfilment saga as a pure state machine.
//!
//! `OrderPlaced` → reserve each line (in SKU order, all or nothing) → record the reservation
//! with the items' prices on the order → authorize and capture the total through the payment
//! gateway (until the payment deadline) → confirm. Then wait: shipping commits the
//! reservations; a customer's cancel refunds and releases.
//!
//! Compensation (out of stock, declined, timed out, cancelled by the customer): refund what
//! was captured or void what was authorized, release every reservation, and cancel the order
//! with the reason (unless the customer already did).
//!
//! [`next_action`] says what to do next (making the transitions that need no IO on the way);
//! [`apply`] records an action's outcome. Every action is idempotent (its command is a
//! no-op when its effect is already there, and its gateway call carries a key derived from
//! the event that started the saga, [`Fulfillment::key`]), so the runner persists the state
//! only where it matters: on entering `Charging` (the payment deadline), on every
//! compensating step, on failures, and when the saga waits; a crash in between repeats the
//! happy path's steps since the last save, harmlessly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use domain::Timestamp;
use domain::ids::{OrderId, RefundId};
use domain::money::{Currency, Money, Quantity};
use domain::order::{CancelReason, OrderLine, ReservedLine};
use domain::text::{AuthorizationId, CardToken, Sku};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Where a fulfilment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Reserving,
    Recording,
    /// Authorizing and capturing, until the payment deadline.
    Charging,
    Confirming,
    /// Paid and confirmed: waiting for shipping or a cancel.
    Confirmed,
    /// Shipped: committing the reservations.
    Committing,
    /// Undoing; `reason` is what the order is cancelled with (none when the customer already
    /// cancelled it).
    Compensating {
        reason: Option<CancelReason>,
    },
    Completed,
    Cancelled,
    /// Stopped on something unexpected; an operator retries it from `stage`.
    Failed {
        error: String,
        stage: Box<Stage>,
    },
}

impl Stage {
    /// The stage's name, as listed by `GET /sagas`.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Reserving => "reserving",
            Stage::Recording => "recording",
            Stage::Charging => "charging",
            Stage::Confirming => "confirming",
            Stage::Confirmed => "confirmed",
            Stage::Committing => "committing",
            Stage::Compensating { .. } => "compensating",
            Stage::Completed => "completed",
            Stage::Cancelled => "cancelled",
            Stage::Failed { .. } => "failed",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Stage::Completed | Stage::Cancelled)
    }
}

/// The saga's memory of one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fulfillment {
    pub order_id: OrderId,
    /// The `OrderPlaced` event that started the saga: every key derives from it.
    pub placed_event_id: Uuid,
    pub card_token: CardToken,
    pub currency: Currency,
    /// The order's lines in SKU order, the order reservations are taken in.
    pub lines: Vec<OrderLine>,
    pub stage: Stage,
    /// The unit price each reserved line was reserved at.
    pub reserved: BTreeMap<Sku, Money>,
    pub released: BTreeSet<Sku>,
    pub committed: BTreeSet<Sku>,
    pub total: Option<Money>,
    /// No payment outcome by then: cancel with `payment_timeout`.
    pub deadline: Option<Timestamp>,
    /// Set when charging starts: from then on an authorization may exist at the gateway even
    /// if its answer was lost, so compensation looks it up.
    pub charging_started: bool,
    pub authorization: Option<AuthorizationId>,
    /// The gateway was asked what the authorize key produced (after a lost answer).
    pub looked_up: bool,
    pub declined: bool,
    pub captured: bool,
    pub voided: bool,
    pub refunded: bool,
    /// The saga cancelled the order itself.
    pub order_cancelled: bool,
}

/// What the trigger has told the saga about its order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    pub cancel_requested: bool,
    pub ship_requested: bool,
}

/// One step with an effect outside the saga's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reserve {
        sku: Sku,
        quantity: Quantity,
    },
    RecordReservation {
        lines: Vec<ReservedLine>,
    },
    Authorize {
        amount: Money,
    },
    Capture {
        authorization: AuthorizationId,
    },
    Confirm,
    LookUpAuthorization,
    Void {
        authorization: AuthorizationId,
    },
    Refund {
        authorization: AuthorizationId,
        amount: Money,
        refund_id: RefundId,
    },
    Release {
        sku: Sku,
    },
    CancelOrder {
        reason: CancelReason,
    },
    Commit {
        sku: Sku,
    },
}

impl Action {
    /// A short name, for keys, logs and `next_step`.
    pub fn name(&self) -> String {
        match self {
            Action::Reserve { sku, .. } => format!("reserve:{sku}"),
            Action::RecordReservation { .. } => "record-reservation".to_owned(),
            Action::Authorize { .. } => "authorize".to_owned(),
            Action::Capture { .. } => "capture".to_owned(),
            Action::Confirm => "confirm".to_owned(),
            Action::LookUpAuthorization => "look-up-authorization".to_owned(),
            Action::Void { .. } => "void".to_owned(),
            Action::Refund { .. } => "refund".to_owned(),
            Action::Release { sku } => format!("release:{sku}"),
            Action::CancelOrder { .. } => "cancel-order".to_owned(),
            Action::Commit { sku } => format!("commit:{sku}"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What an action achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reserved {
        sku: Sku,
        unit_price: Money,
    },
    /// A line could not be reserved (not enough stock, or the item is gone).
    OutOfStock,
    Recorded,
    /// A command on the order was refused because the customer cancelled it meanwhile.
    CancelledByCustomer,
    Authorized(AuthorizationId),
    Declined,
    Captured,
    Confirmed,
    LookedUp(Option<AuthorizationId>),
    Voided,
    Refunded,
    Released {
        sku: Sku,
    },
    OrderCancelled,
    Committed {
        sku: Sku,
    },
}

impl Fulfillment {
    /// A new fulfilment for a placed order.
    pub fn start(
        order_id: OrderId,
        placed_event_id: Uuid,
        card_token: CardToken,
        currency: Currency,
        mut lines: Vec<OrderLine>,
    ) -> Self {
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        Self {
            order_id,
            placed_event_id,
            card_token,
            currency,
            lines,
            stage: Stage::Reserving,
            reserved: BTreeMap::new(),
            released: BTreeSet::new(),
            committed: BTreeSet::new(),
            total: None,
            deadline: None,
            charging_started: false,
            authorization: None,
            looked_up: false,
            declined: false,
            captured: false,
            voided: false,
            refunded: false,
            order_cancelled: false,
        }
    }

    /// The idempotency key of a step: the same step of the same saga always gets the same
    /// key, so a repeated step is recognised by the executor and the gateway.
    pub fn key(&self, step: &str) -> String {
        format!("saga:{}:{step}", self.placed_event_id)
    }

    /// The refund's id, derived like a key so a repeated refund is the same refund.
    pub fn refund_id(&self) -> RefundId {
        let digest = Sha256::digest(self.key("refund").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        RefundId::from(Uuid::from_bytes(bytes))
    }

    fn reserved_lines(&self) -> Vec<ReservedLine> {
        self.lines
            .iter()
            .filter_map(|line| {
                self.reserved.get(&line.sku).map(|price| ReservedLine {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                    unit_price: *price,
                })
            })
            .collect()
    }

    fn total_of_reserved(&self) -> Option<Money> {
        self.reserved_lines()
            .iter()
            .try_fold(Money::zero(self.currency), |sum, line| {
                line.unit_price
                    .times(line.quantity)
                    .ok()
                    .and_then(|t| sum.checked_add(t).ok())
            })
    }
}

/// The next action, after making every transition that needs no IO. `None`: nothing to do
/// until a signal arrives (or ever, in a final stage).
pub fn next_action(saga: &mut Fulfillment, signals: Signals, now: Timestamp) -> Option<Action> {
    loop {
        // A customer's cancel interrupts everything before shipping.
        if signals.cancel_requested
            && matches!(
                saga.stage,
                Stage::Reserving
                    | Stage::Recording
                    | Stage::Charging
                    | Stage::Confirming
                    | Stage::Confirmed
            )
        {
            saga.stage = Stage::Compensating { reason: None };
        }
        match &saga.stage {
            Stage::Reserving => {
                match saga
                    .lines
                    .iter()
                    .find(|line| !saga.reserved.contains_key(&line.sku))
                {
                    Some(line) => {
                        return Some(Action::Reserve {
                            sku: line.sku.clone(),
                            quantity: line.quantity,
                        });
                    }
                    None => saga.stage = Stage::Recording,
                }
            }
            Stage::Recording => {
                return Some(Action::RecordReservation {
                    lines: saga.reserved_lines(),
                });
            }
            Stage::Charging => {
                if !saga.captured && saga.deadline.is_some_and(|deadline| now >= deadline) {
                    saga.stage = Stage::Compensating {
                        reason: Some(CancelReason::PaymentTimeout),
                    };
                    continue;
                }
                match (&saga.authorization, saga.captured, saga.total) {
                    (None, _, Some(amount)) => return Some(Action::Authorize { amount }),
                    (Some(authorization), false, _) => {
                        return Some(Action::Capture {
                            authorization: authorization.clone(),
                        });
                    }
                    (Some(_), true, _) => saga.stage = Stage::Confirming,
                    // Charging always starts with a total; without one there is nothing to
                    // charge, so the order cannot be paid.
                    (None, _, None) => {
                        saga.stage = Stage::Compensating {
                            reason: Some(CancelReason::PaymentDeclined),
                        };
                    }
                }
            }
            Stage::Confirming => return Some(Action::Confirm),
            Stage::Confirmed => {
                if signals.ship_requested {
                    saga.stage = Stage::Committing;
                } else {
                    return None;
                }
            }
            Stage::Committing => {
                match saga
                    .reserved
                    .keys()
                    .find(|sku| !saga.committed.contains(*sku))
                {
                    Some(sku) => return Some(Action::Commit { sku: sku.clone() }),
                    None => saga.stage = Stage::Completed,
                }
            }
            Stage::Compensating { reason } => {
                let reason = *reason;
                if saga.captured
                    && !saga.refunded
                    && let (Some(authorization), Some(amount)) = (&saga.authorization, saga.total)
                {
                    return Some(Action::Refund {
                        authorization: authorization.clone(),
                        amount,
                        refund_id: saga.refund_id(),
                    });
                }
                if !saga.captured && !saga.voided && !saga.declined {
                    match &saga.authorization {
                        Some(authorization) => {
                            return Some(Action::Void {
                                authorization: authorization.clone(),
                            });
                        }
                        None if saga.charging_started && !saga.looked_up => {
                            return Some(Action::LookUpAuthorization);
                        }
                        None => {}
                    }
                }
                if let Some(sku) = saga
                    .reserved
                    .keys()
                    .find(|sku| !saga.released.contains(*sku))
                {
                    return Some(Action::Release { sku: sku.clone() });
                }
                match reason {
                    Some(reason) if !saga.order_cancelled => {
                        return Some(Action::CancelOrder { reason });
                    }
                    _ => saga.stage = Stage::Cancelled,
                }
            }
            Stage::Completed | Stage::Cancelled | Stage::Failed { .. } => return None,
        }
    }
}

/// Records what `action` achieved. `deadline` is when charging must be over, were it to
/// start now.
pub fn apply(saga: &mut Fulfillment, outcome: Outcome, deadline: Timestamp) {
    match outcome {
        Outcome::Reserved { sku, unit_price } => {
            saga.reserved.insert(sku, unit_price);
        }
        Outcome::OutOfStock => {
            saga.stage = Stage::Compensating {
                reason: Some(CancelReason::OutOfStock),
            };
        }
        Outcome::Recorded => {
            saga.total = saga.total_of_reserved();
            saga.deadline = Some(deadline);
            saga.charging_started = true;
            saga.stage = Stage::Charging;
        }
        Outcome::CancelledByCustomer => saga.stage = Stage::Compensating { reason: None },
        Outcome::Authorized(authorization) => saga.authorization = Some(authorization),
        Outcome::Declined => {
            saga.declined = true;
            saga.stage = Stage::Compensating {
                reason: Some(CancelReason::PaymentDeclined),
            };
        }
        Outcome::Captured => saga.captured = true,
        Outcome::Confirmed => saga.stage = Stage::Confirmed,
        Outcome::LookedUp(authorization) => {
            saga.looked_up = true;
            saga.authorization = authorization;
        }
        Outcome::Voided => saga.voided = true,
        Outcome::Refunded => saga.refunded = true,
        Outcome::Released { sku } => {
            saga.released.insert(sku);
        }
        Outcome::OrderCancelled => saga.order_cancelled = true,
        Outcome::Committed { sku } => {
            saga.committed.insert(sku);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(second: u32) -> Timestamp {
        chrono::Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, second)
            .single()
            .unwrap()
    }
    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
    }
    fn sku(name: &str) -> Sku {
        Sku::parse(name).unwrap()
    }
    fn auth() -> AuthorizationId {
        AuthorizationId::parse("auth_1").unwrap()
    }
    fn saga() -> Fulfillment {
        Fulfillment::start(
            OrderId::from(Uuid::from_bytes([1; 16])),
            Uuid::from_bytes([2; 16]),
            CardToken::parse("tok_visa").unwrap(),
            Currency::parse("EUR").unwrap(),
            vec![
                OrderLine {
                    sku: sku("B"),
                    quantity: Quantity::new(1).unwrap(),
                },
                OrderLine {
                    sku: sku("A"),
                    quantity: Quantity::new(2).unwrap(),
                },
            ],
        )
    }
    const QUIET: Signals = Signals {
        cancel_requested: false,
        ship_requested: false,
    };

    /// Drives the saga, answering each action with `answer`, and returns the actions taken.
    fn run(
        saga: &mut Fulfillment,
        signals: Signals,
        now: Timestamp,
        mut answer: impl FnMut(&Action) -> Outcome,
    ) -> Vec<String> {
        let mut taken = Vec::new();
        while let Some(action) = next_action(saga, signals, now) {
            taken.push(action.name());
            let outcome = answer(&action);
            apply(saga, outcome, t(30));
            assert!(taken.len() < 50, "the saga loops: {taken:?}");
        }
        taken
    }

    fn happy(action: &Action) -> Outcome {
        match action {
            Action::Reserve { sku, .. } => Outcome::Reserved {
                sku: sku.clone(),
                unit_price: if sku.as_str() == "A" {
                    eur(100)
                } else {
                    eur(50)
                },
            },
            Action::RecordReservation { .. } => Outcome::Recorded,
            Action::Authorize { .. } => Outcome::Authorized(auth()),
            Action::Capture { .. } => Outcome::Captured,
            Action::Confirm => Outcome::Confirmed,
            Action::LookUpAuthorization => Outcome::LookedUp(None),
            Action::Void { .. } => Outcome::Voided,
            Action::Refund { .. } => Outcome::Refunded,
            Action::Release { sku } => Outcome::Released { sku: sku.clone() },
            Action::CancelOrder { .. } => Outcome::OrderCancelled,
            Action::Commit { sku } => Outcome::Committed { sku: sku.clone() },
        }
    }

    #[test]
    fn a_paid_order_reserves_in_sku_order_records_charges_and_confirms() {
        let mut saga = saga();
        let mut authorized_amount = None;
        let taken = run(&mut saga, QUIET, t(1), |action| {
            if let Action::Authorize { amount } = action {
                authorized_amount = Some(*amount);
            }
            happy(action)
        });
        assert_eq!(
            taken,
            [
                "reserve:A",
                "reserve:B",
                "record-reservation",
                "authorize",
                "capture",
                "confirm"
            ]
        );
        assert_eq!(authorized_amount, Some(eur(250)), "2 x 100 + 1 x 50");
        assert_eq!(saga.stage, Stage::Confirmed);
        assert_eq!(saga.deadline, Some(t(30)));
    }

    #[test]
    fn shipping_commits_every_reservation() {
        let mut saga = saga();
        run(&mut saga, QUIET, t(1), happy);
        let shipped = Signals {
            ship_requested: true,
            ..QUIET
        };
        assert_eq!(
            run(&mut saga, shipped, t(2), happy),
            ["commit:A", "commit:B"]
        );
        assert_eq!(saga.stage, Stage::Completed);
    }

    #[test]
    fn a_line_out_of_stock_releases_the_others_and_cancels() {
        let mut saga = saga();
        let taken = run(&mut saga, QUIET, t(1), |action| match action {
            Action::Reserve { sku, .. } if sku.as_str() == "B" => Outcome::OutOfStock,
            other => happy(other),
        });
        assert_eq!(
            taken,
            ["reserve:A", "reserve:B", "release:A", "cancel-order"]
        );
        assert_eq!(saga.stage, Stage::Cancelled);
    }

    #[test]
    fn a_declined_payment_releases_and_cancels_without_voiding() {
        let mut saga = saga();
        let mut cancelled_with = None;
        let taken = run(&mut saga, QUIET, t(1), |action| match action {
            Action::Authorize { .. } => Outcome::Declined,
            Action::CancelOrder { reason } => {
                cancelled_with = Some(*reason);
                Outcome::OrderCancelled
            }
            other => happy(other),
        });
        assert_eq!(
            taken,
            [
                "reserve:A",
                "reserve:B",
                "record-reservation",
                "authorize",
                "release:A",
                "release:B",
                "cancel-order"
            ]
        );
        assert_eq!(cancelled_with, Some(CancelReason::PaymentDeclined));
    }

    #[test]
    fn no_payment_outcome_by_the_deadline_looks_up_voids_releases_and_cancels() {
        let mut saga = saga();
        // Everything up to charging; then the gateway never answers (the runner retries).
        while let Some(action) = next_action(&mut saga, QUIET, t(1)) {
            if matches!(action, Action::Authorize { .. }) {
                break;
            }
            apply(&mut saga, happy(&action), t(30));
        }
        assert_eq!(saga.stage, Stage::Charging);
        let mut cancelled_with = None;
        let taken = run(&mut saga, QUIET, t(31), |action| match action {
            Action::LookUpAuthorization => Outcome::LookedUp(Some(auth())),
            Action::CancelOrder { reason } => {
                cancelled_with = Some(*reason);
                Outcome::OrderCancelled
            }
            other => happy(other),
        });
        assert_eq!(
            taken,
            [
                "look-up-authorization",
                "void",
                "release:A",
                "release:B",
                "cancel-order"
            ]
        );
        assert_eq!(cancelled_with, Some(CancelReason::PaymentTimeout));
    }

    #[test]
    fn a_customer_cancel_after_capture_refunds_and_releases_without_cancelling_again() {
        let mut saga = saga();
        run(&mut saga, QUIET, t(1), happy);
        let cancelled = Signals {
            cancel_requested: true,
            ..QUIET
        };
        let taken = run(&mut saga, cancelled, t(2), happy);
        assert_eq!(taken, ["refund", "release:A", "release:B"]);
        assert_eq!(saga.stage, Stage::Cancelled);
    }

    #[test]
    fn a_customer_cancel_while_reserving_releases_what_was_reserved() {
        let mut saga = saga();
        let mut cancelled = QUIET;
        let taken = {
            let mut taken = Vec::new();
            while let Some(action) = next_action(&mut saga, cancelled, t(1)) {
                taken.push(action.name());
                let outcome = happy(&action);
                apply(&mut saga, outcome, t(30));
                cancelled.cancel_requested = true;
            }
            taken
        };
        assert_eq!(taken, ["reserve:A", "release:A"]);
        assert_eq!(saga.stage, Stage::Cancelled);
    }

    #[test]
    fn a_cancel_found_when_recording_or_confirming_compensates() {
        for refused in ["record-reservation", "confirm"] {
            let mut saga = saga();
            let taken = run(&mut saga, QUIET, t(1), |action| {
                if action.name() == refused {
                    Outcome::CancelledByCustomer
                } else {
                    happy(action)
                }
            });
            assert_eq!(saga.stage, Stage::Cancelled, "{refused}: {taken:?}");
            assert!(taken.ends_with(&["release:A".to_owned(), "release:B".to_owned()]));
            assert!(
                !taken.contains(&"cancel-order".to_owned()),
                "the customer already cancelled"
            );
        }
    }

    #[test]
    fn keys_and_refund_ids_are_deterministic() {
        assert_eq!(saga().key("capture"), saga().key("capture"));
        assert_ne!(saga().key("capture"), saga().key("void"));
        assert_eq!(saga().refund_id(), saga().refund_id());
    }

    #[test]
    fn the_state_survives_a_round_trip_through_json() {
        let mut saga = saga();
        run(&mut saga, QUIET, t(1), happy);
        let json = serde_json::to_value(&saga).unwrap();
        assert_eq!(serde_json::from_value::<Fulfillment>(json).unwrap(), saga);
    }
}
