//! The audit chain as the state database stores it: signing, verification of stored
//! records, tampering with raw SQL, the head and anchors.

use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::audit::{record_hash, AuditError, AuditHead, DaemonKey, GENESIS};

fn new_run() -> NewRun {
    NewRun {
        environment: "prod".into(),
        commit: Some("abc".into()),
        signer: None,
        kind: RunKind::Apply,
        trigger: Trigger::Cli,
    }
}

/// A daemon db with `n` finished runs; returns the run ids oldest first.
fn db_with_runs(dir: &Path, n: usize) -> (StateDb, Vec<String>) {
    let db = StateDb::open(dir).unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = db.begin_run(&new_run()).unwrap();
        db.record_host(
            &id,
            &super::host_run(&format!("web{i}"), 1, crate::engine::HostStatus::Converged),
            &StepMeta::default(),
            &[],
        )
        .unwrap();
        db.finish_run(&id, RunResult::Converged, &json!({ "i": i }))
            .unwrap();
        ids.push(id.0);
    }
    (db, ids)
}

fn broken(db: &StateDb) -> (String, i64, String) {
    let key = db.daemon_key().unwrap().verifying_key();
    match db.verify_chain(&key, &Anchor::default()) {
        Err(StateError::Audit(AuditError::Broken {
            run_id,
            seq,
            reason,
        })) => (run_id, seq, reason),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn intact_chain_verifies() {
    let dir = private_tmp();
    let (db, _) = db_with_runs(dir.path(), 4);
    let key = db.daemon_key().unwrap().verifying_key();
    let v = db.verify_chain(&key, &Anchor::default()).unwrap();
    assert_eq!(v.records, 4);
    assert_eq!(v.head, db.audit_head().unwrap());
    assert_eq!(v.head.as_ref().map(|h| h.seq), Some(4));
    // Records link and carry what they sign.
    let (rec, prev): (String, String) = db
        .conn()
        .query_row(
            "SELECT record, prev_hash FROM runs WHERE chain_seq = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(prev, GENESIS);
    let rec: Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(rec["run"]["result"], "converged");
    assert_eq!(rec["hosts"][0]["host"], "web0");
    assert_eq!(rec["key"], db.daemon_key().unwrap().fingerprint());
}

#[test]
fn wrong_key_fails_at_the_first_record() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 2);
    let other = private_tmp();
    let k = DaemonKey::load_or_create(other.path()).unwrap();
    let err = db
        .verify_chain(&k.verifying_key(), &Anchor::default())
        .unwrap_err();
    match err {
        StateError::Audit(AuditError::Broken {
            run_id,
            seq,
            reason,
        }) => {
            assert_eq!((run_id.as_str(), seq), (ids[0].as_str(), 1));
            assert!(reason.contains("bad signature"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn altered_record_is_named() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 4);
    db.conn()
        .execute(
            "UPDATE runs SET record = replace(record, 'converged', 'failed') WHERE id = ?1",
            [&ids[2]],
        )
        .unwrap();
    let (id, seq, reason) = broken(&db);
    assert_eq!((id.as_str(), seq), (ids[2].as_str(), 3));
    assert!(reason.contains("hash mismatch"), "{reason}");
}

#[test]
fn rehashed_record_fails_the_signature() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 3);
    let rec: String = db
        .conn()
        .query_row("SELECT record FROM runs WHERE id = ?1", [&ids[1]], |r| {
            r.get(0)
        })
        .unwrap();
    let forged = rec.replace("converged", "failed");
    db.conn()
        .execute(
            "UPDATE runs SET record = ?1, hash = ?2, result = 'failed' WHERE id = ?3",
            rusqlite::params![forged, record_hash(&forged), ids[1]],
        )
        .unwrap();
    let (id, _, reason) = broken(&db);
    assert_eq!(id, ids[1]);
    assert!(reason.contains("bad signature"), "{reason}");
}

#[test]
fn edited_columns_and_results_are_named() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 3);
    db.conn()
        .execute("UPDATE runs SET result = 'failed' WHERE id = ?1", [&ids[1]])
        .unwrap();
    let (id, _, reason) = broken(&db);
    assert_eq!(id, ids[1]);
    assert!(reason.contains("runs row differ"), "{reason}");
    db.conn()
        .execute(
            "UPDATE runs SET result = 'converged' WHERE id = ?1",
            [&ids[1]],
        )
        .unwrap();
    db.conn()
        .execute(
            "UPDATE step_results SET status = 'failed' WHERE run_id = ?1",
            [&ids[2]],
        )
        .unwrap();
    let (id, _, reason) = broken(&db);
    assert_eq!(id, ids[2]);
    assert!(reason.contains("host or step results"), "{reason}");
}

