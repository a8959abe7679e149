//! `plumb apply`: wave by wave, like the daemon (env.yaml's `rollout` and `health_checks`),
//! unless `--no-waves`. A failed wave stops the apply: later waves are never touched.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::engine::{HostRun, HostStatus};
use crate::model::Host;
use crate::rollout::{self, WavePlan, WaveSummary};

use super::args::{runtime, HostArgs, OutputFormat};
use super::facts::{prepare, Prepared};
use super::manual::{self, ManualArgs};
use super::term::{escape, print_json, print_lines, Paint, Term};

/// `plumb apply` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Apply every selected host at once, ignoring the environment's rollout waves and
    /// health checks (a broken commit then reaches every host).
    #[arg(long)]
    pub no_waves: bool,
    /// When a wave fails, leave its hosts on this commit (no rollback to their last good
    /// commit; see `plumb rollback`).
    #[arg(long)]
    pub no_rollback: bool,
    #[command(flatten)]
    pub manual: ManualArgs,
}

/// What `--no-waves` prints on stderr, whatever the output format.
pub const NO_WAVES_WARNING: &str = "--no-waves: applying every selected host at once, \
     WITHOUT the environment's rollout waves and health checks; a broken commit reaches \
     every host";

/// Makes every host match the repo, wave by wave. Exit 0 converged, 1 if any host failed, a
/// wave stopped the apply or the trust root refused the tree (recorded as a refused `manual`
/// run with `--state`).
pub fn run(args: ApplyArgs, term: Term) -> anyhow::Result<u8> {
    let ApplyArgs {
        hosts: args,
        no_waves,
        no_rollback,
        manual: mut m,
    } = args;
    // One `--allowed-signers` verifies HEAD for both the manual-run gate and policy overrides.
    m.allowed_signers.clone_from(&args.policy.allowed_signers);
    let output = args.output.output;
    let recorder = match manual::start(&m, &args, term)? {
        manual::Gate::Refused => return Ok(1),
        manual::Gate::Go(r) => r,
    };
    let rt = runtime()?;
    let Some(mut prep) = prepare(&args.target, &args.conn, output, term, &rt)? else {
        return Ok(1);
    };
    let env = args.target.env.clone();
    if let Some(rec) = &recorder {
        prep.prune_from(rec.0.db(), &env)?;
    }
    let connector = args.conn.connector();
    // The selected hosts: rendered ones first, then those whose facts could not be gathered.
    let selected: Vec<Host> = prep
        .hosts
        .iter()
        .map(|h| h.host.clone())
        .chain(prep.ungathered.iter().map(|u| u.host.clone()))
        .collect();
    let environment = prep.repo.environments.get(&env).cloned();
    let (waves, checks) = waves_and_checks(
        environment.as_ref(),
        &selected,
        no_waves,
        args.conn.parallel,
        term,
    );
    let progress =
        (std::io::stderr().is_terminal() && output == OutputFormat::Text).then_some(Progress {
            total: selected.len(),
            done: AtomicUsize::new(0),
            paint: term.err,
        });
    // Guardrails: every selected host observed and the plans judged before any wave; the
    // waves then apply from those observations (no extra round trip).
    let (observed, verdict) = match gate(&args, &prep, connector.as_ref(), &rt, term)? {
        Gate::Denied => return Ok(1),
        Gate::Open => (None, None),
        Gate::Judged(o, v) => (Some(o), Some(v)),
    };
    let mut runs: Vec<HostRun> = Vec::new();
    let mut changed: Vec<bool> = Vec::new();
    let mut summaries: Vec<WaveSummary> = Vec::new();
    let mut stopped: Option<(String, String)> = None;
    let mut untouched: Vec<String> = Vec::new();
    for wave in &waves {
        if stopped.is_some() {
            untouched.extend(wave.hosts.iter().map(|i| selected[*i].name.clone()));
            continue;
        }
        let ctx = WaveCtx {
            env: &env,
            connector: connector.as_ref(),
            parallel: wave.max_parallel,
            progress: progress.as_ref(),
            rt: &rt,
            observed: observed.as_ref(),
        };
        let (wave_runs, wave_changed) = apply_wave(&ctx, &mut prep, wave)?;
        let summary = wave_summary(&ctx, &prep, wave, &wave_runs, &checks)?;
        if let Some((reason, _)) = rollout::stop_reason(&summary, wave.max_failed) {
            stopped = Some((wave.name.clone(), reason));
        }
        runs.extend(wave_runs);
        changed.extend(wave_changed);
        summaries.push(summary);
    }
    if let Some(rec) = recorder {
        let (r, p) = *rec;
        let limited = manual::left_out(&prep.repo, &env, &selected, &args.target.limit);
        let id = r.finish(&p, &runs, &prep.hosts, (&limited, &untouched))?;
        if output == OutputFormat::Text {
            eprintln!("{} recorded as manual run {id}", term.err.dim("plumb"));
        }
    }
    let mut report = crate::report::plan::ApplyReport::new(&env, &runs);
    for (h, c) in report.hosts.iter_mut().zip(&changed) {
        h.facts_changed = *c;
    }
    report.set_orphans(&prep.hosts);
    report.set_waves(summaries, stopped, untouched);
    report.policy = verdict;
    report.rollback = rollback_note(&report, no_rollback);
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_lines(&crate::report::plan::apply_lines(&report), term.out),
    }
    Ok(report.exit_code())
}

