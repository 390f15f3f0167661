//! Integration tests of the adapters against the real PostgreSQL: a fresh, migrated
//! database per test (`#[sqlx::test]`), so they run in parallel.

mod catalog;
mod commands;
mod copy;
mod db;
mod global_log;
mod group_commit;
mod helpers;
mod kafka;
mod notify;
mod postgres_es_compat;
mod snapshots;
