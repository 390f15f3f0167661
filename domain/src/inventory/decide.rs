use super::{InventoryCommand, InventoryEvent, InventoryState, StockLevels};
use crate::ids::OrderId;
use crate::rejection::{Rejection, RejectionKind};

/// Why an inventory command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("no inventory item is registered under this SKU; register it with POST /inventory")]
    NotRegistered,
    #[error("this SKU is already registered; use POST /inventory/{{sku}}/restock to add stock")]
    AlreadyRegistered,
    #[error("only {available} units are available, {requested} were requested")]
    InsufficientStock { requested: u32, available: u64 },
    #[error(
        "order {order_id} already holds a reservation of {reserved} units, not {requested}; release it first"
    )]
    ReservationMismatch {
        order_id: OrderId,
        reserved: u32,
        requested: u32,
    },
    #[error("order {order_id} holds no reservation on this item")]
    NoReservation { order_id: OrderId },
    #[error("stock on hand would exceed {max} units")]
    StockLimitExceeded { max: u64 },
}

impl Rejection for InventoryError {
    fn code(&self) -> &'static str {
        match self {
            InventoryError::NotRegistered => "inventory_item_not_found",
            InventoryError::AlreadyRegistered => "sku_already_registered",
            InventoryError::InsufficientStock { .. } => "insufficient_stock",
            InventoryError::ReservationMismatch { .. } => "reservation_mismatch",
            InventoryError::NoReservation { .. } => "no_reservation",
            InventoryError::StockLimitExceeded { .. } => "stock_limit_exceeded",
        }
    }

    fn kind(&self) -> RejectionKind {
        match self {
            InventoryError::NotRegistered => RejectionKind::NotFound,
            _ => RejectionKind::RuleViolated,
        }
    }
}

/// Decides what a command does to an inventory item.
///
/// Retries are harmless: reserving again for an order that holds the same reservation,
/// and releasing a reservation that is not there, both emit nothing.
pub fn decide(
    command: InventoryCommand,
    state: &InventoryState,
) -> Result<Vec<InventoryEvent>, InventoryError> {
    let levels = match state {
        InventoryState::Unregistered => {
            return match command {
                InventoryCommand::Register {
                    sku,
                    name,
                    unit_price,
                    initial_stock,
                    at,
                } => Ok(vec![InventoryEvent::Registered {
                    sku,
                    name,
                    unit_price,
                    initial_stock,
                    at,
                }]),
                _ => Err(InventoryError::NotRegistered),
            };
        }
        InventoryState::Registered(levels) => levels,
    };
    match command {
        InventoryCommand::Register { .. } => Err(InventoryError::AlreadyRegistered),
        InventoryCommand::Restock { quantity, at } => {
            let after = levels.on_hand.saturating_add(u64::from(quantity.get()));
            if after > StockLevels::MAX_ON_HAND {
                return Err(InventoryError::StockLimitExceeded {
                    max: StockLevels::MAX_ON_HAND,
                });
            }
            Ok(vec![InventoryEvent::Restocked { quantity, at }])
        }
        InventoryCommand::Reserve {
            order_id,
            quantity,
            at,
        } => match levels.reservation(&order_id) {
            Some(reserved) if reserved == quantity => Ok(vec![]),
            Some(reserved) => Err(InventoryError::ReservationMismatch {
                order_id,
                reserved: reserved.get(),
                requested: quantity.get(),
            }),
            None if u64::from(quantity.get()) > levels.available() => {
                Err(InventoryError::InsufficientStock {
                    requested: quantity.get(),
                    available: levels.available(),
                })
            }
            None => Ok(vec![InventoryEvent::Reserved {
                order_id,
                quantity,
                unit_price: levels.unit_price,
                at,
            }]),
        },
        InventoryCommand::Release { order_id, at } => Ok(levels
            .reservation(&order_id)
            .map(|quantity| InventoryEvent::Released {
                order_id,
                quantity,
                at,
            })
            .into_iter()
            .collect()),
        InventoryCommand::Commit { order_id, at } => match levels.reservation(&order_id) {
            Some(quantity) => Ok(vec![InventoryEvent::Committed {
                order_id,
                quantity,
                at,
            }]),
            None => Err(InventoryError::NoReservation { order_id }),
        },
    }
}
