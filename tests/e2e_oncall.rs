//! On-call end to end (issue 19, points 7–10), with the daemon on two Docker test hosts, a
//! signed commit, and a real Alertmanager (Debian's `prometheus-alertmanager`) the test
//! starts: a hand edit raises a drift alert that stays firing in Alertmanager while plumb
//! re-sends it and is resolved once the edit is undone; a service stopped between deploys
//! (drift mode `report`) raises `health_check_failed` within one interval and resolves when
//! it runs again; a stopped host raises `host_unreachable`, which survives a daemon restart
//! (re-sent with its original start, not paged again) and resolves when the host is back.
//! The example alert rules in `dist/` pass `promtool check rules`.
//!
//! Run: `cargo nextest run --test e2e_oncall`.

#[path = "common/alertmanager.rs"]
mod alertmanager;
mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::process::Command;
use std::time::{Duration, Instant};

use alertmanager::Alertmanager;
use common::*;
use daemon::{http_get, AlertCapture, DaemonFixture};
use serde_json::Value;

const CONF: &str = "/etc/oncall.conf";
const EXTERNAL: &str = "https://plumb.example.test";

const UNIT: &str = "steps:\n\
  \x20 - id: conf\n    file:\n      path: /etc/oncall.conf\n      content: \"v1\\n\"\n\
  \x20 - id: demo-package\n    package:\n      name: plumb-demo\n\
  \x20 - id: demo-service\n    service:\n      name: plumb-demo\n      state: running\n    after: [demo-package]\n";

/// Drift checks (and with them the health checks) every 2 s, in `report` mode; alerts to
/// Alertmanager and a capturing webhook, re-sent every 2 s, linking to `EXTERNAL`.
fn configure(f: &DaemonFixture, am: &Alertmanager, capture: &AlertCapture) {
    f.write(
        "environments/production/env.yaml",
        "drift: {mode: report, interval: 2s}\n\
         health_checks:\n  - name: demo-active\n    command: \"systemctl is-active --quiet plumb-demo\"\n    timeout: 5s\n",
    );
    let path = f.path("daemon.yaml");
    let config = std::fs::read_to_string(&path)
        .expect("config")
        .replace("drift_interval: 1h", "drift_interval: 2s");
    let config = format!(
        "{config}external_url: {EXTERNAL}\nalert_resend_interval: 2s\nalerts:\n\
         \x20 - kind: alertmanager\n    url: {}\n\
         \x20 - kind: webhook\n    url: http://127.0.0.1:{}/alerts\n",
        am.url(),
        capture.port
    );
    std::fs::write(path, config).expect("write config");
}

fn testhosts(f: &DaemonFixture, op: &str, k: usize) {
    let (code, out, err) = sh(Command::new(root().join("integration/testhosts"))
        .env("PLUMB_TEST_CLUSTER", f.hosts.cluster())
        .args([op, &k.to_string(), "--dir"])
        .arg(&f.hosts.dir));
    assert_eq!(code, 0, "testhosts {op} {k}: {out}{err}");
}

/// The webhook's alerts of `event` with `status` for `host`.
fn captured(capture: &AlertCapture, event: &str, status: &str, host: &str) -> Vec<Value> {
    capture
        .events()
        .into_iter()
        .filter(|a| a["event"] == event && a["status"] == status && a["hosts"][0] == host)
        .collect()
}

fn metrics(f: &DaemonFixture) -> String {
    http_get(f.port, "/metrics").1
}

