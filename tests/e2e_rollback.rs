//! Safe rollouts end to end (issue 15), with the daemon on the Docker test hosts and signed
//! commits: a commit that breaks the canary's health check is rolled back on the canary only
//! (content, mode and service state of the last good commit, checked with `docker exec`),
//! later waves are untouched, the commit stays quarantined across a daemon restart, the next
//! good commit rolls out everywhere, a failed commit that removes a package is not rolled
//! back (and the alert says why), a Prometheus query (a real `prometheus` the test starts)
//! that returns failure stops the wave, and the audit chain verifies and names the rollback.
//! First, on the same hosts, `plumb apply` by hand follows the waves: a failing health check
//! in wave 1 stops it before wave 2. Last, `plumb rollback` pins a host to the first good
//! commit against the daemon's state and `plumb unpin` releases it. The unit has `prune:
//! true`: the file the bad commit added is removed by the rollback (it is a removal, since
//! the last good commit does not declare it).
//!
//! Run: `cargo nextest run --test e2e_rollback`.

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::process::Command;
use std::time::Duration;

use common::*;
use daemon::{http_get, AlertCapture, DaemonFixture};
use serde_json::Value;

const CONF: &str = "/etc/rollback-demo.conf";
/// A file only the bad commit declares.
const EXTRA: &str = "/etc/rollback-extra.conf";

/// The unit (with `prune: true`): a config file (content and mode), the demo package and its
/// service.
fn unit(content: &str, mode: &str, service: &str, extra: &str) -> String {
    format!(
        "prune: true\nsteps:\n\
         \x20 - id: conf\n    file:\n      path: {CONF}\n      content: \"{content}\\n\"\n      mode: \"{mode}\"\n\
         \x20 - id: demo-package\n    package:\n      name: plumb-demo\n\
         \x20 - id: demo-service\n    service:\n      name: plumb-demo\n      state: {service}\n    after: [demo-package]\n\
         {extra}"
    )
}

/// Host 1 is the canary; the other hosts form the second wave. The health check needs the
/// config to say `healthy` and the service to run.
fn waves_and_health(f: &DaemonFixture, extra_check: &str) {
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
        &("drift: {mode: report, interval: 1h}\n\
         rollout:\n  waves:\n    - name: canary\n      selector: {canary: \"true\"}\n    - name: rest\n\
         health_checks:\n  - name: app-healthy\n    command: \"grep -q healthy /etc/rollback-demo.conf && systemctl is-active --quiet plumb-demo\"\n    timeout: 5s\n"
            .to_string()
            + extra_check),
    );
}

fn runs(f: &DaemonFixture, kind: &str, commit: &str) -> Vec<Value> {
    f.history()
        .into_iter()
        .filter(|r| r["kind"] == kind && r["commit"] == commit)
        .collect()
}

fn conf(f: &DaemonFixture, k: usize) -> String {
    exec(
        &f.hosts,
        k,
        &format!("cat {CONF}; stat -c %a {CONF}; systemctl is-active plumb-demo || true"),
    )
}

