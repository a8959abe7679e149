//! `plumb apply`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::HostRun;

use super::args::{runtime, HostArgs, OutputFormat};
use super::facts::prepare;
use super::manual::{self, ManualArgs};
use super::term::{escape, print_json, print_lines, Paint, Term};

/// `plumb apply`: the host arguments, and the manual run's record and gate.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub host: HostArgs,
    #[command(flatten)]
    pub manual: ManualArgs,
}

/// Makes every host match the repo. Exit 0 converged, 1 if any host failed or the trust
/// root refused the tree (recorded as a refused `manual` run with `--state`).
pub fn run(a: ApplyArgs, term: Term) -> anyhow::Result<u8> {
    let args = a.host;
    let output = args.output.output;
    let record = a.manual.state.is_some() || manual::gated(&a.manual);
    let provenance = record
        .then(|| manual::provenance(&args.target.repo, &a.manual, args.conn.identity.as_deref()))
        .transpose()?;
    let recorder = match (&a.manual.state, &provenance) {
        (Some(dir), Some(p)) => Some(manual::Recorder::begin(dir, &args.target.env, p)?),
        _ => None,
    };
    if let Some(why) = provenance
        .as_ref()
        .and_then(|p| p.refusal(manual::gated(&a.manual)))
    {
        if let (Some(r), Some(p)) = (recorder, &provenance) {
            r.refused(p, &why)?;
        }
        eprintln!("{}: apply refused: {}", term.err.red("error"), escape(&why));
        return Ok(1);
    }
    if let Some(reason) = &a.manual.break_glass {
        eprintln!(
            "{}: break glass: {}",
            term.err.yellow("warning"),
            escape(reason)
        );
    }
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
    // SIGINT/SIGTERM end the run by dropping every transport (no orphaned ssh masters).
    let mut runs = rt.block_on(crate::engine::until_signal(crate::engine::each_host(
        &prep.hosts,
        args.conn.parallel,
        |h| {
            let t = connector.connect(&h.host);
            let progress = progress.as_ref();
            async move {
                let r = crate::engine::apply_host(h, t.as_ref()).await;
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
    for i in 0..runs.len() {
        let seen = runs[i].facts.clone();
        if crate::engine::facts_changed(&prep.hosts[i], seen.as_ref()) {
            let Some(facts) = seen else { continue };
            changed[i] = true;
            let before = runs[i].round_trips;
            match prep.rerender(env, i, &facts) {
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
    if let (Some(r), Some(p)) = (recorder, &provenance) {
        let limited = manual::left_out(&prep.repo, env, &runs, &args.target.limit);
        let id = r.finish(p, &runs, &limited)?;
        if output == OutputFormat::Text {
            eprintln!("{} recorded as manual run {id}", term.err.dim("plumb"));
        }
    }
    let mut report = crate::report::plan::ApplyReport::new(env, &runs);
    for (h, c) in report.hosts.iter_mut().zip(&changed) {
        h.facts_changed = *c;
    }
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_lines(&crate::report::plan::apply_lines(&report), term.out),
    }
    Ok(report.exit_code())
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
