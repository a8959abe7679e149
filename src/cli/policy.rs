//! `plumb policy test|eval`, and the policy gate of `validate`, `plan` and `apply`
//! (`--policy DIR`, `--approvers FILE`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::policy::{self, Context, EvalHost, EvalReport, Finding, Origin, PolicySet, Verdict};

use super::args::{runtime, HostArgs, OutputArg, OutputFormat};
use super::term::{escape, print_json, Term};

/// Where policies come from on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// Operator policies: a directory of `.rego` files outside the repo (repeatable). The
    /// repo's own `policies/*.rego` always apply too, in an engine of their own.
    #[arg(long = "policy", value_name = "DIR")]
    pub policy: Vec<PathBuf>,
    /// Principals who may override an overridable rule (`Plumb-Override: <rule> <reason>`
    /// on HEAD), one per line; needs `--allowed-signers` to verify HEAD's signer.
    #[arg(long, value_name = "FILE", requires = "allowed_signers")]
    pub approvers: Option<PathBuf>,
    /// Trust root (OpenSSH allowed-signers file) that verifies HEAD: its signer for
    /// overrides; for `apply`, a dirty tree or a HEAD that does not verify is refused unless
    /// --break-glass.
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
}

/// Reads an approvers file: one principal per line, `#` comments.
pub fn read_approvers(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading approvers {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

impl PolicyArgs {
    /// The operator's policies and the repo's.
    pub fn load(&self, repo: &crate::model::Repo) -> anyhow::Result<PolicySet> {
        let mut set = PolicySet::default();
        set.add_dirs(Origin::Operator, &self.policy, false)?;
        set.add(Origin::Repo, policy::read_repo(&repo.files)?)?;
        Ok(set)
    }

    /// The commit context: HEAD's overrides and verified signer when `--approvers` is
    /// given; none otherwise (a working tree has no verified signer).
    pub fn context(&self, repo: &Path, env: &str) -> anyhow::Result<(Context, Vec<String>)> {
        let mut ctx = Context {
            environment: env.to_string(),
            commit: None,
            now: policy::NowInput::at(time::OffsetDateTime::now_utc()),
        };
        let (Some(approvers), Some(signers)) = (&self.approvers, &self.allowed_signers) else {
            return Ok((ctx, Vec::new()));
        };
        let approvers = read_approvers(approvers)?;
        let files = crate::source::TrustFiles {
            allowed_signers: Some(signers),
            openpgp_keyring: None,
            seal_signers: None,
        };
        let report = crate::source::verify_repo(repo, files, None, "HEAD")?;
        let git = git2::Repository::open(repo)?;
        let head = git.head()?.peel_to_commit()?;
        let message = head.message().unwrap_or_default().to_string();
        let signer = report
            .commits
            .last()
            .filter(|_| report.ok)
            .map(|c| c.signer.principal.clone());
        ctx.commit = Some(policy::CommitInput {
            id: head.id().to_string(),
            signer,
            overrides: policy::overrides::parse(&message)
                .into_iter()
                .map(|o| policy::OverrideInput {
                    rule: o.rule,
                    reason: o.reason,
                })
                .collect(),
        });
        Ok((ctx, approvers))
    }
}

/// Judges `findings` with the commit's overrides.
pub fn verdict(ctx: &Context, findings: Vec<Finding>, approvers: &[String]) -> Verdict {
    let (overrides, signer) = match &ctx.commit {
        Some(c) => (
            c.overrides
                .iter()
                .map(|o| policy::Override {
                    rule: o.rule.clone(),
                    reason: o.reason.clone(),
                })
                .collect(),
            c.signer.as_deref(),
        ),
        None => (Vec::new(), None),
    };
    Verdict::judge(findings, &overrides, signer, approvers)
}

/// Prints a verdict's findings on stderr (text output), each escaped.
pub fn print_verdict(v: &Verdict, term: Term) {
    for f in &v.denied {
        eprintln!("{}: {}", term.err.red("policy"), escape(&f.line()));
    }
    for f in &v.overridden {
        eprintln!(
            "{}: overridden: {}",
            term.err.yellow("policy"),
            escape(&f.line())
        );
    }
    for f in &v.warnings {
        eprintln!("{}: {}", term.err.yellow("policy"), escape(&f.line()));
    }
    for o in v.overrides.iter().filter(|o| !o.accepted) {
        eprintln!(
            "{}: override of {} refused: {}",
            term.err.red("policy"),
            escape(&o.rule),
            escape(o.refused_because.as_deref().unwrap_or("?"))
        );
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Run the `test_*` rules of the policies in DIR (like `opa test`). Exit 0 all pass, 1
    /// otherwise.
    Test(TestArgs),
    /// Print the input document of each host and the policies' decisions on it.
    Eval(Box<EvalArgs>),
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// A directory of `.rego` files and their `_test.rego` files.
    #[arg(default_value = "policies")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Judge the desired state only (no host contacted, as `plumb validate` does).
    #[arg(long)]
    pub desired: bool,
}

pub fn run(command: PolicyCommand, term: Term) -> anyhow::Result<u8> {
    match command {
        PolicyCommand::Test(a) => test(a, term),
        PolicyCommand::Eval(a) => eval(*a, term),
    }
}

fn test(args: TestArgs, term: Term) -> anyhow::Result<u8> {
    let mut set = PolicySet::default();
    set.add_dirs(Origin::Operator, std::slice::from_ref(&args.dir), true)?;
    let results = set.run_tests();
    let failed = results.iter().filter(|r| !r.passed).count();
    match args.output.output {
        OutputFormat::Json => print_json(&results)?,
        OutputFormat::Text => {
            for r in &results {
                let verdict = if r.passed {
                    term.out.green("PASS")
                } else {
                    term.out.red("FAIL")
                };
                let err = r
                    .error
                    .as_deref()
                    .map(|e| format!(": {}", escape(e)))
                    .unwrap_or_default();
                println!(
                    "{verdict} {} ({}){err}",
                    escape(&r.rule),
                    escape(&r.location)
                );
            }
            println!("{} passed, {failed} failed", results.len() - failed);
        }
    }
    Ok(u8::from(failed > 0 || results.is_empty()))
}

fn eval(args: EvalArgs, term: Term) -> anyhow::Result<u8> {
    let a = &args.host;
    let output = a.output.output;
    let rt = runtime()?;
    let Some(prep) = super::facts::prepare(&a.target, &a.conn, output, term, &rt)? else {
        return Ok(1);
    };
    let set = a.policy.load(&prep.repo)?;
    let (ctx, approvers) = a.policy.context(&a.target.repo, &a.target.env)?;
    let inputs: Vec<policy::PolicyInput> = if args.desired {
        prep.hosts
            .iter()
            .map(|h| policy::desired_input(&ctx, h, prep.hosts.len()))
            .collect()
    } else {
        let connector = a.conn.connector();
        let plans = rt.block_on(crate::engine::until_signal(crate::engine::plan_all(
            &prep.hosts,
            connector.as_ref(),
            a.conn.parallel,
        )))?;
        let changed = plans.iter().filter(|p| p.changes() > 0).count();
        prep.hosts
            .iter()
            .zip(&plans)
            .map(|(h, p)| policy::plan_input(&ctx, h, p, prep.hosts.len(), changed))
            .collect()
    };
    let mut hosts = Vec::new();
    let mut all = Vec::new();
    for input in inputs {
        let findings = set.evaluate(&input)?;
        all.extend(findings.clone());
        hosts.push(EvalHost { input, findings });
    }
    let verdict = verdict(&ctx, all, &approvers);
    let report = EvalReport {
        environment: a.target.env.clone(),
        hosts,
        verdict,
    };
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            for h in &report.hosts {
                println!("# {}", escape(&h.input.host.name));
                let doc = serde_json::to_string_pretty(&h.input)?;
                println!("{}", super::term::escape_text(&doc));
            }
            print_verdict(&report.verdict, term);
            let n = report.verdict.denied.len();
            println!(
                "{} denied, {} overridden, {} warnings",
                n,
                report.verdict.overridden.len(),
                report.verdict.warnings.len()
            );
        }
    }
    Ok(u8::from(report.verdict.is_denied()))
}
