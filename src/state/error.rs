//! Errors of the state database.

use std::path::{Path, PathBuf};

use super::types::RunResult;
use super::BUSY_TIMEOUT;
use crate::audit::AuditError;

/// Errors of the state database. Each has a stable [`code`](StateError::code), and the message
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state db at {path} is locked by another plumb daemon{}; stop it, or give this one another state directory", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("state db at {path} stayed busy for {}s (another process holds its write lock); retry, and check for a stuck process using it", BUSY_TIMEOUT.as_secs())]
    Busy { path: PathBuf },
    #[error("no state db at {path}; pass the daemon's state directory (--state)")]
    NotFound { path: PathBuf },
    #[error("state db at {path} has schema version {found}, newer than this plumb supports ({supported}); upgrade plumb")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("state db at {path}: migration to schema version {version} failed ({source}); the database is unchanged, restore it from backup if it is damaged")]
    Migration {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
    #[error(
        "state directory {path}: {source}; check that it exists and the daemon's user may write it"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state db at {path} cannot be opened: {source}; check the path and its permissions")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path} is accessible to other users (mode {mode:03o}); the state holds the audit key and the history: run `chmod {fix:o} {path}`")]
    Permissions {
        path: PathBuf,
        mode: u32,
        /// The mode to set.
        fix: u32,
    },
    #[error("state db: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state db at {path}: {table} row {id} holds an unreadable {what}; the file was edited or damaged, restore it from a backup")]
    Corrupt {
        path: PathBuf,
        /// The table of the row.
        table: &'static str,
        /// The row's key (run id, or the numeric id).
        id: String,
        /// The column and what is wrong with it.
        what: String,
    },
    #[error("state directory {dir} has {} but {}: the daemon ran here before and its history is gone. Restore {db} from a backup; to start over deliberately, run once with --accept-state-reset (the reset is recorded in the audit chain)", found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "), if *db_exists { "no runs in plumb.db" } else { "no plumb.db" })]
    Reset {
        dir: PathBuf,
        db: PathBuf,
        db_exists: bool,
        /// The daemon key and/or mirror that show the daemon ran before.
        found: Vec<PathBuf>,
    },
    #[error("no run {id} in the state db")]
    NoSuchRun { id: String },
    #[error("run {id} is already finished; its record is signed and cannot change")]
    AlreadyFinished { id: String },
    #[error("run result `{0}` cannot be recorded by finish_run (it is derived by plumb)")]
    InvalidResult(RunResult),
    #[error(
        "the state db was opened for inspection; only the daemon's handle (StateDb::open) writes"
    )]
    ReadOnly,
    #[error("host {} ({}) of environment {} is being applied by {} since {} (lease until {}); wait for it to finish, or for the lease to expire if that process was killed", .0.host, .0.key, .0.environment, .0.holder, .0.since, .0.until)]
    LeaseHeld(Box<LeaseHeld>),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl StateError {
    pub fn code(&self) -> &'static str {
        match self {
            StateError::Locked { .. } => "state.locked",
            StateError::Busy { .. } => "state.busy",
            StateError::NotFound { .. } => "state.not_found",
            StateError::NewerSchema { .. } => "state.newer_schema",
            StateError::Migration { .. } => "state.migration",
            StateError::Io { .. } => "state.io",
            StateError::Open { .. } => "state.open",
            StateError::Permissions { .. } => "state.permissions",
            StateError::Sqlite(_) => "state.sqlite",
            StateError::Corrupt { .. } => "state.corrupt",
            StateError::Reset { .. } => "state.reset",
            StateError::NoSuchRun { .. } => "state.no_such_run",
            StateError::AlreadyFinished { .. } => "state.already_finished",
            StateError::InvalidResult(_) => "state.invalid_result",
            StateError::ReadOnly => "state.read_only",
            StateError::LeaseHeld(_) => "state.lease_held",
            StateError::Audit(a) => a.code(),
        }
    }
}

/// A host lease another process holds (see `state::lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHeld {
    /// `address:port`.
    pub key: String,
    pub environment: String,
    pub host: String,
    /// Who holds it, for people.
    pub holder: String,
    /// RFC 3339.
    pub since: String,
    /// RFC 3339: when it expires unless renewed.
    pub until: String,
}

/// SQLITE_BUSY / SQLITE_LOCKED after the busy timeout become [`StateError::Busy`].
pub(crate) fn busy(e: StateError, path: &Path) -> StateError {
    match &e {
        StateError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StateError::Busy {
                path: path.to_path_buf(),
            }
        }
        _ => e,
    }
}

/// Where a value read from a row came from, to name it when it is unreadable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowAt<'a> {
    pub path: &'a Path,
    pub table: &'static str,
    pub id: &'a str,
}

impl RowAt<'_> {
    pub fn corrupt(&self, what: impl Into<String>) -> StateError {
        StateError::Corrupt {
            path: self.path.to_path_buf(),
            table: self.table,
            id: self.id.to_string(),
            what: what.into(),
        }
    }

    /// A column; a value of the wrong type (text in a timestamp, say) is [`StateError::Corrupt`].
    pub fn get<T: rusqlite::types::FromSql>(
        &self,
        r: &rusqlite::Row<'_>,
        col: &str,
    ) -> Result<T, StateError> {
        r.get(col).map_err(|e| match e {
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => {
                self.corrupt(format!("`{col}` ({e})"))
            }
            other => StateError::Sqlite(other),
        })
    }

    /// A text column holding a serde value: an enum's name, or JSON when `json`.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        r: &rusqlite::Row<'_>,
        col: &str,
        json: bool,
    ) -> Result<T, StateError> {
        let text: String = self.get(r, col)?;
        parse_text(&text, json).map_err(|e| self.corrupt(what(col, &text, json, &e)))
    }

    /// Like [`parse`](RowAt::parse) for a nullable column.
    pub fn parse_opt<T: serde::de::DeserializeOwned>(
        &self,
        r: &rusqlite::Row<'_>,
        col: &str,
        json: bool,
    ) -> Result<Option<T>, StateError> {
        let text: Option<String> = self.get(r, col)?;
        text.map(|t| parse_text(&t, json).map_err(|e| self.corrupt(what(col, &t, json, &e))))
            .transpose()
    }

    /// A non-negative count or duration.
    pub fn count<T: TryFrom<i64>>(
        &self,
        r: &rusqlite::Row<'_>,
        col: &str,
    ) -> Result<T, StateError> {
        let v: i64 = self.get(r, col)?;
        T::try_from(v).map_err(|_| self.corrupt(format!("`{col}` {v} (not a count)")))
    }
}

/// Enum names are JSON strings without the quotes.
fn parse_text<T: serde::de::DeserializeOwned>(
    text: &str,
    json: bool,
) -> Result<T, serde_json::Error> {
    if json {
        serde_json::from_str(text)
    } else {
        serde_json::from_value(serde_json::Value::String(text.to_string()))
    }
}

/// Names the column; shows an unknown enum name (escaped, at most 40 characters) but never a
/// JSON value, which may be long or hold data.
fn what(col: &str, text: &str, json: bool, e: &serde_json::Error) -> String {
    if json {
        return format!("`{col}` (bad JSON: {e})");
    }
    let shown: String = text.chars().take(40).collect();
    format!("`{col}` {shown:?} (not a known value)")
}
