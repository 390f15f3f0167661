//! The domain model: inventory items, orders and payments as pure deciders.
//!
//! Each aggregate is a `decide(command, &state) -> Result<Vec<Event>, Error>` and an
//! `evolve(state, event) -> State`, plus a thin `cqrs_es::Aggregate` adapter in its
//! `aggregate.rs`. Nothing here does IO, reads the clock, draws random numbers or logs:
//! everything a decision needs arrives in the command, so every rule is tested with plain
//! function calls.
//!
//! Deliberately not here: persistence, HTTP, serialisation formats other than the serde
//! shape of events (which is a persisted contract), and anything that reads configuration.

pub mod ids;
pub mod inventory;
pub mod money;
pub mod order;
pub mod payment;
pub mod ports;
pub mod rejection;
pub mod text;

/// The instant a command was decided, minted at the edge (HTTP handler or saga runner).
pub type Timestamp = chrono::DateTime<chrono::Utc>;
