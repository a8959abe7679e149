//! Reads: runs, their results, last applied and failed commits, the audit head. Every row is
//! read into its type; one that does not fit is [`StateError::Corrupt`].

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Params, Row, Statement};

use super::error::RowAt;
use super::filter::RunFilter;
use super::open::daemon_running;
use super::types::{
    AuditHead, HostRecord, LastApplied, RunDetail, RunId, RunRecord, RunResult, Signer, StepRecord,
};
use super::{StateDb, StateError};

/// Every row of `stmt`, each converted by `f`; the first error stops.
pub(crate) fn collect_rows<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    mut f: impl FnMut(&Row<'_>) -> Result<T, StateError>,
) -> Result<Vec<T>, StateError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// Like [`collect_rows`], each row named by its `key` column for [`StateError::Corrupt`].
pub(crate) fn collect_typed<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    (path, table, key): (&Path, &'static str, &str),
    mut f: impl FnMut(&RowAt<'_>, &Row<'_>) -> Result<T, StateError>,
) -> Result<Vec<T>, StateError> {
    collect_rows(stmt, params, |r| {
        let id = match r.get_ref(key)? {
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            other => format!("{other:?}"),
        };
        f(
            &RowAt {
                path,
                table,
                id: &id,
            },
            r,
        )
    })
}

/// The signer columns: both or neither.
pub(crate) fn signer(at: &RowAt<'_>, r: &Row<'_>) -> Result<Option<Signer>, StateError> {
    let principal: Option<String> = at.get(r, "signer_principal")?;
    let fingerprint: Option<String> = at.get(r, "signer_fingerprint")?;
    match (principal, fingerprint) {
        (None, None) => Ok(None),
        (Some(principal), Some(fingerprint)) => Ok(Some(Signer {
            principal,
            fingerprint,
        })),
        _ => Err(at.corrupt(
            "`signer` (`signer_principal` and `signer_fingerprint` are both set or both empty)",
        )),
    }
}

/// The host and step results of a run, in the order they were recorded.
pub(crate) fn read_hosts(
    c: &Connection,
    path: &Path,
    run_id: &str,
) -> Result<Vec<HostRecord>, StateError> {
    let mut hosts = c.prepare_cached(
        "SELECT id, host, status, error, changed, in_sync, duration_ms, round_trips,
            started_at, finished_at, not_reached
         FROM host_results WHERE run_id = ?1 ORDER BY id",
    )?;
    let mut steps = c.prepare_cached(
        "SELECT id, address, module, status, change_kind, fields, error, duration_ms, drift,
            cause, origin, diff
         FROM step_results WHERE run_id = ?1 AND host = ?2 ORDER BY id",
    )?;
    let mut events = c.prepare_cached(
        "SELECT id, kind, address, ok, error FROM run_events
         WHERE run_id = ?1 AND host = ?2 ORDER BY id",
    )?;
    let at = (path, "host_results", "id");
    let mut out: Vec<HostRecord> = collect_typed(&mut hosts, params![run_id], at, |at, r| {
        Ok(HostRecord {
            host: at.get(r, "host")?,
            status: at.parse(r, "status", false)?,
            error: at.get(r, "error")?,
            changed: at.count(r, "changed")?,
            in_sync: at.count(r, "in_sync")?,
            duration_ms: at.count(r, "duration_ms")?,
            round_trips: at.parse(r, "round_trips", true)?,
            steps: Vec::new(),
            started_at: at.get(r, "started_at")?,
            finished_at: at.get(r, "finished_at")?,
            not_reached: at.parse_opt(r, "not_reached", true)?,
            events: Vec::new(),
        })
    })?;
    for h in &mut out {
        let at = (path, "run_events", "id");
        h.events = collect_typed(&mut events, params![run_id, h.host], at, |at, r| {
            Ok(crate::state::types::RunEvent {
                kind: at.parse(r, "kind", false)?,
                address: at.get(r, "address")?,
                ok: at.get(r, "ok")?,
                error: at.get(r, "error")?,
            })
        })?;
        let at = (path, "step_results", "id");
        h.steps = collect_typed(&mut steps, params![run_id, h.host], at, |at, r| {
            Ok(StepRecord {
                address: at.get(r, "address")?,
                module: at.get(r, "module")?,
                status: at.parse(r, "status", false)?,
                change: at.parse_opt(r, "change_kind", false)?,
                fields: at.parse(r, "fields", true)?,
                error: at.get(r, "error")?,
                duration_ms: at.count(r, "duration_ms")?,
                drift: at.get(r, "drift")?,
                cause: at.parse_opt(r, "cause", false)?,
                origin: at.parse_opt(r, "origin", true)?,
                diff: at.get(r, "diff")?,
            })
        })?;
    }
    Ok(out)
}

/// The newest signed record's position and hash (inside a transaction or not).
pub(crate) fn head_in(c: &Connection, path: &Path) -> Result<Option<AuditHead>, StateError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, chain_seq, hash FROM runs WHERE chain_seq IS NOT NULL
         ORDER BY chain_seq DESC LIMIT 1",
    )?;
    let head = collect_typed(&mut stmt, [], (path, "runs", "id"), |at, r| {
        let hash: Option<String> = at.get(r, "hash")?;
        Ok(AuditHead {
            seq: at.count(r, "chain_seq")?,
            hash: hash.ok_or_else(|| at.corrupt("`hash` (missing on a signed run)"))?,
        })
    })?;
    Ok(head.into_iter().next())
}

