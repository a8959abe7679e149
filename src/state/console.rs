//! Reads for the web console: the newest result of every host, a host's history, the runs of
//! a commit, and pages of runs (drift findings come from `StateDb::drift_history`). Each list is one
//! query, bounded by a limit (the console paginates).

use rusqlite::params;

use super::query::{collect_rows, collect_typed, run_counts, RUN_SELECT};
use super::types::{HostResultStatus, RunId, RunKind, RunRecord};
use super::{StateDb, StateError};

/// The newest recorded result of one host (any kind of run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLatest {
    pub host: String,
    pub status: HostResultStatus,
    pub error: Option<String>,
    pub run: RunId,
    pub kind: RunKind,
    /// When that run started (unix ms).
    pub at: i64,
    pub commit: Option<String>,
}

/// One run as seen from one host.
#[derive(Debug, Clone)]
pub struct HostRun {
    pub run: RunRecord,
    pub status: HostResultStatus,
    pub changed: usize,
    pub error: Option<String>,
}

impl StateDb {
    /// Every host of `env` that has a recorded result, with its newest one.
    pub fn latest_host_results(&self, env: &str) -> Result<Vec<HostLatest>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT h.id, h.host, h.status, h.error, r.id AS run_id, r.kind, r.started_at,
                    r.commit_id
                 FROM host_results h JOIN runs r ON r.id = h.run_id
                 WHERE h.id IN (SELECT MAX(h2.id) FROM host_results h2
                     JOIN runs r2 ON r2.id = h2.run_id WHERE r2.environment = ?1
                     GROUP BY h2.host)
                 ORDER BY h.host",
            )?;
            let at = (self.path.as_path(), "host_results", "id");
            collect_typed(&mut stmt, params![env], at, |at, r| {
                Ok(HostLatest {
                    host: at.get(r, "host")?,
                    status: at.parse(r, "status", false)?,
                    error: at.get(r, "error")?,
                    run: RunId(at.get(r, "run_id")?),
                    kind: at.parse(r, "kind", false)?,
                    at: at.get(r, "started_at")?,
                    commit: at.get(r, "commit_id")?,
                })
            })
        };
        read().map_err(|e| self.err(e))
    }

    /// The runs that reached `host` of `env`, newest first.
    pub fn host_runs(
        &self,
        env: &str,
        host: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<HostRun>, StateError> {
        let unfinished = self.unfinished_result();
        let sql = concat!(
            "SELECT r.*, hr.status AS h_status, hr.changed AS h_changed, hr.error AS h_error, ",
            run_counts!(),
            " FROM runs r JOIN host_results hr ON hr.run_id = r.id
             WHERE r.environment = ?1 AND hr.host = ?2
             ORDER BY r.started_at DESC, r.id DESC LIMIT ?3 OFFSET ?4"
        );
        let read = || {
            let mut stmt = self.conn.prepare_cached(sql)?;
            collect_rows(
                &mut stmt,
                params![env, host, to_i64(limit), to_i64(offset)],
                |r| {
                    let run = self.record_from_row(r, unfinished)?;
                    let at = self.row_at("host_results", &run.id.0);
                    Ok(HostRun {
                        status: at.parse(r, "h_status", false)?,
                        changed: at.count(r, "h_changed")?,
                        error: at.get(r, "h_error")?,
                        run,
                    })
                },
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// Runs of one environment (or all), newest first, a page at a time.
    pub fn runs_page(
        &self,
        env: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let sql = format!(
            "{RUN_SELECT} WHERE (?1 IS NULL OR r.environment = ?1)
             ORDER BY r.started_at DESC, r.id DESC LIMIT ?2 OFFSET ?3"
        );
        let read = || {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            collect_rows(
                &mut stmt,
                params![env, to_i64(limit), to_i64(offset)],
                |r| self.record_from_row(r, unfinished),
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// Runs of the commits whose id starts with `prefix` (hex only), newest first.
    pub fn commit_runs(&self, prefix: &str, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let hex: String = prefix
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(40)
            .collect();
        let sql = format!(
            "{RUN_SELECT} WHERE r.commit_id LIKE ?1 || '%'
             ORDER BY r.started_at DESC, r.id DESC LIMIT ?2"
        );
        let read = || {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            collect_rows(&mut stmt, params![hex, to_i64(limit)], |r| {
                self.record_from_row(r, unfinished)
            })
        };
        read().map_err(|e| self.err(e))
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
