//! Issue 19 end to end, on the Docker hosts with two signers: the auditor's questions, each
//! answered by one command and checked against what was done.
//! - every change on one host with commit, signer, classification and diff
//!   (`plumb audit export`, its records' steps);
//! - every host a commit reached or did not (`plumb history --commit`, and the record's hosts:
//!   `not_reached` with the reason);
//! - every drift with its evidence and resolution (`plumb drift-history`);
//! - every refusal (`plumb history --result refused`);
//! - a `--break-glass` apply beside the running daemon is alerted (`break_glass`, once, with
//!   who, from what, why and where); the refused apply before it is not;
//! - an exported chain with a drift finding edited fails verification.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::{exec, lock, plumb_command, sh, HOSTS};
use daemon::{AlertCapture, DaemonFixture};

const A: &str = "/etc/audit-a.conf";
const B: &str = "/etc/audit-b.conf";

fn unit(a: &str, b: &str) -> String {
    format!(
        "steps:\n\
         \x20 - id: a\n    file:\n      path: {A}\n      content: \"{a}\\n\"\n\
         \x20 - id: b\n    file:\n      path: {B}\n      content: \"{b}\\n\"\n    notify: [reload]\n\
         \x20 - id: reload\n    command:\n      run: \"date >> /var/tmp/audit-reloads\"\n      refresh_only: true\n"
    )
}

/// Host 1 is the canary wave; the others the second. `check` is the health check command.
fn waves(f: &DaemonFixture, check: &str) {
    let mut inventory = String::from("hosts:\n");
    for k in 1..=HOSTS {
        let labels = if k == 1 {
            "canary: \"true\""
        } else {
            "role: web"
        };
        inventory.push_str(&format!(
            "  - name: {}\n    address: {}\n    labels: {{{labels}}}\n",
            f.hosts.name(k),
            f.hosts.addresses[k - 1]
        ));
    }
    f.write("environments/production/hosts.yaml", &inventory);
    f.write(
        "environments/production/env.yaml",
        &format!(
            "drift: {{mode: report, interval: 1h}}\nrollback: \"off\"\n\
             rollout:\n  waves:\n    - name: canary\n      selector: {{canary: \"true\"}}\n    - name: rest\n\
             health_checks:\n  - name: ok\n    command: \"{check}\"\n    timeout: 5s\n"
        ),
    );
}

/// A second signer, bob@plumb, added to the daemon's trust root.
fn add_bob(f: &DaemonFixture) {
    let key = f.path("signing/bob");
    let (code, _, err) = sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bob@plumb", "-f"])
        .arg(&key));
    assert_eq!(code, 0, "{err}");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let signers = f.path("signing/allowed_signers");
    let mut text = std::fs::read_to_string(&signers).expect("signers");
    text.push_str(&format!(
        "bob@plumb namespaces=\"git\" {}\n",
        public.join(" ")
    ));
    std::fs::write(signers, text).expect("write");
}

/// Commits everything as bob (signed with bob's key); does not push.
fn commit_as_bob(f: &DaemonFixture, message: &str) -> String {
    let git = |args: &[&str]| {
        let (code, out, err) = sh(Command::new("git")
            .arg("-C")
            .arg(f.clone_dir())
            .args(["-c", "user.name=Bob", "-c", "user.email=bob@plumb"])
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!(
                "user.signingkey={}",
                f.path("signing/bob").display()
            ))
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1"));
        assert_eq!(code, 0, "git {args:?}: {out}{err}");
        out.trim().to_string()
    };
    git(&["add", "-A"]);
    git(&["commit", "-q", "-S", "-m", message]);
    git(&["rev-parse", "HEAD"])
}

