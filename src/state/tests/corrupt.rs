//! A row edited into something plumb never writes is `Corrupt` (naming table, row and
//! column) for every query that reads it, never a silent default.

use serde_json::json;

use super::*;

/// A daemon db with one finished apply (two changed steps on web1), one unfinished drift
/// check with an open finding, and a last applied commit. Returns the db and the apply's id.
fn fixture(dir: &std::path::Path) -> (StateDb, RunId) {
    let db = StateDb::open(dir).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.record_host(
        &id,
        &host_run("web1", 2, HostStatus::Converged),
        &meta(),
        &[],
    )
    .unwrap();
    db.finish_run(&id, RunResult::Converged, &json!({}))
        .unwrap();
    db.set_last_applied("prod", "abc", &id).unwrap();
    let d = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&d, &plan("web2", &["base/a"]), &meta())
        .unwrap();
    (db, id)
}

fn tamper(db: &StateDb, sql: &str, id: &RunId) {
    db.conn()
        .execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    let n = db.conn().execute(sql, [&id.0]).unwrap();
    assert!(n > 0, "{sql} changed nothing");
}

fn assert_corrupt(r: Result<impl std::fmt::Debug, StateError>, table: &str, column: &str) {
    match r {
        Err(StateError::Corrupt {
            table: t, what, id, ..
        }) => {
            assert_eq!(t, table, "{what}");
            assert!(what.contains(&format!("`{column}`")), "{what}");
            assert!(!id.is_empty());
        }
        other => panic!("expected Corrupt in {table}.{column}, got {other:?}"),
    }
}

#[test]
fn corrupt_run_rows_fail_every_read() {
    let cases = [
        ("UPDATE runs SET kind = 'sabotage' WHERE id = ?1", "kind"),
        ("UPDATE runs SET trigger = 'whim' WHERE id = ?1", "trigger"),
        ("UPDATE runs SET result = 'fine' WHERE id = ?1", "result"),
        (
            "UPDATE runs SET summary = '{not json' WHERE id = ?1",
            "summary",
        ),
        (
            "UPDATE runs SET started_at = 'yesterday' WHERE id = ?1",
            "started_at",
        ),
        (
            "UPDATE runs SET finished_at = 'soon' WHERE id = ?1",
            "finished_at",
        ),
        (
            "UPDATE runs SET signer_fingerprint = NULL WHERE id = ?1",
            "signer",
        ),
    ];
    for (sql, column) in cases {
        let dir = private_tmp();
        let (db, id) = fixture(dir.path());
        tamper(&db, sql, &id);
        assert_corrupt(db.runs(&RunFilter::default()), "runs", column);
        assert_corrupt(db.run(&id), "runs", column);
        let inspect = StateDb::open_inspect(dir.path()).unwrap();
        assert_corrupt(inspect.runs(&RunFilter::default()), "runs", column);
        // The chain names the record whose rows no longer read.
        match verify(&db) {
            Err(StateError::Audit(crate::audit::AuditError::Broken { run_id, reason, .. })) => {
                assert_eq!(run_id, id.0);
                assert!(reason.contains("unreadable"), "{reason}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn corrupt_result_rows_fail_every_read() {
    let cases = [
        (
            "UPDATE host_results SET status = 'meh' WHERE run_id = ?1",
            "host_results",
            "status",
        ),
        (
            "UPDATE host_results SET round_trips = '{' WHERE run_id = ?1",
            "host_results",
            "round_trips",
        ),
        (
            "UPDATE host_results SET changed = -3 WHERE run_id = ?1",
            "host_results",
            "changed",
        ),
        (
            "UPDATE host_results SET duration_ms = 'slow' WHERE run_id = ?1",
            "host_results",
            "duration_ms",
        ),
        (
            "UPDATE step_results SET status = 'meh' WHERE run_id = ?1",
            "step_results",
            "status",
        ),
        (
            "UPDATE step_results SET change_kind = 'morph' WHERE run_id = ?1",
            "step_results",
            "change_kind",
        ),
        (
            "UPDATE step_results SET fields = 'nope' WHERE run_id = ?1",
            "step_results",
            "fields",
        ),
        (
            "UPDATE step_results SET fields = '[{\"x\": 1}]' WHERE run_id = ?1",
            "step_results",
            "fields",
        ),
    ];
    for (sql, table, column) in cases {
        let dir = private_tmp();
        let (db, id) = fixture(dir.path());
        tamper(&db, sql, &id);
        assert_corrupt(db.run(&id), table, column);
        assert!(matches!(
            verify(&db),
            Err(StateError::Audit(crate::audit::AuditError::Broken { .. }))
        ));
    }
}

#[test]
fn corrupt_findings_and_commits_fail_their_reads() {
    let cases = [
        (
            "UPDATE drift_findings SET change_kind = 'morph' WHERE ?1 IS NOT NULL",
            "change_kind",
        ),
        (
            "UPDATE drift_findings SET fields = '[' WHERE ?1 IS NOT NULL",
            "fields",
        ),
        (
            "UPDATE drift_findings SET last_seen = 'now' WHERE ?1 IS NOT NULL",
            "last_seen",
        ),
    ];
    for (sql, column) in cases {
        let dir = private_tmp();
        let (db, id) = fixture(dir.path());
        tamper(&db, sql, &id);
        assert_corrupt(db.open_drift("prod"), "drift_findings", column);
    }
    let dir = private_tmp();
    let (db, id) = fixture(dir.path());
    tamper(
        &db,
        "UPDATE last_applied SET applied_at = 'today' WHERE run_id = ?1",
        &id,
    );
    assert_corrupt(db.last_applied("prod"), "last_applied", "applied_at");
}

#[test]
fn corrupt_kind_stops_writes_to_the_run() {
    let dir = private_tmp();
    let (db, _) = fixture(dir.path());
    let open = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    tamper(
        &db,
        "UPDATE runs SET kind = 'sabotage' WHERE id = ?1",
        &open,
    );
    let err = db
        .record_host(
            &open,
            &host_run("web1", 1, HostStatus::Converged),
            &meta(),
            &[],
        )
        .unwrap_err();
    assert_eq!(err.code(), "state.corrupt");
    assert!(err.to_string().contains("runs row"), "{err}");
    assert!(err.to_string().contains("\"sabotage\""), "{err}");
}

#[test]
fn corrupt_chain_head_stops_reads_and_signing() {
    for sql in [
        "UPDATE runs SET hash = NULL WHERE id = ?1",
        "UPDATE runs SET chain_seq = 'first' WHERE id = ?1",
    ] {
        let dir = private_tmp();
        let (db, id) = fixture(dir.path());
        tamper(&db, sql, &id);
        let column = if sql.contains("hash") {
            "hash"
        } else {
            "chain_seq"
        };
        assert_corrupt(db.audit_head(), "runs", column);
        // A new record never chains onto a head it cannot read (no silent genesis).
        let next = db.begin_run(&new_run(RunKind::Apply)).unwrap();
        assert_corrupt(
            db.finish_run(&next, RunResult::Converged, &json!({})),
            "runs",
            column,
        );
    }
}
