//! The command API: HTTP requests become commands on aggregates, whose events are appended
//! to the event store.
//!
//! - [`startup`]: build and run the service ([`Application`]).
//! - [`http`]: routes, middleware, errors as problem+json, request parsing, OpenAPI.
//! - [`handlers`]: one thin function per route: parse, execute, answer.
//! - [`state`]: what handlers share.
//! - [`sagas`]: the order fulfilment saga (its state machine, trigger and runner), run by the
//!   `saga-worker` binary.
//!
//! Deliberately not here: SQL (in `infra`) and business rules (in `domain`).

pub mod handlers;
pub mod http;
pub mod sagas;
pub mod startup;
pub mod state;

pub use startup::Application;
