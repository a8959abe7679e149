//! Writes: runs begun and finished, host and step results, last applied and failed commits.
//! Each public method is one IMMEDIATE transaction ([`StateDb::write`]).

use rusqlite::{params, Connection};
use serde_json::Value;

use super::query::collect_rows;
use super::types::{
    Cause, HostRecord, HostResultStatus, NewRun, NotReached, RunEvent, RunEventKind, RunId,
    RunKind, RunResult, StepMeta, StepRecord, StepResultStatus, Trigger,
};
use super::{json_text, ms, now_ms, StateDb, StateError};
use crate::engine::{HostPlan, HostRun, HostStatus, StepStatus};
use crate::modules::redact;

fn step_status(s: StepStatus) -> StepResultStatus {
    match s {
        StepStatus::InSync => StepResultStatus::InSync,
        StepStatus::Changed => StepResultStatus::Changed,
        StepStatus::Failed => StepResultStatus::Failed,
        StepStatus::Skipped => StepResultStatus::Skipped,
    }
}

fn host_status(s: HostStatus) -> HostResultStatus {
    match s {
        HostStatus::Converged => HostResultStatus::Converged,
        HostStatus::Failed => HostResultStatus::Failed,
        HostStatus::Unreachable => HostResultStatus::Unreachable,
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The most of a diff a row keeps (the rest is cut, saying so).
pub const MAX_STORED_DIFF: usize = 16 * 1024;

/// The bounded unified diff (observed → desired) of a non-sensitive file step's change; the
/// engine removed the content of sensitive steps, so they have none.
pub(crate) fn bounded_diff(
    step: &crate::engine::StepRef,
    c: &crate::modules::Change,
) -> Option<String> {
    if step.sensitive {
        return None;
    }
    let mut d = crate::report::plan::content_diff(&step.target, c)?;
    if d.len() > MAX_STORED_DIFF {
        let mut cut = MAX_STORED_DIFF;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
        d.push_str("\n(diff cut at 16 KiB)\n");
    }
    Some(d)
}

/// Cause and origin of a step's change as `meta` says, else the run kind's default: drift in
/// a correction or drift check is `corrective`; an apply's change is `intended`.
fn attribution(
    meta: &StepMeta,
    address: &str,
    all_drift: bool,
) -> (Option<Cause>, Option<super::types::Origin>) {
    match meta.attribution.get(address).or(meta.every.as_ref()) {
        Some(a) => (Some(a.cause), a.origin.clone()),
        None if all_drift || meta.drift.contains(address) => (Some(Cause::Corrective), None),
        None => (None, None),
    }
}

/// The host and step rows of an apply (kinds `apply` and `correction`): only steps that are
/// not in sync get a row; fields of sensitive (or unknown) steps are redacted.
fn apply_record(host: &HostRun, meta: &StepMeta, all_drift: bool) -> HostRecord {
    let steps = host
        .steps
        .iter()
        .filter(|s| s.status != StepStatus::InSync)
        .map(|s| {
            let address = s.step.address.to_string();
            StepRecord {
                module: s.step.module.to_string(),
                status: step_status(s.status),
                change: s.change.as_ref().map(|c| c.kind),
                // The engine redacted a sensitive step already; redacting again is a no-op
                // that keeps this table safe whatever hands it a result.
                fields: match &s.change {
                    Some(c) if s.step.sensitive => redact(&c.fields),
                    Some(c) => c.fields.clone(),
                    None => Vec::new(),
                },
                error: s.error.clone(),
                duration_ms: s.duration_ms,
                drift: s.change.is_some() && (all_drift || meta.drift.contains(&address)),
                cause: s
                    .change
                    .as_ref()
                    .and_then(|_| attribution(meta, &address, all_drift).0),
                origin: s
                    .change
                    .as_ref()
                    .and_then(|_| attribution(meta, &address, all_drift).1),
                diff: s.change.as_ref().and_then(|c| bounded_diff(&s.step, c)),
                address,
            }
        })
        .collect();
    let now = now_ms();
    let events = host
        .handlers
        .iter()
        .map(|h| RunEvent {
            kind: RunEventKind::Refresh,
            address: h.step.address.to_string(),
            ok: h.ok,
            error: h.error.clone(),
        })
        .collect();
    HostRecord {
        host: host.host.name.clone(),
        status: host_status(host.status),
        error: host.error.clone(),
        changed: host.changed(),
        in_sync: host
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::InSync)
            .count(),
        duration_ms: u64::try_from(ms(host.duration)).unwrap_or(0),
        round_trips: serde_json::to_value(host.round_trips).unwrap_or(Value::Null),
        steps,
        started_at: Some(now.saturating_sub(ms(host.duration))),
        finished_at: Some(now),
        not_reached: None,
        events,
    }
}

/// The host and step rows of a drift check: drifted steps (marked drift) and steps whose
/// probe failed; fields of sensitive steps are redacted.
fn drift_record(plan: &HostPlan, meta: &StepMeta) -> HostRecord {
    let steps = plan
        .steps
        .iter()
        .filter_map(|s| {
            let (status, change, fields, error, diff) = match &s.change {
                Ok(ch) if ch.is_change() => {
                    let fields = if s.step.sensitive {
                        redact(&ch.fields)
                    } else {
                        ch.fields.clone()
                    };
                    let diff = bounded_diff(&s.step, ch);
                    (StepResultStatus::Drifted, Some(ch.kind), fields, None, diff)
                }
                Ok(_) => return None,
                Err(e) => (
                    StepResultStatus::Failed,
                    None,
                    Vec::new(),
                    Some(e.clone()),
                    None,
                ),
            };
            let address = s.step.address.to_string();
            let (cause, origin) = match change {
                Some(_) => attribution(meta, &address, true),
                None => (None, None),
            };
            Some(StepRecord {
                module: s.step.module.to_string(),
                status,
                drift: change.is_some(),
                change,
                fields,
                error,
                duration_ms: 0,
                cause,
                origin,
                diff,
                address,
            })
        })
        .collect();
    let now = now_ms();
    let status = match &plan.error {
        // Not observed: whether it drifted is unknown (never "in sync").
        Some(_) => HostResultStatus::Unknown,
        None if plan.step_errors() > 0 => HostResultStatus::Failed,
        None if plan.changes() > 0 => HostResultStatus::Drifted,
        None => HostResultStatus::InSync,
    };
    HostRecord {
        host: plan.host.name.clone(),
        status,
        error: plan.error.as_ref().map(|e| e.to_string()),
        changed: plan.changes(),
        in_sync: plan
            .steps
            .iter()
            .filter(|s| matches!(&s.change, Ok(c) if !c.is_change()))
            .count(),
        duration_ms: u64::try_from(ms(plan.duration)).unwrap_or(0),
        round_trips: serde_json::to_value(plan.round_trips).unwrap_or(Value::Null),
        steps,
        started_at: Some(now.saturating_sub(ms(plan.duration))),
        finished_at: Some(now),
        not_reached: None,
        events: Vec::new(),
    }
}

/// `result` is now the newest result of `host` in its run's environment (`host_latest`, which
/// the console's fleet page reads: kept in the transaction that records the result).
fn note_latest(c: &Connection, run: &RunId, host: &str, result: i64) -> Result<(), StateError> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO host_latest (environment, host, result_id)
         SELECT environment, ?2, ?3 FROM runs WHERE id = ?1
         ON CONFLICT (environment, host) DO UPDATE SET result_id = excluded.result_id",
    )?;
    stmt.execute(params![run.0, host, result])?;
    Ok(())
}

