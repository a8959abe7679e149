use std::time::Duration;

use serde_json::json;

use rusqlite::Connection;

use super::*;
use crate::audit::Anchor;
use crate::engine::{
    HostError, HostPlan, HostRun, HostStatus, RoundTrips, StepOutcome, StepPlan, StepRef,
    StepStatus,
};
use crate::model::yaml::Pos;
use crate::model::Host;
use crate::model::StepAddress;
use crate::modules::Change;
use crate::modules::ChangeKind;

pub(crate) fn host(name: &str) -> Host {
    Host {
        name: name.into(),
        address: "10.0.0.1".into(),
        port: 22,
        user: None,
        become_: false,
        labels: Default::default(),
        vars: Default::default(),
        path: "environments/prod/hosts.yaml".into(),
        pos: Pos::START,
    }
}

fn change(kind: ChangeKind, field: &str, from: &str, to: &str) -> Change {
    Change::new(kind).field(
        field.parse().expect("a known field"),
        Some(from.into()),
        Some(to.into()),
    )
}

pub(crate) fn sref(address: &str, target: &str) -> StepRef {
    StepRef {
        address: StepAddress::parse(address).expect("unit/id"),
        module: "file",
        target: target.into(),
        sensitive: false,
        secrets: Vec::new(),
        removing: false,
    }
}

pub(crate) fn host_run(name: &str, changed: usize, status: HostStatus) -> HostRun {
    let mut steps: Vec<StepOutcome> = (0..changed)
        .map(|i| StepOutcome {
            step: sref(&format!("base/step{i}"), "/etc/x"),
            status: StepStatus::Changed,
            change: Some(change(ChangeKind::Modify, "mode", "0644", "0600")),
            error: None,
            duration_ms: 3,
        })
        .collect();
    steps.push(StepOutcome {
        step: sref("base/insync", "/etc/y"),
        status: StepStatus::InSync,
        change: None,
        error: None,
        duration_ms: 0,
    });
    HostRun {
        host: host(name),
        facts: None,
        status,
        error: (status != HostStatus::Converged).then(|| "step base/step0 failed".to_string()),
        steps,
        handlers: Vec::new(),
        round_trips: RoundTrips {
            probe: 1,
            apply: 1,
            facts: 0,
        },
        duration: Duration::from_millis(42),
    }
}

pub(crate) fn meta() -> StepMeta {
    StepMeta::default()
}

pub(crate) fn new_run(kind: RunKind) -> NewRun {
    NewRun {
        environment: "prod".into(),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        signer: Some(Signer {
            principal: "alice@example.com".into(),
            fingerprint: "SHA256:abc".into(),
        }),
        kind,
        trigger: Trigger::Push,
    }
}

pub(crate) fn plan(name: &str, drifted: &[&str]) -> HostPlan {
    let mut steps: Vec<StepPlan> = drifted
        .iter()
        .map(|a| StepPlan {
            step: sref(a, "/etc/x"),
            change: Ok(change(ChangeKind::Modify, "mode", "0600", "0644")),
        })
        .collect();
    steps.push(StepPlan {
        step: sref("base/ok", "/etc/y"),
        change: Ok(Change::in_sync()),
    });
    HostPlan {
        host: host(name),
        facts: None,
        steps,
        error: None,
        round_trips: RoundTrips {
            probe: 1,
            ..RoundTrips::default()
        },
        duration: Duration::from_millis(5),
    }
}

pub(crate) fn verify(db: &StateDb) -> Result<crate::audit::VerifiedChain, StateError> {
    let key = db.daemon_key().map(|k| k.verifying_key());
    db.verify_chain(&key.expect("daemon handle"), &Anchor::default())
}

