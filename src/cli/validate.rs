//! `plumb validate`.

use std::path::PathBuf;

use anyhow::Context as _;
use rustix::process::{setrlimit, Resource, Rlimit};

use crate::model::{ByteSize, HumanDuration};
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
    /// Address space this process may use (e.g. 1GiB): a checkout whose templates need
    /// more aborts the process (non-zero, not 1). For CI runs on untrusted pull requests;
    /// the daemon validates every new commit this way.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
    /// CPU time this process may use (e.g. 2m); past it the process is killed.
    #[arg(long, value_name = "DURATION")]
    pub time_limit: Option<HumanDuration>,
}

/// Diagnostics on stderr, the summary line on stdout. Exit 0 valid, 1 invalid.
pub fn run(args: ValidateArgs, term: Term) -> anyhow::Result<u8> {
    limit_self(args.memory_limit, args.time_limit)?;
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

/// Sets this process's own resource limits, before it reads anything.
fn limit_self(memory: Option<ByteSize>, cpu: Option<HumanDuration>) -> anyhow::Result<()> {
    if let Some(m) = memory {
        let limit = Rlimit {
            current: Some(m.bytes()),
            maximum: Some(m.bytes()),
        };
        setrlimit(Resource::As, limit).context("setting the memory limit (RLIMIT_AS)")?;
    }
    if let Some(t) = cpu {
        // SIGXCPU at the limit, SIGKILL a second later if it is ignored.
        let secs = t.get().as_secs().max(1);
        let limit = Rlimit {
            current: Some(secs),
            maximum: Some(secs + 1),
        };
        setrlimit(Resource::Cpu, limit).context("setting the CPU time limit (RLIMIT_CPU)")?;
    }
    Ok(())
}