/// The counted columns every run listing carries (`r` is the run).
macro_rules! run_counts {
    () => {
        "(SELECT COUNT(*) FROM host_results h WHERE h.run_id = r.id
        AND h.status != 'not_reached') AS n_hosts,
    (SELECT COUNT(*) FROM host_results h WHERE h.run_id = r.id
        AND h.status IN ('failed', 'unreachable', 'unhealthy', 'unknown')) AS n_failed,
    (SELECT COUNT(*) FROM step_results s WHERE s.run_id = r.id
        AND s.status IN ('changed', 'drifted')) AS n_changes,
    (SELECT COUNT(*) FROM step_results s WHERE s.run_id = r.id
        AND s.status IN ('changed', 'drifted') AND s.drift = 1) AS n_drift"
    };
}
pub(crate) use run_counts;

pub(crate) const RUN_SELECT: &str = concat!("SELECT r.*, ", run_counts!(), " FROM runs r");

impl StateDb {
    pub(crate) fn unfinished_result(&self) -> RunResult {
        if self.key.is_some() || daemon_running(&self.dir) {
            RunResult::Running
        } else {
            RunResult::Interrupted
        }
    }

    pub(crate) fn record_from_row(
        &self,
        r: &Row<'_>,
        unfinished: RunResult,
    ) -> Result<RunRecord, StateError> {
        let id: String = r.get("id")?;
        let at = self.row_at("runs", &id);
        Ok(RunRecord {
            environment: at.get(r, "environment")?,
            commit: at.get(r, "commit_id")?,
            signer: signer(&at, r)?,
            kind: at.parse(r, "kind", false)?,
            trigger: at.parse(r, "trigger", false)?,
            started_at: at.get(r, "started_at")?,
            finished_at: at.get(r, "finished_at")?,
            result: at.parse_opt(r, "result", false)?.unwrap_or(unfinished),
            summary: at.parse(r, "summary", true)?,
            hosts: at.count(r, "n_hosts")?,
            failed_hosts: at.count(r, "n_failed")?,
            changes: at.count(r, "n_changes")?,
            drift: at.count(r, "n_drift")?,
            chain_seq: at.get(r, "chain_seq")?,
            hash: at.get(r, "hash")?,
            id: RunId(id),
        })
    }

    /// Runs, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let sql = format!(
            "{RUN_SELECT} WHERE (?1 IS NULL OR r.environment = ?1) AND (?2 IS NULL OR r.kind = ?2)
             AND (?4 IS NULL OR EXISTS (SELECT 1 FROM host_results h
                  WHERE h.run_id = r.id AND h.host = ?4))
             AND (?5 IS NULL OR substr(r.commit_id, 1, length(?5)) = ?5)
             AND (?6 IS NULL OR r.signer_principal = ?6 OR r.signer_fingerprint = ?6)
             AND (?7 IS NULL OR COALESCE(r.result, ?8) = ?7)
             AND (?9 IS NULL OR r.started_at >= ?9)
             AND (?10 IS NULL OR r.started_at < ?10)
             ORDER BY r.started_at DESC, r.id DESC LIMIT ?3"
        );
        let limit = filter
            .limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
            .unwrap_or(-1);
        let read = || {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            collect_rows(
                &mut stmt,
                params![
                    filter.environment,
                    filter.kind,
                    limit,
                    filter.host,
                    filter.commit.as_ref().map(|c| c.as_str()),
                    filter.signer,
                    filter.result,
                    unfinished,
                    filter.since.map(|t| t.0),
                    filter.until.map(|t| t.0),
                ],
                |r| self.record_from_row(r, unfinished),
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// One run with its host and step results.
    pub fn run(&self, id: &RunId) -> Result<Option<RunDetail>, StateError> {
        let unfinished = self.unfinished_result();
        let read = || {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("{RUN_SELECT} WHERE r.id = ?1"))?;
            let Some(run) = collect_rows(&mut stmt, params![id.0], |r| {
                self.record_from_row(r, unfinished)
            })?
            .pop() else {
                return Ok(None);
            };
            let hosts = read_hosts(&self.conn, &self.path, &id.0)?;
            Ok(Some(RunDetail { run, hosts }))
        };
        read().map_err(|e| self.err(e))
    }

    /// Position and hash of the newest record of the audit chain, as stored (not verified:
    /// `plumb audit verify` checks the records up to it). `None` before the first finished run.
    pub fn audit_head(&self) -> Result<Option<AuditHead>, StateError> {
        head_in(&self.conn, &self.path).map_err(|e| self.err(e))
    }

    /// The last commit applied to `env`.
    pub fn last_applied(&self, env: &str) -> Result<Option<LastApplied>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT environment, commit_id, run_id, applied_at FROM last_applied
                 WHERE environment = ?1",
            )?;
            let rows = collect_rows(&mut stmt, params![env], |r| {
                let at = self.row_at("last_applied", env);
                Ok(LastApplied {
                    environment: at.get(r, "environment")?,
                    commit: at.get(r, "commit_id")?,
                    run_id: at.get::<Option<String>>(r, "run_id")?.map(RunId),
                    applied_at: at.get(r, "applied_at")?,
                })
            })?;
            Ok(rows.into_iter().next())
        };
        read().map_err(|e| self.err(e))
    }

    /// Whether `commit` failed in `env` (and is not retried until a new commit arrives).
    pub fn is_failed(&self, env: &str, commit: &str) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT 1 FROM failed_commits WHERE environment = ?1 AND commit_id = ?2",
                params![env, commit],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e.into()))
    }
}
