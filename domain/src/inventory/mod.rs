//! An inventory item: the stock of one SKU, and the reservations orders hold against it.
//!
//! **Invariant:** `reserved <= on_hand`, both never negative, and `reserved` is exactly the
//! sum of the open reservations. Reservations are all or nothing per order and keyed by
//! order, so a retried reservation for the same order changes nothing.
//!
//! Prices live here because an order's total is computed from the unit prices the items
//! had when its stock was reserved (`StockReserved` records that price).

mod aggregate;
mod command;
mod decide;
mod event;
mod state;
#[cfg(test)]
mod tests;

pub use aggregate::InventoryItem;
pub use command::InventoryCommand;
pub use decide::{InventoryError, decide};
pub use event::InventoryEvent;
pub use state::{InventoryState, StockLevels, evolve};