#[test]
fn removed_and_reordered_records_are_named() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 4);
    db.conn()
        .execute("DELETE FROM runs WHERE id = ?1", [&ids[1]])
        .unwrap();
    let (id, seq, reason) = broken(&db);
    assert_eq!((id.as_str(), seq), (ids[2].as_str(), 3));
    assert!(reason.contains("missing"), "{reason}");

    // Renumbering to hide the gap breaks the link instead.
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 4);
    db.conn()
        .execute_batch(&format!(
            "DELETE FROM runs WHERE id = '{}';
             UPDATE runs SET chain_seq = chain_seq - 1 WHERE chain_seq > 2;",
            ids[1]
        ))
        .unwrap();
    let (id, _, reason) = broken(&db);
    assert_eq!(id, ids[2]);
    assert!(reason.contains("differ from the signed record"), "{reason}");
}

#[test]
fn unsigned_finished_run_is_named() {
    let dir = private_tmp();
    let (db, _) = db_with_runs(dir.path(), 2);
    db.conn()
        .execute(
            "INSERT INTO runs (id, environment, kind, trigger, started_at, finished_at, result)
             VALUES ('FORGED', 'prod', 'apply', 'cli', 1, 2, 'converged')",
            [],
        )
        .unwrap();
    let (id, _, reason) = broken(&db);
    assert_eq!(id, "FORGED");
    assert!(reason.contains("not in the signed chain"), "{reason}");
}

fn anchor(head: Option<&AuditHead>, min_seq: Option<u64>) -> Anchor {
    Anchor {
        head: head.cloned(),
        min_seq,
    }
}

#[test]
fn audit_head_is_the_newest_signed_record() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    assert_eq!(db.audit_head().unwrap(), None);
    let (db, ids) = {
        drop(db);
        db_with_runs(dir.path(), 3)
    };
    // An unfinished run is not in the chain.
    db.begin_run(&new_run()).unwrap();
    let head = db.audit_head().unwrap().unwrap();
    let (seq, hash): (i64, String) = db
        .conn()
        .query_row(
            "SELECT chain_seq, hash FROM runs WHERE id = ?1",
            [&ids[2]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (seq as u64, hash.as_str()));
    assert_eq!(head.seq, 3);
    assert_eq!(head.to_string().parse::<AuditHead>().unwrap(), head);
}

