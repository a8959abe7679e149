//! Issue 19: classified and attributed step changes, handler events, hosts not reached,
//! drift evidence and drift findings inside the hash chain.

use serde_json::json;

use super::*;
use crate::modules::ContentChange;

fn drift_with_content(name: &str, old: &str, new: &str) -> HostPlan {
    let mut p = plan(name, &["base/conf"]);
    if let Ok(c) = &mut p.steps[0].change {
        c.content = Some(Box::new(ContentChange {
            old: Some(old.as_bytes().to_vec()),
            new: Some(new.as_bytes().to_vec()),
        }));
    }
    p
}

fn manual() -> Origin {
    Origin {
        commit: "uncommitted:abc".into(),
        signer: Some("carol".into()),
        run: Some(RunId("01MANUAL".into())),
        rollback: None,
    }
}

#[test]
fn a_drift_finding_keeps_a_bounded_diff_and_its_cause() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let r = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    let mut m = meta();
    m.attribute(
        "base/conf",
        Attribution {
            cause: Cause::Manual,
            origin: Some(manual()),
        },
    );
    db.record_drift_check(&r, &drift_with_content("web1", "port=1\n", "port=2\n"), &m)
        .unwrap();
    db.finish_run(&r, RunResult::DriftFound, &json!({}))
        .unwrap();
    let f = &db.open_drift("prod").unwrap()[0];
    let diff = f.diff.as_deref().expect("a diff");
    assert!(
        diff.contains("-port=1") && diff.contains("+port=2"),
        "{diff}"
    );
    assert_eq!(f.cause, Some(Cause::Manual));
    let step = &db.run(&r).unwrap().unwrap().hosts[0].steps[0];
    assert_eq!(step.diff, f.diff);
    assert_eq!(step.cause, Some(Cause::Manual));
    assert_eq!(step.origin, Some(manual()));

    // Bounded: a huge text change is cut.
    let big_old = "a\n".repeat(20_000);
    let big_new = "b\n".repeat(20_000);
    let r2 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(
        &r2,
        &drift_with_content("web2", &big_old, &big_new),
        &meta(),
    )
    .unwrap();
    let d = db.run(&r2).unwrap().unwrap().hosts[0].steps[0].diff.clone();
    let d = d.expect("a diff");
    assert!(
        d.len() <= crate::state::write::MAX_STORED_DIFF + 64,
        "{}",
        d.len()
    );

    // A sensitive step keeps no diff.
    let mut secret = drift_with_content("web3", "pw=1\n", "pw=2\n");
    secret.steps[0].step.sensitive = true;
    let r3 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r3, &secret, &meta()).unwrap();
    assert_eq!(db.run(&r3).unwrap().unwrap().hosts[0].steps[0].diff, None);
}

#[test]
fn drift_findings_and_their_resolution_are_in_the_chain() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let r1 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r1, &drift_with_content("web1", "x=1\n", "x=2\n"), &meta())
        .unwrap();
    db.finish_run(&r1, RunResult::DriftFound, &json!({}))
        .unwrap();
    let r2 = db.begin_run(&new_run(RunKind::Correction)).unwrap();
    db.record_host(
        &r2,
        &host_run("web1", 1, HostStatus::Converged),
        &meta(),
        &[],
    )
    .unwrap();
    db.finish_run(&r2, RunResult::Converged, &json!({}))
        .unwrap();
    verify(&db).expect("an untouched chain verifies");

    let record = |id: &RunId| -> serde_json::Value {
        let text: String = db
            .conn()
            .query_row("SELECT record FROM runs WHERE id = ?1", [&id.0], |r| {
                r.get(0)
            })
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    assert_eq!(record(&r1)["drift"][0]["address"], "base/conf");
    assert!(record(&r1)["drift"][0]["opened_at"].is_i64());
    assert!(record(&r2)["drift"][0]["resolved_at"].is_i64());

    let edits = [
        "UPDATE drift_findings SET diff = 'nothing to see'",
        "UPDATE drift_findings SET fields = '[]'",
        "UPDATE drift_findings SET resolved_at = resolved_at + 1000",
        "UPDATE drift_findings SET first_seen = first_seen - 1000",
        "UPDATE drift_findings SET resolved_at = NULL, resolved_run_id = NULL",
        "DELETE FROM drift_findings",
    ];
    for edit in edits {
        db.conn().execute_batch("SAVEPOINT e").unwrap();
        db.conn().execute_batch(edit).unwrap();
        let err = verify(&db).expect_err(edit).to_string();
        assert!(
            err.contains("drift finding") || err.contains("drift findings"),
            "{edit}: {err}"
        );
        db.conn().execute_batch("ROLLBACK TO e; RELEASE e").unwrap();
    }
    verify(&db).expect("restored");
}

