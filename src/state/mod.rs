//! The state database: runs, their per-host and per-step results, the last applied commit of
//! each environment, failed commits and drift findings. SQLite at `<state_dir>/plumb.db`
//! (WAL, busy timeout, foreign keys), migrated by `PRAGMA user_version` (see [`schema`]).
//!
//! Two ways in:
//! - [`StateDb::open`] — the daemon. Creates the state directory 0700 and the database 0600
//!   (and refuses either when other users may access it), takes an exclusive lock on
//!   `<state_dir>/plumb.lock` for the life of the handle (one daemon per state directory),
//!   loads or creates the daemon key (see [`crate::audit`]), and marks runs left unfinished by
//!   a killed daemon as `interrupted` (signed into the audit chain like any other run).
//!   [`StateDb::handle`] opens more connections sharing the lock and key, e.g. one per thread.
//!   Before it, the daemon calls [`check_not_reset`].
//! - [`StateDb::open_recorder`] — `plumb apply --state`, `plumb rollback`, `plumb unpin`,
//!   beside a running daemon: the key, no lock. Hosts are guarded by per-host apply leases
//!   ([`LeaseGuard`], `lease.rs`) instead, taken by the daemon too.
//! - [`StateDb::open_inspect`] — `plumb history`, `plumb audit verify`: no lock, no key, no
//!   writes. An unfinished run shows as `running` while a daemon holds the lock, and as
//!   `interrupted` otherwise.
//!
//! Every write is one IMMEDIATE transaction, so concurrent handles serialise on SQLite's write
//! lock (waiting up to the busy timeout) and the audit chain never forks. A row that cannot be
//! read back into its type (unknown status, bad JSON, a timestamp that is not a number) is
//! [`StateError::Corrupt`] naming the table and row, never a default.
//!
//! Files: `open` (directory, lock, connection, reset check), `write` (runs, host and step
//! results, commits), `alerts` (active alerts, manual runs seen), `drift` (findings), `query`
//! (reads), `chain_check` (the chain's status as last verified, kept for every handle and
//! carried forward record by record), `console` (the console's reads), `chain` (the audit records of runs: building, signing, verifying; the crypto and
//! chain rules are [`crate::audit`]'s), `types`, `error`, `schema` (migrations), `report`
//! (`plumb history`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::audit::DaemonKey;

mod alerts;
mod chain;
mod chain_check;
pub mod console;
mod drift;
mod error;
pub mod filter;
mod lease;
mod managed;
mod open;
mod origins;
mod pins;
mod query;
pub mod report;
mod rollback;
pub mod schema;
mod types;
pub(crate) mod write;

pub use alerts::ActiveAlertRow;
pub use chain_check::ChainStatus;
pub use error::{LeaseHeld, StateError};
pub use filter::{DriftFilter, DriftState, FilterError, FilterLimits, RunFilter};
pub use lease::{Lease, LeaseGuard, LeaseHost, LEASE_RENEW, LEASE_TTL};
pub use open::{check_not_reset, MIRROR_DIR};
pub use origins::StepOrigin;
pub use pins::Pin;
pub use rollback::LastGood;
pub use schema::SCHEMA_VERSION;
pub use types::{
    Attribution, AuditHead, Cause, DriftFinding, HostRecord, HostResultStatus, LastApplied,
    ManualSummary, NewRun, NotReached, NotReachedReason, Origin, Provenance, RollbackBy,
    RollbackOrigin, RunDetail, RunEvent, RunEventKind, RunId, RunKind, RunRecord, RunResult,
    Signer, StepMeta, StepRecord, StepResultStatus, Trigger,
};

/// The database file under the state directory.
pub const DB_FILE: &str = "plumb.db";
/// The daemon's lock file under the state directory.
pub const LOCK_FILE: &str = "plumb.lock";
/// How long [`StateDb::open`] waits for the daemon lock before reporting it held.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long a write waits for another handle's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The state database. See the module docs.
pub struct StateDb {
    conn: Connection,
    dir: PathBuf,
    path: PathBuf,
    /// Present on daemon handles only.
    key: Option<Arc<DaemonKey>>,
    _lock: Option<Arc<File>>,
    /// The audit chain's status as last verified, shared by every handle of the database.
    chain: chain_check::KeptStatus,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb")
            .field("path", &self.path)
            .field("daemon", &self.key.is_some())
            .finish()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// JSON text of a value that always serialises (plain data).
fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

impl StateDb {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon key (daemon handles only).
    pub fn daemon_key(&self) -> Option<&DaemonKey> {
        self.key.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, e: StateError) -> StateError {
        error::busy(e, &self.path)
    }

    /// Names a row of `table` for [`StateError::Corrupt`].
    fn row_at<'a>(&'a self, table: &'static str, id: &'a str) -> error::RowAt<'a> {
        error::RowAt {
            path: &self.path,
            table,
            id,
        }
    }

    /// Runs `f` in one IMMEDIATE transaction (daemon handles only).
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection, &DaemonKey) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let Some(key) = self.key.as_deref() else {
            return Err(StateError::ReadOnly);
        };
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e.into()))?;
        let out = f(&self.conn, key).and_then(|v| {
            self.conn.execute_batch("COMMIT")?;
            Ok(v)
        });
        if out.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        out.map_err(|e| self.err(e))
    }
}

#[cfg(test)]
pub(crate) mod tests;
