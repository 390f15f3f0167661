//! The query API end to end: commands go through the real command API, the real projector
//! workers build the read models, and the real query API serves them, all against the real
//! PostgreSQL with a fresh database per test.

mod consistency;
mod helpers;
mod inventory;
mod operations;
mod orders;
mod projections_status;
mod sagas;
mod stats;
