//! Rebuilding a projection without downtime, and building one into scratch tables.
//!
//! The projection's handler runs unchanged against shadow tables: same names, in a schema of
//! their own (`rebuild_<name>`), selected with `SET LOCAL search_path`. Batches are large
//! (thousands of events: one read, one load and one write per table, no round trip per
//! event) and each commits the shadow rows with the rebuild's checkpoint
//! (`projection_rebuilds`), so an interrupted rebuild resumes where it stopped and the live
//! model is never touched meanwhile: the query API keeps reading it and the live worker keeps
//! applying to it.
//!
//! When the shadow has caught up with the log, the rebuild compares it with the live tables
//! (rows added, removed, changed), then swaps in one transaction: it takes the projection's
//! row (waiting for the live worker's batch, and holding the worker off), applies the last
//! few events, moves the live tables out and the shadow tables in, re-points the views the
//! query API reads, and moves the live checkpoint and version to the shadow's. Readers see
//! the old model or the new one, never a half-built one.
//!
//! A rebuild only writes read-model tables: it never issues commands or publishes anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use infra::event_store::{Checkpoint, StoreError};
use infra::projection::{
    ApplyError, Decoded, Fold, Projection, Read, Table, decode_log_rows, decode_read, distribute,
    event_types_of, last_of_log_rows, read_log, read_log_rows,
};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::task::JoinHandle;

use crate::writers::Writers;

/// Build and swap, or only build and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Swap,
    /// Build into scratch tables, compare with live, drop them.
    DryRun,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Events read per transaction.
    pub batch_size: u32,
    /// Keep the replaced live tables (in a `retired_…` schema) instead of dropping them.
    pub keep_old: bool,
    /// A build from empty tables folds the log in memory (ADR 0009) until a projection
    /// holds more rows than this; it then writes them out and goes on batch by batch.
    /// 0: always batch by batch.
    pub fold_rows: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            keep_old: false,
            fold_rows: 500_000,
        }
    }
}

/// How the shadow build differs from the live model, per table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableDiff {
    pub table: String,
    pub added: i64,
    pub removed: i64,
    pub changed: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub projection: String,
    pub version: i32,
    /// Events read from the log by this run (a resumed run counts only its own).
    pub events_read: u64,
    /// Whether this run continued an interrupted rebuild.
    pub resumed: bool,
    /// Of `events_read`, those folded in memory from empty tables before being written out
    /// (ADR 0009); the rest were applied batch by batch.
    pub events_folded: u64,
    pub seconds: f64,
    /// Building the shadow tables (reading, applying, writing out what was folded, and
    /// building the indexes), from the run's start; the pass over the log is shared.
    pub build_seconds: f64,
    /// Comparing them with live.
    pub verify_seconds: f64,
    /// Events read per second of building.
    pub events_per_second: f64,
    /// The shadow build against the live model, just before the swap.
    pub diff: Vec<TableDiff>,
    pub swapped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("projection {0} has no tables to rebuild")]
    NotRebuildable(String),
    #[error("interrupted after {events_read} events; run the same command again to resume")]
    Interrupted { events_read: u64 },
    #[error(
        "event {event_id} at position {position} cannot be applied; the rebuild stopped (the live model is untouched)"
    )]
    Poison {
        event_id: uuid::Uuid,
        position: i64,
        #[source]
        source: ApplyError,
    },
    #[error("failed to {operation}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to read the log")]
    ReadLog(#[source] StoreError),
    #[error("the task reading the log ahead failed")]
    ReadAhead(#[source] tokio::task::JoinError),
    #[error("the task applying a batch failed")]
    Apply(#[source] tokio::task::JoinError),
    /// The pass over the log that several projections shared failed (each gets this).
    #[error("the pass over the log failed")]
    Pass(#[source] Arc<RebuildError>),
    #[error("the rebuild stopped before this projection was finished")]
    NotFinished,
    #[error("failed to write out the rows built in memory (nothing of this run was kept)")]
    Flush(#[source] ApplyError),
    #[error(
        "a rebuild of {0} is already running (another `ordo projections rebuild` building into the same tables); wait for it to finish or stop it"
    )]
    AlreadyRunning(String),
}

fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> RebuildError {
    move |source| RebuildError::Database { operation, source }
}

/// `"name"`: identifiers here come from code, but are quoted all the same.
fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Creates `schema` with empty copies of the live tables (same columns, defaults and
/// constraints other than indexes), each with only the index its handler needs while the
/// rows go in: the unique index on its [`key`](Table::key), which the batches' loads and
/// `ON CONFLICT` use, and none for an [`insert_only`](Table::insert_only) table.
/// [`build_indexes`] adds the others (secondary indexes, a primary key on other columns)
/// once the rows are in: maintaining them row by row costs more than building them from
/// the finished rows (ADR 0006). Run again on a shadow that exists, it changes nothing.
pub async fn create_shadow(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[Table],
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quoted(schema)))
        .execute(&mut *conn)
        .await?;
    for table in tables {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {}.{} (LIKE public.{} INCLUDING ALL EXCLUDING INDEXES)",
            quoted(schema),
            quoted(table.name),
            quoted(table.name),
        ))
        .execute(&mut *conn)
        .await?;
        // Read for every table, so one with a constraint a rebuild cannot reproduce is
        // refused before anything is built.
        let live = live_indexes(&mut *conn, table).await?;
        if table.insert_only {
            continue;
        }
        let Some(key) = live.iter().find(|index| index.on_key(table)) else {
            return Err(sqlx::Error::Protocol(format!(
                "public.{} has no unique index on its key ({}), which its projection's writes need",
                table.name,
                table.key.join(", ")
            )));
        };
        add_missing_indexes(&mut *conn, schema, table, std::slice::from_ref(key)).await?;
    }
    Ok(())
}

