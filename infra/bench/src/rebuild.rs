//! Case 5: rebuilding every projection from a seeded history, with `ordo projections
//! rebuild --all` (the operators' command, shadow tables, verification and swap included),
//! against a baseline of set-based `INSERT ... SELECT` statements that compute the same read
//! models straight from the events table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use sqlx::PgPool;

use crate::report::{Row, Target};

/// Seeds `orders` confirmed orders (six events each, plus 100 items) with the seed script.
pub fn seed(database_url: &str, seed_sql: &Path, orders: u64) -> anyhow::Result<()> {
    let status = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("orders={orders}"))
        .arg("-f")
        .arg(seed_sql)
        .arg(database_url)
        .status()
        .context("running psql")?;
    if !status.success() {
        bail!("seeding failed: {status}");
    }
    Ok(())
}

/// Status of an order from the type of its last event.
const ORDER_STATUS: &str = "CASE (array_agg(event_type ORDER BY sequence DESC))[1]
         WHEN 'OrderPlaced' THEN 'pending' WHEN 'OrderStockReserved' THEN 'reserved'
         WHEN 'OrderConfirmed' THEN 'confirmed' WHEN 'OrderShipped' THEN 'shipped'
         ELSE 'cancelled' END";

/// The baseline's statements per read model: (projection, statements).
fn baseline_statements() -> Vec<(&'static str, Vec<String>)> {
    vec![
        (
            "inventory",
            vec![format!(
                "INSERT INTO bl_inventory (sku, name, unit_price_minor, currency, on_hand, reserved,
                                           version, updated_at, last_position)
                 SELECT aggregate_id,
                        max(payload #>> '{{Registered,name}}'),
                        max((payload #>> '{{Registered,unit_price,amount_minor}}')::bigint),
                        max(payload #>> '{{Registered,unit_price,currency}}'),
                        sum(coalesce((payload #>> '{{Registered,initial_stock}}')::bigint, 0)
                          + coalesce((payload #>> '{{Restocked,quantity}}')::bigint, 0)
                          - coalesce((payload #>> '{{Committed,quantity}}')::bigint, 0)),
                        sum(coalesce((payload #>> '{{Reserved,quantity}}')::bigint, 0)
                          - coalesce((payload #>> '{{Released,quantity}}')::bigint, 0)
                          - coalesce((payload #>> '{{Committed,quantity}}')::bigint, 0)),
                        max(sequence), max(recorded_at), max(position)
                   FROM events WHERE aggregate_type = 'inventory_item'
                  GROUP BY aggregate_id"
            )],
        ),
        (
            "order_details",
            vec![
                format!(
                    "INSERT INTO bl_order_details (order_id, customer_id, status, currency, lines,
                         total_minor, version, placed_at, updated_at, last_position)
                     SELECT aggregate_id::uuid,
                            max(payload #>> '{{Placed,customer_id}}')::uuid,
                            {ORDER_STATUS},
                            max(payload #>> '{{Placed,currency}}'),
                            coalesce((array_agg(payload #> '{{StockReserved,lines}}')
                                       FILTER (WHERE event_type = 'OrderStockReserved'))[1],
                                     (array_agg(payload #> '{{Placed,lines}}')
                                       FILTER (WHERE event_type = 'OrderPlaced'))[1]),
                            max((payload #>> '{{StockReserved,total,amount_minor}}')::bigint),
                            max(sequence),
                            min((payload #>> '{{Placed,at}}')::timestamptz),
                            max(recorded_at), max(position)
                       FROM events WHERE aggregate_type = 'order'
                      GROUP BY aggregate_id"
                ),
                "INSERT INTO bl_order_payments (order_id, payment_status, captured_minor,
                                                refunded_minor, version, updated_at, last_position)
                 SELECT aggregate_id::uuid,
                        CASE (array_agg(event_type ORDER BY sequence DESC))[1]
                             WHEN 'PaymentAuthorized' THEN 'authorized'
                             WHEN 'PaymentCaptured' THEN 'captured'
                             WHEN 'PaymentDeclined' THEN 'declined'
                             WHEN 'PaymentRefunded' THEN 'refunded'
                             ELSE 'voided' END,
                        sum(coalesce((payload #>> '{Captured,amount,amount_minor}')::bigint, 0)),
                        sum(coalesce((payload #>> '{Refunded,amount,amount_minor}')::bigint, 0)),
                        max(sequence), max(recorded_at), max(position)
                   FROM events WHERE aggregate_type = 'payment'
                  GROUP BY aggregate_id"
                    .to_owned(),
                "INSERT INTO bl_order_timeline (order_id, position, event_id, at, source, event_type,
                                                description)
                 SELECT CASE WHEN aggregate_type = 'inventory_item'
                             THEN payload #>> '{Reserved,order_id}' ELSE aggregate_id END::uuid,
                        position, event_id,
                        coalesce((jsonb_path_query_first(payload, '$.*.at') #>> '{}')::timestamptz,
                                 recorded_at),
                        aggregate_type, event_type, event_type || ' ' || aggregate_id
                   FROM events
                  WHERE aggregate_type IN ('order', 'payment')
                     OR (aggregate_type = 'inventory_item' AND event_type = 'StockReserved')"
                    .to_owned(),
            ],
        ),
        (
            "customer_orders",
            vec![format!(
                "INSERT INTO bl_customer_orders (customer_id, order_id, placed_at, placed_position,
                     status, currency, total_minor, line_count, version, last_position)
                 SELECT max(payload #>> '{{Placed,customer_id}}')::uuid, aggregate_id::uuid,
                        min((payload #>> '{{Placed,at}}')::timestamptz), min(position),
                        {ORDER_STATUS}, max(payload #>> '{{Placed,currency}}'),
                        max((payload #>> '{{StockReserved,total,amount_minor}}')::bigint),
                        max(jsonb_array_length(payload #> '{{Placed,lines}}')),
                        max(sequence), max(position)
                   FROM events WHERE aggregate_type = 'order'
                  GROUP BY aggregate_id"
            )],
        ),
        (
            "sales_daily",
            vec![
                "INSERT INTO bl_sales_daily_orders (order_id, currency, total_minor, confirmed,
                                                    cancelled)
                 SELECT aggregate_id::uuid, max(payload #>> '{Placed,currency}'),
                        max((payload #>> '{StockReserved,total,amount_minor}')::bigint),
                        bool_or(event_type = 'OrderConfirmed'),
                        bool_or(event_type = 'OrderCancelled')
                   FROM events WHERE aggregate_type = 'order'
                  GROUP BY aggregate_id"
                    .to_owned(),
                "INSERT INTO bl_sales_daily (day, currency, orders_confirmed, revenue_minor,
                     cancelled_customer_request, cancelled_out_of_stock,
                     cancelled_payment_declined, cancelled_payment_timeout, last_position)
                 SELECT ((jsonb_path_query_first(e.payload, '$.*.at') #>> '{}')::timestamptz
                           AT TIME ZONE 'UTC')::date AS day,
                        o.currency,
                        count(*) FILTER (WHERE e.event_type = 'OrderConfirmed'),
                        coalesce(sum(o.total_minor) FILTER (WHERE e.event_type = 'OrderConfirmed'), 0),
                        count(*) FILTER (WHERE e.payload #>> '{Cancelled,reason}' = 'customer_request'),
                        count(*) FILTER (WHERE e.payload #>> '{Cancelled,reason}' = 'out_of_stock'),
                        count(*) FILTER (WHERE e.payload #>> '{Cancelled,reason}' = 'payment_declined'),
                        count(*) FILTER (WHERE e.payload #>> '{Cancelled,reason}' = 'payment_timeout'),
                        max(e.position)
                   FROM events e JOIN bl_sales_daily_orders o ON o.order_id = e.aggregate_id::uuid
                  WHERE e.aggregate_type = 'order'
                    AND e.event_type IN ('OrderConfirmed', 'OrderCancelled')
                  GROUP BY 1, 2"
                    .to_owned(),
            ],
        ),
    ]
}

const BASELINE_TABLES: &[(&str, &str)] = &[
    ("bl_inventory", "inventory_v1"),
    ("bl_order_details", "order_details_v1"),
    ("bl_order_payments", "order_payments_v1"),
    ("bl_order_timeline", "order_timeline_v1"),
    ("bl_customer_orders", "customer_orders_v1"),
    ("bl_sales_daily", "sales_daily_v1"),
    ("bl_sales_daily_orders", "sales_daily_orders_v1"),
];

/// One baseline run: seconds per projection.
async fn baseline_once(
    pool: &PgPool,
    concurrently: bool,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    for (table, like) in BASELINE_TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(pool)
            .await?;
        sqlx::query(&format!("CREATE TABLE {table} (LIKE {like} INCLUDING ALL)"))
            .execute(pool)
            .await?;
    }
    let one = |projection: &'static str, statements: Vec<String>| async move {
        let started = Instant::now();
        for statement in statements {
            sqlx::query(&statement)
                .execute(pool)
                .await
                .with_context(|| format!("baseline for {projection}"))?;
        }
        Ok::<_, anyhow::Error>((projection, started.elapsed().as_secs_f64()))
    };
    let mut times = Vec::new();
    if concurrently {
        // Each read model on a connection of its own, all at once; the time is the
        // slowest's.
        let started = Instant::now();
        let all = baseline_statements().into_iter().map(|(p, s)| one(p, s));
        for outcome in futures::future::join_all(all).await {
            outcome?;
        }
        times.push(("all", started.elapsed().as_secs_f64()));
    } else {
        for (projection, statements) in baseline_statements() {
            times.push(one(projection, statements).await?);
        }
    }
    for (table, _) in BASELINE_TABLES {
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(pool)
            .await?;
    }
    Ok(times)
}

/// What `ordo projections rebuild --json` reports per projection (the fields used here).
#[derive(Debug, Deserialize)]
struct RebuildReport {
    events_read: u64,
    build_seconds: f64,
    verify_seconds: f64,
}

fn rebuild_once(ordo: &Path, database_url: &str) -> anyhow::Result<(Vec<RebuildReport>, f64)> {
    let started = Instant::now();
    let output = Command::new(ordo)
        .args(["projections", "rebuild", "--all", "--json"])
        .env("DATABASE_URL", database_url)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", ordo.display()))?;
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("ordo projections rebuild --all failed: {}", output.status);
    }
    let reports: Vec<RebuildReport> =
        serde_json::from_slice(&output.stdout).context("reading ordo's --json output")?;
    Ok((reports, wall))
}

pub async fn run(
    pool: &PgPool,
    database_url: &str,
    ordo: &Path,
    runs: usize,
) -> anyhow::Result<Vec<Row>> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    let events = events as f64;

    let mut baseline_one_by_one = Vec::new();
    let mut baseline_at_once = Vec::new();
    let mut baseline_per: Vec<(&str, Vec<f64>)> = Vec::new();
    for _ in 0..runs {
        let times = baseline_once(pool, false).await?;
        let total: f64 = times.iter().map(|t| t.1).sum();
        eprintln!(
            "  baseline INSERT ... SELECT of all read models, one after the other: {total:.1} s"
        );
        baseline_one_by_one.push(events / total);
        for (projection, seconds) in times {
            match baseline_per.iter_mut().find(|(p, _)| *p == projection) {
                Some((_, rates)) => rates.push(events / seconds),
                None => baseline_per.push((projection, vec![events / seconds])),
            }
        }
        let at_once: f64 = baseline_once(pool, true).await?.iter().map(|t| t.1).sum();
        eprintln!("  baseline INSERT ... SELECT of all read models, all at once: {at_once:.1} s");
        baseline_at_once.push(events / at_once);
    }

    let mut ours_all = Vec::new();
    let mut ours_build = Vec::new();
    let mut ours_verify = Vec::new();
    for _ in 0..runs {
        let (reports, wall) = rebuild_once(ordo, database_url)?;
        eprintln!("  ordo projections rebuild --all: {wall:.1} s");
        ours_all.push(events / wall);
        // One pass builds all four: the pass's seconds are every report's build seconds.
        let build = reports.iter().map(|r| r.build_seconds).fold(0.0, f64::max);
        let read = reports.iter().map(|r| r.events_read).max().unwrap_or(0);
        ours_build.push(read as f64 / build.max(1e-9));
        // Verifications run concurrently: the slowest bounds them.
        ours_verify.push(reports.iter().map(|r| r.verify_seconds).fold(0.0, f64::max));
    }

    let label = format!("{events:.0} events");
    let mut rows = vec![
        Row::measured(
            "baseline: INSERT ... SELECT of all read models, one after the other",
            "events/s",
            &baseline_one_by_one,
            &mut Vec::<Duration>::new(),
        )
        .key("sql.rebuild.all")
        .note(label.clone()),
        Row::measured(
            "baseline: INSERT ... SELECT of all read models, each on its own connection, all at once",
            "events/s",
            &baseline_at_once,
            &mut Vec::<Duration>::new(),
        )
        .key("sql.rebuild.all_at_once")
        .note(label.clone()),
        Row::measured(
            "5. rebuild all projections (ordo, wall clock)",
            "events/s",
            &ours_all,
            &mut Vec::<Duration>::new(),
        )
        .baseline("sql.rebuild.all_at_once")
        .target(Target {
            min_value: Some(150_000.0),
            ..Target::default()
        })
        .note(format!(
            "{label}, log events / seconds for all four, verification and swap included"
        )),
        Row::measured(
            "5. rebuild all projections, build phase (one pass over the log feeding all four)",
            "events/s",
            &ours_build,
            &mut Vec::<Duration>::new(),
        )
        .baseline("sql.rebuild.all_at_once")
        .note("log events read / build seconds"),
        Row::measured(
            "5. rebuild all projections, verification (every row compared with live, four at once)",
            "s",
            &ours_verify,
            &mut Vec::<Duration>::new(),
        ),
    ];
    for (projection, rates) in &baseline_per {
        rows.push(
            Row::measured(
                &format!("baseline: INSERT ... SELECT of {projection} alone"),
                "events/s",
                rates,
                &mut Vec::<Duration>::new(),
            )
            .key(format!("sql.rebuild.{projection}")),
        );
    }
    Ok(rows)
}