/// What happened to a stopped apply's hosts: `plumb apply` keeps no state of its own, so it
/// has no last good commit to go back to; `plumb rollback` does that.
fn rollback_note(report: &crate::report::plan::ApplyReport, no_rollback: bool) -> Option<String> {
    report.stopped_at_wave.as_ref()?;
    Some(if no_rollback {
        "not rolled back (--no-rollback)".to_string()
    } else {
        crate::report::plan::NO_LAST_GOOD.to_string()
    })
}

/// The waves over the selected hosts and the health checks between them: env.yaml's, or one
/// wave and no checks with `--no-waves` (warned about loudly) or without an environment.
fn waves_and_checks(
    environment: Option<&crate::model::Environment>,
    selected: &[Host],
    no_waves: bool,
    parallel: usize,
    term: Term,
) -> (Vec<WavePlan>, Vec<crate::model::HealthCheck>) {
    match (environment, no_waves) {
        (_, true) => {
            eprintln!("{}: {NO_WAVES_WARNING}", term.err.red("WARNING"));
            (
                vec![rollout::one_wave(selected.len(), parallel)],
                Vec::new(),
            )
        }
        (Some(e), false) => (
            rollout::plan_waves(&e.settings, selected, parallel),
            e.health_checks.clone(),
        ),
        (None, false) => (
            vec![rollout::one_wave(selected.len(), parallel)],
            Vec::new(),
        ),
    }
}

/// What the guardrails decided before any wave.
enum Gate {
    /// No policy is in force: each host is observed by its own apply.
    Open,
    /// Denied (printed); no host was changed.
    Denied,
    /// Allowed: the observations to apply from, and the verdict for the report.
    Judged(
        Mutex<BTreeMap<String, crate::engine::Observation>>,
        crate::policy::Verdict,
    ),
}

/// Observes every rendered host and judges the plans, when a policy is in force.
fn gate(
    args: &HostArgs,
    prep: &Prepared,
    connector: &dyn crate::engine::Connector,
    rt: &tokio::runtime::Runtime,
    term: Term,
) -> anyhow::Result<Gate> {
    if args.policy.load(&prep.repo)?.is_empty() {
        return Ok(Gate::Open);
    }
    let output = args.output.output;
    let observations = rt.block_on(crate::engine::until_signal(crate::engine::each_host(
        &prep.hosts,
        args.conn.parallel,
        |h| {
            let t = connector.connect(&h.host);
            async move { crate::engine::observe_host(h, t.as_ref()).await }
        },
    )))?;
    let plans: Vec<crate::engine::HostPlan> = observations.iter().map(|o| o.plan.clone()).collect();
    let Some(verdict) = super::plan::judge(args, prep, &plans)? else {
        return Ok(Gate::Open);
    };
    if output == OutputFormat::Text {
        super::policy::print_verdict(&verdict, term);
    }
    if verdict.is_denied() {
        let mut report = crate::report::plan::PlanReport::new(&args.target.env, "plan", &plans);
        report.policy = Some(verdict);
        match output {
            OutputFormat::Json => print_json(&report)?,
            OutputFormat::Text => eprintln!(
                "{}: denied by policy; no host was changed",
                term.err.red("error")
            ),
        }
        return Ok(Gate::Denied);
    }
    let by_name = observations
        .into_iter()
        .map(|o| (o.plan.host.name.clone(), o))
        .collect();
    Ok(Gate::Judged(Mutex::new(by_name), verdict))
}

/// What applying one wave needs.
struct WaveCtx<'a> {
    env: &'a str,
    connector: &'a dyn crate::engine::Connector,
    parallel: usize,
    progress: Option<&'a Progress>,
    rt: &'a tokio::runtime::Runtime,
    /// The guardrails' observations by host name (each used once), when a policy is in force.
    observed: Option<&'a Mutex<BTreeMap<String, crate::engine::Observation>>>,
}

