//! What the daemon's alerting remembers across restarts (v9): the alerts firing now, and the
//! manual runs it has seen (each `--break-glass` run is alerted once, also when it was
//! recorded while the daemon was down).
//!
//! The stored alert is the alert layer's type, kept here as JSON: [`StateDb::active_alerts`]
//! reads each row into the caller's type, and a row that does not fit is
//! [`StateError::Corrupt`] naming it.

use rusqlite::params;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::query::collect_typed;
use super::types::RunId;
use super::{json_text, now_ms, StateDb, StateError};

/// One active alert as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlertRow<T> {
    /// The alert's identity (`event/environment/host/subject`).
    pub id: String,
    pub alert: T,
    /// When it first fired (unix milliseconds).
    pub fired_at: i64,
}

impl StateDb {
    /// Stores `alert` as firing under `id` (replacing what `id` held).
    pub fn save_active_alert<T: Serialize>(
        &self,
        id: &str,
        alert: &T,
        fired_at: i64,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute(
                "INSERT INTO active_alerts (id, alert, fired_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET alert = excluded.alert,
                    fired_at = excluded.fired_at",
                params![id, json_text(alert), fired_at],
            )?;
            Ok(())
        })
    }

    /// The alert `id` resolved: it is no longer firing.
    pub fn delete_active_alert(&self, id: &str) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute("DELETE FROM active_alerts WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    /// Every alert firing when the daemon last stopped (bounded by the alert identities:
    /// events × hosts × checks of the configured environments), oldest first.
    pub fn active_alerts<T: DeserializeOwned>(&self) -> Result<Vec<ActiveAlertRow<T>>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, alert, fired_at FROM active_alerts ORDER BY fired_at, id",
            )?;
            collect_typed(
                &mut stmt,
                [],
                (self.path.as_path(), "active_alerts", "id"),
                |at, r| {
                    Ok(ActiveAlertRow {
                        id: at.get(r, "id")?,
                        alert: at.parse(r, "alert", true)?,
                        fired_at: at.get(r, "fired_at")?,
                    })
                },
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// Finished manual runs (`plumb apply --state`) the daemon has not looked at yet, oldest
    /// finish first, at most `limit`.
    pub fn unseen_manual_runs(&self, limit: usize) -> Result<Vec<RunId>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id FROM runs r
                 WHERE kind = 'manual' AND finished_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM manual_runs_seen s WHERE s.run_id = r.id)
                 ORDER BY finished_at, id LIMIT ?1",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            collect_typed(
                &mut stmt,
                params![limit],
                (self.path.as_path(), "runs", "id"),
                |at, r| Ok(RunId(at.get(r, "id")?)),
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// The daemon has looked at manual run `run` (and alerted it as break glass, or not).
    pub fn mark_manual_run_seen(&self, run: &RunId, break_glass: bool) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute(
                "INSERT INTO manual_runs_seen (run_id, break_glass, seen_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run_id) DO NOTHING",
                params![run.0, break_glass, now_ms()],
            )?;
            Ok(())
        })
    }
}