/// One index of a live table, as [`live_indexes`] reads it from the catalog.
#[derive(Debug, Clone, sqlx::FromRow)]
struct LiveIndex {
    name: String,
    /// `pg_get_indexdef`: `CREATE [UNIQUE] INDEX name ON public.table USING ...`.
    definition: String,
    /// The constraint it backs: `p` (primary key), `u` (unique), `x` (exclusion), followed
    /// by ` deferrable` when it is; or none.
    constraint: Option<String>,
    unique: bool,
    /// Its key columns, when it has no expressions and no predicate.
    columns: Option<Vec<String>>,
}

impl LiveIndex {
    /// Whether it is the unique index on exactly `table`'s key columns (in any order).
    fn on_key(&self, table: &Table) -> bool {
        let Some(columns) = &self.columns else {
            return false;
        };
        let mut columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        let mut key: Vec<&str> = table.key.to_vec();
        columns.sort_unstable();
        key.sort_unstable();
        self.unique && columns == key
    }

    /// The definition without its name and table (`UNIQUE USING btree (order_id)`), to
    /// recognise the same index on another table whatever it is called.
    fn shape(definition: &str) -> String {
        let rest = definition
            .split_once(" INDEX ")
            .map_or(definition, |(_, r)| r);
        let unique = definition.starts_with("CREATE UNIQUE ");
        let after_on = rest.split_once(" ON ").map_or(rest, |(_, r)| r);
        let after_table = after_on.split_once(' ').map_or("", |(_, r)| r);
        format!("{}{after_table}", if unique { "UNIQUE " } else { "" })
    }
}

