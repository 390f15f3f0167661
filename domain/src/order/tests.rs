use chrono::TimeZone;

use super::*;
use crate::Timestamp;
use crate::ids::CustomerId;
use crate::money::{Currency, Money, Quantity};
use crate::rejection::{Rejection, RejectionKind};
use crate::text::{CardToken, Sku};

fn t(second: u32) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, second)
        .single()
        .unwrap()
}
fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}
fn sku(name: &str) -> Sku {
    Sku::parse(name).unwrap()
}
fn qty(units: u32) -> Quantity {
    Quantity::new(units).unwrap()
}
fn money(minor: i64) -> Money {
    Money::new(minor, eur()).unwrap()
}
fn customer() -> CustomerId {
    CustomerId::from(uuid::Uuid::from_bytes([7; 16]))
}
fn two_lines() -> OrderLines {
    OrderLines::new(vec![
        OrderLine {
            sku: sku("A"),
            quantity: qty(2),
        },
        OrderLine {
            sku: sku("B"),
            quantity: qty(1),
        },
    ])
    .unwrap()
}
fn catalog() -> CatalogFacts {
    CatalogFacts::new([(sku("A"), eur()), (sku("B"), eur())])
}
fn place() -> OrderCommand {
    OrderCommand::Place {
        customer_id: customer(),
        lines: two_lines(),
        card_token: CardToken::parse("tok_visa").unwrap(),
        catalog: catalog(),
        at: t(0),
    }
}
fn placed() -> OrderEvent {
    OrderEvent::Placed {
        customer_id: customer(),
        lines: two_lines(),
        card_token: CardToken::parse("tok_visa").unwrap(),
        currency: eur(),
        at: t(0),
    }
}
fn reserved_lines() -> Vec<ReservedLine> {
    // Deliberately in another order than the order's lines.
    vec![
        ReservedLine {
            sku: sku("B"),
            quantity: qty(1),
            unit_price: money(500),
        },
        ReservedLine {
            sku: sku("A"),
            quantity: qty(2),
            unit_price: money(1000),
        },
    ]
}
fn stock_reserved() -> OrderEvent {
    OrderEvent::StockReserved {
        lines: vec![
            PricedLine {
                sku: sku("A"),
                quantity: qty(2),
                unit_price: money(1000),
                line_total: money(2000),
            },
            PricedLine {
                sku: sku("B"),
                quantity: qty(1),
                unit_price: money(500),
                line_total: money(500),
            },
        ],
        total: money(2500),
        at: t(1),
    }
}
fn given(events: impl IntoIterator<Item = OrderEvent>) -> OrderState {
    events.into_iter().fold(OrderState::default(), evolve)
}
fn record() -> OrderCommand {
    OrderCommand::RecordStockReserved {
        lines: reserved_lines(),
        at: t(1),
    }
}
fn confirm() -> OrderCommand {
    OrderCommand::Confirm { at: t(2) }
}
fn ship() -> OrderCommand {
    OrderCommand::Ship { at: t(3) }
}
fn cancel(reason: CancelReason) -> OrderCommand {
    OrderCommand::Cancel { reason, at: t(4) }
}

mod lines {
    use super::*;

    #[test]
    fn an_order_needs_one_to_a_hundred_distinct_lines() {
        assert_eq!(OrderLines::new(vec![]), Err(OrderLinesError::Empty));
        let line = |i: usize| OrderLine {
            sku: sku(&format!("S{i}")),
            quantity: qty(1),
        };
        assert!(OrderLines::new((0..100).map(line).collect()).is_ok());
        assert_eq!(
            OrderLines::new((0..101).map(line).collect()),
            Err(OrderLinesError::TooMany { max: 100 })
        );
        assert_eq!(
            OrderLines::new(vec![line(1), line(1)]),
            Err(OrderLinesError::DuplicateSku { sku: sku("S1") })
        );
    }
}

mod when_empty {
    use super::*;

    #[test]
    fn place_emits_placed_with_the_catalog_currency() {
        assert_eq!(decide(place(), &given([])), Ok(vec![placed()]));
    }

    #[test]
    fn place_with_unknown_skus_names_them_all() {
        let command = OrderCommand::Place {
            customer_id: customer(),
            lines: two_lines(),
            card_token: CardToken::parse("tok_visa").unwrap(),
            catalog: CatalogFacts::new([(sku("B"), eur())]),
            at: t(0),
        };
        let err = decide(command, &given([])).unwrap_err();
        assert_eq!(
            err,
            OrderError::UnknownSkus {
                skus: vec![sku("A")]
            }
        );
        assert_eq!(err.code(), "unknown_sku");
        assert!(err.to_string().contains("unknown SKU(s) A"));
    }

