//! The projector runtime and the read models against the real PostgreSQL: events are written
//! through the command executor (as the command API does), workers are drained with
//! `run_once`, rows are read back with SQL.

mod group;
mod helpers;
mod kafka;
mod operator;
mod read_models;
mod runtime;