/// `plumb apply` by hand (before the daemon starts, on the same hosts): a commit that fails
/// the canary's health check stops it at wave 1, and wave 2's hosts are never touched;
/// `--no-waves` says loudly that it skips the waves.
fn plumb_apply_follows_the_waves(f: &DaemonFixture) {
    f.write("units/app.yaml", &unit("broken", "0600", "stopped", ""));
    let (code, report, err) = plumb(&f.hosts, &["apply"], &f.clone_dir());
    assert_eq!(code, 1, "{report:#}\n{err}");
    assert_eq!(report["stopped_at_wave"], "canary", "{report:#}");
    assert_eq!(
        report["waves"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_eq!(report["waves"][0]["health"][0]["ok"], false, "{report:#}");
    let applied: Vec<&Value> = report["hosts"].as_array().into_iter().flatten().collect();
    assert_eq!(applied.len(), 1, "only the canary was applied: {report:#}");
    assert_eq!(applied[0]["name"], f.hosts.name(1).as_str());
    let later: Vec<String> = (2..=HOSTS).map(|k| f.hosts.name(k)).collect();
    assert_eq!(
        report["not_touched"],
        serde_json::json!(later),
        "{report:#}"
    );
    assert!(!err.contains("--no-waves"), "{err}");
    for k in 2..=HOSTS {
        assert_eq!(
            exec(
                &f.hosts,
                k,
                &format!("test -e {CONF} && echo present || echo absent")
            ),
            "absent",
            "host {k} was never touched"
        );
    }
    // `--no-waves` with a healthy unit: every host at once, no health check, said loudly.
    f.write("units/app.yaml", &unit("healthy v1", "0644", "running", ""));
    let (code, report, err) = plumb(&f.hosts, &["apply", "--no-waves"], &f.clone_dir());
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert!(err.contains("WARNING: --no-waves"), "{err}");
    assert_eq!(report["waves"][0]["name"], "all", "{report:#}");
    assert_eq!(report["waves"][0]["health"], Value::Null, "{report:#}");
    assert_eq!(report["hosts"].as_array().map(Vec::len), Some(HOSTS));
}

/// `plumb rollback` against the (stopped) daemon's state pins host 2 to the first good
/// commit and applies it; `plumb history` shows the pin; `plumb unpin` releases it.
fn pin_and_unpin(f: &DaemonFixture, good: &str) {
    let state = f.state_dir();
    let signers = f.path("signing/allowed_signers");
    let host = f.hosts.name(2);
    let mut cmd = plumb_command(&f.hosts, &["rollback"], &f.clone_dir());
    cmd.args(["--to", good, "--limit", &host, "--state"])
        .arg(&state)
        .arg("--allowed-signers")
        .arg(&signers);
    let (code, out, err) = sh(&mut cmd);
    assert_eq!(code, 0, "plumb rollback: {out}\n{err}");
    let report: Value = serde_json::from_str(&out).expect("rollback JSON");
    assert_eq!(report["target"], good, "{report:#}");
    assert_eq!(report["target_signer"], "test@plumb", "{report:#}");
    assert_eq!(
        report["apply"]["hosts"][0]["name"],
        host.as_str(),
        "{report:#}"
    );
    assert_eq!(
        conf(f, 2),
        "healthy v1\n644\nactive",
        "host 2 is on the pinned commit"
    );
    // The package a later commit added is not declared by the target: under prune it is
    // still only orphaned (its module never removes a package), and left installed.
    let orphan = &report["apply"]["hosts"][0]["orphans"][0];
    assert_eq!(
        (&orphan["address"], &orphan["reason"]),
        (&"app/hello".into(), &"module_never".into()),
        "{report:#}"
    );
    assert_eq!(
        exec(&f.hosts, 2, "dpkg-query -W -f '${Status}' plumb-hello"),
        "install ok installed"
    );
    let (_, history, _) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["history", "--output", "json", "--state"])
        .arg(&state));
    let history: Value = serde_json::from_str(&history).expect("history JSON");
    assert_eq!(history["pins"][0]["host"], host.as_str(), "{history:#}");
    assert_eq!(history["pins"][0]["commit"], good, "{history:#}");
    assert_eq!(history["runs"][0]["kind"], "pin", "{history:#}");

    let (code, out, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args([
            "unpin",
            "--env",
            "production",
            "--output",
            "json",
            "--state",
        ])
        .arg(&state));
    assert_eq!(code, 0, "plumb unpin: {out}\n{err}");
    let unpinned: Value = serde_json::from_str(&out).expect("unpin JSON");
    assert_eq!(
        unpinned["released"][0]["host"],
        host.as_str(),
        "{unpinned:#}"
    );
    assert!(f.history().iter().any(|r| r["kind"] == "unpin"), "recorded");
}

