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
use crate::state::StateDb;

use super::DaemonError;

/// The chain's head, as alerts carry it.
pub fn audit_head(db: &StateDb) -> Result<Option<ChainHead>, DaemonError> {
    Ok(db.audit_head()?.map(|h| ChainHead {
        seq: h.seq,
        hash: h.hash,
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