    #[test]
    fn place_with_mixed_currencies_is_rejected() {
        let usd = Currency::parse("USD").unwrap();
        let command = OrderCommand::Place {
            customer_id: customer(),
            lines: two_lines(),
            card_token: CardToken::parse("tok_visa").unwrap(),
            catalog: CatalogFacts::new([(sku("A"), eur()), (sku("B"), usd)]),
            at: t(0),
        };
        assert_eq!(
            decide(command, &given([])),
            Err(OrderError::MixedCurrencies {
                currencies: vec![eur(), usd]
            })
        );
    }

    #[test]
    fn every_other_command_is_rejected_as_not_found() {
        for command in [
            record(),
            confirm(),
            ship(),
            cancel(CancelReason::CustomerRequest),
        ] {
            let err = decide(command, &given([])).unwrap_err();
            assert_eq!(err, OrderError::NotPlaced);
            assert_eq!(err.kind(), RejectionKind::NotFound);
        }
    }
}

mod when_pending {
    use super::*;

    #[test]
    fn place_again_is_rejected() {
        assert_eq!(
            decide(place(), &given([placed()])),
            Err(OrderError::AlreadyPlaced)
        );
    }

    #[test]
    fn record_stock_reserved_prices_the_lines_in_order_and_totals_them() {
        let state = given([placed()]);
        assert_eq!(decide(record(), &state), Ok(vec![stock_reserved()]));
        let after = given([placed(), stock_reserved()]);
        assert_eq!(after.status(), Some(OrderStatus::Reserved));
        assert_eq!(after, OrderState::Reserved { total: money(2500) });
    }

    #[test]
    fn record_stock_reserved_must_cover_exactly_the_ordered_lines() {
        let state = given([placed()]);
        let mut missing_line = reserved_lines();
        missing_line.pop();
        let mut wrong_quantity = reserved_lines();
        wrong_quantity[0].quantity = qty(9);
        for lines in [missing_line, wrong_quantity] {
            let command = OrderCommand::RecordStockReserved { lines, at: t(1) };
            assert_eq!(
                decide(command, &state),
                Err(OrderError::ReservationMismatch)
            );
        }
    }

    #[test]
    fn record_stock_reserved_in_another_currency_is_rejected() {
        let state = given([placed()]);
        let mut lines = reserved_lines();
        lines[0].unit_price = Money::new(500, Currency::parse("USD").unwrap()).unwrap();
        let command = OrderCommand::RecordStockReserved { lines, at: t(1) };
        assert!(matches!(
            decide(command, &state),
            Err(OrderError::MixedCurrencies { .. })
        ));
    }

    #[test]
    fn record_stock_reserved_refuses_a_total_that_overflows() {
        let state = given([placed()]);
        let mut lines = reserved_lines();
        lines[1].unit_price = money(i64::MAX);
        let command = OrderCommand::RecordStockReserved { lines, at: t(1) };
        assert_eq!(decide(command, &state), Err(OrderError::AmountTooLarge));
    }

    #[test]
    fn confirm_before_reservation_is_rejected() {
        assert_eq!(
            decide(confirm(), &given([placed()])),
            Err(OrderError::NotReserved)
        );
    }

    #[test]
    fn ship_before_confirmation_is_rejected() {
        assert_eq!(
            decide(ship(), &given([placed()])),
            Err(OrderError::NotConfirmed)
        );
    }

    #[test]
    fn cancel_emits_cancelled_with_the_reason() {
        for reason in CancelReason::ALL {
            assert_eq!(
                decide(cancel(reason), &given([placed()])),
                Ok(vec![OrderEvent::Cancelled { reason, at: t(4) }])
            );
        }
    }
}

mod when_reserved {
    use super::*;

    fn state() -> OrderState {
        given([placed(), stock_reserved()])
    }

    #[test]
    fn record_again_is_a_no_op() {
        assert_eq!(decide(record(), &state()), Ok(vec![]));
    }

    #[test]
    fn confirm_emits_confirmed() {
        assert_eq!(
            decide(confirm(), &state()),
            Ok(vec![OrderEvent::Confirmed { at: t(2) }])
        );
    }

