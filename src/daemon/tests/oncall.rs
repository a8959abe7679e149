//! On-call (issue 19): break glass is alerted once per run, also when recorded while the
//! daemon was down; the alerts firing survive a restart (re-sent with their first time, not
//! paged again, resolved when their condition is gone).

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use super::*;
use crate::alert::{AlertEvent, AlertKey, AlertStatus};
use crate::engine::HostStatus;
use crate::state::{
    ManualSummary, NotReached, NotReachedReason, Provenance, RunId, StateDb, StepMeta,
};

fn provenance(glass: Option<&str>) -> Provenance {
    Provenance {
        user: "carol".into(),
        identity: "/home/carol/.ssh/id_ed25519 (SHA256:abc)".into(),
        head: Some("c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00".into()),
        dirty: true,
        tree_sha256: "7ree".repeat(16),
        diff_sha256: Some("d1ff".into()),
        signer: None,
        unverified: None,
        break_glass: glass.map(String::from),
    }
}

/// A manual run as `plumb apply --state` records it, from another process (a recorder
/// handle): applied to web-1, web-2 left out by `--limit`; refused when `refused`.
fn record_manual(fx: &Fx, glass: Option<&str>, refused: bool) -> RunId {
    let db = StateDb::open_recorder(&fx.path("state")).expect("recorder");
    let p = provenance(glass);
    let run = db
        .begin_run(&state::NewRun {
            environment: "production".into(),
            commit: Some(p.commit()),
            signer: None,
            kind: RunKind::Manual,
            trigger: state::Trigger::Cli,
        })
        .expect("begin");
    let mut summary = ManualSummary {
        manual: p,
        refused: None,
        interrupted: None,
    };
    if refused {
        summary.refused = Some("the working tree has uncommitted changes".into());
        let v = serde_json::to_value(&summary).expect("json");
        db.finish_run(&run, RunResult::Refused, &v).expect("finish");
        return run;
    }
    db.record_host(
        &run,
        &crate::state::tests::host_run("web-1", 1, HostStatus::Converged),
        &StepMeta::default(),
        &[],
    )
    .expect("host");
    let why = NotReached {
        reason: NotReachedReason::Limited,
        detail: "left out by --limit".into(),
    };
    db.record_not_reached(&run, &["web-2".to_string()], &why)
        .expect("not reached");
    let v = serde_json::to_value(&summary).expect("json");
    db.finish_run(&run, RunResult::Converged, &v)
        .expect("finish");
    run
}

/// Nothing more reaches the alert sink for a moment.
async fn no_more_alerts(fx: &Fx) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    if let Ok(a) = fx.alerts.try_recv() {
        panic!("unexpected alert: {a:#}");
    }
}