fn insert_host(c: &Connection, run: &RunId, h: &HostRecord) -> Result<(), StateError> {
    c.execute(
        "INSERT INTO host_results (run_id, host, status, error, changed, in_sync,
            duration_ms, round_trips, started_at, finished_at, not_reached)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            run.0,
            h.host,
            h.status,
            h.error,
            count(h.changed),
            count(h.in_sync),
            i64::try_from(h.duration_ms).unwrap_or(i64::MAX),
            json_text(&h.round_trips),
            h.started_at,
            h.finished_at,
            h.not_reached.as_ref().map(json_text)
        ],
    )?;
    if h.status != HostResultStatus::NotReached {
        note_latest(c, run, &h.host, c.last_insert_rowid())?;
    }
    let mut events = c.prepare_cached(
        "INSERT INTO run_events (run_id, host, kind, address, ok, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in &h.events {
        events.execute(params![run.0, h.host, e.kind, e.address, e.ok, e.error])?;
    }
    let mut stmt = c.prepare_cached(
        "INSERT INTO step_results (run_id, host, address, module, status, change_kind,
            fields, error, duration_ms, drift, cause, origin, diff)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for s in &h.steps {
        stmt.execute(params![
            run.0,
            h.host,
            s.address,
            s.module,
            s.status,
            s.change.map(|k| super::types::enum_text(&k)),
            json_text(&s.fields),
            s.error,
            i64::try_from(s.duration_ms).unwrap_or(i64::MAX),
            s.drift,
            s.cause,
            s.origin.as_ref().map(json_text),
            s.diff
        ])?;
    }
    Ok(())
}

