//! The audit records of runs, on the storage side: what a record holds (the run's rows),
//! signing a finished run inside its transaction, and reading the chain back for
//! verification. Hashing, signing and the chain rules are [`crate::audit`]'s.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::query::{collect_rows, collect_typed, head_in, read_hosts, signer};
use super::types::{RunId, RunKind, RunResult, Trigger};
use super::{StateDb, StateError};
use crate::audit::{
    self, Anchor, AuditError, AuditVerifyReport, ChainEntry, ChainVerifier, DaemonKey,
    VerifiedChain, GENESIS,
};

/// The run and its host and step results as stored: `{"run": {...}, "hosts": [...]}`, the
/// part of a record that verification rebuilds and compares. `None` when the run does not
/// exist; [`StateError::Corrupt`] when a row does not read back into its type.
fn rows_value(c: &Connection, path: &Path, run_id: &str) -> Result<Option<Value>, StateError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, environment, commit_id, signer_principal, signer_fingerprint, kind,
                trigger, started_at, finished_at, result, summary
         FROM runs WHERE id = ?1",
    )?;
    let at = super::error::RowAt {
        path,
        table: "runs",
        id: run_id,
    };
    let run = collect_rows(&mut stmt, params![run_id], |r| {
        Ok(json!({
            "id": at.get::<String>(r, "id")?,
            "environment": at.get::<String>(r, "environment")?,
            "commit": at.get::<Option<String>>(r, "commit_id")?,
            "signer": signer(&at, r)?,
            "kind": at.parse::<RunKind>(r, "kind", false)?,
            "trigger": at.parse::<Trigger>(r, "trigger", false)?,
            "started_at": at.get::<i64>(r, "started_at")?,
            "finished_at": at.get::<Option<i64>>(r, "finished_at")?,
            "result": at.parse_opt::<RunResult>(r, "result", false)?,
            "summary": at.parse::<Value>(r, "summary", true)?,
        }))
    })?
    .pop();
    let Some(run) = run else {
        return Ok(None);
    };
    let hosts = serde_json::to_value(read_hosts(c, path, run_id)?).unwrap_or(Value::Null);
    let drift = drift_events(c, path, run_id)?;
    Ok(Some(json!({ "run": run, "hosts": hosts, "drift": drift })))
}

/// The drift findings a run opened and resolved, by id: what of a finding never changes once
/// that run is signed (where and when it was first seen, when and by which run it was
/// resolved). Its evidence as last seen (change, fields, diff) is the step row of the run that
/// last saw it, checked by [`StateDb::verify_findings`].
fn drift_events(c: &Connection, path: &Path, run_id: &str) -> Result<Value, StateError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, host, address, first_seen, first_run_id, resolved_at, resolved_run_id
         FROM drift_findings WHERE first_run_id = ?1 OR resolved_run_id = ?1 ORDER BY id",
    )?;
    let rows = collect_typed(
        &mut stmt,
        params![run_id],
        (path, "drift_findings", "id"),
        |at, r| {
            let opened = at.get::<Option<String>>(r, "first_run_id")?.as_deref() == Some(run_id);
            let resolved =
                at.get::<Option<String>>(r, "resolved_run_id")?.as_deref() == Some(run_id);
            let mut v = json!({
                "id": at.get::<i64>(r, "id")?,
                "host": at.get::<String>(r, "host")?,
                "address": at.get::<String>(r, "address")?,
            });
            if opened {
                v["opened_at"] = json!(at.get::<i64>(r, "first_seen")?);
            }
            if resolved {
                v["resolved_at"] = json!(at.get::<Option<i64>>(r, "resolved_at")?);
            }
            Ok(v)
        },
    )?;
    Ok(Value::Array(rows))
}

