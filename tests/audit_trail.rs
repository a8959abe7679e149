//! The audit trail end to end: runs written through the library, checked and tampered with
//! through plain SQL, verified by the `plumb` binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use plumb::engine::{HostRun, HostStatus, RoundTrips, StepOutcome, StepRef, StepStatus};
use plumb::model::yaml::Pos;
use plumb::model::Host;
use plumb::model::StepAddress;
use plumb::modules::{Change, ChangeKind};
use plumb::state::{NewRun, RunKind, RunResult, Signer, StateDb, StepMeta, Trigger};
use serde_json::{json, Value};

fn host_run(name: &str, changed: usize) -> HostRun {
    HostRun {
        facts: None,
        host: Host {
            name: name.into(),
            address: "192.0.2.10".into(),
            port: 22,
            user: None,
            become_: false,
            labels: Default::default(),
            vars: Default::default(),
            path: "environments/prod/hosts.yaml".into(),
            pos: Pos::START,
        },
        status: HostStatus::Converged,
        error: None,
        steps: (0..changed)
            .map(|i| StepOutcome {
                step: StepRef {
                    address: StepAddress::new("base", format!("motd{i}")),
                    module: "file",
                    target: "/etc/motd".into(),
                    sensitive: false,
                    secrets: Vec::new(),
                    removing: false,
                },
                status: StepStatus::Changed,
                change: Some(Change::new(ChangeKind::Modify).field(
                    plumb::modules::Field::Content,
                    Some("old".into()),
                    Some("new".into()),
                )),
                error: None,
                duration_ms: 7,
            })
            .collect(),
        handlers: Vec::new(),
        round_trips: RoundTrips {
            probe: 1,
            apply: 1,
            verify: 1,
            facts: 0,
        },
        duration: Duration::from_millis(30),
    }
}

/// Five finished runs of different kinds; returns their ids, oldest first.
fn write_runs(dir: &Path) -> Vec<String> {
    let db = StateDb::open(dir).expect("open state");
    let meta = StepMeta::default();
    let runs = [
        (RunKind::Apply, Trigger::Push, RunResult::Converged, 2),
        (RunKind::DriftCheck, Trigger::Drift, RunResult::NoChange, 0),
        (RunKind::Correction, Trigger::Drift, RunResult::Converged, 1),
        (RunKind::Refused, Trigger::Webhook, RunResult::Refused, 0),
        (RunKind::Apply, Trigger::Poll, RunResult::Converged, 3),
    ];
    let mut ids = Vec::new();
    for (i, (kind, trigger, result, changed)) in runs.into_iter().enumerate() {
        let id = db
            .begin_run(&NewRun {
                environment: "prod".into(),
                commit: Some(format!("{i}{}", "a".repeat(39))),
                signer: Some(Signer {
                    principal: "alice@example.com".into(),
                    fingerprint: "SHA256:alicekey".into(),
                }),
                kind,
                trigger,
            })
            .expect("begin");
        if kind != RunKind::Refused {
            for h in ["web1", "web2"] {
                db.record_host(&id, &host_run(h, changed), &meta, &[])
                    .expect("record host");
            }
        }
        db.finish_run(&id, result, &json!({ "n": i }))
            .expect("finish");
        ids.push(id.0);
        std::thread::sleep(Duration::from_millis(2));
    }
    ids
}

/// A temporary state directory, private (0700) as plumb requires: `tempfile` creates
/// directories through the umask.
fn private_tmp() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    dir
}

fn plumb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .env_remove("PLUMB_STATE_DIR")
        .output()
        .expect("run plumb")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sql(dir: &Path, statement: &str, id: &str) {
    let c = rusqlite::Connection::open(dir.join("plumb.db")).expect("open db");
    let n = c.execute(statement, [id]).expect("tamper");
    assert_eq!(n, 1, "{statement} changed {n} rows");
}

