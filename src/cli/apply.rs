//! `plumb apply`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::HostRun;

use super::args::{runtime, HostArgs, OutputFormat};
use super::plan::desired;
use super::term::{escape, print_json, print_lines, Paint, Term};

/// Makes every host match the repo. Exit 0 converged, 1 if any host failed.
pub fn run(args: HostArgs, term: Term) -> anyhow::Result<u8> {
    let output = args.output.output;
    let Some((hosts, _)) = desired(&args.target, output, term)? else {
        return Ok(1);
    };
    let connector = args.conn.connector();
    let progress =
        (std::io::stderr().is_terminal() && output == OutputFormat::Text).then_some(Progress {
            total: hosts.len(),
            done: AtomicUsize::new(0),
            paint: term.err,
        });
    // SIGINT/SIGTERM end the run by dropping every transport (no orphaned ssh masters).
    let runs = runtime()?.block_on(crate::engine::until_signal(crate::engine::each_host(
        &hosts,
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
    let report = crate::report::plan::ApplyReport::new(&args.target.env, &runs);
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