impl StateDb {
    /// The signed records of runs started at or after `since_ms` (all without it) and every
    /// later record, oldest first, for `plumb audit export`; the chain is contiguous from the
    /// first one on.
    pub fn export_records(
        &self,
        since_ms: Option<i64>,
    ) -> Result<Vec<audit::export::ExportRecord>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare(
                "SELECT id, chain_seq, prev_hash, hash, signature, record FROM runs
                 WHERE chain_seq >= COALESCE((SELECT MIN(chain_seq) FROM runs
                     WHERE chain_seq IS NOT NULL AND (?1 IS NULL OR started_at >= ?1)), 1 << 62)
                 ORDER BY chain_seq",
            )?;
            collect_typed(
                &mut stmt,
                params![since_ms],
                (&self.path, "runs", "id"),
                |at, r| {
                    let need = |col: &str| -> Result<String, StateError> {
                        at.get::<Option<String>>(r, col)?
                            .ok_or_else(|| at.corrupt(format!("`{col}` (missing on a signed run)")))
                    };
                    Ok(audit::export::ExportRecord {
                        run_id: at.get(r, "id")?,
                        seq: at.get(r, "chain_seq")?,
                        prev_hash: need("prev_hash")?,
                        hash: need("hash")?,
                        signature: need("signature")?,
                        record: need("record")?,
                    })
                },
            )
        };
        read().map_err(|e| self.err(e))
    }

    /// Appends a finished run to the audit chain (inside the caller's transaction).
    pub(crate) fn sign_in(
        &self,
        c: &Connection,
        key: &DaemonKey,
        run: &RunId,
    ) -> Result<(), StateError> {
        let (seq, prev) = match head_in(c, &self.path)? {
            Some(h) => (h.seq.saturating_add(1), h.hash),
            None => (1, GENESIS.to_string()),
        };
        let Some(rows) = rows_value(c, &self.path, &run.0)? else {
            return Err(StateError::NoSuchRun { id: run.0.clone() });
        };
        let record = audit::build_record(&rows, seq, &prev, &key.fingerprint());
        let hash = audit::record_hash(&record);
        let signature = key.sign_hash(&hash);
        c.execute(
            "UPDATE runs SET chain_seq = ?1, prev_hash = ?2, hash = ?3, signature = ?4, record = ?5
             WHERE id = ?6",
            params![
                i64::try_from(seq).unwrap_or(i64::MAX),
                prev,
                hash,
                signature,
                record,
                run.0
            ],
        )?;
        Ok(())
    }

    /// Verifies every signed record, oldest first, with `key` (see [`ChainVerifier`]), refuses
    /// finished runs that carry no signature, and checks that the chain reaches `anchor`.
    /// A chain failure is `StateError::Audit` (naming the FIRST broken record); other errors
    /// mean the database could not be read at all.
    pub fn verify_chain(
        &self,
        key: &VerifyingKey,
        anchor: &Anchor,
    ) -> Result<VerifiedChain, StateError> {
        let (result, _) = self.verify_counting(key, anchor)?;
        Ok(result?)
    }

    /// `plumb audit verify`: [`verify_chain`](StateDb::verify_chain) as a report (chain
    /// failures are in the report; `Err` only when the database could not be read).
    pub fn verify_report(
        &self,
        key: &VerifyingKey,
        anchor: &Anchor,
    ) -> Result<AuditVerifyReport, StateError> {
        let (result, records) = self.verify_counting(key, anchor)?;
        Ok(AuditVerifyReport::new(
            result,
            records,
            audit::fingerprint(key),
        ))
    }

    /// The verification, and how many records verified before it stopped.
    fn verify_counting(
        &self,
        key: &VerifyingKey,
        anchor: &Anchor,
    ) -> Result<(Result<VerifiedChain, AuditError>, usize), StateError> {
        self.verify_from(ChainVerifier::new(key, anchor.clone()), None)
    }

    /// Pushes the signed records into `verifier`, oldest first: all of them, or those after
    /// record `after` (then only the drift findings those runs last saw are checked); then
    /// refuses a finished run outside the chain.
    pub(super) fn verify_from(
        &self,
        mut verifier: ChainVerifier<'_>,
        after: Option<u64>,
    ) -> Result<(Result<VerifiedChain, AuditError>, usize), StateError> {
        let c = &self.conn;
        let unsigned = self.unsigned_run().map_err(|e| self.err(e))?;
        let sql = match after {
            None => {
                "SELECT id, chain_seq, prev_hash, hash, signature, record
                 FROM runs WHERE chain_seq IS NOT NULL ORDER BY chain_seq"
            }
            Some(_) => {
                "SELECT id, chain_seq, prev_hash, hash, signature, record
                 FROM runs WHERE chain_seq > ?1 ORDER BY chain_seq"
            }
        };
        let mut stmt = c.prepare_cached(sql)?;
        let mut rows = match after {
            None => stmt.query([])?,
            Some(seq) => stmt.query(params![i64::try_from(seq).unwrap_or(i64::MAX)])?,
        };
        while let Some(r) = rows.next()? {
            let run_id: String = r.get(0)?;
            let rows_now = match rows_value(c, &self.path, &run_id) {
                Ok(v) => Ok(v.unwrap_or(Value::Null)),
                Err(StateError::Corrupt {
                    table, id, what, ..
                }) => Err(format!("{table} row {id}: {what}")),
                Err(e) => return Err(self.err(e)),
            };
            let entry = ChainEntry {
                run_id,
                seq: r.get(1)?,
                prev_hash: r.get(2)?,
                hash: r.get(3)?,
                signature: r.get(4)?,
                record: r.get(5)?,
                rows_now,
            };
            if let Err(e) = verifier.push(&entry) {
                return Ok((Err(e), verifier.records()));
            }
        }
        let records = verifier.records();
        if let Some(id) = unsigned {
            let e = AuditError::Broken {
                run_id: id,
                seq: 0,
                reason: "a finished run that is not in the signed chain (inserted or unlinked outside plumb)".into(),
            };
            return Ok((Err(e), records));
        }
        if let Some(e) = self.verify_findings(after).map_err(|e| self.err(e))? {
            return Ok((Err(e), records));
        }
        Ok((verifier.finish(), records))
    }

    /// A finished run outside the chain: inserted or unlinked behind plumb's back (every
    /// finish signs in its own transaction). `runs_unsigned` holds only such runs.
    fn unsigned_run(&self) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND chain_seq IS NULL
                 ORDER BY finished_at, id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Each drift finding's evidence (change, fields, diff) is what the signed step row of
    /// the run that last saw it says; the first finding that differs is a broken chain.
    /// With `after`, only the findings last seen by the runs of the records after it.
    pub(crate) fn verify_findings(
        &self,
        after: Option<u64>,
    ) -> Result<Option<AuditError>, StateError> {
        // The findings of the runs after `after`: those runs' ids, then their findings
        // through `drift_by_run` (an IN list, not a scan of every finding).
        let which = match after {
            None => "f.run_id IS NOT NULL",
            Some(_) => "f.run_id IN (SELECT id FROM runs WHERE chain_seq > ?1)",
        };
        let sql = format!(
            "SELECT f.id, f.run_id FROM drift_findings f
             WHERE {which}
             AND EXISTS (SELECT 1 FROM host_results h
                 WHERE h.run_id = f.run_id AND h.host = f.host)
             AND NOT EXISTS (SELECT 1 FROM step_results s
                 WHERE s.run_id = f.run_id AND s.host = f.host AND s.address = f.address
                 AND s.change_kind = f.change_kind AND s.fields = f.fields
                 AND s.diff IS f.diff AND s.cause IS f.cause)
             ORDER BY f.id LIMIT 1"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, String)> {
            Ok((r.get(0)?, r.get(1)?))
        };
        let edited = match after {
            None => stmt.query_row([], row),
            Some(seq) => stmt.query_row(params![i64::try_from(seq).unwrap_or(i64::MAX)], row),
        }
        .optional()?;
        Ok(edited.map(|(id, run_id)| AuditError::Broken {
            run_id,
            seq: 0,
            reason: format!(
                "drift finding {id} differs from the signed step result of the run that last saw it: the database was edited after signing"
            ),
        }))
    }
}