#[test]
fn truncation_below_the_anchor_is_caught() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 5);
    let key = db.daemon_key().unwrap().verifying_key();
    let head = db.audit_head().unwrap().unwrap();
    assert_eq!(head.seq, 5);
    // Intact: the anchor and the minimum hold, also after the chain grew past them.
    for a in [anchor(Some(&head), None), anchor(None, Some(5))] {
        assert_eq!(db.verify_chain(&key, &a).unwrap().records, 5);
    }
    let third: String = db
        .conn()
        .query_row("SELECT hash FROM runs WHERE chain_seq = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    let older = AuditHead {
        seq: 3,
        hash: third,
    };
    assert_eq!(
        db.verify_chain(&key, &anchor(Some(&older), None))
            .unwrap()
            .records,
        5
    );

    // The two newest records deleted: the rest of the chain is intact on its own...
    for id in &ids[3..] {
        db.conn()
            .execute("DELETE FROM runs WHERE id = ?1", [id])
            .unwrap();
    }
    let v = db.verify_chain(&key, &Anchor::default()).unwrap();
    assert_eq!(v.records, 3);
    // ...but not against what the operator anchored.
    for a in [anchor(Some(&head), None), anchor(None, Some(5))] {
        let err = db.verify_chain(&key, &a).unwrap_err();
        assert_eq!(err.code(), "audit.truncated", "{err}");
        let msg = err.to_string();
        assert!(msg.contains("expects record #5"), "{msg}");
        assert!(msg.contains("ends at #3"), "{msg}");
        assert!(msg.contains("records #4..#5 were removed"), "{msg}");
    }
    // The older anchor still holds.
    assert!(db.verify_chain(&key, &anchor(Some(&older), None)).is_ok());

    // A rewritten chain (same length, other hash at the anchored position) is caught too.
    let forged = AuditHead {
        seq: 3,
        hash: "ab".repeat(32),
    };
    let err = db
        .verify_chain(&key, &anchor(Some(&forged), None))
        .unwrap_err();
    assert_eq!(err.code(), "audit.anchor_mismatch", "{err}");
    assert!(err.to_string().contains("record #3 has hash"), "{err}");

    // Everything deleted: an empty chain is below any anchor.
    db.conn().execute("DELETE FROM runs", []).unwrap();
    let err = db.verify_chain(&key, &anchor(None, Some(1))).unwrap_err();
    assert!(err.to_string().contains("the chain is empty"), "{err}");
}

#[test]
fn verify_report_carries_the_head_and_what_is_missing() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 4);
    let key = db.daemon_key().unwrap().verifying_key();
    let head = db.audit_head().unwrap().unwrap();
    let r = db.verify_report(&key, &Anchor::default()).unwrap();
    assert!(r.ok);
    assert_eq!(
        (r.head_seq, r.head.as_deref()),
        (Some(4), Some(head.hash.as_str()))
    );
    assert!(
        r.summary_text().contains(&format!("head {head}")),
        "{}",
        r.summary_text()
    );
    db.conn()
        .execute("DELETE FROM runs WHERE id = ?1", [&ids[3]])
        .unwrap();
    let r = db.verify_report(&key, &anchor(Some(&head), None)).unwrap();
    assert!(!r.ok);
    assert_eq!(r.error_code.as_deref(), Some("audit.truncated"));
    assert_eq!((r.records, r.head_seq), (3, Some(3)));
    let e = r.error_text().unwrap();
    assert!(e.contains("record #4"), "{e}");
}

