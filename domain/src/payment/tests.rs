use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::Timestamp;
use crate::ids::{OrderId, RefundId};
use crate::money::{Currency, Money};
use crate::text::{AuthorizationId, DeclineReason};

fn t(second: u32) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, second)
        .single()
        .unwrap()
}
fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
}
fn order() -> OrderId {
    OrderId::from(uuid::Uuid::from_bytes([3; 16]))
}
fn refund_id(n: u8) -> RefundId {
    RefundId::from(uuid::Uuid::from_bytes([n; 16]))
}
fn given(events: impl IntoIterator<Item = PaymentEvent>) -> PaymentState {
    events.into_iter().fold(PaymentState::default(), evolve)
}
fn authorization() -> AuthorizationId {
    AuthorizationId::parse("auth_1").unwrap()
}
fn authorize(minor: i64) -> PaymentCommand {
    PaymentCommand::Authorize {
        order_id: order(),
        amount: eur(minor),
        authorization_id: authorization(),
        at: t(1),
    }
}
fn authorized(minor: i64) -> PaymentEvent {
    PaymentEvent::Authorized {
        order_id: order(),
        amount: eur(minor),
        authorization_id: authorization(),
        at: t(1),
    }
}
fn decline() -> PaymentCommand {
    PaymentCommand::Decline {
        order_id: order(),
        amount: eur(100),
        reason: DeclineReason::parse("insufficient funds").unwrap(),
        at: t(1),
    }
}
fn declined() -> PaymentEvent {
    PaymentEvent::Declined {
        order_id: order(),
        amount: eur(100),
        reason: DeclineReason::parse("insufficient funds").unwrap(),
        at: t(1),
    }
}
fn capture() -> PaymentCommand {
    PaymentCommand::Capture { at: t(2) }
}
fn captured(minor: i64) -> PaymentEvent {
    PaymentEvent::Captured {
        amount: eur(minor),
        at: t(2),
    }
}
fn refund(n: u8, minor: i64) -> PaymentCommand {
    PaymentCommand::Refund {
        refund_id: refund_id(n),
        amount: eur(minor),
        at: t(3),
    }
}
fn refunded(n: u8, minor: i64) -> PaymentEvent {
    PaymentEvent::Refunded {
        refund_id: refund_id(n),
        amount: eur(minor),
        at: t(3),
    }
}
fn void() -> PaymentCommand {
    PaymentCommand::Void { at: t(4) }
}

mod when_empty {
    use super::*;

    #[test]
    fn authorize_emits_authorized() {
        assert_eq!(
            decide(authorize(100), &given([])),
            Ok(vec![authorized(100)])
        );
    }

    #[test]
    fn authorize_zero_is_rejected() {
        assert_eq!(
            decide(authorize(0), &given([])),
            Err(PaymentError::ZeroAmount)
        );
    }

    #[test]
    fn decline_emits_declined() {
        assert_eq!(decide(decline(), &given([])), Ok(vec![declined()]));
    }

    #[test]
    fn capture_and_refund_are_rejected() {
        assert_eq!(
            decide(capture(), &given([])),
            Err(PaymentError::NotAuthorized)
        );
        assert_eq!(
            decide(refund(1, 10), &given([])),
            Err(PaymentError::NotCaptured)
        );
    }

    #[test]
    fn void_is_a_no_op() {
        assert_eq!(decide(void(), &given([])), Ok(vec![]));
    }
}

mod when_authorized {
    use super::*;

    fn state() -> PaymentState {
        given([authorized(100)])
    }

    #[test]
    fn authorize_the_same_amount_again_is_a_no_op() {
        assert_eq!(decide(authorize(100), &state()), Ok(vec![]));
    }

    #[test]
    fn authorize_another_amount_is_rejected() {
        assert_eq!(
            decide(authorize(90), &state()),
            Err(PaymentError::AlreadyAuthorized { amount: eur(100) })
        );
    }

    #[test]
    fn decline_is_rejected() {
        assert_eq!(
            decide(decline(), &state()),
            Err(PaymentError::AlreadyAuthorized { amount: eur(100) })
        );
    }

    #[test]
    fn capture_emits_captured_for_the_authorized_amount() {
        assert_eq!(decide(capture(), &state()), Ok(vec![captured(100)]));
    }

    #[test]
    fn refund_is_rejected_before_capture() {
        assert_eq!(
            decide(refund(1, 10), &state()),
            Err(PaymentError::NotCaptured)
        );
    }