#[test]
fn attribution_handler_events_times_and_hosts_not_reached_are_recorded_and_signed() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let r = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    let mut run = host_run("web1", 2, HostStatus::Converged);
    run.handlers.push(crate::engine::HandlerOutcome {
        step: run.steps[0].step.clone(),
        ok: true,
        error: None,
    });
    let mut meta = meta();
    let alice = Origin {
        commit: "c1".into(),
        signer: Some("alice".into()),
        run: None,
        rollback: None,
    };
    meta.attribute(
        "base/step0",
        Attribution {
            cause: Cause::Intended,
            origin: Some(alice.clone()),
        },
    );
    meta.attribute(
        "base/step1",
        Attribution {
            cause: Cause::Corrective,
            origin: Some(alice.clone()),
        },
    );
    db.record_host(&r, &run, &meta, &[]).unwrap();
    let why = NotReached {
        reason: NotReachedReason::WaveStopped,
        detail: "wave `canary` failed".into(),
    };
    db.record_not_reached(&r, &["web2".into()], &why).unwrap();
    db.finish_run(&r, RunResult::Failed, &json!({})).unwrap();
    verify(&db).unwrap();

    let detail = db.run(&r).unwrap().unwrap();
    let web1 = &detail.hosts[0];
    assert!(web1.started_at.unwrap() <= web1.finished_at.unwrap());
    assert_eq!(web1.steps[0].cause, Some(Cause::Intended));
    assert!(!web1.steps[0].drift);
    assert_eq!(web1.steps[1].cause, Some(Cause::Corrective));
    assert!(web1.steps[1].drift, "a corrective change is drift");
    assert_eq!(web1.steps[1].origin.as_ref(), Some(&alice));
    assert_eq!(web1.events.len(), 1);
    assert_eq!(web1.events[0].kind, RunEventKind::Refresh);
    let web2 = &detail.hosts[1];
    assert_eq!(web2.status, HostResultStatus::NotReached);
    assert_eq!(web2.not_reached.as_ref(), Some(&why));
    let listed = &db.runs(&RunFilter::default()).unwrap()[0];
    assert_eq!(
        listed.hosts, 1,
        "a host not reached is not counted as handled"
    );

    for edit in [
        "UPDATE run_events SET ok = 0",
        "UPDATE step_results SET cause = 'intended'",
        "UPDATE host_results SET not_reached = NULL",
    ] {
        db.conn().execute_batch("SAVEPOINT e").unwrap();
        db.conn().execute_batch(edit).unwrap();
        assert!(verify(&db).is_err(), "{edit}");
        db.conn().execute_batch("ROLLBACK TO e; RELEASE e").unwrap();
    }
}

#[test]
fn step_origins_keep_the_commit_and_manual_marks() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let c1 = Origin {
        commit: "c1".into(),
        signer: Some("alice".into()),
        run: None,
        rollback: None,
    };
    db.set_step_origins(
        "prod",
        "web1",
        &[("base/a".into(), "d1".into(), c1.clone())],
    )
    .unwrap();
    db.mark_manual(
        "prod",
        "web1",
        &["base/a".into(), "base/b".into()],
        &manual(),
    )
    .unwrap();
    let o = db.step_origins("prod", "web1").unwrap();
    assert_eq!(o["base/a"].digest, "d1");
    assert_eq!(o["base/a"].origin, c1);
    assert_eq!(o["base/a"].manual, Some(manual()));
    assert_eq!(o["base/b"].digest, "", "only the manual run touched it");
    db.set_step_origins(
        "prod",
        "web1",
        &[("base/a".into(), "d2".into(), c1.clone())],
    )
    .unwrap();
    let o = db.step_origins("prod", "web1").unwrap();
    assert_eq!(
        (o["base/a"].digest.as_str(), o["base/a"].manual.as_ref()),
        ("d2", None)
    );
    assert!(db.step_origins("prod", "web2").unwrap().is_empty());
}
