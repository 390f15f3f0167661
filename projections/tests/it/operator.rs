//! Rebuilds, dead letters and the `ordo` CLI, against the real PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::process::Command;

use async_trait::async_trait;
use domain::inventory::InventoryCommand;
use infra::event_store::StoredEvent;
use infra::projection::{ApplyError, Decoded, Outcome, Projection, Table};
use projections::admin;
use projections::inventory::InventoryProjection;
use projections::rebuild::{self, Mode, Options, RebuildError};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};

use crate::helpers::{Shop, drain, qty, rows, t, worker};

fn never() -> AtomicBool {
    AtomicBool::new(false)
}

/// Builds every read model from scratch into scratch tables and compares with live: an
/// empty diff means live equals a fresh single-pass build.
async fn assert_live_equals_a_fresh_build(pool: &PgPool) {
    for projection in projections::all() {
        let report = rebuild::rebuild(
            pool,
            projection.clone(),
            Mode::DryRun,
            Options::default(),
            |_, _| {},
            &never(),
        )
        .await
        .expect("test setup");
        for diff in &report.diff {
            assert_eq!(
                (diff.added, diff.removed, diff.changed),
                (0, 0, 0),
                "{}: {diff:?}",
                report.projection
            );
        }
    }
}

/// One uninterrupted pass over the log for `projections`.
async fn pass_over(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    mode: Mode,
    options: Options,
) -> Vec<Result<rebuild::Report, RebuildError>> {
    rebuild::rebuild_many(pool, projections, mode, options, |_, _| {}, &never()).await
}

/// The `n`th restock of one MUG: a write the live inventory worker applies.
async fn restock_a_mug(shop: &Shop, n: u32) {
    shop.inventory(
        "MUG",
        InventoryCommand::Restock {
            quantity: qty(1),
            at: t(5, n % 60),
        },
    )
    .await;
}

async fn build_live(pool: &PgPool) {
    for projection in projections::all() {
        let mut worker = worker(pool, projection).await;
        assert_eq!(drain(pool, &mut worker).await, Outcome::Idle);
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_rebuild_under_load_swaps_in_a_model_equal_to_a_fresh_build(test_pool: PgPool) {
    // Four live workers, a writer, a reader and the rebuild: more than a test pool's five.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect_with((*test_pool.connect_options()).clone())
        .await
        .unwrap();
    let shop = Arc::new(Shop::new(&pool));
    shop.history().await;
    // The live projector runs throughout, its four read models stepping together as the
    // projector's do (polling: no notifications here).
    let (stop, stopped) = watch::channel(false);
    let together = infra::projection::Group::register(
        pool.clone(),
        projections::all(),
        crate::helpers::fast_config(),
    )
    .await
    .unwrap();
    let live = vec![tokio::spawn(
        together.run(Arc::new(Notify::new()), stopped.clone()),
    )];
    // Commands keep arriving...
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (shop, writing) = (shop.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while writing.load(Ordering::SeqCst) {
                restock_a_mug(&shop, n).await;
                n += 1;
                // A steady stream the live workers can keep up with: unthrottled, a writer
                // whose states are cached outruns them, and "caught up" never holds.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            n
        })
    };
    // Once the live model is whole...
    for name in [
        "inventory",
        "order_details",
        "customer_orders",
        "sales_daily",
    ] {
        crate::helpers::wait_until_caught_up(&pool, name).await;
    }
    // ...and readers keep reading the views, which must always answer with a whole model.
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (pool, reading) = (pool.clone(), reading.clone());
        tokio::spawn(async move {
            let mut reads = 0u32;
            while reading.load(Ordering::SeqCst) {
                let (items, orders): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM inventory), (SELECT count(*) FROM order_details)",
                )
                .fetch_one(&pool)
                .await
                .expect("the query API's views answer throughout");
                assert_eq!((items, orders), (2, 3), "never a half-built model");
                reads += 1;
            }
            reads
        })
    };
    // One pass over the log for all four (as `ordo projections rebuild --all`), swapped in
    // concurrently.
    let small = Options {
        batch_size: 7,
        ..Options::default()
    };
    let all = projections::all();
    let reports = pass_over(&pool, &all, Mode::Swap, small).await;
    assert_eq!(reports.len(), 4);
    for report in reports {
        let report = report.unwrap();
        assert!(report.swapped);
        assert!(report.events_read > 0);
    }
    writing.store(false, Ordering::SeqCst);
    let restocks = writer.await.unwrap();
    assert!(restocks > 0);
    for name in [
        "inventory",
        "order_details",
        "customer_orders",
        "sales_daily",
    ] {
        crate::helpers::wait_until_caught_up(&pool, name).await;
    }
    reading.store(false, Ordering::SeqCst);
    assert!(reader.await.unwrap() > 0);
    let _ = stop.send(true);
    for task in live {
        task.await.unwrap();
    }
    // The live worker went on applying into the swapped-in tables.
    let on_hand: i64 = sqlx::query_scalar("SELECT on_hand FROM inventory WHERE sku = 'MUG'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(on_hand, 13 + i64::from(restocks));
    assert_live_equals_a_fresh_build(&pool).await;
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata
          WHERE schema_name LIKE 'rebuild_%' OR schema_name LIKE 'retired_%' OR schema_name LIKE 'scratch_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        leftovers, 0,
        "no shadow, retired or scratch tables are left behind"
    );
    pool.close().await;
}

