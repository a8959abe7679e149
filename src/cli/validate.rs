//! `plumb validate`.

use std::path::PathBuf;

use crate::report::ValidateReport;

use super::args::{OutputArg, OutputFormat};
use super::diagnostic::render_all;
use super::term::{print_json, Term};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The config repo (the directory holding plumb.yaml).
    pub repo: PathBuf,
    #[command(flatten)]
    pub facts: super::args::FactsArgs,
    #[command(flatten)]
    pub output: OutputArg,
}

/// Diagnostics on stderr, the summary line on stdout. Exit 0 valid, 1 invalid.
pub fn run(args: ValidateArgs, term: Term) -> anyhow::Result<u8> {
    // Every host of every environment is rendered, with the facts of `--facts FILE` or
    // the cache: a template that needs a fact no one has is an error.
    let (mut loaded, mut diags) = crate::model::load::load(&args.repo);
    args.facts.attach(&mut loaded)?;
    crate::validate::check(&loaded, &mut diags);
    loaded
        .sources
        .set_display_root(&args.repo.to_string_lossy());
    let report = ValidateReport::new(diags);
    let code = u8::from(!report.valid);
    match args.output.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            eprint!("{}", render_all(&report, &loaded.sources, term.err));
            let summary = crate::report::summary_line(report.errors, report.warnings);
            let summary = summary.trim_end();
            let summary = if report.valid {
                term.out.green(summary)
            } else {
                term.out.red(summary)
            };
            println!("{summary}");
        }
    }
    Ok(code)
}