    #[test]
    fn ship_is_rejected_until_confirmed() {
        assert_eq!(decide(ship(), &state()), Err(OrderError::NotConfirmed));
    }

    #[test]
    fn cancel_is_allowed() {
        assert_eq!(
            decide(cancel(CancelReason::PaymentDeclined), &state()),
            Ok(vec![OrderEvent::Cancelled {
                reason: CancelReason::PaymentDeclined,
                at: t(4)
            }])
        );
    }
}

mod when_confirmed {
    use super::*;

    fn state() -> OrderState {
        given([
            placed(),
            stock_reserved(),
            OrderEvent::Confirmed { at: t(2) },
        ])
    }

    #[test]
    fn confirm_again_is_a_no_op() {
        assert_eq!(decide(confirm(), &state()), Ok(vec![]));
    }

    #[test]
    fn ship_emits_shipped() {
        assert_eq!(
            decide(ship(), &state()),
            Ok(vec![OrderEvent::Shipped { at: t(3) }])
        );
        assert_eq!(
            given([
                placed(),
                stock_reserved(),
                OrderEvent::Confirmed { at: t(2) },
                OrderEvent::Shipped { at: t(3) }
            ])
            .status(),
            Some(OrderStatus::Shipped)
        );
    }

    #[test]
    fn cancel_is_still_allowed() {
        assert_eq!(
            decide(cancel(CancelReason::CustomerRequest), &state()),
            Ok(vec![OrderEvent::Cancelled {
                reason: CancelReason::CustomerRequest,
                at: t(4)
            }])
        );
    }
}

mod when_shipped {
    use super::*;

    fn state() -> OrderState {
        given([
            placed(),
            stock_reserved(),
            OrderEvent::Confirmed { at: t(2) },
            OrderEvent::Shipped { at: t(3) },
        ])
    }

    #[test]
    fn cancel_is_rejected() {
        assert_eq!(
            decide(cancel(CancelReason::CustomerRequest), &state()),
            Err(OrderError::AlreadyShipped)
        );
    }

    #[test]
    fn ship_confirm_and_record_again_are_no_ops() {
        for command in [ship(), confirm(), record()] {
            assert_eq!(decide(command, &state()), Ok(vec![]));
        }
    }
}

mod when_cancelled {
    use super::*;

    fn state() -> OrderState {
        given([
            placed(),
            OrderEvent::Cancelled {
                reason: CancelReason::OutOfStock,
                at: t(1),
            },
        ])
    }

    #[test]
    fn cancel_again_is_a_no_op_and_keeps_the_first_reason() {
        assert_eq!(
            decide(cancel(CancelReason::CustomerRequest), &state()),
            Ok(vec![])
        );
        assert_eq!(
            state(),
            OrderState::Cancelled {
                reason: CancelReason::OutOfStock
            }
        );
    }

    #[test]
    fn record_confirm_and_ship_are_rejected_with_the_reason() {
        for command in [record(), confirm(), ship()] {
            assert_eq!(
                decide(command, &state()),
                Err(OrderError::Cancelled {
                    reason: CancelReason::OutOfStock
                })
            );
        }
    }
}

#[test]
fn cancel_reasons_parse_from_their_codes_only() {
    for reason in CancelReason::ALL {
        assert_eq!(reason.as_str().parse::<CancelReason>(), Ok(reason));
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
    assert_eq!("fraud".parse::<CancelReason>(), Err(UnknownCancelReason));
}

#[test]
fn every_event_survives_a_serde_round_trip_and_has_a_stable_type() {
    use cqrs_es::DomainEvent;
    let events = [
        placed(),
        stock_reserved(),
        OrderEvent::Confirmed { at: t(2) },
        OrderEvent::Shipped { at: t(3) },
        OrderEvent::Cancelled {
            reason: CancelReason::PaymentTimeout,
            at: t(4),
        },
    ];
    let mut types = Vec::new();
    for event in events {
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<OrderEvent>(&json).unwrap(), event);
        assert_eq!(event.event_version(), "1.0");
        types.push(event.event_type());
    }
    assert_eq!(types, OrderEvent::TYPES);
}

#[test]
fn the_serialised_shape_is_the_persisted_contract() {
    assert_eq!(
        serde_json::to_value(placed()).unwrap(),
        serde_json::json!({"Placed": {
            "customer_id": "07070707-0707-0707-0707-070707070707",
            "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
            "card_token": "tok_visa",
            "currency": "EUR",
            "at": "2026-01-01T00:00:00Z"
        }})
    );
}
