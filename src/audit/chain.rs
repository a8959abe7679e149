//! Building and verifying the chained records.

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::{canonical_json, check_signature, record_hash, AuditError, GENESIS, RECORD_VERSION};
use crate::state::StateDb;

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The run and its host and step results as stored in the relational rows: the part of a
/// record that [`verify_chain`] rebuilds and compares. `None` when the run does not exist.
pub(crate) fn rows_value(conn: &Connection, run_id: &str) -> rusqlite::Result<Option<Value>> {
    let run = conn
        .query_row(
            "SELECT id, environment, commit_id, signer_principal, signer_fingerprint, kind,
                    trigger, started_at, finished_at, result, summary
             FROM runs WHERE id = ?1",
            params![run_id],
            |r| {
                let principal: Option<String> = r.get(3)?;
                let fpr: Option<String> = r.get(4)?;
                let signer = match (principal, fpr) {
                    (None, None) => Value::Null,
                    (p, f) => json!({ "principal": p, "fingerprint": f }),
                };
                let summary: String = r.get(10)?;
                Ok(json!({
                    "id": r.get::<_, String>(0)?,
                    "environment": r.get::<_, String>(1)?,
                    "commit": r.get::<_, Option<String>>(2)?,
                    "signer": signer,
                    "kind": r.get::<_, String>(5)?,
                    "trigger": r.get::<_, String>(6)?,
                    "started_at": r.get::<_, i64>(7)?,
                    "finished_at": r.get::<_, Option<i64>>(8)?,
                    "result": r.get::<_, Option<String>>(9)?,
                    "summary": parse_json(&summary),
                }))
            },
        )
        .optional()?;
    let Some(run) = run else {
        return Ok(None);
    };
    let mut hosts_stmt = conn.prepare_cached(
        "SELECT host, status, error, changed, in_sync, duration_ms, round_trips
         FROM host_results WHERE run_id = ?1 ORDER BY id",
    )?;
    let mut steps_stmt = conn.prepare_cached(
        "SELECT address, module, status, change_kind, fields, error, duration_ms, drift
         FROM step_results WHERE run_id = ?1 AND host = ?2 ORDER BY id",
    )?;
    let hosts: Vec<(String, Value)> = hosts_stmt
        .query_map(params![run_id], |r| {
            let host: String = r.get(0)?;
            let rt: String = r.get(6)?;
            Ok((
                host.clone(),
                json!({
                    "host": host,
                    "status": r.get::<_, String>(1)?,
                    "error": r.get::<_, Option<String>>(2)?,
                    "changed": r.get::<_, i64>(3)?,
                    "in_sync": r.get::<_, i64>(4)?,
                    "duration_ms": r.get::<_, i64>(5)?,
                    "round_trips": parse_json(&rt),
                }),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out_hosts = Vec::with_capacity(hosts.len());
    for (name, mut h) in hosts {
        let steps: Vec<Value> = steps_stmt
            .query_map(params![run_id, name], |r| {
                let fields: String = r.get(4)?;
                Ok(json!({
                    "address": r.get::<_, String>(0)?,
                    "module": r.get::<_, String>(1)?,
                    "status": r.get::<_, String>(2)?,
                    "change": r.get::<_, Option<String>>(3)?,
                    "fields": parse_json(&fields),
                    "error": r.get::<_, Option<String>>(5)?,
                    "duration_ms": r.get::<_, i64>(6)?,
                    "drift": r.get::<_, bool>(7)?,
                }))
            })?
            .collect::<rusqlite::Result<_>>()?;
        if let Value::Object(o) = &mut h {
            o.insert("steps".into(), Value::Array(steps));
        }
        out_hosts.push(h);
    }
    Ok(Some(json!({ "run": run, "hosts": out_hosts })))
}

/// The full record of a run at chain position `seq`, as canonical JSON (the signed bytes).
pub fn build_record(
    conn: &Connection,
    run_id: &str,
    seq: i64,
    prev_hash: &str,
    key_fingerprint: &str,
) -> rusqlite::Result<Option<String>> {
    let Some(mut v) = rows_value(conn, run_id)? else {
        return Ok(None);
    };
    if let Value::Object(o) = &mut v {
        o.insert("v".into(), json!(RECORD_VERSION));
        o.insert("seq".into(), json!(seq));
        o.insert("prev_hash".into(), json!(prev_hash));
        o.insert("key".into(), json!(key_fingerprint));
    }
    Ok(Some(canonical_json(&v)))
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Number of records verified.
    pub records: usize,
    /// Hash of the newest record, if any.
    pub head: Option<String>,
}

struct Row {
    id: String,
    seq: i64,
    prev_hash: Option<String>,
    hash: Option<String>,
    signature: Option<String>,
    record: Option<String>,
}

/// Verifies every signed record, oldest first: the stored record hashes to `hash`, `hash` is
/// signed by `key`, the record links to the one before it (`seq` consecutive, `prev_hash` equal
/// to its hash), and the relational rows still say what the record says. Also refuses finished
/// runs that carry no signature. Names the FIRST broken record.
pub fn verify_chain(db: &StateDb, key: &VerifyingKey) -> Result<VerifiedChain, AuditError> {
    let conn = db.conn();
    // A finished run outside the chain was inserted or unlinked behind plumb's back.
    let unsigned: Option<(String, i64)> = conn
        .query_row(
            "SELECT id, finished_at FROM runs
             WHERE finished_at IS NOT NULL AND chain_seq IS NULL
             ORDER BY finished_at, id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;

    let mut stmt = conn.prepare(
        "SELECT id, chain_seq, prev_hash, hash, signature, record
         FROM runs WHERE chain_seq IS NOT NULL ORDER BY chain_seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Row {
            id: r.get(0)?,
            seq: r.get(1)?,
            prev_hash: r.get(2)?,
            hash: r.get(3)?,
            signature: r.get(4)?,
            record: r.get(5)?,
        })
    })?;
    let mut prev: Option<(String, String)> = None; // (run id, hash)
    let mut count = 0usize;
    for row in rows {
        let row = row?;
        let broken = |reason: String| AuditError::Broken {
            run_id: row.id.clone(),
            seq: row.seq,
            reason,
        };
        let (Some(record), Some(hash), Some(signature)) = (&row.record, &row.hash, &row.signature)
        else {
            return Err(broken(
                "the record, its hash or its signature is missing".into(),
            ));
        };
        if &record_hash(record) != hash {
            return Err(broken(
                "hash mismatch: the stored record was altered after it was signed".into(),
            ));
        }
        if !check_signature(key, hash, signature) {
            return Err(broken(
                "bad signature: the hash is not signed by this daemon key (signature altered, or record re-hashed)".into(),
            ));
        }
        let parsed: Value = serde_json::from_str(record)
            .map_err(|e| broken(format!("the signed record is not JSON: {e}")))?;
        let expected_seq = i64::try_from(count).unwrap_or(i64::MAX) + 1;
        let expected_prev = prev.as_ref().map(|(_, h)| h.as_str()).unwrap_or(GENESIS);
        if row.seq != expected_seq {
            let after = prev
                .as_ref()
                .map(|(id, _)| format!("after run {id}"))
                .unwrap_or_else(|| "at the start".into());
            let which = if row.seq - 1 == expected_seq {
                format!("record #{expected_seq} is")
            } else {
                format!("records #{expected_seq}..#{} are", row.seq - 1)
            };
            return Err(broken(format!(
                "{which} missing {after}: removed from the chain"
            )));
        }
        if parsed.get("seq").and_then(Value::as_i64) != Some(row.seq)
            || parsed.get("prev_hash").and_then(Value::as_str) != row.prev_hash.as_deref()
        {
            return Err(broken(
                "the chain columns (seq, prev_hash) differ from the signed record: reordered"
                    .into(),
            ));
        }
        if row.prev_hash.as_deref() != Some(expected_prev) {
            return Err(broken(format!(
                "prev_hash mismatch: the record before it {} was removed, replaced or reordered",
                prev.as_ref()
                    .map(|(id, _)| format!("(run {id})"))
                    .unwrap_or_else(|| "(none: this is the first record)".into())
            )));
        }
        if parsed.pointer("/run/id").and_then(Value::as_str) != Some(row.id.as_str()) {
            return Err(broken(
                "the signed record belongs to another run: reordered".into(),
            ));
        }
        let rows_now = rows_value(conn, &row.id)?.unwrap_or(Value::Null);
        let mut differ = Vec::new();
        for part in ["run", "hosts"] {
            let signed = parsed.get(part).map(canonical_json);
            let current = rows_now.get(part).map(canonical_json);
            if signed != current {
                differ.push(part);
            }
        }
        if !differ.is_empty() {
            let what = if differ == ["run"] {
                "the runs row".to_string()
            } else if differ == ["hosts"] {
                "its host or step results".to_string()
            } else {
                "the runs row and its host or step results".to_string()
            };
            return Err(broken(format!(
                "{what} differ from the signed record: the database was edited after signing"
            )));
        }
        count += 1;
        prev = Some((row.id.clone(), hash.clone()));
    }
    if let Some((id, _)) = unsigned {
        return Err(AuditError::Broken {
            run_id: id,
            seq: 0,
            reason: "a finished run that is not in the signed chain (inserted or unlinked outside plumb)"
                .into(),
        });
    }
    Ok(VerifiedChain {
        records: count,
        head: prev.map(|(_, h)| h),
    })
}
