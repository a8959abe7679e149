//! Prune end to end (issue 15, point 5) on one Docker test host, with `plumb plan --state` and
//! `plumb apply --state`: a file step removed from the repo is reported `orphaned` and left in
//! place while prune is off; with `prune: true` the plan shows it as a removal (exit 2), the
//! apply deletes the file (checked with `docker exec`), and it leaves the managed set (the
//! next plan is empty). A package no longer declared is orphaned even under prune (its module
//! never removes one), and a step declared again is managed again, not orphaned. The daemon's
//! side (a rollback prunes what the bad commit added) is in `tests/e2e_rollback.rs`.
//!
//! Run: `cargo nextest run --test e2e_prune`.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const KEEP: &str = "/etc/plumb-prune-keep.conf";
const GONE: &str = "/etc/plumb-prune-gone.conf";

fn unit(with_gone: bool, extra: &str) -> String {
    let mut u = format!(
        "{extra}steps:\n  - id: keep\n    file:\n      path: {KEEP}\n      content: \"kept\\n\"\n  - id: hello\n    package:\n      name: plumb-hello\n"
    );
    if with_gone {
        u.push_str(&format!(
            "  - id: gone\n    file:\n      path: {GONE}\n      content: \"soon gone\\n\"\n"
        ));
    }
    u
}

fn present(hosts: &Hosts, path: &str) -> bool {
    exec(hosts, 1, &format!("test -e {path} && echo yes || echo no")) == "yes"
}

/// `plumb <cmd> --state STATE` on `repo`: (exit code, JSON report, stderr).
fn with_state(hosts: &Hosts, cmd: &str, repo: &Path, state: &Path) -> (i32, Value, String) {
    let mut c = plumb_command(hosts, &[cmd], repo);
    c.arg("--state").arg(state);
    let (code, out, err) = sh(&mut c);
    let json = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("plumb {cmd} printed no JSON ({e}):\n{out}\n{err}"));
    (code, json, err)
}

fn orphans(report: &Value) -> Vec<(String, String)> {
    report["hosts"][0]["orphans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["address"].as_str().unwrap_or_default().to_string(),
                o["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_step_removed_under_prune_removes_its_file_and_is_orphaned_otherwise() {
    let _g = lock();
    let Some(hosts) = fresh_hosts_n(
        "a_step_removed_under_prune_removes_its_file_and_is_orphaned_otherwise",
        1,
    ) else {
        return;
    };
    let repo = one_host_repo(&hosts, "app", &unit(true, ""));
    let r = repo.path();
    let state_parent = tempfile::tempdir().expect("tempdir");
    let state = state_parent.path().join("state");
    let write_unit = |text: &str| std::fs::write(r.join("units/app.yaml"), text).expect("write");

    // Applied with the state: every step is managed.
    let (code, report, err) = with_state(&hosts, "apply", r, &state);
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert!(present(&hosts, GONE) && present(&hosts, KEEP));

    // The step and the package are gone from the repo; prune is off: both orphaned, nothing
    // to change (exit 0), and the apply leaves the file in place.
    write_unit(
        &unit(false, "").replace("  - id: hello\n    package:\n      name: plumb-hello\n", ""),
    );
    let (code, plan, err) = with_state(&hosts, "plan", r, &state);
    assert_eq!(code, 0, "{plan:#}\n{err}");
    assert_eq!(
        orphans(&plan),
        [
            ("app/gone".to_string(), "prune_off".to_string()),
            ("app/hello".to_string(), "prune_off".to_string()),
        ],
        "{plan:#}"
    );
    let (code, applied, err) = with_state(&hosts, "apply", r, &state);
    assert_eq!(code, 0, "{applied:#}\n{err}");
    assert_eq!(orphans(&applied).len(), 2, "{applied:#}");
    assert!(present(&hosts, GONE), "an orphan is left in place");
    // Without a state nothing is known to be managed: no orphan, nothing to prune.
    let (code, plain, err) = plumb(&hosts, &["plan"], r);
    assert_eq!(code, 0, "{plain:#}\n{err}");
    assert!(orphans(&plain).is_empty(), "{plain:#}");

    // Prune on (the unit's own flag): the file is a removal, the package still an orphan
    // (its module never removes one). Text output says `- ... remove` and `? ... orphaned`.
    write_unit(
        &unit(false, "prune: true\n")
            .replace("  - id: hello\n    package:\n      name: plumb-hello\n", ""),
    );
    let (code, plan, err) = with_state(&hosts, "plan", r, &state);
    assert_eq!(code, 2, "a removal is a change: {plan:#}\n{err}");
    let steps = plan["hosts"][0]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(steps.len(), 1, "{plan:#}");
    assert_eq!(
        (
            &steps[0]["address"],
            &steps[0]["change"],
            &steps[0]["removing"]
        ),
        (&"app/gone".into(), &"remove".into(), &true.into()),
        "{plan:#}"
    );
    assert_eq!(
        orphans(&plan),
        [("app/hello".to_string(), "module_never".to_string())],
        "{plan:#}"
    );
    let mut text = std::process::Command::new(env!("CARGO_BIN_EXE_plumb"));
    text.arg("plan")
        .arg(r)
        .args(["--env", "production", "--color", "never", "--identity"])
        .arg(hosts.dir.join("id_ed25519"))
        .arg("--known-hosts")
        .arg(hosts.dir.join("known_hosts"))
        .arg("--state")
        .arg(&state);
    let (code, out, err) = sh(&mut text);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "- app/gone [file] {GONE}: remove (no longer declared; prune)"
        )),
        "{out}"
    );
    assert!(
        out.contains("? app/hello [package] plumb-hello: orphaned"),
        "{out}"
    );
    assert_eq!(
        plan["hosts"][0]["round_trips"]["probe"], 1,
        "the removal rides in the one probe: {plan:#}"
    );

    let (code, applied, err) = with_state(&hosts, "apply", r, &state);
    assert_eq!(code, 0, "{applied:#}\n{err}");
    let h = &applied["hosts"][0];
    assert_eq!(h["steps"][0]["removing"], true, "{applied:#}");
    assert_eq!(
        (
            &h["round_trips"]["probe"],
            &h["round_trips"]["apply"],
            &h["round_trips"]["verify"]
        ),
        (&1.into(), &1.into(), &1.into()),
        "{applied:#}"
    );
    assert!(!present(&hosts, GONE), "the pruned file is gone");
    assert!(present(&hosts, KEEP), "the declared file stays");
    assert_eq!(
        exec(&hosts, 1, "dpkg-query -W -f '${Status}' plumb-hello"),
        "install ok installed",
        "the orphaned package stays"
    );

    // Removed, it left the managed set: nothing more to do; the package is still orphaned.
    let (code, plan, err) = with_state(&hosts, "plan", r, &state);
    assert_eq!(code, 0, "{plan:#}\n{err}");
    assert_eq!(
        orphans(&plan),
        [("app/hello".to_string(), "module_never".to_string())]
    );
    // Declared again, the package is managed again: no orphan left.
    write_unit(&unit(false, "prune: true\n"));
    let (code, applied, err) = with_state(&hosts, "apply", r, &state);
    assert_eq!(code, 0, "{applied:#}\n{err}");
    assert!(orphans(&applied).is_empty(), "{applied:#}");
}