#[test]
fn run_round_trip() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    assert_eq!(id.0.len(), 26);
    db.record_host(
        &id,
        &host_run("web1", 2, HostStatus::Converged),
        &meta(),
        &[],
    )
    .unwrap();
    db.record_host(&id, &host_run("web2", 1, HostStatus::Failed), &meta(), &[])
        .unwrap();
    let running = db.runs(&RunFilter::default()).unwrap();
    assert_eq!(running[0].result, RunResult::Running);
    db.finish_run(&id, RunResult::Failed, &json!({"failed_wave": 1}))
        .unwrap();

    let runs = db.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r.result, RunResult::Failed);
    assert_eq!(r.kind, RunKind::Apply);
    assert_eq!((r.hosts, r.failed_hosts, r.changes, r.drift), (2, 1, 3, 0));
    assert_eq!(r.signer.as_ref().unwrap().principal, "alice@example.com");
    assert_eq!(r.chain_seq, Some(1));
    assert!(r.finished_at.unwrap() >= r.started_at);
    assert_eq!(r.summary, json!({"failed_wave": 1}));

    let d = db.run(&id).unwrap().unwrap();
    assert_eq!(d.hosts.len(), 2);
    assert_eq!(d.hosts[0].host, "web1");
    assert_eq!(d.hosts[0].in_sync, 1);
    assert_eq!(d.hosts[0].steps.len(), 2, "in-sync steps get no row");
    assert_eq!(d.hosts[0].steps[0].module, "file");
    assert_eq!(d.hosts[0].steps[0].fields[0].to.as_deref(), Some("0600"));
    assert!(!d.hosts[0].steps[0].drift);
    assert!(db.run(&RunId("nope".into())).unwrap().is_none());

    // Signed records are final.
    let again = db.finish_run(&id, RunResult::Converged, &json!({}));
    assert_eq!(again.unwrap_err().code(), "state.already_finished");
    let late = db.record_host(
        &id,
        &host_run("web3", 0, HostStatus::Converged),
        &meta(),
        &[],
    );
    assert_eq!(late.unwrap_err().code(), "state.already_finished");
    assert_eq!(verify(&db).unwrap().records, 1);
}

