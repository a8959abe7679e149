//! Backups proven by restores (issue 18), end to end on the Docker test hosts with the daemon:
//! host 1 backs up a directory and a SQLite dump (its `before:` command) to an sftp
//! repository on host 2, with the ssh key and the repository password from age secrets and
//! the keys set up by plumb itself. A restore test (its timer's service started by hand)
//! succeeds and is reported with a measured duration; a corrupted pack file on host 2 makes
//! the next one fail and raises `backup_failed`; deleting the repository shows in the
//! snapshot-age metric and an alert. All of it seen through `/metrics` and `/api/status`.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use daemon::{http_get, AlertCapture, DaemonFixture};
use serde_json::Value;

/// The recipient of the throwaway demo identity (examples/webapp-demo-identity.txt).
const DEMO_RECIPIENT: &str = "age1k6rjt4hdltjgmcwz00w3hnq6829qmm09rmxmjwv5v03z60k27sgq7dj3mx";

/// Encrypts `plain` to the demo recipient into `path` (the real `age` CLI).
fn age_encrypt(path: &std::path::Path, plain: &[u8]) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut child = Command::new("age")
        .args(["-r", DEMO_RECIPIENT, "-o"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("age runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plain)
        .expect("write");
    assert!(child.wait().expect("age").success());
}

/// Host 2: the `backup` account sftp logs in as, its key, the repository's directory.
fn target_unit(pubkey: &str) -> String {
    format!(
        r#"applies_to: {{role: target}}
steps:
  - id: backup-user
    user: {{name: backup, home: /home/backup, create_home: true, shell: /bin/sh}}
  # The test hosts' sshd reads keys from /etc/ssh/authorized_keys/<user> (root-owned).
  - id: backup-key
    file: {{path: /etc/ssh/authorized_keys/backup, content: "{pubkey}\n", mode: "0644"}}
  - id: repo-dir
    directory: {{path: /srv/backups, owner: backup, group: backup, mode: "0700"}}
    after: [backup-user]
"#
    )
}

/// Host 1: restic and sqlite3, the private key (a secret) and the ssh client's config.
fn client_unit(target: &str) -> String {
    format!(
        r#"applies_to: {{role: client}}
steps:
  - id: restic
    package: {{name: restic}}
  - id: sqlite
    package: {{name: sqlite3}}
  - id: ssh-dir
    directory: {{path: /root/.ssh, mode: "0700"}}
  - id: ssh-key
    file: {{path: /root/.ssh/plumb_backup, content: "{{{{ secrets.backup_ssh_key }}}}", mode: "0600"}}
    after: [ssh-dir]
  - id: ssh-config
    file:
      path: /root/.ssh/config
      mode: "0600"
      content: |
        Host backup-target
          HostName {target}
          User backup
          IdentityFile /root/.ssh/plumb_backup
          StrictHostKeyChecking accept-new
    after: [ssh-dir]
  - id: app-dir
    directory: {{path: /srv/app, mode: "0755"}}
"#
    )
}

const BACKUP_UNIT: &str = r#"applies_to: {role: client}
steps:
  - id: app
    after: [client/restic, client/ssh-config]
    backup:
      name: app
      repository: "sftp:backup-target:/srv/backups/app"
      password: "{{ secrets.restic_password }}"
      paths: [/srv/app]
      before: "sqlite3 /var/lib/app.db .dump > /srv/app/dump.sql"
      retention: {keep_daily: 7}
      schedule: daily
      randomized_delay: 30m
      restore_test:
        schedule: weekly
        read_data_subset: "100%"
        verify: >-
          sqlite3 "$PLUMB_RESTORE_DIR/check.db" < srv/app/dump.sql &&
          test "$(sqlite3 "$PLUMB_RESTORE_DIR/check.db" 'select count(*) from t')" = 3
"#;

/// The value of the metric line that starts with `prefix` (`name{labels}`).
fn metric(port: u16, prefix: &str) -> Option<String> {
    let (_, body) = http_get(port, "/metrics");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// The first backup of `/api/status`'s production environment.
fn api_backup(port: u16) -> Option<Value> {
    let (code, body) = http_get(port, "/api/status");
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["environments"][0]["backups"].get(0).cloned()
}

fn fixture() -> Option<(DaemonFixture, AlertCapture)> {
    let f = DaemonFixture::new("backup", "target", "steps: []\n")?;
    let w = f.work.path();
    let (code, _, err) = sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "plumb-backup", "-f"])
        .arg(w.join("backup_key")));
    assert_eq!(code, 0, "{err}");
    let private = std::fs::read(w.join("backup_key")).expect("key");
    let public = std::fs::read_to_string(w.join("backup_key.pub")).expect("pub");
    let repo = f.clone_dir();
    age_encrypt(&repo.join("secrets/backup_ssh_key.age"), &private);
    age_encrypt(
        &repo.join("secrets/restic_password.age"),
        b"correct horse battery staple",
    );
    f.write(
        "environments/production/secrets/recipients.txt",
        &format!("{DEMO_RECIPIENT}\n"),
    );
    f.write(
        "environments/production/env.yaml",
        "drift: {mode: report, interval: 2s}\n",
    );
    let h = &f.hosts;
    f.write(
        "environments/production/hosts.yaml",
        &format!(
            "hosts:\n  - name: {}\n    address: {}\n    labels: {{role: client}}\n  - name: {}\n    address: {}\n    labels: {{role: target}}\n",
            h.name(1),
            h.addresses[0],
            h.name(2),
            h.addresses[1]
        ),
    );
    f.write("units/target.yaml", &target_unit(public.trim()));
    f.write("units/client.yaml", &client_unit(&h.addresses[1]));
    let config = f.path("daemon.yaml");
    // Drift checks observe the backups: every 2 s here.
    let mut text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("drift_interval: 1h", "drift_interval: 2s");
    text.push_str(&format!(
        "secrets_identity: {}\n",
        demo_secrets_identity(w).display()
    ));
    std::fs::write(&config, text).expect("write config");
    let alerts = AlertCapture::start();
    f.alert_to(&alerts);
    Some((f, alerts))
}

