//! Reads for the web console: the newest result of every host, a host's history, the runs of
//! a commit and the hosts they reached, and pages of runs (drift findings come from
//! `StateDb::drift_history`). Each is one query whose cost follows what the page shows, not
//! the history kept: the newest results come from `host_latest` (kept on write), lists of
//! runs are keyset pages (a page starts next to a run of the page before it, never at an
//! OFFSET), a commit prefix is a range on `runs_by_commit`.

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

/// Where a page of runs starts. Pages list runs newest first (by start time, then id); a
/// link to the next page carries the id of the run it continues from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PageAt {
    /// The newest runs.
    #[default]
    Newest,
    /// The runs just older than this one.
    Before(RunId),
    /// The runs just newer than this one.
    After(RunId),
}

/// A page of a list of runs, newest first, and whether there are more on either side.
#[derive(Debug, Clone)]
pub struct RunsPage<T> {
    pub items: Vec<T>,
    /// Runs newer than the first item exist.
    pub newer: bool,
    /// Runs older than the last item exist.
    pub older: bool,
}

/// The newest result of a host among a commit's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitHost {
    pub environment: String,
    pub host: String,
    pub status: HostResultStatus,
    pub run: RunId,
}

/// The keyset condition on run `r` for `at` (`?2` is the cursor's run id), and the order
/// to read in: towards older runs, or towards newer ones (then reversed).
fn keyset(at: &PageAt) -> (&'static str, &'static str) {
    match at {
        PageAt::Newest => ("?2 IS NULL", "r.started_at DESC, r.id DESC"),
        PageAt::Before(_) => (
            "r.started_at <= (SELECT started_at FROM runs WHERE id = ?2)
             AND (r.started_at < (SELECT started_at FROM runs WHERE id = ?2) OR r.id < ?2)",
            "r.started_at DESC, r.id DESC",
        ),
        PageAt::After(_) => (
            "r.started_at >= (SELECT started_at FROM runs WHERE id = ?2)
             AND (r.started_at > (SELECT started_at FROM runs WHERE id = ?2) OR r.id > ?2)",
            "r.started_at ASC, r.id ASC",
        ),
    }
}

fn cursor(at: &PageAt) -> Option<&str> {
    match at {
        PageAt::Newest => None,
        PageAt::Before(id) | PageAt::After(id) => Some(id.0.as_str()),
    }
}

/// Cuts the `limit + 1` rows read for `at` to a page, newest first.
fn paged<T>(mut rows: Vec<T>, at: &PageAt, limit: usize) -> RunsPage<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    match at {
        PageAt::Newest => RunsPage {
            items: rows,
            newer: false,
            older: more,
        },
        PageAt::Before(_) => RunsPage {
            items: rows,
            newer: true,
            older: more,
        },
        PageAt::After(_) => {
            rows.reverse();
            RunsPage {
                items: rows,
                newer: more,
                older: true,
            }
        }
    }
}

/// The lowest id above every commit id that starts with `prefix` (lowercase hex): the prefix
/// with its last digit raised by one byte, so `commit_id >= prefix AND commit_id < next` is
/// the prefix as a range an index can seek.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    String::from_utf8(end).unwrap_or_default()
}