#[tokio::test]
async fn a_break_glass_run_is_alerted_once_even_when_recorded_while_the_daemon_was_down() {
    let fx = Fx::new();
    let d = fx.bare_daemon_for("[production]");
    // A refused apply (the gate held) and a manual apply without break glass: no alert.
    record_manual(&fx, None, true);
    record_manual(&fx, None, false);
    let glass = record_manual(&fx, Some("incident 7: disk full"), false);
    d.alert_manual_runs();
    let a = fx.next_alert().await;
    assert_eq!(a["event"], "break_glass", "{a:#}");
    assert_eq!(a["status"], "firing");
    assert_eq!(a["environment"], "production");
    assert_eq!(a["hosts"], json!(["web-1"]), "web-2 was not reached: {a:#}");
    let details = &a["details"];
    assert_eq!(details["run"], glass.0.as_str());
    assert_eq!(details["user"], "carol");
    assert_eq!(
        details["identity"],
        "/home/carol/.ssh/id_ed25519 (SHA256:abc)"
    );
    assert_eq!(details["reason"], "incident 7: disk full");
    assert_eq!(
        details["commit"],
        format!("uncommitted:{}", "7ree".repeat(16))
    );
    assert_eq!(details["diff_sha256"], "d1ff");
    assert_eq!(a["commit"], format!("uncommitted:{}", "7ree".repeat(16)));
    assert!(
        a["link"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/runs/{}", glass.0))),
        "{a:#}"
    );
    let message = a["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("break glass: carol applied an uncommitted tree (sha256 7ree7ree7ree) to web-1 in production")
            && message.contains("reason: incident 7: disk full"),
        "{message}"
    );
    // Seen: the next ticks say nothing more.
    d.alert_manual_runs();
    d.alert_manual_runs();
    no_more_alerts(&fx).await;
    drop(d);

    // Recorded while the daemon was down: alerted at start; the first one is not again.
    let later = record_manual(&fx, Some("incident 8"), false);
    let d = fx.bare_daemon_for("[production]");
    d.alert_manual_runs();
    let a = fx.next_alert().await;
    assert_eq!(a["event"], "break_glass");
    assert_eq!(a["details"]["run"], later.0.as_str());
    d.alert_manual_runs();
    no_more_alerts(&fx).await;
}

fn unreachable_alert(d: &Daemon, env: &str, host: &str) -> crate::alert::Alert {
    d.new_alert(
        AlertEvent::HostUnreachable,
        Some(env),
        Some("c0ffee"),
        vec![host.to_string()],
        format!("{host} could not be observed"),
        json!({"host": host}),
    )
}

fn key(env: &str, host: &str) -> AlertKey {
    AlertKey {
        event: AlertEvent::HostUnreachable,
        environment: Some(env.into()),
        host: Some(host.into()),
        subject: None,
    }
}

#[tokio::test]
async fn firing_alerts_survive_a_restart_and_resolve_when_their_condition_is_gone() {
    let fx = Fx::new();
    let d = fx.bare_daemon_for("[production, staging]");
    // A history, so the restart is not taken for a state reset.
    record_manual(&fx, None, true);
    let first = unreachable_alert(&d, "production", "web-1");
    let started = first.time;
    d.alert(first);
    d.alert(unreachable_alert(&d, "staging", "db-1"));
    for _ in 0..2 {
        assert_eq!(fx.next_alert().await["status"], "firing");
    }
    drop(d);

    // Restarted (staging no longer managed): both are active again, with their first time.
    let d = fx.bare_daemon_for("[production]");
    assert!(lock_any(&d.alerts).is_active(&key("production", "web-1")));
    assert!(lock_any(&d.alerts).is_active(&key("staging", "db-1")));
    // Re-sent to Alertmanager at the first tick, as the same alert (same start).
    let resend = d.config.alert_resend_interval.get();
    let due = lock_any(&d.alerts).due_resends(OffsetDateTime::now_utc(), resend);
    assert_eq!(due.len(), 2, "{due:#?}");
    let web1 = due
        .iter()
        .find(|a| a.key() == key("production", "web-1"))
        .expect("web-1");
    assert_eq!(web1.time, started, "startsAt is when it first fired");
    assert_eq!(web1.status, AlertStatus::Firing);
    assert!(web1.ends_at.is_some_and(|e| e > OffsetDateTime::now_utc()));
    // The same condition found again is not paged again as new.
    d.alert(unreachable_alert(&d, "production", "web-1"));
    no_more_alerts(&fx).await;

    // The environment that left the config: resolved at start.
    d.resolve_unmanaged_alerts();
    let a = fx.next_alert().await;
    assert_eq!(
        (a["id"].as_str(), a["status"].as_str()),
        (Some("host_unreachable/staging/db-1"), Some("resolved"))
    );
    // The host is back: resolved, and forgotten by the state.
    d.resolve_host_alerts(AlertEvent::HostUnreachable, "production", "web-1");
    let a = fx.next_alert().await;
    assert_eq!(a["id"], "host_unreachable/production/web-1");
    assert_eq!(a["status"], "resolved");
    assert_eq!(a["time"], crate::alert::webhook_payload(web1)["time"]);
    drop(d);
    let d = fx.bare_daemon_for("[production]");
    assert!(
        lock_any(&d.alerts).is_empty(),
        "nothing firing after a restart"
    );
    assert!(lock(&d.db)
        .active_alerts::<serde_json::Value>()
        .expect("rows")
        .is_empty());
}
