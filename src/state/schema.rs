//! Schema migrations, keyed by `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the database from version `i` to `i + 1`. Each runs in its own
//! IMMEDIATE transaction that re-reads `user_version` first, so two processes opening the same
//! old database migrate it once. Never edit a shipped migration: append a new one.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::StateError;

/// v1: runs and their results, last applied and failed commits.
const V1: &str = r#"
CREATE TABLE runs (
    id                 TEXT PRIMARY KEY,      -- ULID-like: sortable by start time
    environment        TEXT NOT NULL,
    commit_id          TEXT,
    signer_principal   TEXT,
    signer_fingerprint TEXT,
    kind               TEXT NOT NULL
        CHECK (kind IN ('apply', 'correction', 'drift_check', 'refused')),
    trigger            TEXT NOT NULL
        CHECK (trigger IN ('push', 'poll', 'webhook', 'drift', 'startup', 'cli')),
    started_at         INTEGER NOT NULL,      -- unix milliseconds, UTC
    finished_at        INTEGER,               -- NULL while running (or killed)
    result             TEXT CHECK (result IS NULL OR result IN
        ('converged', 'failed', 'refused', 'no_change', 'drift_found', 'interrupted')),
    summary            TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_by_env ON runs (environment, started_at DESC);
CREATE INDEX runs_by_start ON runs (started_at DESC);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;

CREATE TABLE host_results (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    host        TEXT NOT NULL,
    status      TEXT NOT NULL,                -- converged|failed|unreachable|in_sync|drifted
    error       TEXT,
    changed     INTEGER NOT NULL,
    in_sync     INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    round_trips TEXT NOT NULL,                -- JSON {probe, apply, verify}
    UNIQUE (run_id, host)
);

-- Steps that changed, drifted, failed or were skipped; in-sync steps are only counted.
CREATE TABLE step_results (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    host        TEXT NOT NULL,
    address     TEXT NOT NULL,
    module      TEXT NOT NULL,
    status      TEXT NOT NULL,                -- changed|failed|skipped|drifted|in_sync
    change_kind TEXT,                         -- create|modify|remove|in_sync
    fields      TEXT NOT NULL DEFAULT '[]',   -- JSON [{field, from, to}], redacted if sensitive
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    drift       INTEGER NOT NULL DEFAULT 0 CHECK (drift IN (0, 1)),
    FOREIGN KEY (run_id, host) REFERENCES host_results (run_id, host) ON DELETE CASCADE
);
CREATE INDEX step_results_by_run ON step_results (run_id, host);
CREATE INDEX step_results_by_address ON step_results (address, run_id);

CREATE TABLE last_applied (
    environment TEXT PRIMARY KEY,
    commit_id   TEXT NOT NULL,
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    applied_at  INTEGER NOT NULL
);

-- A commit that failed is not retried until a new commit arrives.
CREATE TABLE failed_commits (
    environment TEXT NOT NULL,
    commit_id   TEXT NOT NULL,
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    failed_at   INTEGER NOT NULL,
    PRIMARY KEY (environment, commit_id)
);
"#;

/// v2: drift findings, and the audit chain columns on runs.
const V2: &str = r#"
CREATE TABLE drift_findings (
    id              INTEGER PRIMARY KEY,
    environment     TEXT NOT NULL,
    host            TEXT NOT NULL,
    address         TEXT NOT NULL,
    change_kind     TEXT NOT NULL,
    fields          TEXT NOT NULL DEFAULT '[]',
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    resolved_at     INTEGER,
    run_id          TEXT REFERENCES runs (id) ON DELETE SET NULL,   -- last run that saw it
    first_run_id    TEXT REFERENCES runs (id) ON DELETE SET NULL,
    resolved_run_id TEXT REFERENCES runs (id) ON DELETE SET NULL
);
-- At most one open finding per resource.
CREATE UNIQUE INDEX drift_open ON drift_findings (environment, host, address)
    WHERE resolved_at IS NULL;
CREATE INDEX drift_by_env ON drift_findings (environment, resolved_at, host);

ALTER TABLE runs ADD COLUMN chain_seq INTEGER;   -- position in the audit chain, from 1
ALTER TABLE runs ADD COLUMN prev_hash TEXT;
ALTER TABLE runs ADD COLUMN hash TEXT;
ALTER TABLE runs ADD COLUMN signature TEXT;
ALTER TABLE runs ADD COLUMN record TEXT;         -- the signed canonical JSON, as hashed
CREATE UNIQUE INDEX runs_by_chain ON runs (chain_seq) WHERE chain_seq IS NOT NULL;
"#;

/// v3: run kind `state_reset` (a deliberate reset, recorded in the chain). SQLite cannot
/// change a CHECK constraint in place, so `runs` is rebuilt (the documented 12-step way; the
/// caller turns foreign keys off around it, so dropping the old table cascades nothing, and
/// `foreign_key_check` runs before the commit).
const V3: &str = r#"
CREATE TABLE runs_v3 (
    id                 TEXT PRIMARY KEY,
    environment        TEXT NOT NULL,
    commit_id          TEXT,
    signer_principal   TEXT,
    signer_fingerprint TEXT,
    kind               TEXT NOT NULL
        CHECK (kind IN ('apply', 'correction', 'drift_check', 'refused', 'state_reset')),
    trigger            TEXT NOT NULL
        CHECK (trigger IN ('push', 'poll', 'webhook', 'drift', 'startup', 'cli')),
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    result             TEXT CHECK (result IS NULL OR result IN
        ('converged', 'failed', 'refused', 'no_change', 'drift_found', 'interrupted')),
    summary            TEXT NOT NULL DEFAULT '{}',
    chain_seq          INTEGER,
    prev_hash          TEXT,
    hash               TEXT,
    signature          TEXT,
    record             TEXT
);
INSERT INTO runs_v3 (id, environment, commit_id, signer_principal, signer_fingerprint, kind,
    trigger, started_at, finished_at, result, summary, chain_seq, prev_hash, hash, signature,
    record)
SELECT id, environment, commit_id, signer_principal, signer_fingerprint, kind, trigger,
    started_at, finished_at, result, summary, chain_seq, prev_hash, hash, signature, record
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v3 RENAME TO runs;
CREATE INDEX runs_by_env ON runs (environment, started_at DESC);
CREATE INDEX runs_by_start ON runs (started_at DESC);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;
CREATE UNIQUE INDEX runs_by_chain ON runs (chain_seq) WHERE chain_seq IS NOT NULL;
"#;

/// v4 (safe rollouts): run kind `rollback` (`runs` rebuilt as in v3), the last good commit of
/// each host, and the automatic rollbacks made (at most one per environment, commit and host).
const V4: &str = r#"
CREATE TABLE runs_v4 (
    id                 TEXT PRIMARY KEY,
    environment        TEXT NOT NULL,
    commit_id          TEXT,
    signer_principal   TEXT,
    signer_fingerprint TEXT,
    kind               TEXT NOT NULL
        CHECK (kind IN ('apply', 'correction', 'drift_check', 'refused', 'state_reset',
                        'rollback')),
    trigger            TEXT NOT NULL
        CHECK (trigger IN ('push', 'poll', 'webhook', 'drift', 'startup', 'cli')),
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    result             TEXT CHECK (result IS NULL OR result IN
        ('converged', 'failed', 'refused', 'no_change', 'drift_found', 'interrupted')),
    summary            TEXT NOT NULL DEFAULT '{}',
    chain_seq          INTEGER,
    prev_hash          TEXT,
    hash               TEXT,
    signature          TEXT,
    record             TEXT
);
INSERT INTO runs_v4 SELECT id, environment, commit_id, signer_principal, signer_fingerprint,
    kind, trigger, started_at, finished_at, result, summary, chain_seq, prev_hash, hash,
    signature, record FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v4 RENAME TO runs;
CREATE INDEX runs_by_env ON runs (environment, started_at DESC);
CREATE INDEX runs_by_start ON runs (started_at DESC);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;
CREATE UNIQUE INDEX runs_by_chain ON runs (chain_seq) WHERE chain_seq IS NOT NULL;

-- The newest commit whose apply and health checks passed on a host.
CREATE TABLE host_last_good (
    environment TEXT NOT NULL,
    host        TEXT NOT NULL,
    commit_id   TEXT NOT NULL,
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (environment, host)
);

-- Automatic rollbacks made: at most one per (environment, bad commit, host).
CREATE TABLE rollbacks (
    environment TEXT NOT NULL,
    commit_id   TEXT NOT NULL,           -- the bad commit
    host        TEXT NOT NULL,
    target      TEXT NOT NULL,           -- the last good commit rolled forward to
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (environment, commit_id, host)
);
"#;

/// v5: `runs` without CHECK constraints on `kind`, `trigger` and `result`. Those columns hold
/// the serde names of [`super::RunKind`], [`super::Trigger`] and [`super::RunResult`], and the
/// Rust enums are the one check: reading a row parses them and a value plumb does not know is a
/// [`StateError`] naming it. A new run kind or result then needs no table rebuild (which every
/// earlier kind did: v3, v4); `runs_kinds_are_checked_by_the_enums` holds this.
const V5: &str = r#"
CREATE TABLE runs_v5 (
    id                 TEXT PRIMARY KEY,
    environment        TEXT NOT NULL,
    commit_id          TEXT,
    signer_principal   TEXT,
    signer_fingerprint TEXT,
    kind               TEXT NOT NULL,
    trigger            TEXT NOT NULL,
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER,
    result             TEXT,
    summary            TEXT NOT NULL DEFAULT '{}',
    chain_seq          INTEGER,
    prev_hash          TEXT,
    hash               TEXT,
    signature          TEXT,
    record             TEXT
);
INSERT INTO runs_v5 SELECT id, environment, commit_id, signer_principal, signer_fingerprint,
    kind, trigger, started_at, finished_at, result, summary, chain_seq, prev_hash, hash,
    signature, record FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v5 RENAME TO runs;
CREATE INDEX runs_by_env ON runs (environment, started_at DESC);
CREATE INDEX runs_by_start ON runs (started_at DESC);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;
CREATE UNIQUE INDEX runs_by_chain ON runs (chain_seq) WHERE chain_seq IS NOT NULL;
"#;

// rollouts
/// v6: hosts pinned by a person (`plumb rollback`) to an older, previously applied commit,
/// until `plumb unpin` or a commit newer than `bad_commit` (the environment's newest commit
/// when the pin was made) reaches the daemon.
const V6: &str = r#"
CREATE TABLE pins (
    environment TEXT NOT NULL,
    host        TEXT NOT NULL,
    commit_id   TEXT NOT NULL,           -- the commit the host is pinned to
    bad_commit  TEXT,                    -- the environment's newest commit when pinned
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (environment, host)
);
"#;

// audit
/// v7 (issue 19, auditors): per step, its classification (`intended | corrective | manual`),
/// the commit (and signer) or manual run it is attributed to, and the bounded diff of a
/// non-sensitive file's drift; per host, start and finish times and why a rollout did not
/// reach it; the events of a run (handler refreshes); the commit that last changed each
/// step's desired state (`step_origins`, with the digest of that desired state, and the manual
/// run that changed the step on the host since); the diff of a drift finding.
const V7: &str = r#"
ALTER TABLE step_results ADD COLUMN cause TEXT;
ALTER TABLE step_results ADD COLUMN origin TEXT;          -- JSON Origin
ALTER TABLE step_results ADD COLUMN diff TEXT;
ALTER TABLE host_results ADD COLUMN started_at INTEGER;
ALTER TABLE host_results ADD COLUMN finished_at INTEGER;
ALTER TABLE host_results ADD COLUMN not_reached TEXT;     -- JSON NotReached
ALTER TABLE drift_findings ADD COLUMN diff TEXT;
ALTER TABLE drift_findings ADD COLUMN cause TEXT;

CREATE TABLE run_events (
    id       INTEGER PRIMARY KEY,
    run_id   TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    host     TEXT NOT NULL,
    kind     TEXT NOT NULL,           -- RunEventKind
    address  TEXT NOT NULL,
    ok       INTEGER NOT NULL,
    error    TEXT
);
CREATE INDEX run_events_by_run ON run_events (run_id, host);

CREATE TABLE step_origins (
    environment TEXT NOT NULL,
    host        TEXT NOT NULL,
    address     TEXT NOT NULL,
    digest      TEXT NOT NULL,        -- sha256 of the step's rendered desired state
    origin      TEXT NOT NULL,        -- JSON Origin: the commit that last changed it
    manual      TEXT,                 -- JSON Origin of a manual run that changed it since
    PRIMARY KEY (environment, host, address)
);
"#;

// prune
/// v8 (prune): the resources plumb manages on each host — every step a run left in sync —
/// with what removing one takes (`prune`: JSON `prune::Removal`, the module's prune
/// parameters, identity only, or why it is never removed) and the `prune:` its unit had.
const V8: &str = r#"
CREATE TABLE managed_resources (
    environment TEXT NOT NULL,
    host        TEXT NOT NULL,
    address     TEXT NOT NULL,
    module      TEXT NOT NULL,
    target      TEXT NOT NULL,           -- '(sensitive)' for a sensitive step
    sensitive   INTEGER NOT NULL CHECK (sensitive IN (0, 1)),
    unit        TEXT NOT NULL,
    unit_prune  INTEGER CHECK (unit_prune IS NULL OR unit_prune IN (0, 1)),
    prune       TEXT NOT NULL,           -- JSON Removal
    ord         INTEGER NOT NULL,        -- position among the host's steps when last applied
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (environment, host, address)
);
"#;

// on-call
/// v9 (issue 19, on-call): the alerts firing now, so a restart neither re-fires them as new nor
/// forgets to resolve one whose condition ended while the daemon was down; and the manual runs
/// the daemon has seen (each `--break-glass` one alerted once, even when recorded while the
/// daemon was down). The manual runs already recorded are marked seen: an upgrade does not
/// page about old history. (v8 is the managed resources of prune.)
const V9: &str = r#"
CREATE TABLE active_alerts (
    id       TEXT PRIMARY KEY,        -- the alert's identity: event/environment/host/subject
    alert    TEXT NOT NULL,           -- JSON: the alert as last sent (alert::StoredAlert)
    fired_at INTEGER NOT NULL         -- unix milliseconds, when it first fired
);

CREATE TABLE manual_runs_seen (
    run_id      TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    break_glass INTEGER NOT NULL CHECK (break_glass IN (0, 1)),  -- alerted as break_glass
    seen_at     INTEGER NOT NULL
);
INSERT INTO manual_runs_seen (run_id, break_glass, seen_at)
    SELECT id, 0, 0 FROM runs WHERE kind = 'manual' AND finished_at IS NOT NULL;
CREATE INDEX runs_manual_finished ON runs (finished_at) WHERE kind = 'manual';
"#;

// rollouts by people
/// v10: per-host apply leases. A process (the daemon's
/// rollout, rollback or drift correction; `plumb apply --state`, `plumb rollback`) takes the
/// lease of every host it is about to apply, renews it while it works and releases it at the
/// end; a lease not renewed by `expires_at` (its holder was killed) is free again. `host_key`
/// is the host's `address:port`, like the daemon's in-process host locks.
const V10: &str = r#"
CREATE TABLE host_leases (
    host_key    TEXT PRIMARY KEY,     -- address:port
    environment TEXT NOT NULL,
    host        TEXT NOT NULL,        -- the host's name in that environment
    holder_id   TEXT NOT NULL,        -- unique per lease guard
    holder      TEXT NOT NULL,        -- who, for people: `plumb rollback (pid 42, user carol)`
    taken_at    INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
"#;

// console
/// v11 (issue 20, the console's 50 ms pages): what makes every page cost O(page), not
/// O(history).
/// - `host_latest`: the newest result (not `not_reached`) of each host of each environment,
///   kept by [`super::write`] in the transaction that records the result (the fleet page
///   reads it instead of scanning every result); filled here from the results recorded
///   before. A result deleted behind plumb's back takes its row with it.
/// - `runs_by_commit`: the commit page's prefix is a range on it, and covers the newest
///   first sort of the runs it finds.
/// - `runs_by_env` again, with `id`: the keyset order (start time, then id) of a page of an
///   environment's runs, with no sort.
/// - `runs_by_env_kind`: the environment page's newest rollout.
/// - `runs_unsigned`: a finished run outside the audit chain (inserted or unlinked behind
///   plumb's back), found without scanning every run: normally empty.
/// - drift findings by run (the chain's incremental check of the findings new runs saw), and
///   by first seen, overall, per environment and per host, and the open ones alone (the drift
///   and host pages, newest first: open findings are found without walking resolved ones).
const V11: &str = r#"
CREATE TABLE host_latest (
    environment TEXT NOT NULL,
    host        TEXT NOT NULL,
    result_id   INTEGER NOT NULL UNIQUE REFERENCES host_results (id) ON DELETE CASCADE,
    PRIMARY KEY (environment, host)
) WITHOUT ROWID;
INSERT INTO host_latest (environment, host, result_id)
    SELECT r.environment, h.host, MAX(h.id) FROM host_results h JOIN runs r ON r.id = h.run_id
    WHERE h.status != 'not_reached' GROUP BY r.environment, h.host;
CREATE INDEX runs_by_commit ON runs (commit_id, started_at DESC, id DESC)
    WHERE commit_id IS NOT NULL;
DROP INDEX runs_by_env;
CREATE INDEX runs_by_env ON runs (environment, started_at DESC, id DESC);
CREATE INDEX runs_by_env_kind ON runs (environment, kind, started_at DESC);
CREATE INDEX runs_unsigned ON runs (finished_at, id)
    WHERE finished_at IS NOT NULL AND chain_seq IS NULL;
CREATE INDEX drift_by_run ON drift_findings (run_id);
CREATE INDEX drift_by_seen ON drift_findings (first_seen DESC, id DESC);
CREATE INDEX drift_by_env_seen ON drift_findings (environment, first_seen DESC, id DESC);
CREATE INDEX drift_by_host_seen ON drift_findings (environment, host, first_seen DESC, id DESC);
CREATE INDEX drift_open_by_seen ON drift_findings (first_seen DESC, id DESC)
    WHERE resolved_at IS NULL;
CREATE INDEX drift_open_by_env_seen ON drift_findings (environment, first_seen DESC, id DESC)
    WHERE resolved_at IS NULL;
"#;

pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11];

/// The schema version this plumb writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Migrates to `target` (at most [`SCHEMA_VERSION`]). Returns the version found before.
/// Foreign keys are off while migrations run (a table rebuild must not cascade) and restored
/// afterwards; each migration checks them before it commits.
pub(crate) fn migrate_to(
    conn: &mut Connection,
    target: i64,
    path: &std::path::Path,
) -> Result<i64, StateError> {
    let found = user_version(conn)?;
    if found >= target.min(SCHEMA_VERSION) {
        return migrate_steps(conn, target, path, found);
    }
    let fk: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let out = migrate_steps(conn, target, path, found);
    conn.pragma_update(None, "foreign_keys", fk)?;
    out
}

fn migrate_steps(
    conn: &mut Connection,
    target: i64,
    path: &std::path::Path,
    found: i64,
) -> Result<i64, StateError> {
    if found > SCHEMA_VERSION {
        return Err(StateError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version > target {
            break;
        }
        // Up to date: no write transaction at all (readers such as `plumb history`).
        if user_version(conn)? >= version {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if user_version(&tx)? >= version {
            continue;
        }
        tx.execute_batch(sql)
            .and_then(|()| foreign_keys_hold(&tx))
            .and_then(|()| tx.pragma_update(None, "user_version", version))
            .map_err(|source| StateError::Migration {
                path: path.to_path_buf(),
                version,
                source,
            })?;
        tx.commit()?;
    }
    Ok(found)
}

/// `PRAGMA foreign_key_check` finds nothing.
fn foreign_keys_hold(c: &Connection) -> rusqlite::Result<()> {
    let broken: Option<String> = c
        .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
        .optional()?;
    match broken {
        None => Ok(()),
        Some(table) => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            Some(format!("a row of {table} references a missing row")),
        )),
    }
}