/// A build from empty tables folds the log in memory and writes each row once (ADR 0009);
/// one holding more than `fold_rows` writes them out and goes on batch by batch; one with
/// `fold_rows` 0 goes batch by batch from the start. All three give the live model.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn folded_in_memory_written_out_midway_or_batch_by_batch_the_models_are_the_same(
    pool: PgPool,
) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let in_log = u64::try_from(rows_in_log(&pool).await).unwrap();
    let all = projections::all();
    for fold_rows in [1_000_000, 1, 0] {
        let options = Options {
            batch_size: 5,
            fold_rows,
            ..Options::default()
        };
        for report in pass_over(&pool, &all, Mode::DryRun, options).await {
            let report = report.unwrap();
            let context = format!("fold_rows {fold_rows}: {report:?}");
            assert_eq!(report.events_read, in_log, "{context}");
            match fold_rows {
                0 => assert_eq!(report.events_folded, 0, "{context}"),
                1 if report.projection == "order_details" => assert!(
                    report.events_folded > 0 && report.events_folded < in_log,
                    "written out after a few batches: {context}"
                ),
                1 => assert!(report.events_folded < in_log, "{context}"),
                _ => assert_eq!(report.events_folded, in_log, "{context}"),
            }
            for diff in &report.diff {
                assert_eq!(
                    (diff.added, diff.removed, diff.changed),
                    (0, 0, 0),
                    "{context}"
                );
            }
        }
    }
}

/// A run that dies while folding (its future dropped mid-pass, as a crash would end it)
/// recorded no checkpoint: the rows it wrote as it folded (the timeline's, each `COPY`
/// committing on its own) do not count, the next run empties the shadow and starts over
/// from the log's start, and builds the same model.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_run_that_dies_while_folding_counts_for_nothing_and_the_next_starts_over(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let live_before = rows(&pool, "order_details_v1").await;
    let small = Options {
        batch_size: 5,
        ..Options::default()
    };
    let (first_batch, folded_one) = tokio::sync::oneshot::channel::<()>();
    let mut first_batch = Some(first_batch);
    let stop = never();
    let mut running = Box::pin(rebuild::rebuild(
        &pool,
        Arc::new(projections::order_details::OrderDetailsProjection),
        Mode::Swap,
        small,
        |done, _| {
            if done > 0
                && let Some(signal) = first_batch.take()
            {
                let _ = signal.send(());
            }
        },
        &stop,
    ));
    tokio::select! {
        finished = &mut running => panic!("the rebuild was to die mid-pass: {finished:?}"),
        _ = folded_one => {}
    }
    // The first batch's timeline rows were handed to a writer in the background: they go in
    // while the run, no longer polled, reaches nothing further (no flush, no checkpoint).
    let timeline_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rebuild_order_details.order_timeline_v1")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while timeline_rows().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first batch's timeline rows were never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    drop(running);
    let (position, applied) = rebuild_checkpoint(&pool, "order_details").await;
    assert_eq!((position, applied), (0, 0), "no checkpoint recorded");
    assert!(timeline_rows().await > 0, "timeline rows were written");
    assert_eq!(
        rows(&pool, "order_details_v1").await,
        live_before,
        "live untouched"
    );

    let report = order_details_swapped(&pool, small).await.unwrap();
    assert!(!report.resumed, "nothing to resume from");
    let in_log = u64::try_from(rows_in_log(&pool).await).unwrap();
    assert_eq!((report.events_read, report.events_folded), (in_log, in_log));
    assert_eq!(
        rows(&pool, "order_details_v1").await,
        live_before,
        "the same model"
    );
    assert_live_equals_a_fresh_build(&pool).await;
}

/// Rows the database refuses while a fold writes them in the background (a check on live,
/// `NOT VALID` so that live's own rows stand, which the shadow copies) fail the rebuild:
/// no checkpoint, nothing swapped, live untouched.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn rows_refused_while_folding_fail_the_rebuild_and_nothing_is_swapped(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let live_before = rows(&pool, "order_details_v1").await;
    let timeline_before = rows(&pool, "order_timeline_v1").await;
    sqlx::query(
        "ALTER TABLE order_timeline_v1
           ADD CONSTRAINT refused CHECK (event_type <> 'OrderPlaced') NOT VALID",
    )
    .execute(&pool)
    .await
    .unwrap();
    let small = Options {
        batch_size: 5,
        ..Options::default()
    };
    let err = order_details_swapped(&pool, small).await.unwrap_err();
    assert!(
        matches!(err, RebuildError::Poison { .. } | RebuildError::Flush(_)),
        "{err:?}"
    );
    assert!(
        format!("{err:?}").contains("23514"),
        "the check's violation: {err:?}"
    );
    let (position, applied) = rebuild_checkpoint(&pool, "order_details").await;
    assert_eq!((position, applied), (0, 0), "no checkpoint recorded");
    assert_eq!(rows(&pool, "order_details_v1").await, live_before);
    assert_eq!(rows(&pool, "order_timeline_v1").await, timeline_before);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_interrupted_rebuild_leaves_live_untouched_and_resumes(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let live_before = rows(&pool, "order_details_v1").await;
    let small = Options {
        batch_size: 5,
        ..Options::default()
    };
    let err = interrupted_after_one_batch(&pool, small).await;
    assert!(
        matches!(err, RebuildError::Interrupted { events_read: 5 }),
        "{err}"
    );
    assert_eq!(
        rows(&pool, "order_details_v1").await,
        live_before,
        "live untouched"
    );
    let (position, applied) = rebuild_checkpoint(&pool, "order_details").await;
    assert!(position > 0);
    assert_eq!(applied, 5);

    let report = order_details_swapped(&pool, small).await.unwrap();
    assert!(report.resumed);
    assert!(report.swapped);
    assert_eq!(
        report.events_read as i64,
        rows_in_log(&pool).await - 5,
        "it went on from where it stopped"
    );
    assert_eq!(
        rows(&pool, "order_details_v1").await,
        live_before,
        "the same model"
    );
    assert_live_equals_a_fresh_build(&pool).await;
}

