//! The managed resources of each host (v8): kept per (environment, host) from the steps a run
//! left in sync, taken out by a removal that converged, never holding a sensitive value.

use serde_json::json;

use super::{host_run, new_run, private_tmp, sref};
use crate::engine::{HostRun, HostStatus, StepOutcome, StepStatus};
use crate::prune::{Managed, Removal};
use crate::state::{RunKind, RunResult, StateDb};

fn managed(address: &str, path: &str, order: i64) -> Managed {
    Managed {
        address: address.into(),
        module: "file".into(),
        target: path.into(),
        sensitive: false,
        unit: "base".into(),
        unit_flag: Some(true),
        removal: Removal::Absent {
            params: json!({"path": path, "state": "absent"}),
        },
        order,
    }
}

fn outcome(address: &str, status: StepStatus, removing: bool) -> StepOutcome {
    let mut step = sref(address, "/etc/x");
    step.removing = removing;
    StepOutcome {
        step,
        status,
        change: None,
        error: None,
        duration_ms: 0,
    }
}

fn run_of(name: &str, steps: Vec<StepOutcome>) -> HostRun {
    HostRun {
        steps,
        ..host_run(name, 0, HostStatus::Converged)
    }
}

fn addresses(db: &StateDb, env: &str, host: &str) -> Vec<String> {
    db.managed(env, host)
        .expect("reads")
        .into_iter()
        .map(|m| m.address)
        .collect()
}

#[test]
fn managed_resources_are_kept_per_host_and_removed_after_prune() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).expect("opens");
    let declared = [
        managed("base/a", "/etc/a", 0),
        managed("base/b", "/etc/b", 1),
        managed("base/c", "/etc/c", 2),
    ];
    let run = db.begin_run(&new_run(RunKind::Apply)).expect("begins");
    // web1: a in sync, b changed, c failed (not managed: it was never made so).
    let web1 = run_of(
        "web1",
        vec![
            outcome("base/a", StepStatus::InSync, false),
            outcome("base/b", StepStatus::Changed, false),
            outcome("base/c", StepStatus::Failed, false),
        ],
    );
    db.record_host(&run, &web1, &super::meta(), &declared)
        .expect("records");
    let web2 = run_of("web2", vec![outcome("base/c", StepStatus::Changed, false)]);
    db.record_host(&run, &web2, &super::meta(), &declared)
        .expect("records");
    db.finish_run(&run, RunResult::Failed, &json!({}))
        .expect("finishes");
    assert_eq!(addresses(&db, "prod", "web1"), ["base/a", "base/b"]);
    assert_eq!(addresses(&db, "prod", "web2"), ["base/c"]);
    assert!(
        addresses(&db, "staging", "web1").is_empty(),
        "per environment"
    );
    assert_eq!(db.managed("prod", "web1").expect("reads")[1], declared[1]);

    // The next commit no longer declares b: its removal converged on web1 (b leaves the
    // managed set); a removal that failed leaves its resource managed (retried next time).
    let run = db.begin_run(&new_run(RunKind::Apply)).expect("begins");
    let web1 = run_of(
        "web1",
        vec![
            outcome("base/a", StepStatus::InSync, false),
            outcome("base/b", StepStatus::Changed, true),
        ],
    );
    db.record_host(&run, &web1, &super::meta(), &declared[..1])
        .expect("records");
    let web2 = run_of("web2", vec![outcome("base/c", StepStatus::Failed, true)]);
    db.record_host(&run, &web2, &super::meta(), &[])
        .expect("records");
    db.finish_run(&run, RunResult::Failed, &json!({}))
        .expect("finishes");
    assert_eq!(addresses(&db, "prod", "web1"), ["base/a"]);
    assert_eq!(addresses(&db, "prod", "web2"), ["base/c"]);
    super::verify(&db).expect("the chain still verifies");
}

#[test]
fn a_corrupt_managed_row_is_an_error_naming_it() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).expect("opens");
    let run = db.begin_run(&new_run(RunKind::Apply)).expect("begins");
    let web1 = run_of("web1", vec![outcome("base/a", StepStatus::InSync, false)]);
    db.record_host(
        &run,
        &web1,
        &super::meta(),
        &[managed("base/a", "/etc/a", 0)],
    )
    .expect("records");
    db.conn()
        .execute(
            "UPDATE managed_resources SET prune = '{\"kind\": \"burn\"}'",
            [],
        )
        .expect("edits");
    let e = db.managed("prod", "web1").expect_err("corrupt");
    assert!(
        e.to_string().contains("managed_resources") && e.to_string().contains("base/a"),
        "{e}"
    );
}
