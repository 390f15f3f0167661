//! The PostgreSQL connection pool and the migrations that own every table.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseSettings;

/// Every table of the system, in `infra/migrations/`. Services run it at start-up (it takes
/// an advisory lock, so replicas starting together are safe); tests run it per database.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("failed to connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
    #[error("failed to run database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Parses the configured URL into connect options with our session settings.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = settings
        .url
        .expose_secret()
        .parse()
        .map_err(DbError::InvalidUrl)?;
    Ok(tune(options, settings))
}

/// Session settings every connection of ours carries:
/// - `lock_timeout` bounds how long a command waits behind another transaction (the first
///   request of an idempotency key, or a writer of the same aggregate in another process);
/// - `statement_timeout` turns a runaway query into an error instead of a stuck worker;
/// - `jit = off`: our statements are short, and PostgreSQL's cost-based JIT (on by default
///   since 13) compiled the projection status query (its plan is costed at millions for a
///   `count(*)` with a high `LIMIT`) on every call: 270-870 ms per call, and an eighth of
///   all CPU under benchmark load went to LLVM (BENCHMARKS.md);
/// - `enable_seqscan = off`: every statement of the services finds its rows through an
///   index, but PostgreSQL plans a prepared statement once for all (a generic plan, after
///   five executions) with the table's size at that moment. Planned while a fresh system's
///   tables held a handful of rows, a load by key (`= ANY($1)`) or a save joined to
///   `UNNEST` became a sequential scan, and stayed one as the table grew, until an
///   `ANALYZE` or `VACUUM` of it (never, with autovacuum off): 500 million rows of
///   `fulfillment_sagas` read in a three-minute benchmark, the saga's p99 above a second
///   (BENCHMARKS.md, sixth session). Off, a scan is still used where no index serves;
///   `ordo` (rebuilds compare whole tables) and ad-hoc tools do not take these settings.
pub fn tune(options: PgConnectOptions, settings: &DatabaseSettings) -> PgConnectOptions {
    options.options([
        ("jit", "off".to_owned()),
        ("enable_seqscan", "off".to_owned()),
        (
            "lock_timeout",
            format!("{}ms", settings.lock_timeout.as_millis()),
        ),
        (
            "statement_timeout",
            format!("{}ms", settings.statement_timeout.as_millis()),
        ),
    ])
}

/// How long a pooled connection may sit idle before it is pinged when handed out.
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Opens a pool; fails if PostgreSQL cannot be reached within the acquire timeout.
pub async fn connect(
    options: PgConnectOptions,
    settings: &DatabaseSettings,
) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection before handing it out by default: a round trip on
        // every acquire, on every command's and every batch's path. Only a connection that
        // sat idle is pinged (one that died with a restart of PostgreSQL, most likely while
        // traffic was low, is replaced instead of failing its first statement: for a group
        // commit without keys that statement is the append, whose failure is an unknown
        // outcome, ADR 0002). Under load connections come back within milliseconds.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(DbError::Migrate)
}

/// The pool type every crate receives; re-exported so the HTTP crates need not name sqlx.
pub use sqlx::PgPool as Pool;

/// A round trip to PostgreSQL, for readiness probes.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
