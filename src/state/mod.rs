//! The state database: runs, their per-host and per-step results, the last applied commit of
//! each environment, failed commits and drift findings. SQLite at `<state_dir>/plumb.db`
//! (WAL, busy timeout, foreign keys), migrated by `PRAGMA user_version` (see [`schema`]).
//!
//! Two ways in:
//! - [`StateDb::open`] — the daemon. Takes an exclusive lock on `<state_dir>/plumb.lock` for
//!   the life of the handle (one daemon per state directory), loads or creates the daemon key
//!   (see [`crate::audit`]), and marks runs left unfinished by a killed daemon as
//!   `interrupted` (signed into the audit chain like any other run). [`StateDb::handle`] opens
//!   more connections sharing the lock and key, e.g. one per thread.
//! - [`StateDb::open_inspect`] — `plumb history`, `plumb audit verify`: no lock, no key, no
//!   writes. An unfinished run shows as `running` while a daemon holds the lock, and as
//!   `interrupted` otherwise.
//!
//! Every write is one IMMEDIATE transaction, so concurrent handles serialise on SQLite's write
//! lock (waiting up to the busy timeout) and the audit chain never forks.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{self, AuditError, DaemonKey, GENESIS};
use crate::engine::{HostError, HostPlan, HostRun, StepStatus};
use crate::modules::{ChangeKind, FieldChange};
use crate::render::DesiredHost;

pub mod report;
pub mod schema;

pub use schema::SCHEMA_VERSION;

/// The database file under the state directory.
pub const DB_FILE: &str = "plumb.db";
/// The daemon's lock file under the state directory.
pub const LOCK_FILE: &str = "plumb.lock";
/// How long [`StateDb::open`] waits for the daemon lock before reporting it held.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long a write waits for another handle's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error("state db: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "state db at {path} holds an unreadable value: {detail}; the file was edited or damaged"
    )]
    Corrupt { path: PathBuf, detail: String },
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
            StateError::Sqlite(_) => "state.sqlite",
            StateError::Corrupt { .. } => "state.corrupt",
            StateError::NoSuchRun { .. } => "state.no_such_run",
            StateError::AlreadyFinished { .. } => "state.already_finished",
            StateError::InvalidResult(_) => "state.invalid_result",
            StateError::ReadOnly => "state.read_only",
            StateError::Audit(a) => a.code(),
        }
    }
}

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$v),)+ _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Why a run happened.
    RunKind {
        /// A new commit applied.
        Apply = "apply",
        /// Drift corrected (`correct` mode).
        Correction = "correction",
        /// Hosts observed for drift, nothing applied.
        DriftCheck = "drift_check",
        /// A commit refused before any host was contacted (bad signature, invalid, rollback).
        Refused = "refused",
    }
);

text_enum!(
    /// What started a run.
    Trigger {
        Push = "push",
        Poll = "poll",
        Webhook = "webhook",
        Drift = "drift",
        Startup = "startup",
        Cli = "cli",
    }
);

text_enum!(
    /// How a run ended. `running` and `interrupted` are plumb's own: `running` is never stored,
    /// `interrupted` is stored for runs a killed daemon left unfinished.
    RunResult {
        Converged = "converged",
        Failed = "failed",
        Refused = "refused",
        NoChange = "no_change",
        DriftFound = "drift_found",
        Interrupted = "interrupted",
        Running = "running",
    }
);

/// A run id: 26 characters of Crockford base32 (48 bits of milliseconds, 80 random bits),
/// sortable by start time.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct RunId(pub String);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RunId {
    fn generate(now_ms: i64) -> RunId {
        use rand::RngCore;
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut rnd = [0u8; 10];
        rand::rngs::OsRng.fill_bytes(&mut rnd);
        let mut value: u128 = (u128::from(now_ms.max(0) as u64) & ((1 << 48) - 1)) << 80;
        for (i, b) in rnd.iter().enumerate() {
            value |= u128::from(*b) << (8 * (9 - i));
        }
        let s: String = (0..26)
            .rev()
            .map(|i| ALPHABET[((value >> (5 * i)) & 31) as usize] as char)
            .collect();
        RunId(s)
    }
}

/// Who signed the commit a run applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signer {
    /// The principal of the allowed-signers line that matched, e.g. `alice@example.com`.
    pub principal: String,
    /// The key fingerprint, `SHA256:...`.
    pub fingerprint: String,
}

