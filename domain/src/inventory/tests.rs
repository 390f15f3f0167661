use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::Timestamp;
use crate::ids::OrderId;
use crate::money::{Currency, Money, Quantity};
use crate::text::{ItemName, Sku};

fn t(second: u32) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, second)
        .single()
        .unwrap()
}
fn sku() -> Sku {
    Sku::parse("MUG-1").unwrap()
}
fn price() -> Money {
    Money::new(1250, Currency::parse("EUR").unwrap()).unwrap()
}
fn qty(units: u32) -> Quantity {
    Quantity::new(units).unwrap()
}
fn order(n: u8) -> OrderId {
    OrderId::from(uuid::Uuid::from_bytes([n; 16]))
}
fn registered(initial_stock: u32) -> InventoryEvent {
    InventoryEvent::Registered {
        sku: sku(),
        name: ItemName::parse("Mug").unwrap(),
        unit_price: price(),
        initial_stock,
        at: t(0),
    }
}
fn reserved(order_id: OrderId, units: u32) -> InventoryEvent {
    InventoryEvent::Reserved {
        order_id,
        quantity: qty(units),
        unit_price: price(),
        at: t(1),
    }
}
fn given(events: impl IntoIterator<Item = InventoryEvent>) -> InventoryState {
    events.into_iter().fold(InventoryState::default(), evolve)
}
fn levels(state: &InventoryState) -> &StockLevels {
    state.levels().unwrap()
}

mod when_unregistered {
    use super::*;

    #[test]
    fn register_emits_registered() {
        let command = InventoryCommand::Register {
            sku: sku(),
            name: ItemName::parse("Mug").unwrap(),
            unit_price: price(),
            initial_stock: 5,
            at: t(0),
        };
        assert_eq!(decide(command, &given([])), Ok(vec![registered(5)]));
    }

    #[test]
    fn register_with_zero_stock_is_allowed() {
        let state = given([registered(0)]);
        assert_eq!(levels(&state).on_hand(), 0);
    }

    #[test]
    fn every_other_command_is_rejected_as_not_registered() {
        for command in [
            InventoryCommand::Restock {
                quantity: qty(1),
                at: t(1),
            },
            InventoryCommand::Reserve {
                order_id: order(1),
                quantity: qty(1),
                at: t(1),
            },
            InventoryCommand::Release {
                order_id: order(1),
                at: t(1),
            },
            InventoryCommand::Commit {
                order_id: order(1),
                at: t(1),
            },
        ] {
            assert_eq!(
                decide(command, &given([])),
                Err(InventoryError::NotRegistered)
            );
        }
    }
}

mod when_registered {
    use super::*;

    #[test]
    fn register_again_is_rejected() {
        let command = InventoryCommand::Register {
            sku: sku(),
            name: ItemName::parse("Mug").unwrap(),
            unit_price: price(),
            initial_stock: 5,
            at: t(2),
        };
        assert_eq!(
            decide(command, &given([registered(5)])),
            Err(InventoryError::AlreadyRegistered)
        );
    }

    #[test]
    fn restock_emits_restocked_and_adds_to_on_hand() {
        let state = given([registered(5)]);
        let events = decide(
            InventoryCommand::Restock {
                quantity: qty(3),
                at: t(2),
            },
            &state,
        )
        .unwrap();
        assert_eq!(
            events,
            vec![InventoryEvent::Restocked {
                quantity: qty(3),
                at: t(2)
            }]
        );
        assert_eq!(levels(&events.into_iter().fold(state, evolve)).on_hand(), 8);
    }

    #[test]
    fn restock_beyond_the_limit_is_rejected() {
        let mut history = vec![registered(u32::MAX)];
        // Enough restocks of the largest quantity to come close to the limit.
        let step = Quantity::MAX;
        let n_restocks = StockLevels::MAX_ON_HAND / u64::from(step) - 5;
        history.extend((0..n_restocks).map(|_| InventoryEvent::Restocked {
            quantity: qty(step),
            at: t(1),
        }));
        let state = given(history);
        assert_eq!(
            decide(
                InventoryCommand::Restock {
                    quantity: qty(step),
                    at: t(2)
                },
                &state
            ),
            Err(InventoryError::StockLimitExceeded {
                max: StockLevels::MAX_ON_HAND
            })
        );
    }

    #[test]
    fn reserve_within_available_emits_reserved_with_the_current_price() {
        let state = given([registered(5)]);
        let command = InventoryCommand::Reserve {
            order_id: order(1),
            quantity: qty(5),
            at: t(1),
        };
        assert_eq!(decide(command, &state), Ok(vec![reserved(order(1), 5)]));
    }

    #[test]
    fn reserve_beyond_available_is_rejected_whole() {
        let state = given([registered(5), reserved(order(1), 3)]);
        let command = InventoryCommand::Reserve {
            order_id: order(2),
            quantity: qty(3),
            at: t(2),
        };
        assert_eq!(
            decide(command, &state),
            Err(InventoryError::InsufficientStock {
                requested: 3,
                available: 2
            })
        );
    }

    #[test]
    fn reserve_again_for_the_same_order_is_a_no_op() {
        let state = given([registered(5), reserved(order(1), 3)]);
        let command = InventoryCommand::Reserve {
            order_id: order(1),
            quantity: qty(3),
            at: t(2),
        };
        assert_eq!(decide(command, &state), Ok(vec![]));
    }

    #[test]
    fn reserve_a_different_quantity_for_the_same_order_is_rejected() {
        let state = given([registered(5), reserved(order(1), 3)]);
        let command = InventoryCommand::Reserve {
            order_id: order(1),
            quantity: qty(2),
            at: t(2),
        };
        assert_eq!(
            decide(command, &state),
            Err(InventoryError::ReservationMismatch {
                order_id: order(1),
                reserved: 3,
                requested: 2
            })
        );
    }

