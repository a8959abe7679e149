//! Pins: hosts a person brought back to an older, previously applied commit (`plumb
//! rollback`). The daemon keeps a pinned host on its pin (no rollout, no drift correction
//! moves it) until `plumb unpin`, or until it reconciles a commit newer than the pin's
//! `bad_commit`: one that descends from it and is not it.

use rusqlite::{params, OptionalExtension};
use schemars::JsonSchema;
use serde::Serialize;

use super::query::collect_typed;
use super::{now_ms, RunId, StateDb, StateError};

/// One pinned host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Pin {
    pub environment: String,
    pub host: String,
    /// The commit the host is pinned to.
    pub commit: String,
    /// The environment's newest commit when the pin was made: a commit newer than this one
    /// releases the pin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_commit: Option<String>,
    /// The `pin` run that applied it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// Unix milliseconds.
    pub at: i64,
}

impl StateDb {
    /// Pins each of `hosts` of `env` to `commit` (replacing an earlier pin).
    pub fn set_pins(
        &self,
        env: &str,
        hosts: &[String],
        commit: &str,
        bad_commit: Option<&str>,
        run: &RunId,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO pins (environment, host, commit_id, bad_commit, run_id, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (environment, host) DO UPDATE SET commit_id = excluded.commit_id,
                    bad_commit = excluded.bad_commit, run_id = excluded.run_id, at = excluded.at",
            )?;
            let now = now_ms();
            for h in hosts {
                stmt.execute(params![env, h, commit, bad_commit, run.0, now])?;
            }
            Ok(())
        })
    }

    /// The pins of `env` (every environment's with `None`), by environment and host.
    pub fn pins(&self, env: Option<&str>) -> Result<Vec<Pin>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT environment, host, commit_id, bad_commit, run_id, at FROM pins
                 WHERE ?1 IS NULL OR environment = ?1 ORDER BY environment, host",
            )?;
            collect_typed(
                &mut stmt,
                params![env],
                (&self.path, "pins", "host"),
                |at, r| {
                    Ok(Pin {
                        environment: at.get(r, "environment")?,
                        host: at.get(r, "host")?,
                        commit: at.get(r, "commit_id")?,
                        bad_commit: at.get(r, "bad_commit")?,
                        run_id: at.get::<Option<String>>(r, "run_id")?.map(RunId),
                        at: at.get(r, "at")?,
                    })
                },
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// Releases the pins of `hosts` of `env`; returns the hosts that were pinned.
    pub fn remove_pins(&self, env: &str, hosts: &[String]) -> Result<Vec<String>, StateError> {
        self.write(|c, _| {
            let mut stmt =
                c.prepare_cached("DELETE FROM pins WHERE environment = ?1 AND host = ?2")?;
            let mut removed = Vec::new();
            for h in hosts {
                if stmt.execute(params![env, h])? > 0 {
                    removed.push(h.clone());
                }
            }
            Ok(removed)
        })
    }

    /// Whether `commit` converged on some host of `env` in an `apply`, `rollback`,
    /// `correction` or `pin` run: a commit a pin may go back to.
    pub fn was_applied(&self, env: &str, commit: &str) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT 1 FROM runs r JOIN host_results h ON h.run_id = r.id
                 WHERE r.environment = ?1 AND r.commit_id = ?2 AND h.status = 'converged'
                   AND r.kind IN ('apply', 'rollback', 'correction', 'pin') LIMIT 1",
                params![env, commit],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e.into()))
    }

    /// The commits of `env`'s `apply` runs, newest first, each once: the newest is the one
    /// a pin goes back from, the next converged one the default target of `plumb rollback`.
    pub fn applied_commits(&self, env: &str) -> Result<Vec<(String, bool)>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT commit_id, MAX(started_at) AS newest,
                        MAX(result = 'converged') AS converged
                 FROM runs WHERE environment = ?1 AND kind = 'apply' AND commit_id IS NOT NULL
                 GROUP BY commit_id ORDER BY newest DESC",
            )?;
            collect_typed(
                &mut stmt,
                params![env],
                (&self.path, "runs", "commit_id"),
                |at, r| {
                    Ok((
                        at.get::<String>(r, "commit_id")?,
                        at.get::<i64>(r, "converged")? == 1,
                    ))
                },
            )
        };
        read().map_err(|e| self.err(e))
    }
}
