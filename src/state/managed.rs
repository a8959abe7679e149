//! The resources plumb manages on each host (`managed_resources`, v8): what prune compares a
//! host's desired state with (see [`crate::prune`]). Written with the run's host results, in
//! the same transaction ([`StateDb::record_host`]); read before a host is planned or applied.

use rusqlite::{params, Connection};

use super::query::collect_typed;
use super::{json_text, now_ms, RunId, StateDb, StateError};
use crate::engine::{HostRun, StepStatus};
use crate::prune::Managed;

/// Updates the managed set of `host` in `env` after its run: each step left in sync (in sync,
/// or changed and verified) is managed as `declared` describes it, and a removal that
/// converged takes its resource out. Failed and skipped steps change nothing.
pub(super) fn update(
    c: &Connection,
    env: &str,
    run: &RunId,
    host: &HostRun,
    declared: &[Managed],
) -> Result<(), StateError> {
    let mut upsert = c.prepare_cached(
        "INSERT INTO managed_resources (environment, host, address, module, target, sensitive,
            unit, unit_prune, prune, ord, run_id, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (environment, host, address) DO UPDATE SET module = excluded.module,
            target = excluded.target, sensitive = excluded.sensitive, unit = excluded.unit,
            unit_prune = excluded.unit_prune, prune = excluded.prune, ord = excluded.ord,
            run_id = excluded.run_id, at = excluded.at",
    )?;
    let mut remove = c.prepare_cached(
        "DELETE FROM managed_resources WHERE environment = ?1 AND host = ?2 AND address = ?3",
    )?;
    let now = now_ms();
    let name = &host.host.name;
    for s in &host.steps {
        if !matches!(s.status, StepStatus::InSync | StepStatus::Changed) {
            continue;
        }
        let address = s.step.address.to_string();
        if s.step.removing {
            remove.execute(params![env, name, address])?;
            continue;
        }
        let Some(m) = declared.iter().find(|m| m.address == address) else {
            continue;
        };
        upsert.execute(params![
            env,
            name,
            m.address,
            m.module,
            m.target,
            m.sensitive,
            m.unit,
            m.unit_flag,
            json_text(&m.removal),
            m.order,
            run.0,
            now
        ])?;
    }
    Ok(())
}

impl StateDb {
    /// The resources plumb manages on `host` in `env`, in their last applied order.
    pub fn managed(&self, env: &str, host: &str) -> Result<Vec<Managed>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT address, module, target, sensitive, unit, unit_prune, prune, ord
                 FROM managed_resources WHERE environment = ?1 AND host = ?2
                 ORDER BY ord, address",
            )?;
            collect_typed(
                &mut stmt,
                params![env, host],
                (&self.path, "managed_resources", "address"),
                |at, r| {
                    Ok(Managed {
                        address: at.get(r, "address")?,
                        module: at.get(r, "module")?,
                        target: at.get(r, "target")?,
                        sensitive: at.get(r, "sensitive")?,
                        unit: at.get(r, "unit")?,
                        unit_flag: at.get(r, "unit_prune")?,
                        removal: at.parse(r, "prune", true)?,
                        order: at.get(r, "ord")?,
                    })
                },
            )
        };
        read().map_err(|e| self.err(e))
    }
}
