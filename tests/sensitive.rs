//! `sensitive: true` means sensitive everywhere: a command and a line whose text carries a
//! unique marker are rendered, planned, applied and drift-checked through the plumb binary
//! (`--connection local`, in a temp dir, text and JSON output, debug logs), and their
//! results recorded in the state database and its signed audit chain; the marker appears
//! in no output, no log line, no row and no audit record. (It does reach the files the
//! steps write: that proves the steps really ran.)

use std::path::{Path, PathBuf};
use std::process::Command;

use plumb::engine::{self, LocalConnector};
use plumb::report::plan::{ApplyReport, PlanReport};
use plumb::state::{NewRun, RunKind, RunResult, StateDb, StepMeta, Trigger};

const CMD_MARKER: &str = "CMDSECRET-7f3a9c";
const LINE_MARKER: &str = "LINESECRET-b41e22";

struct Repo {
    tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn repo() -> Repo {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("repo");
    let work = tmp.path().join("host");
    std::fs::create_dir_all(&work).expect("mkdir");
    write(
        &root.join("plumb.yaml"),
        "name: secrets\nenvironments: [test]\n",
    );
    write(
        &root.join("environments/test/hosts.yaml"),
        "hosts:\n  - name: local\n    address: 127.0.0.1\n",
    );
    let w = work.display();
    write(
        &root.join("units/secret.yaml"),
        &format!(
            r#"steps:
  - id: token-cmd
    sensitive: true
    command:
      run: "echo {CMD_MARKER} > {w}/cmd-out"
      creates: {w}/cmd-out
  - id: token-line
    sensitive: true
    line:
      path: {w}/app.conf
      line: "token={LINE_MARKER}"
      create: true
"#
        ),
    );
    Repo { tmp, root, work }
}

/// Runs plumb with debug logs; returns (exit code, stdout + stderr).
fn plumb(args: &[&str], repo: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(&args[..1])
        .arg(repo)
        .args(&args[1..])
        .args(["--env", "test", "--color", "never"])
        .env("RUST_LOG", "debug")
        .output()
        .expect("plumb runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn assert_hidden(what: &str, text: &str) {
    for marker in [CMD_MARKER, LINE_MARKER] {
        assert!(!text.contains(marker), "{what} shows {marker}:\n{text}");
    }
}

fn run_all(repo: &Repo, cmd: &str, extra: &[&str], expect: i32) {
    for output in ["text", "json"] {
        let mut args = vec![cmd];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--output", output]);
        let (code, text) = plumb(&args, &repo.root);
        assert_eq!(code, expect, "plumb {args:?}:\n{text}");
        assert_hidden(&format!("plumb {args:?}"), &text);
    }
}

#[test]
fn sensitive_steps_leak_through_no_command() {
    let r = repo();
    run_all(&r, "render", &["--show-content"], 0);
    run_all(&r, "plan", &["--connection", "local"], 2);
    run_all(&r, "apply", &["--connection", "local"], 0);
    // The steps ran: the marker is on the "host", and only there.
    let cmd_out = std::fs::read_to_string(r.work.join("cmd-out")).expect("cmd ran");
    assert!(cmd_out.contains(CMD_MARKER));
    // Drift: both steps differ again.
    std::fs::remove_file(r.work.join("cmd-out")).expect("rm");
    std::fs::write(r.work.join("app.conf"), "token=old\n").expect("write");
    run_all(&r, "drift", &["--connection", "local"], 2);
}

fn rendered(repo: &Repo) -> Vec<plumb::render::DesiredHost> {
    let (_, diags, hosts) = plumb::validate::validate_and_render(&repo.root, "test", None);
    assert!(!diags.has_errors(), "{diags:?}");
    hosts.expect("rendered")
}

/// What the daemon records: apply and drift-check results in the state database, each run
/// sealed in the signed audit chain. Read back as raw bytes (rows, WAL, audit records).
#[test]
fn sensitive_steps_leak_into_no_row_and_no_audit_record() {
    let r = repo();
    let state = r.tmp.path().join("state");
    let hosts = rendered(&r);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let connector = LocalConnector::default();
    let db = StateDb::open(&state).expect("state");

    let run = db
        .begin_run(&NewRun {
            environment: "test".into(),
            commit: None,
            signer: None,
            kind: RunKind::Apply,
            trigger: Trigger::Cli,
        })
        .expect("begin");
    let runs = rt.block_on(engine::apply_all(&hosts, &connector, 2));
    assert_eq!(runs[0].changed(), 2, "{:?}", runs[0].error);
    for (desired, host_run) in hosts.iter().zip(&runs) {
        // The managed resources too (prune): a sensitive line keeps no value there.
        let managed = plumb::prune::Managed::declared(desired);
        assert_eq!(managed.len(), 2);
        db.record_host(&run, host_run, &StepMeta::default(), &managed)
            .expect("record");
    }
    let summary = serde_json::to_value(ApplyReport::new("test", &runs)).expect("json");
    db.finish_run(&run, RunResult::Converged, &summary)
        .expect("finish");

    std::fs::remove_file(r.work.join("cmd-out")).expect("rm");
    std::fs::write(r.work.join("app.conf"), "token=old\n").expect("write");
    let drift = db
        .begin_run(&NewRun {
            environment: "test".into(),
            commit: None,
            signer: None,
            kind: RunKind::DriftCheck,
            trigger: Trigger::Drift,
        })
        .expect("begin");
    let plans = rt.block_on(engine::plan_all(&hosts, &connector, 2));
    assert_eq!(plans[0].changes(), 2);
    for p in &plans {
        db.record_drift_check(&drift, p, &plumb::state::StepMeta::default())
            .expect("record drift");
        // What a drift alert names.
        for s in &p.steps {
            assert_hidden("a drift alert's target", &s.step.target);
        }
    }
    let summary = serde_json::to_value(PlanReport::new("test", "drift", &plans)).expect("json");
    assert_hidden("the drift report", &summary.to_string());
    db.finish_run(&drift, RunResult::DriftFound, &summary)
        .expect("finish");
    drop(db);

    let mut seen = 0;
    for entry in std::fs::read_dir(&state).expect("state dir").flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert_hidden(&entry.path().display().to_string(), &text);
        seen += bytes.len();
    }
    assert!(seen > 0, "the state directory holds the records");
    let (code, text) = {
        let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["audit", "verify", "--output", "json", "--state"])
            .arg(&state)
            .output()
            .expect("plumb runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0, "{text}");
    assert_hidden("plumb audit verify", &text);
}
