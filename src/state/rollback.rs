//! Safe rollouts: the last good commit of each host, and the automatic rollbacks made (at
//! most one per environment, bad commit and host).

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use schemars::JsonSchema;
use serde::Serialize;

use super::query::collect_typed;
use super::{now_ms, RunId, StateDb, StateError};

/// The newest commit whose apply and health checks passed on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LastGood {
    pub host: String,
    pub commit: String,
    /// The run that applied it (and checked its health).
    pub run_id: Option<RunId>,
    /// Unix milliseconds.
    pub at: i64,
}

impl StateDb {
    /// Records `commit` as the last good commit of each of `hosts` in `env`.
    pub fn set_last_good(
        &self,
        env: &str,
        hosts: &[String],
        commit: &str,
        run: &RunId,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO host_last_good (environment, host, commit_id, run_id, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (environment, host) DO UPDATE SET commit_id = excluded.commit_id,
                    run_id = excluded.run_id, at = excluded.at",
            )?;
            let now = now_ms();
            for h in hosts {
                stmt.execute(params![env, h, commit, run.0, now])?;
            }
            Ok(())
        })
    }

    /// The last good commit of every host of `env` that has one, by host name.
    pub fn last_good(&self, env: &str) -> Result<BTreeMap<String, LastGood>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT host, commit_id, run_id, at FROM host_last_good
                 WHERE environment = ?1 ORDER BY host",
            )?;
            let rows = collect_typed(
                &mut stmt,
                params![env],
                (&self.path, "host_last_good", "host"),
                |at, r| {
                    Ok(LastGood {
                        host: at.get(r, "host")?,
                        commit: at.get(r, "commit_id")?,
                        run_id: at.get::<Option<String>>(r, "run_id")?.map(RunId),
                        at: at.get(r, "at")?,
                    })
                },
            )?;
            Ok(rows.into_iter().map(|g| (g.host.clone(), g)).collect())
        };
        read().map_err(|e| self.err(e))
    }

    /// Whether `host` of `env` was already rolled back automatically from `commit`.
    pub fn rolled_back(&self, env: &str, commit: &str, host: &str) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT 1 FROM rollbacks WHERE environment = ?1 AND commit_id = ?2 AND host = ?3",
                params![env, commit, host],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e.into()))
    }

    /// Records that `hosts` of `env` were rolled back from `commit` to `target` by `run`.
    /// A second rollback of the same (commit, host) is refused by the primary key.
    pub fn record_rollback(
        &self,
        env: &str,
        commit: &str,
        hosts: &[String],
        target: &str,
        run: &RunId,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO rollbacks (environment, commit_id, host, target, run_id, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let now = now_ms();
            for h in hosts {
                stmt.execute(params![env, commit, h, target, run.0, now])?;
            }
            Ok(())
        })
    }
}