/// `plumb audit verify` exits 1 naming `bad` as broken with `reason`; the only other run it
/// may mention is `context` (the record before a gap).
fn assert_broken_at(
    dir: &Path,
    ids: &[String],
    bad: &str,
    seq: usize,
    reason: &str,
    context: Option<&str>,
) {
    let state = dir.to_str().expect("utf-8 path");
    let o = plumb(&["audit", "verify", "--state", state]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("broken at run {bad} (record #{seq})")),
        "{out}"
    );
    assert!(out.contains(reason), "{out}");
    assert_eq!(out.matches("broken at run").count(), 1, "{out}");
    for other in ids
        .iter()
        .filter(|i| i.as_str() != bad && Some(i.as_str()) != context)
    {
        assert!(!out.contains(other.as_str()), "names {other} too: {out}");
    }
    let o = plumb(&["audit", "verify", "--state", state, "--output", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["broken"]["run_id"], bad);
    assert_eq!(v["records"], seq - 1);
}

#[test]
fn intact_chain_verifies_with_the_daemon_public_key() {
    let dir = private_tmp();
    let ids = write_runs(dir.path());
    let state = dir.path().to_str().unwrap();

    let o = plumb(&["audit", "verify", "--state", state]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).starts_with("5 records verified; head "),
        "{}",
        text(&o)
    );

    // With the public key kept apart from the state.
    let o = plumb(&["audit", "public-key", "--state", state]);
    assert_eq!(o.status.code(), Some(0));
    let public = String::from_utf8(o.stdout).unwrap();
    assert!(public.starts_with("ssh-ed25519 AAAA") && public.trim_end().ends_with("plumb-daemon"));
    let keyfile = dir.path().join("daemon.pub");
    std::fs::write(&keyfile, &public).unwrap();
    let o = plumb(&[
        "audit",
        "verify",
        "--state",
        state,
        "--public-key",
        keyfile.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["records"].clone()),
        (json!(true), json!(5))
    );

    // Another daemon's key does not verify this chain.
    let other = private_tmp();
    let o = plumb(&[
        "audit",
        "public-key",
        "--state",
        other.path().to_str().unwrap(),
    ]);
    std::fs::write(&keyfile, &o.stdout).unwrap();
    let o = plumb(&[
        "audit",
        "verify",
        "--state",
        state,
        "--public-key",
        keyfile.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(&format!("run {} (record #1): bad signature", ids[0])),
        "{}",
        text(&o)
    );
}

#[test]
fn altered_record_is_named() {
    let dir = private_tmp();
    let ids = write_runs(dir.path());
    sql(
        dir.path(),
        "UPDATE runs SET record = replace(record, '\"result\":\"converged\"', '\"result\":\"failed\"') WHERE id = ?1",
        &ids[2],
    );
    assert_broken_at(dir.path(), &ids, &ids[2], 3, "hash mismatch", None);
}

#[test]
fn removed_record_is_named() {
    let dir = private_tmp();
    let ids = write_runs(dir.path());
    sql(dir.path(), "DELETE FROM runs WHERE id = ?1", &ids[2]);
    // The record after the gap is the first that no longer links.
    assert_broken_at(
        dir.path(),
        &ids,
        &ids[3],
        4,
        &format!("record #3 is missing after run {}", ids[1]),
        Some(&ids[1]),
    );
}

#[test]
fn changed_signature_is_named() {
    let dir = private_tmp();
    let ids = write_runs(dir.path());
    sql(
        dir.path(),
        "UPDATE runs SET signature = substr(signature, 1, 10)
            || CASE substr(signature, 11, 1) WHEN '0' THEN '1' ELSE '0' END
            || substr(signature, 12) WHERE id = ?1",
        &ids[1],
    );
    assert_broken_at(dir.path(), &ids, &ids[1], 2, "bad signature", None);
}