#[test]
fn filters_and_order() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for (env, kind) in [
        ("prod", RunKind::Apply),
        ("staging", RunKind::Apply),
        ("prod", RunKind::DriftCheck),
    ] {
        let id = db
            .begin_run(&NewRun {
                environment: env.into(),
                ..new_run(kind)
            })
            .unwrap();
        db.finish_run(&id, RunResult::NoChange, &json!({})).unwrap();
        ids.push(id);
        std::thread::sleep(Duration::from_millis(3));
    }
    let all = db.runs(&RunFilter::default()).unwrap();
    let got: Vec<&RunId> = all.iter().map(|r| &r.id).collect();
    assert_eq!(got, vec![&ids[2], &ids[1], &ids[0]], "newest first");
    let prod = db
        .runs(&RunFilter {
            environment: Some("prod".into()),
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(prod.len(), 2);
    let one = db
        .runs(&RunFilter {
            limit: Some(1),
            kind: Some(RunKind::Apply),
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, ids[1]);
}

#[test]
fn unfinished_run_is_interrupted_after_reopening() {
    let dir = private_tmp();
    let id = {
        let db = StateDb::open(dir.path()).unwrap();
        let done = db.begin_run(&new_run(RunKind::Apply)).unwrap();
        db.finish_run(&done, RunResult::Converged, &json!({}))
            .unwrap();
        let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
        db.record_host(
            &id,
            &host_run("web1", 1, HostStatus::Converged),
            &meta(),
            &[],
        )
        .unwrap();
        // While the daemon lives, an inspector sees it running.
        let inspect = StateDb::open_inspect(dir.path()).unwrap();
        assert_eq!(
            inspect.runs(&RunFilter::default()).unwrap()[0].result,
            RunResult::Running
        );
        id
        // dropped without finish_run: the daemon was killed
    };
    // Before a daemon restarts, an inspector already calls it interrupted.
    let inspect = StateDb::open_inspect(dir.path()).unwrap();
    assert_eq!(
        inspect.run(&id).unwrap().unwrap().run.result,
        RunResult::Interrupted
    );
    let db = StateDb::open(dir.path()).unwrap();
    let d = db.run(&id).unwrap().unwrap();
    assert_eq!(d.run.result, RunResult::Interrupted);
    assert!(d.run.finished_at.is_some());
    assert_eq!(
        d.hosts.len(),
        1,
        "results recorded before the kill are kept"
    );
    assert_eq!(d.hosts[0].steps.len(), 1);
    assert_eq!(d.run.chain_seq, Some(2), "interrupted runs are signed too");
    assert_eq!(verify(&db).unwrap().records, 2);
    assert_eq!(db.runs(&RunFilter::default()).unwrap().len(), 2);
}

#[test]
fn one_daemon_per_state_dir() {
    let dir = private_tmp();
    let _db = StateDb::open(dir.path()).unwrap();
    let err = StateDb::open(dir.path()).unwrap_err();
    assert_eq!(err.code(), "state.locked");
    let msg = err.to_string();
    assert!(msg.contains("locked by another plumb daemon"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains("plumb.db"), "{msg}");
}

#[test]
fn inspect_handles_do_not_write() {
    let dir = private_tmp();
    let missing = StateDb::open_inspect(dir.path()).unwrap_err();
    assert_eq!(missing.code(), "state.not_found");
    drop(StateDb::open(dir.path()).unwrap());
    let db = StateDb::open_inspect(dir.path()).unwrap();
    let err = db.begin_run(&new_run(RunKind::Apply)).unwrap_err();
    assert_eq!(err.code(), "state.read_only");
    assert!(db.daemon_key().is_none());
}

#[test]
fn finish_rejects_running() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    let err = db
        .finish_run(&id, RunResult::Running, &json!({}))
        .unwrap_err();
    assert_eq!(err.code(), "state.invalid_result");
    let err = db
        .finish_run(&RunId("missing".into()), RunResult::Converged, &json!({}))
        .unwrap_err();
    assert_eq!(err.code(), "state.no_such_run");
}

#[test]
fn last_applied_and_failed_commits() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    assert!(db.last_applied("prod").unwrap().is_none());
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.set_last_applied("prod", "aaa", &id).unwrap();
    db.set_last_applied("prod", "bbb", &id).unwrap();
    let la = db.last_applied("prod").unwrap().unwrap();
    assert_eq!((la.commit.as_str(), la.run_id.as_ref()), ("bbb", Some(&id)));
    assert!(db.last_applied("staging").unwrap().is_none());

    assert!(!db.is_failed("prod", "ccc").unwrap());
    db.mark_failed("prod", "ccc", Some(&id)).unwrap();
    db.mark_failed("prod", "ccc", None).unwrap();
    assert!(db.is_failed("prod", "ccc").unwrap());
    assert!(!db.is_failed("staging", "ccc").unwrap());
}

#[test]
fn drift_findings_open_refresh_resolve() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let r1 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r1, &plan("web1", &["base/a", "base/b"]), &meta())
        .unwrap();
    db.finish_run(&r1, RunResult::DriftFound, &json!({}))
        .unwrap();
    let open = db.open_drift("prod").unwrap();
    assert_eq!(open.len(), 2);
    assert_eq!(open[0].address, "base/a");
    assert_eq!(open[0].change, ChangeKind::Modify);
    assert_eq!(open[0].fields[0].field, "mode");
    let rec = &db.runs(&RunFilter::default()).unwrap()[0];
    assert_eq!((rec.changes, rec.drift), (2, 2));
    assert!(db.run(&r1).unwrap().unwrap().hosts[0].steps[0].drift);

    std::thread::sleep(Duration::from_millis(3));
    let r2 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r2, &plan("web1", &["base/a"]), &meta())
        .unwrap();
    let open2 = db.open_drift("prod").unwrap();
    assert_eq!(open2.len(), 1, "base/b is back in sync");
    assert_eq!(open2[0].id, open[0].id, "the same finding is refreshed");
    assert_eq!(open2[0].first_seen, open[0].first_seen);
    assert!(open2[0].last_seen > open[0].last_seen);
    assert_eq!(open2[0].run_id.as_ref(), Some(&r2));

    // An unreachable host resolves nothing.
    let mut down = plan("web1", &[]);
    down.steps.clear();
    down.error = Some(HostError::Script("boom".into()));
    let r3 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r3, &down, &meta()).unwrap();
    assert_eq!(db.open_drift("prod").unwrap().len(), 1);

    // A converged correction resolves the host's findings.
    let r4 = db.begin_run(&new_run(RunKind::Correction)).unwrap();
    db.record_host(
        &r4,
        &host_run("web1", 1, HostStatus::Converged),
        &meta(),
        &[],
    )
    .unwrap();
    assert!(db.open_drift("prod").unwrap().is_empty());
    let d = db.run(&r4).unwrap().unwrap();
    assert!(d.hosts[0].steps[0].drift, "corrections are drift");

    // Explicit API.
    let f = db
        .upsert_drift(&r4, "prod", "web2", "base/x", ChangeKind::Create, &[])
        .unwrap();
    assert_eq!(
        db.upsert_drift(&r4, "prod", "web2", "base/x", ChangeKind::Modify, &[])
            .unwrap(),
        f
    );
    assert_eq!(db.open_drift("prod").unwrap()[0].change, ChangeKind::Modify);
    assert!(db.resolve_drift(&r4, "prod", "web2", "base/x").unwrap());
    assert!(!db.resolve_drift(&r4, "prod", "web2", "base/x").unwrap());
    // A new finding for the same resource after resolution is a new row.
    let g = db
        .upsert_drift(&r4, "prod", "web2", "base/x", ChangeKind::Create, &[])
        .unwrap();
    assert_ne!(f, g);
}

