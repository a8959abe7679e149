//! Drift findings: a resource found different from the repo while the commit did not change,
//! opened by a drift check, refreshed while it stays, resolved when it is gone.

use std::collections::HashSet;

use rusqlite::{params, Connection, Row};

use super::error::RowAt;
use super::filter::{DriftFilter, DriftState};
use super::query::collect_typed;
use super::types::{enum_text, Cause, DriftFinding, HostRecord, RunId};
use super::{json_text, now_ms, StateDb, StateError};
use crate::modules::{ChangeKind, FieldChange};

/// What identifies a finding: one open finding per resource.
struct Resource<'a> {
    env: &'a str,
    host: &'a str,
    address: &'a str,
}

/// What a drift check saw of one resource.
struct Seen<'a> {
    change: ChangeKind,
    fields: &'a [FieldChange],
    diff: Option<&'a str>,
    cause: Option<Cause>,
}

fn upsert(
    c: &Connection,
    run: &RunId,
    at: &Resource<'_>,
    seen: &Seen<'_>,
    now: i64,
) -> Result<i64, StateError> {
    let id = c.query_row(
        "INSERT INTO drift_findings (environment, host, address, change_kind, fields,
            first_seen, last_seen, run_id, first_run_id, diff, cause)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?7, ?8, ?9)
         ON CONFLICT (environment, host, address) WHERE resolved_at IS NULL
         DO UPDATE SET change_kind = excluded.change_kind, fields = excluded.fields,
            last_seen = excluded.last_seen, run_id = excluded.run_id, diff = excluded.diff,
            cause = excluded.cause
         RETURNING id",
        params![
            at.env,
            at.host,
            at.address,
            enum_text(&seen.change),
            json_text(&seen.fields),
            now,
            run.0,
            seen.diff,
            seen.cause
        ],
        |r| r.get(0),
    )?;
    Ok(id)
}

fn resolve(c: &Connection, run: &RunId, at: &Resource<'_>, now: i64) -> Result<bool, StateError> {
    let n = c.execute(
        "UPDATE drift_findings SET resolved_at = ?1, resolved_run_id = ?2
         WHERE environment = ?3 AND host = ?4 AND address = ?5 AND resolved_at IS NULL",
        params![now, run.0, at.env, at.host, at.address],
    )?;
    Ok(n > 0)
}

/// Resolves every open finding of a host (it converged).
pub(crate) fn resolve_host(
    c: &Connection,
    run: &RunId,
    env: &str,
    host: &str,
    now: i64,
) -> Result<(), StateError> {
    c.execute(
        "UPDATE drift_findings SET resolved_at = ?1, resolved_run_id = ?2
         WHERE environment = ?3 AND host = ?4 AND resolved_at IS NULL",
        params![now, run.0, env, host],
    )?;
    Ok(())
}

