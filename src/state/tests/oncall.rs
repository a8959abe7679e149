//! Issue 19, on-call: the alerts firing and the manual runs seen are kept in the state (v9);
//! a manual run keeps its provenance when it is interrupted; a rollback's changes are
//! attributed to it.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Kept {
    message: String,
}

#[test]
fn active_alerts_are_kept_until_resolved_and_a_bad_row_is_corrupt() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let kept = |m: &str| Kept { message: m.into() };
    db.save_active_alert("drift_found/prod/web-1", &kept("1 drifted"), 10)
        .unwrap();
    db.save_active_alert("host_unreachable/prod/web-2", &kept("gone"), 5)
        .unwrap();
    // Updated: the same identity says something new, and keeps one row.
    db.save_active_alert("drift_found/prod/web-1", &kept("2 drifted"), 10)
        .unwrap();
    drop(db);
    // Across a restart (a new handle on the same directory).
    let db = StateDb::open(dir.path()).unwrap();
    let rows = db.active_alerts::<Kept>().unwrap();
    let ids: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|r| (r.id.as_str(), r.alert.message.as_str(), r.fired_at))
        .collect();
    assert_eq!(
        ids,
        [
            ("host_unreachable/prod/web-2", "gone", 5),
            ("drift_found/prod/web-1", "2 drifted", 10)
        ]
    );
    db.delete_active_alert("host_unreachable/prod/web-2")
        .unwrap();
    assert_eq!(db.active_alerts::<Kept>().unwrap().len(), 1);
    // A row that is not the caller's type is an error naming it, never skipped silently.
    db.conn()
        .execute(
            "UPDATE active_alerts SET alert = '{\"msg\": 1}' WHERE id = 'drift_found/prod/web-1'",
            [],
        )
        .unwrap();
    let err = db.active_alerts::<Kept>().unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { table: "active_alerts", id, .. } if id == "drift_found/prod/web-1"),
        "{err}"
    );
}

fn provenance(glass: Option<&str>) -> Provenance {
    Provenance {
        user: "carol".into(),
        identity: "ssh defaults".into(),
        head: Some("c0ffee".into()),
        dirty: true,
        tree_sha256: "t".into(),
        diff_sha256: Some("d".into()),
        signer: None,
        unverified: None,
        break_glass: glass.map(String::from),
    }
}

fn manual_run(db: &StateDb, finish: bool) -> RunId {
    let mut n = new_run(RunKind::Manual);
    n.trigger = Trigger::Cli;
    let run = db.begin_run(&n).unwrap();
    let summary = ManualSummary {
        manual: provenance(Some("incident 42")),
        refused: None,
        interrupted: None,
    };
    db.set_run_summary(&run, &serde_json::to_value(&summary).unwrap())
        .unwrap();
    if finish {
        db.finish_run(
            &run,
            RunResult::Converged,
            &serde_json::to_value(&summary).unwrap(),
        )
        .unwrap();
    }
    run
}

