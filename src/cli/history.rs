//! `plumb history`.

use std::path::PathBuf;

use super::args::{OutputArg, OutputFormat};
use super::term::{print_json, print_text};

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The daemon's state directory (holding plumb.db).
    #[arg(long, env = "PLUMB_STATE_DIR")]
    pub state: PathBuf,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub output: OutputArg,
}

/// Recorded runs, newest first.
pub fn run(args: HistoryArgs) -> anyhow::Result<u8> {
    let db = crate::state::StateDb::open_inspect(&args.state)?;
    let runs = db.runs(&crate::state::RunFilter {
        environment: args.env,
        kind: None,
        limit: Some(args.limit),
    })?;
    let report = crate::state::report::HistoryReport::new(&runs);
    match args.output.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_text(&report.to_text())?,
    }
    Ok(0)
}