/// After an observed drift check of one host: opens or refreshes a finding per drifted step,
/// and resolves the open findings of steps that got no row (in sync, or no longer declared).
/// Steps whose probe failed got a row, so they keep their findings.
pub(crate) fn sync_findings(
    c: &Connection,
    run: &RunId,
    env: &str,
    host: &HostRecord,
    now: i64,
) -> Result<(), StateError> {
    let mut keep = HashSet::new();
    for s in &host.steps {
        keep.insert(s.address.as_str());
        if let (true, Some(kind)) = (s.drift, s.change) {
            let at = Resource {
                env,
                host: &host.host,
                address: &s.address,
            };
            let seen = Seen {
                change: kind,
                fields: &s.fields,
                diff: s.diff.as_deref(),
                cause: s.cause,
            };
            upsert(c, run, &at, &seen, now)?;
        }
    }
    let open: Vec<String> = c
        .prepare_cached(
            "SELECT address FROM drift_findings
             WHERE environment = ?1 AND host = ?2 AND resolved_at IS NULL",
        )?
        .query_map(params![env, host.host], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for address in open.iter().filter(|a| !keep.contains(a.as_str())) {
        let at = Resource {
            env,
            host: &host.host,
            address,
        };
        resolve(c, run, &at, now)?;
    }
    Ok(())
}

const FINDING_COLUMNS: &str = "id, environment, host, address, change_kind, fields, first_seen,
    last_seen, resolved_at, run_id, first_run_id, resolved_run_id, diff, cause";

fn finding(at: &RowAt<'_>, r: &Row<'_>) -> Result<DriftFinding, StateError> {
    let run = |col: &str| -> Result<Option<RunId>, StateError> {
        Ok(at.get::<Option<String>>(r, col)?.map(RunId))
    };
    Ok(DriftFinding {
        id: at.get(r, "id")?,
        environment: at.get(r, "environment")?,
        host: at.get(r, "host")?,
        address: at.get(r, "address")?,
        change: at.parse(r, "change_kind", false)?,
        fields: at.parse(r, "fields", true)?,
        first_seen: at.get(r, "first_seen")?,
        last_seen: at.get(r, "last_seen")?,
        resolved_at: at.get(r, "resolved_at")?,
        run_id: run("run_id")?,
        first_run_id: run("first_run_id")?,
        resolved_run_id: run("resolved_run_id")?,
        diff: at.get(r, "diff")?,
        cause: at.parse_opt(r, "cause", false)?,
    })
}

impl StateDb {
    /// Open (unresolved) drift findings of `env`, by host and address.
    pub fn open_drift(&self, env: &str) -> Result<Vec<DriftFinding>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {FINDING_COLUMNS}
                 FROM drift_findings WHERE environment = ?1 AND resolved_at IS NULL
                 ORDER BY host, address"
            ))?;
            let at = (self.path.as_path(), "drift_findings", "id");
            collect_typed(&mut stmt, params![env], at, finding)
        };
        read().map_err(|e| self.err(e))
    }

    /// Drift findings, open and resolved as `filter` says, newest first (by first seen). A
    /// finding is in the `since`..`until` window when it was open at some time inside it.
    /// Only the terms the filter sets are in the query, so an environment (and host) walks
    /// `drift_by_env_seen` (`drift_by_host_seen`) newest first and stops at the limit.
    pub fn drift_history(&self, filter: &DriftFilter) -> Result<Vec<DriftFinding>, StateError> {
        let limit = filter
            .limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
            .unwrap_or(-1);
        let since = filter.since.map(|t| t.0);
        let until = filter.until.map(|t| t.0);
        let mut terms: Vec<&str> = Vec::new();
        let mut values: Vec<(&str, &dyn rusqlite::ToSql)> = vec![(":limit", &limit)];
        if let Some(env) = &filter.environment {
            terms.push("environment = :env");
            values.push((":env", env));
        }
        if let Some(host) = &filter.host {
            terms.push("host = :host");
            values.push((":host", host));
        }
        match filter.status {
            DriftState::Open => terms.push("resolved_at IS NULL"),
            DriftState::Resolved => terms.push("resolved_at IS NOT NULL"),
            DriftState::All => {}
        }
        if let Some(since) = &since {
            terms.push("(resolved_at IS NULL OR resolved_at >= :since)");
            values.push((":since", since));
        }
        if let Some(until) = &until {
            terms.push("first_seen < :until");
            values.push((":until", until));
        }
        let filter_sql = if terms.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", terms.join(" AND "))
        };
        let read = || {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {FINDING_COLUMNS} FROM drift_findings {filter_sql}
                 ORDER BY first_seen DESC, id DESC LIMIT :limit"
            ))?;
            let at = (self.path.as_path(), "drift_findings", "id");
            collect_typed(&mut stmt, values.as_slice(), at, finding)
        };
        read().map_err(|e| self.err(e))
    }

    /// Opens a drift finding for a resource, or refreshes the open one (`last_seen`, change,
    /// fields). Returns the finding id. Pass redacted fields for sensitive steps.
    pub fn upsert_drift(
        &self,
        run: &RunId,
        env: &str,
        host: &str,
        address: &str,
        change: ChangeKind,
        fields: &[FieldChange],
    ) -> Result<i64, StateError> {
        let at = Resource { env, host, address };
        let seen = Seen {
            change,
            fields,
            diff: None,
            cause: None,
        };
        self.write(|c, _| upsert(c, run, &at, &seen, now_ms()))
    }

    /// Resolves the open finding of a resource; false when there was none.
    pub fn resolve_drift(
        &self,
        run: &RunId,
        env: &str,
        host: &str,
        address: &str,
    ) -> Result<bool, StateError> {
        let at = Resource { env, host, address };
        self.write(|c, _| resolve(c, run, &at, now_ms()))
    }
}
