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
    /// Operator policies to judge the desired state with (repeatable); the repo's
    /// `policies/*.rego` always apply. A mandatory denial is an error at the step; an
    /// overridable one a warning (an approver's override is checked at apply time).
    #[arg(long = "policy", value_name = "DIR")]
    pub policy: Vec<PathBuf>,
}

/// Diagnostics on stderr, the summary line on stdout. Exit 0 valid, 1 invalid.
pub fn run(args: ValidateArgs, term: Term) -> anyhow::Result<u8> {
    limit_self(args.memory_limit, args.time_limit)?;
    // Every host of every environment is rendered, with the facts of `--facts FILE` or
    // the cache: a template that needs a fact no one has is an error.
    let (mut loaded, mut diags) = crate::model::load::load(&args.repo);
    args.facts.attach(&mut loaded)?;
    crate::validate::check(&loaded, &mut diags);
    if !diags.has_errors() {
        judge_desired(&loaded, &args.policy, &mut diags);
    }
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

/// `path:line:col` back into its parts.
fn split_location(at: &str) -> Option<(String, crate::model::yaml::Pos)> {
    let mut it = at.rsplitn(3, ':');
    let col = it.next()?.parse().ok()?;
    let line = it.next()?.parse().ok()?;
    Some((
        it.next()?.to_string(),
        crate::model::yaml::Pos { line, col },
    ))
}

/// The policies on every environment's desired state, as diagnostics at the steps.
fn judge_desired(
    repo: &crate::model::Repo,
    dirs: &[PathBuf],
    diags: &mut crate::diag::Diagnostics,
) {
    use crate::diag::Diagnostic;
    use crate::model::yaml::Pos;
    use crate::policy::{Level, Origin, PolicySet};
    let mut set = PolicySet::default();
    let loaded = set
        .add_dirs(Origin::Operator, dirs, false)
        .and_then(|()| set.add(Origin::Repo, crate::policy::read_repo(&repo.files)?));
    if let Err(e) = loaded {
        diags.push(Diagnostic::error(
            "policy",
            "policies",
            Pos::START,
            e.to_string(),
        ));
        return;
    }
    if set.is_empty() {
        return;
    }
    let now = crate::policy::NowInput::at(time::OffsetDateTime::now_utc());
    for env in repo.environments.keys() {
        let Ok(hosts) = crate::render::render_env(repo, env, None) else {
            continue;
        };
        let ctx = crate::policy::Context {
            environment: env.clone(),
            commit: None,
            now: now.clone(),
        };
        let findings = match crate::policy::judge_desired(&set, &ctx, &hosts) {
            Ok(f) => f,
            Err(e) => {
                diags.push(Diagnostic::error(
                    "policy",
                    "policies",
                    Pos::START,
                    e.to_string(),
                ));
                continue;
            }
        };
        for f in findings {
            let (path, pos) = f
                .step_location
                .as_deref()
                .and_then(split_location)
                .unwrap_or_else(|| (format!("environments/{env}/hosts.yaml"), Pos::START));
            let message = format!(
                "{} ({}) on {}: {}",
                f.rule, f.rule_location, f.host, f.message
            );
            diags.push(match f.level {
                Level::Mandatory => Diagnostic::error("policy", path, pos, message),
                Level::Overridable => Diagnostic::warning("policy", path, pos, message)
                    .with_hint("denied unless an approver signs `Plumb-Override: <rule> <reason>`"),
                Level::Advisory => Diagnostic::warning("policy", path, pos, message),
            });
        }
    }
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
