//! `ordo`, the operator CLI: projections (status, rebuild, pause, dead letters) and replay.
//!
//! Data goes to stdout (a table, or JSON with `--json`); progress and logs go to stderr.
//!
//! Exit codes:
//! - 0: done;
//! - 1: failed (the database is unreachable, an unexpected error);
//! - 2: bad usage (unknown command, missing or invalid argument);
//! - 3: not found (no such projection, stream, row, saga or dead letter);
//! - 4: refused (a rebuild hit an event its handler cannot apply; a retry or skip that does
//!   not apply; pausing a halted projection);
//! - 130: interrupted by Ctrl-C (a rebuild resumes when run again).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use infra::projection::Projection;
use infra::projection::status::{self, ProjectionStatus};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::admin::{self, AdminError};
use crate::rebuild::{self, Mode, RebuildError};
use crate::replay::{self, ReplayError, Until};

#[derive(Debug, Parser)]
#[command(
    name = "ordo",
    version,
    about = "Operate Ordo: projections and replay for debugging"
)]
pub struct Cli {
    /// PostgreSQL to work on.
    #[arg(long, env = "DATABASE_URL", default_value = infra::config::DEFAULT_DATABASE_URL, hide_env_values = true, global = true)]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read models: status, rebuild, pause and resume, parked events.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Replay history to see how state came about.
    #[command(subcommand)]
    Replay(ReplayCommand),
}

#[derive(Debug, Args)]
struct Json {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Every projection: version, checkpoint, head, lag, state, last error, parked events.
    List(Json),
    /// One projection (or every one), as `list`.
    Status {
        name: Option<String>,
        #[command(flatten)]
        json: Json,
    },
    /// Rebuilds into shadow tables while the live model keeps serving, then swaps atomically.
    /// Interrupted, it resumes when run again.
    Rebuild {
        /// The projection to rebuild.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Rebuild every read model, in one pass over the log.
        #[arg(long)]
        all: bool,
        /// Build into scratch tables and print what would change; swap nothing.
        #[arg(long)]
        dry_run: bool,
        /// Events per transaction.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
        /// Keep the replaced tables in a `retired_…` schema.
        #[arg(long)]
        keep_old: bool,
        /// Rows a build from empty tables may hold in memory per projection: it folds the
        /// log in memory and writes each row once, then, beyond this, writes them out and
        /// goes on batch by batch. 0 builds batch by batch from the start.
        #[arg(long, default_value_t = rebuild::Options::default().fold_rows)]
        fold_rows: usize,
        #[command(flatten)]
        json: Json,
    },
    /// Stops a projection applying events (until `resume`).
    Pause { name: String },
    /// Lets a paused projection apply events again.
    Resume { name: String },
    /// Events a projection could not apply; `--retry ID` or `--skip ID` resolves one.
    DeadLetters {
        name: String,
        /// Try the event again (after a fix): the projection runs again.
        #[arg(long, conflicts_with = "skip")]
        retry: Option<i64>,
        /// Go past the event: the projection runs again without it.
        #[arg(long)]
        skip: Option<i64>,
        /// Include resolved ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Debug, Subcommand)]
enum ReplayCommand {
    /// Each event of one aggregate with its metadata and the state after it.
    Stream {
        /// `order`, `inventory_item` or `payment`.
        aggregate_type: String,
        id: String,
        /// Stop after this version.
        #[arg(long, conflicts_with = "at")]
        to_version: Option<i64>,
        /// Stop at this time (RFC 3339).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        #[command(flatten)]
        json: Json,
    },
    /// Runs a projection over a range of positions into scratch tables (nothing is kept) and
    /// compares the rows with live.
    Projection {
        name: String,
        #[arg(long)]
        from: i64,
        #[arg(long)]
        to: i64,
        #[command(flatten)]
        json: Json,
    },
    /// The events, in order, that produced one read-model row.
    Row {
        projection: String,
        /// The row's key: a SKU, an order id, or DAY/CURRENCY for sales_daily.
        key: String,
        #[command(flatten)]
        json: Json,
    },
    /// What an order's fulfilment saga did at each step, with its timers.
    Saga {
        order_id: uuid::Uuid,
        #[command(flatten)]
        json: Json,
    },
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
enum Failure {
    NotFound(String),
    Refused(String),
    Interrupted(String),
    Failed(anyhow::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Failure::Failed(err.into())
    }
}

impl From<AdminError> for Failure {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::UnknownProjection(_) | AdminError::UnknownDeadLetter { .. } => {
                Failure::NotFound(err.to_string())
            }
            AdminError::Refused(reason) => Failure::Refused(reason),
            AdminError::Database(err) => Failure::Failed(err.into()),
        }
    }
}

impl From<RebuildError> for Failure {
    fn from(err: RebuildError) -> Self {
        match err {
            RebuildError::NotRebuildable(_) => Failure::NotFound(err.to_string()),
            RebuildError::Interrupted { .. } => Failure::Interrupted(err.to_string()),
            RebuildError::Poison { .. } | RebuildError::AlreadyRunning(_) => {
                Failure::Refused(infra::telemetry::err_chain(&err))
            }
            other => Failure::Failed(other.into()),
        }
    }
}

impl From<ReplayError> for Failure {
    fn from(err: ReplayError) -> Self {
        match err {
            ReplayError::UnknownAggregateType(_) | ReplayError::NotFound(_) => {
                Failure::NotFound(err.to_string())
            }
            ReplayError::Apply(_) | ReplayError::Decode { .. } => {
                Failure::Refused(infra::telemetry::err_chain(&err))
            }
            other => Failure::Failed(other.into()),
        }
    }
}

/// Runs the CLI; the exit code follows the table above.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound(message)) => {
            eprintln!("not found: {message}");
            ExitCode::from(3)
        }
        Err(Failure::Refused(message)) => {
            eprintln!("refused: {message}");
            ExitCode::from(4)
        }
        Err(Failure::Interrupted(message)) => {
            eprintln!("{message}");
            ExitCode::from(130)
        }
        Err(Failure::Failed(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn connect(url: &str) -> Result<PgPool, Failure> {
    PgPoolOptions::new()
        // A rebuild of all four: a transaction per projection and one reading ahead during
        // the pass; then, per projection, its index build and a comparison per table at
        // once (twelve in all), so none waits for another's long statement.
        .max_connections(16)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|err| {
            Failure::Failed(
                anyhow::Error::new(err).context("failed to connect to PostgreSQL (DATABASE_URL)"),
            )
        })
}

fn projection(name: &str) -> Result<Arc<dyn Projection>, Failure> {
    crate::all()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = crate::all().iter().map(|p| p.name()).collect();
            Failure::NotFound(format!(
                "no read model named {name}; there are {}",
                names.join(", ")
            ))
        })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let pool = connect(&cli.database_url).await?;
    match cli.command {
        Command::Projections(command) => projections(&pool, command).await,
        Command::Replay(command) => replay_command(&pool, command).await,
    }
}

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|err| Failure::Failed(err.into()))?;
    println!("{text}");
    Ok(())
}

