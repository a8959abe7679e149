use serde_json::json;

use super::*;
use crate::state::{NewRun, RunKind, RunResult, StateDb, Trigger};

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
            &crate::state::tests::host_run(
                &format!("web{i}"),
                1,
                crate::engine::HostStatus::Converged,
            ),
            &crate::state::StepMeta::default(),
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
    match verify_chain(db, &key) {
        Err(AuditError::Broken {
            run_id,
            seq,
            reason,
        }) => (run_id, seq, reason),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn key_is_created_private_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = DaemonKey::load_or_create(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
    assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let k2 = DaemonKey::load_or_create(dir.path()).unwrap();
    assert_eq!(k1.fingerprint(), k2.fingerprint());
    assert!(k1.fingerprint().starts_with("SHA256:"));
    let public = k1.public_key_openssh();
    assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
    assert!(public.ends_with(" plumb-daemon"), "{public}");
    assert_eq!(parse_public_key(&public).unwrap(), k1.verifying_key());
    // allowed-signers style line
    assert_eq!(
        parse_public_key(&format!("# daemon\nplumb@prod {public}\n")).unwrap(),
        k1.verifying_key()
    );
    assert!(parse_public_key("ssh-rsa AAAA nope").is_err());
    assert!(parse_public_key("").is_err());
}

#[test]
fn key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    DaemonKey::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(KEY_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = DaemonKey::load(&path).unwrap_err();
    assert_eq!(err.code(), "audit.key_permissions");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "garbage").unwrap();
    assert_eq!(DaemonKey::load(&path).unwrap_err().code(), "audit.key");
}

#[test]
fn canonical_json_sorts_keys_and_has_no_whitespace() {
    let v = json!({"b": 1, "a": {"d": [1, {"z": null, "y": "x"}], "c": true}});
    assert_eq!(
        canonical_json(&v),
        r#"{"a":{"c":true,"d":[1,{"y":"x","z":null}]},"b":1}"#
    );
}

#[test]
fn intact_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = db_with_runs(dir.path(), 4);
    let key = db.daemon_key().unwrap().verifying_key();
    let v = verify_chain(&db, &key).unwrap();
    assert_eq!(v.records, 4);
    assert_eq!(v.head, db.chain_head().unwrap().map(|(_, h)| h));
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
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = db_with_runs(dir.path(), 2);
    let other = tempfile::tempdir().unwrap();
    let k = DaemonKey::load_or_create(other.path()).unwrap();
    let err = verify_chain(&db, &k.verifying_key()).unwrap_err();
    match err {
        AuditError::Broken {
            run_id,
            seq,
            reason,
        } => {
            assert_eq!((run_id.as_str(), seq), (ids[0].as_str(), 1));
            assert!(reason.contains("bad signature"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn altered_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = db_with_runs(dir.path(), 4);
    db.conn()
        .execute("DELETE FROM runs WHERE id = ?1", [&ids[1]])
        .unwrap();
    let (id, seq, reason) = broken(&db);
    assert_eq!((id.as_str(), seq), (ids[2].as_str(), 3));
    assert!(reason.contains("missing"), "{reason}");

    // Renumbering to hide the gap breaks the link instead.
    let dir = tempfile::tempdir().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
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
