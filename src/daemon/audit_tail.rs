//! Anchoring the audit chain's tail outside the database, and refusing to start on a state
//! that was reset.
//!
//! The head (sequence number and hash of the newest record) goes to `/metrics`
//! (`plumb_audit_head_seq`, `plumb_audit_head_info{hash}`), into every alert, and, with
//! `audit: {head_file: PATH}` in the daemon config, is appended to that file as `SEQ HASH`
//! after each record. Anyone holding an older head can then prove a truncation with
//! `plumb audit verify --expect-head SEQ:HASH`.

use std::io::Write as _;
use std::path::Path;

use crate::alert::ChainHead;
use crate::state::{RunFilter, StateDb};

use super::DaemonError;

/// ADAPTER for the merge: the "state" branch provides `StateDb::audit_head() ->
/// Result<Option<AuditHead{seq, hash}>, StateError>`; this reads the same from
/// `StateDb::chain_head`, which exists on this branch.
pub fn audit_head(db: &StateDb) -> Result<Option<ChainHead>, DaemonError> {
    Ok(db.chain_head()?.map(|(seq, hash)| ChainHead {
        seq: u64::try_from(seq).unwrap_or(0),
        hash,
    }))
}

/// Appends `SEQ HASH` to the head file (created 0600 when missing).
pub fn append_head(file: &Path, head: &ChainHead) -> Result<(), DaemonError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .map_err(DaemonError::io("opening the audit head file", file))?;
    writeln!(f, "{} {}", head.seq, head.hash)
        .map_err(DaemonError::io("appending to the audit head file", file))
}

/// ADAPTER for the merge: the "state" branch provides `state::check_not_reset(state_dir,
/// accept_reset) -> Result<(), StateError>`, which also records an accepted reset in the
/// audit chain; call it here instead. This minimal version refuses to start when the
/// database is missing or holds no run while the daemon key or the mirror show that the
/// daemon ran in this state directory before (someone deleted its history).
pub fn check_not_reset(state_dir: &Path, accept_reset: bool) -> Result<(), DaemonError> {
    let key = state_dir.join(crate::audit::KEY_FILE);
    let mirror = state_dir.join("mirror.git");
    let db = state_dir.join(crate::state::DB_FILE);
    let traces: Vec<String> = [&key, &mirror]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if traces.is_empty() {
        return Ok(());
    }
    let empty = !db.exists()
        || StateDb::open_inspect(state_dir)?
            .runs(&RunFilter {
                environment: None,
                kind: None,
                limit: Some(1),
            })?
            .is_empty();
    if !empty {
        return Ok(());
    }
    let reason = format!(
        "{} holds no run, but {} show that the daemon ran here before; if the history was \
         deleted on purpose, start once with --accept-state-reset (the reset is recorded)",
        db.display(),
        traces.join(" and ")
    );
    if accept_reset {
        tracing::warn!(state_dir = %state_dir.display(), %reason, "state reset accepted (--accept-state-reset)");
        return Ok(());
    }
    Err(DaemonError::StateReset {
        dir: state_dir.to_path_buf(),
        reason,
    })
}
