//! Break glass is alerted (issue 19, point 6): `plumb apply --state DIR --break-glass
//! "<reason>"` records a `manual` run in the daemon's state from another process; the daemon
//! looks for manual runs it has not seen at each tick of its main loop (every second, and at
//! start, so a run recorded while it was down is seen too), raises `break_glass` for each one
//! that broke glass — who (local user, SSH identity), from what (the commit, or the
//! uncommitted tree's hash), why, on which hosts, with a link to the run — and remembers every
//! manual run it looked at in the state (`manual_runs_seen`), so each is alerted exactly once,
//! across restarts too. A refused apply (the gate held) carries no break-glass reason and
//! raises nothing.

use serde_json::json;

use crate::alert::AlertEvent;
use crate::state::{HostResultStatus, ManualSummary, RunDetail};

use super::policy::AlertSpec;
use super::{lock, Daemon};

/// Most manual runs looked at per tick (the rest wait for the next one).
const MANUAL_RUNS_PER_TICK: usize = 16;

/// The `break_glass` alert of a finished manual run, or `None` when it did not break glass.
/// Pure.
pub(super) fn break_glass_alert(run: &RunDetail) -> Option<AlertSpec> {
    let summary: ManualSummary = serde_json::from_value(run.run.summary.clone()).ok()?;
    let p = &summary.manual;
    let reason = p.break_glass.as_deref()?;
    let hosts: Vec<String> = run
        .hosts
        .iter()
        .filter(|h| h.status != HostResultStatus::NotReached)
        .map(|h| h.host.clone())
        .collect();
    let from = match (&p.head, p.dirty) {
        (Some(head), false) => format!(
            "commit {}{}",
            head.get(..12).unwrap_or(head),
            p.unverified
                .as_ref()
                .map(|why| format!(" (not verified: {why})"))
                .unwrap_or_default()
        ),
        _ => format!(
            "an uncommitted tree (sha256 {})",
            p.tree_sha256.get(..12).unwrap_or(&p.tree_sha256)
        ),
    };
    let message = format!(
        "break glass: {} applied {from} to {} in {} with {}, bypassing the trust root; reason: {reason} (result: {})",
        p.user,
        match hosts.len() {
            0 => "no host".to_string(),
            1 => hosts[0].clone(),
            n => format!("{n} hosts ({})", hosts.join(", ")),
        },
        run.run.environment,
        p.identity,
        run.run.result,
    );
    Some(AlertSpec {
        event: AlertEvent::BreakGlass,
        hosts: hosts.clone(),
        message,
        details: json!({
            "run": run.run.id.0,
            "user": p.user,
            "identity": p.identity,
            "commit": p.commit(),
            "head": p.head,
            "dirty": p.dirty,
            "tree_sha256": p.tree_sha256,
            "diff_sha256": p.diff_sha256,
            "unverified": p.unverified,
            "reason": reason,
            "hosts": hosts,
            "result": run.run.result,
        }),
    })
}

impl Daemon {
    /// Looks at the manual runs recorded since the last tick; raises `break_glass` once for
    /// each that broke glass. Each run is marked seen before it is alerted, so a failure
    /// between the two loses one alert rather than paging twice (both are logged).
    pub(super) fn alert_manual_runs(&self) {
        let unseen = match lock(&self.db).unseen_manual_runs(MANUAL_RUNS_PER_TICK) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "cannot look for manual runs: break-glass alerts wait for the next tick");
                return;
            }
        };
        for id in unseen {
            let detail = match lock(&self.db).run(&id) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(run = %id, error = %e, code = e.code(), "cannot read a manual run: not alerted");
                    let _ = lock(&self.db).mark_manual_run_seen(&id, false);
                    continue;
                }
            };
            let spec = break_glass_alert(&detail);
            if let Err(e) = lock(&self.db).mark_manual_run_seen(&id, spec.is_some()) {
                tracing::error!(run = %id, error = %e, code = e.code(), "cannot remember a manual run as seen: not alerted now, tried again at the next tick");
                continue;
            }
            let Some(spec) = spec else { continue };
            tracing::warn!(environment = %detail.run.environment, run = %id, "break glass: {}", spec.message);
            let mut a = self.new_alert(
                spec.event,
                Some(&detail.run.environment),
                detail.run.commit.as_deref(),
                spec.hosts,
                spec.message,
                spec.details,
            );
            a.signer = detail.run.signer.as_ref().map(|s| s.principal.clone());
            self.alert(a);
        }
    }
}