#[test]
fn a_backup_is_proven_by_restores_and_its_failures_alert() {
    let _g = lock();
    let Some((mut f, alerts)) = fixture() else {
        return;
    };
    let setup = f.commit_and_push("hosts, keys and tools for a backup", true);
    f.start_daemon();
    f.wait("the setup applied", Duration::from_secs(240), || {
        f.applied(&setup)
    });
    exec(
        &f.hosts,
        1,
        "sqlite3 /var/lib/app.db 'create table t(x); insert into t values (1),(2),(3);'",
    );
    echo_file(&f);
    f.write("units/backup.yaml", BACKUP_UNIT);
    let commit = f.commit_and_push("back up the app", true);
    f.wait("the backup applied", Duration::from_secs(120), || {
        f.applied(&commit)
    });
    // The secret never reaches a report: the step is sensitive.
    let run = f.run_of("apply", &commit).expect("run");
    assert!(!run.to_string().contains("correct horse"), "{run}");
    let client = f.hosts.name(1);
    let labels = format!("{{env=\"production\",host=\"{client}\",backup=\"app\"}}");
    restore_succeeds(&f, &labels);
    corrupted_pack_fails(&f, &alerts, &labels);
    deleted_repository_alerts(&f, &alerts, &labels);
    f.stop_daemon();
}

/// A file the backup carries besides the dump (compared with its live copy).
fn echo_file(f: &DaemonFixture) {
    exec(&f.hosts, 1, "echo 'hello backup' > /srv/app/notes.txt");
}

