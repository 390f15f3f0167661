//! A payment: the money side of one order (the payment's id is the order's id).
//!
//! Lifecycle: `authorized` -> `captured` (then refunded, in part or in full, at most what
//! was captured); or `declined`; or `voided` (an authorization released without capture).
//! The payment gateway is called by the saga; this aggregate records its answers and
//! refuses the ones that contradict what already happened.

mod aggregate;
mod command;
mod decide;
mod event;
mod state;
#[cfg(test)]
mod tests;

pub use aggregate::Payment;
pub use command::PaymentCommand;
pub use decide::{PaymentError, decide};
pub use event::PaymentEvent;
pub use state::{PaymentState, evolve};
