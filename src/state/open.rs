//! Opening the state: the private directory, the daemon lock, the connection, migrations, and
//! the check that the history was not deleted behind the daemon's back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::busy;
use super::{schema, StateDb, StateError, BUSY_TIMEOUT, DB_FILE, LOCK_FILE, LOCK_WAIT};
use crate::audit::{DaemonKey, KEY_FILE};

/// The config mirror under the state directory (`crate::source` keeps it there); its presence
/// shows the daemon ran here before.
pub const MIRROR_DIR: &str = "mirror.git";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a path other users may read or write (`mode & 0o077`), naming the `chmod` to run.
fn check_private(path: &Path, fix: u32) -> Result<(), StateError> {
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::Permissions {
            path: path.to_path_buf(),
            mode,
            fix,
        });
    }
    Ok(())
}

/// Sets `path` to `mode` explicitly (never through the umask).
fn set_mode(path: &Path, mode: u32) -> Result<(), StateError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// The database file is private: created 0600 before SQLite opens it (SQLite gives `-wal`
/// and `-shm` the database file's mode), refused when it exists and others may access it.
fn private_db_file(db: &Path) -> Result<(), StateError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => set_mode(db, 0o600),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_private(db, 0o600),
        Err(e) => Err(io(db)(e)),
    }
}

/// `-wal` and `-shm` beside the database: 0600 whatever created them.
fn private_sidecars(db: &Path) -> Result<(), StateError> {
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            set_mode(&p, 0o600)?;
        }
    }
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, StateError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
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
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

/// Whether a daemon holds the lock on `dir` right now.
pub(crate) fn daemon_running(dir: &Path) -> bool {
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

pub(crate) fn connect(path: &Path) -> Result<Connection, StateError> {
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
    /// Opens (creating if needed) the daemon's state in `state_dir`: creates the directory
    /// 0700 and the database 0600 (refusing either when other users may access it), locks it,
    /// loads or creates the daemon key, migrates the schema, and marks runs a killed daemon
    /// left unfinished as `interrupted`. Call [`check_not_reset`] first.
    pub fn open(state_dir: &Path) -> Result<StateDb, StateError> {
        let path = state_dir.join(DB_FILE);
        crate::audit::create_private_dir(state_dir).map_err(io(state_dir))?;
        check_private(state_dir, 0o700)?;
        let lock = lock_dir(state_dir)?;
        let key = DaemonKey::load_or_create(state_dir)?;
        private_db_file(&path)?;
        let mut conn = connect(&path)?;
        private_sidecars(&path)?;
        schema::migrate_to(&mut conn, schema::SCHEMA_VERSION, &path).map_err(|e| busy(e, &path))?;
        let db = StateDb {
            conn,
            dir: state_dir.to_path_buf(),
            path,
            key: Some(Arc::new(key)),
            _lock: Some(Arc::new(lock)),
            chain: super::chain_check::new_kept(),
        };
        db.mark_interrupted()?;
        Ok(db)
    }

    /// Opens the state at `state_dir` to record a person's runs (`plumb apply --state`,
    /// `plumb rollback`, `plumb unpin`), beside a running daemon too: no lock (every write is
    /// one IMMEDIATE transaction, so the chain never forks; hosts are guarded by the apply
    /// leases, see [`super::LeaseGuard`]), the daemon key (created with the state when there
    /// is none yet), the same privacy checks. Runs left unfinished are the daemon's to mark.
    pub fn open_recorder(state_dir: &Path) -> Result<StateDb, StateError> {
        let path = state_dir.join(DB_FILE);
        crate::audit::create_private_dir(state_dir).map_err(io(state_dir))?;
        check_private(state_dir, 0o700)?;
        let key = DaemonKey::load_or_create(state_dir)?;
        private_db_file(&path)?;
        let mut conn = connect(&path)?;
        private_sidecars(&path)?;
        schema::migrate_to(&mut conn, schema::SCHEMA_VERSION, &path).map_err(|e| busy(e, &path))?;
        Ok(StateDb {
            conn,
            dir: state_dir.to_path_buf(),
            path,
            key: Some(Arc::new(key)),
            _lock: None,
            chain: super::chain_check::new_kept(),
        })
    }

    /// Opens an existing state for reading (history, audit): no lock, no key, no writes.
    /// Refuses a directory or database that other users may access, like the daemon.
    pub fn open_inspect(state_dir: &Path) -> Result<StateDb, StateError> {
        let path = state_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StateError::NotFound { path });
        }
        check_private(state_dir, 0o700)?;
        check_private(&path, 0o600)?;
        let mut conn = connect(&path)?;
        schema::migrate_to(&mut conn, schema::SCHEMA_VERSION, &path).map_err(|e| busy(e, &path))?;
        Ok(StateDb {
            conn,
            dir: state_dir.to_path_buf(),
            path,
            key: None,
            _lock: None,
            chain: super::chain_check::new_kept(),
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
            chain: self.chain.clone(),
        })
    }
}

/// Refuses to start on a state directory whose history was deleted: the database is missing
/// or holds no run, while the daemon key (`daemon-ed25519.key`) or the config mirror
/// (`mirror.git`) show that a daemon ran here before. Without the history the audit chain
/// would silently start again at record 1.
///
/// With `accept_reset`, the deliberate reset is itself recorded: the state is opened (as
/// [`StateDb::open`] does) and a signed `state_reset` run naming what was found becomes the
/// first record of the new chain; then this returns and the daemon opens the state as usual.
/// A daemon killed after creating its key but before it began its first run is refused too
/// (the same evidence); the operator then passes the flag once.
pub fn check_not_reset(state_dir: &Path, accept_reset: bool) -> Result<(), StateError> {
    let found: Vec<PathBuf> = [KEY_FILE, MIRROR_DIR]
        .iter()
        .map(|f| state_dir.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    let db = state_dir.join(DB_FILE);
    let db_exists = db.is_file();
    if db_exists && has_runs(&db)? {
        return Ok(());
    }
    if !accept_reset {
        return Err(StateError::Reset {
            dir: state_dir.to_path_buf(),
            db,
            db_exists,
            found,
        });
    }
    let names: Vec<String> = found
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    StateDb::open(state_dir)?.record_reset(&names, db_exists)
}

/// Whether the database holds any run (finished or not). Read-only: never creates or migrates.
fn has_runs(db: &Path) -> Result<bool, StateError> {
    let open = |source| StateError::Open {
        path: db.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
    let has_table: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| busy(e.into(), db))?;
    if !has_table {
        return Ok(false);
    }
    conn.query_row("SELECT EXISTS (SELECT 1 FROM runs)", [], |r| r.get(0))
        .map_err(|e| busy(e.into(), db))
}
