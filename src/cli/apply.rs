//! `plumb apply`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt as _;

use crate::engine::HostRun;

use super::args::{runtime, HostArgs, OutputFormat};
use super::facts::prepare;
use super::term::{escape, print_json, print_lines, Paint, Term};

/// Makes every host match the repo. Exit 0 converged, 1 if any host failed.
pub fn run(args: HostArgs, term: Term) -> anyhow::Result<u8> {
    let output = args.output.output;
    let rt = runtime()?;
    let Some(mut prep) = prepare(&args.target, &args.conn, output, term, &rt)? else {
        return Ok(1);
    };
    let env = &args.target.env;
    let connector = args.conn.connector();
    let progress =
        (std::io::stderr().is_terminal() && output == OutputFormat::Text).then_some(Progress {
            total: prep.hosts.len(),
            done: AtomicUsize::new(0),
            paint: term.err,
        });
    // Guardrails: observe every host, judge the plans, and only then apply from those
    // observations (no extra round trip). Without policies, each host is observed and
    // applied in one go.
    let set = args.policy.load(&prep.repo)?;
    let (mut runs, verdict) = if set.is_empty() {
        let runs = rt.block_on(crate::engine::until_signal(apply_each(
            &prep.hosts,
            connector.as_ref(),
            args.conn.parallel,
            progress.as_ref(),
        )))?;
        (runs, None)
    } else {
        let gated = Gated {
            args: &args,
            prep: &prep,
            connector: connector.as_ref(),
            progress: progress.as_ref(),
            term,
        };
        match gated.run(&rt)? {
            Some(r) => r,
            None => return Ok(1),
        }
    };
    // A host whose facts changed since they were cached was not touched: render it again
    // with the facts just seen and apply that (one more probe round trip, in the report).
    let mut changed = vec![false; runs.len()];
    for i in 0..runs.len() {
        let seen = runs[i].facts.clone();
        if crate::engine::facts_changed(&prep.hosts[i], seen.as_ref()) {
            let Some(facts) = seen else { continue };
            changed[i] = true;
            let before = runs[i].round_trips;
            match prep.rerender(env, i, &facts) {
                // Rendered again: judged again before anything is applied (below).
                Ok(()) if !set.is_empty() => {
                    runs[i].error = Some(
                        "its facts changed since they were cached; nothing was applied: run \
                         apply again so the policies judge the steps rendered with them"
                            .into(),
                    );
                }
                Ok(()) => {
                    let t = connector.connect(&prep.hosts[i].host);
                    runs[i] = rt.block_on(crate::engine::until_signal(
                        crate::engine::apply_host(&prep.hosts[i], t.as_ref()),
                    ))?;
                    runs[i].round_trips.probe += before.probe;
                }
                Err(e) => {
                    runs[i].error = Some(format!(
                        "its facts changed and rendering with them failed: {e}"
                    ));
                }
            }
        }
        runs[i].round_trips.facts = prep.facts_trips(&runs[i].host.name);
    }
    runs.extend(prep.ungathered.iter().map(|u| u.run()));
    let mut report = crate::report::plan::ApplyReport::new(env, &runs);
    report.policy = verdict;
    for (h, c) in report.hosts.iter_mut().zip(&changed) {
        h.facts_changed = *c;
    }
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_lines(&crate::report::plan::apply_lines(&report), term.out),
    }
    Ok(report.exit_code())
}

/// An apply under guardrails: every host observed, the plans judged, then applied from those
/// observations.
struct Gated<'a> {
    args: &'a HostArgs,
    prep: &'a super::facts::Prepared,
    connector: &'a dyn crate::engine::Connector,
    progress: Option<&'a Progress>,
    term: Term,
}

impl Gated<'_> {
    /// `None`: denied (printed); nothing was changed.
    fn run(
        &self,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Option<(Vec<HostRun>, Option<crate::policy::Verdict>)>> {
        let (args, prep, output) = (self.args, self.prep, self.args.output.output);
        let observations = rt.block_on(crate::engine::until_signal(crate::engine::each_host(
            &prep.hosts,
            args.conn.parallel,
            |h| {
                let t = self.connector.connect(&h.host);
                async move { crate::engine::observe_host(h, t.as_ref()).await }
            },
        )))?;
        let plans: Vec<crate::engine::HostPlan> =
            observations.iter().map(|o| o.plan.clone()).collect();
        let verdict = super::plan::judge(args, prep, &plans)?;
        if let (Some(v), OutputFormat::Text) = (&verdict, output) {
            super::policy::print_verdict(v, self.term);
        }
        if verdict.as_ref().is_some_and(|v| v.is_denied()) {
            let mut report = crate::report::plan::PlanReport::new(&args.target.env, "plan", &plans);
            report.policy = verdict;
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => eprintln!(
                    "{}: denied by policy; no host was changed",
                    self.term.err.red("error")
                ),
            }
            return Ok(None);
        }
        let runs = rt.block_on(crate::engine::until_signal(apply_observed_each(
            &prep.hosts,
            observations,
            self.connector,
            args.conn.parallel,
            self.progress,
        )))?;
        Ok(Some((runs, verdict)))
    }
}

async fn apply_each(
    hosts: &[crate::render::DesiredHost],
    connector: &dyn crate::engine::Connector,
    parallel: usize,
    progress: Option<&Progress>,
) -> Vec<HostRun> {
    crate::engine::each_host(hosts, parallel, |h| {
        let t = connector.connect(&h.host);
        async move {
            let r = crate::engine::apply_host(h, t.as_ref()).await;
            if let Some(p) = progress {
                p.host_done(&r);
            }
            r
        }
    })
    .await
}

async fn apply_observed_each(
    hosts: &[crate::render::DesiredHost],
    observations: Vec<crate::engine::Observation>,
    connector: &dyn crate::engine::Connector,
    parallel: usize,
    progress: Option<&Progress>,
) -> Vec<HostRun> {
    let slots: Vec<std::sync::Mutex<Option<crate::engine::Observation>>> = observations
        .into_iter()
        .map(|o| std::sync::Mutex::new(Some(o)))
        .collect();
    let indexed: Vec<(usize, &crate::render::DesiredHost)> = hosts.iter().enumerate().collect();
    let futures = indexed.into_iter().map(|(i, h)| {
        let t = connector.connect(&h.host);
        let o = slots[i].lock().ok().and_then(|mut s| s.take());
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
    });
    futures::stream::iter(futures)
        .buffered(parallel.max(1))
        .collect()
        .await
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