/// The engine redacts sensitive steps in the results it returns (`StepRef::redact`, its one
/// redaction point); the database redacts a sensitive step's fields again, whatever hands
/// it a result.
#[test]
fn sensitive_steps_are_stored_redacted() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    let mut run = host_run("web1", 2, HostStatus::Converged);
    // step0 as the engine hands it over (redacted), step1 marked sensitive only.
    for s in run.steps.iter_mut().filter(|s| s.change.is_some()) {
        s.step.sensitive = true;
    }
    let redacted = run.steps[0]
        .step
        .redact(run.steps[0].change.as_ref().unwrap());
    run.steps[0].change = Some(redacted);
    db.record_host(&id, &run, &meta(), &[]).unwrap();
    let d = db.run(&id).unwrap().unwrap();
    for s in &d.hosts[0].steps {
        assert_eq!(
            s.fields[0].to.as_deref(),
            Some("(sensitive)"),
            "{}",
            s.address
        );
    }
    let mut plan = plan("web1", &["base/secret"]);
    plan.steps[0].step.sensitive = true;
    let r = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r, &plan, &meta()).unwrap();
    assert_eq!(
        db.open_drift("prod").unwrap()[0].fields[0].from.as_deref(),
        Some("(sensitive)")
    );
}

#[test]
fn apply_can_mark_drift() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    let mut m = meta();
    m.mark_drift("base/step1");
    db.record_host(&id, &host_run("web1", 2, HostStatus::Converged), &m, &[])
        .unwrap();
    let d = db.run(&id).unwrap().unwrap();
    let drift: Vec<bool> = d.hosts[0].steps.iter().map(|s| s.drift).collect();
    assert_eq!(drift, vec![false, true]);
}

#[test]
fn migrates_an_old_database() {
    let dir = private_tmp();
    let path = dir.path().join(DB_FILE);
    {
        let mut c = Connection::open(&path).unwrap();
        schema::migrate_to(&mut c, 1, &path).unwrap();
        assert_eq!(schema::user_version(&c).unwrap(), 1);
        c.execute(
            "INSERT INTO runs (id, environment, kind, trigger, started_at, finished_at, result)
             VALUES ('OLD', 'prod', 'apply', 'cli', 1, 2, 'converged')",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO last_applied VALUES ('prod', 'abc', 'OLD', 2)",
            [],
        )
        .unwrap();
    }
    private_file(&path);
    let db = StateDb::open(dir.path()).unwrap();
    assert_eq!(schema::user_version(db.conn()).unwrap(), SCHEMA_VERSION);
    let runs = db.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].result, RunResult::Converged);
    assert_eq!(runs[0].chain_seq, None);
    assert_eq!(db.last_applied("prod").unwrap().unwrap().commit, "abc");
    assert!(db.open_drift("prod").unwrap().is_empty(), "v2 table exists");
    drop(db);
    // Idempotent: opening again changes nothing.
    let db = StateDb::open(dir.path()).unwrap();
    assert_eq!(schema::user_version(db.conn()).unwrap(), SCHEMA_VERSION);
    assert_eq!(db.runs(&RunFilter::default()).unwrap().len(), 1);
}

#[test]
fn refuses_a_newer_schema() {
    let dir = private_tmp();
    {
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    private_file(&dir.path().join(DB_FILE));
    let err = StateDb::open(dir.path()).unwrap_err();
    assert_eq!(err.code(), "state.newer_schema");
    assert!(err.to_string().contains("upgrade plumb"), "{err}");
}

#[test]
fn wal_and_pragmas() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let c = db.conn();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = c
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    let timeout: i64 = c
        .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
        .unwrap();
    assert_eq!(timeout, BUSY_TIMEOUT.as_millis() as i64);
}

