//! Result rows, targets, and the table: each phase writes its rows as JSON; `report` joins
//! them with their baselines (measured in the same run), judges the targets and prints one
//! table.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A benchmark goal. Every bound that is set must hold for the target to be met.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
}

impl Target {
    pub fn describe(&self, unit: &str) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.min_value {
            parts.push(format!(">= {} {unit}", human(v)));
        }
        if let Some(v) = self.max_value {
            parts.push(format!("< {} {unit}", human(v)));
        }
        if let Some(r) = self.min_ratio {
            parts.push(format!(">= {r}x"));
        }
        if let Some(p) = self.max_p99_ms {
            parts.push(format!("p99 <= {p} ms"));
        }
        parts.join(", ")
    }

    fn met(&self, row: &Row) -> Option<bool> {
        let mut met = true;
        if let Some(v) = self.min_value {
            met &= row.median >= v;
        }
        if let Some(v) = self.max_value {
            met &= row.median < v;
        }
        if let Some(r) = self.min_ratio {
            met &= row.ratio? >= r;
        }
        if let Some(p) = self.max_p99_ms {
            met &= row.p99_ms? <= p;
        }
        Some(met)
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// What was measured, e.g. `1. place orders`.
    pub case: String,
    /// Rows that other rows compare with carry a key (`pgbench.insert.c32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Unit of median/min/max: `ops/s`, `events/s`, `MB`.
    pub unit: String,
    pub runs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Key of the baseline row this one is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_median: Option<f64>,
    /// Ours / baseline, of the medians.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    /// A row from per-run rates and the latencies of all runs.
    pub fn measured(case: &str, unit: &str, rates: &[f64], latencies: &mut [Duration]) -> Self {
        let (median, min, max) = spread(rates);
        let (p50_ms, p99_ms) = if latencies.is_empty() {
            (None, None)
        } else {
            latencies.sort_unstable();
            (
                Some(percentile(latencies, 0.50).as_secs_f64() * 1e3),
                Some(percentile(latencies, 0.99).as_secs_f64() * 1e3),
            )
        };
        Self {
            case: case.to_owned(),
            key: None,
            concurrency: None,
            unit: unit.to_owned(),
            runs: rates.len(),
            median,
            min,
            max,
            p50_ms,
            p99_ms,
            baseline: None,
            baseline_median: None,
            ratio: None,
            target: None,
            met: None,
            note: None,
        }
    }

    pub fn concurrency(mut self, c: u32) -> Self {
        self.concurrency = Some(c);
        self
    }
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
    pub fn baseline(mut self, key: impl Into<String>) -> Self {
        self.baseline = Some(key.into());
        self
    }
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Median, min and max of per-run values.
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn write_rows(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// Everything the table says, as written to JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub mode: String,
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres: String,
    pub commit: String,
}

impl Machine {
    pub fn read(postgres: String, commit: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            cpu,
            cores,
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel,
            postgres,
            commit,
        }
    }
}

/// Joins rows with their baselines and judges their targets.
pub fn resolve(mut rows: Vec<Row>) -> Vec<Row> {
    let baselines: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.key.clone()?, r.median)))
        .collect();
    for row in &mut rows {
        if let Some(key) = &row.baseline
            && let Some((_, base)) = baselines.iter().find(|(k, _)| k == key)
        {
            row.baseline_median = Some(*base);
            if *base > 0.0 {
                row.ratio = Some(row.median / base);
            }
        }
        if let Some(target) = &row.target {
            row.met = target.met(row);
        }
    }
    rows
}

/// The table, in Markdown (it reads well in a terminal and pastes into BENCHMARKS.md).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | conc. | median | min | max | p50 ms | p99 ms | baseline | ratio | target | met |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---:|---|---|\n",
    );
    for r in rows {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), ms);
        out.push_str(&format!(
            "| {}{} | {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.case,
            r.note
                .as_deref()
                .map_or_else(String::new, |n| format!(" ({n})")),
            r.concurrency
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            human(r.median),
            r.unit,
            human(r.min),
            human(r.max),
            opt(r.p50_ms),
            opt(r.p99_ms),
            match (&r.baseline, r.baseline_median) {
                (Some(k), Some(b)) => format!("{k}: {}", human(b)),
                (Some(k), None) => format!("{k}: not measured"),
                _ => "-".to_owned(),
            },
            r.ratio
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}x")),
            r.target
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| t.describe(&r.unit)),
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            },
        ));
    }
    out
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// 1234567.8 -> "1,234,568"; small values keep a decimal.
pub fn human(v: f64) -> String {
    if v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_percentiles() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
    }

    #[test]
    fn rows_are_joined_with_baselines_and_judged() {
        let base = Row::measured("pgbench insert", "ops/s", &[1000.0], &mut []).key("ins");
        let ours = Row::measured(
            "place",
            "ops/s",
            &[500.0, 700.0, 650.0],
            &mut [Duration::from_millis(2)],
        )
        .baseline("ins")
        .target(Target {
            min_ratio: Some(0.6),
            ..Target::default()
        });
        let rows = resolve(vec![base, ours]);
        assert_eq!(rows[1].ratio, Some(0.65));
        assert_eq!(rows[1].met, Some(true));
        assert_eq!(human(1_234_567.8), "1,234,568");
        assert!(table(&rows).contains("| 0.65x |"));
    }
}