fn restore_succeeds(f: &DaemonFixture, labels: &str) {
    // The first backup was started by the apply; this waits for it, or makes another.
    exec(
        &f.hosts,
        1,
        "systemctl start plumb-backup-app.service && systemctl start plumb-restore-test-app.service",
    );
    let status = exec(&f.hosts, 1, "cat /var/lib/plumb/backup/app.status");
    assert!(status.contains("result=ok\n"), "{status}");
    assert!(status.contains("compared=2\nmismatched=0"), "{status}");
    let port = f.port;
    f.wait(
        "the restore test in /api/status",
        Duration::from_secs(60),
        || api_backup(port).is_some_and(|b| b["observed"]["restore_test"]["result"] == "ok"),
    );
    let b = api_backup(port).expect("backup");
    assert_eq!(b["backup"], "app", "{b:#}");
    assert_eq!(b["problems"], serde_json::json!([]), "{b:#}");
    assert!(
        b["observed"]["restore_test"]["restore_ms"].as_u64() > Some(0),
        "{b:#}"
    );
    assert_eq!(b["observed"]["restore_test"]["files_compared"], 2, "{b:#}");
    assert!(b["snapshot_age_seconds"].as_u64() < Some(600), "{b:#}");
    let seconds = metric(port, &format!("plumb_backup_restore_seconds{labels}"))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("plumb_backup_restore_seconds");
    assert!(seconds > 0.0, "{seconds}");
    let success = metric(
        port,
        &format!("plumb_backup_restore_test_last_success_timestamp_seconds{labels}"),
    )
    .and_then(|v| v.parse::<f64>().ok())
    .expect("last success");
    assert!(success > 1.7e9, "{success}");
}

fn corrupted_pack_fails(f: &DaemonFixture, alerts: &AlertCapture, labels: &str) {
    exec(
        &f.hosts,
        2,
        "for p in $(find /srv/backups/app/data -type f); do printf 'plumb corrupted this' | dd of=\"$p\" bs=1 seek=64 conv=notrunc 2>/dev/null; done",
    );
    exec(
        &f.hosts,
        1,
        "systemctl start plumb-restore-test-app.service || true",
    );
    let status = exec(&f.hosts, 1, "cat /var/lib/plumb/backup/app.status");
    assert!(status.contains("result=failed\n"), "{status}");
    let port = f.port;
    f.wait(
        "the failed restore test alerted",
        Duration::from_secs(60),
        || {
            alerts.events().iter().any(|a| {
                a["event"] == "backup_failed"
                    && a["details"].to_string().contains("restore_test_failed")
            })
        },
    );
    assert_eq!(
        metric(port, &format!("plumb_backup_restore_test_failed{labels}")).as_deref(),
        Some("1")
    );
    let b = api_backup(port).expect("backup");
    assert_eq!(b["observed"]["restore_test"]["result"], "failed", "{b:#}");
    assert!(
        b["problems"].to_string().contains("restore_test_failed"),
        "{b:#}"
    );
}

fn deleted_repository_alerts(f: &DaemonFixture, alerts: &AlertCapture, labels: &str) {
    exec(&f.hosts, 2, "rm -rf /srv/backups/app");
    let port = f.port;
    f.wait(
        "the snapshot-age metric shows it",
        Duration::from_secs(60),
        || {
            // OpenMetrics text of +Inf, as prometheus-client writes it.
            metric(port, &format!("plumb_backup_snapshot_age_seconds{labels}"))
                .is_some_and(|v| v.parse::<f64>().is_ok_and(f64::is_infinite))
        },
    );
    f.wait(
        "the missing repository alerted",
        Duration::from_secs(30),
        || {
            alerts.events().iter().any(|a| {
                a["event"] == "backup_failed"
                    && a["details"].to_string().contains("repository_absent")
                    && a["details"].to_string().contains("snapshot_stale")
            })
        },
    );
    let b = api_backup(port).expect("backup");
    assert_eq!(b["observed"]["repository"], "absent", "{b:#}");
    assert!(b.get("snapshot_age_seconds").is_none(), "{b:#}");
}
