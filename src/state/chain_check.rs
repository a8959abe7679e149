//! What the daemon knows of its audit chain without reading it all again. The whole chain is
//! verified once (at start-up: [`StateDb::check_chain`]); the result is kept for every
//! handle of the database and carried forward by [`StateDb::chain_status`], which verifies
//! only the records appended since (each once), so showing the chain's status costs
//! O(new records), not O(history). A broken chain stays broken until the whole chain is
//! verified again (a restart).

use std::sync::{Arc, Mutex, MutexGuard};

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, OptionalExtension};

use super::query::head_in;
use super::{now_ms, StateDb, StateError};
use crate::audit::{self, Anchor, AuditError, AuditHead, AuditVerifyReport, ChainVerifier};

/// The chain's status as last verified.
#[derive(Debug, Clone)]
pub struct ChainStatus {
    /// What `plumb audit verify` would report (records, head, the first broken record).
    pub report: AuditVerifyReport,
    /// When the whole chain was last verified (unix ms).
    pub full_at: i64,
    /// Records appended since then, each verified on its own.
    pub since_full: usize,
    /// When the newest record was last checked (unix ms).
    pub checked_at: i64,
}

/// The kept status, shared by the handles of one database (see [`StateDb::handle`]).
pub(crate) type KeptStatus = Arc<Mutex<Option<ChainStatus>>>;

fn kept(k: &KeptStatus) -> MutexGuard<'_, Option<ChainStatus>> {
    k.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn head_of(report: &AuditVerifyReport) -> Option<AuditHead> {
    match (report.head_seq, &report.head) {
        (Some(seq), Some(hash)) => Some(AuditHead {
            seq,
            hash: hash.clone(),
        }),
        _ => None,
    }
}

impl StateDb {
    /// Verifies the whole chain with the daemon key and keeps the result (daemon handles;
    /// `None` on others). Linear in the chain: the daemon calls it once, at start-up.
    pub fn check_chain(&self) -> Result<Option<ChainStatus>, StateError> {
        let Some(key) = self.key.as_deref().map(|k| k.verifying_key()) else {
            return Ok(None);
        };
        let mut kept = kept(&self.chain);
        let status = self.full_check(&key)?;
        *kept = Some(status.clone());
        Ok(Some(status))
    }

    /// The kept status brought up to date (daemon handles; `None` on others): the records
    /// appended since it was taken are verified, the record it ended at must still be there
    /// with the same hash (else the chain was truncated or rewritten), and a finished run
    /// outside the chain breaks it. Without a kept status, the whole chain is verified.
    pub fn chain_status(&self) -> Result<Option<ChainStatus>, StateError> {
        let Some(key) = self.key.as_deref().map(|k| k.verifying_key()) else {
            return Ok(None);
        };
        let mut kept = kept(&self.chain);
        let status = match kept.as_ref() {
            None => self.full_check(&key)?,
            Some(s) if !s.report.ok => return Ok(Some(s.clone())),
            Some(s) => self.advance(&key, s)?,
        };
        *kept = Some(status.clone());
        Ok(Some(status))
    }

    fn full_check(&self, key: &VerifyingKey) -> Result<ChainStatus, StateError> {
        let report = self.verify_report(key, &Anchor::default())?;
        let at = now_ms();
        Ok(ChainStatus {
            report,
            full_at: at,
            since_full: 0,
            checked_at: at,
        })
    }

    /// `was` carried forward to the records appended since.
    fn advance(&self, key: &VerifyingKey, was: &ChainStatus) -> Result<ChainStatus, StateError> {
        // An empty chain then: verifying it all now costs what verifying the new records does.
        let Some(then) = head_of(&was.report) else {
            return self.full_check(key);
        };
        let (result, records) = match self.still_there(&then)? {
            Some(e) => (Err(e), was.report.records),
            None => {
                let verifier = ChainVerifier::resume(key, Anchor::default(), &then);
                self.verify_from(verifier, Some(then.seq))?
            }
        };
        let since = match &result {
            Ok(v) => v.records.saturating_sub(was.report.records),
            Err(_) => records.saturating_sub(was.report.records),
        };
        Ok(ChainStatus {
            report: AuditVerifyReport::new(result, records, audit::fingerprint(key)),
            full_at: was.full_at,
            since_full: was.since_full + since,
            checked_at: now_ms(),
        })
    }

    /// The record the kept status ended at is still there with its hash: `None` when it is,
    /// else how the chain changed under it.
    fn still_there(&self, then: &AuditHead) -> Result<Option<AuditError>, StateError> {
        let hash: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT hash FROM runs WHERE chain_seq = ?1",
                params![i64::try_from(then.seq).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e.into()))?;
        Ok(match hash {
            Some(Some(h)) if h == then.hash => None,
            Some(found) => Some(AuditError::AnchorMismatch {
                seq: then.seq,
                anchored: then.hash.clone(),
                found: found.unwrap_or_else(|| "(none)".into()),
            }),
            None => Some(AuditError::Truncated {
                expected: then.seq,
                found: head_in(&self.conn, &self.path).map_err(|e| self.err(e))?,
            }),
        })
    }
}

/// The kept status of a new database handle.
pub(crate) fn new_kept() -> KeptStatus {
    Arc::new(Mutex::new(None))
}
