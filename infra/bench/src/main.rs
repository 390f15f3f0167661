//! `ordo-bench`: the measuring half of `scripts/bench`. The script builds and starts the
//! system; this binary runs one phase at a time, each writing its rows as JSON, and `report`
//! joins them into one table (Markdown on stdout, JSON to a file).
//!
//! Phases: `baseline` (pgbench on the same PostgreSQL, before the services start), `load`
//! (cases 1-4, 6 and 7 through the HTTP APIs of the running system), `rebuild` (case 5 on a
//! seeded database), `report`.

mod baseline;
mod load;
mod rebuild;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, Parser)]
#[command(name = "ordo-bench", about = "Benchmark phases for scripts/bench")]
struct Cli {
    #[command(subcommand)]
    command: Phase,
}

#[derive(Debug, Subcommand)]
enum Phase {
    /// pgbench baselines: single-row inserts into an event-shaped table, selects by key.
    Baseline {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<u32>,
        #[arg(long, default_value_t = 32)]
        read_concurrency: u32,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Scratch directory for pgbench's scripts and logs.
        #[arg(long)]
        scratch: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Cases 1-4, 6 and 7 against the running system.
    Load {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        write_url: String,
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        read_url: String,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<u32>,
        #[arg(long, default_value_t = 32)]
        hot_concurrency: u32,
        #[arg(long, default_value_t = 32)]
        read_concurrency: u32,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Length of each closed-loop run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Orders per second offered in the saga case.
        #[arg(long, default_value_t = 200.0)]
        saga_rate: f64,
        #[arg(long, default_value_t = 5.0)]
        saga_seconds: f64,
        /// Orders per closed-loop run at most; each starts a saga that must finish before
        /// the next run.
        #[arg(long)]
        max_orders: Option<u64>,
        /// Services whose peak RSS is reported, as NAME=PID.
        #[arg(long = "service", value_parser = parse_service)]
        services: Vec<(String, u32)>,
        /// Which cases to run (for profiling one of them): place (1), hot (2), saga (3 and
        /// 4), reads (6). Peak RSS (7) is always reported.
        #[arg(long, value_delimiter = ',', default_value = "place,hot,saga,reads", value_parser = ["place", "hot", "saga", "reads"])]
        cases: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Case 1b: places orders through the command API running alone.
    Commands {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        write_url: String,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<u32>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Case 5: seeds a database and rebuilds every projection with `ordo`.
    Rebuild {
        /// A database of its own: it is migrated and seeded here.
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        ordo: PathBuf,
        #[arg(long)]
        seed_sql: PathBuf,
        /// Confirmed orders to seed; each leaves six events.
        #[arg(long, default_value_t = 166_667)]
        orders: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Joins the phases' rows, prints the table and writes it as JSON.
    Report {
        /// Row files written by the other phases.
        #[arg(required = true)]
        rows: Vec<PathBuf>,
        #[arg(long)]
        json: PathBuf,
        #[arg(long, default_value = "default")]
        mode: String,
        #[arg(long, default_value = "")]
        postgres: String,
        #[arg(long, default_value = "")]
        commit: String,
    },
}

fn parse_service(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((
        name.to_owned(),
        pid.parse().map_err(|_| format!("{pid:?} is not a pid"))?,
    ))
}

async fn pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| "connecting to PostgreSQL")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Phase::Baseline {
            database_url,
            concurrency,
            read_concurrency,
            runs,
            seconds,
            scratch,
            out,
        } => {
            let pool = pool(&database_url).await?;
            infra::db::migrate(&pool).await?;
            std::fs::create_dir_all(&scratch)?;
            let scratch = scratch.canonicalize()?;
            let rows = baseline::run(
                &pool,
                &database_url,
                &concurrency,
                read_concurrency,
                runs,
                seconds,
                &scratch,
            )
            .await?;
            report::write_rows(&out, &rows)
        }
        Phase::Load {
            database_url,
            write_url,
            read_url,
            concurrency,
            hot_concurrency,
            read_concurrency,
            runs,
            seconds,
            saga_rate,
            saga_seconds,
            max_orders,
            services,
            cases,
            out,
        } => {
            let settings = load::Settings {
                runs,
                seconds,
                concurrencies: concurrency,
                hot_concurrency,
                read_concurrency,
                saga_rate,
                saga_seconds,
                max_orders,
                settle_timeout: Duration::from_secs(120),
            };
            let pool = pool(&database_url).await?;
            let load = load::Load::new(&write_url, &read_url, pool).await?;
            load.settle(settings.settle_timeout).await?;
            let mut rows = Vec::new();
            let mut order_ids = Vec::new();
            let wanted = |case: &str| cases.iter().any(|c| c == case);
            if wanted("place") || wanted("reads") {
                eprintln!("case 1: place orders");
                rows.extend(load.place_orders(&settings, &mut order_ids).await?);
            }
            if wanted("hot") {
                eprintln!("case 2: hot SKU");
                rows.push(load.hot_sku(&settings).await?);
            }
            if wanted("saga") {
                eprintln!("cases 3 and 4: full saga, projection lag");
                rows.extend(load.saga(&settings).await?);
            }
            if wanted("reads") {
                eprintln!("case 6: reads by key");
                rows.push(
                    load.reads(&settings, &order_ids, load::ReadsFrom::Cache)
                        .await?,
                );
                rows.push(
                    load.reads(&settings, &order_ids, load::ReadsFrom::Database)
                        .await?,
                );
            }
            rows.extend(load::peak_rss(&services)?);
            report::write_rows(&out, &rows)
        }
        Phase::Commands {
            database_url,
            write_url,
            concurrency,
            runs,
            seconds,
            out,
        } => {
            let settings = load::Settings {
                runs,
                seconds,
                concurrencies: concurrency,
                hot_concurrency: 0,
                read_concurrency: 0,
                saga_rate: 0.0,
                saga_seconds: 0.0,
                max_orders: None,
                settle_timeout: Duration::from_secs(120),
            };
            let pool = pool(&database_url).await?;
            // No query API runs in this phase.
            let load = load::Load::new(&write_url, &write_url, pool).await?;
            eprintln!("case 1b: place orders, command API alone");
            let rows = load.place_orders_alone(&settings).await?;
            report::write_rows(&out, &rows)
        }
        Phase::Rebuild {
            database_url,
            ordo,
            seed_sql,
            orders,
            runs,
            out,
        } => {
            let pool = pool(&database_url).await?;
            infra::db::migrate(&pool).await?;
            let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(&pool)
                .await?;
            if seeded == 0 {
                eprintln!("seeding {orders} orders ({} events)", orders * 6 + 100);
                rebuild::seed(&database_url, &seed_sql, orders)?;
            }
            let rows = rebuild::run(&pool, &database_url, &ordo, runs).await?;
            report::write_rows(&out, &rows)
        }
        Phase::Report {
            rows,
            json,
            mode,
            postgres,
            commit,
        } => {
            let mut all = Vec::new();
            for path in rows {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let part: Vec<report::Row> = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                all.extend(part);
            }
            let all = report::resolve(all);
            let report = report::Report {
                date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
                machine: report::Machine::read(postgres, commit),
                mode,
                rows: all,
            };
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
            println!(
                "{} · {} cores · {} GiB · PostgreSQL {} · {} · {} mode · commit {}\n",
                report.machine.cpu,
                report.machine.cores,
                report.machine.memory_gib,
                report.machine.postgres,
                report.date,
                report.mode,
                report.machine.commit
            );
            print!("{}", report::table(&report.rows));
            Ok(())
        }
    }
}