/// Colours for terminals that want them (`NO_COLOR` turns them off).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Prints rows as a table with aligned columns.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn status_rows(statuses: &[ProjectionStatus], head: i64) -> Vec<Vec<String>> {
    statuses
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.version.to_string(),
                s.checkpoint.position.to_string(),
                head.to_string(),
                s.lag_events.to_string(),
                format!("{:.1}", s.lag_seconds),
                s.state.clone(),
                s.parked.to_string(),
                s.last_error
                    .clone()
                    .unwrap_or_else(|| "-".to_owned())
                    .chars()
                    .take(60)
                    .collect(),
            ]
        })
        .collect()
}

#[derive(Serialize)]
struct StatusReport {
    head_position: i64,
    projections: Vec<ProjectionStatus>,
}

async fn projections(pool: &PgPool, command: ProjectionsCommand) -> Result<(), Failure> {
    match command {
        ProjectionsCommand::List(Json { json }) => show_status(pool, None, json).await,
        ProjectionsCommand::Status { name, json } => {
            show_status(pool, name.as_deref(), json.json).await
        }
        ProjectionsCommand::Rebuild {
            name,
            all,
            dry_run,
            batch_size,
            keep_old,
            fold_rows,
            json,
        } => {
            let targets: Vec<Arc<dyn Projection>> = if all {
                crate::all()
            } else {
                vec![projection(name.as_deref().unwrap_or_default())?]
            };
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = stop.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        eprintln!("\nstopping after the current batch…");
                        stop.store(true, Ordering::SeqCst);
                    }
                });
            }
            let mode = if dry_run { Mode::DryRun } else { Mode::Swap };
            let options = rebuild::Options {
                batch_size,
                keep_old,
                fold_rows,
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>16} [{bar:30}] {pos}/{len} events  {per_sec}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(if all {
                "all".to_owned()
            } else {
                targets
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let results = rebuild::rebuild_many(
                pool,
                &targets,
                mode,
                options,
                |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
                &stop,
            )
            .await;
            bar.finish_and_clear();
            let mut reports = Vec::new();
            let mut failures = Vec::new();
            for (target, result) in targets.iter().zip(results) {
                match result {
                    Ok(report) => {
                        eprintln!(
                            "{}: {} events built in {:.2} s ({:.0} events/s), verified in {:.2} s, {:.2} s in all{}{}",
                            report.projection,
                            report.events_read,
                            report.build_seconds,
                            report.events_per_second,
                            report.verify_seconds,
                            report.seconds,
                            if report.resumed { ", resumed" } else { "" },
                            if report.swapped {
                                ", swapped in"
                            } else {
                                ", nothing swapped (dry run)"
                            },
                        );
                        reports.push(report);
                    }
                    Err(err) => {
                        if targets.len() > 1 {
                            eprintln!("{}: {}", target.name(), infra::telemetry::err_chain(&err));
                        }
                        failures.push(err);
                    }
                }
            }
            // What was rebuilt is reported; the first failure decides the exit code (the
            // others were printed above).
            let failed = failures.into_iter().next();
            if json.json {
                print_json(&reports)?;
                return failed.map_or(Ok(()), |err| Err(err.into()));
            }
            let rows: Vec<Vec<String>> = reports
                .iter()
                .flat_map(|r| {
                    r.diff.iter().map(|d| {
                        vec![
                            r.projection.clone(),
                            d.table.clone(),
                            d.added.to_string(),
                            d.removed.to_string(),
                            d.changed.to_string(),
                        ]
                    })
                })
                .collect();
            if !rows.is_empty() {
                print_table(
                    &["projection", "table", "added", "removed", "changed"],
                    &rows,
                );
            }
            failed.map_or(Ok(()), |err| Err(err.into()))
        }
        ProjectionsCommand::Pause { name } => {
            admin::pause(pool, &name).await?;
            eprintln!("{name} paused");
            Ok(())
        }
        ProjectionsCommand::Resume { name } => {
            admin::resume(pool, &name).await?;
            eprintln!("{name} resumed");
            Ok(())
        }
        ProjectionsCommand::DeadLetters {
            name,
            retry,
            skip,
            all,
            json,
        } => {
            if let Some(id) = retry {
                admin::retry(pool, &name, id).await?;
                eprintln!("dead letter {id} of {name} will be retried");
                return Ok(());
            }
            if let Some(id) = skip {
                admin::skip(pool, &name, id).await?;
                eprintln!("dead letter {id} of {name} skipped");
                return Ok(());
            }
            let letters = admin::dead_letters(pool, &name, all).await?;
            if json.json {
                return print_json(&letters);
            }
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|l| {
                    vec![
                        l.id.to_string(),
                        l.status.clone(),
                        l.position.to_string(),
                        format!("{}/{}#{}", l.aggregate_type, l.aggregate_id, l.sequence),
                        l.event_type.clone(),
                        l.attempts.to_string(),
                        l.error.chars().take(80).collect(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "id", "status", "position", "stream", "event", "attempts", "error",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

async fn show_status(pool: &PgPool, name: Option<&str>, json: bool) -> Result<(), Failure> {
    let (statuses, head) = status::status(pool, name).await?;
    if let Some(name) = name
        && statuses.is_empty()
    {
        return Err(Failure::NotFound(format!("no projection named {name}")));
    }
    if json {
        return print_json(&StatusReport {
            head_position: head,
            projections: statuses,
        });
    }
    print_table(
        &[
            "name",
            "version",
            "checkpoint",
            "head",
            "lag",
            "lag s",
            "state",
            "parked",
            "last error",
        ],
        &status_rows(&statuses, head),
    );
    Ok(())
}

/// A line diff of two JSON documents (pretty-printed), `-` before, `+` after.
pub fn json_diff(before: &Value, after: &Value) -> Vec<String> {
    let pretty = |v: &Value| -> Vec<String> {
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (a, b) = (pretty(before), pretty(after));
    // Longest common subsequence over lines; states are small.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

fn paint(line: &str, colour: bool) -> String {
    match (colour, line.chars().next()) {
        (true, Some('+')) => format!("\x1b[32m{line}\x1b[0m"),
        (true, Some('-')) => format!("\x1b[31m{line}\x1b[0m"),
        _ => line.to_owned(),
    }
}

fn id_or_dash(id: Option<uuid::Uuid>) -> String {
    id.map_or_else(|| "-".to_owned(), |id| id.to_string())
}

async fn replay_command(pool: &PgPool, command: ReplayCommand) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let write = |out: &mut std::io::StdoutLock<'_>, text: String| -> Result<(), Failure> {
        writeln!(out, "{text}").map_err(|err| Failure::Failed(err.into()))
    };
    match command {
        ReplayCommand::Stream {
            aggregate_type,
            id,
            to_version,
            at,
            json,
        } => {
            let until = match (to_version, at) {
                (Some(version), _) => Until::Version(version),
                (None, Some(at)) => Until::At(at),
                (None, None) => Until::End,
            };
            let steps = replay::stream(pool, &aggregate_type, &id, until).await?;
            if json.json {
                // One object per step, one per line.
                for step in &steps {
                    let line =
                        serde_json::to_string(step).map_err(|err| Failure::Failed(err.into()))?;
                    write(&mut out, line)?;
                }
                return Ok(());
            }
            let colour = colour();
            for step in steps {
                write(
                    &mut out,
                    format!(
                        "#{} {} (v{})  position {}  recorded {}",
                        step.sequence,
                        step.event_type,
                        step.event_version,
                        step.position,
                        step.recorded_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    ),
                )?;
                write(
                    &mut out,
                    format!(
                        "   event {}  correlation {}  causation {}",
                        step.event_id,
                        id_or_dash(step.correlation_id),
                        id_or_dash(step.causation_id)
                    ),
                )?;
                for line in json_diff(&step.state_before, &step.state) {
                    write(&mut out, format!("   {}", paint(&line, colour)))?;
                }
            }
            Ok(())
        }
        ReplayCommand::Projection {
            name,
            from,
            to,
            json,
        } => {
            if from > to {
                return Err(Failure::Refused(format!(
                    "--from {from} is after --to {to}"
                )));
            }
            let target = projection(&name)?;
            let replayed = replay::projection(pool, target.as_ref(), from, to).await?;
            if json.json {
                return print_json(&replayed);
            }
            write(
                &mut out,
                format!(
                    "{}: positions {}..={}: {} events read, {} applied, {} rows",
                    replayed.projection,
                    replayed.from,
                    replayed.to,
                    replayed.events_read,
                    replayed.events_applied,
                    replayed.rows.len()
                ),
            )?;
            write(
                &mut out,
                "(rows that differ show `-` live, `+` from this range)".to_owned(),
            )?;
            let colour = colour();
            for row in &replayed.rows {
                write(
                    &mut out,
                    format!("{} {} {}", row.table, row.key, row.status),
                )?;
                let live = row.live.clone().unwrap_or(Value::Null);
                if row.status == "differs" {
                    for line in json_diff(&live, &row.replayed) {
                        write(&mut out, format!("   {}", paint(&line, colour)))?;
                    }
                } else {
                    write(&mut out, format!("   {}", row.replayed))?;
                }
            }
            Ok(())
        }
        ReplayCommand::Row {
            projection: name,
            key,
            json,
        } => {
            let history = replay::row(pool, &name, &key).await?;
            if json.json {
                return print_json(&history);
            }
            match &history.row {
                Some(row) => write(
                    &mut out,
                    format!("{} {}: {}", history.projection, history.key, row),
                )?,
                None => write(
                    &mut out,
                    format!("{} {}: no live row", history.projection, history.key),
                )?,
            }
            for event in &history.events {
                write(
                    &mut out,
                    format!(
                        "{:>6}  {}/{}#{}  {}  {}",
                        event.position,
                        event.aggregate_type,
                        event.aggregate_id,
                        event.sequence,
                        event.event_type,
                        event.payload
                    ),
                )?;
            }
            Ok(())
        }
        ReplayCommand::Saga { order_id, json } => {
            let saga = replay::saga(pool, order_id).await?;
            if json.json {
                return print_json(&saga);
            }
            write(
                &mut out,
                format!(
                    "saga of order {}: {}  next {}  attempts {}",
                    saga.order_id,
                    saga.stage,
                    saga.next_step.as_deref().unwrap_or("-"),
                    saga.attempts
                ),
            )?;
            write(
                &mut out,
                format!(
                    "   timer {}  payment deadline {}",
                    saga.due_at
                        .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339()),
                    saga.deadline.as_deref().unwrap_or("-")
                ),
            )?;
            if let Some(error) = &saga.last_error {
                write(&mut out, format!("   last error: {error}"))?;
            }
            for step in &saga.steps {
                write(
                    &mut out,
                    format!(
                        "{:>6}  {:<7}  {:<28}  {}/{}  {}",
                        step.position,
                        step.kind,
                        step.step.as_deref().unwrap_or("-"),
                        step.aggregate_type,
                        step.aggregate_id,
                        step.event_type
                    ),
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_json_diff_shows_only_changed_lines() {
        let diff = json_diff(&json!({"a": 1, "b": 2}), &json!({"a": 1, "b": 3}));
        assert_eq!(diff, ["-   \"b\": 2", "+   \"b\": 3"]);
        assert!(json_diff(&json!({"a": 1}), &json!({"a": 1})).is_empty());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
