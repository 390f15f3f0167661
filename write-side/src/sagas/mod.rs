//! Sagas: long-running processes that react to events by issuing commands.
//!
//! - [`order_fulfillment`]: the pure state machine of one order's fulfilment (what to do
//!   next, and what each outcome changes). No IO.
//! - [`trigger`]: a projection on the global log that starts sagas (`OrderPlaced`) and
//!   signals them (`OrderCancelled`, `OrderShipped`), exactly once, with its own checkpoint.
//! - [`runner`]: takes due sagas (the durable timers), performs their next actions through
//!   the command executors and the payment gateway, and saves the outcomes that matter.
//! - [`store`]: the SQL over `fulfillment_sagas`.

pub mod order_fulfillment;
pub mod runner;
pub mod store;
pub mod trigger;