#[test]
fn manual_runs_are_seen_once_finished_and_old_ones_at_the_upgrade() {
    let dir = private_tmp();
    let path = dir.path().join(DB_FILE);
    {
        // A state from before v9 with a manual run already in it.
        let mut c = Connection::open(&path).unwrap();
        schema::migrate_to(&mut c, 8, &path).unwrap();
        c.execute(
            "INSERT INTO runs (id, environment, kind, trigger, started_at, finished_at, result)
             VALUES ('OLDMANUAL', 'prod', 'manual', 'cli', 1, 2, 'converged')",
            [],
        )
        .unwrap();
    }
    private_file(&path);
    let db = StateDb::open(dir.path()).unwrap();
    assert_eq!(
        db.unseen_manual_runs(10).unwrap(),
        Vec::<RunId>::new(),
        "history from before the upgrade does not page"
    );
    // One recorded beside the daemon (a recorder handle), not finished yet: not seen yet.
    let recorder = StateDb::open_recorder(dir.path()).unwrap();
    let running = manual_run(&recorder, false);
    let done = manual_run(&recorder, true);
    let other = recorder.begin_run(&new_run(RunKind::Apply)).unwrap();
    recorder
        .finish_run(&other, RunResult::Converged, &json!({}))
        .unwrap();
    assert_eq!(db.unseen_manual_runs(10).unwrap(), vec![done.clone()]);
    db.mark_manual_run_seen(&done, true).unwrap();
    db.mark_manual_run_seen(&done, true).unwrap();
    assert!(db.unseen_manual_runs(10).unwrap().is_empty());
    // The recorder was killed: the daemon's next start marks it interrupted, keeping who ran
    // it and why, and it is then there to be seen.
    drop((db, recorder));
    let db = StateDb::open(dir.path()).unwrap();
    assert_eq!(db.unseen_manual_runs(10).unwrap(), vec![running.clone()]);
    let detail = db.run(&running).unwrap().unwrap();
    assert_eq!(detail.run.result, RunResult::Interrupted);
    let summary: ManualSummary = serde_json::from_value(detail.run.summary).unwrap();
    assert_eq!(summary.manual.break_glass.as_deref(), Some("incident 42"));
    assert!(summary.interrupted.is_some());
    // The chain holds every run plumb recorded (the hand-made old row aside).
    db.conn()
        .execute("DELETE FROM runs WHERE id = 'OLDMANUAL'", [])
        .unwrap();
    verify(&db).expect("the chain verifies");
}

#[test]
fn a_rollbacks_changes_are_attributed_to_it_and_are_not_drift() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let run = db.begin_run(&new_run(RunKind::Rollback)).unwrap();
    let origin = Origin {
        rollback: Some(RollbackOrigin {
            from: Some("bad".into()),
            to: "good".into(),
            by: RollbackBy::Daemon,
            run: run.clone(),
        }),
        ..Origin::commit("good", Some("alice@example.com"))
    };
    let meta = StepMeta::every_change(Attribution::rollback(origin.clone()));
    db.record_host(
        &run,
        &host_run("web1", 2, HostStatus::Converged),
        &meta,
        &[],
    )
    .unwrap();
    let summary = json!({
        "by": "daemon", "rollback_of": "bad", "failed_run": "01FAILED", "failed_wave": "canary",
        "reason": "wave `canary`: health checks failed", "target": "good", "hosts": ["web1"],
    });
    db.finish_run(&run, RunResult::Converged, &summary).unwrap();
    // `plumb history --kind rollback` shows it, with its cause.
    let filter = RunFilter {
        kind: Some(RunKind::Rollback),
        ..RunFilter::default()
    };
    let runs = db.runs(&filter).unwrap();
    assert_eq!(runs.len(), 1);
    let text = report::HistoryReport::new(&runs).to_text();
    assert!(
        text.contains(&format!(
            "{run}: rolled back web1 from bad to good by the daemon after wave `canary` failed: \
             wave `canary`: health checks failed\n"
        )),
        "{text}"
    );
    let detail = db.run(&run).unwrap().unwrap();
    let steps = &detail.hosts[0].steps;
    assert_eq!(steps.len(), 2);
    for s in steps {
        assert_eq!(s.cause, Some(Cause::Rollback), "{s:?}");
        assert_eq!(s.origin.as_ref(), Some(&origin));
        assert!(!s.drift, "a rollback's change is not drift");
    }
    // In the signed record too.
    let record: serde_json::Value = serde_json::from_str(
        &db.conn()
            .query_row("SELECT record FROM runs WHERE id = ?1", [&run.0], |r| {
                r.get::<_, String>(0)
            })
            .unwrap(),
    )
    .unwrap();
    let step = &record["hosts"][0]["steps"][0];
    assert_eq!(step["cause"], "rollback", "{record:#}");
    assert_eq!(step["origin"]["rollback"]["from"], "bad");
    assert_eq!(step["origin"]["rollback"]["by"], "daemon");
    verify(&db).expect("the chain verifies");
}