    #[test]
    fn void_emits_voided() {
        assert_eq!(
            decide(void(), &state()),
            Ok(vec![PaymentEvent::Voided {
                amount: eur(100),
                at: t(4)
            }])
        );
    }
}

mod when_captured {
    use super::*;

    fn state() -> PaymentState {
        given([authorized(100), captured(100)])
    }

    #[test]
    fn capture_again_and_authorize_the_same_amount_are_no_ops() {
        assert_eq!(decide(capture(), &state()), Ok(vec![]));
        assert_eq!(decide(authorize(100), &state()), Ok(vec![]));
    }

    #[test]
    fn decline_and_void_are_rejected() {
        assert_eq!(
            decide(decline(), &state()),
            Err(PaymentError::AlreadyCaptured)
        );
        assert_eq!(decide(void(), &state()), Err(PaymentError::AlreadyCaptured));
    }

    #[test]
    fn refund_up_to_the_captured_amount_is_allowed_in_parts() {
        assert_eq!(decide(refund(1, 60), &state()), Ok(vec![refunded(1, 60)]));
        let after = given([authorized(100), captured(100), refunded(1, 60)]);
        assert_eq!(
            decide(refund(2, 41), &after),
            Err(PaymentError::RefundExceedsCaptured {
                refundable: eur(40)
            })
        );
        assert_eq!(decide(refund(2, 40), &after), Ok(vec![refunded(2, 40)]));
    }

    #[test]
    fn refund_with_a_known_id_is_a_no_op() {
        let after = given([authorized(100), captured(100), refunded(1, 60)]);
        assert_eq!(decide(refund(1, 60), &after), Ok(vec![]));
    }

    #[test]
    fn refund_of_zero_or_in_another_currency_is_rejected() {
        assert_eq!(
            decide(refund(1, 0), &state()),
            Err(PaymentError::ZeroAmount)
        );
        let usd = PaymentCommand::Refund {
            refund_id: refund_id(1),
            amount: Money::new(10, Currency::parse("USD").unwrap()).unwrap(),
            at: t(3),
        };
        assert_eq!(decide(usd, &state()), Err(PaymentError::CurrencyMismatch));
    }
}

mod when_declined {
    use super::*;

    #[test]
    fn decline_again_and_void_are_no_ops() {
        assert_eq!(decide(decline(), &given([declined()])), Ok(vec![]));
        assert_eq!(decide(void(), &given([declined()])), Ok(vec![]));
    }

    #[test]
    fn authorize_capture_and_refund_are_rejected() {
        for command in [authorize(100), capture(), refund(1, 10)] {
            assert_eq!(
                decide(command, &given([declined()])),
                Err(PaymentError::Declined)
            );
        }
    }
}

mod when_voided {
    use super::*;

    fn state() -> PaymentState {
        given([
            authorized(100),
            PaymentEvent::Voided {
                amount: eur(100),
                at: t(4),
            },
        ])
    }

    #[test]
    fn void_again_is_a_no_op() {
        assert_eq!(decide(void(), &state()), Ok(vec![]));
    }

    #[test]
    fn everything_else_is_rejected() {
        for command in [authorize(100), decline(), capture(), refund(1, 10)] {
            assert_eq!(decide(command, &state()), Err(PaymentError::Voided));
        }
    }
}

fn payment_command() -> impl Strategy<Value = PaymentCommand> {
    prop_oneof![
        (1i64..200).prop_map(authorize),
        Just(capture()),
        Just(void()),
        (0u8..4, 0i64..120).prop_map(|(n, minor)| refund(n, minor)),
    ]
}

proptest! {
    #[test]
    fn refunds_never_exceed_what_was_captured(
        commands in prop::collection::vec(payment_command(), 0..40),
    ) {
        let mut state = PaymentState::default();
        for command in commands {
            if let Ok(events) = decide(command, &state) {
                state = events.into_iter().fold(state, evolve);
            }
            if let PaymentState::Captured { captured, refunded, .. } = &state {
                prop_assert!(refunded.amount_minor() <= captured.amount_minor());
            }
        }
    }
}

#[test]
fn every_event_survives_a_serde_round_trip_and_has_a_stable_type() {
    use cqrs_es::DomainEvent;
    let events = [
        authorized(100),
        captured(100),
        declined(),
        refunded(1, 10),
        PaymentEvent::Voided {
            amount: eur(100),
            at: t(4),
        },
    ];
    let mut types = Vec::new();
    for event in events {
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<PaymentEvent>(&json).unwrap(), event);
        assert_eq!(event.event_version(), "1.0");
        types.push(event.event_type());
    }
    assert_eq!(types, PaymentEvent::TYPES);
}
