use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::InventoryEvent;
use crate::ids::OrderId;
use crate::money::{Money, Quantity};
use crate::text::Sku;

/// The lifecycle of an inventory item, holding only what decisions need.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub enum InventoryState {
    #[default]
    Unregistered,
    Registered(StockLevels),
}

/// Stock of a registered item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockLevels {
    pub(super) sku: Sku,
    /// The current price, copied into every reservation.
    pub(super) unit_price: Money,
    pub(super) on_hand: u64,
    /// Open reservations by order. Closed ones (released or committed) are dropped, so the
    /// state stays small however long the stream grows.
    pub(super) reservations: BTreeMap<OrderId, Quantity>,
    /// Sum of `reservations`, kept so reads need not add them up.
    pub(super) reserved: u64,
}

impl StockLevels {
    /// The most units an item may have on hand; far below `i64::MAX`, so every adapter
    /// can store it as a signed 64-bit integer.
    pub const MAX_ON_HAND: u64 = 1_000_000_000_000;

    pub fn sku(&self) -> &Sku {
        &self.sku
    }
    pub fn unit_price(&self) -> Money {
        self.unit_price
    }
    pub fn on_hand(&self) -> u64 {
        self.on_hand
    }
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
    pub fn available(&self) -> u64 {
        self.on_hand - self.reserved
    }
    pub fn reservation(&self, order_id: &OrderId) -> Option<Quantity> {
        self.reservations.get(order_id).copied()
    }
}

impl InventoryState {
    pub fn levels(&self) -> Option<&StockLevels> {
        match self {
            InventoryState::Unregistered => None,
            InventoryState::Registered(levels) => Some(levels),
        }
    }
}

/// Folds one event into the state. Total: an event that `decide` would never emit from
/// this state leaves it unchanged rather than panicking, because history is immutable.
pub fn evolve(state: InventoryState, event: InventoryEvent) -> InventoryState {
    match (state, event) {
        (
            InventoryState::Unregistered,
            InventoryEvent::Registered {
                sku,
                unit_price,
                initial_stock,
                ..
            },
        ) => InventoryState::Registered(StockLevels {
            sku,
            unit_price,
            on_hand: u64::from(initial_stock),
            reservations: BTreeMap::new(),
            reserved: 0,
        }),
        (InventoryState::Registered(mut levels), event) => {
            match event {
                InventoryEvent::Registered { .. } => {}
                InventoryEvent::Restocked { quantity, .. } => {
                    levels.on_hand = levels.on_hand.saturating_add(u64::from(quantity.get()));
                }
                InventoryEvent::Reserved {
                    order_id, quantity, ..
                } => {
                    if levels.reservations.insert(order_id, quantity).is_none() {
                        levels.reserved += u64::from(quantity.get());
                    }
                }
                InventoryEvent::Released { order_id, .. } => {
                    if let Some(quantity) = levels.reservations.remove(&order_id) {
                        levels.reserved -= u64::from(quantity.get());
                    }
                }
                InventoryEvent::Committed { order_id, .. } => {
                    if let Some(quantity) = levels.reservations.remove(&order_id) {
                        let units = u64::from(quantity.get());
                        levels.reserved -= units;
                        levels.on_hand = levels.on_hand.saturating_sub(units);
                    }
                }
            }
            InventoryState::Registered(levels)
        }
        // Only `Registered` starts a stream; anything else before it is ignored.
        (
            state @ InventoryState::Unregistered,
            InventoryEvent::Restocked { .. }
            | InventoryEvent::Reserved { .. }
            | InventoryEvent::Released { .. }
            | InventoryEvent::Committed { .. },
        ) => state,
    }
}
