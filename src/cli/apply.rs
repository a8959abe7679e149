//! `plumb apply`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

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