/// The run and its results read column by column as stored, JSON columns parsed: the form
/// records were signed in before rows were typed. Records signed by an older plumb verify only
/// if the typed form is identical.
fn raw_rows(db: &StateDb, id: &str) -> Value {
    let c = db.conn();
    let run = c
        .query_row(
            "SELECT id, environment, commit_id, signer_principal, signer_fingerprint, kind,
                trigger, started_at, finished_at, result, summary FROM runs WHERE id = ?1",
            [id],
            |r| {
                let p: Option<String> = r.get(3)?;
                let f: Option<String> = r.get(4)?;
                Ok(json!({
                    "id": r.get::<_, String>(0)?, "environment": r.get::<_, String>(1)?,
                    "commit": r.get::<_, Option<String>>(2)?,
                    "signer": if p.is_none() && f.is_none() { Value::Null }
                        else { json!({"principal": p, "fingerprint": f}) },
                    "kind": r.get::<_, String>(5)?, "trigger": r.get::<_, String>(6)?,
                    "started_at": r.get::<_, i64>(7)?, "finished_at": r.get::<_, Option<i64>>(8)?,
                    "result": r.get::<_, Option<String>>(9)?,
                    "summary": serde_json::from_str::<Value>(&r.get::<_, String>(10)?).unwrap(),
                }))
            },
        )
        .unwrap();
    let mut hosts = Vec::new();
    let mut hs = c
        .prepare("SELECT host, status, error, changed, in_sync, duration_ms, round_trips, started_at, finished_at FROM host_results WHERE run_id = ?1 ORDER BY id")
        .unwrap();
    let mut ss = c
        .prepare("SELECT address, module, status, change_kind, fields, error, duration_ms, drift, cause FROM step_results WHERE run_id = ?1 AND host = ?2 ORDER BY id")
        .unwrap();
    let rows: Vec<(String, Value)> = hs
        .query_map([id], |r| {
            Ok((
                r.get(0)?,
                json!({
                    "host": r.get::<_, String>(0)?, "status": r.get::<_, String>(1)?,
                    "error": r.get::<_, Option<String>>(2)?, "changed": r.get::<_, i64>(3)?,
                    "in_sync": r.get::<_, i64>(4)?, "duration_ms": r.get::<_, i64>(5)?,
                    "round_trips": serde_json::from_str::<Value>(&r.get::<_, String>(6)?).unwrap(),
                    "started_at": r.get::<_, i64>(7)?, "finished_at": r.get::<_, i64>(8)?,
                }),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (name, mut h) in rows {
        let steps: Vec<Value> = ss
            .query_map([id, name.as_str()], |r| {
                Ok(json!({
                    "address": r.get::<_, String>(0)?, "module": r.get::<_, String>(1)?,
                    "status": r.get::<_, String>(2)?, "change": r.get::<_, Option<String>>(3)?,
                    "fields": serde_json::from_str::<Value>(&r.get::<_, String>(4)?).unwrap(),
                    "error": r.get::<_, Option<String>>(5)?, "duration_ms": r.get::<_, i64>(6)?,
                    "drift": r.get::<_, bool>(7)?, "cause": r.get::<_, Option<String>>(8)?,
                }))
            })
            .unwrap()
            .map(Result::unwrap)
            .map(|mut s: Value| {
                if s["cause"].is_null() {
                    s.as_object_mut().unwrap().remove("cause");
                }
                s
            })
            .collect();
        h["steps"] = Value::Array(steps);
        hosts.push(h);
    }
    json!({ "run": run, "hosts": hosts })
}

#[test]
fn signed_records_are_the_stored_rows_as_before() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let a = db.begin_run(&super::new_run(RunKind::Apply)).unwrap();
    db.record_host(
        &a,
        &host_run("web1", 2, crate::engine::HostStatus::Failed),
        &super::meta(),
        &[],
    )
    .unwrap();
    db.finish_run(&a, RunResult::Failed, &json!({"wave": 1}))
        .unwrap();
    let d = db.begin_run(&super::new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&d, &super::plan("web2", &["base/a"]), &meta())
        .unwrap();
    db.finish_run(&d, RunResult::DriftFound, &json!({}))
        .unwrap();
    for id in [&a, &d] {
        let record: String = db
            .conn()
            .query_row("SELECT record FROM runs WHERE id = ?1", [&id.0], |r| {
                r.get(0)
            })
            .unwrap();
        let signed: Value = serde_json::from_str(&record).unwrap();
        let raw = raw_rows(&db, &id.0);
        for part in ["run", "hosts"] {
            assert_eq!(
                crate::audit::canonical_json(&signed[part]),
                crate::audit::canonical_json(&raw[part]),
                "{part} of {id}"
            );
        }
    }
}

/// Appends one finished run to `db`'s chain; returns its id.
fn one_more(db: &StateDb, i: usize) -> String {
    let id = db.begin_run(&new_run()).unwrap();
    db.record_host(
        &id,
        &super::host_run(&format!("web{i}"), 1, crate::engine::HostStatus::Converged),
        &StepMeta::default(),
        &[],
    )
    .unwrap();
    db.finish_run(&id, RunResult::Converged, &json!({ "i": i }))
        .unwrap();
    id.0
}

/// The status the daemon keeps: the whole chain verified once, then only the records
/// written since, each once; every handle of the database shares it; a break in a new
/// record shows, and stays.
#[test]
fn chain_status_carries_the_full_check_forward_record_by_record() {
    let dir = private_tmp();
    let (db, _) = db_with_runs(dir.path(), 3);
    let start = db.check_chain().unwrap().expect("a daemon handle");
    assert!(start.report.ok, "{:?}", start.report);
    assert_eq!((start.report.records, start.since_full), (3, 0));
    assert_eq!(start.report.head_seq, Some(3));

    one_more(&db, 3);
    one_more(&db, 4);
    let handle = db.handle().unwrap();
    let now = handle.chain_status().unwrap().unwrap();
    assert!(now.report.ok, "{:?}", now.report);
    assert_eq!((now.report.records, now.since_full), (5, 2));
    assert_eq!(now.full_at, start.full_at, "not verified in full again");
    assert_eq!(
        now.report.head,
        db.audit_head().unwrap().map(|h| h.hash),
        "the head it reports is the stored head"
    );

    // A record written since, altered before it was checked: broken, naming it; the
    // status stays broken (on every handle) after more records.
    let bad = one_more(&db, 5);
    db.conn()
        .execute(
            "UPDATE runs SET record = replace(record, 'converged', 'failed') WHERE id = ?1",
            [&bad],
        )
        .unwrap();
    let s = db.chain_status().unwrap().unwrap();
    assert!(!s.report.ok);
    let b = s.report.broken.as_ref().expect("the broken record");
    assert_eq!((b.run_id.as_str(), b.seq), (bad.as_str(), 6));
    assert!(b.reason.contains("hash mismatch"), "{}", b.reason);
    one_more(&db, 6);
    let later = handle.chain_status().unwrap().unwrap();
    assert!(!later.report.ok && later.report.broken.is_some());
}

/// What happened under the record the kept status ended at: removed (truncation),
/// rewritten, or a finished run slipped in outside the chain. Each shows broken.
#[test]
fn chain_status_sees_truncation_rewrites_and_unsigned_runs() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 3);
    assert!(db.check_chain().unwrap().unwrap().report.ok);
    db.conn()
        .execute("DELETE FROM runs WHERE id = ?1", [&ids[2]])
        .unwrap();
    let s = db.chain_status().unwrap().unwrap();
    assert!(!s.report.ok);
    assert_eq!(s.report.error_code.as_deref(), Some("audit.truncated"));
    assert_eq!(s.report.head_seq, Some(2), "the head found now");

    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 3);
    assert!(db.check_chain().unwrap().unwrap().report.ok);
    db.conn()
        .execute(
            "UPDATE runs SET hash = ?1 WHERE id = ?2",
            rusqlite::params![GENESIS, ids[2]],
        )
        .unwrap();
    let s = db.chain_status().unwrap().unwrap();
    assert_eq!(
        s.report.error_code.as_deref(),
        Some("audit.anchor_mismatch")
    );
    assert!(
        s.report
            .anchor_error
            .as_deref()
            .is_some_and(|e| e.contains("#3")),
        "{:?}",
        s.report
    );

    let dir = private_tmp();
    let (db, _) = db_with_runs(dir.path(), 2);
    assert!(db.check_chain().unwrap().unwrap().report.ok);
    db.conn()
        .execute(
            "INSERT INTO runs (id, environment, kind, trigger, started_at, finished_at, result)
             VALUES ('FORGED', 'prod', 'apply', 'cli', 1, 2, 'converged')",
            [],
        )
        .unwrap();
    let s = db.chain_status().unwrap().unwrap();
    let b = s.report.broken.as_ref().expect("broken");
    assert_eq!(b.run_id, "FORGED");
}

/// A record altered before the daemon started is found by the check at start-up, and the
/// status carried forward keeps saying so.
#[test]
fn a_break_found_at_start_is_kept() {
    let dir = private_tmp();
    let (db, ids) = db_with_runs(dir.path(), 3);
    db.conn()
        .execute("UPDATE runs SET result = 'failed' WHERE id = ?1", [&ids[0]])
        .unwrap();
    let s = db.check_chain().unwrap().unwrap();
    assert_eq!(
        s.report.broken.as_ref().map(|b| b.run_id.as_str()),
        Some(ids[0].as_str())
    );
    one_more(&db, 3);
    let later = db.chain_status().unwrap().unwrap();
    assert_eq!(
        later.report.broken.as_ref().map(|b| b.run_id.as_str()),
        Some(ids[0].as_str())
    );
    // An inspect handle has no key and keeps nothing.
    drop(db);
    assert!(StateDb::open_inspect(dir.path())
        .unwrap()
        .chain_status()
        .unwrap()
        .is_none());
}