#[test]
fn concurrent_handles_read_and_write() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let per_thread = 25;
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let h = db.handle().unwrap();
                s.spawn(move || {
                    for i in 0..per_thread {
                        let id = h.begin_run(&new_run(RunKind::Apply)).unwrap();
                        h.record_host(
                            &id,
                            &host_run(&format!("h{t}-{i}"), 1, HostStatus::Converged),
                            &meta(),
                            &[],
                        )
                        .unwrap();
                        h.finish_run(&id, RunResult::Converged, &json!({ "t": t }))
                            .unwrap();
                    }
                })
            })
            .collect();
        let dir = dir.path().to_path_buf();
        let reader = s.spawn(move || {
            let r = StateDb::open_inspect(&dir).unwrap();
            let mut seen = 0;
            for _ in 0..50 {
                seen = r.runs(&RunFilter::default()).unwrap().len();
                r.audit_head().unwrap();
            }
            seen
        });
        for w in writers {
            w.join().unwrap();
        }
        assert!(reader.join().unwrap() <= 2 * per_thread);
    });
    assert_eq!(
        db.runs(&RunFilter::default()).unwrap().len(),
        2 * per_thread
    );
    // Finishing from two connections at once never forks the chain.
    assert_eq!(verify(&db).unwrap().records, 2 * per_thread);
}

#[test]
fn run_ids_sort_by_time() {
    let a = RunId::generate(1_000);
    let b = RunId::generate(2_000);
    assert!(a < b);
    assert_ne!(RunId::generate(5), RunId::generate(5));
    assert!(a.0.chars().all(|c| c.is_ascii_alphanumeric()));
}

mod attribution;
mod chain;
mod console;
mod corrupt;
mod lease;
mod managed;
mod oncall;
mod private;

/// A temporary state directory, private (0700) as `StateDb` requires: `tempfile` creates
/// directories through the umask.
pub(crate) fn private_tmp() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A database file made by hand (through the umask) set private, as plumb creates them.
fn private_file(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn v3_rebuild_of_runs_keeps_results_and_chain() {
    let dir = private_tmp();
    let path = dir.path().join(DB_FILE);
    {
        let mut c = Connection::open(&path).unwrap();
        schema::migrate_to(&mut c, 2, &path).unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             INSERT INTO runs (id, environment, kind, trigger, started_at)
                VALUES ('OPEN', 'prod', 'apply', 'cli', 1);
             INSERT INTO host_results (run_id, host, status, changed, in_sync, duration_ms,
                round_trips) VALUES ('OPEN', 'web1', 'converged', 1, 0, 5, '{\"probe\":1}');
             INSERT INTO step_results (run_id, host, address, module, status, change_kind,
                fields, duration_ms) VALUES ('OPEN', 'web1', 'base/a', 'file', 'changed',
                'modify', '[]', 3);
             INSERT INTO drift_findings (environment, host, address, change_kind, first_seen,
                last_seen, run_id, first_run_id) VALUES ('prod', 'web1', 'base/a', 'modify',
                1, 1, 'OPEN', 'OPEN');",
        )
        .unwrap();
    }
    private_file(&path);
    let db = StateDb::open(dir.path()).unwrap();
    assert_eq!(schema::user_version(db.conn()).unwrap(), SCHEMA_VERSION);
    let fk: i64 = db
        .conn()
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1, "foreign keys are back on after the rebuild");
    // Dropping the old table cascaded nothing: results and findings are all there.
    let d = db.run(&RunId("OPEN".into())).unwrap().unwrap();
    assert_eq!(d.run.result, RunResult::Interrupted);
    assert_eq!(d.hosts[0].steps[0].address, "base/a");
    assert_eq!(
        db.open_drift("prod").unwrap()[0].run_id,
        Some(RunId("OPEN".into()))
    );
    assert_eq!(verify(&db).unwrap().records, 1);
    // The new kind is accepted, and the chain indexes still hold.
    let reset = db
        .begin_run(&NewRun {
            kind: RunKind::StateReset,
            ..new_run(RunKind::Apply)
        })
        .unwrap();
    db.finish_run(&reset, RunResult::NoChange, &json!({}))
        .unwrap();
    assert_eq!(db.audit_head().unwrap().unwrap().seq, 2);
    let dup = db
        .conn()
        .execute("UPDATE runs SET chain_seq = 1 WHERE id = ?1", [&reset.0]);
    assert!(dup.is_err(), "runs_by_chain is unique again");
}