/// Applies the hosts of one wave (indices into the rendered hosts, then the ungathered
/// ones). Returns their runs, and for each whether its facts changed since they were cached.
fn apply_wave(
    ctx: &WaveCtx<'_>,
    prep: &mut Prepared,
    wave: &WavePlan,
) -> anyhow::Result<(Vec<HostRun>, Vec<bool>)> {
    let rendered = prep.hosts.len();
    let members: Vec<usize> = wave
        .hosts
        .iter()
        .copied()
        .filter(|i| *i < rendered)
        .collect();
    // SIGINT/SIGTERM end the run by dropping every transport (no orphaned ssh masters).
    let connector = ctx.connector;
    let mut runs = ctx
        .rt
        .block_on(crate::engine::until_signal(crate::engine::each_host(
            members.iter().map(|i| &prep.hosts[*i]),
            ctx.parallel,
            |h| {
                let t = connector.connect(&h.host);
                let progress = ctx.progress;
                let o = ctx
                    .observed
                    .and_then(|m| m.lock().ok()?.remove(&h.host.name));
                async move {
                    let r = match o {
                        Some(o) => crate::engine::apply_observed(h, t.as_ref(), o).await,
                        None => crate::engine::apply_host(h, t.as_ref()).await,
                    };
                    if let Some(p) = progress {
                        p.host_done(&r);
                    }
                    r
                }
            },
        )))?;
    // A host whose facts changed since they were cached was not touched: render it again
    // with the facts just seen and apply that (one more probe round trip, in the report).
    let mut changed = vec![false; runs.len()];
    for (k, &i) in members.iter().enumerate() {
        let seen = runs[k].facts.clone();
        if crate::engine::facts_changed(&prep.hosts[i], seen.as_ref()) {
            let Some(facts) = seen else { continue };
            changed[k] = true;
            let before = runs[k].round_trips;
            match prep.rerender(ctx.env, i, &facts) {
                // Rendered again: the policies judged the old steps, so nothing is applied.
                Ok(()) if ctx.observed.is_some() => {
                    runs[k].error = Some(
                        "its facts changed since they were cached; nothing was applied: run \
                         apply again so the policies judge the steps rendered with them"
                            .into(),
                    );
                }
                Ok(()) => {
                    let t = connector.connect(&prep.hosts[i].host);
                    runs[k] =
                        ctx.rt
                            .block_on(crate::engine::until_signal(crate::engine::apply_host(
                                &prep.hosts[i],
                                t.as_ref(),
                            )))?;
                    runs[k].round_trips.probe += before.probe;
                }
                Err(e) => {
                    runs[k].error = Some(format!(
                        "its facts changed and rendering with them failed: {e}"
                    ));
                }
            }
        }
        runs[k].round_trips.facts = prep.facts_trips(&runs[k].host.name);
    }
    for i in wave.hosts.iter().filter(|i| **i >= rendered) {
        if let Some(u) = prep.ungathered.get(i - rendered) {
            runs.push(u.run());
            changed.push(false);
        }
    }
    Ok((runs, changed))
}

/// The wave as it ran: its failed hosts, and its health checks on the hosts that converged
/// (when no more hosts failed than its `max_failed` allows).
fn wave_summary(
    ctx: &WaveCtx<'_>,
    prep: &Prepared,
    wave: &WavePlan,
    runs: &[HostRun],
    checks: &[crate::model::HealthCheck],
) -> anyhow::Result<WaveSummary> {
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.status != HostStatus::Converged)
        .map(|r| r.host.name.clone())
        .collect();
    let due = rollout::health_due(failed.len(), runs.len(), wave.max_failed);
    let health = if due && !checks.is_empty() {
        let healthy: Vec<Host> = runs
            .iter()
            .filter(|r| r.status == HostStatus::Converged)
            .map(|r| r.host.clone())
            .collect();
        let repo = &prep.repo;
        let render = |t: &str, c: &serde_json::Value| crate::render::render_inline(repo, t, c);
        let report = ctx
            .rt
            .block_on(crate::engine::until_signal(crate::health::check_wave(
                checks,
                &healthy,
                ctx.connector,
                &render,
            )))?;
        Some(report.results)
    } else {
        None
    };
    Ok(WaveSummary {
        name: wave.name.clone(),
        hosts: runs.iter().map(|r| r.host.name.clone()).collect(),
        failed_hosts: failed,
        health,
    })
}

/// One line on stderr per finished host, on a terminal only.
struct Progress {
    total: usize,
    done: AtomicUsize,
    paint: Paint,
}

impl Progress {
    fn host_done(&self, r: &HostRun) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        eprintln!(
            "{} [{n}/{}] {} {:?} ({} changed)",
            self.paint.dim("plumb"),
            self.total,
            escape(&r.host.name),
            r.status,
            r.changed()
        );
    }
}