fn plumb(args: &[&str]) -> (i32, String, String) {
    sh(Command::new(env!("CARGO_BIN_EXE_plumb")).args(args))
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `plumb audit export`: the records (signed JSON), parsed, oldest first; and the raw export.
fn export(state: &Path) -> (Vec<Value>, String) {
    let (code, out, err) = plumb(&["audit", "export", "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let records = json_lines(&out)
        .into_iter()
        .skip(1)
        .map(|l| serde_json::from_str(l["record"].as_str().unwrap()).unwrap())
        .collect();
    (records, out)
}

fn drift_history(state: &Path) -> Vec<Value> {
    let (code, out, err) = plumb(&[
        "drift-history",
        "--state",
        state.to_str().unwrap(),
        "--output",
        "jsonl",
    ]);
    assert_eq!(code, 0, "{err}");
    json_lines(&out)
}

/// The changes one host saw, from the export: (kind, address, cause, commit, signer, diff).
fn changes_on(
    records: &[Value],
    host: &str,
) -> Vec<(String, String, String, String, String, String)> {
    let mut out = Vec::new();
    for r in records {
        for h in r["hosts"].as_array().into_iter().flatten() {
            if h["host"] != host {
                continue;
            }
            for s in h["steps"].as_array().into_iter().flatten() {
                let t = |v: &Value| v.as_str().unwrap_or_default().to_string();
                out.push((
                    t(&r["run"]["kind"]),
                    t(&s["address"]),
                    t(&s["cause"]),
                    t(&s["origin"]["commit"]),
                    t(&s["origin"]["signer"]),
                    t(&s["diff"]),
                ));
            }
        }
    }
    out
}

#[test]
fn auditors_questions_are_each_answered_by_one_command() {
    let _g = lock();
    let Some(mut f) = DaemonFixture::new("e2e_audit", "app", &unit("a1", "b1")) else {
        return;
    };
    let state = f.state_dir();
    let config = f.path("daemon.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("drift_interval: 1h", "drift_interval: 2s"),
    )
    .unwrap();
    add_bob(&f);
    waves(&f, "true");
    let c1 = f.commit_and_push("waves", true);
    let capture = AlertCapture::start();
    f.alert_to(&capture);
    f.start_daemon();
    f.wait("c1 applied", Duration::from_secs(300), || f.applied(&c1));

    // Two commits in one push, by two signers: each step names the commit that changed it.
    f.write("units/app.yaml", &unit("a2", "b1"));
    f.git(&["add", "-A"]);
    f.git(&["commit", "-q", "-S", "-m", "a2 (alice)"]);
    let c2 = f.git(&["rev-parse", "HEAD"]);
    f.write("units/app.yaml", &unit("a2", "b2"));
    let c3 = commit_as_bob(&f, "b2 (bob)");
    let bare = f.path("repo.git");
    f.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    f.wait("c3 applied", Duration::from_secs(300), || f.applied(&c3));
    let host2 = f.hosts.name(2);
    let (records, _) = export(&state);
    let changes = changes_on(&records, &host2);
    let find = |kind: &str, addr: &str, commit: &str| {
        changes
            .iter()
            .find(|c| c.0 == kind && c.1 == addr && c.3 == commit)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} change of {addr} by {commit}: {changes:#?}"))
    };
    let a = find("apply", "app/a", &c2);
    assert_eq!((a.2.as_str(), a.4.as_str()), ("intended", "test@plumb"));
    assert!(a.5.contains("-a1") && a.5.contains("+a2"), "{a:?}");
    let b = find("apply", "app/b", &c3);
    assert_eq!((b.2.as_str(), b.4.as_str()), ("intended", "bob@plumb"));
    let run = records
        .iter()
        .rev()
        .find(|r| r["run"]["commit"] == c3.as_str() && r["run"]["kind"] == "apply")
        .expect("the c3 run");
    let signers: Vec<&str> = run["run"]["summary"]["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["signer"].as_str().unwrap())
        .collect();
    assert_eq!(signers, ["test@plumb", "bob@plumb"], "{run:#}");
    let h2 = run["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host2.as_str())
        .unwrap();
    assert_eq!(
        h2["events"][0]["kind"], "refresh",
        "the handler refresh: {h2:#}"
    );
    assert_eq!(h2["events"][0]["address"], "app/reload");
    assert!(h2["started_at"].as_i64().unwrap() <= h2["finished_at"].as_i64().unwrap());

    // Drift by hand on host 2: the finding keeps its diff, cause and origin.
    exec(&f.hosts, 2, &format!("echo 'hand edit' > {A}"));
    f.wait(
        "a drift finding with a diff",
        Duration::from_secs(60),
        || {
            drift_history(&state).iter().any(|d| {
                d["host"] == host2.as_str() && d["address"] == "app/a" && d["diff"].is_string()
            })
        },
    );
    let finding = drift_history(&state)
        .into_iter()
        .find(|d| d["address"] == "app/a")
        .unwrap();
    let diff = finding["diff"].as_str().unwrap();
    assert!(
        diff.contains("-hand edit") && diff.contains("+a2"),
        "{finding:#}"
    );
    assert_eq!(finding["cause"], "corrective");
    assert!(finding["resolved_at"].is_null());

    // A manual apply from a dirty tree: refused by the trust root, then break-glass.
    f.write("units/app.yaml", &unit("a2", "b-hotfix"));
    let signers = f.path("signing/allowed_signers");
    let manual = |extra: &[&str]| {
        let mut args = vec!["apply", "--state", state.to_str().unwrap()];
        args.extend(["--allowed-signers", signers.to_str().unwrap()]);
        args.extend(extra);
        sh(&mut plumb_command(&f.hosts, &args, &f.clone_dir()))
    };
    let (code, _, err) = manual(&[]);
    assert_eq!(code, 1, "refused: {err}");
    assert!(err.contains("uncommitted changes"), "{err}");
    assert_eq!(
        exec(&f.hosts, 1, &format!("cat {B}")),
        "b2",
        "nothing changed"
    );
    let (code, out, err) = manual(&["--break-glass", "incident 42"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(exec(&f.hosts, 2, &format!("cat {B}")), "b-hotfix");
    f.git(&["checkout", "--", "."]);

    // Break glass is alerted by the daemon running beside it: once, saying who, from what,
    // why and where, linking to the run; the refused apply before it raised nothing.
    let glass = || -> Vec<Value> {
        capture
            .events()
            .into_iter()
            .filter(|a| a["event"] == "break_glass")
            .collect()
    };
    f.wait("the break_glass alert", Duration::from_secs(30), || {
        !glass().is_empty()
    });
    let alert = glass().remove(0);
    let details = &alert["details"];
    assert_eq!(details["reason"], "incident 42", "{alert:#}");
    assert_eq!(details["dirty"], true, "{alert:#}");
    assert!(
        details["commit"]
            .as_str()
            .is_some_and(|c| c.starts_with("uncommitted:")),
        "{alert:#}"
    );
    assert!(details["user"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(details["identity"].as_str().is_some_and(|i| !i.is_empty()));
    assert_eq!(alert["environment"], "production");
    assert!(
        alert["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| *h == host2.as_str())),
        "{alert:#}"
    );
    let run = details["run"].as_str().expect("the run");
    assert!(
        alert["link"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/runs/{run}"))),
        "{alert:#}"
    );
    assert!(alert["message"]
        .as_str()
        .is_some_and(|m| m.contains("break glass") && m.contains("incident 42")));

    // The daemon attributes the hotfix to the manual run, not to anonymous drift.
    f.wait("manual drift", Duration::from_secs(60), || {
        drift_history(&state).iter().any(|d| {
            d["address"] == "app/b" && d["cause"] == "manual" && d["resolved_at"].is_null()
        })
    });
    let resolved = drift_history(&state)
        .into_iter()
        .find(|d| d["address"] == "app/a" && d["host"] == host2.as_str())
        .unwrap();
    assert!(
        resolved["resolved_at"].is_i64(),
        "the manual run converged host 2: {resolved:#}"
    );

    // A commit whose canary fails its health check: the later wave is not reached.
    waves(&f, "false");
    let c4 = commit_as_bob(&f, "a failing check (bob)");
    f.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    f.wait("c4 failed", Duration::from_secs(300), || {
        f.run_of("apply", &c4)
            .is_some_and(|r| r["result"] == "failed")
    });

    // Where did c4 go? One command: the run of that commit, its hosts.
    let (code, out, err) = plumb(&[
        "history",
        "--state",
        state.to_str().unwrap(),
        "--commit",
        &c4[..10],
        "--output",
        "jsonl",
    ]);
    assert_eq!(code, 0, "{err}");
    let runs = json_lines(&out);
    assert_eq!(runs.len(), 1, "{out}");
    let (records, raw) = export(&state);
    let rec = records
        .iter()
        .find(|r| r["run"]["commit"] == c4.as_str())
        .expect("c4's record");
    for k in 2..=HOSTS {
        let h = rec["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == f.hosts.name(k).as_str())
            .unwrap_or_else(|| panic!("host {k} listed: {rec:#}"));
        assert_eq!(h["status"], "not_reached", "{h:#}");
        assert_eq!(h["not_reached"]["reason"], "quarantined", "{h:#}");
        assert!(h["not_reached"]["detail"]
            .as_str()
            .unwrap()
            .contains("canary"));
    }
    // Host 1's hotfix was put back by c4's apply: a manual change being reverted.
    let c = changes_on(&records, &f.hosts.name(1));
    assert!(
        c.iter()
            .any(|c| c.0 == "manual" && c.1 == "app/b" && c.2 == "manual"),
        "the manual run's own changes: {c:#?}"
    );

    // Every refusal: one command.
    let (code, out, err) = plumb(&[
        "history",
        "--state",
        state.to_str().unwrap(),
        "--result",
        "refused",
        "--output",
        "jsonl",
    ]);
    assert_eq!(code, 0, "{err}");
    let refused = json_lines(&out);
    assert_eq!(refused.len(), 1, "{out}");
    assert_eq!(refused[0]["kind"], "manual");
    assert!(refused[0]["summary"]["refused"]
        .as_str()
        .unwrap()
        .contains("uncommitted"));
    assert_eq!(refused[0]["summary"]["manual"]["dirty"], true);

    // The export verifies; with a drift finding's evidence edited, it does not.
    assert_eq!(
        glass().len(),
        1,
        "break glass is alerted once: {:#?}",
        glass()
    );
    f.stop_daemon();
    let clean = tempfile::tempdir().unwrap();
    let (code, key, err) = plumb(&["audit", "public-key", "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(clean.path().join("daemon.pub"), format!("{key}\n")).unwrap();
    let verify = |content: &str| {
        std::fs::write(clean.path().join("audit.jsonl"), content).unwrap();
        sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
            .current_dir(clean.path())
            .env_clear()
            .args([
                "audit",
                "verify",
                "--file",
                "audit.jsonl",
                "--public-key",
                "daemon.pub",
            ]))
    };
    let (code, out, err) = verify(&raw);
    assert_eq!(code, 0, "{out}{err}");
    assert!(raw.contains("-hand edit"), "the evidence is in the export");
    let (code, out, err) = verify(&raw.replacen("-hand edit", "-nothing", 1));
    assert_eq!(code, 1, "an edited finding fails: {out}{err}");
}