/// The live table's indexes, the primary key first.
async fn live_indexes(
    conn: &mut PgConnection,
    table: &Table,
) -> Result<Vec<LiveIndex>, sqlx::Error> {
    let indexes: Vec<LiveIndex> = sqlx::query_as(
        "SELECT c.relname::text AS name, pg_get_indexdef(i.indexrelid) AS definition,
                (SELECT con.contype::text || CASE WHEN con.condeferrable THEN ' deferrable' ELSE '' END
                   FROM pg_constraint con
                  WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                    AND con.contype IN ('p', 'u', 'x')) AS \"constraint\",
                i.indisunique AS \"unique\",
                CASE WHEN i.indexprs IS NULL AND i.indpred IS NULL THEN
                     ARRAY(SELECT a.attname::text
                             FROM unnest(i.indkey[0:i.indnkeyatts - 1]) AS k(attnum)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
                END AS columns
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass AND i.indisvalid AND i.indislive
          ORDER BY i.indisprimary DESC, c.relname",
    )
    .bind(format!("public.{}", quoted(table.name)))
    .fetch_all(&mut *conn)
    .await?;
    // `USING INDEX` attaches a primary key or a unique constraint, not deferred, and no
    // exclusion constraint: refuse what would come back different instead of dropping it.
    if let Some(index) = indexes
        .iter()
        .find(|index| !matches!(index.constraint.as_deref(), None | Some("p" | "u")))
    {
        return Err(sqlx::Error::Protocol(format!(
            "public.{}'s index {} backs a constraint a rebuild cannot reproduce ({}): \
             exclusion and deferrable constraints are not supported",
            table.name,
            index.name,
            index.constraint.as_deref().unwrap_or_default()
        )));
    }
    Ok(indexes)
}

/// Gives the shadow copy of `table` each of `wanted` (live indexes) it has no index of the
/// same shape for, under the live index's name, with the constraint (primary key, unique)
/// that index backs on the live table.
async fn add_missing_indexes(
    conn: &mut PgConnection,
    schema: &str,
    table: &Table,
    wanted: &[LiveIndex],
) -> Result<(), sqlx::Error> {
    let shadow = format!("{}.{}", quoted(schema), quoted(table.name));
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::regclass",
    )
    .bind(&shadow)
    .fetch_all(&mut *conn)
    .await?;
    let mut present: Vec<String> = present.iter().map(|d| LiveIndex::shape(d)).collect();
    let mut constraints: Vec<(&str, &String)> = Vec::new();
    for index in wanted {
        let shape = LiveIndex::shape(&index.definition);
        if present.contains(&shape) {
            continue;
        }
        // The same index on the shadow table (an index lives in its table's schema, so the
        // name is free there). Never run a definition that still names the live table.
        let on_shadow = [
            format!(" ON public.{} ", table.name),
            format!(" ON public.{} ", quoted(table.name)),
        ]
        .into_iter()
        .find(|on_live| index.definition.contains(on_live.as_str()))
        .map(|on_live| {
            index
                .definition
                .replacen(&on_live, &format!(" ON {shadow} "), 1)
        })
        .ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "cannot point the index definition `{}` at the shadow table",
                index.definition
            ))
        })?;
        sqlx::query(&on_shadow).execute(&mut *conn).await?;
        match index.constraint.as_deref() {
            Some("p") => constraints.push(("PRIMARY KEY", &index.name)),
            Some("u") => constraints.push(("UNIQUE", &index.name)),
            _ => {}
        }
        present.push(shape);
    }
    // After every index is built: attaching a constraint locks the table exclusively, which
    // waits for a comparison reading it; the builds themselves do not.
    for (kind, name) in constraints {
        sqlx::query(&format!(
            "ALTER TABLE {shadow} ADD CONSTRAINT {name} {kind} USING INDEX {name}",
            name = quoted(name)
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Gives each shadow table the indexes (and primary key and unique constraints) of its live
/// table that [`create_shadow`] left out, each built from the rows in one pass, in one
/// transaction per table: a crash or a failure leaves it with all of them or none of
/// those. An index the shadow has already (built by an earlier, interrupted run, or
/// created with the table by an older build) is not built again.
pub async fn build_indexes(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[Table],
) -> Result<(), sqlx::Error> {
    for table in tables {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let live = live_indexes(&mut tx, table).await?;
        add_missing_indexes(&mut tx, schema, table, &live).await?;
        tx.commit().await?;
    }
    Ok(())
}

pub async fn drop_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quoted(schema)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Applies events after `checkpoint` (up to `limit`) to the tables `search_path` selects, in
/// the caller's transaction. Returns the events read and the new checkpoint.
pub async fn apply_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    checkpoint: Checkpoint,
    limit: u32,
) -> Result<(usize, Checkpoint), RebuildError> {
    let events = read_batch(&mut *conn, projection.event_types(), checkpoint, limit).await?;
    apply_events(conn, projection, checkpoint, events).await
}

/// Up to `limit` settled events after `checkpoint` (see [`read_log`]).
async fn read_batch<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    types: Option<&[&str]>,
    checkpoint: Checkpoint,
    limit: u32,
) -> Result<Vec<Read>, RebuildError> {
    read_log(executor, types, checkpoint, limit)
        .await
        .map_err(RebuildError::ReadLog)
}

/// Applies `events` (read after `checkpoint`) in the caller's transaction. Returns how many
/// there were and the checkpoint after them.
async fn apply_events(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    checkpoint: Checkpoint,
    events: Vec<Read>,
) -> Result<(usize, Checkpoint), RebuildError> {
    let Some(last) = events.last().map(|(e, _)| e.checkpoint()) else {
        return Ok((0, checkpoint));
    };
    let read = events.len();
    let mut decoded = Vec::with_capacity(read);
    // Moved, not cloned: no deep copy of every payload.
    for (stored, read) in events {
        if !projection.handles(&stored) {
            continue;
        }
        let event = decode_read(&stored, read).map_err(|err| RebuildError::Poison {
            event_id: stored.event_id,
            position: stored.position,
            source: ApplyError::Decode(err),
        })?;
        decoded.push(Decoded {
            stored: Arc::new(stored),
            event,
        });
    }
    if !decoded.is_empty()
        && let Err(err) = projection.apply(conn, &decoded).await
    {
        let first = &decoded[0].stored;
        return Err(RebuildError::Poison {
            event_id: first.event_id,
            position: first.position,
            source: err,
        });
    }
    Ok((read, last))
}

/// Batches read ahead of the pass and not yet applied: what bounds the memory in between.
const READ_AHEAD: usize = 2;

/// Reads the log ahead of the pass, in a task of its own, on pool connections: each batch's
/// rows are decoded in a task of their own while the next batch is read, so PostgreSQL
/// reads while `ordo` decodes. Stops after an empty batch (nothing settled is left) or a
/// failure, and when dropped.
struct Reader {
    batches: tokio::sync::mpsc::Receiver<JoinHandle<Result<Vec<Read>, RebuildError>>>,
    task: JoinHandle<()>,
}

impl Reader {
    /// Reads from after `checkpoint`, `limit` events a batch.
    fn start(
        pool: &PgPool,
        types: Option<Arc<[&'static str]>>,
        checkpoint: Checkpoint,
        limit: u32,
    ) -> Self {
        let pool = pool.clone();
        let (queue, batches) = tokio::sync::mpsc::channel(READ_AHEAD);
        let task = tokio::spawn(async move {
            let mut after = checkpoint;
            loop {
                let (decoding, last) = match read_rows(&pool, types.as_deref(), after, limit).await
                {
                    Ok((last, decode)) => (tokio::spawn(async move { decode() }), last),
                    Err(err) => (tokio::spawn(async move { Err(err) }), None),
                };
                if queue.send(decoding).await.is_err() {
                    return;
                }
                match last {
                    Some(last) => after = last,
                    None => return,
                }
            }
        });
        Self { batches, task }
    }

    /// The next batch, in log order: empty when nothing settled was left.
    async fn next(&mut self) -> Result<Vec<Read>, RebuildError> {
        match self.batches.recv().await {
            Some(decoding) => decoding.await.map_err(RebuildError::ReadAhead)?,
            // The reader ended without a batch: it panicked.
            None => (&mut self.task)
                .await
                .map(|()| Vec::new())
                .map_err(RebuildError::ReadAhead),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Decode = Box<dyn FnOnce() -> Result<Vec<Read>, RebuildError> + Send>;

/// The batch after `after`, read: where it ends, and what decodes it.
async fn read_rows(
    pool: &PgPool,
    types: Option<&[&'static str]>,
    after: Checkpoint,
    limit: u32,
) -> Result<(Option<Checkpoint>, Decode), RebuildError> {
    let Some(types) = types else {
        // Every payload, decoded as it is read.
        let events = read_batch(pool, None, after, limit).await?;
        let last = events.last().map(|(e, _)| e.checkpoint());
        return Ok((last, Box::new(move || Ok(events))));
    };
    let rows = read_log_rows(pool, types, after, limit)
        .await
        .map_err(RebuildError::ReadLog)?;
    let last = last_of_log_rows(&rows).map_err(RebuildError::ReadLog)?;
    Ok((
        last,
        Box::new(move || decode_log_rows(&rows).map_err(RebuildError::ReadLog)),
    ))
}

/// Rows added, removed and changed in `schema`'s copy of each table, against live: the two
/// joined on the table's key (a hash join on the key's own types) and compared column by
/// column (`IS DISTINCT FROM`, so a NULL equals a NULL). Both copies have the same columns:
/// the shadow is made `LIKE` the live table. The tables are compared at once, each on a
/// connection of its own.
pub async fn diff(
    pool: &PgPool,
    schema: &str,
    tables: &[Table],
) -> Result<Vec<TableDiff>, sqlx::Error> {
    futures::future::try_join_all(tables.iter().map(|table| diff_table(pool, schema, table))).await
}

async fn diff_table(pool: &PgPool, schema: &str, table: &Table) -> Result<TableDiff, sqlx::Error> {
    let on = table
        .key
        .iter()
        .map(|c| format!("s.{c} = l.{c}", c = quoted(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "SELECT count(*) FILTER (WHERE l.ctid IS NULL) AS added,
                count(*) FILTER (WHERE s.ctid IS NULL) AS removed,
                count(*) FILTER (WHERE s.ctid IS NOT NULL AND l.ctid IS NOT NULL
                                   AND ROW(s.*) IS DISTINCT FROM ROW(l.*)) AS changed
           FROM {schema}.{name} s FULL JOIN public.{name} l ON {on}",
        schema = quoted(schema),
        name = quoted(table.name),
    );
    let row = sqlx::query(&sql).fetch_one(pool).await?;
    Ok(TableDiff {
        table: table.name.to_owned(),
        added: row.try_get("added")?,
        removed: row.try_get("removed")?,
        changed: row.try_get("changed")?,
    })
}

/// Whether any event (settled or not) lies after `checkpoint`.
async fn events_after(pool: &PgPool, checkpoint: Checkpoint) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events WHERE (transaction_id, position) > ($1::text::xid8, $2))",
    )
    .bind(checkpoint.transaction_id.to_string())
    .bind(checkpoint.position)
    .fetch_one(pool)
    .await
}

async fn set_search_path(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "SET LOCAL search_path TO {}, public",
        quoted(schema)
    ))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Rebuilds (or, in `DryRun`, builds and compares) `projection`. `progress` is called after
/// each batch with the events read so far and the log's size; `stop` interrupts between
/// batches.
pub async fn rebuild(
    pool: &PgPool,
    projection: Arc<dyn Projection>,
    mode: Mode,
    options: Options,
    progress: impl FnMut(u64, u64),
    stop: &AtomicBool,
) -> Result<Report, RebuildError> {
    let name = projection.name();
    rebuild_many(pool, &[projection], mode, options, progress, stop)
        .await
        .pop()
        .unwrap_or_else(|| Err(RebuildError::NotRebuildable(name.to_owned())))
}

/// One projection's part in a rebuild pass.
struct Target {
    projection: Arc<dyn Projection>,
    schema: String,
    /// The last event in its shadow tables.
    checkpoint: Checkpoint,
    resumed: bool,
    /// Events this run applied (or skipped as not its own) for it.
    events_read: u64,
    /// Of those, the ones folded in memory.
    events_folded: u64,
    /// While the build folds the log in memory: the model, and the connection its rows go
    /// out on.
    folding: Option<Folding>,
}

/// A target folding the log in memory ([`Fold`]).
struct Folding {
    model: Box<dyn Fold>,
    /// Connections of its own, not the pool's (held for the whole fold, they would starve a
    /// small pool), with no transaction open: every statement commits on its own, so the
    /// fold never holds back the log's horizon (`pg_snapshot_xmin`) that every live
    /// follower reads below. The rows count only once the flush records the checkpoint; a
    /// build starting at the log's start empties its shadow first ([`prepare`]). `conn`
    /// for the flush's own statements and the checkpoint, `writers` for the rows' `COPY`s,
    /// written while the fold goes on.
    conn: PgConnection,
    writers: Writers,
    /// Events folded (or skipped as not its own) since the shadow was empty.
    read: u64,
}

/// What one batch of the pass holds for one target.
#[derive(Default)]
struct Part {
    /// Events after the target's checkpoint, whether it handles them or not.
    read: usize,
    last: Option<Checkpoint>,
    decoded: Vec<Decoded>,
    poison: Option<RebuildError>,
}

/// Rebuilds (or builds and compares) several projections in **one pass over the log**: each
/// batch is read once (with the payloads any of them consumes) and applied to every
/// projection's shadow tables concurrently, each in its own transaction with its own
/// checkpoint, so each resumes, fails and swaps on its own. Verification and swaps run
/// concurrently too. Returns one result per projection, in order: one that fails (an event
/// it cannot apply) stops alone, the others go on. `progress` is called after each batch
/// with the events the pass has read and the log's size; `stop` interrupts between batches.
pub async fn rebuild_many(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    mode: Mode,
    options: Options,
    mut progress: impl FnMut(u64, u64),
    stop: &AtomicBool,
) -> Vec<Result<Report, RebuildError>> {
    let started = Instant::now();
    let mut results: Vec<Option<Result<Report, RebuildError>>> =
        projections.iter().map(|_| None).collect();
    // (index in `projections`, its part in the pass)
    let mut active: Vec<(usize, Target)> = Vec::new();
    let mut locks = match RebuildLocks::acquire(pool).await {
        Ok(locks) => locks,
        Err(err) => {
            let err = database("connect")(err);
            if projections.len() == 1 {
                return vec![Err(err)];
            }
            let shared = Arc::new(err);
            return projections
                .iter()
                .map(|_| Err(RebuildError::Pass(shared.clone())))
                .collect();
        }
    };
    for (index, projection) in projections.iter().enumerate() {
        let name = projection.name();
        match locks.take(&schema_name(name, mode)).await {
            Ok(true) => {}
            Ok(false) => {
                results[index] = Some(Err(RebuildError::AlreadyRunning(name.to_owned())));
                continue;
            }
            Err(err) => {
                results[index] = Some(Err(database("take the rebuild's lock")(err)));
                continue;
            }
        }
        match prepare(pool, projection.clone(), mode).await {
            Ok(target) => active.push((index, target)),
            Err(err) => results[index] = Some(Err(err)),
        }
    }

    let pass = build(pool, &mut active, mode, options, &mut progress, stop).await;
    for (index, outcome) in pass {
        results[index] = Some(Err(outcome));
    }
    // Each projection on its own from here: it writes out what it folded (in a task of its
    // own: encoding rows is CPU work), then verifies, indexes and swaps while the others
    // may still be writing theirs.
    let finishing = active
        .into_iter()
        .filter(|(index, _)| results[*index].is_none())
        .map(|(index, mut target)| async move {
            let flushed = Owned(tokio::spawn(async move {
                let outcome = flush(&mut target, mode).await;
                (target, outcome)
            }))
            .await;
            let report = match flushed {
                Ok((target, Ok(()))) => {
                    let build_seconds = started.elapsed().as_secs_f64();
                    finish(pool, &target, mode, options, started, build_seconds).await
                }
                Ok((_, Err(err))) => Err(err),
                Err(err) => Err(RebuildError::Apply(err)),
            };
            (index, report)
        });
    for (index, report) in futures::future::join_all(finishing).await {
        results[index] = Some(report);
    }
    locks.release().await;
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(RebuildError::NotFinished)))
        .collect()
}

/// The schema a rebuild (or a dry run) of `name` builds in.
fn schema_name(name: &str, mode: Mode) -> String {
    match mode {
        Mode::Swap => format!("rebuild_{name}"),
        Mode::DryRun => format!("scratch_{name}"),
    }
}

/// How long a rebuild waits for another run's lock before it is refused.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// One rebuild (or dry run) per projection at a time, across processes: a session advisory
/// lock per shadow schema, held on a connection of its own for the whole run. Two runs
/// building into the same shadow would apply each batch twice (or drop each other's
/// scratch tables). The locks end with the session, so a run that dies leaves none behind.
struct RebuildLocks {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    held: Vec<String>,
}

impl RebuildLocks {
    async fn acquire(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            conn: Some(pool.acquire().await?),
            held: Vec::new(),
        })
    }

    /// Takes the lock for `schema`; false when another session still holds it after
    /// [`LOCK_WAIT`]. The wait covers a run killed just before: PostgreSQL ends its session,
    /// and the lock with it, only when it notices the client gone.
    async fn take(&mut self, schema: &str) -> Result<bool, sqlx::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let taken: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtextextended('rebuild:' || $1, 0))",
            )
            .bind(schema)
            .fetch_one(&mut **conn)
            .await?;
            if taken {
                self.held.push(schema.to_owned());
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives the locks back, and the connection to the pool without them (or, if that
    /// fails, closes it, which ends them).
    async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        for schema in std::mem::take(&mut self.held) {
            let released =
                sqlx::query("SELECT pg_advisory_unlock(hashtextextended('rebuild:' || $1, 0))")
                    .bind(&schema)
                    .execute(&mut *conn)
                    .await;
            if released.is_err() {
                drop(conn.detach());
                return;
            }
        }
    }
}

