//! Adapters: everything that talks to the outside world.
//!
//! - [`db`]: the PostgreSQL pool and the one [`db::MIGRATOR`] that owns every table.
//! - [`event_store`]: appends and loads aggregates on postgres-es's `events` table (extended
//!   with event id, global position, transaction id and metadata), with snapshots, and the
//!   gap-safe reader of the global log that projections, sagas and the Kafka relay follow.
//! - [`commands`]: executes a command against an aggregate: load, decide, append, with
//!   optimistic concurrency, bounded retries, `If-Match` versions and idempotency keys
//!   recorded atomically with the events, and group commit.
//! - [`batching`]: the queue behind group commits (one committer at a time takes what
//!   waits).
//! - [`projection`]: the worker that follows the log into database-only effects (read
//!   models, the saga's trigger): checkpoint and effects in one transaction, one live
//!   instance per projection, poison events parked.
//! - [`kafka`]: the relay that publishes the global log to Kafka, and the consumer runtime
//!   with an inbox that applies each event once.
//! - [`catalog`], [`clock`]: implementations of the domain's ports.
//! - [`config`], [`telemetry`], [`shutdown`]: process plumbing for the binaries.
//!
//! Deliberately not here: HTTP (the `write-side` and `read-side` crates) and business rules
//! (the `domain` crate).

pub mod batching;
pub mod catalog;
pub mod channels;
pub mod clock;
pub mod commands;
pub mod config;
pub mod db;
pub mod event_store;
pub mod kafka;
pub mod keyed_lock;
pub mod payment_gateway;
pub mod projection;
pub mod shutdown;
pub mod telemetry;