impl StateDb {
    /// Starts a run; it stays `running` until [`finish_run`](StateDb::finish_run).
    pub fn begin_run(&self, new: &NewRun) -> Result<RunId, StateError> {
        self.write(|c, _| {
            let now = now_ms();
            let id = RunId::generate(now);
            c.execute(
                "INSERT INTO runs (id, environment, commit_id, signer_principal,
                    signer_fingerprint, kind, trigger, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.0,
                    new.environment,
                    new.commit,
                    new.signer.as_ref().map(|s| &s.principal),
                    new.signer.as_ref().map(|s| &s.fingerprint),
                    new.kind,
                    new.trigger,
                    now
                ],
            )?;
            Ok(id)
        })
    }

    /// (environment, kind) of an unfinished run, or the reason it cannot take results.
    fn open_run(&self, c: &Connection, run: &RunId) -> Result<(String, RunKind), StateError> {
        let mut stmt =
            c.prepare_cached("SELECT environment, kind, finished_at FROM runs WHERE id = ?1")?;
        let at = self.row_at("runs", &run.0);
        let row = collect_rows(&mut stmt, params![run.0], |r| {
            Ok((
                at.get::<String>(r, "environment")?,
                at.parse::<RunKind>(r, "kind", false)?,
                at.get::<Option<i64>>(r, "finished_at")?,
            ))
        })?
        .pop();
        match row {
            None => Err(StateError::NoSuchRun { id: run.0.clone() }),
            Some((_, _, Some(_))) => Err(StateError::AlreadyFinished { id: run.0.clone() }),
            Some((env, kind, None)) => Ok((env, kind)),
        }
    }

    /// Records one host's apply (kinds `apply` and `correction`). Only steps that are not in
    /// sync get a row. Fields of sensitive steps are redacted. A converged host has no open
    /// drift left: its open findings are resolved by this run. In the same transaction, the
    /// host's managed resources: each step left in sync as `declared` (the host's
    /// [`Managed::declared`](crate::prune::Managed::declared)) describes it, and removals
    /// that converged taken out.
    pub fn record_host(
        &self,
        run: &RunId,
        host: &HostRun,
        meta: &StepMeta,
        declared: &[crate::prune::Managed],
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let (env, kind) = self.open_run(c, run)?;
            let all_drift = matches!(kind, RunKind::Correction | RunKind::DriftCheck);
            insert_host(c, run, &apply_record(host, meta, all_drift))?;
            super::managed::update(c, &env, run, host, declared)?;
            if host.status == HostStatus::Converged {
                super::drift::resolve_host(c, run, &env, &host.host.name, now_ms())?;
            }
            Ok(())
        })
    }

    /// Records one host's drift check: drifted steps get a row (marked drift) and an open
    /// finding (created or refreshed); when the host was observed, open findings of steps now
    /// in sync (or no longer declared) are resolved. Steps whose probe failed keep theirs.
    pub fn record_drift_check(
        &self,
        run: &RunId,
        plan: &HostPlan,
        meta: &StepMeta,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let (env, _) = self.open_run(c, run)?;
            let record = drift_record(plan, meta);
            insert_host(c, run, &record)?;
            if plan.error.is_some() {
                return Ok(());
            }
            super::drift::sync_findings(c, run, &env, &record, now_ms())
        })
    }

    /// Records hosts the run did not reach (status `not_reached`) and why.
    pub fn record_not_reached(
        &self,
        run: &RunId,
        hosts: &[String],
        why: &NotReached,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            self.open_run(c, run)?;
            for host in hosts {
                let record = HostRecord {
                    host: host.clone(),
                    status: HostResultStatus::NotReached,
                    error: None,
                    changed: 0,
                    in_sync: 0,
                    duration_ms: 0,
                    round_trips: Value::Null,
                    steps: Vec::new(),
                    started_at: None,
                    finished_at: None,
                    not_reached: Some(why.clone()),
                    events: Vec::new(),
                };
                insert_host(c, run, &record)?;
            }
            Ok(())
        })
    }

    /// Finishes a run and signs its record into the audit chain. `summary` is free-form JSON
    /// (counts, the refusal reason, ...), stored and signed as given.
    pub fn finish_run(
        &self,
        run: &RunId,
        result: RunResult,
        summary: &Value,
    ) -> Result<(), StateError> {
        if result == RunResult::Running {
            return Err(StateError::InvalidResult(result));
        }
        self.write(|c, key| {
            self.open_run(c, run)?;
            c.execute(
                "UPDATE runs SET finished_at = MAX(?1, started_at), result = ?2, summary = ?3
                 WHERE id = ?4",
                params![now_ms(), result, json_text(summary), run.0],
            )?;
            self.sign_in(c, key, run)
        })
    }

    /// Sets the summary of an unfinished run before it ends (a manual run's provenance, so
    /// that a run stopped midway still says who ran it and why); [`finish_run`] replaces it.
    ///
    /// [`finish_run`]: StateDb::finish_run
    pub fn set_run_summary(&self, run: &RunId, summary: &Value) -> Result<(), StateError> {
        self.write(|c, _| {
            self.open_run(c, run)?;
            c.execute(
                "UPDATE runs SET summary = ?1 WHERE id = ?2",
                params![json_text(summary), run.0],
            )?;
            Ok(())
        })
    }

    /// Marks every unfinished run `interrupted` and signs it. Only the daemon holding the
    /// lock calls this, so no unfinished run can belong to a live daemon. A summary the run
    /// set while it ran (a manual run's provenance) is kept, with `interrupted` added.
    pub(crate) fn mark_interrupted(&self) -> Result<usize, StateError> {
        self.write(|c, key| {
            let rows: Vec<(String, String)> = c
                .prepare(
                    "SELECT id, summary FROM runs WHERE finished_at IS NULL ORDER BY started_at, id",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let ids: Vec<&String> = rows.iter().map(|(id, _)| id).collect();
            let note = "the daemon stopped before this run finished; marked when it restarted. Results recorded before it stopped are kept; the next run observes the hosts and converges.";
            for (id, before) in &rows {
                let mut summary = match serde_json::from_str::<Value>(before) {
                    Ok(Value::Object(o)) => o,
                    _ => serde_json::Map::new(),
                };
                summary.insert("interrupted".into(), note.into());
                c.execute(
                    "UPDATE runs SET finished_at = MAX(?1, started_at), result = ?2,
                        summary = ?3 WHERE id = ?4",
                    params![
                        now_ms(),
                        RunResult::Interrupted,
                        Value::Object(summary).to_string(),
                        id
                    ],
                )?;
                self.sign_in(c, key, &RunId(id.clone()))?;
            }
            if !ids.is_empty() {
                tracing::warn!(runs = ids.len(), "marked runs left unfinished by a stopped daemon as interrupted");
            }
            Ok(ids.len())
        })
    }

    /// Records a deliberate reset of the state (`--accept-state-reset`) as a signed run: the first
    /// record of the new chain says that the history before it was deleted, and what showed it.
    pub(crate) fn record_reset(
        &self,
        found: &[String],
        db_existed: bool,
    ) -> Result<(), StateError> {
        let run = self.begin_run(&NewRun {
            environment: "*".into(),
            commit: None,
            signer: None,
            kind: RunKind::StateReset,
            trigger: Trigger::Startup,
        })?;
        let summary = serde_json::json!({
            "state_reset": "the daemon had run here before but its history was gone; started over with --accept-state-reset",
            "found": found,
            "database": if db_existed { "present, without runs" } else { "missing" },
        });
        tracing::warn!(found = ?found, "state reset accepted: the audit chain starts again, and says so");
        self.finish_run(&run, RunResult::NoChange, &summary)
    }

    /// Marks a host of an unfinished apply run `unhealthy`: it converged, but the health
    /// checks that followed failed there. `error` says which checks (never a sensitive
    /// value: health checks are declared in the repo, not rendered from secrets).
    pub fn mark_unhealthy(&self, run: &RunId, host: &str, error: &str) -> Result<(), StateError> {
        self.write(|c, _| {
            self.open_run(c, run)?;
            c.execute(
                "UPDATE host_results SET status = ?1, error = ?2 WHERE run_id = ?3 AND host = ?4",
                params![HostResultStatus::Unhealthy, error, run.0, host],
            )?;
            Ok(())
        })
    }

    pub fn set_last_applied(&self, env: &str, commit: &str, run: &RunId) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute(
                "INSERT INTO last_applied (environment, commit_id, run_id, applied_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (environment) DO UPDATE SET commit_id = excluded.commit_id,
                    run_id = excluded.run_id, applied_at = excluded.applied_at",
                params![env, commit, run.0, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Records that `commit` failed in `env`: the daemon does not retry it until a new
    /// commit arrives.
    pub fn mark_failed(
        &self,
        env: &str,
        commit: &str,
        run: Option<&RunId>,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute(
                "INSERT INTO failed_commits (environment, commit_id, run_id, failed_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (environment, commit_id) DO UPDATE SET run_id = excluded.run_id,
                    failed_at = excluded.failed_at",
                params![env, commit, run.map(|r| &r.0), now_ms()],
            )?;
            Ok(())
        })
    }
}