/// The hex digits of a commit prefix, lowercase, at most 40.
fn hex_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(40)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl StateDb {
    /// Every host of `env` that has a recorded result (other than `not_reached`), with its
    /// newest one, by host name: one row of `host_latest` per host.
    pub fn latest_host_results(&self, env: &str) -> Result<Vec<HostLatest>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT h.id, l.host, h.status, h.error, r.id AS run_id, r.kind, r.started_at,
                    r.commit_id
                 FROM host_latest l JOIN host_results h ON h.id = l.result_id
                 JOIN runs r ON r.id = h.run_id
                 WHERE l.environment = ?1
                 ORDER BY l.host",
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

    /// A page of the runs that reached `host` of `env`, newest first.
    pub fn host_runs(
        &self,
        env: &str,
        host: &str,
        at: &PageAt,
        limit: usize,
    ) -> Result<RunsPage<HostRun>, StateError> {
        let unfinished = self.unfinished_result();
        let (cond, order) = keyset(at);
        let sql = format!(
            "SELECT r.*, hr.status AS h_status, hr.changed AS h_changed, hr.error AS h_error, {}
             FROM runs r JOIN host_results hr ON hr.run_id = r.id AND hr.host = ?3
             WHERE r.environment = ?1 AND {cond}
             ORDER BY {order} LIMIT ?4",
            run_counts!()
        );
        let read = || {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            collect_rows(
                &mut stmt,
                params![env, cursor(at), host, to_i64(limit.saturating_add(1))],
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
        read()
            .map(|rows| paged(rows, at, limit))
            .map_err(|e| self.err(e))
    }

    /// A page of the runs of `env`, newest first.
    pub fn runs_page(
        &self,
        env: &str,
        at: &PageAt,
        limit: usize,
    ) -> Result<RunsPage<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let (cond, order) = keyset(at);
        let sql =
            format!("{RUN_SELECT} WHERE r.environment = ?1 AND {cond} ORDER BY {order} LIMIT ?3");
        let read = || {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            collect_rows(
                &mut stmt,
                params![env, cursor(at), to_i64(limit.saturating_add(1))],
                |r| self.record_from_row(r, unfinished),
            )
        };
        read()
            .map(|rows| paged(rows, at, limit))
            .map_err(|e| self.err(e))
    }

    /// One run without its host and step results (the fleet's last rollout).
    pub fn run_record(&self, id: &RunId) -> Result<Option<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let read = || {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("{RUN_SELECT} WHERE r.id = ?1"))?;
            collect_rows(&mut stmt, params![id.0], |r| {
                self.record_from_row(r, unfinished)
            })
        };
        read().map(|mut rows| rows.pop()).map_err(|e| self.err(e))
    }

    /// The newest run of `kind` in `env` (through `runs_by_env_kind`, however many runs of
    /// other kinds came after it).
    pub fn latest_run(&self, env: &str, kind: RunKind) -> Result<Option<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let sql = format!(
            "{RUN_SELECT} WHERE r.environment = ?1 AND r.kind = ?2
             ORDER BY r.started_at DESC, r.id DESC LIMIT 1"
        );
        let read = || {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            collect_rows(&mut stmt, params![env, kind], |r| {
                self.record_from_row(r, unfinished)
            })
        };
        read().map(|mut rows| rows.pop()).map_err(|e| self.err(e))
    }

    /// The newest `limit` runs of the commits whose id starts with `prefix` (hex digits;
    /// anything else is ignored), newest first.
    pub fn commit_runs(&self, prefix: &str, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let hex = hex_prefix(prefix);
        // The newest runs first (from the covering index), then their counts: counting
        // every run of the range before sorting would cost O(runs of the commit).
        let sql = format!(
            "{RUN_SELECT} WHERE r.id IN (SELECT id FROM runs
                 WHERE commit_id >= ?1 AND commit_id < ?2
                 ORDER BY started_at DESC, id DESC LIMIT ?3)
             ORDER BY r.started_at DESC, r.id DESC"
        );
        let read = || {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            collect_rows(
                &mut stmt,
                params![hex, prefix_end(&hex), to_i64(limit)],
                |r| self.record_from_row(r, unfinished),
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// Every host the newest `limit` runs of the commits starting with `prefix` reached
    /// (those [`commit_runs`](StateDb::commit_runs) lists), with its result in the newest of
    /// them, by environment and host.
    pub fn commit_hosts(&self, prefix: &str, limit: usize) -> Result<Vec<CommitHost>, StateError> {
        let hex = hex_prefix(prefix);
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "WITH ids AS (SELECT id, started_at FROM runs
                     WHERE commit_id >= ?1 AND commit_id < ?2
                     ORDER BY started_at DESC, id DESC LIMIT ?3),
                 c AS (SELECT ids.id, ids.started_at, r.environment
                     FROM ids JOIN runs r ON r.id = ids.id),
                 reached AS (SELECT c.environment, h.host, h.status, h.id, c.id AS run_id,
                     ROW_NUMBER() OVER (PARTITION BY c.environment, h.host
                         ORDER BY c.started_at DESC, c.id DESC) AS n
                     FROM c JOIN host_results h ON h.run_id = c.id)
                 SELECT environment, host, status, id, run_id FROM reached WHERE n = 1
                 ORDER BY environment, host",
            )?;
            let at = (self.path.as_path(), "host_results", "id");
            collect_typed(
                &mut stmt,
                params![hex, prefix_end(&hex), to_i64(limit)],
                at,
                |at, r| {
                    Ok(CommitHost {
                        environment: at.get(r, "environment")?,
                        host: at.get(r, "host")?,
                        status: at.parse(r, "status", false)?,
                        run: RunId(at.get(r, "run_id")?),
                    })
                },
            )
        };
        read().map_err(|e| self.err(e))
    }
}
