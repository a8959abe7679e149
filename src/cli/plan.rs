//! `plumb plan` (and the host side shared with `drift`).

use crate::diag::SourceMap;
use crate::render::DesiredHost;

use super::args::{runtime, HostArgs, OutputFormat, Target};
use super::diagnostic::fail_with;
use super::term::{print_json, print_lines, Term};

/// Which question a plan answers; it names the report (`plan` / `drift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    Plan,
    Drift,
}

impl PlanKind {
    fn as_str(self) -> &'static str {
        match self {
            PlanKind::Plan => "plan",
            PlanKind::Drift => "drift",
        }
    }
}

/// Probes every host and prints what differs. Exit 0 nothing, 2 changes/drift, 1 error.
pub fn run(args: HostArgs, kind: PlanKind, term: Term) -> anyhow::Result<u8> {
    let output = args.output.output;
    let Some((hosts, _)) = desired(&args.target, output, term)? else {
        return Ok(1);
    };
    let env = &args.target.env;
    let connector = args.conn.connector();
    let plans = runtime()?.block_on(crate::engine::until_signal(crate::engine::plan_all(
        &hosts,
        connector.as_ref(),
        args.conn.parallel,
    )))?;
    let report = crate::report::plan::PlanReport::new(env, kind.as_str(), &plans);
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_lines(&crate::report::plan::plan_lines(&report), term.out),
    }
    Ok(report.exit_code())
}

/// Validates and renders; prints diagnostics and returns `None` when the repo is invalid,
/// so a bad commit never reaches a host.
pub fn desired(
    target: &Target,
    output: OutputFormat,
    term: Term,
) -> anyhow::Result<Option<(Vec<DesiredHost>, SourceMap)>> {
    let (loaded, diags, rendered) = crate::validate::validate_and_render_with(
        &target.repo,
        &target.env,
        target.host.as_deref(),
        target.identity()?,
    );
    match rendered {
        Some(h) if !diags.has_errors() => Ok(Some((h, loaded.sources))),
        _ => {
            fail_with(diags, &loaded.sources, output, term.err);
            Ok(None)
        }
    }
}
