//! `plumb history` and `plumb drift-history`: the recorded runs and drift findings, filtered
//! (each filter parsed by [`crate::state::filter`], a bad one exits 1 naming it), as a table,
//! JSON (schemas `history` / `drift-history`), JSON lines or CSV.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::ValueEnum;

use super::term::{print_json, print_text};
use crate::state::report::{DriftHistoryReport, HistoryReport};
use crate::state::{DriftFilter, FilterError, FilterLimits, RunFilter};

/// Largest `--limit`.
const MAX_LIMIT: usize = 100_000;

/// `--output text|json|jsonl|csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ListOutput {
    #[default]
    Text,
    /// One document (schema: `plumb schemas`, output/history or output/drift-history).
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A header line, then one record per line.
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The daemon's state directory (holding plumb.db).
    #[arg(long, env = "PLUMB_STATE_DIR")]
    pub state: PathBuf,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// Only runs with a result for this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only runs of commits starting with this prefix (at least 4 hex digits).
    #[arg(long)]
    pub commit: Option<String>,
    /// Only runs of commits signed by this principal or key fingerprint.
    #[arg(long)]
    pub signer: Option<String>,
    /// Only this kind: apply, correction, drift_check, refused, state_reset, rollback, pin,
    /// unpin.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this result: converged, failed, refused, no_change, drift_found, interrupted,
    /// running.
    #[arg(long)]
    pub result: Option<String>,
    /// Only runs started at or after: RFC 3339 (2026-11-30T09:00:00Z) or a time ago (7d, 12h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only runs started before: RFC 3339 or a time ago.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: ListOutput,
}

#[derive(Debug, clap::Args)]
pub struct DriftHistoryArgs {
    /// The daemon's state directory (holding plumb.db).
    #[arg(long, env = "PLUMB_STATE_DIR")]
    pub state: PathBuf,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// Only this host.
    #[arg(long)]
    pub host: Option<String>,
    /// open, resolved or all.
    #[arg(long, default_value = "all")]
    pub status: String,
    /// Only findings still open at or resolved after: RFC 3339 or a time ago (7d, 12h).
    #[arg(long)]
    pub since: Option<String>,
    /// Only findings first seen before: RFC 3339 or a time ago.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many findings.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: ListOutput,
}

/// The given options as the filter parser's `name=value` pairs.
fn pairs(given: &[(&str, Option<&String>)], limit: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = given
        .iter()
        .filter_map(|(n, v)| v.map(|v| (n.to_string(), v.clone())))
        .collect();
    out.push(("limit".into(), limit.to_string()));
    out
}

fn limits() -> FilterLimits {
    FilterLimits {
        default_limit: 20,
        max_limit: MAX_LIMIT,
        now_ms: crate::state::now_ms(),
    }
}

/// A filter error as the option it came from.
fn option_error(e: FilterError) -> anyhow::Error {
    anyhow!("--{}: {}", e.param, e.message)
}

/// Recorded runs, newest first.
pub fn run(a: HistoryArgs) -> anyhow::Result<u8> {
    let given = [
        ("env", a.env.as_ref()),
        ("host", a.host.as_ref()),
        ("commit", a.commit.as_ref()),
        ("signer", a.signer.as_ref()),
        ("kind", a.kind.as_ref()),
        ("result", a.result.as_ref()),
        ("since", a.since.as_ref()),
        ("until", a.until.as_ref()),
    ];
    let filter = RunFilter::from_pairs(&pairs(&given, a.limit), limits()).map_err(option_error)?;
    let db = crate::state::StateDb::open_inspect(&a.state)?;
    let mut report = HistoryReport::new(&db.runs(&filter)?);
    report.pins = db.pins(a.env.as_deref())?;
    match a.output {
        ListOutput::Json => print_json(&report)?,
        ListOutput::Jsonl => print_text(&report.to_jsonl()?)?,
        ListOutput::Csv => print_text(&report.to_csv())?,
        ListOutput::Text => print_text(&report.to_text())?,
    }
    Ok(0)
}

/// Drift findings, open and resolved, newest first.
pub fn drift_history(a: DriftHistoryArgs) -> anyhow::Result<u8> {
    let given = [
        ("env", a.env.as_ref()),
        ("host", a.host.as_ref()),
        ("status", Some(&a.status)),
        ("since", a.since.as_ref()),
        ("until", a.until.as_ref()),
    ];
    let filter =
        DriftFilter::from_pairs(&pairs(&given, a.limit), limits()).map_err(option_error)?;
    let db = crate::state::StateDb::open_inspect(&a.state)?;
    let report = DriftHistoryReport {
        drift: db.drift_history(&filter)?,
    };
    match a.output {
        ListOutput::Json => print_json(&report)?,
        ListOutput::Jsonl => print_text(&report.to_jsonl()?)?,
        ListOutput::Csv => print_text(&report.to_csv())?,
        ListOutput::Text => print_text(&report.to_text())?,
    }
    Ok(0)
}