    #[test]
    fn release_returns_the_reserved_units() {
        let state = given([registered(5), reserved(order(1), 3)]);
        let events = decide(
            InventoryCommand::Release {
                order_id: order(1),
                at: t(2),
            },
            &state,
        )
        .unwrap();
        assert_eq!(
            events,
            vec![InventoryEvent::Released {
                order_id: order(1),
                quantity: qty(3),
                at: t(2)
            }]
        );
        let after = events.into_iter().fold(state, evolve);
        assert_eq!(
            (levels(&after).reserved(), levels(&after).available()),
            (0, 5)
        );
    }

    #[test]
    fn release_without_a_reservation_is_a_no_op() {
        let state = given([registered(5)]);
        let command = InventoryCommand::Release {
            order_id: order(9),
            at: t(2),
        };
        assert_eq!(decide(command, &state), Ok(vec![]));
    }

    #[test]
    fn commit_deducts_on_hand_and_reserved() {
        let state = given([registered(5), reserved(order(1), 3)]);
        let events = decide(
            InventoryCommand::Commit {
                order_id: order(1),
                at: t(3),
            },
            &state,
        )
        .unwrap();
        assert_eq!(
            events,
            vec![InventoryEvent::Committed {
                order_id: order(1),
                quantity: qty(3),
                at: t(3)
            }]
        );
        let after = events.into_iter().fold(state, evolve);
        assert_eq!(
            (levels(&after).on_hand(), levels(&after).reserved()),
            (2, 0)
        );
    }

    #[test]
    fn commit_without_a_reservation_is_rejected() {
        let state = given([registered(5)]);
        let command = InventoryCommand::Commit {
            order_id: order(1),
            at: t(3),
        };
        assert_eq!(
            decide(command, &state),
            Err(InventoryError::NoReservation { order_id: order(1) })
        );
    }
}

mod codes {
    use super::*;
    use crate::rejection::{Rejection, RejectionKind};

    #[test]
    fn not_registered_is_a_not_found_rejection() {
        assert_eq!(
            InventoryError::NotRegistered.code(),
            "inventory_item_not_found"
        );
        assert_eq!(
            InventoryError::NotRegistered.kind(),
            RejectionKind::NotFound
        );
        assert_eq!(
            InventoryError::AlreadyRegistered.kind(),
            RejectionKind::RuleViolated
        );
    }
}

fn stock_command() -> impl Strategy<Value = InventoryCommand> {
    let order_id = (0u8..6).prop_map(order);
    let quantity = (1u32..8).prop_map(qty);
    prop_oneof![
        quantity
            .clone()
            .prop_map(|quantity| InventoryCommand::Restock { quantity, at: t(1) }),
        (order_id.clone(), quantity).prop_map(|(order_id, quantity)| InventoryCommand::Reserve {
            order_id,
            quantity,
            at: t(1)
        }),
        order_id
            .clone()
            .prop_map(|order_id| InventoryCommand::Release { order_id, at: t(1) }),
        order_id.prop_map(|order_id| InventoryCommand::Commit { order_id, at: t(1) }),
    ]
}

proptest! {
    #[test]
    fn reserved_never_exceeds_on_hand(
        initial_stock in 0u32..10,
        commands in prop::collection::vec(stock_command(), 0..64),
    ) {
        let mut state = given([registered(initial_stock)]);
        for command in commands {
            if let Ok(events) = decide(command, &state) {
                state = events.into_iter().fold(state, evolve);
            }
            let levels = levels(&state);
            prop_assert!(levels.reserved() <= levels.on_hand());
            let sum: u64 = levels.reservations.values().map(|q| u64::from(q.get())).sum();
            prop_assert_eq!(sum, levels.reserved());
        }
    }

    #[test]
    fn state_survives_a_snapshot_round_trip(
        commands in prop::collection::vec(stock_command(), 0..32),
    ) {
        let mut state = given([registered(20)]);
        for command in commands {
            if let Ok(events) = decide(command, &state) {
                state = events.into_iter().fold(state, evolve);
            }
        }
        let json = serde_json::to_value(&state).unwrap();
        prop_assert_eq!(serde_json::from_value::<InventoryState>(json).unwrap(), state);
    }
}

#[test]
fn every_event_survives_a_serde_round_trip_and_has_a_stable_type() {
    use cqrs_es::DomainEvent;
    let events = [
        registered(5),
        InventoryEvent::Restocked {
            quantity: qty(2),
            at: t(1),
        },
        reserved(order(1), 3),
        InventoryEvent::Released {
            order_id: order(1),
            quantity: qty(3),
            at: t(2),
        },
        InventoryEvent::Committed {
            order_id: order(1),
            quantity: qty(3),
            at: t(3),
        },
    ];
    let mut types = Vec::new();
    for event in events {
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            serde_json::from_str::<InventoryEvent>(&json).unwrap(),
            event
        );
        assert_eq!(event.event_version(), "1.0");
        types.push(event.event_type());
    }
    assert_eq!(types, InventoryEvent::TYPES);
}

#[test]
fn the_serialised_shape_is_the_persisted_contract() {
    let json = serde_json::to_value(reserved(order(1), 3)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"Reserved": {
            "order_id": "01010101-0101-0101-0101-010101010101",
            "quantity": 3,
            "unit_price": {"amount_minor": 1250, "currency": "EUR"},
            "at": "2026-01-01T00:00:01Z"
        }})
    );
}
