//! The same-run baselines: pgbench against the same PostgreSQL, on an event-shaped table
//! (a copy of `events` with its keys, defaults and identity): single-row inserts at the
//! command cases' concurrencies, and selects by a unique key for the read case.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;

use crate::report::Row;

pub const TABLE: &str = "bench_baseline_events";

/// About the size of an `OrderPlaced` payload and metadata as the command API writes them.
const INSERT_SCRIPT: &str = r#"INSERT INTO bench_baseline_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, correlation_id, causation_id) VALUES ('order', gen_random_uuid()::text, 1, 'OrderPlaced', '1.0', '{"Placed": {"at": "2026-11-25T12:00:00.000000Z", "lines": [{"sku": "BENCH-17", "quantity": 1}], "currency": "EUR", "card_token": "tok_visa", "customer_id": "5b0c6a0e-7e59-4f61-9d1e-0cbb1a64a3b2", "unit_prices": {"BENCH-17": {"amount_minor": 1000, "currency": "EUR"}}}}', '{"request_id": "00000000-0000-0000-0000-000000000000"}', gen_random_uuid(), gen_random_uuid());
"#;

const SELECT_SCRIPT: &str =
    "\\set p random(1, :maxpos)\nSELECT * FROM bench_baseline_events WHERE position = :p;\n";

pub async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .execute(pool)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {TABLE} (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING INDEXES)"
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// One pgbench run: transactions per second and every transaction's latency.
struct PgbenchRun {
    tps: f64,
    latencies: Vec<Duration>,
}

fn pgbench(
    database_url: &str,
    script: &str,
    clients: u32,
    seconds: u64,
    defines: &[(&str, String)],
    scratch: &Path,
) -> anyhow::Result<PgbenchRun> {
    let script_path = scratch.join("script.sql");
    std::fs::write(&script_path, script)?;
    // Per-transaction logs land in the working directory as <prefix>.<pid>[.<thread>].
    let log_dir = scratch.join("logs");
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir)?;
    let threads = clients.min(2);
    let mut cmd = Command::new("pgbench");
    cmd.current_dir(&log_dir)
        .args(["-n", "-M", "prepared", "-l", "--log-prefix", "tx"])
        .arg(format!("-c{clients}"))
        .arg(format!("-j{threads}"))
        .arg(format!("-T{seconds}"))
        .arg("-f")
        .arg(&script_path);
    for (name, value) in defines {
        cmd.arg("-D").arg(format!("{name}={value}"));
    }
    cmd.arg(database_url);
    let output = cmd
        .output()
        .context("running pgbench (install postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            stdout
        );
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?;
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&log_dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        // client_id transaction_no time_us script_no epoch_s epoch_us
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                latencies.push(Duration::from_micros(us));
            }
        }
    }
    Ok(PgbenchRun { tps, latencies })
}

/// Runs the baselines: inserts at each concurrency, then selects by key at `read_clients`.
pub async fn run(
    pool: &PgPool,
    database_url: &str,
    concurrencies: &[u32],
    read_clients: u32,
    runs: usize,
    seconds: u64,
    scratch: &Path,
) -> anyhow::Result<Vec<Row>> {
    prepare(pool).await?;
    let mut rows = Vec::new();
    for &c in concurrencies {
        let mut rates = Vec::new();
        let mut latencies = Vec::new();
        for _ in 0..runs {
            let run = pgbench(database_url, INSERT_SCRIPT, c, seconds, &[], scratch)?;
            eprintln!("  pgbench insert c={c}: {:.0} tps", run.tps);
            rates.push(run.tps);
            latencies.extend(run.latencies);
        }
        rows.push(
            Row::measured(
                "baseline: pgbench single-row insert, event-shaped table",
                "ops/s",
                &rates,
                &mut latencies,
            )
            .concurrency(c)
            .key(format!("pgbench.insert.c{c}")),
        );
    }
    let max_position: i64 =
        sqlx::query_scalar(&format!("SELECT coalesce(max(position), 0) FROM {TABLE}"))
            .fetch_one(pool)
            .await?;
    if max_position == 0 {
        bail!("the insert baseline left no rows to select");
    }
    sqlx::query(&format!("VACUUM ANALYZE {TABLE}"))
        .execute(pool)
        .await?;
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..runs {
        let run = pgbench(
            database_url,
            SELECT_SCRIPT,
            read_clients,
            seconds,
            &[("maxpos", max_position.to_string())],
            scratch,
        )?;
        eprintln!("  pgbench select c={read_clients}: {:.0} tps", run.tps);
        rates.push(run.tps);
        latencies.extend(run.latencies);
    }
    rows.push(
        Row::measured(
            "baseline: pgbench select by key, event-shaped table",
            "ops/s",
            &rates,
            &mut latencies,
        )
        .concurrency(read_clients)
        .key(format!("pgbench.select.c{read_clients}"))
        .note(format!("{max_position} rows")),
    );
    Ok(rows)
}
