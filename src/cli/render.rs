//! `plumb render`.

use crate::diag::Severity;
use crate::report::RenderReport;

use super::args::{OutputArg, OutputFormat, Target};
use super::diagnostic::{fail_with, render as render_diagnostic};
use super::term::{print_json, print_text, Term};

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub target: Target,
    /// Show file content (never for sensitive steps).
    #[arg(long)]
    pub show_content: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

/// The ordered, templated steps of each host; warnings on stderr after the output.
pub fn run(args: RenderArgs, term: Term) -> anyhow::Result<u8> {
    let RenderArgs {
        target,
        show_content,
        output,
    } = args;
    let output = output.output;
    let (mut loaded, mut diags) = crate::model::load::load(&target.repo);
    loaded
        .sources
        .set_display_root(&target.repo.to_string_lossy());
    if diags.has_errors() {
        return Ok(fail_with(diags, &loaded.sources, output, term.err));
    }
    // With an identity, secrets are decrypted (and must decrypt); without one, checked
    // structurally: a step reading one is sensitive, so its desired state is hidden anyway.
    if let Some(identity) = target.identity()? {
        loaded.secrets = crate::secrets::Keyring::for_env(&target.env, Some(identity));
    }
    // No host is contacted: facts come from `--facts FILE` or the cache.
    target.facts.attach(&mut loaded)?;
    let limits = target.limits();
    if let Some(e) = loaded.environments.get(&target.env) {
        limits.select(&target.env, &e.hosts)?;
    }
    let rendered =
        crate::validate::check_and_render(&loaded, &mut diags, &target.env, &|h| limits.matches(h));
    match rendered.filter(|_| !diags.has_errors()) {
        Some(hosts) => {
            let report = RenderReport::new(&target.env, &hosts, show_content);
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => print_text(&report.to_text())?,
            }
            // Warnings still go to stderr, after the output.
            for w in diags.iter().filter(|d| d.severity == Severity::Warning) {
                eprint!("{}", render_diagnostic(w, &loaded.sources, term.err));
            }
            Ok(0)
        }
        None => Ok(fail_with(diags, &loaded.sources, output, term.err)),
    }
}