/// The definitions of a table's indexes (index names dropped), and whether it has a primary key.
async fn indexes(pool: &PgPool, table: &str) -> (Vec<String>, bool) {
    let definitions: Vec<String> = sqlx::query_scalar(
        "SELECT regexp_replace(pg_get_indexdef(indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON \\S+ ', '\\1')
           FROM pg_index WHERE indrelid = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("read the catalog");
    let primary: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p')",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .expect("read the catalog");
    (definitions, primary)
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn an_insert_only_table_is_built_without_its_indexes_and_swapped_in_with_them(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let timeline = indexes(&pool, "public.order_timeline_v1").await;
    assert_eq!(
        timeline,
        (
            vec!["UNIQUE USING btree (order_id, \"position\")".to_owned()],
            true
        ),
        "the live timeline's key"
    );
    let details = indexes(&pool, "public.order_details_v1").await;
    let small = Options {
        batch_size: 5,
        ..Options::default()
    };
    interrupted_after_one_batch(&pool, small).await;
    // Mid-build: the insert-only table has rows and no index; the others have theirs.
    assert_eq!(
        indexes(&pool, "rebuild_order_details.order_timeline_v1").await,
        (vec![], false)
    );
    assert!(
        !rows(&pool, "rebuild_order_details.order_timeline_v1")
            .await
            .is_empty()
    );
    assert_eq!(
        indexes(&pool, "rebuild_order_details.order_details_v1").await,
        details
    );
    // Indexing is idempotent: a run that indexed and then died is resumed as it stands.
    let tables = projections::order_details::OrderDetailsProjection.tables();
    let mut conn = pool.acquire().await.unwrap();
    rebuild::build_indexes(&mut conn, "rebuild_order_details", tables)
        .await
        .unwrap();
    assert_eq!(
        indexes(&pool, "rebuild_order_details.order_timeline_v1").await,
        timeline
    );
    rebuild::build_indexes(&mut conn, "rebuild_order_details", tables)
        .await
        .unwrap();
    drop(conn);

    let report = order_details_swapped(&pool, small).await.unwrap();
    assert!(report.resumed && report.swapped);
    assert_eq!(indexes(&pool, "public.order_timeline_v1").await, timeline);
    assert_live_equals_a_fresh_build(&pool).await;

    // A fresh rebuild (no shadow left) indexes the table itself before verifying and swapping.
    let report = order_details_swapped(&pool, Options::default())
        .await
        .unwrap();
    assert!(!report.resumed && report.swapped);
    assert!(
        report
            .diff
            .iter()
            .all(|d| (d.added, d.removed, d.changed) == (0, 0, 0)),
        "{:?}",
        report.diff
    );
    assert_eq!(indexes(&pool, "public.order_timeline_v1").await, timeline);
    // The key holds: the same entry twice is refused.
    let duplicate =
        sqlx::query("INSERT INTO order_timeline_v1 SELECT * FROM order_timeline_v1 LIMIT 1")
            .execute(&pool)
            .await;
    assert!(
        duplicate.is_err(),
        "the swapped-in timeline has its primary key"
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn indexing_a_shadow_table_leaves_all_its_indexes_or_none(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    // A second index on the live table, built after the primary key.
    sqlx::query("CREATE UNIQUE INDEX order_timeline_event ON order_timeline_v1 (event_id)")
        .execute(&pool)
        .await
        .unwrap();
    let small = Options {
        batch_size: 5,
        ..Options::default()
    };
    interrupted_after_one_batch(&pool, small).await;
    let shadow = "rebuild_order_details.order_timeline_v1";
    // An entry again under another position: the key can be built, the second index cannot.
    sqlx::query(&format!(
        "INSERT INTO {shadow} SELECT order_id, position + 1000000, event_id, at, source,
                event_type, description FROM {shadow} LIMIT 1"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let tables = projections::order_details::OrderDetailsProjection.tables();
    let mut conn = pool.acquire().await.unwrap();
    rebuild::build_indexes(&mut conn, "rebuild_order_details", tables)
        .await
        .expect_err("the event id twice");
    assert_eq!(
        indexes(&pool, shadow).await,
        (vec![], false),
        "no key without the other index: nothing half-built for a resumed run to skip"
    );
    sqlx::query(&format!("DELETE FROM {shadow} WHERE position > 1000000"))
        .execute(&pool)
        .await
        .unwrap();
    rebuild::build_indexes(&mut conn, "rebuild_order_details", tables)
        .await
        .unwrap();
    let live = indexes(&pool, "public.order_timeline_v1").await;
    assert_eq!(live.0.len(), 2);
    assert_eq!(indexes(&pool, shadow).await, live);
}

/// A rebuild of order_details, run to the end and swapped in.
/// A rebuild's recorded checkpoint position and the events it counts as applied.
async fn rebuild_checkpoint(pool: &PgPool, name: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT checkpoint_position, events_applied FROM projection_rebuilds WHERE name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("the rebuild's row")
}

async fn order_details_swapped(
    pool: &PgPool,
    options: Options,
) -> Result<rebuild::Report, RebuildError> {
    rebuild::rebuild(
        pool,
        Arc::new(projections::order_details::OrderDetailsProjection),
        Mode::Swap,
        options,
        |_, _| {},
        &never(),
    )
    .await
}

/// A rebuild of order_details stopped (as by Ctrl-C) after its first batch.
async fn interrupted_after_one_batch(pool: &PgPool, options: Options) -> RebuildError {
    interrupted_rebuild_after_one_batch(
        pool,
        Arc::new(projections::order_details::OrderDetailsProjection),
        options,
    )
    .await
}

/// A rebuild of `projection` stopped (as by Ctrl-C) after its first batch.
async fn interrupted_rebuild_after_one_batch(
    pool: &PgPool,
    projection: Arc<dyn Projection>,
    options: Options,
) -> RebuildError {
    let stop = AtomicBool::new(false);
    rebuild::rebuild(
        pool,
        projection,
        Mode::Swap,
        options,
        |done, _| {
            if done > 0 {
                stop.store(true, Ordering::SeqCst)
            }
        },
        &stop,
    )
    .await
    .expect_err("interrupted")
}

async fn rows_in_log(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("test setup")
}

/// Version 2 of the inventory projection: names in upper case.
struct InventoryV2;

#[async_trait]
impl Projection for InventoryV2 {
    fn name(&self) -> &'static str {
        InventoryProjection::NAME
    }
    fn version(&self) -> i32 {
        2
    }
    fn tables(&self) -> &'static [Table] {
        InventoryProjection.tables()
    }
    fn views(&self) -> &'static [infra::projection::View] {
        InventoryProjection.views()
    }
    fn handles(&self, stored: &StoredEvent) -> bool {
        InventoryProjection.handles(stored)
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        InventoryProjection.apply(conn, events).await?;
        sqlx::query("UPDATE inventory_v1 SET name = upper(name) WHERE name <> upper(name)")
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_changed_handler_gets_its_new_rows_after_a_rebuild(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.history().await;
    build_live(&pool).await;
    let mut old = worker(&pool, Arc::new(InventoryProjection)).await;
    let mut new = worker(&pool, Arc::new(InventoryV2)).await;
    // Before the rebuild, the new build waits: the database holds version 1.
    assert_eq!(
        new.run_once().await.unwrap(),
        Outcome::VersionMismatch {
            database: 1,
            code: 2
        }
    );
    old.release();
    let report = rebuild::rebuild(
        &pool,
        Arc::new(InventoryV2),
        Mode::Swap,
        Options::default(),
        |_, _| {},
        &never(),
    )
    .await
    .unwrap();
    assert_eq!(report.diff[0].changed, 2, "both rows change");
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM inventory ORDER BY sku")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(names, ["ITEM CUP", "ITEM MUG"]);
    let version: i32 =
        sqlx::query_scalar("SELECT version FROM projection_state WHERE name = 'inventory'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(version, 2);
    // From now on the old build applies nothing and the new one runs.
    shop.item("TEA", 300, 4).await;
    assert_eq!(drain(&pool, &mut new).await, Outcome::Idle);
    new.release();
    // The released lease frees up as soon as its session ends.
    let outcome = loop {
        match old.run_once().await.unwrap() {
            Outcome::Standby => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            other => break other,
        }
    };
    assert_eq!(
        outcome,
        Outcome::VersionMismatch {
            database: 2,
            code: 1
        }
    );
    // Outdated, it steps aside for good.
    assert_eq!(old.run_once().await.unwrap(), Outcome::Standby);
    let tea: String = sqlx::query_scalar("SELECT name FROM inventory WHERE sku = 'TEA'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tea, "ITEM TEA");
}

/// Fails on `BAD` items while `broken` is set: a bug, then its fix.
struct Buggy {
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl Projection for Buggy {
    fn name(&self) -> &'static str {
        InventoryProjection::NAME
    }
    fn version(&self) -> i32 {
        1
    }
    fn handles(&self, stored: &StoredEvent) -> bool {
        InventoryProjection.handles(stored)
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[Decoded]) -> Result<(), ApplyError> {
        if self.broken.load(Ordering::SeqCst)
            && events.iter().any(|d| d.stored.aggregate_id == "BAD")
        {
            return Err(ApplyError::Invalid("cannot handle BAD".to_owned()));
        }
        InventoryProjection.apply(conn, events).await
    }
}

async fn parked_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT id FROM projection_dead_letters WHERE status = 'parked'")
        .fetch_one(pool)
        .await
        .expect("test setup")
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_parked_event_is_retried_after_a_fix(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.item("GOOD", 1, 1).await;
    shop.item("BAD", 1, 1).await;
    shop.item("LATER", 1, 1).await;
    let broken = Arc::new(AtomicBool::new(true));
    let mut buggy = worker(
        &pool,
        Arc::new(Buggy {
            broken: broken.clone(),
        }),
    )
    .await;
    assert_eq!(drain(&pool, &mut buggy).await, Outcome::Halted);
    let id = parked_id(&pool).await;
    assert!(matches!(
        admin::resume(&pool, "inventory").await,
        Err(admin::AdminError::Refused(_))
    ));
    broken.store(false, Ordering::SeqCst);
    admin::retry(&pool, "inventory", id).await.unwrap();
    assert_eq!(drain(&pool, &mut buggy).await, Outcome::Idle);
    let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM inventory ORDER BY sku")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(skus, ["BAD", "GOOD", "LATER"]);
    let status: String =
        sqlx::query_scalar("SELECT status FROM projection_dead_letters WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "retried");
    assert!(matches!(
        admin::retry(&pool, "inventory", id).await,
        Err(admin::AdminError::UnknownDeadLetter { .. })
    ));
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_parked_event_is_skipped_and_the_projection_goes_on(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.item("GOOD", 1, 1).await;
    shop.item("BAD", 1, 1).await;
    shop.item("LATER", 1, 1).await;
    let mut buggy = worker(
        &pool,
        Arc::new(Buggy {
            broken: Arc::new(AtomicBool::new(true)),
        }),
    )
    .await;
    assert_eq!(drain(&pool, &mut buggy).await, Outcome::Halted);
    let id = parked_id(&pool).await;
    admin::skip(&pool, "inventory", id).await.unwrap();
    assert_eq!(drain(&pool, &mut buggy).await, Outcome::Idle);
    let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM inventory ORDER BY sku")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(skus, ["GOOD", "LATER"], "BAD was skipped");
    assert!(matches!(
        admin::skip(&pool, "inventory", id).await,
        Err(admin::AdminError::UnknownDeadLetter { .. })
    ));
}

/// An inventory event no handler can decode (a registration without its fields).
async fn append_an_unreadable_registration(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload)
         VALUES ('inventory_item', 'BAD', 1, 'InventoryItemRegistered', '1.0', '{\"Registered\": {}}')",
    )
    .execute(pool)
    .await
    .expect("test setup");
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_rebuild_stops_on_an_event_it_cannot_apply_and_swaps_nothing(pool: PgPool) {
    Shop::new(&pool).item("GOOD", 1, 1).await;
    build_live(&pool).await;
    append_an_unreadable_registration(&pool).await;
    let err = rebuild::rebuild(
        &pool,
        Arc::new(InventoryProjection),
        Mode::Swap,
        Options::default(),
        |_, _| {},
        &never(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RebuildError::Poison { .. }), "{err}");
    let skus: Vec<String> = sqlx::query_scalar("SELECT sku FROM inventory")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(skus, ["GOOD"]);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn in_a_pass_over_all_projections_one_that_cannot_apply_an_event_stops_alone(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let inventory_before = rows(&pool, "inventory_v1").await;
    append_an_unreadable_registration(&pool).await;
    let all = projections::all();
    let reports = pass_over(&pool, &all, Mode::Swap, Options::default()).await;
    for (projection, report) in all.iter().zip(reports) {
        if projection.name() == "inventory" {
            let err = report.unwrap_err();
            assert!(matches!(err, RebuildError::Poison { .. }), "{err}");
        } else {
            let report = report.unwrap();
            assert!(report.swapped, "{}", projection.name());
            assert_eq!(report.events_read as i64, rows_in_log(&pool).await);
        }
    }
    assert_eq!(
        rows(&pool, "inventory_v1").await,
        inventory_before,
        "live inventory untouched"
    );
    let unfinished: Vec<String> = sqlx::query_scalar("SELECT name FROM projection_rebuilds")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        unfinished,
        ["inventory"],
        "the others finished their rebuilds"
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn verification_counts_the_rows_a_build_adds_removes_and_changes(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    // Live drifts from what the log says: a row lost, a row too many, a value changed (and
    // one NULL set where the build has a value).
    for statement in [
        "DELETE FROM order_timeline_v1 WHERE (order_id, position) IN
           (SELECT order_id, position FROM order_timeline_v1 ORDER BY position LIMIT 1)",
        "INSERT INTO inventory_v1 (sku, name, unit_price_minor, currency, on_hand, reserved,
                                   version, updated_at, last_position)
         VALUES ('GHOST', 'Ghost', 1, 'EUR', 1, 0, 1, now(), 1)",
        "UPDATE inventory_v1 SET on_hand = on_hand + 1 WHERE sku = 'MUG'",
        "UPDATE order_details_v1 SET total_minor = NULL
          WHERE order_id = (SELECT order_id FROM order_details_v1 WHERE total_minor IS NOT NULL LIMIT 1)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let all = projections::all();
    let reports = pass_over(&pool, &all, Mode::DryRun, Options::default()).await;
    let mut found = Vec::new();
    for report in reports {
        for d in report.unwrap().diff {
            if (d.added, d.removed, d.changed) != (0, 0, 0) {
                found.push((d.table, d.added, d.removed, d.changed));
            }
        }
    }
    found.sort();
    assert_eq!(
        found,
        [
            ("inventory_v1".to_owned(), 0, 1, 1),
            ("order_details_v1".to_owned(), 0, 0, 1),
            ("order_timeline_v1".to_owned(), 1, 0, 0),
        ]
    );
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_pass_over_all_projections_resumes_each_from_its_own_checkpoint(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let live_before = rows(&pool, "order_details_v1").await;
    let in_log = rows_in_log(&pool).await;
    let small = Options {
        batch_size: 5,
        ..Options::default()
    };
    // order_details alone gets 5 events ahead...
    let err = interrupted_after_one_batch(&pool, small).await;
    assert!(matches!(err, RebuildError::Interrupted { events_read: 5 }));
    // ...then a pass over all four is interrupted after two batches: the first 10 events,
    // of which order_details had 5.
    let all = projections::all();
    let stop = AtomicBool::new(false);
    let interrupted = rebuild::rebuild_many(
        &pool,
        &all,
        Mode::Swap,
        small,
        |done, _| {
            if done >= 10 {
                stop.store(true, Ordering::SeqCst)
            }
        },
        &stop,
    )
    .await;
    for (projection, result) in all.iter().zip(interrupted) {
        let expected = if projection.name() == "order_details" {
            5
        } else {
            10
        };
        match result {
            Err(RebuildError::Interrupted { events_read }) => {
                assert_eq!(events_read, expected, "{}", projection.name())
            }
            other => panic!("{}: {other:?}", projection.name()),
        }
    }
    // The next pass resumes every one where it stopped.
    let reports = pass_over(&pool, &all, Mode::Swap, small).await;
    for report in reports {
        let report = report.unwrap();
        assert!(report.resumed, "{}", report.projection);
        assert!(report.swapped, "{}", report.projection);
        assert_eq!(
            report.events_read as i64,
            in_log - 10,
            "{}",
            report.projection
        );
        assert!(
            report
                .diff
                .iter()
                .all(|d| (d.added, d.removed, d.changed) == (0, 0, 0)),
            "{report:?}"
        );
    }
    assert_eq!(rows(&pool, "order_details_v1").await, live_before);
    assert_live_equals_a_fresh_build(&pool).await;
}

/// This test's database, for a child process.
fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// The `ordo` binary on this test's database.
/// Runs asynchronously, so the test's runtime keeps running (and finishing its own work)
/// while the CLI works on the same database.
async fn ordo(pool: &PgPool, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("ordo runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_cli_replays_streams_rows_and_projections(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let order = crate::helpers::order_id(1).to_string();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[uuid]",
    );
    settings.add_filter(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+(Z|\+00:00)",
        "[recorded]",
    );
    let _guard = settings.bind_to_scope();

    let (code, stream, _) = ordo(&pool, &["replay", "stream", "order", &order]).await;
    assert_eq!(code, 0);
    insta::assert_snapshot!("replay_stream_order", stream);
    let (code, until, _) = ordo(
        &pool,
        &[
            "replay",
            "stream",
            "order",
            &order,
            "--to-version",
            "2",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(until.lines().count(), 2, "one object per step");
    insta::assert_snapshot!("replay_stream_order_json", until);
    let (code, row, _) = ordo(&pool, &["replay", "row", "inventory", "MUG"]).await;
    assert_eq!(code, 0);
    insta::assert_snapshot!("replay_row_inventory", row);
    let (code, sales, _) = ordo(&pool, &["replay", "row", "sales_daily", "2026-03-04/EUR"]).await;
    assert_eq!(code, 0);
    insta::assert_snapshot!("replay_row_sales_daily", sales);
    let (code, projection, _) = ordo(
        &pool,
        &[
            "replay",
            "projection",
            "inventory",
            "--from",
            "1",
            "--to",
            "4",
        ],
    )
    .await;
    assert_eq!(code, 0);
    insta::assert_snapshot!("replay_projection_inventory", projection);
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_cli_replays_a_saga(pool: PgPool) {
    let shop = Shop::new(&pool);
    shop.item("MUG", 1250, 10).await;
    shop.order(1, 1, &[("MUG", 2)], 2).await;
    // What the saga leaves behind: its row, and events written under its step keys.
    let placed: uuid::Uuid =
        sqlx::query_scalar("SELECT event_id FROM events WHERE event_type = 'OrderPlaced'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let order_id = crate::helpers::order_id(1);
    let keyed = |step: &str| {
        let key = format!("saga:{placed}:{step}");
        infra::commands::CommandOptions {
            idempotency: infra::commands::IdempotencyKey::new(&key, [7; 32]).ok(),
            metadata: infra::event_store::EventMetadata {
                correlation_id: Some(order_id.as_uuid()),
                causation_id: Some(placed),
                ..Default::default()
            },
            ..Default::default()
        }
    };
    shop.items
        .execute(
            "MUG",
            InventoryCommand::Reserve {
                order_id,
                quantity: qty(2),
                at: t(2, 2),
            },
            keyed("reserve:MUG"),
        )
        .await
        .unwrap();
    shop.orders
        .execute(
            &order_id.to_string(),
            domain::order::OrderCommand::Cancel {
                reason: domain::order::CancelReason::PaymentDeclined,
                at: t(2, 3),
            },
            keyed("cancel-order"),
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO fulfillment_sagas (order_id, state, stage, next_step, attempts, last_error)
         VALUES ($1, jsonb_build_object('placed_event_id', $2::text, 'deadline', '2026-03-02T12:00:31Z'),
                 'compensating', 'release:MUG', 2, 'the payment gateway is unavailable')",
    )
    .bind(order_id.as_uuid())
    .bind(placed.to_string())
    .execute(&pool)
    .await
    .unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[uuid]",
    );
    let _guard = settings.bind_to_scope();
    let (code, saga, _) = ordo(&pool, &["replay", "saga", &order_id.to_string()]).await;
    assert_eq!(code, 0);
    insta::assert_snapshot!("replay_saga", saga);
    let (code, _, err) = ordo(&pool, &["replay", "saga", &uuid::Uuid::nil().to_string()]).await;
    assert_eq!(code, 3, "{err}");
}

/// `ordo projections rebuild --all` with `args`, killed (SIGKILL: no clean-up) once
/// `started` (a query giving a count) reaches `at_least`.
async fn rebuild_all_killed_once(pool: &PgPool, args: &[&str], started: &str, at_least: i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(["projections", "rebuild", "--all"])
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ordo runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let count: Option<i64> = sqlx::query_scalar(started)
            .fetch_one(pool)
            .await
            .unwrap_or(None);
        if count.is_some_and(|n| n >= at_least) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pass did not get that far"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.kill().await.expect("kill ordo");
}

/// `ordo projections rebuild --all --json` run to the end: every projection swapped in with
/// nothing added, removed or changed against live. Returns the reports.
async fn rebuild_all_to_the_end(pool: &PgPool) -> Vec<serde_json::Value> {
    let (code, out, err) = ordo(pool, &["projections", "rebuild", "--all", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).expect("the reports are JSON");
    assert_eq!(reports.len(), 4);
    for report in &reports {
        assert_eq!(report["swapped"], true, "{report}");
        for diff in report["diff"].as_array().expect("a diff per table") {
            assert_eq!(
                (&diff["added"], &diff["removed"], &diff["changed"]),
                (&0.into(), &0.into(), &0.into()),
                "{report}"
            );
        }
    }
    reports
}

/// The shop's history and 150 restocks after it, enough for a pass one event a batch to be
/// killed well under way, with every read model built live.
async fn a_long_history_built_live(pool: &PgPool) {
    let shop = Shop::new(pool);
    shop.history().await;
    for n in 0..150u32 {
        restock_a_mug(&shop, n).await;
    }
    build_live(pool).await;
}

/// `ordo projections rebuild --all` killed (SIGKILL) while every projection folds, after
/// timeline rows went out: no checkpoint moved, and the next run empties the shadows, starts
/// over and swaps in the live models.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_pass_killed_while_folding_starts_over_and_swaps_in_the_same_models(pool: PgPool) {
    a_long_history_built_live(&pool).await;
    let live_before = rows(&pool, "order_details_v1").await;
    rebuild_all_killed_once(
        &pool,
        &["--batch-size", "1"],
        "SELECT CASE WHEN to_regclass('rebuild_order_details.order_timeline_v1') IS NOT NULL
                THEN (SELECT count(*) FROM rebuild_order_details.order_timeline_v1) END",
        3,
    )
    .await;
    let recorded: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, checkpoint_position FROM projection_rebuilds ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(recorded.len(), 4, "killed in the middle of the pass");
    assert!(
        recorded.iter().all(|(_, position)| *position == 0),
        "nothing folded counts yet: {recorded:?}"
    );

    for report in rebuild_all_to_the_end(&pool).await {
        assert_eq!(report["resumed"], false, "{report}");
        assert_eq!(report["events_folded"], report["events_read"], "{report}");
    }
    assert_eq!(rows(&pool, "order_details_v1").await, live_before);
    assert_live_equals_a_fresh_build(&pool).await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_pass_killed_mid_batch_resumes_and_swaps_in_the_same_models(pool: PgPool) {
    a_long_history_built_live(&pool).await;
    let live_before = rows(&pool, "inventory_v1").await;
    // `ordo projections rebuild --all`, one event per batch and batch by batch (a run
    // folding in memory commits nothing before it writes out), killed (SIGKILL: no
    // clean-up) once the pass is well under way.
    rebuild_all_killed_once(
        &pool,
        &["--batch-size", "1", "--fold-rows", "0"],
        "SELECT min(events_applied)::bigint FROM projection_rebuilds",
        20,
    )
    .await;
    let unfinished: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_rebuilds")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unfinished, 4, "killed in the middle of the pass");
    assert_eq!(
        rows(&pool, "inventory_v1").await,
        live_before,
        "live untouched"
    );

    for report in rebuild_all_to_the_end(&pool).await {
        assert_eq!(report["resumed"], true, "{report}");
    }
    assert_eq!(rows(&pool, "inventory_v1").await, live_before);
    assert_live_equals_a_fresh_build(&pool).await;
}

#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn the_cli_exit_codes_are_as_documented(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let (code, out, _) = ordo(&pool, &["projections", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    let (code, out, _) = ordo(&pool, &["projections", "status", "inventory", "--json"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["projections"][0]["name"], "inventory");
    assert_eq!(status["projections"][0]["lag_events"], 0);

    let (code, out, err) = ordo(
        &pool,
        &["projections", "rebuild", "inventory", "--dry-run", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["swapped"], false);
    assert_eq!(report[0]["diff"][0]["changed"], 0);
    let (code, _, err) = ordo(&pool, &["projections", "rebuild", "--all"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("swapped in"), "{err}");

    let (code, _, _) = ordo(&pool, &["projections", "pause", "inventory"]).await;
    assert_eq!(code, 0);
    let state: String =
        sqlx::query_scalar("SELECT state FROM projection_state WHERE name = 'inventory'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "paused");
    assert_eq!(
        ordo(&pool, &["projections", "resume", "inventory"]).await.0,
        0
    );

    // 2: usage; 3: not found; 4: refused.
    assert_eq!(ordo(&pool, &["projections", "rebuild"]).await.0, 2);
    assert_eq!(ordo(&pool, &["replay", "stream", "order"]).await.0, 2);
    assert_eq!(ordo(&pool, &["projections", "status", "nope"]).await.0, 3);
    assert_eq!(ordo(&pool, &["projections", "rebuild", "nope"]).await.0, 3);
    assert_eq!(
        ordo(
            &pool,
            &["projections", "dead-letters", "inventory", "--skip", "999"]
        )
        .await
        .0,
        3
    );
    assert_eq!(
        ordo(
            &pool,
            &["replay", "stream", "order", &uuid::Uuid::nil().to_string()]
        )
        .await
        .0,
        3
    );
    assert_eq!(ordo(&pool, &["replay", "stream", "widget", "x"]).await.0, 3);
    assert_eq!(
        ordo(&pool, &["replay", "row", "inventory", "NOPE"]).await.0,
        3
    );
    sqlx::query("UPDATE projection_state SET state = 'halted' WHERE name = 'inventory'")
        .execute(&pool)
        .await
        .unwrap();
    let (code, _, err) = ordo(&pool, &["projections", "pause", "inventory"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("dead-letters"), "{err}");
    assert_eq!(
        ordo(
            &pool,
            &[
                "replay",
                "projection",
                "inventory",
                "--from",
                "5",
                "--to",
                "1"
            ]
        )
        .await
        .0,
        4
    );
    // 1: the database is unreachable.
    let output = Command::new(env!("CARGO_BIN_EXE_ordo"))
        .args(["projections", "list"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

/// A table's indexes as (name, definition without name and table, constraint it backs).
async fn indexes_and_constraints(
    pool: &PgPool,
    table: &str,
) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT c.relname::text,
                regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON \\S+ ', '\\1'),
                (SELECT con.contype::text FROM pg_constraint con
                  WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                    AND con.contype IN ('p', 'u', 'x'))
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("read the catalog")
}

/// While its rows go in, a shadow table has only the unique index on its key (the loads and
/// `ON CONFLICT` need it); its primary key on other columns and its secondary indexes are
/// built after the pass, and the table swapped in has every index and constraint the live
/// one had, under the same names.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_shadow_is_filled_with_only_its_key_index_and_swapped_in_with_every_index(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let live = indexes_and_constraints(&pool, "public.customer_orders_v1").await;
    assert_eq!(live.len(), 3, "{live:?}");
    let projection: Arc<dyn Projection> =
        Arc::new(projections::customer_orders::CustomerOrdersProjection);
    let small = Options {
        batch_size: 5,
        ..Options::default()
    };
    let err = interrupted_rebuild_after_one_batch(&pool, projection.clone(), small).await;
    assert!(matches!(err, RebuildError::Interrupted { .. }), "{err}");
    let shadow = "rebuild_customer_orders.customer_orders_v1";
    assert!(!rows(&pool, shadow).await.is_empty());
    assert_eq!(
        indexes_and_constraints(&pool, shadow).await,
        vec![(
            "customer_orders_v1_order_id_key".to_owned(),
            "UNIQUE USING btree (order_id)".to_owned(),
            Some("u".to_owned())
        )],
        "mid-build: the key's index alone"
    );

    let report = rebuild::rebuild(&pool, projection, Mode::Swap, small, |_, _| {}, &never())
        .await
        .unwrap();
    assert!(report.resumed && report.swapped);
    assert_eq!(
        indexes_and_constraints(&pool, "public.customer_orders_v1").await,
        live
    );
    assert_live_equals_a_fresh_build(&pool).await;
    // The primary key holds on the swapped-in table.
    let duplicate =
        sqlx::query("INSERT INTO customer_orders_v1 SELECT * FROM customer_orders_v1 LIMIT 1")
            .execute(&pool)
            .await;
    assert!(duplicate.is_err());
}

/// `USING INDEX` cannot bring back an exclusion constraint or a deferrable one: a table with
/// either is refused before anything is built, and live is left as it was.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_table_with_a_constraint_a_rebuild_cannot_reproduce_is_refused(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let projection: Arc<dyn Projection> =
        Arc::new(projections::customer_orders::CustomerOrdersProjection);
    for constraint in [
        "ALTER TABLE customer_orders_v1 ADD CONSTRAINT one_per_position UNIQUE (placed_position) DEFERRABLE",
        "ALTER TABLE customer_orders_v1 ADD CONSTRAINT one_per_position EXCLUDE USING btree (placed_position WITH =)",
    ] {
        sqlx::query(constraint).execute(&pool).await.unwrap();
        let before = rows(&pool, "customer_orders_v1").await;
        let err = rebuild::rebuild(
            &pool,
            projection.clone(),
            Mode::Swap,
            Options::default(),
            |_, _| {},
            &never(),
        )
        .await
        .expect_err("refused");
        let message = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(message.contains("one_per_position"), "{message}");
        assert!(message.contains("not supported"), "{message}");
        let events_applied: Option<i64> = sqlx::query_scalar(
            "SELECT events_applied FROM projection_rebuilds WHERE name = 'customer_orders'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        assert_eq!(events_applied.unwrap_or(0), 0, "nothing built");
        assert_eq!(rows(&pool, "customer_orders_v1").await, before);
        sqlx::query("ALTER TABLE customer_orders_v1 DROP CONSTRAINT one_per_position")
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// One rebuild of a projection at a time: while another session (another `ordo`) holds a
/// projection's rebuild, a second one is refused before it touches anything, and goes
/// ahead once the first is done; a dry run builds elsewhere, so it is not held up. A
/// finished run leaves its lock free.
#[sqlx::test(migrator = "infra::db::MIGRATOR")]
async fn a_second_rebuild_of_the_same_projection_is_refused_while_one_runs(pool: PgPool) {
    Shop::new(&pool).history().await;
    build_live(&pool).await;
    let projection: Arc<dyn Projection> =
        Arc::new(projections::customer_orders::CustomerOrdersProjection);
    let run = |mode: Mode| {
        let pool = pool.clone();
        let projection = projection.clone();
        async move {
            rebuild::rebuild(
                &pool,
                projection,
                mode,
                Options::default(),
                |_, _| {},
                &never(),
            )
            .await
        }
    };
    let lock =
        "SELECT pg_advisory_lock(hashtextextended('rebuild:' || 'rebuild_customer_orders', 0))";
    let mut other = pool.acquire().await.unwrap();
    sqlx::query(lock).execute(&mut *other).await.unwrap();

    let err = run(Mode::Swap).await.expect_err("refused");
    assert!(
        matches!(err, RebuildError::AlreadyRunning(ref name) if name == "customer_orders"),
        "{err}"
    );
    assert!(err.to_string().contains("already running"), "{err}");
    let shadow: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'rebuild_customer_orders')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!shadow, "nothing built");
    let dry = run(Mode::DryRun)
        .await
        .expect("a dry run builds in its own schema");
    assert!(!dry.swapped);

    sqlx::query(
        "SELECT pg_advisory_unlock(hashtextextended('rebuild:' || 'rebuild_customer_orders', 0))",
    )
    .execute(&mut *other)
    .await
    .unwrap();
    let report = run(Mode::Swap).await.expect("the first one is done");
    assert!(report.swapped);
    let free: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('rebuild:' || 'rebuild_customer_orders', 0))",
    )
    .fetch_one(&mut *other)
    .await
    .unwrap();
    assert!(free, "the finished run gave its lock back");
}
