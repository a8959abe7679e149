//! Which commit last changed each step's desired state (`step_origins`), and which manual run
//! changed the step on its host since: what attribution (`intended | corrective | manual`)
//! needs, kept in the state so that attributing a change costs no host round trip.

use std::collections::HashMap;

use rusqlite::params;

use super::query::collect_typed;
use super::types::Origin;
use super::{json_text, StateDb, StateError};

/// What the state knows of one step on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOrigin {
    /// sha256 of the desired state plumb last applied (empty: only a manual run touched it).
    pub digest: String,
    /// The commit that last changed the desired state.
    pub origin: Origin,
    /// A manual run that changed the step on the host since plumb last applied it.
    pub manual: Option<Origin>,
}

impl StateDb {
    /// The known origins of the steps of `host` in `env`, by address.
    pub fn step_origins(
        &self,
        env: &str,
        host: &str,
    ) -> Result<HashMap<String, StepOrigin>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT address, digest, origin, manual FROM step_origins
                 WHERE environment = ?1 AND host = ?2",
            )?;
            collect_typed(
                &mut stmt,
                params![env, host],
                (self.path.as_path(), "step_origins", "address"),
                |at, r| {
                    Ok((
                        at.get::<String>(r, "address")?,
                        StepOrigin {
                            digest: at.get(r, "digest")?,
                            origin: at.parse(r, "origin", true)?,
                            manual: at.parse_opt(r, "manual", true)?,
                        },
                    ))
                },
            )
        };
        Ok(read().map_err(|e| self.err(e))?.into_iter().collect())
    }

    /// Records what plumb applied on `host`: each step's desired-state digest and the commit
    /// that last changed it. Clears the manual marks of those steps (plumb's state is back).
    pub fn set_step_origins(
        &self,
        env: &str,
        host: &str,
        steps: &[(String, String, Origin)],
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO step_origins (environment, host, address, digest, origin, manual)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                 ON CONFLICT (environment, host, address) DO UPDATE SET
                    digest = excluded.digest, origin = excluded.origin, manual = NULL",
            )?;
            for (address, digest, origin) in steps {
                stmt.execute(params![env, host, address, digest, json_text(origin)])?;
            }
            Ok(())
        })
    }

    /// Marks steps a manual `plumb apply` changed on `host`: until plumb applies them again,
    /// their differences are attributed to that run (`manual`), not anonymous drift.
    pub fn mark_manual(
        &self,
        env: &str,
        host: &str,
        addresses: &[String],
        manual: &Origin,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO step_origins (environment, host, address, digest, origin, manual)
                 VALUES (?1, ?2, ?3, '', ?4, ?4)
                 ON CONFLICT (environment, host, address) DO UPDATE SET manual = excluded.manual",
            )?;
            for address in addresses {
                stmt.execute(params![env, host, address, json_text(manual)])?;
            }
            Ok(())
        })
    }
}