/// What [`StateDb::begin_run`] needs.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub environment: String,
    pub commit: Option<String>,
    pub signer: Option<Signer>,
    pub kind: RunKind,
    pub trigger: Trigger,
}

/// Per step address: what the engine's results do not carry (module name, sensitivity) and
/// whether a change of that step is drift rather than an intended change.
#[derive(Debug, Clone, Default)]
pub struct StepMeta {
    steps: std::collections::HashMap<String, (String, bool)>,
    drift: std::collections::HashSet<String>,
}

impl StepMeta {
    pub fn from_desired(host: &DesiredHost) -> StepMeta {
        let mut m = StepMeta::default();
        for s in &host.steps {
            m.insert(&s.address, &s.module, s.sensitive);
        }
        m
    }
    pub fn insert(&mut self, address: &str, module: &str, sensitive: bool) {
        self.steps
            .insert(address.to_string(), (module.to_string(), sensitive));
    }
    /// Marks a step's change as drift in an `apply` run (in `correction` and `drift_check`
    /// runs every change is drift already).
    pub fn mark_drift(&mut self, address: &str) {
        self.drift.insert(address.to_string());
    }
    fn module(&self, address: &str) -> String {
        self.steps
            .get(address)
            .map(|(m, _)| m.clone())
            .unwrap_or_default()
    }
    /// Unknown steps are treated as sensitive: nothing leaks by omission.
    fn sensitive(&self, address: &str) -> bool {
        self.steps.get(address).is_none_or(|(_, s)| *s)
    }
}

/// One run, as listed by [`StateDb::runs`].
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunRecord {
    pub id: RunId,
    pub environment: String,
    pub commit: Option<String>,
    pub signer: Option<Signer>,
    pub kind: RunKind,
    pub trigger: Trigger,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub result: RunResult,
    pub summary: Value,
    pub hosts: usize,
    pub failed_hosts: usize,
    /// Steps changed (apply, correction) or found drifted (drift check).
    pub changes: usize,
    /// Of `changes`, those that were drift.
    pub drift: usize,
    /// Position in the audit chain and record hash, once finished.
    pub chain_seq: Option<i64>,
    pub hash: Option<String>,
}

/// One host's result in a run.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HostRecord {
    pub host: String,
    /// `converged`, `failed`, `unreachable` (apply); `in_sync`, `drifted`, `failed`,
    /// `unreachable` (drift check).
    pub status: String,
    pub error: Option<String>,
    pub changed: usize,
    pub in_sync: usize,
    pub duration_ms: u64,
    pub round_trips: Value,
    /// Steps that changed, drifted, failed or were skipped.
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepRecord {
    pub address: String,
    pub module: String,
    /// `changed`, `failed`, `skipped`, `drifted`.
    pub status: String,
    pub change: Option<ChangeKind>,
    pub fields: Vec<FieldChange>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// This difference was drift, not an intended change.
    pub drift: bool,
}

/// A run with its host and step results.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunDetail {
    pub run: RunRecord,
    pub hosts: Vec<HostRecord>,
}

/// Which runs [`StateDb::runs`] lists (newest first).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub environment: Option<String>,
    pub kind: Option<RunKind>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LastApplied {
    pub environment: String,
    pub commit: String,
    pub run_id: Option<RunId>,
    pub applied_at: i64,
}

/// A resource found different from the repo while the commit did not change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DriftFinding {
    pub id: i64,
    pub environment: String,
    pub host: String,
    pub address: String,
    pub change: ChangeKind,
    pub fields: Vec<FieldChange>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub resolved_at: Option<i64>,
    /// The last run that saw it.
    pub run_id: Option<RunId>,
}

/// The state database. See the module docs.
pub struct StateDb {
    conn: Connection,
    dir: PathBuf,
    path: PathBuf,
    /// Present on daemon handles only.
    key: Option<Arc<DaemonKey>>,
    _lock: Option<Arc<File>>,
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

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_usize(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn step_status_str(s: StepStatus) -> &'static str {
    match s {
        StepStatus::InSync => "in_sync",
        StepStatus::Changed => "changed",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
    }
}

fn change_str(k: ChangeKind) -> &'static str {
    match k {
        ChangeKind::InSync => "in_sync",
        ChangeKind::Create => "create",
        ChangeKind::Modify => "modify",
        ChangeKind::Remove => "remove",
    }
}

