//! The command API, end to end: the real application on port 0 against the real PostgreSQL,
//! a fresh migrated database per test (`#[sqlx::test]`), so tests run in parallel.

mod errors;
mod fulfilment;
mod helpers;
mod idempotency;
mod inventory;
mod operations;
mod orders;
mod preconditions;
mod sagas;