#[test]
fn last_good_per_host_and_one_rollback_per_commit_and_host() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    assert!(db.last_good("prod").unwrap().is_empty());
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.set_last_good("prod", &["web1".into(), "web2".into()], "aaa", &id)
        .unwrap();
    db.set_last_good("prod", &["web1".into()], "bbb", &id)
        .unwrap();
    let good = db.last_good("prod").unwrap();
    let commits: Vec<(&str, &str)> = good
        .values()
        .map(|g| (g.host.as_str(), g.commit.as_str()))
        .collect();
    assert_eq!(commits, [("web1", "bbb"), ("web2", "aaa")]);
    assert!(db.last_good("staging").unwrap().is_empty());

    // v4 accepts the `rollback` kind; a (commit, host) is rolled back at most once.
    let rb = db.begin_run(&new_run(RunKind::Rollback)).unwrap();
    assert!(!db.rolled_back("prod", "ccc", "web1").unwrap());
    db.record_rollback("prod", "ccc", &["web1".into()], "bbb", &rb)
        .unwrap();
    assert!(db.rolled_back("prod", "ccc", "web1").unwrap());
    assert!(!db.rolled_back("prod", "ccc", "web2").unwrap());
    assert!(db
        .record_rollback("prod", "ccc", &["web1".into()], "bbb", &rb)
        .is_err());
    db.finish_run(&rb, RunResult::Converged, &json!({"rollback_of": "ccc"}))
        .unwrap();
    assert_eq!(verify(&db).unwrap().records, 1);
}

/// Each `plumb history` / `/api/runs` filter narrows to exactly the runs it names.
#[test]
fn run_filters_select_by_host_commit_signer_kind_result_and_time() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let bob = Signer {
        principal: "bob@example.com".into(),
        fingerprint: "SHA256:bob".into(),
    };
    // a: apply by alice on web1, converged; b: apply by bob of another commit on web2,
    // failed; c: a drift check of web1, still running.
    let a = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.record_host(
        &a,
        &host_run("web1", 1, HostStatus::Converged),
        &meta(),
        &[],
    )
    .unwrap();
    db.finish_run(&a, RunResult::Converged, &json!({})).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let between = now_ms();
    std::thread::sleep(Duration::from_millis(5));
    let b = db
        .begin_run(&NewRun {
            commit: Some("fedcba9876543210fedcba9876543210fedcba98".into()),
            signer: Some(bob),
            ..new_run(RunKind::Apply)
        })
        .unwrap();
    db.record_host(&b, &host_run("web2", 1, HostStatus::Failed), &meta(), &[])
        .unwrap();
    db.finish_run(&b, RunResult::Failed, &json!({})).unwrap();
    let c = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&c, &plan("web1", &[]), &meta())
        .unwrap();

    let ids =
        |f: RunFilter| -> Vec<RunId> { db.runs(&f).unwrap().into_iter().map(|r| r.id).collect() };
    let t = |ms| Some(filter::TimeBound(ms));
    let commit = |p: &str| Some(filter::CommitPrefix::parse(p).unwrap());
    let f = RunFilter::default;
    assert_eq!(ids(f()), vec![c.clone(), b.clone(), a.clone()]);
    let host = |h: &str| RunFilter {
        host: Some(h.into()),
        ..f()
    };
    assert_eq!(ids(host("web1")), vec![c.clone(), a.clone()]);
    assert_eq!(ids(host("web2")), vec![b.clone()]);
    assert_eq!(ids(host("web")), Vec::<RunId>::new(), "hosts match whole");
    let by_commit = |p: &str| RunFilter {
        commit: commit(p),
        ..f()
    };
    assert_eq!(ids(by_commit("FEDC")), vec![b.clone()]);
    assert_eq!(ids(by_commit("01234567")), vec![c.clone(), a.clone()]);
    let signer = |s: &str| RunFilter {
        signer: Some(s.into()),
        ..f()
    };
    assert_eq!(ids(signer("bob@example.com")), vec![b.clone()]);
    assert_eq!(ids(signer("SHA256:bob")), vec![b.clone()]);
    assert_eq!(ids(signer("bob")), Vec::<RunId>::new());
    let kind = RunFilter {
        kind: Some(RunKind::DriftCheck),
        ..f()
    };
    assert_eq!(ids(kind), vec![c.clone()]);
    let result = |r| RunFilter {
        result: Some(r),
        ..f()
    };
    assert_eq!(ids(result(RunResult::Failed)), vec![b.clone()]);
    assert_eq!(ids(result(RunResult::Running)), vec![c.clone()]);
    let since = RunFilter {
        since: t(between),
        ..f()
    };
    assert_eq!(ids(since), vec![c.clone(), b.clone()]);
    let until = RunFilter {
        until: t(between),
        ..f()
    };
    assert_eq!(ids(until), vec![a.clone()]);
    let all = RunFilter {
        host: Some("web1".into()),
        kind: Some(RunKind::Apply),
        signer: Some("alice@example.com".into()),
        ..f()
    };
    assert_eq!(ids(all), vec![a]);
}