fn parse_change(s: &str) -> Option<ChangeKind> {
    match s {
        "in_sync" => Some(ChangeKind::InSync),
        "create" => Some(ChangeKind::Create),
        "modify" => Some(ChangeKind::Modify),
        "remove" => Some(ChangeKind::Remove),
        _ => None,
    }
}

/// A step row before insertion.
struct StepRow<'a> {
    address: &'a str,
    module: String,
    status: &'static str,
    change: Option<ChangeKind>,
    fields: Vec<FieldChange>,
    error: Option<&'a str>,
    duration_ms: i64,
    drift: bool,
}

fn lock_dir(dir: &Path) -> Result<File, StateError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // A child process forked by this process (ssh, sh) shares the lock until it execs, so a
    // lock that was just released can look held for a moment: retry briefly before giving up.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut attempt = file.try_lock();
    while matches!(attempt, Err(std::fs::TryLockError::WouldBlock))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(25));
        attempt = file.try_lock();
    }
    match attempt {
        Ok(()) => {
            use std::io::{Seek, Write};
            // Best effort: the pid only improves the "locked" message of the next daemon.
            let _ = file
                .set_len(0)
                .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
                .and_then(|_| writeln!(file, "{}", std::process::id()));
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Err(StateError::Locked {
                path: dir.join(DB_FILE),
                pid,
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Whether a daemon holds the lock on `dir` right now.
fn daemon_running(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    // Held on every try, not just for the moment a forked child shares it (see lock_dir).
    for _ in 0..5 {
        if file.try_lock_shared().is_ok() {
            let _ = file.unlock();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn connect(path: &Path) -> Result<Connection, StateError> {
    let open = |source| StateError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "state db is not in WAL mode");
    }
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
        .map_err(open)?;
    Ok(conn)
}

impl StateDb {
    /// Opens (creating if needed) the daemon's state in `state_dir`: locks it, loads or
    /// creates the daemon key, migrates the schema, and marks runs a killed daemon left
    /// unfinished as `interrupted`.
    pub fn open(state_dir: &Path) -> Result<StateDb, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Io {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(state_dir)?;
        let key = DaemonKey::load_or_create(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let mut conn = connect(&path)?;
        schema::migrate_to(&mut conn, SCHEMA_VERSION, &path).map_err(|e| busy(e, &path))?;
        let db = StateDb {
            conn,
            dir: state_dir.to_path_buf(),
            path,
            key: Some(Arc::new(key)),
            _lock: Some(Arc::new(lock)),
        };
        db.mark_interrupted()?;
        Ok(db)
    }

    /// Opens an existing state for reading (history, audit): no lock, no key, no writes.
    pub fn open_inspect(state_dir: &Path) -> Result<StateDb, StateError> {
        let path = state_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StateError::NotFound { path });
        }
        let mut conn = connect(&path)?;
        schema::migrate_to(&mut conn, SCHEMA_VERSION, &path).map_err(|e| busy(e, &path))?;
        Ok(StateDb {
            conn,
            dir: state_dir.to_path_buf(),
            path,
            key: None,
            _lock: None,
        })
    }

    /// Another connection to the same database, sharing this handle's lock and key.
    pub fn handle(&self) -> Result<StateDb, StateError> {
        Ok(StateDb {
            conn: connect(&self.path)?,
            dir: self.dir.clone(),
            path: self.path.clone(),
            key: self.key.clone(),
            _lock: self._lock.clone(),
        })
    }

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

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, e: StateError) -> StateError {
        busy(e, &self.path)
    }

    fn corrupt(&self, detail: impl Into<String>) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
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

    /// Starts a run; it stays `running` until [`finish_run`](StateDb::finish_run).
    pub fn begin_run(&self, new: &NewRun) -> Result<RunId, StateError> {
        self.write(|c, _| {
            let now = now_ms();
            let id = RunId::generate(now);
            c.execute(
                "INSERT INTO runs (id, environment, commit_id, signer_principal,
                    signer_fingerprint, kind, trigger, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.0,
                    new.environment,
                    new.commit,
                    new.signer.as_ref().map(|s| &s.principal),
                    new.signer.as_ref().map(|s| &s.fingerprint),
                    new.kind.as_str(),
                    new.trigger.as_str(),
                    now
                ],
            )?;
            Ok(id)
        })
    }

    /// (environment, kind) of an unfinished run, or the reason it cannot take results.
    fn open_run(c: &Connection, run: &RunId) -> Result<(String, RunKind), StateError> {
        let row: Option<(String, String, Option<i64>)> = c
            .query_row(
                "SELECT environment, kind, finished_at FROM runs WHERE id = ?1",
                params![run.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            None => Err(StateError::NoSuchRun { id: run.0.clone() }),
            Some((_, _, Some(_))) => Err(StateError::AlreadyFinished { id: run.0.clone() }),
            Some((env, kind, None)) => Ok((env, RunKind::parse(&kind).unwrap_or(RunKind::Apply))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_host(
        c: &Connection,
        run: &RunId,
        host: &str,
        status: &str,
        error: Option<&str>,
        changed: usize,
        in_sync: usize,
        duration_ms: i64,
        round_trips: &crate::engine::RoundTrips,
        steps: &[StepRow<'_>],
    ) -> Result<(), StateError> {
        c.execute(
            "INSERT INTO host_results (run_id, host, status, error, changed, in_sync,
                duration_ms, round_trips)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run.0,
                host,
                status,
                error,
                i64::try_from(changed).unwrap_or(i64::MAX),
                i64::try_from(in_sync).unwrap_or(i64::MAX),
                duration_ms,
                json_text(round_trips)
            ],
        )?;
        let mut stmt = c.prepare_cached(
            "INSERT INTO step_results (run_id, host, address, module, status, change_kind,
                fields, error, duration_ms, drift)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for s in steps {
            stmt.execute(params![
                run.0,
                host,
                s.address,
                s.module,
                s.status,
                s.change.map(change_str),
                json_text(&s.fields),
                s.error,
                s.duration_ms,
                s.drift
            ])?;
        }
        Ok(())
    }

    /// Records one host's apply (kinds `apply` and `correction`). Only steps that are not in
    /// sync get a row. Fields of sensitive steps are redacted. A converged host has no open
    /// drift left: its open findings are resolved by this run.
    pub fn record_host(
        &self,
        run: &RunId,
        host: &HostRun,
        meta: &StepMeta,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let (env, kind) = Self::open_run(c, run)?;
            let all_drift = matches!(kind, RunKind::Correction | RunKind::DriftCheck);
            let steps: Vec<StepRow<'_>> = host
                .steps
                .iter()
                .filter(|s| s.status != StepStatus::InSync)
                .map(|s| StepRow {
                    address: &s.address,
                    module: meta.module(&s.address),
                    status: step_status_str(s.status),
                    change: s.change.as_ref().map(|c| c.kind),
                    fields: match &s.change {
                        Some(c) if meta.sensitive(&s.address) => crate::modules::redact(&c.fields),
                        Some(c) => c.fields.clone(),
                        None => Vec::new(),
                    },
                    error: s.error.as_deref(),
                    duration_ms: i64::try_from(s.duration_ms).unwrap_or(i64::MAX),
                    drift: s.change.is_some() && (all_drift || meta.drift.contains(&s.address)),
                })
                .collect();
            let status = match host.status {
                crate::engine::HostStatus::Converged => "converged",
                crate::engine::HostStatus::Failed => "failed",
                crate::engine::HostStatus::Unreachable => "unreachable",
            };
            Self::insert_host(
                c,
                run,
                &host.host.name,
                status,
                host.error.as_deref(),
                host.changed(),
                host.steps
                    .iter()
                    .filter(|s| s.status == StepStatus::InSync)
                    .count(),
                ms(host.duration),
                &host.round_trips,
                &steps,
            )?;
            if host.status == crate::engine::HostStatus::Converged {
                c.execute(
                    "UPDATE drift_findings SET resolved_at = ?1, resolved_run_id = ?2
                     WHERE environment = ?3 AND host = ?4 AND resolved_at IS NULL",
                    params![now_ms(), run.0, env, host.host.name],
                )?;
            }
            Ok(())
        })
    }

    /// Records one host's drift check: drifted steps get a row (marked drift) and an open
    /// finding (created or refreshed); when the host was observed, open findings of steps now
    /// in sync (or no longer declared) are resolved. Steps whose probe failed keep theirs.
    pub fn record_drift_check(&self, run: &RunId, plan: &HostPlan) -> Result<(), StateError> {
        self.write(|c, _| {
            let (env, _) = Self::open_run(c, run)?;
            let mut steps = Vec::new();
            for s in &plan.steps {
                match &s.change {
                    Ok(ch) if ch.is_change() => steps.push(StepRow {
                        address: &s.address,
                        module: s.module.clone(),
                        status: "drifted",
                        change: Some(ch.kind),
                        fields: if s.sensitive {
                            crate::modules::redact(&ch.fields)
                        } else {
                            ch.fields.clone()
                        },
                        error: None,
                        duration_ms: 0,
                        drift: true,
                    }),
                    Ok(_) => {}
                    Err(e) => steps.push(StepRow {
                        address: &s.address,
                        module: s.module.clone(),
                        status: "failed",
                        change: None,
                        fields: Vec::new(),
                        error: Some(e.as_str()),
                        duration_ms: 0,
                        drift: false,
                    }),
                }
            }
            let error = plan.error.as_ref().map(|e| e.to_string());
            let status = match &plan.error {
                Some(HostError::Unreachable(_)) => "unreachable",
                Some(_) => "failed",
                None if plan.step_errors() > 0 => "failed",
                None if plan.changes() > 0 => "drifted",
                None => "in_sync",
            };
            let in_sync = plan
                .steps
                .iter()
                .filter(|s| matches!(&s.change, Ok(c) if !c.is_change()))
                .count();
            Self::insert_host(
                c,
                run,
                &plan.host.name,
                status,
                error.as_deref(),
                plan.changes(),
                in_sync,
                ms(plan.duration),
                &plan.round_trips,
                &steps,
            )?;
            if plan.error.is_some() {
                return Ok(());
            }
            let now = now_ms();
            let mut keep = std::collections::HashSet::new();
            for s in &steps {
                keep.insert(s.address.to_string());
                if let (true, Some(kind)) = (s.drift, s.change) {
                    Self::upsert_drift_in(
                        c,
                        run,
                        &env,
                        &plan.host.name,
                        s.address,
                        kind,
                        &s.fields,
                        now,
                    )?;
                }
            }
            let open: Vec<String> = c
                .prepare_cached(
                    "SELECT address FROM drift_findings
                     WHERE environment = ?1 AND host = ?2 AND resolved_at IS NULL",
                )?
                .query_map(params![env, plan.host.name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for address in open.iter().filter(|a| !keep.contains(*a)) {
                Self::resolve_drift_in(c, run, &env, &plan.host.name, address, now)?;
            }
            Ok(())
        })
    }

    /// Finishes a run and signs its record into the audit chain. `summary` is free-form JSON
    /// (counts, the refusal reason, ...), stored and signed as given.
    pub fn finish_run(
        &self,
        run: &RunId,
        result: RunResult,
        summary: &Value,
    ) -> Result<(), StateError> {
        if result == RunResult::Running {
            return Err(StateError::InvalidResult(result));
        }
        self.write(|c, key| {
            Self::open_run(c, run)?;
            c.execute(
                "UPDATE runs SET finished_at = MAX(?1, started_at), result = ?2, summary = ?3
                 WHERE id = ?4",
                params![now_ms(), result.as_str(), json_text(summary), run.0],
            )?;
            Self::sign_in(c, key, run)
        })
    }

    /// Appends a finished run to the audit chain (inside the caller's transaction).
    fn sign_in(c: &Connection, key: &DaemonKey, run: &RunId) -> Result<(), StateError> {
        let last: Option<(i64, Option<String>)> = c
            .query_row(
                "SELECT chain_seq, hash FROM runs WHERE chain_seq IS NOT NULL
                 ORDER BY chain_seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (seq, prev) = match last {
            Some((s, Some(h))) => (s + 1, h),
            Some((s, None)) => (s + 1, GENESIS.to_string()),
            None => (1, GENESIS.to_string()),
        };
        let Some(record) = audit::build_record(c, &run.0, seq, &prev, &key.fingerprint())? else {
            return Err(StateError::NoSuchRun { id: run.0.clone() });
        };
        let hash = audit::record_hash(&record);
        let signature = key.sign_hash(&hash);
        c.execute(
            "UPDATE runs SET chain_seq = ?1, prev_hash = ?2, hash = ?3, signature = ?4, record = ?5
             WHERE id = ?6",
            params![seq, prev, hash, signature, record, run.0],
        )?;
        Ok(())
    }

    /// Marks every unfinished run `interrupted` and signs it. Only the daemon holding the
    /// lock calls this, so no unfinished run can belong to a live daemon.
    fn mark_interrupted(&self) -> Result<usize, StateError> {
        self.write(|c, key| {
            let ids: Vec<String> = c
                .prepare("SELECT id FROM runs WHERE finished_at IS NULL ORDER BY started_at, id")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let summary = serde_json::json!({
                "interrupted": "the daemon stopped before this run finished; marked when it restarted. Results recorded before it stopped are kept; the next run observes the hosts and converges."
            });
            for id in &ids {
                c.execute(
                    "UPDATE runs SET finished_at = MAX(?1, started_at), result = 'interrupted',
                        summary = ?2 WHERE id = ?3",
                    params![now_ms(), summary.to_string(), id],
                )?;
                Self::sign_in(c, key, &RunId(id.clone()))?;
            }
            if !ids.is_empty() {
                tracing::warn!(runs = ids.len(), "marked runs left unfinished by a stopped daemon as interrupted");
            }
            Ok(ids.len())
        })
    }

    /// The last commit applied to `env`.
    pub fn last_applied(&self, env: &str) -> Result<Option<LastApplied>, StateError> {
        self.conn
            .query_row(
                "SELECT environment, commit_id, run_id, applied_at FROM last_applied
                 WHERE environment = ?1",
                params![env],
                |r| {
                    Ok(LastApplied {
                        environment: r.get(0)?,
                        commit: r.get(1)?,
                        run_id: r.get::<_, Option<String>>(2)?.map(RunId),
                        applied_at: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e.into()))
    }

    pub fn set_last_applied(&self, env: &str, commit: &str, run: &RunId) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute(
                "INSERT INTO last_applied (environment, commit_id, run_id, applied_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (environment) DO UPDATE SET commit_id = excluded.commit_id,
                    run_id = excluded.run_id, applied_at = excluded.applied_at",
                params![env, commit, run.0, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Records that `commit` failed in `env`: the daemon does not retry it until a new
    /// commit arrives.
    pub fn mark_failed(
        &self,
        env: &str,
        commit: &str,
        run: Option<&RunId>,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute(
                "INSERT INTO failed_commits (environment, commit_id, run_id, failed_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (environment, commit_id) DO UPDATE SET run_id = excluded.run_id,
                    failed_at = excluded.failed_at",
                params![env, commit, run.map(|r| &r.0), now_ms()],
            )?;
            Ok(())
        })
    }

    pub fn is_failed(&self, env: &str, commit: &str) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT 1 FROM failed_commits WHERE environment = ?1 AND commit_id = ?2",
                params![env, commit],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e.into()))
    }

    /// Open (unresolved) drift findings of `env`, by host and address.
    pub fn open_drift(&self, env: &str) -> Result<Vec<DriftFinding>, StateError> {
        let rows: Vec<Result<DriftFinding, StateError>> = self
            .conn
            .prepare_cached(
                "SELECT id, environment, host, address, change_kind, fields, first_seen,
                    last_seen, resolved_at, run_id
                 FROM drift_findings WHERE environment = ?1 AND resolved_at IS NULL
                 ORDER BY host, address",
            )
            .and_then(|mut s| {
                s.query_map(params![env], |r| {
                    let id: i64 = r.get(0)?;
                    let kind: String = r.get(4)?;
                    let fields: String = r.get(5)?;
                    let Some(change) = parse_change(&kind) else {
                        return Ok(Err(
                            self.corrupt(format!("drift finding {id}: change `{kind}`"))
                        ));
                    };
                    let fields = match serde_json::from_str(&fields) {
                        Ok(f) => f,
                        Err(e) => {
                            return Ok(
                                Err(self.corrupt(format!("drift finding {id}: fields: {e}"))),
                            )
                        }
                    };
                    Ok(Ok(DriftFinding {
                        id,
                        environment: r.get(1)?,
                        host: r.get(2)?,
                        address: r.get(3)?,
                        change,
                        fields,
                        first_seen: r.get(6)?,
                        last_seen: r.get(7)?,
                        resolved_at: r.get(8)?,
                        run_id: r.get::<_, Option<String>>(9)?.map(RunId),
                    }))
                })?
                .collect()
            })
            .map_err(|e| self.err(e.into()))?;
        rows.into_iter().collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn upsert_drift_in(
        c: &Connection,
        run: &RunId,
        env: &str,
        host: &str,
        address: &str,
        change: ChangeKind,
        fields: &[FieldChange],
        now: i64,
    ) -> Result<i64, StateError> {
        let id = c.query_row(
            "INSERT INTO drift_findings (environment, host, address, change_kind, fields,
                first_seen, last_seen, run_id, first_run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?7)
             ON CONFLICT (environment, host, address) WHERE resolved_at IS NULL
             DO UPDATE SET change_kind = excluded.change_kind, fields = excluded.fields,
                last_seen = excluded.last_seen, run_id = excluded.run_id
             RETURNING id",
            params![
                env,
                host,
                address,
                change_str(change),
                json_text(&fields),
                now,
                run.0
            ],
            |r| r.get(0),
        )?;
        Ok(id)
    }

    fn resolve_drift_in(
        c: &Connection,
        run: &RunId,
        env: &str,
        host: &str,
        address: &str,
        now: i64,
    ) -> Result<bool, StateError> {
        let n = c.execute(
            "UPDATE drift_findings SET resolved_at = ?1, resolved_run_id = ?2
             WHERE environment = ?3 AND host = ?4 AND address = ?5 AND resolved_at IS NULL",
            params![now, run.0, env, host, address],
        )?;
        Ok(n > 0)
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
        self.write(|c, _| {
            Self::upsert_drift_in(c, run, env, host, address, change, fields, now_ms())
        })
    }

    /// Resolves the open finding of a resource; false when there was none.
    pub fn resolve_drift(
        &self,
        run: &RunId,
        env: &str,
        host: &str,
        address: &str,
    ) -> Result<bool, StateError> {
        self.write(|c, _| Self::resolve_drift_in(c, run, env, host, address, now_ms()))
    }

    fn unfinished_result(&self) -> RunResult {
        if self.key.is_some() || daemon_running(&self.dir) {
            RunResult::Running
        } else {
            RunResult::Interrupted
        }
    }

    fn record_from_row(
        &self,
        r: &rusqlite::Row<'_>,
        unfinished: RunResult,
    ) -> rusqlite::Result<Result<RunRecord, StateError>> {
        let id: String = r.get("id")?;
        let kind: String = r.get("kind")?;
        let trigger: String = r.get("trigger")?;
        let result: Option<String> = r.get("result")?;
        let summary: String = r.get("summary")?;
        let principal: Option<String> = r.get("signer_principal")?;
        let fpr: Option<String> = r.get("signer_fingerprint")?;
        let finished_at: Option<i64> = r.get("finished_at")?;
        let bad = |what: &str, v: &str| self.corrupt(format!("run {id}: {what} `{v}`"));
        let Some(kind) = RunKind::parse(&kind) else {
            return Ok(Err(bad("kind", &kind)));
        };
        let Some(trigger) = Trigger::parse(&trigger) else {
            return Ok(Err(bad("trigger", &trigger)));
        };
        let result = match (&result, finished_at) {
            (Some(s), _) => match RunResult::parse(s) {
                Some(x) => x,
                None => return Ok(Err(bad("result", s))),
            },
            (None, _) => unfinished,
        };
        Ok(Ok(RunRecord {
            id: RunId(id.clone()),
            environment: r.get("environment")?,
            commit: r.get("commit_id")?,
            signer: match (principal, fpr) {
                (None, None) => None,
                (p, f) => Some(Signer {
                    principal: p.unwrap_or_default(),
                    fingerprint: f.unwrap_or_default(),
                }),
            },
            kind,
            trigger,
            started_at: r.get("started_at")?,
            finished_at,
            result,
            summary: serde_json::from_str(&summary).unwrap_or(Value::String(summary)),
            hosts: to_usize(r.get("n_hosts")?),
            failed_hosts: to_usize(r.get("n_failed")?),
            changes: to_usize(r.get("n_changes")?),
            drift: to_usize(r.get("n_drift")?),
            chain_seq: r.get("chain_seq")?,
            hash: r.get("hash")?,
        }))
    }

    const RUN_SELECT: &'static str = "SELECT r.*,
        (SELECT COUNT(*) FROM host_results h WHERE h.run_id = r.id) AS n_hosts,
        (SELECT COUNT(*) FROM host_results h WHERE h.run_id = r.id
            AND h.status IN ('failed', 'unreachable')) AS n_failed,
        (SELECT COUNT(*) FROM step_results s WHERE s.run_id = r.id
            AND s.status IN ('changed', 'drifted')) AS n_changes,
        (SELECT COUNT(*) FROM step_results s WHERE s.run_id = r.id
            AND s.status IN ('changed', 'drifted') AND s.drift = 1) AS n_drift
        FROM runs r";

    /// Runs, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StateError> {
        let unfinished = self.unfinished_result();
        let sql = format!(
            "{} WHERE (?1 IS NULL OR r.environment = ?1) AND (?2 IS NULL OR r.kind = ?2)
             ORDER BY r.started_at DESC, r.id DESC LIMIT ?3",
            Self::RUN_SELECT
        );
        let limit = filter
            .limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
            .unwrap_or(-1);
        let rows: Vec<Result<RunRecord, StateError>> = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(
                    params![filter.environment, filter.kind.map(RunKind::as_str), limit],
                    |r| self.record_from_row(r, unfinished),
                )?
                .collect()
            })
            .map_err(|e| self.err(e.into()))?;
        rows.into_iter().collect()
    }

    /// One run with its host and step results.
    pub fn run(&self, id: &RunId) -> Result<Option<RunDetail>, StateError> {
        let unfinished = self.unfinished_result();
        let sql = format!("{} WHERE r.id = ?1", Self::RUN_SELECT);
        let rec = self
            .conn
            .query_row(&sql, params![id.0], |r| self.record_from_row(r, unfinished))
            .optional()
            .map_err(|e| self.err(e.into()))?;
        let Some(rec) = rec else {
            return Ok(None);
        };
        let run = rec?;
        let Some(v) =
            crate::audit::chain::rows_value(&self.conn, &id.0).map_err(|e| self.err(e.into()))?
        else {
            return Ok(None);
        };
        let hosts = v.get("hosts").cloned().unwrap_or(Value::Array(Vec::new()));
        let hosts = parse_hosts(&hosts).map_err(|e| self.corrupt(format!("run {id}: {e}")))?;
        Ok(Some(RunDetail { run, hosts }))
    }

    /// Hash and position of the newest record of the audit chain.
    pub fn chain_head(&self) -> Result<Option<(i64, String)>, StateError> {
        self.conn
            .query_row(
                "SELECT chain_seq, hash FROM runs WHERE chain_seq IS NOT NULL
                 ORDER BY chain_seq DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e.into()))
    }
}

fn parse_hosts(v: &Value) -> Result<Vec<HostRecord>, String> {
    let arr = v.as_array().ok_or("hosts is not a list")?;
    arr.iter()
        .map(|h| {
            let s = |k: &str| h.get(k).and_then(Value::as_str).map(str::to_string);
            let n = |k: &str| h.get(k).and_then(Value::as_i64).unwrap_or(0);
            let steps = h
                .get("steps")
                .and_then(Value::as_array)
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|st| {
                    let ss = |k: &str| st.get(k).and_then(Value::as_str).map(str::to_string);
                    Ok(StepRecord {
                        address: ss("address").unwrap_or_default(),
                        module: ss("module").unwrap_or_default(),
                        status: ss("status").unwrap_or_default(),
                        change: ss("change").as_deref().and_then(parse_change),
                        fields: serde_json::from_value(
                            st.get("fields").cloned().unwrap_or(Value::Null),
                        )
                        .unwrap_or_default(),
                        error: ss("error"),
                        duration_ms: to_u64(
                            st.get("duration_ms").and_then(Value::as_i64).unwrap_or(0),
                        ),
                        drift: st.get("drift").and_then(Value::as_bool).unwrap_or(false),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(HostRecord {
                host: s("host").unwrap_or_default(),
                status: s("status").unwrap_or_default(),
                error: s("error"),
                changed: to_usize(n("changed")),
                in_sync: to_usize(n("in_sync")),
                duration_ms: to_u64(n("duration_ms")),
                round_trips: h.get("round_trips").cloned().unwrap_or(Value::Null),
                steps,
            })
        })
        .collect()
}

/// SQLITE_BUSY / SQLITE_LOCKED after the busy timeout become [`StateError::Busy`].
fn busy(e: StateError, path: &Path) -> StateError {
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

#[cfg(test)]
pub(crate) mod tests;
