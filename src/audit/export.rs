//! `plumb audit export` / `plumb audit verify --file`: the signed chain as JSON lines, to verify
//! on a machine that never ran plumb, with nothing but the export and the daemon's public key.
//!
//! Line 1 is an [`ExportHeader`]: format, the daemon's public key and fingerprint, the first
//! exported position, the head (`seq`, `hash` of the newest record) and the daemon key's
//! signature over the header's canonical JSON (without `signature`). Every further line is an
//! [`ExportRecord`]: a record exactly as signed, its hash and signature, its chain position and
//! link. Verification trusts only the key given on its command line: the header's key must
//! be that key, the header's signature must verify, every record must hash, verify and link
//! ([`ChainVerifier`]), and the records must end exactly at the signed head. So editing a
//! record, dropping records at either end or in the middle, or cutting the file's tail fails.
//! (An export made by someone holding the daemon key is, as ever, only as good as that key.)

use std::io::BufRead;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    canonical_json, check_signature, fingerprint, public_key_openssh, record_hash, Anchor,
    AuditError, AuditHead, AuditVerifyReport, ChainEntry, ChainVerifier, DaemonKey, GENESIS,
};

/// The `format` of line 1.
pub const EXPORT_FORMAT: &str = "plumb-audit-export";
/// Longest line read from an export (a record with every host and step result).
pub const MAX_LINE_BYTES: u64 = 64 * 1024 * 1024;

/// Line 1 of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: String,
    pub v: u64,
    /// `ssh-ed25519 AAAA... plumb-daemon`: informational; verification uses the key it is given.
    pub public_key: String,
    pub key_fingerprint: String,
    /// Unix milliseconds.
    pub exported_at: i64,
    /// Position of the first exported record (1 = the whole chain); none when empty.
    pub first_seq: Option<u64>,
    /// The newest record: the export must end exactly here.
    pub head: Option<AuditHead>,
    /// hex(ed25519(sha256(canonical JSON of this header without `signature`))).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

/// One record line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub run_id: String,
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub signature: String,
    /// The signed canonical JSON, exactly as hashed.
    pub record: String,
}

impl ExportHeader {
    /// A signed header for records `first_seq..=head.seq`.
    pub fn signed(
        key: &DaemonKey,
        exported_at: i64,
        first_seq: Option<u64>,
        head: Option<AuditHead>,
    ) -> ExportHeader {
        let mut h = ExportHeader {
            format: EXPORT_FORMAT.into(),
            v: 1,
            public_key: key.public_key_openssh(),
            key_fingerprint: key.fingerprint(),
            exported_at,
            first_seq,
            head,
            signature: String::new(),
        };
        h.signature = key.sign_hash(&h.unsigned_hash());
        h
    }

    fn unsigned_hash(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut v {
            o.remove("signature");
        }
        record_hash(&canonical_json(&v))
    }
}

fn line_err(line: usize, detail: impl std::fmt::Display) -> AuditError {
    AuditError::Export {
        line,
        detail: detail.to_string(),
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`]; `None` at the end.
fn next_line(r: &mut impl BufRead, n: usize) -> Result<Option<String>, AuditError> {
    let mut buf = Vec::new();
    let read = std::io::Read::take(&mut *r, MAX_LINE_BYTES + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| line_err(n, e))?;
    if read == 0 {
        return Ok(None);
    }
    if buf.len() as u64 > MAX_LINE_BYTES {
        return Err(line_err(n, format!("longer than {MAX_LINE_BYTES} bytes")));
    }
    String::from_utf8(buf)
        .map(|s| Some(s.trim_end_matches('\n').to_string()))
        .map_err(|_| line_err(n, "not UTF-8"))
}

fn read_header(r: &mut impl BufRead, key: &VerifyingKey) -> Result<ExportHeader, AuditError> {
    let first = next_line(r, 1)?.ok_or_else(|| line_err(1, "empty file: not an audit export"))?;
    let h: ExportHeader = serde_json::from_str(&first)
        .map_err(|e| line_err(1, format!("not an audit export header: {e}")))?;
    if h.format != EXPORT_FORMAT || h.v != 1 {
        return Err(line_err(
            1,
            format!("format {:?} v{} is not {EXPORT_FORMAT} v1", h.format, h.v),
        ));
    }
    if h.key_fingerprint != fingerprint(key) {
        return Err(line_err(
            1,
            format!(
                "exported by key {}, not by the given public key {} ({})",
                h.key_fingerprint,
                fingerprint(key),
                public_key_openssh(key)
            ),
        ));
    }
    if !check_signature(key, &h.unsigned_hash(), &h.signature) {
        return Err(line_err(1, "the header's signature does not verify: the header was edited (head or first record changed)"));
    }
    Ok(h)
}

/// Verifies an export read from `r` with `key` (see the module docs) and `anchor`.
/// `Err` only when the file is not a readable export; a broken chain is in the report.
pub fn verify_export(
    r: &mut impl BufRead,
    key: &VerifyingKey,
    anchor: &Anchor,
) -> Result<AuditVerifyReport, AuditError> {
    let header = read_header(r, key)?;
    // An export from #k > 1 resumes after #k-1, whose hash the first record links to.
    let mut verifier = ChainVerifier::new(key, anchor.clone());
    let mut n = 1;
    let mut first = true;
    while let Some(line) = next_line(r, n + 1)? {
        n += 1;
        let rec: ExportRecord =
            serde_json::from_str(&line).map_err(|e| line_err(n, format!("not a record: {e}")))?;
        if first {
            first = false;
            let expected = header.first_seq.unwrap_or(1);
            if u64::try_from(rec.seq).ok() != Some(expected) {
                let e = AuditError::Broken {
                    run_id: rec.run_id.clone(),
                    seq: rec.seq,
                    reason: format!("the export's first record should be #{expected}: records were removed from its start"),
                };
                return Ok(AuditVerifyReport::new(Err(e), 0, fingerprint(key)));
            }
            if expected > 1 && rec.prev_hash != GENESIS {
                let before = AuditHead {
                    seq: expected - 1,
                    hash: rec.prev_hash.clone(),
                };
                verifier = ChainVerifier::resume(key, anchor.clone(), &before);
            }
        }
        let rows_now = serde_json::from_str::<Value>(&rec.record).map_err(|e| e.to_string());
        let entry = ChainEntry {
            run_id: rec.run_id,
            seq: rec.seq,
            prev_hash: Some(rec.prev_hash),
            hash: Some(rec.hash),
            signature: Some(rec.signature),
            record: Some(rec.record),
            rows_now,
        };
        if let Err(e) = verifier.push(&entry) {
            let before = verifier.records();
            return Ok(AuditVerifyReport::new(Err(e), before, fingerprint(key)));
        }
    }
    let records = verifier.records();
    let result = verifier.finish().and_then(|v| {
        if v.head == header.head {
            return Ok(v);
        }
        let expected = header.head.as_ref().map_or(0, |h| h.seq);
        match (&v.head, &header.head) {
            (Some(found), Some(h)) if found.seq == h.seq => Err(AuditError::AnchorMismatch {
                seq: h.seq,
                anchored: h.hash.clone(),
                found: found.hash.clone(),
            }),
            _ => Err(AuditError::Truncated {
                expected,
                found: v.head.clone(),
            }),
        }
    });
    let exported = header.first_seq.map_or(0, |f| f.saturating_sub(1));
    let mut report = AuditVerifyReport::new(result, records, fingerprint(key));
    // Count the records in the file, not the chain positions before it.
    report.records = report
        .records
        .saturating_sub(usize::try_from(exported).unwrap_or(0));
    Ok(report)
}
