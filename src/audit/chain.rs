//! The chain itself: building a record from the run's rows, verifying a sequence of stored
//! records, and checking an operator's anchor. Storage-agnostic: the caller (the state
//! database) reads the records and hands them over one by one, oldest first.

use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};

use super::{
    canonical_json, check_signature, record_hash, Anchor, AuditError, AuditHead, GENESIS,
    RECORD_VERSION,
};

/// The full record of a run at chain position `seq`, as canonical JSON (the signed bytes).
/// `rows` is `{"run": {...}, "hosts": [...], "drift": [...]}`: the run, its results and the
/// drift findings it opened or resolved, as stored.
pub fn build_record(rows: &Value, seq: u64, prev_hash: &str, key_fingerprint: &str) -> String {
    let mut v = rows.clone();
    if let Value::Object(o) = &mut v {
        o.insert("v".into(), json!(RECORD_VERSION));
        o.insert("seq".into(), json!(seq));
        o.insert("prev_hash".into(), json!(prev_hash));
        o.insert("key".into(), json!(key_fingerprint));
    }
    canonical_json(&v)
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Number of records verified.
    pub records: usize,
    /// Position and hash of the newest record, if any.
    pub head: Option<AuditHead>,
}

/// One stored record, as the storage holds it.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub run_id: String,
    /// The stored chain position.
    pub seq: i64,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
    pub signature: Option<String>,
    /// The signed canonical JSON, as hashed.
    pub record: Option<String>,
    /// The run and its results as the rows say now (the `rows` of [`build_record`]), or why
    /// they could not be read.
    pub rows_now: Result<Value, String>,
}

/// Verifies records one at a time, oldest first: the stored record hashes to `hash`, `hash` is
/// signed by the key, the record links to the one before it (`seq` consecutive, `prev_hash`
/// equal to its hash), and the rows still say what the record says. With an [`Anchor`], the
/// chain must also reach the anchored record with the anchored hash.
pub struct ChainVerifier<'k> {
    key: &'k VerifyingKey,
    anchor: Anchor,
    prev: Option<(String, String)>, // (run id, hash)
    count: usize,
}