#[test]
fn drift_health_and_unreachable_alerts_fire_and_resolve_in_alertmanager() {
    let _g = lock();
    let Some(am) = Alertmanager::start() else {
        return;
    };
    let Some(mut f) = DaemonFixture::with_hosts(
        "drift_health_and_unreachable_alerts_fire_and_resolve_in_alertmanager",
        2,
        "app",
        UNIT,
    ) else {
        return;
    };
    let capture = AlertCapture::start();
    configure(&f, &am, &capture);
    let good = f.commit_and_push("a service, its config and a health check", true);
    f.start_daemon();
    f.wait("the commit applied", Duration::from_secs(300), || {
        f.applied(&good)
    });
    let (h1, h2) = (f.hosts.name(1), f.hosts.name(2));

    // 1. A hand edit on host 1: a drift alert for that host, with its evidence.
    exec(&f.hosts, 1, &format!("printf 'hand edit\\n' > {CONF}"));
    let drift = [("host", h1.as_str()), ("environment", "production")];
    f.wait(
        "the drift alert in Alertmanager",
        Duration::from_secs(60),
        || am.find("PlumbDriftFound", &drift).is_some(),
    );
    let alert = am.find("PlumbDriftFound", &drift).expect("firing");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert:#}");
    assert_eq!(alert["annotations"]["signer"], "test@plumb", "{alert:#}");
    let url = alert["generatorURL"].as_str().unwrap_or_default();
    assert!(url.starts_with(&format!("{EXTERNAL}/runs/")), "{alert:#}");
    let description = alert["annotations"]["description"].as_str().unwrap_or("");
    assert!(
        description.contains(&format!("1 resource(s) drifted on {h1}"))
            && description.contains(&good),
        "{alert:#}"
    );
    let sent = captured(&capture, "drift_found", "firing", &h1);
    assert_eq!(sent.len(), 1, "paged once: {sent:#?}");
    let resource = &sent[0]["details"]["resources"][0];
    assert_eq!(resource["step"], "app/conf", "{:#}", sent[0]);
    assert_eq!(resource["target"], CONF, "{:#}", sent[0]);
    assert_eq!(sent[0]["signer"], "test@plumb");
    assert_eq!(sent[0]["commit"], good.as_str());
    assert!(
        sent[0]["ends_at"].as_str().is_some(),
        "a firing alert carries its end: {:#}",
        sent[0]
    );
    // Alertmanager is told an end 4 re-send intervals (8 s) ahead: still firing well after
    // that means plumb re-sends it (and only to Alertmanager: the webhook was paged once).
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        am.find("PlumbDriftFound", &drift).is_some(),
        "re-sent while firing; alertmanager log:\n{}",
        am.log()
    );
    assert_eq!(captured(&capture, "drift_found", "firing", &h1).len(), 1);

    // The edit undone: the alert resolves, in Alertmanager and on the webhook.
    exec(&f.hosts, 1, &format!("printf 'v1\\n' > {CONF}"));
    f.wait("the drift alert resolved", Duration::from_secs(60), || {
        am.find("PlumbDriftFound", &drift).is_none()
            && !captured(&capture, "drift_found", "resolved", &h1).is_empty()
    });

    // 2. A service stopped between deploys: `health_check_failed` within one interval.
    exec(&f.hosts, 2, "systemctl stop plumb-demo");
    let stopped = Instant::now();
    let check = [("host", h2.as_str()), ("check", "demo-active")];
    f.wait(
        "health_check_failed in Alertmanager",
        Duration::from_secs(60),
        || am.find("PlumbHealthCheckFailed", &check).is_some(),
    );
    // One drift interval (2 s), the check itself (its 5 s timeout at most), the delivery.
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopped.elapsed()
    );
    let m = metrics(&f);
    assert!(
        m.contains(&format!(
            "plumb_health_check_up{{env=\"production\",host=\"{h2}\",check=\"demo-active\"}} 0"
        )),
        "{m}"
    );
    exec(&f.hosts, 2, "systemctl start plumb-demo");
    f.wait(
        "health_check_failed resolved",
        Duration::from_secs(60),
        || {
            am.find("PlumbHealthCheckFailed", &check).is_none()
                && !captured(&capture, "health_check_failed", "resolved", &h2).is_empty()
        },
    );
    // The stopped service was drift too (report mode): resolved now that it runs.
    f.wait("host 2's drift resolved", Duration::from_secs(60), || {
        am.find("PlumbDriftFound", &[("host", h2.as_str())])
            .is_none()
    });

    // 3. A host that stops answering: `host_unreachable`, not "no drift".
    testhosts(&f, "stop", 2);
    let gone = [("host", h2.as_str())];
    f.wait(
        "host_unreachable in Alertmanager",
        Duration::from_secs(90),
        || am.find("PlumbHostUnreachable", &gone).is_some(),
    );
    let m = metrics(&f);
    assert!(
        m.contains(&format!(
            "plumb_host_reachable{{env=\"production\",host=\"{h2}\"}} 0"
        )),
        "{m}"
    );
    assert!(
        !m.contains(&format!(
            "plumb_drifted_resources{{env=\"production\",host=\"{h2}\"}}"
        )),
        "an unknown host has no drift count: {m}"
    );
    // The daemon restarts while host 2 is still down: its alert survives (kept in the
    // state), re-sent to Alertmanager with its original start, not paged again as new.
    let before = am.find("PlumbHostUnreachable", &gone).expect("firing");
    let paged = captured(&capture, "host_unreachable", "firing", &h2).len();
    f.stop_daemon();
    f.start_daemon();
    f.wait(
        "the restored alert re-sent to Alertmanager",
        Duration::from_secs(30),
        || {
            am.find("PlumbHostUnreachable", &gone).is_some_and(|a| {
                a["endsAt"].as_str() > before["endsAt"].as_str()
                    && a["startsAt"] == before["startsAt"]
            })
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        captured(&capture, "host_unreachable", "firing", &h2).len(),
        paged,
        "not paged again after the restart"
    );
    let history = f.history();
    let unknown = history
        .iter()
        .find(|r| r["kind"] == "drift_check" && r["summary"]["unknown_hosts"][0] == h2.as_str());
    assert!(unknown.is_some(), "a drift check lists the host as unknown");
    testhosts(&f, "start", 2);
    f.wait("host_unreachable resolved", Duration::from_secs(90), || {
        am.find("PlumbHostUnreachable", &gone).is_none()
    });
    // The run counters carry their kind; the build is known.
    let m = metrics(&f);
    assert!(m.contains("kind=\"drift_check\""), "{m}");
    assert!(m.contains("plumb_build_info{version="), "{m}");
    f.stop_daemon();
}

/// The example Prometheus alert rules shipped in `dist/` are valid (`promtool check rules`,
/// from Debian's `prometheus` package).
#[test]
fn the_example_alert_rules_pass_promtool() {
    if Command::new("promtool").arg("--version").output().is_err() {
        if std::env::var_os("PLUMB_REQUIRE_E2E").is_some() {
            panic!("PLUMB_REQUIRE_E2E is set but `promtool` is not installed (apt-get install prometheus)");
        }
        eprintln!("\n*** SKIPPED: no `promtool` (apt-get install prometheus) ***\n");
        return;
    }
    let rules = root().join("dist/plumb-alerts.rules.yml");
    let (code, out, err) = sh(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert_eq!(
        code,
        0,
        "promtool check rules {}:\n{out}{err}",
        rules.display()
    );
    assert!(out.contains("SUCCESS"), "{out}");
}