/// `plumb drift-history` / `/api/drift` list resolved findings with the run that resolved them.
#[test]
fn drift_history_lists_open_and_resolved_findings() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let r1 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r1, &plan("web1", &["base/a", "base/b"]), &meta())
        .unwrap();
    db.record_drift_check(&r1, &plan("web2", &["base/a"]), &meta())
        .unwrap();
    db.finish_run(&r1, RunResult::DriftFound, &json!({}))
        .unwrap();
    let r2 = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    db.record_drift_check(&r2, &plan("web1", &["base/a"]), &meta())
        .unwrap();
    db.finish_run(&r2, RunResult::DriftFound, &json!({}))
        .unwrap();

    let list = |status, host: Option<&str>| {
        db.drift_history(&DriftFilter {
            status,
            host: host.map(str::to_string),
            ..DriftFilter::default()
        })
        .unwrap()
    };
    let all = list(DriftState::All, None);
    assert_eq!(all.len(), 3);
    let resolved = list(DriftState::Resolved, None);
    assert_eq!(resolved.len(), 1);
    assert_eq!(
        (resolved[0].host.as_str(), resolved[0].address.as_str()),
        ("web1", "base/b")
    );
    assert_eq!(resolved[0].resolved_run_id.as_ref(), Some(&r2));
    assert_eq!(resolved[0].first_run_id.as_ref(), Some(&r1));
    assert!(resolved[0].resolved_at.is_some());
    assert_eq!(list(DriftState::Open, None).len(), 2);
    assert_eq!(list(DriftState::All, Some("web2")).len(), 1);
    let later = db
        .drift_history(&DriftFilter {
            since: Some(filter::TimeBound(now_ms() + 1)),
            ..DriftFilter::default()
        })
        .unwrap();
    assert_eq!(
        later.len(),
        2,
        "resolved before `since`: left out; open: kept"
    );
}

/// v5 dropped the CHECK constraints on `runs.kind`, `trigger` and `result`: the Rust enums
/// are the one check. A value plumb does not know is an error naming the state, not a panic
/// and not a silently wrong row.
#[test]
fn runs_kinds_are_checked_by_the_enums() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let id = db.begin_run(&new_run(RunKind::Rollback)).unwrap();
    db.finish_run(&id, RunResult::Converged, &json!({}))
        .unwrap();
    assert_eq!(
        db.runs(&RunFilter::default()).unwrap()[0].kind,
        RunKind::Rollback
    );
    db.conn()
        .execute(
            "INSERT INTO runs (id, environment, kind, trigger, started_at)
             VALUES ('ZZZ', 'prod', 'from_the_future', 'cli', 1)",
            [],
        )
        .unwrap();
    let err = db.runs(&RunFilter::default()).unwrap_err();
    assert_eq!(err.code(), "state.corrupt", "{err}");
}