impl<'k> ChainVerifier<'k> {
    pub fn new(key: &'k VerifyingKey, anchor: Anchor) -> ChainVerifier<'k> {
        ChainVerifier {
            key,
            anchor,
            prev: None,
            count: 0,
        }
    }

    /// A verifier that continues a chain after `after` (an export that starts mid-chain):
    /// the next record must be `after.seq + 1` and link to `after.hash`.
    pub fn resume(key: &'k VerifyingKey, anchor: Anchor, after: &AuditHead) -> ChainVerifier<'k> {
        ChainVerifier {
            key,
            anchor,
            prev: Some(("(before the export)".into(), after.hash.clone())),
            count: usize::try_from(after.seq).unwrap_or(usize::MAX),
        }
    }

    /// Records verified so far.
    pub fn records(&self) -> usize {
        self.count
    }

    /// Checks the next record; the first error names the first broken record.
    pub fn push(&mut self, e: &ChainEntry) -> Result<(), AuditError> {
        let broken = |reason: String| AuditError::Broken {
            run_id: e.run_id.clone(),
            seq: e.seq,
            reason,
        };
        let (hash, parsed) = self.check_signed(e).map_err(broken)?;
        self.check_link(e, &parsed).map_err(broken)?;
        check_rows(e, &parsed).map_err(broken)?;
        if let Some(a) = &self.anchor.head {
            if u64::try_from(e.seq).ok() == Some(a.seq) && a.hash != hash {
                return Err(AuditError::AnchorMismatch {
                    seq: a.seq,
                    anchored: a.hash.clone(),
                    found: hash,
                });
            }
        }
        self.count += 1;
        self.prev = Some((e.run_id.clone(), hash));
        Ok(())
    }

    /// The verified chain, once every record was pushed; fails when it ends below the anchor.
    pub fn finish(self) -> Result<VerifiedChain, AuditError> {
        let head = self.prev.map(|(_, hash)| AuditHead {
            seq: self.count as u64,
            hash,
        });
        let needed = [
            self.anchor.head.as_ref().map(|h| h.seq),
            self.anchor.min_seq,
        ]
        .into_iter()
        .flatten()
        .max();
        let have = head.as_ref().map_or(0, |h| h.seq);
        if let Some(expected) = needed.filter(|n| *n > have) {
            return Err(AuditError::Truncated {
                expected,
                found: head,
            });
        }
        Ok(VerifiedChain {
            records: self.count,
            head,
        })
    }

    /// Hash and signature of the stored record; returns its hash and parsed JSON.
    fn check_signed(&self, e: &ChainEntry) -> Result<(String, Value), String> {
        let (Some(record), Some(hash), Some(signature)) = (&e.record, &e.hash, &e.signature) else {
            return Err("the record, its hash or its signature is missing".into());
        };
        if &record_hash(record) != hash {
            return Err("hash mismatch: the stored record was altered after it was signed".into());
        }
        if !check_signature(self.key, hash, signature) {
            return Err("bad signature: the hash is not signed by this daemon key (signature altered, or record re-hashed)".into());
        }
        let parsed: Value = serde_json::from_str(record)
            .map_err(|err| format!("the signed record is not JSON: {err}"))?;
        Ok((hash.clone(), parsed))
    }

    /// Position and link to the record before it.
    fn check_link(&self, e: &ChainEntry, parsed: &Value) -> Result<(), String> {
        let expected_seq = i64::try_from(self.count).unwrap_or(i64::MAX) + 1;
        let expected_prev = self.prev.as_ref().map_or(GENESIS, |(_, h)| h.as_str());
        if e.seq != expected_seq {
            let after = self.prev.as_ref().map_or_else(
                || "at the start".into(),
                |(id, _)| format!("after run {id}"),
            );
            let which = if e.seq.saturating_sub(1) == expected_seq {
                format!("record #{expected_seq} is")
            } else {
                format!("records #{expected_seq}..#{} are", e.seq.saturating_sub(1))
            };
            return Err(format!("{which} missing {after}: removed from the chain"));
        }
        if parsed.get("seq").and_then(Value::as_i64) != Some(e.seq)
            || parsed.get("prev_hash").and_then(Value::as_str) != e.prev_hash.as_deref()
        {
            return Err(
                "the chain columns (seq, prev_hash) differ from the signed record: reordered"
                    .into(),
            );
        }
        if e.prev_hash.as_deref() != Some(expected_prev) {
            return Err(format!(
                "prev_hash mismatch: the record before it {} was removed, replaced or reordered",
                self.prev.as_ref().map_or_else(
                    || "(none: this is the first record)".into(),
                    |(id, _)| format!("(run {id})")
                )
            ));
        }
        if parsed.pointer("/run/id").and_then(Value::as_str) != Some(e.run_id.as_str()) {
            return Err("the signed record belongs to another run: reordered".into());
        }
        Ok(())
    }
}

/// The rows still say what the record says.
fn check_rows(e: &ChainEntry, parsed: &Value) -> Result<(), String> {
    let rows_now = match &e.rows_now {
        Ok(v) => v,
        Err(why) => {
            return Err(format!(
                "its rows are unreadable ({why}): the database was edited after signing"
            ))
        }
    };
    let v2 = parsed.get("v").and_then(Value::as_u64).unwrap_or(1) >= 2;
    let parts: &[&str] = if v2 {
        &["run", "hosts", "drift"]
    } else {
        &["run", "hosts"]
    };
    let differ: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|part| {
            parsed.get(*part).map(canonical_json) != rows_now.get(*part).map(canonical_json)
        })
        .collect();
    let what = match differ.as_slice() {
        [] => return Ok(()),
        ["run"] => "the runs row",
        ["hosts"] => "its host or step results",
        ["drift"] => "the drift findings it opened or resolved",
        _ => "the runs row and its host or step results",
    };
    Err(format!(
        "{what} differ from the signed record: the database was edited after signing"
    ))
}
