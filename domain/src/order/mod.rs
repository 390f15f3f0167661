//! An order: what a customer asked for, what it costs, and where it is in fulfilment.
//!
//! Lifecycle: `pending` (placed) -> `reserved` (stock held, prices fixed) -> `confirmed`
//! (paid) -> `shipped`; or `cancelled` with a reason at any point before shipping.
//!
//! The total is computed here from the unit prices the inventory items had when the stock
//! was reserved; a client never supplies a price. Placing needs two facts the order cannot
//! know (which SKUs exist, in which currency they are priced): the handler looks them up
//! and passes them in `OrderCommand::Place` as `CatalogFacts`.

mod aggregate;
mod command;
mod decide;
mod event;
mod lines;
mod state;
#[cfg(test)]
mod tests;

pub use aggregate::Order;
pub use command::{CancelReason, CatalogFacts, OrderCommand, UnknownCancelReason};
pub use decide::{OrderError, decide};
pub use event::OrderEvent;
pub use lines::{OrderLine, OrderLines, OrderLinesError, PricedLine, ReservedLine};
pub use state::{OrderState, OrderStatus, evolve};