#[test]
fn a_broken_canary_is_rolled_back_and_the_commit_quarantined() {
    let _g = lock();
    let Some(mut f) = DaemonFixture::new(
        "a_broken_canary_is_rolled_back_and_the_commit_quarantined",
        "app",
        &unit("healthy v1", "0644", "running", ""),
    ) else {
        return;
    };
    let alerts = AlertCapture::start();
    f.alert_to(&alerts);
    waves_and_health(&f, "");
    plumb_apply_follows_the_waves(&f);
    f.write("units/app.yaml", &unit("healthy v1", "0644", "running", ""));
    let good = f.commit_and_push("waves and a health check", true);
    f.start_daemon();
    f.wait("the good commit applied", Duration::from_secs(300), || {
        f.applied(&good)
    });
    let healthy_v1 = "healthy v1\n644\nactive";
    for k in 1..=HOSTS {
        assert_eq!(conf(&f, k), healthy_v1, "host {k}");
    }

    // A commit that breaks the canary: other content, another mode, the service stopped, and
    // a file the last good commit does not declare.
    f.write(
        "units/app.yaml",
        &unit(
            "broken",
            "0600",
            "stopped",
            &format!("  - id: extra\n    file:\n      path: {EXTRA}\n      content: \"bad\\n\"\n"),
        ),
    );
    let bad = f.commit_and_push("break the app", true);
    f.wait(
        "the bad commit rolled back",
        Duration::from_secs(300),
        || {
            runs(&f, "rollback", &good)
                .iter()
                .any(|r| r["result"] == "converged")
        },
    );
    // The canary is back on the last good commit: content, mode and service state; the file
    // the bad commit added is pruned (the unit has `prune: true`).
    assert_eq!(conf(&f, 1), healthy_v1, "the canary is rolled back");
    assert_eq!(
        exec(
            &f.hosts,
            1,
            &format!("test -e {EXTRA} && echo present || echo absent")
        ),
        "absent",
        "the rollback pruned what the bad commit added"
    );
    // The later wave was never touched.
    for k in 2..=HOSTS {
        assert_eq!(conf(&f, k), healthy_v1, "host {k}");
    }
    let failed = runs(&f, "apply", &bad);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["result"], "failed");
    assert_eq!(failed[0]["summary"]["stopped_at_wave"], "canary");
    // Regression (issue 19, point 11): the canary converged but failed its health check; it
    // used to show as `converged` with `failed_hosts: 0`.
    assert_eq!(failed[0]["failed_hosts"], 1, "{:#}", failed[0]);
    let run = http_get(
        f.port,
        &format!("/api/runs/{}", failed[0]["id"].as_str().unwrap_or("")),
    );
    let detail: Value = serde_json::from_str(&run.1).expect("run JSON");
    let canary = detail["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == f.hosts.name(1).as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(canary["status"], "unhealthy", "{detail:#}");
    assert!(
        canary["error"]
            .as_str()
            .is_some_and(|e| e.contains("app-healthy")),
        "{canary:#}"
    );
    let rollback = &runs(&f, "rollback", &good)[0];
    let s = &rollback["summary"];
    assert_eq!(s["rollback_of"], bad.as_str(), "{rollback:#}");
    assert_eq!(s["target"], good.as_str());
    assert_eq!(s["target_signer"], "test@plumb");
    assert_eq!(s["hosts"], serde_json::json!([f.hosts.name(1)]));
    assert!(
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("health checks failed")),
        "{s:#}"
    );
    assert_eq!(s["failed_checks"][0]["check"], "app-healthy");
    assert_eq!(
        s["health"][0]["ok"], true,
        "the target's check passed: {s:#}"
    );
    f.wait("a rolled_back alert", Duration::from_secs(20), || {
        alerts.events().iter().any(|a| a["event"] == "rolled_back")
    });
    let failed_alert = alerts
        .events()
        .into_iter()
        .find(|a| a["event"] == "run_failed")
        .expect("the failure is alerted");
    assert!(
        failed_alert["message"]
            .as_str()
            .is_some_and(|m| m.contains("commit quarantined; rolling back")),
        "{failed_alert:#}"
    );

    // Quarantined across a restart: the bad commit is not applied again.
    f.stop_daemon();
    f.start_daemon();
    let port = f.port;
    f.wait(
        "the restarted daemon's first reconcile",
        Duration::from_secs(60),
        || http_get(port, "/readyz").0 == 200,
    );
    assert_eq!(runs(&f, "apply", &bad).len(), 1, "not applied again");
    assert_eq!(conf(&f, 1), healthy_v1);

    // The next good commit rolls out everywhere.
    f.write(
        "units/app.yaml",
        &unit(
            "healthy v2",
            "0644",
            "running",
            "  - id: hello\n    package:\n      name: plumb-hello\n",
        ),
    );
    let next = f.commit_and_push("fix forward", true);
    f.wait(
        "the next good commit applied",
        Duration::from_secs(300),
        || f.applied(&next),
    );
    for k in 1..=HOSTS {
        assert_eq!(conf(&f, k), "healthy v2\n644\nactive", "host {k}");
    }

    // A failed commit that removes a package is not rolled back: the alert says why.
    f.write(
        "units/app.yaml",
        &unit(
            "broken again",
            "0644",
            "running",
            "  - id: hello\n    package:\n      name: plumb-hello\n      state: absent\n",
        ),
    );
    let irreversible = f.commit_and_push("remove hello and break the app", true);
    f.wait(
        "the irreversible commit failed",
        Duration::from_secs(300),
        || {
            runs(&f, "apply", &irreversible)
                .iter()
                .any(|r| r["result"] == "failed")
        },
    );
    f.wait("its alert", Duration::from_secs(20), || {
        alerts
            .events()
            .iter()
            .any(|a| a["event"] == "run_failed" && a["commit"] == irreversible.as_str())
    });
    let alert = alerts
        .events()
        .into_iter()
        .find(|a| a["event"] == "run_failed" && a["commit"] == irreversible.as_str())
        .expect("alert");
    let message = alert["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("not rolled back automatically")
            && message.contains("package removal")
            && message.contains("a person must decide"),
        "{message}"
    );
    assert!(runs(&f, "rollback", &next).is_empty(), "no rollback");
    assert_eq!(
        exec(&f.hosts, 1, &format!("head -n1 {CONF}")),
        "broken again",
        "left as it is"
    );

    // A Prometheus query whose answer fails its condition stops the wave (the canary).
    let Some(prom) = prometheus::Prometheus::start() else {
        return;
    };
    prom.wait_for_data();
    waves_and_health(
        &f,
        &format!(
            "  - name: up-high\n    prometheus:\n      url: {}\n      query: 'up{{job=\"self\"}}'\n      condition: \"> 5\"\n    timeout: 5s\n",
            prom.url()
        ),
    );
    // (It also stops declaring `hello`: a package is never pruned, so it is orphaned.)
    f.write("units/app.yaml", &unit("healthy v3", "0644", "running", ""));
    let watched = f.commit_and_push("watch a metric", true);
    f.wait(
        "the metric stops the rollout",
        Duration::from_secs(300),
        || {
            runs(&f, "apply", &watched)
                .iter()
                .any(|r| r["result"] == "failed")
        },
    );
    let run = &runs(&f, "apply", &watched)[0];
    assert_eq!(run["summary"]["stopped_at_wave"], "canary", "{run:#}");
    let orphan = &run["summary"]["orphans"][f.hosts.name(1)][0];
    assert_eq!(
        (&orphan["address"], &orphan["reason"]),
        (&"app/hello".into(), &"module_never".into()),
        "{run:#}"
    );
    let up_high = run["summary"]["waves"][0]["health"]
        .as_array()
        .and_then(|h| h.iter().find(|c| c["check"] == "up-high"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(up_high["kind"], "prometheus", "{run:#}");
    assert_eq!(up_high["code"], "condition_not_met", "{run:#}");
    assert!(
        up_high["error"].as_str().is_some_and(
            |e| e.starts_with("the query returned 1 for") && e.ends_with("which is not > 5")
        ),
        "{up_high:#}"
    );
    // The second wave was never touched.
    for k in 2..=HOSTS {
        assert_eq!(
            exec(&f.hosts, k, &format!("head -n1 {CONF}")),
            "healthy v2",
            "host {k}"
        );
    }
    f.stop_daemon();
    pin_and_unpin(&f, &good);

    // The audit chain verifies after all of it, and holds the rollback with its reason.
    let (code, out, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["audit", "verify", "--state"])
        .arg(f.state_dir()));
    assert_eq!(code, 0, "audit verify: {out}{err}");
}