#[test]
fn history_lists_runs_newest_first() {
    let dir = private_tmp();
    let ids = write_runs(dir.path());
    // A run the daemon never finished (killed).
    {
        let db = StateDb::open(dir.path()).unwrap();
        db.begin_run(&NewRun {
            environment: "staging".into(),
            commit: None,
            signer: None,
            kind: RunKind::Apply,
            trigger: Trigger::Startup,
        })
        .unwrap();
    }
    let state = dir.path().to_str().unwrap();
    let o = plumb(&["history", "--state", state, "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    assert_eq!(runs[0]["result"], "interrupted");
    assert_eq!(runs[0]["environment"], "staging");
    assert_eq!(runs[1]["id"], ids[4].as_str());
    assert_eq!(runs[1]["changes"], 6);
    assert_eq!(runs[1]["hosts"], 2);
    assert_eq!(runs[3]["kind"], "correction");
    assert_eq!(runs[3]["drift"], 2);
    assert_eq!(runs[5]["id"], ids[0].as_str());
    assert_eq!(runs[5]["signer"]["principal"], "alice@example.com");

    let o = plumb(&["history", "--state", state, "--env", "prod", "--limit", "2"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID "), "{out}");
    assert!(
        lines[1].starts_with(&ids[4]) && lines[1].contains("4aaaaaaaaaaa "),
        "{out}"
    );
    assert!(lines[2].contains("refused"), "{out}");

    let missing = dir.path().join("nope");
    let o = plumb(&["history", "--state", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no state db at"), "{}", text(&o));
}

/// `plumb history` filters through the binary: each narrows, a bad one exits 1 naming the
/// option, and JSON lines / CSV carry one run per line.
#[test]
fn history_filters_and_machine_outputs() {
    let dir = private_tmp();
    let ids = write_runs(dir.path());
    let state = dir.path().to_str().unwrap();
    let listed = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["history", "--state", state, "--output", "jsonl"];
        args.extend_from_slice(extra);
        let o = plumb(&args);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", text(&o));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("one JSON object per line");
                v["id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(listed(&["--commit", "4AAA"]), vec![ids[4].clone()]);
    assert_eq!(listed(&["--kind", "correction"]), vec![ids[2].clone()]);
    assert_eq!(listed(&["--result", "refused"]), vec![ids[3].clone()]);
    assert_eq!(listed(&["--signer", "SHA256:alicekey"]).len(), 5);
    assert_eq!(listed(&["--signer", "bob@example.com"]).len(), 0);
    assert_eq!(
        listed(&["--host", "web1"]).len(),
        4,
        "the refusal reached no host"
    );
    assert_eq!(listed(&["--since", "1h"]).len(), 5);
    assert_eq!(listed(&["--until", "2000-01-01T00:00:00Z"]).len(), 0);

    for (args, named) in [
        (["--kind", "deploy"], "--kind"),
        (["--since", "last tuesday"], "--since"),
        (["--commit", "xyz"], "--commit"),
    ] {
        let mut all = vec!["history", "--state", state];
        all.extend_from_slice(&args);
        let o = plumb(&all);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(text(&o).contains(named), "{args:?}: {}", text(&o));
    }
    let o = plumb(&["history", "--state", state, "--hots", "web1"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an unknown option is a usage error"
    );

    let o = plumb(&[
        "history", "--state", state, "--output", "csv", "--kind", "apply",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let csv = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("id,started_at,finished_at,environment,kind"),
        "{csv}"
    );
    assert!(lines[1].starts_with(&format!("{},", ids[4])), "{csv}");
    assert!(
        lines[1].contains(",alice@example.com,SHA256:alicekey,2,0,"),
        "{csv}"
    );
}

/// `plumb audit export` verifies on a clean directory holding only the export and the public
/// key; cutting its tail, dropping its first record, editing a record or the header fails.
#[test]
fn an_export_verifies_offline_and_tampering_fails() {
    let dir = private_tmp();
    write_runs(dir.path());
    let state = dir.path().to_str().unwrap();
    let clean = tempfile::tempdir().unwrap();
    let o = plumb(&["audit", "public-key", "--state", state]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let key = clean.path().join("daemon.pub");
    std::fs::write(&key, &o.stdout).unwrap();
    let o = plumb(&["audit", "export", "--state", state]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let export = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(lines.len(), 6, "a header and 5 records: {export}");
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["head"]["seq"], 5);
    assert!(header["public_key"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));

    let verify = |name: &str, content: &str| -> Output {
        let f = clean.path().join(name);
        std::fs::write(&f, content).unwrap();
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .current_dir(clean.path())
            .env_clear()
            .args([
                "audit",
                "verify",
                "--file",
                name,
                "--public-key",
                "daemon.pub",
            ])
            .output()
            .unwrap()
    };
    let o = verify("audit.jsonl", &export);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("5 records verified; head 5:"),
        "{}",
        text(&o)
    );

    let cut = format!("{}\n", lines[..5].join("\n"));
    let o = verify("cut.jsonl", &cut);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a cut tail must fail: {}",
        text(&o)
    );
    assert!(text(&o).contains("truncated"), "{}", text(&o));

    let edited = export.replacen("\\\"web2\\\"", "\\\"web9\\\"", 1);
    assert_ne!(edited, export, "the export names web2 inside a record");
    let o = verify("edited.jsonl", &edited);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an edited record must fail: {}",
        text(&o)
    );
    assert!(text(&o).contains("hash mismatch"), "{}", text(&o));

    let mut h = header.clone();
    h["head"]["seq"] = json!(4);
    h["head"]["hash"] = serde_json::from_str::<Value>(lines[4]).unwrap()["hash"].clone();
    let reheaded = format!("{}\n{}\n", h, lines[1..5].join("\n"));
    let o = verify("reheaded.jsonl", &reheaded);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a rewritten header must fail: {}",
        text(&o)
    );
    assert!(text(&o).contains("header"), "{}", text(&o));

    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("k.pub"),
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["audit", "verify", "--file"])
        .arg(clean.path().join("audit.jsonl"))
        .arg("--public-key")
        .arg(other.path().join("k.pub"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "another key must fail: {}",
        text(&o)
    );

    // A partial export (--since) verifies alone; without its first record it does not.
    let o = plumb(&[
        "history",
        "--state",
        state,
        "--output",
        "json",
        "--kind",
        "correction",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let since = v["runs"][0]["started_at"].as_str().unwrap().to_string();
    let o = plumb(&["audit", "export", "--state", state, "--since", &since]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let recent = String::from_utf8(o.stdout).unwrap();
    let rl: Vec<&str> = recent.lines().collect();
    assert_eq!(rl.len(), 4, "records #3..#5: {recent}");
    let o = verify("recent.jsonl", &recent);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("3 records verified; head 5:"),
        "{}",
        text(&o)
    );
    let headless = format!("{}\n{}\n", rl[0], rl[2..].join("\n"));
    let o = verify("headless.jsonl", &headless);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a dropped first record must fail: {}",
        text(&o)
    );
}

/// The head a verify prints: `N records verified; head SEQ:HASH (key ...)`.
fn printed_head(out: &str) -> String {
    out.split("; head ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a head in the output")
        .to_string()
}

#[test]
fn truncation_below_an_anchored_head_fails_verify() {
    let dir = private_tmp();
    let ids = write_runs(dir.path());
    let state = dir.path().to_str().unwrap();
    let o = plumb(&["audit", "verify", "--state", state]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let head = printed_head(&text(&o));
    assert!(head.starts_with("5:"), "{head}");
    let o = plumb(&["audit", "verify", "--state", state, "--output", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        format!("{}:{}", v["head_seq"], v["head"].as_str().unwrap()),
        head
    );
    for anchor in [["--expect-head", head.as_str()], ["--min-seq", "5"]] {
        let o = plumb(&["audit", "verify", "--state", state, anchor[0], anchor[1]]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }

    // Someone deletes the two newest runs: what is left is a valid chain of three...
    sql(dir.path(), "DELETE FROM runs WHERE id = ?1", &ids[4]);
    sql(dir.path(), "DELETE FROM runs WHERE id = ?1", &ids[3]);
    let o = plumb(&["audit", "verify", "--state", state]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).starts_with("3 records verified; head 3:"),
        "{}",
        text(&o)
    );
    // ...which the anchor and the minimum catch, naming what is missing.
    for anchor in [["--expect-head", head.as_str()], ["--min-seq", "5"]] {
        let o = plumb(&["audit", "verify", "--state", state, anchor[0], anchor[1]]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(out.contains("error: audit chain truncated"), "{out}");
        assert!(out.contains("records #4..#5 were removed"), "{out}");
        assert!(out.contains("3 records verified; head 3:"), "{out}");
        let o = plumb(&[
            "audit", "verify", "--state", state, anchor[0], anchor[1], "--output", "json",
        ]);
        assert_eq!(o.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error_code"], "audit.truncated");
        assert_eq!(
            (v["records"].clone(), v["head_seq"].clone()),
            (json!(3), json!(3))
        );
        assert!(
            v["anchor_error"].as_str().unwrap().contains("#4..#5"),
            "{v}"
        );
    }

    // A malformed anchor is a usage error (exit 1, like every usage error), naming the format.
    let o = plumb(&["audit", "verify", "--state", state, "--expect-head", "5:zz"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("64 hex digits"), "{}", text(&o));
}