impl Drop for RebuildLocks {
    /// Dropped without [`release`](Self::release) (the run's future was cancelled): the
    /// connection must not go back to the pool still holding the locks, so it is closed.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !self.held.is_empty()
        {
            drop(conn.detach());
        }
    }
}

/// Registers the projection and its rebuild, and makes its shadow tables: a rebuild of the
/// same version resumes; anything else starts over.
async fn prepare(
    pool: &PgPool,
    projection: Arc<dyn Projection>,
    mode: Mode,
) -> Result<Target, RebuildError> {
    let name = projection.name();
    let tables = projection.tables();
    if tables.is_empty() {
        return Err(RebuildError::NotRebuildable(name.to_owned()));
    }
    let version = projection.version();
    let mut conn = pool.acquire().await.map_err(database("connect"))?;
    sqlx::query("INSERT INTO projection_state (name, version) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map_err(database("register the projection"))?;
    let schema = schema_name(name, mode);
    let mut checkpoint = Checkpoint::START;
    let mut resumed = false;
    match mode {
        Mode::DryRun => drop_schema(&mut conn, &schema)
            .await
            .map_err(database("drop old scratch tables"))?,
        Mode::Swap => {
            let existing = sqlx::query(
                "SELECT target_version, checkpoint_tx::text AS checkpoint_tx, checkpoint_position
                   FROM projection_rebuilds WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(database("read the rebuild's progress"))?;
            match existing {
                Some(row) if row.try_get::<i32, _>("target_version").ok() == Some(version) => {
                    let transaction_id: String =
                        row.try_get("checkpoint_tx").map_err(database("read"))?;
                    checkpoint = Checkpoint {
                        transaction_id: transaction_id.parse().unwrap_or(0),
                        position: row
                            .try_get("checkpoint_position")
                            .map_err(database("read"))?,
                    };
                    resumed = true;
                }
                other => {
                    if other.is_some() {
                        drop_schema(&mut conn, &schema)
                            .await
                            .map_err(database("drop a stale rebuild"))?;
                        sqlx::query("DELETE FROM projection_rebuilds WHERE name = $1")
                            .bind(name)
                            .execute(&mut *conn)
                            .await
                            .map_err(database("forget a stale rebuild"))?;
                    }
                    sqlx::query(
                        "INSERT INTO projection_rebuilds (name, target_version, schema_name) VALUES ($1, $2, $3)",
                    )
                    .bind(name)
                    .bind(version)
                    .bind(&schema)
                    .execute(&mut *conn)
                    .await
                    .map_err(database("record the rebuild"))?;
                }
            }
        }
    }
    // One transaction: an index and the constraint it backs come together or not at all,
    // so a run that died here finds the shadow whole or absent.
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(database("begin"))?;
    create_shadow(&mut tx, &schema, tables)
        .await
        .map_err(database("create the shadow tables"))?;
    if checkpoint == Checkpoint::START {
        // Nothing of it counts yet: a fold that died left rows its checkpoint never
        // recorded (ADR 0009).
        let names: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", quoted(&schema), quoted(t.name)))
            .collect();
        sqlx::query(&format!("TRUNCATE {}", names.join(", ")))
            .execute(&mut *tx)
            .await
            .map_err(database("empty the shadow tables"))?;
    }
    tx.commit()
        .await
        .map_err(database("create the shadow tables"))?;
    Ok(Target {
        projection,
        schema,
        checkpoint,
        // A run that died before its first batch committed left nothing to go on from.
        resumed: resumed && checkpoint != Checkpoint::START,
        events_read: 0,
        events_folded: 0,
        folding: None,
    })
}

/// The event types to read payloads for: those any target consumes (all when one of them
/// cannot list its own).
fn payload_types(active: &[(usize, Target)]) -> Option<Arc<[&'static str]>> {
    event_types_of(active.iter().map(|(_, target)| &*target.projection)).map(Into::into)
}

/// Stops every target still in the pass with `err`: itself for one, shared for several.
fn stop_all(active: &mut Vec<(usize, Target)>, err: RebuildError) -> Vec<(usize, RebuildError)> {
    if let [(index, _)] = active.as_slice() {
        let index = *index;
        active.clear();
        return vec![(index, err)];
    }
    let shared = Arc::new(err);
    active
        .drain(..)
        .map(|(index, _)| (index, RebuildError::Pass(shared.clone())))
        .collect()
}

/// The pass: batch by batch until every target has every settled event. The next batches
/// are read while this one is applied (the reads use other connections; settled events
/// never change), so reading and decoding overlap with the writes. Returns the targets that
/// stopped, with why; the others have every event, in their shadows or, while they fold,
/// in memory ([`flush`] writes them out).
async fn build(
    pool: &PgPool,
    active: &mut Vec<(usize, Target)>,
    mode: Mode,
    options: Options,
    progress: &mut impl FnMut(u64, u64),
    stop: &AtomicBool,
) -> Vec<(usize, RebuildError)> {
    let mut stopped = Vec::new();
    let Some(start) = active.iter().map(|(_, t)| t.checkpoint).min() else {
        return stopped;
    };
    let counts = async {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(pool)
            .await?;
        let before: i64 = if start == Checkpoint::START {
            0
        } else {
            sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE (transaction_id, position) <= ($1::text::xid8, $2)",
            )
            .bind(start.transaction_id.to_string())
            .bind(start.position)
            .fetch_one(pool)
            .await?
        };
        Ok::<_, sqlx::Error>((total, before))
    };
    let (total, mut passed) = match counts.await {
        Ok((total, before)) => (
            u64::try_from(total).unwrap_or(0),
            u64::try_from(before).unwrap_or(0),
        ),
        Err(err) => return stop_all(active, database("count events")(err)),
    };
    progress(passed, total.max(passed));

    for (index, mut target) in std::mem::take(active) {
        match begin_folding(pool, &mut target, options).await {
            Ok(()) => active.push((index, target)),
            Err(err) => stopped.push((index, err)),
        }
    }
    let types = payload_types(active);
    let mut checkpoint = start;
    let mut idle_since: Option<Instant> = None;
    let mut ahead = Reader::start(pool, types.clone(), checkpoint, options.batch_size);
    while !active.is_empty() {
        if stop.load(Ordering::SeqCst) {
            // What was folded in memory is kept: the run resumes from it.
            stopped.extend(flush_all(active, mode).await);
            for (index, target) in active.drain(..) {
                stopped.push((
                    index,
                    RebuildError::Interrupted {
                        events_read: target.events_read,
                    },
                ));
            }
            break;
        }
        let events = match ahead.next().await {
            Ok(events) => events,
            Err(err) => {
                stopped.extend(stop_all(active, err));
                break;
            }
        };
        let Some(last) = events.last().map(|(e, _)| e.checkpoint()) else {
            // Nothing settled is left; wait briefly for transactions still open elsewhere.
            match events_after(pool, checkpoint).await {
                Ok(false) => break,
                Ok(true) => {}
                Err(err) => {
                    stopped.extend(stop_all(active, database("look at the log")(err)));
                    break;
                }
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            ahead = Reader::start(pool, types.clone(), checkpoint, options.batch_size);
            continue;
        };
        idle_since = None;
        let read = events.len();
        let parts = split_batch(events, active);
        // Each projection's part in a task of its own: their CPU work (evolving rows,
        // encoding the writes) runs on every core, not one after the other.
        let applying = active
            .drain(..)
            .zip(parts)
            .map(|((index, mut target), part)| {
                let pool = pool.clone();
                let task = tokio::spawn(async move {
                    let outcome = apply_part(&pool, &mut target, part, mode, options).await;
                    (target, outcome)
                });
                (index, Owned(task))
            })
            .collect();
        stopped.extend(join_targets(active, applying).await);
        checkpoint = last;
        passed += read as u64;
        progress(passed, total.max(passed));
    }
    drop(ahead);
    stopped
}

type Stepping = Owned<(Target, Result<(), RebuildError>)>;

/// A task that is aborted when its handle is dropped before it ended: a rebuild whose future
/// is dropped (cancelled) leaves no task behind writing to its shadow, not even to the
/// next run's, which empties it first.
struct Owned<T>(JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Owned<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Waits for each target's task: puts back in `active` those that went on, returns those
/// that stopped.
async fn join_targets(
    active: &mut Vec<(usize, Target)>,
    tasks: Vec<(usize, Stepping)>,
) -> Vec<(usize, RebuildError)> {
    let (indexes, tasks): (Vec<usize>, Vec<Stepping>) = tasks.into_iter().unzip();
    let mut stopped = Vec::new();
    for (index, joined) in indexes
        .into_iter()
        .zip(futures::future::join_all(tasks).await)
    {
        match joined {
            Ok((target, Ok(()))) => active.push((index, target)),
            Ok((_, Err(err))) => stopped.push((index, err)),
            Err(err) => stopped.push((index, RebuildError::Apply(err))),
        }
    }
    stopped
}

/// Starts folding the log in memory for a target whose projection can and whose shadow is
/// empty (nothing has committed: its checkpoint is the log's start), on a transaction of its
/// own.
async fn begin_folding(
    pool: &PgPool,
    target: &mut Target,
    options: Options,
) -> Result<(), RebuildError> {
    if options.fold_rows == 0 || target.checkpoint != Checkpoint::START {
        return Ok(());
    }
    let Some(model) = target.projection.fold() else {
        return Ok(());
    };
    let mut conns = Vec::new();
    // One for the flush and the checkpoint, and one writer per table, up to two.
    for _ in 0..=target.projection.tables().len().clamp(1, 2) {
        let mut conn = PgConnection::connect_with(&pool.connect_options())
            .await
            .map_err(database("connect"))?;
        select_shadow(&mut conn, &target.schema, false).await?;
        conns.push(conn);
    }
    let conn = conns.remove(0);
    target.folding = Some(Folding {
        model,
        conn,
        writers: Writers::new(conns),
        read: 0,
    });
    Ok(())
}

/// Writes out what every folding target holds, at once (see [`flush`]).
async fn flush_all(active: &mut Vec<(usize, Target)>, mode: Mode) -> Vec<(usize, RebuildError)> {
    let flushing = active
        .drain(..)
        .map(|(index, mut target)| {
            let task = tokio::spawn(async move {
                let outcome = flush(&mut target, mode).await;
                (target, outcome)
            });
            (index, Owned(task))
        })
        .collect();
    join_targets(active, flushing).await
}

/// Writes out the rows a folding target holds, then records its checkpoint, which makes
/// them (and the timeline rows written as it folded) the shadow's; the build goes on batch
/// by batch from there. Nothing for a target not folding.
async fn flush(target: &mut Target, mode: Mode) -> Result<(), RebuildError> {
    let Some(Folding {
        mut model,
        mut conn,
        mut writers,
        read,
    }) = target.folding.take()
    else {
        return Ok(());
    };
    model
        .flush(&mut conn, &mut writers)
        .await
        .map_err(RebuildError::Flush)?;
    writers.finish().await.map_err(RebuildError::Flush)?;
    if mode == Mode::Swap {
        // After every chunk's commit: in the WAL, the checkpoint follows the rows it counts.
        record_checkpoint(&mut conn, target.projection.name(), target.checkpoint, read).await?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// The shadow tables for the rest of the transaction (`local`) or the session, and no wait
/// for the WAL flush at commit: a batch lost in a crash of PostgreSQL loses its rows and its
/// checkpoint together (they commit in one transaction), and the rebuild resumes from the
/// checkpoint before it (a fold's rows count only once its checkpoint is recorded). The
/// swap commits durably as usual.
async fn select_shadow(
    conn: &mut PgConnection,
    schema: &str,
    local: bool,
) -> Result<(), RebuildError> {
    sqlx::query(
        "SELECT set_config('search_path', $1, $2), set_config('synchronous_commit', 'off', $2),
                set_config('jit', 'off', $2)",
    )
    .bind(format!("{}, public", quoted(schema)))
    .bind(local)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(database("select the shadow tables"))
}

/// Moves a rebuild's checkpoint to `next`, `read` events on.
async fn record_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    next: Checkpoint,
    read: u64,
) -> Result<(), RebuildError> {
    sqlx::query(
        "UPDATE projection_rebuilds
            SET checkpoint_tx = $2::text::xid8, checkpoint_position = $3,
                events_applied = events_applied + $4, updated_at = now()
          WHERE name = $1",
    )
    .bind(name)
    .bind(next.transaction_id.to_string())
    .bind(next.position)
    .bind(i64::try_from(read).unwrap_or(i64::MAX))
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(database("move the rebuild's checkpoint"))
}

/// Splits a batch between the targets (see [`distribute`]): an event a target cannot
/// decode stops it.
fn split_batch(events: Vec<Read>, active: &[(usize, Target)]) -> Vec<Part> {
    let readers: Vec<(Checkpoint, &dyn Projection)> = active
        .iter()
        .map(|(_, target)| (target.checkpoint, &*target.projection))
        .collect();
    distribute(events, &readers)
        .into_iter()
        .map(|share| Part {
            read: share.read,
            last: share.last,
            decoded: share.decoded,
            poison: share.poison.map(|(stored, reason)| RebuildError::Poison {
                event_id: stored.event_id,
                position: stored.position,
                source: ApplyError::Decode(serde::de::Error::custom(reason)),
            }),
        })
        .collect()
}

/// Applies one target's part of a batch to its shadow tables, with its checkpoint, in a
/// transaction of its own; or, while it folds, to its model in memory (and its timeline
/// rows to its open transaction), writing the model out when it holds more than
/// `fold_rows` rows.
async fn apply_part(
    pool: &PgPool,
    target: &mut Target,
    part: Part,
    mode: Mode,
    options: Options,
) -> Result<(), RebuildError> {
    if let Some(poison) = part.poison {
        return Err(poison);
    }
    let Some(next) = part.last else {
        return Ok(());
    };
    let first = part
        .decoded
        .first()
        .map(|d| (d.stored.event_id, d.stored.position));
    let poisoned = |(event_id, position): (uuid::Uuid, i64)| {
        move |source| RebuildError::Poison {
            event_id,
            position,
            source,
        }
    };
    let read = part.read as u64;
    if let Some(folding) = target.folding.as_mut() {
        if let Some(first) = first {
            folding
                .model
                .fold(&mut folding.writers, &part.decoded)
                .await
                .map_err(poisoned(first))?;
        }
        folding.read += read;
        let full = folding.model.held() > options.fold_rows;
        target.checkpoint = next;
        target.events_read += read;
        target.events_folded += read;
        if full {
            flush(target, mode).await?;
        }
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(database("begin"))?;
    let projection = target.projection.clone();
    let applied = async {
        select_shadow(&mut tx, &target.schema, true).await?;
        if let Some(first) = first {
            projection
                .apply(&mut tx, &part.decoded)
                .await
                .map_err(poisoned(first))?;
        }
        if mode == Mode::Swap {
            record_checkpoint(&mut tx, projection.name(), next, read).await?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = applied {
        let _ = tx.rollback().await;
        return Err(err);
    }
    tx.commit().await.map_err(database("commit a batch"))?;
    target.checkpoint = next;
    target.events_read += read;
    Ok(())
}

/// Verifies a built target against live, then swaps it in (or drops the scratch tables).
async fn finish(
    pool: &PgPool,
    target: &Target,
    mode: Mode,
    options: Options,
    started: Instant,
    build_seconds: f64,
) -> Result<Report, RebuildError> {
    let projection = target.projection.as_ref();
    // Indexing the rows is the build's last step; the comparison with live needs no index
    // (it hash-joins), so the two run at once, on connections of their own.
    let indexing = async {
        let started = Instant::now();
        let mut conn = pool.acquire().await.map_err(database("connect"))?;
        build_indexes(&mut conn, &target.schema, projection.tables())
            .await
            .map_err(database("index the shadow tables"))?;
        Ok::<_, RebuildError>(started.elapsed().as_secs_f64())
    };
    let verifying = async {
        let started = Instant::now();
        let diff = diff(pool, &target.schema, projection.tables())
            .await
            .map_err(database("compare with live"))?;
        Ok::<_, RebuildError>((diff, started.elapsed().as_secs_f64()))
    };
    let (indexed, verified) = futures::future::join(indexing, verifying).await;
    let build_seconds = build_seconds + indexed?;
    let (diff, verify_seconds) = verified?;
    match mode {
        Mode::DryRun => {
            let mut conn = pool.acquire().await.map_err(database("connect"))?;
            drop_schema(&mut conn, &target.schema)
                .await
                .map_err(database("drop the scratch tables"))?;
        }
        Mode::Swap => swap(pool, projection, &target.schema, target.checkpoint, options).await?,
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        projection: projection.name().to_owned(),
        version: projection.version(),
        events_read: target.events_read,
        resumed: target.resumed,
        events_folded: target.events_folded,
        seconds,
        build_seconds,
        verify_seconds,
        events_per_second: if seconds > 0.0 {
            target.events_read as f64 / seconds
        } else {
            0.0
        },
        diff,
        swapped: mode == Mode::Swap,
    })
}

/// Swaps the shadow tables in, in one transaction, after applying the last events.
async fn swap(
    pool: &PgPool,
    projection: &dyn Projection,
    schema: &str,
    checkpoint: Checkpoint,
    options: Options,
) -> Result<(), RebuildError> {
    let name = projection.name();
    let retired = format!(
        "retired_{name}_{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S")
    );
    let mut tx = pool.begin().await.map_err(database("begin the swap"))?;
    if let Err(err) = swap_in(&mut tx, projection, schema, checkpoint, options, &retired).await {
        let _ = tx.rollback().await;
        return Err(err);
    }
    tx.commit().await.map_err(database("commit the swap"))?;
    if !options.keep_old {
        // Table by table and without CASCADE: a view still reading a retired table (one the
        // projection did not declare) makes this fail loudly instead of vanishing with it.
        let mut conn = pool.acquire().await.map_err(database("connect"))?;
        for table in projection.tables() {
            sqlx::query(&format!(
                "DROP TABLE {}.{}",
                quoted(&retired),
                quoted(table.name)
            ))
            .execute(&mut *conn)
            .await
            .map_err(database("drop a retired table"))?;
        }
        sqlx::query(&format!("DROP SCHEMA {}", quoted(&retired)))
            .execute(&mut *conn)
            .await
            .map_err(database("drop the retired schema"))?;
    }
    Ok(())
}

async fn swap_in(
    tx: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    mut checkpoint: Checkpoint,
    options: Options,
    retired: &str,
) -> Result<(), RebuildError> {
    let name = projection.name();
    let tables = projection.tables();
    // Holds the live worker off (it takes this row for every batch) until the swap commits.
    sqlx::query("SELECT 1 FROM projection_state WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(database("lock the projection"))?;
    set_search_path(&mut *tx, schema)
        .await
        .map_err(database("select the shadow tables"))?;
    let mut caught_up: i64 = 0;
    loop {
        let (read, next) =
            apply_batch(&mut *tx, projection, checkpoint, options.batch_size).await?;
        if read == 0 {
            break;
        }
        caught_up += read as i64;
        checkpoint = next;
    }
    sqlx::query(&format!("CREATE SCHEMA {}", quoted(retired)))
        .execute(&mut *tx)
        .await
        .map_err(database("create the retired schema"))?;
    // Readers lock a view before its tables: lock in that order too (locking a view locks
    // its tables), or a reader and the swap can deadlock.
    let views = projection.views();
    for relation in views
        .iter()
        .map(|v| v.name)
        .chain(tables.iter().map(|t| t.name))
    {
        sqlx::query(&format!(
            "LOCK TABLE public.{} IN ACCESS EXCLUSIVE MODE",
            quoted(relation)
        ))
        .execute(&mut *tx)
        .await
        .map_err(database("lock the live model"))?;
    }
    for table in tables {
        let name = quoted(table.name);
        for statement in [
            format!("ALTER TABLE public.{name} SET SCHEMA {}", quoted(retired)),
            format!("ALTER TABLE {}.{name} SET SCHEMA public", quoted(schema)),
        ] {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(database("move a table"))?;
        }
    }
    // Views point at the tables they were made with: make them again, over the new ones.
    sqlx::query("SET LOCAL search_path TO public")
        .execute(&mut *tx)
        .await
        .map_err(database("select the live tables"))?;
    for view in views {
        sqlx::query(&format!(
            "CREATE OR REPLACE VIEW public.{} AS {}",
            quoted(view.name),
            view.definition
        ))
        .execute(&mut *tx)
        .await
        .map_err(database("re-create a view"))?;
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT events_applied FROM projection_rebuilds WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(database("read the rebuild"))?;
    sqlx::query(
        "UPDATE projection_state
            SET checkpoint_tx = $2::text::xid8, checkpoint_position = $3, version = $4,
                state = CASE WHEN state = 'paused' THEN 'paused' ELSE 'running' END,
                last_error = NULL, last_error_at = NULL, progress_at = now(), events_applied = $5
          WHERE name = $1",
    )
    .bind(name)
    .bind(checkpoint.transaction_id.to_string())
    .bind(checkpoint.position)
    .bind(projection.version())
    .bind(applied + caught_up)
    .execute(&mut *tx)
    .await
    .map_err(database("move the live checkpoint"))?;
    sqlx::query(
        "UPDATE projection_dead_letters SET status = 'superseded', resolved_at = now()
          WHERE projection = $1 AND status = 'parked'",
    )
    .bind(name)
    .execute(&mut *tx)
    .await
    .map_err(database("retire parked events"))?;
    sqlx::query("DELETE FROM projection_rebuilds WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(database("finish the rebuild"))?;
    sqlx::query(&format!("DROP SCHEMA {}", quoted(schema)))
        .execute(&mut *tx)
        .await
        .map_err(database("drop the empty shadow schema"))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(infra::channels::CHECKPOINTS)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(database("notify"))?;
    Ok(())
}