/// Pins (v6): set, listed per environment, replaced, released; the commits a pin may go back
/// to are those that converged on a host; `pin` and `unpin` runs are signed like any run.
#[test]
fn pins_are_kept_until_released_and_only_applied_commits_qualify() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let apply = |commit: &str, status: HostStatus, result: RunResult| {
        let mut new = new_run(RunKind::Apply);
        new.commit = Some(commit.into());
        let id = db.begin_run(&new).unwrap();
        db.record_host(&id, &host_run("web1", 1, status), &StepMeta::default(), &[])
            .unwrap();
        db.finish_run(&id, result, &json!({})).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    };
    apply("aaa", HostStatus::Converged, RunResult::Converged);
    apply("bbb", HostStatus::Converged, RunResult::Converged);
    apply("ccc", HostStatus::Failed, RunResult::Failed);
    assert_eq!(
        db.applied_commits("prod").unwrap(),
        vec![
            ("ccc".to_string(), false),
            ("bbb".to_string(), true),
            ("aaa".to_string(), true)
        ]
    );
    assert!(db.was_applied("prod", "aaa").unwrap());
    assert!(
        !db.was_applied("prod", "ccc").unwrap(),
        "it never converged"
    );
    assert!(!db.was_applied("staging", "aaa").unwrap());

    let pin = db.begin_run(&new_run(RunKind::Pin)).unwrap();
    db.set_pins(
        "prod",
        &["web1".into(), "web2".into()],
        "aaa",
        Some("ccc"),
        &pin,
    )
    .unwrap();
    db.set_pins("prod", &["web2".into()], "bbb", Some("ccc"), &pin)
        .unwrap();
    db.finish_run(&pin, RunResult::Converged, &json!({}))
        .unwrap();
    let pins = db.pins(Some("prod")).unwrap();
    let got: Vec<(&str, &str)> = pins
        .iter()
        .map(|p| (p.host.as_str(), p.commit.as_str()))
        .collect();
    assert_eq!(got, [("web1", "aaa"), ("web2", "bbb")]);
    assert_eq!(pins[0].bad_commit.as_deref(), Some("ccc"));
    assert!(db.pins(Some("staging")).unwrap().is_empty());
    assert_eq!(db.pins(None).unwrap().len(), 2);

    let unpin = db.begin_run(&new_run(RunKind::Unpin)).unwrap();
    assert_eq!(
        db.remove_pins("prod", &["web1".into(), "web9".into()])
            .unwrap(),
        vec!["web1".to_string()]
    );
    db.finish_run(&unpin, RunResult::Converged, &json!({}))
        .unwrap();
    assert_eq!(db.pins(Some("prod")).unwrap().len(), 1);
    assert_eq!(verify(&db).unwrap().records, 5);
}

/// Regression (issue 19, point 11): a rollout whose health checks failed on a host that
/// converged listed the host as `converged` and counted `failed_hosts: 0`. The host is now
/// `unhealthy` (naming the checks), counted as failed, in the signed record too; and a drift
/// check's host that could not be observed is `unknown`, counted as failed, never in sync.
#[test]
fn unhealthy_and_unknown_hosts_count_as_failed() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.record_host(
        &id,
        &host_run("web1", 1, HostStatus::Converged),
        &meta(),
        &[],
    )
    .unwrap();
    db.record_host(
        &id,
        &host_run("web2", 1, HostStatus::Converged),
        &meta(),
        &[],
    )
    .unwrap();
    db.mark_unhealthy(&id, "web1", "health check `http-up` failed")
        .unwrap();
    db.finish_run(&id, RunResult::Failed, &json!({"failed_hosts": ["web1"]}))
        .unwrap();
    let r = &db.runs(&RunFilter::default()).unwrap()[0];
    assert_eq!((r.hosts, r.failed_hosts), (2, 1));
    let d = db.run(&id).unwrap().unwrap();
    assert_eq!(d.hosts[0].status, HostResultStatus::Unhealthy);
    assert_eq!(
        d.hosts[0].error.as_deref(),
        Some("health check `http-up` failed")
    );
    assert_eq!(d.hosts[1].status, HostResultStatus::Converged);
    assert_eq!(
        db.mark_unhealthy(&id, "web2", "late").unwrap_err().code(),
        "state.already_finished"
    );
    assert_eq!(verify(&db).unwrap().records, 1, "the signed record holds");

    let check = db.begin_run(&new_run(RunKind::DriftCheck)).unwrap();
    let mut gone = plan("web1", &[]);
    gone.error = Some(HostError::Script("connection lost".into()));
    db.record_drift_check(&check, &gone, &meta()).unwrap();
    db.finish_run(&check, RunResult::NoChange, &json!({}))
        .unwrap();
    let d = db.run(&check).unwrap().unwrap();
    assert_eq!(d.hosts[0].status, HostResultStatus::Unknown);
    let r = db
        .runs(&RunFilter {
            kind: Some(RunKind::DriftCheck),
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(r[0].failed_hosts, 1);
}
