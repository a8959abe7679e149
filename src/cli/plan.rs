//! `plumb plan` (and the host side shared with `drift`).

use super::args::{runtime, HostArgs, OutputFormat};
use super::facts::prepare;
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

/// `plumb plan` and `plumb drift` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// The state directory (the daemon's, or one `plumb apply --state` records in): what it
    /// says plumb applied on a host and the repo no longer declares there is shown as
    /// `- remove` (prune on) or `? orphaned`. Without it nothing is known to be managed.
    #[arg(long, value_name = "DIR")]
    pub state: Option<std::path::PathBuf>,
}

/// Probes every host and prints what differs. Exit 0 nothing, 2 changes/drift, 1 error.
pub fn run(plan_args: PlanArgs, kind: PlanKind, term: Term) -> anyhow::Result<u8> {
    let args = plan_args.hosts;
    let output = args.output.output;
    let rt = runtime()?;
    let Some(mut prep) = prepare(&args.target, &args.conn, output, term, &rt)? else {
        return Ok(1);
    };
    let env = &args.target.env;
    if let Some(dir) = &plan_args.state {
        match crate::state::StateDb::open_inspect(dir) {
            Ok(db) => prep.prune_from(&db, env)?,
            // Nothing recorded there yet: nothing is managed.
            Err(crate::state::StateError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let connector = args.conn.connector();
    let mut plans = rt.block_on(crate::engine::until_signal(crate::engine::plan_all(
        &prep.hosts,
        connector.as_ref(),
        args.conn.parallel,
    )))?;
    // Facts ride along with the probe: a host whose facts changed since they were cached
    // is rendered again and probed again (one more round trip, said in the report).
    let mut changed = vec![false; plans.len()];
    for i in 0..plans.len() {
        let seen = plans[i].facts.clone();
        if crate::engine::facts_changed(&prep.hosts[i], seen.as_ref()) {
            let Some(facts) = seen else { continue };
            changed[i] = true;
            let before = plans[i].round_trips;
            plans[i] = match prep.rerender(env, i, &facts) {
                Ok(()) => {
                    let t = connector.connect(&prep.hosts[i].host);
                    rt.block_on(crate::engine::until_signal(crate::engine::plan_host(
                        &prep.hosts[i],
                        t.as_ref(),
                    )))?
                }
                Err(e) => {
                    let mut p = plans[i].clone();
                    p.steps.clear();
                    p.error = Some(crate::engine::HostError::Script(format!(
                        "its facts changed and rendering with them failed: {e}"
                    )));
                    p
                }
            };
            plans[i].round_trips.probe += before.probe;
        }
        plans[i].round_trips.facts = prep.facts_trips(&plans[i].host.name);
    }
    let verdict = match kind {
        PlanKind::Plan => judge(&args, &prep, &plans)?,
        PlanKind::Drift => None,
    };
    plans.extend(prep.ungathered.iter().map(|u| u.plan()));
    let mut report =
        crate::report::plan::PlanReport::new(env, kind.as_str(), &plans).with_skipped(&prep.hosts);
    report.set_orphans(&prep.hosts);
    if let (Some(v), OutputFormat::Text) = (&verdict, output) {
        super::policy::print_verdict(v, term);
    }
    report.policy = verdict;
    for (h, c) in report.hosts.iter_mut().zip(&changed) {
        h.facts_changed = *c;
    }
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_lines(&crate::report::plan::plan_lines(&report), term.out),
    }
    Ok(report.exit_code())
}

/// The policies' verdict on the plans of `prep.hosts` (`None` when no policy is in force).
pub fn judge(
    args: &HostArgs,
    prep: &super::facts::Prepared,
    plans: &[crate::engine::HostPlan],
) -> anyhow::Result<Option<crate::policy::Verdict>> {
    let set = args.policy.load(&prep.repo)?;
    if set.is_empty() {
        return Ok(None);
    }
    let (ctx, approvers) = args.policy.context(&args.target.repo, &args.target.env)?;
    let refs: Vec<&crate::engine::HostPlan> = plans.iter().take(prep.hosts.len()).collect();
    let findings = crate::policy::judge_plans(&set, &ctx, &prep.hosts, &refs)?;
    Ok(Some(super::policy::verdict(&ctx, findings, &approvers)))
}
